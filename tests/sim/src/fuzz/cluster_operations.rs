//! Structured fuzzing of cluster mode: an [`arbitrary`] sequence of member operations and
//! publishes on three hubs, interleaved with topology changes of the model cluster (slot
//! migrations, manual and hard failovers, partitioned nodes, deaf subscriptions), under the
//! delivery oracle; the property test `tests/cluster_properties.rs` runs the same body on
//! generated sequences.

use std::collections::BTreeSet;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::harness::Observed;
use crate::model::{slot_of, ClusterLayout};
use crate::oracle::Oracle;
use crate::{Sim, Split};
use roomcast_core::{Config, Event, LinkId, Publish, RoomState};

/// The rooms: two share a slot through a hash tag.
pub const CLUSTER_ROOMS: [&str; 5] = ["a", "b", "hub/c", "{g}x", "{g}y"];
/// Connection ids.
pub const CLUSTER_CONNS: [&str; 2] = ["1", "2"];
/// Hubs in the run.
pub const CLUSTER_HUBS: usize = 3;

/// One step. Hubs, rooms, connections, shards and nodes are taken modulo their numbers (3
/// hubs, [`CLUSTER_ROOMS`], [`CLUSTER_CONNS`], 3 shards, 9 nodes).
#[derive(Debug, Clone, Arbitrary)]
pub enum ClusterOp {
    /// `Hub::join(room, conn)` on a hub.
    Join(u8, u8, u8),
    /// `Hub::leave(room, conn)` on a hub.
    Leave(u8, u8, u8),
    /// `Hub::disconnect(conn)` on a hub.
    Disconnect(u8, u8),
    /// A hub publishes a tagged message to a room.
    Publish(u8, u8),
    /// A hub publishes up to 30 messages to a room in one turn.
    Burst(u8, u8, u8),
    /// The slot of a room moves to a shard.
    Migrate(u8, u8),
    /// `CLUSTER FAILOVER` on a shard.
    ManualFailover(u8),
    /// A shard's master dies and a replica takes over.
    HardFailover(u8),
    /// A cluster node is partitioned from the hubs (`true`) or healed.
    Partition(u8, bool),
    /// The subscriptions a cluster node holds go deaf (redis/redis#12558).
    Deaf(u8),
    /// The server closes one of a hub's links.
    Kill(u8, u8),
    /// Time passes (milliseconds, up to 3 s).
    Advance(u16),
    /// One round of the network without the clock.
    Step,
}

/// Fuzz target: a protocol flag, an input-splitting byte and up to 64 [`ClusterOp`]s
/// decoded from `data`, run by [`run_cluster_operations`].
pub fn cluster_operations(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(resp3), Ok(chunk)) = (bool::arbitrary(&mut u), u8::arbitrary(&mut u)) else {
        return;
    };
    let ops: Vec<ClusterOp> = super::decode_ops(&mut u, 64);
    if std::env::var_os("ROOMCAST_FUZZ_DEBUG").is_some() {
        eprintln!("resp3 {resp3}, chunk {chunk}\n{ops:#?}");
    }
    let split = match chunk {
        0 => Split::Whole,
        k => Split::Chunks(usize::from(k)),
    };
    run_cluster_operations(resp3, split, 1, &ops);
}

/// Hub `h` publishes the next message to `room`; returns its number if accepted.
fn publish(
    sim: &mut Sim,
    oracle: &mut Oracle,
    unconfirmed: &mut BTreeSet<(usize, u64)>,
    h: usize,
    room: &str,
) -> Option<u32> {
    let (msg, data) = oracle.next_message(8);
    let now = sim.now;
    let pid = sim.nodes[h]
        .hub
        .publish(&Publish::broadcast(room, &data), now)
        .ok()?;
    unconfirmed.insert((h, pid.0));
    oracle.published(sim, h, msg, room, &data, None);
    Some(msg)
}

/// Runs `ops` on three hubs in cluster mode (RESP3 or RESP2 links, input cut as `split`
/// says from `seed`) against a model cluster of three shards with two replicas each, with
/// the oracle checked after every step; panics on a broken promise. At the end, with every
/// partition healed and time passed:
/// - every message Redis executed reached every member it was owed to, or an event of its
///   hub named the room ([`Oracle::finish`]);
/// - every accepted publish had its outcome;
/// - every room with members is live, subscribed once, on a node of its slot's owner
///   ([`Oracle::check_cluster_subscriptions`]), nothing is queued or in flight;
/// - one more message from every hub to every room reaches every member.
pub fn run_cluster_operations(resp3: bool, split: Split, seed: u64, ops: &[ClusterOp]) {
    const SHARDS: u8 = 3;
    const NODES: u8 = 9;
    let (rooms, conns, hubs) = (&CLUSTER_ROOMS, &CLUSTER_CONNS, CLUSTER_HUBS);
    let room = |r: u8| rooms[usize::from(r) % rooms.len()];
    let conn = |c: u8| conns[usize::from(c) % conns.len()];
    let hub = |h: u8| usize::from(h) % hubs;
    // Two replicas per shard: room for two hard failovers of each.
    let layout = ClusterLayout {
        replicas: 2,
        ..ClusterLayout::default()
    };
    let protocol = if resp3 { "resp3" } else { "resp2" };
    let url = format!("{}?protocol={protocol}", layout.seed_url());
    let mut sim = Sim::new_cluster(hubs, &layout, |_| {
        let mut c = Config::from_url(&url).expect("a cluster URL");
        c.pool_size = 1;
        c
    });
    sim.split = split;
    sim.seed(seed);
    sim.observe();
    let mut oracle = Oracle::new(&[false; CLUSTER_HUBS]);
    // A start with rooms live on every hub, so that the first operations have members to
    // owe messages to.
    for h in 0..hubs {
        for r in [h, h + 2] {
            sim.join(h, rooms[r], conns[0]).expect("a valid join");
            oracle.joined(&mut sim, h, rooms[r], conns[0]);
        }
    }
    sim.advance(Duration::from_millis(200));
    oracle.drain(&mut sim);
    let mut unconfirmed: BTreeSet<(usize, u64)> = BTreeSet::new();
    for op in ops {
        match *op {
            ClusterOp::Join(h, r, c) => {
                sim.join(hub(h), room(r), conn(c)).expect("a valid join");
                oracle.joined(&mut sim, hub(h), room(r), conn(c));
            }
            ClusterOp::Leave(h, r, c) => {
                let was = sim.leave(hub(h), room(r), conn(c)).expect("a valid leave");
                assert_eq!(was, oracle.left(&mut sim, hub(h), room(r), conn(c)));
            }
            ClusterOp::Disconnect(h, c) => {
                sim.disconnect(hub(h), conn(c)).expect("a valid disconnect");
                oracle.disconnected(&mut sim, hub(h), conn(c));
            }
            ClusterOp::Publish(h, r) => {
                publish(&mut sim, &mut oracle, &mut unconfirmed, hub(h), room(r));
            }
            ClusterOp::Burst(h, r, k) => {
                for _ in 0..=k % 30 {
                    publish(&mut sim, &mut oracle, &mut unconfirmed, hub(h), room(r));
                }
            }
            ClusterOp::Migrate(r, s) => {
                let slot = slot_of(&sim.room_channel(0, room(r)));
                sim.cluster_mut()
                    .migrate_slot(slot, usize::from(s % SHARDS));
            }
            ClusterOp::ManualFailover(s) => {
                sim.cluster_mut().manual_failover(usize::from(s % SHARDS));
            }
            ClusterOp::HardFailover(s) => {
                sim.cluster_mut().hard_failover(usize::from(s % SHARDS));
            }
            ClusterOp::Partition(n, true) => sim.cluster_mut().partition(usize::from(n % NODES)),
            ClusterOp::Partition(n, false) => sim.cluster_mut().heal(usize::from(n % NODES)),
            ClusterOp::Deaf(n) => sim.cluster_mut().deaf_replica(usize::from(n % NODES)),
            ClusterOp::Kill(h, l) => sim.kill_link(hub(h), LinkId(u16::from(l % 8))),
            ClusterOp::Advance(ms) => sim.advance(Duration::from_millis(u64::from(ms % 3000))),
            ClusterOp::Step => {
                sim.step();
            }
        }
        sim.forget_settled(&mut unconfirmed);
        oracle.drain(&mut sim);
    }
    sim.heal();
    sim.advance(Duration::from_secs(15));
    sim.forget_settled(&mut unconfirmed);
    // What a hub missed shows as a gap at the origin's next message: one more from each.
    for (h, r) in oracle.unsettled() {
        publish(&mut sim, &mut oracle, &mut unconfirmed, h, &r);
    }
    sim.advance(Duration::from_secs(5));
    sim.forget_settled(&mut unconfirmed);
    oracle.drain(&mut sim);
    // After recovery every room is live again: a last message to each room from each hub
    // reaches every member (a `Gap` may come first, reporting what was lost before).
    let mut last: Vec<(u32, &str)> = Vec::new();
    for h in 0..hubs {
        for r in rooms {
            let msg = publish(&mut sim, &mut oracle, &mut unconfirmed, h, r)
                .unwrap_or_else(|| panic!("hub {h} refused a publish to {r} after recovery"));
            last.push((msg, r));
        }
    }
    let members: Vec<Vec<(String, String)>> = (0..hubs)
        .map(|h| oracle.members(h).iter().cloned().collect())
        .collect();
    sim.advance(Duration::from_secs(1));
    sim.forget_settled(&mut unconfirmed);
    let mut got: BTreeSet<(usize, u32, String)> = BTreeSet::new();
    for o in &sim.log {
        if let Observed::Event(h, Event::Delivery(d)) = o {
            let Some(msg) = d.message.data.get(4..8) else {
                continue;
            };
            let msg = u32::from_le_bytes(msg.try_into().unwrap_or_default());
            for r in d.recipients() {
                got.insert((*h, msg, r.as_str().to_string()));
            }
        }
    }
    for (msg, r) in &last {
        for (h, m) in members.iter().enumerate() {
            for (_, c) in m.iter().filter(|(room, _)| room == r) {
                assert!(
                    got.contains(&(h, *msg, c.clone())),
                    "after recovery, hub {h} member {c} of {r} did not get message {msg}"
                );
            }
        }
    }
    oracle.finish(&mut sim);
    if std::env::var_os("ROOMCAST_ORACLE_STATS").is_some() {
        eprintln!("{:?}", oracle.stats());
    }
    assert!(
        unconfirmed.is_empty(),
        "every accepted publish was confirmed or failed: {unconfirmed:?}"
    );
    oracle.check_cluster_subscriptions(&sim);
    for (h, node) in sim.nodes.iter().enumerate() {
        for r in rooms {
            if !node.hub.members(r).is_empty() {
                assert_eq!(node.hub.room_state(r), Some(RoomState::Live), "hub {h} {r}");
            }
        }
        assert_eq!(node.hub.metrics().inflight_publishes, 0, "hub {h}");
        assert_eq!(node.hub.metrics().queued_publishes, 0, "hub {h}");
    }
}
