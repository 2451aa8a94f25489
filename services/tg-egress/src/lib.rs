//! tg-egress: writes to Trading Grid every event TG must see (comments, case status,
//! milestones, scorecards, review outcomes, onboarding status, new collaboration cases).
//!
//! One durable consumer ([`CONSUMER`]) over [`SUBJECTS`]; [`handler`] turns each event into
//! its TG call (the table is in that module). Every write carries `Idempotency-Key` = the
//! event id (with a suffix when one event makes two writes), so a redelivery after a crash
//! between the call and the ack replays instead of writing twice.
//!
//! Settings: `[tg_egress]` in the TOML file (`TGB_TG_EGRESS__*`), see [`EgressSettings`].

pub mod handler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_clients::tg::TgClient;
use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

pub use handler::{Egress, SUBJECTS};

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = tgb_service::registry::TG_EGRESS.name;

/// The durable consumer.
pub const CONSUMER: &str = "tg-egress";

/// Where it listens when `TGB_HTTP_ADDR` is not set.
pub const DEFAULT_HTTP_ADDR: SocketAddr = tgb_service::registry::TG_EGRESS.default_addr();

/// `[tg_egress]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSettings {
    /// Timeout of one TG API call, milliseconds.
    pub request_timeout_ms: u64,
    /// Re-reads of a case after a 412 before the event is retried later.
    pub conflict_retries: u32,
    /// Seconds before expiry at which the OAuth2 token is refreshed.
    pub token_refresh_margin_secs: u64,
    /// Author name of comments tg-bridge posts when the event names nobody.
    pub comment_author: String,
}

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            request_timeout_ms: 10_000,
            conflict_retries: 5,
            token_refresh_margin_secs: 60,
            comment_author: "Customer service".into(),
        }
    }
}

/// Runs the service on `listener` (tests pass one bound to port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings: EgressSettings = config.section("tg_egress")?;
    let s = &config.settings;
    let api = config
        .require(&s.tg_api_url, "TGB_TG_API_URL", NAME)?
        .clone();
    let token_url = config
        .require(&s.tg_token_url, "TGB_TG_TOKEN_URL", NAME)?
        .clone();
    let client_id = config
        .require(&s.tg_client_id, "TGB_TG_CLIENT_ID", NAME)?
        .clone();
    let secret = config
        .require(&s.tg_client_secret, "TGB_TG_CLIENT_SECRET", NAME)?
        .clone();
    let http = TgClient::http_client(Duration::from_millis(settings.request_timeout_ms));
    let mut credentials = ClientCredentials::new(token_url, client_id, secret);
    credentials.refresh_margin = Duration::from_secs(settings.token_refresh_margin_secs);
    let tokens = Arc::new(TokenCache::new(http.clone(), credentials));
    let client = TgClient::new(http, api, tokens);

    let bus = tgb_service::connect(NAME, &config).await?;
    let links = tgb_bus::links::Links::new(bus.kv(tgb_bus::names::KV_LINKS).await?);
    let egress = Arc::new(Egress::new(client, links, settings));
    let mut workers = tgb_service::Workers::new(&shutdown);
    let spec = tgb_service::consumer_spec(&config, CONSUMER, SUBJECTS);
    workers.consumer(&bus, spec, egress);
    tgb_service::run(
        NAME,
        &config,
        listener,
        axum::Router::new(),
        bus,
        shutdown,
        workers,
    )
    .await
}
