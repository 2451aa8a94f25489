//! The polling fallback: reads `GET /v1/events` from the cursor kept in KV `tgb_cursors`
//! (key [`CURSOR_KEY`], a [`FeedCursor`]), at start and then on an interval. Each event is
//! published (PubAck) before the cursor moves past it, so a crash or an outage re-reads rather
//! than skips; events that also came by webhook carry the same event id and are stored once.
//!
//! First start (no cursor): the feed has no parameter to start at a time (its only position is
//! `after`, an opaque cursor), so the poller reads it from its beginning and publishes only what
//! [`StartFrom`] lets through until it has reached the end once: with `now` (the default),
//! nothing that was in the feed at first start; with a time, only events that occurred at or
//! after it; with `beginning`, everything. The choice and the start time are stored with the
//! cursor before the first page is read, so a restart during the catch-up keeps them.
//!
//! One replica polls at a time: the holder of the lease [`LEASE_KEY`] in `tgb_sync`
//! ([`tgb_bus::lease::Lease`]). The cursor is written with compare-and-set at the revision the
//! round read ([`tgb_bus::cursor::Cursor`]): a replica that lost the lease mid-round cannot
//! move it back; its write is refused and the round ends.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tgb_bus::cursor::{Cursor, CursorError};
use tgb_bus::lease::Lease;
use tgb_bus::names;
use tgb_clients::tg::{TgClient, TgError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::{Ingress, PublishFailure, mapping};

/// The key of the feed cursor in `tgb_cursors`.
pub const CURSOR_KEY: &str = "tg.events";

/// The key of the feed poller's lease in `tgb_sync`.
pub const LEASE_KEY: &str = "tg-poller.leader";

/// `[tg_ingress] start_from`: where the feed poller starts when there is no cursor yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StartFrom {
    /// Only what happens after the first start (the default): day one creates nothing old.
    #[default]
    Now,
    /// The whole feed, from its first event.
    Beginning,
    /// Events that occurred at or after this time.
    At(OffsetDateTime),
}

impl TryFrom<String> for StartFrom {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.trim() {
            "now" => Ok(StartFrom::Now),
            "beginning" => Ok(StartFrom::Beginning),
            t => OffsetDateTime::parse(t, &Rfc3339)
                .map(StartFrom::At)
                .map_err(|_| {
                    format!(
                        "start_from must be \"now\", \"beginning\" or an RFC 3339 time such as \
                     2026-01-31T00:00:00Z, not '{s}'"
                    )
                }),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Now => f.write_str("now"),
            StartFrom::Beginning => f.write_str("beginning"),
            StartFrom::At(t) => f.write_str(&rfc3339(*t)),
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The value of [`CURSOR_KEY`]: where the next poll reads, and how the poller started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedCursor {
    /// The `after` of the next request (the last `next_cursor`); empty = the feed's start.
    #[serde(default)]
    pub after: String,
    /// `start_from` as it was at first start (later changes of the setting do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<String>,
    /// Until caught up, events that occurred before this time (RFC 3339) are read, not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// When the poller first started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The poller has read the feed to its end at least once since first start.
    #[serde(default)]
    pub caught_up: bool,
    /// Events read but not published because they were older than the start.
    #[serde(default)]
    pub skipped: u64,
}

impl FeedCursor {
    /// The cursor of a first start at `now`.
    pub fn first(start_from: StartFrom, now: OffsetDateTime) -> FeedCursor {
        let not_before = match start_from {
            // From the start of the current second: a feed whose times have whole seconds
            // then never hides an event that occurred in the second of the start.
            StartFrom::Now => Some(now.replace_nanosecond(0).unwrap_or(now)),
            StartFrom::Beginning => None,
            StartFrom::At(t) => Some(t),
        };
        FeedCursor {
            after: String::new(),
            start_from: Some(start_from.to_string()),
            not_before: not_before.map(rfc3339),
            started_at: Some(rfc3339(now)),
            caught_up: not_before.is_none(),
            skipped: 0,
        }
    }

    /// Reads a stored value; a value that is not JSON is a cursor written before the start
    /// position existed (a bare `next_cursor`): a poller that has long caught up.
    pub fn parse(bytes: &[u8]) -> FeedCursor {
        serde_json::from_slice(bytes).unwrap_or_else(|_| FeedCursor {
            after: String::from_utf8_lossy(bytes).into_owned(),
            caught_up: true,
            ..FeedCursor::default()
        })
    }

    /// Whether an event that occurred at `occurred_at` is published (an unreadable time is:
    /// the event is kept, as unknown if need be, rather than dropped).
    pub fn publishes(&self, occurred_at: Option<&str>) -> bool {
        if self.caught_up {
            return true;
        }
        let (Some(nb), Some(at)) = (self.not_before.as_deref(), occurred_at) else {
            return true;
        };
        match (
            OffsetDateTime::parse(nb, &Rfc3339),
            OffsetDateTime::parse(at, &Rfc3339),
        ) {
            (Ok(nb), Ok(at)) => at >= nb,
            _ => true,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings serializes")
    }
}

/// Why a poll round stopped early (the next round starts from the stored cursor).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("reading the feed: {0}")]
    Feed(#[from] TgError),
    #[error("publishing: {0}")]
    Publish(#[from] PublishFailure),
    #[error("cursor: {0}")]
    Cursor(#[from] CursorError),
    #[error("opening {bucket}: {message}")]
    Bucket {
        bucket: &'static str,
        message: String,
    },
}

/// Polls until `shutdown` is cancelled, while this replica holds the poller `lease` (one
/// poller across replicas); otherwise tries to take the lease every renewal period.
pub async fn run(
    ingress: Arc<Ingress>,
    client: TgClient,
    lease: Lease,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(
        start_from = %ingress.settings.start_from,
        "TG feed poller: start position of a first start (a stored cursor takes precedence)"
    );
    lease
        .lead(&shutdown, |stop| {
            poll_until(ingress.clone(), client.clone(), stop)
        })
        .await;
    Ok(())
}

/// Polls now and then every interval until `stop`. Failures are logged and retried at the next
/// round.
async fn poll_until(ingress: Arc<Ingress>, client: TgClient, stop: CancellationToken) {
    let interval = Duration::from_millis(ingress.settings.poll_interval_ms.max(10));
    loop {
        // A round under way when the lease is lost ends at its next cursor write at the latest:
        // the write is refused.
        let round = tokio::select! {
            r = poll_once(&ingress, &client) => r,
            _ = stop.cancelled() => return,
        };
        match round {
            Ok(n) => {
                metrics::gauge!("tgb_tg_poll_last_success_timestamp_seconds")
                    .set(OffsetDateTime::now_utc().unix_timestamp() as f64);
                if n > 0 {
                    tracing::debug!(events = n, "feed poll published");
                }
            }
            Err(e) => {
                metrics::counter!("tgb_tg_poll_failures_total").increment(1);
                tracing::warn!(error = %e, "feed poll failed; retrying at the next round");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The feed cursor in `tgb_cursors`.
pub async fn cursor(ingress: &Ingress) -> Result<Cursor, PollError> {
    let kv = ingress
        .bus
        .kv(names::KV_CURSORS)
        .await
        .map_err(|e| PollError::Bucket {
            bucket: names::KV_CURSORS,
            message: e.to_string(),
        })?;
    Ok(Cursor::new(kv, CURSOR_KEY))
}

async fn write_cursor(
    kv: &Cursor,
    cursor: &FeedCursor,
    revision: Option<u64>,
) -> Result<u64, PollError> {
    Ok(kv.store(cursor.to_bytes().into(), revision).await?)
}

/// One round: every page from the cursor to the end of the feed. Returns the events published.
pub async fn poll_once(ingress: &Ingress, client: &TgClient) -> Result<usize, PollError> {
    let kv = cursor(ingress).await?;
    let (mut cursor, mut revision) = match kv.load().await? {
        Some((bytes, rev)) => (FeedCursor::parse(&bytes), rev),
        None => {
            let start_from = ingress.settings.start_from;
            let c = FeedCursor::first(start_from, OffsetDateTime::now_utc());
            // Stored before the first page: a restart during the catch-up keeps the start time.
            let rev = write_cursor(&kv, &c, None).await?;
            tracing::info!(
                %start_from,
                not_before = c.not_before.as_deref().unwrap_or("-"),
                "first start of the TG feed poller: no cursor yet"
            );
            (c, rev)
        }
    };
    let limit = ingress.settings.poll_page_size.clamp(1, 500);
    let mut published = 0;
    loop {
        let after = (!cursor.after.is_empty()).then_some(cursor.after.as_str());
        let page = client.events(after, limit).await?;
        let n = page.events.len();
        if let Some(first) = page.events.first() {
            let lag = first
                .get("occurred_at")
                .and_then(serde_json::Value::as_str)
                .and_then(tgb_proto::timestamps::parse_rfc3339)
                .map(|t| (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0))
                .unwrap_or(0.0);
            metrics::gauge!("tgb_tg_poll_lag_seconds").set(lag);
        }
        let mut skipped = 0;
        for raw in page.events {
            let occurred_at = raw.get("occurred_at").and_then(serde_json::Value::as_str);
            if !cursor.publishes(occurred_at) {
                skipped += 1;
                continue;
            }
            let event = match serde_json::from_value(raw.clone())
                .map_err(|e| e.to_string())
                .and_then(|r| tgb_clients::tg::validate(r).map_err(|e| e.message))
            {
                Ok(tg) => {
                    let bytes = serde_json::to_vec(&raw).unwrap_or_default();
                    mapping::to_event(&tg, &bytes)
                }
                Err(reason) => {
                    metrics::counter!("tgb_tg_feed_invalid_total").increment(1);
                    tracing::warn!(%reason, "feed element does not follow the contract; kept as unknown");
                    mapping::unparseable_feed_event(&raw)
                }
            };
            let duplicate = ingress.publish(&event).await?;
            metrics::counter!("tgb_tg_polled_events_total", "duplicate" => duplicate.to_string())
                .increment(1);
            published += 1;
        }
        if skipped > 0 {
            metrics::counter!("tgb_tg_poll_skipped_before_start_total").increment(skipped);
            cursor.skipped += skipped;
        }
        let moved = !page.next_cursor.is_empty() && page.next_cursor != cursor.after;
        let at_end = !moved || n < usize::from(limit);
        if moved {
            cursor.after = page.next_cursor;
        }
        let caught_up_now = at_end && !cursor.caught_up;
        if caught_up_now {
            cursor.caught_up = true;
        }
        if moved || caught_up_now {
            revision = write_cursor(&kv, &cursor, Some(revision)).await?;
        }
        if caught_up_now {
            tracing::info!(
                start_from = cursor.start_from.as_deref().unwrap_or("-"),
                skipped = cursor.skipped,
                cursor = %cursor.after,
                "the TG feed poller has caught up with the feed"
            );
        }
        if at_end {
            break;
        }
    }
    metrics::gauge!("tgb_tg_feed_caught_up").set(1.0);
    metrics::gauge!("tgb_tg_poll_lag_seconds").set(0.0);
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn start_from_reads_now_beginning_or_a_time_and_refuses_anything_else() {
        assert_eq!(StartFrom::try_from("now".to_owned()), Ok(StartFrom::Now));
        assert_eq!(
            StartFrom::try_from("beginning".to_owned()),
            Ok(StartFrom::Beginning)
        );
        assert_eq!(
            StartFrom::try_from("2026-01-31T00:00:00Z".to_owned()),
            Ok(StartFrom::At(at("2026-01-31T00:00:00Z")))
        );
        let e = StartFrom::try_from("yesterday".to_owned()).unwrap_err();
        assert!(e.contains("'yesterday'") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn a_first_start_at_now_publishes_only_what_occurs_from_then_until_caught_up() {
        let now = at("2026-12-04T10:00:00.500Z");
        let mut c = FeedCursor::first(StartFrom::Now, now);
        assert!(!c.caught_up);
        assert!(!c.publishes(Some("2026-12-04T09:59:59Z")));
        assert!(!c.publishes(Some("2020-01-01T00:00:00Z")));
        assert!(
            c.publishes(Some("2026-12-04T10:00:00Z")),
            "the second of the start"
        );
        assert!(c.publishes(Some("2026-12-04T10:00:01Z")));
        assert!(c.publishes(None), "an event without a time is kept");
        c.caught_up = true;
        assert!(c.publishes(Some("2020-01-01T00:00:00Z")));
    }

    #[test]
    fn beginning_publishes_everything_and_a_time_only_what_is_newer() {
        let now = at("2026-12-04T10:00:00Z");
        let b = FeedCursor::first(StartFrom::Beginning, now);
        assert!(b.caught_up && b.not_before.is_none());
        assert!(b.publishes(Some("2000-01-01T00:00:00Z")));
        let t = FeedCursor::first(StartFrom::At(at("2026-11-01T00:00:00Z")), now);
        assert!(!t.publishes(Some("2026-10-31T23:59:59Z")));
        assert!(t.publishes(Some("2026-11-01T00:00:00Z")));
        assert_eq!(t.start_from.as_deref(), Some("2026-11-01T00:00:00Z"));
    }

    #[test]
    fn a_bare_cursor_of_an_older_version_reads_as_caught_up() {
        let c = FeedCursor::parse(b"15");
        assert_eq!(c.after, "15");
        assert!(c.caught_up);
        let round = FeedCursor::first(StartFrom::Now, at("2026-12-04T10:00:00Z"));
        assert_eq!(FeedCursor::parse(&round.to_bytes()), round);
    }
}
