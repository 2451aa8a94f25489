//! Emulator of Microsoft Graph Planner v1.0 for tg-bridge's sandbox.
//!
//! Serves `/v1.0/...` (groups' plans, plans and their details, buckets, tasks and their details,
//! JSON `$batch`) and admin routes under `/_sandbox/...`. Every object has its own ETag;
//! PATCH/DELETE require `If-Match`; every request body is validated against the schemas of the
//! official OpenAPI description ([`validate_request`]). The core mounts [`Planner::router`] under
//! `/graph` behind its token check, which sets the `x-tgb-caller-*` headers this crate trusts.
//!
//! Error answers follow Graph: `{"error":{"code","message","innerError":{"date","request-id",
//! "client-request-id"}}}`. A missing `If-Match` is answered 412 with "The If-Match header must
//! be specified for this kind of request." (Planner's documented 412 case), a stale or foreign
//! one 412 `PreconditionFailed`.

mod api;
mod batch;
pub mod config;
mod directory;
mod error;
mod model;
pub mod schema;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

pub use batch::MAX_BATCH_REQUESTS;
pub use config::{
    DEFAULT_LIST_PAGE_SIZE, PlannerConfig, PlannerLimits, SeedBucket, SeedGroup, SeedPlan, SeedUser,
};
pub use directory::MAX_CHECK_GROUPS;
pub use error::GraphError;
pub use model::{Caller, CallerKind};
pub use schema::validate_request;

use model::{Kind, Race, State};

/// The emulated Planner tenant (cheap to clone; clones share the same data).
#[derive(Clone)]
pub struct Planner {
    inner: Arc<Inner>,
}

struct Inner {
    config: PlannerConfig,
    state: Mutex<State>,
    directory: Mutex<directory::Directory>,
}

impl Default for Planner {
    fn default() -> Self {
        Self::new(PlannerConfig::default())
    }
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner").finish_non_exhaustive()
    }
}

impl Planner {
    /// A tenant seeded from `config` (groups, plans with labels, buckets).
    pub fn new(config: PlannerConfig) -> Self {
        let state = State::from_config(&config);
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                directory: Mutex::default(),
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the data half-written in a way that
        // matters to an emulator: keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn limits(&self) -> PlannerLimits {
        self.inner.config.limits.clone()
    }

    pub(crate) fn race_user(&self) -> Caller {
        let u = &self.inner.config.race_user;
        Caller::user(&u.id, &u.name)
    }

    /// The configuration the tenant was built from.
    pub fn config(&self) -> &PlannerConfig {
        &self.inner.config
    }

    /// Routes served under the sandbox's `/graph` prefix: `/v1.0/...` (Graph, caller headers
    /// required) and `/_sandbox/...` (admin, no auth).
    pub fn router(&self) -> axum::Router {
        api::graph_routes(self, true)
            .merge(directory::routes(self))
            .merge(api::admin_routes(self))
    }

    /// What the tenant holds, for inspection: groups, plans (with details and buckets), tasks
    /// (with details), pending faults.
    pub fn snapshot(&self) -> Value {
        let st = self.state();
        let groups: Vec<Value> = st
            .groups
            .iter()
            .map(|(id, name)| json!({"id": id, "displayName": name}))
            .collect();
        let plans: Vec<Value> = st
            .all_plans()
            .iter()
            .map(|id| {
                let buckets = st.buckets_of_plan(Some(id)).unwrap_or_default();
                json!({
                    "plan": st.render(Kind::Plan, id, false).map(|v| v.0),
                    "details": st.render(Kind::PlanDetails, id, false).map(|v| v.0),
                    "buckets": st.render_list(Kind::Bucket, buckets, "planner/buckets")["value"],
                })
            })
            .collect();
        let mut tasks = Vec::new();
        for plan in st.all_plans() {
            for id in st.tasks_of_plan(&plan).unwrap_or_default() {
                tasks.push(json!({
                    "task": st.render(Kind::Task, &id, false).map(|v| v.0),
                    "details": st.render(Kind::TaskDetails, &id, false).map(|v| v.0),
                }));
            }
        }
        json!({
            "groups": groups,
            "plans": plans,
            "tasks": tasks,
            "pendingEtagRaces": st.races.len(),
            "pendingThrottles": st.throttle_remaining,
            "pendingBatchThrottles": st.throttle_batch_remaining,
        })
    }

    /// Back to the configured seed (every task gone, faults cleared).
    pub fn reset(&self) {
        *self.state() = State::from_config(&self.inner.config);
    }

    /// Adds a Microsoft 365 group (id generated when `None`); returns its id.
    pub fn create_group(&self, id: Option<&str>, display_name: &str) -> String {
        let id = id
            .map(String::from)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.state()
            .groups
            .insert(id.clone(), display_name.to_string());
        id
    }

    /// Adds a plan (with its labels and buckets) to a group; returns the plan id.
    pub fn create_plan(&self, group_id: &str, plan: SeedPlan) -> Result<String, GraphError> {
        let who = self.seeder();
        let limits = self.limits();
        self.state()
            .create_plan_seed(group_id, &plan, &who, &limits)
    }

    /// Adds a bucket to a plan; returns the bucket id.
    pub fn create_bucket(&self, plan_id: &str, name: &str) -> Result<String, GraphError> {
        let limits = self.limits();
        self.state()
            .create_bucket(&json!({"planId": plan_id, "name": name}), &limits)
    }

    fn seeder(&self) -> Caller {
        Caller {
            id: "00000000-0000-0000-0000-000000000000".into(),
            name: "Sandbox".into(),
            kind: CallerKind::Application,
        }
    }

    /// The tasks of a plan as Graph lists them (each with `@odata.etag`), in creation order.
    pub fn list_tasks(&self, plan_id: &str) -> Result<Vec<Value>, GraphError> {
        let st = self.state();
        let ids = st.tasks_of_plan(plan_id)?;
        Ok(ids
            .iter()
            .filter_map(|id| st.render(Kind::Task, id, false).map(|v| v.0))
            .collect())
    }

    /// A task and its details as Graph returns them, or `None` when there is no such task.
    pub fn get_task(&self, task_id: &str) -> Option<(Value, Value)> {
        let st = self.state();
        let task = st.render(Kind::Task, task_id, false)?.0;
        let details = st.render(Kind::TaskDetails, task_id, false)?.0;
        Some((task, details))
    }

    /// A person changes a task in Planner's UI (no `If-Match`: the UI holds the latest version).
    /// The body is a Graph PATCH body, validated like one. Returns the task with its new ETag.
    pub fn update_task_as(
        &self,
        user: &Caller,
        task_id: &str,
        patch: &Value,
    ) -> Result<Value, GraphError> {
        let limits = self.limits();
        let mut st = self.state();
        st.patch_task(task_id, patch, user, &limits)?;
        st.render(Kind::Task, task_id, false)
            .map(|v| v.0)
            .ok_or_else(|| GraphError::not_found("plannerTask", task_id))
    }

    /// A person changes a task's details in Planner's UI. Returns the details with their new ETag.
    pub fn update_task_details_as(
        &self,
        user: &Caller,
        task_id: &str,
        patch: &Value,
    ) -> Result<Value, GraphError> {
        let limits = self.limits();
        let mut st = self.state();
        st.patch_task_details(task_id, patch, user, &limits)?;
        st.render(Kind::TaskDetails, task_id, false)
            .map(|v| v.0)
            .ok_or_else(|| GraphError::not_found("plannerTaskDetails", task_id))
    }

    /// The next `n` conditional writes (PATCH/DELETE with `If-Match`, on any object) see a
    /// concurrent change first: the object is saved by someone else (its ETag moves; a task or
    /// bucket also gets a new `orderHint`), so the write gets 412.
    pub fn force_etag_races(&self, n: u32) {
        let mut st = self.state();
        for _ in 0..n {
            st.races.push_back(Race { patch: None });
        }
    }

    /// Like [`Planner::force_etag_races`], the concurrent change being `patch` (a Graph PATCH
    /// body for the object being written, applied as the configured `race_user`), so that a
    /// client's re-read, merge and retry can be checked to keep both changes.
    pub fn force_etag_races_with(&self, n: u32, patch: Value) {
        let mut st = self.state();
        for _ in 0..n {
            st.races.push_back(Race {
                patch: Some(patch.clone()),
            });
        }
    }

    /// Forced races not yet consumed.
    pub fn pending_etag_races(&self) -> usize {
        self.state().races.len()
    }

    /// The next `n` Graph requests (outer ones and `$batch` inner ones alike) answer 429 with
    /// `Retry-After: retry_after_secs`.
    pub fn throttle_next(&self, n: u32, retry_after_secs: u64) {
        let mut st = self.state();
        st.throttle_remaining = n;
        st.throttle_retry_after = retry_after_secs;
    }

    /// The next `n` requests *inside* `$batch` requests answer 429 with
    /// `Retry-After: retry_after_secs` (each in its own inner response; the batch itself is 200).
    pub fn throttle_next_in_batch(&self, n: u32, retry_after_secs: u64) {
        let mut st = self.state();
        st.throttle_batch_remaining = n;
        st.throttle_batch_retry_after = retry_after_secs;
    }

    /// Consumes one pending throttle, returning its Retry-After seconds.
    pub(crate) fn take_throttle(&self, inner: bool) -> Option<u64> {
        let mut st = self.state();
        if inner && st.throttle_batch_remaining > 0 {
            st.throttle_batch_remaining -= 1;
            return Some(st.throttle_batch_retry_after);
        }
        if st.throttle_remaining > 0 {
            st.throttle_remaining -= 1;
            Some(st.throttle_retry_after)
        } else {
            None
        }
    }
}
