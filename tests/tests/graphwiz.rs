//! `roomcast::graphwiz`, the GraphWiz-XR module's API, against a private redis-server: the
//! design's two tests (a published message arrives on a subscribed room within 5 s; the health
//! check passes), and what the design's draft only pretended: presence across instances,
//! unregistering, the health check failing when Redis is gone.

use std::time::{Duration, Instant};

use roomcast::graphwiz::{PubSubMessage, PubSubMessageType, RedisConfig, RedisPubSub};
use roomcast_tests::RedisServer;
use tokio::sync::mpsc;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(30);

fn config(redis: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: redis.url(),
        channel_prefix: "graphwiz".into(),
        connection_pool_size: 2,
    }
}

async fn pubsub(redis: &RedisServer) -> (RedisPubSub, mpsc::Sender<PubSubMessage>) {
    let (tx, rx) = mpsc::channel(100);
    let p = RedisPubSub::new(config(redis), rx).await.expect("connect");
    (p, tx)
}

async fn recv(rx: &mut mpsc::Receiver<PubSubMessage>) -> PubSubMessage {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a message in time")
        .expect("the room's channel is open")
}

/// Waits until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The design's first test: publish through the queue, receive on the subscribed room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_publish_subscribe() {
    let redis = RedisServer::start();
    let (pubsub, tx) = pubsub(&redis).await;
    let mut rx = pubsub
        .subscribe_room("test-room".to_string())
        .await
        .expect("subscribe");
    let msg = PubSubMessage {
        room_id: "test-room".to_string(),
        message_type: PubSubMessageType::Broadcast,
        data: b"test message".to_vec(),
        exclude_connection: None,
        timestamp: 1_700_000_000,
    };
    tx.send(msg.clone()).await.expect("queue");
    // The design allowed 5 s; this machine may be loaded, so the bound is PATIENCE.
    assert_eq!(recv(&mut rx).await, msg);
    // Every type, the exclusion and the timestamp come through unchanged, in order.
    let mut sent = Vec::new();
    for (i, t) in [
        PubSubMessageType::PresenceEvent,
        PubSubMessageType::SystemNotification,
        PubSubMessageType::Broadcast,
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = PubSubMessage::new("test-room", t, vec![i as u8, 0xff, 0]);
        m.exclude_connection = Some(format!("sender-{i}"));
        tx.send(m.clone()).await.expect("queue");
        sent.push(m);
    }
    for m in sent {
        assert_eq!(recv(&mut rx).await, m);
    }
    pubsub.shutdown(PATIENCE).await.expect("shutdown");
}

/// The design's second test: the health check passes; here it also fails once Redis is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_health_check() {
    let mut redis = RedisServer::start();
    let (pubsub, _tx) = pubsub(&redis).await;
    pubsub.health_check().await.expect("healthy");
    redis.stop();
    let err = pubsub.health_check().await.expect_err("Redis is gone");
    assert!(format!("{err:#}").contains("unhealthy"), "{err:#}");
    let _ = pubsub.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_rooms_are_shared_across_instances() {
    let redis = RedisServer::start();
    let (a, tx_a) = pubsub(&redis).await;
    let (b, _tx_b) = pubsub(&redis).await;
    assert!(b.get_room_connections("hub/abc").await.is_empty());
    assert!(!b.connection_exists("ws-a1").await);
    assert_eq!(a.get_connection_count().await, 0);

    a.register_connection("hub/abc".into(), "ws-a1".into())
        .await
        .expect("register");
    a.register_connection("hub/abc".into(), "ws-a2".into())
        .await
        .expect("register");
    b.register_connection("hub/abc".into(), "ws-b1".into())
        .await
        .expect("register");
    let mut all = vec!["ws-a1", "ws-a2", "ws-b1"];
    all.sort_unstable();
    for p in [&a, &b] {
        // A registration reaches Redis right after the call returns (written, not awaited).
        eventually("both instances see every connection", || async {
            let mut seen = p.get_room_connections("hub/abc").await;
            seen.sort_unstable();
            seen == all
        })
        .await;
        assert!(p.connection_exists("ws-a1").await);
        assert!(p.connection_exists("ws-b1").await);
        assert!(!p.connection_exists("ws-nobody").await);
    }
    assert_eq!(a.get_connection_count().await, 1, "one room subscribed");

    // A message published on A reaches B's subscription of the room.
    let mut on_b = b.subscribe_room("hub/abc".into()).await.expect("subscribe");
    let m = PubSubMessage::new("hub/abc", PubSubMessageType::Broadcast, b"across".to_vec());
    tx_a.send(m.clone()).await.expect("queue");
    assert_eq!(recv(&mut on_b).await, m);

    // Unregistering removes the connection everywhere; the room stays while others are in it.
    a.unregister_connection("hub/abc".into(), "ws-a1".into())
        .await
        .expect("unregister");
    eventually("B no longer sees ws-a1", || async {
        !b.connection_exists("ws-a1").await
    })
    .await;
    assert!(a.connection_exists("ws-a2").await);
    a.unregister_connection("hub/abc".into(), "ws-a2".into())
        .await
        .expect("unregister");
    eventually(
        "A unsubscribed the room with no local member left",
        || async { a.get_connection_count().await == 0 },
    )
    .await;
    assert_eq!(b.get_room_connections("hub/abc").await, vec!["ws-b1"]);
    // Not registered (any more): not an error.
    a.unregister_connection("hub/abc".into(), "ws-a1".into())
        .await
        .expect("idempotent");
    a.shutdown(PATIENCE).await.expect("shutdown");
    b.shutdown(PATIENCE).await.expect("shutdown");
}
