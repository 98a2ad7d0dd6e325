//! The error replies a cluster node sends that concern routing: `-MOVED`, `-ASK`,
//! `-CLUSTERDOWN`, `-CROSSSLOT`, `-TRYAGAIN`.

use std::fmt;

use super::slot::Slot;
use super::topology::TopologyError;

/// Where a redirect points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Redirect {
    /// The slot the command's key or channel hashes to.
    pub slot: Slot,
    /// The node's host; `None` when Redis sent an empty one (`-MOVED 3999 :6381`, when the
    /// node's endpoint is unknown), which means the host the command was sent to.
    pub host: Option<String>,
    /// The node's port.
    pub port: u16,
}

/// A routing error reply from a cluster node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterError {
    /// `-MOVED slot host:port`: the slot is served by another node for good; refresh the
    /// topology and send the command there. Shard channels only ever get this one.
    Moved(Redirect),
    /// `-ASK slot host:port`: the slot is being migrated and this key is already on the
    /// target; send `ASKING` and the command there, once (keys only, never shard channels).
    Ask(Redirect),
    /// `-CLUSTERDOWN ...`: the cluster (or this slot) is not served right now; retry later.
    ClusterDown {
        /// The server's text after `CLUSTERDOWN`.
        message: String,
    },
    /// `-CROSSSLOT ...`: the command named keys or channels of different slots.
    CrossSlot {
        /// The server's text after `CROSSSLOT`.
        message: String,
    },
    /// `-TRYAGAIN ...`: a multi-key command met a slot in mid-migration; retry later.
    TryAgain {
        /// The server's text after `TRYAGAIN`.
        message: String,
    },
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |r: &Redirect| format!("{}:{}", r.host.as_deref().unwrap_or(""), r.port);
        match self {
            ClusterError::Moved(r) => write!(f, "slot {} moved to {}", r.slot, at(r)),
            ClusterError::Ask(r) => write!(f, "slot {} is migrating to {}", r.slot, at(r)),
            ClusterError::ClusterDown { message } => write!(f, "cluster down: {message}"),
            ClusterError::CrossSlot { message } => write!(f, "cross-slot command: {message}"),
            ClusterError::TryAgain { message } => write!(f, "try again: {message}"),
        }
    }
}

impl std::error::Error for ClusterError {}

impl ClusterError {
    /// Reads the text of an error reply (without the leading `-`). `Ok(None)` for errors
    /// that are not about routing (`ERR ...`, `NOAUTH ...`, ...); an error for a `MOVED` or
    /// `ASK` whose slot or address cannot be read.
    pub fn parse(reply: &[u8]) -> Result<Option<ClusterError>, TopologyError> {
        let reply = reply.strip_prefix(b"-").unwrap_or(reply);
        let (word, rest) = match reply.iter().position(|&b| b == b' ') {
            Some(i) => (
                reply.get(..i).unwrap_or_default(),
                reply.get(i + 1..).unwrap_or_default(),
            ),
            None => (reply, &b""[..]),
        };
        let message = || String::from_utf8_lossy(rest).trim_end().to_string();
        Ok(Some(match word {
            b"MOVED" => ClusterError::Moved(redirect(rest, "MOVED")?),
            b"ASK" => ClusterError::Ask(redirect(rest, "ASK")?),
            b"CLUSTERDOWN" => ClusterError::ClusterDown { message: message() },
            b"CROSSSLOT" => ClusterError::CrossSlot { message: message() },
            b"TRYAGAIN" => ClusterError::TryAgain { message: message() },
            _ => return Ok(None),
        }))
    }
}

/// `slot host:port` (the host may be an IPv6 address, with its colons, or empty).
fn redirect(rest: &[u8], word: &str) -> Result<Redirect, TopologyError> {
    let bad = |what: &str| {
        TopologyError::new(format!(
            "-{word} {:?}: {what}",
            String::from_utf8_lossy(rest)
        ))
    };
    let text = std::str::from_utf8(rest).map_err(|_| bad("not UTF-8"))?;
    let text = text.trim_end();
    let (slot, addr) = text
        .split_once(' ')
        .ok_or_else(|| bad("expected `slot host:port`"))?;
    let slot = slot
        .parse::<u16>()
        .ok()
        .and_then(Slot::new)
        .ok_or_else(|| bad("the slot is not a number from 0 to 16383"))?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("the address has no port"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(' ') {
        return Err(bad("the host contains a space"));
    }
    Ok(Redirect {
        slot,
        host: (!host.is_empty()).then(|| host.to_string()),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(slot: u16, host: Option<&str>, port: u16) -> Redirect {
        Redirect {
            slot: Slot::new(slot).expect("slot"),
            host: host.map(str::to_string),
            port,
        }
    }

    #[test]
    fn reads_routing_errors() {
        assert_eq!(
            ClusterError::parse(b"MOVED 3999 127.0.0.1:6381").unwrap(),
            Some(ClusterError::Moved(redirect(3999, Some("127.0.0.1"), 6381)))
        );
        assert_eq!(
            ClusterError::parse(b"-MOVED 0 ::1:7000\r\n").unwrap(),
            Some(ClusterError::Moved(redirect(0, Some("::1"), 7000)))
        );
        assert_eq!(
            ClusterError::parse(b"MOVED 16383 :6381").unwrap(),
            Some(ClusterError::Moved(redirect(16383, None, 6381)))
        );
        assert_eq!(
            ClusterError::parse(b"ASK 1 redis-3.example:7001").unwrap(),
            Some(ClusterError::Ask(redirect(
                1,
                Some("redis-3.example"),
                7001
            )))
        );
        assert_eq!(
            ClusterError::parse(b"CLUSTERDOWN Hash slot not served").unwrap(),
            Some(ClusterError::ClusterDown {
                message: "Hash slot not served".into()
            })
        );
        assert_eq!(
            ClusterError::parse(b"CROSSSLOT Keys in request don't hash to the same slot").unwrap(),
            Some(ClusterError::CrossSlot {
                message: "Keys in request don't hash to the same slot".into()
            })
        );
        assert_eq!(
            ClusterError::parse(b"TRYAGAIN Multiple keys request during rehashing of slot")
                .unwrap()
                .map(|e| e.to_string()),
            Some("try again: Multiple keys request during rehashing of slot".into())
        );
        for other in [
            &b"ERR unknown command"[..],
            b"NOAUTH Authentication required.",
            b"",
            b"MOVEDX 1 h:1",
        ] {
            assert_eq!(ClusterError::parse(other).unwrap(), None);
        }
    }

    #[test]
    fn refuses_unreadable_redirects() {
        for bad in [
            &b"MOVED"[..],
            b"MOVED 3999",
            b"MOVED 16384 h:1",
            b"MOVED -1 h:1",
            b"MOVED x h:1",
            b"MOVED 1 h",
            b"MOVED 1 h:0",
            b"MOVED 1 h:65536",
            b"MOVED 1 h:p",
            b"ASK 1 a b:1",
            b"MOVED 1 \xff:1",
        ] {
            let e = ClusterError::parse(bad).unwrap_err().to_string();
            assert!(e.contains("MOVED") || e.contains("ASK"), "{e}");
        }
    }
}
