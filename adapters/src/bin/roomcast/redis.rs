//! Where the demo finds `redis-server`, and the server's version for `health`; the private
//! server itself and the RESP client are `roomcast::redis_server`.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use roomcast::core::config::ServerConfig;
use roomcast::redis_server::{RespClient, RespReply};

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

/// `redis_version` from `INFO server`, over plain TCP (`None` with TLS, or on any failure).
pub fn server_version(server: &ServerConfig, timeout: Duration) -> Option<String> {
    if server.tls {
        return None;
    }
    let addr = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .ok()?
        .next()?;
    let mut c = RespClient::connect_to(addr, timeout).ok()?;
    c.set_reply_timeout(timeout);
    if let Some(password) = &server.password {
        let mut args = vec!["AUTH"];
        if let Some(user) = &server.username {
            args.push(user);
        }
        args.push(password.expose());
        if !matches!(c.try_cmd(&args), Ok(RespReply::Simple(_))) {
            return None;
        }
    }
    c.try_cmd(&["INFO", "server"])
        .ok()?
        .as_text()?
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}
