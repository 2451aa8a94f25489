//! One poller across replicas: a lease in KV (`tgb_sync`, key [`LEASE_KEY`]).
//!
//! The value names the holder and when its lease runs out (`expires_at_ms`, Unix
//! milliseconds): a per-key TTL would need a newer nats-server than tg-bridge supports. Every
//! write is a compare-and-set on the entry's revision:
//!
//! - a replica takes the lease by creating the key, or by updating it at the revision it read
//!   when the value's expiry is past (the holder stopped renewing) or names itself;
//! - the holder renews every `renew` (expiry = now + `ttl`); a renewal that finds another
//!   revision means another replica took over: it stops polling at once;
//! - a holder that cannot reach KV stops polling before its lease can have run out
//!   (`ttl` − `renew` after its last renewal), so two pollers overlap only if clocks disagree
//!   by more than `renew`;
//! - on shutdown the holder writes an expired value, so another replica takes over within one
//!   `renew` instead of one `ttl`.
//!
//! Polling twice is wasteful, never wrong: a progress event's id derives from the task's ETag, so
//! JetStream drops the second publish.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tgb_bus::async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

/// The lease's key in `tgb_sync`.
pub const LEASE_KEY: &str = "planner-poller.leader";

/// The lease's value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseValue {
    /// The replica holding it (host name and a per-process ULID).
    pub holder: String,
    /// When it runs out unless renewed, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A KV failure around the lease.
#[derive(Debug, thiserror::Error)]
#[error("poller lease {LEASE_KEY}: {0}")]
pub struct LeaseError(String);

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// This replica's side of the lease (cheap to clone).
#[derive(Clone)]
pub struct Lease {
    kv: kv::Store,
    holder: String,
    ttl: Duration,
    renew: Duration,
}

impl Lease {
    /// The lease over `kv`, held for `ttl` and renewed every `renew`.
    pub fn new(kv: kv::Store, ttl: Duration, renew: Duration) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "planner-adapter".into());
        Lease {
            kv,
            holder: format!("{host}/{}", ulid::Ulid::new()),
            ttl,
            renew,
        }
    }

    /// Who this replica is in the lease's value.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How often the holder renews and a follower tries to take over.
    pub fn renew_every(&self) -> Duration {
        self.renew
    }

    fn value(&self, expires_at_ms: i64) -> Result<Vec<u8>, LeaseError> {
        let v = LeaseValue {
            holder: self.holder.clone(),
            expires_at_ms,
        };
        serde_json::to_vec(&v).map_err(|e| LeaseError(e.to_string()))
    }

    fn fresh(&self) -> Result<Vec<u8>, LeaseError> {
        self.value(now_ms() + self.ttl.as_millis() as i64)
    }

    /// The lease's value now, if any.
    pub async fn current(&self) -> Result<Option<(LeaseValue, u64)>, LeaseError> {
        match self.kv.entry(LEASE_KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                // An unreadable value is treated as expired: it gets overwritten.
                let v = serde_json::from_slice(&e.value).unwrap_or(LeaseValue {
                    holder: String::new(),
                    expires_at_ms: 0,
                });
                Ok(Some((v, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(LeaseError(e.to_string())),
        }
    }

    async fn update(&self, value: Vec<u8>, revision: u64) -> Result<Option<u64>, LeaseError> {
        match self.kv.update(LEASE_KEY, value.into(), revision).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(LeaseError(e.to_string())),
        }
    }

    /// One attempt to hold the lease: its revision when this replica holds it now.
    pub async fn try_acquire(&self) -> Result<Option<u64>, LeaseError> {
        match self.current().await? {
            None => match self.kv.create(LEASE_KEY, self.fresh()?.into()).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(LeaseError(e.to_string())),
            },
            Some((v, rev)) if v.holder == self.holder || v.expires_at_ms <= now_ms() => {
                self.update(self.fresh()?, rev).await
            }
            Some(_) => Ok(None),
        }
    }

    /// Renews the lease held at `revision`: the new revision, or `None` when another replica
    /// has taken it.
    pub async fn renew(&self, revision: u64) -> Result<Option<u64>, LeaseError> {
        self.update(self.fresh()?, revision).await
    }

    /// Gives the lease up (an expired value at `revision`), so a follower need not wait `ttl`.
    pub async fn release(&self, revision: u64) {
        match self.value(0) {
            Ok(v) => {
                if let Err(e) = self.update(v, revision).await {
                    tracing::warn!(error = %e, "could not release the poller lease; it runs out by itself");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not release the poller lease"),
        }
    }

    /// Renews the lease held at `revision` until `stop` is cancelled (then answers the revision
    /// still held) or the lease is lost (then cancels `stop` and answers `None`).
    pub async fn keep(self, mut revision: u64, stop: CancellationToken) -> Option<u64> {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.renew) => {}
                _ = stop.cancelled() => return Some(revision),
            }
            match self.renew(revision).await {
                Ok(Some(rev)) => {
                    revision = rev;
                    renewed = Instant::now();
                }
                Ok(None) => {
                    tracing::warn!("another replica took the poller lease; this one stops polling");
                    stop.cancel();
                    return None;
                }
                Err(e) => {
                    // Stop before a follower can consider the lease run out.
                    let deadline = self.ttl.saturating_sub(self.renew);
                    if renewed.elapsed() + self.renew >= deadline {
                        tracing::warn!(error = %e, "cannot renew the poller lease; this replica stops polling");
                        stop.cancel();
                        return None;
                    }
                    tracing::warn!(error = %e, "cannot renew the poller lease; retrying");
                }
            }
        }
    }
}
