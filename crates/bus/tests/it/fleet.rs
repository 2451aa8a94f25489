//! Three replicas of one governor lane share its budget through KV: together they stay under
//! the lane's rate and concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tgb_bus::fleet::Fleet;
use tgb_bus::names;
use tgb_governor::{Governor, GovernorConfig};
use tgb_testkit::{HANG_GUARD, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::server_and_bus;

const LIMIT: usize = 30;
const WINDOW: Duration = Duration::from_secs(1);
const MAX_CONCURRENT: usize = 6;
const PER_REPLICA: usize = 24;
/// How long one request takes (the target's answer time): at a replica's pace this keeps
/// about 4 of its requests in flight, 12 together, unless the slices hold them to 6.
const ANSWER: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stay_together_under_the_lane_rate_and_concurrency() {
    let (_server, bus) = server_and_bus().await;
    let kv = bus.kv(names::KV_SYNC).await.unwrap();
    let config = GovernorConfig {
        requests_per_window: LIMIT as u32,
        window_secs: WINDOW.as_secs_f64(),
        headroom: 0.9,
        max_concurrent: MAX_CONCURRENT,
        ..GovernorConfig::default()
    };
    let shutdown = CancellationToken::new();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let g = Governor::new("dataverse:fleet-test", config.clone());
        let fleet = Fleet::new(
            kv.clone(),
            "dataverse:fleet-test",
            Duration::from_secs(2),
            Duration::from_millis(100),
        );
        fleet.join(&g).await.unwrap();
        tokio::spawn(fleet.run(g.clone(), shutdown.clone()));
        replicas.push(g);
    }
    eventually("every replica at a third", HANG_GUARD, || async {
        replicas
            .iter()
            .all(|g| (g.share() - 1.0 / 3.0).abs() < 1e-9)
            .then_some(())
    })
    .await
    .unwrap();

    let sends = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for g in &replicas {
        let left = Arc::new(AtomicUsize::new(PER_REPLICA));
        for _ in 0..8 {
            let (g, left, sends, in_flight, peak) = (
                g.clone(),
                left.clone(),
                sends.clone(),
                in_flight.clone(),
                peak.clone(),
            );
            workers.push(tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let permit = g.acquire().await;
                    sends.lock().unwrap().push(Instant::now());
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(ANSWER).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                }
            }));
        }
    }
    tokio::time::timeout(HANG_GUARD, async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await
    .expect("the storm ends");
    shutdown.cancel();

    let mut sends = sends.lock().unwrap().clone();
    sends.sort();
    assert_eq!(sends.len(), 3 * PER_REPLICA);
    let busiest = (0..sends.len())
        .map(|i| {
            sends[i..]
                .iter()
                .take_while(|t| t.duration_since(sends[i]) < WINDOW)
                .count()
        })
        .max()
        .unwrap();
    let peak = peak.load(Ordering::SeqCst);
    let took = sends.last().unwrap().duration_since(sends[0]);
    eprintln!(
        "FIGURE fleet of 3 on {LIMIT} / {WINDOW:?} and {MAX_CONCURRENT} at once: busiest window \
         {busiest} requests, peak {peak} in flight, {} requests in {took:?}",
        sends.len()
    );
    assert!(busiest <= LIMIT, "{busiest} requests in one window");
    assert!(peak <= MAX_CONCURRENT, "{peak} in flight together");
}
