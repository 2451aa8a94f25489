//! `tgb demo`: a scripted business day through the sandbox, covering every flow D1–D8 and
//! P1–P7.
//!
//! The demo only speaks HTTP to the sandbox, as the people of the day would: partners through
//! TG's scripting API (`/_sandbox/tg/...`), Dana (agent), Pat (planner) and Sam (supervisor)
//! through Dynamics and Planner as themselves (`/_sandbox/as/{user}/...`). It checks what
//! arrived where by reading `/_sandbox/state`. So it drives a system in this process and one
//! started by `tgb up` elsewhere alike. The flows run at once; each has its own deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::join_all;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Partners taking part.
    pub partners: usize,
    /// Cases per partner.
    pub cases: usize,
    /// Longest wait for one flow.
    pub flow_timeout: Duration,
    /// Show progress bars.
    pub progress: bool,
}

/// The Planner emulator of this process and the sandbox's named users (key, id, name).
pub type LocalPlanner = (tgb_sandbox::Planner, Vec<(String, String, String)>);

/// Where the system is.
#[derive(Clone)]
pub struct Target {
    /// The sandbox base URL.
    pub sandbox: String,
    /// `tgb up`'s control URL (moves sla-monitor's clock for P3), if known.
    pub control: Option<String>,
    /// The Planner emulator when it runs in this process, with the named users: people's
    /// Planner changes then go through its library call instead of
    /// `/_sandbox/as/{user}/graph/...`.
    pub local_planner: Option<LocalPlanner>,
}

/// One flow's result.
#[derive(Clone, Debug, Serialize)]
pub struct FlowResult {
    /// e.g. `D1`.
    pub flow: String,
    /// What it is.
    pub title: String,
    /// What was sent, and by whom.
    pub sent: String,
    /// What arrived where (or what did not).
    pub arrived: String,
    /// From the first action to the last expected arrival, milliseconds.
    pub latency_ms: Option<u64>,
    /// Whether every expectation held.
    pub passed: bool,
}

/// The demo's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every flow run.
    pub flows: Vec<FlowResult>,
    /// Wall time, seconds.
    pub wall_secs: f64,
    /// TG cases the demo raised (for `tgb history tg:<id>`); the first went through D1, P1, P2
    /// and D4.
    pub cases: Vec<String>,
}

impl Report {
    /// Whether every flow passed.
    pub fn all_passed(&self) -> bool {
        !self.flows.is_empty() && self.flows.iter().all(|f| f.passed)
    }
}

// ---------------------------------------------------------------------------------------------
// The sandbox, over HTTP.

#[derive(Clone)]
struct Sb {
    http: reqwest::Client,
    base: String,
    control: Option<String>,
    state: watch::Receiver<Arc<Value>>,
    local_planner: Option<LocalPlanner>,
}

const DV: &str = "dataverse/api/data/v9.2";

impl Sb {
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> anyhow::Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Value)> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(e) = if_match {
            req = req.header("If-Match", e);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            bail!("{method} {url} answered {status}: {value}");
        }
        Ok((status, headers, value))
    }

    /// A partner acts in TG.
    async fn tg(&self, method: reqwest::Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}/_sandbox/tg/{path}", self.base);
        Ok(self.send(method, &url, Some(&body), None).await?.2)
    }

    /// `user` creates a Dataverse row; its id.
    async fn dv_create(&self, user: &str, set: &str, body: Value) -> anyhow::Result<String> {
        let url = format!("{}/_sandbox/as/{user}/{DV}/{set}", self.base);
        let (_, headers, _) = self
            .send(reqwest::Method::POST, &url, Some(&body), None)
            .await?;
        headers
            .get("OData-EntityId")
            .and_then(|v| v.to_str().ok())
            .and_then(|u| u.rsplit_once('('))
            .map(|(_, id)| id.trim_end_matches(')').to_owned())
            .with_context(|| format!("no OData-EntityId from POST {set}"))
    }

    /// `user` changes a Dataverse row.
    async fn dv_update(&self, user: &str, set: &str, id: &str, body: Value) -> anyhow::Result<()> {
        let url = format!("{}/_sandbox/as/{user}/{DV}/{set}({id})", self.base);
        self.send(reqwest::Method::PATCH, &url, Some(&body), None)
            .await
            .map(|_| ())
    }

    /// `user` changes a Planner task in Planner: through the emulator's library call when it
    /// runs here or behind `tgb up`'s control listener, else over
    /// `/_sandbox/as/{user}/graph/...` (read for the ETag, then PATCH with If-Match).
    async fn planner_update(&self, user: &str, task_id: &str, body: Value) -> anyhow::Result<()> {
        if let Some((planner, users)) = &self.local_planner {
            let (_, id, name) = users
                .iter()
                .find(|(k, _, _)| k == user)
                .with_context(|| format!("no sandbox user '{user}'"))?;
            planner
                .update_task_as(&tgb_sandbox_planner::Caller::user(id, name), task_id, &body)
                .map_err(|e| anyhow::anyhow!("Planner update as {user}: {e:?}"))?;
            return Ok(());
        }
        if let Some(control) = &self.control {
            let url = format!("{control}/planner/tasks/{task_id}?as={user}");
            return self
                .send(reqwest::Method::PATCH, &url, Some(&body), None)
                .await
                .map(|_| ());
        }
        let url = format!(
            "{}/_sandbox/as/{user}/graph/v1.0/planner/tasks/{task_id}",
            self.base
        );
        let (_, _, task) = self.send(reqwest::Method::GET, &url, None, None).await?;
        let etag = task["@odata.etag"]
            .as_str()
            .context("the task has no @odata.etag")?
            .to_owned();
        self.send(reqwest::Method::PATCH, &url, Some(&body), Some(&etag))
            .await
            .map(|_| ())
    }

    /// Waits until `check` finds what it looks for in the sandbox's state.
    async fn until<T>(
        &self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut rx = self.state.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            if let Some(v) = check(&state) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{what}: not there after the deadline");
            }
            if tokio::time::timeout(left, rx.changed()).await.is_err() {
                bail!("{what}: not there after the deadline");
            }
        }
    }
}

fn rows<'a>(state: &'a Value, set: &str) -> impl Iterator<Item = &'a Value> {
    state["dataverse"]["tables"][set]
        .as_array()
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

fn tasks(state: &Value) -> impl Iterator<Item = &Value> {
    state["planner"]["tasks"]
        .as_array()
        .map(|a| a.iter())
        .into_iter()
        .flatten()
        .map(|t| &t["task"])
}

fn task_titled<'a>(state: &'a Value, prefix: &str) -> Option<&'a Value> {
    tasks(state).find(|t| t["title"].as_str().is_some_and(|s| s.starts_with(prefix)))
}

fn api_comment(state: &Value, case_id: &str, needle: &str) -> Option<String> {
    state["tg"]["comments"].as_array()?.iter().find_map(|c| {
        let body = c["body"].as_str()?;
        (c["case_id"] == case_id
            && c["source"] == "api"
            && body.to_lowercase().contains(&needle.to_lowercase()))
        .then(|| body.to_owned())
    })
}

// ---------------------------------------------------------------------------------------------
// The day.

struct Partner {
    qualifier: String,
    id: String,
    name: String,
    account: String,
}

impl Partner {
    fn key(&self) -> String {
        format!("{}:{}", self.qualifier, self.id)
    }
    fn json(&self) -> Value {
        json!({"qualifier": self.qualifier, "id": self.id, "name": self.name})
    }
}

struct Flow {
    flow: &'static str,
    title: &'static str,
    sent: String,
    arrived: Vec<String>,
    started: Instant,
}

impl Flow {
    fn new(flow: &'static str, title: &'static str) -> Self {
        Flow {
            flow,
            title,
            sent: String::new(),
            arrived: Vec::new(),
            started: Instant::now(),
        }
    }
    fn sent(&mut self, s: impl Into<String>) {
        if !self.sent.is_empty() {
            self.sent.push_str("; ");
        }
        self.sent.push_str(&s.into());
    }
    fn arrived(&mut self, s: impl Into<String>) {
        self.arrived.push(s.into());
    }
    fn done(self, result: anyhow::Result<()>) -> FlowResult {
        let mut arrived = self.arrived.join("; ");
        let passed = result.is_ok();
        if let Err(e) = result {
            if !arrived.is_empty() {
                arrived.push_str("; ");
            }
            arrived.push_str(&format!("MISSING: {e:#}"));
        }
        FlowResult {
            flow: self.flow.into(),
            title: self.title.into(),
            sent: self.sent,
            arrived,
            latency_ms: passed.then(|| self.started.elapsed().as_millis() as u64),
            passed,
        }
    }
}

/// Runs the demo against the system at `target`.
pub async fn run(target: &Target, opts: &DemoOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let (tx, rx) = watch::channel(Arc::new(Value::Null));
    let state_url = format!("{}/_sandbox/state", target.sandbox);
    let first = http
        .get(&state_url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!(
                "no sandbox at {}: start tg-bridge with `tgb up`, or run `tgb demo` alone",
                target.sandbox
            )
        })?
        .json::<Value>()
        .await?;
    tx.send_replace(Arc::new(first));
    let poller = {
        let http = http.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if tx.is_closed() {
                    break;
                }
                if let Ok(r) = http.get(&state_url).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    tx.send_replace(Arc::new(v));
                }
            }
        })
    };
    let sb = Sb {
        http,
        base: target.sandbox.clone(),
        control: target.control.clone(),
        state: rx,
        local_planner: target.local_planner.clone(),
    };
    let run_id = format!("{:04}", rand::random::<u16>() % 10_000);

    // The morning: partners and their accounts exist on both sides.
    let mut partners = Vec::new();
    for p in 1..=opts.partners {
        let id = format!("DEMO{run_id}{p:02}");
        let name = format!("Demo Supplier {p}");
        let account = sb
            .dv_create(
                "agent",
                "accounts",
                json!({"name": name, "accountnumber": id, "tgb_partnerkey": format!("ZZ:{id}")}),
            )
            .await
            .context("creating the partner accounts in Dynamics")?;
        partners.push(Arc::new(Partner {
            qualifier: "ZZ".into(),
            id,
            name,
            account,
        }));
    }

    let bar = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} flows {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let deadline = Instant::now() + opts.flow_timeout;
    let mut flows: Vec<futures::future::BoxFuture<'static, FlowResult>> = Vec::new();
    let cases = Arc::new(std::sync::Mutex::new(Vec::new()));
    for (pi, p) in partners.iter().enumerate() {
        for c in 0..opts.cases {
            let (sb, p, cases) = (sb.clone(), p.clone(), cases.clone());
            flows.push(Box::pin(async move {
                case_day(&sb, &p, c, pi == 0 && c == 0, deadline, &cases).await
            }));
        }
        macro_rules! flow {
            ($f:ident) => {{
                let (sb, p) = (sb.clone(), p.clone());
                flows.push(Box::pin(async move { $f(&sb, &p, deadline).await }));
            }};
        }
        flow!(d2_p4_exception);
        flow!(d3_p5_documents);
        flow!(d5_milestones);
        flow!(d6_dispute);
        flow!(d7_kpis);
        flow!(d8_master_data);
        flow!(p6_onboarding);
        flow!(p7_action_item);
        flow!(p3_sla_breach);
    }
    if let Some(b) = &bar {
        b.set_length(flows.len() as u64);
    }
    let bar_ref = bar.clone();
    let results = join_all(flows.into_iter().map(|f| {
        let bar = bar_ref.clone();
        async move {
            let r = f.await;
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(format!(
                    "{} {} {}",
                    r.flow,
                    if r.passed { "ok" } else { "FAILED" },
                    r.title
                ));
            }
            r
        }
    }))
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    poller.abort();
    let mut flows = results;
    flows.sort_by_key(|f| order(&f.flow));
    let cases = cases.lock().unwrap().clone();
    Ok(Report {
        flows,
        wall_secs: started.elapsed().as_secs_f64(),
        cases,
    })
}

fn order(flow: &str) -> (u8, u32) {
    let first = flow.split(['/', '+']).next().unwrap_or(flow);
    let kind = if first.starts_with('D') { 0 } else { 1 };
    (kind, first[1..].parse().unwrap_or(99))
}

/// D1, P1, D4 (and P2 for the first case): a partner raises a case; Dynamics and Planner get
/// it; Dana answers and changes the status; Pat starts the task; the partner sees all of it.
async fn case_day(
    sb: &Sb,
    p: &Partner,
    n: usize,
    with_p2: bool,
    deadline: Instant,
    cases: &std::sync::Mutex<Vec<String>>,
) -> FlowResult {
    let mut f = Flow::new(
        if with_p2 { "D1+P1+P2+D4" } else { "D1+P1+D4" },
        "case sync both ways, triage task, progress, communication capture",
    );
    let r = async {
        let ev = sb
            .tg(
                reqwest::Method::POST,
                "cases",
                json!({"partner": p.json(), "title": format!("Short delivery #{}", n + 1),
                       "description": "Two pallets missing from the delivery", "category": "shipment_discrepancy", "priority": "normal"}),
            )
            .await?;
        let case_id = ev["data"]["case_id"].as_str().context("no case id")?.to_owned();
        {
            // The case with the whole story (P2 too) comes first, whichever was raised first:
            // it is the one the report points to (`tgb history`).
            let mut cases = cases.lock().unwrap();
            if with_p2 {
                cases.insert(0, case_id.clone());
            } else {
                cases.push(case_id.clone());
            }
        }
        f.sent(format!("{} raised {case_id} in TG", p.id));
        let incident = sb
            .until(deadline, "D1: the Dynamics case", |s| {
                rows(s, "incidents")
                    .find(|r| r["tgb_tgcaseid"] == case_id.as_str())
                    .and_then(|r| r["incidentid"].as_str().map(str::to_owned))
            })
            .await?;
        f.arrived(format!("Dynamics incident {incident}"));
        let marker = format!("[{case_id}]");
        let task = sb
            .until(deadline, "P1: the Planner triage task", |s| {
                task_titled(s, &marker).and_then(|t| t["id"].as_str().map(str::to_owned))
            })
            .await?;
        f.arrived(format!("Planner task {task}"));

        // D4: the partner writes in the thread.
        let text = format!("Photos of the delivery note for {case_id} attached");
        let c = sb
            .tg(
                reqwest::Method::POST,
                &format!("cases/{case_id}/comments"),
                json!({"author": {"name": format!("{} buyer", p.name), "email": "buyer@demo.example"}, "body": text}),
            )
            .await?;
        let comment_id = c["data"]["comment_id"].as_str().unwrap_or_default().to_owned();
        f.sent("partner comment");
        sb.until(deadline, "D4: the partner message in Dynamics", |s| {
            rows(s, "tgb_partnermessages")
                .any(|r| {
                    r["tgb_tgmessageid"] == comment_id.as_str()
                        || r["description"].as_str().is_some_and(|d| d.contains(&text))
                })
                .then_some(())
        })
        .await?;
        f.arrived("Dynamics partner message");

        // D1 back: Dana answers the partner and waits on them.
        let note = format!("We are checking the warehouse scans for {case_id}.");
        sb.dv_create(
            "agent",
            "annotations",
            json!({"subject": "[partner] Update", "notetext": note,
                   "objectid_incident@odata.bind": format!("/incidents({incident})")}),
        )
        .await?;
        sb.dv_update(
            "agent",
            "incidents",
            &incident,
            json!({"statecode": 0, "statuscode": 3}),
        )
        .await?;
        f.sent("Dana's note and status in Dynamics");
        sb.until(deadline, "D1: Dana's note on the TG case", |s| {
            api_comment(s, &case_id, "warehouse scans")
        })
        .await?;
        sb.until(deadline, "D1: status waiting_on_partner in TG", |s| {
            (s["tg"]["cases"][case_id.as_str()]["status"] == "waiting_on_partner").then_some(())
        })
        .await?;
        f.arrived("TG comment + status waiting_on_partner");

        if with_p2 {
            sb.planner_update("planner", &task, json!({"percentComplete": 50}))
                .await?;
            f.sent("Pat starts the task in Planner");
            sb.until(deadline, "P2: progress on the TG case", |s| {
                api_comment(s, &case_id, "in progress")
            })
            .await?;
            f.arrived("TG comment 'in progress'");
        }
        Ok(())
    }
    .await;
    f.done(r)
}

/// D2 and P4: Dana raises an exception in Dynamics involving two departments.
async fn d2_p4_exception(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new(
        "D2+P4",
        "Dynamics exception → TG case; cross-functional tasks",
    );
    let r = async {
        let title = format!("Pricing mismatch on PO-{} ", p.id);
        let id = sb
            .dv_create(
                "agent",
                "tgb_exceptions",
                json!({"tgb_name": title, "tgb_kind": 100000001, "tgb_description": "Unit price 4.10 invoiced, 3.95 agreed",
                       "tgb_involveddepartments": "procurement,finance",
                       "tgb_Account@odata.bind": format!("/accounts({})", p.account)}),
            )
            .await?;
        f.sent(format!("Dana raised exception {id} (procurement, finance)"));
        let case = sb
            .until(deadline, "D2: the TG collaboration case", |s| {
                s["tg"]["cases"].as_object()?.values().find_map(|c| {
                    (c["title"].as_str().is_some_and(|t| t.trim() == title.trim()))
                        .then(|| c["case_id"].as_str().map(str::to_owned))
                        .flatten()
                })
            })
            .await?;
        f.arrived(format!("TG case {case}"));
        let group = format!("[EX-{id}/");
        let n = sb
            .until(deadline, "P4: one task per department", |s| {
                let n = tasks(s)
                    .filter(|t| t["title"].as_str().is_some_and(|x| x.starts_with(&group)))
                    .count();
                (n >= 2).then_some(n)
            })
            .await?;
        f.arrived(format!("{n} Planner tasks"));
        Ok(())
    }
    .await;
    f.done(r)
}

/// D3 and P5: the partner uploads a compliance certificate; a reviewer approves it in Planner.
async fn d3_p5_documents(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new(
        "D3+P5",
        "onboarding document → review task → outcome in TG and Dynamics",
    );
    let r = async {
        let ev = sb
            .tg(
                reqwest::Method::POST,
                "documents",
                json!({"partner": p.json(), "doc_type": "compliance_certificate", "file_name": "iso9001.pdf",
                       "expires_on": "2030-12-31", "generate_size": 2048}),
            )
            .await?;
        let doc = ev["data"]["document_id"].as_str().context("no document id")?.to_owned();
        f.sent(format!("{} uploaded {doc}", p.id));
        let marker = format!("[doc {doc}]");
        let task = sb
            .until(deadline, "P5: the review task", |s| {
                task_titled(s, &marker).and_then(|t| t["id"].as_str().map(str::to_owned))
            })
            .await?;
        f.arrived(format!("review task {task}"));
        sb.planner_update(
            "supervisor",
            &task,
            json!({"appliedCategories": {"category2": true}, "percentComplete": 100}),
        )
        .await?;
        f.sent("Sam approves it in Planner");
        sb.until(deadline, "P5: the review outcome in TG", |s| {
            s["tg"]["documents"][doc.as_str()]["reviews"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
                .then_some(())
        })
        .await?;
        f.arrived("TG review outcome");
        let account = p.account.clone();
        sb.until(deadline, "D3: the verification on the account", |s| {
            rows(s, "accounts")
                .any(|r| r["accountid"] == account.as_str() && r["tgb_compliancecertverified"] == true)
                .then_some(())
        })
        .await?;
        f.arrived("Dynamics account verified");
        Ok(())
    }
    .await;
    f.done(r)
}

/// D5: a sales order is released for shipment in Dynamics.
async fn d5_milestones(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("D5", "order milestone → TG");
    let r = async {
        let po = format!("PO-{}", p.id);
        let order = sb
            .dv_create(
                "agent",
                "salesorders",
                json!({"name": po, "ordernumber": format!("SO-{}", p.id), "tgb_tgorderid": po,
                       "customerid_account@odata.bind": format!("/accounts({})", p.account)}),
            )
            .await?;
        sb.dv_update(
            "agent",
            "salesorders",
            &order,
            json!({"tgb_milestone": 100000001}),
        )
        .await?;
        f.sent(format!("Dana released {po} for shipment"));
        sb.until(deadline, "D5: the milestone in TG", |s| {
            s["tg"]["milestones"]
                .as_array()?
                .iter()
                .any(|m| m.to_string().contains(&po))
                .then_some(())
        })
        .await?;
        f.arrived("TG milestone shipment_released");
        Ok(())
    }
    .await;
    f.done(r)
}

/// D6: the partner disputes an invoice; finance resolves it in Dynamics.
async fn d6_dispute(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("D6", "invoice dispute both ways");
    let r = async {
        let inv = format!("INV-{}", p.id);
        let invoice = sb
            .dv_create(
                "agent",
                "invoices",
                json!({"name": inv, "invoicenumber": inv, "totalamount": 1200.0,
                       "customerid_account@odata.bind": format!("/accounts({})", p.account)}),
            )
            .await?;
        let ev = sb
            .tg(
                reqwest::Method::POST,
                "disputes",
                json!({"partner": p.json(), "invoice_ref": inv, "disputed_amount": {"value": 200.0, "currency": "EUR"},
                       "reason": "Two pallets short"}),
            )
            .await?;
        let dispute = ev["data"]["dispute_id"].as_str().context("no dispute id")?.to_owned();
        f.sent(format!("{} disputed {inv} ({dispute})", p.id));
        sb.until(deadline, "D6: the dispute on the Dynamics invoice", |s| {
            rows(s, "invoices")
                .any(|r| r["invoiceid"] == invoice.as_str() && r["tgb_disputeid"] == dispute.as_str())
                .then_some(())
        })
        .await?;
        f.arrived("Dynamics invoice dispute columns");
        sb.dv_update(
            "agent",
            "invoices",
            &invoice,
            json!({"tgb_disputestatus": 100000002, "tgb_resolutionnote": "Credit note issued", "tgb_adjustment": -200.0}),
        )
        .await?;
        f.sent("finance resolves it in Dynamics");
        sb.until(deadline, "D6: the resolution in TG", |s| {
            (s["tg"]["disputes"][dispute.as_str()]["resolution_note"] == "Credit note issued")
                .then_some(())
        })
        .await?;
        f.arrived("TG dispute resolution note");
        Ok(())
    }
    .await;
    f.done(r)
}

/// D7: the KPI period closes in Dynamics.
async fn d7_kpis(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("D7", "KPI period close → TG scorecard");
    let r = async {
        for (key, value) in [
            ("order_accuracy", 98.5),
            ("shipment_timeliness", 91.0),
            ("case_response_time", 3.5),
            ("payment_compliance", 99.0),
        ] {
            sb.dv_create(
                "agent",
                "tgb_partnerkpis",
                json!({"tgb_name": key, "tgb_period": "2026-10", "tgb_kpikey": key, "tgb_value": value,
                       "tgb_unit": if key == "case_response_time" { "h" } else { "%" }, "tgb_periodclosed": key == "payment_compliance",
                       "tgb_Partner@odata.bind": format!("/accounts({})", p.account)}),
            )
            .await?;
        }
        f.sent("4 KPIs for 2026-10, period closed");
        let key = format!("{}/2026-10", p.key());
        sb.until(deadline, "D7: the scorecard in TG", |s| {
            s["tg"]["scorecards"]
                .as_object()?
                .iter()
                .any(|(k, v)| {
                    (k == &key || k.contains(&p.id)) && v.to_string().contains("payment_compliance")
                })
                .then_some(())
        })
        .await?;
        f.arrived(format!("TG scorecard {key}"));
        Ok(())
    }
    .await;
    f.done(r)
}

/// D8: the partner moves; later Dynamics corrects the city.
async fn d8_master_data(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("D8", "master data both ways");
    let r = async {
        sb.tg(
            reqwest::Method::PATCH,
            &format!("partners/{}", p.key()),
            json!({"addresses": [{"kind": "main", "line1": "1 Dock Road", "city": "Antwerp", "postal_code": "2000", "country": "BE"}]}),
        )
        .await?;
        f.sent(format!("{} moved to Antwerp in TG", p.id));
        let account = p.account.clone();
        sb.until(deadline, "D8: the address on the Dynamics account", |s| {
            rows(s, "accounts")
                .any(|r| r["accountid"] == account.as_str() && r["address1_city"] == "Antwerp")
                .then_some(())
        })
        .await?;
        f.arrived("Dynamics account city Antwerp");
        sb.dv_update("agent", "accounts", &p.account, json!({"address1_city": "Ghent"}))
            .await?;
        f.sent("Dana corrects the city to Ghent in Dynamics");
        let key = p.key();
        sb.until(deadline, "D8: the address in TG", |s| {
            s["tg"]["partners"][key.as_str()]["addresses"]
                .to_string()
                .contains("Ghent")
                .then_some(())
        })
        .await?;
        f.arrived("TG partner city Ghent");
        Ok(())
    }
    .await;
    f.done(r)
}

/// P6: the partner's onboarding moves; internal steps appear; one status on both sides.
async fn p6_onboarding(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("P6", "onboarding status on both sides");
    let r = async {
        sb.tg(
            reqwest::Method::PUT,
            &format!("partners/{}/onboarding", p.key()),
            json!({"requirements": [
                {"key": "tax_form", "label": "Tax form", "state": "submitted"},
                {"key": "banking_details", "label": "Banking details", "state": "pending"}],
                "profile_complete": true, "agreements_acknowledged": true}),
        )
        .await?;
        f.sent(format!("{} updated its onboarding", p.id));
        let marker = format!("[{} ", p.key());
        let n = sb
            .until(deadline, "P6: the internal onboarding tasks", |s| {
                let n = tasks(s)
                    .filter(|t| t["title"].as_str().is_some_and(|x| x.starts_with(&marker)))
                    .count();
                (n >= 1).then_some(n)
            })
            .await?;
        f.arrived(format!("{n} Planner onboarding tasks"));
        let key = p.key();
        sb.until(deadline, "P6: the onboarding status in TG", |s| {
            (!s["tg"]["partners"][key.as_str()]["onboarding_status"].is_null()).then_some(())
        })
        .await?;
        f.arrived("TG onboarding status");
        Ok(())
    }
    .await;
    f.done(r)
}

/// P7: an action item from a discussion.
async fn p7_action_item(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("P7", "discussion action item → Planner task");
    let r = async {
        let ev = sb
            .tg(
                reqwest::Method::POST,
                "action-items",
                json!({"partner": p.json(), "text": "Send the revised packing instructions", "owner_hint": "pat", "due_on": "2026-12-15"}),
            )
            .await?;
        let item = ev["data"]["action_item_id"].as_str().context("no item id")?.to_owned();
        f.sent(format!("{} flagged {item} for Pat", p.id));
        let marker = format!("[AI {item}]");
        let task = sb
            .until(deadline, "P7: the task", |s| {
                task_titled(s, &marker).and_then(|t| t["id"].as_str().map(str::to_owned))
            })
            .await?;
        f.arrived(format!("Planner task {task}"));
        Ok(())
    }
    .await;
    f.done(r)
}

/// P3: an urgent case nobody answers breaches its first-response target.
async fn p3_sla_breach(sb: &Sb, p: &Partner, deadline: Instant) -> FlowResult {
    let mut f = Flow::new("P3", "SLA breach → escalation task");
    let r = async {
        let Some(control) = &sb.control else {
            bail!("no tgb up control URL to move sla-monitor's clock (run `tgb demo` alone, or with --attach)");
        };
        let ev = sb
            .tg(
                reqwest::Method::POST,
                "cases",
                json!({"partner": p.json(), "title": "Line stopped: no labels", "category": "order", "priority": "urgent"}),
            )
            .await?;
        let case_id = ev["data"]["case_id"].as_str().context("no case id")?.to_owned();
        f.sent(format!("{} raised urgent {case_id}; nobody answers", p.id));
        // The clock must hold the case before time moves on.
        let marker = format!("[{case_id}]");
        sb.until(deadline, "P3: the case reached Planner (the SLA clock runs)", |s| {
            task_titled(s, &marker).map(|_| ())
        })
        .await?;
        let escalation = format!("[{case_id} L1]");
        let mut advanced = 0;
        loop {
            // 70 SLA minutes pass (the urgent first-response target is 60) until it breaches.
            let r = sb
                .http
                .post(format!("{control}/sla-clock/advance"))
                .json(&json!({"minutes": 70}))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            r.context("moving sla-monitor's clock")?;
            advanced += 70;
            let short = (Instant::now() + Duration::from_secs(3)).min(deadline);
            if let Ok(task) = sb
                .until(short, "P3: the escalation task", |s| {
                    task_titled(s, &escalation).and_then(|t| t["id"].as_str().map(str::to_owned))
                })
                .await
            {
                f.sent(format!("sla clock +{advanced} min"));
                f.arrived(format!("escalation task {task}"));
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("P3: no escalation task after the clock moved {advanced} min");
            }
        }
    }
    .await;
    f.done(r)
}

/// The result table.
pub fn render(report: &Report) -> String {
    let mut t =
        crate::render::table(&["flow", "what", "sent", "arrived where", "latency", "result"]);
    for f in &report.flows {
        t.add_row(vec![
            f.flow.clone(),
            f.title.clone(),
            f.sent.clone(),
            f.arrived.clone(),
            f.latency_ms
                .map(|l| format!("{l} ms"))
                .unwrap_or_else(|| "-".into()),
            if f.passed {
                "pass".into()
            } else {
                "FAIL".into()
            },
        ]);
    }
    let passed = report.flows.iter().filter(|f| f.passed).count();
    let mut out = format!(
        "{t}\n{passed}/{} flow runs passed in {:.1} s.",
        report.flows.len(),
        report.wall_secs
    );
    if let Some(c) = report.cases.first() {
        out.push_str(&format!(
            "\nSee one case's story: tgb history tg:{c}   (links: tgb links tg:case:{c})"
        ));
    }
    out
}
