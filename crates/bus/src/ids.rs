//! Deterministic event ids: the same fact always gets the same ULID, so JetStream's
//! `Nats-Msg-Id` de-duplication and TG's `Idempotency-Key` absorb a second publish (a redelivery,
//! a restart between publish and bookkeeping, two replicas racing). Shared by every service that
//! derives the id of a fact it found (SLA breaches, review outcomes).

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// A ULID whose time part is `at` and whose random part is a hash of `parts`.
pub fn derived(at: OffsetDateTime, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut random = [0u8; 16];
    random.copy_from_slice(&digest[..16]);
    let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    ulid::Ulid::from_parts(ms, u128::from_be_bytes(random)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_fact_gets_the_same_valid_ulid() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = derived(at, &["C-1", "first_response", "1"]);
        assert_eq!(a, derived(at, &["C-1", "first_response", "1"]));
        assert_ne!(a, derived(at, &["C-1", "first_response", "2"]));
        assert_ne!(derived(at, &["ab", "c"]), derived(at, &["a", "bc"]));
        let parsed = ulid::Ulid::from_string(&a).unwrap();
        assert_eq!(parsed.timestamp_ms(), 1_700_000_000_000);
    }
}
