//! tgb end to end: `tgb up` in-process, the operator commands, the demo.

mod bench;
mod demo;
mod dlq_replay;
mod observability;
mod operator;
mod permissions;
mod support;
mod tracing;
