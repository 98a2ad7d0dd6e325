//! One WebSocket: one `Connection` in one room, until the client leaves, is too slow, sends
//! too much, or the server shuts down.

use std::sync::Arc;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::{frames, Shared};
use crate::{MessageType, PubSubMessage};

/// Decrements the clients gauge however the session ends.
struct Open<'a>(&'a Shared);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.metrics.clients.dec();
    }
}

/// Sends a close frame (bounded in time: the client may not be reading).
async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    let mut reason = reason.to_string();
    // A close frame's reason must fit in 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        ws.send(Message::Close(Some(frame))),
    )
    .await;
}

/// How a session ended, for the close frame.
enum End {
    /// The client closed or went away.
    Client,
    /// Close with this code and reason.
    Close(u16, String),
    /// The client stopped reading: nothing more can be sent.
    Stuck,
}

pub(super) async fn run(
    mut ws: WebSocket,
    room: String,
    conn: String,
    s: Arc<Shared>,
    _session: mpsc::Sender<()>,
) {
    s.metrics.clients.inc();
    let _open = Open(&s);
    let rc = &s.rc;
    let joined = async {
        let member = rc.connection(&conn).await?;
        member.join(&room).await?;
        Ok::<_, crate::Error>(member)
    };
    let mut member = match joined.await {
        Ok(m) => m,
        Err(e) => {
            s.metrics.error(format_args!("join {room}: {e}"));
            close(&mut ws, close_code::AGAIN, &format!("cannot join: {e}")).await;
            return;
        }
    };
    s.metrics.accepted.inc();
    let _ = tokio::time::timeout(s.options.live_timeout, member.wait_live()).await;
    let instance = rc.instance().to_string();
    // The members on every instance (this one included) now that the room is live here:
    // later joins and leaves come as presence events.
    let members = rc.room_connections(&room).await.unwrap_or_default();
    let welcome = frames::welcome(&room, &conn, &instance, &members);
    if ws.send(Message::text(welcome)).await.is_err() {
        return; // dropping the Connection leaves its rooms
    }
    s.metrics.frames_out.inc();
    let mut publisher = rc.publisher();
    // The room's name, shared by every message this session publishes (no allocation each).
    let room_name: std::sync::Arc<str> = room.as_str().into();
    let presence = |event: &str| {
        PubSubMessage::broadcast(
            room_name.clone(),
            frames::presence_body(event, &conn, &instance),
        )
        .with_type(MessageType::PresenceEvent)
        .excluding(conn.clone())
    };
    if let Err(e) = publisher.send(presence("join")).await {
        s.metrics
            .error(format_args!("publish a join to {room}: {e}"));
    }
    let mut stop = s.stop.clone();
    let mut dropped = 0;
    let end = loop {
        tokio::select! {
            frame = ws.recv() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if text.len() > s.options.max_frame_bytes {
                        break too_large(&s, text.len());
                    }
                    s.metrics.frames_in.inc();
                    // The frame's bytes are published as they are: no copy.
                    let msg = PubSubMessage::broadcast(room_name.clone(), Bytes::from(text))
                        .excluding(conn.clone());
                    if let Err(e) = publisher.send(msg).await {
                        s.metrics.error(format_args!("publish to {room}: {e}"));
                        break End::Close(close_code::ERROR, format!("cannot publish: {e}"));
                    }
                }
                Some(Ok(Message::Close(_))) | None => break End::Client,
                Some(Ok(_)) => {} // binary frames are not relayed; pings are answered
                Some(Err(e)) => {
                    // The WebSocket layer cuts off frames over its limit (twice ours).
                    let text = e.to_string();
                    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                        break too_large(&s, s.options.max_frame_bytes.saturating_mul(2));
                    }
                    break End::Client;
                }
            },
            msg = member.next() => match msg {
                Some(msg) => {
                    if member.dropped() > dropped {
                        s.metrics.member_queue_dropped.inc_by(member.dropped() - dropped);
                        dropped = member.dropped();
                    }
                    let frame = Message::text(frames::client_frame(&msg));
                    match tokio::time::timeout(s.options.send_timeout, ws.send(frame)).await {
                        Ok(Ok(())) => {
                            s.metrics.frames_out.inc();
                        }
                        Ok(Err(_)) => break End::Client,
                        Err(_) => {
                            s.metrics.closed_slow.inc();
                            break End::Stuck;
                        }
                    }
                }
                None if member.overflowed() => {
                    s.metrics.closed_slow.inc();
                    break End::Close(
                        close_code::POLICY,
                        "too slow: your queue overflowed; reconnect and read faster".into(),
                    );
                }
                None => break End::Close(close_code::AGAIN, "membership ended".into()),
            },
            _ = stopped(&mut stop) => {
                break End::Close(close_code::AWAY, "server shutting down".into());
            }
        }
    };
    match end {
        End::Close(code, reason) => close(&mut ws, code, &reason).await,
        End::Client => {
            // Sends the queued reply to the client's close frame.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.flush()).await;
        }
        End::Stuck => {}
    }
    drop(ws);
    // Leaves every room; the driver sees the drop before the presence "leave" below.
    drop(member);
    if let Err(e) = publisher.send(presence("leave")).await {
        s.metrics
            .error(format_args!("publish a leave to {room}: {e}"));
    }
}

/// Resolves when the server begins shutting down (or is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

fn too_large(s: &Shared, len: usize) -> End {
    s.metrics.closed_too_large.inc();
    End::Close(
        close_code::SIZE,
        format!(
            "frame of {len} bytes is over the limit of {} bytes",
            s.options.max_frame_bytes
        ),
    )
}
