//! Presence across instances, tied to instance leases.
//!
//! Keys (all under the channel prefix `P`, so apps sharing a Redis stay apart):
//! - `P:presence:lease:{instance}`: the instance's lease, a key with a TTL (`Config::lease`)
//!   refreshed by a heartbeat every third of it. Liveness is the server's TTL, never a
//!   comparison of clocks.
//! - `P:presence:room:{room}`: a hash, field `{instance:016x}:{conn}`, value `{instance:016x}`.
//! - `P:presence:conn:{conn}`: a set of the instances where that connection id is present.
//! - `P:presence:instances`: the set of instances that registered.
//! - `P:presence:idx:{instance}:rooms` / `:conns`: the keys an instance wrote entries in, so
//!   that its entries can be removed without scanning the keyspace.
//!
//! Redis 7.0 has no per-field expiry, so entries outlive a crashed owner. Every query is one
//! server-side script that answers in one round trip, skipping and deleting entries whose
//! owner's lease is gone; the instances sweep (run with every few heartbeats) removes a dead
//! instance's whole footprint through its index sets.
//!
//! The `data` of a [`crate::MessageType::PresenceEvent`] that roomcast publishes on join and
//! leave (when `Config::presence_events` is on) is a [`PresenceChange`], see its layout.

use std::fmt;

use bytes::Bytes;

use crate::envelope::InstanceId;
use crate::naming::{ChannelNamer, ConnId, RoomId};

/// Answers "who is in this room" across instances. Skips and deletes entries of instances
/// whose lease is gone. `KEYS[1]` = room hash, `ARGV[1]` = lease key prefix.
pub const ROOM_SCRIPT: &str = r#"local f = redis.call('HGETALL', KEYS[1])
local out, alive = {}, {}
for i = 1, #f, 2 do
  local owner = f[i + 1]
  local ok = alive[owner]
  if ok == nil then
    ok = redis.call('EXISTS', ARGV[1] .. owner) == 1
    alive[owner] = ok
  end
  if ok then out[#out + 1] = f[i] else redis.call('HDEL', KEYS[1], f[i]) end
end
return out"#;

/// Answers "on which instances is this connection id present". `KEYS[1]` = connection set,
/// `ARGV[1]` = lease key prefix.
pub const CONN_SCRIPT: &str = r#"local m = redis.call('SMEMBERS', KEYS[1])
local out = {}
for i = 1, #m do
  if redis.call('EXISTS', ARGV[1] .. m[i]) == 1 then out[#out + 1] = m[i]
  else redis.call('SREM', KEYS[1], m[i]) end
end
return out"#;

/// A Lua function shared by the sweep and the clear scripts: removes every entry of one
/// instance through its index sets, and returns how many rooms it had.
macro_rules! clear_footprint_lua {
    () => {
        r#"local function clear(idx, inst)
  local rooms = redis.call('SMEMBERS', idx .. inst .. ':rooms')
  for j = 1, #rooms do
    local f = redis.call('HGETALL', rooms[j])
    for k = 1, #f, 2 do
      if f[k + 1] == inst then redis.call('HDEL', rooms[j], f[k]) end
    end
  end
  local conns = redis.call('SMEMBERS', idx .. inst .. ':conns')
  for j = 1, #conns do redis.call('SREM', conns[j], inst) end
  redis.call('DEL', idx .. inst .. ':rooms', idx .. inst .. ':conns')
  return #rooms
end
"#
    };
}

/// Lists live instances and removes every entry of dead ones through their index sets.
/// `KEYS[1]` = instances set, `ARGV[1]` = lease key prefix, `ARGV[2]` = index key prefix.
pub const SWEEP_SCRIPT: &str = concat!(
    clear_footprint_lua!(),
    r#"local m = redis.call('SMEMBERS', KEYS[1])
local out = {}
for i = 1, #m do
  if redis.call('EXISTS', ARGV[1] .. m[i]) == 1 then out[#out + 1] = m[i]
  else
    clear(ARGV[2], m[i])
    redis.call('SREM', KEYS[1], m[i])
  end
end
return out"#
);

/// Removes every entry of one instance through its index sets (used inside the
/// re-registration transaction, so that entries written before a link broke, and no longer
/// true, do not survive it). `ARGV[1]` = index key prefix, `ARGV[2]` = the instance.
pub const CLEAR_SCRIPT: &str = concat!(clear_footprint_lua!(), "return clear(ARGV[1], ARGV[2])");

/// The three scripts, in the order of [`Script`].
pub(crate) const SCRIPTS: [&str; 3] = [ROOM_SCRIPT, CONN_SCRIPT, SWEEP_SCRIPT];

/// Which script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    Room = 0,
    Conn = 1,
    Sweep = 2,
}

/// Key names for one prefix and instance.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub lease_prefix: Bytes,
    pub index_prefix: Bytes,
    pub lease: Bytes,
    pub instances: Bytes,
    pub idx_rooms: Bytes,
    pub idx_conns: Bytes,
    pub me: Bytes,
    room_prefix: String,
    conn_prefix: String,
}

impl Keys {
    pub(crate) fn new(namer: &ChannelNamer, me: InstanceId) -> Keys {
        let hex = format!("{:016x}", me.0);
        let s = |x: &str| namer.key(x);
        Keys {
            lease_prefix: s("presence:lease:"),
            index_prefix: s("presence:idx:"),
            lease: s(&format!("presence:lease:{hex}")),
            instances: s("presence:instances"),
            idx_rooms: s(&format!("presence:idx:{hex}:rooms")),
            idx_conns: s(&format!("presence:idx:{hex}:conns")),
            room_prefix: format!("{}:presence:room:", namer.prefix()),
            conn_prefix: format!("{}:presence:conn:", namer.prefix()),
            me: Bytes::from(hex),
        }
    }

    /// The room's hash. The id follows a fixed prefix, so the mapping is injective.
    pub(crate) fn room(&self, room: &str) -> Vec<u8> {
        format!("{}{room}", self.room_prefix).into_bytes()
    }

    /// The connection id's set.
    pub(crate) fn conn(&self, conn: &str) -> Vec<u8> {
        format!("{}{conn}", self.conn_prefix).into_bytes()
    }

    /// This instance's field for a connection in a room hash.
    pub(crate) fn field(&self, conn: &str) -> Vec<u8> {
        let mut f = self.me.to_vec();
        f.push(b':');
        f.extend_from_slice(conn.as_bytes());
        f
    }
}

/// A connection somewhere in the cluster of instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// The instance it is connected to.
    pub instance: InstanceId,
    /// Its id there (ids are unique per instance only).
    pub conn: ConnId,
}

/// Parses a room hash field `{instance:016x}:{conn}`.
pub(crate) fn parse_field(f: &[u8], max_conn: usize) -> Option<Member> {
    let hex = std::str::from_utf8(f.get(..16)?).ok()?;
    if f.get(16) != Some(&b':') {
        return None;
    }
    let instance = InstanceId(u64::from_str_radix(hex, 16).ok()?);
    let conn = std::str::from_utf8(f.get(17..)?).ok()?;
    Some(Member {
        instance,
        conn: ConnId::new(conn, max_conn).ok()?,
    })
}

/// Parses an instance id written as 16 hex digits.
pub(crate) fn parse_instance(b: &[u8]) -> Option<InstanceId> {
    let s = std::str::from_utf8(b).ok()?;
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok().map(InstanceId)
}

/// Names a presence query so that its answer can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// What a presence query asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceQuery {
    /// Who is in a room.
    Room(RoomId),
    /// Where a connection id is present.
    Connection(ConnId),
    /// Which instances hold a live lease.
    Instances,
}

/// The answer to a presence query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceAnswer {
    /// Members of the room on every live instance, sorted.
    Room(Vec<Member>),
    /// Instances where the connection id is present, sorted.
    Connection(Vec<InstanceId>),
    /// Instances with a live lease, sorted.
    Instances(Vec<InstanceId>),
}

/// Why a presence query could not be answered across instances.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceError {
    /// Presence is off (`Config::presence = false`).
    Disabled,
    /// This instance is not registered with Redis right now (link down, or re-registering
    /// after a reconnect): an answer could miss members. Retry shortly, or set
    /// `Config::presence_when_down = Local` to get the local view instead.
    Unavailable,
    /// The room or connection id is invalid.
    Invalid(crate::NameError),
    /// Redis answered with an error.
    Server(String),
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresenceError::Disabled => write!(f, "presence is disabled (Config::presence)"),
            PresenceError::Unavailable => write!(
                f,
                "presence is unavailable while this instance is not registered with Redis (link down or re-registering); retry shortly"
            ),
            PresenceError::Invalid(e) => write!(f, "presence query: {e}"),
            PresenceError::Server(e) => write!(f, "Redis refused the presence query: {e}"),
        }
    }
}

impl std::error::Error for PresenceError {}

/// What to do with a presence query while the instance is not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresenceWhenDown {
    /// Fail with [`PresenceError::Unavailable`]: never a silently partial answer.
    #[default]
    Error,
    /// Answer from this instance's own members, marked `local_only`.
    Local,
}

/// A join or leave, as carried in the `data` of a `PresenceEvent` message.
///
/// Layout, version 1 (all integers little-endian):
/// `[version u8 = 1][kind u8: 1 join, 2 leave][instance u64][conn len u16][conn bytes]
/// [meta len u32][meta bytes]`. Decoders accept higher versions whose first fields are these
/// (new fields may only be appended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Joined (true) or left (false).
    pub joined: bool,
    /// The instance the connection is on.
    pub instance: InstanceId,
    /// The connection.
    pub conn: String,
    /// Application metadata (empty unless the application adds some).
    pub meta: Bytes,
}

/// The current [`PresenceChange`] layout version.
pub const PRESENCE_CHANGE_VERSION: u8 = 1;

impl PresenceChange {
    /// Encodes the change.
    pub fn encode(&self) -> Vec<u8> {
        let conn = self.conn.as_bytes();
        let conn_len = conn.len().min(u16::MAX as usize);
        let meta_len = self.meta.len().min(u32::MAX as usize);
        let mut out = Vec::with_capacity(16 + conn_len + meta_len);
        out.push(PRESENCE_CHANGE_VERSION);
        out.push(if self.joined { 1 } else { 2 });
        out.extend_from_slice(&self.instance.0.to_le_bytes());
        out.extend_from_slice(&(conn_len as u16).to_le_bytes());
        out.extend_from_slice(&conn[..conn_len]);
        out.extend_from_slice(&(meta_len as u32).to_le_bytes());
        out.extend_from_slice(&self.meta[..meta_len]);
        out
    }

    /// Decodes a change; `None` if the bytes are not one.
    pub fn decode(data: &Bytes) -> Option<PresenceChange> {
        let d = &data[..];
        let version = *d.first()?;
        if version < 1 {
            return None;
        }
        let joined = match *d.get(1)? {
            1 => true,
            2 => false,
            _ => return None,
        };
        let instance = InstanceId(u64::from_le_bytes(d.get(2..10)?.try_into().ok()?));
        let conn_len = u16::from_le_bytes(d.get(10..12)?.try_into().ok()?) as usize;
        let conn = std::str::from_utf8(d.get(12..12 + conn_len)?)
            .ok()?
            .to_string();
        let at = 12 + conn_len;
        let meta_len = u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?) as usize;
        let meta_end = (at + 4).checked_add(meta_len)?;
        if meta_end > d.len() || (version == 1 && meta_end != d.len()) {
            return None;
        }
        Some(PresenceChange {
            joined,
            instance,
            conn,
            meta: data.slice(at + 4..meta_end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_round_trips_and_rejects_garbage() {
        let c = PresenceChange {
            joined: false,
            instance: InstanceId(42),
            conn: "ü/1".into(),
            meta: Bytes::from_static(b"{\"name\":\"a\"}"),
        };
        let b = Bytes::from(c.encode());
        assert_eq!(PresenceChange::decode(&b), Some(c));
        for cut in 0..b.len() {
            assert_eq!(PresenceChange::decode(&b.slice(..cut)), None, "cut {cut}");
        }
        let mut bad = b.to_vec();
        bad[1] = 9;
        assert_eq!(PresenceChange::decode(&Bytes::from(bad)), None);
    }

    #[test]
    fn fields_parse_back() {
        let namer = ChannelNamer::new("app").unwrap();
        let keys = Keys::new(&namer, InstanceId(0xab));
        let f = keys.field("c:1");
        let m = parse_field(&f, 256).unwrap();
        assert_eq!(m.instance, InstanceId(0xab));
        assert_eq!(m.conn.as_str(), "c:1");
        assert_eq!(&keys.lease[..], b"app:presence:lease:00000000000000ab");
        assert_eq!(keys.room("a/b"), b"app:presence:room:a/b");
        assert_eq!(parse_field(b"zz", 256), None);
    }
}
