use std::collections::BTreeMap;

use futures::TryStreamExt as _;
use tgb::system::{System, UpOptions};
use tgb_bus::names;

/// A whole tg-bridge on free ports with its own NATS store, plus the temporary directory that
/// holds it.
pub async fn system(extra_env: &[(&str, &str)]) -> (System, tempfile::TempDir) {
    tgb_testkit::init_test_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = UpOptions::ephemeral(dir.path());
    opts.extra_env = extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let system = System::start(opts).await.expect("tgb up starts");
    system
        .wait_ready(tgb_testkit::HANG_GUARD)
        .await
        .expect("every service ready");
    (system, dir)
}

/// Every service consumer of the event stream (the durable ones: a test's own ephemeral
/// readers linger after use with their count) has delivered and had acknowledged all it holds.
pub async fn settled(js: &async_nats::jetstream::Context) -> Option<()> {
    let stream = js.get_stream(names::EVENTS_STREAM).await.ok()?;
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.try_next().await.ok()? {
        if info.config.durable_name.is_none() {
            continue;
        }
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return None;
        }
    }
    Some(())
}

/// Planner task titles, all plans.
pub fn task_titles(system: &System) -> Vec<String> {
    system.sandbox.planner().snapshot()["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["task"]["title"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Per case: (incidents holding its id in `tgb_tgcaseid`, Planner tasks with its marker).
pub fn records_per_case(system: &System, cases: &[String]) -> BTreeMap<String, (usize, usize)> {
    let rows = system.sandbox.dataverse().rows("incidents");
    let titles = task_titles(system);
    cases
        .iter()
        .map(|c| {
            let marker = format!("[{c}] ");
            let incidents = rows
                .iter()
                .filter(|r| r["tgb_tgcaseid"] == c.as_str())
                .count();
            let tasks = titles.iter().filter(|t| t.starts_with(&marker)).count();
            (c.clone(), (incidents, tasks))
        })
        .collect()
}

/// Waits until the services are idle (nothing pending or unacknowledged on any consumer:
/// no handler is still creating), then counts each case's records ([`records_per_case`]).
pub async fn records_when_idle(
    system: &System,
    js: &async_nats::jetstream::Context,
    cases: &[String],
    guard: std::time::Duration,
) -> BTreeMap<String, (usize, usize)> {
    tgb_testkit::eventually("the services are idle", guard, || settled(js))
        .await
        .unwrap();
    records_per_case(system, cases)
}

/// The cases that do not have exactly one incident and one task.
pub fn not_one_each(
    counts: &BTreeMap<String, (usize, usize)>,
) -> BTreeMap<&String, (usize, usize)> {
    counts
        .iter()
        .filter(|(_, n)| **n != (1, 1))
        .map(|(c, n)| (c, *n))
        .collect()
}

/// The keys of `kv` that start with `prefix`.
pub async fn keys(kv: &async_nats::jetstream::kv::Store, prefix: &str) -> Vec<String> {
    let all: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    all.into_iter().filter(|k| k.starts_with(prefix)).collect()
}

/// The messages the event stream holds on `filter`, oldest first.
pub async fn stream_messages(
    js: &async_nats::jetstream::Context,
    filter: &str,
) -> Vec<tgb::ops::Read> {
    let stream = js.get_stream(names::EVENTS_STREAM).await.unwrap();
    let (messages, _) = tgb::ops::read(
        &stream,
        vec![filter.to_owned()],
        async_nats::jetstream::consumer::DeliverPolicy::All,
        usize::MAX,
    )
    .await
    .unwrap();
    messages
}

/// How many messages the event stream holds on `filter`.
pub async fn stored(js: &async_nats::jetstream::Context, filter: &str) -> usize {
    stream_messages(js, filter).await.len()
}

/// sla-monitor's count of completed evaluations (`GET /sla/ticker`).
pub async fn ticks(system: &System) -> u64 {
    let url = format!(
        "{}/sla/ticker",
        system.service("sla-monitor").unwrap().url()
    );
    let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["ticks"].as_u64().unwrap()
}

/// Two more complete SLA evaluations (a breach raised twice has every chance to show), then
/// idle consumers; each case's records ([`records_when_idle`]).
pub async fn idle_after_two_ticks(
    system: &System,
    js: &async_nats::jetstream::Context,
    cases: &[String],
    guard: std::time::Duration,
) -> BTreeMap<String, (usize, usize)> {
    let seen = ticks(system).await;
    tgb_testkit::eventually("two more ticks", guard, || async {
        (ticks(system).await >= seen + 2).then_some(())
    })
    .await
    .unwrap();
    records_when_idle(system, js, cases, guard).await
}
