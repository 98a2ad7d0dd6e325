//! Rooms: join/leave at scale. The hub holds 100,000 live rooms (one member each) before
//! anything is timed. One element = one join plus one leave.
//!
//! - `new_room_live_cycle`: join a new room, take the SUBSCRIBE, feed Redis's confirmation
//!   (room live), leave, take the UNSUBSCRIBE, feed its confirmation (room gone).
//! - `new_room_same_turn`: join and leave a new room before the next `poll_transmit`, which
//!   then has nothing to send.
//! - `second_member`: a second member joins and leaves a live room (no Redis traffic).
//!
//! The one-off time to subscribe the 100,000 rooms (joins, batched SUBSCRIBEs, 100,000
//! confirmations through the RESP reader) is printed before the measurements.
//!
//! `cargo bench -p roomcast-core --bench rooms -- --quick`
// criterion_group! defines an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roomcast_core::{Config, Metrics, RoomState, SUBSCRIBER};

use common::Rig;

const ROOMS: usize = 100_000;

fn rooms(c: &mut Criterion) {
    let mut rig = Rig::ready(Config::default());
    let start = Instant::now();
    rig.join_live("room/", ROOMS);
    let took = start.elapsed();
    let m: Metrics = rig.hub.metrics();
    assert_eq!(m.rooms_live, ROOMS);
    eprintln!(
        "rooms: joined and subscribed {ROOMS} rooms in {took:.2?} ({:.0} rooms/s, including the bench's scripted Redis)",
        ROOMS as f64 / took.as_secs_f64()
    );

    let mut group = c.benchmark_group("rooms_at_100k");
    group.throughput(Throughput::Elements(1));

    // Room ids are reused in turn: each cycle ends with the room gone.
    let names: Vec<String> = (0..1024).map(|i| format!("extra/{i}")).collect();
    let confirmations: Vec<(BytesMut, BytesMut)> = names
        .iter()
        .map(|n| {
            let channel = rig.hub.namer().room_channel(&rig.room_id(n));
            let mut sub = BytesMut::new();
            common::push_confirmation(&mut sub, b"subscribe", &channel, ROOMS as i64 + 2);
            let mut unsub = BytesMut::new();
            common::push_confirmation(&mut unsub, b"unsubscribe", &channel, ROOMS as i64 + 1);
            (sub, unsub)
        })
        .collect();

    let mut i = 0usize;
    group.bench_function("new_room_live_cycle", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % names.len();
                (i, confirmations[i].clone())
            },
            |(i, (mut sub, mut unsub))| {
                let room = names[i].as_str();
                rig.hub.join(room, "extra-conn", rig.now).expect("join");
                while let Some(tx) = rig.hub.poll_transmit() {
                    black_box(tx);
                }
                rig.hub.handle_input(SUBSCRIBER, &mut sub, rig.now);
                rig.hub.leave(room, "extra-conn", rig.now).expect("leave");
                while let Some(tx) = rig.hub.poll_transmit() {
                    black_box(tx);
                }
                rig.hub.handle_input(SUBSCRIBER, &mut unsub, rig.now);
                while let Some(e) = rig.hub.poll_event() {
                    black_box(e);
                }
                debug_assert_eq!(rig.hub.room_state(room), None);
            },
            BatchSize::SmallInput,
        );
    });
    assert_eq!(
        rig.hub.metrics().rooms,
        ROOMS,
        "extra rooms were not cleaned up"
    );

    let mut i = 0usize;
    group.bench_function("new_room_same_turn", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            let room = names[i].as_str();
            rig.hub.join(room, "extra-conn", rig.now).expect("join");
            rig.hub.leave(room, "extra-conn", rig.now).expect("leave");
            while let Some(tx) = rig.hub.poll_transmit() {
                black_box(tx);
            }
        });
    });

    let live: Vec<String> = (0..1024).map(|i| format!("room/{}", i * 97)).collect();
    let mut i = 0usize;
    group.bench_function("second_member", |b| {
        b.iter(|| {
            i = (i + 1) % live.len();
            let room = live[i].as_str();
            black_box(rig.hub.join(room, "second", rig.now).expect("join"));
            black_box(rig.hub.leave(room, "second", rig.now).expect("leave"));
            while let Some(tx) = rig.hub.poll_transmit() {
                black_box(tx);
            }
        });
    });
    group.finish();

    assert_eq!(rig.hub.room_state("room/0"), Some(RoomState::Live));
    assert_eq!(rig.hub.metrics().rooms, ROOMS);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = rooms
}
criterion_main!(benches);
