//! The `TGB_*` environment that points tg-bridge's services at a sandbox: one builder for
//! `tgb`, the fault suite and every test that runs a service, instead of each rebuilding the
//! same list.

use std::collections::BTreeMap;

use crate::Sandbox;

/// `TGB_*` variables, set in order (a later value replaces an earlier one).
#[derive(Clone, Debug, Default)]
pub struct TgbEnv {
    vars: BTreeMap<String, String>,
}

impl TgbEnv {
    /// Only the broker: `TGB_NATS_URL`.
    pub fn new(nats_url: impl Into<String>) -> Self {
        TgbEnv::default().set("TGB_NATS_URL", nats_url)
    }

    /// The sandbox's endpoints (TG API and token, Dataverse, Entra authority, Graph) and the
    /// credentials of its first TG and first Entra client (tenant `sandbox`).
    pub fn sandbox(self, sandbox: &Sandbox) -> Self {
        let identity = sandbox.identity();
        let mut env = self
            .set("TGB_TG_API_URL", sandbox.tg_api_url())
            .set("TGB_TG_TOKEN_URL", sandbox.tg_token_url())
            .set("TGB_DATAVERSE_URL", sandbox.dataverse_url())
            .set("TGB_AZURE_AUTHORITY", sandbox.azure_authority())
            .set("TGB_AZURE_TENANT_ID", "sandbox")
            .set("TGB_GRAPH_URL", sandbox.graph_url());
        if let Some((id, secret)) = identity.first_tg_client() {
            env = env
                .set("TGB_TG_CLIENT_ID", id)
                .set("TGB_TG_CLIENT_SECRET", secret);
        }
        if let Some((id, secret)) = identity.first_entra_client() {
            env = env
                .set("TGB_AZURE_CLIENT_ID", id)
                .set("TGB_AZURE_CLIENT_SECRET", secret);
        }
        env
    }

    /// `TGB_TG_WEBHOOK_SECRETS`: the secret TG signs its webhooks with.
    pub fn webhook_secret(self, secret: impl Into<String>) -> Self {
        self.set("TGB_TG_WEBHOOK_SECRETS", secret)
    }

    /// `TGB_DATAVERSE_WEBHOOK_KEY`: the key Dataverse sends on its webhook calls.
    pub fn dataverse_webhook_key(self, key: impl Into<String>) -> Self {
        self.set("TGB_DATAVERSE_WEBHOOK_KEY", key)
    }

    /// `TGB_CONFIG`: the TOML file.
    pub fn config_file(self, path: impl std::fmt::Display) -> Self {
        self.set("TGB_CONFIG", path.to_string())
    }

    /// Any variable.
    pub fn set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Several variables, in order.
    pub fn extend<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in vars {
            self.vars.insert(k.into(), v.into());
        }
        self
    }

    /// Without `name`.
    pub fn remove(mut self, name: &str) -> Self {
        self.vars.remove(name);
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Every variable, sorted by name.
    pub fn vars(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_environment_points_every_service_at_the_sandbox() {
        let sandbox = Sandbox::start(crate::SandboxConfig::default())
            .await
            .unwrap();
        let env = TgbEnv::new("nats://127.0.0.1:4222")
            .sandbox(&sandbox)
            .webhook_secret("whsec_x")
            .set("TGB_TG_API_URL", "http://elsewhere/tg");
        let base = sandbox.base_url();
        assert_eq!(env.get("TGB_NATS_URL"), Some("nats://127.0.0.1:4222"));
        assert_eq!(
            env.get("TGB_TG_API_URL"),
            Some("http://elsewhere/tg"),
            "a later value wins"
        );
        assert_eq!(
            env.get("TGB_TG_TOKEN_URL"),
            Some(format!("{base}/tg/oauth2/token").as_str())
        );
        assert_eq!(
            env.get("TGB_GRAPH_URL"),
            Some(format!("{base}/graph").as_str())
        );
        assert_eq!(env.get("TGB_TG_CLIENT_ID"), Some("tgb-bridge"));
        assert_eq!(env.get("TGB_TG_CLIENT_SECRET"), Some("tg-secret"));
        assert_eq!(
            env.get("TGB_AZURE_CLIENT_SECRET"),
            Some("tgb-bridge-secret")
        );
        assert_eq!(env.get("TGB_TG_WEBHOOK_SECRETS"), Some("whsec_x"));
        assert_eq!(
            env.clone().remove("TGB_GRAPH_URL").get("TGB_GRAPH_URL"),
            None
        );
        assert!(env.vars().iter().all(|(k, _)| k.starts_with("TGB_")));
        sandbox.shutdown().await;
    }
}
