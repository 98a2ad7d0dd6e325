//! S7, rooms on a Redis Cluster while the topology changes: rooms spread over every shard,
//! a steady paced stream of messages into them (message `i` to room `i mod rooms`), and in
//! the middle of it (a) the slots of some rooms migrate to another master
//! (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE` of the slots' keys, `SETSLOT … NODE`
//! on the target, the source and every other master) or (b) a shard fails over by hand
//! (`CLUSTER FAILOVER` on its replica). Per system: messages lost before and after the event
//! (published, never delivered), publishes that failed, and for the rooms the event touched
//! how long until delivery resumed for good ("live again"), or that it never did within the
//! observation window.
//!
//! Runs in the orchestrating process, which owns the cluster (the event needs it); each
//! system's clients run on nodes (threads with a runtime) of their own, as elsewhere.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roomcast_core::cluster::{key_slot, Slot};
use roomcast_tests::{Failover, RedisCluster};

use super::cluster::slot_of;
use super::common::{now_ns, parse_payload, payload, Job, Pacer, Res};

/// The topology change of one S7 run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The slots of up to [`MIGRATED_SLOTS`] rooms move from one master to another.
    Migration,
    /// `CLUSTER FAILOVER` (manual, coordinated) of one shard.
    Failover,
}

impl Change {
    /// The variant name in results.
    pub fn name(self) -> &'static str {
        match self {
            Change::Migration => "slot-migration",
            Change::Failover => "manual-failover",
        }
    }
}

/// Slots moved in a migration run (each holding at least one room).
pub const MIGRATED_SLOTS: usize = 8;

/// Counts and times of S7.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rooms (spread over every shard by their names' slots).
    pub rooms: usize,
    /// Messages per second, over all rooms.
    pub rate: f64,
    /// Steady traffic before the event, after every room had a delivery.
    pub before: Duration,
    /// How long after the event completes the rooms it touched may take to come back:
    /// a room not delivering again by then is reported as never live again (within it).
    pub observe: Duration,
    /// Traffic kept flowing once every touched room is back (or the window is over).
    pub after: Duration,
}

/// Per message: when it was handed to the system, when it first arrived, and whether its
/// publish failed.
#[derive(Debug)]
pub struct Ledger {
    sent_ns: Vec<AtomicU64>,
    arrived_ns: Vec<AtomicU64>,
    failed: Vec<AtomicBool>,
    unheard: Vec<AtomicBool>,
    /// Arrivals of a message that had arrived before.
    pub duplicates: AtomicU64,
    /// Payloads that could not be read or were out of range.
    pub bad: AtomicU64,
}

impl Ledger {
    /// For message numbers `0..n`.
    pub fn new(n: u64) -> Arc<Ledger> {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Arc::new(Ledger {
            sent_ns: v(),
            arrived_ns: v(),
            failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            unheard: (0..n).map(|_| AtomicBool::new(false)).collect(),
            duplicates: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        })
    }

    /// A payload arrived at the subscriber.
    pub fn arrived(&self, p: &[u8]) {
        let slot = parse_payload(p).and_then(|(seq, _)| self.arrived_ns.get(seq as usize));
        match slot {
            Some(a) => {
                let t = now_ns().max(1);
                if a.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Message `seq`'s publish failed (the system said so).
    pub fn failed(&self, seq: u64) {
        if let Some(f) = self.failed.get(seq as usize) {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// Redis answered message `seq`'s publish with 0 receivers: no subscriber of its channel
    /// on the node that answered (the peers' SPUBLISH replies tell; roomcast's publisher
    /// does not report them per message).
    #[cfg_attr(not(feature = "peers"), expect(dead_code))]
    pub fn unheard(&self, seq: u64) {
        if let Some(f) = self.unheard.get(seq as usize) {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// When message `seq` arrived ([`now_ns`]), if it did.
    pub fn arrival(&self, seq: u64) -> Option<u64> {
        let t = self.arrived_ns.get(seq as usize)?.load(Ordering::Relaxed);
        (t != 0).then_some(t)
    }

    fn sent(&self, seq: u64) -> u64 {
        self.sent_ns[seq as usize].load(Ordering::Relaxed)
    }

    fn is_failed(&self, seq: u64) -> bool {
        self.failed[seq as usize].load(Ordering::Relaxed)
    }
}

/// One system under test: its subscriber has every room subscribed (and live) when it is
/// handed over; `send` publishes a batch of (message number, room, payload) without waiting
/// for it, recording failures in the ledger.
pub trait Subject: Send {
    /// The Redis channel of room `i` (its slot decides its shard).
    fn channel(&self, room: usize) -> String;
    /// Hands a batch over for publishing.
    fn send(&mut self, batch: Vec<(u64, usize, Bytes)>);
    /// Adds what only this system can tell (events, unsolicited pushes) to `res`; `touched`
    /// are the rooms the change touched, `event_ns` when it began, `total` the messages.
    fn report(&mut self, res: &mut Res, touched: &[usize], event_ns: u64, total: u64);
}

/// The job of one S7 run (for the systems' own start-up and for the result's fields).
pub fn job(system: &str, change: Change, plan: &Plan, cluster: &RedisCluster, prefix: &str) -> Job {
    Job {
        scenario: "S7".into(),
        system: system.into(),
        variant: change.name().into(),
        size: 64,
        rooms: plan.rooms,
        count: (plan.rate * max_secs(plan)) as u64,
        limit: plan.before + plan.observe + plan.after,
        url: cluster.url(),
        server_pid: None,
        rate: plan.rate,
        receivers: 1,
        members: 0,
        window: 0,
        clients: 1,
        queue: 0,
        queue_bytes: 0,
        prefix: prefix.into(),
        nodes: cluster
            .ports()
            .into_iter()
            .map(|port| super::common::ClusterNode {
                port,
                pid: cluster.node(port).pid(),
            })
            .collect(),
    }
}

/// The most seconds a run publishes: the warm-up bound, the phases and the event's own
/// bound (a failover may take up to the harness's settle timeout).
fn max_secs(plan: &Plan) -> f64 {
    (WARM_UP
        + plan.before
        + plan.observe
        + plan.after
        + roomcast_tests::redis_cluster::SETTLE_TIMEOUT)
        .as_secs_f64()
}

/// How long every room may take to deliver its first message.
const WARM_UP: Duration = Duration::from_secs(20);

/// How long arrivals are awaited after the last message was handed over.
const DRAIN: Duration = Duration::from_millis(1500);

/// Which rooms the change touched, and what it was.
struct Planned {
    touched: Vec<usize>,
    what: String,
}

/// Picks the rooms a migration moves: the slots of up to [`MIGRATED_SLOTS`] rooms on the
/// master of room 0's slot, moved to the next master; returns (source, target, slots).
fn plan_migration(cluster: &mut RedisCluster, channels: &[String]) -> (u16, u16, Vec<Slot>) {
    let source = cluster.master_port_of(key_slot(channels[0].as_bytes()));
    let masters = cluster.masters();
    let at = masters.iter().position(|&m| m == source).unwrap_or(0);
    let target = masters[(at + 1) % masters.len()];
    let t = cluster.topology();
    let mut slots: Vec<Slot> = Vec::new();
    for c in channels {
        let s = key_slot(c.as_bytes());
        let on_source = t.master_of(s).and_then(|m| m.port) == Some(source);
        if on_source && !slots.contains(&s) {
            slots.push(s);
            if slots.len() == MIGRATED_SLOTS {
                break;
            }
        }
    }
    (source, target, slots)
}

/// Runs one S7 run of `subject` with `change`; `failover_shard` picks the shard a failover
/// run takes over (runs rotate through the shards: a shard's masters refuse to vote on it
/// again for a while). Returns the result line.
pub fn run(
    cluster: &mut RedisCluster,
    job: &Job,
    plan: &Plan,
    change: Change,
    failover_shard: usize,
    subject: Box<dyn Subject>,
    ledger: Arc<Ledger>,
) -> Res {
    let mut res = job.result();
    let rooms = plan.rooms.max(1);
    let channels: Vec<String> = (0..rooms).map(|i| subject.channel(i)).collect();
    let shards: Vec<u16> = cluster.masters();
    let mut per_shard = vec![0u64; shards.len()];
    {
        let t = cluster.topology();
        for c in &channels {
            let s = key_slot(c.as_bytes());
            let m = t.master_of(s).and_then(|m| m.port);
            if let Some(k) = shards.iter().position(|&p| Some(p) == m) {
                per_shard[k] += 1;
            }
        }
    }
    res.set("rooms_per_shard", serde_json::json!(per_shard));

    // The pacer runs on a thread of its own until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let handed = Arc::new(AtomicU64::new(0));
    let pacer = Pacer {
        rate: plan.rate,
        count: job.count,
    };
    let thread = {
        let (stop, handed, ledger) = (stop.clone(), handed.clone(), ledger.clone());
        let mut subject = subject;
        let deadline = Instant::now() + Duration::from_secs_f64(max_secs(plan));
        std::thread::spawn(move || {
            let stats = pacer.run(deadline, |range, _| {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                let now = now_ns();
                let batch = range
                    .clone()
                    .map(|i| {
                        ledger.sent_ns[i as usize].store(now, Ordering::Relaxed);
                        (i, (i % rooms as u64) as usize, payload(i, now, 64))
                    })
                    .collect();
                subject.send(batch);
                handed.store(range.end, Ordering::Relaxed);
                true
            });
            (subject, stats)
        })
    };

    // Before: every room delivered once, then steady traffic.
    let t0 = Instant::now();
    let all_rooms_seen = || {
        let n = handed.load(Ordering::Relaxed);
        (0..rooms).all(|r| {
            (r as u64..n)
                .step_by(rooms)
                .any(|i| ledger.arrival(i).is_some())
        })
    };
    let mut warm = false;
    while t0.elapsed() < WARM_UP {
        if all_rooms_seen() {
            warm = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    res.set("all_rooms_delivered_before", warm);
    std::thread::sleep(plan.before);

    // The change.
    let planned;
    let event_ns;
    match change {
        Change::Migration => {
            let (source, target, slots) = plan_migration(cluster, &channels);
            let touched: Vec<usize> = (0..rooms)
                .filter(|&r| slots.iter().any(|s| s.get() == slot_of(&channels[r])))
                .collect();
            for &s in &slots {
                cluster.begin_slot_move(s, source, target);
                cluster.migrate_keys(s, source, target);
            }
            // The subscribers of a slot lose it when the source learns the move, at its
            // SETSLOT NODE (the first finish below sets it on the target, then the source).
            event_ns = now_ns();
            for &s in &slots {
                cluster.finish_slot_move(s, source, target);
            }
            planned = Planned {
                touched,
                what: format!(
                    "{} slot(s) {:?} from {source} to {target}",
                    slots.len(),
                    slots.iter().map(|s| s.get()).collect::<Vec<_>>()
                ),
            };
        }
        Change::Failover => {
            let master = shards[failover_shard % shards.len()];
            let replica = cluster.replicas_of(master)[0];
            let t = cluster.topology();
            let touched: Vec<usize> = (0..rooms)
                .filter(|&r| {
                    let s = key_slot(channels[r].as_bytes());
                    t.master_of(s).and_then(|m| m.port) == Some(master)
                })
                .collect();
            event_ns = now_ns();
            cluster.failover(replica, Failover::Manual);
            planned = Planned {
                touched,
                what: format!("CLUSTER FAILOVER on {replica} (replica of {master})"),
            };
        }
    }
    let done_ns = now_ns();
    res.set("change", planned.what.as_str());
    res.set("rooms_touched", planned.touched.len() as u64);
    res.setf("change_ms", (done_ns - event_ns) as f64 / 1e6);

    // After: until every touched room delivered a message sent after the change, or the
    // observation window is over; then a little more traffic.
    let back = |r: usize| {
        let n = handed.load(Ordering::Relaxed);
        (r as u64..n)
            .step_by(rooms)
            .filter(|&i| ledger.sent(i) >= done_ns)
            .any(|i| ledger.arrival(i).is_some())
    };
    // Every system publishes for the same time after the change (the whole window), so that
    // the counts of lost messages compare; the touched rooms' recovery is read from the
    // ledger afterwards.
    let observe_until = Instant::now() + plan.observe;
    let mut all_back_ms = None;
    while Instant::now() < observe_until {
        if all_back_ms.is_none() && planned.touched.iter().all(|&r| back(r)) {
            all_back_ms = Some(now_ns().saturating_sub(event_ns) as f64 / 1e6);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(plan.after);
    stop.store(true, Ordering::Relaxed);
    let (mut subject, pacer_stats) = match thread.join() {
        Ok(x) => x,
        Err(_) => {
            res.set("error", "the pacer thread panicked");
            return res;
        }
    };
    let total = handed.load(Ordering::Relaxed);
    // Drain: what is on its way arrives (or never will).
    let drain_from = Instant::now();
    while drain_from.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(20));
    }
    res.setf("pacer_max_late_us", pacer_stats.max_late_us);
    res.setf("all_touched_delivering_ms", all_back_ms.unwrap_or(f64::NAN));
    account(
        &mut res,
        &ledger,
        total,
        rooms,
        &planned.touched,
        event_ns,
        done_ns,
        plan,
    );
    subject.report(&mut res, &planned.touched, event_ns, total);
    res.set("load1", super::common::load_average());
    res
}

/// Losses and recovery times from the ledger (see the module's documentation).
#[allow(clippy::too_many_arguments)]
fn account(
    res: &mut Res,
    ledger: &Ledger,
    total: u64,
    rooms: usize,
    touched: &[usize],
    event_ns: u64,
    done_ns: u64,
    plan: &Plan,
) {
    let (mut ok, mut failed, mut delivered) = (0u64, 0u64, 0u64);
    let (mut lost_before, mut lost_after, mut lost_untouched) = (0u64, 0u64, 0u64);
    // Lost messages Redis said reached no subscriber (the subscription was gone on the
    // server), against those it delivered to a subscriber that never handed them over.
    let (mut lost_unheard, mut lost_untouched_unheard) = (0u64, 0u64);
    let (mut failed_after, mut lost_touched_after) = (0u64, 0u64);
    // Send times of the first and last message lost in an untouched room.
    let mut untouched_span: Option<(u64, u64)> = None;
    let is_touched = |r: usize| touched.contains(&r);
    for i in 0..total {
        let room = (i % rooms as u64) as usize;
        if ledger.is_failed(i) {
            failed += 1;
            if ledger.sent(i) >= event_ns {
                failed_after += 1;
            }
            continue;
        }
        ok += 1;
        if ledger.arrival(i).is_some() {
            delivered += 1;
            continue;
        }
        if ledger.unheard[i as usize].load(Ordering::Relaxed) {
            lost_unheard += 1;
        }
        if ledger.sent(i) < event_ns {
            lost_before += 1;
        } else {
            lost_after += 1;
            if is_touched(room) {
                lost_touched_after += 1;
            }
        }
        if !is_touched(room) {
            lost_untouched += 1;
            if ledger.unheard[i as usize].load(Ordering::Relaxed) {
                lost_untouched_unheard += 1;
            }
            let t = ledger.sent(i);
            untouched_span = Some(untouched_span.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        }
    }
    res.set("published", total);
    res.set("publish_ok", ok);
    res.set("expected", ok);
    res.set("publish_failed", failed);
    res.set("publish_failed_after_event", failed_after);
    res.set("delivered", delivered);
    res.set("lost_before_event", lost_before);
    res.set("lost_after_event", lost_after);
    res.set("lost_after_event_touched_rooms", lost_touched_after);
    res.set("lost_untouched_rooms", lost_untouched);
    res.set("lost_with_no_subscriber_on_server", lost_unheard);
    res.set(
        "lost_untouched_with_no_subscriber_on_server",
        lost_untouched_unheard,
    );
    if let Some((first, last)) = untouched_span {
        let rel = |t: u64| (t as f64 - event_ns as f64) / 1e6;
        res.setf("lost_untouched_first_ms", rel(first));
        res.setf("lost_untouched_last_ms", rel(last));
    }
    res.set("duplicates", ledger.duplicates.load(Ordering::Relaxed));
    // Per touched room: delivery resumed for good with the first message after its last
    // loss; "never" when its last message was lost too.
    let mut live_again_ms: Vec<f64> = Vec::new();
    let mut never = 0u64;
    for &r in touched {
        let msgs: Vec<u64> = (r as u64..total)
            .step_by(rooms)
            .filter(|&i| !ledger.is_failed(i))
            .collect();
        match msgs.iter().rposition(|&i| ledger.arrival(i).is_none()) {
            None => live_again_ms.push(0.0),
            Some(k) if k + 1 == msgs.len() => never += 1,
            Some(k) => {
                let resumed = ledger.sent(msgs[k + 1]);
                live_again_ms.push(resumed.saturating_sub(event_ns) as f64 / 1e6);
            }
        }
    }
    live_again_ms.sort_by(f64::total_cmp);
    res.set("rooms_never_live_again", never);
    res.setf(
        "never_within_s",
        plan.observe.as_secs_f64() + plan.after.as_secs_f64(),
    );
    if never == 0 {
        if let Some(&max) = live_again_ms.last() {
            res.setf("live_again_ms_max", max);
            res.setf(
                "live_again_ms_median",
                live_again_ms[live_again_ms.len() / 2],
            );
        }
    } else {
        res.set("live_again_ms_max", serde_json::Value::Null);
    }
    res.setf("event_to_done_ms", (done_ns - event_ns) as f64 / 1e6);
    res.set(
        "accounted",
        lost_before == 0 && lost_untouched == 0 && never == 0,
    );
}
