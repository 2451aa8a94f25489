//! What the adapter remembers in `tgb_sync`: per entity and direction, the last applied version
//! and, per field, the hash of the value both sides last agreed on. The entry is a superset of
//! [`tgb_bus::sync::SyncState`] (`version`, `fingerprint`), so other tools can read it.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `tgb_sync` target of TG → Dataverse state (keyed by the TG entity).
pub const TO_DATAVERSE: &str = "dataverse";
/// `tgb_sync` target of Dataverse → bus state (keyed by the Dataverse row).
pub const FROM_DATAVERSE: &str = "dyn";

/// The state of one entity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// Last applied source version.
    #[serde(default)]
    pub version: String,
    /// Fingerprint of all `fields`.
    #[serde(default)]
    pub fingerprint: String,
    /// Field → hash of the value last in step on both sides.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

impl EntityState {
    /// Recomputes `fingerprint` from `fields`.
    pub fn seal(&mut self) {
        self.fingerprint =
            tgb_bus::sync::fingerprint(self.fields.iter().map(|(k, v)| (k.as_str(), v.clone())));
    }

    /// Has `candidate` already been applied (same or older version)?
    pub fn is_stale(&self, candidate: &str) -> bool {
        !self.version.is_empty() && !tgb_bus::sync::is_newer(candidate, &self.version)
    }
}

/// A short hash of a JSON value.
pub fn hash(value: &serde_json::Value) -> String {
    let d = Sha256::digest(value.to_string().as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A KV failure.
pub type StateError = tgb_bus::sync::SyncError;

/// The `tgb_sync` bucket as the adapter uses it.
#[derive(Clone, Debug)]
pub struct States {
    sync: tgb_bus::sync::Sync,
}

impl States {
    /// Over `tgb_sync`.
    pub fn new(kv: kv::Store) -> Self {
        States {
            sync: tgb_bus::sync::Sync::new(kv),
        }
    }

    /// The state and its KV revision (0 = none yet).
    pub async fn get(&self, target: &str, entity: &str) -> Result<(EntityState, u64), StateError> {
        self.sync.get_as(target, entity).await
    }

    /// Stores `state` if the entry is still at `revision`; `Ok(false)` when someone else wrote.
    pub async fn put(
        &self,
        target: &str,
        entity: &str,
        state: &EntityState,
        revision: u64,
    ) -> Result<bool, StateError> {
        self.sync.put_as(target, entity, state, revision).await
    }

    /// Read-modify-write with retries on concurrent writers; `f` returns false to leave the
    /// entry as it is. Returns what `f` decided last.
    pub async fn update<F>(&self, target: &str, entity: &str, mut f: F) -> Result<bool, StateError>
    where
        F: FnMut(&mut EntityState) -> bool,
    {
        for _ in 0..20 {
            let (mut state, rev) = self.get(target, entity).await?;
            if !f(&mut state) {
                return Ok(false);
            }
            state.seal();
            if self.put(target, entity, &state, rev).await? {
                return Ok(true);
            }
        }
        Err(StateError {
            key: format!("{target}.{entity}"),
            reason: "kept changing under 20 attempts".into(),
        })
    }

    /// [`Self::update`] starting from a state the caller has already read (`known`, with its
    /// revision): the first write needs no read, and only a lost race re-reads. A handler that
    /// read the entry to decide and writes it at the end saves a KV round trip per event.
    pub async fn update_from<F>(
        &self,
        target: &str,
        entity: &str,
        known: (EntityState, u64),
        mut f: F,
    ) -> Result<bool, StateError>
    where
        F: FnMut(&mut EntityState) -> bool,
    {
        let (mut state, rev) = known;
        if !f(&mut state) {
            return Ok(false);
        }
        state.seal();
        if self.put(target, entity, &state, rev).await? {
            return Ok(true);
        }
        self.update(target, entity, f).await
    }

    /// Stores a free-form record (conflicts) under `conflict.<entity>.<field>`.
    pub async fn record(&self, key: &str, value: &serde_json::Value) -> Result<(), StateError> {
        self.sync
            .store()
            .put(key, serde_json::to_vec(value).expect("serialisable").into())
            .await
            .map(|_| ())
            .map_err(|e| StateError {
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    /// A free-form record, if present.
    pub async fn read(&self, key: &str) -> Option<serde_json::Value> {
        let v = self.sync.store().get(key).await.ok()??;
        serde_json::from_slice(&v).ok()
    }
}
