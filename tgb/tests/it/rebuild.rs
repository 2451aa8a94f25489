//! `tgb rebuild links` after `tgb_links` (and planner-adapter's task records) were lost: the
//! links come back from Dataverse's `tgb_tgcaseid` and the Planner markers, and a burst of
//! updates to the same cases then creates no second task and no second incident.

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt as _;
use tgb::ops;
use tgb_bus::names;

use crate::support;

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

/// Planner task titles, all plans.
fn task_titles(system: &tgb::system::System) -> Vec<String> {
    system.sandbox.planner().snapshot()["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["task"]["title"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Tasks per case marker.
fn tasks_per_case(system: &tgb::system::System, cases: &[String]) -> BTreeMap<String, usize> {
    let titles = task_titles(system);
    cases
        .iter()
        .map(|c| {
            let marker = format!("[{c}] ");
            (
                c.clone(),
                titles.iter().filter(|t| t.starts_with(&marker)).count(),
            )
        })
        .collect()
}

fn incidents_per_case(system: &tgb::system::System, cases: &[String]) -> BTreeMap<String, usize> {
    let rows = system.sandbox.dataverse().rows("incidents");
    cases
        .iter()
        .map(|c| {
            (
                c.clone(),
                rows.iter()
                    .filter(|r| r["tgb_tgcaseid"] == c.as_str())
                    .count(),
            )
        })
        .collect()
}

/// Every consumer of the event stream has delivered and had acknowledged all it holds.
async fn settled(js: &async_nats::jetstream::Context) -> Option<()> {
    let stream = js.get_stream(names::EVENTS_STREAM).await.ok()?;
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.try_next().await.ok()? {
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            return None;
        }
    }
    Some(())
}

async fn case_links(kv: &async_nats::jetstream::kv::Store) -> Vec<String> {
    let mut out = keys(kv, "tg.case.").await;
    out.extend(keys(kv, "planner.task.").await);
    out.extend(keys(kv, "dataverse.incident.").await);
    out
}

async fn keys(kv: &async_nats::jetstream::kv::Store, prefix: &str) -> Vec<String> {
    let all: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    all.into_iter().filter(|k| k.starts_with(prefix)).collect()
}

#[tokio::test]
async fn rebuild_links_after_loss_then_updates_create_no_duplicates() {
    let (system, _dir) = support::system(&[]).await;
    let (_client, js) = ops::jetstream(&system.nats_url).await.unwrap();
    let links_kv = js.get_key_value(names::KV_LINKS).await.unwrap();
    let sync_kv = js.get_key_value(names::KV_SYNC).await.unwrap();
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
    // Nothing in flight: the loss below is not undone by a handler still at work.
    tgb_testkit::eventually("the services are idle", tgb_testkit::HANG_GUARD, || {
        settled(&js)
    })
    .await
    .unwrap();
    assert!(tasks_per_case(&system, &cases).values().all(|n| *n == 1));
    assert!(
        incidents_per_case(&system, &cases)
            .values()
            .all(|n| *n == 1)
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
    }
    let second = tgb::rebuild::links_from_config(&config, &js, None, false)
        .await
        .unwrap();
    assert!(second.nothing_to_do(), "{second:?}");
    assert!(tgb::rebuild::render_links(&second).contains("nothing to write"));

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
            let titles = task_titles(&system);
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
    let tasks = tasks_per_case(&system, &cases);
    let incidents = incidents_per_case(&system, &cases);
    let dup: BTreeSet<_> = tasks
        .iter()
        .chain(incidents.iter())
        .filter(|(_, n)| **n != 1)
        .collect();
    assert!(dup.is_empty(), "tasks {tasks:?} incidents {incidents:?}");
    system.stop().await;
}
