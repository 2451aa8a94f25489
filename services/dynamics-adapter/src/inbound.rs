//! The executor of TG (and review/onboarding) events → Dataverse writes: it reads what a plan
//! needs (the `tgb_sync` state, links, rows), asks the aggregate's pure `plan` which writes to
//! make, submits them through the batcher, records the outcome, and answers the
//! [`tgb_bus::Outcome`]. The decisions are in the aggregates.
//!
//! | subject | flow | aggregate | Dataverse |
//! |---|---|---|---|
//! | `tg.case.opened/updated` | D1 | [`incident`] | write `incidents(<id>)` (the linked row, else the one holding `tgb_tgcaseid`, found with `$filter`, else a new one at UUIDv5 of the case id), only the fields that changed since the last sync; customer = the partner's account; TG resolved/closed → `CloseIncident` |
//! | `tg.case.comment_added` | D1, D2, D4 | [`notes`] | annotation (UUIDv5 id) on the case, or on the exception the case was opened for; `tgb_partnermessage` activity regarding it |
//! | `tg.document.uploaded` | D1, D4 | [`notes`] | annotation with the document reference; `tgb_partnermessage` (document interaction) |
//! | `review.document.completed` | D3 | [`account`] | verification flag on the account + annotation; banking details only as a document reference |
//! | `onboarding.partner.status` | D3 | [`account`] | account `tgb_onboardingstatus` |
//! | `tg.dispute.opened/updated` | D6 | [`invoice`] | invoice dispute columns + a linked case, one change set |
//! | `tg.partner.updated` | D8 | [`account`], [`contact`] | account and contacts, per-field conflict policy |

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tgb_bus::links::Record;
use tgb_bus::{Delivery, Handler, HandlerError};
use tgb_clients::dataverse::{BatchAnswer, BatchRequest, DataverseError};
use tgb_proto as pb;

use crate::adapter::{Adapter, echo, stale};
use crate::incident::{self, CaseWrite, ETAG, Plan, Reread, WRITTEN_VERSION};
use crate::odata::{self, rfc3339};
use crate::state::{TO_DATAVERSE, hash};
use crate::{account, contact, invoice, notes};

/// Conditional incident writes tried before the event is retried later.
const MAX_CONDITIONAL_ATTEMPTS: u32 = 4;

tgb_bus::routes! {
    /// Every event the writer consumes, with its flow and the method that handles it.
    pub Routes for Writer -> Outcome {
        TgCaseOpened => "D1", case_opened,
        TgCaseUpdated => "D1", case_updated,
        TgCommentAdded => "D4", comment,
        TgDocumentUploaded => "D4", document_uploaded,
        TgDisputeOpened => "D6", dispute_opened,
        TgDisputeUpdated => "D6", dispute_updated,
        TgPartnerUpdated => "D8", partner_updated,
        ReviewCompleted => "D3", review_completed,
        OnboardingStatus => "D3", onboarding_status,
    }
}

/// Every subject the writer consumes.
pub const SUBJECTS: &[&str] = Routes::SUBJECTS;

/// The consumer's handler.
pub struct Writer(pub Arc<Adapter>);

pub enum Outcome {
    /// Written: the record (`dataverse:<table>:<id>`) and what Dataverse answered.
    Applied(String, String),
    Skipped,
    Stale,
    Echo,
}

/// The ledger's name of a Dataverse row.
fn record(table: &str, id: &str) -> String {
    format!("dataverse:{table}:{id}")
}

/// The statuses of a change set's answers (`200, 204`).
fn statuses(answers: &[BatchAnswer]) -> String {
    answers
        .iter()
        .map(|a| a.status.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The route methods: each takes its event as the routes table hands it over.
impl Writer {
    async fn case_opened(&self, e: &pb::TgCaseOpened) -> Result<Outcome, HandlerError> {
        self.case(&meta_of(e), e.case.as_ref(), Known::Read).await
    }

    async fn case_updated(&self, e: &pb::TgCaseUpdated) -> Result<Outcome, HandlerError> {
        self.case(&meta_of(e), e.case.as_ref(), Known::Read).await
    }

    async fn document_uploaded(&self, e: &pb::TgDocumentUploaded) -> Result<Outcome, HandlerError> {
        self.document(&meta_of(e), e).await
    }

    async fn dispute_opened(&self, e: &pb::TgDisputeOpened) -> Result<Outcome, HandlerError> {
        self.dispute(&meta_of(e), e.dispute.as_ref(), true).await
    }

    async fn dispute_updated(&self, e: &pb::TgDisputeUpdated) -> Result<Outcome, HandlerError> {
        self.dispute(&meta_of(e), e.dispute.as_ref(), false).await
    }

    async fn partner_updated(&self, e: &pb::TgPartnerUpdated) -> Result<Outcome, HandlerError> {
        self.partner(&meta_of(e), e).await
    }

    async fn review_completed(&self, e: &pb::ReviewCompleted) -> Result<Outcome, HandlerError> {
        self.review(&meta_of(e), e).await
    }

    async fn onboarding_status(&self, e: &pb::OnboardingStatus) -> Result<Outcome, HandlerError> {
        self.onboarding(&meta_of(e), e).await
    }
}

/// An event's metadata, empty when it has none.
fn meta_of(e: &impl pb::BusEvent) -> pb::EventMeta {
    e.meta().cloned().unwrap_or_default()
}

/// What D1 knows of a case before it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Read its sync state and its link.
    Read,
    /// Presumed new, not read: the first delivery of a `tg.case.opened` that no backfill
    /// replayed. The incident's create-only condition (`If-None-Match: *`) checks the
    /// presumption where it matters: should the incident exist after all (TG sent the case
    /// again after the duplicate window), Dataverse answers 412 and the row is read back as
    /// after any lost race; the state's create falls back to a read the same way. Two KV reads,
    /// two broker round trips, saved on each new case (#21).
    PresumedNew,
}

impl Handler for Writer {
    async fn handle(&self, delivery: Delivery) -> Result<tgb_bus::Outcome, HandlerError> {
        let flow = Routes::flow_of(&delivery.event).unwrap_or("D1");
        let outcome = match &delivery.event {
            pb::Event::TgCaseOpened(e) if delivery.first_live() => {
                self.case(&meta_of(e), e.case.as_ref(), Known::PresumedNew)
                    .await?
            }
            event => Routes::dispatch(self, event).await?,
        };
        Ok(match outcome {
            Outcome::Applied(record, response) => {
                tgb_bus::Outcome::applied(flow).target(record, response)
            }
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

/// Dataverse refused a write to a resolved incident (`0x800404cf`).
fn already_resolved(e: &DataverseError) -> bool {
    const CODE: &str = "0x800404cf";
    e.code().is_some_and(|c| c.eq_ignore_ascii_case(CODE)) || e.to_string().contains(CODE)
}

impl Writer {
    fn a(&self) -> &Adapter {
        &self.0
    }

    /// Records `revision` as applied to `entity` (unless a newer one was meanwhile).
    async fn record_version(&self, entity: &str, revision: &str) -> Result<(), HandlerError> {
        self.a()
            .states
            .update(TO_DATAVERSE, entity, |st| {
                if st.is_stale(revision) {
                    return false;
                }
                st.version = revision.to_owned();
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    /// D1: TG case → incident ([`incident::plan`]).
    async fn case(
        &self,
        meta: &pb::EventMeta,
        case: Option<&pb::TgCase>,
        known: Known,
    ) -> Result<Outcome, HandlerError> {
        let case = case.ok_or_else(|| HandlerError::permanent("case is missing"))?;
        if case.case_id.is_empty() {
            return Err(HandlerError::permanent("case.case_id is empty"));
        }
        let a = self.a();
        let entity = format!("tg:case:{}", case.case_id);
        let lock = a.lock_of(&entity);
        let _guard = lock.lock().await;
        let tg_case = Record::new("tg", "case", &case.case_id);
        let (state, linked) = match known {
            Known::PresumedNew => (Ok(Default::default()), Ok(None)),
            // The state and the link are read together: one round trip to the broker, not two.
            Known::Read => tokio::join!(
                a.states.get(TO_DATAVERSE, &entity),
                a.links.find(&tg_case, "dataverse", "incident")
            ),
        };
        let (state, state_rev) = state.map_err(HandlerError::transient)?;
        let linked = linked.map_err(HandlerError::transient)?;
        let revision = case.revision.to_string();
        // Checked before any other read: a stale event costs nothing more.
        if state.is_stale(&revision) {
            // The state records this revision and the link is missing: the attempt that wrote
            // them lost the link's write (the two go together). The incident is there; link it.
            if known == Known::Read
                && linked.is_none()
                && let Some(id) = self.restore_link(&tg_case, &case.case_id, None).await?
            {
                return Ok(Outcome::Applied(
                    record("incident", &id),
                    "link restored: the state had this revision, the link did not".into(),
                ));
            }
            stale("tg");
            return Ok(Outcome::Stale);
        }
        let partner = meta.partner.clone().unwrap_or_default();
        let account = a.account_for(&partner).await?;
        let mut w = match incident::plan(&state, case, linked.as_deref(), &a.settings) {
            Plan::Stale => {
                stale("tg");
                return Ok(Outcome::Stale);
            }
            Plan::Echo => {
                echo("tg", "fingerprint");
                self.record_version(&entity, &revision).await?;
                return Ok(Outcome::Echo);
            }
            Plan::ClosedUnchanged(view) => {
                return self.closed_unchanged(&entity, &revision, &view, None).await;
            }
            Plan::Write(w) => w,
        };
        // A 412 re-reads the row: a newer `tgb_tgrevision` makes this event stale, else the
        // whole view is written again under the row's current ETag.
        let mut attempts = 0;
        // What Dataverse answered, attempt by attempt (`412 → re-read → 200`).
        let mut trail = Vec::new();
        let answer = loop {
            attempts += 1;
            if matches!(w.precondition, incident::Precondition::Unknown) {
                let row = a
                    .incident_by_case(&case.case_id, odata::INCIDENT_REREAD)
                    .await?;
                let row_version = row.as_ref().and_then(incident::row_version);
                let reread = w.reread(row.as_ref(), case);
                if linked.is_none() && matches!(reread, Reread::Stale | Reread::ClosedUnchanged) {
                    // Nothing is written: the row read back is linked here, or never.
                    self.restore_link(&tg_case, &case.case_id, row.as_ref())
                        .await?;
                }
                match reread {
                    Reread::Absent => continue,
                    Reread::Stale => {
                        stale("tg");
                        return Ok(Outcome::Stale);
                    }
                    Reread::ClosedUnchanged => {
                        return self
                            .closed_unchanged(&entity, &revision, &w.view, row_version)
                            .await;
                    }
                    Reread::Ready => {}
                }
            }
            let (set, written_at) = w.writes(case, &account);
            match a.batcher.submit(set).await {
                Ok(answers) => break answered(answers, written_at)?,
                Err(e @ DataverseError::Conflict { .. }) => {
                    metrics::counter!("tgb_dynamics_conditional_retries_total").increment(1);
                    trail.push("412 → re-read".to_owned());
                    if attempts >= MAX_CONDITIONAL_ATTEMPTS {
                        // The row keeps moving: try again later, never dead-letter a race.
                        return Err(HandlerError::transient(e.to_string()));
                    }
                    w.precondition = incident::Precondition::Unknown;
                }
                Err(e) if already_resolved(&e) => {
                    return self
                        .refused_as_resolved(e, case, &w, &entity, &revision)
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        trail.push(answer.status.to_string());
        let recorded = w
            .recorded(answer.body.as_ref().unwrap_or(&Value::Null))
            .ok_or_else(|| HandlerError::transient("the incident upsert answered no id"))?;
        // The links and the state go together: one round trip to the broker, not three.
        let link = async {
            if linked.as_deref() == Some(recorded.incident.as_str()) {
                return Ok(());
            }
            a.links
                .link(
                    &tg_case,
                    &Record::new("dataverse", "incident", &recorded.incident),
                )
                .await
                .map_err(HandlerError::transient)
        };
        // Under the entity's lock nothing of this process wrote the state since it was read: the
        // write goes at that revision, and only another replica's write makes it re-read.
        let state = async {
            a.states
                .update_from(TO_DATAVERSE, &entity, (state, state_rev), |st| {
                    if st.is_stale(&revision) {
                        return false;
                    }
                    st.version = revision.clone();
                    for (k, v) in &w.view {
                        st.fields.insert((*k).to_owned(), hash(v));
                    }
                    if let Some(v) = &recorded.written_version {
                        st.fields.insert(WRITTEN_VERSION.to_owned(), v.clone());
                    }
                    match &recorded.etag {
                        Some(e) => st.fields.insert(ETAG.to_owned(), e.clone()),
                        None => st.fields.remove(ETAG),
                    };
                    true
                })
                .await
                .map_err(HandlerError::transient)
        };
        tokio::try_join!(link, state)?;
        Ok(Outcome::Applied(
            record("incident", &recorded.incident),
            trail.join(" → "),
        ))
    }

    /// Links a case to its incident, read by the case's key unless `row` is already in hand;
    /// the incident's id, or `None` when no incident holds the case.
    async fn restore_link(
        &self,
        tg_case: &Record<'_>,
        case_id: &str,
        row: Option<&Value>,
    ) -> Result<Option<String>, HandlerError> {
        let a = self.a();
        let read;
        let row = match row {
            Some(r) => Some(r),
            None => {
                read = a.incident_by_case(case_id, odata::INCIDENT_REREAD).await?;
                read.as_ref()
            }
        };
        let Some(id) = row.and_then(|r| r["incidentid"].as_str()) else {
            return Ok(None);
        };
        a.links
            .link(tg_case, &Record::new("dataverse", "incident", id))
            .await
            .map_err(HandlerError::transient)?;
        tracing::info!(
            case = case_id,
            incident = id,
            "restored the link of a case to its incident"
        );
        Ok(Some(id.to_owned()))
    }

    /// Dataverse refused the write because the incident is resolved.
    async fn refused_as_resolved(
        &self,
        e: DataverseError,
        case: &pb::TgCase,
        w: &CaseWrite,
        entity: &str,
        revision: &str,
    ) -> Result<Outcome, HandlerError> {
        // The incident was written by a newer revision of the case (by another replica, or
        // before this event's redelivery): this event is stale.
        let row = self
            .a()
            .dv
            .get(&odata::select(&w.key, odata::INCIDENT_REVISION))
            .await?;
        if incident::newer_revision(&row, case) {
            stale("tg");
            return Ok(Outcome::Stale);
        }
        // Resolved in Dynamics before tg-bridge learnt of it (the detection path records it):
        // with TG's case closed too there is nothing to write; otherwise retry once the
        // resolution is known, which reopens the incident.
        if w.tg_closed {
            return self
                .closed_unchanged(entity, revision, &w.view, incident::row_version(&row))
                .await;
        }
        if w.reopen {
            // The state change alone was refused too: retrying cannot help.
            return Err(HandlerError::permanent(format!(
                "reopening the resolved incident was refused: {e}"
            )));
        }
        Err(HandlerError::transient(e.to_string()))
    }

    /// TG changed a case whose incident is resolved while TG's case is resolved or closed too:
    /// the incident is read-only, so the event is recorded as applied without a write, with
    /// the row's version (`row_version`, when it was read) as written ([`incident::record_closed`]).
    async fn closed_unchanged(
        &self,
        entity: &str,
        revision: &str,
        view: &BTreeMap<&str, Value>,
        row_version: Option<u64>,
    ) -> Result<Outcome, HandlerError> {
        self.a()
            .states
            .update(TO_DATAVERSE, entity, |st| {
                incident::record_closed(st, revision, view, row_version)
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

    /// Writes a change set holding create-only partner messages. A 412 means a message exists
    /// already (a redelivery): the rest of the set is written without it.
    /// Answers what Dataverse answered.
    async fn submit_capture(&self, set: Vec<BatchRequest>) -> Result<String, HandlerError> {
        let batcher = &self.a().batcher;
        match batcher.submit(set.clone()).await {
            Ok(answers) => Ok(statuses(&answers)),
            Err(DataverseError::Conflict { .. }) => {
                metrics::counter!("tgb_dynamics_messages_already_written_total").increment(1);
                let rest = notes::without_created(set);
                if rest.is_empty() {
                    return Ok("412 (message written before)".to_owned());
                }
                let answers = batcher.submit(rest).await?;
                Ok(format!(
                    "412 (message written before) → {}",
                    statuses(&answers)
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// D1/D2/D4: a TG comment → note + partner message on the case (or exception).
    async fn comment(&self, e: &pb::TgCommentAdded) -> Result<Outcome, HandlerError> {
        if !notes::captured(e) {
            return Ok(Outcome::Skipped);
        }
        let Some((table, id)) = self.regarding(&e.case_id).await? else {
            return Err(HandlerError::transient(format!(
                "case {} is not in Dynamics yet",
                e.case_id
            )));
        };
        let response = self
            .submit_capture(notes::plan_comment(e, (table, &id)))
            .await?;
        Ok(Outcome::Applied(record(table, &id), response))
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
        let response = self
            .submit_capture(notes::plan_document(
                doc,
                meta.occurred_at.as_ref(),
                (table, &id),
            ))
            .await?;
        Ok(Outcome::Applied(record(table, &id), response))
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
        let Some(flag) = account::review_flag(doc, e.outcome()) else {
            return Ok(Outcome::Skipped);
        };
        let partner = meta.partner.clone().unwrap_or_default();
        let account = self.a().account_for(&partner).await?;
        let answers = self
            .a()
            .batcher
            .submit(account::plan_review(e, doc, flag, &account))
            .await?;
        Ok(Outcome::Applied(
            record("account", &account),
            statuses(&answers),
        ))
    }

    /// D3: the overall onboarding status → `tgb_onboardingstatus`.
    async fn onboarding(
        &self,
        meta: &pb::EventMeta,
        e: &pb::OnboardingStatus,
    ) -> Result<Outcome, HandlerError> {
        let Some(status) = account::onboarding_status(e.overall()) else {
            return Ok(Outcome::Skipped);
        };
        let partner = meta.partner.clone().unwrap_or_default();
        let account = self.a().account_for(&partner).await?;
        let answers = self
            .a()
            .batcher
            .submit(account::plan_onboarding(&account, status))
            .await?;
        Ok(Outcome::Applied(
            record("account", &account),
            statuses(&answers),
        ))
    }

    /// D6: a TG dispute → invoice dispute columns + the linked case, in one change set
    /// ([`invoice::plan_dispute`]).
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
            a.dv.get(&odata::by_column(
                "invoice",
                "invoiceid",
                "invoicenumber",
                &d.invoice_ref,
            ))
            .await?;
        let Some(invoice) = found["value"][0]["invoiceid"].as_str().map(str::to_owned) else {
            return Err(HandlerError::permanent(format!(
                "no invoice numbered {:?} in Dynamics",
                d.invoice_ref
            )));
        };
        let partner = meta.partner.clone().unwrap_or_default();
        let account = a.account_for(&partner).await?;
        let case_key = invoice::case_key(d);
        // The incident: the TG case's linked one, else the one holding the key (never the key
        // in a URL: it holds `:`).
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
                .incident_by_case(&case_key, odata::INCIDENT_ID)
                .await?
                .and_then(|row| row[odata::INCIDENT_ID].as_str().map(str::to_owned)),
        };
        let plan = invoice::plan_dispute(
            d,
            opened,
            meta.occurred_at.as_ref(),
            &invoice,
            &account,
            existing.as_deref(),
        );
        let answers = match a.batcher.submit(plan.writes.clone()).await {
            Ok(answers) => answers,
            // The key was taken meanwhile by a row at another id: the next delivery finds it.
            Err(e @ DataverseError::Conflict { .. }) => {
                return Err(HandlerError::transient(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let incident = plan.incident(existing.as_deref(), &answers);
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
        self.record_version(&entity, &revision).await?;
        Ok(Outcome::Applied(
            record("invoice", &invoice),
            statuses(&answers),
        ))
    }

    /// D8: the TG partner profile → account and contacts, field by field
    /// ([`account::plan_profile`], [`contact::plan`]).
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
            a.dv.get(&odata::row("account", &account, odata::ACCOUNT_COLUMNS))
                .await?;
        let plan = account::plan_profile(&state, profile, &current, &a.settings);
        for c in &plan.conflicts {
            let winner = if c.tg_wins { "tg" } else { "dynamics" };
            metrics::counter!("tgb_dynamics_conflicts_total", "field" => c.field, "winner" => winner)
                .increment(1);
            tracing::warn!(partner = %key, field = c.field, policy = ?c.policy, "both sides changed the field since the last sync");
            a.states
                .record(
                    &format!("conflict.{}.{}", tgb_bus::links::encode_token(&key), c.field),
                    &json!({"partner": key, "field": c.field, "policy": format!("{:?}", c.policy),
                        "winner": winner, "tg_revision": profile.revision,
                        "dataverse_version": current["versionnumber"], "at": rfc3339(&prost_types::Timestamp::from(std::time::SystemTime::now()))}),
                )
                .await
                .map_err(HandlerError::transient)?;
        }
        let contacts = contact::plan(&state, profile, &key, &account, &a.settings);
        let mut set = plan.writes(&account);
        set.extend(contacts.writes);
        let mut agreed = plan.agreed;
        agreed.insert(contact::FIELD.into(), contacts.hash);
        let applied = if set.is_empty() {
            None
        } else {
            Some(statuses(&a.batcher.submit(set).await?))
        };
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
        Ok(match applied {
            Some(response) => Outcome::Applied(record("account", &account), response),
            None => Outcome::Skipped,
        })
    }
}

/// The answer of the write at `written_at` in a change set's answers.
fn answered(mut answers: Vec<BatchAnswer>, written_at: usize) -> Result<BatchAnswer, HandlerError> {
    if written_at >= answers.len() {
        return Err(HandlerError::transient(format!(
            "the change set answered {} responses, not the incident write's",
            answers.len()
        )));
    }
    Ok(answers.swap_remove(written_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> BatchAnswer {
        BatchAnswer {
            status,
            headers: Vec::new(),
            body: Some(json!({"incidentid": status.to_string()})),
        }
    }

    #[test]
    fn the_recorded_answer_is_the_incident_writes_and_a_short_answer_is_an_error() {
        let got = answered(vec![answer(204), answer(200)], 1).unwrap();
        assert_eq!(got.status, 200);
        // A change set answered without the write's response: retried, never a panic.
        let err = answered(Vec::new(), 0).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(statuses(&[answer(200), answer(204)]), "200, 204");
        assert_eq!(record("incident", "i-1"), "dataverse:incident:i-1");
    }
}
