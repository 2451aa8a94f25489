//! tgb-runtime: what every tg-bridge service stands on.
//!
//! - [`config`]: defaults → TOML file (`TGB_CONFIG`) → `TGB_*` environment, validated, with
//!   secrets that cannot be logged;
//! - [`telemetry`]: tracing (pretty or JSON), OpenTelemetry spans over OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace-context propagation;
//! - [`locks`]: per-key async locks whose unused entries are pruned;
//! - [`metrics`]: the process-wide Prometheus recorder;
//! - [`http`]: the listener with `/healthz`, `/readyz`, `/metrics` and the service's routes,
//!   bounded by a header-read timeout, a request timeout and a concurrency limit;
//! - [`shutdown`]: SIGTERM/ctrl-c → a cancellation token;
//! - [`ports`]: a loopback port for a child process to bind, away from the ephemeral range.

pub mod config;
pub mod http;
pub mod locks;
pub mod metrics;
pub mod ports;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use config::{
    AssertionAlgorithm, BusSettings, Config, ConfigError, HttpSettings, LogFormat, Settings,
};
pub use tokio_util::sync::CancellationToken;
