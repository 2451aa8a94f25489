use tgb_bus::links::{Links, Record};
use tgb_bus::names;
use tgb_bus::sync::{Sync, SyncState};

use crate::support::server_and_bus;

#[tokio::test]
async fn a_link_is_found_from_both_ends() {
    let (_server, bus) = server_and_bus().await;
    let links = Links::new(bus.kv(names::KV_LINKS).await.unwrap());
    let case = Record::new("tg", "case", "C-10492");
    let incident = Record::new(
        "dataverse",
        "incident",
        "6f1c0a4e-0000-0000-0000-000000000001",
    );
    let task = Record::new("planner", "task", "pbT.x/1");
    links.link(&case, &incident).await.unwrap();
    links.link(&case, &task).await.unwrap();
    assert_eq!(
        links
            .find(&incident, "tg", "case")
            .await
            .unwrap()
            .as_deref(),
        Some("C-10492")
    );
    assert_eq!(
        links.find(&task, "tg", "case").await.unwrap().as_deref(),
        Some("C-10492")
    );
    assert_eq!(links.find(&case, "planner", "bucket").await.unwrap(), None);
    let mut all = links.all_of(&case).await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("dataverse.incident".to_owned(), incident.id.to_owned()),
            ("planner.task".to_owned(), task.id.to_owned())
        ]
    );
}

#[tokio::test]
async fn sync_state_is_written_with_compare_and_set() {
    let (_server, bus) = server_and_bus().await;
    let sync = Sync::new(bus.kv(names::KV_SYNC).await.unwrap());
    let (state, rev) = sync.get("dataverse", "tg:case:C-1").await.unwrap();
    assert_eq!((state, rev), (SyncState::default(), 0));
    let s1 = SyncState {
        version: "3".into(),
        fingerprint: "f".into(),
    };
    assert!(sync.put("dataverse", "tg:case:C-1", &s1, 0).await.unwrap());
    // A second writer that read the absent entry loses.
    assert!(!sync.put("dataverse", "tg:case:C-1", &s1, 0).await.unwrap());
    let (read, rev) = sync.get("dataverse", "tg:case:C-1").await.unwrap();
    assert_eq!(read, s1);
    let s2 = SyncState {
        version: "4".into(),
        fingerprint: "g".into(),
    };
    assert!(
        sync.put("dataverse", "tg:case:C-1", &s2, rev)
            .await
            .unwrap()
    );
    assert!(
        !sync
            .put("dataverse", "tg:case:C-1", &s1, rev)
            .await
            .unwrap(),
        "stale revision"
    );
}
