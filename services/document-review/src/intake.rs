//! Intake checks of a fetched document: size, and SHA-256 against what TG announced in the
//! event and in the `Digest` header of the content.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Why a document's content is not accepted. The text is shown to the partner.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Larger than the limit.
    #[error("the file is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The content served was larger than the limit (read no further than the limit).
    #[error("the content served is larger than the limit of {limit} bytes")]
    ServedTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The content's SHA-256 differs from the one announced with the upload.
    #[error("the content's SHA-256 {actual} does not match the announced {announced}")]
    AnnouncedDigestMismatch {
        /// Announced (hex).
        announced: String,
        /// Computed (hex).
        actual: String,
    },
    /// The content's SHA-256 differs from the `Digest` header it was served with.
    #[error("the content does not match its Digest header (sha-256)")]
    HeaderDigestMismatch,
    /// Nothing to verify the content against.
    #[error("no SHA-256 was announced for the content")]
    NoDigest,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `sha-256=` value of a `Digest` header (RFC 3230, several algorithms comma-separated).
fn header_sha256(digest: &str) -> Option<Vec<u8>> {
    digest.split(',').find_map(|part| {
        let (alg, value) = part.trim().split_once('=')?;
        if !alg.eq_ignore_ascii_case("sha-256") {
            return None;
        }
        base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
    })
}

/// Checks the announced size before fetching.
pub fn check_announced_size(size: u64, limit: u64) -> Result<(), Refusal> {
    if size > limit {
        return Err(Refusal::TooLarge { size, limit });
    }
    Ok(())
}

/// Checks fetched `bytes`: size within `limit`, SHA-256 equal to `announced` (hex, when given)
/// and to the `Digest` header (when given); at least one of the two must be given. Returns the
/// SHA-256 (hex).
pub fn verify(
    bytes: &[u8],
    limit: u64,
    announced: &str,
    digest_header: Option<&str>,
) -> Result<String, Refusal> {
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > limit {
        return Err(Refusal::TooLarge { size, limit });
    }
    let actual = sha256_hex(bytes);
    let announced = announced.trim().to_ascii_lowercase();
    let header = digest_header.and_then(header_sha256);
    if announced.is_empty() && header.is_none() {
        return Err(Refusal::NoDigest);
    }
    if !announced.is_empty() && announced != actual {
        return Err(Refusal::AnnouncedDigestMismatch { announced, actual });
    }
    if let Some(h) = header
        && h != Sha256::digest(bytes).as_slice()
    {
        return Err(Refusal::HeaderDigestMismatch);
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(bytes: &[u8]) -> String {
        format!(
            "sha-256={}",
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
        )
    }

    #[test]
    fn matching_content_passes_and_returns_its_digest() {
        let b = b"certificate";
        let hex = sha256_hex(b);
        assert_eq!(verify(b, 100, &hex, Some(&header_of(b))).unwrap(), hex);
        assert_eq!(verify(b, 100, &hex.to_uppercase(), None).unwrap(), hex);
        assert_eq!(verify(b, 100, "", Some(&header_of(b))).unwrap(), hex);
    }

    #[test]
    fn a_wrong_announced_digest_is_refused() {
        let e = verify(b"x", 100, &sha256_hex(b"y"), None).unwrap_err();
        assert!(matches!(e, Refusal::AnnouncedDigestMismatch { .. }));
        assert!(e.to_string().contains("does not match"));
    }

    #[test]
    fn a_wrong_digest_header_is_refused() {
        let e = verify(b"x", 100, &sha256_hex(b"x"), Some(&header_of(b"y"))).unwrap_err();
        assert_eq!(e, Refusal::HeaderDigestMismatch);
        // Other algorithms in the header are ignored.
        let h = format!("md5=abc, {}", header_of(b"x"));
        assert!(verify(b"x", 100, "", Some(&h)).is_ok());
    }

    #[test]
    fn oversize_and_undigested_content_is_refused() {
        assert_eq!(
            verify(&[0; 11], 10, "", None).unwrap_err(),
            Refusal::TooLarge {
                size: 11,
                limit: 10
            }
        );
        assert_eq!(verify(b"x", 10, "", None).unwrap_err(), Refusal::NoDigest);
        assert!(check_announced_size(26_214_401, 26_214_400).is_err());
        assert!(check_announced_size(26_214_400, 26_214_400).is_ok());
    }
}
