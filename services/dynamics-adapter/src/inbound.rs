//! TG (and review/onboarding) events → Dataverse writes.
//!
//! | subject | flow | Dataverse |
//! |---|---|---|
//! | `tg.case.opened/updated` | D1 | write `incidents(<id>)` (the linked row, else the one holding `tgb_tgcaseid`, found with `$filter`, else a new one at UUIDv5 of the case id), only the fields that changed since the last sync; customer = the partner's account; TG resolved/closed → `CloseIncident` |
//! | `tg.case.comment_added` | D1, D2, D4 | annotation (UUIDv5 id) on the case, or on the exception the case was opened for; `tgb_partnermessage` activity regarding it |
//! | `tg.document.uploaded` | D1, D4 | annotation with the document reference; `tgb_partnermessage` (document interaction) |
//! | `review.document.completed` | D3 | verification flag on the account + annotation; banking details only as a document reference |
//! | `onboarding.partner.status` | D3 | account `tgb_onboardingstatus` |
//! | `tg.dispute.opened/updated` | D6 | invoice dispute columns + a linked case, one change set |
//! | `tg.partner.updated` | D8 | account and contacts, per-field conflict policy |

use std::collections::BTreeMap;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Map, Value, json};
use tgb_bus::links::Record;
use tgb_bus::{Delivery, Handler, HandlerError};
use tgb_clients::dataverse::{BatchRequest, quote};
use tgb_proto as pb;

use crate::adapter::{Adapter, TO_DATAVERSE, echo, handler_error, incident_id, row_id, stale};
use crate::batcher::{must_exist, upsert};
use crate::schema::{
    self, ActivityState, ActivityStatus, CaseOrigin, CaseType, DisputeStatus, IncidentPriority,
    IncidentState, IncidentStatus, MessageChannel, MessageDirection, OnboardingStatus, TgbOrigin,
    bind, reference,
};
use crate::settings::{DynamicsSettings, FieldPolicy};
use crate::state::hash;

/// `tgb_sync` field: the incident's ETag after tg-bridge's last write of it.
const ETAG: &str = "dv_etag";

/// Conditional incident writes tried before the event is retried later.
const MAX_CONDITIONAL_ATTEMPTS: u32 = 4;

/// The condition an incident write is sent with.
enum Precondition {
    /// No incident is known: create only.
    Absent,
    /// The incident as tg-bridge last wrote or read it.
    Matches(String),
    /// Unknown: read the row first.
    Unknown,
    /// The row answered no ETag: write unconditionally.
    Any,
}

tgb_bus::routes! {
    /// Every event the writer consumes, with its flow.
    pub Routes {
        TgCaseOpened => "D1",
        TgCaseUpdated => "D1",
        TgCommentAdded => "D4",
        TgDocumentUploaded => "D4",
        TgDisputeOpened => "D6",
        TgDisputeUpdated => "D6",
        TgPartnerUpdated => "D8",
        ReviewCompleted => "D3",
        OnboardingStatus => "D3",
    }
}

/// Every subject the writer consumes.
pub const SUBJECTS: &[&str] = Routes::SUBJECTS;

/// The consumer's handler.
pub struct Writer(pub Arc<Adapter>);

enum Outcome {
    Applied,
    Skipped,
    Stale,
    Echo,
}

impl Handler for Writer {
    async fn handle(&self, delivery: Delivery) -> Result<tgb_bus::Outcome, HandlerError> {
        let meta = delivery.event.meta().cloned().unwrap_or_default();
        let flow = Routes::flow_of(&delivery.event).unwrap_or("D1");
        let outcome = match &delivery.event {
            pb::Event::TgCaseOpened(e) => self.case(&meta, e.case.as_ref()).await?,
            pb::Event::TgCaseUpdated(e) => self.case(&meta, e.case.as_ref()).await?,
            pb::Event::TgCommentAdded(e) => self.comment(e).await?,
            pb::Event::TgDocumentUploaded(e) => self.document(&meta, e).await?,
            pb::Event::ReviewCompleted(e) => self.review(&meta, e).await?,
            pb::Event::OnboardingStatus(e) => self.onboarding(&meta, e).await?,
            pb::Event::TgDisputeOpened(e) => self.dispute(&meta, e.dispute.as_ref(), true).await?,
            pb::Event::TgDisputeUpdated(e) => {
                self.dispute(&meta, e.dispute.as_ref(), false).await?
            }
            pb::Event::TgPartnerUpdated(e) => self.partner(&meta, e).await?,
            other => {
                return Err(HandlerError::permanent(format!(
                    "dynamics-adapter has no route for {}",
                    other.subject()
                )));
            }
        };
        Ok(match outcome {
            Outcome::Applied => tgb_bus::Outcome::applied(flow),
            Outcome::Skipped => tgb_bus::Outcome::skipped(flow, "nothing to write"),
            Outcome::Stale => tgb_bus::Outcome::stale(
                flow,
                "an older TG revision than the one Dynamics already has",
            ),
            Outcome::Echo => tgb_bus::Outcome::echo(
                flow,
                "TG reports the revision tg-bridge wrote: not written back",
            ),
        })
    }

    fn flow_of(&self, event: &pb::Event) -> Option<&'static str> {
        Routes::flow_of(event)
    }
}

fn case_status_key(s: pb::CaseStatus) -> &'static str {
    match s {
        pb::CaseStatus::Open | pb::CaseStatus::Unspecified => "open",
        pb::CaseStatus::InProgress => "in_progress",
        pb::CaseStatus::WaitingOnPartner => "waiting_on_partner",
        pb::CaseStatus::Resolved => "resolved",
        pb::CaseStatus::Closed => "closed",
    }
}

/// TG status as the adapter compares it with Dynamics: open and in progress are one class
/// (Dynamics has no "new" state).
pub fn status_class(s: &str) -> &str {
    match s {
        "open" | "in_progress" => "active",
        other => other,
    }
}

fn priority_key(p: pb::CasePriority) -> &'static str {
    match p {
        pb::CasePriority::Urgent => "urgent",
        pb::CasePriority::High => "high",
        pb::CasePriority::Low => "low",
        _ => "normal",
    }
}

fn category_key(c: pb::CaseCategory) -> &'static str {
    match c {
        pb::CaseCategory::ShipmentDiscrepancy => "shipment_discrepancy",
        pb::CaseCategory::InvoiceMismatch => "invoice_mismatch",
        pb::CaseCategory::ComplianceException => "compliance_exception",
        pb::CaseCategory::Pricing => "pricing",
        pb::CaseCategory::Order => "order",
        _ => "other",
    }
}

/// D1's mapping of a TG case to the incident columns tg-bridge keeps in step (title,
/// description, priority and case type by the configured maps) and the status class, each
/// compared field by field with what both sides last agreed on.
pub fn incident_view(case: &pb::TgCase, s: &DynamicsSettings) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("title", json!(truncate(&case.title, 200))),
        ("description", json!(truncate(&case.description, 2000))),
        (
            "prioritycode",
            json!(
                s.priority_map
                    .get(priority_key(case.priority()))
                    .copied()
                    .unwrap_or(IncidentPriority::Normal.code())
            ),
        ),
        (
            "casetypecode",
            json!(
                s.case_type_map
                    .get(category_key(case.category()))
                    .copied()
                    .unwrap_or(CaseType::Question.code())
            ),
        ),
        (
            "status",
            json!(status_class(case_status_key(case.status()))),
        ),
    ])
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl Writer {
    fn a(&self) -> &Adapter {
        &self.0
    }

    /// D1: TG case → incident.
    async fn case(
        &self,
        meta: &pb::EventMeta,
        case: Option<&pb::TgCase>,
    ) -> Result<Outcome, HandlerError> {
        let case = case.ok_or_else(|| HandlerError::permanent("case is missing"))?;
        if case.case_id.is_empty() {
            return Err(HandlerError::permanent("case.case_id is empty"));
        }
        let a = self.a();
        let entity = format!("tg:case:{}", case.case_id);
        let lock = a.lock_of(&entity);
        let _guard = lock.lock().await;
        let (state, _) = a
            .states
            .get(TO_DATAVERSE, &entity)
            .await
            .map_err(HandlerError::transient)?;
        let revision = case.revision.to_string();
        if state.is_stale(&revision) {
            stale("tg");
            return Ok(Outcome::Stale);
        }
        let partner = meta.partner.clone().unwrap_or_default();
        let account = a.account_for(&partner).await?;
        let status = case_status_key(case.status());
        let view = incident_view(case, &a.settings);
        let changed: Vec<&str> = view
            .iter()
            .filter(|(k, v)| state.fields.get(**k) != Some(&hash(v)))
            .map(|(k, _)| *k)
            .collect();
        let linked = a
            .links
            .find(
                &Record::new("tg", "case", &case.case_id),
                "dataverse",
                "incident",
            )
            .await
            .map_err(HandlerError::transient)?;
        if changed.is_empty() && linked.is_some() {
            // What TG says is what Dynamics already has: our own change coming back.
            echo("tg", "fingerprint");
            a.states
                .update(TO_DATAVERSE, &entity, |st| {
                    if st.is_stale(&revision) {
                        return false;
                    }
                    st.version = revision.clone();
                    true
                })
                .await
                .map_err(HandlerError::transient)?;
            return Ok(Outcome::Echo);
        }
        // The incident's address: the linked row, else the id tg-bridge gives a new one. Never
        // its alternate key: a TG id may hold characters Dataverse refuses in a key value in a
        // URL, so `tgb_tgcaseid` travels in the body and the row is found with `$filter`.
        let incidents = schema::set("incident");
        let mut key = format!(
            "{incidents}({})",
            linked
                .clone()
                .unwrap_or_else(|| incident_id(&case.case_id).to_string())
        );
        let agreed_closed = ["resolved", "closed"]
            .iter()
            .any(|k| state.fields.get("status") == Some(&hash(&json!(k))));
        let tg_closed = matches!(status, "resolved" | "closed");
        if linked.is_some() && agreed_closed && tg_closed {
            // A resolved incident is read-only and TG's case is closed too: nothing to write.
            return self.closed_unchanged(&entity, &revision, &view).await;
        }
        let close = changed.contains(&"status") && tg_closed;
        // TG's case is active again while the incident is resolved: a resolved case is
        // read-only, so the state change goes alone first, the other columns after it, in one
        // change set.
        let mut reopen = linked.is_some() && agreed_closed && !tg_closed;
        let active_code = if status == "waiting_on_partner" {
            IncidentStatus::WaitingForDetails
        } else {
            IncidentStatus::InProgress
        };
        // Every write is conditional, so that two replicas (or a redelivery racing a newer
        // revision) never let an older revision of the case overwrite a newer one: a new
        // incident with `If-None-Match: *`, a known one with the ETag of our last write. A 412
        // re-reads the row: a newer `tgb_tgrevision` makes this event stale, else the whole view
        // is written again under the row's current ETag.
        let mut precondition = match (&linked, state.fields.get(ETAG)) {
            (None, _) => Precondition::Absent,
            (Some(_), Some(etag)) => Precondition::Matches(etag.clone()),
            (Some(_), None) => Precondition::Unknown,
        };
        let mut whole_view = false;
        let mut attempts = 0;
        let answers = loop {
            attempts += 1;
            if matches!(precondition, Precondition::Unknown) {
                let row = a
                    .incident_by_case(
                        &case.case_id,
                        "incidentid,tgb_tgrevision,statecode,statuscode",
                    )
                    .await
                    .map_err(handler_error)?;
                let Some(row) = row else {
                    precondition = Precondition::Absent;
                    key = format!("{incidents}({})", incident_id(&case.case_id));
                    continue;
                };
                if let Some(id) = row["incidentid"].as_str() {
                    key = format!("{incidents}({id})");
                }
                if row["tgb_tgrevision"]
                    .as_i64()
                    .is_some_and(|r| r > case.revision)
                {
                    stale("tg");
                    return Ok(Outcome::Stale);
                }
                let resolved = row["statecode"]
                    .as_i64()
                    .is_some_and(|s| s != IncidentState::Active.code());
                if tg_closed && resolved {
                    return self.closed_unchanged(&entity, &revision, &view).await;
                }
                reopen = reopen && resolved;
                precondition = match row["@odata.etag"].as_str() {
                    Some(etag) => Precondition::Matches(etag.to_owned()),
                    None => Precondition::Any,
                };
                whole_view = true;
            }
            let mut body = Map::new();
            for (field, value) in &view {
                if *field != "status" && (whole_view || changed.contains(field)) {
                    body.insert((*field).to_owned(), value.clone());
                }
            }
            if linked.is_none() {
                body.insert("caseorigincode".into(), CaseOrigin::Web.into());
                body.insert("tgb_origin".into(), TgbOrigin::TradingGridCase.into());
            }
            if linked.is_none() || matches!(precondition, Precondition::Absent) {
                body.insert("tgb_tgcaseid".into(), json!(case.case_id));
            }
            body.insert("tgb_tgrevision".into(), json!(case.revision));
            body.insert(
                bind("incident", "customerid", "account"),
                json!(reference("account", &account)),
            );
            if changed.contains(&"status") && !close && linked.is_some() && !reopen {
                body.insert("statecode".into(), IncidentState::Active.into());
                body.insert("statuscode".into(), active_code.into());
            }
            let condition = |request: BatchRequest| match &precondition {
                Precondition::Absent => request.header("If-None-Match", "*"),
                Precondition::Matches(etag) => request.header("If-Match", etag),
                Precondition::Any | Precondition::Unknown => request,
            };
            let mut set = Vec::new();
            if reopen {
                set.push(condition(BatchRequest::new(
                    Method::PATCH,
                    key.clone(),
                    Some(json!({
                        "statecode": IncidentState::Active.code(),
                        "statuscode": active_code.code(),
                    })),
                )));
            }
            let write = upsert(
                &key,
                "incidentid,versionnumber,statecode,statuscode",
                Value::Object(body),
            );
            set.push(if reopen {
                must_exist(write)
            } else {
                condition(write)
            });
            let written_at = set.len() - 1;
            if close {
                set.push(BatchRequest::new(
                    Method::POST,
                    "CloseIncident",
                    Some(json!({
                        "IncidentResolution": {
                            "@odata.type": "Microsoft.Dynamics.CRM.incidentresolution",
                            "subject": format!("Resolved in Trading Grid (revision {})", case.revision),
                            "incidentid@odata.bind": format!("/{key}"),
                        },
                        "Status": IncidentStatus::ProblemSolved.code()
                    })),
                ));
            }
            match a.batcher.submit(set).await {
                Ok(mut answers) => break answers.swap_remove(written_at),
                Err(e @ tgb_clients::dataverse::DataverseError::Conflict { .. }) => {
                    metrics::counter!("tgb_dynamics_conditional_retries_total").increment(1);
                    if attempts >= MAX_CONDITIONAL_ATTEMPTS {
                        // The row keeps moving: try again later, never dead-letter a race.
                        return Err(HandlerError::transient(e.to_string()));
                    }
                    precondition = Precondition::Unknown;
                }
                Err(e) if already_resolved(&e) => {
                    // The incident was written by a newer revision of the case (by another
                    // replica, or before this event's redelivery): this event is stale.
                    let row =
                        a.dv.get(&format!("{key}?$select=tgb_tgrevision"))
                            .await
                            .map_err(handler_error)?;
                    if row["tgb_tgrevision"]
                        .as_i64()
                        .is_some_and(|r| r > case.revision)
                    {
                        stale("tg");
                        return Ok(Outcome::Stale);
                    }
                    // Resolved in Dynamics before tg-bridge learnt of it (the detection path
                    // records it): with TG's case closed too there is nothing to write;
                    // otherwise retry once the resolution is known, which reopens the incident.
                    if tg_closed {
                        return self.closed_unchanged(&entity, &revision, &view).await;
                    }
                    if reopen {
                        // The state change alone was refused too: retrying cannot help.
                        return Err(HandlerError::permanent(format!(
                            "reopening the resolved incident was refused: {e}"
                        )));
                    }
                    return Err(HandlerError::transient(e.to_string()));
                }
                Err(e) => return Err(handler_error(e)),
            }
        };
        let answer = answers.body.clone().unwrap_or_default();
        let incident = answer["incidentid"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| HandlerError::transient("the incident upsert answered no id"))?;
        // The row as our write left it. A status we did not write that differs from the agreed
        // one is someone else's change our write now hides: leave the written version unset so
        // the detection path still reports it.
        let answered_status = match (answer["statecode"].as_i64(), answer["statuscode"].as_i64()) {
            (Some(sc), Some(st)) => {
                Some(crate::detect::status_key(crate::detect::tg_status(sc, st)))
            }
            _ => None,
        };
        let hides_a_change = !changed.contains(&"status")
            && linked.is_some()
            && answered_status.is_some_and(|k| {
                state
                    .fields
                    .get("status")
                    .is_some_and(|agreed| *agreed != hash(&json!(k)))
            });
        // A resolution moves the row's version past the answer's: the next write re-reads it.
        let etag = answer["versionnumber"]
            .as_u64()
            .filter(|_| !close)
            .map(|v| format!("W/\"{v}\""));
        let written_version = answer["versionnumber"]
            .as_u64()
            .filter(|_| !hides_a_change)
            .map(|v| v.to_string());
        if linked.as_deref() != Some(incident.as_str()) {
            a.links
                .link(
                    &Record::new("tg", "case", &case.case_id),
                    &Record::new("dataverse", "incident", &incident),
                )
                .await
                .map_err(HandlerError::transient)?;
        }
        a.states
            .update(TO_DATAVERSE, &entity, |st| {
                if st.is_stale(&revision) {
                    return false;
                }
                st.version = revision.clone();
                for (k, v) in &view {
                    st.fields.insert((*k).to_owned(), hash(v));
                }
                if let Some(w) = &written_version {
                    st.fields
                        .insert(crate::detect::WRITTEN_VERSION.to_owned(), w.clone());
                }
                match &etag {
                    Some(e) => st.fields.insert(ETAG.to_owned(), e.clone()),
                    None => st.fields.remove(ETAG),
                };
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(Outcome::Applied)
    }

    /// TG changed a case whose incident is resolved while TG's case is resolved or closed too:
    /// the incident is read-only, so the event is recorded as applied without a write.
    async fn closed_unchanged(
        &self,
        entity: &str,
        revision: &str,
        view: &BTreeMap<&str, Value>,
    ) -> Result<Outcome, HandlerError> {
        self.a()
            .states
            .update(TO_DATAVERSE, entity, |st| {
                if st.is_stale(revision) {
                    return false;
                }
                st.version = revision.to_owned();
                for (k, v) in view {
                    st.fields.insert((*k).to_owned(), hash(v));
                }
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        metrics::counter!("tgb_dynamics_resolved_writes_skipped_total").increment(1);
        Ok(Outcome::Skipped)
    }

    /// Where notes and messages about a TG case go: the exception it was opened for (D2),
    /// else its incident. `None` until the case is known in Dynamics.
    async fn regarding(
        &self,
        case_id: &str,
    ) -> Result<Option<(&'static str, String)>, HandlerError> {
        let a = self.a();
        let rec = Record::new("tg", "case", case_id);
        if let Some(x) = a
            .links
            .find(&rec, "dataverse", "exception")
            .await
            .map_err(HandlerError::transient)?
        {
            return Ok(Some(("tgb_exception", x)));
        }
        Ok(a.links
            .find(&rec, "dataverse", "incident")
            .await
            .map_err(HandlerError::transient)?
            .map(|i| ("incident", i)))
    }

    fn note(id_key: &str, table: &str, id: &str, subject: String, text: String) -> BatchRequest {
        let note = row_id(id_key);
        upsert(
            &format!("{}({note})", schema::set("annotation")),
            "annotationid",
            json!({
                "subject": truncate(&subject, 500),
                "notetext": text,
                bind("annotation", "objectid", table): reference(table, id),
            }),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        id_key: &str,
        table: &str,
        id: &str,
        subject: String,
        text: String,
        channel: MessageChannel,
        from_partner: bool,
        tg_id: &str,
        author: &str,
        sent_at: Option<&prost_types::Timestamp>,
    ) -> BatchRequest {
        let msg = row_id(id_key);
        let mut body = json!({
            "subject": truncate(&subject, 200),
            "description": text,
            "tgb_channel": channel.code(),
            "tgb_direction": if from_partner {
                MessageDirection::FromPartner
            } else {
                MessageDirection::ToPartner
            }
            .code(),
            "tgb_tgmessageid": truncate(tg_id, 100),
            "tgb_author": truncate(author, 200),
            bind("tgb_partnermessage", "regardingobjectid", table): reference(table, id),
        });
        if let Some(t) = sent_at.and_then(rfc3339) {
            body["tgb_sentat"] = json!(t);
        }
        // Written completed: a case cannot be resolved while activities regarding it are open,
        // and a captured message is a record of something that happened, not work to do. A
        // completed activity cannot be updated, so it is created once (`If-None-Match: *`).
        body["statecode"] = ActivityState::Completed.into();
        body["statuscode"] = ActivityStatus::Completed.into();
        upsert(
            &format!("{}({msg})", schema::set("tgb_partnermessage")),
            "activityid",
            body,
        )
        .header("If-None-Match", "*")
    }

    /// Writes a change set holding create-only partner messages. A 412 means a message exists
    /// already (a redelivery): the rest of the set is written without it.
    async fn submit_capture(&self, set: Vec<BatchRequest>) -> Result<(), HandlerError> {
        let batcher = &self.a().batcher;
        match batcher.submit(set.clone()).await {
            Ok(_) => Ok(()),
            Err(tgb_clients::dataverse::DataverseError::Conflict { .. }) => {
                metrics::counter!("tgb_dynamics_messages_already_written_total").increment(1);
                let rest: Vec<BatchRequest> = set
                    .into_iter()
                    .filter(|r| {
                        !r.headers
                            .iter()
                            .any(|(k, v)| k.eq_ignore_ascii_case("If-None-Match") && v == "*")
                    })
                    .collect();
                if rest.is_empty() {
                    return Ok(());
                }
                batcher.submit(rest).await.map_err(handler_error)?;
                Ok(())
            }
            Err(e) => Err(handler_error(e)),
        }
    }

    /// D1/D2/D4: a TG comment → note + partner message on the case (or exception).
    async fn comment(&self, e: &pb::TgCommentAdded) -> Result<Outcome, HandlerError> {
        if e.side() == pb::CommentSide::Internal {
            // Internal comments are written in TG by staff or by tg-bridge (Dynamics notes):
            // copying them back would echo.
            return Ok(Outcome::Skipped);
        }
        let Some((table, id)) = self.regarding(&e.case_id).await? else {
            return Err(HandlerError::transient(format!(
                "case {} is not in Dynamics yet",
                e.case_id
            )));
        };
        let author = e
            .author
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let subject = format!(
            "Partner comment from {}",
            if author.is_empty() {
                "the partner"
            } else {
                &author
            }
        );
        let set = vec![
            Self::note(
                &format!("tg-comment:{}", e.comment_id),
                table,
                &id,
                subject.clone(),
                e.body.clone(),
            ),
            Self::message(
                &format!("tg-comment-message:{}", e.comment_id),
                table,
                &id,
                subject,
                e.body.clone(),
                MessageChannel::CaseComment,
                true,
                &e.comment_id,
                &author,
                e.created_at.as_ref(),
            ),
        ];
        self.submit_capture(set).await?;
        Ok(Outcome::Applied)
    }

    /// D1/D4: a document uploaded in TG → a note with its reference + a partner message.
    async fn document(
        &self,
        meta: &pb::EventMeta,
        e: &pb::TgDocumentUploaded,
    ) -> Result<Outcome, HandlerError> {
        let doc = e
            .document
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("document is missing"))?;
        let (table, id) = if doc.case_id.is_empty() {
            let partner = meta.partner.clone().unwrap_or_default();
            ("account", self.a().account_for(&partner).await?)
        } else {
            match self.regarding(&doc.case_id).await? {
                Some(x) => x,
                None => {
                    return Err(HandlerError::transient(format!(
                        "case {} is not in Dynamics yet",
                        doc.case_id
                    )));
                }
            }
        };
        // The reference only: the content (banking details included) stays in TG and the
        // document store.
        let text = format!(
            "Document {} ({}, {} bytes) uploaded in Trading Grid.\nTG document: {}\nSHA-256: {}",
            doc.file_name,
            doc.doc_type().as_str_name(),
            doc.size,
            doc.document_id,
            doc.sha256
        );
        let subject = format!("Document: {}", doc.file_name);
        let mut set = vec![Self::message(
            &format!("tg-document-message:{}", doc.document_id),
            table,
            &id,
            subject.clone(),
            text.clone(),
            MessageChannel::DocumentInteraction,
            true,
            &doc.document_id,
            &doc.uploaded_by,
            meta.occurred_at.as_ref(),
        )];
        if table != "account" {
            set.insert(
                0,
                Self::note(
                    &format!("tg-document:{}", doc.document_id),
                    table,
                    &id,
                    subject,
                    text,
                ),
            );
        }
        self.submit_capture(set).await?;
        Ok(Outcome::Applied)
    }

    /// D3: an approved (or rejected) onboarding document → the account's verification flag
    /// and a note with the document reference.
    async fn review(
        &self,
        meta: &pb::EventMeta,
        e: &pb::ReviewCompleted,
    ) -> Result<Outcome, HandlerError> {
        let doc = e
            .document
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("document is missing"))?;
        let flag = match doc.doc_type() {
            pb::DocType::TaxForm => "tgb_taxformverified",
            pb::DocType::BankingDetails => "tgb_bankingverified",
            pb::DocType::ComplianceCertificate => "tgb_compliancecertverified",
            pb::DocType::TradingAgreement => "tgb_agreementverified",
            _ => return Ok(Outcome::Skipped),
        };
        let verified = match e.outcome() {
            pb::ReviewOutcome::Approved => true,
            pb::ReviewOutcome::Rejected => false,
            _ => return Ok(Outcome::Skipped),
        };
        let partner = meta.partner.clone().unwrap_or_default();
        let account = self.a().account_for(&partner).await?;
        let mut fields = json!({ flag: verified });
        if doc.doc_type() == pb::DocType::BankingDetails {
            fields["tgb_bankingdocumentref"] = if verified {
                json!(format!("tg:document:{}", doc.document_id))
            } else {
                Value::Null
            };
        }
        let reviewer = e
            .reviewer
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let text = format!(
            "{} {} in Trading Grid document review{}.\nTG document: {} ({})",
            doc.doc_type().as_str_name(),
            if verified { "approved" } else { "rejected" },
            if reviewer.is_empty() {
                String::new()
            } else {
                format!(" by {reviewer}")
            },
            doc.document_id,
            doc.file_name
        );
        let set = vec![
            must_exist(upsert(
                &format!("{}({account})", schema::set("account")),
                "accountid",
                fields,
            )),
            Self::note(
                &format!("tg-review:{}:{}", doc.document_id, verified),
                "account",
                &account,
                format!("Verification: {}", doc.file_name),
                text,
            ),
        ];
        self.a().batcher.submit(set).await.map_err(handler_error)?;
        Ok(Outcome::Applied)
    }

    /// D3: the overall onboarding status → `tgb_onboardingstatus`.
    async fn onboarding(
        &self,
        meta: &pb::EventMeta,
        e: &pb::OnboardingStatus,
    ) -> Result<Outcome, HandlerError> {
        let value = match e.overall() {
            pb::OnboardingOverall::NotStarted => OnboardingStatus::NotStarted,
            pb::OnboardingOverall::InProgress | pb::OnboardingOverall::Blocked => {
                OnboardingStatus::InProgress
            }
            pb::OnboardingOverall::Complete => OnboardingStatus::Approved,
            pb::OnboardingOverall::Unspecified => return Ok(Outcome::Skipped),
        };
        let partner = meta.partner.clone().unwrap_or_default();
        let account = self.a().account_for(&partner).await?;
        self.a()
            .batcher
            .submit(vec![must_exist(upsert(
                &format!("{}({account})", schema::set("account")),
                "accountid",
                json!({"tgb_onboardingstatus": value.code()}),
            ))])
            .await
            .map_err(handler_error)?;
        Ok(Outcome::Applied)
    }

    /// D6: a TG dispute → invoice dispute columns + the linked case, in one change set.
    async fn dispute(
        &self,
        meta: &pb::EventMeta,
        d: Option<&pb::TgDispute>,
        opened: bool,
    ) -> Result<Outcome, HandlerError> {
        let d = d.ok_or_else(|| HandlerError::permanent("dispute is missing"))?;
        let a = self.a();
        let entity = format!("tg:dispute:{}", d.dispute_id);
        let (state, _) = a
            .states
            .get(TO_DATAVERSE, &entity)
            .await
            .map_err(HandlerError::transient)?;
        let revision = d.revision.to_string();
        if state.is_stale(&revision) {
            stale("tg");
            return Ok(Outcome::Stale);
        }
        let found =
            a.dv.get(&format!(
                "{}?$select=invoiceid&$filter=invoicenumber eq {}",
                schema::set("invoice"),
                quote(&d.invoice_ref)
            ))
            .await
            .map_err(handler_error)?;
        let Some(invoice) = found["value"][0]["invoiceid"].as_str().map(str::to_owned) else {
            return Err(HandlerError::permanent(format!(
                "no invoice numbered {:?} in Dynamics",
                d.invoice_ref
            )));
        };
        let partner = meta.partner.clone().unwrap_or_default();
        let account = a.account_for(&partner).await?;
        let case_key = if d.case_id.is_empty() {
            format!("dispute:{}", d.dispute_id)
        } else {
            d.case_id.clone()
        };
        // The incident: the TG case's linked one, else the one holding the key, else the id
        // tg-bridge gives a new one (never the key in a URL: it holds `:`). A TG case already
        // in Dynamics keeps its own title and description: the dispute only points at it.
        let existing = match a
            .links
            .find(
                &Record::new("tg", "case", &case_key),
                "dataverse",
                "incident",
            )
            .await
            .map_err(HandlerError::transient)?
        {
            Some(id) => Some(id),
            None => a
                .incident_by_case(&case_key, "incidentid")
                .await
                .map_err(handler_error)?
                .and_then(|row| row["incidentid"].as_str().map(str::to_owned)),
        };
        let incident_key = format!(
            "{}({})",
            schema::set("incident"),
            existing
                .clone()
                .unwrap_or_else(|| incident_id(&case_key).to_string())
        );
        let write_incident = existing.is_none() || d.case_id.is_empty();
        let status = match d.status() {
            pb::DisputeStatus::UnderReview => DisputeStatus::UnderReview,
            pb::DisputeStatus::Resolved => DisputeStatus::Resolved,
            _ => DisputeStatus::Open,
        };
        let mut columns = json!({
            "tgb_disputeid": d.dispute_id,
            "tgb_disputestatus": status.code(),
            "tgb_disputereason": truncate(&d.reason, 4000),
            bind("invoice", "tgb_disputecase", "incident"): format!("/{incident_key}"),
        });
        if let Some(m) = &d.disputed_amount
            && let Ok(v) = m.value.parse::<f64>()
        {
            columns["tgb_disputedamount"] = json!(v);
        }
        if opened && let Some(t) = meta.occurred_at.as_ref().and_then(rfc3339) {
            columns["tgb_disputeraisedon"] = json!(t);
        }
        let mut set = Vec::new();
        if write_incident {
            set.push(upsert(
                &incident_key,
                "incidentid",
                json!({
                    "title": truncate(&format!("Invoice dispute {} on {}", d.dispute_id, d.invoice_ref), 200),
                    "description": truncate(&d.reason, 2000),
                    "casetypecode": CaseType::Problem.code(),
                    "caseorigincode": CaseOrigin::Web.code(),
                    "tgb_origin": TgbOrigin::InvoiceDispute.code(),
                    "tgb_tgcaseid": case_key,
                    bind("incident", "customerid", "account"): reference("account", &account),
                }),
            ));
        }
        set.push(must_exist(upsert(
            &format!("{}({invoice})", schema::set("invoice")),
            "invoiceid",
            columns,
        )));
        let answers = match a.batcher.submit(set).await {
            Ok(answers) => answers,
            // The key was taken meanwhile by a row at another id: the next delivery finds it.
            Err(e @ tgb_clients::dataverse::DataverseError::Conflict { .. }) => {
                return Err(HandlerError::transient(e.to_string()));
            }
            Err(e) => return Err(handler_error(e)),
        };
        let incident = match &existing {
            Some(id) if !write_incident => id.clone(),
            _ => answers[0]
                .body
                .as_ref()
                .and_then(|b| b["incidentid"].as_str())
                .unwrap_or_default()
                .to_owned(),
        };
        a.links
            .link(
                &Record::new("tg", "dispute", &d.dispute_id),
                &Record::new("dataverse", "invoice", &invoice),
            )
            .await
            .map_err(HandlerError::transient)?;
        if !d.case_id.is_empty() && !incident.is_empty() {
            a.links
                .link(
                    &Record::new("tg", "case", &d.case_id),
                    &Record::new("dataverse", "incident", &incident),
                )
                .await
                .map_err(HandlerError::transient)?;
        }
        a.states
            .update(TO_DATAVERSE, &entity, |st| {
                if st.is_stale(&revision) {
                    return false;
                }
                st.version = revision.clone();
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(Outcome::Applied)
    }

    /// D8: the TG partner profile → account and contacts, field by field.
    async fn partner(
        &self,
        meta: &pb::EventMeta,
        e: &pb::TgPartnerUpdated,
    ) -> Result<Outcome, HandlerError> {
        let profile = e
            .profile
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("profile is missing"))?;
        let partner = meta.partner.clone().unwrap_or_default();
        let a = self.a();
        let key = partner.key();
        let entity = format!("tg:partner:{key}");
        let lock = a.lock_of(&entity);
        let _guard = lock.lock().await;
        let (state, _) = a
            .states
            .get(TO_DATAVERSE, &entity)
            .await
            .map_err(HandlerError::transient)?;
        let revision = profile.revision.to_string();
        if state.is_stale(&revision) {
            stale("tg");
            return Ok(Outcome::Stale);
        }
        let account = a.account_for(&partner).await?;
        let current =
            a.dv.get(&format!(
                "{}({account})?$select={}",
                schema::set("account"),
                ACCOUNT_COLUMNS
            ))
            .await
            .map_err(handler_error)?;
        let tg_view = tg_account_view(profile);
        let dv_view = dv_account_view(&current);
        let mut write = Map::new();
        let mut agreed = BTreeMap::new();
        for (field, tg_value) in &tg_view {
            let dv_value = dv_view.get(field).cloned().unwrap_or(Value::Null);
            let (tg_h, dv_h) = (hash(tg_value), hash(&dv_value));
            let base = state.fields.get(*field);
            let winner_tg = if tg_h == dv_h {
                None
            } else {
                let tg_changed = base != Some(&tg_h);
                let dv_changed = base != Some(&dv_h);
                match (tg_changed, dv_changed) {
                    (true, false) => Some(true),
                    (false, _) => Some(false),
                    (true, true) => {
                        let policy = a.settings.policy(field);
                        let tg_wins = policy == FieldPolicy::TgWins;
                        metrics::counter!("tgb_dynamics_conflicts_total", "field" => *field, "winner" => if tg_wins { "tg" } else { "dynamics" }).increment(1);
                        tracing::warn!(partner = %key, field, ?policy, "both sides changed the field since the last sync");
                        a.states
                            .record(
                                &format!("conflict.{}.{field}", tgb_bus::links::encode_token(&key)),
                                &json!({"partner": key, "field": field, "policy": format!("{policy:?}"),
                                    "winner": if tg_wins { "tg" } else { "dynamics" }, "tg_revision": profile.revision,
                                    "dataverse_version": current["versionnumber"], "at": rfc3339(&prost_types::Timestamp::from(std::time::SystemTime::now()))}),
                            )
                            .await
                            .map_err(HandlerError::transient)?;
                        Some(tg_wins)
                    }
                }
            };
            match winner_tg {
                Some(true) => {
                    if let Value::Object(cols) = account_columns(field, tg_value) {
                        write.extend(cols);
                    }
                    agreed.insert((*field).to_owned(), tg_h);
                }
                Some(false) => {
                    agreed.insert((*field).to_owned(), dv_h);
                }
                None => {
                    agreed.insert((*field).to_owned(), tg_h);
                }
            }
        }
        let contacts_h = hash(&json!(
            profile
                .contacts
                .iter()
                .map(|c| (&c.contact_id, &c.name, &c.email, &c.phone, &c.role))
                .collect::<Vec<_>>()
        ));
        let mut set = Vec::new();
        if !write.is_empty() {
            set.push(must_exist(upsert(
                &format!("{}({account})", schema::set("account")),
                "accountid",
                Value::Object(write),
            )));
        }
        if state.fields.get("contacts") != Some(&contacts_h)
            && a.settings.policy("contacts") == FieldPolicy::TgWins
        {
            for c in &profile.contacts {
                let (first, last) = match c.name.rsplit_once(' ') {
                    Some((f, l)) => (f.to_owned(), l.to_owned()),
                    None => (String::new(), c.name.clone()),
                };
                let id = row_id(&format!("tg-contact:{key}:{}", c.contact_id));
                set.push(upsert(
                    &format!("{}({id})", schema::set("contact")),
                    "contactid",
                    json!({
                        "firstname": truncate(&first, 50), "lastname": truncate(&last, 50),
                        "emailaddress1": truncate(&c.email, 100), "telephone1": truncate(&c.phone, 50),
                        "jobtitle": truncate(&c.role, 100), "tgb_tgcontactid": truncate(&c.contact_id, 100),
                        bind("contact", "parentcustomerid", "account"): reference("account", &account),
                    }),
                ));
            }
        }
        agreed.insert("contacts".into(), contacts_h);
        let applied = !set.is_empty();
        if applied {
            a.batcher.submit(set).await.map_err(handler_error)?;
        }
        a.states
            .update(TO_DATAVERSE, &entity, |st| {
                if st.is_stale(&revision) {
                    return false;
                }
                st.version = revision.clone();
                st.fields.extend(agreed.clone());
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(if applied {
            Outcome::Applied
        } else {
            Outcome::Skipped
        })
    }
}

/// Account columns D8 reads.
pub const ACCOUNT_COLUMNS: &str =
    "name,address1_line1,address1_city,address1_postalcode,address1_country,versionnumber";

/// Dataverse refused a write to a resolved incident (`0x800404cf`).
fn already_resolved(e: &tgb_clients::dataverse::DataverseError) -> bool {
    const CODE: &str = "0x800404cf";
    e.code().is_some_and(|c| c.eq_ignore_ascii_case(CODE)) || e.to_string().contains(CODE)
}

/// The D8 fields of a TG profile.
pub fn tg_account_view(p: &pb::PartnerProfile) -> BTreeMap<&'static str, Value> {
    let addr = p.addresses.first().cloned().unwrap_or_default();
    BTreeMap::from([
        ("legal_name", json!(p.legal_name)),
        (
            "address",
            json!([addr.line1, addr.city, addr.postal_code, addr.country]),
        ),
    ])
}

/// The D8 fields of an account row.
pub fn dv_account_view(row: &Value) -> BTreeMap<&'static str, Value> {
    let s = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
    BTreeMap::from([
        ("legal_name", json!(s("name"))),
        (
            "address",
            json!([
                s("address1_line1"),
                s("address1_city"),
                s("address1_postalcode"),
                s("address1_country")
            ]),
        ),
    ])
}

fn account_columns(field: &str, v: &Value) -> Value {
    match field {
        "legal_name" => json!({"name": v}),
        "address" => {
            json!({"address1_line1": v[0], "address1_city": v[1], "address1_postalcode": v[2], "address1_country": v[3]})
        }
        _ => json!({}),
    }
}

/// RFC 3339 of a protobuf timestamp.
pub fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}
