//! A tiny blocking RESP client: enough to set a server up, inject faults from the side and
//! read what it reports.

use super::*;

/// One reply from Redis (RESP2, plus the RESP3 types a test might meet after `HELLO 3`).
#[derive(Debug, Clone, PartialEq)]
pub enum RespReply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$5 hello`; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*N ...`; `None` for the null array.
    Array(Option<Vec<RespReply>>),
    /// RESP3 null (`_`).
    Null,
    /// RESP3 boolean (`#t`).
    Bool(bool),
    /// RESP3 double (`,1.5`), as text.
    Double(String),
    /// RESP3 map (`%`), as key/value pairs.
    Map(Vec<(RespReply, RespReply)>),
    /// RESP3 push (`>`), e.g. a pub/sub message.
    Push(Vec<RespReply>),
}

impl RespReply {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespReply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// Simple string or bulk string as (lossy) UTF-8 text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            RespReply::Simple(s) => Some(s.clone()),
            RespReply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The raw bytes of a bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespReply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// The elements of an array or push.
    pub fn as_array(&self) -> Option<&[RespReply]> {
        match self {
            RespReply::Array(Some(v)) | RespReply::Push(v) => Some(v),
            _ => None,
        }
    }

    /// `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, RespReply::Simple(s) if s == "OK")
    }

    /// The error text, if this is an error.
    pub fn error(&self) -> Option<&str> {
        match self {
            RespReply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// The elements of an array or push as text (non-text elements become `None`):
    /// handy for `["message", channel, payload]`.
    pub fn texts(&self) -> Vec<Option<String>> {
        self.as_array()
            .map(|v| v.iter().map(RespReply::as_text).collect())
            .unwrap_or_default()
    }
}

/// A blocking connection to Redis speaking raw RESP, with bounded read timeouts.
#[derive(Debug)]
pub struct RespClient {
    stream: TcpStream,
    buf: Vec<u8>,
    reply_timeout: Duration,
}

impl RespClient {
    /// Connects to 127.0.0.1:`port` (no AUTH; see [`RedisServer::client`]).
    pub fn connect(port: u16) -> io::Result<RespClient> {
        RespClient::connect_timeout(port, Duration::from_secs(5))
    }

    /// Connects with a bound on the TCP connect.
    pub fn connect_timeout(port: u16, timeout: Duration) -> io::Result<RespClient> {
        RespClient::connect_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)
    }

    /// Connects to any address (plain TCP, no AUTH) with a bound on the TCP connect.
    pub fn connect_to(addr: SocketAddr, timeout: Duration) -> io::Result<RespClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(DEFAULT_REPLY_TIMEOUT))?;
        Ok(RespClient {
            stream,
            buf: Vec::new(),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// Changes how long [`RespClient::cmd`] and [`RespClient::read_reply`] wait.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// Sends a command and reads its reply; panics on I/O errors or timeouts.
    pub fn cmd(&mut self, args: &[&str]) -> RespReply {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis command {args:?}: {e}"))
    }

    /// Sends a command and reads its reply.
    pub fn try_cmd(&mut self, args: &[&str]) -> io::Result<RespReply> {
        self.send(args)?;
        self.try_read_reply()
    }

    /// Writes a command without reading anything (pipelining, or SUBSCRIBE).
    pub fn send(&mut self, args: &[&str]) -> io::Result<()> {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_raw(&raw)
    }

    /// Writes a command whose arguments are arbitrary bytes.
    pub fn send_raw(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut out = Vec::new();
        encode_command(&mut out, args);
        self.stream.write_all(&out)
    }

    /// Reads the next reply or push; panics on I/O errors or timeout.
    pub fn read_reply(&mut self) -> RespReply {
        self.try_read_reply()
            .unwrap_or_else(|e| panic!("reading a redis reply: {e}"))
    }

    /// Reads the next reply, waiting up to the reply timeout (then `TimedOut`).
    pub fn try_read_reply(&mut self) -> io::Result<RespReply> {
        match self.read_reply_within(self.reply_timeout)? {
            Some(r) => Ok(r),
            None => Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("no reply within {:?}", self.reply_timeout),
            )),
        }
    }

    /// Reads the next reply if one arrives within `timeout`; `Ok(None)` otherwise. A reply
    /// that was partly read stays buffered for the next call. EOF is `UnexpectedEof`.
    pub fn read_reply_within(&mut self, timeout: Duration) -> io::Result<Option<RespReply>> {
        Ok(self.read_raw_within(timeout)?.map(|(reply, _)| reply))
    }

    /// Like [`RespClient::read_reply_within`], with the reply's bytes exactly as the server
    /// sent them (for transcripts).
    pub fn read_raw_within(
        &mut self,
        timeout: Duration,
    ) -> io::Result<Option<(RespReply, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        loop {
            match parse(&self.buf, 0) {
                Ok(Some((reply, used))) => {
                    let raw = self.buf.drain(..used).collect();
                    return Ok(Some((reply, raw)));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e)),
            }
            if self.buf.len() > MAX_REPLY_BYTES {
                return Err(io::Error::new(ErrorKind::InvalidData, "reply too large"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "redis closed the connection",
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The underlying stream (e.g. to shut it down).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

type Parsed = Option<(RespReply, usize)>;

/// Parses one reply from the front of `buf`: `Ok(None)` if incomplete.
fn parse(buf: &[u8], depth: usize) -> Result<Parsed, String> {
    if depth > MAX_DEPTH {
        return Err("reply nested too deeply".into());
    }
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..line_end].split_first() else {
        return Err("empty line where a reply was expected".into());
    };
    let text = std::str::from_utf8(line).map_err(|_| "reply header is not UTF-8".to_string())?;
    let after = line_end + 2;
    let int = || {
        text.parse::<i64>()
            .map_err(|_| format!("bad number {text:?} in reply"))
    };
    let reply = match kind {
        b'+' => (RespReply::Simple(text.to_string()), after),
        b'-' => (RespReply::Error(text.to_string()), after),
        b':' => (RespReply::Int(int()?), after),
        b'_' => (RespReply::Null, after),
        b'#' => (RespReply::Bool(text == "t"), after),
        b',' | b'(' => (RespReply::Double(text.to_string()), after),
        b'$' | b'=' | b'!' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((RespReply::Bulk(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| "bulk length too large".to_string())?;
            if n > MAX_REPLY_BYTES {
                return Err(format!("bulk string of {n} bytes is too large"));
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            let body = buf[after..after + n].to_vec();
            let reply = if kind == b'!' {
                RespReply::Error(String::from_utf8_lossy(&body).into_owned())
            } else {
                RespReply::Bulk(Some(body))
            };
            (reply, after + n + 2)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int()?;
            if n < 0 {
                return Ok(Some((RespReply::Array(None), after)));
            }
            let count = if matches!(kind, b'%' | b'|') {
                n.saturating_mul(2)
            } else {
                n
            };
            let count = usize::try_from(count).map_err(|_| "array too large".to_string())?;
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..count {
                match parse(&buf[at..], depth + 1)? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // An attribute comes before the reply it describes: skip it.
                return Ok(parse(&buf[at..], depth + 1)?.map(|(r, used)| (r, at + used)));
            }
            let reply = match kind {
                b'>' => RespReply::Push(items),
                b'%' => {
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    RespReply::Map(pairs)
                }
                _ => RespReply::Array(Some(items)),
            };
            (reply, at)
        }
        other => return Err(format!("unknown reply type byte {:?}", other as char)),
    };
    Ok(Some(reply))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Appends `args` to `out` as one RESP command (an array of bulk strings), as a client sends it.
/// Nothing is allocated beyond `out`'s growth (load generators frame every message with it).
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    put_len_line(out, b'*', args.len());
    for a in args {
        put_len_line(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `{kind}{n}\r\n`.
fn put_len_line(out: &mut Vec<u8>, kind: u8, mut n: usize) {
    // Up to 20 digits (usize::MAX), written from the end.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_waits_for_more() {
        let all = b"*7\r\n+OK\r\n-ERR x\r\n:-3\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*1\r\n_\r\n";
        let (r, used) = parse(all, 0).unwrap().unwrap();
        assert_eq!(used, all.len());
        assert_eq!(
            r,
            RespReply::Array(Some(vec![
                RespReply::Simple("OK".into()),
                RespReply::Error("ERR x".into()),
                RespReply::Int(-3),
                RespReply::Bulk(Some(b"abc".to_vec())),
                RespReply::Bulk(None),
                RespReply::Array(None),
                RespReply::Array(Some(vec![RespReply::Null])),
            ]))
        );
        for cut in 0..all.len() {
            assert_eq!(parse(&all[..cut], 0).unwrap(), None, "cut at {cut}");
        }
        let push = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n";
        let (r, _) = parse(push, 0).unwrap().unwrap();
        assert_eq!(
            r.texts(),
            vec![Some("message".into()), Some("c".into()), Some("p".into())]
        );
        let map = b"%1\r\n+a\r\n:1\r\n";
        let (r, _) = parse(map, 0).unwrap().unwrap();
        assert_eq!(
            r,
            RespReply::Map(vec![(RespReply::Simple("a".into()), RespReply::Int(1))])
        );
    }

    #[test]
    fn rejects_garbage_and_deep_nesting() {
        assert!(parse(b"?x\r\n", 0).is_err());
        assert!(parse(b"$3\r\nabcXY", 0).is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes(), 0).is_err());
    }
}
