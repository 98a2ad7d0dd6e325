//! Topology tests on `CLUSTER SHARDS` replies captured from a real 3-master/3-replica cluster
//! of redis-server 7.0.15 (in `core/tests/data/cluster/`, described in the README there).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::config::Protocol;
use crate::resp::{FrameLimits, Incoming, Reader, Value};

const LIMITS: FrameLimits = FrameLimits {
    max_frame_bytes: 1 << 20,
    max_depth: 32,
    max_elements: 1 << 20,
};

/// (name, protocol, bytes) of every capture.
const CAPTURES: [(&str, Protocol, &[u8]); 6] = [
    (
        "steady/resp2",
        Protocol::Resp2,
        include_bytes!("../../tests/data/cluster/shards_steady_resp2.resp"),
    ),
    (
        "steady/resp3",
        Protocol::Resp3,
        include_bytes!("../../tests/data/cluster/shards_steady_resp3.resp"),
    ),
    (
        "moved/resp2",
        Protocol::Resp2,
        include_bytes!("../../tests/data/cluster/shards_moved_resp2.resp"),
    ),
    (
        "moved/resp3",
        Protocol::Resp3,
        include_bytes!("../../tests/data/cluster/shards_moved_resp3.resp"),
    ),
    (
        "failover/resp2",
        Protocol::Resp2,
        include_bytes!("../../tests/data/cluster/shards_failover_resp2.resp"),
    ),
    (
        "failover/resp3",
        Protocol::Resp3,
        include_bytes!("../../tests/data/cluster/shards_failover_resp3.resp"),
    ),
];

fn decode(protocol: Protocol, bytes: &[u8]) -> Value {
    let mut buf = BytesMut::from(bytes);
    let mut reader = Reader::new(protocol, LIMITS);
    match reader.next(&mut buf) {
        Ok(Some(Incoming::Reply(v))) if buf.is_empty() => v,
        other => panic!(
            "capture is not one reply: {other:?}, {} bytes left",
            buf.len()
        ),
    }
}

fn capture(name: &str) -> Topology {
    let (_, protocol, bytes) = CAPTURES
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("known capture");
    Topology::from_shards_reply(&decode(*protocol, bytes)).expect("captured reply parses")
}

fn slot(n: u16) -> Slot {
    Slot::new(n).expect("slot")
}

fn range(a: u16, b: u16) -> SlotRange {
    SlotRange {
        start: slot(a),
        end: slot(b),
    }
}

/// The master port of the shard serving slot `n`.
fn master_port(t: &Topology, n: u16) -> Option<u16> {
    t.master_of(slot(n)).and_then(|m| m.port)
}

#[test]
fn resp2_and_resp3_captures_read_the_same() {
    for state in ["steady", "moved", "failover"] {
        let two = capture(&format!("{state}/resp2"));
        let three = capture(&format!("{state}/resp3"));
        assert_eq!(two, three, "{state}");
    }
}

#[test]
fn steady_cluster() {
    let t = capture("steady/resp2");
    assert_eq!(t.shards().len(), 3);
    assert!(t.is_complete());
    assert_eq!(t.served_slots(), SLOT_COUNT);
    for (first, last, master, replica) in [
        (0, 5460, 31001, 31006),
        (5461, 10922, 31002, 31004),
        (10923, 16383, 31003, 31005),
    ] {
        let shard = t.shard_of(slot(first)).expect("owned");
        assert_eq!(shard.ranges, vec![range(first, last)]);
        let m = shard.master.as_ref().expect("master");
        assert_eq!(
            (m.port, m.role, &m.health),
            (Some(master), Role::Master, &Health::Online)
        );
        assert_eq!(
            (m.host(), m.tls_port, m.port_for(false)),
            ("127.0.0.1", None, Some(master))
        );
        assert_eq!(m.id.len(), 40);
        assert_eq!(shard.replicas.len(), 1);
        assert_eq!(shard.replicas[0].port, Some(replica));
        assert_eq!(shard.replicas[0].role, Role::Replica);
        assert_eq!(master_port(&t, last), Some(master));
        assert_eq!(t.node(&m.id), Some(m));
        assert_eq!(shard.first_slot(), Some(slot(first)));
    }
}

#[test]
fn a_moved_slot_splits_ranges() {
    // Slot 100 moved from 31001 to 31002.
    let t = capture("moved/resp3");
    assert!(t.is_complete());
    assert_eq!(master_port(&t, 99), Some(31001));
    assert_eq!(master_port(&t, 100), Some(31002));
    assert_eq!(master_port(&t, 101), Some(31001));
    let s = t.shard_of(slot(100)).expect("owned");
    assert_eq!(s.ranges, vec![range(100, 100), range(5461, 10922)]);
    assert_eq!(
        t.shard_of(slot(0)).map(|s| s.ranges.clone()),
        Some(vec![range(0, 99), range(101, 5460)])
    );
}

#[test]
fn after_a_failover_the_old_master_is_a_shard_without_slots() {
    // 31003 killed; its replica 31005 took over.
    let t = capture("failover/resp2");
    assert!(t.is_complete());
    assert_eq!(t.shards().len(), 4);
    assert_eq!(master_port(&t, 16383), Some(31005));
    let old = t
        .shards()
        .iter()
        .find(|s| s.ranges.is_empty())
        .expect("the failed master's shard");
    let m = old.master.as_ref().expect("listed as master");
    assert_eq!((m.port, &m.health), (Some(31003), &Health::Failed));
    assert!(!m.is_online());
    assert_eq!(old.first_slot(), None);
}

#[test]
fn every_split_of_a_capture_decodes_to_the_same_topology() {
    for (name, protocol, bytes) in CAPTURES {
        let want = Topology::from_shards_reply(&decode(protocol, bytes)).expect(name);
        for cut in (1..bytes.len()).step_by(97) {
            let mut reader = Reader::new(protocol, LIMITS);
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(reader.next(&mut buf), Ok(None), "{name} cut {cut}");
            buf.extend_from_slice(&bytes[cut..]);
            let Ok(Some(Incoming::Reply(v))) = reader.next(&mut buf) else {
                panic!("{name} cut {cut}");
            };
            assert_eq!(Topology::from_shards_reply(&v).as_ref(), Ok(&want));
        }
    }
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

/// A RESP2-shaped node with the given fields.
fn node(fields: &[(&str, Value)]) -> Value {
    Value::Array(
        fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), v.clone()])
            .collect(),
    )
}

fn good_node(port: i64, role: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("id", bulk(&format!("{port:040}"))),
        ("port", Value::Int(port)),
        ("ip", bulk("10.0.0.1")),
        ("endpoint", bulk("?")),
        ("role", bulk(role)),
        ("replication-offset", Value::Int(7)),
        ("health", bulk("online")),
    ]
}

fn shard(slots: &[i64], nodes: Vec<Value>) -> Value {
    Value::Map(vec![
        (
            bulk("slots"),
            Value::Array(slots.iter().map(|&n| Value::Int(n)).collect()),
        ),
        (bulk("nodes"), Value::Array(nodes)),
    ])
}

#[test]
fn optional_fields_and_tls() {
    let mut n = good_node(7000, "master");
    n.push(("tls-port", Value::Int(7443)));
    n.push(("hostname", bulk("redis-0.example")));
    n.push(("some-future-field", Value::Bool(true)));
    n[1].1 = Value::Int(0); // no plain port
    let reply = Value::Array(vec![shard(&[0, 16383], vec![node(&n)])]);
    let t = Topology::from_shards_reply(&reply).expect("parses");
    let m = t.master_of(slot(42)).expect("master");
    assert_eq!((m.port, m.tls_port), (None, Some(7443)));
    assert_eq!((m.port_for(true), m.port_for(false)), (Some(7443), None));
    // Endpoint `?` (unknown): connect to the IP.
    assert_eq!(m.host(), "10.0.0.1");
    assert_eq!(m.hostname.as_deref(), Some("redis-0.example"));
    // Slots as decimal text (as some 7.0 releases sent them) read the same.
    let text = Value::Array(vec![Value::Map(vec![
        (bulk("slots"), Value::Array(vec![bulk("0"), bulk("16383")])),
        (bulk("nodes"), Value::Array(vec![node(&n)])),
    ])]);
    assert_eq!(Topology::from_shards_reply(&text), Ok(t));
}

#[test]
fn a_slot_without_owner_has_no_master() {
    let reply = Value::Array(vec![shard(
        &[0, 99],
        vec![node(&good_node(7000, "master"))],
    )]);
    let t = Topology::from_shards_reply(&reply).expect("parses");
    assert_eq!(t.served_slots(), 100);
    assert!(!t.is_complete());
    assert!(t.master_of(slot(99)).is_some());
    assert_eq!(t.shard_index(slot(100)), None);
    assert!(t.master_of(slot(100)).is_none());
    // A shard of replicas only (a master missing from the reply) owns slots but no master.
    let reply = Value::Array(vec![shard(
        &[0, 16383],
        vec![node(&good_node(7001, "replica"))],
    )]);
    let t = Topology::from_shards_reply(&reply).expect("parses");
    assert!(t.master_of(slot(5)).is_none());
    assert!(!t.is_complete());
}

#[test]
fn malformed_replies_are_refused_with_the_reason() {
    let ok = || node(&good_node(7000, "master"));
    let without = |field: &str| {
        let n: Vec<_> = good_node(7000, "master")
            .into_iter()
            .filter(|(k, _)| *k != field)
            .collect();
        node(&n)
    };
    let with = |field: &'static str, v: Value| {
        let mut n = good_node(7000, "master");
        for f in &mut n {
            if f.0 == field {
                f.1 = v.clone();
            }
        }
        node(&n)
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            Value::Error(Bytes::from_static(
                b"ERR This instance has cluster support disabled",
            )),
            "cluster support disabled",
        ),
        (
            Value::Error(Bytes::from_static(b"ERR unknown subcommand 'SHARDS'")),
            "unknown subcommand",
        ),
        (Value::Int(3), "not an array"),
        (Value::Array(vec![Value::Int(1)]), "shard 0 is an integer"),
        (
            Value::Array(vec![shard(&[0], vec![ok()])]),
            "start/end pairs",
        ),
        (
            Value::Array(vec![shard(&[5, 4], vec![ok()])]),
            "ends before it starts",
        ),
        (
            Value::Array(vec![shard(&[0, 16384], vec![ok()])]),
            "not a slot",
        ),
        (
            Value::Array(vec![shard(&[-1, 3], vec![ok()])]),
            "not a slot",
        ),
        (
            Value::Array(vec![
                shard(&[0, 10], vec![ok()]),
                shard(&[10, 20], vec![ok()]),
            ]),
            "slot 10 is claimed by shard 0 and shard 1",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![ok(), ok()])]),
            "two masters",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![without("id")])]),
            "node 0 has no id",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![without("ip")])]),
            "has no ip",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![without("role")])]),
            "has no role",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![without("health")])]),
            "has no health",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![without("port")])]),
            "no port or tls-port",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![with("port", Value::Int(70000))])]),
            "not a TCP port",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![with("role", bulk("boss"))])]),
            "neither master nor replica",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![with("id", Value::Int(1))])]),
            "id is an integer",
        ),
        (
            Value::Array(vec![shard(&[0, 1], vec![Value::Array(vec![bulk("id")])])]),
            "not key/value pairs",
        ),
        (
            Value::Array(vec![Value::Map(vec![(
                bulk("nodes"),
                Value::Array(vec![ok()]),
            )])]),
            "shard 0 has no slots",
        ),
        (
            Value::Array(vec![Value::Map(vec![(
                bulk("slots"),
                Value::Array(vec![]),
            )])]),
            "shard 0 has no nodes",
        ),
    ];
    for (reply, needle) in cases {
        let e = Topology::from_shards_reply(&reply)
            .expect_err(needle)
            .to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
        assert!(e.contains("Redis 7.0 or later in cluster mode"), "{e}");
    }
}

/// Any value, biased towards the shapes of a `CLUSTER SHARDS` reply.
fn value() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(vec![
        "slots",
        "nodes",
        "id",
        "port",
        "tls-port",
        "ip",
        "endpoint",
        "hostname",
        "role",
        "master",
        "replica",
        "health",
        "online",
        "fail",
        "loading",
        "replication-offset",
        "x",
    ])
    .prop_map(bulk);
    let leaf = prop_oneof![
        4 => word,
        3 => (-2i64..20_000).prop_map(Value::Int),
        1 => Just(Value::Nil),
        1 => Just(Value::Error(Bytes::from_static(b"ERR x"))),
        1 => any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(5, 200, 16, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..16).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn any_value_parses_or_is_refused_without_panic(v in value()) {
        match Topology::from_shards_reply(&v) {
            Ok(t) => {
                // Whatever parses is consistent: every served slot's shard lists it.
                for n in 0..SLOT_COUNT as u16 {
                    let s = slot(n);
                    if let Some(shard) = t.shard_of(s) {
                        prop_assert!(shard.ranges.iter().any(|r| r.contains(s)));
                    }
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn every_byte_string_parses_as_an_error_or_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = ClusterError::parse(&bytes);
        let mut moved = b"MOVED ".to_vec();
        moved.extend_from_slice(&bytes);
        if let Ok(Some(ClusterError::Moved(r))) = ClusterError::parse(&moved) {
            prop_assert!(r.port != 0);
        }
    }
}

/// The places across the captured history: steady, a slot moved, a master killed and its
/// replica promoted, and back. Place ids stay the same for the same master, slots follow
/// their owners, and the dead master's place is retired (its links to be closed).
#[test]
fn placements_follow_the_captured_topologies_with_stable_ids() {
    let servers = match crate::config::parse_redis_target("redis+cluster://127.0.0.1:31001") {
        Ok(crate::config::RedisTarget::Cluster(c)) => c,
        other => panic!("a cluster URL: {other:?}"),
    };
    let port_of = |p: &Placement, slot_n: u16| {
        p.place_of_slot(slot(slot_n))
            .and_then(|id| p.server(id))
            .map(|s| s.port)
    };
    let (mut p, first) = Placement::new(servers, capture("steady/resp2"));
    assert_eq!(first.added.len(), 3);
    assert!(first.retired.is_empty() && first.revived.is_empty());
    let mut ports: Vec<u16> = p
        .places()
        .filter_map(|id| p.server(id))
        .map(|s| s.port)
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [31001, 31002, 31003]);
    assert_eq!(port_of(&p, 100), Some(31001));
    assert_eq!(port_of(&p, 10923), Some(31003));
    let ids: Vec<PlaceId> = p.places().collect();
    let id_of = |port: u16| {
        ids.iter()
            .copied()
            .find(|&id| p.server(id).map(|s| s.port) == Some(port))
            .expect("a place on that port")
    };
    let third = id_of(31003);

    let moved = p.refresh(capture("moved/resp2"));
    assert_eq!(moved, PlacementChange::default(), "the same three masters");
    assert_eq!(port_of(&p, 100), Some(31002));
    assert_eq!(port_of(&p, 99), Some(31001));
    assert_eq!(p.places().collect::<Vec<_>>(), ids);

    let failover = p.refresh(capture("failover/resp2"));
    assert_eq!(failover.retired, [third], "the dead master's place");
    assert_eq!(failover.added.len(), 1);
    let promoted = failover.added[0];
    assert_eq!(p.server(promoted).map(|s| s.port), Some(31005));
    assert!(!p.is_serving(third) && p.is_serving(promoted));
    assert_eq!(port_of(&p, 10923), Some(31005));
    assert_eq!(port_of(&p, 100), Some(31002));

    // The old master back as the owner (as after a failover back): its old id serves again.
    let back = p.refresh(capture("steady/resp3"));
    assert_eq!(back.revived, [third]);
    assert_eq!(back.retired, [promoted]);
    assert!(back.added.is_empty());
    assert_eq!(port_of(&p, 10923), Some(31003));
    // Every server has the cluster's settings: database 0.
    assert!(p.places().filter_map(|id| p.server(id)).all(|s| s.db == 0));
    assert_eq!(p.server(PlaceId(99)), None);
}
