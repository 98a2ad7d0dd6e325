//! Hostile peers: the real `roomcast` crate on tokio against a fake "Redis" on 127.0.0.1 that
//! the test controls. The fake speaks enough RESP2/RESP3 to be a working pub/sub server
//! (handshake, PING, SUBSCRIBE, UNSUBSCRIBE, PUBLISH with fan-out, passwords), and on
//! command it lies: garbage, lengths of 2^63, aggregates nested thousands deep, unknown RESP3
//! types and attributes, pushes for channels nobody subscribed, silence, one byte at a time,
//! connections closed mid-frame, and refusals (`-NOAUTH`, `-WRONGPASS`, `-ERR unknown
//! command 'HELLO'`).
//!
//! For each: no panic, memory bounded (the core's input and output gauges), a typed event or
//! error naming the cause, the link re-established where that makes sense, and the other links
//! and rooms working throughout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use roomcast::core::envelope::{self, MessageType};
use roomcast::core::{DropCause, LinkError, LinkId, Protocol};
use roomcast::{Builder, Config, Error, Event, EventStream, Membership, PubSubMessage, Roomcast};

#[path = "hostile_server/fake_redis.rs"]
mod fake_redis;
use fake_redis::{pubsub_frame, Act, FakeRedis};

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(30);

const ROOM: &str = "hub/abc";
const ROOM_CHANNEL: &[u8] = b"graphwiz:room:hub:abc";

// ----- the instance under test -----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Subscriber link 0 and publish links 1 and 2; presence off (the fake has no scripts);
/// short timeouts so that faults show quickly.
fn config(fake: &FakeRedis, protocol: Protocol) -> Config {
    let mut c = Config::from_url(&fake.url()).expect("url");
    c.pool_size = 2;
    c.presence = false;
    c.connect_timeout = Duration::from_secs(2);
    c.reply_timeout = Duration::from_secs(3);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(300);
    c.server.protocol = protocol;
    c
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits for the first event that `pick` maps to something; returns it and everything seen.
async fn expect_event<T>(
    events: &mut EventStream,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> (T, Vec<Event>) {
    let mut seen = Vec::new();
    let end = Instant::now() + PATIENCE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(&e) {
                    return (t, seen);
                }
                seen.push(e);
            }
            Ok(None) => panic!("events ended while waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
        }
    }
}

/// An instance with one member in [`ROOM`], live, and its event stream.
struct Instance {
    rc: Roomcast,
    events: EventStream,
    alice: Membership,
    max_frame_bytes: usize,
    sent: u32,
}

impl Instance {
    async fn connect(config: Config) -> Instance {
        let max_frame_bytes = config.max_frame_bytes;
        let rc = within("connect", Builder::new(config).connect_tokio())
            .await
            .expect("connects to the fake");
        Self::with(rc, max_frame_bytes).await
    }

    async fn with(rc: Roomcast, max_frame_bytes: usize) -> Instance {
        let events = rc.events().await.expect("events");
        let alice = rc.join(ROOM, "alice").await.expect("join");
        within("room live", alice.wait_live()).await;
        let mut i = Instance {
            rc,
            events,
            alice,
            max_frame_bytes,
            sent: 0,
        };
        i.round_trip().await;
        i
    }

    /// Publishes through the fake and waits for the member to receive it: the rooms work.
    /// Publishing while a link recovers may fail (the outcome is unknown); it retries.
    async fn round_trip(&mut self) {
        let end = Instant::now() + PATIENCE;
        loop {
            self.sent += 1;
            let text = format!("message {}", self.sent);
            let sent = self
                .rc
                .publish(PubSubMessage::broadcast(ROOM, text.clone()))
                .await;
            if sent.is_ok() {
                let got = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(m) = self.alice.next().await {
                        if m.data == text.as_bytes() {
                            return true;
                        }
                    }
                    false
                })
                .await;
                if got == Ok(true) {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "the room does not work: last publish {sent:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The core held no more than a frame's worth of input per link.
    async fn assert_bounded(&self) {
        let m = self.rc.metrics().await.expect("metrics");
        assert!(
            m.buffered_input <= 3 * (self.max_frame_bytes + 2),
            "input buffered: {}",
            m.buffered_input
        );
        assert!(
            m.buffered_output < 1 << 20,
            "output buffered: {}",
            m.buffered_output
        );
    }

    /// Waits for `link` to go down with a cause `check` accepts and come back; no other link
    /// may go down meanwhile. Then the room must work again.
    async fn expect_recovery(
        &mut self,
        link: u16,
        check: impl Fn(&LinkError) -> bool,
    ) -> LinkError {
        let link = LinkId(link);
        let (cause, before) = expect_event(&mut self.events, "LinkDown", |e| match e {
            Event::LinkDown { link: l, cause, .. } if *l == link => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert!(
            check(&cause),
            "{link} went down for another reason: {cause:?}"
        );
        let (_, during) = expect_event(&mut self.events, "LinkUp", |e| match e {
            Event::LinkUp { link: l, .. } if *l == link => Some(()),
            _ => None,
        })
        .await;
        for e in before.iter().chain(&during) {
            assert!(
                !matches!(e, Event::LinkDown { .. }),
                "another link went down: {e:?}"
            );
        }
        self.assert_bounded().await;
        within("room live again", self.alice.wait_live()).await;
        self.round_trip().await;
        cause
    }
}

fn protocol_error(needle: &'static str) -> impl Fn(&LinkError) -> bool {
    move |e| match e {
        LinkError::Protocol(text) => text.contains(needle),
        _ => false,
    }
}

/// Injects `bytes` on `link` after the handshake and expects a typed protocol error naming
/// `needle`, recovery, and working rooms; on each protocol, on the subscriber and a
/// publisher.
fn survives(bytes: &[u8], needle: &'static str) {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let fake = FakeRedis::start(|_, _| Act::Normal);
        runtime().block_on(async {
            let mut i = Instance::connect(config(&fake, protocol)).await;
            for link in [0u16, 1] {
                fake.inject(link, bytes);
                let cause = i.expect_recovery(link, protocol_error(needle)).await;
                assert!(
                    cause.to_string().contains("the link was reopened"),
                    "{cause}"
                );
            }
            assert!(fake.attempts(0) >= 2 && fake.attempts(1) >= 2);
            let m = i.rc.metrics().await.unwrap();
            assert_eq!(m.link_failures, 2, "{m:?}");
        });
    }
}

// ----- the tests -----

#[test]
fn garbage_is_a_protocol_error_and_the_link_comes_back() {
    survives(
        b"this is not RESP at all\r\n",
        "unknown RESP type byte 0x74",
    );
}

#[test]
fn a_line_without_end_is_refused_at_64_kib() {
    let mut flood = b"+".to_vec();
    flood.extend(std::iter::repeat_n(b'x', 1 << 20));
    survives(&flood, "longer than 64 KiB");
}

#[test]
fn a_bulk_length_of_2_pow_63_is_refused_at_once() {
    // 2^63 - 1 is the largest i64: over max_frame_bytes. The data never has to arrive.
    survives(b"$9223372036854775807\r\n", "over max_frame_bytes");
    // 2^63 itself is no i64 at all.
    survives(b"$9223372036854775808\r\nxyz", "bad length");
}

#[test]
fn an_array_length_of_2_pow_63_is_refused_at_once() {
    survives(b"*9223372036854775807\r\n", "over max_frame_elements");
    survives(b"*1\r\n*9223372036854775808\r\n", "bad length");
}

#[test]
fn aggregates_nested_thousands_deep_are_refused_without_recursion() {
    survives("*1\r\n".repeat(10_000).as_bytes(), "max_frame_depth");
    survives(">1\r\n%1\r\n".repeat(5_000).as_bytes(), "max_frame_depth");
}

#[test]
fn unknown_resp3_types_are_protocol_errors() {
    survives(b"@3\r\nabc\r\n", "unknown RESP type byte 0x40");
    // A streamed string (RESP3 `$?`) is not something Redis sends to roomcast.
    survives(b"$?\r\n;3\r\nabc\r\n;0\r\n", "not valid RESP");
    survives(b"?\r\n", "streamed RESP3 frames are not supported");
}

fn message_payload(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    envelope::encode(
        &mut out,
        ROOM,
        MessageType::Broadcast,
        text.as_bytes(),
        None,
        1,
        None,
    );
    out
}

#[test]
fn resp3_attributes_and_unknown_pushes_are_ignored() {
    let fake = FakeRedis::start(|_, _| Act::Normal);
    runtime().block_on(async {
        let mut i = Instance::connect(config(&fake, Protocol::Resp3)).await;
        // A push of a kind roomcast does not use (client tracking) and a message push
        // annotated with an attribute: the attribute is ignored, the message delivered.
        let mut bytes = b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec();
        bytes.extend_from_slice(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n");
        bytes.extend(pubsub_frame(
            true,
            b"message",
            ROOM_CHANNEL,
            Ok(&message_payload("annotated")),
        ));
        fake.inject(0, &bytes);
        let m = within("annotated message", i.alice.next())
            .await
            .expect("a message");
        assert_eq!(&m.data[..], b"annotated");
        i.round_trip().await;
        let m = i.rc.metrics().await.unwrap();
        assert_eq!(m.link_failures, 0);
    });
    // A server that annotates every reply and push, from the handshake on.
    let fake = FakeRedis::start(|_, _| Act::Annotated);
    runtime().block_on(async {
        let mut i = Instance::connect(config(&fake, Protocol::Resp3)).await;
        for _ in 0..3 {
            i.round_trip().await;
        }
        assert!(i.rc.health_check(PATIENCE).await.is_ok());
        assert_eq!(i.rc.metrics().await.unwrap().link_failures, 0);
    });
}

#[test]
fn a_push_for_a_channel_nobody_subscribed_is_dropped_and_counted() {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let resp3 = protocol == Protocol::Resp3;
        let fake = FakeRedis::start(|_, _| Act::Normal);
        runtime().block_on(async {
            let mut i = Instance::connect(config(&fake, protocol)).await;
            let mut bytes = Vec::new();
            // A room of ours that this instance has no member in, a channel of another
            // application, a room channel that is not canonical, and our room with garbage.
            for channel in [
                &b"graphwiz:room:nobody"[..],
                b"another-app:chat",
                b"graphwiz:room:a%3ab",
            ] {
                bytes.extend(pubsub_frame(
                    resp3,
                    b"message",
                    channel,
                    Ok(&message_payload("x")),
                ));
            }
            bytes.extend(pubsub_frame(
                resp3,
                b"message",
                ROOM_CHANNEL,
                Ok(b"\xff\xff garbage"),
            ));
            fake.inject(0, &bytes);
            let (cause, _) = expect_event(&mut i.events, "Dropped(Malformed)", |e| match e {
                Event::Dropped {
                    cause: DropCause::Malformed(why),
                    room,
                } => Some((why.clone(), room.clone())),
                _ => None,
            })
            .await;
            assert_eq!(cause.1.as_ref().map(|r| r.as_str()), Some(ROOM));
            i.round_trip().await;
            let m = i.rc.metrics().await.unwrap();
            assert_eq!(m.dropped_unknown_channel, 3, "{m:?}");
            assert_eq!(m.dropped_malformed, 1);
            assert_eq!(m.link_failures, 0, "nothing here breaks the link");
        });
    }
}

#[test]
fn a_server_that_never_answers_the_handshake_times_out() {
    // Every attempt of the subscriber is met with silence: connecting fails with a typed
    // error that names the setting.
    let fake = FakeRedis::start(|link, _| if link == 0 { Act::Silent } else { Act::Normal });
    runtime().block_on(async {
        let started = Instant::now();
        let err = within(
            "connect fails",
            Builder::new(config(&fake, Protocol::Resp2)).connect_tokio(),
        )
        .await
        .expect_err("no handshake, no instance");
        assert_eq!(err, Error::Connect(LinkError::ConnectTimeout));
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        assert!(started.elapsed() < PATIENCE);
    });
    // Silence on the first attempt of a publish link only: it is retried and comes up.
    let fake = FakeRedis::start(|link, n| {
        if link == 2 && n == 0 {
            Act::Silent
        } else {
            Act::Normal
        }
    });
    runtime().block_on(async {
        let (rc, driver) = Builder::new(config(&fake, Protocol::Resp3))
            .build(Arc::new(roomcast::runtime::tokio::TokioRuntime))
            .unwrap();
        tokio::spawn(driver);
        let mut events = rc.events().await.unwrap();
        let (cause, _) = expect_event(&mut events, "LinkDown", |e| match e {
            Event::LinkDown { link, cause, .. } if *link == LinkId(2) => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert_eq!(cause, LinkError::ConnectTimeout);
        within("ready after retry", rc.wait_ready()).await.unwrap();
        assert_eq!(fake.attempts(2), 2);
        Instance::with(rc, Config::default().max_frame_bytes).await;
    });
}

#[test]
fn a_server_that_answers_one_byte_at_a_time_works() {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let fake = FakeRedis::start(|_, _| Act::Dribble);
        runtime().block_on(async {
            let mut i = Instance::connect(config(&fake, protocol)).await;
            for _ in 0..3 {
                i.round_trip().await;
            }
            i.assert_bounded().await;
            let m = i.rc.metrics().await.unwrap();
            assert_eq!(m.link_failures, 0);
            assert!(i.rc.health_check(PATIENCE).await.is_ok());
        });
    }
}

#[test]
fn a_connection_closed_mid_frame_is_reopened() {
    // During the handshake: the first attempt of link 1 gets "+O" and a close.
    let fake = FakeRedis::start(|link, n| {
        if link == 1 && n == 0 {
            Act::CloseMidFrame
        } else {
            Act::Normal
        }
    });
    runtime().block_on(async {
        let (rc, driver) = Builder::new(config(&fake, Protocol::Resp2))
            .build(Arc::new(roomcast::runtime::tokio::TokioRuntime))
            .unwrap();
        tokio::spawn(driver);
        let mut events = rc.events().await.unwrap();
        let (cause, _) = expect_event(&mut events, "LinkDown", |e| match e {
            Event::LinkDown { link, cause, .. } if *link == LinkId(1) => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert!(
            matches!(&cause, LinkError::Io(why) if why.contains("closed")),
            "{cause:?}"
        );
        within("ready after retry", rc.wait_ready()).await.unwrap();
        let mut i = Instance::with(rc, Config::default().max_frame_bytes).await;
        // In the middle of a message to the subscriber.
        let frame = pubsub_frame(false, b"message", ROOM_CHANNEL, Ok(&message_payload("cut")));
        fake.inject_and_close(0, &frame[..frame.len() - 7]);
        let cause = i
            .expect_recovery(0, |e| matches!(e, LinkError::Io(_)))
            .await;
        assert!(cause.to_string().contains("closed"), "{cause}");
        // And on a publish link.
        fake.inject_and_close(1, b"$5\r\nhel");
        i.expect_recovery(1, |e| matches!(e, LinkError::Io(_)))
            .await;
    });
}

#[test]
fn refusals_in_the_handshake_are_typed_errors() {
    runtime().block_on(async {
        // No password, the server wants one.
        let fake = FakeRedis::start_with(|_, _| Act::Normal, Some("s3cret"), false);
        let err = within("NOAUTH", Builder::new(config(&fake, Protocol::Resp2)).connect_tokio())
            .await
            .expect_err("refused");
        assert!(matches!(&err, Error::Connect(LinkError::Auth(t)) if t.starts_with("NOAUTH")), "{err:?}");
        assert!(err.to_string().contains("check the user and password"), "{err}");

        // A wrong password, in both protocols.
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            let mut c = config(&fake, protocol);
            c.server.password = Some(roomcast::core::Secret::new("wrong"));
            let err = within("WRONGPASS", Builder::new(c).connect_tokio())
                .await
                .expect_err("refused");
            assert!(
                matches!(&err, Error::Connect(LinkError::Auth(t)) if t.starts_with("WRONGPASS")),
                "{protocol:?}: {err:?}"
            );
        }

        // RESP3 asked of a server without HELLO.
        let old = FakeRedis::start_with(|_, _| Act::Normal, None, true);
        let err = within("no HELLO", Builder::new(config(&old, Protocol::Resp3)).connect_tokio())
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, Error::Connect(LinkError::NoResp3(t)) if t.contains("unknown command 'HELLO'")),
            "{err:?}"
        );
        assert!(err.to_string().contains("protocol=resp2"), "{err}");
        // RESP2 works with that server.
        Instance::connect(config(&old, Protocol::Resp2)).await;

        // A handshake refused with an error Redis does not send: still typed.
        let odd = FakeRedis::start(|link, n| {
            if link == 0 && n == 0 {
                Act::HandshakeReply(b"-ERR something else entirely\r\n".to_vec())
            } else {
                Act::Normal
            }
        });
        let err = within("odd refusal", Builder::new(config(&odd, Protocol::Resp2)).connect_tokio())
            .await
            .expect_err("refused");
        assert_eq!(
            err,
            Error::Connect(LinkError::Handshake(
                "the handshake's CLIENT SETNAME: ERR something else entirely".into()
            ))
        );
        assert!(
            err.to_string()
                .contains("Redis refused the handshake's CLIENT SETNAME: ERR something"),
            "the error names the step: {err}"
        );
    });
}

#[test]
fn links_come_back_once_the_password_is_right() {
    let fake = FakeRedis::start_with(|_, _| Act::Normal, Some("new"), false);
    runtime().block_on(async {
        let mut c = config(&fake, Protocol::Resp2);
        c.server.password = Some(roomcast::core::Secret::new("old"));
        let (rc, driver) = Builder::new(c)
            .build(Arc::new(roomcast::runtime::tokio::TokioRuntime))
            .unwrap();
        tokio::spawn(driver);
        let mut events = rc.events().await.unwrap();
        let (cause, _) = expect_event(&mut events, "LinkDown", |e| match e {
            Event::LinkDown { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert!(matches!(cause, LinkError::Auth(_)), "{cause:?}");
        // The operator fixes the server: the backoff retries find it.
        fake.set_password(Some("old"));
        within("links ready", async {
            while rc.metrics().await.unwrap().links_ready < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Instance::with(rc, Config::default().max_frame_bytes).await;
    });
}
