//! The typed consumer runner over a durable pull consumer of `TGB_EVENTS`.
//!
//! Each message is decoded once, handled, then acknowledged according to the handler's answer:
//!
//! | answer | what the runner does |
//! |---|---|
//! | `Ok` | ack (confirmed by the server) |
//! | `Transient` | nak with a delay: the handler's retry-after, else a delay doubling per delivery; on the last allowed delivery, dead-letter instead |
//! | `Permanent` | copy to `TGB_DLQ` with the reason, then term |
//! | undecodable bytes | copy to `TGB_DLQ`, then term |
//! | `Fatal` | nak, stop pulling, finish in-flight work and return the error |
//!
//! Messages of one entity ([`tgb_proto::Event::entity_key`]) are handled one at a time, in
//! delivery order, by this process; other entities proceed in parallel up to `concurrency`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::pull};
use futures::StreamExt;
use tgb_proto::Event;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::Bus;
use crate::ledger::{self, Decision, LedgerEntry, Noted};
use crate::{names, trace};

/// How a durable consumer is declared. Every setting is explicit.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Durable name; also the `tgb-consumer` of its dead letters. Letters, digits, `-`, `_`.
    pub name: String,
    /// Shown by `nats consumer info` and `tgb status`.
    pub description: String,
    /// The subjects it handles (wildcards allowed).
    pub filter_subjects: Vec<String>,
    /// Deliveries before a message that keeps failing transiently is dead-lettered.
    pub max_deliver: i64,
    /// Time the server waits for an ack before redelivering (extended while a handler runs).
    pub ack_wait: Duration,
    /// Handlers running at once in this process.
    pub concurrency: usize,
    /// Messages delivered and not yet acknowledged, across all replicas.
    pub max_ack_pending: i64,
    /// Nak delay after the first failed delivery; doubles with each delivery.
    pub backoff_base: Duration,
    /// Ceiling of the nak delay.
    pub backoff_max: Duration,
}

impl ConsumerSpec {
    /// A spec with the defaults: 8 deliveries, 30 s ack wait, 16 at once, 1 s → 60 s backoff.
    pub fn new(name: impl Into<String>, filter_subjects: &[&str]) -> Self {
        let name = name.into();
        ConsumerSpec {
            description: format!("tg-bridge consumer {name}"),
            name,
            filter_subjects: filter_subjects.iter().map(|s| (*s).to_owned()).collect(),
            max_deliver: 8,
            ack_wait: Duration::from_secs(30),
            concurrency: 16,
            max_ack_pending: 1024,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }

    /// The nak delay after delivery number `delivered` (1-based) failed.
    pub fn backoff(&self, delivered: i64) -> Duration {
        let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max)
    }
}

/// A decoded message handed to a handler.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The subject it arrived on.
    pub subject: String,
    /// 1 on the first delivery.
    pub deliveries: i64,
    /// Its sequence in `TGB_EVENTS`.
    pub stream_sequence: u64,
    /// When JetStream stored it.
    pub published: time::OffsetDateTime,
    /// Its headers.
    pub headers: HeaderMap,
}

/// How a handler failed; decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying later (a 429, a 503, a timeout); `retry_after` overrides the backoff.
    #[error("transient: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (a 400, a 403, invalid content): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The worker cannot go on (misconfiguration): stop the consumer.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl HandlerError {
    /// A transient failure with the default backoff.
    pub fn transient(reason: impl std::fmt::Display) -> Self {
        HandlerError::Transient {
            reason: reason.to_string(),
            retry_after: None,
        }
    }

    /// A transient failure to retry after `delay` (e.g. a `Retry-After`).
    pub fn retry_after(reason: impl std::fmt::Display, delay: Duration) -> Self {
        HandlerError::Transient {
            reason: reason.to_string(),
            retry_after: Some(delay),
        }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(reason.to_string())
    }
}

/// Handles one event. Must be idempotent: a message can be delivered again after a crash.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery; see [`HandlerError`] for what each failure causes.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("consumer {consumer}: cannot set up: {reason}")]
    Setup { consumer: String, reason: String },
    #[error("consumer {consumer} stopped: {reason}")]
    Fatal { consumer: String, reason: String },
}

struct Job {
    message: Message,
    event: Event,
    seq: u64,
}

struct Runner<H> {
    spec: ConsumerSpec,
    handler: Arc<H>,
    js: jetstream::Context,
    /// Entities being handled, with the messages waiting behind the one in flight.
    busy: Mutex<HashMap<String, VecDeque<Job>>>,
    /// Stream sequences held by this process (in flight or queued).
    held: Mutex<HashSet<u64>>,
    fatal: CancellationToken,
    fatal_reason: Mutex<Option<String>>,
}

/// Runs `handler` over the durable consumer `spec` until `shutdown` is cancelled (then finishes
/// in-flight messages and returns `Ok`) or a handler reports a fatal error.
pub async fn run_consumer<H: Handler>(
    bus: &Bus,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let setup = |reason: String| ConsumerError::Setup {
        consumer: spec.name.clone(),
        reason,
    };
    let js = bus.jetstream().clone();
    let stream = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(spec.name.clone()),
            description: Some(spec.description.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: spec.max_deliver,
            filter_subjects: spec.filter_subjects.clone(),
            max_ack_pending: spec.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| setup(e.to_string()))?;

    let runner = Arc::new(Runner {
        spec: spec.clone(),
        handler,
        js,
        busy: Mutex::new(HashMap::new()),
        held: Mutex::new(HashSet::new()),
        fatal: CancellationToken::new(),
        fatal_reason: Mutex::new(None),
    });
    let permits = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    // Workers live in a JoinSet: if this future is dropped (the process is going down hard),
    // they are aborted with it and their messages are redelivered, as after a crash.
    let mut workers = JoinSet::new();
    let batch = spec.concurrency.clamp(1, 256);

    'outer: while !shutdown.is_cancelled() && !runner.fatal.is_cancelled() {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = %spec.name, error = %e, "cannot pull, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        loop {
            while workers.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = shutdown.cancelled() => break 'outer,
                _ = runner.fatal.cancelled() => break 'outer,
            };
            let next = tokio::select! {
                m = messages.next() => m,
                _ = shutdown.cancelled() => break 'outer,
                _ = runner.fatal.cancelled() => break 'outer,
            };
            match next {
                Some(Ok(message)) => runner.clone().dispatch(message, permit, &mut workers),
                Some(Err(e)) => {
                    tracing::debug!(consumer = %spec.name, error = %e, "pull stream error");
                }
                None => break,
            }
        }
    }
    while workers.join_next().await.is_some() {}
    match runner.fatal_reason.lock().unwrap().take() {
        Some(reason) => Err(ConsumerError::Fatal {
            consumer: spec.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

impl<H: Handler> Runner<H> {
    fn dispatch(
        self: Arc<Self>,
        message: Message,
        permit: OwnedSemaphorePermit,
        workers: &mut JoinSet<()>,
    ) {
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(_) => (0, 0),
        };
        metrics::gauge!("tgb_consumer_pending", "consumer" => self.spec.name.clone())
            .set(pending as f64);
        let subject = message.subject.to_string();
        metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject.clone(), "outcome" => "consumed").increment(1);
        let event = match Event::decode(&subject, &message.payload) {
            Ok(event) => event,
            Err(e) => {
                let runner = self.clone();
                workers.spawn(async move {
                    let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
                    runner
                        .dead_letter(&message, "undecodable", &e.to_string(), deliveries)
                        .await;
                    drop(permit);
                });
                return;
            }
        };
        let key = match event.entity_key() {
            k if k.is_empty() => format!("seq:{seq}"),
            k => k,
        };
        {
            let mut held = self.held.lock().unwrap();
            if !held.insert(seq) {
                // A redelivery of a message this process still holds: the held copy will be
                // acknowledged; handling both would only race.
                return;
            }
        }
        let job = Job {
            message,
            event,
            seq,
        };
        {
            let mut busy = self.busy.lock().unwrap();
            if let Some(queue) = busy.get_mut(&key) {
                queue.push_back(job);
                return;
            }
            busy.insert(key.clone(), VecDeque::new());
        }
        let runner = self.clone();
        workers.spawn(async move {
            let mut next = Some(job);
            while let Some(job) = next {
                let seq = job.seq;
                runner.process(job).await;
                runner.held.lock().unwrap().remove(&seq);
                let mut busy = runner.busy.lock().unwrap();
                next = busy.get_mut(&key).and_then(VecDeque::pop_front);
                if next.is_none() {
                    busy.remove(&key);
                }
            }
            drop(permit);
        });
    }

    async fn process(&self, job: Job) {
        let Job {
            message,
            event,
            seq,
        } = job;
        let subject = message.subject.to_string();
        let info = message.info().ok();
        let deliveries = info.as_ref().map(|i| i.delivered).unwrap_or(1);
        let published = info
            .as_ref()
            .map(|i| i.published)
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        let headers = message.headers.clone().unwrap_or_default();
        let event_id = event.meta().map(|m| m.event_id.clone()).unwrap_or_default();
        let span = tracing::info_span!(
            "consume",
            otel.name = %format!("{} {}", self.spec.name, subject),
            otel.kind = "consumer",
            consumer = %self.spec.name,
            subject = %subject,
            event_id = %event_id,
            deliveries,
        );
        trace::set_parent_from(&span, &headers);
        let delivery = Delivery {
            event,
            subject: subject.clone(),
            deliveries,
            stream_sequence: seq,
            published,
            headers,
        };
        let labels = [
            ("consumer", self.spec.name.clone()),
            ("subject", subject.clone()),
        ];
        if deliveries > 1 {
            metrics::counter!("tgb_consumer_redeliveries_total", &labels).increment(1);
        }
        let started = Instant::now();
        let meta = delivery.event.meta().cloned().unwrap_or_default();
        let trace_id = delivery
            .headers
            .get("traceparent")
            .map(|v| ledger::trace_id_of(v.as_str()))
            .unwrap_or_default();
        let (result, noted) = {
            let handling = ledger::NOTED.scope(RefCell::new(Noted::default()), async {
                let r = self.handler.handle(delivery).await;
                (
                    r,
                    ledger::NOTED.with(|n| std::mem::take(&mut *n.borrow_mut())),
                )
            });
            let handling = handling.instrument(span.clone());
            tokio::pin!(handling);
            let mut progress = tokio::time::interval(self.spec.ack_wait / 2);
            progress.tick().await;
            loop {
                tokio::select! {
                    r = &mut handling => break r,
                    _ = progress.tick() => {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        };
        metrics::histogram!("tgb_handler_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        let decision = match (&result, noted.decision) {
            (Ok(()), Some((d, detail))) => (d, detail),
            (Ok(()), None) => (Decision::Applied, String::new()),
            (Err(HandlerError::Transient { reason, .. }), _)
                if deliveries < self.spec.max_deliver =>
            {
                (Decision::Retried, reason.clone())
            }
            (Err(e), _) => (Decision::DeadLettered, e.to_string()),
        };
        let (target, response) = noted.target.unwrap_or_default();
        let entry = LedgerEntry {
            at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            consumer: self.spec.name.clone(),
            subject: subject.clone(),
            event_id,
            correlation_id: meta.correlation_id.clone(),
            entity: meta.entity_key(),
            entity_version: meta.entity_version.clone(),
            deliveries,
            decision: decision.0,
            detail: decision.1,
            target,
            response,
            trace_id,
        };
        if !matches!(result, Err(HandlerError::Fatal(_))) {
            ledger::append(&self.js, &entry).await;
        }
        metrics::counter!("tgb_decisions_total", "consumer" => self.spec.name.clone(), "decision" => entry.decision.as_str()).increment(1);
        let _enter = span.enter();
        match result {
            Ok(()) => match message.double_ack().await {
                Ok(()) => {
                    metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject, "outcome" => "acked").increment(1);
                }
                Err(e) => {
                    // The effect is done; the redelivery will find it done (handlers are idempotent).
                    tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered");
                }
            },
            Err(HandlerError::Transient {
                reason,
                retry_after,
            }) => {
                if deliveries >= self.spec.max_deliver {
                    let reason = format!("gave up after {deliveries} deliveries: {reason}");
                    self.dead_letter(&message, "max_deliver", &reason, deliveries)
                        .await;
                } else {
                    let delay = retry_after.unwrap_or_else(|| self.spec.backoff(deliveries));
                    tracing::info!(%reason, ?delay, "transient failure, redelivery later");
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject, "outcome" => "nakked").increment(1);
                }
            }
            Err(HandlerError::Permanent(reason)) => {
                self.dead_letter(&message, "permanent", &reason, deliveries)
                    .await;
            }
            Err(HandlerError::Fatal(reason)) => {
                tracing::error!(%reason, "fatal handler error, stopping the consumer");
                let _ = message
                    .ack_with(AckKind::Nak(Some(self.spec.backoff_base)))
                    .await;
                *self.fatal_reason.lock().unwrap() = Some(reason);
                self.fatal.cancel();
            }
        }
    }

    /// Copies the message to `TGB_DLQ` with the reason, then terminates it. If the copy is not
    /// acknowledged, the message is nakked instead: it is never dropped.
    async fn dead_letter(&self, message: &Message, kind: &str, reason: &str, deliveries: i64) {
        let subject = message.subject.to_string();
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let mut headers = message.headers.clone().unwrap_or_default();
        // One dead letter per consumer and message, even if this runs twice after a crash.
        headers.insert(
            names::HDR_MSG_ID,
            format!("dlq:{}:{seq}", self.spec.name).as_str(),
        );
        headers.insert(names::HDR_ERROR_KIND, kind);
        headers.insert(names::HDR_ERROR, single_line(reason).as_str());
        headers.insert(names::HDR_CONSUMER, self.spec.name.as_str());
        headers.insert(names::HDR_DELIVERIES, deliveries.to_string().as_str());
        headers.insert(names::HDR_ORIGINAL_SUBJECT, subject.as_str());
        headers.insert(names::HDR_ORIGINAL_SEQ, seq.to_string().as_str());
        let published = async {
            self.js
                .publish_with_headers(
                    names::dlq_subject(&self.spec.name, &subject),
                    headers,
                    message.payload.clone(),
                )
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match published.await {
            Ok(_) => {
                tracing::warn!(consumer = %self.spec.name, %subject, kind, reason, "dead-lettered");
                let _ = message.double_ack_with(AckKind::Term).await;
                metrics::counter!("tgb_consumer_messages_total", "consumer" => self.spec.name.clone(), "subject" => subject, "outcome" => "dead_lettered").increment(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the dead letter; nakking instead");
                let _ = message
                    .ack_with(AckKind::Nak(Some(self.spec.backoff_max)))
                    .await;
            }
        }
    }
}

/// Header values are single lines.
fn single_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.chars().take(1024).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let spec = ConsumerSpec {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..ConsumerSpec::new("t", &["x"])
        };
        assert_eq!(spec.backoff(1), Duration::from_millis(100));
        assert_eq!(spec.backoff(2), Duration::from_millis(200));
        assert_eq!(spec.backoff(4), Duration::from_millis(800));
        assert_eq!(spec.backoff(5), Duration::from_secs(1));
        assert_eq!(spec.backoff(1000), Duration::from_secs(1));
    }
}
