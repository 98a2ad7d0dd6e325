//! Several hubs against one [`ModelRedis`] (or a [`ModelCluster`]) over byte queues, driven
//! as a correct adapter drives them, with a virtual clock that jumps to the next deadline
//! (quinn's `Pair`, for a whole cluster of instances) and the network faults tests inject.
//!
//! Against one server ([`Sim::new`]) every `LinkRequest::Open` connects to it, whatever the
//! address. Against a cluster ([`Sim::new_cluster`]) it connects to the node at the requested
//! `host:port`; an address with no node, a failed node or a partitioned one refuses the
//! connection.
//!
//! Everything iterates in a fixed order (nodes by index, links by id) and the only
//! randomness is a seeded generator, so a run replays exactly from its inputs and seed.
//!
//! Every event is taken from its hub as soon as the call that made it returns and appended
//! to one log ([`Sim::log`]) together with what the network did, so an observer (the
//! [`crate::oracle`]) can check each event against the state of the world at that moment.
//! Tests that only want events take them per node ([`Sim::take_events_of`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::model::{ClientId, ClusterLayout, Fanout, ModelCluster, ModelConfig, ModelRedis, Reply};
use roomcast_core::{
    ChannelNamer, Config, Event, Hub, Identity, InstanceId, Joined, LinkId, LinkRequest,
    MemberError, RoomId,
};

/// One instance in the simulation, and the adapter state around it.
#[derive(Debug)]
pub struct Node {
    /// The hub under test.
    pub hub: Hub,
    clients: BTreeMap<LinkId, ClientId>,
    inbox: BTreeMap<LinkId, BytesMut>,
    /// Links asked to open, with the address asked for.
    connecting: Vec<(LinkId, String, u16)>,
    deaf: BTreeSet<LinkId>,
    /// Links whose read buffer holds hostile bytes (until it is empty again: from then on
    /// the server's bytes start at a frame boundary once more).
    tainted: BTreeSet<LinkId>,
    /// Bytes the harness took from the hub's `poll_transmit` (for any link, sent or not).
    pub bytes_polled: u64,
    /// Bytes the harness handed to the hub's `handle_input` (hostile ones included).
    pub bytes_handed: u64,
}

impl Node {
    /// The model's client for a link, if connected.
    pub fn client(&self, link: LinkId) -> Option<ClientId> {
        self.clients.get(&link).copied()
    }

    /// Every connected link with its connection at the server, by link.
    pub fn connections(&self) -> impl Iterator<Item = (LinkId, ClientId)> + '_ {
        self.clients.iter().map(|(l, c)| (*l, *c))
    }

    /// Bytes of partial frames held for the hub.
    pub fn held_input(&self) -> usize {
        self.inbox.values().map(BytesMut::len).sum()
    }
}

/// How bytes travel from the model to the hubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Everything available in one piece.
    Whole,
    /// Pieces of at most this many bytes.
    Chunks(usize),
    /// Pieces of random length from 1 to the given maximum (from the seed).
    Random(usize),
}

/// When the harness calls a hub's `handle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimerMode {
    /// Only when virtual time reaches that hub's own `poll_timeout()`, as a real adapter
    /// does (the default).
    #[default]
    OwnDeadline,
    /// Every hub whenever any hub's deadline passes (hides timers a hub forgot to ask for).
    EveryDeadline,
}

/// One entry of the simulation's log, in the order things happened.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A hub produced an event.
    Event(usize, Event),
    /// The server executed a publish ([`Sim::observe`] only).
    Fanout {
        /// What went where.
        fanout: Fanout,
        /// Published by [`Sim::publish_foreign`], not by a hub.
        foreign: bool,
    },
    /// A node's hub was handed the last byte of fan-out `seq` on one of its links (the hub
    /// has taken the message in; [`Sim::observe`] only).
    TakenIn {
        /// The node.
        node: usize,
        /// [`Fanout::seq`].
        seq: u64,
    },
    /// Hostile bytes were handed to one of a node's links ([`Sim::deliver`]; [`Sim::observe`]
    /// only).
    Injected {
        /// The node.
        node: usize,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// What follows until `Tainted { on: false }` is the node's reading of a buffer that held
    /// hostile bytes: its events and intakes may be forgeries ([`Sim::observe`] only).
    Tainted {
        /// The node.
        node: usize,
        /// Start (or end) of the stretch.
        on: bool,
    },
}

/// A model Redis, several hubs and a virtual clock.
#[derive(Debug)]
pub struct Sim {
    /// The server (unused when the simulation runs against [`Sim::cluster`]).
    pub redis: ModelRedis,
    /// The cluster, for a simulation made with [`Sim::new_cluster`].
    pub cluster: Option<ModelCluster>,
    /// The instances.
    pub nodes: Vec<Node>,
    /// Virtual now.
    pub now: Instant,
    /// While true, connection attempts are refused.
    pub refuse_connections: bool,
    /// How input is cut into pieces.
    pub split: Split,
    /// When timers fire.
    pub timers: TimerMode,
    /// Events and (when observing) network happenings, oldest first.
    pub log: Vec<Observed>,
    /// Fan-outs whose bytes are on the way to a client: (client, stream end, seq).
    in_flight: BTreeMap<ClientId, VecDeque<(u64, u64)>>,
    observe: bool,
    rng: u64,
}

/// Steps without the clock before a run counts as spinning.
const MAX_STEPS: usize = 10_000;

impl Sim {
    /// `n` hubs built from `config(i)` against a fresh model; instance ids are
    /// `0x1000 + i`, epoch 1.
    pub fn new(n: usize, model: ModelConfig, config: impl Fn(usize) -> Config) -> Sim {
        Sim::build(n, ModelRedis::new(model), None, config)
    }

    /// `n` hubs built from `config(i)` (typically from a `redis+cluster://` URL naming some
    /// of the cluster's addresses) against a fresh model cluster of the given layout.
    pub fn new_cluster(n: usize, layout: &ClusterLayout, config: impl Fn(usize) -> Config) -> Sim {
        let mut cluster = ModelCluster::new(layout);
        for i in 0..cluster.nodes().len() {
            crate::scripts::register_presence_scripts(&mut cluster.node_mut(i).redis);
        }
        Sim::build(
            n,
            ModelRedis::new(layout.node.clone()),
            Some(cluster),
            config,
        )
    }

    fn build(
        n: usize,
        mut redis: ModelRedis,
        cluster: Option<ModelCluster>,
        config: impl Fn(usize) -> Config,
    ) -> Sim {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| Node {
                hub: Hub::new(config(i), Sim::identity(i), now)
                    .expect("test configuration is valid"),
                clients: BTreeMap::new(),
                inbox: BTreeMap::new(),
                connecting: Vec::new(),
                deaf: BTreeSet::new(),
                tainted: BTreeSet::new(),
                bytes_polled: 0,
                bytes_handed: 0,
            })
            .collect();
        crate::scripts::register_presence_scripts(&mut redis);
        Sim {
            redis,
            cluster,
            nodes,
            now,
            refuse_connections: false,
            split: Split::Whole,
            timers: TimerMode::default(),
            log: Vec::new(),
            in_flight: BTreeMap::new(),
            observe: false,
            rng: 0x9e37_79b9,
        }
    }

    /// The identity of node `i`.
    pub fn identity(i: usize) -> Identity {
        Identity {
            instance: InstanceId(0x1000 + i as u64),
            epoch: 1,
        }
    }

    /// Seeds the generator behind [`Split::Random`].
    pub fn seed(&mut self, seed: u64) {
        // Xorshift never leaves 0.
        self.rng = seed | 1;
    }

    /// Also logs every fan-out the server executes and when each receiving hub takes it in
    /// ([`Observed::Fanout`], [`Observed::TakenIn`]).
    pub fn observe(&mut self) {
        self.observe = true;
        match &mut self.cluster {
            Some(cl) => cl.record_fanouts(true),
            None => self.redis.record_fanouts(true),
        }
    }

    /// The cluster (panics for a simulation against one server).
    pub fn cluster_mut(&mut self) -> &mut ModelCluster {
        self.cluster
            .as_mut()
            .expect("a simulation made with Sim::new_cluster")
    }

    /// Forgets from `unconfirmed` (hub, publish id) the publishes whose outcome
    /// (`PublishConfirmed` or `PublishFailed`) is in the log; read it before an oracle
    /// drains the log.
    pub fn forget_settled(&self, unconfirmed: &mut BTreeSet<(usize, u64)>) {
        for o in &self.log {
            if let Observed::Event(
                i,
                Event::PublishConfirmed { id, .. } | Event::PublishFailed { id, .. },
            ) = o
            {
                unconfirmed.remove(&(*i, id.0));
            }
        }
    }

    /// The cluster (panics for a simulation against one server).
    pub fn cluster(&self) -> &ModelCluster {
        self.cluster
            .as_ref()
            .expect("a simulation made with Sim::new_cluster")
    }

    // The server side, one server or a cluster.

    fn srv_connect(&mut self, host: &str, port: u16) -> Option<ClientId> {
        match &mut self.cluster {
            Some(cl) => cl.connect(host, port).ok(),
            None => Some(self.redis.connect()),
        }
    }

    fn srv_input(&mut self, c: ClientId, bytes: &[u8], now: Instant) {
        match &mut self.cluster {
            Some(cl) => cl.input(c, bytes, now),
            None => self.redis.input(c, bytes, now),
        }
    }

    fn srv_take_output(&mut self, c: ClientId) -> Vec<u8> {
        match &mut self.cluster {
            Some(cl) => cl.take_output(c),
            None => self.redis.take_output(c),
        }
    }

    fn srv_output_taken(&self, c: ClientId) -> u64 {
        match &self.cluster {
            Some(cl) => cl.output_taken(c),
            None => self.redis.output_taken(c),
        }
    }

    fn srv_is_open(&self, c: ClientId) -> bool {
        match &self.cluster {
            Some(cl) => cl.is_open(c),
            None => self.redis.is_open(c),
        }
    }

    fn srv_kill(&mut self, c: ClientId) {
        match &mut self.cluster {
            Some(cl) => cl.kill(c),
            None => self.redis.kill(c),
        }
    }

    fn srv_set_stalled(&mut self, c: ClientId, stalled: bool) {
        match &mut self.cluster {
            Some(cl) => cl.set_stalled(c, stalled),
            None => self.redis.set_stalled(c, stalled),
        }
    }

    fn srv_take_fanouts(&mut self) -> Vec<Fanout> {
        match &mut self.cluster {
            Some(cl) => cl.take_fanouts(),
            None => self.redis.take_fanouts(),
        }
    }

    fn srv_advance(&mut self, now: Instant) {
        match &mut self.cluster {
            Some(cl) => cl.advance(now),
            None => self.redis.advance(now),
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Takes node `i`'s events out of the log, oldest first.
    pub fn take_events_of(&mut self, i: usize) -> Vec<Event> {
        let (mine, rest): (Vec<Observed>, Vec<Observed>) = std::mem::take(&mut self.log)
            .into_iter()
            .partition(|o| matches!(o, Observed::Event(n, _) if *n == i));
        self.log = rest;
        mine.into_iter()
            .filter_map(|o| match o {
                Observed::Event(_, e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Takes every node's events (and drops the rest of the log).
    pub fn take_events(&mut self) -> Vec<Vec<Event>> {
        let mut out = vec![Vec::new(); self.nodes.len()];
        for o in std::mem::take(&mut self.log) {
            if let Observed::Event(n, e) = o {
                out[n].push(e);
            }
        }
        out
    }

    /// Moves node `i`'s events into the log.
    pub fn poll_events(&mut self, i: usize) {
        while let Some(e) = self.nodes[i].hub.poll_event() {
            self.log.push(Observed::Event(i, e));
        }
    }

    /// Logs the fan-outs the server executed since the last call.
    fn note_fanouts(&mut self, foreign: bool) {
        for fanout in self.srv_take_fanouts() {
            for (c, end) in &fanout.to {
                self.in_flight
                    .entry(*c)
                    .or_default()
                    .push_back((*end, fanout.seq));
            }
            self.log.push(Observed::Fanout { fanout, foreign });
        }
    }

    /// Someone who is not a hub publishes `payload` on `channel` (classic `PUBLISH`; in a
    /// cluster on its first live node, from where it reaches every node); returns Redis's
    /// receiver count.
    pub fn publish_foreign(&mut self, channel: &[u8], payload: &[u8]) -> usize {
        self.note_fanouts(false);
        let n = match &mut self.cluster {
            Some(cl) => {
                let at = (0..cl.nodes().len())
                    .find(|&i| cl.node(i).is_alive())
                    .unwrap_or(0);
                cl.publish(at, channel, payload)
            }
            None => self.redis.publish(channel, payload),
        };
        self.note_fanouts(true);
        n
    }

    /// Someone who is not a hub sends `SPUBLISH` for `channel` to the master of its slot
    /// (cluster only); returns that node's receiver count, or the error it answered.
    pub fn spublish_foreign(&mut self, channel: &[u8], payload: &[u8]) -> Result<usize, Reply> {
        self.note_fanouts(false);
        let n = self.cluster_mut().spublish(channel, payload);
        self.note_fanouts(true);
        n
    }

    /// Moves everything that can move without the clock: link requests, transmits, replies
    /// and events. Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        for i in 0..self.nodes.len() {
            while let Some(req) = self.nodes[i].hub.poll_link_request() {
                progress = true;
                let node = &mut self.nodes[i];
                match req {
                    LinkRequest::Open {
                        link, host, port, ..
                    } => {
                        // An adapter drops the old connection before opening a new one.
                        let old = node.clients.remove(&link);
                        node.inbox.remove(&link);
                        node.tainted.remove(&link);
                        node.connecting.retain(|(l, ..)| *l != link);
                        node.connecting.push((link, host, port));
                        if let Some(c) = old {
                            self.srv_kill(c);
                        }
                    }
                    LinkRequest::Close { link } => {
                        let old = node.clients.remove(&link);
                        node.inbox.remove(&link);
                        node.tainted.remove(&link);
                        node.connecting.retain(|(l, ..)| *l != link);
                        if let Some(c) = old {
                            self.srv_kill(c);
                        }
                    }
                }
            }
            // Connections complete (or are refused) one step after they were asked for.
            for (link, host, port) in std::mem::take(&mut self.nodes[i].connecting) {
                progress = true;
                let c = if self.refuse_connections {
                    None
                } else {
                    self.srv_connect(&host, port)
                };
                match c {
                    None => self.nodes[i]
                        .hub
                        .handle_disconnected(link, "connection refused", now),
                    Some(c) => {
                        self.nodes[i].clients.insert(link, c);
                        self.nodes[i].hub.handle_connected(link, now);
                    }
                }
                self.poll_events(i);
            }
            while let Some(tx) = self.nodes[i].hub.poll_transmit() {
                progress = true;
                self.nodes[i].bytes_polled += tx.bytes.len() as u64;
                if let Some(&c) = self.nodes[i].clients.get(&tx.link) {
                    self.srv_input(c, &tx.bytes, now);
                }
            }
            self.poll_events(i);
        }
        self.note_fanouts(false);
        // Bytes from the server; closed clients become disconnects.
        for i in 0..self.nodes.len() {
            let links: Vec<(LinkId, ClientId)> = self.nodes[i]
                .clients
                .iter()
                .map(|(l, c)| (*l, *c))
                .collect();
            for (link, c) in links {
                let start = self.srv_output_taken(c);
                let out = self.srv_take_output(c);
                if !out.is_empty() {
                    progress = true;
                    if self.nodes[i].deaf.contains(&link) {
                        self.lost(c, start + out.len() as u64);
                    } else {
                        self.hand_over(i, link, Some((c, start)), &out);
                    }
                }
                if !self.srv_is_open(c) && self.nodes[i].clients.get(&link) == Some(&c) {
                    progress = true;
                    self.in_flight.remove(&c);
                    self.nodes[i].clients.remove(&link);
                    self.nodes[i].inbox.remove(&link);
                    self.nodes[i].tainted.remove(&link);
                    self.nodes[i].hub.handle_disconnected(
                        link,
                        "connection closed by the server",
                        now,
                    );
                    self.poll_events(i);
                }
            }
        }
        progress
    }

    /// Fan-outs to `c` that end before `upto` never arrive.
    fn lost(&mut self, c: ClientId, upto: u64) {
        if let Some(q) = self.in_flight.get_mut(&c) {
            while q.front().is_some_and(|(end, _)| *end <= upto) {
                q.pop_front();
            }
        }
    }

    /// Bytes from anyone (the server, or hostile bytes as if from it) to a node's link, in
    /// pieces as [`Sim::split`] says.
    pub fn deliver(&mut self, i: usize, link: LinkId, bytes: &[u8]) {
        if !self.nodes[i].clients.contains_key(&link) {
            return;
        }
        if self.observe {
            self.log.push(Observed::Injected {
                node: i,
                bytes: bytes.to_vec(),
            });
        }
        self.nodes[i].tainted.insert(link);
        self.hand_over(i, link, None, bytes);
    }

    /// Hands `bytes` to the hub in pieces; `from` is the server's client and the stream
    /// offset of `bytes[0]` when they are the server's output.
    fn hand_over(&mut self, i: usize, link: LinkId, from: Option<(ClientId, u64)>, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            let n = match self.split {
                Split::Whole => bytes.len(),
                Split::Chunks(k) => k.max(1),
                Split::Random(k) => 1 + (self.rand() as usize) % k.max(1),
            };
            let end = (at + n).min(bytes.len());
            let now = self.now;
            let node = &mut self.nodes[i];
            if !node.clients.contains_key(&link) {
                return;
            }
            let tainted = node.tainted.contains(&link);
            if tainted && self.observe {
                self.log.push(Observed::Tainted { node: i, on: true });
            }
            let buf = node.inbox.entry(link).or_default();
            buf.extend_from_slice(&bytes[at..end]);
            node.bytes_handed += (end - at) as u64;
            node.hub.handle_input(link, buf, now);
            let max = node.hub.config().max_frame_bytes;
            if let Some(buf) = node.inbox.get(&link) {
                assert!(
                    buf.len() <= max + 2,
                    "node {i}: {} bytes kept for a partial frame (max_frame_bytes = {max})",
                    buf.len()
                );
            }
            if let Some((c, start)) = from {
                let upto = start + end as u64;
                if let Some(q) = self.in_flight.get_mut(&c) {
                    while let Some(&(e, seq)) = q.front() {
                        if e > upto {
                            break;
                        }
                        q.pop_front();
                        if self.observe {
                            self.log.push(Observed::TakenIn { node: i, seq });
                        }
                    }
                }
            }
            self.poll_events(i);
            if tainted {
                let node = &mut self.nodes[i];
                if node.inbox.get(&link).is_none_or(BytesMut::is_empty) {
                    node.tainted.remove(&link);
                }
                if self.observe {
                    self.log.push(Observed::Tainted { node: i, on: false });
                }
            }
            at = end;
        }
    }

    /// Steps until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("the simulation did not settle in {MAX_STEPS} steps without the clock");
    }

    /// The earliest deadline of any hub.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.nodes.iter().filter_map(|n| n.hub.poll_timeout()).min()
    }

    /// Advances the clock by `d`, firing every deadline on the way in order and running the
    /// simulation after each. A hub whose deadline stays in the past after its timeout was
    /// handled (an adapter would spin) fails the run.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.run();
        let mut stuck = 0;
        for _ in 0..100_000 {
            match self.next_deadline() {
                Some(t) if t <= end => {
                    if t <= self.now {
                        stuck += 1;
                        assert!(stuck < 100, "a hub keeps asking for a timeout in the past");
                    } else {
                        stuck = 0;
                    }
                    self.now = self.now.max(t);
                    self.fire();
                }
                _ => break,
            }
        }
        self.now = end;
        self.fire();
    }

    /// Fires the timers that are due at `now` (every hub's, under
    /// [`TimerMode::EveryDeadline`]), then runs.
    fn fire(&mut self) {
        let now = self.now;
        self.srv_advance(now);
        for i in 0..self.nodes.len() {
            let due = match self.timers {
                TimerMode::OwnDeadline => {
                    self.nodes[i].hub.poll_timeout().is_some_and(|t| t <= now)
                }
                TimerMode::EveryDeadline => true,
            };
            if due {
                self.nodes[i].hub.handle_timeout(now);
                self.poll_events(i);
            }
        }
        self.run();
    }

    /// `Hub::join` on node `i`, at virtual now. Tests call membership commands through these
    /// methods, so that a change of their signature is a change here.
    pub fn join(&mut self, i: usize, room: &str, conn: &str) -> Result<Joined, MemberError> {
        self.nodes[i].hub.join(room, conn, self.now)
    }

    /// `Hub::join_many` on node `i`, at virtual now.
    pub fn join_many(
        &mut self,
        i: usize,
        rooms: &[&str],
        conn: &str,
    ) -> Result<usize, (usize, MemberError)> {
        self.nodes[i].hub.join_many(rooms, conn, self.now)
    }

    /// `Hub::leave` on node `i`, at virtual now.
    pub fn leave(&mut self, i: usize, room: &str, conn: &str) -> Result<bool, MemberError> {
        self.nodes[i].hub.leave(room, conn, self.now)
    }

    /// `Hub::disconnect` on node `i`, at virtual now.
    pub fn disconnect(&mut self, i: usize, conn: &str) -> Result<Vec<RoomId>, MemberError> {
        self.nodes[i].hub.disconnect(conn, self.now)
    }

    /// Runs, then lets 1 ms of virtual time pass (links connect, confirmations arrive).
    pub fn settle(&mut self) {
        self.advance(Duration::from_millis(1));
    }

    /// Kills one node's link at the server (like `CLIENT KILL`).
    pub fn kill_link(&mut self, node: usize, link: LinkId) {
        if let Some(c) = self.nodes[node].client(link) {
            self.srv_kill(c);
        }
    }

    /// Stops the server from processing one node's link (like `DEBUG SLEEP` for that client).
    pub fn stall_link(&mut self, node: usize, link: LinkId, stalled: bool) {
        if let Some(c) = self.nodes[node].client(link) {
            self.srv_set_stalled(c, stalled);
        }
    }

    /// While deaf, everything the server sends to this link is lost on the way (the link
    /// stays connected): the "connected but deaf" fault.
    pub fn deafen(&mut self, node: usize, link: LinkId, deaf: bool) {
        if deaf {
            self.nodes[node].deaf.insert(link);
        } else {
            self.nodes[node].deaf.remove(&link);
        }
    }

    /// The shard channel of `room` as hub `i` names it.
    pub fn room_channel(&self, i: usize, room: &str) -> Vec<u8> {
        let config = self.nodes[i].hub.config();
        let namer = ChannelNamer::new(&config.channel_prefix).expect("the hub's prefix is valid");
        let room = RoomId::new(room, config.max_room_id_bytes).expect("a valid room id");
        let mut channel = Vec::new();
        namer.write_room_channel(&room, &mut channel);
        channel
    }

    /// Where hub `i` holds its subscription of `room` in the cluster: `(link, connection,
    /// cluster node)` for each connection of the hub subscribed to the room's shard channel
    /// (after quiescence there should be exactly one).
    pub fn room_subscriptions(&self, i: usize, room: &str) -> Vec<(LinkId, ClientId, usize)> {
        let channel = self.room_channel(i, room);
        let cl = self.cluster();
        cl.shard_subscribers(&channel)
            .into_iter()
            .filter_map(|(n, c)| {
                let (link, _) = self.nodes[i].connections().find(|(_, mine)| *mine == c)?;
                Some((link, c, n))
            })
            .collect()
    }

    /// The cluster invariant after quiescence, for hubs whose rooms with members are
    /// `rooms[i]` (hubs past the end of `rooms`, and hubs given `None`, are skipped): each
    /// such room is subscribed by its hub exactly once in the whole cluster, on a live node
    /// of the shard that owns the room's slot, and the hub holds no subscription of a room
    /// without members. Returns what is wrong, one line per violation (empty: it holds).
    /// Counts come from the model's subscriber registries (what `PUBSUB SHARDNUMSUB` counts).
    pub fn subscription_violations(&self, rooms: &[Option<BTreeSet<String>>]) -> Vec<String> {
        let cl = self.cluster();
        let mut out = Vec::new();
        for (i, rooms) in rooms.iter().enumerate() {
            let Some(rooms) = rooms else { continue };
            let mine: BTreeSet<ClientId> = self.nodes[i].clients.values().copied().collect();
            for room in rooms {
                let channel = self.room_channel(i, room);
                let slot = crate::model::slot_of(&channel);
                let owner = cl.owner(slot);
                let at: Vec<usize> = self
                    .room_subscriptions(i, room)
                    .into_iter()
                    .map(|(_, _, n)| n)
                    .collect();
                let well_placed = |n: &usize| {
                    let node = cl.node(*n);
                    node.is_alive() && Some(node.shard()) == owner
                };
                if at.len() != 1 || !at.iter().all(well_placed) {
                    out.push(format!(
                        "hub {i}: room {room:?} (slot {slot}, owned by shard {owner:?}) is \
                         subscribed on cluster nodes {at:?} (shards {:?}); expected once, on \
                         a live node of the owner",
                        at.iter().map(|n| cl.node(*n).shard()).collect::<Vec<_>>()
                    ));
                }
            }
            let config = self.nodes[i].hub.config();
            let namer = ChannelNamer::new(&config.channel_prefix).expect("valid prefix");
            for &c in &mine {
                let Some(n) = cl.node_of(c) else { continue };
                for channel in cl.node(n).redis.shard_subscriptions_of(c) {
                    let Some(room) = namer.room_from_channel(&channel, config.max_room_id_bytes)
                    else {
                        continue;
                    };
                    if !rooms.contains(room.as_str()) {
                        out.push(format!(
                            "hub {i}: room {:?} has no members but is still subscribed on \
                             cluster node {n}",
                            room.as_str()
                        ));
                    }
                }
            }
        }
        out
    }

    /// Ends every fault: connections accepted, no link deaf or stalled, confirmations
    /// neither doubled nor shuffled, no cluster node partitioned (failed nodes stay failed,
    /// deaf subscriptions stay deaf: those are not network faults).
    pub fn heal(&mut self) {
        self.refuse_connections = false;
        if let Some(cl) = &mut self.cluster {
            for i in 0..cl.nodes().len() {
                cl.heal(i);
            }
        }
        for i in 0..self.nodes.len() {
            self.nodes[i].deaf.clear();
            let links: Vec<LinkId> = self.nodes[i].clients.keys().copied().collect();
            for link in links {
                self.stall_link(i, link, false);
            }
        }
        self.redis.duplicate_subscribe_confirmations(false);
        self.redis.shuffle_unsubscribe_confirmations(None);
    }
}
