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
pub mod cursor;
pub mod fleet;
pub mod ids;
pub mod kv;
pub mod lease;
pub mod ledger;
pub mod links;
pub mod names;
mod outcome;
mod provision;
mod publish;
pub mod stored;
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

/// One table per consumer: each event it handles, the flow it belongs to and, in the full form,
/// the handler method that handles it. It generates the subject list the consumer subscribes to
/// (`SUBJECTS`), the flow of each event (`flow_of`, for the flow metric of a failure) and the
/// dispatch (`dispatch`), so the three cannot disagree: a subscribed event without a handler
/// method does not compile, and an event outside the table is a permanent error, never a silent
/// ack.
///
/// ```ignore
/// tgb_bus::routes! {
///     /// What tg-egress consumes.
///     pub Routes for Egress -> Outcome {
///         DynCaseNoteAdded => "D1", note_added,
///         PlannerTaskProgressed => "P2", task_progressed,
///     }
/// }
/// // Routes::SUBJECTS, Routes::flow_of(&event),
/// // Routes::dispatch(&egress, &event).await calls egress.note_added(&e).await, where
/// // `async fn note_added(&self, e: &DynCaseNoteAdded) -> Result<Outcome, HandlerError>`.
/// ```
///
/// The short form (`pub Routes { DynCaseNoteAdded => "D1", ... }`) generates only `SUBJECTS` and
/// `flow_of`, for a consumer that dispatches by hand.
///
/// A subscribed event whose handler method is missing does not compile:
///
/// ```compile_fail
/// use tgb_bus::HandlerError;
/// struct Egress;
/// impl Egress {
///     async fn note_added(&self, _: &tgb_proto::DynCaseNoteAdded) -> Result<(), HandlerError> {
///         Ok(())
///     }
///     // no `task_progressed`
/// }
/// tgb_bus::routes! {
///     Routes for Egress -> () {
///         DynCaseNoteAdded => "D1", note_added,
///         PlannerTaskProgressed => "P2", task_progressed,
///     }
/// }
/// ```
///
/// and the same table with the method compiles:
///
/// ```
/// use tgb_bus::HandlerError;
/// struct Egress;
/// impl Egress {
///     async fn note_added(&self, _: &tgb_proto::DynCaseNoteAdded) -> Result<(), HandlerError> {
///         Ok(())
///     }
///     async fn task_progressed(
///         &self,
///         _: &tgb_proto::PlannerTaskProgressed,
///     ) -> Result<(), HandlerError> {
///         Ok(())
///     }
/// }
/// tgb_bus::routes! {
///     Routes for Egress -> () {
///         DynCaseNoteAdded => "D1", note_added,
///         PlannerTaskProgressed => "P2", task_progressed,
///     }
/// }
/// assert_eq!(Routes::SUBJECTS.len(), 2);
/// ```
#[macro_export]
macro_rules! routes {
    (
        $(#[$meta:meta])* $vis:vis $name:ident for $handler:ident -> $out:ty {
            $($event:ident => $flow:literal, $method:ident),+ $(,)?
        }
    ) => {
        $crate::routes! {
            $(#[$meta])* $vis $name { $($event => $flow),+ }
        }

        impl $name {
            /// Calls the handler method of the event's route; an event without a route is a
            /// permanent error.
            pub async fn dispatch(
                handler: &$handler,
                event: &$crate::__proto::Event,
            ) -> ::std::result::Result<$out, $crate::HandlerError> {
                match event {
                    $($crate::__proto::Event::$event(e) => handler.$method(e).await,)+
                    #[allow(unreachable_patterns)]
                    other => ::std::result::Result::Err($crate::HandlerError::permanent(
                        ::std::format!(
                            "{} ({}) has no route in {}",
                            other.name(),
                            other.subject(),
                            ::std::stringify!($name),
                        ),
                    )),
                }
            }
        }
    };
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
