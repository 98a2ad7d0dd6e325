//! The floor of S1's loop: a client that does only what every client must for it — frame
//! `PUBLISH` commands and write them, read their replies, find each `message` push's payload
//! — on the same tokio runtime as the others, and nothing else (no routing, numbering,
//! queues or tasks of its own beyond one per connection). Its CPU per message is the least a
//! client can spend on the same work on this machine; the distance of roomcast and the peers
//! above it is their own cost.
//!
//! One server only (no cluster), RESP2, no reconnection: a broken connection ends the run.

use std::collections::VecDeque;

use bytes::Bytes;
use roomcast::redis_server::encode_command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Bytes read from a socket at a time (and the subscriber's buffer when no frame is larger).
const READ_CHUNK: usize = 64 * 1024;

/// A pipeline handed to the publishing connection's task.
struct Batch {
    bytes: Vec<u8>,
    commands: usize,
    /// The last reply's integer, or the first error.
    done: oneshot::Sender<Result<i64, String>>,
}

/// The publishing connection: cheap to clone (every clone feeds the same task).
#[derive(Clone)]
pub struct RawPub {
    tx: mpsc::UnboundedSender<Batch>,
}

impl RawPub {
    /// Connects to `host:port` and starts the connection's task on the current runtime.
    pub async fn connect(host: &str, port: u16) -> Result<RawPub, String> {
        let s = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("raw: connect to {host}:{port}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_pub(s, rx));
        Ok(RawPub { tx })
    }

    /// Publishes every (channel, payload) as one pipeline and waits for all the replies;
    /// the last reply's integer (the receivers of the last message).
    pub async fn pipeline(&self, batch: &[(String, Bytes)]) -> Result<i64, String> {
        let mut bytes = Vec::with_capacity(
            batch
                .iter()
                .map(|(c, d)| c.len() + d.len() + 48)
                .sum::<usize>(),
        );
        for (ch, data) in batch {
            encode_command(&mut bytes, &[b"PUBLISH", ch.as_bytes(), data]);
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Batch {
                bytes,
                commands: batch.len(),
                done,
            })
            .map_err(|_| "raw: the connection is closed".to_string())?;
        answer
            .await
            .map_err(|_| "raw: the connection is closed".to_string())?
    }
}

/// Writes each batch as it comes and answers it once all its replies are read. Replies to
/// `PUBLISH` are one line each (an integer, or an error).
async fn run_pub(s: TcpStream, mut rx: mpsc::UnboundedReceiver<Batch>) {
    let (mut rd, mut wr) = s.into_split();
    let mut waiting: VecDeque<(usize, Result<i64, String>, oneshot::Sender<_>)> = VecDeque::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut line: Vec<u8> = Vec::new();
    let failed = |waiting: &mut VecDeque<(usize, Result<i64, String>, oneshot::Sender<_>)>,
                  why: String| {
        for (_, _, done) in waiting.drain(..) {
            let _ = done.send(Err(why.clone()));
        }
    };
    loop {
        tokio::select! {
            b = rx.recv() => {
                let Some(b) = b else { return };
                if let Err(e) = wr.write_all(&b.bytes).await {
                    let _ = b.done.send(Err(format!("raw: write: {e}")));
                    failed(&mut waiting, format!("raw: write: {e}"));
                    return;
                }
                waiting.push_back((b.commands, Ok(0), b.done));
            }
            n = rd.read(&mut buf) => {
                let n = match n {
                    Ok(0) => {
                        failed(&mut waiting, "raw: the server closed the connection".into());
                        return;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        failed(&mut waiting, format!("raw: read: {e}"));
                        return;
                    }
                };
                for &b in &buf[..n] {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    let reply = parse_reply(&line);
                    line.clear();
                    let Some(front) = waiting.front_mut() else {
                        return; // a reply to nothing: the run's tally will show it
                    };
                    front.0 -= 1;
                    if front.1.is_ok() {
                        front.1 = reply;
                    }
                    if front.0 == 0 {
                        if let Some((_, result, done)) = waiting.pop_front() {
                            let _ = done.send(result);
                        }
                    }
                }
            }
        }
    }
}

/// One reply line without its `\n`: `:n\r` or `-error\r`.
fn parse_reply(line: &[u8]) -> Result<i64, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.split_first() {
        Some((b':', digits)) => std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("raw: bad integer reply {:?}", String::from_utf8_lossy(line))),
        _ => Err(format!(
            "raw: the server answered {:?}",
            String::from_utf8_lossy(line)
        )),
    }
}

/// A push at the start of `buf` (an array of bulk strings and integers): the bytes it takes
/// and what it is (a message with its payload, the last element, as a range); `None` if it
/// is not complete yet, `Err` if it is not RESP2 this client understands.
pub fn parse_push(buf: &[u8]) -> Result<Option<(usize, Push)>, String> {
    let Some((n, mut at)) = header(buf, 0, b'*')? else {
        return Ok(None);
    };
    let mut kind = Push::Other;
    let mut last = 0..0;
    for i in 0..n {
        if buf.get(at) == Some(&b':') {
            // An integer (a subscription's count): one line.
            let Some((_, next)) = header(buf, at, b':')? else {
                return Ok(None);
            };
            at = next;
            continue;
        }
        let Some((len, start)) = header(buf, at, b'$')? else {
            return Ok(None);
        };
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if i == 0 {
            kind = match &buf[start..end] {
                b"message" => Push::Message(0..0),
                b"subscribe" => Push::Subscribed,
                _ => Push::Other,
            };
        }
        last = start..end;
        at = end + 2;
    }
    if let Push::Message(r) = &mut kind {
        *r = last;
    }
    Ok(Some((at, kind)))
}

/// What a push was.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// A message; its payload's range in the buffer.
    Message(std::ops::Range<usize>),
    /// A subscription confirmed.
    Subscribed,
    /// Anything else.
    Other,
}

/// `<tag><decimal>\r\n` at `at`: (the number, where what follows starts).
fn header(buf: &[u8], at: usize, tag: u8) -> Result<Option<(usize, usize)>, String> {
    let Some(&first) = buf.get(at) else {
        return Ok(None);
    };
    if first != tag {
        return Err(format!(
            "raw: expected {:?} at a push's element, got {:?}",
            tag as char, first as char
        ));
    }
    let mut n = 0usize;
    let mut i = at + 1;
    while let Some(&b) = buf.get(i) {
        match b {
            b'0'..=b'9' => n = n * 10 + (b - b'0') as usize,
            b'\r' => {
                return Ok((buf.len() > i + 1).then_some((n, i + 2)));
            }
            _ => return Err(format!("raw: bad length byte {:?}", b as char)),
        }
        i += 1;
    }
    Ok(None)
}

/// A subscriber connection: subscribed to every channel (confirmed), with what it already
/// read after the confirmations.
pub struct RawSub {
    s: TcpStream,
    buf: Vec<u8>,
    len: usize,
}

impl RawSub {
    /// Connects and subscribes `channels` (pipelined, `chunk` per `SUBSCRIBE`), waiting until
    /// every subscription is confirmed.
    pub async fn subscribe(
        host: &str,
        port: u16,
        channels: &[String],
        chunk: usize,
    ) -> Result<RawSub, String> {
        let mut s = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("raw: connect to {host}:{port}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for group in channels.chunks(chunk.max(1)) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(group.iter().map(|c| c.as_bytes()));
            encode_command(&mut out, &args);
        }
        s.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut sub = RawSub {
            s,
            buf: vec![0; READ_CHUNK],
            len: 0,
        };
        let mut confirmed = 0;
        while confirmed < channels.len() {
            sub.read_more().await?;
            sub.take_pushes(|p, _| {
                if *p == Push::Subscribed {
                    confirmed += 1;
                }
            })?;
        }
        Ok(sub)
    }

    /// Hands every message's payload to `on_message` until the connection ends.
    pub async fn run(mut self, mut on_message: impl FnMut(&[u8])) -> Result<(), String> {
        loop {
            self.read_more().await?;
            self.take_pushes(|p, payload| {
                if matches!(p, Push::Message(_)) {
                    on_message(payload);
                }
            })?;
        }
    }

    async fn read_more(&mut self) -> Result<(), String> {
        if self.len == self.buf.len() {
            // A frame larger than the buffer: make room for the rest.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.s.read(&mut self.buf[self.len..]).await {
            Ok(0) => Err("raw: the server closed the connection".into()),
            Ok(n) => {
                self.len += n;
                Ok(())
            }
            Err(e) => Err(format!("raw: read: {e}")),
        }
    }

    /// Every complete push in the buffer, with a message's payload; then the unparsed tail
    /// moves to the front.
    fn take_pushes(&mut self, mut each: impl FnMut(&Push, &[u8])) -> Result<(), String> {
        let mut at = 0;
        while let Some((used, p)) = parse_push(&self.buf[at..self.len])? {
            let payload = match &p {
                Push::Message(r) => &self.buf[at + r.start..at + r.end],
                _ => &[][..],
            };
            each(&p, payload);
            at += used;
        }
        self.buf.copy_within(at..self.len, 0);
        self.len -= at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_parse_whole_or_not_at_all() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse_push(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let (used, p) = parse_push(msg).unwrap().unwrap();
        assert_eq!(used, msg.len());
        let Push::Message(r) = p else {
            panic!("not a message: {p:?}")
        };
        assert_eq!(&msg[r], b"hello");
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        for cut in 0..sub.len() {
            assert_eq!(parse_push(&sub[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_push(sub), Ok(Some((sub.len(), Push::Subscribed))));
        assert!(parse_push(b"+OK\r\n").is_err());
    }

    #[test]
    fn publish_is_framed_as_resp() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"ch", b"0123456789"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$10\r\n0123456789\r\n"
        );
        assert_eq!(parse_reply(b":12\r"), Ok(12));
        assert!(parse_reply(b"-ERR no\r").is_err());
    }
}
