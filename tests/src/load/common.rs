//! What every system's worker shares: the job description, results, process statistics,
//! the payload layout, delivery tracking and end-to-end flow control.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::cluster::BusSnapshot;

/// One scenario run by one system in one worker process.
#[derive(Debug, Clone)]
pub struct Job {
    /// `S1` .. `S6`.
    pub scenario: String,
    /// `roomcast`, `redis-benchmark`, `redis-rs`, `fred`.
    pub system: String,
    /// Variant within the scenario (`1room`, `rooms`, `one-in-flight`, `paced`, ...).
    pub variant: String,
    /// Payload bytes.
    pub size: usize,
    /// Rooms (channels).
    pub rooms: usize,
    /// Messages to publish (or rooms to join, members to add: per scenario).
    pub count: u64,
    /// Wall-clock limit of the measured phase.
    pub limit: Duration,
    /// `redis://127.0.0.1:PORT`.
    pub url: String,
    /// The server's pid when it is ours (for its CPU time).
    pub server_pid: Option<u32>,
    /// Target publish rate (S2 paced), messages/s.
    pub rate: f64,
    /// Members or subscriber connections receiving every message (S1, S2).
    pub receivers: usize,
    /// Members in the fan-out room (S4).
    pub members: usize,
    /// The in-flight depth: publishes not yet delivered everywhere that a publisher may have
    /// outstanding (closed loop), or the pipeline depth of `redis-benchmark` (`-P` times
    /// `-c`).
    pub window: u64,
    /// Publishing connections of `redis-benchmark` (`-c`); 1 for every other system.
    pub clients: usize,
    /// Messages a receiving member's queue holds (roomcast's `Options::member_queue`; 0 for
    /// the scenario's own choice).
    pub queue: usize,
    /// Bytes a receiving member's queue holds (roomcast's `Options::member_queue_bytes`; 0
    /// for no byte bound, only the count).
    pub queue_bytes: usize,
    /// Channel prefix (distinct per worker, so nothing leaks between runs).
    pub prefix: String,
    /// Cluster mode: every node of the cluster `url` names (`redis+cluster://`), with its
    /// pid when the cluster is ours (for its CPU time); empty for one server.
    pub nodes: Vec<ClusterNode>,
}

impl Job {
    /// The command-line arguments that make a worker run this job.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--worker".to_string(),
            format!("--scenario={}", self.scenario),
            format!("--system={}", self.system),
            format!("--variant={}", self.variant),
            format!("--size={}", self.size),
            format!("--rooms={}", self.rooms),
            format!("--count={}", self.count),
            format!("--limit-ms={}", self.limit.as_millis()),
            format!("--url={}", self.url),
            format!("--rate={}", self.rate),
            format!("--receivers={}", self.receivers),
            format!("--members={}", self.members),
            format!("--window={}", self.window),
            format!("--clients={}", self.clients),
            format!("--queue={}", self.queue),
            format!("--queue-bytes={}", self.queue_bytes),
            format!("--prefix={}", self.prefix),
        ];
        if let Some(p) = self.server_pid {
            a.push(format!("--server-pid={p}"));
        }
        if !self.nodes.is_empty() {
            a.push(format!("--nodes={}", ClusterNode::list_arg(&self.nodes)));
        }
        a
    }

    /// Whether the job runs on a Redis Cluster (sharded pub/sub).
    pub fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// Parses what [`Job::to_args`] wrote.
    pub fn from_args(args: &[String]) -> Result<Job, String> {
        let mut m = BTreeMap::new();
        for a in args {
            if let Some(kv) = a.strip_prefix("--") {
                if let Some((k, v)) = kv.split_once('=') {
                    m.insert(k.to_string(), v.to_string());
                }
            }
        }
        let get = |k: &str| m.get(k).cloned().ok_or(format!("worker: --{k} missing"));
        let num = |k: &str| -> Result<u64, String> {
            get(k)?.parse().map_err(|e| format!("worker: --{k}: {e}"))
        };
        Ok(Job {
            scenario: get("scenario")?,
            system: get("system")?,
            variant: get("variant")?,
            size: num("size")? as usize,
            rooms: num("rooms")? as usize,
            count: num("count")?,
            limit: Duration::from_millis(num("limit-ms")?),
            url: get("url")?,
            server_pid: m.get("server-pid").and_then(|p| p.parse().ok()),
            rate: get("rate")?.parse().map_err(|e| format!("--rate: {e}"))?,
            receivers: num("receivers")? as usize,
            members: num("members")? as usize,
            window: num("window")?,
            clients: num("clients")? as usize,
            queue: num("queue")? as usize,
            queue_bytes: num("queue-bytes")? as usize,
            prefix: get("prefix")?,
            nodes: match m.get("nodes") {
                Some(v) => ClusterNode::parse_list(v)?,
                None => Vec::new(),
            },
        })
    }

    /// A result line for this job with its identifying fields filled in.
    pub fn result(&self) -> Res {
        let mut r = Res::default();
        r.set("scenario", self.scenario.as_str());
        r.set("system", self.system.as_str());
        r.set("variant", self.variant.as_str());
        r.set("size", self.size as u64);
        r.set("rooms", self.rooms as u64);
        // Closed-loop scenarios compare systems at the same in-flight depth.
        if matches!(self.scenario.as_str(), "S1" | "S3") {
            r.set("depth", self.window);
            r.set("clients", self.clients.max(1) as u64);
        }
        if self.rate > 0.0 {
            r.setf("rate", self.rate);
        }
        if self.queue > 0 {
            r.set("queue", self.queue as u64);
        }
        if self.queue_bytes > 0 {
            r.set("queue_bytes", self.queue_bytes as u64);
        }
        r
    }

    /// Host and port of the server.
    pub fn host_port(&self) -> (String, u16) {
        let rest = self
            .url
            .trim_start_matches("redis://")
            .trim_end_matches('/');
        let rest = rest.rsplit('@').next().unwrap_or(rest);
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(6379)),
            None => (rest.to_string(), 6379),
        }
    }

    /// The channel of room `i` for the peers and the raw clients (`redis-benchmark`'s
    /// `__rand_int__` writes 12 digits, so every system's channels look alike).
    pub fn channel(&self, i: usize) -> String {
        format!("{}:{:012}", self.prefix, i)
    }

    /// The room id of room `i` for roomcast.
    pub fn room(&self, i: usize) -> String {
        format!("{:012}", i)
    }
}

/// One node of a cluster a job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterNode {
    /// Its loopback port.
    pub port: u16,
    /// Its pid, when the load generator started it.
    pub pid: Option<u32>,
}

impl ClusterNode {
    /// `port:pid,port:pid` (`port:-` without a pid).
    pub fn list_arg(nodes: &[ClusterNode]) -> String {
        let one = |n: &ClusterNode| match n.pid {
            Some(p) => format!("{}:{p}", n.port),
            None => format!("{}:-", n.port),
        };
        nodes.iter().map(one).collect::<Vec<_>>().join(",")
    }

    /// Parses what [`ClusterNode::list_arg`] wrote.
    pub fn parse_list(v: &str) -> Result<Vec<ClusterNode>, String> {
        v.split(',')
            .map(|item| {
                let (port, pid) = item
                    .split_once(':')
                    .ok_or(format!("--nodes: {item:?} is not port:pid"))?;
                Ok(ClusterNode {
                    port: port.parse().map_err(|e| format!("--nodes: {item}: {e}"))?,
                    pid: pid.parse().ok(),
                })
            })
            .collect()
    }
}

/// One result: an ordered JSON object.
#[derive(Debug, Clone, Default)]
pub struct Res(pub Map<String, Value>);

impl Res {
    /// Sets a field.
    pub fn set(&mut self, k: &str, v: impl Into<Value>) {
        self.0.insert(k.to_string(), v.into());
    }

    /// Sets a float field rounded to 4 significant decimals (`null` when not finite).
    pub fn setf(&mut self, k: &str, v: f64) {
        let v = if v.is_finite() {
            serde_json::Number::from_f64((v * 1e4).round() / 1e4).map_or(Value::Null, Value::Number)
        } else {
            Value::Null
        };
        self.0.insert(k.to_string(), v);
    }

    /// A field as a number.
    pub fn num(&self, k: &str) -> Option<f64> {
        self.0.get(k).and_then(Value::as_f64)
    }

    /// A field as text.
    pub fn text(&self, k: &str) -> String {
        match self.0.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    /// Parses one JSON line.
    pub fn from_json(line: &str) -> Option<Res> {
        match serde_json::from_str(line).ok()? {
            Value::Object(m) => Some(Res(m)),
            _ => None,
        }
    }

    /// Adds the CPU, memory and server figures measured between `before` and now, per
    /// `delivered` messages.
    pub fn add_usage(&mut self, before: &Usage, delivered: u64) {
        self.add_usage_without(before, delivered, None);
    }

    /// [`Res::add_usage`] with a pacer's own CPU (user and kernel) and sleeps left out of the
    /// client's figures, so that a paced run's `client_cpu_s`, `client_sys_s`, the
    /// per-million parts and `sleeps_per_k` are the client's alone, as in a closed-loop run.
    fn add_usage_without(&mut self, before: &Usage, delivered: u64, pacer: Option<&PacerStats>) {
        let after = Usage::now(before.server_pid);
        let (pacer_cpu, pacer_sys, pacer_sleeps) =
            pacer.map_or((0.0, 0.0, 0), |p| (p.cpu_s, p.sys_s, p.sleeps));
        let cpu = (after.cpu_s - before.cpu_s - pacer_cpu).max(0.0);
        let sys = (after.sys_s - before.sys_s - pacer_sys).clamp(0.0, cpu);
        let sleeps = after
            .sleeps
            .saturating_sub(before.sleeps)
            .saturating_sub(pacer_sleeps);
        self.setf("client_cpu_s", cpu);
        self.setf("client_sys_s", sys);
        if delivered > 0 {
            let per_m = delivered as f64 / 1e6;
            self.setf("cpu_s_per_m", cpu / per_m);
            // Where it went: the kernel (system calls, the TCP stack, wake-ups) and the
            // process's own code.
            self.setf("sys_s_per_m", sys / per_m);
            self.setf("user_s_per_m", (cpu - sys) / per_m);
            // How often the client's threads slept and were woken per 1,000 deliveries: a
            // client that finishes its work sooner waits (and pays a wake-up) more often.
            self.set("sleeps", sleeps);
            self.setf("sleeps_per_k", sleeps as f64 / (delivered as f64 / 1e3));
        }
        if let (Some(a), Some(b)) = (after.server_cpu_s, before.server_cpu_s) {
            self.setf("server_cpu_s", a - b);
        }
        self.setf("wall_s", before.at.elapsed().as_secs_f64());
        self.set("rss_kb", after.rss_kb);
        self.set("peak_rss_kb", after.hwm_kb);
        self.set("load1", load_average());
    }
}

/// CPU time and memory of this process (all threads, and waited-for children) and of the
/// server, at one moment.
#[derive(Debug, Clone)]
pub struct Usage {
    /// When.
    pub at: Instant,
    /// User + system seconds of this process and its reaped children.
    pub cpu_s: f64,
    /// The system (kernel) part of `cpu_s`.
    pub sys_s: f64,
    /// The server's user + system seconds.
    pub server_cpu_s: Option<f64>,
    /// The server's pid.
    pub server_pid: Option<u32>,
    /// Resident set, kB.
    pub rss_kb: u64,
    /// Peak resident set, kB.
    pub hwm_kb: u64,
    /// Times this process's threads gave up the CPU to wait (voluntary context switches,
    /// summed over the threads alive now): each a sleep and a wake-up.
    pub sleeps: u64,
}

impl Usage {
    /// Reads `/proc` now.
    pub fn now(server_pid: Option<u32>) -> Usage {
        let c = proc_cpu("self").unwrap_or_default();
        let (rss_kb, hwm_kb) = rss_kb();
        Usage {
            at: Instant::now(),
            cpu_s: c.total,
            sys_s: c.sys,
            server_cpu_s: server_pid.and_then(|p| proc_cpu(&p.to_string()).map(|c| c.total)),
            server_pid,
            rss_kb,
            hwm_kb,
            sleeps: sleeps(),
        }
    }
}

/// Voluntary context switches of this process's live threads, from
/// `/proc/self/task/*/status` (0 where it cannot be read).
fn sleeps() -> u64 {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| voluntary_switches(&t.path().join("status")))
        .sum()
}

/// Voluntary context switches of the calling thread (0 where it cannot be read).
fn thread_sleeps() -> u64 {
    voluntary_switches(Path::new("/proc/thread-self/status"))
}

/// The voluntary context switches a `/proc/*/status` file counts (0 where it cannot be read).
fn voluntary_switches(status: &Path) -> u64 {
    fs::read_to_string(status).map_or(0, |s| status_field(&s, "voluntary_ctxt_switches:"))
}

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on Linux/x86 and arm64).
const USER_HZ: f64 = 100.0;

/// User + system seconds of process `pid` (its own threads and reaped children).
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    proc_cpu(&pid.to_string()).map(|c| c.total)
}

/// CPU seconds of a process, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default)]
struct ProcCpu {
    /// User + system, of its own threads and its reaped children.
    total: f64,
    /// The system (kernel) part of `total`.
    sys: f64,
    /// User + system of its own threads only (of the one thread, for `thread-self`).
    own: f64,
    /// The system (kernel) part of `own`.
    own_sys: f64,
}

/// CPU seconds of `/proc/PID/stat` (`PID` may be `self`).
fn proc_cpu(pid: &str) -> Option<ProcCpu> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let (user, sys) = (f.get(11)? + f.get(13)?, f.get(12)? + f.get(14)?);
    Some(ProcCpu {
        total: (user + sys) as f64 / USER_HZ,
        sys: sys as f64 / USER_HZ,
        own: (f.get(11)? + f.get(12)?) as f64 / USER_HZ,
        own_sys: *f.get(12)? as f64 / USER_HZ,
    })
}

/// (VmRSS, VmHWM) of this process in kB.
pub fn rss_kb() -> (u64, u64) {
    let s = fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status_field(&s, "VmRSS:"), status_field(&s, "VmHWM:"))
}

/// The number after `name` in a `/proc/*/status` text (0 if it is not there).
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// Nanoseconds since this process's first call (all threads share the origin).
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Payloads are cut from blocks of this size (or of one payload, if larger).
const PAYLOAD_BLOCK: usize = 64 * 1024;

thread_local! {
    /// What is left of the current block of this thread's payloads.
    static PAYLOADS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A payload of `size` bytes (at least 16) carrying a sequence number and a send time (0
/// where nothing measures latency from it, so that no system's run reads the clock per
/// message for nothing).
///
/// Payloads are slices of shared blocks: one allocation per block instead of one per
/// message, so that the load generator's own allocator work (a 1 KiB buffer per message,
/// past glibc's per-thread cache when a batch holds dozens) stays out of the client CPU it
/// measures. Every system gets its payloads from here.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> Bytes {
    let size = size.max(16);
    PAYLOADS.with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() < size {
            *block = BytesMut::with_capacity(PAYLOAD_BLOCK.max(size));
        }
        block.put_u64_le(seq);
        block.put_u64_le(sent_ns);
        block.put_bytes(b'x', size - 16);
        block.split().freeze()
    })
}

/// (sequence, send time) of a payload.
pub fn parse_payload(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < 16 {
        return None;
    }
    let seq = u64::from_le_bytes(p[..8].try_into().ok()?);
    let sent = u64::from_le_bytes(p[8..16].try_into().ok()?);
    Some((seq, sent))
}

/// Which message numbers one receiver (an instance or a subscriber connection) has seen:
/// exactly-once means every bit set once and no duplicate.
#[derive(Debug)]
pub struct Tracker {
    bits: Vec<AtomicU64>,
    /// Messages received (duplicates included).
    pub count: AtomicU64,
    /// Messages received whose bit was already set.
    pub dups: AtomicU64,
    /// Messages with a number out of range or an unreadable payload.
    pub bad: AtomicU64,
    /// [`now_ns`] of the latest message, read at every [`STAMP_EVERY`]th message and at
    /// each one from the `n`-th on (the clock is not read per message).
    pub last_ns: AtomicU64,
    /// Message numbers `0..n`.
    n: u64,
}

/// How often (in messages received) a [`Tracker`] reads the clock before the last expected
/// message: a run that loses messages still has its end time to within this many.
const STAMP_EVERY: u64 = 256;

impl Tracker {
    /// For message numbers `0..n`.
    pub fn new(n: u64) -> Arc<Tracker> {
        Arc::new(Tracker {
            bits: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            n,
        })
    }

    /// Records message `seq`.
    pub fn record(&self, seq: u64) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        match self.bits.get((seq / 64) as usize) {
            Some(w) => {
                let bit = 1u64 << (seq % 64);
                if w.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                    self.dups.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
        if count >= self.n || count % STAMP_EVERY == 0 {
            self.last_ns.fetch_max(now_ns(), Ordering::Relaxed);
        }
    }

    /// Whether message `seq` was seen.
    pub fn has(&self, seq: u64) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (seq % 64)) != 0)
    }

    /// Distinct messages seen.
    pub fn unique(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Messages received.
    pub fn received(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Sums over the receivers: (received, unique, duplicates, bad, latest arrival ns).
pub fn tally(trackers: &[Arc<Tracker>]) -> (u64, u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0, 0);
    for k in trackers {
        t.0 += k.received();
        t.1 += k.unique();
        t.2 += k.dups.load(Ordering::Relaxed);
        t.3 += k.bad.load(Ordering::Relaxed);
        t.4 = t.4.max(k.last_ns.load(Ordering::Relaxed));
    }
    t
}

/// End-to-end flow control shared by a publisher and its receivers: the publisher may have
/// at most `window` messages not yet delivered to every receiver. A message that is lost
/// holds its place for good, so a lossy system stalls and is stopped by the time limit:
/// losses are never hidden by the window.
#[derive(Debug)]
pub struct Flow {
    delivered: AtomicU64,
    wake_at: AtomicU64,
    notify: tokio::sync::Notify,
    per_msg: u64,
    window: u64,
}

impl Flow {
    /// `per_msg` deliveries make one message complete.
    pub fn new(per_msg: u64, window: u64) -> Arc<Flow> {
        Arc::new(Flow {
            delivered: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            notify: tokio::sync::Notify::new(),
            per_msg: per_msg.max(1),
            window: window.max(1),
        })
    }

    /// A receiver got one message.
    ///
    /// `delivered` and `wake_at` are a store-then-load pair on each side (the publisher
    /// stores `wake_at` then loads `delivered`; a receiver the reverse): only `SeqCst` on
    /// all four keeps both sides from reading the old value (a lost wake-up, seen on x86
    /// with `Relaxed` as a one-in-flight run that stopped).
    pub fn delivered(&self) {
        let d = self.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        let w = self.wake_at.load(Ordering::SeqCst);
        if d >= w
            && self
                .wake_at
                .compare_exchange(w, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// Deliveries so far.
    pub fn deliveries(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Messages numbered below this may be sent: the window beyond the complete ones.
    fn allowed(&self) -> u64 {
        self.window + self.delivered.load(Ordering::SeqCst) / self.per_msg
    }

    /// The next batch of a closed-loop publisher, by one rule for every system so that all
    /// of them do the same work at the same depth: wait until at least half the window (or
    /// every message left, if fewer) may be sent, then take every message the window
    /// allows. Returns the end (exclusive) of the batch that starts at `next`, of `n`
    /// messages in all; `None` if `deadline` passed first.
    pub async fn next_batch(
        &self,
        next: u64,
        n: u64,
        deadline: tokio::time::Instant,
    ) -> Option<u64> {
        let want = (self.window / 2).max(1).min(n.saturating_sub(next)).max(1);
        loop {
            let allowed = self.allowed();
            if allowed >= next + want {
                return Some(allowed.min(n));
            }
            // `allowed < next + want` and `allowed >= window`, so this is positive.
            let need = (next + want - self.window) * self.per_msg;
            self.wake_at.store(need, Ordering::SeqCst);
            if self.delivered.load(Ordering::SeqCst) >= need {
                self.wake_at.store(u64::MAX, Ordering::SeqCst);
                continue;
            }
            // Slices, so that even a missed wake-up costs at most 100 ms, never the run.
            let slice = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(slice.min(deadline), self.notify.notified())
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return None;
            }
        }
    }

    /// Waits until every delivery of message number `seq` is in (one in flight): false on
    /// timeout.
    pub async fn wait_done(&self, seq: u64, deadline: tokio::time::Instant) -> bool {
        let need = (seq + 1) * self.per_msg;
        loop {
            if self.delivered.load(Ordering::SeqCst) >= need {
                return true;
            }
            self.wake_at.store(need, Ordering::SeqCst);
            if self.delivered.load(Ordering::SeqCst) >= need {
                return true;
            }
            // Slices, so that even a missed wake-up costs at most 100 ms, never the run.
            let slice = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(slice.min(deadline), self.notify.notified())
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return self.delivered.load(Ordering::SeqCst) >= need;
            }
        }
    }
}

/// How long without progress ends a phase early (a lost message never arrives).
pub const STALL: Duration = Duration::from_secs(3);

/// How long the receivers keep counting after the expected number arrived, before the
/// tally: a trailing duplicate (or anything else that should not arrive) is seen.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Waits [`SETTLE`]; the receivers keep recording meanwhile.
pub fn settle() {
    std::thread::sleep(SETTLE);
}

/// Waits until `flow` has `expected` deliveries; false at `deadline` or after a [`STALL`].
pub fn await_deliveries(flow: &Flow, expected: u64, deadline: Instant) -> bool {
    wait_for(
        deadline,
        STALL,
        || flow.deliveries(),
        || flow.deliveries() >= expected,
    )
}

/// The precise open-loop pacer: message `i` is due `i / rate` seconds after the start.
///
/// It sleeps until [`PACER_SPIN`] before the next due time (the OS timer, not a runtime's
/// 1 ms wheel), then spins (yielding the core between checks) until it is due, and at each
/// wake-up hands every message already due to `send` as one range (`first..end`, message
/// numbers). Runs on the calling thread (a thread of its own), so that the system's threads
/// are not also the pacer's. `send` returns false to stop.
pub struct Pacer {
    /// Messages per second.
    pub rate: f64,
    /// Messages in all.
    pub count: u64,
}

/// How long before a due time the pacer stops sleeping and spins.
pub const PACER_SPIN: Duration = Duration::from_micros(100);

/// What the pacer itself cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacerStats {
    /// The pacer thread's own CPU seconds (user + system).
    pub cpu_s: f64,
    /// The kernel part of `cpu_s` (its sleeps and the yields of its spin).
    pub sys_s: f64,
    /// Times the pacer thread slept or yielded (voluntary context switches).
    pub sleeps: u64,
    /// Wake-ups that sent something.
    pub sends: u64,
    /// Messages handed over.
    pub sent: u64,
    /// The latest hand-over after its due time, µs (the pacer's own lateness).
    pub max_late_us: f64,
}

impl Pacer {
    /// The pacer of a paced job (`job.rate > 0`, `job.count` messages).
    pub fn of(job: &Job) -> Option<Pacer> {
        (job.rate > 0.0).then_some(Pacer {
            rate: job.rate,
            count: job.count,
        })
    }

    /// When message `i` is due, in ns after message 0.
    pub fn due_ns(&self, i: u64) -> u64 {
        (i as f64 * 1e9 / self.rate) as u64
    }

    /// Paces until every message went out, `send` refused or `deadline`.
    pub fn run(
        &self,
        deadline: Instant,
        mut send: impl FnMut(std::ops::Range<u64>, u64) -> bool,
    ) -> PacerStats {
        let cpu0 = thread_cpu();
        let sleeps0 = thread_sleeps();
        let t0 = Instant::now();
        let base_ns = now_ns();
        let mut st = PacerStats::default();
        let mut i = 0;
        while i < self.count {
            let due = t0 + Duration::from_nanos(self.due_ns(i));
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if due > now + PACER_SPIN {
                std::thread::sleep(due - now - PACER_SPIN);
            }
            while Instant::now() < due {
                std::thread::yield_now();
            }
            // Everything due by now goes out at once.
            let elapsed = t0.elapsed();
            let due_by = ((elapsed.as_secs_f64() * self.rate) as u64 + 1).clamp(i + 1, self.count);
            let late = elapsed.as_nanos() as u64 - self.due_ns(i).min(elapsed.as_nanos() as u64);
            st.max_late_us = st.max_late_us.max(late as f64 / 1e3);
            if !send(i..due_by, base_ns) {
                break;
            }
            st.sends += 1;
            st.sent += due_by - i;
            i = due_by;
        }
        let cpu = thread_cpu();
        st.cpu_s = cpu.own - cpu0.own;
        st.sys_s = cpu.own_sys - cpu0.own_sys;
        st.sleeps = thread_sleeps().saturating_sub(sleeps0);
        st
    }
}

/// The calling thread's CPU seconds (`/proc/thread-self/stat`): user + system in `own`,
/// the kernel part in `own_sys`.
fn thread_cpu() -> ProcCpu {
    proc_cpu("thread-self").unwrap_or_default()
}

/// Records in `res` what `trackers` (one per receiver) counted since `start_ns`:
/// `msgs_per_s` (per receiver), with `per_delivery` also `deliveries_per_s`, then
/// `delivered`, `expected`, `duplicates`, `lost` and `exactly_once` (every expected delivery
/// once, nothing else, and `complete`). Returns the unique deliveries.
pub fn record_deliveries(
    res: &mut Res,
    trackers: &[Arc<Tracker>],
    expected: u64,
    complete: bool,
    start_ns: u64,
    per_delivery: bool,
) -> u64 {
    let (received, unique, dups, bad, last) = tally(trackers);
    let elapsed = (last.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let receivers = trackers.len().max(1) as f64;
    res.setf("msgs_per_s", unique as f64 / receivers / elapsed);
    if per_delivery {
        res.setf("deliveries_per_s", unique as f64 / elapsed);
    }
    res.set("delivered", received);
    res.set("expected", expected);
    res.set("duplicates", dups);
    res.set("lost", expected - unique.min(expected));
    res.set(
        "exactly_once",
        complete && dups == 0 && bad == 0 && unique == expected,
    );
    unique
}

/// A measured phase: usage at its start, [`now_ns`] then, and its deadline.
pub struct Phase {
    /// CPU and memory at the start.
    pub usage: Usage,
    /// [`now_ns`] at the start.
    pub start_ns: u64,
    /// When the phase gives up.
    pub deadline: Instant,
    /// Messages the publisher handed over.
    pub published: Arc<AtomicU64>,
    /// What the pacer cost, for a paced phase.
    pub pacer: Option<PacerStats>,
    /// On a cluster: every node's CPU and bus counters at the start, and the nodes.
    pub bus: Option<(BusSnapshot, Vec<ClusterNode>)>,
}

impl Phase {
    /// Starts a phase of `job` now.
    pub fn begin(job: &Job) -> Phase {
        Phase {
            usage: Usage::now(job.server_pid),
            start_ns: now_ns(),
            deadline: Instant::now() + job.limit,
            published: Arc::default(),
            pacer: None,
            bus: job
                .is_cluster()
                .then(|| (BusSnapshot::now(&job.nodes), job.nodes.clone())),
        }
    }

    /// [`finish_run`] for this phase.
    pub fn finish(
        &self,
        res: &mut Res,
        trackers: &[Arc<Tracker>],
        expected: u64,
        complete: bool,
    ) -> u64 {
        let (usage, start, pacer) = (&self.usage, self.start_ns, self.pacer);
        let published = &self.published;
        let unique = finish_run(
            res, usage, trackers, expected, complete, start, pacer, published,
        );
        record_server_cost(res, self.bus.as_ref(), published.load(Ordering::Relaxed));
        unique
    }
}

/// The server's CPU per published message (`server_cpu_us_per_msg`); on a cluster also
/// every node's share and the cluster-bus messages per publish (see
/// [`BusSnapshot::record_since`]).
pub fn record_server_cost(
    res: &mut Res,
    bus: Option<&(BusSnapshot, Vec<ClusterNode>)>,
    published: u64,
) {
    match bus {
        Some((before, nodes)) => before.record_since(res, nodes, published),
        None => {
            if let Some(cpu) = res.num("server_cpu_s").filter(|_| published > 0) {
                res.setf("server_cpu_us_per_msg", cpu * 1e6 / published as f64);
            }
        }
    }
}

/// Ends a delivery run that just completed (or gave up): client CPU and memory up to now,
/// then [`SETTLE`] with the receivers still counting, then the tally of [`record_deliveries`]
/// (with deliveries/s), with `receivers` (one per tracker) and `published`. With a pacer,
/// its own CPU is reported apart (`pacer_cpu_s`) and left out of the client's figures
/// ([`Res::add_usage_without`]). Returns the unique deliveries.
#[allow(clippy::too_many_arguments)]
pub fn finish_run(
    res: &mut Res,
    usage: &Usage,
    trackers: &[Arc<Tracker>],
    expected: u64,
    complete: bool,
    start_ns: u64,
    pacer: Option<PacerStats>,
    published: &AtomicU64,
) -> u64 {
    let at_completion = tally(trackers).1;
    res.set("receivers", trackers.len() as u64);
    res.add_usage_without(usage, at_completion, pacer.as_ref());
    if let Some(p) = pacer {
        res.setf("pacer_cpu_s", p.cpu_s);
        res.set("pacer_sends", p.sends);
        res.setf("pacer_max_late_us", p.max_late_us);
    }
    settle();
    res.set("published", published.load(Ordering::Relaxed));
    record_deliveries(res, trackers, expected, complete, start_ns, true)
}

/// Waits (polling every few ms) until `done` or no progress in `stall` or `deadline`;
/// returns whether `done` held.
pub fn wait_for(
    deadline: Instant,
    stall: Duration,
    mut progress: impl FnMut() -> u64,
    mut done: impl FnMut() -> bool,
) -> bool {
    let mut last = progress();
    let mut last_change = Instant::now();
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let p = progress();
        if p != last {
            last = p;
            last_change = now;
        } else if now - last_change >= stall {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Percentiles (in µs) of latencies given in ns; fills p50, p99, p999, max and samples.
pub fn add_latency(r: &mut Res, lat_ns: &mut [u64]) {
    lat_ns.sort_unstable();
    let n = lat_ns.len();
    r.set("samples", n as u64);
    if n == 0 {
        return;
    }
    let at = |q: f64| lat_ns[(((n as f64) * q).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
    r.setf("p50_us", at(0.50));
    r.setf("p99_us", at(0.99));
    r.setf("p999_us", at(0.999));
    r.setf("max_us", lat_ns[n - 1] as f64 / 1e3);
}

/// A current-thread tokio runtime on a thread of its own: one client instance's world.
pub struct Node {
    /// Spawns onto the node's runtime.
    pub rt: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Starts a node named `name`.
    pub fn start(name: &str) -> Node {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("a thread");
        Node {
            rt: rx.recv().expect("the node's runtime"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Runs `fut` on the node and waits for its output from this (non-async) thread.
    pub fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("the node's task panicked")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads cut from shared blocks carry their own numbers and sizes, across block
    /// boundaries, and one payload does not change when the next is cut.
    #[test]
    fn payloads_are_distinct_slices_across_blocks() {
        let mut made = Vec::new();
        for (i, size) in [1024, 40_000, 16, 1, 70_000, 1024, 1024]
            .into_iter()
            .enumerate()
        {
            let i = i as u64;
            made.push((i, size.max(16), payload(i, i * 10, size)));
        }
        for (i, size, p) in &made {
            assert_eq!(p.len(), *size);
            assert_eq!(parse_payload(p), Some((*i, i * 10)));
            assert!(p[16..].iter().all(|&b| b == b'x'));
        }
    }
}
