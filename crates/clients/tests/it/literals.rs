//! Property test of the OData literal encoder: whatever a partner writes, the literal a filter
//! gets back from a query string is exactly that text, and nothing after it can be read as
//! more of the filter.

use proptest::prelude::*;
use tgb_clients::dataverse::quote;

/// `%XX` escapes decoded, as a server decodes a query parameter (`+` is left alone: the encoder
/// never leaves one raw).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An OData string literal read from the start of `s`: its value and what follows it.
fn read_literal(s: &str) -> Option<(String, &str)> {
    let rest = s.strip_prefix('\'')?;
    let mut value = String::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                value.push('\'');
            } else {
                return Some((value, &rest[i + 1..]));
            }
        } else {
            value.push(c);
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_quoted_literal_reads_back_as_its_text_and_ends_where_it_should(
        text in prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9 '%&#+=:/?]{0,40}",
            Just("X%27 or accountnumber ne %27".to_owned()),
            Just("X' or 1 eq 1 or 'a".to_owned()),
        ]
    ) {
        let encoded = quote(&text);
        // Nothing a query string would read as a separator or an escape is left raw.
        prop_assert!(!encoded.contains(['&', '#', '+']), "{encoded}");
        let decoded = percent_decode(&encoded);
        prop_assert!(decoded.is_some(), "every % starts an escape: {encoded}");
        let decoded = decoded.unwrap();
        let (value, rest) = read_literal(&decoded).expect("a literal");
        prop_assert_eq!(&value, &text);
        prop_assert_eq!(rest, "", "nothing after the literal: {}", decoded);
    }
}
