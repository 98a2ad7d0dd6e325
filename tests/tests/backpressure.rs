//! Backpressure over a real socket: a fake server on 127.0.0.1 answers the handshake and then
//! never reads again, while 64 KiB messages are published in a loop for several seconds.
//!
//! Asserted: the bytes held for the publish link, in the core and in the driver's write queue
//! together, stay within `max_output_bytes` plus one frame (the core's and the adapter's
//! gauges); a `Publisher` waits instead of piling messages up; every `Roomcast::publish`
//! refused for backpressure is answered at once with the typed error and counted; and the
//! process's resident memory grows by less than [`RSS_BOUND`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt};
use roomcast::core::{Metrics, Protocol, PublishError};
use roomcast::{Builder, Config, Error, PubSubMessage, Roomcast};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long messages are published for, at least (and until the link was seen full).
const PUBLISHING: Duration = Duration::from_secs(3);
/// Message payload.
const MESSAGE: usize = 64 << 10;
/// `max_output_bytes` of the instance under test.
const MAX_OUTPUT: usize = 256 << 10;
/// One PUBLISH frame of a message (payload, envelope, channel and RESP framing): the most a
/// link may go over `max_output_bytes`.
const FRAME: usize = MESSAGE + 1024;
/// The driver pulls a link's output while its write queue holds less than this (it is the
/// smaller of 256 KiB and `max_output_bytes`).
const WRITE_QUEUE: usize = 256 << 10;
/// Resident memory the whole run may add. What may legitimately be held: per link
/// `MAX_OUTPUT + FRAME` in the core and driver together; the frames written into the kernel's
/// socket buffers and not yet confirmed (kept for a resend, within `max_inflight_bytes`: a
/// few MiB on loopback, which the never-reading server never drains); publishers' bytes handed to the driver ahead of the
/// core (`MAX_OUTPUT` plus one message per publisher); allocator slack. Without the byte
/// bounds the driver queued everything the core handed out: hundreds of MiB in these seconds.
const RSS_BOUND: usize = 64 << 20;

/// Accepts connections, answers each one's handshake (RESP2 `HELLO 2`, `CLIENT SETNAME`)
/// with `+OK` twice (a `HELLO` reply that says no mode is accepted in single-server mode),
/// then never reads from it again (the sockets stay open until the test ends).
async fn deaf_server(listener: TcpListener, stop: Arc<AtomicBool>) {
    let mut held: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((mut sock, _))) =
            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
        else {
            continue;
        };
        // `*2 $5 HELLO $1 2` and `*3 $6 CLIENT $7 SETNAME $N name`: twelve line ends.
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.windows(2).filter(|w| w == b"\r\n").count() < 12 {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = sock.write_all(b"+OK\r\n+OK\r\n").await;
        held.push(sock);
    }
}

/// Resident set size of this process (Linux), in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb << 10
}

fn config(port: u16) -> Config {
    let mut c = Config::from_url(&format!("redis://127.0.0.1:{port}")).expect("url");
    c.server.protocol = Protocol::Resp2;
    c.pool_size = 1;
    c.presence = false;
    // Nothing is ever answered: no timer may reopen the links while the test runs.
    c.reply_timeout = Duration::from_secs(600);
    c.keepalive_interval = Duration::from_secs(600);
    c.probe_interval = Duration::from_secs(600);
    c.max_envelope_bytes = 128 << 10;
    c.max_frame_bytes = (128 << 10) + 1024;
    c.max_output_bytes = MAX_OUTPUT;
    c
}

async fn metrics(rc: &Roomcast) -> Metrics {
    tokio::time::timeout(PATIENCE, rc.metrics())
        .await
        .expect("metrics in time")
        .expect("metrics")
}

/// The gauges within their bounds; returns the bytes held for the publish link.
fn check_gauges(m: &Metrics) -> usize {
    assert!(
        m.max_link_output <= MAX_OUTPUT + FRAME,
        "core + adapter hold {} bytes for one link (max_output_bytes {MAX_OUTPUT})",
        m.max_link_output
    );
    assert!(
        m.buffered_output + m.adapter_output <= 2 * (MAX_OUTPUT + FRAME),
        "core {} + adapter {} bytes",
        m.buffered_output,
        m.adapter_output
    );
    assert!(
        m.adapter_output <= WRITE_QUEUE + FRAME,
        "adapter write queues hold {} bytes",
        m.adapter_output
    );
    // The adapter's own count and the core's count of what it handed out agree.
    assert_eq!(m.adapter_output, m.unwritten_output);
    m.max_link_output
}

#[test]
fn c4_and_c10_a_server_that_stops_reading_bounds_memory_and_pushes_back() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let server = tokio::spawn(deaf_server(listener, stop.clone()));
        let rc = tokio::time::timeout(PATIENCE, Builder::new(config(port)).connect_tokio())
            .await
            .expect("connected in time")
            .expect("connected");
        let rss_before = rss();
        let data = vec![0x5au8; MESSAGE];

        // A Publisher in a loop until told to stop: it waits once the link is full.
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_publishing, mut stopped) = tokio::sync::watch::channel(false);
        let publishing = {
            let mut publisher = rc.publisher();
            let (sent, data) = (sent.clone(), data.clone());
            tokio::spawn(async move {
                loop {
                    let send = publisher.send(PubSubMessage::broadcast("r", data.clone()));
                    tokio::select! {
                        r = send => {
                            r.expect("the publisher is never refused");
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        _ = stopped.changed() => break,
                    }
                }
                publisher
            })
        };
        // Publish for a few seconds, and at least until the link was seen full.
        let mut most_held = 0;
        let started = Instant::now();
        while started.elapsed() < PUBLISHING || most_held < MAX_OUTPUT {
            assert!(
                started.elapsed() < PATIENCE,
                "the link never filled: at most {most_held} bytes held"
            );
            most_held = most_held.max(check_gauges(&metrics(&rc).await));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_publishing.send(true).expect("publisher running");
        let mut publisher = tokio::time::timeout(PATIENCE, publishing)
            .await
            .expect("publisher loop ends")
            .expect("publisher task");
        // The link stays full (the server never reads): the sink is not ready, and stays so.
        for _ in 0..3 {
            let ready = std::future::poll_fn(|cx| publisher.poll_ready_unpin(cx)).now_or_never();
            assert!(
                ready.is_none(),
                "a Publisher ready while its link is full: {ready:?}"
            );
            tokio::task::yield_now().await;
        }
        let m = metrics(&rc).await;
        check_gauges(&m);
        assert!(
            m.max_link_output + FRAME > MAX_OUTPUT,
            "the link never filled: {} bytes held",
            m.max_link_output
        );
        // The publisher was held back, not refused: nothing counted as refused.
        assert_eq!(m.publish_refused, 0);
        let handed = sent.load(Ordering::Relaxed);
        assert!(handed > 0);

        // Roomcast::publish to the full link: each is refused at once, with the typed error.
        let attempts = 20;
        for _ in 0..attempts {
            let r = tokio::time::timeout(
                PATIENCE,
                rc.publish(PubSubMessage::broadcast("r", data.clone())),
            )
            .await
            .expect("a refusal comes at once, not after a wait for Redis");
            match r {
                Err(Error::Publish(PublishError::Backpressure { held, max, .. })) => {
                    assert_eq!(max, MAX_OUTPUT);
                    assert!(held >= MAX_OUTPUT);
                }
                other => panic!("expected backpressure, got {other:?}"),
            }
        }
        let m = metrics(&rc).await;
        assert_eq!(m.publish_refused, attempts, "every refusal is counted");
        check_gauges(&m);

        let grown = rss().saturating_sub(rss_before);
        eprintln!(
            "{handed} messages of {MESSAGE} B handed over; at most {most_held} B held for the \
             link; resident memory grew by {grown} B"
        );
        assert!(
            grown < RSS_BOUND,
            "resident memory grew by {} MiB (bound {} MiB); {handed} messages handed over",
            grown >> 20,
            RSS_BOUND >> 20
        );
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(PATIENCE, rc.shutdown(Duration::from_millis(100))).await;
        let _ = server.await;
    });
}
