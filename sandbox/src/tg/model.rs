//! The records the TG emulator holds, and the inputs of its scripting API.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Now, as RFC 3339 UTC to the second (`2026-11-21T09:14:03Z`).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Case categories of the contract.
pub const CATEGORIES: &[&str] = &[
    "shipment_discrepancy",
    "invoice_mismatch",
    "compliance_exception",
    "pricing",
    "order",
    "other",
];
/// Case priorities of the contract.
pub const PRIORITIES: &[&str] = &["urgent", "high", "normal", "low"];
/// Case statuses of the contract.
pub const STATUSES: &[&str] = &[
    "open",
    "in_progress",
    "waiting_on_partner",
    "resolved",
    "closed",
];
/// Document types of the contract.
pub const DOC_TYPES: &[&str] = &[
    "tax_form",
    "compliance_certificate",
    "banking_details",
    "trading_agreement",
    "shipping_instructions",
    "contract",
    "other",
];
/// Onboarding requirement states.
pub const REQUIREMENT_STATES: &[&str] = &["pending", "submitted", "accepted", "rejected"];
/// Dispute statuses.
pub const DISPUTE_STATUSES: &[&str] = &["open", "under_review", "resolved"];
/// Review outcomes.
pub const REVIEW_OUTCOMES: &[&str] = &["approved", "rejected", "needs_changes"];
/// Overall onboarding states (internal side).
pub const ONBOARDING_OVERALL: &[&str] = &["not_started", "in_progress", "blocked", "complete"];
/// Order milestones.
pub const MILESTONES: &[&str] = &["confirmed", "shipment_released", "backordered", "delivered"];
/// Scorecard KPI keys.
pub const KPI_KEYS: &[&str] = &[
    "order_accuracy",
    "case_response_time",
    "shipment_timeliness",
    "payment_compliance",
];
/// Partner relationship states.
pub const RELATIONSHIPS: &[&str] = &["active", "suspended", "terminated"];

/// A partner as events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerRef {
    /// EDI qualifier.
    pub qualifier: String,
    /// EDI id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
}

impl PartnerRef {
    /// `ZZ:ACME01`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.qualifier, self.id)
    }
}

/// A person on the partner's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Person {
    /// Name.
    pub name: String,
    /// E-mail.
    #[serde(default)]
    pub email: String,
}

/// An object in another system a case points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// e.g. `dynamics`.
    pub system: String,
    /// The id there.
    pub id: String,
}

/// A partner and everything TG keeps about it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Partner {
    /// EDI qualifier.
    pub qualifier: String,
    /// EDI id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Grows by one at each change.
    pub revision: u64,
    /// Legal name.
    pub legal_name: String,
    /// Addresses (free-form objects).
    pub addresses: Vec<Value>,
    /// Contacts (`{contact_id, name, email, phone?, role}`).
    pub contacts: Vec<Value>,
    /// `active`, `suspended` or `terminated`.
    pub relationship: String,
    /// The partner-side onboarding state (what `onboarding.updated` carries).
    pub onboarding: Option<Value>,
    /// The internal onboarding status last written by `PUT …/onboarding`.
    pub onboarding_status: Option<Value>,
}

impl Partner {
    pub(crate) fn new(r: &PartnerRef) -> Self {
        Self {
            qualifier: r.qualifier.clone(),
            id: r.id.clone(),
            name: r.name.clone(),
            revision: 1,
            legal_name: r.name.clone(),
            addresses: Vec::new(),
            contacts: Vec::new(),
            relationship: "active".into(),
            onboarding: None,
            onboarding_status: None,
        }
    }

    /// The reference events carry.
    pub fn as_ref(&self) -> PartnerRef {
        PartnerRef {
            qualifier: self.qualifier.clone(),
            id: self.id.clone(),
            name: self.name.clone(),
        }
    }
}

/// A collaboration case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    /// e.g. `C-10001`.
    pub case_id: String,
    /// Grows by one at each change.
    pub revision: u64,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// One of [`CATEGORIES`].
    pub category: String,
    /// One of [`PRIORITIES`].
    pub priority: String,
    /// One of [`STATUSES`].
    pub status: String,
    /// Order reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_ref: Option<String>,
    /// Invoice reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_ref: Option<String>,
    /// Documents attached.
    pub document_ids: Vec<String>,
    /// Who opened it.
    pub opened_by: Person,
    /// Last change.
    pub updated_at: String,
    /// The partner.
    pub partner: PartnerRef,
    /// The object in another system (set by `POST /v1/cases` or `PATCH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

impl Case {
    /// The `data` of `case.created` / `case.updated`.
    pub fn event_data(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("partner");
            o.remove("external_ref");
        }
        v
    }
}

/// A comment on a case, from either side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comment {
    /// e.g. `cm_01J…`.
    pub comment_id: String,
    /// The case.
    pub case_id: String,
    /// `{name, email?, side}`.
    pub author: Value,
    /// Text.
    pub body: String,
    /// `partner` or `internal` (partner comments are `partner`).
    pub visibility: String,
    /// When.
    pub created_at: String,
    /// `partner` (scripting API) or `api` (REST).
    pub source: String,
}

/// A document and its bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Document {
    /// e.g. `doc_01J…`.
    pub document_id: String,
    /// The partner.
    pub partner: PartnerRef,
    /// The case it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// One of [`DOC_TYPES`].
    pub doc_type: String,
    /// File name.
    pub file_name: String,
    /// Media type.
    pub media_type: String,
    /// Real size in bytes.
    pub size: u64,
    /// The sha256 announced in the event (hex); may differ from the bytes on purpose.
    pub sha256: String,
    /// The real sha256 of the bytes (hex).
    pub actual_sha256: String,
    /// Expiry date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<String>,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// Review outcomes written by the API, oldest first.
    pub reviews: Vec<Value>,
    /// The bytes (not in snapshots).
    #[serde(skip)]
    pub content: Vec<u8>,
}

/// A dispute.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dispute {
    /// e.g. `D-5001`.
    pub dispute_id: String,
    /// Grows by one at each change.
    pub revision: u64,
    /// The partner.
    pub partner: PartnerRef,
    /// Invoice.
    pub invoice_ref: String,
    /// `{value, currency}`.
    pub disputed_amount: Money,
    /// Reason given by the partner.
    pub reason: String,
    /// One of [`DISPUTE_STATUSES`].
    pub status: String,
    /// Linked case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// Invoice status written by the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_status: Option<Value>,
    /// Resolution note written by the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_note: Option<String>,
    /// Adjustment written by the API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<Value>,
}

impl Dispute {
    /// The `data` of `dispute.opened` / `dispute.updated`.
    pub fn event_data(&self) -> Value {
        let mut v = serde_json::json!({
            "dispute_id": self.dispute_id,
            "revision": self.revision,
            "invoice_ref": self.invoice_ref,
            "disputed_amount": self.disputed_amount,
            "reason": self.reason,
            "status": self.status,
        });
        if let Some(c) = &self.case_id {
            v["case_id"] = Value::String(c.clone());
        }
        v
    }
}

/// An amount.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Money {
    /// Value.
    pub value: f64,
    /// ISO currency.
    pub currency: String,
}

/// An event, as webhooks and the feed carry it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TgEvent {
    /// `evt_<ulid>`; also the `webhook-id`.
    pub id: String,
    /// e.g. `case.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When.
    pub occurred_at: String,
    /// The community.
    pub community_id: String,
    /// The partner.
    pub partner: PartnerRef,
    /// Type-specific data.
    pub data: Value,
}

/// A write received by the REST API, as recorded for tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedWrite {
    /// HTTP method.
    pub method: String,
    /// Path (below `/tg`).
    pub path: String,
    /// `Idempotency-Key`, if sent.
    pub idempotency_key: Option<String>,
    /// Whether this was a replay answered from the idempotency store.
    pub replayed: bool,
    /// Status answered.
    pub status: u16,
    /// Body received.
    pub request: Value,
    /// Body answered.
    pub response: Value,
    /// When.
    pub at: String,
}

/// Input of [`crate::Tg::raise_case`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaiseCase {
    /// The partner raising it (registered if new).
    pub partner: PartnerRef,
    /// Title.
    pub title: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Category (default `other`).
    #[serde(default = "default_category")]
    pub category: String,
    /// Priority (default `normal`).
    #[serde(default = "default_priority")]
    pub priority: String,
    /// Order reference.
    #[serde(default)]
    pub order_ref: Option<String>,
    /// Invoice reference.
    #[serde(default)]
    pub invoice_ref: Option<String>,
    /// Who opens it (default: a contact of the partner).
    #[serde(default)]
    pub opened_by: Option<Person>,
}

fn default_category() -> String {
    "other".into()
}
fn default_priority() -> String {
    "normal".into()
}

impl RaiseCase {
    /// A case with a title, defaults elsewhere.
    pub fn new(partner: PartnerRef, title: impl Into<String>) -> Self {
        Self {
            partner,
            title: title.into(),
            description: String::new(),
            category: default_category(),
            priority: default_priority(),
            order_ref: None,
            invoice_ref: None,
            opened_by: None,
        }
    }
}

/// Input of [`crate::Tg::update_case`]: the partner changes these fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateCase {
    /// Title.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Priority.
    pub priority: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Order reference.
    pub order_ref: Option<String>,
    /// Invoice reference.
    pub invoice_ref: Option<String>,
}

/// Input of [`crate::Tg::partner_comment`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerComment {
    /// The author (side `partner`).
    pub author: Person,
    /// Text.
    pub body: String,
}

/// Input of [`crate::Tg::upload_document`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadDocument {
    /// The partner (default: the case's partner).
    pub partner: Option<PartnerRef>,
    /// The case it belongs to.
    pub case_id: Option<String>,
    /// Document type (default `other`).
    pub doc_type: Option<String>,
    /// File name (default `document.pdf`).
    pub file_name: Option<String>,
    /// Media type (default `application/pdf`).
    pub media_type: Option<String>,
    /// The bytes, base64 (HTTP scripting).
    pub content_base64: Option<String>,
    /// The bytes (library calls).
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
    /// Generate this many deterministic bytes when no content is given (default 1024).
    pub generate_size: Option<usize>,
    /// Announce this sha256 (hex) instead of the real one, to test verification.
    pub announce_sha256: Option<String>,
    /// Expiry date (`2027-01-31`).
    pub expires_on: Option<String>,
    /// Who uploaded it (default `partner`).
    pub uploaded_by: Option<String>,
}

/// Input of [`crate::Tg::open_dispute`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenDispute {
    /// The partner.
    pub partner: PartnerRef,
    /// Invoice.
    pub invoice_ref: String,
    /// Amount disputed.
    pub disputed_amount: Money,
    /// Reason.
    pub reason: String,
    /// Linked case.
    #[serde(default)]
    pub case_id: Option<String>,
}

/// Input of [`crate::Tg::update_dispute`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateDispute {
    /// Status.
    pub status: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// Amount.
    pub disputed_amount: Option<Money>,
}

/// A partner-side onboarding requirement.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Key.
    pub key: String,
    /// Label.
    pub label: String,
    /// One of [`REQUIREMENT_STATES`].
    pub state: String,
}

/// Input of [`crate::Tg::update_onboarding`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateOnboarding {
    /// Requirements.
    pub requirements: Vec<Requirement>,
    /// Profile complete.
    pub profile_complete: bool,
    /// Agreements acknowledged.
    pub agreements_acknowledged: bool,
}

/// Input of [`crate::Tg::flag_action_item`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagActionItem {
    /// The partner.
    pub partner: PartnerRef,
    /// Discussion thread (default: a new one).
    #[serde(default)]
    pub thread_id: Option<String>,
    /// Text.
    pub text: String,
    /// Owner hint.
    #[serde(default)]
    pub owner_hint: Option<String>,
    /// Due date.
    #[serde(default)]
    pub due_on: Option<String>,
    /// Linked case.
    #[serde(default)]
    pub case_id: Option<String>,
}

/// Input of [`crate::Tg::change_partner_profile`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChangePartnerProfile {
    /// Legal name.
    pub legal_name: Option<String>,
    /// Addresses.
    pub addresses: Option<Vec<Value>>,
    /// Contacts.
    pub contacts: Option<Vec<Value>>,
    /// Relationship.
    pub relationship: Option<String>,
}

/// Input of [`crate::Tg::emit_raw`]: any event type, e.g. one the contract does not know yet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The partner.
    pub partner: PartnerRef,
    /// Data.
    #[serde(default)]
    pub data: Value,
}
