//! document-review: Stores TG documents in the object store and drives document review (P5, D3) and onboarding status (P6).

use std::net::SocketAddr;

use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = "document-review";

/// Where it listens when `TGB_HTTP_ADDR` is not set.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8086);

/// Runs the service on its configured address until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr = tgb_service::http_addr(&config, DEFAULT_HTTP_ADDR);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve(config, listener, shutdown).await
}

/// Runs the service on `listener` (tests pass one bound to port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bus = tgb_service::connect(NAME, &config).await?;
    let workers = tgb_service::Workers::new(&shutdown);
    tgb_service::run(NAME, listener, axum::Router::new(), bus, shutdown, workers).await
}
