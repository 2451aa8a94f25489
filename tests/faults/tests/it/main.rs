//! The fault suite: each test starts the whole system (services as processes), runs a burst of
//! TG cases (`TGB_FAULT_CASES`, default [`support::DEFAULT_CASES`]), puts one fault in the
//! middle of it, and ends with the same invariant check. `--no-capture` prints each report.

mod cluster;
mod kill;
mod nats;
mod replicas;
mod sandbox_faults;
mod support;
mod webhooks;
