//! Two tg-ingress replicas against one feed: one polls at a time (the poller lease), every
//! event is published once, and a cursor write at a stale revision is refused.

use std::collections::BTreeSet;

use tg_ingress::poller::{CURSOR_KEY, FeedCursor, LEASE_KEY};
use tgb_bus::async_nats::jetstream;
use tgb_bus::cursor::{Cursor, CursorError};
use tgb_runtime::Config;
use tgb_sandbox::config::TgClient;
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};
use tgb_sandbox::{Sandbox, SandboxConfig};
use tgb_testkit::{HANG_GUARD, NatsServer, eventually};
use tokio_util::sync::CancellationToken;

struct Replica {
    client_id: &'static str,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn replica(nats: &NatsServer, sandbox: &Sandbox, client_id: &'static str) -> Replica {
    let vars: Vec<(String, String)> = vec![
        ("TGB_NATS_URL".into(), nats.url()),
        ("TGB_TG_API_URL".into(), sandbox.tg_api_url()),
        ("TGB_TG_TOKEN_URL".into(), sandbox.tg_token_url()),
        ("TGB_TG_CLIENT_ID".into(), client_id.into()),
        ("TGB_TG_CLIENT_SECRET".into(), format!("{client_id}-secret")),
        ("TGB_TG_INGRESS__POLL_INTERVAL_MS".into(), "20".into()),
        ("TGB_TG_INGRESS__POLL_PAGE_SIZE".into(), "7".into()),
        ("TGB_TG_INGRESS__START_FROM".into(), "beginning".into()),
        ("TGB_TG_INGRESS__POLLER_LEASE_TTL_MS".into(), "3000".into()),
        ("TGB_TG_INGRESS__POLLER_LEASE_RENEW_MS".into(), "100".into()),
    ];
    let config = Config::load_from(None, vars).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(tg_ingress::serve(config, listener, shutdown.clone()));
    Replica {
        client_id,
        shutdown,
        task,
    }
}

impl Replica {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// The callers of the feed requests, in order of arrival.
fn feed_callers(sandbox: &Sandbox) -> Vec<String> {
    sandbox
        .calls()
        .of_system("tg")
        .into_iter()
        .filter(|c| c.route == "/v1/events")
        .filter_map(|c| c.caller.map(|c| c.id))
        .collect()
}

/// How many runs of one caller the sequence has (A A B B A = 3).
fn runs(callers: &[String]) -> usize {
    callers.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(!callers.is_empty())
}

/// The ids stored in the events stream, none while the replicas have not yet created it.
async fn stored(js: &jetstream::Context) -> Vec<String> {
    let Ok(stream) = js.get_stream("TGB_EVENTS").await else {
        return Vec::new();
    };
    let n = stream.get_info().await.unwrap().state.messages;
    let mut ids = Vec::new();
    for seq in 1..=n {
        let m = stream.get_raw_message(seq).await.unwrap();
        ids.push(m.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned());
    }
    ids
}

fn expected_ids(sandbox: &Sandbox) -> BTreeSet<String> {
    sandbox
        .tg()
        .events()
        .iter()
        .map(|e| {
            let t = time::OffsetDateTime::parse(
                &e.occurred_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            tg_ingress::mapping::event_id(&e.id, t).to_string()
        })
        .collect()
}

async fn all_published_once(js: &jetstream::Context, sandbox: &Sandbox, n: usize) {
    eventually("every event stored", HANG_GUARD, || async {
        (stored(js).await.len() >= n).then_some(())
    })
    .await
    .unwrap();
    let ids = stored(js).await;
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), n, "each event stored once");
    assert_eq!(unique, expected_ids(sandbox));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_poll_one_at_a_time_publish_each_event_once_and_a_stale_cursor_write_is_refused()
 {
    tgb_testkit::init_test_tracing();
    let mut config = SandboxConfig::default();
    for id in ["tgb-ingress-a", "tgb-ingress-b"] {
        config.identity.tg_clients.push(TgClient {
            client_id: id.into(),
            client_secret: format!("{id}-secret"),
        });
    }
    let nats = NatsServer::start().await.unwrap();
    let sandbox = Sandbox::start(config).await.unwrap();
    let partner = PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    };
    let tg = sandbox.tg();
    for i in 0..100 {
        tg.raise_case(RaiseCase::new(partner.clone(), format!("case {i}")))
            .unwrap();
    }
    let a = replica(&nats, &sandbox, "tgb-ingress-a").await;
    let b = replica(&nats, &sandbox, "tgb-ingress-b").await;
    let js = jetstream::new(tgb_bus::async_nats::connect(nats.url()).await.unwrap());

    // Events keep arriving while both replicas run.
    for i in 100..150 {
        tg.raise_case(RaiseCase::new(partner.clone(), format!("case {i}")))
            .unwrap();
    }
    all_published_once(&js, &sandbox, 150).await;
    // Many more rounds (20 ms apart) of both replicas: still one poller.
    let seen = feed_callers(&sandbox).len();
    eventually("60 more feed polls", HANG_GUARD, || async {
        (feed_callers(&sandbox).len() >= seen + 60).then_some(())
    })
    .await
    .unwrap();
    let callers = feed_callers(&sandbox);
    assert_eq!(runs(&callers), 1, "one replica polled: {callers:?}");
    let (leader, follower) = if callers[0] == a.client_id {
        (a, b)
    } else {
        (b, a)
    };
    eprintln!(
        "FIGURE {} feed polls, all by {}",
        callers.len(),
        leader.client_id
    );

    // The leader shuts down (releasing the lease): the other replica takes over.
    let follower_id = follower.client_id;
    leader.stop().await;
    // Counted once the leader has stopped: it polls until then.
    let before = feed_callers(&sandbox).len();
    for i in 150..180 {
        tg.raise_case(RaiseCase::new(partner.clone(), format!("case {i}")))
            .unwrap();
    }
    all_published_once(&js, &sandbox, 180).await;
    let callers = feed_callers(&sandbox);
    assert!(
        callers[before..].iter().all(|c| c == follower_id),
        "only the follower polls after the leader stopped"
    );
    assert_eq!(runs(&callers), 2, "one hand-over, no overlap");

    // The lease names the follower now.
    let sync = js.get_key_value("tgb_sync").await.unwrap();
    let lease: tgb_bus::lease::LeaseValue =
        serde_json::from_slice(&sync.get(LEASE_KEY).await.unwrap().unwrap()).unwrap();
    assert!(lease.holder.contains('/'), "{lease:?}");

    // A writer at a stale revision (a replica that lost the lease mid-round) is refused, and
    // the cursor stays where the poller put it.
    let kv = js.get_key_value("tgb_cursors").await.unwrap();
    let cursor = Cursor::new(kv.clone(), CURSOR_KEY);
    let (value, revision) = eventually("the cursor at the end", HANG_GUARD, || async {
        let (v, rev) = cursor.load().await.ok()??;
        (FeedCursor::parse(&v).after == "180").then_some((v, rev))
    })
    .await
    .unwrap();
    let stale = FeedCursor {
        after: "3".into(),
        ..FeedCursor::parse(&value)
    };
    let refused = cursor
        .store(
            serde_json::to_vec(&stale).unwrap().into(),
            Some(revision - 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, CursorError::Moved { .. }), "{refused}");
    let refused = cursor
        .store(serde_json::to_vec(&stale).unwrap().into(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, CursorError::Moved { .. }),
        "creating over an existing cursor: {refused}"
    );
    let (now, _) = cursor.load().await.unwrap().unwrap();
    assert_eq!(FeedCursor::parse(&now).after, "180");

    follower.stop().await;
}
