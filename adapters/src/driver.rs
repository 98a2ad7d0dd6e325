//! The driver: one future that moves bytes, timers and link openings between the sockets and
//! the core, and fans deliveries out to memberships. It never interprets Redis replies.

use std::collections::VecDeque;

/// The driver's maps: keyed by ids it hands out or validated, hashed with a per-map seed.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_core::Stream;
use futures_io::{AsyncRead, AsyncWrite};
use roomcast_core::{
    ConnId, Event, Hub, LinkId, LinkRequest, Message, Publish, PublishError, PublishId, RoomId,
    RoomState,
};
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::handle::{
    publish_bytes, Command, Connection, EventStream, HealthReport, Liveness, Membership,
    PubSubMessage, PublishGate, Query, QueryAnswer, Reply, RoomList, RoomStream,
};
use crate::queue::Queue;
use crate::runtime::{BoxFuture, BoxedIo, Runtime};
use crate::Options;

/// Connection ids of room observers ([`crate::Roomcast::subscribe_room`]) start with this
/// non-character: a namespace of the driver's own, refused for the application's ids, so that
/// the driver's observers never collide with a connection. What keeps observers out of
/// presence is the core's observer flag ([`Hub::observe`]), not this prefix.
pub(crate) const OBSERVER_PREFIX: char = '\u{FFFF}';

/// Refuses an application's connection id in the observers' namespace.
fn not_reserved(conn: &str) -> Result<(), Error> {
    if conn.starts_with(OBSERVER_PREFIX) {
        return Err(Error::ConnectionInUse {
            conn: conn.to_string(),
            held_by: "the room observers (ids starting with U+FFFF are reserved for them); \
                      choose an id that does not start with U+FFFF",
        });
    }
    Ok(())
}

const READ_CHUNK: usize = 64 << 10;
/// The adapter pulls a link's output from the core only while that link's socket write
/// queue holds less than this (or less than `max_output_bytes`, if smaller): the rest waits
/// in the core, where it counts against the same `max_output_bytes`.
const WRITE_QUEUE_BYTES: usize = 256 << 10;
/// Reads per link per poll before yielding to the others.
const READ_BUDGET: usize = 16;

enum LinkIo {
    Idle,
    Connecting(BoxFuture<io::Result<BoxedIo>>),
    Open {
        io: BoxedIo,
        rbuf: BytesMut,
        wq: VecDeque<Bytes>,
        /// Bytes in `wq`.
        wq_bytes: usize,
    },
}

struct Member {
    queue: Arc<Queue<Arc<Message>>>,
    token: u64,
}

/// A connection attached with `Roomcast::connection`: one queue for all its rooms. With Redis
/// its rooms live in the core only (nothing per room here); standalone, its rooms are
/// `RoomEntry` members sharing this queue.
struct Attached {
    queue: Arc<Queue<Arc<Message>>>,
    token: u64,
}

/// A `Connection::wait_live` call: the connection's rooms not yet live, in join order (the
/// order their subscriptions go out), checked from the front.
struct LiveWaiter {
    conn: ConnId,
    pending: VecDeque<RoomId>,
    reply: Reply<()>,
}

#[derive(Default)]
struct RoomEntry {
    live: Arc<Liveness>,
    members: HashMap<ConnId, Member>,
}

struct HealthWaiter {
    started: Instant,
    deadline: Instant,
    pending: Vec<LinkId>,
    rtts: Vec<(LinkId, Duration)>,
    reply: Reply<HealthReport>,
}

struct ShutdownState {
    deadline: Instant,
    replies: Vec<Reply<()>>,
}

/// Drives one roomcast instance. Spawn it on any executor (or let
/// [`crate::Builder::connect_tokio`] do it); it completes after shutdown, or when every handle
/// is gone.
#[must_use = "the driver does nothing unless polled"]
pub struct Driver {
    state: Box<State>,
    span: tracing::Span,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

struct State {
    rt: Arc<dyn Runtime>,
    hub: Option<Hub>,
    options: Options,
    cmds: mpsc::Receiver<Command>,
    ctl_rx: mpsc::UnboundedReceiver<Command>,
    ctl_tx: mpsc::UnboundedSender<Command>,
    links: Vec<LinkIo>,
    timer: Option<(Instant, BoxFuture<()>)>,
    rooms: HashMap<RoomId, RoomEntry>,
    conns: HashMap<ConnId, Attached>,
    live_waiters: Vec<LiveWaiter>,
    next_token: u64,
    publishes: HashMap<PublishId, Reply<u64>>,
    queries: HashMap<roomcast_core::QueryId, Reply<roomcast_core::PresenceAnswer>>,
    identity: roomcast_core::Identity,
    health: Vec<HealthWaiter>,
    ready_waiters: Vec<Reply<()>>,
    event_subs: Vec<Arc<Queue<Event>>>,
    shutdown: Option<ShutdownState>,
    scratch: Box<[u8]>,
    round_now: Option<Instant>,
    handles_gone: bool,
    done: bool,
    /// Fire-and-forget publishes the core refused for backpressure, in order, retried as
    /// their links drain; publishers wait at `gate` while there are any.
    parked: VecDeque<PubSubMessage>,
    gate: Arc<PublishGate>,
    /// How much of a link's output the adapter takes into its write queue.
    write_queue_bytes: usize,
}

impl Driver {
    pub(crate) fn new(
        rt: Arc<dyn Runtime>,
        hub: Option<Hub>,
        options: Options,
        cmds: mpsc::Receiver<Command>,
        identity: roomcast_core::Identity,
        gate: Arc<PublishGate>,
    ) -> Driver {
        let (ctl_tx, ctl_rx) = mpsc::unbounded();
        let n = hub.as_ref().map_or(0, |h| h.config().pool_size + 1);
        let write_queue_bytes = hub.as_ref().map_or(WRITE_QUEUE_BYTES, |h| {
            WRITE_QUEUE_BYTES.min(h.config().max_output_bytes)
        });
        // Every log line of this instance carries its id; payloads and passwords never appear.
        let span = tracing::info_span!(
            "roomcast",
            instance = %identity.instance,
            standalone = hub.is_none()
        );
        Driver {
            span,
            state: Box::new(State {
                rt,
                hub,
                options,
                cmds,
                ctl_rx,
                ctl_tx,
                links: (0..n).map(|_| LinkIo::Idle).collect(),
                timer: None,
                rooms: HashMap::default(),
                conns: HashMap::default(),
                live_waiters: Vec::new(),
                next_token: 0,
                publishes: HashMap::default(),
                queries: HashMap::default(),
                identity,
                health: Vec::new(),
                ready_waiters: Vec::new(),
                event_subs: Vec::new(),
                shutdown: None,
                scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
                round_now: None,
                handles_gone: false,
                done: false,
                parked: VecDeque::new(),
                gate,
                write_queue_bytes,
            }),
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let s = &mut *this.state;
        for _round in 0..64 {
            s.round_now = None;
            let mut progress = s.poll_commands(cx);
            for i in 0..s.links.len() {
                progress |= s.poll_link(i, cx);
            }
            progress |= s.drain();
            for i in 0..s.links.len() {
                progress |= s.poll_write(i, cx);
            }
            progress |= s.flush_parked();
            progress |= s.poll_timer(cx);
            progress |= s.drain();
            s.check_shutdown();
            if s.done {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Plenty done; let other tasks run and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl State {
    /// The time, read once per round of the driver's loop (a clock read per frame or
    /// command showed up in profiles; the core's timers need no finer grain).
    fn now(&mut self) -> Instant {
        *self.round_now.get_or_insert_with(|| self.rt.now())
    }

    /// Control commands (drops of memberships and connections, their calls) go first, and
    /// again before every handle command: a drop that happened before a call is seen by it.
    fn poll_control(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for _ in 0..1024 {
            match Pin::new(&mut self.ctl_rx).poll_next(cx) {
                Poll::Ready(Some(c)) => {
                    self.command(c);
                    progress = true;
                }
                _ => break,
            }
        }
        progress
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = self.poll_control(cx);
        if !self.handles_gone {
            for _ in 0..1024 {
                progress |= self.poll_control(cx);
                match Pin::new(&mut self.cmds).poll_next(cx) {
                    Poll::Ready(Some(c)) => {
                        self.command(c);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        // Every handle is gone: shut down on our own.
                        self.handles_gone = true;
                        self.begin_shutdown(Duration::from_secs(2), None);
                        progress = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        progress
    }

    fn command(&mut self, c: Command) {
        let now = self.now();
        match c {
            Command::Join { room, conn, reply } => {
                let _ =
                    reply.send(not_reserved(&conn).and_then(|()| self.join(&room, &conn, false)));
            }
            Command::Observe { room, reply } => {
                self.next_token += 1;
                let conn = format!("{OBSERVER_PREFIX}observer-{}", self.next_token);
                let _ = reply.send(
                    self.join(&room, &conn, true)
                        .map(|inner| RoomStream { inner }),
                );
            }
            Command::Leave {
                room,
                conn,
                reply,
                token,
            } => {
                let result = self.leave(&room, &conn, token);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Disconnect { conn, reply } => {
                let result = match &mut self.hub {
                    Some(hub) => hub.disconnect(&conn, now).map_err(Error::from),
                    None => ConnId::new(&conn, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                        .map_err(|e| {
                            Error::Member(roomcast_core::MemberError::InvalidConnection(e))
                        })
                        .map(|_| {
                            self.rooms
                                .iter()
                                .filter(|(_, r)| r.members.contains_key(conn.as_str()))
                                .map(|(id, _)| id.clone())
                                .collect()
                        }),
                };
                if let Ok(rooms) = &result {
                    for room in rooms {
                        self.forget_member(room.as_str(), &conn, None);
                    }
                }
                let _ = reply.send(result);
            }
            Command::Attach { conn, reply } => {
                let _ = reply.send(self.attach(&conn));
            }
            Command::ConnJoin {
                conn,
                token,
                rooms,
                reply,
            } => {
                let _ = reply.send(self.conn_join(&conn, token, &rooms));
            }
            Command::ConnLeave {
                conn,
                token,
                room,
                reply,
            } => {
                let result = self
                    .attached(&conn, token)
                    .and_then(|()| match &mut self.hub {
                        Some(hub) => hub.leave(&room, conn.as_str(), now).map_err(Error::from),
                        None => self.leave(&room, conn.as_str(), Some(token)),
                    });
                let _ = reply.send(result);
            }
            Command::ConnRooms { conn, token, reply } => {
                let result = self.attached(&conn, token).map(|()| match &self.hub {
                    Some(hub) => hub.rooms_of(conn.as_str()).to_vec(),
                    None => self.standalone_rooms_of(conn.as_str()),
                });
                let _ = reply.send(result);
            }
            Command::ConnWaitLive { conn, token, reply } => {
                if let Err(e) = self.attached(&conn, token) {
                    let _ = reply.send(Err(e));
                } else {
                    let pending: VecDeque<RoomId> = match &self.hub {
                        Some(hub) => hub
                            .rooms_of(conn.as_str())
                            .iter()
                            .filter(|r| hub.room_state(r.as_str()) != Some(RoomState::Live))
                            .cloned()
                            .collect(),
                        None => VecDeque::new(),
                    };
                    self.live_waiters.push(LiveWaiter {
                        conn,
                        pending,
                        reply,
                    });
                    self.check_live_waiters();
                }
            }
            Command::Detach { conn, token } => self.detach(&conn, token),
            Command::Publish { msg, reply } => self.publish(msg, reply, now),
            Command::PublishBatch { msgs } => {
                for msg in msgs {
                    self.publish_quiet(msg, now);
                }
            }
            Command::Query { query, reply } => {
                let _ = reply.send(Ok(self.query(query)));
            }
            Command::Health { timeout, reply } => self.start_health(timeout, reply, now),
            Command::Events { reply } => {
                let q = Arc::new(Queue::new(
                    self.options.event_queue,
                    crate::Overflow::DropOldest,
                ));
                self.event_subs.push(q.clone());
                let _ = reply.send(Ok(EventStream {
                    queue: q,
                    local: VecDeque::new(),
                }));
            }
            Command::Shutdown { timeout, reply } => self.begin_shutdown(timeout, Some(reply)),
            Command::Presence { ask, reply } => self.presence(ask, reply, now),
            Command::WaitReady { reply } => {
                if self.all_ready() {
                    let _ = reply.send(Ok(()));
                } else {
                    self.ready_waiters.push(reply);
                }
            }
        }
    }

    /// Every link through its handshake and, with presence on, this instance registered (so
    /// that a presence query right after `connect` is answered, not refused).
    fn all_ready(&self) -> bool {
        self.hub
            .as_ref()
            .is_none_or(|h| h.health().all_ready() && (!h.config().presence || h.presence_ready()))
    }

    /// Joins `conn` to `room`, as an observer (in no presence) if `observer`.
    fn join(&mut self, room: &str, conn: &str, observer: bool) -> Result<Membership, Error> {
        if self.shutdown.is_some() {
            return Err(Error::Member(roomcast_core::MemberError::Shutdown));
        }
        if self.reap_attached(conn) {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "a Connection (Roomcast::connection)",
            });
        }
        let now = self.now();
        let (room_id, conn_id, live) = match &mut self.hub {
            Some(hub) => {
                let joined = if observer {
                    hub.observe(room, conn, now)?
                } else {
                    hub.join(room, conn, now)?
                };
                let room_id = hub.check_room(room)?;
                let conn_id = ConnId::new(conn, hub.config().max_conn_id_bytes)
                    .map_err(roomcast_core::MemberError::InvalidConnection)?;
                (room_id, conn_id, joined.state == RoomState::Live)
            }
            None => {
                let room_id = RoomId::new(room, roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidRoom)?;
                let conn_id = ConnId::new(conn, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidConnection)?;
                (room_id, conn_id, true)
            }
        };
        self.next_token += 1;
        let token = self.next_token;
        let queue = Arc::new(Queue::new(self.options.member_queue, self.options.overflow));
        let entry = self.rooms.entry(room_id.clone()).or_default();
        if live {
            entry.live.set(true);
        }
        if let Some(old) = entry.members.insert(
            conn_id.clone(),
            Member {
                queue: queue.clone(),
                token,
            },
        ) {
            old.queue.close();
        }
        Ok(Membership {
            room: room_id,
            conn: conn_id,
            queue,
            local: VecDeque::new(),
            live: entry.live.clone(),
            ctl: self.ctl_tx.clone(),
            token,
        })
    }

    /// True if `conn` is attached to a live `Connection`. An attached connection whose
    /// `Connection` was dropped (its `Detach` may still be on the way) is detached here, so
    /// that dropping and re-attaching an id never races.
    fn reap_attached(&mut self, conn: &str) -> bool {
        let Some(a) = self.conns.get(conn) else {
            return false;
        };
        if !a.queue.is_closed() {
            return true;
        }
        let token = a.token;
        if let Ok(conn) = ConnId::new(conn, usize::MAX) {
            self.detach(&conn, token);
        }
        false
    }

    fn attach(&mut self, conn: &str) -> Result<Connection, Error> {
        if self.shutdown.is_some() {
            return Err(Error::Member(roomcast_core::MemberError::Shutdown));
        }
        not_reserved(conn)?;
        let max = self
            .hub
            .as_ref()
            .map_or(roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES, |h| {
                h.config().max_conn_id_bytes
            });
        let conn_id =
            ConnId::new(conn, max).map_err(roomcast_core::MemberError::InvalidConnection)?;
        if self.reap_attached(conn) {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "another Connection",
            });
        }
        let joined = match &self.hub {
            Some(hub) => !hub.rooms_of(conn).is_empty(),
            None => self.rooms.values().any(|r| r.members.contains_key(conn)),
        };
        if joined {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "memberships from Roomcast::join",
            });
        }
        self.next_token += 1;
        let token = self.next_token;
        let queue = Arc::new(Queue::new(self.options.member_queue, self.options.overflow));
        self.conns.insert(
            conn_id.clone(),
            Attached {
                queue: queue.clone(),
                token,
            },
        );
        Ok(Connection {
            conn: conn_id,
            queue,
            local: VecDeque::new(),
            ctl: self.ctl_tx.clone(),
            token,
        })
    }

    /// Ok if `conn` is attached with this token (the `Connection` calling is the current one).
    fn attached(&self, conn: &ConnId, token: u64) -> Result<(), Error> {
        if self.shutdown.is_some() {
            return Err(Error::Member(roomcast_core::MemberError::Shutdown));
        }
        match self.conns.get(conn) {
            Some(a) if a.token == token => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    fn conn_join(&mut self, conn: &ConnId, token: u64, rooms: &RoomList) -> Result<usize, Error> {
        self.attached(conn, token)?;
        let batch_error = |(index, error): (usize, roomcast_core::MemberError)| {
            if rooms.len() == 1 {
                Error::Member(error)
            } else {
                Error::Batch { index, error }
            }
        };
        let names: Vec<&str> = rooms.iter().collect();
        let now = self.now();
        if let Some(hub) = &mut self.hub {
            // All or nothing: the hub checks every id first.
            return hub
                .join_many(&names, conn.as_str(), now)
                .map_err(batch_error);
        }
        // Standalone: the same checks, then members sharing the connection's queue.
        let max = roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES;
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, room)| {
                RoomId::new(room, max).map_err(|e| (i, roomcast_core::MemberError::InvalidRoom(e)))
            })
            .collect::<Result<Vec<RoomId>, _>>()
            .map_err(batch_error)?;
        let Some(a) = self.conns.get(conn) else {
            return Err(Error::Closed);
        };
        let mut added = 0;
        for room in ids {
            let entry = self.rooms.entry(room).or_default();
            entry.live.set(true);
            if !entry.members.contains_key(conn.as_str()) {
                entry.members.insert(
                    conn.clone(),
                    Member {
                        queue: a.queue.clone(),
                        token: a.token,
                    },
                );
                added += 1;
            }
        }
        Ok(added)
    }

    fn standalone_rooms_of(&self, conn: &str) -> Vec<RoomId> {
        let mut v: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.members.contains_key(conn))
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// A `Connection` was dropped (or overflowed under `Overflow::Close`): it leaves every
    /// room, if `token` is still the attached one.
    fn detach(&mut self, conn: &ConnId, token: u64) {
        if self.conns.get(conn).is_none_or(|a| a.token != token) {
            return;
        }
        if let Some(a) = self.conns.remove(conn) {
            a.queue.close();
        }
        let now = self.now();
        match &mut self.hub {
            Some(hub) => {
                if let Err(e) = hub.disconnect(conn.as_str(), now) {
                    warn!(%e, "detaching a connection failed");
                }
            }
            None => {
                for room in self.standalone_rooms_of(conn.as_str()) {
                    self.forget_member(room.as_str(), conn.as_str(), Some(token));
                }
            }
        }
        let mut i = 0;
        while i < self.live_waiters.len() {
            if self.live_waiters[i].conn == *conn {
                let w = self.live_waiters.swap_remove(i);
                let _ = w.reply.send(Err(Error::Closed));
            } else {
                i += 1;
            }
        }
    }

    /// Answers the `wait_live` calls whose rooms are all live (or left).
    fn check_live_waiters(&mut self) {
        if self.live_waiters.is_empty() {
            return;
        }
        let Some(hub) = &self.hub else {
            for w in self.live_waiters.drain(..) {
                let _ = w.reply.send(Ok(()));
            }
            return;
        };
        let mut i = 0;
        while i < self.live_waiters.len() {
            let w = &mut self.live_waiters[i];
            while let Some(front) = w.pending.front() {
                match hub.room_state(front.as_str()) {
                    Some(RoomState::Live) | None => {
                        w.pending.pop_front();
                    }
                    Some(_) => break,
                }
            }
            if w.pending.is_empty() || w.reply.is_canceled() {
                let w = self.live_waiters.swap_remove(i);
                let _ = w.reply.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    fn leave(&mut self, room: &str, conn: &str, token: Option<u64>) -> Result<bool, Error> {
        if let Some(t) = token {
            // A dropped membership: only if it is still the current one.
            let current = self
                .rooms
                .get(room)
                .and_then(|r| r.members.get(conn))
                .map(|m| m.token);
            if current != Some(t) {
                return Ok(false);
            }
        }
        let now = self.now();
        let left = match &mut self.hub {
            Some(hub) => hub.leave(room, conn, now)?,
            None => {
                // Refuse what the hub would refuse, so both modes answer alike.
                RoomId::new(room, roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidRoom)?;
                ConnId::new(conn, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidConnection)?;
                self.rooms
                    .get(room)
                    .is_some_and(|r| r.members.contains_key(conn))
            }
        };
        self.forget_member(room, conn, token);
        Ok(left)
    }

    fn forget_member(&mut self, room: &str, conn: &str, token: Option<u64>) {
        if let Some(entry) = self.rooms.get_mut(room) {
            let matches = entry
                .members
                .get(conn)
                .is_some_and(|m| token.is_none_or(|t| t == m.token));
            if matches {
                if let Some(m) = entry.members.remove(conn) {
                    m.queue.close();
                }
            }
            if entry.members.is_empty() {
                entry.live.set(false);
                self.rooms.remove(room);
            }
        }
    }

    /// A publish whose caller waits for Redis's answer: a refusal (backpressure included)
    /// is answered at once.
    fn publish(&mut self, msg: PubSubMessage, reply: Reply<u64>, now: Instant) {
        let result = match &mut self.hub {
            Some(hub) => hub.publish(&as_publish(&msg), now),
            None => {
                let _ = reply.send(self.deliver_standalone(&msg));
                return;
            }
        };
        match result {
            Ok(id) => {
                self.publishes.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Publish(e)));
            }
        }
    }

    /// A fire-and-forget publish from a `Publisher`: held, in order behind any held before,
    /// while its link pushes back; publishers wait at the gate meanwhile.
    fn publish_quiet(&mut self, msg: PubSubMessage, now: Instant) {
        if !self.parked.is_empty() || !self.try_publish_quiet(&msg, now) {
            self.parked.push_back(msg);
            self.gate.set_blocked(true);
        }
    }

    /// Hands a fire-and-forget publish to the core (nobody waits for its answer: no event
    /// for its success). False if the core refused it for backpressure: the caller keeps it.
    fn try_publish_quiet(&mut self, msg: &PubSubMessage, now: Instant) -> bool {
        let result = match &mut self.hub {
            Some(hub) => {
                // A full link would refuse it (and count a refusal at every retry).
                let link = hub.publish_link(&msg.room_id);
                if hub.link_output(link) >= hub.config().max_output_bytes {
                    return false;
                }
                hub.publish_quiet(&as_publish(msg), now).map(drop)
            }
            None => self.deliver_standalone(msg).map(drop).map_err(|e| match e {
                Error::Publish(e) => e,
                _ => PublishError::Shutdown,
            }),
        };
        match result {
            Err(PublishError::Backpressure { .. }) => return false,
            Err(e) => warn!(error = %e, room = %msg.room_id, "publish refused"),
            Ok(()) => {}
        }
        self.gate.release(publish_bytes(msg));
        true
    }

    /// Retries the held publishes as their links drain; opens the gate once none is left.
    fn flush_parked(&mut self) -> bool {
        if self.parked.is_empty() {
            return false;
        }
        let now = self.now();
        let mut progress = false;
        while let Some(msg) = self.parked.pop_front() {
            if !self.try_publish_quiet(&msg, now) {
                self.parked.push_front(msg);
                break;
            }
            progress = true;
        }
        if self.parked.is_empty() {
            self.gate.set_blocked(false);
        }
        progress
    }

    /// No Redis: deliver within this process.
    fn deliver_standalone(&mut self, msg: &PubSubMessage) -> Result<u64, Error> {
        if self.shutdown.is_some() {
            return Err(Error::Publish(PublishError::Shutdown));
        }
        let room = RoomId::new(
            &msg.room_id,
            roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES,
        )
        .map_err(PublishError::InvalidRoom)?;
        if let Some(c) = &msg.exclude_connection {
            ConnId::new(c, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                .map_err(PublishError::InvalidExclude)?;
        }
        let len = roomcast_core::envelope::encoded_len(
            &msg.room_id,
            msg.data.len(),
            msg.exclude_connection.as_deref(),
            true,
        );
        if len > roomcast_core::envelope::DEFAULT_MAX_ENVELOPE_BYTES {
            return Err(Error::Publish(PublishError::TooLarge {
                len,
                max: roomcast_core::envelope::DEFAULT_MAX_ENVELOPE_BYTES,
            }));
        }
        let Some(entry) = self.rooms.get(&room) else {
            return Ok(0);
        };
        let message = Arc::new(Message {
            room,
            message_type: msg.message_type,
            data: Bytes::copy_from_slice(&msg.data),
            exclude_connection: msg.exclude_connection.as_deref().map(Into::into),
            timestamp: msg.timestamp,
            origin: None,
        });
        for (conn, m) in &entry.members {
            if msg.exclude_connection.as_deref() != Some(conn.as_str()) {
                m.queue.push(message.clone());
            }
        }
        Ok(1)
    }

    fn presence(
        &mut self,
        ask: crate::handle::PresenceAsk,
        reply: Reply<roomcast_core::PresenceAnswer>,
        now: Instant,
    ) {
        use crate::handle::PresenceAsk;
        use roomcast_core::{Member, PresenceAnswer};
        let me = self.identity.instance;
        let hidden = |c: &ConnId| c.as_str().starts_with(OBSERVER_PREFIX);
        let Some(hub) = &mut self.hub else {
            // Standalone: this process is the whole cluster.
            let answer = match ask {
                PresenceAsk::Room(room) => PresenceAnswer::Room({
                    let mut m: Vec<Member> = self
                        .rooms
                        .get(room.as_str())
                        .map(|r| {
                            r.members
                                .keys()
                                .filter(|c| !hidden(c))
                                .map(|c| Member {
                                    instance: me,
                                    conn: c.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    m.sort();
                    m
                }),
                PresenceAsk::Connection(conn) => PresenceAnswer::Connection(
                    if self
                        .rooms
                        .values()
                        .any(|r| r.members.contains_key(conn.as_str()))
                    {
                        vec![me]
                    } else {
                        vec![]
                    },
                ),
                PresenceAsk::Instances => PresenceAnswer::Instances(vec![me]),
            };
            let _ = reply.send(Ok(answer));
            return;
        };
        let query = match ask {
            PresenceAsk::Room(room) => hub.presence_room(&room),
            PresenceAsk::Connection(conn) => {
                if !hub.rooms_of(&conn).is_empty() && !conn.starts_with(OBSERVER_PREFIX) {
                    // Present here: no round trip needed to say it exists.
                    let _ = reply.send(Ok(PresenceAnswer::Connection(vec![me])));
                    return;
                }
                hub.presence_connection(&conn)
            }
            PresenceAsk::Instances => Ok(roomcast_core::PresenceQuery::Instances),
        };
        match query.and_then(|q| hub.query_presence(q, now)) {
            Ok(id) => {
                self.queries.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Presence(e)));
            }
        }
    }

    fn query(&self, q: Query) -> QueryAnswer {
        let hidden = |c: &ConnId| c.as_str().starts_with(OBSERVER_PREFIX);
        match q {
            Query::LocalConnections(room) => QueryAnswer::Connections(match &self.hub {
                Some(hub) => hub
                    .members(&room)
                    .iter()
                    .filter(|c| !hidden(c))
                    .cloned()
                    .collect(),
                None => self
                    .rooms
                    .get(room.as_str())
                    .map(|r| r.members.keys().filter(|c| !hidden(c)).cloned().collect())
                    .unwrap_or_default(),
            }),
            Query::RoomState(room) => QueryAnswer::State(match &self.hub {
                Some(hub) => hub.room_state(&room),
                None => self.rooms.get(room.as_str()).map(|_| RoomState::Live),
            }),
            Query::Metrics => QueryAnswer::Metrics(Box::new(match &self.hub {
                Some(hub) => {
                    let mut m = hub.metrics();
                    m.adapter_output = self
                        .links
                        .iter()
                        .map(|l| match l {
                            LinkIo::Open { wq_bytes, .. } => *wq_bytes,
                            _ => 0,
                        })
                        .sum::<usize>();
                    m
                }
                None => {
                    let mut m = roomcast_core::Metrics::default();
                    m.rooms = self.rooms.len();
                    m.rooms_live = self.rooms.len();
                    m.members = self.rooms.values().map(|r| r.members.len()).sum();
                    m
                }
            })),
        }
    }

    fn start_health(&mut self, timeout: Duration, reply: Reply<HealthReport>, now: Instant) {
        let Some(hub) = &mut self.hub else {
            let _ = reply.send(Ok(HealthReport {
                link_rtts: Vec::new(),
                rooms: self.rooms.len(),
                rooms_live: self.rooms.len(),
            }));
            return;
        };
        let health = hub.health();
        let down: Vec<String> = health
            .links
            .iter()
            .filter(|l| l.state != roomcast_core::LinkState::Ready)
            .map(|l| match &l.last_error {
                Some(e) => format!("{} ({:?}) is down: {e}", l.link, l.role),
                None => format!("{} ({:?}) is not connected yet", l.link, l.role),
            })
            .collect();
        if !down.is_empty() {
            let _ = reply.send(Err(Error::Unhealthy(down.join("; "))));
            return;
        }
        hub.ping(now);
        self.health.push(HealthWaiter {
            started: now,
            deadline: now + timeout,
            pending: health.links.iter().map(|l| l.link).collect(),
            rtts: Vec::new(),
            reply,
        });
    }

    fn check_health(&mut self, now: Instant) {
        // Called after every batch of events: with no check waiting it must cost nothing
        // (`Hub::metrics` counts the live rooms one by one, `Hub::health` allocates).
        if self.health.is_empty() {
            return;
        }
        let Some(hub) = &self.hub else { return };
        let probe_ok = hub.health().last_probe_ok;
        let metrics = hub.metrics();
        let mut i = 0;
        while i < self.health.len() {
            let w = &self.health[i];
            let verified = probe_ok.is_some_and(|t| t >= w.started);
            if w.pending.is_empty() && verified {
                let w = self.health.swap_remove(i);
                let _ = w.reply.send(Ok(HealthReport {
                    link_rtts: w.rtts,
                    rooms: metrics.rooms,
                    rooms_live: metrics.rooms_live,
                }));
            } else if now >= w.deadline {
                let w = self.health.swap_remove(i);
                let why = if !w.pending.is_empty() {
                    format!(
                        "no PONG within the timeout from {}",
                        w.pending
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    "the subscriber did not receive its probe through Redis within the timeout"
                        .to_string()
                };
                let _ = w.reply.send(Err(Error::Unhealthy(why)));
            } else {
                i += 1;
            }
        }
    }

    fn begin_shutdown(&mut self, timeout: Duration, reply: Option<Reply<()>>) {
        let now = self.now();
        let s = self.shutdown.get_or_insert_with(|| ShutdownState {
            deadline: now + timeout,
            replies: Vec::new(),
        });
        if let Some(r) = reply {
            s.replies.push(r);
        }
        for (_, entry) in self.rooms.drain() {
            entry.live.set(false);
            for (_, m) in entry.members {
                m.queue.close();
            }
        }
        for (_, a) in self.conns.drain() {
            a.queue.close();
        }
        for w in self.live_waiters.drain(..) {
            let _ = w
                .reply
                .send(Err(Error::Member(roomcast_core::MemberError::Shutdown)));
        }
        if let Some(hub) = &mut self.hub {
            hub.begin_shutdown(now);
        }
    }

    fn check_shutdown(&mut self) {
        let Some(deadline) = self.shutdown.as_ref().map(|s| s.deadline) else {
            return;
        };
        let now = self.now();
        let drained = self.hub.as_ref().is_none_or(Hub::is_drained);
        if !(drained || now >= deadline) {
            return;
        }
        if let Some(hub) = &mut self.hub {
            hub.close(now);
        }
        self.drain();
        // Give queued bytes (the last UNSUBSCRIBEs) no further wait: links close now.
        for l in &mut self.links {
            *l = LinkIo::Idle;
        }
        for (_, r) in self.publishes.drain() {
            let _ = r.send(Err(Error::Publish(PublishError::Shutdown)));
        }
        for (_, r) in self.queries.drain() {
            let _ = r.send(Err(Error::Closed));
        }
        for q in self.event_subs.drain(..) {
            q.close();
        }
        if let Some(s) = self.shutdown.take() {
            for r in s.replies {
                let _ = r.send(Ok(()));
            }
        }
        self.done = true;
    }

    fn poll_link(&mut self, i: usize, cx: &mut Context<'_>) -> bool {
        let link = LinkId(i as u16);
        match &mut self.links[i] {
            LinkIo::Idle => false,
            LinkIo::Connecting(fut) => match fut.as_mut().poll(cx) {
                Poll::Pending => false,
                Poll::Ready(result) => {
                    let now = self.now();
                    match result {
                        Ok(io) => {
                            self.links[i] = LinkIo::Open {
                                io,
                                rbuf: BytesMut::with_capacity(READ_CHUNK),
                                wq: VecDeque::new(),
                                wq_bytes: 0,
                            };
                            if let Some(hub) = &mut self.hub {
                                hub.handle_connected(link, now);
                            }
                        }
                        Err(e) => {
                            self.links[i] = LinkIo::Idle;
                            if let Some(hub) = &mut self.hub {
                                hub.handle_disconnected(link, &e.to_string(), now);
                            }
                        }
                    }
                    true
                }
            },
            LinkIo::Open { .. } => {
                let mut progress = false;
                for _ in 0..READ_BUDGET {
                    let now = self.now();
                    let LinkIo::Open { io, rbuf, .. } = &mut self.links[i] else {
                        break;
                    };
                    match Pin::new(io).poll_read(cx, &mut self.scratch) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(0)) => {
                            self.closed_by_peer(i, "connection closed by the server".into());
                            return true;
                        }
                        Poll::Ready(Ok(n)) => {
                            rbuf.extend_from_slice(&self.scratch[..n]);
                            if let Some(hub) = &mut self.hub {
                                hub.handle_input(link, rbuf, now);
                            }
                            progress = true;
                            // Events and link requests (a Close) are handled before reading on.
                            self.drain();
                        }
                        Poll::Ready(Err(e)) => {
                            self.closed_by_peer(i, e.to_string());
                            return true;
                        }
                    }
                }
                progress
            }
        }
    }

    fn closed_by_peer(&mut self, i: usize, cause: String) {
        self.links[i] = LinkIo::Idle;
        let now = self.now();
        if let Some(hub) = &mut self.hub {
            hub.handle_disconnected(LinkId(i as u16), &cause, now);
        }
    }

    fn poll_write(&mut self, i: usize, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let link = LinkId(i as u16);
        loop {
            let LinkIo::Open {
                io, wq, wq_bytes, ..
            } = &mut self.links[i]
            else {
                return progress;
            };
            let Some(front) = wq.front_mut() else {
                if progress {
                    let _ = Pin::new(io).poll_flush(cx);
                }
                return progress;
            };
            match Pin::new(&mut *io).poll_write(cx, front) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(0)) => {
                    self.closed_by_peer(i, "connection closed while writing".into());
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    let n = n.min(front.len());
                    if n == front.len() {
                        wq.pop_front();
                    } else {
                        let _ = front.split_to(n);
                    }
                    *wq_bytes -= n;
                    let now = self.now();
                    if let Some(hub) = &mut self.hub {
                        hub.handle_written(link, n, now);
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.closed_by_peer(i, e.to_string());
                    return true;
                }
            }
        }
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let mut deadline = self.hub.as_ref().and_then(Hub::poll_timeout);
        for w in &self.health {
            deadline = Some(deadline.map_or(w.deadline, |d| d.min(w.deadline)));
        }
        if let Some(s) = &self.shutdown {
            deadline = Some(deadline.map_or(s.deadline, |d| d.min(s.deadline)));
        }
        let Some(deadline) = deadline else {
            self.timer = None;
            return false;
        };
        match &self.timer {
            Some((at, _)) if *at == deadline => {}
            _ => self.timer = Some((deadline, self.rt.sleep_until(deadline))),
        }
        let Some((_, fut)) = &mut self.timer else {
            return false;
        };
        if fut.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.timer = None;
        let now = self.rt.now().max(deadline);
        if let Some(hub) = &mut self.hub {
            hub.handle_timeout(now);
        }
        self.check_health(now);
        true
    }

    /// Takes everything the core has to say.
    fn drain(&mut self) -> bool {
        let Some(hub) = &mut self.hub else {
            return false;
        };
        let mut progress = false;
        while let Some(req) = hub.poll_link_request() {
            progress = true;
            match req {
                LinkRequest::Open {
                    link,
                    host,
                    port,
                    tls,
                } => {
                    debug!(%link, %host, port, tls, "opening link");
                    let connect = self.rt.connect(host.clone(), port);
                    let fut: BoxFuture<io::Result<BoxedIo>> = if tls {
                        tls_connect(&self.options, host, connect)
                    } else {
                        connect
                    };
                    self.links[link.0 as usize] = LinkIo::Connecting(fut);
                }
                LinkRequest::Close { link } => {
                    debug!(%link, "closing link");
                    self.links[link.0 as usize] = LinkIo::Idle;
                }
            }
        }
        // Each link's output, only while its write queue is short: the rest waits in the core
        // (see the core's docs on backpressure).
        for (i, l) in self.links.iter_mut().enumerate() {
            let LinkIo::Open { wq, wq_bytes, .. } = l else {
                continue;
            };
            while *wq_bytes < self.write_queue_bytes {
                let Some(bytes) = hub.poll_transmit_link(LinkId(i as u16)) else {
                    break;
                };
                progress = true;
                *wq_bytes += bytes.len();
                wq.push_back(bytes);
            }
        }
        let mut any = false;
        let mut live_changed = false;
        while let Some(ev) = self.hub.as_mut().and_then(Hub::poll_event) {
            any = true;
            live_changed |= matches!(ev, Event::RoomLive { .. });
            self.dispatch(ev);
        }
        if any {
            progress = true;
            let now = self.now();
            self.check_health(now);
            if live_changed {
                self.check_live_waiters();
            }
        }
        progress
    }

    fn dispatch(&mut self, ev: Event) {
        match ev {
            Event::Delivery(d) => {
                let (message, recipients) = d.into_shared();
                let entry = if self.rooms.is_empty() {
                    None
                } else {
                    self.rooms.get(&message.room)
                };
                let mut closed = Vec::new();
                let mut detached = Vec::new();
                for conn in recipients.iter() {
                    if let Some(a) = self.conns.get(conn) {
                        if !a.queue.push(message.clone()) {
                            detached.push((conn.clone(), a.token));
                        }
                    } else if let Some(m) = entry.and_then(|e| e.members.get(conn)) {
                        if !m.queue.push(message.clone()) {
                            closed.push((conn.clone(), m.token));
                        }
                    }
                }
                // A membership whose stream ended (overflow under `Overflow::Close`, or a
                // consumer that is gone) leaves the room; such a connection leaves all.
                for (conn, token) in closed {
                    let room = message.room.as_str();
                    if let Err(e) = self.leave(room, conn.as_str(), Some(token)) {
                        warn!(%e, room, "leaving after overflow failed");
                    }
                }
                for (conn, token) in detached {
                    self.detach(&conn, token);
                }
                return;
            }
            Event::PublishConfirmed { id, receivers } => {
                // Fire-and-forget publishes (the Publisher) wait for no reply.
                if self.publishes.is_empty() {
                    return;
                }
                if let Some(r) = self.publishes.remove(&id) {
                    let _ = r.send(Ok(receivers));
                }
                return;
            }
            Event::PublishFailed { id, ref error } => {
                if let Some(r) = self.publishes.remove(&id) {
                    let _ = r.send(Err(Error::Publish(error.clone())));
                    return;
                }
                warn!(%error, "publish failed");
            }
            Event::RoomLive { ref room } => {
                debug!(%room, "room live");
                if let Some(e) = self.rooms.get(room) {
                    e.live.set(true);
                }
            }
            Event::RoomNotLive { ref room, reason } => {
                debug!(%room, ?reason, "room not live");
                if let Some(e) = self.rooms.get(room) {
                    e.live.set(false);
                }
            }
            Event::LinkUp {
                link,
                role,
                outage,
                ref missed_rooms,
            } => {
                info!(%link, ?role, ?outage, missed_rooms = missed_rooms.len(), "link up");
                if self.all_ready() {
                    for r in self.ready_waiters.drain(..) {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            Event::LinkDown {
                link,
                role,
                ref cause,
            } => {
                warn!(%link, ?role, %cause, "link down");
                for r in self.ready_waiters.drain(..) {
                    let _ = r.send(Err(Error::Connect(cause.clone())));
                }
                for w in &mut self.health {
                    if w.pending.contains(&link) {
                        w.deadline = w.started;
                    }
                }
            }
            Event::Presence { id, ref result, .. } => {
                if let Some(r) = self.queries.remove(&id) {
                    let _ = r.send(result.clone().map_err(Error::Presence));
                }
                return;
            }
            Event::PresenceReady => {
                info!("presence registered");
                if self.all_ready() {
                    for r in self.ready_waiters.drain(..) {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            // Health waiters are checked after every drain that had events; event streams
            // get the probe's round trip (`roomcast serve` keeps a histogram of it).
            Event::SubscriberVerified { .. } => {}
            Event::Pong { link, rtt } => {
                for w in &mut self.health {
                    if let Some(p) = w.pending.iter().position(|l| *l == link) {
                        w.pending.swap_remove(p);
                        w.rtts.push((link, rtt));
                    }
                }
                return;
            }
            Event::Gap {
                ref room,
                origin,
                ref missing,
                ..
            } => warn!(%room, %origin, ?missing, "gap: messages missed"),
            Event::Dropped {
                ref cause,
                ref room,
            } => {
                warn!(
                    ?cause,
                    room = room.as_ref().map(|r| r.as_str()),
                    "message dropped"
                )
            }
            _ => {}
        }
        self.event_subs.retain(|q| q.push(ev.clone()));
    }
}

#[cfg(feature = "tls")]
fn tls_connect(
    options: &Options,
    host: String,
    connect: BoxFuture<io::Result<BoxedIo>>,
) -> BoxFuture<io::Result<BoxedIo>> {
    let config = options
        .tls
        .clone()
        .unwrap_or_else(crate::tls::default_client_config);
    Box::pin(async move { crate::tls::wrap(config, host, connect.await?).await })
}

#[cfg(not(feature = "tls"))]
fn tls_connect(
    _: &Options,
    _: String,
    _: BoxFuture<io::Result<BoxedIo>>,
) -> BoxFuture<io::Result<BoxedIo>> {
    Box::pin(async {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "rediss:// needs TLS: build roomcast with the `tls` feature",
        ))
    })
}

impl Drop for Driver {
    /// Publishers waiting at the gate wake up and find the driver gone.
    fn drop(&mut self) {
        self.state.gate.close();
    }
}

/// The core's view of a message to publish.
fn as_publish(msg: &PubSubMessage) -> Publish<'_> {
    Publish {
        room: &msg.room_id,
        message_type: msg.message_type,
        data: &msg.data,
        exclude_connection: msg.exclude_connection.as_deref(),
        timestamp: msg.timestamp,
    }
}
