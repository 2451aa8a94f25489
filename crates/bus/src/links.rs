//! `tgb_links`: which record on one side is which record on the other.
//!
//! A link is stored under both ends, so either side finds the other with one read:
//! `<system>.<kind>.<id>.<other system>.<other kind>` → the other id. Ids are encoded so any TG
//! case id, GUID, Planner id or partner key (`ZZ:ACME01`) makes a valid KV key. A link whose
//! other end already names its subject in a record of its own is stored one way
//! ([`Links::link_from`]): a Planner task's record holds its marker and its TG case.

use async_nats::jetstream::kv;

/// One end of a link: a record in a system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// `tg`, `dataverse`, `planner`, `tgb`.
    pub system: &'a str,
    /// `case`, `incident`, `task`, `account`, `partner`, `exception`, ...
    pub kind: &'a str,
    /// The id in that system.
    pub id: &'a str,
}

impl<'a> Record<'a> {
    /// `system`/`kind`/`id`.
    pub fn new(system: &'a str, kind: &'a str, id: &'a str) -> Self {
        Record { system, kind, id }
    }
}

/// A KV operation on `tgb_links` failed.
#[derive(Debug, thiserror::Error)]
#[error("tgb_links {key}: {reason}")]
pub struct LinkError {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// Encodes an id for a KV key token: `[A-Za-z0-9-_]` stay, every other byte becomes `=XX`.
pub fn encode_token(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            other => out.push_str(&format!("={other:02X}")),
        }
    }
    out
}

fn key(from: &Record<'_>, to_system: &str, to_kind: &str) -> String {
    format!(
        "{}.{}.{}.{}.{}",
        from.system,
        from.kind,
        encode_token(from.id),
        to_system,
        to_kind
    )
}

/// The links bucket.
#[derive(Clone, Debug)]
pub struct Links {
    kv: kv::Store,
}

impl Links {
    /// Over the `tgb_links` store.
    pub fn new(kv: kv::Store) -> Self {
        Links { kv }
    }

    /// Records `a` ↔ `b` (both directions). Idempotent.
    pub async fn link(&self, a: &Record<'_>, b: &Record<'_>) -> Result<(), LinkError> {
        // Both directions at once: one round trip to the broker, not two.
        futures::future::try_join(self.link_from(a, b), self.link_from(b, a)).await?;
        Ok(())
    }

    /// Records `a` → `b` only: `b`'s side knows `a` from a record of its own, and nothing
    /// looks `a` up from `b` in this bucket. Idempotent.
    pub async fn link_from(&self, a: &Record<'_>, b: &Record<'_>) -> Result<(), LinkError> {
        let k = key(a, b.system, b.kind);
        self.kv
            .put(&k, b.id.to_owned().into())
            .await
            .map(drop)
            .map_err(|e| LinkError {
                key: k,
                reason: e.to_string(),
            })
    }

    /// The `to_system`/`to_kind` record linked to `from`, if any.
    pub async fn find(
        &self,
        from: &Record<'_>,
        to_system: &str,
        to_kind: &str,
    ) -> Result<Option<String>, LinkError> {
        let k = key(from, to_system, to_kind);
        match self.kv.get(&k).await {
            Ok(v) => Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned())),
            Err(e) => Err(LinkError {
                key: k,
                reason: e.to_string(),
            }),
        }
    }

    /// Every link of `from`: (`system.kind`, id) pairs.
    pub async fn all_of(&self, from: &Record<'_>) -> Result<Vec<(String, String)>, LinkError> {
        use futures::StreamExt;
        let prefix = format!("{}.{}.{}.", from.system, from.kind, encode_token(from.id));
        let err = |reason: String| LinkError {
            key: format!("{prefix}>"),
            reason,
        };
        let mut keys = self
            .kv
            .watch_with_history(format!("{prefix}>"))
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        // The watcher first replays what exists; `delta == 0` marks the last of them.
        loop {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), keys.next()).await;
            let entry = match next {
                Ok(Some(Ok(entry))) => entry,
                Ok(Some(Err(e))) => return Err(err(e.to_string())),
                Ok(None) | Err(_) => break,
            };
            if entry.operation == kv::Operation::Put {
                let other = entry
                    .key
                    .strip_prefix(&prefix)
                    .unwrap_or(&entry.key)
                    .to_owned();
                out.push((other, String::from_utf8_lossy(&entry.value).into_owned()));
            }
            if entry.delta == 0 {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::encode_token;

    #[test]
    fn ids_become_valid_key_tokens() {
        assert_eq!(encode_token("C-10492"), "C-10492");
        assert_eq!(encode_token("ZZ:ACME01"), "ZZ=3AACME01");
        assert_eq!(encode_token("a.b c"), "a=2Eb=20c");
    }
}
