//! Inspection and control: `/_sandbox/faults`, `/_sandbox/calls`, `/_sandbox/state`, and the
//! page at `/`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::errors;
use crate::faults::FaultRule;

pub(crate) fn router() -> Router<App> {
    Router::new()
        .route("/", get(page))
        .route(
            "/_sandbox/faults",
            get(list_faults)
                .put(replace_faults)
                .post(add_fault)
                .delete(clear_faults),
        )
        .route("/_sandbox/faults/etag-races", post(etag_races))
        .route("/_sandbox/faults/{id}", delete(remove_fault))
        .route("/_sandbox/calls", get(calls).delete(clear_calls))
        .route("/_sandbox/state", get(state))
}

/// Everything the sandbox holds, as JSON.
pub(crate) fn state_json(app: &App) -> Value {
    json!({
        "tg": app.tg.snapshot(),
        "webhooks": app.tg.webhooks().subscriptions(),
        "dataverse": app.dataverse.snapshot(),
        "planner": app.planner.snapshot(),
        "faults": app.faults.list(),
    })
}

async fn state(State(app): State<App>) -> Response {
    axum::Json(state_json(&app)).into_response()
}

#[derive(Deserialize)]
struct CallsQuery {
    system: Option<String>,
    limit: Option<usize>,
}

async fn calls(State(app): State<App>, Query(q): Query<CallsQuery>) -> Response {
    let mut calls = match &q.system {
        Some(s) => app.calls.of_system(s),
        None => app.calls.all(),
    };
    if let Some(limit) = q.limit {
        let skip = calls.len().saturating_sub(limit);
        calls.drain(..skip);
    }
    axum::Json(json!({"calls": calls, "counts": app.calls.counts()})).into_response()
}

async fn clear_calls(State(app): State<App>) -> Response {
    app.calls.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn list_faults(State(app): State<App>) -> Response {
    axum::Json(json!({"rules": app.faults.list()})).into_response()
}

fn bad(message: String) -> Response {
    errors::sandbox(StatusCode::BAD_REQUEST, "invalid_request", &message)
}

async fn replace_faults(State(app): State<App>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Rules {
        rules: Vec<FaultRule>,
    }
    let rules: Rules = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid body: {e}")),
    };
    match app.faults.replace_all(rules.rules) {
        Ok(ids) => axum::Json(json!({"ids": ids})).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

async fn add_fault(State(app): State<App>, body: Bytes) -> Response {
    let rule: FaultRule = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid body: {e}")),
    };
    match app.faults.add(rule) {
        Ok(id) => (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response(),
        Err(e) => bad(e.to_string()),
    }
}

async fn clear_faults(State(app): State<App>) -> Response {
    app.faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn remove_fault(State(app): State<App>, Path(id): Path<u64>) -> Response {
    if app.faults.remove(id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        errors::sandbox(StatusCode::NOT_FOUND, "not_found", "no such fault rule")
    }
}

async fn etag_races(State(app): State<App>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Races {
        system: String,
        n: u32,
    }
    let input: Races = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("invalid body: {e}")),
    };
    match crate::force_etag_races(&app, &input.system, input.n) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bad(e.to_string()),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => esc(s),
        Some(other) => esc(&other.to_string()),
    }
}

/// Renders the rows found under `key` in an emulator's snapshot (an array, or an object of rows).
fn records_table(snapshot: &Value, key: &str, columns: &[&str]) -> String {
    let rows: Vec<&Value> = match snapshot.get(key) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Object(o)) => o.values().collect(),
        _ => Vec::new(),
    };
    if rows.is_empty() {
        return "<p class=empty>none yet</p>".into();
    }
    let mut html = String::from("<table><tr>");
    for c in columns {
        html.push_str(&format!("<th>{}</th>", esc(c)));
    }
    html.push_str("</tr>");
    for row in rows.iter().rev().take(100) {
        html.push_str("<tr>");
        for c in columns {
            html.push_str(&format!("<td>{}</td>", cell(row.get(*c))));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    html
}

async fn page(State(app): State<App>) -> Html<String> {
    let tg = serde_json::to_value(app.tg.snapshot()).unwrap_or_default();
    let dataverse = app.dataverse.snapshot();
    // Planner's snapshot lists `{task, details}` pairs: show the tasks.
    let planner_tasks: Vec<Value> = app.planner.snapshot()["tasks"]
        .as_array()
        .map(|a| a.iter().map(|t| t["task"].clone()).collect())
        .unwrap_or_default();
    let planner = json!({"tasks": planner_tasks});
    let mut calls = String::from(
        "<table><tr><th>#</th><th>at</th><th>system</th><th>method</th><th>path</th><th>status</th><th>caller</th><th>ms</th></tr>",
    );
    for c in app.calls.recent(50) {
        let status = if c.dropped {
            "dropped".into()
        } else {
            c.status.to_string()
        };
        calls.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=s{}>{}</td><td>{}</td><td>{:.1}</td></tr>",
            c.seq,
            esc(&c.at),
            esc(&c.system),
            esc(&c.method),
            esc(&c.path),
            c.status / 100,
            status,
            esc(&c.caller.map(|c| c.name).unwrap_or_default()),
            c.latency_ms
        ));
    }
    calls.push_str("</table>");
    let subs: String = app
        .tg
        .webhooks()
        .subscriptions()
        .iter()
        .map(|s| {
            format!(
                "<li>{} → {} {}: {} delivered, {} pending, {} failed attempts, {} skipped while paused</li>",
                esc(&s.name),
                esc(&s.url),
                if s.paused { "(paused)" } else { "" },
                s.stats.delivered,
                s.stats.pending,
                s.stats.failed_attempts,
                s.stats.skipped_paused
            )
        })
        .collect();
    let faults: String = app
        .faults
        .list()
        .iter()
        .map(|f| {
            format!(
                "<li>{}</li>",
                esc(&serde_json::to_string(f).unwrap_or_default())
            )
        })
        .collect();
    Html(format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="3">
<title>tg-bridge sandbox</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
th {{ background: #f0f0f0; }} .empty {{ color: #888; }}
.s4 {{ color: #b60; }} .s5, .s0 {{ color: #c00; font-weight: bold; }}
</style></head><body>
<h1>tg-bridge sandbox</h1>
<h2>Trading Grid: cases</h2>{cases}
<h3>Webhook subscriptions</h3><ul>{subs}</ul>
<h2>Dataverse: incidents</h2>{incidents}
<h2>Planner: tasks</h2>{tasks}
<h2>Active faults</h2><ul>{faults}</ul>
<h2>Recent calls</h2>{calls}
</body></html>"#,
        cases = records_table(
            &tg,
            "cases",
            &[
                "case_id",
                "revision",
                "title",
                "category",
                "priority",
                "status",
                "updated_at"
            ]
        ),
        incidents = records_table(
            &dataverse["tables"],
            "incidents",
            &[
                "incidentid",
                "title",
                "statecode",
                "statuscode",
                "tgb_tgcaseid",
                "modifiedon"
            ]
        ),
        tasks = records_table(
            &planner,
            "tasks",
            &[
                "id",
                "title",
                "planId",
                "bucketId",
                "percentComplete",
                "priority"
            ]
        ),
    ))
}
