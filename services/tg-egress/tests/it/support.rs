use tgb_bus::{Bus, BusConfig};
use tgb_proto as pb;
use tgb_runtime::Config;
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub nats: NatsServer,
    pub sandbox: Sandbox,
    pub bus: Bus,
}

pub struct Running {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// `http://127.0.0.1:<port>`.
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

pub fn acme() -> PartnerRef {
    PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    }
}

impl Env {
    pub async fn start() -> Env {
        tgb_testkit::init_test_tracing();
        let nats = NatsServer::start().await.unwrap();
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let bus = Bus::connect(&nats.url(), None, BusConfig::default())
            .await
            .unwrap();
        Env { nats, sandbox, bus }
    }

    /// Starts tg-egress against `api_url` (the sandbox's TG API unless a test puts a proxy
    /// in front), with short redelivery settings.
    pub async fn egress(&self, api_url: &str) -> Running {
        self.egress_with(api_url, &[]).await
    }

    /// As [`Env::egress`], with more (or other) `TGB_*` variables.
    pub async fn egress_with(&self, api_url: &str, extra: &[(&str, &str)]) -> Running {
        let vars = TgbEnv::new(self.nats.url())
            .sandbox(&self.sandbox)
            .set("TGB_TG_API_URL", api_url)
            .set("TGB_BUS__MAX_DELIVER", "100")
            .set("TGB_BUS__ACK_WAIT_SECS", "2")
            .extend(extra.iter().copied());
        let config = Config::load_from(None, vars.vars()).unwrap();
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

    pub fn raise_case(&self, title: &str) -> String {
        let e = self
            .sandbox
            .tg()
            .raise_case(RaiseCase::new(acme(), title))
            .unwrap();
        e.data["case_id"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self, event: impl Into<pb::Event>) -> String {
        let event = event.into();
        event.validate().unwrap();
        self.bus.publisher().publish_event(&event).await.unwrap();
        event.meta().unwrap().event_id.clone()
    }

    /// Comments tg-bridge posted on a case (through the API).
    pub fn api_comments(&self, case_id: &str) -> Vec<String> {
        self.sandbox
            .tg()
            .comments(case_id)
            .into_iter()
            .filter(|c| c.source == "api")
            .map(|c| c.body)
            .collect()
    }
}

/// A meta for an event of `origin` about `entity`, for partner ZZ:ACME01.
pub fn meta(origin: pb::Origin, entity: pb::EntityRef) -> Option<pb::EventMeta> {
    Some(pb::EventMeta {
        correlation_id: entity.id.clone(),
        partner: Some(pb::PartnerRef {
            qualifier: "ZZ".into(),
            id: "ACME01".into(),
            name: "Acme Corp".into(),
        }),
        entity: Some(entity),
        ..pb::EventMeta::new(origin)
    })
}

pub fn note(case_id: &str, text: &str) -> pb::DynCaseNoteAdded {
    pb::DynCaseNoteAdded {
        meta: meta(pb::Origin::Dyn, pb::EntityRef::new("tg", "case", case_id)),
        incident_id: format!("inc-{case_id}"),
        tg_case_id: case_id.to_owned(),
        annotation_id: format!("ann-{text}"),
        subject: String::new(),
        text: text.to_owned(),
        author: Some(pb::Person {
            name: "Dana Agent".into(),
            email: String::new(),
        }),
        partner_visible: true,
    }
}

pub fn status(case_id: &str, status: pb::CaseStatus) -> pb::DynCaseStatusChanged {
    pb::DynCaseStatusChanged {
        meta: meta(pb::Origin::Dyn, pb::EntityRef::new("tg", "case", case_id)),
        incident_id: format!("inc-{case_id}"),
        tg_case_id: case_id.to_owned(),
        statecode: 0,
        statuscode: 1,
        tg_status: status as i32,
    }
}
