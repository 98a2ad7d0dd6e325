//! Cluster mode of the load generator: the cost model of sharded pub/sub on a local Redis
//! Cluster (server CPU per message on each node, cluster-bus messages per publish), the
//! URLs each client wants for the same cluster, and channels grouped by hash slot.
//!
//! A job runs on a cluster when it lists the cluster's nodes ([`Job::nodes`]); its `url` is
//! then the `redis+cluster://` seed list roomcast reads.

use std::collections::BTreeMap;

use roomcast_core::cluster::key_slot;
use roomcast_tests::RespClient;
use serde_json::json;

use super::common::{process_cpu_s, ClusterNode, Job, Res};

/// What one node had spent at one moment.
#[derive(Debug, Clone)]
struct NodeCounters {
    port: u16,
    role: String,
    cpu_s: Option<f64>,
    bus_sent: u64,
    bus_received: u64,
}

/// Every node's CPU time and cluster-bus message counters at one moment.
#[derive(Debug, Clone)]
pub struct BusSnapshot {
    nodes: Vec<NodeCounters>,
}

/// The value of `field:value` in an `INFO`-style text.
fn info_u64(text: &str, field: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| *k == field)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

impl BusSnapshot {
    /// Reads `/proc/<pid>/stat` and `CLUSTER INFO` (`cluster_stats_messages_sent` and
    /// `_received`, summed over message types) of every node now. A node that does not
    /// answer counts zero messages.
    pub fn now(nodes: &[ClusterNode]) -> BusSnapshot {
        let nodes = nodes
            .iter()
            .map(|n| {
                let (info, role) = match RespClient::connect(n.port) {
                    Ok(mut c) => (
                        c.cmd(&["CLUSTER", "INFO"]).as_text().unwrap_or_default(),
                        c.cmd(&["ROLE"])
                            .as_array()
                            .and_then(|a| a.first().and_then(|r| r.as_text()))
                            .unwrap_or_default(),
                    ),
                    Err(_) => (String::new(), String::new()),
                };
                NodeCounters {
                    port: n.port,
                    role,
                    cpu_s: n.pid.and_then(process_cpu_s),
                    bus_sent: info_u64(&info, "cluster_stats_messages_sent"),
                    bus_received: info_u64(&info, "cluster_stats_messages_received"),
                }
            })
            .collect();
        BusSnapshot { nodes }
    }

    /// Records what the nodes spent since `self`, per message `published`:
    /// `server_cpu_s` (all nodes), `server_cpu_us_per_msg`, `max_node_cpu_us_per_msg`, the
    /// per-node breakdown `nodes` (port, role, CPU µs per message), and
    /// `bus_sent_per_publish` / `bus_received_per_publish` (cluster-bus messages, all nodes).
    pub fn record_since(&self, res: &mut Res, nodes: &[ClusterNode], published: u64) {
        let after = BusSnapshot::now(nodes);
        let per = |x: f64| x / published.max(1) as f64;
        let (mut cpu, mut max_cpu, mut sent, mut received) = (0.0, 0.0f64, 0, 0);
        let mut breakdown = Vec::new();
        for (b, a) in self.nodes.iter().zip(&after.nodes) {
            let c = match (a.cpu_s, b.cpu_s) {
                (Some(x), Some(y)) => Some(x - y),
                _ => None,
            };
            let node_sent = a.bus_sent.saturating_sub(b.bus_sent);
            sent += node_sent;
            received += a.bus_received.saturating_sub(b.bus_received);
            if let Some(c) = c {
                cpu += c;
                max_cpu = max_cpu.max(c);
            }
            let us = c.map(|c| (per(c) * 1e6 * 1e3).round() / 1e3);
            breakdown.push(json!({
                "port": a.port,
                "role": if a.role.is_empty() { b.role.clone() } else { a.role.clone() },
                "cpu_us_per_msg": us,
                "bus_sent": node_sent,
            }));
        }
        if self.nodes.iter().any(|n| n.cpu_s.is_some()) {
            res.setf("server_cpu_s", cpu);
            res.setf("server_cpu_us_per_msg", per(cpu) * 1e6);
            res.setf("max_node_cpu_us_per_msg", per(max_cpu) * 1e6);
        }
        res.set("nodes", serde_json::Value::Array(breakdown));
        res.setf("bus_sent_per_publish", per(sent as f64));
        res.setf("bus_received_per_publish", per(received as f64));
    }
}

/// The seed nodes of a `redis+cluster://host:port,host:port` URL as (host, port).
pub fn seeds(url: &str) -> Vec<(String, u16)> {
    let rest = url
        .trim_start_matches("redis+cluster://")
        .trim_end_matches('/');
    let rest = rest.split('?').next().unwrap_or(rest);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split(',')
        .filter_map(|hp| {
            let (h, p) = hp.rsplit_once(':')?;
            Some((h.to_string(), p.parse().ok()?))
        })
        .collect()
}

/// The job's cluster as the `redis` crate's cluster client wants it: one RESP3 URL per seed
/// (its cluster pub/sub needs RESP3 pushes).
#[cfg_attr(not(feature = "peers"), expect(dead_code))]
pub fn redis_rs_urls(job: &Job) -> Vec<String> {
    seeds(&job.url)
        .into_iter()
        .map(|(h, p)| format!("redis://{h}:{p}/?protocol=resp3"))
        .collect()
}

/// The job's cluster as `fred` wants it: `redis-cluster://first?node=second&node=...`.
#[cfg_attr(not(feature = "peers"), expect(dead_code))]
pub fn fred_url(job: &Job) -> String {
    let s = seeds(&job.url);
    let mut url = String::from("redis-cluster://");
    for (i, (h, p)) in s.iter().enumerate() {
        match i {
            0 => url.push_str(&format!("{h}:{p}")),
            1 => url.push_str(&format!("?node={h}:{p}")),
            _ => url.push_str(&format!("&node={h}:{p}")),
        }
    }
    url
}

/// Hash slot of a channel name (CRC16 of the first non-empty `{…}` or the whole name).
pub fn slot_of(channel: &str) -> u16 {
    key_slot(channel.as_bytes()).get()
}

/// Channels grouped by hash slot, in slot order: one SSUBSCRIBE per group (a command naming
/// channels of two slots is refused with CROSSSLOT).
#[cfg_attr(not(any(feature = "peers", test)), expect(dead_code))]
pub fn by_slot(channels: &[String]) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for c in channels {
        groups.entry(slot_of(c)).or_default().push(c.clone());
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seeds_and_groups_by_slot() {
        assert_eq!(
            seeds("redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7001)]
        );
        let groups = by_slot(&["a{x}".into(), "b".into(), "c{x}".into()]);
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().any(|g| g == &["a{x}", "c{x}"]));
        assert_eq!(
            info_u64(
                "a:1\r\ncluster_stats_messages_sent:42\r\n",
                "cluster_stats_messages_sent"
            ),
            42
        );
    }
}
