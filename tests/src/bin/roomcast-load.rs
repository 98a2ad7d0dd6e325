//! `roomcast-load`: the load generator of roomcast.
//!
//! Starts a private `redis-server` on a free loopback port (or uses `REDIS_URL`) and runs
//! the scenarios, every (scenario, system) in a worker process of its own so that its CPU
//! time and memory are its own:
//!
//! - S1 throughput: a publisher on instance A, members on B and C; one room and many
//!   rooms; 64 B and 1 KiB; at in-flight depths 64, 1,024 and 4,096 for every system;
//!   delivered messages/s end to end and exactly-once. "The server's limit" is the best
//!   lossless `redis-benchmark` configuration (depth and connections) of the same run.
//! - S2 latency: publish→deliver percentiles with one message in flight, and paced by a
//!   precise pacer at the same rates for every system (10k, 100k, 200k msg/s).
//! - S3 many rooms: 100,000 rooms joined on one instance: time until all live, memory per
//!   room, then one message per room.
//! - S4 in-process fan-out: 10,000 local members of one room on one instance: member
//!   deliveries/s (Redis carries one copy per message).
//! - S5 churn: joins and leaves at a high rate while traffic flows; at the end some rooms
//!   are emptied and Redis's subscriptions (`PUBSUB CHANNELS`) must be the rooms with
//!   members; a member that stayed in its rooms throughout must get every message once.
//! - S6 recovery: `CLIENT KILL` of the subscriber with 10,000 rooms while messages flow
//!   (before, during and after): time until every room is live again, and every message
//!   delivered or reported missing in a gap event.
//! - S7 migration (on a local Redis Cluster; only when asked for): rooms spread over three
//!   shards, a paced stream into them, then the slots of some rooms migrate to another
//!   master, and in a second run a shard fails over (`CLUSTER FAILOVER`): messages lost
//!   before and after, and how long until the touched rooms deliver again, for roomcast,
//!   the `redis` crate's cluster pub/sub and `fred` (SSUBSCRIBE/SPUBLISH).
//! - S8 member queue: one member receiving paced traffic at increasing rates with the
//!   default member queue (1 MiB, `q:1MiB`), the former default of 1,024 messages (`q1024`)
//!   and an unbounded one: messages dropped and the largest backlog.
//!
//! S1–S3 also run through `redis-benchmark` (the server's own PUBLISH limit, raw
//! subscribers attached) and, with the cargo feature `peers`, through the `redis` and
//! `fred` crates; S1 also through `raw`, a minimal hand-written client on the same runtime
//! doing S1's loop with nothing of its own (the floor of client CPU per message).
//!
//! `--cluster` also runs S1 and S3 on a local 3-shard cluster (three masters, three
//! replicas, started here with `RedisCluster`; `-cluster` variants) with sharded pub/sub:
//! msg/s, server CPU per message on each node (`/proc/<pid>/stat`), and cluster-bus messages
//! per publish (`CLUSTER INFO` `cluster_stats_messages_sent`/`_received`, summed over the
//! nodes). `redis-benchmark` does not run there (its raw subscribers know no slots).
//!
//! ```text
//! cargo run --release -p roomcast-tests --features peers --bin roomcast-load -- [options]
//!   --quick            small counts; finishes in well under a minute
//!   --json             one JSON object per result line on stdout (the table goes to stderr)
//!   --runs N           repeat everything N times; the table shows medians (default 3, quick 1)
//!   --scenarios LIST   e.g. S1,S2 (default: all but S7)
//!   --cluster          S1 and S3 also on a local 3-shard Redis Cluster
//!   --depths LIST      S1's in-flight depths (default 64,1024,4096)
//!   --rates LIST       S2's paced rates, msg/s (default 10000,100000,200000; quick:
//!                      2000,5000,10000, what a debug build sustains open loop)
//!   --systems LIST     roomcast,redis-benchmark,redis-rs,fred,raw (default: all available)
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

use load::common::{ClusterNode, Job, Res};

/// The scenarios run by default (S7 needs a local cluster: it runs when asked for).
const ALL_SCENARIOS: [&str; 7] = ["S1", "S2", "S3", "S4", "S5", "S6", "S8"];

/// Every scenario there is.
const KNOWN_SCENARIOS: [&str; 8] = ["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8"];

fn systems_available() -> Vec<&'static str> {
    let mut v = vec!["roomcast", "redis-benchmark"];
    if cfg!(feature = "peers") {
        v.extend(["redis-rs", "fred", "raw"]);
    }
    v
}

struct Opts {
    quick: bool,
    json: bool,
    runs: usize,
    scenarios: Vec<String>,
    systems: Vec<String>,
    depths: Vec<u64>,
    rates: Option<Vec<f64>>,
    cluster: bool,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        json: false,
        runs: 0,
        scenarios: ALL_SCENARIOS.iter().map(|s| s.to_string()).collect(),
        systems: systems_available().iter().map(|s| s.to_string()).collect(),
        depths: vec![64, 1024, 4096],
        rates: None,
        cluster: false,
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
            "--cluster" => o.cluster = true,
            "--json" => o.json = true,
            "--runs" => o.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--scenarios" => o.scenarios = list(&value()?.to_uppercase()),
            "--systems" => o.systems = list(&value()?),
            "--rates" => {
                let rates = list(&value()?)
                    .iter()
                    .map(|r| r.parse::<f64>().map_err(|e| format!("--rates: {r}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                if rates.iter().any(|r| r.is_nan() || *r < 1.0) {
                    return Err("--rates: a rate is at least 1 msg/s".into());
                }
                o.rates = Some(rates);
            }
            "--depths" => {
                o.depths = list(&value()?)
                    .iter()
                    .map(|d| d.parse::<u64>().map_err(|e| format!("--depths: {d}: {e}")))
                    .collect::<Result<_, _>>()?;
                if o.depths.contains(&0) {
                    return Err("--depths: a depth is at least 1".into());
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if let Some(s) = o
        .scenarios
        .iter()
        .find(|s| !KNOWN_SCENARIOS.contains(&s.as_str()))
    {
        return Err(format!(
            "unknown scenario {s} (known: {})",
            KNOWN_SCENARIOS.join(", ")
        ));
    }
    for s in &o.systems {
        if !systems_available().contains(&s.as_str()) {
            return Err(format!(
                "system {s} is not available (known: {}; redis-rs, fred and raw need --features peers)",
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
    "usage: roomcast-load [--quick] [--json] [--runs N] [--scenarios S1,..,S8] [--cluster] \
     [--systems roomcast,redis-benchmark,redis-rs,fred,raw] [--depths 64,1024,4096] \
     [--rates 10000,100000,200000]\n\
     Uses REDIS_URL when set, else starts a private redis-server on a free loopback port; \
     S7 and --cluster start a private 6-node Redis Cluster."
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
        "redis-rs" | "fred" | "raw" => load::peers::run(&job),
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
    s2_rates: Vec<f64>,
    s6_rate: f64,
    s7_rates: [f64; 4],
    s7_s: f64,
    s3_rooms: usize,
    s4_members: usize,
    s4_count: u64,
    s5_rooms: usize,
    s5_ops: u64,
    s5_secs: u64,
    s5_rate: f64,
    s6_rooms: usize,
    s7: load::migration::Plan,
    limit: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                s1_count: [4_000, 1_000],
                s1_rooms: 100,
                s2_one: 300,
                s2_paced_s: 0.3,
                s2_rates: vec![2_000.0, 5_000.0, 10_000.0],
                s6_rate: 10_000.0,
                s7_rates: [100_000.0, 200_000.0, 300_000.0, 400_000.0],
                s7_s: 0.2,
                s3_rooms: 2_000,
                s4_members: 500,
                s4_count: 10,
                s5_rooms: 100,
                s5_ops: 4_000,
                s5_secs: 1,
                s5_rate: 1_000.0,
                s6_rooms: 500,
                s7: load::migration::Plan {
                    rooms: 60,
                    rate: 2_000.0,
                    before: Duration::from_millis(500),
                    observe: Duration::from_secs(5),
                    after: Duration::from_millis(500),
                },
                limit: Duration::from_secs(15),
            }
        } else {
            Plan {
                s1_count: [1_000_000, 300_000],
                s1_rooms: 1_000,
                s2_one: 20_000,
                s2_paced_s: 3.0,
                s2_rates: vec![10_000.0, 100_000.0, 200_000.0],
                s6_rate: 50_000.0,
                s7_rates: [100_000.0, 200_000.0, 300_000.0, 400_000.0],
                s7_s: 2.0,
                s3_rooms: 100_000,
                s4_members: 10_000,
                s4_count: 200,
                s5_rooms: 1_000,
                s5_ops: 2_000_000,
                s5_secs: 5,
                s5_rate: 20_000.0,
                s6_rooms: 10_000,
                s7: load::migration::Plan {
                    rooms: 300,
                    rate: 10_000.0,
                    before: Duration::from_secs(2),
                    observe: Duration::from_secs(10),
                    after: Duration::from_secs(1),
                },
                limit: Duration::from_secs(60),
            }
        }
    }
}

fn orchestrate(opts: &Opts) -> Result<bool, String> {
    let mut plan = Plan::new(opts.quick);
    if let Some(r) = &opts.rates {
        plan.s2_rates = r.clone();
    }
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
    let wants_cluster = opts.cluster || opts.scenarios.iter().any(|s| s == "S7");
    let mut cluster = if wants_cluster {
        let t = Instant::now();
        let c = roomcast_tests::RedisCluster::try_start(3, 1).map_err(|e| e.to_string())?;
        eprintln!(
            "roomcast-load: cluster {} formed in {:.1} s",
            c.url(),
            t.elapsed().as_secs_f64()
        );
        Some(c)
    } else {
        None
    };
    let cluster_nodes: Vec<ClusterNode> = cluster.as_ref().map_or(Vec::new(), |c| {
        c.ports()
            .into_iter()
            .map(|port| ClusterNode {
                port,
                pid: c.node(port).pid(),
            })
            .collect()
    });
    let mut failovers = 0usize;
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
        for scenario in &opts.scenarios {
            if scenario == "S7" {
                if let Some(c) = cluster.as_mut() {
                    for r in migration_runs(opts, &plan, c, &mut seq, &mut failovers) {
                        let what = format!("S7 {} {}", r.text("variant"), r.text("system"));
                        ok &= record(opts, started, run, &what, r, &mut all);
                    }
                }
                continue;
            }
            let on_cluster = cluster
                .as_ref()
                .filter(|_| opts.cluster)
                .map(|c| (c.url(), cluster_nodes.as_slice()));
            for job in jobs(opts, &plan, scenario, &url, pid, on_cluster) {
                seq += 1;
                let mut job = job;
                job.prefix = format!("ld{}x{seq}", std::process::id());
                for r in run_worker(&exe, &job) {
                    let what = format!(
                        "{} {} {} B {} {}",
                        job.scenario,
                        job.variant,
                        job.size,
                        config(&r),
                        job.system
                    );
                    ok &= record(opts, started, run, &what, r, &mut all);
                }
            }
        }
    }
    let medians = medians(&all);
    let mut ratios = ratios(&medians);
    ratios.extend(server_limits(&medians));
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

/// S7: for each change (a slot migration, then a manual failover) each system in turn, on
/// the cluster; `failovers` rotates the shard a failover takes over.
fn migration_runs(
    opts: &Opts,
    plan: &Plan,
    cluster: &mut roomcast_tests::RedisCluster,
    seq: &mut usize,
    failovers: &mut usize,
) -> Vec<Res> {
    use load::migration::{self, Change, Ledger};
    let mut out = Vec::new();
    for change in [Change::Migration, Change::Failover] {
        for system in ["roomcast", "redis-rs", "fred"] {
            if !opts.systems.iter().any(|s| s == system) {
                continue;
            }
            *seq += 1;
            let prefix = format!("ld{}x{seq}", std::process::id());
            let job = migration::job(system, change, &plan.s7, cluster, &prefix);
            let ledger = Ledger::new(job.count);
            let subject = match system {
                "roomcast" => load::rc::s7_subject(&job, ledger.clone()),
                #[cfg(feature = "peers")]
                _ => load::peers::s7_subject(&job, ledger.clone()),
                #[cfg(not(feature = "peers"))]
                _ => Err("the peers need --features peers".to_string()),
            };
            let res = match subject {
                Ok(subject) => {
                    let r = migration::run(
                        cluster, &job, &plan.s7, change, *failovers, subject, ledger,
                    );
                    if change == Change::Failover {
                        *failovers += 1;
                    }
                    r
                }
                Err(e) => {
                    let mut r = job.result();
                    r.set("error", e);
                    r
                }
            };
            out.push(res);
        }
    }
    out
}

fn jobs(
    opts: &Opts,
    plan: &Plan,
    scenario: &str,
    url: &str,
    pid: Option<u32>,
    cluster: Option<(String, &[ClusterNode])>,
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
        clients: 1,
        queue: 0,
        queue_bytes: 0,
        prefix: String::new(),
        nodes: Vec::new(),
    };
    let has = |s: &str| opts.systems.iter().any(|x| x == s);
    let peers: Vec<&str> = ["roomcast", "redis-benchmark", "redis-rs", "fred"]
        .into_iter()
        .filter(|s| has(s))
        .collect();
    // S1 also runs the minimal client: the floor of the same loop.
    let s1_systems: Vec<&str> = peers
        .iter()
        .copied()
        .chain(has("raw").then_some("raw"))
        .collect();
    let mut v = Vec::new();
    match scenario {
        "S1" => {
            for (size, count) in [(64, plan.s1_count[0]), (1024, plan.s1_count[1])] {
                for (variant, rooms) in [("1room", 1), ("rooms", plan.s1_rooms)] {
                    for &depth in &opts.depths {
                        for s in &s1_systems {
                            let mut j = base(s, variant, size, rooms, count);
                            j.window = depth;
                            v.push(j.clone());
                            // The server's limit: also 4 publishing connections sharing the
                            // same depth (pipelines of depth / 4).
                            if *s == "redis-benchmark" && depth >= 4 {
                                j.clients = 4;
                                v.push(j);
                            }
                        }
                    }
                }
            }
        }
        "S2" => {
            for s in &peers {
                v.push(base(s, "one-in-flight", 64, 1, plan.s2_one));
            }
            // Paced: every system at the same rates (redis-benchmark cannot pace).
            for &rate in &plan.s2_rates {
                for s in peers.iter().filter(|s| **s != "redis-benchmark") {
                    let mut j = base(s, "paced", 64, 1, (rate * plan.s2_paced_s) as u64);
                    j.rate = rate;
                    v.push(j);
                }
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
            let mut j = base("roomcast", "in-process-fan-out", 64, 1, plan.s4_count);
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
            let mut j = base(
                "roomcast",
                "client-kill",
                64,
                plan.s6_rooms,
                plan.s6_rooms as u64,
            );
            j.rate = plan.s6_rate;
            v.push(j);
        }
        "S8" if has("roomcast") => {
            // One member at rising rates: the default queue (1 MiB, count cap 65,536), the
            // former default (1,024 messages), and one that never drops (its largest backlog
            // is the burst the default would have to hold).
            for (queue, queue_bytes) in [(1 << 16, 1 << 20), (1024, 0), (1 << 22, 0)] {
                for rate in plan.s7_rates {
                    let mut j = base("roomcast", "one-member", 64, 1, (rate * plan.s7_s) as u64);
                    j.receivers = 1;
                    j.rate = rate;
                    j.queue = queue;
                    j.queue_bytes = queue_bytes;
                    v.push(j);
                }
            }
        }
        _ => {}
    }
    if let (Some((url, nodes)), "S1" | "S3") = (&cluster, scenario) {
        // The same jobs on the cluster (sharded pub/sub), for every system but
        // redis-benchmark, whose raw subscribers know no slots.
        let on_cluster: Vec<Job> = v
            .iter()
            .filter(|j| !matches!(j.system.as_str(), "redis-benchmark" | "raw") && j.clients == 1)
            .map(|j| Job {
                variant: format!("{}-cluster", j.variant),
                url: url.clone(),
                server_pid: None,
                nodes: nodes.to_vec(),
                ..j.clone()
            })
            .collect();
        v.extend(on_cluster);
    }
    v
}

/// Whether workers can run in a session of their own: the `setsid` command (util-linux) is
/// there.
fn has_setsid() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new("setsid")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The command that starts a worker: in a session of its own where `setsid` is there.
/// Linux shares CPU fairly between sessions before it does between the threads of one
/// (autogroup scheduling); a worker in the load generator's session would share one group
/// with the private `redis-server` the load generator started, as no deployed client and
/// Redis server (separate services, in groups of their own) do. In one group the kernel
/// weighs Redis against each client thread alone, which changed the results by system:
/// roomcast's threads woke two to three times as often and it ran 25 % slower, while the
/// `redis` crate's CPU did not move (see BENCHMARKS.md, "Fairness rules").
fn worker_command(exe: &std::path::Path) -> Command {
    if has_setsid() {
        let mut c = Command::new("setsid");
        c.arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

/// Runs one job in a worker process; its JSON lines (or an error result), each marked with
/// whether the worker had a session of its own (`worker_own_session`).
fn run_worker(exe: &std::path::Path, job: &Job) -> Vec<Res> {
    let mut out = run_worker_lines(exe, job);
    for r in &mut out {
        r.set("worker_own_session", has_setsid());
    }
    out
}

fn run_worker_lines(exe: &std::path::Path, job: &Job) -> Vec<Res> {
    let child = worker_command(exe)
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

/// The configuration of a result beyond scenario, variant and size: depth and connections
/// (S1, S3), rate (S2 paced, S5, S6, S8), member queue (S8).
fn config(r: &Res) -> String {
    let mut parts = Vec::new();
    if let Some(d) = r.num("depth") {
        parts.push(format!("d{}", d as u64));
    }
    if let Some(c) = r.num("clients").filter(|c| *c > 1.0) {
        parts.push(format!("x{}", c as u64));
    }
    if let Some(rate) = r.num("rate") {
        parts.push(format!("{}/s", human(rate)));
    }
    if let Some(b) = r.num("queue_bytes") {
        parts.push(format!("q:{}MiB", b / (1u64 << 20) as f64));
    } else if let Some(q) = r.num("queue") {
        if q >= (1u64 << 22) as f64 {
            parts.push("q:unbounded".into());
        } else {
            parts.push(format!("q{}", q as u64));
        }
    }
    parts.join(" ")
}

/// The few numbers that matter for a progress line.
fn short(r: &Res) -> String {
    if r.0.contains_key("error") {
        return format!("ERROR {}", r.text("error"));
    }
    let f = |k: &str| r.num(k).map_or("-".to_string(), human);
    match r.text("scenario").as_str() {
        "S1" => format!(
            "{} msg/s, {}/{} delivered, exactly once {}, {} CPU s per M ({} user, {} kernel)",
            f("msgs_per_s"),
            f("delivered"),
            f("expected"),
            r.text("exactly_once"),
            f("cpu_s_per_m"),
            f("user_s_per_m"),
            f("sys_s_per_m")
        ),
        "S2" => format!(
            "p50 {} p99 {} p999 {} max {} µs, {}/{} delivered, exactly once {}, pacer CPU {} s",
            f("p50_us"),
            f("p99_us"),
            f("p999_us"),
            f("max_us"),
            f("delivered"),
            f("expected"),
            r.text("exactly_once"),
            f("pacer_cpu_s")
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
            "{} ops/s, subscriptions match {} ({} rooms, {} emptied), steady member {}/{}, \
             exactly once {}",
            f("ops_per_s"),
            r.text("subscriptions_match"),
            f("rooms_with_members"),
            f("rooms_emptied"),
            f("steady_delivered"),
            f("steady_expected"),
            r.text("exactly_once")
        ),
        "S6" => format!(
            "link up {} ms after the kill, all live {} ms after that; {} published: {} \
             delivered, {} reported as gaps, {} neither; exactly once {}",
            f("kill_to_up_ms"),
            f("up_to_all_live_ms"),
            f("published"),
            f("delivered"),
            f("lost_reported_as_gaps"),
            f("lost_unreported"),
            r.text("exactly_once")
        ),
        "S7" => format!(
            "{}: {} rooms touched; {} published, {} failed; lost {} before / {} after the \
             change; live again after {} ms (max), {} rooms never within {} s",
            r.text("change"),
            f("rooms_touched"),
            f("published"),
            f("publish_failed"),
            f("lost_before_event"),
            f("lost_after_event"),
            f("live_again_ms_max"),
            f("rooms_never_live_again"),
            f("never_within_s")
        ),
        "S8" => format!(
            "{} msg/s delivered, {} dropped ({}%), largest backlog {} messages, drops = losses \
             {}; {} publishes refused by the sender",
            f("msgs_per_s"),
            f("dropped"),
            f("dropped_pct"),
            f("queue_peak"),
            r.text("drops_account_for_losses"),
            f("publish_refused")
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

/// (scenario, variant, size, depth, connections, rate, queue, system).
type Key = (String, String, u64, u64, u64, u64, u64, String);

fn key(r: &Res) -> Key {
    let n = |k: &str| r.num(k).unwrap_or(0.0) as u64;
    (
        r.text("scenario"),
        r.text("variant"),
        n("size"),
        n("depth"),
        n("clients"),
        n("rate"),
        n("queue"),
        r.text("system"),
    )
}

/// Per configuration and system: the median of every number over the runs; a boolean is
/// true only if it was true in every run.
fn medians(all: &[(usize, Res)]) -> Vec<Res> {
    let mut groups: BTreeMap<Key, Vec<&Res>> = BTreeMap::new();
    for (_, r) in all {
        groups.entry(key(r)).or_default().push(r);
    }
    let order = |s: &str| match s {
        "roomcast" => 0,
        "redis-benchmark" => 1,
        "redis-rs" => 2,
        "fred" => 3,
        _ => 4,
    };
    let mut keys: Vec<&Key> = groups.keys().collect();
    keys.sort_by_key(|k| {
        (
            k.0.clone(),
            k.2,
            k.1.clone(),
            k.6,
            k.5,
            k.3,
            order(&k.7),
            k.4,
        )
    });
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

/// roomcast against each peer in S1–S3, at the same configuration (depth, one publishing
/// connection, rate): pair by pair.
fn ratios(medians: &[Res]) -> Vec<Res> {
    let mut out = Vec::new();
    for rc in medians.iter().filter(|r| r.text("system") == "roomcast") {
        let k = key(rc);
        if !matches!(k.0.as_str(), "S1" | "S2" | "S3") {
            continue;
        }
        for peer in ["redis-benchmark", "redis-rs", "fred", "raw"] {
            let mut want = k.clone();
            want.7 = peer.to_string();
            let Some(p) = medians.iter().find(|r| key(r) == want) else {
                continue;
            };
            let mut r = Res::default();
            for f in ["scenario", "variant", "size", "depth", "rate"] {
                if let Some(v) = rc.0.get(f) {
                    r.0.insert(f.into(), v.clone());
                }
            }
            r.set("system", format!("roomcast/{peer}"));
            let mut any = false;
            for (field, name) in [
                ("msgs_per_s", "msgs_per_s_ratio"),
                ("cpu_s_per_m", "cpu_per_msg_ratio"),
                ("user_s_per_m", "user_cpu_per_msg_ratio"),
                ("sys_s_per_m", "sys_cpu_per_msg_ratio"),
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
    out.extend(cluster_ratios(medians));
    out
}

/// Each system on the cluster against itself on one node, at the same configuration:
/// msg/s and server CPU per message (all nodes) of the cluster ÷ one node.
fn cluster_ratios(medians: &[Res]) -> Vec<Res> {
    let mut out = Vec::new();
    for c in medians
        .iter()
        .filter(|r| r.text("variant").ends_with("-cluster"))
    {
        let mut want = key(c);
        want.1 = want.1.trim_end_matches("-cluster").to_string();
        let Some(one) = medians.iter().find(|r| key(r) == want) else {
            continue;
        };
        let mut r = Res::default();
        for f in ["scenario", "variant", "size", "depth"] {
            if let Some(v) = c.0.get(f) {
                r.0.insert(f.into(), v.clone());
            }
        }
        r.set("system", format!("{} cluster/one node", c.text("system")));
        for (field, name) in [
            ("msgs_per_s", "msgs_per_s_ratio"),
            ("server_cpu_us_per_msg", "server_cpu_per_msg_ratio"),
            ("cpu_s_per_m", "cpu_per_msg_ratio"),
        ] {
            if let (Some(a), Some(b)) = (c.num(field), one.num(field).filter(|b| *b != 0.0)) {
                r.setf(name, a / b);
            }
        }
        out.push(r);
    }
    out
}

/// "The server's limit" of each S1 configuration (rooms, size): the fastest `redis-benchmark`
/// configuration (depth and connections) that delivered every message to every subscriber
/// in every run, and roomcast's fastest lossless depth against it.
fn server_limits(medians: &[Res]) -> Vec<Res> {
    let lossless = |r: &&Res| {
        r.text("scenario") == "S1"
            && r.0.get("exactly_once").and_then(|v| v.as_bool()) == Some(true)
            && !r.0.contains_key("error")
    };
    let best = |system: &str, variant: &str, size: f64| {
        medians
            .iter()
            .filter(lossless)
            .filter(|r| {
                r.text("system") == system
                    && r.text("variant") == variant
                    && r.num("size") == Some(size)
            })
            .max_by(|a, b| {
                let rate = |r: &Res| r.num("msgs_per_s").unwrap_or(0.0);
                rate(a).total_cmp(&rate(b))
            })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let single = |r: &&Res| r.text("scenario") == "S1" && !r.text("variant").ends_with("-cluster");
    for r in medians.iter().filter(single) {
        let (variant, size) = (r.text("variant"), r.num("size").unwrap_or(0.0));
        if !seen.insert((variant.clone(), size as u64)) {
            continue;
        }
        let mut x = Res::default();
        x.set("scenario", "S1");
        x.set("variant", variant.as_str());
        x.setf("size", size);
        x.set("system", "server-limit");
        match best("redis-benchmark", &variant, size) {
            Some(b) => {
                x.setf(
                    "server_limit_msgs_per_s",
                    b.num("msgs_per_s").unwrap_or(0.0),
                );
                x.setf("server_limit_depth", b.num("depth").unwrap_or(0.0));
                x.setf("server_limit_clients", b.num("clients").unwrap_or(1.0));
            }
            None => {
                x.set("server_limit_msgs_per_s", serde_json::Value::Null);
            }
        }
        if let Some(rc) = best("roomcast", &variant, size) {
            x.setf(
                "roomcast_best_msgs_per_s",
                rc.num("msgs_per_s").unwrap_or(0.0),
            );
            x.setf("roomcast_best_depth", rc.num("depth").unwrap_or(0.0));
            if let (Some(a), Some(b)) = (
                rc.num("msgs_per_s"),
                x.num("server_limit_msgs_per_s").filter(|b| *b > 0.0),
            ) {
                x.setf("msgs_per_s_ratio", a / b);
            }
        }
        out.push(x);
    }
    out
}

fn table(medians: &[Res], ratios: &[Res], runs: usize) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nMedians of {runs} run(s). msg/s: messages published/s with every delivery in \
         (end to end, redis-benchmark included); CPU: client CPU seconds per million \
         delivered messages (a paced run's pacer thread left out, shown apart); RSS: the \
         client process. Config: dN in-flight depth, xN publishing connections, rate, qN \
         member queue.\n"
    );
    let _ = writeln!(
        t,
        "{:<3} {:<19} {:>5} {:<16} {:<16} {:>10} {:>21} {:>5} {:>36} {:>8} {:>7} {:>7}",
        "",
        "variant",
        "size",
        "config",
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
            "{:<3} {:<19} {:>5} {:<16} {:<16} {:>10} {:>21} {:>5} {:>36} {:>8} {:>7} {:>7}",
            r.text("scenario"),
            r.text("variant"),
            r.num("size").unwrap_or(0.0) as u64,
            config(r),
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
            "S1" | "S3" if r.text("variant").ends_with("-cluster") => format!(
                "{}on 3 shards: server CPU {} µs per message (busiest node {}), {} cluster-bus \
                 messages sent per publish",
                if r.text("scenario") == "S3" {
                    format!("all {} rooms live in {} s; ", f(r, "rooms"), f(r, "live_s"))
                } else {
                    String::new()
                },
                f(r, "server_cpu_us_per_msg"),
                f(r, "max_node_cpu_us_per_msg"),
                f(r, "bus_sent_per_publish")
            ),
            "S1" if r.num("subscribers_disconnected").is_some_and(|d| d > 0.0) => format!(
                "{} subscriber(s) disconnected by the server (output buffer limit)",
                f(r, "subscribers_disconnected")
            ),
            "S3" => format!(
                "all {} rooms live in {} s ({} rooms/s), {} B resident per room",
                f(r, "rooms"),
                f(r, "live_s"),
                f(r, "rooms_per_s"),
                f(r, "bytes_per_room")
            ),
            "S4" => format!(
                "in-process fan-out: {} members of one room on one instance: {} member \
                 deliveries/s",
                f(r, "members"),
                f(r, "deliveries_per_s")
            ),
            "S5" => format!(
                "{} ops/s ({} ops, {} errors); {} rooms emptied at the end; {} rooms with \
                 members, {} channels subscribed ({} missing, {} extra): match {}; steady \
                 member {}/{} ({} lost)",
                f(r, "ops_per_s"),
                f(r, "ops"),
                f(r, "errors"),
                f(r, "rooms_emptied"),
                f(r, "rooms_with_members"),
                f(r, "channels_subscribed"),
                f(r, "channels_missing"),
                f(r, "channels_extra"),
                r.text("subscriptions_match"),
                f(r, "steady_delivered"),
                f(r, "steady_expected"),
                f(r, "steady_lost")
            ),
            "S6" => format!(
                "{} rooms: link up {} ms after CLIENT KILL, every room live {} ms later \
                 ({} ms in all); {} published ({} before the kill): {} delivered, {} \
                 reported as gaps, {} neither",
                f(r, "rooms"),
                f(r, "kill_to_up_ms"),
                f(r, "up_to_all_live_ms"),
                f(r, "kill_to_all_live_ms"),
                f(r, "published"),
                f(r, "published_before_kill"),
                f(r, "delivered"),
                f(r, "lost_reported_as_gaps"),
                f(r, "lost_unreported")
            ),
            "S7" if !r.0.contains_key("error") => format!(
                "{}: {} of {} rooms touched; {} published ({} failed, {} after the change); \
                 lost {} before and {} after the change ({} in untouched rooms); touched \
                 rooms live again after {} ms (median {} ms), {} never within {} s{}",
                r.text("change"),
                f(r, "rooms_touched"),
                f(r, "rooms"),
                f(r, "published"),
                f(r, "publish_failed"),
                f(r, "publish_failed_after_event"),
                f(r, "lost_before_event"),
                f(r, "lost_after_event"),
                f(r, "lost_untouched_rooms"),
                f(r, "live_again_ms_max"),
                f(r, "live_again_ms_median"),
                f(r, "rooms_never_live_again"),
                f(r, "never_within_s"),
                match r.text("system").as_str() {
                    "roomcast" => format!(
                        "; RoomNotLive for {} / RoomLive again for {} touched rooms (latest {} \
                         ms); lost: {} reported in gaps, {} unreported",
                        f(r, "touched_rooms_reported_not_live"),
                        f(r, "touched_rooms_reported_live_again"),
                        f(r, "room_live_event_ms_max"),
                        f(r, "lost_reported_as_gaps"),
                        f(r, "lost_unreported")
                    ),
                    "redis-rs" => format!(
                        "; unsolicited sunsubscribes received (and ignored): {}",
                        f(r, "unsolicited_sunsubscribes_seen")
                    ),
                    _ => String::new(),
                }
            ),
            "S8" => format!(
                "{} dropped ({} %), largest backlog {} messages ({} B of payload); every \
                 loss at the member counted as a drop: {}; {} publishes refused by the sender",
                f(r, "dropped"),
                f(r, "dropped_pct"),
                f(r, "queue_peak"),
                f(r, "queue_peak_bytes"),
                r.text("drops_account_for_losses"),
                f(r, "publish_refused")
            ),
            "S2" if r.num("rate").is_some() => format!(
                "pacer: {} CPU s over {} s wall ({} wake-ups with sends, latest {} µs late)",
                f(r, "pacer_cpu_s"),
                f(r, "wall_s"),
                f(r, "pacer_sends"),
                f(r, "pacer_max_late_us")
            ),
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
            "\nRatios at equal depth / equal rate (roomcast ÷ peer, or a system on the cluster \
             ÷ itself on one node; >1 is better for msg/s, <1 is better for the rest):"
        );
        for r in ratios {
            if r.text("system") == "server-limit" {
                let _ = writeln!(
                    t,
                    "  S1  {:<19} {:>5} server's limit (best lossless redis-benchmark): {} msg/s \
                     at d{} x{}; roomcast's best lossless {} msg/s at d{}: ratio {}",
                    r.text("variant"),
                    r.num("size").unwrap_or(0.0) as u64,
                    f(r, "server_limit_msgs_per_s"),
                    f(r, "server_limit_depth"),
                    f(r, "server_limit_clients"),
                    f(r, "roomcast_best_msgs_per_s"),
                    f(r, "roomcast_best_depth"),
                    r.num("msgs_per_s_ratio")
                        .map_or("-".into(), |v| format!("{v:.2}"))
                );
                continue;
            }
            let mut parts = Vec::new();
            for (k, name) in [
                ("msgs_per_s_ratio", "msg/s"),
                ("cpu_per_msg_ratio", "CPU/msg"),
                ("user_cpu_per_msg_ratio", "user"),
                ("sys_cpu_per_msg_ratio", "kernel"),
                ("server_cpu_per_msg_ratio", "server CPU/msg"),
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
                "  {:<3} {:<19} {:>5} {:<16} {:<26} {}",
                r.text("scenario"),
                r.text("variant"),
                r.num("size").unwrap_or(0.0) as u64,
                config(r),
                r.text("system"),
                parts.join(", ")
            );
        }
    }
    t
}

/// Files one result of run `run`: numbered, printed (a JSON line with `--json`, a progress
/// line on stderr) and kept for the medians. False if it carries an error.
fn record(
    opts: &Opts,
    started: Instant,
    run: usize,
    what: &str,
    mut r: Res,
    all: &mut Vec<(usize, Res)>,
) -> bool {
    r.set("run", run as u64 + 1);
    let ok = !r.0.contains_key("error");
    if opts.json {
        println!("{}", r.to_json());
    }
    eprintln!(
        "  [{:>5.1}s] run {} {what}: {}",
        started.elapsed().as_secs_f64(),
        run + 1,
        short(&r)
    );
    all.push((run, r));
    ok
}
