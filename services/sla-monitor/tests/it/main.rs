//! sla-monitor in-process against a real nats-server (and the sandbox with tg-egress where the
//! partner is told).

mod breaches;
mod escalation;
mod lifecycle;
mod support;
