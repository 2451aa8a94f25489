//! Ids that end up in Dataverse queries, checked for what they are before any query is built:
//! GUIDs parse as GUIDs; partner qualifiers and ids are text of bounded length without control
//! characters. TG ids have no character set in the contract (`AC:ME/01 + &`, letters of any
//! script), so a partner id is never refused for its characters: every literal is encoded by
//! the query builder (`tgb_clients::dataverse::quote`: quotes doubled, then percent-encoded),
//! and rows are addressed by GUID, never by a key in a URL. Refusing an id that cannot be one
//! (empty, too long, a line break) is this module's job.

use tgb_proto as pb;

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
