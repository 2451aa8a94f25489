//! `tgb bench` in its smallest configuration: every section is in the JSON, with sane values.

use std::process::Command;

use serde_json::Value;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur}"))
}

fn positive(v: &Value, path: &str) -> f64 {
    let x = num(v, path);
    assert!(x.is_finite() && x > 0.0, "{path} = {x}, expected > 0");
    x
}

#[test]
fn bench_writes_every_section_with_sane_values() {
    tgb_testkit::init_test_tracing();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_tgb"))
        .args([
            "--json",
            "bench",
            "--quick",
            "--steps",
            "4,8",
            "--step-secs",
            "2",
            "--raw-messages",
            "500",
            "--partners",
            "2",
            "--idle-secs",
            "1",
            "--mix-rounds",
            "1",
            "--planner-poll-ms",
            "1000",
            "--dynamics-poll-ms",
            "1000",
            "--backlog",
            "60",
            "--cost-cases",
            "200",
            // This test's own build of the services, whatever else the target directory holds.
            "--service-binaries",
            "tgb",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("tgb runs");
    assert!(
        run.status.success(),
        "tgb bench failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let printed: Value = serde_json::from_slice(&run.stdout).expect("--json prints JSON");
    let file: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("bench.json")).unwrap()).unwrap();
    assert_eq!(printed, file, "the printed JSON is bench.json");
    assert_eq!(file["run"], "quick");

    // 1. Pipeline and raw JetStream.
    let steps = file["pipeline"]["steps"].as_array().expect("steps");
    assert!(!steps.is_empty());
    for s in steps {
        positive(s, "sustained_per_sec");
        positive(s, "completed");
        for lat in ["to_incident_ms", "to_task_ms", "to_both_ms"] {
            let p50 = positive(s, &format!("{lat}.p50"));
            let p99 = positive(s, &format!("{lat}.p99"));
            assert!(p99 >= p50, "{lat}: p99 {p99} < p50 {p50}");
        }
    }
    positive(&file, "pipeline.raw.messages_per_sec");
    positive(&file, "pipeline.raw.message_bytes");
    let ratio = positive(&file, "pipeline.ratio_to_raw");
    assert!(
        ratio < 1.0,
        "a case costs more than one raw message: {ratio}"
    );
    positive(&file, "pipeline.max_sustained_per_sec");

    // 2. Quota.
    for mix in ["batching_on", "batching_off"] {
        let m = &file["quota"][mix];
        positive(m, "changes");
        positive(m, "naive_requests");
        positive(m, "dataverse_requests");
        positive(m, "graph_requests");
        positive(m, "requests_per_change");
        positive(m, "share_of_naive");
    }
    let b = &file["quota"]["backlog"];
    assert_eq!(b["mode"], "quick");
    assert_eq!(b["allowed_per_sec"], 20.0);
    positive(b, "requests");
    positive(b, "achieved_per_sec");
    positive(b, "share_of_allowed");
    assert!(num(b, "throttled_after_first") >= 0.0);
    assert_eq!(b["complete"], true);

    // 3. Resources: every service, idle and busy.
    for part in ["idle", "at_sustained"] {
        let rows = file["resources"][part].as_array().expect("rows");
        for service in [
            "tg-ingress",
            "tg-egress",
            "dynamics-adapter",
            "planner-adapter",
            "sla-monitor",
            "document-review",
        ] {
            let row = rows
                .iter()
                .find(|r| r["process"] == service)
                .unwrap_or_else(|| panic!("{part}: no {service}"));
            positive(row, "peak_rss_mib");
            assert!(num(row, "cpu_percent") >= 0.0);
        }
    }
    let busy: f64 = file["resources"]["at_sustained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| num(r, "cpu_percent"))
        .sum();
    assert!(busy > 0.0, "no CPU used under load");

    // 4. Cost, beside the floor of the same run.
    let c = &file["cost"];
    positive(c, "services_cpu_us_per_case");
    positive(c, "nats_cpu_us_per_case");
    assert_eq!(c["drained"], true);
    for floor in ["floor", "floor_one_process"] {
        let f = &c[floor];
        positive(f, "services_cpu_us_per_case");
        positive(f, "nats_cpu_us_per_case");
        positive(f, "services_wakeups_per_case");
        // An event and one KV entry per consumer: the floor ran as it is meant to.
        assert_eq!(num(f, "js_stored_per_case"), 4.0, "{floor}");
    }
    positive(c, "services_cpu_in_floors");
    positive(c, "nats_cpu_in_floors");
    // Counted once the pollers had seen the run's tasks and incidents; at least the three handlings' entries.
    assert_eq!(c["stored_after_polls"], true);
    assert!(num(c, "js_stored_per_case_by_stream.TGB_LEDGER") >= 3.0);

    // The table and the chart.
    let md = std::fs::read_to_string(out.path().join("summary.md")).unwrap();
    assert!(md.contains("ratio pipeline / raw") && md.contains("Quota efficiency"));
    let svg = std::fs::read_to_string(out.path().join("pipeline.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>")
    );
}
