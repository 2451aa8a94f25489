//! The burst every scenario runs: partners raise cases in TG (some with a comment, some
//! resolved by the partner right away), agents answer some of them in Dynamics as their
//! incidents appear, and a few deliberately poisoned messages are published straight on the
//! bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tgb_sandbox::tg::model::{PartnerComment, PartnerRef, Person, RaiseCase, UpdateCase};
use tokio::task::JoinHandle;
use tokio_util_free::Stop;

use crate::system::FaultSystem;

/// The burst size: `TGB_FAULT_CASES`, else `default`.
pub fn burst_size(default: usize) -> usize {
    std::env::var("TGB_FAULT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The partners of the burst (the first is seeded in the sandbox, the others are new to
/// Dynamics: their accounts are created on first sight).
pub fn partners() -> Vec<PartnerRef> {
    [
        ("ACME01", "Acme Corp"),
        ("GLOBEX", "Globex"),
        ("INITECH", "Initech"),
        ("UMBREL", "Umbrella Supplies"),
    ]
    .into_iter()
    .map(|(id, name)| PartnerRef {
        qualifier: "ZZ".into(),
        id: id.into(),
        name: name.into(),
    })
    .collect()
}

/// What the burst asked for: the targets the invariant check expects, each exactly once.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// Every TG case raised.
    pub cases: Vec<String>,
    /// Partner comments: comment id → (case id, body).
    pub comments: BTreeMap<String, (String, String)>,
    /// Cases the partner resolved in TG.
    pub resolved: Vec<String>,
    /// Agent notes written in Dynamics (partner-visible): case id → note text.
    pub agent_notes: BTreeMap<String, String>,
    /// Partner keys used.
    pub partners: Vec<String>,
}

/// The shape of a burst.
#[derive(Clone, Debug)]
pub struct Burst {
    /// Cases raised.
    pub cases: usize,
    /// Every `comment_every`-th case gets a partner comment.
    pub comment_every: usize,
    /// Every `resolve_every`-th case (offset by half) is resolved by the partner.
    pub resolve_every: usize,
    /// Every `note_every`-th case (offset by a third) gets an agent note in Dynamics.
    pub note_every: usize,
}

impl Burst {
    /// A burst of `cases` with the usual mix (10% commented, 10% resolved, 5% answered).
    pub fn of(cases: usize) -> Self {
        Burst {
            cases,
            comment_every: 10,
            resolve_every: 10,
            note_every: 20,
        }
    }
}

/// What raising one case produced: its id and the events it emitted (for scenarios that
/// deliver webhooks themselves).
pub fn raise_one(
    sys: &FaultSystem,
    burst: &Burst,
    i: usize,
    exp: &mut Expected,
) -> anyhow::Result<()> {
    let partners = partners();
    let partner = partners[i % partners.len()].clone();
    let tg = sys.sandbox.tg();
    let mut input = RaiseCase::new(partner.clone(), format!("Fault-suite case {i}"));
    input.description = format!("Shipment {i} arrived short");
    input.category = "shipment_discrepancy".into();
    input.priority = "normal".into();
    let ev = tg
        .raise_case(input)
        .map_err(|e| anyhow::anyhow!("raising case {i}: {e}"))?;
    let case_id = ev.data["case_id"]
        .as_str()
        .context("case.created without case_id")?
        .to_owned();
    exp.cases.push(case_id.clone());
    if i.is_multiple_of(burst.comment_every) {
        let body = format!("Partner comment on {case_id}: 12 cartons missing");
        let ev = tg
            .partner_comment(
                &case_id,
                PartnerComment {
                    author: Person {
                        name: format!("{} contact", partner.name),
                        email: String::new(),
                    },
                    body: body.clone(),
                },
            )
            .map_err(|e| anyhow::anyhow!("comment on {case_id}: {e}"))?;
        let comment_id = ev.data["comment_id"]
            .as_str()
            .context("comment without id")?
            .to_owned();
        exp.comments.insert(comment_id, (case_id.clone(), body));
    }
    if i % burst.resolve_every == burst.resolve_every / 2 {
        tg.update_case(
            &case_id,
            UpdateCase {
                status: Some("resolved".into()),
                ..UpdateCase::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("resolving {case_id}: {e}"))?;
        exp.resolved.push(case_id.clone());
    }
    if i % burst.note_every == burst.note_every / 3 {
        exp.agent_notes.insert(
            case_id.clone(),
            format!("Agent answer on {case_id}: replacement ships today"),
        );
    }
    Ok(())
}

/// Raises the whole burst in TG (each case, comment and resolution is a TG event: webhook
/// and feed). Returns what the check must find.
pub fn raise_burst(sys: &FaultSystem, burst: &Burst) -> anyhow::Result<Expected> {
    let mut exp = Expected::new();
    raise_range(sys, burst, 0..burst.cases, &mut exp)?;
    Ok(exp)
}

/// Raises cases `range` of the burst into `exp`.
pub fn raise_range(
    sys: &FaultSystem,
    burst: &Burst,
    range: std::ops::Range<usize>,
    exp: &mut Expected,
) -> anyhow::Result<()> {
    for i in range {
        raise_one(sys, burst, i, exp)?;
    }
    Ok(())
}

impl Expected {
    /// Nothing raised yet.
    pub fn new() -> Self {
        Expected {
            partners: partners().iter().map(PartnerRef::key).collect(),
            ..Expected::default()
        }
    }
}

/// The agents of the burst: for each case in `notes`, as soon as its incident exists in
/// Dataverse, Dana writes a partner-visible note on it (which tg-bridge must post to TG once).
/// Runs until every note is written or `stop` is set.
pub fn spawn_agents(sys: &FaultSystem, notes: BTreeMap<String, String>) -> Agents {
    let dataverse = sys.sandbox.dataverse().clone();
    let agent = sys
        .sandbox
        .identity()
        .user("agent")
        .expect("the sandbox's agent user")
        .id;
    let stop = Stop::default();
    let written = Arc::new(Mutex::new(0usize));
    let (s, w) = (stop.clone(), written.clone());
    let task = tokio::spawn(async move {
        let mut pending = notes;
        while !pending.is_empty() && !s.is_set() {
            let incidents: BTreeMap<String, String> = dataverse
                .rows("incident")
                .into_iter()
                .filter_map(|r| {
                    Some((
                        r["tgb_tgcaseid"].as_str()?.to_owned(),
                        r["incidentid"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            let ready: Vec<String> = pending
                .keys()
                .filter(|c| incidents.contains_key(*c))
                .cloned()
                .collect();
            for case in ready {
                let text = pending.remove(&case).expect("pending note");
                let incident = &incidents[&case];
                dataverse
                    .insert_row_as(
                        agent,
                        "annotation",
                        json!({
                            "subject": "[partner] Update",
                            "notetext": text,
                            "objectid_incident@odata.bind": format!("/incidents({incident})"),
                        }),
                    )
                    .map_err(|e| anyhow::anyhow!("agent note on {case}: {e:?}"))?;
                *w.lock().unwrap() += 1;
            }
            // Polls the emulator's state for incidents to answer (not a synchronisation: the
            // notes are written whenever their incident shows up).
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    });
    Agents {
        stop,
        written,
        task,
    }
}

/// The running agents.
pub struct Agents {
    stop: Stop,
    written: Arc<Mutex<usize>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Agents {
    /// Notes written so far.
    pub fn written(&self) -> usize {
        *self.written.lock().unwrap()
    }

    /// Stops them and reports a failure to write.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.stop.set();
        self.task.await.context("the agents' task")?
    }
}

/// A message published straight on the bus that no service can handle: it must end in the
/// DLQ once per consumer of its subject, and nowhere else.
#[derive(Clone, Debug)]
pub struct Poison {
    /// Its subject.
    pub subject: String,
    /// Its bytes (unique per poison).
    pub payload: Vec<u8>,
}

/// Publishes the poisoned messages: bytes that are not the protobuf of their subject, on a
/// TG subject (every adapter consumes it) and on a Dynamics subject (tg-egress, sla-monitor).
pub async fn publish_poison(sys: &FaultSystem) -> anyhow::Result<Vec<Poison>> {
    let poisons = vec![
        Poison {
            subject: "tgb.v1.tg.case.opened".into(),
            payload: b"\xff\xff\xff\xff not a TgCaseOpened (fault suite poison 1)".to_vec(),
        },
        Poison {
            subject: "tgb.v1.tg.case.comment_added".into(),
            payload: b"\x0a\xff\x7f truncated (fault suite poison 2)".to_vec(),
        },
        Poison {
            subject: "tgb.v1.dyn.case.note_added".into(),
            payload: b"\x12\x80 not a DynCaseNoteAdded (fault suite poison 3)".to_vec(),
        },
    ];
    for (i, p) in poisons.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("fault-suite-poison-{i}").as_str());
        sys.js
            .publish_with_headers(p.subject.clone(), headers, p.payload.clone().into())
            .await
            .context("publishing a poison")?
            .await
            .context("the poison's PubAck")?;
    }
    Ok(poisons)
}

/// A JSON helper: the string at `key`, or "".
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

mod tokio_util_free {
    //! A stop flag (the suite needs nothing more than this from a cancellation token).
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default, Debug)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}
