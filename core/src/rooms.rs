//! Local membership and the per-room subscription reconciler.
//!
//! Each room with local members (or with a subscription command still unconfirmed) has a
//! [`RoomState`]. Whether the room is *wanted* is derived: it has members. At most one
//! (UN)SUBSCRIBE per room is outstanding at a time; when the wish changes while a command is in
//! flight, the reconciler waits for the confirmation and then sends the opposite command. So a
//! join that arrives while UNSUBSCRIBE is in flight always ends subscribed, and confirmations
//! that are duplicated or reordered cannot confuse it.

use std::collections::VecDeque;
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::HashMap;

use crate::envelope::{InstanceId, Trailer};
use crate::event::RoomState;
use crate::naming::{ConnId, RoomId};

/// What one origin last sent to a room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OriginSeq {
    origin: InstanceId,
    epoch: u64,
    last: u64,
}

/// How a received sequence number relates to what came before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// The next one expected, or the first from this origin (a baseline).
    InOrder,
    /// A new epoch: the origin restarted or forgot its stream.
    NewEpoch,
    /// Already delivered.
    Duplicate,
    /// Some numbers were skipped.
    Gap(std::ops::RangeInclusive<u64>),
}

/// One value or several: most rooms of a busy server have one local member and most
/// connections are in one room, so that case needs no allocation of its own. Several live
/// behind one box, which keeps `Few` at 16 bytes (the size of one id); none is `Many(None)`.
#[derive(Debug)]
// The box is the point: it keeps the enum at the size of `T` (clippy's `box_collection`).
#[allow(clippy::box_collection)]
enum Few<T> {
    One(T),
    Many(Option<Box<Vec<T>>>),
}

impl<T: PartialEq + Clone> Few<T> {
    const NONE: Few<T> = Few::Many(None);

    fn as_slice(&self) -> &[T] {
        match self {
            Few::One(c) => std::slice::from_ref(c),
            Few::Many(Some(v)) => v,
            Few::Many(None) => &[],
        }
    }

    fn push(&mut self, x: T) {
        match self {
            Few::Many(None) => *self = Few::One(x),
            Few::Many(Some(v)) => v.push(x),
            Few::One(first) => {
                let first = first.clone();
                *self = Few::Many(Some(Box::new(vec![first, x])));
            }
        }
    }

    fn remove(&mut self, x: &T) -> bool {
        match self {
            Few::One(c) if c == x => {
                *self = Self::NONE;
                true
            }
            Few::One(_) | Few::Many(None) => false,
            Few::Many(Some(v)) => match v.iter().position(|c| c == x) {
                Some(i) => {
                    v.swap_remove(i);
                    if v.len() <= 1 {
                        // Back to the inline form (frees the box).
                        *self = v.pop().map_or(Self::NONE, Few::One);
                    }
                    true
                }
                None => false,
            },
        }
    }

    fn into_vec(self) -> Vec<T> {
        match self {
            Few::One(c) => vec![c],
            Few::Many(Some(v)) => *v,
            Few::Many(None) => Vec::new(),
        }
    }
}

/// What only rooms that receive messages need: kept out of line so that a quiet room costs
/// one pointer for it.
#[derive(Debug, Default)]
struct Traffic {
    snapshot: Option<Arc<[ConnId]>>,
    origins: Vec<OriginSeq>,
}

#[derive(Debug)]
pub(crate) struct Room {
    members: Few<ConnId>,
    traffic: Option<Box<Traffic>>,
    pub(crate) state: RoomState,
    queued: bool,
}

impl Room {
    fn new() -> Room {
        Room {
            members: Few::NONE,
            traffic: None,
            state: RoomState::Pending,
            queued: false,
        }
    }

    fn wanted(&self) -> bool {
        !self.members.as_slice().is_empty()
    }

    fn members_changed(&mut self) {
        if let Some(t) = &mut self.traffic {
            t.snapshot = None;
        }
    }

    /// The members, shared with every delivery until membership changes.
    pub(crate) fn recipients(&mut self) -> Arc<[ConnId]> {
        let members = &self.members;
        self.traffic
            .get_or_insert_with(Box::default)
            .snapshot
            .get_or_insert_with(|| Arc::from(members.as_slice()))
            .clone()
    }

    pub(crate) fn members(&self) -> &[ConnId] {
        self.members.as_slice()
    }

    pub(crate) fn has_member(&self, conn: &str) -> Option<&ConnId> {
        self.members.as_slice().iter().find(|c| c.as_str() == conn)
    }

    /// Checks a trailer against what this origin sent before and records it.
    pub(crate) fn check_seq(&mut self, t: &Trailer, max_origins: usize) -> SeqCheck {
        let origins = &mut self.traffic.get_or_insert_with(Box::default).origins;
        if let Some(i) = origins.iter().position(|o| o.origin == t.origin) {
            let o = &mut origins[i];
            let check = if o.epoch != t.epoch {
                o.epoch = t.epoch;
                o.last = t.seq;
                SeqCheck::NewEpoch
            } else if t.seq <= o.last {
                return SeqCheck::Duplicate;
            } else if t.seq == o.last + 1 {
                o.last = t.seq;
                SeqCheck::InOrder
            } else {
                let gap = o.last + 1..=t.seq - 1;
                o.last = t.seq;
                SeqCheck::Gap(gap)
            };
            // Most recently seen goes last, so eviction takes the least recent. (It is last
            // already when one origin sends a run of messages, the usual case.)
            if i + 1 != origins.len() {
                let o = origins.remove(i);
                origins.push(o);
            }
            check
        } else {
            if origins.len() >= max_origins {
                origins.remove(0);
            }
            origins.push(OriginSeq {
                origin: t.origin,
                epoch: t.epoch,
                last: t.seq,
            });
            SeqCheck::InOrder
        }
    }
}

/// A change the hub reports as an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Subscription confirmed for a wanted room.
    Live(RoomId),
    /// Confirmed subscription lost by a server-side unsubscribe.
    ServerUnsubscribed(RoomId),
    /// A confirmation that matched nothing outstanding (duplicate or stray).
    Stray,
    /// Nothing to report.
    Quiet,
}

/// All local rooms and connections.
#[derive(Debug)]
pub(crate) struct Rooms {
    map: HashMap<RoomId, Room, FixedState>,
    conns: HashMap<ConnId, Few<RoomId>, FixedState>,
    dirty: VecDeque<RoomId>,
    in_flight: usize,
    memberships: usize,
}

impl Rooms {
    pub(crate) fn new(seed: u64) -> Self {
        Rooms {
            map: HashMap::with_hasher(FixedState::with_seed(seed)),
            conns: HashMap::with_hasher(FixedState::with_seed(seed.rotate_left(17))),
            dirty: VecDeque::new(),
            in_flight: 0,
            memberships: 0,
        }
    }

    pub(crate) fn get(&self, room: &str) -> Option<&Room> {
        self.map.get(room)
    }

    pub(crate) fn get_mut(&mut self, room: &str) -> Option<&mut Room> {
        self.map.get_mut(room)
    }

    /// The room and its (shared) id, in one lookup.
    pub(crate) fn get_with_id(&mut self, room: &str) -> Option<(&RoomId, &mut Room)> {
        self.map.get_key_value_mut(room)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn memberships(&self) -> usize {
        self.memberships
    }

    pub(crate) fn connections(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&RoomId, &Room)> {
        self.map.iter()
    }

    pub(crate) fn rooms_of(&self, conn: &str) -> &[RoomId] {
        self.conns.get(conn).map(Few::as_slice).unwrap_or(&[])
    }

    pub(crate) fn count_in(&self, state: RoomState) -> usize {
        self.map.values().filter(|r| r.state == state).count()
    }

    fn mark_dirty(dirty: &mut VecDeque<RoomId>, id: &RoomId, room: &mut Room) {
        if !room.queued {
            room.queued = true;
            dirty.push_back(id.clone());
        }
    }

    /// Adds a member. Returns false if it already was one.
    pub(crate) fn join(&mut self, id: &RoomId, conn: &ConnId) -> bool {
        // One allocation per room id and per connection id, however many memberships.
        let id = match self.map.get_key_value(id.as_str()) {
            Some((k, _)) => k.clone(),
            None => id.clone(),
        };
        let conn = match self.conns.get_key_value(conn.as_str()) {
            Some((k, _)) => k.clone(),
            None => conn.clone(),
        };
        let room = self.map.entry(id.clone()).or_insert_with(Room::new);
        if room.members().contains(&conn) {
            return false;
        }
        let was_wanted = room.wanted();
        room.members.push(conn.clone());
        room.members_changed();
        self.memberships += 1;
        self.conns.entry(conn).or_insert(Few::NONE).push(id.clone());
        if !was_wanted && room.state == RoomState::Pending {
            Self::mark_dirty(&mut self.dirty, &id, room);
        }
        true
    }

    /// Removes a member. Returns false if it was not one.
    pub(crate) fn leave(&mut self, id: &RoomId, conn: &ConnId) -> bool {
        let Some(room) = self.map.get_mut(id) else {
            return false;
        };
        if !room.members.remove(conn) {
            return false;
        }
        room.members_changed();
        self.memberships -= 1;
        if let Some(rooms) = self.conns.get_mut(conn) {
            rooms.remove(id);
            if rooms.as_slice().is_empty() {
                self.conns.remove(conn);
            }
        }
        self.unwanted(id);
        true
    }

    /// Removes a connection from every room; returns the rooms it left. Linear in the
    /// connection's rooms (its room list is taken whole, not searched once per room).
    pub(crate) fn disconnect(&mut self, conn: &ConnId) -> Vec<RoomId> {
        let Some(rooms) = self.conns.remove(conn.as_str()).map(Few::into_vec) else {
            return Vec::new();
        };
        for id in &rooms {
            if let Some(room) = self.map.get_mut(id) {
                if room.members.remove(conn) {
                    room.members_changed();
                    self.memberships -= 1;
                    self.unwanted(id);
                }
            }
        }
        rooms
    }

    /// What a room that just lost a member does if it has none left.
    fn unwanted(&mut self, id: &RoomId) {
        let Some(room) = self.map.get_mut(id) else {
            return;
        };
        if room.wanted() {
            return;
        }
        match room.state {
            // Nothing sent yet: forget it.
            RoomState::Pending => {
                self.map.remove(id);
            }
            RoomState::Live => Self::mark_dirty(&mut self.dirty, id, room),
            // Waiting for a confirmation; the reconciler acts when it comes.
            RoomState::Subscribing | RoomState::Unsubscribing => {}
        }
    }

    /// Takes the next commands to send, at most `cap` channels in flight in all.
    /// Returns (rooms to subscribe, rooms to unsubscribe), in the order they became dirty.
    pub(crate) fn take_commands(&mut self, cap: usize) -> (Vec<RoomId>, Vec<RoomId>) {
        let mut sub = Vec::new();
        let mut unsub = Vec::new();
        while self.in_flight < cap {
            let Some(id) = self.dirty.pop_front() else {
                crate::hub::shrink_idle(&mut self.dirty);
                break;
            };
            let Some(room) = self.map.get_mut(&id) else {
                continue;
            };
            room.queued = false;
            match (room.state, room.wanted()) {
                (RoomState::Pending, true) => {
                    room.state = RoomState::Subscribing;
                    self.in_flight += 1;
                    sub.push(id);
                }
                (RoomState::Pending, false) => {
                    self.map.remove(&id);
                }
                (RoomState::Live, false) => {
                    room.state = RoomState::Unsubscribing;
                    self.in_flight += 1;
                    unsub.push(id);
                }
                _ => {}
            }
        }
        (sub, unsub)
    }

    /// Redis confirmed a SUBSCRIBE of this room's channel.
    pub(crate) fn on_subscribed(&mut self, id: RoomId) -> Transition {
        let Some(room) = self.map.get_mut(&id) else {
            return Transition::Stray;
        };
        if room.state != RoomState::Subscribing {
            return Transition::Stray;
        }
        self.in_flight -= 1;
        room.state = RoomState::Live;
        if room.wanted() {
            Transition::Live(id)
        } else {
            Self::mark_dirty(&mut self.dirty, &id, room);
            Transition::Quiet
        }
    }

    /// Redis confirmed an UNSUBSCRIBE, or unsubscribed the channel on its own.
    pub(crate) fn on_unsubscribed(&mut self, id: RoomId) -> Transition {
        let Some(room) = self.map.get_mut(&id) else {
            return Transition::Stray;
        };
        match room.state {
            RoomState::Unsubscribing => {
                self.in_flight -= 1;
                if room.wanted() {
                    room.state = RoomState::Pending;
                    Self::mark_dirty(&mut self.dirty, &id, room);
                } else {
                    self.map.remove(&id);
                }
                Transition::Quiet
            }
            RoomState::Live => {
                room.state = RoomState::Pending;
                if room.wanted() {
                    Self::mark_dirty(&mut self.dirty, &id, room);
                    Transition::ServerUnsubscribed(id)
                } else {
                    Transition::Quiet
                }
            }
            // Earlier than our SUBSCRIBE in the stream: a copy of an old confirmation.
            RoomState::Subscribing | RoomState::Pending => Transition::Stray,
        }
    }

    /// The subscriber link is gone, and every subscription with it. Returns the rooms that were
    /// live (they may miss messages) and those that were wanted (now pending again).
    pub(crate) fn on_link_lost(&mut self) -> (Vec<RoomId>, Vec<RoomId>) {
        let mut live = Vec::new();
        let mut wanted = Vec::new();
        self.in_flight = 0;
        self.dirty.clear();
        self.map.retain(|id, room| {
            room.queued = false;
            if room.state == RoomState::Live && room.wanted() {
                live.push(id.clone());
            }
            if !room.wanted() {
                return false;
            }
            room.state = RoomState::Pending;
            wanted.push(id.clone());
            true
        });
        // Resubscribe in a stable order (the map's order depends on the seeded hasher).
        wanted.sort_unstable();
        for id in &wanted {
            if let Some(room) = self.map.get_mut(id) {
                Self::mark_dirty(&mut self.dirty, id, room);
            }
        }
        live.sort_unstable();
        (live, wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RoomId {
        RoomId::try_from(s).unwrap()
    }
    fn c(s: &str) -> ConnId {
        ConnId::try_from(s).unwrap()
    }

    #[test]
    fn first_join_subscribes_last_leave_unsubscribes() {
        let mut rooms = Rooms::new(1);
        assert!(rooms.join(&r("a"), &c("1")));
        assert!(!rooms.join(&r("a"), &c("1")));
        assert!(rooms.join(&r("a"), &c("2")));
        assert_eq!(rooms.take_commands(10), (vec![r("a")], vec![]));
        assert_eq!(rooms.on_subscribed(r("a")), Transition::Live(r("a")));
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![]));
        rooms.leave(&r("a"), &c("2"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![r("a")]));
        assert_eq!(rooms.on_unsubscribed(r("a")), Transition::Quiet);
        assert_eq!(rooms.len(), 0);
        assert_eq!(rooms.in_flight(), 0);
        assert_eq!(rooms.connections(), 0);
    }

    #[test]
    fn join_while_unsubscribe_in_flight_ends_subscribed() {
        let mut rooms = Rooms::new(1);
        rooms.join(&r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"));
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.take_commands(10).1, vec![r("a")]);
        rooms.join(&r("a"), &c("2"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![]));
        assert_eq!(rooms.on_unsubscribed(r("a")), Transition::Quiet);
        assert_eq!(rooms.take_commands(10), (vec![r("a")], vec![]));
        assert_eq!(rooms.on_subscribed(r("a")), Transition::Live(r("a")));
    }

    #[test]
    fn leave_while_subscribe_in_flight_unsubscribes_after_confirmation() {
        let mut rooms = Rooms::new(1);
        rooms.join(&r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.on_subscribed(r("a")), Transition::Quiet);
        assert_eq!(rooms.take_commands(10), (vec![], vec![r("a")]));
        rooms.on_unsubscribed(r("a"));
        assert_eq!(rooms.len(), 0);
    }

    #[test]
    fn join_and_leave_before_sending_sends_nothing() {
        let mut rooms = Rooms::new(1);
        rooms.join(&r("a"), &c("1"));
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![]));
        assert_eq!(rooms.len(), 0);
    }

    #[test]
    fn duplicates_and_strays_change_nothing() {
        let mut rooms = Rooms::new(1);
        rooms.join(&r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"));
        assert_eq!(rooms.on_subscribed(r("a")), Transition::Stray);
        assert_eq!(rooms.on_subscribed(r("zzz")), Transition::Stray);
        assert_eq!(rooms.on_unsubscribed(r("zzz")), Transition::Stray);
        assert_eq!(rooms.get("a").unwrap().state, RoomState::Live);
    }

    #[test]
    fn server_unsubscribe_resubscribes() {
        let mut rooms = Rooms::new(1);
        rooms.join(&r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"));
        assert_eq!(
            rooms.on_unsubscribed(r("a")),
            Transition::ServerUnsubscribed(r("a"))
        );
        assert_eq!(rooms.take_commands(10), (vec![r("a")], vec![]));
    }

    #[test]
    fn link_loss_keeps_wanted_rooms_and_paces() {
        let mut rooms = Rooms::new(1);
        for i in 0..5 {
            rooms.join(&r(&format!("r{i}")), &c("1"));
        }
        let (sub, _) = rooms.take_commands(3);
        assert_eq!(sub.len(), 3);
        rooms.on_subscribed(sub[0].clone());
        rooms.leave(&sub[1], &c("1"));
        let (live, wanted) = rooms.on_link_lost();
        assert_eq!(live, vec![sub[0].clone()]);
        assert_eq!(wanted.len(), 4);
        assert_eq!(rooms.len(), 4);
        assert_eq!(rooms.take_commands(2).0.len(), 2);
        assert_eq!(rooms.take_commands(2).0.len(), 0);
        assert_eq!(rooms.take_commands(4).0.len(), 2);
    }

    #[test]
    fn disconnect_leaves_everything() {
        let mut rooms = Rooms::new(1);
        rooms.join(&r("a"), &c("1"));
        rooms.join(&r("b"), &c("1"));
        rooms.join(&r("b"), &c("2"));
        let mut left = rooms.disconnect(&c("1"));
        left.sort();
        assert_eq!(left, vec![r("a"), r("b")]);
        assert_eq!(rooms.memberships(), 1);
        assert_eq!(rooms.len(), 1);
    }

    #[test]
    fn sequence_checks() {
        let mut room = Room::new();
        room.state = RoomState::Live;
        let t = |origin, epoch, seq| Trailer {
            origin: InstanceId(origin),
            epoch,
            seq,
        };
        assert_eq!(room.check_seq(&t(1, 1, 5), 2), SeqCheck::InOrder);
        assert_eq!(room.check_seq(&t(1, 1, 6), 2), SeqCheck::InOrder);
        assert_eq!(room.check_seq(&t(1, 1, 6), 2), SeqCheck::Duplicate);
        assert_eq!(room.check_seq(&t(1, 1, 9), 2), SeqCheck::Gap(7..=8));
        assert_eq!(room.check_seq(&t(1, 2, 1), 2), SeqCheck::NewEpoch);
        assert_eq!(room.check_seq(&t(2, 1, 1), 2), SeqCheck::InOrder);
        assert_eq!(room.check_seq(&t(3, 1, 1), 2), SeqCheck::InOrder);
        // Origin 1 was least recently seen and got evicted: a new baseline.
        assert_eq!(room.check_seq(&t(1, 2, 1), 2), SeqCheck::InOrder);
    }
}
