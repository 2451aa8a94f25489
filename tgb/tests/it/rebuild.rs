//! `tgb rebuild links` and `tgb rebuild sla` after `tgb_links` (with planner-adapter's task
//! records) and `tgb_sla` were lost: the links come back from Dataverse's `tgb_tgcaseid` and the
//! Planner markers (the escalation tasks' too), the clocks from the cases' history; a burst of
//! updates to the same cases then creates no second task and no second incident, and every SLA
//! breach is raised exactly once. When the history itself has left the stream, a TG backfill
//! brings the clocks back without raising their past breaches again.

use std::collections::BTreeMap;
use std::time::Duration;

use tgb::ops;
use tgb_bus::names;

use crate::support::{self, keys};

const CASES: usize = 12;

fn raise(system: &tgb::system::System, n: usize) -> String {
    let raise: tgb_sandbox::tg::model::RaiseCase = serde_json::from_value(serde_json::json!({
        "partner": {"qualifier": "ZZ", "id": "RB01", "name": "Rebuild Supplier"},
        "title": format!("Rebuild case {n}"),
        "priority": "normal",
    }))
    .unwrap();
    let ev = system.sandbox.tg().raise_case(raise).unwrap();
    ev.data["case_id"].as_str().unwrap().to_owned()
}

async fn case_links(kv: &async_nats::jetstream::kv::Store) -> Vec<String> {
    let mut out = keys(kv, "tg.case.").await;
    out.extend(keys(kv, "planner.task.").await);
    out.extend(keys(kv, "dataverse.incident.").await);
    out
}

/// `sla.case.breached` on the stream per (case, target, level).
async fn breaches(js: &async_nats::jetstream::Context) -> BTreeMap<(String, i32, u32), usize> {
    let mut out = BTreeMap::new();
    for m in support::stream_messages(js, "tgb.v1.sla.case.breached").await {
        if let Ok(tgb_proto::Event::SlaBreached(e)) =
            tgb_proto::Event::decode(&m.subject, &m.payload)
        {
            *out.entry((e.case_id, e.target, e.level)).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test]
async fn rebuild_after_loss_then_updates_create_no_duplicates_and_raise_each_breach_once() {
    let (system, _dir) = support::system(&[]).await;
    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let links_kv = js.get_key_value(names::KV_LINKS).await.unwrap();
    let sync_kv = js.get_key_value(names::KV_SYNC).await.unwrap();
    let sla_kv = js.get_key_value(names::KV_SLA).await.unwrap();
    let links = tgb_bus::links::Links::new(links_kv.clone());

    let cases: Vec<String> = (0..CASES).map(|n| raise(&system, n)).collect();
    // Every case has its incident and its triage task, both linked.
    tgb_testkit::eventually(
        "every case has a linked incident and a linked task",
        tgb_testkit::HANG_GUARD,
        || async {
            for c in &cases {
                let rec = tgb_bus::links::Record::new("tg", "case", c);
                links.find(&rec, "dataverse", "incident").await.ok()??;
                let task = links.find(&rec, "planner", "task").await.ok()??;
                // The adapter's own record, written after the link.
                sync_kv
                    .get(format!(
                        "planner-task.{}",
                        tgb_bus::links::encode_token(&task)
                    ))
                    .await
                    .ok()??;
            }
            Some(())
        },
    )
    .await
    .unwrap();
    // Past the first-response target (normal priority, standard tier: 240 min) and its level 1
    // escalation, before level 2 (120 min later): each case's level-1 breach is raised and
    // marked in its clock.
    system.sla_clock.advance(Duration::from_secs(250 * 60));
    let fr = tgb_proto::SlaTarget::FirstResponse as i32;
    tgb_testkit::eventually(
        "every case's first-response level-1 breach is raised and marked",
        tgb_testkit::HANG_GUARD,
        || async {
            let raised = breaches(&js).await;
            for c in &cases {
                raised.get(&(c.clone(), fr, 1))?;
                let key = sla_monitor::store::key_of(c);
                let (clock, _) =
                    tgb_bus::kv::read_json::<sla_monitor::state::CaseClock>(&sla_kv, &key)
                        .await
                        .ok()?;
                clock?.emitted.contains("first_response.1").then_some(())?;
            }
            Some(())
        },
    )
    .await
    .unwrap();

    // Nothing in flight: the loss below is not undone by a handler still at work.
    let counts = support::records_when_idle(&system, &js, &cases, tgb_testkit::HANG_GUARD).await;
    let wrong = support::not_one_each(&counts);
    assert!(
        wrong.is_empty(),
        "one incident and one task per case: {wrong:?}"
    );

    // The loss: every link, and planner-adapter's task records.
    let before = keys(&links_kv, "").await.len();
    for k in keys(&links_kv, "").await {
        links_kv.purge(&k).await.unwrap();
    }
    for k in keys(&sync_kv, "planner-task.").await {
        sync_kv.purge(&k).await.unwrap();
    }
    // (dynamics-adapter's change poller may re-link the partner's account meanwhile: the case
    // links are the ones only the flows or the rebuild write.)
    assert!(case_links(&links_kv).await.is_empty());
    let clocks_before = keys(&sla_kv, "case.").await.len();
    for k in keys(&sla_kv, "").await {
        sla_kv.purge(&k).await.unwrap();
    }
    assert!(keys(&sla_kv, "").await.is_empty());

    let config = system
        .service_config("tgb", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let started = std::time::Instant::now();
    let dry = tgb::rebuild::links_from_config(&config, &js, None, true)
        .await
        .unwrap();
    assert!(dry.dry_run && dry.links_written > 0, "{dry:?}");
    assert!(
        case_links(&links_kv).await.is_empty(),
        "a dry run writes nothing"
    );
    let first = tgb::rebuild::links_from_config(&config, &js, None, false)
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "rebuild links: {}\n({before} link keys before the loss, {} after; dry run + run in {took:?})",
        tgb::rebuild::render_links(&first),
        keys(&links_kv, "").await.len()
    );
    assert!(first.links_written >= 2 * CASES && first.links_written <= dry.links_written);
    assert!(first.incidents >= CASES && first.task_records_written >= CASES);
    for c in &cases {
        let rec = tgb_bus::links::Record::new("tg", "case", c);
        assert!(
            links
                .find(&rec, "dataverse", "incident")
                .await
                .unwrap()
                .is_some()
        );
        assert!(links.find(&rec, "planner", "task").await.unwrap().is_some());
        // The level-1 escalation task, from its marker and the target its text names.
        let breach = format!("{c}/esc-{fr}-L1");
        let escalation = tgb_bus::links::Record::new("tgb", "escalation", &breach);
        let task = links.find(&escalation, "planner", "task").await.unwrap();
        let task = task.unwrap_or_else(|| panic!("{c}: no escalation link rebuilt"));
        assert!(
            sync_kv
                .get(format!(
                    "planner-task.{}",
                    tgb_bus::links::encode_token(&task)
                ))
                .await
                .unwrap()
                .is_some(),
            "{c}: the escalation task's record"
        );
    }
    let second = tgb::rebuild::links_from_config(&config, &js, None, false)
        .await
        .unwrap();
    assert!(second.nothing_to_do(), "{second:?}");
    assert!(tgb::rebuild::render_links(&second).contains("nothing to write"));

    let policies = sla_monitor::policies_from(
        &system
            .service_config("sla-monitor", "127.0.0.1:0".parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let dry = tgb::rebuild_sla::sla(&js, policies.clone(), true)
        .await
        .unwrap();
    assert_eq!(dry.clocks_written, CASES, "{dry:?}");
    assert!(
        keys(&sla_kv, "").await.is_empty(),
        "a dry run writes nothing"
    );
    let sla = tgb::rebuild_sla::sla(&js, policies.clone(), false)
        .await
        .unwrap();
    eprintln!(
        "rebuild sla: {}\n({clocks_before} clocks before the loss; dry run + run in {:?})",
        tgb::rebuild_sla::render(&sla),
        started.elapsed()
    );
    assert_eq!(sla.clocks_written, CASES);
    assert!(
        sla.written
            .iter()
            .all(|(_, emitted)| emitted.iter().any(|e| e == "first_response.1")),
        "the breach already raised is marked: {sla:?}"
    );
    let again = tgb::rebuild_sla::sla(&js, policies, false).await.unwrap();
    assert_eq!(again.clocks_written, 0, "{again:?}");
    assert_eq!(again.clocks_present, CASES);

    // A burst of updates to the same cases: each reaches its incident and its task.
    for c in &cases {
        let update: tgb_sandbox::tg::model::UpdateCase = serde_json::from_value(
            serde_json::json!({"title": format!("{c} renamed after rebuild")}),
        )
        .unwrap();
        system.sandbox.tg().update_case(c, update).unwrap();
    }
    tgb_testkit::eventually(
        "every rename reached its incident and its task",
        tgb_testkit::HANG_GUARD,
        || async {
            let titles = support::task_titles(&system);
            let rows = system.sandbox.dataverse().rows("incidents");
            cases
                .iter()
                .all(|c| {
                    let text = format!("{c} renamed after rebuild");
                    titles.iter().any(|t| t.contains(&text))
                        && rows.iter().any(|r| {
                            r["tgb_tgcaseid"] == c.as_str()
                                && r["title"].as_str().is_some_and(|t| t.contains(&text))
                        })
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Level 2 falls due (370 min): raised once per case from the rebuilt clocks; level 1 is
    // not raised again. Two more complete evaluations after the last level 2 appeared give a
    // repeat every chance to show.
    system.sla_clock.advance(Duration::from_secs(120 * 60));
    tgb_testkit::eventually(
        "every case's level-2 breach is raised",
        tgb_testkit::HANG_GUARD,
        || async {
            let raised = breaches(&js).await;
            cases
                .iter()
                .all(|c| raised.contains_key(&(c.clone(), fr, 2)))
                .then_some(())
        },
    )
    .await
    .unwrap();
    let counts = support::idle_after_two_ticks(&system, &js, &cases, tgb_testkit::HANG_GUARD).await;
    let raised = breaches(&js).await;
    eprintln!("breaches per (case, target, level): {raised:?}");
    for c in &cases {
        assert_eq!(raised.get(&(c.clone(), fr, 1)), Some(&1), "{c}: {raised:?}");
        assert_eq!(raised.get(&(c.clone(), fr, 2)), Some(&1), "{c}: {raised:?}");
    }
    assert!(raised.values().all(|n| *n == 1), "{raised:?}");

    let wrong = support::not_one_each(&counts);
    assert!(wrong.is_empty(), "(incidents, tasks) per case: {wrong:?}");
    system.stop().await;
}

/// Waits until the event stream's duplicate window no longer holds the ids published before
/// this call: the window is shortened, a probe id is published again until JetStream takes it
/// as new, then the window is set back. Stands in for history older than the window.
async fn age_the_duplicate_window(js: &async_nats::jetstream::Context) {
    let mut stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    let window = config.duplicate_window;
    let probe = || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "rebuild-test-age-probe");
        js.publish_with_headers("tgb.v1.test.age_probe", headers, "".into())
            .await
            .ok()?
            .await
            .ok()
    };
    probe().await.unwrap();
    config.duplicate_window = Duration::from_millis(500);
    js.update_stream(&config).await.unwrap();
    tgb_testkit::eventually(
        "the duplicate window forgot the ids before it",
        tgb_testkit::HANG_GUARD,
        || async { probe().await.filter(|ack| !ack.duplicate).map(|_| ()) },
    )
    .await
    .unwrap();
    config.duplicate_window = window;
    js.update_stream(&config).await.unwrap();
}

#[tokio::test]
async fn clocks_whose_history_left_the_stream_come_back_from_a_tg_backfill_without_raising_again() {
    const OLD: usize = 3;
    // No feed poll during the test: the cases reach tg-bridge by webhook, as in production.
    let (system, _dir) = support::system(&[("TGB_TG_INGRESS__POLL_INTERVAL_MS", "3600000")]).await;
    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let sla_kv = js.get_key_value(names::KV_SLA).await.unwrap();
    let tg = system.sandbox.tg();

    // Three cases opened ten days ago reach tg-bridge live: every level of both targets is
    // past, raised and marked, with its escalation tasks.
    let now = time::OffsetDateTime::now_utc();
    tg.set_occurred_at(Some(now - time::Duration::days(10)));
    let cases: Vec<String> = (0..OLD).map(|n| raise(&system, n)).collect();
    tg.set_occurred_at(None);
    let clock_of = |c: String| {
        let sla_kv = sla_kv.clone();
        async move {
            let (clock, _) = tgb_bus::kv::read_json::<sla_monitor::state::CaseClock>(
                &sla_kv,
                &sla_monitor::store::key_of(&c),
            )
            .await
            .ok()?;
            clock
        }
    };
    let marks = || async {
        let mut all = BTreeMap::new();
        for c in &cases {
            let clock = clock_of(c.clone()).await?;
            all.insert(c.clone(), clock.emitted);
        }
        Some(all)
    };
    // Both levels of both targets marked in every clock.
    let all_marked = |what: &'static str| {
        tgb_testkit::eventually(what, tgb_testkit::HANG_GUARD, || async {
            marks().await.filter(|m| m.values().all(|e| e.len() >= 4))
        })
    };
    let live = all_marked("every live clock has raised both levels of both targets")
        .await
        .unwrap();
    let counts = support::idle_after_two_ticks(&system, &js, &cases, tgb_testkit::HANG_GUARD).await;
    assert!(support::not_one_each(&counts).is_empty(), "{counts:?}");
    let raised_live: usize = breaches(&js).await.values().sum();
    let tasks_live = support::task_titles(&system).len();
    assert_eq!(raised_live, 4 * OLD, "{:?}", breaches(&js).await);

    // The loss: the clocks, and the history has aged out of the stream (retention by age: the
    // messages are gone and their ids are past the duplicate window).
    for k in keys(&sla_kv, "").await {
        sla_kv.purge(&k).await.unwrap();
    }
    age_the_duplicate_window(&js).await;
    js.get_stream(names::EVENTS_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let policies = sla_monitor::policies_from(
        &system
            .service_config("sla-monitor", "127.0.0.1:0".parse().unwrap())
            .unwrap(),
    )
    .unwrap();
    let rebuilt = tgb::rebuild_sla::sla(&js, policies, false).await.unwrap();
    assert_eq!(rebuilt.clocks_written, 0, "no history left to rebuild from");

    // The remedy the docs give: a TG backfill over the open cases' time.
    let config = system
        .service_config("tgb", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client = tgb::backfill::tg_client(&config).unwrap();
    let report = tgb::backfill::tg(
        &config,
        &js,
        &client,
        &tgb::backfill::TgOptions {
            since: now - time::Duration::days(30),
            partners: Vec::new(),
            dry_run: false,
            rate: 500.0,
        },
    )
    .await
    .unwrap();
    eprintln!("{}", tgb::backfill::render(&report));
    assert_eq!(report.incidents_already_linked, OLD);
    assert_eq!(report.tasks_already_linked, OLD);
    assert_eq!((report.published, report.duplicates), (OLD, 0));
    let back = all_marked("every clock is back with its past breaches recorded")
        .await
        .unwrap();
    assert_eq!(back, live, "the same breaches marked as before the loss");
    let counts = support::idle_after_two_ticks(&system, &js, &cases, tgb_testkit::HANG_GUARD).await;
    let raised_again: usize = breaches(&js).await.values().sum();
    let tasks = support::task_titles(&system).len();
    eprintln!(
        "FIGURE clocks back from a TG backfill: {OLD} clocks, {raised_live} breaches raised live, {raised_again} raised again, tasks {tasks_live} → {tasks}"
    );
    assert_eq!(raised_again, 0, "no breach raised a second time");
    assert_eq!(tasks, tasks_live, "no escalation task twice");
    assert!(support::not_one_each(&counts).is_empty(), "{counts:?}");
    for c in &cases {
        let clock = clock_of(c.clone()).await.unwrap();
        assert!(clock.history_until.is_some(), "{c}: replayed history");
    }
    system.stop().await;
}
