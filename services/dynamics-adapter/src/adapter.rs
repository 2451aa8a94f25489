//! The shared core: the Dataverse client, the batcher, the KV state, account resolution and the
//! flow metrics.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tgb_bus::HandlerError;
use tgb_bus::Publisher;
use tgb_bus::links::{Links, Record};
use tgb_clients::dataverse::{DataverseClient, DataverseError};
use tgb_proto as pb;

use crate::batcher::Batcher;
use crate::ids::{account_id, partner_ref};
use crate::odata::{self, create_only, must_exist, upsert_row};
use crate::settings::DynamicsSettings;
use crate::state::States;

/// Everything the flows share.
pub struct Adapter {
    /// The Dataverse client (the application user's lane).
    pub dv: DataverseClient,
    /// Coalesced writes.
    pub batcher: Batcher,
    /// `tgb_links`.
    pub links: Links,
    /// `tgb_sync`.
    pub states: States,
    /// `tgb_cursors`.
    pub cursors: async_nats::jetstream::kv::Store,
    /// Event publisher.
    pub publisher: Publisher,
    /// `[dynamics]`.
    pub settings: DynamicsSettings,
    /// The application user's id (WhoAmI), lower case.
    pub app_user: String,
    accounts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<String>>>>>,
    /// One lock per entity in use; unused ones are pruned (one entry per row ever seen, kept
    /// for the life of the process, was a slow leak).
    entity_locks: tgb_runtime::locks::KeyedLocks,
    not_tg: Mutex<HashSet<String>>,
    /// Per polled table: the stored delta link that keeps failing, and how many times in a row.
    pub(crate) link_failures: Mutex<HashMap<String, (String, u32)>>,
    /// `dyn.*` events the detection path published: new to the stream, already stored.
    pub(crate) published: (AtomicU64, AtomicU64),
}

/// How many incidents without a TG case [`Adapter::tg_case_of`] remembers.
const NOT_TG_CAPACITY: usize = 10_000;

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("app_user", &self.app_user)
            .finish_non_exhaustive()
    }
}

/// Counts one source event of a flow.
pub fn flow(flow: &'static str, outcome: &'static str, occurred: Option<&prost_types::Timestamp>) {
    metrics::counter!("tgb_flow_events_total", "flow" => flow, "outcome" => outcome).increment(1);
    if outcome == "applied"
        && let Some(t) = occurred
        && let Ok(at) = std::time::SystemTime::try_from(*t)
        && let Ok(age) = std::time::SystemTime::now().duration_since(at)
    {
        metrics::histogram!("tgb_flow_latency_seconds", "flow" => flow).record(age.as_secs_f64());
    }
}

/// Counts a dropped echo.
pub fn echo(target: &'static str, reason: &'static str) {
    metrics::counter!("tgb_echoes_suppressed_total", "target" => target, "reason" => reason)
        .increment(1);
}

/// Counts a dropped stale event.
pub fn stale(target: &'static str) {
    metrics::counter!("tgb_stale_events_dropped_total", "target" => target).increment(1);
}

impl Adapter {
    /// The core over its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dv: DataverseClient,
        batcher: Batcher,
        links: Links,
        states: States,
        cursors: async_nats::jetstream::kv::Store,
        publisher: Publisher,
        settings: DynamicsSettings,
        app_user: String,
    ) -> Self {
        Adapter {
            dv,
            batcher,
            links,
            states,
            cursors,
            publisher,
            settings,
            app_user: app_user.to_ascii_lowercase(),
            accounts: Mutex::new(HashMap::new()),
            entity_locks: tgb_runtime::locks::KeyedLocks::new(),
            not_tg: Mutex::new(HashSet::new()),
            link_failures: Mutex::new(HashMap::new()),
            published: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    /// How many `dyn.*` events this adapter's detection path ([`Adapter::on_change`]) has
    /// published: (new to the stream, already stored under the same event id). An operator
    /// command that replays rows through it (`tgb backfill dataverse`) reports them.
    pub fn published(&self) -> (u64, u64) {
        (
            self.published.0.load(Ordering::Relaxed),
            self.published.1.load(Ordering::Relaxed),
        )
    }

    /// A lock serialising work on one entity inside this process.
    pub fn lock_of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.entity_locks.get(key)
    }

    /// Entity locks currently in the map (in use, or not yet pruned).
    pub fn entity_lock_entries(&self) -> usize {
        self.entity_locks.len()
    }

    /// The account of a partner: the linked one; else the one with its `tgb_partnerkey`; else
    /// (first sync) one whose configured match fields equal the partner id, which then gets the
    /// key; else a new account upserted by the key. Linked in `tgb_links` either way.
    pub async fn account_for(&self, partner: &pb::PartnerRef) -> Result<String, HandlerError> {
        crate::ids::check_partner(partner).map_err(HandlerError::permanent)?;
        let key = partner.key();
        let slot = self
            .accounts
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(id) = slot.as_ref() {
            return Ok(id.clone());
        }
        let tg = Record::new("tg", "partner", &key);
        if let Some(id) = self
            .links
            .find(&tg, "dataverse", "account")
            .await
            .map_err(HandlerError::transient)?
        {
            *slot = Some(id.clone());
            return Ok(id);
        }
        let mut id = self.account_by_key(&key).await?;
        if id.is_none() {
            for field in &self.settings.account_match_fields {
                let found = self
                    .dv
                    .get(&odata::by_column(
                        "account",
                        "accountid,tgb_partnerkey",
                        field,
                        &partner.id,
                    ))
                    .await?;
                let candidates: Vec<&Value> = found["value"]
                    .as_array()
                    .map(|v| v.iter().filter(|r| r["tgb_partnerkey"].is_null()).collect())
                    .unwrap_or_default();
                if candidates.len() == 1 {
                    let matched = candidates[0]["accountid"].as_str().unwrap_or_default();
                    self.batcher
                        .submit(vec![must_exist(upsert_row(
                            "account",
                            matched,
                            json!({"tgb_partnerkey": key}),
                        ))])
                        .await?;
                    metrics::counter!("tgb_dynamics_accounts_matched_total", "field" => field.clone())
                        .increment(1);
                    tracing::info!(partner = %key, account = matched, field, "first sync matched an existing account");
                    id = Some(matched.to_owned());
                    break;
                }
            }
        }
        let id = match id {
            Some(id) => id,
            None => {
                let name = if partner.name.is_empty() {
                    key.clone()
                } else {
                    partner.name.clone()
                };
                let new_id = account_id(&key);
                let created = self
                    .batcher
                    .submit(vec![create_only(upsert_row(
                        "account",
                        &new_id.to_string(),
                        json!({
                            "name": name.chars().take(160).collect::<String>(),
                            "tgb_partnerkey": key,
                        }),
                    ))])
                    .await;
                match created {
                    Ok(answers) => answers
                        .first()
                        .and_then(|a| a.body.as_ref())
                        .and_then(|b| b["accountid"].as_str())
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            HandlerError::transient("the account create answered no id")
                        })?,
                    // Created meanwhile (by another replica, or an agent gave an account the
                    // key): the row holding the key is the partner's account.
                    Err(DataverseError::Conflict { .. }) => {
                        self.account_by_key(&key).await?.ok_or_else(|| {
                            HandlerError::permanent(format!(
                                "account {new_id} exists but does not hold partner key {key:?}"
                            ))
                        })?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.links
            .link(&tg, &Record::new("dataverse", "account", &id))
            .await
            .map_err(HandlerError::transient)?;
        *slot = Some(id.clone());
        Ok(id)
    }

    /// The account holding partner key `key`, found with `$filter` (never by the key in a URL).
    pub async fn account_by_key(&self, key: &str) -> Result<Option<String>, HandlerError> {
        let found = self
            .dv
            .get(&odata::by_column(
                "account",
                "accountid",
                "tgb_partnerkey",
                key,
            ))
            .await?;
        Ok(found["value"][0]["accountid"].as_str().map(str::to_owned))
    }

    /// The incident of TG case key `case_key` (columns `select`), found with `$filter`.
    pub async fn incident_by_case(
        &self,
        case_key: &str,
        select: &str,
    ) -> Result<Option<Value>, DataverseError> {
        let found = self
            .dv
            .get(&odata::by_column(
                "incident",
                select,
                "tgb_tgcaseid",
                case_key,
            ))
            .await?;
        Ok(found["value"]
            .as_array()
            .and_then(|rows| rows.first())
            .cloned())
    }

    /// The partner of an account (from the link, else from its `tgb_partnerkey`).
    pub async fn partner_of(
        &self,
        account_id: &str,
    ) -> Result<Option<pb::PartnerRef>, HandlerError> {
        let rec = Record::new("dataverse", "account", account_id);
        let key = match self
            .links
            .find(&rec, "tg", "partner")
            .await
            .map_err(HandlerError::transient)?
        {
            Some(k) => Some(k),
            None => {
                let row = match self
                    .dv
                    .get(&odata::row("account", account_id, "tgb_partnerkey,name"))
                    .await
                {
                    Ok(r) => r,
                    Err(DataverseError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let key = row["tgb_partnerkey"].as_str().map(str::to_owned);
                if let Some(k) = &key {
                    self.links
                        .link(&Record::new("tg", "partner", k), &rec)
                        .await
                        .map_err(HandlerError::transient)?;
                }
                key
            }
        };
        Ok(key.map(|k| partner_ref(&k)))
    }

    /// The TG case of an incident: the linked one; else the incident's own `tgb_tgcaseid`.
    ///
    /// The link is stored after the incident is written, so an adapter stopped in between
    /// leaves an incident without a link until the TG event's redelivery stores it; a note an
    /// agent adds meanwhile must still reach its case. Incidents found to have no TG case are
    /// remembered (a bounded set) so notes on them cost no further read.
    pub async fn tg_case_of(&self, incident_id: &str) -> Result<Option<String>, HandlerError> {
        let incident_id = incident_id.to_ascii_lowercase();
        if let Some(case) = self
            .links
            .find(
                &Record::new("dataverse", "incident", &incident_id),
                "tg",
                "case",
            )
            .await
            .map_err(HandlerError::transient)?
        {
            return Ok(Some(case));
        }
        if self.not_tg.lock().unwrap().contains(&incident_id) {
            return Ok(None);
        }
        let row = match self
            .dv
            .get(&odata::row("incident", &incident_id, "tgb_tgcaseid"))
            .await
        {
            Ok(row) => row,
            Err(DataverseError::NotFound { .. }) => Value::Null,
            Err(e) => return Err(e.into()),
        };
        match row["tgb_tgcaseid"].as_str().filter(|c| !c.is_empty()) {
            Some(case) => Ok(Some(case.to_owned())),
            None => {
                let mut not_tg = self.not_tg.lock().unwrap();
                if not_tg.len() >= NOT_TG_CAPACITY {
                    not_tg.clear();
                }
                not_tg.insert(incident_id);
                Ok(None)
            }
        }
    }
}
