//! The driver: one future that moves bytes, timers and link openings between the sockets and
//! the core, and fans deliveries out to memberships. It never interprets Redis replies.

mod commands;
mod health;
mod link;
mod members;

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
use roomcast_core::{BlockPool, ConnId, ConnSlot, Event, Hub, LinkId, Message, PublishId, RoomId};

use crate::error::Error;
use crate::handle::{Command, HealthReport, Liveness, PubSubMessage, PublishGate, Reply};
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
        return Err(Error::ReservedConnection {
            conn: conn.to_string(),
        });
    }
    Ok(())
}

/// The smallest block a link reads into; a new one starts when less than a quarter of it is
/// left (see [`State::read_room`]).
const READ_CHUNK: usize = 64 << 10;
/// Read blocks a link keeps a handle on for reuse (see `roomcast_core::BlockPool`): blocks
/// still held by messages not yet consumed cost nothing more; a free one is taken again.
const READ_BLOCKS_KEPT: usize = 8;
/// The adapter pulls a link's output from the core only while that link's socket write
/// queue holds less than this (or less than `max_output_bytes`, if smaller): the rest waits
/// in the core, where it counts against the same `max_output_bytes`.
const WRITE_QUEUE_BYTES: usize = 256 << 10;
/// Chunks of a link's write queue handed to one vectored write.
const WRITE_SLICES: usize = 16;
/// Reads per link per poll before yielding to the others.
const READ_BUDGET: usize = 16;

enum LinkIo {
    Idle,
    Connecting(BoxFuture<io::Result<BoxedIo>>),
    Open {
        io: BoxedIo,
        /// The block being read into: the partial frame the last read left, then room.
        rbuf: BytesMut,
        /// The blocks `rbuf` was, for reuse once the messages read into them are dropped.
        blocks: BlockPool,
        wq: VecDeque<Bytes>,
        /// Bytes in `wq`.
        wq_bytes: usize,
    },
}

/// One local member of one room, the only thing deliveries look up: a `Membership` (a queue
/// of its own) or one room of a `Connection` (`shared`: the connection's queue, which its
/// rooms share). A `Connection` is memberships with one queue; a `Membership` is a connection
/// with one room.
#[derive(Clone)]
struct Member {
    queue: Arc<Queue<Arc<Message>>>,
    token: u64,
    /// The queue is an attached connection's: leaving this room does not close it, and when
    /// it overflows the whole connection goes.
    shared: bool,
    /// The connection's slot in the hub (none standalone), to clear its [`SlotEntry`].
    slot: Option<ConnSlot>,
}

/// What dispatch finds at a connection's slot index ([`ConnSlot::index`]): the occupant's
/// generation, checked against the delivery's slot, and where its messages go.
struct SlotEntry {
    generation: u32,
    target: SlotTarget,
}

/// Where a slot's messages go. A slot is a connection, not a membership: an attached
/// `Connection` has one queue for all its rooms, while an id joined with `Roomcast::join` has
/// a `Membership` (its own queue) per room, so those are found by the message's room.
enum SlotTarget {
    Connection(Member),
    /// Usually one room.
    Memberships(Vec<(RoomId, Member)>),
}

/// A connection attached with `Roomcast::connection`: the registration of its one queue.
/// Its rooms are the hub's (`Hub::rooms_of`); deliveries find its queue through its slot
/// (`State::slots`), so it needs no entry per room here (a `RoomEntry` is for `Membership`
/// and `RoomStream` queues, one per room).
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
    hub: Hub,
    options: Options,
    cmds: mpsc::Receiver<Command>,
    ctl_rx: mpsc::UnboundedReceiver<Command>,
    ctl_tx: mpsc::UnboundedSender<Command>,
    links: Vec<LinkIo>,
    timer: Option<(Instant, BoxFuture<()>)>,
    rooms: HashMap<RoomId, RoomEntry>,
    /// Dispatch's index, by [`ConnSlot::index`] (with a hub): a delivery's recipients are
    /// found here without a lookup by id. Entries are cleared when their members leave;
    /// a stale one (generation moved on) is skipped.
    slots: Vec<Option<SlotEntry>>,
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
    /// A source this round could not leave waiting on its waker: a budget ran out, or a link
    /// was opened, connected or lost after its stage had run. The driver goes round again.
    again: bool,
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
        hub: Hub,
        options: Options,
        cmds: mpsc::Receiver<Command>,
        identity: roomcast_core::Identity,
        gate: Arc<PublishGate>,
    ) -> Driver {
        let (ctl_tx, ctl_rx) = mpsc::unbounded();
        // One slot per link the hub has (a standalone hub has none).
        let n = hub.health().links.len();
        let write_queue_bytes = WRITE_QUEUE_BYTES.min(hub.config().max_output_bytes);
        // Every log line of this instance carries its id; payloads and passwords never appear.
        let span = tracing::info_span!(
            "roomcast",
            instance = %identity.instance,
            standalone = hub.is_standalone()
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
                slots: Vec::new(),
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
                again: false,
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
            s.again = false;
            // Each stage polls its sources until they are pending (their wakers registered)
            // and hands on what it produced to the stages after it: commands and input to
            // the core, the core's output to the write queues, the queues to the sockets.
            // The core is drained after every read and after whatever else fed it.
            let commands = s.poll_commands(cx);
            for i in 0..s.links.len() {
                s.poll_link(i, cx);
            }
            if commands || s.again {
                s.drain();
            }
            let mut wrote = false;
            for i in 0..s.links.len() {
                wrote |= s.poll_write(i, cx);
            }
            // What the last stages do can feed the earlier ones (a parked publish's or a
            // timer's output to write, room in a write queue for more of the core's output,
            // a delivery that made the core unsubscribe): then the round is run again.
            // Otherwise every source is waiting on a waker, and a second round would only
            // find that out again (in a profile, half the driver's work per wake-up).
            let mut late = s.flush_parked() | s.poll_timer(cx);
            if late || wrote {
                late |= s.drain();
            }
            s.check_shutdown();
            if s.done {
                return Poll::Ready(());
            }
            if !(late || s.again) {
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
                _ => return progress,
            }
        }
        // The budget ran out before the channel said it was empty.
        self.again = true;
        progress
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = self.poll_control(cx);
        if self.handles_gone {
            return progress;
        }
        for _ in 0..1024 {
            match Pin::new(&mut self.cmds).poll_next(cx) {
                Poll::Ready(Some(c)) => {
                    // A drop sent before this command was is in the control channel now.
                    self.poll_control(cx);
                    self.command(c);
                    progress = true;
                }
                Poll::Ready(None) => {
                    // Every handle is gone: shut down on our own.
                    self.handles_gone = true;
                    self.begin_shutdown(Duration::from_secs(2), None);
                    return true;
                }
                Poll::Pending => return progress,
            }
        }
        // The budget ran out before the channel said it was empty.
        self.again = true;
        progress
    }
}

impl Drop for Driver {
    /// Publishers waiting at the gate wake up and find the driver gone.
    fn drop(&mut self) {
        self.state.gate.close();
    }
}
