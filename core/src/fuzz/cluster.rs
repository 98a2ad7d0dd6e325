//! Several hubs against one [`ModelRedis`], driven like a correct adapter would drive them,
//! with the network faults a fuzz input may ask for, including hostile bytes on a link.
//!
//! Unlike `sim::Sim` it hands every event to the caller as soon as the call that made it
//! returns (so deliveries can be checked against the membership at that moment), checks
//! what the hubs buffer after every input, and refuses to spin: a run that never settles or a
//! timer that keeps asking for the past is a finding.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::sim::{ClientId, ModelConfig, ModelRedis};
use crate::{Config, Event, Hub, Identity, InstanceId, LinkId, LinkRequest};

/// One instance and the adapter state around it.
#[derive(Debug)]
pub(super) struct Peer {
    pub hub: Hub,
    clients: BTreeMap<LinkId, ClientId>,
    inbox: BTreeMap<LinkId, BytesMut>,
    connecting: Vec<LinkId>,
    deaf: BTreeSet<LinkId>,
}

impl Peer {
    pub fn client(&self, link: LinkId) -> Option<ClientId> {
        self.clients.get(&link).copied()
    }

    /// Bytes of partial frames held for the hub.
    pub fn held_input(&self) -> usize {
        self.inbox.values().map(BytesMut::len).sum()
    }
}

#[derive(Debug)]
pub(super) struct Cluster {
    pub redis: ModelRedis,
    pub peers: Vec<Peer>,
    pub now: Instant,
    /// While true, connection attempts fail.
    pub refuse: bool,
    /// Input is handed over in pieces of at most this many bytes.
    pub chunk: usize,
    /// Events in the order they were polled: (peer, event).
    pub events: Vec<(usize, Event)>,
}

/// Steps without the clock before a run counts as spinning.
const MAX_STEPS: usize = 10_000;

impl Cluster {
    pub fn new(configs: Vec<Config>, chunk: usize) -> Cluster {
        let now = Instant::now();
        let peers = configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| Peer {
                hub: Hub::new(
                    config,
                    Identity {
                        instance: InstanceId(0x1000 + i as u64),
                        epoch: 1,
                    },
                    now,
                )
                .expect("fuzz configurations are valid"),
                clients: BTreeMap::new(),
                inbox: BTreeMap::new(),
                connecting: Vec::new(),
                deaf: BTreeSet::new(),
            })
            .collect();
        let mut redis = ModelRedis::new(ModelConfig::default());
        crate::sim::scripts::register_presence_scripts(&mut redis);
        Cluster {
            redis,
            peers,
            now,
            refuse: false,
            chunk: chunk.max(1),
            events: Vec::new(),
        }
    }

    /// Takes one peer's events into `self.events`.
    pub fn poll_events(&mut self, i: usize) {
        while let Some(e) = self.peers[i].hub.poll_event() {
            self.events.push((i, e));
        }
    }

    /// Moves what can move without the clock; returns whether anything did.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        let now = self.now;
        for i in 0..self.peers.len() {
            while let Some(req) = self.peers[i].hub.poll_link_request() {
                progress = true;
                let p = &mut self.peers[i];
                match req {
                    LinkRequest::Open { link, .. } => {
                        // An adapter drops the old connection before opening a new one.
                        if let Some(c) = p.clients.remove(&link) {
                            self.redis.kill(c);
                        }
                        p.inbox.remove(&link);
                        p.connecting.push(link);
                    }
                    LinkRequest::Close { link } => {
                        if let Some(c) = p.clients.remove(&link) {
                            self.redis.kill(c);
                        }
                        p.inbox.remove(&link);
                        p.connecting.retain(|l| *l != link);
                    }
                }
            }
            for link in std::mem::take(&mut self.peers[i].connecting) {
                progress = true;
                if self.refuse {
                    self.peers[i]
                        .hub
                        .handle_disconnected(link, "connection refused", now);
                } else {
                    let c = self.redis.connect();
                    self.peers[i].clients.insert(link, c);
                    self.peers[i].hub.handle_connected(link, now);
                }
                self.poll_events(i);
            }
            while let Some(tx) = self.peers[i].hub.poll_transmit() {
                progress = true;
                if let Some(c) = self.peers[i].clients.get(&tx.link) {
                    self.redis.input(*c, &tx.bytes, now);
                }
            }
            self.poll_events(i);
        }
        for i in 0..self.peers.len() {
            let links: Vec<(LinkId, ClientId)> = self.peers[i]
                .clients
                .iter()
                .map(|(l, c)| (*l, *c))
                .collect();
            for (link, c) in links {
                let out = self.redis.take_output(c);
                if !out.is_empty() && !self.peers[i].deaf.contains(&link) {
                    progress = true;
                    self.deliver(i, link, &out);
                }
                if !self.redis.is_open(c) && self.peers[i].clients.get(&link) == Some(&c) {
                    progress = true;
                    self.peers[i].clients.remove(&link);
                    self.peers[i].inbox.remove(&link);
                    self.peers[i].hub.handle_disconnected(
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

    /// Bytes from the server (or from a hostile one) to a peer's link, in pieces.
    pub fn deliver(&mut self, i: usize, link: LinkId, bytes: &[u8]) {
        let now = self.now;
        for piece in bytes.chunks(self.chunk) {
            let p = &mut self.peers[i];
            if !p.clients.contains_key(&link) {
                return;
            }
            let buf = p.inbox.entry(link).or_default();
            buf.extend_from_slice(piece);
            p.hub.handle_input(link, buf, now);
            let max = p.hub.config().max_frame_bytes;
            if let Some(buf) = p.inbox.get(&link) {
                assert!(
                    buf.len() <= max + 2,
                    "{} bytes kept for a partial frame (max_frame_bytes = {max})",
                    buf.len()
                );
            }
            self.poll_events(i);
        }
    }

    /// Steps until nothing moves.
    pub fn run(&mut self) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("the cluster did not settle in {MAX_STEPS} steps without the clock");
    }

    /// Lets `d` pass, firing every deadline on the way in order.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.run();
        let mut stuck = 0;
        for _ in 0..100_000 {
            let next = self.peers.iter().filter_map(|p| p.hub.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    if t <= self.now {
                        // A deadline that handle_timeout did not move: an adapter would spin.
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

    fn fire(&mut self) {
        let now = self.now;
        self.redis.advance(now);
        for i in 0..self.peers.len() {
            self.peers[i].hub.handle_timeout(now);
            self.poll_events(i);
        }
        self.run();
    }

    /// Closes a link at the server (`CLIENT KILL`).
    pub fn kill(&mut self, i: usize, link: LinkId) {
        if let Some(c) = self.peers[i].client(link) {
            self.redis.kill(c);
        }
    }

    /// Makes the server stop (or resume) serving a link.
    pub fn stall(&mut self, i: usize, link: LinkId, on: bool) {
        if let Some(c) = self.peers[i].client(link) {
            self.redis.set_stalled(c, on);
        }
    }

    /// While deaf, what the server sends to the link is lost on the way.
    pub fn deafen(&mut self, i: usize, link: LinkId, on: bool) {
        if on {
            self.peers[i].deaf.insert(link);
        } else {
            self.peers[i].deaf.remove(&link);
        }
    }

    /// Ends every fault: connections accepted, no link deaf or stalled.
    pub fn heal(&mut self) {
        self.refuse = false;
        for i in 0..self.peers.len() {
            self.peers[i].deaf.clear();
            let links: Vec<LinkId> = self.peers[i].clients.keys().copied().collect();
            for link in links {
                self.stall(i, link, false);
            }
        }
        self.redis.duplicate_subscribe_confirmations(false);
        self.redis.shuffle_unsubscribe_confirmations(None);
    }
}
