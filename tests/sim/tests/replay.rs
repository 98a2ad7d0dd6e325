//! The simulation replays exactly: the same inputs and seed give the same log, event for
//! event (nodes and links iterate in a fixed order, and the only randomness is the seed).

use std::time::Duration;

use roomcast_core::{Config, Publish, SUBSCRIBER};
use roomcast_sim::harness::Observed;
use roomcast_sim::{ModelConfig, Sim, Split};

/// A run with link faults, random splits and presence, as one string per log entry.
fn run(seed: u64) -> Vec<String> {
    let mut s = Sim::new(3, ModelConfig::default(), |_| Config {
        pool_size: 2,
        ..Config::default()
    });
    s.split = Split::Random(11);
    s.seed(seed);
    s.observe();
    s.settle();
    for (i, room) in ["a", "b", "a"].iter().enumerate() {
        s.join(i, room, "m").unwrap();
    }
    s.settle();
    for k in 0..40u32 {
        let now = s.now;
        let data = k.to_le_bytes();
        s.nodes[(k % 3) as usize]
            .hub
            .publish(
                &Publish::broadcast(["a", "b"][(k % 2) as usize], &data),
                now,
            )
            .unwrap();
        match k {
            10 => s.kill_link(1, SUBSCRIBER),
            20 => s.deafen(2, SUBSCRIBER, true),
            30 => s.deafen(2, SUBSCRIBER, false),
            _ => {}
        }
        s.advance(Duration::from_millis(50));
    }
    s.advance(Duration::from_secs(10));
    s.log
        .iter()
        .map(|o| match o {
            // A fan-out's bytes are long and say nothing the sequence number does not.
            Observed::Fanout { fanout, foreign } => format!("fanout {} {foreign}", fanout.seq),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The first entry where two logs differ, if any.
fn first_difference(a: &[String], b: &[String]) -> Option<(usize, Option<String>, Option<String>)> {
    (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .map(|i| (i, a.get(i).cloned(), b.get(i).cloned()))
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(7);
    assert!(
        a.len() > 100,
        "a run with something in it: {} entries",
        a.len()
    );
    assert_eq!(first_difference(&a, &run(7)), None);
    // Another seed cuts the input into other pieces; what happens does not change.
    assert_eq!(first_difference(&a, &run(8)), None);
}
