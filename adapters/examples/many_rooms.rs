//! Joins N rooms (default 10,000) on one instance and reports how long until every room's
//! subscription is confirmed, then how long until all are unsubscribed again.
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p roomcast --example many_rooms -- 10000`

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(10_000), |a| a.parse())?;
    let rc = roomcast::from_env().await?;
    let start = Instant::now();
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        members.push(rc.join(&format!("room-{i}"), "c").await?);
    }
    let joined = start.elapsed();
    while rc.metrics().await?.rooms_live < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let live = start.elapsed();
    println!("{n} rooms: joins issued in {joined:?}, all live after {live:?}");
    let start = Instant::now();
    drop(members);
    while rc.metrics().await?.rooms > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("{n} rooms: all unsubscribed after {:?}", start.elapsed());
    rc.shutdown(Duration::from_secs(2)).await?;
    Ok(())
}
