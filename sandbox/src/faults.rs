//! Faults per route pattern: added latency, a 5xx rate, 429 bursts, dropped connections.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

/// Which requests a rule applies to, and what it does to them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FaultRule {
    /// Assigned by the sandbox when the rule is added.
    #[serde(default)]
    pub id: Option<u64>,
    /// `tg`, `dataverse`, `graph` or `entra`; none = every system.
    #[serde(default)]
    pub system: Option<String>,
    /// HTTP method (case-insensitive); none = every method.
    #[serde(default)]
    pub method: Option<String>,
    /// Path prefix, relative to the system (`/v1/cases`, `/api/data/v9.2/incidents`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Regular expression on the system-relative path.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// The rule removes itself after this many milliseconds.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// What happens.
    #[serde(flatten)]
    pub fault: Fault,
}

/// What a rule does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Waits before handling.
    Latency {
        /// Milliseconds added.
        ms: u64,
    },
    /// Answers `status` to this fraction of requests (seeded random draw).
    ErrorRate {
        /// 0.0 to 1.0.
        rate: f64,
        /// A 5xx status (default 503).
        #[serde(default = "default_5xx")]
        status: u16,
    },
    /// Answers 429 with `Retry-After` to the next `count` requests.
    Burst429 {
        /// Requests still to refuse.
        count: u32,
        /// The `Retry-After` value, in seconds.
        #[serde(default = "default_retry_after")]
        retry_after_secs: u64,
    },
    /// Closes the connection without answering (the next `count` requests, or all).
    Drop {
        /// Requests still to drop; none = every matching request.
        #[serde(default)]
        count: Option<u32>,
    },
}

fn default_5xx() -> u16 {
    503
}
fn default_retry_after() -> u64 {
    1
}

impl FaultRule {
    /// A rule on every request of a system.
    pub fn new(system: &str, fault: Fault) -> Self {
        Self {
            id: None,
            system: Some(system.into()),
            method: None,
            path_prefix: None,
            path_regex: None,
            duration_ms: None,
            fault,
        }
    }

    /// Only this method.
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Only paths with this prefix.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Only paths matching this regular expression.
    pub fn path_regex(mut self, regex: &str) -> Self {
        self.path_regex = Some(regex.into());
        self
    }

    /// The rule ends after this long.
    pub fn for_duration(mut self, d: Duration) -> Self {
        self.duration_ms = Some(d.as_millis() as u64);
        self
    }
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// Bad regular expression.
    #[error("path_regex: {0}")]
    Regex(#[from] regex::Error),
    /// Bad numbers.
    #[error("{0}")]
    Invalid(String),
}

struct ActiveRule {
    rule: FaultRule,
    regex: Option<regex::Regex>,
    expires_at: Option<Instant>,
    rng: StdRng,
}

/// What to do with one request.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub latency: Duration,
    pub action: Option<Action>,
    pub rule_ids: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Error {
        status: u16,
        retry_after: Option<u64>,
    },
    Drop,
}

/// The active fault rules (shared, cheap to clone).
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Mutex<FaultsState>>,
}

struct FaultsState {
    rules: Vec<ActiveRule>,
    next_id: u64,
    seed: u64,
}

impl Faults {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(FaultsState {
                rules: Vec::new(),
                next_id: 1,
                seed,
            })),
        }
    }

    /// Adds a rule; returns its id.
    pub fn add(&self, mut rule: FaultRule) -> Result<u64, FaultError> {
        let regex = rule
            .path_regex
            .as_deref()
            .map(regex::Regex::new)
            .transpose()?;
        match &rule.fault {
            Fault::ErrorRate { rate, status } => {
                if !(0.0..=1.0).contains(rate) {
                    return Err(FaultError::Invalid(
                        "rate must be within 0.0 and 1.0".into(),
                    ));
                }
                if !(500..=599).contains(status) {
                    return Err(FaultError::Invalid("status must be a 5xx".into()));
                }
            }
            Fault::Burst429 { count: 0, .. } | Fault::Drop { count: Some(0) } => {
                return Err(FaultError::Invalid("count must be at least 1".into()));
            }
            _ => {}
        }
        let mut state = self.inner.lock().unwrap();
        let id = state.next_id;
        state.next_id += 1;
        rule.id = Some(id);
        let rng = StdRng::seed_from_u64(state.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        state.rules.push(ActiveRule {
            expires_at: rule
                .duration_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            rule,
            regex,
            rng,
        });
        Ok(id)
    }

    /// Replaces every rule.
    pub fn replace_all(&self, rules: Vec<FaultRule>) -> Result<Vec<u64>, FaultError> {
        self.clear();
        rules.into_iter().map(|r| self.add(r)).collect()
    }

    /// Removes a rule.
    pub fn remove(&self, id: u64) -> bool {
        let mut state = self.inner.lock().unwrap();
        let before = state.rules.len();
        state.rules.retain(|r| r.rule.id != Some(id));
        before != state.rules.len()
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.inner.lock().unwrap().rules.clear();
    }

    /// The active rules (counts as they stand now).
    pub fn list(&self) -> Vec<FaultRule> {
        let mut state = self.inner.lock().unwrap();
        let now = Instant::now();
        state.rules.retain(|r| r.expires_at.is_none_or(|t| t > now));
        state.rules.iter().map(|r| r.rule.clone()).collect()
    }

    pub(crate) fn decide(&self, system: &str, method: &str, path: &str) -> Decision {
        let mut state = self.inner.lock().unwrap();
        let now = Instant::now();
        state.rules.retain(|r| r.expires_at.is_none_or(|t| t > now));
        let mut decision = Decision::default();
        let mut exhausted = Vec::new();
        for active in &mut state.rules {
            let rule = &active.rule;
            let matches = rule.system.as_deref().is_none_or(|s| s == system)
                && rule
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && rule
                    .path_prefix
                    .as_deref()
                    .is_none_or(|p| path.starts_with(p))
                && active.regex.as_ref().is_none_or(|r| r.is_match(path));
            if !matches {
                continue;
            }
            let id = rule.id.unwrap_or_default();
            match &mut active.rule.fault {
                Fault::Latency { ms } => {
                    decision.latency += Duration::from_millis(*ms);
                    decision.rule_ids.push(id);
                }
                _ if decision.action.is_some() => {}
                Fault::ErrorRate { rate, status } => {
                    if active.rng.random::<f64>() < *rate {
                        decision.action = Some(Action::Error {
                            status: *status,
                            retry_after: (*status == 503).then_some(1),
                        });
                        decision.rule_ids.push(id);
                    }
                }
                Fault::Burst429 {
                    count,
                    retry_after_secs,
                } => {
                    decision.action = Some(Action::Error {
                        status: 429,
                        retry_after: Some(*retry_after_secs),
                    });
                    decision.rule_ids.push(id);
                    *count -= 1;
                    if *count == 0 {
                        exhausted.push(id);
                    }
                }
                Fault::Drop { count } => {
                    decision.action = Some(Action::Drop);
                    decision.rule_ids.push(id);
                    if let Some(c) = count {
                        *c -= 1;
                        if *c == 0 {
                            exhausted.push(id);
                        }
                    }
                }
            }
        }
        state
            .rules
            .retain(|r| !exhausted.contains(&r.rule.id.unwrap_or_default()));
        decision
    }
}
