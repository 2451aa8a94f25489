//! Integration tests of tgb-runtime: configuration layering and validation, the HTTP listener
//! over real loopback HTTP, telemetry and signal handling.

mod config;
mod http;
mod shutdown;
mod support;
mod telemetry;
