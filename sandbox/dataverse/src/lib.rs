//! Emulator of the Dataverse Web API v9.2, for tg-bridge's sandbox.
//!
//! Serves `/api/data/v9.2/...` (the sandbox core mounts it under `/dataverse`) over the tables
//! of `proto/dataverse/tgb-solution.json`, with Dataverse's upsert and ETag rules, `$batch`
//! with atomic change sets, change tracking, webhooks (`RemoteExecutionContext`) and the
//! service protection limits. Admin routes live under `/_sandbox/...`.
//!
//! The caller is read from `x-tgb-caller-id` (set by the sandbox core after checking the
//! token); a request without it is answered 401. Every write records that user as
//! `_createdby_value`/`_modifiedby_value` and as the webhooks' `InitiatingUserId`.
//!
//! Headers: responses carry `OData-Version: 4.0`. Requests may omit `OData-Version` /
//! `OData-MaxVersion` (Dataverse does not require them), but a value other than 4.0 is
//! refused with 400.

pub mod api;
mod batch;
pub mod error;
pub mod limits;
pub mod metadata;
pub mod query;
pub mod schema;
pub mod store;
pub mod webhooks;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

pub use error::ODataError;
pub use limits::{CallerUsage, ServiceProtectionConfig};
pub use schema::{SOLUTION_JSON, SolutionFile};
pub use store::CONCURRENT_EDITOR_ID;
pub use webhooks::{WebhookAuth, WebhookDelivery, WebhookError, WebhookRegistration};

use api::{Req, Resp, Settings};
use limits::Limits;
use store::{Ctx, Store};
use webhooks::{OrgInfo, Webhooks};

/// Header carrying the authenticated caller's user id (set by the sandbox core).
pub const CALLER_ID_HEADER: &str = "x-tgb-caller-id";

/// Settings of the emulated organisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataverseConfig {
    /// Organisation unique name (`OrganizationName` in webhooks).
    pub organization_name: String,
    /// Organisation host (`x-ms-dynamics-organization` in webhooks).
    pub organization_host: String,
    /// Organisation id.
    pub organization_id: Uuid,
    /// Base URL for links (`@odata.nextLink`, `OData-EntityId`…), e.g.
    /// `http://127.0.0.1:8080/dataverse`. Default: from the request's `Host` and mount prefix.
    pub public_url: Option<String>,
    /// Service protection limits.
    pub service_protection: ServiceProtectionConfig,
    /// How long a change-tracking delta token stays valid, in milliseconds (7 days).
    pub delta_token_lifetime_ms: u64,
    /// Largest page size (`Prefer: odata.maxpagesize` is capped to it; 5000).
    pub page_size_cap: usize,
    /// Requests allowed in one `$batch` (1000).
    pub max_batch_requests: usize,
    /// Attachment (annotation `documentbody`) limit in bytes (5 MB).
    pub max_attachment_bytes: usize,
    /// Webhook call timeout in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Delay before the single retry of a webhook answered 502/503/504, in milliseconds.
    pub webhook_retry_delay_ms: u64,
    /// Start as an organisation without tg-bridge's customisations (no custom tables, `tgb_`
    /// columns, keys or webhook steps) until they are created through the metadata endpoints
    /// (`tgb setup dataverse`). Default: the solution is applied.
    pub empty_org: bool,
}

impl Default for DataverseConfig {
    fn default() -> Self {
        Self {
            organization_name: "tgbsandbox".into(),
            organization_host: "tgbsandbox.crm.dynamics.com".into(),
            organization_id: Uuid::from_u128(0x0d6a_7a5e_0000_4000_8000_0000_0000_0001),
            public_url: None,
            service_protection: ServiceProtectionConfig::default(),
            delta_token_lifetime_ms: 7 * 24 * 3600 * 1000,
            page_size_cap: 5000,
            max_batch_requests: 1000,
            max_attachment_bytes: 5 * 1024 * 1024,
            webhook_timeout_ms: 60_000,
            webhook_retry_delay_ms: 1_000,
            empty_org: false,
        }
    }
}

struct Inner {
    cfg: DataverseConfig,
    settings: Settings,
    store: Mutex<Store>,
    limits: Arc<Limits>,
    webhooks: Webhooks,
    hold: watch::Sender<bool>,
    /// The requests waiting at the hold now, as "METHOD path".
    held: Mutex<Vec<(u64, String)>>,
    held_seq: std::sync::atomic::AtomicU64,
}

/// The emulated Dataverse organisation (cheap to clone: shared state).
#[derive(Clone)]
pub struct Dataverse {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dataverse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataverse")
            .field("organization", &self.inner.cfg.organization_name)
            .finish_non_exhaustive()
    }
}

impl Default for Dataverse {
    fn default() -> Self {
        Self::new(DataverseConfig::default())
    }
}

/// While alive, admitted Web API requests wait before running (they count as in flight):
/// lets tests reach the concurrency limit deterministically.
#[derive(Debug)]
pub struct RequestHold {
    hold: watch::Sender<bool>,
}

impl Drop for RequestHold {
    fn drop(&mut self) {
        self.hold.send_replace(false);
    }
}

impl Dataverse {
    /// A new, empty organisation.
    pub fn new(cfg: DataverseConfig) -> Self {
        let business_unit = Uuid::from_u128(0x0b0b_0000_0000_4000_8000_0000_0000_0001);
        let org = OrgInfo {
            name: cfg.organization_name.clone(),
            host: cfg.organization_host.clone(),
            id: cfg.organization_id,
            business_unit,
        };
        let webhooks = Webhooks::new(
            org,
            Duration::from_millis(cfg.webhook_timeout_ms),
            Duration::from_millis(cfg.webhook_retry_delay_ms),
        );
        let settings = Settings {
            page_size_cap: cfg.page_size_cap.max(1),
            delta_token_lifetime_ms: cfg.delta_token_lifetime_ms,
            organization_id: cfg.organization_id,
            business_unit_id: business_unit,
        };
        let (hold, _) = watch::channel(false);
        let meta = metadata::Metadata::new(cfg.empty_org);
        Self {
            inner: Arc::new(Inner {
                limits: Limits::new(cfg.service_protection.clone()),
                cfg,
                settings,
                store: Mutex::new(Store::with_meta(meta)),
                webhooks,
                hold,
                held: Mutex::new(Vec::new()),
                held_seq: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DataverseConfig {
        &self.inner.cfg
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes: `/api/data/v9.2/...` and the admin routes under `/_sandbox/...`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/data/v9.2", any(api_handler))
            .route("/api/data/v9.2/", any(api_handler))
            .route("/api/data/v9.2/{*rest}", any(api_handler))
            .route("/_sandbox/snapshot", get(admin_snapshot))
            .route("/_sandbox/reset", post(admin_reset))
            .route(
                "/_sandbox/webhooks",
                get(admin_webhooks).post(admin_register),
            )
            .route("/_sandbox/webhooks/{id}", delete(admin_unregister))
            .route("/_sandbox/etag-races", post(admin_etag_races))
            .route(
                "/_sandbox/limits",
                get(admin_limits).put(admin_configure_limits),
            )
            .route("/_sandbox/tables/{table}", get(admin_rows))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(self.clone())
    }

    /// What the organisation holds, for inspection: rows per table, webhooks, limits.
    pub fn snapshot(&self) -> Value {
        let st = self.store();
        let mut tables = serde_json::Map::new();
        for t in schema::Schema::get().tables() {
            let rows: Vec<Value> = st
                .rows(&t.logicalname)
                .map(|rows| {
                    rows.values()
                        .map(|r| Value::Object(Store::render(t, r, None, true)))
                        .collect()
                })
                .unwrap_or_default();
            tables.insert(t.entitysetname.clone(), Value::Array(rows));
        }
        let version = st.version;
        let races = st.etag_races;
        drop(st);
        let hooks: Vec<Value> = self
            .inner
            .webhooks
            .list()
            .into_iter()
            .map(|(id, r)| json!({"id": id, "name": r.name, "url": r.url, "entities": r.entities, "messages": r.messages}))
            .collect();
        json!({
            "organization": self.inner.cfg.organization_name,
            "version": version,
            "tables": tables,
            "webhooks": hooks,
            "webhook_deliveries": self.inner.webhooks.deliveries(),
            "pending_etag_races": races,
            "limits": self.limits_usage(),
        })
    }

    /// Rows of a table (logical or entity set name), as the Web API renders them (with the
    /// lookup target annotations).
    pub fn rows(&self, table: &str) -> Vec<Value> {
        let Some(t) = schema::Schema::get().table_by_any(table) else {
            return vec![];
        };
        let st = self.store();
        st.rows(&t.logicalname)
            .map(|rows| {
                rows.values()
                    .map(|r| Value::Object(Store::render(t, r, None, true)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One row by id.
    pub fn row(&self, table: &str, id: Uuid) -> Option<Value> {
        let t = schema::Schema::get().table_by_any(table)?;
        let st = self.store();
        st.row(&t.logicalname, id)
            .map(|r| Value::Object(Store::render(t, r, None, true)))
    }

    fn library_base(&self) -> String {
        match &self.inner.cfg.public_url {
            Some(u) => format!("{}/api/data/v9.2", u.trim_end_matches('/')),
            None => format!("https://{}/api/data/v9.2", self.inner.cfg.organization_host),
        }
    }

    /// Runs a Web API request as `user`, without HTTP and without service protection limits
    /// (webhooks fire as for any write). `path` is relative to `/api/data/v9.2/` and may
    /// hold a query string.
    pub fn request_as(
        &self,
        user: Uuid,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Option<Value>) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let ctx = self.ctx(user, self.library_base());
        let req = Req {
            method,
            path,
            query,
            headers: &headers,
            body: body.as_bytes(),
        };
        let resp = self.run_locked(|st| {
            api::execute(&self.inner.settings, st, &ctx, &req, &Default::default())
        });
        let mut h = HeaderMap::new();
        for (k, v) in &resp.headers {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.append(k, v);
            }
        }
        (resp.status, h, resp.body)
    }

    /// Creates a row as `user` (Web API body: columns and `nav@odata.bind`). Returns its id.
    pub fn insert_row_as(&self, user: Uuid, table: &str, body: Value) -> Result<Uuid, ODataError> {
        let t = schema::Schema::get()
            .table_by_any(table)
            .ok_or_else(|| ODataError::segment(table))?;
        let (status, headers, resp) = self.request_as(
            user,
            Method::POST,
            &t.entitysetname,
            HeaderMap::new(),
            Some(body),
        );
        if !status.is_success() {
            return Err(error_from(status, resp));
        }
        headers
            .get("OData-EntityId")
            .and_then(|v| v.to_str().ok())
            .and_then(|u| u.rsplit_once('(').map(|(_, id)| id.trim_end_matches(')')))
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| ODataError::bad_request(error::codes::ODATA, "no id in the answer"))
    }

    /// Upserts a row by id as `user` (PATCH semantics, no conditions).
    pub fn set_row_as(
        &self,
        user: Uuid,
        table: &str,
        id: Uuid,
        body: Value,
    ) -> Result<(), ODataError> {
        let t = schema::Schema::get()
            .table_by_any(table)
            .ok_or_else(|| ODataError::segment(table))?;
        let (status, _, resp) = self.request_as(
            user,
            Method::PATCH,
            &format!("{}({id})", t.entitysetname),
            HeaderMap::new(),
            Some(body),
        );
        if status.is_success() {
            Ok(())
        } else {
            Err(error_from(status, resp))
        }
    }

    /// Registers a webhook service endpoint (needs a tokio runtime).
    pub fn register_webhook(&self, reg: WebhookRegistration) -> Result<Uuid, WebhookError> {
        self.inner.webhooks.register(reg)
    }

    /// Removes a webhook endpoint.
    pub fn unregister_webhook(&self, id: Uuid) -> bool {
        self.inner.webhooks.unregister(id)
    }

    /// Deliveries made so far (status and attempts).
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.inner.webhooks.deliveries()
    }

    /// Makes the next `n` conditional writes (`If-Match` with an ETag) meet a concurrent
    /// change first: the row's version moves and the write gets 412.
    pub fn force_etag_races(&self, n: u32) {
        self.store().etag_races = n;
    }

    /// Forgets every row, the change log, forced races and the limit counters. Webhook
    /// registrations are kept (use [`Dataverse::clear_webhooks`]); versions keep growing so
    /// that no ETag is ever reused.
    pub fn reset(&self) {
        let mut st = self.store();
        let version = st.version;
        let meta = std::mem::take(&mut st.meta);
        *st = Store::default();
        st.version = version;
        st.meta = meta;
        drop(st);
        self.inner.limits.reset();
    }

    /// Removes every webhook endpoint.
    pub fn clear_webhooks(&self) {
        self.inner.webhooks.clear();
    }

    /// Service protection usage per caller.
    pub fn limits_usage(&self) -> Vec<CallerUsage> {
        self.inner.limits.usage()
    }

    /// Changes the service protection limits at run time.
    pub fn configure_limits(&self, cfg: ServiceProtectionConfig) {
        self.inner.limits.configure(cfg);
    }

    /// The requests waiting at a [`Self::hold_requests`] hold now, as `"METHOD path"`, oldest
    /// first: a test waits for the very request it means to hold.
    pub fn held_requests(&self) -> Vec<String> {
        let held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Holds admitted requests until the returned guard is dropped.
    pub fn hold_requests(&self) -> RequestHold {
        self.inner.hold.send_replace(true);
        RequestHold {
            hold: self.inner.hold.clone(),
        }
    }

    fn ctx(&self, caller: Uuid, base: String) -> Ctx {
        Ctx {
            caller,
            correlation: Uuid::new_v4(),
            base,
            max_attachment_bytes: self.inner.cfg.max_attachment_bytes,
        }
    }

    /// Runs `f` under the store lock and hands the committed writes to the webhooks, still
    /// under the lock so notifications keep commit order.
    fn run_locked<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut st = self.store();
        let out = f(&mut st);
        let events = std::mem::take(&mut st.events);
        self.inner.webhooks.dispatch(events);
        if std::mem::take(&mut st.meta.hooks_dirty) {
            self.sync_webhooks(&mut st.meta);
        }
        out
    }

    /// Makes the webhook registrations follow the service endpoints and steps created
    /// through the Web API.
    fn sync_webhooks(&self, meta: &mut metadata::Metadata) {
        for id in std::mem::take(&mut meta.hook_ids) {
            self.inner.webhooks.unregister(id);
        }
        for reg in meta.webhook_registrations() {
            match self.inner.webhooks.register(reg) {
                Ok(id) => meta.hook_ids.push(id),
                Err(e) => tracing::warn!(error = %e, "a webhook step cannot deliver"),
            }
        }
    }

    /// Makes the index job of the alternate key `schema_name` fail (tests of `tgb setup`).
    pub fn fail_key_job(&self, schema_name: &str) {
        self.store().meta.fail_key_job(schema_name);
    }

    /// Takes a privilege (`prvCreateincident`) from a user, as `RetrieveUserPrivileges` reports
    /// it (tests of `tgb doctor`; data requests are not checked against privileges).
    pub fn revoke_privilege(&self, user: Uuid, name: &str) {
        self.store().meta.revoke_privilege(user, name);
    }

    /// Whether the organisation started without tg-bridge's customisations.
    pub fn is_empty_org(&self) -> bool {
        self.store().meta.is_empty_org()
    }
}

fn error_from(status: StatusCode, body: Option<Value>) -> ODataError {
    let code = body
        .as_ref()
        .and_then(|b| b["error"]["code"].as_str())
        .unwrap_or("")
        .to_string();
    let message = body
        .as_ref()
        .and_then(|b| b["error"]["message"].as_str())
        .unwrap_or("")
        .to_string();
    ODataError::new(status, &code, message)
}

fn odata_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    if let Ok(v) = HeaderValue::from_str(&Uuid::new_v4().to_string()) {
        h.insert("REQ_ID", v.clone());
        h.insert("x-ms-service-request-id", v);
    }
}

fn into_response(resp: Resp) -> Response {
    let mut out = match resp.body {
        Some(body) => (
            resp.status,
            [(
                header::CONTENT_TYPE,
                "application/json; odata.metadata=minimal",
            )],
            body.to_string(),
        )
            .into_response(),
        None => resp.status.into_response(),
    };
    for (k, v) in resp.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            out.headers_mut().append(k, v);
        }
    }
    odata_headers(&mut out);
    out
}

fn error_response(e: &ODataError) -> Response {
    into_response(Resp::error(e))
}

async fn api_handler(
    State(dv): State<Dataverse>,
    method: Method,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(caller) = headers
        .get(CALLER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
    else {
        let mut r = error_response(&ODataError::new(
            StatusCode::UNAUTHORIZED,
            error::codes::UNAUTHORIZED,
            "The request has no authenticated caller.",
        ));
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return r;
    };
    for name in ["odata-version", "odata-maxversion"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok())
            && v.trim() != "4.0"
            && v.trim() != "4.01"
        {
            return error_response(&ODataError::bad_request(
                error::codes::ODATA,
                format!("The value '{v}' of the {name} header is not supported; use 4.0."),
            ));
        }
    }
    let guard = match dv.inner.limits.admit(&caller.to_string()) {
        Ok(g) => g,
        Err(t) => {
            let mut r = error_response(&ODataError::new(
                StatusCode::TOO_MANY_REQUESTS,
                t.code,
                t.message,
            ));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs));
            return r;
        }
    };
    let mut hold = dv.inner.hold.subscribe();
    if *hold.borrow_and_update() {
        let seq = dv
            .inner
            .held_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let line = format!("{method} {}", uri.path());
        dv.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((seq, line));
        // Removes the entry also when the caller goes away while held.
        struct Released<'a>(&'a Inner, u64);
        impl Drop for Released<'_> {
            fn drop(&mut self) {
                let mut held = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
                held.retain(|(s, _)| *s != self.1);
            }
        }
        let _released = Released(&dv.inner, seq);
        let _ = hold.wait_for(|held| !*held).await;
    }

    let rel = uri
        .path()
        .strip_prefix("/api/data/v9.2")
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let base = match &dv.inner.cfg.public_url {
        Some(u) => format!("{}/api/data/v9.2", u.trim_end_matches('/')),
        None => {
            let prefix = original.path().strip_suffix(uri.path()).unwrap_or("");
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}{prefix}/api/data/v9.2")
        }
    };
    let ctx = dv.ctx(caller, base);
    let response = if rel == "$batch" {
        if method != Method::POST {
            error_response(&ODataError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "",
                "The $batch endpoint only accepts POST.",
            ))
        } else {
            let max = dv.inner.cfg.max_batch_requests;
            let result =
                dv.run_locked(|st| batch::run(&dv.inner.settings, st, &ctx, &headers, &body, max));
            match result {
                Ok(b) => {
                    let mut r = (b.status, [(header::CONTENT_TYPE, b.content_type)], b.body)
                        .into_response();
                    odata_headers(&mut r);
                    r
                }
                Err(e) => error_response(&e),
            }
        }
    } else {
        let req = Req {
            method,
            path: &rel,
            query: uri.query(),
            headers: &headers,
            body: &body,
        };
        let resp = dv
            .run_locked(|st| api::execute(&dv.inner.settings, st, &ctx, &req, &Default::default()));
        into_response(resp)
    };
    let mut response = response;
    if let Some(n) = guard.remaining_requests {
        response.headers_mut().insert(
            "x-ms-ratelimit-burst-remaining-xrm-requests",
            HeaderValue::from(n),
        );
    }
    if let Some(ms) = guard.remaining_execution_ms {
        // Dataverse writes a duration; milliseconds here.
        response.headers_mut().insert(
            "x-ms-ratelimit-time-remaining-xrm-requests",
            HeaderValue::from(ms),
        );
    }
    drop(guard);
    response
}

async fn admin_snapshot(State(dv): State<Dataverse>) -> Response {
    axum::Json(dv.snapshot()).into_response()
}

async fn admin_reset(State(dv): State<Dataverse>) -> StatusCode {
    dv.reset();
    StatusCode::NO_CONTENT
}

async fn admin_webhooks(State(dv): State<Dataverse>) -> Response {
    let hooks: Vec<Value> = dv
        .inner
        .webhooks
        .list()
        .into_iter()
        .map(|(id, r)| json!({"id": id, "registration": r}))
        .collect();
    axum::Json(json!({"webhooks": hooks, "deliveries": dv.webhook_deliveries()})).into_response()
}

fn admin_error(status: StatusCode, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": "sandbox", "message": message}})),
    )
        .into_response()
}

async fn admin_register(State(dv): State<Dataverse>, body: Bytes) -> Response {
    let reg: WebhookRegistration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                format!("invalid registration: {e}"),
            );
        }
    };
    match dv.register_webhook(reg) {
        Ok(id) => (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response(),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn admin_unregister(State(dv): State<Dataverse>, Path(id): Path<String>) -> Response {
    match Uuid::parse_str(&id) {
        Ok(id) if dv.unregister_webhook(id) => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => admin_error(StatusCode::NOT_FOUND, format!("no webhook {id}")),
        Err(_) => admin_error(StatusCode::BAD_REQUEST, format!("'{id}' is not a GUID")),
    }
}

#[derive(Deserialize)]
struct RacesBody {
    n: u32,
}

async fn admin_etag_races(State(dv): State<Dataverse>, body: Bytes) -> Response {
    match serde_json::from_slice::<RacesBody>(&body) {
        Ok(b) => {
            dv.force_etag_races(b.n);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"n\": <count>}}: {e}"),
        ),
    }
}

async fn admin_limits(State(dv): State<Dataverse>) -> Response {
    axum::Json(json!({"config": dv.inner.limits.config(), "usage": dv.limits_usage()}))
        .into_response()
}

async fn admin_configure_limits(State(dv): State<Dataverse>, body: Bytes) -> Response {
    match serde_json::from_slice::<ServiceProtectionConfig>(&body) {
        Ok(cfg) => {
            dv.configure_limits(cfg);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(StatusCode::BAD_REQUEST, format!("invalid limits: {e}")),
    }
}

async fn admin_rows(State(dv): State<Dataverse>, Path(table): Path<String>) -> Response {
    if schema::Schema::get().table_by_any(&table).is_none() {
        return admin_error(StatusCode::NOT_FOUND, format!("no table '{table}'"));
    }
    axum::Json(json!({"value": dv.rows(&table)})).into_response()
}
