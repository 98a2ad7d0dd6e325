//! The application's side: a cloneable [`Roomcast`] handle, connections, memberships and room
//! streams.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_core::Stream;
use roomcast_core::{
    ConnId, Event, Identity, InstanceId, Member, Message, MessageType, Metrics, PresenceAnswer,
    RoomId, RoomState,
};

use crate::error::Error;
use crate::queue::Queue;

/// A message as the GraphWiz design defined it, for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubMessage {
    /// The room.
    pub room_id: String,
    /// Broadcast, presence event or system notification.
    pub message_type: MessageType,
    /// The payload.
    pub data: Vec<u8>,
    /// The sender's own connection (on this instance), which must not receive it.
    pub exclude_connection: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
}

impl PubSubMessage {
    /// A broadcast to `room` stamped with the current Unix time.
    pub fn broadcast(room: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
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

            /// True if the stream ended because the queue overflowed under
            /// [`crate::Overflow::Close`].
            pub fn overflowed(&self) -> bool {
                self.queue.overflowed()
            }
        }
    };
}

/// Whether a room's subscription is confirmed, shared by its memberships.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    live: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Liveness {
    pub(crate) fn set(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        if live {
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
    }

    pub(crate) fn get(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// Resolves when the room is live.
struct WaitLive(Arc<Liveness>);

impl Future for WaitLive {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.get() {
            return Poll::Ready(());
        }
        self.0
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cx.waker().clone());
        if self.0.get() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One local connection's membership of one room: a stream of the room's messages for it.
/// Dropping it leaves the room.
#[derive(Debug)]
pub struct Membership {
    pub(crate) room: RoomId,
    pub(crate) conn: ConnId,
    pub(crate) queue: Arc<Queue<Arc<Message>>>,
    /// Taken from the queue in one batch, not yet returned by the stream.
    pub(crate) local: VecDeque<Arc<Message>>,
    pub(crate) live: Arc<Liveness>,
    pub(crate) ctl: mpsc::UnboundedSender<Command>,
    pub(crate) token: u64,
}

impl Membership {
    /// The room.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// The connection.
    pub fn connection(&self) -> &ConnId {
        &self.conn
    }

    /// Whether Redis has confirmed the room's subscription: messages published from then on
    /// are promised to this instance. With no Redis (standalone) a room is live at once.
    pub fn is_live(&self) -> bool {
        self.live.get()
    }

    /// Waits until the room is live.
    pub fn wait_live(&self) -> impl Future<Output = ()> + Send + 'static {
        WaitLive(self.live.clone())
    }
}

queue_stream!(Membership, Arc<Message>, counters);

impl Drop for Membership {
    fn drop(&mut self) {
        self.queue.close();
        let _ = self.ctl.unbounded_send(Command::Leave {
            room: self.room.as_str().to_string(),
            conn: self.conn.as_str().to_string(),
            reply: None,
            token: Some(self.token),
        });
    }
}

/// Every message of one room (the design's `subscribe_room`), whoever it is for. Holding it
/// keeps the room subscribed without counting as a member.
#[derive(Debug)]
pub struct RoomStream {
    pub(crate) inner: Membership,
}

impl RoomStream {
    /// The room.
    pub fn room(&self) -> &RoomId {
        self.inner.room()
    }
    /// Whether the room's subscription is confirmed.
    pub fn is_live(&self) -> bool {
        self.inner.is_live()
    }
    /// Waits until the room is live.
    pub fn wait_live(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.wait_live()
    }
    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

impl Stream for RoomStream {
    type Item = Arc<Message>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Link, room, gap and drop events (deliveries go to memberships instead).
#[derive(Debug)]
pub struct EventStream {
    pub(crate) queue: Arc<Queue<Event>>,
    pub(crate) local: VecDeque<Event>,
}

impl EventStream {
    /// Events dropped because this stream's queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

queue_stream!(EventStream, Event);

impl Drop for EventStream {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// A cloneable handle to one roomcast instance. Every method talks to the driver; when the
/// driver has stopped (after [`Roomcast::shutdown`]) they return [`Error::Closed`].
#[derive(Debug, Clone)]
pub struct Roomcast {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) identity: Identity,
    pub(crate) publish_batch: usize,
    pub(crate) gate: Arc<PublishGate>,
}

/// Holds [`Publisher`]s back: while the driver holds fire-and-forget publishes the core
/// refused for backpressure (their link's output is full), and while the bytes publishers
/// handed to the driver and the core has not taken yet reach a bound.
#[derive(Debug)]
pub(crate) struct PublishGate {
    /// Bytes handed to the driver by publishers, not yet accepted or refused by the core.
    pending: AtomicUsize,
    /// The bound on `pending` (one batch may go over it).
    limit: usize,
    /// The driver holds publishes refused for backpressure.
    blocked: AtomicBool,
    /// The driver is gone: nothing waits any more.
    closed: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl PublishGate {
    pub(crate) fn new(limit: usize) -> Self {
        PublishGate {
            pending: AtomicUsize::new(0),
            limit: limit.max(1),
            blocked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn is_open(&self) -> bool {
        self.closed.load(Ordering::Acquire)
            || (!self.blocked.load(Ordering::Acquire)
                && self.pending.load(Ordering::Acquire) < self.limit)
    }

    /// Ready when publishers may hand over more.
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_open() {
            return Poll::Ready(());
        }
        {
            let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            if !w.iter().any(|k| k.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
        }
        // Opened between the check and the registration: its wake-up may have been missed.
        if self.is_open() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Publishers handed `n` bytes to the driver.
    pub(crate) fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// The core took (or refused) `n` bytes of what publishers handed over.
    pub(crate) fn release(&self, n: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        self.wake_if_open();
    }

    /// The driver holds (or no longer holds) publishes refused for backpressure.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Release);
        self.wake_if_open();
    }

    /// The driver is gone: wake every publisher (their sends then fail with `Closed`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_if_open();
    }

    fn wake_if_open(&self) {
        if !self.is_open() {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }
}

/// The bytes a publish holds in flight to the driver (what the gate counts).
pub(crate) fn publish_bytes(msg: &PubSubMessage) -> usize {
    msg.data.len() + msg.room_id.len()
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

/// One local connection attached with [`Roomcast::connection`]: a `Stream` of the messages
/// of every room it is in, in the order this instance received them (per room: the order
/// Redis delivered). Dropping it leaves every room.
#[derive(Debug)]
pub struct Connection {
    pub(crate) conn: ConnId,
    pub(crate) queue: Arc<Queue<Arc<Message>>>,
    /// Taken from the queue in one batch, not yet returned by the stream.
    pub(crate) local: VecDeque<Arc<Message>>,
    pub(crate) ctl: mpsc::UnboundedSender<Command>,
    pub(crate) token: u64,
}

impl Connection {
    /// The connection's id.
    pub fn id(&self) -> &ConnId {
        &self.conn
    }

    /// Joins a room (the first local member subscribes it). Returns false if the connection
    /// was already in it. Messages are promised once the room is live: see
    /// [`Connection::wait_live`].
    pub async fn join(&self, room: &str) -> Result<bool, Error> {
        Ok(self.join_many([room]).await? == 1)
    }

    /// Joins many rooms in one call (one trip to the driver; the subscriptions go out in
    /// batches). Every id is checked first: if one is invalid, none is joined and the error
    /// names it. Returns how many rooms were newly joined.
    pub async fn join_many<I>(&self, rooms: I) -> Result<usize, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let rooms = RoomList::new(rooms);
        let (conn, token) = (self.conn.clone(), self.token);
        call_ctl(&self.ctl, |reply| Command::ConnJoin {
            conn,
            token,
            rooms,
            reply,
        })
        .await
    }

    /// Leaves a room; returns false if the connection was not in it.
    pub async fn leave(&self, room: &str) -> Result<bool, Error> {
        let (conn, token, room) = (self.conn.clone(), self.token, room.to_string());
        call_ctl(&self.ctl, |reply| Command::ConnLeave {
            conn,
            token,
            room,
            reply,
        })
        .await
    }

    /// The rooms the connection is in, in the order it joined them.
    pub async fn rooms(&self) -> Result<Vec<RoomId>, Error> {
        let (conn, token) = (self.conn.clone(), self.token);
        call_ctl(&self.ctl, |reply| Command::ConnRooms { conn, token, reply }).await
    }

    /// Resolves once every room the connection is in (when called) is live: Redis confirmed
    /// the subscriptions, so messages published from then on arrive. Waits through outages;
    /// put a timeout around it if you need one.
    pub async fn wait_live(&self) -> Result<(), Error> {
        let (conn, token) = (self.conn.clone(), self.token);
        call_ctl(&self.ctl, |reply| Command::ConnWaitLive {
            conn,
            token,
            reply,
        })
        .await
    }
}

// Under `Overflow::Close` an overflowed connection leaves every room.
queue_stream!(Connection, Arc<Message>, counters);

impl Drop for Connection {
    fn drop(&mut self) {
        self.queue.close();
        let _ = self.ctl.unbounded_send(Command::Detach {
            conn: self.conn.clone(),
            token: self.token,
        });
    }
}

/// Room ids for the driver packed into one string (two allocations for a whole batch).
#[derive(Debug, Default)]
pub(crate) struct RoomList {
    text: String,
    ends: Vec<usize>,
}

impl RoomList {
    fn new<I>(rooms: I) -> RoomList
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut list = RoomList::default();
        for r in rooms {
            list.text.push_str(r.as_ref());
            list.ends.push(list.text.len());
        }
        list
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| self.text.get(a..b).unwrap_or_default())
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

/// Publishes without waiting for Redis; one per task (it is `Clone`, and clones are
/// independent). It is also a `futures::Sink<PubSubMessage>` (the GraphWiz design's
/// publishing queue), so a stream of messages can be forwarded into it.
///
/// Messages fed into the `Sink` are handed to the driver in batches of up to
/// `Options::publish_batch` — one command and one wake-up per batch instead of per message —
/// when a batch is full and whenever the sink is flushed (`SinkExt::send`, `send_all` and
/// `forward` flush for you). [`Publisher::send`] and [`Publisher::send_batch`] flush at once.
/// Dropping a `Publisher` hands over what it still holds.
///
/// Backpressure: while a link's output is full (`Config::max_output_bytes`), the driver holds
/// the publishes that would go over it and every `Publisher` waits (`send` does not complete,
/// `poll_ready` stays pending) until that link drains; nothing is refused for it. What
/// publishers hand to the driver ahead of the core is bounded by `max_output_bytes` too (one
/// batch may go over).
#[derive(Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Command>,
    buf: Vec<PubSubMessage>,
    batch: usize,
    gate: Arc<PublishGate>,
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher {
            tx: self.tx.clone(),
            buf: Vec::new(),
            batch: self.batch,
            gate: self.gate.clone(),
        }
    }
}

impl Publisher {
    /// Queues a message, after any messages fed into the sink before. Waits while the
    /// driver's command queue is full and while the driver holds publishes whose link's
    /// output is full (backpressure: nothing is refused for it, the publisher slows down). Failures after acceptance are reported on
    /// [`Roomcast::events`] as [`Event::PublishFailed`]; refusals (invalid, too large, queue
    /// full) are logged and counted in `Metrics::publish_refused`.
    pub async fn send(&mut self, msg: PubSubMessage) -> Result<(), Error> {
        self.buf.push(msg);
        std::future::poll_fn(|cx| self.poll_hand_over(cx)).await
    }

    /// Queues many messages as one command to the driver (the explicit pipeline): they are
    /// published in order, with the same reporting as [`Publisher::send`].
    pub async fn send_batch(
        &mut self,
        msgs: impl IntoIterator<Item = PubSubMessage>,
    ) -> Result<(), Error> {
        self.buf.extend(msgs);
        std::future::poll_fn(|cx| self.poll_hand_over(cx)).await
    }

    /// Hands what is buffered to the driver as one command, once the gate is open.
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.gate.poll_open(cx).is_pending() {
            return Poll::Pending;
        }
        match self.tx.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                let msgs = std::mem::take(&mut self.buf);
                self.gate.add(msgs.iter().map(publish_bytes).sum());
                Poll::Ready(
                    self.tx
                        .start_send(Command::PublishBatch { msgs })
                        .map_err(|_| Error::Closed),
                )
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_sink::Sink<PubSubMessage> for Publisher {
    type Error = Error;

    /// Pending while a batch is full and cannot be handed over, and while the gate is
    /// closed (the driver holds publishes refused for backpressure).
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.buf.len() < this.batch {
            return this.gate.poll_open(cx).map(Ok);
        }
        this.poll_hand_over(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: PubSubMessage) -> Result<(), Error> {
        let this = self.get_mut();
        if this.tx.is_closed() {
            return Err(Error::Closed);
        }
        this.buf.push(msg);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_hand_over(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        match this.poll_hand_over(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tx)
                .poll_close(cx)
                .map_err(|_| Error::Closed),
            other => other,
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let msgs = std::mem::take(&mut self.buf);
            let n = msgs.len();
            let bytes: usize = msgs.iter().map(publish_bytes).sum();
            // A sender that is not waiting always has a slot of its own in the channel.
            // Counted before the driver can see them (it releases what it takes).
            self.gate.add(bytes);
            if self.tx.try_send(Command::PublishBatch { msgs }).is_err() {
                self.gate.release(bytes);
                tracing::warn!(
                    messages = n,
                    "a Publisher dropped with unflushed messages while the driver's queue was \
                     full or closed; they are lost (flush the sink before dropping it)"
                );
            }
        }
    }
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
