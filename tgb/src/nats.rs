//! NATS for `tgb up` (its own `nats-server -js`, or the one at `TGB_NATS_URL`) and for the
//! operator commands (a plain connection with the version check).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The version `scripts/install-deps` pins under `.tools/` (kept in step with that script).
pub const PINNED_VERSION: &str = "2.15.1";
/// The oldest nats-server tg-bridge supports.
pub const MIN_VERSION: (u32, u32) = (2, 10);

/// Where the pinned server may be: `.tools/` of the repository that holds the current
/// directory, of the one that holds this executable, and of the one it was built from.
fn pinned_candidates() -> Vec<PathBuf> {
    let rel = format!(".tools/nats-server-{PINNED_VERSION}/bin/nats-server");
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    roots.into_iter().map(|r| r.join(&rel)).collect()
}

/// Finds nats-server: `TGB_NATS_SERVER`, then the pinned one under `.tools/`, then PATH.
/// Refuses one older than 2.10.
pub fn find_server() -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("TGB_NATS_SERVER") {
        Some(p) => vec![PathBuf::from(p)],
        None => {
            let mut c = pinned_candidates();
            if let Some(path) = std::env::var_os("PATH") {
                c.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
            }
            c
        }
    };
    let Some(path) = candidates.into_iter().find(|p| p.is_file()) else {
        bail!(
            "no nats-server found. Run scripts/install-deps (it installs the pinned {PINNED_VERSION} \
             under .tools/), or put nats-server >= 2.10 on PATH, or point TGB_NATS_URL at a running \
             server with JetStream"
        );
    };
    let version = server_version(&path)?;
    if (version.0, version.1) < MIN_VERSION {
        bail!(
            "{}: nats-server {}.{}.{} is too old; tg-bridge needs >= 2.10 (run scripts/install-deps)",
            path.display(),
            version.0,
            version.1,
            version.2
        );
    }
    Ok(path)
}

/// `nats-server --version` → (major, minor, patch).
pub fn server_version(path: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", path.display()))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .with_context(|| format!("{}: unexpected --version output {text:?}", path.display()))?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    ))
}

/// `"2.10.26"` ≥ (2, 10)?
pub fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= min
}

/// A `nats-server -js` of `tgb up`: loopback, a free port, its store and log under the data
/// directory. Stopped (SIGTERM, then SIGKILL) by [`OwnNats::stop`], killed on drop.
#[derive(Debug)]
pub struct OwnNats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    log: PathBuf,
}

impl OwnNats {
    /// Starts the server with its store in `dir/store` and its log in `dir/nats-server.log`.
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<OwnNats> {
        Self::start_with(Command::new(binary), binary, dir).await
    }

    /// [`OwnNats::start`] through `command`, which runs `binary` (e.g. under a wrapper that
    /// kills it with its parent); the server's arguments are appended to it.
    pub async fn start_with(
        mut command: Command,
        binary: &Path,
        dir: &Path,
    ) -> anyhow::Result<OwnNats> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store)
            .with_context(|| format!("cannot create the NATS store {}", store.display()))?;
        let log = dir.join("nats-server.log");
        let mut log_file = tokio::fs::File::create(&log)
            .await
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = command
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            let mut port = None;
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    return port;
                }
            }
            None
        })
        .await;
        let Ok(Some(port)) = ready else {
            let _ = child.kill().await;
            bail!(
                "nats-server did not start; its log is {} (is the store {} used by another server?)",
                log.display(),
                store.display()
            );
        };
        // Keep draining the log so the server never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        Ok(OwnNats {
            child: Some(child),
            port,
            store,
            log,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The JetStream store.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Asks the server to stop (SIGTERM, so it flushes its store), then kills it after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Connects to NATS for an operator command and checks the server version.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    connect_with(url, &tgb_bus::NatsAuth::default()).await
}

/// [`connect`] with a credentials file and TLS files (`--creds`, `--tls-ca`, `--tls-cert`,
/// `--tls-key`). Errors never show a user or password given in `url`.
pub async fn connect_with(
    url: &str,
    auth: &tgb_bus::NatsAuth,
) -> anyhow::Result<async_nats::Client> {
    let shown = tgb_bus::redact_url(url);
    let options = auth
        .connect_options("tgb", url)
        .await
        .with_context(|| format!("cannot connect to NATS at {shown}"))?;
    let bare = tgb_bus::auth::without_userinfo(url);
    let client = options.connect(bare.as_str()).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to NATS at {shown}: {}; is tg-bridge running? Start it with \
             `tgb up`, or pass --nats-url (or set TGB_NATS_URL) to the broker it uses, with \
             --creds / --tls-ca / --tls-cert / --tls-key if it is secured",
            tgb_bus::auth::explain_connect_error(&e, url, auth)
        )
    })?;
    let version = client.server_info().version;
    if !version_at_least(&version, MIN_VERSION) {
        bail!(
            "the NATS server at {shown} is {version}; tg-bridge needs nats-server >= 2.10 with JetStream"
        );
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::version_at_least;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("2.10.0", (2, 10)));
        assert!(version_at_least("v2.15.1", (2, 14)));
        assert!(!version_at_least("2.9.22", (2, 10)));
        assert!(!version_at_least("2.13.0", (2, 14)));
    }
}
