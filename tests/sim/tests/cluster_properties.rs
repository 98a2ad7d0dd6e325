//! Random sequences of joins, leaves, disconnects, publishes, link kills and clock jumps on
//! three hubs in cluster mode, interleaved with random topology changes of the model cluster
//! (slot migrations, manual and hard failovers, partitioned nodes, deaf subscriptions): the
//! body of the `cluster_operations` fuzz target
//! ([`roomcast_sim::fuzz::run_cluster_operations`], which lists what it checks) on generated
//! sequences.
//!
//! Every case is deterministic (the input-splitting seed is part of the generated input):
//! `PROPTEST_RNG_SEED=1 cargo test -p roomcast-sim --test cluster_properties`.

use proptest::prelude::*;
use roomcast_sim::fuzz::{run_cluster_operations, ClusterOp};
use roomcast_sim::Split;

fn op() -> impl Strategy<Value = ClusterOp> {
    let h = 0u8..3;
    let r = 0u8..5;
    let c = 0u8..2;
    prop_oneof![
        4 => (h.clone(), r.clone(), c.clone()).prop_map(|(h, r, c)| ClusterOp::Join(h, r, c)),
        2 => (h.clone(), r.clone(), c.clone()).prop_map(|(h, r, c)| ClusterOp::Leave(h, r, c)),
        1 => (h.clone(), c).prop_map(|(h, c)| ClusterOp::Disconnect(h, c)),
        5 => (h.clone(), r.clone()).prop_map(|(h, r)| ClusterOp::Publish(h, r)),
        1 => (h.clone(), r.clone(), 0u8..30).prop_map(|(h, r, k)| ClusterOp::Burst(h, r, k)),
        2 => (r, 0u8..3).prop_map(|(r, s)| ClusterOp::Migrate(r, s)),
        1 => (0u8..3).prop_map(ClusterOp::ManualFailover),
        1 => (0u8..3).prop_map(ClusterOp::HardFailover),
        1 => (0u8..9, any::<bool>()).prop_map(|(n, on)| ClusterOp::Partition(n, on)),
        1 => (0u8..9).prop_map(ClusterOp::Deaf),
        1 => (h, 0u8..8).prop_map(|(h, l)| ClusterOp::Kill(h, l)),
        2 => (0u16..3000).prop_map(ClusterOp::Advance),
        2 => Just(ClusterOp::Step),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn resp3_random_operations_and_topology_changes(
        ops in proptest::collection::vec(op(), 1..50),
    ) {
        run_cluster_operations(true, Split::Whole, 1, &ops);
    }

    #[test]
    fn resp2_random_operations_and_topology_changes_with_random_splits(
        ops in proptest::collection::vec(op(), 1..50),
        seed in any::<u64>(),
    ) {
        run_cluster_operations(false, Split::Random(64), seed, &ops);
    }
}
