//! The typed consumer runner over a durable pull consumer of `TGB_EVENTS`.
//!
//! Each message is decoded once, handled, then acknowledged according to the handler's answer,
//! and the runner alone writes what happened: the ledger entry ([`crate::ledger`]), the flow
//! metric `tgb_flow_events_total` and its latency, from the handler's [`Outcome`].
//!
//! | answer | what the runner does |
//! |---|---|
//! | `Ok(outcome)` | ack (not confirmed: a lost ack is a redelivery the idempotent handler finds done); ledger: the outcome's decision |
//! | transient error | nak with a delay: its retry-after, else a delay doubling per delivery; on the last allowed delivery, dead-letter instead |
//! | permanent error, or a panic | copy to `TGB_DLQ` with the reason, then term |
//! | undecodable bytes | copy to `TGB_DLQ`, then term |
//! | fatal error | nak, stop pulling, finish in-flight work and return the error |
//!
//! Messages of one entity ([`tgb_proto::Event::entity_key`]) are handled one at a time, in
//! delivery order, by this process; other entities proceed in parallel up to `concurrency`.
//! Messages queued behind their entity's message in flight are kept alive with progress acks,
//! so they never use up deliveries unseen. The bookkeeping of an entity is released by a drop
//! guard, even if handling panics. A message the server stopped delivering
//! (`MAX_DELIVERIES` advisory: every delivery timed out, e.g. each crashed the process) is
//! dead-lettered from the stream by sequence.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::pull};
use futures::{FutureExt as _, StreamExt};
use tgb_proto::Event;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::Bus;
use crate::ledger::{self, Decision, LedgerEntry};
use crate::outcome::{ErrorClass, HandlerError, Outcome};
use crate::{names, trace};

/// How a durable consumer is declared. Every setting is explicit.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Durable name; also the `tgb-consumer` of its dead letters. Letters, digits, `-`, `_`.
    pub name: String,
    /// Shown by `nats consumer info` and `tgb status`.
    pub description: String,
    /// The subjects it handles (wildcards allowed).
    pub filter_subjects: Vec<String>,
    /// Deliveries before a message that keeps failing transiently is dead-lettered.
    pub max_deliver: i64,
    /// Time the server waits for an ack before redelivering (extended while a handler runs).
    pub ack_wait: Duration,
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Messages delivered and not yet acknowledged, across all replicas.
    pub max_ack_pending: i64,
    /// Nak delay after the first failed delivery; doubles with each delivery.
    pub backoff_base: Duration,
    /// Ceiling of the nak delay.
    pub backoff_max: Duration,
    /// Gathered delivery: after the first message of a quiet spell, wait this long and take
    /// what arrived meanwhile in one fetch, so that several messages share each wake-up of the
    /// process and of the broker (their handlers' round trips go out together too). `None`:
    /// each message is taken as it arrives, for consumers whose latency counts.
    pub gather: Option<Duration>,
}

impl ConsumerSpec {
    /// A spec with the defaults: 8 deliveries, 30 s ack wait, 16 at once, 1 s → 60 s backoff.
    pub fn new(name: impl Into<String>, filter_subjects: &[&str]) -> Self {
        let name = name.into();
        ConsumerSpec {
            description: format!("tg-bridge consumer {name}"),
            name,
            filter_subjects: filter_subjects.iter().map(|s| (*s).to_owned()).collect(),
            max_deliver: 8,
            ack_wait: Duration::from_secs(30),
            concurrency: 16,
            max_ack_pending: 1024,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            gather: None,
        }
    }

    /// The durable pull consumer's configuration, as the runner creates (or updates) it.
    pub fn pull_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.name.clone()),
            description: Some(self.description.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            filter_subjects: self.filter_subjects.clone(),
            max_ack_pending: self.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }

    /// The nak delay after delivery number `delivered` (1-based) failed.
    pub fn backoff(&self, delivered: i64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max)
    }
}

/// A decoded message handed to a handler.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The subject it arrived on.
    pub subject: String,
    /// 1 on the first delivery.
    pub deliveries: i64,
    /// Its sequence in `TGB_EVENTS`.
    pub stream_sequence: u64,
    /// When JetStream stored it.
    pub published: time::OffsetDateTime,
    /// Its headers.
    pub headers: HeaderMap,
}

impl Delivery {
    /// The first delivery of an event no backfill replayed (`meta.replayed_at` unset): what a
    /// handler may take as news it has not acted on yet, to presume a record absent where a
    /// condition of the write checks the presumption.
    pub fn first_live(&self) -> bool {
        self.deliveries == 1 && self.event.meta().is_some_and(|m| m.replayed_at.is_none())
    }
}

/// Handles one event. Must be idempotent: a message can be delivered again after a crash.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery: what it did, or why it failed (the error's class decides what
    /// happens to the message).
    fn handle(
        &self,
        delivery: Delivery,
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send;

    /// The flow an event belongs to, for the metric of a failure (an outcome names its own).
    fn flow_of(&self, _event: &Event) -> Option<&'static str> {
        None
    }
}

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("consumer {consumer}: cannot set up: {reason}")]
    Setup { consumer: String, reason: String },
    #[error("consumer {consumer} stopped: {reason}")]
    Fatal { consumer: String, reason: String },
}

struct Job {
    message: Message,
    event: Event,
    seq: u64,
}

struct Runner<H> {
    spec: ConsumerSpec,
    handler: Arc<H>,
    js: jetstream::Context,
    /// Entities being handled, with the messages waiting behind the one in flight.
    busy: Mutex<HashMap<String, VecDeque<Job>>>,
    /// Stream sequences held by this process (in flight or queued).
    held: Mutex<HashSet<u64>>,
    fatal: CancellationToken,
    fatal_reason: Mutex<Option<String>>,
}

/// Runs `handler` over the durable consumer `spec` until `shutdown` is cancelled (then finishes
/// in-flight messages and returns `Ok`) or a handler reports a fatal error.
pub async fn run_consumer<H: Handler>(
    bus: &Bus,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let setup = |reason: String| ConsumerError::Setup {
        consumer: spec.name.clone(),
        reason,
    };
    let js = bus.jetstream().clone();
    let stream = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(spec.pull_config())
        .await
        .map_err(|e| setup(e.to_string()))?;
    // Subscribed before the first pull, on the same connection: an advisory about any message
    // this process could have been delivered is heard.
    let advisories = bus
        .client()
        .subscribe(max_deliveries_subject(&spec.name))
        .await
        .map_err(|e| setup(format!("cannot watch MAX_DELIVERIES advisories: {e}")))?;

    let runner = Arc::new(Runner {
        spec: spec.clone(),
        handler,
        js,
        busy: Mutex::new(HashMap::new()),
        held: Mutex::new(HashSet::new()),
        fatal: CancellationToken::new(),
        fatal_reason: Mutex::new(None),
    });
    let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    // Workers live in a JoinSet: if this future is dropped (the process is going down hard),
    // they are aborted with it and their messages are redelivered, as after a crash.
    let mut workers = JoinSet::new();
    let batch = spec.concurrency.clamp(1, 256);
    let watching = CancellationToken::new();
    workers.spawn(
        runner
            .clone()
            .watch_max_deliveries(advisories, stream, watching.clone()),
    );

    if let Some(gather) = spec.gather {
        runner
            .clone()
            .gathered(&consumer, gather, batch, &permits, &mut workers, &shutdown)
            .await;
    }
    'outer: while spec.gather.is_none() && !shutdown.is_cancelled() && !runner.fatal.is_cancelled()
    {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %spec.name, error = %e, "cannot pull, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        loop {
            while workers.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break 'outer,
                _ = runner.fatal.cancelled() => break 'outer,
            };
            let next = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.cancelled() => break 'outer,
                _ = runner.fatal.cancelled() => break 'outer,
            };
            match next {
                Some(Ok(message)) => runner.clone().dispatch(message, permit, &mut workers),
                Some(Err(e)) => {
                    tracing::debug!(consumer = %spec.name, error = %e, "pull stream error");
                }
                None => break,
            }
        }
    }
    watching.cancel();
    while workers.join_next().await.is_some() {}
    match runner.fatal_reason.lock().unwrap().take() {
        Some(reason) => Err(ConsumerError::Fatal {
            consumer: spec.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The next message of `consumer`, waiting for it up to 10 s (`None` when none came). A long
/// poll the server forgot (it restarted) ends on the client 5 s after its expiry: the next one
/// is asked for within 15 s.
///
/// No idle heartbeats: async-nats 0.51's batch answers a heartbeat with `Pending` without
/// asking to be woken, so a message that came after one lay unread in the subscription until
/// the client's own timer ended the batch, and was redelivered (30 s later) into the next poll
/// after its heartbeat, again and again. The server's expiry and the client's timer above
/// already end a poll that hears nothing.
async fn first_message(
    consumer: &jetstream::consumer::PullConsumer,
) -> Result<Option<Message>, String> {
    let mut one = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    match one.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(None),
    }
}

/// Where the server announces that a message of consumer `name` ran out of deliveries.
fn max_deliveries_subject(name: &str) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{name}",
        names::EVENTS_STREAM
    )
}

/// Releases an entity's bookkeeping when its worker ends, however it ends: the key leaves
/// `busy` and every sequence it held leaves `held`, so the messages still queued behind it are
/// redelivered to whoever holds the consumer next instead of being dropped as duplicates.
struct EntityGuard<'a> {
    busy: &'a Mutex<HashMap<String, VecDeque<Job>>>,
    held: &'a Mutex<HashSet<u64>>,
    key: &'a str,
    done: bool,
}

impl Drop for EntityGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let queued = lock(self.busy).remove(self.key).unwrap_or_default();
        let mut held = lock(self.held);
        for job in queued {
            held.remove(&job.seq);
        }
    }
}

/// A lock that survives a panic of another holder (the maps stay consistent: every change is a
/// single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

impl<H: Handler> Runner<H> {
    /// Gathered delivery ([`ConsumerSpec::gather`]) until `shutdown` or a fatal error: a long
    /// poll for the first message (the server holds it up to 10 s, without heartbeats: see
    /// [`first_message`]), then, `gather` later, fetches of what arrived meanwhile until one
    /// comes back short. Every message goes through
    /// [`Runner::dispatch`] as in the streamed pull; only how they are asked for changes.
    async fn gathered(
        self: Arc<Self>,
        consumer: &jetstream::consumer::PullConsumer,
        gather: Duration,
        batch: usize,
        permits: &Arc<Semaphore>,
        workers: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let name = &self.spec.name;
        let stop = || async {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.fatal.cancelled() => {}
            }
        };
        while !shutdown.is_cancelled() && !self.fatal.is_cancelled() {
            let first = tokio::select! {
                r = first_message(consumer) => r,
                _ = stop() => return,
            };
            match first {
                Ok(Some(message)) => {
                    while workers.try_join_next().is_some() {}
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                        _ = stop() => return,
                    };
                    self.clone().dispatch(message, permit, workers);
                }
                // The long poll expired with nothing: ask again.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "cannot pull, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop() => return,
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(gather) => {}
                _ = stop() => return,
            }
            loop {
                // An expiry, though the fetch does not wait: the client gives up on a request
                // the server never answers (one sent as the server restarted) 5 s after it,
                // instead of waiting for ever.
                let mut fetched = match consumer
                    .fetch()
                    .max_messages(batch)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(consumer = %name, error = %e, "fetch refused");
                        break;
                    }
                };
                let mut taken = 0;
                loop {
                    let next = tokio::select! {
                        m = fetched.next() => m,
                        _ = stop() => return,
                    };
                    let message = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::debug!(consumer = %name, error = %e, "fetch error");
                            break;
                        }
                        None => break,
                    };
                    while workers.try_join_next().is_some() {}
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                        _ = stop() => return,
                    };
                    self.clone().dispatch(message, permit, workers);
                    taken += 1;
                }
                if taken < batch {
                    break;
                }
            }
        }
    }

    fn dispatch(
        self: Arc<Self>,
        message: Message,
        permit: OwnedSemaphorePermit,
        workers: &mut JoinSet<()>,
    ) {
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(_) => (0, 0),
        };
        metrics::gauge!("tgb_consumer_pending", "consumer" => self.spec.name.clone())
            .set(pending as f64);
        let subject = message.subject.to_string();
        metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject.clone(), "outcome" => "consumed").increment(1);
        let event = match Event::decode(&subject, &message.payload) {
            Ok(event) => event,
            Err(e) => {
                let runner = self.clone();
                workers.spawn(async move {
                    let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
                    runner
                        .dead_letter(&message, "undecodable", &e.to_string(), deliveries)
                        .await;
                    drop(permit);
                });
                return;
            }
        };
        let key = match event.entity_key() {
            k if k.is_empty() => format!("seq:{seq}"),
            k => k,
        };
        if !lock(&self.held).insert(seq) {
            // A redelivery of a message this process still holds: the held copy will be
            // acknowledged; handling both would only race.
            return;
        }
        let job = Job {
            message,
            event,
            seq,
        };
        {
            let mut busy = lock(&self.busy);
            if let Some(queue) = busy.get_mut(&key) {
                queue.push_back(job);
                return;
            }
            busy.insert(key.clone(), VecDeque::new());
        }
        let runner = self.clone();
        workers.spawn(async move {
            let mut guard = EntityGuard {
                busy: &runner.busy,
                held: &runner.held,
                key: &key,
                done: false,
            };
            let mut next = Some(job);
            while let Some(job) = next {
                let seq = job.seq;
                runner.process(job, &key).await;
                lock(&runner.held).remove(&seq);
                let mut busy = lock(&runner.busy);
                next = busy.get_mut(&key).and_then(VecDeque::pop_front);
                if next.is_none() {
                    busy.remove(&key);
                    guard.done = true;
                }
            }
            drop(guard);
            drop(permit);
        });
    }

    /// Progress acks for the messages queued behind `key`'s message in flight.
    async fn keep_queued_alive(&self, key: &str) {
        let queued: Vec<Message> = lock(&self.busy)
            .get(key)
            .map(|q| q.iter().map(|j| j.message.clone()).collect())
            .unwrap_or_default();
        for m in queued {
            let _ = m.ack_with(AckKind::Progress).await;
        }
    }

    async fn process(&self, job: Job, key: &str) {
        let Job {
            message,
            event,
            seq,
        } = job;
        let subject = message.subject.to_string();
        let info = message.info().ok();
        let deliveries = info.as_ref().map(|i| i.delivered).unwrap_or(1);
        let published = info
            .as_ref()
            .map(|i| i.published)
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        let headers = message.headers.clone().unwrap_or_default();
        let event_id = event.meta().map(|m| m.event_id.clone()).unwrap_or_default();
        let span = tracing::info_span!(
            "consume",
            otel.name = %format!("{} {}", self.spec.name, subject),
            otel.kind = "consumer",
            consumer = %self.spec.name,
            subject = %subject,
            event_id = %event_id,
            deliveries,
        );
        trace::set_parent_from(&span, &headers);
        let flow_of_event = self.handler.flow_of(&event);
        let delivery = Delivery {
            event,
            subject: subject.clone(),
            deliveries,
            stream_sequence: seq,
            published,
            headers,
        };
        let labels = [
            ("consumer", self.spec.name.clone()),
            ("subject", subject.clone()),
        ];
        if deliveries > 1 {
            metrics::counter!("tgb_consumer_redeliveries_total", &labels).increment(1);
        }
        let started = Instant::now();
        let meta = delivery.event.meta().cloned().unwrap_or_default();
        let trace_id = delivery
            .headers
            .get("traceparent")
            .map(|v| ledger::trace_id_of(v.as_str()))
            .unwrap_or_default();
        let result = {
            // A panic is this message's permanent failure, not the end of the worker.
            let handling = AssertUnwindSafe(self.handler.handle(delivery))
                .catch_unwind()
                .map(|r| {
                    r.unwrap_or_else(|payload| {
                        Err(HandlerError::permanent(format!(
                            "the handler panicked: {}",
                            panic_text(payload.as_ref())
                        )))
                    })
                })
                .instrument(span.clone());
            tokio::pin!(handling);
            let mut progress = tokio::time::interval(self.spec.ack_wait / 2);
            progress.tick().await;
            loop {
                tokio::select! {
                    r = &mut handling => break r,
                    _ = progress.tick() => {
                        let _ = message.ack_with(AckKind::Progress).await;
                        self.keep_queued_alive(key).await;
                    }
                }
            }
        };
        metrics::histogram!("tgb_handler_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        let last_try = deliveries >= self.spec.max_deliver;
        let (decision, detail, target, response) = match &result {
            Ok(o) => (
                o.decision,
                o.detail.clone(),
                o.target.clone(),
                o.response.clone(),
            ),
            Err(e) if e.is_transient() && !last_try => {
                (Decision::Retried, e.reason(), String::new(), String::new())
            }
            Err(e) => (
                Decision::DeadLettered,
                e.reason(),
                String::new(),
                String::new(),
            ),
        };
        let entry = LedgerEntry {
            at: tgb_proto::timestamps::rfc3339(time::OffsetDateTime::now_utc()),
            consumer: self.spec.name.clone(),
            subject: subject.clone(),
            event_id,
            correlation_id: meta.correlation_id.clone(),
            entity: meta.entity_key(),
            entity_version: meta.entity_version.clone(),
            deliveries,
            decision,
            detail,
            target,
            response,
            trace_id,
        };
        let fatal = matches!(&result, Err(e) if e.class() == ErrorClass::Fatal);
        if !fatal {
            ledger::append(&self.js, &entry).await;
        }
        metrics::counter!("tgb_decisions_total", "consumer" => self.spec.name.clone(), "decision" => entry.decision.as_str()).increment(1);
        let flow = match &result {
            Ok(o) => o.flow.map(|f| (f, o.decision.as_str())),
            Err(_) if decision == Decision::DeadLettered => flow_of_event.map(|f| (f, "failed")),
            Err(_) => None,
        };
        if let Some((flow, outcome)) = flow {
            record_flow(flow, outcome, meta.occurred_at.as_ref());
        }
        let _enter = span.enter();
        match result {
            // A plain ack, not a confirmed one: confirming cost a broker message and a round
            // trip per delivery (#21), and a lost ack only means a redelivery, which the
            // handlers find done (they are idempotent) and the ledger records as a duplicate.
            Ok(_) => match message.ack().await {
                Ok(()) => {
                    metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject, "outcome" => "acked").increment(1);
                }
                Err(e) => {
                    // The effect is done; the redelivery will find it done (handlers are idempotent).
                    tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered");
                }
            },
            Err(e) => match e.class() {
                ErrorClass::Transient { retry_after } => {
                    let reason = e.reason();
                    if last_try {
                        let reason = format!("gave up after {deliveries} deliveries: {reason}");
                        self.dead_letter(&message, "max_deliver", &reason, deliveries)
                            .await;
                    } else {
                        let delay = retry_after.unwrap_or_else(|| self.spec.backoff(deliveries));
                        tracing::info!(%reason, ?delay, "transient failure, redelivery later");
                        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                        metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject, "outcome" => "nakked").increment(1);
                    }
                }
                ErrorClass::Permanent => {
                    self.dead_letter(&message, "permanent", &e.reason(), deliveries)
                        .await;
                }
                ErrorClass::Fatal => {
                    let reason = e.reason();
                    tracing::error!(%reason, "fatal handler error, stopping the consumer");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(self.spec.backoff_base)))
                        .await;
                    *lock(&self.fatal_reason) = Some(reason);
                    self.fatal.cancel();
                }
            },
        }
    }

    /// Dead-letters every message the server stopped delivering to this consumer because its
    /// deliveries ran out unseen (each timed out: e.g. it crashed the process every time). The
    /// advisory names the stream sequence; the message is read from the stream and copied to
    /// `TGB_DLQ` once (replicas all hear the advisory; the DLQ de-duplicates by id).
    async fn watch_max_deliveries(
        self: Arc<Self>,
        mut advisories: async_nats::Subscriber,
        stream: jetstream::stream::Stream,
        stop: CancellationToken,
    ) {
        loop {
            let advisory = tokio::select! {
                a = advisories.next() => match a { Some(a) => a, None => return },
                _ = stop.cancelled() => return,
            };
            #[derive(serde::Deserialize)]
            struct MaxDeliveries {
                stream_seq: u64,
                deliveries: i64,
            }
            let Ok(a) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
                continue;
            };
            if lock(&self.held).contains(&a.stream_seq) {
                // Still queued or in flight here: the runner dead-letters it if it fails.
                continue;
            }
            match stream.get_raw_message(a.stream_seq).await {
                Ok(raw) => {
                    let reason = format!(
                        "no delivery was acknowledged or refused within its ack wait ({} deliveries)",
                        a.deliveries
                    );
                    self.copy_to_dlq(
                        &raw.subject,
                        Some(raw.headers.clone()),
                        raw.payload.clone(),
                        a.stream_seq,
                        "max_deliver",
                        &reason,
                        a.deliveries,
                    )
                    .await
                    .map_or_else(
                        |e| tracing::error!(error = %e, seq = a.stream_seq, "cannot dead-letter a message whose deliveries ran out"),
                        |()| tracing::warn!(consumer = %self.spec.name, seq = a.stream_seq, "dead-lettered a message whose deliveries ran out unseen"),
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, seq = a.stream_seq, "a message whose deliveries ran out is gone from the stream")
                }
            }
        }
    }

    /// Copies the message to `TGB_DLQ` with the reason, then terminates it. If the copy is not
    /// acknowledged, the message is nakked instead: it is never dropped.
    async fn dead_letter(&self, message: &Message, kind: &str, reason: &str, deliveries: i64) {
        let subject = message.subject.to_string();
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let copied = self
            .copy_to_dlq(
                &subject,
                message.headers.clone(),
                message.payload.clone(),
                seq,
                kind,
                reason,
                deliveries,
            )
            .await;
        match copied {
            Ok(()) => {
                tracing::warn!(consumer = %self.spec.name, %subject, kind, reason, "dead-lettered");
                let _ = message.double_ack_with(AckKind::Term).await;
                metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject, "outcome" => "dead_lettered").increment(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the dead letter; nakking instead");
                let _ = message
                    .ack_with(AckKind::Nak(Some(self.spec.backoff_max)))
                    .await;
            }
        }
    }

    /// Publishes a copy of a message to `TGB_DLQ` with why, and waits for the PubAck. One dead
    /// letter per consumer and message (`Nats-Msg-Id`), even if this runs twice.
    #[allow(clippy::too_many_arguments)]
    async fn copy_to_dlq(
        &self,
        subject: &str,
        headers: Option<HeaderMap>,
        payload: bytes::Bytes,
        seq: u64,
        kind: &str,
        reason: &str,
        deliveries: i64,
    ) -> Result<(), async_nats::Error> {
        let mut headers = headers.unwrap_or_default();
        headers.insert(
            names::HDR_MSG_ID,
            format!("dlq:{}:{seq}", self.spec.name).as_str(),
        );
        headers.insert(names::HDR_ERROR_KIND, kind);
        headers.insert(names::HDR_ERROR, single_line(reason).as_str());
        headers.insert(names::HDR_CONSUMER, self.spec.name.as_str());
        headers.insert(names::HDR_DELIVERIES, deliveries.to_string().as_str());
        headers.insert(names::HDR_ORIGINAL_SUBJECT, subject);
        headers.insert(names::HDR_ORIGINAL_SEQ, seq.to_string().as_str());
        self.js
            .publish_with_headers(
                names::dlq_subject(&self.spec.name, subject),
                headers,
                payload,
            )
            .await?
            .await?;
        Ok(())
    }
}

/// `tgb_flow_events_total{flow, outcome}`, and `tgb_flow_latency_seconds{flow}` from the
/// source event's `occurred_at` when the effect was applied.
fn record_flow(
    flow: &'static str,
    outcome: &'static str,
    occurred: Option<&prost_types::Timestamp>,
) {
    metrics::counter!("tgb_flow_events_total", "flow" => flow, "outcome" => outcome).increment(1);
    if outcome == Decision::Applied.as_str()
        && let Some(t) = occurred
        && let Some(at) = tgb_proto::timestamps::to_system(t)
        && let Ok(age) = std::time::SystemTime::now().duration_since(at)
    {
        metrics::histogram!("tgb_flow_latency_seconds", "flow" => flow).record(age.as_secs_f64());
    }
}

/// Header values are single lines.
fn single_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.chars().take(1024).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let spec = ConsumerSpec {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..ConsumerSpec::new("t", &["x"])
        };
        assert_eq!(spec.backoff(1), Duration::from_millis(100));
        assert_eq!(spec.backoff(2), Duration::from_millis(200));
        assert_eq!(spec.backoff(4), Duration::from_millis(800));
        assert_eq!(spec.backoff(5), Duration::from_secs(1));
        assert_eq!(spec.backoff(1000), Duration::from_secs(1));
    }
}
