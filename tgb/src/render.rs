//! Human output of the operator commands (the `--json` output is the serialized structs).

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use crate::ops::{
    ConsumerReplay, DeadLetter, DeadLetterDetail, History, LinkRow, Replayed, Status,
};

/// A table with the house style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// `tgb dlq list`.
pub fn dlq_list(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "The DLQ is empty.".into();
    }
    let mut t = table(&[
        "id",
        "at",
        "consumer",
        "subject",
        "kind",
        "deliveries",
        "correlation",
        "error",
    ]);
    for l in letters {
        t.add_row(vec![
            l.id.to_string(),
            l.at.clone(),
            l.consumer.clone(),
            l.original_subject.clone(),
            l.error_kind.clone(),
            l.deliveries.clone(),
            l.correlation_id.clone(),
            short(&l.error, 80),
        ]);
    }
    format!(
        "{t}\n{} dead letter(s). `tgb dlq show ID` for one; `tgb dlq replay ID` once the cause is fixed.",
        letters.len()
    )
}

/// `tgb dlq show ID`.
pub fn dlq_show(d: &DeadLetterDetail) -> String {
    let l = &d.letter;
    let mut t = table(&["field", "value"]);
    for (k, v) in [
        ("id", l.id.to_string()),
        ("dead-lettered at", l.at.clone()),
        ("consumer", l.consumer.clone()),
        ("error kind", l.error_kind.clone()),
        ("error", l.error.clone()),
        ("deliveries", l.deliveries.clone()),
        ("original subject", l.original_subject.clone()),
        ("original sequence", l.original_seq.clone()),
        ("event id", l.event_id.clone()),
        ("correlation", l.correlation_id.clone()),
        ("entity", l.entity.clone()),
        ("payload", format!("{} bytes", d.payload_bytes)),
    ] {
        t.add_row(vec![k.to_owned(), v]);
    }
    let mut h = table(&["header", "value"]);
    for (k, v) in &d.headers {
        h.add_row(vec![k.clone(), v.clone()]);
    }
    format!("{t}\n{h}\nevent:\n{}", d.event)
}

/// `tgb dlq replay`.
pub fn replayed(items: &[Replayed], dry_run: bool) -> String {
    if items.is_empty() {
        return "Nothing to replay.".into();
    }
    let mut t = table(&[
        "dead letter",
        "to subject",
        "Nats-Msg-Id",
        "new seq",
        "note",
    ]);
    for r in items {
        t.add_row(vec![
            r.id.to_string(),
            r.subject.clone(),
            r.msg_id.clone(),
            r.new_seq
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            if dry_run {
                "dry run: nothing sent".into()
            } else if r.duplicate {
                "already replayed before; removed from the DLQ".into()
            } else {
                "republished; removed from the DLQ".into()
            },
        ]);
    }
    t.to_string()
}

/// `tgb links`.
pub fn links(rows: &[LinkRow], spec: &str) -> String {
    if rows.is_empty() {
        return format!("No link of {spec} in tgb_links.");
    }
    let mut t = table(&["record", "linked to", "id"]);
    for r in rows {
        t.add_row(vec![r.from.clone(), r.to.clone(), r.id.clone()]);
    }
    t.to_string()
}

/// `tgb history`.
pub fn history(h: &History) -> String {
    if h.entries.is_empty() {
        return format!(
            "No ledger entry for {} (searched {}). Was it handled yet? `tgb links {}` shows what it is linked to.",
            h.record,
            h.correlations.join(", "),
            h.record
        );
    }
    let mut t = table(&[
        "at",
        "consumer",
        "subject",
        "entity@version",
        "try",
        "decision",
        "detail",
        "target → response",
        "trace id",
    ]);
    for e in &h.entries {
        let target = match (e.target.is_empty(), e.response.is_empty()) {
            (true, true) => String::new(),
            _ => format!("{} → {}", e.target, e.response),
        };
        t.add_row(vec![
            e.at.clone(),
            e.consumer.clone(),
            e.subject.trim_start_matches("tgb.v1.").to_owned(),
            format!("{}@{}", e.entity, short(&e.entity_version, 12)),
            e.deliveries.to_string(),
            e.decision.as_str().to_owned(),
            short(&e.detail, 60),
            short(&target, 60),
            e.trace_id.clone(),
        ]);
    }
    format!(
        "{} (business thread {})\n{t}\nOpen a trace id in Jaeger to see the calls.",
        h.record,
        h.correlations.join(", ")
    )
}

/// `tgb replay --consumer`.
pub fn consumer_replay(r: &ConsumerReplay, dry_run: bool) -> String {
    let Some(seq) = r.from_seq else {
        return format!(
            "Nothing stored since {} on the subjects of {}.",
            r.since, r.consumer
        );
    };
    let mut t = table(&["subject", "messages"]);
    for (s, n) in &r.by_subject {
        t.add_row(vec![s.clone(), n.to_string()]);
    }
    let what = if dry_run {
        "would receive again (dry run: nothing changed)"
    } else {
        "will receive again (consumer reset; the running service picks them up)"
    };
    format!(
        "{} {what}: {} message(s) from sequence {seq} (stored since {}).\n{t}",
        r.consumer, r.messages, r.since
    )
}

/// `tgb status`.
pub fn status(s: &Status) -> String {
    let mut st = table(&["stream", "messages", "bytes", "consumers", "last message"]);
    for x in &s.streams {
        st.add_row(vec![
            x.name.clone(),
            x.messages.to_string(),
            x.bytes.to_string(),
            x.consumers.to_string(),
            x.last.clone(),
        ]);
    }
    let mut ct = table(&[
        "consumer",
        "pending",
        "ack pending",
        "redelivered",
        "waiting pulls",
        "in DLQ",
    ]);
    for c in &s.consumers {
        ct.add_row(vec![
            c.name.clone(),
            c.pending.to_string(),
            c.ack_pending.to_string(),
            c.redelivered.to_string(),
            c.waiting.to_string(),
            c.dead_letters.to_string(),
        ]);
    }
    let mut out = format!(
        "NATS {}\n{st}\n{ct}\nDLQ depth: {}\n",
        s.nats_version, s.dlq_depth
    );
    if s.governors.is_empty() {
        out.push_str(&format!("Governors: {}\n", s.governors_note));
    } else {
        let mut gt = table(&["governor lane", "in flight", "429s", "learned rate /s"]);
        for g in &s.governors {
            gt.add_row(vec![
                g.lane.clone(),
                g.in_flight.to_string(),
                g.throttled.to_string(),
                g.learned_rate
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        out.push_str(&format!("{gt}\nGovernors: {}\n", s.governors_note));
    }
    out.push_str(&tg_feed(s.tg_feed.as_ref()));
    out
}

fn tg_feed(f: Option<&crate::ops::FeedStatus>) -> String {
    let Some(f) = f else {
        return "TG feed: not polled yet (the first start reads from [tg_ingress] start_from, \
                default now)\n"
            .to_owned();
    };
    let start = match (&f.start_from, &f.not_before) {
        (Some(from), Some(nb)) => format!("started from {from} (events before {nb} not published)"),
        (Some(from), None) => format!("started from {from}"),
        (None, _) => "started before start_from existed".to_owned(),
    };
    let first = f
        .started_at
        .as_deref()
        .map(|t| format!(", first start {t}"))
        .unwrap_or_default();
    let progress = if f.caught_up {
        "caught up"
    } else {
        "catching up"
    };
    format!(
        "TG feed: {start}{first}; {progress}, cursor '{}', {} old events skipped\n",
        f.cursor, f.skipped
    )
}
