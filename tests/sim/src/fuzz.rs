//! Fuzz target bodies: everything a hostile network or caller can hand the core, with the
//! core's promises checked as assertions.
//!
//! The bodies live here, not in `fuzz/`, so that every workspace build compiles them and
//! `tests/sim/tests/fuzz_corpus_replay.rs` replays the committed corpora in `cargo test`; the
//! `fuzz/` crate (libFuzzer, its own workspace) only wraps them. Every target takes raw bytes,
//! so a corpus file of any target is just a file:
//!
//! | target | input | checks |
//! |---|---|---|
//! | [`link_input`] | a flag byte, then bytes "from Redis" into one link, during or after its handshake | no panic; the partial frame kept is bounded; a broken stream is a typed `LinkDown` and the link is reopened; gauges stay consistent |
//! | [`envelope()`] | an envelope payload | no panic; what decodes re-encodes to the same body and decodes to the same fields; bincode 1, the format's definition, decodes exactly what roomcast decodes (the same fields, or an error for both) and encodes the decoded message to the same bytes |
//! | [`room_channel`] | a limit, two room ids and a channel | accepted ids map to a channel and back; two different ids never share one; any channel that parses re-encodes to itself |
//! | [`operations`] | an [`arbitrary`] sequence of commands, network faults, hostile bytes and clock jumps on up to three hubs against the model Redis | the invariants listed on [`run_operations`], after every step and at the end |
//! | [`cluster_operations`] | an [`arbitrary`] sequence of member commands and publishes on three hubs in cluster mode, with slot migrations, failovers, partitions and deaf subscriptions of the model cluster | the invariants listed on [`run_cluster_operations`] |
//!
//! A failed check panics, which is what libFuzzer reports as a crash.

mod checker;
mod cluster_operations;
mod link_input;
mod operations;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use roomcast_core::envelope::{self, MessageType, HARD_MAX_ENVELOPE_BYTES};
use roomcast_core::naming::{ChannelNamer, ConnId, RoomId, MAX_ID_BYTES};
use roomcast_core::InstanceId;

pub use cluster_operations::{
    cluster_operations, run_cluster_operations, ClusterOp, CLUSTER_CONNS, CLUSTER_HUBS,
    CLUSTER_ROOMS,
};
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
    ("cluster_operations", cluster_operations),
];

/// The envelope as the GraphWiz design defined it: a `PubSubMessage` in bincode 1's default
/// format (fixed-width little-endian integers, u64 length prefixes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PubSubMessage {
    /// The room.
    pub room_id: String,
    /// The kind of message.
    pub message_type: PubSubMessageType,
    /// The payload.
    pub data: Vec<u8>,
    /// The connection not to deliver to.
    pub exclude_connection: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
}

/// `PubSubMessage::message_type` as the GraphWiz design defined it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // The variants are named for what they are.
pub enum PubSubMessageType {
    Broadcast,
    PresenceEvent,
    SystemNotification,
}

impl PubSubMessageType {
    fn ours(self) -> MessageType {
        match self {
            PubSubMessageType::Broadcast => MessageType::Broadcast,
            PubSubMessageType::PresenceEvent => MessageType::PresenceEvent,
            PubSubMessageType::SystemNotification => MessageType::SystemNotification,
        }
    }
}

/// Decodes `data` with bincode 1 as `bincode::deserialize` does (trailing bytes allowed),
/// with a limit so that no length prefix makes it allocate more than the input.
fn bincode1_decode(data: &[u8]) -> Option<PubSubMessage> {
    use bincode1::Options;
    bincode1::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(data.len() as u64)
        .deserialize(data)
        .ok()
}

/// Encodes a decoded envelope again, with `trailer`.
fn encode_again(d: &envelope::Decoded<'_>, trailer: Option<&envelope::Trailer>) -> Vec<u8> {
    let mut out = Vec::new();
    envelope::encode(
        &mut out,
        d.room_id,
        d.message_type,
        &d.data,
        d.exclude_connection,
        d.timestamp,
        trailer,
    );
    out
}

/// Compares roomcast's envelope codec with bincode 1 on one payload, both directions: the
/// two decoders accept the same payloads and read the same fields, and what decoded encodes
/// (without a trailer) to the bytes bincode 1 writes, and with one to those bytes and the
/// trailer.
pub fn envelope_vs_bincode1(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let ours = envelope::decode(&payload, usize::MAX);
    let theirs = bincode1_decode(data);
    let (d, m) = match (ours, theirs) {
        (Err(e), None) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        (Ok(d), Some(m)) => (d, m),
        (ours, theirs) => {
            panic!("roomcast and bincode 1 disagree: roomcast {ours:?}, bincode 1 {theirs:?}")
        }
    };
    assert_eq!(d.room_id, m.room_id, "room");
    assert_eq!(d.message_type, m.message_type.ours(), "message type");
    assert_eq!(&d.data[..], &m.data[..], "data");
    assert_eq!(
        d.exclude_connection,
        m.exclude_connection.as_deref(),
        "exclude"
    );
    assert_eq!(d.timestamp, m.timestamp, "timestamp");
    let reference = bincode1::serialize(&m).expect("bincode 1 serializes what it decoded");
    for trailer in [None, d.trailer] {
        let out = encode_again(&d, trailer.as_ref());
        assert_eq!(
            out.get(..reference.len()),
            Some(&reference[..]),
            "roomcast encodes differently from bincode 1"
        );
        let tail: Vec<u8> = trailer.map(|t| t.to_bytes().to_vec()).unwrap_or_default();
        assert_eq!(&out[reference.len()..], &tail[..], "after the body");
        let back = bincode1_decode(&out).expect("bincode 1 reads roomcast's encoding");
        assert_eq!(back, m);
    }
}

/// Decodes `data` as an envelope under several limits, and compares the codec with bincode 1
/// ([`envelope_vs_bincode1`]). Whatever decodes must lie inside the
/// payload, re-encode to the same body bytes, and decode again to the same fields; whatever
/// does not is a typed error with a message.
pub fn envelope(data: &[u8]) {
    envelope_vs_bincode1(data);
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
        let out = encode_again(&d, d.trailer.as_ref());
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

/// Up to `max` operations decoded from what `u` has left, stopping at the first that does
/// not decode (the fuzz targets' input is a setup, then operations to its end).
fn decode_ops<'a, T: arbitrary::Arbitrary<'a>>(
    u: &mut arbitrary::Unstructured<'a>,
    max: usize,
) -> Vec<T> {
    let mut ops = Vec::new();
    while ops.len() < max {
        match T::arbitrary(u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}
