//! P3 end to end: sla-monitor (two replicas, one restarted) → planner-adapter → one escalation
//! task in the sandbox's Planner.

use std::path::Path;
use std::sync::Arc;

use tgb_proto as pb;
use tgb_runtime::Config;
use tgb_sandbox::{Sandbox, SandboxConfig};
use tgb_testkit::eventually;
use tokio_util::sync::CancellationToken;

use crate::support::{Env, Monitor, mins, opened, t0};

const ISSUES: &str = "pLnPartnerIssues00000000000A";
const ESCALATIONS: &str = "bKtEscalations0000000000000A";

fn shipped(env: &Env, sandbox: &Sandbox, extra: &[(&str, &str)]) -> Config {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let vars = tgb_sandbox::TgbEnv::new(env.nats.url())
        .sandbox(sandbox)
        .set("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "50")
        .extend(extra.iter().copied());
    Config::load_from(Some(&file), vars.vars()).unwrap()
}

/// sla-monitor with the shipped `[sla]` (standard urgent: first response 60 min) ticking every
/// 20 ms on the manual clock.
async fn monitor(env: &Env, sandbox: &Sandbox) -> Monitor {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = shipped(env, sandbox, &[("TGB_SLA__TICK_INTERVAL_MS", "20")]);
    let task = tokio::spawn(sla_monitor::serve_with_clock(
        config,
        listener,
        shutdown.clone(),
        Arc::new(env.clock.clone()),
    ));
    let m = Monitor {
        base,
        shutdown,
        task,
    };
    eventually("ticking", tgb_testkit::HANG_GUARD, || async {
        (m.ticker().await?.0 > 0).then_some(())
    })
    .await
    .unwrap();
    m
}

fn escalation_tasks(sandbox: &Sandbox, case_id: &str) -> Vec<serde_json::Value> {
    sandbox
        .planner()
        .list_tasks(ISSUES)
        .unwrap()
        .into_iter()
        .filter(|t| {
            t["title"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&format!("[{case_id} L1]"))
        })
        .collect()
}

#[tokio::test]
async fn a_breach_makes_exactly_one_escalation_task_with_two_replicas_and_a_restart() {
    let env = Env::start().await;
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let planner_shutdown = CancellationToken::new();
    let planner_config = shipped(&env, &sandbox, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let planner = tokio::spawn(planner_adapter::serve(
        planner_config,
        listener,
        planner_shutdown.clone(),
    ));

    let a = monitor(&env, &sandbox).await;
    let b = monitor(&env, &sandbox).await;
    env.publish(opened("C-E2E1", "E2E01", pb::CasePriority::Urgent, t0()))
        .await;
    env.clock_of("C-E2E1", "clock started", |_| true).await;
    env.clock.set(t0() + mins(30));
    a.evaluated(t0() + mins(30)).await;
    // Replica a restarts in the middle; b keeps running.
    a.stop().await;
    let a = monitor(&env, &sandbox).await;

    env.clock.set(t0() + mins(60));
    let tasks = eventually("escalation task", tgb_testkit::HANG_GUARD, || async {
        let t = escalation_tasks(&sandbox, "C-E2E1");
        (!t.is_empty()).then_some(t)
    })
    .await
    .unwrap();
    assert_eq!(tasks[0]["bucketId"], ESCALATIONS);
    // Both replicas have evaluated the breach time since, and planner-adapter has handled every
    // breach on the bus: still one task.
    a.evaluated(t0() + mins(60)).await;
    b.evaluated(t0() + mins(60)).await;
    let breaches = env.events::<pb::SlaBreached>().await;
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    let created = eventually("task created event", tgb_testkit::HANG_GUARD, || async {
        let c: Vec<pb::PlannerTaskCreated> = env
            .events::<pb::PlannerTaskCreated>()
            .await
            .into_iter()
            .filter(|c| {
                c.task
                    .as_ref()
                    .is_some_and(|t| t.kind() == pb::TaskKind::Escalation)
            })
            .collect();
        (!c.is_empty()).then_some(c)
    })
    .await
    .unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(escalation_tasks(&sandbox, "C-E2E1").len(), 1);
    let details = sandbox
        .planner()
        .list_tasks(ISSUES)
        .unwrap()
        .into_iter()
        .find(|t| {
            t["title"]
                .as_str()
                .unwrap_or_default()
                .starts_with("[C-E2E1 L1]")
        })
        .unwrap();
    assert!(
        details["title"]
            .as_str()
            .unwrap()
            .contains("SLA first response breached"),
        "{details}"
    );

    a.stop().await;
    b.stop().await;
    planner_shutdown.cancel();
    planner.await.unwrap().unwrap();
}
