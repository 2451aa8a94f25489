//! tg-bridge's fault suite: the whole system with each service as its own process, a burst of
//! TG cases, a fault in the middle of it, and one invariant check at the end
//! ([`invariant::check_invariants`]).
//!
//! - [`procs`]: the service binaries, started, SIGKILLed and started again;
//! - [`system`]: nats-server (restartable), the sandbox (in this process) and the services, wired;
//! - [`cluster`]: a JetStream cluster of local nats-server processes instead of the one server;
//! - [`workload`]: the burst (cases, comments, resolutions, agent notes) and the poison;
//! - [`progress`]: how far the burst has come, to put a fault "in the middle";
//! - [`invariant`]: the check.

pub mod cluster;
pub mod invariant;
pub mod procs;
pub mod progress;
pub mod system;
pub mod workload;

pub use invariant::{Report, check_invariants};
pub use system::{Broker, FaultSystem, Options};
pub use workload::{Burst, Expected, burst_size};
