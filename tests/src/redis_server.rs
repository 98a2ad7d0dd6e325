//! A private `redis-server` on a free loopback port, and a tiny blocking RESP client.
//!
//! Every test starts its own server, so tests run in parallel and never touch a system
//! Redis on 6379. Only the standard library is used: no runtime, no client crate.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING (a loaded 2-core machine stalls).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`RespClient`] waits for a reply unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many free ports are tried when the server fails to bind the one picked.
const PORT_ATTEMPTS: usize = 10;

/// Deepest reply nesting the client accepts.
const MAX_DEPTH: usize = 64;

/// Largest reply the client buffers (bulk strings of tests are small).
const MAX_REPLY_BYTES: usize = 256 << 20;

const MISSING_HINT: &str = "redis-server was not found on PATH: run `bash scripts/test.sh` \
     (it installs it) or `apt-get install -y redis-server redis-tools`";

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// Why a server could not be started (or restarted).
#[derive(Debug)]
pub enum HarnessError {
    /// The `redis-server` binary is not installed.
    Missing(String),
    /// The server exited or did not answer in time; the message includes its log's tail.
    Start(String),
    /// Creating the work directory, spawning or talking to the server failed.
    Io(io::Error),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Missing(m) | HarnessError::Start(m) => f.write_str(m),
            HarnessError::Io(e) => write!(f, "redis test harness: {e}"),
        }
    }
}

impl std::error::Error for HarnessError {}

impl From<io::Error> for HarnessError {
    fn from(e: io::Error) -> Self {
        HarnessError::Io(e)
    }
}

/// A `redis-server` process owned by a test: bound to 127.0.0.1 on a free port, no
/// persistence, `DEBUG` allowed from loopback. Killed (and reaped) on drop.
pub struct RedisServer {
    binary: String,
    port: u16,
    extra_args: Vec<String>,
    password: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("extra_args", &self.extra_args)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server with the default arguments. Panics with a clear message if
    /// `redis-server` is missing or does not come up within [`START_TIMEOUT`].
    pub fn start() -> RedisServer {
        RedisServer::with_args(&[])
    }

    /// Starts a server with extra arguments appended to the defaults (they win), for example
    /// `&["--requirepass", "secret"]`. Panics like [`RedisServer::start`].
    pub fn with_args(extra: &[&str]) -> RedisServer {
        match RedisServer::try_start_with("redis-server", extra) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts `binary` (a path, or a name looked up on PATH) with the default arguments plus
    /// `extra`, and waits until it answers PING.
    pub fn try_start_with(binary: &str, extra: &[&str]) -> Result<RedisServer, HarnessError> {
        RedisServer::try_start_picking(binary, extra, &mut free_port)
    }

    /// Like [`RedisServer::try_start_with`], on a port `pick` chooses (asked again, up to 10
    /// times, while the server finds the port taken).
    pub fn try_start_picking(
        binary: &str,
        extra: &[&str],
        pick: &mut dyn FnMut() -> io::Result<u16>,
    ) -> Result<RedisServer, HarnessError> {
        check_binary(binary)?;
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("roomcast-redis-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            binary: binary.to_string(),
            port: 0,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            password: requirepass(extra),
            dir,
            child: None,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = pick()?;
            match server.spawn_and_wait()? {
                Spawned::Up(child) => {
                    server.child = Some(child);
                    return Ok(server);
                }
                Spawned::PortTaken(log) => last = log,
            }
        }
        Err(HarnessError::Start(format!(
            "redis-server could not bind a free loopback port in {PORT_ATTEMPTS} attempts; last log:\n{last}"
        )))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` (no credentials, even with `--requirepass`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The password given with `--requirepass`, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => false,
            None => false,
        }
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit. Every connection
    /// breaks; the data is gone (nothing is persisted). Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`RedisServer::stop`], on the same port with the same
    /// arguments. Retries for up to [`START_TIMEOUT`] while the port is still taken. Panics
    /// if it cannot; does nothing if it runs.
    pub fn start_again(&mut self) {
        if let Err(e) = self.try_start_again() {
            panic!("{e}");
        }
    }

    /// [`RedisServer::start_again`] returning the error instead of panicking.
    pub fn try_start_again(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Ok(());
        }
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait()? {
                Spawned::Up(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Spawned::PortTaken(log) if Instant::now() >= deadline => {
                    return Err(HarnessError::Start(format!(
                        "redis-server could not bind its old port {} again within {:?}; log:\n{log}",
                        self.port, START_TIMEOUT
                    )))
                }
                Spawned::PortTaken(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Stops and starts the server on the same port with the same arguments.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// A new client connection, authenticated when the server has a password.
    pub fn client(&self) -> RespClient {
        self.try_client()
            .unwrap_or_else(|e| panic!("connecting to redis on port {}: {e}", self.port))
    }

    /// [`RedisServer::client`] returning the error (for tests that expect the server down).
    pub fn try_client(&self) -> io::Result<RespClient> {
        let mut c = RespClient::connect(self.port)?;
        if let Some(p) = &self.password {
            match c.try_cmd(&["AUTH", p])? {
                RespReply::Simple(_) => {}
                other => {
                    return Err(io::Error::other(format!(
                        "AUTH with the server's password failed: {other:?}"
                    )))
                }
            }
        }
        Ok(c)
    }

    /// Runs one command on a fresh connection (authenticated if needed) and returns the
    /// reply. Panics on I/O errors, not on error replies (those are [`RespReply::Error`]).
    pub fn cmd(&self, args: &[&str]) -> RespReply {
        self.client().cmd(args)
    }

    /// The clients as `CLIENT LIST` shows them, one `field → value` map each (`id`, `name`,
    /// `addr`, `cmd`, `flags`, ...). Includes the connection that asked.
    pub fn client_list(&self) -> Vec<BTreeMap<String, String>> {
        let reply = self.cmd(&["CLIENT", "LIST"]);
        let Some(text) = reply.as_text() else {
            panic!("CLIENT LIST answered {reply:?}");
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                line.split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// Kills (`CLIENT KILL ID`) every client whose name starts with `name_prefix`; returns
    /// how many were killed.
    pub fn kill_clients_named(&self, name_prefix: &str) -> usize {
        let ids: Vec<String> = self
            .client_list()
            .into_iter()
            .filter(|c| c.get("name").is_some_and(|n| n.starts_with(name_prefix)))
            .filter_map(|c| c.get("id").cloned())
            .collect();
        // Several filters in one CLIENT KILL are ANDed, so kill one at a time.
        ids.iter()
            .map(|id| {
                self.cmd(&["CLIENT", "KILL", "ID", id])
                    .as_int()
                    .unwrap_or(0)
            })
            .sum::<i64>() as usize
    }

    /// `PUBSUB NUMSUB channel`: how many connections subscribe `channel`.
    pub fn numsub(&self, channel: &str) -> i64 {
        let reply = self.cmd(&["PUBSUB", "NUMSUB", channel]);
        match reply.as_array() {
            Some([_, n]) => n
                .as_int()
                .unwrap_or_else(|| panic!("PUBSUB NUMSUB answered {reply:?}")),
            _ => panic!("PUBSUB NUMSUB answered {reply:?}"),
        }
    }

    /// `PUBSUB CHANNELS [pattern]`, sorted.
    pub fn channels(&self, pattern: &str) -> Vec<String> {
        let reply = self.cmd(&["PUBSUB", "CHANNELS", pattern]);
        let mut out: Vec<String> = reply
            .as_array()
            .unwrap_or_else(|| panic!("PUBSUB CHANNELS answered {reply:?}"))
            .iter()
            .filter_map(RespReply::as_text)
            .collect();
        out.sort();
        out
    }

    /// The server's log so far, console output first (for failure messages).
    pub fn log(&self) -> String {
        let console = fs::read_to_string(self.console_path()).unwrap_or_default();
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        format!("{console}{log}")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn spawn_and_wait(&self) -> Result<Spawned, HarnessError> {
        let log_path = self.log_path();
        let _ = fs::remove_file(&log_path);
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log_path)
            .args(&self.extra_args)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        // Errors before the log file is open (a bad argument) go to the console.
        let console = fs::File::create(self.console_path())?;
        cmd.stdout(console.try_clone()?).stderr(console);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(HarnessError::Missing(MISSING_HINT.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = self.log();
                if log.contains("Address already in use") || log.contains("Failed listening") {
                    return Ok(Spawned::PortTaken(log));
                }
                return Err(HarnessError::Start(format!(
                    "redis-server exited ({status}) before answering PING on port {}; args {:?}; log:\n{}",
                    self.port,
                    self.extra_args,
                    tail(&log)
                )));
            }
            if self.answers_as(child.id()) {
                return Ok(Spawned::Up(child));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = self.log();
                return Err(HarnessError::Start(format!(
                    "redis-server did not answer PING on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    tail(&log)
                )));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// True if the server on our port answers and is the process `pid` (not some other
    /// server that took the port between our probe and our bind).
    fn answers_as(&self, pid: u32) -> bool {
        let Ok(mut c) = RespClient::connect_timeout(self.port, Duration::from_secs(2)) else {
            return false;
        };
        c.set_reply_timeout(Duration::from_secs(5));
        if let Some(p) = &self.password {
            if !matches!(c.try_cmd(&["AUTH", p]), Ok(RespReply::Simple(_))) {
                return false;
            }
        }
        // Redis answers LOADING errors while starting; only a real reply counts.
        let Ok(info) = c.try_cmd(&["INFO", "server"]) else {
            return false;
        };
        let Some(text) = info.as_text() else {
            return false;
        };
        text.lines()
            .filter_map(|l| l.strip_prefix("process_id:"))
            .any(|v| v.trim() == pid.to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum Spawned {
    Up(Child),
    PortTaken(String),
}

fn check_binary(binary: &str) -> Result<(), HarnessError> {
    match Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let hint = if binary == "redis-server" {
                MISSING_HINT.to_string()
            } else {
                format!("{binary} was not found; {MISSING_HINT}")
            };
            Err(HarnessError::Missing(hint))
        }
        Err(e) => Err(e.into()),
    }
}

fn requirepass(args: &[&str]) -> Option<String> {
    args.windows(2)
        .filter(|w| w[0] == "--requirepass")
        .map(|w| w[1].to_string())
        .next_back()
}

/// A port that was free a moment ago: bind an ephemeral listener and release it.
fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

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
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
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
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
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

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns whether it
/// did. For waiting on server-side effects (a subscription showing in NUMSUB, ...).
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
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

    #[test]
    fn finds_requirepass() {
        assert_eq!(requirepass(&["--requirepass", "s3"]), Some("s3".into()));
        assert_eq!(requirepass(&["--maxclients", "10"]), None);
    }
}
