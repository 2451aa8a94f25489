//! `States::update_from`: a write at the revision the handler read, re-read only on a lost race.

use dynamics_adapter::state::{EntityState, States, TO_DATAVERSE};

use crate::support::Env;

#[tokio::test]
async fn a_write_from_a_state_already_read_lands_at_its_revision() {
    let env = Env::start().await;
    let states = States::new(env.bus.kv(tgb_bus::names::KV_SYNC).await.unwrap());
    let known = states.get(TO_DATAVERSE, "tg:case:A").await.unwrap();
    assert_eq!(known.1, 0, "nothing stored yet");

    let wrote = states
        .update_from(TO_DATAVERSE, "tg:case:A", known, |st| {
            st.version = "1".into();
            true
        })
        .await
        .unwrap();

    assert!(wrote);
    let (st, rev) = states.get(TO_DATAVERSE, "tg:case:A").await.unwrap();
    assert_eq!(st.version, "1");
    assert!(rev > 0);
}

#[tokio::test]
async fn a_state_another_writer_moved_is_read_again_and_decided_on_afresh() {
    let env = Env::start().await;
    let states = States::new(env.bus.kv(tgb_bus::names::KV_SYNC).await.unwrap());
    let known = states.get(TO_DATAVERSE, "tg:case:B").await.unwrap();
    // Another replica applies revision 3 after this handler read the entry.
    let mut newer = EntityState {
        version: "3".into(),
        ..EntityState::default()
    };
    newer.seal();
    assert!(
        states
            .put(TO_DATAVERSE, "tg:case:B", &newer, known.1)
            .await
            .unwrap()
    );

    let mut seen = Vec::new();
    let wrote = states
        .update_from(TO_DATAVERSE, "tg:case:B", known, |st| {
            seen.push(st.version.clone());
            if st.is_stale("2") {
                return false;
            }
            st.version = "2".into();
            true
        })
        .await
        .unwrap();

    // The first decision, on the state read before, lost the race; the second saw revision 3
    // and left it.
    assert_eq!(seen, ["", "3"]);
    assert!(!wrote);
    let (st, _) = states.get(TO_DATAVERSE, "tg:case:B").await.unwrap();
    assert_eq!(st.version, "3");
}
