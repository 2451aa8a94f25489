//! Each event TG must see → its TG call.
//!
//! | subject | flow | TG call |
//! |---|---|---|
//! | `dyn.case.note_added` | D1 | `POST /v1/cases/{id}/comments` (visibility partner or internal) |
//! | `dyn.case.status_changed` | D1 | `PATCH /v1/cases/{id}` `{status}` with `If-Match` |
//! | `dyn.case.resolved` | D1 | resolution note as a comment, then status `resolved` |
//! | `dyn.exception.raised` | D2 | `POST /v1/cases` with `external_ref`, link TG case ↔ exception in `tgb_links` |
//! | `dyn.exception.updated` | D2 | comment on the linked case; status `resolved` when resolved |
//! | `dyn.order.milestone` | D5 | `POST /v1/partners/{key}/orders/{ref}/milestones` |
//! | `dyn.invoice.status_changed` | D6 | `PUT /v1/disputes/{id}` (skipped when no dispute) |
//! | `dyn.kpi.snapshot` | D7 | `PUT /v1/partners/{key}/scorecards/{period}` |
//! | `dyn.account.updated` | D8 | `PATCH /v1/partners/{key}` with the changed fields |
//! | `planner.task.progressed` | P2 | comment "task … is now in progress / blocked / completed" |
//! | `planner.exception.completed` | P4 | comment "all corrective actions are complete" |
//! | `sla.case.breached` | P3 | partner-visible comment, only when the policy gave a `partner_notice` |
//! | `review.document.completed` | P5 | `PUT /v1/documents/{id}/review` |
//! | `review.document.refused` | P5 | comment asking for a re-upload (or a `needs_changes` review when the document has no case) |
//! | `onboarding.partner.status` | P6 | `PUT /v1/partners/{key}/onboarding` |
//!
//! Errors: 429/503/5xx/timeouts → [`HandlerError::retry_after`] with TG's `Retry-After` (the
//! bus naks with that delay; other entities proceed); other 4xx → [`HandlerError::Permanent`]
//! with the body (DLQ); 412 → re-read the case and retry with its revision; refused OAuth2
//! credentials → `Fatal` (misconfiguration).

use tgb_bus::links::{Links, Record};
use tgb_bus::{Delivery, Handler, HandlerError};
use tgb_clients::tg::{self, TgClient, TgError};
use tgb_proto as pb;
use tgb_proto::timestamps::time_of;

use crate::EgressSettings;

tgb_bus::routes! {
    /// Every event tg-egress consumes, with the flow whose TG side it writes.
    pub Routes for Egress -> Outcome {
        DynCaseNoteAdded => "D1", dyn_case_note_added,
        DynCaseStatusChanged => "D1", dyn_case_status_changed,
        DynCaseResolved => "D1", dyn_case_resolved,
        DynExceptionRaised => "D2", dyn_exception_raised,
        DynExceptionUpdated => "D2", dyn_exception_updated,
        DynOrderMilestone => "D5", dyn_order_milestone,
        DynInvoiceStatusChanged => "D6", dyn_invoice_status_changed,
        DynKpiSnapshot => "D7", dyn_kpi_snapshot,
        DynAccountUpdated => "D8", dyn_account_updated,
        PlannerTaskProgressed => "P2", planner_task_progressed,
        PlannerExceptionCompleted => "P4", planner_exception_completed,
        SlaBreached => "P3", sla_breached,
        ReviewCompleted => "P5", review_completed,
        ReviewIntakeRefused => "P5", review_intake_refused,
        OnboardingStatus => "P6", onboarding_status,
    }
}

/// Every subject tg-egress consumes.
pub const SUBJECTS: &[&str] = Routes::SUBJECTS;

/// The handler of the tg-egress consumer.
pub struct Egress {
    client: TgClient,
    links: Links,
    settings: EgressSettings,
}

/// What handling an event did.
enum Outcome {
    /// The TG call was made.
    Written,
    /// TG already shows this (a duplicate), for the reason named.
    AlreadyDone(&'static str),
    /// Nothing for TG to see, for the reason named.
    Skipped(&'static str),
}

fn case_status(s: pb::CaseStatus) -> Option<tg::CaseStatus> {
    Some(match s {
        pb::CaseStatus::Unspecified => return None,
        pb::CaseStatus::Open => tg::CaseStatus::Open,
        pb::CaseStatus::InProgress => tg::CaseStatus::InProgress,
        pb::CaseStatus::WaitingOnPartner => tg::CaseStatus::WaitingOnPartner,
        pb::CaseStatus::Resolved => tg::CaseStatus::Resolved,
        pb::CaseStatus::Closed => tg::CaseStatus::Closed,
    })
}

fn priority(p: pb::CasePriority) -> tg::Priority {
    match p {
        pb::CasePriority::Urgent => tg::Priority::Urgent,
        pb::CasePriority::High => tg::Priority::High,
        pb::CasePriority::Low => tg::Priority::Low,
        pb::CasePriority::Normal | pb::CasePriority::Unspecified => tg::Priority::Normal,
    }
}

fn dispute_status(s: pb::DisputeStatus) -> tg::DisputeStatus {
    match s {
        pb::DisputeStatus::UnderReview => tg::DisputeStatus::UnderReview,
        pb::DisputeStatus::Resolved => tg::DisputeStatus::Resolved,
        pb::DisputeStatus::Open | pb::DisputeStatus::Unspecified => tg::DisputeStatus::Open,
    }
}

fn money(m: Option<&pb::Money>, field: &str) -> Result<serde_json::Number, HandlerError> {
    let value = m.map(|m| m.value.as_str()).unwrap_or_default();
    tg::number(value).ok_or_else(|| {
        HandlerError::permanent(format!("{field} {value:?} is not a decimal number"))
    })
}

fn partner_key(meta: &pb::EventMeta) -> Result<String, HandlerError> {
    match &meta.partner {
        Some(p) if !p.qualifier.is_empty() && !p.id.is_empty() => Ok(p.key()),
        _ => Err(HandlerError::permanent(
            "meta.partner is missing: TG partner calls need the partner key",
        )),
    }
}

fn progress_text(p: pb::TaskProgress) -> Option<&'static str> {
    match p {
        pb::TaskProgress::InProgress => Some("is now in progress"),
        pb::TaskProgress::Blocked => Some("is blocked"),
        pb::TaskProgress::Completed => Some("is completed"),
        pb::TaskProgress::NotStarted | pb::TaskProgress::Unspecified => None,
    }
}

impl Egress {
    /// A handler writing with `client` and recording links in `links`.
    pub fn new(client: TgClient, links: Links, settings: EgressSettings) -> Self {
        Egress {
            client,
            links,
            settings,
        }
    }

    fn author(&self, person: Option<&pb::Person>) -> tg::ApiAuthor {
        let name = person
            .map(|p| p.name.trim())
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.settings.comment_author);
        tg::ApiAuthor {
            name: name.to_owned(),
            side: tg::Side::Internal,
        }
    }

    async fn comment(
        &self,
        key: &str,
        case_id: &str,
        body: String,
        visibility: tg::Visibility,
        author: tg::ApiAuthor,
    ) -> Result<Outcome, HandlerError> {
        let comment = tg::NewComment {
            body,
            author,
            visibility,
        };
        self.client.add_comment(key, case_id, &comment).await?;
        Ok(Outcome::Written)
    }

    /// Sets a case's status with `If-Match: <revision>`; a 412 re-reads the case and retries.
    async fn set_status(
        &self,
        key: &str,
        case_id: &str,
        status: tg::CaseStatus,
    ) -> Result<Outcome, HandlerError> {
        for _ in 0..=self.settings.conflict_retries {
            let case = self.client.case(case_id).await?;
            if case.status == status {
                return Ok(Outcome::AlreadyDone("status_already_set"));
            }
            let patch = tg::CasePatch {
                status: Some(status),
                ..Default::default()
            };
            match self
                .client
                .patch_case(key, case_id, &patch, Some(case.revision))
                .await
            {
                Ok(_) => return Ok(Outcome::Written),
                Err(TgError::Conflict { .. }) => {
                    metrics::counter!("tgb_tg_egress_conflicts_total").increment(1);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(HandlerError::transient(format!(
            "case {case_id} kept changing: still 412 after {} re-reads",
            self.settings.conflict_retries + 1
        )))
    }

    /// The TG case of an event: the id it carries, else the one linked to its incident.
    async fn tg_case(
        &self,
        given: &str,
        incident_id: &str,
    ) -> Result<Option<String>, HandlerError> {
        if !given.is_empty() {
            return Ok(Some(given.to_owned()));
        }
        if incident_id.is_empty() {
            return Ok(None);
        }
        self.links
            .find(
                &Record::new("dataverse", "incident", incident_id),
                "tg",
                "case",
            )
            .await
            .map_err(HandlerError::transient)
    }

    /// Handles `DynCaseNoteAdded`.
    async fn dyn_case_note_added(&self, e: &pb::DynCaseNoteAdded) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let Some(case_id) = self.tg_case(&e.tg_case_id, &e.incident_id).await? else {
            return Ok(Outcome::Skipped("no_tg_case"));
        };
        let body = if e.subject.trim().is_empty() {
            e.text.clone()
        } else {
            format!("{}\n\n{}", e.subject.trim(), e.text)
        };
        let visibility = if e.partner_visible {
            tg::Visibility::Partner
        } else {
            tg::Visibility::Internal
        };
        self.comment(
            key,
            &case_id,
            body,
            visibility,
            self.author(e.author.as_ref()),
        )
        .await
    }

    /// Handles `DynCaseStatusChanged`.
    async fn dyn_case_status_changed(
        &self,
        e: &pb::DynCaseStatusChanged,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let Some(status) = case_status(e.tg_status()) else {
            return Ok(Outcome::Skipped("no_tg_status"));
        };
        let Some(case_id) = self.tg_case(&e.tg_case_id, &e.incident_id).await? else {
            return Ok(Outcome::Skipped("no_tg_case"));
        };
        self.set_status(key, &case_id, status).await
    }

    /// Handles `DynCaseResolved`.
    async fn dyn_case_resolved(&self, e: &pb::DynCaseResolved) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let Some(case_id) = self.tg_case(&e.tg_case_id, &e.incident_id).await? else {
            return Ok(Outcome::Skipped("no_tg_case"));
        };
        let note = match (e.resolution_subject.trim(), e.resolution_description.trim()) {
            ("", "") => None,
            (s, "") => Some(format!("Resolved: {s}")),
            ("", d) => Some(format!("Resolved: {d}")),
            (s, d) => Some(format!("Resolved: {s}\n\n{d}")),
        };
        if let Some(note) = note {
            self.comment(
                &format!("{key}:note"),
                &case_id,
                note,
                tg::Visibility::Partner,
                self.author(None),
            )
            .await?;
        }
        self.set_status(&format!("{key}:status"), &case_id, tg::CaseStatus::Resolved)
            .await?;
        Ok(Outcome::Written)
    }

    /// Handles `DynExceptionRaised`.
    async fn dyn_exception_raised(
        &self,
        e: &pb::DynExceptionRaised,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        self.open_collaboration_case(key, &meta, e).await
    }

    /// Handles `DynExceptionUpdated`.
    async fn dyn_exception_updated(
        &self,
        e: &pb::DynExceptionUpdated,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let Some(x) = &e.exception else {
            return Err(HandlerError::permanent("exception is missing"));
        };
        let linked = if x.tg_case_id.is_empty() {
            self.links
                .find(
                    &Record::new("dataverse", "exception", &x.exception_id),
                    "tg",
                    "case",
                )
                .await
                .map_err(HandlerError::transient)?
        } else {
            Some(x.tg_case_id.clone())
        };
        let Some(case_id) = linked else {
            return Ok(Outcome::Skipped("no_tg_case"));
        };
        let status = x.status.replace('_', " ");
        let mut body = format!("Update on this exception: {status}.");
        if !x.description.trim().is_empty() {
            body.push_str(&format!("\n\n{}", x.description.trim()));
        }
        self.comment(
            &format!("{key}:note"),
            &case_id,
            body,
            tg::Visibility::Partner,
            self.author(None),
        )
        .await?;
        if x.status == "resolved" {
            self.set_status(&format!("{key}:status"), &case_id, tg::CaseStatus::Resolved)
                .await?;
        }
        Ok(Outcome::Written)
    }

    /// Handles `DynOrderMilestone`.
    async fn dyn_order_milestone(
        &self,
        e: &pb::DynOrderMilestone,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let partner = partner_key(&meta)?;
        let milestone = match e.milestone() {
            pb::OrderMilestone::Confirmed => tg::Milestone::Confirmed,
            pb::OrderMilestone::ShipmentReleased => tg::Milestone::ShipmentReleased,
            pb::OrderMilestone::Backordered => tg::Milestone::Backordered,
            pb::OrderMilestone::Delivered => tg::Milestone::Delivered,
            pb::OrderMilestone::Unspecified => {
                return Err(HandlerError::permanent("milestone is unspecified"));
            }
        };
        if e.order_ref.is_empty() {
            return Err(HandlerError::permanent("order_ref is empty"));
        }
        let occurred_at = time_of(e.milestone_at.as_ref())
            .or_else(|| time_of(meta.occurred_at.as_ref()))
            .ok_or_else(|| HandlerError::permanent("milestone_at is missing"))?;
        let body = tg::MilestoneBody {
            milestone,
            occurred_at,
            detail: (!e.detail.is_empty()).then(|| e.detail.clone()),
        };
        self.client
            .post_milestone(key, &partner, &e.order_ref, &body)
            .await?;
        Ok(Outcome::Written)
    }

    /// Handles `DynInvoiceStatusChanged`.
    async fn dyn_invoice_status_changed(
        &self,
        e: &pb::DynInvoiceStatusChanged,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        if e.dispute_id.is_empty() {
            return Ok(Outcome::Skipped("no_dispute"));
        }
        let currency = [&e.open_amount, &e.paid_amount, &e.adjustment]
            .into_iter()
            .flatten()
            .map(|m| m.currency.clone())
            .find(|c| !c.is_empty())
            .unwrap_or_default();
        let update = tg::DisputeUpdate {
            status: dispute_status(e.dispute_status()),
            invoice_status: tg::InvoiceStatus {
                paid_amount: money(e.paid_amount.as_ref(), "paid_amount")?,
                open_amount: money(e.open_amount.as_ref(), "open_amount")?,
                currency,
            },
            resolution_note: (!e.resolution_note.is_empty()).then(|| e.resolution_note.clone()),
            adjustment: match &e.adjustment {
                Some(a) if !a.value.is_empty() => Some(tg::MoneyBody {
                    value: money(Some(a), "adjustment")?,
                    currency: a.currency.clone(),
                }),
                _ => None,
            },
        };
        self.client.put_dispute(key, &e.dispute_id, &update).await?;
        Ok(Outcome::Written)
    }

    /// Handles `DynKpiSnapshot`.
    async fn dyn_kpi_snapshot(&self, e: &pb::DynKpiSnapshot) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let partner = partner_key(&meta)?;
        let scorecard = tg::Scorecard {
            period: e.period.clone(),
            kpis: e
                .kpis
                .iter()
                .map(|k| tg::Kpi {
                    key: k.key.clone(),
                    value: k.value,
                    unit: k.unit.clone(),
                    target: k.target,
                })
                .collect(),
        };
        self.client.put_scorecard(key, &partner, &scorecard).await?;
        Ok(Outcome::Written)
    }

    /// Handles `DynAccountUpdated`.
    async fn dyn_account_updated(
        &self,
        e: &pb::DynAccountUpdated,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let partner = partner_key(&meta)?;
        let changed =
            |f: &str| e.changed_fields.is_empty() || e.changed_fields.iter().any(|c| c == f);
        let patch = tg::PartnerPatch {
            legal_name: (changed("legal_name") && !e.legal_name.is_empty())
                .then(|| e.legal_name.clone()),
            addresses: changed("addresses").then(|| {
                e.addresses
                    .iter()
                    .map(|a| {
                        serde_json::json!({"kind": a.kind, "line1": a.line1, "line2": a.line2,
                            "city": a.city, "postal_code": a.postal_code,
                            "region": a.region, "country": a.country})
                    })
                    .collect()
            }),
            contacts: changed("contacts").then(|| {
                e.contacts
                    .iter()
                    .map(|c| {
                        let mut v = serde_json::json!({"contact_id": c.contact_id,
                            "name": c.name, "email": c.email, "role": c.role});
                        if !c.phone.is_empty() {
                            v["phone"] = serde_json::json!(c.phone);
                        }
                        v
                    })
                    .collect()
            }),
        };
        self.client.patch_partner(key, &partner, &patch).await?;
        Ok(Outcome::Written)
    }

    /// Handles `PlannerTaskProgressed`.
    async fn planner_task_progressed(
        &self,
        e: &pb::PlannerTaskProgressed,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        if e.tg_case_id.is_empty() {
            return Ok(Outcome::Skipped("no_tg_case"));
        }
        let Some(text) = progress_text(e.progress()) else {
            return Ok(Outcome::Skipped("not_a_progress"));
        };
        if e.progress == e.previous {
            return Ok(Outcome::AlreadyDone("unchanged"));
        }
        let task = e.task.clone().unwrap_or_default();
        let mut body = format!("Task \"{}\"", task.title);
        if !task.department.is_empty() {
            body.push_str(&format!(" ({})", task.department));
        }
        body.push_str(&format!(" {text}."));
        self.comment(
            key,
            &e.tg_case_id,
            body,
            tg::Visibility::Partner,
            self.author(None),
        )
        .await
    }

    /// Handles `PlannerExceptionCompleted`.
    async fn planner_exception_completed(
        &self,
        e: &pb::PlannerExceptionCompleted,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        if e.tg_case_id.is_empty() {
            return Ok(Outcome::Skipped("no_tg_case"));
        }
        let body = format!(
            "All corrective actions on our side are complete ({} tasks).",
            e.tasks.len()
        );
        self.comment(
            key,
            &e.tg_case_id,
            body,
            tg::Visibility::Partner,
            self.author(None),
        )
        .await
    }

    /// Handles `SlaBreached`.
    async fn sla_breached(&self, e: &pb::SlaBreached) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        if e.partner_notice.trim().is_empty() || e.case_id.is_empty() {
            return Ok(Outcome::Skipped("no_partner_notice"));
        }
        self.comment(
            key,
            &e.case_id,
            e.partner_notice.clone(),
            tg::Visibility::Partner,
            self.author(None),
        )
        .await
    }

    /// Handles `ReviewCompleted`.
    async fn review_completed(&self, e: &pb::ReviewCompleted) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let doc = e
            .document
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("document is missing"))?;
        let outcome = match e.outcome() {
            pb::ReviewOutcome::Approved => tg::ReviewOutcome::Approved,
            pb::ReviewOutcome::Rejected => tg::ReviewOutcome::Rejected,
            pb::ReviewOutcome::NeedsChanges => tg::ReviewOutcome::NeedsChanges,
            pb::ReviewOutcome::Unspecified => {
                return Err(HandlerError::permanent("outcome is unspecified"));
            }
        };
        let review = tg::Review {
            outcome,
            note: e.note.clone(),
        };
        self.client
            .review_document(key, &doc.document_id, &review)
            .await?;
        Ok(Outcome::Written)
    }

    /// Handles `ReviewIntakeRefused`.
    async fn review_intake_refused(
        &self,
        e: &pb::ReviewIntakeRefused,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let doc = e
            .document
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("document is missing"))?;
        let note = format!(
            "We could not accept the document \"{}\" ({}). Please upload it again.",
            doc.file_name, e.reason
        );
        if doc.case_id.is_empty() {
            let review = tg::Review {
                outcome: tg::ReviewOutcome::NeedsChanges,
                note,
            };
            self.client
                .review_document(key, &doc.document_id, &review)
                .await?;
            Ok(Outcome::Written)
        } else {
            self.comment(
                key,
                &doc.case_id,
                note,
                tg::Visibility::Partner,
                self.author(None),
            )
            .await
        }
    }

    /// Handles `OnboardingStatus`.
    async fn onboarding_status(&self, e: &pb::OnboardingStatus) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let key = meta.event_id.as_str();
        let partner = partner_key(&meta)?;
        let overall = match e.overall() {
            pb::OnboardingOverall::InProgress => tg::Overall::InProgress,
            pb::OnboardingOverall::Blocked => tg::Overall::Blocked,
            pb::OnboardingOverall::Complete => tg::Overall::Complete,
            pb::OnboardingOverall::NotStarted | pb::OnboardingOverall::Unspecified => {
                tg::Overall::NotStarted
            }
        };
        let status = tg::OnboardingStatus {
            requirements: e
                .requirements
                .iter()
                .filter_map(|r| {
                    let state = match r.state() {
                        pb::RequirementState::Pending => tg::RequirementState::Pending,
                        pb::RequirementState::Submitted => tg::RequirementState::Submitted,
                        pb::RequirementState::Accepted => tg::RequirementState::Accepted,
                        pb::RequirementState::Rejected => tg::RequirementState::Rejected,
                        pb::RequirementState::Unspecified => return None,
                    };
                    Some(tg::Requirement {
                        key: r.key.clone(),
                        label: r.label.clone(),
                        state,
                    })
                })
                .collect(),
            internal_steps: e
                .internal_steps
                .iter()
                .map(|s| tg::InternalStep {
                    key: s.key.clone(),
                    label: s.label.clone(),
                    state: s.state.clone(),
                })
                .collect(),
            overall,
        };
        self.client.put_onboarding(key, &partner, &status).await?;
        Ok(Outcome::Written)
    }

    /// D2: a new collaboration case for a Dynamics exception, linked in `tgb_links`.
    async fn open_collaboration_case(
        &self,
        key: &str,
        meta: &pb::EventMeta,
        e: &pb::DynExceptionRaised,
    ) -> Result<Outcome, HandlerError> {
        let x = e
            .exception
            .as_ref()
            .ok_or_else(|| HandlerError::permanent("exception is missing"))?;
        if !x.tg_case_id.is_empty() {
            return Ok(Outcome::AlreadyDone("already_has_a_case"));
        }
        let exception = Record::new("dataverse", "exception", &x.exception_id);
        if self
            .links
            .find(&exception, "tg", "case")
            .await
            .map_err(HandlerError::transient)?
            .is_some()
        {
            return Ok(Outcome::AlreadyDone("already_linked"));
        }
        let partner = meta
            .partner
            .as_ref()
            .filter(|p| !p.qualifier.is_empty() && !p.id.is_empty())
            .ok_or_else(|| HandlerError::permanent("meta.partner is missing"))?;
        let category = match x.kind() {
            pb::ExceptionKind::OrderDiscrepancy => tg::Category::Order,
            pb::ExceptionKind::PricingMismatch => tg::Category::Pricing,
            pb::ExceptionKind::MissingShipmentConfirmation => tg::Category::ShipmentDiscrepancy,
            pb::ExceptionKind::InvoiceException => tg::Category::InvoiceMismatch,
            pb::ExceptionKind::Unspecified => tg::Category::Other,
        };
        let mut description = x.description.clone();
        for (label, value) in [("Order", &x.order_ref), ("Invoice", &x.invoice_ref)] {
            if !value.is_empty() {
                description.push_str(&format!("\n{label}: {value}"));
            }
        }
        let case = tg::NewCase {
            partner: tg::Partner {
                qualifier: partner.qualifier.clone(),
                id: partner.id.clone(),
                name: partner.name.clone(),
            },
            title: if x.title.trim().is_empty() {
                "Exception raised".into()
            } else {
                x.title.chars().take(200).collect()
            },
            description,
            category,
            priority: priority(x.priority()),
            external_ref: Some(tg::ExternalRef {
                system: "dynamics".into(),
                id: x.exception_id.clone(),
            }),
        };
        // A replay (same key) answers the same case id, so a crash before the link is recorded
        // links the case created the first time.
        let created = self.client.create_case(key, &case).await?;
        self.links
            .link(&Record::new("tg", "case", &created.case_id), &exception)
            .await
            .map_err(HandlerError::transient)?;
        tracing::info!(case_id = %created.case_id, exception_id = %x.exception_id, "collaboration case opened");
        Ok(Outcome::Written)
    }
}

impl Handler for Egress {
    async fn handle(&self, delivery: Delivery) -> Result<tgb_bus::Outcome, HandlerError> {
        let subject = delivery.subject.clone();
        let flow = Routes::flow_of(&delivery.event).unwrap_or("unrouted");
        let result = Routes::dispatch(self, &delivery.event).await;
        let outcome = match &result {
            Ok(Outcome::Written) => "written",
            Ok(Outcome::AlreadyDone(why) | Outcome::Skipped(why)) => why,
            Err(e) => e.class().as_str(),
        };
        metrics::counter!("tgb_tg_egress_events_total", "subject" => subject, "outcome" => outcome)
            .increment(1);
        result.map(|o| match o {
            Outcome::Written => tgb_bus::Outcome::applied(flow),
            Outcome::AlreadyDone(why) => tgb_bus::Outcome::duplicate(flow, why),
            Outcome::Skipped(why) => tgb_bus::Outcome::skipped(flow, why),
        })
    }

    fn flow_of(&self, event: &pb::Event) -> Option<&'static str> {
        Routes::flow_of(event)
    }
}
