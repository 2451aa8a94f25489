//! A JetStream cluster of local nats-server processes (the pinned binary, as the single server
//! of the other scenarios): each node with its own store, client, cluster and monitoring ports,
//! routes to every node, one cluster name. A node can be SIGKILLed and started again on the
//! same ports and store, when it rejoins and catches up.
//!
//! Every wait here is on the cluster's own report of its state: a node's monitoring
//! `/healthz` (200 once JetStream has a meta leader and every stream and consumer this node
//! holds is current), and `$JS.API.STREAM.INFO` (the leader of a stream and whether each of
//! its peers is current).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use serde_json::Value;
use tokio::process::Child;

use crate::procs::child_command;

/// The name of a cluster (`cluster { name }`) before its own suffix: each cluster is named
/// after its first route port, so the nodes of two clusters started side by side (two
/// scenarios at once) refuse each other's routes instead of joining one cluster, should a port
/// one released be taken by the other.
pub const CLUSTER_NAME: &str = "tgb-faults";

/// Largest JetStream file store of one node (`jetstream { max_file_store }`): far above what a
/// burst writes, and a limit the server reserves against, as production sets one.
const MAX_FILE_STORE: &str = "2GB";

/// How long a node may take to report healthy (start-up, election, catch-up). Waits end as
/// soon as the state is reached; this only turns a hang into an error.
pub const NODE_WITHIN: Duration = Duration::from_secs(120);

/// One node of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    /// Server name (`n1`, `n2`, …): what the cluster reports as a stream's leader or peer.
    pub name: String,
    /// Client port (the services connect here).
    pub client_port: u16,
    /// Route port (`cluster { listen }`).
    pub cluster_port: u16,
    /// Monitoring port (`/healthz`, `/jsz`, `/connz`).
    pub http_port: u16,
    /// JetStream store directory (kept across a restart).
    pub store: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// SIGKILLs sent by the scenario.
    pub kills: u32,
}

impl ClusterNode {
    /// `nats://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last `n` warnings and errors of its log (`[WRN]`, `[ERR]`): what a failed scenario
    /// reports of the broker's side.
    pub fn log_warnings(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("[WRN]") || l.contains("[ERR]"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn monitor(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        let child = child_command(binary, &self.log)?
            .arg("-c")
            .arg(&self.config)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process exited by itself (start-up failure), with its status.
    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }
}

/// The nodes and their configuration.
pub struct NatsCluster {
    binary: PathBuf,
    /// Nodes, in start order.
    pub nodes: Vec<ClusterNode>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// `n` distinct free loopback ports, away from the ephemeral range ([`tgb_runtime::ports`]),
/// released for the servers to bind.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    tgb_runtime::ports::free_loopback_ports(n).context("free ports")
}

/// The configuration file of one node: its ports and store, the cluster's name and a route to
/// every node (a route to itself is ignored by the server).
fn node_config(node: &ClusterNode, cluster_name: &str, routes: &[String]) -> String {
    format!(
        r#"server_name: {name}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{http}
jetstream {{
  store_dir: "{store}"
  max_file_store: {MAX_FILE_STORE}
  max_memory_store: 64MB
}}
cluster {{
  name: {cluster_name}
  listen: 127.0.0.1:{cluster}
  routes: [{routes}]
}}
"#,
        name = node.name,
        client = node.client_port,
        http = node.http_port,
        store = node.store.display(),
        cluster = node.cluster_port,
        routes = routes.join(", "),
    )
}

impl NatsCluster {
    /// Starts `size` nodes and waits until each reports healthy (a JetStream meta leader
    /// elected and known to every node).
    pub async fn start(size: usize) -> anyhow::Result<NatsCluster> {
        let binary = tgb_testkit::find_nats_server().context("nats-server")?;
        let dir = tempfile::Builder::new()
            .prefix("tgb-nats-cluster-")
            .tempdir()?;
        let ports = free_ports(size * 3)?;
        let mut nodes: Vec<ClusterNode> = (0..size)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                ClusterNode {
                    client_port: ports[i * 3],
                    cluster_port: ports[i * 3 + 1],
                    http_port: ports[i * 3 + 2],
                    config: dir.path().join(format!("{name}.conf")),
                    log: dir.path().join(format!("{name}.log")),
                    store,
                    name,
                    child: None,
                    kills: 0,
                }
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let cluster_name = format!("{CLUSTER_NAME}-{}", nodes[0].cluster_port);
        for node in &nodes {
            std::fs::create_dir_all(&node.store)?;
            std::fs::write(&node.config, node_config(node, &cluster_name, &routes))?;
        }
        for node in &mut nodes {
            node.spawn(&binary)?;
        }
        let mut cluster = NatsCluster {
            binary,
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            _dir: dir,
        };
        cluster.wait_all_healthy(NODE_WITHIN).await?;
        Ok(cluster)
    }

    /// The client URLs of every node, comma-separated (what `TGB_NATS_URL` is given).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// SIGKILLs node `i` and waits for its exit. Ports and store stay.
    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
            node.kills += 1;
        }
    }

    /// Starts node `i` again on the same ports and store and waits until it reports healthy:
    /// back in the cluster with every stream and consumer it holds caught up.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_quietly(i).await;
        let binary = self.binary.clone();
        self.nodes[i].spawn(&binary)?;
        self.wait_healthy(i, NODE_WITHIN).await
    }

    async fn kill_quietly(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops every node.
    pub async fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_quietly(i).await;
        }
    }

    /// `/healthz` of node `i`: `Ok(())` on 200, else the server's reason.
    pub async fn health(&self, i: usize) -> Result<(), String> {
        let r = self
            .http
            .get(self.nodes[i].monitor("/healthz"))
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        if r.status().is_success() {
            return Ok(());
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        Err(format!("{status}: {body}"))
    }

    /// Waits until node `i` answers `/healthz` with 200. A node that exits meanwhile (its port
    /// not yet released by the killed process) is started again.
    pub async fn wait_healthy(&mut self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.revive(i, deadline)?;
            let last = match self.health(i).await {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not healthy within {within:?} (last: {last}):\n{}",
                    self.nodes[i].name,
                    self.nodes[i].log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts node `i` again when it exited because its port was not free yet (another
    /// process held it for a moment); any other exit is an error with the node's log.
    fn revive(&mut self, i: usize, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        if let Some(status) = self.nodes[i].exited()? {
            let tail = self.nodes[i].log_tail(20);
            if tokio::time::Instant::now() < deadline && tail.contains("address already in use") {
                let binary = self.binary.clone();
                self.nodes[i].child = None;
                self.nodes[i].spawn(&binary)?;
            } else {
                bail!("{} exited ({status}):\n{tail}", self.nodes[i].name);
            }
        }
        Ok(())
    }

    /// Waits until every node answers `/healthz` with 200. Every node is watched at once: a
    /// node that could not bind its port at the start is started again while the others wait
    /// for it (waiting on one node alone left the others dead and the cluster without a
    /// quorum). On a timeout, the error has every unhealthy node's answer and log.
    async fn wait_all_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut unhealthy = Vec::new();
            for i in 0..self.nodes.len() {
                self.revive(i, deadline)?;
                if let Err(reason) = self.health(i).await {
                    unhealthy.push((i, reason));
                }
            }
            if unhealthy.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let report: Vec<String> = unhealthy
                    .iter()
                    .map(|(i, reason)| {
                        format!(
                            "{} (last: {reason}):\n{}",
                            self.nodes[*i].name,
                            self.nodes[*i].log_tail(20)
                        )
                    })
                    .collect();
                bail!("not healthy within {within:?}: {}", report.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Client connections on node `i` named after a service (`/connz`).
    pub async fn service_connections(&self, i: usize) -> anyhow::Result<Vec<String>> {
        let connz: Value = self
            .http
            .get(self.nodes[i].monitor("/connz?limit=1024"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .filter(|n| crate::procs::SERVICES.contains(n))
            .map(str::to_owned)
            .collect())
    }
}

/// The RAFT state of a stream as `$JS.API.STREAM.INFO` reports it: its leader and its peers
/// (the other replicas) with whether each is current.
#[derive(Clone, Debug)]
pub struct StreamCluster {
    /// The leader's server name, when there is one.
    pub leader: Option<String>,
    /// The other replicas: (server name, current, offline).
    pub peers: Vec<(String, bool, bool)>,
}

impl StreamCluster {
    /// A leader and `replicas - 1` peers, every one current and online.
    pub fn all_current(&self, replicas: usize) -> bool {
        self.leader.is_some()
            && self.peers.len() + 1 == replicas
            && self
                .peers
                .iter()
                .all(|(_, current, offline)| *current && !offline)
    }
}

/// How long one `$JS.API.STREAM.INFO` may take before a wait asks again: while a stream has no
/// leader nobody answers, and the connection's request timeout (10 s) would hide how soon the
/// new leader is there.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `$JS.API.STREAM.INFO` of `stream`, its cluster part; `None` while no leader answers.
pub async fn stream_cluster(js: &jetstream::Context, stream: &str) -> Option<StreamCluster> {
    let mut js = js.clone();
    js.set_timeout(PROBE_TIMEOUT);
    let stream = js.get_stream(stream).await.ok()?;
    let cluster = stream.cached_info().cluster.clone()?;
    Some(StreamCluster {
        leader: cluster.leader.filter(|l| !l.is_empty()),
        peers: cluster
            .replicas
            .into_iter()
            .map(|p| (p.name, p.current, p.offline))
            .collect(),
    })
}

/// Waits until `stream` reports a leader other than `not` (a moved or lost leader replaced).
pub async fn wait_stream_leader(
    js: &jetstream::Context,
    stream: &str,
    not: Option<&str>,
    within: Duration,
) -> anyhow::Result<String> {
    let found = tgb_testkit::eventually(&format!("{stream} has a new leader"), within, || {
        let js = js.clone();
        async move {
            stream_cluster(&js, stream)
                .await
                .and_then(|c| c.leader)
                .filter(|l| Some(l.as_str()) != not)
        }
    })
    .await?;
    Ok(found)
}

/// Waits until `stream` reports a leader and every other replica current.
pub async fn wait_stream_current(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
    within: Duration,
) -> anyhow::Result<StreamCluster> {
    let found = tgb_testkit::eventually(
        &format!("every replica of {stream} current"),
        within,
        || {
            let js = js.clone();
            async move {
                stream_cluster(&js, stream)
                    .await
                    .filter(|c| c.all_current(replicas))
            }
        },
    )
    .await?;
    Ok(found)
}

/// Asks the leader of `stream` to step down (`$JS.API.STREAM.LEADER.STEPDOWN.<stream>`); the
/// cluster elects another. Errors carry the server's answer.
pub async fn step_down(client: &async_nats::Client, stream: &str) -> anyhow::Result<()> {
    let answer = client
        .request(
            format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
            "".into(),
        )
        .await
        .context("the step-down request")?;
    let v: Value = serde_json::from_slice(&answer.payload).context("the step-down answer")?;
    if v["success"].as_bool() != Some(true) {
        bail!("{stream} leader step-down refused: {v}");
    }
    Ok(())
}
