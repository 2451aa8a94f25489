//! Service protection API limits, per caller (`x-tgb-caller-id`).
//!
//! Three measures, as Dataverse documents them: the number of requests in a sliding window
//! (default 6000 per 300 s, error `0x80072322`), the combined execution time of those
//! requests (default 1,200 s per window, `0x80072321`) and the number of concurrent requests
//! (default 52, `0x80072326`).
//!
//! When the request count or the execution time is over its limit, the caller is throttled
//! until the oldest entries leave the window far enough for the measure to be back under its
//! limit; the answer is 429 with `Retry-After` = the whole seconds (rounded up, at least 1)
//! until then. **A request sent while throttled lengthens the wait**: each such request moves
//! the end of the throttling period `penalty_ms` further (default 5 s), and is answered with
//! the longer `Retry-After`. Rejected requests are not counted in the window and cost no
//! execution time. The concurrency limit answers at once, without throttling the caller
//! afterwards (`Retry-After: 1`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::codes;

/// Service protection settings. Every limit is optional (`null` disables it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceProtectionConfig {
    /// Master switch.
    pub enabled: bool,
    /// Requests per window (6000).
    pub requests_per_window: Option<u32>,
    /// Sliding window length in milliseconds (300 000).
    pub window_ms: u64,
    /// Concurrent requests (52).
    pub max_concurrent: Option<u32>,
    /// Combined execution time per window in milliseconds (1 200 000).
    pub execution_time_ms: Option<u64>,
    /// How much each request sent while throttled lengthens the wait, in milliseconds (5000).
    pub penalty_ms: u64,
}

impl Default for ServiceProtectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_window: Some(6000),
            window_ms: 300_000,
            max_concurrent: Some(52),
            execution_time_ms: Some(1_200_000),
            penalty_ms: 5_000,
        }
    }
}

/// A 429 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// `Retry-After` in whole seconds.
    pub retry_after_secs: u64,
    /// Error code.
    pub code: &'static str,
    /// Error message.
    pub message: String,
}

/// What a caller has used, as seen now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallerUsage {
    /// Caller id.
    pub caller: String,
    /// Requests admitted in the current window.
    pub requests_in_window: usize,
    /// Execution time used in the current window, milliseconds.
    pub execution_ms_in_window: u64,
    /// Requests in flight.
    pub in_flight: u32,
    /// Milliseconds until the throttling period ends (0 when not throttled).
    pub throttled_for_ms: u64,
    /// 429 answers sent to this caller so far.
    pub rejected: u64,
    /// Requests received while this caller was throttled: before the `Retry-After` of a 429
    /// already answered to it ran out. A client that honours `Retry-After` keeps it at 0.
    #[serde(default)]
    pub early_requests: u64,
}

#[derive(Debug, Default)]
struct CallerState {
    requests: VecDeque<Instant>,
    exec: VecDeque<(Instant, Duration)>,
    exec_total: Duration,
    in_flight: u32,
    blocked: Option<(Instant, &'static str)>,
    rejected: u64,
    /// When the longest `Retry-After` told to this caller runs out.
    retry_until: Option<Instant>,
    early: u64,
}

/// The limiter.
#[derive(Debug)]
pub struct Limits {
    cfg: Mutex<ServiceProtectionConfig>,
    callers: Mutex<HashMap<String, CallerState>>,
}

/// Held while a request runs; records its execution time when dropped.
#[derive(Debug)]
pub struct LimitGuard {
    limits: Arc<Limits>,
    caller: String,
    start: Instant,
    /// Requests left in the window after this one (`x-ms-ratelimit-burst-remaining-xrm-requests`).
    pub remaining_requests: Option<u64>,
    /// Execution time left in the window, milliseconds (`x-ms-ratelimit-time-remaining-xrm-requests`).
    pub remaining_execution_ms: Option<u64>,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let mut callers = self
            .limits
            .callers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(st) = callers.get_mut(&self.caller) {
            st.in_flight = st.in_flight.saturating_sub(1);
            st.exec.push_back((Instant::now(), elapsed));
            st.exec_total += elapsed;
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let ms = d.as_millis() as u64;
    ms.div_ceil(1000).max(1)
}

impl Limits {
    /// A limiter with these settings.
    pub fn new(cfg: ServiceProtectionConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg: Mutex::new(cfg),
            callers: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the settings (counters are kept).
    pub fn configure(&self, cfg: ServiceProtectionConfig) {
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
    }

    /// The settings.
    pub fn config(&self) -> ServiceProtectionConfig {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets every counter.
    pub fn reset(&self) {
        self.callers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn prune(st: &mut CallerState, now: Instant, window: Duration) {
        while st
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            st.requests.pop_front();
        }
        while let Some((t, d)) = st.exec.front() {
            if now.duration_since(*t) >= window {
                st.exec_total = st.exec_total.saturating_sub(*d);
                st.exec.pop_front();
            } else {
                break;
            }
        }
        if st.blocked.is_some_and(|(until, _)| until <= now) {
            st.blocked = None;
        }
    }

    /// Admits a request or answers why not.
    pub fn admit(self: &Arc<Self>, caller: &str) -> Result<LimitGuard, Throttled> {
        let cfg = self.config();
        let now = Instant::now();
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        let st = callers.entry(caller.to_string()).or_default();
        if cfg.enabled {
            let window = Duration::from_millis(cfg.window_ms);
            Self::prune(st, now, window);
            if st.retry_until.is_some_and(|u| now < u) {
                st.early += 1;
            }
            if let Some((until, code)) = st.blocked {
                let until = until + Duration::from_millis(cfg.penalty_ms);
                st.blocked = Some((until, code));
                st.rejected += 1;
                return Err(told(st, now, throttled(code, &cfg, until - now)));
            }
            if let Some(max) = cfg.max_concurrent
                && st.in_flight >= max
            {
                st.rejected += 1;
                let t = Throttled {
                    retry_after_secs: 1,
                    code: codes::LIMIT_CONCURRENCY,
                    message: format!("Number of concurrent requests exceeded the limit of {max}."),
                };
                return Err(told(st, now, t));
            }
            if let Some(max) = cfg.requests_per_window
                && st.requests.len() >= max as usize
            {
                // Back under the limit when enough of the oldest requests leave the window.
                let excess = st.requests.len() + 1 - max as usize;
                let until = st.requests[excess - 1] + window;
                st.blocked = Some((until, codes::LIMIT_REQUESTS));
                st.rejected += 1;
                return Err(told(
                    st,
                    now,
                    throttled(codes::LIMIT_REQUESTS, &cfg, until - now),
                ));
            }
            if let Some(budget) = cfg.execution_time_ms {
                let budget = Duration::from_millis(budget);
                if st.exec_total > budget {
                    let mut total = st.exec_total;
                    let mut until = now;
                    for (t, d) in &st.exec {
                        total = total.saturating_sub(*d);
                        until = *t + window;
                        if total <= budget {
                            break;
                        }
                    }
                    st.blocked = Some((until, codes::LIMIT_EXECUTION_TIME));
                    st.rejected += 1;
                    return Err(told(
                        st,
                        now,
                        throttled(codes::LIMIT_EXECUTION_TIME, &cfg, until - now),
                    ));
                }
            }
        }
        st.requests.push_back(now);
        st.in_flight += 1;
        let on = |x: Option<u64>| if cfg.enabled { x } else { None };
        Ok(LimitGuard {
            limits: self.clone(),
            caller: caller.to_string(),
            start: now,
            remaining_requests: on(cfg
                .requests_per_window
                .map(|m| (m as u64).saturating_sub(st.requests.len() as u64))),
            remaining_execution_ms: on(cfg
                .execution_time_ms
                .map(|b| b.saturating_sub(st.exec_total.as_millis() as u64))),
        })
    }

    /// Usage per caller.
    pub fn usage(&self) -> Vec<CallerUsage> {
        let cfg = self.config();
        let now = Instant::now();
        let window = Duration::from_millis(cfg.window_ms);
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<CallerUsage> = callers
            .iter_mut()
            .map(|(caller, st)| {
                Self::prune(st, now, window);
                CallerUsage {
                    caller: caller.clone(),
                    requests_in_window: st.requests.len(),
                    execution_ms_in_window: st.exec_total.as_millis() as u64,
                    in_flight: st.in_flight,
                    throttled_for_ms: st
                        .blocked
                        .map(|(u, _)| u.saturating_duration_since(now).as_millis() as u64)
                        .unwrap_or(0),
                    rejected: st.rejected,
                    early_requests: st.early,
                }
            })
            .collect();
        out.sort_by(|a, b| a.caller.cmp(&b.caller));
        out
    }
}

/// Remembers until when the caller was told to wait (`Retry-After` runs out), then answers.
fn told(st: &mut CallerState, now: Instant, t: Throttled) -> Throttled {
    let end = now + Duration::from_secs(t.retry_after_secs);
    st.retry_until = Some(st.retry_until.map_or(end, |u| u.max(end)));
    t
}

fn throttled(code: &'static str, cfg: &ServiceProtectionConfig, wait: Duration) -> Throttled {
    let window_s = cfg.window_ms / 1000;
    let message = match code {
        codes::LIMIT_REQUESTS => format!(
            "Number of requests exceeded the limit of {} over time window of {window_s} seconds.",
            cfg.requests_per_window.unwrap_or_default()
        ),
        _ => format!(
            "Combined execution time of incoming requests exceeded limit of {} milliseconds over time window of {window_s} seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
            cfg.execution_time_ms.unwrap_or_default()
        ),
    };
    Throttled {
        retry_after_secs: ceil_secs(wait),
        code,
        message,
    }
}
