//! The polling fallback: reads `GET /v1/events` from the cursor kept in KV `tgb_cursors`
//! (key [`CURSOR_KEY`]), at start and then on an interval. Each event is published (PubAck)
//! before the cursor moves past it, so a crash or an outage re-reads rather than skips; events
//! that also came by webhook carry the same event id and are stored once.

use std::sync::Arc;
use std::time::Duration;

use tgb_bus::names;
use tgb_clients::tg::{TgClient, TgError};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::{Ingress, PublishFailure, mapping};

/// The key of the feed cursor in `tgb_cursors`.
pub const CURSOR_KEY: &str = "tg.events";

/// Why a poll round stopped early (the next round starts from the stored cursor).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("reading the feed: {0}")]
    Feed(#[from] TgError),
    #[error("publishing: {0}")]
    Publish(#[from] PublishFailure),
    #[error("cursor: {0}")]
    Cursor(String),
}

/// Polls until `shutdown` is cancelled. Failures are logged and retried at the next round.
pub async fn run(
    ingress: Arc<Ingress>,
    client: TgClient,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let interval = Duration::from_millis(ingress.settings.poll_interval_ms.max(10));
    loop {
        let round = tokio::select! {
            r = poll_once(&ingress, &client) => r,
            _ = shutdown.cancelled() => return Ok(()),
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
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// One round: every page from the cursor to the end of the feed. Returns the events published.
pub async fn poll_once(ingress: &Ingress, client: &TgClient) -> Result<usize, PollError> {
    let kv = ingress
        .bus
        .kv(names::KV_CURSORS)
        .await
        .map_err(|e| PollError::Cursor(e.to_string()))?;
    let mut cursor = kv
        .get(CURSOR_KEY)
        .await
        .map_err(|e| PollError::Cursor(e.to_string()))?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let limit = ingress.settings.poll_page_size.clamp(1, 500);
    let mut published = 0;
    loop {
        let page = client.events(cursor.as_deref(), limit).await?;
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
        for raw in page.events {
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
        if page.next_cursor.is_empty() || cursor.as_deref() == Some(page.next_cursor.as_str()) {
            break;
        }
        kv.put(CURSOR_KEY, page.next_cursor.clone().into_bytes().into())
            .await
            .map_err(|e| PollError::Cursor(e.to_string()))?;
        cursor = Some(page.next_cursor);
        if n < usize::from(limit) {
            break;
        }
    }
    metrics::gauge!("tgb_tg_poll_lag_seconds").set(0.0);
    Ok(published)
}
