//! The Entra ID credential the configuration names: a client secret, a client certificate or
//! a federated token file (the configuration allows at most one; see `tgb_runtime::config`).

use anyhow::Context as _;
use std::sync::Arc;
use tgb_clients::credential::{AssertionAlgorithm, Certificate, ClientCredential};
use tgb_runtime::Config;

/// The Entra credential of `service`, loaded (a certificate is read and checked against its
/// key now, so a bad one stops the start). Errors name the setting to fix, never key material.
pub fn credential(config: &Config, service: &str) -> anyhow::Result<ClientCredential> {
    let s = &config.settings;
    if let Some(secret) = &s.azure_client_secret {
        return Ok(ClientCredential::Secret(secret.clone()));
    }
    if let Some(path) = &s.azure_client_certificate_path {
        let algorithm = match s.azure_client_assertion_algorithm {
            tgb_runtime::AssertionAlgorithm::Ps256 => AssertionAlgorithm::Ps256,
            tgb_runtime::AssertionAlgorithm::Rs256 => AssertionAlgorithm::Rs256,
        };
        let certificate = Certificate::from_files(
            path,
            s.azure_client_certificate_key_path.as_deref(),
            algorithm,
        )
        .context("TGB_AZURE_CLIENT_CERTIFICATE_PATH / TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH")?;
        tracing::info!(
            x5t_s256 = certificate.thumbprint_s256(),
            "Entra credential: client certificate"
        );
        return Ok(ClientCredential::Certificate(Arc::new(certificate)));
    }
    if let Some(path) = &s.azure_federated_token_file {
        tracing::info!(file = %path.display(), "Entra credential: federated token file");
        return Ok(ClientCredential::FederatedTokenFile(path.clone()));
    }
    anyhow::bail!(
        "an Entra credential is required by {service}: set TGB_AZURE_CLIENT_SECRET, \
         TGB_AZURE_CLIENT_CERTIFICATE_PATH (with TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH unless \
         the key is in the same file) or AZURE_FEDERATED_TOKEN_FILE"
    )
}
