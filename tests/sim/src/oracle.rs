//! The delivery oracle: an independent model of membership, and the checks of the delivery
//! contract against it, for the property tests and the `operations` fuzz target.
//!
//! The caller tells the oracle what it asked of the hubs (joins, leaves, disconnects,
//! shutdowns, accepted publishes); the oracle reads everything else from the simulation's
//! log ([`Sim::log`], with [`Sim::observe`] on): the hubs' events, the publishes the model
//! Redis executed and the moment each receiving hub was handed the last byte of each
//! message. It never asks a hub who is a member.
//!
//! Safety, for every delivery: its room has members on that node, every recipient is one
//! of them and not the excluded connection; a message the tests published carries exactly
//! the room and bytes it was published with and reaches a member at most once per
//! membership; on each node each member gets a room's messages in the order Redis executed
//! the copies that reached the node.
//!
//! Liveness: a message the tests published reaches every member `m` on node `n` such that
//! - `m` was a member and the room was live on `n` (a `RoomLive` event, not since undone by
//!   `RoomNotLive` or by the room emptying) when the publish was accepted, and
//! - `m` stayed a member until `n`'s hub had been handed the message (for a publish Redis
//!   executed that never reached `n`: until the end of the run),
//!
//! unless an event of `n` that names the room accounts for it: `Gap`, `RoomNotLive`,
//! `Dropped { room }`, or a `LinkUp` whose `missed_rooms` lists it. Publishes Redis never
//! executed promise nothing (their outcome is the publisher's `PublishFailed`).
//!
//! What the contract exempts is exempt: the order of `LocalFirst` deliveries on the
//! publishing node, which happen at publish time; a resent publish is checked at the place
//! of the copy that reached the node (a member that joined in between gets it at its later
//! place).
//!
//! Against a Redis Cluster ([`Sim::new_cluster`]) nothing changes in these rules: a
//! message is executed on a node of the shard that owns its room's slot, and the model
//! carries it to the other nodes of that shard; each copy is a fan-out of its own, numbered
//! with every other fan-out of the cluster in the order they were executed, so the order
//! check holds across nodes (a room resubscribed on a new owner after a migration or a
//! failover keeps its order), and a member whose hub is subscribed on a node of another
//! shard (a slot that moved and the hub has not read the `sunsubscribe` yet) is owed what
//! was published before its `RoomNotLive`, which accounts for it. After quiescence,
//! [`Oracle::check_cluster_subscriptions`] checks where the rooms are subscribed.
//!
//! Hostile input switches off only what it can forge:
//! - a delivery with a foreign origin (or, outside the publisher's `LocalFirst` delivery,
//!   none) is checked for safety only;
//! - a foreign publish or injected bytes carrying a trailer that names one of the simulated
//!   instances switch off the checks of that origin's messages;
//! - while a node reads a buffer that held injected bytes (until it is empty again), its
//!   deliveries are checked for safety only, a message it takes in is no longer owed, and a
//!   `RoomLive` it reports is not believed.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use roomcast_core::envelope::{
    self, InstanceId, MessageType, HARD_MAX_ENVELOPE_BYTES, TRAILER_MAGIC,
};
use roomcast_core::Event;

use crate::harness::{Observed, Sim};

/// (node, room, connection).
type Key = (usize, String, String);

/// Counts the oracle made itself from the events, per node, to compare with the hub's
/// [`roomcast_core::Metrics`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `Delivery` events.
    pub deliveries: u64,
    /// Recipients of those deliveries.
    pub member_deliveries: u64,
    /// `PublishConfirmed` events.
    pub confirmed: u64,
    /// `PublishFailed` events.
    pub failed: u64,
    /// `Gap` events.
    pub gaps: u64,
}

/// How the liveness obligations ended: what the oracle actually checked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// (message, member) pairs owed at publish time.
    pub owed: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Accounted for by an event naming the room.
    pub accounted: u64,
    /// Ended by the member leaving before its hub took the message in.
    pub left: u64,
    /// Dropped because Redis never executed the publish.
    pub never_executed: u64,
    /// Taken in from a buffer that held injected bytes (a forgery may have replaced it).
    pub forged: u64,
    /// Lost on the way with no gap to report it by: no later message of its origin reached
    /// the node, or the member had no earlier one to judge the sequence from.
    pub unreported: u64,
}

#[derive(Debug, Default)]
struct NodeModel {
    /// (room, conn).
    members: BTreeSet<(String, String)>,
    /// Rooms with a `RoomLive` not since undone.
    live: BTreeSet<String>,
    shut: bool,
    local_first: bool,
    /// Reading a buffer that held injected bytes.
    tainted: bool,
    /// The last bytes injected into it (a trailer may straddle two injections).
    injected_tail: Vec<u8>,
    /// Message → the fan-out whose copy this node was handed last.
    taken: BTreeMap<u32, u64>,
    counts: Counts,
}

#[derive(Debug)]
struct Msg {
    node: usize,
    room: String,
    data: Vec<u8>,
    exclude: Option<String>,
    /// Redis executed it at least once.
    executed: bool,
}

/// The oracle. See the module docs.
#[derive(Debug)]
pub struct Oracle {
    nodes: Vec<NodeModel>,
    msgs: BTreeMap<u32, Msg>,
    next_msg: u32,
    /// Fan-out seq → message, for the fan-outs of the tests' own publishes.
    fanouts: BTreeMap<u64, u32>,
    /// Messages owed to a member: key → message → whether its hub has taken it in.
    owed: BTreeMap<Key, BTreeMap<u32, bool>>,
    /// Messages delivered to a member during its current membership.
    delivered: BTreeSet<(Key, u32)>,
    /// The fan-out seq of the last message delivered to a member from Redis.
    last: BTreeMap<Key, u64>,
    forged_origins: BTreeSet<InstanceId>,
    /// The publish whose own events are being read (`LocalFirst` local deliveries).
    in_publish: Option<(usize, u32)>,
    stats: Stats,
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

impl Oracle {
    /// An oracle for `local_first.len()` nodes; `local_first[i]` says whether node `i` uses
    /// `DeliveryMode::LocalFirst`. Call [`Sim::observe`] before the first step.
    pub fn new(local_first: &[bool]) -> Oracle {
        Oracle {
            nodes: local_first
                .iter()
                .map(|&local_first| NodeModel {
                    local_first,
                    ..NodeModel::default()
                })
                .collect(),
            msgs: BTreeMap::new(),
            next_msg: 0,
            fanouts: BTreeMap::new(),
            owed: BTreeMap::new(),
            delivered: BTreeSet::new(),
            last: BTreeMap::new(),
            forged_origins: BTreeSet::new(),
            in_publish: None,
            stats: Stats::default(),
        }
    }

    /// The next message's number and its payload of about `len` bytes (at least 8): publish
    /// it, then report it with [`Oracle::published`].
    pub fn next_message(&mut self, len: usize) -> (u32, Vec<u8>) {
        self.next_msg += 1;
        (self.next_msg, tagged(self.next_msg, len))
    }

    /// The (room, connection) memberships of node `n`.
    pub fn members(&self, n: usize) -> &BTreeSet<(String, String)> {
        &self.nodes[n].members
    }

    /// Whether node `n` was shut down.
    pub fn is_shut(&self, n: usize) -> bool {
        self.nodes[n].shut
    }

    /// How the obligations so far ended.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What the oracle counted from node `n`'s events.
    pub fn counts(&self, n: usize) -> Counts {
        self.nodes[n].counts
    }

    /// `Hub::join(room, conn)` on node `n` succeeded; returns whether the membership is new.
    pub fn joined(&mut self, sim: &mut Sim, n: usize, room: &str, conn: &str) -> bool {
        let added = self.nodes[n].members.insert((room.into(), conn.into()));
        self.drain_of(sim, n);
        added
    }

    /// `Hub::leave(room, conn)` on node `n` succeeded; returns whether it was a member.
    pub fn left(&mut self, sim: &mut Sim, n: usize, room: &str, conn: &str) -> bool {
        let was = self.end(n, room, conn);
        self.drain_of(sim, n);
        was
    }

    /// `Hub::disconnect(conn)` on node `n` succeeded; returns the rooms it was in, sorted.
    pub fn disconnected(&mut self, sim: &mut Sim, n: usize, conn: &str) -> Vec<String> {
        let rooms: Vec<String> = self.nodes[n]
            .members
            .iter()
            .filter(|(_, m)| m == conn)
            .map(|(r, _)| r.clone())
            .collect();
        for r in &rooms {
            self.end(n, r, conn);
        }
        self.drain_of(sim, n);
        rooms
    }

    /// `Hub::begin_shutdown` on node `n`: its events (the leaves' presence deliveries went
    /// to the members of the moment) are read first, then every membership ends.
    pub fn shut_down(&mut self, sim: &mut Sim, n: usize) {
        self.drain_of(sim, n);
        let gone: Vec<(String, String)> = self.nodes[n].members.iter().cloned().collect();
        for (r, m) in gone {
            self.end(n, &r, &m);
        }
        self.nodes[n].shut = true;
    }

    /// Node `n` accepted the publish of message `msg` (from [`Oracle::next_message`]) to
    /// `room`, excluding `exclude`. Reads the events the publish made.
    pub fn published(
        &mut self,
        sim: &mut Sim,
        n: usize,
        msg: u32,
        room: &str,
        data: &[u8],
        exclude: Option<&str>,
    ) {
        self.msgs.insert(
            msg,
            Msg {
                node: n,
                room: room.into(),
                data: data.to_vec(),
                exclude: exclude.map(Into::into),
                executed: false,
            },
        );
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.live.contains(room) {
                continue;
            }
            for (r, m) in &node.members {
                if r == room && !(i == n && Some(m.as_str()) == exclude) {
                    self.owed
                        .entry((i, r.clone(), m.clone()))
                        .or_default()
                        .insert(msg, false);
                    self.stats.owed += 1;
                }
            }
        }
        self.in_publish = Some((n, msg));
        self.drain_of(sim, n);
        self.in_publish = None;
    }

    /// Ends a membership: a message its hub took in must have been delivered by now.
    fn end(&mut self, n: usize, room: &str, conn: &str) -> bool {
        let key = (n, room.to_string(), conn.to_string());
        if let Some(owed) = self.owed.remove(&key) {
            for (msg, taken) in owed {
                assert!(
                    !taken,
                    "node {n}: {conn:?} left {room:?} without message {msg}, which its hub took in"
                );
                self.stats.left += 1;
            }
        }
        self.delivered.retain(|(k, _)| *k != key);
        self.last.remove(&key);
        let was = self.nodes[n]
            .members
            .remove(&(room.to_string(), conn.to_string()));
        if !self.nodes[n].members.iter().any(|(r, _)| r == room) {
            self.nodes[n].live.remove(room);
        }
        was
    }

    fn drain_of(&mut self, sim: &mut Sim, n: usize) {
        sim.poll_events(n);
        self.drain(sim);
    }

    /// Reads the simulation's log and checks every entry; then no member may lack a
    /// message its hub has taken in.
    pub fn drain(&mut self, sim: &mut Sim) {
        for o in std::mem::take(&mut sim.log) {
            match o {
                Observed::Fanout { fanout, foreign } => {
                    let payload = Bytes::from(fanout.payload);
                    let Ok(d) = envelope::decode(&payload, HARD_MAX_ENVELOPE_BYTES) else {
                        continue;
                    };
                    let origin = d.trailer.map(|t| t.origin);
                    if foreign {
                        if let Some(o) = origin.filter(|o| self.is_ours(*o)) {
                            self.forged_origins.insert(o);
                        }
                        continue;
                    }
                    let Some(msg) = tag_of(&d.data) else { continue };
                    let Some(m) = self.msgs.get_mut(&msg) else {
                        continue;
                    };
                    if origin == Some(Sim::identity(m.node).instance) {
                        m.executed = true;
                        self.fanouts.insert(fanout.seq, msg);
                    }
                }
                Observed::TakenIn { node, seq } => {
                    let Some(&msg) = self.fanouts.get(&seq) else {
                        continue;
                    };
                    self.nodes[node].taken.insert(msg, seq);
                    let tainted = self.nodes[node].tainted;
                    let room = &self.msgs[&msg].room;
                    for ((n, r, _), owed) in self.owed.iter_mut() {
                        if *n == node && r == room {
                            if tainted {
                                if owed.remove(&msg).is_some() {
                                    self.stats.forged += 1;
                                }
                            } else if let Some(taken) = owed.get_mut(&msg) {
                                *taken = true;
                            }
                        }
                    }
                }
                Observed::Injected { node, bytes } => {
                    let n = &mut self.nodes[node];
                    let mut scan = std::mem::take(&mut n.injected_tail);
                    scan.extend_from_slice(&bytes);
                    for w in scan.windows(13) {
                        if w[..4] == TRAILER_MAGIC {
                            let origin =
                                u64::from_le_bytes(w[5..13].try_into().unwrap_or_default());
                            if self.is_ours(InstanceId(origin)) {
                                self.forged_origins.insert(InstanceId(origin));
                            }
                        }
                    }
                    let keep = scan.len().saturating_sub(12);
                    self.nodes[node].injected_tail = scan.split_off(keep);
                }
                Observed::Tainted { node, on } => self.nodes[node].tainted = on,
                Observed::Event(n, e) => self.event(n, e),
            }
        }
        for ((n, room, conn), owed) in &self.owed {
            for (msg, taken) in owed {
                assert!(
                    !taken,
                    "node {n}: {conn:?} in {room:?} did not get message {msg}, which its hub took in"
                );
            }
        }
    }

    fn is_ours(&self, o: InstanceId) -> bool {
        (0..self.nodes.len()).any(|i| Sim::identity(i).instance == o)
    }

    /// Node `n` says it may have missed messages of `room`.
    fn account(&mut self, n: usize, room: &str) {
        let stats = &mut self.stats;
        self.owed.retain(|(i, r, _), owed| {
            let hit = *i == n && r == room;
            if hit {
                stats.accounted += owed.len() as u64;
            }
            !hit
        });
    }

    fn event(&mut self, n: usize, ev: Event) {
        match ev {
            Event::PublishConfirmed { .. } => self.nodes[n].counts.confirmed += 1,
            Event::PublishFailed { .. } => self.nodes[n].counts.failed += 1,
            Event::RoomLive { room } => {
                let node = &mut self.nodes[n];
                if !node.tainted && node.members.iter().any(|(r, _)| r == room.as_str()) {
                    node.live.insert(room.as_str().to_string());
                }
            }
            Event::RoomNotLive { room, .. } => {
                self.nodes[n].live.remove(room.as_str());
                self.account(n, room.as_str());
            }
            Event::Gap { room, .. } => {
                self.nodes[n].counts.gaps += 1;
                self.account(n, room.as_str());
            }
            Event::Dropped {
                room: Some(room), ..
            } => self.account(n, room.as_str()),
            Event::LinkUp { missed_rooms, .. } => {
                for room in missed_rooms {
                    self.account(n, room.as_str());
                }
            }
            Event::LinkDown { cause, .. } => assert!(!cause.to_string().is_empty()),
            Event::Delivery(d) => {
                let room = d.message.room.as_str().to_string();
                let node = &mut self.nodes[n];
                node.counts.deliveries += 1;
                node.counts.member_deliveries += d.recipient_count() as u64;
                let members: BTreeSet<&str> = node
                    .members
                    .iter()
                    .filter(|(r, _)| *r == room)
                    .map(|(_, m)| m.as_str())
                    .collect();
                assert!(
                    !members.is_empty(),
                    "node {n}: delivery to {room:?}, which has no members"
                );
                for r in d.recipients() {
                    assert!(
                        members.contains(r.as_str()),
                        "node {n}: {r:?} is not in {room:?}"
                    );
                    assert_ne!(Some(r), d.excluded(), "node {n}: excluded {r:?} got it");
                }
                if let Some(x) = d.excluded() {
                    assert!(members.contains(x.as_str()));
                }
                if node.tainted || d.message.message_type != MessageType::Broadcast {
                    return;
                }
                let Some(msg) = tag_of(&d.message.data) else {
                    assert!(
                        d.message
                            .origin
                            .is_none_or(|t| !self.is_ours(t.origin)
                                || self.forged_origins.contains(&t.origin)),
                        "node {n}: an untagged broadcast from {:?}",
                        d.message.origin
                    );
                    return;
                };
                let Some(m) = self.msgs.get(&msg) else {
                    return; // A forgery of a number not yet published.
                };
                let publisher = Sim::identity(m.node).instance;
                let local = self.in_publish == Some((n, msg));
                let genuine = match d.message.origin {
                    Some(t) => t.origin == publisher && !self.forged_origins.contains(&publisher),
                    None => local,
                };
                if !genuine {
                    return;
                }
                assert_eq!(room, m.room, "message {msg} delivered to another room");
                assert_eq!(&d.message.data[..], &m.data[..], "message {msg} altered");
                if n == m.node {
                    if let Some(x) = &m.exclude {
                        assert!(
                            d.recipients().all(|r| r.as_str() != x),
                            "node {n}: excluded {x:?} got message {msg}"
                        );
                    }
                }
                let local_first = self.nodes[n].local_first && n == m.node;
                let seq = self.nodes[n].taken.get(&msg).copied();
                assert!(
                    local_first || seq.is_some(),
                    "node {n}: message {msg} delivered before its hub was handed it"
                );
                for r in d.recipients() {
                    let key = (n, room.clone(), r.as_str().to_string());
                    assert!(
                        self.delivered.insert((key.clone(), msg)),
                        "node {n}: {r:?} got message {msg} twice in {room:?}"
                    );
                    if let Some(owed) = self.owed.get_mut(&key) {
                        if owed.remove(&msg).is_some() {
                            self.stats.delivered += 1;
                        }
                    }
                    if let (false, Some(seq)) = (local_first, seq) {
                        if let Some(before) = self.last.insert(key, seq) {
                            assert!(
                                before < seq,
                                "node {n}: {r:?} got message {msg} out of Redis's order in {room:?}"
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The cluster invariant after quiescence ([`Sim::subscription_violations`]) for the
    /// memberships the oracle knows: every room with members on a node that was not shut
    /// down is subscribed by that node exactly once, on a live node of the shard owning its
    /// slot, and no room without members is. Panics listing every violation.
    pub fn check_cluster_subscriptions(&self, sim: &Sim) {
        let rooms: Vec<Option<BTreeSet<String>>> = self
            .nodes
            .iter()
            .map(|n| (!n.shut).then(|| n.members.iter().map(|(r, _)| r.clone()).collect()))
            .collect();
        let wrong = sim.subscription_violations(&rooms);
        assert!(
            wrong.is_empty(),
            "the cluster's subscriptions do not match the memberships:\n{}",
            wrong.join("\n")
        );
    }

    /// Rooms that still owe messages, by the node that published them: publish one more
    /// message from each (so that what a node never received shows as a `Gap`), settle, and
    /// call [`Oracle::finish`].
    pub fn unsettled(&self) -> BTreeSet<(usize, String)> {
        self.owed
            .values()
            .flat_map(|owed| owed.keys())
            .filter_map(|msg| {
                let m = &self.msgs[msg];
                m.executed.then(|| (m.node, m.room.clone()))
            })
            .collect()
    }

    /// The end of a run, after every fault is healed and time has passed: every message
    /// Redis executed has reached every member it was owed to, or an event accounted for it,
    /// or there was no gap to report it by (a loss is reported as a `Gap` at the origin's
    /// next message to the room, judged from the first message of that origin the hub saw
    /// there: without a later message, or without an earlier one the member received, the
    /// hub cannot tell). What Redis never executed is no longer owed.
    pub fn finish(&mut self, sim: &mut Sim) {
        self.drain(sim);
        for ((n, room, conn), owed) in &self.owed {
            for msg in owed.keys() {
                let m = &self.msgs[msg];
                if !m.executed {
                    self.stats.never_executed += 1;
                    continue;
                }
                // The hub judges sequences from the first message of an origin it sees in a
                // room: a loss is only promised as a gap when the member had an earlier one.
                let key = (*n, room.clone(), conn.clone());
                let same_origin =
                    |l: &u32| self.msgs[l].node == m.node && self.msgs[l].room == m.room;
                let baseline = self
                    .delivered
                    .iter()
                    .any(|(k, e)| *k == key && e < msg && same_origin(e));
                let later = self.nodes[*n]
                    .taken
                    .keys()
                    .find(|l| **l > *msg && same_origin(l))
                    .filter(|_| baseline);
                assert!(
                    later.is_none(),
                    "node {n}: {conn:?} in {room:?} never got message {msg}, which Redis executed, \
                     and no gap was reported when message {} of the same origin arrived",
                    later.copied().unwrap_or_default()
                );
                self.stats.unreported += 1;
            }
        }
        self.owed.clear();
    }
}
