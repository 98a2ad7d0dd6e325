//! Publish: `Hub::publish` of 64 B or 1 KiB to a ready publish link, draining
//! `poll_transmit`. Operations per second.
//!
//! - `publish/64B`, `publish/1KiB`: publish + take the PUBLISH bytes; Redis's `:N` replies
//!   are fed outside the timed part (every 1024 publishes, so the in-flight bound is never
//!   reached).
//! - `publish/64B_confirmed`: the same plus feeding the reply and draining the
//!   `PublishConfirmed` event, one by one.
//!
//! `cargo bench -p roomcast-core --bench publish -- --quick`
//!
//! With `ROOMCAST_PUBLISH_LOOP=N` in the environment the binary skips criterion and runs N
//! publishes (replies fed every 1024, events drained) and exits, for instruction counts:
//! `ROOMCAST_PUBLISH_LOOP=100000 valgrind --tool=callgrind target/release/deps/publish-*`
//! (with `ROOMCAST_PUBLISH_LOCAL_FIRST=1`: LocalFirst delivery to one local member; with
//! `ROOMCAST_PUBLISH_BYTES=1024`: payloads of that many bytes instead of 64).
// criterion_group! defines an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use roomcast_core::{Config, DeliveryMode, MessageType, Publish};

use common::Rig;

const ROOM: &str = "bench/publish";
const CONFIRM_EVERY: u64 = 1024;

fn msg(data: &[u8]) -> Publish<'_> {
    Publish {
        room: ROOM,
        message_type: MessageType::Broadcast,
        data,
        exclude_connection: Some("conn-1"),
        timestamp: 1_700_000_000,
    }
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(1));
    for (name, size) in [("64B", 64), ("1KiB", 1024)] {
        unconfirmed(&mut group, name, &vec![0x5au8; size]);
    }

    let data = [0x5au8; 64];
    let mut rig = Rig::ready(Config::default());
    let link = rig.hub.publish_link(ROOM).expect("a hub with links");
    let now = rig.now;
    let mut reply = BytesMut::new();
    group.bench_function("64B_confirmed", |b| {
        b.iter(|| {
            black_box(rig.hub.publish(&msg(&data), now).expect("publish"));
            while let Some(tx) = rig.hub.poll_transmit() {
                black_box(tx.bytes.len());
            }
            reply.extend_from_slice(b":1\r\n");
            rig.hub.handle_input(link, &mut reply, now);
            while let Some(e) = rig.hub.poll_event() {
                black_box(e);
            }
        });
    });
    group.finish();
}

/// Publishes of `data` with their bytes taken, replies fed untimed every `CONFIRM_EVERY`.
fn unconfirmed(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, data: &[u8]) {
    let mut rig = Rig::ready(Config::default());
    let link = rig.hub.publish_link(ROOM).expect("a hub with links");
    let now = rig.now;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = CONFIRM_EVERY.min(iters - done);
                let start = Instant::now();
                let mut bytes = 0;
                for _ in 0..n {
                    black_box(rig.hub.publish(&msg(data), now).expect("publish"));
                    while let Some(tx) = rig.hub.poll_transmit() {
                        bytes += tx.bytes.len();
                    }
                }
                timed += start.elapsed();
                black_box(bytes);
                // Redis's replies, untimed.
                let mut replies = BytesMut::with_capacity(4 * n as usize);
                for _ in 0..n {
                    replies.extend_from_slice(b":1\r\n");
                }
                rig.hub.handle_input(link, &mut replies, now);
                while rig.hub.poll_event().is_some() {}
                done += n;
            }
            timed
        });
    });
}

/// The `ROOMCAST_PUBLISH_LOOP` mode: `n` publishes with their replies, no criterion.
fn publish_loop(n: u64, local_first: bool) {
    let config = Config {
        delivery: if local_first {
            DeliveryMode::LocalFirst
        } else {
            DeliveryMode::Ordered
        },
        ..Config::default()
    };
    let mut rig = Rig::ready(config);
    if local_first {
        rig.hub.join(ROOM, "member-1", rig.now).expect("join");
        rig.serve();
    }
    let link = rig.hub.publish_link(ROOM).expect("a hub with links");
    let now = rig.now;
    let size = std::env::var("ROOMCAST_PUBLISH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let data = vec![0x5au8; size];
    let mut replies = BytesMut::new();
    let (mut bytes, mut events, mut done) = (0usize, 0usize, 0u64);
    while done < n {
        let batch = CONFIRM_EVERY.min(n - done);
        for _ in 0..batch {
            black_box(rig.hub.publish(&msg(&data), now).expect("publish"));
            while let Some(tx) = rig.hub.poll_transmit() {
                bytes += tx.bytes.len();
            }
            while let Some(e) = rig.hub.poll_event() {
                black_box(e);
                events += 1;
            }
        }
        for _ in 0..batch {
            replies.extend_from_slice(b":1\r\n");
        }
        rig.hub.handle_input(link, &mut replies, now);
        while let Some(e) = rig.hub.poll_event() {
            black_box(e);
            events += 1;
        }
        done += batch;
    }
    println!("{n} publishes of {size} B, {bytes} bytes written, {events} events");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = publish
}

fn main() {
    if let Some(n) = std::env::var("ROOMCAST_PUBLISH_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let local_first = std::env::var_os("ROOMCAST_PUBLISH_LOCAL_FIRST").is_some();
        publish_loop(n, local_first);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
