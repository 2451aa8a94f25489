//! The operator's commands, against any running tg-bridge, over NATS only:
//! `dlq list|show|replay`, `history`, `links`, `replay --consumer --since`, `status`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tgb_bus::ledger::{self, LedgerEntry};
use tgb_bus::links::encode_token;
use tgb_bus::names;
use time::OffsetDateTime;

/// A JetStream context of an operator connection.
pub async fn jetstream(url: &str) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    jetstream_with(url, &tgb_bus::NatsAuth::default()).await
}

/// [`jetstream`] with a credentials file and TLS files.
pub async fn jetstream_with(
    url: &str,
    auth: &tgb_bus::NatsAuth,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let client = crate::nats::connect_with(url, auth).await?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

fn rfc3339(t: OffsetDateTime) -> String {
    tgb_proto::timestamps::rfc3339(t)
}

async fn stream(js: &jetstream::Context, name: &str) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(name).await.with_context(|| {
        format!(
            "stream {name} not found: this NATS has no tg-bridge (start it with `tgb up`, or \
             point --nats-url at the broker tg-bridge uses)"
        )
    })
}

/// One message read from a stream.
pub struct Read {
    /// Stream sequence.
    pub seq: u64,
    /// Subject.
    pub subject: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Payload.
    pub payload: bytes::Bytes,
    /// When the stream stored it.
    pub published: OffsetDateTime,
}

/// Reads the messages of `stream` matching `filters` from `deliver` (at most `limit`), oldest
/// first, with an ordered consumer (nothing is acknowledged or changed).
pub async fn read(
    stream: &jetstream::stream::Stream,
    filters: Vec<String>,
    deliver: DeliverPolicy,
    limit: usize,
) -> anyhow::Result<(Vec<Read>, u64)> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .context("cannot read the stream")?;
    let total = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if total == 0 {
        return Ok((out, 0));
    }
    let mut messages = consumer.messages().await?;
    let mut pending = total;
    while pending > 0 && out.len() < limit {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let Ok(Some(message)) = next else { break };
        let message = message.map_err(|e| anyhow::anyhow!("reading the stream: {e}"))?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        pending = info.pending;
        out.push(Read {
            seq: info.stream_sequence,
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
            published: info.published,
        });
    }
    Ok((out, total))
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// DLQ

/// A dead letter as `tgb dlq list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// Its sequence in `TGB_DLQ`: the id `show` and `replay` take.
    pub id: u64,
    /// When it was dead-lettered.
    pub at: String,
    /// The consumer that gave up.
    pub consumer: String,
    /// `permanent`, `undecodable`, `max_deliver`.
    pub error_kind: String,
    /// The error.
    pub error: String,
    /// Deliveries made.
    pub deliveries: String,
    /// The subject it was published on.
    pub original_subject: String,
    /// Its sequence in `TGB_EVENTS`.
    pub original_seq: String,
    /// The event id (from the payload), when it decodes.
    pub event_id: String,
    /// The business thread.
    pub correlation_id: String,
    /// `system:kind:id`.
    pub entity: String,
}

impl DeadLetter {
    fn from_parts(
        id: u64,
        at: OffsetDateTime,
        subject: &str,
        headers: &HeaderMap,
        payload: &[u8],
    ) -> Self {
        let original_subject = match header(headers, names::HDR_ORIGINAL_SUBJECT) {
            s if s.is_empty() => {
                format!("tgb.{}", subject.splitn(4, '.').nth(3).unwrap_or_default())
            }
            s => s,
        };
        let meta = tgb_proto::Event::decode(&original_subject, payload)
            .ok()
            .and_then(|e| e.meta().cloned());
        DeadLetter {
            id,
            at: rfc3339(at),
            consumer: header(headers, names::HDR_CONSUMER),
            error_kind: header(headers, names::HDR_ERROR_KIND),
            error: header(headers, names::HDR_ERROR),
            deliveries: header(headers, names::HDR_DELIVERIES),
            original_seq: header(headers, names::HDR_ORIGINAL_SEQ),
            event_id: meta
                .as_ref()
                .map(|m| m.event_id.clone())
                .unwrap_or_default(),
            correlation_id: meta
                .as_ref()
                .map(|m| m.correlation_id.clone())
                .unwrap_or_default(),
            entity: meta.as_ref().map(|m| m.entity_key()).unwrap_or_default(),
            original_subject,
        }
    }
}

/// Every dead letter (of `consumer`, when given), oldest first.
pub async fn dlq_list(
    js: &jetstream::Context,
    consumer: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let dlq = stream(js, names::DLQ_STREAM).await?;
    let filter = match consumer {
        Some(c) => format!("tgb.dlq.{c}.>"),
        None => names::DLQ_SUBJECTS.to_owned(),
    };
    let (messages, _) = read(&dlq, vec![filter], DeliverPolicy::All, usize::MAX).await?;
    Ok(messages
        .iter()
        .map(|m| DeadLetter::from_parts(m.seq, m.published, &m.subject, &m.headers, &m.payload))
        .collect())
}

/// One dead letter in full.
#[derive(Debug, Serialize)]
pub struct DeadLetterDetail {
    /// The summary.
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Every header.
    pub headers: BTreeMap<String, String>,
    /// The decoded event (protobuf debug form), or why it does not decode.
    pub event: String,
    /// Payload size.
    pub payload_bytes: usize,
}

async fn dlq_get(
    js: &jetstream::Context,
    id: u64,
) -> anyhow::Result<async_nats::jetstream::message::StreamMessage> {
    let dlq = stream(js, names::DLQ_STREAM).await?;
    dlq.get_raw_message(id).await.with_context(|| {
        format!(
            "no dead letter {id} in {}: see `tgb dlq list`",
            names::DLQ_STREAM
        )
    })
}

/// `tgb dlq show ID`.
pub async fn dlq_show(js: &jetstream::Context, id: u64) -> anyhow::Result<DeadLetterDetail> {
    let m = dlq_get(js, id).await?;
    let letter = DeadLetter::from_parts(id, m.time, &m.subject, &m.headers, &m.payload);
    let event = match tgb_proto::Event::decode(&letter.original_subject, &m.payload) {
        Ok(e) => format!("{e:#?}"),
        Err(e) => format!("(does not decode: {e})"),
    };
    let headers = m
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", "),
            )
        })
        .collect();
    Ok(DeadLetterDetail {
        letter,
        headers,
        event,
        payload_bytes: m.payload.len(),
    })
}

/// The `Nats-Msg-Id` of a replay of dead letter `id`: new, so JetStream's duplicate window
/// does not swallow it, and derived from the DLQ sequence, so replaying the same dead letter
/// twice (e.g. after a crash between the PubAck and the delete) publishes it once.
pub fn replay_msg_id(id: u64, event_id: &str) -> String {
    format!("replay:dlq:{id}:{event_id}")
}

/// What a replay did (or would do).
#[derive(Debug, Serialize)]
pub struct Replayed {
    /// The dead letter.
    pub id: u64,
    /// Where it went.
    pub subject: String,
    /// Its new `Nats-Msg-Id`.
    pub msg_id: String,
    /// Its new sequence in `TGB_EVENTS` (none in a dry run).
    pub new_seq: Option<u64>,
    /// Whether JetStream saw it as a duplicate (already replayed).
    pub duplicate: bool,
}

/// Whether NATS subject `subject` matches `filter` (`*` one token, `>` the rest).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The most dead letters `tgb dlq replay --all` republishes in one run unless `--limit` says.
pub const DEFAULT_REPLAY_LIMIT: usize = 100;

/// A dead letter is replayed only where it could have come from: its headers are not trusted
/// alone (anyone who may publish under `tgb.dlq.>` writes them). The DLQ subject must be the
/// one its `tgb-consumer` and `tgb-original-subject` give, that consumer must exist on
/// `TGB_EVENTS` and consume the original subject, and the payload must decode as that
/// subject's event with the matching origin.
async fn check_replay(
    js: &jetstream::Context,
    id: u64,
    dlq_subject: &str,
    letter: &DeadLetter,
    payload: &[u8],
) -> anyhow::Result<()> {
    let original = &letter.original_subject;
    if original.is_empty() || !original.starts_with("tgb.v1.") {
        bail!("dead letter {id} does not say where it came from (no tgb-original-subject)");
    }
    if letter.consumer.is_empty() {
        bail!("dead letter {id} does not name its consumer (no tgb-consumer)");
    }
    if names::dlq_subject(&letter.consumer, original) != dlq_subject {
        bail!(
            "dead letter {id} is on {dlq_subject}, which does not match its headers \
             (consumer {}, original subject {original}): not replayed",
            letter.consumer
        );
    }
    let events = stream(js, names::EVENTS_STREAM).await?;
    let consumer = events
        .consumer_info(&letter.consumer)
        .await
        .with_context(|| {
            format!(
                "dead letter {id} names consumer {}, which {} does not have: not replayed",
                letter.consumer,
                names::EVENTS_STREAM
            )
        })?;
    let config = &consumer.config;
    let filters: Vec<&str> = if config.filter_subjects.is_empty() {
        vec![config.filter_subject.as_str()]
    } else {
        config.filter_subjects.iter().map(String::as_str).collect()
    };
    if !filters
        .iter()
        .any(|f| !f.is_empty() && subject_matches(f, original))
    {
        bail!(
            "dead letter {id}: consumer {} does not consume {original}: not replayed",
            letter.consumer
        );
    }
    tgb_proto::Event::decode(original, payload).map_err(|e| {
        anyhow::anyhow!("dead letter {id} is not a valid event of {original} ({e}): not replayed")
    })?;
    Ok(())
}

/// `tgb dlq replay ID`: republishes the original bytes and headers on the original subject with a
/// new `Nats-Msg-Id`, and deletes the dead letter only after the PubAck. Refused (also in a dry
/// run) unless the dead letter passes [`check_replay`].
pub async fn dlq_replay(
    js: &jetstream::Context,
    id: u64,
    dry_run: bool,
) -> anyhow::Result<Replayed> {
    let m = dlq_get(js, id).await?;
    let letter = DeadLetter::from_parts(id, m.time, &m.subject, &m.headers, &m.payload);
    check_replay(js, id, &m.subject, &letter, &m.payload).await?;
    let original_id = match header(&m.headers, names::HDR_MSG_ID) {
        _ if !letter.event_id.is_empty() => letter.event_id.clone(),
        other => other,
    };
    let msg_id = replay_msg_id(id, &original_id);
    let mut out = Replayed {
        id,
        subject: letter.original_subject.clone(),
        msg_id: msg_id.clone(),
        new_seq: None,
        duplicate: false,
    };
    if dry_run {
        return Ok(out);
    }
    let mut headers = HeaderMap::new();
    for (k, values) in m.headers.iter() {
        let name = k.to_string();
        if name.eq_ignore_ascii_case(names::HDR_MSG_ID) || name.starts_with("tgb-") {
            continue;
        }
        for v in values {
            headers.append(name.as_str(), v.as_str());
        }
    }
    headers.insert(names::HDR_MSG_ID, msg_id.as_str());
    headers.insert(
        "tgb-replayed-from",
        format!("{}:{id}", names::DLQ_STREAM).as_str(),
    );
    let ack = js
        .publish_with_headers(letter.original_subject.clone(), headers, m.payload.clone())
        .await
        .with_context(|| format!("cannot publish the replay of {id}"))?
        .await
        .with_context(|| format!("no PubAck for the replay of {id}: the dead letter is kept"))?;
    out.new_seq = Some(ack.sequence);
    out.duplicate = ack.duplicate;
    let dlq = stream(js, names::DLQ_STREAM).await?;
    dlq.delete_message(id)
        .await
        .with_context(|| format!("replayed {id}, but could not delete it from the DLQ"))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// links and history

/// The kinds tried for `system:id` when no kind is given.
fn kinds_of(system: &str) -> &'static [&'static str] {
    match system {
        "tg" => &[
            "case",
            "partner",
            "document",
            "dispute",
            "action_item",
            "thread",
        ],
        "dataverse" | "dyn" | "dynamics" => &[
            "incident",
            "tgb_exception",
            "exception",
            "account",
            "invoice",
            "salesorder",
            "contact",
            "annotation",
        ],
        "planner" => &["task"],
        _ => &["case", "exception", "partner"],
    }
}

/// `system:id` or `system:kind:id` → the records it may name.
pub fn parse_record(spec: &str) -> anyhow::Result<(String, Vec<String>, String)> {
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let system = match parts[0] {
        "dyn" | "dynamics" => "dataverse",
        s => s,
    };
    match parts.as_slice() {
        [_, id] if !id.is_empty() => Ok((
            system.to_owned(),
            kinds_of(system).iter().map(|k| (*k).to_owned()).collect(),
            (*id).to_owned(),
        )),
        [_, kind, id] if kinds_of(system).contains(kind) || system != "tg" => Ok((
            system.to_owned(),
            vec![(*kind).to_owned()],
            (*id).to_owned(),
        )),
        // `tg:ZZ:ACME01`: a partner key.
        [_, q, id] => Ok((
            system.to_owned(),
            vec!["partner".into()],
            format!("{q}:{id}"),
        )),
        _ => bail!(
            "`{spec}` is not <system>:<id> or <system>:<kind>:<id> (e.g. tg:C-10001, \
             dataverse:incident:<guid>, planner:task:<id>)"
        ),
    }
}

/// One link of a record.
#[derive(Debug, Serialize)]
pub struct LinkRow {
    /// The record.
    pub from: String,
    /// `system.kind` of the other end.
    pub to: String,
    /// Its id.
    pub id: String,
}

/// `tgb links <id>`: every link of the record(s) `spec` names. Keys are listed from the
/// bucket's stream by subject (one request per kind, no watcher to wait out).
pub async fn links(js: &jetstream::Context, spec: &str) -> anyhow::Result<Vec<LinkRow>> {
    let (system, kinds, id) = parse_record(spec)?;
    let kv = js
        .get_key_value(names::KV_LINKS)
        .await
        .context("KV bucket tgb_links not found: is this tg-bridge's NATS?")?;
    let kv_stream = stream(js, &format!("KV_{}", names::KV_LINKS)).await?;
    let mut out = Vec::new();
    for kind in &kinds {
        let prefix = format!("{system}.{kind}.{}.", encode_token(&id));
        let filter = format!("$KV.{}.{prefix}>", names::KV_LINKS);
        let mut subjects = kv_stream.info_with_subjects(&filter).await?;
        let mut keys = Vec::new();
        while let Some((subject, _)) = subjects.try_next().await? {
            keys.push(subject);
        }
        keys.sort();
        for subject in keys {
            let key = subject
                .strip_prefix(&format!("$KV.{}.", names::KV_LINKS))
                .unwrap_or(&subject)
                .to_owned();
            if let Some(value) = kv
                .get(&key)
                .await
                .with_context(|| format!("tgb_links {key}"))?
            {
                out.push(LinkRow {
                    from: format!("{system}:{kind}:{id}"),
                    to: key.strip_prefix(&prefix).unwrap_or(&key).to_owned(),
                    id: String::from_utf8_lossy(&value).into_owned(),
                });
            }
        }
        if system == "planner" && kind == "task" {
            for row in task_subject(js, &id).await? {
                if !out.iter().any(|o| o.to == row.to && o.id == row.id) {
                    out.push(row);
                }
            }
        }
    }
    Ok(out)
}

/// A Planner task's subject and TG case, from planner-adapter's record of it (its links are
/// stored one way, subject → task; tasks linked before that also have the way back).
async fn task_subject(js: &jetstream::Context, task_id: &str) -> anyhow::Result<Vec<LinkRow>> {
    let sync = js
        .get_key_value(names::KV_SYNC)
        .await
        .context("KV bucket tgb_sync not found: is this tg-bridge's NATS?")?;
    let store = planner_adapter::store::Store::new(sync);
    let Some((record, _)) = store
        .task(task_id)
        .await
        .with_context(|| format!("the record of task {task_id}"))?
    else {
        return Ok(Vec::new());
    };
    let from = format!("planner:task:{task_id}");
    let mut rows = Vec::new();
    if let Some(m) = crate::rebuild::parse_marker(&record.title) {
        let (system, kind, id) = m.subject;
        rows.push(LinkRow {
            from: from.clone(),
            to: format!("{system}.{kind}"),
            id,
        });
    }
    if !record.tg_case_id.is_empty()
        && !rows
            .iter()
            .any(|r| r.to == "tg.case" && r.id == record.tg_case_id)
    {
        rows.push(LinkRow {
            from,
            to: "tg.case".into(),
            id: record.tg_case_id,
        });
    }
    Ok(rows)
}

/// The history of a record: the correlations it resolved to and their ledger entries.
#[derive(Debug, Serialize)]
pub struct History {
    /// What was asked.
    pub record: String,
    /// The business threads searched (the TG case first).
    pub correlations: Vec<String>,
    /// Every entry, oldest first.
    pub entries: Vec<LedgerEntry>,
}

/// `tgb history <system>:<id>`.
pub async fn history(js: &jetstream::Context, spec: &str) -> anyhow::Result<History> {
    let (system, _, id) = parse_record(spec)?;
    let mut correlations = Vec::new();
    if system == "tg" {
        correlations.push(id.clone());
    }
    for link in links(js, spec).await? {
        if link.to == "tg.case" || link.to == "tg.partner" {
            correlations.push(link.id.clone());
        }
    }
    if !correlations.contains(&id) {
        correlations.push(id.clone());
    }
    correlations.dedup();
    let mut entries = Vec::new();
    for c in &correlations {
        entries.extend(
            ledger::history(js, c)
                .await
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", names::LEDGER_STREAM))?,
        );
    }
    entries.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(History {
        record: spec.to_owned(),
        correlations,
        entries,
    })
}

// ---------------------------------------------------------------------------------------------
// replay from a time

/// `15m`, `2h`, `30s`, `1d` ago, or an RFC 3339 time.
pub fn parse_since(text: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Some(t) = tgb_proto::timestamps::parse_rfc3339(text) {
        return Ok(t);
    }
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num.parse().with_context(|| {
        format!("--since {text}: expected e.g. 15m, 2h, 1d or an RFC 3339 time")
    })?;
    let secs = match unit {
        "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("--since {text}: the unit must be s, m, h or d (or give an RFC 3339 time)"),
    };
    Ok(now - time::Duration::seconds(secs))
}

/// What `tgb replay --consumer --since` did (or would do).
#[derive(Debug, Serialize)]
pub struct ConsumerReplay {
    /// The durable consumer.
    pub consumer: String,
    /// From when.
    pub since: String,
    /// Its subjects.
    pub filter_subjects: Vec<String>,
    /// The first stream sequence redelivered.
    pub from_seq: Option<u64>,
    /// Messages it will receive again.
    pub messages: u64,
    /// Of which, per subject.
    pub by_subject: BTreeMap<String, u64>,
    /// Whether the consumer was reset.
    pub applied: bool,
}

/// Re-delivers to durable consumer `name` every message of its subjects stored since `since`.
///
/// How: JetStream's consumer reset (ADR-60, nats-server ≥ 2.14) moves the durable's ack floor
/// to just below the first sequence stored at `since`. The running service keeps pulling from
/// the same durable and receives those messages again; no other consumer sees anything; the
/// consumer's configuration is unchanged, so the service restarts as before. (A temporary copy
/// of the consumer would have no handler behind it, and deleting and re-creating the durable
/// with a start time would change its configuration, which the service refuses at its next
/// start.)
pub async fn replay_consumer(
    client: &async_nats::Client,
    js: &jetstream::Context,
    name: &str,
    since: OffsetDateTime,
    dry_run: bool,
) -> anyhow::Result<ConsumerReplay> {
    let events = stream(js, names::EVENTS_STREAM).await?;
    let info = events.consumer_info(name).await.with_context(|| {
        format!(
            "no consumer {name} on {}: see `tgb status`",
            names::EVENTS_STREAM
        )
    })?;
    let mut filters = info.config.filter_subjects.clone();
    if filters.is_empty() && !info.config.filter_subject.is_empty() {
        filters.push(info.config.filter_subject.clone());
    }
    let (messages, total) = read(
        &events,
        filters.clone(),
        DeliverPolicy::ByStartTime { start_time: since },
        100_000,
    )
    .await?;
    let mut by_subject = BTreeMap::new();
    for m in &messages {
        *by_subject.entry(m.subject.clone()).or_insert(0) += 1;
    }
    let mut out = ConsumerReplay {
        consumer: name.to_owned(),
        since: rfc3339(since),
        filter_subjects: filters,
        from_seq: messages.first().map(|m| m.seq),
        messages: total,
        by_subject,
        applied: false,
    };
    let Some(seq) = out.from_seq else {
        return Ok(out);
    };
    if dry_run {
        return Ok(out);
    }
    let version = client.server_info().version;
    if !crate::nats::version_at_least(&version, (2, 14)) {
        bail!(
            "the NATS server is {version}: re-delivering from a time uses the consumer reset of \
             nats-server >= 2.14 (the pinned {} has it; run scripts/install-deps)",
            crate::nats::PINNED_VERSION
        );
    }
    events
        .reset_consumer(name, Some(seq))
        .await
        .with_context(|| format!("cannot reset consumer {name} to sequence {seq}"))?;
    out.applied = true;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// status

/// A stream's state.
#[derive(Debug, Serialize)]
pub struct StreamStatus {
    /// Name.
    pub name: String,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Consumers.
    pub consumers: usize,
    /// Last message time.
    pub last: String,
}

/// A consumer's state.
#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    /// Durable name.
    pub name: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: usize,
    /// Pull requests waiting (a running service has some).
    pub waiting: usize,
    /// Dead letters it wrote that are still in the DLQ.
    pub dead_letters: usize,
}

/// A governor lane, from a service's metrics.
#[derive(Debug, Serialize)]
pub struct LaneStatus {
    /// `target:identity`.
    pub lane: String,
    /// Requests in flight.
    pub in_flight: f64,
    /// 429s seen.
    pub throttled: f64,
    /// The rate the lane has learned from 429s, requests per second (the configured rate
    /// until a 429; absent when the lane is not adaptive).
    pub learned_rate: Option<f64>,
}

/// The TG feed poller's cursor (`tgb_cursors` `tg.events`).
#[derive(Debug, Serialize)]
pub struct FeedStatus {
    /// `[tg_ingress] start_from` as it was at first start (absent for a cursor written before
    /// the setting existed).
    pub start_from: Option<String>,
    /// Events older than this were not published during the catch-up.
    pub not_before: Option<String>,
    /// When the poller first started.
    pub started_at: Option<String>,
    /// Whether it has read the feed to its end since then.
    pub caught_up: bool,
    /// Old events read and not published.
    pub skipped: u64,
    /// The `after` of the next poll.
    pub cursor: String,
}

/// `tgb status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The NATS server's version.
    pub nats_version: String,
    /// tg-bridge's streams (and KV buckets).
    pub streams: Vec<StreamStatus>,
    /// The durable consumers of `TGB_EVENTS`.
    pub consumers: Vec<ConsumerStatus>,
    /// Messages in `TGB_DLQ`.
    pub dlq_depth: u64,
    /// Governor lanes (from `--metrics`), if any.
    pub governors: Vec<LaneStatus>,
    /// Where the governor state came from, or why there is none.
    pub governors_note: String,
    /// The TG feed poller's start position and cursor; `None` before its first start.
    pub tg_feed: Option<FeedStatus>,
}

/// `tgb status`: streams, consumers, DLQ depth, and the governor lanes read from the given
/// services' `/metrics` (services do not publish governor state on NATS).
pub async fn status(
    client: &async_nats::Client,
    js: &jetstream::Context,
    metrics: &[String],
) -> anyhow::Result<Status> {
    let mut streams = Vec::new();
    let mut infos = js.streams();
    while let Some(info) = infos.try_next().await.context("listing streams")? {
        let name = info.config.name.clone();
        if !(name.starts_with("TGB_")
            || name.starts_with("KV_tgb_")
            || name.starts_with("OBJ_tgb_"))
        {
            continue;
        }
        streams.push(StreamStatus {
            name,
            messages: info.state.messages,
            bytes: info.state.bytes,
            consumers: info.state.consumer_count,
            last: if info.state.messages > 0 {
                rfc3339(info.state.last_timestamp)
            } else {
                String::new()
            },
        });
    }
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    if !streams.iter().any(|s| s.name == names::EVENTS_STREAM) {
        bail!(
            "no {} stream at this NATS: tg-bridge has not run against it (start it with `tgb up`)",
            names::EVENTS_STREAM
        );
    }
    let dlq = stream(js, names::DLQ_STREAM).await?;
    let mut dead_by_consumer: BTreeMap<String, usize> = BTreeMap::new();
    let mut subjects = dlq.info_with_subjects(names::DLQ_SUBJECTS).await?;
    while let Some((subject, n)) = subjects.try_next().await? {
        let consumer = subject.split('.').nth(2).unwrap_or_default().to_owned();
        *dead_by_consumer.entry(consumer).or_insert(0) += n;
    }
    let dlq_depth = streams
        .iter()
        .find(|s| s.name == names::DLQ_STREAM)
        .map(|s| s.messages)
        .unwrap_or(0);
    let events = stream(js, names::EVENTS_STREAM).await?;
    let mut consumers = Vec::new();
    let mut list = events.consumers();
    while let Some(c) = list.try_next().await.context("listing consumers")? {
        if c.config.durable_name.is_none() {
            continue;
        }
        consumers.push(ConsumerStatus {
            dead_letters: dead_by_consumer.get(&c.name).copied().unwrap_or(0),
            name: c.name,
            pending: c.num_pending,
            ack_pending: c.num_ack_pending,
            redelivered: c.num_redelivered,
            waiting: c.num_waiting,
        });
    }
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    let (governors, governors_note) = if metrics.is_empty() {
        (
            Vec::new(),
            "services do not publish their governor state on NATS; pass --metrics \
             http://HOST:PORT/metrics (a service of `tgb up` shows every lane of the process)"
                .to_owned(),
        )
    } else {
        let mut lanes = BTreeMap::<String, LaneStatus>::new();
        let http = reqwest::Client::new();
        for url in metrics {
            let text = http
                .get(url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("cannot read {url}"))?
                .text()
                .await?;
            for (metric, lane, value) in governor_samples(&text) {
                let entry = lanes.entry(lane.clone()).or_insert(LaneStatus {
                    lane,
                    in_flight: 0.0,
                    throttled: 0.0,
                    learned_rate: None,
                });
                match metric.as_str() {
                    "tgb_governor_in_flight" => entry.in_flight = value,
                    "tgb_governor_throttled_total" => entry.throttled = value,
                    "tgb_governor_learned_rate" => entry.learned_rate = Some(value),
                    _ => {}
                }
            }
        }
        let note = if lanes.is_empty() {
            "no governor lane in those metrics yet (no call to Dataverse or Graph so far)".into()
        } else {
            format!("from {}", metrics.join(", "))
        };
        (lanes.into_values().collect(), note)
    };
    let tg_feed = match js.get_key_value(names::KV_CURSORS).await {
        Ok(kv) => kv
            .get(tg_ingress::poller::CURSOR_KEY)
            .await
            .context("reading the TG feed cursor")?
            .map(|v| {
                let c = tg_ingress::poller::FeedCursor::parse(&v);
                FeedStatus {
                    start_from: c.start_from,
                    not_before: c.not_before,
                    started_at: c.started_at,
                    caught_up: c.caught_up,
                    skipped: c.skipped,
                    cursor: c.after,
                }
            }),
        Err(_) => None,
    };
    Ok(Status {
        nats_version: client.server_info().version,
        streams,
        consumers,
        dlq_depth,
        governors,
        governors_note,
        tg_feed,
    })
}

/// `(metric, lane, value)` of the governor samples of a Prometheus text page.
pub fn governor_samples(text: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = name_labels.split_once('{') else {
            continue;
        };
        if !name.starts_with("tgb_governor_") {
            continue;
        }
        let lane = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("lane=\""))
            .map(|l| l.trim_end_matches('}').trim_end_matches('"').to_owned());
        if let (Some(lane), Ok(v)) = (lane, value.trim().parse::<f64>()) {
            out.push((name.to_owned(), lane, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_specs_resolve_to_system_kinds_and_id() {
        let (s, k, id) = parse_record("tg:C-10001").unwrap();
        assert_eq!((s.as_str(), id.as_str()), ("tg", "C-10001"));
        assert!(k.contains(&"case".to_owned()));
        let (s, k, id) = parse_record("dataverse:incident:abc").unwrap();
        assert_eq!(
            (s.as_str(), k, id.as_str()),
            ("dataverse", vec!["incident".to_owned()], "abc")
        );
        let (_, k, id) = parse_record("tg:ZZ:ACME01").unwrap();
        assert_eq!((k, id.as_str()), (vec!["partner".to_owned()], "ZZ:ACME01"));
        assert!(parse_record("nocolon").is_err());
    }

    #[test]
    fn since_takes_relative_and_absolute_times() {
        let now = tgb_proto::timestamps::parse_rfc3339("2026-11-21T10:00:00Z").unwrap();
        assert_eq!(
            rfc3339(parse_since("15m", now).unwrap()),
            "2026-11-21T09:45:00Z"
        );
        assert_eq!(
            rfc3339(parse_since("2h", now).unwrap()),
            "2026-11-21T08:00:00Z"
        );
        assert_eq!(
            rfc3339(parse_since("2026-11-20T00:00:00Z", now).unwrap()),
            "2026-11-20T00:00:00Z"
        );
        assert!(parse_since("soon", now).is_err());
    }

    #[test]
    fn governor_lanes_are_read_from_prometheus_text() {
        let text = "# TYPE tgb_governor_in_flight gauge\n\
                    tgb_governor_in_flight{lane=\"dataverse:tgb-bridge\"} 3\n\
                    tgb_governor_throttled_total{lane=\"graph:tgb-bridge\"} 2\n\
                    tgb_governor_learned_rate{lane=\"graph:tgb-bridge\"} 4.5\n\
                    tgb_other{lane=\"x\"} 1\n";
        let s = governor_samples(text);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[2],
            (
                "tgb_governor_learned_rate".into(),
                "graph:tgb-bridge".into(),
                4.5
            )
        );
        assert_eq!(
            s[0],
            (
                "tgb_governor_in_flight".into(),
                "dataverse:tgb-bridge".into(),
                3.0
            )
        );
    }

    #[test]
    fn nats_wildcards_match_as_the_server_does() {
        assert!(subject_matches(
            "tgb.v1.dyn.case.note_added",
            "tgb.v1.dyn.case.note_added"
        ));
        assert!(subject_matches(
            "tgb.v1.dyn.case.*",
            "tgb.v1.dyn.case.note_added"
        ));
        assert!(subject_matches("tgb.v1.>", "tgb.v1.dyn.case.note_added"));
        assert!(!subject_matches("tgb.v1.>", "tgb.v1"));
        assert!(!subject_matches(
            "tgb.v1.dyn.case.*",
            "tgb.v1.dyn.case.note_added.x"
        ));
        assert!(!subject_matches(
            "tgb.v1.dyn.case.note_added",
            "tgb.v1.tg.case.opened"
        ));
        assert!(!subject_matches(
            "tgb.v1.dyn.case",
            "tgb.v1.dyn.case.note_added"
        ));
    }

    #[test]
    fn replays_get_a_new_message_id_per_dead_letter() {
        assert_eq!(replay_msg_id(7, "01J"), "replay:dlq:7:01J");
        assert_ne!(replay_msg_id(7, "01J"), replay_msg_id(8, "01J"));
    }
}
