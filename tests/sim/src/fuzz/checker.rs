//! The checker of the `operations` target: a model of what each hub must show after every
//! operation, and the end-state checks once every fault is healed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::operations::{Name, Op};
use crate::oracle::Oracle;
use crate::Sim;
use roomcast_core::envelope::MessageType;
use roomcast_core::{
    Config, DeliveryMode, Event, LinkId, LinkState, MemberError, Publish, PublishError, RoomState,
    SUBSCRIBER,
};

/// The checker: the oracle's membership and delivery checks, plus what each command must
/// have changed and the gauges and counters each hub must show.
pub(super) struct Checker {
    oracle: Oracle,
    /// Per node: accepted publishes without an outcome (publish id → message number).
    pending: Vec<BTreeMap<u64, u32>>,
    /// Per node: publish ids that had their outcome.
    done: Vec<BTreeSet<u64>>,
    /// Per node: publishes the hub accepted.
    accepted: Vec<u64>,
    /// Per node: bytes were injected into one of its links.
    hostile: Vec<bool>,
    config: Config,
}

impl Checker {
    pub fn new(config: Config, nodes: usize) -> Checker {
        let local_first = vec![config.delivery == DeliveryMode::LocalFirst; nodes];
        Checker {
            oracle: Oracle::new(&local_first),
            pending: vec![BTreeMap::new(); nodes],
            done: vec![BTreeSet::new(); nodes],
            accepted: vec![0; nodes],
            hostile: vec![false; nodes],
            config,
        }
    }

    pub fn apply(&mut self, c: &mut Sim, op: &Op) {
        let nodes = self.pending.len();
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
                let before = c.nodes[i].hub.metrics();
                let r = c.join(i, room, conn);
                let valid = c.nodes[i].hub.check_room(room).is_ok()
                    && roomcast_core::ConnId::new(conn, self.config.max_conn_id_bytes).is_ok();
                let shut = self.oracle.is_shut(i);
                match r {
                    Ok(j) => {
                        assert!(valid && !shut, "join({room:?}, {conn:?}) accepted");
                        let added = self.oracle.joined(c, i, room, conn);
                        assert_eq!(j.added, added);
                    }
                    Err(err) => {
                        assert!(!valid || shut, "join({room:?}, {conn:?}): {err:?}");
                        if valid {
                            assert_eq!(err, MemberError::Shutdown);
                        }
                        assert_eq!(
                            c.nodes[i].hub.metrics(),
                            before,
                            "a refused join changed state"
                        );
                    }
                }
            }
            Op::Leave {
                node: i,
                room,
                conn,
            } => {
                let i = node(i);
                let (room, conn) = (room.room(), conn.conn());
                let before = c.nodes[i].hub.metrics();
                match c.leave(i, room, conn) {
                    Ok(left) => assert_eq!(left, self.oracle.left(c, i, room, conn)),
                    Err(_) => assert_eq!(
                        c.nodes[i].hub.metrics(),
                        before,
                        "a refused leave changed state"
                    ),
                }
            }
            Op::Disconnect { node: i, conn } => {
                let i = node(i);
                let conn = conn.conn();
                let before = c.nodes[i].hub.metrics();
                match c.disconnect(i, conn) {
                    Ok(rooms) => {
                        let mut got: Vec<String> =
                            rooms.iter().map(|r| r.as_str().to_string()).collect();
                        got.sort();
                        assert_eq!(got, self.oracle.disconnected(c, i, conn));
                    }
                    Err(_) => assert_eq!(
                        c.nodes[i].hub.metrics(),
                        before,
                        "a refused disconnect changed state"
                    ),
                }
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
                let len = usize::from(*len) % (self.config.max_envelope_bytes + 64);
                let (msg, data) = self.oracle.next_message(len);
                let before = c.nodes[i].hub.metrics();
                let now = c.now;
                let r = c.nodes[i].hub.publish(
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
                        assert!(!self.oracle.is_shut(i), "publish accepted after shutdown");
                        assert!(self.pending[i].insert(id.0, msg).is_none());
                        assert!(!self.done[i].contains(&id.0), "publish id reused");
                        self.accepted[i] += 1;
                        self.oracle.published(c, i, msg, room, &data, exclude);
                    }
                    Err(e) => {
                        if self.oracle.is_shut(i) {
                            assert_eq!(e, PublishError::Shutdown);
                        }
                        let after = c.nodes[i].hub.metrics();
                        assert_eq!(after.published, before.published);
                        assert_eq!(after.queued_publishes, before.queued_publishes);
                        assert_eq!(after.inflight_publishes, before.inflight_publishes);
                        assert_eq!(after.publish_refused, before.publish_refused + 1);
                    }
                }
            }
            Op::Ping { node: i } => {
                let now = c.now;
                c.nodes[node(i)].hub.ping(now);
            }
            Op::Presence { node: i, room } => {
                let i = node(i);
                let now = c.now;
                let hub = &mut c.nodes[i].hub;
                if let Ok(q) = hub.presence_room(room.room()) {
                    let _ = hub.query_presence(q, now);
                } else {
                    assert!(hub.check_room(room.room()).is_err());
                }
            }
            Op::Shutdown { node: i } => {
                let i = node(i);
                let now = c.now;
                c.nodes[i].hub.begin_shutdown(now);
                self.oracle.shut_down(c, i);
            }
            Op::Kill { node: i, link: l } => c.kill_link(node(i), link(l)),
            Op::Stall {
                node: i,
                link: l,
                on,
            } => c.stall_link(node(i), link(l), *on),
            Op::Deafen {
                node: i,
                link: l,
                on,
            } => c.deafen(node(i), link(l), *on),
            Op::Refuse(on) => c.refuse_connections = *on,
            Op::Restart => c.redis.restart(),
            Op::DuplicateConfirmations(on) => c.redis.duplicate_subscribe_confirmations(*on),
            Op::ShuffleUnsubscribes(seed) => c.redis.shuffle_unsubscribe_confirmations(*seed),
            Op::Advance { ms } => c.advance(Duration::from_millis(u64::from(*ms))),
            Op::Step => {
                c.step();
            }
            Op::ForeignPublish { room, payload } => {
                if let Ok(id) =
                    roomcast_core::RoomId::new(room.room(), self.config.max_room_id_bytes)
                {
                    let ch = c.nodes[0].hub.namer().room_channel(&id);
                    c.publish_foreign(&ch, payload);
                }
            }
            Op::Inject {
                node: i,
                link: l,
                bytes,
            } => {
                self.hostile[node(i)] = true;
                c.deliver(node(i), link(l), bytes);
            }
        }
    }

    /// Reads the log, then checks every hub's gauges and counters against the oracle's
    /// membership and the harness's own counts.
    pub fn check(&mut self, c: &mut Sim) {
        for i in 0..c.nodes.len() {
            c.poll_events(i);
        }
        let log = std::mem::take(&mut c.log);
        for o in &log {
            if let crate::harness::Observed::Event(
                i,
                Event::PublishConfirmed { id, .. } | Event::PublishFailed { id, .. },
            ) = o
            {
                let known = self.pending[*i].remove(&id.0).is_some();
                assert!(
                    known || (self.config.presence_events && !self.done[*i].contains(&id.0)),
                    "node {i}: outcome of an unknown or answered publish {id:?}"
                );
                self.done[*i].insert(id.0);
            }
        }
        c.log = log;
        self.oracle.drain(c);
        for (i, p) in c.nodes.iter().enumerate() {
            let members = self.oracle.members(i);
            let hub = &p.hub;
            let m = hub.metrics();
            assert_eq!(m.members, members.len(), "node {i}: member count");
            let conns: BTreeSet<&str> = members.iter().map(|(_, m)| m.as_str()).collect();
            assert_eq!(m.connections, conns.len(), "node {i}: connection count");
            let rooms: BTreeSet<&str> = members.iter().map(|(r, _)| r.as_str()).collect();
            for r in &rooms {
                let mut got: Vec<&str> = hub.members(r).iter().map(|c| c.as_str()).collect();
                got.sort_unstable();
                let want: Vec<&str> = members
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
            // Counters against the oracle's and the harness's own counts.
            let counts = self.oracle.counts(i);
            assert_eq!(m.delivered, counts.deliveries, "node {i}: delivered");
            assert_eq!(
                m.member_deliveries, counts.member_deliveries,
                "node {i}: member_deliveries"
            );
            assert_eq!(m.gaps, counts.gaps, "node {i}: gaps");
            assert_eq!(m.bytes_out, p.bytes_polled, "node {i}: bytes_out");
            assert_eq!(m.bytes_in, p.bytes_handed, "node {i}: bytes_in");
            assert_eq!(m.buffered_input, p.held_input(), "node {i}: input gauge");
            // Presence events are publishes of the hub's own, unknown to the checker.
            if !self.config.presence_events {
                assert!(
                    m.queued_publishes + m.inflight_publishes <= self.pending[i].len(),
                    "node {i}: more publishes queued or in flight than accepted and unanswered"
                );
                assert_eq!(m.published, self.accepted[i], "node {i}: published");
                assert_eq!(
                    m.publish_confirmed + m.publish_failed,
                    counts.confirmed + counts.failed,
                    "node {i}: publish outcomes"
                );
            }
            assert!(m.buffered_input <= (pool + 1) * (self.config.max_frame_bytes + 2));
            let bound = (pool + 1) * (self.config.max_output_bytes + self.config.max_frame_bytes);
            assert!(
                m.buffered_output <= bound,
                "node {i}: output buffered beyond limits"
            );
            if self.oracle.is_shut(i) {
                assert_eq!(m.members, 0);
            }
        }
    }

    /// How the oracle's obligations ended.
    pub fn stats(&self) -> crate::oracle::Stats {
        self.oracle.stats()
    }

    pub fn finish(&mut self, c: &mut Sim) {
        c.heal();
        c.advance(Duration::from_secs(30));
        self.check(c);
        // What a node missed while deaf shows as a gap at the origin's next message: one more
        // from every origin that still owes some.
        for (i, room) in self.oracle.unsettled() {
            if self.oracle.is_shut(i) {
                continue;
            }
            self.apply(
                c,
                &Op::Publish {
                    node: i as u8,
                    room: Name::Raw(room),
                    exclude: None,
                    len: 8,
                },
            );
        }
        c.advance(Duration::from_secs(5));
        self.check(c);
        self.oracle.finish(c);
        for (i, p) in c.nodes.iter().enumerate() {
            let members = self.oracle.members(i);
            let hub = &p.hub;
            if self.oracle.is_shut(i) {
                assert!(
                    self.hostile[i] || hub.is_drained(),
                    "node {i}: not drained 30 s after shutdown"
                );
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
            let rooms: BTreeSet<&str> = members.iter().map(|(r, _)| r.as_str()).collect();
            assert_eq!(
                m.rooms,
                rooms.len(),
                "node {i}: rooms without members linger"
            );
            assert_eq!(m.subscriptions_in_flight, 0);
            // Every link is ready and the harness took everything `poll_transmit` offered.
            assert_eq!(m.buffered_output, 0, "node {i}: output left after healing");
            for r in &rooms {
                assert_eq!(hub.room_state(r), Some(RoomState::Live), "node {i}: {r:?}");
            }
            assert!(
                self.pending[i].is_empty(),
                "node {i}: publishes without outcome: {:?}",
                self.pending[i]
            );
            assert_eq!(m.queued_publishes + m.inflight_publishes, 0);
            let client = p.client(SUBSCRIBER).expect("the subscriber is connected");
            let mut got = c.redis.subscriptions_of(client);
            got.sort();
            let mut want: Vec<Vec<u8>> = rooms
                .iter()
                .map(|r| {
                    let id = roomcast_core::RoomId::new(r, usize::MAX)
                        .expect("a member's room is valid");
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
        for i in 0..c.nodes.len() {
            c.nodes[i].hub.close(now);
            c.poll_events(i);
        }
        self.check(c);
        for i in 0..c.nodes.len() {
            assert!(
                self.pending[i].is_empty(),
                "node {i}: publishes lost at close: {:?}",
                self.pending[i]
            );
            let m = c.nodes[i].hub.metrics();
            assert_eq!(m.queued_publishes + m.inflight_publishes, 0);
            assert_eq!(
                c.nodes[i].hub.poll_timeout(),
                None,
                "node {i}: timers after close"
            );
        }
    }
}
