//! tg-bridge's sandbox: emulators of Trading Grid, the Dataverse Web API and Graph Planner on
//! one HTTP listener, with token endpoints, faults, a call log and an inspection API.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let sandbox = tgb_sandbox::Sandbox::start(tgb_sandbox::SandboxConfig::default()).await?;
//! println!("TG API at {}", sandbox.tg_api_url());
//! sandbox.shutdown().await;
//! # Ok(()) }
//! ```

pub mod calls;
pub mod config;
pub mod env;
pub mod errors;
pub mod faults;
pub mod identity;
mod inspect;
mod server;
pub mod tg;
pub mod webhooks;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::routing::{any, post};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use calls::{CallCounts, CallLog, CallRecord};
pub use config::SandboxConfig;
pub use env::TgbEnv;
pub use faults::{Fault, FaultRule, Faults};
pub use identity::{Audience, Caller, Identity};
pub use tg::Tg;
pub use tgb_sandbox_dataverse::Dataverse;
pub use tgb_sandbox_planner::Planner;
pub use webhooks::WebhookSender;

/// Shared state of every route.
#[derive(Clone)]
pub(crate) struct App(Arc<AppInner>);

pub(crate) struct AppInner {
    pub identity: Identity,
    pub tg: Tg,
    pub faults: Faults,
    pub calls: CallLog,
    pub dataverse: Dataverse,
    pub planner: Planner,
}

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// A fault that an emulator cannot offer.
#[derive(Debug, thiserror::Error)]
#[error("etag races are offered for dataverse and graph, not for '{0}'")]
pub struct UnsupportedFault(pub String);

/// Forces the next `n` conditional writes (If-Match) of an emulator to meet a concurrent
/// change first (the row moves on, the write gets 412).
pub(crate) fn force_etag_races(app: &App, system: &str, n: u32) -> Result<(), UnsupportedFault> {
    match system {
        "dataverse" => app.dataverse.force_etag_races(n),
        "graph" | "planner" => app.planner.force_etag_races(n),
        other => return Err(UnsupportedFault(other.to_owned())),
    }
    Ok(())
}

/// A running sandbox. Dropping it stops the server too; [`Sandbox::shutdown`] also waits.
pub struct Sandbox {
    app: App,
    addr: SocketAddr,
    base_url: String,
    cancel: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Binds the listener (`config.listen`, 127.0.0.1:0 by default) and starts serving.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let cancel = CancellationToken::new();

        let sender = webhooks::WebhookSender::new(config.tg.webhook_retry.clone(), cancel.clone());
        for sub in &config.tg.webhooks {
            sender
                .add(sub.clone())
                .with_context(|| format!("tg.webhooks '{}'", sub.name))?;
        }
        let faults = Faults::new(config.fault_seed);
        for rule in &config.faults {
            faults.add(rule.clone()).context("faults")?;
        }
        let app = App(Arc::new(AppInner {
            identity: Identity::new(config.identity.clone(), &base_url),
            tg: Tg::new(&config.tg, sender),
            faults,
            calls: CallLog::new(config.call_log_capacity),
            dataverse: Dataverse::new(config.dataverse.clone()),
            planner: Planner::new(config.planner.clone()),
        }));
        // The directory behind Planner assignments: the named users, each a member of every
        // seeded group (the demo tenant's people all work in its one group).
        for u in &config.identity.users {
            let id = u.id.to_string();
            app.planner.add_user(&id, &u.name);
            for g in &config.planner.groups {
                app.planner.add_member(&g.id, &id);
            }
        }

        let router = build_router(&app, app.dataverse.router(), app.planner.router());
        let server = tokio::spawn(server::serve(listener, router, cancel.clone()));
        tracing::info!(%base_url, "sandbox listening");
        Ok(Sandbox {
            app,
            addr,
            base_url,
            cancel,
            server: Some(server),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// `TGB_TG_API_URL` = `{base}/tg`
    pub fn tg_api_url(&self) -> String {
        format!("{}/tg", self.base_url)
    }

    /// `TGB_TG_TOKEN_URL` = `{base}/tg/oauth2/token`
    pub fn tg_token_url(&self) -> String {
        format!("{}/tg/oauth2/token", self.base_url)
    }

    /// `TGB_AZURE_AUTHORITY` = `{base}/entra` (token URL `{authority}/{tenant}/oauth2/v2.0/token`)
    pub fn azure_authority(&self) -> String {
        format!("{}/entra", self.base_url)
    }

    /// `TGB_DATAVERSE_URL` = `{base}/dataverse` (also the resource of its token scope)
    pub fn dataverse_url(&self) -> String {
        format!("{}/dataverse", self.base_url)
    }

    /// `TGB_GRAPH_URL` = `{base}/graph`
    pub fn graph_url(&self) -> String {
        format!("{}/graph", self.base_url)
    }

    /// `{base}/_sandbox/as/{user}/dataverse`: the Dataverse emulator as a named user.
    pub fn dataverse_url_as(&self, user: &str) -> String {
        format!("{}/_sandbox/as/{user}/dataverse", self.base_url)
    }

    /// `{base}/_sandbox/as/{user}/graph`: the Planner emulator as a named user.
    pub fn graph_url_as(&self, user: &str) -> String {
        format!("{}/_sandbox/as/{user}/graph", self.base_url)
    }

    /// Token issuing and checking.
    pub fn identity(&self) -> &Identity {
        &self.app.identity
    }

    /// The TG emulator (state, scripting calls, webhook sender).
    pub fn tg(&self) -> &Tg {
        &self.app.tg
    }

    /// The Dataverse emulator.
    pub fn dataverse(&self) -> &Dataverse {
        &self.app.dataverse
    }

    /// The Planner emulator.
    pub fn planner(&self) -> &Planner {
        &self.app.planner
    }

    /// Fault rules.
    pub fn faults(&self) -> &Faults {
        &self.app.faults
    }

    /// Forces ETag races in an emulator (`dataverse` or `graph`), where offered.
    pub fn force_etag_races(&self, system: &str, n: u32) -> Result<(), UnsupportedFault> {
        force_etag_races(&self.app, system, n)
    }

    /// The call log.
    pub fn calls(&self) -> &CallLog {
        &self.app.calls
    }

    /// Everything held, as `/_sandbox/state` answers it.
    pub fn state(&self) -> serde_json::Value {
        inspect::state_json(&self.app)
    }

    /// Stops serving and the webhook sender, and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn build_router(app: &App, dataverse: Router, planner: Router) -> Router {
    let tg_api = tg::api::router().route_layer(from_fn_with_state(app.clone(), identity::tg_auth));
    let tg = Router::new()
        .route("/oauth2/token", post(identity::tg_token))
        .merge(tg_api);
    let act_as = {
        let (dataverse, planner) = (dataverse.clone(), planner.clone());
        move |State(app): State<App>, req: axum::extract::Request| {
            identity::act_as(app, dataverse.clone(), planner.clone(), req)
        }
    };
    let dataverse = tower::ServiceBuilder::new()
        .layer(from_fn_with_state(app.clone(), identity::dataverse_auth))
        .service(dataverse);
    let graph = tower::ServiceBuilder::new()
        .layer(from_fn_with_state(app.clone(), identity::graph_auth))
        .service(planner);
    Router::new()
        .route(
            "/entra/{tenant}/oauth2/v2.0/token",
            post(identity::entra_token),
        )
        .nest("/tg", tg)
        .nest("/_sandbox/tg", tg::script::router())
        .route("/_sandbox/as/{*rest}", any(act_as))
        .merge(inspect::router())
        .with_state(app.clone())
        .nest_service("/dataverse", dataverse)
        .nest_service("/graph", graph)
        .layer(from_fn_with_state(app.clone(), calls::edge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{HeaderMap, Request, StatusCode};
    use tower::ServiceExt as _;

    fn test_app() -> App {
        let cancel = CancellationToken::new();
        let config = SandboxConfig::default();
        App(Arc::new(AppInner {
            identity: Identity::new(config.identity.clone(), "http://sb"),
            tg: Tg::new(
                &config.tg,
                webhooks::WebhookSender::new(config.tg.webhook_retry.clone(), cancel),
            ),
            faults: Faults::new(1),
            calls: CallLog::new(10),
            dataverse: Dataverse::default(),
            planner: Planner::default(),
        }))
    }

    /// An emulator stand-in that answers the caller headers it received.
    fn echo() -> Router {
        Router::new().fallback(|headers: HeaderMap| async move {
            let get = |n: &str| {
                headers
                    .get_all(n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            };
            axum::Json(serde_json::json!({
                "id": get(identity::CALLER_ID),
                "name": get(identity::CALLER_NAME),
                "kind": get(identity::CALLER_KIND),
            }))
        })
    }

    async fn send(router: Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = router.oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn emulators_get_the_application_user_and_never_forged_caller_headers() {
        let app = test_app();
        let token = app
            .identity
            .issue_for_entra_client("tgb-bridge", Audience::Dataverse)
            .unwrap();
        let router = build_router(&app, echo(), echo());
        let req = Request::get("/dataverse/api/data/v9.2/incidents")
            .header("authorization", format!("Bearer {token}"))
            .header("x-tgb-caller-id", "forged")
            .header("x-tgb-caller-kind", "user")
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(router, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["id"],
            serde_json::json!(["7d3c0b1e-0000-4000-8000-000000000001"])
        );
        assert_eq!(body["kind"], serde_json::json!(["application"]));
        assert_eq!(body["name"], serde_json::json!(["# tg-bridge"]));
    }

    #[tokio::test]
    async fn acting_as_a_user_sets_that_users_headers() {
        let app = test_app();
        let router = build_router(&app, echo(), echo());
        let req = Request::patch("/_sandbox/as/planner/graph/v1.0/planner/tasks/1")
            .header("x-tgb-caller-id", "forged")
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(router, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["id"],
            serde_json::json!(["2a1b0c3d-0000-4000-8000-000000000102"])
        );
        assert_eq!(body["kind"], serde_json::json!(["user"]));
    }

    #[tokio::test]
    async fn a_request_without_a_token_never_reaches_an_emulator() {
        let app = test_app();
        let router = build_router(&app, echo(), echo());
        let req = Request::get("/graph/v1.0/planner/tasks/1")
            .header("x-tgb-caller-id", "forged")
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(router, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    }
}
