//! The incident aggregate (D1): a TG case → the incident columns tg-bridge keeps in step and
//! the conditional writes that put them there; an incident's state → the TG case status.
//!
//! [`plan`] decides, from the case's `tgb_sync` state and its link, whether an event is stale,
//! our own change coming back (echo), nothing to write (both sides closed), or a write; a
//! [`CaseWrite`] then gives the change set for the precondition in force, takes the row read
//! back after a refused precondition ([`CaseWrite::reread`]) and says what to record from the
//! write's answer ([`CaseWrite::recorded`]). [`detect`] decides what an incident change seen
//! in Dynamics means for TG (echo of our write, stale, unchanged, or a status change to
//! publish). Pure: no I/O, no clock.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Map, Value, json};
use tgb_clients::dataverse::BatchRequest;
use tgb_proto as pb;

use crate::change::{Change, int, meta, text};
use crate::ids::incident_id;
use crate::odata::{self, create_only, if_match, must_exist, upsert};
use crate::schema::{
    CaseOrigin, CaseType, IncidentPriority, IncidentState, IncidentStatus, TgbOrigin, bind,
    reference, truncate,
};
use crate::settings::DynamicsSettings;
use crate::state::{EntityState, hash};

/// `tgb_sync` field: the incident's ETag after tg-bridge's last write of it.
pub const ETAG: &str = "dv_etag";

/// `tgb_sync` field (per TG case): the incident's versionnumber as tg-bridge's last write of it
/// answered, when that answer showed no status change by someone else.
pub const WRITTEN_VERSION: &str = "dv_version";

/// The `tgb_sync` field of the status both sides last agreed on.
pub const STATUS: &str = "status";

fn case_status_key(s: pb::CaseStatus) -> &'static str {
    match s {
        pb::CaseStatus::Open | pb::CaseStatus::Unspecified => "open",
        pb::CaseStatus::InProgress => "in_progress",
        pb::CaseStatus::WaitingOnPartner => "waiting_on_partner",
        pb::CaseStatus::Resolved => "resolved",
        pb::CaseStatus::Closed => "closed",
    }
}

/// TG status as the adapter compares it with Dynamics: open and in progress are one class
/// (Dynamics has no "new" state).
pub fn status_class(s: &str) -> &str {
    match s {
        "open" | "in_progress" => "active",
        other => other,
    }
}

fn priority_key(p: pb::CasePriority) -> &'static str {
    match p {
        pb::CasePriority::Urgent => "urgent",
        pb::CasePriority::High => "high",
        pb::CasePriority::Low => "low",
        _ => "normal",
    }
}

fn category_key(c: pb::CaseCategory) -> &'static str {
    match c {
        pb::CaseCategory::ShipmentDiscrepancy => "shipment_discrepancy",
        pb::CaseCategory::InvoiceMismatch => "invoice_mismatch",
        pb::CaseCategory::ComplianceException => "compliance_exception",
        pb::CaseCategory::Pricing => "pricing",
        pb::CaseCategory::Order => "order",
        _ => "other",
    }
}

/// D1's mapping of a TG case to the incident columns tg-bridge keeps in step (title,
/// description, priority and case type by the configured maps) and the status class, each
/// compared field by field with what both sides last agreed on.
pub fn incident_view(case: &pb::TgCase, s: &DynamicsSettings) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("title", json!(truncate(&case.title, 200))),
        ("description", json!(truncate(&case.description, 2000))),
        (
            "prioritycode",
            json!(
                s.priority_map
                    .get(priority_key(case.priority()))
                    .copied()
                    .unwrap_or(IncidentPriority::Normal.code())
            ),
        ),
        (
            "casetypecode",
            json!(
                s.case_type_map
                    .get(category_key(case.category()))
                    .copied()
                    .unwrap_or(CaseType::Question.code())
            ),
        ),
        (STATUS, json!(status_class(case_status_key(case.status())))),
    ])
}

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

/// The status key of a TG status as the detection path records it.
pub fn status_key(s: pb::CaseStatus) -> &'static str {
    match s {
        pb::CaseStatus::Resolved => "resolved",
        pb::CaseStatus::Closed => "closed",
        pb::CaseStatus::WaitingOnPartner => "waiting_on_partner",
        _ => "active",
    }
}

/// The hash recorded under [`STATUS`] for a status key.
pub fn status_hash(key: &str) -> String {
    hash(&json!(status_class(key)))
}

/// Whether the row read back holds a newer TG revision than `case`'s.
pub fn newer_revision(row: &Value, case: &pb::TgCase) -> bool {
    row["tgb_tgrevision"]
        .as_i64()
        .is_some_and(|r| r > case.revision)
}

/// The condition an incident write is sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No incident is known: create only.
    Absent,
    /// The incident as tg-bridge last wrote or read it.
    Matches(String),
    /// Unknown: read the row first.
    Unknown,
    /// The row answered no ETag: write unconditionally.
    Any,
}

/// What D1 does with a TG case.
#[derive(Debug)]
pub enum Plan {
    /// The revision is not newer than the one applied.
    Stale,
    /// Everything TG says is what both sides agreed on: our own change coming back.
    Echo,
    /// The incident is resolved (read-only) and TG's case is closed too: record the view.
    ClosedUnchanged(BTreeMap<&'static str, Value>),
    /// Write the incident.
    Write(CaseWrite),
}

/// The write of one TG case, adjusted by each attempt's precondition.
#[derive(Debug)]
pub struct CaseWrite {
    /// The mapped columns and status class.
    pub view: BTreeMap<&'static str, Value>,
    /// Fields of `view` that differ from what both sides last agreed on.
    pub changed: Vec<&'static str>,
    /// The linked incident, if any.
    pub linked: Option<String>,
    /// `incidents(<id>)`: the linked row, else the id tg-bridge gives a new one.
    pub key: String,
    /// The condition of the next attempt.
    pub precondition: Precondition,
    /// Write every column of the view (after a re-read), not only the changed ones.
    pub whole_view: bool,
    /// TG's case is resolved or closed.
    pub tg_closed: bool,
    /// The status changed to resolved/closed: `CloseIncident` after the write.
    pub close: bool,
    /// TG's case is active again while the incident is resolved: the state change goes first.
    pub reopen: bool,
    /// The active status TG's status maps to.
    pub active: IncidentStatus,
    /// The state as it was read.
    agreed_status: Option<String>,
}

/// What to record from a write's answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The incident's id.
    pub incident: String,
    /// The ETag of our write, unless a resolution moved the row past it.
    pub etag: Option<String>,
    /// The version of our write, unless it hides someone else's status change.
    pub written_version: Option<String>,
}

/// D1: decides what a TG case means for its incident, from the case's state in `tgb_sync` and
/// its linked incident.
pub fn plan(
    state: &EntityState,
    case: &pb::TgCase,
    linked: Option<&str>,
    settings: &DynamicsSettings,
) -> Plan {
    if state.is_stale(&case.revision.to_string()) {
        return Plan::Stale;
    }
    let status = case_status_key(case.status());
    let view = incident_view(case, settings);
    let changed: Vec<&'static str> = view
        .iter()
        .filter(|(k, v)| state.fields.get(**k) != Some(&hash(v)))
        .map(|(k, _)| *k)
        .collect();
    if changed.is_empty() && linked.is_some() {
        return Plan::Echo;
    }
    // Never the alternate key in the address: a TG id may hold characters Dataverse refuses in
    // a key value in a URL, so `tgb_tgcaseid` travels in the body.
    let key = odata::path(
        "incident",
        &linked
            .map(str::to_owned)
            .unwrap_or_else(|| incident_id(&case.case_id).to_string()),
    );
    let agreed_closed = ["resolved", "closed"]
        .iter()
        .any(|k| state.fields.get(STATUS) == Some(&hash(&json!(k))));
    let tg_closed = matches!(status, "resolved" | "closed");
    if linked.is_some() && agreed_closed && tg_closed {
        return Plan::ClosedUnchanged(view);
    }
    let close = changed.contains(&STATUS) && tg_closed;
    let reopen = linked.is_some() && agreed_closed && !tg_closed;
    let active = if status == "waiting_on_partner" {
        IncidentStatus::WaitingForDetails
    } else {
        IncidentStatus::InProgress
    };
    // Every write is conditional, so that two replicas (or a redelivery racing a newer
    // revision) never let an older revision overwrite a newer one: a new incident with
    // `If-None-Match: *`, a known one with the ETag of our last write.
    let precondition = match (linked, state.fields.get(ETAG)) {
        (None, _) => Precondition::Absent,
        (Some(_), Some(etag)) => Precondition::Matches(etag.clone()),
        (Some(_), None) => Precondition::Unknown,
    };
    Plan::Write(CaseWrite {
        view,
        changed,
        linked: linked.map(str::to_owned),
        key,
        precondition,
        whole_view: false,
        tg_closed,
        close,
        reopen,
        active,
        agreed_status: state.fields.get(STATUS).cloned(),
    })
}

/// What the row read back means for the write.
#[derive(Debug, PartialEq, Eq)]
pub enum Reread {
    /// No incident holds the case: create one at tg-bridge's id.
    Absent,
    /// The row holds a newer revision: the event is stale.
    Stale,
    /// The row is resolved and TG's case is closed: nothing to write.
    ClosedUnchanged,
    /// Write under the row's current ETag.
    Ready,
}

impl CaseWrite {
    /// Takes the row found by the case key (columns [`odata::INCIDENT_REREAD`]).
    pub fn reread(&mut self, row: Option<&Value>, case: &pb::TgCase) -> Reread {
        let Some(row) = row else {
            self.precondition = Precondition::Absent;
            self.key = odata::path("incident", &incident_id(&case.case_id).to_string());
            return Reread::Absent;
        };
        if let Some(id) = row["incidentid"].as_str() {
            self.key = odata::path("incident", id);
        }
        if newer_revision(row, case) {
            return Reread::Stale;
        }
        let resolved = row["statecode"]
            .as_i64()
            .is_some_and(|s| s != IncidentState::Active.code());
        if self.tg_closed && resolved {
            return Reread::ClosedUnchanged;
        }
        self.reopen = self.reopen && resolved;
        self.precondition = match row["@odata.etag"].as_str() {
            Some(etag) => Precondition::Matches(etag.to_owned()),
            None => Precondition::Any,
        };
        self.whole_view = true;
        Reread::Ready
    }

    fn condition(&self, request: BatchRequest) -> BatchRequest {
        match &self.precondition {
            Precondition::Absent => create_only(request),
            Precondition::Matches(etag) => if_match(request, etag),
            Precondition::Any | Precondition::Unknown => request,
        }
    }

    /// The change set of this attempt, and the index of the incident write whose answer is
    /// recorded. A reopen sends the state change alone first (a resolved case is read-only),
    /// the columns after it; a close sends `CloseIncident` after the columns.
    pub fn writes(&self, case: &pb::TgCase, account: &str) -> (Vec<BatchRequest>, usize) {
        let linked = self.linked.is_some();
        let mut body = Map::new();
        for (field, value) in &self.view {
            if *field != STATUS && (self.whole_view || self.changed.contains(field)) {
                body.insert((*field).to_owned(), value.clone());
            }
        }
        if !linked {
            body.insert("caseorigincode".into(), CaseOrigin::Web.into());
            body.insert("tgb_origin".into(), TgbOrigin::TradingGridCase.into());
        }
        if !linked || self.precondition == Precondition::Absent {
            body.insert("tgb_tgcaseid".into(), json!(case.case_id));
        }
        body.insert("tgb_tgrevision".into(), json!(case.revision));
        body.insert(
            bind("incident", "customerid", "account"),
            json!(reference("account", account)),
        );
        if self.changed.contains(&STATUS) && !self.close && linked && !self.reopen {
            body.insert("statecode".into(), IncidentState::Active.into());
            body.insert("statuscode".into(), self.active.into());
        }
        let mut set = Vec::new();
        if self.reopen {
            set.push(self.condition(BatchRequest::new(
                Method::PATCH,
                self.key.clone(),
                Some(json!({
                    "statecode": IncidentState::Active.code(),
                    "statuscode": self.active.code(),
                })),
            )));
        }
        let write = upsert(&self.key, odata::INCIDENT_WRITTEN, Value::Object(body));
        set.push(if self.reopen {
            must_exist(write)
        } else {
            self.condition(write)
        });
        let written_at = set.len() - 1;
        if self.close {
            set.push(BatchRequest::new(
                Method::POST,
                "CloseIncident",
                Some(json!({
                    "IncidentResolution": {
                        "@odata.type": "Microsoft.Dynamics.CRM.incidentresolution",
                        "subject": format!("Resolved in Trading Grid (revision {})", case.revision),
                        "incidentid@odata.bind": format!("/{}", self.key),
                    },
                    "Status": IncidentStatus::ProblemSolved.code()
                })),
            ));
        }
        (set, written_at)
    }

    /// What to record from the answer of the incident write; `None` when it names no incident.
    ///
    /// A status we did not write that differs from the agreed one is someone else's change our
    /// write now hides: the written version stays unset so the detection path still reports it.
    /// A resolution moves the row's version past the answer's: the next write re-reads it.
    pub fn recorded(&self, answer: &Value) -> Option<Recorded> {
        let incident = answer["incidentid"].as_str()?.to_owned();
        let answered_status = match (answer["statecode"].as_i64(), answer["statuscode"].as_i64()) {
            (Some(sc), Some(st)) => Some(status_key(tg_status(sc, st))),
            _ => None,
        };
        let hides_a_change = !self.changed.contains(&STATUS)
            && self.linked.is_some()
            && answered_status.is_some_and(|k| {
                self.agreed_status
                    .as_ref()
                    .is_some_and(|agreed| *agreed != hash(&json!(k)))
            });
        let version = answer["versionnumber"].as_u64();
        Some(Recorded {
            incident,
            etag: version
                .filter(|_| !self.close)
                .map(|v| format!("W/\"{v}\"")),
            written_version: version.filter(|_| !hides_a_change).map(|v| v.to_string()),
        })
    }
}

/// The version of an incident row read back: `versionnumber`, else its ETag (`W/"<n>"`).
pub fn row_version(row: &Value) -> Option<u64> {
    row["versionnumber"].as_u64().or_else(|| {
        row["@odata.etag"]
            .as_str()?
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse()
            .ok()
    })
}

/// Records a TG revision whose incident is resolved while TG's case is closed too (nothing
/// written): `revision` and the view are what both sides agree on, and every change of the
/// row up to `row_version` (the row as read, when read) is overtaken by that agreement.
///
/// Without the written version, an image of an earlier write of ours detected after this
/// record (a webhook Dataverse delivers again after an outage, a poll page read before it)
/// passed as a person's status change behind a later write of ours: its revision is the
/// recorded one and its status (active) is not the agreed one (resolved), and tg-bridge sent
/// TG its own earlier status. That happens when a close landed in Dataverse but its record
/// did not (NATS down), and the redelivered event finds the incident already resolved.
/// Returns false when `revision` is stale (nothing to record).
pub fn record_closed(
    st: &mut EntityState,
    revision: &str,
    view: &BTreeMap<&str, Value>,
    row_version: Option<u64>,
) -> bool {
    if st.is_stale(revision) {
        return false;
    }
    st.version = revision.to_owned();
    for (k, v) in view {
        st.fields.insert((*k).to_owned(), hash(v));
    }
    let written = st
        .fields
        .get(WRITTEN_VERSION)
        .and_then(|w| w.parse::<u64>().ok());
    if let Some(v) = row_version
        && written.is_none_or(|w| v > w)
    {
        st.fields.insert(WRITTEN_VERSION.to_owned(), v.to_string());
    }
    true
}

/// The incident's `(statecode, statuscode)`, when the change carries both.
pub fn state_of(c: &Change) -> Option<(i64, i64)> {
    Some((int(&c.attrs, "statecode")?, int(&c.attrs, "statuscode")?))
}

/// What an incident change seen in Dynamics means for its TG case.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// tg-bridge's own write coming back.
    Echo,
    /// Not newer than tg-bridge's own last write of the row: a change already overtaken.
    Stale,
    /// The status is the one both sides agreed on (a person's change of other columns).
    Unchanged,
    /// A status change: record `key` as agreed, and publish it unless `publish` is false (a
    /// resolution's `Update`: its `Close` carries the resolution).
    Changed {
        /// The status key.
        key: &'static str,
        /// Our own user modified the row last: a person's change a later write of ours hid.
        hidden: bool,
        /// Whether an event is published.
        publish: bool,
    },
}

/// D1 detection: an incident change (its `state` as [`state_of`] read it), `own` when
/// tg-bridge's application user modified the row last, against the case's TG → Dataverse
/// state `known` (the status agreed, our written version, the revision applied).
pub fn detect(c: &Change, (state, status): (i64, i64), own: bool, known: &EntityState) -> Detected {
    let key = status_key(tg_status(state, status));
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
        return if own { Detected::Echo } else { Detected::Stale };
    }
    // Our own write whose outcome was never recorded (the adapter stopped between the write
    // and the record; the redelivered TG event records it), or one of another revision than
    // the recorded one (another replica recorded the newer one first; a person's change
    // behind it would show in the answer of the newer write): it carries TG's content.
    if own {
        let recorded = known.version.parse::<i64>().ok();
        let written = int(&c.attrs, "tgb_tgrevision");
        if recorded.is_none() || matches!((written, recorded), (Some(w), Some(r)) if w != r) {
            return Detected::Echo;
        }
    }
    if known.fields.get(STATUS) == Some(&status_hash(key)) {
        return if own {
            Detected::Echo
        } else {
            Detected::Unchanged
        };
    }
    Detected::Changed {
        key,
        hidden: own,
        publish: !(state == IncidentState::Resolved.code() && c.message == "Update"),
    }
}

/// D1: `dyn.case.resolved` of a `Close` (the resolution's subject and description).
pub fn resolved(c: &Change, partner: Option<pb::PartnerRef>, tg_case: &str) -> pb::DynCaseResolved {
    let r = c.resolution.clone().unwrap_or_default();
    pb::DynCaseResolved {
        meta: meta(c, "resolved", partner, tg_case),
        incident_id: c.id.clone(),
        tg_case_id: tg_case.to_owned(),
        resolution_subject: text(&r, "subject").to_owned(),
        resolution_description: text(&r, "description").to_owned(),
        statuscode: IncidentStatus::ProblemSolved.code() as i32,
    }
}

/// D1: the event of a status change: `dyn.case.resolved` for a resolved state, else
/// `dyn.case.status_changed`.
pub fn status_changed(
    c: &Change,
    (state, status): (i64, i64),
    partner: Option<pb::PartnerRef>,
    tg_case: &str,
) -> pb::Event {
    if state == IncidentState::Resolved.code() {
        // The id of the `Close` of the same resolution (the row's version): one is stored.
        pb::DynCaseResolved {
            statuscode: status as i32,
            ..resolved(c, partner, tg_case)
        }
        .into()
    } else {
        pb::DynCaseStatusChanged {
            meta: meta(c, "status", partner, tg_case),
            incident_id: c.id.clone(),
            tg_case_id: tg_case.to_owned(),
            statecode: state as i32,
            statuscode: status as i32,
            tg_status: tg_status(state, status) as i32,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(revision: i64, status: pb::CaseStatus) -> pb::TgCase {
        pb::TgCase {
            case_id: "AC:ME/1".into(),
            revision,
            title: "Short shipment".into(),
            description: "40 of 48 cartons".into(),
            status: status as i32,
            priority: pb::CasePriority::High as i32,
            category: pb::CaseCategory::ShipmentDiscrepancy as i32,
            ..Default::default()
        }
    }

    /// The state after tg-bridge wrote `c` (every field agreed, its revision applied).
    fn agreed(c: &pb::TgCase, etag: Option<&str>) -> EntityState {
        let mut st = EntityState {
            version: c.revision.to_string(),
            ..Default::default()
        };
        for (k, v) in incident_view(c, &DynamicsSettings::default()) {
            st.fields.insert(k.to_owned(), hash(&v));
        }
        if let Some(e) = etag {
            st.fields.insert(ETAG.into(), e.into());
        }
        st
    }

    fn header<'a>(r: &'a BatchRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn write(p: Plan) -> CaseWrite {
        match p {
            Plan::Write(w) => w,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    const LINKED: &str = "6f9619ff-8b86-d011-b42d-00c04fc964ff";

    #[test]
    fn a_new_case_creates_its_incident_at_the_derived_id_create_only() {
        let c = case(1, pb::CaseStatus::Open);
        let w = write(plan(
            &EntityState::default(),
            &c,
            None,
            &DynamicsSettings::default(),
        ));
        assert_eq!(w.precondition, Precondition::Absent);
        let (set, at) = w.writes(&c, "acc-1");
        assert_eq!((set.len(), at), (1, 0));
        let r = &set[0];
        assert_eq!(r.method, Method::PATCH);
        assert!(
            r.path
                .starts_with(&format!("incidents({})?", incident_id("AC:ME/1")))
        );
        assert_eq!(header(r, "If-None-Match"), Some("*"));
        let body = r.body.as_ref().unwrap();
        assert_eq!(body["tgb_tgcaseid"], "AC:ME/1");
        assert_eq!(body["caseorigincode"], CaseOrigin::Web.code());
        assert_eq!(body["tgb_origin"], TgbOrigin::TradingGridCase.code());
        assert_eq!(body["prioritycode"], IncidentPriority::High.code());
        assert_eq!(body["casetypecode"], CaseType::Problem.code());
        assert_eq!(body["customerid_account@odata.bind"], "/accounts(acc-1)");
        assert!(body.get("statecode").is_none(), "a new incident is active");
    }

    #[test]
    fn an_old_revision_is_stale_and_an_unchanged_linked_case_is_an_echo() {
        let c = case(3, pb::CaseStatus::Open);
        let st = agreed(&c, Some("W/\"7\""));
        let settings = DynamicsSettings::default();
        assert!(matches!(
            plan(&st, &case(2, pb::CaseStatus::Open), Some(LINKED), &settings),
            Plan::Stale
        ));
        assert!(matches!(
            plan(&st, &c, Some(LINKED), &settings),
            Plan::Stale
        ));
        assert!(matches!(
            plan(&st, &case(4, pb::CaseStatus::Open), Some(LINKED), &settings),
            Plan::Echo
        ));
        // Not linked yet: the same view is still written (the incident may not exist).
        assert!(matches!(
            plan(&st, &case(4, pb::CaseStatus::Open), None, &settings),
            Plan::Write(_)
        ));
    }

    #[test]
    fn an_update_writes_only_the_changed_columns_under_our_etag() {
        let c = case(1, pb::CaseStatus::Open);
        let st = agreed(&c, Some("W/\"7\""));
        let mut next = case(2, pb::CaseStatus::Open);
        next.title = "Short shipment, pallet 2".into();
        let w = write(plan(&st, &next, Some(LINKED), &DynamicsSettings::default()));
        assert_eq!(w.changed, vec!["title"]);
        let (set, _) = w.writes(&next, "acc-1");
        assert_eq!(set.len(), 1);
        assert_eq!(
            set[0].path.split('?').next(),
            Some(&*format!("incidents({LINKED})"))
        );
        assert_eq!(header(&set[0], "If-Match"), Some("W/\"7\""));
        let body = set[0].body.as_ref().unwrap().as_object().unwrap();
        assert_eq!(body["title"], "Short shipment, pallet 2");
        assert!(!body.contains_key("description"));
        assert!(!body.contains_key("tgb_tgcaseid"));
        assert_eq!(body["tgb_tgrevision"], 2);
    }

    #[test]
    fn a_resolved_case_is_written_then_closed_and_both_closed_writes_nothing() {
        let c = case(1, pb::CaseStatus::Open);
        let st = agreed(&c, Some("W/\"7\""));
        let resolved = case(2, pb::CaseStatus::Resolved);
        let w = write(plan(
            &st,
            &resolved,
            Some(LINKED),
            &DynamicsSettings::default(),
        ));
        assert!(w.close && !w.reopen);
        let (set, at) = w.writes(&resolved, "acc-1");
        assert_eq!((set.len(), at), (2, 0));
        assert_eq!(set[1].method, Method::POST);
        assert_eq!(set[1].path, "CloseIncident");
        let close = set[1].body.as_ref().unwrap();
        assert_eq!(close["Status"], IncidentStatus::ProblemSolved.code());
        assert_eq!(
            close["IncidentResolution"]["incidentid@odata.bind"],
            format!("/incidents({LINKED})")
        );
        // The close moves the version past the answer: no ETag is kept.
        let rec = w
            .recorded(
                &json!({"incidentid": LINKED, "versionnumber": 9, "statecode": 0, "statuscode": 1}),
            )
            .unwrap();
        assert_eq!(rec.etag, None);

        let st = agreed(&resolved, Some("W/\"9\""));
        assert!(matches!(
            plan(
                &st,
                &case(3, pb::CaseStatus::Closed),
                Some(LINKED),
                &DynamicsSettings::default()
            ),
            Plan::ClosedUnchanged(_)
        ));
    }

    #[test]
    fn a_reopen_sends_the_state_change_first_and_the_columns_after_it() {
        let st = agreed(&case(2, pb::CaseStatus::Resolved), Some("W/\"9\""));
        let reopened = case(3, pb::CaseStatus::WaitingOnPartner);
        let w = write(plan(
            &st,
            &reopened,
            Some(LINKED),
            &DynamicsSettings::default(),
        ));
        assert!(w.reopen && !w.close);
        let (set, at) = w.writes(&reopened, "acc-1");
        assert_eq!((set.len(), at), (2, 1));
        assert_eq!(
            set[0].body,
            Some(json!({
                "statecode": IncidentState::Active.code(),
                "statuscode": IncidentStatus::WaitingForDetails.code(),
            }))
        );
        assert_eq!(header(&set[0], "If-Match"), Some("W/\"9\""));
        assert_eq!(header(&set[1], "If-Match"), Some("*"));
        assert!(set[1].body.as_ref().unwrap().get("statecode").is_none());
    }

    #[test]
    fn a_reread_row_decides_between_stale_nothing_and_a_whole_write() {
        let c = case(1, pb::CaseStatus::Open);
        let st = agreed(&c, None);
        let next = case(5, pb::CaseStatus::InProgress);
        let mut next_titled = next.clone();
        next_titled.title = "x".into();
        let mut w = write(plan(
            &st,
            &next_titled,
            Some(LINKED),
            &DynamicsSettings::default(),
        ));
        assert_eq!(w.precondition, Precondition::Unknown);
        let newer = json!({"incidentid": LINKED, "tgb_tgrevision": 6, "statecode": 0});
        assert_eq!(w.reread(Some(&newer), &next_titled), Reread::Stale);
        let row = json!({"incidentid": LINKED, "tgb_tgrevision": 4, "statecode": 0, "@odata.etag": "W/\"12\""});
        assert_eq!(w.reread(Some(&row), &next_titled), Reread::Ready);
        assert_eq!(w.precondition, Precondition::Matches("W/\"12\"".into()));
        let (set, _) = w.writes(&next_titled, "acc-1");
        let body = set[0].body.as_ref().unwrap();
        assert!(
            body.get("description").is_some(),
            "the whole view after a re-read"
        );
        assert_eq!(w.reread(None, &next_titled), Reread::Absent);
        assert_eq!(w.precondition, Precondition::Absent);
        let (set, _) = w.writes(&next_titled, "acc-1");
        assert_eq!(header(&set[0], "If-None-Match"), Some("*"));
        assert_eq!(set[0].body.as_ref().unwrap()["tgb_tgcaseid"], "AC:ME/1");
    }

    #[test]
    fn an_answer_showing_someone_elses_status_leaves_the_written_version_unset() {
        let c = case(1, pb::CaseStatus::Open);
        let st = agreed(&c, Some("W/\"7\""));
        let mut next = case(2, pb::CaseStatus::Open);
        next.title = "y".into();
        let w = write(plan(&st, &next, Some(LINKED), &DynamicsSettings::default()));
        let ours = w
            .recorded(
                &json!({"incidentid": LINKED, "versionnumber": 8, "statecode": 0, "statuscode": 1}),
            )
            .unwrap();
        assert_eq!(
            ours,
            Recorded {
                incident: LINKED.into(),
                etag: Some("W/\"8\"".into()),
                written_version: Some("8".into()),
            }
        );
        let hidden = w
            .recorded(
                &json!({"incidentid": LINKED, "versionnumber": 8, "statecode": 0, "statuscode": 3}),
            )
            .unwrap();
        assert_eq!(hidden.written_version, None);
        assert_eq!(w.recorded(&json!({})), None);
    }

    #[test]
    fn incident_states_map_to_tg_statuses() {
        let code = |s: IncidentState, t: IncidentStatus| tg_status(s.code(), t.code());
        assert_eq!(
            code(IncidentState::Resolved, IncidentStatus::ProblemSolved),
            pb::CaseStatus::Resolved
        );
        assert_eq!(
            code(IncidentState::Canceled, IncidentStatus::Cancelled),
            pb::CaseStatus::Closed
        );
        assert_eq!(
            code(IncidentState::Active, IncidentStatus::WaitingForDetails),
            pb::CaseStatus::WaitingOnPartner
        );
        assert_eq!(
            code(IncidentState::Active, IncidentStatus::OnHold),
            pb::CaseStatus::InProgress
        );
    }

    fn seen(version: u64, own: bool) -> Change {
        let mut c = Change {
            message: "Update".into(),
            table: "incident".into(),
            id: LINKED.into(),
            version: Some(version),
            ..Default::default()
        };
        c.attrs.insert("tgb_tgrevision".into(), json!(2));
        if own {
            c.caller = Some("app".into());
        }
        c
    }

    /// The nats-server restart scenario's echo: the close of revision 2 landed (a PATCH at
    /// version 11 with the row still active, then `CloseIncident` at 12) but its record did
    /// not; the redelivered event found the incident resolved and recorded revision 2 without
    /// a write. The PATCH's own image, detected after that, must stay our echo.
    #[test]
    fn an_image_of_our_close_detected_after_a_closed_unchanged_record_is_our_echo() {
        let mut known = agreed(&case(1, pb::CaseStatus::Open), Some("W/\"10\""));
        known.fields.insert(WRITTEN_VERSION.into(), "10".into());
        let closed = case(2, pb::CaseStatus::Resolved);
        let view = incident_view(&closed, &DynamicsSettings::default());
        let row = json!({"tgb_tgrevision": 2, "@odata.etag": "W/\"12\""});
        assert_eq!(row_version(&row), Some(12));
        assert!(record_closed(&mut known, "2", &view, row_version(&row)));
        assert_eq!(known.fields[WRITTEN_VERSION], "12");
        let active = (
            IncidentState::Active.code(),
            IncidentStatus::InProgress.code(),
        );
        // Version 11, tg-bridge's user, revision 2, status active: the PATCH of the close.
        assert_eq!(
            detect(&seen(11, true), active, true, &known),
            Detected::Echo
        );
        // A change after the resolution is still seen.
        let waiting = (
            IncidentState::Active.code(),
            IncidentStatus::WaitingForDetails.code(),
        );
        assert!(matches!(
            detect(&seen(13, false), waiting, false, &known),
            Detected::Changed { .. }
        ));
        // Not read (the plan alone decided): the written version stays; never lowered.
        let mut again = known.clone();
        assert!(record_closed(&mut again, "3", &view, None));
        assert_eq!(again.fields[WRITTEN_VERSION], "12");
        assert!(record_closed(&mut again, "4", &view, Some(5)));
        assert_eq!(again.fields[WRITTEN_VERSION], "12");
        assert!(
            !record_closed(&mut again, "4", &view, Some(20)),
            "stale revision"
        );
    }

    #[test]
    fn an_incident_change_is_our_echo_stale_unchanged_or_a_status_to_publish() {
        let mut known = agreed(&case(2, pb::CaseStatus::Open), None);
        known.fields.insert(WRITTEN_VERSION.into(), "10".into());
        let active = (
            IncidentState::Active.code(),
            IncidentStatus::InProgress.code(),
        );
        let waiting = (
            IncidentState::Active.code(),
            IncidentStatus::WaitingForDetails.code(),
        );
        let resolved = (
            IncidentState::Resolved.code(),
            IncidentStatus::ProblemSolved.code(),
        );
        // At or before our own write.
        assert_eq!(
            detect(&seen(10, true), waiting, true, &known),
            Detected::Echo
        );
        assert_eq!(
            detect(&seen(9, false), waiting, false, &known),
            Detected::Stale
        );
        // After it: the agreed status is no news; a new one is published.
        assert_eq!(
            detect(&seen(11, false), active, false, &known),
            Detected::Unchanged
        );
        assert_eq!(
            detect(&seen(11, true), active, true, &known),
            Detected::Echo
        );
        assert_eq!(
            detect(&seen(11, false), waiting, false, &known),
            Detected::Changed {
                key: "waiting_on_partner",
                hidden: false,
                publish: true
            }
        );
        // Our user, the recorded revision, another status: a person's change we hid.
        assert_eq!(
            detect(&seen(11, true), waiting, true, &known),
            Detected::Changed {
                key: "waiting_on_partner",
                hidden: true,
                publish: true
            }
        );
        // Our user writing another revision than the recorded one: ours.
        let mut other = seen(11, true);
        other.attrs.insert("tgb_tgrevision".into(), json!(3));
        assert_eq!(detect(&other, waiting, true, &known), Detected::Echo);
        // A resolution's Update is recorded, its Close publishes.
        assert_eq!(
            detect(&seen(11, false), resolved, false, &known),
            Detected::Changed {
                key: "resolved",
                hidden: false,
                publish: false
            }
        );
        let ev = status_changed(&seen(11, false), waiting, None, "C-1");
        assert!(
            matches!(ev, pb::Event::DynCaseStatusChanged(e) if e.tg_status == pb::CaseStatus::WaitingOnPartner as i32)
        );
    }
}
