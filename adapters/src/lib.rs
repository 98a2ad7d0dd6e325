//! # roomcast
//!
//! Many instances of a realtime (WebSocket) server acting as one: a message sent to a room on
//! any instance reaches every member of that room on every instance through Redis pub/sub.
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn demo() -> Result<(), roomcast::Error> {
//! use futures_util::StreamExt;
//! use roomcast::{Config, PubSubMessage};
//!
//! let rc = roomcast::connect(Config::from_url("redis://127.0.0.1:6379")?).await?;
//! let mut alice = rc.join("hub/abc", "alice").await?;   // a Stream of the room's messages
//! alice.wait_live().await;                               // Redis confirmed the subscription
//! let receivers = rc.publish(PubSubMessage::broadcast("hub/abc", "hi").excluding("bob")).await?;
//! let msg = alice.next().await.unwrap();
//! assert_eq!(&msg.data[..], b"hi");
//! rc.health_check(std::time::Duration::from_secs(2)).await?;
//! # let _ = receivers; Ok(()) }
//! ```
//!
//! The protocol lives in [`roomcast_core`] (sans-IO); this crate adds one driver loop written
//! against a small [`runtime::Runtime`] trait, with tokio and async-io (async-std, smol)
//! implementations, and the async handle API.
//!
//! # Contract
//!
//! What every roomcast instance promises, numbered so that tests can name the promise they
//! check (the simulation's `contract.rs` tests are named `c1_…` to `c10_…`; the end-to-end
//! tests against a real `redis-server` check the same promises over sockets).
//!
//! 1. **One order per room.** With the default [`DeliveryMode::Ordered`] every member,
//!    local or remote, receives a room's messages from the room's Redis channel, so all
//!    instances see them in the order Redis received them. With
//!    [`DeliveryMode::LocalFirst`] local members receive at publish time and the echo is
//!    dropped; order then holds per (publishing instance, room) only. One exception: a
//!    publish that was written but not confirmed when its link broke is written again after
//!    the reconnect; members that had it drop the copy, but a member that joined in between
//!    receives it at its later place.
//! 2. **At most once per member.** Receivers drop duplicates by (origin instance, room,
//!    sequence).
//! 3. **Sequences and gaps.** Each instance numbers its publishes per room when they are
//!    written to their link, and a room always uses the same publish link. A publish refused
//!    before it is written takes no number, so refusals never look like gaps. A jump in the
//!    numbers a member sees is reported as [`Event::Gap`] with the missing numbers; a new
//!    epoch (the origin restarted) is a new baseline, not a gap.
//! 4. **Publishes are never silently lost.** A publish is queued while its link is down, up
//!    to `Config::max_queued_publishes` and `Config::max_queued_bytes`; beyond that, or while
//!    its link's output is full (`Config::max_output_bytes`), it is refused at once with a
//!    typed error ([`Roomcast::publish`]) or waited for ([`Publisher`] as a `Sink`). An
//!    accepted publish ends as confirmed (with Redis's receiver count: subscribed Redis
//!    connections, i.e. instances, not members) or as [`Event::PublishFailed`]; refusals the
//!    driver finds after a [`Publisher`] batched them are [`Event::PublishRefused`]. Written
//!    but unconfirmed publishes are re-sent after a reconnect, or fail as "outcome unknown"
//!    when so configured. Every refusal is counted.
//! 5. **`exclude_connection`** names the sender's own connection, which lives on the
//!    origin instance, so it applies there only; on a message without a trailer (from a
//!    publisher built on the GraphWiz design) it applies on every instance.
//! 6. **Connection ids are per instance.** Presence entries and exclusions are qualified by
//!    the instance id: the same connection id on two instances is two connections.
//! 7. **Live means confirmed.** A room is live on an instance once Redis confirmed its
//!    subscription ([`Event::RoomLive`], `wait_live`); a message published before that is
//!    not promised to that instance. A join reports whether the room is live yet.
//! 8. **Outages are visible.** Link down and link up are events; link up carries the
//!    outage's length and the rooms that may have missed messages. A subscriber link that is
//!    connected but deaf is found by a probe through Redis within `Config::probe_timeout`
//!    and reopened.
//! 9. **A bad message is a reported drop, not an outage.** A message that does not decode,
//!    names another room than its channel, or is over `Config::max_frame_bytes` is dropped,
//!    counted and reported as [`Event::Dropped`] naming its room where the channel names
//!    one; the link stays up and the next message is delivered.
//! 10. **Memory is bounded.** Every buffer has a named limit: member queues
//!     ([`Options::member_queue_bytes`] and [`Options::member_queue`], with an [`Overflow`]
//!     policy whose drops are counted),
//!     bytes held per link for writing (`Config::max_output_bytes`, core and adapter
//!     together), queued and in-flight publishes (count and bytes), input frames
//!     (`Config::max_frame_bytes`).
//! 11. **Redis Cluster keeps every promise across topology changes.** With a
//!     `redis+cluster://` URL each room is subscribed once, on the master of its slot, and
//!     each publish goes there (`SPUBLISH`). When a slot moves or a shard fails over, the room
//!     is reported not live (2) and subscribed on the new owner, missed messages show up as
//!     gaps (3), a publish answered `-MOVED` is sent again to the new owner in its room's
//!     order (1) or fails with `PublishError::Redirected` (4), and the probe covers every
//!     subscriber link, also once its control channel's slot has moved (the link is reopened,
//!     `LinkError::ControlMoved`) (5). The core's `cluster_routing` tests and the simulation's cluster
//!     tests check this against a scripted and a model cluster; `cluster.rs` against a real
//!     one.
//!
//! # Backpressure
//!
//! Bytes on their way to Redis are bounded per link by `Config::max_output_bytes`, counting
//! what the core holds and what the driver's socket write queue holds together (the driver
//! takes a link's output only while that queue is short). When a room's link is full because
//! Redis or the network is not keeping up, [`Roomcast::publish`] fails at once with
//! `Error::Publish(PublishError::Backpressure { .. })` (nothing queued; retry later), while a
//! [`Publisher`] waits: its `send` does not complete and, as a `Sink`, its `poll_ready` stays
//! pending until the link drains. `Metrics::max_link_output`, `Metrics::buffered_output` (the
//! core) and `Metrics::adapter_output` (the driver's write queues) show where the bytes are.
//!
//! # Standalone
//!
//! [`Builder::standalone`] (or `roomcast::standalone` on tokio) runs an instance with no
//! Redis: the same API, rooms shared by this process only. It is the core's standalone hub
//! ([`roomcast_core::Hub::standalone`]) driven by the same driver code as a Redis-backed
//! instance, so the `Config`'s limits, the events, the metrics and the presence answers are
//! the same. The contract holds, several promises trivially: the instance is the whole
//! cluster, so its publish order is the room's order (1) and exclusion applies to its own
//! members (5); publishes carry the same trailers (2, 3) and are delivered and confirmed at
//! once, with receiver count 1 when the room has members here, else 0 (4); rooms are live at
//! once (7); with no link there is no outage to report (8) and nothing from Redis to drop
//! (9); the health check has no link to ping.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod driver;
mod error;
#[cfg(feature = "graphwiz")]
pub mod graphwiz;
mod handle;
mod queue;
#[cfg(feature = "cli")]
pub mod redis_server;
pub mod runtime;
#[cfg(feature = "cli")]
pub mod serve;
#[cfg(feature = "tls")]
pub mod tls;

use std::sync::Arc;

pub use driver::Driver;
pub use error::Error;
pub use handle::{
    Connection, EventStream, HealthReport, Membership, PubSubMessage, Publisher, RoomStream,
    Roomcast,
};
pub use queue::Overflow;
pub use roomcast_core as core;
pub use roomcast_core::{
    Config, ConnId, DeliveryMode, Event, Identity, InstanceId, Member, Message, MessageType,
    Metrics, PresenceChange, PresenceError, PresenceWhenDown, RoomId, RoomState, UnconfirmedPolicy,
};

use futures_channel::mpsc;
use roomcast_core::Hub;

/// What one queued message costs against [`Options::member_queue_bytes`] besides its payload:
/// its share of the `Arc<Message>` and its queue slot.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Adapter settings (the core's are in [`Config`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes queued per membership or connection, not yet taken by its stream, before the
    /// overflow policy applies (default 1 MiB), each message counted as its payload plus
    /// [`MESSAGE_OVERHEAD`] bytes. This is the main bound: what a server budgets per socket is
    /// bytes, and 1 MiB holds a burst of about 8,000 messages of 64 B or 950 of 1 KiB (the
    /// measurements behind the default are in BENCHMARKS.md, "Member queues"). A single
    /// message larger than the bound is still queued, alone. A stream takes what is queued in
    /// one batch and hands it out one by one, so at most twice this much is held per stream.
    pub member_queue_bytes: usize,
    /// Messages queued per membership or connection, not yet taken by its stream, before the
    /// overflow policy applies (default 65,536): a secondary cap on the count, for tiny
    /// payloads; [`Options::member_queue_bytes`] is the main bound.
    pub member_queue: usize,
    /// What a full membership queue does (default: drop the oldest, counted).
    pub overflow: Overflow,
    /// Events queued per [`EventStream`] before the oldest is dropped (default 1,024).
    pub event_queue: usize,
    /// Commands from handles queued for the driver before callers wait (default 4,096).
    pub command_queue: usize,
    /// Messages a [`Publisher`] used as a `Sink` gathers into one command to the driver
    /// before it hands them over (default 256; it also hands over on every flush).
    pub publish_batch: usize,
    /// TLS settings for `rediss://` (default: trust the Mozilla roots).
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<tls::rustls::ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            member_queue_bytes: 1 << 20,
            member_queue: 1 << 16,
            overflow: Overflow::DropOldest,
            event_queue: 1024,
            command_queue: 4096,
            publish_batch: 256,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Builds an instance: with Redis ([`Builder::new`]) or standalone ([`Builder::standalone`]).
#[derive(Debug, Clone)]
pub struct Builder {
    config: Config,
    /// No Redis: the core's standalone hub.
    standalone: bool,
    identity: Option<Identity>,
    options: Options,
}

impl Builder {
    /// An instance that shares rooms with others through the Redis in `config`.
    pub fn new(config: Config) -> Self {
        Builder {
            config,
            standalone: false,
            identity: None,
            options: Options::default(),
        }
    }

    /// An instance with no Redis: the same API, delivering within this process only. The
    /// `config`'s limits (id lengths, message size), delivery and presence settings apply as
    /// for any instance; its server, pool and timing settings have nothing to act on.
    pub fn standalone(config: Config) -> Self {
        Builder {
            standalone: true,
            ..Builder::new(config)
        }
    }

    /// Fixes the instance id and epoch (tests); by default both come from OS randomness.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Adapter settings.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The handle and the driver future, which the caller must spawn (or poll) on an
    /// executor where `runtime`'s timers and sockets work.
    pub fn build(self, runtime: Arc<dyn runtime::Runtime>) -> Result<(Roomcast, Driver), Error> {
        let identity = match self.identity {
            Some(id) => id,
            None => random_identity()?,
        };
        let mut config = self.config;
        if config.rng_seed == Config::default().rng_seed {
            config.rng_seed = identity.instance.0 ^ identity.epoch;
        }
        let hub = if self.standalone {
            Hub::standalone(config, identity, runtime.now())?
        } else {
            Hub::new(config, identity, runtime.now())?
        };
        let (tx, rx) = mpsc::channel(self.options.command_queue.max(1));
        let publish_batch = self.options.publish_batch;
        // Publishers hand the driver at most what one link may hold (one batch over).
        let gate = Arc::new(handle::PublishGate::new(hub.config().max_output_bytes));
        // What a Publisher checks in the caller's task.
        let limits = Arc::new(hub.config().clone());
        let driver = Driver::new(runtime, hub, self.options, rx, identity, gate.clone());
        Ok((
            Roomcast {
                tx,
                identity,
                publish_batch,
                gate,
                limits,
            },
            driver,
        ))
    }

    /// Builds on tokio, spawns the driver and waits until every link is ready (fails with the
    /// first link error, e.g. a wrong password or a refused connection).
    #[cfg(feature = "tokio")]
    pub async fn connect_tokio(self) -> Result<Roomcast, Error> {
        let (handle, driver) = self.build(Arc::new(runtime::tokio::TokioRuntime))?;
        tokio::spawn(driver);
        handle.wait_ready().await?;
        Ok(handle)
    }

    /// Builds on async-io, spawns the driver on async-std and waits until every link is
    /// ready.
    #[cfg(feature = "async-std")]
    pub async fn connect_async_std(self) -> Result<Roomcast, Error> {
        let (handle, driver) = self.build(Arc::new(runtime::async_io::AsyncIoRuntime))?;
        async_std::task::spawn(driver);
        handle.wait_ready().await?;
        Ok(handle)
    }
}

/// Connects on tokio with `config` and default options.
#[cfg(feature = "tokio")]
pub async fn connect(config: Config) -> Result<Roomcast, Error> {
    Builder::new(config).connect_tokio().await
}

/// Connects on tokio with `REDIS_URL`, `REDIS_CHANNEL_PREFIX` and `REDIS_POOL_SIZE`.
#[cfg(feature = "tokio")]
pub async fn from_env() -> Result<Roomcast, Error> {
    connect(config_from_env()?).await
}

/// A standalone instance on tokio (no Redis; delivery within this process), with
/// `config`'s limits. Fails only for an invalid `config` (or no OS randomness for its id).
#[cfg(feature = "tokio")]
pub fn standalone(config: Config) -> Result<Roomcast, Error> {
    let (handle, driver) =
        Builder::standalone(config).build(Arc::new(runtime::tokio::TokioRuntime))?;
    tokio::spawn(driver);
    Ok(handle)
}

/// Reads `REDIS_URL`, `REDIS_CHANNEL_PREFIX` and `REDIS_POOL_SIZE` from the environment;
/// an unparsable pool size falls back to the default with a warning in the log.
pub fn config_from_env() -> Result<Config, Error> {
    let (config, warnings) = Config::from_env_with(|k| std::env::var(k).ok())?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// A fresh identity from OS randomness.
pub fn random_identity() -> Result<Identity, Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        Error::Config(roomcast_core::ConfigError::BadValue {
            field: "identity",
            reason: format!("OS randomness unavailable ({e}); pass Builder::identity"),
        })
    })?;
    let (a, c) = b.split_at(8);
    Ok(Identity {
        instance: InstanceId(u64::from_le_bytes(a.try_into().unwrap_or_default())),
        epoch: u64::from_le_bytes(c.try_into().unwrap_or_default()),
    })
}

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
