//! A three-node JetStream cluster (streams, buckets and the object store at three replicas, the
//! services given every node's client URL): one node killed mid-burst and started again, and
//! the leader of `TGB_EVENTS` moved mid-burst.

use std::time::{Duration, Instant};

use tgb_bus::names;
use tgb_fault_suite::cluster::{NODE_WITHIN, step_down, wait_stream_current, wait_stream_leader};
use tgb_fault_suite::progress::{Progress, value, wait_for};
use tgb_fault_suite::{FaultSystem, Options};

use crate::support::Run;

/// Nodes of the cluster, and replicas of every stream and bucket.
const NODES: usize = 3;

/// The burst when `TGB_FAULT_CASES` is not set: replication makes each write wait for a
/// quorum, and the point is the fault, not the volume.
const CLUSTER_CASES: usize = 200;

/// The durable consumers of `TGB_EVENTS` (the `CONSUMER` of each service but tg-ingress).
const CONSUMERS: [&str; 5] = [
    "tg-egress",
    "dynamics-adapter-in",
    "planner-adapter",
    "sla-monitor",
    "document-review",
];

const PROGRESS_WITHIN: Duration = Duration::from_secs(120);

fn cluster_options() -> Options {
    Options {
        cluster_nodes: Some(NODES),
        ..Options::default()
    }
}

/// Every stream tg-bridge provisions, by JetStream name: the three streams, the KV buckets
/// (`KV_<bucket>`) and the object store (`OBJ_<store>`).
fn provisioned_streams() -> Vec<String> {
    [
        names::EVENTS_STREAM,
        names::DLQ_STREAM,
        names::LEDGER_STREAM,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(names::KV_BUCKETS.iter().map(|(b, _)| format!("KV_{b}")))
    .chain([format!("OBJ_{}", names::OBJECT_DOCUMENTS)])
    .collect()
}

/// Waits until every provisioned stream has a leader and its other replicas current.
async fn wait_all_current(sys: &FaultSystem) -> Vec<(String, String)> {
    let mut leaders = Vec::new();
    for stream in provisioned_streams() {
        let c = wait_stream_current(&sys.js, &stream, NODES, NODE_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{stream} at {NODES} replicas: {e}"));
        leaders.push((stream, c.leader.unwrap_or_default()));
    }
    leaders
}

/// The system on the cluster, checked before the burst: provisioned as `[bus] replicas = 3`
/// asks (every stream, bucket and the object store on every node, and the durable consumers
/// with them); then the burst.
async fn start(name: &str) -> Run {
    let (sys, burst) = Run::system_of(cluster_options(), CLUSTER_CASES).await;
    let leaders = wait_all_current(&sys).await;
    println!("leaders: {leaders:?}");
    // The durable consumer of each service that consumes TGB_EVENTS (all but tg-ingress),
    // created once its service is ready, at the stream's replicas.
    for consumer in CONSUMERS {
        let peers = tgb_testkit::eventually(
            &format!("consumer {consumer} at {NODES} replicas"),
            NODE_WITHIN,
            || {
                let js = sys.js.clone();
                async move {
                    let stream = js.get_stream(names::EVENTS_STREAM).await.ok()?;
                    let info = stream.consumer_info(consumer).await.ok()?;
                    let peers = info.cluster.map_or(0, |c| c.replicas.len());
                    (peers + 1 == NODES).then_some(peers)
                }
            },
        )
        .await
        .expect("the consumers of TGB_EVENTS");
        assert_eq!(peers + 1, NODES);
    }
    Run::raise(name, sys, burst).await
}

/// Service connections on each node (`/connz`), by node.
async fn connections(run: &Run) -> Vec<usize> {
    let cluster = run.sys.nats.cluster();
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        out.push(if cluster.nodes[i].is_running() {
            cluster
                .service_connections(i)
                .await
                .expect("the node's /connz")
                .len()
        } else {
            0
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_mid_burst_and_restarted_loses_and_doubles_nothing() {
    let mut run = start("cluster: node killed and restarted").await;
    let quarter = run.share(1, 4);
    wait_for(&mut run.sys, Progress::Incidents, quarter, PROGRESS_WITHIN)
        .await
        .expect("the burst is under way");
    // The leader of TGB_EVENTS: the stream must elect another, publishes in flight on it
    // are cut, and the services connected to it must move to the other nodes.
    let leader = wait_stream_leader(&run.sys.js, names::EVENTS_STREAM, None, NODE_WITHIN)
        .await
        .expect("TGB_EVENTS has a leader");
    let before = connections(&run).await;
    let total: usize = before.iter().sum();
    let cluster = run.sys.nats.cluster_mut();
    let victim = cluster.index_of(&leader).expect("the leader is a node");
    let name = leader.clone();
    let killed_at = Instant::now();
    cluster.kill(victim).await;
    println!(
        "killed {name} (leader of TGB_EVENTS; service connections per node {before:?}) at {} incidents",
        value(&run.sys, Progress::Incidents).await
    );
    // The other two carry on: TGB_EVENTS has a leader among them, and the burst moves on
    // through them while the node is down.
    let new_leader =
        wait_stream_leader(&run.sys.js, names::EVENTS_STREAM, Some(&name), NODE_WITHIN)
            .await
            .expect("a leader among the two nodes left");
    println!(
        "TGB_EVENTS leader {new_leader} after {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );
    // Every service connection is on the two nodes left.
    let moved = tgb_testkit::eventually(
        "every service connection moved to the nodes left",
        NODE_WITHIN,
        || {
            let run = &run;
            async move {
                let now = connections(run).await;
                (now.iter().sum::<usize>() == total).then_some(now)
            }
        },
    )
    .await
    .expect("the services reconnect to the other nodes");
    println!(
        "service connections per node {moved:?} after {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );
    let incidents = value(&run.sys, Progress::Incidents).await;
    let cases = run.burst.cases as u64;
    let step = run.share(1, 6);
    wait_for(
        &mut run.sys,
        Progress::Incidents,
        (incidents + step).min(cases),
        PROGRESS_WITHIN,
    )
    .await
    .expect("the burst goes on with a node down");
    let tasks = value(&run.sys, Progress::Tasks).await;
    println!(
        "incidents {} after {:.1} s; tasks {tasks}",
        value(&run.sys, Progress::Incidents).await,
        killed_at.elapsed().as_secs_f64()
    );
    wait_for(
        &mut run.sys,
        Progress::Tasks,
        (tasks + 1).min(cases),
        PROGRESS_WITHIN,
    )
    .await
    .expect("tasks go on with a node down");
    // Back on the same ports and store: it rejoins and catches up (healthy = every stream and
    // consumer it holds is current), and every stream has all three replicas current again.
    let down_for = killed_at.elapsed();
    run.sys
        .nats
        .cluster_mut()
        .restart(victim)
        .await
        .expect("the node rejoins");
    wait_all_current(&run.sys).await;
    println!(
        "{name} down {:.1} s (incidents {incidents} → {}), caught up {:.1} s after the kill",
        down_for.as_secs_f64(),
        value(&run.sys, Progress::Incidents).await,
        killed_at.elapsed().as_secs_f64()
    );
    for s in &run.sys.services {
        println!("--- {}\n{}", s.label(), s.log_tail(40));
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tg_events_leader_moved_mid_burst_loses_and_doubles_nothing() {
    let mut run = start("cluster: TGB_EVENTS leader moved").await;
    let mut leaders = Vec::new();
    for num in 1..=2 {
        let at = run.share(num, 4);
        wait_for(&mut run.sys, Progress::Incidents, at, PROGRESS_WITHIN)
            .await
            .expect("the burst is under way");
        let old = wait_stream_leader(&run.sys.js, names::EVENTS_STREAM, None, NODE_WITHIN)
            .await
            .expect("TGB_EVENTS has a leader");
        let asked = Instant::now();
        step_down(&run.sys.client, names::EVENTS_STREAM)
            .await
            .expect("the leader steps down");
        let answered = asked.elapsed();
        let new = wait_stream_leader(&run.sys.js, names::EVENTS_STREAM, Some(&old), NODE_WITHIN)
            .await
            .expect("another leader elected");
        println!(
            "TGB_EVENTS leader {old} → {new} in {:.1} s (step-down answered in {:.1} s) at {} incidents",
            asked.elapsed().as_secs_f64(),
            answered.as_secs_f64(),
            value(&run.sys, Progress::Incidents).await
        );
        leaders.push((old, new));
    }
    assert!(leaders.iter().all(|(old, new)| old != new), "{leaders:?}");
    run.finish().await;
}
