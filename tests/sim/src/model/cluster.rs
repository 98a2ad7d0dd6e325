//! A model Redis Cluster (7.0.15): several model nodes, each at its own address, grouped
//! into shards (a master and its replicas) over a table of 16384 hash slots, and the
//! topology changes tests inject (slot migration, manual and hard failover, partitions, the
//! deaf subscriber of redis/redis#12558).
//!
//! Each node is a [`ModelRedis`] that knows the cluster's slot table (its *view*). What a
//! node does differently from a single server, as redis-server 7.0.15 does it:
//!
//! - **Routing** (`getNodeByQuery`): a command naming keys or shard channels is served only
//!   by the master of the shard that owns their slot; a replica of that shard also serves
//!   `SSUBSCRIBE`, `SUNSUBSCRIBE` and `SPUBLISH` (no `READONLY` needed). Otherwise:
//!   `-MOVED <slot> <host>:<port>` of the owner's master, `-CROSSSLOT Keys in request don't
//!   hash to the same slot` when the names span slots, `-CLUSTERDOWN Hash slot not served`
//!   when the first name's slot has no owner. Inside `MULTI` a refused command aborts the
//!   transaction; `EXEC` checks every queued command together and discards it on error.
//!   Commands without keys (`PING`, `PUBLISH`, `SUBSCRIBE`, `EVALSHA` with no keys, ...)
//!   run on any node. Inside a script every key a command touches must be served by the node
//!   and share one slot (that of the declared keys, or of the first key touched), else
//!   `Script attempted to access a non local key in a cluster node script` or `... keys
//!   that do not hash to the same slot` (Redis 7.0's `scriptVerifyClusterState`; without
//!   Redis's `script: <sha>` suffix).
//! - **`CLUSTER SHARDS`** answers in the shape of 7.0.15 (RESP2 and RESP3, checked against
//!   captures in `core/tests/data/cluster/`), `CLUSTER KEYSLOT` and `CLUSTER MYID` too;
//!   `SELECT` of a database other than 0 is refused.
//! - **Pub/sub**: `SPUBLISH` delivers `smessage` on every node of the owning shard (master
//!   and replicas) and answers the count of the answering node's subscribers only;
//!   `PUBLISH` is broadcast to every node (the cluster bus). Each node keeps its own
//!   subscribers, so `PUBSUB SHARDNUMSUB` counts the answering node's only.
//!
//! # Known differences from Redis Cluster
//! - There is no cluster bus and no gossip: every node learns a topology change the moment
//!   the test makes it, and a message published on one node reaches the other nodes of its
//!   shard (or, for `PUBLISH`, of the cluster) before the publishing call returns.
//! - Keys live on masters only and move with their slot (or, on failover, are copied to the
//!   promoted replica, as replication would have): a replica answers `-MOVED` for key
//!   commands (`READONLY` and `ASKING` are not modelled, nor `MIGRATING`/`IMPORTING`
//!   states: a migration is one instant step, like the final `CLUSTER SETSLOT ... NODE`).
//! - `replication-offset` in `CLUSTER SHARDS` is a counter bumped at each topology change,
//!   not a byte offset; shards are listed in the order they were created (Redis: the order
//!   of its node table, which is unspecified).
//! - On a failover (manual or hard) the replicas that are not promoted drop their shard
//!   channels like the old master does: this follows the 7.0.15 source (`clusterDelSlot`
//!   removes the channels on every node serving the slot); the captures come from clusters
//!   with one replica per shard, where no such replica exists.

use std::collections::BTreeSet;
use std::time::Instant;

use super::keyspace::ScriptGuard;
use super::reply::Reply;
use super::{sha1_hex, ClientId, Fanout, ModelConfig, ModelRedis};

/// Number of hash slots.
pub const SLOTS: usize = 16384;

/// "No shard" in a slot table.
const NO_SHARD: u16 = u16::MAX;

/// Bits of a [`ClientId`] left to a node's own numbering; the bits above name the node.
const CLIENT_BITS: u32 = 20;

/// CRC16/XMODEM, bit by bit (kept independent of the core's table-driven one, so that the
/// model can catch a mistake there).
pub fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a key or channel: CRC16 of the text between the first `{` and the
/// first `}` after it when that text is not empty, else of the whole name; modulo 16384.
pub fn slot_of(name: &[u8]) -> u16 {
    let hashed = match name.iter().position(|&b| b == b'{') {
        Some(open) => match name[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &name[open + 1..open + 1 + len],
            _ => name,
        },
        None => name,
    };
    crc16_xmodem(hashed) % SLOTS as u16
}

/// What one node knows of the cluster: enough to route a command and answer `CLUSTER`.
#[derive(Clone, Debug)]
pub(super) struct NodeView {
    /// Slot → owning shard, or [`NO_SHARD`].
    owner: Vec<u16>,
    /// The shard this node belongs to.
    shard: u16,
    /// Whether it is that shard's master.
    master: bool,
    /// Each shard's master as `host:port`.
    master_addr: Vec<String>,
    /// The `CLUSTER SHARDS` reply.
    shards: Reply,
    /// `CLUSTER MYID`.
    id: String,
    /// Slots whose keys this node serves (as a master), by slot.
    served: std::sync::Arc<[bool]>,
}

/// A message a node hands to the cluster bus.
#[derive(Clone, Debug)]
pub(super) enum Bus {
    /// A `PUBLISH`: to every other node.
    Publish(Vec<u8>, Vec<u8>),
    /// An `SPUBLISH`: to every other node of the publishing node's shard.
    ShardPublish(Vec<u8>, Vec<u8>),
}

/// Key positions of the commands the model implements that name keys or shard channels.
pub(super) fn command_keys<'a>(fullname: &str, argv: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    let all_from = |i: usize| argv.iter().skip(i).map(Vec::as_slice).collect();
    match fullname {
        "get" | "set" | "expire" | "pexpire" | "ttl" | "pttl" | "persist" | "type" | "hset"
        | "hget" | "hdel" | "hgetall" | "hlen" | "sadd" | "srem" | "smembers" | "scard"
        | "sismember" | "spublish" => argv.get(1).map(Vec::as_slice).into_iter().collect(),
        "del" | "exists" | "ssubscribe" | "sunsubscribe" => all_from(1),
        "eval" | "evalsha" => {
            let numkeys = argv
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n <= argv.len().saturating_sub(3))
                .unwrap_or(0);
            argv.iter()
                .skip(3)
                .take(numkeys)
                .map(Vec::as_slice)
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Whether a replica of the owning shard serves the command (shard pub/sub).
fn replica_serves(fullname: &str) -> bool {
    matches!(fullname, "ssubscribe" | "sunsubscribe" | "spublish")
}

impl ModelRedis {
    /// Whether this server is a node of a [`ModelCluster`].
    pub(super) fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The routing error for a command, or `None` when this node serves it.
    pub(super) fn route(&self, fullname: &str, argv: &[Vec<u8>]) -> Option<Reply> {
        let keys = command_keys(fullname, argv);
        self.route_keys(&keys, replica_serves(fullname))
    }

    /// The routing error for `EXEC` of the queued commands, checked together.
    pub(super) fn route_exec(&self, queued: &[(String, Vec<Vec<u8>>)]) -> Option<Reply> {
        let keys: Vec<&[u8]> = queued
            .iter()
            .flat_map(|(name, argv)| command_keys(name, argv))
            .collect();
        let replica_ok = queued.iter().all(|(name, _)| replica_serves(name));
        self.route_keys(&keys, replica_ok)
    }

    fn route_keys(&self, keys: &[&[u8]], replica_ok: bool) -> Option<Reply> {
        let view = self.cluster.as_ref()?;
        let first = keys.first()?;
        let slot = slot_of(first);
        let owner = view.owner[usize::from(slot)];
        if owner == NO_SHARD {
            return Some(Reply::error("-CLUSTERDOWN Hash slot not served"));
        }
        if keys.iter().any(|k| slot_of(k) != slot) {
            return Some(Reply::error(
                "-CROSSSLOT Keys in request don't hash to the same slot",
            ));
        }
        if owner == view.shard && (view.master || replica_ok) {
            return None;
        }
        let addr = view.master_addr.get(usize::from(owner))?;
        Some(Reply::error(format!("-MOVED {slot} {addr}")))
    }

    /// The rule for a script's keys on this node, if it is a cluster node: slots it serves as
    /// a master, starting with the slot of the declared `keys`.
    pub(super) fn script_guard(&self, keys: &[Vec<u8>]) -> Option<ScriptGuard> {
        let view = self.cluster.as_ref()?;
        Some(ScriptGuard {
            served: view.served.clone(),
            slot: keys.first().map(|k| slot_of(k)),
        })
    }

    /// `CLUSTER SHARDS | KEYSLOT | MYID`.
    pub(super) fn cmd_cluster(&mut self, fullname: &str, argv: &[Vec<u8>]) -> Reply {
        let Some(view) = self.cluster.as_ref() else {
            return Reply::error("This instance has cluster support disabled");
        };
        match fullname {
            "cluster|shards" => view.shards.clone(),
            "cluster|myid" => Reply::bulk(&view.id),
            "cluster|keyslot" => Reply::Integer(i64::from(slot_of(&argv[2]))),
            _ => Reply::error(format!(
                "roomcast model Redis does not implement '{fullname}'"
            )),
        }
    }

    /// How many `-MOVED` replies this node has sent.
    pub fn moved_replies(&self) -> u64 {
        self.moved_sent
    }

    /// The role `HELLO` reports.
    pub(super) fn role_name(&self) -> &'static str {
        match &self.cluster {
            Some(v) if !v.master => "replica",
            _ => "master",
        }
    }

    /// Hands a message to the cluster bus, when this is a cluster node.
    pub(super) fn send_to_bus(&mut self, msg: Bus) {
        if self.cluster.is_some() {
            self.bus.push(msg);
        }
    }
}

/// The shape of a model cluster.
#[derive(Clone, Debug)]
pub struct ClusterLayout {
    /// Number of shards (masters); slots are split between them as `redis-cli --cluster
    /// create` splits them.
    pub masters: usize,
    /// Replicas per master.
    pub replicas: usize,
    /// The host of every node.
    pub host: String,
    /// Port of the first master; masters take the next ports, then the replicas (master 0's
    /// replicas first), as `redis-cli --cluster create` pairs a list of nodes.
    pub first_port: u16,
    /// Every node's configuration. `cluster_mode: true` answers `HELLO` as a cluster node;
    /// `false` makes the nodes claim to be standalone servers (a test device that lets a hub
    /// in single-server mode run over the cluster's broadcast `PUBLISH`).
    pub node: ModelConfig,
    /// The version every node's `HELLO` reports (see [`ModelRedis::set_version`]).
    pub version: String,
}

impl ClusterLayout {
    /// `redis+cluster://` naming the masters as seed nodes, as a hub's configuration would.
    pub fn seed_url(&self) -> String {
        let seeds: Vec<String> = (0..self.masters.max(1))
            .map(|m| format!("{}:{}", self.host, usize::from(self.first_port) + m))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}

impl Default for ClusterLayout {
    /// Three masters with one replica each on 127.0.0.1:7000-7005.
    fn default() -> Self {
        ClusterLayout {
            masters: 3,
            replicas: 1,
            host: "127.0.0.1".into(),
            first_port: 7000,
            node: ModelConfig {
                cluster_mode: true,
                ..ModelConfig::default()
            },
            version: "7.0.15".into(),
        }
    }
}

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    /// Serves its shard's slots.
    Master,
    /// Follows its shard's master.
    Replica,
}

/// One node of a [`ModelCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    host: String,
    port: u16,
    id: String,
    shard: usize,
    role: NodeRole,
    alive: bool,
    reachable: bool,
    /// The node's server.
    pub redis: ModelRedis,
}

impl ClusterNode {
    /// `(host, port)`.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// The node's 40-character id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The shard it belongs to (a failed master ends up alone in a shard without slots).
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Master or replica.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// False once the node failed ([`ModelCluster::hard_failover`]).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// False while partitioned from the clients ([`ModelCluster::partition`]).
    pub fn is_reachable(&self) -> bool {
        self.reachable
    }
}

#[derive(Clone, Debug)]
struct ShardState {
    master: usize,
    replicas: Vec<usize>,
    offset: i64,
}

/// Why a connection to the cluster could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No node listens at that address.
    NoNode,
    /// The node there failed.
    Dead,
    /// The node there is partitioned from the clients.
    Unreachable,
}

/// Several [`ModelRedis`] nodes forming a Redis Cluster. See the [module docs](self).
#[derive(Debug)]
pub struct ModelCluster {
    nodes: Vec<ClusterNode>,
    shards: Vec<ShardState>,
    owner: Vec<u16>,
    fanouts: Option<Vec<Fanout>>,
    next_fanout: u64,
}

impl ModelCluster {
    /// A cluster of the given shape, every slot served (`redis-cli --cluster create`).
    pub fn new(layout: &ClusterLayout) -> ModelCluster {
        let masters = layout.masters.max(1);
        let total = masters * (1 + layout.replicas);
        assert!(
            total < (1 << (32 - CLIENT_BITS)) - 1,
            "a model cluster has at most {} nodes",
            (1 << (32 - CLIENT_BITS)) - 2
        );
        let mut nodes = Vec::with_capacity(total);
        let mut shards: Vec<ShardState> = (0..masters)
            .map(|m| ShardState {
                master: m,
                replicas: Vec::new(),
                offset: 0,
            })
            .collect();
        for i in 0..total {
            let shard = if i < masters {
                i
            } else {
                (i - masters) / layout.replicas.max(1)
            };
            if i >= masters {
                shards[shard].replicas.push(i);
            }
            let mut redis = ModelRedis::new(layout.node.clone());
            redis.set_version(&layout.version);
            redis.next_client = ((i as u32) + 1) << CLIENT_BITS;
            let port = u16::try_from(usize::from(layout.first_port) + i)
                .expect("the cluster's ports fit below 65536");
            nodes.push(ClusterNode {
                host: layout.host.clone(),
                port,
                id: sha1_hex(format!("roomcast model cluster node {i}").as_bytes()),
                shard,
                role: if i < masters {
                    NodeRole::Master
                } else {
                    NodeRole::Replica
                },
                alive: true,
                reachable: true,
                redis,
            });
        }
        // redis-cli's split: each master gets SLOTS/masters slots, rounded.
        let mut owner = vec![NO_SHARD; SLOTS];
        let per = SLOTS as f64 / masters as f64;
        let mut first = 0usize;
        for m in 0..masters {
            let last = if m + 1 == masters {
                SLOTS - 1
            } else {
                ((m as f64 + 1.0) * per - 1.0).round() as usize
            };
            for o in &mut owner[first..=last] {
                *o = m as u16;
            }
            first = last + 1;
        }
        let mut cluster = ModelCluster {
            nodes,
            shards,
            owner,
            fanouts: None,
            next_fanout: 0,
        };
        cluster.publish_views();
        cluster
    }

    // ------------------------------------------------------------------ inspection

    /// The nodes, by index.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// Node `i` (panics if there is none).
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    /// Node `i`, mutable: its server can be inspected or seeded directly.
    pub fn node_mut(&mut self, i: usize) -> &mut ClusterNode {
        &mut self.nodes[i]
    }

    /// The node listening at `host:port`, failed or not.
    pub fn node_at(&self, host: &str, port: u16) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.host == host && n.port == port)
    }

    /// The node a connection belongs to.
    pub fn node_of(&self, c: ClientId) -> Option<usize> {
        let i = (c.0 >> CLIENT_BITS).checked_sub(1)? as usize;
        (i < self.nodes.len()).then_some(i)
    }

    /// Number of shards (failed masters count as shards without slots, as in `CLUSTER
    /// SHARDS`).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The master of shard `s`.
    pub fn master_of(&self, s: usize) -> usize {
        self.shards[s].master
    }

    /// The replicas of shard `s`.
    pub fn replicas_of(&self, s: usize) -> &[usize] {
        &self.shards[s].replicas
    }

    /// Every node of shard `s`, master first.
    pub fn shard_nodes(&self, s: usize) -> Vec<usize> {
        let sh = &self.shards[s];
        std::iter::once(sh.master)
            .chain(sh.replicas.iter().copied())
            .collect()
    }

    /// The shard that owns `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&NO_SHARD) | None => None,
            Some(&s) => Some(usize::from(s)),
        }
    }

    /// The shard that owns the slot of `name`, if any.
    pub fn owner_of(&self, name: &[u8]) -> Option<usize> {
        self.owner(slot_of(name))
    }

    /// The slots shard `s` owns, as inclusive ranges in ascending order.
    pub fn slot_ranges(&self, s: usize) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for (slot, &o) in self.owner.iter().enumerate() {
            if usize::from(o) != s || o == NO_SHARD {
                continue;
            }
            let slot = slot as u16;
            match out.last_mut() {
                Some((_, end)) if *end + 1 == slot => *end = slot,
                _ => out.push((slot, slot)),
            }
        }
        out
    }

    /// The connections subscribed to shard channel `channel`, with their nodes, in node
    /// order: what `PUBSUB SHARDNUMSUB` on each node counts.
    pub fn shard_subscribers(&self, channel: &[u8]) -> Vec<(usize, ClientId)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                n.redis
                    .shard_channels
                    .get(channel)
                    .into_iter()
                    .flatten()
                    .map(move |c| (i, *c))
            })
            .collect()
    }

    /// `PUBSUB SHARDNUMSUB channel` on each node: `(node, count)` for nodes with a count.
    pub fn shard_numsub(&self, channel: &[u8]) -> Vec<(usize, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let k = n.redis.shard_channels.get(channel).map_or(0, BTreeSet::len);
                (k > 0).then_some((i, k))
            })
            .collect()
    }

    // ------------------------------------------------------------------ connections

    /// Opens a connection to the node at `host:port`.
    pub fn connect(&mut self, host: &str, port: u16) -> Result<ClientId, Refused> {
        let i = self.node_at(host, port).ok_or(Refused::NoNode)?;
        let n = &mut self.nodes[i];
        if !n.alive {
            return Err(Refused::Dead);
        }
        if !n.reachable {
            return Err(Refused::Unreachable);
        }
        Ok(n.redis.connect())
    }

    /// Bytes from connection `c` at `now` ([`ModelRedis::input`]); messages published reach
    /// the other nodes before this returns.
    pub fn input(&mut self, c: ClientId, bytes: &[u8], now: Instant) {
        let Some(i) = self.node_of(c) else { return };
        self.nodes[i].redis.input(c, bytes, now);
        self.after(i);
    }

    /// [`ModelRedis::take_output`].
    pub fn take_output(&mut self, c: ClientId) -> Vec<u8> {
        match self.node_of(c) {
            Some(i) => self.nodes[i].redis.take_output(c),
            None => Vec::new(),
        }
    }

    /// [`ModelRedis::output_taken`].
    pub fn output_taken(&self, c: ClientId) -> u64 {
        self.node_of(c)
            .map_or(0, |i| self.nodes[i].redis.output_taken(c))
    }

    /// [`ModelRedis::is_open`].
    pub fn is_open(&self, c: ClientId) -> bool {
        self.node_of(c)
            .is_some_and(|i| self.nodes[i].redis.is_open(c))
    }

    /// [`ModelRedis::kill`].
    pub fn kill(&mut self, c: ClientId) {
        if let Some(i) = self.node_of(c) {
            self.nodes[i].redis.kill(c);
        }
    }

    /// [`ModelRedis::set_stalled`] (resuming runs what was buffered).
    pub fn set_stalled(&mut self, c: ClientId, stalled: bool) {
        if let Some(i) = self.node_of(c) {
            self.nodes[i].redis.set_stalled(c, stalled);
            self.after(i);
        }
    }

    /// [`ModelRedis::is_stalled`].
    pub fn is_stalled(&self, c: ClientId) -> bool {
        self.node_of(c)
            .is_some_and(|i| self.nodes[i].redis.is_stalled(c))
    }

    /// Moves every node's clock to `now`.
    pub fn advance(&mut self, now: Instant) {
        for n in &mut self.nodes {
            n.redis.advance(now);
        }
    }

    /// Starts (or stops) recording fan-outs on every node, numbered in one sequence for the
    /// whole cluster (the order in which they were executed).
    pub fn record_fanouts(&mut self, on: bool) {
        for n in &mut self.nodes {
            n.redis.record_fanouts(on);
        }
        self.fanouts = on.then(Vec::new);
    }

    /// The fan-outs of every node since the last call, in execution order.
    pub fn take_fanouts(&mut self) -> Vec<Fanout> {
        self.fanouts
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A classic `PUBLISH` from outside any connection, on node `at` (then over the bus to
    /// every node); returns the receivers on every node together.
    pub fn publish(&mut self, at: usize, channel: &[u8], payload: &[u8]) -> usize {
        let here = self.nodes[at].redis.publish(channel, payload);
        self.nodes[at]
            .redis
            .send_to_bus(Bus::Publish(channel.to_vec(), payload.to_vec()));
        here + self.after(at)
    }

    /// An `SPUBLISH` from outside any connection, on the master owning the channel's slot;
    /// returns that node's receiver count, or the error a node would answer.
    pub fn spublish(&mut self, channel: &[u8], payload: &[u8]) -> Result<usize, Reply> {
        let Some(s) = self.owner_of(channel) else {
            return Err(Reply::error("-CLUSTERDOWN Hash slot not served"));
        };
        let m = self.shards[s].master;
        let here = self.nodes[m].redis.deliver_shard(channel, payload);
        self.nodes[m]
            .redis
            .send_to_bus(Bus::ShardPublish(channel.to_vec(), payload.to_vec()));
        self.after(m);
        Ok(here)
    }

    /// After node `i` ran commands: collects its fan-outs and carries its bus messages.
    /// Returns the receivers on other nodes.
    fn after(&mut self, i: usize) -> usize {
        self.collect_fanouts(i);
        let mut sent = 0;
        for msg in std::mem::take(&mut self.nodes[i].redis.bus) {
            let (targets, shard) = match &msg {
                Bus::Publish(..) => ((0..self.nodes.len()).collect::<Vec<_>>(), false),
                Bus::ShardPublish(..) => (self.shard_nodes(self.nodes[i].shard), true),
            };
            let (Bus::Publish(channel, payload) | Bus::ShardPublish(channel, payload)) = &msg;
            for j in targets {
                if j == i || !self.nodes[j].alive {
                    continue;
                }
                let redis = &mut self.nodes[j].redis;
                sent += if shard {
                    redis.deliver_shard(channel, payload)
                } else {
                    redis.deliver(channel, payload)
                };
                self.collect_fanouts(j);
            }
        }
        sent
    }

    fn collect_fanouts(&mut self, i: usize) {
        let Some(log) = self.fanouts.as_mut() else {
            return;
        };
        for mut f in self.nodes[i].redis.take_fanouts() {
            f.seq = self.next_fanout;
            self.next_fanout += 1;
            log.push(f);
        }
    }

    // ------------------------------------------------------------------ topology changes

    /// Moves `slot` to shard `to` (`CLUSTER SETSLOT <slot> NODE`): the old owner's master
    /// and replicas push `sunsubscribe <channel> <count>` for every channel of the slot to
    /// each of their subscribers, and the slot's keys move to `to`'s master.
    pub fn migrate_slot(&mut self, slot: u16, to: usize) {
        assert!(to < self.shards.len() && usize::from(slot) < SLOTS);
        let from = self.owner(slot);
        if from == Some(to) {
            return;
        }
        if let Some(from) = from {
            self.drop_channels(&self.shard_nodes(from), BTreeSet::from([slot]));
            let (src, dst) = (self.shards[from].master, self.shards[to].master);
            let mut moved = std::mem::take(&mut self.nodes[src].redis.dbs[0]);
            moved.move_keys_to(&mut self.nodes[dst].redis.dbs[0], |k| slot_of(k) == slot);
            self.nodes[src].redis.dbs[0] = moved;
            self.shards[from].offset += 1;
        }
        self.owner[usize::from(slot)] = to as u16;
        self.shards[to].offset += 1;
        self.publish_views();
    }

    /// Takes `slot` away from its owner (`CLUSTER DELSLOTS`): its nodes push `sunsubscribe`
    /// for the slot's channels; commands for it then get `-CLUSTERDOWN Hash slot not
    /// served`. Keys stay where they were, unreachable.
    pub fn unassign_slot(&mut self, slot: u16) {
        if let Some(from) = self.owner(slot) {
            self.drop_channels(&self.shard_nodes(from), BTreeSet::from([slot]));
            self.owner[usize::from(slot)] = NO_SHARD;
            self.shards[from].offset += 1;
            self.publish_views();
        }
    }

    /// `CLUSTER FAILOVER` on shard `s`'s first live replica: it becomes the master at its
    /// own address and keeps its subscribers; the old master becomes its replica. The old
    /// master and the replicas not promoted push `sunsubscribe` for every channel of every
    /// slot of the shard. Returns the promoted node (`None`: no live replica, nothing done).
    pub fn manual_failover(&mut self, s: usize) -> Option<usize> {
        let old = self.shards[s].master;
        let promoted = self.first_live_replica(s)?;
        let losers: Vec<usize> = self
            .shard_nodes(s)
            .into_iter()
            .filter(|&n| n != promoted && self.nodes[n].alive)
            .collect();
        self.drop_channels(&losers, self.slots_of(s));
        self.promote(s, promoted);
        self.shards[s].replicas.push(old);
        self.nodes[old].role = NodeRole::Replica;
        self.publish_views();
        Some(promoted)
    }

    /// Shard `s`'s master fails: every connection to it closes, it refuses new ones, and its
    /// first live replica is promoted (keeping its subscribers). The failed master is then
    /// listed alone in a shard without slots, health `fail`, as `CLUSTER SHARDS` shows it.
    /// The other replicas push `sunsubscribe` for the shard's channels (see the module docs).
    /// Returns the promoted node (`None`: no live replica, nothing done).
    pub fn hard_failover(&mut self, s: usize) -> Option<usize> {
        let old = self.shards[s].master;
        let promoted = self.first_live_replica(s)?;
        for c in self.nodes[old].redis.clients() {
            self.nodes[old].redis.kill(c);
        }
        self.nodes[old].alive = false;
        let others: Vec<usize> = self.shards[s]
            .replicas
            .iter()
            .copied()
            .filter(|&n| n != promoted && self.nodes[n].alive)
            .collect();
        self.drop_channels(&others, self.slots_of(s));
        self.promote(s, promoted);
        self.shards.push(ShardState {
            master: old,
            replicas: Vec::new(),
            offset: self.shards[s].offset - 1,
        });
        self.nodes[old].shard = self.shards.len() - 1;
        self.publish_views();
        Some(promoted)
    }

    /// Partitions node `i` from the clients: its connections stall (requests wait, output is
    /// held, as in full TCP buffers) and new connections are refused. The node itself keeps
    /// running and keeps receiving the cluster's messages.
    pub fn partition(&mut self, i: usize) {
        self.nodes[i].reachable = false;
        for c in self.nodes[i].redis.clients() {
            self.nodes[i].redis.set_stalled(c, true);
        }
    }

    /// Ends node `i`'s partition: buffered requests run, held output flows.
    pub fn heal(&mut self, i: usize) {
        if self.nodes[i].reachable {
            return;
        }
        self.nodes[i].reachable = true;
        for c in self.nodes[i].redis.clients() {
            self.nodes[i].redis.set_stalled(c, false);
        }
        self.after(i);
    }

    /// The effect of redis/redis#12558 on node `i`: every shard subscription it holds now
    /// stays counted (`PUBSUB SHARDNUMSUB`, `SPUBLISH`'s reply) but receives nothing;
    /// subscriptions made later work. In 7.0.15 this happens to the subscribers of a
    /// replica moved to another master with `CLUSTER REPLICATE`; the model lets a test apply
    /// it to any node, the one holding a hub's subscriber link included.
    pub fn deaf_replica(&mut self, i: usize) {
        self.nodes[i].redis.deafen_shard_subscriptions();
    }

    /// `CLUSTER REPLICATE` on replica `i`: it leaves its shard and follows shard `to`'s
    /// master. As in 7.0.15 (redis/redis#12558, fixed in 7.4) it sends its subscribers
    /// nothing: their channels, of the old shard's slots, stay subscribed and counted, but no
    /// `SPUBLISH` reaches them any more, since messages now go to the old shard's other
    /// nodes. Returns false (nothing done) if `i` is not a live replica or `to` is its shard.
    pub fn replicate(&mut self, i: usize, to: usize) -> bool {
        let from = self.nodes[i].shard;
        if self.nodes[i].role != NodeRole::Replica || !self.nodes[i].alive || from == to {
            return false;
        }
        self.shards[from].replicas.retain(|&r| r != i);
        self.shards[to].replicas.push(i);
        self.nodes[i].shard = to;
        self.publish_views();
        true
    }

    fn first_live_replica(&self, s: usize) -> Option<usize> {
        self.shards[s]
            .replicas
            .iter()
            .copied()
            .find(|&r| self.nodes[r].alive)
    }

    /// Makes `promoted` (a replica of `s`) the master of `s`, with the old master's keys.
    fn promote(&mut self, s: usize, promoted: usize) {
        let old = self.shards[s].master;
        let keys = self.nodes[old].redis.dbs.clone();
        self.nodes[promoted].redis.dbs = keys;
        self.nodes[promoted].role = NodeRole::Master;
        self.shards[s].replicas.retain(|&r| r != promoted);
        self.shards[s].master = promoted;
        self.shards[s].offset += 1;
    }

    /// The slots shard `s` owns.
    fn slots_of(&self, s: usize) -> BTreeSet<u16> {
        (0..SLOTS as u16)
            .filter(|&slot| self.owner(slot) == Some(s))
            .collect()
    }

    /// Each of `nodes` pushes `sunsubscribe` for its shard channels of `slots`, to each
    /// subscriber, and forgets them (`removeChannelsInSlot`): slot by slot in ascending
    /// order, a slot's channels in name order, each to its subscribers.
    fn drop_channels(&mut self, nodes: &[usize], slots: BTreeSet<u16>) {
        for &n in nodes {
            let mut channels: Vec<(u16, Vec<u8>)> = self.nodes[n]
                .redis
                .shard_channels
                .keys()
                .map(|ch| (slot_of(ch), ch.clone()))
                .filter(|(slot, _)| slots.contains(slot))
                .collect();
            channels.sort();
            for (_, ch) in channels {
                self.nodes[n].redis.server_sunsubscribe(&ch);
            }
        }
    }

    /// The `CLUSTER SHARDS` reply for the current topology.
    fn shards_reply(&self) -> Reply {
        let node_entry = |i: usize, offset: i64| {
            let n = &self.nodes[i];
            let b = Reply::bulk;
            Reply::Map(vec![
                (b("id"), b(&n.id)),
                (b("port"), Reply::Integer(i64::from(n.port))),
                (b("ip"), b(&n.host)),
                (b("endpoint"), b(&n.host)),
                (
                    b("role"),
                    b(match n.role {
                        NodeRole::Master => "master",
                        NodeRole::Replica => "replica",
                    }),
                ),
                (b("replication-offset"), Reply::Integer(offset)),
                (b("health"), b(if n.alive { "online" } else { "fail" })),
            ])
        };
        Reply::Array(
            self.shards
                .iter()
                .enumerate()
                .map(|(s, sh)| {
                    let slots = self
                        .slot_ranges(s)
                        .into_iter()
                        .flat_map(|(a, b)| [Reply::Integer(a.into()), Reply::Integer(b.into())])
                        .collect();
                    let nodes = self
                        .shard_nodes(s)
                        .into_iter()
                        .map(|n| node_entry(n, sh.offset))
                        .collect();
                    Reply::Map(vec![
                        (Reply::bulk("slots"), Reply::Array(slots)),
                        (Reply::bulk("nodes"), Reply::Array(nodes)),
                    ])
                })
                .collect(),
        )
    }

    /// Tells every node the current topology.
    fn publish_views(&mut self) {
        let shards = self.shards_reply();
        let master_addr: Vec<String> = self
            .shards
            .iter()
            .map(|sh| {
                let m = &self.nodes[sh.master];
                format!("{}:{}", m.host, m.port)
            })
            .collect();
        for n in &mut self.nodes {
            let master = n.role == NodeRole::Master;
            let served = self
                .owner
                .iter()
                .map(|&o| master && usize::from(o) == n.shard)
                .collect();
            n.redis.cluster = Some(Box::new(NodeView {
                served,
                owner: self.owner.clone(),
                shard: n.shard as u16,
                master: n.role == NodeRole::Master,
                master_addr: master_addr.clone(),
                shards: shards.clone(),
                id: n.id.clone(),
            }));
        }
    }
}
