//! End to end against a real redis-server, every scenario on tokio and on async-std.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use roomcast::runtime::Runtime;
use roomcast::{
    Builder, Config, DeliveryMode, Event, Membership, MessageType, Options, Overflow,
    PubSubMessage, RoomState, Roomcast,
};
use roomcast_tests::RedisServer;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Rt {
    Tokio,
    AsyncStd,
    Smol,
}

impl Rt {
    fn runtime(self) -> Arc<dyn Runtime> {
        match self {
            Rt::Tokio => Arc::new(roomcast::runtime::tokio::TokioRuntime),
            Rt::AsyncStd | Rt::Smol => Arc::new(roomcast::runtime::async_io::AsyncIoRuntime),
        }
    }

    async fn connect(self, builder: Builder) -> Result<Roomcast, roomcast::Error> {
        match self {
            Rt::Tokio => builder.connect_tokio().await,
            Rt::AsyncStd => builder.connect_async_std().await,
            Rt::Smol => {
                // The same async-io runtime, with the driver spawned on smol's executor.
                let (handle, driver) = builder.build(self.runtime())?;
                smol::spawn(driver).detach();
                handle.wait_ready().await?;
                Ok(handle)
            }
        }
    }

    async fn sleep(self, d: Duration) {
        self.runtime().sleep_until(Instant::now() + d).await
    }

    /// `f`'s output, or `None` after `d`.
    async fn timeout<F: Future + Unpin>(self, d: Duration, f: F) -> Option<F::Output> {
        match select(f, self.runtime().sleep_until(Instant::now() + d)).await {
            Either::Left((v, _)) => Some(v),
            Either::Right(_) => None,
        }
    }

    /// Spawns a driver; dropping the returned handle's abort kills it like a crash would
    /// (sockets closed, no shutdown).
    fn spawn_killable(self, driver: roomcast::Driver) -> futures_util::future::AbortHandle {
        let (task, abort) = futures_util::future::abortable(driver);
        let task = async move {
            let _ = task.await;
        };
        match self {
            Rt::Tokio => drop(tokio::spawn(task)),
            Rt::AsyncStd => drop(async_std::task::spawn(task)),
            Rt::Smol => smol::spawn(task).detach(),
        }
        abort
    }

    /// Polls `cond` until it holds, failing after PATIENCE.
    async fn until<F, Fut>(self, what: &str, cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.until_within(PATIENCE, what, cond).await
    }

    /// Polls `cond` until it holds, failing after `patience`.
    async fn until_within<F, Fut>(self, patience: Duration, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let end = Instant::now() + patience;
        while !cond().await {
            assert!(Instant::now() < end, "timed out waiting for: {what}");
            self.sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every scenario on tokio, on async-std, and on smol (the async-io runtime under smol's
/// executor).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn tokio() {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(super::$name(super::Rt::Tokio));
            }
            #[test]
            fn async_std() {
                async_std::task::block_on(super::$name(super::Rt::AsyncStd));
            }
            #[test]
            fn smol() {
                smol::block_on(super::$name(super::Rt::Smol));
            }
        }
    )*};
}

on_both!(
    three_instances_every_member_once_in_order,
    local_first_mode_end_to_end,
    ten_thousand_rooms_on_one_subscriber,
    client_kill_while_traffic_flows,
    server_restart_recovers,
    debug_sleep_is_detected_and_recovered,
    acl_user_right_and_wrong_password,
    interop_with_bincode_1,
    slow_member_is_bounded_and_alone,
    overflow_close_ends_only_the_slow_membership,
    one_id_in_two_rooms_and_a_reused_slot,
    gaps_are_reported_end_to_end_and_shutdown_flushes,
    presence_every_instance_same_answer,
    presence_crash_vanishes_within_a_lease_and_shutdown_at_once,
    presence_whole_again_after_client_kill,
    health_fails_when_the_subscriber_hears_nothing,
    health_and_standalone,
);

fn config(server: &RedisServer) -> Config {
    Config {
        pool_size: 2,
        ..Config::from_url(&server.url()).unwrap()
    }
}

async fn instance(rt: Rt, server: &RedisServer) -> Roomcast {
    rt.connect(Builder::new(config(server))).await.unwrap()
}

/// An instance whose member queues hold `queue` messages, with `overflow` when full.
async fn bounded(rt: Rt, server: &RedisServer, queue: usize, overflow: Overflow) -> Roomcast {
    let options = Options {
        member_queue: queue,
        overflow,
        ..Options::default()
    };
    rt.connect(Builder::new(config(server)).options(options))
        .await
        .unwrap()
}

async fn next(rt: Rt, m: &mut Membership) -> Option<Arc<roomcast::Message>> {
    rt.timeout(PATIENCE, m.next()).await.flatten()
}

/// Reads `m` until `marker` arrives (what came before it, around an outage, is not checked
/// here): everything published after the outage reaches the member.
async fn until_marker(rt: Rt, m: &mut Membership, marker: &[u8]) {
    for _ in 0..10_000 {
        let msg = next(rt, m).await.expect("the marker arrives");
        if &msg.data[..] == marker {
            return;
        }
    }
    panic!("no marker in 10,000 messages");
}

async fn three_instances_every_member_once_in_order(rt: Rt) {
    let server = RedisServer::start();
    let nodes = [
        instance(rt, &server).await,
        instance(rt, &server).await,
        instance(rt, &server).await,
    ];
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for room in ["lobby", "hub/abc"] {
            let m = node.join(room, &format!("c{i}")).await.unwrap();
            members.push(m);
        }
    }
    for m in &members {
        rt.timeout(PATIENCE, Box::pin(m.wait_live()))
            .await
            .expect("live");
    }
    // Node 0's c0 sends to the lobby, excluding itself; everyone publishes to hub/abc.
    let n = 30;
    for k in 0..n {
        let from = k % 3;
        let r = nodes[from]
            .publish(PubSubMessage::broadcast("hub/abc", format!("{k}")))
            .await
            .unwrap();
        assert_eq!(r, 3, "three subscribed instances");
        nodes[0]
            .publish(PubSubMessage::broadcast("lobby", format!("{k}")).excluding("c0"))
            .await
            .unwrap();
    }
    let mut orders = Vec::new();
    for m in &mut members {
        let room = m.room().as_str().to_string();
        let conn = m.connection().as_str().to_string();
        if room == "lobby" && conn == "c0" {
            continue;
        }
        let mut got = Vec::new();
        for _ in 0..n {
            let msg = next(rt, m).await.expect("message");
            got.push(String::from_utf8(msg.data.to_vec()).unwrap());
        }
        if room == "lobby" {
            let want: Vec<String> = (0..n).map(|k| k.to_string()).collect();
            assert_eq!(got, want, "{conn} lobby in publish order");
        } else {
            orders.push(got);
        }
    }
    // One order per room on every instance.
    assert!(orders.windows(2).all(|w| w[0] == w[1]));
    // Nobody got anything twice, and the excluded connection got nothing: a marker sent to
    // both rooms after everything else is the next message of every member.
    for room in ["lobby", "hub/abc"] {
        nodes[0]
            .publish(PubSubMessage::broadcast(room, "end"))
            .await
            .unwrap();
    }
    for m in &mut members {
        let (room, conn) = (m.room().to_string(), m.connection().to_string());
        let msg = next(rt, m).await.expect("the marker");
        assert_eq!(
            &msg.data[..],
            b"end",
            "{room} {conn}: nothing before the marker"
        );
    }
    for node in &nodes {
        node.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

async fn local_first_mode_end_to_end(rt: Rt) {
    let server = RedisServer::start();
    let b = |s: &RedisServer| {
        Builder::new(Config {
            delivery: DeliveryMode::LocalFirst,
            ..config(s)
        })
    };
    let a_node = rt.connect(b(&server)).await.unwrap();
    let b_node = rt.connect(b(&server)).await.unwrap();
    let mut a = a_node.join("r", "a").await.unwrap();
    let mut b = b_node.join("r", "b").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(a.wait_live())).await.unwrap();
    rt.timeout(PATIENCE, Box::pin(b.wait_live())).await.unwrap();
    for k in 0..10 {
        a_node
            .publish(PubSubMessage::broadcast("r", format!("{k}")))
            .await
            .unwrap();
    }
    for k in 0..10 {
        assert_eq!(
            next(rt, &mut a).await.unwrap().data,
            format!("{k}").as_bytes()
        );
        assert_eq!(
            next(rt, &mut b).await.unwrap().data,
            format!("{k}").as_bytes()
        );
    }
    // The echoes of A's own messages would come back through Redis before B's marker.
    b_node
        .publish(PubSubMessage::broadcast("r", "end"))
        .await
        .unwrap();
    assert_eq!(
        &next(rt, &mut a).await.unwrap().data[..],
        b"end",
        "the echo was dropped"
    );
    assert_eq!(&next(rt, &mut b).await.unwrap().data[..], b"end");
    let m = a_node.metrics().await.unwrap();
    assert_eq!(m.dropped_echo, 10);
}

async fn ten_thousand_rooms_on_one_subscriber(rt: Rt) {
    let server = RedisServer::start();
    let node = instance(rt, &server).await;
    let mut members = Vec::new();
    for i in 0..10_000 {
        members.push(node.join(&format!("room-{i}"), "c").await.unwrap());
    }
    // 10,000 joins and leaves, one command each: about 1 ms each on async-io with the
    // machine loaded (10 s and more), so these waits are longer than PATIENCE.
    let patience = PATIENCE * 6;
    rt.until_within(patience, "10,000 rooms live", || async {
        node.metrics().await.unwrap().rooms_live == 10_000
    })
    .await;
    let subscribers: Vec<_> = server
        .client_list()
        .into_iter()
        .filter(|c| c.get("name").map(String::as_str) == Some("roomcast-0"))
        .collect();
    assert_eq!(
        subscribers.len(),
        1,
        "one subscriber connection for all rooms"
    );
    // 10,000 rooms and the instance's control channel.
    assert_eq!(subscribers[0].get("sub").map(String::as_str), Some("10001"));
    drop(members);
    rt.until_within(patience, "all unsubscribed", || async {
        server.channels("graphwiz:room:*").is_empty()
    })
    .await;
    // Redis drops a channel from PUBSUB CHANNELS when it handles the UNSUBSCRIBE, before the
    // hub reads the confirmation: wait for the hub too.
    rt.until_within(patience, "hub has no rooms left", || async {
        node.metrics().await.unwrap().rooms == 0
    })
    .await;
}

/// Publishes race a `CLIENT KILL` of each kind. Every publish resolves; afterwards what the
/// member received is matched against what was published: nothing twice, nothing that was
/// refused, and every confirmed publish either delivered or accounted for by a gap the
/// member's instance reported (a `Gap` over enough numbers, or the subscriber's outage with
/// the room among its `missed_rooms`). A marker published after recovery ends each round.
async fn client_kill_while_traffic_flows(rt: Rt) {
    use futures_util::FutureExt;
    use std::collections::BTreeSet;
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    let b = instance(rt, &server).await;
    let mut events = b.events().await.unwrap();
    let mut m = b.join("r", "m").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(m.wait_live())).await.unwrap();
    let (mut saw_down, mut saw_up) = (false, false);
    for kind in ["pubsub", "normal"] {
        let before = b.metrics().await.unwrap().reconnects;
        let publishes = futures_util::future::join_all((0..50).map(|k| {
            let a = a.clone();
            async move {
                a.publish(PubSubMessage::broadcast("r", format!("{kind}-{k}")))
                    .await
            }
        }));
        let kill = async {
            rt.sleep(Duration::from_millis(1)).await;
            server.cmd(&["CLIENT", "KILL", "TYPE", kind]);
        };
        let (results, ()) = futures_util::join!(rt.timeout(PATIENCE, Box::pin(publishes)), kill);
        let results = results.expect("every publish resolved");
        assert_eq!(results.len(), 50);
        // Confirmed ones must arrive (or be in a reported gap); one whose outcome is unknown
        // may arrive; a refused one must not.
        let mut confirmed = BTreeSet::new();
        let mut maybe = BTreeSet::new();
        for (k, r) in results.iter().enumerate() {
            match r {
                Ok(_) => {
                    confirmed.insert(format!("{kind}-{k}"));
                }
                Err(roomcast::Error::Publish(roomcast::core::PublishError::OutcomeUnknown)) => {
                    maybe.insert(format!("{kind}-{k}"));
                }
                Err(_) => {}
            }
        }
        rt.until("B reconnected", || async {
            b.metrics().await.unwrap().reconnects > before
        })
        .await;
        rt.until("room live again", || async {
            b.room_state("r").await.unwrap() == Some(RoomState::Live)
        })
        .await;
        let marker = format!("{kind}-marker");
        a.publish(PubSubMessage::broadcast("r", marker.clone()))
            .await
            .unwrap();
        let mut received = BTreeSet::new();
        loop {
            let msg = next(rt, &mut m).await.expect("the marker arrives");
            let text = String::from_utf8(msg.data.to_vec()).unwrap();
            if text == marker {
                break;
            }
            assert!(
                confirmed.contains(&text) || maybe.contains(&text),
                "{kind}: {text} arrived but was neither confirmed nor of unknown outcome"
            );
            assert!(
                received.insert(text.clone()),
                "{kind}: {text} arrived twice"
            );
        }
        // What the instance reported up to the marker (queued before the marker's delivery).
        let (mut gap, mut outage) = (0u64, false);
        while let Some(Some(e)) = events.next().now_or_never() {
            match e {
                Event::LinkDown { .. } => saw_down = true,
                Event::LinkUp {
                    outage: Some(_),
                    missed_rooms,
                    ..
                } => {
                    saw_up = true;
                    outage |= missed_rooms.iter().any(|r| r.as_str() == "r");
                }
                Event::Gap { room, missing, .. } if room.as_str() == "r" => {
                    gap += missing.end() - missing.start() + 1;
                }
                _ => {}
            }
        }
        let lost: Vec<_> = confirmed.difference(&received).collect();
        assert!(
            lost.is_empty() || outage || gap >= lost.len() as u64,
            "{kind}: confirmed but neither delivered nor in a reported gap: {lost:?} \
             (gap {gap}, outage reported {outage})"
        );
        // And everything published from now on arrives, in order.
        for k in 0..20 {
            a.publish(PubSubMessage::broadcast("r", format!("after-{k}")))
                .await
                .unwrap();
        }
        for k in 0..20 {
            let msg = next(rt, &mut m).await.expect("no loss after recovery");
            assert_eq!(msg.data, format!("after-{k}").as_bytes());
        }
    }
    assert!(saw_down && saw_up, "outage reported");
}

async fn server_restart_recovers(rt: Rt) {
    let mut server = RedisServer::start();
    let a = instance(rt, &server).await;
    let mut m = a.join("r", "m").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(m.wait_live())).await.unwrap();
    server.restart();
    rt.until("room live after restart", || async {
        a.room_state("r").await.unwrap() == Some(RoomState::Live)
            && a.metrics().await.unwrap().links_ready == 3
    })
    .await;
    a.publish(PubSubMessage::broadcast("r", "back"))
        .await
        .unwrap();
    until_marker(rt, &mut m, b"back").await;
    assert!(a.metrics().await.unwrap().reconnects >= 3);
}

async fn debug_sleep_is_detected_and_recovered(rt: Rt) {
    let server = RedisServer::start();
    let cfg = Config {
        reply_timeout: Duration::from_millis(800),
        keepalive_interval: Duration::from_millis(300),
        probe_interval: Duration::from_millis(500),
        probe_timeout: Duration::from_millis(500),
        ..config(&server)
    };
    let a = rt.connect(Builder::new(cfg)).await.unwrap();
    let mut events = a.events().await.unwrap();
    let mut m = a.join("r", "m").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(m.wait_live())).await.unwrap();
    let mut sleepy = server.client();
    sleepy.set_reply_timeout(PATIENCE);
    let sleeper = std::thread::spawn(move || {
        sleepy.cmd(&["DEBUG", "SLEEP", "3"]);
    });
    let mut detected = false;
    let end = Instant::now() + PATIENCE;
    while !detected && Instant::now() < end {
        if let Some(Some(Event::LinkDown { cause, .. })) =
            rt.timeout(Duration::from_millis(500), events.next()).await
        {
            detected = matches!(
                cause,
                roomcast::core::LinkError::ReplyTimeout { .. } | roomcast::core::LinkError::Deaf
            ) || detected;
        }
    }
    assert!(detected, "the stall was detected");
    sleeper.join().unwrap();
    rt.until("recovered", || async {
        a.metrics().await.unwrap().links_ready == 3
            && a.room_state("r").await.unwrap() == Some(RoomState::Live)
    })
    .await;
    a.publish(PubSubMessage::broadcast("r", "ok"))
        .await
        .unwrap();
    until_marker(rt, &mut m, b"ok").await;
}

async fn acl_user_right_and_wrong_password(rt: Rt) {
    let server = RedisServer::start();
    server.cmd(&[
        "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let port = server.port();
    let good = Config::from_url(&format!("redis://app:s3cret@127.0.0.1:{port}")).unwrap();
    let a = rt
        .connect(Builder::new(Config {
            pool_size: 1,
            ..good
        }))
        .await
        .unwrap();
    a.health_check(PATIENCE).await.unwrap();
    let bad = Config::from_url(&format!("redis://app:wrong@127.0.0.1:{port}")).unwrap();
    let err = rt
        .connect(Builder::new(Config {
            pool_size: 1,
            ..bad
        }))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(!text.contains("wrong"), "password leaked: {text}");
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
enum PubSubMessageType {
    Broadcast,
    PresenceEvent,
    SystemNotification,
}

/// The GraphWiz design's struct, as its publishers serialise it with bincode 1.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct GraphWizMessage {
    room_id: String,
    message_type: PubSubMessageType,
    data: Vec<u8>,
    exclude_connection: Option<String>,
    timestamp: i64,
}

async fn interop_with_bincode_1(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    let mut m = a.join("hub/abc", "m").await.unwrap();
    let _x = a.join("hub/abc", "x").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(m.wait_live())).await.unwrap();
    // Theirs → ours: a plain client publishes bincode 1 bytes on the design's channel.
    let theirs = GraphWizMessage {
        room_id: "hub/abc".into(),
        message_type: PubSubMessageType::SystemNotification,
        data: b"from graphwiz".to_vec(),
        exclude_connection: Some("x".into()),
        timestamp: 1_700_000_000,
    };
    let bytes = bincode1::serialize(&theirs).unwrap();
    let mut plain = server.client();
    plain
        .send_raw(&[b"PUBLISH", b"graphwiz:room:hub:abc", &bytes])
        .unwrap();
    assert_eq!(plain.read_reply().as_int(), Some(1));
    let got = next(rt, &mut m).await.unwrap();
    assert_eq!(got.data, &b"from graphwiz"[..]);
    assert_eq!(got.message_type, MessageType::SystemNotification);
    assert_eq!(got.timestamp, 1_700_000_000);
    assert_eq!(got.origin, None);
    // Ours → theirs: a raw subscriber decodes our bytes with bincode 1.
    let mut sub = server.client();
    sub.cmd(&["SUBSCRIBE", "graphwiz:room:hub:abc"]);
    a.publish(PubSubMessage::broadcast("hub/abc", "from roomcast").excluding("m"))
        .await
        .unwrap();
    let reply = sub
        .read_reply_within(PATIENCE)
        .unwrap()
        .expect("a message for the raw subscriber");
    let payload = reply
        .as_array()
        .and_then(|a| a.get(2))
        .and_then(|p| p.as_bytes())
        .unwrap();
    let decoded: GraphWizMessage = bincode1::deserialize(payload).unwrap();
    assert_eq!(decoded.room_id, "hub/abc");
    assert_eq!(decoded.data, b"from roomcast");
    assert_eq!(decoded.exclude_connection.as_deref(), Some("m"));
    assert_eq!(decoded.message_type, PubSubMessageType::Broadcast);
}

async fn slow_member_is_bounded_and_alone(rt: Rt) {
    let server = RedisServer::start();
    let a = bounded(rt, &server, 16, Overflow::DropOldest).await;
    let slow = a.join("r", "slow").await.unwrap();
    let mut fast = a.join("r", "fast").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(fast.wait_live()))
        .await
        .unwrap();
    let n = 500;
    let mut p = a.publisher();
    // The fast member keeps up (it reads after every ten); the slow one never reads.
    for batch in 0..n / 10 {
        for k in batch * 10..batch * 10 + 10 {
            p.send(PubSubMessage::broadcast("r", format!("{k}")))
                .await
                .unwrap();
        }
        for k in batch * 10..batch * 10 + 10 {
            let msg = next(rt, &mut fast)
                .await
                .expect("fast member gets everything");
            assert_eq!(msg.data, format!("{k}").as_bytes());
        }
    }
    assert!(slow.queued() <= 16, "bounded: {}", slow.queued());
    assert_eq!(slow.dropped(), (n - 16) as u64);
    assert_eq!(fast.dropped(), 0);
}

async fn health_and_standalone(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    let report = a.health_check(PATIENCE).await.unwrap();
    assert_eq!(report.link_rtts.len(), 3);
    // Standalone: the same API within one process.
    let (solo, driver) = Builder::standalone(Config::default())
        .build(rt.runtime())
        .unwrap();
    match rt {
        Rt::Tokio => drop(tokio::spawn(driver)),
        Rt::AsyncStd => drop(async_std::task::spawn(driver)),
        Rt::Smol => smol::spawn(driver).detach(),
    }
    // Nothing to connect: ready at once (what `connect_tokio` waits for).
    rt.timeout(PATIENCE, Box::pin(solo.wait_ready()))
        .await
        .expect("a standalone instance is ready")
        .unwrap();
    let mut x = solo.join("r", "x").await.unwrap();
    assert!(x.is_live());
    let _y = solo.join("r", "y").await.unwrap();
    assert_eq!(
        solo.publish(PubSubMessage::broadcast("r", "local").excluding("y"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(next(rt, &mut x).await.unwrap().data, &b"local"[..]);
    let mut conns: Vec<String> = solo
        .room_connections("r")
        .await
        .unwrap()
        .iter()
        .map(|m| m.conn.as_str().to_string())
        .collect();
    conns.sort();
    assert_eq!(conns, vec!["x", "y"]);
    assert_eq!(solo.instances().await.unwrap(), vec![solo.instance()]);
    assert!(solo.connection_exists("x").await.unwrap());
    assert!(!solo.connection_exists("z").await.unwrap());
    solo.health_check(PATIENCE).await.unwrap();
}

/// The driver is a plain future: here it runs on `futures::executor`, a third executor.
#[test]
fn runs_on_a_third_executor() {
    let server = RedisServer::start();
    let (handle, driver) = Builder::new(config(&server))
        .build(Arc::new(roomcast::runtime::async_io::AsyncIoRuntime))
        .unwrap();
    let pool = futures_executor::ThreadPool::builder()
        .pool_size(1)
        .create()
        .unwrap();
    pool.spawn_ok(driver);
    futures_executor::block_on(async {
        handle.wait_ready().await.unwrap();
        let mut m = handle.join("r", "m").await.unwrap();
        m.wait_live().await;
        handle
            .publish(PubSubMessage::broadcast("r", "x"))
            .await
            .unwrap();
        assert_eq!(m.next().await.unwrap().data, &b"x"[..]);
        handle.shutdown(Duration::from_secs(5)).await.unwrap();
    });
}

async fn overflow_close_ends_only_the_slow_membership(rt: Rt) {
    // Recipients are served in membership order, and the last one is handed the delivery's
    // own reference: the slow member is refused both as the first and as the last.
    for slow_first in [true, false] {
        slow_membership_overflows(rt, slow_first).await;
    }
}

async fn slow_membership_overflows(rt: Rt, slow_first: bool) {
    let server = RedisServer::start();
    let a = bounded(rt, &server, 8, Overflow::Close).await;
    let (mut slow, mut fast) = if slow_first {
        let slow = a.join("r", "slow").await.unwrap();
        (slow, a.join("r", "fast").await.unwrap())
    } else {
        let fast = a.join("r", "fast").await.unwrap();
        (a.join("r", "slow").await.unwrap(), fast)
    };
    rt.timeout(PATIENCE, Box::pin(fast.wait_live()))
        .await
        .unwrap();
    for batch in 0..5 {
        for k in 0..5 {
            a.publish(PubSubMessage::broadcast("r", format!("{batch}-{k}")))
                .await
                .unwrap();
        }
        for k in 0..5 {
            let msg = next(rt, &mut fast)
                .await
                .expect("fast member keeps its stream");
            assert_eq!(msg.data, format!("{batch}-{k}").as_bytes());
        }
    }
    // The slow member saw its queue overflow: it gets what was queued, then the stream ends.
    let mut got = 0;
    while let Some(Some(_)) = rt.timeout(PATIENCE, slow.next()).await {
        got += 1;
    }
    assert_eq!(got, 8);
    assert!(slow.overflowed());
    assert!(slow.dropped() >= 1);
    // ...and it left the room.
    let conns = a.local_connections("r").await.unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].as_str(), "fast");
    let members = a.room_connections("r").await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].conn.as_str(), "fast");
    assert_eq!(members[0].instance, a.instance());
}

/// Deliveries go by connection slot: one id with a membership in each of two rooms (one
/// slot, two queues) gets each room's messages on that room's stream only; after it leaves
/// everything its slot goes to the next connection, and the id joining again gets a new one.
async fn one_id_in_two_rooms_and_a_reused_slot(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    let mut x1 = a.join("r1", "x").await.unwrap();
    let mut x2 = a.join("r2", "x").await.unwrap();
    let mut y = a.join("r1", "y").await.unwrap();
    for m in [&x1, &x2, &y] {
        rt.timeout(PATIENCE, Box::pin(m.wait_live()))
            .await
            .expect("live");
    }
    let send = |room: &'static str, data: &'static str| {
        let a = a.clone();
        async move {
            a.publish(PubSubMessage::broadcast(room, data))
                .await
                .unwrap()
        }
    };
    send("r1", "a1").await;
    send("r2", "b1").await;
    assert_eq!(next(rt, &mut x1).await.unwrap().data, &b"a1"[..]);
    assert_eq!(next(rt, &mut x2).await.unwrap().data, &b"b1"[..]);
    assert_eq!(next(rt, &mut y).await.unwrap().data, &b"a1"[..]);
    // x leaves r1 but stays in r2 (the same slot): r2's stream gets r2's messages only.
    drop(x1);
    send("r1", "a2").await;
    send("r2", "b2").await;
    assert_eq!(next(rt, &mut y).await.unwrap().data, &b"a2"[..]);
    assert_eq!(next(rt, &mut x2).await.unwrap().data, &b"b2"[..]);
    // x leaves its last room; a connection and x again take slots (x's old one among them).
    drop(x2);
    let mut z = a.connection("z").await.unwrap();
    assert!(z.join("r1").await.unwrap());
    let mut x3 = a.join("r2", "x").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(x3.wait_live()))
        .await
        .expect("live");
    send("r1", "a3").await;
    send("r2", "b3").await;
    assert_eq!(next_of(rt, &mut z).await.unwrap().data, &b"a3"[..]);
    assert_eq!(next(rt, &mut y).await.unwrap().data, &b"a3"[..]);
    assert_eq!(next(rt, &mut x3).await.unwrap().data, &b"b3"[..]);
    // Nothing else reached z: the marker sent after everything else is its next message.
    send("r1", "end").await;
    assert_eq!(next_of(rt, &mut z).await.unwrap().data, &b"end"[..]);
}

async fn gaps_are_reported_end_to_end_and_shutdown_flushes(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    // B reconnects slowly, so messages published while it is away are surely missed.
    let b = rt
        .connect(Builder::new(Config {
            backoff_min: Duration::from_millis(600),
            backoff_max: Duration::from_millis(600),
            ..config(&server)
        }))
        .await
        .unwrap();
    let mut events = b.events().await.unwrap();
    let mut all = b.subscribe_room("r").await.unwrap();
    let _m = b.join("r", "m").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(all.wait_live()))
        .await
        .unwrap();
    a.publish(PubSubMessage::broadcast("r", "1")).await.unwrap();
    assert_eq!(
        rt.timeout(PATIENCE, all.next())
            .await
            .flatten()
            .unwrap()
            .data,
        &b"1"[..]
    );
    server.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // B must have noticed the kill (its reconnect waits 300-600 ms) before 2 and 3 go out.
    rt.until("B noticed the outage", || async {
        b.room_state("r").await.unwrap() != Some(RoomState::Live)
    })
    .await;
    a.publish(PubSubMessage::broadcast("r", "2")).await.unwrap();
    a.publish(PubSubMessage::broadcast("r", "3")).await.unwrap();
    rt.until("B live again", || async {
        b.room_state("r").await.unwrap() == Some(RoomState::Live)
    })
    .await;
    a.publish(PubSubMessage::broadcast("r", "4")).await.unwrap();
    assert_eq!(
        rt.timeout(PATIENCE, all.next())
            .await
            .flatten()
            .unwrap()
            .data,
        &b"4"[..]
    );
    // The gap is reported before "4" is delivered: every event up to it is queued already.
    let mut gaps = Vec::new();
    while let Some(Some(e)) = futures_util::FutureExt::now_or_never(events.next()) {
        if let Event::Gap {
            missing, origin, ..
        } = e
        {
            gaps.push((missing, origin));
        }
    }
    assert_eq!(gaps, vec![(2..=3, a.instance())]);
    // Shutdown waits for what is queued: this publish is confirmed, not dropped.
    let pending = {
        let a = a.clone();
        async move { a.publish(PubSubMessage::broadcast("r", "last")).await }
    };
    let (published, shut) = futures_util::join!(pending, a.shutdown(PATIENCE));
    assert_eq!(published.unwrap(), 1);
    shut.unwrap();
    assert!(matches!(
        a.publish(PubSubMessage::broadcast("r", "after")).await,
        Err(roomcast::Error::Closed)
    ));
}

fn presence_config(server: &RedisServer) -> Config {
    Config {
        lease: Duration::from_millis(1500),
        ..config(server)
    }
}

async fn members(node: &Roomcast, room: &str) -> Vec<(roomcast::InstanceId, String)> {
    node.room_connections(room)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.instance, m.conn.as_str().to_string()))
        .collect()
}

async fn presence_every_instance_same_answer(rt: Rt) {
    let server = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            rt.connect(Builder::new(presence_config(&server)))
                .await
                .unwrap(),
        );
    }
    let mut keep = Vec::new();
    for (n, room, conn) in [
        (0, "lobby", "a"),
        (1, "lobby", "b"),
        (2, "lobby", "a"),
        (1, "hub/x:y", "b"),
        (2, "ünï/😀", "z"),
    ] {
        keep.push(nodes[n].join(room, conn).await.unwrap());
    }
    // A room stream is an observer: it is nobody in presence. Its id namespace is the
    // driver's own: an application's id in it is refused.
    let _observer = nodes[0].subscribe_room("lobby").await.unwrap();
    let reserved = nodes[0].join("lobby", "\u{FFFF}observer-1").await;
    assert!(
        matches!(reserved, Err(roomcast::Error::ReservedConnection { .. })),
        "{reserved:?}"
    );
    let mut want = vec![
        (nodes[0].instance(), "a".to_string()),
        (nodes[1].instance(), "b".to_string()),
        (nodes[2].instance(), "a".to_string()),
    ];
    want.sort();
    let mut all = vec![
        nodes[0].instance(),
        nodes[1].instance(),
        nodes[2].instance(),
    ];
    all.sort();
    // Each instance's writes travel on its own connection: another instance sees them within
    // a round trip, not at the instant join returns.
    for node in &nodes {
        rt.until("every join visible", || async {
            members(node, "lobby").await.len() == 3 && members(node, "ünï/😀").await.len() == 1
        })
        .await;
    }
    for node in &nodes {
        assert_eq!(members(node, "lobby").await, want);
        assert_eq!(
            members(node, "hub/x:y").await,
            vec![(nodes[1].instance(), "b".to_string())]
        );
        assert_eq!(node.room_member_count("ünï/😀").await.unwrap(), 1);
        assert!(node.connection_exists("a").await.unwrap());
        assert!(node.connection_exists("z").await.unwrap());
        assert!(!node.connection_exists("nobody").await.unwrap());
        assert_eq!(node.instances().await.unwrap(), all);
    }
    // An instance's own leave is visible to its own next query (same connection, in order),
    // and to the others right after.
    nodes[0].leave("lobby", "a").await.unwrap();
    assert_eq!(members(&nodes[0], "lobby").await.len(), 2);
    rt.until("leave visible elsewhere", || async {
        members(&nodes[2], "lobby").await.len() == 2
    })
    .await;
}

async fn presence_crash_vanishes_within_a_lease_and_shutdown_at_once(rt: Rt) {
    let server = RedisServer::start();
    let a = rt
        .connect(Builder::new(presence_config(&server)))
        .await
        .unwrap();
    let b = rt
        .connect(Builder::new(presence_config(&server)))
        .await
        .unwrap();
    let (c, driver) = Builder::new(presence_config(&server))
        .build(rt.runtime())
        .unwrap();
    let crash = rt.spawn_killable(driver);
    c.wait_ready().await.unwrap();
    let _ma = a.join("r", "a").await.unwrap();
    let _mb = b.join("r", "b").await.unwrap();
    let _mc = c.join("r", "c").await.unwrap();
    rt.until("three members", || async {
        members(&a, "r").await.len() == 3
    })
    .await;
    // C crashes: no shutdown, its sockets just close. Its lease runs out and it vanishes.
    crash.abort();
    let t = Instant::now();
    rt.until("crashed instance gone", || async {
        members(&a, "r").await.len() == 2
    })
    .await;
    let gone_after = t.elapsed();
    assert!(gone_after < Duration::from_secs(10), "{gone_after:?}");
    assert!(!a.connection_exists("c").await.unwrap());
    // B shuts down gracefully: gone at once, no lease to wait for.
    b.shutdown(PATIENCE).await.unwrap();
    assert_eq!(
        members(&a, "r").await,
        vec![(a.instance(), "a".to_string())]
    );
    assert_eq!(a.instances().await.unwrap(), vec![a.instance()]);
    // Every presence command and script ran without an error on the real server.
    assert_eq!(a.metrics().await.unwrap().presence_errors, 0);
}

async fn presence_whole_again_after_client_kill(rt: Rt) {
    let server = RedisServer::start();
    let a = rt
        .connect(Builder::new(presence_config(&server)))
        .await
        .unwrap();
    let b = rt
        .connect(Builder::new(presence_config(&server)))
        .await
        .unwrap();
    let _ma = a.join("r", "a").await.unwrap();
    let _mb = b.join("r", "b").await.unwrap();
    rt.until("two members", || async {
        members(&a, "r").await.len() == 2
    })
    .await;
    server.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    // Queries fail clearly (never a partial answer) until both re-registered; then whole.
    rt.until("presence whole again", || async {
        match (a.room_connections("r").await, b.room_connections("r").await) {
            (Ok(x), Ok(y)) => x.len() == 2 && x == y,
            (Err(roomcast::Error::Presence(_)), _) | (_, Err(roomcast::Error::Presence(_))) => {
                false
            }
            (Err(e), _) | (_, Err(e)) => panic!("unexpected error: {e}"),
        }
    })
    .await;
}

async fn health_fails_when_the_subscriber_hears_nothing(rt: Rt) {
    let server = RedisServer::start();
    // No presence here: its heartbeat is a write, which would hold a PING behind it.
    let a = rt
        .connect(Builder::new(Config {
            presence: false,
            ..config(&server)
        }))
        .await
        .unwrap();
    a.health_check(PATIENCE).await.unwrap();
    // CLIENT PAUSE WRITE holds every PUBLISH (the probe included) while PINGs are still
    // answered on every link: a health check built on PING alone would pass.
    server.cmd(&["CLIENT", "PAUSE", "2500", "WRITE"]);
    let err = a
        .health_check(Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("probe"), "{err}");
    rt.until("healthy again", || async {
        a.health_check(Duration::from_secs(2)).await.is_ok()
    })
    .await;
}

// ----- Connection: one stream per connection for all its rooms -----

on_both!(
    connection_gets_every_room_once_in_order,
    connection_ids_are_exclusive_and_drop_leaves,
    connection_overflow_close_leaves_every_room,
    connection_standalone,
    publisher_batches_keep_order_and_drop_hands_over,
);

/// Ids as plain strings, for comparisons.
fn names<T: AsRef<str>>(ids: Vec<T>) -> Vec<String> {
    ids.iter().map(|i| i.as_ref().to_string()).collect()
}

async fn next_of(rt: Rt, c: &mut roomcast::Connection) -> Option<Arc<roomcast::Message>> {
    rt.timeout(PATIENCE, c.next()).await.flatten()
}

fn spawn_standalone(rt: Rt, options: Options) -> Roomcast {
    let (solo, driver) = Builder::standalone(Config::default())
        .options(options)
        .build(rt.runtime())
        .unwrap();
    match rt {
        Rt::Tokio => drop(tokio::spawn(driver)),
        Rt::AsyncStd => drop(async_std::task::spawn(driver)),
        Rt::Smol => smol::spawn(driver).detach(),
    }
    solo
}

async fn connection_gets_every_room_once_in_order(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    let b = instance(rt, &server).await;
    let rooms: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
    let mut gw = b.connection("gw").await.unwrap();
    assert_eq!(gw.id().as_str(), "gw");
    assert_eq!(gw.join_many(&rooms).await.unwrap(), 50);
    // Joining again adds nothing.
    assert_eq!(gw.join_many(&rooms[..10]).await.unwrap(), 0);
    assert!(!gw.join("room-3").await.unwrap());
    let mut x = b.connection("x").await.unwrap();
    assert!(x.join("room-0").await.unwrap());
    // An invalid id anywhere in a batch: nothing joined, and the error names its position.
    let bad = vec!["fresh-1".to_string(), String::new(), "fresh-2".to_string()];
    match gw.join_many(&bad).await {
        Err(roomcast::Error::Batch { index: 1, .. }) => {}
        other => panic!("expected a batch error at 1, got {other:?}"),
    }
    let joined = names(gw.rooms().await.unwrap());
    assert_eq!(
        joined, rooms,
        "rooms in join order, nothing from the refused batch"
    );
    rt.timeout(PATIENCE, Box::pin(gw.wait_live()))
        .await
        .expect("every room live")
        .unwrap();
    rt.timeout(PATIENCE, Box::pin(x.wait_live()))
        .await
        .expect("room-0 live")
        .unwrap();
    for r in &rooms {
        assert_eq!(b.room_state(r).await.unwrap(), Some(RoomState::Live));
    }
    // Five messages per room from the other instance, interleaved across rooms.
    let per_room = 5;
    let mut p = a.publisher();
    for k in 0..per_room {
        for r in &rooms {
            p.send(PubSubMessage::broadcast(r.clone(), format!("{r}/{k}")))
                .await
                .unwrap();
        }
    }
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for _ in 0..rooms.len() * per_room {
        let msg = next_of(rt, &mut gw).await.expect("gw gets every message");
        let room = msg.room.as_str().to_string();
        let k = seen.entry(room.clone()).or_default();
        assert_eq!(msg.data, format!("{room}/{k}").as_bytes(), "per-room order");
        *k += 1;
    }
    assert!(seen.values().all(|&k| k == per_room), "{seen:?}");
    for k in 0..per_room {
        let msg = next_of(rt, &mut x).await.expect("x gets room-0's");
        assert_eq!(msg.data, format!("room-0/{k}").as_bytes());
    }
    // Exclusion applies on the publisher's instance: "x" sends, "gw" receives, "x" not.
    b.publish(PubSubMessage::broadcast("room-0", "from x").excluding("x"))
        .await
        .unwrap();
    b.publish(PubSubMessage::broadcast("room-0", "to all"))
        .await
        .unwrap();
    for c in [&mut gw, &mut x] {
        let first = next_of(rt, c).await.unwrap();
        let expect: &[u8] = if c.id().as_str() == "gw" {
            b"from x"
        } else {
            b"to all"
        };
        assert_eq!(&first.data[..], expect);
    }
    assert_eq!(next_of(rt, &mut gw).await.unwrap().data, &b"to all"[..]);
    // Leaving one room: its messages stop, the others' keep coming, and nothing is doubled.
    assert!(gw.leave("room-7").await.unwrap());
    assert!(!gw.leave("room-7").await.unwrap());
    b.until_state(rt, "room-7", None).await;
    a.publish(PubSubMessage::broadcast("room-7", "gone"))
        .await
        .unwrap();
    a.publish(PubSubMessage::broadcast("room-8", "still"))
        .await
        .unwrap();
    let msg = next_of(rt, &mut gw).await.unwrap();
    assert_eq!(
        (msg.room.as_str(), &msg.data[..]),
        ("room-8", &b"still"[..])
    );
    assert_eq!(gw.dropped(), 0);
    assert_eq!(gw.queued(), 0);
    // Presence sees the attached connection like any member.
    assert!(a.connection_exists("gw").await.unwrap());
    let members = a.room_connections("room-0").await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.conn.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"gw") && names.contains(&"x"));
}

/// Polling helpers on a handle.
trait Until {
    async fn until_state(&self, rt: Rt, room: &str, want: Option<RoomState>);
}

impl Until for Roomcast {
    async fn until_state(&self, rt: Rt, room: &str, want: Option<RoomState>) {
        rt.until(&format!("{room} in state {want:?}"), || async {
            self.room_state(room).await.unwrap() == want
        })
        .await
    }
}

async fn connection_ids_are_exclusive_and_drop_leaves(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    let c = a.connection("c").await.unwrap();
    c.join_many(["r1", "r2"]).await.unwrap();
    match a.connection("c").await {
        Err(roomcast::Error::ConnectionInUse { conn, .. }) => assert_eq!(conn, "c"),
        other => panic!("a second Connection for the same id: {other:?}"),
    }
    match a.join("r1", "c").await {
        Err(roomcast::Error::ConnectionInUse { .. }) => {}
        other => panic!("join on an attached id: {other:?}"),
    }
    let _m = a.join("r3", "m").await.unwrap();
    match a.connection("m").await {
        Err(roomcast::Error::ConnectionInUse { .. }) => {}
        other => panic!("attaching an id with memberships: {other:?}"),
    }
    assert!(matches!(
        a.connection("").await,
        Err(roomcast::Error::Member(_))
    ));
    // Dropping the Connection leaves its rooms; the id can be attached again at once.
    drop(c);
    let c2 = a.connection("c").await.unwrap();
    assert!(c2.rooms().await.unwrap().is_empty());
    a.until_state(rt, "r1", None).await;
    a.until_state(rt, "r2", None).await;
    assert!(!a.connection_exists("c").await.unwrap());
    // A waiter on a connection with no rooms resolves at once.
    rt.timeout(PATIENCE, Box::pin(c2.wait_live()))
        .await
        .unwrap()
        .unwrap();
    // After shutdown, calls on a Connection fail instead of hanging.
    a.shutdown(PATIENCE).await.unwrap();
    assert!(c2.join("r1").await.is_err());
}

async fn connection_overflow_close_leaves_every_room(rt: Rt) {
    let server = RedisServer::start();
    let a = bounded(rt, &server, 4, Overflow::Close).await;
    let mut slow = a.connection("slow").await.unwrap();
    slow.join_many(["s1", "s2"]).await.unwrap();
    let mut ok = a.connection("ok").await.unwrap();
    ok.join("s1").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(slow.wait_live()))
        .await
        .unwrap()
        .unwrap();
    let mut p = a.publisher();
    for k in 0..3 {
        // "ok" reads as it goes; "slow" never does until its queue overflows.
        p.send(PubSubMessage::broadcast("s1", format!("{k}")))
            .await
            .unwrap();
        p.send(PubSubMessage::broadcast("s2", format!("{k}")))
            .await
            .unwrap();
        assert_eq!(
            next_of(rt, &mut ok).await.unwrap().data,
            format!("{k}").as_bytes()
        );
    }
    // Six messages for a queue of four: it overflows once the fifth arrives (s2's may still
    // be on their way when "ok" has its three).
    rt.until("slow's queue overflowed", || {
        let overflowed = slow.overflowed();
        async move { overflowed }
    })
    .await;
    // The first four queued are still readable, then the stream ends.
    let mut got = 0;
    while next_of(rt, &mut slow).await.is_some() {
        got += 1;
    }
    assert_eq!(got, 4);
    assert!(slow.overflowed());
    // It left both rooms; s2 had no one else and is unsubscribed, s1 keeps "ok".
    a.until_state(rt, "s2", None).await;
    assert_eq!(
        a.local_connections("s1")
            .await
            .unwrap()
            .iter()
            .map(|c| c.as_str().to_string())
            .collect::<Vec<_>>(),
        vec!["ok"]
    );
}

async fn connection_standalone(rt: Rt) {
    let solo = spawn_standalone(rt, Options::default());
    let mut c = solo.connection("c").await.unwrap();
    let mut d = solo.connection("d").await.unwrap();
    assert_eq!(c.join_many(["r1", "r2"]).await.unwrap(), 2);
    assert!(d.join("r2").await.unwrap());
    c.wait_live().await.unwrap();
    assert_eq!(
        solo.publish(PubSubMessage::broadcast("r2", "both"))
            .await
            .unwrap(),
        1
    );
    solo.publish(PubSubMessage::broadcast("r1", "c only").excluding("d"))
        .await
        .unwrap();
    assert_eq!(next_of(rt, &mut c).await.unwrap().data, &b"both"[..]);
    assert_eq!(next_of(rt, &mut c).await.unwrap().data, &b"c only"[..]);
    assert_eq!(next_of(rt, &mut d).await.unwrap().data, &b"both"[..]);
    let rooms = names(c.rooms().await.unwrap());
    assert_eq!(rooms, ["r1", "r2"]);
    assert!(c.leave("r1").await.unwrap());
    assert_eq!(solo.room_state("r1").await.unwrap(), None);
    // Leaving one room keeps the connection's stream for the others.
    solo.publish(PubSubMessage::broadcast("r2", "still c"))
        .await
        .unwrap();
    assert_eq!(next_of(rt, &mut c).await.unwrap().data, &b"still c"[..]);
    assert_eq!(next_of(rt, &mut d).await.unwrap().data, &b"still c"[..]);
    drop(c);
    // d is still in r2, c is gone from it.
    solo.publish(PubSubMessage::broadcast("r2", "d only"))
        .await
        .unwrap();
    assert_eq!(next_of(rt, &mut d).await.unwrap().data, &b"d only"[..]);
    let left = names(solo.local_connections("r2").await.unwrap());
    assert_eq!(left, ["d"]);
}

async fn publisher_batches_keep_order_and_drop_hands_over(rt: Rt) {
    use futures_util::SinkExt;
    let server = RedisServer::start();
    let a = bounded(rt, &server, 4096, Overflow::DropOldest).await;
    let b = bounded(rt, &server, 4096, Overflow::DropOldest).await;
    let mut m = b.connection("m").await.unwrap();
    m.join_many(["p1", "p2"]).await.unwrap();
    rt.timeout(PATIENCE, Box::pin(m.wait_live()))
        .await
        .unwrap()
        .unwrap();
    let mut p = a.publisher();
    let mut expect = Vec::new();
    let mut k = 0;
    let mut msg = |expect: &mut Vec<String>| {
        let text = format!("{k}");
        k += 1;
        expect.push(text.clone());
        PubSubMessage::broadcast(if k % 3 == 0 { "p2" } else { "p1" }, text)
    };
    // Fed through the Sink: full batches (256 by default) go on their own, the rest on flush.
    for _ in 0..1000 {
        p.feed(msg(&mut expect)).await.unwrap();
    }
    // `send` hands over what was fed before it, then itself.
    p.send(msg(&mut expect)).await.unwrap();
    p.send_batch((0..100).map(|_| msg(&mut expect)))
        .await
        .unwrap();
    for _ in 0..10 {
        p.feed(msg(&mut expect)).await.unwrap();
    }
    p.flush().await.unwrap();
    // What a dropped publisher still holds is handed over, after everything before it.
    for _ in 0..7 {
        p.feed(msg(&mut expect)).await.unwrap();
    }
    drop(p);
    // Order holds per room (rooms may be published on different links).
    let mut per_room: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..expect.len() {
        let got = next_of(rt, &mut m).await.expect("every message arrives");
        per_room
            .entry(got.room.as_str().to_string())
            .or_default()
            .push(String::from_utf8(got.data.to_vec()).unwrap());
    }
    for (room, got) in per_room {
        let want: Vec<&String> = expect
            .iter()
            .filter(|t| ((t.parse::<u32>().unwrap() + 1) % 3 == 0) == (room == "p2"))
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "order in {room}");
    }
    assert_eq!(m.dropped(), 0);
    assert_eq!(a.metrics().await.unwrap().published, expect.len() as u64);
}

on_both!(messages_across_read_blocks_arrive_whole_while_held);

/// Payload `k` of a run: `len` bytes that differ with `k`, `seed` and the position.
fn pattern(seed: u8, k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (k as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(7) ^ seed)
        .collect()
}

/// A link reads into blocks of 64 KiB that it takes again once the messages read into them
/// are dropped. Messages much smaller and much larger than a block (a large one spans many
/// reads and moves to a bigger block), all held by the application while more are read, each
/// arrive whole and in order; then, with the held ones dropped (their blocks free for
/// reuse), a second run arrives whole too.
async fn messages_across_read_blocks_arrive_whole_while_held(rt: Rt) {
    let server = RedisServer::start();
    let a = instance(rt, &server).await;
    // Room for a whole run in the member's queue (the test reads after publishing).
    let options = Options {
        member_queue_bytes: 16 << 20,
        ..Options::default()
    };
    let b = rt
        .connect(Builder::new(config(&server)).options(options))
        .await
        .unwrap();
    let mut m = b.join("blocks", "holder").await.unwrap();
    rt.timeout(PATIENCE, Box::pin(m.wait_live()))
        .await
        .expect("live");
    let sizes = [7, 1_500, 70_000, 300_000, 40, 20_000];
    let n = 4 * sizes.len();
    for seed in [0x11u8, 0x5c] {
        let mut p = a.publisher();
        let msgs =
            (0..n).map(|k| PubSubMessage::broadcast("blocks", pattern(seed, k, sizes[k % 6])));
        p.send_batch(msgs).await.unwrap();
        let mut held = Vec::new();
        for k in 0..n {
            let msg = next(rt, &mut m).await.expect("every message arrives");
            assert_eq!(msg.data.len(), sizes[k % 6], "message {k} of run {seed:#x}");
            held.push(msg);
        }
        for (k, msg) in held.iter().enumerate() {
            assert!(
                msg.data[..] == pattern(seed, k, sizes[k % 6])[..],
                "message {k} of run {seed:#x} changed while held"
            );
        }
        drop(held);
    }
    assert_eq!(m.dropped(), 0);
}
