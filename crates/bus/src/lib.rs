//! tg-bridge on NATS JetStream.
//!
//! - [`Bus::connect`] connects, refuses a server older than 2.10 and provisions the streams, KV
//!   buckets and object store ([`provision`]), idempotently.
//! - [`Publisher`] publishes protobuf events with `Nats-Msg-Id` = event id and W3C trace context,
//!   and returns only after the PubAck.
//! - [`run_consumer`] runs a typed handler over a durable pull consumer: bounded concurrency,
//!   per-entity serialisation, ack after success, nak with growing delay, DLQ for the rest.

mod bus;
mod consumer;
pub mod ledger;
pub mod links;
pub mod names;
mod provision;
mod publish;
pub mod sync;
pub mod trace;

pub use async_nats;
pub use bus::{Bus, BusConfig, BusError};
pub use consumer::{ConsumerError, ConsumerSpec, Delivery, Handler, HandlerError, run_consumer};
pub use provision::{ProvisionError, dlq_stream, events_stream, ledger_stream, provision};
pub use publish::{PublishError, Publisher};
