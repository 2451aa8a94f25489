//! tgb end to end: `tgb up` in-process, the operator commands, the demo.

mod backfill;
mod bench;
mod check_tg;
mod demo;
mod dlq_replay;
mod doctor;
mod observability;
mod operator;
mod permissions;
mod rebuild;
mod setup;
mod support;
mod tracing;
