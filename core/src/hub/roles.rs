//! Which link does what, looked up by role and by place instead of assumed from a position.
//!
//! A *place* is a server the hub keeps links to: the one server in single-server mode, or
//! one master in a cluster. Each place has at most one subscriber link and its own publish
//! links; one publish link, the presence link, carries every presence command (so presence
//! writes apply in order). Links are kept in one vector and a [`LinkId`] is a link's index in
//! it; nothing else about a position is assumed: the subscriber of a room's place, the
//! publish links of a place and the presence link are found here.

use crate::config::ServerConfig;
use crate::event::{LinkId, LinkRole};

/// A server the hub keeps links to (an index into [`Roles`]' places).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place(pub(crate) usize);

/// The links' roles and places.
#[derive(Debug)]
pub(crate) struct Roles {
    /// The servers, by [`Place`] index: where every link of that place connects.
    places: Vec<ServerConfig>,
    /// Per link (by index): its role and place.
    links: Vec<(LinkRole, Place)>,
    /// The link that carries presence commands (none in standalone mode).
    presence: Option<usize>,
    /// The publish links of each place, by [`Place`] index, in id order (the per-publish
    /// lookup: no scan of every link).
    place_publishers: Vec<Vec<usize>>,
    /// The subscriber link of each place, by [`Place`] index.
    place_subscriber: Vec<Option<usize>>,
    /// Cluster mode: the link that asks for the topology (`CLUSTER SHARDS`), to place 0.
    topology: Option<usize>,
}

impl Roles {
    /// Single-server mode: one place, its subscriber and `pool_size` publish links (at least
    /// one; the first carries presence).
    pub(crate) fn single(server: ServerConfig, pool_size: usize) -> Roles {
        let place = Place(0);
        let mut links = vec![(LinkRole::Subscriber, place)];
        links.extend((0..pool_size.max(1)).map(|_| (LinkRole::Publisher, place)));
        Roles {
            places: vec![server],
            place_publishers: vec![(1..links.len()).collect()],
            place_subscriber: vec![Some(0)],
            links,
            presence: Some(1),
            topology: None,
        }
    }

    /// Cluster mode before the first topology: one link, to place 0 (a seed node), that asks
    /// for the topology. Each master gets a place of its own ([`Roles::add_place`]).
    pub(crate) fn cluster(seed: ServerConfig) -> Roles {
        Roles {
            places: vec![seed],
            links: vec![(LinkRole::Topology, Place(0))],
            presence: None,
            place_publishers: vec![Vec::new()],
            place_subscriber: vec![None],
            topology: Some(0),
        }
    }

    /// The [`Place`] of a cluster placement's place (place 0 is the topology link's node).
    pub(crate) fn cluster_place(id: crate::cluster::PlaceId) -> Place {
        Place(id.0 + 1)
    }

    /// Adds a place (a master) with its subscriber link and `pool_size` publish links (at
    /// least one); returns the new links' indices, subscriber first.
    pub(crate) fn add_place(&mut self, server: ServerConfig, pool_size: usize) -> Vec<usize> {
        let place = Place(self.places.len());
        self.places.push(server);
        let first = self.links.len();
        self.links.push((LinkRole::Subscriber, place));
        self.links
            .extend((0..pool_size.max(1)).map(|_| (LinkRole::Publisher, place)));
        self.place_subscriber.push(Some(first));
        self.place_publishers
            .push((first + 1..self.links.len()).collect());
        (first..self.links.len()).collect()
    }

    /// Where place `place`'s links connect from now on (the topology link moves from seed to
    /// seed).
    pub(crate) fn set_server(&mut self, place: Place, server: ServerConfig) {
        if let Some(s) = self.places.get_mut(place.0) {
            *s = server;
        }
    }

    /// The links of a place: its subscriber (if any) and its publish links.
    pub(crate) fn links_of(&self, place: Place) -> impl Iterator<Item = usize> + '_ {
        self.subscriber_of(place)
            .into_iter()
            .chain(self.publishers_of(place).iter().copied())
    }

    /// The place link `idx` belongs to.
    pub(crate) fn place_of_link(&self, idx: usize) -> Place {
        self.links[idx].1
    }

    /// Makes `link` (a publish link) the presence link, or none.
    pub(crate) fn set_presence(&mut self, link: Option<usize>) {
        self.presence = link;
    }

    /// The topology link (cluster mode).
    pub(crate) fn topology(&self) -> Option<usize> {
        self.topology
    }

    /// Standalone mode: no place and no link (the hub delivers locally).
    pub(crate) fn standalone() -> Roles {
        Roles {
            places: Vec::new(),
            links: Vec::new(),
            presence: None,
            place_publishers: Vec::new(),
            place_subscriber: Vec::new(),
            topology: None,
        }
    }

    /// Whether there is no link at all (standalone mode).
    pub(crate) fn is_standalone(&self) -> bool {
        self.links.is_empty()
    }

    /// How many links there are (their ids are `0..len`).
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// The role of link `idx`.
    pub(crate) fn role(&self, idx: usize) -> LinkRole {
        self.links[idx].0
    }

    /// The server link `idx` connects to.
    pub(crate) fn server_of(&self, idx: usize) -> &ServerConfig {
        &self.places[self.links[idx].1 .0]
    }

    /// The subscriber link of a place, if it has one.
    pub(crate) fn subscriber_of(&self, place: Place) -> Option<usize> {
        self.place_subscriber.get(place.0).copied().flatten()
    }

    /// Every subscriber link.
    pub(crate) fn subscribers(&self) -> impl Iterator<Item = usize> + '_ {
        self.of_role(LinkRole::Subscriber)
    }

    fn of_role(&self, role: LinkRole) -> impl Iterator<Item = usize> + '_ {
        self.links
            .iter()
            .enumerate()
            .filter(move |(_, &(r, _))| r == role)
            .map(|(i, _)| i)
    }

    /// The publish links of a place, in id order (none for a place that does not exist).
    pub(crate) fn publishers_of(&self, place: Place) -> &[usize] {
        self.place_publishers
            .get(place.0)
            .map_or(&[], Vec::as_slice)
    }

    /// The publish link a room always uses in single-server mode (place 0); see
    /// [`Roles::publisher_of`].
    pub(crate) fn publisher_of_room(&self, room: &str) -> Option<usize> {
        self.publisher_of(Place(0), room)
    }

    /// The publish link of `place` a room always uses: one of the place's, chosen by a stable
    /// hash of the room id (FNV-1a: the same across runs and versions, unlike std's hasher).
    /// `None` when the place has no publish link (standalone mode: no link at all).
    pub(crate) fn publisher_of(&self, place: Place, room: &str) -> Option<usize> {
        let publishers = self.publishers_of(place);
        if let [only] = publishers {
            // One link: every room's (no hash to take).
            return Some(*only);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let n = publishers.len().max(1);
        publishers.get((h % n as u64) as usize).copied()
    }

    /// The link that carries presence commands (`None` in standalone mode).
    pub(crate) fn presence(&self) -> Option<usize> {
        self.presence
    }

    /// The id of link `idx`.
    pub(crate) fn id(idx: usize) -> LinkId {
        LinkId(u16::try_from(idx).unwrap_or(u16::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_server_roles_are_found_not_assumed() {
        let r = Roles::single(ServerConfig::default(), 3);
        assert_eq!(r.len(), 4);
        assert_eq!(r.subscribers().collect::<Vec<_>>(), [0]);
        assert_eq!(r.subscriber_of(Place(0)), Some(0));
        assert_eq!(
            r.of_role(LinkRole::Publisher).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(r.presence(), Some(1));
        assert_eq!(r.role(0), LinkRole::Subscriber);
        assert_eq!(r.role(2), LinkRole::Publisher);
        // Every room maps to one of its place's publish links, always the same one, and the
        // rooms spread over all of them.
        let mut seen = [false; 4];
        for i in 0..64 {
            let room = format!("room-{i}");
            let p = r.publisher_of_room(&room).unwrap();
            assert_eq!(Some(p), r.publisher_of_room(&room));
            assert_eq!(r.role(p), LinkRole::Publisher);
            seen[p] = true;
        }
        assert_eq!(seen, [false, true, true, true]);
        assert_eq!(r.server_of(2).port, ServerConfig::default().port);
        // Each place's list is its publish links, found by role and place.
        let scanned: Vec<usize> = r
            .of_role(LinkRole::Publisher)
            .filter(|&i| r.links[i].1 == Place(0))
            .collect();
        assert_eq!(r.publishers_of(Place(0)), &scanned[..]);
        assert!(r.publishers_of(Place(1)).is_empty());
    }

    #[test]
    fn standalone_has_no_link_of_any_role() {
        let r = Roles::standalone();
        assert!(r.is_standalone());
        assert_eq!(r.len(), 0);
        assert_eq!(
            r.subscribers().count() + r.of_role(LinkRole::Publisher).count(),
            0
        );
        assert_eq!(r.subscriber_of(Place(0)), None);
        assert_eq!(r.publisher_of_room("x"), None);
        assert_eq!(r.presence(), None);
        assert!(!Roles::single(ServerConfig::default(), 1).is_standalone());
    }
}
