//! The Trading Grid emulator: its state, the scripting calls that act as a partner, and the
//! REST API of the adapter contract.

pub mod api;
pub mod model;
pub mod script;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::config::TgConfig;
use crate::webhooks::WebhookSender;
use model::*;

/// Why a scripting call failed.
#[derive(Debug, thiserror::Error)]
pub enum TgError {
    /// The object named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The input is not valid.
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// The TG emulator (shared state, cheap to clone).
#[derive(Clone)]
pub struct Tg {
    inner: Arc<Mutex<TgState>>,
    sender: WebhookSender,
    community_id: Arc<str>,
}

pub(crate) struct StoredAnswer {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub body: Value,
    pub at: Instant,
}

/// Everything the emulator holds.
#[derive(Default)]
pub(crate) struct TgState {
    pub partners: BTreeMap<String, Partner>,
    pub cases: BTreeMap<String, Case>,
    pub case_seq: u64,
    pub dispute_seq: u64,
    pub comments: Vec<Comment>,
    pub documents: BTreeMap<String, Document>,
    pub milestones: Vec<Value>,
    pub scorecards: BTreeMap<String, Value>,
    pub disputes: BTreeMap<String, Dispute>,
    pub action_items: Vec<Value>,
    pub case_updates: Vec<Value>,
    pub events: Vec<TgEvent>,
    pub idempotency: HashMap<(String, String), StoredAnswer>,
    pub idempotency_ttl: Duration,
    pub writes: Vec<RecordedWrite>,
    /// `occurred_at` of the events emitted while set (a feed seeded with history).
    pub occurred_at: Option<String>,
}

/// A typed view of what the emulator holds, for tests and `/_sandbox/state`.
#[derive(Clone, Debug, Serialize)]
pub struct TgSnapshot {
    /// Partners by key.
    pub partners: BTreeMap<String, Partner>,
    /// Cases by id.
    pub cases: BTreeMap<String, Case>,
    /// Every comment, both sides, oldest first.
    pub comments: Vec<Comment>,
    /// Documents by id (without bytes).
    pub documents: BTreeMap<String, Document>,
    /// Milestones posted by the API.
    pub milestones: Vec<Value>,
    /// Scorecards by `partner/period`.
    pub scorecards: BTreeMap<String, Value>,
    /// Disputes by id.
    pub disputes: BTreeMap<String, Dispute>,
    /// Action items flagged by partners.
    pub action_items: Vec<Value>,
    /// Case changes made through the API (`PATCH /v1/cases/{id}`), oldest first.
    pub case_updates: Vec<Value>,
    /// Number of events in the feed.
    pub event_count: usize,
    /// Every write the REST API received, replays included.
    pub writes: Vec<RecordedWrite>,
}

fn validate_in(field: &str, value: &str, allowed: &[&str]) -> Result<(), TgError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(TgError::Invalid(format!(
            "{field} must be one of {}, not '{value}'",
            allowed.join(", ")
        )))
    }
}

fn validate_partner(p: &PartnerRef) -> Result<(), TgError> {
    if p.qualifier.is_empty() || p.id.is_empty() || p.qualifier.contains(':') || p.id.contains(':')
    {
        return Err(TgError::Invalid(
            "partner.qualifier and partner.id must be non-empty and without ':'".into(),
        ));
    }
    Ok(())
}

/// Hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic filler bytes for generated documents.
fn generated_bytes(size: usize, seed: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut block = Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < size {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(size);
    out
}

impl TgState {
    pub(crate) fn partner_entry(&mut self, p: &PartnerRef) -> &mut Partner {
        self.partners
            .entry(p.key())
            .or_insert_with(|| Partner::new(p))
    }
}

impl Tg {
    pub(crate) fn new(config: &TgConfig, sender: WebhookSender) -> Self {
        let mut state = TgState {
            idempotency_ttl: Duration::from_secs(config.idempotency_ttl_secs),
            ..TgState::default()
        };
        for seed in &config.partners {
            let r = PartnerRef {
                qualifier: seed.qualifier.clone(),
                id: seed.id.clone(),
                name: seed.name.clone(),
            };
            state.partner_entry(&r);
        }
        Self {
            inner: Arc::new(Mutex::new(state)),
            sender,
            community_id: Arc::from(config.community_id.as_str()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, TgState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The webhook sender (subscriptions, secrets, pause/resume, stats).
    pub fn webhooks(&self) -> &WebhookSender {
        &self.sender
    }

    /// Appends an event to the feed and hands it to the webhook sender.
    fn emit(&self, state: &mut TgState, kind: &str, partner: PartnerRef, data: Value) -> TgEvent {
        let event = TgEvent {
            id: format!("evt_{}", ulid::Ulid::new()),
            kind: kind.to_owned(),
            occurred_at: state.occurred_at.clone().unwrap_or_else(now_rfc3339),
            community_id: self.community_id.to_string(),
            partner,
            data,
        };
        state.events.push(event.clone());
        self.sender.dispatch(&event);
        event
    }

    /// The community every event names.
    pub fn community_id(&self) -> &str {
        &self.community_id
    }

    /// A partner raises a case (`case.created`).
    pub fn raise_case(&self, input: RaiseCase) -> Result<TgEvent, TgError> {
        validate_partner(&input.partner)?;
        validate_in("category", &input.category, CATEGORIES)?;
        validate_in("priority", &input.priority, PRIORITIES)?;
        if input.title.trim().is_empty() {
            return Err(TgError::Invalid("title must not be empty".into()));
        }
        let mut state = self.lock();
        let partner = state.partner_entry(&input.partner).as_ref();
        state.case_seq += 1;
        let case = Case {
            case_id: format!("C-{}", 10_000 + state.case_seq),
            revision: 1,
            title: input.title,
            description: input.description,
            category: input.category,
            priority: input.priority,
            status: "open".into(),
            order_ref: input.order_ref,
            invoice_ref: input.invoice_ref,
            document_ids: Vec::new(),
            opened_by: input.opened_by.unwrap_or_else(|| Person {
                name: format!("{} contact", partner.name),
                email: format!("contact@{}.example", partner.id.to_lowercase()),
            }),
            updated_at: now_rfc3339(),
            partner: partner.clone(),
            external_ref: None,
        };
        let data = case.event_data();
        state.cases.insert(case.case_id.clone(), case);
        Ok(self.emit(&mut state, "case.created", partner, data))
    }

    /// A partner changes a case (`case.updated`).
    pub fn update_case(&self, case_id: &str, input: UpdateCase) -> Result<TgEvent, TgError> {
        if let Some(c) = &input.category {
            validate_in("category", c, CATEGORIES)?;
        }
        if let Some(p) = &input.priority {
            validate_in("priority", p, PRIORITIES)?;
        }
        if let Some(s) = &input.status {
            validate_in("status", s, STATUSES)?;
        }
        let mut state = self.lock();
        let case = state
            .cases
            .get_mut(case_id)
            .ok_or_else(|| TgError::NotFound(format!("case {case_id}")))?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = input.$f { case.$f = v; } )* };
        }
        set!(title, description, category, priority, status);
        if input.order_ref.is_some() {
            case.order_ref = input.order_ref;
        }
        if input.invoice_ref.is_some() {
            case.invoice_ref = input.invoice_ref;
        }
        case.revision += 1;
        case.updated_at = now_rfc3339();
        let (partner, data) = (case.partner.clone(), case.event_data());
        Ok(self.emit(&mut state, "case.updated", partner, data))
    }

    /// A partner comments on a case (`case.comment_added`).
    pub fn partner_comment(
        &self,
        case_id: &str,
        input: PartnerComment,
    ) -> Result<TgEvent, TgError> {
        if input.body.is_empty() {
            return Err(TgError::Invalid("body must not be empty".into()));
        }
        let mut state = self.lock();
        let partner = state
            .cases
            .get(case_id)
            .ok_or_else(|| TgError::NotFound(format!("case {case_id}")))?
            .partner
            .clone();
        let comment = Comment {
            comment_id: format!("cm_{}", ulid::Ulid::new()),
            case_id: case_id.to_owned(),
            author: json!({"name": input.author.name, "email": input.author.email, "side": "partner"}),
            body: input.body,
            visibility: "partner".into(),
            created_at: now_rfc3339(),
            source: "partner".into(),
        };
        let data = json!({
            "case_id": comment.case_id,
            "comment_id": comment.comment_id,
            "author": comment.author,
            "body": comment.body,
            "created_at": comment.created_at,
        });
        state.comments.push(comment);
        Ok(self.emit(&mut state, "case.comment_added", partner, data))
    }

    /// A partner uploads a document (`document.uploaded`).
    pub fn upload_document(&self, input: UploadDocument) -> Result<TgEvent, TgError> {
        let doc_type = input.doc_type.unwrap_or_else(|| "other".into());
        validate_in("doc_type", &doc_type, DOC_TYPES)?;
        let content = match (input.content, input.content_base64) {
            (Some(bytes), _) => bytes,
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| TgError::Invalid(format!("content_base64: {e}")))?,
            (None, None) => Vec::new(),
        };
        let document_id = format!("doc_{}", ulid::Ulid::new());
        let content = if content.is_empty() {
            generated_bytes(input.generate_size.unwrap_or(1024), &document_id)
        } else {
            content
        };
        let mut state = self.lock();
        let partner = match (&input.case_id, input.partner) {
            (Some(case_id), _) => {
                let case = state
                    .cases
                    .get_mut(case_id)
                    .ok_or_else(|| TgError::NotFound(format!("case {case_id}")))?;
                case.document_ids.push(document_id.clone());
                case.revision += 1;
                case.updated_at = now_rfc3339();
                case.partner.clone()
            }
            (None, Some(p)) => {
                validate_partner(&p)?;
                state.partner_entry(&p).as_ref()
            }
            (None, None) => {
                return Err(TgError::Invalid("give a case_id or a partner".into()));
            }
        };
        let actual = sha256_hex(&content);
        let doc = Document {
            document_id: document_id.clone(),
            partner: partner.clone(),
            case_id: input.case_id,
            doc_type,
            file_name: input.file_name.unwrap_or_else(|| "document.pdf".into()),
            media_type: input.media_type.unwrap_or_else(|| "application/pdf".into()),
            size: content.len() as u64,
            sha256: input.announce_sha256.unwrap_or_else(|| actual.clone()),
            actual_sha256: actual,
            expires_on: input.expires_on,
            uploaded_by: input.uploaded_by.unwrap_or_else(|| "partner".into()),
            reviews: Vec::new(),
            content,
        };
        let mut data = json!({
            "document_id": doc.document_id,
            "doc_type": doc.doc_type,
            "file_name": doc.file_name,
            "media_type": doc.media_type,
            "size": doc.size,
            "sha256": doc.sha256,
            "uploaded_by": doc.uploaded_by,
        });
        if let Some(c) = &doc.case_id {
            data["case_id"] = json!(c);
        }
        if let Some(e) = &doc.expires_on {
            data["expires_on"] = json!(e);
        }
        state.documents.insert(document_id, doc);
        Ok(self.emit(&mut state, "document.uploaded", partner, data))
    }

    /// A partner opens a dispute (`dispute.opened`).
    pub fn open_dispute(&self, input: OpenDispute) -> Result<TgEvent, TgError> {
        validate_partner(&input.partner)?;
        let mut state = self.lock();
        if let Some(c) = &input.case_id
            && !state.cases.contains_key(c)
        {
            return Err(TgError::NotFound(format!("case {c}")));
        }
        let partner = state.partner_entry(&input.partner).as_ref();
        state.dispute_seq += 1;
        let dispute = Dispute {
            dispute_id: format!("D-{}", 5_000 + state.dispute_seq),
            revision: 1,
            partner: partner.clone(),
            invoice_ref: input.invoice_ref,
            disputed_amount: input.disputed_amount,
            reason: input.reason,
            status: "open".into(),
            case_id: input.case_id,
            invoice_status: None,
            resolution_note: None,
            adjustment: None,
        };
        let data = dispute.event_data();
        state.disputes.insert(dispute.dispute_id.clone(), dispute);
        Ok(self.emit(&mut state, "dispute.opened", partner, data))
    }

    /// A partner changes a dispute (`dispute.updated`).
    pub fn update_dispute(
        &self,
        dispute_id: &str,
        input: UpdateDispute,
    ) -> Result<TgEvent, TgError> {
        if let Some(s) = &input.status {
            validate_in("status", s, DISPUTE_STATUSES)?;
        }
        let mut state = self.lock();
        let d = state
            .disputes
            .get_mut(dispute_id)
            .ok_or_else(|| TgError::NotFound(format!("dispute {dispute_id}")))?;
        if let Some(s) = input.status {
            d.status = s;
        }
        if let Some(r) = input.reason {
            d.reason = r;
        }
        if let Some(a) = input.disputed_amount {
            d.disputed_amount = a;
        }
        d.revision += 1;
        let (partner, data) = (d.partner.clone(), d.event_data());
        Ok(self.emit(&mut state, "dispute.updated", partner, data))
    }

    /// A partner's onboarding changes (`onboarding.updated`).
    pub fn update_onboarding(
        &self,
        partner: &PartnerRef,
        input: UpdateOnboarding,
    ) -> Result<TgEvent, TgError> {
        validate_partner(partner)?;
        for r in &input.requirements {
            validate_in("requirements[].state", &r.state, REQUIREMENT_STATES)?;
        }
        let mut state = self.lock();
        let p = state.partner_entry(partner);
        p.revision += 1;
        let data = json!({
            "partner_revision": p.revision,
            "requirements": input.requirements,
            "profile_complete": input.profile_complete,
            "agreements_acknowledged": input.agreements_acknowledged,
        });
        p.onboarding = Some(data.clone());
        let r = p.as_ref();
        Ok(self.emit(&mut state, "onboarding.updated", r, data))
    }

    /// A discussion yields an action item (`discussion.action_item`).
    pub fn flag_action_item(&self, input: FlagActionItem) -> Result<TgEvent, TgError> {
        validate_partner(&input.partner)?;
        if input.text.trim().is_empty() {
            return Err(TgError::Invalid("text must not be empty".into()));
        }
        let mut state = self.lock();
        let partner = state.partner_entry(&input.partner).as_ref();
        let mut data = json!({
            "thread_id": input.thread_id.unwrap_or_else(|| format!("th_{}", ulid::Ulid::new())),
            "action_item_id": format!("ai_{}", ulid::Ulid::new()),
            "text": input.text,
        });
        for (k, v) in [
            ("owner_hint", input.owner_hint),
            ("due_on", input.due_on),
            ("case_id", input.case_id),
        ] {
            if let Some(v) = v {
                data[k] = json!(v);
            }
        }
        state.action_items.push(data.clone());
        Ok(self.emit(&mut state, "discussion.action_item", partner, data))
    }

    /// A partner changes its profile (`partner.updated`).
    pub fn change_partner_profile(
        &self,
        partner: &PartnerRef,
        input: ChangePartnerProfile,
    ) -> Result<TgEvent, TgError> {
        validate_partner(partner)?;
        if let Some(r) = &input.relationship {
            validate_in("relationship", r, RELATIONSHIPS)?;
        }
        let mut state = self.lock();
        let p = state.partner_entry(partner);
        if let Some(v) = input.legal_name {
            p.legal_name = v;
        }
        if let Some(v) = input.addresses {
            p.addresses = v;
        }
        if let Some(v) = input.contacts {
            p.contacts = v;
        }
        if let Some(v) = input.relationship {
            p.relationship = v;
        }
        p.revision += 1;
        let data = partner_data(p);
        let r = p.as_ref();
        Ok(self.emit(&mut state, "partner.updated", r, data))
    }

    /// Emits any event as given (for types the contract does not know yet).
    pub fn emit_raw(&self, input: RawEvent) -> Result<TgEvent, TgError> {
        validate_partner(&input.partner)?;
        if input.kind.is_empty() {
            return Err(TgError::Invalid("type must not be empty".into()));
        }
        let mut state = self.lock();
        Ok(self.emit(&mut state, &input.kind, input.partner, input.data))
    }

    /// Events emitted from now on carry `at` as their `occurred_at` (to seed the feed with
    /// history, e.g. cases raised months ago); `None` returns to the current time.
    pub fn set_occurred_at(&self, at: Option<time::OffsetDateTime>) {
        self.lock().occurred_at = at.map(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
    }

    /// Every event of the feed, oldest first.
    pub fn events(&self) -> Vec<TgEvent> {
        self.lock().events.clone()
    }

    /// A case.
    pub fn case(&self, case_id: &str) -> Option<Case> {
        self.lock().cases.get(case_id).cloned()
    }

    /// The comments of a case (both sides), oldest first.
    pub fn comments(&self, case_id: &str) -> Vec<Comment> {
        self.lock()
            .comments
            .iter()
            .filter(|c| c.case_id == case_id)
            .cloned()
            .collect()
    }

    /// A document (with its bytes).
    pub fn document(&self, document_id: &str) -> Option<Document> {
        self.lock().documents.get(document_id).cloned()
    }

    /// A partner by key (`ZZ:ACME01`).
    pub fn partner(&self, key: &str) -> Option<Partner> {
        self.lock().partners.get(key).cloned()
    }

    /// A dispute.
    pub fn dispute(&self, dispute_id: &str) -> Option<Dispute> {
        self.lock().disputes.get(dispute_id).cloned()
    }

    /// Every write the REST API received (replays included), oldest first.
    pub fn writes(&self) -> Vec<RecordedWrite> {
        self.lock().writes.clone()
    }

    /// A typed snapshot of everything.
    pub fn snapshot(&self) -> TgSnapshot {
        let s = self.lock();
        TgSnapshot {
            partners: s.partners.clone(),
            cases: s.cases.clone(),
            comments: s.comments.clone(),
            documents: s.documents.clone(),
            milestones: s.milestones.clone(),
            scorecards: s.scorecards.clone(),
            disputes: s.disputes.clone(),
            action_items: s.action_items.clone(),
            case_updates: s.case_updates.clone(),
            event_count: s.events.len(),
            writes: s.writes.clone(),
        }
    }
}

pub(crate) fn partner_data(p: &Partner) -> Value {
    json!({
        "revision": p.revision,
        "legal_name": p.legal_name,
        "addresses": p.addresses,
        "contacts": p.contacts,
        "relationship": p.relationship,
    })
}
