//! Cluster mode end to end through the hub, against a scripted cluster over byte queues:
//! the topology read at start, rooms subscribed per slot on their master, publishes sent to
//! their slot's master, and what happens when a slot moves, a shard fails over, or a publish
//! is answered `-MOVED`. (RESP2 transcripts, as redis-server 7.0.15 writes them.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use roomcast_core::cluster::key_slot;
use roomcast_core::{
    Config, Event, Hub, Identity, InstanceId, LinkError, LinkId, LinkRequest, LinkRole,
    NotLiveReason, Publish, PublishError, RoomState,
};

const ME: Identity = Identity {
    instance: InstanceId(0xabc),
    epoch: 1,
};

/// One master of the scripted cluster: its slot ranges.
struct Master {
    port: u16,
    slots: Vec<(u16, u16)>,
}

/// `CLUSTER SHARDS` in RESP2 for masters without replicas.
fn shards_reply(masters: &[Master]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", masters.len()).into_bytes();
    for (i, m) in masters.iter().enumerate() {
        out.extend_from_slice(b"*4\r\n$5\r\nslots\r\n");
        out.extend_from_slice(format!("*{}\r\n", m.slots.len() * 2).as_bytes());
        for (a, b) in &m.slots {
            out.extend_from_slice(format!(":{a}\r\n:{b}\r\n").as_bytes());
        }
        out.extend_from_slice(b"$5\r\nnodes\r\n*1\r\n*14\r\n");
        let id = format!("{:040x}", i + 1);
        for (k, v) in [
            ("id", format!("${}\r\n{id}\r\n", id.len())),
            ("port", format!(":{}\r\n", m.port)),
            ("ip", "$9\r\n127.0.0.1\r\n".to_string()),
            ("endpoint", "$9\r\n127.0.0.1\r\n".to_string()),
            ("role", "$6\r\nmaster\r\n".to_string()),
            ("replication-offset", ":0\r\n".to_string()),
            ("health", "$6\r\nonline\r\n".to_string()),
        ] {
            out.extend_from_slice(format!("${}\r\n{k}\r\n{v}", k.len()).as_bytes());
        }
    }
    out
}

/// `HELLO 2` as a cluster node of `version` answers it, then `+OK` for CLIENT SETNAME.
fn hello(mode: &str, version: &str) -> Vec<u8> {
    format!(
        "*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n${}\r\n{version}\r\n$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:5\r\n$4\r\nmode\r\n${}\r\n{mode}\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n+OK\r\n",
        version.len(),
        mode.len()
    )
    .into_bytes()
}

fn bulk(s: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", s.len()).as_bytes(), s, b"\r\n"].concat()
}

fn push(kind: &str, channel: &[u8], count: i64) -> Vec<u8> {
    [
        b"*3\r\n".as_slice(),
        &bulk(kind.as_bytes()),
        &bulk(channel),
        format!(":{count}\r\n").as_bytes(),
    ]
    .concat()
}

/// A hub in cluster mode and the scripted cluster around it.
struct Rig {
    hub: Hub,
    now: Instant,
    /// Which port each link was opened to.
    port_of: BTreeMap<LinkId, u16>,
    /// What each link wrote since last taken.
    wrote: BTreeMap<LinkId, Vec<u8>>,
    events: Vec<Event>,
    /// Links opened and not handshaken yet.
    fresh: Vec<LinkId>,
}

impl Rig {
    fn new(extra: &str) -> Rig {
        let now = Instant::now();
        let config = Config {
            pool_size: 1,
            presence: false,
            ..Config::from_url(&format!("redis+cluster://127.0.0.1:7000{extra}")).unwrap()
        };
        let hub = Hub::new(config, ME, now).unwrap();
        let mut rig = Rig {
            hub,
            now,
            port_of: BTreeMap::new(),
            wrote: BTreeMap::new(),
            events: Vec::new(),
            fresh: Vec::new(),
        };
        rig.pump();
        rig
    }

    /// Drains the hub: link requests (every open connects), output, events.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            while let Some(r) = self.hub.poll_link_request() {
                any = true;
                match r {
                    LinkRequest::Open { link, port, .. } => {
                        self.port_of.insert(link, port);
                        self.fresh.push(link);
                        self.hub.handle_connected(link, self.now);
                    }
                    LinkRequest::Close { link } => {
                        self.port_of.remove(&link);
                    }
                }
            }
            while let Some(tx) = self.hub.poll_transmit() {
                any = true;
                self.wrote
                    .entry(tx.link)
                    .or_default()
                    .extend_from_slice(&tx.bytes);
            }
            while let Some(e) = self.hub.poll_event() {
                any = true;
                self.events.push(e);
            }
            if !any {
                return;
            }
        }
    }

    fn take(&mut self, link: LinkId) -> Vec<u8> {
        self.pump();
        self.wrote.remove(&link).unwrap_or_default()
    }

    fn feed(&mut self, link: LinkId, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        self.hub.handle_input(link, &mut buf, self.now);
        assert!(buf.is_empty(), "the hub takes whole frames");
        self.pump();
    }

    fn links(&self, role: LinkRole, port: u16) -> Vec<LinkId> {
        self.hub
            .health()
            .links
            .iter()
            .filter(|l| l.role == role && l.address == format!("127.0.0.1:{port}"))
            .map(|l| l.link)
            .collect()
    }

    fn sub(&self, port: u16) -> LinkId {
        self.links(LinkRole::Subscriber, port)[0]
    }

    fn publisher(&self, port: u16) -> LinkId {
        self.links(LinkRole::Publisher, port)[0]
    }

    /// Answers the handshake of every link opened since (cluster 7.0.15 nodes).
    fn handshake_all(&mut self) {
        self.pump();
        for link in std::mem::take(&mut self.fresh) {
            let out = self.take(link);
            assert!(out.starts_with(b"*2\r\n$5\r\nHELLO"), "{out:?}");
            self.feed(link, &hello("cluster", "7.0.15"));
        }
    }

    /// Reads the topology link's `CLUSTER SHARDS` and answers it.
    fn answer_topology(&mut self, masters: &[Master]) {
        let t = LinkId(0);
        let out = self.take(t);
        assert!(
            out.windows(6).any(|w| w == b"SHARDS"),
            "CLUSTER SHARDS expected on the topology link, got {:?}",
            String::from_utf8_lossy(&out)
        );
        self.feed(t, &shards_reply(masters));
        self.handshake_all();
        // Refreshes asked for while this one was on its way come as one more.
        let again = self.take(t);
        if !again.is_empty() {
            assert!(again.windows(6).any(|w| w == b"SHARDS"), "{again:?}");
            self.feed(t, &shards_reply(masters));
            self.handshake_all();
        }
    }

    /// Joins `room` and confirms its SSUBSCRIBE on `port`'s subscriber.
    fn live_on(&mut self, port: u16, room: &str) -> LinkId {
        self.hub.join(room, "c1", self.now).unwrap();
        let sub = self.sub(port);
        self.take(sub);
        self.feed(sub, &push("ssubscribe", &channel(room), 1));
        sub
    }

    fn take_events(&mut self) -> Vec<Event> {
        self.pump();
        std::mem::take(&mut self.events)
    }

    /// A cluster of two masters, 7001 (slots 0–8191) and 7002 (8192–16383), all links up.
    fn two_masters(extra: &str) -> Rig {
        let mut rig = Rig::new(extra);
        assert_eq!(rig.port_of.get(&LinkId(0)), Some(&7000), "the seed first");
        rig.handshake_all();
        rig.answer_topology(&halves());
        let ready = rig.hub.health();
        assert!(ready.all_ready(), "{ready:?}");
        // Each subscriber SSUBSCRIBEs its control channel at once: confirm them.
        for port in [7001, 7002] {
            let sub = rig.sub(port);
            let out = rig.take(sub);
            let channel = nth_bulk(&out, 1);
            assert!(out.starts_with(b"*2\r\n$10\r\nSSUBSCRIBE"), "{out:?}");
            rig.feed(sub, &push("ssubscribe", &channel, 1));
        }
        rig.take_events();
        rig
    }
}

fn halves() -> Vec<Master> {
    vec![
        Master {
            port: 7001,
            slots: vec![(0, 8191)],
        },
        Master {
            port: 7002,
            slots: vec![(8192, 16383)],
        },
    ]
}

/// The `n`th bulk string of the first command in `out` (0 is the command's name).
fn nth_bulk(out: &[u8], n: usize) -> Vec<u8> {
    bulks(out).into_iter().nth(n).unwrap()
}

/// Every bulk string in `out`, in order.
fn bulks(out: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'$' {
            let end = i + out[i..].iter().position(|&c| c == b'\r').unwrap();
            let len: usize = std::str::from_utf8(&out[i + 1..end])
                .unwrap()
                .parse()
                .unwrap();
            v.push(out[end + 2..end + 2 + len].to_vec());
            i = end + 2 + len + 2;
        } else {
            i += 1;
        }
    }
    v
}

fn channel(room: &str) -> Vec<u8> {
    format!("graphwiz:room:{room}").into_bytes()
}

/// A room whose channel hashes into `range` (slots), found by trying names.
fn room_in(range: std::ops::RangeInclusive<u16>, skip: usize) -> String {
    (0..)
        .map(|i| format!("r{i}"))
        .filter(|r| range.contains(&key_slot(&channel(r)).get()))
        .nth(skip)
        .unwrap()
}

#[test]
fn rooms_and_publishes_go_to_their_slots_master() {
    let mut rig = Rig::two_masters("");
    let low = room_in(0..=8191, 0);
    let high = room_in(8192..=16383, 0);
    for room in [&low, &high] {
        assert_eq!(
            rig.hub.join(room, "c1", rig.now).unwrap().state,
            RoomState::Pending
        );
    }
    let (a, b) = (rig.sub(7001), rig.sub(7002));
    let out_a = rig.take(a);
    let out_b = rig.take(b);
    assert_eq!(bulks(&out_a), [b"SSUBSCRIBE".to_vec(), channel(&low)]);
    assert_eq!(bulks(&out_b), [b"SSUBSCRIBE".to_vec(), channel(&high)]);
    rig.feed(a, &push("ssubscribe", &channel(&low), 1));
    rig.feed(b, &push("ssubscribe", &channel(&high), 1));
    let live: Vec<_> = rig
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::RoomLive { room } => Some(room.as_str().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(live, [low.clone(), high.clone()]);
    assert_eq!(rig.hub.room_link(&low), Some(a));
    assert_eq!(rig.hub.room_link(&high), Some(b));

    // Publishes are SPUBLISHed to the master of their slot.
    rig.hub
        .publish(&Publish::broadcast(&high, b"x"), rig.now)
        .unwrap();
    rig.hub
        .publish(&Publish::broadcast(&low, b"y"), rig.now)
        .unwrap();
    let pa = rig.publisher(7001);
    let pb = rig.publisher(7002);
    let to_a = bulks(&rig.take(pa));
    let to_b = bulks(&rig.take(pb));
    assert_eq!(
        (&to_a[0][..], &to_a[1][..]),
        (&b"SPUBLISH"[..], &channel(&low)[..])
    );
    assert_eq!(
        (&to_b[0][..], &to_b[1][..]),
        (&b"SPUBLISH"[..], &channel(&high)[..])
    );
    // A message comes back as `smessage` on the subscriber of its slot's master.
    rig.feed(pb, b":1\r\n");
    let payload = to_b[2].clone();
    rig.feed(
        b,
        &[
            b"*3\r\n".as_slice(),
            &bulk(b"smessage"),
            &bulk(&channel(&high)),
            &bulk(&payload),
        ]
        .concat(),
    );
    assert!(rig.take_events().iter().any(|e| matches!(
        e,
        Event::Delivery(d) if d.message.room.as_str() == high && &d.message.data[..] == b"x"
    )));
}

#[test]
fn a_migrated_slot_is_subscribed_again_on_its_new_owner() {
    let mut rig = Rig::two_masters("");
    let room = room_in(0..=8191, 0);
    let slot = key_slot(&channel(&room)).get();
    let a = rig.live_on(7001, &room);
    rig.take_events();

    // The slot moves to 7002: the old owner tells its subscribers on its own.
    rig.feed(a, &push("sunsubscribe", &channel(&room), 0));
    let events = rig.take_events();
    assert!(
        events.iter().any(|e| matches!(e,
            Event::RoomNotLive { room: r, reason: NotLiveReason::ServerUnsubscribed } if r.as_str() == room)),
        "{events:?}"
    );
    assert_eq!(rig.hub.room_state(&room), Some(RoomState::Pending));
    // Nothing is subscribed before the new topology is known.
    assert!(rig.take(a).is_empty());
    let mut moved = halves();
    moved[0].slots = vec![(0, slot - 1), (slot + 1, 8191)]
        .into_iter()
        .filter(|(x, y)| x <= y)
        .collect();
    moved[1].slots = vec![(slot, slot), (8192, 16383)];
    rig.answer_topology(&moved);
    let b = rig.sub(7002);
    assert_eq!(
        bulks(&rig.take(b)),
        [b"SSUBSCRIBE".to_vec(), channel(&room)]
    );
    rig.feed(b, &push("ssubscribe", &channel(&room), 1));
    assert!(rig
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::RoomLive { room: r } if r.as_str() == room)));
    assert_eq!(rig.hub.room_link(&room), Some(b));
}

#[test]
fn our_own_sunsubscribe_crossing_the_servers_is_no_drop() {
    let mut rig = Rig::two_masters("");
    let room = room_in(0..=8191, 0);
    let a = rig.live_on(7001, &room);
    rig.take_events();
    rig.hub.leave(&room, "c1", rig.now).unwrap();
    let out = bulks(&rig.take(a));
    assert_eq!(
        out,
        [b"SUNSUBSCRIBE".to_vec(), channel(&room), b"PING".to_vec()]
    );
    // The slot moved while our SUNSUBSCRIBE was on its way: the server's own push comes
    // first, then `-MOVED` answers ours, then the fence's pong.
    rig.feed(a, &push("sunsubscribe", &channel(&room), 0));
    rig.feed(a, b"-MOVED 1 127.0.0.1:7002\r\n");
    rig.feed(a, b"+PONG\r\n");
    let events = rig.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::RoomNotLive { .. } | Event::LinkDown { .. })),
        "{events:?}"
    );
    assert_eq!(rig.hub.room_state(&room), None, "left");
    assert_eq!(rig.hub.metrics().stray_confirmations, 0);
    // The same without a crossing: the reply, then the pong.
    let other = room_in(0..=8191, 1);
    rig.hub.join(&other, "c1", rig.now).unwrap();
    rig.answer_topology(&halves());
    rig.take(a);
    rig.feed(a, &push("ssubscribe", &channel(&other), 1));
    rig.hub.leave(&other, "c1", rig.now).unwrap();
    rig.take(a);
    rig.feed(a, &push("sunsubscribe", &channel(&other), 0));
    rig.feed(a, b"+PONG\r\n");
    assert_eq!(rig.hub.room_state(&other), None);
    assert!(rig.hub.health().all_ready());
}

#[test]
fn a_publish_answered_moved_is_sent_again_in_order_on_the_new_owner() {
    let mut rig = Rig::two_masters("");
    let room = room_in(0..=8191, 0);
    let slot = key_slot(&channel(&room)).get();
    let pa = rig.publisher(7001);
    let pb = rig.publisher(7002);
    let mut ids = Vec::new();
    for data in [b"1", b"2"] {
        ids.push(
            rig.hub
                .publish(&Publish::broadcast(&room, data), rig.now)
                .unwrap(),
        );
    }
    assert_eq!(bulks(&rig.take(pa)).len(), 6, "both written to 7001");
    // The slot moved: 7001 answers both with -MOVED. After the first, a third publish waits
    // behind the two.
    let moved = format!("-MOVED {slot} 127.0.0.1:7002\r\n");
    rig.feed(pa, moved.as_bytes());
    ids.push(
        rig.hub
            .publish(&Publish::broadcast(&room, b"3"), rig.now)
            .unwrap(),
    );
    assert!(rig.take(pa).is_empty(), "nothing more for the old owner");
    rig.feed(pa, moved.as_bytes());
    let mut topology = halves();
    topology[0].slots = vec![(0, slot - 1), (slot + 1, 8191)]
        .into_iter()
        .filter(|(x, y)| x <= y)
        .collect();
    topology[1].slots = vec![(slot, slot), (8192, 16383)];
    rig.answer_topology(&topology);
    let to_b = bulks(&rig.take(pb));
    let payloads: Vec<u8> = to_b
        .chunks(3)
        .map(|c| {
            assert_eq!(c[0], b"SPUBLISH");
            assert_eq!(c[1], channel(&room));
            let payload = bytes::Bytes::from(c[2].clone());
            let d = roomcast_core::envelope::decode(&payload, 1 << 20).unwrap();
            d.data[0]
        })
        .collect();
    assert_eq!(payloads, b"123", "in publish order, retries included");
    rig.feed(pb, b":1\r\n:1\r\n:1\r\n");
    let confirmed: Vec<_> = rig
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::PublishConfirmed { id, .. } => Some(id),
            Event::PublishFailed { id, error } => panic!("{id:?} failed: {error}"),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed, ids);
    assert!(rig.hub.metrics().redirects >= 1);
}

#[test]
fn a_publish_redirected_too_often_fails_with_a_reason() {
    let mut rig = Rig::two_masters("");
    let room = room_in(0..=8191, 0);
    let slot = key_slot(&channel(&room)).get();
    let pa = rig.publisher(7001);
    let id = rig
        .hub
        .publish(&Publish::broadcast(&room, b"x"), rig.now)
        .unwrap();
    // The cluster keeps saying "moved" while its topology keeps naming 7001.
    for _ in 0..10 {
        if rig.take(pa).is_empty() {
            break;
        }
        rig.feed(pa, format!("-MOVED {slot} 127.0.0.1:7002\r\n").as_bytes());
        rig.answer_topology(&halves());
    }
    let failed = rig.take_events().into_iter().find_map(|e| match e {
        Event::PublishFailed { id: i, error } if i == id => Some(error),
        _ => None,
    });
    match failed {
        Some(PublishError::Redirected { slot: s, .. }) => assert_eq!(s, slot),
        other => panic!("expected Redirected, got {other:?}"),
    }
}

#[test]
fn a_master_that_failed_over_is_retired_and_its_rooms_move() {
    let mut rig = Rig::two_masters("");
    let room = room_in(0..=8191, 0);
    rig.live_on(7001, &room);
    // A publish to the room, written and not answered when the master dies.
    let pa = rig.publisher(7001);
    let id = rig
        .hub
        .publish(&Publish::broadcast(&room, b"z"), rig.now)
        .unwrap();
    rig.take(pa);
    rig.take_events();
    // 7001 dies: its links break; its replica 7003 takes over its slots.
    for link in rig
        .links(LinkRole::Subscriber, 7001)
        .into_iter()
        .chain(rig.links(LinkRole::Publisher, 7001))
    {
        rig.hub.handle_disconnected(link, "reset", rig.now);
    }
    let events = rig.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::RoomNotLive { room: r, reason: NotLiveReason::LinkLost } if r.as_str() == room)));
    let mut failed_over = halves();
    failed_over[0].port = 7003;
    rig.answer_topology(&failed_over);
    let health = rig.hub.health();
    assert!(
        health.links.iter().all(|l| l.address != "127.0.0.1:7001"),
        "the old master's links are retired: {health:?}"
    );
    assert!(health.all_ready(), "{health:?}");
    let sub = rig.sub(7003);
    let out = rig.take(sub);
    assert!(
        bulks(&out).contains(&channel(&room)),
        "{:?} {:?} {:?}",
        String::from_utf8_lossy(&out),
        rig.hub.room_state(&room),
        rig.hub.metrics()
    );
    rig.feed(sub, &push("ssubscribe", &channel(&room), 2));
    // The unconfirmed publish is sent again to the new master.
    let p = rig.publisher(7003);
    let again = bulks(&rig.take(p));
    assert_eq!(again[0], b"SPUBLISH");
    rig.feed(p, b":1\r\n");
    let events = rig.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::PublishConfirmed { id: i, .. } if *i == id)));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RoomLive { room: r } if r.as_str() == room)));
}

#[test]
fn a_cluster_url_needs_a_cluster_node_of_redis_7() {
    for (mode, version, needle) in [
        ("standalone", "7.0.15", "redis://"),
        ("cluster", "6.2.14", "7.0"),
    ] {
        let mut rig = Rig::new("");
        rig.take(LinkId(0));
        rig.feed(LinkId(0), &hello(mode, version));
        let events = rig.take_events();
        let cause = events
            .iter()
            .find_map(|e| match e {
                Event::LinkDown {
                    cause: LinkError::WrongMode(m),
                    ..
                } => Some(m.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{mode} {version}: {events:?}"));
        assert!(cause.contains(needle), "{cause}");
    }
}

#[test]
fn the_topology_link_moves_on_to_the_next_seed() {
    let mut rig = Rig::new(",127.0.0.1:7100");
    assert_eq!(rig.port_of.get(&LinkId(0)), Some(&7000));
    rig.hub.handle_disconnected(LinkId(0), "refused", rig.now);
    rig.now += Duration::from_secs(3);
    rig.hub.handle_timeout(rig.now);
    rig.pump();
    assert_eq!(rig.port_of.get(&LinkId(0)), Some(&7100));
}

#[test]
fn publishes_waiting_for_their_slots_owner_fail_at_close() {
    let mut rig = Rig::two_masters("");
    let room = room_in(0..=8191, 0);
    let slot = key_slot(&channel(&room)).get();
    let pa = rig.publisher(7001);
    let first = rig
        .hub
        .publish(&Publish::broadcast(&room, b"1"), rig.now)
        .unwrap();
    rig.take(pa);
    rig.feed(pa, format!("-MOVED {slot} 127.0.0.1:7002\r\n").as_bytes());
    let second = rig
        .hub
        .publish(&Publish::broadcast(&room, b"2"), rig.now)
        .unwrap();
    assert_eq!(
        rig.hub.metrics().queued_publishes,
        2,
        "both wait for the topology"
    );
    rig.hub.close(rig.now);
    let failed: Vec<_> = rig
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::PublishFailed {
                id,
                error: PublishError::Shutdown,
            } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [first, second]);
    assert_eq!(rig.hub.metrics().queued_publishes, 0);
}
