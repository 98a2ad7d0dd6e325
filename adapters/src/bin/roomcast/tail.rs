//! `roomcast tail`: print every message of some rooms as JSON lines.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast::{Config, Event, Membership, Message, MessageType};

use crate::args::{Args, Usage};
use crate::Fail;

pub const TAIL_HELP: &str = "\
roomcast tail: print every message of the rooms, one JSON line each

Usage: roomcast tail [OPTIONS] ROOM...

Joins the rooms as one connection (tail-<pid>) and prints each delivered message on stdout:
  {\"room\":\"lobby\",\"type\":\"broadcast\",\"data\":\"hi\",\"encoding\":\"utf8\",
   \"exclude\":null,\"timestamp\":1700000000,\"origin\":\"4f1c0e2a9b7d3c11\",\"epoch\":\"00000000000003e8\",\"seq\":1}
type is broadcast, presence or system; data is the payload as UTF-8 text when it is valid
UTF-8 (encoding utf8), else base64 (encoding base64); origin and epoch (16 hex digits each,
as strings) and seq (a number) are null for messages from publishers that write no trailer.
stderr says when the rooms are live, and reports Redis links going down and up, gaps
(messages that never arrived) and drops.

Options:
  --count N          exit after N messages
  --duration S       exit after S seconds
  (and --url, --prefix, --pool: see roomcast --help)
Stops on Ctrl-C.
";

/// What `tail` was asked for.
pub struct Options {
    rooms: Vec<String>,
    count: Option<u64>,
    duration: Option<Duration>,
}

/// Checks the arguments of `tail`.
pub fn options(args: &Args) -> Result<Options, Usage> {
    if args.positionals.is_empty() {
        return Err(Usage("expected at least one ROOM".into()));
    }
    Ok(Options {
        rooms: args.positionals.clone(),
        count: args
            .value("count")
            .map(|_| args.number("count", 0u64, 1, u64::MAX))
            .transpose()?,
        duration: args
            .value("duration")
            .map(|_| args.number("duration", 0.0f64, 0.001, 1e9))
            .transpose()?
            .map(Duration::from_secs_f64),
    })
}

/// Runs `tail`.
pub async fn run(config: Config, o: Options) -> Result<(), Fail> {
    let Options {
        rooms,
        count,
        duration,
    } = o;
    let rc = crate::connect(config).await.map_err(Fail::Error)?;
    let conn = format!("tail-{}", std::process::id());
    let mut events = rc.events().await?;
    let mut members = Vec::new();
    for room in &rooms {
        members.push(rc.join(room, &conn).await?);
    }
    for m in &members {
        if tokio::time::timeout(Duration::from_secs(30), m.wait_live())
            .await
            .is_err()
        {
            return Err(Fail::Error(format!(
                "room {} did not become live within 30 s",
                m.room().as_str()
            )));
        }
    }
    eprintln!("roomcast: tailing {} as {conn} (live)", rooms.join(", "));
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let sleep = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut reporter = Reporter::default();
    let mut dropped = vec![0u64; members.len()];
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut live = true;
    while count.is_none_or(|c| seen < c) {
        tokio::select! {
            next = next_message(&mut members) => {
                let Some((i, msg)) = next else {
                    live = false;
                    break;
                };
                if members[i].dropped() > dropped[i] {
                    eprintln!(
                        "roomcast: {} message(s) of {} dropped: output too slow",
                        members[i].dropped() - dropped[i],
                        msg.room.as_str()
                    );
                    dropped[i] = members[i].dropped();
                }
                let line = json_line(&msg);
                if writeln!(stdout, "{line}").and_then(|_| stdout.flush()).is_err() {
                    break; // stdout closed (e.g. `| head -1`): done
                }
                seen += 1;
            }
            Some(ev) = events.next() => reporter.report(&ev),
            _ = &mut sleep => break,
            _ = &mut ctrl_c => break,
        }
    }
    drop(stdout);
    drop(members);
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    if !live {
        return Err(Fail::Error("the instance stopped".into()));
    }
    Ok(())
}

/// The next message of any membership, with its index (round robin from the first).
fn next_message(
    members: &mut [Membership],
) -> impl Future<Output = Option<(usize, std::sync::Arc<Message>)>> + '_ {
    std::future::poll_fn(move |cx| {
        let mut ended = 0;
        for (i, m) in members.iter_mut().enumerate() {
            match m.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => return Poll::Ready(Some((i, msg))),
                Poll::Ready(None) => ended += 1,
                Poll::Pending => {}
            }
        }
        if ended == members.len() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
}

/// Link, room, gap and drop events on stderr: a link's failed reconnects and a room's
/// resubscriptions are reported once, until it is back.
#[derive(Default)]
struct Reporter {
    links_down: HashSet<roomcast::core::LinkId>,
    rooms_down: HashSet<String>,
}

impl Reporter {
    fn report(&mut self, ev: &Event) {
        match ev {
            Event::LinkDown { link, role, cause } if self.links_down.insert(*link) => {
                eprintln!("roomcast: {link} ({role:?}) down: {cause}; reconnecting");
            }
            Event::LinkUp {
                link,
                role,
                outage,
                missed_rooms,
            } => {
                self.links_down.remove(link);
                let Some(outage) = outage else { return };
                let missed: Vec<&str> = missed_rooms.iter().map(|r| r.as_str()).collect();
                if missed.is_empty() {
                    eprintln!("roomcast: {link} ({role:?}) up after {outage:.1?}");
                } else {
                    eprintln!(
                        "roomcast: {link} ({role:?}) up after {outage:.1?}; may have missed messages: {}",
                        missed.join(", ")
                    );
                }
            }
            Event::RoomNotLive { room, reason }
                if self.rooms_down.insert(room.as_str().to_string()) =>
            {
                eprintln!(
                    "roomcast: {} not live ({reason:?}); resubscribing",
                    room.as_str()
                );
            }
            Event::RoomLive { room } if self.rooms_down.remove(room.as_str()) => {
                eprintln!("roomcast: {} live again", room.as_str());
            }
            Event::Gap {
                room,
                origin,
                epoch,
                missing,
            } => eprintln!(
                "roomcast: gap in {}: messages {}..={} from {origin} (epoch {epoch:016x}) never arrived",
                room.as_str(),
                missing.start(),
                missing.end()
            ),
            Event::Dropped { cause, room } => eprintln!(
                "roomcast: dropped a message{}: {cause:?}",
                room.as_ref()
                    .map(|r| format!(" in {}", r.as_str()))
                    .unwrap_or_default()
            ),
            _ => {}
        }
    }
}

/// One message as a JSON line (keys in a fixed order).
fn json_line(msg: &Message) -> String {
    let (data, encoding) = match std::str::from_utf8(&msg.data) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (base64(&msg.data), "base64"),
    };
    let s = |v: &str| serde_json::Value::from(v).to_string();
    let opt = |v: Option<String>| v.map_or("null".to_string(), |v| v);
    format!(
        "{{\"room\":{},\"type\":\"{}\",\"data\":{},\"encoding\":\"{encoding}\",\"exclude\":{},\"timestamp\":{},\"origin\":{},\"epoch\":{},\"seq\":{}}}",
        s(msg.room.as_str()),
        type_name(msg.message_type),
        s(&data),
        opt(msg.exclude_connection.as_deref().map(s)),
        msg.timestamp,
        opt(msg.origin.map(|t| format!("\"{}\"", t.origin))),
        opt(msg.origin.map(|t| format!("\"{:016x}\"", t.epoch))),
        opt(msg.origin.map(|t| t.seq.to_string())),
    )
}

fn type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::Broadcast => "broadcast",
        MessageType::PresenceEvent => "presence",
        MessageType::SystemNotification => "system",
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(raw.as_bytes()), enc);
        }
    }
}
