//! The document-review consumer.
//!
//! | event | effect |
//! |---|---|
//! | `tg.document.uploaded` | fetch the content from TG, check size and SHA-256, store it in `tgb_documents`; then an expired document → `review.document.completed` (rejected, automatic), a type with a review policy → `review.document.requested`. A failed check → `review.document.refused` (tg-egress asks for a re-upload) and a dead letter with the reason |
//! | `planner.task.progressed` of a review task, completed with an outcome label | `review.document.completed` |
//! | `tg.onboarding.updated` | `onboarding.steps.requested` once per partner, then `onboarding.partner.status` when the status changed |
//! | `planner.task.progressed` of an onboarding step task | `onboarding.partner.status` when the status changed |
//!
//! Every event published gets an id derived from what it is about (see [`crate::ids`]), so a
//! redelivery publishes the same id: JetStream drops the copy and TG sees one write.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use base64::Engine as _;
use tgb_bus::async_nats;
use tgb_bus::kv::{Change, update_json};
use tgb_bus::links::encode_token;
use tgb_bus::{Delivery, Handler, HandlerError, Publisher};
use tgb_clients::tg::{TgClient, TgError};
use tgb_proto as pb;
use tgb_proto::timestamps::{time_of, timestamp};
use time::OffsetDateTime;

use crate::intake::{self, Refusal};
use crate::onboarding::{Onboarding, StepState, step_state};
use crate::settings::{DocumentSettings, OnboardingSettings, doc_type_name};

/// Every subject document-review consumes.
pub const SUBJECTS: &[&str] = Routes::SUBJECTS;

tgb_bus::routes! {
    /// Every event document-review consumes, with its flow (a review task's progress is P5; an
    /// onboarding task's, P6, is named by the outcome).
    pub Routes for Review -> Outcome {
        TgDocumentUploaded => "P5", tg_document_uploaded,
        TgOnboardingUpdated => "P6", tg_onboarding_updated,
        PlannerTaskProgressed => "P5", planner_task_progressed,
    }
}

/// Object metadata: the document as announced (protobuf, base64).
const META_DOCUMENT: &str = "tgb-document";
/// Object metadata: the partner (protobuf, base64).
const META_PARTNER: &str = "tgb-partner";
/// Object metadata: the correlation id of the upload.
const META_CORRELATION: &str = "tgb-correlation";
/// Object metadata: SHA-256 (hex) of the content.
const META_SHA256: &str = "tgb-sha256";

/// The handler of the document-review consumer.
pub struct Review {
    tg: TgClient,
    documents: ObjectStore,
    state: kv::Store,
    publisher: Publisher,
    docs: DocumentSettings,
    onboarding: OnboardingSettings,
    /// Bounds the documents in memory at once (`max_concurrent_downloads`).
    downloads: std::sync::Arc<tokio::sync::Semaphore>,
}

/// What handling did (the runner records it from the outcome).
enum Outcome {
    /// The effect was made, in the flow named.
    Applied(&'static str),
    /// Already done (the same status was published before), for the reason named.
    Duplicate(&'static str),
    /// Nothing to do, for the reason named.
    Skipped(&'static str),
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64<M: prost::Message + Default>(value: Option<&String>) -> Option<M> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value?)
        .ok()?;
    M::decode(bytes.as_slice()).ok()
}

/// A meta for an event of `origin` caused by `cause`, with a derived id.
fn derived_meta(
    origin: pb::Origin,
    cause: &pb::EventMeta,
    entity: pb::EntityRef,
    parts: &[&str],
) -> pb::EventMeta {
    let at = time_of(cause.occurred_at.as_ref()).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    pb::EventMeta {
        event_id: tgb_bus::ids::derived(at, parts),
        entity: Some(entity),
        ..pb::EventMeta::caused_by(origin, cause)
    }
}

/// The `tgb_sync` key of a partner's onboarding.
pub fn onboarding_key(partner_key: &str) -> String {
    format!("onboarding.{}", encode_token(partner_key))
}

fn publish_error(e: tgb_bus::PublishError) -> HandlerError {
    HandlerError::transient(e)
}

impl Review {
    /// A handler fetching with `tg`, storing in `documents`, keeping onboarding in `state`.
    pub fn new(
        tg: TgClient,
        documents: ObjectStore,
        state: kv::Store,
        publisher: Publisher,
        docs: DocumentSettings,
        onboarding: OnboardingSettings,
    ) -> Self {
        let downloads = std::sync::Arc::new(tokio::sync::Semaphore::new(
            docs.max_concurrent_downloads.max(1),
        ));
        Review {
            tg,
            documents,
            state,
            publisher,
            docs,
            onboarding,
            downloads,
        }
    }

    /// Tells the partner (via `review.document.refused`) and dead-letters the upload.
    async fn refuse(
        &self,
        meta: &pb::EventMeta,
        doc: &pb::TgDocument,
        refusal: Refusal,
    ) -> Result<Outcome, HandlerError> {
        let refused = pb::ReviewIntakeRefused {
            meta: Some(derived_meta(
                pb::Origin::Review,
                meta,
                pb::EntityRef::new("tg", "document", doc.document_id.clone()),
                &[&doc.document_id, &doc.sha256, "refused"],
            )),
            document: Some(doc.clone()),
            reason: refusal.to_string(),
        };
        self.publisher
            .publish(&refused)
            .await
            .map_err(publish_error)?;
        metrics::counter!("tgb_documents_refused_total").increment(1);
        Err(HandlerError::permanent(format!(
            "document {} refused at intake: {refusal}",
            doc.document_id
        )))
    }

    async fn uploaded(
        &self,
        meta: &pb::EventMeta,
        e: &pb::TgDocumentUploaded,
    ) -> Result<Outcome, HandlerError> {
        let doc = e
            .document
            .clone()
            .filter(|d| !d.document_id.is_empty())
            .ok_or_else(|| HandlerError::permanent("document (with a document_id) is missing"))?;
        if let Err(r) = intake::check_announced_size(doc.size, self.docs.max_size_bytes) {
            return self.refuse(meta, &doc, r).await;
        }
        // Held until the content is stored: at most this many documents are in memory at once.
        let _download = self
            .downloads
            .acquire()
            .await
            .map_err(|_| HandlerError::transient("shutting down"))?;
        let content = match self
            .tg
            .document_content(&doc.document_id, self.docs.max_size_bytes)
            .await
        {
            Ok(content) => content,
            Err(TgError::TooLarge { limit, .. }) => {
                return self
                    .refuse(meta, &doc, intake::Refusal::ServedTooLarge { limit })
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let sha256 = match intake::verify(
            &content.bytes,
            self.docs.max_size_bytes,
            &doc.sha256,
            content.digest.as_deref(),
        ) {
            Ok(sha) => sha,
            Err(r) => return self.refuse(meta, &doc, r).await,
        };
        let object_name = doc.document_id.clone();
        let mut metadata = HashMap::new();
        metadata.insert(
            META_DOCUMENT.to_owned(),
            b64(&prost::Message::encode_to_vec(&doc)),
        );
        if let Some(p) = &meta.partner {
            metadata.insert(
                META_PARTNER.to_owned(),
                b64(&prost::Message::encode_to_vec(p)),
            );
        }
        metadata.insert(META_CORRELATION.to_owned(), meta.correlation_id.clone());
        metadata.insert(META_SHA256.to_owned(), sha256);
        let object = ObjectMetadata {
            name: object_name.clone(),
            description: Some(format!(
                "{} ({})",
                doc.file_name,
                doc_type_name(doc.doc_type())
            )),
            metadata,
            ..Default::default()
        };
        let mut reader = content.bytes.as_slice();
        self.documents
            .put(object, &mut reader)
            .await
            .map_err(|e| HandlerError::transient(format!("object store put {object_name}: {e}")))?;

        let entity = pb::EntityRef::new("tg", "document", doc.document_id.clone());
        if self.docs.reject_expired
            && let Some(expired) = expired_on(&doc.expires_on, OffsetDateTime::now_utc().date())
        {
            let completed = pb::ReviewCompleted {
                meta: Some(derived_meta(
                    pb::Origin::Review,
                    meta,
                    entity,
                    &[&doc.document_id, "expired"],
                )),
                document: Some(doc.clone()),
                outcome: pb::ReviewOutcome::Rejected as i32,
                note: format!(
                    "Rejected automatically: the document expired on {expired}. Please upload a valid one."
                ),
                reviewer: None,
                automatic: true,
                object_name,
            };
            self.publisher
                .publish(&completed)
                .await
                .map_err(publish_error)?;
            return Ok(Outcome::Applied("P5"));
        }
        let Some(policy) = self.docs.review.get(doc_type_name(doc.doc_type())) else {
            return Ok(Outcome::Skipped("no_review_policy"));
        };
        let uploaded_at =
            time_of(meta.occurred_at.as_ref()).unwrap_or_else(OffsetDateTime::now_utc);
        let requested = pb::ReviewRequested {
            meta: Some(derived_meta(
                pb::Origin::Review,
                meta,
                entity,
                &[&doc.document_id, "requested"],
            )),
            document: Some(doc),
            team: policy.team.clone(),
            plan_id: policy.plan_id.clone(),
            bucket_id: policy.bucket_id.clone(),
            assignees: policy.assignees.clone(),
            due_at: Some(timestamp(
                uploaded_at + time::Duration::days(i64::from(policy.due_days)),
            )),
            object_name,
        };
        self.publisher
            .publish(&requested)
            .await
            .map_err(publish_error)?;
        Ok(Outcome::Applied("P5"))
    }

    async fn review_done(
        &self,
        meta: &pb::EventMeta,
        e: &pb::PlannerTaskProgressed,
        task: &pb::TaskRef,
    ) -> Result<Outcome, HandlerError> {
        if e.progress() != pb::TaskProgress::Completed {
            return Ok(Outcome::Skipped("not_completed"));
        }
        let Some((label, outcome)) = self.docs.outcome_of_labels(&e.labels) else {
            tracing::warn!(task_id = %task.task_id, labels = ?e.labels, "review task completed without an outcome label");
            return Ok(Outcome::Skipped("no_outcome_label"));
        };
        let object_name = task.subject_id.clone();
        let info = match self.documents.info(&object_name).await {
            Ok(info) => info,
            Err(err)
                if err.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound =>
            {
                return Err(HandlerError::permanent(format!(
                    "review task {} names document {object_name:?}, which is not in tgb_documents",
                    task.task_id
                )));
            }
            Err(err) => return Err(HandlerError::transient(err)),
        };
        let doc: pb::TgDocument = unb64(info.metadata.get(META_DOCUMENT)).ok_or_else(|| {
            HandlerError::permanent(format!(
                "object {object_name}: document metadata is missing"
            ))
        })?;
        let partner: Option<pb::PartnerRef> = unb64(info.metadata.get(META_PARTNER));
        let mut m = derived_meta(
            pb::Origin::Review,
            meta,
            pb::EntityRef::new("tg", "document", doc.document_id.clone()),
            &[&doc.document_id, &task.task_id, outcome.as_str_name()],
        );
        if partner.is_some() {
            m.partner = partner;
        }
        if let Some(c) = info
            .metadata
            .get(META_CORRELATION)
            .filter(|c| !c.is_empty())
        {
            m.correlation_id = c.clone();
        }
        let completed = pb::ReviewCompleted {
            meta: Some(m),
            document: Some(doc),
            outcome: outcome as i32,
            note: format!("Reviewed: {label}."),
            reviewer: e.assignees.first().map(|a| pb::Person {
                name: a.clone(),
                email: String::new(),
            }),
            automatic: false,
            object_name,
        };
        self.publisher
            .publish(&completed)
            .await
            .map_err(publish_error)?;
        Ok(Outcome::Applied("P5"))
    }

    /// Applies `change` to the partner's onboarding, then requests the steps once and publishes
    /// the status when it changed.
    async fn onboarding_changed(
        &self,
        meta: &pb::EventMeta,
        partner: &pb::PartnerRef,
        create: bool,
        change: impl Fn(&mut Onboarding) -> bool,
    ) -> Result<Outcome, HandlerError> {
        let key = onboarding_key(&partner.key());
        let settings = &self.onboarding;
        let state: Option<Onboarding> = update_json(&self.state, &key, |current| {
            let mut o = match current {
                Some(o) => o,
                None if create => Onboarding::new(partner, settings),
                None => return Change::Keep(None),
            };
            if change(&mut o) {
                Change::Put(o.clone(), Some(o))
            } else {
                Change::Keep(Some(o))
            }
        })
        .await
        .map_err(HandlerError::transient)?;
        let Some(state) = state else {
            return Ok(Outcome::Skipped("no_onboarding"));
        };
        let entity = pb::EntityRef::new("tg", "partner", partner.key());
        if !state.steps_requested {
            let mut m = derived_meta(
                pb::Origin::Onboarding,
                meta,
                entity.clone(),
                &[&partner.key(), "steps"],
            );
            m.partner = Some(state.partner());
            m.correlation_id = partner.key();
            let requested = pb::OnboardingStepsRequested {
                meta: Some(m),
                steps: state.internal_steps(settings),
                plan_id: settings.plan_id.clone(),
                bucket_id: settings.bucket_id.clone(),
            };
            self.publisher
                .publish(&requested)
                .await
                .map_err(publish_error)?;
            update_json(
                &self.state,
                &key,
                |current: Option<Onboarding>| match current {
                    Some(mut o) if !o.steps_requested => {
                        o.steps_requested = true;
                        Change::Put(o, ())
                    }
                    _ => Change::Keep(()),
                },
            )
            .await
            .map_err(HandlerError::transient)?;
        }
        // Publish the status, then check it is still the stored one; if a concurrent handler
        // changed the onboarding in between, publish again: the last status on the bus is
        // always followed by a read that confirmed it (tg-egress applies them in bus order).
        let mut state = state;
        let mut first = true;
        for _ in 0..10 {
            let (mut status, fp) = state.status(settings);
            if first && fp == state.last_status {
                return Ok(Outcome::Duplicate("status_unchanged"));
            }
            first = false;
            let mut m = derived_meta(
                pb::Origin::Onboarding,
                meta,
                entity.clone(),
                &[&partner.key(), "status", &meta.event_id, &fp],
            );
            m.partner = Some(state.partner());
            m.correlation_id = partner.key();
            status.meta = Some(m);
            self.publisher
                .publish(&status)
                .await
                .map_err(publish_error)?;
            let moved: Option<Onboarding> = update_json(
                &self.state,
                &key,
                |current: Option<Onboarding>| match current {
                    Some(mut o) if o.status(settings).1 == fp => {
                        if o.last_status == fp {
                            Change::Keep(None)
                        } else {
                            o.last_status = fp.clone();
                            Change::Put(o, None)
                        }
                    }
                    Some(o) => Change::Keep(Some(o)),
                    None => Change::Keep(None),
                },
            )
            .await
            .map_err(HandlerError::transient)?;
            match moved {
                Some(n) => state = n,
                None => return Ok(Outcome::Applied("P6")),
            }
        }
        Ok(Outcome::Applied("P6"))
    }

    /// Handles `TgDocumentUploaded`.
    async fn tg_document_uploaded(
        &self,
        e: &pb::TgDocumentUploaded,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        self.uploaded(&meta, e).await
    }

    /// Handles `TgOnboardingUpdated`.
    async fn tg_onboarding_updated(
        &self,
        e: &pb::TgOnboardingUpdated,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let partner = meta
            .partner
            .clone()
            .filter(|p| !p.qualifier.is_empty() && !p.id.is_empty())
            .ok_or_else(|| HandlerError::permanent("meta.partner is missing"))?;
        self.onboarding_changed(&meta, &partner, true, |o| o.apply_tg(e))
            .await
    }

    /// Handles `PlannerTaskProgressed`.
    async fn planner_task_progressed(
        &self,
        e: &pb::PlannerTaskProgressed,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let task = e.task.clone().unwrap_or_default();
        match task.kind() {
            pb::TaskKind::Review => self.review_done(&meta, e, &task).await,
            pb::TaskKind::OnboardingStep => {
                let Some(partner) = meta.partner.clone().filter(|p| !p.id.is_empty()) else {
                    tracing::warn!(task_id = %task.task_id, "onboarding step task without a partner");
                    return Ok(Outcome::Skipped("no_partner"));
                };
                let step = task
                    .subject_id
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let state = step_state(e.progress()).to_owned();
                let task_id = task.task_id.clone();
                self.onboarding_changed(&meta, &partner, false, |o| {
                    let Some(s) = o.steps.get_mut(&step) else {
                        return false;
                    };
                    let next = StepState {
                        state: state.clone(),
                        task_id: task_id.clone(),
                    };
                    if *s == next {
                        return false;
                    }
                    *s = next;
                    true
                })
                .await
            }
            _ => Ok(Outcome::Skipped("not_my_task")),
        }
    }
}

/// The expiry date, when `expires_on` (`YYYY-MM-DD`) is before `today`.
pub fn expired_on(expires_on: &str, today: time::Date) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(expires_on.trim(), &format).ok()?;
    (date < today).then_some(date)
}

impl Handler for Review {
    async fn handle(&self, delivery: Delivery) -> Result<tgb_bus::Outcome, HandlerError> {
        let flow = Routes::flow_of(&delivery.event).unwrap_or("P5");
        Ok(match Routes::dispatch(self, &delivery.event).await? {
            Outcome::Applied(flow) => tgb_bus::Outcome::applied(flow),
            Outcome::Duplicate(why) => tgb_bus::Outcome::duplicate(flow, why),
            Outcome::Skipped(why) => {
                tracing::debug!(why, "nothing to do");
                tgb_bus::Outcome::skipped(flow, why)
            }
        })
    }

    fn flow_of(&self, event: &pb::Event) -> Option<&'static str> {
        Routes::flow_of(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_past_dates_are_expired() {
        let today = time::macros::date!(2026 - 03 - 10);
        assert_eq!(
            expired_on("2026-03-09", today),
            Some(time::macros::date!(2026 - 03 - 09))
        );
        assert_eq!(expired_on("2026-03-10", today), None);
        assert_eq!(expired_on("", today), None);
        assert_eq!(expired_on("soon", today), None);
    }
}
