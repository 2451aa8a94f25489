//! The per-task locks do not accumulate: one entry per task ever seen used to stay in the map
//! for the life of the process.

use tgb_bus::{Bus, BusConfig};
use tgb_runtime::locks::KeyedLocks;
use tgb_testkit::NatsServer;

#[tokio::test]
async fn locking_a_hundred_thousand_distinct_tasks_leaves_a_bounded_lock_map() {
    let nats = NatsServer::start().await.unwrap();
    let bus = Bus::connect(&nats.url(), None, BusConfig::default())
        .await
        .unwrap();
    let store = planner_adapter::store::Store::new(bus.kv(tgb_bus::names::KV_SYNC).await.unwrap());
    let held = store.lock("task-in-use").await;
    for i in 0..100_000 {
        drop(store.lock(&format!("task-{i:06}")).await);
    }
    println!(
        "100000 distinct tasks locked once each: {} lock entries left",
        store.lock_entries()
    );
    assert!(
        store.lock_entries() <= KeyedLocks::MIN_PRUNE_AT,
        "{} lock entries",
        store.lock_entries()
    );
    drop(held);
}
