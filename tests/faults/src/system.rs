//! The system under test: a real nats-server (restartable on the same port and store) or a
//! JetStream cluster of them ([`crate::cluster`]), the sandbox in this process (it plays TG, Dataverse and Planner), and each service as its own
//! process, wired as `tgb up` wires them (one `whsec_` secret shared by the sandbox's TG
//! webhook subscription and tg-ingress; one key shared by the Dataverse webhook registration
//! and dynamics-adapter).

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use rand::RngCore as _;
use tgb_sandbox::config::WebhookSubscriptionConfig;
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_sandbox_dataverse::{WebhookAuth, WebhookRegistration};
use tgb_testkit::NatsServer;

use crate::cluster::NatsCluster;
use crate::procs::{Binaries, SERVICES, ServiceProcess, repo_root};

/// The TG webhook subscription that points at tg-ingress.
pub const INGRESS_SUBSCRIPTION: &str = "ingress";

/// What a scenario changes about the system.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Processes per service named here (the others run once).
    pub replicas: Vec<(&'static str, usize)>,
    /// The sandbox's configuration.
    pub sandbox: SandboxConfig,
    /// Extra `TGB_*` settings for every service (after the harness's own).
    pub extra_env: Vec<(String, String)>,
    /// A JetStream cluster of this many nodes instead of one nats-server; the services get
    /// every node's client URL and `[bus] replicas` = the node count.
    pub cluster_nodes: Option<usize>,
}

/// The broker: one nats-server, or a cluster of them.
pub enum Broker {
    /// One nats-server (restartable on the same port and store).
    Single(NatsServer),
    /// A JetStream cluster.
    Cluster(NatsCluster),
}

impl Broker {
    /// The client URL, or every node's client URL comma-separated.
    pub fn url(&self) -> String {
        match self {
            Broker::Single(s) => s.url(),
            Broker::Cluster(c) => c.urls(),
        }
    }

    /// The single server (panics for a cluster: a scenario knows which it started).
    pub fn server(&mut self) -> &mut NatsServer {
        match self {
            Broker::Single(s) => s,
            Broker::Cluster(_) => panic!("the scenario runs a cluster, not one nats-server"),
        }
    }

    /// The cluster (panics for a single server).
    pub fn cluster(&self) -> &NatsCluster {
        match self {
            Broker::Cluster(c) => c,
            Broker::Single(_) => panic!("the scenario runs one nats-server, not a cluster"),
        }
    }

    /// The cluster, to kill and restart nodes (panics for a single server).
    pub fn cluster_mut(&mut self) -> &mut NatsCluster {
        match self {
            Broker::Cluster(c) => c,
            Broker::Single(_) => panic!("the scenario runs one nats-server, not a cluster"),
        }
    }

    /// Stops the server or every node.
    pub async fn stop(&mut self) {
        match self {
            Broker::Single(s) => s.stop().await,
            Broker::Cluster(c) => c.stop().await,
        }
    }
}

/// Settings the suite gives every service, and why: recovery paths that run every 30–60 s in
/// production run every second or two here, so that a scenario ends in seconds, not minutes.
/// Nothing else differs from `config/tg-bridge.toml`.
pub fn suite_env() -> Vec<(String, String)> {
    [
        // The TG feed poll (the webhook path's backstop).
        ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "1000"),
        // Dataverse change tracking (the Dataverse webhook's backstop).
        ("TGB_DYNAMICS__POLL_INTERVAL_MS", "2000"),
        // Planner's plan poll (no change feed in v1.0).
        ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "2000"),
        // tg-bridge's own Graph lane (600 requests/min by default) paces task creation at
        // about 2.5 tasks/s; the sandbox's Planner publishes no limit, and the lane is the
        // benchmarks' subject, not this suite's. Raised so that a burst is minutes, not hours.
        ("TGB_ROUTING__GRAPH__REQUESTS_PER_WINDOW", "60000"),
        ("TGB_ROUTING__GRAPH__MAX_CONCURRENT", "16"),
        // A Planner create intent left by a killed process blocks a re-create this long
        // (default 120 s); still longer than the Graph request timeout (30 s), so a POST in
        // flight in another replica is never doubled.
        ("TGB_ROUTING__GRAPH__INTENT_LEASE_SECS", "40"),
        ("TGB_ROUTING__GRAPH__INTENT_SETTLE_SECS", "3"),
        // Redelivery after a SIGKILL waits out the ack wait of the messages the dead process held.
        ("TGB_BUS__ACK_WAIT_SECS", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The running system.
pub struct FaultSystem {
    /// The broker.
    pub nats: Broker,
    /// The emulators.
    pub sandbox: Sandbox,
    /// Every service process (replicas included).
    pub services: Vec<ServiceProcess>,
    /// The TG webhook secret (to sign webhooks the scenario sends itself).
    pub webhook_secret: String,
    /// The suite's own NATS connection (reconnects after a broker restart).
    pub client: async_nats::Client,
    /// JetStream on [`FaultSystem::client`].
    pub js: async_nats::jetstream::Context,
    /// HTTP client of the harness.
    pub http: reqwest::Client,
    /// Logs of the services.
    pub log_dir: tempfile::TempDir,
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FaultSystem {
    /// Starts NATS, the sandbox and the services, wires them, and waits until every service
    /// answers `/readyz`.
    pub async fn start(opts: Options) -> anyhow::Result<FaultSystem> {
        tgb_testkit::init_test_tracing();
        let binaries = Binaries::get()?;
        let nats = match opts.cluster_nodes {
            Some(nodes) => Broker::Cluster(
                NatsCluster::start(nodes)
                    .await
                    .context("the nats-server cluster")?,
            ),
            None => Broker::Single(NatsServer::start().await.context("nats-server")?),
        };
        let mut sb_config = opts.sandbox.clone();
        sb_config
            .tg
            .webhooks
            .retain(|w| w.name != INGRESS_SUBSCRIPTION);
        let sandbox = Sandbox::start(sb_config).await.context("the sandbox")?;
        let webhook_secret = {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            )
        };
        let dataverse_key = random_hex(24);
        let mut env = TgbEnv::new(nats.url())
            .sandbox(&sandbox)
            .webhook_secret(webhook_secret.clone())
            .dataverse_webhook_key(dataverse_key.clone())
            .config_file(repo_root().join("config/tg-bridge.toml").display())
            .set("TGB_LOG_FORMAT", "pretty")
            .vars();
        env.extend(suite_env());
        if let Some(nodes) = opts.cluster_nodes {
            // What a cluster deployment sets: every stream, bucket and the object store
            // replicated on every node (3 of 3 here).
            env.push(("TGB_BUS__REPLICAS".into(), nodes.to_string()));
        }
        env.extend(opts.extra_env.iter().cloned());

        let log_dir = tempfile::Builder::new().prefix("tgb-faults-").tempdir()?;
        let mut services = Vec::new();
        for name in SERVICES {
            let replicas = opts
                .replicas
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(1, |(_, r)| (*r).max(1));
            for r in 0..replicas {
                services.push(ServiceProcess::new(
                    name,
                    r,
                    binaries.path(name),
                    env.clone(),
                    log_dir.path(),
                )?);
            }
        }
        let servers = tgb_bus::auth::server_addrs(&nats.url()).map_err(anyhow::Error::msg)?;
        let client = async_nats::ConnectOptions::new()
            .name("tgb-fault-suite")
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .context("the suite's NATS connection")?;
        let js = async_nats::jetstream::new(client.clone());
        let mut system = FaultSystem {
            nats,
            sandbox,
            services,
            webhook_secret,
            client,
            js,
            http: reqwest::Client::new(),
            log_dir,
        };
        // One process first, so that the streams and buckets are provisioned once (the
        // others find them), then the rest together.
        system.services[0].start()?;
        let http = system.http.clone();
        system.services[0]
            .wait_ready(&http, Duration::from_secs(60))
            .await?;
        for s in system.services.iter_mut().skip(1) {
            s.start()?;
        }
        for s in system.services.iter_mut().skip(1) {
            s.wait_ready(&http, Duration::from_secs(60)).await?;
        }
        // From here the addresses are wired (webhooks, checks): they stay.
        for s in system.services.iter_mut() {
            s.may_move = false;
        }

        let ingress = system.process("tg-ingress").addr;
        let dynamics = system.process("dynamics-adapter").addr;
        system
            .sandbox
            .tg()
            .webhooks()
            .add(WebhookSubscriptionConfig {
                name: INGRESS_SUBSCRIPTION.into(),
                url: format!("http://{ingress}/webhooks/tg"),
                secrets: vec![system.webhook_secret.clone()],
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
        Ok(system)
    }

    /// The first replica of a service.
    pub fn process(&self, name: &str) -> &ServiceProcess {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    fn process_mut(&mut self, name: &str, replica: usize) -> &mut ServiceProcess {
        self.services
            .iter_mut()
            .find(|s| s.name == name && s.replica == replica)
            .unwrap_or_else(|| panic!("no service {name}#{replica}"))
    }

    /// SIGKILLs one replica of a service.
    pub async fn kill(&mut self, name: &str, replica: usize) {
        self.process_mut(name, replica).kill().await;
    }

    /// Starts a killed replica again (same port, same environment) and waits until it is
    /// ready.
    pub async fn restart(&mut self, name: &str, replica: usize) -> anyhow::Result<()> {
        let http = self.http.clone();
        let p = self.process_mut(name, replica);
        p.start()?;
        p.wait_ready(&http, Duration::from_secs(60)).await
    }

    /// Restarts any process that exited by itself (recorded as a crash).
    pub fn supervise(&mut self) -> anyhow::Result<()> {
        for s in &mut self.services {
            s.supervise()?;
        }
        Ok(())
    }

    /// Every exit nobody asked for: (process, status and last log line).
    pub fn crashes(&self) -> Vec<(String, String)> {
        self.services
            .iter()
            .flat_map(|s| s.crashes.iter().map(|c| (s.label(), c.clone())))
            .collect()
    }

    /// Stops every service (SIGKILL: nothing is left to drain at the end of a scenario), the
    /// sandbox and NATS.
    pub async fn stop(mut self) {
        for s in &mut self.services {
            s.stop().await;
        }
        self.sandbox.shutdown().await;
        self.nats.stop().await;
    }
}
