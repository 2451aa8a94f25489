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

mod update_json {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tgb_bus::kv::{
        Change, KvError, UPDATE_ATTEMPTS, read_json, update_json, update_json_hinted,
    };
    use tgb_bus::names;

    use crate::support::server_and_bus;

    #[tokio::test]
    async fn concurrent_updaters_are_all_applied() {
        let (_server, bus) = server_and_bus().await;
        let kv = bus.kv(names::KV_SYNC).await.unwrap();
        // Each adds its own number to one list: a lost update would lose a number.
        let writers = 24;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..writers {
            let kv = kv.clone();
            tasks.spawn(async move {
                update_json(&kv, "counter.shared", |current: Option<Vec<u32>>| {
                    let mut seen = current.unwrap_or_default();
                    seen.push(n);
                    Change::Put(seen, ())
                })
                .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let (list, _) = read_json::<Vec<u32>>(&kv, "counter.shared").await.unwrap();
        let mut list = list.unwrap();
        list.sort();
        assert_eq!(list, (0..writers).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_right_hint_writes_without_a_read_and_a_stale_one_falls_back_to_reading() {
        let (_server, bus) = server_and_bus().await;
        let kv = bus.kv(names::KV_SYNC).await.unwrap();
        let key = "hinted.k";
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let add = |seen: Arc<std::sync::Mutex<Vec<Option<u32>>>>| {
            move |current: Option<u32>| {
                seen.lock().unwrap().push(current);
                Change::Put(current.unwrap_or(0) + 1, ())
            }
        };
        // Absent, hinted absent: created at once, `change` asked once.
        let (_, rev) = update_json_hinted(&kv, key, (None, 0), add(seen.clone()))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![None]);
        // A right hint (the value and revision just written): one ask, written over it.
        seen.lock().unwrap().clear();
        let (_, rev2) = update_json_hinted(&kv, key, (Some(1), rev), add(seen.clone()))
            .await
            .unwrap();
        assert!(rev2 > rev);
        assert_eq!(*seen.lock().unwrap(), vec![Some(1)]);
        // A stale hint (absent, but the key holds 2): the create loses, the entry is read and
        // the change applied to what it really holds. Nothing is overwritten.
        seen.lock().unwrap().clear();
        update_json_hinted(&kv, key, (None, 0), add(seen.clone()))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![None, Some(2)]);
        assert_eq!(read_json::<u32>(&kv, key).await.unwrap().0, Some(3));
    }

    #[tokio::test]
    async fn a_deleted_or_purged_key_reads_as_absent_and_is_written_again() {
        let (_server, bus) = server_and_bus().await;
        let kv = bus.kv(names::KV_SYNC).await.unwrap();
        let key = "clock.c1";
        let add = |current: Option<u32>| Change::Put(current.unwrap_or(0) + 1, current);
        assert_eq!(update_json(&kv, key, add).await.unwrap(), None);
        assert_eq!(update_json(&kv, key, add).await.unwrap(), Some(1));
        kv.delete(key).await.unwrap();
        assert_eq!(update_json(&kv, key, add).await.unwrap(), None, "deleted");
        kv.purge(key).await.unwrap();
        assert_eq!(update_json(&kv, key, add).await.unwrap(), None, "purged");
        assert_eq!(read_json::<u32>(&kv, key).await.unwrap().0, Some(1));
        // Keep leaves the entry as it is.
        let kept = update_json(&kv, key, |c: Option<u32>| Change::<u32, _>::Keep(c))
            .await
            .unwrap();
        assert_eq!(kept, Some(1));
    }

    #[tokio::test]
    async fn an_updater_that_always_loses_the_race_gives_up_with_a_clear_error() {
        let (server, bus) = server_and_bus().await;
        let kv = bus.kv(names::KV_SYNC).await.unwrap();
        let key = "contended.k";
        kv.put(key, b"0".as_slice().into()).await.unwrap();

        // A rival writer on its own connection and thread: asked, it writes the key and says so.
        let (ask, asked) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
        let url = server.url();
        let rival = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = async_nats::connect(&url).await.unwrap();
                let kv = async_nats::jetstream::new(client)
                    .get_key_value(names::KV_SYNC)
                    .await
                    .unwrap();
                while let Ok(done) = asked.recv() {
                    kv.put(key, b"99".as_slice().into()).await.unwrap();
                    done.send(()).unwrap();
                }
            });
        });

        // `change` runs between the read and the compare-and-set: each time, the rival writes
        // first, so every attempt loses.
        let attempts = Arc::new(AtomicUsize::new(0));
        let counted = attempts.clone();
        let err = update_json(&kv, key, move |current: Option<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let (done, written) = std::sync::mpsc::channel();
            ask.send(done).unwrap();
            written.recv().unwrap();
            Change::Put(current.unwrap_or(0) + 1, ())
        })
        .await
        .unwrap_err();
        rival.join().unwrap();

        assert_eq!(attempts.load(Ordering::SeqCst), UPDATE_ATTEMPTS);
        assert!(matches!(err, KvError::Contended { attempts, .. } if attempts == UPDATE_ATTEMPTS));
        assert_eq!(
            err.to_string(),
            format!(
                "KV tgb_sync contended.k: changed by others {UPDATE_ATTEMPTS} times in a row while updating it"
            )
        );
        let (value, _) = read_json::<u32>(&kv, key).await.unwrap();
        assert_eq!(value, Some(99), "only the rival's writes landed");
    }
}
