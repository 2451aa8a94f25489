//! The account aggregate (D3, D8): the TG partner profile merged field by field into the
//! account under the per-field conflict policy; onboarding reviews and status → the account's
//! verification flags and `tgb_onboardingstatus`; an account's flags and master data changed in
//! Dynamics → `dyn.account.*`. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use tgb_clients::dataverse::BatchRequest;
use tgb_proto as pb;

use crate::change::{Change, meta, text};
use crate::notes;
use crate::odata::{must_exist, upsert_row};
use crate::schema::OnboardingStatus;
use crate::settings::{DynamicsSettings, FieldPolicy};
use crate::state::{EntityState, hash};

/// The D8 fields of a TG profile.
pub fn tg_account_view(p: &pb::PartnerProfile) -> BTreeMap<&'static str, Value> {
    let addr = p.addresses.first().cloned().unwrap_or_default();
    BTreeMap::from([
        ("legal_name", json!(p.legal_name)),
        (
            "address",
            json!([addr.line1, addr.city, addr.postal_code, addr.country]),
        ),
    ])
}

/// The D8 fields of an account row.
pub fn dv_account_view(row: &Value) -> BTreeMap<&'static str, Value> {
    let s = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
    BTreeMap::from([
        ("legal_name", json!(s("name"))),
        (
            "address",
            json!([
                s("address1_line1"),
                s("address1_city"),
                s("address1_postalcode"),
                s("address1_country")
            ]),
        ),
    ])
}

fn account_columns(field: &str, v: &Value) -> Value {
    match field {
        "legal_name" => json!({"name": v}),
        "address" => {
            json!({"address1_line1": v[0], "address1_city": v[1], "address1_postalcode": v[2], "address1_country": v[3]})
        }
        _ => json!({}),
    }
}

/// A field both sides changed since the last sync.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The D8 field.
    pub field: &'static str,
    /// Its policy.
    pub policy: FieldPolicy,
    /// Whether TG's value is written.
    pub tg_wins: bool,
}

/// The merge of a TG profile into the account.
#[derive(Debug, Default)]
pub struct ProfilePlan {
    /// Account columns to write (TG's values that win).
    pub write: Map<String, Value>,
    /// Field → hash of the value both sides agree on after the write.
    pub agreed: BTreeMap<String, String>,
    /// Fields both sides changed, with the policy's decision.
    pub conflicts: Vec<Conflict>,
}

/// D8: per field, the side that changed since the last agreed value wins; when both changed,
/// the field's policy decides. `current` is the account row (columns
/// [`odata::ACCOUNT_COLUMNS`]).
pub fn plan_profile(
    state: &EntityState,
    profile: &pb::PartnerProfile,
    current: &Value,
    settings: &DynamicsSettings,
) -> ProfilePlan {
    let dv_view = dv_account_view(current);
    let mut plan = ProfilePlan::default();
    for (field, tg_value) in tg_account_view(profile) {
        let dv_value = dv_view.get(field).cloned().unwrap_or(Value::Null);
        let (tg_h, dv_h) = (hash(&tg_value), hash(&dv_value));
        let base = state.fields.get(field);
        let winner_tg = if tg_h == dv_h {
            None
        } else {
            match (base != Some(&tg_h), base != Some(&dv_h)) {
                (true, false) => Some(true),
                (false, _) => Some(false),
                (true, true) => {
                    let policy = settings.policy(field);
                    let tg_wins = policy == FieldPolicy::TgWins;
                    plan.conflicts.push(Conflict {
                        field,
                        policy,
                        tg_wins,
                    });
                    Some(tg_wins)
                }
            }
        };
        let agreed = match winner_tg {
            Some(true) => {
                if let Value::Object(cols) = account_columns(field, &tg_value) {
                    plan.write.extend(cols);
                }
                tg_h
            }
            Some(false) => dv_h,
            None => tg_h,
        };
        plan.agreed.insert(field.to_owned(), agreed);
    }
    plan
}

impl ProfilePlan {
    /// The account write, if any column wins.
    pub fn writes(&self, account: &str) -> Vec<BatchRequest> {
        if self.write.is_empty() {
            return Vec::new();
        }
        vec![must_exist(upsert_row(
            "account",
            account,
            Value::Object(self.write.clone()),
        ))]
    }
}

/// D3: the verification flag of an approved or rejected onboarding document: (column,
/// verified); `None` for other documents and outcomes.
pub fn review_flag(
    doc: &pb::TgDocument,
    outcome: pb::ReviewOutcome,
) -> Option<(&'static str, bool)> {
    let flag = match doc.doc_type() {
        pb::DocType::TaxForm => "tgb_taxformverified",
        pb::DocType::BankingDetails => "tgb_bankingverified",
        pb::DocType::ComplianceCertificate => "tgb_compliancecertverified",
        pb::DocType::TradingAgreement => "tgb_agreementverified",
        _ => return None,
    };
    let verified = match outcome {
        pb::ReviewOutcome::Approved => true,
        pb::ReviewOutcome::Rejected => false,
        _ => return None,
    };
    Some((flag, verified))
}

/// D3: a review outcome → the account's flag (banking details only as a document reference)
/// and a note with the document reference.
pub fn plan_review(
    e: &pb::ReviewCompleted,
    doc: &pb::TgDocument,
    (flag, verified): (&'static str, bool),
    account: &str,
) -> Vec<BatchRequest> {
    let mut fields = json!({ flag: verified });
    if doc.doc_type() == pb::DocType::BankingDetails {
        fields["tgb_bankingdocumentref"] = if verified {
            json!(format!("tg:document:{}", doc.document_id))
        } else {
            Value::Null
        };
    }
    let reviewer = e
        .reviewer
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let text = format!(
        "{} {} in Trading Grid document review{}.\nTG document: {} ({})",
        doc.doc_type().as_str_name(),
        if verified { "approved" } else { "rejected" },
        if reviewer.is_empty() {
            String::new()
        } else {
            format!(" by {reviewer}")
        },
        doc.document_id,
        doc.file_name
    );
    vec![
        must_exist(upsert_row("account", account, fields)),
        notes::note(
            &format!("tg-review:{}:{}", doc.document_id, verified),
            ("account", account),
            &format!("Verification: {}", doc.file_name),
            &text,
        ),
    ]
}

/// D3: TG's overall onboarding status as `tgb_onboardingstatus`; `None` when unspecified.
pub fn onboarding_status(overall: pb::OnboardingOverall) -> Option<OnboardingStatus> {
    match overall {
        pb::OnboardingOverall::NotStarted => Some(OnboardingStatus::NotStarted),
        pb::OnboardingOverall::InProgress | pb::OnboardingOverall::Blocked => {
            Some(OnboardingStatus::InProgress)
        }
        pb::OnboardingOverall::Complete => Some(OnboardingStatus::Approved),
        pb::OnboardingOverall::Unspecified => None,
    }
}

/// D3: the onboarding status write of an account.
pub fn plan_onboarding(account: &str, status: OnboardingStatus) -> Vec<BatchRequest> {
    vec![must_exist(upsert_row(
        "account",
        account,
        json!({"tgb_onboardingstatus": status.code()}),
    ))]
}

/// Document kind → the account column of its verification.
const FLAGS: [(&str, &str); 4] = [
    ("tax_form", "tgb_taxformverified"),
    ("banking_details", "tgb_bankingverified"),
    ("compliance_certificate", "tgb_compliancecertverified"),
    ("trading_agreement", "tgb_agreementverified"),
];

/// D3: the account's verification flags and their hash; the flags are `Some` when they are to
/// be published (changed since the hash `seen` holds, or set on an account seen first).
pub fn verifications(
    attrs: &Map<String, Value>,
    seen: &BTreeMap<String, String>,
) -> (String, Option<BTreeMap<String, bool>>) {
    let flags: BTreeMap<String, bool> = FLAGS
        .iter()
        .filter_map(|(k, col)| {
            attrs
                .get(*col)
                .and_then(Value::as_bool)
                .map(|v| ((*k).to_owned(), v))
        })
        .collect();
    let h = hash(&json!(
        FLAGS
            .iter()
            .map(|(_, col)| attrs.get(*col).cloned().unwrap_or(Value::Null))
            .collect::<Vec<_>>()
    ));
    let publish = seen.get("verifications").is_some_and(|s| s != &h)
        || (seen.is_empty() && flags.values().any(|v| *v));
    (h.clone(), publish.then_some(flags))
}

/// D8: the account's master-data fields that differ from what both sides last agreed on
/// (`known`, the partner's TG → Dataverse state), with the hashes to record when published.
pub fn changed_fields(
    attrs: &Map<String, Value>,
    known: &EntityState,
) -> (Vec<&'static str>, Vec<(String, String)>) {
    let view = dv_account_view(&Value::Object(attrs.clone()));
    let changed = view
        .iter()
        .filter(|(k, v)| known.fields.get(**k).is_some_and(|h| *h != hash(v)))
        .map(|(k, _)| *k)
        .collect();
    let hashes = view
        .iter()
        .map(|(k, v)| ((*k).to_owned(), hash(v)))
        .collect();
    (changed, hashes)
}

/// D8: `dyn.account.updated` of a change whose fields `changed` differ.
pub fn account_updated(
    c: &Change,
    partner: &pb::PartnerRef,
    changed: &[&str],
) -> pb::DynAccountUpdated {
    let a = &c.attrs;
    pb::DynAccountUpdated {
        meta: meta(c, "updated", Some(partner.clone()), &partner.key()),
        account_id: c.id.clone(),
        legal_name: text(a, "name").to_owned(),
        addresses: vec![pb::Address {
            kind: "main".into(),
            line1: text(a, "address1_line1").into(),
            city: text(a, "address1_city").into(),
            postal_code: text(a, "address1_postalcode").into(),
            country: text(a, "address1_country").into(),
            ..Default::default()
        }],
        contacts: Vec::new(),
        changed_fields: changed
            .iter()
            .map(|f| match *f {
                "address" => "addresses".to_owned(),
                f => f.to_owned(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str, city: &str) -> pb::PartnerProfile {
        pb::PartnerProfile {
            legal_name: name.into(),
            addresses: vec![pb::Address {
                line1: "1 Dock Rd".into(),
                city: city.into(),
                ..Default::default()
            }],
            revision: 2,
            ..Default::default()
        }
    }

    fn row(name: &str, city: &str) -> Value {
        json!({"name": name, "address1_line1": "1 Dock Rd", "address1_city": city,
            "address1_postalcode": "", "address1_country": ""})
    }

    fn agreed_on(p: &pb::PartnerProfile) -> EntityState {
        let mut st = EntityState::default();
        for (k, v) in tg_account_view(p) {
            st.fields.insert(k.to_owned(), hash(&v));
        }
        st
    }

    #[test]
    fn the_side_that_changed_wins_and_a_conflict_follows_the_field_policy() {
        let settings = DynamicsSettings::default();
        let st = agreed_on(&profile("Acme", "Lyon"));
        // Only TG changed the city: written. Only Dynamics changed the name: kept.
        let p = plan_profile(
            &st,
            &profile("Acme", "Paris"),
            &row("Acme SA", "Lyon"),
            &settings,
        );
        assert!(p.conflicts.is_empty());
        assert_eq!(p.write.get("address1_city"), Some(&json!("Paris")));
        assert!(!p.write.contains_key("name"));
        assert_eq!(p.agreed["legal_name"], hash(&json!("Acme SA")));
        let set = p.writes("acc-1");
        assert_eq!(set.len(), 1);
        assert!(
            set[0]
                .headers
                .iter()
                .any(|(k, v)| k == "If-Match" && v == "*")
        );
        // Both changed both: legal_name is Dynamics-wins, address TG-wins (the defaults).
        let p = plan_profile(
            &st,
            &profile("Acme GmbH", "Berlin"),
            &row("Acme SA", "Paris"),
            &settings,
        );
        assert_eq!(
            p.conflicts,
            vec![
                Conflict {
                    field: "address",
                    policy: FieldPolicy::TgWins,
                    tg_wins: true
                },
                Conflict {
                    field: "legal_name",
                    policy: FieldPolicy::DynamicsWins,
                    tg_wins: false
                },
            ]
        );
        assert_eq!(p.write.get("address1_city"), Some(&json!("Berlin")));
        assert!(!p.write.contains_key("name"));
        // Both sides equal: nothing to write.
        let same = plan_profile(
            &st,
            &profile("Acme", "Lyon"),
            &row("Acme", "Lyon"),
            &settings,
        );
        assert!(same.writes("acc-1").is_empty());
    }

    #[test]
    fn reviews_set_one_flag_and_banking_details_only_as_a_reference() {
        let doc = pb::TgDocument {
            document_id: "D-9".into(),
            doc_type: pb::DocType::BankingDetails as i32,
            ..Default::default()
        };
        assert_eq!(review_flag(&doc, pb::ReviewOutcome::Unspecified), None);
        let flag = review_flag(&doc, pb::ReviewOutcome::Approved).unwrap();
        assert_eq!(flag, ("tgb_bankingverified", true));
        let set = plan_review(&pb::ReviewCompleted::default(), &doc, flag, "acc-1");
        assert_eq!(set.len(), 2);
        let fields = set[0].body.as_ref().unwrap();
        assert_eq!(fields["tgb_bankingverified"], true);
        assert_eq!(fields["tgb_bankingdocumentref"], "tg:document:D-9");
        assert!(set[1].path.starts_with("annotations("));
        let rejected = plan_review(
            &pb::ReviewCompleted::default(),
            &doc,
            ("tgb_bankingverified", false),
            "acc-1",
        );
        assert_eq!(
            rejected[0].body.as_ref().unwrap()["tgb_bankingdocumentref"],
            Value::Null
        );
        assert_eq!(
            onboarding_status(pb::OnboardingOverall::Blocked),
            Some(OnboardingStatus::InProgress)
        );
        assert_eq!(onboarding_status(pb::OnboardingOverall::Unspecified), None);
    }

    #[test]
    fn verifications_publish_on_change_and_master_data_on_a_differing_field() {
        let mut attrs = Map::new();
        attrs.insert("tgb_taxformverified".into(), json!(true));
        let (h, first) = verifications(&attrs, &BTreeMap::new());
        assert_eq!(first.unwrap().get("tax_form"), Some(&true));
        let seen = BTreeMap::from([("verifications".to_owned(), h.clone())]);
        assert_eq!(verifications(&attrs, &seen), (h, None));
        attrs.insert("tgb_bankingverified".into(), json!(true));
        assert!(verifications(&attrs, &seen).1.is_some());

        let row = row("Acme SA", "Lyon");
        let attrs = row.as_object().unwrap();
        let known = agreed_on(&profile("Acme", "Lyon"));
        let (changed, _) = changed_fields(attrs, &known);
        assert_eq!(changed, vec!["legal_name"]);
        let (never_agreed, _) = changed_fields(attrs, &EntityState::default());
        assert!(never_agreed.is_empty());
        let c = Change {
            table: "account".into(),
            id: "acc-1".into(),
            attrs: attrs.clone(),
            ..Default::default()
        };
        let ev = account_updated(&c, &crate::ids::partner_ref("ZZ:ACME"), &["address"]);
        assert_eq!(ev.changed_fields, vec!["addresses"]);
        assert_eq!(ev.legal_name, "Acme SA");
    }
}
