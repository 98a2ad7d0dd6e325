//! `roomcast`: tail and publish to rooms, list a room's members, check health, and run the
//! demo (WebSocket room servers sharing rooms through Redis, with simulated clients).
//!
//! Exit codes: 0 ok, 2 usage error, 1 anything else (with a one-line cause on stderr).

#[path = "roomcast/args.rs"]
mod args;
#[path = "roomcast/demo.rs"]
mod demo;
#[path = "roomcast/redis.rs"]
mod redis;
#[path = "roomcast/ws.rs"]
mod ws;

use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::task::Poll;
use std::time::Duration;

use args::{Args, Usage};
use futures_util::StreamExt;
use roomcast::{Config, Event, Membership, Message, MessageType, PubSubMessage, Roomcast};

const USAGE: &str = "\
roomcast: rooms shared by many instances through Redis pub/sub

Usage: roomcast [OPTIONS] <COMMAND> [ARGS]

Commands:
  tail ROOM...       print every message of the rooms as JSON lines
  publish ROOM DATA  publish one message and print Redis's receiver count
  who ROOM           list the room's members on every instance
  health             check every Redis link and a probe through Redis
  demo               WebSocket room servers sharing rooms through Redis, with simulated
                     clients, a live view and a summary
  help [COMMAND]     this text, or a command's

Options (every command; they override the environment):
  --url URL          Redis URL [env REDIS_URL, default redis://127.0.0.1:6379]
                     redis://[user[:password]@]host[:port][/db][?protocol=resp2|resp3],
                     rediss:// for TLS
  --prefix PREFIX    channel prefix [env REDIS_CHANNEL_PREFIX, default graphwiz]
  --pool N           publish links, 1 to 256 [env REDIS_POOL_SIZE, default 10]
  -h, --help         help (also after a command)
  -V, --version      version

Exit status: 0 ok, 2 usage error, 1 any other error (cause on stderr).
";

const TAIL_HELP: &str = "\
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

const PUBLISH_HELP: &str = "\
roomcast publish: publish one message to a room

Usage: roomcast publish [OPTIONS] ROOM DATA

DATA is the payload (`-` reads it from stdin). Prints Redis's receiver count: the number of
subscribed instances (Redis connections), not of members.

Options:
  --type TYPE        broadcast (default), presence or system
  --exclude CONN     a connection that must not receive it (the sender's own)
  (and --url, --prefix, --pool: see roomcast --help)
";

const WHO_HELP: &str = "\
roomcast who: list the members of a room on every instance

Usage: roomcast who [OPTIONS] ROOM

Prints one member per line: the instance (16 hex digits) and the connection id, sorted, from
the presence registry every instance keeps in Redis (a crashed instance's members vanish
when its lease runs out). The command itself joins nothing.

Options: --url, --prefix, --pool (see roomcast --help)
";

const HEALTH_HELP: &str = "\
roomcast health: check the Redis links

Usage: roomcast health [OPTIONS]

Connects every link (1 subscriber + the publish pool), PINGs each, sends a probe through
Redis back to the subscriber, and prints a summary: server, RESP version, Redis version,
links and their round trips, rooms. Exits 1 with the cause if any of it fails.

Options:
  --timeout S        how long the check may take (default 5)
  (and --url, --prefix, --pool: see roomcast --help)
";

const DEMO_HELP: &str = "\
roomcast demo: WebSocket room servers sharing rooms through Redis

Usage: roomcast demo [OPTIONS]

Starts INSTANCES WebSocket room servers (the server of examples/ws_rooms.rs), each with its
own roomcast instance, and CLIENTS simulated WebSocket clients spread over them, joining
ROOMS rooms and chatting. A live view shows messages/s per instance, cross-instance latency
percentiles, rooms live and reconnects; after DURATION it stops and prints a summary (lost
and out-of-order messages are counted from per-sender sequence numbers).

Redis: REDIS_URL or --url when given; otherwise a private redis-server from PATH on a free
loopback port (stopped at the end); when none is installed, it says how to install it and
runs standalone (one in-process roomcast shared by the servers, no Redis).

Options:
  --duration S       seconds to run (default 10)
  --clients N        simulated clients in all (default 30)
  --rooms N          rooms (default 5)
  --instances N      servers, 1 to 8 (default 3)
  --rate R           messages per second per client (default 20)
  --churn S          each client reconnects after about S seconds (default 4; 0: never)
  --standalone       no Redis even if one is available
  (and --url, --prefix, --pool: see roomcast --help)
Stops early on Ctrl-C (the summary is still printed).
";

/// Why a command failed.
enum Fail {
    /// Exit 2, with the command's name for the hint.
    Usage(String, String),
    /// Exit 1.
    Error(String),
}

impl From<Usage> for Fail {
    fn from(u: Usage) -> Self {
        Fail::Usage(u.0, String::new())
    }
}

impl From<roomcast::Error> for Fail {
    fn from(e: roomcast::Error) -> Self {
        Fail::Error(e.to_string())
    }
}

fn value_flags(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "tail" => &["count", "duration"],
        "publish" => &["type", "exclude"],
        "health" => &["timeout"],
        "demo" => &["duration", "clients", "rooms", "instances", "rate", "churn"],
        _ => &[],
    }
}

fn switches(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "demo" => &["standalone"],
        _ => &[],
    }
}

fn help_of(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "tail" => TAIL_HELP,
        "publish" => PUBLISH_HELP,
        "who" => WHO_HELP,
        "health" => HEALTH_HELP,
        "demo" => DEMO_HELP,
        _ => return None,
    })
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match Args::parse(&raw, value_flags, switches) {
        Ok(args) => run(args),
        Err(u) => Err(Fail::Usage(u.0, command_of(&raw))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(why, cmd)) => {
            let cmd = if cmd.is_empty() {
                cmd
            } else {
                format!(" {cmd}")
            };
            eprintln!("roomcast: {why}\nTry 'roomcast{cmd} --help'.");
            ExitCode::from(2)
        }
        Err(Fail::Error(why)) => {
            eprintln!("roomcast: error: {why}");
            ExitCode::from(1)
        }
    }
}

/// The known command in a raw command line, for the usage hint.
fn command_of(raw: &[String]) -> String {
    raw.iter()
        .find(|a| help_of(a).is_some())
        .cloned()
        .unwrap_or_default()
}

fn run(args: Args) -> Result<(), Fail> {
    let cmd = args.command.clone().unwrap_or_default();
    let usage = |why: String| Fail::Usage(why, cmd.clone());
    if args.version {
        println!("roomcast {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if cmd.is_empty() || cmd == "help" {
        if let Some(topic) = args.positionals.first() {
            let text = help_of(topic).ok_or_else(|| usage(format!("no command '{topic}'")))?;
            print!("{text}");
            return Ok(());
        }
        if cmd.is_empty() && !args.help {
            eprint!("{USAGE}");
            return Err(Fail::Usage("no command given".into(), String::new()));
        }
        print!("{USAGE}");
        return Ok(());
    }
    let Some(help) = help_of(&cmd) else {
        return Err(Fail::Usage(format!("no command '{cmd}'"), String::new()));
    };
    if args.help {
        print!("{help}");
        return Ok(());
    }
    // Every argument is checked before anything connects.
    let pool = args
        .number("pool", 10usize, 1, 256)
        .map_err(|u| usage(u.0))?;
    let command = match cmd.as_str() {
        "tail" => {
            if args.positionals.is_empty() {
                return Err(usage("expected at least one ROOM".into()));
            }
            Command::Tail {
                rooms: args.positionals.clone(),
                count: args
                    .value("count")
                    .map(|_| args.number("count", 0u64, 1, u64::MAX))
                    .transpose()
                    .map_err(|u| usage(u.0))?,
                duration: args
                    .value("duration")
                    .map(|_| args.number("duration", 0.0f64, 0.001, 1e9))
                    .transpose()
                    .map_err(|u| usage(u.0))?
                    .map(Duration::from_secs_f64),
            }
        }
        "publish" => {
            let p = args.exactly(&["ROOM", "DATA"]).map_err(|u| usage(u.0))?;
            let message_type = match args.value("type").unwrap_or("broadcast") {
                "broadcast" => MessageType::Broadcast,
                "presence" => MessageType::PresenceEvent,
                "system" => MessageType::SystemNotification,
                other => {
                    return Err(usage(format!(
                        "--type must be broadcast, presence or system, not '{other}'"
                    )))
                }
            };
            Command::Publish {
                room: p[0].clone(),
                data: p[1].clone(),
                message_type,
                exclude: args.value("exclude").map(String::from),
            }
        }
        "who" => {
            let p = args.exactly(&["ROOM"]).map_err(|u| usage(u.0))?;
            Command::Who { room: p[0].clone() }
        }
        "health" => {
            args.exactly(&[]).map_err(|u| usage(u.0))?;
            Command::Health {
                timeout: Duration::from_secs_f64(
                    args.number("timeout", 5.0f64, 0.1, 3600.0)
                        .map_err(|u| usage(u.0))?,
                ),
            }
        }
        "demo" => {
            args.exactly(&[]).map_err(|u| usage(u.0))?;
            let churn = args
                .number("churn", 4.0f64, 0.0, 1e6)
                .map_err(|u| usage(u.0))?;
            Command::Demo(demo::Options {
                duration: Duration::from_secs_f64(
                    args.number("duration", 10.0f64, 0.5, 86_400.0)
                        .map_err(|u| usage(u.0))?,
                ),
                clients: args
                    .number("clients", 30usize, 1, 10_000)
                    .map_err(|u| usage(u.0))?,
                rooms: args
                    .number("rooms", 5usize, 1, 10_000)
                    .map_err(|u| usage(u.0))?,
                instances: args
                    .number("instances", 3usize, 1, 8)
                    .map_err(|u| usage(u.0))?,
                rate: args
                    .number("rate", 20.0f64, 0.1, 10_000.0)
                    .map_err(|u| usage(u.0))?,
                churn: (churn > 0.0).then(|| Duration::from_secs_f64(churn)),
                standalone: args.switch("standalone"),
                // The demo decides between REDIS_URL/--url, a private server and standalone.
                redis_given: args.value("url").is_some() || std::env::var_os("REDIS_URL").is_some(),
            })
        }
        _ => return Err(Fail::Usage(format!("no command '{cmd}'"), String::new())),
    };
    // A bad URL (flag or environment) is an error of the configuration: exit 1.
    let mut config = config(&args, pool)?;
    config.client_name = format!("roomcast-{cmd}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fail::Error(format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(command.run(config));
    // Do not wait for tasks stuck on a dead server.
    runtime.shutdown_timeout(Duration::from_millis(200));
    outcome
}

/// The configuration from the environment, with the flags taking precedence.
fn config(args: &Args, pool: usize) -> Result<Config, Fail> {
    let flag = |name: &str| args.value(name).map(String::from);
    let (url, prefix) = (flag("url"), flag("prefix"));
    let pool_given = args.value("pool").is_some();
    let lookup = |key: &str| -> Option<String> {
        let from_flag = match key {
            "REDIS_URL" => url.clone(),
            "REDIS_CHANNEL_PREFIX" => prefix.clone(),
            "REDIS_POOL_SIZE" if pool_given => Some(pool.to_string()),
            _ => None,
        };
        from_flag.or_else(|| std::env::var(key).ok())
    };
    let (config, warnings) =
        Config::from_env_with(lookup).map_err(|e| Fail::Error(e.to_string()))?;
    for w in warnings {
        eprintln!("roomcast: warning: {w}");
    }
    Ok(config)
}

enum Command {
    Tail {
        rooms: Vec<String>,
        count: Option<u64>,
        duration: Option<Duration>,
    },
    Publish {
        room: String,
        data: String,
        message_type: MessageType,
        exclude: Option<String>,
    },
    Who {
        room: String,
    },
    Health {
        timeout: Duration,
    },
    Demo(demo::Options),
}

impl Command {
    async fn run(self, config: Config) -> Result<(), Fail> {
        match self {
            Command::Tail {
                rooms,
                count,
                duration,
            } => tail(config, rooms, count, duration).await,
            Command::Publish {
                room,
                data,
                message_type,
                exclude,
            } => publish(config, room, data, message_type, exclude).await,
            Command::Who { room } => who(config, room).await,
            Command::Health { timeout } => health(config, timeout).await,
            Command::Demo(options) => demo::run(config, options).await.map_err(Fail::Error),
        }
    }
}

/// `host:port` of the configured server, for messages.
fn target(config: &Config) -> String {
    format!("{}:{}", config.server.host, config.server.port)
}

/// Connects, bounded in time, with the server named in the error.
pub(crate) async fn connect(config: Config) -> Result<Roomcast, String> {
    let target = target(&config);
    let limit = config.connect_timeout * 2 + Duration::from_secs(1);
    let builder = roomcast::Builder::new(config);
    match tokio::time::timeout(limit, builder.connect_tokio()).await {
        Ok(Ok(rc)) => Ok(rc),
        Ok(Err(roomcast::Error::Connect(e))) => {
            Err(format!("cannot connect to Redis at {target}: {e}"))
        }
        Ok(Err(e)) => Err(format!("{e} (Redis at {target})")),
        Err(_) => Err(format!(
            "cannot connect to Redis at {target}: no answer within {limit:?}"
        )),
    }
}

async fn tail(
    config: Config,
    rooms: Vec<String>,
    count: Option<u64>,
    duration: Option<Duration>,
) -> Result<(), Fail> {
    let rc = connect(config).await.map_err(Fail::Error)?;
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

async fn publish(
    config: Config,
    room: String,
    data: String,
    message_type: MessageType,
    exclude: Option<String>,
) -> Result<(), Fail> {
    let data = if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Fail::Error(format!("reading DATA from stdin: {e}")))?;
        buf
    } else {
        data.into_bytes()
    };
    let rc = connect(config).await.map_err(Fail::Error)?;
    let mut msg = PubSubMessage::broadcast(room, data).with_type(message_type);
    msg.exclude_connection = exclude;
    let receivers = rc.publish(msg).await;
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    println!("{}", receivers?);
    Ok(())
}

async fn who(config: Config, room: String) -> Result<(), Fail> {
    let rc = connect(config).await.map_err(Fail::Error)?;
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

async fn health(config: Config, timeout: Duration) -> Result<(), Fail> {
    let server = config.server.clone();
    let (target, prefix, pool) = (
        target(&config),
        config.channel_prefix.clone(),
        config.pool_size,
    );
    let protocol = format!("{:?}", config.server.protocol).to_uppercase();
    let started = std::time::Instant::now();
    let rc = tokio::time::timeout(timeout, connect(config))
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
    println!(
        "links: {} of {} up (1 subscriber + {pool} publish), slowest PING {slowest:.1?}{subscriber}",
        report.link_rtts.len(),
        pool + 1
    );
    println!("probe through Redis: received by the subscriber");
    println!(
        "rooms: {} with local members, {} live (this instance)",
        report.rooms, report.rooms_live
    );
    println!("checked in {took:.1?}");
    Ok(())
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
