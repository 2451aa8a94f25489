//! The system under measurement: nats-server and the services as their own processes, the
//! sandbox in this process, wired as `tgb up` wires them (one `whsec_` secret shared by the
//! sandbox's TG webhook subscription and tg-ingress, one key shared by the Dataverse webhook
//! registration and dynamics-adapter).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use rand::RngCore as _;
use tgb_sandbox::config::WebhookSubscriptionConfig;
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_sandbox_dataverse::{WebhookAuth, WebhookRegistration};

use super::procs::{Launcher, SERVICES, ServiceProcess, start_nats};

/// The TG webhook subscription that points at tg-ingress.
pub const INGRESS_SUBSCRIPTION: &str = "ingress";

/// Milliseconds since the Unix epoch, now (the one clock every measurement uses).
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// What one system is made of.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The sandbox's configuration.
    pub sandbox: SandboxConfig,
    /// The services started with the system (the others can be started later).
    pub start: Vec<&'static str>,
    /// `TGB_*` settings for every service.
    pub env: Vec<(String, String)>,
    /// Register a second Dataverse webhook, to this process, for incident Create (the time
    /// an incident is created, to the millisecond; the sandbox stamps rows to the second).
    pub incident_probe: bool,
}

/// When each incident's Create notification reached us: incident id → ms since the epoch.
#[derive(Clone, Default, Debug)]
pub struct IncidentProbe {
    seen: Arc<Mutex<HashMap<String, f64>>>,
}

impl IncidentProbe {
    /// Notifications received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every (incident id, time).
    pub fn all(&self) -> HashMap<String, f64> {
        self.seen.lock().unwrap().clone()
    }
}

/// The running system.
pub struct BenchSystem {
    /// The broker.
    pub nats: crate::nats::OwnNats,
    /// nats-server's HTTP monitoring address (`/varz`, `/jsz`).
    pub monitor: std::net::SocketAddr,
    /// The emulators.
    pub sandbox: Sandbox,
    /// Every service process (started or not).
    pub services: Vec<ServiceProcess>,
    /// Our own NATS connection.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: async_nats::jetstream::Context,
    /// Plain HTTP client.
    pub http: reqwest::Client,
    /// Incident creation times, when asked for.
    pub probe: Option<IncidentProbe>,
    launcher: Launcher,
    cwd: PathBuf,
    probe_task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn random_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl BenchSystem {
    /// Starts NATS, the sandbox and the services of `spec.start`, and wires them.
    pub async fn start(spec: Spec, launcher: &Launcher, log_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tgb-bench-").tempdir()?;
        let (nats, monitor) = start_nats(dir.path()).await?;
        let config_file = crate::system::find_in_repo(tgb_runtime::config::DEFAULT_CONFIG_PATH)
            .context("config/tg-bridge.toml not found: run tgb bench from the repository")?;
        let cwd = config_file
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut sb_config = spec.sandbox.clone();
        sb_config
            .tg
            .webhooks
            .retain(|w| w.name != INGRESS_SUBSCRIPTION);
        let sandbox = Sandbox::start(sb_config).await.context("the sandbox")?;
        let webhook_secret = random_secret();
        let dataverse_key = random_hex(24);
        let mut env = TgbEnv::new(nats.url())
            .sandbox(&sandbox)
            .webhook_secret(webhook_secret.clone())
            .dataverse_webhook_key(dataverse_key.clone())
            .config_file(config_file.display())
            .set("TGB_LOG_FORMAT", "pretty")
            .vars();
        env.extend(spec.env.iter().cloned());
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let mut services = Vec::new();
        for name in SERVICES {
            services.push(ServiceProcess::new(name, env.clone(), log_dir)?);
        }
        let client = async_nats::ConnectOptions::new()
            .name("tgb-bench")
            .connect(nats.url())
            .await
            .context("the benchmark's NATS connection")?;
        let js = async_nats::jetstream::new(client.clone());
        let mut system = BenchSystem {
            nats,
            monitor,
            sandbox,
            services,
            client,
            js,
            http: reqwest::Client::new(),
            probe: None,
            launcher: launcher.clone(),
            cwd,
            probe_task: None,
            _dir: dir,
        };
        // One after the other: the first provisions the streams and buckets, the others find
        // them.
        for name in spec.start.clone() {
            system.start_service(name).await?;
        }

        let ingress = system.service("tg-ingress").addr;
        let dynamics = system.service("dynamics-adapter").addr;
        system
            .sandbox
            .tg()
            .webhooks()
            .add(WebhookSubscriptionConfig {
                name: INGRESS_SUBSCRIPTION.into(),
                url: format!("http://{ingress}/webhooks/tg"),
                secrets: vec![webhook_secret],
            })
            .context("the TG webhook subscription")?;
        system
            .sandbox
            .dataverse()
            .register_webhook(WebhookRegistration {
                name: "tg-bridge dynamics-adapter".into(),
                url: format!("http://{dynamics}/webhooks/dataverse"),
                auth: WebhookAuth::Header {
                    name: "x-api-key".into(),
                    value: dataverse_key,
                },
                entities: Vec::new(),
                messages: Vec::new(),
            })
            .map_err(|e| anyhow::anyhow!("the Dataverse webhook registration: {e}"))?;
        if spec.incident_probe {
            system.start_probe().await?;
        }
        Ok(system)
    }

    async fn start_probe(&mut self) -> anyhow::Result<()> {
        let probe = IncidentProbe::default();
        let seen = probe.seen.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("the incident probe's listener")?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new().route(
            "/incident-created",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let at = now_ms();
                let seen = seen.clone();
                async move {
                    if let Some(id) = body["PrimaryEntityId"].as_str() {
                        seen.lock().unwrap().entry(id.to_owned()).or_insert(at);
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        self.probe_task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
        self.sandbox
            .dataverse()
            .register_webhook(WebhookRegistration {
                name: "tgb bench: incident created".into(),
                url: format!("http://{addr}/incident-created"),
                auth: WebhookAuth::default(),
                entities: vec!["incident".into()],
                messages: vec!["Create".into()],
            })
            .map_err(|e| anyhow::anyhow!("the probe's Dataverse webhook registration: {e}"))?;
        self.probe = Some(probe);
        Ok(())
    }

    /// Starts one service and waits until it is ready.
    pub async fn start_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn_service(name)?;
        self.wait_ready(name).await
    }

    /// Starts one service (it may work before it answers `/readyz`).
    pub fn spawn_service(&mut self, name: &str) -> anyhow::Result<()> {
        let (launcher, cwd) = (self.launcher.clone(), self.cwd.clone());
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))?
            .start(&launcher, &cwd)
    }

    /// Waits until a started service answers `/readyz`.
    pub async fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let http = self.http.clone();
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))?
            .wait_ready(&http, Duration::from_secs(90))
            .await
    }

    /// The process of a service.
    pub fn service(&self, name: &str) -> &ServiceProcess {
        self.services
            .iter()
            .find(|s| s.name == name)
            .expect("one of the six services")
    }

    /// The processes to sample: each running service, nats-server and this process (the
    /// sandbox and the load generator).
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .services
            .iter()
            .filter_map(|s| s.pid().map(|p| (s.name.to_owned(), p)))
            .collect();
        if let Some(p) = self.nats.pid() {
            out.push(("nats-server".into(), p));
        }
        out.push(("tgb bench (sandbox + load)".into(), std::process::id()));
        out
    }

    /// A service that exited by itself, if any.
    pub fn crashed(&mut self) -> Option<String> {
        self.services
            .iter_mut()
            .find_map(|s| s.exited().map(|e| format!("{} exited: {e}", s.name)))
    }

    /// Messages not yet handled by the durable consumers (pending + ack pending), summed.
    pub async fn backlog(&self) -> anyhow::Result<u64> {
        let stream = self
            .js
            .get_stream(tgb_bus::names::EVENTS_STREAM)
            .await
            .context("the events stream")?;
        let names: Vec<String> = {
            use futures::TryStreamExt as _;
            stream
                .consumer_names()
                .try_collect()
                .await
                .context("the consumers")?
        };
        let mut total = 0;
        for n in names {
            let info = stream.consumer_info(&n).await.context("consumer info")?;
            total += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(total)
    }

    /// Stops everything.
    pub async fn stop(mut self) {
        for s in &mut self.services {
            s.stop().await;
        }
        if let Some(t) = self.probe_task.take() {
            t.abort();
        }
        self.sandbox.shutdown().await;
        self.nats.stop().await;
    }
}
