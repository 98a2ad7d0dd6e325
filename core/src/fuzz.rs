//! Fuzz target bodies (feature `sim`): everything a hostile network or caller can hand the
//! core, with the core's promises checked as assertions.
//!
//! The bodies live here, not in `fuzz/`, so that every ordinary build compiles them and
//! `core/tests/fuzz_corpus_replay.rs` replays the committed corpora in `cargo test`; the
//! `fuzz/` crate (libFuzzer, its own workspace) only wraps them. Every target takes raw bytes,
//! so a corpus file of any target is just a file:
//!
//! | target | input | checks |
//! |---|---|---|
//! | [`link_input`] | a flag byte, then bytes "from Redis" into one link, during or after its handshake | no panic; the partial frame kept is bounded; a broken stream is a typed `LinkDown` and the link is reopened; gauges stay consistent |
//! | [`envelope()`] | an envelope payload | no panic; what decodes re-encodes to the same body and decodes to the same fields |
//! | [`room_channel`] | a limit, two room ids and a channel | accepted ids map to a channel and back; two different ids never share one; any channel that parses re-encodes to itself |
//! | [`operations`] | an [`arbitrary`] sequence of commands, network faults, hostile bytes and clock jumps on up to three hubs against the model Redis | the invariants listed on [`run_operations`], after every step and at the end |
//!
//! A failed check panics, which is what libFuzzer reports as a crash.

mod checker;
mod cluster;
mod link_input;
mod operations;

use bytes::Bytes;

use crate::envelope::{self, HARD_MAX_ENVELOPE_BYTES};
use crate::naming::{ChannelNamer, ConnId, RoomId, MAX_ID_BYTES};
use crate::InstanceId;

pub use link_input::{link_input, link_input_requests, Flags, INSTANCE, MEMBERS};
pub use operations::{operations, run_operations, Name, Op, Setup};

/// A target body: any bytes in, a panic for a broken promise.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/*.rs` and the corpus directories name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("link_input", link_input),
    ("envelope", envelope),
    ("room_channel", room_channel),
    ("operations", operations),
];

/// Decodes `data` as an envelope under several limits. Whatever decodes must lie inside the
/// payload, re-encode to the same body bytes, and decode again to the same fields; whatever
/// does not is a typed error with a message.
pub fn envelope(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    for max in [
        64,
        data.len(),
        envelope::DEFAULT_MAX_ENVELOPE_BYTES,
        usize::MAX,
    ] {
        let d = match envelope::decode(&payload, max) {
            Ok(d) => d,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        assert!(payload.len() <= max.min(HARD_MAX_ENVELOPE_BYTES));
        let body_len = envelope::encoded_len(d.room_id, d.data.len(), d.exclude_connection, false);
        assert!(
            body_len <= payload.len(),
            "the body is longer than the payload"
        );
        assert_eq!(
            &d.data[..],
            &payload[envelope::data_offset(d.room_id)..][..d.data.len()],
            "data is not where the body says"
        );
        let mut out = Vec::new();
        envelope::encode(
            &mut out,
            d.room_id,
            d.message_type,
            &d.data,
            d.exclude_connection,
            d.timestamp,
            d.trailer.as_ref(),
        );
        assert_eq!(
            &out[..body_len],
            &payload[..body_len],
            "the body re-encodes differently"
        );
        let again = Bytes::from(out);
        let e = envelope::decode(&again, usize::MAX).expect("a re-encoded envelope decodes");
        assert_eq!(e.room_id, d.room_id);
        assert_eq!(e.message_type, d.message_type);
        assert_eq!(e.data, d.data);
        assert_eq!(e.exclude_connection, d.exclude_connection);
        assert_eq!(e.timestamp, d.timestamp);
        assert_eq!(e.trailer, d.trailer);
    }
}

/// The room ↔ channel mapping: `data` is a limit byte, then two room ids and a channel
/// separated by `0xFF` bytes (never part of UTF-8). Accepted ids round-trip and two
/// different accepted ids never share a channel; a channel that parses is exactly the
/// channel of the id it parses to, and that id is accepted.
pub fn room_channel(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    // Small limits hit the length checks; 0 stands for the hard limit.
    let max = match limit {
        0 => MAX_ID_BYTES,
        n => usize::from(n),
    };
    let mut parts = rest.split(|&b| b == 0xFF);
    let a = parts.next().unwrap_or_default();
    let b = parts.next().unwrap_or_default();
    let raw = parts.next().unwrap_or_default();
    let namers = [
        ChannelNamer::default(),
        ChannelNamer::new("a:b%2").expect("a valid prefix"),
    ];
    for namer in &namers {
        let ids: Vec<Option<RoomId>> = [a, b]
            .iter()
            .map(|s| {
                let s = std::str::from_utf8(s).ok()?;
                let id = RoomId::new(s, max);
                // Rooms and connections follow the same rules.
                assert_eq!(id.is_ok(), ConnId::new(s, max).is_ok());
                id.ok()
            })
            .collect();
        let mut channels = Vec::new();
        for id in ids.iter().flatten() {
            let ch = namer.room_channel(id);
            let mut appended = b"x".to_vec();
            namer.write_room_channel(id, &mut appended);
            assert_eq!(&appended[1..], &ch[..]);
            assert_eq!(namer.room_from_channel(&ch, max).as_ref(), Some(id));
            assert_eq!(
                namer.room_str_from_channel(&ch, max).as_deref(),
                Some(id.as_str())
            );
            assert_ne!(ch, namer.control_channel(InstanceId(0)));
            channels.push((id.clone(), ch));
        }
        if let [(ia, ca), (ib, cb)] = &channels[..] {
            assert_eq!(ia == ib, ca == cb, "{ia:?} and {ib:?} share a channel");
        }
        for input in [raw, a] {
            if let Some(id) = namer.room_from_channel(input, max) {
                assert!(RoomId::new(id.as_str(), max).is_ok());
                assert_eq!(&namer.room_channel(&id)[..], input);
            }
        }
    }
}
