//! Time as an argument of every command, driven the way a real adapter drives a hub: each
//! hub's `handle_timeout` is called only at the instant its own `poll_timeout` names (the
//! `Sim::advance` helper calls it on every hub at every step, which hides stale stamps).

use std::time::{Duration, Instant};

use roomcast_core::{Config, Event, Publish, RoomState, SUBSCRIBER};
use roomcast_sim::{ModelConfig, Sim};

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

/// `n` hubs built from `config`, run until their links are up (or refused, with
/// `refuse`); `handle_timeout` only at each hub's own deadlines.
fn started(n: usize, config: fn() -> Config, refuse: bool) -> Sim {
    let mut s = Sim::new(n, ModelConfig::default(), |_| config());
    s.refuse_connections = refuse;
    let start = s.now;
    run_until(&mut s, start + Duration::from_millis(10));
    if !refuse {
        for node in &s.nodes {
            assert!(node.hub.health().all_ready(), "{:?}", node.hub.health());
        }
    }
    s
}

fn link_downs(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::LinkDown { .. }))
        .collect()
}

#[test]
fn a_join_after_an_idle_spell_goes_live_and_no_link_times_out() {
    let mut s = started(2, idle_config, false);
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
    let mut s = started(1, idle_config, false);
    let start = s.now;
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
    let events = s.take_events_of(0);
    assert!(link_downs(&events).is_empty(), "{:?}", link_downs(&events));
    assert_eq!(s.nodes[0].hub.metrics().link_failures, 0);
}

/// One publish link, 64 KiB messages, small output and queue bounds.
fn small_bounds() -> Config {
    Config {
        pool_size: 1,
        presence: false,
        max_envelope_bytes: 128 << 10,
        max_frame_bytes: (128 << 10) + 1024,
        max_output_bytes: 256 << 10,
        max_queued_bytes: 200 << 10,
        ..Config::default()
    }
}

/// Ids of the publishes Redis confirmed, in order.
fn confirmed(events: &[Event]) -> Vec<roomcast_core::PublishId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PublishConfirmed { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn c4_and_c10_a_full_link_refuses_publishes_at_once_until_the_adapter_writes() {
    let mut s = started(1, small_bounds, false);
    let hub = &mut s.nodes[0].hub;
    let link = hub.publish_link("r");
    let max = hub.config().max_output_bytes;
    let data = vec![7u8; 64 << 10];
    let frame = 64 << 10 | 1024;
    let now = s.now;
    // The adapter takes everything into its write queue; the socket takes nothing.
    let (mut accepted, mut pulled, mut refusal) = (Vec::new(), Vec::new(), None);
    for _ in 0..100 {
        match hub.publish(&Publish::broadcast("r", &data), now) {
            Ok(id) => accepted.push(id),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
        while let Some(b) = hub.poll_transmit_link(link) {
            pulled.push(b);
        }
    }
    let held = hub.link_output(link);
    assert_eq!(
        refusal,
        Some(roomcast_core::PublishError::Backpressure { link, held, max })
    );
    assert!(held >= max && held <= max + frame, "held {held}");
    assert!(accepted.len() >= 3, "{} accepted", accepted.len());
    let m = hub.metrics();
    assert_eq!(m.unwritten_output, pulled.iter().map(|b| b.len()).sum());
    assert_eq!(m.max_link_output, held);
    assert_eq!(m.queued_publishes, 0, "a refused publish is not queued");
    assert_eq!(m.publish_refused, 1);
    // Still full while nothing is written, whoever pulls.
    assert!(hub.poll_transmit_link(link).is_none());
    assert!(matches!(
        hub.publish(&Publish::broadcast("r", &data), now),
        Err(roomcast_core::PublishError::Backpressure { .. })
    ));
    // The socket takes the bytes: Redis gets them, and the link has room again.
    let client = s.nodes[0].client(link).expect("connected");
    for b in pulled {
        s.redis.input(client, &b, now);
        s.nodes[0].hub.handle_written(link, b.len(), now);
    }
    assert_eq!(s.nodes[0].hub.link_output(link), 0);
    let last = s.nodes[0]
        .hub
        .publish(&Publish::broadcast("r", &data), now)
        .expect("room again");
    accepted.push(last);
    run_until(&mut s, now + Duration::from_millis(10));
    assert_eq!(confirmed(&s.take_events_of(0)), accepted);
}

#[test]
fn c4_and_c10_publishes_waiting_for_a_down_link_are_bounded_in_bytes() {
    let mut s = started(1, small_bounds, true);
    let data = vec![7u8; 64 << 10];
    let now = s.now;
    let hub = &mut s.nodes[0].hub;
    let mut accepted = Vec::new();
    let refusal = loop {
        match hub.publish(&Publish::broadcast("r", &data), now) {
            Ok(id) => accepted.push(id),
            Err(e) => break e,
        }
        assert!(accepted.len() < 100, "never refused");
    };
    let m = hub.metrics();
    assert!(m.queued_bytes <= hub.config().max_queued_bytes);
    assert_eq!(m.queued_publishes, accepted.len());
    assert_eq!(accepted.len(), 3, "200 KiB holds three 64 KiB bodies");
    match refusal {
        roomcast_core::PublishError::QueueBytesFull { queued, max } => {
            assert_eq!((queued, max), (m.queued_bytes, 200 << 10));
        }
        other => panic!("expected QueueBytesFull, got {other:?}"),
    }
    assert!(refusal.to_string().contains("max_queued_bytes"));
    // The link comes up: every queued publish goes out and is confirmed, in order.
    s.refuse_connections = false;
    run_until(&mut s, now + Duration::from_secs(5));
    assert_eq!(confirmed(&s.take_events_of(0)), accepted);
    let m = s.nodes[0].hub.metrics();
    assert_eq!((m.queued_publishes, m.queued_bytes), (0, 0));
}

/// As [`small_bounds`], with at most 150 KiB of unconfirmed publishes per link.
fn small_inflight() -> Config {
    Config {
        max_inflight_bytes: 150 << 10,
        ..small_bounds()
    }
}

#[test]
fn c10_unconfirmed_publishes_are_bounded_in_bytes() {
    let mut s = started(1, small_inflight, false);
    let link = s.nodes[0].hub.publish_link("r");
    // Redis takes the bytes but answers nothing for a while.
    s.stall_link(0, link, true);
    let data = vec![7u8; 64 << 10];
    let now = s.now;
    let mut accepted = Vec::new();
    for _ in 0..4 {
        let msg = Publish::broadcast("r", &data);
        accepted.push(s.nodes[0].hub.publish(&msg, now).expect("accepted"));
        s.run();
    }
    let m = s.nodes[0].hub.metrics();
    // Three frames written (the third goes over the bound), the fourth waits in the queue.
    assert_eq!((m.inflight_publishes, m.queued_publishes), (3, 1), "{m:?}");
    s.stall_link(0, link, false);
    run_until(&mut s, now + Duration::from_millis(10));
    assert_eq!(confirmed(&s.take_events_of(0)), accepted);
    let m = s.nodes[0].hub.metrics();
    assert_eq!((m.inflight_publishes, m.queued_publishes), (0, 0));
}
