//! The consumer of planner-adapter: which task each event asks for.
//!
//! | subject | flow | task |
//! |---|---|---|
//! | `tg.case.opened`, `tg.case.updated` | P1 (P4 when the category is multi-department) | triage task, updated later (title, priority, documents) |
//! | `dyn.exception.raised`, `dyn.exception.updated` | P4 | one task per department, each with its checklist |
//! | `sla.case.breached` | P3 | escalation task per level |
//! | `review.document.requested` | P5 | review task |
//! | `onboarding.steps.requested` | P6 | one task per internal step |
//! | `tg.discussion.action_item` | P7 | action item task (owner hint → assignee) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use tgb_bus::{Delivery, Handler, HandlerError, Outcome};
use tgb_proto::{CasePriority, Event, EventMeta, PartnerRef, TaskKind, TaskRef, TgCase};

use crate::routing::{Partners, Placement, Routing, tg_priority_name};
use crate::store::TaskRecord;
use crate::tasks::{TaskSpec, Tasks};

/// The target of an escalation task in words: `first response` or `resolution`.
pub fn escalation_target_words(target: tgb_proto::SlaTarget) -> &'static str {
    match target {
        tgb_proto::SlaTarget::FirstResponse => "first response",
        _ => "resolution",
    }
}

/// The text an escalation task's title starts with after its marker (`[C-1 L2] `), which names
/// the target: `SLA first response breached: ` (`tgb rebuild links` reads the target back).
pub fn escalation_text_prefix(target: tgb_proto::SlaTarget) -> String {
    format!("SLA {} breached: ", escalation_target_words(target))
}

/// The subject id of an escalation task: `<case>/esc-<target>-L<level>`.
pub fn escalation_subject(case_id: &str, target: tgb_proto::SlaTarget, level: u32) -> String {
    format!("{case_id}/esc-{}-L{level}", target as i32)
}

/// Consumer name.
pub const CONSUMER: &str = "planner-adapter";
tgb_bus::routes! {
    /// What it consumes, with the flow (a case routed to several departments is P4, named by
    /// the outcome).
    pub Routes for PlannerHandler -> Outcome {
        TgCaseOpened => "P1", tg_case_opened,
        TgCaseUpdated => "P1", tg_case_updated,
        TgActionItemFlagged => "P7", tg_action_item_flagged,
        DynExceptionRaised => "P4", dyn_exception_raised,
        DynExceptionUpdated => "P4", dyn_exception_updated,
        SlaBreached => "P3", sla_breached,
        ReviewRequested => "P5", review_requested,
        OnboardingStepsRequested => "P6", onboarding_steps_requested,
    }
}

/// What it consumes.
pub const SUBJECTS: &[&str] = Routes::SUBJECTS;

/// The handler.
pub struct PlannerHandler {
    /// Task machinery.
    pub tasks: Tasks,
    /// `[routing]`.
    pub routing: Arc<Routing>,
    /// `[partners]`.
    pub partners: Arc<Partners>,
}

impl PlannerHandler {
    /// The blocked category key when recording a new task: none, a task tg-bridge creates is
    /// never blocked yet (the poller resolves the label per plan).
    fn blocked(&self) -> Option<&str> {
        None
    }

    fn case_refs(&self, case: &TgCase) -> Vec<(String, String)> {
        let mut refs = vec![(
            self.routing.case_url(&case.case_id),
            format!("TG case {}", case.case_id),
        )];
        for d in &case.document_ids {
            refs.push((self.routing.document_url(d), format!("TG document {d}")));
        }
        refs
    }

    fn base_spec(
        &self,
        meta: &EventMeta,
        kind: TaskKind,
        subject: (&str, &str, String),
        marker: String,
        title: String,
        placement: Placement,
    ) -> TaskSpec {
        TaskSpec {
            kind,
            subject_id: subject.2.clone(),
            subject: (subject.0.to_owned(), subject.1.to_owned(), subject.2),
            marker,
            title,
            placement,
            description: String::new(),
            references: Vec::new(),
            tg_case_id: String::new(),
            correlation_id: meta.correlation_id.clone(),
            department: String::new(),
            partner: meta.partner.clone(),
            group: None,
            presumed_new: false,
            cause: meta.clone(),
        }
    }

    /// Announces every task of a several-task request (P4, P6), on every delivery: one
    /// announcement per task all the same (its event id is the task's).
    async fn announce(
        &self,
        cause: &EventMeta,
        records: &[TaskRecord],
    ) -> Result<(), HandlerError> {
        self.tasks.announce(cause, records).await
    }

    /// P1/P4 for a case; `presumed_new`: see [`crate::tasks::TaskSpec::presumed_new`].
    async fn case(
        &self,
        meta: &EventMeta,
        case: &TgCase,
        presumed_new: bool,
    ) -> Result<Outcome, HandlerError> {
        let partner_name = meta
            .partner
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        if let Some(depts) = self.routing.departments_of(case.category()) {
            let specs = self.department_specs(
                meta,
                &case.case_id,
                &case.case_id,
                &partner_name,
                &case.title,
                &case.description,
                case.priority(),
                depts,
                self.case_refs(case),
                "",
            )?;
            let records = self.tasks.ensure_many(&specs, self.blocked()).await?;
            self.announce(meta, &records).await?;
            return Ok(Outcome::applied("P4"));
        }
        let tier = self.partners.tier(meta.partner_key().as_deref()).to_owned();
        let Some(placement) = self
            .routing
            .route_case(case.category(), case.priority(), &tier)
        else {
            return Ok(Outcome::skipped(
                "P1",
                "routing sends cases of this category, priority and tier nowhere",
            ));
        };
        let title = if partner_name.is_empty() {
            case.title.clone()
        } else {
            format!("{partner_name}: {}", case.title)
        };
        let mut spec = self.base_spec(
            meta,
            TaskKind::Triage,
            ("tg", "case", case.case_id.clone()),
            format!("[{}]", case.case_id),
            title,
            placement,
        );
        spec.description = format!(
            "{}\n\nTG case {} ({} priority) from {}.{}{}",
            case.description,
            case.case_id,
            tg_priority_name(case.priority()),
            if partner_name.is_empty() {
                "a partner"
            } else {
                &partner_name
            },
            if case.order_ref.is_empty() {
                String::new()
            } else {
                format!(" Order {}.", case.order_ref)
            },
            if case.invoice_ref.is_empty() {
                String::new()
            } else {
                format!(" Invoice {}.", case.invoice_ref)
            },
        );
        spec.references = self.case_refs(case);
        spec.tg_case_id = case.case_id.clone();
        spec.presumed_new = presumed_new;
        if spec.correlation_id.is_empty() {
            spec.correlation_id = case.case_id.clone();
        }
        // A task new to tg-bridge is announced before its record is written (see `Tasks`).
        self.tasks.ensure(&spec, self.blocked()).await?;
        Ok(Outcome::applied("P1"))
    }

    #[allow(clippy::too_many_arguments)]
    fn department_specs(
        &self,
        meta: &EventMeta,
        group: &str,
        tg_case_id: &str,
        partner_name: &str,
        title: &str,
        description: &str,
        priority: CasePriority,
        depts: &[String],
        refs: Vec<(String, String)>,
        exception_id: &str,
    ) -> Result<Vec<TaskSpec>, HandlerError> {
        let mut specs = Vec::new();
        for d in depts {
            let Some(target) = self.routing.departments.get(d) else {
                return Err(HandlerError::permanent(format!(
                    "department {d:?} is not in routing.departments"
                )));
            };
            let Some(placement) = self.routing.place(target, priority) else {
                return Err(HandlerError::permanent(format!(
                    "routing.departments.{d}: plan not configured"
                )));
            };
            let who = if partner_name.is_empty() {
                String::new()
            } else {
                format!("{partner_name}: ")
            };
            let mut spec = self.base_spec(
                meta,
                TaskKind::Department,
                ("tgb", "department-task", format!("{group}/{d}")),
                format!("[{group}/{d}]"),
                format!("{who}{title} ({d})"),
                placement,
            );
            spec.department = d.clone();
            spec.description = description.to_owned();
            spec.references = refs.clone();
            spec.tg_case_id = tg_case_id.to_owned();
            spec.group = Some(format!("{group}|{tg_case_id}|{exception_id}"));
            if spec.correlation_id.is_empty() {
                spec.correlation_id = if tg_case_id.is_empty() {
                    group.to_owned()
                } else {
                    tg_case_id.to_owned()
                };
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    async fn record_group(
        &self,
        specs: &[TaskSpec],
        records: &[TaskRecord],
    ) -> Result<(), HandlerError> {
        let Some(key) = specs.first().and_then(|s| s.group.clone()) else {
            return Ok(());
        };
        let first = &specs[0];
        self.tasks
            .store
            .update_group(&key, |g| {
                let mut changed = false;
                if g.correlation_id.is_empty() {
                    let mut parts = key.split('|');
                    let _ = parts.next();
                    g.tg_case_id = parts.next().unwrap_or_default().to_owned();
                    g.exception_id = parts.next().unwrap_or_default().to_owned();
                    g.correlation_id = first.correlation_id.clone();
                    g.partner = first
                        .partner
                        .as_ref()
                        .map(|p| (p.qualifier.clone(), p.id.clone(), p.name.clone()));
                    changed = true;
                }
                for r in records {
                    if !g.tasks.iter().any(|(_, id)| id == &r.task_id) {
                        g.tasks.push((r.department.clone(), r.task_id.clone()));
                        changed = true;
                    }
                }
                changed
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    /// Handles `TgCaseOpened`.
    async fn tg_case_opened(&self, e: &tgb_proto::TgCaseOpened) -> Result<Outcome, HandlerError> {
        self.case_opened(e, false).await
    }

    /// Handles `TgCaseOpened`; `presumed_new` for its first delivery when no backfill replayed
    /// it.
    async fn case_opened(
        &self,
        e: &tgb_proto::TgCaseOpened,
        presumed_new: bool,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let case = e
            .case
            .clone()
            .ok_or_else(|| HandlerError::permanent("tg.case.opened without a case"))?;
        let outcome = self.case(&meta, &case, presumed_new).await?;
        if outcome.flow == Some("P4") {
            self.group_for_case(&meta, &case).await?;
        }
        Ok(outcome)
    }

    /// Handles `TgCaseUpdated`.
    async fn tg_case_updated(&self, e: &tgb_proto::TgCaseUpdated) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let case = e
            .case
            .clone()
            .ok_or_else(|| HandlerError::permanent("tg.case.updated without a case"))?;
        let outcome = self.case(&meta, &case, false).await?;
        if outcome.flow == Some("P4") {
            self.group_for_case(&meta, &case).await?;
        }
        Ok(outcome)
    }

    /// Handles `DynExceptionRaised`.
    async fn dyn_exception_raised(
        &self,
        e: &tgb_proto::DynExceptionRaised,
    ) -> Result<Outcome, HandlerError> {
        self.exception(e.meta.as_ref(), e.exception.as_ref()).await
    }

    /// Handles `DynExceptionUpdated`.
    async fn dyn_exception_updated(
        &self,
        e: &tgb_proto::DynExceptionUpdated,
    ) -> Result<Outcome, HandlerError> {
        self.exception(e.meta.as_ref(), e.exception.as_ref()).await
    }

    /// Handles `SlaBreached`.
    async fn sla_breached(&self, e: &tgb_proto::SlaBreached) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let mut placement = self
            .routing
            .place(&self.routing.escalation, e.priority())
            .ok_or_else(|| HandlerError::permanent("routing.escalation is not configured"))?;
        if let Some(t) = &e.escalate_to {
            if !t.plan_id.is_empty() {
                placement.plan_id = t.plan_id.clone();
                placement.bucket_id = (!t.bucket_id.is_empty()).then(|| t.bucket_id.clone());
            }
            if !t.assignees.is_empty() {
                placement.assignees = t.assignees.clone();
            }
        }
        placement.priority = 1;
        placement.checklist = e.next_steps.clone();
        let target = escalation_target_words(e.target());
        let mut spec = self.base_spec(
            &meta,
            TaskKind::Escalation,
            (
                "tgb",
                "escalation",
                escalation_subject(&e.case_id, e.target(), e.level),
            ),
            format!("[{} L{}]", e.case_id, e.level),
            format!("{}{}", escalation_text_prefix(e.target()), e.case_title),
            placement,
        );
        let impact = e.impact.clone().unwrap_or_default();
        spec.description = format!(
            "The {target} SLA of TG case {} was breached (level {}).\nPartner tier {}, {} open cases: {}.\n\nNext steps:\n{}",
            e.case_id,
            e.level,
            impact.tier,
            impact.open_cases,
            impact.open_case_ids.join(", "),
            e.next_steps
                .iter()
                .map(|s| format!("- {s}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        spec.references = vec![(
            self.routing.case_url(&e.case_id),
            format!("TG case {}", e.case_id),
        )];
        spec.tg_case_id = e.case_id.clone();
        let (_, created) = self.tasks.ensure(&spec, self.blocked()).await?;
        if created {
            Ok(Outcome::applied("P3"))
        } else {
            Ok(Outcome::duplicate("P3", "the task exists already"))
        }
    }

    /// Handles `ReviewRequested`.
    async fn review_requested(
        &self,
        e: &tgb_proto::ReviewRequested,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let doc = e.document.clone().ok_or_else(|| {
            HandlerError::permanent("review.document.requested without a document")
        })?;
        let mut placement = self
            .routing
            .place(&self.routing.review, CasePriority::Normal)
            .ok_or_else(|| HandlerError::permanent("routing.review is not configured"))?;
        if !e.plan_id.is_empty() {
            placement.plan_id = e.plan_id.clone();
            placement.bucket_id = (!e.bucket_id.is_empty()).then(|| e.bucket_id.clone());
        }
        if !e.assignees.is_empty() {
            placement.assignees = e.assignees.clone();
        }
        if let Some(due) = e.due_at {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            placement.due_in = Some(Duration::from_secs((due.seconds - now).max(0) as u64));
        }
        let mut spec = self.base_spec(
            &meta,
            TaskKind::Review,
            ("tg", "document", doc.document_id.clone()),
            format!("[doc {}]", doc.document_id),
            format!("Review {:?} {}", doc.doc_type(), doc.file_name),
            placement,
        );
        let l = &self.routing.labels;
        spec.description = format!(
            "Review the document {} ({} bytes, sha-256 {}). Apply the label \"{}\", \"{}\" or \"{}\", then complete the task.",
            doc.file_name, doc.size, doc.sha256, l.approved, l.rejected, l.needs_changes
        );
        spec.references = vec![(
            self.routing.document_url(&doc.document_id),
            format!("TG document {}", doc.file_name),
        )];
        if !doc.case_id.is_empty() {
            spec.references.push((
                self.routing.case_url(&doc.case_id),
                format!("TG case {}", doc.case_id),
            ));
            spec.tg_case_id = doc.case_id.clone();
        }
        let (_, created) = self.tasks.ensure(&spec, self.blocked()).await?;
        if created {
            Ok(Outcome::applied("P5"))
        } else {
            Ok(Outcome::duplicate("P5", "the task exists already"))
        }
    }

    /// Handles `OnboardingStepsRequested`.
    async fn onboarding_steps_requested(
        &self,
        e: &tgb_proto::OnboardingStepsRequested,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let partner = meta
            .partner_key()
            .unwrap_or_else(|| meta.correlation_id.clone());
        let partner_name = meta
            .partner
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let mut specs = Vec::new();
        for step in &e.steps {
            let mut placement = self
                .routing
                .place(&self.routing.onboarding, CasePriority::Normal)
                .ok_or_else(|| HandlerError::permanent("routing.onboarding is not configured"))?;
            if !e.plan_id.is_empty() {
                placement.plan_id = e.plan_id.clone();
                placement.bucket_id = (!e.bucket_id.is_empty()).then(|| e.bucket_id.clone());
            } else if let Some(b) = self.routing.onboarding_buckets.get(&step.key)
                && let Some(p) = self.routing.plans.get(&self.routing.onboarding.plan)
            {
                placement.bucket_id = p.buckets.get(b).cloned();
            }
            let mut spec = self.base_spec(
                &meta,
                TaskKind::OnboardingStep,
                ("tgb", "onboarding-step", format!("{partner}/{}", step.key)),
                format!("[{partner} {}]", step.key),
                format!("Onboarding {partner_name}: {}", step.label),
                placement,
            );
            spec.subject_id = step.key.clone();
            spec.description = format!(
                "Internal onboarding step \"{}\" for partner {partner_name} ({partner}).",
                step.label
            );
            specs.push(spec);
        }
        let records = self.tasks.ensure_many(&specs, self.blocked()).await?;
        self.announce(&meta, &records).await?;
        Ok(Outcome::applied("P6"))
    }

    /// Handles `TgActionItemFlagged`.
    async fn tg_action_item_flagged(
        &self,
        e: &tgb_proto::TgActionItemFlagged,
    ) -> Result<Outcome, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let mut placement = self
            .routing
            .place(&self.routing.action_items, CasePriority::Normal)
            .ok_or_else(|| HandlerError::permanent("routing.action_items is not configured"))?;
        if let Some(user) = self.routing.owner(&e.owner_hint) {
            placement.assignees = vec![user.clone()];
        }
        if !e.due_on.is_empty() {
            let fmt = time::macros::format_description!("[year]-[month]-[day]");
            let date = time::Date::parse(&e.due_on, &fmt)
                .map_err(|err| HandlerError::permanent(format!("due_on {:?}: {err}", e.due_on)))?;
            let due = date
                .with_hms(17, 0, 0)
                .unwrap_or(date.midnight())
                .assume_utc();
            let now = time::OffsetDateTime::now_utc();
            placement.due_in = Some(Duration::from_secs(
                (due - now).whole_seconds().max(0) as u64
            ));
        }
        let text: String = e.text.chars().take(200).collect();
        let mut spec = self.base_spec(
            &meta,
            TaskKind::ActionItem,
            ("tg", "action-item", e.action_item_id.clone()),
            format!("[AI {}]", e.action_item_id),
            text,
            placement,
        );
        spec.description = format!(
            "{}\n\nFlagged in TG discussion {} (owner: {}).",
            e.text, e.thread_id, e.owner_hint
        );
        if !e.case_id.is_empty() {
            spec.references = vec![(
                self.routing.case_url(&e.case_id),
                format!("TG case {}", e.case_id),
            )];
            spec.tg_case_id = e.case_id.clone();
        }
        let (_, created) = self.tasks.ensure(&spec, self.blocked()).await?;
        if created {
            Ok(Outcome::applied("P7"))
        } else {
            Ok(Outcome::duplicate("P7", "the task exists already"))
        }
    }

    async fn group_for_case(&self, meta: &EventMeta, case: &TgCase) -> Result<(), HandlerError> {
        let Some(depts) = self.routing.departments_of(case.category()) else {
            return Ok(());
        };
        let partner_name = meta
            .partner
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let specs = self.department_specs(
            meta,
            &case.case_id,
            &case.case_id,
            &partner_name,
            &case.title,
            &case.description,
            case.priority(),
            depts,
            self.case_refs(case),
            "",
        )?;
        let records = self.linked_records(&specs).await?;
        self.record_group(&specs, &records).await
    }

    async fn linked_records(&self, specs: &[TaskSpec]) -> Result<Vec<TaskRecord>, HandlerError> {
        let mut out = Vec::new();
        for s in specs {
            let (a, b, c) = &s.subject;
            if let Some(id) = self
                .tasks
                .links
                .find(&tgb_bus::links::Record::new(a, b, c), "planner", "task")
                .await
                .map_err(HandlerError::transient)?
                && let Some((r, _)) = self
                    .tasks
                    .store
                    .task(&id)
                    .await
                    .map_err(HandlerError::transient)?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn exception(
        &self,
        meta: Option<&EventMeta>,
        ex: Option<&tgb_proto::DynException>,
    ) -> Result<Outcome, HandlerError> {
        let meta = meta.cloned().unwrap_or_default();
        let ex =
            ex.ok_or_else(|| HandlerError::permanent("dyn.exception.* without an exception"))?;
        if ex.departments.is_empty() {
            return Ok(Outcome::skipped("P4", "the exception names no department"));
        }
        let partner_name = meta
            .partner
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let mut refs = Vec::new();
        if !ex.tg_case_id.is_empty() {
            refs.push((
                self.routing.case_url(&ex.tg_case_id),
                format!("TG case {}", ex.tg_case_id),
            ));
        }
        let group = format!("EX-{}", ex.exception_id);
        let mut description = ex.description.clone();
        for (k, v) in [("Order", &ex.order_ref), ("Invoice", &ex.invoice_ref)] {
            if !v.is_empty() {
                description.push_str(&format!("\n{k}: {v}"));
            }
        }
        let specs = self.department_specs(
            &meta,
            &group,
            &ex.tg_case_id,
            &partner_name,
            &ex.title,
            &description,
            ex.priority(),
            &ex.departments,
            refs,
            &ex.exception_id,
        )?;
        let records = self.tasks.ensure_many(&specs, self.blocked()).await?;
        let all = self.linked_records(&specs).await?;
        self.record_group(&specs, &all).await?;
        self.announce(&meta, &records).await?;
        Ok(Outcome::applied("P4"))
    }
}

/// The `TaskRef` of a record.
pub fn task_ref(r: &TaskRecord) -> TaskRef {
    TaskRef {
        task_id: r.task_id.clone(),
        plan_id: r.plan_id.clone(),
        bucket_id: r.bucket_id.clone(),
        kind: r.kind,
        title: r.title.clone(),
        subject_id: r.subject_id.clone(),
        department: r.department.clone(),
    }
}

/// The partner of a record.
pub fn partner_of(r: &Option<(String, String, String)>) -> Option<PartnerRef> {
    r.as_ref().map(|(q, i, n)| PartnerRef {
        qualifier: q.clone(),
        id: i.clone(),
        name: n.clone(),
    })
}

impl Handler for PlannerHandler {
    async fn handle(&self, delivery: Delivery) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let result = match &delivery.event {
            Event::TgCaseOpened(e) if delivery.first_live() => self.case_opened(e, true).await,
            event => Routes::dispatch(self, event).await,
        };
        tracing::debug!(subject = %delivery.subject, elapsed = ?started.elapsed(), ok = result.is_ok(), "handled");
        result
    }

    fn flow_of(&self, event: &Event) -> Option<&'static str> {
        Routes::flow_of(event)
    }
}
