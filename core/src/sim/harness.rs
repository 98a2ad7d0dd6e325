//! Several hubs against one [`ModelRedis`] over byte queues, with a virtual clock that jumps
//! to the next deadline (quinn's `Pair`, for a whole cluster of instances).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::model::{ClientId, ModelConfig, ModelRedis};
use crate::{Config, Event, Hub, Identity, InstanceId, LinkId, LinkRequest};

/// One instance in the simulation.
#[derive(Debug)]
pub struct Node {
    /// The hub under test.
    pub hub: Hub,
    /// Events the hub produced, oldest first (tests take them out).
    pub events: Vec<Event>,
    clients: HashMap<LinkId, ClientId>,
    inbox: HashMap<LinkId, BytesMut>,
    connecting: Vec<LinkId>,
}

impl Node {
    /// Takes the events collected so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The model's client for a link, if connected.
    pub fn client(&self, link: LinkId) -> Option<ClientId> {
        self.clients.get(&link).copied()
    }
}

/// How bytes travel from the model to the hubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Everything available in one piece.
    Whole,
    /// Pieces of at most this many bytes.
    Chunks(usize),
    /// Pieces of random length from 1 to the given maximum (seeded).
    Random(usize),
}

/// A model Redis, several hubs and a virtual clock.
#[derive(Debug)]
pub struct Sim {
    /// The server.
    pub redis: ModelRedis,
    /// The instances.
    pub nodes: Vec<Node>,
    /// Virtual now.
    pub now: Instant,
    /// While true, connection attempts are refused.
    pub refuse_connections: bool,
    /// How input is cut into pieces.
    pub split: Split,
    deaf: Vec<(usize, LinkId)>,
    rng: u64,
}

impl Sim {
    /// `n` hubs built from `config(i)` against a fresh model.
    pub fn new(n: usize, model: ModelConfig, config: impl Fn(usize) -> Config) -> Sim {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| Node {
                hub: Hub::new(
                    config(i),
                    Identity {
                        instance: InstanceId(0x1000 + i as u64),
                        epoch: 1,
                    },
                    now,
                )
                .expect("test configuration is valid"),
                events: Vec::new(),
                clients: HashMap::new(),
                inbox: HashMap::new(),
                connecting: Vec::new(),
            })
            .collect();
        let mut redis = ModelRedis::new(model);
        super::scripts::register_presence_scripts(&mut redis);
        Sim {
            redis,
            nodes,
            now,
            refuse_connections: false,
            split: Split::Whole,
            deaf: Vec::new(),
            rng: 0x9e37_79b9,
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Moves everything that can move without the clock: link requests, transmits, replies
    /// and events. Returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        for i in 0..self.nodes.len() {
            // Link requests.
            while let Some(req) = self.nodes[i].hub.poll_link_request() {
                progress = true;
                match req {
                    LinkRequest::Open { link, .. } => self.nodes[i].connecting.push(link),
                    LinkRequest::Close { link } => {
                        if let Some(c) = self.nodes[i].clients.remove(&link) {
                            self.redis.kill(c);
                        }
                        self.nodes[i].inbox.remove(&link);
                    }
                }
            }
            // Connections complete (or are refused) one step after they were asked for.
            let connecting = std::mem::take(&mut self.nodes[i].connecting);
            for link in connecting {
                progress = true;
                if self.refuse_connections {
                    self.nodes[i]
                        .hub
                        .handle_disconnected(link, "connection refused", now);
                } else {
                    let c = self.redis.connect();
                    self.nodes[i].clients.insert(link, c);
                    self.nodes[i].hub.handle_connected(link, now);
                }
            }
            // Bytes to the server.
            while let Some(tx) = self.nodes[i].hub.poll_transmit() {
                progress = true;
                if let Some(c) = self.nodes[i].clients.get(&tx.link) {
                    self.redis.input(*c, &tx.bytes, now);
                }
            }
        }
        // Bytes from the server; closed clients become disconnects.
        for i in 0..self.nodes.len() {
            let links: Vec<(LinkId, ClientId)> = self.nodes[i]
                .clients
                .iter()
                .map(|(l, c)| (*l, *c))
                .collect();
            for (link, c) in links {
                let out = self.redis.take_output(c);
                if !out.is_empty() && !self.deaf.contains(&(i, link)) {
                    progress = true;
                    self.deliver(i, link, &out);
                }
                if !self.redis.is_open(c) && self.nodes[i].clients.get(&link) == Some(&c) {
                    progress = true;
                    self.nodes[i].clients.remove(&link);
                    self.nodes[i].inbox.remove(&link);
                    self.nodes[i].hub.handle_disconnected(
                        link,
                        "connection closed by the server",
                        now,
                    );
                }
            }
            while let Some(ev) = self.nodes[i].hub.poll_event() {
                progress = true;
                self.nodes[i].events.push(ev);
            }
        }
        progress
    }

    fn deliver(&mut self, i: usize, link: LinkId, bytes: &[u8]) {
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
            let buf = node.inbox.entry(link).or_default();
            buf.extend_from_slice(&bytes[at..end]);
            node.hub.handle_input(link, buf, now);
            at = end;
        }
    }

    /// Steps until nothing moves (at most `10_000` steps).
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("simulation did not settle in 10,000 steps");
    }

    /// The earliest deadline of any hub.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.nodes.iter().filter_map(|n| n.hub.poll_timeout()).min()
    }

    /// Advances the clock by `d`, firing every deadline on the way in order and running the
    /// simulation after each.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.run();
        for _ in 0..100_000 {
            match self.next_deadline() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.redis.advance(self.now);
                    let now = self.now;
                    for n in &mut self.nodes {
                        n.hub.handle_timeout(now);
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
        self.redis.advance(end);
        let now = self.now;
        for n in &mut self.nodes {
            n.hub.handle_timeout(now);
        }
        self.run();
    }

    /// Runs, then lets `d` of virtual time pass (links connect, confirmations arrive).
    pub fn settle(&mut self) {
        self.advance(Duration::from_millis(1));
    }

    /// Kills one node's link at the server (like `CLIENT KILL`).
    pub fn kill_link(&mut self, node: usize, link: LinkId) {
        if let Some(c) = self.nodes[node].clients.get(&link) {
            self.redis.kill(*c);
        }
    }

    /// Stops the server from processing one node's link (like `DEBUG SLEEP` for that client).
    pub fn stall_link(&mut self, node: usize, link: LinkId, stalled: bool) {
        if let Some(c) = self.nodes[node].clients.get(&link) {
            self.redis.set_stalled(*c, stalled);
        }
    }

    /// While deaf, everything the server sends to this link is lost on the way (the link
    /// stays connected): the "connected but deaf" fault.
    pub fn deafen(&mut self, node: usize, link: LinkId, deaf: bool) {
        self.deaf.retain(|d| *d != (node, link));
        if deaf {
            self.deaf.push((node, link));
        }
    }

    /// Takes every node's events.
    pub fn take_events(&mut self) -> Vec<Vec<Event>> {
        self.nodes.iter_mut().map(Node::take_events).collect()
    }
}
