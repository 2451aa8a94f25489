//! tg-bridge on NATS JetStream.
//!
//! - [`Bus::connect_with`] connects with a creds file, a private CA and a client certificate
//!   ([`NatsAuth`]); errors never show credentials of the URL ([`redact_url`]).
//! - [`Bus::connect`] connects, refuses a server older than 2.10 and provisions the streams, KV
//!   buckets and object store ([`provision`]), idempotently.
//! - [`Publisher`] publishes protobuf events with `Nats-Msg-Id` = event id and W3C trace context,
//!   and returns only after the PubAck.
//! - [`run_consumer`] runs a typed handler over a durable pull consumer: bounded concurrency,
//!   per-entity serialisation, ack after success, nak with growing delay, DLQ for the rest.

pub mod auth;
mod bus;
mod consumer;
pub mod ids;
pub mod ledger;
pub mod links;
pub mod names;
mod outcome;
mod provision;
mod publish;
pub mod sync;
pub mod trace;

pub use async_nats;
pub use auth::{NatsAuth, redact_url};
pub use bus::{Bus, BusConfig, BusError};
pub use consumer::{ConsumerError, ConsumerSpec, Delivery, Handler, run_consumer};
pub use outcome::{Classify, ErrorClass, HandlerError, Outcome};
pub use provision::{
    Change, ProvisionError, dlq_stream, events_stream, ledger_stream, plan_update, provision,
};
pub use publish::{PublishError, Publisher};

#[doc(hidden)]
pub use tgb_proto as __proto;

/// One table per consumer: each event it handles and the flow it belongs to. It generates the
/// subject list the consumer subscribes to and the flow of each event (for the flow metric of a
/// failure), so the two cannot disagree.
///
/// ```ignore
/// tgb_bus::routes! {
///     /// What tg-egress consumes.
///     pub Routes {
///         DynCaseNoteAdded => "D1",
///         PlannerTaskProgressed => "P2",
///     }
/// }
/// // Routes::SUBJECTS, Routes::flow_of(&event)
/// ```
#[macro_export]
macro_rules! routes {
    ($(#[$meta:meta])* $vis:vis $name:ident { $($event:ident => $flow:literal),+ $(,)? }) => {
        $(#[$meta])*
        $vis struct $name;

        impl $name {
            /// Every subject in the table, in its order.
            pub const SUBJECTS: &'static [&'static str] = &[
                $(<$crate::__proto::$event as $crate::__proto::BusEvent>::SUBJECT),+
            ];

            /// The flow of an event in the table; `None` for any other event.
            pub fn flow_of(event: &$crate::__proto::Event) -> Option<&'static str> {
                match event {
                    $($crate::__proto::Event::$event(_) => Some($flow),)+
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}
