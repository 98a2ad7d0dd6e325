//! Memory per subscribed room: how much the process's resident memory grows when the hub
//! takes 100,000 live rooms with one member each, less the room id bytes themselves (those kept
//! out of line: ids up to `INLINE_ID_BYTES` live inside the entries).
//! Prints the figures; asserts nothing about them.
//!
//! Measured two ways: exact live heap bytes, counted by `stats_alloc`'s instrumented
//! allocator (what the hub's data structures hold, without malloc's own overhead), and the
//! growth of `VmRSS` (Linux `/proc/self/status`), which adds the allocator's overhead and
//! memory freed but kept. Twice: every room with its own connection, and one connection in
//! all rooms (the shape of a client that subscribes channels, for comparison with them).
//!
//! `cargo bench -p roomcast-core --bench room_memory`

mod common;

use roomcast_core::{Config, INLINE_ID_BYTES};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use common::Rig;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes now (allocated minus freed since the region began; `stats_alloc` already
/// adds a reallocation's growth to `bytes_allocated` and its shrinkage to `bytes_deallocated`).
fn heap_bytes(region: &Region<'_, std::alloc::System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

const ROOMS: usize = 100_000;

/// Resident set size in bytes, if the platform tells.
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn measure(rooms: usize, shared_conn: bool) {
    let mut rig = Rig::ready(Config::default());
    rig.serve();
    let region = Region::new(GLOBAL);
    let rss_before = rss_bytes();
    let heap_before = heap_bytes(&region);
    for i in 0..rooms {
        let conn = if shared_conn {
            "c".to_string()
        } else {
            format!("c{i}")
        };
        rig.hub
            .join(&format!("room/{i}"), &conn, rig.now)
            .expect("join");
        if i % 4096 == 4095 {
            rig.serve();
        }
    }
    rig.serve();
    let heap = heap_bytes(&region) - heap_before;
    let rss = rss_bytes()
        .zip(rss_before)
        .map(|(a, b)| a.saturating_sub(b));
    let m = rig.hub.metrics();
    assert_eq!(m.rooms_live, rooms, "every room live");
    assert_eq!(m.members, rooms);
    // Ids up to INLINE_ID_BYTES live inside the room's or connection's entry: only longer
    // ones are id bytes on the heap.
    let out_of_line = |s: String| {
        if s.len() > INLINE_ID_BYTES {
            s.len()
        } else {
            0
        }
    };
    let id_bytes: usize = (0..rooms).map(|i| out_of_line(format!("room/{i}"))).sum();
    let conn_bytes: usize = if shared_conn {
        out_of_line("c".to_string())
    } else {
        (0..rooms).map(|i| out_of_line(format!("c{i}"))).sum()
    };
    let per = |b: isize| b as f64 / rooms as f64;
    println!(
        "room_memory: {rooms} live rooms, one member each, {} (default Config, RESP2)",
        if shared_conn {
            "one connection in all rooms"
        } else {
            "a connection per room"
        }
    );
    println!(
        "  heap per room                        : {:.0} bytes",
        per(heap)
    );
    println!(
        "  heap per room less room and conn ids : {:.0} bytes (id strings out of line: {:.1} + {:.1} bytes a room)",
        per(heap - (id_bytes + conn_bytes) as isize),
        id_bytes as f64 / rooms as f64,
        conn_bytes as f64 / rooms as f64
    );
    if let Some(rss) = rss {
        println!(
            "  resident memory per room             : {:.0} bytes",
            per(rss as isize)
        );
    }
}

fn main() {
    // Bench targets also run in test mode (`cargo test --benches`), without `--bench`:
    // keep that fast by measuring fewer rooms.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let rooms = if bench_mode { ROOMS } else { 1_000 };
    measure(rooms, false);
    measure(rooms, true);
    if !bench_mode {
        println!(
            "  (test mode: {rooms} rooms, too few to mean much; `cargo bench` measures {ROOMS})"
        );
    }
}
