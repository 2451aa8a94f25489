//! tgb-bus against a real nats-server (one per test).

mod consumer;
mod kv;
mod ledger;
mod provision;
mod publish;
mod support;
mod tls;
mod tracing_context;
