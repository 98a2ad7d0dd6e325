//! `roomcast health`: check every Redis link and a probe through Redis.

use std::time::Duration;

use roomcast::Config;

use crate::args::{Args, Usage};
use crate::{redis, target, Fail};

pub const HEALTH_HELP: &str = "\
roomcast health: check the Redis links

Usage: roomcast health [OPTIONS]

Connects every link (1 subscriber + the publish pool; with a redis+cluster:// URL a topology
link and, per master, 1 subscriber + the pool), PINGs each, sends a probe through Redis back
to a subscriber, and prints a summary: server, RESP version, Redis version, every link with
its node and round trip, the cluster's shards, rooms. Exits 1 with the cause if any of it
fails.

Options:
  --timeout S        how long the check may take (default 5)
  (and --url, --prefix, --pool: see roomcast --help)
";

/// Checks the arguments of `health`: the timeout.
pub fn options(args: &Args) -> Result<Duration, Usage> {
    args.exactly(&[])?;
    Ok(Duration::from_secs_f64(
        args.number("timeout", 5.0f64, 0.1, 3600.0)?,
    ))
}

/// Runs `health`.
pub async fn run(config: Config, timeout: Duration) -> Result<(), Fail> {
    let server = config.server.clone();
    let (target, prefix, pool) = (
        target(&config),
        config.channel_prefix.clone(),
        config.pool_size,
    );
    let protocol = format!("{:?}", config.server.protocol).to_uppercase();
    let started = std::time::Instant::now();
    let rc = tokio::time::timeout(timeout, crate::connect(config))
        .await
        .map_err(|_| {
            Fail::Error(format!(
                "cannot connect to Redis at {target} within {timeout:?}"
            ))
        })?
        .map_err(Fail::Error)?;
    let report = rc.health_check(timeout).await;
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    let report = report?;
    let took = started.elapsed();
    let version = tokio::task::spawn_blocking(move || redis::server_version(&server, timeout))
        .await
        .ok()
        .flatten();
    let slowest = report
        .link_rtts
        .iter()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let subscriber = report
        .link_rtts
        .iter()
        .find(|(l, _)| l.0 == 0)
        .map(|(_, d)| format!(", subscriber {d:.1?}"))
        .unwrap_or_default();
    println!("ok: Redis at {target}");
    println!(
        "server: {}, {protocol}, channel prefix {prefix:?}",
        version.map_or("version unknown".into(), |v| format!("redis {v}"))
    );
    if report.topology.is_none() {
        println!(
            "links: {} of {} up (1 subscriber + {pool} publish), slowest PING {slowest:.1?}{subscriber}",
            report.link_rtts.len(),
            pool + 1
        );
    } else {
        println!(
            "links: {} up (a topology link; per master 1 subscriber + {pool} publish), slowest PING {slowest:.1?}",
            report.links.len()
        );
    }
    for l in &report.links {
        let rtt = report
            .link_rtts
            .iter()
            .find(|(id, _)| *id == l.link)
            .map_or("-".to_string(), |(_, d)| format!("{d:.1?}"));
        println!(
            "  {} {:<10} {:<21} {:?} PING {rtt}",
            l.link,
            format!("{:?}", l.role).to_lowercase(),
            l.address,
            l.state
        );
    }
    if let Some(t) = &report.topology {
        println!(
            "cluster: {} shards, {} of 16384 slots served",
            t.shards().len(),
            t.served_slots()
        );
        for shard in t.shards() {
            let slots: Vec<String> = shard
                .ranges
                .iter()
                .map(|r| format!("{}-{}", r.start.get(), r.end.get()))
                .collect();
            let nodes: Vec<String> = shard
                .nodes()
                .map(|n| {
                    let port = n.port_for(false).map_or("?".into(), |p| p.to_string());
                    format!("{}:{port} {:?} {:?}", n.host(), n.role, n.health)
                })
                .collect();
            println!("  slots {}: {}", slots.join(","), nodes.join(", "));
        }
    }
    println!("probe through Redis: received by a subscriber");
    println!(
        "rooms: {} with local members, {} live (this instance)",
        report.rooms, report.rooms_live
    );
    println!("checked in {took:.1?}");
    Ok(())
}
