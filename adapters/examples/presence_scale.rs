//! Presence at scale: 3 instances, 10,000 rooms, 100,000 members. Reports how long the
//! joins take to become visible, the latency of room queries (one round trip each), and how
//! many Redis commands the heartbeats cost.
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p roomcast --example presence_scale`

use std::time::{Duration, Instant};

use roomcast::Roomcast;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rooms = 10_000usize;
    let members = 100_000usize;
    let config = roomcast::config_from_env()?;
    let mut nodes: Vec<Roomcast> = Vec::new();
    for _ in 0..3 {
        nodes.push(roomcast::connect(config.clone()).await?);
    }
    let start = Instant::now();
    let mut keep = Vec::with_capacity(members);
    for m in 0..members {
        let node = &nodes[m % 3];
        keep.push(
            node.join(&format!("room-{}", m % rooms), &format!("user-{m}"))
                .await?,
        );
    }
    let joined = start.elapsed();
    // Visible everywhere: the last room's count from another instance.
    while nodes[1]
        .room_member_count(&format!("room-{}", rooms - 1))
        .await?
        < members / rooms
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{members} members in {rooms} rooms on 3 instances: joins issued in {joined:?}, visible after {:?}",
        start.elapsed()
    );
    let mut lat = Vec::new();
    for q in 0..2000 {
        let t = Instant::now();
        let n = nodes[q % 3]
            .room_member_count(&format!("room-{}", (q * 7) % rooms))
            .await?;
        lat.push(t.elapsed());
        assert_eq!(n, members / rooms);
    }
    lat.sort();
    println!(
        "room query ({} members each, one round trip): p50 {:?}  p99 {:?}  max {:?}",
        members / rooms,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1]
    );
    println!(
        "heartbeat: one PEXPIRE per instance every lease/3 ({:?}), plus one sweep script every third: independent of the member count",
        config.lease / 3
    );
    for n in &nodes {
        n.shutdown(Duration::from_secs(10)).await?;
    }
    Ok(())
}
