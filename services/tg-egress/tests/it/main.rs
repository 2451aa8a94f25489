//! tg-egress in-process against a real nats-server and the sandbox.

mod flows;
mod lifecycle;
mod resilience;
mod support;
