use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;

use crate::auth::{AuthError, NatsAuth, explain_connect_error, redact_url};
use crate::names;
use crate::provision::{ProvisionError, provision};
use crate::publish::Publisher;

/// How the streams and buckets are provisioned.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// Name of the connection (the service), shown by the server.
    pub client_name: String,
    /// Replicas of every stream and bucket (1 for a single server, 3 for a cluster).
    pub replicas: usize,
    /// JetStream deduplication window of `TGB_EVENTS`; at least one hour.
    pub duplicate_window: Duration,
    /// Age after which events leave `TGB_EVENTS`.
    pub max_age: Duration,
    /// Largest size of `TGB_EVENTS` in bytes (the oldest events leave first); `None` = no
    /// limit.
    pub max_bytes: Option<u64>,
    /// Age after which dead letters leave `TGB_DLQ`.
    pub dlq_max_age: Duration,
    /// Age after which ledger entries leave `TGB_LEDGER`.
    pub ledger_max_age: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            client_name: "tg-bridge".into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(3600),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: None,
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            ledger_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why the bus is not usable.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// `url` is redacted and `reason` scrubbed of any credentials in it.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("cannot connect to NATS at {url}: {source}")]
    Auth {
        url: String,
        #[source]
        source: AuthError,
    },
    #[error(
        "the NATS server at {url} is {version}; tg-bridge needs nats-server >= 2.10 with JetStream"
    )]
    ServerTooOld { url: String, version: String },
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// A connection to NATS with JetStream, provisioned for tg-bridge.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: BusConfig,
    refusals: Refusals,
}

/// Permission violations the server reported on this connection, the latest last (at most
/// [`MAX_REFUSALS`]): a refused request only times out on the client side.
type Refusals = Arc<Mutex<Vec<String>>>;
const MAX_REFUSALS: usize = 8;

impl Bus {
    /// Connects (with a creds file when given), checks the server version and provisions.
    pub async fn connect(
        url: &str,
        creds: Option<&Path>,
        config: BusConfig,
    ) -> Result<Bus, BusError> {
        Bus::connect_with(url, &NatsAuth::creds(creds), config).await
    }

    /// [`Bus::connect`] with TLS files as well: a private CA, a client certificate. Errors
    /// never show a user or password given in `url`.
    ///
    /// `url` is one server or several, comma-separated (the client URLs of a cluster's
    /// nodes): the connection is made to one that answers and moves to another when that
    /// one is lost.
    pub async fn connect_with(
        url: &str,
        auth: &NatsAuth,
        config: BusConfig,
    ) -> Result<Bus, BusError> {
        let shown = redact_url(url);
        let options = auth
            .connect_options(&config.client_name, url)
            .await
            .map_err(|source| BusError::Auth {
                url: shown.clone(),
                source,
            })?;
        let refusals = Refusals::default();
        let options = options.event_callback({
            let refusals = refusals.clone();
            let client = config.client_name.clone();
            move |event| {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = &event
                    && text.to_lowercase().contains("permissions violation")
                {
                    tracing::error!(client, refusal = %text, "the NATS server refused: {text}");
                    let mut list = refusals.lock().unwrap_or_else(|p| p.into_inner());
                    if list.len() == MAX_REFUSALS {
                        list.remove(0);
                    }
                    list.push(text.clone());
                }
                async {}
            }
        });
        // The library logs the addresses it connects to: it gets them without credentials.
        // Every server of a comma-separated list is given: the client connects to any of them
        // that answers, and reconnects to another (or one the cluster announced) when its
        // server goes away.
        let servers =
            crate::auth::server_addrs(&crate::auth::without_userinfo(url)).map_err(|reason| {
                BusError::Connect {
                    url: shown.clone(),
                    reason,
                }
            })?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| BusError::Connect {
                url: shown.clone(),
                reason: explain_connect_error(&e, url, auth),
            })?;
        let version = client.server_info().version;
        if !version_at_least(&version, (2, 10)) {
            return Err(BusError::ServerTooOld {
                url: shown,
                version,
            });
        }
        let js = jetstream::new(client.clone());
        if let Err(e) = provision(&js, &config).await {
            // A refused JetStream request only times out here; the server said why.
            let refused = refusals.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(match (e, refused.is_empty()) {
                (ProvisionError::Nats { kind, name, reason }, false) => {
                    BusError::Provision(ProvisionError::Nats {
                        kind,
                        name,
                        reason: format!(
                            "{reason}; the NATS server refused: {}",
                            refused.join("; ")
                        ),
                    })
                }
                (e, _) => BusError::Provision(e),
            });
        }
        Ok(Bus {
            client,
            js,
            config,
            refusals,
        })
    }

    /// Permission violations the server reported on this connection (e.g. `Permissions
    /// Violation for Publish to "$JS.API.CONSUMER.CREATE.TGB_EVENTS.tg-egress"`), oldest
    /// first. A JetStream request refused for permissions only times out on the client side;
    /// this says why.
    pub fn permission_refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The core client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The configuration this bus was provisioned with.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// A publisher of events.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.js.clone())
    }

    /// One of the provisioned KV buckets (see [`names::KV_BUCKETS`]).
    pub async fn kv(
        &self,
        bucket: &str,
    ) -> Result<jetstream::kv::Store, jetstream::context::KeyValueError> {
        self.js.get_key_value(bucket).await
    }

    /// The document object store.
    pub async fn documents(
        &self,
    ) -> Result<jetstream::object_store::ObjectStore, jetstream::context::ObjectStoreError> {
        self.js.get_object_store(names::OBJECT_DOCUMENTS).await
    }

    /// Ready = connected and both streams present.
    pub async fn ready(&self) -> Result<(), String> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err("not connected to NATS".into());
        }
        for stream in [names::EVENTS_STREAM, names::DLQ_STREAM] {
            self.js
                .get_stream(stream)
                .await
                .map_err(|e| format!("stream {stream}: {e}"))?;
        }
        Ok(())
    }
}

/// `"2.10.26"` ≥ (2, 10)?
pub(crate) fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

#[cfg(test)]
mod tests {
    use super::version_at_least;

    #[test]
    fn server_versions_are_compared_numerically() {
        assert!(version_at_least("2.10.26", (2, 10)));
        assert!(version_at_least("2.15.1", (2, 10)));
        assert!(version_at_least("3.0.0", (2, 10)));
        assert!(!version_at_least("2.9.10", (2, 10)));
        assert!(!version_at_least("garbage", (2, 10)));
    }
}
