//! Streams, KV buckets and the object store, declared in code and provisioned idempotently.
//! An existing resource whose configuration differs in a setting we own is reported, never
//! silently replaced: changing retention or subjects under running consumers loses data.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::bus::BusConfig;
use crate::names;

/// A resource could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "{kind} {name} exists with {field} = {existing}, but tg-bridge needs {desired}; \
         change it by hand (nats stream edit) or fix the configuration, it is never replaced silently"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        field: &'static str,
        existing: String,
        desired: String,
    },
    #[error("cannot provision {kind} {name}: {reason}")]
    Nats {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// The configuration of `TGB_EVENTS`.
pub fn events_stream(config: &BusConfig) -> stream::Config {
    stream::Config {
        name: names::EVENTS_STREAM.into(),
        description: Some("tg-bridge events: tgb.v1.<origin>.<aggregate>.<event>".into()),
        subjects: vec![names::EVENTS_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: config.max_age,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// The configuration of `TGB_DLQ`.
pub fn dlq_stream(config: &BusConfig) -> stream::Config {
    stream::Config {
        name: names::DLQ_STREAM.into(),
        description: Some(
            "tg-bridge dead letters: original bytes and headers plus the reason".into(),
        ),
        subjects: vec![names::DLQ_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: config.dlq_max_age,
        duplicate_window: Duration::from_secs(3600),
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// The configuration of `TGB_LEDGER`.
pub fn ledger_stream(config: &BusConfig) -> stream::Config {
    stream::Config {
        name: names::LEDGER_STREAM.into(),
        description: Some("tg-bridge ledger: the decision taken for each handled message".into()),
        subjects: vec![names::LEDGER_SUBJECTS.into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: config.ledger_max_age,
        duplicate_window: Duration::from_secs(120),
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// Provisions the streams, every KV bucket and the object store.
pub async fn provision(js: &jetstream::Context, config: &BusConfig) -> Result<(), ProvisionError> {
    ensure_stream(js, "stream", events_stream(config)).await?;
    ensure_stream(js, "stream", dlq_stream(config)).await?;
    ensure_stream(js, "stream", ledger_stream(config)).await?;
    for (bucket, history) in names::KV_BUCKETS {
        ensure_kv(js, bucket, *history, config.replicas).await?;
    }
    ensure_object_store(js, names::OBJECT_DOCUMENTS, config.replicas).await?;
    Ok(())
}

async fn ensure_stream(
    js: &jetstream::Context,
    kind: &'static str,
    desired: stream::Config,
) -> Result<(), ProvisionError> {
    let name = desired.name.clone();
    let nats = |reason: String| ProvisionError::Nats {
        kind,
        name: name.clone(),
        reason,
    };
    match js.get_stream(&desired.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| nats(e.to_string()))?;
            compare(kind, &info.config, &desired)
        }
        Err(_) => match js.create_stream(desired.clone()).await {
            Ok(_) => Ok(()),
            // Another service may have created it first: check what it made.
            Err(create_err) => match js.get_stream(&desired.name).await {
                Ok(mut existing) => {
                    let info = existing.info().await.map_err(|e| nats(e.to_string()))?;
                    compare(kind, &info.config, &desired)
                }
                Err(_) => Err(nats(create_err.to_string())),
            },
        },
    }
}

fn compare(
    kind: &'static str,
    existing: &stream::Config,
    desired: &stream::Config,
) -> Result<(), ProvisionError> {
    let conflict = |field: &'static str, have: String, want: String| {
        Err(ProvisionError::Conflict {
            kind,
            name: desired.name.clone(),
            field,
            existing: have,
            desired: want,
        })
    };
    let mut want_subjects = desired.subjects.clone();
    let mut have_subjects = existing.subjects.clone();
    want_subjects.sort();
    have_subjects.sort();
    if want_subjects != have_subjects {
        return conflict(
            "subjects",
            format!("{have_subjects:?}"),
            format!("{want_subjects:?}"),
        );
    }
    if existing.storage != desired.storage {
        return conflict(
            "storage",
            format!("{:?}", existing.storage),
            format!("{:?}", desired.storage),
        );
    }
    if existing.retention != desired.retention {
        return conflict(
            "retention",
            format!("{:?}", existing.retention),
            format!("{:?}", desired.retention),
        );
    }
    if existing.num_replicas.max(1) != desired.num_replicas.max(1) {
        return conflict(
            "replicas",
            existing.num_replicas.to_string(),
            desired.num_replicas.to_string(),
        );
    }
    if existing.max_age != desired.max_age {
        return conflict(
            "max_age",
            format!("{:?}", existing.max_age),
            format!("{:?}", desired.max_age),
        );
    }
    if existing.duplicate_window < desired.duplicate_window {
        return conflict(
            "duplicate_window",
            format!("{:?}", existing.duplicate_window),
            format!("at least {:?}", desired.duplicate_window),
        );
    }
    if existing.max_messages_per_subject != desired.max_messages_per_subject
        && desired.max_messages_per_subject > 0
    {
        return conflict(
            "history",
            existing.max_messages_per_subject.to_string(),
            desired.max_messages_per_subject.to_string(),
        );
    }
    Ok(())
}

async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    history: i64,
    replicas: usize,
) -> Result<(), ProvisionError> {
    let stream_name = format!("KV_{bucket}");
    match js.get_stream(&stream_name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| ProvisionError::Nats {
                kind: "KV bucket",
                name: bucket.to_owned(),
                reason: e.to_string(),
            })?;
            let existing = info.config.clone();
            let desired = stream::Config {
                name: bucket.to_owned(),
                subjects: existing.subjects.clone(),
                storage: stream::StorageType::File,
                retention: existing.retention,
                num_replicas: replicas,
                max_age: existing.max_age,
                duplicate_window: Duration::ZERO,
                max_messages_per_subject: history,
                ..Default::default()
            };
            compare("KV bucket", &existing, &desired)
        }
        Err(_) => match js
            .create_key_value(jetstream::kv::Config {
                bucket: bucket.to_owned(),
                description: format!("tg-bridge {bucket}"),
                history,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(()),
            // Another service may have created it first (all start together): check that.
            Err(e) if js.get_stream(&stream_name).await.is_ok() => {
                Box::pin(ensure_kv(js, bucket, history, replicas))
                    .await
                    .map_err(|conflict| match conflict {
                        ProvisionError::Nats { .. } => ProvisionError::Nats {
                            kind: "KV bucket",
                            name: bucket.to_owned(),
                            reason: e.to_string(),
                        },
                        other => other,
                    })
            }
            Err(e) => Err(ProvisionError::Nats {
                kind: "KV bucket",
                name: bucket.to_owned(),
                reason: e.to_string(),
            }),
        },
    }
}

async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<(), ProvisionError> {
    if js.get_object_store(bucket).await.is_ok() {
        return Ok(());
    }
    let created = js
        .create_object_store(jetstream::object_store::Config {
            bucket: bucket.to_owned(),
            description: Some("tg-bridge documents fetched from Trading Grid".into()),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another service may have created it first (all start together).
        Err(_) if js.get_object_store(bucket).await.is_ok() => Ok(()),
        Err(e) => Err(ProvisionError::Nats {
            kind: "object store",
            name: bucket.to_owned(),
            reason: e.to_string(),
        }),
    }
}
