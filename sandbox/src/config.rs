//! The sandbox's configuration: identities, token lifetime, TG webhook subscriptions, faults.
//!
//! Every field has a default, so `SandboxConfig::default()` is a working sandbox for tests and
//! the demo; `config/sandbox.toml` documents the same defaults.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tgb_sandbox_dataverse::DataverseConfig;
use tgb_sandbox_planner::PlannerConfig;
use uuid::Uuid;

use crate::faults::FaultRule;

/// Everything the sandbox needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Address of the one HTTP listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Who may get tokens, and who the scripting API may act as.
    pub identity: IdentityConfig,
    /// The Trading Grid emulator.
    pub tg: TgConfig,
    /// The Dataverse emulator (its own crate documents the keys).
    pub dataverse: DataverseConfig,
    /// The Planner emulator (its own crate documents the keys).
    pub planner: PlannerConfig,
    /// Fault rules active from the start.
    pub faults: Vec<FaultRule>,
    /// Seed of the random generator behind fault rates (deterministic tests).
    pub fault_seed: u64,
    /// How many calls the call log keeps (oldest dropped first).
    pub call_log_capacity: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity: IdentityConfig::default(),
            tg: TgConfig::default(),
            dataverse: DataverseConfig::default(),
            planner: PlannerConfig::default(),
            faults: Vec::new(),
            fault_seed: 42,
            call_log_capacity: 100_000,
        }
    }
}

impl SandboxConfig {
    /// Parses a TOML document (missing keys take their defaults).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// Token issuers and the identities they know.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Lifetime of every issued token, in seconds.
    pub token_lifetime_secs: u64,
    /// Entra ID app registrations (client credentials) and their application users.
    pub entra_clients: Vec<EntraClient>,
    /// Certificates registered on those app registrations: a client assertion signed with
    /// the certificate's key stands in for the client secret.
    pub entra_certificates: Vec<EntraCertificate>,
    /// Federated credentials of those app registrations: a client assertion equal to one of
    /// these tokens (what a workload identity platform mounts for the pod) stands in for the
    /// client secret.
    pub entra_federated_tokens: Vec<EntraFederatedToken>,
    /// Named internal users (people) the scripting API can act as.
    pub users: Vec<NamedUser>,
    /// TG OAuth2 clients.
    pub tg_clients: Vec<TgClient>,
    /// Extra resource URIs accepted as the Dataverse audience (besides `{base}/dataverse`),
    /// e.g. `https://org.crm.dynamics.com`.
    pub dataverse_resources: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 3600,
            entra_clients: vec![EntraClient {
                client_id: "tgb-bridge".into(),
                client_secret: "tgb-bridge-secret".into(),
                app_user_id: Uuid::from_u128(0x7d3c_0b1e_0000_4000_8000_0000_0000_0001),
                app_user_name: "# tg-bridge".into(),
            }],
            entra_certificates: Vec::new(),
            entra_federated_tokens: Vec::new(),
            users: vec![
                NamedUser {
                    key: "agent".into(),
                    id: Uuid::from_u128(0x2a1b_0c3d_0000_4000_8000_0000_0000_0101),
                    name: "Dana Agent".into(),
                },
                NamedUser {
                    key: "planner".into(),
                    id: Uuid::from_u128(0x2a1b_0c3d_0000_4000_8000_0000_0000_0102),
                    name: "Pat Planner".into(),
                },
                NamedUser {
                    key: "supervisor".into(),
                    id: Uuid::from_u128(0x2a1b_0c3d_0000_4000_8000_0000_0000_0103),
                    name: "Sam Supervisor".into(),
                },
            ],
            tg_clients: vec![TgClient {
                client_id: "tgb-bridge".into(),
                client_secret: "tg-secret".into(),
            }],
            dataverse_resources: Vec::new(),
        }
    }
}

/// An Entra ID app registration usable with the client-credentials grant.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraClient {
    /// The application (client) id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// The GUID of the application user the client acts as in Dataverse and Graph.
    pub app_user_id: Uuid,
    /// The display name of that application user.
    pub app_user_name: String,
}

impl std::fmt::Debug for EntraClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("app_user_id", &self.app_user_id)
            .field("app_user_name", &self.app_user_name)
            .finish()
    }
}

/// A certificate registered on an app registration (Entra "certificates & secrets").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraCertificate {
    /// The application (client) id it is registered on.
    pub client_id: String,
    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`); only its public key is used.
    pub certificate_pem: String,
}

/// A federated token accepted as a client assertion for an app registration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraFederatedToken {
    /// The application (client) id.
    pub client_id: String,
    /// The token, exactly as the client sends it.
    pub token: String,
}

impl std::fmt::Debug for EntraFederatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraFederatedToken")
            .field("client_id", &self.client_id)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// A named internal user (a Dynamics service agent, a Planner team member).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedUser {
    /// The short name used in `/_sandbox/as/{key}/...`.
    pub key: String,
    /// The user's GUID (`x-tgb-caller-id`).
    pub id: Uuid,
    /// The user's display name.
    pub name: String,
}

/// A TG OAuth2 client.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TgClient {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
}

impl std::fmt::Debug for TgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TgClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// The Trading Grid emulator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TgConfig {
    /// `community_id` of every event.
    pub community_id: String,
    /// Partners known from the start (others are registered when first used).
    pub partners: Vec<PartnerSeed>,
    /// Webhook subscriptions active from the start (more can be added at run time).
    pub webhooks: Vec<WebhookSubscriptionConfig>,
    /// Retry schedule of the webhook sender.
    pub webhook_retry: RetryConfig,
    /// How long an `Idempotency-Key` answer is replayed, in seconds.
    pub idempotency_ttl_secs: u64,
}

impl Default for TgConfig {
    fn default() -> Self {
        Self {
            community_id: "retail-suppliers".into(),
            partners: vec![PartnerSeed {
                qualifier: "ZZ".into(),
                id: "ACME01".into(),
                name: "Acme Corp".into(),
            }],
            webhooks: Vec::new(),
            webhook_retry: RetryConfig::default(),
            idempotency_ttl_secs: 24 * 3600,
        }
    }
}

/// A partner present from the start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSeed {
    /// EDI qualifier, e.g. `ZZ`.
    pub qualifier: String,
    /// EDI id, e.g. `ACME01`.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// A webhook subscription: where TG posts its events, signed with these secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSubscriptionConfig {
    /// A name to address the subscription at run time (pause, resume, rotate).
    pub name: String,
    /// The receiver, e.g. `http://127.0.0.1:8081/webhooks/tg`.
    pub url: String,
    /// Active `whsec_…` secrets; every one signs each delivery.
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for WebhookSubscriptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSubscriptionConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish()
    }
}

/// Exponential backoff of the webhook sender.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before the first retry, in milliseconds; doubles at each retry.
    pub base_ms: u64,
    /// Largest delay between two attempts, in milliseconds.
    pub cap_ms: u64,
    /// Give up after this many attempts (TG itself retries for about 3 days).
    pub max_attempts: u32,
    /// Timeout of one delivery attempt, in milliseconds.
    pub attempt_timeout_ms: u64,
    /// Deliveries in flight at once per subscription.
    pub max_in_flight: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_ms: 500,
            cap_ms: 60_000,
            max_attempts: 4_400,
            attempt_timeout_ms: 15_000,
            max_in_flight: 32,
        }
    }
}
