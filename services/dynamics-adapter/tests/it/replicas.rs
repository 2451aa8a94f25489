//! Two dynamics-adapter replicas against one Dataverse: one polls change tracking at a time
//! (the poller lease), every change is published once, the other replica takes over when the
//! leader stops, and a delta-link write at a stale revision is refused.

use std::collections::BTreeMap;

use serde_json::json;
use tgb_bus::cursor::{Cursor, CursorError};
use tgb_proto as pb;
use tgb_sandbox::SandboxConfig;
use tgb_sandbox::config::EntraClient;
use tgb_testkit::eventually;
use uuid::Uuid;

use crate::support::*;

/// Two app registrations, each with its own application user, so the emulator's call log
/// tells the replicas apart (one deployment shares one; the lease does not depend on it).
const REPLICAS: [(&str, u128); 2] = [
    ("tgb-dyn-a", 0x7d3c_0b1e_0000_4000_8000_0000_0000_00a1),
    ("tgb-dyn-b", 0x7d3c_0b1e_0000_4000_8000_0000_0000_00b1),
];

const PUBLISHED: &str = "tgb_dynamics_changes_published_total";

fn replica_vars(client_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TGB_AZURE_CLIENT_ID", client_id.to_owned()),
        ("TGB_AZURE_CLIENT_SECRET", format!("{client_id}-secret")),
        ("TGB_DYNAMICS__POLL_INTERVAL_MS", "20".to_owned()),
        ("TGB_DYNAMICS__POLLER_LEASE_TTL_MS", "3000".to_owned()),
        ("TGB_DYNAMICS__POLLER_LEASE_RENEW_MS", "100".to_owned()),
    ]
}

async fn replica(env: &Env, client_id: &str) -> Running {
    let vars = replica_vars(client_id);
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.adapter(&extra).await
}

/// The application user of each change-tracking request (a baseline, a delta link or a
/// next page of one of the polled tables), in order of arrival.
fn tracking_callers(env: &Env) -> Vec<String> {
    let sets: Vec<String> = dynamics_adapter::DynamicsSettings::default()
        .poll_tables
        .iter()
        .map(|t| format!("/{}", dynamics_adapter::schema::set(t)))
        .collect();
    env.sandbox
        .calls()
        .of_system("dataverse")
        .into_iter()
        .filter(|c| c.method == "GET" && sets.iter().any(|s| c.path.ends_with(s.as_str())))
        .filter(|c| {
            c.query
                .as_deref()
                .is_none_or(|q| q.contains("deltatoken") || q.contains("skiptoken"))
        })
        .filter_map(|c| c.caller.map(|c| c.id))
        .collect()
}

/// How many runs of one caller the sequence has (A A B B A = 3).
fn runs(callers: &[String]) -> usize {
    callers.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!callers.is_empty())
}

/// Status changes published per incident, in order.
async fn published_statuses(env: &Env) -> BTreeMap<String, Vec<i32>> {
    let mut by_incident: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in env.events_on("tgb.v1.dyn.case.status_changed").await {
        if let pb::Event::DynCaseStatusChanged(s) = e {
            by_incident
                .entry(s.incident_id.clone())
                .or_default()
                .push(s.statuscode);
        }
    }
    by_incident
}

async fn wait_published(env: &Env, n: usize) -> BTreeMap<String, Vec<i32>> {
    eventually(&format!("{n} status changes published"), WAIT, || async {
        let p = published_statuses(env).await;
        (p.values().map(Vec::len).sum::<usize>() >= n).then_some(p)
    })
    .await
    .unwrap()
}

fn set_status(env: &Env, incidents: &[Uuid], statuscode: i64) {
    for id in incidents {
        env.sandbox
            .dataverse()
            .set_row_as(
                env.user("agent"),
                "incident",
                *id,
                json!({"statecode": 0, "statuscode": statuscode}),
            )
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_poll_change_tracking_one_at_a_time_publish_each_change_once_and_a_stale_delta_link_write_is_refused()
 {
    let mut config = SandboxConfig::default();
    for (id, user) in REPLICAS {
        config.identity.entra_clients.push(EntraClient {
            client_id: id.into(),
            client_secret: format!("{id}-secret"),
            app_user_id: Uuid::from_u128(user),
            app_user_name: format!("# {id}"),
        });
    }
    let env = Env::start_with(config).await;
    // Cases Dana works in Dynamics, linked to TG cases; they exist before the first baseline.
    let agent = env.user("agent");
    let account = env.acme_account();
    let incidents: Vec<Uuid> = (0..20)
        .map(|i| {
            env.sandbox
                .dataverse()
                .insert_row_as(
                    agent,
                    "incident",
                    json!({
                        "title": format!("Case {i}"),
                        "tgb_tgcaseid": format!("C-L{i}"),
                        "customerid_account@odata.bind": format!("/accounts({account})"),
                    }),
                )
                .unwrap()
        })
        .collect();

    let a = replica(&env, REPLICAS[0].0).await;
    let b = replica(&env, REPLICAS[1].0).await;
    let cursor = Cursor::new(
        env.bus.kv(tgb_bus::names::KV_CURSORS).await.unwrap(),
        dynamics_adapter::cursor_key("incident"),
    );
    eventually("the first baseline of incidents", WAIT, || async {
        cursor.load().await.ok()?.map(|_| ())
    })
    .await
    .unwrap();

    // Dana sets every case to Waiting for Details: each change is published once.
    set_status(&env, &incidents, 3);
    let published = wait_published(&env, incidents.len()).await;
    assert_eq!(published.len(), incidents.len(), "{published:?}");
    assert!(published.values().all(|s| s == &[3]), "{published:?}");

    // Many more rounds (20 ms apart) of both replicas: still one poller.
    let seen = tracking_callers(&env).len();
    eventually("60 more change-tracking requests", WAIT, || async {
        (tracking_callers(&env).len() >= seen + 60).then_some(())
    })
    .await
    .unwrap();
    let callers = tracking_callers(&env);
    assert_eq!(runs(&callers), 1, "one replica polled: {callers:?}");
    let leader_user = callers[0].clone();
    let (leader, follower, follower_user) =
        if leader_user == Uuid::from_u128(REPLICAS[0].1).to_string() {
            (a, b, Uuid::from_u128(REPLICAS[1].1).to_string())
        } else {
            (b, a, Uuid::from_u128(REPLICAS[0].1).to_string())
        };
    eprintln!(
        "FIGURE {} change-tracking requests before the hand-over, all by one replica",
        callers.len()
    );

    // The leader shuts down (releasing the lease): the other replica takes over and finds
    // Dana's next changes.
    leader.stop().await;
    let before = tracking_callers(&env).len();
    set_status(&env, &incidents, 1);
    let published = wait_published(&env, 2 * incidents.len()).await;
    assert_eq!(published.len(), incidents.len());
    assert!(
        published.values().all(|s| s == &[3, 1]),
        "each change once, in order: {published:?}"
    );
    let callers = tracking_callers(&env);
    assert!(
        callers[before..].iter().all(|c| *c == follower_user),
        "only the follower polls after the leader stopped"
    );
    assert_eq!(runs(&callers), 2, "one hand-over, no overlap: {callers:?}");
    // Every publish is counted, also one JetStream would have de-duplicated: no change was
    // published by both replicas.
    let publishes = metric(&follower.base, PUBLISHED, r#"flow="D1""#).await;
    assert_eq!(publishes, (2 * incidents.len()) as f64);

    // A writer at a stale revision (a replica that lost the lease mid-round) is refused, and
    // the delta link stays where the poller put it.
    follower.stop().await;
    let (link, revision) = cursor.load().await.unwrap().unwrap();
    let refused = cursor
        .store(b"stale delta link".to_vec().into(), Some(revision - 1))
        .await
        .unwrap_err();
    assert!(matches!(refused, CursorError::Moved { .. }), "{refused}");
    let refused = cursor
        .store(b"stale delta link".to_vec().into(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CursorError::Moved { .. }),
        "creating over an existing delta link: {refused}"
    );
    let (now, _) = cursor.load().await.unwrap().unwrap();
    assert_eq!(now, link);
}
