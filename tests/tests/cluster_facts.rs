//! The Redis Cluster facts roomcast's cluster mode relies on, checked with raw RESP clients
//! on a real local cluster (three masters, three replicas) of the installed redis-server;
//! and that roomcast refuses a `redis://` URL of a cluster node.
//!
//! One cluster serves the whole binary and the scenarios run one after the other in a single
//! test: forming a cluster takes seconds, and the later scenarios change its topology (a slot
//! moves, a shard fails over, a master dies), so they come last.
//!
//! The unsolicited `sunsubscribe` pushes are compared byte for byte with the transcripts in
//! `core/tests/data/cluster/` (the model cluster of the simulation is checked against the
//! same files). Channel names are fixed, so the bytes do not depend on which node owns what.
//! Run with `ROOMCAST_WRITE_CAPTURES=1` to write the files instead.

use std::path::PathBuf;
use std::time::Duration;

use roomcast::{Builder, Config, Error};
use roomcast_core::cluster::{check_server_mode, key_slot, ClusterError, Redirect, Slot, Topology};
use roomcast_core::LinkError;
use roomcast_tests::redis_cluster::to_value;
use roomcast_tests::{Failover, Promotion, RedisCluster, RespClient, RespReply};

const WAIT: Duration = Duration::from_secs(20);

fn bulk(s: &str) -> RespReply {
    RespReply::Bulk(Some(s.as_bytes().to_vec()))
}

fn slot(name: &str) -> Slot {
    key_slot(name.as_bytes())
}

/// `[kind, channel, n]` as RESP2 sends it (an array) or RESP3 (a push).
fn pubsub(resp3: bool, kind: &str, channel: &str, n: RespReply) -> RespReply {
    let items = vec![bulk(kind), bulk(channel), n];
    if resp3 {
        RespReply::Push(items)
    } else {
        RespReply::Array(Some(items))
    }
}

fn smessage(resp3: bool, channel: &str, payload: &str) -> RespReply {
    pubsub(resp3, "smessage", channel, bulk(payload))
}

/// A subscriber connection to one node, RESP2 or RESP3.
struct Sub {
    client: RespClient,
    resp3: bool,
    port: u16,
}

impl Sub {
    fn new(cluster: &RedisCluster, port: u16, resp3: bool) -> Sub {
        let mut client = cluster.client(port);
        if resp3 {
            let hello = client.cmd(&["HELLO", "3"]);
            assert!(matches!(hello, RespReply::Map(_)), "HELLO 3: {hello:?}");
        }
        Sub {
            client,
            resp3,
            port,
        }
    }

    /// SSUBSCRIBE one slot's channels; checks every confirmation, counting from `before`.
    fn ssubscribe(&mut self, channels: &[&str], before: i64) {
        let mut args = vec!["SSUBSCRIBE"];
        args.extend(channels);
        self.client.send(&args).expect("send SSUBSCRIBE");
        for (i, ch) in channels.iter().enumerate() {
            let want = pubsub(
                self.resp3,
                "ssubscribe",
                ch,
                RespReply::Int(before + 1 + i as i64),
            );
            assert_eq!(self.read(), want, "on {}", self.port);
        }
    }

    fn read(&mut self) -> RespReply {
        self.read_raw().0
    }

    fn read_raw(&mut self) -> (RespReply, Vec<u8>) {
        match self.client.read_raw_within(WAIT) {
            Ok(Some(r)) => r,
            Ok(None) => panic!("nothing arrived on {} within {WAIT:?}", self.port),
            Err(e) => panic!("reading from {}: {e}", self.port),
        }
    }

    /// Reads unsolicited `sunsubscribe`s for `expected` (channel, subscriptions left), in
    /// that order, and checks their bytes against the transcript `name`.
    fn expect_sunsubscribes(&mut self, expected: &[(&str, i64)], name: &str) {
        let mut raw = Vec::new();
        for &(channel, left) in expected {
            let (reply, bytes) = self.read_raw();
            let want = pubsub(self.resp3, "sunsubscribe", channel, RespReply::Int(left));
            assert_eq!(reply, want, "on {}", self.port);
            raw.extend(bytes);
        }
        transcript(name, &raw);
    }

    /// Proves that nothing arrived before this point: PING, and the next frame must be its
    /// answer (`[pong, ""]` in RESP2 subscribed mode, `+PONG` otherwise).
    fn marker(&mut self, subscribed: bool) {
        self.client.send(&["PING"]).expect("send PING");
        let want = if subscribed && !self.resp3 {
            RespReply::Array(Some(vec![bulk("pong"), bulk("")]))
        } else {
            RespReply::Simple("PONG".into())
        };
        assert_eq!(
            self.read(),
            want,
            "on {}: something arrived before the marker",
            self.port
        );
    }
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/cluster")
}

/// Compares observed bytes with the committed transcript `name` (or writes it).
fn transcript(name: &str, observed: &[u8]) {
    let path = data_dir().join(name);
    if std::env::var_os("ROOMCAST_WRITE_CAPTURES").is_some() {
        std::fs::write(&path, observed).expect("write capture");
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        String::from_utf8_lossy(observed),
        String::from_utf8_lossy(&want),
        "the server's bytes differ from {}",
        path.display()
    );
}

/// A small deterministic generator (xorshift64*), for names.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `CLUSTER KEYSLOT` agrees with `key_slot` on the documented edge cases and on many random
/// names, half of them with braces, some not UTF-8.
fn keyslot_matches(cluster: &mut RedisCluster) {
    let port = cluster.masters()[0];
    let mut names: Vec<Vec<u8>> = ["{}abc", "a{}{b}", "foo}{bar}", "{", "}", "{}", "", "{a}"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"ab{}:/%x{}\xff\x00 ";
    for _ in 0..3000 {
        let len = (rng.next() % 12) as usize;
        let name = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        names.push(name);
    }
    let mut c = cluster.client(port);
    for name in &names {
        c.send_raw(&[b"CLUSTER", b"KEYSLOT", name]).expect("send");
    }
    for name in &names {
        let got = c.read_reply();
        assert_eq!(
            got,
            RespReply::Int(i64::from(key_slot(name).get())),
            "CLUSTER KEYSLOT {:?}",
            String::from_utf8_lossy(name)
        );
    }
}

/// `CLUSTER SHARDS` in RESP2 (pairs) and RESP3 (maps) reads as the same topology on every
/// node: three shards serving all slots, each with one online replica.
fn shards_read_alike_everywhere(cluster: &mut RedisCluster) {
    let want = cluster.topology();
    assert!(want.is_complete());
    assert_eq!(want.shards().len(), 3);
    for shard in want.shards() {
        assert_eq!(shard.replicas.len(), 1, "{shard:?}");
        assert!(shard.nodes().all(|n| n.is_online() && n.port.is_some()));
    }
    for port in cluster.ports() {
        for resp3 in [false, true] {
            let mut c = Sub::new(cluster, port, resp3).client;
            let reply = c.cmd(&["CLUSTER", "SHARDS"]);
            assert_eq!(
                matches!(reply.as_array(), Some([RespReply::Map(_), ..])),
                resp3,
                "shape of the reply on {port}"
            );
            let t = Topology::from_shards_reply(&to_value(&reply))
                .unwrap_or_else(|e| panic!("{port}: {e}"));
            // Offsets move with the replicas' pings; the rest is the same everywhere.
            let layout = |t: &Topology| {
                let mut v: Vec<_> = t
                    .shards()
                    .iter()
                    .map(|s| {
                        (
                            s.ranges.clone(),
                            s.nodes()
                                .map(|n| (n.id.clone(), n.port, n.role))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(layout(&t), layout(&want), "on {port}");
        }
    }
}

/// `HELLO` (RESP2 and RESP3) says `mode cluster`: accepted for `redis+cluster://`, refused
/// for `redis://` with a message naming `redis+cluster://`.
fn hello_says_cluster(cluster: &mut RedisCluster) {
    let port = cluster.masters()[0];
    let addr = format!("127.0.0.1:{port}");
    for resp3 in [false, true] {
        let mut c = cluster.client(port);
        let reply = if resp3 {
            c.cmd(&["HELLO", "3"])
        } else {
            c.cmd(&["HELLO"])
        };
        let reply = to_value(&reply);
        let hello = check_server_mode(&reply, true, &addr)
            .unwrap_or_else(|e| panic!("{e}"))
            .expect("HELLO answered");
        assert!(hello.version >= (7, 0, 0), "{hello:?}");
        let refused = check_server_mode(&reply, false, &addr).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains(&format!("write redis+cluster://{addr}")),
            "{refused}"
        );
    }
}

/// roomcast itself, given a `redis://` URL of a cluster node, refuses to connect (in RESP2,
/// where it asks `HELLO 2` for the mode, and in RESP3, where `HELLO 3` says it) with an error
/// naming the `redis+cluster://` URL to write.
fn roomcast_refuses_a_single_server_url_on_a_cluster_node(cluster: &mut RedisCluster) {
    let port = cluster.masters()[0];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for protocol in ["resp2", "resp3"] {
        let url = format!("redis://127.0.0.1:{port}?protocol={protocol}");
        let mut config = Config::from_url(&url).expect("url");
        config.pool_size = 1;
        let refused = rt
            .block_on(async {
                tokio::time::timeout(WAIT, Builder::new(config).connect_tokio()).await
            })
            .expect("refused in time")
            .expect_err("a cluster node is not one server");
        let Error::Connect(LinkError::WrongMode(text)) = &refused else {
            panic!("{protocol}: expected WrongMode, got {refused:?}");
        };
        assert!(
            text.contains(&format!("redis+cluster://127.0.0.1:{port}")),
            "{protocol}: {text}"
        );
    }
}

/// One scenario of the test, run on the shared cluster.
type Scenario = fn(&mut RedisCluster);

/// The shard serving a channel, with one subscriber of the channel on its master and one on
/// its replica.
struct ShardSubs {
    master: u16,
    replica: u16,
    on_master: Sub,
    on_replica: Sub,
}

impl ShardSubs {
    /// Subscribes `channel` on its master and on the master's replica (RESP3 where asked).
    fn new(cluster: &mut RedisCluster, channel: &str, resp3: [bool; 2]) -> ShardSubs {
        let master = cluster.master_port_of(slot(channel));
        let replica = cluster.replicas_of(master)[0];
        let mut on_master = Sub::new(cluster, master, resp3[0]);
        on_master.ssubscribe(&[channel], 0);
        let mut on_replica = Sub::new(cluster, replica, resp3[1]);
        on_replica.ssubscribe(&[channel], 0);
        ShardSubs {
            master,
            replica,
            on_master,
            on_replica,
        }
    }
}

#[test]
fn cluster_facts() {
    let started = std::time::Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("cluster formed in {:?}", started.elapsed());
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    for &m in &masters {
        assert_eq!(cluster.replicas_of(m).len(), 1, "one replica of {m}");
    }
    let scenarios: [(&str, Scenario); 11] = [
        ("keyslot", keyslot_matches),
        ("shards", shards_read_alike_everywhere),
        ("hello", hello_says_cluster),
        (
            "roomcast refuses redis://",
            roomcast_refuses_a_single_server_url_on_a_cluster_node,
        ),
        ("sharded pub/sub", sharded_pubsub_stays_in_its_shard),
        ("moved", wrong_node_answers_moved),
        ("crossslot", channels_of_two_slots_are_crossslot),
        ("migration", migration_unsubscribes_old_owner_and_replica),
        (
            "manual failover",
            manual_failover_unsubscribes_every_channel,
        ),
        (
            "forced failovers",
            forced_failovers_unsubscribe_the_old_master,
        ),
        ("killed masters", killed_master_closes_its_links),
    ];
    for (name, scenario) in scenarios {
        let at = std::time::Instant::now();
        scenario(&mut cluster);
        eprintln!("{name}: {:?}", at.elapsed());
    }
}

/// SSUBSCRIBE/SPUBLISH on every shard: a message reaches the subscribers on the owner and on
/// its replica (in RESP2 and RESP3), and SPUBLISH counts only the answering node's own
/// subscribers.
fn sharded_pubsub_stays_in_its_shard(cluster: &mut RedisCluster) {
    for (i, master) in cluster.masters().into_iter().enumerate() {
        let replica = cluster.replicas_of(master)[0];
        // A channel this master serves.
        let channel = (0..)
            .map(|n| format!("facts:shard{i}:{n}"))
            .find(|c| cluster.master_port_of(slot(c)) == master)
            .expect("some name hashes to every shard");
        let mut on_master = Sub::new(cluster, master, false);
        let mut on_master3 = Sub::new(cluster, master, true);
        let mut on_replica = Sub::new(cluster, replica, false);
        on_master.ssubscribe(&[&channel], 0);
        on_master3.ssubscribe(&[&channel], 0);
        // A replica of the owning shard accepts SSUBSCRIBE without READONLY.
        on_replica.ssubscribe(&[&channel], 0);

        // Two subscribers on the master; the replica's is not counted. Each message is
        // awaited everywhere before the next is sent: the two publishing nodes reach each
        // other's subscribers over the cluster bus, so two messages published on two nodes
        // have no order between them.
        for (node, payload, counted) in [(master, "one", 2), (replica, "two", 1)] {
            // SPUBLISH on the replica counts the replica's own subscriber only, and is
            // forwarded in the shard.
            assert_eq!(
                cluster.cmd(node, &["SPUBLISH", &channel, payload]),
                RespReply::Int(counted),
                "SPUBLISH on {node}"
            );
            for sub in [&mut on_master, &mut on_master3, &mut on_replica] {
                assert_eq!(sub.read(), smessage(sub.resp3, &channel, payload));
            }
        }
        for sub in [&mut on_master, &mut on_master3, &mut on_replica] {
            sub.marker(true);
        }
        // Shard subscriptions are counted apart from classic ones.
        on_master
            .client
            .send(&["SUBSCRIBE", "facts:classic"])
            .expect("send");
        assert_eq!(
            on_master.read(),
            pubsub(false, "subscribe", "facts:classic", RespReply::Int(1))
        );
    }
}

/// The wrong node answers `-MOVED slot host:port` naming the owner, for SSUBSCRIBE and
/// SPUBLISH, never ASK.
fn wrong_node_answers_moved(cluster: &mut RedisCluster) {
    let channel = "facts:moved";
    let owner = cluster.master_port_of(slot(channel));
    let other = *cluster
        .masters()
        .iter()
        .find(|&&m| m != owner)
        .expect("another master");
    let want = ClusterError::Moved(Redirect {
        slot: slot(channel),
        host: Some("127.0.0.1".into()),
        port: owner,
    });
    let mut c = cluster.client(other);
    for cmd in [vec!["SSUBSCRIBE", channel], vec!["SPUBLISH", channel, "x"]] {
        let reply = c.cmd(&cmd);
        let text = reply
            .error()
            .unwrap_or_else(|| panic!("{cmd:?} on the wrong node answered {reply:?}"));
        assert_eq!(
            ClusterError::parse(text.as_bytes()),
            Ok(Some(want.clone())),
            "{text}"
        );
    }
    // Not subscribed after the refusal: an ordinary command works.
    assert_eq!(c.cmd(&["PING"]), RespReply::Simple("PONG".into()));
}

/// One SSUBSCRIBE (or SUNSUBSCRIBE) naming channels of two slots is `-CROSSSLOT`, even on
/// the node owning both; channels sharing a hash tag share a slot and go in one command.
fn channels_of_two_slots_are_crossslot(cluster: &mut RedisCluster) {
    let master = cluster.masters()[0];
    let mut same_node = (0..)
        .map(|n| format!("facts:cross:{n}"))
        .filter(|c| cluster.master_port_of(slot(c)) == master);
    let a = same_node.next().expect("a");
    let b = same_node
        .find(|b| slot(b) != slot(&a))
        .expect("b in another slot");
    let mut sub = Sub::new(cluster, master, false);
    for cmd in ["SSUBSCRIBE", "SUNSUBSCRIBE"] {
        let reply = sub.client.cmd(&[cmd, &a, &b]);
        let text = reply.error().unwrap_or_else(|| panic!("{cmd}: {reply:?}"));
        assert!(
            matches!(
                ClusterError::parse(text.as_bytes()),
                Ok(Some(ClusterError::CrossSlot { .. }))
            ),
            "{cmd}: {text}"
        );
        if cmd == "SSUBSCRIBE" {
            // Subscribed to one, so SUNSUBSCRIBE is checked in subscribed mode.
            sub.ssubscribe(&[&a], 0);
        }
    }
    // One tag, one slot: a single SSUBSCRIBE takes both.
    let tag_owner = cluster.master_port_of(slot("{facts-tag}"));
    let mut tagged = Sub::new(cluster, tag_owner, false);
    tagged.ssubscribe(&["facts:{facts-tag}:x", "facts:{facts-tag}:y"], 0);
    tagged.marker(true);
}

/// A migrated slot: while it migrates the source serves its channels and the target
/// redirects to the source; once moved, every subscriber of its channels on the old owner
/// and on the old owner's replica gets an unsolicited `sunsubscribe` (RESP2 array, RESP3
/// push); a RESP2 connection whose count reaches 0 leaves subscribed mode; an own
/// SUNSUBSCRIBE of a dropped channel is answered `-MOVED`; the new owner serves the
/// channels.
fn migration_unsubscribes_old_owner_and_replica(cluster: &mut RedisCluster) {
    // Two channels of one slot (one tag) and one of another slot on the same master.
    let (a, b) = ("facts:{mig}:a", "facts:{mig}:b");
    let moved = slot(a);
    let source = cluster.master_port_of(moved);
    let stay = (0..)
        .map(|n| format!("facts:stay:{n}"))
        .find(|c| cluster.master_port_of(slot(c)) == source && slot(c) != moved)
        .expect("a channel staying on the source");
    let target = *cluster
        .masters()
        .iter()
        .find(|&&m| m != source)
        .expect("another master");
    let replica = cluster.replicas_of(source)[0];

    let mut two = Sub::new(cluster, source, false); // a, b and stay: stays subscribed
    two.ssubscribe(&[a, b], 0);
    two.ssubscribe(&[&stay], 2);
    let mut only = Sub::new(cluster, source, false); // a only: leaves subscribed mode
    only.ssubscribe(&[a], 0);
    let mut three = Sub::new(cluster, source, true);
    three.ssubscribe(&[a, b], 0);
    let mut on_replica = Sub::new(cluster, replica, false);
    on_replica.ssubscribe(&[a], 0);
    // Keys of the slot move too (as presence keys do when their slot moves).
    assert!(cluster
        .cmd(source, &["SET", "facts:{mig}:key", "v"])
        .is_ok());

    cluster.begin_slot_move(moved, source, target);
    // While the slot is MIGRATING/IMPORTING the source serves its channels; the target
    // answers MOVED back to the source (never ASK: shard channels are not keys).
    let during = cluster.cmd(target, &["SSUBSCRIBE", a]);
    assert_eq!(
        during.error(),
        Some(format!("MOVED {moved} 127.0.0.1:{source}").as_str()),
        "{during:?}"
    );
    assert_eq!(
        cluster.cmd(source, &["SPUBLISH", a, "during"]),
        RespReply::Int(3),
        "three subscribers on the source; the replica's is not counted"
    );
    for sub in [&mut two, &mut only, &mut three, &mut on_replica] {
        assert_eq!(sub.read(), smessage(sub.resp3, a, "during"));
    }
    cluster.migrate_keys(moved, source, target);
    cluster.finish_slot_move(moved, source, target);

    // Counts fall as the slot's channels go, in name order; `stay` remains.
    two.expect_sunsubscribes(&[(a, 2), (b, 1)], "sunsubscribe_migration_resp2.resp");
    two.marker(true);
    // roomcast's own SUNSUBSCRIBE of a channel the server already dropped is answered
    // `-MOVED`, not `sunsubscribe`: when the two cross, the unsolicited `sunsubscribe`
    // comes first and the MOVED answers the command.
    let own = two.client.cmd(&["SUNSUBSCRIBE", a]);
    assert_eq!(
        own.error(),
        Some(format!("MOVED {moved} 127.0.0.1:{target}").as_str()),
        "{own:?}"
    );
    two.marker(true);

    only.expect_sunsubscribes(&[(a, 0)], "sunsubscribe_migration_resp2_last.resp");
    // At 0 a RESP2 connection is out of subscribed mode: PING answers +PONG, and ordinary
    // commands work again (the key moved with the slot).
    only.marker(false);
    let get = only.client.cmd(&["GET", "facts:{mig}:key"]);
    assert!(
        get.error().is_some_and(|e| e.starts_with("MOVED ")),
        "GET after the move: {get:?}"
    );

    three.expect_sunsubscribes(&[(a, 1), (b, 0)], "sunsubscribe_migration_resp3.resp");
    three.marker(false);
    let own = three.client.cmd(&["SUNSUBSCRIBE", b]);
    assert_eq!(
        own.error(),
        Some(format!("MOVED {moved} 127.0.0.1:{target}").as_str()),
        "RESP3: {own:?}"
    );

    // The old owner's replica tells its subscribers too.
    assert_eq!(
        on_replica.read(),
        pubsub(false, "sunsubscribe", a, RespReply::Int(0))
    );
    on_replica.marker(false);

    // The new owner serves the channel; the old one redirects there.
    let mut again = Sub::new(cluster, target, false);
    again.ssubscribe(&[a], 0);
    assert_eq!(
        cluster.cmd(target, &["SPUBLISH", a, "after"]),
        RespReply::Int(1)
    );
    assert_eq!(again.read(), smessage(false, a, "after"));
    let refused = cluster.cmd(source, &["SPUBLISH", a, "x"]);
    assert!(
        refused
            .error()
            .is_some_and(|e| e == format!("MOVED {moved} 127.0.0.1:{target}")),
        "{refused:?}"
    );
    assert_eq!(
        cluster.cmd(target, &["GET", "facts:{mig}:key"]),
        bulk("v"),
        "the key moved with the slot"
    );
    // `stay` is untouched on the source.
    assert_eq!(
        cluster.cmd(source, &["SPUBLISH", &stay, "still"]),
        RespReply::Int(1)
    );
    assert_eq!(two.read(), smessage(false, &stay, "still"));
}

/// A manual failover: the old master sends `sunsubscribe` for every channel of every slot of
/// the shard; the promoted replica keeps its subscribers, and they keep receiving.
fn manual_failover_unsubscribes_every_channel(cluster: &mut RedisCluster) {
    // Two channels of two slots of one shard, fixed names.
    let (x, y) = ("facts:{fo-a}", "facts:{fo-e}");
    let master = cluster.master_port_of(slot(x));
    assert_eq!(
        cluster.master_port_of(slot(y)),
        master,
        "both failover channels must be on one shard; pick other tags"
    );
    let replica = cluster.replicas_of(master)[0];
    let mut on_master = Sub::new(cluster, master, false);
    on_master.ssubscribe(&[x], 0);
    on_master.ssubscribe(&[y], 1);
    let mut on_master3 = Sub::new(cluster, master, true);
    on_master3.ssubscribe(&[x], 0);
    on_master3.ssubscribe(&[y], 1);
    let mut on_replica = Sub::new(cluster, replica, false);
    on_replica.ssubscribe(&[x], 0);

    cluster.failover(replica, Failover::Manual);

    // Slot order: the channel of the lower slot goes first, counts falling to 0.
    let (first, second) = if slot(x) < slot(y) { (x, y) } else { (y, x) };
    let expected = [(first, 1), (second, 0)];
    on_master.expect_sunsubscribes(&expected, "sunsubscribe_failover_resp2.resp");
    on_master3.expect_sunsubscribes(&expected, "sunsubscribe_failover_resp3.resp");
    on_master.marker(false);
    on_master3.marker(false);
    // The promoted replica kept its subscriber.
    assert_eq!(
        cluster.cmd(replica, &["SPUBLISH", x, "promoted"]),
        RespReply::Int(1)
    );
    assert_eq!(on_replica.read(), smessage(false, x, "promoted"));
    on_replica.marker(true);
}

/// `CLUSTER FAILOVER FORCE` and `TAKEOVER` with the old master still up: the old master
/// learns it lost its slots and unsubscribes its subscribers like a manual failover does;
/// the promoted replica keeps its own.
fn forced_failovers_unsubscribe_the_old_master(cluster: &mut RedisCluster) {
    // The shard that has not failed over yet (nor will be killed next): its masters voted
    // on no failover of it lately, so they vote for this one at once.
    let busy = [
        cluster.master_port_of(slot("facts:{fo-a}")),
        cluster.master_port_of(slot("facts:{kill}")),
    ];
    let channel = ["facts:{force-a}", "facts:{force-b}", "facts:{force-c}"]
        .into_iter()
        .find(|c| !busy.contains(&cluster.master_port_of(slot(c))))
        .expect("one of three tags hashes to the third shard");
    for (mode, name) in [
        (Failover::Force, "sunsubscribe_failover_force_resp2.resp"),
        (
            Failover::Takeover,
            "sunsubscribe_failover_takeover_resp2.resp",
        ),
    ] {
        let ShardSubs {
            replica,
            mut on_master,
            mut on_replica,
            ..
        } = ShardSubs::new(cluster, channel, [false, true]);

        cluster.failover(replica, mode);

        on_master.expect_sunsubscribes(&[(channel, 0)], name);
        on_master.marker(false);
        assert_eq!(
            cluster.cmd(replica, &["SPUBLISH", channel, "promoted"]),
            RespReply::Int(1),
            "{mode:?}"
        );
        assert_eq!(on_replica.read(), smessage(true, channel, "promoted"));
        on_replica.marker(true);
    }
}

/// Reads until the connection closes (the node died); anything else is a failure.
fn expect_closed(sub: &mut Sub) {
    match sub.client.read_reply_within(WAIT) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        other => panic!(
            "the killed master's link on {} answered {other:?}",
            sub.port
        ),
    }
}

/// A master killed: its links close; the replica promoted in its place keeps its own
/// subscribers, which go on receiving.
fn killed_master_closes_its_links(cluster: &mut RedisCluster) {
    let channel = "facts:{kill}";
    let ShardSubs {
        master,
        replica,
        mut on_master,
        mut on_replica,
    } = ShardSubs::new(cluster, channel, [false, true]);

    let promoted = cluster.kill_master(master, Promotion::Takeover);
    assert_eq!(promoted, replica);

    expect_closed(&mut on_master);
    assert_eq!(
        cluster.cmd(promoted, &["SPUBLISH", channel, "survived"]),
        RespReply::Int(1)
    );
    assert_eq!(on_replica.read(), smessage(true, channel, "survived"));
    on_replica.marker(true);

    // The old master comes back as a replica of its successor.
    cluster.revive(master);
    assert_eq!(cluster.replicas_of(promoted), vec![master]);

    // Another shard's master dies and nobody steps in: the cluster fails over by itself
    // after the node timeout. The shard of the manual failover, not the one forced over
    // just before: the replica that won the forced election would start no new election for
    // four node timeouts after it, and the masters that voted then refuse to vote about the
    // same master for two; the manual failover's standing replica is its old master, which
    // never ran an election.
    let settled = cluster.master_port_of(slot("facts:{fo-a}"));
    assert_ne!(
        settled, promoted,
        "the manual failover's shard is not the killed one"
    );
    let other = (0..)
        .map(|n| format!("facts:kill2:{n}"))
        .find(|c| cluster.master_port_of(slot(c)) == settled)
        .expect("a channel on the manual failover's shard");
    let ShardSubs {
        master,
        replica,
        mut on_master,
        mut on_replica,
    } = ShardSubs::new(cluster, &other, [true, false]);
    assert_eq!(cluster.kill_master(master, Promotion::NodeTimeout), replica);
    expect_closed(&mut on_master);
    assert_eq!(
        cluster.cmd(replica, &["SPUBLISH", &other, "elected"]),
        RespReply::Int(1)
    );
    assert_eq!(on_replica.read(), smessage(false, &other, "elected"));
    on_replica.marker(true);
}
