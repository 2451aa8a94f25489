//! The executor of Dataverse changes → `dyn.*` events, from two paths that meet here:
//!
//! - the webhook (`POST /webhooks/dataverse`, a `RemoteExecutionContext`): the fast path;
//! - the change-tracking poll (delta link in `tgb_cursors`): the reconciling path.
//!
//! Each change goes through the same filters, in order: made by our own application user →
//! echo (`own_user`), except an incident whose status differs from the one tg-bridge last
//! wrote or agreed (a person's change hidden by a later write of ours); a version not newer than the last applied one for that row → stale;
//! nothing the flow cares about changed since the last sync → skipped. The table's aggregate
//! decides what a change means ([`incident::detect`], [`notes::note_added`],
//! [`exception::plan`], [`account::verifications`], [`order::plan`], [`invoice::changed`],
//! [`kpi::plan`]); this module reads what they need and publishes. Event ids derive from
//! (table, row, version, event) ([`crate::change`]), so the two paths detecting one change
//! publish one event (JetStream de-duplicates by `Nats-Msg-Id`).

use std::collections::BTreeMap;

use serde_json::Value;
use tgb_bus::HandlerError;
use tgb_bus::links::Record;
use tgb_proto as pb;

pub use crate::change::{Change, ContextError, from_context, from_row};

use crate::adapter::{Adapter, echo, flow, stale};
use crate::change::{int, text};
use crate::incident::{self, Detected, STATUS};
use crate::odata;
use crate::schema::{self, IncidentState};
use crate::state::{FROM_DATAVERSE, TO_DATAVERSE};
use crate::{account, exception, invoice, kpi, notes, order};

/// Fields a handler asks to record in the row's `tgb_sync` state.
type Published = Option<BTreeMap<String, String>>;

/// What an incident's change came to.
enum Incident {
    /// Handled: record the row's version (and these fields).
    Handled(Published),
    /// A resolution's `Update`, left for its `Close`: nothing recorded.
    AwaitingClose,
}

impl Adapter {
    /// A change known as tg-bridge's own from its author alone (the comment in
    /// [`Adapter::on_change`] says which): dropped as an echo without any read.
    pub fn own_echo(&self, c: &Change) -> bool {
        self.by_app_user(c) && crate::change::ours_by_author(&c.table, &c.message)
    }

    /// The change names tg-bridge's application user as its author.
    fn by_app_user(&self, c: &Change) -> bool {
        c.caller.as_deref() == Some(self.app_user.as_str())
    }

    /// Filters one change and publishes what it means. Errors are transient (retry later).
    pub async fn on_change(&self, mut c: Change) -> Result<(), HandlerError> {
        let lock = self.lock_of(&format!("{}:{}", c.table, c.id));
        let _guard = lock.lock().await;
        // Our own user as the last modifier does not prove the change is ours: a person may
        // have changed the row before a later write of ours (the poll only sees the last
        // modifier). Incidents are compared with the status tg-bridge last wrote or agreed
        // (`incident_changed`); other tables drop such rows as echoes. A `Create` notified
        // with our own user as its initiator is our own create (no one else can make a row
        // as it, and nothing came before it): dropped at once, without reading the sync
        // state or the row (one Dataverse request and four broker round trips per case).
        let own = self.by_app_user(&c);
        if self.own_echo(&c) {
            echo("dataverse", "own_user");
            return Ok(());
        }
        let entity = format!("dataverse:{}:{}", c.table, c.id);
        let (state, state_rev) = self
            .states
            .get(FROM_DATAVERSE, &entity)
            .await
            .map_err(HandlerError::transient)?;
        if c.message != "Close"
            && let Some(v) = c.version
            && state.is_stale(&v.to_string())
        {
            stale("dataverse");
            return Ok(());
        }
        if c.message == "Delete" {
            return Ok(());
        }
        // A webhook carries the post image; a poll row is complete. Fill what is missing.
        if c.message != "Poll"
            && c.message != "Close"
            && !c.attrs.contains_key("versionnumber")
            && let Ok(row) = self.dv.get(&odata::path(&c.table, &c.id)).await
            && let Some(o) = row.as_object()
        {
            for (k, v) in o {
                c.attrs.entry(k.clone()).or_insert(v.clone());
            }
        }
        let published = match c.table.as_str() {
            "incident" => match self.incident_changed(&c, own).await? {
                Incident::Handled(published) => published,
                // Not recorded as seen: the poll that meets this version decides again.
                Incident::AwaitingClose => return Ok(()),
            },
            "annotation" => self.note_changed(&c).await?,
            "tgb_exception" => self.exception_changed(&c, &state.fields).await?,
            "account" => self.account_changed(&c, &state.fields).await?,
            "salesorder" => self.order_changed(&c, &state.fields).await?,
            "invoice" => self.invoice_changed(&c, &state.fields).await?,
            "tgb_partnerkpi" => self.kpi_changed(&c).await?,
            _ => None,
        };
        let fields = published.clone().unwrap_or_default();
        let version = c.version.map(|v| v.to_string());
        // Written at the revision read above; a write in between (another replica, or a
        // handler of this change that wrote the same entry) makes it re-read.
        self.states
            .update_from(FROM_DATAVERSE, &entity, (state, state_rev), |st| {
                if let Some(v) = &version {
                    if st.is_stale(v) {
                        return false;
                    }
                    st.version = v.clone();
                }
                st.fields.extend(fields.clone());
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    async fn publish(&self, flow_name: &'static str, event: pb::Event) -> Result<(), HandlerError> {
        let occurred = event.meta().and_then(|m| m.occurred_at);
        let ack = self
            .publisher
            .publish_event(&event)
            .await
            .map_err(HandlerError::transient)?;
        let counter = if ack.duplicate {
            &self.published.1
        } else {
            &self.published.0
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        flow(flow_name, "applied", occurred.as_ref());
        // Every publish, also one JetStream would de-duplicate: tests count double emissions.
        metrics::counter!("tgb_dynamics_changes_published_total", "flow" => flow_name).increment(1);
        Ok(())
    }

    /// D1: status changes and resolutions of incidents linked to TG cases
    /// ([`incident::detect`]).
    ///
    /// `own`: tg-bridge's application user modified the row last. The change is an echo when
    /// the status equals the one tg-bridge last wrote or agreed on (read under the case's lock,
    /// so a write in progress has recorded it); a different status is a person's change that a
    /// later write of ours hid, and is published.
    async fn incident_changed(&self, c: &Change, own: bool) -> Result<Incident, HandlerError> {
        let tg_case = match text(&c.attrs, "tgb_tgcaseid") {
            "" => self.tg_case_of(&c.id).await?,
            id => Some(id.to_owned()),
        };
        let Some(tg_case) = tg_case else {
            return Ok(Incident::Handled(None));
        };
        let sync_entity = format!("tg:case:{tg_case}");
        // The inbound writer holds this lock from its write until it has recorded the status.
        let case_lock = self.lock_of(&sync_entity);
        let _case_guard = case_lock.lock().await;
        let partner = match c.attrs.get("_customerid_value").and_then(Value::as_str) {
            Some(a) => self.partner_of(a).await?,
            None => None,
        };
        if c.message == "Close" {
            // Published before the status is recorded, as any status change (below).
            let ev = incident::resolved(c, partner, &tg_case);
            self.publish("D1", ev.into()).await?;
            self.mark_status(&sync_entity, "resolved").await?;
            return Ok(Incident::Handled(None));
        }
        let Some(state) = incident::state_of(c) else {
            return Ok(Incident::Handled(None));
        };
        let (known, _) = self
            .states
            .get(TO_DATAVERSE, &sync_entity)
            .await
            .map_err(HandlerError::transient)?;
        match incident::detect(c, state, own, &known) {
            Detected::Echo => echo("dataverse", "own_user"),
            Detected::Stale => stale("dataverse"),
            Detected::Unchanged => {}
            Detected::Changed {
                key,
                hidden,
                publish,
            } => {
                if hidden {
                    metrics::counter!("tgb_dynamics_hidden_changes_total", "table" => "incident")
                        .increment(1);
                    tracing::info!(incident = %c.id, "a status change behind a later write of ours");
                }
                // A resolution's `Update`: its `Close` carries the resolution. Nothing is
                // recorded, neither the status nor the row's version, so that a `Close` refused
                // twice (Dataverse retries once) leaves the resolution to the poll, which meets
                // this version unrecorded and publishes it with the resolution's text. (Recorded
                // here, the poll found the status agreed and the resolution was never sent.)
                if !publish {
                    return Ok(Incident::AwaitingClose);
                }
                // Published before the status is recorded: the recorded status is what makes
                // the next sight of this change (the webhook's retry, the poll) `Unchanged`, so
                // recorded first it would stand for an event a refused publish never carried.
                // Published again after a failed record, the event keeps its id (one stored).
                // A resolution the poll meets has the id of its `Close` (the row's version; a
                // resolved row takes no write until it is reactivated), so the two are stored
                // once whichever comes first.
                let resolution;
                let c = if state.0 == IncidentState::Resolved.code() && c.resolution.is_none() {
                    resolution = Change {
                        resolution: self.resolution_of(&c.id).await?,
                        ..c.clone()
                    };
                    &resolution
                } else {
                    c
                };
                let ev = incident::status_changed(c, state, partner, &tg_case);
                self.publish("D1", ev).await?;
                self.mark_status(&sync_entity, key).await?;
            }
        }
        Ok(Incident::Handled(None))
    }

    /// The latest resolution of an incident (subject and description), for a resolution the
    /// poll meets without its `Close`.
    async fn resolution_of(
        &self,
        incident_id: &str,
    ) -> Result<Option<serde_json::Map<String, Value>>, HandlerError> {
        let rows = self
            .dv
            .get(&odata::latest_resolution(incident_id))
            .await
            .map_err(HandlerError::from)?;
        Ok(rows["value"]
            .as_array()
            .and_then(|v| v.first())
            .and_then(Value::as_object)
            .cloned())
    }

    async fn mark_status(&self, entity: &str, key: &str) -> Result<(), HandlerError> {
        let h = incident::status_hash(key);
        self.states
            .update(TO_DATAVERSE, entity, |st| {
                st.fields.insert(STATUS.into(), h.clone());
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    /// D1: an internal note on an incident linked to a TG case ([`notes::note_added`]).
    async fn note_changed(&self, c: &Change) -> Result<Published, HandlerError> {
        if !notes::is_creation(c) {
            return Ok(None);
        }
        let Some(incident) = c.attrs.get("_objectid_value").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Some(tg_case) = self.tg_case_of(incident).await? else {
            return Ok(None);
        };
        let (seen, _) = self
            .states
            .get(FROM_DATAVERSE, &format!("dataverse:annotation:{}", c.id))
            .await
            .map_err(HandlerError::transient)?;
        if let Some(ev) = notes::note_added(
            c,
            incident,
            &tg_case,
            &seen.version,
            &self.settings.partner_note_prefix,
        ) {
            self.publish("D1", ev.into()).await?;
        }
        Ok(None)
    }

    /// D2: exceptions raised or updated in Dynamics ([`exception::plan`]).
    async fn exception_changed(
        &self,
        c: &Change,
        seen: &BTreeMap<String, String>,
    ) -> Result<Published, HandlerError> {
        let account = exception::account(&c.attrs);
        let partner = if account.is_empty() {
            None
        } else {
            self.partner_of(account).await?
        };
        let tg_case = self
            .links
            .find(&Record::new("dataverse", "exception", &c.id), "tg", "case")
            .await
            .map_err(HandlerError::transient)?
            .unwrap_or_else(|| exception::own_tg_case(&c.attrs).to_owned());
        let x = exception::exception(c, tg_case);
        let Some((ev, view)) = exception::plan(c, x, partner, seen) else {
            return Ok(None);
        };
        self.publish("D2", ev).await?;
        Ok(Some([("view".to_owned(), view)].into()))
    }

    /// D3 (verification flags) and D8 (master data) changed on an account
    /// ([`account::verifications`], [`account::changed_fields`]).
    async fn account_changed(
        &self,
        c: &Change,
        seen: &BTreeMap<String, String>,
    ) -> Result<Published, HandlerError> {
        let Some(partner) = (match text(&c.attrs, "tgb_partnerkey") {
            "" => self.partner_of(&c.id).await?,
            k => Some(crate::ids::partner_ref(k)),
        }) else {
            return Ok(None);
        };
        let (vh, verifications) = account::verifications(&c.attrs, seen);
        if let Some(verifications) = verifications {
            let ev = pb::DynAccountVerified {
                meta: crate::change::meta(c, "verified", Some(partner.clone()), &partner.key()),
                account_id: c.id.clone(),
                verifications,
                approved_by: None,
            };
            self.publish("D3", ev.into()).await?;
        }
        // D8: compare with what both sides last agreed on.
        let entity = format!("tg:partner:{}", partner.key());
        let (known, _) = self
            .states
            .get(TO_DATAVERSE, &entity)
            .await
            .map_err(HandlerError::transient)?;
        let (changed, hashes) = account::changed_fields(&c.attrs, &known);
        if !changed.is_empty() {
            let ev = account::account_updated(c, &partner, &changed);
            self.publish("D8", ev.into()).await?;
            self.states
                .update(TO_DATAVERSE, &entity, |st| {
                    st.fields.extend(hashes.clone());
                    true
                })
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(Some([("verifications".to_owned(), vh)].into()))
    }

    /// D5: sales order milestones ([`order::plan`]).
    async fn order_changed(
        &self,
        c: &Change,
        seen: &BTreeMap<String, String>,
    ) -> Result<Published, HandlerError> {
        let Some((milestone, h)) = order::plan(&c.attrs, seen) else {
            return Ok(None);
        };
        let Some(account) = c.attrs.get("_customerid_value").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Some(partner) = self.partner_of(account).await? else {
            return Ok(None);
        };
        self.publish("D5", order::event(c, milestone, partner).into())
            .await?;
        Ok(Some([("milestone".to_owned(), h)].into()))
    }

    /// D6: invoice payment/dispute status, adjustment and resolution note
    /// ([`invoice::changed`]).
    async fn invoice_changed(
        &self,
        c: &Change,
        seen: &BTreeMap<String, String>,
    ) -> Result<Published, HandlerError> {
        let Some(h) = invoice::changed(&c.attrs, seen) else {
            return Ok(None);
        };
        let partner = match c.attrs.get("_customerid_value").and_then(Value::as_str) {
            Some(acc) => self.partner_of(acc).await?,
            None => None,
        };
        self.publish("D6", invoice::status_changed(c, partner).into())
            .await?;
        Ok(Some([("view".to_owned(), h)].into()))
    }

    /// D7: a KPI row changed → the snapshot of its partner and period ([`kpi::plan`]).
    async fn kpi_changed(&self, c: &Change) -> Result<Published, HandlerError> {
        let Some(account) = kpi::partner_account(&c.attrs) else {
            return Ok(None);
        };
        let period = kpi::period(&c.attrs).to_owned();
        let rows = self
            .dv
            .get_all(&odata::kpi_rows(&account, &period), odata::KPI_MAX_ROWS)
            .await?;
        let Some(snapshot) = kpi::plan(&rows, &self.settings) else {
            return Ok(None);
        };
        let Some(partner) = self.partner_of(&account.to_string()).await? else {
            return Ok(None);
        };
        let at = Change {
            version: snapshot.version.or(c.version),
            ..c.clone()
        };
        let ev = pb::DynKpiSnapshot {
            meta: crate::change::meta(
                &at,
                &format!("kpi:{period}"),
                Some(partner.clone()),
                &partner.key(),
            ),
            period,
            kpis: snapshot.kpis,
            period_closed: snapshot.closed,
        };
        self.publish("D7", ev.into()).await?;
        Ok(None)
    }
}

/// Consumes a webhook body: parses, filters, publishes.
pub async fn webhook_body(adapter: &Adapter, body: &[u8]) -> Result<(), WebhookFailure> {
    // tg-bridge's own writes come back once each: told from the body's head alone (#21).
    if crate::change::ContextHead::of(body).is_some_and(|h| h.is_own_echo(&adapter.app_user)) {
        echo("dataverse", "own_user");
        return Ok(());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookFailure::Invalid(format!("body is not JSON: {e}")))?;
    let change = from_context(&value).map_err(|e| WebhookFailure::Invalid(e.to_string()))?;
    if schema::table(&change.table).is_none() {
        return Err(WebhookFailure::Invalid(format!(
            "table {:?} is not one tg-bridge follows",
            change.table
        )));
    }
    // Dropping needs no proof: a body that only claims our own user makes tg-bridge skip a
    // notification, never write or publish anything, and a person's real change comes with its
    // own notification and in the poll. Only what would be acted upon is read back first (one
    // Dataverse request per case saved on tg-bridge's own creates).
    if adapter.own_echo(&change) {
        echo("dataverse", "own_user");
        return Ok(());
    }
    let Some(change) = confirmed(adapter, change).await? else {
        return Ok(());
    };
    adapter
        .on_change(change)
        .await
        .map_err(|e| WebhookFailure::Failed(e.to_string()))
}

/// Columns that say where a change goes (which TG case, which partner): taken from the row
/// read back, never from a webhook body.
const ROUTING_COLUMNS: &[&str] = &[
    "tgb_tgcaseid",
    "tgb_partnerkey",
    "_customerid_value",
    "_tgb_partner_value",
    "_objectid_value",
    "_regardingobjectid_value",
];

/// A webhook body is a claim: whoever holds the key can send any. Before it is published the
/// row is read back by its id: a row that is not there is no change, a Close of an incident
/// that is not resolved is none either, and the columns that route the change (which TG case,
/// which partner) are Dataverse's, not the body's. The other columns stay as the body has them
/// (the values of that change; later changes have their own webhooks and the poll), so the
/// echo and staleness filters see the change as it was made. Deletes are taken as they are
/// (they publish nothing).
async fn confirmed(
    adapter: &Adapter,
    mut change: Change,
) -> Result<Option<Change>, WebhookFailure> {
    if change.message == "Delete" {
        return Ok(Some(change));
    }
    let row = match adapter
        .dv
        .get(&odata::path(&change.table, &change.id))
        .await
    {
        Ok(row) => row,
        Err(tgb_clients::dataverse::DataverseError::NotFound { .. }) => {
            tracing::info!(table = %change.table, id = %change.id, "webhook for a row that does not exist: dropped");
            return Ok(None);
        }
        Err(e) => return Err(WebhookFailure::Failed(e.to_string())),
    };
    let Some(row) = row.as_object() else {
        return Err(WebhookFailure::Failed(format!(
            "the {} row read back is not an object",
            change.table
        )));
    };
    if change.message == "Close" && int(row, "statecode") != Some(IncidentState::Resolved.code()) {
        tracing::info!(id = %change.id, "Close webhook for an incident that is not resolved: dropped");
        return Ok(None);
    }
    // A resolved row takes no write until it is reactivated: its version names this
    // resolution, whether its post image came or not, and is the one the poll will meet (the
    // resolution's event id is made from it).
    if change.message == "Close"
        && let Some(v) = row.get("versionnumber").and_then(Value::as_u64)
    {
        change.version = Some(v);
    }
    for column in ROUTING_COLUMNS {
        match row.get(*column) {
            Some(v) => {
                change.attrs.insert((*column).to_owned(), v.clone());
            }
            None => {
                change.attrs.remove(*column);
            }
        }
    }
    // What the handlers would otherwise fill from the row in a second read.
    for (k, v) in row {
        change.attrs.entry(k.clone()).or_insert(v.clone());
    }
    Ok(Some(change))
}

/// Why a webhook call was not taken.
#[derive(Debug)]
pub enum WebhookFailure {
    /// 400.
    Invalid(String),
    /// 503: Dataverse retries once, the poll reconciles.
    Failed(String),
}
