//! Ids that end up in Dataverse queries, checked for what they are before any query is built:
//! GUIDs parse as GUIDs; partner qualifiers and ids are text of bounded length without control
//! characters. TG ids have no character set in the contract (`AC:ME/01 + &`, letters of any
//! script), so a partner id is never refused for its characters: every literal is encoded by
//! the query builder (`tgb_clients::dataverse::quote`: quotes doubled, then percent-encoded),
//! and rows are addressed by GUID, never by a key in a URL. Refusing an id that cannot be one
//! (empty, too long, a line break) is this module's job.

use tgb_proto as pb;
use uuid::Uuid;

/// Namespace of the deterministic ids tg-bridge gives the rows it creates (UUIDv5).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f1c_2b7e_8d3a_4c61_9e0b_7a2d_1c4f_6b01);

/// The deterministic id of a row created for `source_key` (e.g. `tg-comment:CM-1`).
pub fn row_id(source_key: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, source_key.as_bytes())
}

/// The id tg-bridge gives the account it creates for a partner (`ZZ:ACME01`).
///
/// Rows are never addressed by their alternate keys in a URL: a key value holding any of
/// `/ # < > * % & : \ ? +` cannot be used there, encoded or not ("Define alternate keys using
/// Power Apps"), and every partner key holds `:`. The key column travels in the body instead.
pub fn account_id(partner_key: &str) -> Uuid {
    row_id(&format!("tg-partner:{partner_key}"))
}

/// The id tg-bridge gives the incident it creates for a TG case key (`C-1`, `dispute:D-1`).
pub fn incident_id(case_key: &str) -> Uuid {
    row_id(&format!("tg-case:{case_key}"))
}

/// `ZZ:ACME01` → a partner reference.
pub fn partner_ref(key: &str) -> pb::PartnerRef {
    let (q, id) = key.split_once(':').unwrap_or(("", key));
    pb::PartnerRef {
        qualifier: q.to_owned(),
        id: id.to_owned(),
        name: String::new(),
    }
}

/// Longest partner qualifier or id accepted (EDI interchange ids are at most 35 characters;
/// `tgb_partnerkey` holds 100).
pub const MAX_PARTNER_PART: usize = 64;

/// Whether `part` is a plausible partner qualifier or id: 1..=64 characters, none of them a
/// control character, not blank.
pub fn is_partner_part(part: &str) -> bool {
    !part.trim().is_empty()
        && part.chars().count() <= MAX_PARTNER_PART
        && !part.chars().any(char::is_control)
}

/// `Err(reason)` unless both parts of `partner` are plausible (see [`is_partner_part`]); the
/// reason does not repeat the value.
pub fn check_partner(partner: &pb::PartnerRef) -> Result<(), String> {
    if partner.qualifier.is_empty() || partner.id.is_empty() {
        return Err("meta.partner is missing".into());
    }
    for (field, value) in [("qualifier", &partner.qualifier), ("id", &partner.id)] {
        if !is_partner_part(value) {
            return Err(format!(
                "meta.partner.{field} is not 1 to {MAX_PARTNER_PART} characters without control characters"
            ));
        }
    }
    Ok(())
}

/// `value` as a lower-case hyphenated GUID, if it is one.
pub fn guid(value: &str) -> Option<String> {
    uuid::Uuid::try_parse(value)
        .ok()
        .map(|id| id.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_parts_are_bounded_text() {
        for ok in [
            "ZZ",
            "ACME01",
            "acme.eu-1_a",
            "AC:ME/01 + & Ünïcødé",
            "X%27 or accountnumber ne %27",
            "X' or 1 eq 1",
            &"9".repeat(64),
        ] {
            assert!(is_partner_part(ok), "{ok}");
        }
        for bad in ["", "  ", "A\nB", "A\u{0}", &"9".repeat(65)] {
            assert!(!is_partner_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn guids_parse_as_guids() {
        assert_eq!(
            guid("6F9619FF-8B86-D011-B42D-00C04FC964FF").as_deref(),
            Some("6f9619ff-8b86-d011-b42d-00c04fc964ff")
        );
        assert_eq!(guid("6f9619ff-8b86-d011-b42d-00c04fc964ff or 1 eq 1"), None);
        assert_eq!(guid(""), None);
    }
}
