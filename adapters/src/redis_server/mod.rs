//! A private `redis-server` on a free loopback port ([`RedisServer`]), and a tiny blocking
//! RESP client ([`RespClient`]), with the standard library only: no runtime, no client crate.
//!
//! `roomcast demo` runs its own server with it, and the workspace's integration tests start
//! one per test with it (so tests run in parallel and never touch a system Redis on 6379).
//! The server binds 127.0.0.1 only, keeps nothing on disk and allows `DEBUG` from loopback;
//! it is killed, and its work directory removed, when the [`RedisServer`] is dropped.
//!
//! ```no_run
//! use roomcast::redis_server::RedisServer;
//!
//! let server = RedisServer::try_start_with("redis-server", &[]).expect("redis-server runs");
//! assert!(server.cmd(&["PING"]).is_ok());
//! println!("connect to {}", server.url());
//! ```

mod client;

pub use client::{encode_command, RespClient, RespReply};

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

/// How to get `redis-server`, for messages.
pub const INSTALL_HINT: &str = "redis-server was not found on PATH: install Redis \
     (Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install redis`); \
     in roomcast's repository `bash scripts/test.sh` installs it";

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
                return Err(HarnessError::Missing(INSTALL_HINT.into()))
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
                INSTALL_HINT.to_string()
            } else {
                format!("{binary} was not found; {INSTALL_HINT}")
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
    fn finds_requirepass() {
        assert_eq!(requirepass(&["--requirepass", "s3"]), Some("s3".into()));
        assert_eq!(requirepass(&["--maxclients", "10"]), None);
    }
}
