//! `tgb setup dataverse`: applies `proto/dataverse/tgb-solution.json` to a Dataverse
//! organisation through the Web API metadata endpoints, instead of the hand steps of
//! `proto/dataverse/README.md`.
//!
//! In order: the custom tables (`EntityDefinitions`), the `tgb_` columns (`…/Attributes`), the
//! `tgb_` lookups (`RelationshipDefinitions`, one-to-many with the file's navigation name), the
//! alternate keys (`…/Keys`, then waits until each `EntityKeyIndexStatus` is Active; a Failed
//! index job is an error), change tracking on the polled tables (`ChangeTrackingEnabled`, PUT
//! of the table definition), and, given the adapter's public URL, the webhook service endpoint
//! (`serviceendpoints`, contract Webhook, the key in the adapter's header) with asynchronous
//! post-operation steps on Create, Update and Delete of the tables the adapter listens to and
//! on `Close` of incident (`sdkmessageprocessingsteps`), each Create and Update step with a
//! post image of all columns (`sdkmessageprocessingstepimages`).
//!
//! Every step first reads what exists, so a second run changes nothing and says so; a dry run
//! only reads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tgb_clients::dataverse::{DataverseClient, DataverseError};
use tgb_sandbox_dataverse::schema::{Column, ColumnType, Lookup, SolutionFile, Table};

/// The tables whose changes the dynamics-adapter is told of by webhook (Create, Update,
/// Delete), as `proto/dataverse/README.md` lists them.
pub const WEBHOOK_TABLES: &[&str] = &[
    "incident",
    "annotation",
    "account",
    "contact",
    "salesorder",
    "invoice",
    "tgb_exception",
    "tgb_partnerkpi",
];

/// The service endpoint's name (how a second run finds it).
pub const ENDPOINT_NAME: &str = "tg-bridge dynamics-adapter";

/// The alias of the post image the adapter reads (`PostEntityImages`).
pub const IMAGE_ALIAS: &str = "PostImage";

/// The privileges the application user needs, per table, for the flows of the
/// dynamics-adapter (`services/dynamics-adapter/src/inbound.rs` writes, `detect.rs` reads).
pub const PRIVILEGES: &[(&str, &[&str])] = &[
    (
        "incident",
        &["Create", "Read", "Write", "Append", "AppendTo"],
    ),
    ("incidentresolution", &["Create", "Read", "Append"]),
    ("annotation", &["Create", "Read", "Write", "Append"]),
    ("tgb_partnermessage", &["Create", "Read", "Write", "Append"]),
    ("account", &["Create", "Read", "Write", "AppendTo"]),
    (
        "contact",
        &["Create", "Read", "Write", "Append", "AppendTo"],
    ),
    ("invoice", &["Read", "Write", "Append", "AppendTo"]),
    ("salesorder", &["Read", "AppendTo"]),
    ("tgb_exception", &["Read", "Write", "AppendTo"]),
    ("tgb_partnerkpi", &["Create", "Read", "Write", "Append"]),
    ("task", &["Read"]),
];

/// What `tgb setup dataverse` does besides the schema.
#[derive(Clone, Debug, Default)]
pub struct SetupOptions {
    /// Only read and print the plan.
    pub dry_run: bool,
    /// The dynamics-adapter's `/webhooks/dataverse` as Dataverse reaches it; `None`: no
    /// webhook registration.
    pub webhook_url: Option<String>,
    /// The header carrying the key (the adapter's `webhook_key_header`).
    pub webhook_header: String,
    /// The key (`TGB_DATAVERSE_WEBHOOK_KEY`); never printed.
    pub webhook_key: Option<String>,
    /// How long to wait for the key index jobs.
    pub key_timeout: Duration,
    /// Create a security role of this name with [`PRIVILEGES`] (Organization depth), unless
    /// a role of that name exists.
    pub create_role: Option<String>,
}

/// What one step found or did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Already as described.
    Exists,
    /// Created (dry run: would be created).
    Create,
    /// Changed (dry run: would be changed).
    Update,
}

/// One item of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// `table`, `column`, `lookup`, `key`, `change_tracking`, `service_endpoint`, `step`,
    /// `image`.
    pub kind: &'static str,
    /// What it is about (`incident.tgb_tgcaseid`).
    pub target: String,
    /// What was (or would be) done.
    pub action: Action,
    /// More about it (a key's index status).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A table's privileges for the role.
#[derive(Clone, Debug, Serialize)]
pub struct TablePrivileges {
    /// Table logical name.
    pub table: String,
    /// Privilege names as Dataverse spells them (`prvCreateincident`, …), Organization depth.
    pub privileges: Vec<String>,
}

/// The plan (dry run) or what was done.
#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Every step in order.
    pub steps: Vec<Step>,
    /// Steps that change (or would change) something.
    pub changes: usize,
    /// What the application user's security role needs.
    pub role_privileges: Vec<TablePrivileges>,
}

/// The privileges the role needs, by Dataverse privilege name.
pub fn role_privileges() -> Vec<TablePrivileges> {
    PRIVILEGES
        .iter()
        .map(|(table, ps)| TablePrivileges {
            table: (*table).to_owned(),
            privileges: ps.iter().map(|p| format!("prv{p}{table}")).collect(),
        })
        .collect()
}

struct Run<'a> {
    dv: &'a DataverseClient,
    opts: &'a SetupOptions,
    solution: String,
    steps: Vec<Step>,
}

fn is_missing(e: &DataverseError) -> bool {
    matches!(e, DataverseError::NotFound { .. })
}

fn label(text: &str) -> Value {
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [{
            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
            "Label": text,
            "LanguageCode": 1033
        }]
    })
}

fn required_level(required: bool) -> Value {
    json!({
        "Value": if required { "ApplicationRequired" } else { "None" },
        "CanBeChanged": true,
        "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings"
    })
}

fn display_name(logical: &str, schema: Option<&str>) -> String {
    let s = schema.unwrap_or(logical);
    s.strip_prefix("tgb_").unwrap_or(s).to_owned()
}

/// The `…AttributeMetadata` body of a column ("Create and update column definitions").
pub fn column_body(c: &Column) -> Value {
    let schema = c
        .schemaname
        .clone()
        .unwrap_or_else(|| c.logicalname.clone());
    let mut body = json!({
        "SchemaName": schema,
        "DisplayName": label(&display_name(&c.logicalname, c.schemaname.as_deref())),
        "Description": label(c.description.as_deref().unwrap_or("")),
        "RequiredLevel": required_level(c.required),
    });
    let extra = match c.kind {
        ColumnType::String => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "MaxLength": c.maxlength.unwrap_or(100),
            "FormatName": {"Value": "Text"},
        }),
        ColumnType::Memo => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata",
            "MaxLength": c.maxlength.unwrap_or(2000),
            "Format": "TextArea",
        }),
        ColumnType::Integer => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata",
            "Format": "None",
            "MinValue": -2147483648i64,
            "MaxValue": 2147483647i64,
        }),
        ColumnType::Decimal => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.DecimalAttributeMetadata",
            "Precision": 2,
            "MinValue": -100000000000.0,
            "MaxValue": 100000000000.0,
        }),
        ColumnType::Money => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
            "PrecisionSource": 2,
        }),
        ColumnType::Boolean => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
            "DefaultValue": false,
            "OptionSet": {
                "@odata.type": "Microsoft.Dynamics.CRM.BooleanOptionSetMetadata",
                "TrueOption": {"Value": 1, "Label": label("Yes")},
                "FalseOption": {"Value": 0, "Label": label("No")},
                "OptionSetType": "Boolean"
            }
        }),
        ColumnType::Datetime => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
            "Format": "DateAndTime",
            "DateTimeBehavior": {"Value": "UserLocal"},
        }),
        ColumnType::Picklist | ColumnType::State | ColumnType::Status => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            "OptionSet": {
                "@odata.type": "Microsoft.Dynamics.CRM.OptionSetMetadata",
                "IsGlobal": false,
                "OptionSetType": "Picklist",
                "Options": c.options.iter().map(|o| json!({"Value": o.value, "Label": label(&o.label)})).collect::<Vec<_>>(),
            }
        }),
    };
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// The `EntityMetadata` body of a custom table, with its primary name column.
pub fn table_body(t: &Table, has_activities: bool) -> Value {
    let primary = t.column(&t.primaryname);
    let primary_schema = if t.activity {
        "Subject".to_owned()
    } else {
        primary
            .and_then(|c| c.schemaname.clone())
            .unwrap_or_else(|| t.primaryname.clone())
    };
    let name = display_name(&t.logicalname, Some(&t.schemaname));
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": t.schemaname,
        "DisplayName": label(&name),
        "DisplayCollectionName": label(&format!("{name}s")),
        "Description": label(t.description.as_deref().unwrap_or("")),
        "OwnershipType": if t.user_owned() { "UserOwned" } else { "OrganizationOwned" },
        "IsActivity": t.activity,
        "HasActivities": has_activities,
        "HasNotes": true,
        "Attributes": [{
            "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "AttributeType": "String",
            "AttributeTypeName": {"Value": "StringType"},
            "SchemaName": primary_schema,
            "IsPrimaryName": true,
            "MaxLength": primary.and_then(|c| c.maxlength).unwrap_or(200),
            "FormatName": {"Value": "Text"},
            "DisplayName": label(if t.activity { "Subject" } else { "Name" }),
            "RequiredLevel": required_level(true),
        }]
    })
}

/// The `OneToManyRelationshipMetadata` body creating a custom lookup.
pub fn relationship_body(t: &Table, l: &Lookup, target: &str, navigation: &str) -> Value {
    let schema = l
        .schemaname
        .clone()
        .unwrap_or_else(|| l.logicalname.clone());
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "SchemaName": relationship_name(t, l, target),
        "ReferencedEntity": target,
        "ReferencingEntity": t.logicalname,
        "ReferencingEntityNavigationPropertyName": navigation,
        "CascadeConfiguration": {
            "Assign": "NoCascade", "Delete": "RemoveLink", "Merge": "NoCascade",
            "Reparent": "NoCascade", "Share": "NoCascade", "Unshare": "NoCascade"
        },
        "Lookup": {
            "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
            "AttributeType": "Lookup",
            "AttributeTypeName": {"Value": "LookupType"},
            "SchemaName": schema,
            "DisplayName": label(&display_name(&l.logicalname, l.schemaname.as_deref())),
            "Description": label(l.description.as_deref().unwrap_or("")),
            "RequiredLevel": required_level(l.required),
        }
    })
}

fn relationship_name(t: &Table, l: &Lookup, target: &str) -> String {
    format!("tgb_{target}_{}_{}", t.logicalname, l.logicalname)
}

fn entity(t: &str) -> String {
    format!("EntityDefinitions(LogicalName='{t}')")
}

fn id_from_entity_url(answer_url: Option<&str>) -> Option<String> {
    answer_url
        .and_then(|u| u.rsplit_once('('))
        .map(|(_, id)| id.trim_end_matches(')').to_owned())
}

impl Run<'_> {
    fn step(&mut self, kind: &'static str, target: String, action: Action, detail: String) {
        self.steps.push(Step {
            kind,
            target,
            action,
            detail,
        });
    }

    async fn exists(&self, path: &str) -> anyhow::Result<Option<Value>> {
        match self.dv.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("GET {path}"))),
        }
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Option<String>> {
        let headers = [
            ("MSCRM.SolutionUniqueName", self.solution.clone()),
            ("MSCRM.MergeLabels", "true".to_owned()),
        ];
        let answer = self
            .dv
            .send(method.clone(), path, &headers, Some(body))
            .await
            .with_context(|| format!("{method} {path}"))?;
        Ok(id_from_entity_url(answer.entity_id.as_deref()))
    }

    async fn tables(&mut self, file: &SolutionFile) -> anyhow::Result<()> {
        for t in file.tables.iter().filter(|t| !t.standard) {
            let target = t.logicalname.clone();
            if self.exists(&entity(&t.logicalname)).await?.is_some() {
                self.step("table", target, Action::Exists, String::new());
                continue;
            }
            // A table others' activities can be regarding (the file's activity lookups).
            let has_activities = file.tables.iter().any(|a| {
                a.activity
                    && a.lookup("regardingobjectid")
                        .is_some_and(|l| l.targets.iter().any(|x| x.table == t.logicalname))
            });
            if !self.opts.dry_run {
                self.write(
                    Method::POST,
                    "EntityDefinitions",
                    &table_body(t, has_activities),
                )
                .await?;
            }
            self.step("table", target, Action::Create, String::new());
        }
        Ok(())
    }

    async fn columns(&mut self, file: &SolutionFile) -> anyhow::Result<()> {
        for t in &file.tables {
            let table_missing = self.opts.dry_run
                && !t.standard
                && self.exists(&entity(&t.logicalname)).await?.is_none();
            for c in t.columns.iter().filter(|c| {
                c.logicalname.starts_with("tgb_") && (t.standard || c.logicalname != t.primaryname)
            }) {
                let target = format!("{}.{}", t.logicalname, c.logicalname);
                let path = format!(
                    "{}/Attributes(LogicalName='{}')",
                    entity(&t.logicalname),
                    c.logicalname
                );
                if !table_missing && self.exists(&path).await?.is_some() {
                    self.step("column", target, Action::Exists, String::new());
                    continue;
                }
                if !self.opts.dry_run {
                    self.write(
                        Method::POST,
                        &format!("{}/Attributes", entity(&t.logicalname)),
                        &column_body(c),
                    )
                    .await?;
                }
                self.step("column", target, Action::Create, String::new());
            }
        }
        Ok(())
    }

    async fn lookups(&mut self, file: &SolutionFile) -> anyhow::Result<()> {
        for t in &file.tables {
            let table_missing = self.opts.dry_run
                && !t.standard
                && self.exists(&entity(&t.logicalname)).await?.is_none();
            for l in t
                .lookups
                .iter()
                .filter(|l| l.logicalname.starts_with("tgb_"))
            {
                let target = format!("{}.{}", t.logicalname, l.logicalname);
                let path = format!(
                    "{}/Attributes(LogicalName='{}')",
                    entity(&t.logicalname),
                    l.logicalname
                );
                if !table_missing && self.exists(&path).await?.is_some() {
                    self.step("lookup", target, Action::Exists, String::new());
                    continue;
                }
                let [to] = l.targets.as_slice() else {
                    bail!("{target}: a custom lookup with several targets is not created by setup");
                };
                if !self.opts.dry_run {
                    self.write(
                        Method::POST,
                        "RelationshipDefinitions",
                        &relationship_body(t, l, &to.table, &to.navigation),
                    )
                    .await?;
                }
                self.step(
                    "lookup",
                    target,
                    Action::Create,
                    format!("→ {} as {}", to.table, to.navigation),
                );
            }
        }
        Ok(())
    }

    async fn keys(&mut self, file: &SolutionFile) -> anyhow::Result<()> {
        let mut waiting = Vec::new();
        for t in file.tables.iter().filter(|t| !t.keys.is_empty()) {
            let existing = match self
                .exists(&format!("{}/Keys", entity(&t.logicalname)))
                .await?
            {
                Some(v) => v["value"].as_array().cloned().unwrap_or_default(),
                None => Vec::new(),
            };
            for k in &t.keys {
                let target = format!("{}.{}", t.logicalname, k.schemaname);
                let found = existing.iter().find(|x| {
                    x["SchemaName"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(&k.schemaname))
                });
                if let Some(found) = found {
                    let status = found["EntityKeyIndexStatus"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_owned();
                    if status != "Active" {
                        waiting.push((t.logicalname.clone(), k.schemaname.clone()));
                    }
                    self.step("key", target, Action::Exists, format!("index {status}"));
                    continue;
                }
                if !self.opts.dry_run {
                    let body = json!({
                        "SchemaName": k.schemaname,
                        "DisplayName": label(&k.schemaname),
                        "KeyAttributes": k.columns,
                    });
                    self.write(
                        Method::POST,
                        &format!("{}/Keys", entity(&t.logicalname)),
                        &body,
                    )
                    .await?;
                    waiting.push((t.logicalname.clone(), k.schemaname.clone()));
                }
                self.step(
                    "key",
                    target,
                    Action::Create,
                    "then wait until Active".into(),
                );
            }
        }
        if !self.opts.dry_run {
            self.wait_for_keys(waiting).await?;
        }
        Ok(())
    }

    /// Polls each key's `EntityKeyIndexStatus` until Active; Failed is an error.
    async fn wait_for_keys(&mut self, mut waiting: Vec<(String, String)>) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for (table, key) in waiting {
                let keys = self.dv.get(&format!("{}/Keys", entity(&table))).await?;
                let status = keys["value"]
                    .as_array()
                    .and_then(|a| {
                        a.iter().find(|x| {
                            x["SchemaName"]
                                .as_str()
                                .is_some_and(|s| s.eq_ignore_ascii_case(&key))
                        })
                    })
                    .and_then(|x| x["EntityKeyIndexStatus"].as_str())
                    .unwrap_or("missing")
                    .to_owned();
                match status.as_str() {
                    "Active" => {
                        if let Some(s) = self
                            .steps
                            .iter_mut()
                            .rev()
                            .find(|s| s.kind == "key" && s.target == format!("{table}.{key}"))
                        {
                            s.detail = "index Active".into();
                        }
                    }
                    "Failed" => bail!(
                        "the index job of alternate key {key} on {table} failed (EntityKeyIndexStatus Failed): \
                         rows with duplicate or invalid key values exist; fix them, then reactivate the key \
                         (ReactivateEntityKey) and run setup again"
                    ),
                    _ => still.push((table, key)),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if started.elapsed() > self.opts.key_timeout {
                let names: Vec<String> = waiting.iter().map(|(t, k)| format!("{t}.{k}")).collect();
                bail!(
                    "alternate keys not Active after {:?}: {} (the index job is still running; run setup again later)",
                    self.opts.key_timeout,
                    names.join(", ")
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        Ok(())
    }

    async fn change_tracking(&mut self, file: &SolutionFile) -> anyhow::Result<()> {
        for t in file.tables.iter().filter(|t| t.changetracking) {
            let target = t.logicalname.clone();
            let def = self.exists(&entity(&t.logicalname)).await?;
            if def
                .as_ref()
                .is_some_and(|d| d["ChangeTrackingEnabled"].as_bool() == Some(true))
            {
                self.step("change_tracking", target, Action::Exists, String::new());
                continue;
            }
            if !self.opts.dry_run {
                let Some(Value::Object(mut def)) = def else {
                    bail!("table {} does not exist", t.logicalname);
                };
                let id = def["MetadataId"].as_str().unwrap_or_default().to_owned();
                def.retain(|k, _| !k.starts_with("@odata.context"));
                def.insert("ChangeTrackingEnabled".into(), json!(true));
                self.write(
                    Method::PUT,
                    &format!("EntityDefinitions({id})"),
                    &Value::Object(def),
                )
                .await?;
            }
            self.step(
                "change_tracking",
                target,
                Action::Update,
                "ChangeTrackingEnabled".into(),
            );
        }
        Ok(())
    }

    async fn first(&self, path: &str) -> anyhow::Result<Option<Map<String, Value>>> {
        let v = self
            .dv
            .get(path)
            .await
            .with_context(|| format!("GET {path}"))?;
        Ok(v["value"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x.as_object().cloned()))
    }

    async fn webhook(&mut self) -> anyhow::Result<()> {
        let Some(url) = self.opts.webhook_url.clone() else {
            return Ok(());
        };
        let Some(key) = self.opts.webhook_key.clone() else {
            bail!("registering the webhook needs its key (TGB_DATAVERSE_WEBHOOK_KEY)");
        };
        let header = &self.opts.webhook_header;
        let authvalue = format!(
            "<settings><setting name=\"{}\" value=\"{}\" /></settings>",
            xml_escape(header),
            xml_escape(&key)
        );
        let quoted = tgb_clients::dataverse::quote(ENDPOINT_NAME);
        let endpoint = self
            .first(&format!("serviceendpoints?$filter=name eq {quoted}"))
            .await?;
        let endpoint_id = match endpoint {
            Some(ep) => {
                let id = ep["serviceendpointid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                // Dataverse may not read the key back: compare it only when it is returned.
                let same_url = ep["url"].as_str() == Some(url.as_str());
                let same_key = ep
                    .get("authvalue")
                    .and_then(Value::as_str)
                    .is_none_or(|v| v == authvalue);
                let same_auth = ep["authtype"].as_i64() == Some(5);
                if same_url && same_key && same_auth {
                    self.step(
                        "service_endpoint",
                        ENDPOINT_NAME.into(),
                        Action::Exists,
                        url.clone(),
                    );
                } else {
                    if !self.opts.dry_run {
                        self.write(
                            Method::PATCH,
                            &format!("serviceendpoints({id})"),
                            &json!({"url": url, "authtype": 5, "authvalue": authvalue}),
                        )
                        .await?;
                    }
                    self.step(
                        "service_endpoint",
                        ENDPOINT_NAME.into(),
                        Action::Update,
                        url.clone(),
                    );
                }
                Some(id)
            }
            None => {
                let id = if self.opts.dry_run {
                    None
                } else {
                    self.write(
                        Method::POST,
                        "serviceendpoints",
                        &json!({
                            "name": ENDPOINT_NAME,
                            "description": "Dataverse changes to tg-bridge's dynamics-adapter",
                            "url": url,
                            "contract": 8,
                            "authtype": 5,
                            "authvalue": authvalue,
                            "messageformat": 2,
                            "namespaceformat": 2,
                            "userclaim": 1,
                        }),
                    )
                    .await?
                };
                self.step(
                    "service_endpoint",
                    ENDPOINT_NAME.into(),
                    Action::Create,
                    url.clone(),
                );
                id
            }
        };
        let wanted = webhook_steps();
        let mut message_ids: BTreeMap<&str, String> = BTreeMap::new();
        for (message, table) in wanted {
            let name = format!("tg-bridge: {message} of {table}");
            let target = format!("{message} {table}");
            let image = matches!(message, "Create" | "Update");
            let existing = match &endpoint_id {
                Some(ep) => {
                    self.first(&format!(
                        "sdkmessageprocessingsteps?$filter=name eq {} and _eventhandler_value eq {ep}",
                        tgb_clients::dataverse::quote(&name)
                    ))
                    .await?
                }
                None => None,
            };
            let step_id = match existing {
                Some(s) => {
                    self.step("step", target.clone(), Action::Exists, String::new());
                    s["sdkmessageprocessingstepid"].as_str().map(str::to_owned)
                }
                None => {
                    let id = match (&endpoint_id, self.opts.dry_run) {
                        (Some(ep), false) => {
                            let msg = match message_ids.get(message) {
                                Some(id) => id.clone(),
                                None => {
                                    let m = self
                                        .first(&format!("sdkmessages?$filter=name eq '{message}'"))
                                        .await?
                                        .and_then(|m| m["sdkmessageid"].as_str().map(str::to_owned))
                                        .with_context(|| format!("no SDK message {message}"))?;
                                    message_ids.insert(message, m.clone());
                                    m
                                }
                            };
                            let filter = self
                                .first(&format!(
                                    "sdkmessagefilters?$filter=primaryobjecttypecode eq '{table}' and _sdkmessageid_value eq {msg}"
                                ))
                                .await?
                                .and_then(|f| f["sdkmessagefilterid"].as_str().map(str::to_owned))
                                .with_context(|| format!("no message filter for {message} of {table}"))?;
                            self.write(
                                Method::POST,
                                "sdkmessageprocessingsteps",
                                &json!({
                                    "name": name,
                                    "description": "tg-bridge webhook step",
                                    "mode": 1,
                                    "rank": 1,
                                    "stage": 40,
                                    "supporteddeployment": 0,
                                    "asyncautodelete": false,
                                    "sdkmessageid@odata.bind": format!("/sdkmessages({msg})"),
                                    "sdkmessagefilterid@odata.bind": format!("/sdkmessagefilters({filter})"),
                                    "eventhandler_serviceendpoint@odata.bind": format!("/serviceendpoints({ep})"),
                                }),
                            )
                            .await?
                        }
                        _ => None,
                    };
                    self.step(
                        "step",
                        target.clone(),
                        Action::Create,
                        "asynchronous, post-operation".into(),
                    );
                    id
                }
            };
            if !image {
                continue;
            }
            let existing = match &step_id {
                Some(s) => {
                    self.first(&format!(
                        "sdkmessageprocessingstepimages?$filter=_sdkmessageprocessingstepid_value eq {s} and entityalias eq '{IMAGE_ALIAS}'"
                    ))
                    .await?
                }
                None => None,
            };
            if existing.is_some() {
                self.step("image", target, Action::Exists, IMAGE_ALIAS.into());
                continue;
            }
            if let (Some(s), false) = (&step_id, self.opts.dry_run) {
                self.write(
                    Method::POST,
                    "sdkmessageprocessingstepimages",
                    &json!({
                        "name": IMAGE_ALIAS,
                        "entityalias": IMAGE_ALIAS,
                        "imagetype": 1,
                        "messagepropertyname": if message == "Create" { "Id" } else { "Target" },
                        "sdkmessageprocessingstepid@odata.bind": format!("/sdkmessageprocessingsteps({s})"),
                    }),
                )
                .await?;
            }
            self.step(
                "image",
                target,
                Action::Create,
                format!("{IMAGE_ALIAS}, all columns"),
            );
        }
        Ok(())
    }
}

impl Run<'_> {
    /// The security role: `roles` with the root business unit, then `AddPrivilegesRole`.
    async fn role(&mut self) -> anyhow::Result<()> {
        let Some(name) = self.opts.create_role.clone() else {
            return Ok(());
        };
        let quoted = tgb_clients::dataverse::quote(&name);
        if self
            .first(&format!("roles?$filter=name eq {quoted}"))
            .await?
            .is_some()
        {
            self.step(
                "role",
                name,
                Action::Exists,
                "privileges left as they are".into(),
            );
            return Ok(());
        }
        let wanted = role_privileges();
        let count: usize = wanted.iter().map(|t| t.privileges.len()).sum();
        if !self.opts.dry_run {
            let who = self.dv.get("WhoAmI").await.context("WhoAmI")?;
            let bu = who["BusinessUnitId"]
                .as_str()
                .context("WhoAmI has no BusinessUnitId")?
                .to_owned();
            let role = self
                .write(
                    Method::POST,
                    "roles",
                    &json!({"name": name, "businessunitid@odata.bind": format!("/businessunits({bu})")}),
                )
                .await?
                .context("no id for the new role")?;
            let mut privileges = Vec::new();
            for p in wanted.iter().flat_map(|t| t.privileges.iter()) {
                let id = self
                    .first(&format!("privileges?$filter=name eq '{p}'"))
                    .await?
                    .and_then(|r| r["privilegeid"].as_str().map(str::to_owned))
                    .with_context(|| format!("no privilege {p} in this organisation"))?;
                privileges
                    .push(json!({"PrivilegeId": id, "Depth": "Global", "BusinessUnitId": bu}));
            }
            self.write(
                Method::POST,
                &format!("roles({role})/Microsoft.Dynamics.CRM.AddPrivilegesRole"),
                &json!({ "Privileges": privileges }),
            )
            .await?;
        }
        self.step(
            "role",
            name,
            Action::Create,
            format!("{count} privileges, Organization depth"),
        );
        Ok(())
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The (message, table) of every webhook step the adapter needs.
pub fn webhook_steps() -> Vec<(&'static str, &'static str)> {
    let mut wanted = Vec::new();
    for t in WEBHOOK_TABLES {
        for m in ["Create", "Update", "Delete"] {
            wanted.push((m, *t));
        }
    }
    wanted.push(("Close", "incident"));
    wanted
}

/// A Dataverse client from the services' configuration (`TGB_DATAVERSE_URL`,
/// `TGB_AZURE_*`), with the dynamics-adapter's settings (timeouts, rate lane).
pub fn client_from_config(config: &tgb_runtime::Config) -> anyhow::Result<DataverseClient> {
    let settings: dynamics_adapter::DynamicsSettings = config.section("dynamics")?;
    let s = &config.settings;
    let org_url = s
        .dataverse_url
        .clone()
        .context("TGB_DATAVERSE_URL is not set")?;
    let tenant = s
        .azure_tenant_id
        .as_deref()
        .context("TGB_AZURE_TENANT_ID is not set")?;
    let client_id = s
        .azure_client_id
        .clone()
        .context("TGB_AZURE_CLIENT_ID is not set")?;
    // A client secret, a certificate or a federated token file, as the services sign in.
    let credential = tgb_service::entra::credential(config, "tgb")?;
    let credentials = tgb_clients::oauth::ClientCredentials::new(
        tgb_clients::dataverse::entra_token_url(&s.azure_authority, tenant)
            .context("TGB_AZURE_AUTHORITY")?,
        client_id.clone(),
        credential,
    );
    let governor =
        tgb_governor::Governor::new(format!("dataverse:{client_id}"), settings.governor.clone());
    Ok(DataverseClient::new(
        &tgb_clients::dataverse::DataverseSettings {
            org_url,
            request_timeout: settings.request_timeout(),
            throttle_retries: settings.throttle_retries,
        },
        credentials,
        governor,
    )?)
}

/// The webhook key and its header as the dynamics-adapter expects them.
pub fn webhook_key_from_config(
    config: &tgb_runtime::Config,
) -> anyhow::Result<(String, Option<String>)> {
    use secrecy::ExposeSecret as _;
    let settings: dynamics_adapter::DynamicsSettings = config.section("dynamics")?;
    let key = config
        .settings
        .dataverse_webhook_key
        .as_ref()
        .map(|k| k.expose_secret().to_owned());
    Ok((settings.webhook_key_header, key))
}

/// Applies (or, with `dry_run`, plans) the solution file.
pub async fn run(
    dv: &DataverseClient,
    file: &SolutionFile,
    opts: &SetupOptions,
) -> anyhow::Result<SetupReport> {
    let mut run = Run {
        dv,
        opts,
        solution: file.solution.uniquename.clone(),
        steps: Vec::new(),
    };
    run.tables(file).await?;
    run.columns(file).await?;
    run.lookups(file).await?;
    run.keys(file).await?;
    run.change_tracking(file).await?;
    run.webhook().await?;
    run.role().await?;
    let changes = run
        .steps
        .iter()
        .filter(|s| s.action != Action::Exists)
        .count();
    Ok(SetupReport {
        dry_run: opts.dry_run,
        steps: run.steps,
        changes,
        role_privileges: role_privileges(),
    })
}

/// Registers (or, with `dry_run`, plans) only the webhook: the service endpoint and every step
/// of [`webhook_steps`] with its images, exactly as [`run`] does. `tgb up` calls it for an
/// organisation that already has tg-bridge's tables and keys.
pub async fn register_webhook(
    dv: &DataverseClient,
    file: &SolutionFile,
    opts: &SetupOptions,
) -> anyhow::Result<SetupReport> {
    let mut run = Run {
        dv,
        opts,
        solution: file.solution.uniquename.clone(),
        steps: Vec::new(),
    };
    run.webhook().await?;
    let changes = run
        .steps
        .iter()
        .filter(|s| s.action != Action::Exists)
        .count();
    Ok(SetupReport {
        dry_run: opts.dry_run,
        steps: run.steps,
        changes,
        role_privileges: role_privileges(),
    })
}

/// The human form of a report.
pub fn render(r: &SetupReport) -> String {
    let mut out = String::new();
    for s in &r.steps {
        let action = match (&s.action, r.dry_run) {
            (Action::Exists, _) => "ok",
            (Action::Create, true) => "would create",
            (Action::Create, false) => "created",
            (Action::Update, true) => "would update",
            (Action::Update, false) => "updated",
        };
        let detail = if s.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", s.detail)
        };
        out.push_str(&format!(
            "{action:<13} {:<17} {}{detail}\n",
            s.kind, s.target
        ));
    }
    out.push('\n');
    out.push_str(&match (r.changes, r.dry_run) {
        (0, _) => {
            "Nothing to change: the organisation already matches tgb-solution.json.\n".to_owned()
        }
        (n, true) => format!("Dry run: {n} changes planned, none made.\n"),
        (n, false) => format!("{n} changes made.\n"),
    });
    out.push_str("\nThe application user's security role needs (Organization depth):\n");
    for t in &r.role_privileges {
        out.push_str(&format!("  {:<20} {}\n", t.table, t.privileges.join(", ")));
    }
    out
}
