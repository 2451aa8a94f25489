//! Integration tests of the sandbox, over real HTTP on loopback.

mod calls;
mod common;
mod config;
mod contract;
mod entra_assertion;
mod faults;
mod identity;
mod page;
mod tg_api;
mod tg_script;
mod throughput;
mod webhooks;
