//! JSON values in a KV bucket, read and changed with compare-and-set on the entry's revision,
//! so concurrent handlers, tickers and replicas never overwrite each other. One helper for every
//! service: [`update_json`] re-reads and re-decides on a lost race, a bounded number of times,
//! then fails with [`KvError::Contended`] (transient: the message is retried later) instead of
//! looping for as long as other writers keep winning.
//!
//! A key that was never written, and one whose last operation is a delete or a purge, both read
//! as absent; a write over a delete or purge marker is conditional on the marker's revision.

use async_nats::jetstream::kv;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Compare-and-set attempts of one [`update_json`] before it gives up.
pub const UPDATE_ATTEMPTS: usize = 32;

/// A KV operation on a JSON value failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Other writers won every one of [`UPDATE_ATTEMPTS`] compare-and-sets in a row.
    #[error("KV {bucket} {key}: changed by others {attempts} times in a row while updating it")]
    Contended {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Attempts made.
        attempts: usize,
    },
    /// The stored value is not JSON of the expected shape.
    #[error("KV {bucket} {key}: unreadable value: {reason}")]
    Decode {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The decoder's words.
        reason: String,
    },
    /// The server refused or did not answer.
    #[error("KV {bucket} {key}: {reason}")]
    Store {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What went wrong.
        reason: String,
    },
}

impl KvError {
    /// The key it is about.
    pub fn key(&self) -> &str {
        match self {
            KvError::Contended { key, .. }
            | KvError::Decode { key, .. }
            | KvError::Store { key, .. } => key,
        }
    }
}

/// What a change function decided.
#[derive(Debug)]
pub enum Change<T, R> {
    /// Write this value (created when absent), then answer `R`.
    Put(T, R),
    /// Leave the entry as it is and answer `R`.
    Keep(R),
}

fn store_err(kv: &kv::Store, key: &str, reason: impl std::fmt::Display) -> KvError {
    KvError::Store {
        bucket: kv.name.clone(),
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// The value under `key` and the entry's revision. Absent (never written, deleted or purged):
/// `None` and the revision to write over (0 when never written, else the marker's).
pub async fn read_json<T: DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
) -> Result<(Option<T>, u64), KvError> {
    match kv.entry(key).await.map_err(|e| store_err(kv, key, e))? {
        Some(e) if e.operation == kv::Operation::Put => {
            let value = serde_json::from_slice(&e.value).map_err(|err| KvError::Decode {
                bucket: kv.name.clone(),
                key: key.to_owned(),
                reason: err.to_string(),
            })?;
            Ok((Some(value), e.revision))
        }
        Some(e) => Ok((None, e.revision)),
        None => Ok((None, 0)),
    }
}

/// Writes `value` under `key` if the entry is still at `revision` as read by [`read_json`]
/// (0: never written). `Ok(Some(new revision))`, or `Ok(None)` when another writer got there
/// first.
pub async fn put_json_if<T: Serialize>(
    kv: &kv::Store,
    key: &str,
    value: &T,
    revision: u64,
) -> Result<Option<u64>, KvError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| store_err(kv, key, e))?
        .into();
    let written = if revision == 0 {
        kv.create(key, bytes).await.map_err(|e| {
            let lost = e.kind() == kv::CreateErrorKind::AlreadyExists;
            (lost, e.to_string())
        })
    } else {
        kv.update(key, bytes, revision).await.map_err(|e| {
            let text = e.to_string();
            let lost = e.kind() == kv::UpdateErrorKind::WrongLastRevision
                || text.contains("wrong last sequence");
            (lost, text)
        })
    };
    match written {
        Ok(rev) => Ok(Some(rev)),
        Err((true, _)) => Ok(None),
        Err((false, reason)) => Err(store_err(kv, key, reason)),
    }
}

/// Reads `key`, lets `change` decide from the current value (`None` when absent), and writes
/// with compare-and-set; on a lost race it reads again and asks `change` again, at most
/// [`UPDATE_ATTEMPTS`] times. Answers what `change` answered, with the entry's revision after
/// (the one written, or the one read when kept).
pub async fn update_json_at<T, R>(
    kv: &kv::Store,
    key: &str,
    mut change: impl FnMut(Option<T>) -> Change<T, R>,
) -> Result<(R, u64), KvError>
where
    T: Serialize + DeserializeOwned,
{
    for _ in 0..UPDATE_ATTEMPTS {
        let (current, revision) = read_json(kv, key).await?;
        match change(current) {
            Change::Keep(out) => return Ok((out, revision)),
            Change::Put(value, out) => {
                if let Some(written) = put_json_if(kv, key, &value, revision).await? {
                    return Ok((out, written));
                }
            }
        }
    }
    Err(KvError::Contended {
        bucket: kv.name.clone(),
        key: key.to_owned(),
        attempts: UPDATE_ATTEMPTS,
    })
}

/// [`update_json_at`] that first trusts `hint`, what the caller believes the entry holds
/// (`(None, 0)`: absent), and writes at its revision without reading; only when that write
/// loses (the hint was stale), or `change` keeps the hinted value, does it read and go on as
/// [`update_json_at`]. A right hint saves the read (a request and its reply on the broker).
pub async fn update_json_hinted<T, R>(
    kv: &kv::Store,
    key: &str,
    hint: (Option<T>, u64),
    mut change: impl FnMut(Option<T>) -> Change<T, R>,
) -> Result<(R, u64), KvError>
where
    T: Serialize + DeserializeOwned,
{
    let (value, revision) = hint;
    if let Change::Put(value, out) = change(value)
        && let Some(written) = put_json_if(kv, key, &value, revision).await?
    {
        return Ok((out, written));
    }
    update_json_at(kv, key, &mut change).await
}

/// [`update_json_at`] without the revision.
pub async fn update_json<T, R>(
    kv: &kv::Store,
    key: &str,
    change: impl FnMut(Option<T>) -> Change<T, R>,
) -> Result<R, KvError>
where
    T: Serialize + DeserializeOwned,
{
    update_json_at(kv, key, change).await.map(|(out, _)| out)
}
