//! Test harness: serves `Planner::router()` on 127.0.0.1:0 and calls it with reqwest.

use std::path::PathBuf;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tgb_sandbox_planner::{Planner, PlannerConfig};

/// The seeded demo tenant's ids.
pub const GROUP: &str = "0b7a5f5e-6a3c-4f1e-8d0a-2c9e4b1f7a10";
pub const PLAN: &str = "pLnPartnerIssues00000000000A";
pub const ONBOARDING_PLAN: &str = "pLnOnboarding000000000000000";
pub const TRIAGE: &str = "bKtTriage000000000000000000A";
pub const ESCALATIONS: &str = "bKtEscalations0000000000000A";
/// The application user tg-bridge acts as.
pub const APP_USER: &str = "3c9d2e1f-7a6b-4c5d-8e9f-0a1b2c3d4e5f";
pub const ASSIGNEE: &str = "8a1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

pub struct App {
    pub base: String,
    pub planner: Planner,
    pub http: reqwest::Client,
    _server: tokio::task::JoinHandle<()>,
}

pub async fn spawn() -> App {
    spawn_with(PlannerConfig::default()).await
}

pub async fn spawn_with(config: PlannerConfig) -> App {
    let planner = Planner::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = planner.router();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    App {
        base: format!("http://{addr}"),
        planner,
        http: reqwest::Client::new(),
        _server: server,
    }
}

impl App {
    /// A Graph request as tg-bridge's application user (the core would set these headers).
    pub fn graph(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/v1.0{path}", self.base))
            .header("x-tgb-caller-id", APP_USER)
            .header("x-tgb-caller-name", "tg-bridge")
            .header("x-tgb-caller-kind", "application")
    }

    /// A Graph request as a named person.
    pub fn graph_as_user(
        &self,
        method: Method,
        path: &str,
        id: &str,
        name: &str,
    ) -> RequestBuilder {
        self.http
            .request(method, format!("{}/v1.0{path}", self.base))
            .header("x-tgb-caller-id", id)
            .header("x-tgb-caller-name", name)
            .header("x-tgb-caller-kind", "user")
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/_sandbox{path}", self.base))
    }

    /// Creates a task from a fixture; returns (task JSON, its ETag).
    pub async fn create_task(&self, fixture_name: &str) -> (Value, String) {
        let r = self
            .graph(Method::POST, "/planner/tasks")
            .json(&fixture(fixture_name))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create task {fixture_name}");
        let etag = etag_header(&r);
        let body: Value = r.json().await.unwrap();
        (body, etag)
    }

    pub async fn get(&self, path: &str) -> (u16, Option<String>, Value) {
        let r = self.graph(Method::GET, path).send().await.unwrap();
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        (status, etag, r.json().await.unwrap())
    }
}

pub fn etag_header(r: &Response) -> String {
    r.headers()
        .get("etag")
        .expect("ETag header")
        .to_str()
        .unwrap()
        .to_string()
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A request body kept as a fixture, e.g. `plannerTask/create_triage`.
pub fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Asserts Graph's error body shape and returns `error.code`.
pub fn assert_graph_error(body: &Value) -> String {
    let e = &body["error"];
    assert!(e["code"].is_string(), "error.code in {body}");
    assert!(e["message"].is_string(), "error.message in {body}");
    let inner = &e["innerError"];
    for k in ["date", "request-id", "client-request-id"] {
        assert!(inner[k].is_string(), "innerError.{k} in {body}");
    }
    e["code"].as_str().unwrap().to_string()
}
