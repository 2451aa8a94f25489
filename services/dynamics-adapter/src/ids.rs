//! Ids that end up in Dataverse queries, checked for what they are before any query is built:
//! GUIDs parse as GUIDs, partner qualifiers and ids are drawn from a strict character set (EDI
//! qualifiers and interchange ids are short, alphanumeric and a few separators). Encoding a
//! literal is the query builder's job; refusing an id that cannot be one is this module's.

use tgb_proto as pb;

/// Longest partner qualifier or id accepted (EDI interchange ids are at most 35 characters).
pub const MAX_PARTNER_PART: usize = 64;

/// Whether `part` is a plausible partner qualifier or id: 1..=64 of `[A-Za-z0-9._-]`.
pub fn is_partner_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= MAX_PARTNER_PART
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
                "meta.partner.{field} is not 1 to {MAX_PARTNER_PART} characters of [A-Za-z0-9._-]"
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
    fn partner_parts_are_a_strict_character_set() {
        for ok in ["ZZ", "ACME01", "acme.eu-1_a", &"9".repeat(64)] {
            assert!(is_partner_part(ok), "{ok}");
        }
        for bad in [
            "",
            "X%27 or accountnumber ne %27",
            "X' or 1 eq 1",
            "A B",
            "A/B",
            "A(1)",
            "Ä",
            &"9".repeat(65),
        ] {
            assert!(!is_partner_part(bad), "{bad}");
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
