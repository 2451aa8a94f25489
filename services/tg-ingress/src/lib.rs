//! tg-ingress: receives Trading Grid webhooks (Standard Webhooks signed) and polls the TG event
//! feed; publishes `tgb.v1.tg.*` events.
//!
//! - [`verify`]: the signature check, a pure function;
//! - [`mapping`]: TG event → protobuf event, with the deterministic event id;
//! - [`webhook`]: `POST /webhooks/tg` and its answers table;
//! - [`poller`]: the feed fallback with its cursor in KV.
//!
//! Settings: `[tg_ingress]` in the TOML file (`TGB_TG_INGRESS__*`), see [`IngressSettings`].

pub mod mapping;
pub mod poller;
pub mod verify;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use tgb_bus::Bus;
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_clients::tg::TgClient;
use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = tgb_service::registry::TG_INGRESS.name;

/// Where it listens when `TGB_HTTP_ADDR` is not set.
pub const DEFAULT_HTTP_ADDR: SocketAddr = tgb_service::registry::TG_INGRESS.default_addr();

/// `[tg_ingress]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressSettings {
    /// Time between two feed polls, milliseconds (a poll also runs at start).
    pub poll_interval_ms: u64,
    /// Events per feed page (1..=500).
    pub poll_page_size: u16,
    /// Longest wait for a PubAck before answering 503, milliseconds.
    pub publish_timeout_ms: u64,
    /// `Retry-After` of a 503, seconds.
    pub retry_after_secs: u64,
    /// Accepted distance between `webhook-timestamp` and now, seconds.
    pub tolerance_secs: i64,
    /// Timeout of one TG API call, milliseconds.
    pub request_timeout_ms: u64,
    /// Where the feed poller starts when there is no cursor yet: `"now"` (default),
    /// `"beginning"` or an RFC 3339 time. Applies once: the stored cursor records it.
    pub start_from: poller::StartFrom,
    /// How long the feed poller's lease lasts unless renewed, milliseconds (at least twice
    /// the renewal period).
    pub poller_lease_ttl_ms: u64,
    /// How often the lease holder renews it and the other replicas try to take it over,
    /// milliseconds.
    pub poller_lease_renew_ms: u64,
}

impl Default for IngressSettings {
    fn default() -> Self {
        IngressSettings {
            poll_interval_ms: 30_000,
            poll_page_size: 500,
            publish_timeout_ms: 5_000,
            retry_after_secs: 5,
            tolerance_secs: verify::DEFAULT_TOLERANCE_SECS,
            request_timeout_ms: 10_000,
            start_from: poller::StartFrom::Now,
            poller_lease_ttl_ms: 15_000,
            poller_lease_renew_ms: 3_000,
        }
    }
}

/// A publish that JetStream did not acknowledge.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no PubAck within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    NotAcked(#[from] tgb_bus::PublishError),
}

/// What the webhook route and the poller share.
pub struct Ingress {
    bus: Bus,
    publisher: tgb_bus::Publisher,
    keys: Vec<verify::WebhookKey>,
    settings: IngressSettings,
    now: fn() -> i64,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Ingress {
    /// Publishes and waits for the PubAck; `Ok(duplicate)`.
    pub async fn publish(&self, event: &tgb_proto::Event) -> Result<bool, PublishFailure> {
        if self.bus.client().connection_state() != tgb_bus::async_nats::connection::State::Connected
        {
            return Err(PublishFailure::Disconnected);
        }
        let timeout = Duration::from_millis(self.settings.publish_timeout_ms);
        let ack = tokio::time::timeout(timeout, self.publisher.publish_event(event))
            .await
            .map_err(|_| PublishFailure::Timeout(timeout))??;
        Ok(ack.duplicate)
    }
}

/// The TG client, when the API URL, token URL and client credentials are all configured (also
/// `tgb backfill tg`'s).
pub fn tg_client(config: &Config, timeout: Duration) -> Option<TgClient> {
    let s = &config.settings;
    let (Some(api), Some(token_url), Some(id), Some(secret)) = (
        s.tg_api_url.clone(),
        s.tg_token_url.clone(),
        s.tg_client_id.clone(),
        s.tg_client_secret.clone(),
    ) else {
        return None;
    };
    let http = TgClient::http_client(timeout);
    let tokens = TokenCache::new(http.clone(), ClientCredentials::new(token_url, id, secret));
    Some(TgClient::new(http, api, Arc::new(tokens)))
}

/// Runs the service on `listener` (tests pass one bound to port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings: IngressSettings = config.section("tg_ingress")?;
    if settings.poller_lease_renew_ms == 0
        || settings.poller_lease_ttl_ms < settings.poller_lease_renew_ms.saturating_mul(2)
    {
        anyhow::bail!(
            "tg_ingress.poller_lease_ttl_ms ({}) must be at least twice \
             tg_ingress.poller_lease_renew_ms ({}), which must be above 0",
            settings.poller_lease_ttl_ms,
            settings.poller_lease_renew_ms
        );
    }
    let keys = config
        .settings
        .tg_webhook_secrets
        .iter()
        .enumerate()
        .map(|(i, s)| verify::WebhookKey::from_secret(s.expose_secret(), i + 1))
        .collect::<Result<Vec<_>, _>>()
        .context("TGB_TG_WEBHOOK_SECRETS")?;
    if keys.is_empty() {
        tracing::warn!("TGB_TG_WEBHOOK_SECRETS is empty: every webhook will be answered 401");
    }
    let client = tg_client(&config, Duration::from_millis(settings.request_timeout_ms));
    let bus = tgb_service::connect(NAME, &config).await?;
    let ingress = Arc::new(Ingress {
        publisher: bus.publisher(),
        bus: bus.clone(),
        keys,
        settings,
        now: unix_now,
    });
    let mut workers = tgb_service::Workers::new(&shutdown);
    match client {
        Some(client) => {
            let lease = tgb_bus::lease::Lease::new(
                bus.kv(tgb_bus::names::KV_SYNC).await?,
                poller::LEASE_KEY,
                NAME,
                Duration::from_millis(ingress.settings.poller_lease_ttl_ms),
                Duration::from_millis(ingress.settings.poller_lease_renew_ms),
            );
            let ingress = ingress.clone();
            workers.spawn(move |token| poller::run(ingress, client, lease, token));
        }
        None => tracing::warn!(
            "TGB_TG_API_URL, TGB_TG_TOKEN_URL, TGB_TG_CLIENT_ID or TGB_TG_CLIENT_SECRET is not set: \
             the feed is not polled, missed webhooks will not be recovered"
        ),
    }
    let routes = routes(ingress);
    tgb_service::run(NAME, &config, listener, routes, bus, shutdown, workers).await
}

/// `POST /webhooks/tg`.
pub fn routes(ingress: Arc<Ingress>) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/tg", axum::routing::post(webhook::receive))
        .with_state(ingress)
}
