use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tgb_bus::{ConsumerSpec, Delivery, Handler, HandlerError, Outcome, names};
use tgb_proto::{BusEvent, Event, TgCommentAdded};
use tgb_testkit::eventually;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::*;

fn body(d: &Delivery) -> String {
    match &d.event {
        Event::TgCommentAdded(c) => c.body.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Fails transiently `fail` times (with an optional retry-after), then succeeds.
struct Flaky {
    fail: i64,
    retry_after: Option<Duration>,
    seen: Mutex<Vec<(i64, Instant)>>,
    succeeded: AtomicUsize,
}

impl Handler for Flaky {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        self.seen
            .lock()
            .unwrap()
            .push((d.deliveries, Instant::now()));
        if d.deliveries <= self.fail {
            return Err(match self.retry_after {
                Some(after) => HandlerError::retry_after("busy", after),
                None => HandlerError::transient("target unavailable"),
            });
        }
        self.succeeded.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::applied("T1"))
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_growing_delays_then_acked_once() {
    let (_server, bus) = server_and_bus().await;
    let spec = spec("flaky", &[TgCommentAdded::SUBJECT]);
    let flaky = Arc::new(Flaky {
        fail: 3,
        retry_after: None,
        seen: Mutex::new(Vec::new()),
        succeeded: AtomicUsize::new(0),
    });
    bus.publisher().publish(&comment("C-1", "x")).await.unwrap();
    let (stop, join) = spawn_consumer(&bus, spec.clone(), flaky.clone());
    eventually("success", WAIT, || async {
        (flaky.succeeded.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .unwrap();
    eventually("acked", WAIT, || async {
        (consumer_state(&bus, "flaky").await == (0, 0)).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    let seen = flaky.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for n in 1..seen.len() {
        let gap = seen[n].1 - seen[n - 1].1;
        let expected = spec.backoff(n as i64);
        assert!(
            gap >= expected,
            "delivery {} came {gap:?} after the previous one, before its backoff {expected:?}",
            n + 1
        );
    }
    assert!(spec.backoff(3) > spec.backoff(2) && spec.backoff(2) > spec.backoff(1));
    assert_eq!(
        flaky.succeeded.load(Ordering::SeqCst),
        1,
        "handled successfully exactly once"
    );
    assert!(dead_letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_retry_after_from_the_handler_is_honoured() {
    let (_server, bus) = server_and_bus().await;
    let after = Duration::from_millis(700);
    let flaky = Arc::new(Flaky {
        fail: 1,
        retry_after: Some(after),
        seen: Mutex::new(Vec::new()),
        succeeded: AtomicUsize::new(0),
    });
    bus.publisher().publish(&comment("C-1", "x")).await.unwrap();
    let (stop, join) = spawn_consumer(
        &bus,
        spec("after", &[TgCommentAdded::SUBJECT]),
        flaky.clone(),
    );
    eventually("success", WAIT, || async {
        (flaky.succeeded.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    let seen = flaky.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].1 - seen[0].1 >= after,
        "redelivered after {:?}",
        seen[1].1 - seen[0].1
    );
}

/// Refuses "poison" for good, keeps failing "sticky" transiently, handles the rest.
struct Picky {
    handled: Mutex<Vec<String>>,
}

impl Handler for Picky {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        match body(&d).as_str() {
            "poison" => Err(HandlerError::permanent(
                "partner key ZZ:NOPE has no account",
            )),
            "sticky" => Err(HandlerError::transient("target keeps answering 503")),
            other => {
                self.handled.lock().unwrap().push(other.to_owned());
                Ok(Outcome::applied("T1"))
            }
        }
    }
}

#[tokio::test]
async fn poison_reaches_the_dlq_with_its_reason_and_the_messages_behind_it_are_processed() {
    let (_server, bus) = server_and_bus().await;
    let p = bus.publisher();
    // All on one case, so they queue behind each other in this process.
    let poison = comment("C-7", "poison");
    p.publish(&comment("C-7", "before")).await.unwrap();
    p.publish(&poison).await.unwrap();
    p.publish(&comment("C-7", "sticky")).await.unwrap();
    p.publish(&comment("C-7", "after")).await.unwrap();
    // Bytes that are no event at all.
    bus.jetstream()
        .publish(
            TgCommentAdded::SUBJECT,
            bytes::Bytes::from_static(&[0xff, 0x01, 0x02]),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    p.publish(&comment("C-7", "last")).await.unwrap();

    let picky = Arc::new(Picky {
        handled: Mutex::new(Vec::new()),
    });
    let (stop, join) = spawn_consumer(
        &bus,
        spec("picky", &[TgCommentAdded::SUBJECT]),
        picky.clone(),
    );
    let letters = eventually("three dead letters", WAIT, || async {
        let l = dead_letters(&bus).await;
        (l.len() == 3).then_some(l)
    })
    .await
    .unwrap();
    eventually("all acked or termed", WAIT, || async {
        (consumer_state(&bus, "picky").await == (0, 0)).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(
        *picky.handled.lock().unwrap(),
        vec!["before", "after", "last"]
    );

    let by_kind: HashMap<String, _> = letters
        .iter()
        .map(|m| (m.headers.get(names::HDR_ERROR_KIND).unwrap().to_string(), m))
        .collect();
    let permanent = by_kind["permanent"];
    assert_eq!(
        permanent.subject.as_str(),
        "tgb.dlq.picky.v1.tg.case.comment_added"
    );
    assert_eq!(
        permanent.headers.get(names::HDR_ERROR).unwrap().as_str(),
        "partner key ZZ:NOPE has no account"
    );
    assert_eq!(
        permanent.headers.get(names::HDR_CONSUMER).unwrap().as_str(),
        "picky"
    );
    assert_eq!(
        permanent
            .headers
            .get(names::HDR_DELIVERIES)
            .unwrap()
            .as_str(),
        "1"
    );
    assert_eq!(
        permanent.payload.as_ref(),
        prost::Message::encode_to_vec(&poison).as_slice(),
        "original bytes"
    );
    assert_eq!(
        permanent.headers.get("Nats-Msg-Id").map(|v| v.to_string()),
        Some(format!(
            "dlq:picky:{}",
            permanent.headers.get(names::HDR_ORIGINAL_SEQ).unwrap()
        )),
    );
    let sticky = by_kind["max_deliver"];
    assert_eq!(
        sticky.headers.get(names::HDR_DELIVERIES).unwrap().as_str(),
        "4"
    );
    assert!(
        sticky
            .headers
            .get(names::HDR_ERROR)
            .unwrap()
            .as_str()
            .contains("503")
    );
    let undecodable = by_kind["undecodable"];
    assert!(
        undecodable
            .headers
            .get(names::HDR_ERROR)
            .unwrap()
            .as_str()
            .contains("TgCommentAdded")
    );
    assert_eq!(undecodable.payload.as_ref(), &[0xff, 0x01, 0x02]);
}

/// Records, per case, how many handlers run at once and in which order bodies arrive.
struct Serial {
    active: Mutex<HashMap<String, usize>>,
    overlap: AtomicUsize,
    order: Mutex<HashMap<String, Vec<String>>>,
    total: AtomicUsize,
}

impl Handler for Serial {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        let case = match &d.event {
            Event::TgCommentAdded(c) => c.case_id.clone(),
            _ => unreachable!(),
        };
        {
            let mut active = self.active.lock().unwrap();
            let n = active.entry(case.clone()).or_default();
            *n += 1;
            if *n > 1 {
                self.overlap.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Simulated work, long enough for deliveries of the same case to pile up.
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.order
            .lock()
            .unwrap()
            .entry(case.clone())
            .or_default()
            .push(body(&d));
        *self.active.lock().unwrap().get_mut(&case).unwrap() -= 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::applied("T1"))
    }
}

#[tokio::test]
async fn two_events_of_one_entity_are_never_handled_at_once_and_keep_their_order() {
    entities_in_order(None).await;
}

#[tokio::test]
async fn a_gathered_consumer_handles_each_message_once_and_keeps_each_entitys_order() {
    entities_in_order(Some(Duration::from_millis(20))).await;
}

/// 90 comments on three cases, half waiting before the consumer starts and half published while
/// it runs (a gathered one meets them in full fetches and as first messages of quiet spells):
/// each handled once, a case's never two at once, in order.
async fn entities_in_order(gather: Option<Duration>) {
    let (_server, bus) = server_and_bus().await;
    let p = bus.publisher();
    let publish = |rounds: std::ops::Range<usize>| {
        let p = p.clone();
        async move {
            for i in rounds {
                for case in ["C-A", "C-B", "C-C"] {
                    p.publish(&comment(case, &format!("{i:02}"))).await.unwrap();
                }
            }
        }
    };
    publish(0..15).await;
    let serial = Arc::new(Serial {
        active: Mutex::new(HashMap::new()),
        overlap: AtomicUsize::new(0),
        order: Mutex::new(HashMap::new()),
        total: AtomicUsize::new(0),
    });
    let (stop, join) = spawn_consumer(
        &bus,
        ConsumerSpec {
            gather,
            ..spec("serial", &[TgCommentAdded::SUBJECT])
        },
        serial.clone(),
    );
    publish(15..30).await;
    eventually("all handled", WAIT, || async {
        (serial.total.load(Ordering::SeqCst) == 90).then_some(())
    })
    .await
    .unwrap();
    eventually("all acked", WAIT, || async {
        (consumer_state(&bus, "serial").await == (0, 0)).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(serial.total.load(Ordering::SeqCst), 90, "each once");
    assert_eq!(serial.overlap.load(Ordering::SeqCst), 0);
    let expected: Vec<String> = (0..30).map(|i| format!("{i:02}")).collect();
    for (case, bodies) in serial.order.lock().unwrap().iter() {
        assert_eq!(bodies, &expected, "{case} in order");
    }
}

#[tokio::test]
async fn a_gathered_consumer_waiting_for_its_first_message_stops_when_told() {
    let (_server, bus) = server_and_bus().await;
    let count = Arc::new(Count {
        bodies: Mutex::new(Vec::new()),
    });
    let (stop, join) = spawn_consumer(
        &bus,
        ConsumerSpec {
            gather: Some(Duration::from_millis(20)),
            ..spec("idle", &[TgCommentAdded::SUBJECT])
        },
        count.clone(),
    );
    long_poll_waiting(&bus, "idle").await;
    stop.cancel();
    // Well before the long poll ends by itself (10 s).
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("stopped while waiting")
        .unwrap()
        .unwrap();
}

/// Waits until consumer `name` has a pull request waiting on the server: a gathered consumer
/// is then in its long poll for the first message of a quiet spell.
async fn long_poll_waiting(bus: &tgb_bus::Bus, name: &str) {
    eventually("the long poll waiting", WAIT, || async {
        let info = bus
            .jetstream()
            .get_stream(names::EVENTS_STREAM)
            .await
            .ok()?
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .clone();
        (info.num_waiting > 0).then_some(())
    })
    .await
    .unwrap();
}

/// A message published after a quiet spell is handled at once. With idle heartbeats on the
/// long poll (every 5 s), async-nats's batch stopped listening after the first one: such a
/// message lay unread, was redelivered into the next poll after its heartbeat, and so on for
/// ever.
#[tokio::test]
async fn a_gathered_consumer_handles_a_message_that_comes_after_a_quiet_spell() {
    let (_server, bus) = server_and_bus().await;
    let count = Arc::new(Count {
        bodies: Mutex::new(Vec::new()),
    });
    let (stop, join) = spawn_consumer(
        &bus,
        ConsumerSpec {
            gather: Some(Duration::from_millis(20)),
            // No redelivery within the test: the first delivery must be the one handled.
            ack_wait: Duration::from_secs(60),
            ..spec("quiet", &[TgCommentAdded::SUBJECT])
        },
        count.clone(),
    );
    long_poll_waiting(&bus, "quiet").await;
    // The quiet spell is what this test is about, not a wait for something: 7 s take the
    // long poll past the 5 s at which a heartbeat would have come, and short of its 10 s end.
    tokio::time::sleep(Duration::from_secs(7)).await;
    bus.publisher()
        .publish(&comment("C-Q", "after the quiet spell"))
        .await
        .unwrap();
    // Long before the server would deliver it again.
    eventually("handled", Duration::from_secs(20), || async {
        (count.bodies.lock().unwrap().len() == 1).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(
        *count.bodies.lock().unwrap(),
        vec!["after the quiet spell".to_owned()]
    );
}

/// Blocks until released, so a test can act while a handler runs.
struct Blocking {
    started: Notify,
    release: Notify,
    done: AtomicUsize,
    deliveries: Mutex<Vec<i64>>,
}

impl Handler for Blocking {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        self.deliveries.lock().unwrap().push(d.deliveries);
        self.started.notify_one();
        self.release.notified().await;
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::applied("T1"))
    }
}

fn blocking() -> Arc<Blocking> {
    Arc::new(Blocking {
        started: Notify::new(),
        release: Notify::new(),
        done: AtomicUsize::new(0),
        deliveries: Mutex::new(Vec::new()),
    })
}

#[tokio::test]
async fn shutdown_while_a_handler_runs_finishes_and_acks_it() {
    let (_server, bus) = server_and_bus().await;
    bus.publisher().publish(&comment("C-1", "x")).await.unwrap();
    let h = blocking();
    let (stop, join) = spawn_consumer(&bus, spec("drain", &[TgCommentAdded::SUBJECT]), h.clone());
    tokio::time::timeout(WAIT, h.started.notified())
        .await
        .unwrap();
    stop.cancel();
    // The runner waits for the handler in flight.
    tokio::task::yield_now().await;
    assert!(
        !join.is_finished(),
        "run_consumer returned with a handler in flight"
    );
    h.release.notify_one();
    tokio::time::timeout(WAIT, join)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(h.done.load(Ordering::SeqCst), 1);
    assert_eq!(
        consumer_state(&bus, "drain").await,
        (0, 0),
        "finished and acked"
    );
}

#[tokio::test]
async fn a_crash_while_a_handler_runs_redelivers_the_message_after_restart() {
    let (_server, bus) = server_and_bus().await;
    bus.publisher().publish(&comment("C-1", "x")).await.unwrap();
    let mut s = spec("crash", &[TgCommentAdded::SUBJECT]);
    s.ack_wait = Duration::from_secs(1);
    let first = blocking();
    let (_stop, join) = spawn_consumer(&bus, s.clone(), first.clone());
    tokio::time::timeout(WAIT, first.started.notified())
        .await
        .unwrap();
    join.abort(); // the process dies: no ack, no nak
    let _ = join.await;
    assert_eq!(first.done.load(Ordering::SeqCst), 0);

    let second = blocking();
    second.release.notify_one(); // lets the redelivery complete at once
    let (stop, join) = spawn_consumer(&bus, s, second.clone());
    eventually("redelivered and handled", WAIT, || async {
        (second.done.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .unwrap();
    eventually("acked", WAIT, || async {
        (consumer_state(&bus, "crash").await == (0, 0)).then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(*second.deliveries.lock().unwrap(), vec![2]);
}

struct Count {
    bodies: Mutex<Vec<String>>,
}

impl Handler for Count {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        self.bodies.lock().unwrap().push(body(&d));
        Ok(Outcome::applied("T1"))
    }
}

#[tokio::test]
async fn every_acked_publish_is_consumed_across_a_nats_server_restart() {
    consumed_across_a_restart(None).await;
}

#[tokio::test]
async fn a_gathered_consumer_consumes_every_acked_publish_across_a_nats_server_restart() {
    consumed_across_a_restart(Some(Duration::from_millis(20))).await;
}

async fn consumed_across_a_restart(gather: Option<Duration>) {
    let (mut server, bus) = server_and_bus().await;
    let count = Arc::new(Count {
        bodies: Mutex::new(Vec::new()),
    });
    let (stop, join) = spawn_consumer(
        &bus,
        ConsumerSpec {
            gather,
            ..spec("restart", &[TgCommentAdded::SUBJECT])
        },
        count.clone(),
    );
    let p = bus.publisher();
    let mut acked = Vec::new();
    for i in 0..204 {
        if i == 100 {
            server.stop().await;
        }
        if i == 102 {
            server.start_again().await.unwrap();
        }
        let body = format!("m{i}");
        // While the server is down a publish fails: the caller knows it may not be stored.
        if p.publish(&comment(&format!("C-{}", i % 7), &body))
            .await
            .is_ok()
        {
            acked.push(body);
        }
    }
    assert!(
        acked.len() >= 200,
        "publishes before and after the restart are acked ({} acked)",
        acked.len()
    );
    eventually(
        "every acked message consumed",
        tgb_testkit::HANG_GUARD,
        || async {
            let seen = count.bodies.lock().unwrap().clone();
            acked.iter().all(|b| seen.contains(b)).then_some(())
        },
    )
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();
}

/// Panics on "boom" (as an index past the end of an empty answer would); handles the rest.
struct Panicky {
    handled: Mutex<Vec<String>>,
}

impl Handler for Panicky {
    async fn handle(&self, d: Delivery) -> Result<Outcome, HandlerError> {
        let b = body(&d);
        if b == "boom" {
            let answers: Vec<u16> = Vec::new();
            let _ = answers[0];
        }
        self.handled.lock().unwrap().push(b);
        Ok(Outcome::applied("D4"))
    }
}

#[tokio::test]
async fn a_panicking_handler_dead_letters_that_message_and_its_entity_goes_on() {
    let (_server, bus) = server_and_bus().await;
    let p = bus.publisher();
    // One case: the panic happens with messages of the same entity queued behind it.
    for b in ["first", "boom", "second", "third"] {
        p.publish(&comment("C-9", b)).await.unwrap();
    }
    p.publish(&comment("C-10", "elsewhere")).await.unwrap();
    let panicky = Arc::new(Panicky {
        handled: Mutex::new(Vec::new()),
    });
    let (stop, join) = spawn_consumer(
        &bus,
        spec("panicky", &[TgCommentAdded::SUBJECT]),
        panicky.clone(),
    );
    let letters = eventually("the panic dead-lettered", WAIT, || async {
        let l = dead_letters(&bus).await;
        (!l.is_empty()).then_some(l)
    })
    .await
    .unwrap();
    eventually("everything acked or termed", WAIT, || async {
        (consumer_state(&bus, "panicky").await == (0, 0)).then_some(())
    })
    .await
    .unwrap();
    // The consumer kept running after the panic, and stops cleanly when asked.
    stop.cancel();
    join.await.unwrap().unwrap();
    let mut handled = panicky.handled.lock().unwrap().clone();
    let c9: Vec<_> = handled
        .iter()
        .filter(|b| *b != "elsewhere")
        .cloned()
        .collect();
    assert_eq!(c9, vec!["first", "second", "third"], "in order, none lost");
    handled.sort();
    assert!(handled.contains(&"elsewhere".to_owned()));
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.headers.get(names::HDR_ERROR_KIND).unwrap().as_str(),
        "permanent"
    );
    let reason = letter.headers.get(names::HDR_ERROR).unwrap().to_string();
    assert!(
        reason.contains("the handler panicked") && reason.contains("index out of bounds"),
        "{reason}"
    );
    let dead = <TgCommentAdded as prost::Message>::decode(letter.payload.as_ref()).unwrap();
    assert_eq!(dead.body, "boom");
}

/// A replica that takes a message and dies before it answers, every time: the message's
/// deliveries run out with none of them seen by a runner, and the server says so only in a
/// `MAX_DELIVERIES` advisory. The runner still alive turns that advisory into a dead letter.
#[tokio::test]
async fn a_message_whose_deliveries_run_out_unseen_is_dead_lettered_from_the_advisory() {
    use async_nats::jetstream::AckKind;
    use futures::StreamExt as _;

    let (_server, bus) = server_and_bus().await;
    let mut s = spec("crashing", &[TgCommentAdded::SUBJECT]);
    s.max_deliver = 2;
    s.ack_wait = Duration::from_secs(1);
    let lost = comment("C-9", "taken by a replica that dies");
    let seq = bus.publisher().publish(&lost).await.unwrap().sequence;

    // The dying replica: the same durable consumer, as the runner declares it; it takes both
    // deliveries and never answers.
    let stream = bus
        .jetstream()
        .get_stream(names::EVENTS_STREAM)
        .await
        .unwrap();
    let raw: async_nats::jetstream::consumer::PullConsumer =
        stream.create_consumer(s.pull_config()).await.unwrap();
    let take = || async {
        let mut batch = raw
            .fetch()
            .max_messages(1)
            .expires(WAIT)
            .messages()
            .await
            .unwrap();
        batch
            .next()
            .await
            .expect("a delivery within the hang guard")
            .unwrap()
    };
    let first = take().await;
    assert_eq!(first.info().unwrap().delivered, 1);
    drop(first); // dies: the server redelivers after the ack wait
    let second = take().await;
    assert_eq!(second.info().unwrap().delivered, 2);
    assert_eq!(second.info().unwrap().stream_sequence, seq);

    // While the dying replica still holds the last delivery (kept alive with progress acks), a
    // healthy runner starts; once it has handled a message it pulled, its advisory watch (set up
    // before its first pull, on the same connection) is in place.
    let keep_alive = CancellationToken::new();
    let holder = {
        let stop = keep_alive.clone();
        let period = s.ack_wait / 4;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => { let _ = second.ack_with(AckKind::Progress).await; }
                    _ = stop.cancelled() => return second,
                }
            }
        })
    };
    let healthy = Arc::new(Count {
        bodies: Mutex::new(Vec::new()),
    });
    let (stop, join) = spawn_consumer(&bus, s.clone(), healthy.clone());
    bus.publisher()
        .publish(&comment("C-10", "probe"))
        .await
        .unwrap();
    eventually("the healthy runner handles the probe", WAIT, || async {
        healthy
            .bodies
            .lock()
            .unwrap()
            .contains(&"probe".to_owned())
            .then_some(())
    })
    .await
    .unwrap();

    // The replica dies holding the last delivery: it times out, the server gives up on it.
    keep_alive.cancel();
    drop(holder.await.unwrap());
    let letters = eventually("the dead letter", WAIT, || async {
        let l = dead_letters(&bus).await;
        (!l.is_empty()).then_some(l)
    })
    .await
    .unwrap();
    bus.publisher()
        .publish(&comment("C-9", "after"))
        .await
        .unwrap();
    eventually("the entity goes on", WAIT, || async {
        healthy
            .bodies
            .lock()
            .unwrap()
            .contains(&"after".to_owned())
            .then_some(())
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();

    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &letters[0];
    assert_eq!(
        letter.subject.as_str(),
        "tgb.dlq.crashing.v1.tg.case.comment_added"
    );
    let header = |name: &str| letter.headers.get(name).unwrap().as_str().to_owned();
    assert_eq!(header(names::HDR_ERROR_KIND), "max_deliver");
    assert_eq!(
        header(names::HDR_ERROR),
        "no delivery was acknowledged or refused within its ack wait (2 deliveries)"
    );
    assert_eq!(header(names::HDR_CONSUMER), "crashing");
    assert_eq!(header(names::HDR_DELIVERIES), "2");
    assert_eq!(header(names::HDR_ORIGINAL_SEQ), seq.to_string());
    assert_eq!(
        letter.payload.as_ref(),
        prost::Message::encode_to_vec(&lost).as_slice(),
        "the original bytes"
    );
    // Nothing lost: every message was handled or dead-lettered, never both.
    let mut handled = healthy.bodies.lock().unwrap().clone();
    handled.sort();
    assert_eq!(handled, vec!["after", "probe"]);
}
