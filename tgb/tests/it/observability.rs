//! What deploy/ promises an operator: every metric a Grafana dashboard or a Prometheus rule
//! uses is one the running services export.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tgb::demo::{self, DemoOptions, Target};
use tgb_sandbox::{Fault, FaultRule};

use crate::support;

const FAST: &[(&str, &str)] = &[
    ("TGB_ROUTING__GRAPH__POLL_INTERVAL_MS", "500"),
    ("TGB_SLA__TICK_INTERVAL_MS", "200"),
    // Change tracking read every second: the expired delta link below is found soon.
    ("TGB_DYNAMICS__POLL_INTERVAL_MS", "1000"),
];

/// `link` with its `$deltatoken` issued at the epoch: Dataverse answers ExpiredVersionStamp.
/// `None` when it has no token or is already expired.
fn expired(link: &str) -> Option<String> {
    let at = link.find("$deltatoken=")? + "$deltatoken=".len();
    let end = link[at..].find('&').map_or(link.len(), |e| at + e);
    let (version, issued) = link[at..end].split_once('!')?;
    (issued != "0").then(|| format!("{}{version}!0{}", &link[..at], &link[end..]))
}

/// Until dynamics-adapter counts a re-baseline: stores an expired token in every Dataverse
/// delta link of `tgb_cursors` that does not have one (the adapter's next round may have
/// replaced it with a fresh one read before the write).
async fn rebaseline(nats_url: &str, metrics_url: &str) {
    use futures::TryStreamExt as _;
    let client = async_nats::connect(nats_url).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(tgb_bus::names::KV_CURSORS)
        .await
        .unwrap();
    tgb_testkit::eventually(
        "dynamics-adapter re-baselined an expired delta link",
        tgb_testkit::HANG_GUARD,
        || {
            let kv = kv.clone();
            async move {
                let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
                if text.contains("tgb_dynamics_rebaselines_total{") {
                    return Some(());
                }
                let keys: Vec<String> = kv.keys().await.ok()?.try_collect().await.ok()?;
                for key in keys.iter().filter(|k| k.starts_with("dataverse.")) {
                    let link = kv.get(key).await.ok()??;
                    if let Some(old) = expired(&String::from_utf8_lossy(&link)) {
                        kv.put(key, old.into()).await.ok()?;
                    }
                }
                None
            }
        },
    )
    .await
    .unwrap();
}

/// Every `tgb_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tgb_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path
            .extension()
            .is_some_and(|e| e == "json" || e == "yml" || e == "yaml")
        {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// The metric names dashboards and alert rules use (histogram series folded to their name),
/// restricted to those the metrics contract lists (a dashboard's prose may say `tgb_sync`).
fn used_metrics(repo: &Path) -> BTreeSet<String> {
    // The names in the first column of the contract's tables.
    let contract = std::fs::read_to_string(repo.join("deploy/metrics.md")).unwrap();
    let listed: BTreeSet<String> = contract
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("tgb_"))
        .map(str::to_owned)
        .collect();
    let mut used = BTreeSet::new();
    for dir in ["deploy/grafana/dashboards", "deploy/prometheus/rules"] {
        for text in files(&repo.join(dir)) {
            for name in names_in(&text) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| listed.contains(*b)))
                    .map(str::to_owned)
                    .unwrap_or(name);
                if listed.contains(&base) {
                    used.insert(base);
                }
            }
        }
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_a_dashboard_or_rule_uses_is_exported_by_the_running_services() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let used = used_metrics(&repo);
    assert!(used.len() >= 15, "dashboards and rules use {used:?}");

    let (system, _dir) = support::system(FAST).await;
    let target = Target {
        sandbox: system.sandbox.base_url(),
        control: Some(system.control_url.clone()),
        local_planner: Some((system.sandbox.planner().clone(), system.users.clone())),
    };
    let opts = DemoOptions {
        partners: 1,
        cases: 1,
        flow_timeout: tgb_testkit::HANG_GUARD,
        progress: false,
    };
    // A business day, then one with the faults the alerts are about: 429s from Dataverse and
    // Graph, and Entra refusing to issue tokens for a moment after every token expired.
    let first = demo::run(&target, &opts).await.unwrap();
    assert!(
        first.flows.iter().all(|f| f.passed),
        "{}",
        demo::render(&first)
    );
    let faults = system.sandbox.faults();
    faults
        .add(FaultRule::new(
            "dataverse",
            Fault::Burst429 {
                count: 3,
                retry_after_secs: 1,
            },
        ))
        .unwrap();
    faults
        .add(FaultRule::new(
            "graph",
            Fault::Burst429 {
                count: 2,
                retry_after_secs: 1,
            },
        ))
        .unwrap();
    // Entra stays down until it has refused a token request (not for a fixed time: on a slow
    // machine the first request for a new token can come after any fixed outage ended).
    let entra_down = faults
        .add(FaultRule::new(
            "entra",
            Fault::ErrorRate {
                rate: 1.0,
                status: 503,
            },
        ))
        .unwrap();
    system.sandbox.identity().expire_all_tokens();
    // A partner renames a case: Dynamics and Planner are updated through the faults.
    let case = first.cases.first().unwrap().clone();
    let title = "Short shipment on PO 4471 (40 of 48 cartons)";
    let update: tgb_sandbox::tg::model::UpdateCase =
        serde_json::from_value(serde_json::json!({"title": title})).unwrap();
    system.sandbox.tg().update_case(&case, update).unwrap();
    tgb_testkit::eventually(
        "Entra refused a token request",
        tgb_testkit::HANG_GUARD,
        || async {
            system
                .sandbox
                .calls()
                .of_system("entra")
                .iter()
                .any(|c| c.faults.contains(&entra_down))
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert!(faults.remove(entra_down));
    tgb_testkit::eventually(
        "the rename reached Dynamics and Planner",
        tgb_testkit::HANG_GUARD,
        || async {
            let incident = system
                .sandbox
                .dataverse()
                .rows("incidents")
                .into_iter()
                .any(|r| {
                    r["tgb_tgcaseid"] == case.as_str()
                        && r["title"].as_str().is_some_and(|t| t.contains("40 of 48"))
                });
            let task = system
                .sandbox
                .planner()
                .snapshot()
                .to_string()
                .contains("40 of 48");
            (incident && task).then_some(())
        },
    )
    .await
    .unwrap();

    // A new case whose first response is late: past the warning threshold, before the target.
    let partner =
        serde_json::to_value(system.sandbox.tg().case(&case).unwrap()).unwrap()["partner"].clone();
    let raise: tgb_sandbox::tg::model::RaiseCase = serde_json::from_value(
        serde_json::json!({"partner": partner, "title": "Late ASN", "priority": "low"}),
    )
    .unwrap();
    let late = system.sandbox.tg().raise_case(raise).unwrap();
    let late_case = late.data["case_id"].as_str().unwrap().to_owned();
    tgb_testkit::eventually(
        "the late case reached Dynamics",
        tgb_testkit::HANG_GUARD,
        || async {
            system
                .sandbox
                .dataverse()
                .rows("incidents")
                .iter()
                .any(|r| r["tgb_tgcaseid"] == late_case.as_str())
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The SLA clock of `tgb up` runs ahead of the wall clock by what the demo advanced it (P3),
    // and a new case starts with that much elapsed. A low-priority case of a standard partner
    // has 480 min to a first response: bring it to 400 min, past the 80 % warning, before the
    // target.
    let offset = system.sla_clock.offset();
    system
        .sla_clock
        .advance(Duration::from_secs(400 * 60).saturating_sub(offset));

    let metrics_url = format!("{}/metrics", system.service("tg-ingress").unwrap().url());

    // What the webhook alerts read: a TG delivery without a signature and a Dataverse call
    // with a wrong key are refused with 401.
    let http = reqwest::Client::new();
    let tg_hook = format!(
        "{}/webhooks/tg",
        system.service("tg-ingress").unwrap().url()
    );
    let refused = http
        .post(tg_hook)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let dv_hook = format!(
        "{}/webhooks/dataverse",
        system.service("dynamics-adapter").unwrap().url()
    );
    let refused = http
        .post(dv_hook)
        .header("x-api-key", "not-the-key")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // What the re-baseline alert reads: a change-tracking token that expired.
    rebaseline(&system.nats_url, &metrics_url).await;
    let exported = tgb_testkit::eventually(
        "every used metric exported",
        tgb_testkit::HANG_GUARD,
        || {
            let url = metrics_url.clone();
            let used = used.clone();
            async move {
                let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
                let have: BTreeSet<String> = text
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.split(['{', ' ']).next())
                    .map(|n| {
                        ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|s| n.strip_suffix(s).filter(|b| used.contains(*b)))
                            .unwrap_or(n)
                            .to_owned()
                    })
                    .collect();
                let missing: Vec<_> = used.difference(&have).cloned().collect();
                if missing.is_empty() {
                    Some(Ok(()))
                } else {
                    Some(Err(missing))
                }
                .filter(Result::is_ok)
            }
        },
    )
    .await;
    if exported.is_err() {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<_> = used.iter().filter(|n| !text.contains(n.as_str())).collect();
        panic!("metrics used by dashboards or rules but not exported: {missing:?}");
    }
    system.stop().await;
}
