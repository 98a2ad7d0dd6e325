//! The wire message published on a room's channel: body, trailer, limits.
//!
//! # Body
//!
//! The body is the GraphWiz design's `PubSubMessage` exactly as bincode 1's `serialize` writes
//! it, so decoders built from that design read our messages and we read theirs:
//!
//! | field | type | bytes |
//! |---|---|---|
//! | `room_id` | `String` | u64 LE length, UTF-8 |
//! | `message_type` | unit enum | u32 LE variant: Broadcast 0, PresenceEvent 1, SystemNotification 2 |
//! | `data` | `Vec<u8>` | u64 LE length, bytes |
//! | `exclude_connection` | `Option<String>` | u8 0 (none) or 1 followed by a string |
//! | `timestamp` | `i64` | i64 LE (Unix seconds) |
//!
//! bincode 1 is the definition of this format; the code does not run it. The body is written
//! field by field as in the table by one encoder, `put_body` (the hot path of every
//! publish: [`encode`] and the hub's PUBLISH frames both go through it), and read field by
//! field by `read_body`. bincode 2 (`config::legacy()`, which matches bincode 1 byte for
//! byte, bounded by [`HARD_MAX_ENVELOPE_BYTES`]) runs only on a body the hand-written reader
//! refuses, to say what is wrong with it. Tests hold the writer and the reader to bincode 1
//! (`tests/envelope_bincode1.rs`) and the reader to bincode 2 (`read_body_agrees_with_bincode`).
//! bincode is kept inside this module so it can be swapped.
//!
//! # Trailer
//!
//! After the body an envelope may carry a trailer of [`TRAILER_LEN`] bytes, which bincode 1
//! decoders ignore (its `deserialize` accepts trailing bytes):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | [`TRAILER_MAGIC`] `A7 52 43 54` (`0xA7`, then `RCT`) |
//! | 4 | 1 | version, [`TRAILER_VERSION`] (1) |
//! | 5 | 8 | origin instance id, u64 LE |
//! | 13 | 8 | origin epoch, u64 LE |
//! | 21 | 8 | sequence number, u64 LE |
//!
//! Decoding the bytes after the body:
//! - nothing: no trailer;
//! - exactly a version 1 trailer: that trailer;
//! - the magic with a higher version and at least [`TRAILER_LEN`] bytes: a trailer read from
//!   the fields above, the rest ignored. Later versions may only append fields, so a receiver
//!   of this version keeps working with newer senders;
//! - anything else (a short or over-long version 1 trailer, version 0, bytes without the
//!   magic): no trailer. Publishers built from the GraphWiz design never write trailing bytes,
//!   so such bytes cannot come from a compatible sender; the body is still delivered, as a
//!   bincode 1 decoder would deliver it.
//!
//! # Limits
//!
//! [`decode`] refuses payloads longer than the caller's maximum before bincode runs, and
//! bincode itself is bounded by [`HARD_MAX_ENVELOPE_BYTES`]. No length prefix is trusted: a
//! prefix longer than the bytes that follow is an error, never an allocation.

use std::fmt;

use bincode::config::Config;
use bincode::error::DecodeError;
use bytes::{BufMut, Bytes};
use serde::Deserialize;

/// Identifies one running instance (drawn at random at start). Displayed as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The kind of a message (GraphWiz `PubSubMessageType`); the order fixes the wire numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A message for every member of the room (wire value 0).
    Broadcast,
    /// A member joined or left (wire value 1).
    PresenceEvent,
    /// A notice from the system (wire value 2).
    SystemNotification,
}

impl MessageType {
    fn to_wire(self) -> u32 {
        match self {
            MessageType::Broadcast => 0,
            MessageType::PresenceEvent => 1,
            MessageType::SystemNotification => 2,
        }
    }

    fn from_wire(value: u32) -> Option<Self> {
        match value {
            0 => Some(MessageType::Broadcast),
            1 => Some(MessageType::PresenceEvent),
            2 => Some(MessageType::SystemNotification),
            _ => None,
        }
    }
}

/// Who sent a message and its place in the sender's sequence for the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The publishing instance.
    pub origin: InstanceId,
    /// The origin's epoch: changes when the origin restarts and its sequences start again.
    pub epoch: u64,
    /// Sequence number per (origin, room) within the epoch.
    pub seq: u64,
}

/// Tag that opens a trailer: `0xA7` (never the first byte of UTF-8 text), then `RCT`.
pub const TRAILER_MAGIC: [u8; 4] = [0xA7, b'R', b'C', b'T'];

/// The trailer version this module writes.
pub const TRAILER_VERSION: u8 = 1;

/// Length of a version 1 trailer: magic, version, origin, epoch, seq.
pub const TRAILER_LEN: usize = TRAILER_MAGIC.len() + 1 + 8 + 8 + 8;

/// Default limit on an envelope's size (1 MiB); `Config` may set another.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// Absolute limit on an envelope's size (512 MiB), compiled into the bincode decoder as a
/// last guard. A larger runtime maximum is lowered to this.
pub const HARD_MAX_ENVELOPE_BYTES: usize = 512 << 20;

/// Borrowed view of a decoded envelope.
#[derive(Debug, Clone)]
pub struct Decoded<'a> {
    /// The room the sender addressed. Not validated as a `RoomId`; compare it with the channel
    /// the message arrived on.
    pub room_id: &'a str,
    /// The kind of message.
    pub message_type: MessageType,
    /// The payload: a slice of the decoded buffer, not a copy.
    pub data: Bytes,
    /// The connection that must not receive this message (the sender's own).
    pub exclude_connection: Option<&'a str>,
    /// Unix seconds, as the sender set it.
    pub timestamp: i64,
    /// Origin and sequence, if the sender wrote a trailer.
    pub trailer: Option<Trailer>,
}

/// Why an envelope could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The payload is longer than the maximum.
    TooLarge {
        /// The payload's length in bytes.
        len: usize,
        /// The maximum that applied.
        max: usize,
    },
    /// The payload is not a `PubSubMessage` body.
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::TooLarge { len, max } => write!(
                f,
                "envelope is {len} bytes, over the limit of {max}; the message was dropped. \
                 Publish smaller messages or raise the envelope size limit on every instance"
            ),
            EnvelopeError::Malformed { reason } => write!(
                f,
                "malformed envelope: {reason}; the message was dropped. Check that every \
                 publisher on this channel prefix writes the roomcast/GraphWiz PubSubMessage \
                 format"
            ),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl EnvelopeError {
    fn malformed(reason: &'static str) -> Self {
        EnvelopeError::Malformed { reason }
    }

    fn from_bincode(err: &DecodeError) -> Self {
        Self::malformed(match err {
            DecodeError::UnexpectedEnd { .. } => {
                "it ends early (truncated, or a length prefix is longer than what follows)"
            }
            DecodeError::LimitExceeded | DecodeError::OutsideUsizeRange(_) => {
                "a length prefix exceeds the hard envelope size limit"
            }
            DecodeError::UnexpectedVariant { .. } => "the exclude_connection tag is not 0 or 1",
            _ => "it is not a PubSubMessage body",
        })
    }
}

/// The body as read, borrowing from the payload. Text fields are read as bytes (same wire
/// form) and the variant as its u32, so every error is reported without allocating. The
/// `Deserialize` derive is bincode's view of the body: it reads the bodies `read_body`
/// refuses, to name the error, and is the reference the tests hold `read_body` to.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct BodyIn<'a> {
    #[serde(borrow)]
    room_id: &'a [u8],
    message_type: u32,
    #[serde(borrow)]
    data: &'a [u8],
    #[serde(borrow)]
    exclude_connection: Option<&'a [u8]>,
    timestamp: i64,
}

fn decode_config() -> impl Config {
    bincode::config::legacy().with_limit::<HARD_MAX_ENVELOPE_BYTES>()
}

/// Decodes an envelope without copying: strings borrow from `payload`, `data` is a
/// `Bytes::slice_ref` of it.
///
/// Refuses a payload longer than `max_bytes` (or [`HARD_MAX_ENVELOPE_BYTES`], whichever is
/// smaller) before reading it. For no allocation at all, pass a `payload` that is already
/// shared (e.g. from `BytesMut::freeze`): slicing a `Bytes` made from a `Vec` allocates once.
pub fn decode(payload: &Bytes, max_bytes: usize) -> Result<Decoded<'_>, EnvelopeError> {
    let (room, view) = decode_parts(payload, max_bytes, None)?;
    let room_id = match room {
        RoomField::Text(t) => t,
        // Only reported when a known id was given.
        RoomField::Known => "",
    };
    Ok(Decoded {
        room_id,
        message_type: view.message_type,
        // `view.data` lies within `payload` (see `View`), so `slice` cannot panic.
        data: payload.slice(view.data),
        exclude_connection: view.exclude_connection,
        timestamp: view.timestamp,
        trailer: view.trailer,
    })
}

/// A decoded envelope whose data is still in the buffer it was read from: [`Decoded`] with
/// the data's place in that buffer instead of a slice of it (the caller cuts the data out of
/// whatever owns the buffer).
#[derive(Debug, Clone)]
pub(crate) struct View<'a> {
    pub(crate) message_type: MessageType,
    /// Where the data is in the decoded buffer (always within it).
    pub(crate) data: std::ops::Range<usize>,
    pub(crate) exclude_connection: Option<&'a str>,
    pub(crate) timestamp: i64,
    pub(crate) trailer: Option<Trailer>,
}

/// An envelope's room id as [`decode_in`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomField<'a> {
    /// The id equals the one the caller knows, byte for byte (and so is text).
    Known,
    /// Another id, checked to be text.
    Text(&'a str),
}

/// [`decode`] for a message that arrived on the channel of a room whose id is `known`: the
/// same checks in the same order, but an envelope room id equal to `known` is reported as
/// [`RoomField::Known`] and not checked again as text (the receiving path's hot spot). The
/// room id is the [`RoomField`]; the data is where the [`View`] says, in `payload`.
pub(crate) fn decode_in<'a>(
    payload: &'a [u8],
    max_bytes: usize,
    known: &[u8],
) -> Result<(RoomField<'a>, View<'a>), EnvelopeError> {
    decode_parts(payload, max_bytes, Some(known))
}

fn decode_parts<'a>(
    payload: &'a [u8],
    max_bytes: usize,
    known: Option<&[u8]>,
) -> Result<(RoomField<'a>, View<'a>), EnvelopeError> {
    let max = max_bytes.min(HARD_MAX_ENVELOPE_BYTES);
    if payload.len() > max {
        return Err(EnvelopeError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    let buf: &[u8] = payload;
    let (body, used) = match read_body(buf) {
        Some(read) => read,
        None => bincode::serde::borrow_decode_from_slice(buf, decode_config())
            .map_err(|err| EnvelopeError::from_bincode(&err))?,
    };
    let room = if known == Some(body.room_id) {
        RoomField::Known
    } else {
        RoomField::Text(
            std::str::from_utf8(body.room_id)
                .map_err(|_| EnvelopeError::malformed("the room id is not valid UTF-8"))?,
        )
    };
    let exclude_connection = match body.exclude_connection {
        None => None,
        Some(raw) => Some(std::str::from_utf8(raw).map_err(|_| {
            EnvelopeError::malformed("the excluded connection id is not valid UTF-8")
        })?),
    };
    let message_type = MessageType::from_wire(body.message_type)
        .ok_or_else(|| EnvelopeError::malformed("the message type is not 0, 1 or 2"))?;
    let trailer = parse_trailer(buf.get(used..).unwrap_or_default());
    let view = View {
        message_type,
        data: place_in(buf, body.data),
        exclude_connection,
        timestamp: body.timestamp,
        trailer,
    };
    Ok((room, view))
}

/// Where `part`, a slice borrowed from `buf`, lies in it (an empty range at 0 for anything
/// else, which a caller of this module never passes).
fn place_in(buf: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let offset = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match offset.checked_add(part.len()) {
        Some(end) if end <= buf.len() => offset..end,
        _ => 0..0,
    }
}

/// Reads a well-formed body field by field, as bincode reads it, and says how many bytes it
/// took; `None` for anything else, which is then left to bincode and its errors. Where this
/// reads a body, bincode reads the same one: the fields are a fixed layout (see the module
/// docs), and bincode's limit cannot be reached by a payload within [`decode`]'s maximum.
fn read_body(buf: &[u8]) -> Option<(BodyIn<'_>, usize)> {
    let mut rest = buf;
    let room_id = take_bytes(&mut rest)?;
    let message_type = u32::from_le_bytes(take_array(&mut rest)?);
    let data = take_bytes(&mut rest)?;
    let exclude_connection = match take_array::<1>(&mut rest)? {
        [0] => None,
        [1] => Some(take_bytes(&mut rest)?),
        _ => return None,
    };
    let timestamp = i64::from_le_bytes(take_array(&mut rest)?);
    let body = BodyIn {
        room_id,
        message_type,
        data,
        exclude_connection,
        timestamp,
    };
    Some((body, buf.len() - rest.len()))
}

/// `N` bytes off the front of `rest`.
fn take_array<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

/// A bincode 1 string or byte vector (u64 LE length, then the bytes) off the front of `rest`.
fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(u64::from_le_bytes(take_array(rest)?)).ok()?;
    if len > rest.len() {
        return None;
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Some(bytes)
}

/// Reads the bytes after the body; see the [module docs](self) for the rules.
fn parse_trailer(rest: &[u8]) -> Option<Trailer> {
    let (magic, rest) = rest.split_first_chunk::<4>()?;
    let (&version, rest) = rest.split_first()?;
    if *magic != TRAILER_MAGIC {
        return None;
    }
    let known_fields = match version {
        TRAILER_VERSION if rest.len() == TRAILER_LEN - 5 => rest,
        v if v > TRAILER_VERSION => rest,
        _ => return None,
    };
    let (origin, fields) = known_fields.split_first_chunk::<8>()?;
    let (epoch, fields) = fields.split_first_chunk::<8>()?;
    let (seq, _newer_fields) = fields.split_first_chunk::<8>()?;
    Some(Trailer {
        origin: InstanceId(u64::from_le_bytes(*origin)),
        epoch: u64::from_le_bytes(*epoch),
        seq: u64::from_le_bytes(*seq),
    })
}

/// Encoded size, so callers can check limits before allocating. Saturates instead of
/// overflowing.
pub fn encoded_len(room_id: &str, data_len: usize, exclude: Option<&str>, trailer: bool) -> usize {
    let fixed = 8 + 4 + 8 + 1 + 8 + if trailer { TRAILER_LEN } else { 0 };
    let exclude_len = exclude.map_or(0, |e| e.len().saturating_add(8));
    fixed
        .saturating_add(room_id.len())
        .saturating_add(data_len)
        .saturating_add(exclude_len)
}

/// Appends the encoded envelope to `out`: the body exactly as bincode 1 writes
/// `PubSubMessage`, then the trailer if one is given. Writes exactly [`encoded_len`] bytes.
///
/// Written by `put_body`; the tests hold it to bincode 1's bytes. Going through bincode's
/// serde path cost several times more per message.
pub fn encode(
    out: &mut Vec<u8>,
    room_id: &str,
    message_type: MessageType,
    data: &[u8],
    exclude: Option<&str>,
    timestamp: i64,
    trailer: Option<&Trailer>,
) {
    out.reserve(encoded_len(room_id, data.len(), exclude, trailer.is_some()));
    put_body(out, room_id, message_type, data, exclude, timestamp);
    if let Some(t) = trailer {
        out.extend_from_slice(&t.to_bytes());
    }
}

/// Appends the body (no trailer) to `out`, field by field as in the [module docs](self):
/// the one encoder of the format, for [`encode`] and for the PUBLISH frames the hub writes
/// straight into a link's output. Writes `encoded_len(.., false)` bytes; reserving them is
/// the caller's part.
pub(crate) fn put_body(
    out: &mut impl BufMut,
    room_id: &str,
    message_type: MessageType,
    data: &[u8],
    exclude: Option<&str>,
    timestamp: i64,
) {
    put_bytes(out, room_id.as_bytes());
    out.put_u32_le(message_type.to_wire());
    put_bytes(out, data);
    match exclude {
        None => out.put_u8(0),
        Some(e) => {
            out.put_u8(1);
            put_bytes(out, e.as_bytes());
        }
    }
    out.put_i64_le(timestamp);
}

/// A bincode 1 string or byte vector: u64 LE length, then the bytes.
fn put_bytes(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u64_le(bytes.len() as u64);
    out.put_slice(bytes);
}

/// Where `data` starts inside an encoded body whose room id is `room_id`.
pub fn data_offset(room_id: &str) -> usize {
    8 + room_id.len() + 4 + 8
}

impl Trailer {
    /// The trailer as written after the body: magic, version, origin, epoch, seq (LE).
    pub fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[..4].copy_from_slice(&TRAILER_MAGIC);
        b[4] = TRAILER_VERSION;
        b[5..13].copy_from_slice(&self.origin.0.to_le_bytes());
        b[13..21].copy_from_slice(&self.epoch.to_le_bytes());
        b[21..29].copy_from_slice(&self.seq.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(room: &str, data: &[u8], exclude: Option<&str>, t: Option<&Trailer>) -> Bytes {
        let mut out = Vec::new();
        encode(
            &mut out,
            room,
            MessageType::PresenceEvent,
            data,
            exclude,
            -7,
            t,
        );
        assert_eq!(
            out.len(),
            encoded_len(room, data.len(), exclude, t.is_some())
        );
        Bytes::from(out)
    }

    const T: Trailer = Trailer {
        origin: InstanceId(0x0102_0304_0506_0708),
        epoch: 9,
        seq: u64::MAX,
    };

    #[test]
    fn round_trip() {
        for t in [None, Some(&T)] {
            for exclude in [None, Some("conn-1"), Some("")] {
                let payload = encoded("hub/abc", b"hello", exclude, t);
                let d = decode(&payload, DEFAULT_MAX_ENVELOPE_BYTES).expect("decodes");
                assert_eq!(d.room_id, "hub/abc");
                assert_eq!(d.message_type, MessageType::PresenceEvent);
                assert_eq!(&d.data[..], b"hello");
                assert_eq!(d.exclude_connection, exclude);
                assert_eq!(d.timestamp, -7);
                assert_eq!(d.trailer.as_ref(), t);
            }
        }
    }

    #[test]
    fn known_bytes() {
        let payload = encoded("r", b"\x01\x02", Some("c"), Some(&T));
        let mut expected = Vec::new();
        expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'r']);
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0, 0, b'c']);
        expected.extend_from_slice(&(-7i64).to_le_bytes());
        expected.extend_from_slice(&[0xA7, b'R', b'C', b'T', 1]);
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expected.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0xff; 8]);
        assert_eq!(&payload[..], &expected[..]);
        assert_eq!(InstanceId(0xabc).to_string(), "0000000000000abc");
    }

    #[test]
    fn size_limits() {
        let payload = encoded("room", &[0; 100], None, None);
        let len = payload.len();
        assert!(decode(&payload, len).is_ok());
        assert_eq!(
            decode(&payload, len - 1).unwrap_err(),
            EnvelopeError::TooLarge { len, max: len - 1 }
        );
        assert!(decode(&payload, usize::MAX).is_ok());
        let err = decode(&payload, 10).unwrap_err();
        assert!(err.to_string().contains("over the limit of 10"));
        assert_eq!(
            encoded_len("r", usize::MAX, Some("x"), true),
            usize::MAX,
            "saturates"
        );
    }

    #[test]
    fn trailer_rules() {
        let body = encoded("room", b"d", None, None);
        let with = |tail: &[u8]| {
            let mut v = body.to_vec();
            v.extend_from_slice(tail);
            decode(&Bytes::from(v), DEFAULT_MAX_ENVELOPE_BYTES)
                .expect("body decodes")
                .trailer
        };
        let mut v1 = Vec::new();
        encode(&mut v1, "", MessageType::Broadcast, b"", None, 0, Some(&T));
        let v1_trailer = v1.get(v1.len() - TRAILER_LEN..).expect("trailer").to_vec();

        assert_eq!(with(b""), None);
        assert_eq!(with(&v1_trailer), Some(T));
        // A version 1 trailer with a byte missing or extra is not a trailer.
        assert_eq!(with(&v1_trailer[..TRAILER_LEN - 1]), None);
        assert_eq!(with(&[&v1_trailer[..], b"x"].concat()), None);
        // Version 0 is unknown: not a trailer.
        let mut v0 = v1_trailer.clone();
        v0[4] = 0;
        assert_eq!(with(&v0), None);
        // A later version: the known fields are read, appended fields ignored.
        let mut v2 = v1_trailer.clone();
        v2[4] = 2;
        assert_eq!(with(&v2), Some(T));
        v2.extend_from_slice(b"future fields");
        assert_eq!(with(&v2), Some(T));
        assert_eq!(with(&v2[..TRAILER_LEN - 1]), None);
        // Garbage, or a wrong magic.
        assert_eq!(with(b"garbage"), None);
        let mut bad_magic = v1_trailer.clone();
        bad_magic[0] = 0xA8;
        assert_eq!(with(&bad_magic), None);
    }

    #[test]
    fn zero_copy() {
        let mut buf = bytes::BytesMut::new();
        let mut out = Vec::new();
        encode(
            &mut out,
            "room",
            MessageType::Broadcast,
            b"payload",
            None,
            1,
            None,
        );
        buf.extend_from_slice(&out);
        let payload = buf.freeze();
        let d = decode(&payload, DEFAULT_MAX_ENVELOPE_BYTES).expect("decodes");
        let range = payload.as_ptr_range();
        assert!(range.contains(&d.data.as_ptr()));
        assert!(d.data.as_ptr_range().end <= range.end);
        assert!(range.contains(&d.room_id.as_ptr()));
    }

    /// What bincode makes of a body, the specification [`read_body`] keeps.
    fn bincode_body(buf: &[u8]) -> Result<(BodyIn<'_>, usize), DecodeError> {
        bincode::serde::borrow_decode_from_slice(buf, decode_config())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Bodies, whole or cut, with bytes overwritten (lengths, tags and all): wherever the
        /// hand-written reader reads a body, bincode reads the same, and nowhere else; every
        /// body `encode` writes, it reads.
        #[test]
        fn read_body_agrees_with_bincode(
            room in "[a-z/]{0,6}",
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            exclude in proptest::option::of("[a-z]{0,4}"),
            trailer in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..64, proptest::num::u8::ANY), 0..3),
            cut in proptest::option::of(0usize..80),
        ) {
            let t = Trailer { origin: InstanceId(3), epoch: 1, seq: 9 };
            let mut buf = Vec::new();
            let ty = MessageType::SystemNotification;
            encode(&mut buf, &room, ty, &data, exclude.as_deref(), -5, trailer.then_some(&t));
            let intact = edits.is_empty() && cut.is_none();
            for (at, byte) in edits {
                if let Some(b) = buf.get_mut(at) {
                    // Small values, so that lengths and tags land near the valid ones.
                    *b = byte % 4;
                }
            }
            if let Some(cut) = cut {
                buf.truncate(cut);
            }
            let ours = read_body(&buf);
            if intact {
                proptest::prop_assert!(ours.is_some());
            }
            // Both ways: bincode reads nothing the hand-written reader refuses, so running
            // it on a refused body only names the error.
            proptest::prop_assert_eq!(ours, bincode_body(&buf).ok());
        }
    }

    #[test]
    fn read_body_refuses_what_bincode_refuses() {
        let mut body = Vec::new();
        encode(
            &mut body,
            "r",
            MessageType::Broadcast,
            b"d",
            Some("c"),
            1,
            None,
        );
        // The exclude_connection tag (after 8 + 1 + 4 + 8 + 1 bytes) set to 2; a length
        // prefix past the end; one over `usize` on 32-bit targets; a cut in each field.
        let mut bad_tag = body.clone();
        bad_tag[22] = 2;
        let mut long_room = body.clone();
        long_room[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        for bad in [&bad_tag[..], &long_room] {
            assert!(read_body(bad).is_none());
            assert!(bincode_body(bad).is_err());
        }
        for cut in 0..body.len() {
            assert!(read_body(&body[..cut]).is_none(), "{cut}");
            assert!(bincode_body(&body[..cut]).is_err(), "{cut}");
        }
        assert_eq!(read_body(&body).map(|(_, used)| used), Some(body.len()));
    }
}
