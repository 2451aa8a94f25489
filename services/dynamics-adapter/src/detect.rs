//! Dataverse changes → `dyn.*` events, from two paths that meet here:
//!
//! - the webhook (`POST /webhooks/dataverse`, a `RemoteExecutionContext`): the fast path;
//! - the change-tracking poll (delta link in `tgb_cursors`): the reconciling path.
//!
//! Each change goes through the same filters, in order: made by our own application user →
//! echo (`own_user`), except an incident whose status differs from the one tg-bridge last
//! wrote or agreed (a person's change hidden by a later write of ours); a version not newer than the last applied one for that row → stale;
//! nothing the flow cares about changed since the last sync → skipped. Event ids derive from
//! (table, row, version, event), so the two paths detecting one change publish one event
//! (JetStream de-duplicates by `Nats-Msg-Id`).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tgb_bus::HandlerError;
use tgb_bus::links::Record;
use tgb_proto as pb;

use crate::adapter::{Adapter, FROM_DATAVERSE, TO_DATAVERSE, echo, flow, handler_error, stale};
use crate::inbound::{dv_account_view, status_class};
use crate::schema::{
    self, Department, DisputeStatus, ExceptionKind, ExceptionStatus, IncidentState, IncidentStatus,
    InvoiceState, OrderMilestone, SalesOrderState,
};
use crate::state::hash;

/// One detected change.
#[derive(Clone, Debug, Default)]
pub struct Change {
    /// `Create`, `Update`, `Delete`, `Close`; `Poll` from change tracking.
    pub message: String,
    /// Table logical name.
    pub table: String,
    /// Row id (lower case).
    pub id: String,
    /// Row version (versionnumber), when known.
    pub version: Option<u64>,
    /// The row's columns in Web API naming (`_x_value` for lookups).
    pub attrs: Map<String, Value>,
    /// Who made it.
    pub caller: Option<String>,
    /// Close: the incident resolution's columns.
    pub resolution: Option<Map<String, Value>>,
}

/// Why a webhook body is refused.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Not JSON or not an object.
    #[error("the body is not a RemoteExecutionContext: {0}")]
    Shape(String),
}

fn sdk_value(v: &Value) -> Value {
    match v {
        Value::Object(o) => match o.get("__type").and_then(Value::as_str) {
            Some(t) if t.starts_with("EntityReference") => {
                o.get("Id").cloned().unwrap_or(Value::Null)
            }
            Some(t) if t.starts_with("OptionSetValue") || t.starts_with("Money") => {
                o.get("Value").cloned().unwrap_or(Value::Null)
            }
            _ => v.clone(),
        },
        Value::String(s) if s.starts_with("/Date(") => {
            let ms = s
                .trim_start_matches("/Date(")
                .trim_end_matches(")/")
                .parse::<i64>()
                .unwrap_or(0);
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(Value::String)
                .unwrap_or(Value::Null)
        }
        other => other.clone(),
    }
}

fn attributes(entity: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for kv in entity["Attributes"].as_array().into_iter().flatten() {
        let Some(key) = kv["key"].as_str() else {
            continue;
        };
        let value = &kv["value"];
        let is_ref = value["__type"]
            .as_str()
            .is_some_and(|t| t.starts_with("EntityReference"));
        let name = if is_ref {
            format!("_{key}_value")
        } else {
            key.to_owned()
        };
        let v = sdk_value(value);
        out.insert(
            name,
            match v {
                Value::String(s) if is_ref => Value::String(s.to_ascii_lowercase()),
                v => v,
            },
        );
    }
    out
}

/// Parses a `RemoteExecutionContext`.
pub fn from_context(body: &Value) -> Result<Change, ContextError> {
    let o = body
        .as_object()
        .ok_or_else(|| ContextError::Shape("not a JSON object".into()))?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    let message =
        text("MessageName").ok_or_else(|| ContextError::Shape("MessageName is missing".into()))?;
    let table = text("PrimaryEntityName")
        .ok_or_else(|| ContextError::Shape("PrimaryEntityName is missing".into()))?;
    let input = |name: &str| {
        o.get("InputParameters")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|p| p["key"] == name))
            .map(|p| p["value"].clone())
    };
    let resolution = input("IncidentResolution").map(|r| attributes(&r));
    let mut id = text("PrimaryEntityId").unwrap_or_default();
    let mut table = table;
    let blank = id.is_empty() || uuid::Uuid::try_parse(&id).is_ok_and(|u| u.is_nil());
    if blank && message == "Close" {
        // `Close` has no primary row (Dataverse sends an empty or all-zero id): the case is the
        // IncidentResolution's `incidentid`.
        id = resolution
            .as_ref()
            .and_then(|r| r.get("_incidentid_value"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                ContextError::Shape(
                    "a Close without PrimaryEntityId has no IncidentResolution.incidentid".into(),
                )
            })?;
        table = "incident".to_owned();
    } else if id.is_empty() {
        return Err(ContextError::Shape("PrimaryEntityId is missing".into()));
    }
    // The id goes into request paths: only a GUID is taken.
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(ContextError::Shape(format!(
            "PrimaryEntityId {:?} is not a GUID",
            id.chars().take(64).collect::<String>()
        )));
    }
    let post = o
        .get("PostEntityImages")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .map(|p| p["value"].clone());
    let mut attrs = Map::new();
    let mut version = None;
    if let Some(target) = input("Target")
        && target.is_object()
    {
        attrs.extend(attributes(&target));
    }
    if let Some(post) = &post {
        attrs.extend(attributes(post));
        version = post["RowVersion"].as_str().and_then(|v| v.parse().ok());
    }
    if version.is_none() {
        version = attrs.get("versionnumber").and_then(Value::as_u64);
    }
    Ok(Change {
        message,
        table,
        id: id.to_ascii_lowercase(),
        version,
        attrs,
        caller: text("InitiatingUserId").map(|s| s.to_ascii_lowercase()),
        resolution,
    })
}

/// A row of a change-tracking answer as a change.
pub fn from_row(table: &str, row: &Value) -> Option<Change> {
    let t = schema::table(table)?;
    let o = row.as_object()?;
    Some(Change {
        message: "Poll".into(),
        table: table.to_owned(),
        id: o.get(&t.primaryid)?.as_str()?.to_ascii_lowercase(),
        version: o.get("versionnumber").and_then(Value::as_u64),
        attrs: o.clone(),
        caller: o
            .get("_modifiedby_value")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        resolution: None,
    })
}

/// A deterministic ULID for the event `what` of a change.
fn event_id(c: &Change, what: &str) -> String {
    let d = Sha256::digest(format!("{}|{}|{:?}|{what}", c.table, c.id, c.version).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    // A fixed time part keeps it a valid ULID; the rest is the digest.
    bytes[0] = 0x01;
    ulid::Ulid::from_bytes(bytes).to_string()
}

fn meta(
    c: &Change,
    what: &str,
    partner: Option<pb::PartnerRef>,
    correlation: &str,
) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        event_id: event_id(c, what),
        correlation_id: correlation.to_owned(),
        partner,
        entity: Some(pb::EntityRef::new("dataverse", &c.table, &c.id)),
        entity_version: c.version.map(|v| v.to_string()).unwrap_or_default(),
        ..pb::EventMeta::new(pb::Origin::Dyn)
    })
}

fn int(attrs: &Map<String, Value>, k: &str) -> Option<i64> {
    attrs.get(k).and_then(Value::as_i64)
}

fn text<'a>(attrs: &'a Map<String, Value>, k: &str) -> &'a str {
    attrs.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// `tgb_sync` field (TO_DATAVERSE, per TG case): the incident's versionnumber as tg-bridge's
/// last write of it answered, when that answer showed no status change by someone else.
pub const WRITTEN_VERSION: &str = "dv_version";

/// TG status of an incident state.
pub fn tg_status(statecode: i64, statuscode: i64) -> pb::CaseStatus {
    match (
        IncidentState::from_code(statecode),
        IncidentStatus::from_code(statuscode),
    ) {
        (Some(IncidentState::Resolved), _) => pb::CaseStatus::Resolved,
        (Some(IncidentState::Canceled), _) => pb::CaseStatus::Closed,
        (_, Some(IncidentStatus::WaitingForDetails)) => pb::CaseStatus::WaitingOnPartner,
        _ => pb::CaseStatus::InProgress,
    }
}

pub(crate) fn status_key(s: pb::CaseStatus) -> &'static str {
    match s {
        pb::CaseStatus::Resolved => "resolved",
        pb::CaseStatus::Closed => "closed",
        pb::CaseStatus::WaitingOnPartner => "waiting_on_partner",
        _ => "active",
    }
}

impl Adapter {
    /// Filters one change and publishes what it means. Errors are transient (retry later).
    pub async fn on_change(&self, mut c: Change) -> Result<(), HandlerError> {
        let lock = self.lock_of(&format!("{}:{}", c.table, c.id));
        let _guard = lock.lock().await;
        // Our own user as the last modifier does not prove the change is ours: a person may
        // have changed the row before a later write of ours (the poll only sees the last
        // modifier). Incidents are compared with the status tg-bridge last wrote or agreed
        // (`incident_changed`); other tables drop such rows as echoes.
        let own = c.caller.as_deref() == Some(self.app_user.as_str());
        if own && (c.table != "incident" || c.message == "Close") {
            echo("dataverse", "own_user");
            return Ok(());
        }
        let entity = format!("dataverse:{}:{}", c.table, c.id);
        let (state, _) = self
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
            && let Ok(row) = self
                .dv
                .get(&format!("{}({})", schema::set(&c.table), c.id))
                .await
            && let Some(o) = row.as_object()
        {
            for (k, v) in o {
                c.attrs.entry(k.clone()).or_insert(v.clone());
            }
        }
        let published = match c.table.as_str() {
            "incident" => self.incident_changed(&c, own).await?,
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
        self.states
            .update(FROM_DATAVERSE, &entity, |st| {
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
        self.publisher
            .publish_event(&event)
            .await
            .map_err(HandlerError::transient)?;
        flow(flow_name, "applied", occurred.as_ref());
        // Every publish, also one JetStream would de-duplicate: tests count double emissions.
        metrics::counter!("tgb_dynamics_changes_published_total", "flow" => flow_name).increment(1);
        Ok(())
    }

    /// D1: status changes and resolutions of incidents linked to TG cases.
    ///
    /// `own`: tg-bridge's application user modified the row last. The change is an echo when
    /// the status equals the one tg-bridge last wrote or agreed on (read under the case's lock,
    /// so a write in progress has recorded it); a different status is a person's change that a
    /// later write of ours hid, and is published.
    async fn incident_changed(
        &self,
        c: &Change,
        own: bool,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        let tg_case = match text(&c.attrs, "tgb_tgcaseid") {
            "" => self.tg_case_of(&c.id).await?,
            id => Some(id.to_owned()),
        };
        let Some(tg_case) = tg_case else {
            return Ok(None);
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
            let r = c.resolution.clone().unwrap_or_default();
            let ev = pb::DynCaseResolved {
                meta: meta(c, "resolved", partner, &tg_case),
                incident_id: c.id.clone(),
                tg_case_id: tg_case.clone(),
                resolution_subject: text(&r, "subject").to_owned(),
                resolution_description: text(&r, "description").to_owned(),
                statuscode: IncidentStatus::ProblemSolved.code() as i32,
            };
            self.mark_status(&sync_entity, "resolved").await?;
            self.publish("D1", ev.into()).await?;
            return Ok(None);
        }
        let (Some(state), Some(status)) = (int(&c.attrs, "statecode"), int(&c.attrs, "statuscode"))
        else {
            return Ok(None);
        };
        let tg = tg_status(state, status);
        let key = status_key(tg);
        let (known, _) = self
            .states
            .get(TO_DATAVERSE, &sync_entity)
            .await
            .map_err(HandlerError::transient)?;
        // Not newer than tg-bridge's own last write of the row: that write's answer showed the
        // row as it then was, so this is our echo or a change already overtaken.
        if let (Some(v), Some(ours)) = (
            c.version,
            known
                .fields
                .get(WRITTEN_VERSION)
                .and_then(|w| w.parse::<u64>().ok()),
        ) && v <= ours
        {
            if own {
                echo("dataverse", "own_user");
            } else {
                stale("dataverse");
            }
            return Ok(None);
        }
        // Our own write whose outcome was never recorded (the adapter stopped between the write
        // and the record; the redelivered TG event records it), or one of another revision than
        // the recorded one: it carries TG's content.
        if own {
            let recorded = known.version.parse::<i64>().ok();
            let written = int(&c.attrs, "tgb_tgrevision");
            // A write of an older revision than the recorded one is ours too (another replica
            // recorded the newer one first); a person's change behind it would show in the
            // answer of the newer write.
            if recorded.is_none() || matches!((written, recorded), (Some(w), Some(r)) if w != r) {
                echo("dataverse", "own_user");
                return Ok(None);
            }
        }
        if known.fields.get("status") == Some(&hash(&json!(status_class(key)))) {
            if own {
                echo("dataverse", "own_user");
            }
            return Ok(None);
        }
        if own {
            metrics::counter!("tgb_dynamics_hidden_changes_total", "table" => "incident")
                .increment(1);
            tracing::info!(incident = %c.id, "a status change behind a later write of ours");
        }
        self.mark_status(&sync_entity, key).await?;
        if state == IncidentState::Resolved.code() && c.message == "Update" {
            // CloseIncident also sends a Close message, which carries the resolution.
            return Ok(None);
        }
        let ev: pb::Event = if state == IncidentState::Resolved.code() {
            pb::DynCaseResolved {
                meta: meta(c, "resolved", partner, &tg_case),
                incident_id: c.id.clone(),
                tg_case_id: tg_case.clone(),
                statuscode: status as i32,
                ..Default::default()
            }
            .into()
        } else {
            pb::DynCaseStatusChanged {
                meta: meta(c, "status", partner, &tg_case),
                incident_id: c.id.clone(),
                tg_case_id: tg_case.clone(),
                statecode: state as i32,
                statuscode: status as i32,
                tg_status: tg as i32,
            }
            .into()
        };
        self.publish("D1", ev).await?;
        Ok(None)
    }

    async fn mark_status(&self, entity: &str, key: &str) -> Result<(), HandlerError> {
        let h = hash(&json!(status_class(key)));
        self.states
            .update(TO_DATAVERSE, entity, |st| {
                st.fields.insert("status".into(), h.clone());
                true
            })
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    /// D1: an internal note on an incident linked to a TG case.
    async fn note_changed(
        &self,
        c: &Change,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        if !matches!(c.message.as_str(), "Create" | "Poll") {
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
        if !seen.version.is_empty() {
            return Ok(None);
        }
        let subject = text(&c.attrs, "subject");
        let prefix = &self.settings.partner_note_prefix;
        let partner_visible = !prefix.is_empty() && subject.starts_with(prefix.as_str());
        let ev = pb::DynCaseNoteAdded {
            meta: meta(c, "note", None, &tg_case),
            incident_id: incident.to_owned(),
            tg_case_id: tg_case.clone(),
            annotation_id: c.id.clone(),
            subject: subject
                .trim_start_matches(prefix.as_str())
                .trim()
                .to_owned(),
            text: text(&c.attrs, "notetext").to_owned(),
            author: None,
            partner_visible,
        };
        self.publish("D1", ev.into()).await?;
        Ok(None)
    }

    /// D2: exceptions raised or updated in Dynamics.
    async fn exception_changed(
        &self,
        c: &Change,
        seen: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        let a = &c.attrs;
        let kind = match int(a, "tgb_kind").and_then(ExceptionKind::from_code) {
            Some(ExceptionKind::OrderDiscrepancy) => pb::ExceptionKind::OrderDiscrepancy,
            Some(ExceptionKind::PricingMismatch) => pb::ExceptionKind::PricingMismatch,
            Some(ExceptionKind::MissingShipmentConfirmation) => {
                pb::ExceptionKind::MissingShipmentConfirmation
            }
            Some(ExceptionKind::InvoiceException) => pb::ExceptionKind::InvoiceException,
            None => pb::ExceptionKind::Unspecified,
        };
        let status = match int(a, "tgb_exceptionstatus").and_then(ExceptionStatus::from_code) {
            Some(ExceptionStatus::CorrectiveActionAgreed) => "corrective_action",
            Some(ExceptionStatus::Closed) => "resolved",
            _ => "open",
        };
        let account = text(a, "_tgb_account_value").to_owned();
        let partner = if account.is_empty() {
            None
        } else {
            self.partner_of(&account).await?
        };
        let mut departments: Vec<String> = Vec::new();
        let dept = |v: i64| match Department::from_code(v) {
            Some(Department::Sales) => "sales",
            Some(Department::Logistics) => "logistics",
            Some(Department::Finance) => "finance",
            Some(Department::CustomerService) => "service",
            Some(Department::Procurement) | None => "procurement",
        };
        if let Some(d) = int(a, "tgb_department") {
            departments.push(dept(d).into());
        }
        for d in text(a, "tgb_involveddepartments")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let d = d.to_ascii_lowercase();
            if !departments.contains(&d) {
                departments.push(d);
            }
        }
        let tg_case = self
            .links
            .find(&Record::new("dataverse", "exception", &c.id), "tg", "case")
            .await
            .map_err(HandlerError::transient)?
            .unwrap_or_else(|| text(a, "tgb_tgcaseid").to_owned());
        let x = pb::DynException {
            exception_id: c.id.clone(),
            kind: kind as i32,
            account_id: account,
            title: text(a, "tgb_name").to_owned(),
            description: text(a, "tgb_description").to_owned(),
            order_ref: String::new(),
            invoice_ref: String::new(),
            priority: pb::CasePriority::Normal as i32,
            departments,
            tg_case_id: tg_case,
            status: status.into(),
        };
        let view = hash(&json!([
            x.title,
            x.description,
            x.status,
            x.kind,
            x.departments
        ]));
        if seen.get("view") == Some(&view) {
            return Ok(None);
        }
        let corr = c.id.clone();
        let ev: pb::Event = if seen.is_empty() && x.tg_case_id.is_empty() {
            pb::DynExceptionRaised {
                meta: meta(c, "exception", partner, &corr),
                exception: Some(x),
            }
            .into()
        } else {
            pb::DynExceptionUpdated {
                meta: meta(c, "exception", partner, &corr),
                exception: Some(x),
            }
            .into()
        };
        self.publish("D2", ev).await?;
        Ok(Some([("view".to_owned(), view)].into()))
    }

    /// D3 (verification flags) and D8 (master data) changed on an account.
    async fn account_changed(
        &self,
        c: &Change,
        seen: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        let Some(partner) = (match text(&c.attrs, "tgb_partnerkey") {
            "" => self.partner_of(&c.id).await?,
            k => Some(crate::adapter::partner_ref(k)),
        }) else {
            return Ok(None);
        };
        let a = &c.attrs;
        let mut out = std::collections::BTreeMap::new();
        let flags: Vec<(&str, &str)> = vec![
            ("tax_form", "tgb_taxformverified"),
            ("banking_details", "tgb_bankingverified"),
            ("compliance_certificate", "tgb_compliancecertverified"),
            ("trading_agreement", "tgb_agreementverified"),
        ];
        let verifications: std::collections::BTreeMap<String, bool> = flags
            .iter()
            .filter_map(|(k, col)| {
                a.get(*col)
                    .and_then(Value::as_bool)
                    .map(|v| ((*k).to_owned(), v))
            })
            .collect();
        let vh = hash(&json!(
            flags
                .iter()
                .map(|(_, col)| a.get(*col).cloned().unwrap_or(Value::Null))
                .collect::<Vec<_>>()
        ));
        if seen.get("verifications").is_some_and(|h| h != &vh)
            || (seen.is_empty() && verifications.values().any(|v| *v))
        {
            let ev = pb::DynAccountVerified {
                meta: meta(c, "verified", Some(partner.clone()), &partner.key()),
                account_id: c.id.clone(),
                verifications,
                approved_by: None,
            };
            self.publish("D3", ev.into()).await?;
        }
        out.insert("verifications".to_owned(), vh);
        // D8: compare with what both sides last agreed on.
        let entity = format!("tg:partner:{}", partner.key());
        let (known, _) = self
            .states
            .get(TO_DATAVERSE, &entity)
            .await
            .map_err(HandlerError::transient)?;
        let view = dv_account_view(&Value::Object(a.clone()));
        let changed: Vec<String> = view
            .iter()
            .filter(|(k, v)| known.fields.get(**k).is_some_and(|h| *h != hash(v)))
            .map(|(k, _)| (*k).to_owned())
            .collect();
        if !changed.is_empty() {
            let mut changed_fields = changed.clone();
            for f in &mut changed_fields {
                if f == "address" {
                    *f = "addresses".into();
                }
            }
            let ev = pb::DynAccountUpdated {
                meta: meta(c, "updated", Some(partner.clone()), &partner.key()),
                account_id: c.id.clone(),
                legal_name: text(a, "name").to_owned(),
                addresses: vec![pb::Address {
                    kind: "main".into(),
                    line1: text(a, "address1_line1").into(),
                    city: text(a, "address1_city").into(),
                    postal_code: text(a, "address1_postalcode").into(),
                    country: text(a, "address1_country").into(),
                    ..Default::default()
                }],
                contacts: Vec::new(),
                changed_fields,
            };
            self.publish("D8", ev.into()).await?;
            let hashes: Vec<(String, String)> = view
                .iter()
                .map(|(k, v)| ((*k).to_owned(), hash(v)))
                .collect();
            self.states
                .update(TO_DATAVERSE, &entity, |st| {
                    st.fields.extend(hashes.clone());
                    true
                })
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(Some(out))
    }

    /// D5: sales order milestones.
    async fn order_changed(
        &self,
        c: &Change,
        seen: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        let a = &c.attrs;
        let milestone = match int(a, "tgb_milestone").and_then(OrderMilestone::from_code) {
            Some(OrderMilestone::Confirmed) => pb::OrderMilestone::Confirmed,
            Some(OrderMilestone::ShipmentReleased) => pb::OrderMilestone::ShipmentReleased,
            Some(OrderMilestone::Backordered) => pb::OrderMilestone::Backordered,
            Some(OrderMilestone::Delivered) => pb::OrderMilestone::Delivered,
            None => match int(a, "statecode").and_then(SalesOrderState::from_code) {
                Some(SalesOrderState::Submitted) => pb::OrderMilestone::Confirmed,
                Some(SalesOrderState::Fulfilled) => pb::OrderMilestone::Delivered,
                _ => return Ok(None),
            },
        };
        let h = hash(&json!(milestone as i32));
        if seen.get("milestone") == Some(&h) {
            return Ok(None);
        }
        let Some(account) = a.get("_customerid_value").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Some(partner) = self.partner_of(account).await? else {
            return Ok(None);
        };
        let order_ref = match text(a, "tgb_tgorderid") {
            "" => text(a, "ordernumber").to_owned(),
            r => r.to_owned(),
        };
        let at = a
            .get("tgb_milestoneon")
            .and_then(Value::as_str)
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| prost_types::Timestamp {
                seconds: t.unix_timestamp(),
                nanos: 0,
            });
        let ev = pb::DynOrderMilestone {
            meta: meta(c, "milestone", Some(partner.clone()), &order_ref),
            salesorder_id: c.id.clone(),
            order_ref,
            milestone: milestone as i32,
            milestone_at: at,
            detail: text(a, "description").to_owned(),
        };
        self.publish("D5", ev.into()).await?;
        Ok(Some([("milestone".to_owned(), h)].into()))
    }

    /// D6: invoice payment/dispute status, adjustment and resolution note.
    async fn invoice_changed(
        &self,
        c: &Change,
        seen: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        let a = &c.attrs;
        let dispute = text(a, "tgb_disputeid");
        if dispute.is_empty() {
            return Ok(None);
        }
        let view = json!([
            a.get("statecode"),
            a.get("tgb_disputestatus"),
            a.get("tgb_resolutionnote"),
            a.get("tgb_adjustment")
        ]);
        let h = hash(&view);
        if seen.get("view") == Some(&h) {
            return Ok(None);
        }
        let partner = match a.get("_customerid_value").and_then(Value::as_str) {
            Some(acc) => self.partner_of(acc).await?,
            None => None,
        };
        let money = |v: Option<&Value>| {
            v.and_then(Value::as_f64).map(|x| pb::Money {
                value: format!("{x:.2}"),
                currency: String::new(),
            })
        };
        let total = a.get("totalamount").and_then(Value::as_f64).unwrap_or(0.0);
        let paid = int(a, "statecode") == Some(InvoiceState::Paid.code());
        let ev = pb::DynInvoiceStatusChanged {
            meta: meta(c, "invoice", partner, dispute),
            invoice_id: c.id.clone(),
            invoice_ref: text(a, "invoicenumber").to_owned(),
            dispute_id: dispute.to_owned(),
            dispute_status: match int(a, "tgb_disputestatus").and_then(DisputeStatus::from_code) {
                Some(DisputeStatus::UnderReview) => pb::DisputeStatus::UnderReview,
                Some(DisputeStatus::Resolved) => pb::DisputeStatus::Resolved,
                _ => pb::DisputeStatus::Open,
            } as i32,
            paid_amount: money(Some(&json!(if paid { total } else { 0.0 }))),
            open_amount: money(Some(&json!(if paid { 0.0 } else { total }))),
            adjustment: money(a.get("tgb_adjustment")),
            resolution_note: text(a, "tgb_resolutionnote").to_owned(),
        };
        self.publish("D6", ev.into()).await?;
        Ok(Some([("view".to_owned(), h)].into()))
    }

    /// D7: a KPI row changed → the snapshot of its partner and period.
    async fn kpi_changed(
        &self,
        c: &Change,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, HandlerError> {
        let a = &c.attrs;
        // The id goes into a filter unquoted (a GUID literal): only a GUID is taken.
        let Some(account) = a
            .get("_tgb_partner_value")
            .and_then(Value::as_str)
            .and_then(crate::ids::guid)
        else {
            return Ok(None);
        };
        let account = account.as_str();
        let period = text(a, "tgb_period").to_owned();
        let rows = self
            .dv
            .get_all(
                &format!(
                    "{}?$select=tgb_kpikey,tgb_value,tgb_unit,tgb_target,tgb_periodclosed,versionnumber&$filter=_tgb_partner_value eq {account} and tgb_period eq {}",
                    schema::set("tgb_partnerkpi"),
                    tgb_clients::dataverse::quote(&period)
                ),
                500,
            )
            .await
            .map_err(handler_error)?;
        let closed = rows
            .iter()
            .any(|r| r["tgb_periodclosed"].as_bool() == Some(true));
        let s = &self.settings;
        if !(s.kpi_publish_on_change || (closed && s.kpi_publish_at_period_close)) {
            return Ok(None);
        }
        let Some(partner) = self.partner_of(account).await? else {
            return Ok(None);
        };
        let mut kpis: Vec<pb::Kpi> = rows
            .iter()
            .map(|r| pb::Kpi {
                key: r["tgb_kpikey"].as_str().unwrap_or_default().to_owned(),
                value: r["tgb_value"].as_f64().unwrap_or(0.0),
                unit: r["tgb_unit"].as_str().unwrap_or_default().to_owned(),
                target: r["tgb_target"].as_f64(),
            })
            .collect();
        kpis.sort_by(|x, y| x.key.cmp(&y.key));
        let max_version = rows
            .iter()
            .filter_map(|r| r["versionnumber"].as_u64())
            .max();
        let snapshot = Change {
            version: max_version.or(c.version),
            ..c.clone()
        };
        let ev = pb::DynKpiSnapshot {
            meta: meta(
                &snapshot,
                &format!("kpi:{period}"),
                Some(partner.clone()),
                &partner.key(),
            ),
            period,
            kpis,
            period_closed: closed,
        };
        self.publish("D7", ev.into()).await?;
        Ok(None)
    }
}

/// Consumes a webhook body: parses, filters, publishes.
pub async fn webhook_body(adapter: &Adapter, body: &[u8]) -> Result<(), WebhookFailure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookFailure::Invalid(format!("body is not JSON: {e}")))?;
    let change = from_context(&value).map_err(|e| WebhookFailure::Invalid(e.to_string()))?;
    if schema::table(&change.table).is_none() {
        return Err(WebhookFailure::Invalid(format!(
            "table {:?} is not one tg-bridge follows",
            change.table
        )));
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
        .get(&format!("{}({})", schema::set(&change.table), change.id))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn close(primary_id: Value) -> Value {
        json!({
            "MessageName": "Close",
            "PrimaryEntityName": "incident",
            "PrimaryEntityId": primary_id,
            "InputParameters": [{"key": "IncidentResolution", "value": {
                "LogicalName": "incidentresolution",
                "Attributes": [
                    {"key": "subject", "value": "fixed"},
                    {"key": "incidentid", "value": {
                        "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
                        "Id": "6F9619FF-8B86-D011-B42D-00CF4FC964FF", "LogicalName": "incident"}}
                ]}}],
        })
    }

    #[test]
    fn a_close_without_a_primary_id_names_the_case_of_its_resolution() {
        for blank in [
            json!("00000000-0000-0000-0000-000000000000"),
            json!(""),
            Value::Null,
        ] {
            let c = from_context(&close(blank)).unwrap();
            assert_eq!(c.id, "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
            assert_eq!(c.table, "incident");
        }
        let mut no_case = close(json!(""));
        no_case["InputParameters"] = json!([]);
        assert!(matches!(
            from_context(&no_case),
            Err(ContextError::Shape(_))
        ));
    }
}
