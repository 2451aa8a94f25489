//! The Dataverse Web API v9.2 (Dynamics 365), as tg-bridge uses it.
//!
//! - Authentication: an Entra client-credentials token ([`crate::oauth::TokenCache`], scope
//!   `{org url}/.default`), refreshed before expiry, one retry on 401.
//! - Every HTTP request (a whole `$batch` counts as one) goes through one [`Governor`] per
//!   identity. A 429 pauses the whole lane for `Retry-After`; the client then re-sends the
//!   request itself, at most `throttle_retries` times, each time only after the pause ran out.
//! - Headers on every call: `Accept`, `OData-MaxVersion: 4.0`, `OData-Version: 4.0`,
//!   `Content-Type: application/json` with a body.
//! - Errors come back typed ([`DataverseError`]):
//!
//! | answer | error |
//! |---|---|
//! | 429 (after the retries) | `Throttled` (transient, with `Retry-After`) |
//! | 503, other 5xx, timeouts, connection errors | `Unavailable` (transient) |
//! | 412 | `Conflict` (version or duplicate key) |
//! | 404 | `NotFound` |
//! | 400, 403, other 4xx | `Rejected` (permanent) |
//! | change tracking token expired (`0x80044352`) | `DeltaExpired` (re-baseline) |
//! | no token | `Token` |

pub mod batch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tgb_governor::Governor;
use url::Url;

use crate::oauth::{ClientCredentials, OAuthError, TokenCache};
pub use batch::{BatchAnswer, BatchRequest};
use tgb_governor::{Classify, ErrorClass};

/// The path of the Web API under the organisation URL.
pub const API_PATH: &str = "api/data/v9.2/";
/// The error code of an expired change-tracking token.
pub const EXPIRED_VERSION_STAMP: &str = "0x80044352";

/// A Dataverse call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum DataverseError {
    /// 429 still after the client's own retries; the lane is paused for `retry_after`.
    #[error("Dataverse {route}: throttled ({code}), retry after {retry_after:?}")]
    Throttled {
        /// `PATCH incidents({key})`.
        route: String,
        /// `0x80072322` (requests), `0x80072321` (time), `0x80072326` (concurrency).
        code: String,
        /// From `Retry-After`.
        retry_after: Duration,
    },
    /// 503, 5xx, a timeout or no connection.
    #[error("Dataverse {route}: unavailable ({status:?}): {message}")]
    Unavailable {
        /// The route.
        route: String,
        /// The HTTP status, if one came.
        status: Option<u16>,
        /// From `Retry-After`, if given.
        retry_after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// 412: the row moved on (`If-Match`) or already exists (`If-None-Match: *`).
    #[error("Dataverse {route}: precondition failed ({code}): {message}")]
    Conflict {
        /// The route.
        route: String,
        /// OData error code.
        code: String,
        /// OData error message.
        message: String,
    },
    /// 404: no such row (or no such key value).
    #[error("Dataverse {route}: not found ({code}): {message}")]
    NotFound {
        /// The route.
        route: String,
        /// OData error code.
        code: String,
        /// OData error message.
        message: String,
    },
    /// 400, 403 and other 4xx: retrying will not help.
    #[error("Dataverse {route}: rejected with {status} ({code}): {message}")]
    Rejected {
        /// The route.
        route: String,
        /// The HTTP status.
        status: u16,
        /// OData error code.
        code: String,
        /// OData error message.
        message: String,
    },
    /// The change-tracking token expired: start again from a full sync.
    #[error("Dataverse {route}: the change-tracking token expired")]
    DeltaExpired {
        /// The route.
        route: String,
    },
    /// No token could be obtained.
    #[error("Dataverse: no token: {0}")]
    Token(#[from] OAuthError),
    /// The answer could not be read.
    #[error("Dataverse {route}: unreadable answer: {message}")]
    Invalid {
        /// The route.
        route: String,
        /// What was wrong.
        message: String,
    },
}

impl Classify for DataverseError {
    /// Throttling and outages are transient (with the wait asked for); a refused token or a
    /// 401 is fatal (no request can succeed until the secret or the user is fixed); the rest
    /// is permanent for the request that met it.
    fn class(&self) -> ErrorClass {
        match self {
            DataverseError::Throttled { retry_after, .. } => ErrorClass::Transient {
                retry_after: Some(*retry_after),
            },
            DataverseError::Unavailable { retry_after, .. } => ErrorClass::Transient {
                retry_after: *retry_after,
            },
            DataverseError::Token(e) => e.class(),
            DataverseError::Rejected { status: 401, .. } => ErrorClass::Fatal,
            DataverseError::Conflict { .. }
            | DataverseError::NotFound { .. }
            | DataverseError::Rejected { .. }
            | DataverseError::DeltaExpired { .. }
            | DataverseError::Invalid { .. } => ErrorClass::Permanent,
        }
    }
}

impl DataverseError {
    /// Worth retrying later?
    pub fn is_transient(&self) -> bool {
        match self {
            DataverseError::Throttled { .. } | DataverseError::Unavailable { .. } => true,
            DataverseError::Token(e) => e.is_transient(),
            _ => false,
        }
    }

    /// How long to wait before retrying, when the server said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DataverseError::Throttled { retry_after, .. } => Some(*retry_after),
            DataverseError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OData error code, when the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            DataverseError::Throttled { code, .. }
            | DataverseError::Conflict { code, .. }
            | DataverseError::NotFound { code, .. }
            | DataverseError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Settings of a client.
#[derive(Clone, Debug)]
pub struct DataverseSettings {
    /// Organisation URL, e.g. `https://org.crm.dynamics.com` (the sandbox: `{base}/dataverse`).
    pub org_url: Url,
    /// Timeout of one HTTP call.
    pub request_timeout: Duration,
    /// How many times a 429 is waited out and re-sent before the caller gets `Throttled`.
    pub throttle_retries: u32,
}

/// A successful answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `ETag`, if any.
    pub etag: Option<String>,
    /// `OData-EntityId`, if any.
    pub entity_id: Option<String>,
    /// JSON body, if any.
    pub body: Option<Value>,
}

/// Changes since a delta link (or the full set at a baseline).
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// Rows created or changed (all rows at a baseline).
    pub rows: Vec<Value>,
    /// Ids of deleted rows.
    pub deleted: Vec<String>,
    /// Where to ask next time.
    pub delta_link: String,
}

/// Change tracking read page by page ([`DataverseClient::change_pages`]).
#[derive(Debug)]
pub struct ChangePages<'a> {
    client: &'a DataverseClient,
    set: String,
    next: Option<String>,
}

impl ChangePages<'_> {
    /// The next page: its rows and deletions, and on the last page the delta link (checked to
    /// lead under the Web API root, so a foreign one is never stored). `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Delta>, DataverseError> {
        let Some(link) = self.next.take() else {
            return Ok(None);
        };
        let prefer = [(
            "Prefer",
            "odata.track-changes,odata.maxpagesize=1000".to_owned(),
        )];
        let page = self.client.send(Method::GET, &link, &prefer, None).await?;
        let body = page.body.unwrap_or(Value::Null);
        let mut delta = Delta::default();
        for row in body["value"].as_array().into_iter().flatten() {
            let removed = row["reason"].as_str() == Some("deleted")
                || row["@odata.context"]
                    .as_str()
                    .is_some_and(|c| c.ends_with("$deletedEntity"));
            if removed {
                delta
                    .deleted
                    .push(row["id"].as_str().unwrap_or_default().to_owned());
            } else {
                delta.rows.push(row.clone());
            }
        }
        if let Some(n) = body["@odata.nextLink"].as_str() {
            self.next = Some(n.to_owned());
        } else if let Some(d) = body["@odata.deltaLink"].as_str() {
            // Checked now, so a foreign link is never stored as the cursor.
            self.client.url_of(d)?;
            delta.delta_link = d.to_owned();
        } else {
            return Err(DataverseError::Invalid {
                route: format!("GET {}", self.set),
                message: "no @odata.deltaLink in a change-tracking answer".into(),
            });
        }
        Ok(Some(delta))
    }
}

/// The Dataverse client of one identity (cheap to clone).
#[derive(Clone, Debug)]
pub struct DataverseClient {
    http: reqwest::Client,
    api: Url,
    tokens: Arc<TokenCache>,
    governor: Arc<Governor>,
    identity: String,
    throttle_retries: u32,
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
pub fn entra_token_url(authority: &Url, tenant: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.as_str().trim_end_matches('/')
    ))
}

/// `{org url}/.default`: the scope of a Dataverse token.
pub fn dataverse_scope(org_url: &Url) -> String {
    format!("{}/.default", org_url.as_str().trim_end_matches('/'))
}

/// `PATCH incidents({key})`: method and path with keys and ids templated (a bounded label).
pub fn route_of(method: &Method, path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let path = path.split(API_PATH).last().unwrap_or(path);
    let mut out = String::with_capacity(path.len());
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '(' => {
                if depth == 0 {
                    out.push_str("({key})");
                }
                depth += 1;
            }
            ')' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    format!("{method} {out}")
}

/// Quotes a string for a `$filter` literal in a URL: `'` doubled, then the characters a query
/// string would misread percent-encoded (`%` `&` `#` `+` `'`), so a value holding them reaches
/// Dataverse unchanged. (Alternate-key values are never put in a URL: Dataverse refuses a key
/// value holding `/ # < > * % & : \ ? +` there, encoded or not.)
pub fn quote(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    let mut out = String::with_capacity(doubled.len() + 2);
    out.push('\'');
    for c in doubled.chars() {
        match c {
            '%' => out.push_str("%25"),
            '&' => out.push_str("%26"),
            '#' => out.push_str("%23"),
            '+' => out.push_str("%2B"),
            '\'' => out.push_str("%27"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn retry_after_of(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    tgb_governor::retry_after_header(
        headers
            .get(reqwest::header::RETRY_AFTER)
            .map(reqwest::header::HeaderValue::as_bytes),
    )
}

fn odata_error(body: &Option<Value>) -> (String, String) {
    let err = body.as_ref().map(|b| &b["error"]);
    (
        err.and_then(|e| e["code"].as_str())
            .unwrap_or_default()
            .to_owned(),
        err.and_then(|e| e["message"].as_str())
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Maps a failed status to its error.
fn error_of(
    route: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &Option<Value>,
) -> DataverseError {
    let (code, message) = odata_error(body);
    let route = route.to_owned();
    // The HTTP status of an expired change-tracking token is not documented: the code decides.
    if code.eq_ignore_ascii_case(EXPIRED_VERSION_STAMP) {
        return DataverseError::DeltaExpired { route };
    }
    match status {
        429 => DataverseError::Throttled {
            route,
            code,
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        },
        412 => DataverseError::Conflict {
            route,
            code,
            message,
        },
        404 => DataverseError::NotFound {
            route,
            code,
            message,
        },
        408 | 500..=599 => DataverseError::Unavailable {
            route,
            status: Some(status),
            retry_after,
            message: format!("{code} {message}").trim().to_owned(),
        },
        _ => DataverseError::Rejected {
            route,
            status,
            code,
            message,
        },
    }
}

/// The most rows [`DataverseClient::get_all`] collects (its callers read one partner's or one
/// case's rows; more means a query gone wrong).
pub const MAX_GET_ALL_ROWS: usize = 50_000;

fn too_many_rows(path: &str) -> DataverseError {
    DataverseError::Invalid {
        route: route_of(&Method::GET, path),
        message: format!("more than {MAX_GET_ALL_ROWS} rows; not collected"),
    }
}

impl DataverseClient {
    /// A client of the organisation in `settings`, authenticating with `credentials` (its
    /// scope is set to the organisation's) and sending through `governor`.
    pub fn new(
        settings: &DataverseSettings,
        mut credentials: ClientCredentials,
        governor: Arc<Governor>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()?;
        credentials.scope = Some(dataverse_scope(&settings.org_url));
        let identity = credentials.client_id.clone();
        let mut org = settings.org_url.as_str().trim_end_matches('/').to_owned();
        org.push('/');
        let api = Url::parse(&org)
            .and_then(|u| u.join(API_PATH))
            .expect("an http(s) URL joined with a relative path");
        Ok(DataverseClient {
            tokens: Arc::new(TokenCache::new(http.clone(), credentials)),
            http,
            api,
            governor,
            identity,
            throttle_retries: settings.throttle_retries,
        })
    }

    /// The Web API root, ending with `/`.
    pub fn api_url(&self) -> &Url {
        &self.api
    }

    /// The identity (client id) calls are made as.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The lane this client sends through.
    pub fn governor(&self) -> &Arc<Governor> {
        &self.governor
    }

    /// The URL of `path`: relative to the Web API root, or absolute (a next or delta link, a
    /// stored cursor). Either way it must lead under this client's Web API root, since the
    /// token goes with it (a relative `//host/…` or `../` could leave it too).
    fn url_of(&self, path: &str) -> Result<Url, DataverseError> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            Url::parse(path)
        } else {
            self.api.join(path)
        }
        .map_err(|e| DataverseError::Invalid {
            route: route_of(&Method::GET, path),
            message: format!("bad URL: {e}"),
        })?;
        crate::origin::same_origin(&self.api, url.as_str()).map_err(|e| DataverseError::Invalid {
            route: route_of(&Method::GET, path),
            message: format!("refused to follow a URL that {e}"),
        })
    }

    /// Sends one request (through the lane, with the token) and returns the raw answer, or
    /// the typed error of a failed status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, DataverseError> {
        let route = route_of(&method, path);
        let url = self.url_of(path)?;
        let body_bytes = body.map(|b| b.to_string());
        let (status, hdrs, text) = self
            .exchange(&route, || {
                let mut req = self
                    .http
                    .request(method.clone(), url.clone())
                    .header("Accept", "application/json")
                    .header("OData-MaxVersion", "4.0")
                    .header("OData-Version", "4.0");
                for (k, v) in headers {
                    req = req.header(*k, v.as_str());
                }
                if let Some(b) = &body_bytes {
                    req = req
                        .header("Content-Type", "application/json")
                        .body(b.clone());
                }
                req
            })
            .await?;
        let json: Option<Value> = if text.trim().is_empty() {
            None
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => Some(v),
                Err(e) if status.is_success() => {
                    return Err(DataverseError::Invalid {
                        route,
                        message: format!("body is not JSON: {e}"),
                    });
                }
                Err(_) => None,
            }
        };
        if !status.is_success() && status != StatusCode::NOT_MODIFIED {
            return Err(error_of(
                &route,
                status.as_u16(),
                retry_after_of(&hdrs),
                &json,
            ));
        }
        let header = |n: &str| hdrs.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Answer {
            status: status.as_u16(),
            etag: header("etag"),
            entity_id: header("odata-entityid"),
            body: json,
        })
    }

    /// The governed, authenticated exchange: waits for the lane, sends, pauses the lane on a
    /// 429 and re-sends after the pause (bounded), records the call. Returns status, headers
    /// and body text of the last answer; a final 429 is returned as is.
    async fn exchange<F>(
        &self,
        route: &str,
        build: F,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, String), DataverseError>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let mut throttled = 0;
        loop {
            let permit = self.governor.acquire().await;
            let started = Instant::now();
            let sent = match self.tokens.send(&build).await {
                Ok(r) => r,
                Err(e) => {
                    let reason = if e.is_transient() {
                        "unavailable"
                    } else {
                        "refused"
                    };
                    metrics::counter!("tgb_token_refresh_failures_total", "target" => "dataverse", "identity" => self.identity.clone(), "reason" => reason).increment(1);
                    self.record(route, "token_error", started);
                    return Err(DataverseError::Token(e));
                }
            };
            let answer = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.record(route, "error", started);
                    return Err(DataverseError::Unavailable {
                        route: route.to_owned(),
                        status: None,
                        retry_after: None,
                        message: e.without_url().to_string(),
                    });
                }
            };
            let status = answer.status();
            let headers = answer.headers().clone();
            let text = crate::body::read_capped(answer, crate::body::MAX_ANSWER_BYTES)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| DataverseError::Unavailable {
                    route: route.to_owned(),
                    status: Some(status.as_u16()),
                    retry_after: None,
                    message: e.to_string(),
                });
            self.record(route, status.as_str(), started);
            drop(permit);
            let text = text?;
            if status == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after_of(&headers).unwrap_or(Duration::from_secs(1));
                self.governor.pause_for(wait);
                tracing::warn!(route, ?wait, "Dataverse throttled the lane");
                if throttled < self.throttle_retries {
                    throttled += 1;
                    continue;
                }
            } else {
                self.governor.answered();
            }
            return Ok((status, headers, text));
        }
    }

    fn record(&self, route: &str, status: &str, started: Instant) {
        metrics::counter!("tgb_external_calls_total", "target" => "dataverse", "identity" => self.identity.clone(), "route" => route.to_owned(), "status" => status.to_owned()).increment(1);
        metrics::histogram!("tgb_external_call_duration_seconds", "target" => "dataverse", "identity" => self.identity.clone(), "route" => route.to_owned()).record(started.elapsed().as_secs_f64());
    }

    /// `GET` a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value, DataverseError> {
        let answer = self.send(Method::GET, path, &[], None).await?;
        Ok(answer.body.unwrap_or(Value::Null))
    }

    /// `GET` a collection, following `@odata.nextLink` with pages of `page_size`; more than
    /// [`MAX_GET_ALL_ROWS`] rows is an error, not an unbounded vector.
    pub async fn get_all(&self, path: &str, page_size: u32) -> Result<Vec<Value>, DataverseError> {
        let prefer = [("Prefer", format!("odata.maxpagesize={page_size}"))];
        let mut rows = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(link) = next.take() {
            let page = self.send(Method::GET, &link, &prefer, None).await?;
            let body = page.body.unwrap_or(Value::Null);
            if let Some(values) = body["value"].as_array() {
                rows.extend(values.iter().cloned());
            }
            if rows.len() > MAX_GET_ALL_ROWS {
                return Err(too_many_rows(path));
            }
            next = body["@odata.nextLink"].as_str().map(str::to_owned);
        }
        Ok(rows)
    }

    /// Upsert: `PATCH {set}({key})` with `Prefer: return=representation` and `$select`;
    /// answers the row as written.
    pub async fn upsert(
        &self,
        set_and_key: &str,
        body: &Value,
        select: &str,
    ) -> Result<Value, DataverseError> {
        let path = format!("{set_and_key}?$select={select}");
        let answer = self
            .send(
                Method::PATCH,
                &path,
                &[("Prefer", "return=representation".into())],
                Some(body),
            )
            .await?;
        Ok(answer.body.unwrap_or(Value::Null))
    }

    /// `POST` (create a row or call an action).
    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, DataverseError> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    /// `WhoAmI`: the user id of this identity's application user.
    pub async fn who_am_i(&self) -> Result<String, DataverseError> {
        let body = self.get("WhoAmI").await?;
        body["UserId"]
            .as_str()
            .map(|s| s.to_ascii_lowercase())
            .ok_or_else(|| DataverseError::Invalid {
                route: "GET WhoAmI".into(),
                message: "no UserId".into(),
            })
    }

    /// Change tracking of `set` (columns `select`): a baseline when `delta_link` is `None`,
    /// else the changes since it; follows next links. An expired token is `DeltaExpired`.
    /// Holds every row of every page: for a baseline of a large table use
    /// [`Self::change_pages`].
    pub async fn changes(
        &self,
        set: &str,
        select: &str,
        delta_link: Option<&str>,
    ) -> Result<Delta, DataverseError> {
        let mut pages = self.change_pages(set, select, delta_link);
        let mut delta = Delta::default();
        while let Some(page) = pages.next_page().await? {
            delta.rows.extend(page.rows);
            delta.deleted.extend(page.deleted);
            delta.delta_link = page.delta_link;
        }
        Ok(delta)
    }

    /// [`Self::changes`] one page at a time, so a caller holds one page (at most 1000 rows),
    /// never the whole table. The last page carries the delta link.
    pub fn change_pages(
        &self,
        set: &str,
        select: &str,
        delta_link: Option<&str>,
    ) -> ChangePages<'_> {
        ChangePages {
            client: self,
            set: set.to_owned(),
            next: Some(match delta_link {
                Some(l) => l.to_owned(),
                None if select.is_empty() => set.to_owned(),
                None => format!("{set}?$select={select}"),
            }),
        }
    }

    /// Sends change sets as one `$batch` with `Prefer: odata.continue-on-error`. Per change
    /// set: its answers, or the error that rolled it back.
    pub async fn batch(
        &self,
        change_sets: &[Vec<BatchRequest>],
    ) -> Result<Vec<Result<Vec<BatchAnswer>, DataverseError>>, DataverseError> {
        let route = "POST $batch";
        let seed = format!("{:x}", rand_seed());
        let (content_type, body) = batch::build(self.api.as_str(), change_sets, &seed);
        let url = self.url_of("$batch")?;
        let (status, headers, text) = self
            .exchange(route, || {
                self.http
                    .post(url.clone())
                    .header("Accept", "application/json")
                    .header("OData-MaxVersion", "4.0")
                    .header("OData-Version", "4.0")
                    .header("Prefer", "odata.continue-on-error")
                    .header("Content-Type", content_type.as_str())
                    .body(body.clone())
            })
            .await?;
        if !status.is_success() {
            let json = serde_json::from_str(&text).ok();
            return Err(error_of(
                route,
                status.as_u16(),
                retry_after_of(&headers),
                &json,
            ));
        }
        let ct = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let items = batch::parse(ct, &text).map_err(|message| DataverseError::Invalid {
            route: route.into(),
            message,
        })?;
        if items.len() != change_sets.len() {
            return Err(DataverseError::Invalid {
                route: route.into(),
                message: format!(
                    "{} change sets sent, {} answered",
                    change_sets.len(),
                    items.len()
                ),
            });
        }
        Ok(items
            .into_iter()
            .map(|answers| match answers.iter().find(|a| a.status >= 400) {
                Some(failed) => Err(error_of(
                    route,
                    failed.status,
                    failed
                        .header("retry-after")
                        .and_then(|s| s.parse().ok())
                        .map(Duration::from_secs),
                    &failed.body,
                )),
                None => Ok(answers),
            })
            .collect())
    }
}

fn rand_seed() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    now ^ u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_template_keys_and_drop_queries() {
        assert_eq!(
            route_of(&Method::PATCH, "incidents(tgb_tgcaseid='C-(1)')?$select=x"),
            "PATCH incidents({key})"
        );
        assert_eq!(
            route_of(
                &Method::GET,
                "http://h/dataverse/api/data/v9.2/accounts?$deltatoken=1"
            ),
            "GET accounts"
        );
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let body = Some(serde_json::json!({"error": {"code": "0x80072322", "message": "m"}}));
        let e = error_of("r", 429, Some(Duration::from_secs(3)), &body);
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(error_of("r", 503, None, &None).is_transient());
        assert!(matches!(
            error_of("r", 412, None, &None),
            DataverseError::Conflict { .. }
        ));
        assert!(matches!(
            error_of("r", 404, None, &None),
            DataverseError::NotFound { .. }
        ));
        let expired = Some(serde_json::json!({"error": {"code": EXPIRED_VERSION_STAMP}}));
        for status in [400, 403, 404, 410, 412, 422, 500, 503] {
            assert!(
                matches!(
                    error_of("r", status, None, &expired),
                    DataverseError::DeltaExpired { .. }
                ),
                "{status}"
            );
        }
        let e = error_of("r", 403, None, &None);
        assert!(!e.is_transient());
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote("O'Brien"), "'O%27%27Brien'");
        assert_eq!(quote("ZZ:A&B+C#1%"), "'ZZ:A%26B%2BC%231%25'");
    }
}
