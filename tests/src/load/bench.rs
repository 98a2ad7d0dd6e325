//! The server's own limit: `redis-benchmark` publishing, with raw subscriber connections
//! (plain blocking sockets, a minimal RESP reader) attached and counting what arrives.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::common::{now_ns, settle, wait_for, Job, Res, Usage, STALL};
use roomcast::redis_server::encode_command;

/// A raw subscriber connection on a thread of its own.
pub struct RawSub {
    /// Messages received.
    pub count: Arc<AtomicU64>,
    /// [`now_ns`] of the latest message.
    pub last_ns: Arc<AtomicU64>,
    /// Set when the server closed the connection (a subscriber over Redis's
    /// `client-output-buffer-limit pubsub` is disconnected: the rest of its messages are lost).
    pub closed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// Parses one RESP2 push (array of bulk strings / integers) at the start of `buf`: returns
/// (bytes used, first element, number of elements) or None when incomplete.
fn parse_push(buf: &[u8]) -> Option<(usize, Vec<u8>, usize)> {
    let line = |at: usize| -> Option<(usize, &[u8])> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((end + 2, &buf[at..end]))
    };
    let (mut at, head) = line(0)?;
    if head.first() != Some(&b'*') {
        // Not an array (an error or a status): skip the line.
        return Some((at, head.to_vec(), 0));
    }
    let n: usize = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
    let mut first = Vec::new();
    for i in 0..n {
        let (next, l) = line(at)?;
        match l.first() {
            Some(b'$') => {
                let len: usize = std::str::from_utf8(&l[1..]).ok()?.parse().ok()?;
                if buf.len() < next + len + 2 {
                    return None;
                }
                if i == 0 {
                    first = buf[next..next + len].to_vec();
                }
                at = next + len + 2;
            }
            _ => at = next,
        }
    }
    Some((at, first, n))
}

impl RawSub {
    /// Connects, subscribes `channels` (pipelined, 512 per SUBSCRIBE) and waits until every
    /// subscription is confirmed; then counts messages on a thread.
    pub fn start(port: u16, channels: &[String]) -> io::Result<RawSub> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        let mut out = Vec::new();
        for chunk in channels.chunks(512) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(chunk.iter().map(|c| c.as_bytes()));
            encode_command(&mut out, &args);
        }
        s.write_all(&out)?;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut confirmed = 0;
        let mut chunk = vec![0u8; 1 << 16];
        while confirmed < channels.len() {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::other("closed while subscribing"));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while let Some((used, first, _)) = parse_push(&buf[at..]) {
                at += used;
                if first == b"subscribe" {
                    confirmed += 1;
                }
            }
            buf.drain(..at);
        }
        let count = Arc::new(AtomicU64::new(0));
        let last_ns = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let (c2, l2, st2, cl2) = (count.clone(), last_ns.clone(), stop.clone(), closed.clone());
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let thread = std::thread::spawn(move || -> io::Result<()> {
            while !st2.load(Ordering::Relaxed) {
                let n = match s.read(&mut chunk) {
                    Ok(0) => {
                        cl2.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => {
                        cl2.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                let mut got = 0;
                while let Some((used, first, _)) = parse_push(&buf[at..]) {
                    at += used;
                    if first == b"message" {
                        got += 1;
                    }
                }
                buf.drain(..at);
                if got > 0 {
                    c2.fetch_add(got, Ordering::Relaxed);
                    l2.store(now_ns(), Ordering::Relaxed);
                }
            }
            Ok(())
        });
        Ok(RawSub {
            count,
            last_ns,
            closed,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RawSub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `redis-benchmark` with `args`; returns its output.
fn redis_benchmark(job: &Job, args: &[String]) -> Result<String, String> {
    let (host, port) = job.host_port();
    let out = Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("redis-benchmark: {e} (install redis-tools: apt-get install -y redis-tools)")
        })?;
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The requests/s of `-q` output.
fn quiet_rps(out: &str) -> Option<f64> {
    out.split(['\r', '\n'])
        .rev()
        .filter(|l| l.contains("requests per second"))
        .filter_map(|l| {
            let before = l.split(" requests per second").next()?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .next()
}

/// The channel argument for `rooms` channels (`__rand_int__` picks one of `-r rooms`).
fn channel_arg(job: &Job, rooms: usize) -> String {
    if rooms <= 1 {
        job.channel(0)
    } else {
        format!("{}:__rand_int__", job.prefix)
    }
}

/// Runs one job through `redis-benchmark` and raw subscribers.
pub fn run(job: &Job) -> Result<Vec<Res>, String> {
    match job.scenario.as_str() {
        "S1" => publish_limit(job, job.rooms.max(1), job.receivers.max(1), job.count),
        "S2" => latency(job),
        "S3" => many_channels(job),
        s => Err(format!("redis-benchmark does not run {s}")),
    }
}

/// PUBLISH at the server's limit with `receivers` subscriber connections on `rooms`
/// channels: `n` messages from `job.clients` connections, each with pipelines of
/// `job.window / job.clients` (the same in-flight depth as the other systems' window).
fn publish_limit(job: &Job, rooms: usize, receivers: usize, n: u64) -> Result<Vec<Res>, String> {
    let clients = job.clients.max(1) as u64;
    let pipeline = (job.window / clients).max(1);
    // redis-benchmark sends whole pipelines from every client: a multiple of both.
    let n = n.div_ceil(pipeline * clients) * pipeline * clients;
    let (_, port) = job.host_port();
    let channels: Vec<String> = (0..rooms).map(|i| job.channel(i)).collect();
    let subs = (0..receivers)
        .map(|_| RawSub::start(port, &channels))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let usage = Usage::now(job.server_pid);
    let start_ns = now_ns();
    let data = "x".repeat(job.size);
    let mut args: Vec<String> = vec!["-c".into(), clients.to_string(), "-q".into()];
    args.extend(["-P".into(), pipeline.to_string()]);
    args.extend(["-n".into(), n.to_string()]);
    if rooms > 1 {
        args.extend(["-r".into(), rooms.to_string()]);
    }
    args.extend(["PUBLISH".into(), channel_arg(job, rooms), data]);
    let out = redis_benchmark(job, &args)?;
    let rps = quiet_rps(&out).ok_or(format!("no rate in redis-benchmark's output: {out}"))?;
    let expected = n * receivers as u64;
    let total = || {
        subs.iter()
            .map(|s| s.count.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let complete = wait_for(Instant::now() + job.limit, STALL, total, || {
        total() >= expected || subs.iter().any(|s| s.closed.load(Ordering::Relaxed))
    });
    let last = subs
        .iter()
        .map(|s| s.last_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let mut res = job.result();
    res.add_usage(&usage, total());
    // Keep counting: anything beyond `n` per subscriber is a message too many.
    settle();
    let got = total();
    let per_sub: Vec<u64> = subs
        .iter()
        .map(|s| s.count.load(Ordering::Relaxed))
        .collect();
    let disconnected = subs
        .iter()
        .filter(|s| s.closed.load(Ordering::Relaxed))
        .count();
    res.set("receivers", receivers as u64);
    res.set("pipeline", pipeline);
    res.set("published", n);
    // End to end, as for every other system: published / time until the last delivery.
    res.setf(
        "msgs_per_s",
        n as f64 / (last.saturating_sub(start_ns) as f64 / 1e9).max(1e-9),
    );
    res.setf("publish_rps", rps);
    res.setf("deliveries_per_s", rps * receivers as f64);
    res.set("delivered", got);
    res.set("expected", expected);
    res.set("lost", expected.saturating_sub(got));
    res.set("duplicates", got.saturating_sub(expected));
    res.set("subscribers_disconnected", disconnected as u64);
    // The payload is fixed, so only the counts can be checked: every subscriber exactly n.
    res.set(
        "exactly_once",
        complete && disconnected == 0 && per_sub.iter().all(|&c| c == n),
    );
    drop(subs);
    Ok(vec![res])
}

/// One PUBLISH in flight (`-c 1 -P 1`): the server's round trip, with the subscribers
/// attached. (Publish to reply, not publish to delivery: the floor under any client.)
fn latency(job: &Job) -> Result<Vec<Res>, String> {
    if job.variant == "paced" {
        return Ok(Vec::new());
    }
    let (_, port) = job.host_port();
    let channels = vec![job.channel(0)];
    let subs = (0..job.receivers.max(1))
        .map(|_| RawSub::start(port, &channels))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    let usage = Usage::now(job.server_pid);
    let data = "x".repeat(job.size);
    let out = redis_benchmark(
        job,
        &[
            "-c".into(),
            "1".into(),
            "-P".into(),
            "1".into(),
            "-n".into(),
            job.count.to_string(),
            "--precision".into(),
            "3".into(),
            "PUBLISH".into(),
            job.channel(0),
            data,
        ],
    )?;
    let mut res = job.result();
    res.set("measure", "publish_rtt");
    // "99.902% <= 0.151 milliseconds (cumulative count 1999)"
    let pct = |want: f64| -> Option<f64> {
        out.lines()
            .filter_map(|l| {
                let (p, rest) = l.trim().split_once("% <= ")?;
                let p: f64 = p.parse().ok()?;
                let ms: f64 = rest.split(' ').next()?.parse().ok()?;
                Some((p, ms))
            })
            .find(|(p, _)| *p >= want)
            .map(|(_, ms)| ms * 1e3)
    };
    res.set("samples", job.count);
    for (k, q) in [
        ("p50_us", 50.0),
        ("p99_us", 99.0),
        ("p999_us", 99.9),
        ("max_us", 100.0),
    ] {
        res.setf(k, pct(q).unwrap_or(f64::NAN));
    }
    let got: u64 = subs.iter().map(|s| s.count.load(Ordering::Relaxed)).sum();
    res.set("delivered", got);
    res.set("expected", job.count * subs.len() as u64);
    res.add_usage(&usage, got);
    Ok(vec![res])
}

/// Subscribes `rooms` channels on one raw connection (time until all confirmed), then
/// `redis-benchmark` publishes `rooms` messages to random ones of them.
fn many_channels(job: &Job) -> Result<Vec<Res>, String> {
    let (_, port) = job.host_port();
    let channels: Vec<String> = (0..job.rooms).map(|i| job.channel(i)).collect();
    let before = Usage::now(job.server_pid);
    let t0 = Instant::now();
    let sub = RawSub::start(port, &channels).map_err(|e| e.to_string())?;
    let live_s = t0.elapsed().as_secs_f64();
    let after = Usage::now(job.server_pid);
    let mut res = job.result();
    res.setf("live_s", live_s);
    res.setf("rooms_per_s", job.rooms as f64 / live_s);
    res.setf("join_cpu_s", after.cpu_s - before.cpu_s);
    if let (Some(x), Some(y)) = (after.server_cpu_s, before.server_cpu_s) {
        res.setf("join_server_cpu_s", x - y);
    }
    drop(sub);
    let mut r = publish_limit(job, job.rooms, 1, job.rooms as u64)?;
    let mut p = r.pop().unwrap_or_default();
    for k in [
        "msgs_per_s",
        "delivered",
        "expected",
        "lost",
        "exactly_once",
    ] {
        if let Some(v) = p.0.remove(k) {
            res.0.insert(k.to_string(), v);
        }
    }
    for (k, v) in p.0 {
        res.0.entry(k).or_insert(v);
    }
    Ok(vec![res])
}
