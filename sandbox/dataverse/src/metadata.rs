//! The organisation's customisations, as the Web API metadata endpoints and the plug-in
//! registration tables see them: which tables, columns, lookups and alternate keys of
//! `tgb-solution.json` exist, which tables track changes, and the webhook service endpoints
//! with their SDK message processing steps and images.
//!
//! By default every customisation of the solution file exists (keys Active), as if an
//! administrator had applied it. An *empty* organisation has only the out-of-the-box tables and
//! columns: the custom tables, the `tgb_` columns and lookups, the keys and the steps appear as
//! they are created through these endpoints, and the data requests that need one of them fail
//! as Dataverse fails them until then.
//!
//! Endpoints served (shapes from "Create and update table definitions using the Web API",
//! "Create and update column definitions", "Create and retrieve table relationships", "Define
//! alternate keys using the Web API" and "Register a webhook"):
//! `EntityDefinitions` (GET, POST), `EntityDefinitions(<id>|LogicalName='…')` (GET, PUT),
//! `…/Attributes` (POST), `…/Attributes(LogicalName='…')` (GET), `…/Keys` (GET, POST),
//! `RelationshipDefinitions` (POST), `RelationshipDefinitions(SchemaName='…')` (GET), and the
//! tables `serviceendpoints`, `sdkmessages`, `sdkmessagefilters`, `sdkmessageprocessingsteps`,
//! `sdkmessageprocessingstepimages` (GET with `eq` filters joined by `and`, POST, GET and
//! DELETE by id).

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::api::{Req, Resp};
use crate::error::{ODataError, codes};
use crate::schema::{ColumnType, Schema, Table};
use crate::store::Ctx;
use crate::webhooks::{WebhookAuth, WebhookRegistration};

/// `EntityKeyIndexStatus` values.
pub const KEY_PENDING: &str = "Pending";
/// The index is being built.
pub const KEY_IN_PROGRESS: &str = "InProgress";
/// The key can be used.
pub const KEY_ACTIVE: &str = "Active";
/// The index job failed (duplicate values, …).
pub const KEY_FAILED: &str = "Failed";

/// The SDK messages the emulator knows (the ones a webhook step of tg-bridge can use).
pub const MESSAGES: &[&str] = &["Create", "Update", "Delete", "Close"];

const NS: Uuid = Uuid::from_u128(0x7467_6272_6964_4765_8000_0000_0000_0001);

#[derive(Debug, Clone)]
struct TableMeta {
    id: Uuid,
    change_tracking: bool,
    has_activities: bool,
}

#[derive(Debug, Clone)]
struct KeyMeta {
    id: Uuid,
    table: String,
    columns: Vec<String>,
    status: &'static str,
}

/// The organisation's customisations.
#[derive(Debug, Clone)]
pub struct Metadata {
    empty_org: bool,
    tables: BTreeMap<String, TableMeta>,
    /// (table, column) of created `tgb_` columns and lookups.
    columns: BTreeSet<(String, String)>,
    relationships: BTreeMap<String, Value>,
    /// Key schema name → key.
    keys: BTreeMap<String, KeyMeta>,
    /// Plug-in registration rows per table (`serviceendpoints`, …), by id.
    rows: BTreeMap<&'static str, BTreeMap<Uuid, Map<String, Value>>>,
    /// Key schema names whose index job fails.
    failing_keys: BTreeSet<String>,
    /// Privileges taken from a user (every user otherwise holds all, as a System
    /// Administrator).
    revoked: BTreeMap<Uuid, BTreeSet<String>>,
    /// The service endpoints or steps changed: the webhook registrations must follow.
    pub hooks_dirty: bool,
    /// Webhook registrations made from the service endpoints.
    pub hook_ids: Vec<Uuid>,
}

const SETS: &[(&str, &str)] = &[
    ("serviceendpoints", "serviceendpointid"),
    ("sdkmessages", "sdkmessageid"),
    ("sdkmessagefilters", "sdkmessagefilterid"),
    ("sdkmessageprocessingsteps", "sdkmessageprocessingstepid"),
    (
        "sdkmessageprocessingstepimages",
        "sdkmessageprocessingstepimageid",
    ),
    ("roles", "roleid"),
    ("privileges", "privilegeid"),
    ("businessunits", "businessunitid"),
];

/// The privilege kinds of a table (`prv<Kind><table>`).
pub const PRIVILEGE_KINDS: &[&str] = &[
    "Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign", "Share",
];

/// The root business unit (the one WhoAmI names).
const ROOT_BUSINESS_UNIT: Uuid = Uuid::from_u128(0x0b0b_0000_0000_4000_8000_0000_0000_0001);

fn set_of(name: &str) -> Option<(&'static str, &'static str)> {
    SETS.iter().find(|(s, _)| *s == name).copied()
}

fn stable_id(kind: &str, name: &str) -> Uuid {
    Uuid::new_v5(&NS, format!("{kind}:{name}").as_bytes())
}

fn is_custom(name: &str) -> bool {
    name.starts_with("tgb_")
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metadata {
    /// Every customisation of the solution file present (`empty_org: false`), or none.
    pub fn new(empty_org: bool) -> Self {
        let schema = Schema::get();
        let mut m = Metadata {
            empty_org,
            tables: BTreeMap::new(),
            columns: BTreeSet::new(),
            relationships: BTreeMap::new(),
            keys: BTreeMap::new(),
            rows: BTreeMap::new(),
            failing_keys: BTreeSet::new(),
            revoked: BTreeMap::new(),
            hooks_dirty: false,
            hook_ids: Vec::new(),
        };
        for t in schema.tables() {
            if empty_org && !t.standard {
                continue;
            }
            m.tables.insert(
                t.logicalname.clone(),
                TableMeta {
                    id: stable_id("table", &t.logicalname),
                    change_tracking: !empty_org && t.changetracking,
                    has_activities: ["account", "incident", "contact"]
                        .contains(&t.logicalname.as_str())
                        || !empty_org,
                },
            );
            if empty_org {
                continue;
            }
            for c in t
                .columns
                .iter()
                .map(|c| &c.logicalname)
                .chain(t.lookups.iter().map(|l| &l.logicalname))
            {
                if is_custom(c) {
                    m.columns.insert((t.logicalname.clone(), c.clone()));
                }
            }
            for k in &t.keys {
                m.keys.insert(
                    k.schemaname.clone(),
                    KeyMeta {
                        id: stable_id("key", &k.schemaname),
                        table: t.logicalname.clone(),
                        columns: k.columns.clone(),
                        status: KEY_ACTIVE,
                    },
                );
            }
        }
        let mut messages = BTreeMap::new();
        let mut filters = BTreeMap::new();
        for msg in MESSAGES {
            let id = stable_id("sdkmessage", msg);
            let mut row = Map::new();
            row.insert("sdkmessageid".into(), json!(id));
            row.insert("name".into(), json!(msg));
            messages.insert(id, row);
            for t in schema.tables() {
                if *msg == "Close" && t.logicalname != "incident" {
                    continue;
                }
                let fid = stable_id("sdkmessagefilter", &format!("{msg}:{}", t.logicalname));
                let mut row = Map::new();
                row.insert("sdkmessagefilterid".into(), json!(fid));
                row.insert("primaryobjecttypecode".into(), json!(t.logicalname));
                row.insert("_sdkmessageid_value".into(), json!(id));
                row.insert("iscustomprocessingstepallowed".into(), json!(true));
                filters.insert(fid, row);
            }
        }
        let mut privileges = BTreeMap::new();
        for t in schema.tables() {
            for kind in PRIVILEGE_KINDS {
                let name = format!("prv{kind}{}", t.logicalname);
                let id = stable_id("privilege", &name);
                let mut row = Map::new();
                row.insert("privilegeid".into(), json!(id));
                row.insert("name".into(), json!(name));
                privileges.insert(id, row);
            }
        }
        m.rows.insert("privileges", privileges);
        let mut bu = Map::new();
        bu.insert("businessunitid".into(), json!(ROOT_BUSINESS_UNIT));
        bu.insert("name".into(), json!("root"));
        m.rows
            .insert("businessunits", BTreeMap::from([(ROOT_BUSINESS_UNIT, bu)]));
        m.rows.insert("sdkmessages", messages);
        m.rows.insert("sdkmessagefilters", filters);
        m
    }

    /// Whether this organisation started empty.
    pub fn is_empty_org(&self) -> bool {
        self.empty_org
    }

    /// Makes the index job of the key `schema_name` fail (when it is created, or now).
    pub fn fail_key_job(&mut self, schema_name: &str) {
        self.failing_keys.insert(schema_name.to_owned());
        if let Some(k) = self.keys.get_mut(schema_name) {
            k.status = KEY_FAILED;
        }
    }

    /// Takes a privilege (`prvCreateincident`) from a user, as `RetrieveUserPrivileges`
    /// reports it (the data requests are not checked against privileges).
    pub fn revoke_privilege(&mut self, user: Uuid, name: &str) {
        self.revoked
            .entry(user)
            .or_default()
            .insert(name.to_owned());
    }

    /// Whether the table exists.
    pub fn has_table(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// Whether change tracking is on for the table.
    pub fn change_tracking(&self, table: &str) -> bool {
        self.tables.get(table).is_some_and(|t| t.change_tracking)
    }

    /// Whether a column (or lookup) of the table exists: out-of-the-box ones always do.
    pub fn has_column(&self, table: &str, column: &str) -> bool {
        !is_custom(column)
            || self
                .columns
                .contains(&(table.to_owned(), column.to_owned()))
    }

    /// Checks a data request against what exists: the table, the `tgb_` properties it names
    /// (`$select`, body properties and `@odata.bind` navigations) and the alternate key it
    /// addresses.
    pub fn check_data_request(
        &self,
        table: &Table,
        select: Option<&[String]>,
        body: Option<&Map<String, Value>>,
        key_columns: Option<Vec<String>>,
    ) -> Result<(), ODataError> {
        if !self.has_table(&table.logicalname) {
            return Err(ODataError::segment(&table.entitysetname));
        }
        let missing = |name: &str| -> Option<String> {
            let name = crate::schema::lookup_of_value_name(name).unwrap_or(name);
            (!self.has_column(&table.logicalname, name)).then(|| name.to_owned())
        };
        for s in select.unwrap_or_default() {
            if let Some(name) = missing(s) {
                return Err(ODataError::bad_request(
                    codes::ODATA,
                    format!(
                        "Could not find a property named '{name}' on type '{}'.",
                        table.odata_type()
                    ),
                ));
            }
        }
        for k in body
            .map(|b| b.keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if k.contains('@') && !k.ends_with("@odata.bind") {
                continue;
            }
            let prop = k.strip_suffix("@odata.bind").unwrap_or(k);
            let column = match k.ends_with("@odata.bind") {
                true => table.navigation(prop).map(|(l, _)| l.logicalname.as_str()),
                false => Some(prop),
            };
            if let Some(name) = column.and_then(missing) {
                return Err(ODataError::bad_request(
                    codes::PROPERTY_NOT_FOUND,
                    format!(
                        "The property '{name}' does not exist on type '{}'. Make sure to only use property names that are defined by the type.",
                        table.odata_type()
                    ),
                ));
            }
        }
        if let Some(cols) = key_columns {
            // A lookup in a key is addressed as `_name_value`.
            let mut cols: Vec<String> = cols
                .iter()
                .map(|c| {
                    crate::schema::lookup_of_value_name(c)
                        .unwrap_or(c)
                        .to_owned()
                })
                .collect();
            cols.sort();
            let active = self.keys.values().any(|k| {
                let mut kc = k.columns.clone();
                kc.sort();
                k.table == table.logicalname && kc == cols && k.status == KEY_ACTIVE
            });
            if !active {
                return Err(ODataError::bad_request(
                    codes::INVALID_ARGUMENT,
                    format!(
                        "No Active alternate key of '{}' has the attributes {}; a key is usable once its EntityKeyIndexStatus is Active.",
                        table.logicalname,
                        cols.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The webhook registrations the service endpoints and their steps amount to: one per
    /// webhook endpoint (contract 8) with steps, for the union of the steps' tables and
    /// messages.
    pub fn webhook_registrations(&self) -> Vec<WebhookRegistration> {
        let empty = BTreeMap::new();
        let endpoints = self.rows.get("serviceendpoints").unwrap_or(&empty);
        let steps = self.rows.get("sdkmessageprocessingsteps").unwrap_or(&empty);
        let messages = self.rows.get("sdkmessages").unwrap_or(&empty);
        let filters = self.rows.get("sdkmessagefilters").unwrap_or(&empty);
        let mut out = Vec::new();
        for (id, ep) in endpoints {
            if ep.get("contract").and_then(Value::as_i64) != Some(8) {
                continue;
            }
            let mut entities = BTreeSet::new();
            let mut msgs = BTreeSet::new();
            for step in steps.values() {
                if value_id(step, "_eventhandler_value") != Some(*id) {
                    continue;
                }
                let message = value_id(step, "_sdkmessageid_value")
                    .and_then(|m| messages.get(&m))
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str);
                let table = value_id(step, "_sdkmessagefilterid_value")
                    .and_then(|f| filters.get(&f))
                    .and_then(|f| f.get("primaryobjecttypecode"))
                    .and_then(Value::as_str);
                if let (Some(m), Some(t)) = (message, table) {
                    msgs.insert(m.to_owned());
                    entities.insert(t.to_owned());
                }
            }
            if entities.is_empty() {
                continue;
            }
            let url = ep.get("url").and_then(Value::as_str).unwrap_or_default();
            let setting = ep
                .get("authvalue")
                .and_then(Value::as_str)
                .and_then(parse_auth_setting);
            let auth = match (ep.get("authtype").and_then(Value::as_i64), setting) {
                (Some(4), _) => WebhookAuth::Query {
                    name: "code".into(),
                    value: ep
                        .get("authvalue")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                },
                (Some(5), Some((name, value))) => WebhookAuth::Header { name, value },
                (Some(6), Some((name, value))) => WebhookAuth::Query { name, value },
                _ => WebhookAuth::None,
            };
            out.push(WebhookRegistration {
                name: ep
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                url: url.to_owned(),
                auth,
                entities: entities.into_iter().collect(),
                messages: msgs.into_iter().collect(),
            });
        }
        out
    }

    /// Serves a metadata or plug-in registration request; `None` when `path` is neither.
    pub fn route(
        &mut self,
        ctx: &Ctx,
        req: &Req<'_>,
        path: &str,
    ) -> Option<Result<Resp, ODataError>> {
        if path == "EntityDefinitions" || path.starts_with("EntityDefinitions(") {
            return Some(self.entity_definitions(ctx, req, path));
        }
        if path == "RelationshipDefinitions" || path.starts_with("RelationshipDefinitions(") {
            return Some(self.relationship_definitions(ctx, req, path));
        }
        if let Some(rest) = path.strip_prefix("systemusers(")
            && let Some((id, function)) = rest.split_once(")/")
            && function.trim_start_matches("Microsoft.Dynamics.CRM.") == "RetrieveUserPrivileges()"
            && req.method == Method::GET
        {
            return Some(self.user_privileges(id));
        }
        if let Some(rest) = path.strip_prefix("roles(")
            && let Some((id, action)) = rest.split_once(")/")
        {
            return Some(self.role_action(req, id, action));
        }
        let (set, key) = match path.split_once('(') {
            Some((s, rest)) => (s, Some(rest.trim_end_matches(')'))),
            None => (path, None),
        };
        let (set, idname) = set_of(set)?;
        Some(self.registration_rows(ctx, req, set, idname, key))
    }

    fn entity_definitions(
        &mut self,
        ctx: &Ctx,
        req: &Req<'_>,
        path: &str,
    ) -> Result<Resp, ODataError> {
        let rest = path.strip_prefix("EntityDefinitions").unwrap_or_default();
        if rest.is_empty() {
            return match req.method {
                Method::GET => {
                    let value: Vec<Value> = Schema::get()
                        .tables()
                        .iter()
                        .filter_map(|t| self.render_table(t))
                        .collect();
                    Ok(Resp::json(StatusCode::OK, json!({ "value": value })))
                }
                Method::POST => self.create_table(ctx, &body_of(req)?),
                _ => Err(not_allowed(req, path)),
            };
        }
        let (key, tail) = split_paren(rest)
            .ok_or_else(|| ODataError::bad_request(codes::ODATA, format!("Bad path '{path}'.")))?;
        let table = self.table_by_key(key)?;
        match (tail, &req.method) {
            ("", &Method::GET) => Ok(Resp::json(
                StatusCode::OK,
                self.render_table(table).unwrap_or(Value::Null),
            )),
            ("", &Method::PUT) => {
                let body = body_of(req)?;
                let meta = self.tables.get_mut(&table.logicalname).expect("found");
                if let Some(v) = body.get("ChangeTrackingEnabled").and_then(Value::as_bool) {
                    meta.change_tracking = v;
                }
                if let Some(v) = body.get("HasActivities").and_then(Value::as_bool) {
                    meta.has_activities = v;
                }
                Ok(Resp::empty(StatusCode::NO_CONTENT))
            }
            ("/Attributes", &Method::POST) => self.create_column(ctx, table, &body_of(req)?),
            ("/Keys", &Method::GET) => {
                let value: Vec<Value> = self
                    .keys
                    .iter()
                    .filter(|(_, k)| k.table == table.logicalname)
                    .map(|(name, k)| render_key(name, k))
                    .collect();
                self.advance_key_jobs(&table.logicalname);
                Ok(Resp::json(StatusCode::OK, json!({ "value": value })))
            }
            ("/Keys", &Method::POST) => self.create_key(ctx, table, &body_of(req)?),
            (t, &Method::GET) if t.starts_with("/Attributes(") => {
                let (k, _) = split_paren(t.trim_start_matches("/Attributes")).unwrap_or(("", ""));
                let name = named_key(k, "LogicalName").unwrap_or_default();
                let known = table.column(&name).is_some()
                    || table.lookup(&name).is_some()
                    || name == table.primaryid;
                if !known || !self.has_column(&table.logicalname, &name) {
                    return Err(ODataError::new(
                        StatusCode::NOT_FOUND,
                        codes::NOT_FOUND,
                        format!(
                            "Could not find attribute with name '{name}' on entity '{}'.",
                            table.logicalname
                        ),
                    ));
                }
                Ok(Resp::json(
                    StatusCode::OK,
                    json!({
                        "MetadataId": stable_id("attribute", &format!("{}.{name}", table.logicalname)),
                        "LogicalName": name,
                        "EntityLogicalName": table.logicalname,
                    }),
                ))
            }
            _ => Err(not_allowed(req, path)),
        }
    }

    fn table_by_key(&self, key: &str) -> Result<&'static Table, ODataError> {
        let schema = Schema::get();
        let found = match named_key(key, "LogicalName") {
            Some(name) => schema.table(&name),
            None => Uuid::parse_str(key).ok().and_then(|id| {
                self.tables
                    .iter()
                    .find(|(_, m)| m.id == id)
                    .and_then(|(n, _)| schema.table(n))
            }),
        };
        match found {
            Some(t) if self.has_table(&t.logicalname) => Ok(t),
            _ => Err(ODataError::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!("Could not find entity with key {key}."),
            )),
        }
    }

    fn render_table(&self, t: &Table) -> Option<Value> {
        let m = self.tables.get(&t.logicalname)?;
        Some(json!({
            "MetadataId": m.id,
            "LogicalName": t.logicalname,
            "SchemaName": t.schemaname,
            "EntitySetName": t.entitysetname,
            "PrimaryIdAttribute": t.primaryid,
            "PrimaryNameAttribute": t.primaryname,
            "IsActivity": t.activity,
            "HasActivities": m.has_activities,
            "IsCustomEntity": !t.standard,
            "OwnershipType": if t.user_owned() { "UserOwned" } else { "OrganizationOwned" },
            "ChangeTrackingEnabled": m.change_tracking,
        }))
    }

    fn create_table(&mut self, ctx: &Ctx, body: &Map<String, Value>) -> Result<Resp, ODataError> {
        let schema_name = text(body, "SchemaName")?;
        let logical = schema_name.to_ascii_lowercase();
        let t = Schema::get().table(&logical).filter(|t| !t.standard).ok_or_else(|| {
            ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("The sandbox only creates the custom tables of tgb-solution.json, not '{schema_name}'."),
            )
        })?;
        if self.has_table(&logical) {
            return Err(ODataError::bad_request(
                codes::DUPLICATE,
                format!("An entity with the name {schema_name} already exists."),
            ));
        }
        let is_activity = body.get("IsActivity").and_then(Value::as_bool) == Some(true);
        if is_activity != t.activity {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("IsActivity of {schema_name} must be {}.", t.activity),
            ));
        }
        let ownership = body
            .get("OwnershipType")
            .and_then(Value::as_str)
            .unwrap_or("UserOwned");
        let expected = if t.user_owned() {
            "UserOwned"
        } else {
            "OrganizationOwned"
        };
        if ownership != expected {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("OwnershipType of {schema_name} must be {expected}."),
            ));
        }
        let primary = body
            .get("Attributes")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("IsPrimaryName").and_then(Value::as_bool) == Some(true))
            })
            .and_then(|a| a.get("SchemaName"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ODataError::bad_request(
                    codes::INVALID_ARGUMENT,
                    "A new table needs its primary name column in Attributes (IsPrimaryName: true).",
                )
            })?;
        if !primary.eq_ignore_ascii_case(&t.primaryname) {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!(
                    "The primary name column of {schema_name} is {}, not {primary}.",
                    t.primaryname
                ),
            ));
        }
        let id = stable_id("table", &logical);
        self.tables.insert(
            logical.clone(),
            TableMeta {
                id,
                change_tracking: body
                    .get("ChangeTrackingEnabled")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                has_activities: body
                    .get("HasActivities")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
        );
        if is_custom(&t.primaryname) {
            self.columns
                .insert((logical.clone(), t.primaryname.clone()));
        }
        Ok(created(ctx, &format!("EntityDefinitions({id})")))
    }

    fn create_column(
        &mut self,
        ctx: &Ctx,
        table: &Table,
        body: &Map<String, Value>,
    ) -> Result<Resp, ODataError> {
        let schema_name = text(body, "SchemaName")?;
        let logical = schema_name.to_ascii_lowercase();
        let col = table.column(&logical).filter(|_| is_custom(&logical)).ok_or_else(|| {
            ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!(
                    "The sandbox only creates the tgb_ columns of tgb-solution.json; '{schema_name}' is not one of {} (lookups are created with RelationshipDefinitions).",
                    table.logicalname
                ),
            )
        })?;
        if self.has_column(&table.logicalname, &logical) {
            return Err(ODataError::bad_request(
                codes::DUPLICATE,
                format!(
                    "An attribute with the name {schema_name} already exists on {}.",
                    table.logicalname
                ),
            ));
        }
        let odata_type = body
            .get("@odata.type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim_start_matches('#')
            .trim_start_matches("Microsoft.Dynamics.CRM.");
        let expected = match col.kind {
            ColumnType::String => "StringAttributeMetadata",
            ColumnType::Memo => "MemoAttributeMetadata",
            ColumnType::Integer => "IntegerAttributeMetadata",
            ColumnType::Decimal => "DecimalAttributeMetadata",
            ColumnType::Money => "MoneyAttributeMetadata",
            ColumnType::Boolean => "BooleanAttributeMetadata",
            ColumnType::Datetime => "DateTimeAttributeMetadata",
            ColumnType::Picklist => "PicklistAttributeMetadata",
            ColumnType::State | ColumnType::Status => "",
        };
        if odata_type != expected {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!("{schema_name} must be created as {expected}, not '{odata_type}'."),
            ));
        }
        if col.kind == ColumnType::Picklist {
            let values: BTreeSet<i64> = body
                .get("OptionSet")
                .and_then(|o| o.get("Options"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.get("Value").and_then(Value::as_i64))
                        .collect()
                })
                .unwrap_or_default();
            let want: BTreeSet<i64> = col.options.iter().map(|o| o.value).collect();
            if values != want {
                return Err(ODataError::bad_request(
                    codes::INVALID_ARGUMENT,
                    format!("The choices of {schema_name} must be {want:?}, not {values:?}."),
                ));
            }
        }
        self.columns
            .insert((table.logicalname.clone(), logical.clone()));
        let id = stable_id("attribute", &format!("{}.{logical}", table.logicalname));
        Ok(created(
            ctx,
            &format!(
                "EntityDefinitions(LogicalName='{}')/Attributes({id})",
                table.logicalname
            ),
        ))
    }

    fn relationship_definitions(
        &mut self,
        ctx: &Ctx,
        req: &Req<'_>,
        path: &str,
    ) -> Result<Resp, ODataError> {
        let rest = path
            .strip_prefix("RelationshipDefinitions")
            .unwrap_or_default();
        if rest.is_empty() {
            if req.method != Method::POST {
                return Err(not_allowed(req, path));
            }
            return self.create_relationship(ctx, &body_of(req)?);
        }
        let (key, _) = split_paren(rest)
            .ok_or_else(|| ODataError::bad_request(codes::ODATA, format!("Bad path '{path}'.")))?;
        let name = named_key(key, "SchemaName").unwrap_or_default();
        match self.relationships.get(&name) {
            Some(r) if req.method == Method::GET => Ok(Resp::json(StatusCode::OK, r.clone())),
            Some(_) => Err(not_allowed(req, path)),
            None => Err(ODataError::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!("Could not find relationship with SchemaName '{name}'."),
            )),
        }
    }

    fn create_relationship(
        &mut self,
        ctx: &Ctx,
        body: &Map<String, Value>,
    ) -> Result<Resp, ODataError> {
        let bad = |m: String| ODataError::bad_request(codes::INVALID_ARGUMENT, m);
        let schema_name = text(body, "SchemaName")?;
        let referenced = text(body, "ReferencedEntity")?;
        let referencing = text(body, "ReferencingEntity")?;
        let lookup_name = body
            .get("Lookup")
            .and_then(|l| l.get("SchemaName"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad("A one-to-many relationship needs Lookup.SchemaName.".into()))?;
        if self.relationships.contains_key(&schema_name) {
            return Err(ODataError::bad_request(
                codes::DUPLICATE,
                format!("A relationship named {schema_name} already exists."),
            ));
        }
        for t in [&referenced, &referencing] {
            if !self.has_table(t) {
                return Err(bad(format!("The table '{t}' does not exist.")));
            }
        }
        let table = Schema::get().table(&referencing).expect("exists");
        let logical = lookup_name.to_ascii_lowercase();
        let lookup = table.lookup(&logical).filter(|_| is_custom(&logical)).ok_or_else(|| {
            bad(format!(
                "The sandbox only creates the tgb_ lookups of tgb-solution.json; '{lookup_name}' is not one of {referencing}."
            ))
        })?;
        let target = lookup
            .targets
            .iter()
            .find(|t| t.table == referenced)
            .ok_or_else(|| bad(format!("{lookup_name} does not point to {referenced}.")))?;
        let nav = body
            .get("ReferencingEntityNavigationPropertyName")
            .and_then(Value::as_str)
            .unwrap_or(lookup_name);
        if nav != target.navigation {
            return Err(bad(format!(
                "ReferencingEntityNavigationPropertyName '{nav}' differs from '{}', the name tg-bridge binds with.",
                target.navigation
            )));
        }
        if self.has_column(&referencing, &logical) {
            return Err(ODataError::bad_request(
                codes::DUPLICATE,
                format!(
                    "An attribute with the name {lookup_name} already exists on {referencing}."
                ),
            ));
        }
        self.columns.insert((referencing.clone(), logical));
        let id = stable_id("relationship", &schema_name);
        let mut stored = body.clone();
        stored.insert("MetadataId".into(), json!(id));
        self.relationships
            .insert(schema_name, Value::Object(stored));
        Ok(created(ctx, &format!("RelationshipDefinitions({id})")))
    }

    fn create_key(
        &mut self,
        ctx: &Ctx,
        table: &Table,
        body: &Map<String, Value>,
    ) -> Result<Resp, ODataError> {
        let schema_name = text(body, "SchemaName")?;
        let columns: Vec<String> = body
            .get("KeyAttributes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default();
        if self.keys.contains_key(&schema_name) {
            return Err(ODataError::bad_request(
                codes::DUPLICATE,
                format!("A key with the name {schema_name} already exists."),
            ));
        }
        let known = table.keys.iter().any(|k| {
            k.schemaname == schema_name && {
                let (mut a, mut b) = (k.columns.clone(), columns.clone());
                a.sort();
                b.sort();
                a == b
            }
        });
        if !known {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!(
                    "The sandbox only creates the keys of tgb-solution.json; {schema_name} ({}) is not one of {}.",
                    columns.join(", "),
                    table.logicalname
                ),
            ));
        }
        if let Some(c) = columns
            .iter()
            .find(|c| !self.has_column(&table.logicalname, c))
        {
            return Err(ODataError::bad_request(
                codes::INVALID_ARGUMENT,
                format!(
                    "The key attribute '{c}' does not exist on {}.",
                    table.logicalname
                ),
            ));
        }
        let id = stable_id("key", &schema_name);
        self.keys.insert(
            schema_name.clone(),
            KeyMeta {
                id,
                table: table.logicalname.clone(),
                columns,
                status: KEY_PENDING,
            },
        );
        Ok(created(
            ctx,
            &format!(
                "EntityDefinitions(LogicalName='{}')/Keys({id})",
                table.logicalname
            ),
        ))
    }

    /// The index jobs move one step each time the keys are read (Pending → InProgress →
    /// Active, or Failed for a key made to fail).
    fn advance_key_jobs(&mut self, table: &str) {
        for (name, k) in self.keys.iter_mut().filter(|(_, k)| k.table == table) {
            k.status = match k.status {
                KEY_PENDING => KEY_IN_PROGRESS,
                KEY_IN_PROGRESS if self.failing_keys.contains(name) => KEY_FAILED,
                KEY_IN_PROGRESS => KEY_ACTIVE,
                s => s,
            };
        }
    }

    fn registration_rows(
        &mut self,
        ctx: &Ctx,
        req: &Req<'_>,
        set: &'static str,
        idname: &'static str,
        key: Option<&str>,
    ) -> Result<Resp, ODataError> {
        match (key, &req.method) {
            (None, &Method::GET) => {
                let filters = parse_eq_filter(req.query)?;
                let value: Vec<Value> = self
                    .rows
                    .get(set)
                    .map(|rows| {
                        rows.values()
                            .filter(|r| filters.iter().all(|(k, v)| field_eq(r, k, v)))
                            .map(|r| Value::Object(r.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Resp::json(StatusCode::OK, json!({ "value": value })))
            }
            (None, &Method::POST) => {
                let body = body_of(req)?;
                let row = self.new_registration_row(set, idname, body)?;
                let id = value_id(&row, idname).expect("set");
                self.rows.entry(set).or_default().insert(id, row);
                if set.starts_with("serviceendpoint") || set == "sdkmessageprocessingsteps" {
                    self.hooks_dirty = true;
                }
                Ok(created(ctx, &format!("{set}({id})")))
            }
            (None, _) => Err(not_allowed(req, set)),
            (Some(k), m) => {
                let id = Uuid::parse_str(k).map_err(|_| {
                    ODataError::bad_request(codes::ODATA, format!("'{k}' is not a GUID."))
                })?;
                let rows = self.rows.entry(set).or_default();
                let not_found = || {
                    ODataError::new(
                        StatusCode::NOT_FOUND,
                        codes::NOT_FOUND,
                        format!("{set} With Id = {id} Does Not Exist"),
                    )
                };
                match *m {
                    Method::GET => rows
                        .get(&id)
                        .map(|r| Resp::json(StatusCode::OK, Value::Object(r.clone())))
                        .ok_or_else(not_found),
                    Method::DELETE
                        if ![
                            "sdkmessages",
                            "sdkmessagefilters",
                            "privileges",
                            "businessunits",
                        ]
                        .contains(&set) =>
                    {
                        rows.remove(&id).ok_or_else(not_found)?;
                        self.hooks_dirty = true;
                        Ok(Resp::empty(StatusCode::NO_CONTENT))
                    }
                    Method::PATCH if set == "serviceendpoints" => {
                        let body = body_of(req)?;
                        let row = rows.get_mut(&id).ok_or_else(not_found)?;
                        for (k, v) in body {
                            row.insert(k, v);
                        }
                        self.hooks_dirty = true;
                        Ok(Resp::empty(StatusCode::NO_CONTENT))
                    }
                    _ => Err(not_allowed(req, set)),
                }
            }
        }
    }

    /// `RetrieveUserPrivileges`: every privilege but those revoked, Global depth.
    fn user_privileges(&self, id: &str) -> Result<Resp, ODataError> {
        let user = Uuid::parse_str(id).map_err(|_| {
            ODataError::bad_request(codes::INVALID_ARGUMENT, format!("'{id}' is not a GUID."))
        })?;
        let revoked = self.revoked.get(&user);
        let list: Vec<Value> = self
            .rows
            .get("privileges")
            .map(|rows| {
                rows.values()
                    .filter(|r| {
                        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                        !revoked.is_some_and(|set| set.contains(name))
                    })
                    .map(|r| {
                        json!({
                            "PrivilegeId": r.get("privilegeid"),
                            "PrivilegeName": r.get("name"),
                            "Depth": "Global",
                            "BusinessUnitId": ROOT_BUSINESS_UNIT,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Resp::json(
            StatusCode::OK,
            json!({ "RolePrivileges": list }),
        ))
    }

    /// `roles(<id>)/Microsoft.Dynamics.CRM.AddPrivilegesRole` with `Privileges`:
    /// `[{PrivilegeId, Depth, BusinessUnitId}]`.
    fn role_action(&mut self, req: &Req<'_>, id: &str, action: &str) -> Result<Resp, ODataError> {
        let bad = |m: String| ODataError::bad_request(codes::INVALID_ARGUMENT, m);
        let id = Uuid::parse_str(id).map_err(|_| bad(format!("'{id}' is not a GUID.")))?;
        if req.method != Method::POST
            || action.trim_start_matches("Microsoft.Dynamics.CRM.") != "AddPrivilegesRole"
        {
            return Err(not_allowed(req, action));
        }
        let body = body_of(req)?;
        let mut granted = Vec::new();
        for p in body
            .get("Privileges")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("AddPrivilegesRole needs Privileges.".into()))?
        {
            let pid = p
                .get("PrivilegeId")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .filter(|pid| {
                    self.rows
                        .get("privileges")
                        .is_some_and(|r| r.contains_key(pid))
                })
                .ok_or_else(|| bad(format!("Unknown privilege in {p}.")))?;
            let depth = p.get("Depth").and_then(Value::as_str).unwrap_or_default();
            if !["Basic", "Local", "Deep", "Global"].contains(&depth) {
                return Err(bad(format!(
                    "Depth '{depth}' is not Basic, Local, Deep or Global."
                )));
            }
            granted.push(json!({"PrivilegeId": pid, "Depth": depth}));
        }
        let role = self
            .rows
            .get_mut("roles")
            .and_then(|r| r.get_mut(&id))
            .ok_or_else(|| {
                ODataError::new(
                    StatusCode::NOT_FOUND,
                    codes::NOT_FOUND,
                    format!("role With Id = {id} Does Not Exist"),
                )
            })?;
        let list = role
            .entry("privileges")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = list {
            a.extend(granted);
        }
        Ok(Resp::empty(StatusCode::NO_CONTENT))
    }

    fn new_registration_row(
        &self,
        set: &'static str,
        idname: &'static str,
        body: Map<String, Value>,
    ) -> Result<Map<String, Value>, ODataError> {
        let bad = |m: String| ODataError::bad_request(codes::INVALID_ARGUMENT, m);
        let mut row = Map::new();
        for (k, v) in body {
            match k.strip_suffix("@odata.bind") {
                Some(nav) => {
                    let target = v.as_str().unwrap_or_default();
                    let (tset, tid) = target
                        .trim_start_matches('/')
                        .split_once('(')
                        .map(|(s, i)| (s, i.trim_end_matches(')')))
                        .ok_or_else(|| bad(format!("'{target}' is not an entity reference.")))?;
                    let tid = Uuid::parse_str(tid)
                        .map_err(|_| bad(format!("'{target}' is not an entity reference.")))?;
                    if !self.rows.get(tset).is_some_and(|r| r.contains_key(&tid)) {
                        return Err(ODataError::new(
                            StatusCode::NOT_FOUND,
                            codes::NOT_FOUND,
                            format!("{tset} With Id = {tid} Does Not Exist"),
                        ));
                    }
                    let column = match nav {
                        "eventhandler_serviceendpoint" => "eventhandler",
                        n => n,
                    };
                    row.insert(format!("_{column}_value"), json!(tid));
                }
                None => {
                    row.insert(k, v);
                }
            }
        }
        match set {
            "serviceendpoints" => {
                text(&row, "name")?;
                let url = text(&row, "url")?;
                if reqwest::Url::parse(&url).is_err() {
                    return Err(bad(format!("'{url}' is not an absolute URL.")));
                }
            }
            "sdkmessageprocessingsteps" => {
                let message = value_id(&row, "_sdkmessageid_value")
                    .ok_or_else(|| bad("A step needs sdkmessageid@odata.bind.".into()))?;
                let filter = value_id(&row, "_sdkmessagefilterid_value")
                    .and_then(|f| self.rows.get("sdkmessagefilters").and_then(|r| r.get(&f)))
                    .ok_or_else(|| bad("A step needs sdkmessagefilterid@odata.bind.".into()))?;
                if value_id(filter, "_sdkmessageid_value") != Some(message) {
                    return Err(bad(
                        "The step's message filter belongs to another message.".into()
                    ));
                }
                if value_id(&row, "_eventhandler_value").is_none() {
                    return Err(bad(
                        "A step needs its event handler (eventhandler_serviceendpoint@odata.bind)."
                            .into(),
                    ));
                }
                let stage = row.get("stage").and_then(Value::as_i64);
                let mode = row.get("mode").and_then(Value::as_i64);
                if stage != Some(40) || mode != Some(1) {
                    return Err(bad("A webhook step of the sandbox is asynchronous: stage 40 (PostOperation), mode 1.".into()));
                }
            }
            "sdkmessageprocessingstepimages" => {
                let step = value_id(&row, "_sdkmessageprocessingstepid_value")
                    .and_then(|s| {
                        self.rows
                            .get("sdkmessageprocessingsteps")
                            .and_then(|r| r.get(&s))
                    })
                    .ok_or_else(|| {
                        bad("An image needs sdkmessageprocessingstepid@odata.bind.".into())
                    })?;
                let message = value_id(step, "_sdkmessageid_value")
                    .and_then(|m| self.rows.get("sdkmessages").and_then(|r| r.get(&m)))
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let image_type = row.get("imagetype").and_then(Value::as_i64);
                if !matches!(image_type, Some(0..=2)) {
                    return Err(bad(
                        "imagetype is 0 (PreImage), 1 (PostImage) or 2 (Both).".into()
                    ));
                }
                if image_type != Some(0) && (message == "Delete" || message == "Close") {
                    return Err(bad(format!("A {message} step has no post image.")));
                }
                text(&row, "entityalias")?;
            }
            "roles" => {
                text(&row, "name")?;
                if value_id(&row, "_businessunitid_value").is_none() {
                    return Err(bad("A role needs businessunitid@odata.bind.".into()));
                }
            }
            _ => return Err(bad(format!("{set} rows are not created here."))),
        }
        row.insert(idname.into(), json!(Uuid::new_v4()));
        Ok(row)
    }
}

fn render_key(name: &str, k: &KeyMeta) -> Value {
    json!({
        "MetadataId": k.id,
        "SchemaName": name,
        "LogicalName": name.to_ascii_lowercase(),
        "EntityLogicalName": k.table,
        "KeyAttributes": k.columns,
        "EntityKeyIndexStatus": k.status,
    })
}

/// `<settings><setting name="x-api-key" value="…" /></settings>` → (name, value).
fn parse_auth_setting(xml: &str) -> Option<(String, String)> {
    let attr = |name: &str| -> Option<String> {
        let start = xml.find(&format!("{name}=\""))? + name.len() + 2;
        let end = xml[start..].find('"')? + start;
        Some(
            xml[start..end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        )
    };
    Some((attr("name")?, attr("value")?))
}

fn value_id(row: &Map<String, Value>, name: &str) -> Option<Uuid> {
    row.get(name)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn field_eq(row: &Map<String, Value>, field: &str, want: &str) -> bool {
    match row.get(field) {
        Some(Value::String(s)) => s.eq_ignore_ascii_case(want),
        Some(Value::Null) | None => want == "null",
        Some(Value::Number(n)) => want.parse::<f64>().ok() == n.as_f64(),
        Some(Value::Bool(b)) => want.parse::<bool>().ok() == Some(*b),
        Some(_) => false,
    }
}

/// `$filter=a eq 'x' and b eq 5`.
fn parse_eq_filter(query: Option<&str>) -> Result<Vec<(String, String)>, ODataError> {
    let Some(q) = query else { return Ok(vec![]) };
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if k != "$filter" {
            continue;
        }
        for part in v.split(" and ") {
            let (field, value) = part.trim().split_once(" eq ").ok_or_else(|| {
                ODataError::bad_request(
                    codes::ODATA,
                    format!("The sandbox filters these tables with 'name eq value' joined by 'and', not '{part}'."),
                )
            })?;
            let value = value.trim();
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map(|v| v.replace("''", "'"))
                .unwrap_or_else(|| value.to_owned());
            out.push((field.trim().to_owned(), value));
        }
    }
    Ok(out)
}

/// `(key)rest` → (key, rest).
fn split_paren(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('(')?;
    let end = s.find(')')?;
    Some((&s[..end], &s[end + 1..]))
}

/// `LogicalName='x'` → `x`.
fn named_key(key: &str, name: &str) -> Option<String> {
    let (k, v) = key.split_once('=')?;
    (k.trim() == name).then(|| v.trim().trim_matches('\'').to_ascii_lowercase())
}

fn text(body: &Map<String, Value>, name: &str) -> Result<String, ODataError> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ODataError::bad_request(codes::INVALID_ARGUMENT, format!("'{name}' is required."))
        })
}

fn body_of(req: &Req<'_>) -> Result<Map<String, Value>, ODataError> {
    match serde_json::from_slice::<Value>(req.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ODataError::bad_request(
            codes::ODATA,
            "The request body must be a JSON object.",
        )),
    }
}

fn created(ctx: &Ctx, rel: &str) -> Resp {
    let mut r = Resp::empty(StatusCode::NO_CONTENT);
    r.headers
        .push(("OData-EntityId".into(), format!("{}/{rel}", ctx.base)));
    r
}

fn not_allowed(req: &Req<'_>, path: &str) -> ODataError {
    ODataError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "",
        format!(
            "The HTTP method '{}' is not allowed on '{path}'.",
            req.method
        ),
    )
}
