//! tg-ingress in-process against a real nats-server and the sandbox.

mod bad_input;
mod lifecycle;
mod poller;
mod replicas;
mod slow_clients;
mod start;
mod support;
mod webhooks;
