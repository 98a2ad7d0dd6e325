//! What the hub tells the application: events, deliveries and errors.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::envelope::{InstanceId, MessageType, Trailer};
use crate::naming::{ConnId, NameError, RoomId};
use crate::rooms::{ConnSlot, Recipient};

/// Identifies one Redis connection of a hub. Link 0 is the subscriber; links 1..=pool_size
/// publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u16);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {}", self.0)
    }
}

/// What a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkRole {
    /// Receives every subscribed room's messages.
    Subscriber,
    /// Carries publishes (and key commands).
    Publisher,
    /// Cluster mode: asks any node for the cluster's topology (`CLUSTER SHARDS`).
    Topology,
}

/// Names a publish so that its outcome can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishId(pub u64);

/// A message as it reached this instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The room.
    pub room: RoomId,
    /// Broadcast, presence event or system notification.
    pub message_type: MessageType,
    /// The application's payload: a shared slice of the bytes read from Redis, never copied
    /// per recipient.
    pub data: Bytes,
    /// The connection the publisher asked to exclude, as written in the message.
    pub exclude_connection: Option<Arc<str>>,
    /// Unix seconds given by the publisher.
    pub timestamp: i64,
    /// Origin instance, epoch and sequence; `None` for messages from publishers that write no
    /// trailer (built from the GraphWiz design), and for `LocalFirst` local deliveries of
    /// publishes still waiting for their link.
    pub origin: Option<Trailer>,
}

/// One message for the local members of one room.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The message, behind the one `Arc` every recipient's copy shares (built once, when the
    /// message arrives, so that handing it on moves a pointer, not the message). The hub
    /// keeps a reference too, to reuse the allocation once every recipient has dropped it
    /// (see `Config::message_reuse`).
    pub message: Arc<Message>,
    recipients: Recipients,
}

impl Delivery {
    /// A delivery of a message already behind its `Arc` (the hub's, see
    /// `Config::message_reuse`).
    pub(crate) fn shared(
        message: Arc<Message>,
        recipients: Arc<[Recipient]>,
        excluded: Option<ConnId>,
    ) -> Self {
        Delivery {
            message,
            recipients: Recipients {
                list: recipients,
                excluded,
            },
        }
    }

    /// The local members to deliver to: the room's members when the message arrived, less the
    /// excluded connection where exclusion applies on this instance.
    pub fn recipients(&self) -> impl Iterator<Item = &ConnId> + '_ {
        self.recipients.iter()
    }

    /// The recipients' slots, in the order of [`Delivery::recipients`]: index the
    /// application's per-connection state with them (see [`ConnSlot`]).
    pub fn recipient_slots(&self) -> impl Iterator<Item = ConnSlot> + '_ {
        self.recipients.slots()
    }

    /// The number of recipients.
    pub fn recipient_count(&self) -> usize {
        self.recipients.len()
    }

    /// The connection excluded on this instance, if any (it is a member of the room).
    pub fn excluded(&self) -> Option<&ConnId> {
        self.recipients.excluded.as_ref()
    }

    /// Takes the delivery apart without copying anything: the message behind one `Arc` (to
    /// hand the same one to every recipient) and who gets it.
    pub fn into_shared(self) -> (Arc<Message>, Recipients) {
        (self.message, self.recipients)
    }
}

/// Who gets a [`Delivery`]: the room's members when the message arrived, less the excluded
/// connection where exclusion applies on this instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipients {
    list: Arc<[Recipient]>,
    excluded: Option<ConnId>,
}

impl Recipients {
    /// The recipients (id and slot) in membership order.
    pub fn entries(&self) -> impl Iterator<Item = &Recipient> + '_ {
        let excluded = self.excluded.as_ref();
        self.list.iter().filter(move |r| Some(&r.conn) != excluded)
    }

    /// The recipients' ids in membership order.
    pub fn iter(&self) -> impl Iterator<Item = &ConnId> + '_ {
        self.entries().map(|r| &r.conn)
    }

    /// The recipients' slots in membership order: each indexes the application's state for
    /// that connection, checked against the slot's generation (see [`ConnSlot`]).
    pub fn slots(&self) -> impl Iterator<Item = ConnSlot> + '_ {
        self.entries().map(|r| r.slot)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.list.len() - usize::from(self.excluded.is_some())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Something the application should know. Drain with [`crate::Hub::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A message for local members of a room.
    Delivery(Delivery),
    /// Redis accepted a publish. `receivers` is Redis's count of subscribed *connections*
    /// (instances with members in the room), not of members.
    PublishConfirmed {
        /// The publish.
        id: PublishId,
        /// Subscribed Redis connections that received it.
        receivers: u64,
    },
    /// A publish that was accepted by `publish` failed later.
    PublishFailed {
        /// The publish.
        id: PublishId,
        /// Why.
        error: PublishError,
    },
    /// A publish nobody waits for (an adapter's fire-and-forget publisher) was refused
    /// before it reached Redis. The hub never produces this event (its callers get the
    /// refusal as the error of [`crate::Hub::publish_quiet`]); an adapter raises it so that
    /// such a refusal is reported to the application, not only logged and counted.
    PublishRefused {
        /// The room the message was for, as given (it may be the invalid part).
        room: String,
        /// Why it was refused.
        cause: PublishError,
    },
    /// Redis confirmed the room's subscription: messages published from now on reach this
    /// instance.
    RoomLive {
        /// The room.
        room: RoomId,
    },
    /// The room's subscription is no longer confirmed (link lost or server unsubscribed);
    /// roomcast is resubscribing.
    RoomNotLive {
        /// The room.
        room: RoomId,
        /// Why.
        reason: NotLiveReason,
    },
    /// Messages from one origin to a room were skipped: the numbers in `missing` never
    /// arrived here.
    Gap {
        /// The room.
        room: RoomId,
        /// The publishing instance.
        origin: InstanceId,
        /// The origin's epoch.
        epoch: u64,
        /// Sequence numbers that were not received.
        missing: RangeInclusive<u64>,
    },
    /// A link went down; queued work waits for it.
    LinkDown {
        /// The link.
        link: LinkId,
        /// Its role.
        role: LinkRole,
        /// Why.
        cause: LinkError,
    },
    /// A link is up and its handshake done.
    LinkUp {
        /// The link.
        link: LinkId,
        /// Its role.
        role: LinkRole,
        /// How long it was down (`None` for the first connection).
        outage: Option<Duration>,
        /// Rooms that were live when the link went down and may have missed messages
        /// (subscriber link only).
        missed_rooms: Vec<RoomId>,
    },
    /// An incoming message was dropped.
    Dropped {
        /// Why.
        cause: DropCause,
        /// The room, where known.
        room: Option<RoomId>,
    },
    /// The answer to a presence query ([`crate::Hub::query_presence`]).
    Presence {
        /// The query.
        id: crate::presence::QueryId,
        /// The answer, or why there is none.
        result: Result<crate::presence::PresenceAnswer, crate::presence::PresenceError>,
        /// True when the answer is this instance's own view only
        /// (`PresenceWhenDown::Local` while not registered).
        local_only: bool,
    },
    /// This instance's lease and members are registered in Redis (after start, a reconnect,
    /// or a lease lost during a stall): presence answers are whole again.
    PresenceReady,
    /// A probe went from a publish link through Redis back to the subscriber: the
    /// subscriber really receives (sent every `probe_interval`, and by [`crate::Hub::ping`]).
    SubscriberVerified {
        /// Round trip from the probe's PUBLISH to its arrival.
        rtt: std::time::Duration,
    },
    /// A PING sent by [`crate::Hub::ping`] was answered.
    Pong {
        /// The link.
        link: LinkId,
        /// Round trip time.
        rtt: Duration,
    },
}

/// Why a room is not live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotLiveReason {
    /// The subscriber link was lost.
    LinkLost,
    /// Redis unsubscribed the channel on its own.
    ServerUnsubscribed,
}

/// Why an incoming message was not delivered (all are counted in the metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropCause {
    /// The envelope could not be decoded.
    Malformed(String),
    /// The envelope names a room other than the channel it came on (spoofing).
    RoomMismatch,
    /// A message on a channel this instance does not want.
    UnknownChannel,
    /// The message's RESP frame is over `max_frame_bytes`: it was skipped unread (the link
    /// stays up and the messages after it are delivered). Raise `max_frame_bytes` (and
    /// `max_envelope_bytes`) on every instance if such messages are expected.
    TooLarge {
        /// The frame's length as Redis declared it.
        len: u64,
        /// The limit, `max_frame_bytes`.
        max: usize,
    },
}

/// The request a link was busy with when it failed: the handshake's commands, or one of the
/// requests of an established link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkStep {
    /// The handshake's `HELLO`.
    Hello,
    /// The handshake's `AUTH`.
    Auth,
    /// The handshake's `SELECT`.
    Select,
    /// The handshake's `CLIENT SETNAME`.
    SetName,
    /// A `PING` on an established link (keepalive or a health check).
    Ping,
    /// A `SUBSCRIBE` or `UNSUBSCRIBE` of rooms.
    Subscribe,
    /// A `PUBLISH` of a message.
    Publish,
    /// A presence command (registration, heartbeat, query, script load).
    Presence,
    /// A liveness probe published to the control channel.
    Probe,
    /// Cluster mode: `CLUSTER SHARDS`, the topology.
    Topology,
}

impl fmt::Display for LinkStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkStep::Hello => "the handshake's HELLO",
            LinkStep::Auth => "the handshake's AUTH",
            LinkStep::Select => "the handshake's SELECT",
            LinkStep::SetName => "the handshake's CLIENT SETNAME",
            LinkStep::Ping => "a PING on the established link",
            LinkStep::Subscribe => "a SUBSCRIBE/UNSUBSCRIBE",
            LinkStep::Publish => "a PUBLISH",
            LinkStep::Presence => "a presence command",
            LinkStep::Probe => "a liveness probe",
            LinkStep::Topology => "CLUSTER SHARDS (the cluster's topology)",
        })
    }
}

/// Why a link is down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The adapter reported the connection closed or failed.
    Io(String),
    /// Redis refused the credentials (`WRONGPASS`, `NOAUTH`, ...).
    Auth(String),
    /// The server does not speak RESP3 (`HELLO` unknown); use `protocol=resp2`.
    NoResp3(String),
    /// The server refused a handshake command (the text names the command, then Redis's
    /// error).
    Handshake(String),
    /// The server is not what the URL's scheme says (a cluster node reached with
    /// `redis://`); the text says what it is and which URL to write.
    WrongMode(String),
    /// Connecting or the handshake took longer than `connect_timeout`.
    ConnectTimeout,
    /// A request went unanswered for `reply_timeout`: the server is stalled or unreachable.
    ReplyTimeout {
        /// The oldest request, the one that went unanswered.
        step: LinkStep,
    },
    /// The subscriber stopped receiving its own probes: connected but deaf.
    Deaf,
    /// Redis sent something that is not RESP, or over a limit, or answered a request of an
    /// established link with an error (the text names the request: [`LinkStep`]).
    Protocol(String),
    /// The hub is shutting down.
    Shutdown,
    /// Cluster mode: the node owns no slot any more (its slots moved away, or it failed
    /// over); the link is closed for good, and its rooms and publishes went to their slots'
    /// new owners.
    Retired,
    /// Cluster mode: the slot of the subscriber's control channel moved to another shard.
    /// The probe can no longer vouch for the link's room subscriptions (one could have gone
    /// deaf unseen), so the link was reopened and its rooms subscribed again.
    ControlMoved,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "connection to Redis failed or closed: {e}"),
            LinkError::Auth(e) => write!(
                f,
                "Redis refused the credentials ({e}); check the user and password in the Redis URL"
            ),
            LinkError::NoResp3(e) => write!(
                f,
                "the server does not support RESP3 ({e}); use ?protocol=resp2 in the Redis URL"
            ),
            // The text starts with the step ("the handshake's AUTH: ...").
            LinkError::Handshake(e) => write!(f, "Redis refused {e}"),
            LinkError::WrongMode(e) => write!(f, "wrong kind of Redis server: {e}"),
            LinkError::ConnectTimeout => {
                write!(f, "connecting to Redis took longer than connect_timeout")
            }
            LinkError::ReplyTimeout { step } => write!(
                f,
                "Redis did not answer {step} within reply_timeout; the link was reopened"
            ),
            LinkError::Deaf => write!(
                f,
                "the subscriber link stopped receiving messages (probe lost); it was reopened"
            ),
            LinkError::Protocol(e) => write!(f, "bad data from Redis: {e}; the link was reopened"),
            LinkError::Shutdown => write!(f, "the hub is shutting down"),
            LinkError::Retired => write!(
                f,
                "the node owns no hash slot any more (slots moved or the shard failed over); its rooms and publishes moved to the new owners"
            ),
            LinkError::ControlMoved => write!(
                f,
                "the slot of the subscriber's control channel moved to another shard; the link was reopened so that the probe checks its subscriptions again"
            ),
        }
    }
}

impl std::error::Error for LinkError {}

/// Why a publish was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The room id is invalid.
    InvalidRoom(NameError),
    /// The exclude connection id is invalid.
    InvalidExclude(NameError),
    /// The encoded message would exceed `max_envelope_bytes`.
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than `max_queued_publishes` are waiting for their links.
    QueueFull {
        /// The limit.
        max: usize,
    },
    /// The publishes waiting for their links would hold more than `max_queued_bytes`.
    QueueBytesFull {
        /// Bytes queued now.
        queued: usize,
        /// The limit.
        max: usize,
    },
    /// The room's link is up but holds `max_output_bytes` for Redis already (in the hub and
    /// the adapter's write queue together): Redis or the network is not keeping up. Nothing
    /// was queued; the same publish can be retried once the link drains.
    Backpressure {
        /// The room's publish link.
        link: LinkId,
        /// Bytes held for it now.
        held: usize,
        /// The limit (`max_output_bytes`).
        max: usize,
    },
    /// The hub is shut down.
    Shutdown,
    /// Cluster mode: the publish was answered `-MOVED` (or `-CLUSTERDOWN`, `-TRYAGAIN`) and
    /// sent again more than `max_redirects` times; the cluster kept naming another owner for
    /// its slot than the topology said. It was not delivered. Check the cluster's health
    /// (`redis-cli --cluster check`), then publish again.
    Redirected {
        /// The room's hash slot.
        slot: u16,
        /// The last error the cluster gave.
        last: String,
    },
    /// The link broke after the publish was written and before Redis confirmed it; it may or
    /// may not have been delivered (`UnconfirmedPolicy::FailUnknown`).
    OutcomeUnknown,
    /// Redis answered with an error.
    Server(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::InvalidRoom(e) => write!(f, "cannot publish: {e}"),
            PublishError::InvalidExclude(e) => write!(f, "cannot publish: exclude_connection: {e}"),
            PublishError::TooLarge { len, max } => write!(
                f,
                "message is {len} bytes encoded, over max_envelope_bytes = {max}; send less data or raise the limit"
            ),
            PublishError::QueueFull { max } => write!(
                f,
                "{max} publishes are already waiting for Redis (max_queued_publishes); retry later or raise the limit"
            ),
            PublishError::QueueBytesFull { queued, max } => write!(
                f,
                "{queued} bytes of publishes are already waiting for Redis (max_queued_bytes = {max}); retry later or raise the limit"
            ),
            PublishError::Backpressure { link, held, max } => write!(
                f,
                "link {link} already holds {held} bytes for Redis (max_output_bytes = {max}): Redis or the network is not keeping up; wait and retry (a Publisher waits for you), publish less, or raise max_output_bytes"
            ),
            PublishError::Shutdown => write!(f, "the hub is shut down; no more publishes"),
            PublishError::Redirected { slot, last } => write!(
                f,
                "the cluster redirected this publish (hash slot {slot}) too many times (max_redirects), last with {last:?}; it was not delivered: check the cluster (redis-cli --cluster check) and publish again"
            ),
            PublishError::OutcomeUnknown => write!(
                f,
                "the link to Redis broke before it confirmed this publish; it may or may not have been delivered"
            ),
            PublishError::Server(e) => write!(f, "Redis refused the publish: {e}"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Why a membership command was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberError {
    /// The room id is invalid or over `max_room_id_bytes`.
    InvalidRoom(NameError),
    /// The connection id is invalid or over `max_conn_id_bytes`.
    InvalidConnection(NameError),
    /// The hub is shut down.
    Shutdown,
    /// The hub holds as many rooms, or connections, as it can index (about two thousand
    /// million); nothing was joined. Leave rooms or spread connections over more instances.
    Full,
}

impl fmt::Display for MemberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberError::InvalidRoom(e) | MemberError::InvalidConnection(e) => e.fmt(f),
            MemberError::Shutdown => write!(f, "the hub is shut down; no more joins"),
            MemberError::Full => write!(
                f,
                "the hub holds as many rooms or connections as it can index; leave rooms or \
                 spread connections over more instances"
            ),
        }
    }
}

impl std::error::Error for MemberError {}

/// Whether a room's subscription is confirmed by Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomState {
    /// Wanted, not yet sent (link down, or waiting for pacing).
    Pending,
    /// SUBSCRIBE sent, not yet confirmed.
    Subscribing,
    /// Confirmed: messages published from now on arrive.
    Live,
    /// UNSUBSCRIBE sent, not yet confirmed.
    Unsubscribing,
}
