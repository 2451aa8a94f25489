//! `[sla]`: SLA policies per partner tier and priority, validated at start.
//!
//! ```toml
//! [sla]
//! tick_interval_ms = 1000
//! default_tier = "standard"
//! warning_percent = 80
//! partner_notice = "Case {case_id} passed its {target} target; {team} is now on it."
//! tiers = { "ZZ:ACME01" = "gold" }
//! [[sla.escalation]]
//! level = 1
//! after_mins = 0
//! team = "Service supervisors"
//! [sla.policies.standard.urgent]
//! first_response_mins = 60
//! resolution_mins = 480
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tgb_proto as pb;

/// Priority names as the config uses them, in the order of [`pb::CasePriority`].
pub const PRIORITIES: &[&str] = &["urgent", "high", "normal", "low"];

/// `[sla]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaSettings {
    /// How often every clock is evaluated, milliseconds. A breach is raised at most this late.
    pub tick_interval_ms: u64,
    /// The tier of a partner not listed in `tiers`.
    pub default_tier: String,
    /// Partner key (`ZZ:ACME01`) → tier.
    pub tiers: BTreeMap<String, String>,
    /// Share of a target at which `sla.warning` is raised, percent (1..=99).
    pub warning_percent: u32,
    /// Text for the partner on a breach of a level with `notify_partner`; empty = never.
    /// Placeholders: `{case_id}`, `{title}`, `{target}`, `{level}`, `{team}`.
    pub partner_notice: String,
    /// Hours a stopped clock is kept before it is removed from `tgb_sla`.
    pub retain_stopped_hours: u64,
    /// Escalation levels of every policy that does not list its own.
    pub escalation: Vec<EscalationLevel>,
    /// Tier → priority (`urgent`, `high`, `normal`, `low`) → policy.
    pub policies: BTreeMap<String, BTreeMap<String, PolicySettings>>,
}

/// One policy: the targets of one tier and priority.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Time to the first internal reply, minutes (paused time excluded).
    pub first_response_mins: u64,
    /// Time to resolved/closed, minutes (paused time excluded).
    pub resolution_mins: u64,
    /// Overrides `[sla] warning_percent`.
    #[serde(default)]
    pub warning_percent: Option<u32>,
    /// Overrides `[[sla.escalation]]`.
    #[serde(default)]
    pub escalation: Option<Vec<EscalationLevel>>,
}

/// An escalation level: who gets the escalation task, how long after the breach.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationLevel {
    /// 1, 2, 3: strictly increasing from 1.
    pub level: u32,
    /// Minutes after the target was missed (level 1 is usually 0).
    #[serde(default)]
    pub after_mins: u64,
    /// The team escalated to (e.g. supervisors, exception management).
    #[serde(default)]
    pub team: String,
    /// Planner plan of the escalation task.
    #[serde(default)]
    pub plan_id: String,
    /// Planner bucket of the escalation task.
    #[serde(default)]
    pub bucket_id: String,
    /// Planner assignees (user ids) of the escalation task.
    #[serde(default)]
    pub assignees: Vec<String>,
    /// Whether the partner is told (with `[sla] partner_notice`).
    #[serde(default)]
    pub notify_partner: bool,
    /// Next steps written into the breach (and the escalation task).
    #[serde(default)]
    pub next_steps: Vec<String>,
}

fn level(level: u32, after_mins: u64, team: &str, next: &[&str], notify: bool) -> EscalationLevel {
    EscalationLevel {
        level,
        after_mins,
        team: team.to_owned(),
        plan_id: String::new(),
        bucket_id: String::new(),
        assignees: Vec::new(),
        notify_partner: notify,
        next_steps: next.iter().map(|s| (*s).to_owned()).collect(),
    }
}

impl Default for SlaSettings {
    fn default() -> Self {
        let policy = |fr: u64, res: u64| PolicySettings {
            first_response_mins: fr,
            resolution_mins: res,
            warning_percent: None,
            escalation: None,
        };
        let standard = BTreeMap::from([
            ("urgent".to_owned(), policy(60, 480)),
            ("high".to_owned(), policy(120, 1440)),
            ("normal".to_owned(), policy(480, 2880)),
            ("low".to_owned(), policy(1440, 7200)),
        ]);
        SlaSettings {
            tick_interval_ms: 1000,
            default_tier: "standard".into(),
            tiers: BTreeMap::new(),
            warning_percent: 80,
            partner_notice: String::new(),
            retain_stopped_hours: 24,
            escalation: vec![
                level(
                    1,
                    0,
                    "Service supervisors",
                    &["Review the case and contact the partner"],
                    true,
                ),
                level(
                    2,
                    120,
                    "Exception management",
                    &["Take ownership and agree a recovery plan with the partner"],
                    false,
                ),
            ],
            policies: BTreeMap::from([("standard".to_owned(), standard)]),
        }
    }
}

/// An invalid `[sla]` section, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("sla.{key}: {message}")]
pub struct PolicyError {
    /// The dotted key under `sla`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// First-response target.
    pub first_response: Duration,
    /// Resolution target.
    pub resolution: Duration,
    /// Warning threshold, percent.
    pub warning_percent: u32,
    /// Escalation levels, ascending.
    pub escalation: Vec<EscalationLevel>,
}

/// Every policy, validated: looked up by tier and priority.
#[derive(Clone, Debug)]
pub struct Policies {
    settings: SlaSettings,
    policies: BTreeMap<(String, String), Policy>,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        key: key.into(),
        message: message.into(),
    }
}

fn validate_levels(key: &str, levels: &[EscalationLevel]) -> Result<(), PolicyError> {
    if levels.is_empty() {
        return Err(err(key, "at least one escalation level is needed"));
    }
    let mut previous: Option<&EscalationLevel> = None;
    for (i, l) in levels.iter().enumerate() {
        let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if l.level != expected {
            return Err(err(
                format!("{key}[{i}].level"),
                format!(
                    "levels must be 1, 2, 3, … in order; expected {expected}, got {}",
                    l.level
                ),
            ));
        }
        if let Some(p) = previous
            && l.after_mins <= p.after_mins
        {
            return Err(err(
                format!("{key}[{i}].after_mins"),
                format!(
                    "must be later than level {} ({} min), got {}",
                    p.level, p.after_mins, l.after_mins
                ),
            ));
        }
        previous = Some(l);
    }
    Ok(())
}

impl Policies {
    /// Validates `settings`: every tier has a policy for every priority, targets are positive and
    /// first response comes before resolution, warning thresholds are within 1..=99, escalation
    /// levels count 1, 2, 3 with growing delays, and every tier a partner is mapped to exists.
    pub fn new(settings: SlaSettings) -> Result<Policies, PolicyError> {
        if settings.tick_interval_ms == 0 {
            return Err(err("tick_interval_ms", "must be at least 1"));
        }
        if !(1..=99).contains(&settings.warning_percent) {
            return Err(err(
                "warning_percent",
                format!("must be within 1..=99, got {}", settings.warning_percent),
            ));
        }
        validate_levels("escalation", &settings.escalation)?;
        if !settings.policies.contains_key(&settings.default_tier) {
            return Err(err(
                "default_tier",
                format!(
                    "tier {:?} has no policies (sla.policies.{0})",
                    settings.default_tier
                ),
            ));
        }
        for (partner, tier) in &settings.tiers {
            if !settings.policies.contains_key(tier) {
                return Err(err(
                    format!("tiers.{partner:?}"),
                    format!("tier {tier:?} has no policies (sla.policies.{tier})"),
                ));
            }
        }
        let mut policies = BTreeMap::new();
        for (tier, by_priority) in &settings.policies {
            for name in by_priority.keys() {
                if !PRIORITIES.contains(&name.as_str()) {
                    return Err(err(
                        format!("policies.{tier}.{name}"),
                        format!("unknown priority; expected one of {PRIORITIES:?}"),
                    ));
                }
            }
            for priority in PRIORITIES {
                let key = format!("policies.{tier}.{priority}");
                let p = by_priority
                    .get(*priority)
                    .ok_or_else(|| err(&key, "missing: every tier needs all four priorities"))?;
                if p.first_response_mins == 0 {
                    return Err(err(
                        format!("{key}.first_response_mins"),
                        "must be at least 1",
                    ));
                }
                if p.resolution_mins < p.first_response_mins {
                    return Err(err(
                        format!("{key}.resolution_mins"),
                        format!(
                            "must not be shorter than first_response_mins ({})",
                            p.first_response_mins
                        ),
                    ));
                }
                let warning_percent = p.warning_percent.unwrap_or(settings.warning_percent);
                if !(1..=99).contains(&warning_percent) {
                    return Err(err(
                        format!("{key}.warning_percent"),
                        format!("must be within 1..=99, got {warning_percent}"),
                    ));
                }
                let escalation = match &p.escalation {
                    Some(levels) => {
                        validate_levels(&format!("{key}.escalation"), levels)?;
                        levels.clone()
                    }
                    None => settings.escalation.clone(),
                };
                policies.insert(
                    (tier.clone(), (*priority).to_owned()),
                    Policy {
                        first_response: Duration::from_secs(p.first_response_mins * 60),
                        resolution: Duration::from_secs(p.resolution_mins * 60),
                        warning_percent,
                        escalation,
                    },
                );
            }
        }
        Ok(Policies { settings, policies })
    }

    /// The settings they were built from.
    pub fn settings(&self) -> &SlaSettings {
        &self.settings
    }

    /// The tier of a partner (`QUALIFIER:ID`).
    pub fn tier_of(&self, partner_key: &str) -> String {
        self.settings
            .tiers
            .get(partner_key)
            .cloned()
            .unwrap_or_else(|| self.settings.default_tier.clone())
    }

    /// The policy of `tier` and `priority`; an unknown tier falls back to the default tier.
    pub fn get(&self, tier: &str, priority: &str) -> &Policy {
        let priority = if PRIORITIES.contains(&priority) {
            priority
        } else {
            "normal"
        };
        self.policies
            .get(&(tier.to_owned(), priority.to_owned()))
            .or_else(|| {
                self.policies
                    .get(&(self.settings.default_tier.clone(), priority.to_owned()))
            })
            .expect("validated: the default tier has every priority")
    }

    /// The partner notice of a breach, or empty when the level does not notify.
    pub fn partner_notice(
        &self,
        level: &EscalationLevel,
        case_id: &str,
        title: &str,
        target: &str,
    ) -> String {
        if !level.notify_partner || self.settings.partner_notice.trim().is_empty() {
            return String::new();
        }
        self.settings
            .partner_notice
            .replace("{case_id}", case_id)
            .replace("{title}", title)
            .replace("{target}", target)
            .replace("{level}", &level.level.to_string())
            .replace("{team}", &level.team)
    }
}

/// The config name of a priority.
pub fn priority_name(p: pb::CasePriority) -> &'static str {
    match p {
        pb::CasePriority::Urgent => "urgent",
        pb::CasePriority::High => "high",
        pb::CasePriority::Low => "low",
        pb::CasePriority::Normal | pb::CasePriority::Unspecified => "normal",
    }
}

/// The priority of a config name.
pub fn priority_of(name: &str) -> pb::CasePriority {
    match name {
        "urgent" => pb::CasePriority::Urgent,
        "high" => pb::CasePriority::High,
        "low" => pb::CasePriority::Low,
        _ => pb::CasePriority::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_are_valid() {
        let p = Policies::new(SlaSettings::default()).unwrap();
        let urgent = p.get("standard", "urgent");
        assert_eq!(urgent.first_response, Duration::from_secs(3600));
        assert_eq!(urgent.escalation.len(), 2);
        assert_eq!(p.tier_of("ZZ:NOBODY"), "standard");
        // Unknown tier and priority fall back to the default tier's normal policy.
        assert_eq!(p.get("platinum", "weird"), p.get("standard", "normal"));
    }

    #[test]
    fn a_missing_priority_names_its_key() {
        let mut s = SlaSettings::default();
        s.policies.get_mut("standard").unwrap().remove("low");
        let e = Policies::new(s).unwrap_err();
        assert_eq!(e.key, "policies.standard.low");
    }

    #[test]
    fn escalation_levels_must_count_up_with_growing_delays() {
        let mut s = SlaSettings::default();
        s.escalation[1].after_mins = 0;
        let e = Policies::new(s).unwrap_err();
        assert_eq!(e.key, "escalation[1].after_mins");
        let mut s = SlaSettings::default();
        s.escalation[1].level = 3;
        assert_eq!(Policies::new(s).unwrap_err().key, "escalation[1].level");
    }

    #[test]
    fn resolution_shorter_than_first_response_is_refused() {
        let mut s = SlaSettings::default();
        let p = s
            .policies
            .get_mut("standard")
            .unwrap()
            .get_mut("high")
            .unwrap();
        p.resolution_mins = 10;
        let e = Policies::new(s).unwrap_err();
        assert_eq!(e.key, "policies.standard.high.resolution_mins");
        assert!(e.to_string().starts_with("sla.policies.standard.high"));
    }

    #[test]
    fn a_partner_mapped_to_an_unknown_tier_is_refused() {
        let mut s = SlaSettings::default();
        s.tiers.insert("ZZ:ACME01".into(), "gold".into());
        assert!(Policies::new(s).unwrap_err().message.contains("gold"));
    }

    #[test]
    fn the_partner_notice_fills_its_placeholders_only_when_the_level_notifies() {
        let s = SlaSettings {
            partner_notice: "{case_id} missed {target}; {team} (level {level})".into(),
            ..SlaSettings::default()
        };
        let p = Policies::new(s).unwrap();
        let l1 = &p.get("standard", "high").escalation[0];
        assert_eq!(
            p.partner_notice(l1, "C-1", "t", "first response"),
            "C-1 missed first response; Service supervisors (level 1)"
        );
        let l2 = &p.get("standard", "high").escalation[1];
        assert_eq!(p.partner_notice(l2, "C-1", "t", "first response"), "");
    }
}
