//! OAuth2 client-credentials grant with a token cache.
//!
//! [`TokenCache::token`] returns the cached token until `refresh_margin` before it expires,
//! then fetches a new one (one fetch at a time; concurrent callers wait for it).
//! [`TokenCache::send`] sends a request with the bearer token and, on a 401, drops that token,
//! fetches a fresh one and sends once more.

use std::time::{Duration, Instant};
use tracing::Instrument as _;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tgb_governor::{Classify, ErrorClass};
use url::Url;

use crate::credential::{self, ClientCredential, CredentialError, JWT_BEARER_ASSERTION};

/// Who asks for tokens, and where.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// The token endpoint.
    pub token_url: Url,
    /// The client id.
    pub client_id: String,
    /// How the client proves who it is: a secret, a certificate or a federated token file
    /// (never logged).
    pub credential: ClientCredential,
    /// `scope`, when the issuer needs one (Entra: `https://org.crm.dynamics.com/.default`).
    pub scope: Option<String>,
    /// Refresh this long before the token expires.
    pub refresh_margin: Duration,
}

impl ClientCredentials {
    /// Credentials with no scope and a 60 s refresh margin. `credential`: a client secret
    /// ([`SecretString`]) or any [`ClientCredential`].
    pub fn new(
        token_url: Url,
        client_id: impl Into<String>,
        credential: impl Into<ClientCredential>,
    ) -> Self {
        ClientCredentials {
            token_url,
            client_id: client_id.into(),
            credential: credential.into(),
            scope: None,
            refresh_margin: Duration::from_secs(60),
        }
    }
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint could not be reached, timed out, or answered 429/5xx: try later.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
    /// The endpoint refused the credentials (4xx): retrying will not help.
    #[error("token endpoint refused the client ({status}): {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer body.
        body: String,
    },
    /// The answer was not a token.
    #[error("token endpoint answered something that is not a token: {0}")]
    Invalid(String),
    /// The client's own credential could not be used (unreadable federated token file, a
    /// certificate that cannot sign).
    #[error("client credential: {0}")]
    Credential(#[from] CredentialError),
}

impl Classify for OAuthError {
    /// An unreachable or garbled token endpoint is transient; refused credentials are fatal:
    /// every request of this identity would fail until someone fixes the secret.
    fn class(&self) -> ErrorClass {
        match self {
            OAuthError::Unavailable(_) | OAuthError::Invalid(_) => ErrorClass::TRANSIENT,
            // Nobody but an operator fixes a missing token file or an unusable key.
            OAuthError::Refused { .. } | OAuthError::Credential(_) => ErrorClass::Fatal,
        }
    }
}

impl OAuthError {
    /// Worth retrying later?
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Unavailable(_))
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// A cached client-credentials token (share one per identity and issuer).
pub struct TokenCache {
    http: reqwest::Client,
    credentials: ClientCredentials,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("token_url", &self.credentials.token_url.as_str())
            .field("client_id", &self.credentials.client_id)
            .field("credential", &self.credentials.credential.kind())
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache over `credentials`, fetching with `http`.
    pub fn new(http: reqwest::Client, credentials: ClientCredentials) -> Self {
        TokenCache {
            http,
            credentials,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A valid token: the cached one unless it is within the refresh margin of expiry.
    pub async fn token(&self) -> Result<SecretString, OAuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `token` if it is the cached one (the server said 401 to it).
    pub async fn invalidate(&self, token: &SecretString) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == token.expose_secret())
        {
            *cached = None;
        }
    }

    /// Sends the request `build` makes with a bearer token; on a 401, refreshes the token and
    /// sends once more. `build` is called once per attempt.
    pub async fn send<F>(
        &self,
        build: F,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, OAuthError>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let span = client_span(&build);
        async {
            let token = self.token().await?;
            let first = traced(build())
                .bearer_auth(token.expose_secret())
                .send()
                .await;
            record_status(&first);
            match first {
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    metrics::counter!("tgb_oauth_retries_total", "issuer" => self.issuer())
                        .increment(1);
                    self.invalidate(&token).await;
                    let token = self.token().await?;
                    let second = traced(build())
                        .bearer_auth(token.expose_secret())
                        .send()
                        .await;
                    record_status(&second);
                    Ok(second)
                }
                other => Ok(other),
            }
        }
        .instrument(span)
        .await
    }

    fn issuer(&self) -> String {
        self.credentials
            .token_url
            .host_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn fetch(&self) -> Result<Cached, OAuthError> {
        let c = &self.credentials;
        // Built here, at each request: a certificate assertion is short-lived and unique, and
        // a federated token file rotates.
        let assertion = match &c.credential {
            ClientCredential::Secret(_) => None,
            ClientCredential::Certificate(cert) => {
                Some(cert.assertion(c.token_url.as_str(), &c.client_id)?)
            }
            ClientCredential::FederatedTokenFile(path) => {
                Some(credential::read_federated_token(path).await?)
            }
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
        ];
        match (&c.credential, &assertion) {
            (ClientCredential::Secret(secret), _) => {
                form.push(("client_secret", secret.expose_secret()));
            }
            (_, Some(assertion)) => {
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION));
                form.push(("client_assertion", assertion.expose_secret()));
            }
            (_, None) => {}
        }
        if let Some(scope) = &c.scope {
            form.push(("scope", scope.as_str()));
        }
        let started = Instant::now();
        let answer = self
            .http
            .post(c.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| OAuthError::Unavailable(e.without_url().to_string()))?;
        let status = answer.status();
        metrics::counter!("tgb_oauth_token_requests_total", "issuer" => self.issuer(), "status" => status.as_u16().to_string()).increment(1);
        let body = answer
            .text()
            .await
            .map_err(|e| OAuthError::Unavailable(e.without_url().to_string()))?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(OAuthError::Unavailable(format!("{status}: {body}")));
        }
        if !status.is_success() {
            return Err(OAuthError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        let parsed: TokenAnswer =
            serde_json::from_str(&body).map_err(|e| OAuthError::Invalid(e.to_string()))?;
        if parsed
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(OAuthError::Invalid("token_type is not Bearer".into()));
        }
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(300));
        // Refresh before expiry; a lifetime shorter than the margin is refreshed at half-life.
        let margin = c.refresh_margin.min(lifetime / 2);
        tracing::debug!(issuer = %self.issuer(), ?lifetime, "token fetched");
        Ok(Cached {
            token: SecretString::from(parsed.access_token),
            refresh_at: started + lifetime - margin,
        })
    }
}

/// A client span for the request `build` makes: `"{METHOD} {host}"`, kind client, with the
/// method, host and path as attributes (the path is not in the name: it carries ids).
fn client_span<F: Fn() -> reqwest::RequestBuilder>(build: &F) -> tracing::Span {
    let (method, host, path) = match build().build() {
        Ok(r) => (
            r.method().to_string(),
            r.url().host_str().unwrap_or_default().to_owned(),
            r.url().path().to_owned(),
        ),
        Err(_) => (String::new(), String::new(), String::new()),
    };
    tracing::info_span!(
        "http client",
        otel.name = %format!("{method} {host}"),
        otel.kind = "client",
        http.request.method = %method,
        server.address = %host,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    )
}

/// Whether calls carry the W3C trace context (see [`send_trace_context`]).
static SEND_TRACE_CONTEXT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether outgoing calls carry `traceparent`/`tracestate`. Off unless configured
/// (`TGB_SEND_TRACE_CONTEXT`): TG, Dataverse and Graph are third parties, and the header tells
/// them our trace ids and sampling decisions. The client spans are made either way.
/// Process-wide, like the propagator it gates.
pub fn send_trace_context(on: bool) {
    SEND_TRACE_CONTEXT.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The request with the current span's W3C trace context in its headers, when configured.
fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !SEND_TRACE_CONTEXT.load(std::sync::atomic::Ordering::Relaxed) {
        return request;
    }
    let cx = tracing::Span::current().context();
    let mut headers = reqwest::header::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(&mut headers))
    });
    request.headers(headers)
}

fn record_status(answer: &Result<reqwest::Response, reqwest::Error>) {
    if let Ok(r) = answer {
        tracing::Span::current().record("http.response.status_code", r.status().as_u16());
    }
}
