//! Replies as Redis builds them, and their RESP2 / RESP3 encodings.

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2 (the default of every new connection).
    Resp2,
    /// RESP3 (after `HELLO 3`).
    Resp3,
}

impl Protocol {
    /// The protocol version number (2 or 3).
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A reply before it is encoded for a connection's protocol.
///
/// Encoding follows Redis 7.0: `Nil` is `$-1` in RESP2 and `_` in RESP3; maps, sets and
/// pushes become plain arrays in RESP2. Status and error texts have CR and LF replaced by
/// spaces when encoded, so a reply is always one well-formed frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// A simple string, `+OK`.
    Status(Vec<u8>),
    /// An error; the text includes its code (`ERR ...`, `NOSCRIPT ...`), no leading `-`.
    Error(Vec<u8>),
    /// An integer.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// The null reply (`$-1` / `_`).
    Nil,
    /// The null array (`*-1` / `_`).
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (`%` in RESP3, a flat key/value array in RESP2).
    Map(Vec<(Reply, Reply)>),
    /// A set (`~` in RESP3, an array in RESP2).
    Set(Vec<Reply>),
    /// An out-of-band push (`>` in RESP3, an array in RESP2).
    Push(Vec<Reply>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Status(b"OK".to_vec())
    }

    /// A status reply.
    pub fn status(text: &str) -> Reply {
        Reply::Status(text.as_bytes().to_vec())
    }

    /// A bulk string reply.
    pub fn bulk(data: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(data.as_ref().to_vec())
    }

    /// An error reply built the way Redis's `addReplyError` builds one: the text is cut
    /// at its first NUL byte (it is a C string there), CR and LF become spaces, and unless
    /// it starts with `-` (then it carries its own code) it is prefixed by `ERR `.
    pub fn error(text: impl AsRef<[u8]>) -> Reply {
        let text = text.as_ref();
        let text = match text.iter().position(|&b| b == 0) {
            Some(n) => &text[..n],
            None => text,
        };
        let mut out = Vec::with_capacity(text.len() + 4);
        match text.strip_prefix(b"-") {
            Some(rest) => out.extend_from_slice(rest),
            None => {
                out.extend_from_slice(b"ERR ");
                out.extend_from_slice(text);
            }
        }
        for b in out.iter_mut() {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        Reply::Error(out)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The reply as a script sees it through `redis.call` (RESP2 shapes): maps are
    /// flattened to arrays, sets and pushes become arrays, the null array becomes `Nil`.
    pub fn into_resp2_shape(self) -> Reply {
        match self {
            Reply::Map(pairs) => Reply::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2_shape(), v.into_resp2_shape()])
                    .collect(),
            ),
            Reply::Set(items) | Reply::Push(items) | Reply::Array(items) => {
                Reply::Array(items.into_iter().map(Reply::into_resp2_shape).collect())
            }
            Reply::NilArray => Reply::Nil,
            other => other,
        }
    }

    /// Appends the encoding of this reply for `proto` to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut Vec<u8>) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Reply::Status(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Integer(n) => header(out, b':', *n),
            Reply::Bulk(b) => {
                header(out, b'$', b.len() as i64);
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => aggregate(out, b'*', items, proto),
            Reply::Set(items) => aggregate(out, if resp3 { b'~' } else { b'*' }, items, proto),
            Reply::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len() as i64);
                } else {
                    header(out, b'*', 2 * pairs.len() as i64);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }

    /// This reply encoded for `proto`.
    pub fn to_bytes(&self, proto: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(proto, &mut out);
        out
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn aggregate(out: &mut Vec<u8>, kind: u8, items: &[Reply], proto: Protocol) {
    header(out, kind, items.len() as i64);
    for it in items {
        it.encode(proto, out);
    }
}

#[cfg(test)]
mod tests {
    use super::{Protocol, Reply};

    #[test]
    fn error_texts_follow_add_reply_error() {
        assert_eq!(
            Reply::error("syntax error"),
            Reply::Error(b"ERR syntax error".to_vec())
        );
        assert_eq!(
            Reply::error("-NOPROTO unsupported protocol version"),
            Reply::Error(b"NOPROTO unsupported protocol version".to_vec())
        );
        assert_eq!(
            Reply::error(b"a\r\nb\0c"),
            Reply::Error(b"ERR a  b".to_vec())
        );
    }

    #[test]
    fn encodings() {
        let r = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(r.to_bytes(Protocol::Resp2), b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(r.to_bytes(Protocol::Resp3), b"%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(Reply::Nil.to_bytes(Protocol::Resp2), b"$-1\r\n");
        assert_eq!(Reply::Nil.to_bytes(Protocol::Resp3), b"_\r\n");
        let p = Reply::Push(vec![Reply::bulk("x")]);
        assert_eq!(p.to_bytes(Protocol::Resp2), b"*1\r\n$1\r\nx\r\n");
        assert_eq!(p.to_bytes(Protocol::Resp3), b">1\r\n$1\r\nx\r\n");
        assert_eq!(
            Reply::Status(b"a\nb".to_vec()).to_bytes(Protocol::Resp2),
            b"+a b\r\n"
        );
    }
}
