use std::sync::Arc;
use std::time::Duration;

use sla_monitor::ManualClock;
use tgb_bus::async_nats::jetstream::consumer;
use tgb_bus::{Bus, BusConfig};
use tgb_proto as pb;
use tgb_proto::BusEvent;
use tgb_runtime::Config;
use tgb_sandbox::TgbEnv;
use tgb_testkit::{NatsServer, eventually};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Tick every 20 ms; urgent: first response 60 min, resolution 480 min, warning at 80 %;
/// level 1 at the target (partner told), level 2 two hours later.
pub const POLICY: &str = r#"
[sla]
tick_interval_ms = 20
default_tier = "standard"
warning_percent = 80
partner_notice = "Case {case_id} passed its {target} target. {team} now own it and will contact you."
tiers = { "ZZ:GOLD01" = "gold" }

[[sla.escalation]]
level = 1
after_mins = 0
team = "Service supervisors"
plan_id = "plan-supervisors"
assignees = ["sup-1"]
notify_partner = true
next_steps = ["Call the partner", "Agree a resolution date"]

[[sla.escalation]]
level = 2
after_mins = 120
team = "Exception management"
plan_id = "plan-exceptions"

[sla.policies.standard.urgent]
first_response_mins = 60
resolution_mins = 480
[sla.policies.standard.high]
first_response_mins = 120
resolution_mins = 1440
[sla.policies.standard.normal]
first_response_mins = 240
resolution_mins = 2880
[sla.policies.standard.low]
first_response_mins = 480
resolution_mins = 5760

[sla.policies.gold.urgent]
first_response_mins = 15
resolution_mins = 240
[sla.policies.gold.high]
first_response_mins = 30
resolution_mins = 480
[sla.policies.gold.normal]
first_response_mins = 60
resolution_mins = 960
[sla.policies.gold.low]
first_response_mins = 120
resolution_mins = 1920
"#;

pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap() // 2026-01-01T00:00:00Z
}

pub fn mins(m: i64) -> time::Duration {
    time::Duration::minutes(m)
}

pub fn ts(t: OffsetDateTime) -> prost_types::Timestamp {
    tgb_proto::timestamps::timestamp(t)
}

pub struct Env {
    pub nats: NatsServer,
    pub bus: Bus,
    pub clock: ManualClock,
    pub config_file: tempfile::NamedTempFile,
}

pub struct Monitor {
    pub base: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Monitor {
    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(tgb_testkit::HANG_GUARD, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// `GET /sla/ticker`: (ticks, evaluated_at).
    pub async fn ticker(&self) -> Option<(u64, Option<OffsetDateTime>)> {
        let v: serde_json::Value = reqwest::get(format!("{}/sla/ticker", self.base))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let at = v["evaluated_at"].as_str().and_then(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        });
        Some((v["ticks"].as_u64()?, at))
    }

    /// Waits until a whole evaluation started at or after the clock's time `at` has completed,
    /// and then one more (so anything the first one published is acknowledged and marked).
    pub async fn evaluated(&self, at: OffsetDateTime) {
        let ticks = eventually(
            "a tick at the clock's time",
            tgb_testkit::HANG_GUARD,
            || async {
                match self.ticker().await? {
                    (n, Some(t)) if t >= at => Some(n),
                    _ => None,
                }
            },
        )
        .await
        .unwrap();
        eventually("one more tick", tgb_testkit::HANG_GUARD, || async {
            (self.ticker().await?.0 > ticks).then_some(())
        })
        .await
        .unwrap();
    }
}

impl Env {
    pub async fn start() -> Env {
        tgb_testkit::init_test_tracing();
        let nats = NatsServer::start().await.unwrap();
        let bus = Bus::connect(&nats.url(), None, BusConfig::default())
            .await
            .unwrap();
        let mut config_file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut config_file, POLICY.as_bytes()).unwrap();
        Env {
            nats,
            bus,
            clock: ManualClock::new(t0()),
            config_file,
        }
    }

    pub fn config(&self, extra: &[(&str, String)]) -> Config {
        let vars = TgbEnv::new(self.nats.url()).extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        Config::load_from(Some(self.config_file.path()), vars.vars()).unwrap()
    }

    pub async fn monitor(&self) -> Monitor {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sla_monitor::serve_with_clock(
            self.config(&[]),
            listener,
            shutdown.clone(),
            Arc::new(self.clock.clone()),
        ));
        let m = Monitor {
            base,
            shutdown,
            task,
        };
        eventually("ticking", tgb_testkit::HANG_GUARD, || async {
            (m.ticker().await?.0 > 0).then_some(())
        })
        .await
        .unwrap();
        m
    }

    pub async fn publish(&self, event: impl Into<pb::Event>) {
        let event = event.into();
        event.validate().unwrap();
        self.bus.publisher().publish_event(&event).await.unwrap();
    }

    /// Waits until the clock of `case_id` satisfies `check`.
    pub async fn clock_of(
        &self,
        case_id: &str,
        what: &str,
        check: impl Fn(&sla_monitor::state::CaseClock) -> bool,
    ) -> sla_monitor::state::CaseClock {
        let clocks = sla_monitor::store::Clocks::new(self.bus.kv("tgb_sla").await.unwrap());
        let key = sla_monitor::store::key_of(case_id);
        eventually(what, tgb_testkit::HANG_GUARD, || async {
            let (c, _) = clocks.read(&key).await.ok()?;
            c.filter(|c| check(c))
        })
        .await
        .unwrap()
    }

    /// Every event of type `E` in `TGB_EVENTS`, oldest first.
    pub async fn events<E: BusEvent>(&self) -> Vec<E> {
        let js = self.bus.jetstream();
        let stream = js.get_stream("TGB_EVENTS").await.unwrap();
        let info = stream.info_with_subjects(E::SUBJECT).await.unwrap();
        let count = {
            use futures::StreamExt;
            let mut info = info;
            let mut n = 0usize;
            while let Some(Ok((subject, c))) = info.next().await {
                if subject == E::SUBJECT {
                    n = c;
                }
            }
            n
        };
        if count == 0 {
            return Vec::new();
        }
        let c = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: E::SUBJECT.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut messages = c
            .fetch()
            .max_messages(count)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        use futures::StreamExt;
        while out.len() < count {
            let m = tokio::time::timeout(tgb_testkit::HANG_GUARD, messages.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            out.push(<E as prost::Message>::decode(m.payload.as_ref()).unwrap());
        }
        out
    }
}

pub fn partner(id: &str) -> pb::PartnerRef {
    pb::PartnerRef {
        qualifier: "ZZ".into(),
        id: id.into(),
        name: format!("{id} Corp"),
    }
}

pub fn meta(
    origin: pb::Origin,
    case_id: &str,
    partner_id: &str,
    at: OffsetDateTime,
) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        occurred_at: Some(ts(at)),
        correlation_id: case_id.to_owned(),
        partner: Some(partner(partner_id)),
        entity: Some(pb::EntityRef::new("tg", "case", case_id)),
        ..pb::EventMeta::new(origin)
    })
}

pub fn case(
    case_id: &str,
    revision: i64,
    priority: pb::CasePriority,
    status: pb::CaseStatus,
) -> pb::TgCase {
    pb::TgCase {
        case_id: case_id.to_owned(),
        revision,
        title: format!("Shipment short on {case_id}"),
        priority: priority as i32,
        status: status as i32,
        ..Default::default()
    }
}

pub fn opened(
    case_id: &str,
    partner_id: &str,
    priority: pb::CasePriority,
    at: OffsetDateTime,
) -> pb::TgCaseOpened {
    pb::TgCaseOpened {
        meta: meta(pb::Origin::Tg, case_id, partner_id, at),
        case: Some(case(case_id, 1, priority, pb::CaseStatus::Open)),
    }
}

pub fn updated(
    case_id: &str,
    partner_id: &str,
    revision: i64,
    priority: pb::CasePriority,
    status: pb::CaseStatus,
    at: OffsetDateTime,
) -> pb::TgCaseUpdated {
    pb::TgCaseUpdated {
        meta: meta(pb::Origin::Tg, case_id, partner_id, at),
        case: Some(case(case_id, revision, priority, status)),
    }
}
