//! tgb-clients against a stand-in token endpoint over loopback.

mod bounds;
mod coalesce;
mod credential;
mod literals;
mod oauth;
mod origin;
mod parsers;
mod token_failures;
mod trace;
mod unavailable;
