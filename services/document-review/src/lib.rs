//! document-review: stores TG documents in the object store and drives document review (P5, D3)
//! and the onboarding status (P6).
//!
//! - [`intake`]: size and SHA-256 checks of fetched content;
//! - [`handler`]: the durable consumer [`CONSUMER`] (the table of what each event does);
//! - [`onboarding`]: one onboarding status from TG requirements and Planner steps;
//! - [`settings`]: `[documents]` and `[onboarding]`, validated at start.
//!
//! Needs the TG API (`TGB_TG_API_URL`, `TGB_TG_TOKEN_URL`, `TGB_TG_CLIENT_ID`,
//! `TGB_TG_CLIENT_SECRET`) to fetch document contents.

pub mod handler;
pub mod intake;
pub mod onboarding;
pub mod settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_clients::tg::TgClient;
use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

pub use handler::{Review, SUBJECTS};
pub use settings::{DocumentSettings, OnboardingSettings};

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = tgb_service::registry::DOCUMENT_REVIEW.name;

/// The durable consumer.
pub const CONSUMER: &str = "document-review";

/// Where it listens when `TGB_HTTP_ADDR` is not set.
pub const DEFAULT_HTTP_ADDR: SocketAddr = tgb_service::registry::DOCUMENT_REVIEW.default_addr();

/// `[documents]` and `[onboarding]`, validated.
pub fn settings_from(config: &Config) -> anyhow::Result<(DocumentSettings, OnboardingSettings)> {
    let docs: DocumentSettings = config.required_section(
        "documents",
        NAME,
        "which document types are reviewed, by which team and Planner plan",
    )?;
    docs.validate()?;
    let onboarding: OnboardingSettings = config.required_section(
        "onboarding",
        NAME,
        "the internal onboarding checklist and the Planner plan of its tasks",
    )?;
    onboarding.validate()?;
    Ok((docs, onboarding))
}

/// Runs the service on `listener` (tests pass one bound to port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (docs, onboarding) = settings_from(&config)?;
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
    let http = TgClient::http_client(Duration::from_millis(docs.request_timeout_ms));
    let tokens = Arc::new(TokenCache::new(
        http.clone(),
        ClientCredentials::new(token_url, client_id, secret),
    ));
    let tg = TgClient::new(http, api, tokens);

    let bus = tgb_service::connect(NAME, &config).await?;
    let documents = bus.documents().await?;
    let state = bus.kv(tgb_bus::names::KV_SYNC).await?;
    let review = Review::new(tg, documents, state, bus.publisher(), docs, onboarding);
    let mut workers = tgb_service::Workers::new(&shutdown);
    let spec = tgb_service::consumer_spec(&config, CONSUMER, SUBJECTS);
    workers.consumer(&bus, spec, Arc::new(review));
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
