//! Behaviour the transcripts cannot pin down (virtual time to the millisecond, stalls,
//! fault injection, limits, the script hook, the Redis 5 mode) and robustness: the
//! model never panics and always writes well-formed RESP.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{ClientId, Keyspace, Limits, ModelConfig, ModelRedis, Protocol, Reply, Value};

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    super::command_bytes(args)
}

/// A model plus a virtual clock.
struct Sim {
    m: ModelRedis,
    base: Instant,
    t: Duration,
}

impl Sim {
    fn new(cfg: ModelConfig) -> Self {
        Sim {
            m: ModelRedis::new(cfg),
            base: Instant::now(),
            t: Duration::ZERO,
        }
    }

    fn now(&self) -> Instant {
        self.base + self.t
    }

    fn sleep_ms(&mut self, ms: u64) {
        self.t += Duration::from_millis(ms);
        let now = self.now();
        self.m.advance(now);
    }

    fn send(&mut self, c: ClientId, args: &[&[u8]]) {
        let now = self.now();
        self.m.input(c, &cmd(args), now);
    }

    /// Sends and returns everything `c` received.
    fn call(&mut self, c: ClientId, args: &[&[u8]]) -> Vec<u8> {
        self.send(c, args);
        self.m.take_output(c)
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn expiry_is_judged_to_the_millisecond() {
    let mut sim = Sim::new(ModelConfig::default());
    let c = sim.m.connect();
    assert_eq!(
        sim.call(c, &[b"SET", b"k", b"v", b"PX", b"100"]),
        b"+OK\r\n"
    );
    sim.sleep_ms(100);
    // Redis: a key expires when now > deadline, so at the deadline it still exists.
    assert_eq!(sim.call(c, &[b"PTTL", b"k"]), b":0\r\n");
    assert_eq!(sim.call(c, &[b"GET", b"k"]), b"$1\r\nv\r\n");
    sim.sleep_ms(1);
    assert_eq!(sim.call(c, &[b"GET", b"k"]), b"$-1\r\n");
    assert_eq!(sim.call(c, &[b"PTTL", b"k"]), b":-2\r\n");
}

#[test]
fn ttl_rounds_like_redis() {
    let mut sim = Sim::new(ModelConfig::default());
    let c = sim.m.connect();
    sim.call(c, &[b"SET", b"a", b"v"]);
    sim.call(c, &[b"PEXPIRE", b"a", b"1499"]);
    assert_eq!(sim.call(c, &[b"TTL", b"a"]), b":1\r\n");
    assert_eq!(sim.call(c, &[b"PTTL", b"a"]), b":1499\r\n");
    sim.call(c, &[b"PEXPIRE", b"a", b"1500"]);
    assert_eq!(sim.call(c, &[b"TTL", b"a"]), b":2\r\n");
    assert_eq!(sim.m.keyspace(0).ttl_ms(b"a"), Some(1500));
}

#[test]
fn absolute_expiry_uses_the_virtual_unix_clock() {
    let mut sim = Sim::new(ModelConfig::default());
    let c = sim.m.connect();
    sim.send(c, &[b"PING"]);
    sim.m.take_output(c);
    let at = (sim.m.now_ms() + 5000).to_string();
    assert_eq!(
        sim.call(c, &[b"SET", b"k", b"v", b"PXAT", at.as_bytes()]),
        b"+OK\r\n"
    );
    assert_eq!(sim.call(c, &[b"PTTL", b"k"]), b":5000\r\n");
    assert_eq!(
        sim.call(c, &[b"SET", b"old", b"v", b"EXAT", b"1"]),
        b"+OK\r\n"
    );
    assert_eq!(sim.call(c, &[b"EXISTS", b"old"]), b":0\r\n");
}

#[test]
fn a_clock_going_backwards_is_ignored() {
    let mut sim = Sim::new(ModelConfig::default());
    let c = sim.m.connect();
    sim.sleep_ms(1000);
    sim.call(c, &[b"SET", b"k", b"v", b"PX", b"10"]);
    let earlier = sim.base;
    sim.m.input(c, &cmd(&[b"PTTL", b"k"]), earlier);
    assert_eq!(sim.m.take_output(c), b":10\r\n");
}

#[test]
fn stalled_connections_buffer_input_and_hold_output() {
    let mut sim = Sim::new(ModelConfig::default());
    let sub = sim.m.connect();
    let publ = sim.m.connect();
    sim.call(sub, &[b"SUBSCRIBE", b"ch"]);
    sim.m.set_stalled(sub, true);
    assert!(sim.m.is_stalled(sub));
    sim.send(sub, &[b"PING"]);
    assert_eq!(sim.m.buffered_input(sub), 14);
    // Still subscribed: the publish counts it, but nothing comes out while stalled.
    assert_eq!(sim.call(publ, &[b"PUBLISH", b"ch", b"x"]), b":1\r\n");
    assert!(sim.m.take_output(sub).is_empty());
    sim.m.set_stalled(sub, false);
    assert_eq!(
        s(&sim.m.take_output(sub)),
        "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
    );
}

#[test]
fn kill_quit_and_protocol_errors_close_differently() {
    let mut sim = Sim::new(ModelConfig::default());
    let a = sim.m.connect();
    let b = sim.m.connect();
    sim.call(a, &[b"SUBSCRIBE", b"ch"]);
    sim.m.publish(b"ch", b"unread");
    sim.m.kill(a);
    assert!(!sim.m.is_open(a));
    assert!(
        sim.m.take_output(a).is_empty(),
        "CLIENT KILL drops unsent output"
    );
    assert_eq!(sim.m.numsub(b"ch"), 0);
    assert!(sim.m.channels().is_empty());

    let now = sim.now();
    sim.m
        .input(b, b"*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n", now);
    assert!(!sim.m.is_open(b));
    assert_eq!(sim.m.take_output(b), b"+OK\r\n");
    assert!(sim.m.take_output(b).is_empty());
    sim.m.input(b, b"PING\r\n", now);
    assert!(sim.m.take_output(b).is_empty());
    assert!(sim.m.clients().is_empty());
}

#[test]
fn restart_forgets_keys_scripts_and_connections_but_not_script_impls() {
    fn two(_: &mut Keyspace, _: &[Vec<u8>], _: &[Vec<u8>], _: Instant) -> Reply {
        Reply::Integer(2)
    }
    let mut sim = Sim::new(ModelConfig::default());
    sim.m.register_script_impl("return 2", two);
    let a = sim.m.connect();
    let sha = super::sha1_hex(b"return 2");
    assert_eq!(
        sim.call(a, &[b"SCRIPT", b"LOAD", b"return 2"]),
        Reply::bulk(&sha).to_bytes(Protocol::Resp2)
    );
    assert_eq!(sim.call(a, &[b"EVALSHA", sha.as_bytes(), b"0"]), b":2\r\n");
    sim.call(a, &[b"SET", b"k", b"v"]);
    sim.m.restart();
    assert!(!sim.m.is_open(a));
    assert!(sim.m.loaded_scripts().is_empty());
    let b = sim.m.connect();
    assert_eq!(sim.m.server_id_of(b), Some(1));
    assert_eq!(
        sim.call(b, &[b"EVALSHA", sha.as_bytes(), b"0"]),
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
    );
    assert_eq!(sim.call(b, &[b"EVAL", b"return 2", b"0"]), b":2\r\n");
    assert_eq!(sim.call(b, &[b"GET", b"k"]), b"$-1\r\n");
}

#[test]
fn script_impls_see_keys_args_and_the_callers_database() {
    fn presence(ks: &mut Keyspace, keys: &[Vec<u8>], args: &[Vec<u8>], _: Instant) -> Reply {
        let r = ks.call(&[b"HSET", &keys[0], &args[0], &args[1]]);
        if r.is_error() {
            return r;
        }
        ks.call(&[b"HGETALL", &keys[0]])
    }
    let mut sim = Sim::new(ModelConfig::default());
    sim.m.register_script_impl("presence", presence);
    let c = sim.m.connect();
    sim.call(c, &[b"SELECT", b"3"]);
    sim.call(c, &[b"HELLO", b"3"]);
    // Lua sees HGETALL as a flat array even on a RESP3 connection.
    assert_eq!(
        s(&sim.call(c, &[b"EVAL", b"presence", b"1", b"room", b"conn", b"node"])),
        "*2\r\n$4\r\nconn\r\n$4\r\nnode\r\n"
    );
    assert!(sim.m.keyspace(0).is_empty());
    assert!(matches!(sim.m.keyspace(3).value(b"room"), Some(Value::Hash(h)) if h.len() == 1));
    assert!(s(&sim.call(c, &[b"EVAL", b"return 9", b"0"]))
        .starts_with("-ERR roomcast model Redis has no native implementation"));
    let ks = sim.m.keyspace_mut(3);
    assert!(ks.call(&[b"NOSUCH"]).is_error());
    assert!(ks.call(&[b"GET"]).is_error());
    assert!(ks.call(&[b"PUBLISH", b"a", b"b"]).is_error());
    assert_eq!(
        ks.call(&[b"get", b"room"]),
        Reply::error("-WRONGTYPE Operation against a key holding the wrong kind of value")
    );
}

#[test]
fn duplicated_subscribe_confirmations() {
    let mut sim = Sim::new(ModelConfig::default());
    let c = sim.m.connect();
    sim.m.duplicate_subscribe_confirmations(true);
    let one = "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n";
    assert_eq!(
        s(&sim.call(c, &[b"SUBSCRIBE", b"a"])),
        format!("{one}{one}")
    );
    sim.m.duplicate_subscribe_confirmations(false);
    assert_eq!(s(&sim.call(c, &[b"SUBSCRIBE", b"a"])), one);
}

#[test]
fn shuffled_unsubscribe_confirmations_keep_counts_consistent() {
    let names: Vec<String> = (0..8).map(|i| format!("ch{i}")).collect();
    let run = |seed: Option<u64>| {
        let mut sim = Sim::new(ModelConfig::default());
        let c = sim.m.connect();
        let args: Vec<&[u8]> = std::iter::once(&b"SUBSCRIBE"[..])
            .chain(names.iter().map(|n| n.as_bytes()))
            .collect();
        sim.call(c, &args);
        sim.m.shuffle_unsubscribe_confirmations(seed);
        let out = s(&sim.call(c, &[b"UNSUBSCRIBE"]));
        let mut order = Vec::new();
        for (i, frame) in out.split("*3\r\n").skip(1).enumerate() {
            let parts: Vec<&str> = frame.split("\r\n").collect();
            order.push(parts[3].to_string());
            assert_eq!(
                parts[4],
                format!(":{}", names.len() - 1 - i),
                "running count"
            );
        }
        order
    };
    assert_eq!(run(None), names);
    let shuffled = run(Some(7));
    assert_eq!(shuffled, run(Some(7)), "same seed, same order");
    assert_ne!(shuffled, names);
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, names);
}

#[test]
fn redis5_mode_has_no_hello() {
    let mut sim = Sim::new(ModelConfig {
        requirepass: Some("pw".into()),
        hello_supported: false,
        ..ModelConfig::default()
    });
    let c = sim.m.connect();
    assert_eq!(
        s(&sim.call(c, &[b"HELLO", b"3", b"AUTH", b"default", b"pw"])),
        "-ERR unknown command `HELLO`, with args beginning with: `3`, `AUTH`, `default`, `pw`, \r\n"
    );
    assert_eq!(sim.call(c, &[b"AUTH", b"pw"]), b"+OK\r\n");
    assert_eq!(sim.call(c, &[b"CLIENT", b"SETNAME", b"n"]), b"+OK\r\n");
    assert_eq!(sim.m.name_of(c).as_deref(), Some("n"));
    assert_eq!(sim.m.protocol_of(c), Some(Protocol::Resp2));
}

#[test]
fn acl_entries_named_default_add_a_password() {
    let mut sim = Sim::new(ModelConfig {
        users: vec![("default".into(), "d".into()), ("app".into(), "a".into())],
        ..ModelConfig::default()
    });
    let c = sim.m.connect();
    assert!(!sim.m.is_authenticated(c));
    assert_eq!(
        sim.call(c, &[b"PING"]),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(sim.call(c, &[b"AUTH", b"d"]), b"+OK\r\n");
    assert_eq!(sim.call(c, &[b"AUTH", b"app", b"a"]), b"+OK\r\n");
    assert!(sim.m.is_authenticated(c));
}

#[test]
fn query_buffer_limit_closes_without_reply() {
    let mut sim = Sim::new(ModelConfig::default());
    sim.m.set_limits(Limits {
        max_query_buffer: 1000,
        ..Limits::default()
    });
    let c = sim.m.connect();
    let now = sim.now();
    sim.m.input(c, b"*2\r\n$4\r\nECHO\r\n$2000\r\n", now);
    assert!(sim.m.is_open(c));
    sim.m.input(c, &[b'x'; 1001], now);
    assert!(!sim.m.is_open(c));
    assert!(sim.m.take_output(c).is_empty());
    // Many complete commands in one input are fine: only what stays buffered counts.
    let d = sim.m.connect();
    sim.m.input(d, &b"PING\r\n".repeat(1000), now);
    assert!(sim.m.is_open(d));
    assert_eq!(sim.m.take_output(d).len(), 7000);
}

#[test]
fn pubsub_output_limits_close_slow_subscribers() {
    let mut sim = Sim::new(ModelConfig::default());
    sim.m.set_limits(Limits {
        pubsub_hard: 10_000,
        pubsub_soft: 1_000,
        pubsub_soft_seconds: 2,
        ..Limits::default()
    });
    let hard = sim.m.connect();
    let soft = sim.m.connect();
    sim.call(hard, &[b"SUBSCRIBE", b"big"]);
    sim.call(soft, &[b"SUBSCRIBE", b"small"]);
    let payload = vec![b'p'; 600];
    assert_eq!(sim.m.publish(b"big", &payload), 1);
    assert!(sim.m.is_open(hard));
    for _ in 0..20 {
        sim.m.publish(b"big", &payload);
    }
    assert!(!sim.m.is_open(hard), "hard limit");
    assert!(sim.m.take_output(hard).is_empty());

    sim.m.publish(b"small", &payload);
    sim.m.publish(b"small", &payload); // over the soft limit from now on
    sim.sleep_ms(2000);
    sim.m.publish(b"small", b"x");
    assert!(
        sim.m.is_open(soft),
        "soft limit not exceeded for more than 2 s yet"
    );
    sim.sleep_ms(1000);
    sim.m.publish(b"small", b"x");
    assert!(!sim.m.is_open(soft), "soft limit");
}

#[test]
fn inspection_helpers() {
    let mut sim = Sim::new(ModelConfig::default());
    let a = sim.m.connect();
    let b = sim.m.connect();
    sim.call(a, &[b"SUBSCRIBE", b"y", b"x"]);
    sim.call(b, &[b"HELLO", b"3", b"SETNAME", b"bee"]);
    sim.call(b, &[b"SSUBSCRIBE", b"s"]);
    assert_eq!(
        sim.m.subscriptions_of(a),
        vec![b"y".to_vec(), b"x".to_vec()]
    );
    assert_eq!(sim.m.shard_subscriptions_of(b), vec![b"s".to_vec()]);
    assert_eq!(sim.m.channels(), vec![b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(sim.m.numsub(b"x"), 1);
    assert_eq!(sim.m.clients(), vec![a, b]);
    assert_eq!(sim.m.name_of(b).as_deref(), Some("bee"));
    assert_eq!(sim.m.protocol_of(b), Some(Protocol::Resp3));
    assert_eq!(sim.m.publish(b"x", b"m"), 1);
}

#[test]
fn commands_left_out_are_unknown_as_redis_words_it() {
    let mut sim = Sim::new(ModelConfig::default());
    let c = sim.m.connect();
    assert_eq!(
        s(&sim.call(c, &[b"INCR", b"k"])),
        "-ERR unknown command 'INCR', with args beginning with: 'k' \r\n"
    );
    assert_eq!(
        s(&sim.call(c, &[b"CLIENT", b"LIST"])),
        "-ERR unknown subcommand 'LIST'. Try CLIENT HELP.\r\n"
    );
    // What the model implements still gets Redis's arity check.
    assert_eq!(
        s(&sim.call(c, &[b"GET"])),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
}

// ---------------------------------------------------------------- robustness

/// Splits `out` into frames with redis-protocol's decoders (RESP3 first, RESP2 for
/// `$-1`/`*-1`), failing on anything malformed or incomplete. The range decoders are
/// used because the owned ones insist on UTF-8 in simple strings and errors, which
/// Redis does not promise (an unknown command's name is echoed as sent).
fn assert_well_formed(mut out: &[u8]) {
    while !out.is_empty() {
        let n = match redis_protocol::resp3::decode::complete::decode_range(out) {
            Ok(Some((_, n))) => n,
            _ => match redis_protocol::resp2::decode::decode_range(out) {
                Ok(Some((_, n))) => n,
                other => panic!(
                    "malformed output {other:?}: {:?}",
                    s(&out[..out.len().min(200)])
                ),
            },
        };
        out = &out[n..];
    }
}

fn arb_arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            &b"a"[..],
            b"b",
            b"ch",
            b"k",
            b"h",
            b"s",
            b"*",
            b"1",
            b"2",
            b"3",
            b"0",
            b"-1",
            b"NX",
            b"XX",
            b"EX",
            b"PX",
            b"GET",
            b"KEEPTTL",
            b"GT",
            b"LT",
            b"AUTH",
            b"SETNAME",
            b"default",
            b"pw",
            b"n",
            b"",
            b"SYNC",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn arb_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let names = prop::sample::select(vec![
        &b"PING"[..],
        b"ECHO",
        b"SET",
        b"GET",
        b"DEL",
        b"EXISTS",
        b"EXPIRE",
        b"PEXPIRE",
        b"TTL",
        b"PTTL",
        b"PERSIST",
        b"TYPE",
        b"KEYS",
        b"HSET",
        b"HGET",
        b"HDEL",
        b"HGETALL",
        b"HLEN",
        b"SADD",
        b"SREM",
        b"SMEMBERS",
        b"SCARD",
        b"SISMEMBER",
        b"SUBSCRIBE",
        b"UNSUBSCRIBE",
        b"SSUBSCRIBE",
        b"SUNSUBSCRIBE",
        b"PUBLISH",
        b"SPUBLISH",
        b"HELLO",
        b"AUTH",
        b"SELECT",
        b"RESET",
        b"QUIT",
        b"CLIENT",
        b"PUBSUB",
        b"SCRIPT",
        b"EVAL",
        b"EVALSHA",
        b"FLUSHALL",
        b"DBSIZE",
        b"NOSUCH",
    ]);
    (names, prop::collection::vec(arb_arg(), 0..5)).prop_map(|(n, mut rest)| {
        rest.insert(0, n.to_vec());
        rest
    })
}

#[derive(Debug, Clone)]
enum Op {
    Command(usize, Vec<Vec<u8>>),
    Raw(usize, Vec<u8>),
    Kill(usize),
    Stall(usize, bool),
    Sleep(u16),
    Restart,
    Faults(bool, Option<u64>),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, arb_command()).prop_map(|(c, a)| Op::Command(c, a)),
        2 => (0..3usize, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(c, b)| Op::Raw(c, b)),
        1 => (0..3usize).prop_map(Op::Kill),
        1 => (0..3usize, any::<bool>()).prop_map(|(c, s)| Op::Stall(c, s)),
        1 => any::<u16>().prop_map(Op::Sleep),
        1 => Just(Op::Restart),
        1 => (any::<bool>(), any::<Option<u64>>()).prop_map(|(d, s)| Op::Faults(d, s)),
    ]
}

/// Internal consistency: the server-side subscriber registry equals the union of the
/// connections' own subscription lists.
fn check_registry(m: &ModelRedis) {
    let mut from_clients: Vec<(Vec<u8>, ClientId)> = Vec::new();
    for c in m.clients() {
        for ch in m.subscriptions_of(c) {
            from_clients.push((ch, c));
        }
    }
    from_clients.sort();
    let mut from_registry: Vec<(Vec<u8>, ClientId)> = m
        .channels
        .iter()
        .flat_map(|(ch, cs)| cs.iter().map(move |c| (ch.clone(), *c)))
        .collect();
    from_registry.sort();
    assert_eq!(from_clients, from_registry);
    for set in m.channels.values().chain(m.shard_channels.values()) {
        assert!(!set.is_empty(), "no empty registry entries");
        assert!(
            set.iter().all(|c| m.is_open(*c)),
            "only open connections subscribed"
        );
    }
}

proptest! {
    // No regression files: they would land outside this module's directory.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_always_writes_resp(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut sim = Sim::new(ModelConfig { requirepass: None, users: vec![("u".into(), "pw".into())], hello_supported: true, cluster_mode: false });
        let mut ids: Vec<ClientId> = (0..3).map(|_| sim.m.connect()).collect();
        for op in ops {
            match op {
                Op::Command(c, args) => {
                    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    sim.send(ids[c], &refs);
                }
                Op::Raw(c, bytes) => {
                    let now = sim.now();
                    sim.m.input(ids[c], &bytes, now);
                }
                Op::Kill(c) => sim.m.kill(ids[c]),
                Op::Stall(c, on) => sim.m.set_stalled(ids[c], on),
                Op::Sleep(ms) => sim.sleep_ms(u64::from(ms)),
                Op::Restart => sim.m.restart(),
                Op::Faults(dup, seed) => {
                    sim.m.duplicate_subscribe_confirmations(dup);
                    sim.m.shuffle_unsubscribe_confirmations(seed);
                }
            }
            for id in ids.iter_mut() {
                assert_well_formed(&sim.m.take_output(*id));
                if !sim.m.is_open(*id) && sim.m.take_output(*id).is_empty() {
                    *id = sim.m.connect();
                }
            }
            check_registry(&sim.m);
        }
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_output(
        ops in prop::collection::vec(arb_command(), 1..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut input = Vec::new();
        for args in &ops {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            input.extend_from_slice(&cmd(&refs));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort();
        let run = |pieces: Vec<&[u8]>| {
            let mut sim = Sim::new(ModelConfig::default());
            let c = sim.m.connect();
            let now = sim.now();
            let mut out = Vec::new();
            for p in pieces {
                sim.m.input(c, p, now);
                out.extend(sim.m.take_output(c));
            }
            (out, sim.m.is_open(c))
        };
        let whole = run(vec![&input]);
        let mut pieces = Vec::new();
        let mut last = 0;
        for p in points {
            pieces.push(&input[last..p]);
            last = p;
        }
        pieces.push(&input[last..]);
        prop_assert_eq!(whole, run(pieces));
    }
}

#[test]
fn hostile_inputs_do_not_panic_or_grow_unbounded() {
    let mut sim = Sim::new(ModelConfig::default());
    let now = sim.now();
    let inputs: Vec<Vec<u8>> = vec![
        b"*9223372036854775807\r\n".to_vec(),
        b"*1\r\n$9223372036854775807\r\n".to_vec(),
        b"*2147483647\r\n"
            .iter()
            .chain(b"$1\r\nx\r\n".repeat(10_000).iter())
            .copied()
            .collect(),
        vec![b'*'; 200_000],
        vec![0u8; 100_000],
        b"\"".repeat(70_000),
        b"*-9223372036854775808\r\n".to_vec(),
        b"*1\r\n$-9223372036854775808\r\n".to_vec(),
    ];
    for inp in inputs {
        let c = sim.m.connect();
        sim.m.input(c, &inp, now);
        assert_well_formed(&sim.m.take_output(c));
        assert!(sim.m.buffered_input(c) <= Limits::default().max_query_buffer);
    }
}
