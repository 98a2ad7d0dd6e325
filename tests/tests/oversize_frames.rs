//! End to end against a real redis-server: any client can PUBLISH a body over
//! `max_frame_bytes` to a room's channel. The subscriber skips it, reports the drop for the
//! room, keeps its link, and delivers the next message.

use std::time::Duration;

use futures_util::StreamExt;
use roomcast::core::DropCause;
use roomcast::{Builder, Config, Event, PubSubMessage, RoomState};
use roomcast_tests::RedisServer;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn oversize_publish_between_two_normal_ones(query: &str) {
    let server = RedisServer::start();
    let config = Config {
        pool_size: 1,
        ..Config::from_url(&format!("{}{query}", server.url())).unwrap()
    };
    let max = config.max_frame_bytes;
    let a = Builder::new(config).connect_tokio().await.unwrap();
    let mut events = a.events().await.unwrap();
    let mut m = a.join("r", "m").await.unwrap();
    within("the room live", m.wait_live()).await;

    // Each publish is confirmed by Redis before the next is sent, so the subscriber's
    // stream holds them in this order: before, the oversize body, after.
    assert_eq!(
        a.publish(PubSubMessage::broadcast("r", "before"))
            .await
            .unwrap(),
        1
    );
    let big = vec![0x5a; max + (max / 2)];
    let mut plain = server.client();
    plain
        .send_raw(&[b"PUBLISH", b"graphwiz:room:r", &big])
        .unwrap();
    assert_eq!(plain.read_reply().as_int(), Some(1));
    assert_eq!(
        a.publish(PubSubMessage::broadcast("r", "after"))
            .await
            .unwrap(),
        1
    );

    let first = within("before", m.next()).await.expect("membership open");
    assert_eq!(first.data, &b"before"[..]);
    let second = within("after", m.next()).await.expect("membership open");
    assert_eq!(second.data, &b"after"[..]);

    // "after" was delivered, so every event before it is in the stream already.
    let mut dropped = Vec::new();
    while let Some(Some(e)) = futures_util::FutureExt::now_or_never(events.next()) {
        match e {
            Event::Dropped { cause, room } => dropped.push((cause, room)),
            Event::LinkDown { .. } | Event::LinkUp { .. } => panic!("the link was reset: {e:?}"),
            _ => {}
        }
    }
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let (cause, room) = &dropped[0];
    assert_eq!(room.as_ref().map(|r| r.as_str()), Some("r"));
    assert!(
        matches!(cause, DropCause::TooLarge { len, max: m } if *m == max && *len > big.len() as u64),
        "{cause:?}"
    );
    let metrics = a.metrics().await.unwrap();
    assert_eq!(metrics.dropped_too_large, 1, "{metrics:?}");
    assert_eq!(metrics.link_failures, 0, "{metrics:?}");
    assert_eq!(metrics.reconnects, 0, "{metrics:?}");
    assert_eq!(metrics.delivered, 2, "{metrics:?}");
    assert_eq!(a.room_state("r").await.unwrap(), Some(RoomState::Live));
    a.shutdown(PATIENCE).await.unwrap();
}

fn on_tokio(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

#[test]
fn c9_an_oversize_publish_is_dropped_and_the_link_stays_up_resp2() {
    on_tokio(oversize_publish_between_two_normal_ones(""));
}

#[test]
fn c9_an_oversize_publish_is_dropped_and_the_link_stays_up_resp3() {
    on_tokio(oversize_publish_between_two_normal_ones("?protocol=resp3"));
}
