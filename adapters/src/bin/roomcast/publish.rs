//! `roomcast publish`: publish one message to a room.

use std::io::Read;
use std::time::Duration;

use roomcast::{Config, MessageType, PubSubMessage};

use crate::args::{Args, Usage};
use crate::Fail;

pub const PUBLISH_HELP: &str = "\
roomcast publish: publish one message to a room

Usage: roomcast publish [OPTIONS] ROOM DATA

DATA is the payload (`-` reads it from stdin). Prints Redis's receiver count: the number of
subscribed instances (Redis connections), not of members.

Options:
  --type TYPE        broadcast (default), presence or system
  --exclude CONN     a connection that must not receive it (the sender's own)
  (and --url, --prefix, --pool: see roomcast --help)
";

/// What `publish` was asked for.
pub struct Options {
    room: String,
    data: String,
    message_type: MessageType,
    exclude: Option<String>,
}

/// Checks the arguments of `publish`.
pub fn options(args: &Args) -> Result<Options, Usage> {
    let p = args.exactly(&["ROOM", "DATA"])?;
    let message_type = match args.value("type").unwrap_or("broadcast") {
        "broadcast" => MessageType::Broadcast,
        "presence" => MessageType::PresenceEvent,
        "system" => MessageType::SystemNotification,
        other => {
            return Err(Usage(format!(
                "--type must be broadcast, presence or system, not '{other}'"
            )))
        }
    };
    Ok(Options {
        room: p[0].clone(),
        data: p[1].clone(),
        message_type,
        exclude: args.value("exclude").map(String::from),
    })
}

/// Runs `publish`.
pub async fn run(config: Config, o: Options) -> Result<(), Fail> {
    let Options {
        room,
        data,
        message_type,
        exclude,
    } = o;
    let data = if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Fail::Error(format!("reading DATA from stdin: {e}")))?;
        buf
    } else {
        data.into_bytes()
    };
    let rc = crate::connect(config).await.map_err(Fail::Error)?;
    let mut msg = PubSubMessage::broadcast(room, data).with_type(message_type);
    msg.exclude_connection = exclude;
    let receivers = rc.publish(msg).await;
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    println!("{}", receivers?);
    Ok(())
}
