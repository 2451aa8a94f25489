//! Secret values: `Debug` prints `[REDACTED]`; reading one needs an explicit `expose_secret()`.

pub use secrecy::{ExposeSecret, SecretString};
