//! A TG event (webhook body or feed element) → its protobuf event.
//!
//! - subject: `case.created` → `tgb.v1.tg.case.opened`, other known types on their own subject,
//!   unknown types → `tgb.v1.tg.unknown.received` with the raw body;
//! - `event_id`: a ULID derived from the TG event alone (timestamp = `occurred_at`, randomness =
//!   the first 80 bits of SHA-256 of the TG event id), so the same TG event gets the same id
//!   whether it arrives by webhook (any retry) or by the feed, and JetStream's duplicate window
//!   (`Nats-Msg-Id` = event id) stores it once;
//! - `correlation_id`: the TG case id, else the partner key `QUALIFIER:ID`;
//! - `entity_version`: the TG revision; `partner`: qualifier, id and name.

use sha2::{Digest, Sha256};
use tgb_clients::tg::{self, EventData, TgEvent};
use tgb_proto as pb;
use tgb_proto::timestamps::timestamp;
use time::OffsetDateTime;

/// The event id of the TG event `tg_id` that occurred at `occurred_at`.
pub fn event_id(tg_id: &str, occurred_at: OffsetDateTime) -> ulid::Ulid {
    let millis = (occurred_at.unix_timestamp_nanos() / 1_000_000).clamp(0, (1 << 48) - 1) as u64;
    let digest = Sha256::digest(tg_id.as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    ulid::Ulid::from_parts(millis, u128::from_be_bytes(random))
}

fn partner_ref(p: &tg::Partner) -> pb::PartnerRef {
    pb::PartnerRef {
        qualifier: p.qualifier.clone(),
        id: p.id.clone(),
        name: p.name.clone(),
    }
}

fn person(p: &tg::Person) -> pb::Person {
    pb::Person {
        name: p.name.clone(),
        email: p.email.clone(),
    }
}

fn category(c: tg::Category) -> pb::CaseCategory {
    use tg::Category::*;
    match c {
        ShipmentDiscrepancy => pb::CaseCategory::ShipmentDiscrepancy,
        InvoiceMismatch => pb::CaseCategory::InvoiceMismatch,
        ComplianceException => pb::CaseCategory::ComplianceException,
        Pricing => pb::CaseCategory::Pricing,
        Order => pb::CaseCategory::Order,
        Other => pb::CaseCategory::Other,
    }
}

fn priority(p: tg::Priority) -> pb::CasePriority {
    use tg::Priority::*;
    match p {
        Urgent => pb::CasePriority::Urgent,
        High => pb::CasePriority::High,
        Normal => pb::CasePriority::Normal,
        Low => pb::CasePriority::Low,
    }
}

fn status(s: tg::CaseStatus) -> pb::CaseStatus {
    use tg::CaseStatus::*;
    match s {
        Open => pb::CaseStatus::Open,
        InProgress => pb::CaseStatus::InProgress,
        WaitingOnPartner => pb::CaseStatus::WaitingOnPartner,
        Resolved => pb::CaseStatus::Resolved,
        Closed => pb::CaseStatus::Closed,
    }
}

fn case(c: &tg::CaseData, community: &str) -> pb::TgCase {
    pb::TgCase {
        case_id: c.case_id.clone(),
        revision: c.revision,
        title: c.title.clone(),
        description: c.description.clone(),
        category: category(c.category) as i32,
        priority: priority(c.priority) as i32,
        status: status(c.status) as i32,
        order_ref: c.order_ref.clone().unwrap_or_default(),
        invoice_ref: c.invoice_ref.clone().unwrap_or_default(),
        document_ids: c.document_ids.clone(),
        opened_by: Some(person(&c.opened_by)),
        updated_at: Some(timestamp(c.updated_at)),
        community_id: community.to_owned(),
    }
}

fn doc_type(d: tg::DocType) -> pb::DocType {
    use tg::DocType::*;
    match d {
        TaxForm => pb::DocType::TaxForm,
        ComplianceCertificate => pb::DocType::ComplianceCertificate,
        BankingDetails => pb::DocType::BankingDetails,
        TradingAgreement => pb::DocType::TradingAgreement,
        ShippingInstructions => pb::DocType::ShippingInstructions,
        Contract => pb::DocType::Contract,
        Other => pb::DocType::Other,
    }
}

fn requirement(r: &tg::Requirement) -> pb::OnboardingRequirement {
    use tg::RequirementState::*;
    let state = match r.state {
        Pending => pb::RequirementState::Pending,
        Submitted => pb::RequirementState::Submitted,
        Accepted => pb::RequirementState::Accepted,
        Rejected => pb::RequirementState::Rejected,
    };
    pb::OnboardingRequirement {
        key: r.key.clone(),
        label: r.label.clone(),
        state: state as i32,
    }
}

fn dispute(d: &tg::DisputeData) -> pb::TgDispute {
    use tg::DisputeStatus::*;
    let status = match d.status {
        Open => pb::DisputeStatus::Open,
        UnderReview => pb::DisputeStatus::UnderReview,
        Resolved => pb::DisputeStatus::Resolved,
    };
    pb::TgDispute {
        dispute_id: d.dispute_id.clone(),
        revision: d.revision,
        invoice_ref: d.invoice_ref.clone(),
        disputed_amount: Some(pb::Money {
            value: d.disputed_amount.value.clone(),
            currency: d.disputed_amount.currency.clone(),
        }),
        reason: d.reason.clone(),
        status: status as i32,
        case_id: d.case_id.clone().unwrap_or_default(),
    }
}

fn address(a: &serde_json::Map<String, serde_json::Value>) -> pb::Address {
    let get = |k: &str| {
        a.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    pb::Address {
        kind: get("kind"),
        line1: get("line1"),
        line2: get("line2"),
        city: get("city"),
        postal_code: get("postal_code"),
        region: get("region"),
        country: get("country"),
    }
}

fn profile(p: &tg::PartnerData) -> pb::PartnerProfile {
    use tg::Relationship::*;
    let relationship = match p.relationship {
        Active => pb::Relationship::Active,
        Suspended => pb::Relationship::Suspended,
        Terminated => pb::Relationship::Terminated,
    };
    pb::PartnerProfile {
        revision: p.revision,
        legal_name: p.legal_name.clone(),
        addresses: p.addresses.iter().map(address).collect(),
        contacts: p
            .contacts
            .iter()
            .map(|c| pb::Contact {
                contact_id: c.contact_id.clone(),
                name: c.name.clone(),
                email: c.email.clone(),
                phone: c.phone.clone().unwrap_or_default(),
                role: c.role.clone(),
            })
            .collect(),
        relationship: relationship as i32,
    }
}

/// The protobuf event of a validated TG event. `raw` is the body as received (kept verbatim
/// for unknown types).
pub fn to_event(e: &TgEvent, raw: &[u8]) -> pb::Event {
    let partner_key = e.partner.as_ref().map(tg::Partner::key);
    let fallback = || partner_key.clone().unwrap_or_else(|| e.id.clone());
    let community = e.community_id.as_str();
    // (event, correlation id, entity kind, entity id, entity version)
    let (event, correlation, kind, id, version): (pb::Event, String, &str, String, String) =
        match &e.data {
            EventData::CaseCreated(c) => (
                pb::TgCaseOpened {
                    meta: None,
                    case: Some(case(c, community)),
                }
                .into(),
                c.case_id.clone(),
                "case",
                c.case_id.clone(),
                c.revision.to_string(),
            ),
            EventData::CaseUpdated(c) => (
                pb::TgCaseUpdated {
                    meta: None,
                    case: Some(case(c, community)),
                }
                .into(),
                c.case_id.clone(),
                "case",
                c.case_id.clone(),
                c.revision.to_string(),
            ),
            EventData::CommentAdded(c) => (
                pb::TgCommentAdded {
                    meta: None,
                    case_id: c.case_id.clone(),
                    comment_id: c.comment_id.clone(),
                    author: Some(pb::Person {
                        name: c.author.name.clone(),
                        email: c.author.email.clone(),
                    }),
                    side: match c.author.side {
                        tg::Side::Partner => pb::CommentSide::Partner,
                        tg::Side::Internal => pb::CommentSide::Internal,
                    } as i32,
                    body: c.body.clone(),
                    created_at: Some(timestamp(c.created_at)),
                }
                .into(),
                c.case_id.clone(),
                // A comment is handled in the order of its case's thread.
                "case",
                c.case_id.clone(),
                String::new(),
            ),
            EventData::DocumentUploaded(d) => (
                pb::TgDocumentUploaded {
                    meta: None,
                    document: Some(pb::TgDocument {
                        document_id: d.document_id.clone(),
                        case_id: d.case_id.clone().unwrap_or_default(),
                        doc_type: doc_type(d.doc_type) as i32,
                        file_name: d.file_name.clone(),
                        media_type: d.media_type.clone(),
                        size: d.size,
                        sha256: d.sha256.to_ascii_lowercase(),
                        expires_on: d.expires_on.clone().unwrap_or_default(),
                        uploaded_by: d.uploaded_by.display().to_owned(),
                    }),
                }
                .into(),
                d.case_id.clone().unwrap_or_else(fallback),
                "document",
                d.document_id.clone(),
                String::new(),
            ),
            EventData::OnboardingUpdated(o) => (
                pb::TgOnboardingUpdated {
                    meta: None,
                    partner_revision: o.partner_revision,
                    requirements: o.requirements.iter().map(requirement).collect(),
                    profile_complete: o.profile_complete,
                    agreements_acknowledged: o.agreements_acknowledged,
                }
                .into(),
                fallback(),
                "partner",
                fallback(),
                o.partner_revision.to_string(),
            ),
            EventData::ActionItem(a) => (
                pb::TgActionItemFlagged {
                    meta: None,
                    thread_id: a.thread_id.clone(),
                    action_item_id: a.action_item_id.clone(),
                    text: a.text.clone(),
                    owner_hint: a.owner_hint.clone().unwrap_or_default(),
                    due_on: a.due_on.clone().unwrap_or_default(),
                    case_id: a.case_id.clone().unwrap_or_default(),
                }
                .into(),
                a.case_id.clone().unwrap_or_else(fallback),
                "action_item",
                a.action_item_id.clone(),
                String::new(),
            ),
            EventData::DisputeOpened(d) => (
                pb::TgDisputeOpened {
                    meta: None,
                    dispute: Some(dispute(d)),
                }
                .into(),
                d.case_id.clone().unwrap_or_else(fallback),
                "dispute",
                d.dispute_id.clone(),
                d.revision.to_string(),
            ),
            EventData::DisputeUpdated(d) => (
                pb::TgDisputeUpdated {
                    meta: None,
                    dispute: Some(dispute(d)),
                }
                .into(),
                d.case_id.clone().unwrap_or_else(fallback),
                "dispute",
                d.dispute_id.clone(),
                d.revision.to_string(),
            ),
            EventData::PartnerUpdated(p) => (
                pb::TgPartnerUpdated {
                    meta: None,
                    profile: Some(profile(p)),
                }
                .into(),
                fallback(),
                "partner",
                fallback(),
                p.revision.to_string(),
            ),
            EventData::Unknown(data) => (
                pb::TgUnknownEvent {
                    meta: None,
                    tg_type: e.kind.clone(),
                    raw: raw.to_vec(),
                }
                .into(),
                data.get("case_id")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(fallback),
                "event",
                e.id.clone(),
                String::new(),
            ),
        };
    let mut event = event;
    *event.meta_mut() = pb::EventMeta {
        event_id: event_id(&e.id, e.occurred_at).to_string(),
        occurred_at: Some(timestamp(e.occurred_at)),
        origin: pb::Origin::Tg as i32,
        correlation_id: correlation,
        causation_id: String::new(),
        partner: e.partner.as_ref().map(partner_ref),
        entity: Some(pb::EntityRef::new("tg", kind, id)),
        entity_version: version,
        replayed_at: None,
    };
    event
}

/// A feed element that does not follow the contract: kept (never dropped) as an unknown event,
/// with an id derived from what it has (its `id`, else its bytes).
pub fn unparseable_feed_event(raw: &serde_json::Value) -> pb::Event {
    let bytes = serde_json::to_vec(raw).unwrap_or_default();
    let tg_id = raw
        .get("id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        });
    let occurred = raw
        .get("occurred_at")
        .and_then(serde_json::Value::as_str)
        .and_then(tgb_proto::timestamps::parse_rfc3339)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let kind = raw
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let mut event: pb::Event = pb::TgUnknownEvent {
        meta: None,
        tg_type: kind.to_owned(),
        raw: bytes,
    }
    .into();
    *event.meta_mut() = pb::EventMeta {
        event_id: event_id(&tg_id, occurred).to_string(),
        occurred_at: Some(timestamp(occurred)),
        origin: pb::Origin::Tg as i32,
        correlation_id: tg_id.clone(),
        entity: Some(pb::EntityRef::new("tg", "event", tg_id)),
        ..Default::default()
    };
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use tgb_proto::BusEvent;

    fn parse(kind: &str, data: serde_json::Value) -> (TgEvent, Vec<u8>) {
        let raw = serde_json::to_vec(&serde_json::json!({
            "id": "evt_01JD3Q8W5K2R7", "type": kind, "occurred_at": "2026-11-21T09:14:03Z",
            "community_id": "retail-suppliers",
            "partner": {"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"},
            "data": data,
        }))
        .unwrap();
        (tg::parse_event(&raw).unwrap(), raw)
    }

    #[test]
    fn event_ids_are_deterministic_ulids_stamped_with_occurred_at() {
        let t = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
        let a = event_id("evt_1", t);
        assert_eq!(a, event_id("evt_1", t));
        assert_ne!(a, event_id("evt_2", t));
        assert_eq!(a.timestamp_ms(), 1_795_000_000_000);
        assert!(ulid::Ulid::from_string(&a.to_string()).is_ok());
    }

    #[test]
    fn case_created_maps_to_case_opened_with_the_case_as_correlation() {
        let (e, raw) = parse(
            "case.created",
            serde_json::json!({"case_id": "C-10492", "revision": 3, "title": "Short shipment",
                "description": "d", "category": "shipment_discrepancy", "priority": "high",
                "status": "open", "order_ref": "PO-1", "document_ids": ["doc_1"],
                "opened_by": {"name": "Ann", "email": "ann@acme.example"},
                "updated_at": "2026-11-21T09:14:03Z"}),
        );
        let ev = to_event(&e, &raw);
        assert_eq!(ev.subject(), pb::TgCaseOpened::SUBJECT);
        ev.validate().unwrap();
        let m = ev.meta().unwrap();
        assert_eq!(m.correlation_id, "C-10492");
        assert_eq!(m.entity_version, "3");
        assert_eq!(m.partner.as_ref().unwrap().key(), "ZZ:ACME01");
        assert_eq!(
            m.entity.as_ref().unwrap(),
            &pb::EntityRef::new("tg", "case", "C-10492")
        );
        let pb::Event::TgCaseOpened(c) = ev else {
            panic!()
        };
        let c = c.case.unwrap();
        assert_eq!(c.priority(), pb::CasePriority::High);
        assert_eq!(c.category(), pb::CaseCategory::ShipmentDiscrepancy);
        assert_eq!(c.order_ref, "PO-1");
    }

    #[test]
    fn events_without_a_case_correlate_by_partner_key() {
        let (e, raw) = parse(
            "onboarding.updated",
            serde_json::json!({"partner_revision": 7, "requirements": [],
                "profile_complete": true, "agreements_acknowledged": false}),
        );
        let ev = to_event(&e, &raw);
        assert_eq!(ev.subject(), pb::TgOnboardingUpdated::SUBJECT);
        assert_eq!(ev.meta().unwrap().correlation_id, "ZZ:ACME01");
        assert_eq!(ev.meta().unwrap().entity_version, "7");
    }

    #[test]
    fn unknown_types_keep_the_raw_body() {
        let (e, raw) = parse("case.teleported", serde_json::json!({"case_id": "C-1"}));
        let ev = to_event(&e, &raw);
        assert_eq!(ev.subject(), pb::TgUnknownEvent::SUBJECT);
        assert_eq!(ev.meta().unwrap().correlation_id, "C-1");
        let pb::Event::TgUnknownEvent(u) = ev else {
            panic!()
        };
        assert_eq!(u.raw, raw);
        assert_eq!(u.tg_type, "case.teleported");
    }

    #[test]
    fn every_known_type_has_its_own_subject() {
        let subjects: std::collections::BTreeSet<_> = [
            (
                "case.updated",
                serde_json::json!({"case_id": "C-1", "revision": 2, "title": "t",
                "category": "other", "priority": "low", "status": "resolved",
                "opened_by": {"name": "n"}, "updated_at": "2026-11-21T09:14:03Z"}),
            ),
            (
                "case.comment_added",
                serde_json::json!({"case_id": "C-1", "comment_id": "cm",
                "author": {"name": "n", "side": "partner"}, "body": "b",
                "created_at": "2026-11-21T09:14:03Z"}),
            ),
            (
                "document.uploaded",
                serde_json::json!({"document_id": "doc", "doc_type": "tax_form",
                "file_name": "f.pdf", "media_type": "application/pdf", "size": 3,
                "sha256": "AB", "uploaded_by": "p"}),
            ),
            (
                "discussion.action_item",
                serde_json::json!({"thread_id": "th", "action_item_id": "ai",
                "text": "do it"}),
            ),
            (
                "dispute.opened",
                serde_json::json!({"dispute_id": "D-1", "revision": 1,
                "invoice_ref": "I", "disputed_amount": {"value": 10.5, "currency": "EUR"},
                "reason": "r", "status": "open"}),
            ),
            (
                "dispute.updated",
                serde_json::json!({"dispute_id": "D-1", "revision": 2,
                "invoice_ref": "I", "disputed_amount": {"value": "10.50", "currency": "EUR"},
                "reason": "r", "status": "under_review"}),
            ),
            (
                "partner.updated",
                serde_json::json!({"revision": 4, "legal_name": "Acme",
                "addresses": [{"kind": "billing", "city": "Lyon"}],
                "contacts": [{"contact_id": "c1", "name": "n", "email": "e", "role": "r"}],
                "relationship": "active"}),
            ),
        ]
        .into_iter()
        .map(|(k, d)| {
            let (e, raw) = parse(k, d);
            let ev = to_event(&e, &raw);
            ev.validate().unwrap();
            ev.subject()
        })
        .collect();
        assert_eq!(subjects.len(), 7);
    }

    #[test]
    fn a_document_upload_is_read_whatever_shape_its_uploader_has() {
        let upload = |uploaded_by: serde_json::Value| {
            let mut data = serde_json::json!({"document_id": "doc", "doc_type": "tax_form",
                "file_name": "f.pdf", "media_type": "application/pdf", "size": 3,
                "sha256": "ab", "a_field_from_a_newer_portal": {"x": 1}});
            if !uploaded_by.is_null() {
                data["uploaded_by"] = uploaded_by;
            }
            let (e, raw) = parse("document.uploaded", data);
            let ev = to_event(&e, &raw);
            ev.validate().unwrap();
            let pb::Event::TgDocumentUploaded(d) = ev else {
                panic!("{ev:?}")
            };
            d.document.unwrap().uploaded_by
        };
        // The documented object, a plain string (older portals), an e-mail, half an object,
        // and none at all: the upload is always usable.
        assert_eq!(
            upload(serde_json::json!({"name": "Pat Partner", "email": "pat@acme.example"})),
            "Pat Partner"
        );
        assert_eq!(upload(serde_json::json!("Pat Partner")), "Pat Partner");
        assert_eq!(
            upload(serde_json::json!("pat@acme.example")),
            "pat@acme.example"
        );
        assert_eq!(
            upload(serde_json::json!({"email": "pat@acme.example"})),
            "pat@acme.example"
        );
        assert_eq!(upload(serde_json::Value::Null), "");
    }
}
