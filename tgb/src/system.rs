//! `tgb up`: NATS, the sandbox and the six services in one process, wired to each other.
//!
//! Wiring (one source of truth, [`System::service_env`]): the sandbox's first TG client and
//! first Entra client become the services' `TGB_TG_CLIENT_*` and `TGB_AZURE_CLIENT_*`; a fresh
//! `whsec_` secret is both the sandbox's TG webhook subscription secret (→ tg-ingress
//! `/webhooks/tg`) and tg-ingress's `TGB_TG_WEBHOOK_SECRETS`; a fresh key is both the key of the
//! Dataverse webhook service endpoint (→ dynamics-adapter `/webhooks/dataverse`, registered with
//! its steps through the Web API by `tgb setup dataverse`'s code) and `TGB_DATAVERSE_WEBHOOK_KEY`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use rand::RngCore as _;
use tgb_runtime::Config;
use tgb_sandbox::config::WebhookSubscriptionConfig;
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_service::registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::nats::{self, OwnNats};

type ServeFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type ServeFn = fn(Config, tokio::net::TcpListener, CancellationToken) -> ServeFuture;

/// The six services: name, default port, `serve`.
pub const SERVICES: &[(&str, u16, ServeFn)] = &[
    (
        registry::TG_INGRESS.name,
        registry::TG_INGRESS.default_port,
        |c, l, s| Box::pin(tg_ingress::serve(c, l, s)),
    ),
    (
        registry::TG_EGRESS.name,
        registry::TG_EGRESS.default_port,
        |c, l, s| Box::pin(tg_egress::serve(c, l, s)),
    ),
    (
        registry::DYNAMICS_ADAPTER.name,
        registry::DYNAMICS_ADAPTER.default_port,
        |c, l, s| Box::pin(dynamics_adapter::serve(c, l, s)),
    ),
    (
        registry::PLANNER_ADAPTER.name,
        registry::PLANNER_ADAPTER.default_port,
        |c, l, s| Box::pin(planner_adapter::serve(c, l, s)),
    ),
    (
        registry::SLA_MONITOR.name,
        registry::SLA_MONITOR.default_port,
        |c, l, s| Box::pin(sla_monitor::serve(c, l, s)),
    ),
    (
        registry::DOCUMENT_REVIEW.name,
        registry::DOCUMENT_REVIEW.default_port,
        |c, l, s| Box::pin(document_review::serve(c, l, s)),
    ),
];

/// sla-monitor's clock in `tgb up`: the system clock plus an offset that only the demo moves
/// (`POST /sla-clock/advance` on the control listener), so an SLA breach can be shown in
/// seconds. A deployment runs sla-monitor's own binary with the system clock.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_secs: std::sync::atomic::AtomicI64,
}

impl OffsetClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.offset_secs.fetch_add(
            i64::try_from(by.as_secs()).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// How far ahead of the system clock it is.
    pub fn offset(&self) -> Duration {
        Duration::from_secs(
            u64::try_from(self.offset_secs.load(std::sync::atomic::Ordering::SeqCst)).unwrap_or(0),
        )
    }
}

impl sla_monitor::Clock for OffsetClock {
    fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
            + time::Duration::seconds(self.offset_secs.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Where the services listen.
#[derive(Clone, Debug)]
pub enum Ports {
    /// Each on its default port (8081..8086) on this address.
    Default(IpAddr),
    /// Each on a free port of 127.0.0.1 (tests, several systems on one machine).
    Ephemeral,
}

/// What `tgb up` starts.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The tg-bridge TOML file; `None`: `TGB_CONFIG`, else `config/tg-bridge.toml` of the repo.
    pub config: Option<PathBuf>,
    /// The sandbox TOML file; `None`: `config/sandbox.toml` of the repo, else the defaults.
    pub sandbox_config: Option<PathBuf>,
    /// Override of the sandbox's listen address (the file says 127.0.0.1:8600).
    pub sandbox_listen: Option<SocketAddr>,
    /// Where the NATS store and logs go.
    pub data_dir: PathBuf,
    /// Keep the NATS store of the previous run (default: start empty, as the sandbox does).
    pub keep_data: bool,
    /// A running NATS (`TGB_NATS_URL`); `None`: start our own.
    pub nats_url: Option<String>,
    /// Credentials and TLS files for that NATS (`--creds`, `--tls-*`); the services get them
    /// as `TGB_NATS_CREDS` and `TGB_NATS_TLS_*`.
    pub nats_auth: tgb_bus::NatsAuth,
    /// Where the services listen.
    pub ports: Ports,
    /// Run only NATS and the sandbox (the services run elsewhere, with `--print-env`).
    pub sandbox_only: bool,
    /// Extra `TGB_*` settings for every service (applied after the process environment and
    /// before the wiring).
    pub extra_env: Vec<(String, String)>,
    /// Start the Dataverse emulator as an organisation without tg-bridge's customisations
    /// (`tgb setup dataverse` creates them, the webhook included, which is then not
    /// registered here).
    pub dataverse_empty_org: bool,
    /// Settings for one service only (service name, variable, value), applied last: e.g. its
    /// own `TGB_NATS_URL` with its own NATS user.
    pub service_env: Vec<(String, String, String)>,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            config: None,
            sandbox_config: None,
            sandbox_listen: None,
            data_dir: PathBuf::from(".data"),
            keep_data: false,
            nats_url: None,
            nats_auth: tgb_bus::NatsAuth::default(),
            ports: Ports::Default(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            sandbox_only: false,
            extra_env: Vec::new(),
            dataverse_empty_org: false,
            service_env: Vec::new(),
        }
    }
}

impl UpOptions {
    /// Everything in-process on free ports, NATS store under `data_dir` (tests).
    pub fn ephemeral(data_dir: &Path) -> Self {
        UpOptions {
            sandbox_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: data_dir.to_path_buf(),
            ports: Ports::Ephemeral,
            ..UpOptions::default()
        }
    }
}

/// A service running in this process.
pub struct RunningService {
    /// Its name.
    pub name: &'static str,
    /// Its HTTP address.
    pub addr: SocketAddr,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningService {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the service has stopped (by itself: a failure).
    pub fn has_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// The running system.
pub struct System {
    /// The sandbox.
    pub sandbox: Sandbox,
    /// The broker URL every service uses.
    pub nats_url: String,
    own_nats: Option<OwnNats>,
    /// The services (empty with `sandbox_only`).
    pub services: Vec<RunningService>,
    shutdown: CancellationToken,
    base_env: Vec<(String, String)>,
    config_file: Option<PathBuf>,
    /// Per-service settings ([`UpOptions::service_env`]).
    own_env: Vec<(String, String, String)>,
    /// sla-monitor's clock.
    pub sla_clock: std::sync::Arc<OffsetClock>,
    /// The control listener (`GET /` what runs where, `POST /sla-clock/advance`).
    pub control_url: String,
    control: Option<JoinHandle<()>>,
    attach_file: Option<PathBuf>,
    /// The sandbox's named users: (key, id, name).
    pub users: Vec<(String, String, String)>,
}

/// The repository root that holds `rel`, searched from the current directory up, then the
/// source tree this binary was built from.
pub fn find_in_repo(rel: &str) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cwd.iter()
        .flat_map(|c| c.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .chain(std::iter::once(built))
        .map(|root| root.join(rel))
        .find(|p| p.is_file())
}

/// A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes.
fn new_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn new_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sandbox configuration `tgb up` uses.
pub fn load_sandbox_config(opts: &UpOptions) -> anyhow::Result<SandboxConfig> {
    let path = match &opts.sandbox_config {
        Some(p) => Some(p.clone()),
        None => find_in_repo("config/sandbox.toml"),
    };
    let mut config = match &path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            SandboxConfig::from_toml(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => SandboxConfig::default(),
    };
    if let Some(listen) = opts.sandbox_listen {
        config.listen = listen;
    }
    Ok(config)
}

impl System {
    /// Starts NATS (or checks the given one), the sandbox and the services, and wires them.
    pub async fn start(opts: UpOptions) -> anyhow::Result<System> {
        let shutdown = CancellationToken::new();
        // NATS.
        let (nats_url, own_nats) = match &opts.nats_url {
            Some(url) => {
                let client = nats::connect_with(url, &opts.nats_auth).await?;
                drop(client);
                (url.clone(), None)
            }
            None => {
                let binary = nats::find_server()?;
                let dir = opts.data_dir.join("nats");
                if !opts.keep_data && dir.join("store").exists() {
                    std::fs::remove_dir_all(dir.join("store")).with_context(|| {
                        format!("cannot empty the NATS store {}", dir.display())
                    })?;
                }
                let server = OwnNats::start(&binary, &dir).await?;
                (server.url(), Some(server))
            }
        };

        // The sandbox.
        let mut sb_config = load_sandbox_config(&opts)?;
        let webhook_secret = new_webhook_secret();
        let dataverse_key = new_key();
        // The services sign in as the first clients of each (see `TgbEnv::sandbox`).
        if sb_config.identity.tg_clients.is_empty() {
            bail!("the sandbox configuration has no [[identity.tg_clients]]");
        }
        if sb_config.identity.entra_clients.is_empty() {
            bail!("the sandbox configuration has no [[identity.entra_clients]]");
        }
        let users: Vec<(String, String, String)> = sb_config
            .identity
            .users
            .iter()
            .map(|u| (u.key.clone(), u.id.to_string(), u.name.clone()))
            .collect();
        // Subscriptions are added below, once tg-ingress's address is known.
        sb_config.tg.webhooks.retain(|w| w.name != "ingress");
        if opts.dataverse_empty_org {
            sb_config.dataverse.empty_org = true;
        }
        let dataverse_empty_org = sb_config.dataverse.empty_org;
        let sandbox = Sandbox::start(sb_config)
            .await
            .context("the sandbox cannot start (is its port taken? use --sandbox-listen)")?;

        let config_file = match &opts.config {
            Some(p) => Some(p.clone()),
            None if std::env::var_os(tgb_runtime::config::CONFIG_ENV).is_some() => None,
            None => find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH),
        };

        let mut base_env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("TGB_") && k != "TGB_HTTP_ADDR")
            .collect();
        base_env.extend(opts.extra_env.iter().cloned());
        let auth = &opts.nats_auth;
        for (name, file) in [
            ("TGB_NATS_CREDS", &auth.creds),
            ("TGB_NATS_TLS_CA", &auth.tls_ca),
            ("TGB_NATS_TLS_CERT", &auth.tls_cert),
            ("TGB_NATS_TLS_KEY", &auth.tls_key),
        ] {
            if let Some(file) = file {
                base_env.push((name.to_owned(), file.display().to_string()));
            }
        }
        let wiring = TgbEnv::new(nats_url.clone())
            .sandbox(&sandbox)
            .webhook_secret(webhook_secret.clone())
            .dataverse_webhook_key(dataverse_key);
        base_env.extend(wiring.vars());

        let mut system = System {
            sandbox,
            nats_url,
            own_nats,
            services: Vec::new(),
            shutdown,
            base_env,
            config_file,
            own_env: opts.service_env.clone(),
            sla_clock: std::sync::Arc::new(OffsetClock::default()),
            control_url: String::new(),
            control: None,
            attach_file: None,
            users,
        };

        // Listeners first, so every address is known before anything runs.
        let mut listeners = Vec::new();
        for (name, port, _) in SERVICES {
            let addr = match &opts.ports {
                Ports::Default(ip) => SocketAddr::new(*ip, *port),
                Ports::Ephemeral => SocketAddr::from(([127, 0, 0, 1], 0)),
            };
            if opts.sandbox_only {
                listeners.push((*name, addr, None));
                continue;
            }
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    system.stop().await;
                    bail!(
                        "{name} cannot listen on {addr}: {e} (another tg-bridge running? stop it, \
                         or run `tgb up --ephemeral-ports`)"
                    );
                }
            };
            let addr = listener.local_addr()?;
            listeners.push((*name, addr, Some(listener)));
        }
        let addr_of = |n: &str| {
            listeners
                .iter()
                .find(|(name, _, _)| *name == n)
                .map(|(_, a, _)| *a)
                .expect("every service has an address")
        };
        let ingress = addr_of("tg-ingress");
        let dynamics = addr_of("dynamics-adapter");

        for (name, addr, listener) in listeners {
            let Some(listener) = listener else {
                system.services.push(RunningService {
                    name,
                    addr,
                    task: None,
                });
                continue;
            };
            let config = match system.service_config(name, addr) {
                Ok(c) => c,
                Err(e) => {
                    system.stop().await;
                    return Err(e);
                }
            };
            let serve = SERVICES
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, _, f)| *f)
                .expect("known service");
            let token = system.shutdown.child_token();
            let clock = system.sla_clock.clone();
            let task = tokio::spawn(async move {
                let result = if name == "sla-monitor" {
                    sla_monitor::serve_with_clock(config, listener, token, clock).await
                } else {
                    serve(config, listener, token).await
                };
                if let Err(e) = &result {
                    tracing::error!(service = name, error = format!("{e:#}"), "service stopped");
                }
                result
            });
            system.services.push(RunningService {
                name,
                addr,
                task: Some(task),
            });
        }

        // TG → tg-ingress, signed with the secret tg-ingress knows.
        let ingress_url = format!("http://{}/webhooks/tg", connect_addr(ingress));
        system
            .sandbox
            .tg()
            .webhooks()
            .add(WebhookSubscriptionConfig {
                name: "ingress".into(),
                url: ingress_url,
                secrets: vec![webhook_secret],
            })
            .context("the TG webhook subscription")?;
        // Dataverse → dynamics-adapter, with the key it expects in its header: the service
        // endpoint and steps (`Close` of incident included) registered through the Web API by
        // the code of `tgb setup dataverse`, so `tgb doctor` finds them. An empty org gets
        // them from `tgb setup dataverse` itself.
        if !dataverse_empty_org && let Err(e) = system.register_dataverse_webhook(dynamics).await {
            system.stop().await;
            return Err(e);
        }
        system.start_control(&opts).await?;
        Ok(system)
    }

    /// `tgb setup dataverse`'s webhook registration, with the dynamics-adapter's own settings.
    async fn register_dataverse_webhook(&self, dynamics: SocketAddr) -> anyhow::Result<()> {
        let config = self.service_config("dynamics-adapter", dynamics)?;
        let dv = crate::setup::client_from_config(&config)?;
        let (webhook_header, webhook_key) = crate::setup::webhook_key_from_config(&config)?;
        let file: tgb_sandbox_dataverse::SolutionFile =
            serde_json::from_str(tgb_sandbox_dataverse::SOLUTION_JSON)
                .context("the solution description")?;
        let opts = crate::setup::SetupOptions {
            dry_run: false,
            webhook_url: Some(format!(
                "http://{}/webhooks/dataverse",
                connect_addr(dynamics)
            )),
            webhook_header,
            webhook_key,
            key_timeout: Duration::from_secs(60),
            create_role: None,
        };
        crate::setup::register_webhook(&dv, &file, &opts)
            .await
            .context("the Dataverse webhook registration")?;
        Ok(())
    }

    /// The control listener, and `<data dir>/tgb-up.json` that `tgb demo --attach` and the
    /// operator commands read.
    async fn start_control(&mut self, opts: &UpOptions) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("the control listener")?;
        self.control_url = format!("http://{}", listener.local_addr()?);
        let attach = self.attach_info();
        let clock = self.sla_clock.clone();
        let info = attach.clone();
        let router = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || {
                    let info = info.clone();
                    async move { axum::Json(info) }
                }),
            )
            .route(
                "/sla-clock/advance",
                axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let clock = clock.clone();
                    async move {
                        let Some(minutes) = body["minutes"].as_u64() else {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                axum::Json(
                                    serde_json::json!({"error": "expected {\"minutes\": N}"}),
                                ),
                            );
                        };
                        clock.advance(Duration::from_secs(minutes * 60));
                        (
                            axum::http::StatusCode::OK,
                            axum::Json(
                                serde_json::json!({"offset_secs": clock.offset().as_secs()}),
                            ),
                        )
                    }
                }),
            );
        // People's Planner changes, through the Planner emulator's library call (the same call
        // `tgb demo` makes in-process), for a demo driving this system from another process.
        let planner = self.sandbox.planner().clone();
        let users = self.users.clone();
        let router = router.route(
            "/planner/tasks/{task_id}",
            axum::routing::patch(
                move |axum::extract::Path(task_id): axum::extract::Path<String>,
                      axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >,
                      axum::Json(patch): axum::Json<serde_json::Value>| {
                    let (planner, users) = (planner.clone(), users.clone());
                    async move {
                        let user = q.get("as").map(String::as_str).unwrap_or("planner");
                        let Some((_, id, name)) = users.iter().find(|(k, _, _)| k == user) else {
                            return (
                                axum::http::StatusCode::NOT_FOUND,
                                axum::Json(serde_json::json!({"error": format!("no sandbox user '{user}'")})),
                            );
                        };
                        match planner.update_task_as(
                            &tgb_sandbox_planner::Caller::user(id, name),
                            &task_id,
                            &patch,
                        ) {
                            Ok(task) => (axum::http::StatusCode::OK, axum::Json(task)),
                            Err(e) => (
                                axum::http::StatusCode::BAD_REQUEST,
                                axum::Json(serde_json::json!({"error": format!("{e:?}")})),
                            ),
                        }
                    }
                },
            ),
        );
        let token = self.shutdown.clone();
        self.control = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        }));
        let file = opts.data_dir.join("tgb-up.json");
        if std::fs::create_dir_all(&opts.data_dir).is_ok()
            && std::fs::write(&file, serde_json::to_vec_pretty(&self.attach_info())?).is_ok()
        {
            self.attach_file = Some(file);
        }
        Ok(())
    }

    /// What runs where, as `tgb-up.json` holds it.
    pub fn attach_info(&self) -> serde_json::Value {
        serde_json::json!({
            "sandbox": self.sandbox.base_url(),
            "nats": self.nats_url,
            "control": self.control_url,
            "services": self.services.iter().map(|s| (s.name, format!("http://{}", connect_addr(s.addr)))).collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    /// The configuration of one service: the process's `TGB_*`, the extra settings, the wiring
    /// and its `TGB_HTTP_ADDR`.
    pub fn service_config(&self, name: &str, addr: SocketAddr) -> anyhow::Result<Config> {
        let mut env = self.service_env(addr);
        env.extend(
            self.own_env
                .iter()
                .filter(|(service, _, _)| service == name)
                .map(|(_, k, v)| (k.clone(), v.clone())),
        );
        Config::load_from(self.config_file.as_deref(), env)
            .with_context(|| format!("the configuration of {name}"))
    }

    /// The environment a service needs to join this system (for `tgb up --print-env`).
    pub fn service_env(&self, addr: SocketAddr) -> Vec<(String, String)> {
        let mut env = self.base_env.clone();
        env.push(("TGB_HTTP_ADDR".into(), addr.to_string()));
        if let Some(file) = &self.config_file {
            env.push(("TGB_CONFIG".into(), file.display().to_string()));
        }
        env
    }

    /// The wiring shared by every service, as `export` lines (secrets included: they are the
    /// sandbox's).
    pub fn print_env(&self) -> String {
        let mut out = String::new();
        let mut seen = std::collections::BTreeMap::new();
        for (k, v) in &self.base_env {
            seen.insert(k.clone(), v.clone());
        }
        if let Some(file) = &self.config_file {
            seen.insert("TGB_CONFIG".into(), file.display().to_string());
        }
        for (k, v) in seen {
            out.push_str(&format!("export {k}='{v}'\n"));
        }
        for s in &self.services {
            out.push_str(&format!("# {}: TGB_HTTP_ADDR={}\n", s.name, s.addr));
        }
        out
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&RunningService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The token cancelled by [`System::stop`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every service answers `/readyz` 200 (or one has stopped).
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        for s in &self.services {
            if s.task.is_none() {
                continue;
            }
            loop {
                if s.has_stopped() {
                    bail!(
                        "{} stopped during start-up (its error is in the log above)",
                        s.name
                    );
                }
                let url = format!("http://{}/readyz", connect_addr(s.addr));
                if let Ok(r) = http.get(&url).send().await
                    && r.status().is_success()
                {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("{} is not ready after {within:?} ({url})", s.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// What runs where, for people.
    pub fn summary(&self) -> String {
        let sb = self.sandbox.base_url();
        let mut out = String::new();
        out.push_str(&format!(
            "NATS              {}",
            tgb_bus::redact_url(&self.nats_url)
        ));
        match &self.own_nats {
            Some(n) => out.push_str(&format!(
                "  (own nats-server, store {}, log {})\n",
                n.store().display(),
                n.log().display()
            )),
            None => out.push_str("  (TGB_NATS_URL)\n"),
        }
        out.push_str(&format!("sandbox           {sb}/   (the sandbox page)\n"));
        out.push_str(&format!(
            "  TG API          {}\n",
            self.sandbox.tg_api_url()
        ));
        out.push_str(&format!(
            "  Dataverse       {}\n",
            self.sandbox.dataverse_url()
        ));
        out.push_str(&format!("  Graph           {}\n", self.sandbox.graph_url()));
        out.push_str(&format!("  state           {sb}/_sandbox/state\n"));
        for s in &self.services {
            let base = format!("http://{}", connect_addr(s.addr));
            if s.task.is_none() {
                out.push_str(&format!(
                    "{:<17} not started here: run it with TGB_HTTP_ADDR={}\n",
                    s.name, s.addr
                ));
            } else {
                out.push_str(&format!(
                    "{:<17} {base}/healthz  {base}/readyz  {base}/metrics\n",
                    s.name
                ));
            }
        }
        out
    }

    /// Waits until shutdown is asked for, or a service stops by itself (then returns its
    /// error after stopping the rest).
    pub async fn run_until(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut failure = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if let Some(s) = self
                .services
                .iter()
                .find(|s| s.has_stopped() && s.task.is_some())
            {
                failure = Some(s.name);
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let errors = self.stop_services().await;
        self.stop_rest().await;
        self.sandbox.shutdown().await;
        match failure {
            Some(name) => {
                let detail = errors
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, e)| format!(": {e:#}"))
                    .unwrap_or_default();
                bail!("{name} stopped by itself{detail}; everything was shut down")
            }
            None => Ok(()),
        }
    }

    async fn stop_services(&mut self) -> Vec<(&'static str, anyhow::Error)> {
        self.shutdown.cancel();
        let mut errors = Vec::new();
        for s in &mut self.services {
            if let Some(task) = s.task.take() {
                match tokio::time::timeout(Duration::from_secs(30), task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => errors.push((s.name, e)),
                    Ok(Err(e)) => errors.push((s.name, anyhow::anyhow!("panicked: {e}"))),
                    Err(_) => errors.push((s.name, anyhow::anyhow!("did not stop within 30 s"))),
                }
            }
        }
        errors
    }

    async fn stop_rest(&mut self) {
        if let Some(c) = self.control.take() {
            let _ = c.await;
        }
        if let Some(f) = self.attach_file.take() {
            let _ = std::fs::remove_file(f);
        }
        if let Some(n) = &mut self.own_nats {
            n.stop().await;
        }
    }

    /// Stops the services (draining in-flight work), the sandbox and our own NATS.
    pub async fn stop(mut self) {
        let _ = self.stop_services().await;
        self.stop_rest().await;
        self.sandbox.shutdown().await;
    }
}

/// An address to connect to: a wildcard listen address becomes loopback.
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}
