//! Ingest: RESP `message` pushes from the subscriber link through framing, envelope decode,
//! duplicate/gap check and fan-out into `Delivery` events. Messages per second.
//!
//! `cargo bench -p roomcast-core --bench ingest -- --quick`
//!
//! With `ROOMCAST_INGEST_LOOP=N` in the environment the binary skips criterion, feeds N
//! 64-byte messages in reads of 1000 frames, drains the events and exits, for instruction
//! counts. The frames are built before the measured function, [`ingest_loop_feed`], so its
//! inclusive cost divided by N is the cost of one message:
//! `ROOMCAST_INGEST_LOOP=100000 valgrind --tool=callgrind --toggle-collect='ingest::ingest_loop_feed' target/release/deps/ingest-*`
// criterion_group! defines an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
use roomcast_core::{Config, Event, SUBSCRIBER};

use common::Rig;

/// Messages per measured input.
const K: u64 = 1000;
/// Live rooms in the hub (one member each); the messages go to one of them.
const ROOMS: usize = 1000;

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(K));
    for (size, chunk) in [(64usize, None), (1024, None), (1024, Some(16 * 1024))] {
        let mut rig = Rig::ready(Config::default());
        rig.join_live("bench/", ROOMS);
        let room = "bench/500";
        assert_eq!(
            rig.hub.room_state(room),
            Some(roomcast_core::RoomState::Live)
        );
        let channel = rig.hub.namer().room_channel(&rig.room_id(room));
        let data = vec![0xabu8; size];
        // Sequence numbers keep increasing across iterations: the hub drops duplicates.
        let mut next_seq = 1u64;
        let name = match chunk {
            None => format!("{size}B"),
            Some(c) => format!("{size}B_in_{}KiB_reads", c / 1024),
        };
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || {
                    let buf = common::messages(&channel, room, &data, next_seq, K);
                    next_seq += K;
                    buf
                },
                |mut buf| {
                    let mut delivered = 0u64;
                    match chunk {
                        None => {
                            rig.hub.handle_input(SUBSCRIBER, &mut buf, rig.now);
                            delivered += drain(&mut rig);
                        }
                        Some(chunk) => {
                            // As a socket delivers it: reads of `chunk` bytes, frames split.
                            let mut pending = BytesMut::new();
                            while !buf.is_empty() {
                                let n = chunk.min(buf.len());
                                pending.extend_from_slice(&buf.split_to(n));
                                rig.hub.handle_input(SUBSCRIBER, &mut pending, rig.now);
                                delivered += drain(&mut rig);
                            }
                        }
                    }
                    assert_eq!(delivered, K, "every message delivered once");
                    black_box(delivered)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn drain(rig: &mut Rig) -> u64 {
    let mut n = 0;
    while let Some(e) = rig.hub.poll_event() {
        if let Event::Delivery(d) = &e {
            black_box(d.message.data.len());
            n += 1;
        }
    }
    n
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = ingest
}

/// The `ROOMCAST_INGEST_LOOP` mode: `n` 64-byte messages, no criterion.
fn ingest_loop(n: u64) {
    let mut rig = Rig::ready(Config::default());
    rig.join_live("bench/", ROOMS);
    let room = "bench/500";
    let channel = rig.hub.namer().room_channel(&rig.room_id(room));
    let data = [0xabu8; 64];
    let mut reads = Vec::new();
    let mut seq = 1;
    while seq <= n {
        let count = K.min(n + 1 - seq);
        reads.push(common::messages(&channel, room, &data, seq, count));
        seq += count;
    }
    let delivered = ingest_loop_feed(&mut rig, reads);
    assert_eq!(delivered, n, "every message delivered once");
    println!("{n} messages, {delivered} delivered");
}

/// The measured part of the loop mode: every read through `handle_input`, events drained.
#[inline(never)]
fn ingest_loop_feed(rig: &mut Rig, reads: Vec<BytesMut>) -> u64 {
    let mut delivered = 0;
    for mut buf in reads {
        rig.hub.handle_input(SUBSCRIBER, &mut buf, rig.now);
        delivered += drain(rig);
    }
    delivered
}

fn main() {
    if let Some(n) = std::env::var("ROOMCAST_INGEST_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        ingest_loop(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
