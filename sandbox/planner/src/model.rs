//! The tenant's data and Planner's rules, free of HTTP: groups, plans (+details), buckets,
//! tasks (+details), each object with its own ETag.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{PlannerConfig, PlannerLimits, SeedPlan};
use crate::error::GraphError;
use crate::schema;

const GRAPH: &str = "https://graph.microsoft.com/v1.0";

/// Who makes a request (from the core's `x-tgb-caller-*` headers, or a library call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User or application-user id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `application` (client credentials) or `user`.
    pub kind: CallerKind,
}

/// The kind of identity behind a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// An application (client-credentials token).
    Application,
    /// A person.
    User,
}

impl Caller {
    /// A person.
    pub fn user(id: &str, name: &str) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            kind: CallerKind::User,
        }
    }

    /// Graph's `identitySet` for this caller.
    pub fn identity_set(&self) -> Value {
        let who = json!({"displayName": self.name, "id": self.id});
        match self.kind {
            CallerKind::Application => json!({"application": who, "user": null}),
            CallerKind::User => json!({"user": who}),
        }
    }
}

/// The current time as Graph writes it (UTC, RFC 3339).
pub(crate) fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The current time to the second (as in `innerError.date`).
pub(crate) fn now_secs() -> String {
    let t = OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn new_id() -> String {
    let bytes: [u8; 21] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One stored object: its Graph representation (without annotations) and its ETag.
#[derive(Debug, Clone)]
pub(crate) struct Obj {
    pub etag: String,
    pub body: Map<String, Value>,
    /// Creation order, for stable listings.
    pub seq: u64,
}

/// What kind of object a write addresses (each kind has its own ETag space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Plan,
    PlanDetails,
    Bucket,
    Task,
    TaskDetails,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Plan => "Plan",
            Kind::PlanDetails => "PlanDetails",
            Kind::Bucket => "Bucket",
            Kind::Task => "Task",
            Kind::TaskDetails => "TaskDetails",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Plan => "plannerPlan",
            Kind::PlanDetails => "plannerPlanDetails",
            Kind::Bucket => "plannerBucket",
            Kind::Task => "plannerTask",
            Kind::TaskDetails => "plannerTaskDetails",
        }
    }

    fn context(self) -> &'static str {
        match self {
            Kind::Plan => "planner/plans/$entity",
            Kind::PlanDetails => "planner/plans('{id}')/details/$entity",
            Kind::Bucket => "planner/buckets/$entity",
            Kind::Task => "planner/tasks/$entity",
            Kind::TaskDetails => "planner/tasks('{id}')/details/$entity",
        }
    }
}

/// A forced ETag race waiting for the next conditional write.
#[derive(Debug, Clone)]
pub(crate) struct Race {
    /// The concurrent change to apply (a Graph PATCH body), or None to only "touch" the object.
    pub patch: Option<Value>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub groups: BTreeMap<String, String>,
    pub plans: BTreeMap<String, Obj>,
    pub plan_details: BTreeMap<String, Obj>,
    pub buckets: BTreeMap<String, Obj>,
    pub tasks: BTreeMap<String, Obj>,
    pub task_details: BTreeMap<String, Obj>,
    pub seq: u64,
    pub races: VecDeque<Race>,
    pub throttle_remaining: u32,
    pub throttle_retry_after: u64,
    pub throttle_batch_remaining: u32,
    pub throttle_batch_retry_after: u64,
}

fn sorted(map: &BTreeMap<String, Obj>, pred: impl Fn(&Obj) -> bool) -> Vec<&Obj> {
    let mut v: Vec<&Obj> = map.values().filter(|o| pred(o)).collect();
    v.sort_by_key(|o| o.seq);
    v
}

fn str_field<'a>(o: &'a Obj, key: &str) -> Option<&'a str> {
    o.body.get(key).and_then(Value::as_str)
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Rejects a body that does not conform to the OpenAPI schema, naming each problem.
pub(crate) fn check_schema(schema_name: &str, body: &Value) -> Result<(), GraphError> {
    schema::validate_request(schema_name, body).map_err(|problems| {
        GraphError::bad_request(format!(
            "The request is invalid: the body does not conform to 'microsoft.graph.{schema_name}': {}",
            problems.join("; ")
        ))
    })
}

impl State {
    pub fn from_config(config: &PlannerConfig) -> Self {
        let mut s = State::default();
        let seeder = Caller {
            id: "00000000-0000-0000-0000-000000000000".into(),
            name: "Sandbox".into(),
            kind: CallerKind::Application,
        };
        for g in &config.groups {
            s.groups.insert(g.id.clone(), g.display_name.clone());
            for p in &g.plans {
                // Seeds come from configuration: a bad seed is skipped, not a panic.
                let _ = s.create_plan_seed(&g.id, p, &seeder, &config.limits);
            }
        }
        s
    }

    fn next_etag(&mut self, kind: Kind, id: &str) -> String {
        self.seq += 1;
        // Planner's ETags look like W/"JzEtVGFzayAgQEBA...": base64 of a version string.
        let raw = format!("'{:020}-{} {}'", self.seq, kind.tag(), id);
        format!("W/\"{}\"", STANDARD.encode(raw))
    }

    fn map(&self, kind: Kind) -> &BTreeMap<String, Obj> {
        match kind {
            Kind::Plan => &self.plans,
            Kind::PlanDetails => &self.plan_details,
            Kind::Bucket => &self.buckets,
            Kind::Task => &self.tasks,
            Kind::TaskDetails => &self.task_details,
        }
    }

    fn map_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Obj> {
        match kind {
            Kind::Plan => &mut self.plans,
            Kind::PlanDetails => &mut self.plan_details,
            Kind::Bucket => &mut self.buckets,
            Kind::Task => &mut self.tasks,
            Kind::TaskDetails => &mut self.task_details,
        }
    }

    fn insert(&mut self, kind: Kind, id: &str, body: Map<String, Value>) -> String {
        let etag = self.next_etag(kind, id);
        let seq = self.seq;
        self.map_mut(kind).insert(
            id.to_string(),
            Obj {
                etag: etag.clone(),
                body,
                seq,
            },
        );
        etag
    }

    fn touch(&mut self, kind: Kind, id: &str) {
        let etag = self.next_etag(kind, id);
        if let Some(o) = self.map_mut(kind).get_mut(id) {
            o.etag = etag;
        }
    }

    /// The Graph representation of one object, with `@odata.etag` (and `@odata.context` when
    /// `with_context`).
    pub fn render(&self, kind: Kind, id: &str, with_context: bool) -> Option<(Value, String)> {
        let o = self.map(kind).get(id)?;
        let mut m = Map::new();
        if with_context {
            m.insert(
                "@odata.context".into(),
                Value::String(format!(
                    "{GRAPH}/$metadata#{}",
                    kind.context().replace("{id}", id)
                )),
            );
        }
        m.insert("@odata.etag".into(), Value::String(o.etag.clone()));
        m.extend(o.body.clone());
        Some((Value::Object(m), o.etag.clone()))
    }

    pub fn render_list(&self, kind: Kind, ids: Vec<String>, context: &str) -> Value {
        let value: Vec<Value> = ids
            .iter()
            .filter_map(|id| self.render(kind, id, false).map(|(v, _)| v))
            .collect();
        json!({"@odata.context": format!("{GRAPH}/$metadata#{context}"), "value": value})
    }

    /// Creation order of an object (what list pages are cut on).
    pub fn seq_of(&self, kind: Kind, id: &str) -> Option<u64> {
        self.map(kind).get(id).map(|o| o.seq)
    }

    pub fn etag(&self, kind: Kind, id: &str) -> Option<&str> {
        self.map(kind).get(id).map(|o| o.etag.as_str())
    }

    // ---------- lists ----------

    pub fn plans_of_group(&self, group_id: &str) -> Result<Vec<String>, GraphError> {
        if !self.groups.contains_key(group_id) {
            return Err(GraphError::not_found("group", group_id));
        }
        Ok(
            sorted(&self.plans, |o| str_field(o, "owner") == Some(group_id))
                .iter()
                .filter_map(|o| str_field(o, "id").map(String::from))
                .collect(),
        )
    }

    pub fn all_plans(&self) -> Vec<String> {
        sorted(&self.plans, |_| true)
            .iter()
            .filter_map(|o| str_field(o, "id").map(String::from))
            .collect()
    }

    pub fn buckets_of_plan(&self, plan_id: Option<&str>) -> Result<Vec<String>, GraphError> {
        if let Some(p) = plan_id
            && !self.plans.contains_key(p)
        {
            return Err(GraphError::not_found("plannerPlan", p));
        }
        Ok(sorted(&self.buckets, |o| {
            plan_id.is_none_or(|p| str_field(o, "planId") == Some(p))
        })
        .iter()
        .filter_map(|o| str_field(o, "id").map(String::from))
        .collect())
    }

    pub fn tasks_of_plan(&self, plan_id: &str) -> Result<Vec<String>, GraphError> {
        if !self.plans.contains_key(plan_id) {
            return Err(GraphError::not_found("plannerPlan", plan_id));
        }
        Ok(
            sorted(&self.tasks, |o| str_field(o, "planId") == Some(plan_id))
                .iter()
                .filter_map(|o| str_field(o, "id").map(String::from))
                .collect(),
        )
    }

    pub fn tasks_of_bucket(&self, bucket_id: &str) -> Result<Vec<String>, GraphError> {
        if !self.buckets.contains_key(bucket_id) {
            return Err(GraphError::not_found("plannerBucket", bucket_id));
        }
        Ok(
            sorted(&self.tasks, |o| str_field(o, "bucketId") == Some(bucket_id))
                .iter()
                .filter_map(|o| str_field(o, "id").map(String::from))
                .collect(),
        )
    }

    // ---------- conditional writes ----------

    /// Checks `If-Match` for a write to `(kind, id)`; a pending forced race first applies a
    /// concurrent change (so the ETag moves and the write gets 412).
    pub fn check_if_match(
        &mut self,
        kind: Kind,
        id: &str,
        if_match: Option<&str>,
        race_user: &Caller,
        limits: &PlannerLimits,
    ) -> Result<(), GraphError> {
        if !self.map(kind).contains_key(id) {
            return Err(GraphError::not_found(kind.label(), id));
        }
        let Some(if_match) = if_match else {
            return Err(GraphError::precondition(
                "The If-Match header must be specified for this kind of request.",
            ));
        };
        if let Some(race) = self.races.pop_front() {
            self.apply_concurrent_change(kind, id, race, race_user, limits);
        }
        let current = self.etag(kind, id).unwrap_or_default();
        if if_match.trim() != current {
            return Err(GraphError::precondition(format!(
                "The If-Match header contains an invalid value: it does not match the current \
                 version of the {} '{id}'.",
                kind.label()
            )));
        }
        Ok(())
    }

    fn apply_concurrent_change(
        &mut self,
        kind: Kind,
        id: &str,
        race: Race,
        who: &Caller,
        limits: &PlannerLimits,
    ) {
        let applied = match (&race.patch, kind) {
            (Some(p), Kind::Task) => self.patch_task(id, p, who, limits).is_ok(),
            (Some(p), Kind::TaskDetails) => self.patch_task_details(id, p, who, limits).is_ok(),
            (Some(p), Kind::Bucket) => self.patch_bucket(id, p).is_ok(),
            (Some(p), Kind::Plan) => self.patch_plan(id, p).is_ok(),
            (Some(p), Kind::PlanDetails) => self.patch_plan_details(id, p).is_ok(),
            (None, _) => false,
        };
        if !applied {
            // Someone else saved the object (e.g. reordered it): its version moves on.
            if matches!(kind, Kind::Task | Kind::Bucket)
                && let Some(o) = self.map_mut(kind).get_mut(id)
            {
                o.body.insert(
                    "orderHint".into(),
                    Value::String(format!("8585{}", new_id())),
                );
            }
            self.touch(kind, id);
        }
    }

    // ---------- plans ----------

    pub fn create_plan_seed(
        &mut self,
        group_id: &str,
        seed: &SeedPlan,
        who: &Caller,
        limits: &PlannerLimits,
    ) -> Result<String, GraphError> {
        if !self.groups.contains_key(group_id) {
            return Err(GraphError::not_found("group", group_id));
        }
        let id = seed.id.clone().unwrap_or_else(new_id);
        let mut body = Map::new();
        body.insert("id".into(), id.clone().into());
        body.insert("title".into(), seed.title.clone().into());
        body.insert("owner".into(), group_id.into());
        body.insert("createdDateTime".into(), now().into());
        body.insert("createdBy".into(), who.identity_set());
        body.insert(
            "container".into(),
            json!({
                "@odata.type": "#microsoft.graph.plannerPlanContainer",
                "containerId": group_id,
                "type": "group",
                "url": format!("{GRAPH}/groups/{group_id}"),
            }),
        );
        self.insert(Kind::Plan, &id, body);
        let mut categories = Map::new();
        for n in 1..=25 {
            let key = format!("category{n}");
            let v = seed.categories.get(&key).cloned().map(Value::String);
            categories.insert(key, v.unwrap_or(Value::Null));
        }
        let details = json!({"id": id, "sharedWith": {}, "categoryDescriptions": categories});
        if let Value::Object(d) = details {
            self.insert(Kind::PlanDetails, &id, d);
        }
        for b in &seed.buckets {
            let mut body = json!({"name": b.name, "planId": id});
            if let Some(bid) = &b.id {
                body["id"] = bid.clone().into();
            }
            self.create_bucket_inner(&body, b.id.clone(), limits)?;
        }
        Ok(id)
    }

    pub fn create_plan(
        &mut self,
        body: &Value,
        who: &Caller,
        limits: &PlannerLimits,
    ) -> Result<String, GraphError> {
        check_schema("plannerPlan", body)?;
        let title = body
            .get("title")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                GraphError::bad_request("The request is invalid: 'title' is required.")
            })?;
        let group = body
            .pointer("/container/containerId")
            .and_then(Value::as_str)
            .or_else(|| {
                body.pointer("/container/url")
                    .and_then(Value::as_str)
                    .and_then(|u| u.rsplit('/').next())
            })
            .or_else(|| body.get("owner").and_then(Value::as_str))
            .ok_or_else(|| {
                GraphError::bad_request(
                    "The request is invalid: 'container' (or 'owner') is required.",
                )
            })?
            .to_string();
        let seed = SeedPlan {
            title: title.to_string(),
            ..SeedPlan::default()
        };
        self.create_plan_seed(&group, &seed, who, limits)
    }

    pub fn patch_plan(&mut self, id: &str, body: &Value) -> Result<(), GraphError> {
        check_schema("plannerPlan", body)?;
        if let Some(t) = body.get("title") {
            let t = t
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| GraphError::bad_request("'title' cannot be empty."))?;
            if let Some(o) = self.plans.get_mut(id) {
                o.body.insert("title".into(), t.into());
            }
        }
        self.touch(Kind::Plan, id);
        Ok(())
    }

    pub fn delete_plan(&mut self, id: &str) {
        self.plans.remove(id);
        self.plan_details.remove(id);
        self.buckets
            .retain(|_, b| str_field(b, "planId") != Some(id));
        let gone: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| str_field(t, "planId") == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for t in gone {
            self.tasks.remove(&t);
            self.task_details.remove(&t);
        }
    }

    pub fn patch_plan_details(&mut self, id: &str, body: &Value) -> Result<(), GraphError> {
        check_schema("plannerPlanDetails", body)?;
        let Some(o) = self.plan_details.get_mut(id) else {
            return Err(GraphError::not_found("plannerPlanDetails", id));
        };
        for key in ["categoryDescriptions", "sharedWith"] {
            if let Some(Value::Object(changes)) = body.get(key) {
                let target = o
                    .body
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(t) = target {
                    for (k, v) in changes {
                        if key == "sharedWith" && (v.is_null() || v == &Value::Bool(false)) {
                            t.remove(k);
                        } else {
                            t.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
        }
        self.touch(Kind::PlanDetails, id);
        Ok(())
    }

    // ---------- buckets ----------

    fn create_bucket_inner(
        &mut self,
        body: &Value,
        fixed_id: Option<String>,
        limits: &PlannerLimits,
    ) -> Result<String, GraphError> {
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                GraphError::bad_request("The request is invalid: 'name' is required.")
            })?;
        let plan_id = body.get("planId").and_then(Value::as_str).ok_or_else(|| {
            GraphError::bad_request(
                "Schema validation has failed. Validation for field 'PlanId', on entity 'Bucket' \
                 has failed: A non-null value must be specified for this field.",
            )
        })?;
        if !self.plans.contains_key(plan_id) {
            return Err(GraphError::not_found("plannerPlan", plan_id));
        }
        let count = self
            .buckets
            .values()
            .filter(|b| str_field(b, "planId") == Some(plan_id))
            .count();
        if count >= limits.max_buckets_per_plan {
            return Err(GraphError::limit(
                "MaximumBucketsInProject",
                format!(
                    "The maximum number of Buckets in a Plan ({}) has been exceeded.",
                    limits.max_buckets_per_plan
                ),
            ));
        }
        let id = fixed_id.unwrap_or_else(new_id);
        let order_hint = body
            .get("orderHint")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("8585{:012}", self.seq));
        let b = json!({"id": id, "name": name, "planId": plan_id, "orderHint": order_hint});
        if let Value::Object(m) = b {
            self.insert(Kind::Bucket, &id, m);
        }
        Ok(id)
    }

    pub fn create_bucket(
        &mut self,
        body: &Value,
        limits: &PlannerLimits,
    ) -> Result<String, GraphError> {
        check_schema("plannerBucket", body)?;
        self.create_bucket_inner(body, None, limits)
    }

    pub fn patch_bucket(&mut self, id: &str, body: &Value) -> Result<(), GraphError> {
        check_schema("plannerBucket", body)?;
        let Some(o) = self.buckets.get_mut(id) else {
            return Err(GraphError::not_found("plannerBucket", id));
        };
        if let Some(n) = body.get("name") {
            let n = n
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| GraphError::bad_request("'name' cannot be empty."))?;
            o.body.insert("name".into(), n.into());
        }
        if let Some(h) = body.get("orderHint").and_then(Value::as_str) {
            o.body.insert("orderHint".into(), h.into());
        }
        self.touch(Kind::Bucket, id);
        Ok(())
    }

    pub fn delete_bucket(&mut self, id: &str) {
        self.buckets.remove(id);
        // Deleting a bucket deletes the tasks in it, as in Planner.
        let gone: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| str_field(t, "bucketId") == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for t in gone {
            self.tasks.remove(&t);
            self.task_details.remove(&t);
        }
    }

    // ---------- tasks ----------

    pub fn create_task(
        &mut self,
        body: &Value,
        who: &Caller,
        limits: &PlannerLimits,
    ) -> Result<String, GraphError> {
        check_schema("plannerTask", body)?;
        let plan_id = body
            .get("planId")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                GraphError::bad_request("The request is invalid: 'planId' is required.")
            })?
            .to_string();
        let title = body
            .get("title")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                GraphError::bad_request("The request is invalid: 'title' is required.")
            })?;
        if !self.plans.contains_key(&plan_id) {
            return Err(GraphError::not_found("plannerPlan", &plan_id));
        }
        let count = self
            .tasks
            .values()
            .filter(|t| str_field(t, "planId") == Some(plan_id.as_str()))
            .count();
        if count >= limits.max_tasks_per_plan {
            return Err(GraphError::limit(
                "MaximumTasksInProject",
                format!(
                    "The maximum number of Tasks in a Plan ({}) has been exceeded.",
                    limits.max_tasks_per_plan
                ),
            ));
        }
        let id = new_id();
        let now = now();
        let mut m = Map::new();
        m.insert("planId".into(), plan_id.clone().into());
        m.insert("bucketId".into(), Value::Null);
        m.insert("title".into(), title.into());
        m.insert("orderHint".into(), format!("8585{:012}", self.seq).into());
        m.insert("assigneePriority".into(), "".into());
        m.insert("percentComplete".into(), 0.into());
        m.insert("startDateTime".into(), Value::Null);
        m.insert("createdDateTime".into(), now.clone().into());
        m.insert("dueDateTime".into(), Value::Null);
        m.insert("hasDescription".into(), false.into());
        m.insert("previewType".into(), "automatic".into());
        m.insert("completedDateTime".into(), Value::Null);
        m.insert("completedBy".into(), Value::Null);
        m.insert("referenceCount".into(), 0.into());
        m.insert("checklistItemCount".into(), 0.into());
        m.insert("activeChecklistItemCount".into(), 0.into());
        m.insert("conversationThreadId".into(), Value::Null);
        m.insert("priority".into(), 5.into());
        m.insert("id".into(), id.clone().into());
        m.insert("createdBy".into(), who.identity_set());
        m.insert("appliedCategories".into(), json!({}));
        m.insert("assignments".into(), json!({}));
        let mut rest = body.clone();
        if let Value::Object(r) = &mut rest {
            r.remove("planId");
            r.remove("title");
        }
        apply_task_fields(&mut m, &rest, &plan_id, self, who, limits)?;
        self.insert(Kind::Task, &id, m);
        let details = json!({
            "id": id,
            "description": "",
            "previewType": "automatic",
            "references": {},
            "checklist": {},
        });
        if let Value::Object(d) = details {
            self.insert(Kind::TaskDetails, &id, d);
        }
        Ok(id)
    }

    pub fn patch_task(
        &mut self,
        id: &str,
        body: &Value,
        who: &Caller,
        limits: &PlannerLimits,
    ) -> Result<(), GraphError> {
        check_schema("plannerTask", body)?;
        let Some(o) = self.tasks.get(id) else {
            return Err(GraphError::not_found("plannerTask", id));
        };
        let plan_id = str_field(o, "planId").unwrap_or_default().to_string();
        if let Some(p) = body.get("planId").and_then(Value::as_str)
            && p != plan_id
        {
            return Err(GraphError::bad_request(
                "The request is invalid: a task cannot be moved to another plan by this sandbox.",
            ));
        }
        let mut m = o.body.clone();
        if let Some(t) = body.get("title") {
            let t = t
                .as_str()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| GraphError::bad_request("'title' cannot be empty."))?;
            m.insert("title".into(), t.into());
        }
        apply_task_fields(&mut m, body, &plan_id, self, who, limits)?;
        if let Some(o) = self.tasks.get_mut(id) {
            o.body = m;
        }
        self.touch(Kind::Task, id);
        Ok(())
    }

    pub fn delete_task(&mut self, id: &str) {
        self.tasks.remove(id);
        self.task_details.remove(id);
    }

    pub fn patch_task_details(
        &mut self,
        id: &str,
        body: &Value,
        who: &Caller,
        limits: &PlannerLimits,
    ) -> Result<(), GraphError> {
        check_schema("plannerTaskDetails", body)?;
        let Some(o) = self.task_details.get(id) else {
            return Err(GraphError::not_found("plannerTaskDetails", id));
        };
        let mut m = o.body.clone();
        let now = now();
        if let Some(d) = body.get("description") {
            m.insert(
                "description".into(),
                d.as_str()
                    .map(|s| Value::String(s.into()))
                    .unwrap_or("".into()),
            );
        }
        if let Some(p) = body.get("previewType").and_then(Value::as_str) {
            m.insert("previewType".into(), p.into());
        }
        if let Some(Value::Object(changes)) = body.get("checklist") {
            let mut list = m
                .get("checklist")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (key, change) in changes {
                if change.is_null() {
                    list.remove(key);
                    continue;
                }
                let exists = list.contains_key(key);
                let item = list.entry(key.clone()).or_insert_with(|| {
                    json!({
                        "@odata.type": "#microsoft.graph.plannerChecklistItem",
                        "isChecked": false,
                        "title": null,
                        "orderHint": format!("8585{:012}", 0),
                    })
                });
                for f in ["isChecked", "title", "orderHint"] {
                    if let Some(v) = change.get(f) {
                        item[f] = v.clone();
                    }
                }
                if !exists
                    && item
                        .get("title")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    return Err(GraphError::bad_request(format!(
                        "The request is invalid: the new checklist item '{key}' needs a 'title'."
                    )));
                }
                if item.get("isChecked").is_none_or(Value::is_null) {
                    item["isChecked"] = false.into();
                }
                item["lastModifiedDateTime"] = now.clone().into();
                item["lastModifiedBy"] = who.identity_set();
            }
            if list.len() > limits.max_checklist_items_per_task {
                return Err(GraphError::limit(
                    "MaximumChecklistItemsOnTask",
                    format!(
                        "The checklist property on the plannerTaskDetails resource contains too \
                         many values (limit {}).",
                        limits.max_checklist_items_per_task
                    ),
                ));
            }
            m.insert("checklist".into(), Value::Object(list));
        }
        if let Some(Value::Object(changes)) = body.get("references") {
            let mut refs = m
                .get("references")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (key, change) in changes {
                if change.is_null() {
                    refs.remove(key);
                    continue;
                }
                let item = refs.entry(key.clone()).or_insert_with(|| {
                    json!({
                        "@odata.type": "#microsoft.graph.plannerExternalReference",
                        "alias": null,
                        "type": null,
                        "previewPriority": " !",
                    })
                });
                for f in ["alias", "type", "previewPriority"] {
                    if let Some(v) = change.get(f) {
                        item[f] = v.clone();
                    }
                }
                item["lastModifiedDateTime"] = now.clone().into();
                item["lastModifiedBy"] = who.identity_set();
            }
            if refs.len() > limits.max_references_per_task {
                return Err(GraphError::limit(
                    "MaximumReferencesOnTask",
                    format!(
                        "The references property on the plannerTaskDetails resource contains too \
                         many values (limit {}).",
                        limits.max_references_per_task
                    ),
                ));
            }
            m.insert("references".into(), Value::Object(refs));
        }
        if let Some(o) = self.task_details.get_mut(id) {
            o.body = m.clone();
        }
        self.touch(Kind::TaskDetails, id);
        self.sync_task_counts(id, &m);
        Ok(())
    }

    /// Keeps the task's `checklistItemCount`, `activeChecklistItemCount`, `referenceCount` and
    /// `hasDescription` in step with its details; the task's ETag moves only when they change.
    fn sync_task_counts(&mut self, id: &str, details: &Map<String, Value>) {
        let checklist = details.get("checklist").and_then(Value::as_object);
        let total = checklist.map_or(0, Map::len);
        let active = checklist.map_or(0, |c| {
            c.values()
                .filter(|i| i.get("isChecked") != Some(&Value::Bool(true)))
                .count()
        });
        let refs = details
            .get("references")
            .and_then(Value::as_object)
            .map_or(0, Map::len);
        let has_desc = details
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty());
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let new = [
            ("checklistItemCount", json!(total)),
            ("activeChecklistItemCount", json!(active)),
            ("referenceCount", json!(refs)),
            ("hasDescription", json!(has_desc)),
        ];
        let changed = new.iter().any(|(k, v)| t.body.get(*k) != Some(v));
        if changed {
            for (k, v) in new {
                t.body.insert(k.into(), v);
            }
            self.touch(Kind::Task, id);
        }
    }
}

/// Applies the writable fields of a task create/update body onto the stored task.
fn apply_task_fields(
    m: &mut Map<String, Value>,
    body: &Value,
    plan_id: &str,
    state: &State,
    who: &Caller,
    limits: &PlannerLimits,
) -> Result<(), GraphError> {
    if let Some(b) = body.get("bucketId") {
        match b.as_str() {
            Some(bid) => {
                let in_plan = state
                    .buckets
                    .get(bid)
                    .is_some_and(|o| str_field(o, "planId") == Some(plan_id));
                if !in_plan {
                    return Err(GraphError::bad_request(format!(
                        "The request is invalid: the bucket '{bid}' is not in the plan '{plan_id}'."
                    )));
                }
                m.insert("bucketId".into(), bid.into());
            }
            None => {
                m.insert("bucketId".into(), Value::Null);
            }
        }
    }
    for key in [
        "orderHint",
        "assigneePriority",
        "conversationThreadId",
        "previewType",
    ] {
        if let Some(v) = body.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    if let Some(p) = body.get("priority") {
        let p = p.as_i64().unwrap_or(5);
        if !(0..=10).contains(&p) {
            return Err(GraphError::bad_request(format!(
                "The request is invalid: 'priority' must be between 0 and 10 (got {p})."
            )));
        }
        m.insert("priority".into(), p.into());
    }
    for key in ["startDateTime", "dueDateTime"] {
        if let Some(v) = body.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    if let (Some(s), Some(d)) = (
        m.get("startDateTime")
            .and_then(Value::as_str)
            .and_then(parse_time),
        m.get("dueDateTime")
            .and_then(Value::as_str)
            .and_then(parse_time),
    ) && s > d
    {
        return Err(GraphError::bad_request(
            "The request is invalid: the start date of the task is later than its due date.",
        ));
    }
    if let Some(pc) = body.get("percentComplete") {
        let pc = pc.as_i64().unwrap_or(0);
        if !(0..=100).contains(&pc) {
            return Err(GraphError::bad_request(format!(
                "The request is invalid: 'percentComplete' must be between 0 and 100 (got {pc})."
            )));
        }
        let was_complete = m.get("percentComplete").and_then(Value::as_i64) == Some(100);
        m.insert("percentComplete".into(), pc.into());
        if pc == 100 && !was_complete {
            m.insert("completedDateTime".into(), now().into());
            m.insert("completedBy".into(), who.identity_set());
        } else if pc < 100 {
            m.insert("completedDateTime".into(), Value::Null);
            m.insert("completedBy".into(), Value::Null);
        }
    }
    if let Some(Value::Object(changes)) = body.get("appliedCategories") {
        let cats = m.entry("appliedCategories").or_insert_with(|| json!({}));
        if let Value::Object(c) = cats {
            for (k, v) in changes {
                if v == &Value::Bool(true) {
                    c.insert(k.clone(), true.into());
                } else {
                    c.remove(k);
                }
            }
        }
    }
    if let Some(Value::Object(changes)) = body.get("assignments") {
        let mut a = m
            .get("assignments")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (user, change) in changes {
            if change.is_null() {
                a.remove(user);
                continue;
            }
            let hint = change
                .get("orderHint")
                .and_then(Value::as_str)
                .unwrap_or(" !")
                .to_string();
            let entry = a.entry(user.clone()).or_insert_with(|| {
                json!({
                    "@odata.type": "#microsoft.graph.plannerAssignment",
                    "assignedDateTime": now(),
                    "assignedBy": who.identity_set(),
                })
            });
            entry["orderHint"] = hint.into();
        }
        if a.len() > limits.max_assignees_per_task {
            return Err(GraphError::limit(
                "MaximumAssigneesInTasks",
                format!(
                    "The assignments property on the plannerTask resource contains too many values \
                     (limit {}).",
                    limits.max_assignees_per_task
                ),
            ));
        }
        m.insert("assignments".into(), Value::Object(a));
    }
    Ok(())
}
