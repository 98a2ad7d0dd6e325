//! Time as an argument of every command, driven the way a real adapter drives a hub: each
//! hub's `handle_timeout` is called only at the instant its own `poll_timeout` names (the
//! `Sim::advance` helper calls it on every hub at every step, which hides stale stamps).

use std::time::{Duration, Instant};

use roomcast_core::sim::{ModelConfig, Sim};
use roomcast_core::{Config, Event, Publish, RoomState, SUBSCRIBER};

/// Moves the simulation to `end`, calling a hub's `handle_timeout` only when its own
/// deadline has come (and then at that deadline), with bytes moved after each.
fn run_until(s: &mut Sim, end: Instant) {
    s.run();
    for _ in 0..100_000 {
        let next = s.nodes.iter().filter_map(|n| n.hub.poll_timeout()).min();
        match next {
            Some(t) if t <= end => {
                s.now = s.now.max(t);
                s.redis.advance(s.now);
                let now = s.now;
                for n in &mut s.nodes {
                    if n.hub.poll_timeout().is_some_and(|d| d <= now) {
                        n.hub.handle_timeout(now);
                    }
                }
                s.run();
            }
            _ => break,
        }
    }
    s.now = s.now.max(end);
    s.redis.advance(s.now);
    s.run();
}

/// Keepalive and probe far apart, a short reply timeout, presence off: a hub that hears
/// nothing for a long spell has no deadline in it.
fn idle_config() -> Config {
    Config {
        pool_size: 1,
        presence: false,
        keepalive_interval: Duration::from_secs(30),
        probe_interval: Duration::from_secs(30),
        reply_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

fn link_downs(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::LinkDown { .. }))
        .collect()
}

#[test]
fn a_join_after_an_idle_spell_goes_live_and_no_link_times_out() {
    let mut s = Sim::new(2, ModelConfig::default(), |_| idle_config());
    let start = s.now;
    run_until(&mut s, start + Duration::from_millis(10));
    for node in &s.nodes {
        assert!(node.hub.health().all_ready(), "{:?}", node.hub.health());
    }
    s.take_events();
    // Ten seconds of virtual time with nothing to do: no deadline falls in it.
    let idle_end = s.now + Duration::from_secs(10);
    for node in &s.nodes {
        let t = node.hub.poll_timeout().expect("a keepalive deadline");
        assert!(t > idle_end, "a deadline inside the idle spell");
    }
    run_until(&mut s, idle_end);
    // The SUBSCRIBE's reply takes a little while (the server is busy with this client), as
    // on a real network: a stale stamp would make the hub's deadline already past.
    s.stall_link(0, SUBSCRIBER, true);
    let now = s.now;
    let joined = s.nodes[0].hub.join("r", "a", now).expect("valid ids");
    assert_eq!(joined.state, RoomState::Pending);
    // The SUBSCRIBE goes out (batched in `poll_transmit`); the server holds its reply.
    s.run();
    let deadline = s.nodes[0]
        .hub
        .poll_timeout()
        .expect("the SUBSCRIBE's reply timer");
    assert!(
        deadline >= now + Duration::from_secs(1),
        "the SUBSCRIBE is stamped before the join: deadline {:?} before the join",
        now.checked_duration_since(deadline)
    );
    run_until(&mut s, now + Duration::from_millis(50));
    s.stall_link(0, SUBSCRIBER, false);
    run_until(&mut s, now + Duration::from_millis(100));
    assert_eq!(s.nodes[0].hub.room_state("r"), Some(RoomState::Live));
    // Live means delivered: a publish from the other instance arrives, once.
    let now = s.now;
    s.nodes[1]
        .hub
        .publish(&Publish::broadcast("r", b"after the idle spell"), now)
        .expect("publish");
    run_until(&mut s, now + Duration::from_millis(50));
    let events = s.take_events();
    for (i, ev) in events.iter().enumerate() {
        assert!(link_downs(ev).is_empty(), "node {i}: {:?}", link_downs(ev));
    }
    assert!(events[0]
        .iter()
        .any(|e| matches!(e, Event::RoomLive { room } if room.as_str() == "r")));
    let delivered: Vec<&[u8]> = events[0]
        .iter()
        .filter_map(|e| match e {
            Event::Delivery(d) => Some(&d.message.data[..]),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [&b"after the idle spell"[..]]);
    for node in &s.nodes {
        assert_eq!(node.hub.metrics().link_failures, 0);
    }
}

#[test]
fn a_leave_after_an_idle_spell_unsubscribes_and_no_link_times_out() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| idle_config());
    let start = s.now;
    run_until(&mut s, start + Duration::from_millis(10));
    s.nodes[0].hub.join("r", "a", s.now).expect("valid ids");
    run_until(&mut s, start + Duration::from_millis(20));
    assert_eq!(s.nodes[0].hub.room_state("r"), Some(RoomState::Live));
    run_until(&mut s, start + Duration::from_secs(10));
    s.stall_link(0, SUBSCRIBER, true);
    let now = s.now;
    assert!(s.nodes[0].hub.disconnect("a", now).expect("valid id").len() == 1);
    run_until(&mut s, now + Duration::from_millis(50));
    s.stall_link(0, SUBSCRIBER, false);
    run_until(&mut s, now + Duration::from_millis(100));
    assert_eq!(s.nodes[0].hub.room_state("r"), None, "unsubscribed");
    let events = s.nodes[0].take_events();
    assert!(link_downs(&events).is_empty(), "{:?}", link_downs(&events));
    assert_eq!(s.nodes[0].hub.metrics().link_failures, 0);
}
