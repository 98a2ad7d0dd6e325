//! Members: memberships (one room), connections (many rooms), their room streams and the
//! liveness they wait on.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_channel::mpsc;
use futures_core::Stream;
use roomcast_core::{ConnId, Event, Message, RoomId};

use crate::error::Error;
use crate::queue::Queue;

use super::{call_ctl, Command};

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

/// One local connection attached with [`Roomcast::connection`](crate::Roomcast::connection): a `Stream` of the messages
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
