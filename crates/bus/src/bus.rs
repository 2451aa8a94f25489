use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;

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
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
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
}

impl Bus {
    /// Connects (with a creds file when given), checks the server version and provisions.
    pub async fn connect(
        url: &str,
        creds: Option<&Path>,
        config: BusConfig,
    ) -> Result<Bus, BusError> {
        let connect_err = |reason: String| BusError::Connect {
            url: url.to_owned(),
            reason,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(&config.client_name)
            .connection_timeout(Duration::from_secs(5));
        if let Some(creds) = creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| connect_err(format!("creds file {}: {e}", creds.display())))?;
        }
        let client = options
            .connect(url)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let version = client.server_info().version;
        if !version_at_least(&version, (2, 10)) {
            return Err(BusError::ServerTooOld {
                url: url.to_owned(),
                version,
            });
        }
        let js = jetstream::new(client.clone());
        provision(&js, &config).await?;
        Ok(Bus { client, js, config })
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
