//! nats-server stopped (SIGKILL) and started again on the same port and store mid-burst.

use std::time::Duration;

use tgb_fault_suite::Options;
use tgb_fault_suite::progress::{Progress, value, wait_for};
use tgb_fault_suite::system::INGRESS_SUBSCRIPTION;

use crate::support::Run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_mid_burst_loses_and_doubles_nothing() {
    let mut run = Run::start("nats-server restart", Options::default()).await;
    let third = run.share(1, 3);
    wait_for(
        &mut run.sys,
        Progress::Incidents,
        third,
        Duration::from_secs(120),
    )
    .await
    .expect("the burst is under way");
    run.sys.nats.server().stop().await;
    // While the broker is down, tg-ingress must refuse webhooks (TG retries them): wait for
    // one refused delivery, so the outage is felt, then bring the broker back.
    let failed = |r: &Run| {
        r.sys
            .sandbox
            .tg()
            .webhooks()
            .stats(INGRESS_SUBSCRIPTION)
            .map(|s| s.failed_attempts)
            .unwrap_or(0)
    };
    let before = failed(&run);
    let refused = tgb_testkit::eventually(
        "a webhook refused while NATS is down",
        tgb_testkit::HANG_GUARD,
        || {
            let n = failed(&run);
            async move { (n > before).then_some(n) }
        },
    )
    .await;
    let incidents = value(&run.sys, Progress::Incidents).await;
    run.sys
        .nats
        .server()
        .start_again()
        .await
        .expect("nats-server back");
    println!(
        "NATS down with {incidents} incidents written; webhooks refused meanwhile: {:?}",
        refused.map(|n| n - before)
    );
    run.finish().await;
}
