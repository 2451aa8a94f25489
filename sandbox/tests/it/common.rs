use std::future::Future;
use std::time::Duration;

use serde_json::{Value, json};
use tgb_sandbox::{Sandbox, SandboxConfig};

pub const TG_CLIENT: (&str, &str) = ("tgb-bridge", "tg-secret");
pub const ENTRA_CLIENT: (&str, &str) = ("tgb-bridge", "tgb-bridge-secret");

pub async fn start() -> Sandbox {
    start_with(SandboxConfig::default()).await
}

pub async fn start_with(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config).await.expect("sandbox starts")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// How long a test waits for a condition before it calls it a hang: generous, because CI runs
/// on two busy cores; the wait itself ends as soon as the condition holds.
pub const WAIT_SECS: u64 = 120;

/// Polls `check` until it yields `Some`, failing after `secs` seconds.
pub async fn wait_for<T, F, Fut>(secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition met in time")
}

pub async fn tg_token(sb: &Sandbox) -> String {
    let r: Value = http()
        .post(sb.tg_token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", TG_CLIENT.0),
            ("client_secret", TG_CLIENT.1),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["access_token"].as_str().unwrap().to_owned()
}

pub async fn entra_token(sb: &Sandbox, scope: &str) -> reqwest::Response {
    http()
        .post(format!(
            "{}/my-tenant/oauth2/v2.0/token",
            sb.azure_authority()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", ENTRA_CLIENT.0),
            ("client_secret", ENTRA_CLIENT.1),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
}

pub fn acme() -> Value {
    json!({"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"})
}

pub fn acme_ref() -> tgb_sandbox::tg::model::PartnerRef {
    tgb_sandbox::tg::model::PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    }
}

/// A partner raises a case through the scripting API; returns the case id.
pub async fn raise_case(sb: &Sandbox, title: &str) -> String {
    let r: Value = http()
        .post(format!("{}/_sandbox/tg/cases", sb.base_url()))
        .json(&json!({"partner": acme(), "title": title, "category": "shipment_discrepancy", "priority": "high"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]["case_id"].as_str().unwrap().to_owned()
}
