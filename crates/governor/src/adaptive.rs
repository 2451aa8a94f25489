//! The lane's learned rate: AIMD (additive increase, multiplicative decrease) on what the
//! target evidently allows, on an injected clock (every method takes `now`).
//!
//! - The lane starts at its configured rate (the ceiling: `requests_per_window / window`).
//! - A 429 sets the rate to `decrease_factor` × what the lane sent in the last window (at
//!   most the rate it had): that many requests the target had just taken, or refused. 429s
//!   answered while the lane is paused by the one that lowered it are the same congestion (the
//!   requests were sent before it) and change nothing; so do 429s after it until the target
//!   has answered a request without one (one decrease per congestion episode, as TCP does per
//!   loss event: a run of refusals is one piece of evidence, not many), and the climb goes on
//!   through them.
//! - Each whole probe interval without a 429 (the window, at most [`MAX_PROBE`]) adds a step,
//!   up to the ceiling. Below the rate evidently allowed when the last 429 came (the evidence),
//!   the step is `increase_share` × the evidence: the lane approaches the limit it ran into in
//!   1 / `increase_share` × (1 − `decrease_factor`) intervals (4 at 5 % and 0.8), so a real
//!   limit far below the configured one (ten times lower) draws one 429 every few windows, not
//!   a burst of them each time the climb overshoots by a share of the ceiling. Past the
//!   evidence (no 429 there yet) the step is `increase_share` × the ceiling: from there back to
//!   the configured rate in at most 1 / `increase_share` intervals (20 at 5 %, under two
//!   minutes), so a 429 that was not a rate limit (a concurrency or execution-time limit, a
//!   burst of refusals) costs minutes at most, never the rest of a long window.
//! - No step is taken while the lane is paused: 429s of requests sent before the decrease
//!   (Dataverse lengthens the throttling period for each) and a pause another replica of the
//!   fleet received ([`Aimd::hold`]) move the start of the climb to the pause's end. Without
//!   it, a pause lengthened to 25 s let the climb run five intervals unseen, and the lane left
//!   the pause at several times the limit, drawing the next burst of 429s.
//! - In a fleet (a lane sharing its limits with other replicas, `share` < 1) the steps are
//!   scaled by the share, so the fleet climbs together by what one lane would.
//! - The rate never goes under the floor (`floor_share` × the ceiling, at least one request
//!   per window).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The longest interval between two steps of the climb back.
pub const MAX_PROBE: Duration = Duration::from_secs(5);

/// The controller's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AimdSettings {
    /// Requests per window the lane is configured for (its ceiling).
    pub requests_per_window: u32,
    /// The window.
    pub window: Duration,
    /// After a 429: the share of the rate evidently allowed that the lane keeps (0 < f < 1).
    pub decrease_factor: f64,
    /// Per probe interval without a 429: the share of the ceiling that is added back.
    pub increase_share: f64,
    /// The lowest rate, as a share of the ceiling.
    pub floor_share: f64,
}

/// One lane's learned rate.
#[derive(Debug)]
pub struct Aimd {
    window: Duration,
    /// The climb's step interval: the window, at most [`MAX_PROBE`].
    probe: Duration,
    ceiling: f64,
    floor: f64,
    decrease_factor: f64,
    rate: f64,
    /// Added per probe interval without 429 past the evidence (a share of the ceiling).
    step: f64,
    /// `increase_share`.
    increase_share: f64,
    /// The rate evidently allowed when the last 429 lowered the rate.
    evidence: Option<f64>,
    /// This lane's share of a fleet budget (1 alone).
    share: f64,
    /// The current window without 429 started here.
    since: Instant,
    /// Until then, 429s are of requests sent before the last decrease.
    hold_until: Option<Instant>,
    /// A 429 lowered the rate and no request has been answered without one since.
    in_episode: bool,
    /// Sends within the last window.
    sent: VecDeque<Instant>,
    decreases: u64,
}

impl Aimd {
    /// A controller at the ceiling.
    pub fn new(s: AimdSettings, now: Instant) -> Aimd {
        let window = s.window.max(Duration::from_millis(1));
        let secs = window.as_secs_f64();
        let ceiling = f64::from(s.requests_per_window.max(1)) / secs;
        let floor = (s.floor_share.clamp(0.0, 1.0) * ceiling)
            .max(1.0 / secs)
            .min(ceiling);
        let increase_share = s.increase_share.clamp(0.001, 1.0);
        Aimd {
            window,
            probe: window.min(MAX_PROBE),
            ceiling,
            floor,
            decrease_factor: s.decrease_factor.clamp(0.05, 0.95),
            rate: ceiling,
            step: increase_share * ceiling,
            increase_share,
            evidence: None,
            share: 1.0,
            since: now,
            hold_until: None,
            in_episode: false,
            sent: VecDeque::new(),
            decreases: 0,
        }
    }

    /// The configured rate, requests per second.
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The lowest rate, requests per second.
    pub fn floor(&self) -> f64 {
        self.floor
    }

    /// How many times a 429 lowered the rate.
    pub fn decreases(&self) -> u64 {
        self.decreases
    }

    /// The learned rate at `now`, requests per second (whole probe intervals without a 429
    /// added).
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.grow(now);
        self.rate
    }

    /// Whether the lane runs below its configured rate at `now`.
    pub fn is_limiting(&mut self, now: Instant) -> bool {
        self.rate(now) < self.ceiling
    }

    /// A request is sent at `now`.
    pub fn on_send(&mut self, now: Instant) {
        self.prune(now);
        self.sent.push_back(now);
    }

    /// This lane's share of a fleet budget (`0 < share ≤ 1`): the climb's steps are scaled by
    /// it.
    pub fn set_share(&mut self, share: f64) {
        self.share = share.clamp(0.001, 1.0);
    }

    /// The lane is paused until `until` (its own 429s, a 503, or a 429 another replica of the
    /// fleet received): the climb takes no step before then.
    pub fn hold(&mut self, now: Instant, until: Instant) {
        self.grow(now);
        if self.rate < self.ceiling {
            self.since = self.since.max(until);
        }
    }

    /// A 429 reported at `now`, the lane paused for `retry_after`. Returns whether it lowered
    /// the rate.
    pub fn on_throttled(&mut self, now: Instant, retry_after: Duration) -> bool {
        if self.hold_until.is_some_and(|h| now < h) {
            // A request sent before the decrease: the pause it lengthened is no interval of
            // the climb either.
            self.hold(now, now + retry_after);
            return false;
        }
        if self.in_episode {
            return false;
        }
        self.in_episode = true;
        self.grow(now);
        self.prune(now);
        let observed = self.sent.len() as f64 / self.window.as_secs_f64();
        let allowed = observed.min(self.rate).max(self.floor);
        self.evidence = Some(allowed);
        self.rate = (allowed * self.decrease_factor).max(self.floor);
        // The pause is no window without 429: the climb starts when it ends.
        self.since = now + retry_after;
        self.hold_until = Some(now + retry_after);
        self.decreases += 1;
        true
    }

    /// The target answered a request without a 429: the congestion episode, if any, is over.
    pub fn on_answered(&mut self) {
        self.in_episode = false;
    }

    fn grow(&mut self, now: Instant) {
        if self.rate >= self.ceiling {
            self.since = self.since.max(now);
            return;
        }
        let Some(elapsed) = now.checked_duration_since(self.since) else {
            return;
        };
        let intervals = (elapsed.as_secs_f64() / self.probe.as_secs_f64()).floor();
        if intervals >= 1.0 {
            // Bounded: past a few thousand intervals every path has reached the ceiling.
            for _ in 0..(intervals as u64).min(100_000) {
                let step = match self.evidence {
                    Some(e) if self.rate < e => (self.increase_share * e).min(e - self.rate),
                    _ => self.step * self.share,
                };
                self.rate = (self.rate + step.max(f64::EPSILON)).min(self.ceiling);
                if self.rate >= self.ceiling {
                    break;
                }
            }
            self.since += self.probe.mul_f64(intervals);
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(first) = self.sent.front() {
            if now.saturating_duration_since(*first) >= self.window {
                self.sent.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AimdSettings {
        AimdSettings {
            requests_per_window: 200,
            window: Duration::from_secs(5),
            decrease_factor: 0.8,
            increase_share: 0.05,
            floor_share: 0.01,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A lane with `settings` that sent `n` requests, one every `every` seconds from `t0`.
    fn lane_that_sent(settings: AimdSettings, n: u32, every: f64) -> (Instant, Aimd) {
        let t0 = Instant::now();
        let mut a = Aimd::new(settings, t0);
        for i in 0..n {
            a.on_send(t0 + secs(f64::from(i) * every));
        }
        (t0, a)
    }

    #[test]
    fn it_starts_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut a = Aimd::new(settings(), t0);
        assert_eq!(a.rate(t0), 40.0);
        assert!(!a.is_limiting(t0 + secs(100.0)));
    }

    #[test]
    fn a_429_lowers_the_rate_to_a_share_of_what_the_last_window_carried() {
        // 25 requests in the last 5 s (the target allows 20 per 5 s = 4/s).
        let (t0, mut a) = lane_that_sent(settings(), 25, 0.1);
        assert!(a.on_throttled(t0 + secs(2.5), secs(2.0)));
        let r = a.rate(t0 + secs(2.5));
        assert!((r - 0.8 * 25.0 / 5.0).abs() < 1e-9, "{r}");
        assert_eq!(a.decreases(), 1);
    }

    #[test]
    fn throttles_during_the_pause_they_caused_lower_nothing_more() {
        let (t0, mut a) = lane_that_sent(settings(), 20, 0.01);
        assert!(a.on_throttled(t0 + secs(1.0), secs(3.0)));
        let after_first = a.rate(t0 + secs(1.0));
        for i in 0..15 {
            assert!(!a.on_throttled(t0 + secs(1.0 + f64::from(i) * 0.1), secs(3.0)));
        }
        assert_eq!(a.rate(t0 + secs(3.9)), after_first);
        assert_eq!(a.decreases(), 1);
        // After the pause, a 429 before any answer is the same congestion ...
        a.on_send(t0 + secs(4.1));
        assert!(!a.on_throttled(t0 + secs(4.2), secs(1.0)));
        assert_eq!(a.decreases(), 1);
        // ... and one after an answer is a new one, and lowers again.
        a.on_answered();
        a.on_send(t0 + secs(4.3));
        assert!(a.on_throttled(t0 + secs(4.4), secs(1.0)));
        assert!(a.rate(t0 + secs(4.2)) < after_first);
    }

    #[test]
    fn each_probe_interval_without_429_adds_back_a_step_up_to_the_ceiling() {
        let (t0, mut a) = lane_that_sent(settings(), 20, 0.1);
        a.on_throttled(t0 + secs(2.0), secs(1.0));
        // allowed = 20 / 5 s = 4/s → rate 3.2/s. Up to the evidence (4/s) the step is 5 % of
        // it (0.2/s per 5 s interval), past it 5 % of the ceiling (2/s); the climb starts after
        // the 1 s pause.
        let start = t0 + secs(3.0);
        assert!((a.rate(start + secs(4.99)) - 3.2).abs() < 1e-9);
        assert!((a.rate(start + secs(5.0)) - 3.4).abs() < 1e-9);
        assert!((a.rate(start + secs(12.0)) - 3.6).abs() < 1e-9);
        assert!((a.rate(start + secs(20.0)) - 4.0).abs() < 1e-9);
        assert!((a.rate(start + secs(25.0)) - 6.0).abs() < 1e-9);
        // Back at the ceiling after enough quiet intervals, never above it.
        assert_eq!(a.rate(start + secs(5.0 * 10_000.0)), 40.0);
    }

    #[test]
    fn a_run_of_refusals_lowers_once_and_the_climb_goes_on_through_it() {
        let (t0, mut a) = lane_that_sent(settings(), 20, 0.1);
        assert!(a.on_throttled(t0 + secs(2.0), secs(1.0)));
        let low = a.rate(t0 + secs(2.0));
        // Forty refusals in a row, one every second, none answered in between.
        for i in 0..40 {
            let at = t0 + secs(3.0 + f64::from(i));
            a.on_send(at);
            assert!(!a.on_throttled(at, secs(1.0)));
        }
        assert_eq!(a.decreases(), 1);
        assert!(a.rate(t0 + secs(43.0)) > low, "the climb went on");
    }

    #[test]
    fn a_long_window_climbs_back_in_short_intervals() {
        // Dataverse's 6,000 per 300 s: a 429 early in a burst must not hold the lane down for
        // the rest of the window.
        let long_window = AimdSettings {
            requests_per_window: 6000,
            window: Duration::from_secs(300),
            ..settings()
        };
        let (t0, mut a) = lane_that_sent(long_window, 200, 0.1);
        assert!(a.on_throttled(t0 + secs(20.0), secs(2.0)));
        let low = a.rate(t0 + secs(22.0));
        assert!(low < 1.0, "{low}");
        // Four intervals back to the evidence (200 / 300 s), then every 5 s adds 1/s (5 % of
        // 20/s): the ceiling again within 24 intervals, two minutes.
        let evidence = 200.0 / 300.0;
        assert!((a.rate(t0 + secs(22.0 + 4.0 * 5.0)) - evidence).abs() < 1e-9);
        assert!((a.rate(t0 + secs(22.0 + 5.0 * 5.0)) - (evidence + 1.0)).abs() < 1e-9);
        assert_eq!(a.rate(t0 + secs(22.0 + 24.0 * 5.0)), 20.0);
    }

    /// Three replicas against a limit ten times lower than configured: Dataverse lengthens
    /// the throttling period by 5 s for every request sent in it, and the requests in flight
    /// when the first 429 came all lengthen it. The climb waits for the pause's end.
    #[test]
    fn refusals_of_requests_sent_before_the_decrease_hold_the_climb_until_the_pause_ends() {
        let (t0, mut a) = lane_that_sent(settings(), 20, 0.1);
        assert!(a.on_throttled(t0 + secs(2.0), secs(1.0)));
        let low = a.rate(t0 + secs(2.0));
        // Five requests in flight answered 429, each with a Retry-After 5 s longer.
        for i in 1..=5 {
            let at = t0 + secs(2.0 + 0.05 * f64::from(i));
            assert!(!a.on_throttled(at, secs(1.0 + 5.0 * f64::from(i))));
        }
        // The pause ends at 2.25 + 26 s: no step before it, the first one interval later.
        let end = t0 + secs(2.25 + 26.0);
        assert_eq!(a.rate(end + secs(4.99)), low);
        assert!(a.rate(end + secs(5.0)) > low);
        assert_eq!(a.decreases(), 1);
    }

    #[test]
    fn a_pause_another_replica_received_holds_the_climb_and_a_fleet_climbs_by_its_share() {
        let t0 = Instant::now();
        let mut a = Aimd::new(settings(), t0);
        a.set_share(0.25);
        a.on_send(t0);
        assert!(a.on_throttled(t0 + secs(1.0), secs(1.0)));
        let low = a.rate(t0 + secs(2.0));
        assert!((low - a.floor()).abs() < 1e-9, "{low}");
        // Another replica's 429 pauses the lane from 4 s to 14 s.
        a.hold(t0 + secs(4.0), t0 + secs(14.0));
        assert_eq!(a.rate(t0 + secs(18.9)), low);
        // Past the evidence (the floor), a step is a quarter of 5 % of the ceiling: 0.5/s.
        assert!((a.rate(t0 + secs(19.0)) - (low + 0.5)).abs() < 1e-9);
    }

    #[test]
    fn the_rate_never_goes_under_the_floor() {
        let t0 = Instant::now();
        let mut a = Aimd::new(settings(), t0);
        let mut now = t0;
        for _ in 0..50 {
            now += secs(10.0);
            a.on_send(now);
            a.on_answered();
            a.on_throttled(now, secs(0.5));
        }
        assert!((a.rate(now) - a.floor()).abs() < 1e-9);
        assert!((a.floor() - 0.4).abs() < 1e-9, "1% of 40/s");
    }
}
