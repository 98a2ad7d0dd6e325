//! A model of redis-server 7.0.15 for deterministic tests: a pure state machine with no
//! sockets, clocks or threads.
//!
//! Connections ([`ClientId`]) feed it request bytes with [`ModelRedis::input`] and read
//! what the server would write back with [`ModelRedis::take_output`]. Time is virtual:
//! every input carries a `now`, and [`ModelRedis::advance`] moves the clock without input.
//! For what it implements it answers byte for byte like redis-server 7.0.15; this is
//! checked by replaying transcripts captured from the real server
//! (`tests/sim/tests/transcripts/`, see its README).
//!
//! # What it implements
//! - Request reading as Redis does it (multibulk and inline, pipelining, partial input,
//!   its limits and its `Protocol error` texts, after which the connection closes).
//! - Connection: `HELLO`, `AUTH` (requirepass and ACL users), `SELECT`, `CLIENT
//!   SETNAME|GETNAME|ID`, `PING`, `ECHO`, `QUIT`, `RESET`.
//! - Pub/sub: `(S)SUBSCRIBE`, `(S)UNSUBSCRIBE`, `PUBLISH`, `SPUBLISH`, `PUBSUB
//!   CHANNELS|NUMSUB|SHARDCHANNELS|SHARDNUMSUB`, RESP2 arrays and RESP3 pushes, and the
//!   RESP2 subscribed-mode restriction. Pattern subscriptions (`PSUBSCRIBE`, `pmessage`)
//!   are not modelled: roomcast never uses them.
//! - Keys with TTLs: `GET SET DEL EXISTS EXPIRE PEXPIRE TTL PTTL PERSIST TYPE KEYS DBSIZE
//!   FLUSHDB FLUSHALL HSET HGET HDEL HGETALL HLEN SADD SREM SMEMBERS SCARD SISMEMBER`.
//! - Scripts: `SCRIPT LOAD|EXISTS|FLUSH`, `EVAL`, `EVALSHA` (`NOSCRIPT` for unknown SHAs).
//!   There is no Lua: a script runs only if a native implementation was registered for
//!   its source with [`ModelRedis::register_script_impl`].
//! - Redis Cluster: [`ModelCluster`] groups model nodes into shards over a slot table;
//!   a node then routes commands by hash slot (`-MOVED`, `-CROSSSLOT`, `-CLUSTERDOWN`),
//!   answers `CLUSTER SHARDS|KEYSLOT|MYID` and carries `PUBLISH`/`SPUBLISH` to the other
//!   nodes (see the [`cluster`] module). A server on its own answers `CLUSTER` with
//!   Redis's "cluster support disabled" error.
//!
//! That is what roomcast sends, what tests inject and what they use to look at the server's
//! state; every other name, including Redis commands the model leaves out, gets Redis's
//! `unknown command` (or `unknown subcommand`) error.
//!
//! # Known differences from redis-server
//! - No active expiry: expired keys vanish when touched; `DBSIZE`/`KEYS` count live keys.
//! - Hash fields always keep insertion order and non-intset set members come in
//!   insertion order; Redis uses hash-table order once a hash or set outgrows its compact
//!   encoding (where the order is unspecified anyway).
//! - `UNSUBSCRIBE` with no arguments confirms in subscription order (Redis: hash-table
//!   order); [`ModelRedis::shuffle_unsubscribe_confirmations`] reorders on purpose.
//! - Client ids start at 1 and only count the model's connections.
//! - Output limits count encoded bytes (Redis counts allocated memory); input beyond
//!   [`Limits::max_query_buffer`] closes the connection, also while it is stalled.
//! - With `hello_supported: false` only `HELLO` (unknown) and the unknown-command text
//!   (Redis 5's backquoted form, as Redis-derived sources print it; not captured from
//!   a Redis 5 server) change; `AUTH user pass`, `RESET` and the rest stay 7.0.
//! - Script errors raised through [`Keyspace::call`] lack Redis's `script: <sha>, on
//!   @user_script:<line>.` suffix.

pub mod cluster;
mod command_table;
mod dispatch;
mod glob;
mod keyspace;
mod ordered;
mod pubsub;
mod reply;
mod request;
mod sha1;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transcript_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

pub use cluster::{
    crc16_xmodem, slot_of, ClusterLayout, ClusterNode, ModelCluster, NodeRole, Refused, SLOTS,
};
pub use glob::glob_match;
pub use keyspace::{Keyspace, SetValue, Value};
pub use ordered::{OrderedMap, OrderedSet};
pub use reply::{Protocol, Reply};
pub use sha1::sha1_hex;

use request::RequestReader;

/// Virtual Unix time (milliseconds) at the first `now` the model sees. Only absolute
/// expiry times (`EXAT`, `PXAT`) and overflow checks can tell.
pub const VIRTUAL_UNIX_EPOCH_MS: i64 = 1_700_000_000_000;

/// Number of databases (`databases 16`).
pub const DATABASES: usize = 16;

/// A native stand-in for a Lua script: `(database, KEYS, ARGV, now) -> reply`. The
/// database is the calling connection's; use [`Keyspace::call`] like `redis.call`.
pub type ScriptFn = fn(&mut Keyspace, &[Vec<u8>], &[Vec<u8>], Instant) -> Reply;

/// A connection to the model server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u32);

/// Server configuration. Construct with `..ModelConfig::default()` to stay compatible
/// with fields added later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// `requirepass`: the default user's password (`None`: no password, `nopass`).
    pub requirepass: Option<String>,
    /// ACL users `(name, password)`, each `on` with all keys, channels and commands. An
    /// entry named `default` adds a password to the default user.
    pub users: Vec<(String, String)>,
    /// `false` behaves like Redis 5 for the handshake: `HELLO` is an unknown command and
    /// unknown-command errors use Redis 5's text.
    pub hello_supported: bool,
    /// `true` answers `HELLO` with `mode cluster`, as a Redis Cluster node does (the
    /// commands themselves stay those of one server: only the handshake's check of the
    /// server's mode is modelled).
    pub cluster_mode: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            requirepass: None,
            users: Vec::new(),
            hello_supported: true,
            cluster_mode: false,
        }
    }
}

/// Per-connection buffer limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Unprocessed input beyond this closes the connection without a reply, like
    /// `client-query-buffer-max-len` (Redis: 1 GiB; model default: 64 MiB).
    pub max_query_buffer: usize,
    /// `client-output-buffer-limit pubsub` hard limit (32 MiB): unread output of a
    /// subscribed connection at or above it closes the connection.
    pub pubsub_hard: usize,
    /// Soft limit for subscribed connections (8 MiB) ...
    pub pubsub_soft: usize,
    /// ... closing the connection once exceeded for more than this many seconds (60).
    pub pubsub_soft_seconds: i64,
    /// Unread output of other connections at or above this closes them. Redis has no
    /// limit for normal clients; the model bounds memory (default: 256 MiB).
    pub normal_hard: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_query_buffer: 64 << 20,
            pubsub_hard: 32 << 20,
            pubsub_soft: 8 << 20,
            pubsub_soft_seconds: 60,
            normal_hard: 256 << 20,
        }
    }
}

#[derive(Debug)]
struct Client {
    server_id: i64,
    open: bool,
    reader: RequestReader,
    output: Vec<u8>,
    /// Bytes of output taken so far: `taken + output.len()` is the stream offset of the end
    /// of `output`.
    taken: u64,
    proto: Protocol,
    db: usize,
    authenticated: bool,
    user: Vec<u8>,
    name: Option<Vec<u8>>,
    channels: OrderedSet,
    shard_channels: OrderedSet,
    stalled: bool,
    soft_limit_since_s: Option<i64>,
    /// Inside MULTI: the queued commands, and whether one was refused (EXECABORT).
    multi: Option<(Vec<Queued>, bool)>,
}

/// A command queued inside MULTI: its resolved name and arguments.
type Queued = (String, Vec<Vec<u8>>);

impl Client {
    fn total_subscriptions(&self) -> usize {
        self.channels.len() + self.shard_channels.len()
    }
}

/// Fault injection switches.
#[derive(Debug, Default)]
struct Faults {
    duplicate_subscribe: bool,
    shuffle_unsubscribe: Option<u64>,
    /// Shard subscriptions counted but never delivered to (redis/redis#12558).
    deaf_shard: BTreeSet<(ClientId, Vec<u8>)>,
}

/// The model server. See the module docs for what it implements.
#[derive(Debug)]
pub struct ModelRedis {
    cfg: ModelConfig,
    limits: Limits,
    clients: BTreeMap<ClientId, Client>,
    next_client: u32,
    next_server_id: i64,
    dbs: Vec<Keyspace>,
    channels: BTreeMap<Vec<u8>, BTreeSet<ClientId>>,
    shard_channels: BTreeMap<Vec<u8>, BTreeSet<ClientId>>,
    scripts: BTreeMap<String, Vec<u8>>,
    script_impls: HashMap<Vec<u8>, ScriptFn>,
    epoch: Option<Instant>,
    now: Option<Instant>,
    now_ms: i64,
    faults: Faults,
    /// Fan-outs of messages since the last [`ModelRedis::take_fanouts`], when recording.
    fanouts: Option<Vec<Fanout>>,
    next_fanout: u64,
    /// As a node of a [`ModelCluster`]: what it knows of the cluster.
    cluster: Option<Box<cluster::NodeView>>,
    /// As a node of a [`ModelCluster`]: messages for the other nodes.
    bus: Vec<cluster::Bus>,
    /// The version `HELLO` reports.
    version: String,
    /// `-MOVED` replies sent (cluster node).
    moved_sent: u64,
}

/// One `PUBLISH` or `SPUBLISH` as the server executed it: which message went to which
/// connections, and where in each connection's output stream it ends. A test harness that
/// counts the bytes it hands over knows from this when a receiver has taken the message in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fanout {
    /// Execution order among all fan-outs of this server, from 0.
    pub seq: u64,
    /// The channel.
    pub channel: Vec<u8>,
    /// The payload.
    pub payload: Vec<u8>,
    /// Each receiving connection, with the offset in its output stream (bytes ever queued
    /// for it, see [`ModelRedis::output_taken`]) just after the message.
    pub to: Vec<(ClientId, u64)>,
}

impl ModelRedis {
    /// A fresh server with default [`Limits`].
    pub fn new(cfg: ModelConfig) -> Self {
        ModelRedis {
            cfg,
            limits: Limits::default(),
            clients: BTreeMap::new(),
            next_client: 1,
            next_server_id: 1,
            dbs: vec![Keyspace::new(); DATABASES],
            channels: BTreeMap::new(),
            shard_channels: BTreeMap::new(),
            scripts: BTreeMap::new(),
            script_impls: HashMap::new(),
            epoch: None,
            now: None,
            now_ms: VIRTUAL_UNIX_EPOCH_MS,
            faults: Faults::default(),
            fanouts: None,
            next_fanout: 0,
            cluster: None,
            bus: Vec::new(),
            version: "7.0.15".into(),
            moved_sent: 0,
        }
    }

    /// Starts (or stops) recording every message fan-out for [`ModelRedis::take_fanouts`].
    pub fn record_fanouts(&mut self, on: bool) {
        self.fanouts = on.then(Vec::new);
    }

    /// The fan-outs recorded since the last call, in execution order.
    pub fn take_fanouts(&mut self) -> Vec<Fanout> {
        self.fanouts
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Bytes of `c`'s output taken with [`ModelRedis::take_output`] so far: the stream
    /// offset at which the next [`ModelRedis::take_output`] starts.
    pub fn output_taken(&self, c: ClientId) -> u64 {
        self.clients.get(&c).map_or(0, |cl| cl.taken)
    }

    /// Records a fan-out of `payload` on `channel` to `to` (already emitted), if recording.
    fn record_fanout(&mut self, channel: &[u8], payload: &[u8], to: &[ClientId]) {
        if self.fanouts.is_none() {
            return;
        }
        let to = to
            .iter()
            .filter_map(|c| {
                let cl = self.clients.get(c).filter(|cl| cl.open)?;
                Some((*c, cl.taken + cl.output.len() as u64))
            })
            .collect();
        let seq = self.next_fanout;
        self.next_fanout += 1;
        if let Some(log) = self.fanouts.as_mut() {
            log.push(Fanout {
                seq,
                channel: channel.to_vec(),
                payload: payload.to_vec(),
                to,
            });
        }
    }

    /// The configuration the server was created with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Makes `HELLO` report `version` instead of 7.0.15 (nothing else changes: this tests a
    /// client's version check, not an older server).
    pub fn set_version(&mut self, version: &str) {
        self.version = version.into();
    }

    /// Current buffer limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Replaces the buffer limits (applies from the next input or output).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    // ------------------------------------------------------------------ connections

    /// Opens a connection: RESP2, database 0, authenticated as `default` unless the
    /// default user has a password.
    pub fn connect(&mut self) -> ClientId {
        let id = ClientId(self.next_client);
        self.next_client = self.next_client.wrapping_add(1).max(1);
        let server_id = self.next_server_id;
        self.next_server_id += 1;
        let authenticated = self.default_user_nopass();
        self.clients.insert(
            id,
            Client {
                server_id,
                open: true,
                reader: RequestReader::default(),
                output: Vec::new(),
                taken: 0,
                proto: Protocol::Resp2,
                db: 0,
                authenticated,
                user: b"default".to_vec(),
                name: None,
                channels: OrderedSet::new(),
                shard_channels: OrderedSet::new(),
                stalled: false,
                soft_limit_since_s: None,
                multi: None,
            },
        );
        id
    }

    /// Bytes from connection `c`, received at `now`. Every complete request is
    /// executed in order (unless the connection is stalled); a partial one waits for
    /// more. Ignored for a closed or unknown connection.
    pub fn input(&mut self, c: ClientId, bytes: &[u8], now: Instant) {
        self.advance(now);
        let Some(cl) = self.clients.get_mut(&c) else {
            return;
        };
        if !cl.open {
            return;
        }
        cl.reader.push(bytes);
        if !cl.stalled {
            self.process(c);
        }
        self.check_query_buffer(c);
    }

    /// What the server wrote to `c` since the last call. After the connection closed
    /// (QUIT, protocol error) this returns its last bytes once, then nothing. While `c`
    /// is stalled it returns nothing (output accumulates, subject to the limits).
    pub fn take_output(&mut self, c: ClientId) -> Vec<u8> {
        let Some(cl) = self.clients.get_mut(&c) else {
            return Vec::new();
        };
        if cl.open && cl.stalled {
            return Vec::new();
        }
        let out = std::mem::take(&mut cl.output);
        cl.taken += out.len() as u64;
        if !cl.open {
            self.clients.remove(&c);
        }
        out
    }

    /// Closes `c` like `CLIENT KILL`: unsent output is dropped, subscriptions end.
    pub fn kill(&mut self, c: ClientId) {
        self.close(c, false);
    }

    /// Whether `c` is open.
    pub fn is_open(&self, c: ClientId) -> bool {
        self.clients.get(&c).is_some_and(|cl| cl.open)
    }

    /// Stalls or resumes `c`. While stalled, its input is buffered but not executed and
    /// its output is held back, as if the server were busy (`DEBUG SLEEP`) for this
    /// connection only. Resuming executes what was buffered.
    pub fn set_stalled(&mut self, c: ClientId, stalled: bool) {
        let Some(cl) = self.clients.get_mut(&c) else {
            return;
        };
        cl.stalled = stalled;
        if !stalled && cl.open {
            self.process(c);
            self.check_query_buffer(c);
        }
    }

    /// Whether `c` is stalled.
    pub fn is_stalled(&self, c: ClientId) -> bool {
        self.clients.get(&c).is_some_and(|cl| cl.stalled)
    }

    /// Restarts the server: every connection closes (unsent output dropped), keys and
    /// loaded scripts are gone, client ids start again. Configuration, limits, fault
    /// switches and registered script implementations stay.
    pub fn restart(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for c in ids {
            self.close(c, false);
        }
        self.clients.clear();
        for db in &mut self.dbs {
            db.clear();
        }
        self.scripts.clear();
        self.next_server_id = 1;
    }

    /// Open connections.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients
            .iter()
            .filter(|(_, cl)| cl.open)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The name set with `CLIENT SETNAME` / `HELLO ... SETNAME`.
    pub fn name_of(&self, c: ClientId) -> Option<String> {
        let cl = self.clients.get(&c).filter(|cl| cl.open)?;
        cl.name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n).into_owned())
    }

    /// The protocol `c` speaks.
    pub fn protocol_of(&self, c: ClientId) -> Option<Protocol> {
        self.clients.get(&c).filter(|cl| cl.open).map(|cl| cl.proto)
    }

    /// The database `c` has selected.
    pub fn db_of(&self, c: ClientId) -> Option<usize> {
        self.clients.get(&c).filter(|cl| cl.open).map(|cl| cl.db)
    }

    /// Whether `c` is authenticated.
    pub fn is_authenticated(&self, c: ClientId) -> bool {
        self.clients
            .get(&c)
            .is_some_and(|cl| cl.open && cl.authenticated)
    }

    /// The id Redis would report for `c` (`CLIENT ID`, `HELLO`).
    pub fn server_id_of(&self, c: ClientId) -> Option<i64> {
        self.clients
            .get(&c)
            .filter(|cl| cl.open)
            .map(|cl| cl.server_id)
    }

    /// Unprocessed input bytes held for `c`.
    pub fn buffered_input(&self, c: ClientId) -> usize {
        self.clients.get(&c).map_or(0, |cl| cl.reader.held())
    }

    /// Output bytes waiting for `c` to take them.
    pub fn pending_output(&self, c: ClientId) -> usize {
        self.clients.get(&c).map_or(0, |cl| cl.output.len())
    }

    // ------------------------------------------------------------------ time

    /// Moves the virtual clock to `now` (a `now` earlier than the last one is ignored).
    pub fn advance(&mut self, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let now = match self.now {
            Some(last) if last > now => last,
            _ => now,
        };
        self.now = Some(now);
        let elapsed = now.saturating_duration_since(epoch).as_millis();
        let elapsed = i64::try_from(elapsed).unwrap_or(i64::MAX / 2);
        self.now_ms = VIRTUAL_UNIX_EPOCH_MS.saturating_add(elapsed);
        for db in &mut self.dbs {
            db.set_now_ms(self.now_ms);
        }
    }

    /// The virtual Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    // ------------------------------------------------------------------ fault injection

    /// While on, every subscribe confirmation (`subscribe`,
    /// `ssubscribe`) is sent twice.
    pub fn duplicate_subscribe_confirmations(&mut self, on: bool) {
        self.faults.duplicate_subscribe = on;
    }

    /// With a seed, every `(P|S)UNSUBSCRIBE` handles (and confirms) its channels in a
    /// pseudo-random order drawn from the seed, with running counts that match that
    /// order, as Redis may for unsubscribe-all. `None` restores the default order.
    pub fn shuffle_unsubscribe_confirmations(&mut self, seed: Option<u64>) {
        self.faults.shuffle_unsubscribe = seed;
    }

    // ------------------------------------------------------------------ inspection

    /// Channels with at least one subscriber, sorted.
    pub fn channels(&self) -> Vec<Vec<u8>> {
        self.channels.keys().cloned().collect()
    }

    /// Number of connections subscribed to `channel`.
    pub fn numsub(&self, channel: &[u8]) -> usize {
        self.channels.get(channel).map_or(0, |s| s.len())
    }

    /// Channels `c` is subscribed to, in subscription order.
    pub fn subscriptions_of(&self, c: ClientId) -> Vec<Vec<u8>> {
        self.clients.get(&c).map_or_else(Vec::new, |cl| {
            cl.channels.keys().map(<[u8]>::to_vec).collect()
        })
    }

    /// Shard channels `c` is subscribed to, in subscription order.
    pub fn shard_subscriptions_of(&self, c: ClientId) -> Vec<Vec<u8>> {
        self.clients.get(&c).map_or_else(Vec::new, |cl| {
            cl.shard_channels.keys().map(<[u8]>::to_vec).collect()
        })
    }

    /// Database `db` (panics if `db >= DATABASES`).
    pub fn keyspace(&self, db: usize) -> &Keyspace {
        &self.dbs[db]
    }

    /// Database `db`, to seed or inspect keys directly (panics if `db >= DATABASES`).
    pub fn keyspace_mut(&mut self, db: usize) -> &mut Keyspace {
        &mut self.dbs[db]
    }

    /// SHAs of the loaded scripts, sorted.
    pub fn loaded_scripts(&self) -> Vec<String> {
        self.scripts.keys().cloned().collect()
    }

    // ------------------------------------------------------------------ scripts

    /// Registers the native implementation run by `EVAL`/`EVALSHA` for a script whose
    /// source is exactly `script_source`. Survives [`ModelRedis::restart`] (it stands for
    /// Lua semantics, not server state); loading the script is still up to the client.
    pub fn register_script_impl(&mut self, script_source: &str, f: ScriptFn) {
        self.script_impls
            .insert(script_source.as_bytes().to_vec(), f);
    }

    /// Publishes like a `PUBLISH` from outside any connection; returns the receiver
    /// count.
    pub fn publish(&mut self, channel: &[u8], payload: &[u8]) -> usize {
        self.deliver(channel, payload)
    }

    // ------------------------------------------------------------------ internals

    fn default_passwords(&self) -> impl Iterator<Item = &str> + '_ {
        self.cfg.requirepass.as_deref().into_iter().chain(
            self.cfg
                .users
                .iter()
                .filter(|(u, _)| u == "default")
                .map(|(_, p)| p.as_str()),
        )
    }

    fn default_user_nopass(&self) -> bool {
        self.default_passwords().next().is_none()
    }

    fn auth_required(&self, c: ClientId) -> bool {
        self.clients
            .get(&c)
            .is_some_and(|cl| !cl.authenticated && !self.default_user_nopass())
    }

    /// Whether `user` / `password` log in (ACL semantics: `nopass` accepts anything).
    fn credentials_ok(&self, user: &[u8], password: &[u8]) -> bool {
        if user == b"default" {
            return self.default_user_nopass()
                || self.default_passwords().any(|p| p.as_bytes() == password);
        }
        self.cfg
            .users
            .iter()
            .any(|(u, p)| u.as_bytes() == user && p.as_bytes() == password)
    }

    fn process(&mut self, c: ClientId) {
        loop {
            let auth_required = self.auth_required(c);
            let Some(cl) = self.clients.get_mut(&c) else {
                return;
            };
            if !cl.open || cl.stalled {
                return;
            }
            match cl.reader.next(auth_required) {
                request::Parsed::NeedMore => return,
                request::Parsed::Empty => {}
                request::Parsed::Command(argv) => self.execute(c, argv),
                request::Parsed::Error(msg) => {
                    let mut text = b"Protocol error: ".to_vec();
                    text.extend_from_slice(&msg);
                    self.emit(c, &Reply::error(text));
                    self.close(c, true);
                    return;
                }
            }
        }
    }

    fn check_query_buffer(&mut self, c: ClientId) {
        let over = self
            .clients
            .get(&c)
            .is_some_and(|cl| cl.open && cl.reader.held() > self.limits.max_query_buffer);
        if over {
            self.close(c, false);
        }
    }

    /// Writes `reply` to `c` (if open) and enforces the output limits.
    fn emit(&mut self, c: ClientId, reply: &Reply) {
        let Some(cl) = self.clients.get_mut(&c) else {
            return;
        };
        if !cl.open {
            return;
        }
        reply.encode(cl.proto, &mut cl.output);
        let len = cl.output.len();
        let l = self.limits;
        let now_s = self.now_ms / 1000;
        let over = if cl.total_subscriptions() > 0 {
            let mut over = len >= l.pubsub_hard;
            if len >= l.pubsub_soft {
                match cl.soft_limit_since_s {
                    None => cl.soft_limit_since_s = Some(now_s),
                    Some(t) => over |= now_s - t > l.pubsub_soft_seconds,
                }
            } else {
                cl.soft_limit_since_s = None;
            }
            over
        } else {
            len >= l.normal_hard
        };
        if over {
            self.close(c, false);
        }
    }

    /// Closes `c`; `keep_output` leaves unsent output for one last `take_output`.
    fn close(&mut self, c: ClientId, keep_output: bool) {
        self.drop_all_subscriptions(c);
        let Some(cl) = self.clients.get_mut(&c) else {
            return;
        };
        cl.open = false;
        cl.reader.clear();
        if !keep_output {
            cl.output.clear();
        }
        if cl.output.is_empty() {
            self.clients.remove(&c);
        }
    }
}

/// `args` as one RESP command (an array of bulk strings), as a client sends it to the model.
pub fn command_bytes(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}
