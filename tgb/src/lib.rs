//! `tgb`: tg-bridge in one command.
//!
//! - [`system`]: `tgb up`, NATS + the sandbox + the six services in one process, wired;
//! - [`ops`]: the operator's commands over NATS (DLQ, history, links, replay, status);
//! - [`check_tg`]: `tgb check tg`, the TG contract's behaviours against a live shim;
//! - [`demo`]: the scripted business day through the sandbox, flows D1–D8 and P1–P7;
//! - [`nats`]: finding and running nats-server, connecting with the version check;
//! - [`setup`]: `tgb setup dataverse`, the solution applied through the metadata endpoints;
//! - [`doctor`]: `tgb doctor`, every external dependency checked live;
//! - [`bench`]: `tgb bench`, throughput against raw JetStream, quota efficiency, resources.

pub mod backfill;
pub mod bench;
pub mod check_tg;
pub mod demo;
pub mod doctor;
pub mod nats;
pub mod ops;
pub mod permissions;
pub mod rebuild;
pub mod rebuild_sla;
pub mod render;
pub mod setup;
pub mod system;
