//! JSON `$batch`: at most 20 requests, `dependsOn` respected, 424 when a dependency failed,
//! not atomic. Each inner request runs through the same routes (and the same throttle) as an
//! outer one, with the outer request's caller.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

use crate::Planner;
use crate::api::{error_response, inner_request};
use crate::error::GraphError;

/// Graph's limit on the number of requests in one batch.
pub const MAX_BATCH_REQUESTS: usize = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    requests: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default, rename = "dependsOn")]
    depends_on: Vec<String>,
}

fn ids(h: &HeaderMap) -> (String, String) {
    let rid = uuid::Uuid::new_v4().to_string();
    let client = h
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
        .unwrap_or_else(|| rid.clone());
    (rid, client)
}

fn bad(h: &HeaderMap, msg: impl Into<String>) -> Response {
    let (rid, client) = ids(h);
    error_response(&GraphError::bad_request(msg), &rid, &client)
}

/// Orders the steps so that each comes after its dependencies (list order otherwise).
fn order(steps: &[Step]) -> Result<Vec<usize>, String> {
    let index: BTreeMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut out = Vec::with_capacity(steps.len());
    while out.len() < steps.len() {
        let next = (0..steps.len()).find(|i| {
            !done.contains(i)
                && steps[*i]
                    .depends_on
                    .iter()
                    .all(|d| index.get(d.as_str()).is_some_and(|j| done.contains(j)))
        });
        match next {
            Some(i) => {
                done.insert(i);
                out.push(i);
            }
            None => return Err("The dependsOn chain of the batch contains a cycle.".into()),
        }
    }
    Ok(out)
}

pub(crate) async fn batch(AxState(p): AxState<Planner>, h: HeaderMap, body: Bytes) -> Response {
    let parsed: BatchBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(&h, format!("Invalid batch payload format: {e}")),
    };
    let steps = parsed.requests;
    if steps.len() > MAX_BATCH_REQUESTS {
        return bad(
            &h,
            format!(
                "The number of batch requests ({}) exceeds the limit of {MAX_BATCH_REQUESTS}.",
                steps.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for s in &steps {
        if !seen.insert(s.id.as_str()) {
            return bad(&h, format!("Batch request id '{}' is duplicated.", s.id));
        }
    }
    for s in &steps {
        for d in &s.depends_on {
            if !seen.contains(d.as_str()) {
                return bad(
                    &h,
                    format!(
                        "Request '{}' depends on '{d}', which is not in the batch.",
                        s.id
                    ),
                );
            }
        }
        if s.url.contains("://") || s.url.contains("$batch") {
            return bad(
                &h,
                format!(
                    "Request '{}': the url must be relative to the version (e.g. /planner/tasks).",
                    s.id
                ),
            );
        }
    }
    let order = match order(&steps) {
        Ok(o) => o,
        Err(e) => return bad(&h, e),
    };

    // The outer caller applies to every inner request.
    let mut caller_headers = HeaderMap::new();
    for (k, v) in &h {
        if k.as_str().starts_with("x-tgb-caller-") {
            caller_headers.insert(k.clone(), v.clone());
        }
    }
    let inner_router = crate::api::graph_routes(&p, false);
    let mut statuses: BTreeMap<usize, u16> = BTreeMap::new();
    let mut responses: BTreeMap<usize, Value> = BTreeMap::new();
    for i in order {
        let step = &steps[i];
        let failed_dep = step
            .depends_on
            .iter()
            .find(|d| {
                steps
                    .iter()
                    .position(|s| &s.id == *d)
                    .and_then(|j| statuses.get(&j))
                    .is_none_or(|st| !(200..300).contains(st))
            })
            .cloned();
        let (status, headers, body) = match failed_dep {
            Some(d) => {
                let (rid, client) = ids(&h);
                let e = GraphError::new(
                    424,
                    "FailedDependency",
                    format!(
                        "The request '{}' failed because its dependency '{d}' failed.",
                        step.id
                    ),
                );
                (
                    424,
                    json!({"Content-Type": "application/json"}),
                    Some(e.body(&rid, &client)),
                )
            }
            None => run_step(&inner_router, step, &caller_headers).await,
        };
        statuses.insert(i, status);
        let mut r = Map::new();
        r.insert("id".into(), step.id.clone().into());
        r.insert("status".into(), status.into());
        r.insert("headers".into(), headers);
        if let Some(b) = body {
            r.insert("body".into(), b);
        }
        responses.insert(i, Value::Object(r));
    }
    let (rid, client) = ids(&h);
    let mut resp = (
        StatusCode::OK,
        axum::Json(json!({"responses": responses.into_values().collect::<Vec<_>>()})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&client) {
        resp.headers_mut().insert("client-request-id", v);
    }
    resp
}

async fn run_step(
    router: &axum::Router,
    step: &Step,
    caller_headers: &HeaderMap,
) -> (u16, Value, Option<Value>) {
    let error = |status: u16, msg: String| {
        let rid = uuid::Uuid::new_v4().to_string();
        let e = GraphError::new(status, "BadRequest", msg);
        (
            status,
            json!({"Content-Type": "application/json"}),
            Some(e.body(&rid, &rid)),
        )
    };
    let mut headers = HeaderMap::new();
    let mut has_content_type = false;
    for (k, v) in &step.headers {
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("x-tgb-caller-") {
            continue;
        }
        has_content_type |= lower == "content-type";
        match (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => return error(400, format!("Request '{}': invalid header '{k}'.", step.id)),
        }
    }
    headers.extend(caller_headers.clone());
    let body = match &step.body {
        Some(_) if !has_content_type => {
            return error(
                400,
                format!(
                    "Request '{}': a Content-Type header is required when a body is given.",
                    step.id
                ),
            );
        }
        Some(b) => Some(serde_json::to_vec(b).unwrap_or_default()),
        None => None,
    };
    let uri = format!("/v1.0/{}", step.url.trim_start_matches('/'));
    let req = match inner_request(&step.method, &uri, &headers, body) {
        Ok(r) => r,
        Err(e) => return error(400, format!("Request '{}': {e}", step.id)),
    };
    let resp = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let mut out_headers = Map::new();
    for (name, shown) in [
        ("content-type", "Content-Type"),
        ("etag", "ETag"),
        ("retry-after", "Retry-After"),
        ("location", "Location"),
        ("preference-applied", "Preference-Applied"),
    ] {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            out_headers.insert(shown.into(), v.into());
        }
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&bytes).ok()
    };
    (status, Value::Object(out_headers), body)
}
