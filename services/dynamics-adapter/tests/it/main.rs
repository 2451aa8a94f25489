//! dynamics-adapter in-process against a real nats-server.

mod lifecycle;
