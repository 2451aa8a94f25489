//! One budget for all replicas of an adapter: each replica of a governor lane takes an equal
//! slice of the lane's limits (rate and concurrency), renewed through KV.
//!
//! The members of a lane are one KV entry (`fleet.<lane>` in `tgb_sync`): a map of member →
//! expiry (Unix ms), written with compare-and-set (a conflict re-reads and retries). Every
//! `renew` each member renews its own expiry, drops expired members and sets its governor's
//! share to `1 / members` ([`tgb_governor::Governor::set_share`]). So the fleet together stays
//! under the lane's limits:
//!
//! - a joining replica registers, then waits one `renew` and a half before its first request
//!   ([`Fleet::join`]): by then every member has renewed and taken the smaller slice;
//! - a replica that leaves removes itself ([`Fleet::leave`]); one that crashes drops out after
//!   `ttl`: until then the others keep the smaller slice (under the limit, never over);
//! - a replica that cannot reach KV keeps its last slice: members only ever grow their slice
//!   after seeing the others gone.
//! - a 429 one member received pauses the fleet: the entry also holds the lane's pause
//!   (`paused_until_ms`), which each member raises to its own and waits out at its next
//!   renewal ([`tgb_governor::Governor::pause_shared`]), so the others stop sending into the
//!   target's throttling period (Dataverse lengthens it for every request sent in it).
//!
//! The cost is that an idle replica's slice is unused by the others (leased slices, not one
//! shared bucket): the fleet sends at most the limit, and at least the limit only when every
//! replica is busy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tgb_governor::Governor;
use tokio_util::sync::CancellationToken;

/// A KV failure around the fleet's members.
#[derive(Debug, thiserror::Error)]
#[error("fleet budget {key}: {message}")]
pub struct FleetError {
    key: String,
    message: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Members {
    /// Member → expiry, Unix milliseconds.
    members: BTreeMap<String, i64>,
    /// Until when the lane is paused after a 429 one of the members received, Unix ms.
    #[serde(default)]
    paused_until_ms: i64,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// This replica's membership in one lane's fleet.
#[derive(Clone)]
pub struct Fleet {
    kv: kv::Store,
    key: String,
    member: String,
    ttl: Duration,
    renew: Duration,
}

impl Fleet {
    /// The fleet of `lane` (a governor lane name) in `kv` (`tgb_sync`); a member renews every
    /// `renew` and is dropped after `ttl` without renewal.
    pub fn new(kv: kv::Store, lane: &str, ttl: Duration, renew: Duration) -> Fleet {
        Fleet {
            kv,
            key: format!("fleet.{}", crate::links::encode_token(lane)),
            member: ulid::Ulid::new().to_string(),
            ttl,
            renew,
        }
    }

    fn error(&self, e: impl ToString) -> FleetError {
        FleetError {
            key: self.key.clone(),
            message: e.to_string(),
        }
    }

    /// Applies `change` to the members with compare-and-set (retrying on a conflict); answers
    /// the live members after it.
    async fn change(&self, change: impl Fn(&mut Members)) -> Result<usize, FleetError> {
        self.change_seen(change).await.map(|(n, _)| n)
    }

    /// [`Self::change`], also answering the fleet's pause (Unix ms) after it.
    async fn change_seen(&self, change: impl Fn(&mut Members)) -> Result<(usize, i64), FleetError> {
        for _ in 0..32 {
            let (mut m, revision) = match self.kv.entry(&self.key).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Members>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Ok(_) => (Members::default(), None),
                Err(e) => return Err(self.error(e)),
            };
            let now = now_ms();
            m.members.retain(|_, expires| *expires > now);
            change(&mut m);
            let n = m.members.len();
            let paused_until_ms = m.paused_until_ms;
            let value = serde_json::to_vec(&m).map_err(|e| self.error(e))?.into();
            let written = match revision {
                None => match self.kv.create(&self.key, value).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(self.error(e)),
                },
                Some(rev) => match self.kv.update(&self.key, value, rev).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(self.error(e)),
                },
            };
            if written {
                return Ok((n, paused_until_ms));
            }
        }
        Err(self.error("too many concurrent writers"))
    }

    /// Registers or renews this member; answers the live members (this one included).
    pub async fn beat(&self) -> Result<usize, FleetError> {
        let expires = now_ms() + self.ttl.as_millis() as i64;
        self.change(|m| {
            m.members.insert(self.member.clone(), expires);
        })
        .await
    }

    /// Removes this member (the others take its slice at their next renewal).
    pub async fn leave(&self) -> Result<usize, FleetError> {
        self.change(|m| {
            m.members.remove(&self.member);
        })
        .await
    }

    /// Registers, sets `governor`'s share, and waits until every member has seen this one (one
    /// renewal period and a half) before answering: call it before the lane's first request.
    pub async fn join(&self, governor: &Governor) -> Result<(), FleetError> {
        let n = self.beat().await?;
        governor.set_share(1.0 / n as f64);
        tokio::time::sleep(self.renew + self.renew / 2).await;
        let n = self.beat().await?;
        governor.set_share(1.0 / n as f64);
        Ok(())
    }

    /// Renews this member and keeps `governor`'s share at `1 / members` until `shutdown`, then
    /// leaves.
    pub async fn run(self, governor: Arc<Governor>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.renew) => {}
                _ = shutdown.cancelled() => break,
            }
            // A 429 this replica received is the fleet's pause; one another received is ours.
            let now = now_ms();
            let own = governor
                .pause_remaining()
                .map_or(0, |d| now + d.as_millis() as i64);
            let expires = now + self.ttl.as_millis() as i64;
            let beat = self
                .change_seen(|m| {
                    m.members.insert(self.member.clone(), expires);
                    m.paused_until_ms = m.paused_until_ms.max(own);
                })
                .await;
            match beat {
                Ok((n, paused_until_ms)) => {
                    governor.set_share(1.0 / n as f64);
                    // Only a pause that outlasts this replica's own is another's: feeding its
                    // own 429s back would hold its climb at every renewal of a run of refusals
                    // (a storm of 429s spaced by their pauses then never saw a whole probe
                    // interval, and the lane stayed at its floor until the storm had passed).
                    let remaining = paused_until_ms - now_ms();
                    if paused_until_ms > own && remaining > 0 {
                        governor.pause_shared(Duration::from_millis(remaining as u64));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the fleet budget; keeping this replica's slice")
                }
            }
        }
        if let Err(e) = self.leave().await {
            tracing::warn!(error = %e, "cannot leave the fleet budget; the others wait for this member to expire");
        }
    }
}
