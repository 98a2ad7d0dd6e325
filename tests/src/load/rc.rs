//! The scenarios through roomcast: every instance on a current-thread tokio runtime of its
//! own (its own thread), with its own links.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{stream, SinkExt, StreamExt};
use roomcast::{
    Builder, Config, Connection, Event, Membership, MessageType, Options, PubSubMessage, Roomcast,
};

use roomcast::core::LinkId;

use super::common::{
    add_latency, await_deliveries, now_ns, parse_payload, payload, record_deliveries, wait_for,
    Flow, Job, Node, Res, Tracker, Usage, STALL,
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
        "S1" | "S2" | "S3" => job.variant.ends_with("+presence"),
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

fn options(member_queue: usize) -> Options {
    Options {
        member_queue,
        event_queue: 1 << 16,
        ..Options::default()
    }
}

/// A connection's queue that holds a whole window: one connection receives every room's
/// messages, and the closed loop never has more than a window undelivered.
fn window_queue(job: &Job) -> usize {
    (job.window as usize * 2).max(1024)
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

fn message(room: &str, data: Vec<u8>) -> PubSubMessage {
    PubSubMessage {
        room_id: room.to_string(),
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

/// Consumes a connection's stream: records every message in `tracker` (and its latency when
/// `lat`), until `expect` messages or the stream's end.
fn consume(
    inst: &Inst,
    mut m: Connection,
    expect: u64,
    tracker: Arc<Tracker>,
    flow: Arc<Flow>,
    lat: Option<Arc<Mutex<Vec<u64>>>>,
) {
    inst.node.rt.spawn(async move {
        let mut got = 0;
        while got < expect {
            let Some(msg) = m.next().await else { break };
            got += 1;
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
            flow.delivered();
        }
        // Keep the connection until the instance shuts down, so its rooms stay subscribed.
        while m.next().await.is_some() {}
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
        s => Err(format!("unknown scenario {s}")),
    }
}

/// S1 and S2: a publisher on instance A, one member per room on each receiving instance.
fn throughput(job: &Job, latency: bool) -> Result<Vec<Res>, String> {
    let n = job.count;
    let rooms: Vec<String> = (0..job.rooms.max(1)).map(|i| job.room(i)).collect();
    let r = rooms.len() as u64;
    let queue = window_queue(job);
    let a = start(job, "a", options(queue))?;
    let mut receivers = Vec::new();
    for k in 0..job.receivers.max(1) {
        receivers.push(start(job, &format!("r{k}"), options(queue))?);
    }
    let flow = Flow::new(receivers.len() as u64, job.window);
    let trackers: Vec<Arc<Tracker>> = receivers.iter().map(|_| Tracker::new(n)).collect();
    let lat = latency.then(|| Arc::new(Mutex::new(Vec::new())));
    for (inst, tracker) in receivers.iter().zip(&trackers) {
        // One member (connection) per receiving instance, in every room: the counterpart of
        // a peer's one subscriber connection.
        let member = join_all(inst, rooms.clone(), format!("{}-member", inst.name))?;
        consume(inst, member, n, tracker.clone(), flow.clone(), lat.clone());
    }
    let usage = Usage::now(job.server_pid);
    let start_ns = now_ns();
    let deadline = Instant::now() + job.limit;
    let published = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let rc = a.rc.clone();
        let flow = flow.clone();
        let published = published.clone();
        let (size, rate, paced) = (job.size, job.rate, job.variant.starts_with("paced"));
        let one = latency && !paced;
        a.node.rt.spawn(async move {
            let tdeadline = tokio::time::Instant::from_std(deadline);
            let mut p = rc.publisher();
            let t0 = tokio::time::Instant::now();
            let base = now_ns();
            for i in 0..n {
                let stamp = if paced {
                    // Open loop: message i is due at i / rate; its latency counts from then.
                    let due_ns = (i as f64 * 1e9 / rate) as u64;
                    let due = t0 + Duration::from_nanos(due_ns);
                    if due > tokio::time::Instant::now() {
                        tokio::time::sleep_until(due).await;
                    }
                    base + due_ns
                } else {
                    // The window is full: hand over what is gathered, then wait.
                    if !one && !flow.ready(i) {
                        if p.flush().await.is_err() {
                            break;
                        }
                        if !flow.admit(i, tdeadline).await {
                            break;
                        }
                    }
                    now_ns()
                };
                let room = &rooms[(i % r) as usize];
                let msg = message(room, payload(i, stamp, size));
                // Closed loop: the publisher's Sink gathers batches (the explicit pipeline,
                // as the peers use); one in flight and paced: every message at once.
                let sent = if one || paced {
                    p.send(msg).await
                } else {
                    p.feed(msg).await
                };
                if sent.is_err() {
                    break;
                }
                published.fetch_add(1, Ordering::Relaxed);
                if one && !flow.wait_done(i, tdeadline).await {
                    break;
                }
            }
            let _ = p.flush().await;
            let _ = done_tx.send(());
        });
    }
    let expected = n * receivers.len() as u64;
    let complete = await_deliveries(&flow, expected, deadline);
    let _ = done_rx.recv_timeout(Duration::from_secs(1));
    let mut res = job.result();
    res.set("receivers", receivers.len() as u64);
    res.set("published", published.load(Ordering::Relaxed));
    let unique = record_deliveries(&mut res, &trackers, expected, complete, start_ns, true);
    if job.variant.starts_with("paced") {
        res.setf("rate", job.rate);
    }
    res.add_usage(&usage, unique);
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
    consume(&b, members, n, tracker.clone(), flow.clone(), None);
    let usage = Usage::now(job.server_pid);
    let start_ns = now_ns();
    let deadline = Instant::now() + job.limit;
    publish_per_room(&a, rooms, job.size, flow.clone(), deadline);
    let complete = await_deliveries(&flow, n, deadline);
    let trackers = std::slice::from_ref(&tracker);
    let unique = record_deliveries(&mut res, trackers, n, complete, start_ns, false);
    res.add_usage(&usage, unique);
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
        for (i, room) in rooms.iter().enumerate() {
            let i = i as u64;
            if !flow.ready(i) && (p.flush().await.is_err() || !flow.admit(i, tdeadline).await) {
                break;
            }
            if p.feed(message(room, payload(i, now_ns(), size)))
                .await
                .is_err()
            {
                break;
            }
            p2.fetch_add(1, Ordering::Relaxed);
        }
        let _ = p.flush().await;
    });
    published
}

/// S4: `members` local members of one room on instance B; A publishes `count` messages.
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
            let mut next = 0u64;
            while next < n {
                let Some(msg) = m.next().await else { break };
                match parse_payload(&msg.data) {
                    Some((seq, _)) if seq == next => {
                        in_order.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += 1;
                flow.delivered();
            }
            last_ns.fetch_max(now_ns(), Ordering::Relaxed);
            while m.next().await.is_some() {}
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
    let got = in_order.load(Ordering::Relaxed);
    let elapsed = (last_ns.load(Ordering::Relaxed).saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    let mut res = job.result();
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
    res.add_usage(&usage, flow.deliveries());
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

/// S5: joins and leaves at a high rate on instance B while A publishes to the same rooms;
/// at the end Redis's subscriptions must be exactly the rooms with members.
fn churn(job: &Job) -> Result<Vec<Res>, String> {
    const TASKS: u64 = 16;
    const CONNS: u64 = 8;
    let rooms: Vec<String> = (0..job.rooms.max(1)).map(|i| job.room(i)).collect();
    let r = rooms.len() as u64;
    let a = start(job, "a", options(64))?;
    let b = start(job, "b", options(64))?;
    let c = start(job, "c", options(64))?;
    // C keeps members in every tenth room for the whole run.
    let c_rooms: Vec<String> = rooms.iter().step_by(10).cloned().collect();
    let c_members = join_all(&c, c_rooms.clone(), "steady".into())?;
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
    // Traffic: A publishes to random rooms at a steady pace while the churn runs.
    let published = Arc::new(AtomicU64::new(0));
    {
        let (rc, rooms, stop, published) =
            (a.rc.clone(), rooms.clone(), stop.clone(), published.clone());
        let (size, rate) = (job.size, job.rate.max(1.0));
        a.node.rt.spawn(async move {
            let mut p = rc.publisher();
            let mut rng = Rng(7);
            let t0 = tokio::time::Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = t0 + Duration::from_nanos((i as f64 * 1e9 / rate) as u64);
                if due > tokio::time::Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                let room = &rooms[rng.below(r) as usize];
                if p.send(message(room, payload(i, now_ns(), size)))
                    .await
                    .is_err()
                {
                    break;
                }
                i += 1;
                published.fetch_add(1, Ordering::Relaxed);
            }
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
    let total_ops = ops.load(Ordering::Relaxed);
    let mut res = job.result();
    res.set("ops", total_ops);
    res.setf("ops_per_s", total_ops as f64 / elapsed);
    res.set("errors", errors.load(Ordering::Relaxed));
    res.set("published", published.load(Ordering::Relaxed));
    res.add_usage(&usage, 0);
    // The rooms with members now, and what Redis has subscribed once B has settled.
    let mut want: BTreeSet<String> = c_rooms.iter().cloned().collect();
    for h in &held {
        for (room, _) in h.keys() {
            want.insert(rooms[*room as usize].clone());
        }
    }
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
    let t_settle = t0.elapsed().as_secs_f64() - elapsed;
    let (host, port) = job.host_port();
    let _ = host;
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
        settled.is_some() && missing == 0 && extra == 0,
    );
    drop(held);
    drop(c_members);
    shutdown(vec![a, b, c]);
    Ok(vec![res])
}

/// S6: `rooms` live rooms on instance B; `CLIENT KILL` of B's subscriber link; time until
/// the link is back and every room live again; then one message per room must arrive.
fn recovery(job: &Job) -> Result<Vec<Res>, String> {
    let n = job.rooms as u64;
    let rooms: Vec<String> = (0..job.rooms).map(|i| job.room(i)).collect();
    let a = start(job, "a", options(window_queue(job)))?;
    let b = start(job, "b", options(window_queue(job)))?;
    let members = join_all(&b, rooms.clone(), "m".into())?;
    let flow = Flow::new(1, job.window);
    let tracker = Tracker::new(n);
    consume(&b, members, n, tracker.clone(), flow.clone(), None);
    // Watch B's events: the subscriber going down and up, and rooms going live again.
    let rc = b.rc.clone();
    let mut events = b
        .node
        .run(async move { rc.events().await })
        .map_err(|e| e.to_string())?;
    let (ev_tx, ev_rx) = std::sync::mpsc::channel();
    let kill_ns = Arc::new(AtomicU64::new(u64::MAX));
    {
        let kill_ns = kill_ns.clone();
        b.node.rt.spawn(async move {
            let (mut down, mut up, mut live) = (None, None, 0u64);
            let mut not_live = 0u64;
            let end = tokio::time::Instant::now() + Duration::from_secs(60);
            while let Ok(Some(ev)) = tokio::time::timeout_at(end, events.next()).await {
                let t = now_ns();
                if t < kill_ns.load(Ordering::Relaxed) {
                    continue;
                }
                match ev {
                    Event::LinkDown {
                        link: LinkId(0), ..
                    } => down = Some(t),
                    Event::LinkUp {
                        link: LinkId(0), ..
                    } => up = Some(t),
                    Event::RoomNotLive { .. } => not_live += 1,
                    Event::RoomLive { .. } if up.is_some() => {
                        live += 1;
                        if live >= n {
                            let _ = ev_tx.send((down, up, Some(t), not_live, events.dropped()));
                            return;
                        }
                    }
                    _ => {}
                }
            }
            let _ = ev_tx.send((down, up, None, not_live, events.dropped()));
        });
    }
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
    let t_kill = now_ns();
    kill_ns.store(t_kill, Ordering::Relaxed);
    cli.cmd(&["CLIENT", "KILL", "ID", &id]);
    let (down, up, all_live, not_live, ev_dropped) = ev_rx
        .recv_timeout(job.limit + Duration::from_secs(5))
        .map_err(|_| "no recovery events".to_string())?;
    let ms = |t: Option<u64>, from: u64| t.map(|t| t.saturating_sub(from) as f64 / 1e6);
    let mut res = job.result();
    res.setf("kill_to_down_ms", ms(down, t_kill).unwrap_or(f64::NAN));
    res.setf("kill_to_up_ms", ms(up, t_kill).unwrap_or(f64::NAN));
    res.setf(
        "kill_to_all_live_ms",
        ms(all_live, t_kill).unwrap_or(f64::NAN),
    );
    res.setf(
        "up_to_all_live_ms",
        match (up, all_live) {
            (Some(u), Some(l)) => l.saturating_sub(u) as f64 / 1e6,
            _ => f64::NAN,
        },
    );
    res.set("rooms_not_live_events", not_live);
    res.set("events_dropped", ev_dropped);
    // Nothing published after the recovery is lost.
    let start_ns = now_ns();
    let deadline = Instant::now() + job.limit;
    publish_per_room(&a, rooms, job.size, flow.clone(), deadline);
    let complete = await_deliveries(&flow, n, deadline) && all_live.is_some();
    let trackers = std::slice::from_ref(&tracker);
    let unique = record_deliveries(&mut res, trackers, n, complete, start_ns, false);
    res.add_usage(&usage, unique);
    shutdown(vec![a, b]);
    Ok(vec![res])
}
