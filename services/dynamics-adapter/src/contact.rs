//! The contact aggregate (D8): the contacts of a TG partner profile → `contact` rows under the
//! partner's account, at ids derived from the partner and the TG contact id. Pure: no I/O.

use serde_json::json;
use tgb_clients::dataverse::BatchRequest;
use tgb_proto as pb;

use crate::ids::row_id;
use crate::odata::upsert_row;
use crate::schema::{bind, reference, truncate};
use crate::settings::{DynamicsSettings, FieldPolicy};
use crate::state::{EntityState, hash};

/// The `tgb_sync` field of the contacts both sides last agreed on.
pub const FIELD: &str = "contacts";

/// The contact writes of a profile, and the hash of its contacts to record as agreed.
#[derive(Debug)]
pub struct ContactsPlan {
    /// One upsert per contact; empty when nothing changed or Dynamics wins the contacts.
    pub writes: Vec<BatchRequest>,
    /// The hash of the profile's contacts.
    pub hash: String,
}

/// D8: the profile's contacts are written when they changed since the last sync and the
/// contacts' policy is TG-wins. Partner `key` (`ZZ:ACME01`), its account id `account`.
pub fn plan(
    state: &EntityState,
    profile: &pb::PartnerProfile,
    key: &str,
    account: &str,
    settings: &DynamicsSettings,
) -> ContactsPlan {
    let h = hash(&json!(
        profile
            .contacts
            .iter()
            .map(|c| (&c.contact_id, &c.name, &c.email, &c.phone, &c.role))
            .collect::<Vec<_>>()
    ));
    let mut writes = Vec::new();
    if state.fields.get(FIELD) != Some(&h) && settings.policy(FIELD) == FieldPolicy::TgWins {
        for c in &profile.contacts {
            let (first, last) = match c.name.rsplit_once(' ') {
                Some((f, l)) => (f.to_owned(), l.to_owned()),
                None => (String::new(), c.name.clone()),
            };
            let id = row_id(&format!("tg-contact:{key}:{}", c.contact_id));
            writes.push(upsert_row(
                "contact",
                &id.to_string(),
                json!({
                    "firstname": truncate(&first, 50), "lastname": truncate(&last, 50),
                    "emailaddress1": truncate(&c.email, 100), "telephone1": truncate(&c.phone, 50),
                    "jobtitle": truncate(&c.role, 100), "tgb_tgcontactid": truncate(&c.contact_id, 100),
                    bind("contact", "parentcustomerid", "account"): reference("account", account),
                }),
            ));
        }
    }
    ContactsPlan { writes, hash: h }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> pb::PartnerProfile {
        pb::PartnerProfile {
            contacts: vec![pb::Contact {
                contact_id: "P-1".into(),
                name: "Ana Maria Lopez".into(),
                email: "ana@acme.example".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn changed_contacts_are_upserted_once_at_derived_ids_under_tg_wins_only() {
        let settings = DynamicsSettings::default();
        let p = plan(
            &EntityState::default(),
            &profile(),
            "ZZ:ACME",
            "acc-1",
            &settings,
        );
        assert_eq!(p.writes.len(), 1);
        assert_eq!(
            p.writes[0].path,
            format!(
                "contacts({})?$select=contactid",
                row_id("tg-contact:ZZ:ACME:P-1")
            )
        );
        let body = p.writes[0].body.as_ref().unwrap();
        assert_eq!(body["firstname"], "Ana Maria");
        assert_eq!(body["lastname"], "Lopez");
        assert_eq!(
            body["parentcustomerid_account@odata.bind"],
            "/accounts(acc-1)"
        );
        // Agreed already: nothing to write.
        let mut st = EntityState::default();
        st.fields.insert(FIELD.into(), p.hash.clone());
        assert!(
            plan(&st, &profile(), "ZZ:ACME", "acc-1", &settings)
                .writes
                .is_empty()
        );
        // Dynamics wins the contacts: nothing written, the hash still recorded.
        let mut dynamics_wins = DynamicsSettings::default();
        dynamics_wins
            .field_policies
            .insert(FIELD.into(), FieldPolicy::DynamicsWins);
        let p = plan(
            &EntityState::default(),
            &profile(),
            "ZZ:ACME",
            "acc-1",
            &dynamics_wins,
        );
        assert!(p.writes.is_empty());
        assert!(!p.hash.is_empty());
    }
}
