//! tg-ingress in-process against a real nats-server and the sandbox.

mod lifecycle;
mod poller;
mod support;
mod webhooks;
