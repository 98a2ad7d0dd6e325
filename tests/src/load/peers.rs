//! The same work through the `redis` crate and the `fred` crate (feature `peers`), each in
//! its fastest lossless configuration at the job's in-flight depth: explicit pipelines of up
//! to 256 commands, as many in flight as the depth allows (`redis` on a multiplexed
//! connection), and for `fred` a subscriber broadcast buffer larger than the window. Same
//! topology as roomcast: the publisher on node A, every subscriber connection on a node of
//! its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use super::cluster;
use super::cluster::BusSnapshot;
use super::common::{
    add_latency, await_deliveries, now_ns, parse_payload, payload, record_deliveries,
    record_server_cost, settle, tally, Flow, Job, Node, Pacer, Phase, Res, Tracker, Usage,
};
use super::migration::{Ledger, Subject};
use super::raw::{RawPub, RawSub};

/// Why the minimal client refuses a cluster.
const RAW_ONE_SERVER: &str = "raw: the minimal client runs against one server only";

/// Channels per SUBSCRIBE call.
const SUBSCRIBE_CHUNK: usize = 10_000;

/// Which client crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The `redis` crate.
    Redis,
    /// `fred`.
    Fred,
    /// The floor: a minimal hand-written client ([`super::raw`]), one server only.
    Raw,
}

/// A publishing connection (on a cluster: a cluster client, publishing with SPUBLISH).
#[derive(Clone)]
pub enum Pub {
    /// The `redis` crate on one server.
    Redis(redis::aio::MultiplexedConnection),
    /// The `redis` crate's cluster client.
    RedisCluster(redis::cluster_async::ClusterConnection),
    /// `fred`; `true` when it is a cluster client (SPUBLISH).
    Fred(fred::clients::Client, bool),
    /// The minimal client.
    Raw(RawPub),
}

impl Pub {
    pub async fn connect(kind: Kind, job: Job) -> Result<Pub, String> {
        let e = |e: &dyn std::fmt::Display| format!("{}: {e}", job.system);
        match (kind, job.is_cluster()) {
            (Kind::Redis, false) => {
                let c = redis::Client::open(job.url.clone()).map_err(|x| e(&x))?;
                Ok(Pub::Redis(
                    c.get_multiplexed_async_connection()
                        .await
                        .map_err(|x| e(&x))?,
                ))
            }
            (Kind::Redis, true) => {
                let c = redis::cluster::ClusterClient::new(cluster::redis_rs_urls(&job))
                    .map_err(|x| e(&x))?;
                Ok(Pub::RedisCluster(
                    c.get_async_connection().await.map_err(|x| e(&x))?,
                ))
            }
            (Kind::Fred, sharded) => {
                use fred::prelude::*;
                let cfg = if sharded {
                    Config::from_url_clustered(&cluster::fred_url(&job))
                } else {
                    Config::from_url(&job.url)
                };
                let c = Builder::from_config(cfg.map_err(|x| e(&x))?)
                    .build()
                    .map_err(|x| e(&x))?;
                c.init().await.map_err(|x| e(&x))?;
                Ok(Pub::Fred(c, sharded))
            }
            (Kind::Raw, false) => {
                let (host, port) = job.host_port();
                Ok(Pub::Raw(RawPub::connect(&host, port).await?))
            }
            (Kind::Raw, true) => Err(RAW_ONE_SERVER.to_string()),
        }
    }

    /// Publishes every (channel, payload) as one pipeline and waits for the replies (on a
    /// cluster: every SPUBLISH at once, each routed to its slot's master; both clients
    /// write commands issued together in one go).
    pub async fn pipeline(&mut self, batch: Vec<(String, Bytes)>) -> Result<(), String> {
        match self {
            Pub::Redis(con) => {
                let mut p = redis::pipe();
                for (ch, data) in &batch {
                    p.cmd("PUBLISH").arg(ch).arg(&data[..]).ignore();
                }
                p.query_async::<()>(con).await.map_err(|e| e.to_string())
            }
            Pub::Fred(c, false) => {
                use fred::prelude::*;
                let p = c.pipeline();
                for (ch, data) in batch {
                    let _: () = p.publish(ch, data).await.map_err(|e| e.to_string())?;
                }
                let _: Vec<i64> = p.all().await.map_err(|e| e.to_string())?;
                Ok(())
            }
            Pub::Raw(p) => p.pipeline(&batch).await.map(drop),
            Pub::RedisCluster(_) | Pub::Fred(_, true) => {
                let all = batch.into_iter().map(|(ch, data)| {
                    let mut p = self.clone();
                    async move { p.one(ch, data).await }
                });
                futures_util::future::join_all(all)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, String>>()
                    .map(drop)
            }
        }
    }

    /// Publishes one message and waits for its reply.
    pub async fn one(&mut self, ch: String, data: Bytes) -> Result<(), String> {
        self.counted(ch, data).await.map(drop)
    }

    /// Publishes one message; Redis's reply: the subscribers it reached (on a cluster, those
    /// on the node that answered).
    pub async fn counted(&mut self, ch: String, data: Bytes) -> Result<i64, String> {
        let published = match self {
            Pub::Redis(con) => redis::cmd("PUBLISH")
                .arg(ch)
                .arg(&data[..])
                .query_async::<i64>(con)
                .await
                .map_err(|e| e.to_string()),
            Pub::RedisCluster(con) => redis::cmd("SPUBLISH")
                .arg(ch)
                .arg(&data[..])
                .query_async::<i64>(con)
                .await
                .map_err(|e| e.to_string()),
            Pub::Raw(p) => p.pipeline(&[(ch, data)]).await,
            Pub::Fred(c, sharded) => {
                use fred::prelude::*;
                if *sharded {
                    c.spublish::<i64, _, _>(ch, data).await
                } else {
                    c.publish::<i64, _, _>(ch, data).await
                }
                .map_err(|e| e.to_string())
            }
        };
        published
    }
}

/// A subscriber connection on its node: subscribes, then hands every payload over.
pub struct Sub {
    _node: Node,
}

/// What a subscriber does with each payload it receives.
pub type OnMessage = Box<dyn FnMut(&[u8]) + Send>;

/// Tells the caller of [`Sub::start`] how the subscriber's setup went: the setup's value,
/// or `None` (the error sent) if it failed.
fn report_setup<T>(
    setup: Result<T, String>,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> Option<T> {
    let _ = ready.send(setup.as_ref().map(|_| ()).map_err(Clone::clone));
    setup.ok()
}

impl Sub {
    /// Subscribes `channels` (time until all confirmed is what S3 measures; on a cluster
    /// with SSUBSCRIBE, one command per hash slot) and starts handing every payload
    /// received to `on_message`. `unsolicited` counts the `sunsubscribe` pushes a cluster
    /// subscriber of the `redis` crate receives (`fred` drops them unseen).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        kind: Kind,
        job: &Job,
        name: &str,
        channels: Vec<String>,
        buffer: usize,
        mut on_message: OnMessage,
        unsolicited: Arc<AtomicU64>,
    ) -> Result<Sub, String> {
        let node = Node::start(name);
        let job = job.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        node.rt.spawn(async move {
            let cluster = job.is_cluster();
            match (kind, cluster) {
                (Kind::Redis, false) => {
                    let setup = async {
                        let c = redis::Client::open(job.url.clone()).map_err(|e| e.to_string())?;
                        let mut ps = c.get_async_pubsub().await.map_err(|e| e.to_string())?;
                        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                            ps.subscribe(chunk).await.map_err(|e| e.to_string())?;
                        }
                        Ok::<_, String>(ps)
                    };
                    let Some(ps) = report_setup(setup.await, &ready_tx) else {
                        return;
                    };
                    let mut stream = ps.into_on_message();
                    while let Some(m) = stream.next().await {
                        on_message(m.get_payload_bytes());
                    }
                }
                (Kind::Redis, true) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let setup = async {
                        let c =
                            redis::cluster::ClusterClientBuilder::new(cluster::redis_rs_urls(&job))
                                .use_protocol(redis::ProtocolVersion::RESP3)
                                .push_sender(tx)
                                .build()
                                .map_err(|e| e.to_string())?;
                        let mut con = c.get_async_connection().await.map_err(|e| e.to_string())?;
                        for group in cluster::by_slot(&channels) {
                            con.ssubscribe(group).await.map_err(|e| e.to_string())?;
                        }
                        Ok::<_, String>(con)
                    };
                    let Some(con) = report_setup(setup.await, &ready_tx) else {
                        return;
                    };
                    while let Some(push) = rx.recv().await {
                        match (push.kind, push.data.get(1)) {
                            (redis::PushKind::SMessage, Some(redis::Value::BulkString(p))) => {
                                on_message(p)
                            }
                            (redis::PushKind::SUnsubscribe, _) => {
                                unsolicited.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    drop(con);
                }
                (Kind::Fred, _) => {
                    use fred::prelude::*;
                    let setup = async {
                        let cfg = if cluster {
                            Config::from_url_clustered(&cluster::fred_url(&job))
                        } else {
                            Config::from_url(&job.url)
                        }
                        .map_err(|e| e.to_string())?;
                        let sub = Builder::from_config(cfg)
                            .with_performance_config(|p| p.broadcast_channel_capacity = buffer)
                            .build_subscriber_client()
                            .map_err(|e| e.to_string())?;
                        sub.init().await.map_err(|e| e.to_string())?;
                        let rx = sub.message_rx();
                        if cluster {
                            for group in cluster::by_slot(&channels) {
                                sub.ssubscribe(group).await.map_err(|e| e.to_string())?;
                            }
                        } else {
                            for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
                                sub.subscribe(chunk.to_vec())
                                    .await
                                    .map_err(|e| e.to_string())?;
                            }
                        }
                        Ok::<_, String>((sub, rx))
                    };
                    let Some((sub, mut rx)) = report_setup(setup.await, &ready_tx) else {
                        return;
                    };
                    loop {
                        match rx.recv().await {
                            Ok(m) => on_message(m.value.as_bytes().unwrap_or_default()),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(_) => break,
                        }
                    }
                    drop(sub);
                }
                (Kind::Raw, false) => {
                    let (host, port) = job.host_port();
                    let setup = RawSub::subscribe(&host, port, &channels, SUBSCRIBE_CHUNK).await;
                    let Some(sub) = report_setup(setup, &ready_tx) else {
                        return;
                    };
                    let _ = sub.run(|p| on_message(p)).await;
                }
                (Kind::Raw, true) => {
                    let _ = ready_tx.send(Err(RAW_ONE_SERVER.to_string()));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "subscriber did not start".to_string())??;
        Ok(Sub { _node: node })
    }
}

/// Records what one subscriber connection receives.
struct Recorder {
    tracker: Arc<Tracker>,
    flow: Arc<Flow>,
    lat: Option<Arc<Mutex<Vec<u64>>>>,
}

impl Recorder {
    /// The recorder as a subscriber's [`OnMessage`].
    fn boxed(mut self) -> OnMessage {
        Box::new(move |p| self.record(p))
    }

    fn record(&mut self, p: &[u8]) {
        match parse_payload(p) {
            Some((seq, sent)) => {
                self.tracker.record(seq);
                if let Some(l) = &self.lat {
                    // The stream never ends by itself: hand each latency over at once.
                    l.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(now_ns().saturating_sub(sent));
                }
            }
            None => {
                self.tracker.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.flow.delivered();
    }
}

/// Which peer a job names.
pub fn kind(job: &Job) -> Result<Kind, String> {
    match job.system.as_str() {
        "redis-rs" => Ok(Kind::Redis),
        "fred" => Ok(Kind::Fred),
        "raw" => Ok(Kind::Raw),
        s => Err(format!("unknown peer {s}")),
    }
}

/// Runs one job through a peer client crate.
pub fn run(job: &Job) -> Result<Vec<Res>, String> {
    match job.scenario.as_str() {
        "S1" => throughput(job, false),
        "S2" => throughput(job, true),
        "S3" => many_channels(job),
        s => Err(format!("{} does not run {s}", job.system)),
    }
}

/// Publishes message `i` (for `i` in `0..n`) to `channel(i)` from node `a` in pipelines,
/// one per batch of `flow`'s rule ([`Flow::next_batch`], the rule roomcast's publisher
/// follows too): each is handed to a task of its own, which writes it at once and waits
/// for its replies; counts into `published`.
#[allow(clippy::too_many_arguments)]
fn pipelined(
    a: &Node,
    p: Pub,
    n: u64,
    channel: Arc<dyn Fn(u64) -> String + Send + Sync>,
    size: usize,
    flow: Arc<Flow>,
    deadline: Instant,
    published: Arc<AtomicU64>,
) {
    let rt = a.rt.clone();
    a.rt.spawn(async move {
        let tdeadline = tokio::time::Instant::from_std(deadline);
        let mut first = 0;
        while first < n {
            let Some(end) = flow.next_batch(first, n, tdeadline).await else {
                break;
            };
            let batch: Vec<(String, Bytes)> = (first..end)
                .map(|i| (channel(i), payload(i, 0, size)))
                .collect();
            let (mut p, published) = (p.clone(), published.clone());
            rt.spawn(async move {
                if p.pipeline(batch).await.is_ok() {
                    published.fetch_add(end - first, Ordering::Relaxed);
                }
            });
            // Let the pipeline's task write it before waiting for the next batch.
            tokio::task::yield_now().await;
            first = end;
        }
    });
}

fn throughput(job: &Job, latency: bool) -> Result<Vec<Res>, String> {
    let kind = kind(job)?;
    let n = job.count;
    let rooms = job.rooms.max(1);
    let channels: Vec<String> = (0..rooms).map(|i| job.channel(i)).collect();
    let receivers = job.receivers.max(1);
    let flow = Flow::new(receivers as u64, job.window);
    let trackers: Vec<Arc<Tracker>> = (0..receivers).map(|_| Tracker::new(n)).collect();
    let lat = latency.then(|| Arc::new(Mutex::new(Vec::new())));
    let buffer = (job.window as usize * 2).max(1024);
    let mut subs = Vec::new();
    for (k, t) in trackers.iter().enumerate() {
        subs.push(Sub::start(
            kind,
            job,
            &format!("r{k}"),
            channels.clone(),
            buffer,
            Recorder {
                tracker: t.clone(),
                flow: flow.clone(),
                lat: lat.clone(),
            }
            .boxed(),
            Arc::default(),
        )?);
    }
    let a = Node::start("a");
    let p = a.run(Pub::connect(kind, job.clone()))?;
    let mut phase = Phase::begin(job);
    let deadline = phase.deadline;
    let published = phase.published.clone();
    if let Some(pacer) = Pacer::of(job) {
        // Open loop: the pacer thread hands every message due by now to node A as one
        // pipeline, without waiting for the replies; latency counts from each due time.
        let (channel, size) = (channels[0].clone(), job.size);
        let published = published.clone();
        phase.pacer = Some(pacer.run(deadline, |range, base| {
            let batch: Vec<(String, Bytes)> = range
                .clone()
                .map(|j| (channel.clone(), payload(j, base + pacer.due_ns(j), size)))
                .collect();
            let mut p = p.clone();
            let published = published.clone();
            let k = range.end - range.start;
            a.rt.spawn(async move {
                if p.pipeline(batch).await.is_ok() {
                    published.fetch_add(k, Ordering::Relaxed);
                }
            });
            true
        }));
    } else if latency {
        let (flow, published, channel, size) = (
            flow.clone(),
            published.clone(),
            channels[0].clone(),
            job.size,
        );
        let mut p = p;
        a.rt.spawn(async move {
            let tdeadline = tokio::time::Instant::from_std(deadline);
            for i in 0..n {
                if p.one(channel.clone(), payload(i, now_ns(), size))
                    .await
                    .is_err()
                {
                    break;
                }
                published.fetch_add(1, Ordering::Relaxed);
                if !flow.wait_done(i, tdeadline).await {
                    break;
                }
            }
        });
    } else {
        let chans = channels.clone();
        pipelined(
            &a,
            p,
            n,
            Arc::new(move |i| chans[(i % rooms as u64) as usize].clone()),
            job.size,
            flow.clone(),
            deadline,
            published.clone(),
        );
    }
    let expected = n * receivers as u64;
    let complete = await_deliveries(&flow, expected, deadline);
    let mut res = job.result();
    phase.finish(&mut res, &trackers, expected, complete);
    // Let the subscribers drain what may still arrive before their nodes stop.
    drop(a);
    drop(subs);
    if let Some(l) = lat {
        let mut l = std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner()));
        add_latency(&mut res, &mut l);
    }
    Ok(vec![res])
}

/// S3: one subscriber connection subscribes `rooms` channels; time until confirmed, memory
/// per channel; then one message per channel.
fn many_channels(job: &Job) -> Result<Vec<Res>, String> {
    let kind = kind(job)?;
    let n = job.rooms as u64;
    let channels: Vec<String> = (0..job.rooms).map(|i| job.channel(i)).collect();
    let flow = Flow::new(1, job.window);
    let tracker = Tracker::new(n);
    let a = Node::start("a");
    let p = a.run(Pub::connect(kind, job.clone()))?;
    let names = channels.clone();
    std::thread::sleep(Duration::from_millis(100));
    let before = Usage::now(job.server_pid);
    let t0 = Instant::now();
    let sub = Sub::start(
        kind,
        job,
        "b",
        names,
        (job.window as usize * 2).max(1024),
        Recorder {
            tracker: tracker.clone(),
            flow: flow.clone(),
            lat: None,
        }
        .boxed(),
        Arc::default(),
    )?;
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
    let usage = Usage::now(job.server_pid);
    let bus = job
        .is_cluster()
        .then(|| (BusSnapshot::now(&job.nodes), job.nodes.clone()));
    let start_ns = now_ns();
    let deadline = Instant::now() + job.limit;
    let published = Arc::new(AtomicU64::new(0));
    pipelined(
        &a,
        p,
        n,
        Arc::new(move |i| channels[i as usize].clone()),
        job.size,
        flow.clone(),
        deadline,
        published,
    );
    let complete = await_deliveries(&flow, n, deadline);
    let trackers = std::slice::from_ref(&tracker);
    res.add_usage(&usage, tally(trackers).1);
    settle();
    record_deliveries(&mut res, trackers, n, complete, start_ns, false);
    record_server_cost(&mut res, bus.as_ref(), n);
    drop(a);
    drop(sub);
    Ok(vec![res])
}

/// How long one S7 publish may take before it counts as failed.
const S7_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer in S7: a cluster subscriber (SSUBSCRIBE per slot) on one node, a cluster client
/// publishing with SPUBLISH on another.
struct PeerSubject {
    job: Job,
    kind: Kind,
    a: Node,
    p: Pub,
    _sub: Sub,
    unsolicited: Arc<AtomicU64>,
    ledger: Arc<Ledger>,
    first_error: Arc<Mutex<Option<String>>>,
}

/// Starts a peer for S7 with every room subscribed.
pub fn s7_subject(job: &Job, ledger: Arc<Ledger>) -> Result<Box<dyn Subject>, String> {
    let kind = kind(job)?;
    let channels: Vec<String> = (0..job.rooms).map(|i| job.channel(i)).collect();
    let unsolicited: Arc<AtomicU64> = Arc::default();
    let l = ledger.clone();
    let sub = Sub::start(
        kind,
        job,
        "s7-sub",
        channels,
        1 << 16,
        Box::new(move |p| l.arrived(p)),
        unsolicited.clone(),
    )?;
    let a = Node::start("s7-pub");
    let p = a.run(Pub::connect(kind, job.clone()))?;
    Ok(Box::new(PeerSubject {
        job: job.clone(),
        kind,
        a,
        p,
        _sub: sub,
        unsolicited,
        ledger,
        first_error: Arc::default(),
    }))
}

impl Subject for PeerSubject {
    fn channel(&self, room: usize) -> String {
        self.job.channel(room)
    }

    fn send(&mut self, batch: Vec<(u64, usize, Bytes)>) {
        for (i, room, data) in batch {
            let (mut p, ch, ledger) = (self.p.clone(), self.job.channel(room), self.ledger.clone());
            let first_error = self.first_error.clone();
            self.a.rt.spawn(async move {
                let e = match tokio::time::timeout(S7_PUBLISH_TIMEOUT, p.counted(ch, data)).await {
                    Ok(Ok(0)) => return ledger.unheard(i),
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => e,
                    Err(_) => format!("no reply within {S7_PUBLISH_TIMEOUT:?}"),
                };
                ledger.failed(i);
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            });
        }
    }

    fn report(&mut self, res: &mut Res, _touched: &[usize], _event_ns: u64, _total: u64) {
        if let Some(e) = self
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            res.set("first_publish_error", e);
        }
        match self.kind {
            Kind::Redis => res.set(
                "unsolicited_sunsubscribes_seen",
                self.unsolicited.load(Ordering::Relaxed),
            ),
            // fred drops them before the application could see them.
            Kind::Fred | Kind::Raw => {
                res.set("unsolicited_sunsubscribes_seen", serde_json::Value::Null)
            }
        }
    }
}
