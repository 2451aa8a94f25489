//! A real nats-server, the sandbox and planner-adapter in-process.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use tgb_bus::{Bus, BusConfig, Publisher};
use tgb_proto::{BusEvent, EventMeta, Origin, PartnerRef};
use tgb_runtime::Config;
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_testkit::{NatsServer, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ISSUES: &str = "pLnPartnerIssues00000000000A";

/// Events seen on `tgb.v1.planner.>`: subject, bytes, arrival.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, Vec<u8>, std::time::Instant)>>>;

pub struct World {
    pub nats: NatsServer,
    pub sandbox: Sandbox,
    pub publisher: Publisher,
    pub bus: Bus,
    pub adapter: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    pub events: Seen,
}

pub fn config(nats: &NatsServer, sandbox: &Sandbox, extra: &[(&str, &str)]) -> Config {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let env = TgbEnv::new(nats.url())
        .sandbox(sandbox)
        .set("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "50")
        .set("TGB_ROUTING__GRAPH__FLEET_RENEW_MS", "50")
        .set("TGB_ROUTING__GRAPH__FLEET_TTL_MS", "1000")
        // Polling every 50 ms asks for some 80 Graph requests a second, eight times what the
        // production lane (600 / 60 s) grants: the poller would hold the lane and a create
        // would wait seconds for its turn, longer the busier the machine. The lane is opened
        // to match the polling rate.
        .set("TGB_ROUTING__GRAPH__REQUESTS_PER_WINDOW", "60000")
        .set("TGB_BUS__ACK_WAIT_SECS", "2")
        .extend(extra.iter().copied());
    Config::load_from(Some(&file), env.vars()).unwrap()
}

impl World {
    pub async fn start() -> World {
        World::start_with(SandboxConfig::default()).await
    }

    pub async fn start_with(sandbox_config: SandboxConfig) -> World {
        tgb_testkit::init_test_tracing();
        let nats = NatsServer::start().await.unwrap();
        let sandbox = Sandbox::start(sandbox_config).await.unwrap();
        let bus = Bus::connect(&nats.url(), None, BusConfig::default())
            .await
            .unwrap();
        let publisher = bus.publisher();
        let events: Seen = Arc::default();
        let mut sub = bus.client().subscribe("tgb.v1.planner.>").await.unwrap();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                sink.lock().unwrap().push((
                    m.subject.to_string(),
                    m.payload.to_vec(),
                    std::time::Instant::now(),
                ));
            }
        });
        bus.client().flush().await.unwrap();
        World {
            nats,
            sandbox,
            publisher,
            bus,
            adapter: None,
            events,
        }
    }

    pub fn start_adapter(
        &mut self,
        hook: Option<planner_adapter::AfterPost>,
        extra: &[(&str, &str)],
    ) {
        self.adapter = Some(self.spawn_adapter(hook, extra));
    }

    /// One more planner-adapter (a replica), stopped by cancelling the token (or aborting the
    /// handle: a crash).
    pub fn spawn_adapter(
        &self,
        hook: Option<planner_adapter::AfterPost>,
        extra: &[(&str, &str)],
    ) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let config = config(&self.nats, &self.sandbox, extra);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            planner_adapter::serve_with(config, listener, token, hook).await
        });
        (shutdown, handle)
    }

    /// `GET /planner/plans/{id}/tasks` calls tg-bridge made (any page), by caller id.
    pub fn plan_polls_by_caller(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for c in self.sandbox.calls().of_system("graph") {
            let Some(caller) = c.caller.as_ref() else {
                continue;
            };
            if c.scripted || caller.kind != "application" || c.method != "GET" {
                continue;
            }
            if c.path.contains("/planner/plans/") && c.path.ends_with("/tasks") {
                *out.entry(caller.id.clone()).or_default() += 1;
            }
        }
        out
    }

    /// `GET /planner/plans/{plan}/tasks` calls tg-bridge made so far (any page).
    pub fn plan_polls(&self, plan: &str) -> usize {
        let path = format!("/planner/plans/{plan}/tasks");
        self.sandbox
            .calls()
            .of_system("graph")
            .iter()
            .filter(|c| !c.scripted && c.method == "GET" && c.path.ends_with(&path))
            .count()
    }

    /// Waits until the poller listed `plan` twice more: the second listing started after the
    /// first was answered, so it shows everything that existed when this was called. A task
    /// created before is then behind the poller (an echo of tg-bridge's own write, or, when it
    /// was listed before its record was written, a task the poller looks at again once it
    /// changes): its creation is never reported as progress.
    pub async fn wait_polled_twice(&self, plan: &str) {
        let from = self.plan_polls(plan);
        eventually(
            &format!("two polls of {plan}"),
            tgb_testkit::HANG_GUARD,
            || async { (self.plan_polls(plan) >= from + 2).then_some(()) },
        )
        .await
        .unwrap();
    }

    pub async fn stop_adapter(&mut self) {
        if let Some((token, handle)) = self.adapter.take() {
            token.cancel();
            let _ = tokio::time::timeout(tgb_testkit::HANG_GUARD, handle).await;
        }
    }

    pub async fn publish<E: BusEvent>(&self, mut event: E) {
        let meta = event.meta_mut();
        if meta.event_id.is_empty() {
            *meta = EventMeta {
                correlation_id: meta.correlation_id.clone(),
                partner: meta.partner.clone(),
                entity: meta.entity.clone(),
                ..EventMeta::new(tgb_proto::origin_of(E::SUBJECT))
            };
        }
        self.publisher.publish(&event).await.unwrap();
    }

    pub fn tasks(&self, plan: &str) -> Vec<serde_json::Value> {
        self.sandbox.planner().list_tasks(plan).unwrap()
    }

    pub async fn wait_tasks(&self, plan: &str, prefix: &str, n: usize) -> Vec<serde_json::Value> {
        eventually(
            &format!("{n} tasks {prefix}"),
            tgb_testkit::HANG_GUARD,
            || async {
                let found: Vec<_> = self
                    .tasks(plan)
                    .into_iter()
                    .filter(|t| t["title"].as_str().unwrap_or_default().starts_with(prefix))
                    .collect();
                (found.len() >= n).then_some(found)
            },
        )
        .await
        .unwrap()
    }

    /// Events seen on `subject`, decoded.
    pub fn seen<E: BusEvent>(&self) -> Vec<E> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| s == E::SUBJECT)
            .map(|(_, b, _)| E::decode(b.as_slice()).unwrap())
            .collect()
    }

    /// Events of type `E` stored in `TGB_EVENTS`, decoded: what the consumers get, once per
    /// event id (the copies a core subscriber sees include publishes the stream refused as
    /// duplicates).
    pub async fn stored<E: BusEvent>(&self) -> Vec<E> {
        let js = self.bus.jetstream();
        tgb_bus::stored::messages_on(js, tgb_bus::names::EVENTS_STREAM, E::SUBJECT)
            .await
            .unwrap()
            .iter()
            .map(|m| E::decode(m.payload.as_ref()).unwrap())
            .collect()
    }

    pub async fn wait_seen<E: BusEvent, F: Fn(&E) -> bool>(&self, what: &str, f: F) -> E {
        eventually(what, tgb_testkit::HANG_GUARD, || async {
            self.seen::<E>().into_iter().find(|e| f(e))
        })
        .await
        .unwrap()
    }

    /// Graph calls answered 400 (a body the schema refused) — must stay 0.
    pub fn graph_400s(&self) -> Vec<String> {
        self.sandbox
            .calls()
            .of_system("graph")
            .into_iter()
            .filter(|c| c.status == 400)
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }

    pub fn graph_calls(&self) -> usize {
        self.sandbox
            .calls()
            .of_system("graph")
            .into_iter()
            .filter(|c| !c.scripted && c.caller.as_ref().is_none_or(|c| c.kind == "application"))
            .count()
    }

    /// Graph requests made by tg-bridge that are not the poller's (plan task lists, plan labels).
    pub fn graph_work_calls(&self) -> usize {
        self.sandbox
            .calls()
            .of_system("graph")
            .into_iter()
            .filter(|c| !c.scripted && c.caller.as_ref().is_none_or(|c| c.kind == "application"))
            .filter(|c| !c.path.contains("/planner/plans/"))
            .count()
    }

    /// A person edits a task in Planner.
    pub fn edit_as_user(&self, task_id: &str, patch: serde_json::Value) {
        let user = tgb_sandbox_planner::Caller::user(
            "2a1b0c3d-0000-4000-8000-000000000102",
            "Pat Planner",
        );
        self.sandbox
            .planner()
            .update_task_as(&user, task_id, &patch)
            .unwrap();
    }
}

pub fn acme() -> PartnerRef {
    PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    }
}

pub fn globex() -> PartnerRef {
    PartnerRef {
        qualifier: "ZZ".into(),
        id: "GLOBEX".into(),
        name: "Globex".into(),
    }
}

pub fn meta(origin: Origin, correlation: &str, partner: PartnerRef) -> EventMeta {
    EventMeta {
        correlation_id: correlation.into(),
        partner: Some(partner),
        ..EventMeta::new(origin)
    }
}
