//! HTTP clients of the systems tg-bridge talks to.
//!
//! - [`body`]: answers read with a byte cap;
//! - [`oauth`]: OAuth2 client-credentials tokens, cached and refreshed before expiry, with one
//!   retry on 401 (TG today; the Entra token for Dataverse and Graph can reuse it);
//! - [`origin`]: the same-origin check before any client follows an absolute URL it was given;
//! - [`tg`]: the Trading Grid community API (REST calls with `Idempotency-Key`, typed errors)
//!   and the serde types of its webhook bodies.

pub mod body;
pub mod credential;
pub mod dataverse;
pub mod graph;
pub mod oauth;
pub mod origin;
pub mod tg;
