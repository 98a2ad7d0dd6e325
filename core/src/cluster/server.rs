//! What a node says about itself in its `HELLO` reply, and whether that fits the mode the
//! URL chose: a `redis://` URL must not reach a cluster node, a `redis+cluster://` URL must
//! reach one, and a cluster must be Redis 7.0 or later (sharded pub/sub).
//!
//! `HELLO` without arguments (sent after `AUTH`) answers in the connection's protocol
//! without changing it: a flat array of pairs in RESP2, a map in RESP3, with `version` and
//! `mode` (`standalone`, `cluster` or `sentinel`). Redis before 6.0 has no `HELLO` at all.

use std::fmt;

use crate::resp::Value;

/// The oldest Redis with sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`).
pub const MIN_CLUSTER_VERSION: (u32, u32, u32) = (7, 0, 0);

/// How a server runs, from `HELLO`'s `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMode {
    /// A single server (or a replica of one).
    Standalone,
    /// A Redis Cluster node.
    Cluster,
    /// A Sentinel.
    Sentinel,
    /// A mode this version does not know.
    Other(String),
}

/// The parts of a `HELLO` reply roomcast looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// `version` as sent, e.g. `7.0.15`.
    pub version_text: String,
    /// The version's first three numbers (missing ones are 0).
    pub version: (u32, u32, u32),
    /// `mode`.
    pub mode: ServerMode,
}

/// Why a server does not fit the mode the URL chose. Every message names the server, says
/// what it is, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModeError {
    /// A `redis://` URL reached a cluster node.
    IsACluster {
        /// `host:port` of the node.
        addr: String,
    },
    /// A `redis+cluster://` URL reached a server that is not a cluster node.
    NotACluster {
        /// `host:port` of the server.
        addr: String,
        /// Its mode.
        mode: ServerMode,
    },
    /// A cluster older than Redis 7.0: no sharded pub/sub.
    TooOld {
        /// `host:port` of the node.
        addr: String,
        /// Its version, as sent (or `before 6.0` when it has no `HELLO`).
        version: String,
    },
    /// The reply to `HELLO` could not be read.
    Unreadable {
        /// `host:port` of the server.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeError::IsACluster { addr } => write!(
                f,
                "{addr} is a Redis Cluster node, but the URL is redis:// (one server); write \
                 redis+cluster://{addr} (rediss+cluster:// with TLS) to use cluster mode \
                 (sharded pub/sub; with redis:// messages would be broadcast to every node and \
                 presence keys would fail with MOVED)"
            ),
            ModeError::NotACluster { addr, mode } => write!(
                f,
                "{addr} is not a Redis Cluster node (HELLO says mode {}), but the URL is \
                 redis+cluster://; write redis://{addr} for a single server",
                match mode {
                    ServerMode::Standalone => "standalone",
                    ServerMode::Cluster => "cluster",
                    ServerMode::Sentinel => "sentinel",
                    ServerMode::Other(m) => m,
                }
            ),
            ModeError::TooOld { addr, version } => write!(
                f,
                "{addr} runs Redis {version}, which has no sharded pub/sub (SSUBSCRIBE and \
                 SPUBLISH came in 7.0); upgrade the cluster to Redis 7.0 or later"
            ),
            ModeError::Unreadable { addr, reason } => {
                write!(f, "{addr} answered HELLO unreadably: {reason}")
            }
        }
    }
}

impl std::error::Error for ModeError {}

/// `7.0.15` → `(7, 0, 15)`; text after a number's digits (`7.2.0-rc1`) is ignored.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

impl ServerHello {
    /// Reads a `HELLO` reply (RESP2 pairs or RESP3 map).
    pub fn from_reply(reply: &Value) -> Result<ServerHello, String> {
        let pairs: Vec<(&Value, &Value)> = match reply {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(items) if items.len() % 2 == 0 => items
                .chunks_exact(2)
                .filter_map(|p| match p {
                    [k, v] => Some((k, v)),
                    _ => None,
                })
                .collect(),
            Value::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
            _ => return Err("not a map".into()),
        };
        let field = |name: &[u8]| {
            pairs
                .iter()
                .find(|(k, _)| k.as_bytes() == Some(name))
                .and_then(|(_, v)| v.as_bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let version_text = field(b"version").ok_or("no version")?;
        let version = parse_version(&version_text)
            .ok_or_else(|| format!("version {version_text:?} is not a version number"))?;
        let mode = match field(b"mode").ok_or("no mode")?.as_str() {
            "standalone" => ServerMode::Standalone,
            "cluster" => ServerMode::Cluster,
            "sentinel" => ServerMode::Sentinel,
            other => ServerMode::Other(other.to_string()),
        };
        Ok(ServerHello {
            version_text,
            version,
            mode,
        })
    }
}

/// Checks the reply to `HELLO` from the server at `addr` against the mode the URL chose
/// (`cluster`: `redis+cluster://`). `Ok(None)` for a server before 6.0 (no `HELLO`) in
/// single-server mode, which stays accepted as before.
pub fn check_server_mode(
    reply: &Value,
    cluster: bool,
    addr: &str,
) -> Result<Option<ServerHello>, ModeError> {
    if let Value::Error(e) = reply {
        if e.starts_with(b"ERR unknown command") {
            return if cluster {
                Err(ModeError::TooOld {
                    addr: addr.to_string(),
                    version: "before 6.0".into(),
                })
            } else {
                Ok(None)
            };
        }
    }
    let hello = ServerHello::from_reply(reply).map_err(|reason| ModeError::Unreadable {
        addr: addr.to_string(),
        reason,
    })?;
    match (&hello.mode, cluster) {
        (ServerMode::Cluster, false) => Err(ModeError::IsACluster {
            addr: addr.to_string(),
        }),
        (ServerMode::Cluster, true) if hello.version < MIN_CLUSTER_VERSION => {
            Err(ModeError::TooOld {
                addr: addr.to_string(),
                version: hello.version_text,
            })
        }
        (ServerMode::Cluster, true) | (_, false) => Ok(Some(hello)),
        (mode, true) => Err(ModeError::NotACluster {
            addr: addr.to_string(),
            mode: mode.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::resp::{FrameLimits, Incoming, Reader};
    use bytes::{Bytes, BytesMut};

    fn decode(protocol: Protocol, bytes: &[u8]) -> Value {
        let limits = FrameLimits {
            max_frame_bytes: 1 << 16,
            max_depth: 8,
            max_elements: 1024,
        };
        let mut buf = BytesMut::from(bytes);
        match Reader::new(protocol, limits).next(&mut buf) {
            Ok(Some(Incoming::Reply(v))) if buf.is_empty() => v,
            other => panic!("not one reply: {other:?}"),
        }
    }

    /// The captured `HELLO` replies of redis-server 7.0.15: (cluster?, protocol, bytes).
    const HELLOS: [(bool, Protocol, &[u8]); 4] = [
        (
            true,
            Protocol::Resp2,
            include_bytes!("../../tests/data/cluster/hello_cluster_resp2.resp"),
        ),
        (
            true,
            Protocol::Resp3,
            include_bytes!("../../tests/data/cluster/hello_cluster_resp3.resp"),
        ),
        (
            false,
            Protocol::Resp2,
            include_bytes!("../../tests/data/cluster/hello_standalone_resp2.resp"),
        ),
        (
            false,
            Protocol::Resp3,
            include_bytes!("../../tests/data/cluster/hello_standalone_resp3.resp"),
        ),
    ];

    #[test]
    fn captured_hellos_fit_their_mode_only() {
        for (is_cluster, protocol, bytes) in HELLOS {
            let reply = decode(protocol, bytes);
            let hello = check_server_mode(&reply, is_cluster, "h:1")
                .expect("fits")
                .expect("has HELLO");
            assert_eq!(
                (hello.version, hello.version_text.as_str()),
                ((7, 0, 15), "7.0.15")
            );
            let wrong = check_server_mode(&reply, !is_cluster, "h:1")
                .unwrap_err()
                .to_string();
            if is_cluster {
                assert!(wrong.contains("write redis+cluster://h:1"), "{wrong}");
            } else {
                assert!(wrong.contains("mode standalone") && wrong.contains("redis://h:1"));
            }
        }
    }

    fn hello(version: &str, mode: &str) -> Value {
        let b = |s: &str| Value::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        Value::Map(vec![
            (b("server"), b("redis")),
            (b("version"), b(version)),
            (b("mode"), b(mode)),
        ])
    }

    #[test]
    fn old_clusters_are_refused() {
        let e = check_server_mode(&hello("6.2.14", "cluster"), true, "h:1").unwrap_err();
        assert!(e
            .to_string()
            .contains("Redis 6.2.14, which has no sharded pub/sub"));
        assert!(check_server_mode(&hello("7.0.0", "cluster"), true, "h:1").is_ok());
        assert!(check_server_mode(&hello("7.2.0-rc1", "cluster"), true, "h:1").is_ok());
        // Before 6.0: no HELLO. Fine for one server, too old for a cluster.
        let unknown = Value::Error(Bytes::from_static(b"ERR unknown command 'HELLO'"));
        assert_eq!(check_server_mode(&unknown, false, "h:1"), Ok(None));
        assert!(check_server_mode(&unknown, true, "h:1")
            .unwrap_err()
            .to_string()
            .contains("before 6.0"));
        // A sentinel is no cluster either; a standalone 6.2 is fine without cluster mode.
        assert!(check_server_mode(&hello("7.0.15", "sentinel"), true, "h:1").is_err());
        assert!(check_server_mode(&hello("6.2.0", "standalone"), false, "h:1").is_ok());
    }

    #[test]
    fn unreadable_hellos_are_errors() {
        for reply in [
            Value::Error(Bytes::from_static(b"NOAUTH Authentication required.")),
            Value::Int(1),
            Value::Array(vec![Value::Nil]),
            hello("x.y", "cluster"),
            Value::Map(vec![]),
        ] {
            let e = check_server_mode(&reply, true, "h:1").unwrap_err();
            assert!(matches!(e, ModeError::Unreadable { .. }), "{e}");
        }
    }
}
