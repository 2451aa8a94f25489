//! One plan poller across replicas: the lease [`LEASE_KEY`] in `tgb_sync`, held with
//! [`tgb_bus::lease::Lease`] (its rules are documented there).
//!
//! Polling twice is wasteful, never wrong: a progress event's id derives from the task's ETag, so
//! JetStream drops the second publish.

pub use tgb_bus::lease::{Lease, LeaseError, LeaseValue};

/// The lease's key in `tgb_sync`.
pub const LEASE_KEY: &str = "planner-poller.leader";
