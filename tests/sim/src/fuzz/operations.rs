//! Structured fuzzing, as quinn's `streams` target does it: an [`arbitrary`] sequence of
//! application commands, network faults, hostile input and clock jumps on up to three hubs
//! against the model Redis, with the invariants checked after every step.

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use super::checker::Checker;
use crate::{ModelConfig, Sim, Split};
use roomcast_core::{Config, DeliveryMode, Protocol, UnconfirmedPolicy};

/// Room ids the operations mostly use: plain, with `/`, `:` and `%` (escaped in channel
/// names) and non-ASCII.
pub const ROOMS: [&str; 5] = ["a", "hub/b", "x:y", "100%", "ü/€"];
/// Connection ids the operations mostly use.
pub const CONNS: [&str; 3] = ["1", "2", "3"];

/// An id: one of the usual ones, or any string (often invalid: empty, too long, control
/// characters), which the hub must refuse before changing anything.
#[derive(Debug, Clone, Arbitrary)]
pub enum Name {
    /// `ROOMS[i % 5]` or `CONNS[i % 3]`.
    Known(u8),
    /// Anything.
    Raw(String),
}

impl Name {
    pub(super) fn room(&self) -> &str {
        match self {
            Name::Known(i) => ROOMS[usize::from(*i) % ROOMS.len()],
            Name::Raw(s) => s,
        }
    }

    pub(super) fn conn(&self) -> &str {
        match self {
            Name::Known(i) => CONNS[usize::from(*i) % CONNS.len()],
            Name::Raw(s) => s,
        }
    }
}

/// The cluster and its configuration.
#[derive(Debug, Clone, Arbitrary)]
pub struct Setup {
    /// 1 to 3 instances.
    pub nodes: u8,
    /// RESP3 links (else RESP2).
    pub resp3: bool,
    /// `DeliveryMode::LocalFirst` (else `Ordered`).
    pub local_first: bool,
    /// `UnconfirmedPolicy::FailUnknown` (else `Resend`).
    pub fail_unknown: bool,
    /// Presence registration and queries.
    pub presence: bool,
    /// Presence events published on joins and leaves.
    pub presence_events: bool,
    /// Publish links, 1 to 3.
    pub pool: u8,
    /// `max_queued_publishes`, 1 to 16.
    pub max_queued: u8,
    /// `max_inflight_publishes`, 1 to 8.
    pub max_inflight: u8,
    /// `subscribe_batch`, 1 to 4.
    pub batch: u8,
    /// `max_subscriptions_in_flight`, 1 to 8.
    pub subs_in_flight: u8,
    /// 256-byte envelopes (else the default 1 MiB).
    pub small_envelopes: bool,
    /// Input pieces of this many bytes (0: whole).
    pub chunk: u8,
}

impl Setup {
    fn config(&self) -> Config {
        let mut c = Config {
            pool_size: 1 + usize::from(self.pool % 3),
            delivery: if self.local_first {
                DeliveryMode::LocalFirst
            } else {
                DeliveryMode::Ordered
            },
            unconfirmed: if self.fail_unknown {
                UnconfirmedPolicy::FailUnknown
            } else {
                UnconfirmedPolicy::Resend
            },
            presence: self.presence,
            presence_events: self.presence_events,
            max_queued_publishes: 1 + usize::from(self.max_queued % 16),
            max_inflight_publishes: 1 + usize::from(self.max_inflight % 8),
            subscribe_batch: 1 + usize::from(self.batch % 4),
            max_subscriptions_in_flight: 1 + usize::from(self.subs_in_flight % 8),
            ..Config::default()
        };
        if self.small_envelopes {
            c.max_envelope_bytes = 256;
            c.max_frame_bytes = 256 + 1024;
            c.max_output_bytes = 64 << 10;
        }
        c.server.protocol = if self.resp3 {
            Protocol::Resp3
        } else {
            Protocol::Resp2
        };
        c
    }
}

/// One step. `node` and `link` are taken modulo the numbers of instances and links.
#[derive(Debug, Clone, Arbitrary)]
#[allow(missing_docs)] // The fields are named for what they are.
pub enum Op {
    /// `Hub::join`.
    Join { node: u8, room: Name, conn: Name },
    /// `Hub::leave`.
    Leave { node: u8, room: Name, conn: Name },
    /// `Hub::disconnect`.
    Disconnect { node: u8, conn: Name },
    /// `Hub::publish` of a tagged message of about `len` bytes.
    Publish {
        node: u8,
        room: Name,
        exclude: Option<Name>,
        len: u16,
    },
    /// `Hub::ping`.
    Ping { node: u8 },
    /// A presence query for a room.
    Presence { node: u8, room: Name },
    /// `Hub::begin_shutdown`.
    Shutdown { node: u8 },
    /// The server closes a link.
    Kill { node: u8, link: u8 },
    /// The server stops (or resumes) serving a link.
    Stall { node: u8, link: u8, on: bool },
    /// What the server sends a link is lost (or no longer).
    Deafen { node: u8, link: u8, on: bool },
    /// New connections fail (or succeed again).
    Refuse(bool),
    /// The server restarts: every connection closes, keys and scripts are gone.
    Restart,
    /// Every subscribe confirmation comes twice (or once again).
    DuplicateConfirmations(bool),
    /// Unsubscribe confirmations come in a shuffled order (or in order again).
    ShuffleUnsubscribes(Option<u64>),
    /// Time passes.
    Advance { ms: u16 },
    /// One round of the network without the clock.
    Step,
    /// Hostile: someone else publishes any payload on a room's channel.
    ForeignPublish { room: Name, payload: Vec<u8> },
    /// Hostile: these bytes arrive on a link as if Redis sent them.
    Inject { node: u8, link: u8, bytes: Vec<u8> },
}

/// Fuzz target: a [`Setup`] and up to 256 [`Op`]s decoded from `data` with
/// [`arbitrary`], run by [`run_operations`]. With `ROOMCAST_FUZZ_DEBUG` set in the
/// environment it prints them first, for triage; with `ROOMCAST_ORACLE_STATS` set,
/// [`run_operations`] prints how the oracle's obligations ended.
pub fn operations(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let ops: Vec<Op> = super::decode_ops(&mut u, 256);
    if std::env::var_os("ROOMCAST_FUZZ_DEBUG").is_some() {
        eprintln!("{setup:#?}\n{ops:#?}");
    }
    run_operations(&setup, &ops);
}

/// Runs the operations and checks, after every one of them:
/// - a refused command changed nothing, an accepted one changed exactly the membership it
///   names, and commands after shutdown are refused;
/// - the gauges agree with the membership, the delivery, byte and publish counters agree
///   with counts the checker and the harness made themselves, and nothing buffered exceeds
///   its limit;
/// - every publish outcome matches one accepted publish, at most once;
/// - the delivery contract as the [`crate::oracle`] checks it: deliveries go only to
///   current members (never the excluded one), carry exactly what was published to that
///   room, at most once per membership and in Redis's order, and every message a hub took
///   in reached every member it was owed to (hostile input switches off only what it can
///   forge);
///
/// and at the end, after every fault is healed and time has passed: every message Redis
/// executed reached every member it was owed to (or an event named the room), every link is
/// up, Redis has exactly the channels of the rooms with members, every room with members is
/// live, every accepted publish has had its outcome, and after `close` nothing is left.
pub fn run_operations(setup: &Setup, ops: &[Op]) {
    let n = 1 + usize::from(setup.nodes % 3);
    let config = setup.config();
    let mut c = Sim::new(n, ModelConfig::default(), |_| config.clone());
    c.split = match setup.chunk {
        0 => Split::Whole,
        k => Split::Chunks(usize::from(k)),
    };
    c.observe();
    let mut checker = Checker::new(config, n);
    c.advance(Duration::from_millis(1));
    checker.check(&mut c);
    for op in ops {
        checker.apply(&mut c, op);
        checker.check(&mut c);
    }
    checker.finish(&mut c);
    if std::env::var_os("ROOMCAST_ORACLE_STATS").is_some() {
        eprintln!("{:?}", checker.stats());
    }
}
