//! document-review in-process against a real nats-server and the sandbox, with tg-egress
//! in-process where TG must see the outcome.

mod documents;
mod end_to_end;
mod lifecycle;
mod memory;
mod onboarding;
mod support;
