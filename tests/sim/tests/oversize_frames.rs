//! A message over `max_frame_bytes` published to a room, between normal messages, against
//! the model Redis: it is skipped and reported for its room, the messages after it (on its
//! room and on another room of the same link) are delivered, and the link is never reset,
//! however the bytes are cut.

use bytes::Bytes;
use roomcast_core::envelope::{self, MessageType};
use roomcast_core::{Config, DropCause, Event, Protocol, RoomState};
use roomcast_sim::{ModelConfig, Sim, Split};

const MAX_FRAME: usize = 8192;

fn config(protocol: Protocol) -> Config {
    let mut c = Config {
        pool_size: 1,
        max_envelope_bytes: 4096,
        max_frame_bytes: MAX_FRAME,
        ..Config::default()
    };
    c.server.protocol = protocol;
    c
}

fn body(room: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    envelope::encode(&mut out, room, MessageType::Broadcast, data, None, 1, None);
    out
}

/// What the test looks at, in order: deliveries as (room, data), drops, link events.
#[derive(Debug, PartialEq)]
enum Seen {
    Delivery(String, Bytes),
    Dropped(Option<String>, DropCause),
    LinkEvent(String),
}

fn seen(events: Vec<Event>) -> Vec<Seen> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => Some(Seen::Delivery(
                d.message.room.as_str().to_string(),
                d.message.data.clone(),
            )),
            Event::Dropped { cause, room } => {
                Some(Seen::Dropped(room.map(|r| r.as_str().to_string()), cause))
            }
            e @ (Event::LinkDown { .. } | Event::LinkUp { .. } | Event::RoomNotLive { .. }) => {
                Some(Seen::LinkEvent(format!("{e:?}")))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn c9_an_oversize_message_is_dropped_for_its_room_and_the_link_stays_up() {
    let splits = [
        Split::Whole,
        Split::Chunks(1),
        Split::Chunks(2),
        Split::Chunks(7),
        Split::Chunks(100),
        Split::Chunks(MAX_FRAME - 1),
        Split::Random(13),
        Split::Random(500),
        Split::Random(3 * MAX_FRAME),
    ];
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        for split in splits {
            let case = format!("{protocol:?} {split:?}");
            let mut s = Sim::new(1, ModelConfig::default(), |_| config(protocol));
            s.settle();
            for (room, member) in [("r", "a"), ("q", "b")] {
                s.join(0, room, member).unwrap();
            }
            s.settle();
            assert_eq!(s.nodes[0].hub.room_state("r"), Some(RoomState::Live));
            assert_eq!(s.nodes[0].hub.room_state("q"), Some(RoomState::Live));
            s.take_events();
            s.split = split;
            let hub = &s.nodes[0].hub;
            let r = hub.namer().room_channel(&hub.check_room("r").unwrap());
            let q = hub.namer().room_channel(&hub.check_room("q").unwrap());
            // Over the limit by far, and not even an envelope: nothing reads it.
            let big = vec![0xee; 5 * MAX_FRAME];
            assert_eq!(s.redis.publish(&r, &body("r", b"before")), 1);
            assert_eq!(s.redis.publish(&r, &big), 1);
            assert_eq!(s.redis.publish(&r, &body("r", b"after")), 1);
            assert_eq!(s.redis.publish(&q, &body("q", b"other room")), 1);
            s.settle();
            let ev = s.take_events().remove(0);
            // The frame: `*3`/`>3`, `$7 message`, the channel, the payload's header, data, CRLF.
            let head = |n: usize| format!("${n}\r\n").len();
            let len = 4 + 13 + head(r.len()) + r.len() + 2 + head(big.len()) + big.len() + 2;
            let len = len as u64;
            assert_eq!(
                seen(ev),
                vec![
                    Seen::Delivery("r".into(), Bytes::from_static(b"before")),
                    Seen::Dropped(
                        Some("r".into()),
                        DropCause::TooLarge {
                            len,
                            max: MAX_FRAME
                        }
                    ),
                    Seen::Delivery("r".into(), Bytes::from_static(b"after")),
                    Seen::Delivery("q".into(), Bytes::from_static(b"other room")),
                ],
                "{case}"
            );
            let m = s.nodes[0].hub.metrics();
            assert_eq!(m.dropped_too_large, 1, "{case}");
            assert_eq!(m.delivered, 3, "{case}");
            assert_eq!(m.link_failures, 0, "{case}");
            assert_eq!(m.reconnects, 0, "{case}");
            assert_eq!(m.buffered_input, 0, "{case}");
            assert!(s.nodes[0].hub.health().all_ready(), "{case}");
        }
    }
}

#[test]
fn c9_an_oversize_message_on_a_channel_of_no_room_is_reported_without_one() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| config(Protocol::Resp3));
    s.settle();
    s.join(0, "r", "a").unwrap();
    s.settle();
    s.take_events();
    let hub = &s.nodes[0].hub;
    let r = hub.namer().room_channel(&hub.check_room("r").unwrap());
    // The control channel is subscribed and names no room.
    let control = s
        .redis
        .subscriptions_of(s.nodes[0].client(roomcast_core::SUBSCRIBER).unwrap());
    let control = control.into_iter().find(|c| c[..] != r[..]).unwrap();
    assert_eq!(s.redis.publish(&control, &vec![1; 2 * MAX_FRAME]), 1);
    assert_eq!(s.redis.publish(&r, &body("r", b"after")), 1);
    s.settle();
    let ev = seen(s.take_events().remove(0));
    assert!(
        matches!(&ev[..], [Seen::Dropped(None, DropCause::TooLarge { .. }), Seen::Delivery(room, _)] if room == "r"),
        "{ev:?}"
    );
    let m = s.nodes[0].hub.metrics();
    assert_eq!((m.dropped_too_large, m.link_failures), (1, 0));
}
