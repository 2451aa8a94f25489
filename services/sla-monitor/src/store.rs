//! The clocks in `tgb_sla`, read and changed with compare-and-set on the KV revision, so
//! concurrent handlers, the ticker and other replicas never overwrite each other.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tgb_bus::async_nats;
use tgb_bus::links::encode_token;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::state::CaseClock;

/// A KV operation failed, or kept losing the race ([`tgb_bus::kv::KvError`]).
pub type StoreError = tgb_bus::kv::KvError;

/// What a change function decided about a clock.
pub type Change<T> = tgb_bus::kv::Change<CaseClock, T>;

/// The clocks bucket.
#[derive(Clone, Debug)]
pub struct Clocks {
    kv: kv::Store,
}

/// The KV key of a case's clock.
pub fn key_of(case_id: &str) -> String {
    format!("case.{}", encode_token(case_id))
}

impl Clocks {
    /// Over the `tgb_sla` store.
    pub fn new(kv: kv::Store) -> Self {
        Clocks { kv }
    }

    /// The clock under `key` and its revision (0 when never written).
    pub async fn read(&self, key: &str) -> Result<(Option<CaseClock>, u64), StoreError> {
        tgb_bus::kv::read_json(&self.kv, key).await
    }

    /// Reads the clock of `key`, lets `change` decide, and writes with compare-and-set; on a lost
    /// race it reads again and asks `change` again (bounded: [`tgb_bus::kv::update_json`]).
    pub async fn update<T>(
        &self,
        key: &str,
        change: impl FnMut(Option<CaseClock>) -> Change<T>,
    ) -> Result<T, StoreError> {
        tgb_bus::kv::update_json(&self.kv, key, change).await
    }

    /// [`Clocks::update`] of a clock that most likely does not exist yet (its case just
    /// opened): created without reading first; read and changed as usual when it does exist.
    pub async fn update_new<T>(
        &self,
        key: &str,
        change: impl FnMut(Option<CaseClock>) -> Change<T>,
    ) -> Result<T, StoreError> {
        tgb_bus::kv::update_json_hinted(&self.kv, key, (None, 0), change)
            .await
            .map(|(out, _)| out)
    }

    /// Removes `key` if it is still at the revision of `clock` as read (a changed clock stays).
    pub async fn remove_if_unchanged(
        &self,
        key: &str,
        clock: &CaseClock,
    ) -> Result<(), StoreError> {
        let (current, revision) = self.read(key).await?;
        if current.as_ref() == Some(clock) {
            // A lost race just leaves the clock for the next tick.
            let _ = self.kv.delete_expect_revision(key, Some(revision)).await;
        }
        Ok(())
    }
}

/// Every clock, kept current by a KV watcher, so a tick reads memory instead of the bucket.
#[derive(Debug)]
pub struct Cache {
    clocks: Mutex<BTreeMap<String, CaseClock>>,
    synced: watch::Sender<bool>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            clocks: Mutex::new(BTreeMap::new()),
            synced: watch::Sender::new(false),
        }
    }
}

impl Cache {
    /// Every clock with its key, as last seen.
    pub fn snapshot(&self) -> Vec<(String, CaseClock)> {
        self.clocks
            .lock()
            .unwrap()
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect()
    }

    /// Waits until the cache holds every clock of the bucket (the watcher caught up).
    pub async fn wait_synced(&self, shutdown: &CancellationToken) {
        let mut rx = self.synced.subscribe();
        tokio::select! {
            _ = rx.wait_for(|s| *s) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    fn apply(&self, entry: &kv::Entry) {
        let mut clocks = self.clocks.lock().unwrap();
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<CaseClock>(&entry.value) {
                Ok(c) => {
                    clocks.insert(entry.key.clone(), c);
                }
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "not a clock; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                clocks.remove(&entry.key);
            }
        }
    }
}

impl Clocks {
    /// Keeps `cache` equal to the bucket until `shutdown`: replays the latest entry of every key,
    /// marks the cache synced, then follows changes. A broken watch is re-established.
    pub async fn watch_into(
        &self,
        cache: &Cache,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.follow(cache, &shutdown).await {
                cache.synced.send_replace(false);
                tracing::warn!(error = %e, "tgb_sla watch broke; re-establishing");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        Ok(())
    }

    async fn follow(&self, cache: &Cache, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let stored = self.kv.status().await?.values();
        let mut entries = self.kv.watch_with_history(">").await?;
        cache.clocks.lock().unwrap().clear();
        if stored == 0 {
            cache.synced.send_replace(true);
        }
        loop {
            let entry = tokio::select! {
                e = entries.next() => e,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let entry = match entry {
                Some(e) => e?,
                None => anyhow::bail!("the watch ended"),
            };
            cache.apply(&entry);
            if entry.delta == 0 || entry.seen_current {
                cache.synced.send_replace(true);
            }
        }
    }
}
