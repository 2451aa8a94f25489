//! Integration tests of the Dataverse emulator over real HTTP (loopback, port 0).

mod batch;
mod crud;
mod incident;
mod limits;
mod metadata;
mod query;
mod throughput;
mod tracking;
mod upsert;
mod webhooks;

use std::time::Duration;

use reqwest::{Method, Response};
use serde_json::Value;
use tgb_sandbox_dataverse::{Dataverse, DataverseConfig, ServiceProtectionConfig};
use uuid::Uuid;

/// The user tests act as unless they say otherwise.
pub const ALICE: Uuid = Uuid::from_u128(0xa11ce);
/// Another user.
pub const BOB: Uuid = Uuid::from_u128(0xb0b);

/// An emulator served on 127.0.0.1:0 under `/dataverse`, like the sandbox core mounts it.
pub struct TestDv {
    pub dv: Dataverse,
    /// `http://127.0.0.1:<port>/dataverse`
    pub root: String,
    /// `{root}/api/data/v9.2`
    pub api: String,
    pub client: reqwest::Client,
}

/// Limits off, so only the limit tests meet them.
pub fn no_limits() -> DataverseConfig {
    DataverseConfig {
        service_protection: ServiceProtectionConfig {
            enabled: false,
            ..Default::default()
        },
        webhook_retry_delay_ms: 0,
        ..Default::default()
    }
}

pub async fn start(cfg: DataverseConfig) -> TestDv {
    let dv = Dataverse::new(cfg);
    let app = axum::Router::new().nest("/dataverse", dv.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let root = format!("http://{addr}/dataverse");
    TestDv {
        dv,
        api: format!("{root}/api/data/v9.2"),
        root,
        client: reqwest::Client::new(),
    }
}

impl TestDv {
    /// A second handle on the same server (for concurrent clients).
    pub fn clone_handle(&self) -> TestDv {
        TestDv {
            dv: self.dv.clone(),
            root: self.root.clone(),
            api: self.api.clone(),
            client: self.client.clone(),
        }
    }

    pub fn req(&self, method: Method, path: &str, user: Uuid) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{}", self.api, path)
        };
        self.client
            .request(method, url)
            .header("x-tgb-caller-id", user.to_string())
            .header("OData-Version", "4.0")
            .header("OData-MaxVersion", "4.0")
            .header("Accept", "application/json")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path, ALICE).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.req(Method::POST, path, ALICE)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
        let mut r = self.req(Method::PATCH, path, ALICE).json(&body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    /// Creates a row and returns its id (from `OData-EntityId`).
    pub async fn create(&self, set: &str, body: Value) -> Uuid {
        let r = self.post(set, body).await;
        assert_eq!(
            r.status(),
            204,
            "create in {set}: {}",
            r.text().await.unwrap_or_default()
        );
        entity_id(&r)
    }

    pub async fn account(&self, name: &str, partner_key: &str) -> Uuid {
        self.create(
            "accounts",
            serde_json::json!({"name": name, "tgb_partnerkey": partner_key}),
        )
        .await
    }
}

pub fn entity_id(r: &Response) -> Uuid {
    let h = r
        .headers()
        .get("OData-EntityId")
        .expect("OData-EntityId")
        .to_str()
        .unwrap();
    let id = h.rsplit_once('(').unwrap().1.trim_end_matches(')');
    Uuid::parse_str(id).unwrap()
}

pub async fn error_of(r: Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.expect("a JSON error body");
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Polls `f` until it returns Some, for at most 120 s (a hang guard: CI runs on two busy cores).
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition not reached within 120 s")
}
