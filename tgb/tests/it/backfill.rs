//! `tgb backfill tg` and `tgb backfill dataverse`: a first sync of 200 historical TG cases, 50
//! of which people already copied into Dynamics (an incident with the case id) and Planner (a
//! task with the case's marker) without tg-bridge: the 50 are matched and linked, the other
//! 150 created, each case ends with exactly one incident and one task, and a second run
//! creates nothing. Cases older than `--since` or of another partner are left alone, and the
//! ten-day-old cases' SLA breaches are recorded, not escalated.

use std::collections::BTreeMap;

use serde_json::json;
use tgb::ops;
use tgb_bus::links::{Links, Record};
use tgb_bus::names;

use crate::support;

const CASES: usize = 200;
const EXISTING: usize = 50;
const OLDER: usize = 10;
const OTHER_PARTNER: usize = 5;
const ISSUES_PLAN: &str = "pLnPartnerIssues00000000000A";
const TRIAGE_BUCKET: &str = "bKtTriage000000000000000000A";
const PARTNER_KEY: &str = "ZZ:BF01";
/// A hang guard for a drain of 200 cases (hundreds of governed requests), not a timing.
const DRAIN_GUARD: std::time::Duration = std::time::Duration::from_secs(400);

/// A case of the backfilled partner (`ZZ:BF01`).
fn raise(system: &tgb::system::System, title: &str) -> String {
    raise_for(system, "BF01", title)
}

/// A case of the partner `ZZ:<partner_id>`.
fn raise_for(system: &tgb::system::System, partner_id: &str, title: &str) -> String {
    let raise: tgb_sandbox::tg::model::RaiseCase = serde_json::from_value(json!({
        "partner": {"qualifier": "ZZ", "id": partner_id, "name": "Backfill Supplier"},
        "title": title,
        "priority": "normal",
    }))
    .unwrap();
    let ev = system.sandbox.tg().raise_case(raise).unwrap();
    ev.data["case_id"].as_str().unwrap().to_owned()
}

/// Dataverse's Web API as the person "agent".
fn dv_as_agent(system: &tgb::system::System) -> String {
    format!("{}/api/data/v9.2", system.sandbox.dataverse_url_as("agent"))
}

/// An agent creates the supplier's account (with its partner key); its id.
async fn create_account(http: &reqwest::Client, dv: &str) -> String {
    let r = http
        .post(format!("{dv}/accounts"))
        .json(&json!({"name": "Backfill Supplier", "tgb_partnerkey": PARTNER_KEY}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "account: {}", r.status());
    let entity = r.headers()["OData-EntityId"].to_str().unwrap().to_owned();
    entity
        .rsplit_once('(')
        .unwrap()
        .1
        .trim_end_matches(')')
        .to_owned()
}

/// An agent creates an incident of `account` with the columns of `body`.
async fn create_incident(
    http: &reqwest::Client,
    dv: &str,
    account: &str,
    mut body: serde_json::Value,
) {
    body["customerid_account@odata.bind"] = json!(format!("/accounts({account})"));
    let r = http
        .post(format!("{dv}/incidents"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "incident: {}", r.status());
}

/// A person copies case `c` into Planner by hand: a triage task with its marker, no link.
async fn copy_triage_task(http: &reqwest::Client, system: &tgb::system::System, c: &str) {
    let r = http
        .post(format!(
            "{}/v1.0/planner/tasks",
            system.sandbox.graph_url_as("planner")
        ))
        .json(&json!({"planId": ISSUES_PLAN, "bucketId": TRIAGE_BUCKET,
                      "title": format!("[{c}] copied by hand")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Cases linked both ways to an incident and to a Planner task (the task's way back is its
/// record in `tgb_sync`, as `tgb links` shows it).
async fn fully_linked(
    links: &Links,
    js: &async_nats::jetstream::Context,
    cases: &[String],
) -> usize {
    let mut n = 0;
    for c in cases {
        let rec = Record::new("tg", "case", c);
        let (Ok(Some(inc)), Ok(Some(task))) = (
            links.find(&rec, "dataverse", "incident").await,
            links.find(&rec, "planner", "task").await,
        ) else {
            continue;
        };
        let back_inc = links
            .find(&Record::new("dataverse", "incident", &inc), "tg", "case")
            .await;
        let back_task = tgb::ops::links(js, &format!("planner:task:{task}"))
            .await
            .is_ok_and(|rows| rows.iter().any(|r| r.to == "tg.case" && &r.id == c));
        if matches!(back_inc, Ok(Some(ref b)) if b == c) && back_task {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn backfill_of_200_cases_with_50_already_in_dynamics_and_planner_creates_150_and_links_all() {
    // The feed poller polls once at start (an empty feed: it has caught up) and not again
    // during the test: the history seeded below stands for what TG held before tg-bridge's
    // first start, which the poller's "now" start leaves alone (tg-ingress's start tests).
    // The Graph lane at 3,000 requests a minute instead of 600: the drain is paced by it
    // (about 3 requests per task), and the test need not last the minute 600 would take.
    let (system, _dir) = support::system(&[
        ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "3600000"),
        ("TGB_ROUTING__GRAPH__REQUESTS_PER_WINDOW", "3000"),
    ])
    .await;
    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let links = Links::new(js.get_key_value(names::KV_LINKS).await.unwrap());
    let tg = system.sandbox.tg();
    // History from before tg-bridge: no webhook reaches it, and the feed poller started at
    // "now" (the default) leaves it alone.
    assert!(tg.webhooks().set_paused("ingress", true));
    let now = time::OffsetDateTime::now_utc();
    tg.set_occurred_at(Some(now - time::Duration::days(40)));
    let older: Vec<String> = (0..OLDER)
        .map(|i| raise(&system, &format!("Too old {i}")))
        .collect();
    tg.set_occurred_at(Some(now - time::Duration::days(10)));
    let cases: Vec<String> = (0..CASES)
        .map(|i| raise(&system, &format!("Backfilled issue {i}")))
        .collect();
    // In range too, but of a partner the backfill does not name.
    let other: Vec<String> = (0..OTHER_PARTNER)
        .map(|i| raise_for(&system, "OTHER1", &format!("Another partner's issue {i}")))
        .collect();
    tg.set_occurred_at(None);

    // People copied the first 50 into Dynamics and Planner by hand.
    let http = reqwest::Client::new();
    let dv = dv_as_agent(&system);
    let account_id = create_account(&http, &dv).await;
    for c in &cases[..EXISTING] {
        create_incident(
            &http,
            &dv,
            &account_id,
            json!({"title": format!("{c} copied by hand"), "tgb_tgcaseid": c}),
        )
        .await;
        copy_triage_task(&http, &system, c).await;
    }
    let all: Vec<String> = cases.iter().chain(&older).chain(&other).cloned().collect();
    let before = support::records_per_case(&system, &all);
    let sync_kv = js.get_key_value(names::KV_SYNC).await.unwrap();
    let links_kv = js.get_key_value(names::KV_LINKS).await.unwrap();
    let task_records_before = support::keys(&sync_kv, "planner-task.").await;
    assert_eq!(
        support::stored(&js, "tgb.v1.tg.>").await,
        0,
        "TG's history is not on the stream"
    );
    assert_eq!(
        before.values().filter(|n| **n == (1, 1)).count(),
        EXISTING,
        "only the hand copies exist"
    );

    let config = system
        .service_config("tgb", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let client = tgb::backfill::tg_client(&config).unwrap();
    let opts = tgb::backfill::TgOptions {
        since: now - time::Duration::days(30),
        partners: vec![PARTNER_KEY.into()],
        dry_run: true,
        rate: 500.0,
    };
    let dry = tgb::backfill::tg(&config, &js, &client, &opts)
        .await
        .unwrap();
    eprintln!("{}", tgb::backfill::render(&dry));
    assert_eq!(dry.cases, CASES);
    assert_eq!(dry.events_in_range, CASES);
    assert_eq!(dry.skipped_before_since, OLDER);
    assert_eq!(dry.skipped_partner, OTHER_PARTNER);
    assert_eq!(
        (dry.incidents_matched, dry.tasks_matched),
        (EXISTING, EXISTING)
    );
    assert_eq!(
        (dry.incidents_to_create, dry.tasks_to_create),
        (CASES - EXISTING, CASES - EXISTING)
    );
    assert_eq!(dry.published, 0);
    // A dry run writes nothing: no link, no task record, no event, no record.
    assert!(support::keys(&links_kv, "tg.case.").await.is_empty());
    assert_eq!(
        support::keys(&sync_kv, "planner-task.").await,
        task_records_before
    );
    assert_eq!(support::stored(&js, "tgb.v1.tg.>").await, 0);
    assert_eq!(support::records_per_case(&system, &all), before);

    let started = std::time::Instant::now();
    let first = tgb::backfill::tg(
        &config,
        &js,
        &client,
        &tgb::backfill::TgOptions {
            dry_run: false,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    eprintln!("{}", tgb::backfill::render(&first));
    assert_eq!(
        (first.incidents_matched, first.tasks_matched),
        (EXISTING, EXISTING)
    );
    assert_eq!(first.incidents_already_linked, 0);
    assert_eq!(
        (first.incidents_to_create, first.tasks_to_create),
        (CASES - EXISTING, CASES - EXISTING)
    );
    assert_eq!(first.published, CASES);
    let linked = tgb_testkit::eventually(
        "every case in range linked both ways to one incident and one task",
        DRAIN_GUARD,
        || async { (fully_linked(&links, &js, &cases).await == CASES).then_some(()) },
    )
    .await;
    if linked.is_err() {
        let mut missing = BTreeMap::new();
        for (i, c) in cases.iter().enumerate() {
            let rec = Record::new("tg", "case", c);
            let inc = links.find(&rec, "dataverse", "incident").await.unwrap();
            let task = links.find(&rec, "planner", "task").await.unwrap();
            let k = (i < EXISTING, inc.is_some(), task.is_some());
            *missing.entry(k).or_insert(0) += 1;
        }
        panic!(
            "not all linked: (hand copy, incident link, task link) → cases {missing:?}; per case {:?}",
            support::records_per_case(&system, &cases).values().fold(
                BTreeMap::new(),
                |mut m, v| {
                    *m.entry(*v).or_insert(0) += 1;
                    m
                }
            )
        );
    }
    let took = started.elapsed();
    let after = support::records_per_case(&system, &all);
    let wrong: Vec<_> = cases
        .iter()
        .filter(|c| after[*c] != (1, 1))
        .map(|c| (c, after[c]))
        .collect();
    assert!(
        wrong.is_empty(),
        "one incident and one task per case: {wrong:?}"
    );
    assert!(
        older.iter().all(|c| after[c] == (0, 0)),
        "cases before --since are left alone"
    );
    assert!(
        other.iter().all(|c| after[c] == (0, 0)),
        "another partner's cases are left alone"
    );
    // What the backfill created: every incident and every case-marked task beyond the copies.
    let incidents = system.sandbox.dataverse().rows("incidents").len() - EXISTING;
    let tasks = after.values().map(|(_, t)| t).sum::<usize>() - EXISTING;
    let linked = fully_linked(&links, &js, &cases).await;
    eprintln!(
        "FIGURE backfill tg: {CASES} cases, {} matched (incident) / {} matched (task), {incidents} incidents and {tasks} tasks created, {linked} linked both ways, in {took:?}",
        first.incidents_matched, first.tasks_matched,
    );
    assert_eq!(
        (incidents, tasks),
        (CASES - EXISTING, CASES - EXISTING),
        "150 of each created beside the 50 copies"
    );

    // SLA: the cases are ten days old, past every target. Their clocks record the breaches
    // missed before the backfill (all levels of both targets) without raising them: no
    // `sla.case.breached`, no escalation task, once a whole tick has run after the last mark.
    let sla_kv = js.get_key_value(names::KV_SLA).await.unwrap();
    let marked = tgb_testkit::eventually(
        "every backfilled clock records its missed breaches",
        DRAIN_GUARD,
        || async {
            let mut marks = 0;
            for c in &cases {
                let entry = sla_kv.get(sla_monitor::store::key_of(c)).await.unwrap()?;
                let clock: sla_monitor::state::CaseClock = serde_json::from_slice(&entry).unwrap();
                let levels = |t: &str| clock.emitted.iter().filter(|m| m.starts_with(t)).count();
                if levels("first_response.") < 2 || levels("resolution.") < 2 {
                    return None;
                }
                marks += clock.emitted.len();
            }
            Some(marks)
        },
    )
    .await
    .unwrap();
    support::idle_after_two_ticks(&system, &js, &cases, DRAIN_GUARD).await;
    let breached = support::stored(&js, "tgb.v1.sla.case.breached").await;
    let all_tasks = support::task_titles(&system).len();
    eprintln!(
        "FIGURE backfill SLA: {marked} missed breaches recorded over {CASES} clocks, {breached} raised, {all_tasks} Planner tasks in all"
    );
    assert_eq!(breached, 0, "history is recorded, not escalated");
    assert_eq!(
        all_tasks, CASES,
        "one task per case in all plans: no escalation task"
    );

    // A second run: everything already linked, every event already on the stream.
    let second = tgb::backfill::tg(
        &config,
        &js,
        &client,
        &tgb::backfill::TgOptions {
            dry_run: false,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    eprintln!("{}", tgb::backfill::render(&second));
    assert_eq!((second.incidents_matched, second.tasks_matched), (0, 0));
    assert_eq!(
        (second.incidents_already_linked, second.tasks_already_linked),
        (CASES, CASES)
    );
    assert_eq!((second.incidents_to_create, second.tasks_to_create), (0, 0));
    assert_eq!((second.published, second.duplicates), (0, CASES));
    let dv_report = tgb::backfill::dataverse_open_incidents(&config, &js, false)
        .await
        .unwrap();
    eprintln!("{}", tgb::backfill::render(&dv_report));
    assert_eq!(dv_report.cases, CASES);
    assert_eq!(dv_report.incidents_already_linked, CASES);
    assert_eq!(
        (dv_report.incidents_matched, dv_report.tasks_matched),
        (0, 0)
    );
    // Every open incident is tg-bridge's own write by now (the copies were updated from
    // their cases): the detection sees echoes and publishes nothing.
    assert_eq!(
        (dv_report.replayed, dv_report.published),
        (CASES, 0),
        "{dv_report:?}"
    );
    // The second run's events reach the adapters (or are dropped as duplicates) and change
    // nothing: wait until the consumers are idle, then count again.
    let again = support::records_when_idle(&system, &js, &cases, DRAIN_GUARD).await;
    let wrong = support::not_one_each(&again);
    assert!(wrong.is_empty(), "a second run creates nothing: {wrong:?}");
    assert_eq!(system.sandbox.dataverse().rows("incidents").len(), CASES);
    eprintln!(
        "FIGURE backfill tg, second run: {} matched, {} published ({} already on the stream), 0 created",
        second.incidents_matched + second.tasks_matched,
        second.published,
        second.duplicates
    );
    assert_eq!(support::stored(&js, "tgb.v1.sla.case.breached").await, 0);
    assert_eq!(support::task_titles(&system).len(), CASES);
    system.stop().await;
}

/// The `dyn.case.*` events on the stream: (subject, TG case id).
async fn dyn_case_events(js: &async_nats::jetstream::Context) -> Vec<(String, String)> {
    support::stream_messages(js, "tgb.v1.dyn.case.>")
        .await
        .iter()
        .map(|m| {
            let case = match tgb_proto::Event::decode(&m.subject, &m.payload) {
                Ok(tgb_proto::Event::DynCaseStatusChanged(e)) => e.tg_case_id,
                Ok(tgb_proto::Event::DynCaseResolved(e)) => e.tg_case_id,
                _ => String::new(),
            };
            (m.subject.clone(), case)
        })
        .collect()
}

#[tokio::test]
async fn backfill_dataverse_replays_open_incidents_through_the_change_detection_after_matching() {
    // History from before tg-bridge on both sides: TG's webhooks and feed poller do not
    // bring the cases in, and Dataverse's change tracking (baseline at start, next round in an
    // hour) and webhooks do not bring the incidents in.
    let (system, _dir) = support::system(&[
        ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "3600000"),
        ("TGB_DYNAMICS__POLL_INTERVAL_MS", "3600000"),
    ])
    .await;
    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let links = Links::new(js.get_key_value(names::KV_LINKS).await.unwrap());
    let tg = system.sandbox.tg();
    assert!(tg.webhooks().set_paused("ingress", true));
    system.sandbox.dataverse().clear_webhooks();
    let waiting = raise(&system, "Waiting on the supplier's answer");
    let working = raise(&system, "Being worked on");
    let http = reqwest::Client::new();
    let dv = dv_as_agent(&system);
    let account_id = create_account(&http, &dv).await;
    // Agents opened incidents for the two cases (one waiting for the supplier's details, one
    // in progress), one of their own without a TG case, and a triage task for the first.
    for body in [
        json!({"title": "a", "tgb_tgcaseid": waiting, "statuscode": 3}),
        json!({"title": "b", "tgb_tgcaseid": working}),
        json!({"title": "agent's own"}),
    ] {
        create_incident(&http, &dv, &account_id, body).await;
    }
    copy_triage_task(&http, &system, &waiting).await;
    let status = |c: &str| tg.case(c).unwrap().status;
    assert_eq!(
        (status(&waiting), status(&working)),
        ("open".into(), "open".into())
    );
    let config = system
        .service_config("tgb", "127.0.0.1:0".parse().unwrap())
        .unwrap();
    let cases = [waiting.clone(), working.clone()];
    let linked_cases = || async {
        let mut n = 0;
        for c in &cases {
            let rec = Record::new("tg", "case", c);
            n += usize::from(
                links
                    .find(&rec, "dataverse", "incident")
                    .await
                    .unwrap()
                    .is_some(),
            );
        }
        n
    };

    let dry = tgb::backfill::dataverse_open_incidents(&config, &js, true)
        .await
        .unwrap();
    eprintln!("{}", tgb::backfill::render(&dry));
    assert_eq!(
        (dry.read, dry.cases, dry.skipped_no_case),
        (3, 2, 1),
        "{dry:?}"
    );
    assert_eq!(
        (dry.incidents_matched, dry.tasks_matched),
        (2, 1),
        "{dry:?}"
    );
    assert_eq!((dry.replayed, dry.published), (0, 0));
    assert_eq!(linked_cases().await, 0, "a dry run links nothing");
    assert!(
        dyn_case_events(&js).await.is_empty(),
        "a dry run publishes nothing"
    );

    let started = std::time::Instant::now();
    let r = tgb::backfill::dataverse_open_incidents(&config, &js, false)
        .await
        .unwrap();
    eprintln!("{}", tgb::backfill::render(&r));
    assert_eq!(
        (r.cases, r.incidents_matched, r.tasks_matched),
        (2, 2, 1),
        "{r:?}"
    );
    assert_eq!((r.replayed, r.published, r.duplicates), (2, 2, 0), "{r:?}");
    assert_eq!(linked_cases().await, 2);
    let mut events = dyn_case_events(&js).await;
    events.sort();
    let mut want = vec![
        ("tgb.v1.dyn.case.status_changed".to_owned(), waiting.clone()),
        ("tgb.v1.dyn.case.status_changed".to_owned(), working.clone()),
    ];
    want.sort();
    assert_eq!(
        events, want,
        "one status event per open incident of a TG case"
    );
    // tg-egress applies them to TG as it would a change seen by the poller.
    tgb_testkit::eventually(
        "each TG case takes its incident's status",
        tgb_testkit::HANG_GUARD,
        || async {
            (status(&waiting) == "waiting_on_partner" && status(&working) == "in_progress")
                .then_some(())
        },
    )
    .await
    .unwrap();
    eprintln!(
        "FIGURE backfill dataverse: 3 open incidents, 2 cases matched (2 incidents, 1 task), 2 replayed, 2 status events published and applied to TG, 1 skipped, in {:?}",
        started.elapsed()
    );

    let again = tgb::backfill::dataverse_open_incidents(&config, &js, false)
        .await
        .unwrap();
    eprintln!("{}", tgb::backfill::render(&again));
    assert_eq!(
        (again.incidents_matched, again.incidents_already_linked),
        (0, 2)
    );
    assert_eq!((again.replayed, again.published), (2, 0), "{again:?}");
    support::records_when_idle(&system, &js, &cases, tgb_testkit::HANG_GUARD).await;
    assert_eq!(
        dyn_case_events(&js).await.len(),
        2,
        "a second run publishes nothing"
    );
    system.stop().await;
}
