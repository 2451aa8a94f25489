//! One poller across replicas: a lease in a KV bucket, and the loop that runs a poller while
//! this replica holds it ([`Lease::lead`]).
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
//! A lease bounds the overlap, it does not make it impossible (a paused process can resume
//! after its lease ran out): what a poller writes must also be safe when two run for a moment.
//! A cursor written with [`crate::cursor::Cursor`] is: a write at a revision another replica
//! has moved past is refused.
//!
//! (Moved from planner-adapter, where it guards the plan poller; tg-ingress's feed poller uses
//! it too.)

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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
#[error("poller lease {key}: {message}")]
pub struct LeaseError {
    key: String,
    message: String,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// This replica's side of one lease (cheap to clone).
#[derive(Clone)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    holder: String,
    ttl: Duration,
    renew: Duration,
}

impl Lease {
    /// The lease `key` in `kv`, held for `ttl` and renewed every `renew`; `service` names
    /// this replica in the value when `HOSTNAME` is not set.
    pub fn new(
        kv: kv::Store,
        key: impl Into<String>,
        service: &str,
        ttl: Duration,
        renew: Duration,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| service.to_owned());
        Lease {
            kv,
            key: key.into(),
            holder: format!("{host}/{}", ulid::Ulid::new()),
            ttl,
            renew,
        }
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Who this replica is in the lease's value.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How often the holder renews and a follower tries to take over.
    pub fn renew_every(&self) -> Duration {
        self.renew
    }

    fn error(&self, message: impl ToString) -> LeaseError {
        LeaseError {
            key: self.key.clone(),
            message: message.to_string(),
        }
    }

    fn value(&self, expires_at_ms: i64) -> Result<Vec<u8>, LeaseError> {
        let v = LeaseValue {
            holder: self.holder.clone(),
            expires_at_ms,
        };
        serde_json::to_vec(&v).map_err(|e| self.error(e))
    }

    fn fresh(&self) -> Result<Vec<u8>, LeaseError> {
        self.value(now_ms() + self.ttl.as_millis() as i64)
    }

    /// The lease's value now, if any.
    pub async fn current(&self) -> Result<Option<(LeaseValue, u64)>, LeaseError> {
        match self.kv.entry(&self.key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                // An unreadable value is treated as expired: it gets overwritten.
                let v = serde_json::from_slice(&e.value).unwrap_or(LeaseValue {
                    holder: String::new(),
                    expires_at_ms: 0,
                });
                Ok(Some((v, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn update(&self, value: Vec<u8>, revision: u64) -> Result<Option<u64>, LeaseError> {
        match self.kv.update(&self.key, value.into(), revision).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// One attempt to hold the lease: its revision when this replica holds it now.
    pub async fn try_acquire(&self) -> Result<Option<u64>, LeaseError> {
        match self.current().await? {
            None => match self.kv.create(&self.key, self.fresh()?.into()).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(self.error(e)),
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
                    tracing::warn!(lease = %self.key, "another replica took the poller lease; this one stops polling");
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

    /// Runs `work` while this replica holds the lease, until `shutdown`: waits for the lease
    /// (a try every `renew`), then runs `work(stop)` beside the renewals; `stop` is cancelled
    /// when the lease is lost or on shutdown, and `work` must then return. After a loss it
    /// waits for the lease again; on shutdown it releases the lease. The gauge
    /// `tgb_poller_leader{lease}` is 1 while held.
    pub async fn lead<F, Fut>(&self, shutdown: &CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let gauge = metrics::gauge!("tgb_poller_leader", "lease" => self.key.clone());
        gauge.set(0.0);
        loop {
            let revision = loop {
                match self.try_acquire().await {
                    Ok(Some(rev)) => break rev,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the poller lease; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.renew) => {}
                    _ = shutdown.cancelled() => return,
                }
            };
            tracing::info!(lease = %self.key, holder = %self.holder, "this replica runs the poller (lease taken)");
            gauge.set(1.0);
            let stop = shutdown.child_token();
            let run = work(stop.clone());
            // Polled together in this task: when the work ends, the renewals end with it.
            let (_, held) = tokio::join!(
                async {
                    run.await;
                    stop.cancel();
                },
                self.clone().keep(revision, stop.clone())
            );
            gauge.set(0.0);
            if shutdown.is_cancelled() {
                if let Some(rev) = held {
                    self.release(rev).await;
                }
                return;
            }
        }
    }
}
