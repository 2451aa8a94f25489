//! dynamics-adapter in-process against a real nats-server and the sandbox.

mod activities;
mod bad_input;
mod case_sync;
mod echoes;
mod fleet;
mod flows;
mod injection;
mod keys;
mod ledger;
mod lifecycle;
mod replicas;
mod state;
mod support;
mod tracking;
mod webhook_claims;
mod webhook_key;
