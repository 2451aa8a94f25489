//! Microsoft Graph v1.0, the Planner part tg-bridge uses.
//!
//! - Authentication: an Entra client-credentials token ([`crate::oauth::TokenCache`], scope
//!   [`graph_scope`] of the Graph URL), refreshed before expiry, one retry on 401.
//! - Every request (outer `$batch` included) goes through one [`Governor`] per identity: a 429
//!   pauses the whole lane for `Retry-After` and comes back as [`GraphError::Transient`] carrying
//!   that delay; nothing is retried behind the caller's back.
//! - Writes send `Prefer: return=representation`, so the new ETag comes back without a read;
//!   [`GraphClient::update_task`] and [`GraphClient::update_details`] re-read, re-compute the
//!   change against the fresh object and retry on 412/409, a bounded number of times.
//! - [`GraphClient::create_tasks`]: JSON `$batch` of at most 20 creations chained with
//!   `dependsOn`, so that after a failure (a 429) the rest answer 424 without being executed.
//! - Requests on single tasks (`/planner/tasks...`) are coalesced, by group commit and not by
//!   a timer: a request leaves at once when a sender is free (at most
//!   [`MAX_ROUNDS_IN_FLIGHT`] requests or `$batch`es in flight, so one slow answer does not
//!   hold the others); requests made in the same turn (the handlers of a gathered delivery) or
//!   while every sender is busy leave together in one JSON `$batch` (independent requests, at
//!   most 20). Each keeps its own answer, status and error, as if sent alone; a `$batch` that
//!   fails as a whole fails each of its requests as transient.
//!
//! | answer | [`GraphError`] |
//! |---|---|
//! | 429 (lane paused), 408, 5xx, timeouts, connection errors | `Transient` |
//! | 412, 409 | `Conflict` (handled inside the update helpers) |
//! | 404 | `NotFound` |
//! | other 4xx (400 schema, 403 limits such as `MaximumTasksInProject`) | `Permanent` |
//! | no token | `Auth` |

pub mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tgb_governor::Governor;
use url::Url;

use crate::oauth::{ClientCredentials, OAuthError, TokenCache};
use tgb_governor::{Classify, ErrorClass};
pub use types::*;

/// The scope of a Graph token in the global cloud (client credentials); other clouds and the
/// sandbox use [`graph_scope`] of their Graph URL.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// `{graph url}/.default`: the scope of a token for the Graph at `graph_url` (national clouds
/// have their own Graph hosts, e.g. `https://graph.microsoft.us`, and their tokens are issued
/// for that host, not for `graph.microsoft.com`).
pub fn graph_scope(graph_url: &Url) -> String {
    format!("{}/.default", graph_url.as_str().trim_end_matches('/'))
}
/// Graph's limit on requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

/// A Graph call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Worth retrying later; `retry_after` when Graph said how long (after a 429 the whole
    /// lane is paused too).
    #[error("Graph {route}: transient failure ({status:?}): {message}")]
    Transient {
        /// `PATCH /planner/tasks/{id}`.
        route: String,
        /// The HTTP status, if Graph answered.
        status: Option<u16>,
        /// From `Retry-After`.
        retry_after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// 412 or 409: the ETag in `If-Match` is not the current one.
    #[error("Graph {route}: version conflict ({status})")]
    Conflict {
        /// The route.
        route: String,
        /// 412 or 409.
        status: u16,
    },
    /// 404.
    #[error("Graph {route}: not found: {message}")]
    NotFound {
        /// The route.
        route: String,
        /// Graph's message.
        message: String,
    },
    /// Graph refused the request; the same request cannot succeed.
    #[error("Graph {route}: refused with {status} {code}: {message}")]
    Permanent {
        /// The route.
        route: String,
        /// The HTTP status.
        status: u16,
        /// Graph's error code (`MaximumTasksInProject`, `BadRequest`, ...).
        code: String,
        /// Graph's message.
        message: String,
    },
    /// No token.
    #[error("Graph token: {0}")]
    Auth(#[from] OAuthError),
}

impl Classify for GraphError {
    /// Outages and ETag conflicts are transient; a refused token or a 401 is fatal; a 404 or
    /// any other refusal is permanent for the request that met it.
    fn class(&self) -> ErrorClass {
        match self {
            GraphError::Transient { retry_after, .. } => ErrorClass::Transient {
                retry_after: *retry_after,
            },
            GraphError::Conflict { .. } => ErrorClass::TRANSIENT,
            GraphError::Auth(e) => e.class(),
            GraphError::Permanent { status: 401, .. } => ErrorClass::Fatal,
            GraphError::NotFound { .. } | GraphError::Permanent { .. } => ErrorClass::Permanent,
        }
    }
}

impl GraphError {
    /// The delay Graph asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Worth retrying later?
    pub fn is_transient(&self) -> bool {
        match self {
            GraphError::Transient { .. } | GraphError::Conflict { .. } => true,
            GraphError::Auth(e) => e.is_transient(),
            _ => false,
        }
    }

    /// The request certainly had no effect (Graph refused it before applying it).
    pub fn certainly_not_applied(&self) -> bool {
        match self {
            GraphError::Transient { status, .. } => matches!(status, Some(429 | 424)),
            GraphError::Auth(_)
            | GraphError::Conflict { .. }
            | GraphError::NotFound { .. }
            | GraphError::Permanent { .. } => true,
        }
    }

    /// The HTTP status, when Graph answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Transient { status, .. } => *status,
            GraphError::Conflict { status, .. } => Some(*status),
            GraphError::NotFound { .. } => Some(404),
            GraphError::Permanent { status, .. } => Some(*status),
            GraphError::Auth(_) => None,
        }
    }
}

/// Reads `Retry-After` ([`tgb_governor::parse_retry_after`]: delta-seconds or an HTTP date).
fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    tgb_governor::parse_retry_after(value?)
}

/// Classifies a non-success answer.
fn classify(route: &str, status: u16, retry_after: Option<Duration>, body: &[u8]) -> GraphError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = parsed["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let message = parsed["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    let route = route.to_owned();
    match status {
        412 | 409 => GraphError::Conflict { route, status },
        404 => GraphError::NotFound { route, message },
        408 | 424 | 429 => GraphError::Transient {
            route,
            status: Some(status),
            retry_after,
            message,
        },
        s if s >= 500 => GraphError::Transient {
            route,
            status: Some(s),
            retry_after,
            message,
        },
        s => GraphError::Permanent {
            route,
            status: s,
            code,
            message,
        },
    }
}

/// A successful answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

/// Requests on single tasks waiting for a sender ([`GraphClient::call`]).
#[derive(Debug, Default)]
struct Coalescer {
    state: std::sync::Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Sender tasks running (each with one request or one `$batch` in flight, or about to
    /// take the queue).
    senders: usize,
    queue: Vec<Queued>,
}

/// A running sender, counted out however its task ends: a sender that panicked or was
/// dropped with the runtime is not waited for (the running ones, or the next request, serve
/// what it left queued).
struct Sender<'a> {
    coalescer: &'a Coalescer,
    done: bool,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.coalescer.state).senders -= 1;
        }
    }
}

/// Requests (alone or `$batch`es) on single tasks one client has in flight at most.
pub const MAX_ROUNDS_IN_FLIGHT: usize = 4;

#[derive(Debug)]
struct Queued {
    method: Method,
    route: &'static str,
    path: String,
    body: Option<Value>,
    if_match: Option<String>,
    answer: tokio::sync::oneshot::Sender<Result<Answer, GraphError>>,
}

/// The Graph client of one identity (cheap to clone).
#[derive(Clone, Debug)]
pub struct GraphClient {
    http: reqwest::Client,
    base: Url,
    tokens: Arc<TokenCache>,
    governor: Arc<Governor>,
    identity: String,
    max_conflict_retries: u32,
    coalescer: Arc<Coalescer>,
}

impl GraphClient {
    /// A client of Graph at `base` (`https://graph.microsoft.com`, or the sandbox's `/graph`),
    /// authenticating with `tokens`, every request through `governor`. `identity` (the client
    /// id) labels the metrics.
    pub fn new(
        http: reqwest::Client,
        base: Url,
        tokens: Arc<TokenCache>,
        governor: Arc<Governor>,
        identity: impl Into<String>,
    ) -> Self {
        GraphClient {
            http,
            base,
            tokens,
            governor,
            identity: identity.into(),
            max_conflict_retries: 4,
            coalescer: Arc::default(),
        }
    }

    /// How many times an update re-reads and retries after 412/409 (default 4).
    pub fn with_max_conflict_retries(mut self, n: u32) -> Self {
        self.max_conflict_retries = n;
        self
    }

    /// The Entra client credentials for the Graph at `graph_url`: token URL
    /// `{authority}/{tenant}/oauth2/v2.0/token`, scope [`graph_scope`] of `graph_url`.
    pub fn entra_credentials(
        authority: &Url,
        graph_url: &Url,
        tenant: &str,
        client_id: &str,
        credential: impl Into<crate::credential::ClientCredential>,
    ) -> Result<ClientCredentials, url::ParseError> {
        let token_url = Url::parse(&format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.as_str().trim_end_matches('/')
        ))?;
        let mut c = ClientCredentials::new(token_url, client_id, credential);
        c.scope = Some(graph_scope(graph_url));
        Ok(c)
    }

    /// An HTTP client with the timeouts tg-bridge uses for Graph.
    pub fn http_client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .unwrap_or_default()
    }

    /// The lane every request goes through.
    pub fn governor(&self) -> &Arc<Governor> {
        &self.governor
    }

    fn url(&self, path: &str) -> Url {
        let mut s = self.base.as_str().trim_end_matches('/').to_owned();
        s.push_str("/v1.0");
        s.push_str(path);
        Url::parse(&s).unwrap_or_else(|_| self.base.clone())
    }

    /// Sends one request and sorts the answer. A request on a single task (`/planner/tasks`
    /// and below) goes through the coalescer: at once while a sender is free, else in the next
    /// `$batch` with the others queued meanwhile (see the module's notes).
    async fn call(
        &self,
        method: Method,
        route: &'static str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, GraphError> {
        if !route.starts_with("/planner/tasks") {
            return self.send_one(method, route, path, body, if_match).await;
        }
        let (answer, waiting) = tokio::sync::oneshot::channel();
        let start = {
            let mut w = lock(&self.coalescer.state);
            w.queue.push(Queued {
                method: method.clone(),
                route,
                path: path.to_owned(),
                body: body.cloned(),
                if_match: if_match.map(str::to_owned),
                answer,
            });
            // A sender about to run or between rounds takes what is queued; a new one only
            // when every running sender has a round in flight.
            let start = w.senders == 0 || (w.queue.len() == 1 && w.senders < MAX_ROUNDS_IN_FLIGHT);
            if start {
                w.senders += 1;
            }
            start
        };
        if start {
            // The sender is a task of its own: a caller that gives up does not strand the
            // requests queued behind its own.
            tokio::spawn(self.clone().send_queued());
        }
        waiting.await.unwrap_or_else(|_| {
            Err(GraphError::Transient {
                route: format!("{method} {route}"),
                status: None,
                retry_after: None,
                message: "the request was dropped before it was sent".into(),
            })
        })
    }

    /// Sends what is queued, alone or as one `$batch` of at most [`MAX_BATCH`], round after
    /// round until the queue is empty.
    async fn send_queued(self) {
        let mut sender = Sender {
            coalescer: &self.coalescer,
            done: false,
        };
        loop {
            let round: Vec<Queued> = {
                let mut w = lock(&self.coalescer.state);
                if w.queue.is_empty() {
                    // Under the lock that queues: a request queued after this starts a sender.
                    w.senders -= 1;
                    sender.done = true;
                    return;
                }
                let n = w.queue.len().min(MAX_BATCH);
                w.queue.drain(..n).collect()
            };
            if let [one] = &round[..] {
                let answer = self
                    .send_one(
                        one.method.clone(),
                        one.route,
                        &one.path,
                        one.body.as_ref(),
                        one.if_match.as_deref(),
                    )
                    .await;
                let one = round.into_iter().next().expect("one request");
                let _ = one.answer.send(answer);
                continue;
            }
            let requests: Vec<BatchRequest> = round
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let mut headers = std::collections::BTreeMap::new();
                    if q.body.is_some() {
                        headers.insert("Content-Type".to_owned(), "application/json".to_owned());
                    }
                    if q.method != Method::GET {
                        headers.insert("Prefer".to_owned(), "return=representation".to_owned());
                    }
                    if let Some(etag) = &q.if_match {
                        headers.insert("If-Match".to_owned(), etag.clone());
                    }
                    BatchRequest {
                        id: (i + 1).to_string(),
                        method: q.method.to_string(),
                        url: q.path.clone(),
                        headers,
                        body: q.body.clone(),
                        depends_on: vec![],
                    }
                })
                .collect();
            match self.batch(&requests).await {
                Ok(answers) => {
                    for (r, q) in requests.iter().zip(round) {
                        let route = format!("{} {}", q.method, q.route);
                        let answer =
                            self.inner_answer(&route, answers.iter().find(|a| a.id == r.id));
                        let _ = q.answer.send(answer);
                    }
                }
                Err(e) => {
                    for q in round {
                        let _ = q.answer.send(Err(GraphError::Transient {
                            route: format!("{} {}", q.method, q.route),
                            status: None,
                            retry_after: e.retry_after(),
                            message: format!("its $batch failed: {e}"),
                        }));
                    }
                }
            }
        }
    }

    /// One answer inside a `$batch` (`None`: the batch had none for the request) as if its
    /// request had been sent alone (the lane was already paused by [`Self::batch`] for an
    /// inner 429). It is counted in `tgb_external_calls_total` under its own route and status,
    /// beside the `$batch` itself: Graph counts each request inside against its limits, and
    /// the throttling alert reads the 429s of that counter.
    fn inner_answer(&self, route: &str, a: Option<&BatchResponse>) -> Result<Answer, GraphError> {
        let Some(a) = a else {
            return Err(GraphError::Transient {
                route: route.into(),
                status: None,
                retry_after: None,
                message: "no answer in the batch".into(),
            });
        };
        metrics::counter!("tgb_external_calls_total", "target" => "graph", "identity" => self.identity.clone(), "route" => route.to_owned(), "status" => a.status.to_string()).increment(1);
        let body = a
            .body
            .as_ref()
            .map(|b| b.get().as_bytes().to_vec())
            .unwrap_or_default();
        let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            return Ok(Answer { status, body });
        }
        Err(classify(route, a.status, a.retry_after(), &body))
    }

    /// Sends one request through the governor and sorts the answer.
    async fn send_one(
        &self,
        method: Method,
        route: &'static str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, GraphError> {
        let full_route = format!("{method} {route}");
        let url = self.url(path);
        let permit = self.governor.acquire().await;
        let started = Instant::now();
        let sent = self
            .tokens
            .send(|| {
                let mut req = self.http.request(method.clone(), url.clone());
                if let Some(b) = body {
                    req = req.json(b);
                }
                if method != Method::GET {
                    req = req.header("Prefer", "return=representation");
                }
                if let Some(etag) = if_match {
                    req = req.header("If-Match", etag);
                }
                req
            })
            .await;
        let record = |status: String| {
            metrics::counter!("tgb_external_calls_total", "target" => "graph", "identity" => self.identity.clone(), "route" => full_route.clone(), "status" => status).increment(1);
            metrics::histogram!("tgb_external_call_duration_seconds", "target" => "graph", "identity" => self.identity.clone(), "route" => full_route.clone())
                .record(started.elapsed().as_secs_f64());
        };
        let response = match sent {
            Err(e) => {
                record("token_error".into());
                let reason = if e.is_transient() {
                    "unavailable"
                } else {
                    "refused"
                };
                metrics::counter!("tgb_token_refresh_failures_total", "target" => "graph", "identity" => self.identity.clone(), "reason" => reason).increment(1);
                return Err(GraphError::Auth(e));
            }
            Ok(Err(e)) => {
                record("error".into());
                return Err(GraphError::Transient {
                    route: full_route,
                    status: None,
                    retry_after: None,
                    message: e.without_url().to_string(),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let retry_after = parse_retry_after(
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let bytes = crate::body::read_capped(response, crate::body::MAX_ANSWER_BYTES).await;
        drop(permit);
        record(status.as_u16().to_string());
        let bytes = bytes.map_err(|e| GraphError::Transient {
            route: full_route.clone(),
            status: Some(status.as_u16()),
            retry_after: None,
            message: e.to_string(),
        })?;
        if status.is_success() {
            self.governor.answered();
            return Ok(Answer {
                status,
                body: bytes,
            });
        }
        if status.as_u16() == 429 {
            self.governor
                .pause_for(retry_after.unwrap_or(Duration::from_secs(1)));
        } else {
            self.governor.answered();
        }
        // A 503's Retry-After is the wait before retrying that request (the error carries it
        // to the consumer, which redelivers after it); it says nothing of the lane's rate and
        // does not stop the lane's other requests. (Changed: it used to hold the whole lane,
        // so one random 503 in ten held every Graph request for a second each time, and the
        // fault suite's 10 % 5xx scenario took up to 200 s to create its tasks.)
        Err(classify(&full_route, status.as_u16(), retry_after, &bytes))
    }

    fn parse<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, GraphError> {
        serde_json::from_slice(body).map_err(|e| GraphError::Permanent {
            route: route.to_owned(),
            status: 200,
            code: "UnexpectedAnswer".into(),
            message: e.to_string(),
        })
    }

    fn to_value<T: serde::Serialize>(body: &T) -> Value {
        serde_json::to_value(body).unwrap_or(Value::Null)
    }

    /// `POST /planner/tasks`.
    pub async fn create_task(&self, task: &NewTask) -> Result<Task, GraphError> {
        let a = self
            .call(
                Method::POST,
                "/planner/tasks",
                "/planner/tasks",
                Some(&Self::to_value(task)),
                None,
            )
            .await?;
        Self::parse("POST /planner/tasks", &a.body)
    }

    /// `GET /planner/tasks/{id}`.
    pub async fn get_task(&self, id: &str) -> Result<Task, GraphError> {
        let a = self
            .call(
                Method::GET,
                "/planner/tasks/{id}",
                &format!("/planner/tasks/{}", enc(id)),
                None,
                None,
            )
            .await?;
        Self::parse("GET /planner/tasks/{id}", &a.body)
    }

    /// `GET /planner/tasks/{id}/details`.
    pub async fn get_details(&self, id: &str) -> Result<TaskDetails, GraphError> {
        let a = self
            .call(
                Method::GET,
                "/planner/tasks/{id}/details",
                &format!("/planner/tasks/{}/details", enc(id)),
                None,
                None,
            )
            .await?;
        Self::parse("GET /planner/tasks/{id}/details", &a.body)
    }

    /// `GET /planner/plans/{id}/tasks`: every task of a plan, with its ETag, following
    /// `@odata.nextLink` (Planner pages long lists; one request per page).
    pub async fn list_plan_tasks(&self, plan_id: &str) -> Result<Vec<Task>, GraphError> {
        #[derive(serde::Deserialize)]
        struct List {
            value: Vec<Task>,
            #[serde(rename = "@odata.nextLink")]
            next_link: Option<String>,
        }
        const ROUTE: &str = "GET /planner/plans/{id}/tasks";
        // Planner caps a plan at 9000 tasks: far fewer pages than this.
        const MAX_PAGES: usize = 1000;
        let mut tasks = Vec::new();
        let mut path = format!("/planner/plans/{}/tasks", enc(plan_id));
        for _ in 0..MAX_PAGES {
            let a = self
                .call(Method::GET, "/planner/plans/{id}/tasks", &path, None, None)
                .await?;
            let page = Self::parse::<List>(ROUTE, &a.body)?;
            tasks.extend(page.value);
            match page.next_link {
                Some(next) => path = self.same_origin(ROUTE, &next)?,
                None => return Ok(tasks),
            }
        }
        Err(GraphError::Permanent {
            route: ROUTE.into(),
            status: 200,
            code: "TooManyPages".into(),
            message: format!(
                "more than {MAX_PAGES} pages of tasks; stopped following @odata.nextLink"
            ),
        })
    }

    /// An `@odata.nextLink` as a path for [`Self::call`]: it must lead to the Graph this client
    /// talks to (the token is sent with it).
    fn same_origin(&self, route: &str, link: &str) -> Result<String, GraphError> {
        let root = self.url("");
        let url = crate::origin::same_origin(&root, link).map_err(|e| GraphError::Permanent {
            route: route.to_owned(),
            status: 200,
            code: "UnexpectedAnswer".into(),
            message: format!("@odata.nextLink {e}"),
        })?;
        let rest = url
            .path()
            .strip_prefix(root.path().trim_end_matches('/'))
            .unwrap_or_default();
        Ok(match url.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        })
    }

    /// `GET /planner/plans/{id}/buckets`: the ids of the plan's buckets (a plan has few: one
    /// page).
    pub async fn list_plan_bucket_ids(&self, plan_id: &str) -> Result<Vec<String>, GraphError> {
        #[derive(serde::Deserialize)]
        struct Bucket {
            id: String,
        }
        #[derive(serde::Deserialize)]
        struct List {
            value: Vec<Bucket>,
        }
        let a = self
            .call(
                Method::GET,
                "/planner/plans/{id}/buckets",
                &format!("/planner/plans/{}/buckets", enc(plan_id)),
                None,
                None,
            )
            .await?;
        let list = Self::parse::<List>("GET /planner/plans/{id}/buckets", &a.body)?;
        Ok(list.value.into_iter().map(|b| b.id).collect())
    }

    /// `GET /planner/plans/{id}/details`: the plan's label names.
    pub async fn get_plan_details(&self, plan_id: &str) -> Result<PlanDetails, GraphError> {
        let a = self
            .call(
                Method::GET,
                "/planner/plans/{id}/details",
                &format!("/planner/plans/{}/details", enc(plan_id)),
                None,
                None,
            )
            .await?;
        Self::parse("GET /planner/plans/{id}/details", &a.body)
    }

    /// `PATCH /planner/tasks/{id}` with `If-Match: etag`; the new task (and ETag) comes back.
    pub async fn patch_task(
        &self,
        id: &str,
        etag: &str,
        patch: &TaskPatch,
    ) -> Result<Task, GraphError> {
        let a = self
            .call(
                Method::PATCH,
                "/planner/tasks/{id}",
                &format!("/planner/tasks/{}", enc(id)),
                Some(&Self::to_value(patch)),
                Some(etag),
            )
            .await?;
        if a.status == StatusCode::NO_CONTENT || a.body.is_empty() {
            return self.get_task(id).await;
        }
        Self::parse("PATCH /planner/tasks/{id}", &a.body)
    }

    /// `PATCH /planner/tasks/{id}/details` with the details' own ETag.
    pub async fn patch_details(
        &self,
        id: &str,
        etag: &str,
        patch: &DetailsPatch,
    ) -> Result<TaskDetails, GraphError> {
        let a = self
            .call(
                Method::PATCH,
                "/planner/tasks/{id}/details",
                &format!("/planner/tasks/{}/details", enc(id)),
                Some(&Self::to_value(patch)),
                Some(etag),
            )
            .await?;
        if a.status == StatusCode::NO_CONTENT || a.body.is_empty() {
            return self.get_details(id).await;
        }
        Self::parse("PATCH /planner/tasks/{id}/details", &a.body)
    }

    /// Brings a task to what `change` asks: `change` sees the current task and answers the
    /// patch still needed (empty = nothing). On 412/409 the task is read again and `change`
    /// asked again, so a concurrent edit of other fields is kept; at most
    /// `max_conflict_retries` re-reads. `known` saves the first read. Returns the task as it
    /// ends up and whether this call wrote.
    pub async fn update_task<F>(
        &self,
        id: &str,
        known: Option<Task>,
        mut change: F,
    ) -> Result<(Task, bool), GraphError>
    where
        F: FnMut(&Task) -> TaskPatch,
    {
        let mut current = match known {
            Some(t) => t,
            None => self.get_task(id).await?,
        };
        let mut attempt = 0;
        loop {
            let patch = change(&current);
            if patch.is_empty() {
                return Ok((current, attempt > 0));
            }
            match self.patch_task(id, &current.etag, &patch).await {
                Ok(t) => return Ok((t, true)),
                Err(GraphError::Conflict { status, .. }) if attempt < self.max_conflict_retries => {
                    metrics::counter!("tgb_planner_conflicts_total", "status" => status.to_string())
                        .increment(1);
                    attempt += 1;
                    current = self.get_task(id).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like [`GraphClient::update_task`], for the task's details (their own ETag).
    pub async fn update_details<F>(
        &self,
        id: &str,
        known: Option<TaskDetails>,
        mut change: F,
    ) -> Result<(TaskDetails, bool), GraphError>
    where
        F: FnMut(&TaskDetails) -> DetailsPatch,
    {
        let mut current = match known {
            Some(d) => d,
            None => self.get_details(id).await?,
        };
        let mut attempt = 0;
        loop {
            let patch = change(&current);
            if patch.is_empty() {
                return Ok((current, attempt > 0));
            }
            match self.patch_details(id, &current.etag, &patch).await {
                Ok(d) => return Ok((d, true)),
                Err(GraphError::Conflict { status, .. }) if attempt < self.max_conflict_retries => {
                    metrics::counter!("tgb_planner_conflicts_total", "status" => status.to_string())
                        .increment(1);
                    attempt += 1;
                    current = self.get_details(id).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `POST /$batch` with at most [`MAX_BATCH`] requests. Inner 429s pause the lane too. The
    /// answers come back in the order of `requests`.
    pub async fn batch(&self, requests: &[BatchRequest]) -> Result<Vec<BatchResponse>, GraphError> {
        if requests.len() > MAX_BATCH {
            return Err(GraphError::Permanent {
                route: "POST /$batch".into(),
                status: 400,
                code: "TooManyRequestsInBatch".into(),
                message: format!(
                    "{} requests; Graph takes at most {MAX_BATCH}",
                    requests.len()
                ),
            });
        }
        #[derive(serde::Deserialize)]
        struct Answers {
            responses: Vec<BatchResponse>,
        }
        let body = serde_json::json!({ "requests": requests });
        let a = self
            .send_one(Method::POST, "/$batch", "/$batch", Some(&body), None)
            .await?;
        let mut answers = Self::parse::<Answers>("POST /$batch", &a.body)?.responses;
        for r in &answers {
            if r.status == 429 {
                let after = r.retry_after();
                self.governor
                    .pause_for(after.unwrap_or(Duration::from_secs(1)));
            }
        }
        let order: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
        answers.sort_by_key(|r| {
            order
                .iter()
                .position(|id| *id == r.id)
                .unwrap_or(usize::MAX)
        });
        Ok(answers)
    }

    fn inner_result<T: DeserializeOwned>(
        &self,
        route: &'static str,
        r: Option<&BatchResponse>,
    ) -> Result<T, GraphError> {
        let answer = self.inner_answer(route, r)?;
        Self::parse(route, &answer.body)
    }

    fn json_headers() -> std::collections::BTreeMap<String, String> {
        [
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("Prefer".to_owned(), "return=representation".to_owned()),
        ]
        .into_iter()
        .collect()
    }

    /// Creates tasks with `$batch` (chunks of [`MAX_BATCH`], each request `dependsOn` the one
    /// before, so after a failure the rest are not executed: 424). One result per task, in order.
    pub async fn create_tasks(
        &self,
        tasks: &[NewTask],
    ) -> Result<Vec<Result<Task, GraphError>>, GraphError> {
        let mut out = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(MAX_BATCH) {
            let requests: Vec<BatchRequest> = chunk
                .iter()
                .enumerate()
                .map(|(i, t)| BatchRequest {
                    id: (i + 1).to_string(),
                    method: "POST".into(),
                    url: "/planner/tasks".into(),
                    headers: Self::json_headers(),
                    body: Some(Self::to_value(t)),
                    depends_on: if i == 0 { vec![] } else { vec![i.to_string()] },
                })
                .collect();
            let answers = self.batch(&requests).await?;
            for r in &requests {
                out.push(
                    self.inner_result("POST /planner/tasks", answers.iter().find(|a| a.id == r.id)),
                );
            }
        }
        Ok(out)
    }

    /// Reads the details of several tasks with `$batch` (independent requests).
    pub async fn get_details_many(
        &self,
        ids: &[String],
    ) -> Result<Vec<Result<TaskDetails, GraphError>>, GraphError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BATCH) {
            let requests: Vec<BatchRequest> = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| BatchRequest {
                    id: (i + 1).to_string(),
                    method: "GET".into(),
                    url: format!("/planner/tasks/{}/details", enc(id)),
                    headers: Default::default(),
                    body: None,
                    depends_on: vec![],
                })
                .collect();
            let answers = self.batch(&requests).await?;
            for r in &requests {
                out.push(self.inner_result(
                    "GET /planner/tasks/{id}/details",
                    answers.iter().find(|a| a.id == r.id),
                ));
            }
        }
        Ok(out)
    }

    /// Patches the details of several tasks with `$batch` (`(task id, details ETag, patch)`).
    pub async fn patch_details_many(
        &self,
        patches: &[(String, String, DetailsPatch)],
    ) -> Result<Vec<Result<TaskDetails, GraphError>>, GraphError> {
        let mut out = Vec::with_capacity(patches.len());
        for chunk in patches.chunks(MAX_BATCH) {
            let requests: Vec<BatchRequest> = chunk
                .iter()
                .enumerate()
                .map(|(i, (id, etag, patch))| {
                    let mut headers = Self::json_headers();
                    headers.insert("If-Match".into(), etag.clone());
                    BatchRequest {
                        id: (i + 1).to_string(),
                        method: "PATCH".into(),
                        url: format!("/planner/tasks/{}/details", enc(id)),
                        headers,
                        body: Some(Self::to_value(patch)),
                        depends_on: vec![],
                    }
                })
                .collect();
            let answers = self.batch(&requests).await?;
            for r in &requests {
                out.push(self.inner_result(
                    "PATCH /planner/tasks/{id}/details",
                    answers.iter().find(|a| a.id == r.id),
                ));
            }
        }
        Ok(out)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Percent-encodes an id for a path segment (Planner ids are URL-safe already; this is a guard).
fn enc(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_scope_follows_the_graph_url() {
        let scope = |u: &str| graph_scope(&Url::parse(u).unwrap());
        assert_eq!(scope("https://graph.microsoft.com"), GRAPH_SCOPE);
        assert_eq!(
            scope("https://graph.microsoft.us/"),
            "https://graph.microsoft.us/.default"
        );
        assert_eq!(
            scope("https://microsoftgraph.chinacloudapi.cn"),
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
        let c = GraphClient::entra_credentials(
            &Url::parse("https://login.microsoftonline.us").unwrap(),
            &Url::parse("https://dod-graph.microsoft.us").unwrap(),
            "t",
            "c",
            secrecy::SecretString::from("s"),
        )
        .unwrap();
        assert_eq!(
            c.scope.as_deref(),
            Some("https://dod-graph.microsoft.us/.default")
        );
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(
            classify("r", 412, None, b"{}"),
            GraphError::Conflict { status: 412, .. }
        ));
        assert!(matches!(
            classify("r", 409, None, b"{}"),
            GraphError::Conflict { status: 409, .. }
        ));
        let e = classify("r", 429, Some(Duration::from_secs(3)), b"{}");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.certainly_not_applied());
        let e = classify(
            "r",
            403,
            None,
            br#"{"error":{"code":"MaximumTasksInProject","message":"too many"}}"#,
        );
        assert!(
            matches!(&e, GraphError::Permanent { code, .. } if code == "MaximumTasksInProject")
        );
        let e = classify("r", 503, None, b"oops");
        assert!(e.is_transient() && !e.certainly_not_applied());
    }
}
