//! `tgb backfill`: the first sync of history, through the normal flows.
//!
//! - `tgb backfill tg --since <time> [--partner <key>]… [--dry-run]` reads TG's event feed
//!   (`GET /v1/events`, oldest first) and keeps what happened at or after `since` (and for the
//!   partners named). Before publishing anything it matches what already exists, exactly as
//!   `tgb rebuild links` does but only for the cases in range: incidents by `tgb_tgcaseid`,
//!   accounts by `tgb_partnerkey`, Planner tasks by their title marker (with planner-adapter's
//!   task record, so the adapter updates that task instead of creating another). Then it
//!   publishes each event as tg-ingress's feed poller would: the same mapping and the same
//!   event id (derived from the TG event id), so a second backfill, or an event the poller or a
//!   webhook already published, is not applied twice. The adapters create what is missing,
//!   paced by their own governors (the Dataverse and Graph limits); the publishing itself is
//!   paced by `--rate` so a long history does not flood the stream. Each event says it is
//!   replayed history (`meta.replayed_at`): sla-monitor starts the case's clock at its TG time
//!   as usual, but records the breaches that fell due before the backfill instead of raising
//!   them, so day one does not escalate every overdue case of the past at once (a breach
//!   still to come is raised when it falls due).
//! - `tgb backfill dataverse --table incident --filter open` reads the open incidents
//!   (statecode 0) and matches their cases first in the same way (links to the incident and to
//!   the case's Planner task). Then it hands each incident to dynamics-adapter's own detection
//!   ([`dynamics_adapter::Adapter::on_change`], as a row of its change-tracking poll), which
//!   publishes what the poller would have, had its first baseline not skipped the existing
//!   rows: `dyn.case.status_changed` (or `dyn.case.resolved`) where the incident's status is
//!   not the one both sides last agreed on, with the poller's event ids (table, row, version),
//!   so a second run, or the poller seeing the same version, publishes nothing new. Its
//!   Dataverse requests go through the application user's governor, inside the fleet budget
//!   the adapter's replicas share (it joins as one more member while it runs). An incident
//!   with no TG case (no `tgb_tgcaseid`, no link) is skipped: no flow carries it to TG
//!   (tg-bridge opens TG collaboration cases only from Planner and document flows).

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use serde::Serialize;
use serde_json::Value;
use tgb_bus::links::{Links, Record};
use tgb_bus::names;
use tgb_clients::tg::TgClient;
use time::OffsetDateTime;

use crate::rebuild;

/// What `tgb backfill tg` reads and publishes.
#[derive(Clone, Debug)]
pub struct TgOptions {
    /// Events that happened before this are left out.
    pub since: OffsetDateTime,
    /// Only these partners (`QUALIFIER:ID` or the bare id); all when empty.
    pub partners: Vec<String>,
    /// Show what would be done; write and publish nothing.
    pub dry_run: bool,
    /// Events published per second at most.
    pub rate: f64,
}

/// The summary of a backfill.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// `tg` or `dataverse`.
    pub source: String,
    /// Nothing was written or published.
    pub dry_run: bool,
    /// Events read from the feed (or incidents read from Dataverse).
    pub read: usize,
    /// Left out: before `since`.
    pub skipped_before_since: usize,
    /// Left out: another partner.
    pub skipped_partner: usize,
    /// Left out: not following the contract (the feed poller publishes those as unknown
    /// events for the DLQ; a backfill leaves them to it).
    pub skipped_invalid: usize,
    /// Left out: an incident without a TG case id (Dataverse backfill).
    pub skipped_no_case: usize,
    /// Events in range (published, or that would be in a dry run).
    pub events_in_range: usize,
    /// Distinct TG cases in range.
    pub cases: usize,
    /// Cases already linked to an incident before the backfill.
    pub incidents_already_linked: usize,
    /// Cases whose existing incident was matched (linked) by this backfill.
    pub incidents_matched: usize,
    /// Cases already linked to a Planner task before the backfill.
    pub tasks_already_linked: usize,
    /// Cases whose existing Planner task was matched (linked) by this backfill.
    pub tasks_matched: usize,
    /// Links the bucket holds with another value (left alone, as in `tgb rebuild links`).
    pub links_conflicting: usize,
    /// Cases in range with no incident after matching: the replayed events make the adapter
    /// create one (`tg` only).
    pub incidents_to_create: usize,
    /// Cases in range with no Planner task after matching: the replayed events make the
    /// adapter create one (`tg` only).
    pub tasks_to_create: usize,
    /// Incidents handed to dynamics-adapter's detection (`dataverse` only).
    pub replayed: usize,
    /// Events published (new to the stream).
    pub published: usize,
    /// Events the stream already held under the same event id.
    pub duplicates: usize,
    /// Seconds the backfill took.
    pub elapsed_secs: f64,
}

/// The TG client of the configuration (`TGB_TG_API_URL`, `TGB_TG_TOKEN_URL`,
/// `TGB_TG_CLIENT_ID`, `TGB_TG_CLIENT_SECRET`), as tg-ingress builds it.
pub fn tg_client(config: &tgb_runtime::Config) -> anyhow::Result<TgClient> {
    tg_ingress::tg_client(config, Duration::from_secs(30)).context(
        "the TG client is not configured: set TGB_TG_API_URL, TGB_TG_TOKEN_URL, TGB_TG_CLIENT_ID and TGB_TG_CLIENT_SECRET",
    )
}

/// Progress on stderr: a bar on a terminal (indicatif), else a plain line per tenth (logs of a
/// job or a pipe get ten lines, not a redraw per event).
struct Progress {
    what: &'static str,
    total: usize,
    bar: Option<indicatif::ProgressBar>,
    last_tenth: usize,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
                )
                .expect("valid template")
                .progress_chars("#>-"),
            );
            bar.set_message(what);
            bar
        });
        Progress {
            what,
            total,
            bar,
            last_tenth: 0,
        }
    }

    fn show(&mut self, done: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            if done == self.total {
                bar.finish();
            }
            return;
        }
        let tenth = done * 10 / self.total.max(1);
        if tenth > self.last_tenth || done == self.total {
            self.last_tenth = tenth;
            eprintln!("{}: {done}/{}", self.what, self.total);
        }
    }
}

fn partner_wanted(partners: &[String], partner: Option<&tgb_clients::tg::Partner>) -> bool {
    if partners.is_empty() {
        return true;
    }
    let Some(p) = partner else {
        return false;
    };
    let key = p.key();
    partners.iter().any(|w| *w == key || *w == p.id)
}

/// The TG case an event belongs to, from its `data.case_id`.
fn case_of(raw: &Value) -> Option<String> {
    raw.get("data")?
        .get("case_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Which cases are linked to `(system, kind)`.
async fn linked(
    links: &Links,
    cases: &BTreeSet<String>,
    system: &str,
    kind: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for c in cases {
        if links
            .find(&Record::new("tg", "case", c), system, kind)
            .await?
            .is_some()
        {
            out.insert(c.clone());
        }
    }
    Ok(out)
}

/// Matches the existing records of `cases` (links and task records, as `tgb rebuild links`),
/// filling the report's before/matched counts.
async fn match_first(
    config: &tgb_runtime::Config,
    js: &jetstream::Context,
    cases: &BTreeSet<String>,
    dry_run: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let kv = js
        .get_key_value(names::KV_LINKS)
        .await
        .context("KV bucket tgb_links not found: is this tg-bridge's NATS? (tgb up or the services create it)")?;
    let links = Links::new(kv);
    let inc_before = linked(&links, cases, "dataverse", "incident").await?;
    let task_before = linked(&links, cases, "planner", "task").await?;
    report.incidents_already_linked = inc_before.len();
    report.tasks_already_linked = task_before.len();
    let r = rebuild::links_from_config(config, js, Some(cases), dry_run).await?;
    report.links_conflicting = r.links_conflicting;
    if dry_run {
        // What the rebuild would write, per case (the TG side is `tg.case.<id>`).
        let would = |to: &str| -> BTreeSet<String> {
            r.changes
                .iter()
                .filter(|c| c.state == "would-write" && c.to.starts_with(to))
                .filter_map(|c| c.from.strip_prefix("tg.case.").map(str::to_owned))
                .collect()
        };
        report.incidents_matched = would("dataverse.incident.").len();
        report.tasks_matched = would("planner.task.").len();
    } else {
        report.incidents_matched = linked(&links, cases, "dataverse", "incident")
            .await?
            .difference(&inc_before)
            .count();
        report.tasks_matched = linked(&links, cases, "planner", "task")
            .await?
            .difference(&task_before)
            .count();
    }
    report.incidents_to_create =
        cases.len() - report.incidents_already_linked - report.incidents_matched;
    report.tasks_to_create = cases.len() - report.tasks_already_linked - report.tasks_matched;
    Ok(())
}

/// `tgb backfill tg`.
pub async fn tg(
    config: &tgb_runtime::Config,
    js: &jetstream::Context,
    client: &TgClient,
    opts: &TgOptions,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report {
        source: "tg".into(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    // The whole range first: the matching must happen before any event is published.
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .events(after.as_deref(), 500)
            .await
            .context("reading TG's event feed")?;
        let n = page.events.len();
        for raw in page.events {
            report.read += 1;
            let typed = serde_json::from_value(raw.clone())
                .map_err(|e| e.to_string())
                .and_then(|r| tgb_clients::tg::validate(r).map_err(|e| e.message));
            let tg = match typed {
                Ok(tg) => tg,
                Err(reason) => {
                    tracing::warn!(%reason, "feed element does not follow the contract: left to the feed poller");
                    report.skipped_invalid += 1;
                    continue;
                }
            };
            if tg.occurred_at < opts.since {
                report.skipped_before_since += 1;
                continue;
            }
            if !partner_wanted(&opts.partners, tg.partner.as_ref()) {
                report.skipped_partner += 1;
                continue;
            }
            let bytes = serde_json::to_vec(&raw).unwrap_or_default();
            events.push((case_of(&raw), tg_ingress::mapping::to_event(&tg, &bytes)));
        }
        let moved = !page.next_cursor.is_empty() && after.as_deref() != Some(&page.next_cursor);
        if !moved || n < 500 {
            break;
        }
        after = Some(page.next_cursor);
    }
    report.events_in_range = events.len();
    let cases: BTreeSet<String> = events.iter().filter_map(|(c, _)| c.clone()).collect();
    report.cases = cases.len();
    if !cases.is_empty() {
        match_first(config, js, &cases, opts.dry_run, &mut report).await?;
    }
    if !opts.dry_run {
        let publisher = tgb_bus::Publisher::new(js.clone());
        let mut progress = Progress::new("backfill tg: published", events.len());
        let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
        let mut pace = tokio::time::interval(period);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // History, said so: sla-monitor records the breaches that fell due before now instead
        // of escalating every overdue case at once.
        let replayed_at = tgb_proto::timestamps::timestamp(time::OffsetDateTime::now_utc());
        for (i, (_, event)) in events.iter_mut().enumerate() {
            event.meta_mut().replayed_at = Some(replayed_at);
            pace.tick().await;
            let ack = publisher
                .publish_event(event)
                .await
                .with_context(|| format!("publishing {}", event.subject()))?;
            if ack.duplicate {
                report.duplicates += 1;
            } else {
                report.published += 1;
            }
            progress.show(i + 1);
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A seat in the fleet budget of a governor lane, for the length of an operator command: the
/// adapter's replicas take the smaller slice while it is held. Left on [`FleetSeat::leave`]
/// (or, if the command fails, when the seat expires after the fleet's `ttl`).
struct FleetSeat {
    stop: tokio_util::sync::CancellationToken,
    renewing: tokio::task::JoinHandle<()>,
}

impl FleetSeat {
    /// Joins `governor`'s lane (returns after the other members have seen this one).
    async fn join(
        js: &jetstream::Context,
        governor: &Arc<tgb_governor::Governor>,
        ttl: Duration,
        renew: Duration,
    ) -> anyhow::Result<FleetSeat> {
        let kv = js
            .get_key_value(names::KV_SYNC)
            .await
            .context("KV bucket tgb_sync not found")?;
        let fleet = tgb_bus::fleet::Fleet::new(kv, governor.lane(), ttl, renew);
        fleet
            .join(governor)
            .await
            .with_context(|| format!("joining the fleet budget of lane {}", governor.lane()))?;
        let stop = tokio_util::sync::CancellationToken::new();
        let renewing = tokio::spawn(fleet.run(governor.clone(), stop.clone()));
        Ok(FleetSeat { stop, renewing })
    }

    async fn leave(self) {
        self.stop.cancel();
        let _ = self.renewing.await;
    }
}

/// dynamics-adapter's core over `dv` and `js`'s buckets, for its detection path.
async fn detection_core(
    dv: tgb_clients::dataverse::DataverseClient,
    js: &jetstream::Context,
    settings: dynamics_adapter::DynamicsSettings,
) -> anyhow::Result<dynamics_adapter::Adapter> {
    let kv = |name: &'static str| async move {
        js.get_key_value(name)
            .await
            .with_context(|| format!("KV bucket {name} not found"))
    };
    // The application user: its own writes come back as echoes, as in the adapter.
    let app_user = dv
        .who_am_i()
        .await
        .context("WhoAmI (the application user)")?;
    let batcher =
        dynamics_adapter::batcher::Batcher::start(dv.clone(), settings.batch_max_requests);
    Ok(dynamics_adapter::Adapter::new(
        dv,
        batcher,
        Links::new(kv(names::KV_LINKS).await?),
        dynamics_adapter::state::States::new(kv(names::KV_SYNC).await?),
        kv(names::KV_CURSORS).await?,
        tgb_bus::Publisher::new(js.clone()),
        settings,
        app_user,
    ))
}

/// `tgb backfill dataverse --table incident --filter open`.
pub async fn dataverse_open_incidents(
    config: &tgb_runtime::Config,
    js: &jetstream::Context,
    dry_run: bool,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report {
        source: "dataverse".into(),
        dry_run,
        ..Default::default()
    };
    let settings: dynamics_adapter::DynamicsSettings = config.section("dynamics")?;
    settings.validate().map_err(anyhow::Error::msg)?;
    let dv = crate::setup::client_from_config(config)?;
    let seat = if settings.fleet && !dry_run {
        Some(
            FleetSeat::join(
                js,
                dv.governor(),
                settings.fleet_ttl(),
                settings.fleet_renew(),
            )
            .await?,
        )
    } else {
        None
    };
    let result = replay_open_incidents(config, js, dv, settings, &mut report).await;
    if let Some(seat) = seat {
        seat.leave().await;
    }
    result?;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn replay_open_incidents(
    config: &tgb_runtime::Config,
    js: &jetstream::Context,
    dv: tgb_clients::dataverse::DataverseClient,
    settings: dynamics_adapter::DynamicsSettings,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Whole rows, as the change-tracking poll reads them (the detection needs the status,
    // the version, the customer and the last modifier).
    let rows = dv
        .get_all("incidents?$filter=statecode eq 0", 500)
        .await
        .context("reading open incidents from Dataverse")?;
    report.read = rows.len();
    let links = Links::new(
        js.get_key_value(names::KV_LINKS)
            .await
            .context("KV bucket tgb_links not found")?,
    );
    let mut cases = BTreeSet::new();
    let mut replay = Vec::new();
    for row in &rows {
        let Some(change) = dynamics_adapter::detect::from_row("incident", row) else {
            report.skipped_no_case += 1;
            continue;
        };
        match row.get("tgb_tgcaseid").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => {
                cases.insert(c.to_owned());
            }
            // Linked without the column (an older tg-bridge): still the case's incident.
            _ if links
                .find(
                    &Record::new("dataverse", "incident", &change.id),
                    "tg",
                    "case",
                )
                .await?
                .is_some() => {}
            _ => {
                report.skipped_no_case += 1;
                continue;
            }
        }
        replay.push(change);
    }
    report.cases = cases.len();
    if !cases.is_empty() {
        match_first(config, js, &cases, report.dry_run, report).await?;
    }
    // Matching only: this source creates no incident and no task.
    report.incidents_to_create = 0;
    report.tasks_to_create = 0;
    if report.dry_run {
        return Ok(());
    }
    let adapter = detection_core(dv, js, settings).await?;
    let mut progress = Progress::new("backfill dataverse: replayed", replay.len());
    for (i, change) in replay.into_iter().enumerate() {
        let id = change.id.clone();
        adapter
            .on_change(change)
            .await
            .map_err(|e| anyhow::anyhow!("replaying incident {id}: {e}"))?;
        report.replayed += 1;
        progress.show(i + 1);
    }
    let (new, duplicates) = adapter.published();
    report.published = new as usize;
    report.duplicates = duplicates as usize;
    Ok(())
}

/// The summary for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let tg = r.source == "tg";
    let (verb, will) = if r.dry_run {
        ("would be", "would be")
    } else {
        ("were", "are being")
    };
    out.push_str(&format!(
        "backfill {}{}: {} {} read, {} case(s) in range\n",
        r.source,
        if r.dry_run { " (dry run)" } else { "" },
        r.read,
        if tg { "event(s)" } else { "open incident(s)" },
        r.cases
    ));
    out.push_str(&format!(
        "  matched existing: {} incident(s), {} Planner task(s) {verb} linked\n",
        r.incidents_matched, r.tasks_matched
    ));
    out.push_str(&format!(
        "  skipped, already linked: {} incident(s), {} Planner task(s)\n",
        r.incidents_already_linked, r.tasks_already_linked
    ));
    if tg {
        out.push_str(&format!(
            "  skipped, filtered: {} before --since, {} other partner, {} not following the contract\n",
            r.skipped_before_since, r.skipped_partner, r.skipped_invalid
        ));
        out.push_str(&format!(
            "  created: {} incident(s), {} Planner task(s) {will} created by the adapters at their governors' pace\n",
            r.incidents_to_create, r.tasks_to_create
        ));
        if r.dry_run {
            out.push_str(&format!(
                "  events: {} would be published\n",
                r.events_in_range
            ));
        } else {
            out.push_str(&format!(
                "  events: {} published, {} already on the stream\n",
                r.published, r.duplicates
            ));
        }
    } else {
        out.push_str(&format!(
            "  skipped: {} without a TG case\n",
            r.skipped_no_case
        ));
        if !r.dry_run {
            out.push_str(&format!(
                "  replayed: {} incident(s) through the change detection: {} status event(s) published, {} already on the stream\n",
                r.replayed, r.published, r.duplicates
            ));
        }
    }
    if r.links_conflicting > 0 {
        out.push_str(&format!(
            "  {} link(s) name another record: left alone (see `tgb rebuild links --dry-run`)\n",
            r.links_conflicting
        ));
    }
    out.push_str(&format!("  took {:.1} s\n", r.elapsed_secs));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(q: &str, id: &str) -> tgb_clients::tg::Partner {
        serde_json::from_value(serde_json::json!({"qualifier": q, "id": id})).unwrap()
    }

    #[test]
    fn a_partner_is_named_by_its_key_or_its_bare_id_and_no_filter_takes_all() {
        let p = partner("ZZ", "ACME01");
        assert!(partner_wanted(&[], Some(&p)));
        assert!(partner_wanted(&["ZZ:ACME01".into()], Some(&p)));
        assert!(partner_wanted(&["ACME01".into()], Some(&p)));
        assert!(!partner_wanted(&["ZZ:OTHER".into()], Some(&p)));
        assert!(!partner_wanted(&["ZZ:ACME01".into()], None));
    }

    #[test]
    fn the_case_of_an_event_is_its_data_case_id() {
        assert_eq!(
            case_of(&serde_json::json!({"data": {"case_id": "C-1"}})),
            Some("C-1".into())
        );
        assert_eq!(case_of(&serde_json::json!({"data": {"case_id": ""}})), None);
        assert_eq!(case_of(&serde_json::json!({"data": {}})), None);
    }
}
