//! Test support for tg-bridge: a real `nats-server -js` per test on a free port with a temporary
//! store (stopped on drop, restartable on the same port and store for fault tests), the lookup of
//! the pinned server binary, waits with deadlines instead of sleeps, and a service run in-process
//! on a loopback port after the start-up checks every service shares ([`RunningService`]).

mod nats;
mod service;
pub mod tls;
mod wait;

pub use nats::{
    MIN_NATS_VERSION, NatsServer, NatsServerError, find_nats_server, nats_server_version,
    set_stream_subjects,
};
pub use service::{PROVISIONED_STREAMS, RunningService};
pub use wait::{HANG_GUARD, WaitTimeout, eventually};

/// Sets up test logging once per test binary; logs show with `TEST_LOG=1`.
pub fn init_test_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_test_writer()
                .try_init();
        }
    });
}
