use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tgb_bus::{Bus, BusConfig};
use tgb_proto as pb;
use tgb_runtime::Config;
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_testkit::{NatsServer, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WEBHOOK_KEY: &str = "dv-webhook-key-for-tests-0123456789abcdef";
pub const WAIT: Duration = tgb_testkit::HANG_GUARD;

pub struct Env {
    pub nats: NatsServer,
    pub sandbox: Sandbox,
    pub bus: Bus,
}

pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub base: String,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(tgb_testkit::HANG_GUARD, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

pub fn acme() -> pb::PartnerRef {
    pb::PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    }
}

pub fn meta(origin: pb::Origin, kind: &str, id: &str, version: &str) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        correlation_id: id.to_owned(),
        partner: Some(acme()),
        entity: Some(pb::EntityRef::new("tg", kind, id)),
        entity_version: version.to_owned(),
        ..pb::EventMeta::new(origin)
    })
}

pub fn case(id: &str, revision: i64, title: &str, status: pb::CaseStatus) -> pb::TgCase {
    pb::TgCase {
        case_id: id.into(),
        revision,
        title: title.into(),
        description: format!("{title} (details)"),
        category: pb::CaseCategory::ShipmentDiscrepancy as i32,
        priority: pb::CasePriority::High as i32,
        status: status as i32,
        ..Default::default()
    }
}

pub fn opened(id: &str, title: &str) -> pb::TgCaseOpened {
    pb::TgCaseOpened {
        meta: meta(pb::Origin::Tg, "case", id, "1"),
        case: Some(case(id, 1, title, pb::CaseStatus::Open)),
    }
}

pub fn updated(id: &str, revision: i64, title: &str, status: pb::CaseStatus) -> pb::TgCaseUpdated {
    pb::TgCaseUpdated {
        meta: meta(pb::Origin::Tg, "case", id, &revision.to_string()),
        case: Some(case(id, revision, title, status)),
    }
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(SandboxConfig::default()).await
    }

    pub async fn start_with(config: SandboxConfig) -> Env {
        tgb_testkit::init_test_tracing();
        let nats = NatsServer::start().await.unwrap();
        let sandbox = Sandbox::start(config).await.unwrap();
        let bus = Bus::connect(&nats.url(), None, BusConfig::default())
            .await
            .unwrap();
        Env { nats, sandbox, bus }
    }

    pub fn config(&self, extra: &[(&str, &str)]) -> Config {
        let vars = TgbEnv::new(self.nats.url())
            .sandbox(&self.sandbox)
            .dataverse_webhook_key(WEBHOOK_KEY)
            .set("TGB_BUS__MAX_DELIVER", "100")
            .set("TGB_BUS__ACK_WAIT_SECS", "5")
            .set("TGB_DYNAMICS__POLL_INTERVAL_MS", "3600000")
            .set("TGB_DYNAMICS__FLEET_RENEW_MS", "50")
            .set("TGB_DYNAMICS__FLEET_TTL_MS", "1000")
            .extend(extra.iter().copied());
        Config::load_from(None, vars.vars()).unwrap()
    }

    /// Starts the adapter and registers the Dataverse webhook to it.
    pub async fn adapter(&self, extra: &[(&str, &str)]) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dynamics_adapter::serve(
            self.config(extra),
            listener,
            shutdown.clone(),
        ));
        let http = reqwest::Client::new();
        eventually("adapter ready", WAIT, || async {
            let r = http.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await
        .unwrap();
        Running {
            shutdown,
            task,
            base,
        }
    }

    pub fn register_webhook(&self, running: &Running) {
        self.sandbox.dataverse().clear_webhooks();
        self.sandbox
            .dataverse()
            .register_webhook(tgb_sandbox_dataverse::WebhookRegistration {
                name: "tg-bridge".into(),
                url: format!("{}/webhooks/dataverse", running.base),
                auth: tgb_sandbox_dataverse::WebhookAuth::Header {
                    name: "x-api-key".into(),
                    value: WEBHOOK_KEY.into(),
                },
                entities: vec![],
                messages: vec!["Create".into(), "Update".into(), "Close".into()],
            })
            .unwrap();
    }

    pub async fn egress(&self) -> Running {
        let vars = TgbEnv::new(self.nats.url())
            .sandbox(&self.sandbox)
            .set("TGB_BUS__ACK_WAIT_SECS", "5")
            .vars();
        let config = Config::load_from(None, vars).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tg_egress::serve(config, listener, shutdown.clone()));
        Running {
            shutdown,
            task,
            base,
        }
    }

    pub async fn publish(&self, event: impl Into<pb::Event>) -> String {
        let event = event.into();
        event.validate().unwrap();
        self.bus.publisher().publish_event(&event).await.unwrap();
        event.meta().unwrap().event_id.clone()
    }

    pub fn rows(&self, table: &str) -> Vec<Value> {
        self.sandbox.dataverse().rows(table)
    }

    pub fn user(&self, key: &str) -> Uuid {
        self.sandbox.identity().user(key).unwrap().id
    }

    /// The partner's account, as tg-bridge would have created it.
    pub fn acme_account(&self) -> Uuid {
        self.sandbox
            .dataverse()
            .insert_row_as(
                self.app_user(),
                "account",
                serde_json::json!({"name": "Acme Corp", "tgb_partnerkey": "ZZ:ACME01"}),
            )
            .unwrap()
    }

    /// Resolves an incident as tg-bridge's application user does (`CloseIncident`).
    pub fn resolve_as_app(&self, incident: Uuid, revision: i64) {
        let (status, _, _) = self.sandbox.dataverse().request_as(
            self.app_user(),
            axum::http::Method::POST,
            "CloseIncident",
            axum::http::HeaderMap::new(),
            Some(serde_json::json!({"IncidentResolution": {
                "@odata.type": "Microsoft.Dynamics.CRM.incidentresolution",
                "subject": format!("Resolved in Trading Grid (revision {revision})"),
                "incidentid@odata.bind": format!("/incidents({incident})")}, "Status": 5})),
        );
        assert_eq!(status, 204);
    }

    pub fn app_user(&self) -> Uuid {
        SandboxConfig::default().identity.entra_clients[0].app_user_id
    }

    pub async fn wait_rows(&self, table: &str, n: usize) -> Vec<Value> {
        eventually(&format!("{n} rows in {table}"), WAIT, || async {
            let rows = self.rows(table);
            (rows.len() >= n).then_some(rows)
        })
        .await
        .unwrap()
    }

    /// Dataverse calls answered 400 (a wrong `@odata.bind` would be one).
    pub fn bad_requests(&self) -> Vec<String> {
        self.sandbox
            .calls()
            .of_system("dataverse")
            .into_iter()
            .filter(|c| c.status == 400)
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }

    /// Writes (not GET) tg-bridge's application user sent to Dataverse.
    pub fn app_writes(&self) -> usize {
        let app = self.app_user().to_string();
        self.sandbox
            .calls()
            .of_system("dataverse")
            .into_iter()
            .filter(|c| c.method != "GET" && c.caller.as_ref().is_some_and(|u| u.id == app))
            .count()
    }

    /// Events of one subject in TGB_EVENTS.
    pub async fn events_on(&self, subject: &str) -> Vec<pb::Event> {
        use futures::StreamExt;
        let stream = self.bus.jetstream().get_stream("TGB_EVENTS").await.unwrap();
        let consumer = stream
            .create_consumer(tgb_bus::async_nats::jetstream::consumer::pull::Config {
                filter_subject: subject.to_owned(),
                ack_policy: tgb_bus::async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let pending = consumer.cached_info().num_pending as usize;
        let mut out = Vec::new();
        if pending == 0 {
            return out;
        }
        let mut msgs = consumer
            .fetch()
            .max_messages(pending)
            .messages()
            .await
            .unwrap();
        while let Some(Ok(m)) = msgs.next().await {
            out.push(pb::Event::decode(&m.subject, &m.payload).unwrap());
        }
        out
    }

    pub async fn wait_events(&self, subject: &str, n: usize) -> Vec<pb::Event> {
        eventually(&format!("{n} events on {subject}"), WAIT, || async {
            let ev = self.events_on(subject).await;
            (ev.len() >= n).then_some(ev)
        })
        .await
        .unwrap()
    }
}

/// The sum of the samples of counter `name` whose labels contain `labels` (e.g.
/// `table="incident"`), scraped from the service's `/metrics`.
pub async fn metric(base: &str, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{')).then_some(())?;
            rest.contains(labels).then_some(())?;
            value.parse::<f64>().ok()
        })
        .sum()
}

/// A webhook endpoint that only keeps what Dataverse sends (to hand it on later).
pub async fn capture() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

/// Hands a notification body to the adapter's webhook, as Dataverse does.
pub async fn deliver(adapter: &Running, body: &Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/dataverse", adapter.base))
        .header("x-api-key", WEBHOOK_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}
