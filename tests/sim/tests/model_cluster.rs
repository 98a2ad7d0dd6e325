//! The model cluster driven with raw RESP: routing (`MOVED`, `CROSSSLOT`, `CLUSTERDOWN`),
//! `CLUSTER SHARDS` against the replies captured from redis-server 7.0.15 (and read by the
//! core's `Topology`), sharded pub/sub over a shard, and every topology change the
//! simulation injects (migration, manual and hard failover, partition, deaf subscriptions),
//! with the unsolicited `sunsubscribe` pushes compared byte for byte with captures.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roomcast_core::cluster::{key_slot, Topology};
use roomcast_core::{Config, Value};
use roomcast_sim::model::{
    command_bytes, slot_of, ClusterLayout, ModelCluster, ModelConfig, ModelRedis, NodeRole, Refused,
};
use roomcast_sim::oracle::Oracle;
use roomcast_sim::{ClientId, Sim};

const CAPTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../core/tests/data/cluster/"
);

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{CAPTURES}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Decodes one complete RESP2 or RESP3 frame with redis-protocol (independent of the model's
/// encoder) into the core's `Value`; returns it and the bytes it took.
fn decode_one(buf: &[u8], resp3: bool) -> (Value, usize) {
    if resp3 {
        use redis_protocol::resp3::types::OwnedFrame as F;
        fn conv(f: F) -> Value {
            match f {
                F::BlobString { data, .. } | F::VerbatimString { data, .. } => {
                    Value::Bulk(Bytes::from(data))
                }
                F::SimpleString { data, .. } => Value::Simple(Bytes::from(data)),
                F::SimpleError { data, .. } => Value::Error(Bytes::from(data.into_bytes())),
                F::BlobError { data, .. } => Value::Error(Bytes::from(data)),
                F::Number { data, .. } => Value::Int(data),
                F::Null => Value::Nil,
                F::Array { data, .. } | F::Push { data, .. } => {
                    Value::Array(data.into_iter().map(conv).collect())
                }
                F::Set { data, .. } => Value::Array(data.into_iter().map(conv).collect()),
                F::Map { data, .. } => {
                    let mut pairs: Vec<(Value, Value)> =
                        data.into_iter().map(|(k, v)| (conv(k), conv(v))).collect();
                    // redis-protocol's map forgets the order: put it back in a fixed one.
                    pairs.sort_by_key(|(k, _)| format!("{k:?}"));
                    Value::Map(pairs)
                }
                F::Boolean { data, .. } => Value::Bool(data),
                F::Double { data, .. } => Value::Double(data),
                other => panic!("unexpected RESP3 frame {other:?}"),
            }
        }
        let (f, n) = redis_protocol::resp3::decode::complete::decode(buf)
            .expect("well-formed RESP3")
            .expect("a complete frame");
        (conv(f), n)
    } else {
        use redis_protocol::resp2::types::OwnedFrame as F;
        fn conv(f: F) -> Value {
            match f {
                F::SimpleString(s) => Value::Simple(Bytes::from(s)),
                F::Error(e) => Value::Error(Bytes::from(e.into_bytes())),
                F::Integer(n) => Value::Int(n),
                F::BulkString(b) => Value::Bulk(Bytes::from(b)),
                F::Array(a) => Value::Array(a.into_iter().map(conv).collect()),
                F::Null => Value::Nil,
            }
        }
        let (f, n) = redis_protocol::resp2::decode::decode(buf)
            .expect("well-formed RESP2")
            .expect("a complete frame");
        (conv(f), n)
    }
}

fn decode_all(mut buf: &[u8], resp3: bool) -> Vec<Value> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (v, n) = decode_one(buf, resp3);
        out.push(v);
        buf = &buf[n..];
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A model cluster with a virtual clock and raw connections.
struct Rig {
    cl: ModelCluster,
    now: Instant,
}

impl Rig {
    fn new(layout: &ClusterLayout) -> Rig {
        Rig {
            cl: ModelCluster::new(layout),
            now: Instant::now(),
        }
    }

    fn standard() -> Rig {
        Rig::new(&ClusterLayout::default())
    }

    /// A connection to node `n`, by its address.
    fn conn(&mut self, n: usize) -> ClientId {
        let (host, port) = self.cl.node(n).address();
        let host = host.to_string();
        self.cl.connect(&host, port).expect("the node accepts")
    }

    /// A RESP3 connection to node `n`.
    fn conn3(&mut self, n: usize) -> ClientId {
        let c = self.conn(n);
        self.call(c, &[b"HELLO", b"3"]);
        c
    }

    fn send(&mut self, c: ClientId, args: &[&[u8]]) {
        self.now += Duration::from_millis(1);
        self.cl.input(c, &command_bytes(args), self.now);
    }

    /// Sends and returns everything `c` then has to read.
    fn call(&mut self, c: ClientId, args: &[&[u8]]) -> Vec<u8> {
        self.send(c, args);
        self.cl.take_output(c)
    }

    fn out(&mut self, c: ClientId) -> Vec<u8> {
        self.cl.take_output(c)
    }

    /// The address of node `n` as `-MOVED` spells it.
    fn addr(&self, n: usize) -> String {
        let (h, p) = self.cl.node(n).address();
        format!("{h}:{p}")
    }

    fn moved(&self, slot: u16, n: usize) -> Vec<u8> {
        format!("-MOVED {slot} {}\r\n", self.addr(n)).into_bytes()
    }

    /// `CLUSTER SHARDS` on node `n`, decoded, and the topology the core reads from it.
    fn topology(&mut self, n: usize, resp3: bool) -> (Value, Topology) {
        let c = if resp3 { self.conn3(n) } else { self.conn(n) };
        let raw = self.call(c, &[b"CLUSTER", b"SHARDS"]);
        let (v, used) = decode_one(&raw, resp3);
        assert_eq!(used, raw.len(), "one reply");
        let t = Topology::from_shards_reply(&v).expect("the core reads the model's reply");
        (v, t)
    }

    /// A name (with `prefix`) whose slot shard `s` owns, other than those in `not`.
    fn name_on(&self, s: usize, prefix: &str, not: &[u16]) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|n| {
                let slot = slot_of(n.as_bytes());
                self.cl.owner(slot) == Some(s) && !not.contains(&slot)
            })
            .expect("some name")
    }
}

/// `*3 $N kind $N channel :count` as RESP2 or RESP3 writes a pub/sub event.
fn event(resp3: bool, kind: &str, channel: &str, last: &str) -> Vec<u8> {
    let head = if resp3 { '>' } else { '*' };
    format!(
        "{head}3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n{last}\r\n",
        kind.len(),
        channel.len()
    )
    .into_bytes()
}

fn count(resp3: bool, kind: &str, channel: &str, n: i64) -> Vec<u8> {
    event(resp3, kind, channel, &format!(":{n}"))
}

fn smessage(resp3: bool, channel: &str, payload: &str) -> Vec<u8> {
    event(
        resp3,
        "smessage",
        channel,
        &format!("${}\r\n{payload}", payload.len()),
    )
}

fn message(channel: &str, payload: &str) -> Vec<u8> {
    event(
        false,
        "message",
        channel,
        &format!("${}\r\n{payload}", payload.len()),
    )
}

// ---------------------------------------------------------------- slots and layout

#[test]
fn slots_follow_redis_and_agree_with_the_core() {
    for (name, slot) in [
        (&b"{}abc"[..], 5980),
        (b"a{}{b}", 15033),
        (b"foo}{bar}", 5061),
        (b"foo", 12182),
        (b"{foo}bar", 12182),
        (b"", 0),
    ] {
        assert_eq!(slot_of(name), slot, "{}", text(name));
    }
    // The model's bitwise CRC and the core's table agree (the model is an independent check).
    for i in 0..20_000u32 {
        let name = format!("r{i:x}{{{}}}", i % 97);
        assert_eq!(slot_of(name.as_bytes()), key_slot(name.as_bytes()).get());
    }
    let mut r = Rig::standard();
    let c = r.conn(4);
    assert_eq!(
        r.call(c, &[b"CLUSTER", b"KEYSLOT", b"a{}{b}"]),
        b":15033\r\n"
    );
    let id = r.cl.node(4).id().to_string();
    assert_eq!(id.len(), 40);
    assert_eq!(
        r.call(c, &[b"CLUSTER", b"MYID"]),
        format!("$40\r\n{id}\r\n").into_bytes()
    );
}

#[test]
fn the_default_layout_is_what_redis_cli_creates() {
    let r = Rig::standard();
    assert_eq!(r.cl.nodes().len(), 6);
    assert_eq!(r.cl.shard_count(), 3);
    let ranges: Vec<_> = (0..3).map(|s| r.cl.slot_ranges(s)).collect();
    assert_eq!(
        ranges,
        vec![vec![(0, 5460)], vec![(5461, 10922)], vec![(10923, 16383)]]
    );
    for s in 0..3 {
        assert_eq!(r.cl.master_of(s), s);
        assert_eq!(r.cl.replicas_of(s), &[3 + s]);
        assert_eq!(r.cl.node(s).address(), ("127.0.0.1", 7000 + s as u16));
        assert_eq!(r.cl.node(3 + s).role(), NodeRole::Replica);
    }
}

#[test]
fn the_seed_url_names_the_masters_and_hello_reports_the_version() {
    let layout = ClusterLayout {
        version: "6.2.14".into(),
        ..ClusterLayout::default()
    };
    assert_eq!(
        layout.seed_url(),
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
    );
    let config = Config::from_url(&layout.seed_url()).expect("a cluster URL");
    let seeds: Vec<u16> = config
        .cluster
        .as_ref()
        .expect("cluster mode")
        .seeds
        .iter()
        .map(|s| s.port)
        .collect();
    assert_eq!(seeds, vec![7000, 7001, 7002]);
    let mut r = Rig::new(&layout);
    let c = r.conn(3);
    let hello = text(&r.call(c, &[b"HELLO"]));
    assert!(hello.contains("version\r\n$6\r\n6.2.14"), "{hello}");
    assert!(hello.contains("mode\r\n$7\r\ncluster"), "{hello}");
    assert!(hello.contains("role\r\n$7\r\nreplica"), "{hello}");
}

#[test]
fn hello_from_a_master_is_byte_for_byte_the_captured_one() {
    let mut r = Rig::standard();
    for (file, args, captured_id) in [
        ("hello_cluster_resp2.resp", &[&b"HELLO"[..]][..], 48),
        ("hello_cluster_resp3.resp", &[b"HELLO", b"3"], 49),
    ] {
        let c = r.conn(1);
        let id = r.cl.node(1).redis.server_id_of(c).expect("open");
        let want = text(&capture(file)).replace(
            &format!("id\r\n:{captured_id}\r\n"),
            &format!("id\r\n:{id}\r\n"),
        );
        assert_eq!(text(&r.call(c, args)), want, "{file}");
    }
}

#[test]
fn a_standalone_server_refuses_cluster_commands() {
    let mut m = ModelRedis::new(ModelConfig::default());
    let c = m.connect();
    m.input(c, &command_bytes(&[b"CLUSTER", b"SHARDS"]), Instant::now());
    assert_eq!(
        m.take_output(c),
        b"-ERR This instance has cluster support disabled\r\n"
    );
    // And routes nothing: every key is served.
    m.input(c, &command_bytes(&[b"SET", b"a", b"1"]), Instant::now());
    assert_eq!(m.take_output(c), b"+OK\r\n");
}

// ---------------------------------------------------------------- CLUSTER SHARDS

/// Blanks what differs between two clusters of the same shape (node ids, replication
/// offsets, ports) and puts the shards in a fixed order, keeping everything else: field
/// names and their order (RESP2), types, roles, health, slot ranges.
fn shape(v: &Value) -> Value {
    fn blank(v: &Value) -> Value {
        match v {
            Value::Array(items) => {
                // A flat field list (RESP2) or a node/shard list.
                let mut out = Vec::new();
                let mut i = 0;
                while i < items.len() {
                    let key = items[i].as_bytes();
                    if let (Some(b"id" | b"port" | b"replication-offset"), Some(_)) =
                        (key, items.get(i + 1))
                    {
                        out.push(items[i].clone());
                        out.push(Value::Nil);
                        i += 2;
                        continue;
                    }
                    out.push(blank(&items[i]));
                    i += 1;
                }
                Value::Array(out)
            }
            Value::Map(pairs) => Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| match k.as_bytes() {
                        Some(b"id" | b"port" | b"replication-offset") => (k.clone(), Value::Nil),
                        _ => (k.clone(), blank(v)),
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    let Value::Array(shards) = blank(v) else {
        panic!("CLUSTER SHARDS is an array: {v:?}")
    };
    let mut shards: Vec<(String, Value)> =
        shards.into_iter().map(|s| (format!("{s:?}"), s)).collect();
    shards.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Array(shards.into_iter().map(|(_, s)| s).collect())
}

/// The topology as (slot ranges, [(port, role, online)]) per shard, sorted.
type Summary = Vec<(Vec<(u16, u16)>, Vec<(u16, bool, bool)>)>;

fn summary(t: &Topology) -> Summary {
    let mut out: Summary = t
        .shards()
        .iter()
        .map(|s| {
            (
                s.ranges
                    .iter()
                    .map(|r| (r.start.get(), r.end.get()))
                    .collect(),
                s.nodes()
                    .map(|n| {
                        (
                            n.port.unwrap_or(0),
                            n.role == roomcast_core::cluster::Role::Master,
                            n.is_online(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The captured cluster's ports: masters 31001-31003, replicas 31004-31006.
fn captured_layout() -> ClusterLayout {
    ClusterLayout {
        first_port: 31001,
        ..ClusterLayout::default()
    }
}

#[test]
fn cluster_shards_has_the_shape_of_7_0_15_and_follows_every_change() {
    let mut r = Rig::new(&captured_layout());
    let source = r.cl.owner(100).expect("slot 100 is served");
    let target = 1;
    for (state, file) in [
        ("steady", "shards_steady"),
        ("moved", "shards_moved"),
        ("failover", "shards_failover"),
    ] {
        match state {
            // The captures' sequence: slot 100 moved from 31001 to 31002, then 31003 killed
            // and its replica promoted.
            "moved" => r.cl.migrate_slot(100, target),
            "failover" => {
                r.cl.hard_failover(2).expect("a replica to promote");
            }
            _ => {}
        }
        for resp3 in [false, true] {
            let proto = if resp3 { "resp3" } else { "resp2" };
            let want = decode_all(&capture(&format!("{file}_{proto}.resp")), resp3);
            assert_eq!(want.len(), 1);
            // Ask a node that is up in every state (a replica of the first shard).
            let (got, topology) = r.topology(3, resp3);
            assert_eq!(
                shape(&got),
                shape(&want[0]),
                "{state}/{proto}: the model's CLUSTER SHARDS has another shape than the capture"
            );
            let captured = Topology::from_shards_reply(&want[0]).expect("the capture parses");
            // Replica ports differ: redis-cli chose which replica follows which master (and
            // so which one a failover promotes). Masters 31001-31003 are the same.
            let masters_only = |s: Summary| -> Vec<_> {
                let mut v: Vec<_> = s
                    .into_iter()
                    .map(|(ranges, nodes)| {
                        let nodes: Vec<_> = nodes
                            .into_iter()
                            .filter(|n| n.1)
                            .map(|(port, m, up)| (if port <= 31003 { port } else { 0 }, m, up))
                            .collect();
                        (ranges, nodes)
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                masters_only(summary(&topology)),
                masters_only(summary(&captured)),
                "{state}/{proto}"
            );
        }
    }
    // What the core reads follows: slot 100 on 31002, the third shard's slots on the
    // promoted replica.
    let (_, t) = r.topology(0, false);
    let slot = |n| roomcast_core::cluster::Slot::new(n).expect("slot");
    assert_eq!(t.master_of(slot(100)).and_then(|n| n.port), Some(31002));
    assert_eq!(source, 0);
    let promoted = r.cl.master_of(2);
    assert_eq!(r.cl.node(promoted).address().1, 31006);
    assert_eq!(t.master_of(slot(16000)).and_then(|n| n.port), Some(31006));
    assert!(t.is_complete(), "every slot has an online master");
}

#[test]
fn cluster_shards_follows_a_manual_failover_and_a_deleted_slot() {
    let mut r = Rig::standard();
    let promoted = r.cl.manual_failover(1).expect("a replica");
    assert_eq!(promoted, 4);
    for resp3 in [false, true] {
        let (_, t) = r.topology(0, resp3);
        let s = t
            .shard_of(roomcast_core::cluster::Slot::new(6000).expect("slot"))
            .expect("owned");
        assert_eq!(s.master.as_ref().and_then(|n| n.port), Some(7004));
        let replicas: Vec<_> = s.replicas.iter().map(|n| n.port).collect();
        assert_eq!(
            replicas,
            vec![Some(7001)],
            "the old master follows the new one"
        );
        assert!(t.is_complete());
    }
    r.cl.unassign_slot(6000);
    let (_, t) = r.topology(2, false);
    assert_eq!(t.served_slots(), 16383);
    assert!(!t.is_complete());
    assert!(t
        .shard_of(roomcast_core::cluster::Slot::new(6000).expect("slot"))
        .is_none());
}

// ---------------------------------------------------------------- routing

#[test]
fn key_commands_are_served_by_the_owning_master_only() {
    let mut r = Rig::standard();
    let key = r.name_on(1, "k", &[]);
    let slot = slot_of(key.as_bytes());
    let k = key.as_bytes();
    let (c0, c1, c4) = (r.conn(0), r.conn(1), r.conn(4));
    // Another shard's master and the owner's replica redirect to the owner's master.
    for (c, what) in [(c0, "another master"), (c4, "the owner's replica")] {
        for cmd in [
            &[&b"GET"[..], k][..],
            &[b"SET", k, b"v"],
            &[b"HSET", k, b"f", b"v"],
            &[b"SADD", k, b"m"],
            &[b"DEL", k],
            &[b"EXPIRE", k, b"10"],
            &[b"EVALSHA", &[b'0'; 40], b"1", k],
        ] {
            assert_eq!(r.call(c, cmd), r.moved(slot, 1), "{what}: {cmd:?}");
        }
    }
    assert_eq!(r.cl.node(0).redis.moved_replies(), 7);
    assert_eq!(r.cl.node(4).redis.moved_replies(), 7);
    assert_eq!(r.call(c1, &[b"SET", k, b"v"]), b"+OK\r\n");
    assert_eq!(r.call(c1, &[b"GET", k]), b"$1\r\nv\r\n");
    // Keys of two slots: CROSSSLOT (on any node, even one owning both).
    let other = r.name_on(1, "k", &[slot]);
    let crossslot = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
    assert_eq!(
        r.call(c1, &[b"DEL", k, other.as_bytes()]),
        crossslot.to_vec()
    );
    assert_eq!(
        r.call(
            c1,
            &[b"EVALSHA", &[b'0'; 40], b"2", k, other.as_bytes(), b"arg"]
        ),
        crossslot.to_vec()
    );
    // Keys sharing a hash tag are one slot.
    let tag = format!("{{{key}}}");
    assert_eq!(
        r.call(c1, &[b"DEL", tag.as_bytes(), format!("{tag}:x").as_bytes()]),
        b":0\r\n"
    );
    // No keys: any node runs it (here: the script is not loaded there).
    assert!(r
        .call(c0, &[b"EVALSHA", &[b'0'; 40], b"0"])
        .starts_with(b"-NOSCRIPT"));
    assert_eq!(r.call(c4, &[b"PING"]), b"+PONG\r\n");
    // Cluster mode has database 0 only.
    assert_eq!(
        r.call(c0, &[b"SELECT", b"1"]),
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    assert_eq!(r.call(c0, &[b"SELECT", b"0"]), b"+OK\r\n");
}

/// A script that `GET`s every argument and returns the replies.
fn get_args(
    ks: &mut roomcast_sim::model::Keyspace,
    _keys: &[Vec<u8>],
    argv: &[Vec<u8>],
    _now: Instant,
) -> roomcast_sim::model::Reply {
    let mut out = Vec::new();
    for a in argv {
        let r = ks.call(&[b"GET", a]);
        if r.is_error() {
            return r;
        }
        out.push(r);
    }
    roomcast_sim::model::Reply::Array(out)
}

#[test]
fn scripts_touch_only_local_keys_of_one_slot() {
    const SRC: &str = "-- get every ARGV";
    let mut r = Rig::standard();
    for i in 0..6 {
        r.cl.node_mut(i).redis.register_script_impl(SRC, get_args);
    }
    let k = r.name_on(0, "sk", &[]);
    let tag = format!("{{{k}}}:other");
    let other_slot = r.name_on(0, "sk", &[slot_of(k.as_bytes())]);
    let elsewhere = r.name_on(1, "sk", &[]);
    let c = r.conn(0);
    let eval = |r: &mut Rig, keys: &[&str], args: &[&str]| {
        let n = keys.len().to_string();
        let mut argv: Vec<&[u8]> = vec![b"EVAL", SRC.as_bytes(), n.as_bytes()];
        argv.extend(keys.iter().map(|k| k.as_bytes()));
        argv.extend(args.iter().map(|a| a.as_bytes()));
        text(&r.call(c, &argv))
    };
    // Declared and touched keys of one slot: served.
    assert_eq!(eval(&mut r, &[&k], &[&k, &tag]), "*2\r\n$-1\r\n$-1\r\n");
    // An undeclared key of another slot of this node.
    assert_eq!(
        eval(&mut r, &[&k], &[&other_slot]),
        "-ERR Script attempted to access keys that do not hash to the same slot\r\n"
    );
    // No declared key: the first key touched sets the slot.
    assert_eq!(
        eval(&mut r, &[], &[&k, &other_slot]),
        "-ERR Script attempted to access keys that do not hash to the same slot\r\n"
    );
    // A key another node serves.
    assert_eq!(
        eval(&mut r, &[], &[&elsewhere]),
        "-ERR Script attempted to access a non local key in a cluster node script\r\n"
    );
    // A single server has no such rule.
    let mut m = ModelRedis::new(ModelConfig::default());
    m.register_script_impl(SRC, get_args);
    let c = m.connect();
    let cmd = command_bytes(&[
        b"EVAL",
        SRC.as_bytes(),
        b"0",
        k.as_bytes(),
        elsewhere.as_bytes(),
    ]);
    m.input(c, &cmd, Instant::now());
    assert_eq!(text(&m.take_output(c)), "*2\r\n$-1\r\n$-1\r\n");
}

#[test]
fn transactions_are_routed_per_command_and_checked_together_at_exec() {
    let mut r = Rig::standard();
    let a = r.name_on(0, "t", &[]);
    let b = r.name_on(0, "t", &[slot_of(a.as_bytes())]);
    let elsewhere = r.name_on(2, "t", &[]);
    let c = r.conn(0);
    // A command for another node aborts the transaction.
    assert_eq!(r.call(c, &[b"MULTI"]), b"+OK\r\n");
    assert_eq!(
        r.call(c, &[b"SET", elsewhere.as_bytes(), b"1"]),
        r.moved(slot_of(elsewhere.as_bytes()), 2)
    );
    assert_eq!(
        r.call(c, &[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
    // Two slots of this node: each is queued, EXEC refuses them together and discards.
    assert_eq!(r.call(c, &[b"MULTI"]), b"+OK\r\n");
    assert_eq!(r.call(c, &[b"SET", a.as_bytes(), b"1"]), b"+QUEUED\r\n");
    assert_eq!(r.call(c, &[b"SET", b.as_bytes(), b"1"]), b"+QUEUED\r\n");
    assert_eq!(
        r.call(c, &[b"EXEC"]),
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
    );
    assert_eq!(r.call(c, &[b"EXEC"]), b"-ERR EXEC without MULTI\r\n");
    assert_eq!(r.call(c, &[b"GET", a.as_bytes()]), b"$-1\r\n");
    // One slot: it runs.
    assert_eq!(r.call(c, &[b"MULTI"]), b"+OK\r\n");
    r.call(c, &[b"SET", a.as_bytes(), b"1"]);
    r.call(c, &[b"GET", a.as_bytes()]);
    assert_eq!(r.call(c, &[b"EXEC"]), b"*2\r\n+OK\r\n$1\r\n1\r\n");
}

#[test]
fn a_slot_without_owner_is_cluster_down() {
    let mut r = Rig::standard();
    let ch = r.name_on(2, "gone", &[]);
    let slot = slot_of(ch.as_bytes());
    let sub = r.conn(2);
    r.call(sub, &[b"SSUBSCRIBE", ch.as_bytes()]);
    r.cl.unassign_slot(slot);
    // DELSLOTS drops the channel like a migration does.
    assert_eq!(r.out(sub), count(false, "sunsubscribe", &ch, 0));
    let down = b"-CLUSTERDOWN Hash slot not served\r\n".to_vec();
    for n in 0..6 {
        let c = r.conn(n);
        assert_eq!(r.call(c, &[b"GET", ch.as_bytes()]), down, "node {n}");
        assert_eq!(
            r.call(c, &[b"SPUBLISH", ch.as_bytes(), b"x"]),
            down,
            "node {n}"
        );
        assert_eq!(r.call(c, &[b"SSUBSCRIBE", ch.as_bytes()]), down, "node {n}");
    }
    assert_eq!(
        r.cl.spublish(ch.as_bytes(), b"x"),
        Err(roomcast_sim::model::Reply::error(
            "-CLUSTERDOWN Hash slot not served"
        ))
    );
}

// ---------------------------------------------------------------- sharded pub/sub

#[test]
fn sharded_pubsub_lives_on_the_owning_shard() {
    let mut r = Rig::standard();
    let ch = r.name_on(0, "room:", &[]);
    let slot = slot_of(ch.as_bytes());
    let c = ch.as_bytes();
    let (m1, m2, rep) = (r.conn(0), r.conn3(0), r.conn(3));
    let other = r.conn(1);
    // The owner's master and its replica accept SSUBSCRIBE; another shard redirects.
    assert_eq!(
        r.call(m1, &[b"SSUBSCRIBE", c]),
        count(false, "ssubscribe", &ch, 1)
    );
    assert_eq!(
        r.call(m2, &[b"SSUBSCRIBE", c]),
        count(true, "ssubscribe", &ch, 1)
    );
    assert_eq!(
        r.call(rep, &[b"SSUBSCRIBE", c]),
        count(false, "ssubscribe", &ch, 1)
    );
    assert_eq!(r.call(other, &[b"SSUBSCRIBE", c]), r.moved(slot, 0));
    assert_eq!(r.call(other, &[b"SUNSUBSCRIBE", c]), r.moved(slot, 0));
    // Channels of two slots in one command: CROSSSLOT, for SUNSUBSCRIBE too.
    let ch2 = r.name_on(0, "room:", &[slot]);
    let crossslot = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec();
    assert_eq!(r.call(m1, &[b"SSUBSCRIBE", c, ch2.as_bytes()]), crossslot);
    assert_eq!(r.call(m1, &[b"SUNSUBSCRIBE", c, ch2.as_bytes()]), crossslot);
    // One tag, one slot: one command.
    let (ta, tb) = (format!("{{{ch}}}a"), format!("{{{ch}}}b"));
    let mut want = count(false, "ssubscribe", &ta, 2);
    want.extend(count(false, "ssubscribe", &tb, 3));
    assert_eq!(
        r.call(m1, &[b"SSUBSCRIBE", ta.as_bytes(), tb.as_bytes()]),
        want
    );
    // SPUBLISH on the master reaches the whole shard and counts the master's subscribers.
    let p = r.conn(0);
    assert_eq!(r.call(p, &[b"SPUBLISH", c, b"hi"]), b":2\r\n");
    assert_eq!(r.out(m1), smessage(false, &ch, "hi"));
    assert_eq!(r.out(m2), smessage(true, &ch, "hi"));
    assert_eq!(r.out(rep), smessage(false, &ch, "hi"));
    // On the replica: it delivers too, and counts its own subscriber only.
    let pr = r.conn(3);
    assert_eq!(r.call(pr, &[b"SPUBLISH", c, b"via replica"]), b":1\r\n");
    for s in [m1, rep] {
        assert_eq!(r.out(s), smessage(false, &ch, "via replica"));
    }
    assert_eq!(r.out(m2), smessage(true, &ch, "via replica"));
    // Another shard: MOVED, nobody hears it.
    assert_eq!(r.call(other, &[b"SPUBLISH", c, b"lost"]), r.moved(slot, 0));
    for s in [m1, m2, rep] {
        assert!(r.out(s).is_empty());
    }
    // SHARDNUMSUB counts the answering node's subscribers.
    assert_eq!(r.cl.shard_numsub(c), vec![(0, 2), (3, 1)]);
    let q = r.conn(3);
    let mut want = b"*2\r\n".to_vec();
    want.extend(format!("${}\r\n{ch}\r\n:1\r\n", ch.len()).as_bytes());
    assert_eq!(r.call(q, &[b"PUBSUB", b"SHARDNUMSUB", c]), want);
}

#[test]
fn classic_pubsub_is_broadcast_to_every_node() {
    let mut r = Rig::standard();
    let subs: Vec<ClientId> = (0..6).map(|n| r.conn(n)).collect();
    for &s in &subs {
        r.call(s, &[b"SUBSCRIBE", b"news"]);
    }
    let p = r.conn(4);
    // PUBLISH answers the local count; the bus carries it everywhere.
    assert_eq!(r.call(p, &[b"PUBLISH", b"news", b"x"]), b":1\r\n");
    for &s in &subs {
        assert_eq!(r.out(s), message("news", "x"));
    }
    assert_eq!(r.cl.publish(0, b"news", b"y"), 6);
    for &s in &subs {
        assert_eq!(r.out(s), message("news", "y"));
    }
}

#[test]
fn fanouts_are_numbered_in_execution_order_across_the_cluster() {
    let mut r = Rig::standard();
    r.cl.record_fanouts(true);
    let ch = r.name_on(1, "f", &[]);
    let (on_master, on_replica) = (r.conn(1), r.conn(4));
    r.call(on_master, &[b"SSUBSCRIBE", ch.as_bytes()]);
    r.call(on_replica, &[b"SSUBSCRIBE", ch.as_bytes()]);
    let p = r.conn(4);
    r.send(p, &[b"SPUBLISH", ch.as_bytes(), b"1"]);
    r.send(p, &[b"SPUBLISH", ch.as_bytes(), b"2"]);
    let f = r.cl.take_fanouts();
    let seen: Vec<(u64, Vec<u8>, Vec<usize>)> = f
        .iter()
        .map(|f| {
            (
                f.seq,
                f.payload.clone(),
                f.to.iter().filter_map(|(c, _)| r.cl.node_of(*c)).collect(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, b"1".to_vec(), vec![4]),
            (1, b"1".to_vec(), vec![1]),
            (2, b"2".to_vec(), vec![4]),
            (3, b"2".to_vec(), vec![1]),
        ]
    );
    // Connections of different nodes never share an id.
    assert_ne!(on_master, on_replica);
    assert_eq!(r.cl.node_of(on_master), Some(1));
    assert_eq!(r.cl.node_of(on_replica), Some(4));
}

// ---------------------------------------------------------------- topology changes

#[test]
fn a_migrated_slot_unsubscribes_old_owner_and_replica_as_captured() {
    // The scenario of the `cluster_facts` capture, on the model.
    let mut r = Rig::standard();
    let (a, b) = ("facts:{mig}:a", "facts:{mig}:b");
    let moved = slot_of(a.as_bytes());
    let source = r.cl.owner(moved).expect("served");
    let target = (source + 1) % 3;
    let stay = r.name_on(source, "facts:stay:", &[moved]);
    let replica = r.cl.replicas_of(source)[0];
    let two = r.conn(source);
    r.call(two, &[b"SSUBSCRIBE", a.as_bytes(), b.as_bytes()]);
    r.call(two, &[b"SSUBSCRIBE", stay.as_bytes()]);
    let only = r.conn(source);
    r.call(only, &[b"SSUBSCRIBE", a.as_bytes()]);
    let three = r.conn3(source);
    r.call(three, &[b"SSUBSCRIBE", a.as_bytes(), b.as_bytes()]);
    let on_replica = r.conn(replica);
    r.call(on_replica, &[b"SSUBSCRIBE", a.as_bytes()]);
    let admin = r.conn(source);
    r.call(admin, &[b"SET", b"facts:{mig}:key", b"v"]);

    r.cl.migrate_slot(moved, target);

    assert_eq!(r.out(two), capture("sunsubscribe_migration_resp2.resp"));
    assert_eq!(
        r.out(only),
        capture("sunsubscribe_migration_resp2_last.resp")
    );
    assert_eq!(r.out(three), capture("sunsubscribe_migration_resp3.resp"));
    assert_eq!(r.out(on_replica), count(false, "sunsubscribe", a, 0));
    // An own SUNSUBSCRIBE of a dropped channel: MOVED.
    assert_eq!(
        r.call(two, &[b"SUNSUBSCRIBE", a.as_bytes()]),
        r.moved(moved, target)
    );
    assert_eq!(
        r.call(three, &[b"SUNSUBSCRIBE", b.as_bytes()]),
        r.moved(moved, target)
    );
    // At 0 a RESP2 connection left subscribed mode; `two` still has `stay`.
    assert_eq!(r.call(only, &[b"PING"]), b"+PONG\r\n");
    assert_eq!(r.call(two, &[b"PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // The key moved with its slot; the old owner redirects.
    assert_eq!(
        r.call(only, &[b"GET", b"facts:{mig}:key"]),
        r.moved(moved, target)
    );
    let t = r.conn(target);
    assert_eq!(r.call(t, &[b"GET", b"facts:{mig}:key"]), b"$1\r\nv\r\n");
    // The new owner serves the channel, the old one redirects there.
    let again = r.conn(target);
    r.call(again, &[b"SSUBSCRIBE", a.as_bytes()]);
    assert_eq!(r.call(t, &[b"SPUBLISH", a.as_bytes(), b"after"]), b":1\r\n");
    assert_eq!(r.out(again), smessage(false, a, "after"));
    assert_eq!(
        r.call(admin, &[b"SPUBLISH", a.as_bytes(), b"x"]),
        r.moved(moved, target)
    );
    // `stay` is untouched.
    assert_eq!(
        r.call(admin, &[b"SPUBLISH", stay.as_bytes(), b"still"]),
        b":1\r\n"
    );
    assert_eq!(r.out(two), smessage(false, &stay, "still"));
}

#[test]
fn a_manual_failover_unsubscribes_all_but_the_promoted_replica_as_captured() {
    let mut r = Rig::new(&ClusterLayout {
        replicas: 2,
        ..ClusterLayout::default()
    });
    let (x, y) = ("facts:{fo-a}", "facts:{fo-e}");
    let shard = r.cl.owner_of(x.as_bytes()).expect("served");
    assert_eq!(r.cl.owner_of(y.as_bytes()), Some(shard));
    let master = r.cl.master_of(shard);
    let (promoted, other) = (r.cl.replicas_of(shard)[0], r.cl.replicas_of(shard)[1]);
    let on_master = r.conn(master);
    r.call(on_master, &[b"SSUBSCRIBE", x.as_bytes()]);
    r.call(on_master, &[b"SSUBSCRIBE", y.as_bytes()]);
    let on_master3 = r.conn3(master);
    r.call(on_master3, &[b"SSUBSCRIBE", x.as_bytes()]);
    r.call(on_master3, &[b"SSUBSCRIBE", y.as_bytes()]);
    let on_promoted = r.conn(promoted);
    r.call(on_promoted, &[b"SSUBSCRIBE", x.as_bytes()]);
    let on_other = r.conn(other);
    r.call(on_other, &[b"SSUBSCRIBE", y.as_bytes()]);
    let admin = r.conn(master);
    r.call(admin, &[b"SET", b"{fo-a}k", b"v"]);

    assert_eq!(r.cl.manual_failover(shard), Some(promoted));

    assert_eq!(
        r.out(on_master),
        capture("sunsubscribe_failover_resp2.resp")
    );
    assert_eq!(
        r.out(on_master3),
        capture("sunsubscribe_failover_resp3.resp")
    );
    assert_eq!(r.out(on_other), count(false, "sunsubscribe", y, 0));
    assert!(r.out(on_promoted).is_empty());
    assert_eq!(r.cl.node(promoted).role(), NodeRole::Master);
    assert_eq!(r.cl.node(master).role(), NodeRole::Replica);
    // The promoted replica kept its subscriber, and the keys.
    let p = r.conn(promoted);
    assert_eq!(
        r.call(p, &[b"SPUBLISH", x.as_bytes(), b"promoted"]),
        b":1\r\n"
    );
    assert_eq!(r.out(on_promoted), smessage(false, x, "promoted"));
    assert_eq!(r.call(p, &[b"GET", b"{fo-a}k"]), b"$1\r\nv\r\n");
    // The old master is a replica now: keys redirect, shard channels are still served.
    let slot = slot_of(b"{fo-a}k");
    assert_eq!(
        r.call(admin, &[b"GET", b"{fo-a}k"]),
        r.moved(slot, promoted)
    );
    assert_eq!(
        r.call(on_master, &[b"SSUBSCRIBE", x.as_bytes()]),
        count(false, "ssubscribe", x, 1)
    );
    let hello = r.call(admin, &[b"HELLO"]);
    assert!(
        text(&hello).contains("role\r\n$7\r\nreplica"),
        "{}",
        text(&hello)
    );
}

#[test]
fn a_hard_failover_closes_the_master_and_keeps_the_promoted_subscribers() {
    let mut r = Rig::standard();
    let ch = r.name_on(2, "hard", &[]);
    let c = ch.as_bytes();
    let on_master = r.conn(2);
    r.call(on_master, &[b"SSUBSCRIBE", c]);
    let on_replica = r.conn3(5);
    r.call(on_replica, &[b"SSUBSCRIBE", c]);
    let admin = r.conn(2);
    r.call(admin, &[b"SET", c, b"kept"]);

    assert_eq!(r.cl.hard_failover(2), Some(5));

    assert!(!r.cl.is_open(on_master) && !r.cl.is_open(admin));
    assert!(r.out(on_master).is_empty(), "closed without a word");
    assert_eq!(r.cl.connect("127.0.0.1", 7002), Err(Refused::Dead));
    assert_eq!(r.cl.connect("127.0.0.1", 7100), Err(Refused::NoNode));
    assert!(!r.cl.node(2).is_alive());
    let p = r.conn(5);
    assert_eq!(r.call(p, &[b"SPUBLISH", c, b"on"]), b":1\r\n");
    assert_eq!(r.out(on_replica), smessage(true, &ch, "on"));
    assert_eq!(r.call(p, &[b"GET", c]), b"$4\r\nkept\r\n");
    let elsewhere = r.conn(0);
    assert_eq!(
        r.call(elsewhere, &[b"GET", c]),
        r.moved(slot_of(c), 5),
        "MOVED names the promoted replica"
    );
    // No replica left: a second hard failover changes nothing.
    assert_eq!(r.cl.hard_failover(2), None);
    assert!(r.cl.node(5).is_alive());
}

#[test]
fn a_partitioned_node_holds_requests_and_messages_until_healed() {
    let mut r = Rig::standard();
    let ch = r.name_on(0, "part", &[]);
    let sub = r.conn(0);
    r.call(sub, &[b"SSUBSCRIBE", ch.as_bytes()]);
    r.cl.partition(0);
    assert!(!r.cl.node(0).is_reachable());
    assert_eq!(r.cl.connect("127.0.0.1", 7000), Err(Refused::Unreachable));
    // The shard still works from the replica; the partitioned subscriber hears nothing yet.
    let p = r.conn(3);
    assert_eq!(r.call(p, &[b"SPUBLISH", ch.as_bytes(), b"held"]), b":0\r\n");
    assert!(r.call(sub, &[b"PING"]).is_empty());
    r.cl.heal(0);
    let mut want = smessage(false, &ch, "held");
    want.extend(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(r.out(sub), want);
    r.conn(0);
}

#[test]
fn a_deaf_subscription_is_counted_but_hears_nothing() {
    let mut r = Rig::standard();
    let ch = r.name_on(1, "deaf", &[]);
    let c = ch.as_bytes();
    let deaf = r.conn(4);
    r.call(deaf, &[b"SSUBSCRIBE", c]);
    r.cl.deaf_replica(4);
    let later = r.conn(4);
    r.call(later, &[b"SSUBSCRIBE", c]);
    let p = r.conn(4);
    assert_eq!(
        r.call(p, &[b"SPUBLISH", c, b"x"]),
        b":2\r\n",
        "both counted"
    );
    assert!(
        r.out(deaf).is_empty(),
        "redis#12558: counted, not delivered"
    );
    assert_eq!(r.out(later), smessage(false, &ch, "x"));
    assert_eq!(r.cl.shard_numsub(c), vec![(4, 2)]);
    // Subscribing again (as a probe-driven reconnect would) cures it.
    r.call(deaf, &[b"SUNSUBSCRIBE", c]);
    r.call(deaf, &[b"SSUBSCRIBE", c]);
    r.call(p, &[b"SPUBLISH", c, b"y"]);
    assert_eq!(r.out(deaf), smessage(false, &ch, "y"));
}

#[test]
fn a_replica_moved_with_cluster_replicate_keeps_deaf_subscribers() {
    let mut r = Rig::standard();
    let ch = r.name_on(0, "moved-replica", &[]);
    let c = ch.as_bytes();
    let sub = r.conn(3);
    r.call(sub, &[b"SSUBSCRIBE", c]);
    assert!(r.cl.replicate(3, 1));
    assert!(!r.cl.replicate(3, 1), "already there");
    assert!(!r.cl.replicate(0, 1), "a master does not move");
    assert!(r.out(sub).is_empty(), "7.0.15 tells the subscriber nothing");
    let p = r.conn(0);
    assert_eq!(r.call(p, &[b"SPUBLISH", c, b"x"]), b":0\r\n");
    assert!(r.out(sub).is_empty(), "deaf");
    assert_eq!(r.cl.shard_numsub(c), vec![(3, 1)], "still counted");
    // A new subscription there is refused: the node serves another shard now.
    let again = r.conn(3);
    assert_eq!(r.call(again, &[b"SSUBSCRIBE", c]), r.moved(slot_of(c), 0));
    let (_, t) = r.topology(2, false);
    let shard = t
        .shard_of(roomcast_core::cluster::Slot::new(6000).expect("slot"))
        .expect("owned");
    let ports: Vec<_> = shard.replicas.iter().map(|n| n.port).collect();
    assert_eq!(ports, vec![Some(7004), Some(7003)]);
}

// ---------------------------------------------------------------- the harness and the oracle

/// Hubs in single-server mode, each pointed at a different node of a cluster whose nodes
/// say `mode standalone`: classic PUBLISH crosses the cluster bus. This runs the harness's
/// address routing, the cluster-wide fan-out numbering and the oracle over a cluster before
/// the hub routes by slot.
#[test]
fn single_server_hubs_over_the_cluster_bus_satisfy_the_oracle() {
    let layout = ClusterLayout {
        node: ModelConfig::default(),
        ..ClusterLayout::default()
    };
    let mut s = Sim::new_cluster(3, &layout, |i| {
        let mut c =
            Config::from_url(&format!("redis://127.0.0.1:{}", 7000 + 2 * i as u16)).expect("url");
        c.presence = false;
        c.pool_size = 1;
        c
    });
    s.seed(7);
    s.observe();
    let mut oracle = Oracle::new(&[false; 3]);
    for (n, room) in [(0, "a"), (1, "a"), (2, "a"), (1, "b"), (2, "b")] {
        s.join(n, room, &format!("m{n}")).expect("join");
        oracle.joined(&mut s, n, room, &format!("m{n}"));
    }
    s.settle();
    oracle.drain(&mut s);
    // Each hub's links are on its own node.
    for (n, node) in [(0, 0), (1, 2), (2, 4)] {
        let conns: Vec<_> = s.nodes[n].connections().collect();
        assert!(!conns.is_empty());
        for (_, c) in conns {
            assert_eq!(s.cluster().node_of(c), Some(node), "hub {n}");
        }
    }
    for i in 0..30 {
        let from = i % 3;
        let room = if i % 2 == 0 { "a" } else { "b" };
        let (msg, data) = oracle.next_message(32);
        let now = s.now;
        s.nodes[from]
            .hub
            .publish(&roomcast_core::Publish::broadcast(room, &data), now)
            .expect("accepted");
        oracle.published(&mut s, from, msg, room, &data, None);
        s.settle();
        oracle.drain(&mut s);
    }
    oracle.finish(&mut s);
    let st = oracle.stats();
    assert!(st.owed > 0);
    assert_eq!(st.delivered, st.owed, "{st:?}");
    // The invariant checker can fail: classic hubs subscribe no shard channel.
    let rooms: Vec<Option<BTreeSet<String>>> = (0..3)
        .map(|n| Some(oracle.members(n).iter().map(|(r, _)| r.clone()).collect()))
        .collect();
    let wrong = s.subscription_violations(&rooms);
    assert_eq!(wrong.len(), 5, "{wrong:#?}");
    assert!(
        wrong[0].contains("is subscribed on cluster nodes []"),
        "{}",
        wrong[0]
    );
}

#[test]
fn links_to_missing_or_failed_nodes_are_refused() {
    let layout = ClusterLayout::default();
    let mut s = Sim::new_cluster(1, &layout, |_| {
        let mut c = Config::from_url("redis://127.0.0.1:6999").expect("url");
        c.presence = false;
        c
    });
    s.join(0, "r", "m").expect("join");
    s.settle();
    assert!(s.nodes[0].connections().next().is_none(), "no node at 6999");
    let events = s.take_events_of(0);
    assert!(
        events.iter().any(|e| format!("{e:?}").contains("refused")),
        "{events:?}"
    );
}

// ---------------------------------------------------------------- random topology changes

mod random {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(usize, usize),
        Unsubscribe(usize, usize),
        Publish(usize, usize),
        Migrate(usize, usize),
        ManualFailover(usize),
        HardFailover(usize),
    }

    const CHANNELS: usize = 10;
    const SUBSCRIBERS: usize = 8;

    fn channel(i: usize) -> String {
        // Some channels share a slot through a tag.
        if i % 3 == 0 {
            format!("{{t{}}}c{i}", i % 2)
        } else {
            format!("c{i}")
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..SUBSCRIBERS, 0..CHANNELS).prop_map(|(s, c)| Op::Subscribe(s, c)),
            1 => (0..SUBSCRIBERS, 0..CHANNELS).prop_map(|(s, c)| Op::Unsubscribe(s, c)),
            5 => (0..9usize, 0..CHANNELS).prop_map(|(n, c)| Op::Publish(n, c)),
            2 => (0..CHANNELS, 0..3usize).prop_map(|(c, s)| Op::Migrate(c, s)),
            1 => (0..3usize).prop_map(Op::ManualFailover),
            1 => (0..3usize).prop_map(Op::HardFailover),
        ]
    }

    /// What a subscriber's frames say it is subscribed to.
    #[derive(Default)]
    struct Tracked {
        subs: BTreeSet<String>,
        got: Vec<(String, Vec<u8>)>,
    }

    fn read(r: &mut Rig, c: ClientId, resp3: bool, t: &mut Tracked) {
        let out = r.out(c);
        for v in decode_all(&out, resp3) {
            let Value::Array(items) = v else { continue };
            let [kind, ch, last] = &items[..] else {
                continue;
            };
            let (Some(kind), Some(ch)) = (kind.as_bytes(), ch.as_bytes()) else {
                continue;
            };
            let ch = text(ch);
            match kind {
                b"ssubscribe" => {
                    t.subs.insert(ch);
                }
                b"sunsubscribe" => {
                    t.subs.remove(&ch);
                }
                b"smessage" => t
                    .got
                    .push((ch, last.as_bytes().unwrap_or_default().to_vec())),
                _ => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Under any sequence of subscriptions, publishes, migrations and failovers: every
        /// SPUBLISH reaches exactly the subscribers (as their own frames tell) on the nodes
        /// of the owning shard, once; it is answered with the answering node's count or
        /// `-MOVED` to the owner; and no live node keeps a subscription of a slot its shard
        /// does not own.
        #[test]
        fn sharded_delivery_follows_the_topology(ops in prop::collection::vec(op(), 1..60)) {
            let mut r = Rig::standard();
            let subs: Vec<(ClientId, bool)> = (0..SUBSCRIBERS)
                .map(|i| {
                    let resp3 = i % 2 == 1;
                    (if resp3 { r.conn3(i % 6) } else { r.conn(i % 6) }, resp3)
                })
                .collect();
            let mut tracked: Vec<Tracked> = (0..SUBSCRIBERS).map(|_| Tracked::default()).collect();
            let mut publishers: BTreeMap<usize, ClientId> = BTreeMap::new();
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Subscribe(s, c) | Op::Unsubscribe(s, c) => {
                        let cmd: &[u8] = if matches!(op, Op::Subscribe(..)) {
                            b"SSUBSCRIBE"
                        } else {
                            b"SUNSUBSCRIBE"
                        };
                        r.send(subs[s].0, &[cmd, channel(c).as_bytes()]);
                    }
                    Op::Publish(node, c) => {
                        let node = node % 6;
                        if !r.cl.node(node).is_alive() {
                            continue;
                        }
                        let ch = channel(c);
                        let owner = r.cl.owner_of(ch.as_bytes()).expect("every slot served");
                        let serves = r.cl.node(node).shard() == owner;
                        let expected: Vec<usize> = (0..SUBSCRIBERS)
                            .filter(|&s| {
                                let at = r.cl.node_of(subs[s].0).expect("a node");
                                r.cl.is_open(subs[s].0)
                                    && r.cl.node(at).shard() == owner
                                    && tracked[s].subs.contains(&ch)
                            })
                            .collect();
                        let here = expected
                            .iter()
                            .filter(|&&s| r.cl.node_of(subs[s].0) == Some(node))
                            .count();
                        let p = match publishers.get(&node) {
                            Some(&p) if r.cl.is_open(p) => p,
                            _ => {
                                let p = r.conn(node);
                                publishers.insert(node, p);
                                p
                            }
                        };
                        n += 1;
                        let payload = n.to_string();
                        let reply = r.call(p, &[b"SPUBLISH", ch.as_bytes(), payload.as_bytes()]);
                        let slot = slot_of(ch.as_bytes());
                        let want = if serves {
                            format!(":{here}\r\n").into_bytes()
                        } else {
                            r.moved(slot, r.cl.master_of(owner))
                        };
                        prop_assert_eq!(text(&reply), text(&want));
                        for (s, t) in tracked.iter_mut().enumerate() {
                            read(&mut r, subs[s].0, subs[s].1, t);
                            let copies = t
                                .got
                                .iter()
                                .filter(|(c, p)| *c == ch && *p == payload.as_bytes())
                                .count();
                            let owed = serves && expected.contains(&s);
                            prop_assert_eq!(copies, usize::from(owed), "subscriber {}", s);
                            t.got.clear();
                        }
                    }
                    Op::Migrate(c, to) => {
                        r.cl.migrate_slot(slot_of(channel(c).as_bytes()), to);
                    }
                    Op::ManualFailover(s) => {
                        r.cl.manual_failover(s);
                    }
                    Op::HardFailover(s) => {
                        r.cl.hard_failover(s);
                    }
                }
                for (s, t) in tracked.iter_mut().enumerate() {
                    read(&mut r, subs[s].0, subs[s].1, t);
                    prop_assert!(t.got.is_empty());
                }
                // No live node keeps a channel of a slot its shard does not own.
                for (i, node) in r.cl.nodes().iter().enumerate() {
                    if !node.is_alive() {
                        continue;
                    }
                    for c in 0..CHANNELS {
                        let ch = channel(c);
                        let held = r.cl.shard_numsub(ch.as_bytes()).iter().any(|(at, _)| *at == i);
                        prop_assert!(
                            !held || r.cl.owner_of(ch.as_bytes()) == Some(node.shard()),
                            "node {} holds {} of another shard", i, ch
                        );
                    }
                }
            }
        }
    }
}
