//! A minimal WebSocket room server on roomcast: clients connect to `/rooms/{room}`; every
//! text frame goes to the room's other members on every instance; joins and leaves are
//! published as presence events.
//!
//! This one file is the server of `roomcast demo`, of `examples/ws_rooms.rs` and of the
//! WebSocket tests (they include it with `#[path]`), so all three run the same code.
//!
//! Frames to clients are JSON objects:
//! - `{"type":"welcome","room":R,"connection":C,"instance":I}` once the room is live here;
//! - `{"type":"broadcast","room":R,"from":C,"data":TEXT}` for another member's text frame;
//! - `{"type":"presence","room":R,"data":{"event":"join"|"leave","connection":C,"instance":I}}`;
//! - `{"type":"system","room":R,"data":TEXT}` for system notifications.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast::{Message as RoomMessage, MessageType, PubSubMessage, Roomcast};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a client may take for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new member waits for its room's subscription to be confirmed.
const LIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one server (read by the demo's live view).
#[derive(Debug, Default)]
pub struct Stats {
    /// WebSocket connections open now.
    pub connections: AtomicUsize,
    /// Connections that completed the handshake and joined their room.
    pub accepted: AtomicU64,
    /// Handshakes refused (wrong path) or failed.
    pub rejected: AtomicU64,
    /// Text frames received from clients (each published to its room).
    pub frames_in: AtomicU64,
    /// Frames sent to clients (broadcasts, presence and system messages).
    pub frames_out: AtomicU64,
    /// Presence events published (joins and leaves).
    pub presence_published: AtomicU64,
    /// Messages dropped because a client read too slowly.
    pub dropped: AtomicU64,
    /// Errors (accept, join, publish), the last one kept.
    pub errors: AtomicU64,
    /// The last error.
    pub last_error: Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

/// A running server; [`Server::shutdown`] closes every connection (presence leaves are
/// published) and stops accepting.
pub struct Server {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (`127.0.0.1:0` picks a free port) and serves rooms through `rc`.
    pub async fn bind(addr: &str, rc: Roomcast) -> std::io::Result<Server> {
        Ok(Server::start(TcpListener::bind(addr).await?, rc))
    }

    /// Serves rooms through `rc` on an already bound listener.
    pub fn start(listener: TcpListener, rc: Roomcast) -> Server {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, rc, stats.clone(), stop_rx));
        Server {
            addr,
            stats,
            stop,
            task,
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

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Stops accepting, closes every connection (each publishes its presence leave) and
    /// waits up to `grace` for that.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Connection numbers, process-wide.
static NEXT_CONN: AtomicU64 = AtomicU64::new(0);

async fn accept_loop(
    listener: TcpListener,
    rc: Roomcast,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    // Unique across instances (the instance id) and across the servers that
                    // share one instance (a process-wide counter: the demo's standalone mode
                    // runs three servers on one in-process roomcast, and a per-server counter
                    // gave two live connections the same id there).
                    let next = NEXT_CONN.fetch_add(1, Ordering::Relaxed) + 1;
                    let conn = format!("c{}-{next}", rc.instance());
                    conns.spawn(connection(tcp, conn, rc.clone(), stats.clone(), stop.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    stats.error(format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Decrements the open-connections gauge when a connection ends, however it ends.
struct Open(Arc<Stats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(
    tcp: TcpStream,
    conn: String,
    rc: Roomcast,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let mut room: Option<String> = None;
    // The callback's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match room_from_path(req.uri().path()) {
            Some(r) => {
                room = Some(r);
                Ok(resp)
            }
            None => {
                let mut err =
                    ErrorResponse::new(Some("not found: connect to /rooms/{room}\n".to_string()));
                *err.status_mut() = StatusCode::NOT_FOUND;
                Err(err)
            }
        }
    };
    let handshake = tokio_tungstenite::accept_hdr_async(tcp, callback);
    let mut ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        _ => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Some(room) = room else { return };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _open = Open(stats.clone());

    // One Connection per socket: one stream of every room it is in (here, one room).
    let joined = async {
        let member = rc.connection(&conn).await?;
        member.join(&room).await?;
        Ok::<_, roomcast::Error>(member)
    };
    let mut member = match joined.await {
        Ok(m) => m,
        Err(e) => {
            stats.error(format!("join {room}: {e}"));
            close(&mut ws, CloseCode::Policy, &e.to_string()).await;
            return;
        }
    };
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(LIVE_TIMEOUT, member.wait_live()).await;
    let instance = rc.instance().to_string();
    let welcome = json!({
        "type": "welcome", "room": room, "connection": conn, "instance": instance,
    });
    if ws.send(Message::text(welcome.to_string())).await.is_err() {
        return; // dropping the Connection leaves its rooms
    }
    let mut publisher = rc.publisher();
    let presence = |event: &str| {
        let body = json!({"event": event, "connection": conn, "instance": instance});
        PubSubMessage::broadcast(room.clone(), body.to_string())
            .with_type(MessageType::PresenceEvent)
            .excluding(conn.clone())
    };
    if publisher.send(presence("join")).await.is_ok() {
        stats.presence_published.fetch_add(1, Ordering::Relaxed);
    }
    let mut dropped = 0;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    let msg = PubSubMessage::broadcast(room.clone(), text.as_bytes())
                        .excluding(conn.clone());
                    if let Err(e) = publisher.send(msg).await {
                        stats.error(format!("publish to {room}: {e}"));
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // Sends tungstenite's queued close reply.
                    let _ = ws.flush().await;
                    break;
                }
                Some(Ok(_)) => {} // binary frames are not relayed; pings are answered
                Some(Err(_)) | None => break,
            },
            msg = member.next() => match msg {
                Some(msg) => {
                    if member.dropped() > dropped {
                        stats.dropped.fetch_add(member.dropped() - dropped, Ordering::Relaxed);
                        dropped = member.dropped();
                    }
                    if ws.send(client_frame(&msg)).await.is_err() {
                        break;
                    }
                    stats.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    close(&mut ws, CloseCode::Again, "membership ended").await;
                    break;
                }
            },
            _ = stop.changed() => {
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                break;
            }
        }
    }
    // Leaves every room; the driver sees the drop before the presence "leave" below.
    drop(member);
    if publisher.send(presence("leave")).await.is_ok() {
        stats.presence_published.fetch_add(1, Ordering::Relaxed);
    }
}

async fn close(ws: &mut WebSocketStream<TcpStream>, code: CloseCode, reason: &str) {
    let mut reason = reason.to_string();
    // A close frame's reason must fit in 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

/// The JSON text frame a client gets for a room message.
pub fn client_frame(msg: &RoomMessage) -> Message {
    let room = msg.room.as_str();
    let text = String::from_utf8_lossy(&msg.data);
    let value = match msg.message_type {
        MessageType::Broadcast => json!({
            "type": "broadcast", "room": room,
            "from": msg.exclude_connection.as_deref(), "data": text,
        }),
        MessageType::PresenceEvent => {
            let data = serde_json::from_slice::<Value>(&msg.data)
                .unwrap_or_else(|_| Value::String(text.into_owned()));
            json!({"type": "presence", "room": room, "data": data})
        }
        MessageType::SystemNotification => json!({"type": "system", "room": room, "data": text}),
    };
    Message::text(value.to_string())
}

/// The room of a request path `/rooms/{room}` (percent-decoded; may contain `/`).
pub fn room_from_path(path: &str) -> Option<String> {
    let raw = path.strip_prefix("/rooms/")?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let room = String::from_utf8(out).ok()?;
    (!room.is_empty()).then_some(room)
}

/// Percent-encodes a room id for a URL path (`/` is kept).
pub fn percent_encode(room: &str) -> String {
    let mut out = String::with_capacity(room.len());
    for b in room.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
