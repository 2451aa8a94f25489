//! One shutdown path: SIGTERM or ctrl-c cancels a [`CancellationToken`] that the HTTP listener
//! and the consumer loops watch.

use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or ctrl-c (SIGINT). Call inside a tokio runtime; the signal
/// handlers are registered before this returns, so a signal that arrives right after is not
/// lost (nor does it kill the process with the default action).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let signals = Signals::register();
    tokio::spawn(async move {
        let name = signals.recv().await;
        tracing::info!(signal = name, "shutdown requested; draining in-flight work");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn register() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let register = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, signal = name, "signal handler could not be installed");
                None
            }
        };
        Self {
            term: register(SignalKind::terminate(), "SIGTERM"),
            int: register(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn recv(mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = next(&mut self.term) => "SIGTERM",
            () = next(&mut self.int) => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn register() -> Self {
        Self
    }

    async fn recv(self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(_) => std::future::pending().await,
        }
    }
}
