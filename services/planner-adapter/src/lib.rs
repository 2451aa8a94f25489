//! planner-adapter: flows P1, P2, P4, P7 and the task machinery for escalation (P3), review
//! (P5) and onboarding (P6) against Microsoft Graph Planner v1.0.
//!
//! - [`handler`]: one durable consumer turns events into tasks ([`tasks`]: created once
//!   whatever the retries, updated ETag-aware), routed by [`routing`] (`[routing]`,
//!   `[partners]`, validated at start).
//! - [`poller`]: polls the configured plans and publishes `planner.task.progressed` and
//!   `planner.exception.completed`, dropping tg-bridge's own writes (echoes); one replica at a
//!   time polls, the one holding the [`leader`] lease.

pub mod handler;
pub mod labels;
pub mod leader;
pub mod poller;
pub mod preflight;
pub mod routing;
pub mod store;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tgb_clients::graph::GraphClient;
use tgb_clients::oauth::TokenCache;
use tgb_governor::{Governor, GovernorConfig};
use tgb_runtime::Config;
use tokio_util::sync::CancellationToken;

pub use tasks::AfterPost;

/// The service's name: its NATS connection name, telemetry service name and consumer prefix.
pub const NAME: &str = tgb_service::registry::PLANNER_ADAPTER.name;

/// Where it listens when `TGB_HTTP_ADDR` is not set.
/// Its consumer's gathered delivery unless `[bus] gather_ms` says otherwise
/// ([`tgb_bus::ConsumerSpec::gather`]).
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

pub const DEFAULT_HTTP_ADDR: SocketAddr = tgb_service::registry::PLANNER_ADAPTER.default_addr();

/// Runs the service on `listener` (tests pass one bound to port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(config, listener, shutdown, None).await
}

/// The `[routing]` and `[partners]` sections, validated.
pub fn load_routing(config: &Config) -> anyhow::Result<(routing::Routing, routing::Partners)> {
    let routing: routing::Routing = config.required_section(
        "routing",
        NAME,
        "without it no case has a Planner plan to go to and every one would be skipped",
    )?;
    routing.validate()?;
    let partners: routing::Partners = config.section("partners")?;
    Ok((routing, partners))
}

/// The Graph client of the `[routing.graph]` settings and the `TGB_AZURE_*` identity.
pub fn graph_client(config: &Config, routing: &routing::Routing) -> anyhow::Result<GraphClient> {
    let s = &config.settings;
    let tenant = config.require(&s.azure_tenant_id, "TGB_AZURE_TENANT_ID", NAME)?;
    let client_id = config.require(&s.azure_client_id, "TGB_AZURE_CLIENT_ID", NAME)?;
    let credential = tgb_service::entra::credential(config, NAME)?;
    let g = &routing.graph;
    let http = GraphClient::http_client(Duration::from_secs(g.timeout_secs.max(1)));
    let credentials = GraphClient::entra_credentials(
        &s.azure_authority,
        &s.graph_url,
        tenant,
        client_id,
        credential,
    )
    .context("TGB_AZURE_AUTHORITY")?;
    let tokens = Arc::new(TokenCache::new(http.clone(), credentials));
    let governor = Governor::new(
        format!("graph:{client_id}"),
        GovernorConfig {
            requests_per_window: g.requests_per_window,
            window_secs: g.window_secs,
            max_concurrent: g.max_concurrent,
            ..GovernorConfig::default()
        },
    );
    Ok(GraphClient::new(
        http,
        s.graph_url.clone(),
        tokens,
        governor,
        client_id.clone(),
    ))
}

/// [`serve`], with a hook called after each successful task POST (tests use it to stop the
/// adapter at the worst moment: after the POST, before the link is stored).
#[doc(hidden)]
pub async fn serve_with(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    after_post: Option<AfterPost>,
) -> anyhow::Result<()> {
    let (routing, partners) = load_routing(&config)?;
    let graph = graph_client(&config, &routing)?;
    let g = &routing.graph;

    // Every configured plan, bucket and label exists, or the service does not start.
    let findings = preflight::check(&graph, &routing).await;
    if let Some(failed) = preflight::failures(&findings) {
        anyhow::bail!("the Planner configuration does not match Graph: {failed}");
    }

    let bus = tgb_service::connect(NAME, &config).await?;
    let mut workers = tgb_service::Workers::new(&shutdown);
    if g.fleet {
        // Before the first task request (the preflight's few reads above run alone): the
        // lane's limits are the whole fleet's.
        workers
            .fleet(
                &bus,
                graph.governor().clone(),
                Duration::from_millis(g.fleet_ttl_ms),
                Duration::from_millis(g.fleet_renew_ms),
            )
            .await?;
    }
    let links = tgb_bus::links::Links::new(bus.kv(tgb_bus::names::KV_LINKS).await?);
    let sync = bus.kv(tgb_bus::names::KV_SYNC).await?;
    let lease = leader::Lease::new(
        sync.clone(),
        leader::LEASE_KEY,
        NAME,
        Duration::from_millis(g.poller_lease_ttl_ms),
        Duration::from_millis(g.poller_lease_renew_ms),
    );
    let store = store::Store::new(sync);
    let tasks = tasks::Tasks {
        graph,
        links,
        store,
        labels: labels::LabelCache::default(),
        intent_lease: Duration::from_secs(g.intent_lease_secs),
        intent_settle: Duration::from_secs(g.intent_settle_secs),
        after_post,
        publisher: bus.publisher(),
    };
    let routing = Arc::new(routing);
    let poll_interval = Duration::from_millis(routing.graph.poll_interval_ms);
    let handler = Arc::new(handler::PlannerHandler {
        tasks: tasks.clone(),
        routing: routing.clone(),
        partners: Arc::new(partners),
    });
    let poller = poller::Poller {
        tasks,
        routing,
        publisher: bus.publisher(),
        foreign: Default::default(),
        unchanged: Default::default(),
    };
    workers.consumer(
        &bus,
        // Gathered: no one waits on a task to the millisecond, and a burst of cases then shares
        // the process's wake-ups (#21).
        tgb_service::gathered_consumer_spec(&config, handler::CONSUMER, handler::SUBJECTS, GATHER),
        handler,
    );
    workers.spawn(move |stop| poller.run(poll_interval, lease, stop));
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
