//! The façade: one [`Hub`] per instance owns every link, room and publish.
//!
//! This file holds the public surface (getters, inputs, commands, outputs); the work is in
//! `publish` (sending), `receive` (frames from Redis), `links` (link life and
//! subscriptions) and `presence`. Parts with their own state and invariants, each tested
//! alone: `sequence` (publish ids and per-room sequence numbers), `probe` (the subscriber's
//! liveness probe), `control` (the control channel's subscription), `presence::PresenceState`
//! and `timer` (every deadline by name, computed in one place).

mod control;
mod links;
mod presence;
mod probe;
mod publish;
mod receive;
mod roles;
mod sequence;
mod shards;
mod timer;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use foldhash::fast::FixedState;

use crate::config::{Config, ConfigError, DeliveryMode, UnconfirmedPolicy};
use crate::envelope::{self, InstanceId, MessageType, Trailer, TRAILER_LEN};
use crate::event::{
    Delivery, DropCause, Event, LinkError, LinkId, LinkRole, MemberError, Message, NotLiveReason,
    PublishError, PublishId, RoomState,
};
use crate::link::{error_text, handshake_error, Link, LinkState, Outgoing, Request, Rng};
use crate::metrics::Metrics;
use crate::naming::{ChannelNamer, ConnId, RoomId};
use crate::resp::{
    encode_array_header, encode_bulk, encode_bulk_header, encode_command, Incoming, MessageFrame,
    Value,
};
use crate::rooms::{ConnSlot, Members, Rooms, RoomsOf, SeqCheck, Transition};

/// The subscriber link in single-server mode (the hub finds each link's role by lookup, see
/// [`LinkHealth::role`]; in single-server mode the subscriber is always this one).
pub const SUBSCRIBER: LinkId = LinkId(0);

use probe::PROBE_MAGIC;

/// Who this instance is. The adapter draws both from OS randomness at start; tests fix them.
/// Two instances with the same id would drop each other's messages as their own echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Unique per running instance.
    pub instance: InstanceId,
    /// Changes at every start, so receivers see a restart as a new baseline, not a gap.
    pub epoch: u64,
}

/// A message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// The room.
    pub room: &'a str,
    /// Its type.
    pub message_type: MessageType,
    /// The payload.
    pub data: &'a [u8],
    /// The sender's own connection on this instance, which must not receive the message.
    pub exclude_connection: Option<&'a str>,
    /// Unix seconds (the caller's clock: the core reads none).
    pub timestamp: i64,
}

impl<'a> Publish<'a> {
    /// A broadcast of `data` to `room`, excluding no one, with timestamp 0.
    pub fn broadcast(room: &'a str, data: &'a [u8]) -> Self {
        Publish {
            room,
            message_type: MessageType::Broadcast,
            data,
            exclude_connection: None,
            timestamp: 0,
        }
    }
}

/// Bytes for the adapter to write to a link, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The link.
    pub link: LinkId,
    /// The bytes.
    pub bytes: Bytes,
}

/// Something only the adapter can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// Open a TCP (or TLS) connection for `link` and report it with
    /// [`Hub::handle_connected`], or its failure with [`Hub::handle_disconnected`].
    Open {
        /// The link.
        link: LinkId,
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
        /// Wrap the connection in TLS.
        tls: bool,
    },
    /// Close the link's connection now and feed nothing more from it; a later `Open` for the
    /// same link starts a fresh connection.
    Close {
        /// The link.
        link: LinkId,
    },
}

/// The result of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// False if the connection already was a member.
    pub added: bool,
    /// The room's subscription state now; messages are promised only once it is `Live`.
    pub state: RoomState,
    /// The connection's slot, the same in every room it is in until it leaves the last one
    /// (see [`ConnSlot`]).
    pub conn: ConnSlot,
}

/// One link as seen by [`Hub::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkHealth {
    /// The link.
    pub link: LinkId,
    /// Its role.
    pub role: LinkRole,
    /// Its state.
    pub state: LinkState,
    /// The last error, if it failed since it was last ready.
    pub last_error: Option<LinkError>,
    /// The node it connects to, `host:port` (in cluster mode: a master, or for the
    /// topology link the node it asks).
    pub address: String,
}

/// A hub's view of its own health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Every link.
    pub links: Vec<LinkHealth>,
    /// When a probe last made the round trip through Redis back to the subscriber.
    pub last_probe_ok: Option<Instant>,
}

impl Health {
    /// All links ready.
    pub fn all_ready(&self) -> bool {
        self.links.iter().all(|l| l.state == LinkState::Ready)
    }
}

/// The sans-IO state machine of one roomcast instance.
///
/// Methods come in four groups, as in quinn-proto:
/// - **getters**: [`Hub::room_state`], [`Hub::members`], [`Hub::metrics`], [`Hub::health`], ...
/// - **inputs** from the adapter: [`Hub::handle_connected`], [`Hub::handle_input`],
///   [`Hub::handle_written`], [`Hub::handle_disconnected`], [`Hub::handle_timeout`];
/// - **commands** from the application: [`Hub::join`], [`Hub::join_many`], [`Hub::observe`],
///   [`Hub::leave`], [`Hub::disconnect`], [`Hub::publish`], [`Hub::query_presence`],
///   [`Hub::ping`], [`Hub::begin_shutdown`], [`Hub::close`];
/// - **outputs**: [`Hub::poll_transmit`] (or [`Hub::poll_transmit_link`] per link),
///   [`Hub::poll_link_request`], [`Hub::poll_event`], [`Hub::poll_timeout`].
///
/// After every input or command the caller MUST drain `poll_link_request`, `poll_transmit`
/// and `poll_event` until they return `None`, and then wait for I/O or for the instant
/// `poll_timeout` names. The hub never reads a clock: every `now` is an argument, and a `now`
/// earlier than one seen before is treated as that one.
///
/// **Time.** Every input and every command that can cause output or a deadline takes `now`
/// (joins, leaves and disconnects too: their SUBSCRIBE, UNSUBSCRIBE, presence writes and
/// presence events are timed work); outputs and getters take none. A request's reply timer
/// starts at the `now` of the call that caused it: what `poll_transmit` batches (the
/// subscription changes of a turn) is stamped with the `now` of the latest input or command,
/// which, drained as above, is the call that made the change. So a caller may call
/// [`Hub::handle_timeout`] only at the instants `poll_timeout` names, however long it was
/// idle before a command, and no request is ever stamped in the past.
///
/// **Standalone mode.** [`Hub::standalone`] makes a hub with no link, for running without
/// Redis: this instance is the whole cluster. It asks for no connection
/// ([`Hub::poll_link_request`] and [`Hub::poll_transmit`] return `None`) and has no timer
/// ([`Hub::poll_timeout`] is `None`: no keepalive, probe or presence lease). Everything else
/// is the same code as with links: ids and messages are checked against the configured
/// limits; a join makes its room `Live` at once, with [`Event::RoomLive`] as usual, and a
/// room's last leave removes it at once; a publish is numbered as for Redis and delivered
/// to the room's members at once, in publish order, as [`Event::Delivery`] with the same
/// trailer (origin, epoch, sequence) and exclusion a member of a linked hub sees, then
/// confirmed at once ([`Event::PublishConfirmed`] for [`Hub::publish`], `receivers` 1 if
/// the room has members here, else 0); presence events, when on, are such publishes;
/// presence queries are answered at once from the local rooms (`local_only` false: the
/// answer is whole); the metrics count the same things (published, confirmed, delivered,
/// member deliveries, refusals). [`Hub::health`] lists no link, so
/// [`Health::all_ready`] holds; [`Hub::begin_shutdown`] drains at once and [`Hub::close`]
/// has nothing to close. Of the delivery contract, the promises about links (a room is
/// live only once Redis confirmed it, gaps and `RoomNotLive` after a link is lost, resends
/// of unconfirmed publishes, backpressure per link) hold trivially: no link, no loss, no
/// wait.
///
/// **Backpressure.** `max_output_bytes` bounds the bytes held for one link on their way to
/// Redis, in the hub and in the adapter together (one frame may go over it). An adapter with
/// a write queue per socket pulls with [`Hub::poll_transmit_link`] only while that queue is
/// short, and reports what the socket took with [`Hub::handle_written`]; the bytes count
/// against the link from the moment they are written into the hub until then. (An adapter
/// that writes every [`Hub::poll_transmit`] in full at once may use that instead: what it
/// hands out counts as written.) A publish to a link that is up and holds `max_output_bytes`
/// is refused at once with [`PublishError::Backpressure`] and nothing is queued; publishes
/// wait in a link's queue only while it is down or at `max_inflight_publishes`, bounded by
/// `max_queued_publishes` and `max_queued_bytes`.
#[derive(Debug)]
pub struct Hub {
    config: Config,
    namer: ChannelNamer,
    id: Identity,
    now: Instant,
    rooms: Rooms,
    links: Vec<Link>,
    /// Which link does what (subscriber per place, publish links, presence).
    roles: roles::Roles,
    /// The subscriber link the probe under way (or the last one) goes to.
    probed: usize,
    /// Per link (by index; only subscriber links use theirs): the control channel the probes
    /// come back on.
    controls: Vec<control::Control>,
    /// Cluster mode: topology, placement, publishes to reroute.
    shards: Option<shards::Shards>,
    seq: sequence::Sequencer,
    events: VecDeque<Event>,
    requests: VecDeque<LinkRequest>,
    /// Publishes whose success is reported ([`Hub::publish`]; not [`Hub::publish_quiet`] or
    /// the hub's own presence events), by id, until confirmed or failed.
    confirm_wanted: hashbrown::HashSet<u64, FixedState>,
    queued_total: usize,
    /// Bytes of the publishes in the links' queues (bounded by `max_queued_bytes`).
    queued_bytes: usize,
    rng: Rng,
    prober: probe::Prober,
    missed: Vec<RoomId>,
    next_transmit: usize,
    metrics: Metrics,
    shutting_down: bool,
    closed: bool,
    scratch: Vec<u8>,
    /// Where a received message's room id is unescaped (no allocation per message).
    room_scratch: String,
    /// The last message's channel and the room slot it was found at, under the slots'
    /// generation then ([`Rooms::generation`]): a burst in one room looks its room up for
    /// its first two messages only.
    last_channel: LastChannel,
    presence: presence::PresenceState,
    /// Connections joined with [`Hub::observe`], while they are in a room: in no presence.
    observers: hashbrown::HashSet<ConnId, FixedState>,
    /// Allocations of delivered messages, reused once their recipients dropped them.
    messages: crate::reuse::MessagePool,
}

impl Hub {
    /// A hub that will open its links at once (see [`Hub::poll_link_request`]).
    ///
    /// With a cluster configuration ([`Config::cluster`]) it first opens one link to a seed
    /// node, reads the topology there, and then opens links to every master (see "Cluster
    /// mode" in the [`Hub`] docs).
    pub fn new(config: Config, id: Identity, now: Instant) -> Result<Hub, ConfigError> {
        let roles = match &config.cluster {
            Some(_) => roles::Roles::cluster(config.server.clone()),
            None => roles::Roles::single(config.server.clone(), config.pool_size),
        };
        Hub::with_roles(config, id, now, roles)
    }

    /// A standalone hub: no Redis, no link; it delivers within this instance (see
    /// "Standalone mode" in the [`Hub`] docs). `config`'s limits, delivery and presence
    /// settings apply as for any hub; its server, pool and timing settings have nothing to
    /// act on.
    pub fn standalone(config: Config, id: Identity, now: Instant) -> Result<Hub, ConfigError> {
        Hub::with_roles(config, id, now, roles::Roles::standalone())
    }

    fn with_roles(
        config: Config,
        id: Identity,
        now: Instant,
        roles: roles::Roles,
    ) -> Result<Hub, ConfigError> {
        config.validate()?;
        if config.cluster.is_some() && roles.is_standalone() {
            return Err(ConfigError::BadValue {
                field: "cluster",
                reason: "a standalone hub has no Redis, so no cluster; leave cluster unset".into(),
            });
        }
        let namer =
            ChannelNamer::new(&config.channel_prefix).map_err(|e| ConfigError::BadValue {
                field: "channel_prefix",
                reason: e.to_string(),
            })?;
        let seed = config.rng_seed ^ id.instance.0;
        let links = (0..roles.len())
            .map(|i| Link::new(roles::Roles::id(i), roles.role(i), &config, now))
            .collect();
        let probed = roles.subscribers().next().unwrap_or(0);
        let control = namer.control_channel(id.instance);
        let namer_for_keys = namer.clone();
        let mut hub = Hub {
            rooms: Rooms::new(seed),
            seq: sequence::Sequencer::new(
                seed.rotate_left(29),
                id.epoch,
                config.max_publish_streams,
            ),
            confirm_wanted: hashbrown::HashSet::with_hasher(FixedState::with_seed(seed)),
            observers: hashbrown::HashSet::with_hasher(FixedState::with_seed(seed.rotate_left(7))),
            messages: crate::reuse::MessagePool::new(
                config.message_reuse,
                config.message_reuse_bytes,
            ),
            namer,
            id,
            now,
            links,
            probed,
            controls: (0..roles.len())
                .map(|_| control::Control::new(control.clone()))
                .collect(),
            shards: config
                .cluster
                .clone()
                .map(|servers| shards::Shards::new(servers, now)),
            roles,
            events: VecDeque::new(),
            requests: VecDeque::new(),
            queued_total: 0,
            queued_bytes: 0,
            rng: Rng::new(seed),
            prober: probe::Prober::new(now, config.probe_interval),
            missed: Vec::new(),
            next_transmit: 0,
            metrics: Metrics::default(),
            shutting_down: false,
            closed: false,
            scratch: Vec::new(),
            room_scratch: String::new(),
            last_channel: LastChannel::default(),
            presence: presence::PresenceState::new(crate::presence::Keys::new(
                &namer_for_keys,
                id.instance,
            )),
            config,
        };
        for i in 0..hub.links.len() {
            hub.open(i, now);
        }
        Ok(hub)
    }

    // ----- getters -----

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This instance's identity.
    pub fn identity(&self) -> Identity {
        self.id
    }

    /// Whether this hub is standalone ([`Hub::standalone`]): no link, local delivery.
    pub fn is_standalone(&self) -> bool {
        self.roles.is_standalone()
    }

    /// Maps rooms to channels for this hub's prefix.
    pub fn namer(&self) -> &ChannelNamer {
        &self.namer
    }

    /// The room's subscription state, or `None` if it has no local members.
    pub fn room_state(&self, room: &str) -> Option<RoomState> {
        self.rooms.get(room).map(|r| r.state)
    }

    /// The subscriber link a room is subscribed on (or being subscribed or left on); `None`
    /// while it waits to be subscribed, or has no local members. In cluster mode it is a
    /// link to the master of the room's slot.
    pub fn room_link(&self, room: &str) -> Option<LinkId> {
        self.rooms.link_of(room).map(LinkId)
    }

    /// Cluster mode: the topology last read (`None` before the first, and for one server).
    pub fn topology(&self) -> Option<&crate::cluster::Topology> {
        self.shards.as_ref()?.topology()
    }

    /// The local members of a room (empty if none).
    pub fn members(&self, room: &str) -> Members<'_> {
        self.rooms.members_of(room)
    }

    /// The rooms a local connection is in.
    pub fn rooms_of(&self, conn: &str) -> RoomsOf<'_> {
        self.rooms.rooms_of(conn)
    }

    /// A local connection's slot, while it is a member of some room (see [`ConnSlot`]).
    pub fn conn_slot(&self, conn: &str) -> Option<ConnSlot> {
        self.rooms.conn_slot(conn)
    }

    /// The connection in a slot, if the slot still belongs to it (same generation).
    pub fn conn_id(&self, slot: ConnSlot) -> Option<&ConnId> {
        self.rooms.conn_id(slot)
    }

    /// Rooms with local members, and their states.
    pub fn rooms(&self) -> impl Iterator<Item = (&RoomId, RoomState)> + '_ {
        self.rooms.iter().map(|(id, r)| (id, r.state))
    }

    /// Whether a room id would be accepted (as `join` and `publish` check it).
    pub fn check_room(&self, room: &str) -> Result<RoomId, MemberError> {
        RoomId::new(room, self.config.max_room_id_bytes).map_err(MemberError::InvalidRoom)
    }

    /// A snapshot of the counters and gauges.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.metrics.clone();
        m.rooms = self.rooms.len();
        m.rooms_live = self.rooms.count_in(RoomState::Live);
        m.members = self.rooms.memberships();
        m.connections = self.rooms.connections();
        m.queued_publishes = self.queued_total;
        m.queued_bytes = self.queued_bytes;
        m.inflight_publishes = self.links.iter().map(|l| l.inflight_publishes).sum();
        m.subscriptions_in_flight = self.rooms.in_flight();
        m.links_ready = self.links.iter().filter(|l| l.is_ready()).count();
        m.buffered_input = self.links.iter().map(|l| l.held_input).sum();
        m.buffered_output = self.buffered_output();
        m.unwritten_output = self.links.iter().map(|l| l.unwritten).sum();
        m.max_link_output = self.links.iter().map(Link::held_output).max().unwrap_or(0);
        m
    }

    /// Every link's state, and the last probe's success.
    pub fn health(&self) -> Health {
        Health {
            // A retired cluster link (its master owns no slot now) is no part of the hub's
            // health any more.
            links: self
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| self.closed || l.state != LinkState::Closed)
                .map(|(i, l)| {
                    let server = self.roles.server_of(i);
                    LinkHealth {
                        link: l.id,
                        role: l.role,
                        state: l.state,
                        last_error: l.last_error.clone(),
                        address: format!("{}:{}", server.host, server.port),
                    }
                })
                .collect(),
            last_probe_ok: self.prober.last_ok(),
        }
    }

    /// Bytes buffered for the adapter on every link and not handed out yet (bounded by
    /// `max_output_bytes` plus one frame each).
    pub fn buffered_output(&self) -> usize {
        self.links.iter().map(|l| l.buffered()).sum()
    }

    /// Bytes held for one link on their way to Redis: not handed out yet, or handed out by
    /// [`Hub::poll_transmit_link`] and not yet reported by [`Hub::handle_written`] (0 for a
    /// link that does not exist).
    pub fn link_output(&self, link: LinkId) -> usize {
        self.links.get(link.0 as usize).map_or(0, Link::held_output)
    }

    /// True once [`Hub::begin_shutdown`] was called and every queued publish and subscription
    /// change has been confirmed (or failed).
    pub fn is_drained(&self) -> bool {
        self.shutting_down
            && self.queued_total == 0
            && self.links.iter().all(|l| l.inflight_publishes == 0)
            && self.rooms.len() == 0
            && !self.roles.presence().is_some_and(|i| {
                self.links[i]
                    .fifo
                    .iter()
                    .any(|(_, r)| matches!(r, Request::Presence(_)))
            })
    }

    /// The publish link a room always uses (`None` for a standalone hub: it has no link).
    pub fn publish_link(&self, room: &str) -> Option<LinkId> {
        self.roles.publisher_of_room(room).map(roles::Roles::id)
    }

    // ----- inputs -----

    /// The adapter opened the connection asked for by [`LinkRequest::Open`].
    pub fn handle_connected(&mut self, link: LinkId, now: Instant) {
        let now = self.tick(now);
        let Some(l) = self.links.get_mut(link.0 as usize) else {
            return;
        };
        if let LinkState::Connecting { .. } = l.state {
            l.start_handshake(&self.config, now);
        }
    }

    /// Bytes read from a link. The hub consumes every complete frame from the front of `buf`
    /// (splitting it off) and leaves a partial one for the next call.
    pub fn handle_input(&mut self, link: LinkId, buf: &mut BytesMut, now: Instant) {
        let now = self.tick(now);
        let idx = link.0 as usize;
        let Some(l) = self.links.get_mut(idx) else {
            buf.clear();
            return;
        };
        // What arrived since the last call: `buf` still starts with the partial frame that
        // call left (`held_input`), which was counted then.
        self.metrics.bytes_in += buf.len().saturating_sub(l.held_input) as u64;
        if !matches!(l.state, LinkState::Ready | LinkState::Handshaking { .. }) {
            buf.clear();
            l.held_input = 0;
            return;
        }
        l.last_input = now;
        self.messages.reclaim();
        loop {
            let l = &mut self.links[idx];
            if !matches!(l.state, LinkState::Ready | LinkState::Handshaking { .. }) {
                buf.clear();
                l.held_input = 0;
                return;
            }
            match l.reader.next(buf) {
                Ok(Some(frame)) => self.on_frame(idx, frame, now),
                Ok(None) => {
                    l.held_input = buf.len();
                    break;
                }
                Err(e) => {
                    buf.clear();
                    self.link_failed(idx, LinkError::Protocol(e.to_string()), true, now);
                    return;
                }
            }
        }
    }

    /// The link's connection closed or could not be opened. `cause` is shown to the
    /// application.
    pub fn handle_disconnected(&mut self, link: LinkId, cause: &str, now: Instant) {
        let now = self.tick(now);
        let idx = link.0 as usize;
        let Some(l) = self.links.get(idx) else {
            return;
        };
        if matches!(
            l.state,
            LinkState::Connecting { .. } | LinkState::Handshaking { .. } | LinkState::Ready
        ) {
            self.link_failed(idx, LinkError::Io(cause.to_string()), false, now);
        }
    }

    /// The adapter wrote `n` bytes of what [`Hub::poll_transmit_link`] handed out for `link`
    /// to its socket: they no longer count against the link's `max_output_bytes`, so
    /// publishes waiting for room may be written now.
    pub fn handle_written(&mut self, link: LinkId, n: usize, now: Instant) {
        let now = self.tick(now);
        let idx = link.0 as usize;
        let Some(l) = self.links.get_mut(idx) else {
            return;
        };
        l.unwritten = l.unwritten.saturating_sub(n);
        if l.role == LinkRole::Publisher && !l.queue.is_empty() {
            self.pump(idx, now);
        }
    }

    /// The instant from [`Hub::poll_timeout`] has come (calling it early or twice is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        self.messages.reclaim();
        // Each is looked at when its turn comes: firing one can disarm another.
        for t in self.timers() {
            if self.timer(t).is_some_and(|at| now >= at) {
                self.fire(t, now);
            }
        }
    }

    // ----- commands -----

    /// Adds a local connection to a room at `now`. The first member subscribes the room's
    /// channel; the SUBSCRIBE goes out (batched with the other joins of this turn) on the next
    /// [`Hub::poll_transmit`]. Messages are promised once the room is `Live`
    /// ([`Event::RoomLive`]).
    pub fn join(&mut self, room: &str, conn: &str, now: Instant) -> Result<Joined, MemberError> {
        self.join_as(room, conn, false, now)
    }

    /// [`Hub::join`] or [`Hub::observe`].
    fn join_as(
        &mut self,
        room: &str,
        conn: &str,
        observer: bool,
        now: Instant,
    ) -> Result<Joined, MemberError> {
        let now = self.tick(now);
        if self.shutting_down {
            return Err(MemberError::Shutdown);
        }
        RoomId::check(room, self.config.max_room_id_bytes).map_err(MemberError::InvalidRoom)?;
        let conn = ConnId::new(conn, self.config.max_conn_id_bytes)
            .map_err(MemberError::InvalidConnection)?;
        if observer && self.rooms.rooms_of(conn.as_str()).is_empty() {
            self.observers.insert(conn.clone());
        }
        self.join_checked(room, &conn, now)
    }

    /// Adds one local connection to many rooms, as [`Hub::join`] does one by one, with the
    /// connection id checked once. Every room id is checked first: if one is invalid nothing
    /// is joined and the error comes with its position in `rooms`. Returns how many rooms
    /// were newly joined.
    pub fn join_many(
        &mut self,
        rooms: &[&str],
        conn: &str,
        now: Instant,
    ) -> Result<usize, (usize, MemberError)> {
        let now = self.tick(now);
        if self.shutting_down {
            return Err((0, MemberError::Shutdown));
        }
        let conn = ConnId::new(conn, self.config.max_conn_id_bytes)
            .map_err(|e| (0, MemberError::InvalidConnection(e)))?;
        for (i, room) in rooms.iter().enumerate() {
            RoomId::check(room, self.config.max_room_id_bytes)
                .map_err(|e| (i, MemberError::InvalidRoom(e)))?;
        }
        let mut added = 0;
        for (i, room) in rooms.iter().enumerate() {
            added += usize::from(
                self.join_checked(room, &conn, now)
                    .map_err(|e| (i, e))?
                    .added,
            );
        }
        Ok(added)
    }

    /// Adds an observer to a room, as [`Hub::join`] does a connection: it receives the room's
    /// messages but is no member in presence and makes no presence events (the adapter's
    /// room streams). A connection is an observer from the `observe` that puts it in its
    /// first room until it is in no room any more; a `join` meanwhile keeps it one, and an
    /// `observe` of a connection already in a room as a member does not hide it.
    pub fn observe(&mut self, room: &str, conn: &str, now: Instant) -> Result<Joined, MemberError> {
        self.join_as(room, conn, true, now)
    }

    /// Whether a connection is an observer ([`Hub::observe`]): in no presence.
    pub fn is_observer(&self, conn: &str) -> bool {
        !self.observers.is_empty() && self.observers.contains(conn)
    }

    /// [`Hub::join`] after the checks; a room already known is not allocated again.
    fn join_checked(
        &mut self,
        room: &str,
        conn: &ConnId,
        now: Instant,
    ) -> Result<Joined, MemberError> {
        let j = self.rooms.join(room, conn).ok_or(MemberError::Full)?;
        let mut state = j.state;
        if self.settle_standalone() {
            state = RoomState::Live;
        }
        if j.added {
            self.presence_join(room, conn.as_str(), now);
            self.presence_event(&j.room, conn, true, now);
        }
        Ok(Joined {
            added: j.added,
            state,
            conn: j.slot,
        })
    }

    /// Standalone mode: every subscription change is confirmed at once (there is no Redis to
    /// ask), so a new room is `Live` ([`Event::RoomLive`] as usual) and a room whose last
    /// member left is gone before the call returns. False (and nothing done) for a hub with
    /// links.
    fn settle_standalone(&mut self) -> bool {
        if !self.roles.is_standalone() {
            return false;
        }
        let (subscribe, unsubscribe) = self.rooms.take_routed(usize::MAX, |_| Some(0));
        for (room, link) in subscribe {
            let t = self.rooms.on_subscribed(room, link);
            self.on_transition(t);
        }
        for (room, link) in unsubscribe {
            let t = self.rooms.on_unsubscribed(room, link);
            self.on_transition(t);
        }
        true
    }

    /// Removes a local connection from a room; the last member unsubscribes it. Returns false
    /// if it was not a member.
    pub fn leave(&mut self, room: &str, conn: &str, now: Instant) -> Result<bool, MemberError> {
        let now = self.tick(now);
        let room = self.check_room(room)?;
        let conn = ConnId::new(conn, self.config.max_conn_id_bytes)
            .map_err(MemberError::InvalidConnection)?;
        let left = self.rooms.leave(&room, &conn);
        self.settle_standalone();
        if left {
            let gone = self.rooms.rooms_of(conn.as_str()).is_empty();
            self.presence_leave(room.as_str(), conn.as_str(), gone, now);
            self.presence_event(&room, &conn, false, now);
            if gone {
                self.observers.remove(conn.as_str());
            }
        }
        Ok(left)
    }

    /// Removes a local connection from all its rooms; returns them.
    pub fn disconnect(&mut self, conn: &str, now: Instant) -> Result<Vec<RoomId>, MemberError> {
        let now = self.tick(now);
        let conn = ConnId::new(conn, self.config.max_conn_id_bytes)
            .map_err(MemberError::InvalidConnection)?;
        let rooms = self.rooms.disconnect(&conn);
        self.settle_standalone();
        for (i, room) in rooms.iter().enumerate() {
            self.presence_leave(room.as_str(), conn.as_str(), i + 1 == rooms.len(), now);
            self.presence_event(room, &conn, false, now);
        }
        self.observers.remove(conn.as_str());
        Ok(rooms)
    }

    /// With `presence_events` on: tells the room's instances that a member came or went.
    fn presence_event(&mut self, room: &RoomId, conn: &ConnId, joined: bool, now: Instant) {
        if !self.config.presence_events || self.is_observer(conn.as_str()) {
            return;
        }
        let data = crate::presence::PresenceChange {
            joined,
            instance: self.id.instance,
            conn: conn.as_str().to_string(),
            meta: Bytes::new(),
        }
        .encode();
        let sent = self.try_publish(
            &Publish {
                room: room.as_str(),
                message_type: MessageType::PresenceEvent,
                data: &data,
                exclude_connection: None,
                timestamp: 0,
            },
            now,
        );
        if sent.is_err() {
            self.metrics.publish_refused += 1;
        }
    }

    /// Publishes a message to its room on every instance. Refused at once (no number used,
    /// nothing changed) when invalid, too large, shut down or over `max_queued_publishes`.
    /// Otherwise the outcome comes later as [`Event::PublishConfirmed`] or
    /// [`Event::PublishFailed`] with the returned id.
    pub fn publish(&mut self, msg: &Publish<'_>, now: Instant) -> Result<PublishId, PublishError> {
        let result = self.publish_quiet(msg, now);
        if let Ok(id) = result {
            if self.roles.is_standalone() {
                // Delivered already: confirmed at once, by this instance if it has members
                // in the room (Redis counts the instances subscribed to it).
                let receivers = u64::from(
                    self.rooms
                        .get(msg.room)
                        .is_some_and(|r| !r.members().is_empty()),
                );
                self.events
                    .push_back(Event::PublishConfirmed { id, receivers });
            } else {
                self.confirm_wanted.insert(id.0);
            }
        }
        result
    }

    /// As [`Hub::publish`], for publishers that wait for no answer: success produces no
    /// [`Event::PublishConfirmed`] (one event less per message); a failure still produces
    /// [`Event::PublishFailed`].
    pub fn publish_quiet(
        &mut self,
        msg: &Publish<'_>,
        now: Instant,
    ) -> Result<PublishId, PublishError> {
        let now = self.tick(now);
        let result = self.try_publish(msg, now);
        if result.is_err() {
            self.metrics.publish_refused += 1;
        }
        result
    }

    /// Sends a PING on every ready link ([`Event::Pong`] answers each) and starts a probe of
    /// the subscriber now if none is under way.
    pub fn ping(&mut self, now: Instant) {
        let now = self.tick(now);
        for idx in 0..self.links.len() {
            if self.links[idx].is_ready() {
                self.send_ping(idx, true, now);
            }
        }
        if !self.prober.under_way() {
            self.prober.due_now(now);
            self.probe_timers(now);
        }
    }

    /// Stops accepting joins and publishes, and leaves every room. Queued publishes still go
    /// out; wait for [`Hub::is_drained`] (with a bound of your own), then call [`Hub::close`].
    pub fn begin_shutdown(&mut self, now: Instant) {
        let now = self.tick(now);
        if self.shutting_down {
            return;
        }
        let conns: Vec<ConnId> = {
            let mut seen: Vec<ConnId> = Vec::new();
            for (_, r) in self.rooms.iter() {
                seen.extend(r.members().iter().cloned());
            }
            seen.sort_unstable();
            seen.dedup();
            seen
        };
        for c in conns {
            let _ = self.disconnect(c.as_str(), now);
        }
        self.presence_goodbye(now);
        self.shutting_down = true;
    }

    /// Closes every link (asking the adapter to close them) and fails what is still queued
    /// with [`PublishError::Shutdown`].
    pub fn close(&mut self, now: Instant) {
        let now = self.tick(now);
        self.shutting_down = true;
        self.closed = true;
        // A probe under way would keep a timer, and count the subscriber deaf when it fired.
        self.prober.abandon();
        for idx in 0..self.links.len() {
            let l = &mut self.links[idx];
            if l.state != LinkState::Closed {
                if matches!(
                    l.state,
                    LinkState::Connecting { .. } | LinkState::Handshaking { .. } | LinkState::Ready
                ) {
                    self.requests.push_back(LinkRequest::Close { link: l.id });
                }
                let fifo = std::mem::take(&mut l.fifo);
                let queue = std::mem::take(&mut l.queue);
                l.state = LinkState::Closed;
                l.clear_output();
                l.held_input = 0;
                l.forget_inflight();
                for (_, req) in fifo {
                    if let Request::Publish(o) = req {
                        self.fail_publish(o.id, PublishError::Shutdown);
                    }
                }
                self.queued_total -= queue.len();
                self.queued_bytes -= queue.iter().map(Outgoing::len).sum::<usize>();
                for o in queue {
                    self.fail_publish(o.id, PublishError::Shutdown);
                }
            }
        }
        // Cluster mode: publishes waiting for their slot's owner.
        let waiting = self.shards.as_mut().map(|s| s.take_reroute());
        for o in waiting.into_iter().flatten() {
            self.queued_total -= 1;
            self.queued_bytes -= o.len();
            self.fail_publish(o.id, PublishError::Shutdown);
        }
        let _ = now;
    }

    // ----- outputs -----

    /// The next bytes to write. Subscription changes made since the last call are batched
    /// here, so many joins in one turn become one SUBSCRIBE (its reply timer starts at the
    /// `now` of the latest input or command; see the [`Hub`] docs on time).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.flush_subscriptions(self.now);
        let n = self.links.len();
        let start = self.next_transmit.min(n);
        // Round robin from `next_transmit`, without a division per link.
        for idx in (start..n).chain(0..start) {
            let l = &mut self.links[idx];
            if let Some(bytes) = l.next_output() {
                self.next_transmit = if idx + 1 == n { 0 } else { idx + 1 };
                self.metrics.bytes_out += bytes.len() as u64;
                return Some(Transmit { link: l.id, bytes });
            }
        }
        None
    }

    /// The next bytes to write to one link, for an adapter that keeps a write queue per link
    /// and pulls only while that queue is short (see the [`Hub`] docs on backpressure). The
    /// bytes count against the link's `max_output_bytes` until reported by
    /// [`Hub::handle_written`]. Subscription changes are batched here as in
    /// [`Hub::poll_transmit`].
    #[must_use]
    pub fn poll_transmit_link(&mut self, link: LinkId) -> Option<Bytes> {
        let idx = link.0 as usize;
        if idx < self.links.len() && self.roles.role(idx) == LinkRole::Subscriber {
            self.flush_subscriptions(self.now);
        }
        let l = self.links.get_mut(link.0 as usize)?;
        let bytes = l.next_output()?;
        l.unwritten += bytes.len();
        self.metrics.bytes_out += bytes.len() as u64;
        Some(bytes)
    }

    /// The next link to open or close.
    #[must_use]
    pub fn poll_link_request(&mut self) -> Option<LinkRequest> {
        let r = self.requests.pop_front();
        if r.is_none() {
            shrink_idle(&mut self.requests);
        }
        r
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_none() {
            shrink_idle(&mut self.events);
        }
        e
    }

    /// When [`Hub::handle_timeout`] must be called next, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().filter_map(|t| self.timer(t)).min()
    }

    // ----- internals -----

    fn tick(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }
}

/// A one-entry cache of the room slot a channel was found at (see `Hub::on_message`). It
/// keeps a channel only once two messages in a row were for the same room: traffic spread
/// over many rooms pays a comparison of two slots per message, not a copy of its channel.
#[derive(Debug, Default)]
struct LastChannel {
    /// The channel remembered; empty while none is (a room channel never is: it starts with
    /// the room prefix).
    channel: Vec<u8>,
    /// The slot of the last message's room (remembered or not).
    slot: u32,
    /// The room table's generation when `channel` was remembered.
    generation: u64,
}

impl LastChannel {
    /// The slot `channel` was found at, if it is the channel remembered and no slot has been
    /// given to another room since.
    #[inline]
    fn get(&self, channel: &[u8], generation: u64) -> Option<u32> {
        (!self.channel.is_empty() && self.generation == generation && self.channel == channel)
            .then_some(self.slot)
    }

    /// `channel` was found at `slot` by a lookup: remembered if the message before was for the
    /// same slot too (a channel longer than any room channel is not kept).
    fn found(&mut self, channel: &[u8], slot: u32, generation: u64) {
        let again = slot == self.slot;
        self.slot = slot;
        self.channel.clear();
        if again && channel.len() <= MAX_REMEMBERED_CHANNEL {
            self.channel.extend_from_slice(channel);
            self.generation = generation;
        }
    }
}

/// The longest channel [`LastChannel`] keeps: a prefix and a room id of sensible length.
const MAX_REMEMBERED_CHANNEL: usize = 256;

/// A drained queue gives back what a burst made it grow to (100,000 `RoomLive` events after a
/// mass join would otherwise hold ~14 MiB for good).
pub(crate) fn shrink_idle<T>(q: &mut VecDeque<T>) {
    if q.is_empty() && q.capacity() > 1024 {
        q.shrink_to(64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::{Config, Hub, Identity, InstanceId, MemberError};

    #[test]
    fn join_many_is_all_or_nothing_and_counts_new_rooms() {
        let now = Instant::now();
        let id = Identity {
            instance: InstanceId(1),
            epoch: 1,
        };
        let mut hub = Hub::new(Config::default(), id, now).unwrap();
        match hub.join_many(&["a", "", "b"], "c", now) {
            Err((1, MemberError::InvalidRoom(_))) => {}
            other => panic!("expected the empty id at 1: {other:?}"),
        }
        assert!(hub.rooms_of("c").is_empty(), "nothing joined");
        assert!(matches!(
            hub.join_many(&["a"], "", now),
            Err((0, MemberError::InvalidConnection(_)))
        ));
        hub.join("a", "other", now).unwrap();
        assert_eq!(hub.join_many(&["a", "b", "a", "c/d"], "c", now), Ok(3));
        assert_eq!(hub.join_many(&["b"], "c", now), Ok(0));
        let rooms: Vec<&str> = hub.rooms_of("c").iter().map(|r| r.as_str()).collect();
        assert_eq!(rooms, ["a", "b", "c/d"]);
        // A long room id known before is shared, not allocated again (short ones are inline).
        let long = "a-room-id-longer-than-inline";
        hub.join(long, "other", now).unwrap();
        hub.join_many(&[long], "c", now).unwrap();
        let a = |conn: &str| {
            hub.rooms_of(conn)
                .iter()
                .find(|r| r.as_str() == long)
                .cloned()
                .unwrap()
        };
        assert!(!a("c").is_inline());
        assert!(a("c").ptr_eq(&a("other")));
        // And the connection has one slot however many rooms it is in.
        let slot = hub.conn_slot("c").unwrap();
        assert!(["a", "b", "c/d", long]
            .iter()
            .all(|room| hub.members(room).slots().any(|m| m == slot)));
        hub.begin_shutdown(now);
        assert_eq!(
            hub.join_many(&["z"], "c", now),
            Err((0, MemberError::Shutdown))
        );
    }
}
