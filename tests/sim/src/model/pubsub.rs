//! Pub/sub: subscriptions of the two kinds roomcast uses (channels, and shard channels
//! for Redis Cluster), their confirmations, message delivery and the PUBSUB introspection
//! subcommands. Pattern subscriptions are not modelled (roomcast never sends them).
//!
//! Counts in confirmations follow Redis 7.0: channels have one count, shard channels
//! their own. A connection is in subscribed mode while it has any subscription.

use std::collections::{BTreeMap, BTreeSet};

use super::dispatch::unknown_subcommand;
use super::glob::glob_match;
use super::ordered::OrderedSet;
use super::reply::Reply;
use super::{Client, ClientId, ModelRedis};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Channel,
    Shard,
}

impl Kind {
    fn of(cmd: &str) -> Kind {
        match cmd {
            "ssubscribe" | "sunsubscribe" => Kind::Shard,
            _ => Kind::Channel,
        }
    }

    fn set(self, cl: &mut Client) -> &mut OrderedSet {
        match self {
            Kind::Channel => &mut cl.channels,
            Kind::Shard => &mut cl.shard_channels,
        }
    }

    fn count(self, cl: &Client) -> i64 {
        match self {
            Kind::Channel => cl.channels.len() as i64,
            Kind::Shard => cl.shard_channels.len() as i64,
        }
    }
}

/// splitmix64: a tiny seeded generator for the shuffle fault.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

type Registry = BTreeMap<Vec<u8>, BTreeSet<ClientId>>;

impl ModelRedis {
    fn registry(&mut self, kind: Kind) -> &mut Registry {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Shard => &mut self.shard_channels,
        }
    }

    /// SUBSCRIBE / SSUBSCRIBE: one confirmation per argument, in order,
    /// with the running count (unchanged for a repeat).
    pub(super) fn cmd_subscribe(&mut self, c: ClientId, cmd: &str, names: &[Vec<u8>]) {
        let kind = Kind::of(cmd);
        for name in names {
            let Some(cl) = self.clients.get_mut(&c) else {
                return;
            };
            let added = kind.set(cl).insert(name, ());
            let count = kind.count(cl);
            if added {
                self.registry(kind)
                    .entry(name.clone())
                    .or_default()
                    .insert(c);
            }
            let confirm = Reply::Push(vec![
                Reply::bulk(cmd),
                Reply::Bulk(name.clone()),
                Reply::Integer(count),
            ]);
            self.emit(c, &confirm);
            if self.faults.duplicate_subscribe {
                self.emit(c, &confirm);
            }
        }
    }

    /// UNSUBSCRIBE / PUNSUBSCRIBE / SUNSUBSCRIBE: one confirmation per argument (also for
    /// names never subscribed), or per subscription when called without arguments, or
    /// `[kind, nil, count]` when there is nothing to unsubscribe from.
    pub(super) fn cmd_unsubscribe(&mut self, c: ClientId, cmd: &str, names: &[Vec<u8>]) {
        let kind = Kind::of(cmd);
        let Some(cl) = self.clients.get_mut(&c) else {
            return;
        };
        let mut list: Vec<Vec<u8>> = if names.is_empty() {
            kind.set(cl).keys().map(<[u8]>::to_vec).collect()
        } else {
            names.to_vec()
        };
        if list.is_empty() {
            let none = Reply::Push(vec![
                Reply::bulk(cmd),
                Reply::Nil,
                Reply::Integer(kind.count(cl)),
            ]);
            self.emit(c, &none);
            return;
        }
        if let Some(state) = self.faults.shuffle_unsubscribe.as_mut() {
            for i in (1..list.len()).rev() {
                let j = (splitmix64(state) % (i as u64 + 1)) as usize;
                list.swap(i, j);
            }
        }
        for name in list {
            let Some(cl) = self.clients.get_mut(&c) else {
                return;
            };
            let removed = kind.set(cl).remove(&name).is_some();
            let count = kind.count(cl);
            if removed {
                self.unregister(kind, &name, c);
            }
            let confirm = Reply::Push(vec![
                Reply::bulk(cmd),
                Reply::Bulk(name),
                Reply::Integer(count),
            ]);
            self.emit(c, &confirm);
        }
    }

    fn unregister(&mut self, kind: Kind, name: &[u8], c: ClientId) {
        if kind == Kind::Shard && !self.faults.deaf_shard.is_empty() {
            self.faults.deaf_shard.remove(&(c, name.to_vec()));
        }
        let reg = self.registry(kind);
        if let Some(set) = reg.get_mut(name) {
            set.remove(&c);
            if set.is_empty() {
                reg.remove(name);
            }
        }
    }

    /// Ends every subscription of `c` without confirmations (RESET, close).
    pub(super) fn drop_all_subscriptions(&mut self, c: ClientId) {
        for kind in [Kind::Channel, Kind::Shard] {
            let Some(cl) = self.clients.get_mut(&c) else {
                return;
            };
            let set = std::mem::take(kind.set(cl));
            for name in set.keys() {
                self.unregister(kind, name, c);
            }
        }
    }

    /// PUBLISH: `message` to every channel subscriber; returns how many were sent.
    pub(super) fn deliver(&mut self, channel: &[u8], payload: &[u8]) -> usize {
        let mut sent = 0;
        let direct: Vec<ClientId> = self
            .channels
            .get(channel)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if !direct.is_empty() {
            let msg = Reply::Push(vec![
                Reply::bulk("message"),
                Reply::bulk(channel),
                Reply::bulk(payload),
            ]);
            for &c in &direct {
                self.emit(c, &msg);
                sent += 1;
            }
            self.record_fanout(channel, payload, &direct);
        }
        sent
    }

    /// SPUBLISH: `smessage` to every shard-channel subscriber (a deaf subscription is
    /// counted but gets nothing).
    pub(super) fn deliver_shard(&mut self, channel: &[u8], payload: &[u8]) -> usize {
        let subscribers: Vec<ClientId> = self
            .shard_channels
            .get(channel)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let count = subscribers.len();
        let deaf = &self.faults.deaf_shard;
        let hearing: Vec<ClientId> = subscribers
            .into_iter()
            .filter(|&c| deaf.is_empty() || !deaf.contains(&(c, channel.to_vec())))
            .collect();
        let msg = Reply::Push(vec![
            Reply::bulk("smessage"),
            Reply::bulk(channel),
            Reply::bulk(payload),
        ]);
        for &c in &hearing {
            self.emit(c, &msg);
        }
        self.record_fanout(channel, payload, &hearing);
        count
    }

    /// The server drops shard channel `channel` (its slot moved, or the shard failed over):
    /// each subscriber gets an unsolicited `sunsubscribe <channel> <count>` and is no longer
    /// subscribed.
    pub(super) fn server_sunsubscribe(&mut self, channel: &[u8]) {
        let subscribers: Vec<ClientId> = self
            .shard_channels
            .get(channel)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for c in subscribers {
            let Some(cl) = self.clients.get_mut(&c) else {
                continue;
            };
            cl.shard_channels.remove(channel);
            let count = Kind::Shard.count(cl);
            self.unregister(Kind::Shard, channel, c);
            let push = Reply::Push(vec![
                Reply::bulk("sunsubscribe"),
                Reply::bulk(channel),
                Reply::Integer(count),
            ]);
            self.emit(c, &push);
        }
    }

    /// Every shard subscription held now stays counted but receives nothing from now on
    /// (the effect of redis/redis#12558); later subscriptions are not affected. The fault
    /// ends for a subscription when it ends.
    pub fn deafen_shard_subscriptions(&mut self) {
        for (channel, subscribers) in &self.shard_channels {
            for &c in subscribers {
                self.faults.deaf_shard.insert((c, channel.clone()));
            }
        }
    }

    /// PUBSUB CHANNELS | NUMSUB | SHARDCHANNELS | SHARDNUMSUB.
    pub(super) fn cmd_pubsub(&mut self, fullname: &str, argv: &[Vec<u8>]) -> Reply {
        let names = |reg: &Registry, pattern: Option<&Vec<u8>>| {
            Reply::Array(
                reg.keys()
                    .filter(|ch| pattern.is_none_or(|p| glob_match(p, ch)))
                    .map(|ch| Reply::Bulk(ch.clone()))
                    .collect(),
            )
        };
        let counts = |reg: &Registry| {
            Reply::Array(
                argv[2..]
                    .iter()
                    .flat_map(|ch| {
                        let n = reg.get(ch).map_or(0, BTreeSet::len);
                        [Reply::Bulk(ch.clone()), Reply::Integer(n as i64)]
                    })
                    .collect(),
            )
        };
        match fullname {
            "pubsub|channels" | "pubsub|shardchannels" if argv.len() > 3 => {
                unknown_subcommand(argv, true)
            }
            "pubsub|channels" => names(&self.channels, argv.get(2)),
            "pubsub|shardchannels" => names(&self.shard_channels, argv.get(2)),
            "pubsub|numsub" => counts(&self.channels),
            "pubsub|shardnumsub" => counts(&self.shard_channels),
            _ => Reply::error(format!(
                "roomcast model Redis does not implement '{fullname}'"
            )),
        }
    }
}
