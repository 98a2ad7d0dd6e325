//! The cluster's shape, read from a `CLUSTER SHARDS` reply, and slot → shard lookup.
//!
//! `CLUSTER SHARDS` (Redis 7.0) answers an array with one entry per shard; each entry is a
//! map (RESP3) or a flat array of key/value pairs (RESP2) with `slots` (flat start/end pairs,
//! inclusive) and `nodes`, each node a map with `id`, `port` and/or `tls-port`, `ip`,
//! `endpoint`, optionally `hostname`, `role` (`master`/`replica`), `replication-offset` and
//! `health` (`online`/`failed`/`loading`). Unknown fields are ignored (later Redis versions
//! add some); missing or mistyped required ones refuse the whole reply, since a topology read
//! wrong routes channels to the wrong node.

use std::fmt;

use crate::resp::Value;

use super::slot::{Slot, SLOT_COUNT};

/// Index of a shard in [`Topology::shards`].
pub type ShardIndex = usize;

/// Marks a slot no shard serves in the slot table.
const NO_SHARD: u16 = u16::MAX;

/// A node's role in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The shard's master: serves its slots' SPUBLISH and SSUBSCRIBE.
    Master,
    /// A replica: accepts SSUBSCRIBE for the shard's slots too, and takes over on failover.
    Replica,
}

/// A node's health as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Health {
    /// Reachable and serving.
    Online,
    /// Marked failed by the cluster.
    Failed,
    /// Loading its data set (a replica after a full sync); not serving yet.
    Loading,
    /// A value this version does not know; treat like [`Health::Failed`].
    Other(String),
}

/// One node of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node's 40-character id.
    pub id: String,
    /// Its IP address.
    pub ip: String,
    /// Its preferred endpoint (`cluster-preferred-endpoint-type`): an IP, a host name, or `?`
    /// when unknown.
    pub endpoint: String,
    /// Its announced host name, if it has one.
    pub hostname: Option<String>,
    /// Its plain TCP port, if it listens on one.
    pub port: Option<u16>,
    /// Its TLS port, if it listens on one.
    pub tls_port: Option<u16>,
    /// Master or replica.
    pub role: Role,
    /// Its replication offset (how far it is in the master's stream).
    pub replication_offset: i64,
    /// Its health.
    pub health: Health,
}

impl Node {
    /// The host to connect to: the endpoint, or the IP when the endpoint is unknown (`?`) or
    /// empty.
    pub fn host(&self) -> &str {
        if self.endpoint.is_empty() || self.endpoint == "?" {
            &self.ip
        } else {
            &self.endpoint
        }
    }

    /// The port to connect to: the TLS port with `tls`, the plain one without; `None` when
    /// the node does not listen that way.
    pub fn port_for(&self, tls: bool) -> Option<u16> {
        if tls {
            self.tls_port
        } else {
            self.port
        }
    }

    /// Whether the node serves: online.
    pub fn is_online(&self) -> bool {
        self.health == Health::Online
    }
}

/// An inclusive range of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotRange {
    /// First slot.
    pub start: Slot,
    /// Last slot (inclusive).
    pub end: Slot,
}

impl SlotRange {
    /// Whether `slot` is in the range.
    pub fn contains(&self, slot: Slot) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// One shard: the slots it owns, its master and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The slots it owns, as the reply listed them (may be empty: a failed master whose
    /// replica took over shows as a shard of its own with no slots).
    pub ranges: Vec<SlotRange>,
    /// Its master, if the reply named one.
    pub master: Option<Node>,
    /// Its replicas.
    pub replicas: Vec<Node>,
}

impl Shard {
    /// Every node of the shard, master first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.master.iter().chain(&self.replicas)
    }

    /// The first slot the shard owns (for naming a channel on it), if any.
    pub fn first_slot(&self) -> Option<Slot> {
        self.ranges.iter().map(|r| r.start).min()
    }
}

/// The cluster as one `CLUSTER SHARDS` reply described it.
#[derive(Clone, PartialEq, Eq)]
pub struct Topology {
    shards: Vec<Shard>,
    /// For each slot, the index of the shard owning it, or [`NO_SHARD`].
    slots: Box<[u16]>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("shards", &self.shards)
            .field("served_slots", &self.served_slots())
            .finish()
    }
}

/// Why a reply was not a usable topology or cluster error. Says which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    reason: String,
}

impl TopologyError {
    pub(super) fn new(reason: impl Into<String>) -> TopologyError {
        TopologyError {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unusable cluster reply: {}; the server must be Redis 7.0 or later in cluster \
             mode (check the seed list of the redis+cluster:// URL)",
            self.reason
        )
    }
}

impl std::error::Error for TopologyError {}

fn err(reason: impl Into<String>) -> TopologyError {
    TopologyError::new(reason)
}

/// The key/value pairs of a map (RESP3) or a flat array of pairs (RESP2), keys as text.
fn fields<'v>(value: &'v Value, what: &str) -> Result<Vec<(&'v [u8], &'v Value)>, TopologyError> {
    match value {
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| Ok((key_bytes(k, what)?, v)))
            .collect(),
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(err(format!(
                    "{what} is an array of {} elements, not key/value pairs",
                    items.len()
                )));
            }
            items
                .chunks_exact(2)
                .map(|pair| match pair {
                    [k, v] => Ok((key_bytes(k, what)?, v)),
                    _ => Err(err(format!("{what} is not key/value pairs"))),
                })
                .collect()
        }
        other => Err(err(format!("{what} is {}, not a map", kind(other)))),
    }
}

fn key_bytes<'v>(key: &'v Value, what: &str) -> Result<&'v [u8], TopologyError> {
    key.as_bytes()
        .ok_or_else(|| err(format!("a key of {what} is {}, not a string", kind(key))))
}

/// A short description of a value's type for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Simple(_) => "a simple string",
        Value::Error(_) => "an error",
        Value::Int(_) => "an integer",
        Value::Bulk(_) => "a bulk string",
        Value::Nil => "null",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Double(_) => "a double",
        Value::Bool(_) => "a boolean",
    }
}

/// An integer, also when sent as decimal text.
fn int(v: &Value, what: &str) -> Result<i64, TopologyError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::Simple(b) | Value::Bulk(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(format!("{what} is not a number"))),
        other => Err(err(format!("{what} is {}, not a number", kind(other)))),
    }
}

fn text(v: &Value, what: &str) -> Result<String, TopologyError> {
    let b = v
        .as_bytes()
        .ok_or_else(|| err(format!("{what} is {}, not a string", kind(v))))?;
    String::from_utf8(b.to_vec()).map_err(|_| err(format!("{what} is not UTF-8")))
}

fn port(v: &Value, what: &str) -> Result<Option<u16>, TopologyError> {
    match int(v, what)? {
        // A node that does not listen that way reports port 0.
        0 => Ok(None),
        n => u16::try_from(n)
            .map(Some)
            .map_err(|_| err(format!("{what} {n} is not a TCP port"))),
    }
}

fn slot(v: &Value, what: &str) -> Result<Slot, TopologyError> {
    let n = int(v, what)?;
    u16::try_from(n)
        .ok()
        .and_then(Slot::new)
        .ok_or_else(|| err(format!("{what} {n} is not a slot (0 to 16383)")))
}

fn parse_node(value: &Value, at: &str) -> Result<Node, TopologyError> {
    let mut id = None;
    let mut ip = None;
    let mut endpoint = None;
    let mut hostname = None;
    let mut plain = None;
    let mut tls = None;
    let mut role = None;
    let mut offset = 0;
    let mut health = None;
    for (key, v) in fields(value, at)? {
        match key {
            b"id" => id = Some(text(v, &format!("{at} id"))?),
            b"ip" => ip = Some(text(v, &format!("{at} ip"))?),
            b"endpoint" => endpoint = Some(text(v, &format!("{at} endpoint"))?),
            b"hostname" => hostname = Some(text(v, &format!("{at} hostname"))?),
            b"port" => plain = Some(port(v, &format!("{at} port"))?),
            b"tls-port" => tls = Some(port(v, &format!("{at} tls-port"))?),
            b"role" => {
                role = Some(match v.as_bytes() {
                    Some(b"master") => Role::Master,
                    Some(b"replica" | b"slave") => Role::Replica,
                    _ => return Err(err(format!("{at} role is neither master nor replica"))),
                })
            }
            b"replication-offset" => offset = int(v, &format!("{at} replication-offset"))?,
            b"health" => {
                health = Some(match v.as_bytes() {
                    Some(b"online") => Health::Online,
                    Some(b"failed" | b"fail") => Health::Failed,
                    Some(b"loading") => Health::Loading,
                    Some(other) => Health::Other(String::from_utf8_lossy(other).into_owned()),
                    None => return Err(err(format!("{at} health is {}", kind(v)))),
                })
            }
            _ => {}
        }
    }
    let missing = |field: &str| err(format!("{at} has no {field}"));
    let id = id.ok_or_else(|| missing("id"))?;
    let ip = ip.ok_or_else(|| missing("ip"))?;
    let port = plain.flatten();
    let tls_port = tls.flatten();
    if port.is_none() && tls_port.is_none() {
        return Err(missing("port or tls-port"));
    }
    Ok(Node {
        id,
        endpoint: endpoint.unwrap_or_else(|| ip.clone()),
        ip,
        hostname: hostname.filter(|h| !h.is_empty()),
        port,
        tls_port,
        role: role.ok_or_else(|| missing("role"))?,
        replication_offset: offset,
        health: health.ok_or_else(|| missing("health"))?,
    })
}

fn parse_shard(value: &Value, index: usize) -> Result<Shard, TopologyError> {
    let at = format!("shard {index}");
    let mut ranges = None;
    let mut nodes = None;
    for (key, v) in fields(value, &at)? {
        match key {
            b"slots" => {
                let Value::Array(items) = v else {
                    return Err(err(format!("{at} slots is {}, not an array", kind(v))));
                };
                if items.len() % 2 != 0 {
                    return Err(err(format!(
                        "{at} slots has {} numbers, not start/end pairs",
                        items.len()
                    )));
                }
                let mut out = Vec::with_capacity(items.len() / 2);
                for pair in items.chunks_exact(2) {
                    let [a, b] = pair else { continue };
                    let range = SlotRange {
                        start: slot(a, &format!("{at} slot range start"))?,
                        end: slot(b, &format!("{at} slot range end"))?,
                    };
                    if range.start > range.end {
                        return Err(err(format!(
                            "{at} has the slot range {}-{}, which ends before it starts",
                            range.start, range.end
                        )));
                    }
                    out.push(range);
                }
                ranges = Some(out);
            }
            b"nodes" => {
                let Value::Array(items) = v else {
                    return Err(err(format!("{at} nodes is {}, not an array", kind(v))));
                };
                let parsed = items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| parse_node(n, &format!("{at} node {i}")))
                    .collect::<Result<Vec<_>, _>>()?;
                nodes = Some(parsed);
            }
            _ => {}
        }
    }
    let ranges = ranges.ok_or_else(|| err(format!("{at} has no slots")))?;
    let nodes = nodes.ok_or_else(|| err(format!("{at} has no nodes")))?;
    let mut master = None;
    let mut replicas = Vec::new();
    for node in nodes {
        match node.role {
            Role::Replica => replicas.push(node),
            Role::Master if master.is_some() => {
                return Err(err(format!("{at} has two masters")));
            }
            Role::Master => master = Some(node),
        }
    }
    Ok(Shard {
        ranges,
        master,
        replicas,
    })
}

impl Topology {
    /// Reads a `CLUSTER SHARDS` reply (RESP2 or RESP3 shape). Refuses, with a reason, any
    /// reply that is not one: an error reply (a server not in cluster mode answers
    /// `-ERR This instance has cluster support disabled`; Redis before 7.0 an unknown
    /// subcommand), a missing or mistyped field, a slot out of range, or a slot claimed by
    /// two shards.
    pub fn from_shards_reply(reply: &Value) -> Result<Topology, TopologyError> {
        let items = match reply {
            Value::Array(items) => items,
            Value::Error(e) => {
                return Err(err(format!(
                    "CLUSTER SHARDS answered the error {:?}",
                    String::from_utf8_lossy(e)
                )))
            }
            other => {
                return Err(err(format!(
                    "CLUSTER SHARDS answered {}, not an array",
                    kind(other)
                )))
            }
        };
        // More shards than the table can index is impossible in a real cluster.
        if items.len() >= usize::from(NO_SHARD) {
            return Err(err(format!(
                "{} shards is more than supported",
                items.len()
            )));
        }
        let shards = items
            .iter()
            .enumerate()
            .map(|(i, s)| parse_shard(s, i))
            .collect::<Result<Vec<_>, _>>()?;
        Topology::from_shards(shards)
    }

    /// A topology of the given shards; refuses a slot claimed by two of them.
    pub fn from_shards(shards: Vec<Shard>) -> Result<Topology, TopologyError> {
        let mut slots = vec![NO_SHARD; SLOT_COUNT].into_boxed_slice();
        for (index, shard) in shards.iter().enumerate() {
            let Ok(index16) = u16::try_from(index) else {
                return Err(err("too many shards"));
            };
            if index16 == NO_SHARD {
                return Err(err("too many shards"));
            }
            for range in &shard.ranges {
                for n in range.start.index()..=range.end.index() {
                    let Some(entry) = slots.get_mut(n) else {
                        continue;
                    };
                    if *entry != NO_SHARD && *entry != index16 {
                        return Err(err(format!(
                            "slot {n} is claimed by shard {} and shard {index}",
                            *entry
                        )));
                    }
                    *entry = index16;
                }
            }
        }
        Ok(Topology { shards, slots })
    }

    /// The shards, in the order of the reply.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The index of the shard that owns `slot`, if any.
    pub fn shard_index(&self, slot: Slot) -> Option<ShardIndex> {
        match self.slots.get(slot.index()) {
            Some(&NO_SHARD) | None => None,
            Some(&i) => Some(usize::from(i)),
        }
    }

    /// The shard that owns `slot`, if any.
    pub fn shard_of(&self, slot: Slot) -> Option<&Shard> {
        self.shards.get(self.shard_index(slot)?)
    }

    /// The master that serves `slot`, if the slot has an owner with a master.
    pub fn master_of(&self, slot: Slot) -> Option<&Node> {
        self.shard_of(slot)?.master.as_ref()
    }

    /// How many slots have an owner (16384 in a healthy cluster).
    pub fn served_slots(&self) -> usize {
        self.slots.iter().filter(|&&i| i != NO_SHARD).count()
    }

    /// Whether every slot has an owner whose master is online.
    pub fn is_complete(&self) -> bool {
        self.served_slots() == SLOT_COUNT
            && self
                .shards
                .iter()
                .filter(|s| !s.ranges.is_empty())
                .all(|s| s.master.as_ref().is_some_and(Node::is_online))
    }

    /// The node with `id`, anywhere in the cluster.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.shards
            .iter()
            .flat_map(Shard::nodes)
            .find(|n| n.id == id)
    }
}
