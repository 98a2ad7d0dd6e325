//! Reading client requests the way redis-server 7.0 reads its query buffer.
//!
//! A request starting with `*` is a multibulk (an array of bulk strings); anything else is
//! an inline command (a line split on blanks, with quoting). The rules, limits and error
//! texts below were checked against redis-server 7.0.15 (see `tests/transcripts/`):
//!
//! - A line ends at `\r`; the byte after it is skipped unchecked, as is the CRLF after a
//!   bulk's data. A NUL byte stops the search for the line end, so a line containing NUL
//!   never ends (until the 64 KiB "too big" check fires).
//! - Counts and lengths are strict decimal integers (no sign `+`, no leading zeros).
//! - Multibulk count above `i32::MAX`, bulk length negative or above 512 MiB: protocol
//!   error. Before authentication, counts above 10 and lengths above 16384 are refused.
//! - `*0` and negative counts are empty requests (skipped); blank inline lines too.

/// Longest line Redis waits for (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;
/// Largest bulk a client may send (`proto-max-bulk-len`, 512 MiB).
pub const MAX_BULK: i64 = 512 * 1024 * 1024;

/// What the next request in the buffer is.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete command (never empty).
    Command(Vec<Vec<u8>>),
    /// An empty request was consumed; nothing to execute.
    Empty,
    /// More bytes are needed.
    NeedMore,
    /// Malformed input: the text after `Protocol error: `. Redis replies and closes.
    Error(Vec<u8>),
}

#[derive(Debug, Default)]
struct MultiBulk {
    remaining: usize,
    bulk_len: Option<usize>,
    argv: Vec<Vec<u8>>,
    argv_bytes: usize,
}

/// A connection's query buffer and the state of a partly read multibulk request.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    pos: usize,
    multibulk: Option<MultiBulk>,
}

/// Position of `want` in `s`, searching like C `strchr`: a NUL byte ends the search.
fn c_find(s: &[u8], want: u8) -> Option<usize> {
    for (i, &b) in s.iter().enumerate() {
        if b == want {
            return Some(i);
        }
        if b == 0 {
            return None;
        }
    }
    None
}

/// Redis's `string2ll`: optional `-`, then digits without leading zeros ("0" alone is
/// fine), no spaces, no `+`, within `i64`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(digit)?
        } else {
            v.checked_add(digit)?
        };
    }
    Some(v)
}

impl RequestReader {
    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: unread buffer plus the arguments of a partly read request (what
    /// Redis compares with `client-query-buffer-max-len`).
    pub fn held(&self) -> usize {
        (self.buf.len() - self.pos) + self.multibulk.as_ref().map_or(0, |m| m.argv_bytes)
    }

    /// Forgets everything buffered.
    pub fn clear(&mut self) {
        *self = RequestReader::default();
    }

    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Reads the next request. `auth_required` applies the pre-authentication limits.
    pub fn next(&mut self, auth_required: bool) -> Parsed {
        let r = if self.multibulk.is_some() || self.buf.get(self.pos) == Some(&b'*') {
            self.next_multibulk(auth_required)
        } else if self.pos < self.buf.len() {
            self.next_inline()
        } else {
            Parsed::NeedMore
        };
        self.compact();
        r
    }

    fn next_inline(&mut self) -> Parsed {
        let region = &self.buf[self.pos..];
        let Some(nl) = c_find(region, b'\n') else {
            if region.len() > INLINE_MAX {
                return Parsed::Error(b"too big inline request".to_vec());
            }
            return Parsed::NeedMore;
        };
        let end = if nl > 0 && region[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let args = split_args(&region[..end]);
        self.pos += nl + 1;
        match args {
            None => Parsed::Error(b"unbalanced quotes in request".to_vec()),
            Some(a) if a.is_empty() => Parsed::Empty,
            Some(a) => Parsed::Command(a),
        }
    }

    fn next_multibulk(&mut self, auth_required: bool) -> Parsed {
        if self.multibulk.is_none() {
            let region = &self.buf[self.pos..];
            let Some(cr) = c_find(region, b'\r') else {
                if region.len() > INLINE_MAX {
                    return Parsed::Error(b"too big mbulk count string".to_vec());
                }
                return Parsed::NeedMore;
            };
            if cr + 2 > region.len() {
                return Parsed::NeedMore;
            }
            let count = match parse_i64(&region[1..cr]) {
                Some(n) if n <= i64::from(i32::MAX) => n,
                _ => return Parsed::Error(b"invalid multibulk length".to_vec()),
            };
            if count > 10 && auth_required {
                return Parsed::Error(b"unauthenticated multibulk length".to_vec());
            }
            self.pos += cr + 2;
            if count <= 0 {
                return Parsed::Empty;
            }
            let remaining = count as usize;
            self.multibulk = Some(MultiBulk {
                remaining,
                argv: Vec::with_capacity(remaining.min(1024)),
                ..MultiBulk::default()
            });
        }
        loop {
            let Some(mb) = self.multibulk.as_mut() else {
                return Parsed::NeedMore;
            };
            if mb.remaining == 0 {
                let argv = std::mem::take(&mut mb.argv);
                self.multibulk = None;
                return Parsed::Command(argv);
            }
            let region = &self.buf[self.pos..];
            let len = match mb.bulk_len {
                Some(len) => len,
                None => {
                    let Some(cr) = c_find(region, b'\r') else {
                        if region.len() > INLINE_MAX {
                            return Parsed::Error(b"too big bulk count string".to_vec());
                        }
                        return Parsed::NeedMore;
                    };
                    if cr + 2 > region.len() {
                        return Parsed::NeedMore;
                    }
                    if region[0] != b'$' {
                        let mut msg = b"expected '$', got '".to_vec();
                        msg.push(region[0]);
                        msg.push(b'\'');
                        return Parsed::Error(msg);
                    }
                    let len = match parse_i64(&region[1..cr]) {
                        Some(n) if (0..=MAX_BULK).contains(&n) => n,
                        _ => return Parsed::Error(b"invalid bulk length".to_vec()),
                    };
                    if len > 16384 && auth_required {
                        return Parsed::Error(b"unauthenticated bulk length".to_vec());
                    }
                    self.pos += cr + 2;
                    mb.bulk_len = Some(len as usize);
                    len as usize
                }
            };
            let region = &self.buf[self.pos..];
            if region.len() < len + 2 {
                return Parsed::NeedMore;
            }
            mb.argv.push(region[..len].to_vec());
            mb.argv_bytes += len;
            mb.bulk_len = None;
            mb.remaining -= 1;
            self.pos += len + 2;
        }
    }
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline request like Redis's `sdssplitargs`: blanks separate arguments;
/// `"..."` understands `\n \r \t \b \a \xHH` and `\<any>`; `'...'` understands `\'`;
/// a closing quote must be followed by a blank or the end. `None` on unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let n = line.len();
    let mut p = 0;
    let mut out = Vec::new();
    loop {
        while p < n && is_c_space(line[p]) {
            p += 1;
        }
        if p >= n {
            return Some(out);
        }
        let (mut in_dq, mut in_sq, mut done) = (false, false, false);
        let mut cur = Vec::new();
        while !done {
            let c = line.get(p).copied();
            if in_dq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if line.get(p + 1) == Some(&b'x')
                            && line.get(p + 2).and_then(|&b| hex_val(b)).is_some()
                            && line.get(p + 3).and_then(|&b| hex_val(b)).is_some() =>
                    {
                        let hi = hex_val(line[p + 2]).unwrap_or(0);
                        let lo = hex_val(line[p + 3]).unwrap_or(0);
                        cur.push(hi * 16 + lo);
                        p += 3;
                    }
                    Some(b'\\') if p + 1 < n => {
                        p += 1;
                        cur.push(match line[p] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if p + 1 < n && !is_c_space(line[p + 1]) {
                            return None;
                        }
                        done = true;
                    }
                    Some(c) => cur.push(c),
                }
            } else if in_sq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                        p += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if p + 1 < n && !is_c_space(line[p + 1]) {
                            return None;
                        }
                        done = true;
                    }
                    Some(c) => cur.push(c),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t' | 0) => done = true,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(c) => cur.push(c),
                }
            }
            if p < n {
                p += 1;
            }
        }
        out.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], auth: bool) -> Vec<Parsed> {
        let mut r = RequestReader::default();
        r.push(input);
        let mut out = Vec::new();
        loop {
            let p = r.next(auth);
            let stop = matches!(p, Parsed::NeedMore | Parsed::Error(_));
            out.push(p);
            if stop {
                return out;
            }
        }
    }

    fn cmd(args: &[&str]) -> Parsed {
        Parsed::Command(args.iter().map(|a| a.as_bytes().to_vec()).collect())
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn multibulk_and_inline() {
        assert_eq!(
            all(b"*2\r\n$4\r\nECHO\r\n$1\r\nx\r\nPING\r\n", false),
            vec![cmd(&["ECHO", "x"]), cmd(&["PING"]), Parsed::NeedMore]
        );
        assert_eq!(
            all(b"*0\r\n*-3\r\n", false),
            vec![Parsed::Empty, Parsed::Empty, Parsed::NeedMore]
        );
        assert_eq!(all(b"*1\r\n\0\r\n", false), vec![Parsed::NeedMore]);
    }

    #[test]
    fn split_like_sdssplitargs() {
        let v = |s: &[u8]| {
            split_args(s).map(|a| {
                a.into_iter()
                    .map(|x| String::from_utf8_lossy(&x).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(v(b"  a  b "), Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            v(b"\"a\\x41\\n\" 'it\\'s'"),
            Some(vec!["aA\n".into(), "it's".into()])
        );
        assert_eq!(v(b"a\"b c\" d"), Some(vec!["ab c".into(), "d".into()]));
        assert_eq!(v(b"\"a\"b"), None);
        assert_eq!(v(b"'a"), None);
        assert_eq!(v(b""), Some(vec![]));
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let input =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nECHO \"x y\"\r\n*1\r\n$4\r\nPING\r\n";
        let mut r = RequestReader::default();
        let mut got = Vec::new();
        for b in input.iter() {
            r.push(&[*b]);
            loop {
                match r.next(false) {
                    Parsed::NeedMore => break,
                    other => got.push(other),
                }
            }
        }
        assert_eq!(
            got,
            vec![
                cmd(&["SET", "k", "hello"]),
                cmd(&["ECHO", "x y"]),
                cmd(&["PING"])
            ]
        );
    }
}
