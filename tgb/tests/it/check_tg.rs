//! `tgb check tg` against the sandbox's TG emulator (every behaviour conforms) and against a
//! shim that ignores `Idempotency-Key` (that behaviour is reported failed, exit code 1).

use std::process::Command;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tgb::check_tg::{Options, Verdict};
use tgb_sandbox::{Sandbox, SandboxConfig};

/// The sandbox, with partner activity in its feed: three cases and a document.
async fn seeded_sandbox() -> Sandbox {
    let sb = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let http = reqwest::Client::new();
    let acme = json!({"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"});
    let mut first_case = None;
    for i in 0..3 {
        let r: Value = http
            .post(format!("{}/_sandbox/tg/cases", sb.base_url()))
            .json(&json!({"partner": acme, "title": format!("Short shipment {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        first_case.get_or_insert(r["data"]["case_id"].as_str().unwrap().to_owned());
    }
    let r = http
        .post(format!("{}/_sandbox/tg/documents", sb.base_url()))
        .json(&json!({"case_id": first_case, "content_base64": "JVBERi0xLjQKdGdiIGNoZWNrCg=="}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    sb
}

fn options(api_url: &str, token_url: &str) -> Options {
    Options {
        api_url: api_url.parse().unwrap(),
        token_url: token_url.parse().unwrap(),
        client_id: "tgb-bridge".into(),
        client_secret: "tg-secret".to_owned().into(),
        partner: "ZZ:ACME01".into(),
        document_id: None,
        timeout: tgb_testkit::HANG_GUARD,
        webhook_trigger: None,
        webhook_secrets: Vec::new(),
        webhook_listen: "127.0.0.1:0".parse().unwrap(),
        webhook_url: None,
    }
}

/// The options for the sandbox, with its test-webhook trigger and `secret`.
fn sandbox_options(sb: &Sandbox, secret: &str) -> Options {
    let mut o = options(&sb.tg_api_url(), &sb.tg_token_url());
    o.webhook_trigger = Some(
        format!("{}/_sandbox/tg/webhooks/test", sb.base_url())
            .parse()
            .unwrap(),
    );
    o.webhook_secrets = vec![secret.to_owned().into()];
    o
}

#[tokio::test]
async fn the_sandbox_tg_emulator_conforms_to_every_behaviour() {
    let sb = seeded_sandbox().await;
    let report = tgb::check_tg::run(&sandbox_options(
        &sb,
        tgb_sandbox::tg::script::TEST_WEBHOOK_SECRET,
    ))
    .await;
    let shown = report.render();
    assert!(report.conforms(), "{shown}");
    let names: Vec<&str> = report.findings.iter().map(|f| f.behaviour).collect();
    assert_eq!(
        names,
        [
            "token",
            "token refuses a wrong secret",
            "API refuses a call without a token",
            "feed paging and cursors",
            "idempotency-key replay (create)",
            "idempotency-key replay (no second effect)",
            "if-match on case PATCH",
            "document content with Digest",
            "signed webhook round trip",
        ]
    );
    // Every behaviour ran: none was skipped for want of data.
    assert!(
        report.findings.iter().all(|f| f.verdict == Verdict::Pass),
        "{shown}"
    );
    let feed = &report.findings[3].detail;
    assert!(feed.contains("pages of 2"), "{shown}");
}

#[tokio::test]
async fn a_webhook_signed_with_another_secret_is_reported() {
    let sb = seeded_sandbox().await;
    let report =
        tgb::check_tg::run(&sandbox_options(&sb, "whsec_bm90LXRoZS1zaGltcy1zZWNyZXQ=")).await;
    let shown = report.render();
    let webhook = report.findings.last().unwrap();
    assert_eq!(webhook.behaviour, "signed webhook round trip");
    assert_eq!(webhook.verdict, Verdict::Fail, "{shown}");
    assert!(
        webhook
            .detail
            .contains("no webhook-signature entry verifies"),
        "{shown}"
    );
    assert!(!report.conforms());
}

/// A shim in front of the sandbox that drops `Idempotency-Key` before forwarding.
async fn forgetful_shim(sb: &Sandbox) -> String {
    async fn forward(State(target): State<String>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let url = format!(
            "{target}{}",
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        let mut headers = parts.headers.clone();
        headers.remove("idempotency-key");
        headers.remove(axum::http::header::HOST);
        let answer = reqwest::Client::new()
            .request(parts.method, url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let headers = answer.headers().clone();
        let bytes = answer.bytes().await.unwrap();
        let mut response = (status, bytes).into_response();
        for (name, value) in &headers {
            if name != axum::http::header::CONTENT_LENGTH
                && name != axum::http::header::TRANSFER_ENCODING
            {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
    }
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(sb.tg_api_url());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_shim_that_ignores_idempotency_keys_is_reported_and_exits_non_zero() {
    let sb = seeded_sandbox().await;
    let shim = forgetful_shim(&sb).await;
    let report = tgb::check_tg::run(&options(&shim, &sb.tg_token_url())).await;
    let shown = report.render();
    assert!(!report.conforms(), "{shown}");
    let failed: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .map(|f| f.behaviour)
        .collect();
    assert_eq!(
        failed,
        [
            "idempotency-key replay (create)",
            "idempotency-key replay (no second effect)"
        ],
        "{shown}"
    );
    assert!(
        shown.contains("FAIL  idempotency-key replay (create)"),
        "{shown}"
    );
    assert!(
        shown.contains("hint: a write repeated with the same Idempotency-Key"),
        "{shown}"
    );

    // The command: the same verdict as JSON, and exit code 1.
    let api = shim.clone();
    let token_url = sb.tg_token_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tgb"))
            .args([
                "check",
                "tg",
                "--json",
                "--url",
                &api,
                "--token-url",
                &token_url,
            ])
            .args(["--client-id", "tgb-bridge", "--timeout-secs", "60"])
            .env("TGB_TG_CLIENT_SECRET", "tg-secret")
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(tgb_testkit::HANG_GUARD + Duration::from_secs(60), out)
        .await
        .expect("tgb check tg ends")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let create = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["behaviour"] == "idempotency-key replay (create)")
        .unwrap();
    assert_eq!(create["verdict"], "fail", "{json}");
    assert!(create["hint"].is_string(), "{json}");
}
