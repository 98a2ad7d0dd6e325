//! The checker of the `operations` target: a model of what each hub must show after every
//! operation, and the end-state checks once every fault is healed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::cluster::Cluster;
use super::operations::{Name, Op};
use crate::envelope::MessageType;
use crate::{
    Config, Event, LinkId, LinkState, MemberError, Publish, PublishError, RoomState, SUBSCRIBER,
};

/// What the checker knows about one instance.
#[derive(Debug, Default)]
struct Expect {
    /// (room, conn) memberships.
    members: BTreeSet<(String, String)>,
    shut: bool,
    /// Accepted publishes without an outcome: publish id → message number.
    pending: BTreeMap<u64, u32>,
    /// Publish ids that had their outcome.
    done: BTreeSet<u64>,
}

pub(super) struct Checker {
    expect: Vec<Expect>,
    /// Message number → (room, data).
    published: BTreeMap<u32, (String, Vec<u8>)>,
    /// (node, conn, room, message) deliveries of the current memberships.
    seen: BTreeSet<(usize, String, String, u32)>,
    hostile: bool,
    next_msg: u32,
    config: Config,
}

/// Tags a payload with its message number: `RCFZ`, the number (LE), then filler.
fn tagged(msg: u32, len: usize) -> Vec<u8> {
    let mut data = b"RCFZ".to_vec();
    data.extend_from_slice(&msg.to_le_bytes());
    data.resize(len.max(8), b'.');
    data
}

fn tag_of(data: &[u8]) -> Option<u32> {
    let rest = data.strip_prefix(b"RCFZ")?;
    Some(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?))
}

impl Checker {
    pub fn new(config: Config, nodes: usize) -> Checker {
        Checker {
            expect: (0..nodes).map(|_| Expect::default()).collect(),
            published: BTreeMap::new(),
            seen: BTreeSet::new(),
            hostile: false,
            next_msg: 0,
            config,
        }
    }

    pub fn apply(&mut self, c: &mut Cluster, op: &Op) {
        let nodes = self.expect.len();
        let node = |i: &u8| usize::from(*i) % nodes;
        let links = self.config.pool_size + 1;
        let link = |l: &u8| LinkId((usize::from(*l) % links) as u16);
        match op {
            Op::Join {
                node: i,
                room,
                conn,
            } => {
                let i = node(i);
                let (room, conn) = (room.room(), conn.conn());
                let before = c.peers[i].hub.metrics();
                let r = c.peers[i].hub.join(room, conn, c.now);
                let valid = c.peers[i].hub.check_room(room).is_ok()
                    && crate::ConnId::new(conn, self.config.max_conn_id_bytes).is_ok();
                let e = &mut self.expect[i];
                match r {
                    Ok(j) => {
                        assert!(valid && !e.shut, "join({room:?}, {conn:?}) accepted");
                        let added = e.members.insert((room.into(), conn.into()));
                        assert_eq!(j.added, added);
                    }
                    Err(err) => {
                        assert!(!valid || e.shut, "join({room:?}, {conn:?}): {err:?}");
                        if valid {
                            assert_eq!(err, MemberError::Shutdown);
                        }
                        assert_eq!(
                            c.peers[i].hub.metrics(),
                            before,
                            "a refused join changed state"
                        );
                    }
                }
                c.poll_events(i);
            }
            Op::Leave {
                node: i,
                room,
                conn,
            } => {
                let i = node(i);
                let (room, conn) = (room.room(), conn.conn());
                let before = c.peers[i].hub.metrics();
                match c.peers[i].hub.leave(room, conn, c.now) {
                    Ok(left) => {
                        let was = self.expect[i].members.remove(&(room.into(), conn.into()));
                        assert_eq!(left, was);
                        self.forget(i, room, conn);
                    }
                    Err(_) => {
                        assert_eq!(
                            c.peers[i].hub.metrics(),
                            before,
                            "a refused leave changed state"
                        )
                    }
                }
                c.poll_events(i);
            }
            Op::Disconnect { node: i, conn } => {
                let i = node(i);
                let conn = conn.conn();
                let before = c.peers[i].hub.metrics();
                match c.peers[i].hub.disconnect(conn, c.now) {
                    Ok(rooms) => {
                        let mut want: Vec<String> = self.expect[i]
                            .members
                            .iter()
                            .filter(|(_, m)| m == conn)
                            .map(|(r, _)| r.clone())
                            .collect();
                        let mut got: Vec<String> =
                            rooms.iter().map(|r| r.as_str().to_string()).collect();
                        want.sort();
                        got.sort();
                        assert_eq!(got, want);
                        for r in &want {
                            self.expect[i]
                                .members
                                .remove(&(r.clone(), conn.to_string()));
                            self.forget(i, r, conn);
                        }
                    }
                    Err(_) => assert_eq!(
                        c.peers[i].hub.metrics(),
                        before,
                        "a refused disconnect changed state"
                    ),
                }
                c.poll_events(i);
            }
            Op::Publish {
                node: i,
                room,
                exclude,
                len,
            } => {
                let i = node(i);
                let room = room.room();
                let exclude = exclude.as_ref().map(Name::conn);
                self.next_msg += 1;
                let msg = self.next_msg;
                let len = usize::from(*len) % (self.config.max_envelope_bytes + 64);
                let data = tagged(msg, len);
                let before = c.peers[i].hub.metrics();
                let now = c.now;
                let r = c.peers[i].hub.publish(
                    &Publish {
                        room,
                        message_type: MessageType::Broadcast,
                        data: &data,
                        exclude_connection: exclude,
                        timestamp: i64::from(msg),
                    },
                    now,
                );
                match r {
                    Ok(id) => {
                        assert!(!self.expect[i].shut, "publish accepted after shutdown");
                        assert!(self.expect[i].pending.insert(id.0, msg).is_none());
                        assert!(!self.expect[i].done.contains(&id.0), "publish id reused");
                        self.published.insert(msg, (room.to_string(), data));
                    }
                    Err(e) => {
                        if self.expect[i].shut {
                            assert_eq!(e, PublishError::Shutdown);
                        }
                        let after = c.peers[i].hub.metrics();
                        assert_eq!(after.published, before.published);
                        assert_eq!(after.queued_publishes, before.queued_publishes);
                        assert_eq!(after.inflight_publishes, before.inflight_publishes);
                        assert_eq!(after.publish_refused, before.publish_refused + 1);
                    }
                }
                c.poll_events(i);
            }
            Op::Ping { node: i } => {
                let now = c.now;
                c.peers[node(i)].hub.ping(now);
                c.poll_events(node(i));
            }
            Op::Presence { node: i, room } => {
                let i = node(i);
                let now = c.now;
                let hub = &mut c.peers[i].hub;
                if let Ok(q) = hub.presence_room(room.room()) {
                    let _ = hub.query_presence(q, now);
                } else {
                    assert!(hub.check_room(room.room()).is_err());
                }
                c.poll_events(i);
            }
            Op::Shutdown { node: i } => {
                let i = node(i);
                let now = c.now;
                c.peers[i].hub.begin_shutdown(now);
                // Its deliveries (presence events of the leaves) went to the members of the
                // moment, who are all gone by now.
                c.poll_events(i);
                let before = self.expect[i].members.clone();
                for (n, e) in std::mem::take(&mut c.events) {
                    let members = if n == i {
                        before.clone()
                    } else {
                        self.expect[n].members.clone()
                    };
                    self.event(n, e, &members);
                }
                let e = &mut self.expect[i];
                e.shut = true;
                let gone: Vec<(String, String)> =
                    std::mem::take(&mut e.members).into_iter().collect();
                for (r, m) in gone {
                    self.forget(i, &r, &m);
                }
            }
            Op::Kill { node: i, link: l } => c.kill(node(i), link(l)),
            Op::Stall {
                node: i,
                link: l,
                on,
            } => c.stall(node(i), link(l), *on),
            Op::Deafen {
                node: i,
                link: l,
                on,
            } => c.deafen(node(i), link(l), *on),
            Op::Refuse(on) => c.refuse = *on,
            Op::Restart => c.redis.restart(),
            Op::DuplicateConfirmations(on) => c.redis.duplicate_subscribe_confirmations(*on),
            Op::ShuffleUnsubscribes(seed) => c.redis.shuffle_unsubscribe_confirmations(*seed),
            Op::Advance { ms } => c.advance(Duration::from_millis(u64::from(*ms))),
            Op::Step => {
                c.step();
            }
            Op::ForeignPublish { room, payload } => {
                self.hostile = true;
                if let Ok(id) = crate::RoomId::new(room.room(), self.config.max_room_id_bytes) {
                    let ch = c.peers[0].hub.namer().room_channel(&id);
                    c.redis.publish(&ch, payload);
                }
            }
            Op::Inject {
                node: i,
                link: l,
                bytes,
            } => {
                self.hostile = true;
                c.deliver(node(i), link(l), bytes);
            }
        }
    }

    /// A membership ended: a later one may see the same messages again.
    fn forget(&mut self, i: usize, room: &str, conn: &str) {
        self.seen
            .retain(|(n, m, r, _)| !(*n == i && m == conn && r == room));
    }

    pub fn check(&mut self, c: &mut Cluster) {
        for (i, e) in std::mem::take(&mut c.events) {
            let members = self.expect[i].members.clone();
            self.event(i, e, &members);
        }
        for (i, p) in c.peers.iter().enumerate() {
            let e = &self.expect[i];
            let hub = &p.hub;
            let m = hub.metrics();
            assert_eq!(m.members, e.members.len(), "node {i}: member count");
            let conns: BTreeSet<&str> = e.members.iter().map(|(_, m)| m.as_str()).collect();
            assert_eq!(m.connections, conns.len(), "node {i}: connection count");
            let rooms: BTreeSet<&str> = e.members.iter().map(|(r, _)| r.as_str()).collect();
            for r in &rooms {
                let mut got: Vec<&str> = hub.members(r).iter().map(|c| c.as_str()).collect();
                got.sort_unstable();
                let want: Vec<&str> = e
                    .members
                    .iter()
                    .filter(|(room, _)| room == r)
                    .map(|(_, m)| m.as_str())
                    .collect();
                assert_eq!(got, want, "node {i}: members of {r:?}");
            }
            for (room, _) in hub.rooms() {
                if !rooms.contains(room.as_str()) {
                    assert!(hub.members(room.as_str()).is_empty());
                }
            }
            assert!(m.rooms >= rooms.len() && m.rooms_live <= m.rooms);
            assert!(m.subscriptions_in_flight <= self.config.max_subscriptions_in_flight);
            let pool = self.config.pool_size;
            assert!(m.inflight_publishes <= pool * self.config.max_inflight_publishes);
            assert!(
                m.queued_publishes
                    <= self.config.max_queued_publishes + pool * self.config.max_inflight_publishes
            );
            // Presence events are publishes of the hub's own, unknown to the checker.
            assert!(
                self.config.presence_events
                    || m.queued_publishes + m.inflight_publishes <= e.pending.len(),
                "node {i}: more publishes queued or in flight than accepted and unanswered"
            );
            assert_eq!(m.buffered_input, p.held_input(), "node {i}: input gauge");
            assert!(m.buffered_input <= (pool + 1) * (self.config.max_frame_bytes + 2));
            assert_eq!(m.buffered_output, hub.buffered_output());
            let bound = (pool + 1) * (self.config.max_output_bytes + self.config.max_frame_bytes);
            assert!(
                hub.buffered_output() <= bound,
                "node {i}: output buffered beyond limits"
            );
            if e.shut {
                assert_eq!(m.members, 0);
            }
        }
    }

    /// Checks one event of node `i`, whose membership was `members` when it was made (the
    /// hub's own agrees with it, as `check` verifies).
    fn event(&mut self, i: usize, ev: Event, members: &BTreeSet<(String, String)>) {
        match ev {
            Event::PublishConfirmed { id, .. } | Event::PublishFailed { id, .. } => {
                let e = &mut self.expect[i];
                let known = e.pending.remove(&id.0).is_some();
                assert!(
                    known || (self.config.presence_events && !e.done.contains(&id.0)),
                    "node {i}: outcome of an unknown or answered publish {id:?}"
                );
                e.done.insert(id.0);
            }
            Event::Delivery(d) => {
                let room = d.message.room.as_str();
                let members: Vec<&str> = members
                    .iter()
                    .filter(|(r, _)| r == room)
                    .map(|(_, m)| m.as_str())
                    .collect();
                assert!(
                    !members.is_empty(),
                    "node {i}: delivery to {room:?} without members"
                );
                for r in d.recipients() {
                    assert!(
                        members.contains(&r.as_str()),
                        "node {i}: {r:?} is not in {room:?}"
                    );
                    assert_ne!(Some(r), d.excluded());
                }
                if let Some(x) = d.excluded() {
                    assert!(members.contains(&x.as_str()));
                }
                if self.hostile || d.message.message_type != MessageType::Broadcast {
                    return;
                }
                let msg =
                    tag_of(&d.message.data).expect("an untagged broadcast without hostile input");
                let (want_room, want_data) = self.published.get(&msg).expect("a published message");
                assert_eq!(room, want_room, "message {msg} delivered to another room");
                assert_eq!(&d.message.data[..], &want_data[..], "message {msg} altered");
                for r in d.recipients() {
                    let fresh =
                        self.seen
                            .insert((i, r.as_str().to_string(), room.to_string(), msg));
                    assert!(fresh, "node {i}: {r:?} got message {msg} twice in {room:?}");
                }
            }
            Event::LinkDown { cause, .. } => assert!(!cause.to_string().is_empty()),
            _ => {}
        }
    }

    pub fn finish(&mut self, c: &mut Cluster) {
        c.heal();
        c.advance(Duration::from_secs(30));
        self.check(c);
        for (i, p) in c.peers.iter().enumerate() {
            let e = &self.expect[i];
            let hub = &p.hub;
            if e.shut {
                if !self.hostile {
                    assert!(
                        hub.is_drained(),
                        "node {i}: not drained 30 s after shutdown"
                    );
                }
                continue;
            }
            for l in hub.health().links {
                assert_eq!(
                    l.state,
                    LinkState::Ready,
                    "node {i}: {l:?} not ready after healing"
                );
            }
            let m = hub.metrics();
            let rooms: BTreeSet<&str> = e.members.iter().map(|(r, _)| r.as_str()).collect();
            assert_eq!(
                m.rooms,
                rooms.len(),
                "node {i}: rooms without members linger"
            );
            assert_eq!(m.subscriptions_in_flight, 0);
            for r in &rooms {
                assert_eq!(hub.room_state(r), Some(RoomState::Live), "node {i}: {r:?}");
            }
            assert!(
                e.pending.is_empty(),
                "node {i}: publishes without outcome: {:?}",
                e.pending
            );
            assert_eq!(m.queued_publishes + m.inflight_publishes, 0);
            let client = p.client(SUBSCRIBER).expect("the subscriber is connected");
            let mut got = c.redis.subscriptions_of(client);
            got.sort();
            let mut want: Vec<Vec<u8>> = rooms
                .iter()
                .map(|r| {
                    let id = crate::RoomId::new(r, usize::MAX).expect("a member's room is valid");
                    hub.namer().room_channel(&id).to_vec()
                })
                .collect();
            want.push(
                hub.namer()
                    .control_channel(hub.identity().instance)
                    .to_vec(),
            );
            want.sort();
            assert_eq!(
                got, want,
                "node {i}: Redis has other channels than the rooms"
            );
        }
        // Closing fails whatever is left: no accepted publish is ever silently lost.
        let now = c.now;
        for i in 0..c.peers.len() {
            c.peers[i].hub.close(now);
            c.poll_events(i);
        }
        self.check(c);
        for (i, e) in self.expect.iter().enumerate() {
            assert!(
                e.pending.is_empty(),
                "node {i}: publishes lost at close: {:?}",
                e.pending
            );
            let m = c.peers[i].hub.metrics();
            assert_eq!(m.queued_publishes + m.inflight_publishes, 0);
            assert_eq!(
                c.peers[i].hub.poll_timeout(),
                None,
                "node {i}: timers after close"
            );
        }
    }
}
