//! A lane configured for 10× what the target allows: the Dataverse emulator's limiter set to
//! 20 requests per 5 s, the governor to 200 per 5 s. A storm of requests, each retried after
//! its 429 as the clients do, with and without the adaptive rate; 429s are counted per window.
//! The emulator answers after [`LATENCY`], as a real service takes time to answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tgb_governor::{Governor, GovernorConfig, parse_retry_after};
use tgb_sandbox_dataverse::{Dataverse, DataverseConfig, ServiceProtectionConfig};

const WINDOW: Duration = Duration::from_secs(5);
const ALLOWED: u32 = 20;
const REQUESTS: usize = 50;
/// How long the emulated Dataverse takes to answer (a real one takes tens to hundreds of
/// milliseconds): it is what keeps several requests in flight when the window fills up.
const LATENCY: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Storm {
    /// 429s per window since the first request (window 0 first).
    per_window: Vec<usize>,
    throttled: u64,
    sent: usize,
    took: Duration,
    learned: Option<f64>,
}

impl Storm {
    fn after_first(&self) -> usize {
        self.per_window.iter().skip(1).sum()
    }

    fn max_after_first(&self) -> usize {
        self.per_window.iter().skip(1).copied().max().unwrap_or(0)
    }
}

async fn storm(adaptive: bool) -> Storm {
    let dv = Dataverse::new(DataverseConfig {
        service_protection: ServiceProtectionConfig {
            enabled: true,
            requests_per_window: Some(ALLOWED),
            window_ms: WINDOW.as_millis() as u64,
            max_concurrent: Some(52),
            execution_time_ms: None,
            // Each request sent while throttled lengthens the wait by this (Dataverse's
            // documented behaviour; shorter than the emulator's 5 s to keep the test short).
            penalty_ms: 1_000,
        },
        ..DataverseConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/api/data/v9.2/WhoAmI",
        listener.local_addr().unwrap()
    );
    let router = dv.router().layer(axum::middleware::from_fn(
        |req, next: axum::middleware::Next| async move {
            let answer = next.run(req).await;
            tokio::time::sleep(LATENCY).await;
            answer
        },
    ));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let governor = Governor::new(
        "dataverse:storm",
        GovernorConfig {
            requests_per_window: ALLOWED * 10,
            window_secs: WINDOW.as_secs_f64(),
            headroom: 0.9,
            max_concurrent: 16,
            adaptive,
            ..GovernorConfig::default()
        },
    );
    let http = reqwest::Client::new();
    let caller = uuid::Uuid::new_v4().to_string();
    let left = Arc::new(AtomicUsize::new(REQUESTS));
    let sent = Arc::new(AtomicUsize::new(0));
    let throttles = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (g, http, url, caller) =
                (governor.clone(), http.clone(), url.clone(), caller.clone());
            let (left, sent, throttles) = (left.clone(), sent.clone(), throttles.clone());
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    loop {
                        let permit = g.acquire().await;
                        sent.fetch_add(1, Ordering::SeqCst);
                        let answer = http
                            .get(&url)
                            .header("x-tgb-caller-id", &caller)
                            .send()
                            .await
                            .unwrap();
                        drop(permit);
                        if answer.status() == 429 {
                            throttles.lock().unwrap().push(Instant::now());
                            let wait = answer
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok())
                                .and_then(parse_retry_after)
                                .unwrap_or(Duration::from_secs(1));
                            g.pause_for(wait);
                            continue;
                        }
                        assert!(answer.status().is_success(), "{}", answer.status());
                        g.answered();
                        break;
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(tgb_testkit::HANG_GUARD, futures_join(workers))
        .await
        .expect("the storm ends");
    let took = started.elapsed();
    server.abort();
    let windows = ((took.as_secs_f64() / WINDOW.as_secs_f64()).ceil() as usize).max(1);
    let mut per_window = vec![0; windows];
    for t in throttles.lock().unwrap().iter() {
        let i = (t.duration_since(started).as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        per_window[i.min(windows - 1)] += 1;
    }
    Storm {
        per_window,
        throttled: governor.state().throttled,
        sent: sent.load(Ordering::SeqCst),
        took,
        learned: governor.learned_rate(),
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn a_lane_configured_ten_times_too_high_learns_the_real_rate_and_draws_few_429s() {
    let fixed = storm(false).await;
    let learned = storm(true).await;
    for (name, s) in [("fixed", &fixed), ("adaptive", &learned)] {
        eprintln!(
            "FIGURE {name}: {REQUESTS} requests answered, {} sent, {} 429s ({} after the first \
             window, at most {} in one window after the first), per window {:?}, took {:?}, \
             learned rate {:?}/s (allowed {}/s)",
            s.sent,
            s.throttled,
            s.after_first(),
            s.max_after_first(),
            s.per_window,
            s.took,
            s.learned,
            f64::from(ALLOWED) / WINDOW.as_secs_f64(),
        );
    }
    // Each window after the first draws at most a few 429s (one per congestion, plus what was
    // in flight with it), where the fixed rate draws a burst of them per window.
    assert!(
        learned.max_after_first() <= 3,
        "adaptive: {:?}",
        learned.per_window
    );
    assert!(
        learned.after_first() < fixed.after_first(),
        "adaptive {:?} vs fixed {:?}",
        learned.per_window,
        fixed.per_window
    );
    let rate = learned.learned.unwrap();
    assert!(
        rate < f64::from(ALLOWED) * 10.0 / WINDOW.as_secs_f64() / 2.0,
        "the lane runs well under its configured rate: {rate}/s"
    );
}
