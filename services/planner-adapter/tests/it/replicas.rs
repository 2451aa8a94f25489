//! Several planner-adapter replicas: one polls the plans at a time (the poller lease).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use tgb_proto::*;
use tgb_sandbox::SandboxConfig;
use tgb_sandbox::config::EntraClient;
use tgb_testkit::eventually;

use crate::support::*;

/// The application users of the two identities the replicas use, so the sandbox's call log
/// tells their requests apart.
const APP_A: &str = "7d3c0b1e-0000-4000-8000-000000000001";
const APP_B: &str = "7d3c0b1e-0000-4000-8000-000000000002";

const TTL_MS: u64 = 3000;
const RENEW_MS: u64 = 200;

fn replica_env(client: &str) -> Vec<(String, String)> {
    vec![
        ("TGB_AZURE_CLIENT_ID".into(), client.into()),
        ("TGB_AZURE_CLIENT_SECRET".into(), format!("{client}-secret")),
        (
            "TGB_ROUTING__GRAPH__POLLER_LEASE_TTL_MS".into(),
            TTL_MS.to_string(),
        ),
        (
            "TGB_ROUTING__GRAPH__POLLER_LEASE_RENEW_MS".into(),
            RENEW_MS.to_string(),
        ),
    ]
}

fn spawn(
    w: &World,
    client: &str,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let env = replica_env(client);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.spawn_adapter(None, &extra)
}

/// Watches the poller lease's value from now on.
async fn watch_lease(
    w: &World,
) -> impl futures::Stream<Item = planner_adapter::leader::LeaseValue> + use<> {
    use futures::StreamExt as _;
    let client = tgb_bus::async_nats::connect(w.nats.url()).await.unwrap();
    let js = tgb_bus::async_nats::jetstream::new(client);
    let kv = js.get_key_value("tgb_sync").await.unwrap();
    let current: planner_adapter::leader::LeaseValue = serde_json::from_slice(
        &kv.get(planner_adapter::leader::LEASE_KEY)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let updates = kv
        .watch(planner_adapter::leader::LEASE_KEY)
        .await
        .unwrap()
        .filter_map(|e| async move { serde_json::from_slice(&e.ok()?.value).ok() });
    futures::stream::iter([current]).chain(updates)
}

fn polls(w: &World, app: &str) -> usize {
    w.plan_polls_by_caller().get(app).copied().unwrap_or(0)
}

/// Waits until `app` has polled `n` more times than `from`.
async fn wait_polls(w: &World, app: &str, from: usize, n: usize) {
    eventually(
        &format!("{n} plan polls by {app}"),
        tgb_testkit::HANG_GUARD,
        || async { (polls(w, app) >= from + n).then_some(()) },
    )
    .await
    .unwrap();
}

/// A person's change, and the progress event it must produce (de-duplicated by event id, as
/// JetStream stores it).
async fn change_reaches_bus(
    w: &World,
    task_id: &str,
    patch: serde_json::Value,
    expect: TaskProgress,
) {
    w.edit_as_user(task_id, patch);
    w.wait_seen::<PlannerTaskProgressed, _>(&format!("{expect:?}"), |e| {
        e.progress() == expect && e.task.as_ref().is_some_and(|t| t.task_id == task_id)
    })
    .await;
}

#[tokio::test]
async fn two_replicas_poll_once_and_the_other_takes_over_after_a_crash_or_a_shutdown() {
    let mut sandbox = SandboxConfig::default();
    for (id, user) in [("tgb-bridge-a", 1u128), ("tgb-bridge-b", 2u128)] {
        sandbox.identity.entra_clients.push(EntraClient {
            client_id: id.into(),
            client_secret: format!("{id}-secret"),
            app_user_id: uuid::Uuid::from_u128(0x7d3c_0b1e_0000_4000_8000_0000_0000_0000 | user),
            app_user_name: format!("# tg-bridge {id}"),
        });
    }
    let w = World::start_with(sandbox).await;
    let mut a = Some(spawn(&w, "tgb-bridge-a"));
    let mut b = Some(spawn(&w, "tgb-bridge-b"));

    w.publish(TgCaseOpened {
        meta: Some(meta(Origin::Tg, "C-900", acme())),
        case: Some(TgCase {
            case_id: "C-900".into(),
            revision: 1,
            title: "Invoice rejected".into(),
            category: CaseCategory::Pricing as i32,
            priority: CasePriority::Normal as i32,
            ..Default::default()
        }),
    })
    .await;
    let created = w
        .wait_seen::<PlannerTaskCreated, _>("created", |e| e.tg_case_id == "C-900")
        .await;
    let task_id = created.task.unwrap().task_id;

    // Many poll cycles (50 ms): every plan poll comes from one replica.
    eventually("40 plan polls", tgb_testkit::HANG_GUARD, || async {
        (w.plan_polls_by_caller().values().sum::<usize>() >= 40).then_some(())
    })
    .await
    .unwrap();
    let by_caller = w.plan_polls_by_caller();
    assert_eq!(
        by_caller.len(),
        1,
        "more than one replica polls: {by_caller:?}"
    );
    let leader = by_caller.keys().next().unwrap().clone();
    let follower = if leader == APP_A { APP_B } else { APP_A };
    change_reaches_bus(
        &w,
        &task_id,
        json!({"percentComplete": 50}),
        TaskProgress::InProgress,
    )
    .await;

    // The leader crashes (no release): the other replica takes over once the lease ran out.
    let (leader_handle, follower_handle) = if leader == APP_A {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let (_, crashed) = leader_handle.take().unwrap();
    crashed.abort();
    let _ = crashed.await;
    let crashed_at = Instant::now();
    let leader_polls = polls(&w, &leader);
    assert_eq!(polls(&w, follower), 0);
    wait_polls(&w, follower, 0, 1).await;
    let crash_takeover = crashed_at.elapsed();
    change_reaches_bus(
        &w,
        &task_id,
        json!({"appliedCategories": {"category1": true}}),
        TaskProgress::Blocked,
    )
    .await;

    // The crashed identity comes back as a new replica: it stays a follower.
    let client = if leader == APP_A {
        "tgb-bridge-a"
    } else {
        "tgb-bridge-b"
    };
    let restarted = spawn(&w, client);
    let from = polls(&w, follower);
    wait_polls(&w, follower, from, 40).await;
    assert_eq!(
        polls(&w, &leader),
        leader_polls,
        "the restarted replica polls although another holds the lease"
    );

    // The current poller shuts down (releasing the lease): the restarted replica takes over
    // without waiting for the lease to run out.
    let mut lease = Box::pin(watch_lease(&w).await);
    let (token, handle) = follower_handle.take().unwrap();
    token.cancel();
    tokio::time::timeout(tgb_testkit::HANG_GUARD, handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let stopped_at = Instant::now();
    wait_polls(&w, &leader, leader_polls, 1).await;
    let release_takeover = stopped_at.elapsed();
    change_reaches_bus(
        &w,
        &task_id,
        json!({"percentComplete": 100}),
        TaskProgress::Completed,
    )
    .await;

    let ids: BTreeSet<String> = w
        .seen::<PlannerTaskProgressed>()
        .into_iter()
        .map(|e| e.meta.unwrap().event_id)
        .collect();
    assert_eq!(ids.len(), 3, "one progress event per change");
    assert!(
        crash_takeover >= Duration::from_millis(TTL_MS / 2),
        "took over a crashed poller's live lease after {crash_takeover:?}"
    );
    // The shutdown released the lease (an expired value), and the next holder took it from
    // that release, not from a lease that ran out: read from the lease's own updates, whatever
    // the machine's speed (the takeover time above is a figure, not a condition).
    let mut seen = Vec::new();
    tokio::time::timeout(tgb_testkit::HANG_GUARD, async {
        use futures::StreamExt as _;
        while let Some(v) = lease.next().await {
            let changed_hands = seen
                .first()
                .is_some_and(|f: &planner_adapter::leader::LeaseValue| f.holder != v.holder);
            seen.push(v);
            if changed_hands {
                break;
            }
        }
    })
    .await
    .unwrap();
    let last_of_stopped = &seen[seen.len() - 2];
    assert_eq!(
        last_of_stopped.expires_at_ms, 0,
        "the stopped poller released its lease before the next one took it: {seen:?}"
    );
    eprintln!(
        "FIGURE poller takeover: after a crash {crash_takeover:?} (lease {TTL_MS} ms), after a shutdown {release_takeover:?} (renewal {RENEW_MS} ms)"
    );
    assert!(w.graph_400s().is_empty());
    let (token, handle) = restarted;
    token.cancel();
    let _ = tokio::time::timeout(tgb_testkit::HANG_GUARD, handle).await;
}
