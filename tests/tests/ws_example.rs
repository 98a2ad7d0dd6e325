//! The WebSocket room server `roomcast::serve` (of `roomcast serve`, `roomcast demo` and
//! `examples/ws_rooms.rs`): two copies on two roomcast instances against a private
//! redis-server, driven by real WebSocket clients: delivery across instances, the sender
//! excluded, presence events on join and leave, `/rooms/{room}` routing. The last test runs
//! the example binary itself, twice (building it when it is not built yet).

use roomcast::serve::{self as ws, ServeOptions};

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast::{Config, Roomcast};
use roomcast_tests::RedisServer;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<TcpStream>;

async fn instance(server: &RedisServer) -> Roomcast {
    let config = Config::from_url(&server.url()).expect("url");
    roomcast::connect(config).await.expect("connect")
}

/// Connects to `ws://addr/rooms/{room}` and returns the stream and the welcome.
async fn client(addr: SocketAddr, room: &str) -> (Ws, Value) {
    let url = format!("ws://{addr}/rooms/{}", ws::percent_encode(room));
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .expect("handshake");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["room"], room, "{welcome}");
    (ws, welcome)
}

/// The next JSON frame, within [`PATIENCE`].
async fn next_json(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str()).expect("JSON frame")
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Asserts that the next frame is a presence event.
async fn expect_presence(ws: &mut Ws, event: &str, conn: &Value) {
    // Skip other connections' presence events (this client's own join may still be on its way).
    let mut v = next_json(ws).await;
    while v["type"] == "presence" && &v["data"]["connection"] != conn {
        v = next_json(ws).await;
    }
    assert_eq!(v["type"], "presence", "{v}");
    assert_eq!(v["data"]["event"], event, "{v}");
    assert_eq!(&v["data"]["connection"], conn, "{v}");
}

/// Asserts that the next frame is a broadcast of `data` from `from`.
async fn expect_broadcast(ws: &mut Ws, data: &str, from: &Value) {
    // Presence events of other clients (or of this one, which may arrive after its own join
    // returned) can come first: they are checked elsewhere.
    let mut v = next_json(ws).await;
    while v["type"] == "presence" {
        v = next_json(ws).await;
    }
    assert_eq!(v["type"], "broadcast", "{v}");
    assert_eq!(v["data"], data, "{v}");
    assert_eq!(&v["from"], from, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_a_room_exclude_the_sender_and_announce_presence() {
    let redis = RedisServer::start();
    let (rc1, rc2) = (instance(&redis).await, instance(&redis).await);
    let s1 = ws::Server::bind("127.0.0.1:0", rc1.clone(), ServeOptions::default())
        .await
        .expect("bind");
    let s2 = ws::Server::bind("127.0.0.1:0", rc2.clone(), ServeOptions::default())
        .await
        .expect("bind");

    let (mut a, wa) = client(s1.addr(), "lobby").await;
    let (mut b, wb) = client(s2.addr(), "lobby").await;
    assert_ne!(wa["instance"], wb["instance"]);
    let (ca, cb) = (wa["connection"].clone(), wb["connection"].clone());
    assert_ne!(ca, cb);
    // A hears B join through Redis; B does not hear its own join.
    expect_presence(&mut a, "join", &cb).await;
    let (mut c, wc) = client(s1.addr(), "lobby").await;
    let cc = wc["connection"].clone();
    expect_presence(&mut a, "join", &cc).await;
    expect_presence(&mut b, "join", &cc).await;

    // A's text reaches B on the other instance and C on its own, not A.
    a.send(Message::text("hello from a")).await.expect("send");
    expect_broadcast(&mut b, "hello from a", &ca).await;
    expect_broadcast(&mut c, "hello from a", &ca).await;
    // B answers after receiving; in the room's one order A's own message would come first.
    b.send(Message::text("hello from b")).await.expect("send");
    expect_broadcast(&mut a, "hello from b", &cb).await;
    expect_broadcast(&mut c, "hello from b", &cb).await;

    // Another room, on both servers, hears none of it.
    let (mut d, _) = client(s2.addr(), "elsewhere").await;
    let (mut e, we) = client(s1.addr(), "elsewhere").await;
    let ce = we["connection"].clone();
    expect_presence(&mut d, "join", &ce).await;

    // B leaves: A and C are told, B's connection is gone from every room.
    b.close(None).await.expect("close");
    expect_presence(&mut a, "leave", &cb).await;
    expect_presence(&mut c, "leave", &cb).await;
    let cb_id = cb.as_str().expect("id").to_string();
    assert!(
        eventually(|| async {
            !rc2.local_connections("lobby")
                .await
                .map(|m| m.iter().any(|c| c.as_str() == cb_id))
                .unwrap_or(true)
        })
        .await,
        "B's membership was cleaned up"
    );
    a.send(Message::text("after b left")).await.expect("send");
    expect_broadcast(&mut c, "after b left", &ca).await;
    c.send(Message::text("from c")).await.expect("send");
    expect_broadcast(&mut a, "from c", &cc).await;
    d.send(Message::text("ping elsewhere")).await.expect("send");
    // (D's own join event may reach E first: E joined right after it.)
    let mut from_d = next_json(&mut e).await;
    while from_d["type"] == "presence" {
        from_d = next_json(&mut e).await;
    }
    assert_eq!(
        from_d["data"], "ping elsewhere",
        "E hears its own room only: {from_d}"
    );

    // Shutting a server down closes its clients; their leaves are announced.
    s1.shutdown(Duration::from_secs(5)).await;
    // Frames already on their way (presence events) may come before the close.
    let closed = loop {
        match tokio::time::timeout(PATIENCE, a.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => continue,
            other => break other,
        }
    };
    assert!(
        matches!(
            closed,
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_)))
        ),
        "A is closed by the shutdown: {closed:?}"
    );
    expect_presence(&mut d, "leave", &ce).await;
    s2.shutdown(Duration::from_secs(5)).await;
    for rc in [rc1, rc2] {
        rc.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    }
}

async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_routed_by_path() {
    let redis = RedisServer::start();
    let rc = instance(&redis).await;
    let s = ws::Server::bind("127.0.0.1:0", rc.clone(), ServeOptions::default())
        .await
        .expect("bind");
    // Not a room: 404 (or the page, at `/`); a bad room id: 400.
    for (path, status) in [
        ("/", "200"),
        ("/other/lobby", "404"),
        ("/rooms/", "400"),
        ("/rooms/%zz", "400"),
    ] {
        let tcp = TcpStream::connect(s.addr()).await.expect("tcp");
        let url = format!("ws://{}{path}", s.addr());
        let err = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(status), "{path}: {err}");
    }
    // Room ids keep their slashes and any character; two of them are two rooms.
    let (mut x, _) = client(s.addr(), "team/α b").await;
    let (mut y, wy) = client(s.addr(), "team/α b").await;
    let (_z, _) = client(s.addr(), "team").await;
    expect_presence(&mut x, "join", &wy["connection"]).await;
    y.send(Message::text("hi")).await.expect("send");
    let v = next_json(&mut x).await;
    assert_eq!(v["type"], "broadcast", "{v}");
    assert_eq!(v["room"], "team/α b", "{v}");
    assert_eq!(v["data"], "hi", "{v}");
    s.shutdown(Duration::from_secs(5)).await;
    rc.shutdown(Duration::from_secs(5)).await.expect("shutdown");
}

/// The `ws_rooms` example's binary: `cargo test --workspace` builds it next to this test's
/// directory; when it is missing (this test run alone), it is built here with the cargo that
/// runs the tests. Never skipped: a missing or unbuildable example fails the test.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/PROFILE/deps");
    let example = profile
        .join("examples")
        .join(format!("ws_rooms{}", std::env::consts::EXE_SUFFIX));
    if !example.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "-p",
            "roomcast",
            "--features",
            "cli",
            "--example",
            "ws_rooms",
        ]);
        if profile.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build for the example");
        assert!(
            status.success(),
            "building examples/ws_rooms failed: {status}"
        );
    }
    assert!(
        example.is_file(),
        "examples/ws_rooms is not at {} after building it",
        example.display()
    );
    example
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Kills the example copies however the test ends.
struct Copies(Vec<Child>);

impl Drop for Copies {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_the_example_chat_across_ports() {
    let example = example_binary();
    let redis = RedisServer::start();
    let mut copies = Copies(Vec::new());
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let child = Command::new(&example)
            .args(["--port", &port.to_string()])
            .env("REDIS_URL", redis.url())
            .env("REDIS_POOL_SIZE", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ws_rooms");
        copies.0.push(child);
        addrs.push(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    // Wait until both listen.
    for addr in &addrs {
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "ws_rooms did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (mut a, wa) = client(addrs[0], "lobby").await;
    let (mut b, wb) = client(addrs[1], "lobby").await;
    assert_ne!(wa["instance"], wb["instance"]);
    expect_presence(&mut a, "join", &wb["connection"]).await;
    a.send(Message::text("over redis")).await.expect("send");
    expect_broadcast(&mut b, "over redis", &wa["connection"]).await;
    b.send(Message::text("and back")).await.expect("send");
    expect_broadcast(&mut a, "and back", &wb["connection"]).await;
    a.close(None).await.expect("close");
    expect_presence(&mut b, "leave", &wa["connection"]).await;
}
