//! Three dynamics-adapter replicas of one application user share one budget (the fleet of
//! the Dataverse lane): together they stay under the limits the lane is configured with, and
//! when the real limit is lower the adaptive governor keeps the 429s few.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tgb_sandbox::{CallRecord, SandboxConfig};
use tgb_sandbox_dataverse::ServiceProtectionConfig;
use tgb_testkit::eventually;

use crate::support::*;

const REPLICAS: usize = 3;
const CASES: usize = 300;

/// The lane's limits as configured (Dataverse's 6000 / 300 s and 52 at once, scaled down so
/// the test is quick).
struct Limits {
    requests: u32,
    window: Duration,
    concurrent: u32,
}

/// What the emulator's call log shows of one drain.
#[derive(Debug)]
struct Figures {
    /// Requests sent (admitted or not) per window of `window`, from the first.
    sent_per_window: Vec<usize>,
    /// 429s answered per window.
    throttled_per_window: Vec<usize>,
    /// Runs into the limit per window: 429s of requests sent before the whole fleet knew of the
    /// first 429 of their run are one run (no governor could spare them); a 429 sent after that
    /// starts a new run. The fleet knows once every member has written the fleet entry with
    /// the pause in it ([`FleetLog::known_at`]); the replica that received the 429 knows at its
    /// answer.
    limit_runs_per_window: Vec<usize>,
    /// Most requests sent in any sliding window.
    sliding_peak: usize,
    /// Most requests in flight at once.
    concurrency_peak: usize,
    /// Incidents created (distinct TG cases).
    created: usize,
    /// From the first request to the last answer, seconds.
    drain_secs: f64,
}

/// One write of the fleet's entry (`fleet.<lane>` in `tgb_sync`), as a watch saw it.
#[derive(Debug)]
struct FleetWrite {
    /// When the watch received it, on the sandbox's clock ([`CallRecord::arrived_ms`]).
    at_ms: f64,
    /// When the watch received it, Unix ms (the clock of the entry's times).
    unix_ms: i64,
    /// Member → expiry, Unix ms.
    members: BTreeMap<String, i64>,
    /// The lane's pause, Unix ms.
    paused_until_ms: i64,
}

/// Every write of the fleet's entry during a drain, in order.
#[derive(Default)]
struct FleetLog(Vec<FleetWrite>);

impl FleetLog {
    /// Watches `fleet.>` in `tgb_sync` until the test ends, appending each write.
    async fn watch(env: &Env) -> Arc<Mutex<FleetLog>> {
        let log = Arc::new(Mutex::new(FleetLog::default()));
        let kv = env.bus.kv(tgb_bus::names::KV_SYNC).await.unwrap();
        let mut watch = kv.watch("fleet.>").await.unwrap();
        let (calls, into) = (env.sandbox.calls().clone(), log.clone());
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&entry.value) else {
                    continue;
                };
                let members = value["members"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                into.lock().unwrap().0.push(FleetWrite {
                    at_ms: calls.elapsed_ms(),
                    unix_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
                        as i64,
                    members,
                    paused_until_ms: value["paused_until_ms"].as_i64().unwrap_or_default(),
                });
            }
        });
        log
    }

    /// When (sandbox clock) every member of the fleet knew of the pause that followed a 429
    /// answered at `answered_ms`: each member's first write after it that carries a pause
    /// still running (a member writes what it read, so it has seen the pause), or the pause's
    /// end for a member that never wrote while it ran. `None` when no write after `answered_ms` carried
    /// a running pause (the fleet never heard of it).
    fn known_at(&self, answered_ms: f64) -> Option<f64> {
        let writes = &self.0;
        let first_after = writes.iter().position(|w| w.at_ms > answered_ms)?;
        let members: Vec<&String> = writes[first_after.saturating_sub(1)]
            .members
            .keys()
            .collect();
        let mut pause_end_ms = None;
        let mut knew: BTreeMap<&String, f64> = BTreeMap::new();
        for i in first_after..writes.len() {
            let w = &writes[i];
            // Up to the end of the pause (as its own run's 429s lengthen it): a later pause is
            // a later run's.
            if pause_end_ms.is_some_and(|end| w.at_ms > end) {
                break;
            }
            if w.paused_until_ms <= w.unix_ms {
                continue;
            }
            let end = w.at_ms + (w.paused_until_ms - w.unix_ms) as f64;
            pause_end_ms = Some(pause_end_ms.map_or(end, |e: f64| e.max(end)));
            // The writer is the member whose expiry this write renewed.
            let before = i.checked_sub(1).map(|j| &writes[j].members);
            for (m, expiry) in &w.members {
                if before.and_then(|b| b.get(m)) != Some(expiry) {
                    knew.entry(m).or_insert(w.at_ms);
                }
            }
        }
        let pause_end_ms = pause_end_ms?;
        Some(
            members
                .iter()
                .map(|m| {
                    knew.get(m)
                        .copied()
                        .unwrap_or(pause_end_ms)
                        .min(pause_end_ms)
                })
                .fold(answered_ms, f64::max),
        )
    }
}

fn figures(calls: &[CallRecord], fleet: &FleetLog, window: Duration, created: usize) -> Figures {
    let w = window.as_secs_f64() * 1000.0;
    let mut arrivals: Vec<f64> = calls.iter().map(|c| c.arrived_ms).collect();
    arrivals.sort_by(f64::total_cmp);
    let first = arrivals.first().copied().unwrap_or_default();
    let windows = arrivals
        .last()
        .map(|last| ((last - first) / w) as usize + 1)
        .unwrap_or(0);
    let mut sent_per_window = vec![0; windows];
    let mut throttled_per_window = vec![0; windows];
    for c in calls {
        let i = ((c.arrived_ms - first) / w) as usize;
        sent_per_window[i] += 1;
        if c.status == 429 {
            throttled_per_window[i] += 1;
        }
    }
    let mut throttled: Vec<&CallRecord> = calls.iter().filter(|c| c.status == 429).collect();
    throttled.sort_by(|a, b| a.arrived_ms.total_cmp(&b.arrived_ms));
    let mut limit_runs_per_window = vec![0; windows];
    let mut run_known_at = f64::NEG_INFINITY;
    for c in throttled {
        if c.arrived_ms >= run_known_at {
            limit_runs_per_window[((c.arrived_ms - first) / w) as usize] += 1;
            let answered = c.arrived_ms + c.latency_ms;
            run_known_at = fleet.known_at(answered).unwrap_or(answered);
        }
    }
    let drain_secs = calls
        .iter()
        .map(|c| c.arrived_ms + c.latency_ms)
        .fold(first, f64::max)
        .max(first)
        - first;
    let mut sliding_peak = 0;
    let mut start = 0;
    for (end, t) in arrivals.iter().enumerate() {
        while arrivals[start] <= t - w {
            start += 1;
        }
        sliding_peak = sliding_peak.max(end - start + 1);
    }
    // In flight from arrival to answer; an answer at the instant of an arrival frees first.
    let mut edges: Vec<(f64, i32)> = calls
        .iter()
        .flat_map(|c| [(c.arrived_ms, 1), (c.arrived_ms + c.latency_ms, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut concurrency_peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        concurrency_peak = concurrency_peak.max(now);
    }
    Figures {
        sent_per_window,
        throttled_per_window,
        limit_runs_per_window,
        sliding_peak,
        concurrency_peak: concurrency_peak as usize,
        created,
        drain_secs: drain_secs / 1000.0,
    }
}

/// Starts the replicas with `configured` as the lane's limits against an emulator allowing
/// `real`, publishes the burst of cases, waits until every incident exists, reads and prints
/// the figures of the application user's calls, and stops the replicas.
async fn drain(scenario: &str, configured: &Limits, real: &Limits, cases: usize) -> (Env, Figures) {
    let env = Env::start_with(SandboxConfig::default()).await;
    env.sandbox
        .dataverse()
        .configure_limits(ServiceProtectionConfig {
            requests_per_window: Some(real.requests),
            window_ms: real.window.as_millis() as u64,
            max_concurrent: Some(real.concurrent),
            ..Default::default()
        });
    // Answers that take a while, so that requests overlap.
    env.sandbox
        .faults()
        .add(tgb_sandbox::FaultRule::new(
            "dataverse",
            tgb_sandbox::Fault::Latency { ms: 200 },
        ))
        .unwrap();
    let fleet = FleetLog::watch(&env).await;
    let requests = configured.requests.to_string();
    let window = configured.window.as_secs_f64().to_string();
    let concurrent = configured.concurrent.to_string();
    let vars = [
        (
            "TGB_DYNAMICS__GOVERNOR__REQUESTS_PER_WINDOW",
            requests.as_str(),
        ),
        ("TGB_DYNAMICS__GOVERNOR__WINDOW_SECS", window.as_str()),
        (
            "TGB_DYNAMICS__GOVERNOR__MAX_CONCURRENT",
            concurrent.as_str(),
        ),
        ("TGB_DYNAMICS__FLEET_RENEW_MS", "100"),
        ("TGB_DYNAMICS__FLEET_TTL_MS", "2000"),
        ("TGB_DYNAMICS__THROTTLE_RETRIES", "50"),
        // Small batches: many requests, so the limits are what paces the drain.
        ("TGB_DYNAMICS__BATCH_MAX_REQUESTS", "2"),
    ];
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(env.adapter(&vars).await);
    }
    for i in 0..cases {
        env.publish(opened(&format!("F-{i}"), &format!("fleet {i}")))
            .await;
    }
    // Not unwrapped here: a drain that did not finish still reports its figures. (A hang
    // guard sized to the drain: at most the lane's rate, two requests per case at worst.)
    let guard = WAIT.max(Duration::from_secs_f64(
        2.0 * cases as f64 * real.window.as_secs_f64() / f64::from(real.requests) * 2.0,
    ));
    let _ = eventually(&format!("{cases} incidents"), guard, || async {
        (env.rows("incident").len() >= cases).then_some(())
    })
    .await;
    let mut cases: Vec<String> = env
        .rows("incident")
        .iter()
        .filter_map(|r| r["tgb_tgcaseid"].as_str().map(str::to_owned))
        .collect();
    cases.sort();
    cases.dedup();
    let app = env.app_user().to_string();
    let calls: Vec<CallRecord> = env
        .sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter(|c| !c.scripted && c.caller.as_ref().is_some_and(|u| u.id == app))
        .collect();
    let f = figures(&calls, &fleet.lock().unwrap(), real.window, cases.len());
    // Printed before the replicas stop: a drain that did not finish still shows its figures.
    print(scenario, &f, real.window);
    for r in replicas {
        r.stop().await;
    }
    (env, f)
}

fn print(scenario: &str, f: &Figures, window: Duration) {
    eprintln!(
        "FIGURE {scenario}: 429s per {}s window {:?}, runs into the limit {:?}",
        window.as_secs(),
        f.throttled_per_window,
        f.limit_runs_per_window
    );
    eprintln!(
        "FIGURE {scenario}: requests per window {:?}, busiest sliding window {}",
        f.sent_per_window, f.sliding_peak
    );
    eprintln!(
        "FIGURE {scenario}: concurrency peak {}, incidents created {}, drained in {:.1} s",
        f.concurrency_peak, f.created, f.drain_secs
    );
}

/// What both scenarios must show: every case once, the combined concurrency within what the
/// emulator allows, and at most one run into the limit per window after the first (the 429s
/// of requests already in flight when the first of them is answered are one run).
fn assert_kept_the_limits(f: &Figures, real: &Limits, cases: usize) {
    assert_eq!(f.created, cases, "every case once");
    assert!(
        f.concurrency_peak <= real.concurrent as usize,
        "combined concurrency over the limit: {f:?}"
    );
    assert!(
        f.limit_runs_per_window.iter().skip(1).all(|n| *n <= 1),
        "at most one run into the limit per window after the first: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_draining_a_burst_stay_together_under_the_lane_limits() {
    let limits = Limits {
        requests: 60,
        window: Duration::from_secs(5),
        concurrent: 6,
    };
    let (_env, f) = drain("fleet at the real limits", &limits, &limits, CASES).await;
    assert_kept_the_limits(&f, &limits, CASES);
    assert!(
        f.sliding_peak <= limits.requests as usize,
        "combined rate over the limit: {f:?}"
    );
}

// A 429 one replica received pauses the fleet (the pause rides in the fleet entry): without
// it the others kept sending into the throttling period, each request lengthening it, and the
// burst did not drain. The requests in flight when the first 429 comes are refused too (each
// lengthens the pause by the emulator's 5 s penalty): the first window holds several 429s.
// After it the learned rate holds through the pause and nears the limit it ran into slowly
// (tgb_governor::adaptive): at most one run into the limit per window, as the issue asks at the
// real limits; the requests in flight when it is answered are refused with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_against_a_limit_ten_times_lower_than_configured_draw_few_429s() {
    let real = Limits {
        requests: 60,
        window: Duration::from_secs(5),
        concurrent: 6,
    };
    let configured = Limits {
        requests: 600,
        ..real
    };
    let (_env, f) = drain("fleet at a limit 10x lower", &configured, &real, CASES).await;
    assert_kept_the_limits(&f, &real, CASES);
}

/// The issue's own scale: 5,000 changes against Dataverse's documented limits (6,000 requests
/// per 300 s and 52 at once per application user). Minutes long, so not in CI: run with
/// `cargo nextest run -p dynamics-adapter --run-ignored only -E 'test(full_scale)'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: the scaled tests above stand for it in CI"]
async fn full_scale_three_replicas_draining_5000_changes_stay_under_dataverse_limits() {
    let limits = Limits {
        requests: 6000,
        window: Duration::from_secs(300),
        concurrent: 52,
    };
    let (_env, f) = drain(
        "fleet, 5,000 changes at Dataverse's limits",
        &limits,
        &limits,
        5000,
    )
    .await;
    assert_kept_the_limits(&f, &limits, 5000);
    assert!(
        f.sliding_peak <= limits.requests as usize,
        "combined rate over the limit: {f:?}"
    );
}
