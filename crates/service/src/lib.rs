//! The start-up every tg-bridge service shares, so each service's `serve` only says what it
//! consumes and which routes it adds:
//!
//! 1. [`connect`]: the bus from the settings (refuses NATS < 2.10, provisions idempotently);
//! 2. [`Workers`]: consumers and loops, each stopping on the shared shutdown token;
//! 3. [`run`]: the HTTP listener (`/healthz`, `/readyz` = bus ready and no consumer stopped,
//!    `/metrics`, the service's routes; bounded by `[http]`: header-read and request timeouts,
//!    a concurrency limit) and the workers together; a worker that fails stops the whole
//!    service, and shutdown drains in-flight messages before `run` returns.
//!
//! A consumer whose handler met a fatal error (a refused secret, a missing permission) stops
//! alone: the service keeps serving, `/readyz` answers 503 naming the consumer and the error,
//! and `tgb_consumer_stopped{consumer}` is 1, until someone fixes the cause and restarts it.

pub mod registry;

use std::future::Future;
use std::sync::Arc;

pub mod entra;

use anyhow::Context as _;
use futures::future::BoxFuture;
use std::sync::Mutex;

use tgb_bus::{Bus, BusConfig, ConsumerError, ConsumerSpec, Handler};
use tgb_runtime::Config;
use tgb_runtime::http::Readiness;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connects to NATS as `service` with the configured URL, creds and `[bus]` settings.
pub async fn connect(service: &str, config: &Config) -> anyhow::Result<Bus> {
    let s = &config.settings;
    // Every service connects first: the place to apply the process-wide client settings.
    tgb_clients::oauth::send_trace_context(s.send_trace_context);
    let bus_config = BusConfig {
        client_name: service.to_owned(),
        replicas: s.bus.replicas,
        duplicate_window: s.bus.duplicate_window(),
        max_age: s.bus.max_age(),
        max_bytes: s.bus.max_bytes,
        dlq_max_age: s.bus.dlq_max_age(),
        ..BusConfig::default()
    };
    let auth = tgb_bus::NatsAuth {
        creds: s.nats_creds.clone(),
        tls_ca: s.nats_tls_ca.clone(),
        tls_cert: s.nats_tls_cert.clone(),
        tls_key: s.nats_tls_key.clone(),
    };
    Bus::connect_with(&s.nats_url, &auth, bus_config)
        .await
        .with_context(|| format!("{service} cannot start"))
}

/// A consumer spec with the `[bus]` settings applied (deliveries, ack wait, concurrency, and
/// gathered delivery only if `gather_ms` sets it).
pub fn consumer_spec(config: &Config, name: &str, subjects: &[&str]) -> ConsumerSpec {
    gathered_consumer_spec(config, name, subjects, std::time::Duration::ZERO)
}

/// [`consumer_spec`] for a consumer whose service gathers its deliveries by `default` unless
/// `[bus] gather_ms` says otherwise ([`ConsumerSpec::gather`]).
pub fn gathered_consumer_spec(
    config: &Config,
    name: &str,
    subjects: &[&str],
    default: std::time::Duration,
) -> ConsumerSpec {
    let b = &config.settings.bus;
    ConsumerSpec {
        max_deliver: b.max_deliver,
        backoff_max: b.backoff_max(),
        ack_wait: b.ack_wait(),
        concurrency: b.concurrency,
        gather: b.gather(default),
        ..ConsumerSpec::new(name, subjects)
    }
}

/// Consumers stopped by a fatal error, with why.
type Stopped = Arc<Mutex<Vec<String>>>;

/// `/readyz`: NATS connected, both streams present, and every consumer running.
struct BusReadiness {
    bus: Bus,
    stopped: Stopped,
}

impl Readiness for BusReadiness {
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let stopped = self
                .stopped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .join("; ");
            if !stopped.is_empty() {
                return Err(stopped);
            }
            self.bus.ready().await
        })
    }
}

/// The background work of a service: consumers and loops.
pub struct Workers {
    shutdown: CancellationToken,
    set: JoinSet<anyhow::Result<()>>,
    stopped: Stopped,
}

impl Workers {
    /// Workers that stop when `shutdown` is cancelled.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Workers {
            shutdown: shutdown.clone(),
            set: JoinSet::new(),
            stopped: Stopped::default(),
        }
    }

    /// Runs `handler` over the durable consumer `spec`. A fatal handler error stops this
    /// consumer only: `/readyz` then says why, and the rest of the service goes on.
    pub fn consumer<H: Handler>(&mut self, bus: &Bus, spec: ConsumerSpec, handler: Arc<H>) {
        let bus = bus.clone();
        let shutdown = self.shutdown.clone();
        let stopped = self.stopped.clone();
        self.set.spawn(async move {
            metrics::gauge!("tgb_consumer_stopped", "consumer" => spec.name.clone()).set(0.0);
            match tgb_bus::run_consumer(&bus, spec, handler, shutdown.clone()).await {
                Err(ConsumerError::Fatal { consumer, reason }) => {
                    tracing::error!(%consumer, %reason, "consumer stopped by a fatal error; /readyz reports it until a restart");
                    metrics::gauge!("tgb_consumer_stopped", "consumer" => consumer.clone())
                        .set(1.0);
                    stopped
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("consumer {consumer} stopped: {reason}"));
                    shutdown.cancelled().await;
                    Ok(())
                }
                other => other.map_err(anyhow::Error::from),
            }
        });
    }

    /// Joins the fleet budget of `governor`'s lane (`fleet.<lane>` in `tgb_sync`, see
    /// [`tgb_bus::fleet`]): registers this replica, sets the governor's share to
    /// 1 / replicas, and waits one renewal and a half so the others have taken their smaller
    /// slices; then renews it beside the service and leaves on shutdown. Call it before the
    /// lane's first request. A member that stops renewing drops out after `ttl`.
    pub async fn fleet(
        &mut self,
        bus: &Bus,
        governor: Arc<tgb_governor::Governor>,
        ttl: std::time::Duration,
        renew: std::time::Duration,
    ) -> anyhow::Result<()> {
        let kv = bus.kv(tgb_bus::names::KV_SYNC).await?;
        let fleet = tgb_bus::fleet::Fleet::new(kv, governor.lane(), ttl, renew);
        fleet
            .join(&governor)
            .await
            .with_context(|| format!("joining the fleet budget of lane {}", governor.lane()))?;
        tracing::info!(
            lane = governor.lane(),
            share = governor.share(),
            "joined the fleet budget of the lane"
        );
        self.spawn(move |shutdown| async move {
            fleet.run(governor, shutdown).await;
            Ok(())
        });
        Ok(())
    }

    /// Runs a loop (a poller, a clock); it must return when the token is cancelled.
    pub fn spawn<F, Fut>(&mut self, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.set.spawn(work(self.shutdown.clone()));
    }
}

/// Serves HTTP on `listener` (within the `[http]` limits of `config`) and runs `workers` until
/// `shutdown` is cancelled or one of them fails; then stops everything, waits for in-flight
/// work, and returns the first error.
pub async fn run(
    service: &'static str,
    config: &Config,
    listener: tokio::net::TcpListener,
    routes: axum::Router,
    bus: Bus,
    shutdown: CancellationToken,
    mut workers: Workers,
) -> anyhow::Result<()> {
    workers.spawn({
        let js = bus.jetstream().clone();
        move |stop| report_dlq_depth(js, stop)
    });
    let refusals = bus.clone();
    let readiness: Arc<dyn Readiness> = Arc::new(BusReadiness {
        bus,
        stopped: workers.stopped.clone(),
    });
    let http_shutdown = shutdown.clone();
    let limits = config.settings.http.limits();
    workers.set.spawn(async move {
        tgb_runtime::http::serve_with(listener, routes, readiness, limits, http_shutdown)
            .await
            .context("HTTP listener failed")
    });
    tracing::info!(service, "started");
    let mut first_error = None;
    while let Some(done) = workers.set.join_next().await {
        let result = done.context("a worker panicked").and_then(|r| r);
        if let Err(mut e) = result {
            // A JetStream request the server refused for permissions only times out on the
            // client side; the server said why, on the connection: say it with the error.
            let refused = refusals.permission_refusals();
            if !refused.is_empty() {
                e = e.context(format!("the NATS server refused: {}", refused.join("; ")));
            }
            if first_error.is_none() {
                tracing::error!(
                    service,
                    error = format!("{e:#}"),
                    "stopping: a worker failed"
                );
                first_error = Some(e);
            }
            shutdown.cancel();
        } else if !shutdown.is_cancelled() {
            // A worker may only end when asked to: anything else would silently stop work.
            first_error
                .get_or_insert_with(|| anyhow::anyhow!("a worker of {service} ended unexpectedly"));
            shutdown.cancel();
        }
    }
    tracing::info!(service, "stopped");
    first_error.map_or(Ok(()), Err)
}

/// How often every service reports `tgb_dlq_depth`.
const DLQ_DEPTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Sets the gauge `tgb_dlq_depth` (messages in `TGB_DLQ`) now and every 15 s until `stop`.
async fn report_dlq_depth(
    js: tgb_bus::async_nats::jetstream::Context,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(DLQ_DEPTH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        if let Ok(mut stream) = js.get_stream(tgb_bus::names::DLQ_STREAM).await
            && let Ok(info) = stream.info().await
        {
            metrics::gauge!("tgb_dlq_depth").set(info.state.messages as f64);
        }
    }
}

/// The address a service listens on: `TGB_HTTP_ADDR`, else its default.
pub fn http_addr(config: &Config, default: std::net::SocketAddr) -> std::net::SocketAddr {
    config.settings.http_addr.unwrap_or(default)
}

/// The `main` of every service binary: configuration, the runtime it asks for
/// (`TGB_WORKER_THREADS`: 1, the default, is tokio's current-thread runtime), telemetry,
/// signals, then `serve`.
pub fn main<F, Fut>(
    service: &'static str,
    default_addr: std::net::SocketAddr,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Config, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = Config::load()?;
    let runtime = match config.settings.worker_threads {
        0 => anyhow::bail!("{service}: TGB_WORKER_THREADS must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .with_context(|| format!("{service}: cannot start its runtime"))?;
    runtime.block_on(start(service, default_addr, config, serve))
}

/// [`main`] inside a runtime already running (`tgb bench-service`, which runs one service in
/// `tgb`'s own runtime, whatever `TGB_WORKER_THREADS` says).
pub async fn main_in_runtime<F, Fut>(
    service: &'static str,
    default_addr: std::net::SocketAddr,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Config, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    start(service, default_addr, Config::load()?, serve).await
}

async fn start<F, Fut>(
    service: &'static str,
    default_addr: std::net::SocketAddr,
    config: Config,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Config, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let _telemetry = tgb_runtime::telemetry::init(service, config.settings.log_format);
    let addr = http_addr(&config, default_addr);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{service}: cannot listen on {addr} (TGB_HTTP_ADDR)"))?;
    let shutdown = tgb_runtime::shutdown::on_signals();
    serve(config, listener, shutdown).await
}
