//! A private `redis-server` for the demo, and the server's version for `health`, with the
//! standard library only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roomcast::core::config::ServerConfig;

/// How to get a Redis server, for messages.
pub const INSTALL_HINT: &str =
    "install Redis (Debian/Ubuntu: `sudo apt-get install -y redis-server`, \
     macOS: `brew install redis`) or point REDIS_URL / --url at a running server";

/// `redis-server` found on PATH.
pub fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// A `redis-server` child on a free loopback port, without persistence; killed on drop.
pub struct PrivateRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts `binary` and waits until it answers PING.
    pub fn start(binary: &Path) -> Result<PrivateRedis, String> {
        let dir = std::env::temp_dir().join(format!("roomcast-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
            let log = dir.join("redis.log");
            let log_file =
                std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let child = Command::new(binary)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            let mut server = PrivateRedis {
                child,
                port,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if ping(port) {
                    return Ok(server);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            last = std::fs::read_to_string(&log).unwrap_or_default();
            // Dropping kills it (and removes the directory, made again on the next try).
            drop(server);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if !last.contains("Address already in use") {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let tail: Vec<&str> = last.lines().rev().take(3).collect();
        Err(format!(
            "redis-server did not start: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn ping(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// `redis_version` from `INFO server`, over plain TCP (`None` with TLS, or on any failure).
pub fn server_version(server: &ServerConfig, timeout: Duration) -> Option<String> {
    if server.tls {
        return None;
    }
    let addr = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let mut w = s.try_clone().ok()?;
    let mut r = BufReader::new(s);
    if let Some(password) = &server.password {
        let mut args = vec!["AUTH"];
        if let Some(user) = &server.username {
            args.push(user);
        }
        args.push(password.expose());
        w.write_all(&command(&args)).ok()?;
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if !line.starts_with('+') {
            return None;
        }
    }
    w.write_all(&command(&["INFO", "server"])).ok()?;
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let len: usize = line.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0u8; len.min(1 << 20)];
    r.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}
