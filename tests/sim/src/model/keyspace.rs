//! One database: keys with values and TTLs, and the data commands that work on them.
//!
//! Expiry is lazy and judged by the model's virtual clock: a key whose deadline `t`
//! (virtual Unix milliseconds) has `now > t` is gone, exactly Redis's `keyIsExpired`
//! rule; it is removed when touched. There is no active expiry cycle, so nothing is
//! reclaimed in the background; `DBSIZE`, `KEYS` and the inspectors count live keys only.

use std::collections::BTreeMap;

use super::command_table::REDIS_7_0_COMMANDS;
use super::glob::glob_match;
use super::ordered::{OrderedMap, OrderedSet};
use super::reply::Reply;
use super::request::parse_i64;

/// Redis's `set-max-intset-entries`.
const SET_MAX_INTSET_ENTRIES: usize = 512;

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string.
    String(Vec<u8>),
    /// A hash; fields iterate in insertion order (as a small Redis hash does).
    Hash(OrderedMap<Vec<u8>>),
    /// A set.
    Set(SetValue),
}

/// A set, remembering whether Redis would hold it as an intset (all members canonical
/// integers, at most 512 of them, never converted away), which decides reply order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetValue {
    members: OrderedSet,
    intset: bool,
}

impl SetValue {
    fn new(first_member: &[u8]) -> Self {
        SetValue {
            members: OrderedSet::new(),
            intset: parse_i64(first_member).is_some(),
        }
    }

    fn add(&mut self, m: &[u8]) -> bool {
        if self.intset && parse_i64(m).is_none() {
            self.intset = false;
        }
        let added = self.members.insert(m, ());
        if self.members.len() > SET_MAX_INTSET_ENTRIES {
            self.intset = false;
        }
        added
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `m` is a member.
    pub fn contains(&self, m: &[u8]) -> bool {
        self.members.contains(m)
    }

    /// Members in the order `SMEMBERS` gives them: ascending numbers for an intset,
    /// insertion order otherwise (Redis gives hash-table order, which is unspecified).
    pub fn members(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self.members.keys().map(<[u8]>::to_vec).collect();
        if self.intset {
            v.sort_by_key(|m| parse_i64(m).unwrap_or(0));
        }
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Value,
    expires_at: Option<i64>,
}

/// One Redis database as the model keeps it. Script implementations receive the calling
/// connection's database and use [`Keyspace::call`] like `redis.call` in Lua.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyspace {
    entries: BTreeMap<Vec<u8>, Entry>,
    now_ms: i64,
    /// While a script runs on a cluster node: what it may touch.
    script_guard: Option<ScriptGuard>,
}

/// The cluster's rule for the keys a script touches (Redis 7.0 `scriptVerifyClusterState`):
/// only keys of slots this node serves, and all of one slot (the declared keys' slot, or the
/// first one touched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScriptGuard {
    /// Slots the node serves, by slot.
    pub(crate) served: std::sync::Arc<[bool]>,
    /// The slot of the keys so far.
    pub(crate) slot: Option<u16>,
}

fn wrongtype() -> Reply {
    Reply::error("-WRONGTYPE Operation against a key holding the wrong kind of value")
}

fn not_an_integer() -> Reply {
    Reply::error("value is not an integer or out of range")
}

fn syntax_error() -> Reply {
    Reply::error("syntax error")
}

/// The argument as C code sees it: up to its first NUL byte.
pub(crate) fn cstr(arg: &[u8]) -> &[u8] {
    match arg.iter().position(|&b| b == 0) {
        Some(n) => &arg[..n],
        None => arg,
    }
}

/// Case-insensitive comparison of an argument (as a C string) with an option name.
pub(crate) fn opt_is(arg: &[u8], name: &str) -> bool {
    cstr(arg).eq_ignore_ascii_case(name.as_bytes())
}

fn bulks(items: impl IntoIterator<Item = Vec<u8>>) -> Vec<Reply> {
    items.into_iter().map(Reply::Bulk).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ExpireKind {
    Ex,
    Px,
    ExAt,
    PxAt,
}

impl Keyspace {
    /// An empty database.
    pub fn new() -> Self {
        Keyspace::default()
    }

    /// The virtual Unix time in milliseconds that expiry is judged against.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub(crate) fn set_now_ms(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    fn is_live(&self, e: &Entry) -> bool {
        e.expires_at.is_none_or(|t| self.now_ms <= t)
    }

    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let expired = match self.entries.get(key) {
            None => return None,
            Some(e) => !self.is_live(e),
        };
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.entries.get_mut(key)
    }

    /// The value of a live key.
    pub fn value(&self, key: &[u8]) -> Option<&Value> {
        self.entries
            .get(key)
            .filter(|e| self.is_live(e))
            .map(|e| &e.value)
    }

    /// Whether `key` exists (and has not expired).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.value(key).is_some()
    }

    /// Milliseconds left before a live key expires; `None` for a missing key or one
    /// without a TTL.
    pub fn ttl_ms(&self, key: &[u8]) -> Option<i64> {
        let e = self.entries.get(key).filter(|e| self.is_live(e))?;
        e.expires_at.map(|t| (t - self.now_ms).max(0))
    }

    /// Live keys, sorted.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.entries
            .iter()
            .filter(|(_, e)| self.is_live(e))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| self.is_live(e)).count()
    }

    /// Whether no live key exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the keys whose name satisfies `pred` (with their values and TTLs) to `to`.
    pub(crate) fn move_keys_to(&mut self, to: &mut Keyspace, pred: impl Fn(&[u8]) -> bool) {
        let names: Vec<Vec<u8>> = self.entries.keys().filter(|k| pred(k)).cloned().collect();
        for k in names {
            if let Some(e) = self.entries.remove(&k) {
                to.entries.insert(k, e);
            }
        }
    }

    /// Sets (or, with `None`, lifts) the cluster's rule for a script's keys.
    pub(crate) fn guard_script(&mut self, guard: Option<ScriptGuard>) {
        self.script_guard = guard;
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Runs a data command like `redis.call` inside a script: `argv[0]` is the command
    /// name (any case). Replies come in RESP2 shapes, as Lua sees them. Only the data
    /// commands the model implements are available (strings, hashes, sets, TTLs, KEYS);
    /// others answer an error.
    pub fn call(&mut self, argv: &[&[u8]]) -> Reply {
        let Some(first) = argv.first() else {
            return Reply::error("Please specify at least one argument for this redis lib call");
        };
        let name = String::from_utf8_lossy(first).to_ascii_lowercase();
        let Ok(i) = REDIS_7_0_COMMANDS.binary_search_by(|(n, _)| (*n).cmp(name.as_str())) else {
            return Reply::error("Unknown Redis command called from script");
        };
        let arity = REDIS_7_0_COMMANDS[i].1;
        let argc = argv.len() as i32;
        if (arity > 0 && argc != arity) || argc < -arity {
            return Reply::error("Wrong number of args calling Redis command from script");
        }
        let owned: Vec<Vec<u8>> = argv.iter().map(|a| a.to_vec()).collect();
        if let Some(guard) = self.script_guard.as_mut() {
            for key in super::cluster::command_keys(&name, &owned) {
                let slot = super::cluster::slot_of(key);
                if !guard
                    .served
                    .get(usize::from(slot))
                    .copied()
                    .unwrap_or(false)
                {
                    return Reply::error(
                        "Script attempted to access a non local key in a cluster node script",
                    );
                }
                match guard.slot {
                    Some(s) if s != slot => {
                        return Reply::error(
                            "Script attempted to access keys that do not hash to the same slot",
                        )
                    }
                    _ => guard.slot = Some(slot),
                }
            }
        }
        match self.execute(&name, &owned) {
            Some(r) => r.into_resp2_shape(),
            None => Reply::error(format!(
                "roomcast model Redis: '{name}' is not available to scripts in the model"
            )),
        }
    }

    /// Executes a data command whose name (lowercase) and arity were already checked.
    /// `None` when `name` is not a data command of the model.
    pub(crate) fn execute(&mut self, name: &str, argv: &[Vec<u8>]) -> Option<Reply> {
        let r = match name {
            "get" => self.cmd_get(&argv[1]),
            "set" => self.cmd_set(argv),
            "del" => self.cmd_del(&argv[1..]),
            "exists" => {
                Reply::Integer(argv[1..].iter().filter(|k| self.live(k).is_some()).count() as i64)
            }
            "expire" => self.cmd_expire(argv, true),
            "pexpire" => self.cmd_expire(argv, false),
            "ttl" => self.cmd_ttl(&argv[1], false),
            "pttl" => self.cmd_ttl(&argv[1], true),
            "persist" => self.cmd_persist(&argv[1]),
            "type" => Reply::status(match self.live(&argv[1]).map(|e| &e.value) {
                None => "none",
                Some(Value::String(_)) => "string",
                Some(Value::Hash(_)) => "hash",
                Some(Value::Set(_)) => "set",
            }),
            "keys" => {
                let pattern = &argv[1];
                let ks = self.keys().into_iter().filter(|k| glob_match(pattern, k));
                Reply::Array(bulks(ks))
            }
            "dbsize" => Reply::Integer(self.len() as i64),
            "flushdb" => match flush_mode_ok(argv) {
                Ok(()) => {
                    self.clear();
                    Reply::ok()
                }
                Err(e) => e,
            },
            "hset" => self.cmd_hset(argv),
            "hget" => match self.live(&argv[1]).map(|e| &e.value) {
                None => Reply::Nil,
                Some(Value::Hash(h)) => h
                    .get(&argv[2])
                    .map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
                Some(_) => wrongtype(),
            },
            "hdel" => self.cmd_hdel(argv),
            "hgetall" => match self.live(&argv[1]).map(|e| &e.value) {
                None => Reply::Map(Vec::new()),
                Some(Value::Hash(h)) => Reply::Map(
                    h.iter()
                        .map(|(f, v)| (Reply::Bulk(f.to_vec()), Reply::Bulk(v.clone())))
                        .collect(),
                ),
                Some(_) => wrongtype(),
            },
            "hlen" => match self.live(&argv[1]).map(|e| &e.value) {
                None => Reply::Integer(0),
                Some(Value::Hash(h)) => Reply::Integer(h.len() as i64),
                Some(_) => wrongtype(),
            },
            "sadd" => self.cmd_sadd(argv),
            "srem" => self.cmd_srem(argv),
            "smembers" => match self.live(&argv[1]).map(|e| &e.value) {
                None => Reply::Set(Vec::new()),
                Some(Value::Set(s)) => Reply::Set(bulks(s.members())),
                Some(_) => wrongtype(),
            },
            "scard" => match self.live(&argv[1]).map(|e| &e.value) {
                None => Reply::Integer(0),
                Some(Value::Set(s)) => Reply::Integer(s.len() as i64),
                Some(_) => wrongtype(),
            },
            "sismember" => match self.live(&argv[1]).map(|e| &e.value) {
                None => Reply::Integer(0),
                Some(Value::Set(s)) => Reply::Integer(i64::from(s.contains(&argv[2]))),
                Some(_) => wrongtype(),
            },
            _ => return None,
        };
        Some(r)
    }

    fn cmd_get(&mut self, key: &[u8]) -> Reply {
        match self.live(key).map(|e| &e.value) {
            None => Reply::Nil,
            Some(Value::String(s)) => Reply::Bulk(s.clone()),
            Some(_) => wrongtype(),
        }
    }

    fn cmd_set(&mut self, argv: &[Vec<u8>]) -> Reply {
        let (key, val) = (&argv[1], &argv[2]);
        let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
        let mut expire: Option<(ExpireKind, &[u8])> = None;
        let mut j = 3;
        while j < argv.len() {
            let opt = &argv[j];
            let next = argv.get(j + 1);
            let kind = if opt_is(opt, "ex") {
                Some(ExpireKind::Ex)
            } else if opt_is(opt, "px") {
                Some(ExpireKind::Px)
            } else if opt_is(opt, "exat") {
                Some(ExpireKind::ExAt)
            } else if opt_is(opt, "pxat") {
                Some(ExpireKind::PxAt)
            } else {
                None
            };
            if opt_is(opt, "nx") && !xx {
                nx = true;
            } else if opt_is(opt, "xx") && !nx {
                xx = true;
            } else if opt_is(opt, "get") {
                get = true;
            } else if opt_is(opt, "keepttl") && expire.is_none() {
                keepttl = true;
            } else if let (Some(kind), Some(next)) = (kind, next) {
                // The same unit may repeat (the last one wins); units never mix.
                if keepttl || expire.is_some_and(|(k, _)| k != kind) {
                    return syntax_error();
                }
                expire = Some((kind, next));
                j += 1;
            } else {
                return syntax_error();
            }
            j += 1;
        }
        let deadline = match expire {
            None => None,
            Some((kind, arg)) => {
                let Some(v) = parse_i64(arg) else {
                    return not_an_integer();
                };
                let seconds = matches!(kind, ExpireKind::Ex | ExpireKind::ExAt);
                let invalid = || Reply::error("invalid expire time in 'set' command");
                if v <= 0 || (seconds && v > i64::MAX / 1000) {
                    return invalid();
                }
                let mut ms = if seconds { v * 1000 } else { v };
                if matches!(kind, ExpireKind::Ex | ExpireKind::Px) {
                    // Redis adds the clock in C integers; an overflow shows as <= 0.
                    ms = ms.wrapping_add(self.now_ms);
                }
                if ms <= 0 {
                    return invalid();
                }
                Some(ms)
            }
        };
        let old = if get {
            match self.cmd_get(key) {
                r @ Reply::Error(_) => return r,
                r => Some(r),
            }
        } else {
            None
        };
        let existing_ttl = self.live(key).map(|e| e.expires_at);
        let found = existing_ttl.is_some();
        if (nx && found) || (xx && !found) {
            return old.unwrap_or(Reply::Nil);
        }
        let expires_at = match deadline {
            Some(ms) => Some(ms),
            None if keepttl => existing_ttl.flatten(),
            None => None,
        };
        self.entries.insert(
            key.clone(),
            Entry {
                value: Value::String(val.clone()),
                expires_at,
            },
        );
        old.unwrap_or_else(Reply::ok)
    }

    fn cmd_del(&mut self, keys: &[Vec<u8>]) -> Reply {
        let mut n = 0;
        for k in keys {
            if self.live(k).is_some() {
                self.entries.remove(k.as_slice());
                n += 1;
            }
        }
        Reply::Integer(n)
    }

    fn cmd_expire(&mut self, argv: &[Vec<u8>], seconds: bool) -> Reply {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for opt in &argv[3..] {
            if opt_is(opt, "nx") {
                nx = true;
            } else if opt_is(opt, "xx") {
                xx = true;
            } else if opt_is(opt, "gt") {
                gt = true;
            } else if opt_is(opt, "lt") {
                lt = true;
            } else {
                let mut msg = b"Unsupported option ".to_vec();
                msg.extend_from_slice(cstr(opt));
                return Reply::error(msg);
            }
        }
        if nx && (xx || gt || lt) {
            return Reply::error("NX and XX, GT or LT options at the same time are not compatible");
        }
        if gt && lt {
            return Reply::error("GT and LT options at the same time are not compatible");
        }
        let Some(mut when) = parse_i64(&argv[2]) else {
            return not_an_integer();
        };
        let invalid = || {
            Reply::error(if seconds {
                "invalid expire time in 'expire' command"
            } else {
                "invalid expire time in 'pexpire' command"
            })
        };
        if seconds {
            if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
                return invalid();
            }
            when *= 1000;
        }
        if when > i64::MAX - self.now_ms {
            return invalid();
        }
        when += self.now_ms;
        let now = self.now_ms;
        let Some(entry) = self.live(&argv[1]) else {
            return Reply::Integer(0);
        };
        let current = entry.expires_at;
        if (nx && current.is_some())
            || (xx && current.is_none())
            || (gt && current.is_none_or(|c| when <= c))
            || (lt && current.is_some_and(|c| when >= c))
        {
            return Reply::Integer(0);
        }
        if when <= now {
            self.entries.remove(argv[1].as_slice());
        } else {
            entry.expires_at = Some(when);
        }
        Reply::Integer(1)
    }

    fn cmd_ttl(&mut self, key: &[u8], ms: bool) -> Reply {
        let now = self.now_ms;
        match self.live(key) {
            None => Reply::Integer(-2),
            Some(Entry {
                expires_at: None, ..
            }) => Reply::Integer(-1),
            Some(Entry {
                expires_at: Some(t),
                ..
            }) => {
                let ttl = (*t - now).max(0);
                Reply::Integer(if ms { ttl } else { (ttl + 500) / 1000 })
            }
        }
    }

    fn cmd_persist(&mut self, key: &[u8]) -> Reply {
        match self.live(key) {
            Some(e) if e.expires_at.is_some() => {
                e.expires_at = None;
                Reply::Integer(1)
            }
            _ => Reply::Integer(0),
        }
    }

    fn cmd_hset(&mut self, argv: &[Vec<u8>]) -> Reply {
        if argv.len() % 2 == 1 {
            return Reply::error("wrong number of arguments for 'hset' command");
        }
        let entry = match self.live(&argv[1]) {
            Some(e) => e,
            None => self.entries.entry(argv[1].clone()).or_insert(Entry {
                value: Value::Hash(OrderedMap::new()),
                expires_at: None,
            }),
        };
        let Value::Hash(h) = &mut entry.value else {
            return wrongtype();
        };
        let mut created = 0;
        for pair in argv[2..].chunks_exact(2) {
            if h.insert(&pair[0], pair[1].clone()) {
                created += 1;
            }
        }
        Reply::Integer(created)
    }

    fn cmd_hdel(&mut self, argv: &[Vec<u8>]) -> Reply {
        let Some(entry) = self.live(&argv[1]) else {
            return Reply::Integer(0);
        };
        let Value::Hash(h) = &mut entry.value else {
            return wrongtype();
        };
        let removed = argv[2..].iter().filter(|f| h.remove(f).is_some()).count();
        if h.is_empty() {
            self.entries.remove(argv[1].as_slice());
        }
        Reply::Integer(removed as i64)
    }

    fn cmd_sadd(&mut self, argv: &[Vec<u8>]) -> Reply {
        let entry = match self.live(&argv[1]) {
            Some(e) => e,
            None => self.entries.entry(argv[1].clone()).or_insert(Entry {
                value: Value::Set(SetValue::new(&argv[2])),
                expires_at: None,
            }),
        };
        let Value::Set(s) = &mut entry.value else {
            return wrongtype();
        };
        let added = argv[2..].iter().filter(|m| s.add(m)).count();
        Reply::Integer(added as i64)
    }

    fn cmd_srem(&mut self, argv: &[Vec<u8>]) -> Reply {
        let Some(entry) = self.live(&argv[1]) else {
            return Reply::Integer(0);
        };
        let Value::Set(s) = &mut entry.value else {
            return wrongtype();
        };
        let removed = argv[2..]
            .iter()
            .filter(|m| s.members.remove(m).is_some())
            .count();
        if s.is_empty() {
            self.entries.remove(argv[1].as_slice());
        }
        Reply::Integer(removed as i64)
    }
}

/// FLUSHDB / FLUSHALL take nothing, `SYNC` or `ASYNC`.
pub(crate) fn flush_mode_ok(argv: &[Vec<u8>]) -> Result<(), Reply> {
    match argv.len() {
        1 => Ok(()),
        2 if opt_is(&argv[1], "sync") || opt_is(&argv[1], "async") => Ok(()),
        _ => Err(syntax_error()),
    }
}
