//! Hostile peers: the real `roomcast` crate on tokio against a fake "Redis" on 127.0.0.1 that
//! the test controls. The fake speaks enough RESP2/RESP3 to be a working pub/sub server
//! (handshake, PING, SUBSCRIBE, UNSUBSCRIBE, PUBLISH with fan-out, passwords), and on
//! command it lies: garbage, lengths of 2^63, aggregates nested thousands deep, unknown RESP3
//! types and attributes, pushes for channels nobody subscribed, silence, one byte at a time,
//! connections closed mid-frame, and refusals (`-NOAUTH`, `-WRONGPASS`, `-ERR unknown
//! command 'HELLO'`).
//!
//! For each: no panic, memory bounded (the core's input and output gauges), a typed event or
//! error naming the cause, the link re-established where that makes sense, and the other links
//! and rooms working throughout.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use roomcast::core::envelope::{self, MessageType};
use roomcast::core::{DropCause, LinkError, LinkId, Protocol};
use roomcast::{Builder, Config, Error, Event, EventStream, Membership, PubSubMessage, Roomcast};

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(30);

const ROOM: &str = "hub/abc";
const ROOM_CHANNEL: &[u8] = b"graphwiz:room:hub:abc";

// ----- the fake server -----

/// What the fake does on one connection, decided when the client names its link (`CLIENT
/// SETNAME roomcast-<n>` or `HELLO 3 ... SETNAME roomcast-<n>`).
#[derive(Clone, Debug, PartialEq)]
enum Act {
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
const ATTRIBUTE: &[u8] = b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n";

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

struct FakeRedis {
    port: u16,
    shared: Arc<Shared>,
}

impl FakeRedis {
    fn start(script: impl Fn(u16, u32) -> Act + Send + Sync + 'static) -> FakeRedis {
        Self::start_with(script, None, false)
    }

    fn start_with(
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

    fn url(&self) -> String {
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
    fn inject(&self, link: u16, bytes: &[u8]) {
        let w = self.writer_of(link).expect("the link is connected");
        let mut w = w.lock().unwrap();
        // The client may close the connection as soon as it sees the first bad byte.
        let _ = w.write_all(bytes);
        let _ = w.flush();
    }

    /// Writes `partial` and closes the link's connection.
    fn inject_and_close(&self, link: u16, partial: &[u8]) {
        let w = self.writer_of(link).expect("the link is connected");
        let mut w = w.lock().unwrap();
        let _ = w.write_all(partial);
        let _ = w.flush();
        let _ = w.shutdown(Shutdown::Both);
    }

    fn attempts(&self, link: u16) -> u32 {
        self.shared
            .attempts
            .lock()
            .unwrap()
            .get(&link)
            .copied()
            .unwrap_or(0)
    }

    fn set_password(&self, password: Option<&str>) {
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
fn pubsub_frame(resp3: bool, kind: &[u8], channel: &[u8], last: Result<&[u8], usize>) -> Vec<u8> {
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
                {
                    let mut conns = s.conns.lock().unwrap();
                    let c = conns.get_mut(&id).expect("conn");
                    c.authed = true;
                    c.resp3 = true;
                }
                handshake = name.map(|n| name_link(s, id, &n));
                b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n".to_vec()
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

// ----- the instance under test -----

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Subscriber link 0 and publish links 1 and 2; presence off (the fake has no scripts);
/// short timeouts so that faults show quickly.
fn config(fake: &FakeRedis, protocol: Protocol) -> Config {
    let mut c = Config::from_url(&fake.url()).expect("url");
    c.pool_size = 2;
    c.presence = false;
    c.connect_timeout = Duration::from_secs(2);
    c.reply_timeout = Duration::from_secs(3);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(300);
    c.server.protocol = protocol;
    c
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits for the first event that `pick` maps to something; returns it and everything seen.
async fn expect_event<T>(
    events: &mut EventStream,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> (T, Vec<Event>) {
    let mut seen = Vec::new();
    let end = Instant::now() + PATIENCE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(&e) {
                    return (t, seen);
                }
                seen.push(e);
            }
            Ok(None) => panic!("events ended while waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
        }
    }
}

/// An instance with one member in [`ROOM`], live, and its event stream.
struct Instance {
    rc: Roomcast,
    events: EventStream,
    alice: Membership,
    max_frame_bytes: usize,
    sent: u32,
}

impl Instance {
    async fn connect(config: Config) -> Instance {
        let max_frame_bytes = config.max_frame_bytes;
        let rc = within("connect", Builder::new(config).connect_tokio())
            .await
            .expect("connects to the fake");
        Self::with(rc, max_frame_bytes).await
    }

    async fn with(rc: Roomcast, max_frame_bytes: usize) -> Instance {
        let events = rc.events().await.expect("events");
        let alice = rc.join(ROOM, "alice").await.expect("join");
        within("room live", alice.wait_live()).await;
        let mut i = Instance {
            rc,
            events,
            alice,
            max_frame_bytes,
            sent: 0,
        };
        i.round_trip().await;
        i
    }

    /// Publishes through the fake and waits for the member to receive it: the rooms work.
    /// Publishing while a link recovers may fail (the outcome is unknown); it retries.
    async fn round_trip(&mut self) {
        let end = Instant::now() + PATIENCE;
        loop {
            self.sent += 1;
            let text = format!("message {}", self.sent);
            let sent = self
                .rc
                .publish(PubSubMessage::broadcast(ROOM, text.clone()))
                .await;
            if sent.is_ok() {
                let got = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(m) = self.alice.next().await {
                        if m.data == text.as_bytes() {
                            return true;
                        }
                    }
                    false
                })
                .await;
                if got == Ok(true) {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "the room does not work: last publish {sent:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The core held no more than a frame's worth of input per link.
    async fn assert_bounded(&self) {
        let m = self.rc.metrics().await.expect("metrics");
        assert!(
            m.buffered_input <= 3 * (self.max_frame_bytes + 2),
            "input buffered: {}",
            m.buffered_input
        );
        assert!(
            m.buffered_output < 1 << 20,
            "output buffered: {}",
            m.buffered_output
        );
    }

    /// Waits for `link` to go down with a cause `check` accepts and come back; no other link
    /// may go down meanwhile. Then the room must work again.
    async fn expect_recovery(
        &mut self,
        link: u16,
        check: impl Fn(&LinkError) -> bool,
    ) -> LinkError {
        let link = LinkId(link);
        let (cause, before) = expect_event(&mut self.events, "LinkDown", |e| match e {
            Event::LinkDown { link: l, cause, .. } if *l == link => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert!(
            check(&cause),
            "{link} went down for another reason: {cause:?}"
        );
        let (_, during) = expect_event(&mut self.events, "LinkUp", |e| match e {
            Event::LinkUp { link: l, .. } if *l == link => Some(()),
            _ => None,
        })
        .await;
        for e in before.iter().chain(&during) {
            assert!(
                !matches!(e, Event::LinkDown { .. }),
                "another link went down: {e:?}"
            );
        }
        self.assert_bounded().await;
        within("room live again", self.alice.wait_live()).await;
        self.round_trip().await;
        cause
    }
}

fn protocol_error(needle: &'static str) -> impl Fn(&LinkError) -> bool {
    move |e| match e {
        LinkError::Protocol(text) => text.contains(needle),
        _ => false,
    }
}

/// Injects `bytes` on `link` after the handshake and expects a typed protocol error naming
/// `needle`, recovery, and working rooms; on each protocol, on the subscriber and a
/// publisher.
fn survives(bytes: &[u8], needle: &'static str) {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let fake = FakeRedis::start(|_, _| Act::Normal);
        runtime().block_on(async {
            let mut i = Instance::connect(config(&fake, protocol)).await;
            for link in [0u16, 1] {
                fake.inject(link, bytes);
                let cause = i.expect_recovery(link, protocol_error(needle)).await;
                assert!(
                    cause.to_string().contains("the link was reopened"),
                    "{cause}"
                );
            }
            assert!(fake.attempts(0) >= 2 && fake.attempts(1) >= 2);
            let m = i.rc.metrics().await.unwrap();
            assert_eq!(m.link_failures, 2, "{m:?}");
        });
    }
}

// ----- the tests -----

#[test]
fn garbage_is_a_protocol_error_and_the_link_comes_back() {
    survives(
        b"this is not RESP at all\r\n",
        "unknown RESP type byte 0x74",
    );
}

#[test]
fn a_line_without_end_is_refused_at_64_kib() {
    let mut flood = b"+".to_vec();
    flood.extend(std::iter::repeat_n(b'x', 1 << 20));
    survives(&flood, "longer than 64 KiB");
}

#[test]
fn a_bulk_length_of_2_pow_63_is_refused_at_once() {
    // 2^63 - 1 is the largest i64: over max_frame_bytes. The data never has to arrive.
    survives(b"$9223372036854775807\r\n", "over max_frame_bytes");
    // 2^63 itself is no i64 at all.
    survives(b"$9223372036854775808\r\nxyz", "bad length");
}

#[test]
fn an_array_length_of_2_pow_63_is_refused_at_once() {
    survives(b"*9223372036854775807\r\n", "over max_frame_elements");
    survives(b"*1\r\n*9223372036854775808\r\n", "bad length");
}

#[test]
fn aggregates_nested_thousands_deep_are_refused_without_recursion() {
    survives("*1\r\n".repeat(10_000).as_bytes(), "max_frame_depth");
    survives(">1\r\n%1\r\n".repeat(5_000).as_bytes(), "max_frame_depth");
}

#[test]
fn unknown_resp3_types_are_protocol_errors() {
    survives(b"@3\r\nabc\r\n", "unknown RESP type byte 0x40");
    // A streamed string (RESP3 `$?`) is not something Redis sends to roomcast.
    survives(b"$?\r\n;3\r\nabc\r\n;0\r\n", "not valid RESP");
    survives(b"?\r\n", "streamed RESP3 frames are not supported");
}

fn message_payload(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    envelope::encode(
        &mut out,
        ROOM,
        MessageType::Broadcast,
        text.as_bytes(),
        None,
        1,
        None,
    );
    out
}

#[test]
fn resp3_attributes_and_unknown_pushes_are_ignored() {
    let fake = FakeRedis::start(|_, _| Act::Normal);
    runtime().block_on(async {
        let mut i = Instance::connect(config(&fake, Protocol::Resp3)).await;
        // A push of a kind roomcast does not use (client tracking) and a message push
        // annotated with an attribute: the attribute is ignored, the message delivered.
        let mut bytes = b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec();
        bytes.extend_from_slice(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n");
        bytes.extend(pubsub_frame(
            true,
            b"message",
            ROOM_CHANNEL,
            Ok(&message_payload("annotated")),
        ));
        fake.inject(0, &bytes);
        let m = within("annotated message", i.alice.next())
            .await
            .expect("a message");
        assert_eq!(&m.data[..], b"annotated");
        i.round_trip().await;
        let m = i.rc.metrics().await.unwrap();
        assert_eq!(m.link_failures, 0);
    });
    // A server that annotates every reply and push, from the handshake on.
    let fake = FakeRedis::start(|_, _| Act::Annotated);
    runtime().block_on(async {
        let mut i = Instance::connect(config(&fake, Protocol::Resp3)).await;
        for _ in 0..3 {
            i.round_trip().await;
        }
        assert!(i.rc.health_check(PATIENCE).await.is_ok());
        assert_eq!(i.rc.metrics().await.unwrap().link_failures, 0);
    });
}

#[test]
fn a_push_for_a_channel_nobody_subscribed_is_dropped_and_counted() {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let resp3 = protocol == Protocol::Resp3;
        let fake = FakeRedis::start(|_, _| Act::Normal);
        runtime().block_on(async {
            let mut i = Instance::connect(config(&fake, protocol)).await;
            let mut bytes = Vec::new();
            // A room of ours that this instance has no member in, a channel of another
            // application, a room channel that is not canonical, and our room with garbage.
            for channel in [
                &b"graphwiz:room:nobody"[..],
                b"another-app:chat",
                b"graphwiz:room:a%3ab",
            ] {
                bytes.extend(pubsub_frame(
                    resp3,
                    b"message",
                    channel,
                    Ok(&message_payload("x")),
                ));
            }
            bytes.extend(pubsub_frame(
                resp3,
                b"message",
                ROOM_CHANNEL,
                Ok(b"\xff\xff garbage"),
            ));
            fake.inject(0, &bytes);
            let (cause, _) = expect_event(&mut i.events, "Dropped(Malformed)", |e| match e {
                Event::Dropped {
                    cause: DropCause::Malformed(why),
                    room,
                } => Some((why.clone(), room.clone())),
                _ => None,
            })
            .await;
            assert_eq!(cause.1.as_ref().map(|r| r.as_str()), Some(ROOM));
            i.round_trip().await;
            let m = i.rc.metrics().await.unwrap();
            assert_eq!(m.dropped_unknown_channel, 3, "{m:?}");
            assert_eq!(m.dropped_malformed, 1);
            assert_eq!(m.link_failures, 0, "nothing here breaks the link");
        });
    }
}

#[test]
fn a_server_that_never_answers_the_handshake_times_out() {
    // Every attempt of the subscriber is met with silence: connecting fails with a typed
    // error that names the setting.
    let fake = FakeRedis::start(|link, _| if link == 0 { Act::Silent } else { Act::Normal });
    runtime().block_on(async {
        let started = Instant::now();
        let err = within(
            "connect fails",
            Builder::new(config(&fake, Protocol::Resp2)).connect_tokio(),
        )
        .await
        .expect_err("no handshake, no instance");
        assert_eq!(err, Error::Connect(LinkError::ConnectTimeout));
        assert!(err.to_string().contains("connect_timeout"), "{err}");
        assert!(started.elapsed() < PATIENCE);
    });
    // Silence on the first attempt of a publish link only: it is retried and comes up.
    let fake = FakeRedis::start(|link, n| {
        if link == 2 && n == 0 {
            Act::Silent
        } else {
            Act::Normal
        }
    });
    runtime().block_on(async {
        let (rc, driver) = Builder::new(config(&fake, Protocol::Resp3))
            .build(Arc::new(roomcast::runtime::tokio::TokioRuntime))
            .unwrap();
        tokio::spawn(driver);
        let mut events = rc.events().await.unwrap();
        let (cause, _) = expect_event(&mut events, "LinkDown", |e| match e {
            Event::LinkDown { link, cause, .. } if *link == LinkId(2) => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert_eq!(cause, LinkError::ConnectTimeout);
        within("ready after retry", rc.wait_ready()).await.unwrap();
        assert_eq!(fake.attempts(2), 2);
        Instance::with(rc, Config::default().max_frame_bytes).await;
    });
}

#[test]
fn a_server_that_answers_one_byte_at_a_time_works() {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let fake = FakeRedis::start(|_, _| Act::Dribble);
        runtime().block_on(async {
            let mut i = Instance::connect(config(&fake, protocol)).await;
            for _ in 0..3 {
                i.round_trip().await;
            }
            i.assert_bounded().await;
            let m = i.rc.metrics().await.unwrap();
            assert_eq!(m.link_failures, 0);
            assert!(i.rc.health_check(PATIENCE).await.is_ok());
        });
    }
}

#[test]
fn a_connection_closed_mid_frame_is_reopened() {
    // During the handshake: the first attempt of link 1 gets "+O" and a close.
    let fake = FakeRedis::start(|link, n| {
        if link == 1 && n == 0 {
            Act::CloseMidFrame
        } else {
            Act::Normal
        }
    });
    runtime().block_on(async {
        let (rc, driver) = Builder::new(config(&fake, Protocol::Resp2))
            .build(Arc::new(roomcast::runtime::tokio::TokioRuntime))
            .unwrap();
        tokio::spawn(driver);
        let mut events = rc.events().await.unwrap();
        let (cause, _) = expect_event(&mut events, "LinkDown", |e| match e {
            Event::LinkDown { link, cause, .. } if *link == LinkId(1) => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert!(
            matches!(&cause, LinkError::Io(why) if why.contains("closed")),
            "{cause:?}"
        );
        within("ready after retry", rc.wait_ready()).await.unwrap();
        let mut i = Instance::with(rc, Config::default().max_frame_bytes).await;
        // In the middle of a message to the subscriber.
        let frame = pubsub_frame(false, b"message", ROOM_CHANNEL, Ok(&message_payload("cut")));
        fake.inject_and_close(0, &frame[..frame.len() - 7]);
        let cause = i
            .expect_recovery(0, |e| matches!(e, LinkError::Io(_)))
            .await;
        assert!(cause.to_string().contains("closed"), "{cause}");
        // And on a publish link.
        fake.inject_and_close(1, b"$5\r\nhel");
        i.expect_recovery(1, |e| matches!(e, LinkError::Io(_)))
            .await;
    });
}

#[test]
fn refusals_in_the_handshake_are_typed_errors() {
    runtime().block_on(async {
        // No password, the server wants one.
        let fake = FakeRedis::start_with(|_, _| Act::Normal, Some("s3cret"), false);
        let err = within("NOAUTH", Builder::new(config(&fake, Protocol::Resp2)).connect_tokio())
            .await
            .expect_err("refused");
        assert!(matches!(&err, Error::Connect(LinkError::Auth(t)) if t.starts_with("NOAUTH")), "{err:?}");
        assert!(err.to_string().contains("check the user and password"), "{err}");

        // A wrong password, in both protocols.
        for protocol in [Protocol::Resp2, Protocol::Resp3] {
            let mut c = config(&fake, protocol);
            c.server.password = Some(roomcast::core::Secret::new("wrong"));
            let err = within("WRONGPASS", Builder::new(c).connect_tokio())
                .await
                .expect_err("refused");
            assert!(
                matches!(&err, Error::Connect(LinkError::Auth(t)) if t.starts_with("WRONGPASS")),
                "{protocol:?}: {err:?}"
            );
        }

        // RESP3 asked of a server without HELLO.
        let old = FakeRedis::start_with(|_, _| Act::Normal, None, true);
        let err = within("no HELLO", Builder::new(config(&old, Protocol::Resp3)).connect_tokio())
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, Error::Connect(LinkError::NoResp3(t)) if t.contains("unknown command 'HELLO'")),
            "{err:?}"
        );
        assert!(err.to_string().contains("protocol=resp2"), "{err}");
        // RESP2 works with that server.
        Instance::connect(config(&old, Protocol::Resp2)).await;

        // A handshake refused with an error Redis does not send: still typed.
        let odd = FakeRedis::start(|link, n| {
            if link == 0 && n == 0 {
                Act::HandshakeReply(b"-ERR something else entirely\r\n".to_vec())
            } else {
                Act::Normal
            }
        });
        let err = within("odd refusal", Builder::new(config(&odd, Protocol::Resp2)).connect_tokio())
            .await
            .expect_err("refused");
        assert_eq!(
            err,
            Error::Connect(LinkError::Handshake("ERR something else entirely".into()))
        );
    });
}

#[test]
fn links_come_back_once_the_password_is_right() {
    let fake = FakeRedis::start_with(|_, _| Act::Normal, Some("new"), false);
    runtime().block_on(async {
        let mut c = config(&fake, Protocol::Resp2);
        c.server.password = Some(roomcast::core::Secret::new("old"));
        let (rc, driver) = Builder::new(c)
            .build(Arc::new(roomcast::runtime::tokio::TokioRuntime))
            .unwrap();
        tokio::spawn(driver);
        let mut events = rc.events().await.unwrap();
        let (cause, _) = expect_event(&mut events, "LinkDown", |e| match e {
            Event::LinkDown { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .await;
        assert!(matches!(cause, LinkError::Auth(_)), "{cause:?}");
        // The operator fixes the server: the backoff retries find it.
        fake.set_password(Some("old"));
        within("links ready", async {
            while rc.metrics().await.unwrap().links_ready < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Instance::with(rc, Config::default().max_frame_bytes).await;
    });
}
