//! RESP2/RESP3 framing.
//!
//! Commands are written as arrays of bulk strings, the one form every Redis accepts.
//! Incoming bytes are first *scanned*: a cheap walk over type bytes and length prefixes that
//! finds where the next frame ends and enforces the limits `redis-protocol` does not (a bulk
//! length of 2^63 would otherwise wait for input forever; nesting thousands deep would overflow
//! the stack; the CRLF after a bulk string is not checked there). Only a complete frame that
//! passed the scan is handed to `redis-protocol` to decode. A pub/sub `message` of three bulk
//! strings is recognised by the scan and sliced out without building frames. The hot path, a
//! complete `message` push spelled as Redis writes it, is recognised before the scan by its
//! fixed prefix and two plain lengths; whatever that check does not take (another spelling,
//! an incomplete frame, a limit reached) goes through the scan, so errors and limits are the
//! scan's (`fast_path_matches_the_general_path` holds the two to the same results).
//!
//! Which frames are pub/sub: in RESP3 only pushes (`>`); Redis sends every pub/sub event to
//! a RESP3 client as a push, so a RESP3 array (`*3` of `message`, a channel and a payload
//! included) is the reply to a request, matched in order like any other. In RESP2 nothing
//! tells the two apart and the kind word decides. The fast path, the scan and [`classify`]
//! apply this one rule (`the_three_paths_agree` holds them to it).
//!
//! A pub/sub message over `max_frame_bytes` is skipped, not refused: see [`Reader::next`].

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

use crate::config::Protocol;

/// Longest header line (type byte, length or simple string) accepted.
const MAX_LINE: usize = 64 << 10;

/// Limits for frames read from Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameLimits {
    pub max_frame_bytes: usize,
    pub max_depth: usize,
    pub max_elements: usize,
}

/// Why the stream from Redis cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is larger than `Config::max_frame_bytes`.
    TooLarge {
        /// Bytes the frame declared or buffered so far.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Aggregates nest deeper than `Config::max_frame_depth`.
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// An aggregate declares more elements than `Config::max_frame_elements`.
    TooManyElements {
        /// Declared count.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// The bytes are not RESP.
    Malformed {
        /// What was wrong.
        reason: String,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(
                f,
                "Redis sent a frame of {len} bytes, over max_frame_bytes = {max}; raise the limit if such replies are expected"
            ),
            FrameError::TooDeep { max } => write!(
                f,
                "Redis sent aggregates nested deeper than max_frame_depth = {max}"
            ),
            FrameError::TooManyElements { count, max } => write!(
                f,
                "Redis sent an aggregate of {count} elements, over max_frame_elements = {max}"
            ),
            FrameError::Malformed { reason } => {
                write!(f, "Redis sent bytes that are not valid RESP: {reason}")
            }
        }
    }
}

fn malformed(reason: impl Into<String>) -> FrameError {
    FrameError::Malformed {
        reason: reason.into(),
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub(crate) fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    encode_array_header(out, args.len());
    for a in args {
        encode_bulk(out, a);
    }
}

/// Appends the header `*n\r\n` of a command with `n` arguments; follow with `n` [`encode_bulk`].
pub(crate) fn encode_array_header(out: &mut BytesMut, n: usize) {
    encode_len_line(out, b'*', n);
}

/// Appends one bulk string.
pub(crate) fn encode_bulk(out: &mut BytesMut, a: &[u8]) {
    out.reserve(a.len() + 16);
    encode_bulk_header(out, a.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b"\r\n");
}

/// Appends the header `$len\r\n` of a bulk string; follow with `len` bytes and `\r\n`.
pub(crate) fn encode_bulk_header(out: &mut BytesMut, len: usize) {
    encode_len_line(out, b'$', len);
}

/// Appends `{kind}{n}\r\n`, built on the stack and appended at once.
fn encode_len_line(out: &mut BytesMut, kind: u8, mut n: usize) {
    // The type byte, up to 20 digits (usize::MAX), CRLF.
    let mut buf = [0u8; 23];
    let mut i = buf.len() - 2;
    buf[i..].copy_from_slice(b"\r\n");
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    i -= 1;
    buf[i] = kind;
    out.extend_from_slice(buf.get(i..).unwrap_or_default());
}

/// A decoded value (a reply, or part of one).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `+OK` and other simple strings.
    Simple(Bytes),
    /// `-ERR ...` (simple or blob error).
    Error(Bytes),
    /// An integer.
    Int(i64),
    /// A bulk (blob or verbatim) string.
    Bulk(Bytes),
    /// Null (RESP2 nil bulk or array, RESP3 `_`).
    Nil,
    /// An array, set or push.
    Array(Vec<Value>),
    /// A map (RESP3), as key/value pairs.
    Map(Vec<(Value, Value)>),
    /// A double (RESP3).
    Double(f64),
    /// A boolean (RESP3).
    Bool(bool),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// One frame from Redis, classified by what it means to the core.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// A pub/sub message (`message` / `smessage`).
    Message(MessageFrame),
    /// A (s)subscribe confirmation.
    Subscribed { channel: Bytes },
    /// An (s)unsubscribe confirmation or a server-initiated unsubscribe; `None` channel when
    /// the connection had no subscriptions.
    Unsubscribed { channel: Option<Bytes> },
    /// The RESP2 answer to PING on a subscribed connection (`pong` array).
    Pong,
    /// Any other push (RESP3 `>`), ignored.
    OtherPush,
    /// A pub/sub message whose frame is over `max_frame_bytes`: its header was read (the
    /// channel is known), its payload is being discarded as it arrives without being
    /// buffered (see [`Reader::next`]).
    Oversize {
        /// The channel the message came on.
        channel: Bytes,
        /// The frame's length as its header declares it.
        len: u64,
    },
    /// An ordinary reply, matched to the oldest request.
    Reply(Value),
}

/// A pub/sub message as read: its frame's bytes and where the channel and the payload lie in
/// them. Slicing both out would take a reference count each (and give it back); the hub
/// reads the channel and the envelope in place and then turns the frame itself into the
/// envelope's data ([`MessageFrame::into_part`]).
#[derive(Debug, Clone)]
pub(crate) struct MessageFrame {
    frame: Bytes,
    channel: Range<usize>,
    payload: Range<usize>,
}

impl MessageFrame {
    /// A message whose channel and payload are the given ranges of `frame` (a range outside
    /// it reads as empty, never panics).
    fn new(frame: Bytes, channel: Range<usize>, payload: Range<usize>) -> Self {
        MessageFrame {
            frame,
            channel,
            payload,
        }
    }

    /// A message built from copies of its parts (the slow paths, and tests).
    pub(crate) fn from_parts(channel: &[u8], payload: &[u8]) -> Self {
        let mut frame = BytesMut::with_capacity(channel.len() + payload.len());
        frame.extend_from_slice(channel);
        frame.extend_from_slice(payload);
        let c = channel.len();
        MessageFrame::new(frame.freeze(), 0..c, c..c + payload.len())
    }

    /// The channel's bytes.
    pub(crate) fn channel(&self) -> &[u8] {
        self.frame.get(self.channel.clone()).unwrap_or_default()
    }

    /// The payload's bytes.
    pub(crate) fn payload(&self) -> &[u8] {
        self.frame.get(self.payload.clone()).unwrap_or_default()
    }

    /// The part `within` of the payload (offsets into [`MessageFrame::payload`]), as the
    /// frame narrowed to it (no reference count taken); empty if `within` is not inside it.
    pub(crate) fn into_part(self, within: Range<usize>) -> Bytes {
        let Range { start, end } = self.payload;
        let part = (
            within.start.checked_add(start),
            within.end.checked_add(start),
        );
        let (Some(from), Some(to)) = part else {
            return Bytes::new();
        };
        if start > end || end > self.frame.len() || from > to || to > end {
            return Bytes::new();
        }
        let mut b = self.frame;
        b.truncate(to);
        bytes::Buf::advance(&mut b, from);
        b
    }
}

impl PartialEq for MessageFrame {
    fn eq(&self, other: &Self) -> bool {
        self.channel() == other.channel() && self.payload() == other.payload()
    }
}

/// Reads frames from one link's input.
#[derive(Debug)]
pub(crate) struct Reader {
    protocol: Protocol,
    limits: FrameLimits,
    /// The next frame is known to need at least this many buffered bytes.
    need: usize,
    /// Bytes of an oversize message's payload still to discard, its CRLF included (0: none).
    skip: u64,
    stack: Vec<u64>,
}

/// Where the scan found the frame's end, and the message fields when it is a 3-bulk push.
struct Scan {
    len: usize,
    bulks: Option<[(usize, usize); 3]>,
    /// Non-zero for an oversize message: `len` ends after the payload's header line, and
    /// this many bytes (the payload and its CRLF) follow, to be discarded unread.
    skip: u64,
}

impl Reader {
    pub(crate) fn new(protocol: Protocol, limits: FrameLimits) -> Self {
        Reader {
            protocol,
            limits,
            need: 0,
            skip: 0,
            stack: Vec::new(),
        }
    }

    /// Takes the next complete frame off the front of `buf`, or `Ok(None)` when more input is
    /// needed. An error is final for this stream.
    ///
    /// A pub/sub message over `max_frame_bytes` does not end the stream: as soon as the
    /// header of its payload is read, it comes out as [`Incoming::Oversize`] and its payload
    /// is discarded as it arrives, over as many calls as it takes, never buffered; the frame
    /// after it is read as usual. What can be skipped is exactly a message push (a `>3`
    /// push, or in RESP2 a `*3` array) of three bulk strings, `message` or `smessage`, a
    /// channel and the payload, whose part before the payload's data (kind, channel and the
    /// payload's length line) is itself within the limit. Every other frame over the limit
    /// (a reply, another push, a message whose channel alone is over it) is still
    /// [`FrameError::TooLarge`]: a reply answers a request that cannot complete without it,
    /// and Redis only sends this instance messages on the channels it subscribed, whose
    /// names are short. A malformed length, nesting or elements over their limits, and a
    /// discarded payload not followed by CRLF are errors as before.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        if self.skip != 0 && !self.discard(buf)? {
            return Ok(None);
        }
        if let Some(message) = self.message(buf) {
            return Ok(Some(message));
        }
        self.next_scanned(buf)
    }

    /// Discards what `buf` holds of an oversize payload (see [`Reader::next`]); true when
    /// the payload and its CRLF are behind and more of `buf` is left to read.
    #[cold]
    fn discard(&mut self, buf: &mut BytesMut) -> Result<bool, FrameError> {
        // The data first, then the CRLF byte by byte, checked as the scan checks it.
        let data = (self.skip.saturating_sub(2)).min(buf.len() as u64) as usize;
        bytes::Buf::advance(buf, data);
        self.skip -= data as u64;
        while (1..=2).contains(&self.skip) {
            let Some(&b) = buf.first() else {
                return Ok(false);
            };
            if b != b"\r\n"[2 - self.skip as usize] {
                return Err(malformed("a bulk string is not followed by CRLF"));
            }
            bytes::Buf::advance(buf, 1);
            self.skip -= 1;
        }
        Ok(self.skip == 0 && !buf.is_empty())
    }

    /// The fast path: the frame at the front of `buf` when it is a complete pub/sub message
    /// in the spelling Redis writes, `>3` (or in RESP2 `*3`), `$7 message` (or `$8
    /// smessage`), then two bulk strings with plain decimal lengths, a (un)subscribe
    /// confirmation (`*3` in RESP2, `>3` in RESP3, the kind, a bulk channel and a plain
    /// decimal count), or an integer reply (see [`Reader::integer`]), and within every limit.
    /// It yields exactly what [`Reader::next_scanned`] yields for such a frame; anything else
    /// (an incomplete frame, another spelling, a limit reached, an error) is left to that
    /// path.
    fn message(&mut self, buf: &mut BytesMut) -> Option<Incoming> {
        let lim = self.limits;
        if buf.first() == Some(&b':') {
            return self.integer(buf);
        }
        // What the scan checks for the `*3` header.
        if lim.max_depth == 0 || lim.max_elements < 3 {
            return None;
        }
        let b: &[u8] = buf;
        let head = match b.get(..4)? {
            b">3\r\n" => 4,
            // A RESP3 array is a reply, whatever it holds (see [`classify`]).
            b"*3\r\n" if self.protocol == Protocol::Resp2 => 4,
            _ => return None,
        };
        let kind = match b.get(head..head + 4)? {
            b"$7\r\n" if b.get(head + 4..head + 13)? == b"message\r\n" => head + 13,
            b"$8\r\n" if b.get(head + 4..head + 14)? == b"smessage\r\n" => head + 14,
            _ => return self.confirmation(buf),
        };
        let (channel, after_channel) = bulk_at(b, kind)?;
        let (payload, end) = bulk_at(b, after_channel)?;
        // Every length and position the scan compares with the limit is at most `end`.
        if end > lim.max_frame_bytes {
            return None;
        }
        self.need = 0;
        let frame = buf.split_to(end).freeze();
        Some(Incoming::Message(MessageFrame::new(
            frame, channel, payload,
        )))
    }

    /// The fast path's integers (every PUBLISH reply): `:` and 1 to 18 decimal digits, no
    /// sign, within `max_frame_bytes`, read as [`Reader::next_scanned`] reads them. Anything
    /// else (a sign, a longer number, an incomplete line) is left to the scan.
    fn integer(&mut self, buf: &mut BytesMut) -> Option<Incoming> {
        let end = int_at(buf, 0)?;
        if end > self.limits.max_frame_bytes {
            return None;
        }
        let n = parse_i64(buf.get(1..end - 2)?)?;
        self.need = 0;
        bytes::Buf::advance(buf, end);
        Some(Incoming::Reply(Value::Int(n)))
    }

    /// The fast path's (un)subscribe confirmations: `[kind, channel, count]` as a push (RESP3
    /// `>3`) or, in RESP2, an array (a RESP3 `*3` array is a reply, not a confirmation).
    fn confirmation(&mut self, buf: &mut BytesMut) -> Option<Incoming> {
        let b: &[u8] = buf;
        match (self.protocol, b.first()?) {
            (Protocol::Resp2, b'*') | (Protocol::Resp3, b'>') => {}
            _ => return None,
        }
        let (subscribed, channel_at) = [
            (&b"$9\r\nsubscribe\r\n"[..], true),
            (b"$10\r\nssubscribe\r\n", true),
            (b"$11\r\nunsubscribe\r\n", false),
            (b"$12\r\nsunsubscribe\r\n", false),
        ]
        .into_iter()
        .find_map(|(kind, sub)| {
            b.get(4..4 + kind.len())
                .filter(|k| *k == kind)
                .map(|_| (sub, 4 + kind.len()))
        })?;
        let (channel, count_at) = bulk_at(b, channel_at)?;
        let end = int_at(b, count_at)?;
        if end > self.limits.max_frame_bytes {
            return None;
        }
        self.need = 0;
        let frame = buf.split_to(end).freeze();
        let channel = frame.slice(channel);
        Some(if subscribed {
            Incoming::Subscribed { channel }
        } else {
            Incoming::Unsubscribed {
                channel: Some(channel),
            }
        })
    }

    /// The general path: scans the frame, then decodes it (see the module docs).
    fn next_scanned(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        let scan = match self.scan(buf)? {
            Some(s) => s,
            None => {
                if buf.len() > self.limits.max_frame_bytes {
                    return Err(FrameError::TooLarge {
                        len: buf.len() as u64,
                        max: self.limits.max_frame_bytes,
                    });
                }
                return Ok(None);
            }
        };
        self.need = 0;
        if scan.skip != 0 {
            return Ok(Some(self.oversize(buf, scan)));
        }
        if buf.first() == Some(&b':') {
            // An integer (every PUBLISH reply): the scan found its CRLF and checked the limits;
            // the number is read as redis-protocol reads it (UTF-8, then `i64::from_str`).
            let line = buf.get(1..scan.len - 2).unwrap_or_default();
            let n = parse_i64(line).ok_or_else(|| malformed("an integer reply is not a number"))?;
            bytes::Buf::advance(buf, scan.len);
            return Ok(Some(Incoming::Reply(Value::Int(n))));
        }
        if let Some(b) = scan.bulks {
            if is_message_kind(&buf[b[0].0..b[0].1]) {
                let frame = buf.split_to(scan.len).freeze();
                return Ok(Some(Incoming::Message(MessageFrame::new(
                    frame,
                    b[1].0..b[1].1,
                    b[2].0..b[2].1,
                ))));
            }
        }
        let value = match self.protocol {
            Protocol::Resp2 => {
                match redis_protocol::resp2::decode::decode_bytes_mut(buf)
                    .map_err(|e| malformed(e.details().to_string()))?
                {
                    Some((frame, _, _)) => (from2(frame), false),
                    None => return Err(malformed("decoder wanted more bytes than the frame has")),
                }
            }
            Protocol::Resp3 => {
                match redis_protocol::resp3::decode::complete::decode_bytes_mut(buf)
                    .map_err(|e| malformed(e.details().to_string()))?
                {
                    Some((frame, _, _)) => {
                        let push = matches!(frame, Frame3::Push { .. });
                        (from3(frame), push)
                    }
                    None => return Err(malformed("decoder wanted more bytes than the frame has")),
                }
            }
        };
        Ok(Some(classify(value.0, value.1, self.protocol)))
    }

    /// Takes the header of an oversize message off `buf` and starts discarding its payload.
    #[cold]
    fn oversize(&mut self, buf: &mut BytesMut, scan: Scan) -> Incoming {
        let header = buf.split_to(scan.len).freeze();
        let channel = scan
            .bulks
            .map(|b| header.slice(b[1].0..b[1].1))
            .unwrap_or_default();
        self.skip = scan.skip;
        Incoming::Oversize {
            channel,
            len: scan.len as u64 + scan.skip,
        }
    }

    /// Walks the frame at the front of `buf` without building it.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<Scan>, FrameError> {
        let lim = self.limits;
        self.stack.clear();
        let mut pos = 0usize;
        let mut bulks = [(0usize, 0usize); 3];
        let mut n_bulks = 0usize;
        let mut top_is_three = false;
        let mut simple_children = true;
        loop {
            if pos >= buf.len() {
                self.need = pos + 1;
                return Ok(None);
            }
            let Some(rel) = memchr_crlf(&buf[pos..]) else {
                if buf.len() - pos > MAX_LINE {
                    return Err(malformed("a header line is longer than 64 KiB"));
                }
                return Ok(None);
            };
            if rel == 0 {
                // A line with no type byte ("\r\n" alone).
                return Err(malformed(
                    "an empty line where a RESP type byte was expected",
                ));
            }
            let ty = buf[pos];
            let line = &buf[pos + 1..pos + rel];
            let after = pos + rel + 2;
            let depth = self.stack.len();
            let mut complete = true;
            match ty {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    if depth == 1 {
                        simple_children = false;
                    }
                    pos = after;
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_len(line)?;
                    if len < 0 {
                        if len != -1 {
                            return Err(malformed("negative bulk length"));
                        }
                        if depth == 1 {
                            simple_children = false;
                        }
                        pos = after;
                    } else {
                        let len = len as u64;
                        let max = lim.max_frame_bytes;
                        // Refuse before buffering: waiting for the data of a frame that
                        // is over the limit anyway would hold up to twice the limit.
                        if len > max as u64 || after + len as usize + 2 > max {
                            // The payload of a message: skipped, not refused (see `next`).
                            if depth == 1
                                && ty == b'$'
                                && n_bulks == 2
                                && simple_children
                                && top_is_three
                                && after <= max
                                && is_message_kind(&buf[bulks[0].0..bulks[0].1])
                            {
                                bulks[2] = (after, after);
                                return Ok(Some(Scan {
                                    len: after,
                                    bulks: Some(bulks),
                                    skip: len + 2,
                                }));
                            }
                            return Err(FrameError::TooLarge {
                                len: if len > max as u64 {
                                    len
                                } else {
                                    (after + len as usize + 2) as u64
                                },
                                max,
                            });
                        }
                        let end = after + len as usize;
                        if end + 2 > buf.len() {
                            self.need = end + 2;
                            return Ok(None);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(malformed("a bulk string is not followed by CRLF"));
                        }
                        if depth == 1 && ty == b'$' && n_bulks < 3 {
                            bulks[n_bulks] = (after, end);
                            n_bulks += 1;
                        } else if depth == 1 {
                            simple_children = false;
                        }
                        pos = end + 2;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_len(line)?;
                    if n < 0 {
                        if n != -1 {
                            return Err(malformed("negative aggregate length"));
                        }
                        pos = after;
                    } else {
                        let n = n as u64;
                        if n > lim.max_elements as u64 {
                            return Err(FrameError::TooManyElements {
                                count: n,
                                max: lim.max_elements,
                            });
                        }
                        let elems = match ty {
                            b'%' => n * 2,
                            // An attribute is followed by the value it annotates.
                            b'|' => n * 2 + 1,
                            _ => n,
                        };
                        pos = after;
                        if depth == 1 {
                            simple_children = false;
                        }
                        if elems > 0 {
                            if depth + 1 > lim.max_depth {
                                return Err(FrameError::TooDeep { max: lim.max_depth });
                            }
                            if depth == 0 {
                                // The shape of a pub/sub message: a push, or in RESP2 an
                                // array (a RESP3 array is a reply, see [`classify`]).
                                top_is_three = elems == 3
                                    && (ty == b'>'
                                        || (ty == b'*' && self.protocol == Protocol::Resp2));
                            }
                            self.stack.push(elems);
                            complete = false;
                        }
                    }
                }
                b'?' => return Err(malformed("streamed RESP3 frames are not supported")),
                other => return Err(malformed(format!("unknown RESP type byte 0x{other:02x}"))),
            }
            if pos > lim.max_frame_bytes {
                return Err(FrameError::TooLarge {
                    len: pos as u64,
                    max: lim.max_frame_bytes,
                });
            }
            if complete {
                loop {
                    match self.stack.last_mut() {
                        None => {
                            let bulks =
                                (top_is_three && simple_children && n_bulks == 3).then_some(bulks);
                            return Ok(Some(Scan {
                                len: pos,
                                bulks,
                                skip: 0,
                            }));
                        }
                        Some(top) => {
                            *top -= 1;
                            if *top == 0 {
                                self.stack.pop();
                            } else {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The kind word of a pub/sub message.
fn is_message_kind(kind: &[u8]) -> bool {
    kind == b"message" || kind == b"smessage"
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\r') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

/// A bulk string `$<decimal digits>\r\n<data>\r\n` complete at `pos` of `b`: the range of its
/// data and where the next element starts. `None` for anything else, including lengths of
/// more than nine digits (no frame within a sensible limit has them; the scan decides).
fn bulk_at(b: &[u8], pos: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let (&dollar, digits) = b.get(pos..)?.split_first()?;
    if dollar != b'$' {
        return None;
    }
    let mut len = 0usize;
    let mut i = 0;
    loop {
        let d = digits.get(i)?.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if i == 9 {
            return None;
        }
        len = len * 10 + usize::from(d);
        i += 1;
    }
    if i == 0 || digits.get(i..i + 2)? != b"\r\n" {
        return None;
    }
    // At most nine digits: `len` and `end` are far from overflowing.
    let start = pos + 1 + i + 2;
    let end = start + len;
    if b.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((start..end, end + 2))
}

/// An integer `:<1 to 18 decimal digits>\r\n` complete at `pos` of `b`: where the next
/// element starts. `None` for anything else (signs, longer numbers: the scan decides).
fn int_at(b: &[u8], pos: usize) -> Option<usize> {
    let rest = b.get(pos..)?;
    if rest.first() != Some(&b':') {
        return None;
    }
    let digits = rest
        .iter()
        .skip(1)
        .take_while(|d| d.is_ascii_digit())
        .count();
    if !(1..=18).contains(&digits) || rest.get(1 + digits..3 + digits)? != b"\r\n" {
        return None;
    }
    Some(pos + 3 + digits)
}

fn parse_len(line: &[u8]) -> Result<i64, FrameError> {
    match parse_i64(line) {
        Some(n) => Ok(n),
        None => Err(bad_len(line)),
    }
}

/// Why `line` is no length: the errors of `str::from_utf8` and then `str::parse::<i64>`.
#[cold]
fn bad_len(line: &[u8]) -> FrameError {
    match std::str::from_utf8(line) {
        Err(_) => malformed("a length is not ASCII"),
        Ok(s) => malformed(format!("bad length {s:?}")),
    }
}

/// Reads a decimal integer as `str::parse::<i64>` does (an optional `+` or `-`, then at least
/// one ASCII digit, no other byte, within `i64`), without the UTF-8 pass.
fn parse_i64(line: &[u8]) -> Option<i64> {
    let (negative, digits) = match line.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, line),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n = 0i64;
    for &d in digits {
        let d = d.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n.checked_mul(10)?;
        // Negative numbers are built downwards so that `i64::MIN` fits.
        n = if negative {
            n.checked_sub(i64::from(d))?
        } else {
            n.checked_add(i64::from(d))?
        };
    }
    Some(n)
}

fn from2(f: Frame2) -> Value {
    match f {
        Frame2::SimpleString(b) => Value::Simple(b),
        Frame2::Error(s) => Value::Error(Bytes::copy_from_slice(s.as_bytes())),
        Frame2::Integer(i) => Value::Int(i),
        Frame2::BulkString(b) => Value::Bulk(b),
        Frame2::Array(v) => Value::Array(v.into_iter().map(from2).collect()),
        Frame2::Null => Value::Nil,
    }
}

fn from3(f: Frame3) -> Value {
    match f {
        Frame3::BlobString { data, .. } | Frame3::VerbatimString { data, .. } => Value::Bulk(data),
        Frame3::SimpleString { data, .. } => Value::Simple(data),
        Frame3::BlobError { data, .. } => Value::Error(data),
        Frame3::SimpleError { data, .. } => Value::Error(Bytes::copy_from_slice(data.as_bytes())),
        Frame3::Boolean { data, .. } => Value::Bool(data),
        Frame3::Null => Value::Nil,
        Frame3::Number { data, .. } => Value::Int(data),
        Frame3::Double { data, .. } => Value::Double(data),
        Frame3::BigNumber { data, .. } => Value::Bulk(data),
        Frame3::Array { data, .. } | Frame3::Push { data, .. } => {
            Value::Array(data.into_iter().map(from3).collect())
        }
        Frame3::Set { data, .. } => Value::Array(data.into_iter().map(from3).collect()),
        Frame3::Map { data, .. } => Value::Map(
            data.into_iter()
                .map(|(k, v)| (from3(k), from3(v)))
                .collect(),
        ),
        // Hello frames are only ever sent by clients.
        Frame3::Hello { .. } => Value::Nil,
        Frame3::ChunkedString(b) => Value::Bulk(b),
    }
}

/// Sorts a frame into pub/sub events and replies. In RESP2 pub/sub arrays look like replies,
/// so the kind word decides; in RESP3 only push frames can be pub/sub.
fn classify(value: Value, push: bool, protocol: Protocol) -> Incoming {
    let may_be_pubsub = push || protocol == Protocol::Resp2;
    if let (true, Value::Array(items)) = (may_be_pubsub, &value) {
        let kind = items.first().and_then(Value::as_bytes).unwrap_or(b"");
        match (kind, items.len()) {
            (b"subscribe" | b"ssubscribe", 3) => {
                if let Some(ch) = items[1].as_bytes() {
                    return Incoming::Subscribed {
                        channel: Bytes::copy_from_slice(ch),
                    };
                }
            }
            (b"unsubscribe" | b"sunsubscribe", 3) => {
                return Incoming::Unsubscribed {
                    channel: items[1].as_bytes().map(Bytes::copy_from_slice),
                };
            }
            (b"message" | b"smessage", 3) => {
                if let (Some(c), Some(p)) = (items[1].as_bytes(), items[2].as_bytes()) {
                    return Incoming::Message(MessageFrame::from_parts(c, p));
                }
            }
            (b"pong", 2) if !push => return Incoming::Pong,
            _ => {}
        }
        if push {
            return Incoming::OtherPush;
        }
    }
    Incoming::Reply(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(p: Protocol) -> Reader {
        Reader::new(
            p,
            FrameLimits {
                max_frame_bytes: 1 << 20,
                max_depth: 8,
                max_elements: 1000,
            },
        )
    }

    fn all(p: Protocol, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut r = reader(p);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = r.next(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn encodes_commands() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"PUBLISH", b"ch", b""]);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$0\r\n\r\n");
    }

    #[test]
    fn a_message_payload_part_is_its_frame_narrowed_not_a_copy() {
        let wire = b">3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$5\r\nhello\r\n";
        let mut buf = BytesMut::from(&wire[..]);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Incoming::Message(m))) = reader(Protocol::Resp3).next(&mut buf) else {
            panic!("a message");
        };
        assert_eq!((m.channel(), m.payload()), (&b"room"[..], &b"hello"[..]));
        let part = m.clone().into_part(1..4);
        assert_eq!(&part[..], b"ell");
        // Where the part sits in the bytes read: the frame's own memory.
        let offset = wire.len() - b"hello\r\n".len() + 1;
        assert_eq!(part.as_ptr() as usize, start + offset);
        assert_eq!(&m.clone().into_part(0..5)[..], b"hello");
        // A part beyond the payload reads as empty (not the CRLF after it), never panics.
        assert!(m.clone().into_part(3..6).is_empty());
        assert!(m.into_part(usize::MAX..usize::MAX).is_empty());
        // Ranges outside the frame read as empty, never panic.
        let odd = MessageFrame::new(Bytes::from_static(b"ab"), 1..5, 3..9);
        assert_eq!((odd.channel(), odd.payload()), (&b""[..], &b""[..]));
        assert!(odd.into_part(0..1).is_empty());
    }

    #[test]
    fn message_in_both_protocols_is_the_same_event() {
        let want = Incoming::Message(MessageFrame::from_parts(b"ch", b"hi"));
        let r2 = all(
            Protocol::Resp2,
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        )
        .unwrap();
        let r3 = all(
            Protocol::Resp3,
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        )
        .unwrap();
        assert_eq!(r2, vec![want.clone()]);
        assert_eq!(r3, vec![want]);
        // In RESP3 an array is a reply whatever it holds (the answer to an LRANGE, say), on
        // the fast path as on the others.
        let r3 = all(
            Protocol::Resp3,
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        )
        .unwrap();
        assert!(matches!(&r3[..], [Incoming::Reply(Value::Array(items))] if items.len() == 3));
    }

    #[test]
    fn confirmations_and_pong() {
        let r = all(
            Protocol::Resp2,
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n+PONG\r\n",
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                Incoming::Subscribed {
                    channel: Bytes::from_static(b"a")
                },
                Incoming::Unsubscribed { channel: None },
                Incoming::Pong,
                Incoming::Reply(Value::Simple(Bytes::from_static(b"PONG"))),
            ]
        );
        // In RESP3 an array that looks like a confirmation is a reply, not a push.
        let r = all(
            Protocol::Resp3,
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
        )
        .unwrap();
        assert!(matches!(r[0], Incoming::Reply(Value::Array(_))));
        let r = all(
            Protocol::Resp3,
            b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
        )
        .unwrap();
        assert!(matches!(r[0], Incoming::Subscribed { .. }));
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let bytes: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n%1\r\n+a\r\n:1\r\n|1\r\n+k\r\n+v\r\n:7\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n-ERR x\r\n";
        let whole = all(Protocol::Resp3, bytes).unwrap();
        assert_eq!(whole.len(), 5);
        for split in 0..bytes.len() {
            let mut r = reader(Protocol::Resp3);
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut out = Vec::new();
            while let Some(f) = r.next(&mut buf).unwrap() {
                out.push(f);
            }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(f) = r.next(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(out, whole, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn hostile_lengths_and_nesting_are_errors() {
        assert!(matches!(
            all(Protocol::Resp2, b"$9223372036854775807\r\n"),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            all(Protocol::Resp2, b"*9223372036854775807\r\n"),
            Err(FrameError::TooManyElements { .. })
        ));
        let deep = "*1\r\n".repeat(10_000);
        assert!(matches!(
            all(Protocol::Resp2, deep.as_bytes()),
            Err(FrameError::TooDeep { .. })
        ));
        assert!(matches!(
            all(Protocol::Resp2, b"$2\r\nabXY"),
            Err(FrameError::Malformed { .. })
        ));
        assert!(matches!(
            all(Protocol::Resp2, b"@oops\r\n"),
            Err(FrameError::Malformed { .. })
        ));
        assert!(all(Protocol::Resp2, b"$-2\r\n").is_err());
        // Found by fuzzing (link_input): an empty line used to panic on a slice index.
        for p in [Protocol::Resp2, Protocol::Resp3] {
            for bytes in [&b"\r\n"[..], b"%1\r\n+a\r\n\r\n", b"*2\r\n:1\r\n\r\n"] {
                assert!(matches!(all(p, bytes), Err(FrameError::Malformed { .. })));
            }
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_data_arrives() {
        // Two bulks of 600 KiB each: each under the 1 MiB limit, the frame over it. The
        // second header is enough to know; nothing more is buffered.
        let mut r = reader(Protocol::Resp2);
        let len = 600 << 10;
        let mut buf = BytesMut::from(format!("*2\r\n${len}\r\n").as_bytes());
        buf.extend_from_slice(&vec![b'x'; len]);
        buf.extend_from_slice(format!("\r\n${len}\r\n").as_bytes());
        assert!(matches!(r.next(&mut buf), Err(FrameError::TooLarge { .. })));
        let mut r = reader(Protocol::Resp2);
        let mut buf = BytesMut::from(format!("${}\r\n", 1 << 20).as_bytes());
        assert!(matches!(r.next(&mut buf), Err(FrameError::TooLarge { .. })));
        // Exactly at the limit is still a frame.
        let mut r = reader(Protocol::Resp2);
        let len = (1 << 20) - 12;
        let mut buf = BytesMut::from(format!("${len}\r\n").as_bytes());
        buf.extend_from_slice(&vec![b'x'; len]);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(buf.len(), 1 << 20);
        assert!(matches!(r.next(&mut buf), Ok(Some(_))));
    }

    /// `*3`/`>3`, the kind, the channel, and the header of a payload of `len` bytes.
    fn message_head(push: bool, kind: &str, channel: &str, len: usize) -> Vec<u8> {
        let head = if push { ">3" } else { "*3" };
        let k = kind.len();
        let c = channel.len();
        format!("{head}\r\n${k}\r\n{kind}\r\n${c}\r\n{channel}\r\n${len}\r\n").into_bytes()
    }

    fn message_frame(push: bool, kind: &str, channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = message_head(push, kind, channel, payload.len());
        b.extend_from_slice(payload);
        b.extend_from_slice(b"\r\n");
        b
    }

    const SMALL: FrameLimits = FrameLimits {
        max_frame_bytes: 128,
        max_depth: 8,
        max_elements: 1000,
    };

    /// Feeds `pieces` one after the other to one reader; every frame read, then the error
    /// if one came. Checks after each piece that no more than the limit is held.
    fn read_pieces(
        protocol: Protocol,
        limits: FrameLimits,
        pieces: &[&[u8]],
    ) -> (Vec<Incoming>, Option<FrameError>) {
        let mut r = Reader::new(protocol, limits);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match r.next(&mut buf) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
            assert!(
                buf.len() <= limits.max_frame_bytes + 2,
                "{} bytes held",
                buf.len()
            );
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        (out, None)
    }

    #[test]
    fn an_oversize_message_is_skipped_and_the_next_one_read() {
        let payload = vec![b'x'; 1000];
        for (protocol, push) in [
            (Protocol::Resp2, false),
            (Protocol::Resp3, true),
            // RESP2 reads a push as it reads an array.
            (Protocol::Resp2, true),
        ] {
            for kind in ["message", "smessage"] {
                let mut bytes = message_frame(push, kind, "a", b"one");
                let big = message_frame(push, kind, "room:b", &payload);
                bytes.extend_from_slice(&big);
                bytes.extend_from_slice(&message_frame(push, kind, "c", b"two"));
                let want = vec![
                    Incoming::Message(MessageFrame::from_parts(b"a", b"one")),
                    Incoming::Oversize {
                        channel: Bytes::from_static(b"room:b"),
                        len: big.len() as u64,
                    },
                    Incoming::Message(MessageFrame::from_parts(b"c", b"two")),
                ];
                let case = format!("{protocol:?} push={push} {kind}");
                assert_eq!(
                    read_pieces(protocol, SMALL, &[&bytes]),
                    (want.clone(), None)
                );
                for split in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(split);
                    let got = read_pieces(protocol, SMALL, &[a, b]);
                    assert_eq!(got, (want.clone(), None), "{case}, split at {split}");
                }
                for chunk in 1..40 {
                    let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
                    let got = read_pieces(protocol, SMALL, &pieces);
                    assert_eq!(got, (want.clone(), None), "{case}, chunks of {chunk}");
                }
            }
        }
    }

    #[test]
    fn a_message_one_byte_over_the_limit_is_skipped_one_at_the_limit_read() {
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            let push = protocol == Protocol::Resp3;
            let head = message_head(push, "message", "ch", 0).len();
            // Header, payload, CRLF: exactly the limit (the payload's length line is as long
            // for both lengths used here).
            let at = SMALL.max_frame_bytes - head - 2 - 1;
            let fits = message_frame(push, "message", "ch", &vec![b'y'; at]);
            assert_eq!(fits.len(), SMALL.max_frame_bytes);
            let over = message_frame(push, "message", "ch", &vec![b'y'; at + 1]);
            let (got, err) = read_pieces(protocol, SMALL, &[&fits, &over, &fits]);
            assert_eq!(err, None);
            assert!(matches!(&got[0], Incoming::Message(m) if m.payload().len() == at));
            assert_eq!(
                got[1],
                Incoming::Oversize {
                    channel: Bytes::from_static(b"ch"),
                    len: SMALL.max_frame_bytes as u64 + 1,
                }
            );
            assert!(matches!(&got[2], Incoming::Message(m) if m.payload().len() == at));
            assert_eq!(got.len(), 3);
        }
    }

    #[test]
    fn a_payload_of_2_pow_63_is_skipped_as_far_as_it_comes() {
        // Nothing of it is buffered; the reader waits for the rest, holding nothing.
        let mut r = Reader::new(Protocol::Resp3, SMALL);
        let mut buf = BytesMut::from(&message_head(true, "message", "ch", 0)[..]);
        buf.truncate(buf.len() - 3);
        buf.extend_from_slice(b"9223372036854775807\r\nxyz");
        assert!(matches!(
            r.next(&mut buf),
            Ok(Some(Incoming::Oversize { len, .. })) if len > 1 << 62
        ));
        assert_eq!(r.next(&mut buf), Ok(None));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[b'z'; 4096]);
        assert_eq!(r.next(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }

    #[test]
    fn what_cannot_be_skipped_still_ends_the_stream() {
        let big = vec![b'x'; 1000];
        let too_large = |e: &Option<FrameError>| matches!(e, Some(FrameError::TooLarge { .. }));
        type Check = fn(&Option<FrameError>) -> bool;
        let cases: Vec<(Protocol, Vec<u8>, Check)> = vec![
            // A reply over the limit: a bulk string, an array, a RESP3 array shaped like a
            // message (a reply in RESP3).
            (
                Protocol::Resp2,
                format!("${}\r\n", big.len()).into_bytes(),
                too_large,
            ),
            (
                Protocol::Resp2,
                message_frame(false, "lrange", "ch", &big),
                too_large,
            ),
            (
                Protocol::Resp3,
                message_frame(false, "message", "ch", &big),
                too_large,
            ),
            // Another push, or a message whose channel alone is over the limit.
            (
                Protocol::Resp3,
                message_frame(true, "invalidate", "ch", &big),
                too_large,
            ),
            (
                Protocol::Resp3,
                message_frame(true, "message", &"c".repeat(200), b"p"),
                too_large,
            ),
            // A message whose payload is not the third element or not a bulk string.
            (
                Protocol::Resp2,
                format!("*3\r\n$7\r\nmessage\r\n${}\r\n", big.len()).into_bytes(),
                too_large,
            ),
            (
                Protocol::Resp3,
                format!(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n={}\r\n", big.len()).into_bytes(),
                too_large,
            ),
            (
                Protocol::Resp3,
                format!(">4\r\n$7\r\nmessage\r\n$2\r\nch\r\n${}\r\n", big.len()).into_bytes(),
                too_large,
            ),
            // A malformed payload length, nesting too deep, the skipped payload without CRLF.
            (
                Protocol::Resp3,
                b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1x00\r\n".to_vec(),
                |e| matches!(e, Some(FrameError::Malformed { .. })),
            ),
            (Protocol::Resp3, ">1\r\n".repeat(9).into_bytes(), |e| {
                matches!(e, Some(FrameError::TooDeep { .. }))
            }),
            (
                Protocol::Resp3,
                {
                    let mut b = message_frame(true, "message", "ch", &big);
                    let n = b.len();
                    b[n - 1] = b'!';
                    b
                },
                |e| matches!(e, Some(FrameError::Malformed { .. })),
            ),
        ];
        for (i, (protocol, bytes, want)) in cases.into_iter().enumerate() {
            let (_, err) = read_pieces(protocol, SMALL, &[&bytes[..bytes.len().min(200)]]);
            let err = err.or_else(|| read_pieces(protocol, SMALL, &[&bytes]).1);
            assert!(want(&err), "case {i}: {err:?}");
        }
    }

    #[test]
    fn integers_are_read_as_redis_protocol_reads_them() {
        let lines: &[&[u8]] = &[
            b"0",
            b"1",
            b"-1",
            b"+7",
            b"0042",
            b"9223372036854775807",
            b"-9223372036854775808",
            b"9223372036854775808",
            b"",
            b"-",
            b"+",
            b"1.5",
            b" 1",
            b"1 ",
            b"abc",
            b"\xff1",
            b"1\r",
            b"\n1",
        ];
        for p in [Protocol::Resp2, Protocol::Resp3] {
            for line in lines {
                let frame = [&b":"[..], line, b"\r\n"].concat();
                let ours = all(p, &frame);
                // The decoder every integer reply went through before the core read them.
                let mut buf = BytesMut::from(&frame[..]);
                let oracle = match p {
                    Protocol::Resp2 => redis_protocol::resp2::decode::decode_bytes_mut(&mut buf)
                        .ok()
                        .flatten()
                        .map(|(f, _, _)| from2(f)),
                    Protocol::Resp3 => {
                        redis_protocol::resp3::decode::complete::decode_bytes_mut(&mut buf)
                            .ok()
                            .flatten()
                            .map(|(f, _, _)| from3(f))
                    }
                };
                match (ours, oracle) {
                    (Ok(got), Some(Value::Int(n))) => {
                        assert_eq!(got, vec![Incoming::Reply(Value::Int(n))], "{frame:?}")
                    }
                    (Err(FrameError::Malformed { .. }), None) => {}
                    (got, want) => panic!("{p:?} {frame:?}: {got:?}, redis-protocol {want:?}"),
                }
            }
        }
    }

    #[test]
    fn unterminated_garbage_is_bounded() {
        let mut r = reader(Protocol::Resp2);
        let mut buf = BytesMut::from(&b"+"[..]);
        buf.extend_from_slice(&vec![b'x'; MAX_LINE + 10]);
        assert!(r.next(&mut buf).is_err());
    }

    /// `parse_len` as it was before the digit loop: the specification of the lengths and
    /// errors it must keep.
    fn parse_len_via_str(line: &[u8]) -> Result<i64, FrameError> {
        let s = std::str::from_utf8(line).map_err(|_| malformed("a length is not ASCII"))?;
        s.parse::<i64>()
            .map_err(|_| malformed(format!("bad length {s:?}")))
    }

    #[test]
    fn lengths_are_read_as_str_parse_reads_them() {
        let lines: &[&[u8]] = &[
            b"0",
            b"7",
            b"-1",
            b"-0",
            b"+0",
            b"+7",
            b"0042",
            b"-0042",
            b"9223372036854775807",
            b"09223372036854775807",
            b"-9223372036854775808",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
            b"",
            b"-",
            b"+",
            b"+-1",
            b"-+1",
            b"--1",
            b"1-",
            b"1.5",
            b" 1",
            b"1 ",
            b"abc",
            b"\xff1",
            b"1\xff",
            b"\xc2\xb9",
            b"\xd9\xa1",
            b"1\r",
            b"\n1",
            b"1_000",
            b"0x10",
        ];
        for line in lines {
            assert_eq!(parse_len(line), parse_len_via_str(line), "{line:?}");
        }
    }

    /// [`Reader::next`] without its fast paths.
    fn next_general(r: &mut Reader, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        if buf.is_empty() || buf.len() < r.need {
            return Ok(None);
        }
        if r.skip != 0 && !r.discard(buf)? {
            return Ok(None);
        }
        r.next_scanned(buf)
    }

    /// Feeds `bytes` in pieces of `chunk` to a reader with its fast paths ([`Reader::next`])
    /// and to one without ([`Reader::next_scanned`] alone): every answer, the bytes left and
    /// `need` must be the same.
    fn fast_matches_general(
        protocol: Protocol,
        limits: FrameLimits,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut fast = Reader::new(protocol, limits);
        let mut general = Reader::new(protocol, limits);
        let (mut fast_buf, mut general_buf) = (BytesMut::new(), BytesMut::new());
        for piece in bytes.chunks(chunk) {
            fast_buf.extend_from_slice(piece);
            general_buf.extend_from_slice(piece);
            loop {
                let got = fast.next(&mut fast_buf);
                let want = next_general(&mut general, &mut general_buf);
                proptest::prop_assert_eq!(&got, &want);
                proptest::prop_assert_eq!(&fast_buf, &general_buf);
                proptest::prop_assert_eq!(fast.need, general.need);
                if !matches!(got, Ok(Some(_))) {
                    break;
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn lengths_match_str_parse(
            line in proptest::collection::vec(
                proptest::sample::select(b"0123456789+- \xff\x00".to_vec()),
                0..24,
            )
        ) {
            proptest::prop_assert_eq!(parse_len(&line), parse_len_via_str(&line));
        }

        /// The confirmation fast path against the general path alone: (un)subscribe frames
        /// and near misses, whole and in pieces, under loose and tight limits.
        #[test]
        fn confirmation_fast_path_matches_the_general_path(
            frames in proptest::collection::vec(
                (0usize..6, 0usize..10, 0usize..8, 0usize..12, 0usize..20),
                1..5,
            ),
            cut in proptest::option::of(0usize..200),
            chunk in 1usize..48,
            limits in 0usize..4,
            resp3 in proptest::bool::ANY,
        ) {
            let usual = |i: usize, n: usize| if i >= n { 0 } else { i };
            let mut bytes = Vec::new();
            for (head, kind, channel, count, len) in frames {
                bytes.extend_from_slice([&b"*3\r\n"[..], b">3\r\n", b"*2\r\n", b">4\r\n", b"*03\r\n"][usual(head, 5)]);
                bytes.extend_from_slice(
                    [
                        &b"$9\r\nsubscribe\r\n"[..],
                        b"$11\r\nunsubscribe\r\n",
                        b"$10\r\nssubscribe\r\n",
                        b"$12\r\nsunsubscribe\r\n",
                        b"$9\r\nSUBSCRIBE\r\n",
                        b"$09\r\nsubscribe\r\n",
                        b"+subscribe\r\n",
                        b"$7\r\nmessage\r\n",
                    ][usual(kind, 8)],
                );
                let data = "c:h%/".repeat(len / 5 + 1)[..len].to_string();
                let header = match usual(channel, 5) {
                    0 => format!("${len}\r\n{data}\r\n"),
                    1 => "$-1\r\n".to_string(),
                    2 => format!("$0{len}\r\n{data}\r\n"),
                    3 => format!("+{data}\r\n"),
                    _ => format!("${}\r\n{data}\r\n", len + 1),
                };
                bytes.extend_from_slice(header.as_bytes());
                let tail = [
                    ":1\r\n", ":0\r\n", ":+1\r\n", ":-1\r\n", ":\r\n", ":12a\r\n",
                    ":123456789012345678\r\n", ":1234567890123456789\r\n",
                    ":99999999999999999999\r\n", "$1\r\n1\r\n", ":1\n",
                ][usual(count, 11)];
                bytes.extend_from_slice(tail.as_bytes());
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let limits = [
                FrameLimits { max_frame_bytes: 1 << 20, max_depth: 8, max_elements: 1000 },
                FrameLimits { max_frame_bytes: 40, max_depth: 8, max_elements: 1000 },
                FrameLimits { max_frame_bytes: 1 << 20, max_depth: 0, max_elements: 1000 },
                FrameLimits { max_frame_bytes: 1 << 20, max_depth: 8, max_elements: 2 },
            ][limits];
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            fast_matches_general(protocol, limits, &bytes, chunk)?;
        }

        /// The one rule for what is pub/sub (see the module docs), on single frames shaped
        /// like messages, confirmations and pongs, as arrays and pushes, in both protocols:
        /// the fast path ([`Reader::next`]), the scan alone ([`Reader::next_scanned`]) and
        /// [`classify`] of the frame as redis-protocol decodes it give the same answer.
        /// (RESP2 has no push type: redis-protocol refuses `>` there, so `classify` is not
        /// compared for those frames.)
        #[test]
        fn the_three_paths_agree(
            head in 0usize..4,
            kind in 0usize..8,
            elements in proptest::collection::vec((0usize..6, 0usize..6), 1..4),
            resp3 in proptest::bool::ANY,
        ) {
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            let count = elements.len() + 1;
            let mut bytes = format!("{}{count}\r\n", ["*", ">", "*", ">"][head]).into_bytes();
            let kind = ["message", "smessage", "subscribe", "unsubscribe", "pong", "ssubscribe", "invalidate", "MESSAGE"][kind];
            bytes.extend_from_slice(format!("${}\r\n{kind}\r\n", kind.len()).as_bytes());
            for (i, (ty, len)) in elements.into_iter().enumerate() {
                let data = "ch%:"[..len.min(4)].to_string() + &"x".repeat(len.saturating_sub(4));
                let element = match ty {
                    0 | 1 => format!("${}\r\n{data}\r\n", data.len()),
                    2 => format!("+{data}\r\n"),
                    3 => format!(":{i}{len}\r\n"),
                    4 => "$-1\r\n".to_string(),
                    // RESP3 only: redis-protocol's RESP2 decoder refuses it.
                    _ => format!("=${}\r\ntxt:{data}\r\n", data.len() + 4)[1..].to_string(),
                };
                bytes.extend_from_slice(element.as_bytes());
            }
            let limits = FrameLimits { max_frame_bytes: 1 << 20, max_depth: 8, max_elements: 1000 };
            let fast = Reader::new(protocol, limits).next(&mut BytesMut::from(&bytes[..]));
            let scanned = Reader::new(protocol, limits).next_scanned(&mut BytesMut::from(&bytes[..]));
            proptest::prop_assert_eq!(&fast, &scanned);
            let mut buf = BytesMut::from(&bytes[..]);
            let decoded = match protocol {
                Protocol::Resp2 => redis_protocol::resp2::decode::decode_bytes_mut(&mut buf)
                    .ok()
                    .flatten()
                    .map(|(f, _, _)| (from2(f), false)),
                Protocol::Resp3 => redis_protocol::resp3::decode::complete::decode_bytes_mut(&mut buf)
                    .ok()
                    .flatten()
                    .map(|(f, _, _)| {
                        let push = matches!(f, Frame3::Push { .. });
                        (from3(f), push)
                    }),
            };
            match decoded {
                Some((value, push)) => {
                    let classified = classify(value, push, protocol);
                    proptest::prop_assert_eq!(fast, Ok(Some(classified)));
                }
                None => proptest::prop_assert!(
                    !resp3 && head % 2 == 1 || matches!(fast, Err(FrameError::Malformed { .. })),
                    "{:?}: redis-protocol refuses it, the reader gives {:?}",
                    String::from_utf8_lossy(&bytes),
                    fast
                ),
            }
        }

        /// The message fast path against the general path alone, on message frames and near
        /// misses, whole and in pieces, under loose and tight limits.
        #[test]
        fn fast_path_matches_the_general_path(
            pieces in proptest::collection::vec(
                (0usize..8, 0usize..12, 0usize..12, 0usize..20, 0usize..20, 0usize..40),
                1..5,
            ),
            tail in 0usize..3,
            cut in proptest::option::of(0usize..400),
            chunk in 1usize..64,
            limits in 0usize..5,
            resp3 in proptest::bool::ANY,
        ) {
            let mut bytes = Vec::new();
            // Half of each choice is the usual spelling (index 0).
            let usual = |i: usize, n: usize| if i >= n { 0 } else { i };
            for (head, count, kind, ch, pl, n) in pieces {
                let (head, count, kind) = (usual(head, 4), usual(count, 6), usual(kind, 6));
                let (ch, pl) = (usual(ch, 10), usual(pl, 10));
                // (Not `%` or `~`: redis-protocol decodes maps and sets through hash tables, so
                // their order differs between two decodes.)
                bytes.extend_from_slice([&b"*"[..], b">", b"_", b"-"][head]);
                bytes.extend_from_slice([&b"3\r\n"[..], b"03\r\n", b"+3\r\n", b"2\r\n", b"4\r\n", b"3\n"][count]);
                bytes.extend_from_slice(
                    [
                        &b"$7\r\nmessage\r\n"[..],
                        b"$8\r\nsmessage\r\n",
                        b"$07\r\nmessage\r\n",
                        b"$7\r\nMESSAGE\r\n",
                        b"$9\r\nsubscribe\r\n",
                        b"+message\r\n",
                    ][kind],
                );
                for (spelling, len) in [(ch, n % 7), (pl, n)] {
                    let data = vec![b'\r'; len];
                    let header = match spelling {
                        0 => format!("${len}\r\n"),
                        1 => "$\r\n".to_string(),
                        2 => format!("$0{len}\r\n"),
                        3 => format!("$+{len}\r\n"),
                        4 => "$-1\r\n".to_string(),
                        5 => format!("${}\r\n", len + 1),
                        6 => format!("$ {len}\r\n"),
                        7 => format!("$00000000{len}\r\n"),
                        8 => format!("$0000000000{len}\r\n"),
                        _ => format!("${len}\n"),
                    };
                    bytes.extend_from_slice(header.as_bytes());
                    if spelling != 4 && spelling != 1 {
                        bytes.extend_from_slice(&data);
                        bytes.extend_from_slice(b"\r\n");
                    }
                }
                bytes.extend_from_slice([&b""[..], b"\r\n", b":1\r\n"][tail]);
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let limits = [
                FrameLimits { max_frame_bytes: 1 << 20, max_depth: 8, max_elements: 1000 },
                FrameLimits { max_frame_bytes: 48, max_depth: 8, max_elements: 1000 },
                FrameLimits { max_frame_bytes: 60, max_depth: 8, max_elements: 3 },
                FrameLimits { max_frame_bytes: 1 << 20, max_depth: 0, max_elements: 1000 },
                FrameLimits { max_frame_bytes: 1 << 20, max_depth: 8, max_elements: 2 },
            ][limits];
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            fast_matches_general(protocol, limits, &bytes, chunk)?;
        }

        /// The integer fast path against the general path alone: PUBLISH replies and near
        /// misses (signs, 19 and 20 digits, no digits, a bare LF, a bulk in between), whole and
        /// in pieces, under loose and tight frame limits.
        #[test]
        fn integer_fast_path_matches_the_general_path(
            ints in proptest::collection::vec((0usize..14, 0u64..u64::MAX), 1..8),
            cut in proptest::option::of(0usize..120),
            chunk in 1usize..16,
            tight in proptest::bool::ANY,
            resp3 in proptest::bool::ANY,
        ) {
            let mut bytes = Vec::new();
            for (spelling, n) in ints {
                let int = match spelling {
                    0..=5 => format!(":{}\r\n", n % 1000),
                    6 => format!(":{n}\r\n"),
                    7 => format!(":-{}\r\n", n % 1000),
                    8 => format!(":+{}\r\n", n % 1000),
                    9 => ":\r\n".to_string(),
                    10 => format!(":{}\n", n % 1000),
                    11 => format!(":{}x\r\n", n % 1000),
                    12 => format!(":{:018}\r\n", n % 1_000_000_000_000_000_000),
                    _ => "$1\r\n2\r\n".to_string(),
                };
                bytes.extend_from_slice(int.as_bytes());
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let max_frame_bytes = if tight { 12 } else { 1 << 20 };
            let limits = FrameLimits { max_frame_bytes, max_depth: 8, max_elements: 1000 };
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            fast_matches_general(protocol, limits, &bytes, chunk)?;
        }
    }
}
