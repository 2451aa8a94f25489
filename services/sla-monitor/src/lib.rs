//! sla-monitor: keeps an SLA clock per TG case and emits `sla.warning` and `sla.breached` (P3).
//!
//! - [`policy`]: `[sla]`, policies per partner tier and priority, validated at start;
//! - [`handler`]: the durable consumer [`CONSUMER`] moves clocks on case lifecycle events from
//!   TG, Dynamics and Planner;
//! - [`ticker`]: evaluates every clock each `tick_interval_ms` and publishes what fell due,
//!   exactly once per (case, target, level) across restarts and replicas;
//! - [`clock`]: the time source, injectable ([`serve_with_clock`]) so tests run hours of SLA time
//!   in milliseconds.
//!
//! HTTP: `GET /sla/ticker` answers `{"ticks": n, "evaluated_at": "<RFC 3339>", "took_us": n,
//! "clocks": n}`: the clock source's time of the last completed evaluation, how long it took and
//! how many clocks it looked at. Ticks read clocks from memory, kept current by a KV watcher.

pub mod clock;
pub mod handler;
pub mod policy;
pub mod state;
pub mod store;
pub mod ticker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, ManualClock, SystemClock};
pub use policy::{Policies, SlaSettings};
pub use ticker::TickerStatus;

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = tgb_service::registry::SLA_MONITOR.name;

/// The durable consumer of case lifecycle events.
pub const CONSUMER: &str = "sla-monitor";

/// Where it listens when `TGB_HTTP_ADDR` is not set.
/// Its consumer's gathered delivery unless `[bus] gather_ms` says otherwise
/// ([`tgb_bus::ConsumerSpec::gather`]).
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

pub const DEFAULT_HTTP_ADDR: SocketAddr = tgb_service::registry::SLA_MONITOR.default_addr();

/// Runs the service on `listener` (tests pass one bound to port 0) with the system clock.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_clock(config, listener, shutdown, Arc::new(SystemClock)).await
}

/// Runs the service with `clock` as its time source.
pub async fn serve_with_clock(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let policies = Arc::new(policies_from(&config)?);
    let bus = tgb_service::connect(NAME, &config).await?;
    let clocks = store::Clocks::new(bus.kv(tgb_bus::names::KV_SLA).await?);
    let links = tgb_bus::links::Links::new(bus.kv(tgb_bus::names::KV_LINKS).await?);
    let status = Arc::new(TickerStatus::default());

    let mut workers = tgb_service::Workers::new(&shutdown);
    let lifecycle = handler::Lifecycle::new(clocks.clone(), links, policies.clone(), clock.clone());
    // Gathered: a clock is due in minutes or hours, and a burst of cases then shares the
    // process's wake-ups (#21).
    let spec = tgb_service::gathered_consumer_spec(&config, CONSUMER, handler::SUBJECTS, GATHER);
    workers.consumer(&bus, spec, Arc::new(lifecycle));
    let cache = Arc::new(store::Cache::default());
    let watcher = (clocks.clone(), cache.clone());
    workers.spawn(|stop| async move { watcher.0.watch_into(&watcher.1, stop).await });
    let ticker = ticker::Ticker::new(
        clocks,
        cache,
        bus.publisher(),
        policies,
        clock,
        status.clone(),
    );
    workers.spawn(|stop| ticker.run(stop));

    let routes = axum::Router::new()
        .route("/sla/ticker", get(ticker_status))
        .with_state(status);
    tgb_service::run(NAME, &config, listener, routes, bus, shutdown, workers).await
}

/// The partner tiers of `[partners]` (shared with planner-adapter's routing).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct PartnerTiers {
    default_tier: Option<String>,
    tiers: std::collections::BTreeMap<String, String>,
}

/// `[sla]` validated, with the partner tiers of `[partners]`: its `tiers` map is the base that
/// `[sla] tiers` overrides, and its `default_tier` applies unless `[sla] default_tier` is set.
pub fn policies_from(config: &Config) -> anyhow::Result<Policies> {
    let mut settings: SlaSettings = config.required_section(
        "sla",
        NAME,
        "the partners' SLA policies and escalation levels are agreements, not defaults",
    )?;
    let partners: PartnerTiers = config.section("partners")?;
    if !config.figment().contains("sla.default_tier")
        && let Some(default) = partners.default_tier
    {
        settings.default_tier = default;
    }
    for (partner, tier) in partners.tiers {
        settings.tiers.entry(partner).or_insert(tier);
    }
    Ok(Policies::new(settings)?)
}

async fn ticker_status(State(status): State<Arc<TickerStatus>>) -> axum::Json<serde_json::Value> {
    let ms = status.evaluated_at_ms.load(Ordering::SeqCst);
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .map(tgb_proto::timestamps::rfc3339);
    axum::Json(serde_json::json!({
        "ticks": status.ticks.load(Ordering::SeqCst),
        "evaluated_at": at,
        "took_us": status.took_us.load(Ordering::SeqCst),
        "clocks": status.clocks.load(Ordering::SeqCst),
    }))
}
