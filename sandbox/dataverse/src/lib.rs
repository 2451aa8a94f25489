//! Emulator of the Dataverse Web API v9.2 (skeleton: filled in by the sandbox work).

/// The emulated Dataverse organisation.
#[derive(Clone, Default)]
pub struct Dataverse {}

impl Dataverse {
    /// Routes served under the sandbox's `/dataverse` prefix (`/api/data/v9.2/...`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }

    /// What the organisation holds, for inspection.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}
