use tgb_bus::async_nats::jetstream;
use tgb_runtime::Config;
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The secret TG signs with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second valid secret (rotation).
pub const SECRET_NEW: &str = "whsec_bmV3LXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM=";

pub struct Env {
    pub nats: NatsServer,
    pub sandbox: Sandbox,
    pub base: String,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    service: Option<JoinHandle<anyhow::Result<()>>>,
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Env {
    /// NATS, the sandbox (with `sandbox_config`), and tg-ingress with `env` added.
    pub async fn start(sandbox_config: SandboxConfig, env: &[(&str, String)]) -> Env {
        Env::start_with(Sandbox::start(sandbox_config).await.unwrap(), env).await
    }

    /// NATS and tg-ingress (with `env` added) against `sandbox`, which the test may have
    /// seeded first.
    pub async fn start_with(sandbox: Sandbox, env: &[(&str, String)]) -> Env {
        tgb_testkit::init_test_tracing();
        let nats = NatsServer::start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let vars = TgbEnv::new(nats.url())
            .sandbox(&sandbox)
            .webhook_secret(format!("{SECRET},{SECRET_NEW}"))
            .set("TGB_TG_INGRESS__PUBLISH_TIMEOUT_MS", "2000")
            .extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let config = Config::load_from(None, vars.vars()).unwrap();
        let shutdown = CancellationToken::new();
        let service = tokio::spawn(tg_ingress::serve(config, listener, shutdown.clone()));
        let http = reqwest::Client::new();
        tgb_testkit::eventually("ingress ready", tgb_testkit::HANG_GUARD, || async {
            let r = http.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await
        .unwrap();
        let client = tgb_bus::async_nats::connect(nats.url()).await.unwrap();
        Env {
            js: jetstream::new(client),
            nats,
            sandbox,
            base,
            http,
            shutdown,
            service: Some(service),
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhooks/tg", self.base)
    }

    /// Posts `body` signed with `secret` at `timestamp`.
    pub async fn post_signed(
        &self,
        id: &str,
        timestamp: i64,
        secret: &str,
        body: &[u8],
    ) -> reqwest::Response {
        let sig = tgb_sandbox::webhooks::sign(secret, id, timestamp, body).unwrap();
        self.http
            .post(self.webhook_url())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sig)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Messages in TGB_EVENTS.
    pub async fn stored(&self) -> u64 {
        let mut stream = self.js.get_stream("TGB_EVENTS").await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// (subject, Nats-Msg-Id) of every stored event, in order.
    pub async fn stored_ids(&self) -> Vec<(String, String)> {
        let stream = self.js.get_stream("TGB_EVENTS").await.unwrap();
        let n = self.stored().await;
        let mut out = Vec::new();
        for seq in 1..=n {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((m.subject.to_string(), id));
        }
        out
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.service.take() {
            tokio::time::timeout(tgb_testkit::HANG_GUARD, s)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

/// A contract-conforming `case.created` body for TG event `id`.
pub fn case_created(id: &str, case_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "type": "case.created", "occurred_at": "2026-11-21T09:14:03Z",
        "community_id": "retail-suppliers",
        "partner": {"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"},
        "data": {"case_id": case_id, "revision": 1, "title": "Short shipment",
            "description": "3 pallets missing", "category": "shipment_discrepancy",
            "priority": "high", "status": "open", "document_ids": [],
            "opened_by": {"name": "Ann", "email": "ann@acme.example"},
            "updated_at": "2026-11-21T09:14:03Z"}
    }))
    .unwrap()
}
