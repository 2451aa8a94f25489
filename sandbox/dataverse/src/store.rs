//! Rows, versions, the change log and the write rules (validation, upsert, incident state).

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::{ODataError, codes};
use crate::query::{KeyPredicate, parse_datetime, parse_key};
use crate::schema::{ColumnType, SYSTEM_COLUMNS, Schema, Table, lookup_of_value_name};

/// The user recorded for the concurrent edits that `force_etag_races` simulates.
pub const CONCURRENT_EDITOR_ID: Uuid = Uuid::from_u128(0x7e57_0000_0000_0000_0000_0000_0000_0e71);

const LOOKUP_TABLE_ANNOTATION: &str = "@Microsoft.Dynamics.CRM.lookuplogicalname";

/// One stored row: attributes as the Web API reads them (`_x_value` for lookups).
#[derive(Debug, Clone)]
pub struct Row {
    /// Attributes.
    pub attrs: Map<String, Value>,
    /// Current versionnumber.
    pub version: u64,
}

impl Row {
    /// The weak ETag.
    pub fn etag(&self) -> String {
        etag(self.version)
    }
}

/// `W/"<version>"`.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// One entry of the change log (change tracking reads it).
#[derive(Debug, Clone)]
pub struct Change {
    /// Table logical name.
    pub table: String,
    /// Row id.
    pub id: Uuid,
    /// Version after the change.
    pub version: u64,
    /// The row was deleted.
    pub deleted: bool,
}

/// A committed write that webhooks may report.
#[derive(Debug, Clone)]
pub struct Event {
    /// `Create`, `Update`, `Delete` or `Close`.
    pub message: &'static str,
    /// Table logical name.
    pub table: String,
    /// Row id.
    pub id: Uuid,
    /// Attributes sent (stored naming).
    pub target: Map<String, Value>,
    /// The row after the write (none for Delete).
    pub post: Option<Map<String, Value>>,
    /// The row before the write (Update, Delete).
    pub pre: Option<Map<String, Value>>,
    /// Version after the write.
    pub version: u64,
    /// Who wrote.
    pub caller: Uuid,
    /// Correlation id of the HTTP request.
    pub correlation: Uuid,
    /// Extra input parameters (Close: IncidentResolution, Status).
    pub extra: Vec<(String, Value)>,
}

/// Who writes and where links point.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Calling user.
    pub caller: Uuid,
    /// Correlation id.
    pub correlation: Uuid,
    /// `{scheme}://{host}{prefix}/api/data/v9.2`.
    pub base: String,
    /// Attachment size limit in bytes.
    pub max_attachment_bytes: usize,
}

/// The organisation's data.
#[derive(Debug, Clone, Default)]
pub struct Store {
    /// Rows per table logical name.
    pub tables: HashMap<String, BTreeMap<Uuid, Row>>,
    /// Global version counter (versionnumber).
    pub version: u64,
    /// Change log.
    pub changes: Vec<Change>,
    /// Conditional writes still to be raced.
    pub etag_races: u32,
    /// Events of the current request, handed to webhooks at commit.
    pub events: Vec<Event>,
    ticket_seq: u64,
    /// Alternate key index: table → normalized key values → row id.
    key_index: HashMap<String, HashMap<String, Uuid>>,
    /// While a change set runs: what it changed, to roll it back.
    journal: Option<Journal>,
    /// Customisations (tables, columns, keys, webhook steps) of the organisation.
    pub meta: crate::metadata::Metadata,
}

impl Store {
    /// An empty store of an organisation with these customisations.
    pub fn with_meta(meta: crate::metadata::Metadata) -> Self {
        Store {
            meta,
            ..Store::default()
        }
    }
}

/// The undo record of a change set: each row it touched as it was before (none: it did not
/// exist), and the lengths of the change log and of the pending events. Rolling back costs
/// what the change set touched, not the size of the store.
#[derive(Debug, Clone, Default)]
struct Journal {
    rows: HashMap<(String, Uuid), Option<Row>>,
    changes: usize,
    events: usize,
}

/// A validated request body.
#[derive(Debug, Default, Clone)]
pub struct Prepared {
    /// Attributes to write (stored naming).
    pub attrs: Map<String, Value>,
    /// Primary key given in the body.
    pub primary_id: Option<Uuid>,
}

fn now_string() -> String {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    now.format(&Rfc3339).unwrap_or_default()
}

fn invalid_property(table: &Table, name: &str) -> ODataError {
    ODataError::bad_request(
        codes::ODATA,
        format!(
            "An error occurred while validating input parameters: Microsoft.Crm.CrmException: Invalid property '{name}' was found in entity '{}'.",
            table.odata_type()
        ),
    )
}

/// The error Dataverse answers for a navigation property it does not know (wrong case too).
pub fn undeclared_property(table: &Table, name: &str) -> ODataError {
    ODataError::bad_request(
        codes::PAYLOAD,
        format!(
            "Error identified in Payload provided by the user for Entity :'{}', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : Microsoft.OData.ODataException: An undeclared property '{name}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values.",
            table.entitysetname
        ),
    )
}

fn type_error(name: &str, v: &Value, edm: &str) -> ODataError {
    ODataError::bad_request(
        codes::ODATA,
        format!(
            "Cannot convert the literal '{v}' to the expected type '{edm}' (property '{name}')."
        ),
    )
}

impl Store {
    /// Rows of a table.
    pub fn rows(&self, table: &str) -> Option<&BTreeMap<Uuid, Row>> {
        self.tables.get(table)
    }

    fn rows_mut(&mut self, table: &str) -> &mut BTreeMap<Uuid, Row> {
        self.tables.entry(table.to_string()).or_default()
    }

    /// A row.
    pub fn row(&self, table: &str, id: Uuid) -> Option<&Row> {
        self.tables.get(table).and_then(|t| t.get(&id))
    }

    fn next_version(&mut self) -> u64 {
        if self.version == 0 {
            self.version = 100_000;
        }
        self.version += 1;
        self.version
    }

    /// Finds the row a key predicate designates.
    pub fn locate(&self, table: &Table, key: &KeyPredicate) -> Result<Option<Uuid>, ODataError> {
        match key {
            KeyPredicate::Id(id) => Ok(self.row(&table.logicalname, *id).map(|_| *id)),
            KeyPredicate::Alternate(pairs) => {
                let wanted = key_columns(table, pairs)?;
                Ok(self.find_by_values(table, &wanted, None))
            }
        }
    }

    fn find_by_values(
        &self,
        table: &Table,
        wanted: &[(String, Value)],
        except: Option<Uuid>,
    ) -> Option<Uuid> {
        let attrs: Map<String, Value> = wanted.iter().cloned().collect();
        table.keys.iter().find_map(|key| {
            let k = key_string(table, key, &attrs)?;
            let id = *self.key_index.get(&table.logicalname)?.get(&k)?;
            (Some(id) != except).then_some(id)
        })
    }

    /// Starts a change set: from here, every row written is remembered as it was.
    pub fn begin(&mut self) {
        self.journal = Some(Journal {
            rows: HashMap::new(),
            changes: self.changes.len(),
            events: self.events.len(),
        });
    }

    /// Ends a change set, keeping what it wrote.
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Ends a change set, undoing what it wrote: rows, key index, change log and events.
    /// Versions keep growing (no ETag is reused) and forced races stay used.
    pub fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        self.changes.truncate(journal.changes);
        self.events.truncate(journal.events);
        let schema = crate::schema::Schema::get();
        for ((table, id), before) in journal.rows {
            let Some(t) = schema.table(&table) else {
                continue;
            };
            match before {
                Some(row) => self.put_row(t, id, row),
                None => {
                    self.unindex(t, id);
                    self.rows_mut(&table).remove(&id);
                }
            }
        }
    }

    /// Remembers a row before a change set first writes it.
    fn remember(&mut self, table: &str, id: Uuid) {
        let key = (table.to_owned(), id);
        if self
            .journal
            .as_ref()
            .is_none_or(|j| j.rows.contains_key(&key))
        {
            return;
        }
        let before = self.row(table, id).cloned();
        if let Some(j) = self.journal.as_mut() {
            j.rows.insert(key, before);
        }
    }

    /// Stores a row, keeping the alternate key index in step.
    fn put_row(&mut self, table: &Table, id: Uuid, row: Row) {
        self.remember(&table.logicalname, id);
        self.unindex(table, id);
        let index = self.key_index.entry(table.logicalname.clone()).or_default();
        for key in &table.keys {
            if let Some(k) = key_string(table, key, &row.attrs) {
                index.insert(k, id);
            }
        }
        self.rows_mut(&table.logicalname).insert(id, row);
    }

    fn unindex(&mut self, table: &Table, id: Uuid) {
        let Some(old) = self.row(&table.logicalname, id) else {
            return;
        };
        let keys: Vec<String> = table
            .keys
            .iter()
            .filter_map(|key| key_string(table, key, &old.attrs))
            .collect();
        if let Some(index) = self.key_index.get_mut(&table.logicalname) {
            for k in keys {
                index.remove(&k);
            }
        }
    }

    /// Resolves an `@odata.bind` or `$n` reference to (table, id).
    pub fn resolve_ref(
        &self,
        reference: &str,
        cids: &HashMap<String, String>,
    ) -> Result<(&'static Table, Uuid), ODataError> {
        let mut r = reference.trim().to_string();
        if let Some(cid) = r.strip_prefix('$') {
            r = cids.get(cid).cloned().ok_or_else(|| {
                ODataError::bad_request(
                    codes::INVALID_ARGUMENT,
                    format!("Content-ID Reference: '${cid}' does not exist in the batch context."),
                )
            })?;
        }
        let rel = match r.find("/api/data/v9.2/") {
            Some(i) => &r[i + "/api/data/v9.2/".len()..],
            None => r.trim_start_matches('/'),
        };
        let (set, key) = split_key(rel).ok_or_else(|| {
            ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("Invalid entity reference '{reference}'."),
            )
        })?;
        let table = Schema::get()
            .table_by_set(set)
            .ok_or_else(|| ODataError::segment(set))?;
        let key = parse_key(key)?;
        match self.locate(table, &key)? {
            Some(id) => Ok((table, id)),
            None => Err(not_found_for_key(table, &key)),
        }
    }

    /// Validates a JSON body against the table's schema.
    pub fn prepare(
        &self,
        table: &Table,
        body: &Map<String, Value>,
        ctx: &Ctx,
        cids: &HashMap<String, String>,
    ) -> Result<Prepared, ODataError> {
        let mut p = Prepared::default();
        for (k, v) in body {
            if k.starts_with('@') {
                continue;
            }
            if let Some(nav) = k.strip_suffix("@odata.bind") {
                let Some((lookup, target)) = table.navigation(nav) else {
                    return Err(undeclared_property(table, nav));
                };
                let Value::String(reference) = v else {
                    return Err(ODataError::bad_request(
                        codes::INVALID_ARGUMENT,
                        format!(
                            "The value of '{k}' must be an entity reference such as '/accounts(<id>)'."
                        ),
                    ));
                };
                let (ref_table, id) = self.resolve_ref(reference, cids)?;
                if ref_table.logicalname != target.table {
                    return Err(ODataError::bad_request(
                        codes::INVALID_ARGUMENT,
                        format!(
                            "The navigation property '{nav}' expects a '{}' but the reference '{reference}' is a '{}'.",
                            target.table, ref_table.logicalname
                        ),
                    ));
                }
                let name = format!("_{}_value", lookup.logicalname);
                p.attrs.insert(
                    format!("{name}{LOOKUP_TABLE_ANNOTATION}"),
                    Value::String(target.table.clone()),
                );
                p.attrs.insert(name, Value::String(id.to_string()));
                continue;
            }
            if k.contains('@') {
                // Instance annotations (formatted values…) are ignored on write.
                continue;
            }
            if *k == table.primaryid {
                let id = v
                    .as_str()
                    .and_then(|s| Uuid::parse_str(s).ok())
                    .ok_or_else(|| type_error(k, v, "Edm.Guid"))?;
                p.primary_id = Some(id);
                continue;
            }
            if SYSTEM_COLUMNS.contains(&k.as_str()) {
                continue;
            }
            // Lookups are only written through `<navigation>@odata.bind`.
            let Some(col) = table.column(k) else {
                return Err(invalid_property(table, k));
            };
            if col.readonly {
                continue;
            }
            let value = match (col.kind, v) {
                (_, Value::Null) => Value::Null,
                (ColumnType::String | ColumnType::Memo, Value::String(s)) => {
                    if let Some(max) = col.maxlength
                        && s.chars().count() > max
                    {
                        return Err(ODataError::bad_request(
                            codes::VALIDATION,
                            format!(
                                "A validation error occurred.  The length of the '{k}' attribute of the '{}' entity exceeded the maximum allowed length of '{max}'.",
                                table.logicalname
                            ),
                        ));
                    }
                    if table.logicalname == "annotation" && k == "documentbody" {
                        let decoded = s.len() / 4 * 3;
                        if decoded > ctx.max_attachment_bytes {
                            return Err(ODataError::bad_request(
                                codes::ATTACHMENT_TOO_LARGE,
                                format!(
                                    "The attachment is either not a valid type or is too large. It cannot be uploaded or downloaded. (limit {} bytes)",
                                    ctx.max_attachment_bytes
                                ),
                            ));
                        }
                    }
                    v.clone()
                }
                (ColumnType::String | ColumnType::Memo, _) => {
                    return Err(type_error(k, v, "Edm.String"));
                }
                (ColumnType::Integer, Value::Number(n)) if n.is_i64() => v.clone(),
                (ColumnType::Integer, _) => return Err(type_error(k, v, "Edm.Int32")),
                (ColumnType::Decimal | ColumnType::Money, Value::Number(_)) => v.clone(),
                (ColumnType::Decimal | ColumnType::Money, _) => {
                    return Err(type_error(k, v, "Edm.Decimal"));
                }
                (ColumnType::Boolean, Value::Bool(_)) => v.clone(),
                (ColumnType::Boolean, _) => return Err(type_error(k, v, "Edm.Boolean")),
                (ColumnType::Datetime, Value::String(s)) => {
                    let d =
                        parse_datetime(s).ok_or_else(|| type_error(k, v, "Edm.DateTimeOffset"))?;
                    let d = d
                        .to_offset(time::UtcOffset::UTC)
                        .replace_nanosecond(0)
                        .unwrap_or(d);
                    Value::String(d.format(&Rfc3339).unwrap_or_default())
                }
                (ColumnType::Datetime, _) => return Err(type_error(k, v, "Edm.DateTimeOffset")),
                (
                    ColumnType::Picklist | ColumnType::State | ColumnType::Status,
                    Value::Number(n),
                ) if n.is_i64() => {
                    let n = n.as_i64().unwrap_or_default();
                    if !col.options.is_empty() && !col.options.iter().any(|o| o.value == n) {
                        return Err(ODataError::bad_request(
                            codes::VALIDATION,
                            format!(
                                "A validation error occurred. The value {n} of '{k}' on record of type '{}' is outside the valid range.",
                                table.logicalname
                            ),
                        ));
                    }
                    v.clone()
                }
                (ColumnType::Picklist | ColumnType::State | ColumnType::Status, _) => {
                    return Err(type_error(k, v, "Edm.Int32"));
                }
            };
            p.attrs.insert(k.clone(), value);
        }
        Ok(p)
    }

    fn check_state_status(
        table: &Table,
        attrs: &mut Map<String, Value>,
        current_state: i64,
    ) -> Result<(), ODataError> {
        let (Some(state_col), Some(status_col)) =
            (table.column("statecode"), table.column("statuscode"))
        else {
            return Ok(());
        };
        let new_state = attrs.get("statecode").and_then(Value::as_i64);
        let state = new_state.unwrap_or(current_state);
        match attrs.get("statuscode").and_then(Value::as_i64) {
            Some(status) => {
                let belongs = status_col
                    .options
                    .iter()
                    .find(|o| o.value == status)
                    .and_then(|o| o.state);
                if belongs.is_some_and(|s| s != state) {
                    let state_label = state_col
                        .options
                        .iter()
                        .find(|o| o.value == state)
                        .map(|o| o.label.clone())
                        .unwrap_or_else(|| state.to_string());
                    return Err(ODataError::bad_request(
                        codes::INVALID_STATE_STATUS,
                        format!(
                            "{status} is not a valid status code for state code {}State.{state_label}.",
                            table.schemaname
                        ),
                    ));
                }
            }
            None if new_state.is_some() => {
                if let Some(default) = status_col.options.iter().find(|o| o.state == Some(state)) {
                    attrs.insert("statuscode".into(), json!(default.value));
                }
            }
            None => {}
        }
        Ok(())
    }

    fn check_unique_keys(
        &self,
        table: &Table,
        attrs: &Map<String, Value>,
        id: Uuid,
    ) -> Result<(), ODataError> {
        for key in &table.keys {
            let mut wanted = Vec::new();
            for c in &key.columns {
                let name = stored_name(table, c);
                match attrs.get(&name) {
                    Some(v) if !v.is_null() => wanted.push((name, v.clone())),
                    _ => break,
                }
            }
            if wanted.len() == key.columns.len()
                && self.find_by_values(table, &wanted, Some(id)).is_some()
            {
                return Err(ODataError::duplicate());
            }
        }
        Ok(())
    }

    /// Creates a row.
    pub fn create(
        &mut self,
        ctx: &Ctx,
        table: &Table,
        mut p: Prepared,
        id_hint: Option<Uuid>,
        key_values: Vec<(String, Value)>,
    ) -> Result<Uuid, ODataError> {
        let id = match (p.primary_id, id_hint) {
            (Some(a), Some(b)) if a != b => {
                return Err(ODataError::bad_request(
                    codes::INVALID_ARGUMENT,
                    format!(
                        "The {} in the body does not match the id in the URL.",
                        table.primaryid
                    ),
                ));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => Uuid::new_v4(),
        };
        if self.row(&table.logicalname, id).is_some() {
            return Err(ODataError::duplicate());
        }
        for (k, v) in key_values {
            p.attrs.insert(k, v);
        }
        let target = p.attrs.clone();
        let mut attrs = p.attrs;
        for l in &table.lookups {
            let name = format!("_{}_value", l.logicalname);
            if l.systemrequired && attrs.get(&name).is_none_or(Value::is_null) {
                let message = if table.logicalname == "incident" {
                    "You should specify a parent contact or account.".to_string()
                } else {
                    format!("{} is required.", l.logicalname)
                };
                return Err(ODataError::bad_request(codes::INVALID_ARGUMENT, message));
            }
        }
        if let Some(state) = attrs.get("statecode").and_then(Value::as_i64)
            && state != 0
            && table.logicalname == "incident"
        {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                "A case can only be created active (statecode 0).",
            ));
        }
        if table.column("statecode").is_some() && !attrs.contains_key("statecode") {
            attrs.insert("statecode".into(), json!(0));
        }
        Self::check_state_status(table, &mut attrs, 0)?;
        self.check_unique_keys(table, &attrs, id)?;
        match table.logicalname.as_str() {
            "incident" if attrs.get("ticketnumber").is_none_or(Value::is_null) => {
                self.ticket_seq += 1;
                let suffix: String = id.simple().to_string()[..6].to_uppercase();
                attrs.insert(
                    "ticketnumber".into(),
                    json!(format!("CAS-{:05}-{suffix}", 1000 + self.ticket_seq)),
                );
            }
            "contact" => set_fullname(&mut attrs),
            "annotation" => annotation_fields(&mut attrs),
            _ => {}
        }
        let now = now_string();
        let version = self.next_version();
        attrs.insert(table.primaryid.clone(), json!(id.to_string()));
        attrs.insert("createdon".into(), json!(now));
        attrs.insert("modifiedon".into(), json!(now));
        attrs.insert("_createdby_value".into(), json!(ctx.caller.to_string()));
        attrs.insert("_modifiedby_value".into(), json!(ctx.caller.to_string()));
        if table.user_owned() {
            attrs.insert("_ownerid_value".into(), json!(ctx.caller.to_string()));
        }
        attrs.insert("versionnumber".into(), json!(version));
        let post = attrs.clone();
        self.put_row(table, id, Row { attrs, version });
        self.changes.push(Change {
            table: table.logicalname.clone(),
            id,
            version,
            deleted: false,
        });
        let mut target = target;
        target.insert(table.primaryid.clone(), json!(id.to_string()));
        self.events.push(Event {
            message: "Create",
            table: table.logicalname.clone(),
            id,
            target,
            post: Some(post),
            pre: None,
            version,
            caller: ctx.caller,
            correlation: ctx.correlation,
            extra: vec![],
        });
        Ok(id)
    }

    /// Updates a row, applying the table's rules (resolved cases are read-only).
    pub fn update(
        &mut self,
        ctx: &Ctx,
        table: &Table,
        id: Uuid,
        p: Prepared,
    ) -> Result<(), ODataError> {
        if p.primary_id.is_some_and(|b| b != id) {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!(
                    "The {} in the body does not match the id in the URL.",
                    table.primaryid
                ),
            ));
        }
        let current_state = self
            .row(&table.logicalname, id)
            .and_then(|r| r.attrs.get("statecode"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let only_state = p
            .attrs
            .keys()
            .all(|k| k == "statecode" || k == "statuscode");
        if table.logicalname == "incident" {
            let new_state = p.attrs.get("statecode").and_then(Value::as_i64);
            // A resolved case is read-only: it is reopened by a state change alone; its other
            // columns can be written after that, in a later request.
            if current_state != 0 && (new_state != Some(0) || !only_state) {
                return Err(ODataError::bad_request(
                    codes::CASE_ALREADY_RESOLVED,
                    "This case has already been resolved. Close and reopen the case record to see the updates.",
                ));
            }
            if new_state == Some(1) {
                return Err(ODataError::bad_request(
                    codes::INVALID_ARGUMENT,
                    "This message can not be used to set the state of incident to Resolved. In order to set state of incident to Resolved, use the CloseIncidentRequest message instead.",
                ));
            }
        }
        if table.activity && current_state != 0 && !only_state {
            // A completed or canceled activity is read-only.
            return Err(ODataError::bad_request(
                codes::READ_ONLY,
                "The object cannot be updated because it is read-only.",
            ));
        }
        self.apply_update(ctx, table, id, p.attrs, current_state, "Update")
    }

    /// Activities regarding `incident` that are still open (statecode 0).
    pub fn open_activities(&self, incident: Uuid) -> usize {
        let id = incident.to_string();
        Schema::get()
            .tables()
            .iter()
            .filter(|t| t.activity)
            .filter_map(|t| self.rows(&t.logicalname))
            .flat_map(|rows| rows.values())
            .filter(|r| {
                r.attrs
                    .get("_regardingobjectid_value")
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.eq_ignore_ascii_case(&id))
                    && r.attrs
                        .get("statecode")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        == 0
            })
            .count()
    }

    fn apply_update(
        &mut self,
        ctx: &Ctx,
        table: &Table,
        id: Uuid,
        mut changes: Map<String, Value>,
        current_state: i64,
        message: &'static str,
    ) -> Result<(), ODataError> {
        Self::check_state_status(table, &mut changes, current_state)?;
        let pre = self
            .row(&table.logicalname, id)
            .map(|r| r.attrs.clone())
            .ok_or_else(|| ODataError::row_not_found(&table.logicalname, id))?;
        let mut merged = pre.clone();
        for (k, v) in &changes {
            merged.insert(k.clone(), v.clone());
        }
        self.check_unique_keys(table, &merged, id)?;
        match table.logicalname.as_str() {
            "contact" => set_fullname(&mut merged),
            "annotation" => annotation_fields(&mut merged),
            _ => {}
        }
        let version = self.next_version();
        merged.insert("modifiedon".into(), json!(now_string()));
        merged.insert("_modifiedby_value".into(), json!(ctx.caller.to_string()));
        merged.insert("versionnumber".into(), json!(version));
        let post = merged.clone();
        self.put_row(
            table,
            id,
            Row {
                attrs: merged,
                version,
            },
        );
        self.changes.push(Change {
            table: table.logicalname.clone(),
            id,
            version,
            deleted: false,
        });
        changes.insert(table.primaryid.clone(), json!(id.to_string()));
        self.events.push(Event {
            message,
            table: table.logicalname.clone(),
            id,
            target: changes,
            post: Some(post),
            pre: Some(pre),
            version,
            caller: ctx.caller,
            correlation: ctx.correlation,
            extra: vec![],
        });
        Ok(())
    }

    /// Deletes a row.
    pub fn delete(&mut self, ctx: &Ctx, table: &Table, id: Uuid) -> Result<(), ODataError> {
        self.remember(&table.logicalname, id);
        self.unindex(table, id);
        let Some(pre) = self
            .rows_mut(&table.logicalname)
            .remove(&id)
            .map(|r| r.attrs)
        else {
            return Err(ODataError::row_not_found(&table.logicalname, id));
        };
        let version = self.next_version();
        self.changes.push(Change {
            table: table.logicalname.clone(),
            id,
            version,
            deleted: true,
        });
        self.events.push(Event {
            message: "Delete",
            table: table.logicalname.clone(),
            id,
            target: Map::new(),
            post: None,
            pre: Some(pre),
            version,
            caller: ctx.caller,
            correlation: ctx.correlation,
            extra: vec![],
        });
        Ok(())
    }

    /// Applies `If-Match` (a specific ETag) to a write, after any forced race.
    pub fn check_if_match(
        &mut self,
        table: &Table,
        id: Uuid,
        if_match: &str,
    ) -> Result<(), ODataError> {
        if if_match.trim() == "*" {
            return Ok(());
        }
        if self.etag_races > 0 {
            self.etag_races -= 1;
            self.concurrent_edit(table, id);
        }
        let current = self
            .row(&table.logicalname, id)
            .map(Row::etag)
            .ok_or_else(|| ODataError::row_not_found(&table.logicalname, id))?;
        if if_match.split(',').any(|t| t.trim() == current) {
            Ok(())
        } else {
            Err(ODataError::version_mismatch())
        }
    }

    /// Someone else changes the row (its version moves).
    fn concurrent_edit(&mut self, table: &Table, id: Uuid) {
        self.remember(&table.logicalname, id);
        let version = self.next_version();
        let now = now_string();
        if let Some(row) = self
            .tables
            .get_mut(&table.logicalname)
            .and_then(|t| t.get_mut(&id))
        {
            row.version = version;
            row.attrs.insert("versionnumber".into(), json!(version));
            row.attrs.insert("modifiedon".into(), json!(now));
            row.attrs.insert(
                "_modifiedby_value".into(),
                json!(CONCURRENT_EDITOR_ID.to_string()),
            );
            self.changes.push(Change {
                table: table.logicalname.clone(),
                id,
                version,
                deleted: false,
            });
        }
    }

    /// `CloseIncident`: creates the incidentresolution and resolves the case.
    pub fn close_incident(
        &mut self,
        ctx: &Ctx,
        body: &Map<String, Value>,
        cids: &HashMap<String, String>,
    ) -> Result<(), ODataError> {
        let schema = Schema::get();
        let incident = schema.table("incident").expect("incident in schema");
        let resolution_table = schema
            .table("incidentresolution")
            .expect("incidentresolution in schema");
        let status = match body.get("Status") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
            None => -1,
            Some(other) => return Err(type_error("Status", other, "Edm.Int32")),
        };
        let status = if status == -1 { 5 } else { status };
        let Some(Value::Object(resolution)) = body.get("IncidentResolution") else {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                "The parameter 'IncidentResolution' is required.",
            ));
        };
        let prepared = self.prepare(resolution_table, resolution, ctx, cids)?;
        let Some(incident_id) = prepared
            .attrs
            .get("_incidentid_value")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                "IncidentResolution must reference the case with 'incidentid@odata.bind'.",
            ));
        };
        let state = self
            .row("incident", incident_id)
            .and_then(|r| r.attrs.get("statecode"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if state != 0 {
            return Err(ODataError::bad_request(
                codes::CASE_ALREADY_RESOLVED,
                "This case has already been resolved. Close and reopen the case record to see the updates.",
            ));
        }
        let open = self.open_activities(incident_id);
        if open > 0 {
            return Err(ODataError::bad_request(
                codes::OPEN_ACTIVITIES,
                format!(
                    "The case cannot be resolved: {open} activities regarding it are still open. Complete or cancel them first."
                ),
            ));
        }
        let valid = incident.column("statuscode").is_some_and(|c| {
            c.options
                .iter()
                .any(|o| o.value == status && o.state == Some(1))
        });
        if !valid {
            return Err(ODataError::bad_request(
                codes::INVALID_STATE_STATUS,
                format!(
                    "{status} is not a valid status code for state code IncidentState.Resolved."
                ),
            ));
        }
        let mut res = prepared;
        res.attrs.insert("statecode".into(), json!(1));
        res.attrs.insert("statuscode".into(), json!(2));
        let resolution_id = self.create(ctx, resolution_table, res, None, vec![])?;
        let mut changes = Map::new();
        changes.insert("statecode".into(), json!(1));
        changes.insert("statuscode".into(), json!(status));
        self.apply_update(ctx, incident, incident_id, changes, 0, "Update")?;
        let version = self.version;
        let post = self.row("incident", incident_id).map(|r| r.attrs.clone());
        let resolution_row = self
            .row("incidentresolution", resolution_id)
            .map(|r| Value::Object(r.attrs.clone()))
            .unwrap_or(Value::Null);
        self.events.push(Event {
            message: "Close",
            table: "incident".into(),
            id: incident_id,
            target: Map::new(),
            post,
            pre: None,
            version,
            caller: ctx.caller,
            correlation: ctx.correlation,
            extra: vec![
                ("IncidentResolution".into(), resolution_row),
                ("Status".into(), json!(status)),
            ],
        });
        Ok(())
    }

    /// Renders a row for the Web API (all readable properties, or the selected ones).
    pub fn render(
        table: &Table,
        row: &Row,
        select: Option<&[String]>,
        annotations: bool,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("@odata.etag".into(), json!(row.etag()));
        let names: Vec<String> = match select {
            Some(sel) => {
                let mut v: Vec<String> = sel.to_vec();
                if !v.contains(&table.primaryid) {
                    v.push(table.primaryid.clone());
                }
                v
            }
            None => table.readable_names(),
        };
        for n in names {
            let v = row.attrs.get(&n).cloned().unwrap_or(Value::Null);
            if annotations && lookup_of_value_name(&n).is_some() {
                let ann = format!("{n}{LOOKUP_TABLE_ANNOTATION}");
                if let Some(t) = row.attrs.get(&ann) {
                    out.insert(ann, t.clone());
                }
            }
            if annotations
                && let Some(label) = table.column(&n).and_then(|c| {
                    let value = v.as_i64()?;
                    c.options
                        .iter()
                        .find(|o| o.value == value)
                        .map(|o| o.label.clone())
                })
            {
                out.insert(
                    format!("{n}@OData.Community.Display.V1.FormattedValue"),
                    json!(label),
                );
            }
            out.insert(n, v);
        }
        out
    }
}

/// The index entry of a row for one alternate key: its values, normalized as Dataverse
/// compares keys (strings and GUIDs case-insensitively); none when a key column is empty.
fn key_string(
    table: &Table,
    key: &crate::schema::AlternateKey,
    attrs: &Map<String, Value>,
) -> Option<String> {
    let mut out = key.schemaname.clone();
    for c in &key.columns {
        let v = attrs.get(&stored_name(table, c))?;
        out.push('\u{1f}');
        match v {
            Value::Null => return None,
            Value::String(s) => out.push_str(&s.to_lowercase()),
            Value::Number(n) => out.push_str(&n.as_f64().unwrap_or_default().to_string()),
            other => out.push_str(&other.to_string()),
        }
    }
    Some(out)
}

/// The stored attribute name of a key column (`_x_value` for lookups).
pub fn stored_name(table: &Table, column: &str) -> String {
    if table.lookup(column).is_some() {
        format!("_{column}_value")
    } else {
        column.to_string()
    }
}

/// Maps the names of a key predicate to a declared alternate key, in stored naming.
pub fn key_columns(
    table: &Table,
    pairs: &[(String, Value)],
) -> Result<Vec<(String, Value)>, ODataError> {
    let mut given: Vec<(String, Value)> = pairs
        .iter()
        .map(|(n, v)| {
            let logical = lookup_of_value_name(n).unwrap_or(n);
            (stored_name(table, logical), v.clone())
        })
        .collect();
    given.sort_by(|a, b| a.0.cmp(&b.0));
    let matches_key = table.keys.iter().any(|k| {
        let mut cols: Vec<String> = k.columns.iter().map(|c| stored_name(table, c)).collect();
        cols.sort();
        cols == given.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    });
    if !matches_key {
        let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
        return Err(ODataError::bad_request(
            codes::INVALID_ARGUMENT,
            format!(
                "The key attribute(s) '{}' do not form an alternate key of entity '{}'.",
                names.join(","),
                table.logicalname
            ),
        ));
    }
    for (n, v) in &mut given {
        if n.starts_with('_')
            && let Some(s) = v.as_str()
            && let Ok(u) = Uuid::parse_str(s)
        {
            *v = json!(u.to_string());
        }
    }
    Ok(given)
}

/// 404 for a key predicate that designates no row.
pub fn not_found_for_key(table: &Table, key: &KeyPredicate) -> ODataError {
    match key {
        KeyPredicate::Id(id) => ODataError::row_not_found(&table.logicalname, id),
        KeyPredicate::Alternate(pairs) => {
            let desc: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}:{v}")).collect();
            ODataError::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!(
                    "A record with the specified key values does not exist in {} entity ({})",
                    table.logicalname,
                    desc.join(",")
                ),
            )
        }
    }
}

/// Splits `set(key)` into its parts (the key may hold quoted parentheses).
pub fn split_key(s: &str) -> Option<(&str, &str)> {
    let open = s.find('(')?;
    let mut in_str = false;
    for (i, c) in s[open + 1..].char_indices() {
        match c {
            '\'' => in_str = !in_str,
            ')' if !in_str => {
                let close = open + 1 + i;
                if close + 1 != s.len() {
                    return None;
                }
                return Some((&s[..open], &s[open + 1..close]));
            }
            _ => {}
        }
    }
    None
}

fn set_fullname(attrs: &mut Map<String, Value>) {
    let first = attrs.get("firstname").and_then(Value::as_str).unwrap_or("");
    let last = attrs.get("lastname").and_then(Value::as_str).unwrap_or("");
    let full = format!("{first} {last}").trim().to_string();
    attrs.insert("fullname".into(), json!(full));
}

fn annotation_fields(attrs: &mut Map<String, Value>) {
    let target = attrs
        .get(&format!("_objectid_value{LOOKUP_TABLE_ANNOTATION}"))
        .cloned()
        .unwrap_or(Value::Null);
    attrs.insert("objecttypecode".into(), target);
    let size = attrs.get("documentbody").and_then(Value::as_str).map(|b| {
        let pad = b.chars().rev().take_while(|c| *c == '=').count();
        (b.len() / 4 * 3).saturating_sub(pad)
    });
    attrs.insert("isdocument".into(), json!(size.is_some()));
    attrs.insert("filesize".into(), json!(size.unwrap_or(0)));
}
