//! The outputs: `bench.json` (everything), `summary.md` (the tables) and `pipeline.svg`
//! (sustained throughput and p99 against offered load, drawn as SVG text).

use std::fmt::Write as _;

use super::BenchReport;
use super::cost::CostResult;
use super::pipeline::PipelineResult;
use super::resources::ProcUsage;

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn resources_table(out: &mut String, idle: &[ProcUsage], busy: &[ProcUsage], rate: f64) {
    let _ = writeln!(
        out,
        "| process | CPU idle (% of a core) | CPU at {rate:.0} cases/s | peak RSS idle (MiB) | peak RSS at {rate:.0} cases/s (MiB) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for i in idle {
        let b = busy.iter().find(|b| b.process == i.process);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i.process,
            f1(i.cpu_percent),
            b.map_or("-".into(), |b| f1(b.cpu_percent)),
            f1(i.peak_rss_mib),
            b.map_or("-".into(), |b| f1(b.peak_rss_mib)),
        );
    }
}

/// The Markdown summary.
pub fn markdown(r: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# tgb bench ({} run, {})\n\nMachine: {} CPUs, {}. Services run as {}.\n",
        r.run, r.started_at, r.machine.cpus, r.machine.os, r.services
    );
    if let Some(p) = &r.pipeline {
        let _ = writeln!(
            out,
            "## Pipeline (limits off): TG webhook → Dynamics incident + Planner triage task\n"
        );
        let _ = writeln!(
            out,
            "| offered (cases/s) | achieved offered | cases | completed | sustained (cases/s) | incident p50 / p95 / p99 (ms) | task p50 / p95 / p99 (ms) | saturated |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---|---|---|");
        for s in &p.steps {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {} |",
                s.offered_per_sec,
                f1(s.achieved_offered_per_sec),
                s.cases,
                s.completed,
                f1(s.sustained_per_sec),
                s.to_incident_ms.p50,
                s.to_incident_ms.p95,
                s.to_incident_ms.p99,
                s.to_task_ms.p50,
                s.to_task_ms.p95,
                s.to_task_ms.p99,
                if s.saturated { "yes" } else { "no" }
            );
        }
        let _ = writeln!(
            out,
            "\nRaw JetStream on the same broker (acked publish + durable pull consume, {} B messages): **{:.0} msg/s** (publish alone {:.0} msg/s).\n\
             Best sustained pipeline: **{:.1} cases/s**, ratio pipeline / raw = **{:.4}** ({:.1} bus messages per case).\n",
            p.raw.message_bytes,
            p.raw.messages_per_sec,
            p.raw.publish_per_sec,
            p.max_sustained_per_sec,
            p.ratio_to_raw,
            p.bus_messages_per_case
        );
    }
    if r.quota.is_some() {
        let _ = writeln!(out, "## Quota efficiency\n");
    }
    if let Some(q) = r
        .quota
        .as_ref()
        .filter(|q| q.batching_on.is_some() || q.batching_off.is_some())
    {
        let _ = writeln!(
            out,
            "| mix | changes | Dataverse requests (naive) | Graph requests (naive; of which plan polls) | requests per change | naive per change | share of naive |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for m in [&q.batching_on, &q.batching_off].into_iter().flatten() {
            let _ = writeln!(
                out,
                "| $batch {} | {} | {} ({}) | {} ({}; {}) | {:.2} | {:.2} | {:.2} |",
                if m.batching { "on" } else { "off" },
                m.changes,
                m.dataverse_requests,
                m.naive_dataverse_requests,
                m.graph_requests,
                m.naive_graph_requests,
                m.graph_plan_polls,
                m.requests_per_change,
                m.naive_requests_per_change,
                m.share_of_naive
            );
        }
        if let Some(m) = &q.batching_on {
            let _ = writeln!(
                out,
                "\nNaive: one request per change per Microsoft target it must reach. Plan polls run every {} ms whatever the changes.",
                m.planner_poll_ms
            );
        }
    }
    if let Some(b) = r.quota.as_ref().and_then(|q| q.backlog.as_ref()) {
        let _ = writeln!(
            out,
            "\nBacklog ({} mode: {} requests / {} s, {} concurrent; {} changes): {} Dataverse requests in {:.0} s = **{:.1} req/s, {:.0}% of the allowed {:.0} req/s**; 429s: {} (after the first: **{}**), requests sent before a Retry-After ran out: {}; {}.\n",
            b.mode,
            b.limit_requests,
            b.limit_window_secs,
            b.limit_concurrent,
            b.changes,
            b.requests,
            b.drain_secs,
            b.achieved_per_sec,
            b.share_of_allowed * 100.0,
            b.allowed_per_sec,
            b.throttled,
            b.throttled_after_first,
            b.early_requests,
            if b.complete {
                "every change reached Dynamics"
            } else {
                "NOT every change reached Dynamics before the deadline"
            }
        );
        let _ = writeln!(
            out,
            "The emulator answered the adapter in p50 {:.0} ms / p99 {:.0} ms; CPU over the drain: {}.\n",
            b.dataverse_latency_ms.p50,
            b.dataverse_latency_ms.p99,
            b.resources
                .iter()
                .map(|u| format!("{} {:.0}%", u.process, u.cpu_percent))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(res) = &r.resources {
        let _ = writeln!(
            out,
            "## Resources (CPU over the window; peak RSS = VmHWM)\n"
        );
        resources_table(&mut out, &res.idle, &res.at_sustained, res.sustained_rate);
    }
    if let Some(c) = &r.cost {
        cost_table(&mut out, c);
    }
    out
}

fn cost_table(out: &mut String, c: &CostResult) {
    let _ = writeln!(
        out,
        "## Cost per case ({} cases at {} cases/s offered, {} achieved; {} completed{})\n",
        c.cases,
        c.options.rate,
        f1(c.achieved_offered_per_sec),
        c.completed,
        if c.drained { "" } else { ", NOT drained" }
    );
    let _ = writeln!(out, "| measure | per case |");
    let _ = writeln!(out, "|---|---:|");
    let mut row = |name: &str, v: String| {
        let _ = writeln!(out, "| {name} | {v} |");
    };
    row(
        "services CPU (µs, six together)",
        format!("{:.0}", c.services_cpu_us_per_case),
    );
    for (p, v) in &c.cpu_us_per_case {
        row(&format!("  CPU {p} (µs)"), format!("{v:.0}"));
    }
    row(
        "services wake-ups (six together)",
        f1(c.services_wakeups_per_case),
    );
    for (p, v) in &c.wakeups_per_case {
        row(&format!("  wake-ups {p}"), f1(*v));
    }
    row(
        "nats-server CPU (µs)",
        format!("{:.0}", c.nats_cpu_us_per_case),
    );
    row(
        "  nats-server threads (GOMAXPROCS; not per case)",
        c.broker_threads
            .map_or_else(|| "not reported".to_owned(), |n| n.to_string()),
    );
    row(
        "raw JetStream: nats-server CPU per message (µs)",
        f1(c.raw.nats_cpu_us_per_message),
    );
    row(
        "nats-server CPU in raw messages",
        f1(c.nats_cpu_per_case_in_raw_messages),
    );
    if let Some(f) = &c.floor {
        row(
            "the floor, same run: services CPU (µs, ingress and 3 consumers)",
            format!("{:.0}", f.services_cpu_us_per_case),
        );
        row(
            "the floor, same run: nats-server CPU (µs)",
            format!("{:.0}", f.nats_cpu_us_per_case),
        );
        row(
            "the floor: wake-ups, services / nats-server",
            format!(
                "{} / {}",
                f1(f.services_wakeups_per_case),
                f1(f.nats_wakeups_per_case)
            ),
        );
        row(
            "the floor: stored / broker in / out",
            format!(
                "{} / {} / {}",
                f1(f.js_stored_per_case),
                f1(f.broker_in_msgs_per_case),
                f1(f.broker_out_msgs_per_case)
            ),
        );
        row(
            "the floor: nats-server CPU in raw messages",
            f1(f.nats_cpu_per_case_in_raw_messages),
        );
    }
    if let Some(f) = &c.floor_one_process {
        row(
            "the floor in one process: services CPU / nats-server CPU (µs)",
            format!(
                "{:.0} / {:.0}",
                f.services_cpu_us_per_case, f.nats_cpu_us_per_case
            ),
        );
    }
    if let (Some(s), Some(n)) = (c.services_cpu_in_floors, c.nats_cpu_in_floors) {
        row(
            "a case in floors: services CPU / nats-server CPU",
            format!("{s:.2} / {n:.2}"),
        );
    }
    row("broker messages in", f1(c.broker_in_msgs_per_case));
    row("broker messages out", f1(c.broker_out_msgs_per_case));
    row(
        if c.stored_after_polls {
            "JetStream messages stored (counted after the poll cycles that see the run's tasks and incidents)"
        } else {
            "JetStream messages stored"
        },
        f1(c.js_stored_per_case),
    );
    for (s, v) in &c.js_stored_per_case_by_stream {
        row(&format!("  stored in {s}"), format!("{v:.2}"));
    }
    row("KV writes", f1(c.kv_writes_per_case));
    if let Some(reads) = c.kv_reads_per_case {
        row("KV reads (tapped pass)", format!("{reads:.2}"));
    }
    if !c.broker_msgs_per_case_by_class.is_empty() {
        row("broker messages by class (tapped pass)", String::new());
        for (class, v) in &c.broker_msgs_per_case_by_class {
            row(&format!("  {class}"), format!("{v:.2}"));
        }
    }
    row("JetStream API requests", f1(c.js_api_requests_per_case));
    row(
        "Dataverse requests",
        format!("{:.2}", c.dataverse_requests_per_case),
    );
    row(
        "Graph HTTP requests per triage task (plan polls aside; a `$batch` is one)",
        format!("{:.2}", c.graph_requests_per_task),
    );
    for (route, v) in &c.requests_per_case_by_route {
        row(&format!("  {route}"), format!("{v:.2}"));
    }
    row(
        "case → incident p50 / p95 / p99 (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            c.to_incident_ms.p50, c.to_incident_ms.p95, c.to_incident_ms.p99
        ),
    );
    row(
        "case → task p50 / p95 / p99 (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            c.to_task_ms.p50, c.to_task_ms.p95, c.to_task_ms.p99
        ),
    );
    let _ = writeln!(
        out,
        "\nGraph plan polls during the run: {} (on their own clock). KV reads are counted in the \
         tapped pass only (a get stores nothing; it is one broker message in and one out). The \
         floor is the smallest pipeline of a case's shape on the same stack (an acknowledged \
         publish behind an HTTP request, three consumers each writing one KV entry and acking), \
         run on the same broker at the same rate: what a case costs at the least.",
        c.graph_plan_polls
    );
}

/// Sustained throughput (left axis) and p99 latencies (right axis) against offered load.
pub fn svg(p: &PipelineResult) -> String {
    let (w, h) = (720.0, 420.0);
    let (l, r, t, b) = (70.0, 70.0, 50.0, 60.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let xs: Vec<f64> = p.steps.iter().map(|s| s.offered_per_sec).collect();
    let xmax = nice(xs.iter().copied().fold(1.0, f64::max));
    let ymax = nice(
        p.steps
            .iter()
            .map(|s| s.sustained_per_sec.max(s.offered_per_sec))
            .fold(1.0, f64::max),
    );
    let lat_max = nice(
        p.steps
            .iter()
            .map(|s| s.to_incident_ms.p99.max(s.to_task_ms.p99))
            .fold(1.0, f64::max),
    );
    let x = |v: f64| l + pw * v / xmax;
    let y = |v: f64| t + ph - ph * v / ymax;
    let y2 = |v: f64| t + ph - ph * v / lat_max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">tg-bridge pipeline: TG webhook → incident + triage task (limits off)</text>"#,
        w / 2.0
    );
    // Axes and grid.
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let (gx, gy) = (l + pw * f, t + ph - ph * f);
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#e5e5e5\"/>",
            l + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"#,
            l - 6.0,
            gy + 4.0,
            ymax * f
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"start\" fill=\"#c0392b\">{:.0}</text>",
            l + pw + 6.0,
            gy + 4.0,
            lat_max * f
        );
        let _ = writeln!(
            s,
            r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            t + ph + 18.0,
            xmax * f
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>"
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered load (cases/s)</text>"#,
        l + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">sustained (cases/s)</text>"#,
        t + ph / 2.0
    );
    let _ = writeln!(
        s,
        "<text transform=\"translate({:.1} {:.1}) rotate(90)\" text-anchor=\"middle\" fill=\"#c0392b\">p99 latency (ms)</text>",
        w - 16.0,
        t + ph / 2.0
    );
    // The ideal: sustained = offered.
    let _ = writeln!(
        s,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>",
        x(0.0),
        y(0.0),
        x(xmax.min(ymax)),
        y(xmax.min(ymax))
    );
    type Point<'a> = Box<dyn Fn(&super::pipeline::Step) -> (f64, f64) + 'a>;
    let series: [(&str, &str, Point); 3] = [
        (
            "sustained",
            "#2c7fb8",
            Box::new(|st| (x(st.offered_per_sec), y(st.sustained_per_sec))),
        ),
        (
            "p99 to incident",
            "#c0392b",
            Box::new(|st| (x(st.offered_per_sec), y2(st.to_incident_ms.p99))),
        ),
        (
            "p99 to task",
            "#e67e22",
            Box::new(|st| (x(st.offered_per_sec), y2(st.to_task_ms.p99))),
        ),
    ];
    for (i, (name, color, point)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = p.steps.iter().map(point).collect();
        let path: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (a, b) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="{color}"/>"#
            );
        }
        let ly = t + 14.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            l + 10.0,
            l + 30.0,
            l + 36.0,
            ly + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#666\">raw JetStream: {:.0} msg/s; ratio {:.4}</text>",
        l + pw - 6.0,
        t + 16.0,
        p.raw.messages_per_sec,
        p.ratio_to_raw
    );
    s.push_str("</svg>\n");
    s
}

/// A round number at or above `v` (1, 2, 5 × 10ⁿ).
fn nice(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * e {
            return m * e;
        }
    }
    10.0 * e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_rounds_up() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(3.0), 5.0);
        assert_eq!(nice(120.0), 200.0);
        assert_eq!(nice(500.0), 500.0);
    }
}
