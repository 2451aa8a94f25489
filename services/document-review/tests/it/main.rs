//! document-review in-process against a real nats-server.

mod lifecycle;
