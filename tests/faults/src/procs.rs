//! The six services as separate processes: finding (or building) their binaries, starting one
//! with its `TGB_*` environment, killing it with SIGKILL and starting it again on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// The six services, by binary name.
pub const SERVICES: [&str; 6] = tgb_service::registry::NAMES;

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the service binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();

impl Binaries {
    /// The directory of the service binaries, once per test binary.
    ///
    /// `TGB_FAULT_BIN_DIR` names it explicitly. Otherwise it is the profile directory of the
    /// running test executable (`target/<profile>/deps/it-…` → `target/<profile>/`), where
    /// `cargo nextest run --workspace` (or `cargo build --bins`) has built them.
    /// `TGB_FAULT_BUILD=1` first brings them up to date with `cargo build --bins -p …` (for
    /// `-p tgb-fault-suite` runs, which build no other package's binaries). Not the default:
    /// a cargo inside a test competes with the outer one for the build lock.
    pub fn get() -> anyhow::Result<Binaries> {
        BINARIES
            .get_or_init(|| Self::locate().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn locate() -> anyhow::Result<Binaries> {
        if let Some(dir) = std::env::var_os("TGB_FAULT_BIN_DIR") {
            let b = Binaries {
                dir: PathBuf::from(dir),
            };
            b.check("TGB_FAULT_BIN_DIR")?;
            return Ok(b);
        }
        let exe = std::env::current_exe().context("the test executable's path")?;
        let profile_dir = exe
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
            .and_then(Path::parent)
            .with_context(|| {
                format!(
                    "{} is not in target/<profile>/deps: set TGB_FAULT_BIN_DIR to the directory of the service binaries",
                    exe.display()
                )
            })?
            .to_path_buf();
        let b = Binaries {
            dir: profile_dir.clone(),
        };
        if std::env::var_os("TGB_FAULT_BUILD").is_some() {
            build(&profile_dir)?;
        }
        b.check("the test's target directory")?;
        Ok(b)
    }

    fn check(&self, from: &str) -> anyhow::Result<()> {
        let missing: Vec<&str> = SERVICES
            .iter()
            .copied()
            .filter(|s| !self.path(s).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "service binaries missing in {} ({from}): {}. Build them first (cargo build --bins {}), or set TGB_FAULT_BUILD=1",
                self.dir.display(),
                missing.join(", "),
                SERVICES.map(|s| format!("-p {s}")).join(" ")
            );
        }
        Ok(())
    }

    /// The path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }
}

/// `cargo build --bins -p <six>` into the target directory of the running test, same profile.
fn build(profile_dir: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir
        .parent()
        .context("the profile directory has no parent")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let mut cmd = std::process::Command::new(&cargo);
    // The test runs with the variables cargo sets for this package; the inner build must not
    // see them (they would change fingerprints and build scripts' inputs).
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
            || k == "OUT_DIR"
            || k.starts_with("NEXTEST")
        {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(repo_root())
        .arg("build")
        .arg("--bins")
        .arg("--manifest-path")
        .arg(repo_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    for s in SERVICES {
        cmd.args(["-p", s]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "building the service binaries failed ({cmd:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A command that runs `binary` with stdin closed and stdout and stderr appended to `log`,
/// killed when dropped. Under `setpriv --pdeathsig` (when present) the child also dies with the
/// test process when the test itself is killed (a timeout): no orphan keeps a port or a CPU.
pub(crate) fn child_command(binary: &Path, log: &Path) -> anyhow::Result<Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}", log.display()))?;
    let mut cmd = match setpriv() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(cmd)
}

/// `setpriv` (util-linux), when present.
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// A free loopback port (bound, read, released): the service binds it itself, and binds it
/// again after a restart.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    tgb_runtime::ports::free_loopback_addr().context("a free port")
}

/// One service process.
#[derive(Debug)]
pub struct ServiceProcess {
    /// Binary name.
    pub name: &'static str,
    /// 0 for the first replica.
    pub replica: usize,
    /// Its HTTP address (kept across restarts).
    pub addr: SocketAddr,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// SIGKILLs sent by the scenario.
    pub kills: u32,
    /// Exits nobody asked for (the harness started the process again, as an orchestrator
    /// would), with their status.
    pub crashes: Vec<String>,
    /// Until the system is wired (webhooks registered), a port taken by someone else between
    /// [`free_addr`] and the service's bind may be swapped for another.
    pub may_move: bool,
}

impl ServiceProcess {
    /// A process, not yet started.
    pub fn new(
        name: &'static str,
        replica: usize,
        binary: PathBuf,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Ok(ServiceProcess {
            name,
            replica,
            addr: free_addr()?,
            binary,
            env,
            log: log_dir.join(format!("{name}-{replica}.log")),
            child: None,
            kills: 0,
            crashes: Vec::new(),
            may_move: true,
        })
    }

    /// `name#replica`.
    pub fn label(&self) -> String {
        format!("{}#{}", self.name, self.replica)
    }

    /// Starts it (its output is appended to its log file).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = child_command(&self.binary, &self.log)?;
        // Only what the harness gives: no TGB_* of the test's own environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TGB_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TGB_HTTP_ADDR", self.addr.to_string())
            .env(
                "RUST_LOG",
                std::env::var("TGB_FAULT_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .current_dir(repo_root());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then waits for the exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            self.kills += 1;
        }
    }

    /// SIGTERM-free stop at the end of a test (same as a kill).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Whether it is running (an exit nobody asked for is recorded in `crashes`, and the
    /// process is started again).
    pub fn supervise(&mut self) -> anyhow::Result<()> {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait()?,
            None => return Ok(()),
        };
        if let Some(status) = exited {
            let tail = self.log_tail(20);
            tracing::warn!(service = %self.label(), %status, "exited by itself; restarting\n{tail}");
            self.crashes.push(format!("{status}: {}", last_line(&tail)));
            self.child = None;
            self.start()?;
        }
        Ok(())
    }

    /// `/readyz` answers 200 within `within`.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        within: Duration,
    ) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.addr);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                // The free port was taken before the service bound it (another process's
                // listener or outgoing connection): another port, once wiring allows it.
                let tail = self.log_tail(30);
                if self.may_move && tail.contains("cannot listen on") {
                    self.may_move = false;
                    tracing::warn!(service = %self.label(), "its port was taken meanwhile; another one");
                    self.addr = free_addr()?;
                    self.child = None;
                    self.start()?;
                    continue;
                }
                bail!(
                    "{} exited during start-up ({status}):\n{}",
                    self.label(),
                    self.log_tail(30)
                );
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not ready within {within:?} ({url}):\n{}",
                    self.label(),
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `n` lines of its log, without backtrace frames (an error's own lines stay).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let frame = |l: &str| {
            let t = l.trim_start();
            t.starts_with("at ")
                || t.split_once(": ")
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .last()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}
