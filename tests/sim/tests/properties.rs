//! Random sequences of joins, leaves, disconnects, publishes (single and in bursts), link
//! kills, deaf subscribers and clock jumps on several instances against the model Redis,
//! with the delivery oracle (`roomcast_sim::oracle`) and the gauges checked after every step.
//!
//! Every case is deterministic (the input-splitting seed is part of the generated input), so
//! a run replays from proptest's seed:
//! `PROPTEST_RNG_SEED=1 cargo test -p roomcast-sim --test properties -- --test-threads=1`.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use roomcast_core::envelope::MessageType;
use roomcast_core::{Config, Event, LinkId, Protocol, Publish, RoomState, SUBSCRIBER};
use roomcast_sim::oracle::Oracle;
use roomcast_sim::{ModelConfig, Sim, Split};

const ROOMS: [&str; 5] = ["a", "b", "hub/c", "x:y", "ünï"];
const CONNS: [&str; 3] = ["1", "2", "3"];
const NODES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Join(usize, usize, usize),
    Leave(usize, usize, usize),
    Disconnect(usize, usize),
    Publish(usize, usize),
    /// Many publishes in one turn, so that a rare loss has messages to hit.
    Burst(usize, usize, usize),
    Kill(usize, u16),
    /// What Redis sends a node's subscriber is lost (or no longer): messages go missing
    /// while the link stays up, to be reported as a gap or by the probe.
    Deafen(usize, bool),
    Advance(u64),
    Step,
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NODES;
    let r = 0..ROOMS.len();
    let c = 0..CONNS.len();
    prop_oneof![
        4 => (n.clone(), r.clone(), c.clone()).prop_map(|(n, r, c)| Op::Join(n, r, c)),
        2 => (n.clone(), r.clone(), c.clone()).prop_map(|(n, r, c)| Op::Leave(n, r, c)),
        1 => (n.clone(), c).prop_map(|(n, c)| Op::Disconnect(n, c)),
        5 => (n.clone(), r.clone()).prop_map(|(n, r)| Op::Publish(n, r)),
        1 => (n.clone(), r, 1usize..60).prop_map(|(n, r, k)| Op::Burst(n, r, k)),
        1 => (n.clone(), 0u16..3).prop_map(|(n, l)| Op::Kill(n, l)),
        1 => (n, any::<bool>()).prop_map(|(n, on)| Op::Deafen(n, on)),
        2 => (0u64..4000).prop_map(Op::Advance),
        2 => Just(Op::Step),
    ]
}

/// The membership gauge agrees with the rooms.
fn check_gauges(sim: &Sim, oracle: &Oracle) -> Result<(), TestCaseError> {
    for (i, node) in sim.nodes.iter().enumerate() {
        let m = node.hub.metrics();
        prop_assert_eq!(
            m.members,
            oracle.members(i).len(),
            "node {}: member count",
            i
        );
        let rooms: BTreeSet<&str> = oracle.members(i).iter().map(|(r, _)| r.as_str()).collect();
        prop_assert!(m.rooms >= rooms.len());
        let counts = oracle.counts(i);
        prop_assert_eq!(m.delivered, counts.deliveries, "node {}: delivered", i);
        prop_assert_eq!(m.member_deliveries, counts.member_deliveries);
        prop_assert_eq!(m.bytes_out, node.bytes_polled, "node {}: bytes_out", i);
        prop_assert_eq!(
            m.buffered_input,
            node.held_input(),
            "node {}: buffered_input",
            i
        );
    }
    Ok(())
}

/// Node `n` publishes the next message to room `r`. Refusals (queue full while down) are
/// allowed; silent loss is not.
fn publish(
    sim: &mut Sim,
    oracle: &mut Oracle,
    unconfirmed: &mut BTreeSet<(usize, u64)>,
    n: usize,
    r: usize,
) {
    let (msg, data) = oracle.next_message(8);
    let now = sim.now;
    let accepted = sim.nodes[n].hub.publish(
        &Publish {
            room: ROOMS[r],
            message_type: MessageType::Broadcast,
            data: &data,
            exclude_connection: None,
            timestamp: 0,
        },
        now,
    );
    if let Ok(pid) = accepted {
        unconfirmed.insert((n, pid.0));
        oracle.published(sim, n, msg, ROOMS[r], &data, None);
    }
}

fn run(ops: Vec<Op>, protocol: Protocol, split: Split, seed: u64) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(NODES, ModelConfig::default(), |_| {
        let mut c = Config {
            pool_size: 2,
            ..Config::default()
        };
        c.server.protocol = protocol;
        c
    });
    sim.split = split;
    sim.seed(seed);
    sim.observe();
    let mut oracle = Oracle::new(&[false; NODES]);
    sim.settle();
    oracle.drain(&mut sim);
    // Accepted publishes without an outcome: (node, publish id).
    let mut unconfirmed: BTreeSet<(usize, u64)> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Join(n, r, c) => {
                sim.join(n, ROOMS[r], CONNS[c]).unwrap();
                oracle.joined(&mut sim, n, ROOMS[r], CONNS[c]);
            }
            Op::Leave(n, r, c) => {
                let was = sim.leave(n, ROOMS[r], CONNS[c]).unwrap();
                prop_assert_eq!(was, oracle.left(&mut sim, n, ROOMS[r], CONNS[c]));
            }
            Op::Disconnect(n, c) => {
                let rooms = sim.disconnect(n, CONNS[c]).unwrap();
                let mut rooms: Vec<String> = rooms.iter().map(|r| r.as_str().into()).collect();
                rooms.sort();
                prop_assert_eq!(rooms, oracle.disconnected(&mut sim, n, CONNS[c]));
            }
            Op::Publish(n, r) => publish(&mut sim, &mut oracle, &mut unconfirmed, n, r),
            Op::Burst(n, r, k) => {
                for _ in 0..k {
                    publish(&mut sim, &mut oracle, &mut unconfirmed, n, r);
                }
            }
            Op::Kill(n, l) => {
                // Replies in flight are lost with the link: what was written may or may not
                // have reached Redis, so the hub resends and receivers drop the copies.
                sim.deafen(n, LinkId(l), true);
                sim.step();
                sim.deafen(n, LinkId(l), false);
                sim.kill_link(n, LinkId(l));
            }
            Op::Deafen(n, on) => sim.deafen(n, SUBSCRIBER, on),
            Op::Advance(ms) => sim.advance(Duration::from_millis(ms)),
            Op::Step => {
                sim.step();
            }
        }
        sim.forget_settled(&mut unconfirmed);
        oracle.drain(&mut sim);
        check_gauges(&sim, &oracle)?;
    }
    sim.heal();
    sim.advance(Duration::from_secs(10));
    sim.forget_settled(&mut unconfirmed);
    // What a node missed shows as a gap at the origin's next message: one more from each.
    for (n, room) in oracle.unsettled() {
        let (msg, data) = oracle.next_message(8);
        let now = sim.now;
        sim.nodes[n]
            .hub
            .publish(&Publish::broadcast(&room, &data), now)
            .unwrap();
        oracle.published(&mut sim, n, msg, &room, &data, None);
    }
    sim.advance(Duration::from_secs(5));
    sim.forget_settled(&mut unconfirmed);
    oracle.finish(&mut sim);
    check_gauges(&sim, &oracle)?;
    if std::env::var_os("ROOMCAST_ORACLE_STATS").is_some() {
        eprintln!("{:?}", oracle.stats());
    }
    // Quiescence: the confirmed channels are the rooms with members plus the control channel.
    prop_assert!(
        unconfirmed.is_empty(),
        "every accepted publish was confirmed or failed"
    );
    for node in &sim.nodes {
        let client = node.client(SUBSCRIBER).expect("subscriber connected");
        let mut confirmed: Vec<Vec<u8>> = sim.redis.subscriptions_of(client);
        confirmed.sort();
        let mut want: Vec<Vec<u8>> = ROOMS
            .iter()
            .filter(|r| !node.hub.members(r).is_empty())
            .map(|r| {
                node.hub
                    .namer()
                    .room_channel(&(*r).try_into().unwrap())
                    .to_vec()
            })
            .collect();
        want.push(
            node.hub
                .namer()
                .control_channel(node.hub.identity().instance)
                .to_vec(),
        );
        want.sort();
        prop_assert_eq!(confirmed, want);
        for r in ROOMS {
            if !node.hub.members(r).is_empty() {
                prop_assert_eq!(node.hub.room_state(r), Some(RoomState::Live));
            }
        }
        prop_assert_eq!(node.hub.metrics().inflight_publishes, 0);
        prop_assert_eq!(node.hub.metrics().queued_publishes, 0);
    }
    // Presence agrees with the hubs: every room's answer, from every instance, is the union of
    // the local members.
    for r in ROOMS {
        let mut want: Vec<(u64, String)> = Vec::new();
        for node in &sim.nodes {
            let me = node.hub.identity().instance.0;
            want.extend(
                node.hub
                    .members(r)
                    .iter()
                    .map(|c| (me, c.as_str().to_string())),
            );
        }
        want.sort();
        for n in 0..NODES {
            let now = sim.now;
            let q = sim.nodes[n].hub.presence_room(r).unwrap();
            let id = sim.nodes[n].hub.query_presence(q, now).unwrap();
            sim.run();
            let answer = sim.take_events_of(n).into_iter().find_map(|e| match e {
                Event::Presence { id: i, result, .. } if i == id => Some(result),
                _ => None,
            });
            let Some(Ok(roomcast_core::PresenceAnswer::Room(m))) = answer else {
                return Err(TestCaseError::fail(format!(
                    "no presence answer: {answer:?}"
                )));
            };
            let got: Vec<(u64, String)> = m
                .into_iter()
                .map(|m| (m.instance.0, m.conn.as_str().to_string()))
                .collect();
            prop_assert_eq!(&got, &want, "presence of room {} from node {}", r, n);
        }
    }
    // Everyone leaves: nothing is left, in the hubs or in Redis.
    for n in 0..NODES {
        for c in CONNS {
            sim.disconnect(n, c).unwrap();
        }
    }
    sim.advance(Duration::from_secs(5));
    for node in &sim.nodes {
        prop_assert_eq!(node.hub.metrics().rooms, 0);
        prop_assert_eq!(node.hub.metrics().members, 0);
        prop_assert_eq!(node.hub.metrics().subscriptions_in_flight, 0);
        let client = node.client(SUBSCRIBER).expect("subscriber connected");
        prop_assert_eq!(sim.redis.subscriptions_of(client).len(), 1);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn resp2_random_operations(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, Protocol::Resp2, Split::Whole, 1)?;
    }

    #[test]
    fn resp3_random_operations_with_random_splits(
        ops in proptest::collection::vec(op(), 1..60),
        seed in any::<u64>(),
    ) {
        run(ops, Protocol::Resp3, Split::Random(64), seed)?;
    }
}

#[test]
fn a_long_fixed_sequence() {
    let mut ops = Vec::new();
    for i in 0..200usize {
        ops.push(match i % 9 {
            0 | 1 => Op::Join(i % NODES, i % ROOMS.len(), i % CONNS.len()),
            2 => Op::Publish(i % NODES, (i / 3) % ROOMS.len()),
            3 => Op::Publish((i + 1) % NODES, (i / 2) % ROOMS.len()),
            4 => Op::Leave(i % NODES, (i / 5) % ROOMS.len(), i % CONNS.len()),
            5 => Op::Kill(i % NODES, (i % 3) as u16),
            6 => Op::Advance(700),
            7 => Op::Disconnect(i % NODES, (i / 7) % CONNS.len()),
            _ => Op::Step,
        });
    }
    run(ops, Protocol::Resp2, Split::Chunks(5), 1).unwrap();
}
