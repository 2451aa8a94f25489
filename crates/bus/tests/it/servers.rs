//! A comma-separated list of servers (the client URLs of a cluster's nodes): the bus connects to
//! one that answers and moves to another when its server goes away.

use tgb_bus::{Bus, BusConfig, BusError};
use tgb_testkit::NatsServer;

use crate::support::WAIT;

/// A loopback port nothing listens on (bound, read, released).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_list_of_servers_connects_while_one_of_them_is_down() {
    tgb_testkit::init_test_tracing();
    let server = NatsServer::start().await.expect("nats-server");
    // Whatever order the client tries them in, the dead server is skipped.
    for urls in [
        format!("{},{}", dead_url(), server.url()),
        format!("{}, {}", server.url(), dead_url()),
    ] {
        let bus = Bus::connect(&urls, None, BusConfig::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {urls}: {e}"));
        bus.ready().await.expect("provisioned on the live server");
        assert_eq!(bus.client().server_info().port, server.port());
    }
}

#[tokio::test]
async fn the_bus_moves_to_another_server_of_the_list_when_its_server_dies() {
    tgb_testkit::init_test_tracing();
    let mut a = NatsServer::start().await.expect("nats-server a");
    let mut b = NatsServer::start().await.expect("nats-server b");
    let urls = format!("{},{}", a.url(), b.url());
    let bus = Bus::connect(&urls, None, BusConfig::default())
        .await
        .expect("connect to the list");
    let first = bus.client().server_info().port;
    let (dead, other) = if first == a.port() {
        a.stop().await;
        (a.port(), b.port())
    } else {
        b.stop().await;
        (b.port(), a.port())
    };
    // The client reconnects by itself to the other server of the list.
    let port = tgb_testkit::eventually("the bus reconnected to the other server", WAIT, || {
        let client = bus.client().clone();
        async move {
            (client.connection_state() == async_nats::connection::State::Connected
                && client.server_info().port != dead)
                .then(|| client.server_info().port)
        }
    })
    .await
    .expect("a reconnect");
    assert_eq!(port, other);
    // And carries traffic there: a request answered through the other server.
    let client = bus.client().clone();
    let mut sub = client.subscribe("tgb.test.echo").await.expect("subscribe");
    let responder = tokio::spawn(async move {
        use futures::StreamExt as _;
        let msg = sub.next().await.expect("a request");
        client
            .publish(msg.reply.expect("reply subject"), "pong".into())
            .await
            .expect("reply");
    });
    let answer = tokio::time::timeout(WAIT, bus.client().request("tgb.test.echo", "ping".into()))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(&answer.payload[..], b"pong");
    responder.await.expect("responder");
}

#[tokio::test]
async fn a_malformed_entry_in_the_list_is_refused_by_position_without_its_credentials() {
    let err = Bus::connect(
        "nats://svc:s3cret@127.0.0.1:4222,nats://svc:s3cret@127.0.0.1:notaport",
        None,
        BusConfig::default(),
    )
    .await
    .expect_err("a malformed server");
    let text = err.to_string();
    assert!(matches!(err, BusError::Connect { .. }), "{text}");
    assert!(
        text.contains("server 2 of 2 is not a NATS address"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}
