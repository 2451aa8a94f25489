//! `tgb rebuild links`: the `tgb_links` bucket (and planner-adapter's task records) rebuilt from
//! the systems of record, after the bucket was lost.
//!
//! - Dataverse incidents carry their TG case id in `tgb_tgcaseid` (the alternate key): each gives
//!   `tg.case.<id>` ↔ `dataverse.incident.<guid>`.
//! - Dataverse accounts carry their partner key in `tgb_partnerkey`: `tg.partner.<key>` ↔
//!   `dataverse.account.<guid>`.
//! - Planner tasks in every configured plan whose title starts with the marker planner-adapter
//!   writes (`[C-123]` triage, `[doc D-1]` review, `[AI A-1]` action item) give the subject ↔
//!   `planner.task.<id>`, and the task record planner-adapter keeps in `tgb_sync`
//!   (`planner-task.<id>`), so the adapter updates that task instead of creating a second one.
//!   An escalation task (`[C-1 L2] SLA first response breached: …`) gives its breach
//!   (`tgb.escalation.<case>/esc-<target>-L<level>`) the same way, while its text still names
//!   the target. Onboarding and department markers do not name their whole subject; those tasks
//!   are counted as `unmatched`.
//!
//! Idempotent: a link already there with the same value, or a task record already there, is not
//! written again; `--dry-run` reports what would be written and writes nothing.

use std::collections::BTreeSet;

use anyhow::Context as _;
use async_nats::jetstream;
use serde::Serialize;
use tgb_bus::links::{Links, Record};
use tgb_bus::names;
use tgb_clients::dataverse::DataverseClient;
use tgb_clients::graph::{GraphClient, Task};

/// What a Planner title's marker names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerSubject {
    /// The link end: (system, kind, id).
    pub subject: (String, String, String),
    /// `TaskKind` as i32.
    pub kind: i32,
    /// The TG case, if the marker names one.
    pub tg_case_id: String,
    /// The marker as written (`[C-123]`).
    pub marker: String,
}

/// Parses the marker planner-adapter starts its task titles with (see planner-adapter's
/// handler: `[<case>]`, `[doc <id>]`, `[AI <id>]`, and `[<case> L<level>]` with the SLA target
/// in the text); `None` for titles without one or for markers that do not name their subject
/// whole (`[group/dept]`, `[ZZ:P step]`, an escalation whose text was changed).
pub fn parse_marker(title: &str) -> Option<MarkerSubject> {
    let rest = title.strip_prefix('[')?;
    let end = rest.find(']')?;
    let inner = &rest[..end];
    let marker = format!("[{inner}]");
    // The marker is followed by a space and the text (or ends the title).
    let after = &rest[end + 1..];
    if !(after.is_empty() || after.starts_with(' ')) || inner.is_empty() {
        return None;
    }
    let sub = |system: &str, kind: &str, id: &str, task_kind: i32, case: &str| MarkerSubject {
        subject: (system.to_owned(), kind.to_owned(), id.to_owned()),
        kind: task_kind,
        tg_case_id: case.to_owned(),
        marker: marker.clone(),
    };
    if let Some(id) = inner.strip_prefix("doc ") {
        return (!id.is_empty() && !id.contains(' '))
            .then(|| sub("tg", "document", id, tgb_proto::TaskKind::Review as i32, ""));
    }
    if let Some(id) = inner.strip_prefix("AI ") {
        return (!id.is_empty() && !id.contains(' ')).then(|| {
            sub(
                "tg",
                "action-item",
                id,
                tgb_proto::TaskKind::ActionItem as i32,
                "",
            )
        });
    }
    // An escalation: `[C-1 L2] SLA first response breached: …`; the level is in the marker, the
    // target in the text (planner-adapter's subject `<case>/esc-<target>-L<level>`).
    if let Some((case, level)) = inner.split_once(" L")
        && !case.is_empty()
        && !case.contains(' ')
        && !level.is_empty()
        && level.chars().all(|c| c.is_ascii_digit())
    {
        use planner_adapter::handler::{escalation_subject, escalation_text_prefix};
        let target = [
            tgb_proto::SlaTarget::FirstResponse,
            tgb_proto::SlaTarget::Resolution,
        ]
        .into_iter()
        .find(|t| after.starts_with(&format!(" {}", escalation_text_prefix(*t))))?;
        return Some(sub(
            "tgb",
            "escalation",
            &escalation_subject(case, target, level.parse().ok()?),
            tgb_proto::TaskKind::Escalation as i32,
            case,
        ));
    }
    if inner.contains(' ') || inner.contains('/') {
        return None;
    }
    Some(sub(
        "tg",
        "case",
        inner,
        tgb_proto::TaskKind::Triage as i32,
        inner,
    ))
}

/// One link (both directions) the rebuild found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FoundLink {
    /// `system.kind.id` of the TG side.
    pub from: String,
    /// `system.kind.id` of the other side.
    pub to: String,
    /// `written`, `present` (already there, same value), `would-write` (dry run),
    /// `conflict` (the bucket names another record: left as it is).
    pub state: String,
}

/// The rebuild's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LinksReport {
    /// Incidents read with a TG case id.
    pub incidents: usize,
    /// Accounts read with a partner key.
    pub accounts: usize,
    /// Planner tasks read (all plans).
    pub tasks: usize,
    /// Tasks whose title carries no marker naming a subject.
    pub tasks_unmatched: usize,
    /// Links written (or that would be, in a dry run).
    pub links_written: usize,
    /// Links already there.
    pub links_present: usize,
    /// Links the bucket holds with another value (left alone; the operator decides).
    pub links_conflicting: usize,
    /// Task records written in `tgb_sync` (or that would be).
    pub task_records_written: usize,
    /// Task records already there.
    pub task_records_present: usize,
    /// A dry run: nothing was written.
    pub dry_run: bool,
    /// Every link and its state (not `present` ones, to keep it short).
    pub changes: Vec<FoundLink>,
}

impl LinksReport {
    /// Nothing to write (a second run).
    pub fn nothing_to_do(&self) -> bool {
        self.links_written == 0 && self.task_records_written == 0
    }
}

/// Where the rebuild reads from.
pub struct Sources<'a> {
    /// Dataverse, if configured.
    pub dataverse: Option<&'a DataverseClient>,
    /// Graph and the plans to list, if configured.
    pub planner: Option<(&'a GraphClient, Vec<String>)>,
}

/// Only these TG case ids (backfill rebuilds the links of the cases it replays); `None`: all.
pub type CaseFilter<'a> = Option<&'a BTreeSet<String>>;

/// A Dataverse table read for its links: the rows that carry a key column.
#[derive(Clone, Copy, Debug)]
pub struct Keyed {
    /// The entity set (`incidents`).
    pub set: &'static str,
    /// The column that names the other side (`tgb_tgcaseid`).
    pub key: &'static str,
    /// The row's primary id column (`incidentid`).
    pub id: &'static str,
}

/// Incidents by their TG case id (the alternate key).
pub const INCIDENTS: Keyed = Keyed {
    set: "incidents",
    key: "tgb_tgcaseid",
    id: "incidentid",
};

/// Accounts by their partner key.
pub const ACCOUNTS: Keyed = Keyed {
    set: "accounts",
    key: "tgb_partnerkey",
    id: "accountid",
};

/// The rows of `table` with a non-empty key: (key, row id).
pub async fn keyed_rows(
    dv: &DataverseClient,
    table: Keyed,
) -> anyhow::Result<Vec<(String, String)>> {
    let Keyed { set, key, id } = table;
    let rows = dv
        .get_all(
            &format!("{set}?$select={id},{key}&$filter={key} ne null"),
            500,
        )
        .await
        .with_context(|| format!("reading {set} from Dataverse"))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r[key].as_str()?.to_owned(), r[id].as_str()?.to_owned())))
        .filter(|(k, _)| !k.is_empty())
        .collect())
}

/// Every task of the plans.
pub async fn plan_tasks(graph: &GraphClient, plans: &[String]) -> anyhow::Result<Vec<Task>> {
    let mut out = Vec::new();
    for plan in plans {
        out.extend(
            graph
                .list_plan_tasks(plan)
                .await
                .with_context(|| format!("listing the tasks of plan {plan}"))?,
        );
    }
    Ok(out)
}

fn rec_str(s: &(String, String, String)) -> String {
    format!("{}.{}.{}", s.0, s.1, s.2)
}

/// How a link is stored: both ways, or from its subject only ([`Links::link_from`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ways {
    Both,
    FromSubject,
}

async fn ensure_link(
    links: &Links,
    a: (&str, &str, &str),
    b: (&str, &str, &str),
    ways: Ways,
    dry_run: bool,
    report: &mut LinksReport,
) -> anyhow::Result<()> {
    let ra = Record::new(a.0, a.1, a.2);
    let rb = Record::new(b.0, b.1, b.2);
    let fwd = links.find(&ra, b.0, b.1).await?;
    let back = match ways {
        Ways::Both => links.find(&rb, a.0, a.1).await?,
        Ways::FromSubject => Some(a.2.to_owned()),
    };
    let from = format!("{}.{}.{}", a.0, a.1, a.2);
    let to = format!("{}.{}.{}", b.0, b.1, b.2);
    let state = match (fwd.as_deref(), back.as_deref()) {
        (Some(f), Some(r)) if f == b.2 && r == a.2 => {
            report.links_present += 1;
            return Ok(());
        }
        (Some(f), _) if f != b.2 => {
            report.links_conflicting += 1;
            "conflict"
        }
        _ => {
            report.links_written += 1;
            if dry_run {
                "would-write"
            } else {
                match ways {
                    Ways::Both => links.link(&ra, &rb).await?,
                    Ways::FromSubject => links.link_from(&ra, &rb).await?,
                }
                "written"
            }
        }
    };
    report.changes.push(FoundLink {
        from,
        to,
        state: state.to_owned(),
    });
    Ok(())
}

/// planner-adapter's record of a task it did not create in this bucket's life: what the marker
/// and the Graph task say; the ETag as observed, so the poller reports no change until a person
/// changes the task.
pub fn task_record(task: &Task, m: &MarkerSubject) -> planner_adapter::store::TaskRecord {
    let categories = task.categories();
    let progress = planner_adapter::tasks::progress_of(task.percent_complete, &categories, None);
    planner_adapter::store::TaskRecord {
        task_id: task.id.clone(),
        plan_id: task.plan_id.clone(),
        bucket_id: task.bucket_id.clone().unwrap_or_default(),
        kind: m.kind,
        title: task.title.clone(),
        subject_id: m.subject.2.clone(),
        tg_case_id: m.tg_case_id.clone(),
        observed_etag: task.etag.clone(),
        known: planner_adapter::store::Observed {
            progress: progress as i32,
            percent: task.percent_complete,
            assignees: task.assignees(),
            categories,
        },
        ..Default::default()
    }
}

/// Rebuilds the links (and task records) from the sources into `js`'s buckets.
pub async fn links(
    js: &jetstream::Context,
    sources: &Sources<'_>,
    only_cases: CaseFilter<'_>,
    dry_run: bool,
) -> anyhow::Result<LinksReport> {
    let kv = js
        .get_key_value(names::KV_LINKS)
        .await
        .context("KV bucket tgb_links not found: is this tg-bridge's NATS? (tgb up or the services create it)")?;
    let sync = js
        .get_key_value(names::KV_SYNC)
        .await
        .context("KV bucket tgb_sync not found")?;
    let links = Links::new(kv);
    let store = planner_adapter::store::Store::new(sync);
    let mut report = LinksReport {
        dry_run,
        ..Default::default()
    };
    let wanted = |case: &str| only_cases.is_none_or(|s| s.contains(case));
    if let Some(dv) = sources.dataverse {
        for (case, incident) in keyed_rows(dv, INCIDENTS).await? {
            if !wanted(&case) {
                continue;
            }
            report.incidents += 1;
            ensure_link(
                &links,
                ("tg", "case", &case),
                ("dataverse", "incident", &incident),
                Ways::Both,
                dry_run,
                &mut report,
            )
            .await?;
        }
        for (key, account) in keyed_rows(dv, ACCOUNTS).await? {
            report.accounts += 1;
            ensure_link(
                &links,
                ("tg", "partner", &key),
                ("dataverse", "account", &account),
                Ways::Both,
                dry_run,
                &mut report,
            )
            .await?;
        }
    }
    if let Some((graph, plans)) = &sources.planner {
        for task in plan_tasks(graph, plans).await? {
            let Some(m) = parse_marker(&task.title) else {
                report.tasks += 1;
                report.tasks_unmatched += 1;
                continue;
            };
            if !m.tg_case_id.is_empty() && !wanted(&m.tg_case_id) {
                continue;
            }
            if m.tg_case_id.is_empty() && only_cases.is_some() {
                continue;
            }
            report.tasks += 1;
            let s = &m.subject;
            ensure_link(
                &links,
                (&s.0, &s.1, &s.2),
                ("planner", "task", &task.id),
                Ways::FromSubject,
                dry_run,
                &mut report,
            )
            .await?;
            if store.task(&task.id).await?.is_some() {
                report.task_records_present += 1;
            } else {
                report.task_records_written += 1;
                if !dry_run {
                    store.put_task(&task_record(&task, &m)).await?;
                }
                report.changes.push(FoundLink {
                    from: rec_str(s),
                    to: format!("tgb_sync planner-task.{}", task.id),
                    state: if dry_run { "would-write" } else { "written" }.to_owned(),
                });
            }
        }
    }
    Ok(report)
}

/// Dataverse, and Graph with the plans to list.
pub type Clients = (Option<DataverseClient>, Option<(GraphClient, Vec<String>)>);

/// The sources of the services' configuration (`TGB_DATAVERSE_URL`, `[routing]`, `TGB_AZURE_*`):
/// Dataverse when its URL is set, Planner when `[routing]` names plans.
pub fn clients_from_config(config: &tgb_runtime::Config) -> anyhow::Result<Clients> {
    let dv = if config.settings.dataverse_url.is_some() {
        Some(crate::setup::client_from_config(config)?)
    } else {
        None
    };
    let planner = match planner_adapter::load_routing(config) {
        Ok((routing, _)) if !routing.plans.is_empty() => {
            let graph = planner_adapter::graph_client(config, &routing)?;
            Some((graph, routing.plan_ids()))
        }
        _ => None,
    };
    Ok((dv, planner))
}

/// [`links`] with the clients of the configuration.
pub async fn links_from_config(
    config: &tgb_runtime::Config,
    js: &jetstream::Context,
    only_cases: CaseFilter<'_>,
    dry_run: bool,
) -> anyhow::Result<LinksReport> {
    let (dv, planner) = clients_from_config(config)?;
    if dv.is_none() && planner.is_none() {
        anyhow::bail!(
            "nothing to rebuild from: set TGB_DATAVERSE_URL and/or [routing] plans (and TGB_AZURE_*)"
        );
    }
    let sources = Sources {
        dataverse: dv.as_ref(),
        planner: planner.as_ref().map(|(g, p)| (g, p.clone())),
    };
    links(js, &sources, only_cases, dry_run).await
}

/// The report for people.
pub fn render_links(r: &LinksReport) -> String {
    let mut out = String::new();
    for c in &r.changes {
        out.push_str(&format!("{:<12} {} -> {}\n", c.state, c.from, c.to));
    }
    out.push_str(&format!(
        "read: {} incidents, {} accounts, {} Planner tasks ({} without a subject marker)\n",
        r.incidents, r.accounts, r.tasks, r.tasks_unmatched
    ));
    let verb = if r.dry_run { "would write" } else { "wrote" };
    out.push_str(&format!(
        "links: {verb} {}, already present {}, conflicting {}; task records: {verb} {}, already present {}",
        r.links_written,
        r.links_present,
        r.links_conflicting,
        r.task_records_written,
        r.task_records_present
    ));
    if r.nothing_to_do() {
        out.push_str("\nnothing to write: the buckets already hold every link found");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_marker;

    #[test]
    fn markers_name_their_subject() {
        let m = parse_marker("[C-10492] ACME: late delivery").unwrap();
        assert_eq!(m.subject, ("tg".into(), "case".into(), "C-10492".into()));
        assert_eq!(m.tg_case_id, "C-10492");
        let m = parse_marker("[doc D-7] Review Invoice x.pdf").unwrap();
        assert_eq!(m.subject.1, "document");
        let m = parse_marker("[AI A-1] do it").unwrap();
        assert_eq!(m.subject.1, "action-item");
        let m = parse_marker("[C-1 L2] SLA first response breached: late").unwrap();
        assert_eq!(
            m.subject,
            ("tgb".into(), "escalation".into(), "C-1/esc-1-L2".into())
        );
        assert_eq!(
            (m.kind, m.tg_case_id.as_str()),
            (tgb_proto::TaskKind::Escalation as i32, "C-1")
        );
        let m = parse_marker("[C-1 L1] SLA resolution breached: late").unwrap();
        assert_eq!(m.subject.2, "C-1/esc-2-L1");
        // A text someone changed no longer names the target.
        assert!(parse_marker("[C-1 L2] SLA breached").is_none());
        assert!(parse_marker("[C-1 Lx] SLA resolution breached: late").is_none());
        assert!(parse_marker("[G-1/finance] x").is_none());
        assert!(parse_marker("no marker").is_none());
        assert!(parse_marker("[C-1]x").is_none());
        assert!(parse_marker("[]").is_none());
    }
}
