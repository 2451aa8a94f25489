//! The Trading Grid community API (the adapter contract, v1).
//!
//! Every write takes an `Idempotency-Key` (tg-egress passes the event id). Failures are typed
//! so a caller can decide without looking at status codes:
//!
//! | answer | [`TgError`] |
//! |---|---|
//! | 429, 503 (with `Retry-After`), other 5xx, timeouts, connection errors | `Transient` |
//! | 412 (revision mismatch) | `Conflict` |
//! | any other 4xx | `Permanent`, with the response body |
//! | the OAuth2 token cannot be had | `Auth` |

pub mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::oauth::{OAuthError, TokenCache};
use tgb_governor::{Classify, ErrorClass};
pub use types::*;

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TgError {
    /// Worth retrying later (`retry_after` when TG said how long to wait).
    #[error("TG {route}: transient failure ({status:?}): {message}")]
    Transient {
        /// The route, e.g. `POST /v1/cases/{id}/comments`.
        route: String,
        /// The HTTP status, if TG answered.
        status: Option<u16>,
        /// From `Retry-After`.
        retry_after: Option<Duration>,
        /// What happened.
        message: String,
    },
    /// TG refused the request; retrying the same request cannot help.
    #[error("TG {route}: refused with {status}: {body}")]
    Permanent {
        /// The route.
        route: String,
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// 412: the revision in `If-Match` is not the current one.
    #[error("TG {route}: revision mismatch (412): {body}")]
    Conflict {
        /// The route.
        route: String,
        /// The response body.
        body: String,
    },
    /// No OAuth2 token.
    #[error("TG token: {0}")]
    Auth(#[from] OAuthError),
    /// The answer was larger than the caller's cap (nothing of it is kept).
    #[error("TG {route}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The route.
        route: String,
        /// The cap.
        limit: u64,
    },
}

impl Classify for TgError {
    /// Outages and revision conflicts are transient; a refused token or a 401 is fatal; any
    /// other refusal is permanent for the request that met it.
    fn class(&self) -> ErrorClass {
        match self {
            TgError::Transient { retry_after, .. } => ErrorClass::Transient {
                retry_after: *retry_after,
            },
            TgError::Conflict { .. } => ErrorClass::TRANSIENT,
            TgError::Auth(e) => e.class(),
            TgError::Permanent { status: 401, .. } => ErrorClass::Fatal,
            TgError::Permanent { .. } | TgError::TooLarge { .. } => ErrorClass::Permanent,
        }
    }
}

impl TgError {
    /// The `Retry-After` TG asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TgError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when TG answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            TgError::Transient { status, .. } => *status,
            TgError::Permanent { status, .. } => Some(*status),
            TgError::Conflict { .. } => Some(412),
            TgError::Auth(OAuthError::Refused { status, .. }) => Some(*status),
            TgError::Auth(_) | TgError::TooLarge { .. } => None,
        }
    }
}

/// Reads `Retry-After` ([`tgb_governor::parse_retry_after`]: delta-seconds or an HTTP date).
pub fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    tgb_governor::retry_after_header(value.map(reqwest::header::HeaderValue::as_bytes))
}

/// A document's bytes as `GET /v1/documents/{id}/content` answers them.
#[derive(Clone, Debug)]
pub struct DocumentContent {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Digest` (`sha-256=<base64>`).
    pub digest: Option<String>,
}

/// The TG REST client (cheap to clone).
#[derive(Clone, Debug)]
pub struct TgClient {
    http: reqwest::Client,
    base: Url,
    tokens: Arc<TokenCache>,
}

impl TgClient {
    /// A client of the API at `base` (e.g. `https://tg.example/tg`), authenticating with `tokens`.
    /// `http` should carry a request timeout.
    pub fn new(http: reqwest::Client, base: Url, tokens: Arc<TokenCache>) -> Self {
        TgClient { http, base, tokens }
    }

    /// An HTTP client with the timeouts tg-bridge uses for TG.
    pub fn http_client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .unwrap_or_default()
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    /// Sends one request and sorts the answer into success or a [`TgError`].
    async fn call(
        &self,
        method: Method,
        route: &'static str,
        url: Url,
        body: Option<serde_json::Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Vec<u8>, reqwest::header::HeaderMap), TgError> {
        self.call_capped(
            method,
            route,
            url,
            body,
            headers,
            crate::body::MAX_ANSWER_BYTES,
        )
        .await
    }

    /// [`Self::call`], reading at most `limit` bytes of the answer.
    async fn call_capped(
        &self,
        method: Method,
        route: &'static str,
        url: Url,
        body: Option<serde_json::Value>,
        headers: &[(&str, String)],
        limit: u64,
    ) -> Result<(StatusCode, Vec<u8>, reqwest::header::HeaderMap), TgError> {
        let started = Instant::now();
        let sent = self
            .tokens
            .send(|| {
                let mut req = self.http.request(method.clone(), url.clone());
                for (k, v) in headers {
                    req = req.header(*k, v);
                }
                if let Some(b) = &body {
                    req = req.json(b);
                }
                req
            })
            .await;
        let label = |status: String| {
            metrics::counter!("tgb_external_calls_total", "target" => "tg", "route" => format!("{method} {route}"), "status" => status).increment(1);
            metrics::histogram!("tgb_external_call_duration_seconds", "target" => "tg", "route" => format!("{method} {route}"))
                .record(started.elapsed().as_secs_f64());
        };
        let full_route = format!("{method} {route}");
        let response = match sent {
            Err(e) => {
                label("token_error".into());
                // An expired or revoked TG secret shows here first (the alert
                // TgbTokenRefreshFailing reads it); the Dataverse and Graph clients count theirs
                // the same way.
                let reason = if e.is_transient() {
                    "unavailable"
                } else {
                    "refused"
                };
                metrics::counter!("tgb_token_refresh_failures_total", "target" => "tg", "reason" => reason).increment(1);
                return Err(TgError::Auth(e));
            }
            Ok(Err(e)) => {
                label("error".into());
                return Err(TgError::Transient {
                    route: full_route,
                    status: None,
                    retry_after: None,
                    message: e.without_url().to_string(),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        label(status.as_u16().to_string());
        let headers = response.headers().clone();
        let bytes = match crate::body::read_capped(response, limit).await {
            Ok(b) => b,
            Err(crate::body::BodyError::TooLarge { limit, .. }) => {
                return Err(TgError::TooLarge {
                    route: full_route,
                    limit,
                });
            }
            Err(e) => {
                return Err(TgError::Transient {
                    route: full_route,
                    status: Some(status.as_u16()),
                    retry_after: None,
                    message: e.to_string(),
                });
            }
        };
        if status.is_success() {
            return Ok((status, bytes, headers));
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Err(match status.as_u16() {
            412 => TgError::Conflict {
                route: full_route,
                body: text,
            },
            429 | 408 => TgError::Transient {
                route: full_route,
                status: Some(status.as_u16()),
                retry_after: parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)),
                message: text,
            },
            s if s >= 500 => TgError::Transient {
                route: full_route,
                status: Some(s),
                retry_after: parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)),
                message: text,
            },
            s => TgError::Permanent {
                route: full_route,
                status: s,
                body: text,
            },
        })
    }

    fn decode<T: DeserializeOwned>(route: &'static str, bytes: &[u8]) -> Result<T, TgError> {
        serde_json::from_slice(bytes).map_err(|e| TgError::Permanent {
            route: route.to_owned(),
            status: 200,
            body: format!(
                "unexpected answer ({e}): {}",
                String::from_utf8_lossy(bytes)
            ),
        })
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &'static str,
        url: Url,
        body: &B,
        idempotency_key: &str,
        extra: Option<(&str, String)>,
    ) -> Result<T, TgError> {
        let body = serde_json::to_value(body).map_err(|e| TgError::Permanent {
            route: route.to_owned(),
            status: 0,
            body: format!("cannot encode the request: {e}"),
        })?;
        let mut headers = vec![("idempotency-key", idempotency_key.to_owned())];
        headers.extend(extra);
        let (_, bytes, _) = self.call(method, route, url, Some(body), &headers).await?;
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        Self::decode(route, bytes)
    }

    /// `GET /v1/events?after=&limit=`: the polling feed, oldest first.
    pub async fn events(&self, after: Option<&str>, limit: u16) -> Result<EventsPage, TgError> {
        let mut url = self.url(&["v1", "events"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(a) = after.filter(|a| !a.is_empty()) {
                q.append_pair("after", a);
            }
            q.append_pair("limit", &limit.clamp(1, 500).to_string());
        }
        let (_, bytes, _) = self.call(Method::GET, "/v1/events", url, None, &[]).await?;
        Self::decode("/v1/events", &bytes)
    }

    /// `GET /v1/cases/{case_id}`.
    pub async fn case(&self, case_id: &str) -> Result<CaseData, TgError> {
        let url = self.url(&["v1", "cases", case_id]);
        let (_, bytes, _) = self
            .call(Method::GET, "/v1/cases/{id}", url, None, &[])
            .await?;
        Self::decode("/v1/cases/{id}", &bytes)
    }

    /// `POST /v1/cases`: opens a collaboration case.
    pub async fn create_case(&self, key: &str, case: &NewCase) -> Result<CaseCreated, TgError> {
        let url = self.url(&["v1", "cases"]);
        self.write(Method::POST, "/v1/cases", url, case, key, None)
            .await
    }

    /// `PATCH /v1/cases/{case_id}` with `If-Match: <revision>` when given.
    pub async fn patch_case(
        &self,
        key: &str,
        case_id: &str,
        patch: &CasePatch,
        if_match: Option<i64>,
    ) -> Result<Revision, TgError> {
        let url = self.url(&["v1", "cases", case_id]);
        let extra = if_match.map(|r| ("if-match", r.to_string()));
        self.write(Method::PATCH, "/v1/cases/{id}", url, patch, key, extra)
            .await
    }

    /// `POST /v1/cases/{case_id}/comments`.
    pub async fn add_comment(
        &self,
        key: &str,
        case_id: &str,
        comment: &NewComment,
    ) -> Result<CommentCreated, TgError> {
        let url = self.url(&["v1", "cases", case_id, "comments"]);
        self.write(
            Method::POST,
            "/v1/cases/{id}/comments",
            url,
            comment,
            key,
            None,
        )
        .await
    }

    /// `GET /v1/documents/{document_id}/content`, at most `max_bytes` of it: a larger one
    /// (declared or as read) is [`TgError::TooLarge`], and is never held whole.
    pub async fn document_content(
        &self,
        document_id: &str,
        max_bytes: u64,
    ) -> Result<DocumentContent, TgError> {
        let url = self.url(&["v1", "documents", document_id, "content"]);
        let (_, bytes, headers) = self
            .call_capped(
                Method::GET,
                "/v1/documents/{id}/content",
                url,
                None,
                &[],
                max_bytes,
            )
            .await?;
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(DocumentContent {
            bytes,
            content_type: header("content-type"),
            digest: header("digest"),
        })
    }

    /// `PUT /v1/documents/{document_id}/review`.
    pub async fn review_document(
        &self,
        key: &str,
        document_id: &str,
        review: &Review,
    ) -> Result<serde_json::Value, TgError> {
        let url = self.url(&["v1", "documents", document_id, "review"]);
        self.write(
            Method::PUT,
            "/v1/documents/{id}/review",
            url,
            review,
            key,
            None,
        )
        .await
    }

    /// `PUT /v1/partners/{qualifier}:{id}/onboarding`.
    pub async fn put_onboarding(
        &self,
        key: &str,
        partner_key: &str,
        status: &OnboardingStatus,
    ) -> Result<serde_json::Value, TgError> {
        let url = self.url(&["v1", "partners", partner_key, "onboarding"]);
        self.write(
            Method::PUT,
            "/v1/partners/{key}/onboarding",
            url,
            status,
            key,
            None,
        )
        .await
    }

    /// `POST /v1/partners/{qualifier}:{id}/orders/{order_ref}/milestones`.
    pub async fn post_milestone(
        &self,
        key: &str,
        partner_key: &str,
        order_ref: &str,
        milestone: &MilestoneBody,
    ) -> Result<serde_json::Value, TgError> {
        let url = self.url(&[
            "v1",
            "partners",
            partner_key,
            "orders",
            order_ref,
            "milestones",
        ]);
        self.write(
            Method::POST,
            "/v1/partners/{key}/orders/{ref}/milestones",
            url,
            milestone,
            key,
            None,
        )
        .await
    }

    /// `PUT /v1/partners/{qualifier}:{id}/scorecards/{period}`.
    pub async fn put_scorecard(
        &self,
        key: &str,
        partner_key: &str,
        scorecard: &Scorecard,
    ) -> Result<serde_json::Value, TgError> {
        let url = self.url(&[
            "v1",
            "partners",
            partner_key,
            "scorecards",
            &scorecard.period,
        ]);
        self.write(
            Method::PUT,
            "/v1/partners/{key}/scorecards/{period}",
            url,
            scorecard,
            key,
            None,
        )
        .await
    }

    /// `PATCH /v1/partners/{qualifier}:{id}`: approved master-data changes.
    pub async fn patch_partner(
        &self,
        key: &str,
        partner_key: &str,
        patch: &PartnerPatch,
    ) -> Result<Revision, TgError> {
        let url = self.url(&["v1", "partners", partner_key]);
        self.write(Method::PATCH, "/v1/partners/{key}", url, patch, key, None)
            .await
    }

    /// `PUT /v1/disputes/{dispute_id}`.
    pub async fn put_dispute(
        &self,
        key: &str,
        dispute_id: &str,
        update: &DisputeUpdate,
    ) -> Result<serde_json::Value, TgError> {
        let url = self.url(&["v1", "disputes", dispute_id]);
        self.write(Method::PUT, "/v1/disputes/{id}", url, update, key, None)
            .await
    }
}
