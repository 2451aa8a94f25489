//! TG's webhook sender: Standard Webhooks signatures, several secrets, retries with
//! exponential backoff, pause/resume per subscription, delivery statistics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{RetryConfig, WebhookSubscriptionConfig};
use crate::tg::model::{TgEvent, now_rfc3339};

/// A secret that cannot be used for signing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Does not start with `whsec_`.
    #[error("a webhook secret must start with whsec_")]
    Prefix,
    /// The part after `whsec_` is not base64.
    #[error("the part after whsec_ is not valid base64")]
    Base64,
    /// No secret at all.
    #[error("at least one secret is needed")]
    Empty,
}

/// Decodes the key of a `whsec_…` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret.strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
    let key = STANDARD.decode(b64).map_err(|_| SecretError::Base64)?;
    if key.is_empty() {
        return Err(SecretError::Base64);
    }
    Ok(key)
}

/// One Standard Webhooks signature: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SecretError> {
    let key = secret_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SecretError::Base64)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header value: one entry per secret, space-separated.
pub fn signature_header(
    secrets: &[String],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SecretError> {
    if secrets.is_empty() {
        return Err(SecretError::Empty);
    }
    let sigs = secrets
        .iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(sigs.join(" "))
}

/// Byte comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.ct_eq(b).into()
}

/// Counters of one subscription.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Events handed to the subscription while active.
    pub events: u64,
    /// HTTP attempts made.
    pub attempts: u64,
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// Attempts that failed (non-2xx or a connection error).
    pub failed_attempts: u64,
    /// Events given up after the last attempt.
    pub gave_up: u64,
    /// Events not sent because the subscription was paused (they stay in the feed).
    pub skipped_paused: u64,
    /// Events not yet delivered nor given up.
    pub pending: u64,
}

/// One delivery attempt.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryAttempt {
    /// `webhook-id` (the event id).
    pub webhook_id: String,
    /// Event type.
    pub event_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// The connection error, if any.
    pub error: Option<String>,
    /// When.
    pub at: String,
}

/// A subscription as listed by the inspection API.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriptionView {
    /// Name.
    pub name: String,
    /// Receiver.
    pub url: String,
    /// Number of active secrets (never the secrets).
    pub secrets: usize,
    /// Paused?
    pub paused: bool,
    /// Counters.
    pub stats: DeliveryStats,
}

struct Subscription {
    name: String,
    url: String,
    secrets: Mutex<Vec<String>>,
    paused: watch::Sender<bool>,
    in_flight: Semaphore,
    stats: Mutex<DeliveryStats>,
    attempts: Mutex<Vec<DeliveryAttempt>>,
    cancel: CancellationToken,
}

/// The sender (shared, cheap to clone).
#[derive(Clone)]
pub struct WebhookSender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    subs: Mutex<Vec<Arc<Subscription>>>,
    retry: Mutex<RetryConfig>,
    client: reqwest::Client,
    cancel: CancellationToken,
    /// Deliveries run here even when an event is raised from outside the runtime.
    runtime: tokio::runtime::Handle,
}

impl WebhookSender {
    /// Must be called within a tokio runtime (deliveries are spawned on it).
    pub(crate) fn new(retry: RetryConfig, cancel: CancellationToken) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(SenderInner {
                subs: Mutex::new(Vec::new()),
                retry: Mutex::new(retry),
                client,
                cancel,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    fn find(&self, name: &str) -> Option<Arc<Subscription>> {
        self.inner
            .subs
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name)
            .cloned()
    }

    /// Adds (or replaces) a subscription.
    pub fn add(&self, config: WebhookSubscriptionConfig) -> Result<(), SecretError> {
        if config.secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        for s in &config.secrets {
            secret_key(s)?;
        }
        let max = self.inner.retry.lock().unwrap().max_in_flight.max(1);
        let sub = Arc::new(Subscription {
            name: config.name.clone(),
            url: config.url,
            secrets: Mutex::new(config.secrets),
            paused: watch::Sender::new(false),
            in_flight: Semaphore::new(max),
            stats: Mutex::new(DeliveryStats::default()),
            attempts: Mutex::new(Vec::new()),
            cancel: self.inner.cancel.child_token(),
        });
        let mut subs = self.inner.subs.lock().unwrap();
        if let Some(old) = subs.iter().position(|s| s.name == config.name) {
            subs.remove(old).cancel.cancel();
        }
        subs.push(sub);
        Ok(())
    }

    /// Removes a subscription (its pending retries stop).
    pub fn remove(&self, name: &str) -> bool {
        let mut subs = self.inner.subs.lock().unwrap();
        match subs.iter().position(|s| s.name == name) {
            Some(i) => {
                subs.remove(i).cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Replaces the active secrets (rotation); the next attempt signs with these.
    pub fn set_secrets(&self, name: &str, secrets: Vec<String>) -> Result<(), SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        for s in &secrets {
            secret_key(s)?;
        }
        let sub = self.find(name).ok_or(SecretError::Empty)?;
        *sub.secrets.lock().unwrap() = secrets;
        Ok(())
    }

    /// Pauses or resumes a subscription. While paused, new events only go to the feed and
    /// retries already scheduled wait for the resume.
    pub fn set_paused(&self, name: &str, paused: bool) -> bool {
        match self.find(name) {
            Some(sub) => {
                sub.paused.send_replace(paused);
                true
            }
            None => false,
        }
    }

    /// Changes the retry schedule for deliveries started from now on.
    pub fn set_retry(&self, retry: RetryConfig) {
        *self.inner.retry.lock().unwrap() = retry;
    }

    /// Counters of a subscription.
    pub fn stats(&self, name: &str) -> Option<DeliveryStats> {
        self.find(name).map(|s| s.stats.lock().unwrap().clone())
    }

    /// Every attempt made for a subscription, oldest first.
    pub fn deliveries(&self, name: &str) -> Option<Vec<DeliveryAttempt>> {
        self.find(name).map(|s| s.attempts.lock().unwrap().clone())
    }

    /// All subscriptions.
    pub fn subscriptions(&self) -> Vec<SubscriptionView> {
        self.inner
            .subs
            .lock()
            .unwrap()
            .iter()
            .map(|s| SubscriptionView {
                name: s.name.clone(),
                url: s.url.clone(),
                secrets: s.secrets.lock().unwrap().len(),
                paused: *s.paused.borrow(),
                stats: s.stats.lock().unwrap().clone(),
            })
            .collect()
    }

    /// Hands an event to every subscription.
    pub(crate) fn dispatch(&self, event: &TgEvent) {
        let Ok(body) = serde_json::to_vec(event) else {
            return;
        };
        let body = Bytes::from(body);
        let subs = self.inner.subs.lock().unwrap().clone();
        let retry = self.inner.retry.lock().unwrap().clone();
        for sub in subs {
            {
                let mut stats = sub.stats.lock().unwrap();
                if *sub.paused.borrow() {
                    stats.skipped_paused += 1;
                    continue;
                }
                stats.events += 1;
                stats.pending += 1;
            }
            let delivery = Delivery {
                sub,
                client: self.inner.client.clone(),
                retry: retry.clone(),
                id: event.id.clone(),
                kind: event.kind.clone(),
                body: body.clone(),
            };
            self.inner.runtime.spawn(delivery.run());
        }
    }
}

struct Delivery {
    sub: Arc<Subscription>,
    client: reqwest::Client,
    retry: RetryConfig,
    id: String,
    kind: String,
    body: Bytes,
}

impl Delivery {
    /// `base_ms · 2^(attempt-1)`, capped at `cap_ms`.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX);
        Duration::from_millis(
            self.retry
                .base_ms
                .saturating_mul(factor)
                .min(self.retry.cap_ms),
        )
    }

    /// The backoff, or the receiver's `Retry-After` when longer (both capped at `cap_ms`).
    fn delay(&self, attempt: u32, retry_after_secs: Option<u64>) -> Duration {
        let asked = Duration::from_secs(retry_after_secs.unwrap_or(0))
            .min(Duration::from_millis(self.retry.cap_ms));
        self.backoff(attempt).max(asked)
    }

    async fn run(self) {
        let cancel = self.sub.cancel.clone();
        let mut attempt = 0u32;
        loop {
            // Wait while paused.
            let mut paused = self.sub.paused.subscribe();
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = paused.wait_for(|p| !*p) => if r.is_err() { return },
            }
            let outcome = {
                let Ok(_permit) = self.sub.in_flight.acquire().await else {
                    return;
                };
                attempt += 1;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    o = self.attempt() => o,
                }
            };
            let retry_after = outcome.as_ref().ok().and_then(|(_, ra)| *ra);
            let outcome = outcome.map(|(status, _)| status);
            let ok = matches!(outcome, Ok(s) if (200..300).contains(&s));
            {
                let mut stats = self.sub.stats.lock().unwrap();
                stats.attempts += 1;
                if ok {
                    stats.delivered += 1;
                    stats.pending -= 1;
                } else {
                    stats.failed_attempts += 1;
                    if attempt >= self.retry.max_attempts {
                        stats.gave_up += 1;
                        stats.pending -= 1;
                    }
                }
            }
            self.sub.attempts.lock().unwrap().push(DeliveryAttempt {
                webhook_id: self.id.clone(),
                event_type: self.kind.clone(),
                attempt,
                status: outcome.as_ref().ok().copied(),
                error: outcome.err(),
                at: now_rfc3339(),
            });
            if ok || attempt >= self.retry.max_attempts {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.delay(attempt, retry_after)) => {}
            }
        }
    }

    async fn attempt(&self) -> Result<(u16, Option<u64>), String> {
        let secrets = self.sub.secrets.lock().unwrap().clone();
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = signature_header(&secrets, &self.id, timestamp, &self.body)
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .post(&self.sub.url)
            .timeout(Duration::from_millis(self.retry.attempt_timeout_ms))
            .header("content-type", "application/json")
            .header("webhook-id", &self.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok((response.status().as_u16(), retry_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(base_ms: u64, cap_ms: u64) -> Delivery {
        let sub = Arc::new(Subscription {
            name: "s".into(),
            url: "http://127.0.0.1:1".into(),
            secrets: Mutex::new(vec![]),
            paused: watch::Sender::new(false),
            in_flight: Semaphore::new(1),
            stats: Mutex::new(DeliveryStats::default()),
            attempts: Mutex::new(vec![]),
            cancel: CancellationToken::new(),
        });
        Delivery {
            sub,
            client: reqwest::Client::new(),
            retry: RetryConfig {
                base_ms,
                cap_ms,
                ..RetryConfig::default()
            },
            id: "evt_1".into(),
            kind: "case.created".into(),
            body: Bytes::new(),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let d = delivery(100, 1_000);
        let delays: Vec<u128> = (1..=6).map(|a| d.backoff(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(
            d.backoff(200).as_millis(),
            1_000,
            "no overflow on long runs"
        );
    }

    #[test]
    fn a_longer_retry_after_wins_but_never_beyond_the_cap() {
        let d = delivery(100, 5_000);
        assert_eq!(d.delay(1, Some(2)).as_millis(), 2_000);
        assert_eq!(d.delay(1, Some(60)).as_millis(), 5_000);
        assert_eq!(d.delay(3, None).as_millis(), 400);
    }
}
