//! Memory per subscribed room: how much the process's resident memory grows when the hub
//! takes 100,000 live rooms with one member each, less the room id bytes themselves.
//! Prints the figures; asserts nothing about them.
//!
//! Measured as the growth of `VmRSS` (Linux `/proc/self/status`), so it includes the
//! allocator's own overhead per allocation and any memory freed but kept by the allocator
//! (a few hundred KiB of transient buffers while subscribing, against tens of MiB for the
//! rooms). A counting `#[global_allocator]` would give exact heap bytes, but it needs an
//! `unsafe impl GlobalAlloc`, which the workspace's `unsafe_code = "forbid"` refuses in every
//! target of the core, benches included.
//!
//! `cargo bench -p roomcast-core --bench room_memory`

mod common;

use roomcast_core::Config;

use common::Rig;

const ROOMS: usize = 100_000;

/// Resident set size in bytes, if the platform tells.
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn main() {
    // Bench targets also run in test mode (`cargo test --benches`), without `--bench`:
    // keep that fast by measuring fewer rooms.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let rooms = if bench_mode { ROOMS } else { 1_000 };

    let mut rig = Rig::ready(Config::default());
    rig.serve();
    let Some(before) = rss_bytes() else {
        println!("room_memory: /proc/self/status has no VmRSS here; nothing measured");
        return;
    };

    rig.join_live("room/", rooms);
    let after = rss_bytes().unwrap_or(before);
    let m = rig.hub.metrics();
    assert_eq!(m.rooms_live, rooms, "every room live");
    assert_eq!(m.members, rooms);

    let id_bytes: usize = (0..rooms).map(|i| format!("room/{i}").len()).sum();
    let conn_bytes: usize = (0..rooms).map(|i| format!("c{i}").len()).sum();
    let grown = after.saturating_sub(before);
    let per_room = grown as f64 / rooms as f64;
    let less_id = grown.saturating_sub(id_bytes) as f64 / rooms as f64;
    let less_ids = grown.saturating_sub(id_bytes + conn_bytes) as f64 / rooms as f64;
    println!("room_memory: {rooms} live rooms, one member each (default Config, RESP2)");
    println!("  resident memory grown             : {grown} bytes");
    println!("  per room                          : {per_room:.0} bytes");
    println!(
        "  per room, less room id bytes      : {less_id:.0} bytes (ids average {:.1} bytes)",
        id_bytes as f64 / rooms as f64
    );
    println!(
        "  per room, less room and conn ids  : {less_ids:.0} bytes (conn ids average {:.1} bytes)",
        conn_bytes as f64 / rooms as f64
    );
    if !bench_mode {
        println!(
            "  (test mode: {rooms} rooms, too few to mean much; `cargo bench` measures {ROOMS})"
        );
    }
}
