//! The application's side: a cloneable [`Roomcast`] handle, connections, memberships and room
//! streams.

/// `Stream` for a type whose `queue` field is the consumer end of a [`Queue`].
/// With `counters`, also the queue's counters as methods.
macro_rules! queue_stream {
    ($t:ty, $item:ty) => {
        impl Stream for $t {
            type Item = $item;
            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<$item>> {
                let this = self.get_mut();
                this.queue.poll_take(cx, &mut this.local)
            }
        }
    };
    ($t:ty, $item:ty, counters) => {
        queue_stream!($t, $item);

        impl $t {
            /// Messages dropped because the queue was full (under `Overflow::DropOldest`).
            pub fn dropped(&self) -> u64 {
                self.queue.dropped()
            }

            /// Messages waiting to be taken.
            pub fn queued(&self) -> usize {
                self.queue.len() + self.local.len()
            }

            /// What the messages not yet taken from the queue cost against
            /// [`crate::Options::member_queue_bytes`] (payload plus
            /// [`crate::MESSAGE_OVERHEAD`] each; the batch the stream took last and is
            /// still handing out no longer counts).
            pub fn queued_bytes(&self) -> usize {
                self.queue.queued_bytes()
            }

            /// True if the stream ended because the queue overflowed under
            /// [`crate::Overflow::Close`].
            pub fn overflowed(&self) -> bool {
                self.queue.overflowed()
            }
        }
    };
}

mod member;
mod publisher;

pub use member::{Connection, EventStream, Membership, RoomStream};
pub(crate) use member::{Liveness, RoomList};
pub use publisher::Publisher;
pub(crate) use publisher::{publish_bytes, PublishGate};

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use roomcast_core::{
    ConnId, Identity, InstanceId, Member, MessageType, Metrics, PresenceAnswer, RoomId, RoomState,
};

use crate::error::Error;

/// A message as the GraphWiz design defined it, for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubMessage {
    /// The room. An `Arc<str>`, so that a room the application publishes to often can be
    /// kept as one and cloned for each message without an allocation; any `&str` or
    /// `String` converts into it (`"lobby".into()`).
    pub room_id: Arc<str>,
    /// Broadcast, presence event or system notification.
    pub message_type: MessageType,
    /// The payload. A `Bytes`, so that a frame the application already holds as one (a
    /// WebSocket message, a slice of a larger buffer) is handed over as it is: the only copy
    /// is the one into the link's output. A `Vec<u8>` converts into it without a copy
    /// (`vec.into()`).
    pub data: Bytes,
    /// The sender's own connection (on this instance), which must not receive it.
    pub exclude_connection: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
}

impl PubSubMessage {
    /// A broadcast to `room` stamped with the current Unix time.
    pub fn broadcast(room: impl Into<Arc<str>>, data: impl Into<Bytes>) -> Self {
        PubSubMessage {
            room_id: room.into(),
            message_type: MessageType::Broadcast,
            data: data.into(),
            exclude_connection: None,
            timestamp: unix_now(),
        }
    }

    /// The same message, not delivered to `conn` (the sender's own connection).
    pub fn excluding(mut self, conn: impl Into<String>) -> Self {
        self.exclude_connection = Some(conn.into());
        self
    }

    /// The same message with another type.
    pub fn with_type(mut self, message_type: MessageType) -> Self {
        self.message_type = message_type;
        self
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a successful [`Roomcast::health_check`] measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// Round trip of the PING on every link.
    pub link_rtts: Vec<(roomcast_core::LinkId, Duration)>,
    /// Rooms with local members, and how many are live.
    pub rooms: usize,
    /// Rooms whose subscription is confirmed.
    pub rooms_live: usize,
    /// Every link when the check passed: its role, node (`host:port`) and state.
    pub links: Vec<roomcast_core::LinkHealth>,
    /// Cluster mode: the topology last read (every shard's nodes and slots).
    pub topology: Option<roomcast_core::cluster::Topology>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Requests from handles to the driver.
pub(crate) enum Command {
    Join {
        room: String,
        conn: String,
        reply: Reply<Membership>,
    },
    Observe {
        room: String,
        reply: Reply<RoomStream>,
    },
    Leave {
        room: String,
        conn: String,
        reply: Option<Reply<bool>>,
        token: Option<u64>,
    },
    Disconnect {
        conn: String,
        reply: Reply<Vec<RoomId>>,
    },
    Attach {
        conn: String,
        reply: Reply<Connection>,
    },
    ConnJoin {
        conn: ConnId,
        token: u64,
        rooms: RoomList,
        reply: Reply<usize>,
    },
    ConnLeave {
        conn: ConnId,
        token: u64,
        room: String,
        reply: Reply<bool>,
    },
    ConnRooms {
        conn: ConnId,
        token: u64,
        reply: Reply<Vec<RoomId>>,
    },
    ConnWaitLive {
        conn: ConnId,
        token: u64,
        reply: Reply<()>,
    },
    /// A dropped [`Connection`]: leave its rooms if it is still the attached one.
    Detach {
        conn: ConnId,
        token: u64,
    },
    Publish {
        msg: PubSubMessage,
        reply: Reply<u64>,
    },
    /// Fire-and-forget publishes from a [`Publisher`], in order.
    PublishBatch {
        msgs: Vec<PubSubMessage>,
    },
    Query {
        query: Query,
        reply: Reply<QueryAnswer>,
    },
    Health {
        timeout: Duration,
        reply: Reply<HealthReport>,
    },
    Events {
        reply: Reply<EventStream>,
    },
    Shutdown {
        timeout: Duration,
        reply: Reply<()>,
    },
    WaitReady {
        reply: Reply<()>,
    },
    Presence {
        ask: PresenceAsk,
        reply: Reply<PresenceAnswer>,
    },
}

pub(crate) enum PresenceAsk {
    Room(String),
    Connection(String),
    Instances,
}

pub(crate) enum Query {
    LocalConnections(String),
    RoomState(String),
    Metrics,
}

pub(crate) enum QueryAnswer {
    Connections(Vec<ConnId>),
    State(Option<RoomState>),
    Metrics(Box<Metrics>),
}

/// A cloneable handle to one roomcast instance. Every method talks to the driver; when the
/// driver has stopped (after [`Roomcast::shutdown`]) they return [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct Roomcast {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) identity: Identity,
    pub(crate) publish_batch: usize,
    pub(crate) gate: Arc<PublishGate>,
    /// The limits a publish is checked against before it is queued.
    pub(crate) limits: Arc<roomcast_core::Config>,
}

impl Roomcast {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        call(&self.tx, make).await
    }

    /// Resolves once every link is connected and through its handshake (and, with presence
    /// on, this instance is registered), or fails with the first link error (wrong password,
    /// refused connection, ...).
    pub async fn wait_ready(&self) -> Result<(), Error> {
        self.call(|reply| Command::WaitReady { reply }).await
    }

    /// This instance's id and epoch.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// This instance's id.
    pub fn instance(&self) -> InstanceId {
        self.identity.instance
    }

    /// Attaches a local connection (typically one WebSocket): one stream of the messages of
    /// every room it joins through the returned [`Connection`]. This is the cheap way to put
    /// a connection in many rooms: no per-room stream, queue or task; a delivery costs one
    /// push onto the connection's queue. Dropping the `Connection` leaves all its rooms.
    ///
    /// Fails if the id is invalid, if a `Connection` with this id is still held, or if the
    /// id already joined rooms through [`Roomcast::join`] (use one of the two APIs per
    /// connection id).
    pub async fn connection(&self, conn: &str) -> Result<Connection, Error> {
        let conn = conn.to_string();
        self.call(|reply| Command::Attach { conn, reply }).await
    }

    /// Adds a local connection to a room and returns its stream of the room's messages.
    /// The first local member subscribes the room; see [`Membership::wait_live`].
    /// Joining again with the same connection ends the earlier membership's stream.
    pub async fn join(&self, room: &str, conn: &str) -> Result<Membership, Error> {
        let (room, conn) = (room.to_string(), conn.to_string());
        self.call(|reply| Command::Join { room, conn, reply }).await
    }

    /// Every message of a room, whoever it is for (the GraphWiz design's `subscribe_room`).
    pub async fn subscribe_room(&self, room: &str) -> Result<RoomStream, Error> {
        let room = room.to_string();
        self.call(|reply| Command::Observe { room, reply }).await
    }

    /// Removes a local connection from a room (its membership stream ends). Returns false if
    /// it was not a member.
    pub async fn leave(&self, room: &str, conn: &str) -> Result<bool, Error> {
        let (room, conn) = (room.to_string(), conn.to_string());
        self.call(|reply| Command::Leave {
            room,
            conn,
            reply: Some(reply),
            token: None,
        })
        .await
    }

    /// Removes a local connection from every room; returns the rooms it left.
    pub async fn disconnect(&self, conn: &str) -> Result<Vec<RoomId>, Error> {
        let conn = conn.to_string();
        self.call(|reply| Command::Disconnect { conn, reply }).await
    }

    /// Publishes a message to its room on every instance; resolves when Redis accepted it,
    /// with Redis's receiver count: the number of subscribed Redis connections, i.e. of
    /// instances with members in the room (not of members). Standalone mode answers 1 when
    /// the room has local members, else 0.
    ///
    /// Never waits for room: when the room's link already holds `max_output_bytes` for Redis
    /// (Redis or the network is not keeping up), it fails at once with
    /// `Error::Publish(PublishError::Backpressure { .. })` and nothing is queued; retry after
    /// a short wait, or use a [`Publisher`], which waits instead.
    pub async fn publish(&self, msg: PubSubMessage) -> Result<u64, Error> {
        self.call(|reply| Command::Publish { msg, reply }).await
    }

    /// A sender for publishing from any task without waiting for Redis (the GraphWiz
    /// design's publish queue). Failures are reported on [`Roomcast::events`].
    pub fn publisher(&self) -> Publisher {
        Publisher {
            tx: self.tx.clone(),
            buf: Vec::new(),
            batch: self.publish_batch.max(1),
            gate: self.gate.clone(),
            limits: self.limits.clone(),
        }
    }

    async fn presence(&self, ask: PresenceAsk) -> Result<PresenceAnswer, Error> {
        self.call(|reply| Command::Presence { ask, reply }).await
    }

    /// The room's members on every instance (one round trip to Redis; sorted). A member is a
    /// connection id qualified by its instance: the same id on two instances is two members.
    /// Fails with [`Error::Presence`] while this instance is not registered with Redis
    /// (link down, re-registering), unless `Config::presence_when_down` asks for the local
    /// view.
    pub async fn room_connections(&self, room: &str) -> Result<Vec<Member>, Error> {
        match self.presence(PresenceAsk::Room(room.to_string())).await? {
            PresenceAnswer::Room(m) => Ok(m),
            _ => Err(Error::Closed),
        }
    }

    /// How many members the room has on every instance.
    pub async fn room_member_count(&self, room: &str) -> Result<usize, Error> {
        Ok(self.room_connections(room).await?.len())
    }

    /// Whether a connection id is present on any instance (answered locally, without a round
    /// trip, when it is present here).
    pub async fn connection_exists(&self, conn: &str) -> Result<bool, Error> {
        match self
            .presence(PresenceAsk::Connection(conn.to_string()))
            .await?
        {
            PresenceAnswer::Connection(i) => Ok(!i.is_empty()),
            _ => Err(Error::Closed),
        }
    }

    /// The instances that hold a live lease (sorted).
    pub async fn instances(&self) -> Result<Vec<InstanceId>, Error> {
        match self.presence(PresenceAsk::Instances).await? {
            PresenceAnswer::Instances(i) => Ok(i),
            _ => Err(Error::Closed),
        }
    }

    /// The connections in a room on this instance only (no round trip).
    pub async fn local_connections(&self, room: &str) -> Result<Vec<ConnId>, Error> {
        let q = Query::LocalConnections(room.to_string());
        match self
            .call(|reply| Command::Query { query: q, reply })
            .await?
        {
            QueryAnswer::Connections(c) => Ok(c),
            _ => Err(Error::Closed),
        }
    }

    /// Whether a room's subscription is confirmed (`None`: no local members).
    pub async fn room_state(&self, room: &str) -> Result<Option<RoomState>, Error> {
        let q = Query::RoomState(room.to_string());
        match self
            .call(|reply| Command::Query { query: q, reply })
            .await?
        {
            QueryAnswer::State(s) => Ok(s),
            _ => Err(Error::Closed),
        }
    }

    /// Counters and gauges.
    pub async fn metrics(&self) -> Result<Metrics, Error> {
        match self
            .call(|reply| Command::Query {
                query: Query::Metrics,
                reply,
            })
            .await?
        {
            QueryAnswer::Metrics(m) => Ok(*m),
            _ => Err(Error::Closed),
        }
    }

    /// How many rooms have local members (the design's `get_connection_count`).
    pub async fn room_count(&self) -> Result<usize, Error> {
        Ok(self.metrics().await?.rooms)
    }

    /// PINGs every link and sends a probe through Redis back to the subscriber: passes only
    /// if every link answers and the subscriber really receives, within `timeout`.
    pub async fn health_check(&self, timeout: Duration) -> Result<HealthReport, Error> {
        self.call(|reply| Command::Health { timeout, reply }).await
    }

    /// A stream of link, room, gap and drop events.
    pub async fn events(&self) -> Result<EventStream, Error> {
        self.call(|reply| Command::Events { reply }).await
    }

    /// Stops joins and publishes, waits up to `timeout` for queued publishes and
    /// unsubscriptions to be confirmed, then closes every link. Memberships end.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        self.call(|reply| Command::Shutdown { timeout, reply })
            .await
    }
}

/// Sends a command on the driver's unbounded control channel (a `Connection` must not keep
/// the driver's handle channel open) and waits for its reply.
async fn call_ctl<T>(
    ctl: &mpsc::UnboundedSender<Command>,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, Error> {
    let (reply, rx) = oneshot::channel();
    ctl.unbounded_send(make(reply)).map_err(|_| Error::Closed)?;
    rx.await.map_err(|_| Error::Closed)?
}

/// Sends a command and waits for its reply.
async fn call<T>(
    tx: &mpsc::Sender<Command>,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, Error> {
    let (reply, rx) = oneshot::channel();
    let mut tx = tx.clone();
    futures_sink_send(&mut tx, make(reply)).await?;
    rx.await.map_err(|_| Error::Closed)?
}

/// `SinkExt::send` without the dependency.
async fn futures_sink_send(tx: &mut mpsc::Sender<Command>, cmd: Command) -> Result<(), Error> {
    let mut cmd = Some(cmd);
    std::future::poll_fn(|cx| match tx.poll_ready(cx) {
        Poll::Ready(Ok(())) => {
            let c = cmd.take().expect("polled after completion");
            Poll::Ready(tx.start_send(c).map_err(|_| Error::Closed))
        }
        Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
        Poll::Pending => Poll::Pending,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_room_name_is_shared_not_copied() {
        let room: Arc<str> = Arc::from("hub/abc");
        let a = PubSubMessage::broadcast(room.clone(), "one");
        let b = PubSubMessage::broadcast(room.clone(), "two");
        assert!(Arc::ptr_eq(&a.room_id, &room) && Arc::ptr_eq(&b.room_id, &room));
        assert_eq!(Arc::strong_count(&room), 3);
        // Text converts as before.
        assert_eq!(&*PubSubMessage::broadcast("lobby", "x").room_id, "lobby");
        assert_eq!(
            &*PubSubMessage::broadcast(String::from("x"), "x").room_id,
            "x"
        );
    }
}
