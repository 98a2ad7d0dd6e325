//! Hostile callers: every public API refuses bad input with a typed error before anything
//! changes. The same inputs go to the sans-IO [`Hub`], to the async [`Roomcast`] handle
//! connected to a private redis-server, and to a standalone `Roomcast`.
//!
//! Bad input: empty, over-long and control-character room and connection ids, payloads over
//! the configured maximum, and anything after shutdown.

use std::time::{Duration, Instant};

use roomcast::core::naming::{IdKind, NameError};
use roomcast::core::{
    Config, Event, Hub, Identity, InstanceId, LinkId, MemberError, PresenceError, Publish,
    PublishError, PublishId,
};
use roomcast::{Builder, Error, MessageType, Metrics, PubSubMessage, Roomcast};
use roomcast_tests::RedisServer;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// Room ids no API may accept, with the error each must name (limit: 256 bytes).
fn bad_ids(kind: IdKind) -> Vec<(String, NameError)> {
    vec![
        (String::new(), NameError::Empty { what: kind }),
        (
            "r".repeat(257),
            NameError::TooLong {
                what: kind,
                len: 257,
                max: 256,
            },
        ),
        (
            "x".repeat(5000),
            NameError::TooLong {
                what: kind,
                len: 5000,
                max: 256,
            },
        ),
        (
            "a\nb".into(),
            NameError::ControlChar {
                what: kind,
                index: 1,
            },
        ),
        (
            "\0".into(),
            NameError::ControlChar {
                what: kind,
                index: 0,
            },
        ),
        (
            "tab\there".into(),
            NameError::ControlChar {
                what: kind,
                index: 3,
            },
        ),
        (
            "é\u{85}".into(),
            NameError::ControlChar {
                what: kind,
                index: 2,
            },
        ),
        (
            "del\u{7f}".into(),
            NameError::ControlChar {
                what: kind,
                index: 3,
            },
        ),
    ]
}

// ----- the sans-IO hub -----

fn hub() -> (Hub, Instant) {
    let now = Instant::now();
    let id = Identity {
        instance: InstanceId(0xbad),
        epoch: 1,
    };
    let mut hub = Hub::new(Config::default(), id, now).expect("default config");
    // Links stay unconnected: nothing depends on Redis here.
    while hub.poll_link_request().is_some() {}
    (hub, now)
}

/// Everything the caller can observe of a hub, to compare before and after a refusal.
fn snapshot(hub: &mut Hub) -> (Metrics, Vec<String>, usize) {
    let mut rooms: Vec<String> = hub.rooms().map(|(r, s)| format!("{r:?}={s:?}")).collect();
    rooms.sort();
    let mut m = hub.metrics();
    // A refusal is counted; that is the one change it may make.
    m.publish_refused = 0;
    (m, rooms, hub.buffered_output())
}

/// Nothing to send, no link to open, no event.
fn assert_quiet(hub: &mut Hub) {
    assert_eq!(hub.poll_transmit(), None);
    assert_eq!(hub.poll_link_request(), None);
    assert_eq!(hub.poll_event(), None);
}

fn publish<'a>(room: &'a str, data: &'a [u8], exclude: Option<&'a str>) -> Publish<'a> {
    Publish {
        room,
        message_type: MessageType::Broadcast,
        data,
        exclude_connection: exclude,
        timestamp: 1,
    }
}

#[test]
fn hub_refuses_bad_room_ids_everywhere() {
    let (mut hub, now) = hub();
    hub.join("lobby", "c1", now).unwrap();
    let _ = hub.poll_transmit();
    while hub.poll_event().is_some() {}
    let before = snapshot(&mut hub);
    for (id, want) in bad_ids(IdKind::Room) {
        assert_eq!(
            hub.check_room(&id),
            Err(MemberError::InvalidRoom(want.clone()))
        );
        assert_eq!(
            hub.join(&id, "c1", now),
            Err(MemberError::InvalidRoom(want.clone()))
        );
        assert_eq!(
            hub.leave(&id, "c1", now),
            Err(MemberError::InvalidRoom(want.clone()))
        );
        assert_eq!(
            hub.publish(&publish(&id, b"x", None), now),
            Err(PublishError::InvalidRoom(want.clone()))
        );
        assert_eq!(
            hub.presence_room(&id),
            Err(PresenceError::Invalid(want.clone()))
        );
        assert_eq!(hub.room_state(&id), None);
        assert!(hub.members(&id).is_empty());
        assert_eq!(snapshot(&mut hub), before, "{id:?} changed the hub");
        assert_quiet(&mut hub);
    }
    assert_eq!(hub.metrics().publish_refused, 8);
    assert_eq!(hub.members("lobby").len(), 1);
}

#[test]
fn hub_refuses_bad_connection_ids_everywhere() {
    let (mut hub, now) = hub();
    hub.join("lobby", "c1", now).unwrap();
    let _ = hub.poll_transmit();
    while hub.poll_event().is_some() {}
    let before = snapshot(&mut hub);
    for (id, want) in bad_ids(IdKind::Connection) {
        let member = MemberError::InvalidConnection(want.clone());
        assert_eq!(hub.join("lobby", &id, now), Err(member.clone()));
        assert_eq!(hub.join("fresh", &id, now), Err(member.clone()));
        assert_eq!(hub.leave("lobby", &id, now), Err(member.clone()));
        assert_eq!(hub.disconnect(&id, now), Err(member));
        assert_eq!(
            hub.publish(&publish("lobby", b"x", Some(&id)), now),
            Err(PublishError::InvalidExclude(want.clone()))
        );
        assert_eq!(
            hub.presence_connection(&id),
            Err(PresenceError::Invalid(want.clone()))
        );
        assert!(hub.rooms_of(&id).is_empty());
        assert_eq!(snapshot(&mut hub), before, "{id:?} changed the hub");
        assert_quiet(&mut hub);
    }
    // A room the bad joins named was never created.
    assert_eq!(hub.room_state("fresh"), None);
}

#[test]
fn hub_refuses_payloads_over_the_maximum_without_using_a_number() {
    let now = Instant::now();
    let config = Config {
        max_envelope_bytes: 1024,
        max_frame_bytes: 4096,
        ..Config::default()
    };
    let id = Identity {
        instance: InstanceId(1),
        epoch: 1,
    };
    let mut hub = Hub::new(config, id, now).unwrap();
    while hub.poll_link_request().is_some() {}
    let before = snapshot(&mut hub);
    for (room, len, exclude) in [
        ("r", 1024, None),
        ("r", 10 << 20, None),
        ("r", 1024 - 60, Some("x".repeat(40))),
    ] {
        let data = vec![7u8; len];
        let got = hub.publish(&publish(room, &data, exclude.as_deref()), now);
        let Err(PublishError::TooLarge { len: l, max }) = got else {
            panic!("{len} bytes: {got:?}");
        };
        assert_eq!(max, 1024);
        assert!(l > max);
        assert!(got.unwrap_err().to_string().contains("max_envelope_bytes"));
        assert_eq!(snapshot(&mut hub), before);
        assert_quiet(&mut hub);
    }
    // The largest payload that fits is accepted, and it is publish number 1: the refusals
    // used none.
    let fits = 1024 - roomcast::core::envelope::encoded_len("r", 0, None, true);
    let data = vec![7u8; fits];
    assert_eq!(
        hub.publish(&publish("r", &data, None), now),
        Ok(PublishId(1))
    );
    assert_eq!(hub.metrics().publish_refused, 3);
}

#[test]
fn hub_refuses_everything_after_shutdown() {
    let (mut hub, now) = hub();
    hub.join("lobby", "c1", now).unwrap();
    hub.begin_shutdown(now);
    while hub.poll_event().is_some() {}
    let _ = hub.poll_transmit();
    let before = snapshot(&mut hub);
    assert_eq!(hub.join("lobby", "c2", now), Err(MemberError::Shutdown));
    assert_eq!(hub.join("", "", now), Err(MemberError::Shutdown));
    assert_eq!(
        hub.publish(&publish("lobby", b"late", None), now),
        Err(PublishError::Shutdown)
    );
    assert_eq!(snapshot(&mut hub), before);
    assert_quiet(&mut hub);
    hub.close(now);
    assert_eq!(
        hub.publish(&publish("lobby", b"later", None), now),
        Err(PublishError::Shutdown)
    );
    assert_eq!(hub.join("lobby", "c3", now), Err(MemberError::Shutdown));
}

#[test]
fn hub_ignores_links_that_do_not_exist() {
    // A confused adapter: inputs for a link the hub never asked for change nothing.
    let (mut hub, now) = hub();
    let before = snapshot(&mut hub);
    for link in [LinkId(11), LinkId(99), LinkId(u16::MAX)] {
        hub.handle_connected(link, now);
        // A `BytesMut` (this crate does not depend on `bytes`; the call fixes the type).
        let mut buf = From::from(&b"+OK\r\n*3\r\n$7\r\nmessage\r\n"[..]);
        hub.handle_input(link, &mut buf, now);
        assert!(buf.is_empty(), "input for a missing link is dropped");
        hub.handle_disconnected(link, "gone", now);
    }
    assert_eq!(snapshot(&mut hub), before);
    // Input for a link that is not connected yet is dropped too; its bytes came from a
    // socket of the hub's, so `bytes_in` counts them, and nothing else changes.
    let mut buf = From::from(&b"+OK\r\n"[..]);
    hub.handle_input(LinkId(0), &mut buf, now);
    assert!(buf.is_empty());
    let (mut m, rooms, out) = snapshot(&mut hub);
    assert_eq!(m.bytes_in, before.0.bytes_in + 5);
    m.bytes_in = before.0.bytes_in;
    assert_eq!((m, rooms, out), before);
    assert_quiet(&mut hub);
}

#[test]
fn hub_rejects_bad_configuration_with_a_named_field() {
    let now = Instant::now();
    let id = Identity {
        instance: InstanceId(1),
        epoch: 1,
    };
    for (config, field) in [
        (
            Config {
                pool_size: 0,
                ..Config::default()
            },
            "pool_size",
        ),
        (
            Config {
                channel_prefix: "has space".into(),
                ..Config::default()
            },
            "channel_prefix",
        ),
        (
            Config {
                max_room_id_bytes: 0,
                ..Config::default()
            },
            "max_room_id_bytes",
        ),
        (
            Config {
                max_frame_depth: 100_000,
                ..Config::default()
            },
            "max_frame_depth",
        ),
    ] {
        let err = Hub::new(config, id, now).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

// ----- the async handle -----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// What the application can see of an instance: counters with refusals left out.
async fn state(rc: &Roomcast) -> (Metrics, Vec<String>) {
    let mut m = rc.metrics().await.unwrap();
    m.publish_refused = 0;
    m.bytes_in = 0;
    m.bytes_out = 0;
    // Keepalives come and go on their own.
    m.buffered_input = 0;
    m.buffered_output = 0;
    let conns = rc
        .local_connections("lobby")
        .await
        .unwrap()
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    (m, conns)
}

/// The same refusals on any `Roomcast`, connected or standalone.
/// Returns the one membership it made, which keeps the lobby subscribed.
async fn refuses_bad_input(rc: &Roomcast, max_envelope: usize) -> roomcast::Membership {
    let lobby = within("join lobby", rc.join("lobby", "c1")).await.unwrap();
    within("lobby live", lobby.wait_live()).await;
    let before = state(rc).await;
    for (id, want) in bad_ids(IdKind::Room) {
        let member = Error::Member(MemberError::InvalidRoom(want.clone()));
        let got = rc.join(&id, "c2").await;
        assert_eq!(got.as_ref().err(), Some(&member), "join {id:?}");
        assert_eq!(rc.leave(&id, "c1").await, Err(member), "leave {id:?}");
        let got = rc.subscribe_room(&id).await;
        assert!(
            matches!(got, Err(Error::Member(MemberError::InvalidRoom(_)))),
            "subscribe_room {id:?}"
        );
        assert_eq!(
            rc.publish(PubSubMessage::broadcast(id.as_str(), "x")).await,
            Err(Error::Publish(PublishError::InvalidRoom(want.clone()))),
            "publish {id:?}"
        );
        assert_eq!(rc.room_state(&id).await, Ok(None));
        assert_eq!(state(rc).await, before, "{id:?} changed the instance");
    }
    for (id, want) in bad_ids(IdKind::Connection) {
        let member = Error::Member(MemberError::InvalidConnection(want.clone()));
        let got = rc.join("lobby", &id).await;
        assert_eq!(got.as_ref().err(), Some(&member), "join as {id:?}");
        assert_eq!(rc.leave("lobby", &id).await, Err(member.clone()));
        assert_eq!(rc.disconnect(&id).await, Err(member));
        assert_eq!(
            rc.publish(PubSubMessage::broadcast("lobby", "x").excluding(&id))
                .await,
            Err(Error::Publish(PublishError::InvalidExclude(want.clone()))),
            "publish excluding {id:?}"
        );
        assert_eq!(state(rc).await, before, "{id:?} changed the instance");
    }
    for len in [max_envelope, 4 * max_envelope] {
        let got = rc
            .publish(PubSubMessage::broadcast("lobby", vec![0u8; len]))
            .await;
        assert!(
            matches!(got, Err(Error::Publish(PublishError::TooLarge { max, .. })) if max == max_envelope),
            "{len} bytes: {got:?}"
        );
    }
    assert_eq!(state(rc).await, before);
    lobby
}

/// Presence queries validate their ids too.
async fn refuses_bad_presence_ids(rc: &Roomcast) {
    for (id, want) in bad_ids(IdKind::Room) {
        assert_eq!(
            rc.room_connections(&id).await,
            Err(Error::Presence(PresenceError::Invalid(want)))
        );
    }
    for (id, want) in bad_ids(IdKind::Connection) {
        assert_eq!(
            rc.connection_exists(&id).await,
            Err(Error::Presence(PresenceError::Invalid(want)))
        );
    }
}

/// After shutdown every call fails with a typed error, and nothing hangs.
async fn refuses_after_shutdown(rc: &Roomcast) {
    within("shutdown", rc.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    let publish = within(
        "publish after shutdown",
        rc.publish(PubSubMessage::broadcast("lobby", "late")),
    )
    .await;
    assert!(
        matches!(
            publish,
            Err(Error::Closed | Error::Publish(PublishError::Shutdown))
        ),
        "{publish:?}"
    );
    let join = within("join after shutdown", rc.join("lobby", "c9")).await;
    assert!(
        matches!(
            join,
            Err(Error::Closed | Error::Member(MemberError::Shutdown))
        ),
        "{:?}",
        join.err()
    );
    let mut publisher = rc.publisher();
    let sent = within(
        "send after shutdown",
        publisher.send(PubSubMessage::broadcast("lobby", "x")),
    )
    .await;
    assert_eq!(sent, Err(Error::Closed));
    assert!(matches!(
        within("metrics after shutdown", rc.metrics()).await,
        Err(Error::Closed)
    ));
}

/// A `Publisher` returns what the limits refuse at once (nothing queued, nothing counted);
/// what only the driver finds (here: a bad id fed into the `Sink`, checked after batching) is
/// an `Event::PublishRefused` naming the room and the cause, and counted (when `counted`). A
/// good message sent
/// after each refusal arrives (the positive control), and nothing was published in between.
async fn publisher_reports_refusals(
    rc: &Roomcast,
    events: &mut roomcast::EventStream,
    max: usize,
    counted: bool,
) {
    use futures_util::{SinkExt, StreamExt};
    let before = rc.metrics().await.unwrap();
    let mut watch = rc.subscribe_room("refusals").await.unwrap();
    within("watch live", watch.wait_live()).await;
    let mut publisher = rc.publisher();
    let (bad_room, why) = bad_ids(IdKind::Room).swap_remove(0);
    assert_eq!(
        publisher
            .send(PubSubMessage::broadcast(bad_room.clone(), "x"))
            .await,
        Err(Error::Publish(PublishError::InvalidRoom(why.clone())))
    );
    let (bad_conn, why_conn) = bad_ids(IdKind::Connection).swap_remove(0);
    let mut excluding = PubSubMessage::broadcast("refusals", "x");
    excluding.exclude_connection = Some(bad_conn);
    assert_eq!(
        publisher
            .send_batch([PubSubMessage::broadcast("refusals", "first"), excluding])
            .await,
        Err(Error::Publish(PublishError::InvalidExclude(why_conn))),
        "one bad message refuses the batch"
    );
    let big = PubSubMessage::broadcast("refusals", vec![b'x'; max]);
    assert!(matches!(
        publisher.send(big).await,
        Err(Error::Publish(PublishError::TooLarge { max: m, .. })) if m == max
    ));
    assert_eq!(
        rc.metrics().await.unwrap().publish_refused,
        before.publish_refused
    );
    // Through the Sink: the driver refuses it and says so.
    publisher
        .feed(PubSubMessage::broadcast(bad_room.clone(), "x"))
        .await
        .unwrap();
    publisher
        .send(PubSubMessage::broadcast("refusals", "marker"))
        .await
        .unwrap();
    within("refusal reported", async {
        loop {
            match events.next().await.expect("events end") {
                Event::PublishRefused { room, cause } => {
                    assert_eq!(room, bad_room);
                    assert_eq!(cause, PublishError::InvalidRoom(why.clone()));
                    break;
                }
                _ => continue,
            }
        }
    })
    .await;
    let marker = within("marker", watch.next()).await.expect("watch ends");
    assert_eq!(
        &marker.data[..],
        b"marker",
        "the refused batch published nothing"
    );
    if counted {
        let after = rc.metrics().await.unwrap();
        assert_eq!(after.publish_refused, before.publish_refused + 1);
    }
}

#[test]
fn roomcast_with_redis_refuses_bad_input_and_calls_after_shutdown() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let config = Config {
            max_envelope_bytes: 4096,
            max_frame_bytes: 8192,
            ..Config::from_url(&server.url()).unwrap()
        };
        let rc = within("connect", Builder::new(config).connect_tokio())
            .await
            .unwrap();
        let mut events = rc.events().await.unwrap();
        let _lobby = refuses_bad_input(&rc, 4096).await;
        refuses_bad_presence_ids(&rc).await;
        // Redis never saw a bad id: only the lobby's channel exists.
        assert_eq!(
            server.channels("graphwiz:room:*"),
            vec!["graphwiz:room:lobby"]
        );
        // No link suffered from any of it.
        let m = rc.metrics().await.unwrap();
        assert_eq!(m.link_failures, 0);
        assert!(m.publish_refused >= 8 + 8 + 2);
        publisher_reports_refusals(&rc, &mut events, 4096, true).await;
        // The marker only.
        assert_eq!(rc.metrics().await.unwrap().published, m.published + 1);
        refuses_after_shutdown(&rc).await;
        use futures_util::StreamExt;
        while let Some(e) = within("events end", events.next()).await {
            assert!(
                !matches!(e, Event::LinkDown { .. }),
                "a refusal broke a link: {e:?}"
            );
        }
    });
}

#[test]
fn standalone_roomcast_refuses_the_same_bad_input() {
    runtime().block_on(async {
        // The configured limit, not the default one, as with Redis.
        let config = Config {
            max_envelope_bytes: 4096,
            ..Config::default()
        };
        let rc = roomcast::standalone(config).unwrap();
        let mut events = rc.events().await.unwrap();
        let _lobby = refuses_bad_input(&rc, 4096).await;
        refuses_bad_presence_ids(&rc).await;
        let m = rc.metrics().await.unwrap();
        assert!(m.publish_refused >= 8 + 8 + 2, "{}", m.publish_refused);
        publisher_reports_refusals(&rc, &mut events, 4096, true).await;
        assert_eq!(rc.metrics().await.unwrap().published, m.published + 1);
        refuses_after_shutdown(&rc).await;
    });
}

/// Id limits smaller than the defaults apply standalone too: every API refuses an id over
/// them, naming the configured maximum, and accepts one at it (the positive control).
#[test]
fn standalone_roomcast_applies_the_configured_id_limits() {
    runtime().block_on(async {
        let config = Config {
            max_room_id_bytes: 8,
            max_conn_id_bytes: 6,
            ..Config::default()
        };
        let rc = roomcast::standalone(config).unwrap();
        let room_too_long = |len| NameError::TooLong {
            what: IdKind::Room,
            len,
            max: 8,
        };
        let conn_too_long = NameError::TooLong {
            what: IdKind::Connection,
            len: 7,
            max: 6,
        };
        let member = Error::Member(MemberError::InvalidRoom(room_too_long(9)));
        assert_eq!(rc.join("room-nine", "c").await.err(), Some(member.clone()));
        assert_eq!(rc.leave("room-nine", "c").await, Err(member));
        assert!(matches!(
            rc.subscribe_room("room-nine").await,
            Err(Error::Member(MemberError::InvalidRoom(_)))
        ));
        assert_eq!(
            rc.join("room", "conn-77").await.err(),
            Some(Error::Member(MemberError::InvalidConnection(
                conn_too_long.clone()
            )))
        );
        assert_eq!(
            rc.connection("conn-77").await.err(),
            Some(Error::Member(MemberError::InvalidConnection(
                conn_too_long.clone()
            )))
        );
        assert_eq!(
            rc.publish(PubSubMessage::broadcast("room-nine", "x")).await,
            Err(Error::Publish(PublishError::InvalidRoom(room_too_long(9))))
        );
        assert_eq!(
            rc.publish(PubSubMessage::broadcast("room", "x").excluding("conn-77"))
                .await,
            Err(Error::Publish(PublishError::InvalidExclude(conn_too_long)))
        );
        assert_eq!(
            rc.publisher()
                .send(PubSubMessage::broadcast("room-nine", "x"))
                .await,
            Err(Error::Publish(PublishError::InvalidRoom(room_too_long(9))))
        );
        assert_eq!(
            rc.room_connections("room-nine").await,
            Err(Error::Presence(PresenceError::Invalid(room_too_long(9))))
        );
        assert_eq!(rc.room_state("room-nine").await, Ok(None));
        // At the limits: accepted, and the message arrives.
        let mut m = within("join", rc.join("room-eig", "conn-6")).await.unwrap();
        assert!(m.is_live());
        assert_eq!(
            rc.publish(PubSubMessage::broadcast("room-eig", "ok")).await,
            Ok(1)
        );
        use futures_util::StreamExt;
        let got = within("delivery", m.next()).await.expect("stream ends");
        assert_eq!(&got.data[..], b"ok");
        let metrics = rc.metrics().await.unwrap();
        // The two `publish` refusals (the Publisher's is refused in the caller's task).
        assert_eq!((metrics.published, metrics.publish_refused), (1, 2));
    });
}
