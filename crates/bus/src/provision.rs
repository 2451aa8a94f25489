//! Streams, KV buckets and the object store, declared in code and provisioned idempotently.
//!
//! An existing resource whose configuration differs from what tg-bridge declares is reconciled
//! at start: a change JetStream makes in place without losing data (`max_age`, `max_bytes`,
//! replicas where the servers can hold them, a longer duplicate window, a subject added, the
//! history of a bucket) is applied with a log line; a change that would lose data or cannot be
//! made in place (a subject removed, retention, storage type) refuses to start and names the
//! command to run. Nothing is ever deleted or recreated silently.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::bus::BusConfig;
use crate::names;

/// A resource could not be provisioned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "{kind} {name} exists with {field} = {existing}, but tg-bridge needs {desired}; \
         JetStream cannot change that in place and it is never replaced silently: {fix}"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        field: &'static str,
        existing: String,
        desired: String,
        /// What the operator runs (or changes) to resolve it.
        fix: String,
    },
    #[error(
        "{kind} {name} has {existing} replicas and the configuration asks for {desired}, \
         but the server refused the change ({reason}); a single nats-server (not clustered) \
         holds one replica only: set [bus] replicas = {existing} (TGB_BUS__REPLICAS), or run a \
         JetStream cluster of at least {desired} servers"
    )]
    Replicas {
        kind: &'static str,
        name: String,
        existing: usize,
        desired: usize,
        reason: String,
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
        max_bytes: config
            .max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
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
            reconcile(js, kind, &name, &info.config, |_| desired.clone()).await
        }
        Err(_) => match js.create_stream(desired.clone()).await {
            Ok(_) => Ok(()),
            // Another service may have created it first: check what it made.
            Err(create_err) => match js.get_stream(&desired.name).await {
                Ok(mut existing) => {
                    let info = existing.info().await.map_err(|e| nats(e.to_string()))?;
                    reconcile(js, kind, &name, &info.config, |_| desired.clone()).await
                }
                Err(_) => Err(nats(create_err.to_string())),
            },
        },
    }
}

/// One setting changed in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The setting, as the configuration names it.
    pub field: &'static str,
    /// Its value on the server before.
    pub from: String,
    /// Its value now.
    pub to: String,
}

/// What reconciling `existing` with `desired` needs: `Ok(None)` when nothing differs,
/// `Ok(Some((config, changes)))` for an in-place update (the server's own settings kept, ours
/// applied), an error naming the fix for a change JetStream cannot make in place.
pub fn plan_update(
    kind: &'static str,
    existing: &stream::Config,
    desired: &stream::Config,
) -> Result<Option<(stream::Config, Vec<Change>)>, ProvisionError> {
    let name = &desired.name;
    let conflict = |field: &'static str, have: String, want: String, fix: String| {
        Err(ProvisionError::Conflict {
            kind,
            name: name.clone(),
            field,
            existing: have,
            desired: want,
            fix,
        })
    };
    let rebuild = format!(
        "back it up (`nats stream backup {name} <dir>`), remove it (`nats stream rm {name}`) \
         and start a service to recreate it, then copy the messages you need back; or keep \
         the old setting"
    );
    let extra: Vec<&String> = existing
        .subjects
        .iter()
        .filter(|s| !desired.subjects.contains(s))
        .collect();
    if !extra.is_empty() {
        return conflict(
            "subjects",
            format!("{:?}", existing.subjects),
            format!("{:?}", desired.subjects),
            format!(
                "removing subjects {extra:?} drops what is published on them; if nothing \
                 needs them, `nats stream edit {name} --subjects {}`",
                desired.subjects.join(",")
            ),
        );
    }
    if existing.storage != desired.storage {
        return conflict(
            "storage",
            format!("{:?}", existing.storage),
            format!("{:?}", desired.storage),
            rebuild,
        );
    }
    if existing.retention != desired.retention {
        return conflict(
            "retention",
            format!("{:?}", existing.retention),
            format!("{:?}", desired.retention),
            rebuild,
        );
    }

    let mut update = existing.clone();
    let mut changes = Vec::new();
    let mut change = |field: &'static str, from: String, to: String| {
        changes.push(Change { field, from, to });
    };
    let missing: Vec<String> = desired
        .subjects
        .iter()
        .filter(|s| !existing.subjects.contains(s))
        .cloned()
        .collect();
    if !missing.is_empty() {
        update.subjects.extend(missing);
        change(
            "subjects",
            format!("{:?}", existing.subjects),
            format!("{:?}", update.subjects),
        );
    }
    if existing.num_replicas.max(1) != desired.num_replicas.max(1) {
        update.num_replicas = desired.num_replicas.max(1);
        change(
            "replicas",
            existing.num_replicas.max(1).to_string(),
            update.num_replicas.to_string(),
        );
    }
    if existing.max_age != desired.max_age {
        update.max_age = desired.max_age;
        change(
            "max_age",
            format!("{:?}", existing.max_age),
            format!("{:?}", desired.max_age),
        );
    }
    let unlimited = |bytes: i64| if bytes <= 0 { -1 } else { bytes };
    if unlimited(existing.max_bytes) != unlimited(desired.max_bytes) {
        update.max_bytes = unlimited(desired.max_bytes);
        let show = |bytes: i64| match unlimited(bytes) {
            -1 => "unlimited".to_owned(),
            b => b.to_string(),
        };
        change(
            "max_bytes",
            show(existing.max_bytes),
            show(desired.max_bytes),
        );
    }
    if existing.duplicate_window < desired.duplicate_window {
        update.duplicate_window = desired.duplicate_window;
        change(
            "duplicate_window",
            format!("{:?}", existing.duplicate_window),
            format!("{:?}", desired.duplicate_window),
        );
    }
    if desired.max_messages_per_subject > 0
        && existing.max_messages_per_subject != desired.max_messages_per_subject
    {
        update.max_messages_per_subject = desired.max_messages_per_subject;
        change(
            "history",
            existing.max_messages_per_subject.to_string(),
            desired.max_messages_per_subject.to_string(),
        );
    }
    Ok((!changes.is_empty()).then_some((update, changes)))
}

/// Applies [`plan_update`] to an existing stream, with one log line per setting changed.
/// `desired` is given the existing configuration (buckets keep the settings the server chose).
async fn reconcile(
    js: &jetstream::Context,
    kind: &'static str,
    name: &str,
    existing: &stream::Config,
    desired: impl FnOnce(&stream::Config) -> stream::Config,
) -> Result<(), ProvisionError> {
    let desired = desired(existing);
    let Some((update, changes)) = plan_update(kind, existing, &desired)? else {
        return Ok(());
    };
    // A server outside a cluster holds one replica; some versions (2.10) accept the update
    // anyway and keep one, so the refusal is made here rather than left to the server.
    if update.num_replicas > existing.num_replicas.max(1)
        && js.client().server_info().cluster.is_none()
    {
        return Err(ProvisionError::Replicas {
            kind,
            name: name.to_owned(),
            existing: existing.num_replicas.max(1),
            desired: update.num_replicas,
            reason: "the server is not part of a cluster".to_owned(),
        });
    }
    if let Err(e) = js.update_stream(&update).await {
        if update.num_replicas != existing.num_replicas.max(1) {
            return Err(ProvisionError::Replicas {
                kind,
                name: name.to_owned(),
                existing: existing.num_replicas.max(1),
                desired: update.num_replicas,
                reason: e.to_string(),
            });
        }
        return Err(ProvisionError::Nats {
            kind,
            name: name.to_owned(),
            reason: format!("updating it in place: {e}"),
        });
    }
    for Change { field, from, to } in changes {
        tracing::info!(
            kind,
            name,
            field,
            from = %from,
            to = %to,
            "updated {kind} {name} in place: {field} {from} -> {to}"
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
    let nats = |reason: String| ProvisionError::Nats {
        kind: "KV bucket",
        name: bucket.to_owned(),
        reason,
    };
    match js.get_stream(&stream_name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| nats(e.to_string()))?;
            reconcile(js, "KV bucket", bucket, &info.config, |existing| {
                stream::Config {
                    num_replicas: replicas,
                    max_messages_per_subject: history,
                    ..existing.clone()
                }
            })
            .await
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
                        ProvisionError::Nats { .. } => nats(e.to_string()),
                        other => other,
                    })
            }
            Err(e) => Err(nats(e.to_string())),
        },
    }
}

async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<(), ProvisionError> {
    if js.get_object_store(bucket).await.is_ok() {
        let mut existing =
            js.get_stream(format!("OBJ_{bucket}"))
                .await
                .map_err(|e| ProvisionError::Nats {
                    kind: "object store",
                    name: bucket.to_owned(),
                    reason: e.to_string(),
                })?;
        let info = existing.info().await.map_err(|e| ProvisionError::Nats {
            kind: "object store",
            name: bucket.to_owned(),
            reason: e.to_string(),
        })?;
        return reconcile(js, "object store", bucket, &info.config, |existing| {
            stream::Config {
                num_replicas: replicas,
                ..existing.clone()
            }
        })
        .await;
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
