//! Joins a room, publishes to it and reads the message back through Redis.
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run -p roomcast --example quickstart`

use std::time::Duration;

use futures_util::StreamExt;
use roomcast::PubSubMessage;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rc = roomcast::from_env().await?;
    let mut alice = rc.join("hub/abc", "alice").await?;
    let _bob = rc.join("hub/abc", "bob").await?;
    alice.wait_live().await;
    let receivers = rc
        .publish(PubSubMessage::broadcast("hub/abc", "hello from bob").excluding("bob"))
        .await?;
    println!("published to {receivers} instance(s)");
    let msg = tokio::time::timeout(Duration::from_secs(5), alice.next())
        .await?
        .ok_or("membership ended")?;
    println!(
        "alice got {:?} (origin {:?})",
        String::from_utf8_lossy(&msg.data),
        msg.origin
    );
    let health = rc.health_check(Duration::from_secs(5)).await?;
    println!("healthy: {} links answered", health.link_rtts.len());
    rc.shutdown(Duration::from_secs(2)).await?;
    Ok(())
}
