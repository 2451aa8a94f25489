//! Creating and updating tasks without ever making a second one.
//!
//! A create runs: link? → intent (KV, compare-and-set) → POST → link, details and the
//! `planner.task.created` announcement together → task record.
//! The task record is written once, last: a link without a record marks a create whose details
//! or announcement may not be written yet. (The announcement went after the record until the
//! cluster fault scenario showed a publish refused for seconds while a broker node rejoined: a
//! create whose record was written and whose announcement failed was then taken for done by
//! its redelivery, and never announced.) The intent is left in place: once the link exists it is never read
//! (every path asks for the link first), and a purge would store a marker the size of the
//! intent it removes at the cost of one more write per task (#21). Should the link be lost, the
//! intent left behind leads the next create to the marker search, which adopts the task. Whatever point a crash or a failed request
//! interrupts:
//!
//! | interrupted after | the redelivery finds | and does |
//! |---|---|---|
//! | nothing / the intent | a pending intent, no task with the marker | waits out the intent's lease (a POST of another replica may be in flight), then creates |
//! | the POST (or the details, the link failed) | a pending intent, the task with the marker in the plan | adopts that task: link, details (what they lack), record |
//! | the link (the details or the announcement failed) | the link, no record | completes the create: details (description included) and `planner.task.created` (the same event id: an announcement stored already is not stored twice), then the record |
//! | the record | the link and the record | updates the task (created and announced) |
//!
//! A POST that certainly had no effect (429, 4xx) marks the intent `failed`, so the retry
//! creates at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tgb_bus::links::{Links, Record};
use tgb_bus::{HandlerError, Publisher};
use tgb_clients::graph::{
    ChecklistItem, DetailsPatch, ExternalReference, GraphClient, GraphError, NewTask, Task,
    TaskDetails, TaskPatch, encode_reference_url,
};
use tgb_proto::{
    EntityRef, EventMeta, Origin, PartnerRef, PlannerTaskCreated, TaskKind, TaskProgress,
};

use crate::labels::LabelCache;
use crate::routing::Placement;
use crate::store::{Intent, Observed, Store, TaskRecord};

/// Test support: called right after a successful POST, before the link is stored.
pub type AfterPost = Arc<dyn Fn(&str) -> BoxFuture<'static, ()> + Send + Sync>;

/// A task tg-bridge wants to exist.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    /// What kind.
    pub kind: TaskKind,
    /// The link end it is for: (system, kind, id).
    pub subject: (String, String, String),
    /// `[C-123]`: starts the title; searched before any re-create.
    pub marker: String,
    /// The title without the marker.
    pub title: String,
    /// Where it goes.
    pub placement: Placement,
    /// Description.
    pub description: String,
    /// (URL, alias); the first is the marker reference (the TG case).
    pub references: Vec<(String, String)>,
    /// TG case, if any.
    pub tg_case_id: String,
    /// Correlation.
    pub correlation_id: String,
    /// P4 department.
    pub department: String,
    /// The partner.
    pub partner: Option<PartnerRef>,
    /// P4 group key.
    pub group: Option<String>,
    /// Subject id for `TaskRef.subject_id`.
    pub subject_id: String,
    /// The cause is the first delivery of the subject's opening event (a `tg.case.opened` no
    /// backfill replayed): the subject most likely has no task yet, so the link is read while
    /// the create intent is written, in one broker round trip instead of two (#21). The
    /// decision is the same as in sequence: a link found wins, whatever the intent's write did.
    pub presumed_new: bool,
    /// The event that asked for the task: the cause of its `planner.task.created`.
    pub cause: EventMeta,
}

impl TaskSpec {
    fn subject_key(&self) -> String {
        format!("{}:{}:{}", self.subject.0, self.subject.1, self.subject.2)
    }

    /// The full title: marker, then text, at most 255 characters.
    pub fn full_title(&self) -> String {
        let t = format!("{} {}", self.marker, self.title);
        t.chars().take(255).collect()
    }
}

/// Graph errors as handler answers: 429 and 5xx retry later, 4xx goes to the DLQ.
pub fn handler_error(e: GraphError) -> HandlerError {
    if let Some(after) = e.retry_after() {
        return HandlerError::retry_after(e, after);
    }
    if e.is_transient() {
        HandlerError::transient(e)
    } else {
        HandlerError::permanent(e)
    }
}

fn kv_error(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::transient(e)
}

/// The task machinery shared by every flow.
#[derive(Clone)]
pub struct Tasks {
    /// Graph.
    pub graph: GraphClient,
    /// Links.
    pub links: Links,
    /// Intents and task records.
    pub store: Store,
    /// Plan labels.
    pub labels: LabelCache,
    /// How long a pending intent blocks a re-create when no task is found.
    pub intent_lease: Duration,
    /// How long after a POST answered with an unknown effect (500, 503) the plan listing is
    /// trusted to show its task, had it been created.
    pub intent_settle: Duration,
    /// Test support.
    pub after_post: Option<AfterPost>,
    /// Publishes `planner.task.created`.
    pub publisher: Publisher,
}

enum Claim {
    /// Create: this attempt's intent was written, started at these Unix seconds.
    Create(i64),
    Adopt(Task),
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn observed_of(task: &Task, blocked: Option<&str>) -> Observed {
    let categories = task.categories();
    Observed {
        progress: progress_of(task.percent_complete, &categories, blocked) as i32,
        percent: task.percent_complete,
        assignees: task.assignees(),
        categories,
    }
}

/// not started / in progress / blocked (the label) / completed.
pub fn progress_of(
    percent: i64,
    categories: &BTreeSet<String>,
    blocked: Option<&str>,
) -> TaskProgress {
    if percent >= 100 {
        TaskProgress::Completed
    } else if blocked.is_some_and(|b| categories.contains(b)) {
        TaskProgress::Blocked
    } else if percent > 0 {
        TaskProgress::InProgress
    } else {
        TaskProgress::NotStarted
    }
}

impl Tasks {
    fn record_of(&self, spec: &TaskSpec, task: &Task, blocked: Option<&str>) -> TaskRecord {
        TaskRecord {
            task_id: task.id.clone(),
            plan_id: task.plan_id.clone(),
            bucket_id: task.bucket_id.clone().unwrap_or_default(),
            kind: spec.kind as i32,
            title: task.title.clone(),
            subject_id: spec.subject_id.clone(),
            department: spec.department.clone(),
            tg_case_id: spec.tg_case_id.clone(),
            correlation_id: spec.correlation_id.clone(),
            partner: spec
                .partner
                .as_ref()
                .map(|p| (p.qualifier.clone(), p.id.clone(), p.name.clone())),
            group: spec.group.clone(),
            // The state tg-bridge created is the state it has seen: the poller's first listing
            // of the task (same ETag) is then nothing new and costs no write (#21).
            observed_etag: task.etag.clone(),
            written_etag: task.etag.clone(),
            own_write: true,
            known: observed_of(task, blocked),
            outbox: None,
        }
    }

    async fn new_task(&self, spec: &TaskSpec) -> Result<NewTask, HandlerError> {
        let p = &spec.placement;
        let categories = self
            .labels
            .categories(&self.graph, &p.plan_id, &p.labels)
            .await
            .map_err(handler_error)?;
        Ok(NewTask {
            plan_id: p.plan_id.clone(),
            title: spec.full_title(),
            bucket_id: p.bucket_id.clone(),
            priority: Some(p.priority),
            due_date_time: p.due_in.map(|d| {
                let due = time::OffsetDateTime::now_utc() + d;
                tgb_proto::timestamps::rfc3339(due.replace_nanosecond(0).unwrap_or(due))
            }),
            assignments: p
                .assignees
                .iter()
                .map(|u| (u.clone(), Some(Default::default())))
                .collect(),
            applied_categories: categories.into_iter().map(|c| (c, true)).collect(),
        })
    }

    /// A pending intent of `spec`, started now.
    fn fresh_intent(spec: &TaskSpec) -> Intent {
        Intent {
            marker: spec.marker.clone(),
            plan_id: spec.placement.plan_id.clone(),
            state: "pending".into(),
            at: now_secs(),
            answered_at: None,
        }
    }

    /// Decides whether to create, adopt an earlier POST's task, or wait. `create_first`: try
    /// to create the intent before reading any (false when that create was already tried).
    async fn claim(&self, spec: &TaskSpec, create_first: bool) -> Result<Claim, HandlerError> {
        let subject = spec.subject_key();
        let mut first = create_first;
        loop {
            let fresh = Self::fresh_intent(spec);
            // Most subjects have no intent yet: create it without reading first (#21); only a
            // create that loses reads what is there.
            if std::mem::take(&mut first)
                && self
                    .store
                    .put_intent(&subject, &fresh, 0)
                    .await
                    .map_err(kv_error)?
            {
                return Ok(Claim::Create(fresh.at));
            }
            let existing = self.store.intent(&subject).await.map_err(kv_error)?;
            match existing {
                None => {
                    if self
                        .store
                        .put_intent(&subject, &fresh, 0)
                        .await
                        .map_err(kv_error)?
                    {
                        return Ok(Claim::Create(fresh.at));
                    }
                }
                Some((intent, rev)) => {
                    if intent.state == "pending" {
                        // A POST may have happened: look for its marker before creating again.
                        let tasks = self
                            .graph
                            .list_plan_tasks(&intent.plan_id)
                            .await
                            .map_err(handler_error)?;
                        if let Some(t) = tasks
                            .into_iter()
                            .find(|t| t.title.starts_with(&intent.marker))
                        {
                            return Ok(Claim::Adopt(t));
                        }
                        // In flight: the lease from its start; answered: the settle time
                        // from its answer.
                        let (since, lease) = match intent.answered_at {
                            Some(answered) => (answered, self.intent_settle.as_secs()),
                            None => (intent.at, self.intent_lease.as_secs()),
                        };
                        let age = now_secs().saturating_sub(since).max(0) as u64;
                        if age < lease {
                            return Err(HandlerError::retry_after(
                                format!(
                                    "a create of {subject} may be in flight; no task with {} yet",
                                    intent.marker
                                ),
                                Duration::from_secs(lease - age),
                            ));
                        }
                    }
                    if self
                        .store
                        .put_intent(&subject, &fresh, rev)
                        .await
                        .map_err(kv_error)?
                    {
                        return Ok(Claim::Create(fresh.at));
                    }
                }
            }
        }
    }

    /// Records what a failed POST of the attempt started at `at` tells: `failed` when it
    /// certainly had no effect (the retry creates at once), `answered_at` when Graph answered
    /// but its effect is unknown (the retry looks for the task once the listing settled). Only
    /// this attempt's intent is touched: a later attempt of another replica may have replaced it.
    async fn mark_failed(&self, spec: &TaskSpec, at: i64, e: &GraphError) {
        let subject = spec.subject_key();
        let Ok(Some((mut intent, rev))) = self.store.intent(&subject).await else {
            return;
        };
        if intent.at != at || intent.state != "pending" {
            return;
        }
        if e.certainly_not_applied() {
            intent.state = "failed".into();
        } else if e.status().is_some() {
            intent.answered_at = Some(now_secs());
        } else {
            return;
        }
        let _ = self.store.put_intent(&subject, &intent, rev).await;
    }

    /// Links a created/adopted task, then completes it ([`Self::complete`]).
    async fn finish(
        &self,
        spec: &TaskSpec,
        task: Task,
        blocked: Option<&str>,
    ) -> Result<TaskRecord, HandlerError> {
        let s = &spec.subject;
        let record = self.record_of(spec, &task, blocked);
        // From the link on, a redelivery finds the task by it, not by the marker. It is written,
        // and the task announced, while the details are: the broker's round trips hide behind
        // Graph's (#21). Whichever fails, the redelivery finds the task (by the link, or by the
        // marker) and completes what is missing; the record, written last, still marks a
        // complete, announced task. The link goes one way: the task's record names its subject
        // (marker, TG case), and `tgb links` reads it there (a KV write per task, #21).
        let link = async {
            self.links
                .link_from(
                    &Record::new(&s.0, &s.1, &s.2),
                    &Record::new("planner", "task", &task.id),
                )
                .await
                .map_err(kv_error)
        };
        tokio::try_join!(
            link,
            self.ensure_details(spec, &task.id, None),
            self.announce(&spec.cause, std::slice::from_ref(&record))
        )?;
        self.store.put_task(&record).await.map_err(kv_error)?;
        Ok(record)
    }

    /// The end of a create, for a linked task: writes what the details lack (description
    /// included) and announces the task, then writes the task record (its only write in the
    /// create).
    async fn complete(
        &self,
        spec: &TaskSpec,
        task: &Task,
        blocked: Option<&str>,
    ) -> Result<TaskRecord, HandlerError> {
        let record = self.record_of(spec, task, blocked);
        tokio::try_join!(
            self.ensure_details(spec, &task.id, None),
            self.announce(&spec.cause, std::slice::from_ref(&record))
        )?;
        self.store.put_task(&record).await.map_err(kv_error)?;
        Ok(record)
    }

    /// Publishes `planner.task.created` for each record, caused by `cause`. The event id is
    /// the task's own: one announcement per task, however often it is made (within the
    /// stream's duplicate window).
    pub async fn announce(
        &self,
        cause: &EventMeta,
        records: &[TaskRecord],
    ) -> Result<(), HandlerError> {
        for r in records {
            let mut meta = EventMeta::caused_by(Origin::Planner, cause);
            meta.entity = Some(EntityRef::new("planner", "task", r.task_id.clone()));
            meta.event_id = crate::poller::stable_ulid(&format!("created:{}", r.task_id));
            let ev = PlannerTaskCreated {
                meta: Some(meta),
                task: Some(crate::handler::task_ref(r)),
                tg_case_id: r.tg_case_id.clone(),
            };
            self.publisher
                .publish(&ev)
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(())
    }

    /// Writes the record of a task whose details are written (the intent stays: see the
    /// module's notes).
    async fn store_record(
        &self,
        spec: &TaskSpec,
        task: &Task,
        blocked: Option<&str>,
    ) -> Result<TaskRecord, HandlerError> {
        let record = self.record_of(spec, task, blocked);
        self.store.put_task(&record).await.map_err(kv_error)?;
        Ok(record)
    }

    fn details_patch(
        spec: &TaskSpec,
        current: &TaskDetails,
        with_description: bool,
    ) -> DetailsPatch {
        let mut patch = DetailsPatch::default();
        if with_description
            && current
                .description
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            && !spec.description.is_empty()
        {
            patch.description = Some(spec.description.clone());
        }
        let mut refs: BTreeMap<String, Option<ExternalReference>> = BTreeMap::new();
        for (url, alias) in &spec.references {
            let key = encode_reference_url(url);
            if !current.references.contains_key(&key) {
                refs.insert(key, Some(ExternalReference::new(alias.clone())));
            }
        }
        patch.references = refs;
        for (i, item) in spec.placement.checklist.iter().enumerate() {
            let id = checklist_id(&spec.subject_key(), i);
            if !current.checklist.contains_key(&id) {
                patch
                    .checklist
                    .insert(id, Some(ChecklistItem::new(item.clone())));
            }
        }
        if !patch.is_empty() && !spec.references.is_empty() {
            patch.preview_type = Some("reference".into());
        }
        patch
    }

    /// Adds what the details of a new task lack (description when empty, references,
    /// checklist items). Its record is written after this, already marked as tg-bridge's write.
    ///
    /// Three requests with the create: Graph's create cannot carry details
    /// (`plannerTask.details` is read-only) and their `PATCH` needs the `If-Match` of a `GET`.
    /// Every task tg-bridge makes has details (at least a link back to TG).
    async fn ensure_details(
        &self,
        spec: &TaskSpec,
        task_id: &str,
        known: Option<TaskDetails>,
    ) -> Result<(), HandlerError> {
        self.graph
            .update_details(task_id, known, |d| Self::details_patch(spec, d, true))
            .await
            .map_err(handler_error)?;
        Ok(())
    }

    /// After tg-bridge wrote to a task: the poller must take the next change as an echo.
    async fn note_own_write(&self, task_id: &str, task: Option<&Task>) -> Result<(), HandlerError> {
        self.store
            .update_task(task_id, |r| {
                r.own_write = true;
                if let Some(t) = task {
                    r.written_etag = t.etag.clone();
                    r.title = t.title.clone();
                }
                true
            })
            .await
            .map_err(kv_error)?;
        Ok(())
    }

    /// The task of `spec`: created once (whatever retries happen) or, when it exists, updated
    /// (title, priority; missing references and checklist items added). Returns the record
    /// and whether it is new to tg-bridge (created or adopted by this call).
    pub async fn ensure(
        &self,
        spec: &TaskSpec,
        blocked: Option<&str>,
    ) -> Result<(TaskRecord, bool), HandlerError> {
        let s = &spec.subject;
        let from = Record::new(&s.0, &s.1, &s.2);
        let (linked, claimed) = if spec.presumed_new {
            let fresh = Self::fresh_intent(spec);
            let subject = spec.subject_key();
            let (linked, created) = tokio::join!(
                self.links.find(&from, "planner", "task"),
                self.store.put_intent(&subject, &fresh, 0)
            );
            (linked, Some((created, fresh.at)))
        } else {
            (self.links.find(&from, "planner", "task").await, None)
        };
        // A link found decides, whatever became of the intent's write.
        if let Some(task_id) = linked.map_err(kv_error)? {
            return self.update(spec, &task_id, blocked).await;
        }
        let claimed = match claimed {
            Some((created, at)) => Some(created.map_err(kv_error)?.then_some(Claim::Create(at))),
            None => None,
        };
        let claim = match claimed {
            Some(Some(claim)) => claim,
            // The intent's create lost: read what is there, as the claim does after its own.
            Some(None) => self.claim(spec, false).await?,
            None => self.claim(spec, true).await?,
        };
        match claim {
            Claim::Adopt(task) => {
                tracing::info!(task_id = %task.id, marker = %spec.marker, "adopted the task an earlier attempt created");
                // Not announced yet: the attempt that created it never got that far.
                Ok((self.finish(spec, task, blocked).await?, true))
            }
            Claim::Create(at) => {
                let body = self.new_task(spec).await?;
                let task = match self.graph.create_task(&body).await {
                    Ok(t) => t,
                    Err(e) => {
                        self.mark_failed(spec, at, &e).await;
                        return Err(handler_error(e));
                    }
                };
                if let Some(hook) = &self.after_post {
                    hook(&task.id).await;
                }
                Ok((self.finish(spec, task, blocked).await?, true))
            }
        }
    }

    /// Several tasks at once (P4 departments, P6 steps): creations go in `$batch`es, details
    /// are read and written in `$batch`es. Tasks already linked are updated one by one.
    pub async fn ensure_many(
        &self,
        specs: &[TaskSpec],
        blocked: Option<&str>,
    ) -> Result<Vec<TaskRecord>, HandlerError> {
        let mut out = Vec::new();
        let mut to_create = Vec::new();
        for spec in specs {
            let s = &spec.subject;
            let linked = self
                .links
                .find(&Record::new(&s.0, &s.1, &s.2), "planner", "task")
                .await
                .map_err(kv_error)?;
            if let Some(task_id) = linked {
                out.push(self.update(spec, &task_id, blocked).await?.0);
                continue;
            }
            match self.claim(spec, true).await? {
                Claim::Adopt(task) => out.push(self.finish(spec, task, blocked).await?),
                Claim::Create(at) => to_create.push((spec, at)),
            }
        }
        if to_create.is_empty() {
            return Ok(out);
        }
        let mut bodies = Vec::new();
        for (spec, _) in &to_create {
            bodies.push(self.new_task(spec).await?);
        }
        let results = self
            .graph
            .create_tasks(&bodies)
            .await
            .map_err(handler_error)?;
        let mut created = Vec::new();
        let mut first_error = None;
        for ((spec, at), result) in to_create.iter().zip(results) {
            match result {
                Ok(task) => created.push((*spec, task)),
                Err(e) => {
                    self.mark_failed(spec, *at, &e).await;
                    first_error.get_or_insert(e);
                }
            }
        }
        for (spec, task) in &created {
            if let Some(hook) = &self.after_post {
                hook(&task.id).await;
            }
            let s = &spec.subject;
            self.links
                .link_from(
                    &Record::new(&s.0, &s.1, &s.2),
                    &Record::new("planner", "task", &task.id),
                )
                .await
                .map_err(kv_error)?;
        }
        // Details: one batch to read their ETags, one to write them.
        let ids: Vec<String> = created.iter().map(|(_, t)| t.id.clone()).collect();
        let details = self
            .graph
            .get_details_many(&ids)
            .await
            .map_err(handler_error)?;
        let mut patches = Vec::new();
        for ((spec, task), d) in created.iter().zip(details) {
            let d = d.map_err(handler_error)?;
            let patch = Self::details_patch(spec, &d, true);
            if !patch.is_empty() {
                patches.push((task.id.clone(), d.etag.clone(), patch));
            }
        }
        let written = self
            .graph
            .patch_details_many(&patches)
            .await
            .map_err(handler_error)?;
        for ((id, _, _), result) in patches.iter().zip(written) {
            match result {
                Ok(_) => {}
                // A conflict here (someone edited already): the single-task path merges.
                Err(GraphError::Conflict { .. }) => {
                    let spec = created.iter().find(|(_, t)| &t.id == id).map(|(s, _)| *s);
                    if let Some(spec) = spec {
                        self.ensure_details(spec, id, None).await?;
                    }
                }
                Err(e) => return Err(handler_error(e)),
            }
        }
        // Every detail written: the records, once each.
        for (spec, task) in &created {
            out.push(self.store_record(spec, task, blocked).await?);
        }
        if let Some(e) = first_error {
            return Err(handler_error(e));
        }
        Ok(out)
    }

    /// Brings an existing task to the spec: title and priority; missing references and
    /// checklist items. Progress, assignees and labels belong to the people working it. A
    /// linked task without a record is a create that did not finish (its details GET or PATCH
    /// failed, or the process stopped): it is completed, and reported as new (`true`).
    pub async fn update(
        &self,
        spec: &TaskSpec,
        task_id: &str,
        blocked: Option<&str>,
    ) -> Result<(TaskRecord, bool), HandlerError> {
        let _guard = self.store.lock(task_id).await;
        let title = spec.full_title();
        let priority = spec.placement.priority;
        let (task, wrote) = self
            .graph
            .update_task(task_id, None, |t| TaskPatch {
                title: (t.title != title).then(|| title.clone()),
                priority: (t.priority != Some(priority)).then_some(priority),
                ..Default::default()
            })
            .await
            .map_err(handler_error)?;
        let Some((record, _)) = self.store.task(task_id).await.map_err(kv_error)? else {
            tracing::info!(task_id, marker = %spec.marker, "completing a create that stopped before its details were written");
            let record = self.complete(spec, &task, blocked).await?;
            return Ok((record, true));
        };
        if wrote {
            self.note_own_write(task_id, Some(&task)).await?;
        }
        let (_, details_wrote) = self
            .graph
            .update_details(task_id, None, |d| Self::details_patch(spec, d, false))
            .await
            .map_err(handler_error)?;
        if details_wrote {
            self.note_own_write(task_id, None).await?;
        }
        Ok((record, false))
    }
}

/// A stable checklist item id per task subject and position (GUID-shaped, as Planner's UI
/// makes them).
pub fn checklist_id(subject: &str, index: usize) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("tgb:{subject}:{index}").as_bytes(),
    )
    .to_string()
}
