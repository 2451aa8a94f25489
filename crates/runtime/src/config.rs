//! Layered, validated configuration.
//!
//! Order, later wins: built-in defaults → the TOML file (`TGB_CONFIG`, default
//! [`DEFAULT_CONFIG_PATH`]) → `TGB_*` environment variables. Top-level settings map to
//! `TGB_<NAME>` (`nats_url` ← `TGB_NATS_URL`); nested keys use a double underscore
//! (`bus.replicas` ← `TGB_BUS__REPLICAS`). Empty variables count as unset.
//!
//! Every value is checked at load time, and an error names the key the operator has to fix:
//! the environment variable when the value came from the environment, otherwise the dotted key
//! and the file. Secrets are [`SecretString`]s, so `Debug` prints `[REDACTED]`, and error
//! messages never repeat a secret's value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use url::Url;

/// Environment variable that names the TOML file.
pub const CONFIG_ENV: &str = "TGB_CONFIG";
/// The TOML file read when `TGB_CONFIG` is unset; a missing default file is fine.
pub const DEFAULT_CONFIG_PATH: &str = "config/tg-bridge.toml";
/// Prefix of every tg-bridge environment variable.
pub const ENV_PREFIX: &str = "TGB_";
/// Default broker address.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default Entra ID authority.
pub const DEFAULT_AZURE_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Default Microsoft Graph base URL.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";

/// Name of the environment provider in figment metadata; used to name keys in errors.
const ENV_PROVIDER: &str = "TGB_* environment";
/// Name of the provider of the variables a workload identity platform sets.
const WORKLOAD_PROVIDER: &str = "AZURE_* environment (workload identity)";
/// The variables AKS workload identity injects into a pod, and the settings they fill when the
/// `TGB_` variable is unset.
pub const WORKLOAD_IDENTITY_ENV: &[(&str, &str)] = &[
    ("AZURE_CLIENT_ID", "azure_client_id"),
    ("AZURE_TENANT_ID", "azure_tenant_id"),
    ("AZURE_AUTHORITY_HOST", "azure_authority"),
    ("AZURE_FEDERATED_TOKEN_FILE", "azure_federated_token_file"),
];
/// Keys whose values must never appear in an error message.
const SECRET_KEYS: &[&str] = &[
    "tg_client_secret",
    "tg_webhook_secrets",
    "dataverse_webhook_key",
    "azure_client_secret",
];
/// The shortest Dataverse webhook key accepted, bytes: a guessable key lets anyone inject
/// "changes" into the dynamics-adapter.
pub const MIN_DATAVERSE_WEBHOOK_KEY_BYTES: usize = 32;
/// The shortest JetStream duplicate window tg-bridge accepts (the architecture says ≥ 1 h).
pub const MIN_DUPLICATE_WINDOW_SECS: u64 = 3600;
/// JetStream allows at most five replicas per stream.
pub const MAX_REPLICAS: usize = 5;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (development).
    #[default]
    Pretty,
    /// One JSON object per line (production, log shippers).
    Json,
}

/// Settings of the JetStream layer (`[bus]` in the TOML file, `TGB_BUS__*` in the environment).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// Stream replicas (1 for a single server, 3 in a cluster); 1..=5.
    pub replicas: usize,
    /// JetStream duplicate window for `Nats-Msg-Id` de-duplication, seconds; at least 3600.
    pub duplicate_window_secs: u64,
    /// Age after which events leave `TGB_EVENTS`, days.
    pub max_age_days: u64,
    /// Largest size of `TGB_EVENTS`, bytes (the oldest events leave first); unset = no limit.
    /// Changed in place at the next start, like the ages and `replicas`.
    pub max_bytes: Option<u64>,
    /// Age after which dead letters leave `TGB_DLQ`, days.
    pub dlq_max_age_days: u64,
    /// Deliveries of one message before it is dead-lettered; at least 1.
    pub max_deliver: i64,
    /// Longest wait between two deliveries after a transient failure, seconds (the wait
    /// doubles from 1 s up to it, unless the target said `Retry-After`).
    pub backoff_max_secs: u64,
    /// Time a consumer has to ack a message before it is redelivered, seconds.
    pub ack_wait_secs: u64,
    /// Messages one consumer handles at the same time.
    pub concurrency: usize,
    /// Gathered delivery, milliseconds: after the first message of a quiet spell a consumer
    /// waits this long and takes what arrived meanwhile at once, so several messages share each
    /// wake-up. Unset: each service's own choice (50 for planner-adapter and sla-monitor, whose
    /// work no one waits on to the millisecond; 0, off, for the others); 0..=1000.
    pub gather_ms: Option<u64>,
}

impl BusSettings {
    /// The gathered delivery of a consumer whose service chose `default` (`None`: off).
    pub fn gather(&self, default: Duration) -> Option<Duration> {
        let d = self.gather_ms.map_or(default, Duration::from_millis);
        (!d.is_zero()).then_some(d)
    }
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            duplicate_window_secs: 3600,
            max_age_days: 7,
            max_bytes: None,
            dlq_max_age_days: 30,
            max_deliver: 20,
            backoff_max_secs: 300,
            ack_wait_secs: 30,
            concurrency: 16,
            gather_ms: None,
        }
    }
}

const DAY_SECS: u64 = 24 * 60 * 60;

impl BusSettings {
    /// [`Self::duplicate_window_secs`] as a duration.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
    /// [`Self::max_age_days`] as a duration.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_days.saturating_mul(DAY_SECS))
    }
    /// [`Self::dlq_max_age_days`] as a duration.
    pub fn dlq_max_age(&self) -> Duration {
        Duration::from_secs(self.dlq_max_age_days.saturating_mul(DAY_SECS))
    }
    /// [`Self::backoff_max_secs`] as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_secs(self.backoff_max_secs)
    }
    /// [`Self::ack_wait_secs`] as a duration.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: describe_key(figment, &["bus", field]),
            message,
        };
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(invalid(
                "replicas",
                format!(
                    "must be between 1 and {MAX_REPLICAS}, got {}",
                    self.replicas
                ),
            ));
        }
        if self.duplicate_window_secs < MIN_DUPLICATE_WINDOW_SECS {
            return Err(invalid(
                "duplicate_window_secs",
                format!(
                    "must be at least {MIN_DUPLICATE_WINDOW_SECS} (one hour), got {}",
                    self.duplicate_window_secs
                ),
            ));
        }
        for (field, days) in [
            ("max_age_days", self.max_age_days),
            ("dlq_max_age_days", self.dlq_max_age_days),
        ] {
            if days == 0 {
                return Err(invalid(field, "must be at least 1 day".into()));
            }
        }
        if self.duplicate_window_secs > self.max_age_days.saturating_mul(DAY_SECS) {
            return Err(invalid(
                "duplicate_window_secs",
                format!(
                    "must not exceed bus.max_age_days ({} days)",
                    self.max_age_days
                ),
            ));
        }
        if self.max_bytes == Some(0) {
            return Err(invalid(
                "max_bytes",
                "must be at least 1 (leave it unset for no limit)".into(),
            ));
        }
        if self.max_deliver < 1 {
            return Err(invalid(
                "max_deliver",
                format!("must be at least 1, got {}", self.max_deliver),
            ));
        }
        if self.ack_wait_secs == 0 {
            return Err(invalid("ack_wait_secs", "must be at least 1".into()));
        }
        if self.backoff_max_secs == 0 {
            return Err(invalid("backoff_max_secs", "must be at least 1".into()));
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1".into()));
        }
        if self.gather_ms.is_some_and(|ms| ms > 1000) {
            return Err(invalid("gather_ms", "must be at most 1000".into()));
        }
        Ok(())
    }
}

/// Bounds of every service's HTTP listener (`[http]`, `TGB_HTTP__*`): a client that is slow to
/// send its headers or its body, or a flood of requests, must not hold the listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Time a client has to send a request's headers before the connection is closed
    /// (also bounds an idle keep-alive connection), milliseconds.
    pub header_read_timeout_ms: u64,
    /// Time one request has, from its headers to the end of the handler (reading the body
    /// included), before it is answered 408, milliseconds.
    pub request_timeout_ms: u64,
    /// Requests to the service's own routes handled at the same time; one more is answered
    /// 503 with `Retry-After` at once (`/healthz`, `/readyz` and `/metrics` are not counted).
    pub max_concurrent_requests: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        let limits = crate::http::HttpLimits::default();
        Self {
            header_read_timeout_ms: millis(limits.header_read_timeout),
            request_timeout_ms: millis(limits.request_timeout),
            max_concurrent_requests: limits.max_concurrent_requests,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl HttpSettings {
    /// The limits [`crate::http::serve_with`] applies.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_requests: self.max_concurrent_requests,
        }
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: describe_key(figment, &["http", field]),
            message,
        };
        for (field, value) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// Endpoints, credentials and the bus settings every service reads.
///
/// `Debug` redacts secrets and credentials embedded in URLs.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// NATS server(s), `nats://host:port` (also `tls://`, `ws://`, `wss://`; comma-separated
    /// for several). `TGB_NATS_URL`.
    pub nats_url: String,
    /// NATS credentials file (a user JWT and its nkey seed). `TGB_NATS_CREDS`.
    pub nats_creds: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS servers' certificates (a private CA); makes TLS
    /// required. `TGB_NATS_TLS_CA`.
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM file of this service's TLS client certificate (servers with `verify: true`).
    /// `TGB_NATS_TLS_CERT`, with `TGB_NATS_TLS_KEY`.
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key. `TGB_NATS_TLS_KEY`.
    pub nats_tls_key: Option<PathBuf>,
    /// This service's HTTP listener; each service has its own default. `TGB_HTTP_ADDR`.
    pub http_addr: Option<SocketAddr>,
    /// Threads a service binary runs its work on. 1 (the default): tokio's current-thread
    /// runtime. At the rates one replica handles, each broker and HTTP round trip is a wake-up
    /// of its own, and one thread spares the hand-offs between workers (#21); replicas scale
    /// out instead. More: a multi-thread runtime with that many workers, for a replica that
    /// must use several cores. `TGB_WORKER_THREADS`.
    pub worker_threads: usize,
    /// Trading Grid API base URL. `TGB_TG_API_URL`.
    pub tg_api_url: Option<Url>,
    /// Trading Grid OAuth2 token endpoint. `TGB_TG_TOKEN_URL`.
    pub tg_token_url: Option<Url>,
    /// Trading Grid OAuth2 client id. `TGB_TG_CLIENT_ID`.
    pub tg_client_id: Option<String>,
    /// Trading Grid OAuth2 client secret. `TGB_TG_CLIENT_SECRET`.
    pub tg_client_secret: Option<SecretString>,
    /// Standard Webhooks secrets (`whsec_…`) accepted on TG webhooks; several during a rotation.
    /// `TGB_TG_WEBHOOK_SECRETS`, comma-separated.
    #[serde(deserialize_with = "webhook_secrets")]
    pub tg_webhook_secrets: Vec<SecretString>,
    /// Dataverse environment URL, e.g. `https://org.crm.dynamics.com`. `TGB_DATAVERSE_URL`.
    pub dataverse_url: Option<Url>,
    /// Key expected on Dataverse webhook calls, at least 32 bytes. `TGB_DATAVERSE_WEBHOOK_KEY`.
    pub dataverse_webhook_key: Option<SecretString>,
    /// Entra ID authority. `TGB_AZURE_AUTHORITY`.
    pub azure_authority: Url,
    /// Entra ID tenant. `TGB_AZURE_TENANT_ID`.
    pub azure_tenant_id: Option<String>,
    /// Entra ID application (client) id. `TGB_AZURE_CLIENT_ID`.
    pub azure_client_id: Option<String>,
    /// Entra ID client secret. `TGB_AZURE_CLIENT_SECRET`. One of the three Entra credentials.
    pub azure_client_secret: Option<SecretString>,
    /// Entra ID client certificate, PEM; the private key too when
    /// [`Self::azure_client_certificate_key_path`] is unset. `TGB_AZURE_CLIENT_CERTIFICATE_PATH`.
    /// One of the three Entra credentials.
    pub azure_client_certificate_path: Option<PathBuf>,
    /// The certificate's RSA private key, PEM (PKCS#8 or PKCS#1, unencrypted).
    /// `TGB_AZURE_CLIENT_CERTIFICATE_KEY_PATH`.
    pub azure_client_certificate_key_path: Option<PathBuf>,
    /// Signature of the certificate's client assertions: `PS256` (default) or `RS256`.
    /// `TGB_AZURE_CLIENT_ASSERTION_ALGORITHM`.
    pub azure_client_assertion_algorithm: AssertionAlgorithm,
    /// A token file of workload identity federation, read at each token request (it rotates).
    /// `TGB_AZURE_FEDERATED_TOKEN_FILE`, or `AZURE_FEDERATED_TOKEN_FILE` as AKS workload
    /// identity sets it. One of the three Entra credentials.
    pub azure_federated_token_file: Option<PathBuf>,
    /// Microsoft Graph base URL. `TGB_GRAPH_URL`.
    pub graph_url: Url,
    /// Log line format. `TGB_LOG_FORMAT`: `pretty` or `json`.
    pub log_format: LogFormat,
    /// Send the W3C trace context (`traceparent`) on calls to TG, Dataverse and Graph: they
    /// are third parties, so off unless set. `TGB_SEND_TRACE_CONTEXT`.
    pub send_trace_context: bool,
    /// JetStream settings, `[bus]`.
    pub bus: BusSettings,
    /// HTTP listener bounds, `[http]`.
    pub http: HttpSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.to_owned(),
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            http_addr: None,
            worker_threads: 1,
            tg_api_url: None,
            tg_token_url: None,
            tg_client_id: None,
            tg_client_secret: None,
            tg_webhook_secrets: Vec::new(),
            dataverse_url: None,
            dataverse_webhook_key: None,
            azure_authority: Url::parse(DEFAULT_AZURE_AUTHORITY).expect("constant URL is valid"),
            azure_tenant_id: None,
            azure_client_id: None,
            azure_client_secret: None,
            azure_client_certificate_path: None,
            azure_client_certificate_key_path: None,
            azure_client_assertion_algorithm: AssertionAlgorithm::default(),
            azure_federated_token_file: None,
            graph_url: Url::parse(DEFAULT_GRAPH_URL).expect("constant URL is valid"),
            log_format: LogFormat::default(),
            send_trace_context: false,
            bus: BusSettings::default(),
            http: HttpSettings::default(),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = |u: &Option<Url>| u.as_ref().map(redact_url);
        f.debug_struct("Settings")
            .field("nats_url", &redact_url_list(&self.nats_url))
            .field("nats_creds", &self.nats_creds)
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_tls_cert", &self.nats_tls_cert)
            .field("nats_tls_key", &self.nats_tls_key)
            .field("http_addr", &self.http_addr)
            .field("worker_threads", &self.worker_threads)
            .field("tg_api_url", &url(&self.tg_api_url))
            .field("tg_token_url", &url(&self.tg_token_url))
            .field("tg_client_id", &self.tg_client_id)
            .field("tg_client_secret", &self.tg_client_secret)
            .field("tg_webhook_secrets", &self.tg_webhook_secrets)
            .field("dataverse_url", &url(&self.dataverse_url))
            .field("dataverse_webhook_key", &self.dataverse_webhook_key)
            .field("azure_authority", &redact_url(&self.azure_authority))
            .field("azure_tenant_id", &self.azure_tenant_id)
            .field("azure_client_id", &self.azure_client_id)
            .field("azure_client_secret", &self.azure_client_secret)
            .field(
                "azure_client_certificate_path",
                &self.azure_client_certificate_path,
            )
            .field(
                "azure_client_certificate_key_path",
                &self.azure_client_certificate_key_path,
            )
            .field(
                "azure_client_assertion_algorithm",
                &self.azure_client_assertion_algorithm,
            )
            .field(
                "azure_federated_token_file",
                &self.azure_federated_token_file,
            )
            .field("graph_url", &redact_url(&self.graph_url))
            .field("log_format", &self.log_format)
            .field("send_trace_context", &self.send_trace_context)
            .field("bus", &self.bus)
            .field("http", &self.http)
            .finish()
    }
}

impl Settings {
    /// `TGB_HTTP_ADDR`, or the service's own default.
    pub fn http_addr_or(&self, default: SocketAddr) -> SocketAddr {
        self.http_addr.unwrap_or(default)
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            key: describe_key(figment, &[field]),
            message,
        };

        check_nats_url(&self.nats_url).map_err(|m| invalid("nats_url", m))?;
        for (field, file) in [
            ("nats_creds", &self.nats_creds),
            ("nats_tls_ca", &self.nats_tls_ca),
            ("nats_tls_cert", &self.nats_tls_cert),
            ("nats_tls_key", &self.nats_tls_key),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(invalid(
                    field,
                    format!("file {} does not exist", file.display()),
                ));
            }
        }
        match (&self.nats_tls_cert, &self.nats_tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "nats_tls_key",
                    "(TGB_NATS_TLS_KEY) is needed with nats_tls_cert (the client certificate's \
                     private key)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "nats_tls_cert",
                    "(TGB_NATS_TLS_CERT) is needed with nats_tls_key (the client certificate)"
                        .into(),
                ));
            }
            _ => {}
        }

        let http_urls = [
            ("tg_api_url", self.tg_api_url.as_ref()),
            ("tg_token_url", self.tg_token_url.as_ref()),
            ("dataverse_url", self.dataverse_url.as_ref()),
            ("azure_authority", Some(&self.azure_authority)),
            ("graph_url", Some(&self.graph_url)),
        ];
        for (field, url) in http_urls {
            if let Some(url) = url {
                check_http_url(url).map_err(|m| invalid(field, m))?;
            }
        }

        if let Some(key) = &self.dataverse_webhook_key
            && key.expose_secret().len() < MIN_DATAVERSE_WEBHOOK_KEY_BYTES
        {
            // The length of a short key is not secret enough to matter; its value is never shown.
            return Err(invalid(
                "dataverse_webhook_key",
                format!(
                    "must be at least {MIN_DATAVERSE_WEBHOOK_KEY_BYTES} bytes (got {});                      generate one, e.g. 32 random bytes as hex",
                    key.expose_secret().len()
                ),
            ));
        }

        for (index, secret) in self.tg_webhook_secrets.iter().enumerate() {
            let body = secret.expose_secret().strip_prefix("whsec_");
            if body.is_none_or(str::is_empty) {
                return Err(invalid(
                    "tg_webhook_secrets",
                    format!(
                        "entry {} is not a Standard Webhooks secret (expected `whsec_<base64>`)",
                        index + 1
                    ),
                ));
            }
        }

        self.check_azure_credential(figment)?;
        self.bus.validate(figment)?;
        self.http.validate(figment)
    }

    /// At most one Entra credential, each complete, its files present.
    fn check_azure_credential(&self, figment: &Figment) -> Result<(), ConfigError> {
        let name = |field: &str| describe_key(figment, &[field]);
        let set: Vec<&str> = [
            ("azure_client_secret", self.azure_client_secret.is_some()),
            (
                "azure_client_certificate_path",
                self.azure_client_certificate_path.is_some(),
            ),
            (
                "azure_federated_token_file",
                self.azure_federated_token_file.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(field, is_set)| is_set.then_some(field))
        .collect();
        if set.len() > 1 {
            let names: Vec<String> = set.iter().map(|f| name(f)).collect();
            return Err(ConfigError::Invalid {
                key: names.join(", "),
                message: "several Entra credentials are set; set exactly one: a client secret, a client certificate or a federated token file".into(),
            });
        }
        if self.azure_client_certificate_key_path.is_some()
            && self.azure_client_certificate_path.is_none()
        {
            return Err(ConfigError::Invalid {
                key: name("azure_client_certificate_key_path"),
                message: format!(
                    "a certificate key without a certificate; set {} too",
                    env_name(&["azure_client_certificate_path"])
                ),
            });
        }
        for field in [
            "azure_client_certificate_path",
            "azure_client_certificate_key_path",
            "azure_federated_token_file",
        ] {
            let path = match field {
                "azure_client_certificate_path" => &self.azure_client_certificate_path,
                "azure_client_certificate_key_path" => &self.azure_client_certificate_key_path,
                _ => &self.azure_federated_token_file,
            };
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(ConfigError::Invalid {
                    key: name(field),
                    message: format!("file {} does not exist", path.display()),
                });
            }
        }
        Ok(())
    }
}

/// The signature algorithm of Entra certificate client assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256 (what Microsoft's documentation asks for).
    #[default]
    #[serde(rename = "PS256", alias = "ps256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
}

fn check_nats_url(value: &str) -> Result<(), String> {
    const EXPECTED: &str =
        "expected nats://host:port (or tls://, ws://, wss://; comma-separated for several servers)";
    let servers: Vec<&str> = value.split(',').map(str::trim).collect();
    for server in servers {
        if server.is_empty() {
            return Err(format!("empty server address; {EXPECTED}"));
        }
        // The value is not echoed: it may carry a user, password or token.
        let url = Url::parse(server).map_err(|e| format!("not a URL ({e}); {EXPECTED}"))?;
        if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") {
            return Err(format!(
                "scheme `{}` is not a NATS scheme; {EXPECTED}",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("no host; {EXPECTED}"));
        }
    }
    Ok(())
}

fn check_http_url(url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme `{}` is not http or https (URL {})",
            url.scheme(),
            redact_url(url)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host (URL {})", redact_url(url)));
    }
    Ok(())
}

/// The URL with any user name and password replaced, so it can be logged.
pub fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() {
        let _ = url.set_username("REDACTED");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    url.to_string()
}

fn redact_url_list(value: &str) -> String {
    value
        .split(',')
        .map(|part| match Url::parse(part.trim()) {
            Ok(url) => redact_url(&url),
            Err(_) => part.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Accepts a comma-separated string (the environment) or a list of strings (TOML).
fn webhook_secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    struct Secrets;
    impl<'de> Visitor<'de> for Secrets {
        type Value = Vec<SecretString>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a comma-separated string or a list of `whsec_…` strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(SecretString::from)
                .collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                let s = s.trim();
                if !s.is_empty() {
                    out.push(SecretString::from(s));
                }
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(Secrets)
}

/// A configuration problem, naming the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file named explicitly does not exist.
    #[error("configuration file {} (named by {named_by}) does not exist", path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// Who named it: `TGB_CONFIG` or the caller.
        named_by: String,
    },
    /// A value is missing, malformed or out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// The environment variable, or the dotted key and its file.
        key: String,
        /// What is wrong and what is expected (never the value of a secret).
        message: String,
    },
    /// A setting that is optional in general is needed by this service.
    #[error("{name} is required by {service}")]
    Required {
        /// The environment variable.
        name: String,
        /// The service that needs it.
        service: String,
    },
    /// A section this service cannot run without is absent from the file and the environment.
    #[error(
        "section [{section}] is required by {service} and absent from {searched} ({why}); \
         config/tg-bridge.toml in the repository documents every section"
    )]
    MissingSection {
        /// The section, e.g. `routing`.
        section: String,
        /// The service that needs it.
        service: String,
        /// Where it was looked for: the file, or "the environment" when there is none.
        searched: String,
        /// What the service would do without it.
        why: String,
    },
    /// Several problems at once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<ConfigError>),
}

/// Loaded and validated configuration: the typed [`Settings`] plus the merged sources, from
/// which services read their own sections with [`Config::section`].
#[derive(Clone)]
pub struct Config {
    /// The typed settings.
    pub settings: Settings,
    figment: Figment,
    /// The TOML file read, if any.
    file: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The merged sources would print secrets; only the redacted settings are shown.
        f.debug_struct("Config")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults → the TOML file at `TGB_CONFIG` (default [`DEFAULT_CONFIG_PATH`]; a missing
    /// default file is fine, a missing file named explicitly is an error) → `TGB_*` environment.
    /// Validated; errors name the key.
    pub fn load() -> Result<Config, ConfigError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_from(None, env)
    }

    /// Same as [`Config::load`], with the environment given explicitly (tests do not touch the
    /// process environment). `file`: `Some` names the TOML file explicitly (it must exist);
    /// `None` takes `TGB_CONFIG` from `env`, or the default path.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        // Deterministic when a name appears twice: the last one wins, as in a shell.
        let mut seen = std::collections::HashSet::new();
        env.reverse();
        env.retain(|(k, _)| seen.insert(k.clone()));
        env.sort();
        let workload = workload_identity_env(&env)?;
        env.retain(|(k, _)| k.starts_with(ENV_PREFIX));

        let from_env = env
            .iter()
            .find(|(k, _)| k == CONFIG_ENV)
            .map(|(_, v)| PathBuf::from(v));
        let (path, named_by) = match (file, from_env) {
            (Some(p), _) => (p.to_path_buf(), Some("the caller")),
            (None, Some(p)) => (p, Some(CONFIG_ENV)),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), None),
        };
        if let Some(named_by) = named_by
            && !path.is_file()
        {
            return Err(ConfigError::MissingFile {
                path,
                named_by: named_by.to_owned(),
            });
        }

        let mut figment = Figment::new();
        let file = path.is_file().then(|| path.clone());
        if path.is_file() {
            figment = figment.merge(Toml::file_exact(&path));
        }
        let figment = figment
            .merge(WorkloadIdentityEnv(workload))
            .merge(EnvProvider(env));
        let settings: Settings = figment
            .extract_lossy()
            .map_err(|e| from_figment(&figment, e, &[]))?;
        settings.validate(&figment)?;
        Ok(Config {
            settings,
            figment,
            file,
        })
    }

    /// The table `key` (e.g. `"routing"`, `"sla"`, or a dotted path) deserialized; `T::default()`
    /// when absent. Errors name the key path.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        if !self.figment.contains(key) {
            return Ok(T::default());
        }
        let prefix: Vec<&str> = key.split('.').collect();
        self.figment
            .extract_inner_lossy::<T>(key)
            .map_err(|e| from_figment(&self.figment, e, &prefix))
    }

    /// The table `key`, which `service` cannot run without: its defaults hold no Planner plan, no
    /// policy, nothing to route to, so starting without it would skip every message silently.
    /// Absent (from the file and from `TGB_<KEY>__*`) → [`ConfigError::MissingSection`] naming
    /// the section, the service, the file and `why` (what the section decides).
    pub fn required_section<T: DeserializeOwned + Default>(
        &self,
        key: &str,
        service: &str,
        why: &str,
    ) -> Result<T, ConfigError> {
        if !self.figment.contains(key) {
            return Err(ConfigError::MissingSection {
                section: key.to_owned(),
                service: service.to_owned(),
                searched: match &self.file {
                    Some(file) => format!("{} and the environment", file.display()),
                    None => format!(
                        "the environment (no configuration file: set {CONFIG_ENV} or \
                         provide {DEFAULT_CONFIG_PATH})"
                    ),
                },
                why: why.to_owned(),
            });
        }
        self.section(key)
    }

    /// The TOML file this configuration was read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The value of an optional setting this service needs, or
    /// "`TGB_DATAVERSE_URL` is required by dynamics-adapter".
    pub fn require<'a, T>(
        &self,
        value: &'a Option<T>,
        env_name: &str,
        service: &str,
    ) -> Result<&'a T, ConfigError> {
        value.as_ref().ok_or_else(|| ConfigError::Required {
            name: env_name.to_owned(),
            service: service.to_owned(),
        })
    }

    /// The merged sources, for anything [`Config::section`] does not cover. They hold secrets
    /// in the clear: never log them.
    pub fn figment(&self) -> &Figment {
        &self.figment
    }
}

/// The settings the workload identity variables fill, as `(setting, value)`. A variable whose
/// `TGB_` twin is set to another value is an error: which one is meant is not clear.
fn workload_identity_env(env: &[(String, String)]) -> Result<Vec<(String, String)>, ConfigError> {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    for (name, field) in WORKLOAD_IDENTITY_ENV {
        let Some(value) = get(name) else { continue };
        let twin = env_name(&[field]);
        if let Some(ours) = get(&twin)
            && ours.trim().trim_end_matches('/') != value.trim().trim_end_matches('/')
        {
            return Err(ConfigError::Invalid {
                key: format!("{twin}, {name}"),
                message: "both are set, to different values; unset one".into(),
            });
        }
        out.push(((*field).to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// The variables a workload identity platform sets (see [`WORKLOAD_IDENTITY_ENV`]).
struct WorkloadIdentityEnv(Vec<(String, String)>);

/// `["azure_client_id"]` → `AZURE_CLIENT_ID`.
fn workload_env_name<S: AsRef<str>>(keys: &[S]) -> String {
    let dotted = keys.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".");
    WORKLOAD_IDENTITY_ENV
        .iter()
        .find(|(_, field)| *field == dotted)
        .map(|(name, _)| (*name).to_owned())
        .unwrap_or(dotted)
}

impl Provider for WorkloadIdentityEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(WORKLOAD_PROVIDER).interpolater(|_, keys| workload_env_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (field, value) in &self.0 {
            dict.insert(field.clone(), Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// `TGB_*` variables from an explicit list (not the process environment).
struct EnvProvider(Vec<(String, String)>);

/// `["bus", "replicas"]` → `TGB_BUS__REPLICAS`.
fn env_name<S: AsRef<str>>(keys: &[S]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_uppercase()).collect();
    format!("{ENV_PREFIX}{}", keys.join("__"))
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_PROVIDER).interpolater(|_, keys| env_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (name, value) in &self.0 {
            if name == CONFIG_ENV {
                continue;
            }
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(|k| k.is_empty() || k.contains('.')) {
                continue;
            }
            // Kept as strings: lossy extraction turns them into numbers or booleans only where
            // the target type asks for one, so an id like "0042" stays a string.
            insert_path(&mut dict, &path, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

/// How an operator finds a key: the environment variable when the value came from there,
/// otherwise the dotted key, with the file when it came from one.
fn describe_key(figment: &Figment, path: &[&str]) -> String {
    let dotted = path.join(".");
    match figment.find_metadata(&dotted) {
        Some(md) => describe_with_metadata(md, path),
        None => dotted,
    }
}

fn describe_with_metadata<S: AsRef<str>>(md: &Metadata, path: &[S]) -> String {
    let dotted = path.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".");
    if md.name == ENV_PROVIDER {
        return env_name(path);
    }
    if md.name == WORKLOAD_PROVIDER {
        return workload_env_name(path);
    }
    match &md.source {
        Some(source) if dotted.is_empty() => source.to_string(),
        Some(source) => format!("{dotted} (in {source})"),
        None if dotted.is_empty() => md.name.to_string(),
        None => dotted,
    }
}

fn from_figment(figment: &Figment, error: figment::Error, prefix: &[&str]) -> ConfigError {
    let mut problems: Vec<ConfigError> = error
        .into_iter()
        .map(|e| {
            let mut path = full_path(&e.path, prefix);
            if let figment::error::Kind::MissingField(field) = &e.kind {
                path.push(field.to_string());
            }
            let key = match &e.metadata {
                Some(md) => describe_with_metadata(md, &path),
                None => {
                    let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                    if refs.is_empty() {
                        "configuration".to_owned()
                    } else {
                        describe_key(figment, &refs)
                    }
                }
            };
            let dotted = path.join(".");
            let message = if SECRET_KEYS.contains(&dotted.as_str()) {
                secret_safe_message(&e.kind)
            } else {
                e.kind.to_string()
            };
            ConfigError::Invalid { key, message }
        })
        .collect();
    if problems.len() == 1 {
        problems.remove(0)
    } else {
        ConfigError::Several(problems)
    }
}

/// The error's key path from the root. `extract_inner` appends the section's path to the
/// error's path instead of prepending it, so a trailing prefix is moved to the front.
fn full_path(path: &[String], prefix: &[&str]) -> Vec<String> {
    let prefix: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    if prefix.is_empty() || path.starts_with(&prefix) {
        return path.to_vec();
    }
    let inner = path.strip_suffix(prefix.as_slice()).unwrap_or(path);
    prefix.iter().chain(inner).cloned().collect()
}

fn secret_safe_message(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
            format!("invalid value (not shown: secret); expected {expected}")
        }
        _ => "invalid value (not shown: secret)".to_owned(),
    }
}
