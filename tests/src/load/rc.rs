//! The scenarios through roomcast: every instance on a current-thread tokio runtime of its
//! own (its own thread), with its own links.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use roomcast::{
    Builder, Config, Connection, Event, Membership, MessageType, Options, PubSubMessage, Roomcast,
};

use roomcast::core::LinkId;

use super::cluster::BusSnapshot;
use super::common::{
    add_latency, await_deliveries, now_ns, parse_payload, payload, record_deliveries,
    record_server_cost, settle, tally, wait_for, Flow, Job, Node, Pacer, Phase, Res, Tracker,
    Usage, STALL,
};

/// One roomcast instance and its node.
struct Inst {
    rc: Roomcast,
    name: String,
    node: Node,
}

fn config(job: &Job, name: &str) -> Result<Config, String> {
    let mut c = Config::from_url(&job.url).map_err(|e| e.to_string())?;
    c.channel_prefix = job.prefix.clone();
    c.client_name = format!("{}-{name}", job.prefix);
    // The peers do pub/sub only: S1–S3 compare the same work, so presence (a Redis hash
    // write per join) is off there unless the variant asks for it; S4–S6 use the defaults.
    c.presence = match job.scenario.as_str() {
        "S1" | "S2" | "S3" => job.variant.contains("+presence"),
        _ => c.presence,
    };
    // The same connections as a peer: one to publish, one to subscribe (the default pool of
    // ten publishing links splits every batch ten ways when rooms spread over them).
    if matches!(job.scenario.as_str(), "S1" | "S2" | "S3") {
        c.pool_size = 1;
    }
    Ok(c)
}

fn start(job: &Job, name: &str, options: Options) -> Result<Inst, String> {
    let node = Node::start(name);
    let cfg = config(job, name)?;
    let rc = node
        .run(async move { Builder::new(cfg).options(options).connect_tokio().await })
        .map_err(|e| format!("instance {name}: {e}"))?;
    Ok(Inst {
        rc,
        name: name.to_string(),
        node,
    })
}

/// Member queues of `member_queue` messages, with no byte bound: the scenarios size their
/// queues by count (S8 sets a byte bound through [`queue_options`]).
fn options(member_queue: usize) -> Options {
    Options {
        member_queue,
        member_queue_bytes: usize::MAX,
        event_queue: 1 << 16,
        ..Options::default()
    }
}

/// [`options`], plus the job's byte bound if it has one.
fn queue_options(job: &Job, member_queue: usize) -> Options {
    let mut o = options(member_queue);
    if job.queue_bytes > 0 {
        o.member_queue_bytes = job.queue_bytes;
    }
    o
}

/// A connection's queue that holds a whole window: one connection receives every room's
/// messages, and the closed loop never has more than a window undelivered.
fn window_queue(job: &Job) -> usize {
    (job.window as usize * 2).max(1024)
}

/// An instance's metrics (`None` if it no longer answers).
fn metrics(inst: &Inst) -> Option<roomcast::Metrics> {
    let rc = inst.rc.clone();
    inst.node.run(async move { rc.metrics().await }).ok()
}

fn shutdown(insts: Vec<Inst>) {
    for i in &insts {
        let rc = i.rc.clone();
        let _ = i
            .node
            .run(async move { rc.shutdown(Duration::from_secs(2)).await });
    }
    drop(insts);
}

/// A broadcast to `room`: the caller keeps each room it publishes to often as an `Arc<str>`
/// and hands a clone over (no allocation per message for the room's name).
fn message(room: Arc<str>, data: Bytes) -> PubSubMessage {
    PubSubMessage {
        room_id: room,
        message_type: MessageType::Broadcast,
        data,
        exclude_connection: None,
        timestamp: 0,
    }
}

/// Rooms per `Connection::join_many` call (the peers subscribe in chunks of 10,000 too).
const JOIN_CHUNK: usize = 10_000;

/// Attaches connection `conn` on `inst` (one stream for all its rooms, as a WebSocket
/// server would), joins `rooms` in chunks and waits until every room is live.
fn join_all(inst: &Inst, rooms: Vec<String>, conn: String) -> Result<Connection, String> {
    let rc = inst.rc.clone();
    inst.node.run(async move {
        let c = rc
            .connection(&conn)
            .await
            .map_err(|e| format!("attach: {e}"))?;
        for chunk in rooms.chunks(JOIN_CHUNK) {
            c.join_many(chunk).await.map_err(|e| format!("join: {e}"))?;
        }
        c.wait_live().await.map_err(|e| format!("wait_live: {e}"))?;
        Ok(c)
    })
}

/// What a consumer saw of its own connection's queue.
#[derive(Debug, Default)]
struct QueueWatch {
    /// The most messages seen waiting (queued plus taken but not yet handed out), sampled
    /// every 16 messages.
    peak: AtomicU64,
    /// The connection's count of messages dropped because its queue was full.
    dropped: AtomicU64,
}

/// Consumes a connection's stream until it ends (the instance shuts down): records every
/// message in `tracker` (and its latency when `lat`), including any beyond the expected
/// number, so that a trailing duplicate is seen.
fn consume(
    inst: &Inst,
    mut m: Connection,
    tracker: Arc<Tracker>,
    flow: Arc<Flow>,
    lat: Option<Arc<Mutex<Vec<u64>>>>,
    watch: Option<Arc<QueueWatch>>,
) {
    inst.node.rt.spawn(async move {
        let mut k = 0u64;
        while let Some(msg) = m.next().await {
            match parse_payload(&msg.data) {
                Some((seq, sent)) => {
                    tracker.record(seq);
                    if let Some(l) = &lat {
                        l.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(now_ns().saturating_sub(sent));
                    }
                }
                None => {
                    tracker.bad.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(w) = &watch {
                if k % 16 == 0 {
                    w.peak.fetch_max(m.queued() as u64 + 1, Ordering::Relaxed);
                }
                w.dropped.store(m.dropped(), Ordering::Relaxed);
            }
            k += 1;
            flow.delivered();
        }
    });
}

/// Runs one job through roomcast.
pub fn run(job: &Job) -> Result<Vec<Res>, String> {
    match job.scenario.as_str() {
        "S1" => throughput(job, false),
        "S2" => throughput(job, true),
        "S3" => many_rooms(job),
        "S4" => fan_out(job),
        "S5" => churn(job),
        "S6" => recovery(job),
        "S8" => throughput(job, true),
        s => Err(format!("unknown scenario {s}")),
    }
}

/// S1, S2 and S8: a publisher on instance A, one member per room on each receiving instance.
/// Closed loop (S1, S2 one in flight) on node A; paced (S2 paced, S8) from the precise pacer
/// on this thread.
fn throughput(job: &Job, latency: bool) -> Result<Vec<Res>, String> {
    let n = job.count;
    let rooms: Vec<String> = (0..job.rooms.max(1)).map(|i| job.room(i)).collect();
    // What the publisher holds: each room's name, shared.
    let names: Vec<Arc<str>> = rooms.iter().map(|room| Arc::from(room.as_str())).collect();
    let r = rooms.len() as u64;
    let queue = if job.queue > 0 {
        job.queue
    } else {
        window_queue(job)
    };
    let a = start(job, "a", queue_options(job, queue))?;
    let mut receivers = Vec::new();
    for k in 0..job.receivers.max(1) {
        receivers.push(start(job, &format!("r{k}"), queue_options(job, queue))?);
    }
    let flow = Flow::new(receivers.len() as u64, job.window);
    let trackers: Vec<Arc<Tracker>> = receivers.iter().map(|_| Tracker::new(n)).collect();
    let lat = latency.then(|| Arc::new(Mutex::new(Vec::new())));
    let watches: Vec<Arc<QueueWatch>> = receivers.iter().map(|_| Arc::default()).collect();
    for ((inst, tracker), watch) in receivers.iter().zip(&trackers).zip(&watches) {
        // One member (connection) per receiving instance, in every room: the counterpart of
        // a peer's one subscriber connection.
        let member = join_all(inst, rooms.clone(), format!("{}-member", inst.name))?;
        let w = Some(watch.clone());
        consume(inst, member, tracker.clone(), flow.clone(), lat.clone(), w);
    }
    let mut phase = Phase::begin(job);
    let deadline = phase.deadline;
    let published = phase.published.clone();
    if let Some(pacer) = Pacer::of(job) {
        // Open loop: every message due by now goes to the driver as one batch; each one's
        // latency counts from when it was due.
        let mut p = a.rc.publisher();
        let size = job.size;
        let rt = a.node.rt.clone();
        phase.pacer = Some(pacer.run(deadline, |range, base| {
            let k = range.end - range.start;
            let batch = range.map(|i| {
                let room = names[(i % r) as usize].clone();
                message(room, payload(i, base + pacer.due_ns(i), size))
            });
            let ok = rt.block_on(p.send_batch(batch)).is_ok();
            if ok {
                published.fetch_add(k, Ordering::Relaxed);
            }
            ok
        }));
    } else {
        let rc = a.rc.clone();
        let flow = flow.clone();
        let published = published.clone();
        let (size, one, names) = (job.size, latency, names.clone());
        a.node.rt.spawn(async move {
            let tdeadline = tokio::time::Instant::from_std(deadline);
            let mut p = rc.publisher();
            // The send time only where latency is measured (one in flight).
            let msg = |i: u64| {
                let sent = if one { now_ns() } else { 0 };
                message(names[(i % r) as usize].clone(), payload(i, sent, size))
            };
            if one {
                // One in flight: each message alone, the next once every receiver has it.
                for i in 0..n {
                    if p.send(msg(i)).await.is_err() {
                        break;
                    }
                    published.fetch_add(1, Ordering::Relaxed);
                    if !flow.wait_done(i, tdeadline).await {
                        break;
                    }
                }
                return;
            }
            // Closed loop: batches by the window's rule, each handed over at once (the
            // peers send each batch as one pipeline).
            let mut first = 0;
            while first < n {
                let Some(end) = flow.next_batch(first, n, tdeadline).await else {
                    break;
                };
                if p.send_batch((first..end).map(msg)).await.is_err() {
                    break;
                }
                published.fetch_add(end - first, Ordering::Relaxed);
                first = end;
            }
        });
    }
    let expected = n * receivers.len() as u64;
    let dropped = || {
        watches
            .iter()
            .map(|w| w.dropped.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let complete = if job.scenario == "S8" {
        // Drops are expected here (that is the measurement): done when every message was
        // delivered or counted as dropped.
        let progress = || flow.deliveries() + dropped();
        wait_for(deadline, STALL, progress, || progress() >= expected)
    } else {
        await_deliveries(&flow, expected, deadline)
    };
    let mut res = job.result();
    let unique = phase.finish(&mut res, &trackers, expected, complete);
    let peak = watches
        .iter()
        .map(|w| w.peak.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    res.set("queue_peak", peak);
    res.set("queue_peak_bytes", peak * job.size as u64);
    res.set("dropped", dropped());
    // Publishes the sending instance refused (its queue full) or lost: they never left it.
    let am = metrics(&a);
    res.set(
        "publish_refused",
        am.as_ref().map_or(0, |m| m.publish_refused),
    );
    res.set(
        "publish_failed",
        am.as_ref().map_or(0, |m| m.publish_failed),
    );
    // What reached the receiving instances and was handed to the member queues.
    let handed: u64 = receivers
        .iter()
        .filter_map(metrics)
        .map(|m| m.member_deliveries)
        .sum();
    res.set("handed_to_members", handed);
    if job.scenario == "S8" {
        res.setf(
            "dropped_pct",
            dropped() as f64 * 100.0 / expected.max(1) as f64,
        );
        // Every message that reached the instance and not the member was counted as dropped.
        res.set(
            "drops_account_for_losses",
            handed.saturating_sub(unique) == dropped(),
        );
    }
    if let Some(l) = lat {
        let mut l = std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner()));
        if let Ok(path) = std::env::var("ROOMCAST_LOAD_DUMP") {
            let text: Vec<String> = l.iter().map(|x| x.to_string()).collect();
            let _ = std::fs::write(path, text.join("\n"));
        }
        add_latency(&mut res, &mut l);
    }
    let mut insts = vec![a];
    insts.extend(receivers);
    shutdown(insts);
    Ok(vec![res])
}

/// S3: instance B joins `rooms` rooms; time until all live, memory per room, then one
/// message per room from instance A.
fn many_rooms(job: &Job) -> Result<Vec<Res>, String> {
    let n = job.rooms as u64;
    let rooms: Vec<String> = (0..job.rooms).map(|i| job.room(i)).collect();
    let a = start(job, "a", options(window_queue(job)))?;
    let b = start(job, "b", options(window_queue(job)))?;
    // Settle the allocator, then measure the joins alone (the room names are made before).
    let names = rooms.clone();
    std::thread::sleep(Duration::from_millis(100));
    let before = Usage::now(job.server_pid);
    let t0 = Instant::now();
    let members = join_all(&b, names, "m".to_string())?;
    let live_s = t0.elapsed().as_secs_f64();
    let after = Usage::now(job.server_pid);
    let mut res = job.result();
    res.setf("live_s", live_s);
    res.setf("rooms_per_s", n as f64 / live_s);
    res.setf(
        "bytes_per_room",
        (after.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / n as f64,
    );
    res.setf("join_cpu_s", after.cpu_s - before.cpu_s);
    if let (Some(x), Some(y)) = (after.server_cpu_s, before.server_cpu_s) {
        res.setf("join_server_cpu_s", x - y);
    }
    // One message per room.
    let flow = Flow::new(1, job.window);
    let tracker = Tracker::new(n);
    consume(&b, members, tracker.clone(), flow.clone(), None, None);
    let usage = Usage::now(job.server_pid);
    let bus = job
        .is_cluster()
        .then(|| (BusSnapshot::now(&job.nodes), job.nodes.clone()));
    let start_ns = now_ns();
    let deadline = Instant::now() + job.limit;
    publish_per_room(&a, rooms, job.size, flow.clone(), deadline);
    let complete = await_deliveries(&flow, n, deadline);
    let trackers = std::slice::from_ref(&tracker);
    res.add_usage(&usage, tally(trackers).1);
    settle();
    record_deliveries(&mut res, trackers, n, complete, start_ns, false);
    record_server_cost(&mut res, bus.as_ref(), n);
    shutdown(vec![a, b]);
    Ok(vec![res])
}

/// Publishes message `i` to `rooms[i]` from `a`, through the window of `flow`.
fn publish_per_room(
    a: &Inst,
    rooms: Vec<String>,
    size: usize,
    flow: Arc<Flow>,
    deadline: Instant,
) -> Arc<AtomicU64> {
    let published = Arc::new(AtomicU64::new(0));
    let rc = a.rc.clone();
    let p2 = published.clone();
    a.node.rt.spawn(async move {
        let tdeadline = tokio::time::Instant::from_std(deadline);
        let mut p = rc.publisher();
        let n = rooms.len() as u64;
        let mut first = 0;
        while first < n {
            let Some(end) = flow.next_batch(first, n, tdeadline).await else {
                break;
            };
            let batch = (first..end)
                .map(|i| message(rooms[i as usize].as_str().into(), payload(i, 0, size)));
            if p.send_batch(batch).await.is_err() {
                break;
            }
            p2.fetch_add(end - first, Ordering::Relaxed);
            first = end;
        }
    });
    published
}

/// S4, in-process fan-out: `members` local members of one room on instance B (Redis carries
/// one copy per message to B; B hands it to every member's stream); A publishes `count`
/// messages.
fn fan_out(job: &Job) -> Result<Vec<Res>, String> {
    let n = job.count;
    let members = job.members.max(1);
    let window = job.window.min(512);
    let a = start(job, "a", options(1024))?;
    let b = start(job, "b", options(1024))?;
    let room = job.room(0);
    let rc = b.rc.clone();
    let r2 = room.clone();
    let ms: Vec<Membership> = b.node.run(async move {
        let joined: Vec<_> = stream::iter(0..members)
            .map(|i| {
                let rc = rc.clone();
                let room = r2.clone();
                async move { rc.join(&room, &format!("c{i}")).await }
            })
            .buffered(1024)
            .collect()
            .await;
        let mut out = Vec::new();
        for m in joined {
            out.push(m.map_err(|e| format!("join: {e}"))?);
        }
        if let Some(m) = out.first() {
            m.wait_live().await;
        }
        Ok::<_, String>(out)
    })?;
    let flow = Flow::new(members as u64, window);
    // Per member: messages in order, each once.
    let in_order = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let last_ns = Arc::new(AtomicU64::new(0));
    for mut m in ms {
        let (flow, in_order, wrong, last_ns) = (
            flow.clone(),
            in_order.clone(),
            wrong.clone(),
            last_ns.clone(),
        );
        b.node.rt.spawn(async move {
            // Counts on after the n-th message: anything more (a trailing duplicate) is wrong.
            let mut next = 0u64;
            while let Some(msg) = m.next().await {
                match parse_payload(&msg.data) {
                    Some((seq, _)) if seq == next && next < n => {
                        in_order.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += 1;
                flow.delivered();
                if next == n {
                    last_ns.fetch_max(now_ns(), Ordering::Relaxed);
                }
            }
        });
    }
    let usage = Usage::now(job.server_pid);
    let start_ns = now_ns();
    let deadline = Instant::now() + job.limit;
    publish_per_room(
        &a,
        (0..n).map(|_| room.clone()).collect(),
        job.size,
        flow.clone(),
        deadline,
    );
    let expected = n * members as u64;
    let complete = wait_for(
        deadline,
        STALL,
        || flow.deliveries(),
        || flow.deliveries() >= expected,
    );
    let mut res = job.result();
    res.add_usage(&usage, flow.deliveries());
    settle();
    let got = in_order.load(Ordering::Relaxed);
    let elapsed = (last_ns.load(Ordering::Relaxed).saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    res.set("members", members as u64);
    res.setf("deliveries_per_s", flow.deliveries() as f64 / elapsed);
    res.setf("msgs_per_s", n as f64 / elapsed);
    res.set("delivered", flow.deliveries());
    res.set("expected", expected);
    res.set("out_of_order_or_lost", wrong.load(Ordering::Relaxed));
    res.set(
        "exactly_once",
        complete && got == expected && wrong.load(Ordering::Relaxed) == 0,
    );
    shutdown(vec![a, b]);
    Ok(vec![res])
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// S5: joins and leaves at a high rate on instance B while A publishes to the same rooms and
/// C keeps one member in every tenth room throughout. At the end B's members leave every
/// odd-numbered room (C has none there), so those channels must be unsubscribed: Redis's
/// subscriptions must be exactly the rooms with members, and C's steady member must have
/// received every message published to its rooms, once.
fn churn(job: &Job) -> Result<Vec<Res>, String> {
    const TASKS: u64 = 16;
    const CONNS: u64 = 8;
    let rooms: Vec<String> = (0..job.rooms.max(1)).map(|i| job.room(i)).collect();
    let r = rooms.len() as u64;
    let a = start(job, "a", options(64))?;
    let b = start(job, "b", options(64))?;
    let c = start(job, "c", Options::default())?;
    // C keeps members in every tenth room for the whole run (all even-numbered).
    let steady = |room: u64| room % 10 == 0;
    let c_rooms: Vec<String> = rooms.iter().step_by(10).cloned().collect();
    let c_members = join_all(&c, c_rooms.clone(), "steady".into())?;
    let rate = job.rate.max(1.0);
    // Message numbers run to at most rate × (limit + slack); C's tracker covers them all.
    let cap = (rate * (job.limit.as_secs_f64() + 5.0)) as u64 + 1_000;
    let steady_tracker = Tracker::new(cap);
    let steady_flow = Flow::new(1, u64::MAX);
    consume(
        &c,
        c_members,
        steady_tracker.clone(),
        steady_flow.clone(),
        None,
        None,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let usage = Usage::now(job.server_pid);
    let t0 = Instant::now();
    let deadline = t0 + job.limit;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (rc, rooms, stop, ops, errors) = (
            b.rc.clone(),
            rooms.clone(),
            stop.clone(),
            ops.clone(),
            errors.clone(),
        );
        let max_ops = job.count / TASKS;
        let (tx, rx) = std::sync::mpsc::channel();
        handles.push(rx);
        b.node.rt.spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
            let mut held: HashMap<(u64, u64), Membership> = HashMap::new();
            let mut done = 0;
            while done < max_ops && !stop.load(Ordering::Relaxed) {
                let key = (rng.below(r), t * CONNS + rng.below(CONNS));
                let room = &rooms[key.0 as usize];
                let conn = format!("churn-{}", key.1);
                let ok = match held.remove(&key) {
                    Some(m) => {
                        let left = rc.leave(room, &conn).await;
                        drop(m);
                        left.is_ok()
                    }
                    None => match rc.join(room, &conn).await {
                        Ok(m) => {
                            held.insert(key, m);
                            true
                        }
                        Err(_) => false,
                    },
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                ops.fetch_add(1, Ordering::Relaxed);
                done += 1;
            }
            let _ = tx.send(held);
        });
    }
    // Traffic: A publishes to random rooms at a steady pace while the churn runs; message
    // numbers sent to C's rooms are what C's member must receive.
    let (pub_tx, pub_rx) = std::sync::mpsc::channel();
    {
        let (rc, rooms, stop) = (a.rc.clone(), rooms.clone(), stop.clone());
        let size = job.size;
        a.node.rt.spawn(async move {
            let mut p = rc.publisher();
            let mut rng = Rng(7);
            let t0 = tokio::time::Instant::now();
            let mut to_steady = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < cap {
                let due = t0 + Duration::from_nanos((i as f64 * 1e9 / rate) as u64);
                if due > tokio::time::Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                let room = rng.below(r);
                let msg = message(
                    rooms[room as usize].as_str().into(),
                    payload(i, now_ns(), size),
                );
                if p.send(msg).await.is_err() {
                    break;
                }
                if steady(room) {
                    to_steady.push(i);
                }
                i += 1;
            }
            let _ = pub_tx.send((i, to_steady));
        });
    }
    let _ = wait_for(
        deadline,
        deadline.saturating_duration_since(Instant::now()),
        || ops.load(Ordering::Relaxed),
        || ops.load(Ordering::Relaxed) >= job.count / TASKS * TASKS,
    );
    stop.store(true, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let mut held = Vec::new();
    for h in handles {
        held.push(
            h.recv_timeout(Duration::from_secs(10))
                .map_err(|_| "a churn task did not stop".to_string())?,
        );
    }
    let (published, to_steady) = pub_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the publisher did not stop".to_string())?;
    let total_ops = ops.load(Ordering::Relaxed);
    let mut res = job.result();
    res.set("ops", total_ops);
    res.setf("ops_per_s", total_ops as f64 / elapsed);
    res.set("errors", errors.load(Ordering::Relaxed));
    res.set("published", published);
    res.add_usage(&usage, 0);
    // Empty every odd-numbered room: B's members there leave (C has none there).
    let mut emptied: BTreeSet<u64> = BTreeSet::new();
    let mut leaving = Vec::new();
    for h in &mut held {
        let odd: Vec<(u64, u64)> = h.keys().filter(|k| k.0 % 2 == 1).copied().collect();
        for k in odd {
            emptied.insert(k.0);
            if let Some(m) = h.remove(&k) {
                leaving.push((rooms[k.0 as usize].clone(), format!("churn-{}", k.1), m));
            }
        }
    }
    let rc = b.rc.clone();
    let leave_errors = b.node.run(async move {
        let mut errors = 0u64;
        for (room, conn, m) in leaving {
            if rc.leave(&room, &conn).await.is_err() {
                errors += 1;
            }
            drop(m);
        }
        errors
    });
    res.set("rooms_emptied", emptied.len() as u64);
    res.set("leave_errors_at_end", leave_errors);
    // The rooms with members now, and what Redis has subscribed once B has settled.
    let mut want: BTreeSet<String> = c_rooms.iter().cloned().collect();
    for h in &held {
        for (room, _) in h.keys() {
            want.insert(rooms[*room as usize].clone());
        }
    }
    let settle_t0 = Instant::now();
    let rc = b.rc.clone();
    let settled = b.node.run(async move {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < end {
            if let Ok(m) = rc.metrics().await {
                if m.subscriptions_in_flight == 0 {
                    return Some(m);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    });
    // C's steady member keeps counting meanwhile.
    settle();
    let t_settle = settle_t0.elapsed().as_secs_f64();
    let (_, port) = job.host_port();
    let mut cli = roomcast_tests::RespClient::connect(port).map_err(|e| e.to_string())?;
    let pattern = format!("{}:room:*", job.prefix);
    let reply = cli.cmd(&["PUBSUB", "CHANNELS", &pattern]);
    let have: BTreeSet<String> = reply
        .as_array()
        .unwrap_or(&[])
        .iter()
        .filter_map(|v| v.as_text())
        .filter_map(|ch| {
            ch.strip_prefix(&format!("{}:room:", job.prefix))
                .map(String::from)
        })
        .collect();
    let missing = want.difference(&have).count();
    let extra = have.difference(&want).count();
    res.set("rooms_with_members", want.len() as u64);
    res.set("channels_subscribed", have.len() as u64);
    res.set("channels_missing", missing as u64);
    res.set("channels_extra", extra as u64);
    res.setf("settle_s", t_settle);
    res.set("b_rooms", settled.as_ref().map_or(0, |m| m.rooms as u64));
    res.set(
        "subscriptions_match",
        settled.is_some() && missing == 0 && extra == 0 && !emptied.is_empty(),
    );
    // Deliveries to the member that stayed in its rooms throughout: every message sent to
    // them, once, and nothing else.
    let expected = to_steady.len() as u64;
    let (received, unique, dups, bad, _) = tally(std::slice::from_ref(&steady_tracker));
    let all_there = to_steady.iter().all(|&i| steady_tracker.has(i));
    res.set("steady_expected", expected);
    res.set("steady_delivered", received);
    res.set(
        "steady_lost",
        to_steady
            .iter()
            .filter(|&&i| !steady_tracker.has(i))
            .count() as u64,
    );
    res.set(
        "exactly_once",
        all_there && unique == expected && dups == 0 && bad == 0,
    );
    drop(held);
    shutdown(vec![a, b, c]);
    Ok(vec![res])
}

/// What B's event watcher saw in S6.
#[derive(Debug, Default)]
struct Outage {
    down: Option<u64>,
    up: Option<u64>,
    all_live: Option<u64>,
    not_live: u64,
    live_after_up: u64,
    /// (room index, missing trailer sequence numbers) of every `Event::Gap`.
    gaps: Vec<(u64, std::ops::RangeInclusive<u64>)>,
    /// Rooms named by `LinkUp::missed_rooms`.
    missed_rooms: u64,
}

/// Every message of a run accounted for by arrival and by `Event::Gap` reports.
#[derive(Debug, Default, Clone, Copy)]
struct GapTally {
    /// Delivered.
    delivered: u64,
    /// Not delivered, and inside a reported gap.
    in_gap: u64,
    /// Neither delivered nor reported (must be none).
    neither: u64,
    /// Reported missing, yet delivered.
    gap_but_delivered: u64,
    /// Deliveries whose trailer sequence disagreed with the room's others.
    base_conflicts: u64,
}

/// Accounts for messages `range` (message `i` went to room `i mod n`, the `k`-th message to
/// a room carrying trailer sequence `base + k`) with the deliveries' (message number,
/// trailer sequence) pairs `seqs`, the gaps reported per room (room index, missing trailer
/// sequences) and whether message `i` arrived.
fn gap_tally(
    n: u64,
    seqs: &[(u64, u64)],
    reported: Vec<(u64, std::ops::RangeInclusive<u64>)>,
    range: std::ops::Range<u64>,
    has: impl Fn(u64) -> bool,
) -> GapTally {
    let mut base: Vec<Option<u64>> = vec![None; n as usize];
    let mut t = GapTally::default();
    for &(i, seq) in seqs {
        let (room, k) = ((i % n) as usize, i / n);
        let b0 = seq.wrapping_sub(k);
        match base[room] {
            None => base[room] = Some(b0),
            Some(x) if x != b0 => t.base_conflicts += 1,
            Some(_) => {}
        }
    }
    let mut gaps: Vec<Vec<std::ops::RangeInclusive<u64>>> = vec![Vec::new(); n as usize];
    for (room, g) in reported {
        if let Some(v) = gaps.get_mut(room as usize) {
            v.push(g);
        }
    }
    for i in range {
        let room = (i % n) as usize;
        let in_gap = base[room].is_some_and(|b0| {
            let seq = b0.wrapping_add(i / n);
            gaps[room].iter().any(|g| g.contains(&seq))
        });
        match (has(i), in_gap) {
            (true, false) => t.delivered += 1,
            (true, true) => {
                t.delivered += 1;
                t.gap_but_delivered += 1;
            }
            (false, true) => t.in_gap += 1,
            (false, false) => t.neither += 1,
        }
    }
    t
}

/// S6: `rooms` live rooms on instance B, A publishing to them round-robin at `job.rate`
/// before, during and after a `CLIENT KILL` of B's subscriber link. Reports how long until
/// the link is up and every room live again, and accounts for every message published: it
/// arrived (exactly once), or B reported it missing in an `Event::Gap`, or neither (must be
/// none).
fn recovery(job: &Job) -> Result<Vec<Res>, String> {
    let n = job.rooms as u64;
    let rooms: Vec<String> = (0..job.rooms).map(|i| job.room(i)).collect();
    let a = start(job, "a", options(window_queue(job)))?;
    let b = start(job, "b", options(window_queue(job)))?;
    let mut members = join_all(&b, rooms.clone(), "m".into())?;
    let rate = job.rate.max(1.0);
    let cap = (rate * (job.limit.as_secs_f64() + 5.0)) as u64 + 2 * n;
    let tracker = Tracker::new(cap);
    // (message number, trailer sequence) of every delivery: maps B's gap reports (trailer
    // sequence numbers per room) onto message numbers.
    let seqs: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    {
        let (tracker, seqs) = (tracker.clone(), seqs.clone());
        b.node.rt.spawn(async move {
            while let Some(msg) = members.next().await {
                let t = msg.origin.map(|t| t.seq);
                match (parse_payload(&msg.data), t) {
                    (Some((i, _)), Some(t)) => {
                        tracker.record(i);
                        seqs.lock().unwrap_or_else(|p| p.into_inner()).push((i, t));
                    }
                    _ => {
                        tracker.bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // Watch B's events until told to stop: the subscriber going down and up, rooms going
    // live again, and every gap.
    let rc = b.rc.clone();
    let mut events = b
        .node
        .run(async move { rc.events().await })
        .map_err(|e| e.to_string())?;
    let kill_ns = Arc::new(AtomicU64::new(u64::MAX));
    let outage: Arc<Mutex<Outage>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    let ev_dropped = Arc::new(AtomicU64::new(0));
    {
        let (kill_ns, outage, watching, ev_dropped) = (
            kill_ns.clone(),
            outage.clone(),
            watching.clone(),
            ev_dropped.clone(),
        );
        b.node.rt.spawn(async move {
            let tick = Duration::from_millis(20);
            while watching.load(Ordering::Relaxed) {
                let Ok(ev) = tokio::time::timeout(tick, events.next()).await else {
                    continue;
                };
                let Some(ev) = ev else { break };
                ev_dropped.store(events.dropped(), Ordering::Relaxed);
                let t = now_ns();
                let mut o = outage.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    Event::Gap { room, missing, .. } => {
                        if let Ok(i) = room.as_str().parse::<u64>() {
                            o.gaps.push((i, missing));
                        }
                    }
                    _ if t < kill_ns.load(Ordering::Relaxed) => {}
                    Event::LinkDown {
                        link: LinkId(0), ..
                    } => o.down = Some(t),
                    Event::LinkUp {
                        link: LinkId(0),
                        missed_rooms,
                        ..
                    } => {
                        o.up = Some(t);
                        o.missed_rooms += missed_rooms.len() as u64;
                    }
                    Event::RoomNotLive { .. } => o.not_live += 1,
                    Event::RoomLive { .. } if o.up.is_some() => {
                        o.live_after_up += 1;
                        if o.live_after_up == n {
                            o.all_live = Some(t);
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    // A publishes message i to room i mod n, paced, until told to stop.
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (rc, rooms, published, stop) =
            (a.rc.clone(), rooms.clone(), published.clone(), stop.clone());
        let size = job.size;
        a.node.rt.spawn(async move {
            let mut p = rc.publisher();
            let t0 = tokio::time::Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < cap {
                let due_by = ((t0.elapsed().as_secs_f64() * rate) as u64 + 1).min(cap);
                if due_by <= i {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let batch = (i..due_by).map(|j| {
                    message(
                        rooms[(j % n) as usize].as_str().into(),
                        payload(j, now_ns(), size),
                    )
                });
                if p.send_batch(batch).await.is_err() {
                    break;
                }
                i = due_by;
                published.store(i, Ordering::Relaxed);
            }
        });
    }
    let deadline = Instant::now() + job.limit;
    // Before: every room has had a message delivered (B knows A's sequence in each).
    let first_round = || (0..n).all(|i| tracker.has(i));
    let first = wait_for(deadline, STALL, || tracker.unique(), first_round);
    let usage = Usage::now(job.server_pid);
    let (_, port) = job.host_port();
    let mut cli = roomcast_tests::RespClient::connect(port).map_err(|e| e.to_string())?;
    let name = format!("{}-b-0", job.prefix);
    let list = cli.cmd(&["CLIENT", "LIST"]).as_text().unwrap_or_default();
    let id = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .ok_or(format!("no client named {name}"))?
        .to_string();
    let published_at_kill = published.load(Ordering::Relaxed);
    let t_kill = now_ns();
    kill_ns.store(t_kill, Ordering::Relaxed);
    cli.cmd(&["CLIENT", "KILL", "ID", &id]);
    // During: until every room is live again.
    let all_live = || {
        outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all_live
            .is_some()
    };
    let recovered = wait_for(
        deadline,
        job.limit,
        || published.load(Ordering::Relaxed),
        all_live,
    );
    // After: two more rounds, so that every room receives a message after the outage (a
    // gap is reported when the next message arrives), then stop publishing.
    let after_from = published.load(Ordering::Relaxed);
    let _ = wait_for(
        deadline,
        STALL,
        || published.load(Ordering::Relaxed),
        || published.load(Ordering::Relaxed) >= after_from + 2 * n,
    );
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    let total = published.load(Ordering::Relaxed);
    // Every message of the last round must arrive; then the receivers keep counting.
    let last_round = || (total.saturating_sub(n)..total).all(|i| tracker.has(i));
    let complete = wait_for(deadline, STALL, || tracker.unique(), last_round);
    let mut res = job.result();
    res.add_usage(&usage, tracker.unique());
    settle();
    watching.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(40));
    let o = std::mem::take(&mut *outage.lock().unwrap_or_else(|p| p.into_inner()));
    let ms = |t: Option<u64>, from: u64| t.map(|t| t.saturating_sub(from) as f64 / 1e6);
    res.setf("kill_to_down_ms", ms(o.down, t_kill).unwrap_or(f64::NAN));
    res.setf("kill_to_up_ms", ms(o.up, t_kill).unwrap_or(f64::NAN));
    res.setf(
        "kill_to_all_live_ms",
        ms(o.all_live, t_kill).unwrap_or(f64::NAN),
    );
    res.setf(
        "up_to_all_live_ms",
        match (o.up, o.all_live) {
            (Some(u), Some(l)) => l.saturating_sub(u) as f64 / 1e6,
            _ => f64::NAN,
        },
    );
    res.set("rooms_not_live_events", o.not_live);
    res.set("missed_rooms_reported", o.missed_rooms);
    res.set("events_dropped", ev_dropped.load(Ordering::Relaxed));
    res.set("published", total);
    res.set("published_before_kill", published_at_kill);
    res.set("published_after_all_live", total - after_from);
    let seqs = std::mem::take(&mut *seqs.lock().unwrap_or_else(|p| p.into_inner()));
    let GapTally {
        delivered,
        in_gap,
        neither,
        gap_but_delivered,
        base_conflicts,
    } = gap_tally(n, &seqs, o.gaps, 0..total, |i| tracker.has(i));
    let (received, unique, dups, bad, _) = tally(std::slice::from_ref(&tracker));
    res.set("delivered", delivered);
    res.set("expected", total);
    res.set("lost_reported_as_gaps", in_gap);
    res.set("lost_unreported", neither);
    res.set("reported_missing_but_delivered", gap_but_delivered);
    res.set("trailer_base_conflicts", base_conflicts);
    res.set("duplicates", dups);
    res.set(
        "accounted",
        first && recovered && complete && neither == 0 && gap_but_delivered == 0,
    );
    // Exactly once: nothing twice, nothing unknown, and every message delivered or reported.
    res.set(
        "exactly_once",
        first
            && recovered
            && complete
            && neither == 0
            && gap_but_delivered == 0
            && base_conflicts == 0
            && dups == 0
            && bad == 0
            && received == unique,
    );
    shutdown(vec![a, b]);
    Ok(vec![res])
}

/// What S7's event watcher saw on the subscribing instance: per room index, the times
/// ([`now_ns`]) it was reported not live and live again, and every gap.
#[derive(Debug, Default)]
struct RoomWatch {
    not_live: Vec<(u64, usize)>,
    live: Vec<(u64, usize)>,
    gaps: Vec<(u64, std::ops::RangeInclusive<u64>)>,
}

/// roomcast in S7: instance B holds one connection in every room (its stream recorded in the
/// ledger), instance A publishes; B's events are watched.
struct RcSubject {
    job: Job,
    namer: roomcast::core::ChannelNamer,
    a: Inst,
    /// The subscribing instance, kept running.
    _b: Inst,
    publisher: roomcast::Publisher,
    ledger: Arc<super::migration::Ledger>,
    seqs: Arc<Mutex<Vec<(u64, u64)>>>,
    watch: Arc<Mutex<RoomWatch>>,
    watching: Arc<AtomicBool>,
}

/// Starts roomcast for S7 with every room joined and live.
pub fn s7_subject(
    job: &Job,
    ledger: Arc<super::migration::Ledger>,
) -> Result<Box<dyn super::migration::Subject>, String> {
    let rooms: Vec<String> = (0..job.rooms).map(|i| job.room(i)).collect();
    let a = start(job, "a", options(1 << 16))?;
    let b = start(job, "b", options(1 << 16))?;
    let rc = b.rc.clone();
    let mut events = b
        .node
        .run(async move { rc.events().await })
        .map_err(|e| e.to_string())?;
    let watch: Arc<Mutex<RoomWatch>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(true));
    {
        let (watch, watching) = (watch.clone(), watching.clone());
        b.node.rt.spawn(async move {
            let index = |room: &roomcast::core::RoomId| room.as_str().parse::<usize>().ok();
            while watching.load(Ordering::Relaxed) {
                let tick = Duration::from_millis(20);
                let Ok(ev) = tokio::time::timeout(tick, events.next()).await else {
                    continue;
                };
                let Some(ev) = ev else { break };
                let t = now_ns();
                let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    Event::RoomNotLive { room, .. } => {
                        w.not_live.extend(index(&room).map(|r| (t, r)));
                    }
                    Event::RoomLive { room } => w.live.extend(index(&room).map(|r| (t, r))),
                    Event::Gap { room, missing, .. } => {
                        w.gaps.extend(index(&room).map(|r| (r as u64, missing)));
                    }
                    _ => {}
                }
            }
        });
    }
    let mut members = join_all(&b, rooms, "m".into())?;
    let seqs: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    {
        let (ledger, seqs) = (ledger.clone(), seqs.clone());
        b.node.rt.spawn(async move {
            while let Some(msg) = members.next().await {
                ledger.arrived(&msg.data);
                if let (Some((i, _)), Some(t)) = (parse_payload(&msg.data), msg.origin) {
                    seqs.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, t.seq));
                }
            }
        });
    }
    let namer = roomcast::core::ChannelNamer::new(&job.prefix).map_err(|e| e.to_string())?;
    let publisher = a.rc.publisher();
    Ok(Box::new(RcSubject {
        job: job.clone(),
        namer,
        a,
        _b: b,
        publisher,
        ledger,
        seqs,
        watch,
        watching,
    }))
}

impl super::migration::Subject for RcSubject {
    fn channel(&self, room: usize) -> String {
        let id = roomcast::core::RoomId::new(&self.job.room(room), 256).expect("a valid room id");
        String::from_utf8_lossy(&self.namer.room_channel(&id)).into_owned()
    }

    fn send(&mut self, batch: Vec<(u64, usize, Bytes)>) {
        let numbers: Vec<u64> = batch.iter().map(|m| m.0).collect();
        let msgs: Vec<PubSubMessage> = batch
            .into_iter()
            .map(|(_, room, data)| message(self.job.room(room).into(), data))
            .collect();
        if self
            .a
            .node
            .rt
            .block_on(self.publisher.send_batch(msgs))
            .is_err()
        {
            for i in numbers {
                self.ledger.failed(i);
            }
        }
    }

    fn report(&mut self, res: &mut Res, touched: &[usize], event_ns: u64, total: u64) {
        self.watching.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(40));
        let w = std::mem::take(&mut *self.watch.lock().unwrap_or_else(|p| p.into_inner()));
        let n = self.job.rooms as u64;
        // Time from the event to each touched room's first RoomLive after it.
        let mut live_ms: Vec<f64> = Vec::new();
        let mut not_live = 0u64;
        for &r in touched {
            if w.not_live.iter().any(|&(t, x)| x == r && t >= event_ns) {
                not_live += 1;
            }
            if let Some(t) = w
                .live
                .iter()
                .filter(|&&(t, x)| x == r && t >= event_ns)
                .map(|&(t, _)| t)
                .min()
            {
                live_ms.push((t - event_ns) as f64 / 1e6);
            }
        }
        live_ms.sort_by(f64::total_cmp);
        res.set("touched_rooms_reported_not_live", not_live);
        res.set("touched_rooms_reported_live_again", live_ms.len() as u64);
        if let Some(&max) = live_ms.last() {
            res.setf("room_live_event_ms_max", max);
        }
        res.set("gap_events", w.gaps.len() as u64);
        let seqs = std::mem::take(&mut *self.seqs.lock().unwrap_or_else(|p| p.into_inner()));
        let ledger = &self.ledger;
        let t = gap_tally(n, &seqs, w.gaps, 0..total, |i| ledger.arrival(i).is_some());
        res.set("lost_reported_as_gaps", t.in_gap);
        res.set("lost_unreported", t.neither);
        res.set("reported_missing_but_delivered", t.gap_but_delivered);
        if let Some(m) = metrics(&self.a) {
            res.set("roomcast_publish_failed", m.publish_failed);
            res.set("roomcast_publish_refused", m.publish_refused);
        }
    }
}
