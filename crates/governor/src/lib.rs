//! The rate governor: every request of one identity to one target goes through one
//! [`Governor`], which keeps it inside the target's service-protection limits.
//!
//! - A token bucket sized so that no sliding window of `window` ever holds more than
//!   `requests_per_window` requests: rate = `headroom × limit / window`, burst = the rest of
//!   the limit, so burst + rate × window = limit. (Dataverse: 6000 / 300 s.)
//! - At most `max_concurrent` requests in flight (Dataverse allows 52; we stay well under).
//! - [`Governor::pause_for`]: on any 429 the whole lane waits `Retry-After` before its next
//!   request; a later, longer `Retry-After` extends the pause, a shorter one never shortens it.
//! - Adaptive (`adaptive = true`, the default): a 429 also lowers the lane's rate to what the
//!   target evidently allows, and windows without 429 raise it again slowly ([`adaptive`]);
//!   while the learned rate is under the configured one, requests are spaced by its inverse.
//!   The learned rate is the gauge `tgb_governor_learned_rate{lane}` (requests per second).

pub mod adaptive;
mod class;

pub use adaptive::{Aimd, AimdSettings};
pub use class::{Classify, ErrorClass, parse_retry_after, retry_after_header};

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits of one lane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GovernorConfig {
    /// Requests the target allows per window (Dataverse: 6000). 0 = no rate limit.
    pub requests_per_window: u32,
    /// The window, seconds (Dataverse: 300).
    pub window_secs: f64,
    /// Share of the limit spent at the steady rate (the rest is the burst); 0 < h ≤ 1.
    pub headroom: f64,
    /// Requests in flight at once (Dataverse allows 52).
    pub max_concurrent: usize,
    /// Learn the rate the target allows from its 429s (AIMD).
    pub adaptive: bool,
    /// After a 429, the share of the rate the target evidently allowed that the lane keeps.
    pub decrease_factor: f64,
    /// Per window without a 429, the share of that rate added back.
    pub increase_share: f64,
    /// The lowest learned rate, as a share of the configured one.
    pub floor_share: f64,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            requests_per_window: 6000,
            window_secs: 300.0,
            headroom: 0.9,
            max_concurrent: 16,
            adaptive: true,
            decrease_factor: 0.8,
            increase_share: 0.05,
            floor_share: 0.01,
        }
    }
}

impl GovernorConfig {
    /// No rate limit, `max_concurrent` at once (benchmarks with limits off).
    pub fn unlimited(max_concurrent: usize) -> Self {
        GovernorConfig {
            requests_per_window: 0,
            max_concurrent,
            ..GovernorConfig::default()
        }
    }

    fn aimd(&self, now: Instant) -> Option<Aimd> {
        (self.requests_per_window > 0 && self.window_secs > 0.0).then(|| {
            Aimd::new(
                AimdSettings {
                    requests_per_window: self.requests_per_window,
                    window: Duration::from_secs_f64(self.window_secs),
                    decrease_factor: self.decrease_factor,
                    increase_share: self.increase_share,
                    floor_share: self.floor_share,
                },
                now,
            )
        })
    }

    fn quota(&self) -> Option<Quota> {
        let limit = f64::from(self.requests_per_window);
        if limit < 1.0 || self.window_secs <= 0.0 {
            return None;
        }
        let headroom = self.headroom.clamp(0.01, 1.0);
        let rate_per_sec = headroom * limit / self.window_secs;
        let burst = ((1.0 - headroom) * limit).floor().max(1.0) as u32;
        let period = Duration::from_secs_f64(1.0 / rate_per_sec);
        Some(
            Quota::with_period(period)
                .expect("period is positive")
                .allow_burst(NonZeroU32::new(burst).expect("burst ≥ 1")),
        )
    }
}

/// A snapshot of a lane, for `tgb status` and metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GovernorState {
    /// The identity and target, e.g. `dataverse:app-user`.
    pub lane: String,
    /// Requests in flight.
    pub in_flight: usize,
    /// How long the lane still waits after a 429, if paused.
    pub paused_for: Option<Duration>,
    /// 429s reported to this lane.
    pub throttled: u64,
    /// The learned rate, requests per second (`None` when not adaptive or unlimited).
    pub learned_rate: Option<f64>,
}

/// One lane: an identity against one target.
#[derive(Debug)]
pub struct Governor {
    lane: String,
    config: GovernorConfig,
    limiter: Option<DefaultDirectRateLimiter>,
    slots: Arc<Semaphore>,
    paused_until: Mutex<Option<Instant>>,
    throttled: Mutex<u64>,
    pace: Option<Mutex<Pace>>,
    withheld: Arc<Mutex<Withheld>>,
}

/// The learned rate, the lane's share of a fleet budget, and the next free send time they
/// allow.
#[derive(Debug)]
struct Pace {
    aimd: Aimd,
    share: f64,
    next: Instant,
}

/// Concurrency slots kept back while the lane's share of a fleet budget is under 1: a slot
/// freed while fewer than `target` are kept is kept instead of released.
#[derive(Debug, Default)]
struct Withheld {
    target: usize,
    held: Vec<OwnedSemaphorePermit>,
}

/// Held while a request is in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    slot: Option<OwnedSemaphorePermit>,
    lane: String,
    slots: Arc<Semaphore>,
    withheld: Arc<Mutex<Withheld>>,
    max: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut w = self.withheld.lock().unwrap();
        if let Some(slot) = self.slot.take()
            && w.held.len() < w.target
        {
            w.held.push(slot);
        }
        let in_flight = self
            .max
            .saturating_sub(self.slots.available_permits() + w.held.len());
        metrics::gauge!("tgb_governor_in_flight", "lane" => self.lane.clone())
            .set(in_flight as f64);
    }
}

impl Governor {
    /// A lane named `lane` (e.g. `dataverse:<client id>`).
    pub fn new(lane: impl Into<String>, config: GovernorConfig) -> Arc<Governor> {
        let lane = lane.into();
        let now = Instant::now();
        let pace = config.aimd(now).map(|aimd| {
            if config.adaptive {
                metrics::gauge!("tgb_governor_learned_rate", "lane" => lane.clone())
                    .set(aimd.ceiling());
            }
            Mutex::new(Pace {
                aimd,
                share: 1.0,
                next: now,
            })
        });
        Arc::new(Governor {
            pace,
            lane,
            limiter: config.quota().map(RateLimiter::direct),
            slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            paused_until: Mutex::new(None),
            throttled: Mutex::new(0),
            withheld: Arc::default(),
        })
    }

    /// Sets this replica's share of a budget the lane's limits describe for the whole fleet
    /// (`1 / replicas`, see `tgb_bus::fleet`): the rate (learned or configured) and the
    /// concurrency are scaled by it, and requests are spaced (no burst) while it is under 1.
    pub fn set_share(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(0.001, 1.0)
        } else {
            1.0
        };
        if let Some(pace) = &self.pace {
            let mut p = pace.lock().unwrap();
            p.share = share;
            p.aimd.set_share(share);
        }
        let max = self.config.max_concurrent.max(1);
        let cap = ((max as f64 * share).floor() as usize).clamp(1, max);
        let mut w = self.withheld.lock().unwrap();
        w.target = max - cap;
        while w.held.len() < w.target {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => w.held.push(slot),
                Err(_) => break, // the rest is kept as requests in flight end
            }
        }
        let target = w.target;
        w.held.truncate(target);
        metrics::gauge!("tgb_governor_fleet_share", "lane" => self.lane.clone()).set(share);
    }

    /// This replica's share of the fleet budget (1 when alone).
    pub fn share(&self) -> f64 {
        self.pace
            .as_ref()
            .map(|p| p.lock().unwrap().share)
            .unwrap_or(1.0)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        let held = self.withheld.lock().unwrap().held.len();
        self.config
            .max_concurrent
            .max(1)
            .saturating_sub(self.slots.available_permits() + held)
    }

    /// The lane's name.
    pub fn lane(&self) -> &str {
        &self.lane
    }

    /// The lane's limits.
    pub fn config(&self) -> &GovernorConfig {
        &self.config
    }

    /// Waits until a request may be sent: no pause in force, a free slot, a token.
    pub async fn acquire(&self) -> Permit {
        let started = Instant::now();
        let slot = loop {
            self.wait_out_pause().await;
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            self.wait_for_pace().await;
            // A 429 may have arrived while we waited for the slot or the token.
            if self.pause_remaining().is_none() {
                break slot;
            }
            drop(slot);
        };
        metrics::histogram!("tgb_governor_wait_seconds", "lane" => self.lane.clone())
            .record(started.elapsed().as_secs_f64());
        let max = self.config.max_concurrent.max(1);
        metrics::gauge!("tgb_governor_in_flight", "lane" => self.lane.clone())
            .set(self.in_flight() as f64);
        Permit {
            slot: Some(slot),
            lane: self.lane.clone(),
            slots: self.slots.clone(),
            withheld: self.withheld.clone(),
            max,
        }
    }

    /// The target answered 503 with `retry_after` (unavailable, not a rate limit): the whole
    /// lane waits that long, and its learned rate stays as it is.
    pub fn hold_for(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut paused = self.paused_until.lock().unwrap();
        if paused.is_none_or(|current| until > current) {
            *paused = Some(until);
        }
    }

    /// The target answered 429 with `retry_after`: the whole lane waits that long, and (when
    /// adaptive) lowers its rate to what the target evidently allows.
    pub fn pause_for(&self, retry_after: Duration) {
        let now = Instant::now();
        self.hold_for(retry_after);
        if let (Some(pace), true) = (&self.pace, self.config.adaptive) {
            let mut p = pace.lock().unwrap();
            if p.aimd.on_throttled(now, retry_after) {
                let rate = p.aimd.rate(now);
                metrics::gauge!("tgb_governor_learned_rate", "lane" => self.lane.clone()).set(rate);
                tracing::info!(lane = %self.lane, learned_rate = rate, "429: the lane lowers its rate");
            }
        }
        *self.throttled.lock().unwrap() += 1;
        metrics::counter!("tgb_governor_throttled_total", "lane" => self.lane.clone()).increment(1);
    }

    /// The target answered a request without a 429: a run of 429s (one congestion episode) is
    /// over, and the next 429 may lower the learned rate again.
    pub fn answered(&self) {
        if let (Some(pace), true) = (&self.pace, self.config.adaptive) {
            pace.lock().unwrap().aimd.on_answered();
        }
    }

    /// Another replica of the fleet was answered 429 (see `tgb_bus::fleet`): this lane also
    /// waits until `remaining` has passed, so no replica sends into the target's throttling
    /// period (each such request would lengthen it). Not counted as this lane's 429 and the
    /// learned rate is not lowered (the replica that was answered 429 lowers its own), but it
    /// does not climb during the pause either ([`adaptive::Aimd::hold`]).
    pub fn pause_shared(&self, remaining: Duration) {
        self.hold_for(remaining);
        if let Some(pace) = &self.pace {
            let now = Instant::now();
            pace.lock().unwrap().aimd.hold(now, now + remaining);
        }
    }

    /// How long the current pause still lasts.
    pub fn pause_remaining(&self) -> Option<Duration> {
        let paused = *self.paused_until.lock().unwrap();
        paused
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// A snapshot of the lane.
    pub fn state(&self) -> GovernorState {
        GovernorState {
            lane: self.lane.clone(),
            in_flight: self.in_flight(),
            paused_for: self.pause_remaining(),
            throttled: *self.throttled.lock().unwrap(),
            learned_rate: self.learned_rate(),
        }
    }

    /// The learned rate now, requests per second (`None` when not adaptive or unlimited).
    pub fn learned_rate(&self) -> Option<f64> {
        let pace = self.pace.as_ref().filter(|_| self.config.adaptive)?;
        Some(pace.lock().unwrap().aimd.rate(Instant::now()))
    }

    /// While the learned rate is under the configured one, takes the next send time it allows
    /// (one every 1 / rate) and waits for it; records the send.
    async fn wait_for_pace(&self) {
        let Some(pace) = &self.pace else {
            return;
        };
        let at = {
            let mut p = pace.lock().unwrap();
            let now = Instant::now();
            let ceiling = p.aimd.ceiling();
            let learned = if self.config.adaptive {
                let r = p.aimd.rate(now);
                metrics::gauge!("tgb_governor_learned_rate", "lane" => self.lane.clone()).set(r);
                r
            } else {
                ceiling
            };
            // A slice of a fleet budget keeps the headroom and one request per window: a window
            // holds one send more than rate × window (both ends), and replicas spaced exactly
            // at their slices could still meet in one window when their timers wake late.
            let slice = if p.share < 1.0 {
                let r = ceiling * p.share * self.config.headroom.clamp(0.01, 1.0);
                (r - 1.0 / self.config.window_secs).max(r / 2.0)
            } else {
                ceiling
            };
            let rate = learned.min(slice);
            let at = if rate < ceiling {
                let at = p.next.max(now);
                p.next = at + Duration::from_secs_f64(1.0 / rate);
                at
            } else {
                p.next = now;
                now
            };
            p.aimd.on_send(at);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    async fn wait_out_pause(&self) {
        while let Some(remaining) = self.pause_remaining() {
            tokio::time::sleep(remaining).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_never_exceeds_the_window_limit() {
        let c = GovernorConfig::default();
        let rate = c.headroom * 6000.0 / 300.0;
        let burst = ((1.0 - c.headroom) * 6000.0).floor();
        assert!(burst + rate * 300.0 <= 6000.0 + 1e-9);
        assert!(c.quota().is_some());
        assert!(GovernorConfig::unlimited(4).quota().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_the_whole_lane_and_a_shorter_one_never_shortens_it() {
        let g = Governor::new("t", GovernorConfig::unlimited(4));
        g.pause_for(Duration::from_secs(10));
        g.pause_for(Duration::from_secs(2));
        let started = Instant::now();
        let _p = g.acquire().await;
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert_eq!(g.state().throttled, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_requests_are_spaced_at_the_learned_rate_and_retry_after_still_holds() {
        let config = GovernorConfig {
            requests_per_window: 200,
            window_secs: 5.0,
            headroom: 0.9,
            max_concurrent: 4,
            ..GovernorConfig::default()
        };
        let g = Governor::new("t", config.clone());
        assert_eq!(g.learned_rate(), Some(40.0));
        for _ in 0..20 {
            drop(g.acquire().await);
        }
        g.pause_for(Duration::from_secs(2));
        // 20 sent in the window → 4/s allowed → 3.2/s learned.
        let rate = g.learned_rate().unwrap();
        assert!((rate - 3.2).abs() < 1e-9, "{rate}");
        let started = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            drop(g.acquire().await);
            at.push(started.elapsed());
        }
        assert!(
            at[0] >= Duration::from_secs(2),
            "Retry-After honoured: {at:?}"
        );
        // The paused clock wakes timers on whole milliseconds: each gap is 1 / 3.2 s ± 1 ms.
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_secs_f64(1.0 / 3.2 - 0.001),
                "{at:?}"
            );
        }
        let off = Governor::new(
            "off",
            GovernorConfig {
                adaptive: false,
                ..config
            },
        );
        off.pause_for(Duration::from_secs(1));
        assert_eq!(off.learned_rate(), None);
        assert_eq!(off.state().learned_rate, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_share_scales_the_concurrency_and_gives_it_back() {
        let g = Governor::new("t", GovernorConfig::unlimited(6));
        let a = g.acquire().await;
        let b = g.acquire().await;
        let c = g.acquire().await;
        g.set_share(1.0 / 3.0);
        assert_eq!(g.in_flight(), 3, "requests in flight are not cut");
        drop((a, b));
        assert_eq!(g.in_flight(), 1);
        let _d = g.acquire().await;
        let waiting = tokio::time::timeout(Duration::from_secs(1), g.acquire()).await;
        assert!(waiting.is_err(), "a third of 6 is 2 at once");
        g.set_share(1.0);
        let _e = tokio::time::timeout(Duration::from_secs(1), g.acquire())
            .await
            .unwrap();
        drop(c);
        assert_eq!(g.state().in_flight, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let g = Governor::new("t", GovernorConfig::unlimited(2));
        let a = g.acquire().await;
        let _b = g.acquire().await;
        assert_eq!(g.state().in_flight, 2);
        let waiting = tokio::time::timeout(Duration::from_secs(1), g.acquire()).await;
        assert!(waiting.is_err(), "a third request waits for a slot");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), g.acquire())
            .await
            .unwrap();
    }
}
