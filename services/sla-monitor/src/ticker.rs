//! The ticker: every `tick_interval_ms`, every clock in `tgb_sla` is evaluated at the clock
//! source's "now" and what fell due is published.
//!
//! Exactly once per (case, target, level), across restarts and replicas:
//! 1. the event id is derived from the case, the clock's start, the target and the level, so
//!    two publishes of the same breach are one message (JetStream `Nats-Msg-Id`, duplicate
//!    window ≥ 1 h) and one TG comment (`Idempotency-Key`);
//! 2. only after the PubAck is the breach marked in the clock (compare-and-set), so a crash in
//!    between republishes the same id at the next tick: nothing is lost;
//! 3. the first tick runs at start, so a restarted or second replica is at most one tick late.
//!
//! A breach level that fell due before a backfill replayed the case's history is marked without
//! being published (`tgb_sla_history_breaches_total` counts them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tgb_bus::Publisher;
use tgb_proto as pb;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::policy::{Policies, priority_of};
use crate::state::{CaseClock, Due, Target};
use crate::store::{Cache, Change, Clocks};
use tgb_proto::timestamps::timestamp;

/// At most this many case ids are listed in a partner impact.
const IMPACT_IDS: usize = 20;

/// What the ticker has done: `GET /sla/ticker`.
#[derive(Debug, Default)]
pub struct TickerStatus {
    /// Completed evaluations.
    pub ticks: AtomicU64,
    /// The clock source's time of the last completed evaluation (Unix ms).
    pub evaluated_at_ms: AtomicU64,
    /// How long the last evaluation took (wall time, µs).
    pub took_us: AtomicU64,
    /// Clocks the last evaluation looked at.
    pub clocks: AtomicU64,
}

/// Evaluates clocks and publishes warnings and breaches.
pub struct Ticker {
    clocks: Clocks,
    cache: Arc<Cache>,
    publisher: Publisher,
    policies: Arc<Policies>,
    clock: Arc<dyn Clock>,
    status: Arc<TickerStatus>,
    /// Partners whose open-clock gauge was set, so it drops to 0 when their last case closes.
    gauged: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// A partner's open cases.
#[derive(Default)]
struct Impact {
    open: u32,
    ids: Vec<String>,
}

impl Ticker {
    /// A ticker over `clocks`.
    pub fn new(
        clocks: Clocks,
        cache: Arc<Cache>,
        publisher: Publisher,
        policies: Arc<Policies>,
        clock: Arc<dyn Clock>,
        status: Arc<TickerStatus>,
    ) -> Self {
        Ticker {
            clocks,
            cache,
            publisher,
            policies,
            clock,
            status,
            gauged: std::sync::Mutex::default(),
        }
    }

    /// Ticks until `shutdown`, from the moment the cache holds every clock. A failed tick is
    /// logged and retried at the next one.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.cache.wait_synced(&shutdown).await;
        let every = Duration::from_millis(self.policies.settings().tick_interval_ms);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "SLA tick failed; retrying at the next tick"
                );
            }
        }
    }

    /// One evaluation of every clock.
    pub async fn tick(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let all = self.cache.snapshot();
        let mut impacts: BTreeMap<String, Impact> = BTreeMap::new();
        for (_, c) in all.iter().filter(|(_, c)| c.is_open()) {
            let i = impacts.entry(c.partner.key()).or_default();
            i.open += 1;
            if i.ids.len() < IMPACT_IDS {
                i.ids.push(c.case_id.clone());
            }
        }
        {
            let mut gauged = self.gauged.lock().unwrap();
            for partner in gauged.iter().filter(|p| !impacts.contains_key(*p)) {
                metrics::gauge!("tgb_sla_open_clocks", "partner" => partner.clone()).set(0.0);
            }
            gauged.clear();
            for (partner, i) in &impacts {
                metrics::gauge!("tgb_sla_open_clocks", "partner" => partner.clone())
                    .set(f64::from(i.open));
                gauged.insert(partner.clone());
            }
        }
        let retain = time::Duration::hours(
            i64::try_from(self.policies.settings().retain_stopped_hours).unwrap_or(24),
        );
        for (key, clock) in &all {
            if let Some(stopped) = clock.stopped_at {
                if now - stopped > retain {
                    self.clocks.remove_if_unchanged(key, clock).await?;
                }
                continue;
            }
            let policy = self.policies.get(&clock.tier, &clock.priority);
            for due in clock.due(policy, now) {
                let impact = impacts.get(&clock.partner.key());
                self.emit(key, clock, &due, impact).await?;
            }
        }
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.status.took_us.store(took, Ordering::SeqCst);
        self.status.clocks.store(all.len() as u64, Ordering::SeqCst);
        self.status.ticks.fetch_add(1, Ordering::SeqCst);
        let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        self.status.evaluated_at_ms.store(ms, Ordering::SeqCst);
        Ok(())
    }

    fn meta(&self, clock: &CaseClock, id: String, occurred: OffsetDateTime) -> pb::EventMeta {
        pb::EventMeta {
            event_id: id,
            occurred_at: Some(timestamp(occurred)),
            origin: pb::Origin::Sla as i32,
            correlation_id: clock.correlation_id.clone(),
            causation_id: String::new(),
            partner: (!clock.partner.key().is_empty()).then(|| pb::PartnerRef {
                qualifier: clock.partner.qualifier.clone(),
                id: clock.partner.id.clone(),
                name: clock.partner.name.clone(),
            }),
            entity: Some(pb::EntityRef::new("tg", "case", clock.case_id.clone())),
            entity_version: String::new(),
            replayed_at: None,
        }
    }

    /// Publishes one due warning or breach, then marks it in the clock. The clock is read again
    /// first: a change the cache has not seen yet (a reply, a pause, a resolution) wins.
    async fn emit(
        &self,
        key: &str,
        cached: &CaseClock,
        due: &Due,
        impact: Option<&Impact>,
    ) -> anyhow::Result<()> {
        let policy = self.policies.get(&cached.tier, &cached.priority);
        let mark = due.key(policy);
        let (Some(clock), _) = self.clocks.read(key).await? else {
            return Ok(());
        };
        let fresh = self.policies.get(&clock.tier, &clock.priority);
        let Some(due) = clock
            .due(fresh, self.clock.now())
            .into_iter()
            .find(|d| d.key(fresh) == mark)
        else {
            return Ok(());
        };
        let (clock, due, policy) = (&clock, &due, fresh);
        if due.is_history(clock) {
            // Missed before tg-bridge watched the case (a backfill replayed it): recorded, not
            // escalated, so day one does not raise every old case's breaches at once.
            metrics::counter!("tgb_sla_history_breaches_total", "partner" => clock.partner.key())
                .increment(1);
            tracing::debug!(case_id = %clock.case_id, mark, "SLA breach fell due before the replayed history ended; recorded, not raised");
            return self.mark(key, clock, &mark).await;
        }
        let started = clock.started_at.unix_timestamp_nanos().to_string();
        let impact = pb::PartnerImpact {
            tier: clock.tier.clone(),
            open_cases: impact.map_or(1, |i| i.open),
            open_case_ids: impact.map_or_else(|| vec![clock.case_id.clone()], |i| i.ids.clone()),
        };
        let priority = priority_of(&clock.priority) as i32;
        let target_pb = |t: Target| match t {
            Target::FirstResponse => pb::SlaTarget::FirstResponse as i32,
            Target::Resolution => pb::SlaTarget::Resolution as i32,
        };
        let partner = clock.partner.key();
        let (published, level_label) = match due {
            Due::Warning {
                target,
                due_at,
                permille,
            } => {
                let id =
                    tgb_bus::ids::derived(clock.started_at, &[&clock.case_id, &started, &mark]);
                let event = pb::SlaWarning {
                    meta: Some(self.meta(clock, id, self.clock.now())),
                    case_id: clock.case_id.clone(),
                    target: target_pb(*target),
                    priority,
                    due_at: Some(timestamp(*due_at)),
                    elapsed_permille: *permille,
                    impact: Some(impact),
                };
                (self.publisher.publish(&event).await?, "1".to_owned())
            }
            Due::Breach {
                target,
                due_at,
                level_at,
                index,
            } => {
                let level = &policy.escalation[*index];
                let id =
                    tgb_bus::ids::derived(clock.started_at, &[&clock.case_id, &started, &mark]);
                let mut next_steps = level.next_steps.clone();
                if next_steps.is_empty() {
                    next_steps.push(format!(
                        "Escalated to {}: contact the partner about case {}",
                        if level.team.is_empty() {
                            "the next level"
                        } else {
                            &level.team
                        },
                        clock.case_id
                    ));
                }
                let event = pb::SlaBreached {
                    meta: Some(self.meta(clock, id, *level_at)),
                    case_id: clock.case_id.clone(),
                    target: target_pb(*target),
                    priority,
                    due_at: Some(timestamp(*due_at)),
                    breached_at: Some(timestamp(*level_at)),
                    level: level.level,
                    escalate_to: Some(pb::EscalationTarget {
                        level: level.level,
                        plan_id: level.plan_id.clone(),
                        bucket_id: level.bucket_id.clone(),
                        assignees: level.assignees.clone(),
                        team: level.team.clone(),
                    }),
                    impact: Some(impact),
                    case_title: clock.title.clone(),
                    next_steps,
                    partner_notice: self.policies.partner_notice(
                        level,
                        &clock.case_id,
                        &clock.title,
                        target.words(),
                    ),
                };
                tracing::info!(case_id = %clock.case_id, target = target.key(), level = level.level, "SLA breached");
                (
                    self.publisher.publish(&event).await?,
                    level.level.to_string(),
                )
            }
        };
        if !published.duplicate {
            match due {
                Due::Warning { .. } => {
                    metrics::counter!("tgb_sla_warnings_total", "partner" => partner, "level" => level_label)
                        .increment(1);
                }
                Due::Breach { index, .. } => {
                    // `top`: the last level of this case's policy (policies may have different
                    // numbers of levels), so an alert need not know the configuration.
                    let top = (*index + 1 == policy.escalation.len()).to_string();
                    metrics::counter!("tgb_sla_breaches_total", "partner" => partner, "level" => level_label, "top" => top)
                        .increment(1);
                }
            }
        }
        self.mark(key, clock, &mark).await
    }

    /// Marks `mark` in the clock of `key` (unless it was restarted meanwhile).
    async fn mark(&self, key: &str, clock: &CaseClock, mark: &str) -> anyhow::Result<()> {
        self.clocks
            .update(key, |current| match current {
                Some(mut c) if c.started_at == clock.started_at && !c.emitted.contains(mark) => {
                    c.emitted.insert(mark.to_owned());
                    Change::Put(c, ())
                }
                _ => Change::Keep(()),
            })
            .await?;
        Ok(())
    }
}
