//! The ledger: one entry per handled message, what was decided and why, so an operator can
//! answer "where is this partner's message, and why?" (`tgb history`) without reading logs.
//!
//! The consumer runner writes an entry after every handling, from the handler's
//! [`crate::Outcome`] (applied, echo, stale, duplicate, conflict and which side won, skipped;
//! the record and what it answered) or its error (`retried`, `dead_lettered`). Entries go to
//! `TGB_LEDGER` on `tgb.ledger.<correlation>`, so one business thread (a TG case) is one
//! subject.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::links::encode_token;
use crate::names;

/// What a handler decided for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The effect was made.
    Applied,
    /// A change made by tg-bridge itself came back: dropped.
    Echo,
    /// Older than what the target already has: dropped.
    Stale,
    /// Already applied (same event, same content): nothing to do.
    Duplicate,
    /// Both sides changed the same thing; the detail says which side won.
    Conflict,
    /// Nothing to do for this consumer (e.g. an event it only watches).
    Skipped,
    /// Failed transiently; will be delivered again.
    Retried,
    /// Given up: the message is in `TGB_DLQ`.
    DeadLettered,
}

impl Decision {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Applied => "applied",
            Decision::Echo => "echo",
            Decision::Stale => "stale",
            Decision::Duplicate => "duplicate",
            Decision::Conflict => "conflict",
            Decision::Skipped => "skipped",
            Decision::Retried => "retried",
            Decision::DeadLettered => "dead_lettered",
        }
    }
}

/// One ledger entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// RFC 3339 time of the decision.
    pub at: String,
    /// The consumer that handled the message.
    pub consumer: String,
    /// The event's subject.
    pub subject: String,
    /// The event id.
    pub event_id: String,
    /// The business thread (TG case id or partner key).
    pub correlation_id: String,
    /// `system:kind:id` of the entity.
    pub entity: String,
    /// The source version.
    pub entity_version: String,
    /// Delivery number.
    pub deliveries: i64,
    /// The decision.
    pub decision: Decision,
    /// Why, in words (e.g. "conflict on legal_name: dynamics won by policy").
    pub detail: String,
    /// The record written or considered, e.g. `dataverse:incident:<id>`.
    pub target: String,
    /// What the target answered, e.g. `204` or `412 → re-read → 200`.
    pub response: String,
    /// W3C trace id, to open in Jaeger.
    pub trace_id: String,
}

impl LedgerEntry {
    /// An entry for a decision taken outside a consumer handler: a poller or a webhook that
    /// found a change and dropped it (an echo, a stale version). Record it with
    /// [`crate::Publisher::record`].
    pub fn outside(
        source: &str,
        subject: &str,
        correlation_id: &str,
        entity: &str,
        entity_version: &str,
        decision: Decision,
        detail: impl Into<String>,
    ) -> Self {
        LedgerEntry {
            at: tgb_proto::timestamps::rfc3339(time::OffsetDateTime::now_utc()),
            consumer: source.to_owned(),
            subject: subject.to_owned(),
            event_id: String::new(),
            correlation_id: correlation_id.to_owned(),
            entity: entity.to_owned(),
            entity_version: entity_version.to_owned(),
            deliveries: 0,
            decision,
            detail: detail.into(),
            target: String::new(),
            response: String::new(),
            trace_id: String::new(),
        }
    }
}

/// The ledger subject of a correlation id.
pub fn subject_for(correlation_id: &str) -> String {
    format!(
        "tgb.ledger.{}",
        encode_token(if correlation_id.is_empty() {
            "-"
        } else {
            correlation_id
        })
    )
}

/// The trace id of a W3C `traceparent` header value.
pub fn trace_id_of(traceparent: &str) -> String {
    traceparent.split('-').nth(1).unwrap_or_default().to_owned()
}

/// Appends `entry` to the ledger. The append is not waited for: the ledger is an aid for
/// operators and never holds up or fails the handling it describes. It is a core publish to
/// the stream's subject (the stream stores it all the same) with no reply subject, so the
/// server sends no PubAck nobody would read (one broker message less per handled message).
pub(crate) async fn append(js: &jetstream::Context, entry: &LedgerEntry) {
    let payload = serde_json::to_vec(entry).expect("serialisable");
    if let Err(e) = js
        .client()
        .publish(subject_for(&entry.correlation_id), payload.into())
        .await
    {
        tracing::debug!(error = %e, "ledger entry not written");
    }
}

/// Every ledger entry of one business thread, oldest first.
pub async fn history(
    js: &jetstream::Context,
    correlation_id: &str,
) -> Result<Vec<LedgerEntry>, async_nats::Error> {
    let messages =
        crate::stored::messages_on(js, names::LEDGER_STREAM, &subject_for(correlation_id)).await?;
    Ok(messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<LedgerEntry>(&m.payload).ok())
        .collect())
}
