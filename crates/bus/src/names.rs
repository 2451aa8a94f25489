//! Names of every stream, bucket, store and header tg-bridge uses on NATS.

/// Every event: `tgb.v1.<origin>.<aggregate>.<event>`.
pub const EVENTS_STREAM: &str = "TGB_EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "tgb.v1.>";
/// Dead letters: `tgb.dlq.<consumer>.<original subject without "tgb.">`.
pub const DLQ_STREAM: &str = "TGB_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "tgb.dlq.>";

/// Decisions taken per message, by business thread: `tgb.ledger.<correlation>`.
pub const LEDGER_STREAM: &str = "TGB_LEDGER";
/// Subjects of [`LEDGER_STREAM`].
pub const LEDGER_SUBJECTS: &str = "tgb.ledger.>";

/// TG case ↔ Dynamics incident ↔ Planner tasks, partner ↔ account.
pub const KV_LINKS: &str = "tgb_links";
/// Last applied version and written fingerprint per entity and target.
pub const KV_SYNC: &str = "tgb_sync";
/// Poll cursors and delta links.
pub const KV_CURSORS: &str = "tgb_cursors";
/// SLA clocks.
pub const KV_SLA: &str = "tgb_sla";
/// Every KV bucket, with its history depth.
pub const KV_BUCKETS: &[(&str, i64)] = &[(KV_LINKS, 5), (KV_SYNC, 1), (KV_CURSORS, 1), (KV_SLA, 1)];

/// Document contents fetched from TG.
pub const OBJECT_DOCUMENTS: &str = "tgb_documents";

/// Deduplication id of a publish (JetStream).
pub const HDR_MSG_ID: &str = "Nats-Msg-Id";
/// Why a message was dead-lettered: `permanent`, `undecodable`, `max_deliver`.
pub const HDR_ERROR_KIND: &str = "tgb-error-kind";
/// The error text.
pub const HDR_ERROR: &str = "tgb-error";
/// The consumer that gave up.
pub const HDR_CONSUMER: &str = "tgb-consumer";
/// How many deliveries were made.
pub const HDR_DELIVERIES: &str = "tgb-deliveries";
/// The subject the message was published on.
pub const HDR_ORIGINAL_SUBJECT: &str = "tgb-original-subject";
/// Its sequence in [`EVENTS_STREAM`].
pub const HDR_ORIGINAL_SEQ: &str = "tgb-original-seq";

/// The DLQ subject for a message of `subject` given up by `consumer`.
pub fn dlq_subject(consumer: &str, subject: &str) -> String {
    format!(
        "tgb.dlq.{consumer}.{}",
        subject.strip_prefix("tgb.").unwrap_or(subject)
    )
}
