use std::time::Duration;

use futures::StreamExt;
use tgb_bus::async_nats::jetstream::consumer;
use tgb_bus::{Bus, BusConfig};
use tgb_proto as pb;
use tgb_proto::BusEvent;
use tgb_runtime::Config;
use tgb_sandbox::tg::model::{PartnerRef, TgEvent};
use tgb_sandbox::{Sandbox, SandboxConfig, TgbEnv};
use tgb_testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const POLICY: &str = r#"
[documents]
max_size_bytes = 4096

[documents.labels]
Approved = "approved"
Rejected = "rejected"
"Needs changes" = "needs_changes"

[documents.review.compliance_certificate]
team = "Compliance"
plan_id = "plan-compliance"
bucket_id = "bucket-review"
assignees = ["reviewer-1"]
due_days = 5

[onboarding]
plan_id = "plan-onboarding"
bucket_id = "bucket-steps"

[[onboarding.steps]]
key = "account_setup"
label = "Account setup"
[[onboarding.steps]]
key = "edi_mapping"
label = "EDI mapping"
[[onboarding.steps]]
key = "compliance_checks"
label = "Compliance checks"
[[onboarding.steps]]
key = "testing"
label = "Testing"
"#;

pub struct Env {
    pub nats: NatsServer,
    pub sandbox: Sandbox,
    pub bus: Bus,
    pub config_file: tempfile::NamedTempFile,
    running: Vec<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

pub fn partner(id: &str) -> PartnerRef {
    PartnerRef {
        qualifier: "ZZ".into(),
        id: id.into(),
        name: format!("{id} Corp"),
    }
}

impl Env {
    /// NATS, the sandbox, document-review and tg-egress with the test policy.
    pub async fn start() -> Env {
        Env::start_with(POLICY, false).await
    }

    /// The same with `policy` as the TOML file, and with planner-adapter and dynamics-adapter
    /// in the loop when `whole_loop` (the policy is then the shipped configuration).
    pub async fn start_with(policy: &str, whole_loop: bool) -> Env {
        tgb_testkit::init_test_tracing();
        let nats = NatsServer::start().await.unwrap();
        let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
        let bus = Bus::connect(&nats.url(), None, BusConfig::default())
            .await
            .unwrap();
        let mut config_file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut config_file, policy.as_bytes()).unwrap();
        let mut env = Env {
            nats,
            sandbox,
            bus,
            config_file,
            running: Vec::new(),
        };
        let review = env.config();
        let egress = env.config();
        env.spawn(|l, s| document_review::serve(review, l, s)).await;
        env.spawn(|l, s| tg_egress::serve(egress, l, s)).await;
        if whole_loop {
            let planner = env.config();
            let dynamics = env.config();
            env.spawn(|l, s| planner_adapter::serve(planner, l, s))
                .await;
            env.spawn(|l, s| dynamics_adapter::serve(dynamics, l, s))
                .await;
        }
        env
    }

    fn config(&self) -> Config {
        let vars = TgbEnv::new(self.nats.url())
            .sandbox(&self.sandbox)
            .dataverse_webhook_key("test-webhook-key-of-at-least-32-bytes")
            .set("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "50")
            .set("TGB_DYNAMICS__POLL_INTERVAL_MS", "3600000");
        Config::load_from(Some(self.config_file.path()), vars.vars()).unwrap()
    }

    async fn spawn<F, Fut>(&mut self, serve: F)
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        self.running.push((shutdown, task));
    }

    pub async fn stop(self) {
        for (shutdown, task) in self.running {
            shutdown.cancel();
            tokio::time::timeout(tgb_testkit::HANG_GUARD, task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    pub async fn publish(&self, event: impl Into<pb::Event>) {
        let event = event.into();
        event.validate().unwrap();
        self.bus.publisher().publish_event(&event).await.unwrap();
    }

    /// Every event of type `E` in `TGB_EVENTS`, oldest first.
    pub async fn events<E: BusEvent>(&self) -> Vec<E> {
        self.read_stream("TGB_EVENTS", E::SUBJECT)
            .await
            .into_iter()
            .map(|(_, payload, _)| <E as prost::Message>::decode(payload.as_slice()).unwrap())
            .collect()
    }

    /// Every dead letter of document-review: (subject, error kind, error).
    pub async fn dead_letters(&self) -> Vec<(String, String, String)> {
        self.read_stream("TGB_DLQ", "tgb.dlq.document-review.>")
            .await
            .into_iter()
            .map(|(subject, _, headers)| {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default()
                };
                (subject, h("tgb-error-kind"), h("tgb-error"))
            })
            .collect()
    }

    async fn read_stream(
        &self,
        stream: &str,
        filter: &str,
    ) -> Vec<(String, Vec<u8>, tgb_bus::async_nats::HeaderMap)> {
        let stream = self.bus.jetstream().get_stream(stream).await.unwrap();
        let mut info = stream.info_with_subjects(filter).await.unwrap();
        let mut count = 0usize;
        while let Some(Ok((_, c))) = info.next().await {
            count += c;
        }
        if count == 0 {
            return Vec::new();
        }
        let c = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = c
            .fetch()
            .max_messages(count)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < count {
            let m = tokio::time::timeout(tgb_testkit::HANG_GUARD, messages.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            out.push((
                m.subject.to_string(),
                m.payload.to_vec(),
                m.headers.clone().unwrap_or_default(),
            ));
        }
        out
    }
}

fn meta_of(ev: &TgEvent, entity: pb::EntityRef) -> Option<pb::EventMeta> {
    let at = time::OffsetDateTime::parse(
        &ev.occurred_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    Some(pb::EventMeta {
        occurred_at: Some(prost_types::Timestamp {
            seconds: at.unix_timestamp(),
            nanos: 0,
        }),
        correlation_id: ev.partner.key(),
        partner: Some(pb::PartnerRef {
            qualifier: ev.partner.qualifier.clone(),
            id: ev.partner.id.clone(),
            name: ev.partner.name.clone(),
        }),
        entity: Some(entity),
        ..pb::EventMeta::new(pb::Origin::Tg)
    })
}

/// What tg-ingress publishes for a sandbox `document.uploaded`.
pub fn uploaded(ev: &TgEvent) -> pb::TgDocumentUploaded {
    let d = &ev.data;
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
    let doc_type = match s("doc_type").as_str() {
        "tax_form" => pb::DocType::TaxForm,
        "compliance_certificate" => pb::DocType::ComplianceCertificate,
        "banking_details" => pb::DocType::BankingDetails,
        "trading_agreement" => pb::DocType::TradingAgreement,
        _ => pb::DocType::Other,
    };
    pb::TgDocumentUploaded {
        meta: meta_of(ev, pb::EntityRef::new("tg", "document", s("document_id"))),
        document: Some(pb::TgDocument {
            document_id: s("document_id"),
            case_id: s("case_id"),
            doc_type: doc_type as i32,
            file_name: s("file_name"),
            media_type: s("media_type"),
            size: d["size"].as_u64().unwrap(),
            sha256: s("sha256"),
            expires_on: s("expires_on"),
            uploaded_by: s("uploaded_by"),
        }),
    }
}

/// What tg-ingress publishes for a sandbox `onboarding.updated`.
pub fn onboarding_updated(ev: &TgEvent) -> pb::TgOnboardingUpdated {
    let d = &ev.data;
    pb::TgOnboardingUpdated {
        meta: meta_of(ev, pb::EntityRef::new("tg", "partner", ev.partner.key())),
        partner_revision: d["partner_revision"].as_i64().unwrap(),
        requirements: d["requirements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| pb::OnboardingRequirement {
                key: r["key"].as_str().unwrap().into(),
                label: r["label"].as_str().unwrap().into(),
                state: match r["state"].as_str().unwrap() {
                    "pending" => pb::RequirementState::Pending,
                    "submitted" => pb::RequirementState::Submitted,
                    "accepted" => pb::RequirementState::Accepted,
                    _ => pb::RequirementState::Rejected,
                } as i32,
            })
            .collect(),
        profile_complete: d["profile_complete"].as_bool().unwrap(),
        agreements_acknowledged: d["agreements_acknowledged"].as_bool().unwrap(),
    }
}

/// What planner-adapter publishes when a task's progress changes.
pub fn progressed(
    partner_id: &str,
    task: pb::TaskRef,
    progress: pb::TaskProgress,
    labels: &[&str],
) -> pb::PlannerTaskProgressed {
    pb::PlannerTaskProgressed {
        meta: Some(pb::EventMeta {
            partner: Some(pb::PartnerRef {
                qualifier: "ZZ".into(),
                id: partner_id.into(),
                name: String::new(),
            }),
            entity: Some(pb::EntityRef::new("planner", "task", task.task_id.clone())),
            ..pb::EventMeta::new(pb::Origin::Planner)
        }),
        task: Some(task),
        progress: progress as i32,
        previous: pb::TaskProgress::InProgress as i32,
        assignees: vec!["reviewer-1".into()],
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..Default::default()
    }
}
