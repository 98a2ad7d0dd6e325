//! Presence's key layout and scripts on a real local Redis Cluster (three masters): every
//! presence key of a prefix is in one hash slot, so on the master that owns it the scripts,
//! the registration transaction and the writes run without `-CROSSSLOT` and answer right,
//! and on any other master they are answered `-MOVED` to that owner and not run. Last, the
//! slot moves to another master: halfway through, a query on the old owner is refused
//! rather than prune members whose lease already moved; after it, the new owner answers.
//! Then two roomcast instances run on the cluster: every key they write is on the slot's
//! owner, and after the slot moves under them both see every member again.
//!
//! The commands are the hub's, sent with the raw RESP client: the scripts are
//! `roomcast_core::presence`'s, the key names come from its `Keys`, and [`register`] sends
//! the transaction `Hub::presence_register` (core/src/hub/presence.rs) sends, in its order.
//! (The simulation's presence tests check that every key the hub itself writes is in the
//! prefix's slot.) One cluster serves the whole binary; the scenarios run one after the
//! other in a single test.

use std::time::Duration;

use roomcast_core::cluster::{key_slot, ClusterError, Slot};
use roomcast_core::presence::{Keys, CLEAR_SCRIPT, CONN_SCRIPT, ROOM_SCRIPT, SWEEP_SCRIPT};
use roomcast_core::{ChannelNamer, InstanceId};
use roomcast_tests::{RedisCluster, RespClient, RespReply};

/// The lease every registration here asks for: long enough never to run out by itself
/// during the test (leases are ended on purpose, with `PEXPIRE`).
const LEASE_MS: &str = "600000";

/// One instance's view: its key names, with text helpers.
struct Instance {
    keys: Keys,
}

impl Instance {
    fn new(prefix: &str, id: u64) -> Instance {
        let namer = ChannelNamer::new(prefix).expect("a valid prefix");
        Instance {
            keys: Keys::new(&namer, InstanceId(id)),
        }
    }

    fn me(&self) -> String {
        text(&self.keys.me)
    }

    fn field(&self, conn: &str) -> String {
        text(&self.keys.field(conn))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("presence names here are UTF-8")
}

/// The strings of an array reply, sorted; panics (with the reply) on anything else.
fn sorted(reply: &RespReply) -> Vec<String> {
    let items = reply
        .as_array()
        .unwrap_or_else(|| panic!("an array, got {reply:?}"));
    let mut out: Vec<String> = items
        .iter()
        .map(|x| {
            x.as_text()
                .unwrap_or_else(|| panic!("a string in {reply:?}"))
        })
        .collect();
    out.sort();
    out
}

/// Fails with the reply if it (or, for `EXEC`, any part of it) is an error.
fn no_error(what: &str, reply: &RespReply) {
    assert!(reply.error().is_none(), "{what}: {reply:?}");
    if let Some(items) = reply.as_array() {
        for item in items {
            assert!(item.error().is_none(), "{what}: {reply:?}");
        }
    }
}

/// The transaction `Hub::presence_register` sends: clear whatever the instance wrote
/// before, then write its lease, its name in the instances set, and every member (each room
/// hash and connection set recorded in the instance's index sets). Returns every reply,
/// `EXEC`'s last.
fn register(c: &mut RespClient, inst: &Instance, rooms: &[(&str, &[&str])]) -> Vec<RespReply> {
    let k = &inst.keys;
    let (me, idx_rooms, idx_conns) = (inst.me(), text(&k.idx_rooms), text(&k.idx_conns));
    let mut cmds: Vec<Vec<String>> = vec![
        vec!["MULTI".into()],
        vec![
            "EVAL".into(),
            CLEAR_SCRIPT.into(),
            "1".into(),
            idx_rooms.clone(),
            text(&k.index_prefix),
            me.clone(),
        ],
        vec![
            "SET".into(),
            text(&k.lease),
            "1".into(),
            "PX".into(),
            LEASE_MS.into(),
        ],
        vec!["SADD".into(), text(&k.instances), me.clone()],
    ];
    let mut conn_keys: Vec<String> = Vec::new();
    for (room, conns) in rooms {
        let room_key = text(&k.room(room));
        let mut hset = vec!["HSET".to_string(), room_key.clone()];
        for c in *conns {
            hset.push(inst.field(c));
            hset.push(me.clone());
        }
        cmds.push(hset);
        cmds.push(vec!["SADD".into(), idx_rooms.clone(), room_key]);
        conn_keys.extend(conns.iter().map(|c| text(&k.conn(c))));
    }
    conn_keys.sort_unstable();
    conn_keys.dedup();
    for ck in conn_keys {
        cmds.push(vec!["SADD".into(), ck.clone(), me.clone()]);
        cmds.push(vec!["SADD".into(), idx_conns.clone(), ck]);
    }
    cmds.push(vec!["EXEC".into()]);
    cmds.iter()
        .map(|cmd| {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            c.cmd(&args)
        })
        .collect()
}

/// Runs a loaded script by its SHA, as the hub does once `SCRIPT LOAD` answered.
fn evalsha(c: &mut RespClient, sha: &str, keys: &[&[u8]], args: &[&[u8]]) -> RespReply {
    let n = keys.len().to_string();
    let mut cmd: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), n.as_bytes()];
    cmd.extend_from_slice(keys);
    cmd.extend_from_slice(args);
    c.send_raw(&cmd).expect("write EVALSHA");
    c.read_reply()
}

/// The SHAs of the room, connection and sweep scripts, loaded on the node of `c`.
struct Shas {
    room: String,
    conn: String,
    sweep: String,
}

fn load(c: &mut RespClient) -> Shas {
    let mut sha = |src: &str| {
        let r = c.cmd(&["SCRIPT", "LOAD", src]);
        r.as_text().unwrap_or_else(|| panic!("SCRIPT LOAD: {r:?}"))
    };
    Shas {
        room: sha(ROOM_SCRIPT),
        conn: sha(CONN_SCRIPT),
        sweep: sha(SWEEP_SCRIPT),
    }
}

fn room_query(c: &mut RespClient, s: &Shas, k: &Keys, room: &str) -> RespReply {
    evalsha(c, &s.room, &[&k.room(room)], &[&k.lease_prefix])
}

fn conn_query(c: &mut RespClient, s: &Shas, k: &Keys, conn: &str) -> RespReply {
    evalsha(c, &s.conn, &[&k.conn(conn)], &[&k.lease_prefix])
}

fn sweep(c: &mut RespClient, s: &Shas, k: &Keys) -> RespReply {
    evalsha(
        c,
        &s.sweep,
        &[&k.instances],
        &[&k.lease_prefix, &k.index_prefix],
    )
}

/// The slot and port of a `-MOVED` reply; panics on anything else.
fn moved(what: &str, reply: &RespReply) -> (Slot, u16) {
    let e = reply
        .error()
        .unwrap_or_else(|| panic!("{what}: -MOVED expected, got {reply:?}"));
    match ClusterError::parse(e.as_bytes()) {
        Ok(Some(ClusterError::Moved(r))) => (r.slot, r.port),
        other => panic!("{what}: -MOVED expected, got {e:?} ({other:?})"),
    }
}

/// Moves one key from the node of `c` to the node on `target` (the slot being migrated).
fn migrate(c: &mut RespClient, target: u16, key: &str) {
    let port = target.to_string();
    let r = c.cmd(&["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", key]);
    assert!(r.is_ok(), "MIGRATE {key}: {r:?}");
}

#[test]
fn presence_runs_on_the_owner_of_its_slot_and_is_moved_elsewhere() {
    let mut cluster = RedisCluster::try_start(3, 0).unwrap_or_else(|e| panic!("{e}"));
    let a = Instance::new("graphwiz", 0xa);
    let b = Instance::new("graphwiz", 0xb);
    let slot = a.keys.slot();

    // The server computes the same slot for every name, the prefix's own; other prefixes
    // get other slots (on one shard or another).
    let owner = cluster.master_port_of(slot);
    let mut c = cluster.client(owner);
    let mut names = vec![
        text(&a.keys.lease),
        text(&a.keys.instances),
        text(&a.keys.idx_rooms),
        text(&b.keys.idx_conns),
        text(&a.keys.room("{x}/y")),
        text(&a.keys.conn("c:1")),
        "graphwiz".to_string(),
    ];
    names.push(format!("{}{}", text(&a.keys.lease_prefix), b.me()));
    for name in &names {
        let r = c.cmd(&["CLUSTER", "KEYSLOT", name]);
        assert_eq!(r.as_int(), Some(i64::from(slot.get())), "{name}: {r:?}");
    }
    let other = Instance::new("chat", 0xa);
    assert_ne!(other.keys.slot(), slot);
    assert_eq!(
        c.cmd(&["CLUSTER", "KEYSLOT", &text(&other.keys.instances)])
            .as_int(),
        Some(i64::from(other.keys.slot().get()))
    );
    let topology = cluster.topology();
    assert_eq!(
        topology.master_of(slot).and_then(|m| m.port),
        Some(owner),
        "CLUSTER SHARDS names the owner"
    );

    // Two instances register on the owner: one transaction each, no error in any part.
    let shas = load(&mut c);
    let replies = register(
        &mut c,
        &a,
        &[
            ("lobby", &["c1", "c2"]),
            ("{x}/y", &["c1"]),
            ("ünï", &["c3"]),
        ],
    );
    for r in &replies {
        no_error("registration of a", r);
    }
    assert_eq!(
        replies.last().and_then(RespReply::as_array).map(<[_]>::len),
        Some(replies.len() - 2),
        "EXEC answered every queued command: {replies:?}"
    );
    for r in register(&mut c, &b, &[("lobby", &["d1"]), ("{x}/y", &["c1"])]) {
        no_error("registration of b", &r);
    }
    // A join written outside the transaction, as `Hub::presence_join` does.
    let kb = &b.keys;
    for cmd in [
        vec![
            "HSET".to_string(),
            text(&kb.room("solo")),
            b.field("d2"),
            b.me(),
        ],
        vec!["SADD".into(), text(&kb.conn("d2")), b.me()],
        vec!["SADD".into(), text(&kb.idx_rooms), text(&kb.room("solo"))],
        vec!["SADD".into(), text(&kb.idx_conns), text(&kb.conn("d2"))],
    ] {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        no_error("join", &c.cmd(&args));
    }

    // Every query answers right, in one round trip each.
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "lobby")),
        vec![a.field("c1"), a.field("c2"), b.field("d1")]
    );
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "{x}/y")),
        vec![a.field("c1"), b.field("c1")]
    );
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "ünï")),
        vec![a.field("c3")]
    );
    assert_eq!(
        sorted(&conn_query(&mut c, &shas, &a.keys, "c1")),
        vec![a.me(), b.me()]
    );
    assert_eq!(sorted(&sweep(&mut c, &shas, &a.keys)), vec![a.me(), b.me()]);
    // A heartbeat: one command for the instance, whatever its members.
    let beat = c.cmd(&["PEXPIRE", &text(&a.keys.lease), LEASE_MS]);
    assert_eq!(beat.as_int(), Some(1), "{beat:?}");

    // b's lease expires (the server's TTL runs out: 1 ms, then its key is gone).
    let r = c.cmd(&["PEXPIRE", &text(&b.keys.lease), "1"]);
    assert_eq!(r.as_int(), Some(1), "{r:?}");
    let mut gone = false;
    for _ in 0..1000 {
        if c.cmd(&["EXISTS", &text(&b.keys.lease)]).as_int() == Some(0) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(gone, "b's lease did not expire");
    // Queries skip b's entries (and prune those they met)...
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "lobby")),
        vec![a.field("c1"), a.field("c2")]
    );
    let lobby = text(&a.keys.room("lobby"));
    assert_eq!(c.cmd(&["HLEN", &lobby]).as_int(), Some(2));
    assert_eq!(
        sorted(&conn_query(&mut c, &shas, &a.keys, "c1")),
        vec![a.me()]
    );
    assert_eq!(
        sorted(&conn_query(&mut c, &shas, &a.keys, "d2")),
        Vec::<String>::new()
    );
    // ...and the sweep removes the rest of b's footprint through its index sets: the
    // entries no query met, its index sets, its name in the instances set.
    let solo = text(&b.keys.room("solo"));
    assert_eq!(c.cmd(&["HLEN", &solo]).as_int(), Some(1));
    assert_eq!(sorted(&sweep(&mut c, &shas, &a.keys)), vec![a.me()]);
    assert_eq!(c.cmd(&["EXISTS", &solo]).as_int(), Some(0));
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "{x}/y")),
        vec![a.field("c1")]
    );
    for key in [&b.keys.idx_rooms, &b.keys.idx_conns] {
        assert_eq!(c.cmd(&["EXISTS", &text(key)]).as_int(), Some(0));
    }
    assert_eq!(
        sorted(&c.cmd(&["SMEMBERS", &text(&a.keys.instances)])),
        vec![a.me()]
    );

    // Registering again clears what the instance wrote before: c1 left every room while
    // the link was down, c2 is still in the lobby.
    for r in register(&mut c, &a, &[("lobby", &["c2"])]) {
        no_error("re-registration of a", &r);
    }
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "lobby")),
        vec![a.field("c2")]
    );
    for room in ["{x}/y", "ünï"] {
        assert_eq!(
            sorted(&room_query(&mut c, &shas, &a.keys, room)),
            Vec::<String>::new(),
            "{room}"
        );
    }
    assert_eq!(
        sorted(&conn_query(&mut c, &shas, &a.keys, "c1")),
        Vec::<String>::new()
    );

    // Any other master answers every presence command -MOVED to the owner, and runs none.
    let elsewhere: Vec<u16> = cluster
        .masters()
        .into_iter()
        .filter(|&p| p != owner)
        .collect();
    assert_eq!(elsewhere.len(), 2, "three masters");
    for port in elsewhere {
        let mut e = cluster.client(port);
        let there = load(&mut e);
        let asks: Vec<(&str, RespReply)> = vec![
            ("room query", room_query(&mut e, &there, &a.keys, "lobby")),
            (
                "connection query",
                conn_query(&mut e, &there, &a.keys, "c2"),
            ),
            ("sweep", sweep(&mut e, &there, &a.keys)),
            (
                "heartbeat",
                e.cmd(&["PEXPIRE", &text(&a.keys.lease), LEASE_MS]),
            ),
        ];
        for (what, reply) in &asks {
            assert_eq!(moved(what, reply), (slot, owner), "{what} on {port}");
        }
        // In a transaction each queued command is refused, and EXEC aborts.
        let replies = register(&mut e, &a, &[]);
        let (exec, queued) = replies.split_last().expect("replies");
        assert!(queued[0].is_ok(), "MULTI: {:?}", queued[0]);
        for r in &queued[1..] {
            assert_eq!(moved("registration", r), (slot, owner), "on {port}");
        }
        assert!(
            exec.error().is_some_and(|t| t.starts_with("EXECABORT")),
            "EXEC on {port}: {exec:?}"
        );
        assert_eq!(
            e.cmd(&["DBSIZE"]).as_int(),
            Some(0),
            "nothing written on {port}"
        );
    }
    // The owner still holds what it held: the refused clear did not run.
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "lobby")),
        vec![a.field("c2")]
    );

    // A graceful goodbye: one multi-key DEL within the slot, then the instances set.
    let k = &a.keys;
    let r = c.cmd(&[
        "DEL",
        &text(&k.lease),
        &text(&k.idx_rooms),
        &text(&k.idx_conns),
    ]);
    assert_eq!(r.as_int(), Some(3), "{r:?}");
    no_error("goodbye", &c.cmd(&["SREM", &text(&k.instances), &a.me()]));
    assert_eq!(
        sorted(&room_query(&mut c, &shas, &a.keys, "lobby")),
        Vec::<String>::new()
    );
    assert_eq!(key_slot(&k.instances), slot);

    // The presence slot moves while both instances are registered. Halfway (b's lease
    // already on the new owner, everything else still on the old one) a query on the old
    // owner fails instead of taking b for dead: nothing is pruned.
    for (inst, room, conn) in [(&a, "lobby", "c2"), (&b, "lobby", "d1")] {
        for r in register(&mut c, inst, &[(room, &[conn])]) {
            no_error("registration before the move", &r);
        }
    }
    let target = cluster
        .masters()
        .into_iter()
        .find(|&p| p != owner)
        .expect("another master");
    cluster.begin_slot_move(slot, owner, target);
    migrate(&mut c, target, &text(&b.keys.lease));
    let halfway = room_query(&mut c, &shas, &a.keys, "lobby");
    assert!(halfway.error().is_some(), "a refusal, got {halfway:?}");
    let halfway = sweep(&mut c, &shas, &a.keys);
    assert!(halfway.error().is_some(), "a refusal, got {halfway:?}");
    assert_eq!(c.cmd(&["HLEN", &lobby]).as_int(), Some(2), "nothing pruned");
    assert_eq!(
        sorted(&c.cmd(&["SMEMBERS", &text(&a.keys.instances)])),
        vec![a.me(), b.me()]
    );
    // The importing master, asked without ASKING (roomcast never sends it for presence),
    // sends the query back to the old owner rather than run it on half the keys.
    let mut t = cluster.client(target);
    let shas_t = load(&mut t);
    let early = room_query(&mut t, &shas_t, &a.keys, "lobby");
    assert_eq!(
        moved("room query on the importing master", &early),
        (slot, owner)
    );
    // Why never ASKING: once the room hash has moved but a's lease has not, the importing
    // master would run the query on the keys it has, take a for dead and prune its member.
    migrate(&mut c, target, &lobby);
    // The old owner sends a query whose room hash moved to the new owner, with -ASK.
    let asked = room_query(&mut c, &shas, &a.keys, "lobby");
    match asked.error().map(|e| ClusterError::parse(e.as_bytes())) {
        Some(Ok(Some(ClusterError::Ask(r)))) => assert_eq!((r.slot, r.port), (slot, target)),
        other => panic!("-ASK expected, got {asked:?} ({other:?})"),
    }
    assert!(t.cmd(&["ASKING"]).is_ok());
    assert_eq!(
        sorted(&room_query(&mut t, &shas_t, &a.keys, "lobby")),
        vec![b.field("d1")],
        "the importing master with ASKING prunes a live member"
    );
    cluster.migrate_keys(slot, owner, target);
    cluster.finish_slot_move(slot, owner, target);
    // After the move the new owner answers, and the old one sends there. a's member pruned
    // above is back once a registers again (as the hub does after -MOVED).
    assert_eq!(
        sorted(&room_query(&mut t, &shas_t, &a.keys, "lobby")),
        vec![b.field("d1")]
    );
    for r in register(&mut t, &a, &[("lobby", &["c2"])]) {
        no_error("registration on the new owner", &r);
    }
    assert_eq!(
        sorted(&room_query(&mut t, &shas_t, &a.keys, "lobby")),
        vec![a.field("c2"), b.field("d1")]
    );
    assert_eq!(
        sorted(&sweep(&mut t, &shas_t, &a.keys)),
        vec![a.me(), b.me()]
    );
    let after = room_query(&mut c, &shas, &a.keys, "lobby");
    assert_eq!(moved("room query after the move", &after), (slot, target));

    // Then roomcast itself: two instances on the cluster, their presence on the slot's
    // owner only; the slot moves under them and presence answers whole again.
    for port in cluster.masters() {
        assert!(cluster.cmd(port, &["FLUSHALL"]).is_ok());
    }
    instances_follow_the_presence_slot(&mut cluster, slot);
}

/// Waits until `check` holds for an answer of `ask` (errors, such as `Unavailable` while an
/// instance registers again, are asked again), boundedly; panics with the last answer.
async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    mut ask: impl FnMut() -> F,
    check: impl Fn(&T) -> bool,
) {
    let mut last = None;
    for _ in 0..1500 {
        let answer = ask().await;
        if check(&answer) {
            return;
        }
        last = Some(answer);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: last answer {last:?}");
}

/// `(instance, connection)` of a room's members, sorted.
type Seen = Result<Vec<(u64, String)>, String>;

async fn members(rc: &roomcast::Roomcast, room: &str) -> Seen {
    rc.room_connections(room)
        .await
        .map(|m| {
            m.into_iter()
                .map(|m| (m.instance.0, m.conn.as_str().to_string()))
                .collect()
        })
        .map_err(|e| e.to_string())
}

fn instances_follow_the_presence_slot(cluster: &mut RedisCluster, slot: Slot) {
    let url = cluster.url();
    let owner = cluster.master_port_of(slot);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let connect = || {
            let mut config = roomcast::Config::from_url(&url).expect("the cluster URL");
            config.pool_size = 1;
            config.lease = Duration::from_millis(1500);
            roomcast::Builder::new(config).connect_tokio()
        };
        let patience = Duration::from_secs(30);
        let a = tokio::time::timeout(patience, connect())
            .await
            .expect("a connects in time")
            .expect("a connects");
        let b = tokio::time::timeout(patience, connect())
            .await
            .expect("b connects in time")
            .expect("b connects");
        let _ma = a.join("lobby", "alice").await.expect("join");
        let mb = b.join("lobby", "bob").await.expect("join");
        let _mb2 = b.join("{x}/y", "bob").await.expect("join");
        let want = {
            let mut w = vec![
                (a.instance().0, "alice".to_string()),
                (b.instance().0, "bob".to_string()),
            ];
            w.sort();
            w
        };
        for rc in [&a, &b] {
            eventually(
                "both members seen",
                || members(rc, "lobby"),
                |m| m.as_ref() == Ok(&want),
            )
            .await;
        }
        // Every key the instances wrote is on the owner, in the presence slot.
        let on_owner = cluster.cmd(owner, &["DBSIZE"]).as_int();
        let n = slot.to_string();
        let in_slot = cluster
            .cmd(owner, &["CLUSTER", "COUNTKEYSINSLOT", &n])
            .as_int();
        assert!(on_owner.is_some_and(|n| n > 0), "{on_owner:?}");
        assert_eq!(on_owner, in_slot);
        for port in cluster.masters().into_iter().filter(|&p| p != owner) {
            assert_eq!(cluster.cmd(port, &["DBSIZE"]).as_int(), Some(0), "{port}");
        }

        // The slot moves, keys and all, while both instances heartbeat.
        let to = cluster
            .masters()
            .into_iter()
            .find(|&p| p != owner)
            .expect("another master");
        cluster.move_slot(slot, to);
        for rc in [&a, &b] {
            eventually(
                "both members seen after the move",
                || members(rc, "lobby"),
                |m| m.as_ref() == Ok(&want),
            )
            .await;
            eventually(
                "both instances seen after the move",
                || async { rc.instances().await.map_err(|e| e.to_string()) },
                |i| i.as_ref().is_ok_and(|i| i.len() == 2),
            )
            .await;
        }
        assert_eq!(cluster.cmd(owner, &["DBSIZE"]).as_int(), Some(0));
        // Writes go to the new owner: bob leaves the lobby, stays in {x}/y.
        drop(mb);
        eventually(
            "bob's leave seen",
            || members(&a, "lobby"),
            |m| m.as_ref() == Ok(&vec![(a.instance().0, "alice".to_string())]),
        )
        .await;
        assert_eq!(a.connection_exists("bob").await.ok(), Some(true));
        for rc in [a, b] {
            rc.shutdown(Duration::from_secs(5)).await.expect("shutdown");
        }
    });
}
