//! JSON values in a KV bucket, changed with compare-and-set on the revision.

use async_nats::jetstream::kv;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tgb_bus::async_nats;

/// A KV operation failed (not a lost race: those are retried).
#[derive(Debug, thiserror::Error)]
#[error("KV {key}: {reason}")]
pub struct KvError {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// What a change function decided.
pub enum Change<T, R> {
    /// Write this value.
    Put(T, R),
    /// Leave the entry as it is.
    Keep(R),
}

const CAS_ATTEMPTS: usize = 50;

/// Reads `key`, lets `change` decide, and writes with compare-and-set; on a lost race it reads
/// again and asks `change` again.
pub async fn update<T, R>(
    kv: &kv::Store,
    key: &str,
    mut change: impl FnMut(Option<T>) -> Change<T, R>,
) -> Result<R, KvError>
where
    T: Serialize + DeserializeOwned,
{
    let err = |reason: String| KvError {
        key: key.to_owned(),
        reason,
    };
    for _ in 0..CAS_ATTEMPTS {
        let (current, revision) = match kv.entry(key).await.map_err(|e| err(e.to_string()))? {
            Some(e) if e.operation == kv::Operation::Put => (
                Some(serde_json::from_slice(&e.value).map_err(|e| err(e.to_string()))?),
                e.revision,
            ),
            Some(e) => (None, e.revision),
            None => (None, 0),
        };
        let (value, out) = match change(current) {
            Change::Keep(out) => return Ok(out),
            Change::Put(v, out) => (v, out),
        };
        let bytes = serde_json::to_vec(&value).expect("serialisable").into();
        let written = if revision == 0 {
            kv.create(key, bytes).await.map(|_| ()).map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            })
        } else {
            kv.update(key, bytes, revision)
                .await
                .map(|_| ())
                .map_err(|e| {
                    let text = e.to_string();
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision
                            || text.contains("wrong last sequence"),
                        text,
                    )
                })
        };
        match written {
            Ok(()) => return Ok(out),
            Err((true, _)) => continue,
            Err((false, reason)) => return Err(err(reason)),
        }
    }
    Err(err(format!(
        "still contended after {CAS_ATTEMPTS} attempts"
    )))
}

/// The value under `key`, if any.
pub async fn read<T: DeserializeOwned>(kv: &kv::Store, key: &str) -> Result<Option<T>, KvError> {
    let err = |reason: String| KvError {
        key: key.to_owned(),
        reason,
    };
    match kv.get(key).await.map_err(|e| err(e.to_string()))? {
        Some(b) => Ok(Some(
            serde_json::from_slice(&b).map_err(|e| err(e.to_string()))?,
        )),
        None => Ok(None),
    }
}
