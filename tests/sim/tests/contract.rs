//! The contract of the `roomcast` crate docs (its `# Contract` section), promise by promise,
//! against the model Redis: a test named `cN_…` checks promise N. Promises 9 and 10 are also
//! checked in `oversize_frames.rs` and `time_and_backpressure.rs` (and end to end in the
//! tests crate), under the same prefixes.

use std::time::Duration;

use bytes::Bytes;
use roomcast_core::envelope::{self, InstanceId, MessageType};
use roomcast_core::{
    Config, Delivery, DeliveryMode, Event, Hub, Identity, LinkError, LinkId, Protocol, Publish,
    PublishError, RoomState, UnconfirmedPolicy, SUBSCRIBER,
};
use roomcast_sim::{ModelConfig, Sim, Split};

fn model() -> ModelConfig {
    ModelConfig {
        requirepass: None,
        users: Vec::new(),
        hello_supported: true,
        cluster_mode: false,
    }
}

fn config(pool: usize) -> Config {
    Config {
        pool_size: pool,
        ..Config::default()
    }
}

fn sim(n: usize) -> Sim {
    let mut s = Sim::new(n, model(), |_| config(2));
    s.settle();
    for node in &s.nodes {
        assert!(node.hub.health().all_ready(), "{:?}", node.hub.health());
    }
    s
}

fn publish(s: &mut Sim, node: usize, room: &str, data: &[u8], exclude: Option<&str>) {
    let now = s.now;
    s.nodes[node]
        .hub
        .publish(
            &Publish {
                room,
                message_type: MessageType::Broadcast,
                data,
                exclude_connection: exclude,
                timestamp: 1,
            },
            now,
        )
        .expect("publish accepted");
}

/// (recipient, data) pairs delivered on a node, in order.
fn deliveries(events: &[Event]) -> Vec<(String, String, Bytes)> {
    let mut out = Vec::new();
    for e in events {
        if let Event::Delivery(d) = e {
            for r in d.recipients() {
                out.push((
                    d.message.room.as_str().to_string(),
                    r.as_str().to_string(),
                    d.message.data.clone(),
                ));
            }
        }
    }
    out
}

fn data_for(events: &[Event], conn: &str) -> Vec<Bytes> {
    deliveries(events)
        .into_iter()
        .filter(|(_, c, _)| c == conn)
        .map(|(_, _, d)| d)
        .collect()
}

fn join_all(s: &mut Sim, room: &str, members: &[(usize, &str)]) {
    for (node, conn) in members {
        s.join(*node, room, conn).unwrap();
    }
    s.settle();
    for (node, _) in members {
        assert_eq!(s.nodes[*node].hub.room_state(room), Some(RoomState::Live));
    }
    s.take_events();
}

#[test]
fn c1_one_order_per_room_across_instances() {
    let mut s = sim(3);
    join_all(&mut s, "r", &[(0, "a"), (1, "b"), (2, "c")]);
    for i in 0..20u8 {
        // Two publishers interleave; every member must see one and the same order.
        publish(&mut s, (i % 2) as usize, "r", &[i], None);
        if i % 3 == 0 {
            s.step();
        }
    }
    s.settle();
    let ev = s.take_events();
    let a = data_for(&ev[0], "a");
    let b = data_for(&ev[1], "b");
    let c = data_for(&ev[2], "c");
    assert_eq!(a.len(), 20);
    assert_eq!(a, b);
    assert_eq!(b, c);
}

#[test]
fn c1_local_first_delivers_at_publish_time_and_drops_the_echo() {
    let mut s = Sim::new(2, model(), |_| Config {
        delivery: DeliveryMode::LocalFirst,
        ..config(2)
    });
    s.settle();
    join_all(&mut s, "r", &[(0, "a"), (1, "b")]);
    publish(&mut s, 0, "r", b"1", None);
    // Delivered locally before anything reached Redis.
    let local: Vec<Event> = std::iter::from_fn(|| s.nodes[0].hub.poll_event()).collect();
    assert_eq!(data_for(&local, "a"), vec![Bytes::from_static(b"1")]);
    publish(&mut s, 0, "r", b"2", None);
    s.settle();
    let ev = s.take_events();
    assert_eq!(data_for(&ev[0], "a"), vec![Bytes::from_static(b"2")]);
    assert_eq!(
        data_for(&ev[1], "b"),
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
    );
    assert_eq!(s.nodes[0].hub.metrics().dropped_echo, 2);
}

#[test]
fn c2_and_c4_unconfirmed_publishes_are_resent_and_duplicates_dropped() {
    let mut s = sim(2);
    join_all(&mut s, "r", &[(0, "a"), (1, "b")]);
    let link = s.nodes[0].hub.publish_link("r").expect("a hub with links");
    // The server processes the publishes but its replies are lost, then the link breaks:
    // the hub must resend all five, and receivers must drop the copies.
    s.deafen(0, link, true);
    for i in 0..5u8 {
        publish(&mut s, 0, "r", &[i], None);
    }
    s.step();
    s.deafen(0, link, false);
    s.kill_link(0, link);
    s.settle();
    s.advance(Duration::from_secs(3));
    let ev = s.take_events();
    let want: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i])).collect();
    assert_eq!(data_for(&ev[1], "b"), want);
    assert_eq!(data_for(&ev[0], "a"), want);
    let confirmed = ev[0]
        .iter()
        .filter(|e| matches!(e, Event::PublishConfirmed { .. }))
        .count();
    assert_eq!(confirmed, 5);
    assert!(s.nodes[1].hub.metrics().dropped_duplicate >= 5);
    assert!(s.nodes[0].hub.metrics().publish_resent >= 5);
}

#[test]
fn c4_outcome_unknown_when_configured() {
    let mut s = Sim::new(1, model(), |_| Config {
        unconfirmed: UnconfirmedPolicy::FailUnknown,
        ..config(1)
    });
    s.settle();
    s.deafen(0, LinkId(1), true);
    publish(&mut s, 0, "r", b"x", None);
    s.step();
    s.deafen(0, LinkId(1), false);
    s.kill_link(0, LinkId(1));
    s.settle();
    let ev = s.take_events();
    assert!(ev[0].iter().any(|e| matches!(
        e,
        Event::PublishFailed {
            error: PublishError::OutcomeUnknown,
            ..
        }
    )));
}

#[test]
fn c4_queued_while_down_then_refused_beyond_the_bound() {
    let mut s = Sim::new(1, model(), |_| Config {
        max_queued_publishes: 3,
        ..config(1)
    });
    s.refuse_connections = true;
    s.settle();
    for i in 0..3u8 {
        publish(&mut s, 0, "r", &[i], None);
    }
    let now = s.now;
    let err = s.nodes[0]
        .hub
        .publish(
            &Publish {
                room: "r",
                message_type: MessageType::Broadcast,
                data: b"4",
                exclude_connection: None,
                timestamp: 0,
            },
            now,
        )
        .unwrap_err();
    assert_eq!(err, PublishError::QueueFull { max: 3 });
    assert!(err.to_string().contains("max_queued_publishes"));
    assert_eq!(s.nodes[0].hub.metrics().publish_refused, 1);
    s.refuse_connections = false;
    s.advance(Duration::from_secs(5));
    let ev = s.take_events();
    let confirmed: Vec<u64> = ev[0]
        .iter()
        .filter_map(|e| match e {
            Event::PublishConfirmed { id, receivers } => {
                assert_eq!(*receivers, 0);
                Some(id.0)
            }
            _ => None,
        })
        .collect();
    assert_eq!(confirmed, vec![1, 2, 3]);
}

#[test]
fn c3_sequences_have_no_holes_for_refusals_and_gaps_are_reported() {
    let mut s = sim(2);
    join_all(&mut s, "r", &[(1, "b")]);
    publish(&mut s, 0, "r", b"1", None);
    // Refused before it is written: takes no number.
    let now = s.now;
    let big = vec![0u8; 2 << 20];
    assert!(matches!(
        s.nodes[0].hub.publish(
            &Publish {
                room: "r",
                message_type: MessageType::Broadcast,
                data: &big,
                exclude_connection: None,
                timestamp: 0,
            },
            now
        ),
        Err(PublishError::TooLarge { .. })
    ));
    publish(&mut s, 0, "r", b"2", None);
    s.settle();
    let ev = s.take_events();
    let seqs: Vec<u64> = ev[1]
        .iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => d.message.origin.map(|t| t.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(!ev[1].iter().any(|e| matches!(e, Event::Gap { .. })));

    // Node 1's subscriber misses messages 3 and 4: a gap is reported when 5 arrives.
    s.kill_link(1, SUBSCRIBER);
    s.step();
    publish(&mut s, 0, "r", b"3", None);
    publish(&mut s, 0, "r", b"4", None);
    s.step();
    s.step();
    s.advance(Duration::from_secs(3));
    publish(&mut s, 0, "r", b"5", None);
    s.settle();
    let ev = s.take_events();
    let gaps: Vec<_> = ev[1]
        .iter()
        .filter_map(|e| match e {
            Event::Gap {
                missing, origin, ..
            } => Some((missing.clone(), *origin)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, vec![(3..=4, InstanceId(0x1000))]);
}

#[test]
fn c3_a_restarted_origin_is_a_new_baseline() {
    let mut s = sim(2);
    join_all(&mut s, "r", &[(1, "b")]);
    publish(&mut s, 0, "r", b"1", None);
    publish(&mut s, 0, "r", b"2", None);
    s.settle();
    // Node 0 restarts: same instance id, new epoch, sequence from 1 again.
    let now = s.now;
    s.nodes[0].hub = Hub::new(
        config(2),
        Identity {
            instance: InstanceId(0x1000),
            epoch: 2,
        },
        now,
    )
    .unwrap();
    s.settle();
    publish(&mut s, 0, "r", b"3", None);
    s.settle();
    let ev = s.take_events();
    assert_eq!(data_for(&ev[1], "b").len(), 3);
    assert!(!ev[1].iter().any(|e| matches!(e, Event::Gap { .. })));
}

#[test]
fn c5_and_c6_exclusion_applies_on_the_origin_only_and_ids_are_per_instance() {
    let mut s = sim(2);
    // The same connection id on two instances is two connections.
    join_all(&mut s, "r", &[(0, "c1"), (0, "c2"), (1, "c1")]);
    publish(&mut s, 0, "r", b"x", Some("c1"));
    s.settle();
    let ev = s.take_events();
    assert!(data_for(&ev[0], "c1").is_empty());
    assert_eq!(data_for(&ev[0], "c2").len(), 1);
    assert_eq!(data_for(&ev[1], "c1").len(), 1);
}

#[test]
fn c5_trailerless_messages_exclude_everywhere() {
    let mut s = sim(2);
    join_all(&mut s, "r", &[(0, "c1"), (1, "c1"), (1, "c2")]);
    // A publisher built from the GraphWiz design: bincode body, no trailer, plain PUBLISH.
    let mut body = Vec::new();
    envelope::encode(
        &mut body,
        "r",
        MessageType::Broadcast,
        b"old",
        Some("c1"),
        7,
        None,
    );
    let channel = s.nodes[0]
        .hub
        .namer()
        .room_channel(&"r".try_into().unwrap());
    let c = s.redis.connect();
    let mut cmd = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n", channel.len()).into_bytes();
    cmd.extend_from_slice(&channel);
    cmd.extend_from_slice(format!("\r\n${}\r\n", body.len()).as_bytes());
    cmd.extend_from_slice(&body);
    cmd.extend_from_slice(b"\r\n");
    let now = s.now;
    s.redis.input(c, &cmd, now);
    assert_eq!(s.redis.take_output(c), b":2\r\n");
    s.settle();
    let ev = s.take_events();
    assert!(data_for(&ev[0], "c1").is_empty());
    assert!(data_for(&ev[1], "c1").is_empty());
    assert_eq!(data_for(&ev[1], "c2"), vec![Bytes::from_static(b"old")]);
    let d = ev[1]
        .iter()
        .find_map(|e| match e {
            Event::Delivery(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(d.message.origin, None);
    assert_eq!(d.message.timestamp, 7);
}

#[test]
fn c7_live_means_confirmed() {
    let mut s = sim(1);
    let joined = s.join(0, "r", "a").unwrap();
    assert_eq!(joined.state, RoomState::Pending);
    // The server has not processed the SUBSCRIBE yet: written, not confirmed, not live.
    s.stall_link(0, SUBSCRIBER, true);
    s.step();
    assert_eq!(s.nodes[0].hub.room_state("r"), Some(RoomState::Subscribing));
    s.stall_link(0, SUBSCRIBER, false);
    s.settle();
    assert_eq!(s.nodes[0].hub.room_state("r"), Some(RoomState::Live));
    let ev = s.take_events();
    assert!(ev[0]
        .iter()
        .any(|e| matches!(e, Event::RoomLive { room } if room.as_str() == "r")));
    assert_eq!(s.join(0, "r", "b").unwrap().state, RoomState::Live);
}

#[test]
fn c8_outages_are_visible_with_length_and_missed_rooms() {
    let mut s = sim(1);
    join_all(&mut s, "r1", &[(0, "a")]);
    join_all(&mut s, "r2", &[(0, "a")]);
    s.refuse_connections = true;
    s.kill_link(0, SUBSCRIBER);
    s.advance(Duration::from_millis(500));
    s.refuse_connections = false;
    s.advance(Duration::from_secs(3));
    let ev = s.take_events();
    assert!(ev[0].iter().any(|e| matches!(
        e,
        Event::LinkDown {
            link: SUBSCRIBER,
            cause: LinkError::Io(_),
            ..
        }
    )));
    let up = ev[0]
        .iter()
        .find_map(|e| match e {
            Event::LinkUp {
                link: SUBSCRIBER,
                outage,
                missed_rooms,
                ..
            } => Some((*outage, missed_rooms.clone())),
            _ => None,
        })
        .expect("link up");
    assert!(up.0.unwrap() >= Duration::from_millis(500));
    let missed: Vec<&str> = up.1.iter().map(|r| r.as_str()).collect();
    assert_eq!(missed, vec!["r1", "r2"]);
    assert_eq!(s.nodes[0].hub.room_state("r1"), Some(RoomState::Live));
    assert_eq!(s.nodes[0].hub.room_state("r2"), Some(RoomState::Live));
}

/// Whether the events say the subscriber was found deaf.
fn found_deaf(events: &[Event]) -> bool {
    events.iter().any(|e| {
        matches!(
            e,
            Event::LinkDown {
                link: SUBSCRIBER,
                cause: LinkError::Deaf,
                ..
            }
        )
    })
}

#[test]
fn c8_a_deaf_subscriber_is_detected_by_the_probe_and_reopened() {
    let mut s = sim(1);
    join_all(&mut s, "r", &[(0, "a")]);
    s.deafen(0, SUBSCRIBER, true);
    s.advance(Duration::from_secs(6));
    let ev = s.take_events();
    assert!(found_deaf(&ev[0]), "{:?}", ev[0]);
    s.deafen(0, SUBSCRIBER, false);
    s.advance(Duration::from_secs(15));
    assert_eq!(s.nodes[0].hub.room_state("r"), Some(RoomState::Live));
    assert!(s.nodes[0].hub.metrics().deaf_detected >= 1);
}

#[test]
fn a_stalled_server_is_detected_by_the_reply_deadline() {
    let mut s = sim(1);
    let link = LinkId(1);
    s.stall_link(0, link, true);
    s.advance(Duration::from_secs(10));
    let ev = s.take_events();
    assert!(ev[0].iter().any(|e| matches!(
        e,
        Event::LinkDown {
            link: LinkId(1),
            cause: LinkError::ReplyTimeout { .. },
            ..
        }
    )));
    s.advance(Duration::from_secs(3));
    assert!(s.nodes[0].hub.health().all_ready());
}

#[test]
fn every_byte_split_gives_the_same_deliveries() {
    for split in [Split::Chunks(1), Split::Chunks(7), Split::Random(40)] {
        let mut s = Sim::new(2, model(), |_| config(2));
        s.split = split;
        s.settle();
        join_all(&mut s, "r", &[(0, "a"), (1, "b")]);
        for i in 0..10u8 {
            publish(&mut s, 0, "r", &[i; 33], None);
        }
        s.settle();
        let ev = s.take_events();
        let want: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 33])).collect();
        assert_eq!(data_for(&ev[1], "b"), want, "{split:?}");
    }
}

#[test]
fn resp3_links_work_the_same() {
    let mut s = Sim::new(2, model(), |_| {
        let mut c = config(2);
        c.server.protocol = Protocol::Resp3;
        c
    });
    s.settle();
    join_all(&mut s, "r", &[(0, "a"), (1, "b")]);
    publish(&mut s, 0, "r", b"hi", Some("a"));
    s.settle();
    let ev = s.take_events();
    assert_eq!(data_for(&ev[1], "b"), vec![Bytes::from_static(b"hi")]);
    assert!(data_for(&ev[0], "a").is_empty());
}

#[test]
fn payloads_are_shared_not_copied_per_recipient() {
    let mut s = sim(1);
    join_all(&mut s, "r", &[(0, "a"), (0, "b"), (0, "c")]);
    publish(&mut s, 0, "r", b"shared", None);
    s.settle();
    let ev = s.take_events();
    let d: Vec<&Delivery> = ev[0]
        .iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(d.len(), 1, "one event per message, not per member");
    assert_eq!(d[0].recipient_count(), 3);
}

#[test]
fn duplicated_and_reordered_confirmations_end_in_the_right_state() {
    let mut s = sim(1);
    s.redis.duplicate_subscribe_confirmations(true);
    s.redis.shuffle_unsubscribe_confirmations(Some(7));
    let rooms: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    for r in &rooms {
        s.join(0, r, "a").unwrap();
    }
    s.settle();
    for r in &rooms {
        assert_eq!(s.nodes[0].hub.room_state(r), Some(RoomState::Live));
    }
    // Leave half, rejoin some while their UNSUBSCRIBE is in flight.
    for r in &rooms[..25] {
        s.leave(0, r, "a").unwrap();
    }
    s.step();
    for r in &rooms[..10] {
        s.join(0, r, "b").unwrap();
    }
    s.advance(Duration::from_secs(2));
    let client = s.nodes[0].client(SUBSCRIBER).unwrap();
    let mut subscribed = s.redis.subscriptions_of(client);
    subscribed.sort();
    let mut want: Vec<Vec<u8>> = rooms[..10]
        .iter()
        .chain(&rooms[25..])
        .map(|r| {
            s.nodes[0]
                .hub
                .namer()
                .room_channel(&r.as_str().try_into().unwrap())
                .to_vec()
        })
        .collect();
    want.push(
        s.nodes[0]
            .hub
            .namer()
            .control_channel(InstanceId(0x1000))
            .to_vec(),
    );
    want.sort();
    assert_eq!(subscribed, want);
    for r in &rooms[10..25] {
        assert_eq!(s.nodes[0].hub.room_state(r), None);
    }
    assert!(s.nodes[0].hub.metrics().stray_confirmations > 0);
    assert_eq!(s.nodes[0].hub.metrics().subscriptions_in_flight, 0);
}

#[test]
fn joins_in_one_turn_become_one_subscribe_per_batch() {
    let mut s = sim(1);
    for i in 0..1200 {
        s.join(0, &format!("r{i}"), "a").unwrap();
    }
    let mut commands = 0;
    while let Some(tx) = s.nodes[0].hub.poll_transmit() {
        commands += tx
            .bytes
            .windows(b"SUBSCRIBE".len())
            .filter(|w| *w == b"SUBSCRIBE")
            .count();
    }
    // 1,200 channels in batches of 512.
    assert_eq!(commands, 3);
}

/// The harness fires a hub's timers only at the deadlines that hub asked for, as an adapter
/// does, so no other instance's timers help: node 0 runs no presence heartbeat, and still
/// finds its deaf subscriber within one probe interval and one probe timeout.
#[test]
fn c8_a_deaf_subscriber_is_found_by_its_own_deadlines_alone() {
    let mut s = Sim::new(2, model(), |i| Config {
        pool_size: 1,
        // Node 0 has no presence heartbeat to wake it, and a keepalive far beyond the
        // probe's deadlines: only the probe's own timers can find the deafness in time.
        presence: i == 1,
        keepalive_interval: if i == 0 {
            Duration::from_secs(30)
        } else {
            Config::default().keepalive_interval
        },
        ..Config::default()
    });
    s.settle();
    join_all(&mut s, "r", &[(0, "a"), (1, "b")]);
    s.take_events();
    s.deafen(0, SUBSCRIBER, true);
    let c = s.nodes[0].hub.config().clone();
    // The next probe goes out within probe_interval and times out probe_timeout later.
    s.advance(c.probe_interval + c.probe_timeout + Duration::from_millis(100));
    let ev = s.take_events();
    assert!(found_deaf(&ev[0]), "{:?}", ev[0]);
}

#[test]
fn c9_a_bad_message_is_a_reported_drop_and_the_next_one_arrives() {
    let mut s = sim(2);
    join_all(&mut s, "r", &[(1, "m")]);
    let channel = s.nodes[0]
        .hub
        .namer()
        .room_channel(&"r".try_into().unwrap());
    // Not an envelope at all, then a valid envelope that names another room than its channel.
    assert_eq!(s.publish_foreign(&channel, b"\xff\xff not bincode"), 1);
    let mut other = Vec::new();
    envelope::encode(
        &mut other,
        "elsewhere",
        MessageType::Broadcast,
        b"spoofed",
        None,
        0,
        None,
    );
    assert_eq!(s.publish_foreign(&channel, &other), 1);
    // A positive control after both: an ordinary publish reaches the member.
    publish(&mut s, 0, "r", b"after", None);
    s.settle();
    let ev = s.take_events();
    let drops: Vec<String> = ev[1]
        .iter()
        .filter_map(|e| match e {
            Event::Dropped { cause, room } => {
                assert_eq!(room.as_ref().map(|r| r.as_str()), Some("r"), "{cause:?}");
                Some(format!("{cause:?}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(drops.len(), 2, "{drops:?}");
    assert!(drops[0].starts_with("Malformed"), "{drops:?}");
    assert!(drops[1].starts_with("RoomMismatch"), "{drops:?}");
    assert_eq!(data_for(&ev[1], "m"), vec![Bytes::from_static(b"after")]);
    assert!(
        !ev[1].iter().any(|e| matches!(e, Event::LinkDown { .. })),
        "a bad message took a link down: {:?}",
        ev[1]
    );
    let m = s.nodes[1].hub.metrics();
    assert_eq!((m.dropped_malformed, m.dropped_room_mismatch), (1, 1));
}

/// The receiving path finds a plain room id by its channel's bytes and takes the full parse
/// for anything else: an id that needs escaping in its channel is delivered like any other,
/// and an envelope whose room id is not text is reported as malformed (not as naming another
/// room), as the full check reports it.
#[test]
fn c9_escaped_ids_arrive_and_a_room_id_that_is_not_text_is_malformed() {
    let mut s = sim(2);
    let escaped = "a:b%c/d";
    join_all(&mut s, escaped, &[(1, "m")]);
    join_all(&mut s, "r", &[(1, "n")]);
    let channel = s.nodes[0]
        .hub
        .namer()
        .room_channel(&"r".try_into().unwrap());
    let mut bad = Vec::new();
    envelope::encode(&mut bad, "r", MessageType::Broadcast, b"x", None, 0, None);
    // The room id's one byte (after its 8-byte length) made invalid UTF-8.
    assert_eq!(&bad[..9], b"\x01\0\0\0\0\0\0\0r");
    bad[8] = 0xff;
    assert_eq!(s.publish_foreign(&channel, &bad), 1);
    publish(&mut s, 0, escaped, b"first", None);
    publish(&mut s, 0, "r", b"after", None);
    publish(&mut s, 0, escaped, b"second", None);
    s.settle();
    let ev = s.take_events();
    let drops: Vec<String> = ev[1]
        .iter()
        .filter_map(|e| match e {
            Event::Dropped { cause, .. } => Some(format!("{cause:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert!(drops[0].contains("room id is not valid UTF-8"), "{drops:?}");
    assert_eq!(
        data_for(&ev[1], "m"),
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")]
    );
    assert_eq!(data_for(&ev[1], "n"), vec![Bytes::from_static(b"after")]);
    let m = s.nodes[1].hub.metrics();
    assert_eq!((m.dropped_malformed, m.dropped_room_mismatch), (1, 0));
}
