//! Identity: the Entra-style and TG token endpoints, bearer checks, and the caller headers the
//! Dataverse and Planner emulators trust.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use serde_json::json;

use crate::App;
use crate::config::{IdentityConfig, NamedUser};
use crate::errors;

/// `x-tgb-caller-id`: the caller's user GUID.
pub const CALLER_ID: &str = "x-tgb-caller-id";
/// `x-tgb-caller-name`: the caller's display name.
pub const CALLER_NAME: &str = "x-tgb-caller-name";
/// `x-tgb-caller-kind`: `application` or `user`.
pub const CALLER_KIND: &str = "x-tgb-caller-kind";

/// The resource a token is good for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The Dataverse organisation (`{base}/dataverse`).
    Dataverse,
    /// Microsoft Graph (`https://graph.microsoft.com`).
    Graph,
    /// The Trading Grid API.
    Tg,
}

/// Who made a call, as the emulators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Caller {
    /// User GUID (or TG client id).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `application` or `user`.
    pub kind: String,
}

impl Caller {
    fn from_user(user: &NamedUser) -> Self {
        Self {
            id: user.id.to_string(),
            name: user.name.clone(),
            kind: "user".into(),
        }
    }
}

#[derive(Clone, Debug)]
struct TokenInfo {
    audience: Audience,
    caller: Caller,
    expires_at: Instant,
}

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token was presented")]
    Missing,
    /// The token was never issued here.
    #[error("the bearer token is not valid")]
    Unknown,
    /// The token's lifetime is over.
    #[error("the bearer token has expired")]
    Expired,
    /// The token was issued for another resource.
    #[error("the bearer token was issued for another audience")]
    WrongAudience,
}

/// Token issuer and validator (shared, cheap to clone).
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Mutex<IdentityState>>,
}

struct IdentityState {
    config: IdentityConfig,
    lifetime: Duration,
    tokens: HashMap<String, TokenInfo>,
    issued: u64,
    dataverse_resources: Vec<String>,
    base_url: String,
}

impl Identity {
    pub(crate) fn new(config: IdentityConfig, base_url: &str) -> Self {
        let mut dataverse_resources = vec![format!("{base_url}/dataverse")];
        dataverse_resources.extend(config.dataverse_resources.iter().cloned());
        let lifetime = Duration::from_secs(config.token_lifetime_secs);
        Self {
            inner: Arc::new(Mutex::new(IdentityState {
                config,
                lifetime,
                tokens: HashMap::new(),
                issued: 0,
                dataverse_resources,
                base_url: base_url.trim_end_matches('/').to_owned(),
            })),
        }
    }

    /// The id and secret of the first TG OAuth2 client, if any.
    pub fn first_tg_client(&self) -> Option<(String, String)> {
        let state = self.inner.lock().unwrap();
        state
            .config
            .tg_clients
            .first()
            .map(|c| (c.client_id.clone(), c.client_secret.clone()))
    }

    /// The id and secret of the first Entra ID app registration, if any.
    pub fn first_entra_client(&self) -> Option<(String, String)> {
        let state = self.inner.lock().unwrap();
        state
            .config
            .entra_clients
            .first()
            .map(|c| (c.client_id.clone(), c.client_secret.clone()))
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.inner.lock().unwrap().lifetime = lifetime;
    }

    /// Makes every token issued so far expired (the APIs answer 401 from now on).
    pub fn expire_all_tokens(&self) {
        let now = Instant::now();
        for info in self.inner.lock().unwrap().tokens.values_mut() {
            info.expires_at = now;
        }
    }

    /// Registers a certificate (PEM) on the app registration `client_id`.
    pub fn register_entra_certificate(&self, client_id: &str, certificate_pem: &str) {
        self.inner.lock().unwrap().config.entra_certificates.push(
            crate::config::EntraCertificate {
                client_id: client_id.to_owned(),
                certificate_pem: certificate_pem.to_owned(),
            },
        );
    }

    /// Replaces the federated tokens `client_id` may present (a workload identity platform
    /// rotating the token it mounts).
    pub fn set_entra_federated_tokens(&self, client_id: &str, tokens: &[&str]) {
        let mut state = self.inner.lock().unwrap();
        let list = &mut state.config.entra_federated_tokens;
        list.retain(|t| t.client_id != client_id);
        list.extend(tokens.iter().map(|t| crate::config::EntraFederatedToken {
            client_id: client_id.to_owned(),
            token: (*t).to_owned(),
        }));
    }

    /// A configured named user by key.
    pub fn user(&self, key: &str) -> Option<NamedUser> {
        let state = self.inner.lock().unwrap();
        state.config.users.iter().find(|u| u.key == key).cloned()
    }

    /// Issues a token without going through HTTP (for tests).
    pub fn issue_for_entra_client(&self, client_id: &str, audience: Audience) -> Option<String> {
        let mut state = self.inner.lock().unwrap();
        let client = state
            .config
            .entra_clients
            .iter()
            .find(|c| c.client_id == client_id)?
            .clone();
        let caller = Caller {
            id: client.app_user_id.to_string(),
            name: client.app_user_name.clone(),
            kind: "application".into(),
        };
        Some(state.issue(audience, caller).0)
    }

    /// Checks a bearer token for an audience.
    pub fn validate(&self, token: &str, audience: Audience) -> Result<Caller, TokenError> {
        let state = self.inner.lock().unwrap();
        let info = state.tokens.get(token).ok_or(TokenError::Unknown)?;
        if info.audience != audience {
            return Err(TokenError::WrongAudience);
        }
        if Instant::now() >= info.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(info.caller.clone())
    }

    fn resource_audience(&self, resource: &str) -> Option<Audience> {
        let resource = resource.trim_end_matches('/');
        let state = self.inner.lock().unwrap();
        if state
            .dataverse_resources
            .iter()
            .any(|r| r.trim_end_matches('/').eq_ignore_ascii_case(resource))
        {
            return Some(Audience::Dataverse);
        }
        if resource.eq_ignore_ascii_case("https://graph.microsoft.com")
            || state
                .dataverse_resources
                .first()
                .and_then(|dv| dv.strip_suffix("/dataverse"))
                .is_some_and(|base| resource.eq_ignore_ascii_case(&format!("{base}/graph")))
        {
            return Some(Audience::Graph);
        }
        None
    }
}

impl IdentityState {
    fn issue(&mut self, audience: Audience, caller: Caller) -> (String, u64) {
        let raw: [u8; 32] = rand::random();
        let token = format!("sbx.{}", URL_SAFE_NO_PAD.encode(raw));
        let now = Instant::now();
        // Drop long-expired tokens now and then, so the map does not grow without bound.
        self.issued += 1;
        if self.issued.is_multiple_of(1024) {
            self.tokens
                .retain(|_, t| t.expires_at + Duration::from_secs(3600) > now);
        }
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                audience,
                caller,
                expires_at: now + self.lifetime,
            },
        );
        (token, self.lifetime.as_secs_f64().ceil() as u64)
    }
}

fn form_fields(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let now = crate::tg::model::now_rfc3339();
    let trace = uuid::Uuid::new_v4();
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description} Trace ID: {trace} Timestamp: {now}"),
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": uuid::Uuid::new_v4(),
    });
    (status, Json(body)).into_response()
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew allowed on a client assertion's `nbf` and `exp`.
const ASSERTION_LEEWAY_SECS: u64 = 300;

/// `POST /entra/{tenant}/oauth2/v2.0/token`: the client-credentials grant with a client
/// secret, a certificate client assertion (a JWT signed with a registered certificate's key,
/// `x5t#S256` naming the certificate, `aud` this endpoint, `iss` = `sub` = the client id, in
/// its time range) or a federated client assertion (a configured token).
pub(crate) async fn entra_token(
    State(app): State<App>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form = form_fields(&body);
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            );
        }
        None => {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            );
        }
    }
    let Some(client_id) = form.get("client_id") else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(scope) = form.get("scope") else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let identity = &app.identity;
    let client = {
        let state = identity.inner.lock().unwrap();
        state
            .config
            .entra_clients
            .iter()
            .find(|c| &c.client_id == client_id)
            .cloned()
    };
    let Some(client) = client else {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    };
    let authenticated = match (
        form.get("client_secret"),
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) {
        (Some(secret), None, None) => {
            // An app registration without a secret accepts none (not even an empty one).
            if client.client_secret.is_empty()
                || !crate::webhooks::constant_time_eq(
                    client.client_secret.as_bytes(),
                    secret.as_bytes(),
                )
            {
                Err(entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                ))
            } else {
                Ok(())
            }
        }
        (None, Some(kind), Some(assertion)) if kind == JWT_BEARER => {
            let endpoint = format!(
                "{}/entra/{tenant}/oauth2/v2.0/token",
                identity.inner.lock().unwrap().base_url
            );
            identity.check_assertion(client_id, assertion, &endpoint)
        }
        (None, Some(kind), _) if kind != JWT_BEARER => Err(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            &format!("The client_assertion_type '{kind}' is not supported; use '{JWT_BEARER}'."),
        )),
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request must contain either 'client_secret' or 'client_assertion', not both.",
        )),
        _ => Err(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )),
    };
    if let Err(refusal) = authenticated {
        return refusal;
    }
    let Some(resource) = scope.trim().strip_suffix("/.default") else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    let Some(audience) = identity.resource_audience(resource) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!("The resource principal named {resource} was not found in the tenant."),
        );
    };
    let caller = Caller {
        id: client.app_user_id.to_string(),
        name: client.app_user_name.clone(),
        kind: "application".into(),
    };
    let (token, expires_in) = identity.inner.lock().unwrap().issue(audience, caller);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": token,
    }))
    .into_response()
}

/// `POST /tg/oauth2/token` (client id and secret in the form or in HTTP Basic).
pub(crate) async fn tg_token(
    State(app): State<App>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = form_fields(&body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return errors::tg(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
    let (client_id, secret) = match (basic, form.get("client_id"), form.get("client_secret")) {
        (Some(pair), _, _) => pair,
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => {
            return errors::tg(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client credentials are missing",
            );
        }
    };
    let identity = &app.identity;
    let known = {
        let state = identity.inner.lock().unwrap();
        state.config.tg_clients.iter().any(|c| {
            c.client_id == client_id
                && crate::webhooks::constant_time_eq(c.client_secret.as_bytes(), secret.as_bytes())
        })
    };
    if !known {
        return errors::tg(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    let caller = Caller {
        id: client_id.clone(),
        name: client_id,
        kind: "application".into(),
    };
    let (token, expires_in) = identity.inner.lock().unwrap().issue(Audience::Tg, caller);
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in}))
        .into_response()
}

impl Identity {
    /// Checks a client assertion of `client_id` presented at `endpoint`: a federated token
    /// configured for the client, or a JWT signed with one of its registered certificates.
    #[allow(clippy::result_large_err)]
    fn check_assertion(
        &self,
        client_id: &str,
        assertion: &str,
        endpoint: &str,
    ) -> Result<(), Response> {
        let refuse = |code: u32, description: String| {
            Err(entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                code,
                &description,
            ))
        };
        let (federated, certificates) = {
            let state = self.inner.lock().unwrap();
            let federated: Vec<String> = state
                .config
                .entra_federated_tokens
                .iter()
                .filter(|t| t.client_id == client_id)
                .map(|t| t.token.clone())
                .collect();
            let certificates: Vec<String> = state
                .config
                .entra_certificates
                .iter()
                .filter(|c| c.client_id == client_id)
                .map(|c| c.certificate_pem.clone())
                .collect();
            (federated, certificates)
        };
        // A configured federated token is accepted as it is (the emulator does not fetch the
        // federated issuer's signing keys).
        if federated
            .iter()
            .any(|t| crate::webhooks::constant_time_eq(t.as_bytes(), assertion.as_bytes()))
        {
            return Ok(());
        }
        let Some((header, claims)) = jwt_parts(assertion) else {
            return refuse(
                50027,
                "JWT token is invalid or malformed (client_assertion).".into(),
            );
        };
        let claim = |name: &str| claims.get(name).and_then(|v| v.as_str()).unwrap_or("");
        // Entra tells the two apart by the issuer: the app itself signs a certificate
        // assertion; anyone else's token must match a federated credential.
        if claim("iss") != client_id {
            return refuse(
                70021,
                format!(
                    "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
                    claim("iss"),
                    claim("sub"),
                    claims.get("aud").map(|a| a.to_string()).unwrap_or_default()
                ),
            );
        }
        let algorithm = match header.get("alg").and_then(|v| v.as_str()) {
            Some("RS256") => jsonwebtoken::Algorithm::RS256,
            Some("PS256") => jsonwebtoken::Algorithm::PS256,
            other => {
                return refuse(
                    700027,
                    format!(
                        "Client assertion failed signature validation. [Reason - The algorithm {other:?} is not supported; use PS256 or RS256.]"
                    ),
                );
            }
        };
        let Some(thumbprint) = header.get("x5t#S256").and_then(|v| v.as_str()) else {
            return refuse(
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found: the header has no 'x5t#S256'.]".into(),
            );
        };
        let certificate = certificates
            .iter()
            .find(|pem| certificate_thumbprint(pem).as_deref() == Some(thumbprint));
        let Some(certificate) = certificate else {
            return refuse(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}'. Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
                ),
            );
        };
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(certificate.as_bytes()) else {
            return refuse(
                700027,
                "Client assertion contains an invalid signature. [Reason - The registered certificate has no RSA key.]".into(),
            );
        };
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.leeway = ASSERTION_LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&[endpoint]);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_owned());
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation) {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => refuse(
                    700024,
                    "Client assertion is not within its valid time range.".into(),
                ),
                ErrorKind::InvalidAudience => refuse(
                    50027,
                    format!(
                        "Invalid JWT token: the client assertion's audience claim is not this token endpoint '{endpoint}'."
                    ),
                ),
                ErrorKind::InvalidSubject | ErrorKind::InvalidIssuer => refuse(
                    50027,
                    "Invalid JWT token: the client assertion's 'iss' and 'sub' must both be the client id.".into(),
                ),
                ErrorKind::MissingRequiredClaim(claim) => refuse(
                    50027,
                    format!("Invalid JWT token: the client assertion has no '{claim}' claim."),
                ),
                _ => refuse(
                    700027,
                    "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]".into(),
                ),
            },
        }
    }
}

/// The decoded header and claims of a compact JWT, unverified.
fn jwt_parts(token: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    let mut parts = token.split('.');
    let (header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode = |part: &str| -> Option<serde_json::Value> {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let header = decode(header)?;
    let claims = decode(claims)?;
    (header.is_object() && claims.is_object()).then_some((header, claims))
}

/// The base64url SHA-256 thumbprint of a PEM certificate's DER encoding.
fn certificate_thumbprint(pem: &str) -> Option<String> {
    use sha2::Digest as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .map(str::trim)
        .collect();
    let der = STANDARD.decode(body).ok()?;
    Some(URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn refusal(audience: Audience, error: &TokenError) -> Response {
    let mut response = match audience {
        Audience::Dataverse => errors::dataverse(
            StatusCode::UNAUTHORIZED,
            "0x80048306",
            &format!("Authentication failed: {error}."),
        ),
        Audience::Graph => {
            let message = match error {
                TokenError::Expired => "Lifetime validation failed, the token is expired.",
                TokenError::Missing => "Access token is empty.",
                TokenError::WrongAudience => "Invalid audience.",
                TokenError::Unknown => "IDX14100: JWT is not well formed.",
            };
            errors::graph(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            )
        }
        Audience::Tg => errors::tg(StatusCode::UNAUTHORIZED, "unauthorized", &error.to_string()),
    };
    let challenge = match error {
        TokenError::Missing => "Bearer".to_owned(),
        other => format!("Bearer error=\"invalid_token\", error_description=\"{other}\""),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

fn strip_caller_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-tgb-caller-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

pub(crate) fn set_caller_headers(headers: &mut HeaderMap, caller: &Caller) {
    strip_caller_headers(headers);
    for (name, value) in [
        (CALLER_ID, &caller.id),
        (CALLER_NAME, &caller.name),
        (CALLER_KIND, &caller.kind),
    ] {
        // Display names may hold characters a header cannot; fall back to an ASCII form.
        let value = HeaderValue::from_str(value).unwrap_or_else(|_| {
            HeaderValue::from_str(&value.replace(|c: char| !c.is_ascii() || c.is_control(), "?"))
                .unwrap_or(HeaderValue::from_static("?"))
        });
        headers.insert(HeaderName::from_static(name), value);
    }
}

async fn authenticate(app: &App, audience: Audience, mut req: Request, next: Next) -> Response {
    // The emulators' own admin routes (`{base}/dataverse/_sandbox/...`) take no token.
    if audience != Audience::Tg && req.uri().path().starts_with("/_sandbox/") {
        strip_caller_headers(req.headers_mut());
        return next.run(req).await;
    }
    let result = match bearer(req.headers()) {
        None => Err(TokenError::Missing),
        Some(token) => app.identity.validate(token, audience),
    };
    match result {
        Err(error) => refusal(audience, &error),
        Ok(caller) => {
            set_caller_headers(req.headers_mut(), &caller);
            let mut response = next.run(req).await;
            response.extensions_mut().insert(caller);
            response
        }
    }
}

/// Middleware in front of the Dataverse router.
pub(crate) async fn dataverse_auth(State(app): State<App>, req: Request, next: Next) -> Response {
    authenticate(&app, Audience::Dataverse, req, next).await
}

/// Middleware in front of the Planner router.
pub(crate) async fn graph_auth(State(app): State<App>, req: Request, next: Next) -> Response {
    authenticate(&app, Audience::Graph, req, next).await
}

/// Middleware in front of the TG API.
pub(crate) async fn tg_auth(State(app): State<App>, req: Request, next: Next) -> Response {
    authenticate(&app, Audience::Tg, req, next).await
}

/// The caller of a TG request, as set by [`tg_auth`].
pub(crate) fn caller_of(headers: &HeaderMap) -> Option<Caller> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some(Caller {
        id: get(CALLER_ID)?,
        name: get(CALLER_NAME).unwrap_or_default(),
        kind: get(CALLER_KIND).unwrap_or_default(),
    })
}

/// `ANY /_sandbox/as/{user}/{system}/{*rest}`: forwards to an emulator as a named user.
pub(crate) async fn act_as(
    app: App,
    dataverse: axum::Router,
    planner: axum::Router,
    req: Request,
) -> Response {
    use tower::ServiceExt as _;
    let original = req.uri().clone();
    let path = original.path().to_owned();
    let rest = path.strip_prefix("/_sandbox/as/").unwrap_or_default();
    let mut parts = rest.splitn(3, '/');
    let (Some(user_key), Some(system)) = (parts.next(), parts.next()) else {
        return errors::sandbox(
            StatusCode::NOT_FOUND,
            "not_found",
            "use /_sandbox/as/{user}/{dataverse|graph}/...",
        );
    };
    let tail = format!("/{}", parts.next().unwrap_or_default());
    let Some(user) = app.identity.user(user_key) else {
        return errors::sandbox(
            StatusCode::NOT_FOUND,
            "unknown_user",
            &format!("no configured user named '{user_key}'"),
        );
    };
    let router = match system {
        "dataverse" => dataverse,
        "graph" => planner,
        other => {
            return errors::sandbox(
                StatusCode::NOT_FOUND,
                "unknown_system",
                &format!("'{other}' is not dataverse or graph"),
            );
        }
    };
    let new_uri = match original.query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail,
    };
    let Ok(uri) = new_uri.parse() else {
        return errors::sandbox(
            StatusCode::BAD_REQUEST,
            "bad_uri",
            "the forwarded URI is not valid",
        );
    };
    let original_uri = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .cloned()
        .unwrap_or(axum::extract::OriginalUri(original.clone()));
    // A fresh request: the outer route's path parameters live in the extensions, and the
    // emulator's router would see them next to its own ("wrong number of path arguments").
    let (parts, body) = req.into_parts();
    let mut req = Request::new(body);
    *req.method_mut() = parts.method;
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers;
    *req.uri_mut() = uri;
    req.extensions_mut().insert(original_uri);
    let caller = Caller::from_user(&user);
    set_caller_headers(req.headers_mut(), &caller);
    let mut response = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    response.extensions_mut().insert(caller);
    response
}
