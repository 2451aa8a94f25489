//! Case lifecycle events from every side → the case's clock in `tgb_sla`.
//!
//! | event | effect on the clock |
//! |---|---|
//! | `tg.case.opened` | starts it (at the event's `occurred_at`) |
//! | `tg.case.updated` | status `waiting_on_partner` pauses, `open`/`in_progress` resumes, `resolved`/`closed` stops; a new priority re-targets; older revisions are dropped |
//! | `tg.case.comment_added` (side internal) | first response |
//! | `dyn.case.note_added` | first response |
//! | `dyn.case.status_changed` | pause / resume / stop as above |
//! | `dyn.case.resolved` | stop |
//! | `planner.task.progressed` (a real change on a case's task) | first response |
//!
//! A case event replayed by `tgb backfill` (`meta.replayed_at`) also marks the clock's history:
//! breaches that fell due before the replay are recorded, not escalated
//! ([`crate::state::CaseClock::history_until`]).

use std::sync::Arc;

use tgb_bus::links::{Links, Record};
use tgb_bus::{Delivery, Handler, HandlerError, Outcome};
use tgb_proto as pb;
use tgb_proto::timestamps::time_of;
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::policy::{Policies, priority_name};
use crate::state::{CaseClock, Partner};
use crate::store::{Change, Clocks, key_of};

tgb_bus::routes! {
    /// Every event sla-monitor consumes: the case lifecycle that moves the clocks of P3. (The
    /// clocks' decisions stay outside the flow metrics: the breach events they publish are the
    /// flow.)
    Routes for Lifecycle -> Option<(String, Action)> {
        TgCaseOpened => "P3", case_opened,
        TgCaseUpdated => "P3", case_updated,
        TgCommentAdded => "P3", comment_added,
        DynCaseNoteAdded => "P3", note_added,
        DynCaseStatusChanged => "P3", status_changed,
        DynCaseResolved => "P3", case_resolved,
        PlannerTaskProgressed => "P3", task_progressed,
    }
}

/// Every subject sla-monitor consumes.
pub const SUBJECTS: &[&str] = Routes::SUBJECTS;

/// The handler of the sla-monitor consumer.
pub struct Lifecycle {
    clocks: Clocks,
    links: Links,
    policies: Arc<Policies>,
    clock: Arc<dyn Clock>,
}

/// What a status means for a clock.
enum StatusEffect {
    Pause,
    Resume,
    Stop,
    None,
}

fn status_effect(s: pb::CaseStatus) -> StatusEffect {
    match s {
        pb::CaseStatus::WaitingOnPartner => StatusEffect::Pause,
        pb::CaseStatus::Open | pb::CaseStatus::InProgress => StatusEffect::Resume,
        pb::CaseStatus::Resolved | pb::CaseStatus::Closed => StatusEffect::Stop,
        pb::CaseStatus::Unspecified => StatusEffect::None,
    }
}

fn status_name(s: pb::CaseStatus) -> &'static str {
    match s {
        pb::CaseStatus::Open | pb::CaseStatus::Unspecified => "open",
        pb::CaseStatus::InProgress => "in_progress",
        pb::CaseStatus::WaitingOnPartner => "waiting_on_partner",
        pb::CaseStatus::Resolved => "resolved",
        pb::CaseStatus::Closed => "closed",
    }
}

/// What one event does to a clock, decided before the read-modify-write.
enum Action {
    Open(Box<pb::TgCase>, pb::EventMeta),
    Update(Box<pb::TgCase>, pb::EventMeta),
    Status(pb::CaseStatus),
    Respond,
}

fn apply_status(clock: &mut CaseClock, status: pb::CaseStatus, at: OffsetDateTime) -> Option<f64> {
    let mut resolved = None;
    match status_effect(status) {
        StatusEffect::Pause => clock.pause(at),
        StatusEffect::Resume => clock.resume(at),
        StatusEffect::Stop => resolved = clock.stop(at).map(|d| d.as_seconds_f64()),
        StatusEffect::None => return None,
    }
    clock.status = status_name(status).to_owned();
    resolved
}

impl Lifecycle {
    /// A handler over `clocks`, resolving Dynamics incidents to TG cases with `links`.
    pub fn new(
        clocks: Clocks,
        links: Links,
        policies: Arc<Policies>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Lifecycle {
            clocks,
            links,
            policies,
            clock,
        }
    }

    async fn case_of_incident(
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

    /// The case and what to do, or `None` when the event says nothing about an SLA clock.
    async fn action(&self, event: &pb::Event) -> Result<Option<(String, Action)>, HandlerError> {
        Ok(Routes::dispatch(self, event)
            .await?
            .filter(|(case_id, _)| !case_id.is_empty()))
    }

    async fn case_opened(
        &self,
        e: &pb::TgCaseOpened,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let case = e
            .case
            .clone()
            .ok_or_else(|| HandlerError::permanent("case is missing"))?;
        Ok(Some((
            case.case_id.clone(),
            Action::Open(Box::new(case), meta),
        )))
    }

    async fn case_updated(
        &self,
        e: &pb::TgCaseUpdated,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        let meta = e.meta.clone().unwrap_or_default();
        let case = e
            .case
            .clone()
            .ok_or_else(|| HandlerError::permanent("case is missing"))?;
        Ok(Some((
            case.case_id.clone(),
            Action::Update(Box::new(case), meta),
        )))
    }

    /// An internal comment is a response; a partner's is not.
    async fn comment_added(
        &self,
        e: &pb::TgCommentAdded,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        Ok((e.side() == pb::CommentSide::Internal).then(|| (e.case_id.clone(), Action::Respond)))
    }

    async fn note_added(
        &self,
        e: &pb::DynCaseNoteAdded,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        Ok(self
            .case_of_incident(&e.tg_case_id, &e.incident_id)
            .await?
            .map(|c| (c, Action::Respond)))
    }

    async fn status_changed(
        &self,
        e: &pb::DynCaseStatusChanged,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        Ok(self
            .case_of_incident(&e.tg_case_id, &e.incident_id)
            .await?
            .map(|c| (c, Action::Status(e.tg_status()))))
    }

    async fn case_resolved(
        &self,
        e: &pb::DynCaseResolved,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        Ok(self
            .case_of_incident(&e.tg_case_id, &e.incident_id)
            .await?
            .map(|c| (c, Action::Status(pb::CaseStatus::Resolved))))
    }

    /// Progress on a case's task (a real move, not a repeat) is a response.
    async fn task_progressed(
        &self,
        e: &pb::PlannerTaskProgressed,
    ) -> Result<Option<(String, Action)>, HandlerError> {
        let moved = !e.tg_case_id.is_empty()
            && e.progress != e.previous
            && matches!(
                e.progress(),
                pb::TaskProgress::InProgress
                    | pb::TaskProgress::Blocked
                    | pb::TaskProgress::Completed
            );
        Ok(moved.then(|| (e.tg_case_id.clone(), Action::Respond)))
    }

    fn open(&self, case: &pb::TgCase, meta: &pb::EventMeta, at: OffsetDateTime) -> CaseClock {
        let mut clock = CaseClock::start(&case.case_id, at);
        clock.title = case.title.clone();
        if let Some(p) = &meta.partner {
            clock.partner = Partner {
                qualifier: p.qualifier.clone(),
                id: p.id.clone(),
                name: p.name.clone(),
            };
        }
        clock.tier = self.policies.tier_of(&clock.partner.key());
        clock.priority = priority_name(case.priority()).to_owned();
        clock.revision = case.revision;
        if !meta.correlation_id.is_empty() {
            clock.correlation_id = meta.correlation_id.clone();
        }
        clock.history_until = time_of(meta.replayed_at.as_ref());
        clock
    }
}

/// Durations measured by a change (recorded once, after the write won).
struct Measured {
    first_response: Option<f64>,
    resolution: Option<f64>,
    priority: String,
    /// What was decided, for the ledger.
    outcome: Outcome,
}

impl Default for Measured {
    fn default() -> Self {
        Measured {
            first_response: None,
            resolution: None,
            priority: String::new(),
            outcome: Outcome::applied("P3").outside_flows(),
        }
    }
}

fn no_clock(why: &str) -> Measured {
    Measured {
        outcome: Outcome::ignored(why),
        ..Measured::default()
    }
}

impl Handler for Lifecycle {
    async fn handle(&self, delivery: Delivery) -> Result<Outcome, HandlerError> {
        let Some((case_id, action)) = self.action(&delivery.event).await? else {
            return Ok(Outcome::ignored("no SLA clock moves on this event"));
        };
        let at = delivery
            .event
            .meta()
            .and_then(|m| time_of(m.occurred_at.as_ref()))
            .or_else(|| match &delivery.event {
                pb::Event::TgCommentAdded(e) => time_of(e.created_at.as_ref()),
                _ => None,
            })
            .unwrap_or_else(|| self.clock.now());
        let key = key_of(&case_id);
        // A case that opens has no clock yet: create it without reading first (#21).
        let opens = matches!(action, Action::Open(..));
        let change = |current: Option<CaseClock>| {
            let mut m = Measured::default();
            let mut clock = match (current, &action) {
                (None, Action::Open(case, meta) | Action::Update(case, meta)) => {
                    let status = case.status();
                    if matches!(status_effect(status), StatusEffect::Stop) {
                        return Change::Keep(no_clock("the case is already closed"));
                    }
                    let mut clock = self.open(case, meta, at);
                    apply_status(&mut clock, status, at);
                    m.priority = clock.priority.clone();
                    return Change::Put(clock, m);
                }
                // Nothing is known of a case that was never opened here: no clock to move.
                (None, _) => return Change::Keep(no_clock("no clock runs for this case")),
                (Some(_), Action::Open(..)) => {
                    m.outcome = Outcome::duplicate("P3", "the clock runs already").outside_flows();
                    return Change::Keep(m);
                }
                (Some(clock), _) => clock,
            };
            let before = clock.clone();
            match &action {
                Action::Open(..) => {}
                Action::Update(case, meta) => {
                    if case.revision != 0 && case.revision <= clock.revision {
                        m.outcome = Outcome::stale(
                            "P3",
                            format!(
                                "revision {} is not newer than the clock's {}",
                                case.revision, clock.revision
                            ),
                        )
                        .outside_flows();
                        return Change::Keep(m);
                    }
                    clock.revision = case.revision.max(clock.revision);
                    if case.priority() != pb::CasePriority::Unspecified {
                        clock.priority = priority_name(case.priority()).to_owned();
                    }
                    if !case.title.is_empty() {
                        clock.title = case.title.clone();
                    }
                    if let Some(replayed) = time_of(meta.replayed_at.as_ref()) {
                        clock.history_until = clock.history_until.max(Some(replayed));
                    }
                    m.resolution = apply_status(&mut clock, case.status(), at);
                }
                Action::Status(status) => {
                    m.resolution = apply_status(&mut clock, *status, at);
                }
                Action::Respond => {
                    m.first_response = clock.respond(at).map(|d| d.as_seconds_f64());
                }
            }
            m.priority = clock.priority.clone();
            if clock == before {
                Change::Keep(Measured {
                    outcome: Outcome::duplicate("P3", "the clock is already so").outside_flows(),
                    ..Measured::default()
                })
            } else {
                Change::Put(clock, m)
            }
        };
        let measured = if opens {
            self.clocks.update_new(&key, change).await
        } else {
            self.clocks.update(&key, change).await
        }
        .map_err(HandlerError::transient)?;
        if let Some(s) = measured.first_response {
            metrics::histogram!("tgb_sla_time_to_first_response_seconds", "priority" => measured.priority.clone())
                .record(s);
        }
        if let Some(s) = measured.resolution {
            metrics::histogram!("tgb_sla_time_to_resolution_seconds", "priority" => measured.priority)
                .record(s);
        }
        Ok(measured.outcome)
    }
}
