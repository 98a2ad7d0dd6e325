//! `roomcast demo`: WebSocket room servers (`roomcast::serve`) on several roomcast instances
//! sharing rooms through Redis, simulated clients that chat, a live view and a summary.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast::{Config, Roomcast};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::args::{Args, Usage};
use crate::redis;
use roomcast::redis_server::RedisServer;
use roomcast::serve;

mod view;
use view::{summary, View};

pub const DEMO_HELP: &str = "\
roomcast demo: WebSocket room servers sharing rooms through Redis

Usage: roomcast demo [OPTIONS]

Starts INSTANCES WebSocket room servers (the server of `roomcast serve`), each with its own
roomcast instance, and CLIENTS simulated WebSocket clients spread over them, joining
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

/// What `roomcast demo` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub clients: usize,
    pub rooms: usize,
    pub instances: usize,
    /// Messages per second per client.
    pub rate: f64,
    /// Mean time between a client's reconnects.
    pub churn: Option<Duration>,
    pub standalone: bool,
    /// REDIS_URL or --url was given: use that server, start none.
    pub redis_given: bool,
}

/// Checks the arguments of `demo`.
pub fn options(args: &Args) -> Result<Options, Usage> {
    args.exactly(&[])?;
    let churn = args.number("churn", 4.0f64, 0.0, 1e6)?;
    Ok(Options {
        duration: Duration::from_secs_f64(args.number("duration", 10.0f64, 0.5, 86_400.0)?),
        clients: args.number("clients", 30usize, 1, 10_000)?,
        rooms: args.number("rooms", 5usize, 1, 10_000)?,
        instances: args.number("instances", 3usize, 1, 8)?,
        rate: args.number("rate", 20.0f64, 0.1, 10_000.0)?,
        churn: (churn > 0.0).then(|| Duration::from_secs_f64(churn)),
        standalone: args.switch("standalone"),
        // The demo decides between REDIS_URL/--url, a private server and standalone.
        redis_given: args.value("url").is_some() || std::env::var_os("REDIS_URL").is_some(),
    })
}

/// Counters shared by the simulated clients.
#[derive(Default)]
struct Shared {
    /// Per instance: broadcasts received by its clients.
    received: Vec<AtomicU64>,
    /// Client messages sent, per instance.
    sent: Vec<AtomicU64>,
    presence: AtomicU64,
    lost: AtomicU64,
    out_of_order: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    connected: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Latencies in microseconds since the last view tick, and over the whole run.
    window_cross: Mutex<Vec<u32>>,
    all_cross: Mutex<Vec<u32>>,
    all_local: Mutex<Vec<u32>>,
}

/// How long clients go on after the view's last tick.
const LINGER: Duration = Duration::from_millis(300);

/// Samples kept for the summary (beyond that the earliest are kept).
const MAX_SAMPLES: usize = 4_000_000;

struct Instance {
    rc: Roomcast,
    server: serve::Server,
}

pub async fn run(mut config: Config, o: Options) -> Result<(), String> {
    // Where the rooms are shared.
    let mut private: Option<RedisServer> = None;
    let backend: String;
    let standalone = if o.standalone {
        backend = "standalone (asked for): one in-process roomcast, no Redis".into();
        true
    } else if o.redis_given {
        backend = format!("Redis at {}:{}", config.server.host, config.server.port);
        false
    } else if let Some(binary) = redis::find_redis_server() {
        let server = tokio::task::spawn_blocking(move || {
            RedisServer::try_start_with(&binary.to_string_lossy(), &[])
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        config.server = Config::from_url(&server.url())
            .map_err(|e| e.to_string())?
            .server;
        backend = format!("private redis-server at {}", server.url());
        private = Some(server);
        false
    } else {
        eprintln!(
            "roomcast: redis-server is not installed; {}.\nroomcast: running standalone: the servers share one in-process roomcast (no Redis).",
            redis::INSTALL_HINT
        );
        backend = "standalone (no redis-server): one in-process roomcast, no Redis".into();
        true
    };
    let version = if standalone {
        None
    } else {
        let server = config.server.clone();
        tokio::task::spawn_blocking(move || redis::server_version(&server, Duration::from_secs(2)))
            .await
            .ok()
            .flatten()
    };
    let backend = match version {
        Some(v) => format!("{backend} (redis {v})"),
        None => backend,
    };

    // The instances: a roomcast instance and a WebSocket server each.
    let shared_standalone = standalone.then(roomcast::standalone);
    let mut instances = Vec::new();
    for i in 0..o.instances {
        let rc = match &shared_standalone {
            Some(rc) => rc.clone(),
            None => {
                let mut c = config.clone();
                c.client_name = format!("roomcast-demo-{i}");
                crate::connect(c).await?
            }
        };
        let server = serve::Server::bind("127.0.0.1:0", rc.clone(), serve::ServeOptions::default())
            .await
            .map_err(|e| format!("cannot listen on a loopback port: {e}"))?;
        instances.push(Instance { rc, server });
    }
    println!(
        "roomcast demo: {} WebSocket server(s) on {}; {} clients in {} rooms, {} msg/s each, for {:.0?}",
        o.instances,
        instances
            .iter()
            .map(|i| format!("ws://{}", i.server.addr()))
            .collect::<Vec<_>>()
            .join(", "),
        o.clients,
        o.rooms,
        o.rate,
        o.duration,
    );
    println!("rooms shared through {backend}");
    println!(
        "watch it in a browser: {}",
        instances
            .iter()
            .map(|i| format!("http://{}/#demo/room-0", i.server.addr()))
            .collect::<Vec<_>>()
            .join("  ")
    );

    // The clients.
    let shared = Arc::new(Shared {
        received: (0..o.instances).map(|_| AtomicU64::new(0)).collect(),
        sent: (0..o.instances).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let epoch = Instant::now();
    let deadline = epoch + o.duration;
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..o.clients {
        let inst = id % o.instances;
        let room = format!("demo/room-{}", (id / o.instances) % o.rooms);
        let spec = ClientSpec {
            id: id as u64,
            instance: inst,
            url: instances[inst].server.url(&room),
            addr: instances[inst].server.addr(),
            epoch,
            // A little past the view's end, so that its last tick sees every client.
            deadline: deadline + LINGER,
            period: Duration::from_secs_f64(1.0 / o.rate),
            churn: o.churn,
        };
        clients.spawn(client(spec, shared.clone()));
    }

    // The live view.
    let tty = std::io::stdout().is_terminal();
    let tick = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(1)
    };
    let ids = instances
        .iter()
        .map(|i| i.rc.instance().to_string())
        .collect();
    let mut view = View::new(ids, tty);
    let ctrl_c = crate::stop_signal();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut next = Instant::now() + tick;
    let last = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(deadline).into()) => {}
            _ = &mut ctrl_c => {
                interrupted = true;
            }
        }
        next += tick;
        let snapshot = Snapshot::take(&instances, &shared, epoch).await;
        view.draw(&o, &snapshot);
        if interrupted || Instant::now() >= deadline {
            break snapshot;
        }
    };
    let ran = last.at.min(o.duration);
    if interrupted {
        clients.abort_all();
    }
    // Clients stop at the deadline by themselves; let the last messages arrive.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    let end = Snapshot::take(&instances, &shared, epoch).await;
    let mut rcs = Vec::new();
    for inst in instances {
        inst.server.shutdown(Duration::from_secs(2)).await;
        rcs.push(inst.rc);
    }
    for rc in &rcs {
        let _ = rc.shutdown(Duration::from_secs(2)).await;
    }
    summary(&o, &shared, &last, &end, ran, &backend, interrupted);
    drop(private);
    Ok(())
}

/// Counters at one moment.
struct Snapshot {
    at: Duration,
    frames_in: Vec<u64>,
    frames_out: Vec<u64>,
    connections: Vec<usize>,
    rooms_live: Vec<usize>,
    rooms: Vec<usize>,
    redis_reconnects: u64,
    roomcast_drops: u64,
    gaps: u64,
    slow_client_drops: u64,
    server_errors: u64,
    last_server_error: Option<String>,
    window_cross: Vec<u32>,
    client_reconnects: u64,
    presence: u64,
    lost: u64,
    /// Messages sent by clients, and broadcasts they received.
    sent: u64,
    received: u64,
}

impl Snapshot {
    async fn take(instances: &[Instance], shared: &Shared, epoch: Instant) -> Snapshot {
        let mut s = Snapshot {
            at: epoch.elapsed(),
            frames_in: Vec::new(),
            frames_out: Vec::new(),
            connections: Vec::new(),
            rooms_live: Vec::new(),
            rooms: Vec::new(),
            redis_reconnects: 0,
            roomcast_drops: 0,
            gaps: 0,
            slow_client_drops: 0,
            server_errors: 0,
            last_server_error: None,
            window_cross: std::mem::take(&mut *lock(&shared.window_cross)),
            client_reconnects: shared.reconnects.load(Ordering::Relaxed),
            presence: shared.presence.load(Ordering::Relaxed),
            lost: shared.lost.load(Ordering::Relaxed),
            sent: shared.sent.iter().map(|a| a.load(Ordering::Relaxed)).sum(),
            received: shared
                .received
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum(),
        };
        let mut seen = Vec::new();
        for inst in instances {
            let st = inst.server.stats();
            s.frames_in.push(st.frames_in);
            s.frames_out.push(st.frames_out);
            s.connections
                .push(usize::try_from(st.clients).unwrap_or(usize::MAX));
            s.slow_client_drops += st.member_queue_dropped + st.closed_slow;
            s.server_errors += st.errors;
            if let Some(e) = st.last_error {
                s.last_server_error = Some(e);
            }
            let m = inst.rc.metrics().await.unwrap_or_default();
            s.rooms_live.push(m.rooms_live);
            s.rooms.push(m.rooms);
            // Standalone: every server shares one instance; count its metrics once.
            if !seen.contains(&inst.rc.instance()) {
                seen.push(inst.rc.instance());
                s.redis_reconnects += m.reconnects;
                s.roomcast_drops +=
                    m.dropped_malformed + m.dropped_room_mismatch + m.dropped_too_large;
                s.gaps += m.gaps;
            }
        }
        s
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ClientSpec {
    id: u64,
    instance: usize,
    url: String,
    addr: SocketAddr,
    epoch: Instant,
    deadline: Instant,
    period: Duration,
    churn: Option<Duration>,
}

/// A small xorshift for jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn connect_ws(spec: &ClientSpec) -> Result<Ws, String> {
    let tcp = TcpStream::connect(spec.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", spec.addr))?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(spec.url.as_str(), tcp)
        .await
        .map_err(|e| format!("handshake {}: {e}", spec.url))?;
    // Wait for the welcome: the room is live on this instance.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"welcome\"") => return Ok(ws),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("before welcome: {e}")),
            None => return Err("closed before welcome".into()),
        }
    }
}

/// One simulated client: connects, sends `"{instance} {client} {seq} {micros}"` every
/// period, checks what it receives, reconnects now and then, stops at the deadline.
async fn client(spec: ClientSpec, shared: Arc<Shared>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (spec.id + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut seq = 0u64;
    let mut first = true;
    while Instant::now() < spec.deadline {
        let mut ws = match tokio::time::timeout(Duration::from_secs(10), connect_ws(&spec)).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some("no welcome within 10 s".into());
                continue;
            }
        };
        if !first {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let leave_at = match spec.churn {
            Some(c) => (Instant::now() + c.mul_f64(0.5 + rng.next())).min(spec.deadline),
            None => spec.deadline,
        };
        // Last sequence number seen per sender, for this connection's lifetime.
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + spec.period.mul_f64(rng.next()),
            spec.period,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let leave = tokio::time::sleep_until(leave_at.into());
        tokio::pin!(leave);
        let mut broken = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    // A number is used only by a frame the socket took: a send that fails is
                    // not a message (receivers would count the skipped number as lost).
                    let next = seq + 1;
                    let micros = spec.epoch.elapsed().as_micros() as u64;
                    let text = format!("{} {} {next} {micros}", spec.instance, spec.id);
                    if ws.send(Message::text(text)).await.is_err() {
                        broken = true;
                        break;
                    }
                    seq = next;
                    shared.sent[spec.instance].fetch_add(1, Ordering::Relaxed);
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => receive(&spec, &shared, &mut last, t.as_str()),
                    Some(Ok(_)) => {}
                    _ => {
                        broken = true;
                        break;
                    }
                },
                _ = &mut leave => break,
            }
        }
        if !broken {
            // Close, and take what is still on the way until the server's close reply.
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(frame)) = ws.next().await {
                    if let Message::Text(t) = frame {
                        receive(&spec, &shared, &mut last, t.as_str());
                    }
                }
            })
            .await;
        }
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

fn receive(spec: &ClientSpec, shared: &Shared, last: &mut HashMap<u64, u64>, text: &str) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("broadcast") => {}
        Some("presence") => {
            shared.presence.fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ => return,
    }
    let Some(data) = v.get("data").and_then(Value::as_str) else {
        return;
    };
    let mut f = data.split(' ').map(|x| x.parse::<u64>().ok());
    let (Some(Some(inst)), Some(Some(sender)), Some(Some(seq)), Some(Some(sent))) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return;
    };
    let now = spec.epoch.elapsed().as_micros() as u64;
    let micros = now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
    shared.received[spec.instance].fetch_add(1, Ordering::Relaxed);
    if inst as usize != spec.instance {
        lock(&shared.window_cross).push(micros);
        let mut all = lock(&shared.all_cross);
        if all.len() < MAX_SAMPLES {
            all.push(micros);
        }
    } else {
        let mut all = lock(&shared.all_local);
        if all.len() < MAX_SAMPLES {
            all.push(micros);
        }
    }
    match last.insert(sender, seq) {
        Some(prev) if seq > prev + 1 => {
            shared.lost.fetch_add(seq - prev - 1, Ordering::Relaxed);
        }
        Some(prev) if seq <= prev => {
            shared.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}
