//! Three roomcast instances in one process share rooms through one Redis: clients on every
//! instance chat, and the demo prints delivered messages/s and cross-instance latency.
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p roomcast --example demo -- [seconds] [rooms]`

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use roomcast::{PubSubMessage, Roomcast};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: u64 = std::env::args().nth(1).map_or(Ok(5), |a| a.parse())?;
    let rooms: usize = std::env::args().nth(2).map_or(Ok(4), |a| a.parse())?;
    let config = roomcast::config_from_env()?;
    let mut nodes: Vec<Roomcast> = Vec::new();
    for _ in 0..3 {
        nodes.push(roomcast::connect(config.clone()).await?);
    }
    println!(
        "3 instances connected to {}:{}",
        config.server.host, config.server.port
    );
    // One member per (instance, room); each records the latency of what it receives.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let epoch = Instant::now();
    for (i, node) in nodes.iter().enumerate() {
        for r in 0..rooms {
            let mut m = node
                .join(&format!("demo/room-{r}"), &format!("client-{i}"))
                .await?;
            m.wait_live().await;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(msg) = m.next().await {
                    let sent = u64::from_le_bytes(msg.data[..8].try_into().unwrap_or_default());
                    let now = epoch.elapsed().as_micros() as u64;
                    let _ = tx.send(Duration::from_micros(now.saturating_sub(sent)));
                }
            });
        }
    }
    println!(
        "{} rooms live on every instance; chatting for {secs} s",
        rooms
    );
    let end = Instant::now() + Duration::from_secs(secs);
    let mut published = 0u64;
    let mut latencies = Vec::new();
    let mut last_report = Instant::now();
    while Instant::now() < end {
        for (i, node) in nodes.iter().enumerate() {
            let r = (published as usize) % rooms;
            let mut data = (epoch.elapsed().as_micros() as u64).to_le_bytes().to_vec();
            data.extend_from_slice(format!(" hello from instance {i}").as_bytes());
            node.publisher()
                .send(PubSubMessage::broadcast(format!("demo/room-{r}"), data))
                .await?;
            published += 1;
        }
        while let Ok(l) = rx.try_recv() {
            latencies.push(l);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            println!(
                "  published {published:>8}  delivered {:>9}",
                latencies.len()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(l) = rx.try_recv() {
        latencies.push(l);
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let m = nodes[0].metrics().await?;
    println!(
        "summary: {published} published, {} member deliveries ({} expected: 3 members per room), {:.0} deliveries/s",
        latencies.len(),
        published * 3,
        latencies.len() as f64 / secs as f64
    );
    println!(
        "latency publish→member: p50 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "instance 0: rooms live {}, reconnects {}, drops {}",
        m.rooms_live,
        m.reconnects,
        m.dropped_duplicate + m.dropped_malformed
    );
    for n in &nodes {
        n.shutdown(Duration::from_secs(2)).await?;
    }
    Ok(())
}
