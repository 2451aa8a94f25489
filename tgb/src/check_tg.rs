//! `tgb check tg`: the TG contract's behaviours (`proto/tg-community-api.openapi.yaml`) run
//! against a live TG shim, one line per behaviour with a hint when it does not conform.
//!
//! The check writes to the shim: it opens one collaboration case (title "tgb check tg …",
//! priority low, `external_ref.system = "tgb-check"`) and changes its priority, so point it at
//! a test community. Every request is bounded by the timeout; nothing is retried.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tgb_runtime::secret::{ExposeSecret as _, SecretString};
use url::Url;

/// Where the shim is and who the check is.
#[derive(Debug)]
pub struct Options {
    /// The API base (`TGB_TG_API_URL`), e.g. `https://tg-shim.example/`.
    pub api_url: Url,
    /// The OAuth2 token endpoint (`TGB_TG_TOKEN_URL`).
    pub token_url: Url,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret.
    pub client_secret: SecretString,
    /// The partner the test case is opened with, `qualifier:id`.
    pub partner: String,
    /// A document whose content to fetch; default: the newest `document.uploaded` in the feed.
    pub document_id: Option<String>,
    /// Bound of each request, and of the wait for the test webhook.
    pub timeout: Duration,
    /// Where to ask the shim for a signed test webhook: `POST {trigger} {"url": receiver}`
    /// with the bearer token. `None`: the round trip is skipped.
    pub webhook_trigger: Option<Url>,
    /// The `whsec_…` secrets the test webhook may be signed with.
    pub webhook_secrets: Vec<SecretString>,
    /// Where the check's receiver listens (port 0: any free port).
    pub webhook_listen: std::net::SocketAddr,
    /// The receiver's URL as the shim reaches it (default `http://{listen}/webhooks/tg`).
    pub webhook_url: Option<Url>,
}

/// How a behaviour fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It conforms.
    Pass,
    /// It does not.
    Fail,
    /// It could not be checked (the reason says why).
    Skip,
}

/// One behaviour's result.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The behaviour, e.g. `idempotency-key replay`.
    pub behaviour: &'static str,
    /// Pass, fail or skip.
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
    /// What the contract asks for (on a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Every behaviour's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// In the order they ran.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when no behaviour that ran failed.
    pub fn conforms(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fail)
    }

    /// One line per behaviour: `PASS token  detail` (and the hint on a failure).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "SKIP",
            };
            out.push_str(&format!("{tag}  {:<42} {}\n", f.behaviour, f.detail));
            if let Some(hint) = &f.hint {
                out.push_str(&format!("      hint: {hint}\n"));
            }
        }
        let failed = self
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .count();
        out.push_str(&if failed == 0 {
            "the shim conforms to every behaviour that ran\n".to_owned()
        } else {
            format!("{failed} behaviour(s) do not conform\n")
        });
        out
    }
}

type Outcome = Result<String, (String, String)>;

fn fail(detail: impl Into<String>, hint: impl Into<String>) -> Outcome {
    Err((detail.into(), hint.into()))
}

struct Shim {
    http: reqwest::Client,
    api: Url,
    token: String,
}

impl Shim {
    fn url(&self, path: &str) -> Url {
        let mut base = self.api.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(path.trim_start_matches('/'))
            .unwrap_or_else(|_| self.api.clone())
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), String> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the answer failed: {}", e.without_url()))?;
        Ok((status, headers, body.to_vec()))
    }

    async fn json(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Value), String> {
        let (status, headers, body) = self.send(request).await?;
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, headers, value))
    }
}

fn finding(behaviour: &'static str, outcome: Outcome) -> Finding {
    match outcome {
        Ok(detail) => Finding {
            behaviour,
            verdict: Verdict::Pass,
            detail,
            hint: None,
        },
        Err((detail, hint)) => Finding {
            behaviour,
            verdict: Verdict::Fail,
            detail,
            hint: Some(hint),
        },
    }
}

fn skip(behaviour: &'static str, reason: &str) -> Finding {
    Finding {
        behaviour,
        verdict: Verdict::Skip,
        detail: reason.to_owned(),
        hint: None,
    }
}

/// Runs every behaviour against the shim.
pub async fn run(options: &Options) -> Report {
    let mut findings = Vec::new();
    let http = reqwest::Client::builder()
        .timeout(options.timeout)
        .build()
        .unwrap_or_default();

    let token = token(&http, options).await;
    let token_ok = token.as_ref().ok().cloned();
    findings.push(finding(
        "token",
        token.map(|_| "client-credentials grant answered a Bearer token".to_owned()),
    ));
    findings.push(finding(
        "token refuses a wrong secret",
        wrong_secret(&http, options).await,
    ));
    let Some(token) = token_ok else {
        for behaviour in [
            "API refuses a call without a token",
            "feed paging and cursors",
            "idempotency-key replay (create)",
            "idempotency-key replay (no second effect)",
            "if-match on case PATCH",
            "document content with Digest",
            "signed webhook round trip",
        ] {
            findings.push(skip(behaviour, "no token: nothing else can be checked"));
        }
        return Report { findings };
    };
    let shim = Shim {
        http,
        api: options.api_url.clone(),
        token,
    };
    findings.push(finding(
        "API refuses a call without a token",
        no_token(&shim).await,
    ));
    let feed = feed(&shim).await;
    let events = feed.as_ref().map(|(_, e)| e.clone()).unwrap_or_default();
    findings.push(finding("feed paging and cursors", feed.map(|(d, _)| d)));
    let (created, case_id) = create_replay(&shim, options).await;
    findings.push(finding("idempotency-key replay (create)", created));
    match case_id {
        Some(case_id) => {
            findings.push(finding(
                "idempotency-key replay (no second effect)",
                patch_replay(&shim, &case_id).await,
            ));
            findings.push(finding(
                "if-match on case PATCH",
                if_match(&shim, &case_id).await,
            ));
        }
        None => {
            for behaviour in [
                "idempotency-key replay (no second effect)",
                "if-match on case PATCH",
            ] {
                findings.push(skip(
                    behaviour,
                    "the test case could not be opened (see above)",
                ));
            }
        }
    }
    let document = options
        .document_id
        .clone()
        .or_else(|| newest_document(&events));
    findings.push(match document {
        Some(id) => finding("document content with Digest", digest(&shim, &id).await),
        None => skip(
            "document content with Digest",
            "no document.uploaded event in the feed; pass --document-id",
        ),
    });
    findings.push(match &options.webhook_trigger {
        Some(trigger) => finding(
            "signed webhook round trip",
            webhook(&shim, options, trigger).await,
        ),
        None => skip(
            "signed webhook round trip",
            "no --webhook-trigger: this shim cannot be asked for a test webhook",
        ),
    });
    Report { findings }
}

async fn token(http: &reqwest::Client, o: &Options) -> Result<String, (String, String)> {
    const HINT: &str = "POST the token URL with grant_type=client_credentials, client_id and client_secret (form) must answer 200 {access_token, token_type: \"Bearer\", expires_in}";
    let answer = http
        .post(o.token_url.clone())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", o.client_id.as_str()),
            ("client_secret", o.client_secret.expose_secret()),
        ])
        .send()
        .await
        .map_err(|e| {
            (
                format!("token request failed: {}", e.without_url()),
                HINT.to_owned(),
            )
        })?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if status != StatusCode::OK {
        // The error's code and description only: an answer never echoes the secret.
        let why = [&body["error"], &body["error_description"]]
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("code").and_then(|c| c.as_str()).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(": ");
        return Err((format!("answered {status} {why}"), HINT.to_owned()));
    }
    let token = body["access_token"].as_str().unwrap_or_default();
    let bearer = body["token_type"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"));
    if token.is_empty() || !bearer || !body["expires_in"].is_u64() {
        return Err((
            "the answer lacks access_token, token_type Bearer or a numeric expires_in".into(),
            HINT.to_owned(),
        ));
    }
    Ok(token.to_owned())
}

async fn wrong_secret(http: &reqwest::Client, o: &Options) -> Outcome {
    let wrong = format!("{}-not-the-secret", o.client_secret.expose_secret());
    let answer = http
        .post(o.token_url.clone())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", o.client_id.as_str()),
            ("client_secret", wrong.as_str()),
        ])
        .send()
        .await;
    match answer {
        Err(e) => fail(
            format!("token request failed: {}", e.without_url()),
            "the token endpoint must answer",
        ),
        Ok(r)
            if matches!(
                r.status(),
                StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST
            ) =>
        {
            Ok(format!("a wrong secret is refused with {}", r.status()))
        }
        Ok(r) => fail(
            format!("a wrong secret answered {}", r.status()),
            "a wrong client secret must be refused with 401 (code invalid_client)",
        ),
    }
}

async fn no_token(shim: &Shim) -> Outcome {
    let r = shim.http.get(shim.url("v1/events?limit=1")).send().await;
    match r {
        Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
            Ok("GET /v1/events without a token: 401".into())
        }
        Ok(r) => fail(
            format!("GET /v1/events without a token answered {}", r.status()),
            "every API call without a valid bearer token must answer 401",
        ),
        Err(e) => fail(
            format!("request failed: {}", e.without_url()),
            "the API must answer",
        ),
    }
}

/// Most pages the paging check reads.
const MAX_PAGES: usize = 20;
/// Page size of the paging check.
const PAGE: usize = 2;

async fn feed(shim: &Shim) -> Result<(String, Vec<Value>), (String, String)> {
    const HINT: &str = "GET /v1/events?after={cursor}&limit={n} must answer {events: [...oldest first], next_cursor}; following next_cursor gives the next events, none twice; an unknown cursor is 400 invalid_cursor";
    let err = |d: String| (d, HINT.to_owned());
    // One big page, then the same events two at a time: both must agree.
    let (status, _, whole) = shim
        .json(
            shim.http
                .get(shim.url(&format!("v1/events?limit={}", MAX_PAGES * PAGE))),
        )
        .await
        .map_err(err)?;
    if status != StatusCode::OK || !whole["events"].is_array() || !whole["next_cursor"].is_string()
    {
        return Err(err(format!(
            "GET /v1/events answered {status} without events[] and next_cursor"
        )));
    }
    let expected: Vec<Value> = whole["events"].as_array().cloned().unwrap_or_default();
    let mut paged: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    let mut pages = 0;
    while paged.len() < expected.len() && pages < MAX_PAGES {
        let path = match &cursor {
            Some(c) => format!("v1/events?limit={PAGE}&after={}", urlencode(c)),
            None => format!("v1/events?limit={PAGE}"),
        };
        let (status, _, page) = shim
            .json(shim.http.get(shim.url(&path)))
            .await
            .map_err(err)?;
        pages += 1;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if status != StatusCode::OK || !page["next_cursor"].is_string() {
            return Err(err(format!(
                "page {pages} answered {status} without next_cursor"
            )));
        }
        if events.len() > PAGE {
            return Err(err(format!(
                "page {pages} holds {} events, over limit={PAGE}",
                events.len()
            )));
        }
        if events.is_empty() {
            break;
        }
        for e in &events {
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            if id.is_empty() || !seen.insert(id.clone()) {
                return Err(err(format!("event {id:?} is missing its id or came twice")));
            }
        }
        paged.extend(events);
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    // At the end of the feed, the last cursor gives no event already seen.
    if paged.len() < MAX_PAGES * PAGE
        && let Some(last) = &cursor
    {
        let path = format!("v1/events?limit={PAGE}&after={}", urlencode(last));
        let (status, _, page) = shim
            .json(shim.http.get(shim.url(&path)))
            .await
            .map_err(err)?;
        let again = page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["id"].as_str())
            .find(|id| seen.contains(*id));
        if status != StatusCode::OK || again.is_some() {
            return Err(err(format!(
                "after the last cursor: {status}, event {again:?} again"
            )));
        }
    }
    let ids = |v: &[Value]| v.iter().map(|e| e["id"].clone()).collect::<Vec<_>>();
    if ids(&paged) != ids(&expected) {
        return Err(err(format!(
            "{} events in pages of {PAGE} differ from the {} of one page",
            paged.len(),
            expected.len()
        )));
    }
    let ordered = expected.windows(2).all(|w| {
        w[0]["occurred_at"].as_str().unwrap_or_default()
            <= w[1]["occurred_at"].as_str().unwrap_or_default()
    });
    if !ordered {
        return Err(err(
            "events are not oldest first (occurred_at goes back)".into()
        ));
    }
    let (status, _, body) = shim
        .json(
            shim.http
                .get(shim.url("v1/events?after=not-a-cursor-tgb-check&limit=1")),
        )
        .await
        .map_err(err)?;
    if status != StatusCode::BAD_REQUEST || body["error"]["code"] != "invalid_cursor" {
        return Err(err(format!(
            "an unknown cursor answered {status} {}",
            body["error"]["code"]
        )));
    }
    let detail = if expected.len() > PAGE {
        format!(
            "{} events over {pages} pages of {PAGE} match one page; unknown cursor: 400 invalid_cursor",
            expected.len()
        )
    } else {
        format!(
            "only {} event(s) in the feed: one page; unknown cursor: 400 invalid_cursor",
            expected.len()
        )
    };
    Ok((detail, expected))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn key() -> String {
    format!("tgb-check-{}", uuid::Uuid::new_v4())
}

/// The verdict, and the test case when one was opened (the later checks use it even when the
/// replay did not conform).
async fn create_replay(shim: &Shim, o: &Options) -> (Outcome, Option<String>) {
    let mut case_id = None;
    let outcome = create_replay_into(shim, o, &mut case_id).await;
    (outcome, case_id)
}

async fn create_replay_into(shim: &Shim, o: &Options, opened: &mut Option<String>) -> Outcome {
    const HINT: &str = "a write repeated with the same Idempotency-Key within 24 h must return the first answer (same status and body, `Idempotent-Replayed: true`) and change nothing";
    let err = |d: String| (d, HINT.to_owned());
    let (qualifier, id) = o
        .partner
        .split_once(':')
        .unwrap_or(("ZZ", o.partner.as_str()));
    let k = key();
    let body = json!({
        "partner": {"qualifier": qualifier, "id": id, "name": id},
        "title": format!("tgb check tg {k}"),
        "description": "Opened by `tgb check tg` (the conformance kit); safe to close.",
        "category": "other",
        "priority": "low",
        "external_ref": {"system": "tgb-check", "id": k},
    });
    let post = || {
        shim.http
            .post(shim.url("v1/cases"))
            .header("Idempotency-Key", &k)
            .json(&body)
    };
    let (first_status, _, first) = shim.json(post()).await.map_err(err)?;
    if first_status != StatusCode::CREATED || !first["case_id"].is_string() {
        return Err((
            format!("POST /v1/cases answered {first_status} {}", first["error"]),
            format!(
                "POST /v1/cases must answer 201 {{case_id, revision}} (partner {} must exist)",
                o.partner
            ),
        ));
    }
    let case_id = first["case_id"].as_str().unwrap_or_default().to_owned();
    *opened = Some(case_id.clone());
    let (second_status, headers, second) = shim.json(post()).await.map_err(err)?;
    if second_status != first_status || second != first {
        return Err(err(format!(
            "the replay answered {second_status} case {} (first: {first_status} case {case_id})",
            second["case_id"]
        )));
    }
    let flagged = headers
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true");
    if !flagged {
        return Err(err(
            "the replay's answer is the same but lacks `Idempotent-Replayed: true`".into(),
        ));
    }
    Ok(format!(
        "POST /v1/cases twice with one key: one case {case_id}, replay flagged"
    ))
}

async fn patch_replay(shim: &Shim, case_id: &str) -> Outcome {
    const HINT: &str = "a PATCH repeated with the same Idempotency-Key must return the first answer and not change the case again (its revision stays)";
    let path = format!("v1/cases/{}", urlencode(case_id));
    let k = key();
    let patch = || {
        shim.http
            .patch(shim.url(&path))
            .header("Idempotency-Key", &k)
            .json(&json!({"priority": "normal"}))
    };
    let (s1, _, first) = shim.json(patch()).await.map_err(|d| (d, HINT.to_owned()))?;
    let (s2, _, second) = shim.json(patch()).await.map_err(|d| (d, HINT.to_owned()))?;
    let (s3, _, case) = shim
        .json(shim.http.get(shim.url(&path)))
        .await
        .map_err(|d| (d, HINT.to_owned()))?;
    if s1 != StatusCode::OK || !first["revision"].is_i64() {
        return fail(
            format!("PATCH {path} answered {s1}"),
            "PATCH /v1/cases/{case_id} must answer 200 {revision}",
        );
    }
    if s2 != s1 || second != first {
        return fail(
            format!(
                "the replay answered {s2} revision {} (first: revision {})",
                second["revision"], first["revision"]
            ),
            HINT,
        );
    }
    if s3 != StatusCode::OK || case["revision"] != first["revision"] {
        return fail(
            format!(
                "after the replay the case is at revision {} (the PATCH answered {})",
                case["revision"], first["revision"]
            ),
            HINT,
        );
    }
    Ok(format!(
        "PATCH twice with one key: revision {} once",
        first["revision"]
    ))
}

async fn if_match(shim: &Shim, case_id: &str) -> Outcome {
    const HINT: &str = "PATCH /v1/cases/{case_id} with If-Match naming an older revision must answer 412 (code revision_mismatch) and change nothing; with the current revision, 200";
    let path = format!("v1/cases/{}", urlencode(case_id));
    let e = |d: String| (d, HINT.to_owned());
    let (status, _, case) = shim.json(shim.http.get(shim.url(&path))).await.map_err(e)?;
    let Some(revision) = case["revision"]
        .as_i64()
        .filter(|_| status == StatusCode::OK)
    else {
        return fail(
            format!("GET {path} answered {status} without a revision"),
            "GET /v1/cases/{case_id} must answer the case with its revision",
        );
    };
    let stale = shim
        .json(
            shim.http
                .patch(shim.url(&path))
                .header("Idempotency-Key", key())
                .header("If-Match", (revision - 1).to_string())
                .json(&json!({"priority": "high"})),
        )
        .await
        .map_err(e)?;
    if stale.0 != StatusCode::PRECONDITION_FAILED {
        return fail(
            format!(
                "If-Match: {} (stale, current {revision}) answered {}",
                revision - 1,
                stale.0
            ),
            HINT,
        );
    }
    let (_, _, after) = shim.json(shim.http.get(shim.url(&path))).await.map_err(e)?;
    if after["revision"].as_i64() != Some(revision) {
        return fail(
            format!(
                "the refused PATCH moved the case from revision {revision} to {}",
                after["revision"]
            ),
            HINT,
        );
    }
    let current = shim
        .json(
            shim.http
                .patch(shim.url(&path))
                .header("Idempotency-Key", key())
                .header("If-Match", format!("\"{revision}\""))
                .json(&json!({"priority": "low"})),
        )
        .await
        .map_err(e)?;
    if current.0 != StatusCode::OK {
        return fail(
            format!("If-Match: \"{revision}\" (current) answered {}", current.0),
            HINT,
        );
    }
    Ok(format!(
        "stale If-Match: 412; current If-Match: 200 (revision {})",
        current.2["revision"]
    ))
}

fn newest_document(events: &[Value]) -> Option<String> {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "document.uploaded")
        .and_then(|e| e["data"]["document_id"].as_str())
        .map(str::to_owned)
}

async fn digest(shim: &Shim, document_id: &str) -> Outcome {
    const HINT: &str = "GET /v1/documents/{document_id}/content must answer the bytes with Content-Type and `Digest: sha-256=<base64 of the SHA-256 of the bytes>`";
    let path = format!("v1/documents/{}/content", urlencode(document_id));
    let (status, headers, body) = shim
        .send(shim.http.get(shim.url(&path)))
        .await
        .map_err(|d| (d, HINT.to_owned()))?;
    if status != StatusCode::OK {
        return fail(format!("GET {path} answered {status}"), HINT);
    }
    if headers.get(reqwest::header::CONTENT_TYPE).is_none() {
        return fail("no Content-Type", HINT);
    }
    let Some(digest) = headers.get("digest").and_then(|v| v.to_str().ok()) else {
        return fail("no Digest header", HINT);
    };
    let announced = digest.split(',').map(str::trim).find_map(|part| {
        let (algorithm, value) = part.split_once('=')?;
        algorithm
            .eq_ignore_ascii_case("sha-256")
            .then(|| value.to_owned())
    });
    let actual = STANDARD.encode(Sha256::digest(&body));
    match announced {
        None => fail(format!("Digest has no sha-256: {digest}"), HINT),
        Some(v) if v == actual => Ok(format!(
            "{} bytes of {document_id}, Digest sha-256 matches",
            body.len()
        )),
        Some(v) => fail(
            format!("Digest says sha-256={v}, the bytes hash to {actual}"),
            HINT,
        ),
    }
}

/// Largest clock difference the receiver accepts on `webhook-timestamp`, seconds.
const WEBHOOK_TOLERANCE_SECS: i64 = 300;

async fn webhook(shim: &Shim, o: &Options, trigger: &Url) -> Outcome {
    const HINT: &str = "the test webhook must be a Standard Webhooks POST: webhook-id, webhook-timestamp (Unix seconds, within 300 s), webhook-signature `v1,<base64 HMAC-SHA256 of \"{id}.{timestamp}.{body}\">` with the key of a configured whsec_ secret; the body an event {id = webhook-id, type, occurred_at, community_id, partner, data}";
    if o.webhook_secrets.is_empty() {
        return fail(
            "no --webhook-secret to verify the signature with",
            "pass the whsec_ secret the shim signs with",
        );
    }
    let listener = match tokio::net::TcpListener::bind(o.webhook_listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(
                format!("cannot listen on {}: {e}", o.webhook_listen),
                "pick a free --webhook-listen address",
            );
        }
    };
    let receiver = match (&o.webhook_url, listener.local_addr()) {
        (Some(url), _) => url.to_string(),
        (None, Ok(addr)) => format!("http://{addr}/webhooks/tg"),
        (None, Err(e)) => return fail(format!("receiver address: {e}"), "pass --webhook-url"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(axum::http::HeaderMap, axum::body::Bytes)>(4);
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body)).await;
                StatusCode::NO_CONTENT
            }
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });
    let outcome = async {
        let (status, _, answer) = shim
            .json(
                shim.http
                    .post(trigger.clone())
                    .json(&json!({"url": receiver})),
            )
            .await
            .map_err(|d| (d, HINT.to_owned()))?;
        if !status.is_success() {
            return fail(
                format!("the trigger answered {status} {answer}"),
                "POST {trigger} {\"url\": …} must answer 2xx and send one test webhook there",
            );
        }
        let Ok(Some((headers, body))) = tokio::time::timeout(o.timeout, rx.recv()).await else {
            return fail(
                format!("no webhook reached {receiver} within {:?}", o.timeout),
                HINT,
            );
        };
        verify_webhook(&headers, &body, &o.webhook_secrets).map_err(|d| (d, HINT.to_owned()))
    }
    .await;
    stop.cancel();
    let _ = server.await;
    outcome
}

/// Checks a delivery as tg-ingress would (Standard Webhooks), and the event's shape.
fn verify_webhook(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    secrets: &[SecretString],
) -> Result<String, String> {
    use hmac::Mac as _;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!("no {name} header"))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signature = header("webhook-signature")?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp:?} is not Unix seconds"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - seconds).abs() > WEBHOOK_TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp is {}s away from now",
            now - seconds
        ));
    }
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    let verified = signature.split_whitespace().any(|entry| {
        let Some(sig) = entry
            .strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
        else {
            return false;
        };
        secrets.iter().any(|secret| {
            let Some(key) = secret
                .expose_secret()
                .strip_prefix("whsec_")
                .and_then(|b| STANDARD.decode(b).ok())
            else {
                return false;
            };
            let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(&key) else {
                return false;
            };
            mac.update(&signed);
            mac.verify_slice(&sig).is_ok()
        })
    });
    if !verified {
        return Err("no webhook-signature entry verifies with the given secret(s)".into());
    }
    let event: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if event["id"].as_str() != Some(id.as_str()) {
        return Err(format!(
            "the body's id {} is not the webhook-id {id}",
            event["id"]
        ));
    }
    for field in ["type", "occurred_at", "community_id"] {
        if !event[field].is_string() {
            return Err(format!("the event has no {field}"));
        }
    }
    if !event["partner"].is_object() || !event["data"].is_object() {
        return Err("the event lacks partner or data".into());
    }
    Ok(format!(
        "{} {id} arrived, signature and timestamp verify",
        event["type"].as_str().unwrap_or_default()
    ))
}
