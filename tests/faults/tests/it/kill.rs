//! Each service SIGKILLed in the middle of a burst, then started again.

use std::time::Duration;

use tgb_fault_suite::Options;
use tgb_fault_suite::progress::{Progress, wait_for};

use crate::support::Run;

const PROGRESS_WITHIN: Duration = Duration::from_secs(120);

/// Kills `service` once `progress` has reached a third of the burst (for a measure of cases)
/// or `at` (for other measures), lets the rest of the system carry on for a moment of
/// progress, then starts it again.
async fn kill_and_restart(name: &str, service: &str, progress: Progress, at: Option<u64>) {
    let mut run = Run::start(name, Options::default()).await;
    let at = at.unwrap_or_else(|| match progress {
        Progress::TgComments => (run.expected.agent_notes.len() / 3).max(1) as u64,
        _ => run.share(1, 3),
    });
    wait_for(&mut run.sys, progress, at, PROGRESS_WITHIN)
        .await
        .expect("the burst is under way");
    run.sys.kill(service, 0).await;
    // While it is dead, the rest keeps going: wait for one more step of a measure that does
    // not depend on it, so the restart happens with work queued for it.
    let other = match service {
        "dynamics-adapter" => Progress::Tasks,
        _ => Progress::Incidents,
    };
    let now = tgb_fault_suite::progress::value(&run.sys, other).await;
    let _ = wait_for(&mut run.sys, other, now + 1, Duration::from_secs(20)).await;
    run.sys.restart(service, 0).await.expect("restarted");
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tg_ingress_killed_mid_burst_loses_and_doubles_nothing() {
    kill_and_restart(
        "kill tg-ingress",
        "tg-ingress",
        Progress::WebhooksDelivered,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tg_egress_killed_mid_burst_loses_and_doubles_nothing() {
    // Killed once it has written a third of the agents' notes to TG.
    kill_and_restart("kill tg-egress", "tg-egress", Progress::TgComments, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamics_adapter_killed_mid_burst_loses_and_doubles_nothing() {
    kill_and_restart(
        "kill dynamics-adapter",
        "dynamics-adapter",
        Progress::Incidents,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_adapter_killed_mid_burst_loses_and_doubles_nothing() {
    kill_and_restart(
        "kill planner-adapter",
        "planner-adapter",
        Progress::Tasks,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_monitor_killed_mid_burst_loses_and_doubles_nothing() {
    kill_and_restart(
        "kill sla-monitor",
        "sla-monitor",
        Progress::Acked("sla-monitor"),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_review_killed_mid_burst_loses_and_doubles_nothing() {
    kill_and_restart(
        "kill document-review",
        "document-review",
        Progress::Acked("document-review"),
        Some(0),
    )
    .await;
}
