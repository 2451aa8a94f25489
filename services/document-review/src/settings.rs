//! `[documents]` (intake limits, review policy by document type, outcome labels) and
//! `[onboarding]` (the internal checklist), validated at start.

use std::collections::BTreeMap;

use serde::Deserialize;
use tgb_proto as pb;

/// The default size limit of one document: 25 MiB.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 25 * 1024 * 1024;

/// Document type names as the config uses them.
pub const DOC_TYPES: &[&str] = &[
    "tax_form",
    "compliance_certificate",
    "banking_details",
    "trading_agreement",
    "shipping_instructions",
    "contract",
    "other",
];

/// The config name of a document type.
pub fn doc_type_name(t: pb::DocType) -> &'static str {
    match t {
        pb::DocType::TaxForm => "tax_form",
        pb::DocType::ComplianceCertificate => "compliance_certificate",
        pb::DocType::BankingDetails => "banking_details",
        pb::DocType::TradingAgreement => "trading_agreement",
        pb::DocType::ShippingInstructions => "shipping_instructions",
        pb::DocType::Contract => "contract",
        pb::DocType::Other | pb::DocType::Unspecified => "other",
    }
}

/// `[documents]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentSettings {
    /// Largest document accepted, bytes (announced and fetched size).
    pub max_size_bytes: u64,
    /// Documents whose `expires_on` is past are rejected without a review.
    pub reject_expired: bool,
    /// Timeout of one TG API call, milliseconds.
    pub request_timeout_ms: u64,
    /// Documents downloaded at the same time (each is held in memory up to `max_size_bytes`
    /// while it is checked and stored), whatever the consumer's concurrency; at least 1.
    pub max_concurrent_downloads: usize,
    /// Planner label (as reviewers apply it) → outcome: `approved`, `rejected`, `needs_changes`.
    pub labels: BTreeMap<String, String>,
    /// Document type → its review; types not listed are stored without a review.
    pub review: BTreeMap<String, ReviewPolicy>,
}

/// Who reviews a document type, and by when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewPolicy {
    /// The reviewing team.
    pub team: String,
    /// Planner plan of the review task.
    pub plan_id: String,
    /// Planner bucket.
    pub bucket_id: String,
    /// Planner assignees (user ids).
    pub assignees: Vec<String>,
    /// Days from the upload to the task's due date.
    pub due_days: u32,
}

impl Default for DocumentSettings {
    fn default() -> Self {
        let review = |team: &str, days: u32| ReviewPolicy {
            team: team.to_owned(),
            due_days: days,
            ..Default::default()
        };
        DocumentSettings {
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            reject_expired: true,
            request_timeout_ms: 30_000,
            max_concurrent_downloads: 2,
            labels: BTreeMap::from([
                ("Approved".to_owned(), "approved".to_owned()),
                ("Rejected".to_owned(), "rejected".to_owned()),
                ("Needs changes".to_owned(), "needs_changes".to_owned()),
            ]),
            review: BTreeMap::from([
                ("compliance_certificate".to_owned(), review("Compliance", 5)),
                ("tax_form".to_owned(), review("Finance", 5)),
                ("banking_details".to_owned(), review("Finance", 3)),
                ("trading_agreement".to_owned(), review("Legal", 10)),
            ]),
        }
    }
}

/// `[onboarding]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnboardingSettings {
    /// Planner plan of the internal step tasks.
    pub plan_id: String,
    /// Planner bucket.
    pub bucket_id: String,
    /// The internal checklist, in order.
    pub steps: Vec<Step>,
}

/// One internal onboarding step.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Stable key (the task's subject).
    pub key: String,
    /// Label (the task's title).
    pub label: String,
}

impl Default for OnboardingSettings {
    fn default() -> Self {
        let step = |key: &str, label: &str| Step {
            key: key.to_owned(),
            label: label.to_owned(),
        };
        OnboardingSettings {
            plan_id: String::new(),
            bucket_id: String::new(),
            steps: vec![
                step("account_setup", "Account setup"),
                step("edi_mapping", "EDI mapping"),
                step("compliance_checks", "Compliance checks"),
                step("testing", "Testing"),
            ],
        }
    }
}

/// An invalid `[documents]` or `[onboarding]` section, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    /// The dotted key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError {
        key: key.into(),
        message: message.into(),
    }
}

/// The outcome a config value names.
pub fn outcome_of(name: &str) -> Option<pb::ReviewOutcome> {
    match name {
        "approved" => Some(pb::ReviewOutcome::Approved),
        "rejected" => Some(pb::ReviewOutcome::Rejected),
        "needs_changes" => Some(pb::ReviewOutcome::NeedsChanges),
        _ => None,
    }
}

impl DocumentSettings {
    /// Checks the limits, the labels and the review policies.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.max_size_bytes == 0 {
            return Err(err("documents.max_size_bytes", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(err("documents.request_timeout_ms", "must be at least 1"));
        }
        if self.labels.is_empty() {
            return Err(err(
                "documents.labels",
                "at least one Planner label must name an outcome",
            ));
        }
        for (label, outcome) in &self.labels {
            if outcome_of(outcome).is_none() {
                return Err(err(
                    format!("documents.labels.{label:?}"),
                    format!("{outcome:?} is not an outcome: approved, rejected or needs_changes"),
                ));
            }
        }
        for (doc_type, policy) in &self.review {
            let key = format!("documents.review.{doc_type}");
            if !DOC_TYPES.contains(&doc_type.as_str()) {
                return Err(err(
                    key,
                    format!("unknown document type; expected one of {DOC_TYPES:?}"),
                ));
            }
            if policy.team.trim().is_empty() && policy.plan_id.trim().is_empty() {
                return Err(err(key, "name a team or a plan_id that reviews it"));
            }
            if policy.due_days == 0 {
                return Err(err(format!("{key}.due_days"), "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The outcome of a set of applied labels (case-insensitive), if one is configured.
    pub fn outcome_of_labels(&self, labels: &[String]) -> Option<(String, pb::ReviewOutcome)> {
        labels.iter().find_map(|applied| {
            self.labels
                .iter()
                .find(|(l, _)| l.eq_ignore_ascii_case(applied.trim()))
                .and_then(|(l, o)| outcome_of(o).map(|o| (l.clone(), o)))
        })
    }
}

impl OnboardingSettings {
    /// Checks the checklist: at least one step, keys unique and non-empty.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.steps.is_empty() {
            return Err(err(
                "onboarding.steps",
                "at least one internal step is needed",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.key.trim().is_empty() {
                return Err(err(
                    format!("onboarding.steps[{i}].key"),
                    "must not be empty",
                ));
            }
            if !seen.insert(&s.key) {
                return Err(err(
                    format!("onboarding.steps[{i}].key"),
                    format!("{:?} appears twice", s.key),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        DocumentSettings::default().validate().unwrap();
        OnboardingSettings::default().validate().unwrap();
        assert_eq!(DocumentSettings::default().max_size_bytes, 26_214_400);
    }

    #[test]
    fn labels_map_to_outcomes_case_insensitively() {
        let s = DocumentSettings::default();
        let got = s.outcome_of_labels(&["urgent".into(), "needs CHANGES".into()]);
        assert_eq!(got.unwrap().1, pb::ReviewOutcome::NeedsChanges);
        assert!(s.outcome_of_labels(&["urgent".into()]).is_none());
    }

    #[test]
    fn bad_settings_name_their_key() {
        let mut s = DocumentSettings::default();
        s.labels.insert("Maybe".into(), "perhaps".into());
        assert_eq!(s.validate().unwrap_err().key, "documents.labels.\"Maybe\"");
        let mut s = DocumentSettings::default();
        s.review.insert("passport".into(), ReviewPolicy::default());
        assert_eq!(s.validate().unwrap_err().key, "documents.review.passport");
        let mut s = DocumentSettings::default();
        s.review.get_mut("tax_form").unwrap().due_days = 0;
        assert_eq!(
            s.validate().unwrap_err().key,
            "documents.review.tax_form.due_days"
        );
        let mut o = OnboardingSettings::default();
        o.steps.push(o.steps[0].clone());
        assert_eq!(o.validate().unwrap_err().key, "onboarding.steps[4].key");
    }
}
