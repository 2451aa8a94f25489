//! Integration tests of tgb-runtime: configuration layering and validation, the HTTP listener
//! over real loopback HTTP and its bounds against slow and numerous clients, telemetry and signal handling.

mod config;
mod http;
mod limits;
mod shutdown;
mod support;
mod telemetry;
