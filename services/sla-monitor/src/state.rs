//! The SLA clock of one TG case, as stored in `tgb_sla`, and the pure rules over it: pause,
//! resume, stop, first response, and what is due at a given time.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::policy::Policy;

/// The partner of a case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// EDI qualifier.
    pub qualifier: String,
    /// EDI id.
    pub id: String,
    /// Display name.
    pub name: String,
}

impl Partner {
    /// `QUALIFIER:ID`, empty when unknown.
    pub fn key(&self) -> String {
        if self.qualifier.is_empty() && self.id.is_empty() {
            String::new()
        } else {
            format!("{}:{}", self.qualifier, self.id)
        }
    }
}

/// The clock of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseClock {
    /// The TG case.
    pub case_id: String,
    /// Its title (for the escalation task).
    pub title: String,
    /// Its partner.
    pub partner: Partner,
    /// The partner's tier when the clock started.
    pub tier: String,
    /// `urgent`, `high`, `normal`, `low`: the current priority (a change re-targets).
    pub priority: String,
    /// The correlation id of the case's business thread.
    pub correlation_id: String,
    /// The last TG status seen (`open`, `waiting_on_partner`, …).
    pub status: String,
    /// The last TG revision applied (older updates are dropped).
    pub revision: i64,
    /// When the case was opened.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Since when the clock is paused (waiting on the partner), if it is.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub paused_since: Option<OffsetDateTime>,
    /// Paused time already closed, milliseconds.
    pub paused_ms: i64,
    /// The first internal reply.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub first_response_at: Option<OffsetDateTime>,
    /// Resolved or closed.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub stopped_at: Option<OffsetDateTime>,
    /// Warnings and breaches already published: `first_response.warning`, `resolution.1`, ….
    pub emitted: BTreeSet<String>,
    /// The case's history was replayed by a backfill at this time: a breach level that fell due
    /// before it is marked in [`CaseClock::emitted`] without being raised ([`Due::is_history`]).
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub history_until: Option<OffsetDateTime>,
}

/// Which target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// First internal reply.
    FirstResponse,
    /// Resolved or closed.
    Resolution,
}

impl Target {
    /// `first_response` / `resolution`: the key prefix in [`CaseClock::emitted`].
    pub fn key(self) -> &'static str {
        match self {
            Target::FirstResponse => "first_response",
            Target::Resolution => "resolution",
        }
    }

    /// Words for people.
    pub fn words(self) -> &'static str {
        match self {
            Target::FirstResponse => "first response",
            Target::Resolution => "resolution",
        }
    }
}

/// Something a clock owes at a given time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// The warning threshold of `target` was crossed (`target_at` is when the target falls due).
    Warning {
        /// Which target.
        target: Target,
        /// When the target falls due if the clock keeps running.
        due_at: OffsetDateTime,
        /// Elapsed share of the target, per mille.
        permille: u32,
    },
    /// `target` was missed; escalation `level` (index into the policy's levels) is due.
    Breach {
        /// Which target.
        target: Target,
        /// When the target fell due.
        due_at: OffsetDateTime,
        /// When this level fell due (`due_at` + the level's delay).
        level_at: OffsetDateTime,
        /// Index into [`Policy::escalation`].
        index: usize,
    },
}

impl Due {
    /// A breach level that fell due before the clock's replayed history ends
    /// ([`CaseClock::history_until`]): it was missed before tg-bridge watched the case, so it is
    /// recorded, not escalated. Warnings are never history: a target not yet missed is still
    /// worth the warning.
    pub fn is_history(&self, clock: &CaseClock) -> bool {
        match self {
            Due::Breach { level_at, .. } => clock.history_until.is_some_and(|h| *level_at <= h),
            Due::Warning { .. } => false,
        }
    }

    /// The key in [`CaseClock::emitted`].
    pub fn key(&self, policy: &Policy) -> String {
        match self {
            Due::Warning { target, .. } => format!("{}.warning", target.key()),
            Due::Breach { target, index, .. } => {
                format!("{}.{}", target.key(), policy.escalation[*index].level)
            }
        }
    }
}

fn ms(d: time::Duration) -> i64 {
    i64::try_from(d.whole_milliseconds()).unwrap_or(i64::MAX)
}

fn dur_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl CaseClock {
    /// A running clock started at `at`.
    pub fn start(case_id: &str, at: OffsetDateTime) -> Self {
        CaseClock {
            case_id: case_id.to_owned(),
            title: String::new(),
            partner: Partner::default(),
            tier: String::new(),
            priority: "normal".into(),
            correlation_id: case_id.to_owned(),
            status: "open".into(),
            revision: 0,
            started_at: at,
            paused_since: None,
            paused_ms: 0,
            first_response_at: None,
            stopped_at: None,
            emitted: BTreeSet::new(),
            history_until: None,
        }
    }

    /// Whether the clock is still running or paused (not resolved/closed).
    pub fn is_open(&self) -> bool {
        self.stopped_at.is_none()
    }

    /// Pauses at `at` (waiting on the partner). No effect when paused or stopped.
    pub fn pause(&mut self, at: OffsetDateTime) {
        if self.is_open() && self.paused_since.is_none() {
            self.paused_since = Some(at.max(self.started_at));
        }
    }

    /// Resumes at `at`. No effect when running.
    pub fn resume(&mut self, at: OffsetDateTime) {
        if let Some(since) = self.paused_since.take() {
            self.paused_ms += ms(at - since).max(0);
        }
    }

    /// Stops at `at` (resolved or closed); returns the active time to resolution when this call
    /// stopped it.
    pub fn stop(&mut self, at: OffsetDateTime) -> Option<time::Duration> {
        if !self.is_open() {
            return None;
        }
        let at = at.max(self.started_at);
        self.resume(at);
        self.stopped_at = Some(at);
        Some(self.active(at))
    }

    /// Records the first internal reply at `at`; returns the active time to it when it is the
    /// first.
    pub fn respond(&mut self, at: OffsetDateTime) -> Option<time::Duration> {
        if self.first_response_at.is_some() {
            return None;
        }
        let at = at.max(self.started_at);
        self.first_response_at = Some(at);
        Some(self.active(at))
    }

    /// Time the clock ran (not paused) from its start up to `now` (or its stop).
    pub fn active(&self, now: OffsetDateTime) -> time::Duration {
        let end = self.stopped_at.map_or(now, |s| s.min(now));
        let mut paused = self.paused_ms;
        if let Some(since) = self.paused_since {
            paused += ms(end - since).max(0);
        }
        time::Duration::milliseconds((ms(end - self.started_at) - paused).max(0))
    }

    /// When a target of `length` falls due if the clock keeps running from now on.
    fn due_at(&self, length: std::time::Duration, now: OffsetDateTime) -> OffsetDateTime {
        let remaining = dur_ms(length) - ms(self.active(now));
        now + time::Duration::milliseconds(remaining)
    }

    /// Everything due at `now` that is not yet in [`CaseClock::emitted`]. A warning is only due
    /// before its target is missed (after a breach it would say nothing new).
    pub fn due(&self, policy: &Policy, now: OffsetDateTime) -> Vec<Due> {
        if !self.is_open() {
            return Vec::new();
        }
        let active = dur_ms(self.active(now).unsigned_abs());
        let mut out = Vec::new();
        let targets = [
            (Target::FirstResponse, policy.first_response),
            (Target::Resolution, policy.resolution),
        ];
        for (target, length) in targets {
            if target == Target::FirstResponse && self.first_response_at.is_some() {
                continue;
            }
            let length_ms = dur_ms(length);
            let due_at = self.due_at(length, now);
            if active < length_ms {
                let threshold = length_ms * i64::from(policy.warning_percent) / 100;
                let due = Due::Warning {
                    target,
                    due_at,
                    permille: u32::try_from(active * 1000 / length_ms.max(1)).unwrap_or(1000),
                };
                if active >= threshold && !self.emitted.contains(&due.key(policy)) {
                    out.push(due);
                }
                continue;
            }
            for (index, level) in policy.escalation.iter().enumerate() {
                let after = i64::try_from(level.after_mins)
                    .unwrap_or(i64::MAX / 60_000)
                    .saturating_mul(60_000);
                if active < length_ms.saturating_add(after) {
                    break;
                }
                let due = Due::Breach {
                    target,
                    due_at,
                    level_at: due_at + time::Duration::milliseconds(after),
                    index,
                };
                if !self.emitted.contains(&due.key(policy)) {
                    out.push(due);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policies, SlaSettings};

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn mins(m: i64) -> time::Duration {
        time::Duration::minutes(m)
    }

    fn urgent() -> Policy {
        // urgent: first response 60 min, resolution 480 min, warning 80 %, level 2 after 120 min.
        Policies::new(SlaSettings::default())
            .unwrap()
            .get("standard", "urgent")
            .clone()
    }

    #[test]
    fn the_first_response_breach_falls_due_exactly_at_the_target() {
        let p = urgent();
        let c = CaseClock::start("C-1", t0());
        assert!(c.due(&p, t0() + mins(47)).is_empty());
        let warn = c.due(&p, t0() + mins(48));
        assert!(matches!(
            warn.as_slice(),
            [Due::Warning {
                target: Target::FirstResponse,
                permille: 800,
                ..
            }]
        ));
        let just_before = t0() + mins(60) - time::Duration::milliseconds(1);
        assert!(
            c.due(&p, just_before)
                .iter()
                .all(|d| matches!(d, Due::Warning { .. }))
        );
        let due = c.due(&p, t0() + mins(60));
        assert_eq!(
            due,
            vec![Due::Breach {
                target: Target::FirstResponse,
                due_at: t0() + mins(60),
                level_at: t0() + mins(60),
                index: 0
            }]
        );
    }

    #[test]
    fn paused_time_does_not_count_and_moves_the_due_time() {
        let p = urgent();
        let mut c = CaseClock::start("C-1", t0());
        c.pause(t0() + mins(10));
        // Paused for ten hours: nothing is due.
        assert!(c.due(&p, t0() + mins(600)).is_empty());
        c.resume(t0() + mins(40));
        assert_eq!(c.active(t0() + mins(40)), mins(10));
        let due = c.due(&p, t0() + mins(90));
        assert!(
            matches!(due.as_slice(), [Due::Breach { due_at, .. }] if *due_at == t0() + mins(90))
        );
    }

    #[test]
    fn a_first_response_ends_that_target_and_a_stop_ends_everything() {
        let p = urgent();
        let mut c = CaseClock::start("C-1", t0());
        assert_eq!(c.respond(t0() + mins(5)), Some(mins(5)));
        assert_eq!(c.respond(t0() + mins(6)), None);
        assert!(c.due(&p, t0() + mins(300)).is_empty());
        let res = c.due(&p, t0() + mins(480));
        assert!(matches!(
            res.as_slice(),
            [Due::Breach {
                target: Target::Resolution,
                ..
            }]
        ));
        assert_eq!(c.stop(t0() + mins(500)), Some(mins(500)));
        assert_eq!(c.stop(t0() + mins(501)), None);
        assert!(c.due(&p, t0() + mins(5000)).is_empty());
    }

    #[test]
    fn the_second_level_follows_after_its_delay_and_emitted_ones_are_not_due_again() {
        let p = urgent();
        let mut c = CaseClock::start("C-1", t0());
        let at = t0() + mins(60 + 120);
        let due = c.due(&p, at);
        let keys: Vec<String> = due.iter().map(|d| d.key(&p)).collect();
        assert_eq!(keys, ["first_response.1", "first_response.2"]);
        c.emitted.insert("first_response.1".into());
        let due = c.due(&p, at);
        assert!(
            matches!(due.as_slice(), [Due::Breach { index: 1, level_at, .. }] if *level_at == at)
        );
    }

    #[test]
    fn a_level_that_fell_due_before_the_replayed_history_ended_is_history_and_a_later_one_not() {
        let p = urgent();
        let mut c = CaseClock::start("C-1", t0());
        c.history_until = Some(t0() + mins(100));
        let due = c.due(&p, t0() + mins(180));
        let history: Vec<(String, bool)> =
            due.iter().map(|d| (d.key(&p), d.is_history(&c))).collect();
        assert_eq!(
            history,
            [
                ("first_response.1".into(), true),
                ("first_response.2".into(), false)
            ]
        );
        // A warning is never history: the target is still ahead.
        let fresh = CaseClock {
            history_until: Some(t0() + mins(100)),
            ..CaseClock::start("C-2", t0() + mins(50))
        };
        let warn = fresh.due(&p, t0() + mins(100));
        assert!(matches!(warn.as_slice(), [Due::Warning { .. }]));
        assert!(!warn[0].is_history(&fresh));
    }
}
