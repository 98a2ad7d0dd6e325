//! roomcast on a real local Redis Cluster (three masters, three replicas, started by the
//! harness): rooms spread over every shard, a slot migrated while messages flow, a manual
//! failover, a master killed and its replica promoted, `PUBSUB SHARDNUMSUB` on every node,
//! and the `roomcast` command against the cluster URL. Full scenarios on tokio; a smoke test
//! on async-std.
//!
//! One cluster serves the whole binary, and its scenarios run one after the other in a single
//! test: a cluster takes seconds to form and a 2-core CI should not run two. Those that
//! change the topology come last.
//!
//! No timed assertions: every wait is a bounded loop that fails with what it saw.
//!
//! The command-line scenario runs the `roomcast` binary built next to this test
//! (`target/<profile>/roomcast`): `cargo test --workspace` builds it; alone, build it first
//! with `cargo build -p roomcast -p roomcast-tests --bin roomcast`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use roomcast::core::cluster::{key_slot, Slot};
use roomcast::core::ChannelNamer;
use roomcast::{Builder, Config, Connection, Event, MessageType, PubSubMessage, Roomcast};
use roomcast_tests::{Failover, Promotion, RedisCluster, RespClient, RespReply};

/// Generous: a loaded 2-core machine stalls for seconds, and a failover takes several.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `cond` every 20 ms until it holds; panics naming `what` and `detail()` after
/// [`PATIENCE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; {}",
            detail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A room of a test and where its channel lives.
#[derive(Debug, Clone)]
struct Room {
    id: String,
    channel: String,
    slot: Slot,
}

/// The channel of `room` under `prefix`, as roomcast names it.
fn channel(prefix: &str, room: &str) -> String {
    let namer = ChannelNamer::new(prefix).expect("a valid prefix");
    let id = roomcast::RoomId::new(room, 256).expect("a valid room id");
    String::from_utf8_lossy(&namer.room_channel(&id)).into_owned()
}

/// `per_shard` rooms on every shard (by their channels' slots), shard by shard in slot
/// order of the masters.
fn rooms_on_every_shard(cluster: &mut RedisCluster, prefix: &str, per_shard: usize) -> Vec<Room> {
    let masters = cluster.masters();
    let topology = cluster.topology();
    let mut found: Vec<Vec<Room>> = vec![Vec::new(); masters.len()];
    for n in 0..100_000 {
        if found.iter().all(|f| f.len() >= per_shard) {
            break;
        }
        let id = format!("room-{n}");
        let channel = channel(prefix, &id);
        let slot = key_slot(channel.as_bytes());
        let owner = topology.master_of(slot).and_then(|m| m.port);
        if let Some(k) = masters.iter().position(|&m| Some(m) == owner) {
            if found[k].len() < per_shard {
                found[k].push(Room { id, channel, slot });
            }
        }
    }
    assert!(
        found.iter().all(|f| f.len() == per_shard),
        "rooms on every shard: {found:?}"
    );
    found.into_iter().flatten().collect()
}

/// Per running node: `PUBSUB SHARDNUMSUB` of `channels` (subscriptions on that node).
fn shard_numsub(cluster: &mut RedisCluster, channels: &[String]) -> BTreeMap<u16, Vec<i64>> {
    let mut out = BTreeMap::new();
    for port in cluster.live_ports() {
        let mut args = vec!["PUBSUB", "SHARDNUMSUB"];
        args.extend(channels.iter().map(String::as_str));
        let reply = cluster.cmd(port, &args);
        let items = reply
            .as_array()
            .unwrap_or_else(|| panic!("SHARDNUMSUB on {port} answered {reply:?}"));
        let counts = items
            .chunks(2)
            .map(|pair| match pair.get(1) {
                Some(RespReply::Int(n)) => *n,
                other => panic!("SHARDNUMSUB on {port}: {other:?}"),
            })
            .collect();
        out.insert(port, counts);
    }
    out
}

/// Whether every channel is subscribed `want` times on the master owning its slot and on
/// no other node; otherwise what differs.
fn subscribed_on_owner_only(
    cluster: &mut RedisCluster,
    channels: &[String],
    want: i64,
) -> Result<(), String> {
    let counts = shard_numsub(cluster, channels);
    let topology = cluster.topology();
    let mut wrong = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let owner = topology
            .master_of(key_slot(ch.as_bytes()))
            .and_then(|m| m.port);
        for (&port, c) in &counts {
            let expected = if Some(port) == owner { want } else { 0 };
            if c[i] != expected {
                wrong.push(format!(
                    "{ch} on {port}: {} subscriptions, expected {expected}{}",
                    c[i],
                    if Some(port) == owner { " (owner)" } else { "" }
                ));
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Waits until every channel is subscribed `want` times, on its owner only.
fn assert_subscribed_on_owner_only(cluster: &mut RedisCluster, channels: &[String], want: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match subscribed_on_owner_only(cluster, channels, want) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("PUBSUB SHARDNUMSUB: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The SHARDNUMSUB check is right, and can fail: raw SSUBSCRIBEs on the owners are counted
/// once each on the owner only; one more subscriber on a replica is reported as wrong.
fn shardnumsub_counts_raw_subscribers(cluster: &mut RedisCluster) {
    let rooms = rooms_on_every_shard(cluster, "harness", 2);
    let channels: Vec<String> = rooms.iter().map(|r| r.channel.clone()).collect();
    let mut subs: Vec<RespClient> = Vec::new();
    for room in &rooms {
        let owner = cluster.master_port_of(room.slot);
        let mut c = cluster.client(owner);
        let reply = c.cmd(&["SSUBSCRIBE", &room.channel]);
        assert!(
            matches!(&reply, RespReply::Array(Some(items)) if items.len() == 3),
            "SSUBSCRIBE {}: {reply:?}",
            room.channel
        );
        subs.push(c);
    }
    assert_subscribed_on_owner_only(cluster, &channels, 1);
    let owner = cluster.master_port_of(rooms[0].slot);
    let replica = cluster.replicas_of(owner)[0];
    let mut extra = cluster.client(replica);
    let reply = extra.cmd(&["SSUBSCRIBE", &rooms[0].channel]);
    assert!(reply.as_array().is_some(), "{reply:?}");
    let err = subscribed_on_owner_only(cluster, &channels, 1)
        .expect_err("a subscriber on a replica is not on the owner");
    assert!(err.contains(&format!("on {replica}")), "{err}");
    assert_subscribed_on_owner_only(cluster, &channels[1..], 1);
}

/// A config for the cluster with `prefix`; `name` tells the instance apart in `CLIENT LIST`.
fn config(cluster: &RedisCluster, prefix: &str, name: &str) -> Config {
    let mut c = Config::from_url(&cluster.url()).expect("the cluster URL");
    c.channel_prefix = prefix.to_string();
    c.client_name = format!("{prefix}-{name}");
    c
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn instance(cluster_config: Config) -> Roomcast {
    tokio::time::timeout(PATIENCE, Builder::new(cluster_config).connect_tokio())
        .await
        .expect("connected in time")
        .expect("roomcast connects to the cluster")
}

fn broadcast(room: &str, data: String) -> PubSubMessage {
    PubSubMessage {
        room_id: room.into(),
        message_type: MessageType::Broadcast,
        data: data.into_bytes().into(),
        exclude_connection: None,
        timestamp: 0,
    }
}

/// One delivery as a test records it: room, payload, trailer (origin, seq).
#[derive(Debug, Clone)]
struct Got {
    room: String,
    data: String,
    origin: Option<(roomcast::InstanceId, u64)>,
}

/// Consumes `conn` on the runtime into a shared list.
fn record(rt: &tokio::runtime::Runtime, mut conn: Connection) -> Arc<Mutex<Vec<Got>>> {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let g = got.clone();
    rt.spawn(async move {
        while let Some(m) = conn.next().await {
            g.lock().unwrap_or_else(|p| p.into_inner()).push(Got {
                room: m.room.as_str().to_string(),
                data: String::from_utf8_lossy(&m.data).into_owned(),
                origin: m.origin.map(|t| (t.origin, t.seq)),
            });
        }
    });
    got
}

/// Every event of `rc`, in order, into a shared list.
fn watch(rt: &tokio::runtime::Runtime, rc: &Roomcast) -> Arc<Mutex<Vec<Event>>> {
    let rc = rc.clone();
    let mut events = rt
        .block_on(rc.events())
        .expect("the instance's event stream");
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let s = seen.clone();
    rt.spawn(async move {
        while let Some(ev) = events.next().await {
            s.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
        }
    });
    seen
}

fn snapshot<T: Clone>(v: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    v.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Three instances, one connection each in rooms on every shard; each instance publishes
/// to every room: every connection receives every message once, in each origin's order;
/// every room is subscribed once per instance, on its owner only.
fn spread_rooms_deliver_once_in_order(cluster: &mut RedisCluster) {
    let prefix = "spread";
    let rooms = rooms_on_every_shard(cluster, prefix, 3);
    let ids: Vec<String> = rooms.iter().map(|r| r.id.clone()).collect();
    let rt = tokio_rt();
    let insts: Vec<Roomcast> = ["a", "b", "c"]
        .iter()
        .map(|n| rt.block_on(instance(config(cluster, prefix, n))))
        .collect();
    let mut inboxes = Vec::new();
    for (k, rc) in insts.iter().enumerate() {
        let conn = rt.block_on(async {
            let c = rc.connection(&format!("conn-{k}")).await.expect("attach");
            c.join_many(&ids).await.expect("join");
            tokio::time::timeout(PATIENCE, c.wait_live())
                .await
                .expect("live in time")
                .expect("live");
            c
        });
        inboxes.push(record(&rt, conn));
    }
    const PER_ROOM: usize = 20;
    for (k, rc) in insts.iter().enumerate() {
        rt.block_on(async {
            for i in 0..PER_ROOM {
                for id in &ids {
                    rc.publish(broadcast(id, format!("{k}:{i}")))
                        .await
                        .expect("published");
                }
            }
        });
    }
    let want = insts.len() * ids.len() * PER_ROOM;
    for (k, inbox) in inboxes.iter().enumerate() {
        wait_for(
            &format!("conn-{k} receives {want} messages"),
            || snapshot(inbox).len() >= want,
            || format!("{} received", snapshot(inbox).len()),
        );
    }
    // A last message per room from instance a: anything extra before it would show.
    rt.block_on(async {
        for id in &ids {
            insts[0]
                .publish(broadcast(id, "end".into()))
                .await
                .expect("published");
        }
    });
    for (k, inbox) in inboxes.iter().enumerate() {
        wait_for(
            &format!("conn-{k} receives the end markers"),
            || snapshot(inbox).iter().filter(|g| g.data == "end").count() == ids.len(),
            || format!("{} received", snapshot(inbox).len()),
        );
        let got = snapshot(inbox);
        assert_eq!(got.len(), want + ids.len(), "conn-{k}: a message too many");
        // Per (room, publishing instance): 0..PER_ROOM in order, each once.
        let mut seen: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for g in got.iter().filter(|g| g.data != "end") {
            let (from, i) = g.data.split_once(':').expect("k:i");
            seen.entry((g.room.clone(), from.to_string()))
                .or_default()
                .push(i.parse().expect("a number"));
        }
        assert_eq!(seen.len(), ids.len() * insts.len(), "conn-{k}: {seen:?}");
        for (key, v) in &seen {
            assert_eq!(
                v,
                &(0..PER_ROOM).collect::<Vec<_>>(),
                "conn-{k}, {key:?}: every message once, in order"
            );
        }
    }
    let channels: Vec<String> = rooms.iter().map(|r| r.channel.clone()).collect();
    assert_subscribed_on_owner_only(cluster, &channels, insts.len() as i64);
    rt.block_on(async {
        for rc in &insts {
            let _ = rc.shutdown(Duration::from_secs(5)).await;
        }
    });
}

/// On async-std: two instances, rooms on every shard, one message per room arrives.
fn async_std_smoke(cluster: &mut RedisCluster) {
    let prefix = "asyncstd";
    let rooms = rooms_on_every_shard(cluster, prefix, 2);
    let ids: Vec<String> = rooms.iter().map(|r| r.id.clone()).collect();
    let (a_cfg, b_cfg) = (config(cluster, prefix, "a"), config(cluster, prefix, "b"));
    async_std::task::block_on(async {
        let a = Builder::new(a_cfg)
            .connect_async_std()
            .await
            .expect("instance a on async-std");
        let b = Builder::new(b_cfg)
            .connect_async_std()
            .await
            .expect("instance b on async-std");
        let mut conn = b.connection("smoke").await.expect("attach");
        conn.join_many(&ids).await.expect("join");
        conn.wait_live().await.expect("live");
        for id in &ids {
            a.publish(broadcast(id, format!("hello {id}")))
                .await
                .expect("published");
        }
        let mut got = BTreeSet::new();
        let deadline = Instant::now() + PATIENCE;
        while got.len() < ids.len() {
            assert!(Instant::now() < deadline, "async-std: only {got:?} arrived");
            let next = async_std::future::timeout(Duration::from_millis(200), conn.next()).await;
            if let Ok(Some(m)) = next {
                assert_eq!(
                    String::from_utf8_lossy(&m.data),
                    format!("hello {}", m.room.as_str())
                );
                assert!(got.insert(m.room.as_str().to_string()), "twice: {}", m.room);
            }
        }
        let _ = a.shutdown(Duration::from_secs(5)).await;
        let _ = b.shutdown(Duration::from_secs(5)).await;
    });
}

/// The `roomcast` binary built next to this test.
fn roomcast_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/cluster-<hash> -> target/<profile>/roomcast
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("roomcast"))
        .expect("the target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p roomcast -p roomcast-tests --bin roomcast` \
         (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

fn roomcast_cmd(cluster: &RedisCluster, prefix: &str) -> Command {
    let mut c = Command::new(roomcast_binary());
    c.env_remove("REDIS_URL")
        .env_remove("REDIS_CHANNEL_PREFIX")
        .env_remove("REDIS_POOL_SIZE")
        .args(["--url", &cluster.url(), "--prefix", prefix])
        .stdin(Stdio::null());
    c
}

/// Runs a command to completion (killed after [`PATIENCE`]): (exit code, stdout, stderr).
fn run(mut cmd: Command) -> (i32, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn roomcast");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + PATIENCE;
    let code = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("roomcast {cmd:?} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        code,
        out.join().expect("stdout"),
        err.join().expect("stderr"),
    )
}

/// `tail` of rooms on every shard prints what `publish` sends.
fn cli_tail_and_publish(cluster: &mut RedisCluster) {
    cli(cluster, "cli", false);
}

/// The same, and `who` sees the tail's connection (presence), and `health` lists every node
/// and link.
fn cli_who_and_health(cluster: &mut RedisCluster) {
    cli(cluster, "cliwho", true);
}

fn cli(cluster: &mut RedisCluster, prefix: &str, who_and_health: bool) {
    let rooms = rooms_on_every_shard(cluster, prefix, 1);
    let mut tail = roomcast_cmd(cluster, prefix);
    tail.arg("tail")
        .args(rooms.iter().map(|r| r.id.as_str()))
        .args(["--count", &rooms.len().to_string(), "--duration", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tail = tail.spawn().expect("spawn tail");
    let stdout = {
        let mut r = tail.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(tail.stderr.take().expect("stderr"));
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let live = rx.recv_timeout(PATIENCE).expect("tail reports when live");
    assert!(live.contains("(live)"), "{live}");
    let tail_conn = format!("tail-{}", tail.id());

    let deadline = Instant::now() + PATIENCE;
    let who = loop {
        if !who_and_health {
            break format!(" {tail_conn}");
        }
        let (code, out, err) = run({
            let mut c = roomcast_cmd(cluster, prefix);
            c.args(["who", &rooms[0].id]);
            c
        });
        assert_eq!(code, 0, "who: {err}");
        if !out.is_empty() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        who.lines().any(|l| l.ends_with(&format!(" {tail_conn}"))),
        "who lists the tail: {who}"
    );

    for room in &rooms {
        let (code, out, err) = run({
            let mut c = roomcast_cmd(cluster, prefix);
            c.args(["publish", &room.id, &format!("to {}", room.id)]);
            c
        });
        assert_eq!(code, 0, "publish to {}: {err}", room.id);
        assert!(
            out.trim().parse::<u64>().is_ok(),
            "publish prints a count: {out}"
        );
    }
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = tail.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = tail.kill();
            panic!("tail did not exit after --count");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "tail: {status:?}");
    let out = stdout.join().expect("stdout");
    let got: BTreeSet<(String, String)> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["room"].as_str().unwrap_or_default().to_string(),
                v["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = rooms
        .iter()
        .map(|r| (r.id.clone(), format!("to {}", r.id)))
        .collect();
    assert_eq!(got, want, "{out}");
    if !who_and_health {
        return;
    }
    let (code, out, err) = run({
        let mut c = roomcast_cmd(cluster, prefix);
        c.arg("health");
        c
    });
    assert_eq!(code, 0, "health: {out}\n{err}");
    for port in cluster.masters() {
        assert!(
            out.contains(&format!("127.0.0.1:{port}")),
            "health names master {port}: {out}"
        );
    }
    assert!(out.contains("links:"), "health lists the links: {out}");
}

/// A topology change a scenario survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The room's slot moves to another master (keys and all).
    Migration,
    /// `CLUSTER FAILOVER` of the room's shard.
    ManualFailover,
    /// The room's master is killed; its replica takes over (`CLUSTER FAILOVER TAKEOVER`).
    KilledMaster,
}

/// What the publisher of a change scenario did: (room, message number, published?).
type Published = Arc<Mutex<Vec<(String, u64, Result<(), String>)>>>;

/// Instance A publishes to a room on the changing shard (the touched room) and to one on
/// another shard while instance B's connection is in every room; the topology changes.
/// Then: B reported the touched room not live and live again; every message published after
/// it was live again arrived, in order; every message published before that did not arrive
/// lies in a gap B reported; the untouched room lost nothing; every room is subscribed once,
/// on its owner.
fn survives(cluster: &mut RedisCluster, change: Change, shard: usize) {
    let prefix = match change {
        Change::Migration => "migration",
        Change::ManualFailover => "failover",
        Change::KilledMaster => "killed",
    };
    let rooms = rooms_on_every_shard(cluster, prefix, 2);
    let touched = rooms[2 * shard].clone();
    let untouched = rooms[(2 * shard + 2) % rooms.len()].clone();
    let ids: Vec<String> = rooms.iter().map(|r| r.id.clone()).collect();
    let rt = tokio_rt();
    let a = rt.block_on(instance(config(cluster, prefix, "a")));
    let b = rt.block_on(instance(config(cluster, prefix, "b")));
    let events = watch(&rt, &b);
    let conn = rt.block_on(async {
        let c = b.connection("member").await.expect("attach");
        c.join_many(&ids).await.expect("join");
        tokio::time::timeout(PATIENCE, c.wait_live())
            .await
            .expect("live in time")
            .expect("live");
        c
    });
    let inbox = record(&rt, conn);
    let published: Published = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (a, published, stop) = (a.clone(), published.clone(), stop.clone());
        let targets = [touched.id.clone(), untouched.id.clone()];
        rt.spawn(async move {
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for room in &targets {
                    let r = a.publish(broadcast(room, k.to_string())).await;
                    published.lock().unwrap_or_else(|p| p.into_inner()).push((
                        room.clone(),
                        k,
                        r.map(drop).map_err(|e| e.to_string()),
                    ));
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    let received = |room: &str| -> Vec<Got> {
        snapshot(&inbox)
            .into_iter()
            .filter(|g| g.room == room)
            .collect()
    };
    wait_for(
        "messages flow before the change",
        || received(&touched.id).len() >= 10 && received(&untouched.id).len() >= 10,
        || format!("{} received", snapshot(&inbox).len()),
    );
    let before = snapshot(&events).len();
    let master = cluster.master_port_of(touched.slot);
    match change {
        Change::Migration => {
            let target = *cluster
                .masters()
                .iter()
                .find(|&&m| m != master)
                .expect("another master");
            cluster.move_slot(touched.slot, target);
        }
        Change::ManualFailover => {
            let replica = cluster.replicas_of(master)[0];
            cluster.failover(replica, Failover::Manual);
        }
        Change::KilledMaster => {
            cluster.kill_master(master, Promotion::Takeover);
        }
    }
    // The outage is reported, and its end.
    let about_touched = |e: &Event| match e {
        Event::RoomNotLive { room, .. } => room.as_str() == touched.id,
        Event::RoomLive { room } => room.as_str() == touched.id,
        _ => false,
    };
    let live_again = || {
        let evs = snapshot(&events);
        let ours: Vec<&Event> = evs[before..].iter().filter(|e| about_touched(e)).collect();
        let not_live = ours
            .iter()
            .position(|e| matches!(e, Event::RoomNotLive { .. }));
        not_live.is_some_and(|at| {
            ours[at..]
                .iter()
                .any(|e| matches!(e, Event::RoomLive { .. }))
        })
    };
    wait_for(
        &format!("{change:?}: {} reported not live, then live", touched.id),
        live_again,
        || {
            let evs = snapshot(&events);
            let told: Vec<&Event> = evs[before..]
                .iter()
                .filter(|e| {
                    about_touched(e) || matches!(e, Event::LinkDown { .. } | Event::LinkUp { .. })
                })
                .collect();
            format!("its room and link events since the change: {told:?}")
        },
    );
    let last_k = |v: &[(String, u64, Result<(), String>)]| v.last().map_or(0, |x| x.1);
    let live_at = last_k(&snapshot(&published));
    wait_for(
        "the publisher goes on after the room is live again",
        || last_k(&snapshot(&published)) >= live_at + 30,
        || format!("published up to {}", last_k(&snapshot(&published))),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = snapshot(&published);
    let ok = |room: &str| -> Vec<u64> {
        log.iter()
            .filter(|(r, _, res)| r == room && res.is_ok())
            .map(|x| x.1)
            .collect()
    };
    let failed: Vec<&(String, u64, Result<(), String>)> =
        log.iter().filter(|x| x.2.is_err()).collect();
    for (room, k, e) in &failed {
        let e = e.as_ref().expect_err("failed");
        assert!(
            !e.is_empty(),
            "publish {k} to {room} failed without a cause"
        );
    }
    // Liveness: every message published to either room after the touched room was live
    // again arrives.
    for room in [&touched.id, &untouched.id] {
        let after: Vec<u64> = ok(room).into_iter().filter(|&k| k > live_at).collect();
        wait_for(
            &format!("{change:?}: every message to {room} after live again arrives"),
            || {
                let got: BTreeSet<u64> = received(room)
                    .iter()
                    .filter_map(|g| g.data.parse().ok())
                    .collect();
                after.iter().all(|k| got.contains(k))
            },
            || format!("received {} of the room", received(room).len()),
        );
    }
    // Order and uniqueness per room (one publishing instance).
    for room in [&touched.id, &untouched.id] {
        let ks: Vec<u64> = received(room)
            .iter()
            .filter_map(|g| g.data.parse().ok())
            .collect();
        assert!(
            ks.windows(2).all(|w| w[0] < w[1]),
            "{change:?}: {room} out of order or twice: {ks:?}"
        );
    }
    // The untouched room lost nothing.
    let got_untouched: BTreeSet<u64> = received(&untouched.id)
        .iter()
        .filter_map(|g| g.data.parse().ok())
        .collect();
    let lost: Vec<u64> = ok(&untouched.id)
        .into_iter()
        .filter(|k| !got_untouched.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "{change:?}: the untouched room lost {lost:?}"
    );
    // Every message of the touched room that was published and did not arrive lies in a gap
    // B reported: between the trailer sequences of the deliveries around it.
    let got_touched = received(&touched.id);
    let by_k: BTreeMap<u64, u64> = got_touched
        .iter()
        .filter_map(|g| Some((g.data.parse().ok()?, g.origin?.1)))
        .collect();
    let gaps: Vec<std::ops::RangeInclusive<u64>> = snapshot(&events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Gap { room, missing, .. } if room.as_str() == touched.id => Some(missing),
            _ => None,
        })
        .collect();
    let mut missed = 0;
    for k in ok(&touched.id) {
        if by_k.contains_key(&k) {
            continue;
        }
        missed += 1;
        let before = by_k.range(..k).next_back().map(|(_, &s)| s);
        let after = by_k.range(k..).next().map(|(_, &s)| s);
        let (Some(lo), Some(hi)) = (before, after) else {
            panic!("{change:?}: message {k} missing at the edge of the run");
        };
        assert!(
            gaps.iter()
                .any(|g| *g.start() > lo && *g.end() < hi && g.start() <= g.end()),
            "{change:?}: message {k} (between sequences {lo} and {hi}) never arrived and no \
             gap covers it; gaps: {gaps:?}"
        );
    }
    if change == Change::KilledMaster {
        assert!(
            snapshot(&events)[before..]
                .iter()
                .any(|e| matches!(e, Event::LinkDown { .. })),
            "the killed master's link going down is reported"
        );
    }
    eprintln!(
        "{change:?}: {} published to the touched room ({} failed), {missed} missed and \
         reported in {} gap(s)",
        ok(&touched.id).len(),
        failed.len(),
        gaps.len()
    );
    let channels: Vec<String> = rooms.iter().map(|r| r.channel.clone()).collect();
    assert_subscribed_on_owner_only(cluster, &channels, 1);
    rt.block_on(async {
        let _ = a.shutdown(Duration::from_secs(5)).await;
        let _ = b.shutdown(Duration::from_secs(5)).await;
    });
}

fn migration(cluster: &mut RedisCluster) {
    survives(cluster, Change::Migration, 0);
}

fn manual_failover(cluster: &mut RedisCluster) {
    survives(cluster, Change::ManualFailover, 1);
}

fn killed_master(cluster: &mut RedisCluster) {
    survives(cluster, Change::KilledMaster, 2);
}

type Scenario = fn(&mut RedisCluster);

/// Runs the scenarios in order on one cluster. A scenario that fails does not stop the
/// others (each starts from the topology the last one left, settled); the test fails at the
/// end naming every scenario that failed.
fn run_scenarios(scenarios: &[(&str, Scenario)]) {
    let started = Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("cluster formed in {:?}", started.elapsed());
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        let at = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut cluster)));
        eprintln!(
            "{name}: {} in {:?}",
            if outcome.is_ok() { "ok" } else { "FAILED" },
            at.elapsed()
        );
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "failed scenarios: {failed:?} (see above)"
    );
}

/// roomcast on the cluster: every scenario on one cluster, topology changes last.
#[test]
fn cluster_rooms() {
    run_scenarios(&[
        ("shardnumsub", shardnumsub_counts_raw_subscribers),
        ("spread rooms", spread_rooms_deliver_once_in_order),
        ("async-std smoke", async_std_smoke),
        ("cli tail and publish", cli_tail_and_publish),
        ("cli who and health", cli_who_and_health),
        ("slot migration", migration),
        ("manual failover", manual_failover),
        ("killed master", killed_master),
    ]);
}
