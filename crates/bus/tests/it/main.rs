//! tgb-bus against a real nats-server (one per test).

mod consumer;
mod fleet;
mod kv;
mod ledger;
mod provision;
mod publish;
mod routes;
mod servers;
mod support;
mod tls;
mod tracing_context;
