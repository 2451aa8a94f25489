//! A poll cursor in KV, written with compare-and-set: each write names the revision it read,
//! so a poller that another replica has overtaken (it lost the lease, or held it twice for a
//! moment) cannot move the cursor back. Such a write is refused with
//! [`CursorError::Moved`]; the poller then stops its round and reads again.
//!
//! ```ignore
//! let cursor = Cursor::new(bus.kv(names::KV_CURSORS).await?, "dataverse.incident");
//! let (value, mut revision) = cursor.load().await?.unzip();   // None before the first write
//! // ... read a page from `value` ...
//! revision = Some(cursor.store(next.into(), revision).await?);
//! ```

use async_nats::jetstream::kv;
use bytes::Bytes;

/// A failed cursor read or write.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The cursor is not at the revision the write named: another writer moved it.
    #[error("cursor {key} moved: another poller wrote it since revision {expected:?}")]
    Moved {
        /// The key.
        key: String,
        /// The revision the write expected (`None`: that there was no cursor yet).
        expected: Option<u64>,
    },
    /// KV failed.
    #[error("cursor {key}: {message}")]
    Kv {
        /// The key.
        key: String,
        /// What failed.
        message: String,
    },
}

/// One cursor: a key in a KV bucket (`tgb_cursors`).
#[derive(Clone)]
pub struct Cursor {
    kv: kv::Store,
    key: String,
}

impl Cursor {
    /// The cursor `key` in `kv`.
    pub fn new(kv: kv::Store, key: impl Into<String>) -> Cursor {
        Cursor {
            kv,
            key: key.into(),
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn kv_error(&self, e: impl ToString) -> CursorError {
        CursorError::Kv {
            key: self.key.clone(),
            message: e.to_string(),
        }
    }

    /// The value and its revision; `None` when there is none (or it was deleted).
    pub async fn load(&self) -> Result<Option<(Bytes, u64)>, CursorError> {
        match self.kv.entry(&self.key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some((e.value, e.revision))),
            Ok(_) => Ok(None),
            Err(e) => Err(self.kv_error(e)),
        }
    }

    /// Writes `value` if the cursor is still at `revision` (`None`: there is no cursor yet);
    /// answers the new revision.
    pub async fn store(&self, value: Bytes, revision: Option<u64>) -> Result<u64, CursorError> {
        let moved = || CursorError::Moved {
            key: self.key.clone(),
            expected: revision,
        };
        match revision {
            None => match self.kv.create(&self.key, value).await {
                Ok(rev) => Ok(rev),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(moved()),
                Err(e) => Err(self.kv_error(e)),
            },
            Some(rev) => match self.kv.update(&self.key, value, rev).await {
                Ok(rev) => Ok(rev),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(moved()),
                Err(e) => Err(self.kv_error(e)),
            },
        }
    }
}
