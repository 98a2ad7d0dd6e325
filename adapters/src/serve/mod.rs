//! The WebSocket room server of `roomcast serve`, `roomcast demo` and the `ws_rooms`
//! example: HTTP and WebSocket on one port (axum).
//!
//! - `GET /rooms/{room}` upgrades to a WebSocket: one [`Connection`](crate::Connection) per
//!   socket, in that room; every text frame goes to the room's other members on every
//!   instance (the sender excluded); joins and leaves are published as presence events.
//! - `GET /` is a small chat page (embedded): pick a room, see its members on every instance,
//!   chat, and see which instance each message came through.
//! - `GET /metrics`: Prometheus text exposition; `GET /healthz`: 200, or 503 with the cause.
//!
//! Frames to clients are JSON objects:
//! - `{"type":"welcome","room":R,"connection":C,"instance":I,"members":[{"connection":C,"instance":I},...]}`
//!   once the room is live here (the members on every instance at that moment);
//! - `{"type":"broadcast","room":R,"from":C,"instance":I,"data":TEXT}` for another member's
//!   text frame (`instance`: the instance it was published through);
//! - `{"type":"presence","room":R,"instance":I,"data":{"event":"join"|"leave","connection":C,"instance":I}}`;
//! - `{"type":"system","room":R,"instance":I,"data":TEXT}` for system notifications.
//!
//! Not an open relay: a browser's `Origin` must be the server's own or one of
//! [`ServeOptions::allowed_origins`] (403 otherwise), and with [`ServeOptions::token`] set,
//! clients must present it (`?token=` or `Authorization: Bearer`; 401 otherwise). An invalid
//! room id is refused with 400 and the reason; a frame over
//! [`ServeOptions::max_frame_bytes`] closes the socket with 1009; a client too slow for its
//! queue (built with [`Overflow::Close`], see [`instance_options`])
//! is closed with 1008 and counted.

mod frames;
mod metrics;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use frames::{client_frame, percent_encode, room_from_path};

use crate::{Options, Overflow, RoomId, Roomcast};
use metrics::ServerMetrics;

/// The chat page served at `GET /`.
const PAGE: &str = include_str!("page.html");

/// Settings of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Browser origins (`scheme://host[:port]`) allowed besides the server's own; `*` allows
    /// any. Requests without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// A shared secret clients must present (`?token=` or `Authorization: Bearer`); none by
    /// default.
    pub token: Option<String>,
    /// Largest text frame a client may send (default 64 KiB); a larger one closes the socket
    /// with 1009.
    pub max_frame_bytes: usize,
    /// Longest room id in bytes (default: the core's `max_room_id_bytes` default).
    pub max_room_id_bytes: usize,
    /// How long one frame to a client may take to send (default 30 s); a client that does
    /// not read for that long is closed as too slow.
    pub send_timeout: Duration,
    /// How long a new socket waits for its room's subscription to be confirmed (default 10 s).
    pub live_timeout: Duration,
    /// How long `GET /healthz` may take (default 5 s).
    pub health_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            allowed_origins: Vec::new(),
            token: None,
            max_frame_bytes: 64 * 1024,
            max_room_id_bytes: crate::Config::default().max_room_id_bytes,
            send_timeout: Duration::from_secs(30),
            live_timeout: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
        }
    }
}

/// The instance settings the server is meant for: a client's queue that overflows ends its
/// membership ([`Overflow::Close`]), and the server closes the socket with 1008.
pub fn instance_options() -> Options {
    Options {
        overflow: Overflow::Close,
        ..Options::default()
    }
}

/// A server's counters at one moment ([`Server::stats`]).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// WebSocket clients connected now.
    pub clients: u64,
    /// Sockets that joined their room.
    pub accepted: u64,
    /// Text frames received from clients (each published to its room).
    pub frames_in: u64,
    /// Frames sent to clients.
    pub frames_out: u64,
    /// Messages dropped from clients' queues (they read too slowly).
    pub member_queue_dropped: u64,
    /// Clients closed with 1008 for reading too slowly.
    pub closed_slow: u64,
    /// Clients closed with 1009 for a frame over the limit.
    pub closed_too_large: u64,
    /// Errors on sessions (join, publish).
    pub errors: u64,
    /// The last of them.
    pub last_error: Option<String>,
}

/// What every request handler shares.
struct Shared {
    rc: Roomcast,
    options: ServeOptions,
    metrics: ServerMetrics,
    /// Flips to true on shutdown: sessions close with 1001.
    stop: watch::Receiver<bool>,
    /// Each session holds a clone; shutdown takes this one and waits for the rest to drop.
    sessions: Mutex<Option<mpsc::Sender<()>>>,
}

/// A running server; [`Server::shutdown`] closes every socket with a close frame (each
/// publishes its presence leave) and stops listening.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    sessions_done: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and serves rooms through `rc`.
    pub async fn bind(addr: &str, rc: Roomcast, options: ServeOptions) -> std::io::Result<Server> {
        Ok(Server::start(TcpListener::bind(addr).await?, rc, options))
    }

    /// Serves rooms through `rc` on an already bound listener.
    pub fn start(listener: TcpListener, rc: Roomcast, options: ServeOptions) -> Server {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (stop, stop_rx) = watch::channel(false);
        let (sessions, sessions_done) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            rc: rc.clone(),
            options,
            metrics: ServerMetrics::new(),
            stop: stop_rx.clone(),
            sessions: Mutex::new(Some(sessions)),
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_text))
            .route("/rooms/", get(upgrade))
            .route("/rooms/{*room}", get(upgrade))
            .with_state(shared.clone());
        let mut stopped = stop_rx;
        let task = tokio::spawn(async move {
            let graceful = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            // Frames go out as soon as they are written (no Nagle delay on small frames).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await;
        });
        let for_events = shared.clone();
        let events = tokio::spawn(async move {
            let Ok(mut events) = for_events.rc.events().await else {
                return;
            };
            while let Some(ev) = events.next().await {
                for_events.metrics.event(&ev);
            }
        });
        Server {
            addr,
            shared,
            stop,
            sessions_done,
            task,
            events,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/rooms/{room}`.
    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/rooms/{}", self.addr, percent_encode(room))
    }

    /// Its counters now.
    pub fn stats(&self) -> Stats {
        self.shared.metrics.stats()
    }

    /// The `GET /metrics` text, as a scrape would get it now.
    pub async fn metrics_text(&self) -> String {
        encode_metrics(&self.shared).await
    }

    /// Stops accepting, closes every socket with 1001 (each publishes its presence leave)
    /// and waits up to `grace` for that.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        drop(
            self.shared
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let waited = async {
            // `None` once every session has dropped its sender.
            let _ = self.sessions_done.recv().await;
            let _ = (&mut self.task).await;
        };
        if tokio::time::timeout(grace, waited).await.is_err() {
            self.task.abort();
        }
        self.events.abort();
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.rc.health_check(s.options.health_timeout).await {
        Ok(report) if report.link_rtts.is_empty() => (
            StatusCode::OK,
            format!("ok: standalone (no Redis); {} room(s)\n", report.rooms),
        )
            .into_response(),
        Ok(report) => (
            StatusCode::OK,
            format!(
                "ok: {} link(s) answered, probe received; {} room(s), {} live\n",
                report.link_rtts.len(),
                report.rooms,
                report.rooms_live
            ),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {e}\n")).into_response(),
    }
}

async fn encode_metrics(s: &Shared) -> String {
    let core = s.rc.metrics().await.ok();
    s.metrics.encode(core).unwrap_or_default()
}

async fn metrics_text(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        encode_metrics(&s).await,
    )
        .into_response()
}

/// Connection numbers, process-wide (several servers may share one instance: the demo's
/// standalone mode does).
static NEXT_CONN: AtomicU64 = AtomicU64::new(0);

fn refuse(s: &Shared, reason: &'static str, status: StatusCode, why: String) -> Response {
    s.metrics
        .refused
        .get_or_create(&vec![("reason", reason)])
        .inc();
    (status, format!("{why}\n")).into_response()
}

/// Equal, in time that depends only on the lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a browser's `Origin` may connect: the server's own (same host as `Host`), or
/// listed.
fn origin_allowed(options: &ServeOptions, origin: &str, host: Option<&str>) -> bool {
    if options
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o == origin)
    {
        return true;
    }
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((own, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

async fn upgrade(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = header(header::ORIGIN) {
        if !origin_allowed(&s.options, origin, header(header::HOST)) {
            return refuse(
                &s,
                "origin",
                StatusCode::FORBIDDEN,
                format!("origin {origin} is not allowed: start the server with --allowed-origin {origin}"),
            );
        }
    }
    if let Some(token) = &s.options.token {
        let bearer = header(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
        let from_query = uri.query().and_then(|q| frames::query_value(q, "token"));
        let given = from_query.as_deref().or(bearer);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            return refuse(
                &s,
                "token",
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: pass it as ?token=TOKEN or Authorization: Bearer TOKEN"
                    .into(),
            );
        }
    }
    let room = match room_from_path(uri.path()).and_then(|room| {
        RoomId::new(&room, s.options.max_room_id_bytes)
            .map(|_| room)
            .map_err(|e| e.to_string())
    }) {
        Ok(room) => room,
        Err(why) => {
            return refuse(
                &s,
                "room",
                StatusCode::BAD_REQUEST,
                format!("invalid room id: {why}"),
            )
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(guard) = s.sessions.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return refuse(
            &s,
            "shutting_down",
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down".into(),
        );
    };
    let next = NEXT_CONN.fetch_add(1, Ordering::Relaxed) + 1;
    let conn = format!("c{}-{next}", s.rc.instance());
    // Frames up to twice the limit reach the session, which closes with 1009 and a reason;
    // larger ones are cut off by the WebSocket layer (also closed with 1009).
    let limit = s.options.max_frame_bytes.saturating_mul(2).max(1024);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, room, conn, s, guard))
}
