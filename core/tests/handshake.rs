//! Golden transcripts of both handshakes, and how their failures surface.

use std::time::Instant;

use bytes::BytesMut;
use roomcast_core::{
    Config, Event, Hub, Identity, InstanceId, LinkError, LinkId, LinkRequest, LinkStep, SUBSCRIBER,
};

fn hub(url: &str) -> (Hub, Instant) {
    let now = Instant::now();
    let config = Config {
        pool_size: 1,
        ..Config::from_url(url).unwrap()
    };
    let id = Identity {
        instance: InstanceId(7),
        epoch: 1,
    };
    (Hub::new(config, id, now).unwrap(), now)
}

fn open_all(hub: &mut Hub, now: Instant) {
    while let Some(req) = hub.poll_link_request() {
        if let LinkRequest::Open {
            link,
            host,
            port,
            tls,
        } = req
        {
            assert_eq!((host.as_str(), port, tls), ("127.0.0.1", 6390, false));
            hub.handle_connected(link, now);
        }
    }
}

fn sent(hub: &mut Hub, link: LinkId) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(tx) = hub.poll_transmit() {
        if tx.link == link {
            out.extend_from_slice(&tx.bytes);
        }
    }
    out
}

fn feed(hub: &mut Hub, link: LinkId, bytes: &[u8], now: Instant) {
    let mut buf = BytesMut::from(bytes);
    hub.handle_input(link, &mut buf, now);
    assert!(buf.is_empty());
}

/// `HELLO 2` (sent in RESP2 for the server's mode) as a Redis 7 single server answers it.
const HELLO2_STANDALONE: &[u8] = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";

/// The replies to the default RESP2 handshake (`HELLO 2`, `CLIENT SETNAME`).
fn resp2_ok() -> Vec<u8> {
    [HELLO2_STANDALONE, b"+OK\r\n"].concat()
}

fn events(hub: &mut Hub) -> Vec<Event> {
    std::iter::from_fn(|| hub.poll_event()).collect()
}

#[test]
fn resp2_default_handshake_is_hello_2_and_setname() {
    let (mut hub, now) = hub("redis://127.0.0.1:6390");
    open_all(&mut hub, now);
    assert_eq!(
        sent(&mut hub, SUBSCRIBER),
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$10\r\nroomcast-0\r\n"
    );
    feed(&mut hub, SUBSCRIBER, &resp2_ok(), now);
    assert!(events(&mut hub).iter().any(|e| matches!(
        e,
        Event::LinkUp {
            link: SUBSCRIBER,
            outage: None,
            ..
        }
    )));
    // The first thing a ready subscriber does is subscribe its control channel.
    let sub = sent(&mut hub, SUBSCRIBER);
    assert_eq!(
        sub,
        b"*2\r\n$9\r\nSUBSCRIBE\r\n$29\r\ngraphwiz:ctl:0000000000000007\r\n".to_vec()
    );
}

#[test]
fn resp2_handshake_with_acl_user_and_db_is_pipelined() {
    let (mut hub, now) = hub("redis://alice:s3cret@127.0.0.1:6390/5");
    open_all(&mut hub, now);
    let golden: &[u8] = b"*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\ns3cret\r\n\
*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n\
*2\r\n$6\r\nSELECT\r\n$1\r\n5\r\n\
*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$10\r\nroomcast-1\r\n";
    assert_eq!(sent(&mut hub, LinkId(1)), golden);
    // One round trip: all four replies at once.
    let replies = [b"+OK\r\n", HELLO2_STANDALONE, b"+OK\r\n+OK\r\n"].concat();
    feed(&mut hub, LinkId(1), &replies, now);
    assert!(hub.health().links[1].state == roomcast_core::LinkState::Ready);
}

#[test]
fn resp3_handshake_is_hello_with_auth_and_setname() {
    let (mut hub, now) = hub("redis://:pw@127.0.0.1:6390/2?protocol=resp3");
    open_all(&mut hub, now);
    let golden: &[u8] =
        b"*7\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$2\r\npw\r\n\
$7\r\nSETNAME\r\n$10\r\nroomcast-0\r\n\
*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n";
    assert_eq!(sent(&mut hub, SUBSCRIBER), golden);
    // A Redis 7 HELLO reply (map), then +OK for SELECT.
    let hello: &[u8] = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n+OK\r\n";
    for split in 1..hello.len() {
        let (mut hub, now) = self::hub("redis://:pw@127.0.0.1:6390/2?protocol=resp3");
        open_all(&mut hub, now);
        let _ = sent(&mut hub, SUBSCRIBER);
        let mut buf = BytesMut::from(&hello[..split]);
        hub.handle_input(SUBSCRIBER, &mut buf, now);
        buf.extend_from_slice(&hello[split..]);
        hub.handle_input(SUBSCRIBER, &mut buf, now);
        assert_eq!(
            hub.health().links[0].state,
            roomcast_core::LinkState::Ready,
            "split at {split}"
        );
    }
}

#[test]
fn wrong_password_is_a_clear_auth_error_and_the_link_retries() {
    let (mut hub, now) = hub("redis://alice:nope@127.0.0.1:6390");
    open_all(&mut hub, now);
    let _ = sent(&mut hub, SUBSCRIBER);
    feed(
        &mut hub,
        SUBSCRIBER,
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n",
        now,
    );
    let ev = events(&mut hub);
    let cause = ev
        .iter()
        .find_map(|e| match e {
            Event::LinkDown { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .unwrap();
    assert!(matches!(cause, LinkError::Auth(_)));
    assert!(cause.to_string().contains("check the user and password"));
    assert!(!cause.to_string().contains("nope"));
    assert_eq!(
        hub.poll_link_request(),
        Some(LinkRequest::Close { link: SUBSCRIBER })
    );
    // It tries again after the backoff.
    let t = hub.poll_timeout().unwrap();
    hub.handle_timeout(t);
    assert!(matches!(
        hub.poll_link_request(),
        Some(LinkRequest::Open {
            link: SUBSCRIBER,
            ..
        })
    ));
}

#[test]
fn a_server_without_resp3_says_so() {
    let (mut hub, now) = hub("redis://127.0.0.1:6390?protocol=resp3");
    open_all(&mut hub, now);
    let _ = sent(&mut hub, SUBSCRIBER);
    feed(
        &mut hub,
        SUBSCRIBER,
        b"-ERR unknown command 'HELLO', with args beginning with: '3' \r\n",
        now,
    );
    let ev = events(&mut hub);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::LinkDown {
            cause: LinkError::NoResp3(_),
            ..
        }
    )));
}

#[test]
fn a_handshake_that_never_answers_times_out() {
    let (mut hub, now) = hub("redis://127.0.0.1:6390");
    open_all(&mut hub, now);
    let _ = sent(&mut hub, SUBSCRIBER);
    let t = hub.poll_timeout().unwrap();
    assert_eq!(t, now + hub.config().connect_timeout);
    hub.handle_timeout(t);
    assert!(events(&mut hub).iter().any(|e| matches!(
        e,
        Event::LinkDown {
            cause: LinkError::ConnectTimeout,
            ..
        }
    )));
}

#[test]
fn garbage_breaks_only_that_link() {
    let (mut hub, now) = hub("redis://127.0.0.1:6390");
    open_all(&mut hub, now);
    let _ = sent(&mut hub, SUBSCRIBER);
    feed(&mut hub, LinkId(1), &resp2_ok(), now);
    feed(&mut hub, SUBSCRIBER, b"@@garbage\r\n", now);
    let ev = events(&mut hub);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::LinkDown {
            link: SUBSCRIBER,
            cause: LinkError::Protocol(_),
            ..
        }
    )));
    assert_eq!(hub.health().links[1].state, roomcast_core::LinkState::Ready);
}

/// A hub whose links are up and whose connection `a` is in room `r`, confirmed live (the
/// control channel's and the room's SUBSCRIBE answered), with its events taken.
fn hub_with_live_room() -> (Hub, Instant) {
    let (mut hub, now) = hub("redis://127.0.0.1:6390");
    open_all(&mut hub, now);
    let _ = sent(&mut hub, SUBSCRIBER);
    feed(&mut hub, SUBSCRIBER, &resp2_ok(), now);
    hub.join("r", "a", now).unwrap();
    let _ = sent(&mut hub, SUBSCRIBER);
    let mut confirm = confirmation("subscribe", "graphwiz:ctl:0000000000000007", 1);
    confirm.extend(confirmation("subscribe", "graphwiz:room:r", 2));
    feed(&mut hub, SUBSCRIBER, &confirm, now);
    let _ = events(&mut hub);
    (hub, now)
}

#[test]
fn stray_messages_and_server_unsubscribes_are_handled_on_the_live_link() {
    let (mut hub, now) = hub_with_live_room();
    assert_eq!(hub.room_state("r"), Some(roomcast_core::RoomState::Live));
    // A message for a channel nobody here wants: dropped and counted, the link stays up.
    feed(
        &mut hub,
        SUBSCRIBER,
        b"*3\r\n$7\r\nmessage\r\n$17\r\ngraphwiz:room:zzz\r\n$3\r\nxyz\r\n",
        now,
    );
    assert_eq!(hub.metrics().dropped_unknown_channel, 1);
    assert_eq!(hub.health().links[0].state, roomcast_core::LinkState::Ready);
    // The server drops our subscription on its own: the room is not live, and is resubscribed.
    feed(
        &mut hub,
        SUBSCRIBER,
        b"*3\r\n$11\r\nunsubscribe\r\n$15\r\ngraphwiz:room:r\r\n:1\r\n",
        now,
    );
    assert!(events(&mut hub).iter().any(|e| matches!(
        e,
        Event::RoomNotLive {
            reason: roomcast_core::NotLiveReason::ServerUnsubscribed,
            ..
        }
    )));
    assert_eq!(
        sent(&mut hub, SUBSCRIBER),
        b"*2\r\n$9\r\nSUBSCRIBE\r\n$15\r\ngraphwiz:room:r\r\n"
    );
    assert_eq!(hub.metrics().server_unsubscribes, 1);
}

#[test]
fn a_cluster_node_reached_with_a_single_server_url_is_refused_naming_the_cluster_scheme() {
    let (mut hub, now) = hub("redis://127.0.0.1:6390?protocol=resp3");
    open_all(&mut hub, now);
    let _ = sent(&mut hub, SUBSCRIBER);
    let hello: &[u8] = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$7\r\ncluster\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
    feed(&mut hub, SUBSCRIBER, hello, now);
    let cause = events(&mut hub)
        .into_iter()
        .find_map(|e| match e {
            Event::LinkDown {
                link: SUBSCRIBER,
                cause,
                ..
            } => Some(cause),
            _ => None,
        })
        .expect("the link is refused");
    let LinkError::WrongMode(text) = &cause else {
        panic!("expected WrongMode, got {cause:?}");
    };
    assert!(text.contains("redis+cluster://127.0.0.1:6390"), "{text}");
    assert!(cause.to_string().contains("redis+cluster://"), "{cause}");
    assert_ne!(hub.health().links[0].state, roomcast_core::LinkState::Ready);
}

#[test]
fn an_error_answering_a_ping_on_an_established_link_names_the_ping_not_the_handshake() {
    let now = Instant::now();
    let config = Config {
        pool_size: 1,
        presence: false,
        ..Config::from_url("redis://127.0.0.1:6390").unwrap()
    };
    let id = Identity {
        instance: InstanceId(7),
        epoch: 1,
    };
    let mut hub = Hub::new(config, id, now).unwrap();
    let link = LinkId(1);
    open_all(&mut hub, now);
    let _ = sent(&mut hub, link);
    feed(&mut hub, link, &resp2_ok(), now);
    assert!(events(&mut hub)
        .iter()
        .any(|e| matches!(e, Event::LinkUp { link: l, .. } if *l == link)));
    // The ready link (no presence) has nothing outstanding; a PING that Redis refuses.
    assert_eq!(sent(&mut hub, link), b"");
    hub.ping(now);
    assert_eq!(sent(&mut hub, link), b"*1\r\n$4\r\nPING\r\n");
    feed(&mut hub, link, b"-ERR PING refused for this test\r\n", now);
    let cause = events(&mut hub)
        .into_iter()
        .find_map(|e| match e {
            Event::LinkDown { link: l, cause, .. } if l == link => Some(cause),
            _ => None,
        })
        .expect("the link went down");
    assert_eq!(
        cause,
        LinkError::Protocol(format!(
            "{} was refused: ERR PING refused for this test",
            LinkStep::Ping
        ))
    );
    let text = cause.to_string();
    assert!(text.contains("PING on the established link"), "{text}");
    assert!(!text.contains("handshake"), "{text}");
}

/// `*3 message <channel> <envelope of room, data>` as Redis pushes it in RESP2.
fn message(channel: &str, room: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    roomcast_core::envelope::encode(
        &mut body,
        room,
        roomcast_core::MessageType::Broadcast,
        data,
        None,
        0,
        None,
    );
    let mut out = format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n",
        channel.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    out
}

/// The data of each delivery among `events`, with its room.
fn delivered(events: Vec<Event>) -> Vec<(String, Vec<u8>)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => Some((d.message.room.to_string(), d.message.data.to_vec())),
            _ => None,
        })
        .collect()
}

/// A subscription confirmation (or unsubscription: `kind`) of `channel`, RESP2.
fn confirmation(kind: &str, channel: &str, count: u32) -> Vec<u8> {
    format!(
        "*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n:{count}\r\n",
        kind.len(),
        channel.len()
    )
    .into_bytes()
}

#[test]
fn a_room_slot_given_to_another_room_is_not_found_by_the_old_channel() {
    let (mut hub, now) = hub_with_live_room();
    // Two messages in a row on one channel (the second finds the room the first found).
    let mut two = message("graphwiz:room:r", "r", b"1");
    two.extend(message("graphwiz:room:r", "r", b"2"));
    feed(&mut hub, SUBSCRIBER, &two, now);
    let got = delivered(events(&mut hub));
    assert_eq!(
        got,
        [("r".into(), b"1".to_vec()), ("r".into(), b"2".to_vec())]
    );
    // `r` goes; `s` comes, in the slot `r` had.
    hub.leave("r", "a", now).unwrap();
    let _ = sent(&mut hub, SUBSCRIBER);
    feed(
        &mut hub,
        SUBSCRIBER,
        &confirmation("unsubscribe", "graphwiz:room:r", 1),
        now,
    );
    hub.join("s", "b", now).unwrap();
    let _ = sent(&mut hub, SUBSCRIBER);
    feed(
        &mut hub,
        SUBSCRIBER,
        &confirmation("subscribe", "graphwiz:room:s", 2),
        now,
    );
    let _ = events(&mut hub);
    // A late message of `r` is unknown here now; one of `s` is delivered.
    let mut late = message("graphwiz:room:r", "r", b"late");
    late.extend(message("graphwiz:room:s", "s", b"3"));
    feed(&mut hub, SUBSCRIBER, &late, now);
    assert_eq!(delivered(events(&mut hub)), [("s".into(), b"3".to_vec())]);
    let m = hub.metrics();
    assert_eq!(
        (m.dropped_unknown_channel, m.dropped_room_mismatch),
        (1, 0),
        "found as unknown by its channel, not taken for the room in its old slot"
    );
}
