//! The fake "Redis" of the hostile-server tests: a std-only TCP server on 127.0.0.1 that
//! speaks enough RESP2/RESP3 to be a working pub/sub server, and lies when told to.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake does on one connection, decided when the client names its link (`CLIENT
/// SETNAME roomcast-<n>` or `HELLO 3 ... SETNAME roomcast-<n>`).
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// Like Redis.
    Normal,
    /// Reads everything, answers nothing, keeps the connection open.
    Silent,
    /// Answers the handshake with these bytes instead, then like Redis.
    HandshakeReply(Vec<u8>),
    /// Like Redis, one byte per write.
    Dribble,
    /// Writes half of the handshake reply and closes.
    CloseMidFrame,
    /// Like Redis (RESP3), with an attribute in front of every reply and push.
    Annotated,
}

/// A RESP3 attribute, which clients must skip.
pub const ATTRIBUTE: &[u8] = b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n";

/// Decides the act from (link, how many times this link connected before).
type Script = dyn Fn(u16, u32) -> Act + Send + Sync;

struct Conn {
    link: Option<u16>,
    writer: Arc<Mutex<TcpStream>>,
    resp3: bool,
    act: Act,
    authed: bool,
    subs: BTreeSet<Vec<u8>>,
}

struct Shared {
    conns: Mutex<HashMap<u64, Conn>>,
    attempts: Mutex<HashMap<u16, u32>>,
    script: Box<Script>,
    password: Mutex<Option<String>>,
    hello_unknown: bool,
    stop: AtomicBool,
    next_id: AtomicU64,
}

pub struct FakeRedis {
    port: u16,
    shared: Arc<Shared>,
}

impl FakeRedis {
    pub fn start(script: impl Fn(u16, u32) -> Act + Send + Sync + 'static) -> FakeRedis {
        Self::start_with(script, None, false)
    }

    pub fn start_with(
        script: impl Fn(u16, u32) -> Act + Send + Sync + 'static,
        password: Option<&str>,
        hello_unknown: bool,
    ) -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared {
            conns: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            script: Box::new(script),
            password: Mutex::new(password.map(str::to_string)),
            hello_unknown,
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                std::thread::spawn(move || serve(&s, stream));
            }
        });
        FakeRedis { port, shared }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The newest connection of a link.
    fn writer_of(&self, link: u16) -> Option<Arc<Mutex<TcpStream>>> {
        let conns = self.shared.conns.lock().unwrap();
        conns
            .iter()
            .filter(|(_, c)| c.link == Some(link))
            .max_by_key(|(id, _)| **id)
            .map(|(_, c)| c.writer.clone())
    }

    /// Writes raw bytes to a link's connection, as if Redis sent them.
    pub fn inject(&self, link: u16, bytes: &[u8]) {
        let w = self.writer_of(link).expect("the link is connected");
        let mut w = w.lock().unwrap();
        // The client may close the connection as soon as it sees the first bad byte.
        let _ = w.write_all(bytes);
        let _ = w.flush();
    }

    /// Writes `partial` and closes the link's connection.
    pub fn inject_and_close(&self, link: u16, partial: &[u8]) {
        let w = self.writer_of(link).expect("the link is connected");
        let mut w = w.lock().unwrap();
        let _ = w.write_all(partial);
        let _ = w.flush();
        let _ = w.shutdown(Shutdown::Both);
    }

    pub fn attempts(&self, link: u16) -> u32 {
        self.shared
            .attempts
            .lock()
            .unwrap()
            .get(&link)
            .copied()
            .unwrap_or(0)
    }

    pub fn set_password(&self, password: Option<&str>) {
        *self.shared.password.lock().unwrap() = password.map(str::to_string);
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().unwrap().values() {
            let _ = c.writer.lock().unwrap().shutdown(Shutdown::Both);
        }
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one command (an array of bulk strings, as roomcast writes them).
fn read_command(r: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = Vec::new();
    let header = |r: &mut dyn BufRead, line: &mut Vec<u8>, ty: u8| -> Option<usize> {
        line.clear();
        r.read_until(b'\n', line).ok()?;
        let text = std::str::from_utf8(line.strip_prefix(&[ty])?).ok()?;
        text.trim_end().parse().ok()
    };
    let n = header(r, &mut line, b'*')?;
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = header(r, &mut line, b'$')?;
        let mut arg = vec![0u8; len + 2];
        r.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A pub/sub frame: `*3` in RESP2, a `>3` push in RESP3.
pub fn pubsub_frame(
    resp3: bool,
    kind: &[u8],
    channel: &[u8],
    last: Result<&[u8], usize>,
) -> Vec<u8> {
    let mut out = if resp3 {
        b">3\r\n".to_vec()
    } else {
        b"*3\r\n".to_vec()
    };
    bulk(&mut out, kind);
    bulk(&mut out, channel);
    match last {
        Ok(payload) => bulk(&mut out, payload),
        Err(count) => out.extend_from_slice(format!(":{count}\r\n").as_bytes()),
    }
    out
}

fn write_to(writer: &Mutex<TcpStream>, act: &Act, bytes: &[u8]) {
    let mut w = writer.lock().unwrap();
    if *act == Act::Annotated {
        let _ = w.write_all(ATTRIBUTE);
    }
    if *act == Act::Dribble {
        for b in bytes {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            let _ = w.flush();
            std::thread::sleep(Duration::from_micros(300));
        }
    } else {
        let _ = w.write_all(bytes);
    }
}

fn serve(s: &Shared, stream: TcpStream) {
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    let writer = Arc::new(Mutex::new(stream.try_clone().expect("clone stream")));
    let authed = s.password.lock().unwrap().is_none();
    s.conns.lock().unwrap().insert(
        id,
        Conn {
            link: None,
            writer: writer.clone(),
            resp3: false,
            act: Act::Normal,
            authed,
            subs: BTreeSet::new(),
        },
    );
    let mut reader = BufReader::new(stream);
    while let Some(args) = read_command(&mut reader) {
        if s.stop.load(Ordering::SeqCst) || !handle(s, id, &writer, &args) {
            break;
        }
    }
    s.conns.lock().unwrap().remove(&id);
}

/// Names the connection's link and decides its act; returns the act.
fn name_link(s: &Shared, id: u64, name: &[u8]) -> Act {
    let link = std::str::from_utf8(name)
        .ok()
        .and_then(|n| n.strip_prefix("roomcast-"))
        .and_then(|n| n.parse::<u16>().ok());
    let Some(link) = link else { return Act::Normal };
    let attempt = {
        let mut a = s.attempts.lock().unwrap();
        let n = a.entry(link).or_insert(0);
        *n += 1;
        *n - 1
    };
    let act = (s.script)(link, attempt);
    if let Some(c) = s.conns.lock().unwrap().get_mut(&id) {
        c.link = Some(link);
        c.act = act.clone();
    }
    act
}

/// Answers one command; false closes the connection.
fn handle(s: &Shared, id: u64, writer: &Mutex<TcpStream>, args: &[Vec<u8>]) -> bool {
    let upper = |i: usize| {
        args.get(i)
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default()
    };
    let cmd = upper(0);
    let (act, resp3, authed) = {
        let conns = s.conns.lock().unwrap();
        let c = &conns[&id];
        (c.act.clone(), c.resp3, c.authed)
    };
    let password = s.password.lock().unwrap().clone();
    let mut handshake = None;
    let reply: Vec<u8> = match (cmd.as_slice(), act.clone()) {
        (_, Act::Silent) => return true,
        (b"AUTH", _) => {
            if password.as_deref().map(str::as_bytes) == args.last().map(Vec::as_slice) {
                s.conns.lock().unwrap().get_mut(&id).expect("conn").authed = true;
                b"+OK\r\n".to_vec()
            } else {
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec()
            }
        }
        (b"HELLO", _) if s.hello_unknown => {
            b"-ERR unknown command 'HELLO', with args beginning with: '3' \r\n".to_vec()
        }
        (b"HELLO", _) => {
            let mut ok = authed;
            let mut name = None;
            let mut i = 2;
            while i < args.len() {
                match upper(i).as_slice() {
                    b"AUTH" => {
                        ok = password.as_deref().map(str::as_bytes)
                            == args.get(i + 2).map(Vec::as_slice);
                        i += 3;
                    }
                    b"SETNAME" => {
                        name = args.get(i + 1).cloned();
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
            if !ok && !args.iter().any(|a| a.eq_ignore_ascii_case(b"AUTH")) {
                b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n".to_vec()
            } else if !ok {
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec()
            } else {
                // `HELLO 2` (the RESP2 handshake asks it for the server's mode) keeps RESP2.
                let three = args.get(1).map(Vec::as_slice) == Some(b"3");
                {
                    let mut conns = s.conns.lock().unwrap();
                    let c = conns.get_mut(&id).expect("conn");
                    c.authed = true;
                    c.resp3 = c.resp3 || three;
                }
                handshake = name.map(|n| name_link(s, id, &n));
                if three {
                    b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n".to_vec()
                } else {
                    b"*6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n".to_vec()
                }
            }
        }
        _ if !authed => b"-NOAUTH Authentication required.\r\n".to_vec(),
        (b"CLIENT", _) if upper(1) == b"SETNAME" => {
            handshake = args.get(2).map(|n| name_link(s, id, n));
            b"+OK\r\n".to_vec()
        }
        (b"PING", _) => {
            let subscribed = !s.conns.lock().unwrap()[&id].subs.is_empty();
            if subscribed && !resp3 {
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec()
            } else {
                b"+PONG\r\n".to_vec()
            }
        }
        (b"SUBSCRIBE" | b"UNSUBSCRIBE", _) => {
            let mut out = Vec::new();
            let mut conns = s.conns.lock().unwrap();
            let c = conns.get_mut(&id).expect("conn");
            for ch in &args[1..] {
                let kind: &[u8] = if cmd == b"SUBSCRIBE" {
                    c.subs.insert(ch.clone());
                    b"subscribe"
                } else {
                    c.subs.remove(ch);
                    b"unsubscribe"
                };
                out.extend(pubsub_frame(resp3, kind, ch, Err(c.subs.len())));
            }
            out
        }
        (b"PUBLISH", _) if args.len() == 3 => {
            let targets: Vec<(Arc<Mutex<TcpStream>>, bool, Act)> = s
                .conns
                .lock()
                .unwrap()
                .values()
                .filter(|c| c.subs.contains(&args[1]))
                .map(|c| (c.writer.clone(), c.resp3, c.act.clone()))
                .collect();
            for (w, r3, act) in &targets {
                write_to(
                    w,
                    act,
                    &pubsub_frame(*r3, b"message", &args[1], Ok(&args[2])),
                );
            }
            format!(":{}\r\n", targets.len()).into_bytes()
        }
        _ => format!(
            "-ERR unknown command '{}'\r\n",
            String::from_utf8_lossy(&args[0])
        )
        .into_bytes(),
    };
    match handshake {
        Some(Act::Silent) => true,
        Some(Act::HandshakeReply(bytes)) => {
            write_to(writer, &Act::Normal, &bytes);
            true
        }
        Some(Act::CloseMidFrame) => {
            write_to(writer, &Act::Normal, &reply[..reply.len() / 2]);
            let _ = writer.lock().unwrap().shutdown(Shutdown::Both);
            false
        }
        Some(act) => {
            write_to(writer, &act, &reply);
            true
        }
        None => {
            write_to(writer, &act, &reply);
            true
        }
    }
}
