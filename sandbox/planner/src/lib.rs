//! Emulator of Microsoft Graph Planner v1.0 (skeleton: filled in by the sandbox work).

/// The emulated Planner tenant.
#[derive(Clone, Default)]
pub struct Planner {}

impl Planner {
    /// Routes served under the sandbox's `/graph` prefix (`/v1.0/planner/...`, `/v1.0/$batch`).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
    }

    /// What the tenant holds, for inspection.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}
