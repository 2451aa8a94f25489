use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The oldest nats-server tg-bridge supports (async-nats' KV needs 2.10's account info).
pub const MIN_NATS_VERSION: (u32, u32, u32) = (2, 10, 0);

/// The version `scripts/install-deps` pins; kept in step with that script.
const PINNED_VERSION: &str = "2.15.1";

/// Why a nats-server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "no nats-server found: run scripts/install-deps (it installs the pinned {PINNED_VERSION} under .tools/), \
         or put nats-server >= 2.10 on PATH, or set TGB_NATS_SERVER to its path"
    )]
    NotFound,
    #[error(
        "{path}: nats-server {found} is too old; tg-bridge needs >= 2.10 (run scripts/install-deps)"
    )]
    TooOld { path: PathBuf, found: String },
    #[error("{path}: could not read the version: {reason}")]
    Version { path: PathBuf, reason: String },
    #[error("nats-server failed to start: {0}")]
    Start(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Finds the nats-server binary: `TGB_NATS_SERVER`, then the pinned one under the repo's
/// `.tools/`, then PATH. Refuses one older than 2.10.
pub fn find_nats_server() -> Result<PathBuf, NatsServerError> {
    let path = candidates()
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(NatsServerError::NotFound)?;
    let found = nats_server_version(&path)?;
    if found < MIN_NATS_VERSION {
        return Err(NatsServerError::TooOld {
            path,
            found: format!("{}.{}.{}", found.0, found.1, found.2),
        });
    }
    Ok(path)
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("TGB_NATS_SERVER") {
        // An explicit choice is the only candidate: never fall back silently.
        return vec![PathBuf::from(p)];
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    out.push(repo.join(format!(
        ".tools/nats-server-{PINNED_VERSION}/bin/nats-server"
    )));
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    out
}

/// Runs `nats-server --version` and parses `nats-server: v2.15.1`.
pub fn nats_server_version(path: &Path) -> Result<(u32, u32, u32), NatsServerError> {
    let err = |reason: String| NatsServerError::Version {
        path: path.to_owned(),
        reason,
    };
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| err(e.to_string()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .ok_or_else(|| err(format!("unexpected output {text:?}")))?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Ok((a, b, c)),
        _ => Err(err(format!("unexpected version {v:?}"))),
    }
}

/// A `nats-server -js` of its own for one test: loopback, a free port, a temporary store.
/// Killed on drop. [`NatsServer::stop`] and [`NatsServer::start_again`] keep port and store.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    store: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// A configuration file given with `-c` (TLS, accounts and users).
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server on a port the OS chooses and waits until it is ready.
    pub async fn start() -> Result<NatsServer, NatsServerError> {
        let binary = find_nats_server()?;
        let store = tempfile::Builder::new().prefix("tgb-nats-").tempdir()?;
        let mut server = NatsServer {
            binary,
            store,
            port: 0,
            child: None,
            config: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// [`NatsServer::start`] with `config` (nats-server configuration syntax: `tls { … }`,
    /// `accounts { … }`) written to a file in the store and given with `-c`. The listen address,
    /// port, JetStream and store of the command line apply.
    pub async fn start_with_config(config: &str) -> Result<NatsServer, NatsServerError> {
        let binary = find_nats_server()?;
        let store = tempfile::Builder::new().prefix("tgb-nats-").tempdir()?;
        let file = store.path().join("server.conf");
        std::fs::write(&file, config)?;
        let mut server = NatsServer {
            binary,
            store,
            port: 0,
            child: None,
            config: Some(file),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server abruptly (SIGKILL) and waits for it to exit. Port and store stay.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port with the same store, and waits until it is ready.
    pub async fn start_again(&mut self) -> Result<(), NatsServerError> {
        self.stop().await;
        // The listening socket of the killed process can linger for a moment; retry the bind.
        // Polled until the hang guard runs out, not a fixed number of tries: on a loaded machine
        // the old process can take seconds to let the port go.
        let deadline = tokio::time::Instant::now() + crate::HANG_GUARD;
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn spawn(&mut self) -> Result<(), NatsServerError> {
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut log = Vec::new();
        let ready = tokio::time::timeout(crate::HANG_GUARD, async {
            let mut port = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok());
                }
                let is_ready = line.contains("Server is ready");
                log.push(line);
                if is_ready {
                    return port;
                }
            }
            None
        })
        .await;
        match ready {
            Ok(Some(port)) => {
                self.port = port;
                // Keep draining the log so the server never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                Ok(())
            }
            _ => {
                let _ = child.kill().await;
                Err(NatsServerError::Start(log.join("\n")))
            }
        }
    }
}

/// Makes a stream take only `subjects` (`Some`) or every subject of `all` again (`None`): a test
/// leaves a subject out to have the broker refuse its publishes ("no stream found"), as it does
/// for a few seconds while the cluster node leading the stream is down, then takes it back.
pub async fn set_stream_subjects(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subjects: Vec<String>,
) {
    let mut s = js.get_stream(stream).await.expect("the stream");
    let mut config = s.info().await.expect("its info").config.clone();
    config.subjects = subjects;
    js.update_stream(&config).await.expect("the stream updated");
}
