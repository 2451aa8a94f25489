//! The call log, and the edge middleware that applies faults and records every call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::App;
use crate::errors;
use crate::faults::Action;
use crate::identity::Caller;

/// One call received by an emulated system.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallRecord {
    /// Order of arrival (1 first).
    pub seq: u64,
    /// When it arrived (RFC 3339, whole seconds).
    pub at: String,
    /// When it arrived, milliseconds since the sandbox started (for rates and overlaps finer
    /// than `at`).
    #[serde(default)]
    pub arrived_ms: f64,
    /// `tg`, `dataverse`, `graph` or `entra`.
    pub system: String,
    /// HTTP method.
    pub method: String,
    /// Path relative to the system (`/v1/cases/C-10001`).
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// The path with ids replaced (`/v1/cases/{id}`).
    pub route: String,
    /// Status answered; 0 when the connection was dropped.
    pub status: u16,
    /// The connection was closed without an answer (fault).
    pub dropped: bool,
    /// The caller, once identified.
    pub caller: Option<Caller>,
    /// Milliseconds from arrival to answer.
    pub latency_ms: f64,
    /// Ids of the fault rules applied.
    pub faults: Vec<u64>,
    /// Sent through `/_sandbox/as/{user}/...`.
    pub scripted: bool,
}

/// Counts of calls by route and status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls in the log.
    pub total: u64,
    /// `"{system} {method} {route}"` → status (`"200"`, `"dropped"`) → count.
    pub by_route: BTreeMap<String, BTreeMap<String, u64>>,
    /// status → count.
    pub by_status: BTreeMap<String, u64>,
    /// system → count.
    pub by_system: BTreeMap<String, u64>,
}

impl CallCounts {
    /// Count of a route (`"tg GET /v1/cases/{id}"`) with a status (`"200"`).
    pub fn get(&self, route: &str, status: &str) -> u64 {
        self.by_route
            .get(route)
            .and_then(|s| s.get(status))
            .copied()
            .unwrap_or(0)
    }
}

/// The call log (shared, cheap to clone).
#[derive(Clone)]
pub struct CallLog {
    inner: Arc<Mutex<LogState>>,
}

struct LogState {
    started: Instant,
    calls: VecDeque<CallRecord>,
    capacity: usize,
    next_seq: u64,
}

impl CallLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogState {
                started: Instant::now(),
                calls: VecDeque::new(),
                capacity: capacity.max(1),
                next_seq: 1,
            })),
        }
    }

    fn push(&self, mut record: CallRecord) {
        let mut state = self.inner.lock().unwrap();
        record.seq = state.next_seq;
        state.next_seq += 1;
        if state.calls.len() == state.capacity {
            state.calls.pop_front();
        }
        state.calls.push_back(record);
    }

    /// Milliseconds since the log was created (the sandbox started).
    pub fn elapsed_ms(&self) -> f64 {
        self.inner.lock().unwrap().started.elapsed().as_secs_f64() * 1000.0
    }

    /// Every call kept, oldest first.
    pub fn all(&self) -> Vec<CallRecord> {
        self.inner.lock().unwrap().calls.iter().cloned().collect()
    }

    /// Calls of one system, oldest first.
    pub fn of_system(&self, system: &str) -> Vec<CallRecord> {
        self.inner
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.system == system)
            .cloned()
            .collect()
    }

    /// The last `n` calls, newest first.
    pub fn recent(&self, n: usize) -> Vec<CallRecord> {
        self.inner
            .lock()
            .unwrap()
            .calls
            .iter()
            .rev()
            .take(n)
            .cloned()
            .collect()
    }

    /// Counts by route and status.
    pub fn counts(&self) -> CallCounts {
        let state = self.inner.lock().unwrap();
        let mut counts = CallCounts::default();
        for c in &state.calls {
            let status = if c.dropped {
                "dropped".to_owned()
            } else {
                c.status.to_string()
            };
            counts.total += 1;
            *counts
                .by_route
                .entry(format!("{} {} {}", c.system, c.method, c.route))
                .or_default()
                .entry(status.clone())
                .or_default() += 1;
            *counts.by_status.entry(status).or_default() += 1;
            *counts.by_system.entry(c.system.clone()).or_default() += 1;
        }
        counts
    }

    /// Forgets every call.
    pub fn clear(&self) {
        self.inner.lock().unwrap().calls.clear();
    }
}

/// Replaces ids in a path: `/v1/cases/C-10001` → `/v1/cases/{id}`,
/// `/api/data/v9.2/incidents(…)` → `/api/data/v9.2/incidents({key})`.
pub fn route_of(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if let Some(open) = seg.find('(') {
                format!("{}({{key}})", &seg[..open])
            } else if is_id(seg) {
                "{id}".to_owned()
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Ids hold a `:` (partner keys), two digits or more (`C-10001`, GUIDs), a digit beside a
/// separator (`SO-1`), or are Planner's 28-character ids (base64url, which may hold no digit at
/// all); words such as `oauth2`, `details` and versions such as `v9.2` do not.
fn is_id(seg: &str) -> bool {
    if is_version(seg) {
        return false;
    }
    let digits = seg.chars().filter(char::is_ascii_digit).count();
    let planner = seg.len() >= 20
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && seg.chars().any(|c| c.is_ascii_uppercase())
        && seg.chars().any(|c| c.is_ascii_lowercase());
    seg.contains(':') || digits >= 2 || (digits == 1 && seg.contains(['-', '_'])) || planner
}

fn is_version(seg: &str) -> bool {
    seg.strip_prefix('v')
        .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Closes the connection a request came on (set by the accept loop).
#[derive(Clone)]
pub(crate) struct ConnKill(pub Arc<Notify>);

/// (system, path relative to it, came through `/_sandbox/as`)
fn classify(path: &str) -> Option<(&'static str, String, bool)> {
    for (prefix, system) in [
        ("/tg", "tg"),
        ("/dataverse", "dataverse"),
        ("/graph", "graph"),
        ("/entra", "entra"),
    ] {
        if let Some(rest) = path.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with('/'))
            && !rest.starts_with("/_sandbox/")
        {
            return Some((system, rest.to_owned(), false));
        }
    }
    let rest = path.strip_prefix("/_sandbox/as/")?;
    let (_, after_user) = rest.split_once('/')?;
    let (system, tail) = after_user.split_once('/').unwrap_or((after_user, ""));
    let system = match system {
        "dataverse" => "dataverse",
        "graph" => "graph",
        _ => return None,
    };
    Some((system, format!("/{tail}"), true))
}

fn fault_response(system: &str, status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let throttled = status == StatusCode::TOO_MANY_REQUESTS;
    let mut response = match system {
        "dataverse" if throttled => errors::dataverse(
            status,
            "0x80072322",
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        ),
        "dataverse" => errors::dataverse(status, "0x80040216", "An unexpected error occurred."),
        "graph" if throttled => {
            errors::graph(status, "TooManyRequests", "The request has been throttled.")
        }
        "graph" => errors::graph(
            status,
            "serviceNotAvailable",
            "The service is temporarily unavailable.",
        ),
        "entra" => errors::entra(
            status,
            "temporarily_unavailable",
            "AADSTS90033: A transient error has occurred. Please try again.",
        ),
        _ if throttled => errors::tg(status, "rate_limited", "too many requests"),
        _ => errors::tg(
            status,
            "unavailable",
            "the service is temporarily unavailable",
        ),
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Applies faults, then records the call.
pub(crate) async fn edge(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some((system, path, scripted)) = classify(req.uri().path()) else {
        return next.run(req).await;
    };
    let started = Instant::now();
    let at = crate::tg::model::now_rfc3339();
    let arrived_ms = app.calls.elapsed_ms();
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let decision = if scripted {
        Default::default()
    } else {
        app.faults.decide(system, &method, &path)
    };
    let record = |status: u16, dropped: bool, caller: Option<Caller>| CallRecord {
        seq: 0,
        at: at.clone(),
        arrived_ms,
        system: system.to_owned(),
        method: method.clone(),
        route: route_of(&path),
        path: path.clone(),
        query: query.clone(),
        status,
        dropped,
        caller,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        faults: decision.rule_ids.clone(),
        scripted,
    };
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    match decision.action {
        Some(Action::Drop) => {
            app.calls.push(record(0, true, None));
            if let Some(kill) = req.extensions().get::<ConnKill>() {
                kill.0.notify_one();
                // The accept loop drops the connection; this future is dropped with it.
                std::future::pending::<()>().await;
            }
            StatusCode::BAD_GATEWAY.into_response()
        }
        Some(Action::Error {
            status,
            retry_after,
        }) => {
            let response = fault_response(system, status, retry_after);
            app.calls
                .push(record(response.status().as_u16(), false, None));
            response
        }
        None => {
            let response = next.run(req).await;
            let caller = response.extensions().get::<Caller>().cloned();
            app.calls
                .push(record(response.status().as_u16(), false, caller));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_replaces_ids_but_keeps_versions() {
        assert_eq!(route_of("/v1/cases/C-10001"), "/v1/cases/{id}");
        assert_eq!(
            route_of("/v1/partners/ZZ:ACME01/onboarding"),
            "/v1/partners/{id}/onboarding"
        );
        assert_eq!(
            route_of("/api/data/v9.2/incidents(5b1c0e2a-0000-0000-0000-000000000001)"),
            "/api/data/v9.2/incidents({key})"
        );
        assert_eq!(route_of("/v1.0/planner/tasks"), "/v1.0/planner/tasks");
        assert_eq!(
            route_of("/v1.0/planner/tasks/A_RneCuNUlpWukZpxwOFdsSoAQwv/details"),
            "/v1.0/planner/tasks/{id}/details"
        );
        assert_eq!(route_of("/oauth2/token"), "/oauth2/token");
        assert_eq!(
            route_of("/tenant-1/oauth2/v2.0/token"),
            "/{id}/oauth2/v2.0/token"
        );
    }
}
