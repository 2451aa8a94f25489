//! Processes of the benchmark: nats-server and the six services, each its own process, and
//! what `/proc` says about them (peak RSS, CPU time).
//!
//! The services run from their own binaries when all six sit next to the `tgb` binary (a
//! `cargo build --bins` put them there); otherwise `tgb` starts itself once per service
//! (`tgb bench-service <name>`, the same `serve` behind the same thin `main`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

/// The six services, by binary name.
pub const SERVICES: [&str; 6] = tgb_service::registry::NAMES;

/// How a service process is started.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// Its own binary, in this directory.
    Binaries(PathBuf),
    /// `tgb bench-service <name>` (this executable).
    SelfExec(PathBuf),
}

/// Which launcher `tgb bench` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceBinaries {
    /// The service binaries next to `tgb` when all six are there, else `tgb` itself.
    Auto,
    /// The service binaries next to `tgb` (an error when one is missing).
    Binaries,
    /// `tgb` itself, once per service.
    Tgb,
}

impl Launcher {
    /// Picks the launcher; `dir` overrides the directory of the service binaries.
    pub fn choose(mode: ServiceBinaries, dir: Option<&Path>) -> anyhow::Result<Launcher> {
        let exe = std::env::current_exe().context("the path of this executable")?;
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => exe
                .parent()
                .context("this executable has no directory")?
                .to_path_buf(),
        };
        let missing: Vec<&str> = SERVICES
            .iter()
            .copied()
            .filter(|s| !binary_path(&dir, s).is_file())
            .collect();
        match mode {
            ServiceBinaries::Tgb => Ok(Launcher::SelfExec(exe)),
            ServiceBinaries::Auto if !missing.is_empty() => Ok(Launcher::SelfExec(exe)),
            ServiceBinaries::Binaries if !missing.is_empty() => bail!(
                "service binaries missing in {}: {}. Build them with `cargo build --release --bins` \
                 (same profile as tgb), or run with --service-binaries tgb",
                dir.display(),
                missing.join(", ")
            ),
            _ => Ok(Launcher::Binaries(dir)),
        }
    }

    /// What the output says about it.
    pub fn describe(&self) -> String {
        match self {
            Launcher::Binaries(_) => "the service binaries (one process each)".into(),
            Launcher::SelfExec(_) => {
                "tgb itself, one process per service (tgb bench-service <name>)".into()
            }
        }
    }

    fn command(&self, service: &str) -> (PathBuf, Vec<String>) {
        match self {
            Launcher::Binaries(dir) => (binary_path(dir, service), Vec::new()),
            Launcher::SelfExec(exe) => (
                exe.clone(),
                vec!["bench-service".into(), service.to_owned()],
            ),
        }
    }
}

fn binary_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `setpriv` (util-linux), when present: the child dies with us even when we are killed.
fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

pub(super) fn command_with_deathsig(program: &Path) -> Command {
    match setpriv() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A free loopback address (the service binds it itself), away from the ephemeral range
/// ([`tgb_runtime::ports`]).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    tgb_runtime::ports::free_loopback_addr().context("a free port")
}

/// One service process.
#[derive(Debug)]
pub struct ServiceProcess {
    /// Service name.
    pub name: &'static str,
    /// Its HTTP address.
    pub addr: SocketAddr,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// A process, not started yet.
    pub fn new(
        name: &'static str,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Ok(ServiceProcess {
            name,
            addr: free_addr()?,
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        })
    }

    /// Starts it; its output goes to its log file.
    pub fn start(&mut self, launcher: &Launcher, cwd: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("{}", self.log.display()))?;
        let (program, args) = launcher.command(self.name);
        let mut cmd = command_with_deathsig(&program);
        cmd.args(&args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TGB_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TGB_HTTP_ADDR", self.addr.to_string())
            .env(
                "RUST_LOG",
                std::env::var("TGB_BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The error, not a backtrace, at the top of the log when a service cannot start.
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The pid of the service (under `setpriv`, which execs it, the same pid).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Waits until `/readyz` answers 200.
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
                bail!(
                    "{} exited during start-up ({status}):\n{}",
                    self.name,
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
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it exited by itself (its status and the end of its log).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(format!("{status}: {}", self.log_tail(10)))
    }

    /// SIGKILL (nothing is left to drain at the end of a benchmark).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// nats-server with JetStream, as its own process (its pid is sampled too), killed with
/// the bench; with its HTTP monitoring (`/varz`, `/jsz`) on a loopback port, whose address
/// is returned beside it.
pub async fn start_nats(dir: &Path) -> anyhow::Result<(crate::nats::OwnNats, SocketAddr)> {
    let binary = crate::nats::find_server()?;
    let monitor = free_addr()?;
    let mut command = command_with_deathsig(&binary);
    command.args(["-m", &monitor.port().to_string()]);
    let nats = crate::nats::OwnNats::start_with(command, &binary, dir).await?;
    Ok((nats, monitor))
}

/// One reading of `/proc/<pid>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// VmHWM, KiB (peak resident set since the process started).
    pub hwm_kib: u64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')', field 3 (state) is index 0: utime (14) is index 11, stime (15) index 12.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("unexpected /proc/<pid>/stat")
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_ticks,
        hwm_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    })
}

/// Times the threads of process `pid` were woken after blocking: the sum of every thread's
/// `voluntary_ctxt_switches` (`/proc/<pid>/task/*/status`). A thread parked in `epoll_wait` or
/// on a futex switches out voluntarily and is woken by what it waited for, so this counts the
/// wake-ups, which CPU at a low rate follows; it does not depend on how fast the machine is.
/// Threads that ended before the read are not counted.
pub fn wakeups(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let Ok(task) = task else { continue };
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}
