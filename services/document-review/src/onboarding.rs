//! P6: one onboarding status per partner from the partner's requirements in TG and the internal
//! steps in Planner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tgb_proto as pb;

use crate::settings::OnboardingSettings;

/// A partner-side requirement as last reported by TG.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Key.
    pub key: String,
    /// Label.
    pub label: String,
    /// [`pb::RequirementState`] as its number.
    pub state: i32,
}

/// An internal step's state: `pending`, `in_progress`, `blocked`, `done`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// State.
    pub state: String,
    /// The Planner task, once known.
    pub task_id: String,
}

/// Everything known of one partner's onboarding (stored per partner).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Onboarding {
    /// Partner qualifier.
    pub qualifier: String,
    /// Partner id.
    pub id: String,
    /// Partner name.
    pub name: String,
    /// The last TG partner revision applied (older updates are dropped).
    pub partner_revision: i64,
    /// Requirements, as TG last reported them.
    pub requirements: Vec<Requirement>,
    /// Profile complete in TG.
    pub profile_complete: bool,
    /// Agreements acknowledged in TG.
    pub agreements_acknowledged: bool,
    /// Step key → state.
    pub steps: BTreeMap<String, StepState>,
    /// `onboarding.steps.requested` was published.
    pub steps_requested: bool,
    /// Fingerprint of the last status published.
    pub last_status: String,
}

/// The step state of a Planner progress.
pub fn step_state(p: pb::TaskProgress) -> &'static str {
    match p {
        pb::TaskProgress::InProgress => "in_progress",
        pb::TaskProgress::Blocked => "blocked",
        pb::TaskProgress::Completed => "done",
        pb::TaskProgress::NotStarted | pb::TaskProgress::Unspecified => "pending",
    }
}

impl Onboarding {
    /// A partner's onboarding with every configured step pending.
    pub fn new(partner: &pb::PartnerRef, settings: &OnboardingSettings) -> Self {
        Onboarding {
            qualifier: partner.qualifier.clone(),
            id: partner.id.clone(),
            name: partner.name.clone(),
            steps: settings
                .steps
                .iter()
                .map(|s| {
                    (
                        s.key.clone(),
                        StepState {
                            state: "pending".into(),
                            task_id: String::new(),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The partner reference.
    pub fn partner(&self) -> pb::PartnerRef {
        pb::PartnerRef {
            qualifier: self.qualifier.clone(),
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }

    /// Applies TG's view; `false` when it is older than what was applied.
    pub fn apply_tg(&mut self, e: &pb::TgOnboardingUpdated) -> bool {
        if e.partner_revision != 0 && e.partner_revision <= self.partner_revision {
            return false;
        }
        self.partner_revision = e.partner_revision.max(self.partner_revision);
        self.requirements = e
            .requirements
            .iter()
            .map(|r| Requirement {
                key: r.key.clone(),
                label: r.label.clone(),
                state: r.state,
            })
            .collect();
        self.profile_complete = e.profile_complete;
        self.agreements_acknowledged = e.agreements_acknowledged;
        true
    }

    /// The internal steps in checklist order.
    pub fn internal_steps(&self, settings: &OnboardingSettings) -> Vec<pb::InternalStep> {
        settings
            .steps
            .iter()
            .map(|s| {
                let st = self.steps.get(&s.key);
                pb::InternalStep {
                    key: s.key.clone(),
                    label: s.label.clone(),
                    state: st.map_or_else(|| "pending".into(), |x| x.state.clone()),
                    task_id: st.map(|x| x.task_id.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The overall state: blocked when a requirement is rejected or a step blocked; complete
    /// when every requirement is accepted, the profile complete, the agreements acknowledged and
    /// every step done; not started when nothing has moved on either side; else in progress.
    pub fn overall(&self, settings: &OnboardingSettings) -> pb::OnboardingOverall {
        let steps = self.internal_steps(settings);
        let req = |r: &Requirement| {
            pb::RequirementState::try_from(r.state).unwrap_or(pb::RequirementState::Unspecified)
        };
        if self
            .requirements
            .iter()
            .any(|r| req(r) == pb::RequirementState::Rejected)
            || steps.iter().any(|s| s.state == "blocked")
        {
            return pb::OnboardingOverall::Blocked;
        }
        if self
            .requirements
            .iter()
            .all(|r| req(r) == pb::RequirementState::Accepted)
            && self.profile_complete
            && self.agreements_acknowledged
            && steps.iter().all(|s| s.state == "done")
        {
            return pb::OnboardingOverall::Complete;
        }
        let untouched = self.requirements.iter().all(|r| {
            matches!(
                req(r),
                pb::RequirementState::Pending | pb::RequirementState::Unspecified
            )
        }) && !self.profile_complete
            && !self.agreements_acknowledged
            && steps.iter().all(|s| s.state == "pending");
        if untouched {
            pb::OnboardingOverall::NotStarted
        } else {
            pb::OnboardingOverall::InProgress
        }
    }

    /// The status event's content, and its fingerprint.
    pub fn status(&self, settings: &OnboardingSettings) -> (pb::OnboardingStatus, String) {
        let status = pb::OnboardingStatus {
            meta: None,
            requirements: self
                .requirements
                .iter()
                .map(|r| pb::OnboardingRequirement {
                    key: r.key.clone(),
                    label: r.label.clone(),
                    state: r.state,
                })
                .collect(),
            internal_steps: self.internal_steps(settings),
            overall: self.overall(settings) as i32,
        };
        let fp = crate::intake::sha256_hex(&prost::Message::encode_to_vec(&status));
        (status, fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner() -> pb::PartnerRef {
        pb::PartnerRef {
            qualifier: "ZZ".into(),
            id: "NEW01".into(),
            name: "New".into(),
        }
    }

    fn tg(rev: i64, states: &[pb::RequirementState], done: bool) -> pb::TgOnboardingUpdated {
        pb::TgOnboardingUpdated {
            partner_revision: rev,
            requirements: states
                .iter()
                .enumerate()
                .map(|(i, s)| pb::OnboardingRequirement {
                    key: format!("r{i}"),
                    label: format!("R{i}"),
                    state: *s as i32,
                })
                .collect(),
            profile_complete: done,
            agreements_acknowledged: done,
            ..Default::default()
        }
    }

    #[test]
    fn the_overall_state_follows_both_sides() {
        use pb::RequirementState::*;
        let s = OnboardingSettings::default();
        let mut o = Onboarding::new(&partner(), &s);
        assert!(o.apply_tg(&tg(2, &[Pending, Pending], false)));
        assert_eq!(o.overall(&s), pb::OnboardingOverall::NotStarted);
        o.steps.get_mut("edi_mapping").unwrap().state = "in_progress".into();
        assert_eq!(o.overall(&s), pb::OnboardingOverall::InProgress);
        assert!(o.apply_tg(&tg(3, &[Accepted, Rejected], true)));
        assert_eq!(o.overall(&s), pb::OnboardingOverall::Blocked);
        assert!(o.apply_tg(&tg(4, &[Accepted, Accepted], true)));
        assert_eq!(o.overall(&s), pb::OnboardingOverall::InProgress);
        for st in o.steps.values_mut() {
            st.state = "done".into();
        }
        assert_eq!(o.overall(&s), pb::OnboardingOverall::Complete);
        // A stale TG update changes nothing.
        assert!(!o.apply_tg(&tg(3, &[Rejected], false)));
        assert_eq!(o.overall(&s), pb::OnboardingOverall::Complete);
    }

    #[test]
    fn the_fingerprint_changes_only_with_the_status() {
        let s = OnboardingSettings::default();
        let mut o = Onboarding::new(&partner(), &s);
        let (_, a) = o.status(&s);
        o.partner_revision = 9;
        assert_eq!(o.status(&s).1, a);
        o.steps.get_mut("testing").unwrap().state = "blocked".into();
        assert_ne!(o.status(&s).1, a);
    }
}
