//! Registered service endpoints (webhooks): each committed write matching an endpoint's steps
//! is POSTed as a `RemoteExecutionContext` JSON, asynchronously, by one background task per
//! endpoint (so in commit order), with one retry only on 502/503/504.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::query::parse_datetime;
use crate::schema::{ColumnType, Schema, Table, lookup_of_value_name};
use crate::store::Event;

/// How the endpoint authenticates the calls (Dataverse: HttpHeader, WebhookKey, HttpQueryString).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WebhookAuth {
    /// No key.
    #[default]
    None,
    /// A header, e.g. `x-api-key: <key>`.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// A query-string parameter, e.g. `?code=<key>` (WebhookKey).
    Query {
        /// Parameter name.
        name: String,
        /// Parameter value.
        value: String,
    },
}

/// A service endpoint and its steps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookRegistration {
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// Authentication.
    #[serde(default)]
    pub auth: WebhookAuth,
    /// Table logical names (empty: every table).
    #[serde(default)]
    pub entities: Vec<String>,
    /// Messages: `Create`, `Update`, `Delete`, `Close` (empty: Create, Update, Delete).
    #[serde(default)]
    pub messages: Vec<String>,
}

impl WebhookRegistration {
    fn wants(&self, event: &Event) -> bool {
        let entity_ok = self.entities.is_empty() || self.entities.contains(&event.table);
        let message_ok = if self.messages.is_empty() {
            matches!(event.message, "Create" | "Update" | "Delete")
        } else {
            self.messages
                .iter()
                .any(|m| m.eq_ignore_ascii_case(event.message))
        };
        entity_ok && message_ok
    }
}

/// What happened to one notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Endpoint id.
    pub endpoint: Uuid,
    /// Message name.
    pub message: String,
    /// Table.
    pub entity: String,
    /// Row id.
    pub entity_id: Uuid,
    /// Correlation id.
    pub correlation_id: Uuid,
    /// Attempts made (1 or 2).
    pub attempts: u32,
    /// Last HTTP status, if any answer came.
    pub status: Option<u16>,
    /// Transport error of the last attempt.
    pub error: Option<String>,
}

/// Organisation identity written into notifications.
#[derive(Debug, Clone)]
pub struct OrgInfo {
    /// `OrganizationName`.
    pub name: String,
    /// `x-ms-dynamics-organization` (host name).
    pub host: String,
    /// `OrganizationId`.
    pub id: Uuid,
    /// `BusinessUnitId`.
    pub business_unit: Uuid,
}

struct Endpoint {
    registration: WebhookRegistration,
    tx: mpsc::UnboundedSender<Outgoing>,
}

struct Outgoing {
    body: Value,
    message: String,
    entity: String,
    entity_id: Uuid,
    correlation: Uuid,
}

/// The endpoints and their delivery log.
pub struct Webhooks {
    endpoints: Mutex<Vec<(Uuid, Endpoint)>>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
    delivered: Arc<Notify>,
    client: reqwest::Client,
    org: OrgInfo,
    retry_delay: Duration,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// Registration failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Not inside a tokio runtime.
    #[error("webhooks need a tokio runtime to deliver from")]
    NoRuntime,
    /// Bad URL.
    #[error("invalid webhook url: {0}")]
    Url(String),
}

impl Webhooks {
    /// No endpoints yet.
    pub fn new(org: OrgInfo, timeout: Duration, retry_delay: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            endpoints: Mutex::new(Vec::new()),
            deliveries: Arc::new(Mutex::new(Vec::new())),
            delivered: Arc::new(Notify::new()),
            client,
            org,
            retry_delay,
        }
    }

    /// Registers an endpoint and starts its sender.
    pub fn register(&self, reg: WebhookRegistration) -> Result<Uuid, WebhookError> {
        let url = reqwest::Url::parse(&reg.url).map_err(|e| WebhookError::Url(e.to_string()))?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let id = Uuid::new_v4();
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let client = self.client.clone();
        let deliveries = self.deliveries.clone();
        let delivered = self.delivered.clone();
        let org_host = self.org.host.clone();
        let auth = reg.auth.clone();
        let retry_delay = self.retry_delay;
        handle.spawn(async move {
            while let Some(out) = rx.recv().await {
                let mut attempts = 0;
                let (status, error) = loop {
                    attempts += 1;
                    let mut target = url.clone();
                    if let WebhookAuth::Query { name, value } = &auth {
                        target.query_pairs_mut().append_pair(name, value);
                    }
                    let mut req = client
                        .post(target)
                        .header("content-type", "application/json")
                        .header("x-ms-dynamics-organization", &org_host)
                        .header("x-ms-dynamics-entity-name", &out.entity)
                        .header("x-ms-dynamics-request-name", &out.message)
                        .header("x-ms-correlation-request-id", out.correlation.to_string())
                        .json(&out.body);
                    if let WebhookAuth::Header { name, value } = &auth {
                        req = req.header(name.as_str(), value.as_str());
                    }
                    let (status, error) = match req.send().await {
                        Ok(resp) => (Some(resp.status().as_u16()), None),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    let retryable = matches!(status, Some(502..=504));
                    if retryable && attempts == 1 {
                        tokio::time::sleep(retry_delay).await;
                        continue;
                    }
                    break (status, error);
                };
                if let Some(e) = &error {
                    tracing::warn!(endpoint = %id, error = %e, "dataverse webhook delivery failed");
                }
                deliveries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(WebhookDelivery {
                        endpoint: id,
                        message: out.message,
                        entity: out.entity,
                        entity_id: out.entity_id,
                        correlation_id: out.correlation,
                        attempts,
                        status,
                        error,
                    });
                delivered.notify_waiters();
            }
        });
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((
                id,
                Endpoint {
                    registration: reg,
                    tx,
                },
            ));
        Ok(id)
    }

    /// Removes an endpoint (its sender stops after the queued notifications).
    pub fn unregister(&self, id: Uuid) -> bool {
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let before = eps.len();
        eps.retain(|(i, _)| *i != id);
        eps.len() != before
    }

    /// Removes every endpoint.
    pub fn clear(&self) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Registered endpoints.
    pub fn list(&self) -> Vec<(Uuid, WebhookRegistration)> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(i, e)| (*i, e.registration.clone()))
            .collect()
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> Vec<WebhookDelivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves when a delivery is recorded.
    pub fn delivered(&self) -> Arc<Notify> {
        self.delivered.clone()
    }

    /// Queues the notifications of committed writes (call in commit order).
    pub fn dispatch(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if eps.is_empty() {
            return;
        }
        for ev in &events {
            for (id, ep) in eps.iter() {
                if ep.registration.wants(ev) {
                    let body = remote_execution_context(&self.org, ev, *id);
                    let _ = ep.tx.send(Outgoing {
                        body,
                        message: ev.message.to_string(),
                        entity: ev.table.clone(),
                        entity_id: ev.id,
                        correlation: ev.correlation,
                    });
                }
            }
        }
    }
}

const CONTRACTS: &str = "http://schemas.microsoft.com/xrm/2011/Contracts";

fn wcf_date(s: &str) -> Value {
    match parse_datetime(s) {
        Some(d) => json!(format!("/Date({})/", d.unix_timestamp() * 1000)),
        None => json!(s),
    }
}

fn entity_reference(table: &str, id: &str) -> Value {
    json!({
        "__type": format!("EntityReference:{CONTRACTS}"),
        "Id": id,
        "KeyAttributes": [],
        "LogicalName": table,
        "Name": null,
        "RowVersion": null
    })
}

/// Converts stored attributes to the SDK's `Attributes` key/value list.
fn sdk_attributes(table: &Table, attrs: &Map<String, Value>) -> Vec<Value> {
    let mut out = Vec::new();
    for (k, v) in attrs {
        if k.contains('@') || v.is_null() {
            if !k.contains('@') {
                let key = lookup_of_value_name(k).unwrap_or(k);
                out.push(json!({"key": key, "value": null}));
            }
            continue;
        }
        if let Some(lookup) = lookup_of_value_name(k) {
            let target = attrs
                .get(&format!("{k}@Microsoft.Dynamics.CRM.lookuplogicalname"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    table
                        .lookup(lookup)
                        .and_then(|l| l.targets.first())
                        .map(|t| t.table.clone())
                })
                .unwrap_or_else(|| {
                    if lookup == "ownerid" || lookup.ends_with("by") {
                        "systemuser".into()
                    } else {
                        String::new()
                    }
                });
            let id = v.as_str().unwrap_or_default();
            out.push(json!({"key": lookup, "value": entity_reference(&target, id)}));
            continue;
        }
        let value = match table.column(k).map(|c| c.kind) {
            Some(ColumnType::Money) => json!({"__type": format!("Money:{CONTRACTS}"), "Value": v}),
            Some(ColumnType::Picklist | ColumnType::State | ColumnType::Status) => {
                json!({"__type": format!("OptionSetValue:{CONTRACTS}"), "Value": v})
            }
            Some(ColumnType::Datetime) => wcf_date(v.as_str().unwrap_or_default()),
            _ if k == "createdon" || k == "modifiedon" => wcf_date(v.as_str().unwrap_or_default()),
            _ => v.clone(),
        };
        out.push(json!({"key": k, "value": value}));
    }
    out
}

fn sdk_entity(table: &Table, id: Uuid, attrs: &Map<String, Value>, version: Option<u64>) -> Value {
    json!({
        "__type": format!("Entity:{CONTRACTS}"),
        "Attributes": sdk_attributes(table, attrs),
        "EntityState": null,
        "FormattedValues": [],
        "Id": id.to_string(),
        "KeyAttributes": [],
        "LogicalName": table.logicalname,
        "RelatedEntities": [],
        "RowVersion": version.map(|v| v.to_string())
    })
}

/// The JSON a Dataverse webhook receives for one event.
pub fn remote_execution_context(org: &OrgInfo, ev: &Event, endpoint: Uuid) -> Value {
    let schema = Schema::get();
    let Some(table) = schema.table(&ev.table) else {
        return Value::Null;
    };
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    match ev.message {
        "Delete" => inputs.push(
            json!({"key": "Target", "value": entity_reference(&ev.table, &ev.id.to_string())}),
        ),
        "Close" => {
            for (k, v) in &ev.extra {
                let value = match (k.as_str(), v) {
                    ("IncidentResolution", Value::Object(attrs)) => {
                        let res_table = schema.table("incidentresolution").expect("in schema");
                        let rid = attrs
                            .get("activityid")
                            .and_then(Value::as_str)
                            .and_then(|s| Uuid::parse_str(s).ok())
                            .unwrap_or_default();
                        sdk_entity(res_table, rid, attrs, None)
                    }
                    ("Status", v) => {
                        json!({"__type": format!("OptionSetValue:{CONTRACTS}"), "Value": v})
                    }
                    _ => v.clone(),
                };
                inputs.push(json!({"key": k, "value": value}));
            }
        }
        _ => inputs
            .push(json!({"key": "Target", "value": sdk_entity(table, ev.id, &ev.target, None)})),
    }
    if ev.message == "Create" {
        outputs.push(json!({"key": "id", "value": ev.id.to_string()}));
    }
    let post_images: Vec<Value> = ev
        .post
        .as_ref()
        .map(|p| {
            vec![
                json!({"key": "PostImage", "value": sdk_entity(table, ev.id, p, Some(ev.version))}),
            ]
        })
        .unwrap_or_default();
    let pre_images: Vec<Value> = ev
        .pre
        .as_ref()
        .map(|p| vec![json!({"key": "PreImage", "value": sdk_entity(table, ev.id, p, None)})])
        .unwrap_or_default();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    // `Close` is not a request on a row (its target is the IncidentResolution it creates):
    // Dataverse sends it with an empty primary entity id; the case is the resolution's
    // `incidentid`.
    let primary_id = if ev.message == "Close" {
        Uuid::nil()
    } else {
        ev.id
    };
    json!({
        "BusinessUnitId": org.business_unit.to_string(),
        "CorrelationId": ev.correlation.to_string(),
        "Depth": 1,
        "InitiatingUserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "InitiatingUserId": ev.caller.to_string(),
        "InputParameters": inputs,
        "IsExecutingOffline": false,
        "IsInTransaction": false,
        "IsOfflinePlayback": false,
        "IsolationMode": 1,
        "MessageName": ev.message,
        "Mode": 1,
        "OperationCreatedOn": format!("/Date({now_ms})/"),
        "OperationId": Uuid::new_v4().to_string(),
        "OrganizationId": org.id.to_string(),
        "OrganizationName": org.name,
        "OutputParameters": outputs,
        "OwningExtension": {
            "Id": endpoint.to_string(),
            "KeyAttributes": [],
            "LogicalName": "sdkmessageprocessingstep",
            "Name": format!("tg-bridge sandbox: {} of {}", ev.message, ev.table),
            "RowVersion": null
        },
        "ParentContext": null,
        "PostEntityImages": post_images,
        "PreEntityImages": pre_images,
        "PrimaryEntityId": primary_id.to_string(),
        "PrimaryEntityName": ev.table,
        "RequestId": Uuid::new_v4().to_string(),
        "SecondaryEntityName": "none",
        "SharedVariables": [],
        "Stage": 40,
        "UserAzureActiveDirectoryObjectId": "00000000-0000-0000-0000-000000000000",
        "UserId": ev.caller.to_string()
    })
}
