//! A private Redis Cluster on loopback: six `redis-server --cluster-enabled yes` nodes (three
//! masters, one replica each), created with `redis-cli --cluster create`, and the topology
//! changes tests need: moving a slot, manual failovers, killing a master.
//!
//! Every node is a [`RedisServer`] (private directory, `--save ''`, `DEBUG` allowed from
//! loopback, killed and reaped on drop), so a panicking test leaves no process behind: the
//! cluster is dropped while the panic unwinds. Use one cluster per test binary and run its
//! scenarios one after the other (a cluster takes seconds to form; a 2-core CI should not
//! form several at once).
//!
//! Ports: a node's cluster bus listens on its port + 10000, so node ports are picked below
//! the kernel's ephemeral range, in `10000..22768` (bus ports `20000..32768`): both the port
//! and the bus port are checked free, and neither can be taken by an outgoing connection's
//! ephemeral port meanwhile.
//!
//! Every wait is bounded; a timeout panics with what the nodes said last: every node's
//! `CLUSTER NODES` view, epochs and the end of its log.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roomcast_core::cluster::{Role, Slot, SlotRange, Topology};
use roomcast_core::Value;

use crate::redis_server::{HarnessError, RedisServer, RespClient, RespReply};

/// Lowest node port tried.
const PORT_LOW: u16 = 10_000;
/// One past the highest node port tried: its bus port stays below the ephemeral range.
const PORT_HIGH: u16 = 22_768;
/// Distance of the cluster bus port from the node port.
const BUS_OFFSET: u16 = 10_000;

/// How long the cluster may take to form, or to settle after a change, on a loaded machine.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `--cluster-node-timeout` of every node, in milliseconds (see [`NODE_TIMEOUT`]).
const NODE_TIMEOUT_MS: u64 = 5000;

/// How long one `CLUSTER FAILOVER` attempt may take before it is made again: a manual
/// failover's own limit (5 s) plus two node timeouts (after which masters vote again).
pub const FAILOVER_ATTEMPT: Duration = Duration::from_millis(5000 + 2 * NODE_TIMEOUT_MS);

/// `--cluster-node-timeout` of every node: a node that does not answer pings for this long
/// is suspected (`fail?`), and failed over once a majority of masters agree.
///
/// Not smaller: on a loaded 2-core machine (CI; load average 4 to 12) a node can get no CPU
/// for a few seconds. A stall longer than the node timeout is taken for a crash: the stalled
/// master is failed over behind the test's back and the cluster goes `cluster_state:fail`
/// while it happens (seen with stalls of 2 to 4 s against a 2 s timeout; stalls shorter
/// than the timeout did nothing). The cost is paid once per test: a master killed without
/// a takeover ([`Promotion::NodeTimeout`]) is replaced about one node timeout later.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(NODE_TIMEOUT_MS);

/// How a replica takes over with `CLUSTER FAILOVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// `CLUSTER FAILOVER`: coordinated with the master, which must be reachable; the old
    /// master sends `sunsubscribe` for every channel of the shard to its subscribers.
    Manual,
    /// `CLUSTER FAILOVER FORCE`: without the master's agreement, with the other masters' vote.
    Force,
    /// `CLUSTER FAILOVER TAKEOVER`: without anyone's agreement (a new epoch on its own).
    Takeover,
}

/// How the replica of a killed master is promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// `CLUSTER FAILOVER TAKEOVER` on the replica right after the kill: fast.
    Takeover,
    /// Nothing: the cluster notices after the node timeout and fails over by itself.
    NodeTimeout,
}

/// A running local Redis Cluster. Stops every node on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .finish()
    }
}

/// A port `p` with `p` and `p + 10000` free on 127.0.0.1 a moment ago, found by scanning
/// from `start` (wrapping within the range).
fn free_cluster_port(start: u16, taken: &[u16]) -> io::Result<u16> {
    let span = PORT_HIGH - PORT_LOW;
    for i in 0..span {
        let p = PORT_LOW + (start.wrapping_sub(PORT_LOW).wrapping_add(i)) % span;
        if taken.contains(&p) {
            continue;
        }
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, p));
        let bus = TcpListener::bind((Ipv4Addr::LOCALHOST, p + BUS_OFFSET));
        if port.is_ok() && bus.is_ok() {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port pair p, p+{BUS_OFFSET} with p in {PORT_LOW}..{PORT_HIGH}"),
    ))
}

/// A starting point for the port scan that differs between processes and runs.
fn scan_start() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
    PORT_LOW + (mix % u32::from(PORT_HIGH - PORT_LOW)) as u16
}

/// Converts a harness reply into the core's [`Value`] (to feed the core's parsers).
pub fn to_value(reply: &RespReply) -> Value {
    let bytes = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    match reply {
        RespReply::Simple(s) => Value::Simple(bytes(s)),
        RespReply::Error(s) => Value::Error(bytes(s)),
        RespReply::Int(n) => Value::Int(*n),
        RespReply::Bulk(Some(b)) => Value::Bulk(Bytes::copy_from_slice(b)),
        RespReply::Bulk(None) | RespReply::Array(None) | RespReply::Null => Value::Nil,
        RespReply::Array(Some(items)) | RespReply::Push(items) => {
            Value::Array(items.iter().map(to_value).collect())
        }
        RespReply::Bool(b) => Value::Bool(*b),
        RespReply::Double(s) => Value::Double(s.parse().unwrap_or(f64::NAN)),
        RespReply::Map(pairs) => Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (to_value(k), to_value(v)))
                .collect(),
        ),
    }
}

/// Runs `redis-cli` with `args`, killing it after `timeout`; its output, or why it failed.
fn redis_cli(args: &[String], timeout: Duration) -> Result<String, HarnessError> {
    let dir = std::env::temp_dir();
    let out_path = dir.join(format!(
        "roomcast-cluster-cli-{}-{}.log",
        std::process::id(),
        scan_start()
    ));
    let out = std::fs::File::create(&out_path)?;
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HarnessError::Missing(
                "redis-cli was not found on PATH: run `bash scripts/test.sh` (it installs it) \
                 or `apt-get install -y redis-tools`"
                    .into(),
            ),
            _ => HarnessError::Io(e),
        })?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(HarnessError::Start(format!(
            "redis-cli {args:?} failed ({s}):\n{output}"
        ))),
        None => Err(HarnessError::Start(format!(
            "redis-cli {args:?} did not finish within {timeout:?}:\n{output}"
        ))),
    }
}

impl RedisCluster {
    /// Starts three masters with one replica each and waits until every node agrees on the
    /// slot map. Panics with a clear message if that fails.
    pub fn start() -> RedisCluster {
        RedisCluster::try_start(3, 1).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `masters` masters with `replicas` replicas each (`masters` at least 3, as
    /// `redis-cli --cluster create` requires).
    pub fn try_start(masters: usize, replicas: usize) -> Result<RedisCluster, HarnessError> {
        let count = masters * (1 + replicas);
        let timeout = NODE_TIMEOUT.as_millis().to_string();
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
            // Replicas stay with their master (no migration to orphaned masters), and may
            // always take over (no data-age check): failovers happen when a test asks.
            "--cluster-allow-replica-migration",
            "no",
            "--cluster-replica-validity-factor",
            "0",
            // Replicas sync at once instead of waiting 5 s for others to share the transfer.
            "--repl-diskless-sync-delay",
            "0",
            // CLUSTER SHARDS calls a replica `loading` until its replication offset moves
            // from 0, which without writes takes the master's first ping (10 s by default).
            "--repl-ping-replica-period",
            "1",
        ];
        let mut nodes: Vec<RedisServer> = Vec::with_capacity(count);
        let mut next = scan_start();
        for _ in 0..count {
            let taken: Vec<u16> = nodes.iter().map(RedisServer::port).collect();
            let mut pick = || {
                let p = free_cluster_port(next, &taken)?;
                next = p + 1;
                Ok(p)
            };
            nodes.push(RedisServer::try_start_picking(
                "redis-server",
                &args,
                &mut pick,
            )?);
        }
        let cluster = RedisCluster { nodes };
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend([
            "--cluster-replicas".to_string(),
            replicas.to_string(),
            "--cluster-yes".to_string(),
        ]);
        redis_cli(&create, SETTLE_TIMEOUT)?;
        cluster.try_wait_stable().map_err(|e| {
            HarnessError::Start(format!(
                "the cluster did not form: {e}\n{}",
                cluster.diagnostics()
            ))
        })?;
        Ok(cluster)
    }

    /// The ports of all nodes, running or not, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The ports of the nodes that run.
    pub fn live_ports(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then(|| n.port()))
            .collect()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The node listening on `port`. Panics if it is not one of this cluster's.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("port {port} is not a node of this cluster"))
    }

    /// A new connection to the node on `port`.
    pub fn client(&self, port: u16) -> RespClient {
        self.node(port).client()
    }

    /// Runs one command on the node on `port`.
    pub fn cmd(&self, port: u16, args: &[&str]) -> RespReply {
        self.node(port).cmd(args)
    }

    /// The node's id (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        let reply = self.cmd(port, &["CLUSTER", "MYID"]);
        reply
            .as_text()
            .unwrap_or_else(|| panic!("CLUSTER MYID on {port} answered {reply:?}"))
    }

    /// The topology as the node on `port` sees it.
    pub fn try_topology_from(&self, port: u16) -> Result<Topology, String> {
        let mut c = self
            .node(port)
            .try_client()
            .map_err(|e| format!("node {port}: {e}"))?;
        let reply = c
            .try_cmd(&["CLUSTER", "SHARDS"])
            .map_err(|e| format!("node {port}: {e}"))?;
        Topology::from_shards_reply(&to_value(&reply)).map_err(|e| format!("node {port}: {e}"))
    }

    /// The topology as the first running node sees it. Panics if none answers.
    pub fn topology(&mut self) -> Topology {
        let mut last = String::from("no node runs");
        for port in self.live_ports() {
            match self.try_topology_from(port) {
                Ok(t) => return t,
                Err(e) => last = e,
            }
        }
        panic!("no node answered CLUSTER SHARDS: {last}")
    }

    /// The port of the master serving `slot`.
    pub fn master_port_of(&mut self, slot: Slot) -> u16 {
        let t = self.topology();
        t.master_of(slot)
            .and_then(|m| m.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {t:?}"))
    }

    /// The ports of the masters that serve slots, in slot order.
    pub fn masters(&mut self) -> Vec<u16> {
        let t = self.topology();
        let mut shards: Vec<_> = t
            .shards()
            .iter()
            .filter_map(|s| Some((s.first_slot()?, s.master.as_ref()?.port?)))
            .collect();
        shards.sort();
        shards.into_iter().map(|(_, p)| p).collect()
    }

    /// The ports of the replicas of the master on `master_port`.
    pub fn replicas_of(&mut self, master_port: u16) -> Vec<u16> {
        let t = self.topology();
        t.shards()
            .iter()
            .filter(|s| s.master.as_ref().and_then(|m| m.port) == Some(master_port))
            .flat_map(|s| s.replicas.iter().filter_map(|r| r.port))
            .collect()
    }

    /// Waits (bounded by [`SETTLE_TIMEOUT`]) until every running node reports
    /// `cluster_state:ok`, sees every slot served by an online master with online replicas,
    /// and all of them agree on which node serves which slot; until no running node is
    /// suspected, failed or unlinked in any view, all agree on the current epoch and on each
    /// master's config epoch (all distinct), and every replica's link to its master is up.
    /// Then the next step starts from a settled, known layout. Returns that topology; on
    /// timeout panics with every node's view ([`RedisCluster::diagnostics`]).
    pub fn wait_stable(&mut self) -> Topology {
        self.try_wait_stable()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// [`RedisCluster::wait_stable`] returning the error.
    pub fn try_wait_stable(&self) -> Result<Topology, String> {
        self.try_wait_stable_where(|_| true, SETTLE_TIMEOUT)
    }

    /// Waits (bounded by [`SETTLE_TIMEOUT`]) until the cluster is stable and the topology
    /// all nodes agree on satisfies `check`; returns it. Panics naming `what` on timeout.
    pub fn wait_stable_where(&self, what: &str, check: impl Fn(&Topology) -> bool) -> Topology {
        self.try_wait_stable_where(check, SETTLE_TIMEOUT)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}\n{}", self.diagnostics()))
    }

    fn try_wait_stable_where(
        &self,
        check: impl Fn(&Topology) -> bool,
        timeout: Duration,
    ) -> Result<Topology, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.stable_view() {
                Ok(t) if check(&t) => return Ok(t),
                Ok(t) => format!("stable, but not as wanted yet: {t:?}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "the cluster did not settle within {timeout:?}; last: {last}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The topology all running nodes agree on, or what is not settled yet.
    fn stable_view(&self) -> Result<Topology, String> {
        let mut running = Vec::new();
        let mut views = Vec::new();
        let mut node_views = Vec::new();
        for node in &self.nodes {
            let port = node.port();
            let Ok(mut c) = node.try_client() else {
                // A stopped node is no part of the view.
                continue;
            };
            let info = c
                .try_cmd(&["CLUSTER", "INFO"])
                .map_err(|e| format!("node {port}: {e}"))?;
            let state = info.as_text().unwrap_or_default();
            if !state.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {port} is not cluster_state:ok"));
            }
            let epoch = info_field(&state, "cluster_current_epoch").unwrap_or_default();
            let nodes = c
                .try_cmd(&["CLUSTER", "NODES"])
                .map_err(|e| format!("node {port}: {e}"))?;
            let nodes = parse_cluster_nodes(&nodes.as_text().unwrap_or_default());
            if nodes.iter().any(|n| n.myself && !n.master) {
                // A replica has finished syncing with its master: a demoted or revived node
                // that is still connecting would fail the next scenario's replica checks.
                let repl = c
                    .try_cmd(&["INFO", "replication"])
                    .map_err(|e| format!("node {port}: {e}"))?;
                let repl = repl.as_text().unwrap_or_default();
                if info_field(&repl, "master_link_status") != Some("up".into()) {
                    return Err(format!("replica {port}: link to its master not up"));
                }
            }
            running.push(port);
            node_views.push((port, epoch, nodes));
            views.push((port, self.try_topology_from(port)?));
        }
        settled_epochs(&running, &node_views)?;
        let mut agreed: Option<(u16, Topology, Layout)> = None;
        for (port, t) in views {
            if !t.is_complete() {
                return Err(format!("node {port} sees slots unserved: {t:?}"));
            }
            // Every running node is an online member of a shard that serves slots (a demoted
            // master must have joined its successor's shard).
            for &member in &running {
                let known = t
                    .shards()
                    .iter()
                    .filter(|s| !s.ranges.is_empty())
                    .flat_map(|s| s.nodes())
                    .any(|n| n.port == Some(member) && n.is_online());
                if !known {
                    return Err(format!(
                        "node {port} does not see {member} online in a shard with slots"
                    ));
                }
            }
            let layout = layout(&t);
            match &agreed {
                None => agreed = Some((port, t, layout)),
                Some((first, _, want)) if *want != layout => {
                    return Err(format!(
                        "nodes {first} and {port} disagree: {want:?} vs {layout:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        agreed
            .map(|(_, t, _)| t)
            .ok_or_else(|| "no node runs".to_string())
    }

    /// Moves `slot` to the master on `to_port`, keys and all: `SETSLOT IMPORTING` on the
    /// target, `SETSLOT MIGRATING` on the source, `MIGRATE` of every key of the slot, then
    /// `SETSLOT NODE` on the target, the source and every other master; waits until every
    /// node agrees. The source's (and its replicas') shard-channel subscribers of the slot
    /// get `sunsubscribe` when the source learns the move.
    pub fn move_slot(&mut self, slot: Slot, to_port: u16) {
        let from_port = self.master_port_of(slot);
        if from_port == to_port {
            return;
        }
        self.begin_slot_move(slot, from_port, to_port);
        self.migrate_keys(slot, from_port, to_port);
        self.finish_slot_move(slot, from_port, to_port);
    }

    /// The first half of [`RedisCluster::move_slot`]: `IMPORTING` on the target, then
    /// `MIGRATING` on the source. The source keeps serving the slot's shard channels.
    pub fn begin_slot_move(&self, slot: Slot, from_port: u16, to_port: u16) {
        let n = slot.to_string();
        let from_id = self.node_id(from_port);
        let to_id = self.node_id(to_port);
        expect_ok(
            self.cmd(to_port, &["CLUSTER", "SETSLOT", &n, "IMPORTING", &from_id]),
            "SETSLOT IMPORTING",
        );
        expect_ok(
            self.cmd(from_port, &["CLUSTER", "SETSLOT", &n, "MIGRATING", &to_id]),
            "SETSLOT MIGRATING",
        );
    }

    /// Moves every key of `slot` from the source to the target with `MIGRATE`, 100 at a time.
    pub fn migrate_keys(&self, slot: Slot, from_port: u16, to_port: u16) {
        let n = slot.to_string();
        let port = to_port.to_string();
        let mut source = self.client(from_port);
        // Bounded: every round moves at least one key or ends.
        for _ in 0..100_000 {
            let keys = source.cmd(&["CLUSTER", "GETKEYSINSLOT", &n, "100"]);
            let keys: Vec<String> = keys
                .as_array()
                .unwrap_or_else(|| panic!("GETKEYSINSLOT answered {keys:?}"))
                .iter()
                .filter_map(RespReply::as_text)
                .collect();
            if keys.is_empty() {
                return;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            expect_ok(source.cmd(&args), "MIGRATE");
        }
        panic!("slot {slot} still had keys after 100,000 MIGRATE rounds");
    }

    /// The second half of [`RedisCluster::move_slot`]: `SETSLOT NODE` on the target, the
    /// source, then every other master; waits until every node agrees.
    pub fn finish_slot_move(&mut self, slot: Slot, from_port: u16, to_port: u16) {
        let n = slot.to_string();
        let to_id = self.node_id(to_port);
        let mut order = vec![to_port, from_port];
        order.extend(
            self.masters()
                .into_iter()
                .filter(|p| *p != to_port && *p != from_port),
        );
        for port in order {
            expect_ok(
                self.cmd(port, &["CLUSTER", "SETSLOT", &n, "NODE", &to_id]),
                "SETSLOT NODE",
            );
        }
        self.wait_stable_where(&format!("slot {slot} served by {to_port}"), |t| {
            t.master_of(slot).and_then(|m| m.port) == Some(to_port)
        });
    }

    /// Has the replica on `replica_port` take over its shard with `CLUSTER FAILOVER` in
    /// `mode`, and waits until it is master in every node's view and the cluster is stable.
    ///
    /// An attempt that does not end within [`FAILOVER_ATTEMPT`] is made again (a manual
    /// failover gives up after 5 s, and the masters refuse to vote again for a shard they
    /// voted on less than two node timeouts ago), within [`SETTLE_TIMEOUT`] in all.
    pub fn failover(&mut self, replica_port: u16, mode: Failover) {
        let mut args = vec!["CLUSTER", "FAILOVER"];
        match mode {
            Failover::Manual => {}
            Failover::Force => args.push("FORCE"),
            Failover::Takeover => args.push("TAKEOVER"),
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let reply = self.cmd(replica_port, &args);
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = self
                .try_wait_stable_where(|t| is_master(t, replica_port), left.min(FAILOVER_ATTEMPT));
            match attempt {
                Ok(_) => return,
                Err(e) if left <= FAILOVER_ATTEMPT || !reply.is_ok() => self.panic_with_log(
                    replica_port,
                    &format!("{args:?} on {replica_port} answered {reply:?}; {e}"),
                ),
                Err(_) => {}
            }
        }
    }

    /// Kills (SIGKILL) the master on `port`, has one of its replicas promoted as `promotion`
    /// says, and waits until the running nodes agree on the new master. Returns its port.
    pub fn kill_master(&mut self, port: u16, promotion: Promotion) -> u16 {
        let replica = *self
            .replicas_of(port)
            .first()
            .unwrap_or_else(|| panic!("master {port} has no replica to promote"));
        self.node_mut(port).stop();
        if promotion == Promotion::Takeover {
            expect_ok(
                self.cmd(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]),
                "CLUSTER FAILOVER TAKEOVER",
            );
        }
        self.wait_master(replica);
        replica
    }

    /// Starts a stopped node again (same port, same `nodes.conf`) and waits until the cluster
    /// is stable with it: an old master comes back as a replica of its successor.
    pub fn revive(&mut self, port: u16) {
        self.node_mut(port).start_again();
        self.wait_stable();
    }

    /// Waits until the cluster is stable (see [`RedisCluster::wait_stable`]) with `port` as
    /// the master of a shard that serves slots. On timeout, panics with the end of the
    /// node's log.
    fn wait_master(&mut self, port: u16) {
        if let Err(e) = self.try_wait_stable_where(|t| is_master(t, port), SETTLE_TIMEOUT) {
            self.panic_with_log(port, &format!("waiting for {port} to be a master: {e}"));
        }
    }

    fn panic_with_log(&self, port: u16, message: &str) -> ! {
        panic!(
            "{message}\nthe log of {port} ends:\n{}\n{}",
            log_tail(&self.node(port).log(), 30),
            self.diagnostics()
        );
    }

    /// What every node says about the cluster, for failure messages: per node, its
    /// `cluster_state` and epochs (`CLUSTER INFO`), its `CLUSTER NODES` view, and the end of
    /// its log (a stopped node: only the log).
    pub fn diagnostics(&self) -> String {
        let mut out = String::from("every node's view:");
        for node in &self.nodes {
            let port = node.port();
            out.push_str(&format!("\n--- node {port}"));
            match node.try_client() {
                Err(e) => out.push_str(&format!(" (not answering: {e})")),
                Ok(mut c) => {
                    let mut ask = |args: &[&str]| match c.try_cmd(args) {
                        Ok(r) => r.as_text().unwrap_or_else(|| format!("{r:?}")),
                        Err(e) => format!("{args:?} failed: {e}"),
                    };
                    let info = ask(&["CLUSTER", "INFO"]);
                    let keep = ["cluster_state", "current_epoch", "my_epoch", "known_nodes"];
                    let summary: Vec<&str> = info
                        .lines()
                        .map(str::trim)
                        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
                        .collect();
                    let repl = ask(&["INFO", "replication"]);
                    let link = info_field(&repl, "master_link_status")
                        .map(|l| format!(" master_link_status:{l}"))
                        .unwrap_or_default();
                    out.push_str(&format!(" {}{link}\n", summary.join(" ")));
                    out.push_str(ask(&["CLUSTER", "NODES"]).trim_end());
                }
            }
            out.push_str(&format!(
                "\nits log ends:\n{}",
                log_tail(&node.log(), DIAGNOSTIC_LOG_LINES)
            ));
        }
        out
    }
}

/// Whether the node on `port` is the master of a shard that serves slots.
fn is_master(t: &Topology, port: u16) -> bool {
    t.shards().iter().any(|s| {
        !s.ranges.is_empty()
            && s.master
                .as_ref()
                .is_some_and(|m| m.port == Some(port) && m.role == Role::Master)
    })
}

/// Each shard that serves slots: its slot ranges, master port and replica ports (sorted).
type Layout = Vec<(Vec<SlotRange>, Option<u16>, Vec<u16>)>;

/// The cluster's layout in one node's view, for comparing views.
fn layout(t: &Topology) -> Layout {
    let mut out: Layout = t
        .shards()
        .iter()
        .filter(|s| !s.ranges.is_empty())
        .map(|s| {
            let mut ranges = s.ranges.clone();
            ranges.sort();
            let mut replicas: Vec<u16> = s.replicas.iter().filter_map(|r| r.port).collect();
            replicas.sort();
            (ranges, s.master.as_ref().and_then(|m| m.port), replicas)
        })
        .collect();
    out.sort();
    out
}

/// One line of `CLUSTER NODES`: what one node says about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    id: String,
    port: Option<u16>,
    myself: bool,
    master: bool,
    /// `fail`, `fail?`, `handshake` or `noaddr`.
    troubled: bool,
    config_epoch: u64,
    connected: bool,
    serves_slots: bool,
}

/// Parses `CLUSTER NODES` (`id ip:port@bus flags master ping pong epoch link slots...`);
/// lines that do not parse are left out.
fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok());
            let flags: Vec<&str> = f[2].split(',').collect();
            Some(NodeLine {
                id: f[0].to_string(),
                port,
                myself: flags.contains(&"myself"),
                master: flags.contains(&"master"),
                troubled: flags
                    .iter()
                    .any(|x| ["fail", "fail?", "handshake", "noaddr"].contains(x)),
                config_epoch: f[6].parse().ok()?,
                connected: f[7] == "connected",
                serves_slots: f.len() > 8,
            })
        })
        .collect()
}

/// The value of `field:value` in an `INFO`-style text.
fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| *k == field)
        .map(|(_, v)| v.to_string())
}

/// Each slot-serving master's id and config epoch, in one node's view.
type MasterEpochs = Vec<(String, u64)>;

/// Checks that the running nodes' `CLUSTER NODES` views are settled: every running node
/// sees every other running node connected and without failure flags, all agree on the
/// current epoch and on each slot-serving master's config epoch, and those epochs are
/// distinct (a collision, e.g. after two `TAKEOVER`s, is resolved by the nodes within a few
/// pings; a failover started before that may be refused).
fn settled_epochs(running: &[u16], views: &[(u16, String, Vec<NodeLine>)]) -> Result<(), String> {
    let mut first: Option<(u16, &str, MasterEpochs)> = None;
    for (port, epoch, nodes) in views {
        for n in nodes {
            let Some(p) = n.port.filter(|p| running.contains(p)) else {
                continue;
            };
            if n.troubled || !(n.myself || n.connected) {
                return Err(format!(
                    "node {port} sees running node {p} as failing or unlinked"
                ));
            }
        }
        let mut masters: MasterEpochs = nodes
            .iter()
            .filter(|n| n.master && n.serves_slots)
            .map(|n| (n.id.clone(), n.config_epoch))
            .collect();
        masters.sort();
        let mut epochs: Vec<u64> = masters.iter().map(|m| m.1).collect();
        epochs.sort_unstable();
        epochs.dedup();
        if epochs.len() != masters.len() {
            return Err(format!(
                "node {port} sees masters sharing a config epoch: {masters:?}"
            ));
        }
        match &first {
            None => first = Some((*port, epoch, masters)),
            Some((p0, e0, m0)) if *e0 != epoch || *m0 != masters => {
                return Err(format!(
                    "nodes {p0} and {port} disagree on epochs: current {e0} vs {epoch}, \
                     masters {m0:?} vs {masters:?}"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// How many lines of each node's log [`RedisCluster::diagnostics`] shows.
const DIAGNOSTIC_LOG_LINES: usize = 15;

/// The last `lines` lines of `log`.
fn log_tail(log: &str, lines: usize) -> String {
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn expect_ok(reply: RespReply, what: &str) {
    assert!(
        reply.is_ok() || reply.as_text().as_deref() == Some("NOKEY"),
        "{what} answered {reply:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_port_pairs_in_range() {
        let p = free_cluster_port(PORT_HIGH - 1, &[]).expect("a free pair");
        assert!((PORT_LOW..PORT_HIGH).contains(&p));
        assert!(p + BUS_OFFSET < 32_768);
        let q = free_cluster_port(p, &[p]).expect("another pair");
        assert_ne!(p, q);
        assert!((PORT_LOW..PORT_HIGH).contains(&scan_start()));
    }

    #[test]
    fn reads_cluster_nodes_lines() {
        let text = "a1 127.0.0.1:10001@20001 myself,master - 0 0 7 connected 0-5460\n\
                    b2 127.0.0.1:10002@20002 slave,fail? a1 1 2 7 disconnected\n\
                    c3 :0@0 master,noaddr - 1 2 3 disconnected\n\
                    garbage\n";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].myself && nodes[0].master && nodes[0].serves_slots);
        assert_eq!((nodes[0].port, nodes[0].config_epoch), (Some(10001), 7));
        assert!(nodes[1].troubled && !nodes[1].master && !nodes[1].connected);
        assert!(nodes[2].troubled && !nodes[2].serves_slots);
        assert_eq!(
            info_field(
                "x:1\r\ncluster_current_epoch:9\r\n",
                "cluster_current_epoch"
            ),
            Some("9".into())
        );
        // Two running nodes agreeing, except on one master's epoch: not settled.
        let view = |epoch: &str| {
            let t =
                format!("a1 127.0.0.1:10001@20001 myself,master - 0 0 {epoch} connected 0-5460");
            parse_cluster_nodes(&t)
        };
        let agree = [
            (10001, "7".to_string(), view("7")),
            (10002, "7".to_string(), view("7")),
        ];
        assert!(settled_epochs(&[10001], &agree).is_ok());
        let differ = [
            (10001, "7".to_string(), view("7")),
            (10002, "7".to_string(), view("6")),
        ];
        assert!(settled_epochs(&[10001], &differ).is_err());
        let failing = [(10001, "7".to_string(), nodes.clone())];
        assert!(settled_epochs(&[10001, 10002], &failing).is_err());
    }

    #[test]
    fn converts_replies_to_core_values() {
        let r = RespReply::Map(vec![(
            RespReply::Bulk(Some(b"slots".to_vec())),
            RespReply::Array(Some(vec![RespReply::Int(0), RespReply::Null])),
        )]);
        assert_eq!(
            to_value(&r),
            Value::Map(vec![(
                Value::Bulk(Bytes::from_static(b"slots")),
                Value::Array(vec![Value::Int(0), Value::Nil])
            )])
        );
    }
}
