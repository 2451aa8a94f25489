//! What planner-adapter keeps in KV (`tgb_sync`), besides the links in `tgb_links`:
//!
//! - `planner-intent.<subject>`: a create intent, written before the POST and left in place
//!   once the task is linked: every path reads the link first, so a linked subject's intent is
//!   never read (purging it cost a write per task). A pending intent with no link means "a
//!   POST may have happened": the plan is searched for the task's marker before any re-create.
//! - `planner-task.<task id>`: a task tg-bridge created: what it is for, the last state the
//!   poller observed, the ETag of tg-bridge's own last write (echo suppression), and an outbox
//!   for the progress event being published. Written once per create, after the task's
//!   details: a linked task without a record is a create still to be completed.
//! - `planner-group.<key>`: the department tasks of one cross-functional exception (P4).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tgb_bus::async_nats;
use tgb_bus::kv::{Change, KvError, put_json_if, read_json, update_json, update_json_at};
use tgb_bus::links::encode_token;

/// A KV failure, or an update that kept losing the race (always worth retrying).
pub type StoreError = KvError;

/// A create intent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    /// The marker the task's title starts with.
    pub marker: String,
    /// The plan it is created in.
    pub plan_id: String,
    /// `pending` (a POST may be under way or done) or `failed` (the POST certainly had no effect).
    pub state: String,
    /// Unix seconds when this attempt started.
    pub at: i64,
    /// Unix seconds when this attempt's POST was answered with an error that leaves its effect
    /// unknown (500, 503): no longer in flight, so the plan listing settles sooner than the
    /// lease. Absent while the POST may still be under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<i64>,
}

/// The state of a task the poller compares.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Observed {
    /// `TaskProgress` as i32.
    pub progress: i32,
    /// 0..100.
    pub percent: i64,
    /// User ids.
    pub assignees: BTreeSet<String>,
    /// Category keys.
    pub categories: BTreeSet<String>,
}

/// A task tg-bridge created.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Graph id.
    pub task_id: String,
    /// Plan.
    pub plan_id: String,
    /// Bucket.
    pub bucket_id: String,
    /// `TaskKind` as i32.
    pub kind: i32,
    /// Title.
    pub title: String,
    /// TG case id, document id, step key, action item id.
    pub subject_id: String,
    /// P4 department.
    pub department: String,
    /// TG case, if any.
    pub tg_case_id: String,
    /// Correlation of the business thread.
    pub correlation_id: String,
    /// Partner qualifier, id, name.
    pub partner: Option<(String, String, String)>,
    /// P4 group key.
    pub group: Option<String>,
    /// The ETag the poller saw last.
    pub observed_etag: String,
    /// The ETag tg-bridge's own last write returned.
    pub written_etag: String,
    /// tg-bridge wrote since the poller last looked.
    pub own_write: bool,
    /// The state last observed (or written by tg-bridge).
    pub known: Observed,
    /// A progress event (protobuf bytes) stored before its publish; cleared after the PubAck.
    pub outbox: Option<Vec<u8>>,
}

/// A P4 group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Group {
    /// TG case.
    pub tg_case_id: String,
    /// Dynamics exception, if the group came from one.
    pub exception_id: String,
    /// Correlation.
    pub correlation_id: String,
    /// Partner qualifier, id, name.
    pub partner: Option<(String, String, String)>,
    /// (department, task id).
    pub tasks: Vec<(String, String)>,
    /// The completion event (protobuf bytes), once decided.
    pub completed_event: Option<Vec<u8>>,
    /// Its publish was acknowledged.
    pub completed_published: bool,
}

/// The KV side of planner-adapter (cheap to clone).
#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
    cache: Arc<Mutex<HashMap<String, (TaskRecord, u64)>>>,
    /// One lock per task in use; unused ones are pruned.
    locks: Arc<tgb_runtime::locks::KeyedLocks>,
}

fn task_key(id: &str) -> String {
    format!("planner-task.{}", encode_token(id))
}

fn intent_key(subject: &str) -> String {
    format!("planner-intent.{}", encode_token(subject))
}

fn group_key(key: &str) -> String {
    format!("planner-group.{}", encode_token(key))
}

fn store_err(key: &str, e: impl std::fmt::Display) -> StoreError {
    KvError::Store {
        bucket: tgb_bus::names::KV_SYNC.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

impl Store {
    /// Over the `tgb_sync` bucket.
    pub fn new(kv: kv::Store) -> Self {
        Store {
            kv,
            cache: Arc::default(),
            locks: Arc::default(),
        }
    }

    /// Serialises the handler's writes and the poller's look at one task in this process.
    pub async fn lock(&self, task_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.locks.lock(task_id).await
    }

    /// Task locks currently in the map (in use, or not yet pruned).
    pub fn lock_entries(&self) -> usize {
        self.locks.len()
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        let (value, revision) = read_json(&self.kv, key).await?;
        Ok(value.map(|v| (v, revision)))
    }

    /// The intent of `subject`, with its revision.
    pub async fn intent(&self, subject: &str) -> Result<Option<(Intent, u64)>, StoreError> {
        self.get_json(&intent_key(subject)).await
    }

    /// Writes an intent at `revision`; `Ok(false)` when another writer got there first.
    pub async fn put_intent(
        &self,
        subject: &str,
        intent: &Intent,
        revision: u64,
    ) -> Result<bool, StoreError> {
        Ok(
            put_json_if(&self.kv, &intent_key(subject), intent, revision)
                .await?
                .is_some(),
        )
    }

    /// A task record (cache, else KV).
    pub async fn task(&self, task_id: &str) -> Result<Option<(TaskRecord, u64)>, StoreError> {
        if let Some(hit) = self.cache.lock().unwrap().get(task_id).cloned() {
            return Ok(Some(hit));
        }
        let found: Option<(TaskRecord, u64)> = self.get_json(&task_key(task_id)).await?;
        if let Some(f) = &found {
            self.cache
                .lock()
                .unwrap()
                .insert(task_id.to_owned(), f.clone());
        }
        Ok(found)
    }

    /// Whether a task id is known to be tg-bridge's, from the cache only.
    pub fn cached(&self, task_id: &str) -> Option<TaskRecord> {
        self.cache
            .lock()
            .unwrap()
            .get(task_id)
            .map(|(r, _)| r.clone())
    }

    /// Changes a task record with `f` (re-read and re-applied when another writer got there
    /// first). `f` answers false to leave the record as it is. Returns the record.
    pub async fn update_task<F>(
        &self,
        task_id: &str,
        mut f: F,
    ) -> Result<Option<TaskRecord>, StoreError>
    where
        F: FnMut(&mut TaskRecord) -> bool,
    {
        let key = task_key(task_id);
        let (record, revision) = update_json_at(&self.kv, &key, |current| match current {
            None => Change::Keep(None),
            Some(mut record) => {
                if f(&mut record) {
                    Change::Put(record.clone(), Some(record))
                } else {
                    Change::Keep(Some(record))
                }
            }
        })
        .await?;
        if let Some(record) = &record {
            self.cache
                .lock()
                .unwrap()
                .insert(task_id.to_owned(), (record.clone(), revision));
        }
        Ok(record)
    }

    /// Stores a new task record (or replaces it).
    pub async fn put_task(&self, record: &TaskRecord) -> Result<(), StoreError> {
        let key = task_key(&record.task_id);
        let bytes = serde_json::to_vec(record).map_err(|e| store_err(&key, e))?;
        let rev = self
            .kv
            .put(&key, bytes.into())
            .await
            .map_err(|e| store_err(&key, e))?;
        self.cache
            .lock()
            .unwrap()
            .insert(record.task_id.clone(), (record.clone(), rev));
        Ok(())
    }

    /// Loads every task record into the cache (the poller's start).
    pub async fn load_all(&self) -> Result<usize, StoreError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| store_err("planner-task.*", e))?;
        let mut ids = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| store_err("planner-task.*", e))?;
            if k.starts_with("planner-task.") {
                ids.push(k);
            }
        }
        let mut n = 0;
        for key in ids {
            if let Some((r, rev)) = self.get_json::<TaskRecord>(&key).await? {
                self.cache
                    .lock()
                    .unwrap()
                    .insert(r.task_id.clone(), (r, rev));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every cached task record with an unpublished event.
    pub fn with_outbox(&self) -> Vec<TaskRecord> {
        self.cache
            .lock()
            .unwrap()
            .values()
            .filter(|(r, _)| r.outbox.is_some())
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// A P4 group.
    pub async fn group(&self, key: &str) -> Result<Option<(Group, u64)>, StoreError> {
        self.get_json(&group_key(key)).await
    }

    /// Changes (or creates, from `Group::default()`) a P4 group with `f`.
    pub async fn update_group<F>(&self, key: &str, mut f: F) -> Result<Group, StoreError>
    where
        F: FnMut(&mut Group) -> bool,
    {
        let k = group_key(key);
        update_json(&self.kv, &k, |current: Option<Group>| {
            let mut g = current.unwrap_or_default();
            if f(&mut g) {
                Change::Put(g.clone(), g)
            } else {
                Change::Keep(g)
            }
        })
        .await
    }
}
