//! Where a hub's links go in a cluster: one *place* per master that owns slots, with an id
//! that stays the same across topology refreshes, so the links of a place (its subscriber
//! and its publish links) survive every refresh that leaves its master in place.
//!
//! A refresh ([`Placement::refresh`]) keeps every place whose master is still a master at
//! the same address, adds places for new masters, and retires the places that own no slot
//! any more (their links are to be closed: a subscriber there would only be told
//! `sunsubscribe`, and a publish answered `-MOVED`). Place ids are never reused for another
//! address: a retired place whose address becomes a master again serves again under its old
//! id.
//!
//! In the hub, every place has one subscriber link (opened only while rooms with local
//! members hash to its slots) and `REDIS_POOL_SIZE` publish links: in cluster mode the pool
//! size counts publish links *per master*.

use super::{ShardIndex, Slot, Topology};
use crate::config::{ClusterServers, ServerConfig};

/// A master the hub keeps links to, by a stable index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlaceId(pub usize);

/// What a refresh changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementChange {
    /// Places new to this placement (their links are to be made).
    pub added: Vec<PlaceId>,
    /// Places that served before and own no slot now (their links are to be closed).
    pub retired: Vec<PlaceId>,
    /// Places that were retired and serve again.
    pub revived: Vec<PlaceId>,
}

/// The masters of a cluster as stable places, and which place serves each slot.
#[derive(Debug, Clone)]
pub struct Placement {
    servers: ClusterServers,
    places: Vec<ServerConfig>,
    serving: Vec<bool>,
    topology: Topology,
    /// By shard index of `topology`: the place of the shard's master, if it has an online
    /// one reachable in this mode (TLS or not) and owns slots.
    shard_place: Vec<Option<PlaceId>>,
}

impl Placement {
    /// The placement of a first topology (every place is `added`).
    pub fn new(servers: ClusterServers, topology: Topology) -> (Placement, PlacementChange) {
        let mut p = Placement {
            servers,
            places: Vec::new(),
            serving: Vec::new(),
            topology: topology.clone(),
            shard_place: Vec::new(),
        };
        let change = p.refresh(topology);
        (p, change)
    }

    /// Takes a fresh topology and says which places came, went, or came back.
    pub fn refresh(&mut self, topology: Topology) -> PlacementChange {
        let tls = self.servers.tls;
        let mut change = PlacementChange::default();
        let mut now_serving = vec![false; self.places.len()];
        let mut shard_place = Vec::with_capacity(topology.shards().len());
        for shard in topology.shards() {
            let address = shard
                .master
                .as_ref()
                .filter(|m| m.is_online() && !shard.ranges.is_empty())
                .and_then(|m| Some((m.host(), m.port_for(tls)?)));
            let Some((host, port)) = address else {
                shard_place.push(None);
                continue;
            };
            let place = match self
                .places
                .iter()
                .position(|p| p.host == host && p.port == port)
            {
                Some(i) => PlaceId(i),
                None => {
                    let id = PlaceId(self.places.len());
                    self.places.push(self.servers.node(host, port));
                    self.serving.push(false);
                    now_serving.push(false);
                    change.added.push(id);
                    id
                }
            };
            if !self.serving[place.0] && !change.added.contains(&place) {
                change.revived.push(place);
            }
            now_serving[place.0] = true;
            shard_place.push(Some(place));
        }
        change.revived.sort_unstable();
        change.revived.dedup();
        change.retired = (0..self.places.len())
            .filter(|&i| self.serving[i] && !now_serving[i])
            .map(PlaceId)
            .collect();
        self.serving = now_serving;
        self.topology = topology;
        self.shard_place = shard_place;
        change
    }

    /// The topology last taken.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The place serving `slot`; `None` while the slot has no online master.
    pub fn place_of_slot(&self, slot: Slot) -> Option<PlaceId> {
        let shard: ShardIndex = self.topology.shard_index(slot)?;
        self.shard_place.get(shard).copied().flatten()
    }

    /// The settings of a link to `place` (`None` for an id this placement never gave).
    pub fn server(&self, place: PlaceId) -> Option<&ServerConfig> {
        self.places.get(place.0)
    }

    /// Whether `place` owns slots now.
    pub fn is_serving(&self, place: PlaceId) -> bool {
        self.serving.get(place.0).copied().unwrap_or(false)
    }

    /// Every place ever seen (serving or retired), in id order.
    pub fn places(&self) -> impl Iterator<Item = PlaceId> + '_ {
        (0..self.places.len()).map(PlaceId)
    }
}
