//! `roomcast who`: list a room's members on every instance.

use std::time::Duration;

use roomcast::Config;

use crate::args::{Args, Usage};
use crate::Fail;

pub const WHO_HELP: &str = "\
roomcast who: list the members of a room on every instance

Usage: roomcast who [OPTIONS] ROOM

Prints one member per line: the instance (16 hex digits) and the connection id, sorted, from
the presence registry every instance keeps in Redis (a crashed instance's members vanish
when its lease runs out). The command itself joins nothing.

Options: --url, --prefix, --pool (see roomcast --help)
";

/// Checks the arguments of `who`: the room.
pub fn options(args: &Args) -> Result<String, Usage> {
    Ok(args.exactly(&["ROOM"])?[0].clone())
}

/// Runs `who`.
pub async fn run(config: Config, room: String) -> Result<(), Fail> {
    let rc = crate::connect(config).await.map_err(Fail::Error)?;
    // Right after connecting, the instance registers itself; presence answers after that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let members = loop {
        match rc.room_connections(&room).await {
            Err(roomcast::Error::Presence(roomcast::core::PresenceError::Unavailable))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break other,
        }
    };
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    for m in members? {
        println!("{} {}", m.instance, m.conn.as_str());
    }
    Ok(())
}
