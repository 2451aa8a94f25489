//! tg-ingress in-process against a real nats-server.

mod lifecycle;
