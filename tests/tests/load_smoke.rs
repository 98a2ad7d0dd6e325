//! CI's smoke test of the load generator: `roomcast-load --quick --json` against a private
//! redis-server. It checks that every scenario runs, stops by itself and reports
//! exactly-once delivery (S5: also matching subscriptions after rooms were emptied; S6: every
//! message delivered or reported in a gap; S8: every loss counted as a drop) for roomcast; it
//! asserts no timing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roomcast_tests::RedisServer;

fn has(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn roomcast_load_quick_runs_every_scenario() {
    let server = RedisServer::start();
    let mut systems = vec!["roomcast"];
    if has("redis-benchmark") {
        systems.push("redis-benchmark");
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-load"))
        .args(["--quick", "--json", "--systems", &systems.join(",")])
        .env("REDIS_URL", server.url())
        .stdin(Stdio::null())
        .output()
        .expect("roomcast-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "roomcast-load --quick failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let field = |v: &serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
    for v in &lines {
        assert!(v.get("error").is_none(), "a scenario failed: {v}\n{stderr}");
    }
    for s in ["S1", "S2", "S3", "S4", "S5", "S6", "S8"] {
        let rc: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| field(v, "scenario") == s && field(v, "system") == "roomcast")
            .collect();
        assert!(!rc.is_empty(), "no roomcast result for {s}:\n{stdout}");
        for v in rc {
            match s {
                "S5" => {
                    assert_eq!(field(v, "subscriptions_match"), true, "{v}");
                    assert_eq!(field(v, "exactly_once"), true, "{v}");
                }
                "S6" => {
                    assert_eq!(field(v, "lost_unreported"), 0, "{v}");
                    assert_eq!(field(v, "exactly_once"), true, "{v}");
                }
                // Drops are what S8 measures: each must be counted.
                "S8" => assert_eq!(field(v, "drops_account_for_losses"), true, "{v}"),
                _ => assert_eq!(field(v, "exactly_once"), true, "{v}"),
            }
            if v.get("pacer_cpu_s").is_some() {
                paced_figures_are_the_clients(v);
            }
        }
    }
    eprintln!(
        "roomcast-load --quick: {} result lines in {:?}",
        lines.len(),
        started.elapsed()
    );
    // Bounded by construction; a generous guard against a hang in a debug build.
    assert!(started.elapsed() < Duration::from_secs(300));
}

/// A paced run's client figures leave the pacer's thread out, its kernel time and sleeps
/// included: the kernel part is within the client's CPU and the per-million parts add up.
/// (The pacer spins with yields and sleeps between batches, so at the quick rates its kernel
/// time alone can exceed the client's CPU: a kernel part counted with it shows here.)
fn paced_figures_are_the_clients(v: &serde_json::Value) {
    let num = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("no {k} in a paced result: {v}"))
    };
    let (cpu, sys) = (num("client_cpu_s"), num("client_sys_s"));
    assert!(
        (0.0..=cpu + 1e-9).contains(&sys),
        "kernel part {sys} outside the client's CPU {cpu}: {v}"
    );
    let (total, user, kernel) = (num("cpu_s_per_m"), num("user_s_per_m"), num("sys_s_per_m"));
    // Each figure is written with four decimals.
    assert!(
        (user + kernel - total).abs() <= 1e-3,
        "user {user} + kernel {kernel} per M is not the total {total}: {v}"
    );
    assert!(num("sleeps_per_k") >= 0.0, "{v}");
}
