use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck};
use bytes::Bytes;
use tgb_proto::{BusEvent, Event};

use crate::{names, trace};

/// A publish that JetStream did not acknowledge.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event on {subject} has no meta.event_id")]
    NoEventId { subject: String },
    #[error("JetStream did not acknowledge the publish on {subject}: {reason}")]
    NotAcked { subject: String, reason: String },
}

/// Publishes events to `TGB_EVENTS`. Each call returns after the PubAck: when it returns `Ok`,
/// the event is stored (or was already stored under the same event id).
#[derive(Clone, Debug)]
pub struct Publisher {
    js: jetstream::Context,
}

impl Publisher {
    /// A publisher on `js` (services get theirs from [`crate::Bus::publisher`]; operator
    /// commands such as `tgb backfill` make one on their own connection).
    pub fn new(js: jetstream::Context) -> Self {
        Publisher { js }
    }

    /// Publishes a typed event on its subject.
    pub async fn publish<E: BusEvent>(&self, event: &E) -> Result<PublishAck, PublishError> {
        let id = event
            .meta()
            .map(|m| m.event_id.as_str())
            .unwrap_or_default();
        self.publish_bytes(
            E::SUBJECT,
            id,
            prost::Message::encode_to_vec(event).into(),
            HeaderMap::new(),
        )
        .await
    }

    /// Publishes any event on its subject.
    pub async fn publish_event(&self, event: &Event) -> Result<PublishAck, PublishError> {
        let id = event
            .meta()
            .map(|m| m.event_id.as_str())
            .unwrap_or_default();
        self.publish_bytes(
            event.subject(),
            id,
            event.encode_to_vec().into(),
            HeaderMap::new(),
        )
        .await
    }

    /// Appends a ledger entry (see [`crate::ledger::LedgerEntry::outside`]); never fails the
    /// caller.
    pub async fn record(&self, entry: &crate::ledger::LedgerEntry) {
        crate::ledger::append(&self.js, entry).await;
    }

    /// Publishes bytes with `Nats-Msg-Id` = `msg_id` and the current trace context added to
    /// `headers`.
    #[tracing::instrument(name = "publish", skip_all, fields(otel.kind = "producer", subject, msg_id))]
    pub async fn publish_bytes(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
        mut headers: HeaderMap,
    ) -> Result<PublishAck, PublishError> {
        tracing::Span::current()
            .record("subject", subject)
            .record("msg_id", msg_id);
        if msg_id.is_empty() {
            return Err(PublishError::NoEventId {
                subject: subject.to_owned(),
            });
        }
        headers.insert(names::HDR_MSG_ID, msg_id);
        trace::inject_current(&mut headers);
        let not_acked = |reason: String| PublishError::NotAcked {
            subject: subject.to_owned(),
            reason,
        };
        let ack: PublishAckFuture = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| not_acked(e.to_string()))?;
        let ack = tokio::time::timeout(Duration::from_secs(10), ack.into_future())
            .await
            .map_err(|_| not_acked("no PubAck within 10 s".into()))?
            .map_err(|e| not_acked(e.to_string()))?;
        metrics::counter!("tgb_bus_published_total", "subject" => subject.to_owned(), "duplicate" => ack.duplicate.to_string())
            .increment(1);
        Ok(ack)
    }
}
