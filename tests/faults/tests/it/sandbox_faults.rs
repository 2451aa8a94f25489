//! The remote systems misbehaving during a burst: 10% 5xx, 429 storms, dropped connections,
//! forced ETag races.

use std::time::Duration;

use tgb_fault_suite::Options;
use tgb_fault_suite::progress::{Progress, wait_for};
use tgb_sandbox::{Fault, FaultRule};

use crate::support::Run;

const SYSTEMS: [&str; 3] = ["dataverse", "graph", "tg"];

fn add(run: &Run, rule: FaultRule) {
    run.sys.sandbox.faults().add(rule).expect("fault rule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_5xx_during_a_burst_loses_and_doubles_nothing() {
    let (sys, burst) = Run::system(Options::default()).await;
    for system in SYSTEMS {
        sys.sandbox
            .faults()
            .add(FaultRule::new(
                system,
                Fault::ErrorRate {
                    rate: 0.1,
                    status: 503,
                },
            ))
            .expect("fault rule");
        sys.sandbox
            .faults()
            .add(FaultRule::new(
                system,
                Fault::ErrorRate {
                    rate: 0.02,
                    status: 500,
                },
            ))
            .expect("fault rule");
    }
    let run = Run::raise("10% 5xx", sys, burst).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storms_of_429_during_a_burst_lose_and_double_nothing() {
    let mut run = Run::start("429 storms", Options::default()).await;
    for (num, progress) in [
        (1, Progress::Incidents),
        (2, Progress::Tasks),
        (3, Progress::Incidents),
    ] {
        let at = run.share(num, 4);
        wait_for(&mut run.sys, progress, at, Duration::from_secs(120))
            .await
            .expect("the burst is under way");
        for system in ["dataverse", "graph"] {
            add(
                &run,
                FaultRule::new(
                    system,
                    Fault::Burst429 {
                        count: 40,
                        retry_after_secs: 2,
                    },
                ),
            );
        }
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_during_a_burst_lose_and_double_nothing() {
    let mut run = Run::start("dropped connections", Options::default()).await;
    for num in 1..=3 {
        let at = run.share(num, 4);
        wait_for(
            &mut run.sys,
            Progress::Incidents,
            at,
            Duration::from_secs(120),
        )
        .await
        .expect("the burst is under way");
        for system in SYSTEMS {
            // Writes too: the request may have been applied before the connection died.
            add(
                &run,
                FaultRule::new(system, Fault::Drop { count: Some(15) }),
            );
        }
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_etag_races_during_a_burst_lose_and_double_nothing() {
    let mut run = Run::start("ETag races", Options::default()).await;
    for num in 1..=3 {
        let at = run.share(num, 4);
        wait_for(&mut run.sys, Progress::Tasks, at, Duration::from_secs(120))
            .await
            .expect("the burst is under way");
        for system in ["dataverse", "graph"] {
            run.sys
                .sandbox
                .force_etag_races(system, 25)
                .expect("etag races offered");
        }
    }
    run.finish().await;
}
