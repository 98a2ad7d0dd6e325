//! `roomcast-load`: the load generator of roomcast (issue #7).
//!
//! Starts a private `redis-server` on a free loopback port (or uses `REDIS_URL`) and runs
//! the scenarios, every (scenario, system) in a worker process of its own so that its CPU
//! time and memory are its own:
//!
//! - S1 throughput: a publisher on instance A, members on B and C; one room and many
//!   rooms; 64 B and 1 KiB; delivered messages/s end to end and exactly-once.
//! - S2 latency: publish→deliver percentiles with one message in flight, and paced at 50%
//!   of the system's S1 rate.
//! - S3 many rooms: 100,000 rooms joined on one instance: time until all live, memory per
//!   room, then one message per room.
//! - S4 fan-out: 10,000 local members of one room: member deliveries/s.
//! - S5 churn: joins and leaves at a high rate while traffic flows; at the end Redis's
//!   subscriptions (`PUBSUB CHANNELS`) must be the rooms with members.
//! - S6 recovery: `CLIENT KILL` of the subscriber with 10,000 rooms: time until every room
//!   is live again, and nothing published after that lost.
//!
//! S1–S3 also run through `redis-benchmark` (the server's own PUBLISH limit, raw
//! subscribers attached) and, with the cargo feature `peers`, through the `redis` and
//! `fred` crates.
//!
//! ```text
//! cargo run --release -p roomcast-tests --features peers --bin roomcast-load -- [options]
//!   --quick            small counts; finishes in well under a minute
//!   --json             one JSON object per result line on stdout (the table goes to stderr)
//!   --runs N           repeat everything N times; the table shows medians (default 3, quick 1)
//!   --scenarios LIST   e.g. S1,S2 (default: all)
//!   --systems LIST     roomcast,redis-benchmark,redis-rs,fred (default: all available)
//! ```
//!
//! Every scenario has a message count and a time limit, talks to loopback only and stops
//! by itself.

#[path = "../load/mod.rs"]
mod load;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use load::common::{Job, Res};

const ALL_SCENARIOS: [&str; 6] = ["S1", "S2", "S3", "S4", "S5", "S6"];

fn systems_available() -> Vec<&'static str> {
    let mut v = vec!["roomcast", "redis-benchmark"];
    if cfg!(feature = "peers") {
        v.extend(["redis-rs", "fred"]);
    }
    v
}

struct Opts {
    quick: bool,
    json: bool,
    runs: usize,
    scenarios: Vec<String>,
    systems: Vec<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        json: false,
        runs: 0,
        scenarios: ALL_SCENARIOS.iter().map(|s| s.to_string()).collect(),
        systems: systems_available().iter().map(|s| s.to_string()).collect(),
    };
    let list = |v: &str| -> Vec<String> { v.split(',').map(|s| s.trim().to_string()).collect() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{key} needs a value"))
        };
        match key {
            "--quick" => o.quick = true,
            "--json" => o.json = true,
            "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--scenarios" => o.scenarios = list(&value()?.to_uppercase()),
            "--systems" => o.systems = list(&value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    for s in &o.systems {
        if !systems_available().contains(&s.as_str()) {
            return Err(format!(
                "system {s} is not available (known: {}; redis-rs and fred need --features peers)",
                systems_available().join(", ")
            ));
        }
    }
    if o.runs == 0 {
        o.runs = if o.quick { 1 } else { 3 };
    }
    Ok(o)
}

fn usage() -> &'static str {
    "usage: roomcast-load [--quick] [--json] [--runs N] [--scenarios S1,..,S6] \
     [--systems roomcast,redis-benchmark,redis-rs,fred]\n\
     Uses REDIS_URL when set, else starts a private redis-server on a free loopback port."
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return worker(&args);
    }
    let opts = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("roomcast-load: {e}");
            }
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match orchestrate(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("roomcast-load: {e}");
            ExitCode::from(2)
        }
    }
}

/// A worker: runs one job and prints its results as JSON lines.
fn worker(args: &[String]) -> ExitCode {
    let job = match Job::from_args(args) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Bounded whatever happens: a stuck worker ends itself.
    let limit = job.limit + Duration::from_secs(90);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("roomcast-load worker: over its time limit, exiting");
        std::process::exit(3);
    });
    load::common::now_ns();
    let result = match job.system.as_str() {
        "roomcast" => load::rc::run(&job),
        "redis-benchmark" => load::bench::run(&job),
        #[cfg(feature = "peers")]
        "redis-rs" | "fred" => load::peers::run(&job),
        s => Err(format!("unknown system {s}")),
    };
    match result {
        Ok(rs) => {
            for r in rs {
                println!("{}", r.to_json());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut r = job.result();
            r.set("error", e);
            println!("{}", r.to_json());
            ExitCode::from(1)
        }
    }
}

/// Counts and limits of one mode.
struct Plan {
    s1_count: [u64; 2],
    s1_rooms: usize,
    s2_one: u64,
    s2_paced_s: f64,
    s3_rooms: usize,
    s4_members: usize,
    s4_count: u64,
    s5_rooms: usize,
    s5_ops: u64,
    s5_secs: u64,
    s5_rate: f64,
    s6_rooms: usize,
    limit: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                s1_count: [4_000, 1_000],
                s1_rooms: 100,
                s2_one: 300,
                s2_paced_s: 0.5,
                s3_rooms: 2_000,
                s4_members: 500,
                s4_count: 10,
                s5_rooms: 100,
                s5_ops: 4_000,
                s5_secs: 1,
                s5_rate: 1_000.0,
                s6_rooms: 500,
                limit: Duration::from_secs(15),
            }
        } else {
            Plan {
                s1_count: [1_000_000, 300_000],
                s1_rooms: 1_000,
                s2_one: 20_000,
                s2_paced_s: 3.0,
                s3_rooms: 100_000,
                s4_members: 10_000,
                s4_count: 200,
                s5_rooms: 1_000,
                s5_ops: 2_000_000,
                s5_secs: 5,
                s5_rate: 20_000.0,
                s6_rooms: 10_000,
                limit: Duration::from_secs(60),
            }
        }
    }
}

fn orchestrate(opts: &Opts) -> Result<bool, String> {
    let plan = Plan::new(opts.quick);
    let started = Instant::now();
    let (_server, url, pid) = match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => (None, u, None),
        _ => {
            let s = roomcast_tests::RedisServer::try_start_with("redis-server", &[])
                .map_err(|e| e.to_string())?;
            let (u, p) = (s.url(), s.pid());
            (Some(s), u, p)
        }
    };
    eprintln!(
        "roomcast-load: server {url}; {} run(s); load average {:.2}; {} cores",
        opts.runs,
        load::common::load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut all: Vec<(usize, Res)> = Vec::new();
    let mut seq = 0usize;
    let mut ok = true;
    for run in 0..opts.runs {
        // S1's 64 B one-room rate of each system, for S2's paced variant.
        let mut s1_rate: BTreeMap<String, f64> = BTreeMap::new();
        for scenario in &opts.scenarios {
            for job in jobs(opts, &plan, scenario, &url, pid, &s1_rate) {
                seq += 1;
                let mut job = job;
                job.prefix = format!("ld{}x{seq}", std::process::id());
                let t = Instant::now();
                let results = run_worker(&exe, &job);
                for mut r in results {
                    r.set("run", run as u64 + 1);
                    if r.0.contains_key("error") {
                        ok = false;
                    }
                    if r.text("scenario") == "S1"
                        && r.text("variant") == "1room"
                        && r.num("size") == Some(64.0)
                    {
                        if let Some(v) = r.num("msgs_per_s") {
                            s1_rate.insert(r.text("system"), v);
                        }
                    }
                    if opts.json {
                        println!("{}", r.to_json());
                    }
                    eprintln!(
                        "  [{:>5.1}s] run {} {} {} {} B {}: {}",
                        started.elapsed().as_secs_f64(),
                        run + 1,
                        job.scenario,
                        job.variant,
                        job.size,
                        job.system,
                        short(&r)
                    );
                    let _ = t;
                    all.push((run, r));
                }
            }
        }
    }
    let medians = medians(&all);
    let ratios = ratios(&medians);
    if opts.json {
        for r in &ratios {
            println!("{}", r.to_json());
        }
    }
    let table = table(&medians, &ratios, opts.runs);
    if opts.json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    eprintln!(
        "roomcast-load: done in {:.1} s; load average {:.2}",
        started.elapsed().as_secs_f64(),
        load::common::load_average()
    );
    Ok(ok)
}

fn jobs(
    opts: &Opts,
    plan: &Plan,
    scenario: &str,
    url: &str,
    pid: Option<u32>,
    s1_rate: &BTreeMap<String, f64>,
) -> Vec<Job> {
    let base = |system: &str, variant: &str, size: usize, rooms: usize, count: u64| Job {
        scenario: scenario.to_string(),
        system: system.to_string(),
        variant: variant.to_string(),
        size,
        rooms,
        count,
        limit: plan.limit,
        url: url.to_string(),
        server_pid: pid,
        rate: 0.0,
        receivers: 2,
        members: 0,
        window: 4096,
        prefix: String::new(),
    };
    let has = |s: &str| opts.systems.iter().any(|x| x == s);
    let peers: Vec<&str> = ["roomcast", "redis-benchmark", "redis-rs", "fred"]
        .into_iter()
        .filter(|s| has(s))
        .collect();
    let mut v = Vec::new();
    match scenario {
        "S1" => {
            for (size, count) in [(64, plan.s1_count[0]), (1024, plan.s1_count[1])] {
                for (variant, rooms) in [("1room", 1), ("rooms", plan.s1_rooms)] {
                    for s in &peers {
                        v.push(base(s, variant, size, rooms, count));
                    }
                }
            }
        }
        "S2" => {
            for s in &peers {
                v.push(base(s, "one-in-flight", 64, 1, plan.s2_one));
            }
            for s in peers.iter().filter(|s| **s != "redis-benchmark") {
                let full = s1_rate.get(*s).copied().unwrap_or(20_000.0);
                let rate = (full * 0.5).max(100.0);
                let mut j = base(s, "paced", 64, 1, (rate * plan.s2_paced_s) as u64);
                j.rate = rate;
                v.push(j);
            }
            // roomcast also at the fastest peer's paced rate: the same load on the server.
            let peer_rate = s1_rate
                .iter()
                .filter(|(s, _)| *s != "roomcast" && *s != "redis-benchmark")
                .map(|(_, r)| r * 0.5)
                .fold(0.0, f64::max);
            if peers.contains(&"roomcast") && peer_rate >= 100.0 {
                let count = (peer_rate * plan.s2_paced_s) as u64;
                let mut j = base("roomcast", "paced-at-peer-rate", 64, 1, count);
                j.rate = peer_rate;
                v.push(j);
            }
        }
        "S3" => {
            for s in &peers {
                v.push(base(
                    s,
                    "100k-rooms",
                    64,
                    plan.s3_rooms,
                    plan.s3_rooms as u64,
                ));
            }
            if has("roomcast") {
                // The same with presence on (roomcast's default): a hash write per join.
                let n = plan.s3_rooms;
                v.push(base("roomcast", "100k-rooms+presence", 64, n, n as u64));
            }
        }
        "S4" if has("roomcast") => {
            let mut j = base("roomcast", "fan-out", 64, 1, plan.s4_count);
            j.members = plan.s4_members;
            v.push(j);
        }
        "S5" if has("roomcast") => {
            let mut j = base("roomcast", "churn", 64, plan.s5_rooms, plan.s5_ops);
            j.limit = Duration::from_secs(plan.s5_secs);
            j.rate = plan.s5_rate;
            v.push(j);
        }
        "S6" if has("roomcast") => {
            v.push(base(
                "roomcast",
                "client-kill",
                64,
                plan.s6_rooms,
                plan.s6_rooms as u64,
            ));
        }
        _ => {}
    }
    v
}

/// Runs one job in a worker process; its JSON lines (or an error result).
fn run_worker(exe: &std::path::Path, job: &Job) -> Vec<Res> {
    let child = Command::new(exe)
        .args(job.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let mut r = job.result();
            r.set("error", format!("spawning the worker: {e}"));
            return vec![r];
        }
    };
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(r) = Res::from_json(&line) {
                out.push(r);
            }
        }
    }
    let status = child.wait();
    if out.is_empty() {
        let mut r = job.result();
        r.set(
            "error",
            format!("the worker printed no result ({status:?})"),
        );
        out.push(r);
    }
    out
}

/// The few numbers that matter for a progress line.
fn short(r: &Res) -> String {
    if r.0.contains_key("error") {
        return format!("ERROR {}", r.text("error"));
    }
    let f = |k: &str| r.num(k).map_or("-".to_string(), human);
    match r.text("scenario").as_str() {
        "S1" => format!(
            "{} msg/s, {}/{} delivered, exactly once {}, {} CPU s per M",
            f("msgs_per_s"),
            f("delivered"),
            f("expected"),
            r.text("exactly_once"),
            f("cpu_s_per_m")
        ),
        "S2" => format!(
            "p50 {} p99 {} p999 {} max {} µs",
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            f("max_us")
        ),
        "S3" => format!(
            "live in {} s, {} B/room, then {} msg/s, exactly once {}",
            f("live_s"),
            f("bytes_per_room"),
            f("msgs_per_s"),
            r.text("exactly_once")
        ),
        "S4" => format!(
            "{} member deliveries/s, exactly once {}",
            f("deliveries_per_s"),
            r.text("exactly_once")
        ),
        "S5" => format!(
            "{} ops/s, subscriptions match {} ({} rooms)",
            f("ops_per_s"),
            r.text("subscriptions_match"),
            f("rooms_with_members")
        ),
        "S6" => format!(
            "link up {} ms after the kill, all live {} ms after that, exactly once {}",
            f("kill_to_up_ms"),
            f("up_to_all_live_ms"),
            r.text("exactly_once")
        ),
        _ => String::new(),
    }
}

fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

type Key = (String, String, u64, String);

fn key(r: &Res) -> Key {
    (
        r.text("scenario"),
        r.text("variant"),
        r.num("size").unwrap_or(0.0) as u64,
        r.text("system"),
    )
}

/// Per (scenario, variant, size, system): the median of every number over the runs;
/// a boolean is true only if it was true in every run.
fn medians(all: &[(usize, Res)]) -> Vec<Res> {
    let mut groups: BTreeMap<Key, Vec<&Res>> = BTreeMap::new();
    for (_, r) in all {
        groups.entry(key(r)).or_default().push(r);
    }
    let order = |s: &str| match s {
        "roomcast" => 0,
        "redis-benchmark" => 1,
        "redis-rs" => 2,
        _ => 3,
    };
    let mut keys: Vec<&Key> = groups.keys().collect();
    keys.sort_by_key(|k| (k.0.clone(), k.1.clone(), k.2, order(&k.3)));
    let mut out = Vec::new();
    for k in keys {
        let rs = &groups[k];
        let mut m = Res::default();
        for (field, v) in &rs[0].0 {
            match v {
                serde_json::Value::Number(_) => {
                    let mut xs: Vec<f64> = rs.iter().filter_map(|r| r.num(field)).collect();
                    xs.sort_by(f64::total_cmp);
                    if !xs.is_empty() {
                        m.setf(field, xs[xs.len() / 2]);
                    }
                }
                serde_json::Value::Bool(_) => {
                    let all = rs
                        .iter()
                        .all(|r| r.0.get(field).and_then(|v| v.as_bool()) == Some(true));
                    m.set(field, all);
                }
                other => {
                    m.0.insert(field.clone(), other.clone());
                }
            }
        }
        if let Some(e) = rs.iter().find_map(|r| r.0.get("error")) {
            m.0.insert("error".into(), e.clone());
        }
        m.set("runs", rs.len() as u64);
        m.0.remove("run");
        out.push(m);
    }
    out
}

/// roomcast against each peer, pair by pair, in S1–S3.
fn ratios(medians: &[Res]) -> Vec<Res> {
    let find = |s: &str, v: &str, size: u64, sys: &str| {
        medians
            .iter()
            .find(|r| key(r) == (s.to_string(), v.to_string(), size, sys.to_string()))
    };
    let mut out = Vec::new();
    for rc in medians.iter().filter(|r| r.text("system") == "roomcast") {
        let (s, v, size, _) = key(rc);
        if !matches!(s.as_str(), "S1" | "S2" | "S3") {
            continue;
        }
        for peer in ["redis-benchmark", "redis-rs", "fred"] {
            let Some(p) = find(&s, &v, size, peer) else {
                continue;
            };
            let mut r = Res::default();
            r.set("scenario", s.as_str());
            r.set("system", format!("roomcast/{peer}"));
            r.set("variant", v.as_str());
            r.set("size", size);
            let mut any = false;
            for (field, name) in [
                ("msgs_per_s", "msgs_per_s_ratio"),
                ("cpu_s_per_m", "cpu_per_msg_ratio"),
                ("p50_us", "p50_ratio"),
                ("p99_us", "p99_ratio"),
                ("p999_us", "p999_ratio"),
                ("live_s", "live_time_ratio"),
                ("bytes_per_room", "memory_per_room_ratio"),
            ] {
                if let (Some(a), Some(b)) = (rc.num(field), p.num(field)) {
                    if b != 0.0 {
                        r.setf(name, a / b);
                        any = true;
                    }
                }
            }
            if any {
                out.push(r);
            }
        }
    }
    out
}

fn table(medians: &[Res], ratios: &[Res], runs: usize) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nMedians of {runs} run(s). msg/s: messages published/s with every delivery in \
         (end to end); CPU: client CPU seconds per million delivered messages; RSS: the \
         client process.\n"
    );
    let _ = writeln!(
        t,
        "{:<3} {:<14} {:>5} {:<16} {:>10} {:>21} {:>5} {:>36} {:>8} {:>7} {:>7}",
        "",
        "variant",
        "size",
        "system",
        "msg/s",
        "delivered/expected",
        "once",
        "p50 / p99 / p999 / max µs",
        "CPU s/M",
        "RSS MB",
        "srv CPU"
    );
    let f = |r: &Res, k: &str| r.num(k).map_or("-".to_string(), human);
    for r in medians {
        let lat = if r.0.contains_key("p50_us") {
            format!(
                "{} / {} / {} / {}",
                f(r, "p50_us"),
                f(r, "p99_us"),
                f(r, "p999_us"),
                f(r, "max_us")
            )
        } else {
            "-".into()
        };
        let once = match r.0.get("exactly_once").and_then(|v| v.as_bool()) {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            t,
            "{:<3} {:<14} {:>5} {:<16} {:>10} {:>21} {:>5} {:>36} {:>8} {:>7} {:>7}",
            r.text("scenario"),
            r.text("variant"),
            r.num("size").unwrap_or(0.0) as u64,
            r.text("system"),
            f(r, "msgs_per_s"),
            format!("{}/{}", f(r, "delivered"), f(r, "expected")),
            once,
            lat,
            f(r, "cpu_s_per_m"),
            r.num("rss_kb")
                .map_or("-".into(), |k| format!("{:.1}", k / 1024.0)),
            f(r, "server_cpu_s"),
        );
        let extra = match r.text("scenario").as_str() {
            "S3" => format!(
                "all {} rooms live in {} s ({} rooms/s), {} B resident per room",
                f(r, "rooms"),
                f(r, "live_s"),
                f(r, "rooms_per_s"),
                f(r, "bytes_per_room")
            ),
            "S4" => format!(
                "{} members: {} member deliveries/s",
                f(r, "members"),
                f(r, "deliveries_per_s")
            ),
            "S5" => format!(
                "{} ops/s ({} ops, {} errors); {} rooms with members, {} channels subscribed \
                 ({} missing, {} extra): match {}",
                f(r, "ops_per_s"),
                f(r, "ops"),
                f(r, "errors"),
                f(r, "rooms_with_members"),
                f(r, "channels_subscribed"),
                f(r, "channels_missing"),
                f(r, "channels_extra"),
                r.text("subscriptions_match")
            ),
            "S6" => format!(
                "{} rooms: link up {} ms after CLIENT KILL, every room live {} ms later \
                 ({} ms in all)",
                f(r, "rooms"),
                f(r, "kill_to_up_ms"),
                f(r, "up_to_all_live_ms"),
                f(r, "kill_to_all_live_ms")
            ),
            "S2" if r.text("variant").starts_with("paced") => {
                format!("paced at {} msg/s", f(r, "rate"))
            }
            "S2" if r.text("system") == "redis-benchmark" => {
                "publish→reply round trip (no client library; not publish→deliver)".into()
            }
            _ => String::new(),
        };
        if !extra.is_empty() {
            let _ = writeln!(t, "      {extra}");
        }
        if r.0.contains_key("error") {
            let _ = writeln!(t, "      ERROR: {}", r.text("error"));
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            t,
            "\nRatios (roomcast ÷ peer; >1 is better for msg/s, <1 is better for the rest):"
        );
        for r in ratios {
            let mut parts = Vec::new();
            for (k, name) in [
                ("msgs_per_s_ratio", "msg/s"),
                ("cpu_per_msg_ratio", "CPU/msg"),
                ("p50_ratio", "p50"),
                ("p99_ratio", "p99"),
                ("p999_ratio", "p999"),
                ("live_time_ratio", "time to live"),
                ("memory_per_room_ratio", "memory/room"),
            ] {
                if let Some(v) = r.num(k) {
                    parts.push(format!("{name} {v:.2}"));
                }
            }
            let _ = writeln!(
                t,
                "  {:<3} {:<14} {:>5} {:<26} {}",
                r.text("scenario"),
                r.text("variant"),
                r.num("size").unwrap_or(0.0) as u64,
                r.text("system"),
                parts.join(", ")
            );
        }
    }
    t
}
