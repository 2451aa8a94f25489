//! Section 2: Dataverse and Graph requests per synced change for a mix of the flows (with
//! dynamics-adapter's `$batch` coalescing on and off), and a backlog drained under the real
//! Dataverse limits.
//!
//! People act as the demo's people do: partners through TG's scripting API, Dana through
//! Dynamics as herself (`/_sandbox/as/agent/...`), Pat through the Planner emulator's library
//! call. Their own requests are not counted: only tg-bridge's requests to Dataverse and Graph,
//! from the sandbox's call log (token requests excluded).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tgb_sandbox::tg::model::{PartnerComment, PartnerRef, Person, RaiseCase, UpdateCase};

use super::harness::{BenchSystem, now_ms};
use super::pipeline::ISSUES_PLAN;

const DV: &str = "dataverse/api/data/v9.2";

/// One kind of change in the mix.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeKind {
    /// The event it becomes on the bus.
    pub kind: &'static str,
    /// Who makes it.
    pub origin: &'static str,
    /// Changes of this kind in the mix.
    pub count: u64,
    /// Microsoft targets (Dataverse, Graph) it must reach: the naive requests per change.
    pub naive_targets: u64,
    /// Of which Dataverse.
    pub naive_dataverse: u64,
    /// Of which Graph.
    pub naive_graph: u64,
}

/// The mix, once per round: (event, origin, count per round, Dataverse targets, Graph
/// targets).
pub const MIX: &[(&str, &str, u64, u64, u64)] = &[
    ("tg.case.opened", "partner in TG", 3, 1, 1),
    ("tg.case.comment_added", "partner in TG", 1, 1, 0),
    ("tg.case.updated (resolved)", "partner in TG", 1, 1, 1),
    ("tg.document.uploaded", "partner in TG", 1, 1, 1),
    ("tg.dispute.opened", "partner in TG", 1, 1, 0),
    ("tg.partner.updated", "partner in TG", 1, 1, 0),
    ("tg.discussion.action_item", "partner in TG", 1, 0, 1),
    ("tg.onboarding.updated", "partner in TG", 1, 1, 1),
    ("dyn.exception.raised", "agent in Dynamics", 1, 0, 1),
    ("dyn.order.milestone", "agent in Dynamics", 1, 0, 0),
    ("dyn.kpi.snapshot", "agent in Dynamics", 1, 0, 0),
    ("dyn.case.note_added", "agent in Dynamics", 1, 0, 0),
    ("dyn.case.status_changed", "agent in Dynamics", 1, 0, 0),
    ("dyn.invoice.status_changed", "agent in Dynamics", 1, 0, 0),
    ("planner.task.progressed", "planner in Planner", 1, 0, 0),
];

/// One run of the mix.
#[derive(Clone, Debug, Serialize)]
pub struct MixResult {
    /// dynamics-adapter's `$batch` coalescing (`batch_max_requests` 10) or not (1).
    pub batching: bool,
    /// Rounds of the mix.
    pub rounds: usize,
    /// Changes made.
    pub changes: u64,
    /// Changes that must reach Dataverse or Graph.
    pub changes_to_microsoft: u64,
    /// One request per change per Microsoft target.
    pub naive_requests: u64,
    /// Of which to Dataverse.
    pub naive_dataverse_requests: u64,
    /// Of which to Graph.
    pub naive_graph_requests: u64,
    /// tg-bridge's requests to Dataverse.
    pub dataverse_requests: u64,
    /// tg-bridge's requests to Graph.
    pub graph_requests: u64,
    /// Of the Graph requests, planner-adapter's plan polls (by time, not by change: they
    /// depend on the poll interval and the wall time).
    pub graph_plan_polls: u64,
    /// planner-adapter's plan poll interval, ms.
    pub planner_poll_ms: u64,
    /// dataverse_requests + graph_requests.
    pub requests: u64,
    /// requests / changes.
    pub requests_per_change: f64,
    /// naive_requests / changes.
    pub naive_requests_per_change: f64,
    /// requests / naive_requests.
    pub share_of_naive: f64,
    /// Requests by `system METHOD route`.
    pub by_route: BTreeMap<String, u64>,
    /// The mix.
    pub kinds: Vec<ChangeKind>,
    /// From the first change to quiet, seconds (includes waiting for the Planner poll).
    pub wall_secs: f64,
}

/// The backlog drained under the limits.
#[derive(Clone, Debug, Serialize)]
pub struct BacklogResult {
    /// `full` (6000 / 300 s) or `quick` (600 / 30 s, the same rate).
    pub mode: String,
    /// The sandbox's limit: requests per window.
    pub limit_requests: u32,
    /// The window, seconds.
    pub limit_window_secs: f64,
    /// Concurrent requests allowed.
    pub limit_concurrent: u32,
    /// limit_requests / limit_window_secs.
    pub allowed_per_sec: f64,
    /// The adapter's governor: requests per window, window, headroom, concurrency.
    pub governor: Value,
    /// Changes in the backlog (TG events: cases, comments, resolutions).
    pub changes: usize,
    /// Dataverse requests answered (not 429) from the adapter's first to its last.
    pub requests: u64,
    /// From the adapter's first Dataverse request to its last, whole seconds (the call log
    /// stamps calls to the second; the partial first and last seconds are left out).
    pub drain_secs: f64,
    /// Requests answered within drain_secs / drain_secs.
    pub achieved_per_sec: f64,
    /// achieved_per_sec / allowed_per_sec.
    pub share_of_allowed: f64,
    /// 429 answers.
    pub throttled: u64,
    /// 429 answers after the first one.
    pub throttled_after_first: u64,
    /// Requests sent before a `Retry-After` already answered ran out (the sandbox counts them).
    pub early_requests: u64,
    /// Dataverse requests per change.
    pub requests_per_change: f64,
    /// Every change reached Dynamics before the deadline.
    pub complete: bool,
    /// How long the Dataverse emulator took to answer the adapter's requests, ms (with the
    /// adapter's concurrency, what bounds the rate when the governor does not).
    pub dataverse_latency_ms: super::pipeline::Percentiles,
    /// CPU and memory over the drain: dynamics-adapter, nats-server, and this process (the
    /// emulators).
    pub resources: Vec<super::resources::ProcUsage>,
}

/// Section 2's result (each part when its section ran).
#[derive(Clone, Debug, Default, Serialize)]
pub struct QuotaResult {
    /// The mix with `$batch` coalescing (the default).
    pub batching_on: Option<MixResult>,
    /// The mix with `$batch` coalescing off (`TGB_DYNAMICS__BATCH_MAX_REQUESTS=1`).
    pub batching_off: Option<MixResult>,
    /// The backlog.
    pub backlog: Option<BacklogResult>,
}

const SERVICES_NAMES: [&str; 6] = super::procs::SERVICES;

/// The sandbox over HTTP, as the people of the mix use it.
struct People<'a> {
    sys: &'a BenchSystem,
    base: String,
}

impl People<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &Value,
    ) -> anyhow::Result<(reqwest::header::HeaderMap, Value)> {
        let r = self
            .sys
            .http
            .request(method.clone(), url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            bail!("{method} {url} answered {status}: {v}");
        }
        Ok((headers, v))
    }

    async fn tg(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/_sandbox/tg/{path}", self.base);
        Ok(self.send(method, &url, &body).await?.1)
    }

    async fn dv_create(&self, set: &str, body: Value) -> anyhow::Result<String> {
        let url = format!("{}/_sandbox/as/agent/{DV}/{set}", self.base);
        let (headers, _) = self.send(reqwest::Method::POST, &url, &body).await?;
        headers
            .get("OData-EntityId")
            .and_then(|v| v.to_str().ok())
            .and_then(|u| u.rsplit_once('('))
            .map(|(_, id)| id.trim_end_matches(')').to_owned())
            .with_context(|| format!("no OData-EntityId from POST {set}"))
    }

    async fn dv_update(&self, set: &str, id: &str, body: Value) -> anyhow::Result<()> {
        let url = format!("{}/_sandbox/as/agent/{DV}/{set}({id})", self.base);
        self.send(reqwest::Method::PATCH, &url, &body)
            .await
            .map(|_| ())
    }
}

/// The last call's sequence number in the call log.
fn last_seq(sys: &BenchSystem) -> u64 {
    sys.sandbox.calls().recent(1).first().map_or(0, |c| c.seq)
}

/// tg-bridge's Dataverse and Graph calls after `seq`.
fn ms_calls(sys: &BenchSystem, seq: u64) -> Vec<tgb_sandbox::CallRecord> {
    sys.sandbox
        .calls()
        .all()
        .into_iter()
        .filter(|c| c.seq > seq && !c.scripted && (c.system == "dataverse" || c.system == "graph"))
        .collect()
}

/// Whether a call is planner-adapter's plan poll (it runs on its own clock, not because of
/// a change).
fn is_plan_poll(c: &tgb_sandbox::CallRecord) -> bool {
    c.system == "graph" && c.method == "GET" && c.route.ends_with("/planner/plans/{id}/tasks")
}

/// Calls other than plan polls, so far.
fn activity(sys: &BenchSystem) -> usize {
    sys.sandbox
        .calls()
        .all()
        .iter()
        .filter(|c| !is_plan_poll(c))
        .count()
}

/// Waits until no consumer has work left and no call (plan polls aside) arrived for `quiet`.
async fn quiesce(sys: &mut BenchSystem, quiet: Duration, within: Duration) -> anyhow::Result<()> {
    let deadline = now_ms() + within.as_secs_f64() * 1000.0;
    let mut last = (usize::MAX, now_ms());
    loop {
        if let Some(crash) = sys.crashed() {
            bail!("{crash}");
        }
        let seen = activity(sys);
        let backlog = sys.backlog().await.unwrap_or(u64::MAX);
        if seen != last.0 || backlog > 0 {
            last = (seen, now_ms());
        } else if now_ms() - last.1 >= quiet.as_secs_f64() * 1000.0 {
            return Ok(());
        }
        if now_ms() > deadline {
            bail!("the system did not settle within {within:?} (bus backlog {backlog})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `check` holds.
async fn until(
    sys: &mut BenchSystem,
    what: &str,
    within: Duration,
    mut check: impl FnMut(&BenchSystem) -> bool,
) -> anyhow::Result<()> {
    let deadline = now_ms() + within.as_secs_f64() * 1000.0;
    loop {
        if let Some(crash) = sys.crashed() {
            bail!("{crash}");
        }
        if check(sys) {
            return Ok(());
        }
        if now_ms() > deadline {
            bail!("{what}: not there within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Round {
    partner: PartnerRef,
    account: String,
    invoice: String,
    order: String,
    cases: Vec<String>,
    dispute: String,
}

/// Runs the mix on a running system (all six services); `planner_poll` is its Planner poll.
pub async fn run_mix(
    sys: &mut BenchSystem,
    rounds: usize,
    batching: bool,
    planner_poll: Duration,
    progress: &dyn Fn(String),
) -> anyhow::Result<MixResult> {
    let people = People {
        sys,
        base: sys.sandbox.base_url(),
    };
    let run = format!("{:04}", rand::random::<u16>() % 10_000);
    // Setup (not counted): the partners' accounts, an invoice and an order each.
    let mut rs = Vec::new();
    for r in 0..rounds {
        let id = format!("Q{run}{r:03}");
        let partner = PartnerRef {
            qualifier: "ZZ".into(),
            id: id.clone(),
            name: format!("Quota Supplier {r}"),
        };
        let account = people
            .dv_create(
                "accounts",
                json!({"name": partner.name, "accountnumber": id, "tgb_partnerkey": partner.key()}),
            )
            .await?;
        let bind = format!("/accounts({account})");
        let inv = format!("INV-{id}");
        let invoice = people
            .dv_create("invoices", json!({"name": inv, "invoicenumber": inv, "totalamount": 1200.0, "customerid_account@odata.bind": bind}))
            .await?;
        let po = format!("PO-{id}");
        let order = people
            .dv_create("salesorders", json!({"name": po, "ordernumber": format!("SO-{id}"), "tgb_tgorderid": po, "customerid_account@odata.bind": bind}))
            .await?;
        rs.push(Round {
            partner,
            account,
            invoice,
            order,
            cases: Vec::new(),
            dispute: String::new(),
        });
    }
    drop(people);
    quiesce(sys, Duration::from_secs(2), Duration::from_secs(60)).await?;
    let baseline = last_seq(sys);
    let started = now_ms();
    progress(format!(
        "quota: mix of {} changes, $batch {}",
        rounds as u64 * MIX.iter().map(|m| m.2).sum::<u64>(),
        if batching { "on" } else { "off" }
    ));

    // Phase A: what needs nothing to exist first.
    let tg = sys.sandbox.tg().clone();
    let people = People {
        sys,
        base: sys.sandbox.base_url(),
    };
    for r in &mut rs {
        let p = r.partner.clone();
        for k in 0..3 {
            let mut input = RaiseCase::new(p.clone(), format!("Quota case {k} of {}", p.id));
            input.description = "Two pallets missing".into();
            input.category = "shipment_discrepancy".into();
            input.priority = "normal".into();
            let ev = tg
                .raise_case(input)
                .map_err(|e| anyhow::anyhow!("raising a case: {e}"))?;
            r.cases.push(
                ev.data["case_id"]
                    .as_str()
                    .context("no case id")?
                    .to_owned(),
            );
        }
        tg.partner_comment(
            &r.cases[0],
            PartnerComment {
                author: Person {
                    name: format!("{} buyer", p.name),
                    email: String::new(),
                },
                body: format!("Photos of the delivery note for {}", r.cases[0]),
            },
        )
        .map_err(|e| anyhow::anyhow!("a comment: {e}"))?;
        let pj = json!({"qualifier": p.qualifier, "id": p.id, "name": p.name});
        people
            .tg(reqwest::Method::POST, "documents", json!({"partner": pj, "doc_type": "compliance_certificate", "file_name": "iso9001.pdf", "expires_on": "2030-12-31", "generate_size": 2048}))
            .await?;
        let ev = people
            .tg(reqwest::Method::POST, "disputes", json!({"partner": pj, "invoice_ref": format!("INV-{}", p.id), "disputed_amount": {"value": 200.0, "currency": "EUR"}, "reason": "Two pallets short"}))
            .await?;
        r.dispute = ev["data"]["dispute_id"]
            .as_str()
            .context("no dispute id")?
            .to_owned();
        people
            .tg(reqwest::Method::PATCH, &format!("partners/{}", p.key()), json!({"addresses": [{"kind": "main", "line1": "1 Dock Road", "city": "Antwerp", "postal_code": "2000", "country": "BE"}]}))
            .await?;
        people
            .tg(reqwest::Method::POST, "action-items", json!({"partner": pj, "text": "Send the revised packing instructions", "owner_hint": "pat", "due_on": "2026-12-15"}))
            .await?;
        people
            .tg(reqwest::Method::PUT, &format!("partners/{}/onboarding", p.key()), json!({"requirements": [{"key": "tax_form", "label": "Tax form", "state": "submitted"}, {"key": "banking_details", "label": "Banking details", "state": "pending"}], "profile_complete": true, "agreements_acknowledged": true}))
            .await?;
        let bind = format!("/accounts({})", r.account);
        people
            .dv_create("tgb_exceptions", json!({"tgb_name": format!("Pricing mismatch on PO-{}", p.id), "tgb_kind": 100000001, "tgb_description": "Unit price 4.10 invoiced, 3.95 agreed", "tgb_involveddepartments": "procurement,finance", "tgb_Account@odata.bind": bind}))
            .await?;
        people
            .dv_update("salesorders", &r.order, json!({"tgb_milestone": 100000001}))
            .await?;
        people
            .dv_create("tgb_partnerkpis", json!({"tgb_name": "payment_compliance", "tgb_period": "2026-10", "tgb_kpikey": "payment_compliance", "tgb_value": 99.0, "tgb_unit": "%", "tgb_periodclosed": true, "tgb_Partner@odata.bind": bind}))
            .await?;
    }
    drop(people);
    let cases: HashSet<String> = rs.iter().flat_map(|r| r.cases.clone()).collect();
    let disputes: HashSet<String> = rs.iter().map(|r| r.dispute.clone()).collect();
    until(
        sys,
        "the mix's incidents, triage tasks and disputes",
        Duration::from_secs(120),
        |s| {
            let incidents = s
                .sandbox
                .dataverse()
                .rows("incident")
                .iter()
                .filter(|r| {
                    r["tgb_tgcaseid"]
                        .as_str()
                        .is_some_and(|c| cases.contains(c))
                })
                .count();
            let tasks = s
                .sandbox
                .planner()
                .list_tasks(ISSUES_PLAN)
                .unwrap_or_default()
                .iter()
                .filter(|t| {
                    t["title"]
                        .as_str()
                        .and_then(|x| x.strip_prefix('['))
                        .and_then(|x| x.split(']').next())
                        .is_some_and(|c| cases.contains(c))
                })
                .count();
            let on_invoices = s
                .sandbox
                .dataverse()
                .rows("invoice")
                .iter()
                .filter(|r| {
                    r["tgb_disputeid"]
                        .as_str()
                        .is_some_and(|d| disputes.contains(d))
                })
                .count();
            incidents >= cases.len() && tasks >= cases.len() && on_invoices >= disputes.len()
        },
    )
    .await?;

    // Phase B: changes to what phase A made.
    let incident_of: BTreeMap<String, String> = sys
        .sandbox
        .dataverse()
        .rows("incident")
        .iter()
        .filter_map(|r| {
            Some((
                r["tgb_tgcaseid"].as_str()?.to_owned(),
                r["incidentid"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let task_of: BTreeMap<String, String> = sys
        .sandbox
        .planner()
        .list_tasks(ISSUES_PLAN)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| {
            let case = t["title"]
                .as_str()?
                .strip_prefix('[')?
                .split(']')
                .next()?
                .to_owned();
            Some((case, t["id"].as_str()?.to_owned()))
        })
        .collect();
    let planner_user = sys
        .sandbox
        .identity()
        .user("planner")
        .context("the sandbox's planner user")?;
    let pat = tgb_sandbox_planner::Caller::user(&planner_user.id.to_string(), &planner_user.name);
    let people = People {
        sys,
        base: sys.sandbox.base_url(),
    };
    for r in &rs {
        let inc0 = incident_of.get(&r.cases[0]).context("incident of case 0")?;
        people
            .dv_create("annotations", json!({"subject": "[partner] Update", "notetext": format!("We are checking the warehouse scans for {}.", r.cases[0]), "objectid_incident@odata.bind": format!("/incidents({inc0})")}))
            .await?;
        let inc1 = incident_of.get(&r.cases[1]).context("incident of case 1")?;
        people
            .dv_update("incidents", inc1, json!({"statecode": 0, "statuscode": 3}))
            .await?;
        tg.update_case(
            &r.cases[2],
            UpdateCase {
                status: Some("resolved".into()),
                ..UpdateCase::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("resolving a case: {e}"))?;
        people
            .dv_update("invoices", &r.invoice, json!({"tgb_disputestatus": 100000002, "tgb_resolutionnote": "Credit note issued", "tgb_adjustment": -200.0}))
            .await?;
        let task = task_of.get(&r.cases[0]).context("task of case 0")?;
        sys.sandbox
            .planner()
            .update_task_as(&pat, task, &json!({"percentComplete": 50}))
            .map_err(|e| anyhow::anyhow!("Pat's progress: {e:?}"))?;
    }
    drop(people);
    // The Planner change is seen at the next plan poll; then everything settles.
    let progressed: Vec<String> = rs.iter().map(|r| r.cases[0].clone()).collect();
    until(
        sys,
        "Pat's progress in TG",
        planner_poll + Duration::from_secs(60),
        |s| {
            progressed.iter().all(|c| {
                s.sandbox
                    .tg()
                    .comments(c)
                    .iter()
                    .any(|m| m.source == "api" && m.body.to_lowercase().contains("in progress"))
            })
        },
    )
    .await?;
    quiesce(sys, Duration::from_secs(3), Duration::from_secs(120)).await?;
    let wall = (now_ms() - started) / 1000.0;

    let calls = ms_calls(sys, baseline);
    let mut by_route = BTreeMap::new();
    for c in &calls {
        *by_route
            .entry(format!("{} {} {}", c.system, c.method, c.route))
            .or_insert(0u64) += 1;
    }
    let dataverse = calls.iter().filter(|c| c.system == "dataverse").count() as u64;
    let plan_polls = calls.iter().filter(|c| is_plan_poll(c)).count() as u64;
    let graph = calls.iter().filter(|c| c.system == "graph").count() as u64;
    let kinds: Vec<ChangeKind> = MIX
        .iter()
        .map(|(kind, origin, per_round, dv, graph)| ChangeKind {
            kind,
            origin,
            count: per_round * rounds as u64,
            naive_targets: dv + graph,
            naive_dataverse: *dv,
            naive_graph: *graph,
        })
        .collect();
    let changes: u64 = kinds.iter().map(|k| k.count).sum();
    let naive: u64 = kinds.iter().map(|k| k.count * k.naive_targets).sum();
    let requests = dataverse + graph;
    Ok(MixResult {
        batching,
        rounds,
        changes,
        changes_to_microsoft: kinds
            .iter()
            .filter(|k| k.naive_targets > 0)
            .map(|k| k.count)
            .sum(),
        naive_requests: naive,
        naive_dataverse_requests: kinds.iter().map(|k| k.count * k.naive_dataverse).sum(),
        naive_graph_requests: kinds.iter().map(|k| k.count * k.naive_graph).sum(),
        dataverse_requests: dataverse,
        graph_requests: graph,
        graph_plan_polls: plan_polls,
        planner_poll_ms: planner_poll.as_millis() as u64,
        requests,
        requests_per_change: requests as f64 / changes.max(1) as f64,
        naive_requests_per_change: naive as f64 / changes.max(1) as f64,
        share_of_naive: requests as f64 / naive.max(1) as f64,
        by_route,
        kinds,
        wall_secs: wall,
    })
}

/// Raises the backlog in TG: `n` changes (cases; every tenth case also a comment, and every
/// tenth, offset by five, resolved). Returns the case ids.
pub fn raise_backlog(sys: &BenchSystem, n: usize) -> anyhow::Result<Vec<String>> {
    let tg = sys.sandbox.tg();
    let partners: Vec<PartnerRef> = (1..=8)
        .map(|i| PartnerRef {
            qualifier: "ZZ".into(),
            id: format!("BACKLOG{i}"),
            name: format!("Backlog Supplier {i}"),
        })
        .collect();
    let mut cases = Vec::new();
    let mut made = 0;
    let mut i = 0;
    while made < n {
        let mut input = RaiseCase::new(
            partners[i % partners.len()].clone(),
            format!("Backlog case {i}"),
        );
        input.category = "shipment_discrepancy".into();
        input.priority = "normal".into();
        let ev = tg
            .raise_case(input)
            .map_err(|e| anyhow::anyhow!("raising a case: {e}"))?;
        let case = ev.data["case_id"]
            .as_str()
            .context("no case id")?
            .to_owned();
        made += 1;
        if made < n && i % 10 == 0 {
            tg.partner_comment(
                &case,
                PartnerComment {
                    author: Person {
                        name: "Backlog buyer".into(),
                        email: String::new(),
                    },
                    body: format!("More photos for {case}"),
                },
            )
            .map_err(|e| anyhow::anyhow!("a comment: {e}"))?;
            made += 1;
        }
        if made < n && i % 10 == 5 {
            tg.update_case(
                &case,
                UpdateCase {
                    status: Some("resolved".into()),
                    ..UpdateCase::default()
                },
            )
            .map_err(|e| anyhow::anyhow!("resolving: {e}"))?;
            made += 1;
        }
        cases.push(case);
        i += 1;
    }
    Ok(cases)
}

/// Drains a backlog of `n` changes with dynamics-adapter started after it was raised.
/// `sys` runs tg-ingress (and others), not dynamics-adapter yet.
pub async fn run_backlog(
    sys: &mut BenchSystem,
    n: usize,
    quick: bool,
    governor: Value,
    progress: &dyn Fn(String),
) -> anyhow::Result<BacklogResult> {
    let limits = sys.sandbox.dataverse().config().service_protection.clone();
    let limit_requests = limits.requests_per_window.unwrap_or(0);
    let window = limits.window_ms as f64 / 1000.0;
    let allowed = f64::from(limit_requests) / window.max(1e-3);
    progress(format!("quota: raising a backlog of {n} changes in TG"));
    let cases = raise_backlog(sys, n)?;
    let events = sys.sandbox.tg().events().len() as u64;
    // tg-ingress puts every TG event on the bus first (its webhook answers after the PubAck).
    until(
        sys,
        "the backlog on the bus",
        Duration::from_secs(600),
        |s| {
            s.sandbox
                .tg()
                .webhooks()
                .stats(super::harness::INGRESS_SUBSCRIPTION)
                .is_some_and(|st| st.delivered >= events)
        },
    )
    .await?;
    let baseline = last_seq(sys);
    let expected = cases.len();
    progress(format!(
        "quota: dynamics-adapter drains the backlog under {limit_requests} requests / {window} s"
    ));
    // Counted from before the adapter starts: it works before it answers /readyz.
    let incidents_before = sys.probe.as_ref().map_or(0, |p| p.count());
    sys.spawn_service("dynamics-adapter")?;
    let sampler = super::resources::Sampler::new(
        sys.pids()
            .into_iter()
            .filter(|(n, _)| n == "dynamics-adapter" || !SERVICES_NAMES.contains(&n.as_str()))
            .collect(),
    );
    let before = sampler.sample();
    sys.wait_ready("dynamics-adapter").await?;
    // Expected: ~1 request per change at 20/s at most; allow three times that.
    let within = Duration::from_secs_f64((n as f64 / allowed.max(1.0)) * 3.0 + 120.0);
    let deadline = now_ms() + within.as_secs_f64() * 1000.0;
    let mut complete = false;
    loop {
        if let Some(crash) = sys.crashed() {
            bail!("{crash}");
        }
        let incidents = sys.probe.as_ref().map_or(0, |p| p.count()) - incidents_before;
        if incidents >= expected && sys.backlog().await.unwrap_or(u64::MAX) == 0 {
            complete = true;
            break;
        }
        if now_ms() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let usage = sampler.usage(&before, &sampler.sample());
    let calls: Vec<_> = ms_calls(sys, baseline)
        .into_iter()
        .filter(|c| c.system == "dataverse")
        .collect();
    let throttled = calls.iter().filter(|c| c.status == 429).count() as u64;
    let answered: Vec<_> = calls.iter().filter(|c| c.status != 429).collect();
    let latency = super::pipeline::Percentiles::of(answered.iter().map(|c| c.latency_ms).collect());
    // The call log stamps calls to the second: the rate is taken over the whole seconds
    // between the first and the last (both partial seconds left out).
    let secs: Vec<f64> = answered
        .iter()
        .filter_map(|c| rfc3339_secs(&c.at))
        .collect();
    let (first, last) = (
        secs.iter().copied().fold(f64::INFINITY, f64::min),
        secs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let (span, counted) = if secs.len() > 1 && last - first >= 3.0 {
        let inner = secs.iter().filter(|s| **s > first && **s < last).count() as u64;
        (last - first - 1.0, inner)
    } else {
        ((last - first + 1.0).max(1.0), answered.len() as u64)
    };
    let early = sys
        .sandbox
        .dataverse()
        .limits_usage()
        .iter()
        .map(|u| u.early_requests)
        .sum();
    let requests = answered.len() as u64;
    let achieved = counted as f64 / span;
    Ok(BacklogResult {
        mode: if quick { "quick".into() } else { "full".into() },
        limit_requests,
        limit_window_secs: window,
        limit_concurrent: limits.max_concurrent.unwrap_or(0),
        allowed_per_sec: allowed,
        governor,
        changes: n,
        requests,
        drain_secs: span,
        achieved_per_sec: achieved,
        share_of_allowed: achieved / allowed.max(1e-9),
        throttled,
        throttled_after_first: throttled.saturating_sub(1),
        early_requests: early,
        requests_per_change: requests as f64 / n.max(1) as f64,
        complete,
        dataverse_latency_ms: latency,
        resources: usage,
    })
}

fn rfc3339_secs(s: &str) -> Option<f64> {
    let t = tgb_proto::timestamps::parse_rfc3339(s)?;
    Some(t.unix_timestamp() as f64)
}
