//! `roomcast::serve` (the server of `roomcast serve`) with a plain WebSocket client: refusals
//! at the upgrade (bad room id, origin, token), an over-large frame (1009), a client too slow
//! for its queue (1008), `/metrics` moving as messages flow, `/healthz` 200 then 503, and
//! the close frame of a graceful shutdown. Each against a private redis-server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast::serve::{instance_options, percent_encode, ServeOptions, Server};
use roomcast::{Builder, Config, Options, Roomcast};
use roomcast_tests::RedisServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<TcpStream>;

async fn instance(redis: &RedisServer, options: Options) -> Roomcast {
    let config = Config::from_url(&redis.url()).expect("url");
    Builder::new(config)
        .options(options)
        .connect_tokio()
        .await
        .expect("connect")
}

async fn server(rc: &Roomcast, options: ServeOptions) -> Server {
    Server::bind("127.0.0.1:0", rc.clone(), options)
        .await
        .expect("bind")
}

/// Opens `path` with extra headers: the socket, or the refusal's status and body.
async fn open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, (u16, String)> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value).expect("header"));
    }
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{path}: unexpected handshake error {e}"),
    }
}

/// Joins `room` and returns the socket after its welcome.
async fn join(addr: SocketAddr, room: &str) -> (Ws, Value) {
    let mut ws = open(addr, &format!("/rooms/{}", percent_encode(room)), &[])
        .await
        .expect("upgrade");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text frame as JSON, within [`PATIENCE`].
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str()).expect("JSON frame")
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next broadcast (presence events skipped).
async fn next_broadcast(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] != "presence" {
            return v;
        }
    }
}

/// Reads until the close frame (text frames before it are skipped) and returns its code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// `GET path` over HTTP/1.1: status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// The value of a sample line `name value` (or `name{labels} value`) of a scrape.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_the_upgrade_say_why() {
    let redis = RedisServer::start();
    let rc = instance(&redis, instance_options()).await;
    let long = "x".repeat(ServeOptions::default().max_room_id_bytes + 1);
    let s = server(&rc, ServeOptions::default()).await;
    for (path, why) in [
        ("/rooms/%zz".to_string(), "percent-encoding"),
        ("/rooms/".to_string(), "empty room id"),
        (format!("/rooms/{long}"), "long"),
        ("/rooms/a%0Ab".to_string(), "control"),
    ] {
        let (status, body) = open(s.addr(), &path, &[]).await.expect_err("refused");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid room id"), "{path}: {body}");
        assert!(body.to_lowercase().contains(why), "{path}: {body}");
    }

    // Origins: the server's own and listed ones pass; others get 403; no Origin passes.
    let own = format!("http://{}", s.addr());
    let (status, body) = open(s.addr(), "/rooms/lobby", &[("origin", "http://evil.test")])
        .await
        .expect_err("foreign origin refused");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allowed-origin http://evil.test"), "{body}");
    open(s.addr(), "/rooms/lobby", &[("origin", &own)])
        .await
        .expect("own origin");
    open(s.addr(), "/rooms/lobby", &[])
        .await
        .expect("no origin");
    s.shutdown(PATIENCE).await;

    let s = server(
        &rc,
        ServeOptions {
            allowed_origins: vec!["https://chat.test".into()],
            token: Some("s3cret".into()),
            ..ServeOptions::default()
        },
    )
    .await;
    for (path, headers) in [
        ("/rooms/lobby", vec![]),
        ("/rooms/lobby?token=wrong", vec![]),
        ("/rooms/lobby", vec![("authorization", "Bearer s3cre")]),
    ] {
        let (status, body) = open(s.addr(), path, &headers)
            .await
            .expect_err("no token, no socket");
        assert_eq!(status, 401, "{path} {headers:?}: {body}");
        assert!(body.contains("token"), "{body}");
    }
    let (status, _) = open(
        s.addr(),
        "/rooms/lobby?token=s3cret",
        &[("origin", "https://other.test")],
    )
    .await
    .expect_err("a token does not lift the origin check");
    assert_eq!(status, 403);
    let mut a = open(
        s.addr(),
        "/rooms/lobby?token=s3cret",
        &[("origin", "https://chat.test")],
    )
    .await
    .expect("token in the query, listed origin");
    let mut b = open(
        s.addr(),
        "/rooms/lobby",
        &[("authorization", "Bearer s3cret")],
    )
    .await
    .expect("token as a bearer");
    let wa = next_json(&mut a).await;
    let wb = next_json(&mut b).await;
    b.send(Message::text("with a token")).await.expect("send");
    let v = next_broadcast(&mut a).await;
    assert_eq!(v["data"], "with a token", "{v}");
    assert_eq!(v["from"], wb["connection"], "{v}");
    assert_ne!(wa["connection"], wb["connection"]);

    let scrape = s.metrics_text().await;
    assert_eq!(
        sample(&scrape, "roomcast_ws_refused_total{reason=\"token\"}"),
        3.0
    );
    assert_eq!(
        sample(&scrape, "roomcast_ws_refused_total{reason=\"origin\"}"),
        1.0
    );
    s.shutdown(PATIENCE).await;
    rc.shutdown(PATIENCE).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_large_frame_closes_with_1009_and_a_slow_client_with_1008() {
    let redis = RedisServer::start();
    // The slow client's instance queues 4 messages per client: one that does not read
    // overflows at once. The reader and the writer are on another instance.
    let rc = instance(
        &redis,
        Options {
            member_queue: 4,
            ..instance_options()
        },
    )
    .await;
    // The reader reads only after the writer sent all 16 MB: its queue holds them all.
    let other = instance(
        &redis,
        Options {
            member_queue_bytes: 32 << 20,
            ..instance_options()
        },
    )
    .await;
    let max = 16_000;
    let options = ServeOptions {
        max_frame_bytes: max,
        // A client that stops reading is found out by its queue, not by this.
        send_timeout: Duration::from_secs(600),
        ..ServeOptions::default()
    };
    let s = server(&rc, options.clone()).await;
    let s2 = server(&other, options).await;

    let (mut big, _) = join(s.addr(), "sizes").await;
    big.send(Message::text("x".repeat(max)))
        .await
        .expect("send");
    big.send(Message::text("y".repeat(max + 1)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut big).await, Some(CloseCode::Size));
    // Far over the limit: the WebSocket layer cuts it off; still 1009.
    let (mut huge, _) = join(s.addr(), "sizes").await;
    huge.send(Message::text("h".repeat(max * 3)))
        .await
        .expect("send");
    assert_eq!(close_code(&mut huge).await, Some(CloseCode::Size));

    // The slow client stops reading; a reader in the same room takes everything.
    let (mut slow, _) = join(s.addr(), "firehose").await;
    let (mut reader, _) = join(s2.addr(), "firehose").await;
    let (mut writer, _) = join(s2.addr(), "firehose").await;
    // 16 MB: more than the slow client's socket buffers hold, so its queue overflows even
    // if the server could write as fast as messages come.
    let n = 1000;
    let payload = "z".repeat(max - 10);
    for i in 0..n {
        writer
            .send(Message::text(format!("{i:05}{payload}")))
            .await
            .expect("send");
    }
    for i in 0..n {
        let v = next_broadcast(&mut reader).await;
        let data = v["data"].as_str().expect("data");
        assert_eq!(&data[..5], format!("{i:05}"), "in order, none lost");
    }
    // All of it went to the slow client's queue too; it reads now, and is told to go.
    assert_eq!(close_code(&mut slow).await, Some(CloseCode::Policy));
    let scrape = s.metrics_text().await;
    assert_eq!(sample(&scrape, "roomcast_ws_closed_slow_total"), 1.0);
    assert_eq!(sample(&scrape, "roomcast_ws_closed_too_large_total"), 2.0);
    s.shutdown(PATIENCE).await;
    s2.shutdown(PATIENCE).await;
    rc.shutdown(PATIENCE).await.expect("shutdown");
    other.shutdown(PATIENCE).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_messages_flow_and_healthz_tells_the_cause() {
    let mut redis = RedisServer::start();
    let rc = instance(&redis, instance_options()).await;
    let s = server(&rc, ServeOptions::default()).await;
    let (status, body) = http_get(s.addr(), "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, page) = http_get(s.addr(), "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>roomcast</title>"), "the chat page");

    let (status, before) = http_get(s.addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "roomcast_ws_clients"), 0.0);
    let published = sample(&before, "roomcast_published_total");

    let (mut a, _) = join(s.addr(), "metrics").await;
    let (mut b, _) = join(s.addr(), "metrics").await;
    for i in 0..10 {
        a.send(Message::text(format!("m{i}"))).await.expect("send");
    }
    for i in 0..10 {
        assert_eq!(next_broadcast(&mut b).await["data"], format!("m{i}"));
    }
    let (_, after) = http_get(s.addr(), "/metrics").await;
    assert_eq!(sample(&after, "roomcast_ws_clients"), 2.0);
    assert_eq!(sample(&after, "roomcast_ws_accepted_total"), 2.0);
    assert_eq!(sample(&after, "roomcast_ws_frames_received_total"), 10.0);
    // 10 messages and 2 joins at least (a leave may not be there yet).
    assert!(sample(&after, "roomcast_published_total") >= published + 12.0);
    assert!(sample(&after, "roomcast_delivered_total") >= 10.0);
    assert!(sample(&after, "roomcast_ws_frames_sent_total") >= 12.0);
    assert_eq!(sample(&after, "roomcast_rooms_live"), 1.0);
    assert_eq!(sample(&after, "roomcast_members"), 2.0);
    assert!(sample(&after, "roomcast_links_up") >= 2.0);
    assert_eq!(sample(&after, "roomcast_links_down"), 0.0);

    // Redis goes away: the health check fails with the cause, and the links are counted down.
    redis.stop();
    let (status, body) = http_get(s.addr(), "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("unhealthy: "), "{body}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, scrape) = http_get(s.addr(), "/metrics").await;
        if sample(&scrape, "roomcast_links_down") >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "links never counted down:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A graceful shutdown sends a close frame (1001).
    s.shutdown(PATIENCE).await;
    assert_eq!(close_code(&mut a).await, Some(CloseCode::Away));
    let _ = rc.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_round_trip_is_a_histogram() {
    let redis = RedisServer::start();
    let rc = instance(&redis, instance_options()).await;
    let s = server(&rc, ServeOptions::default()).await;
    // Every health check sends a probe through Redis back to the subscriber.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = http_get(s.addr(), "/healthz").await;
        assert_eq!(status, 200);
        let scrape = s.metrics_text().await;
        let count = sample(&scrape, "roomcast_probe_round_trip_seconds_count");
        if count >= 1.0 {
            let inf = sample(
                &scrape,
                "roomcast_probe_round_trip_seconds_bucket{le=\"+Inf\"}",
            );
            assert_eq!(inf, count, "{scrape}");
            break;
        }
        assert!(Instant::now() < deadline, "no probe observed:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown(PATIENCE).await;
    rc.shutdown(PATIENCE).await.expect("shutdown");
}
