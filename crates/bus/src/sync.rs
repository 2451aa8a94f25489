//! `tgb_sync`: per entity and target, the last version applied and the fingerprint of what
//! tg-bridge itself last wrote. Adapters use it to drop stale events (older version) and
//! echoes (a detected change equal to our own last write).

use async_nats::jetstream::kv;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::links::encode_token;

/// What tg-bridge knows of one entity in one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The source version last applied (TG revision, Dataverse versionnumber, Planner ETag).
    pub version: String,
    /// SHA-256 (hex) of the fields tg-bridge last wrote to the target.
    pub fingerprint: String,
}

/// A KV operation on `tgb_sync` failed.
#[derive(Debug, thiserror::Error)]
#[error("tgb_sync {key}: {reason}")]
pub struct SyncError {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// The fingerprint of a set of written fields: order-independent over `(name, value)` pairs.
pub fn fingerprint<'a>(fields: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut pairs: Vec<(&str, String)> = fields.into_iter().collect();
    pairs.sort();
    let mut h = Sha256::new();
    for (k, v) in pairs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares versions: numbers numerically (TG revisions, Dataverse versionnumbers), else as text.
pub fn is_newer(candidate: &str, last: &str) -> bool {
    match (candidate.parse::<u64>(), last.parse::<u64>()) {
        (Ok(c), Ok(l)) => c > l,
        _ => candidate != last,
    }
}

/// The sync-state bucket.
#[derive(Clone, Debug)]
pub struct Sync {
    kv: kv::Store,
}

impl Sync {
    /// Over the `tgb_sync` store.
    pub fn new(kv: kv::Store) -> Self {
        Sync { kv }
    }

    fn key(target: &str, entity: &str) -> String {
        format!("{}.{}", encode_token(target), encode_token(entity))
    }

    /// The state of `entity` (e.g. `tg:case:C-1`) in `target` (e.g. `dataverse`), with the KV
    /// revision to pass to [`Sync::put`].
    pub async fn get(&self, target: &str, entity: &str) -> Result<(SyncState, u64), SyncError> {
        self.get_as(target, entity).await
    }

    /// Stores the state if the entry is still at `revision` (0 = absent); `Ok(false)` when
    /// another writer got there first.
    pub async fn put(
        &self,
        target: &str,
        entity: &str,
        state: &SyncState,
        revision: u64,
    ) -> Result<bool, SyncError> {
        self.put_as(target, entity, state, revision).await
    }

    /// [`Sync::get`] of a richer entry: a service may keep more than [`SyncState`] under the
    /// same key (a superset of its fields, so every reader still finds `version` and
    /// `fingerprint`). An absent, deleted or purged entry is `T::default()` (at the revision to
    /// write over: 0 when never written).
    pub async fn get_as<T: DeserializeOwned + Default>(
        &self,
        target: &str,
        entity: &str,
    ) -> Result<(T, u64), SyncError> {
        let key = Self::key(target, entity);
        let (state, revision) = crate::kv::read_json::<T>(&self.kv, &key)
            .await
            .map_err(|e| SyncError {
                key,
                reason: e.to_string(),
            })?;
        Ok((state.unwrap_or_default(), revision))
    }

    /// [`Sync::put`] of a richer entry (see [`Sync::get_as`]).
    pub async fn put_as<T: Serialize>(
        &self,
        target: &str,
        entity: &str,
        state: &T,
        revision: u64,
    ) -> Result<bool, SyncError> {
        let key = Self::key(target, entity);
        crate::kv::put_json_if(&self.kv, &key, state, revision)
            .await
            .map(|written| written.is_some())
            .map_err(|e| SyncError {
                key,
                reason: e.to_string(),
            })
    }

    /// The store itself, for free-form records kept beside the states.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_field_order() {
        let a = fingerprint([("title", "x".into()), ("status", "1".into())]);
        let b = fingerprint([("status", "1".into()), ("title", "x".into())]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint([("status", "2".into()), ("title", "x".into())])
        );
    }

    #[test]
    fn numeric_versions_compare_as_numbers() {
        assert!(is_newer("10", "9"));
        assert!(!is_newer("9", "10"));
        assert!(!is_newer("7", "7"));
        assert!(is_newer("W/\"2\"", "W/\"1\""));
    }
}
