//! One Redis connection: its state, handshake, request FIFO, timers and backoff.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::blocks::BlockPool;
use crate::config::{Config, Protocol};
use crate::event::{LinkError, LinkId, LinkRole, LinkStep, PublishId};
use crate::naming::RoomId;
use crate::resp::{encode_command, FrameLimits, Reader, Value};

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting to reconnect until the instant given (seeded jitter).
    Backoff {
        /// When the next attempt starts.
        until: Instant,
    },
    /// The adapter was asked to open it.
    Connecting {
        /// When the request was made.
        since: Instant,
    },
    /// Connected; handshake replies outstanding.
    Handshaking {
        /// When the connection was reported.
        since: Instant,
    },
    /// Ready for traffic.
    Ready,
    /// Closed for good (shutdown).
    Closed,
}

/// A publish waiting for its link: refused nothing, not yet written (or to be written again).
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub id: PublishId,
    pub bytes: Queued,
}

impl Outgoing {
    /// The bytes it holds while queued (counted against `max_queued_bytes`).
    pub(crate) fn len(&self) -> usize {
        match &self.bytes {
            Queued::Body { body, .. } => body.len(),
            Queued::Frame(frame) => frame.len(),
        }
    }
}

/// The bytes a queued publish is written from.
#[derive(Debug)]
pub(crate) enum Queued {
    /// Never written (its link was down or full when it was published): the envelope body
    /// without trailer, numbered and framed when it is written.
    Body { room: RoomId, body: Bytes },
    /// Written before its link failed and not confirmed: its PUBLISH frame, written again as
    /// it was (same channel, same trailer, so the same (epoch, seq)).
    Frame(Bytes),
}

/// A publish written to its link, awaiting Redis's count.
#[derive(Debug)]
pub(crate) struct Written {
    pub id: PublishId,
    pub frame: Frame,
    /// Cluster mode: a copy went to the slot's new owner after a `-MOVED`; this one's answer
    /// only frees its place in the pipeline.
    pub moved: bool,
}

/// Where a written publish's PUBLISH frame is, kept for a resend after a broken link.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Not handed out yet: its place in [`Link::out`].
    Unsent { start: usize, end: usize },
    /// Handed out: a slice of the bytes transmitted (see [`Link::take_output`]).
    Sent(Bytes),
}

/// A request whose reply is expected, in the order written.
#[derive(Debug)]
pub(crate) enum Request {
    /// A handshake command; what it was decides how an error is reported.
    Handshake(Step),
    /// A PING, from keepalive (`user == false`) or from `Hub::ping`.
    Ping { user: bool },
    /// A publish.
    Publish(Written),
    /// A liveness probe published to the control channel.
    Probe { token: u64 },
    /// A SUBSCRIBE or UNSUBSCRIBE awaiting this many confirmations.
    Subscription { remaining: usize },
    /// A presence command.
    Presence(PresenceReq),
    /// Cluster mode: an `SSUBSCRIBE` of one slot's channels on a shard subscriber link,
    /// awaiting `remaining` confirmations. An error answers it as a whole (`-MOVED`,
    /// `-CLUSTERDOWN`): its rooms (and the control channel, if `control`) are not subscribed.
    SlotSubscribe {
        remaining: usize,
        rooms: Vec<RoomId>,
        control: bool,
    },
    /// Cluster mode: a `SUNSUBSCRIBE` of one slot's rooms and the `PING` written after it.
    /// `sunsubscribe` pushes count toward nothing (the server also sends them unasked, when a
    /// slot moves away); an error before the `pong` answers the SUNSUBSCRIBE (`answered`),
    /// and the `pong` ends the batch: its rooms are left, whatever was heard.
    Fence { rooms: Vec<RoomId>, answered: bool },
    /// Cluster mode: `CLUSTER SHARDS` on the topology link.
    Topology,
}

/// Presence commands, by what their reply means.
#[derive(Debug)]
pub(crate) enum PresenceReq {
    /// A write; `register` ones count toward (re-)registration `gen`.
    Write { gen: u64, register: bool },
    /// PEXPIRE of the lease: 0 means the lease was lost.
    Heartbeat,
    /// SCRIPT LOAD; the reply is the script's SHA.
    Load(crate::presence::Script),
    /// A query and whether it was already retried after NOSCRIPT.
    Query {
        id: crate::presence::QueryId,
        query: crate::presence::PresenceQuery,
        retried: bool,
    },
    /// The instances sweep.
    Sweep,
}

/// Handshake commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `HELLO 3` (RESP3): switches protocol, logs in, and says the server's mode.
    Hello,
    /// `HELLO 2` after `AUTH` (RESP2): asked only for the server's mode and version.
    Mode,
    Auth,
    Select,
    SetName,
}

/// A link's timers. At most one is armed at a time ([`Link::timer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkTimer {
    /// Backoff is over: open the connection again.
    Reconnect,
    /// Opening and handshake took `connect_timeout`: the link failed.
    Connect,
    /// The oldest request went `reply_timeout` without its reply: the link failed.
    Reply,
    /// Nothing was read for `keepalive_interval` and nothing is outstanding: send a PING.
    Keepalive,
}

/// How many retired output blocks a link keeps a handle on (see [`Link::reserve_output`]).
/// A handle on a block still in flight costs nothing (its frames hold it anyway); beyond
/// this many, the oldest handle is let go and its block freed as before. 64 blocks of
/// 64 KiB cover 4 MiB of publishes in flight.
const MAX_RETIRED_BLOCKS: usize = 64;

#[derive(Debug)]
pub(crate) struct Link {
    pub id: LinkId,
    pub role: LinkRole,
    pub state: LinkState,
    /// Bytes written and not yet handed out by [`Link::take_output`].
    pub out: BytesMut,
    /// Output sealed when `out` had no room left (see [`Link::seal_output`]), to be handed
    /// out before `out`, and its length.
    pub(crate) sealed: VecDeque<Bytes>,
    sealed_len: usize,
    /// Output blocks `out` has written into: a block whose frames are all confirmed and
    /// whose chunks are written becomes the next block (see [`Link::reserve_output`])
    /// instead of going back to the allocator.
    blocks: BlockPool,
    /// How many publishes in `fifo` are [`Frame::Unsent`] (those written since the last
    /// [`Link::take_output`]); 0 spares `take_output` a look at the FIFO.
    pub unsent_frames: usize,
    pub reader: Reader,
    pub fifo: VecDeque<(Instant, Request)>,
    pub last_input: Instant,
    pub down_since: Option<Instant>,
    pub ever_up: bool,
    pub attempts: u32,
    pub last_error: Option<LinkError>,
    /// Publishes waiting for this link (already-sequenced re-sends first).
    pub queue: VecDeque<Outgoing>,
    pub inflight_publishes: usize,
    /// Bytes of the PUBLISH frames of `inflight_publishes`: kept for a resend until
    /// answered (bounded by `max_inflight_bytes` plus one frame).
    pub inflight_bytes: usize,
    pub last_pong: Option<Instant>,
    /// Bytes of a partial frame the adapter holds for this link, as of the last input.
    pub held_input: usize,
    /// Bytes handed out by `Hub::poll_transmit_link` that the adapter has not reported
    /// written yet (its write queue for this link).
    pub unwritten: usize,
}

impl Link {
    pub(crate) fn new(id: LinkId, role: LinkRole, config: &Config, now: Instant) -> Self {
        Link {
            id,
            role,
            state: LinkState::Backoff { until: now },
            out: BytesMut::new(),
            sealed: VecDeque::new(),
            sealed_len: 0,
            blocks: BlockPool::new(MAX_RETIRED_BLOCKS),
            unsent_frames: 0,
            reader: Reader::new(config.server.protocol, frame_limits(config)),
            fifo: VecDeque::new(),
            last_input: now,
            down_since: Some(now),
            ever_up: false,
            attempts: 0,
            last_error: None,
            queue: VecDeque::new(),
            inflight_publishes: 0,
            inflight_bytes: 0,
            last_pong: None,
            held_input: 0,
            unwritten: 0,
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state == LinkState::Ready
    }

    /// Writes the handshake and records its requests.
    pub(crate) fn start_handshake(&mut self, config: &Config, now: Instant) {
        let s = &config.server;
        let name = format!("{}-{}", config.client_name, self.id.0);
        self.clear_output();
        self.fifo.clear();
        self.unsent_frames = 0;
        self.reader = Reader::new(s.protocol, frame_limits(config));
        self.held_input = 0;
        match s.protocol {
            Protocol::Resp3 => {
                let mut args: Vec<&[u8]> = vec![b"HELLO", b"3"];
                if let Some(p) = &s.password {
                    args.push(b"AUTH");
                    args.push(s.username.as_deref().unwrap_or("default").as_bytes());
                    args.push(p.expose().as_bytes());
                }
                args.push(b"SETNAME");
                args.push(name.as_bytes());
                encode_command(&mut self.out, &args);
                self.fifo.push_back((now, Request::Handshake(Step::Hello)));
            }
            Protocol::Resp2 => {
                if let Some(p) = &s.password {
                    match &s.username {
                        Some(u) => encode_command(
                            &mut self.out,
                            &[b"AUTH", u.as_bytes(), p.expose().as_bytes()],
                        ),
                        None => encode_command(&mut self.out, &[b"AUTH", p.expose().as_bytes()]),
                    }
                    self.fifo.push_back((now, Request::Handshake(Step::Auth)));
                }
                // The server's mode, to refuse a cluster node reached with a single-server URL
                // (`HELLO 2` keeps RESP2 and works from Redis 6.0; older servers refuse it,
                // which is accepted).
                encode_command(&mut self.out, &[b"HELLO", b"2"]);
                self.fifo.push_back((now, Request::Handshake(Step::Mode)));
            }
        }
        if s.db != 0 {
            encode_command(&mut self.out, &[b"SELECT", s.db.to_string().as_bytes()]);
            self.fifo.push_back((now, Request::Handshake(Step::Select)));
        }
        if s.protocol == Protocol::Resp2 {
            encode_command(&mut self.out, &[b"CLIENT", b"SETNAME", name.as_bytes()]);
            self.fifo
                .push_back((now, Request::Handshake(Step::SetName)));
        }
        self.state = LinkState::Handshaking { since: now };
        self.last_input = now;
    }

    /// Bytes written and not handed out yet.
    pub(crate) fn buffered(&self) -> usize {
        self.out.len() + self.sealed_len
    }

    /// Bytes held for this link on their way to Redis: in the hub and in the adapter's write
    /// queue (bounded by `max_output_bytes` plus one frame).
    #[inline]
    pub(crate) fn held_output(&self) -> usize {
        self.buffered() + self.unwritten
    }

    /// Drops everything not handed out yet (the link is gone or starts over; the adapter
    /// drops its write queue with the connection).
    pub(crate) fn clear_output(&mut self) {
        self.out.clear();
        self.sealed.clear();
        self.sealed_len = 0;
        self.unwritten = 0;
    }

    /// Makes room for `len` more bytes in `out`. When the block is full, what it holds is
    /// sealed as a chunk of its own (its frames get their slices, as when handed out) and a
    /// new block of at least `block` bytes starts: growing `out` instead would copy
    /// everything written since the last hand-out into the new allocation.
    ///
    /// The new block is a retired one when nothing refers to it any more (its publishes
    /// confirmed, its chunks written; see [`BlockPool`]): a pipeline that keeps publishes in flight
    /// cycles through the same few allocations instead of faulting in fresh pages and
    /// returning them to the allocator block after block.
    pub(crate) fn reserve_output(&mut self, len: usize, block: usize) {
        if self.out.capacity() - self.out.len() >= len {
            return;
        }
        if !self.out.is_empty() {
            let chunk = self.take_output();
            self.sealed_len += chunk.len();
            self.sealed.push_back(chunk);
        }
        self.out = self.blocks.next_block(len.max(block));
    }

    /// Nothing is in flight: what a burst of publishes allocated goes back to the allocator
    /// but for one spare block (and the one `out` writes into).
    fn trim_retired(&mut self) {
        self.blocks.trim();
    }

    /// The next bytes to transmit: sealed chunks first, then what `out` holds.
    pub(crate) fn next_output(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.sealed.pop_front() {
            self.sealed_len -= chunk.len();
            return Some(chunk);
        }
        (!self.out.is_empty()).then(|| self.take_output())
    }

    /// Files a publish whose PUBLISH frame was just written to `out` from `start` on.
    pub(crate) fn push_written(&mut self, id: PublishId, start: usize, now: Instant) {
        let frame = Frame::Unsent {
            start,
            end: self.out.len(),
        };
        self.inflight_publishes += 1;
        self.inflight_bytes += self.out.len() - start;
        self.unsent_frames += 1;
        self.fifo.push_back((
            now,
            Request::Publish(Written {
                id,
                frame,
                moved: false,
            }),
        ));
    }

    /// Redis answered a publish written on this link: it is no longer in flight.
    #[inline]
    pub(crate) fn publish_answered(&mut self, w: &Written) {
        self.inflight_publishes -= 1;
        let len = match &w.frame {
            Frame::Unsent { start, end } => end - start,
            Frame::Sent(frame) => frame.len(),
        };
        self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
        if self.inflight_publishes == 0 {
            self.trim_retired();
        }
    }

    /// Nothing is in flight any more (the link failed or closed).
    pub(crate) fn forget_inflight(&mut self) {
        self.inflight_publishes = 0;
        self.inflight_bytes = 0;
        self.trim_retired();
    }

    /// Hands out everything written since the last call as one chunk, and gives each publish
    /// written since then its frame as a slice of that chunk (a reference count, no copy): the
    /// frame sent is the one kept for a resend.
    ///
    /// Memory: a slice keeps the allocation under its chunk alive until its publish is
    /// confirmed or failed. Replies come in order, so the allocations held are the one with
    /// the oldest unconfirmed publish and those after it: beyond the unconfirmed frames
    /// themselves (at most `max_inflight_publishes`, and `max_inflight_bytes` plus one frame
    /// in all), about one output block or chunk (a chunk is what `out` held, below
    /// `max_output_bytes` plus one frame), and one spare block kept for reuse (see
    /// [`Link::reserve_output`]). That is what the private copies of each body this
    /// replaced held, plus two buffers.
    pub(crate) fn take_output(&mut self) -> Bytes {
        let chunk = self.out.split().freeze();
        let mut left = std::mem::take(&mut self.unsent_frames);
        // The unsent publishes are the last ones in the FIFO.
        for (_, req) in self.fifo.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let Request::Publish(w) = req else {
                continue;
            };
            let Frame::Unsent { start, end } = w.frame else {
                break;
            };
            left -= 1;
            // Always within the chunk (`out` is only ever appended to between two calls);
            // checked all the same rather than trusted with a panic.
            debug_assert!(start <= end && end <= chunk.len());
            if start <= end && end <= chunk.len() {
                w.frame = Frame::Sent(chunk.slice(start..end));
            }
        }
        chunk
    }

    /// Is any handshake reply still outstanding?
    pub(crate) fn handshake_pending(&self) -> bool {
        self.fifo
            .iter()
            .any(|(_, r)| matches!(r, Request::Handshake(_)))
    }

    /// The link's one armed timer, by name, and when it fires: its state decides which.
    /// The only place a link's deadlines are computed.
    pub(crate) fn timer(&self, config: &Config) -> Option<(LinkTimer, Instant)> {
        match self.state {
            LinkState::Backoff { until } => Some((LinkTimer::Reconnect, until)),
            LinkState::Connecting { since } | LinkState::Handshaking { since } => {
                Some((LinkTimer::Connect, since + config.connect_timeout))
            }
            LinkState::Ready => Some(match self.fifo.front() {
                Some((sent, _)) => (LinkTimer::Reply, *sent + config.reply_timeout),
                None => (
                    LinkTimer::Keepalive,
                    self.last_input + config.keepalive_interval,
                ),
            }),
            LinkState::Closed => None,
        }
    }
}

pub(crate) fn frame_limits(config: &Config) -> FrameLimits {
    FrameLimits {
        max_frame_bytes: config.max_frame_bytes,
        max_depth: config.max_frame_depth,
        max_elements: config.max_frame_elements,
    }
}

impl Step {
    /// The step as the application sees it.
    pub(crate) fn public(self) -> LinkStep {
        match self {
            // `HELLO 2`, asked for the server's mode, is a HELLO too.
            Step::Hello | Step::Mode => LinkStep::Hello,
            Step::Auth => LinkStep::Auth,
            Step::Select => LinkStep::Select,
            Step::SetName => LinkStep::SetName,
        }
    }
}

impl Request {
    /// What the application is told the link was doing when this request failed.
    pub(crate) fn step(&self) -> LinkStep {
        match self {
            Request::Handshake(step) => step.public(),
            Request::Ping { .. } => LinkStep::Ping,
            Request::Publish(_) => LinkStep::Publish,
            Request::Probe { .. } => LinkStep::Probe,
            Request::Subscription { .. }
            | Request::SlotSubscribe { .. }
            | Request::Fence { .. } => LinkStep::Subscribe,
            Request::Presence(_) => LinkStep::Presence,
            Request::Topology => LinkStep::Topology,
        }
    }
}

/// Turns an error reply to a request of an established link into the error the application
/// sees (credentials and permissions as [`LinkError::Auth`]).
pub(crate) fn refused_error(step: LinkStep, msg: &[u8]) -> LinkError {
    let text = String::from_utf8_lossy(msg).into_owned();
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("NOAUTH") || upper.starts_with("WRONGPASS") || upper.starts_with("NOPERM")
    {
        return LinkError::Auth(format!("{step}: {text}"));
    }
    LinkError::Protocol(format!("{step} was refused: {text}"))
}

/// Turns an error reply to a handshake command into the error the application sees.
pub(crate) fn handshake_error(step: Step, msg: &[u8]) -> LinkError {
    let text = String::from_utf8_lossy(msg).into_owned();
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("WRONGPASS")
        || upper.starts_with("NOAUTH")
        || (step == Step::Auth && upper.contains("PASSWORD"))
        || upper.starts_with("NOPERM")
    {
        return LinkError::Auth(text);
    }
    if step == Step::Hello && (upper.starts_with("NOPROTO") || upper.contains("UNKNOWN COMMAND")) {
        return LinkError::NoResp3(text);
    }
    LinkError::Handshake(format!("{}: {text}", step.public()))
}

/// Is this reply an error? Returns its text.
pub(crate) fn error_text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Error(e) => Some(e),
        _ => None,
    }
}

/// A small seeded generator (SplitMix64) for reconnect jitter.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The delay before reconnect attempt `attempt` (0-based): exponential from `min` to
    /// `max`, then a uniform draw from its upper half.
    pub(crate) fn backoff(&mut self, attempt: u32, min: Duration, max: Duration) -> Duration {
        let base = min
            .checked_mul(1u32 << attempt.min(20))
            .unwrap_or(max)
            .min(max);
        let half = base / 2;
        let nanos = half.as_nanos().min(u64::MAX as u128) as u64;
        let jitter = if nanos == 0 {
            0
        } else {
            self.next_u64() % (nanos + 1)
        };
        half + Duration::from_nanos(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded_and_seeded() {
        let min = Duration::from_millis(10);
        let max = Duration::from_secs(1);
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for attempt in 0..40 {
            let d = a.backoff(attempt, min, max);
            assert_eq!(d, b.backoff(attempt, min, max));
            let base = (min * (1 << attempt.min(20))).min(max);
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
        let mut c = Rng::new(8);
        let differs = (0..10).any(|i| c.backoff(i, min, max) != Rng::new(7).backoff(i, min, max));
        assert!(differs);
    }

    #[test]
    fn handshake_errors_name_the_cause() {
        assert!(matches!(
            handshake_error(
                Step::Hello,
                b"ERR unknown command 'HELLO', with args beginning with: '3'"
            ),
            LinkError::NoResp3(_)
        ));
        assert!(matches!(
            handshake_error(
                Step::Auth,
                b"WRONGPASS invalid username-password pair or user is disabled."
            ),
            LinkError::Auth(_)
        ));
        assert!(matches!(
            handshake_error(Step::Select, b"NOAUTH Authentication required."),
            LinkError::Auth(_)
        ));
        assert!(matches!(
            handshake_error(Step::Select, b"ERR DB index is out of range"),
            LinkError::Handshake(_)
        ));
    }

    /// Writes one publish of `len` bytes to `l` (its frame is kept as an unsent slice) and
    /// hands the output out, dropping the chunk as a written one is.
    fn write_one(l: &mut Link, id: u64, len: usize, block: usize, now: Instant) {
        l.reserve_output(len, block);
        let start = l.out.len();
        l.out.extend_from_slice(&vec![b'x'; len]);
        l.push_written(PublishId(id), start, now);
        drop(l.take_output());
    }

    /// Answers the oldest request, a publish.
    fn answer_oldest(l: &mut Link) {
        let Some((_, Request::Publish(w))) = l.fifo.pop_front() else {
            panic!("the oldest request is not a publish");
        };
        l.publish_answered(&w);
    }

    #[test]
    fn output_blocks_are_reused_once_their_publishes_are_answered() {
        let now = Instant::now();
        let mut l = Link::new(LinkId(1), LinkRole::Publisher, &Config::default(), now);
        // Blocks of 1,024 bytes hold one publish of 600 each.
        write_one(&mut l, 0, 600, 1024, now);
        assert_eq!(l.blocks.allocated(), 1);
        // Publish 0 holds block A: publish 1 needs a new block.
        write_one(&mut l, 1, 600, 1024, now);
        assert_eq!(l.blocks.allocated(), 2);
        write_one(&mut l, 2, 600, 1024, now);
        assert_eq!(l.blocks.allocated(), 3);
        // Publish 0 answered: A is free, and it is the next block (no allocation).
        answer_oldest(&mut l);
        write_one(&mut l, 3, 600, 1024, now);
        assert_eq!(l.blocks.allocated(), 3, "the free block was not reused");
        // Publish 1 unanswered holds its block: the next one is new.
        write_one(&mut l, 4, 600, 1024, now);
        assert_eq!(l.blocks.allocated(), 4);
        // Every frame is intact, though its block was reused.
        for (i, (_, req)) in l.fifo.iter().enumerate() {
            let Request::Publish(Written {
                id,
                frame: Frame::Sent(f),
                ..
            }) = req
            else {
                panic!("a publish frame was not handed out");
            };
            assert_eq!(id.0, i as u64 + 1);
            assert_eq!(&f[..], &[b'x'; 600][..]);
        }
        assert!(l.blocks.retired() >= 2);
        // Nothing in flight: one spare block is kept, the rest let go.
        while !l.fifo.is_empty() {
            answer_oldest(&mut l);
        }
        assert_eq!(l.inflight_publishes, 0);
        assert_eq!(l.blocks.retired(), 1);
        // The spare block is the next one.
        write_one(&mut l, 5, 600, 1024, now);
        assert_eq!(l.blocks.allocated(), 4);
    }
}
