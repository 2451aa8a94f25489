//! `tgb rebuild sla`: the SLA clocks of open cases rebuilt from the cases' history, after
//! `tgb_sla` was lost.
//!
//! The events sla-monitor consumes are read again from `TGB_EVENTS`, oldest first, and handed to
//! sla-monitor's own handler ([`sla_monitor::handler::Lifecycle`]) over a scratch bucket: the
//! clocks come out exactly as the service would have kept them (same policies, same pause,
//! resume, first response and stop rules). The warnings and breaches already published
//! (`sla.case.warning`, `sla.case.breached` on the stream) are marked emitted, so the ticker
//! raises a breach already raised never again and one still due once. A clock already in
//! `tgb_sla` is left as it is (idempotent); stopped clocks (resolved or closed cases) are not
//! written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy, kv};
use futures::TryStreamExt as _;
use serde::Serialize;
use tgb_bus::Handler as _;
use tgb_bus::links::Links;
use tgb_bus::names;
use tgb_proto as pb;

use crate::ops;

/// The rebuild's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlaReport {
    /// Lifecycle events replayed.
    pub events: usize,
    /// Events the handler refused (malformed; counted, not fatal).
    pub events_failed: usize,
    /// Warnings and breaches found already published.
    pub already_raised: usize,
    /// Clocks of cases still open written (or that would be).
    pub clocks_written: usize,
    /// Clocks already in `tgb_sla` (left alone).
    pub clocks_present: usize,
    /// Cases whose clock is stopped (resolved, closed): nothing to keep.
    pub clocks_stopped: usize,
    /// A dry run: nothing was written.
    pub dry_run: bool,
    /// The cases written (or that would be), with what is marked emitted.
    pub written: Vec<(String, Vec<String>)>,
}

fn target_key(t: i32) -> Option<&'static str> {
    match pb::SlaTarget::try_from(t).ok()? {
        pb::SlaTarget::FirstResponse => Some("first_response"),
        pb::SlaTarget::Resolution => Some("resolution"),
        _ => None,
    }
}

/// What was raised per case, as the ticker marks it in a clock's `emitted`.
pub async fn raised(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let stream = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .context("stream TGB_EVENTS not found: is this tg-bridge's NATS?")?;
    let (messages, _) = ops::read(
        &stream,
        vec![
            "tgb.v1.sla.case.warning".into(),
            "tgb.v1.sla.case.breached".into(),
        ],
        DeliverPolicy::All,
        usize::MAX,
    )
    .await?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in messages {
        let Ok(event) = pb::Event::decode(&m.subject, &m.payload) else {
            continue;
        };
        let (case, mark) = match event {
            pb::Event::SlaWarning(e) => match target_key(e.target) {
                Some(t) => (e.case_id, format!("{t}.warning")),
                None => continue,
            },
            pb::Event::SlaBreached(e) => match target_key(e.target) {
                Some(t) => (e.case_id, format!("{t}.{}", e.level)),
                None => continue,
            },
            _ => continue,
        };
        out.entry(case).or_default().insert(mark);
    }
    Ok(out)
}

/// Rebuilds the clocks of open cases missing from `tgb_sla`.
pub async fn sla(
    js: &jetstream::Context,
    policies: sla_monitor::Policies,
    dry_run: bool,
) -> anyhow::Result<SlaReport> {
    let sla_kv = js
        .get_key_value(names::KV_SLA)
        .await
        .context("KV bucket tgb_sla not found: is this tg-bridge's NATS?")?;
    let links = Links::new(
        js.get_key_value(names::KV_LINKS)
            .await
            .context("KV bucket tgb_links not found")?,
    );
    let stream = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .context("stream TGB_EVENTS not found")?;
    let (history, _) = ops::read(
        &stream,
        sla_monitor::handler::SUBJECTS
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        DeliverPolicy::All,
        usize::MAX,
    )
    .await?;
    // The service's handler, over a scratch bucket in memory (removed afterwards).
    let scratch_name = format!("tgb_sla_rebuild_{}", uuid::Uuid::new_v4().simple());
    let scratch = js
        .create_key_value(kv::Config {
            bucket: scratch_name.clone(),
            history: 1,
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .context("creating the scratch bucket")?;
    let result = replay(js, &sla_kv, &scratch, links, policies, history, dry_run).await;
    let _ = js.delete_key_value(&scratch_name).await;
    result
}

async fn replay(
    js: &jetstream::Context,
    sla_kv: &kv::Store,
    scratch: &kv::Store,
    links: Links,
    policies: sla_monitor::Policies,
    history: Vec<ops::Read>,
    dry_run: bool,
) -> anyhow::Result<SlaReport> {
    let mut report = SlaReport {
        dry_run,
        ..Default::default()
    };
    let handler = sla_monitor::handler::Lifecycle::new(
        sla_monitor::store::Clocks::new(scratch.clone()),
        links,
        Arc::new(policies),
        Arc::new(sla_monitor::SystemClock),
    );
    for m in history {
        let Ok(event) = pb::Event::decode(&m.subject, &m.payload) else {
            report.events_failed += 1;
            continue;
        };
        report.events += 1;
        let delivery = tgb_bus::Delivery {
            event,
            subject: m.subject,
            deliveries: 1,
            stream_sequence: m.seq,
            published: m.published,
            headers: m.headers,
        };
        if handler.handle(delivery).await.is_err() {
            report.events_failed += 1;
        }
    }
    let raised = raised(js).await?;
    report.already_raised = raised.values().map(BTreeSet::len).sum();
    let keys: Vec<String> = scratch.keys().await?.try_collect().await?;
    for key in keys {
        let (Some(mut clock), _) =
            tgb_bus::kv::read_json::<sla_monitor::state::CaseClock>(scratch, &key).await?
        else {
            continue;
        };
        if clock.stopped_at.is_some() {
            report.clocks_stopped += 1;
            continue;
        }
        if sla_kv.get(&key).await?.is_some() {
            report.clocks_present += 1;
            continue;
        }
        if let Some(marks) = raised.get(&clock.case_id) {
            clock.emitted.extend(marks.iter().cloned());
        }
        report.clocks_written += 1;
        report.written.push((
            clock.case_id.clone(),
            clock.emitted.iter().cloned().collect(),
        ));
        if !dry_run {
            let bytes = serde_json::to_vec(&clock)?;
            // Created only if still absent: a clock the service started meanwhile wins.
            if sla_kv.create(&key, bytes.into()).await.is_err() {
                report.clocks_written -= 1;
                report.clocks_present += 1;
                report.written.pop();
            }
        }
    }
    Ok(report)
}

/// The report for people.
pub fn render(r: &SlaReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would write" } else { "wrote" };
    for (case, emitted) in &r.written {
        out.push_str(&format!(
            "{verb:<12} clock of {case}{}\n",
            if emitted.is_empty() {
                String::new()
            } else {
                format!(" (already raised: {})", emitted.join(", "))
            }
        ));
    }
    out.push_str(&format!(
        "replayed {} lifecycle events ({} refused); {} warnings/breaches already raised\nclocks: {verb} {}, already present {}, stopped (not kept) {}",
        r.events, r.events_failed, r.already_raised, r.clocks_written, r.clocks_present, r.clocks_stopped
    ));
    if r.clocks_written == 0 {
        out.push_str("\nnothing to write: tgb_sla already holds every open case's clock");
    }
    out
}
