//! Validated ids and the injective mapping between rooms and Redis channel names.
//!
//! Ids ([`RoomId`], [`ConnId`]) are validated once, at the boundary: they are non-empty, at
//! most a configured number of bytes long (never more than [`MAX_ID_BYTES`]) and contain no
//! control characters (`char::is_control`). Any other Unicode is allowed.
//!
//! A room's channel is `{prefix}:room:{escaped id}` ([`ChannelNamer`]). The GraphWiz design
//! wrote every `/` of a room id as `:` (room `hub/abc` → `graphwiz:room:hub:abc`); on its own
//! that lets `a/b` and `a:b` share a channel, so `%` and `:` are percent-encoded first:
//!
//! | in the id | in the channel |
//! |---|---|
//! | `%` | `%25` |
//! | `:` | `%3A` |
//! | `/` | `:` |
//! | anything else | itself |
//!
//! The mapping is injective and reversible: [`ChannelNamer::room_from_channel`] accepts exactly
//! the channels [`ChannelNamer::write_room_channel`] produces. For room ids without `:` or `%`
//! the channel is the one the GraphWiz design used, so publishers built from it interoperate.

use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU8;
use std::ops::DerefMut;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::envelope::InstanceId;

/// Hard upper bound for any id (the configurable limits in `Config` are <= this).
///
/// A limit passed to [`RoomId::new`] or [`ConnId::new`] above this is lowered to it.
pub const MAX_ID_BYTES: usize = 4096;

/// Default limit on a room id's length in bytes (`Config::max_room_id_bytes`).
pub const DEFAULT_MAX_ROOM_ID_BYTES: usize = 256;

/// Default limit on a connection id's length in bytes (`Config::max_conn_id_bytes`).
pub const DEFAULT_MAX_CONN_ID_BYTES: usize = 256;

/// Default channel prefix, the one the GraphWiz design used (`REDIS_CHANNEL_PREFIX`).
pub const DEFAULT_CHANNEL_PREFIX: &str = "graphwiz";

/// Longest channel prefix [`ChannelNamer::new`] accepts, in bytes.
pub const MAX_PREFIX_BYTES: usize = 256;

/// Which kind of id a [`NameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// A room id ([`RoomId`]).
    Room,
    /// A connection id ([`ConnId`]).
    Connection,
}

impl IdKind {
    /// The `Config` field that sets this kind's length limit, named in error messages.
    fn limit_setting(self) -> &'static str {
        match self {
            IdKind::Room => "Config::max_room_id_bytes",
            IdKind::Connection => "Config::max_conn_id_bytes",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Room => "room id",
            IdKind::Connection => "connection id",
        })
    }
}

/// Why an id or a channel prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The id is the empty string.
    Empty {
        /// Which kind of id.
        what: IdKind,
    },
    /// The id is longer than the limit.
    TooLong {
        /// Which kind of id.
        what: IdKind,
        /// The id's length in bytes.
        len: usize,
        /// The limit in bytes that applied.
        max: usize,
    },
    /// The id contains a control character (`char::is_control`).
    ControlChar {
        /// Which kind of id.
        what: IdKind,
        /// Byte offset of the first control character.
        index: usize,
    },
    /// The channel prefix is unusable.
    BadPrefix {
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty { what } => {
                write!(f, "{what} is empty; use a non-empty id")
            }
            NameError::TooLong { what, len, max } if *max >= MAX_ID_BYTES => write!(
                f,
                "{what} is {len} bytes long, over the hard limit of {max}; use a shorter id"
            ),
            NameError::TooLong { what, len, max } => write!(
                f,
                "{what} is {len} bytes long, over the limit of {max}; \
                 use a shorter id or raise {}",
                what.limit_setting()
            ),
            NameError::ControlChar { what, index } => write!(
                f,
                "{what} has a control character at byte {index}; \
                 remove control characters (newline, tab, NUL and the like) from the id"
            ),
            NameError::BadPrefix { reason } => write!(
                f,
                "channel prefix is invalid: {reason}; use a non-empty prefix of at most \
                 {MAX_PREFIX_BYTES} bytes without whitespace or control characters"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Byte offset of the first control character (`char::is_control`) in `s`.
///
/// Works on bytes: the control characters are U+0000..=U+001F, U+007F (one byte each) and
/// U+0080..=U+009F, which UTF-8 writes as `0xC2` followed by `0x80..=0x9F`. In valid UTF-8
/// `0xC2` is always a lead byte, so this never matches inside another character.
fn first_control(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    // Most ids are printable ASCII: one pass without early exit (which vectorizes) proves it.
    let printable_ascii = bytes
        .iter()
        .fold(true, |ok, &b| ok & (0x20..0x7F).contains(&b));
    if printable_ascii {
        return None;
    }
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let is_control =
            b < 0x20 || b == 0x7F || (b == 0xC2 && matches!(bytes.get(i + 1), Some(0x80..=0x9F)));
        is_control.then_some(i)
    })
}

/// Checks an id against the rules shared by [`RoomId`] and [`ConnId`].
fn validate_id(id: &str, max_bytes: usize, what: IdKind) -> Result<(), NameError> {
    let max = max_bytes.min(MAX_ID_BYTES);
    if id.is_empty() {
        return Err(NameError::Empty { what });
    }
    if id.len() > max {
        return Err(NameError::TooLong {
            what,
            len: id.len(),
            max,
        });
    }
    if let Some(index) = first_control(id) {
        return Err(NameError::ControlChar { what, index });
    }
    Ok(())
}

/// The longest id kept inside the id value itself (no allocation).
pub const INLINE_ID_BYTES: usize = 15;

/// The text of an id: up to [`INLINE_ID_BYTES`] bytes inside the value, a longer one behind
/// one shared allocation. 16 bytes either way: the inline length is never zero, and zero in
/// its place marks the shared form.
#[derive(Clone)]
enum Text {
    Inline(Inline),
    Shared(Arc<Box<str>>),
}

/// An inline id: its bytes, then its length (the last byte, so the shared form's pointer
/// fits beside it).
#[derive(Clone, Copy)]
#[repr(C)]
struct Inline {
    bytes: [u8; INLINE_ID_BYTES],
    len: NonZeroU8,
}

const _: () = assert!(std::mem::size_of::<Text>() == 16);

impl Text {
    fn new(id: &str) -> Text {
        match NonZeroU8::new(id.len() as u8) {
            Some(len) if id.len() <= INLINE_ID_BYTES => {
                let mut bytes = [0u8; INLINE_ID_BYTES];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Text::Inline(Inline { bytes, len })
            }
            _ => Text::Shared(Arc::new(Box::from(id))),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline(i) => &i.bytes[..usize::from(i.len.get())],
            Text::Shared(s) => s.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` cut at its end: always valid; checked anyway (no `unsafe`).
            Text::Inline(i) => {
                std::str::from_utf8(&i.bytes[..usize::from(i.len.get())]).unwrap_or_default()
            }
            Text::Shared(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl Hash for Text {
    /// As the `str` hashes (so maps keyed by an id can be searched with a `&str`), without
    /// building one: see [`hash_id`].
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_id(self.as_bytes(), state)
    }
}

/// Hashes an id's bytes exactly as `str::hash` does on stable Rust (its bytes, then `0xff`:
/// `Hasher::write_str`'s behaviour, which only a nightly hasher can change).
#[inline]
fn hash_id<H: Hasher>(bytes: &[u8], state: &mut H) {
    state.write(bytes);
    state.write_u8(0xff);
}

/// A `&str` to search a hashbrown map keyed by [`RoomId`] without turning each candidate key
/// back into a `str` (`Borrow<str>` would check an inline id's UTF-8 on every comparison).
pub(crate) struct IdStr<'a>(pub(crate) &'a str);

impl Hash for IdStr<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_id(self.0.as_bytes(), state)
    }
}

impl hashbrown::Equivalent<RoomId> for IdStr<'_> {
    #[inline]
    fn equivalent(&self, key: &RoomId) -> bool {
        key.as_bytes() == self.0.as_bytes()
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    /// As the `str`s compare (bytewise).
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Text);

        impl $name {
            /// Validates `id`: non-empty, at most `max_bytes` bytes (and never more than
            /// [`MAX_ID_BYTES`]), no control characters.
            pub fn new(id: &str, max_bytes: usize) -> Result<Self, NameError> {
                validate_id(id, max_bytes, $kind)?;
                Ok(Self(Text::new(&id)))
            }

            /// Checks `id` exactly as [`Self::new`] does, without building (allocating) one.
            pub(crate) fn check(id: &str, max_bytes: usize) -> Result<(), NameError> {
                validate_id(id, max_bytes, $kind)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The id's bytes (its text as UTF-8).
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }

            /// Whether the id is kept inside the value (at most [`INLINE_ID_BYTES`] bytes).
            pub fn is_inline(&self) -> bool {
                matches!(self.0, Text::Inline(_))
            }

        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.as_str()).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;

            /// Validates with [`MAX_ID_BYTES`] as the length limit.
            fn try_from(id: &str) -> Result<Self, NameError> {
                Self::new(id, MAX_ID_BYTES)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;

            /// Validates with [`MAX_ID_BYTES`] as the length limit.
            fn try_from(id: String) -> Result<Self, NameError> {
                validate_id(&id, MAX_ID_BYTES, $kind)?;
                Ok(Self(Text::new(&id)))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
    };
}

id_type!(
    /// A validated room id. Cheap to clone: up to [`INLINE_ID_BYTES`] bytes are kept inside
    /// the value (16 bytes, no allocation), a longer id is shared.
    ///
    /// Built with [`RoomId::new`] (with the configured limit) or `TryFrom` (with
    /// [`MAX_ID_BYTES`]). `Borrow<str>` lets maps keyed by `RoomId` be searched with a `&str`.
    RoomId,
    IdKind::Room
);

impl RoomId {
    /// Whether both are the same value: inline and equal, or sharing one allocation (tests of
    /// interning).
    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Text::Shared(a), Text::Shared(b)) => Arc::ptr_eq(a, b),
            (Text::Inline(_), Text::Inline(_)) => self == other,
            _ => false,
        }
    }

    /// Builds one from an `id` that already passed [`RoomId::check`].
    pub(crate) fn from_checked(id: &str) -> Self {
        Self(Text::new(id))
    }
}

id_type!(
    /// A validated connection id, unique per instance. Cheap to clone: up to
    /// [`INLINE_ID_BYTES`] bytes are kept inside the value (16 bytes, no allocation), a longer
    /// id is shared.
    ///
    /// Built with [`ConnId::new`] (with the configured limit) or `TryFrom` (with
    /// [`MAX_ID_BYTES`]).
    ConnId,
    IdKind::Connection
);

/// Maps rooms to Redis channel names and back. Injective and reversible.
///
/// Channels: `{prefix}:room:{escaped id}` for rooms (escaping in the [module docs](self)),
/// `{prefix}:ctl:{instance}` for an instance's control channel, `{prefix}:{suffix}` for keys.
/// The mapping is injective for one prefix. Two applications sharing a Redis server need
/// prefixes where neither is the other followed by `:` (e.g. `app` and `app:room`), or their
/// names may overlap.
#[derive(Debug, Clone)]
pub struct ChannelNamer {
    prefix: Arc<str>,
    /// `{prefix}:room:`, precomputed for the hot paths.
    room_head: Arc<[u8]>,
}

impl Default for ChannelNamer {
    /// A namer with [`DEFAULT_CHANNEL_PREFIX`].
    fn default() -> Self {
        Self::with_valid_prefix(DEFAULT_CHANNEL_PREFIX)
    }
}

impl ChannelNamer {
    /// Creates a namer for `prefix`: non-empty, at most [`MAX_PREFIX_BYTES`] bytes, no control
    /// characters and no whitespace.
    pub fn new(prefix: &str) -> Result<Self, NameError> {
        let reason = if prefix.is_empty() {
            Some("it is empty")
        } else if prefix.len() > MAX_PREFIX_BYTES {
            Some("it is longer than 256 bytes")
        } else if prefix.chars().any(char::is_control) {
            Some("it contains a control character")
        } else if prefix.chars().any(char::is_whitespace) {
            Some("it contains whitespace")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NameError::BadPrefix { reason }),
            None => Ok(Self::with_valid_prefix(prefix)),
        }
    }

    fn with_valid_prefix(prefix: &str) -> Self {
        let mut head = Vec::with_capacity(prefix.len() + ":room:".len());
        head.extend_from_slice(prefix.as_bytes());
        head.extend_from_slice(b":room:");
        Self {
            prefix: Arc::from(prefix),
            room_head: Arc::from(head),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Appends `{prefix}:room:{escaped id}` to `out`.
    pub fn write_room_channel(&self, room: &RoomId, out: &mut Vec<u8>) {
        out.reserve(self.room_channel_len(room));
        self.put_room_channel(room, out);
    }

    /// The length of `room`'s channel: what [`ChannelNamer::write_room_channel`] appends.
    pub(crate) fn room_channel_len(&self, room: &RoomId) -> usize {
        let id = room.as_bytes();
        let escaped = id.iter().filter(|&&b| b == b'%' || b == b':').count();
        self.room_head.len() + id.len() + 2 * escaped
    }

    /// `room`'s channel as a RESP bulk string, `$<len>\r\n<channel>\r\n`: what a PUBLISH
    /// to the room writes between its command name and its message.
    pub(crate) fn room_channel_bulk(&self, room: &RoomId) -> Vec<u8> {
        let len = self.room_channel_len(room);
        let mut out = BytesMut::with_capacity(len + 24);
        crate::resp::encode_bulk_header(&mut out, len);
        self.put_room_channel(room, &mut out);
        out.extend_from_slice(b"\r\n");
        out.into()
    }

    /// Appends the channel of the room id `id` (one that passed the room id checks) to `out`.
    pub(crate) fn write_id_channel(&self, id: &str, out: &mut Vec<u8>) {
        self.put_id_channel(id.as_bytes(), out);
    }

    /// Appends `room`'s channel to any buffer (the caller reserves room for it).
    pub(crate) fn put_room_channel<B>(&self, room: &RoomId, out: &mut B)
    where
        B: BufMut + DerefMut<Target = [u8]>,
    {
        self.put_id_channel(room.as_bytes(), out);
    }

    fn put_id_channel<B>(&self, id: &[u8], out: &mut B)
    where
        B: BufMut + DerefMut<Target = [u8]>,
    {
        out.put_slice(&self.room_head);
        // Common case, nothing to percent-encode: copy the id whole, then turn `/` into `:` in
        // place (both loops run without branching per byte).
        let plain = id
            .iter()
            .fold(true, |ok, &b| ok & (b != b'%') & (b != b':'));
        if plain {
            let at = out.len();
            out.put_slice(id);
            for b in out.get_mut(at..).unwrap_or_default() {
                *b = if *b == b'/' { b':' } else { *b };
            }
            return;
        }
        // Unescaped runs are copied whole; only `%`, `:` and `/` are rewritten.
        let mut run_start = 0;
        for (i, &b) in id.iter().enumerate() {
            let replacement: &[u8] = match b {
                b'%' => b"%25",
                b':' => b"%3A",
                b'/' => b":",
                _ => continue,
            };
            out.put_slice(id.get(run_start..i).unwrap_or_default());
            out.put_slice(replacement);
            run_start = i + 1;
        }
        out.put_slice(id.get(run_start..).unwrap_or_default());
    }

    /// The channel of `room`: `{prefix}:room:{escaped id}`.
    pub fn room_channel(&self, room: &RoomId) -> Bytes {
        let mut out = Vec::new();
        self.write_room_channel(room, &mut out);
        Bytes::from(out)
    }

    /// Parses a channel back to its room; `None` for channels not produced by
    /// [`write_room_channel`](Self::write_room_channel) for this prefix (another prefix, a
    /// non-canonical escape such as `%3a`, a literal `/`, an id that `RoomId::new(_,
    /// max_bytes)` refuses, ...).
    ///
    /// Allocates only the returned id. To look a room up without allocating, use
    /// [`room_str_from_channel`](Self::room_str_from_channel).
    pub fn room_from_channel(&self, channel: &[u8], max_bytes: usize) -> Option<RoomId> {
        let id = self.room_str_from_channel(channel, max_bytes)?;
        Some(RoomId(Text::new(id.as_ref())))
    }

    /// Like [`room_from_channel`](Self::room_from_channel), but returns the room id as text,
    /// borrowed from `channel` when the id needed no escaping (no `/`, `:` or `%`). Whatever
    /// it returns is a valid room id under `max_bytes`.
    pub fn room_str_from_channel<'c>(
        &self,
        channel: &'c [u8],
        max_bytes: usize,
    ) -> Option<Cow<'c, str>> {
        let max = max_bytes.min(MAX_ID_BYTES);
        let escaped = self.escaped_room(channel, max)?;
        let id = if is_escaped(escaped) {
            let mut id = String::with_capacity(escaped.len());
            unescape_into(escaped, &mut id)?;
            Cow::Owned(id)
        } else {
            Cow::Borrowed(escaped)
        };
        validate_id(&id, max, IdKind::Room).ok()?;
        Some(id)
    }

    /// Like [`room_str_from_channel`](Self::room_str_from_channel), but an id that needs
    /// unescaping is written into `scratch` (cleared first) instead of a new `String`: with a
    /// scratch kept from call to call, nothing is allocated. The hot path of every message.
    pub(crate) fn room_str_in<'a>(
        &self,
        channel: &'a [u8],
        max_bytes: usize,
        scratch: &'a mut String,
    ) -> Option<&'a str> {
        let max = max_bytes.min(MAX_ID_BYTES);
        let escaped = self.escaped_room(channel, max)?;
        let id = if is_escaped(escaped) {
            scratch.clear();
            unescape_into(escaped, scratch)?;
            scratch.as_str()
        } else {
            escaped
        };
        validate_id(id, max, IdKind::Room).ok()?;
        Some(id)
    }

    /// The id part of a room channel that needs no unescaping (no `:`, `%` or `/`): then it is
    /// the room's id byte for byte, if it is one at all. Not checked to be a valid id: look it
    /// up among checked ids, and take [`Self::room_str_in`]'s path for anything not found.
    pub(crate) fn plain_room_id<'c>(&self, channel: &'c [u8]) -> Option<&'c [u8]> {
        let id = channel.strip_prefix(&*self.room_head)?;
        (!has_escape_byte(id)).then_some(id)
    }

    /// The part of a room channel after the head, as text, if it may be the escaped id of a
    /// room of at most `max` bytes.
    fn escaped_room<'c>(&self, channel: &'c [u8], max: usize) -> Option<&'c str> {
        let escaped = channel.strip_prefix(&*self.room_head)?;
        // Each id byte becomes at most three channel bytes: reject hopeless input early.
        if escaped.is_empty() || escaped.len() > max.saturating_mul(3) {
            return None;
        }
        // Escapes are ASCII, so the channel part is UTF-8 exactly when the id is.
        std::str::from_utf8(escaped).ok()
    }

    /// `{prefix}:ctl:{instance as 16 lowercase hex digits}`: the instance's own control
    /// channel. It never equals a room channel of the same namer.
    pub fn control_channel(&self, instance: InstanceId) -> Bytes {
        Bytes::from(format!("{}:ctl:{:016x}", self.prefix, instance.0))
    }

    /// A key of this application: `{prefix}:` followed by `suffix`. (Presence keys have a
    /// layout of their own, under one hash tag: [`crate::presence::Keys`].)
    pub fn key(&self, suffix: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.prefix.len() + 1 + suffix.len());
        out.extend_from_slice(self.prefix.as_bytes());
        out.push(b':');
        out.extend_from_slice(suffix.as_bytes());
        Bytes::from(out)
    }
}

/// Whether a channel part has anything to unescape (`:`, `%`, or a `/` that makes it invalid).
fn is_escaped(escaped: &str) -> bool {
    has_escape_byte(escaped.as_bytes())
}

fn is_escape_byte(b: u8) -> bool {
    matches!(b, b':' | b'%' | b'/')
}

/// Whether any byte of `bytes` is one [`is_escape_byte`] accepts, eight bytes per step: every
/// message's channel is checked on its way to its room.
fn has_escape_byte(bytes: &[u8]) -> bool {
    /// Each byte of a word set to `b`.
    const fn splat(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    const ONES: u64 = splat(0x01);
    const HIGH: u64 = splat(0x80);
    // Nonzero exactly when some byte of `w` is zero: a byte's high bit survives the mask
    // only where the subtraction borrowed through a zero byte (the bits it marks above a
    // true zero byte never make a word without one look like it has one).
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH != 0;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        if has_zero(w ^ splat(b':')) || has_zero(w ^ splat(b'%')) || has_zero(w ^ splat(b'/')) {
            return true;
        }
    }
    words.remainder().iter().copied().any(is_escape_byte)
}

/// Reverses the escaping of a channel part, appending the id to `id`; `None` if it is not
/// canonical (a literal `/`, or `%` followed by anything but `25` or `3A`).
fn unescape_into(escaped: &str, id: &mut String) -> Option<()> {
    id.reserve(escaped.len());
    let mut rest = escaped;
    // The bytes searched for are ASCII, so every position found is a char boundary.
    while let Some(pos) = rest.bytes().position(is_escape_byte) {
        let (plain, tail) = rest.split_at(pos);
        id.push_str(plain);
        rest = if let Some(after) = tail.strip_prefix(':') {
            id.push('/');
            after
        } else if let Some(after) = tail.strip_prefix("%25") {
            id.push('%');
            after
        } else if let Some(after) = tail.strip_prefix("%3A") {
            id.push(':');
            after
        } else {
            // A lone or lowercase `%` escape, or a `/`, which the encoder never writes.
            return None;
        };
    }
    id.push_str(rest);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn room(id: &str) -> RoomId {
        RoomId::new(id, DEFAULT_MAX_ROOM_ID_BYTES).expect("valid test id")
    }

    fn namer() -> ChannelNamer {
        ChannelNamer::new(DEFAULT_CHANNEL_PREFIX).expect("valid prefix")
    }

    fn channel(id: &str) -> Vec<u8> {
        namer().room_channel(&room(id)).to_vec()
    }

    #[test]
    fn graphwiz_examples() {
        assert_eq!(channel("hub/abc"), b"graphwiz:room:hub:abc");
        assert_eq!(channel("lobby"), b"graphwiz:room:lobby");
        assert_eq!(channel("a/b"), b"graphwiz:room:a:b");
        assert_eq!(channel("a:b"), b"graphwiz:room:a%3Ab");
        assert_eq!(channel("100%"), b"graphwiz:room:100%25");
        assert_eq!(channel("%3A"), b"graphwiz:room:%253A");
        assert_eq!(channel("//"), b"graphwiz:room:::");
        assert_eq!(channel("ü/€"), "graphwiz:room:ü:€".as_bytes());
        assert_ne!(channel("a/b"), channel("a:b"));
    }

    #[test]
    fn write_appends() {
        let mut out = b"xyz".to_vec();
        namer().write_room_channel(&room("a/b"), &mut out);
        assert_eq!(out, b"xyzgraphwiz:room:a:b");
    }

    #[test]
    fn channels_parse_back() {
        let n = namer();
        for id in [
            "hub/abc", "a:b", "a/b", "100%", "%3A", "//", "::", "ü/€", "x",
        ] {
            let ch = n.room_channel(&room(id));
            assert_eq!(n.room_from_channel(&ch, 256), Some(room(id)), "{id}");
        }
        let plain = n.room_str_from_channel(b"graphwiz:room:lobby", 256);
        assert!(matches!(plain, Some(Cow::Borrowed("lobby"))));
    }

    #[test]
    fn foreign_and_non_canonical_channels_are_refused() {
        let n = namer();
        for ch in [
            &b"graphwiz:room:"[..],
            b"graphwiz:room",
            b"graphwiz:ctl:0000000000000001",
            b"other:room:abc",
            b"graphwizz:room:abc",
            b"graphwiz:room:a%3ab",
            b"graphwiz:room:a%2",
            b"graphwiz:room:a%",
            b"graphwiz:room:a%41",
            b"graphwiz:room:a/b",
            b"graphwiz:room:a\nb",
            b"graphwiz:room:\xff",
            b"",
        ] {
            assert_eq!(n.room_from_channel(ch, 256), None, "{:?}", ch);
        }
        // Over the room limit.
        assert_eq!(n.room_from_channel(b"graphwiz:room:abcd", 3), None);
        assert!(n.room_from_channel(b"graphwiz:room:abc", 3).is_some());
        assert_eq!(n.room_from_channel(b"graphwiz:room:a%25", 1), None);
    }

    #[test]
    fn other_channels() {
        let n = ChannelNamer::new("app:v2").expect("valid");
        assert_eq!(n.prefix(), "app:v2");
        assert_eq!(
            &n.control_channel(InstanceId(0xabc))[..],
            b"app:v2:ctl:0000000000000abc"
        );
        assert_eq!(
            &n.control_channel(InstanceId(u64::MAX))[..],
            b"app:v2:ctl:ffffffffffffffff"
        );
        assert_eq!(&n.key("presence:lobby")[..], b"app:v2:presence:lobby");
        assert_eq!(ChannelNamer::default().prefix(), DEFAULT_CHANNEL_PREFIX);
    }

    #[test]
    fn id_errors() {
        assert_eq!(
            RoomId::new("", 256),
            Err(NameError::Empty { what: IdKind::Room })
        );
        let long = "x".repeat(300);
        let err = RoomId::new(&long, 256).unwrap_err();
        assert_eq!(
            err,
            NameError::TooLong {
                what: IdKind::Room,
                len: 300,
                max: 256
            }
        );
        assert_eq!(
            err.to_string(),
            "room id is 300 bytes long, over the limit of 256; \
             use a shorter id or raise Config::max_room_id_bytes"
        );
        let huge = "x".repeat(MAX_ID_BYTES + 1);
        let err = ConnId::new(&huge, usize::MAX).unwrap_err();
        assert_eq!(
            err,
            NameError::TooLong {
                what: IdKind::Connection,
                len: MAX_ID_BYTES + 1,
                max: MAX_ID_BYTES
            }
        );
        assert!(err.to_string().contains("hard limit"));
        assert!(ConnId::try_from(huge.as_str()).is_err());
        assert!(ConnId::try_from("x".repeat(MAX_ID_BYTES)).is_ok());
        let err = ConnId::new("ab\ncd", 256).unwrap_err();
        assert_eq!(
            err,
            NameError::ControlChar {
                what: IdKind::Connection,
                index: 2
            }
        );
        assert!(err
            .to_string()
            .starts_with("connection id has a control character"));
        assert!(RoomId::new("é\u{85}", 256).is_err());
        assert!(RoomId::new("a\u{7f}", 256).is_err());
        assert!(RoomId::new("a\0", 256).is_err());
        assert!(RoomId::new("Ünïcödé 🎉 with spaces", 256).is_ok());
    }

    #[test]
    fn id_traits() {
        let r = RoomId::try_from("hub/abc").expect("valid");
        assert_eq!(r.to_string(), "hub/abc");
        assert_eq!(format!("{r:?}"), r#"RoomId("hub/abc")"#);
        assert_eq!(r.as_ref(), "hub/abc");
        let set: std::collections::HashSet<RoomId> = [r.clone()].into_iter().collect();
        assert!(set.contains("hub/abc"));
        let c = ConnId::try_from(String::from("conn-1")).expect("valid");
        assert_eq!(c.as_str(), "conn-1");
        assert_eq!(format!("{c:?}"), r#"ConnId("conn-1")"#);
    }

    #[test]
    fn prefix_errors() {
        for bad in ["", "a b", "a\tb", "a\nb", "a\u{85}b", "a\u{3000}b"] {
            let err = ChannelNamer::new(bad).unwrap_err();
            assert!(matches!(err, NameError::BadPrefix { .. }), "{bad:?}");
            assert!(err.to_string().starts_with("channel prefix is invalid"));
        }
        assert!(ChannelNamer::new(&"p".repeat(MAX_PREFIX_BYTES + 1)).is_err());
        assert!(ChannelNamer::new(&"p".repeat(MAX_PREFIX_BYTES)).is_ok());
    }

    /// Room ids rich in the characters the escaping is about.
    fn id_strategy() -> impl Strategy<Value = String> {
        let ch = prop_oneof![
            4 => prop::sample::select(vec!['/', ':', '%', '2', '5', '3', 'A', 'a', 'x']),
            1 => any::<char>(),
        ];
        prop::collection::vec(ch, 0..24).prop_map(|cs| cs.into_iter().collect())
    }

    /// Channel bytes near the valid ones: the head, then escapes, fragments and junk.
    fn channel_strategy() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            prop::sample::select(vec![
                &b"%25"[..],
                b"%3A",
                b"%3a",
                b"%",
                b":",
                b"/",
                b"a",
                b"2",
                b"\xc2\x85",
                b"\xc3\xbc",
                b"\xff",
                b"\n",
            ])
            .prop_map(<[u8]>::to_vec),
            prop::collection::vec(any::<u8>(), 0..4),
        ];
        (any::<bool>(), prop::collection::vec(piece, 0..16)).prop_map(|(head, pieces)| {
            let mut out = if head {
                b"graphwiz:room:".to_vec()
            } else {
                Vec::new()
            };
            out.extend(pieces.concat());
            out
        })
    }

    proptest! {
        #[test]
        fn round_trip_and_injective(a in id_strategy(), b in id_strategy()) {
            let n = namer();
            let ra = RoomId::new(&a, DEFAULT_MAX_ROOM_ID_BYTES);
            let rb = RoomId::new(&b, DEFAULT_MAX_ROOM_ID_BYTES);
            if let (Ok(ra), Ok(rb)) = (&ra, &rb) {
                let ca = n.room_channel(ra);
                let cb = n.room_channel(rb);
                prop_assert_eq!(n.room_from_channel(&ca, DEFAULT_MAX_ROOM_ID_BYTES), Some(ra.clone()));
                prop_assert_eq!(n.room_from_channel(&cb, DEFAULT_MAX_ROOM_ID_BYTES), Some(rb.clone()));
                prop_assert_eq!(a == b, ca == cb);
            }
        }

        #[test]
        fn any_string_round_trips(s in any::<String>()) {
            let n = namer();
            if let Ok(r) = RoomId::new(&s, MAX_ID_BYTES) {
                let ch = n.room_channel(&r);
                prop_assert_eq!(n.room_from_channel(&ch, MAX_ID_BYTES), Some(r));
            }
        }

        #[test]
        fn parsed_channels_reencode_identically(ch in channel_strategy(), max in 0usize..64) {
            let n = namer();
            if let Some(r) = n.room_from_channel(&ch, max) {
                prop_assert!(RoomId::new(r.as_str(), max).is_ok());
                prop_assert_eq!(&n.room_channel(&r)[..], &ch[..]);
            }
        }

        #[test]
        fn scratch_lookup_matches_the_allocating_one(
            channels in prop::collection::vec(channel_strategy(), 1..4),
            max in 0usize..64,
        ) {
            let n = namer();
            // One scratch for all, as the hub keeps it: what an earlier call left is no matter.
            let mut scratch = String::from("left over");
            for ch in &channels {
                let want = n.room_str_from_channel(ch, max).map(Cow::into_owned);
                let got = n.room_str_in(ch, max, &mut scratch).map(str::to_owned);
                prop_assert_eq!(got, want);
            }
        }

        /// The word-at-a-time scan finds an escape byte wherever the byte-by-byte one does:
        /// any length (whole words, a remainder, both), any place, bytes next to the escape
        /// bytes' values (`9`, `;`, `$`, `&`, `.`, `0`) and bytes with the high bit set, which
        /// the zero-byte test must not mistake for a match.
        #[test]
        fn word_scan_finds_what_the_byte_scan_finds(
            bytes in prop::collection::vec(
                prop_oneof![
                    Just(b':'), Just(b'%'), Just(b'/'),
                    Just(b'9'), Just(b';'), Just(b'$'), Just(b'&'), Just(b'.'), Just(b'0'),
                    Just(0u8), Just(0x80u8), Just(0xBAu8), Just(0xA5u8), Just(0xAFu8),
                    any::<u8>(),
                ],
                0..40,
            ),
            plain in prop::collection::vec(b'a'..=b'z', 0..40),
            escape in prop_oneof![Just(b':'), Just(b'%'), Just(b'/')],
            at in any::<prop::sample::Index>(),
        ) {
            prop_assert_eq!(
                super::has_escape_byte(&bytes),
                bytes.iter().copied().any(super::is_escape_byte)
            );
            // One escape byte among plain ones, at every position over the runs.
            prop_assert!(!super::has_escape_byte(&plain));
            let mut one = plain.clone();
            one.insert(at.index(plain.len() + 1), escape);
            prop_assert!(super::has_escape_byte(&one));
        }

        /// The receiving path's shortcut: a channel's plain id part is looked up among
        /// checked ids as it is. Wherever the full parse finds an id that needed no
        /// unescaping, the shortcut names the same bytes; wherever the shortcut names bytes,
        /// they are the id the full parse finds, or no valid id at all.
        #[test]
        fn plain_ids_are_the_parsed_ids(ch in channel_strategy(), max in 0usize..64) {
            let n = namer();
            let mut scratch = String::new();
            let parsed = n.room_str_in(&ch, max, &mut scratch).map(str::to_owned);
            let plain = n.plain_room_id(&ch);
            match (&parsed, plain) {
                (Some(id), Some(p)) => prop_assert_eq!(id.as_bytes(), p),
                (Some(id), None) => prop_assert!(id.bytes().any(is_escape_byte), "{}", id),
                (None, Some(p)) => prop_assert!(
                    std::str::from_utf8(p).map_or(true, |t| RoomId::new(t, max).is_err()),
                    "{:?}",
                    p
                ),
                (None, None) => {}
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(ch in prop::collection::vec(any::<u8>(), 0..64)) {
            let n = ChannelNamer::new("g").expect("valid");
            let mut with_head = b"g:room:".to_vec();
            with_head.extend_from_slice(&ch);
            for input in [&ch, &with_head] {
                if let Some(r) = n.room_from_channel(input, 256) {
                    prop_assert_eq!(&n.room_channel(&r)[..], &input[..]);
                }
            }
        }

        #[test]
        fn control_check_matches_std(s in any::<String>()) {
            let expected = s.char_indices().find(|(_, c)| c.is_control()).map(|(i, _)| i);
            prop_assert_eq!(first_control(&s), expected);
        }
    }

    #[test]
    fn ids_up_to_the_inline_length_live_in_the_value() {
        use std::collections::{BTreeSet, HashMap};
        let ascii15 = "a".repeat(INLINE_ID_BYTES);
        let ascii16 = "a".repeat(INLINE_ID_BYTES + 1);
        // A two-byte character that ends exactly at the inline length, and one byte past it.
        let utf8_15 = format!("{}é", "b".repeat(INLINE_ID_BYTES - 2));
        let utf8_16 = format!("{}é", "b".repeat(INLINE_ID_BYTES - 1));
        let ids = [
            "x",
            ascii15.as_str(),
            ascii16.as_str(),
            &utf8_15,
            &utf8_16,
            "hub/abc",
        ];
        let inline = [true, true, false, true, false, true];
        let mut map = HashMap::new();
        for (id, inline) in ids.iter().zip(inline) {
            let r = RoomId::try_from(*id).unwrap();
            assert_eq!(r.is_inline(), inline, "{id}");
            assert_eq!(r.as_str(), *id);
            assert_eq!(r.as_bytes(), id.as_bytes());
            assert_eq!(r.clone(), r);
            map.insert(r, id.len());
        }
        // Hashes and equality agree with `str`'s: found by `&str` whatever the form, in a std
        // map and in the hub's kind (hashbrown with foldhash), by `&str` and by `IdStr`.
        let mut fast: hashbrown::HashMap<RoomId, usize, foldhash::fast::FixedState> =
            hashbrown::HashMap::with_hasher(foldhash::fast::FixedState::with_seed(7));
        fast.extend(map.iter().map(|(k, v)| (k.clone(), *v)));
        for id in ids {
            assert_eq!(map.get(id), Some(&id.len()), "{id}");
            assert_eq!(fast.get(id), Some(&id.len()), "{id}");
            assert_eq!(fast.get(&IdStr(id)), Some(&id.len()), "{id}");
        }
        assert_eq!(fast.get(&IdStr("bbbbbbbbbbbbb")), None);
        // Ordered as the strings are, inline and shared mixed.
        let by_id: Vec<String> = ids
            .iter()
            .map(|id| ConnId::try_from(*id).unwrap())
            .collect::<BTreeSet<_>>()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut by_str: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        by_str.sort();
        assert_eq!(by_id, by_str);
        assert_ne!(
            RoomId::try_from("ab").unwrap(),
            RoomId::try_from("abc").unwrap()
        );
        assert_eq!(std::mem::size_of::<ConnId>(), 16);
    }
}
