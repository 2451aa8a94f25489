//! Per-key async locks that do not outlive their use.
//!
//! A consumer serialises work on one entity (a case, a task) with a lock per key. A plain map of
//! locks grows by one entry per entity ever seen, for the life of the process. [`KeyedLocks`]
//! drops the entries nobody holds or waits for: an entry whose `Arc` only the map still owns.
//! That test is exact, because new handles are only cloned under the map's own mutex. Pruning
//! runs when the map has doubled since the last prune, so it costs O(1) per call on average and
//! the map stays within twice the number of keys in use (or [`KeyedLocks::MIN_PRUNE_AT`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A map of async mutexes by key whose unused entries are pruned.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    prune_at: usize,
}

impl KeyedLocks {
    /// The map is never pruned below this many entries (pruning a small map is not worth it).
    pub const MIN_PRUNE_AT: usize = 1024;

    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lock of `key`: the same one for as long as anybody holds or waits on it.
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = inner.locks.get(key) {
            return lock.clone();
        }
        if inner.locks.len() >= inner.prune_at.max(Self::MIN_PRUNE_AT) {
            inner.locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            inner.prune_at = inner.locks.len().saturating_mul(2);
        }
        inner.locks.entry(key.to_owned()).or_default().clone()
    }

    /// Locks `key` (an owned guard, so it can be held across awaits and moved).
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.get(key).lock_owned().await
    }

    /// Entries in the map (in use, or not yet pruned).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .locks
            .len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set size of this process, KiB (Linux; 0 elsewhere).
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_hundred_thousand_entities_leave_a_bounded_map() {
        let locks = KeyedLocks::new();
        let before = rss_kib();
        for i in 0..100_000 {
            let _guard = locks
                .lock(&format!("incident:{i:08x}-0000-0000-0000-000000000000"))
                .await;
        }
        let after = rss_kib();
        // What the plain map did: one entry per entity, kept.
        let mut plain: HashMap<String, Arc<tokio::sync::Mutex<()>>> = HashMap::new();
        for i in 0..100_000 {
            let lock = plain
                .entry(format!("incident:{i:08x}-0000-0000-0000-000000000000"))
                .or_default()
                .clone();
            drop(lock.lock().await);
        }
        let plain_after = rss_kib();
        println!(
            "100000 distinct entities locked once each: {} entries left (a plain map: {}); \
             RSS {before} KiB before, {after} KiB after, {plain_after} KiB once the plain map \
             holds them too",
            locks.len(),
            plain.len()
        );
        assert!(
            locks.len() <= KeyedLocks::MIN_PRUNE_AT,
            "{} entries",
            locks.len()
        );
    }

    #[tokio::test]
    async fn a_held_or_awaited_lock_survives_pruning_and_still_excludes() {
        let locks = KeyedLocks::new();
        let held = locks.lock("case:held").await;
        let waiting = locks.get("case:awaited");
        let _waiting_guard = waiting.try_lock().unwrap();
        for i in 0..10 * KeyedLocks::MIN_PRUNE_AT {
            drop(locks.lock(&format!("other:{i}")).await);
        }
        assert!(
            locks.get("case:held").try_lock().is_err(),
            "a second lock of a held key was handed out"
        );
        assert!(Arc::ptr_eq(&locks.get("case:awaited"), &waiting));
        drop(held);
        assert!(locks.get("case:held").try_lock().is_ok());
    }
}
