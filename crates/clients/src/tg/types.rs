//! The contract's bodies: webhook/feed events (TG → tg-bridge) and REST calls (tg-bridge → TG).
//!
//! [`parse_event`] validates a webhook body against the contract and names the failing field
//! (`data.revision: invalid type ...`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// A partner: EDI qualifier + id (the partner key `ZZ:ACME01`) and a display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partner {
    /// EDI qualifier, e.g. `ZZ`.
    pub qualifier: String,
    /// EDI id, e.g. `ACME01`.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
}

impl Partner {
    /// `QUALIFIER:ID`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.qualifier, self.id)
    }
}

/// A person (name and e-mail). Read tolerantly: the documented object `{name, email}` (either
/// may be missing), or a plain string as older portals send it (taken as the name, or as the
/// e-mail when it holds an `@`). Always written as the object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Person {
    /// Name.
    pub name: String,
    /// E-mail.
    #[serde(default)]
    pub email: String,
}

impl Person {
    /// The name, else the e-mail: how the person is shown.
    pub fn display(&self) -> &str {
        if self.name.trim().is_empty() {
            &self.email
        } else {
            &self.name
        }
    }
}

impl<'de> Deserialize<'de> for Person {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Text(String),
            Object {
                #[serde(default)]
                name: Option<String>,
                #[serde(default)]
                email: Option<String>,
            },
        }
        Ok(match Shape::deserialize(d)? {
            Shape::Text(t) if t.contains('@') => Person {
                name: String::new(),
                email: t,
            },
            Shape::Text(name) => Person {
                name,
                email: String::new(),
            },
            Shape::Object { name, email } => Person {
                name: name.unwrap_or_default(),
                email: email.unwrap_or_default(),
            },
        })
    }
}

/// Case categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Category {
    ShipmentDiscrepancy,
    InvoiceMismatch,
    ComplianceException,
    Pricing,
    Order,
    Other,
}

/// Case priorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Priority {
    Urgent,
    High,
    Normal,
    Low,
}

/// Case statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CaseStatus {
    Open,
    InProgress,
    WaitingOnPartner,
    Resolved,
    Closed,
}

/// `data` of `case.created` / `case.updated`, and the answer of `GET /v1/cases/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseData {
    pub case_id: String,
    pub revision: i64,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub category: Category,
    pub priority: Priority,
    pub status: CaseStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_ref: Option<String>,
    #[serde(default)]
    pub document_ids: Vec<String>,
    pub opened_by: Person,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Present in `GET /v1/cases/{id}`, not in webhook data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<Partner>,
    /// Present in `GET /v1/cases/{id}` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

/// Which side wrote a comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Side {
    Partner,
    Internal,
}

/// Author of a comment in `case.comment_added`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentAuthor {
    pub name: String,
    #[serde(default)]
    pub email: String,
    pub side: Side,
}

/// `data` of `case.comment_added`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommentData {
    pub case_id: String,
    pub comment_id: String,
    pub author: CommentAuthor,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Document types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum DocType {
    TaxForm,
    ComplianceCertificate,
    BankingDetails,
    TradingAgreement,
    ShippingInstructions,
    Contract,
    Other,
}

/// `data` of `document.uploaded`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentData {
    pub document_id: String,
    #[serde(default)]
    pub case_id: Option<String>,
    pub doc_type: DocType,
    pub file_name: String,
    pub media_type: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub expires_on: Option<String>,
    /// Who uploaded it: `{name, email}`, or a plain string from older portals.
    #[serde(default)]
    pub uploaded_by: Person,
}

/// Onboarding requirement states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum RequirementState {
    Pending,
    Submitted,
    Accepted,
    Rejected,
}

/// One external onboarding requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub label: String,
    pub state: RequirementState,
}

/// `data` of `onboarding.updated`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnboardingData {
    pub partner_revision: i64,
    pub requirements: Vec<Requirement>,
    pub profile_complete: bool,
    pub agreements_acknowledged: bool,
}

/// `data` of `discussion.action_item`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionItemData {
    pub thread_id: String,
    pub action_item_id: String,
    pub text: String,
    #[serde(default)]
    pub owner_hint: Option<String>,
    #[serde(default)]
    pub due_on: Option<String>,
    #[serde(default)]
    pub case_id: Option<String>,
}

/// An amount: the value is kept as its decimal text (a JSON number or string on the wire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Amount {
    #[serde(deserialize_with = "decimal_text")]
    pub value: String,
    pub currency: String,
}

fn decimal_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) if s.parse::<f64>().is_ok_and(f64::is_finite) => Ok(s),
        other => Err(D::Error::custom(format!(
            "expected a decimal number, got {other}"
        ))),
    }
}

/// Dispute statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum DisputeStatus {
    Open,
    UnderReview,
    Resolved,
}

/// `data` of `dispute.opened` / `dispute.updated`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DisputeData {
    pub dispute_id: String,
    pub revision: i64,
    pub invoice_ref: String,
    pub disputed_amount: Amount,
    pub reason: String,
    pub status: DisputeStatus,
    #[serde(default)]
    pub case_id: Option<String>,
}

/// A partner contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub contact_id: String,
    pub name: String,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub role: String,
}

/// Relationship states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Relationship {
    Active,
    Suspended,
    Terminated,
}

/// `data` of `partner.updated`. Addresses are free-form objects in the contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartnerData {
    pub revision: i64,
    pub legal_name: String,
    #[serde(default)]
    pub addresses: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    pub relationship: Relationship,
}

/// The `data` of an event, typed by its `type`.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum EventData {
    CaseCreated(CaseData),
    CaseUpdated(CaseData),
    CommentAdded(CommentData),
    DocumentUploaded(DocumentData),
    OnboardingUpdated(OnboardingData),
    ActionItem(ActionItemData),
    DisputeOpened(DisputeData),
    DisputeUpdated(DisputeData),
    PartnerUpdated(PartnerData),
    /// A type this version does not know: kept as received.
    Unknown(Value),
}

/// Every event type of the contract.
pub const KNOWN_TYPES: &[&str] = &[
    "case.created",
    "case.updated",
    "case.comment_added",
    "document.uploaded",
    "onboarding.updated",
    "discussion.action_item",
    "dispute.opened",
    "dispute.updated",
    "partner.updated",
];

/// A webhook body (also an element of the event feed), as received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    /// Unique per event (`evt_…`), the same on every retry and in the feed.
    pub id: String,
    /// `case.created`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The community.
    #[serde(default)]
    pub community_id: String,
    /// The partner; every known type has one.
    #[serde(default)]
    pub partner: Option<Partner>,
    /// Per type.
    #[serde(default)]
    pub data: Value,
}

/// A webhook body, validated and typed.
#[derive(Clone, Debug, PartialEq)]
pub struct TgEvent {
    /// `evt_…`.
    pub id: String,
    /// The `type` as received.
    pub kind: String,
    /// When it happened.
    pub occurred_at: OffsetDateTime,
    /// The community.
    pub community_id: String,
    /// The partner (always set for known types).
    pub partner: Option<Partner>,
    /// Typed data.
    pub data: EventData,
}

/// A body that does not follow the contract; `field` is the dotted path of the culprit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidBody {
    /// e.g. `data.revision`; empty when the body is not JSON at all.
    pub field: String,
    /// `data.revision: invalid type: string "x", expected i64 at line 1 column 9`.
    pub message: String,
}

fn invalid(prefix: &str, e: serde_path_to_error::Error<serde_json::Error>) -> InvalidBody {
    let inner = e.path().to_string();
    let field = match (prefix, inner.as_str()) {
        (p, ".") | (p, "") => p.to_owned(),
        ("", i) => i.to_owned(),
        (p, i) => format!("{p}.{i}"),
    };
    let reason = e.into_inner().to_string();
    let message = if field.is_empty() {
        reason
    } else {
        format!("{field}: {reason}")
    };
    InvalidBody { field, message }
}

fn data_of<T: serde::de::DeserializeOwned>(data: &Value) -> Result<T, InvalidBody> {
    serde_path_to_error::deserialize(data).map_err(|e| invalid("data", e))
}

/// Parses and validates a webhook body (or a feed element) against the contract.
pub fn parse_event(body: &[u8]) -> Result<TgEvent, InvalidBody> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let raw: RawEvent = serde_path_to_error::deserialize(de).map_err(|e| invalid("", e))?;
    validate(raw)
}

/// Validates an already-parsed envelope (feed elements).
pub fn validate(raw: RawEvent) -> Result<TgEvent, InvalidBody> {
    let required = |field: &str, value: &str| {
        if value.trim().is_empty() {
            Err(InvalidBody {
                field: field.to_owned(),
                message: format!("{field}: must not be empty"),
            })
        } else {
            Ok(())
        }
    };
    required("id", &raw.id)?;
    required("type", &raw.kind)?;
    let known = KNOWN_TYPES.contains(&raw.kind.as_str());
    if known {
        match &raw.partner {
            None => {
                return Err(InvalidBody {
                    field: "partner".into(),
                    message: "partner: missing field `partner`".into(),
                });
            }
            Some(p) => {
                required("partner.qualifier", &p.qualifier)?;
                required("partner.id", &p.id)?;
            }
        }
    }
    let d = &raw.data;
    let data = match raw.kind.as_str() {
        "case.created" => EventData::CaseCreated(data_of(d)?),
        "case.updated" => EventData::CaseUpdated(data_of(d)?),
        "case.comment_added" => EventData::CommentAdded(data_of(d)?),
        "document.uploaded" => EventData::DocumentUploaded(data_of(d)?),
        "onboarding.updated" => EventData::OnboardingUpdated(data_of(d)?),
        "discussion.action_item" => EventData::ActionItem(data_of(d)?),
        "dispute.opened" => EventData::DisputeOpened(data_of(d)?),
        "dispute.updated" => EventData::DisputeUpdated(data_of(d)?),
        "partner.updated" => EventData::PartnerUpdated(data_of(d)?),
        _ => EventData::Unknown(raw.data.clone()),
    };
    Ok(TgEvent {
        id: raw.id,
        kind: raw.kind,
        occurred_at: raw.occurred_at,
        community_id: raw.community_id,
        partner: raw.partner,
        data,
    })
}

/// `GET /v1/events` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsPage {
    /// Oldest first; each element as received (validate with [`validate`]).
    pub events: Vec<Value>,
    /// Where the next page starts.
    pub next_cursor: String,
}

/// An object in another system a case points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalRef {
    /// e.g. `dynamics`.
    pub system: String,
    /// The id there.
    pub id: String,
}

/// `POST /v1/cases` body.
#[derive(Clone, Debug, Serialize)]
pub struct NewCase {
    pub partner: Partner,
    pub title: String,
    pub description: String,
    pub category: Category,
    pub priority: Priority,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

/// `POST /v1/cases` answer.
#[derive(Clone, Debug, Deserialize)]
pub struct CaseCreated {
    pub case_id: String,
    pub revision: i64,
}

/// `PATCH /v1/cases/{id}` body.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CasePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CaseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

/// `{revision}` answers.
#[derive(Clone, Debug, Deserialize)]
pub struct Revision {
    pub revision: i64,
}

/// Who an API comment is from (always the internal side).
#[derive(Clone, Debug, Serialize)]
pub struct ApiAuthor {
    pub name: String,
    /// Always `internal`.
    pub side: Side,
}

/// Who sees a comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Visibility {
    Partner,
    Internal,
}

/// `POST /v1/cases/{id}/comments` body.
#[derive(Clone, Debug, Serialize)]
pub struct NewComment {
    pub body: String,
    pub author: ApiAuthor,
    pub visibility: Visibility,
}

/// `POST /v1/cases/{id}/comments` answer.
#[derive(Clone, Debug, Deserialize)]
pub struct CommentCreated {
    pub comment_id: String,
}

/// Review outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ReviewOutcome {
    Approved,
    Rejected,
    NeedsChanges,
}

/// `PUT /v1/documents/{id}/review` body.
#[derive(Clone, Debug, Serialize)]
pub struct Review {
    pub outcome: ReviewOutcome,
    pub note: String,
}

/// An internal onboarding step.
#[derive(Clone, Debug, Serialize)]
pub struct InternalStep {
    pub key: String,
    pub label: String,
    pub state: String,
}

/// Overall onboarding states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Overall {
    NotStarted,
    InProgress,
    Blocked,
    Complete,
}

/// `PUT /v1/partners/{key}/onboarding` body.
#[derive(Clone, Debug, Serialize)]
pub struct OnboardingStatus {
    pub requirements: Vec<Requirement>,
    pub internal_steps: Vec<InternalStep>,
    pub overall: Overall,
}

/// Order milestones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Milestone {
    Confirmed,
    ShipmentReleased,
    Backordered,
    Delivered,
}

/// `POST /v1/partners/{key}/orders/{order_ref}/milestones` body.
#[derive(Clone, Debug, Serialize)]
pub struct MilestoneBody {
    pub milestone: Milestone,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One KPI of a scorecard.
#[derive(Clone, Debug, Serialize)]
pub struct Kpi {
    /// `order_accuracy`, `case_response_time`, `shipment_timeliness`, `payment_compliance`.
    pub key: String,
    pub value: f64,
    pub unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

/// `PUT /v1/partners/{key}/scorecards/{period}` body.
#[derive(Clone, Debug, Serialize)]
pub struct Scorecard {
    /// `2026-11`.
    pub period: String,
    pub kpis: Vec<Kpi>,
}

/// `PATCH /v1/partners/{key}` body: approved master-data changes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartnerPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legal_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<Value>>,
}

/// Invoice payment state in a dispute update. Amounts are JSON numbers on the wire.
#[derive(Clone, Debug, Serialize)]
pub struct InvoiceStatus {
    pub paid_amount: serde_json::Number,
    pub open_amount: serde_json::Number,
    pub currency: String,
}

/// `PUT /v1/disputes/{id}` body.
#[derive(Clone, Debug, Serialize)]
pub struct DisputeUpdate {
    pub status: DisputeStatus,
    pub invoice_status: InvoiceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<MoneyBody>,
}

/// `{value, currency}` with a numeric value.
#[derive(Clone, Debug, Serialize)]
pub struct MoneyBody {
    pub value: serde_json::Number,
    pub currency: String,
}

/// A decimal text as a JSON number (`"1250.00"` → `1250.0`); `None` when it is not a number.
pub fn number(decimal: &str) -> Option<serde_json::Number> {
    let trimmed = decimal.trim();
    if trimmed.is_empty() {
        return Some(serde_json::Number::from(0));
    }
    serde_json::from_str::<serde_json::Number>(trimmed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, data: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_1", "type": kind, "occurred_at": "2026-11-21T09:14:03Z",
            "community_id": "c", "partner": {"qualifier": "ZZ", "id": "ACME01", "name": "Acme"},
            "data": data,
        }))
        .unwrap()
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let e = parse_event(&body(
            "case.updated",
            serde_json::json!({"case_id": "C-1", "revision": "x"}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "data.revision");
        assert!(e.message.starts_with("data.revision: invalid type"), "{e}");
    }

    #[test]
    fn a_missing_envelope_field_is_named() {
        let e = parse_event(br#"{"id":"evt_1","type":"x"}"#).unwrap_err();
        assert!(e.message.contains("occurred_at"), "{e}");
        let e = parse_event(b"not json").unwrap_err();
        assert!(e.field.is_empty());
    }

    #[test]
    fn nested_paths_and_enums_are_named() {
        let e = parse_event(&body(
            "onboarding.updated",
            serde_json::json!({"partner_revision": 1, "profile_complete": true,
                "agreements_acknowledged": false,
                "requirements": [{"key": "k", "label": "l", "state": "maybe"}]}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "data.requirements[0].state");
    }

    #[test]
    fn unknown_types_keep_their_data() {
        let e = parse_event(&body("case.teleported", serde_json::json!({"x": 1}))).unwrap();
        assert_eq!(e.data, EventData::Unknown(serde_json::json!({"x": 1})));
    }

    #[test]
    fn amounts_accept_numbers_and_decimal_text() {
        let d: DisputeData = serde_json::from_value(serde_json::json!({
            "dispute_id": "D-1", "revision": 1, "invoice_ref": "I", "reason": "r",
            "status": "open", "disputed_amount": {"value": 1250.5, "currency": "EUR"}}))
        .unwrap();
        assert_eq!(d.disputed_amount.value, "1250.5");
        assert_eq!(number("1250.00").unwrap().as_f64(), Some(1250.0));
        assert!(number("abc").is_none());
    }
}
