//! Presence across instances against the model Redis, with a virtual clock: leases, crash,
//! graceful shutdown, outages, lost leases, NOSCRIPT, and presence events.

use std::time::Duration;

use roomcast_core::cluster::key_slot;
use roomcast_core::envelope::MessageType;
use roomcast_core::presence::Keys;
use roomcast_core::{
    ChannelNamer, Config, Event, Hub, Identity, InstanceId, LinkId, LinkState, Member,
    PresenceAnswer, PresenceChange, PresenceError, PresenceQuery, PresenceWhenDown,
};
use roomcast_sim::{ModelConfig, Sim};

fn config() -> Config {
    Config {
        pool_size: 2,
        ..Config::default()
    }
}

fn sim(n: usize) -> Sim {
    let mut s = Sim::new(n, ModelConfig::default(), |_| config());
    s.settle();
    for node in &s.nodes {
        assert!(node.hub.presence_ready(), "registered");
    }
    s.take_events();
    s
}

/// Asks node `n` and runs the simulation until the answer is there.
fn ask(s: &mut Sim, n: usize, q: PresenceQuery) -> Result<PresenceAnswer, PresenceError> {
    let now = s.now;
    let id = s.nodes[n].hub.query_presence(q, now)?;
    s.settle();
    let events = s.take_events_of(n);
    events
        .into_iter()
        .find_map(|e| match e {
            Event::Presence { id: i, result, .. } if i == id => Some(result),
            _ => None,
        })
        .expect("an answer")
}

fn room(s: &mut Sim, n: usize, r: &str) -> Vec<(u64, String)> {
    let q = s.nodes[n].hub.presence_room(r).unwrap();
    match ask(s, n, q).unwrap() {
        PresenceAnswer::Room(m) => m
            .into_iter()
            .map(|Member { instance, conn }| (instance.0, conn.as_str().to_string()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Every key the instances wrote is a presence key of the prefix, in its one hash slot (so
/// in a cluster no command of theirs spans slots).
fn assert_one_slot(s: &Sim) {
    let namer = ChannelNamer::default();
    let (head, slot) = (Keys::head(&namer), Keys::new(&namer, InstanceId(0)).slot());
    let keys = s.redis.keyspace(0).keys();
    assert!(!keys.is_empty());
    for k in keys {
        let name = String::from_utf8_lossy(&k);
        assert!(name.starts_with(&head), "{name}");
        assert_eq!(key_slot(&k), slot, "{name}");
    }
}

fn instances(s: &mut Sim, n: usize) -> Vec<u64> {
    match ask(s, n, PresenceQuery::Instances).unwrap() {
        PresenceAnswer::Instances(i) => i.into_iter().map(|i| i.0).collect(),
        other => panic!("{other:?}"),
    }
}

/// Two instances, member `a` of room `r` on node 0 and `b` on node 1.
fn members_a_and_b() -> Sim {
    let mut s = sim(2);
    s.join(0, "r", "a").unwrap();
    s.join(1, "r", "b").unwrap();
    s.settle();
    s
}

/// Two instances, node 1 with member `b` in room `r`, and node 1's lease deleted behind its
/// back (as after a stall longer than the lease).
fn node_1_member_with_its_lease_gone() -> Sim {
    let mut s = sim(2);
    s.join(1, "r", "b").unwrap();
    s.settle();
    s.redis.keyspace_mut(0).call(&[
        b"DEL",
        b"graphwiz:presence:{graphwiz}:lease:0000000000001001",
    ]);
    s
}

#[test]
fn every_instance_gives_the_same_answer() {
    let mut s = sim(3);
    // Overlapping rooms; the same connection id on two instances; unusual room ids.
    for (n, r, c) in [
        (0, "lobby", "a"),
        (1, "lobby", "b"),
        (2, "lobby", "a"),
        (1, "hub/x:y", "b"),
        (2, "ünï/😀", "z"),
        (0, "{lobby}/b", "q"),
    ] {
        s.join(n, r, c).unwrap();
    }
    s.settle();
    assert_one_slot(&s);
    let want = vec![
        (0x1000, "a".to_string()),
        (0x1001, "b".to_string()),
        (0x1002, "a".to_string()),
    ];
    for n in 0..3 {
        assert_eq!(room(&mut s, n, "lobby"), want);
        assert_eq!(room(&mut s, n, "hub/x:y"), vec![(0x1001, "b".into())]);
        assert_eq!(room(&mut s, n, "ünï/😀"), vec![(0x1002, "z".into())]);
        assert_eq!(room(&mut s, n, "{lobby}/b"), vec![(0x1000, "q".into())]);
        assert_eq!(instances(&mut s, n), vec![0x1000, 0x1001, 0x1002]);
        let q = s.nodes[n].hub.presence_connection("a").unwrap();
        assert_eq!(
            ask(&mut s, n, q).unwrap(),
            PresenceAnswer::Connection(vec![InstanceId(0x1000), InstanceId(0x1002)])
        );
    }
    // Leaving and disconnecting show at once.
    s.leave(0, "lobby", "a").unwrap();
    s.disconnect(2, "a").unwrap();
    s.settle();
    assert_eq!(room(&mut s, 1, "lobby"), vec![(0x1001, "b".into())]);
    let q = s.nodes[1].hub.presence_connection("a").unwrap();
    assert_eq!(
        ask(&mut s, 1, q).unwrap(),
        PresenceAnswer::Connection(vec![])
    );
}

#[test]
fn a_crashed_instance_vanishes_within_one_lease_and_its_entries_are_swept() {
    let mut s = sim(3);
    for n in 0..3 {
        s.join(n, "r", &format!("c{n}")).unwrap();
        s.join(n, &format!("own{n}"), "x").unwrap();
    }
    s.settle();
    assert_one_slot(&s);
    assert_eq!(room(&mut s, 0, "r").len(), 3);
    // Node 2 crashes: its connections die with no shutdown, and it comes back as a new
    // instance with nothing joined.
    for l in 0..3 {
        s.kill_link(2, LinkId(l));
    }
    s.nodes[2].hub = Hub::new(
        config(),
        Identity {
            instance: InstanceId(0x2222),
            epoch: 9,
        },
        s.now,
    )
    .unwrap();
    s.advance(Duration::from_millis(5200));
    assert_eq!(
        room(&mut s, 0, "r"),
        vec![(0x1000, "c0".into()), (0x1001, "c1".into())]
    );
    assert_eq!(instances(&mut s, 1), vec![0x1000, 0x1001, 0x2222]);
    // The sweep removed the dead instance's entries everywhere, without a scan.
    let ks = s.redis.keyspace(0);
    let leftovers: Vec<String> = ks
        .keys()
        .iter()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.contains("0000000000001002"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(s
        .redis
        .keyspace(0)
        .contains(b"graphwiz:presence:{graphwiz}:room:own0"));
    assert!(!s
        .redis
        .keyspace(0)
        .contains(b"graphwiz:presence:{graphwiz}:room:own2"));
}

#[test]
fn graceful_shutdown_removes_members_at_once() {
    let mut s = members_a_and_b();
    let now = s.now;
    s.nodes[1].hub.begin_shutdown(now);
    s.run();
    assert!(s.nodes[1].hub.is_drained());
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1000, "a".into())]);
    assert_eq!(instances(&mut s, 0), vec![0x1000]);
}

/// An instance that begins shutting down while its presence link is down cannot say goodbye
/// then; when the link comes back it says it, and does not register again. (It did: found by
/// the `operations` fuzz target as an instance that never drained, since it kept its lease
/// alive with heartbeats, and other instances listed it again.)
#[test]
fn an_instance_shutting_down_says_goodbye_when_its_link_returns_and_stays_gone() {
    let mut s = members_a_and_b();
    assert_eq!(instances(&mut s, 0), vec![0x1000, 0x1001]);
    s.refuse_connections = true;
    s.kill_link(1, LinkId(1));
    s.run();
    assert!(!s.nodes[1].hub.presence_ready());
    let now = s.now;
    s.nodes[1].hub.begin_shutdown(now);
    s.run();
    // Still listed: its lease has not run out, and the goodbye could not be sent.
    assert_eq!(instances(&mut s, 0), vec![0x1000, 0x1001]);
    s.refuse_connections = false;
    s.advance(Duration::from_secs(1));
    assert!(
        s.nodes[1]
            .hub
            .health()
            .links
            .iter()
            .all(|l| l.state == LinkState::Ready),
        "{:?}",
        s.nodes[1].hub.health()
    );
    // Gone at once when the link is back, its member too, and still gone after several
    // leases (no heartbeat kept anything alive).
    assert_eq!(instances(&mut s, 0), vec![0x1000]);
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1000, "a".into())]);
    s.advance(Duration::from_secs(20));
    assert_eq!(instances(&mut s, 0), vec![0x1000]);
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1000, "a".into())]);
    assert!(s.nodes[1].hub.is_drained());
    assert!(!s.nodes[1].hub.presence_ready());
    // No presence key of node 1 is left behind.
    let left: Vec<String> = s
        .redis
        .keyspace(0)
        .keys()
        .into_iter()
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .filter(|k| k.contains("0000000000001001"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A heartbeat in flight when shutdown begins may come back saying the lease is gone: the
/// instance then stays gone instead of registering again.
#[test]
fn a_lease_found_lost_after_shutdown_began_is_not_registered_again() {
    let mut s = node_1_member_with_its_lease_gone();
    // The next heartbeat goes out but is not served until after the shutdown began.
    s.stall_link(1, LinkId(1), true);
    s.advance(Duration::from_secs(2));
    let now = s.now;
    s.nodes[1].hub.begin_shutdown(now);
    s.stall_link(1, LinkId(1), false);
    s.advance(Duration::from_secs(1));
    assert_eq!(
        s.nodes[1].hub.metrics().leases_lost,
        1,
        "the heartbeat found it gone"
    );
    assert_eq!(instances(&mut s, 0), vec![0x1000]);
    s.advance(Duration::from_secs(10));
    assert_eq!(instances(&mut s, 0), vec![0x1000]);
    assert_eq!(room(&mut s, 0, "r"), vec![]);
    assert!(s.nodes[1].hub.is_drained());
}

#[test]
fn an_outage_refuses_queries_then_registers_again() {
    let mut s = members_a_and_b();
    s.refuse_connections = true;
    s.kill_link(1, LinkId(1));
    s.run();
    assert!(!s.nodes[1].hub.presence_ready());
    let q = s.nodes[1].hub.presence_room("r").unwrap();
    let now = s.now;
    assert_eq!(
        s.nodes[1].hub.query_presence(q, now),
        Err(PresenceError::Unavailable)
    );
    // While node 1 is away longer than its lease, the others stop seeing its members...
    s.advance(Duration::from_secs(6));
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1000, "a".into())]);
    // ...and after the reconnect it registers them again.
    s.refuse_connections = false;
    s.advance(Duration::from_secs(3));
    assert!(s.nodes[1].hub.presence_ready());
    assert!(s
        .take_events_of(1)
        .iter()
        .any(|e| matches!(e, Event::PresenceReady)));
    assert_one_slot(&s);
    assert_eq!(
        room(&mut s, 0, "r"),
        vec![(0x1000, "a".into()), (0x1001, "b".into())]
    );
}

#[test]
fn local_view_when_configured() {
    let mut s = Sim::new(1, ModelConfig::default(), |_| Config {
        presence_when_down: PresenceWhenDown::Local,
        ..config()
    });
    s.refuse_connections = true;
    s.settle();
    s.join(0, "r", "a").unwrap();
    let q = s.nodes[0].hub.presence_room("r").unwrap();
    let now = s.now;
    let id = s.nodes[0].hub.query_presence(q, now).unwrap();
    let ev: Vec<Event> = std::iter::from_fn(|| s.nodes[0].hub.poll_event()).collect();
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Presence { id: i, result: Ok(PresenceAnswer::Room(m)), local_only: true }
            if *i == id && m.len() == 1
    )));
}

#[test]
fn a_lease_lost_during_a_stall_is_noticed_and_registered_again() {
    // The lease vanishes while the link stays up.
    let mut s = node_1_member_with_its_lease_gone();
    assert_eq!(room(&mut s, 0, "r"), vec![]);
    s.advance(Duration::from_secs(2));
    assert_eq!(s.nodes[1].hub.metrics().leases_lost, 1);
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1001, "b".into())]);
}

#[test]
fn scripts_forgotten_by_the_server_are_sent_again_transparently() {
    let mut s = sim(2);
    s.join(1, "r", "b").unwrap();
    s.settle();
    let c = s.redis.connect();
    let now = s.now;
    s.redis
        .input(c, b"*2\r\n$6\r\nSCRIPT\r\n$5\r\nFLUSH\r\n", now);
    assert_eq!(s.redis.take_output(c), b"+OK\r\n");
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1001, "b".into())]);
    assert_eq!(room(&mut s, 0, "r"), vec![(0x1001, "b".into())]);
    assert_eq!(s.nodes[0].hub.metrics().presence_errors, 0);
}

#[test]
fn presence_events_tell_other_instances() {
    let mut s = Sim::new(2, ModelConfig::default(), |_| Config {
        presence_events: true,
        ..config()
    });
    s.settle();
    s.join(0, "r", "watcher").unwrap();
    s.settle();
    s.take_events();
    s.join(1, "r", "newcomer").unwrap();
    s.settle();
    s.leave(1, "r", "newcomer").unwrap();
    s.settle();
    let changes: Vec<PresenceChange> = s
        .take_events_of(0)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivery(d) if d.message.message_type == MessageType::PresenceEvent => {
                PresenceChange::decode(&d.message.data)
            }
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes[0].joined && !changes[1].joined);
    assert_eq!(changes[0].conn, "newcomer");
    assert_eq!(changes[0].instance, InstanceId(0x1001));
}

#[test]
fn observers_are_not_members() {
    let mut s = sim(1);
    s.nodes[0].hub.observe("r", "observer-1", s.now).unwrap();
    s.nodes[0].hub.join("r", "real", s.now).unwrap();
    // Being an observer is a flag, not a name: an id that looks like an internal one is
    // a member like any other.
    s.nodes[0]
        .hub
        .join("r", "\u{FFFF}looks-internal", s.now)
        .unwrap();
    s.settle();
    assert!(s.nodes[0].hub.is_observer("observer-1"));
    assert!(!s.nodes[0].hub.is_observer("\u{FFFF}looks-internal"));
    assert_eq!(
        room(&mut s, 0, "r"),
        vec![
            (0x1000, "real".into()),
            (0x1000, "\u{FFFF}looks-internal".into())
        ]
    );
    // The observer receives the room's messages all the same, and leaves no trace.
    let now = s.now;
    s.nodes[0]
        .hub
        .publish(&roomcast_core::Publish::broadcast("r", b"m"), now)
        .unwrap();
    s.settle();
    let to_observer = s.take_events_of(0).into_iter().any(|e| match e {
        Event::Delivery(d) => d.recipients().any(|c| c.as_str() == "observer-1"),
        _ => false,
    });
    assert!(to_observer);
    s.nodes[0].hub.disconnect("observer-1", s.now).unwrap();
    assert!(!s.nodes[0].hub.is_observer("observer-1"));
}
