//! Hub behaviour that needs Redis on the other side (moved out of the core's unit tests,
//! which keep only what reads the hub's private state): large output across a kill, quiet
//! publishes, `join_many`, `LocalFirst` while a room is being left, a probe ended by
//! `close`, and the handshake's check of the server's mode.

use std::time::Duration;

use roomcast_core::{
    Config, DeliveryMode, Event, Publish, PublishError, RoomState, UnconfirmedPolicy, SUBSCRIBER,
};
use roomcast_sim::{ModelConfig, Sim};

/// `n` hubs with one publishing link each.
fn one_link(n: usize) -> Sim {
    Sim::new(n, ModelConfig::default(), |_| Config {
        pool_size: 1,
        ..Config::default()
    })
}

/// Numbers of the messages node 1 received, in order.
fn received(s: &mut Sim) -> Vec<u32> {
    s.take_events_of(1)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => d
                .message
                .data
                .get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default())),
            _ => None,
        })
        .collect()
}

#[test]
fn output_of_many_blocks_arrives_in_order_and_survives_a_kill() {
    let mut s = one_link(2);
    s.settle();
    s.join(1, "r", "m").unwrap();
    s.settle();
    s.take_events();
    let publish_many = |s: &mut Sim, from: u32| {
        let now = s.now;
        for i in from..from + 300 {
            let mut data = vec![0u8; 1000];
            data[..4].copy_from_slice(&i.to_le_bytes());
            let msg = Publish::broadcast("r", &data);
            s.nodes[0].hub.publish_quiet(&msg, now).unwrap();
        }
    };
    // 300 KB in one turn: several output blocks, handed out in order.
    publish_many(&mut s, 0);
    s.settle();
    assert_eq!(received(&mut s), (0..300).collect::<Vec<_>>());
    // Killed before any of the next 300 was handed out: all resent from their frames,
    // each delivered once, in order.
    publish_many(&mut s, 300);
    let link = s.nodes[0].hub.publish_link("r").expect("a hub with links");
    s.kill_link(0, link);
    for _ in 0..50 {
        s.advance(Duration::from_millis(20));
    }
    assert_eq!(received(&mut s), (300..600).collect::<Vec<_>>());
    assert!(s.nodes[0].hub.metrics().publish_resent >= 300);
}

#[test]
fn quiet_publishes_report_failures_only() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| Config {
        pool_size: 1,
        unconfirmed: UnconfirmedPolicy::FailUnknown,
        ..Config::default()
    });
    s.settle();
    s.join(0, "r", "m").unwrap();
    s.settle();
    s.take_events();
    let msg = Publish::broadcast("r", b"x");
    let now = s.now;
    let loud = s.nodes[0].hub.publish(&msg, now).unwrap();
    let quiet = s.nodes[0].hub.publish_quiet(&msg, now).unwrap();
    s.settle();
    let events = s.take_events_of(0);
    let confirmed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::PublishConfirmed { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed, [loud], "only the loud publish is reported");
    let deliveries = events
        .iter()
        .filter(|e| matches!(e, Event::Delivery(_)))
        .count();
    assert_eq!(deliveries, 2, "both were published");
    assert_eq!(s.nodes[0].hub.metrics().publish_confirmed, 2);
    assert_ne!(loud, quiet);
    // A quiet publish whose outcome is lost is still reported as failed.
    let link = s.nodes[0].hub.publish_link("r").expect("a hub with links");
    s.stall_link(0, link, true);
    let now = s.now;
    let lost = s.nodes[0].hub.publish_quiet(&msg, now).unwrap();
    s.settle();
    s.kill_link(0, link);
    let mut failed = None;
    for _ in 0..100 {
        s.advance(Duration::from_millis(10));
        failed = s.take_events_of(0).into_iter().find_map(|e| match e {
            Event::PublishFailed { id, error } if id == lost => Some(error),
            _ => None,
        });
        if failed.is_some() {
            break;
        }
    }
    assert_eq!(failed, Some(PublishError::OutcomeUnknown));
}

#[test]
fn rooms_joined_with_join_many_go_live() {
    let mut s = one_link(1);
    s.settle();
    assert_eq!(s.join_many(0, &["a", "b", "a", "c/d"], "c"), Ok(3));
    s.settle();
    for room in ["a", "b", "c/d"] {
        assert_eq!(s.nodes[0].hub.room_state(room), Some(RoomState::Live));
    }
    let live: Vec<String> = s
        .take_events_of(0)
        .into_iter()
        .filter_map(|e| match e {
            Event::RoomLive { room } => Some(room.as_str().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(live, ["a", "b", "c/d"]);
}

#[test]
fn local_first_delivers_nothing_to_a_room_being_left() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| Config {
        delivery: DeliveryMode::LocalFirst,
        pool_size: 1,
        ..Config::default()
    });
    s.settle();
    s.join(0, "r", "a").unwrap();
    s.settle();
    s.take_events();
    // The last member left; the room waits for its UNSUBSCRIBE to be confirmed.
    s.leave(0, "r", "a").unwrap();
    assert!(s.nodes[0].hub.room_state("r").is_some());
    let msg = Publish::broadcast("r", b"x");
    let now = s.now;
    s.nodes[0].hub.publish(&msg, now).unwrap();
    s.settle();
    let events = s.take_events_of(0);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Delivery(_))),
        "a delivery for a room without members: {events:?}"
    );
    assert_eq!(s.nodes[0].hub.metrics().delivered, 0);
}

#[test]
fn close_ends_a_probe_under_way() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| Config {
        pool_size: 1,
        presence: false,
        ..Config::default()
    });
    s.settle();
    // Redis confirms the probe's PUBLISH, but the subscriber never hears it.
    s.deafen(0, SUBSCRIBER, true);
    let now = s.now;
    s.nodes[0].hub.ping(now);
    s.run();
    assert!(s.nodes[0].hub.poll_timeout().is_some());
    s.nodes[0].hub.close(now);
    assert_eq!(s.nodes[0].hub.poll_timeout(), None, "a timer after close");
    s.nodes[0].hub.handle_timeout(now + Duration::from_secs(60));
    assert_eq!(s.nodes[0].hub.metrics().deaf_detected, 0);
}

/// Fires one hub's earliest timer at its instant: the deadline must move on (no timer
/// stays armed at an instant already handled, which would make an adapter spin).
fn fire_next(s: &mut Sim) -> Option<std::time::Instant> {
    let hub = &mut s.nodes[0].hub;
    let at = hub.poll_timeout()?;
    hub.handle_timeout(at);
    // (Input may arm a timer whose instant has passed, e.g. a probe that waited for a
    // link: it fires at once on the next call. What was due at `at` was handled.)
    let next = hub.poll_timeout();
    assert!(next.is_none_or(|n| n > at), "{at:?} still armed: {next:?}");
    s.now = s.now.max(at);
    s.redis.advance(s.now);
    s.run();
    next
}

#[test]
fn every_timer_moves_on_when_fired() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| Config {
        pool_size: 2,
        ..Config::default()
    });
    // Reconnect, connect, keepalive, probe and heartbeat timers, in whatever order they
    // come, for a minute of virtual time; then a link down and a deaf subscriber.
    let end = s.now + Duration::from_secs(60);
    let mut fired = 0;
    while s.now < end {
        fire_next(&mut s).expect("a running hub always has a timer");
        fired += 1;
        if fired == 20 {
            s.kill_link(0, roomcast_core::LinkId(1));
            s.run();
        }
        if fired == 60 {
            s.deafen(0, SUBSCRIBER, true);
        }
        assert!(fired < 100_000);
    }
    let m = s.nodes[0].hub.metrics();
    // The killed link, and the deaf subscriber (by its probe or its replies).
    assert!(m.link_failures >= 2, "{m:?}");
}

#[test]
fn a_queued_delivery_does_not_name_the_next_occupant_of_its_slot() {
    let mut s = one_link(1);
    s.settle();
    let j = s.join(0, "r", "a").unwrap();
    assert_eq!(s.join(0, "r2", "a").unwrap().conn, j.conn);
    let other = s.join(0, "r", "other").unwrap().conn;
    s.settle();
    s.take_events();
    let now = s.now;
    s.nodes[0]
        .hub
        .publish(&Publish::broadcast("r", b"x"), now)
        .unwrap();
    s.settle();
    // The delivery waits in the queue while "a" goes and "b" takes its slot.
    s.disconnect(0, "a").unwrap();
    let b = s.join(0, "r", "b").unwrap();
    assert!(b.added);
    assert_eq!(b.conn.index(), j.conn.index(), "the freed slot is reused");
    assert_ne!(b.conn, j.conn, "with a new generation");
    let d = s
        .take_events_of(0)
        .into_iter()
        .find_map(|e| match e {
            Event::Delivery(d) => Some(d),
            _ => None,
        })
        .expect("the message was delivered");
    let ids: Vec<&str> = d.recipients().map(|c| c.as_str()).collect();
    assert_eq!(ids, ["a", "other"]);
    let slots: Vec<_> = d.recipient_slots().collect();
    assert_eq!(slots, [j.conn, other]);
    let hub = &s.nodes[0].hub;
    assert_eq!(
        hub.conn_id(slots[0]),
        None,
        "a's slot no longer names anyone"
    );
    assert_ne!(slots[0], b.conn, "nor b");
    assert_eq!(hub.conn_id(slots[1]).map(|c| c.as_str()), Some("other"));
    assert_eq!(hub.conn_id(b.conn).map(|c| c.as_str()), Some("b"));
}

/// The handshake reads the server's mode from `HELLO` (`HELLO 2` pipelined after `AUTH` in
/// RESP2, `HELLO 3` itself in RESP3): every link to a node that says `mode cluster` is
/// refused with an error naming the `redis+cluster://` URL, and no room goes live; a
/// Redis 5 (no `HELLO`) and a standalone server are served as before, a message delivered.
#[test]
fn a_redis_url_reaching_a_cluster_node_is_refused_and_old_servers_are_not() {
    for protocol in ["resp2", "resp3"] {
        let config = |_| Config {
            pool_size: 2,
            ..Config::from_url(&format!("redis://127.0.0.1:6379?protocol={protocol}")).unwrap()
        };
        let model = ModelConfig {
            cluster_mode: true,
            ..ModelConfig::default()
        };
        let mut s = Sim::new(1, model, config);
        s.settle();
        let downs: Vec<String> = s
            .take_events_of(0)
            .into_iter()
            .filter_map(|e| match e {
                Event::LinkDown { cause, .. } => Some(cause),
                _ => None,
            })
            .map(|cause| match cause {
                roomcast_core::LinkError::WrongMode(text) => text,
                other => panic!("{protocol}: expected WrongMode, got {other:?}"),
            })
            .collect();
        assert!(
            downs.len() >= 3,
            "{protocol}: every link refused: {downs:?}"
        );
        assert!(
            downs
                .iter()
                .all(|t| t.contains("redis+cluster://127.0.0.1:6379")),
            "{protocol}: {downs:?}"
        );
        assert!(!s.nodes[0].hub.health().all_ready());
    }
    for (protocol, hello_supported) in [("resp2", false), ("resp2", true), ("resp3", true)] {
        let config = |_| Config {
            pool_size: 1,
            ..Config::from_url(&format!("redis://127.0.0.1:6379?protocol={protocol}")).unwrap()
        };
        let model = ModelConfig {
            hello_supported,
            ..ModelConfig::default()
        };
        let mut s = Sim::new(2, model, config);
        s.settle();
        assert!(
            s.nodes.iter().all(|n| n.hub.health().all_ready()),
            "{protocol}, HELLO {hello_supported}"
        );
        s.join(1, "r", "m").unwrap();
        s.settle();
        s.take_events();
        let now = s.now;
        let mut data = 7u32.to_le_bytes().to_vec();
        data.extend_from_slice(b"hello");
        s.nodes[0]
            .hub
            .publish(&Publish::broadcast("r", &data), now)
            .unwrap();
        s.settle();
        assert_eq!(received(&mut s), [7], "{protocol}, HELLO {hello_supported}");
    }
}

/// Delivered messages' allocations are reused once dropped (`Config::message_reuse`), and a
/// message still held is never touched: rounds of 20 messages, the first of each round kept
/// to the end and the rest dropped as they come; every kept message still reads as it did.
/// With reuse on the hub holds a reference to each message it hands out (the pool's); with
/// it off the recipient's is the only one.
#[test]
fn reused_message_allocations_leave_held_messages_alone() {
    for reuse in [1024, 0] {
        let mut s = Sim::new(2, ModelConfig::default(), |_| Config {
            pool_size: 1,
            message_reuse: reuse,
            ..Config::default()
        });
        s.settle();
        s.join(1, "r", "m").unwrap();
        s.settle();
        s.take_events();
        let mut kept = Vec::new();
        for round in 0..5u32 {
            let now = s.now;
            for i in round * 20..round * 20 + 20 {
                let data = format!("message {i}");
                let msg = Publish::broadcast("r", data.as_bytes());
                s.nodes[0].hub.publish_quiet(&msg, now).unwrap();
            }
            s.settle();
            let got: Vec<_> = s
                .take_events_of(1)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Delivery(d) => Some(d.into_shared().0),
                    _ => None,
                })
                .collect();
            assert_eq!(got.len(), 20, "round {round}: every message delivered");
            for (k, m) in got.into_iter().enumerate() {
                let i = round * 20 + k as u32;
                assert_eq!(&m.data[..], format!("message {i}").as_bytes());
                let holders = if reuse > 0 { 2 } else { 1 };
                assert_eq!(std::sync::Arc::strong_count(&m), holders, "message {i}");
                if k == 0 {
                    kept.push((i, m));
                }
            }
        }
        for (i, m) in &kept {
            assert_eq!(&m.data[..], format!("message {i}").as_bytes(), "kept {i}");
        }
    }
}
