//! Random sequences of joins, leaves, disconnects, publishes, link kills and clock jumps on
//! three hubs in cluster mode, interleaved with random topology changes of the model cluster
//! (slot migrations, manual and hard failovers, partitioned nodes, deaf subscriptions), with
//! the delivery oracle checked after every step and, after quiescence, the cluster
//! invariant: every room with members subscribed exactly once, on its slot's owner.
//!
//! Every case is deterministic (the input-splitting seed is part of the generated input):
//! `PROPTEST_RNG_SEED=1 cargo test -p roomcast-sim --test cluster_properties`.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use roomcast_core::{Config, Event, LinkId, Protocol, Publish, RoomState};
use roomcast_sim::harness::Observed;
use roomcast_sim::model::{slot_of, ClusterLayout};
use roomcast_sim::oracle::Oracle;
use roomcast_sim::{Sim, Split};

/// Two rooms share a slot through a hash tag.
const ROOMS: [&str; 5] = ["a", "b", "hub/c", "{g}x", "{g}y"];
const CONNS: [&str; 2] = ["1", "2"];
const HUBS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize, usize),
    Leave(usize, usize, usize),
    Disconnect(usize, usize),
    Publish(usize, usize),
    Burst(usize, usize, usize),
    /// The slot of a room moves to a shard.
    Migrate(usize, usize),
    ManualFailover(usize),
    HardFailover(usize),
    /// A cluster node is partitioned from the hubs (or healed).
    Partition(usize, bool),
    /// The subscriptions a cluster node holds go deaf (redis/redis#12558).
    Deaf(usize),
    Kill(usize, u16),
    Advance(u64),
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0..HUBS;
    let r = 0..ROOMS.len();
    let c = 0..CONNS.len();
    prop_oneof![
        4 => (h.clone(), r.clone(), c.clone()).prop_map(|(h, r, c)| Op::Join(h, r, c)),
        2 => (h.clone(), r.clone(), c.clone()).prop_map(|(h, r, c)| Op::Leave(h, r, c)),
        1 => (h.clone(), c).prop_map(|(h, c)| Op::Disconnect(h, c)),
        5 => (h.clone(), r.clone()).prop_map(|(h, r)| Op::Publish(h, r)),
        1 => (h.clone(), r.clone(), 1usize..30).prop_map(|(h, r, k)| Op::Burst(h, r, k)),
        2 => (r, 0usize..3).prop_map(|(r, s)| Op::Migrate(r, s)),
        1 => (0usize..3).prop_map(Op::ManualFailover),
        1 => (0usize..3).prop_map(Op::HardFailover),
        1 => (0usize..9, any::<bool>()).prop_map(|(n, on)| Op::Partition(n, on)),
        1 => (0usize..9).prop_map(Op::Deaf),
        1 => (h, 0u16..8).prop_map(|(h, l)| Op::Kill(h, l)),
        2 => (0u64..3000).prop_map(Op::Advance),
        2 => Just(Op::Step),
    ]
}

/// Forgets the publishes whose outcome is in the log (read it before the oracle drains it).
fn outcomes(sim: &Sim, unconfirmed: &mut BTreeSet<(usize, u64)>) {
    for o in &sim.log {
        if let Observed::Event(
            i,
            Event::PublishConfirmed { id, .. } | Event::PublishFailed { id, .. },
        ) = o
        {
            unconfirmed.remove(&(*i, id.0));
        }
    }
}

fn publish(
    sim: &mut Sim,
    oracle: &mut Oracle,
    unconfirmed: &mut BTreeSet<(usize, u64)>,
    h: usize,
    room: &str,
) {
    let (msg, data) = oracle.next_message(8);
    let now = sim.now;
    if let Ok(pid) = sim.nodes[h]
        .hub
        .publish(&Publish::broadcast(room, &data), now)
    {
        unconfirmed.insert((h, pid.0));
        oracle.published(sim, h, msg, room, &data, None);
    }
}

fn run(ops: Vec<Op>, protocol: Protocol, split: Split, seed: u64) -> Result<(), TestCaseError> {
    // Two replicas per shard: room for two hard failovers of each.
    let layout = ClusterLayout {
        replicas: 2,
        ..ClusterLayout::default()
    };
    let url = layout.seed_url();
    let mut sim = Sim::new_cluster(HUBS, &layout, |_| {
        let mut c = Config::from_url(&url).expect("a cluster URL");
        c.pool_size = 1;
        c.server.protocol = protocol;
        c
    });
    sim.split = split;
    sim.seed(seed);
    sim.observe();
    let mut oracle = Oracle::new(&[false; HUBS]);
    // A start with rooms live on every hub, so that the first operations have members to
    // owe messages to.
    for h in 0..HUBS {
        for r in [h, h + 2] {
            sim.join(h, ROOMS[r], CONNS[0]).unwrap();
            oracle.joined(&mut sim, h, ROOMS[r], CONNS[0]);
        }
    }
    sim.advance(Duration::from_millis(200));
    oracle.drain(&mut sim);
    let mut unconfirmed: BTreeSet<(usize, u64)> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Join(h, r, c) => {
                sim.join(h, ROOMS[r], CONNS[c]).unwrap();
                oracle.joined(&mut sim, h, ROOMS[r], CONNS[c]);
            }
            Op::Leave(h, r, c) => {
                let was = sim.leave(h, ROOMS[r], CONNS[c]).unwrap();
                prop_assert_eq!(was, oracle.left(&mut sim, h, ROOMS[r], CONNS[c]));
            }
            Op::Disconnect(h, c) => {
                sim.disconnect(h, CONNS[c]).unwrap();
                oracle.disconnected(&mut sim, h, CONNS[c]);
            }
            Op::Publish(h, r) => publish(&mut sim, &mut oracle, &mut unconfirmed, h, ROOMS[r]),
            Op::Burst(h, r, k) => {
                for _ in 0..k {
                    publish(&mut sim, &mut oracle, &mut unconfirmed, h, ROOMS[r]);
                }
            }
            Op::Migrate(r, s) => {
                let slot = slot_of(&sim.room_channel(0, ROOMS[r]));
                sim.cluster_mut().migrate_slot(slot, s);
            }
            Op::ManualFailover(s) => {
                sim.cluster_mut().manual_failover(s);
            }
            Op::HardFailover(s) => {
                sim.cluster_mut().hard_failover(s);
            }
            Op::Partition(n, true) => sim.cluster_mut().partition(n),
            Op::Partition(n, false) => sim.cluster_mut().heal(n),
            Op::Deaf(n) => sim.cluster_mut().deaf_replica(n),
            Op::Kill(h, l) => sim.kill_link(h, LinkId(l)),
            Op::Advance(ms) => sim.advance(Duration::from_millis(ms)),
            Op::Step => {
                sim.step();
            }
        }
        outcomes(&sim, &mut unconfirmed);
        oracle.drain(&mut sim);
    }
    sim.heal();
    sim.advance(Duration::from_secs(15));
    outcomes(&sim, &mut unconfirmed);
    for (h, room) in oracle.unsettled() {
        let (msg, data) = oracle.next_message(8);
        let now = sim.now;
        sim.nodes[h]
            .hub
            .publish(&Publish::broadcast(&room, &data), now)
            .unwrap();
        oracle.published(&mut sim, h, msg, &room, &data, None);
    }
    sim.advance(Duration::from_secs(5));
    outcomes(&sim, &mut unconfirmed);
    oracle.drain(&mut sim);
    // After recovery every room is live again: a last message to each room from each hub
    // reaches every member (a `Gap` may come first, reporting what was lost before).
    let mut last: Vec<(u32, usize, &str)> = Vec::new();
    for h in 0..HUBS {
        for r in ROOMS {
            let (msg, data) = oracle.next_message(8);
            let now = sim.now;
            let pid = sim.nodes[h]
                .hub
                .publish(&Publish::broadcast(r, &data), now)
                .unwrap();
            unconfirmed.insert((h, pid.0));
            oracle.published(&mut sim, h, msg, r, &data, None);
            last.push((msg, h, r));
        }
    }
    let members: Vec<Vec<(String, String)>> = (0..HUBS)
        .map(|h| oracle.members(h).iter().cloned().collect())
        .collect();
    let mut got: BTreeSet<(usize, u32, String)> = BTreeSet::new();
    sim.advance(Duration::from_secs(1));
    outcomes(&sim, &mut unconfirmed);
    for o in &sim.log {
        if let Observed::Event(h, Event::Delivery(d)) = o {
            let Some(msg) = d.message.data.get(4..8) else {
                continue;
            };
            let msg = u32::from_le_bytes(msg.try_into().expect("4 bytes"));
            for r in d.recipients() {
                got.insert((*h, msg, r.as_str().to_string()));
            }
        }
    }
    for (msg, _, room) in &last {
        for (h, m) in members.iter().enumerate() {
            for (_, conn) in m.iter().filter(|(r, _)| r == room) {
                prop_assert!(
                    got.contains(&(h, *msg, conn.clone())),
                    "after recovery, hub {} member {} of {} did not get message {}",
                    h,
                    conn,
                    room,
                    msg
                );
            }
        }
    }
    oracle.finish(&mut sim);
    if std::env::var_os("ROOMCAST_ORACLE_STATS").is_some() {
        eprintln!("{:?}", oracle.stats());
    }
    prop_assert!(
        unconfirmed.is_empty(),
        "every accepted publish was confirmed or failed: {:?}",
        unconfirmed
    );
    oracle.check_cluster_subscriptions(&sim);
    for (h, node) in sim.nodes.iter().enumerate() {
        for r in ROOMS {
            if !node.hub.members(r).is_empty() {
                prop_assert_eq!(
                    node.hub.room_state(r),
                    Some(RoomState::Live),
                    "hub {} {}",
                    h,
                    r
                );
            }
        }
        prop_assert_eq!(node.hub.metrics().inflight_publishes, 0);
        prop_assert_eq!(node.hub.metrics().queued_publishes, 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn resp3_random_operations_and_topology_changes(
        ops in proptest::collection::vec(op(), 1..50),
    ) {
        run(ops, Protocol::Resp3, Split::Whole, 1)?;
    }

    #[test]
    fn resp2_random_operations_and_topology_changes_with_random_splits(
        ops in proptest::collection::vec(op(), 1..50),
        seed in any::<u64>(),
    ) {
        run(ops, Protocol::Resp2, Split::Random(64), seed)?;
    }
}
