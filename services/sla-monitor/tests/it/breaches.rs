use std::time::{Duration, Instant};

use futures::StreamExt;
use tgb_proto as pb;
use tgb_proto::BusEvent as _;
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};
use tgb_sandbox::{Sandbox, SandboxConfig};
use tokio_util::sync::CancellationToken;

use crate::support::{Env, mins, opened, t0, ts, updated};

fn breaches_of(all: &[pb::SlaBreached], case_id: &str) -> Vec<pb::SlaBreached> {
    all.iter()
        .filter(|b| b.case_id == case_id)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_case_breaches_at_exactly_its_target_once_and_the_partner_is_told_once() {
    let env = Env::start().await;
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let raised = sandbox
        .tg()
        .raise_case(RaiseCase::new(
            PartnerRef {
                qualifier: "ZZ".into(),
                id: "BREACH1".into(),
                name: "Breach Corp".into(),
            },
            "Pallets missing",
        ))
        .unwrap();
    let case_id = raised.data["case_id"].as_str().unwrap().to_owned();

    // tg-egress in-process, so the breach's partner notice reaches TG.
    let egress_shutdown = CancellationToken::new();
    let egress_config = env.config(&[
        ("TGB_TG_API_URL", sandbox.tg_api_url()),
        ("TGB_TG_TOKEN_URL", sandbox.tg_token_url()),
        ("TGB_TG_CLIENT_ID", "tgb-bridge".into()),
        ("TGB_TG_CLIENT_SECRET", "tg-secret".into()),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let egress = tokio::spawn(tg_egress::serve(
        egress_config,
        listener,
        egress_shutdown.clone(),
    ));

    let monitor = env.monitor().await;
    env.publish(opened(&case_id, "BREACH1", pb::CasePriority::Urgent, t0()))
        .await;
    env.clock_of(&case_id, "clock started", |_| true).await;

    // One second before the first-response target: a warning (80 % = 48 min), no breach.
    let before = t0() + mins(60) - time::Duration::seconds(1);
    env.clock.set(before);
    monitor.evaluated(before).await;
    assert!(breaches_of(&env.events::<pb::SlaBreached>().await, &case_id).is_empty());
    let warnings = env.events::<pb::SlaWarning>().await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].target(), pb::SlaTarget::FirstResponse);
    assert_eq!(warnings[0].due_at, Some(ts(t0() + mins(60))));

    // At the target: exactly one breach, level 1, with the details.
    env.clock.set(t0() + mins(60));
    env.clock_of(&case_id, "breach marked", |c| {
        c.emitted.contains("first_response.1")
    })
    .await;
    monitor.evaluated(t0() + mins(60)).await;
    let breaches = breaches_of(&env.events::<pb::SlaBreached>().await, &case_id);
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    let b = &breaches[0];
    assert_eq!(b.target(), pb::SlaTarget::FirstResponse);
    assert_eq!(b.level, 1);
    assert_eq!(b.due_at, Some(ts(t0() + mins(60))));
    assert_eq!(b.breached_at, Some(ts(t0() + mins(60))));
    assert_eq!(b.priority(), pb::CasePriority::Urgent);
    assert_eq!(b.case_title, format!("Shipment short on {case_id}"));
    let to = b.escalate_to.clone().unwrap();
    assert_eq!(
        (to.team.as_str(), to.plan_id.as_str()),
        ("Service supervisors", "plan-supervisors")
    );
    assert_eq!(to.assignees, ["sup-1"]);
    let impact = b.impact.clone().unwrap();
    assert_eq!((impact.tier.as_str(), impact.open_cases), ("standard", 1));
    assert_eq!(impact.open_case_ids, vec![case_id.clone()]);
    assert_eq!(
        b.next_steps,
        ["Call the partner", "Agree a resolution date"]
    );
    assert!(b.partner_notice.contains(&case_id), "{}", b.partner_notice);
    assert_eq!(
        b.meta.as_ref().unwrap().partner_key().as_deref(),
        Some("ZZ:BREACH1")
    );

    // The partner is told once, by tg-egress.
    let notice = b.partner_notice.clone();
    tgb_testkit::eventually("partner notice in TG", tgb_testkit::HANG_GUARD, || async {
        sandbox
            .tg()
            .comments(&case_id)
            .iter()
            .any(|c| c.source == "api" && c.body == notice)
            .then_some(())
    })
    .await
    .unwrap();

    // Level 2 two hours later, and nothing twice.
    env.clock.set(t0() + mins(180));
    env.clock_of(&case_id, "level 2 marked", |c| {
        c.emitted.contains("first_response.2")
    })
    .await;
    monitor.evaluated(t0() + mins(180)).await;
    let breaches = breaches_of(&env.events::<pb::SlaBreached>().await, &case_id);
    let levels: Vec<u32> = breaches.iter().map(|b| b.level).collect();
    assert_eq!(levels, [1, 2]);
    assert_eq!(breaches[1].breached_at, Some(ts(t0() + mins(180))));
    assert!(
        breaches[1].partner_notice.is_empty(),
        "level 2 does not notify"
    );
    let notices = sandbox
        .tg()
        .comments(&case_id)
        .iter()
        .filter(|c| c.source == "api")
        .count();
    assert_eq!(notices, 1);

    let metrics = monitor.metrics().await;
    assert!(
        metrics.contains(r#"tgb_sla_breaches_total{partner="ZZ:BREACH1",level="1",top="false"} 1"#),
        "{metrics}"
    );
    // The policy has two levels: level 2 is its top level.
    assert!(
        metrics.contains(r#"tgb_sla_breaches_total{partner="ZZ:BREACH1",level="2",top="true"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"tgb_sla_warnings_total{partner="ZZ:BREACH1",level="1"} 1"#));

    monitor.stop().await;
    egress_shutdown.cancel();
    egress.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_breach_falling_due_while_sla_monitor_is_down_is_raised_once_after_the_restart() {
    let env = Env::start().await;
    let first = env.monitor().await;
    env.publish(opened("C-R1", "RESTART1", pb::CasePriority::Urgent, t0()))
        .await;
    env.clock_of("C-R1", "clock started", |_| true).await;
    env.clock.set(t0() + mins(30));
    first.evaluated(t0() + mins(30)).await;
    first.stop().await;

    // Down while the target passes.
    env.clock.set(t0() + mins(75));
    let second = env.monitor().await;
    env.clock_of("C-R1", "breach marked", |c| {
        c.emitted.contains("first_response.1")
    })
    .await;
    second.evaluated(t0() + mins(75)).await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert_eq!(breaches[0].breached_at, Some(ts(t0() + mins(60))));
    second.stop().await;
}

#[tokio::test]
async fn a_breach_published_just_before_a_crash_is_not_published_again() {
    let env = Env::start().await;
    let first = env.monitor().await;
    env.publish(opened("C-R2", "RESTART2", pb::CasePriority::Urgent, t0()))
        .await;
    let clock = env.clock_of("C-R2", "clock started", |_| true).await;
    first.stop().await;

    // What the crashed instance published before it could mark the breach: the same event id.
    let started = clock.started_at.unix_timestamp_nanos().to_string();
    let id = tgb_bus::ids::derived(clock.started_at, &["C-R2", &started, "first_response.1"]);
    let crashed = pb::SlaBreached {
        meta: Some(pb::EventMeta {
            event_id: id.clone(),
            ..pb::EventMeta::new(pb::Origin::Sla)
        }),
        case_id: "C-R2".into(),
        level: 1,
        ..Default::default()
    };
    env.publish(crashed).await;

    env.clock.set(t0() + mins(60));
    let second = env.monitor().await;
    env.clock_of("C-R2", "breach marked", |c| {
        c.emitted.contains("first_response.1")
    })
    .await;
    second.evaluated(t0() + mins(60)).await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert_eq!(breaches[0].meta.as_ref().unwrap().event_id, id);
    second.stop().await;
}

#[tokio::test]
async fn two_instances_at_once_raise_each_breach_once() {
    let env = Env::start().await;
    let a = env.monitor().await;
    let b = env.monitor().await;
    let cases: Vec<String> = (1..=6).map(|i| format!("C-TWO-{i}")).collect();
    for c in &cases {
        env.publish(opened(c, "TWO1", pb::CasePriority::Urgent, t0()))
            .await;
    }
    for c in &cases {
        env.clock_of(c, "clock started", |_| true).await;
    }
    env.clock.set(t0() + mins(60));
    for c in &cases {
        env.clock_of(c, "breach marked", |k| {
            k.emitted.contains("first_response.1")
        })
        .await;
    }
    a.evaluated(t0() + mins(60)).await;
    b.evaluated(t0() + mins(60)).await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert_eq!(breaches.len(), cases.len(), "{breaches:?}");
    for c in &cases {
        let mine = breaches_of(&breaches, c);
        assert_eq!(mine.len(), 1, "{c}: {mine:?}");
        assert_eq!(mine[0].breached_at, Some(ts(t0() + mins(60))));
        assert_eq!(mine[0].impact.as_ref().unwrap().open_cases, 6);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_paused_clock_does_not_breach_and_resumes_where_it_stopped() {
    let env = Env::start().await;
    let monitor = env.monitor().await;
    env.publish(opened("C-P1", "PAUSE1", pb::CasePriority::Urgent, t0()))
        .await;
    env.clock_of("C-P1", "clock started", |_| true).await;
    env.publish(updated(
        "C-P1",
        "PAUSE1",
        2,
        pb::CasePriority::Urgent,
        pb::CaseStatus::WaitingOnPartner,
        t0() + mins(10),
    ))
    .await;
    env.clock_of("C-P1", "paused", |c| c.paused_since.is_some())
        .await;

    // Ten hours waiting on the partner: no warning, no breach.
    env.clock.set(t0() + mins(600));
    monitor.evaluated(t0() + mins(600)).await;
    assert!(env.events::<pb::SlaBreached>().await.is_empty());
    assert!(env.events::<pb::SlaWarning>().await.is_empty());

    // The partner answers: the 50 remaining minutes run from there.
    env.publish(updated(
        "C-P1",
        "PAUSE1",
        3,
        pb::CasePriority::Urgent,
        pb::CaseStatus::InProgress,
        t0() + mins(600),
    ))
    .await;
    env.clock_of("C-P1", "resumed", |c| c.paused_since.is_none())
        .await;
    env.clock.set(t0() + mins(649));
    monitor.evaluated(t0() + mins(649)).await;
    assert!(env.events::<pb::SlaBreached>().await.is_empty());
    env.clock.set(t0() + mins(650));
    env.clock_of("C-P1", "breach marked", |c| {
        c.emitted.contains("first_response.1")
    })
    .await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert_eq!(breaches.len(), 1);
    assert_eq!(breaches[0].due_at, Some(ts(t0() + mins(650))));
    monitor.stop().await;
}

#[tokio::test]
async fn a_first_response_or_resolution_stops_the_clock_and_a_priority_change_retargets() {
    let env = Env::start().await;
    let monitor = env.monitor().await;
    // Responded to by a Dynamics note after 5 minutes: no first-response breach ever.
    env.publish(opened("C-F1", "FIRST1", pb::CasePriority::Normal, t0()))
        .await;
    env.clock_of("C-F1", "clock started", |_| true).await;
    env.publish(pb::DynCaseNoteAdded {
        meta: crate::support::meta(pb::Origin::Dyn, "C-F1", "FIRST1", t0() + mins(5)),
        tg_case_id: "C-F1".into(),
        text: "We are on it".into(),
        ..Default::default()
    })
    .await;
    let c = env
        .clock_of("C-F1", "responded", |c| c.first_response_at.is_some())
        .await;
    assert_eq!(c.first_response_at, Some(t0() + mins(5)));
    // Raised from normal to urgent after 10 minutes: the resolution target is now 480 min.
    env.publish(updated(
        "C-F1",
        "FIRST1",
        2,
        pb::CasePriority::Urgent,
        pb::CaseStatus::InProgress,
        t0() + mins(10),
    ))
    .await;
    env.clock_of("C-F1", "urgent", |c| c.priority == "urgent")
        .await;
    env.clock.set(t0() + mins(480));
    env.clock_of("C-F1", "resolution breach", |c| {
        c.emitted.contains("resolution.1")
    })
    .await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert_eq!(breaches[0].target(), pb::SlaTarget::Resolution);

    // Resolved in Dynamics: the clock stops; nothing more falls due.
    env.publish(pb::DynCaseResolved {
        meta: crate::support::meta(pb::Origin::Dyn, "C-F1", "FIRST1", t0() + mins(490)),
        tg_case_id: "C-F1".into(),
        ..Default::default()
    })
    .await;
    env.clock_of("C-F1", "stopped", |c| c.stopped_at.is_some())
        .await;
    env.clock.set(t0() + mins(5000));
    monitor.evaluated(t0() + mins(5000)).await;
    assert_eq!(env.events::<pb::SlaBreached>().await.len(), 1);
    let metrics = monitor.metrics().await;
    assert!(
        metrics.contains(r#"tgb_sla_open_clocks{partner="ZZ:FIRST1"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains("tgb_sla_time_to_first_response_seconds"));
    assert!(metrics.contains("tgb_sla_time_to_resolution_seconds"));
    monitor.stop().await;
}

/// A breach is found by the first tick that starts after the clock source reached the target
/// (with the production tick interval, 1 s), over several cases. The wall-clock delay is printed
/// as a figure; the condition is counted in ticks, so a slow machine cannot fail it.
#[tokio::test]
async fn a_breach_is_found_by_the_first_tick_after_the_target() {
    let env = Env::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ticker_url = format!("http://{}/sla/ticker", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sla_monitor::serve_with_clock(
        env.config(&[("TGB_SLA__TICK_INTERVAL_MS", "1000".into())]),
        listener,
        shutdown.clone(),
        std::sync::Arc::new(env.clock.clone()),
    ));
    let ticks = || async {
        let v: serde_json::Value = reqwest::get(&ticker_url).await.ok()?.json().await.ok()?;
        v["ticks"].as_u64()
    };
    let mut sub = env
        .bus
        .client()
        .subscribe(pb::SlaBreached::SUBJECT)
        .await
        .unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..5i64 {
        let case_id = format!("C-D{i}");
        let start = t0() + mins(i * 1000);
        env.clock.set(start);
        env.publish(opened(&case_id, "DELAY1", pb::CasePriority::Urgent, start))
            .await;
        env.clock_of(&case_id, "clock started", |_| true).await;
        // Past the 80 % warning (48 of 60 min): the warning shows the ticker holds the clock.
        env.clock.set(start + mins(50));
        env.clock_of(&case_id, "warned", |c| c.emitted.len() == 1)
            .await;
        env.clock.set(start + mins(60));
        let since = Instant::now();
        // A tick under way now may have read the clock before the target; the one after it
        // started after the target was reached, and must have found the breach by its end.
        let set_at = tgb_testkit::eventually("the ticker answers", tgb_testkit::HANG_GUARD, ticks)
            .await
            .unwrap();
        tgb_testkit::eventually(
            "two ticks after the target",
            tgb_testkit::HANG_GUARD,
            || async { ticks().await.filter(|n| *n >= set_at + 2) },
        )
        .await
        .unwrap();
        let clocks = sla_monitor::store::Clocks::new(env.bus.kv("tgb_sla").await.unwrap());
        let (clock, _) = clocks
            .read(&sla_monitor::store::key_of(&case_id))
            .await
            .unwrap();
        let clock = clock.unwrap();
        assert!(
            clock.emitted.contains("first_response.1"),
            "the second tick after the target had not found the breach: {:?}",
            clock.emitted
        );
        let msg = tokio::time::timeout(tgb_testkit::HANG_GUARD, sub.next())
            .await
            .unwrap()
            .unwrap();
        worst = worst.max(since.elapsed());
        let b = <pb::SlaBreached as prost::Message>::decode(msg.payload.as_ref()).unwrap();
        assert_eq!(b.case_id, case_id);
        // Resolve it, so the next case's breach is the only one.
        env.publish(updated(
            &case_id,
            "DELAY1",
            2,
            pb::CasePriority::Urgent,
            pb::CaseStatus::Resolved,
            start + mins(61),
        ))
        .await;
        env.clock_of(&case_id, "stopped", |c| c.stopped_at.is_some())
            .await;
    }
    eprintln!(
        "FIGURE breach detection: at most {worst:?} from target to the breach with a 1 s tick"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// One evaluation over many open clocks sees every one of them (its duration is printed for
/// the report).
#[tokio::test]
async fn a_tick_evaluates_two_thousand_open_clocks() {
    let env = Env::start().await;
    let clocks = sla_monitor::store::Clocks::new(env.bus.kv("tgb_sla").await.unwrap());
    let n = 2000;
    let mut writes = futures::stream::iter((0..n).map(|i| {
        let clocks = clocks.clone();
        async move {
            let id = format!("C-LOAD-{i}");
            let mut c = sla_monitor::state::CaseClock::start(&id, t0());
            c.tier = "standard".into();
            c.priority = "low".into();
            clocks
                .update(&sla_monitor::store::key_of(&id), |_| {
                    sla_monitor::store::Change::Put(c.clone(), ())
                })
                .await
                .unwrap();
        }
    }))
    .buffer_unordered(64);
    while writes.next().await.is_some() {}
    let monitor = env.monitor().await;
    let took = tgb_testkit::eventually(
        "a tick over every clock",
        tgb_testkit::HANG_GUARD,
        || async {
            let v: serde_json::Value = reqwest::get(format!("{}/sla/ticker", monitor.base))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["clocks"].as_u64()? == n).then(|| v["took_us"].as_u64())?
        },
    )
    .await
    .unwrap();
    // A figure, not a condition: wall time on a shared machine says little (tgb bench measures
    // the SLA path's CPU per case).
    eprintln!("FIGURE one tick over {n} open clocks took {took} us");
    monitor.stop().await;
}

#[tokio::test]
async fn a_backfilled_case_records_the_breaches_missed_before_the_replay_and_raises_those_to_come()
{
    let env = Env::start().await;
    let monitor = env.monitor().await;
    // The backfill replays, 100 minutes after they opened, an urgent case tg-bridge never saw
    // (first response due at 60 min, level 2 at 180 min); a live case opened at the same time
    // is the control.
    let replay = t0() + mins(100);
    env.clock.set(replay);
    let mut old = opened("C-OLD", "BACKFILL1", pb::CasePriority::Urgent, t0());
    old.meta.as_mut().unwrap().replayed_at = Some(ts(replay));
    env.publish(old).await;
    env.publish(opened(
        "C-LIVE",
        "BACKFILL1",
        pb::CasePriority::Urgent,
        t0(),
    ))
    .await;
    let old = env
        .clock_of("C-OLD", "the missed level marked", |c| {
            c.emitted.contains("first_response.1")
        })
        .await;
    assert_eq!(old.history_until, Some(replay));
    env.clock_of("C-LIVE", "the live breach marked", |c| {
        c.emitted.contains("first_response.1")
    })
    .await;
    monitor.evaluated(replay).await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert!(
        breaches_of(&breaches, "C-OLD").is_empty(),
        "history is recorded, not raised: {breaches:?}"
    );
    assert_eq!(breaches_of(&breaches, "C-LIVE").len(), 1, "{breaches:?}");

    // Level 2 falls due after the replay: it is raised, once.
    env.clock.set(t0() + mins(180));
    env.clock_of("C-OLD", "level 2 marked", |c| {
        c.emitted.contains("first_response.2")
    })
    .await;
    monitor.evaluated(t0() + mins(180)).await;
    let breaches = breaches_of(&env.events::<pb::SlaBreached>().await, "C-OLD");
    let levels: Vec<u32> = breaches.iter().map(|b| b.level).collect();
    assert_eq!(levels, [2]);
    assert_eq!(breaches[0].breached_at, Some(ts(t0() + mins(180))));

    let metrics = monitor.metrics().await;
    assert!(
        metrics.contains(r#"tgb_sla_history_breaches_total{partner="ZZ:BACKFILL1"} 1"#),
        "{metrics}"
    );
    monitor.stop().await;
}
