//! Presence across instances, tied to instance leases.
//!
//! # Keys
//!
//! Every presence key of the channel prefix `P` starts with `P:presence:{P}:` (written
//! `H` below), so apps sharing a Redis stay apart:
//! - `H lease:<instance>`: the instance's lease, a key with a TTL (`Config::lease`)
//!   refreshed by a heartbeat every third of it. Liveness is the server's TTL, never a
//!   comparison of clocks.
//! - `H room:<room>`: a hash, field `<instance:016x>:<conn>`, value `<instance:016x>`.
//! - `H conn:<conn>`: a set of the instances where that connection id is present.
//! - `H instances`: the set of instances that registered.
//! - `H idx:<instance>:rooms` / `:conns`: the keys an instance wrote entries in, so
//!   that its entries can be removed without scanning the keyspace.
//!
//! # One hash slot per prefix
//!
//! `{P}` is a Redis Cluster hash tag: the cluster hashes only the text between the first `{`
//! and the next `}`, here the prefix itself, so every presence key of one prefix lives in
//! one slot ([`Keys::slot`], the slot `CLUSTER KEYSLOT P` names), on one shard. That holds
//! for every room and connection id, braces included: cluster mode refuses prefixes with
//! braces ([`crate::cluster::check_cluster_prefix`]), so the first `{` of a key is the one
//! in `H`, its `}` follows within `H`, and the ids after `H` never change the tag. (One
//! server, where slots mean nothing, accepts such prefixes; a prefix like `x{}y` there gives
//! keys no common tag.) Different prefixes usually hash to different slots; two that share
//! one merely share a shard, their keys stay distinct.
//!
//! So no command presence sends spans slots: each script declares a key of the slot
//! (`KEYS[1]`), which routes it and lets the cluster answer `-MOVED` when the slot is
//! elsewhere, and every key it reads or writes is in that slot (Redis 7 refuses a script
//! that touches another slot than its declared keys'); the registration's `MULTI`/`EXEC`
//! names keys of that slot only. The price is that one shard carries all presence traffic
//! of a prefix; the alternative, a tag per room, would make a room query two round trips
//! (the owners' leases live on other shards) and a heartbeat one write per shard holding a
//! member, and would still need a cross-shard index for `instances()` and the sweep.
//! Single-server mode uses the same names.
//!
//! # While the presence slot moves
//!
//! Checked on a real cluster by the `presence_cluster` integration test. Halfway through a
//! move, the old owner refuses a script that reads a key already moved (`ERR Script attempted
//! to access a non local key in a cluster node`) and answers `-ASK` for a command whose
//! declared key moved; the new owner answers `-MOVED` back to the old one. Nothing is pruned
//! by mistake, and after the move every command gets `-MOVED`, so each instance refreshes
//! and registers again. Presence commands must never be sent with `ASKING`: the importing
//! node would run a script on the keys it has, where a lease not moved yet reads as missing,
//! and the query would prune (the sweep clear) a live instance's entries.
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

use crate::cluster::{key_slot, Slot};
use crate::envelope::InstanceId;
use crate::naming::{ChannelNamer, ConnId, RoomId};

/// Answers "who is in this room" across instances. Skips and deletes entries of instances
/// whose lease is gone. `KEYS[1]` = room hash, `ARGV[1]` = lease key prefix (the leases it
/// reads are in `KEYS[1]`'s slot, see [the module docs](self)).
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
/// `ARGV[1]` = lease key prefix (leases in `KEYS[1]`'s slot).
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
/// `KEYS[1]` = instances set, `ARGV[1]` = lease key prefix, `ARGV[2]` = index key prefix
/// (every key it reaches is in `KEYS[1]`'s slot: leases, index sets and the keys they list).
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
/// true, do not survive it). `KEYS[1]` = the instance's rooms index ([`Keys::idx_rooms`]),
/// declared so that the script is routed to the presence slot and checked there;
/// `ARGV[1]` = index key prefix, `ARGV[2]` = the instance.
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

/// The presence key names of one channel prefix, as seen by one instance (layout in [the
/// module docs](self)). Every name is in one hash slot, [`Keys::slot`].
#[derive(Debug, Clone)]
pub struct Keys {
    /// `P:presence:{P}:lease:`, followed by an instance (16 hex digits) in a lease's name.
    pub lease_prefix: Bytes,
    /// `P:presence:{P}:idx:`, followed by an instance and `:rooms` or `:conns`.
    pub index_prefix: Bytes,
    /// This instance's lease.
    pub lease: Bytes,
    /// The set of registered instances.
    pub instances: Bytes,
    /// The set of the room hashes this instance wrote entries in.
    pub idx_rooms: Bytes,
    /// The set of the connection sets this instance wrote itself in.
    pub idx_conns: Bytes,
    /// This instance as written in values and fields: 16 lowercase hex digits.
    pub me: Bytes,
    room_prefix: String,
    conn_prefix: String,
}

impl Keys {
    /// The names for `namer`'s prefix, for instance `me`.
    pub fn new(namer: &ChannelNamer, me: InstanceId) -> Keys {
        let hex = format!("{:016x}", me.0);
        let head = Keys::head(namer);
        let s = |x: &str| Bytes::from(format!("{head}{x}"));
        Keys {
            lease_prefix: s("lease:"),
            index_prefix: s("idx:"),
            lease: s(&format!("lease:{hex}")),
            instances: s("instances"),
            idx_rooms: s(&format!("idx:{hex}:rooms")),
            idx_conns: s(&format!("idx:{hex}:conns")),
            room_prefix: format!("{head}room:"),
            conn_prefix: format!("{head}conn:"),
            me: Bytes::from(hex),
        }
    }

    /// `P:presence:{P}:`, the start of every presence key of `namer`'s prefix `P`.
    pub fn head(namer: &ChannelNamer) -> String {
        let p = namer.prefix();
        format!("{p}:presence:{{{p}}}:")
    }

    /// The hash slot of every presence key (the slot of the prefix: `CLUSTER KEYSLOT P`
    /// for a prefix without braces). In cluster mode presence commands go to this slot's
    /// master.
    pub fn slot(&self) -> Slot {
        key_slot(&self.instances)
    }

    /// The room's hash. The id follows a fixed prefix, so the mapping is injective.
    pub fn room(&self, room: &str) -> Vec<u8> {
        format!("{}{room}", self.room_prefix).into_bytes()
    }

    /// The connection id's set.
    pub fn conn(&self, conn: &str) -> Vec<u8> {
        format!("{}{conn}", self.conn_prefix).into_bytes()
    }

    /// This instance's field for a connection in a room hash: `<me>:<conn>`.
    pub fn field(&self, conn: &str) -> Vec<u8> {
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
        assert_eq!(parse_field(b"zz", 256), None);
    }

    #[test]
    fn key_names_are_the_documented_layout() {
        let keys = Keys::new(&ChannelNamer::new("app").unwrap(), InstanceId(0xab));
        let name = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        assert_eq!(
            name(&keys.lease),
            "app:presence:{app}:lease:00000000000000ab"
        );
        assert_eq!(name(&keys.lease_prefix), "app:presence:{app}:lease:");
        assert_eq!(name(&keys.index_prefix), "app:presence:{app}:idx:");
        assert_eq!(name(&keys.instances), "app:presence:{app}:instances");
        assert_eq!(
            name(&keys.idx_rooms),
            "app:presence:{app}:idx:00000000000000ab:rooms"
        );
        assert_eq!(
            name(&keys.idx_conns),
            "app:presence:{app}:idx:00000000000000ab:conns"
        );
        assert_eq!(name(&keys.room("a/b")), "app:presence:{app}:room:a/b");
        assert_eq!(name(&keys.conn("c:1")), "app:presence:{app}:conn:c:1");
        assert_eq!(name(&keys.me), "00000000000000ab");
        // The lease and index names the scripts build from the prefixes are the same.
        assert_eq!(
            [&keys.lease_prefix[..], &keys.me[..]].concat(),
            &keys.lease[..]
        );
        assert_eq!(
            [&keys.index_prefix[..], &keys.me[..], b":rooms"].concat(),
            &keys.idx_rooms[..]
        );
    }

    /// Every name a command or a script can touch for this prefix and instance, with ids
    /// that carry braces of their own.
    fn every_key(keys: &Keys, other: &Keys) -> Vec<Vec<u8>> {
        let mut all = vec![
            keys.lease.to_vec(),
            keys.instances.to_vec(),
            keys.idx_rooms.to_vec(),
            keys.idx_conns.to_vec(),
            // What the scripts build: another instance's lease and index sets.
            [&keys.lease_prefix[..], &other.me[..]].concat(),
            [&keys.index_prefix[..], &other.me[..], b":rooms"].concat(),
            [&keys.index_prefix[..], &other.me[..], b":conns"].concat(),
        ];
        for id in ["lobby", "{x}", "a{b}c", "}{", "{", "}", "{}", "ü/1", ""] {
            all.push(keys.room(id));
            all.push(keys.conn(id));
        }
        all
    }

    #[test]
    fn every_presence_key_of_a_prefix_is_in_its_slot() {
        for prefix in ["graphwiz", "app", "app:v2", "chat", "a/b", "ü", "%3A"] {
            let namer = ChannelNamer::new(prefix).unwrap();
            let keys = Keys::new(&namer, InstanceId(0xab));
            let other = Keys::new(&namer, InstanceId(u64::MAX));
            assert_eq!(keys.slot(), other.slot(), "{prefix}");
            for key in every_key(&keys, &other) {
                assert_eq!(
                    key_slot(&key),
                    keys.slot(),
                    "{prefix}: {}",
                    String::from_utf8_lossy(&key)
                );
            }
            // The slot is the prefix's own: `CLUSTER KEYSLOT prefix` names it.
            assert_eq!(keys.slot(), key_slot(prefix.as_bytes()), "{prefix}");
        }
    }

    #[test]
    fn different_prefixes_use_different_slots() {
        let prefixes = ["graphwiz", "app", "app:v2", "chat", "staging", "prod"];
        let mut slots: Vec<Slot> = prefixes
            .iter()
            .map(|p| Keys::new(&ChannelNamer::new(p).unwrap(), InstanceId(1)).slot())
            .collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), prefixes.len(), "{prefixes:?}");
    }

    proptest::proptest! {
        #[test]
        fn any_prefix_and_id_stay_in_the_prefix_slot(
            prefix in "[^\\s\\p{Cc}{}]{1,12}",
            id in "\\PC{0,12}",
            me in proptest::prelude::any::<u64>(),
        ) {
            let namer = ChannelNamer::new(&prefix);
            proptest::prop_assume!(namer.is_ok());
            let keys = Keys::new(&namer.unwrap(), InstanceId(me));
            proptest::prop_assert_eq!(key_slot(&keys.room(&id)), keys.slot());
            proptest::prop_assert_eq!(key_slot(&keys.conn(&id)), keys.slot());
            proptest::prop_assert_eq!(key_slot(&keys.lease), keys.slot());
            proptest::prop_assert_eq!(key_slot(&keys.idx_conns), keys.slot());
            proptest::prop_assert_eq!(keys.slot(), key_slot(prefix.as_bytes()));
        }
    }
}
