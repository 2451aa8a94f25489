//! P2: polls the configured plans and reports progress.
//!
//! Each cycle reads `GET /planner/plans/{id}/tasks` once per plan, one request per page of
//! about 400 tasks (`@odata.nextLink` followed; the list carries
//! `percentComplete`, `assignments`, `appliedCategories` and the checklist counts, so task
//! details are never needed to detect progress). A task whose ETag is the one the poller saw
//! last is skipped. For a changed task tg-bridge created, the observable state (progress,
//! assignees, labels) is compared with the last known one:
//!
//! - equal, after tg-bridge's own write → an echo: not emitted, counted in
//!   `tgb_echoes_suppressed_total{target="graph",reason="fingerprint"}`;
//! - different → `planner.task.progressed`, written to the task record's outbox first, then
//!   published, then cleared (a crash in between republishes the same event id).
//!
//! When every department task of a P4 group is completed, `planner.exception.completed` is
//! published once (its event id is derived from the group).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sha2::{Digest, Sha256};
use tgb_bus::Publisher;
use tgb_clients::graph::{GraphError, Task};
use tgb_proto::{
    EntityRef, EventMeta, Origin, PlannerExceptionCompleted, PlannerTaskProgressed, TaskProgress,
};
use tokio_util::sync::CancellationToken;

use crate::handler::{partner_of, task_ref};
use crate::leader::Lease;
use crate::routing::Routing;
use crate::store::Observed;
use crate::tasks::{Tasks, progress_of};

/// A ULID derived from `key` (timestamp and randomness both from its SHA-256), so the same fact
/// always gets the same event id and JetStream de-duplicates a republish.
pub fn stable_ulid(key: &str) -> String {
    let h = Sha256::digest(key.as_bytes());
    let mut ts = [0u8; 8];
    ts[3..8].copy_from_slice(&h[0..5]);
    let mut rnd = [0u8; 16];
    rnd[6..16].copy_from_slice(&h[5..15]);
    ulid::Ulid::from_parts(u64::from_be_bytes(ts), u128::from_be_bytes(rnd)).to_string()
}

/// The poller.
pub struct Poller {
    /// Task machinery.
    pub tasks: Tasks,
    /// `[routing]`.
    pub routing: Arc<Routing>,
    /// Publishes `planner.*`.
    pub publisher: Publisher,
    /// Tasks seen not to be tg-bridge's, with the ETag they had.
    pub foreign: HashMap<String, String>,
    /// tg-bridge's tasks last seen as tg-bridge left them (nothing tracked changed), with the
    /// ETag they had. Kept in memory, not in the task record: noting it there cost a KV write
    /// for every task created, since the details written after the create move the task's
    /// ETag (#21). After a restart or a lease hand-over each such task is compared once more.
    pub unchanged: HashMap<String, String>,
}

impl Poller {
    /// Polls every `interval` until `shutdown`, while this replica holds the poller `lease`
    /// (one poller across replicas); otherwise tries to take the lease every renewal period.
    pub async fn run(
        mut self,
        interval: Duration,
        lease: Lease,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        metrics::gauge!("tgb_planner_poller_leader").set(0.0);
        for outcome in ["ok", "stopped"] {
            metrics::counter!("tgb_planner_poll_cycles_total", "outcome" => outcome).increment(0);
        }
        loop {
            let revision = loop {
                match lease.try_acquire().await {
                    Ok(Some(rev)) => break rev,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the poller lease; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(lease.renew_every()) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            };
            tracing::info!(holder = %lease.holder(), "this replica polls the plans (poller lease taken)");
            metrics::gauge!("tgb_planner_poller_leader").set(1.0);
            let lost = shutdown.child_token();
            // Polled together in this task: when it ends, the renewals end with it.
            let (_, held) = tokio::join!(
                async {
                    self.lead(interval, &lost).await;
                    lost.cancel();
                },
                lease.clone().keep(revision, lost.clone())
            );
            metrics::gauge!("tgb_planner_poller_leader").set(0.0);
            if shutdown.is_cancelled() {
                if let Some(rev) = held {
                    lease.release(rev).await;
                }
                return Ok(());
            }
        }
    }

    /// Polls until `stop` (shutdown, or the lease lost). The task records are loaded first:
    /// another replica may have written them since this one last polled.
    async fn lead(&mut self, interval: Duration, stop: &CancellationToken) {
        loop {
            match self.tasks.store.load_all().await {
                Ok(n) => {
                    tracing::info!(tasks = n, "planner poller loaded its task records");
                    self.foreign.clear();
                    self.unchanged.clear();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load task records, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            // A cycle under way is finished even if the lease is lost meanwhile: a second
            // poller for a moment costs reads, never a duplicate event.
            let outcome = match self.cycle().await {
                Ok(()) => "ok",
                Err(e) => {
                    tracing::warn!(error = %e, "planner poll cycle stopped early; next cycle retries");
                    "stopped"
                }
            };
            metrics::counter!("tgb_planner_poll_cycles_total", "outcome" => outcome).increment(1);
        }
    }

    /// One cycle over every configured plan.
    pub async fn cycle(&mut self) -> anyhow::Result<()> {
        for r in self.tasks.store.with_outbox() {
            self.flush_outbox(&r.task_id).await?;
        }
        for plan in self.routing.plan_ids() {
            let tasks = match self.tasks.graph.list_plan_tasks(&plan).await {
                Ok(t) => t,
                // A plan removed or not visible: the others still get polled.
                Err(GraphError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let blocked = self
                .tasks
                .labels
                .category(&self.tasks.graph, &plan, &self.routing.labels.blocked)
                .await?;
            for t in tasks {
                self.observe(&t, blocked.as_deref()).await?;
            }
        }
        Ok(())
    }

    async fn flush_outbox(&self, task_id: &str) -> anyhow::Result<()> {
        let Some((r, _)) = self.tasks.store.task(task_id).await? else {
            return Ok(());
        };
        let Some(bytes) = r.outbox.clone() else {
            return Ok(());
        };
        let ev = PlannerTaskProgressed::decode(bytes.as_slice())?;
        self.publisher.publish(&ev).await?;
        // The last task of a group completed: the group's completion goes out before the
        // outbox is cleared, so a refused publish of it is retried with the outbox at the next
        // cycle. (Checked after the outbox was cleared, it was lost: the task's change, once
        // recorded, is never observed again, and nothing else checks the group.)
        if ev.progress == TaskProgress::Completed as i32
            && let Some(group) = &r.group
        {
            self.check_group(group).await?;
        }
        self.tasks
            .store
            .update_task(task_id, |r| r.outbox.take().is_some())
            .await?;
        Ok(())
    }

    async fn observe(&mut self, t: &Task, blocked: Option<&str>) -> anyhow::Result<()> {
        if self.foreign.get(&t.id) == Some(&t.etag) || self.unchanged.get(&t.id) == Some(&t.etag) {
            return Ok(());
        }
        if let Some(r) = self.tasks.store.cached(&t.id)
            && r.observed_etag == t.etag
        {
            return Ok(());
        }
        let _guard = self.tasks.store.lock(&t.id).await;
        let Some((record, _)) = self.tasks.store.task(&t.id).await? else {
            self.foreign.insert(t.id.clone(), t.etag.clone());
            return Ok(());
        };
        self.foreign.remove(&t.id);
        if record.observed_etag == t.etag {
            return Ok(());
        }
        let categories = t.categories();
        let observed = Observed {
            progress: progress_of(t.percent_complete, &categories, blocked) as i32,
            percent: t.percent_complete,
            assignees: t.assignees(),
            categories,
        };
        if observed == record.known {
            if record.own_write || t.etag == record.written_etag {
                metrics::counter!("tgb_echoes_suppressed_total", "target" => "graph", "reason" => "fingerprint").increment(1);
                metrics::counter!("tgb_flow_events_total", "flow" => "P2", "outcome" => "echo")
                    .increment(1);
                let entry = tgb_bus::ledger::LedgerEntry::outside(
                    "planner-adapter-poll",
                    "planner.task (poll)",
                    &record.correlation_id,
                    &format!("planner:task:{}", t.id),
                    &t.etag,
                    tgb_bus::ledger::Decision::Echo,
                    "the task is as tg-bridge last wrote it: not sent back to TG",
                );
                self.publisher.record(&entry).await;
            }
            self.unchanged.insert(t.id.clone(), t.etag.clone());
            return Ok(());
        }
        let previous = record.known.clone();
        let labels = self
            .tasks
            .labels
            .names(&self.tasks.graph, &t.plan_id, &observed.categories)
            .await?;
        let mut meta = EventMeta::new(Origin::Planner);
        meta.event_id = stable_ulid(&format!("progressed:{}:{}", t.id, t.etag));
        meta.correlation_id = record.correlation_id.clone();
        meta.partner = partner_of(&record.partner);
        meta.entity = Some(EntityRef::new("planner", "task", t.id.clone()));
        meta.entity_version = t.etag.clone();
        let mut task = task_ref(&record);
        task.title = t.title.clone();
        task.bucket_id = t.bucket_id.clone().unwrap_or_default();
        let ev = PlannerTaskProgressed {
            meta: Some(meta),
            task: Some(task),
            tg_case_id: record.tg_case_id.clone(),
            progress: observed.progress,
            previous: previous.progress,
            assignees: observed.assignees.iter().cloned().collect(),
            added_assignees: observed
                .assignees
                .difference(&previous.assignees)
                .cloned()
                .collect(),
            removed_assignees: previous
                .assignees
                .difference(&observed.assignees)
                .cloned()
                .collect(),
            labels,
            percent_complete: observed.percent as i32,
        };
        let bytes = ev.encode_to_vec();
        let etag = t.etag.clone();
        self.tasks
            .store
            .update_task(&t.id, |r| {
                r.known = observed.clone();
                r.observed_etag = etag.clone();
                r.own_write = false;
                r.outbox = Some(bytes.clone());
                true
            })
            .await?;
        self.flush_outbox(&t.id).await?;
        metrics::counter!("tgb_flow_events_total", "flow" => "P2", "outcome" => "applied")
            .increment(1);
        tracing::info!(task_id = %t.id, progress = ?TaskProgress::try_from(observed.progress).unwrap_or_default(), "planner.task.progressed");
        Ok(())
    }

    async fn check_group(&self, key: &str) -> anyhow::Result<()> {
        let Some((g, _)) = self.tasks.store.group(key).await? else {
            return Ok(());
        };
        if g.completed_published || g.tasks.is_empty() {
            return Ok(());
        }
        let mut refs = Vec::new();
        for (_, id) in &g.tasks {
            match self.tasks.store.task(id).await? {
                Some((r, _)) if r.known.progress == TaskProgress::Completed as i32 => {
                    refs.push(task_ref(&r))
                }
                _ => return Ok(()),
            }
        }
        let mut meta = EventMeta::new(Origin::Planner);
        meta.event_id = stable_ulid(&format!("exception-completed:{key}"));
        meta.correlation_id = g.correlation_id.clone();
        meta.partner = partner_of(&g.partner);
        let entity_id = if g.exception_id.is_empty() {
            g.tg_case_id.clone()
        } else {
            g.exception_id.clone()
        };
        meta.entity = Some(EntityRef::new("tgb", "exception", entity_id));
        let ev = PlannerExceptionCompleted {
            meta: Some(meta),
            tg_case_id: g.tg_case_id.clone(),
            exception_id: g.exception_id.clone(),
            tasks: refs,
        };
        self.publisher.publish(&ev).await?;
        self.tasks
            .store
            .update_group(key, |g| {
                !std::mem::replace(&mut g.completed_published, true)
            })
            .await?;
        metrics::counter!("tgb_flow_events_total", "flow" => "P4", "outcome" => "applied")
            .increment(1);
        Ok(())
    }
}
