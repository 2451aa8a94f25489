//! The HTTP surface: Graph Planner v1.0 under `/v1.0/`, and the admin routes under `/_sandbox/`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Planner;
use crate::error::GraphError;
use crate::model::{Caller, CallerKind, Kind};

/// What a handler knows about its request.
pub(crate) struct Ctx {
    pub caller: Caller,
    pub request_id: String,
    pub client_request_id: String,
    pub if_match: Option<String>,
    pub prefer_representation: bool,
}

impl Ctx {
    fn from_headers(h: &HeaderMap) -> Result<Ctx, (GraphError, String)> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let client_request_id = text("client-request-id").unwrap_or_else(|| request_id.clone());
        let Some(id) = text("x-tgb-caller-id") else {
            return Err((
                GraphError::new(401, "InvalidAuthenticationToken", "Access token is empty."),
                client_request_id,
            ));
        };
        let kind = match text("x-tgb-caller-kind").as_deref() {
            Some("user") => CallerKind::User,
            _ => CallerKind::Application,
        };
        let caller = Caller {
            name: text("x-tgb-caller-name").unwrap_or_else(|| id.clone()),
            id,
            kind,
        };
        let prefer_representation = h
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("return=representation"));
        Ok(Ctx {
            caller,
            request_id,
            client_request_id,
            if_match: text("if-match"),
            prefer_representation,
        })
    }

    fn error(&self, e: &GraphError) -> Response {
        error_response(e, &self.request_id, &self.client_request_id)
    }

    fn json(&self, status: StatusCode, body: Value, etag: Option<&str>) -> Response {
        let mut r = (status, axum::Json(body)).into_response();
        self.ids(r.headers_mut());
        if let Some(e) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
            r.headers_mut().insert(header::ETAG, e);
        }
        r
    }

    fn no_content(&self) -> Response {
        let mut r = StatusCode::NO_CONTENT.into_response();
        self.ids(r.headers_mut());
        r
    }

    fn ids(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert("request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.client_request_id) {
            h.insert("client-request-id", v);
        }
    }
}

pub(crate) fn error_response(
    e: &GraphError,
    request_id: &str,
    client_request_id: &str,
) -> Response {
    let mut r = (
        e.status_code(),
        axum::Json(e.body(request_id, client_request_id)),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(client_request_id) {
        r.headers_mut().insert("client-request-id", v);
    }
    r
}

fn parse_body(bytes: &Bytes) -> Result<Value, GraphError> {
    if bytes.is_empty() {
        return Err(GraphError::bad_request(
            "The request is invalid: a JSON body is required.",
        ));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        GraphError::bad_request(format!(
            "The request is invalid: the body is not valid JSON: {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(GraphError::bad_request(
            "The request is invalid: the body must be a JSON object.",
        ));
    }
    Ok(v)
}

/// Graph's routes (`/v1.0/...`), with `$batch` when `with_batch`.
pub(crate) fn graph_routes(p: &Planner, with_batch: bool) -> Router {
    let mut r = Router::new()
        .route("/v1.0/groups/{gid}/planner/plans", get(group_plans))
        .route("/v1.0/planner/plans", get(list_plans).post(create_plan))
        .route(
            "/v1.0/planner/plans/{id}",
            get(get_plan).patch(patch_plan).delete(delete_plan),
        )
        .route(
            "/v1.0/planner/plans/{id}/details",
            get(get_plan_details).patch(patch_plan_details),
        )
        .route("/v1.0/planner/plans/{id}/buckets", get(plan_buckets))
        .route("/v1.0/planner/plans/{id}/tasks", get(plan_tasks))
        .route(
            "/v1.0/planner/buckets",
            get(list_buckets).post(create_bucket),
        )
        .route(
            "/v1.0/planner/buckets/{id}",
            get(get_bucket).patch(patch_bucket).delete(delete_bucket),
        )
        .route("/v1.0/planner/buckets/{id}/tasks", get(bucket_tasks))
        .route("/v1.0/planner/tasks", post(create_task))
        .route(
            "/v1.0/planner/tasks/{id}",
            get(get_task).patch(patch_task).delete(delete_task),
        )
        .route(
            "/v1.0/planner/tasks/{id}/details",
            get(get_task_details).patch(patch_task_details),
        );
    if with_batch {
        r = r.route("/v1.0/$batch", post(crate::batch::batch));
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(p.clone(), gate))
        .with_state(p.clone())
}

/// Every Graph request: a caller is required (the core has checked the token), and a pending
/// `throttle_next` answers 429 with `Retry-After`.
async fn gate(AxState(p): AxState<Planner>, req: Request, next: Next) -> Response {
    let ctx = match Ctx::from_headers(req.headers()) {
        Ok(c) => c,
        Err((e, client)) => return error_response(&e, &uuid::Uuid::new_v4().to_string(), &client),
    };
    let inner = req.extensions().get::<InnerBatchRequest>().is_some();
    if let Some(secs) = p.take_throttle(inner) {
        let e = GraphError::new(
            429,
            "TooManyRequests",
            "Too many requests. Please retry after the time given in Retry-After.",
        );
        let mut r = ctx.error(&e);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    next.run(req).await
}

async fn not_found(h: HeaderMap, method: Method, uri: axum::http::Uri) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let client = h
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&rid)
        .to_string();
    let e = GraphError::new(
        404,
        "NotFound",
        format!(
            "Resource not found for the segment in '{method} {}'.",
            uri.path()
        ),
    );
    error_response(&e, &rid, &client)
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let rid = uuid::Uuid::new_v4().to_string();
    let e = GraphError::new(
        405,
        "MethodNotAllowed",
        format!(
            "The HTTP method '{method}' is not allowed on '{}'.",
            uri.path()
        ),
    );
    error_response(&e, &rid, &rid)
}

macro_rules! ctx {
    ($h:expr) => {
        match Ctx::from_headers(&$h) {
            Ok(c) => c,
            Err((e, client)) => {
                return error_response(&e, &uuid::Uuid::new_v4().to_string(), &client);
            }
        }
    };
}

/// GET of one object.
fn read_one(p: &Planner, ctx: &Ctx, kind: Kind, id: &str) -> Response {
    let st = p.state();
    match st.render(kind, id, true) {
        Some((v, etag)) => ctx.json(StatusCode::OK, v, Some(&etag)),
        None => ctx.error(&GraphError::not_found(kind.label(), id)),
    }
}

fn read_list(
    p: &Planner,
    ctx: &Ctx,
    kind: Kind,
    ids: impl FnOnce(&crate::model::State) -> Result<Vec<String>, GraphError>,
    context: &str,
) -> Response {
    let st = p.state();
    match ids(&st) {
        Ok(ids) => ctx.json(StatusCode::OK, st.render_list(kind, ids, context), None),
        Err(e) => ctx.error(&e),
    }
}

/// Where a list was asked for: the absolute URL its `@odata.nextLink` repeats (the sandbox's
/// mount prefix included), and the `$skiptoken` it carries.
pub(crate) struct ListAt {
    url: String,
    skiptoken: Option<String>,
}

impl ListAt {
    fn of(original: &Uri, headers: &HeaderMap) -> ListAt {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let skiptoken = original.query().and_then(|q| {
            q.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == "$skiptoken" || k.eq_ignore_ascii_case("%24skiptoken")).then(|| v.to_owned())
            })
        });
        ListAt {
            url: format!("http://{host}{}", original.path()),
            skiptoken,
        }
    }
}

/// A task list, a page at a time: at most `list_page_size` tasks (Planner's page size is fixed:
/// `$top` and `Prefer: odata.maxpagesize` change nothing), then `@odata.nextLink` with an opaque
/// `$skiptoken` (the creation order of the page's last task, so pages stay consistent while
/// tasks are created, changed or deleted between two reads).
fn read_task_page(
    p: &Planner,
    ctx: &Ctx,
    at: &ListAt,
    ids: impl FnOnce(&crate::model::State) -> Result<Vec<String>, GraphError>,
    context: &str,
) -> Response {
    let after = match at.skiptoken.as_deref() {
        None => 0,
        Some(t) => match t
            .strip_prefix("RTS")
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        {
            Some(n) => n,
            None => {
                return ctx.error(&GraphError::bad_request(
                    "The request is invalid: the $skiptoken is not one this service issued.",
                ));
            }
        },
    };
    let size = p.config().list_page_size.max(1);
    let st = p.state();
    let all = match ids(&st) {
        Ok(ids) => ids,
        Err(e) => return ctx.error(&e),
    };
    let mut rest: Vec<(String, u64)> = all
        .into_iter()
        .filter_map(|id| {
            let seq = st.seq_of(Kind::Task, &id)?;
            (seq > after).then_some((id, seq))
        })
        .collect();
    let more = rest.len() > size;
    rest.truncate(size);
    let next = more.then(|| rest.last().map(|(_, seq)| *seq)).flatten();
    let page: Vec<String> = rest.into_iter().map(|(id, _)| id).collect();
    let mut body = st.render_list(Kind::Task, page, context);
    if let Some(seq) = next {
        body["@odata.nextLink"] = Value::String(format!("{}?$skiptoken=RTS{seq:x}", at.url));
    }
    ctx.json(StatusCode::OK, body, None)
}

/// POST: 201 with the new object and its ETag.
fn created(p: &Planner, ctx: &Ctx, kind: Kind, id: Result<String, GraphError>) -> Response {
    match id {
        Ok(id) => {
            let st = p.state();
            match st.render(kind, &id, true) {
                Some((v, etag)) => {
                    let mut r = ctx.json(StatusCode::CREATED, v, Some(&etag));
                    if let Ok(loc) = HeaderValue::from_str(&format!(
                        "https://graph.microsoft.com/v1.0/planner/{}/{id}",
                        match kind {
                            Kind::Plan => "plans",
                            Kind::Bucket => "buckets",
                            _ => "tasks",
                        }
                    )) {
                        r.headers_mut().insert(header::LOCATION, loc);
                    }
                    r
                }
                None => ctx.error(&GraphError::not_found(kind.label(), &id)),
            }
        }
        Err(e) => ctx.error(&e),
    }
}

/// PATCH: If-Match checked, change applied, then 204 or (with `Prefer: return=representation`)
/// 200 with the object and its new ETag.
fn conditional_write(
    p: &Planner,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    body: &Bytes,
    apply: impl FnOnce(&mut crate::model::State, &Value, &Caller) -> Result<(), GraphError>,
) -> Response {
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(e) => return ctx.error(&e),
    };
    let race_user = p.race_user();
    let limits = p.limits();
    let mut st = p.state();
    if let Err(e) = st.check_if_match(kind, id, ctx.if_match.as_deref(), &race_user, &limits) {
        return ctx.error(&e);
    }
    if let Err(e) = apply(&mut st, &body, &ctx.caller) {
        return ctx.error(&e);
    }
    let Some((v, etag)) = st.render(kind, id, true) else {
        return ctx.error(&GraphError::not_found(kind.label(), id));
    };
    if ctx.prefer_representation {
        let mut r = ctx.json(StatusCode::OK, v, Some(&etag));
        r.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("return=representation"),
        );
        r
    } else {
        let mut r = ctx.no_content();
        if let Ok(e) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, e);
        }
        r
    }
}

fn conditional_delete(
    p: &Planner,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    delete: impl FnOnce(&mut crate::model::State),
) -> Response {
    let race_user = p.race_user();
    let limits = p.limits();
    let mut st = p.state();
    if let Err(e) = st.check_if_match(kind, id, ctx.if_match.as_deref(), &race_user, &limits) {
        return ctx.error(&e);
    }
    delete(&mut st);
    ctx.no_content()
}

// ---------- plans ----------

async fn group_plans(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(gid): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_list(
        &p,
        &ctx,
        Kind::Plan,
        |s| s.plans_of_group(&gid),
        "planner/plans",
    )
}

async fn list_plans(AxState(p): AxState<Planner>, h: HeaderMap) -> Response {
    let ctx = ctx!(h);
    read_list(&p, &ctx, Kind::Plan, |s| Ok(s.all_plans()), "planner/plans")
}

async fn create_plan(AxState(p): AxState<Planner>, h: HeaderMap, body: Bytes) -> Response {
    let ctx = ctx!(h);
    let limits = p.limits();
    let id = parse_body(&body).and_then(|b| p.state().create_plan(&b, &ctx.caller, &limits));
    created(&p, &ctx, Kind::Plan, id)
}

async fn get_plan(AxState(p): AxState<Planner>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let ctx = ctx!(h);
    read_one(&p, &ctx, Kind::Plan, &id)
}

async fn patch_plan(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = ctx!(h);
    conditional_write(&p, &ctx, Kind::Plan, &id, &body, |s, b, _| {
        s.patch_plan(&id, b)
    })
}

async fn delete_plan(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    conditional_delete(&p, &ctx, Kind::Plan, &id, |s| s.delete_plan(&id))
}

async fn get_plan_details(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_one(&p, &ctx, Kind::PlanDetails, &id)
}

async fn patch_plan_details(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = ctx!(h);
    conditional_write(&p, &ctx, Kind::PlanDetails, &id, &body, |s, b, _| {
        s.patch_plan_details(&id, b)
    })
}

async fn plan_buckets(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_list(
        &p,
        &ctx,
        Kind::Bucket,
        |s| s.buckets_of_plan(Some(&id)),
        &format!("planner/plans('{id}')/buckets"),
    )
}

async fn plan_tasks(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    OriginalUri(original): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_task_page(
        &p,
        &ctx,
        &ListAt::of(&original, &h),
        |s| s.tasks_of_plan(&id),
        &format!("planner/plans('{id}')/tasks"),
    )
}

// ---------- buckets ----------

async fn list_buckets(AxState(p): AxState<Planner>, h: HeaderMap) -> Response {
    let ctx = ctx!(h);
    read_list(
        &p,
        &ctx,
        Kind::Bucket,
        |s| s.buckets_of_plan(None),
        "planner/buckets",
    )
}

async fn create_bucket(AxState(p): AxState<Planner>, h: HeaderMap, body: Bytes) -> Response {
    let ctx = ctx!(h);
    let limits = p.limits();
    let id = parse_body(&body).and_then(|b| p.state().create_bucket(&b, &limits));
    created(&p, &ctx, Kind::Bucket, id)
}

async fn get_bucket(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_one(&p, &ctx, Kind::Bucket, &id)
}

async fn patch_bucket(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = ctx!(h);
    conditional_write(&p, &ctx, Kind::Bucket, &id, &body, |s, b, _| {
        s.patch_bucket(&id, b)
    })
}

async fn delete_bucket(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    conditional_delete(&p, &ctx, Kind::Bucket, &id, |s| s.delete_bucket(&id))
}

async fn bucket_tasks(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    OriginalUri(original): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_task_page(
        &p,
        &ctx,
        &ListAt::of(&original, &h),
        |s| s.tasks_of_bucket(&id),
        &format!("planner/buckets('{id}')/tasks"),
    )
}

// ---------- tasks ----------

async fn create_task(AxState(p): AxState<Planner>, h: HeaderMap, body: Bytes) -> Response {
    let ctx = ctx!(h);
    let limits = p.limits();
    let id = parse_body(&body).and_then(|b| p.state().create_task(&b, &ctx.caller, &limits));
    created(&p, &ctx, Kind::Task, id)
}

async fn get_task(AxState(p): AxState<Planner>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let ctx = ctx!(h);
    read_one(&p, &ctx, Kind::Task, &id)
}

async fn patch_task(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = ctx!(h);
    let limits = p.limits();
    conditional_write(&p, &ctx, Kind::Task, &id, &body, |s, b, who| {
        s.patch_task(&id, b, who, &limits)
    })
}

async fn delete_task(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    conditional_delete(&p, &ctx, Kind::Task, &id, |s| s.delete_task(&id))
}

async fn get_task_details(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = ctx!(h);
    read_one(&p, &ctx, Kind::TaskDetails, &id)
}

async fn patch_task_details(
    AxState(p): AxState<Planner>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let ctx = ctx!(h);
    let limits = p.limits();
    conditional_write(&p, &ctx, Kind::TaskDetails, &id, &body, |s, b, who| {
        s.patch_task_details(&id, b, who, &limits)
    })
}

// ---------- admin ----------

/// Admin routes under `/_sandbox/` (no auth).
pub(crate) fn admin_routes(p: &Planner) -> Router {
    Router::new()
        .route("/_sandbox/snapshot", get(admin_snapshot))
        .route("/_sandbox/reset", post(admin_reset))
        .route("/_sandbox/groups", post(admin_group))
        .route("/_sandbox/plans", post(admin_plan))
        .route("/_sandbox/buckets", post(admin_bucket))
        .route("/_sandbox/etag-races", post(admin_races))
        .route("/_sandbox/throttle", post(admin_throttle))
        .route("/_sandbox/tasks/{id}/as-user", post(admin_update_task))
        .with_state(p.clone())
}

fn admin_result(r: Result<Value, GraphError>) -> Response {
    match r {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => {
            let rid = uuid::Uuid::new_v4().to_string();
            error_response(&e, &rid, &rid)
        }
    }
}

fn admin_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, GraphError> {
    serde_json::from_slice(body)
        .map_err(|e| GraphError::bad_request(format!("invalid admin request body: {e}")))
}

async fn admin_snapshot(AxState(p): AxState<Planner>) -> Response {
    (StatusCode::OK, axum::Json(p.snapshot())).into_response()
}

async fn admin_reset(AxState(p): AxState<Planner>) -> Response {
    p.reset();
    admin_result(Ok(json!({"reset": true})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewGroup {
    id: Option<String>,
    display_name: String,
}

async fn admin_group(AxState(p): AxState<Planner>, body: Bytes) -> Response {
    admin_result(
        admin_json::<NewGroup>(&body)
            .map(|g| json!({"id": p.create_group(g.id.as_deref(), &g.display_name)})),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewPlan {
    group_id: String,
    #[serde(flatten)]
    plan: crate::config::SeedPlan,
}

async fn admin_plan(AxState(p): AxState<Planner>, body: Bytes) -> Response {
    admin_result(
        admin_json::<NewPlan>(&body)
            .and_then(|n| p.create_plan(&n.group_id, n.plan))
            .map(|id| json!({"id": id})),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewBucket {
    plan_id: String,
    name: String,
}

async fn admin_bucket(AxState(p): AxState<Planner>, body: Bytes) -> Response {
    admin_result(
        admin_json::<NewBucket>(&body)
            .and_then(|b| p.create_bucket(&b.plan_id, &b.name))
            .map(|id| json!({"id": id})),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Races {
    n: u32,
    patch: Option<Value>,
}

async fn admin_races(AxState(p): AxState<Planner>, body: Bytes) -> Response {
    admin_result(admin_json::<Races>(&body).map(|r| {
        match r.patch {
            Some(patch) => p.force_etag_races_with(r.n, patch),
            None => p.force_etag_races(r.n),
        }
        json!({"pending": p.pending_etag_races()})
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Throttle {
    n: u32,
    retry_after_secs: u64,
    #[serde(default)]
    in_batch: bool,
}

async fn admin_throttle(AxState(p): AxState<Planner>, body: Bytes) -> Response {
    admin_result(admin_json::<Throttle>(&body).map(|t| {
        if t.in_batch {
            p.throttle_next_in_batch(t.n, t.retry_after_secs);
        } else {
            p.throttle_next(t.n, t.retry_after_secs);
        }
        json!({"pending": t.n})
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AsUser {
    user_id: String,
    user_name: String,
    #[serde(default)]
    task: Option<Value>,
    #[serde(default)]
    details: Option<Value>,
}

async fn admin_update_task(
    AxState(p): AxState<Planner>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    admin_result(admin_json::<AsUser>(&body).and_then(|u| {
        let who = Caller::user(&u.user_id, &u.user_name);
        if let Some(t) = &u.task {
            p.update_task_as(&who, &id, t)?;
        }
        if let Some(d) = &u.details {
            p.update_task_details_as(&who, &id, d)?;
        }
        let (task, details) = p
            .get_task(&id)
            .ok_or_else(|| GraphError::not_found("plannerTask", &id))?;
        Ok(json!({"task": task, "details": details}))
    }))
}

/// Marks a request that runs inside a `$batch`.
#[derive(Clone, Copy)]
pub(crate) struct InnerBatchRequest;

/// Builds an inner request for `$batch` from its parts.
pub(crate) fn inner_request(
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: Option<Vec<u8>>,
) -> Result<Request, String> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method '{method}'"))?;
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .map_err(|e| format!("invalid request: {e}"))?;
    *req.headers_mut() = headers.clone();
    req.extensions_mut().insert(InnerBatchRequest);
    Ok(req)
}
