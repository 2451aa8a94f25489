//! Two replicas of each adapter consuming at once.

use tgb_fault_suite::Options;

use crate::support::Run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_each_adapter_lose_and_double_nothing() {
    let opts = Options {
        replicas: vec![
            ("tg-ingress", 2),
            ("tg-egress", 2),
            ("dynamics-adapter", 2),
            ("planner-adapter", 2),
        ],
        ..Options::default()
    };
    let run = Run::start("two replicas of each adapter", opts).await;
    run.finish().await;
}
