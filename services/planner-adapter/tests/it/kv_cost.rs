//! What one created task costs in KV, counted on the wire: every write to a KV bucket is a
//! publish to `$KV.<bucket>.<key>` and every read a direct get, so a plain subscription sees
//! each of them.

use std::collections::BTreeMap;

use futures::StreamExt;
use tgb_proto::*;

use crate::support::*;

const SENTINEL: &str = "tgb-test-sentinel";

/// KV operations of planner-adapter's task machinery, by kind of key.
#[derive(Debug, Default)]
struct KvOps {
    writes: BTreeMap<&'static str, usize>,
    reads: BTreeMap<&'static str, usize>,
}

/// The kind of a `tgb_sync`/`tgb_links` key; none for keys that are not about tasks (leases,
/// fleet membership).
fn kind_of(bucket: &str, key: &str) -> Option<&'static str> {
    match bucket {
        "tgb_links" => Some("link"),
        "tgb_sync" if key.starts_with("planner-intent.") => Some("intent"),
        "tgb_sync" if key.starts_with("planner-task.") => Some("task record"),
        "tgb_sync" if key.starts_with("planner-group.") => Some("group"),
        _ => None,
    }
}

/// Listens to KV writes and direct gets until [`KvOps::collect`] sends a sentinel through both.
struct KvTap {
    writes: tgb_bus::async_nats::Subscriber,
    reads: tgb_bus::async_nats::Subscriber,
}

impl KvTap {
    async fn start(w: &World) -> KvTap {
        let c = w.bus.client();
        let tap = KvTap {
            writes: c.subscribe("$KV.>").await.unwrap(),
            reads: c.subscribe("$JS.API.DIRECT.GET.>").await.unwrap(),
        };
        c.flush().await.unwrap();
        tap
    }

    /// Everything seen so far: the sentinels are published after the caller saw the work end,
    /// and a connection delivers in order, so each subscription has every earlier message
    /// once its sentinel arrives.
    async fn collect(mut self, w: &World) -> KvOps {
        let c = w.bus.client();
        c.publish(format!("$KV.{SENTINEL}.end"), "".into())
            .await
            .unwrap();
        c.publish(format!("$JS.API.DIRECT.GET.KV_{SENTINEL}.end"), "".into())
            .await
            .unwrap();
        c.flush().await.unwrap();
        let mut ops = KvOps::default();
        let guard = tgb_testkit::HANG_GUARD;
        loop {
            let m = tokio::time::timeout(guard, self.writes.next())
                .await
                .expect("the KV sentinel arrives")
                .unwrap();
            // $KV.<bucket>.<key>
            let mut parts = m.subject.splitn(3, '.').skip(1);
            let (bucket, key) = (parts.next().unwrap(), parts.next().unwrap_or_default());
            if bucket == SENTINEL {
                break;
            }
            if let Some(kind) = kind_of(bucket, key) {
                *ops.writes.entry(kind).or_default() += 1;
            }
        }
        loop {
            let m = tokio::time::timeout(guard, self.reads.next())
                .await
                .expect("the direct-get sentinel arrives")
                .unwrap();
            // $JS.API.DIRECT.GET.KV_<bucket>[.$KV.<bucket>.<key>]
            let rest = &m.subject["$JS.API.DIRECT.GET.KV_".len()..];
            let (bucket, tail) = rest.split_once('.').unwrap_or((rest, ""));
            if bucket == SENTINEL {
                break;
            }
            let key = tail
                .strip_prefix(&format!("$KV.{bucket}."))
                .map(str::to_owned)
                .or_else(|| {
                    // A get by subject in the request body.
                    let body: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
                    let s = body["last_by_subj"].as_str()?;
                    s.strip_prefix(&format!("$KV.{bucket}.")).map(str::to_owned)
                })
                .unwrap_or_default();
            if let Some(kind) = kind_of(bucket, &key) {
                *ops.reads.entry(kind).or_default() += 1;
            }
        }
        ops
    }
}

/// Starts the adapter polling the plans every `poll_ms` and waits for its first poll.
async fn start_polling(w: &mut World, poll_ms: &str) {
    w.start_adapter(None, &[("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", poll_ms)]);
    tgb_testkit::eventually("the first poll", tgb_testkit::HANG_GUARD, || async {
        (w.plan_polls_by_caller().values().sum::<usize>() >= 2).then_some(())
    })
    .await
    .unwrap();
}

/// Raises TG case `case_id` and waits until its triage task is created and the adapter idle.
async fn create_triage_task(w: &World, case_id: &str, title: &str, description: &str) {
    w.publish(TgCaseOpened {
        meta: Some(meta(Origin::Tg, case_id, globex())),
        case: Some(TgCase {
            case_id: case_id.into(),
            revision: 1,
            title: title.into(),
            description: description.into(),
            category: CaseCategory::ShipmentDiscrepancy as i32,
            priority: CasePriority::Normal as i32,
            ..Default::default()
        }),
    })
    .await;
    w.wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == case_id)
        .await;
    crate::details::wait_settled(w).await;
}

#[tokio::test]
async fn a_created_triage_task_writes_its_record_once() {
    let mut w = World::start().await;
    // One poll at the start, then none during the test: the poller's own look at the new task
    // (an echo it records) is not part of what a create costs.
    start_polling(&mut w, "3600000").await;
    let tap = KvTap::start(&w).await;
    create_triage_task(&w, "C-800", "ASN missing", "The ASN never arrived.").await;
    let ops = tap.collect(&w).await;
    let writes: usize = ops.writes.values().sum();
    let reads: usize = ops.reads.values().sum();
    eprintln!(
        "FIGURE KV per created triage task: {writes} writes {:?}, {reads} reads {:?}",
        ops.writes, ops.reads
    );
    let writes_of = |kind| ops.writes.get(kind).copied().unwrap_or(0);
    assert_eq!(
        writes_of("task record"),
        1,
        "the record is written once, after the details"
    );
    assert_eq!(
        writes_of("intent"),
        1,
        "the intent: written, left for the link to supersede"
    );
    assert_eq!(
        writes_of("link"),
        1,
        "the link, case → task (the task's record names its case)"
    );
    assert_eq!(writes, 3);
    assert_eq!(
        ops.reads.get("link").copied(),
        Some(1),
        "one read: is the case linked already?"
    );
    assert_eq!(reads, 1);
    w.stop_adapter().await;
}

#[tokio::test]
async fn the_pollers_first_look_at_a_task_tg_bridge_created_writes_nothing() {
    let mut w = World::start().await;
    start_polling(&mut w, "200").await;
    let tap = KvTap::start(&w).await;
    create_triage_task(&w, "C-801", "Invoice mismatch", "Two lines differ.").await;
    // Two complete listings of every plan after the create: the poller has seen the task.
    let seen = w.plan_polls_by_caller().values().sum::<usize>();
    tgb_testkit::eventually("two more polls", tgb_testkit::HANG_GUARD, || async {
        (w.plan_polls_by_caller().values().sum::<usize>() >= seen + 4).then_some(())
    })
    .await
    .unwrap();
    let ops = tap.collect(&w).await;
    eprintln!(
        "FIGURE KV of a create and the poller's looks: {:?}",
        ops.writes
    );
    assert_eq!(
        ops.writes.get("task record").copied(),
        Some(1),
        "the poller found the task as tg-bridge wrote it: no second record write"
    );
    assert_eq!(ops.writes.values().sum::<usize>(), 3);
    w.stop_adapter().await;
}
