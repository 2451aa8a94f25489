//! Standard Webhooks verification, as a pure function.
//!
//! Signed content: `{webhook-id}.{webhook-timestamp}.{raw body}`; key: the base64 part of a
//! `whsec_…` secret; `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` entries.
//! Any entry matching any key verifies (secret rotation). The timestamp must be within the
//! tolerance of `now`. Comparison is constant-time (`Mac::verify_slice`). An empty or malformed
//! signature, an empty id, or a timestamp that is not an integer never verifies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The default timestamp tolerance: 5 minutes either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// A decoded webhook key. `Debug` does not show it.
#[derive(Clone)]
pub struct WebhookKey(Vec<u8>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey([REDACTED])")
    }
}

/// A secret that is not `whsec_<base64>`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("webhook secret {index} is not whsec_<base64>")]
pub struct BadSecret {
    /// 1-based position in the list.
    pub index: usize,
}

impl WebhookKey {
    /// Decodes `whsec_<base64>` (the prefix is optional, as the specification allows).
    pub fn from_secret(secret: &str, index: usize) -> Result<WebhookKey, BadSecret> {
        let b64 = secret.trim();
        let b64 = b64.strip_prefix("whsec_").unwrap_or(b64);
        match STANDARD.decode(b64) {
            Ok(key) if !key.is_empty() => Ok(WebhookKey(key)),
            _ => Err(BadSecret { index }),
        }
    }
}

/// Why a webhook does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header is missing or empty.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// `webhook-timestamp` is not Unix seconds.
    #[error("webhook-timestamp is not an integer")]
    BadTimestamp,
    /// The timestamp is too far from now.
    #[error("webhook-timestamp is {0} s away from now (tolerance exceeded)")]
    Stale(i64),
    /// No `v1,<base64>` entry in the signature header.
    #[error("webhook-signature has no v1 signature")]
    Malformed,
    /// No entry matches any key.
    #[error("no signature matches")]
    Mismatch,
    /// No key is configured: nothing can verify.
    #[error("no webhook secret is configured")]
    NoKeys,
}

impl VerifyError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "missing_header",
            VerifyError::BadTimestamp => "bad_timestamp",
            VerifyError::Stale(_) => "stale_timestamp",
            VerifyError::Malformed => "malformed_signature",
            VerifyError::Mismatch => "mismatch",
            VerifyError::NoKeys => "no_keys",
        }
    }
}

/// The checks that need no body: every header present, the timestamp an integer within the
/// tolerance, at least one well-formed `v1` signature, and a key to check it with. Run before
/// the body is read, so a request that cannot verify costs no body read. `Ok` holds the
/// decoded candidate signatures for [`verify_body`].
pub fn check_headers(
    keys: &[WebhookKey],
    id: &str,
    timestamp: &str,
    signature: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<Signatures, VerifyError> {
    if id.is_empty() {
        return Err(VerifyError::Missing("webhook-id"));
    }
    if timestamp.is_empty() {
        return Err(VerifyError::Missing("webhook-timestamp"));
    }
    if signature.trim().is_empty() {
        return Err(VerifyError::Missing("webhook-signature"));
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now.saturating_sub(ts);
    if skew.saturating_abs() > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    let candidates: Vec<Vec<u8>> = signature
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .filter(|sig| sig.len() == 32)
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    Ok(Signatures(candidates))
}

/// The well-formed `v1` signatures of a delivery whose headers passed [`check_headers`].
#[derive(Debug)]
pub struct Signatures(Vec<Vec<u8>>);

/// The HMAC check of a delivery whose headers passed [`check_headers`].
pub fn verify_body(
    keys: &[WebhookKey],
    id: &str,
    timestamp: &str,
    signatures: &Signatures,
    body: &[u8],
) -> Result<(), VerifyError> {
    let mut matched = false;
    for key in keys {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.0) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.trim().as_bytes());
        mac.update(b".");
        mac.update(body);
        for candidate in &signatures.0 {
            // Every candidate is checked (no early exit): the time does not reveal which matched.
            matched |= mac.clone().verify_slice(candidate).is_ok();
        }
    }
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Verifies one delivery: [`check_headers`] then [`verify_body`]. `now` is Unix seconds
/// (injected for tests).
pub fn verify(
    keys: &[WebhookKey],
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let signatures = check_headers(keys, id, timestamp, signature, now, tolerance_secs)?;
    verify_body(keys, id, timestamp, &signatures, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published Standard Webhooks test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const NOW: i64 = 1_614_265_330;

    fn keys() -> Vec<WebhookKey> {
        vec![WebhookKey::from_secret(SECRET, 1).unwrap()]
    }

    #[test]
    fn the_published_vector_verifies() {
        assert_eq!(verify(&keys(), ID, TS, SIG, BODY, NOW, 300), Ok(()));
    }

    #[test]
    fn any_of_several_keys_and_entries_verifies() {
        let other = WebhookKey::from_secret("whsec_c2VjcmV0LW9mLXRoZS1uZXctb25l", 1).unwrap();
        let keys = vec![other, keys().remove(0)];
        let header = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,xyz {SIG}");
        assert_eq!(verify(&keys, ID, TS, &header, BODY, NOW, 300), Ok(()));
    }

    #[test]
    fn the_tolerance_is_five_minutes_either_way() {
        assert_eq!(verify(&keys(), ID, TS, SIG, BODY, NOW + 300, 300), Ok(()));
        assert_eq!(verify(&keys(), ID, TS, SIG, BODY, NOW - 300, 300), Ok(()));
        assert_eq!(
            verify(&keys(), ID, TS, SIG, BODY, NOW + 301, 300),
            Err(VerifyError::Stale(301))
        );
        assert_eq!(
            verify(&keys(), ID, TS, SIG, BODY, NOW - 301, 300),
            Err(VerifyError::Stale(-301))
        );
    }

    #[test]
    fn tampering_with_any_part_fails() {
        let m = Err(VerifyError::Mismatch);
        assert_eq!(
            verify(&keys(), ID, TS, SIG, br#"{"test": 2432232315}"#, NOW, 300),
            m
        );
        assert_eq!(
            verify(&keys(), "msg_other", TS, SIG, BODY, NOW, 300),
            m.clone()
        );
        assert_eq!(
            verify(&keys(), ID, "1614265331", SIG, BODY, NOW, 300),
            m.clone()
        );
        let wrong = WebhookKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx", 1).unwrap();
        assert_eq!(verify(&[wrong], ID, TS, SIG, BODY, NOW, 300), m);
    }

    #[test]
    fn empty_or_malformed_signatures_never_verify() {
        for header in [
            "",
            " ",
            "v1,",
            "v1",
            "v1,!!!",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,AAAA",
        ] {
            assert!(
                verify(&keys(), ID, TS, header, BODY, NOW, 300).is_err(),
                "{header:?} verified"
            );
        }
        assert_eq!(
            verify(&keys(), "", TS, SIG, BODY, NOW, 300),
            Err(VerifyError::Missing("webhook-id"))
        );
        assert_eq!(
            verify(&keys(), ID, "soon", SIG, BODY, NOW, 300),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify(&[], ID, TS, SIG, BODY, NOW, 300),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn secrets_must_be_base64() {
        assert_eq!(
            WebhookKey::from_secret("whsec_", 2).unwrap_err(),
            BadSecret { index: 2 }
        );
        assert!(WebhookKey::from_secret("whsec_not base64!", 1).is_err());
    }
}
