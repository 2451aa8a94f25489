//! The one check every scenario ends with.
//!
//! 1. Wait (with a deadline) until every expected effect is present, restarting any process
//!    that exits by itself (recorded as a crash).
//! 2. Wait until the system is quiet: every durable consumer of `TGB_EVENTS` has nothing
//!    pending nor unacknowledged, TG has no webhook left to deliver, and the counts of every
//!    target stay the same for a few poll periods of the recovery paths (so that a late
//!    duplicate or echo has had its chance to appear).
//! 3. Count, target by target:
//!    - every TG case: exactly one incident (Dataverse) and one triage task (Planner);
//!    - every partner comment: exactly one note and one partner message on the incident;
//!    - every case the partner resolved: its incident resolved, with exactly one resolution;
//!    - every agent note (Dynamics): exactly one comment on the TG case;
//!    - no echo: nothing written that nobody asked for (TG writes other than the agents'
//!      notes, incidents/notes/messages/tasks for no expected source, incidents resolved that
//!      the partner did not resolve);
//!    - `TGB_DLQ`: exactly the poisoned messages, once per consumer of their subject.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use serde_json::Value;
use tgb_bus::names;

use crate::system::{FaultSystem, INGRESS_SUBSCRIPTION};
use crate::workload::{Expected, Poison, s};

/// The plan triage tasks go to (`[routing.plans.issues]` of the default configuration).
pub const ISSUES_PLAN: &str = "pLnPartnerIssues00000000000A";

/// Lost / duplicated counts of one kind of target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Expected effects.
    pub expected: usize,
    /// Expected effects not found.
    pub lost: usize,
    /// Effects found more than once (extra copies).
    pub duplicated: usize,
    /// Examples (at most 5).
    pub examples: Vec<String>,
}

impl Tally {
    fn count(expected: impl IntoIterator<Item = String>, found: &BTreeMap<String, usize>) -> Tally {
        let mut t = Tally::default();
        for key in expected {
            t.expected += 1;
            match found.get(&key).copied().unwrap_or(0) {
                0 => {
                    t.lost += 1;
                    t.example(format!("{key}: missing"));
                }
                1 => {}
                n => {
                    t.duplicated += n - 1;
                    t.example(format!("{key}: {n} times"));
                }
            }
        }
        t
    }

    fn example(&mut self, e: String) {
        if self.examples.len() < 5 {
            self.examples.push(e);
        }
    }
}

/// What the check found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// TG case → incident.
    pub incidents: Tally,
    /// TG case → triage task.
    pub tasks: Tally,
    /// Triage task → `planner.task.created` stored in `TGB_EVENTS` (what the other services
    /// learn a task from).
    pub announcements: Tally,
    /// TG comment → note + partner message (counted per comment: both must be there once).
    pub comments: Tally,
    /// TG resolution → incident resolved, one resolution.
    pub statuses: Tally,
    /// Dynamics note → TG comment.
    pub agent_notes: Tally,
    /// Writes nobody asked for.
    pub echo_writes: Vec<String>,
    /// Poisoned messages not dead-lettered (per consumer).
    pub dlq_missing: Vec<String>,
    /// Dead letters that are not a poisoned message.
    pub dlq_unexpected: Vec<String>,
    /// Processes that exited by themselves.
    pub crashes: Vec<(String, String)>,
    /// From the start of the burst to a complete, quiet system.
    pub converged_after: Duration,
    /// What the system held of a few lost effects, and what kept it busy past the deadline:
    /// the lines a failed scenario is read by.
    pub traces: Vec<String>,
}

impl Report {
    /// No loss, no duplicate, no echo, exactly the poison in the DLQ.
    pub fn is_clean(&self) -> bool {
        [
            &self.incidents,
            &self.tasks,
            &self.announcements,
            &self.comments,
            &self.statuses,
            &self.agent_notes,
        ]
        .iter()
        .all(|t| t.lost == 0 && t.duplicated == 0)
            && self.echo_writes.is_empty()
            && self.dlq_missing.is_empty()
            && self.dlq_unexpected.is_empty()
    }

    /// Lost and duplicated effects over every kind.
    pub fn totals(&self) -> (usize, usize) {
        let all = [
            &self.incidents,
            &self.tasks,
            &self.announcements,
            &self.comments,
            &self.statuses,
            &self.agent_notes,
        ];
        (
            all.iter().map(|t| t.lost).sum(),
            all.iter().map(|t| t.duplicated).sum::<usize>() + self.echo_writes.len(),
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scenario {}: converged in {:.1} s",
            self.scenario,
            self.converged_after.as_secs_f64()
        )?;
        for (name, t) in [
            ("incident per case", &self.incidents),
            ("triage task per case", &self.tasks),
            ("task announced", &self.announcements),
            ("comment → note + message", &self.comments),
            ("resolution → incident", &self.statuses),
            ("agent note → TG comment", &self.agent_notes),
        ] {
            writeln!(
                f,
                "  {name:<26} expected {:>5}  lost {:>4}  duplicated {:>4}  {}",
                t.expected,
                t.lost,
                t.duplicated,
                t.examples.join("; ")
            )?;
        }
        writeln!(f, "  echo / unrequested writes  {}", self.echo_writes.len())?;
        for e in self.echo_writes.iter().take(10) {
            writeln!(f, "    {e}")?;
        }
        writeln!(
            f,
            "  DLQ: missing {}  unexpected {}",
            self.dlq_missing.len(),
            self.dlq_unexpected.len()
        )?;
        for e in self.dlq_missing.iter().chain(&self.dlq_unexpected).take(10) {
            writeln!(f, "    {e}")?;
        }
        writeln!(
            f,
            "  processes that exited by themselves: {}",
            self.crashes.len()
        )?;
        for (p, c) in &self.crashes {
            writeln!(f, "    {p}: {c}")?;
        }
        for t in &self.traces {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// Everything the targets hold, reduced to counts by source key.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    /// case id → incidents.
    incidents: BTreeMap<String, usize>,
    /// case id → incident resolutions (of its incidents).
    resolutions: BTreeMap<String, usize>,
    /// case id → incident statecode (of the first incident).
    statecodes: BTreeMap<String, i64>,
    /// case id → triage tasks (title `[case] …`, any plan).
    tasks: BTreeMap<String, usize>,
    /// Tasks whose title names no expected case.
    other_tasks: Vec<String>,
    /// comment id → partner messages.
    messages: BTreeMap<String, usize>,
    /// note text → notes (annotations).
    notes: BTreeMap<String, usize>,
    /// TG case id → comments tg-bridge wrote on it, by body.
    tg_comments: BTreeMap<(String, String), usize>,
    /// Other TG writes (method path).
    other_tg_writes: Vec<String>,
}

fn read_counts(sys: &FaultSystem) -> Counts {
    let mut c = Counts::default();
    let dv = sys.sandbox.dataverse();
    let mut incident_case: BTreeMap<String, String> = BTreeMap::new();
    for r in dv.rows("incident") {
        let case = s(&r, "tgb_tgcaseid").to_owned();
        incident_case.insert(s(&r, "incidentid").to_owned(), case.clone());
        *c.incidents.entry(case.clone()).or_default() += 1;
        c.statecodes
            .entry(case)
            .or_insert(r["statecode"].as_i64().unwrap_or(-1));
    }
    for r in dv.rows("incidentresolution") {
        let case = incident_case
            .get(s(&r, "_incidentid_value"))
            .cloned()
            .unwrap_or_else(|| format!("incident {}", s(&r, "_incidentid_value")));
        *c.resolutions.entry(case).or_default() += 1;
    }
    for r in dv.rows("tgb_partnermessage") {
        *c.messages
            .entry(s(&r, "tgb_tgmessageid").to_owned())
            .or_default() += 1;
    }
    for r in dv.rows("annotation") {
        *c.notes.entry(s(&r, "notetext").to_owned()).or_default() += 1;
    }
    let snapshot = sys.sandbox.planner().snapshot();
    for t in snapshot["tasks"].as_array().into_iter().flatten() {
        let title = s(&t["task"], "title");
        match title
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
        {
            Some((case, _)) => *c.tasks.entry(case.to_owned()).or_default() += 1,
            None => c.other_tasks.push(title.to_owned()),
        }
    }
    for w in sys.sandbox.tg().writes() {
        if w.replayed || !(200..300).contains(&w.status) {
            continue;
        }
        let comment_of = w
            .path
            .strip_prefix("/v1/cases/")
            .and_then(|p| p.strip_suffix("/comments"));
        match (w.method.as_str(), comment_of) {
            ("POST", Some(case)) => {
                *c.tg_comments
                    .entry((case.to_owned(), s(&w.request, "body").to_owned()))
                    .or_default() += 1;
            }
            _ => c.other_tg_writes.push(format!(
                "TG {} {} {} (case now {:?})",
                w.method,
                w.path,
                w.request,
                sys.sandbox
                    .tg()
                    .case(w.path.trim_start_matches("/v1/cases/"))
                    .map(|c| c.status)
            )),
        }
    }
    c
}

fn complete(exp: &Expected, c: &Counts) -> bool {
    exp.cases
        .iter()
        .all(|k| c.incidents.contains_key(k) && c.tasks.contains_key(k))
        && exp.comments.keys().all(|k| c.messages.contains_key(k))
        && exp
            .comments
            .values()
            .all(|(_, body)| c.notes.contains_key(body))
        && exp.resolved.iter().all(|k| c.resolutions.contains_key(k))
        && exp
            .agent_notes
            .iter()
            .all(|(case, text)| tg_comment_count(c, case, text) > 0)
}

/// Comments tg-bridge wrote on `case` whose body carries `text`.
fn tg_comment_count(c: &Counts, case: &str, text: &str) -> usize {
    c.tg_comments
        .iter()
        .filter(|((k, body), _)| k == case && body.contains(text))
        .map(|(_, n)| *n)
        .sum()
}

/// Consumers of `TGB_EVENTS` with work left: (name, pending, unacknowledged).
async fn busy_consumers(sys: &FaultSystem) -> anyhow::Result<Vec<(String, u64, usize)>> {
    let stream = sys.js.get_stream(names::EVENTS_STREAM).await?;
    let infos: Vec<_> = stream.consumers().try_collect().await?;
    Ok(infos
        .into_iter()
        .filter(|i| i.num_pending > 0 || i.num_ack_pending > 0)
        .map(|i| (i.name, i.num_pending, i.num_ack_pending))
        .collect())
}

/// The durable consumers of `TGB_EVENTS` and their filters.
async fn consumer_filters(sys: &FaultSystem) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let stream = sys.js.get_stream(names::EVENTS_STREAM).await?;
    let infos: Vec<_> = stream.consumers().try_collect().await?;
    Ok(infos
        .into_iter()
        .map(|i| {
            let mut f = i.config.filter_subjects.clone();
            if !i.config.filter_subject.is_empty() {
                f.push(i.config.filter_subject.clone());
            }
            (i.name, f)
        })
        .collect())
}

/// NATS subject matching with `*` and `>`.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Every dead letter: (consumer, original subject, error, payload).
async fn dead_letters(sys: &FaultSystem) -> anyhow::Result<Vec<(String, String, String, Vec<u8>)>> {
    let mut stream = sys.js.get_stream(names::DLQ_STREAM).await?;
    let info = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if info.messages == 0 {
        return Ok(out);
    }
    for seq in info.first_sequence..=info.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let h = |n: &str| {
            m.headers
                .get(n)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push((
            h(names::HDR_CONSUMER),
            h(names::HDR_ORIGINAL_SUBJECT),
            format!("{}: {}", h(names::HDR_ERROR_KIND), h(names::HDR_ERROR)),
            m.payload.to_vec(),
        ));
    }
    Ok(out)
}

/// The invariant check (see the module documentation). `started` is when the burst began;
/// `within` bounds the wait for a complete, quiet system.
pub async fn check_invariants(
    scenario: &str,
    sys: &mut FaultSystem,
    exp: &Expected,
    poison: &[Poison],
    started: Instant,
    within: Duration,
) -> anyhow::Result<Report> {
    // 1. Complete (or the deadline: then the counts say what is missing).
    let deadline = Instant::now() + within;
    let mut counts = read_counts(sys);
    let mut told = Instant::now();
    while !complete(exp, &counts) && Instant::now() < deadline {
        sys.supervise()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        counts = read_counts(sys);
        if told.elapsed() >= Duration::from_secs(10) {
            // A slow convergence says where it is in the log (what is still missing).
            told = Instant::now();
            eprintln!(
                "scenario {scenario}: after {:.0} s, {} incidents, {} tasks, {} messages, {} notes",
                started.elapsed().as_secs_f64(),
                counts.incidents.len(),
                counts.tasks.len(),
                counts.messages.len(),
                counts.notes.len(),
            );
        }
    }
    // 2. Quiet: nothing pending anywhere, and the same counts for 3 poll periods of the
    // reconciling paths (Dataverse change tracking, Planner plan poll: 2 s each).
    let stable_for = Duration::from_secs(6);
    let mut stable_since = Instant::now();
    let mut not_quiet = None;
    loop {
        sys.supervise()?;
        let busy = busy_consumers(sys)
            .await
            .unwrap_or_else(|e| vec![(format!("(cannot read consumers: {e})"), 0, 0)]);
        let hooks_pending = sys
            .sandbox
            .tg()
            .webhooks()
            .stats(INGRESS_SUBSCRIPTION)
            .map(|s| s.pending)
            .unwrap_or(0);
        let now = read_counts(sys);
        if !busy.is_empty() || hooks_pending > 0 || now != counts {
            stable_since = Instant::now();
            counts = now;
        } else if stable_since.elapsed() >= stable_for {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(?busy, hooks_pending, "not quiet by the deadline");
            not_quiet = Some(format!(
                "not quiet by the deadline: consumers with work left (name, pending, unacknowledged) {busy:?}; TG webhooks pending {hooks_pending}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged_after = started.elapsed();

    // 3. Count.
    let c = counts;
    let mut report = Report {
        scenario: scenario.to_owned(),
        converged_after,
        crashes: sys.crashes(),
        ..Report::default()
    };
    report.incidents = Tally::count(exp.cases.iter().cloned(), &c.incidents);
    report.tasks = Tally::count(exp.cases.iter().cloned(), &c.tasks);
    let announced = triage_announcements(sys)
        .await
        .context("reading the task announcements")?;
    report.announcements = Tally::count(exp.cases.iter().cloned(), &announced);
    // A comment is there once when its partner message and its note are each there once.
    let per_comment: BTreeMap<String, usize> = exp
        .comments
        .iter()
        .map(|(id, (_, body))| {
            let m = c.messages.get(id).copied().unwrap_or(0);
            let n = c.notes.get(body).copied().unwrap_or(0);
            (id.clone(), if m == 0 || n == 0 { 0 } else { m.max(n) })
        })
        .collect();
    report.comments = Tally::count(exp.comments.keys().cloned(), &per_comment);
    report.traces.extend(not_quiet);
    let lost_comments = exp
        .comments
        .iter()
        .filter(|(id, _)| per_comment.get(*id).copied().unwrap_or(0) == 0)
        .take(3);
    for (id, (case, body)) in lost_comments {
        report.traces.push(format!(
            "lost comment {id} on {case}: partner messages {}, notes {}; {}",
            c.messages.get(id).copied().unwrap_or(0),
            c.notes.get(body).copied().unwrap_or(0),
            events_holding(sys, "tgb.v1.tg.case.comment_added", id)
                .await
                .unwrap_or_else(|e| format!("TGB_EVENTS cannot be read: {e}"))
        ));
        report.traces.extend(ledger_lines(sys, case).await);
    }
    let lost_cases = exp
        .cases
        .iter()
        .filter(|k| !c.incidents.contains_key(*k) || !c.tasks.contains_key(*k))
        .take(3);
    for case in lost_cases {
        report.traces.push(format!(
            "lost case {case}: incidents {}, tasks {}",
            c.incidents.get(case).copied().unwrap_or(0),
            c.tasks.get(case).copied().unwrap_or(0)
        ));
        report.traces.extend(ledger_lines(sys, case).await);
    }
    let resolved: BTreeMap<String, usize> = exp
        .resolved
        .iter()
        .map(|case| {
            let n = c.resolutions.get(case).copied().unwrap_or(0);
            let state = c.statecodes.get(case).copied().unwrap_or(-1);
            (case.clone(), if state == 1 { n } else { 0 })
        })
        .collect();
    report.statuses = Tally::count(exp.resolved.iter().cloned(), &resolved);
    let notes: BTreeMap<String, usize> = exp
        .agent_notes
        .iter()
        .map(|(case, text)| (case.clone(), tg_comment_count(&c, case, text)))
        .collect();
    report.agent_notes = Tally::count(exp.agent_notes.keys().cloned(), &notes);

    // Echo / unrequested writes.
    let cases: BTreeSet<&String> = exp.cases.iter().collect();
    let resolved_set: BTreeSet<&String> = exp.resolved.iter().collect();
    let mut echo = Vec::new();
    for case in c.incidents.keys().filter(|k| !cases.contains(k)) {
        echo.push(format!("Dataverse incident for no raised case: {case:?}"));
    }
    for (case, n) in c
        .resolutions
        .iter()
        .filter(|(k, _)| !resolved_set.contains(k))
    {
        echo.push(format!(
            "incident of {case} resolved {n}× without the partner resolving it"
        ));
    }
    for case in c.tasks.keys().filter(|k| !cases.contains(k)) {
        echo.push(format!("Planner task for no raised case: [{case}]"));
    }
    for t in &c.other_tasks {
        echo.push(format!("Planner task nobody asked for: {t:?}"));
    }
    let comment_ids: BTreeSet<&String> = exp.comments.keys().collect();
    for id in c.messages.keys().filter(|k| !comment_ids.contains(k)) {
        echo.push(format!(
            "Dataverse partner message for no TG comment: {id:?}"
        ));
    }
    let expected_notes: BTreeSet<&str> = exp
        .comments
        .values()
        .map(|(_, b)| b.as_str())
        .chain(exp.agent_notes.values().map(String::as_str))
        .collect();
    for (text, n) in c
        .notes
        .iter()
        .filter(|(k, _)| !expected_notes.contains(k.as_str()))
    {
        echo.push(format!("Dataverse note nobody wrote: {n}× {text:?}"));
    }
    for ((case, body), n) in &c.tg_comments {
        let asked = exp
            .agent_notes
            .get(case)
            .is_some_and(|text| body.contains(text.as_str()));
        if !asked {
            echo.push(format!(
                "TG comment on {case} nobody asked for: {n}× {body:?}"
            ));
        }
    }
    echo.extend(c.other_tg_writes.iter().cloned());
    report.echo_writes = echo;

    // The DLQ: each poison once per consumer of its subject, nothing else.
    let consumers = consumer_filters(sys)
        .await
        .context("reading the consumers")?;
    let letters = dead_letters(sys).await.context("reading TGB_DLQ")?;
    for p in poison {
        for (name, filters) in &consumers {
            if !filters.iter().any(|f| subject_matches(f, &p.subject)) {
                continue;
            }
            let n = letters
                .iter()
                .filter(|(cons, _, _, payload)| cons == name && payload == &p.payload)
                .count();
            if n != 1 {
                report.dlq_missing.push(format!(
                    "{} × {name}: {n} dead letters (expected 1)",
                    p.subject
                ));
            }
        }
    }
    for (cons, subject, error, payload) in &letters {
        if !poison.iter().any(|p| &p.payload == payload) {
            report
                .dlq_unexpected
                .push(format!("{cons} {subject}: {error}"));
        }
    }
    Ok(report)
}

/// TG case → `planner.task.created` of its triage task stored in `TGB_EVENTS`.
async fn triage_announcements(sys: &FaultSystem) -> anyhow::Result<BTreeMap<String, usize>> {
    use tgb_proto::BusEvent as _;
    let subject = tgb_proto::PlannerTaskCreated::SUBJECT;
    let mut out = BTreeMap::new();
    let stored = tgb_bus::stored::messages_on(&sys.js, names::EVENTS_STREAM, subject)
        .await
        .map_err(|e| anyhow::anyhow!("reading {subject}: {e}"))?;
    for m in stored {
        let e = <tgb_proto::PlannerTaskCreated as prost::Message>::decode(m.payload.as_ref())?;
        if e.task.as_ref().map(|t| t.kind()) == Some(tgb_proto::TaskKind::Triage) {
            *out.entry(e.tg_case_id).or_default() += 1;
        }
    }
    Ok(out)
}

/// Where `TGB_EVENTS` holds messages on `subject` whose bytes carry `id` (a protobuf string
/// field is its UTF-8 bytes): whether an event was published at all.
async fn events_holding(sys: &FaultSystem, subject: &str, id: &str) -> anyhow::Result<String> {
    let mut seqs = Vec::new();
    let stored = tgb_bus::stored::messages_on(&sys.js, names::EVENTS_STREAM, subject)
        .await
        .map_err(|e| anyhow::anyhow!("reading {subject}: {e}"))?;
    for m in stored {
        if m.payload.windows(id.len()).any(|w| w == id.as_bytes()) {
            seqs.push(
                m.info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence,
            );
        }
    }
    Ok(if seqs.is_empty() {
        format!("no message on {subject} in TGB_EVENTS carries it")
    } else {
        format!("in TGB_EVENTS on {subject} at sequence {seqs:?}")
    })
}

/// The ledger of one TG case (`tgb history`), a line per entry: which consumer decided what,
/// on which delivery, and why.
async fn ledger_lines(sys: &FaultSystem, case: &str) -> Vec<String> {
    match tgb_bus::ledger::history(&sys.js, case).await {
        Ok(entries) if entries.is_empty() => vec!["  ledger: no entry".to_owned()],
        Ok(entries) => entries
            .iter()
            .map(|e| {
                format!(
                    "  ledger {} {} {} delivery {}: {} {} {}",
                    e.at,
                    e.consumer,
                    e.subject,
                    e.deliveries,
                    e.decision.as_str(),
                    e.detail.chars().take(160).collect::<String>(),
                    e.response.chars().take(80).collect::<String>()
                )
            })
            .collect(),
        Err(e) => vec![format!("  ledger: cannot be read: {e}")],
    }
}

/// Whether a JSON value is a non-empty string.
pub fn has_str(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}
