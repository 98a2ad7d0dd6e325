//! Local membership and the per-room subscription reconciler.
//!
//! Each room with local members (or with a subscription command still unconfirmed) has a
//! [`RoomState`]. Whether the room is *wanted* is derived: it has members. At most one
//! (UN)SUBSCRIBE per room is outstanding at a time; when the wish changes while a command is in
//! flight, the reconciler waits for the confirmation and then sends the opposite command. So a
//! join that arrives while UNSUBSCRIBE is in flight always ends subscribed, and confirmations
//! that are duplicated or reordered cannot confuse it.
//!
//! # Layout
//!
//! Rooms live in a slab (a vector indexed by `u32`), found by id through a table of indices
//! (a hash table holding only the `u32`, the id itself is in the slab entry: inline when
//! short, see [`RoomId`]). Connections live in a second slab the same way, each slot with a
//! generation. A room's members are connection slots and a connection's rooms are room slots,
//! 4 bytes each while there is one, in a shared pool of vectors when there are more. A quiet
//! room with one member costs one 32-byte slab entry, its index in the table and 4 bytes in its
//! connection's list.
//!
//! A connection's slot ([`ConnSlot`]) is handed out so that the application can keep its own
//! per-connection state in a vector indexed by it. The slot is the connection's while it is a
//! member of some room; when it leaves its last room the slot is freed and its generation
//! moves on, so a `ConnSlot` kept from before (in a delivery still queued, say) no longer
//! matches the slot's new occupant.

use std::collections::VecDeque;
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::HashTable;
use std::hash::BuildHasher;

use crate::envelope::{InstanceId, Trailer};
use crate::event::RoomState;
use crate::naming::{ConnId, RoomId};

/// An empty [`Set`].
const NONE: u32 = u32::MAX;
/// The bit that marks a [`Set`] of several values (the rest is their index in the [`Pool`]).
const POOLED: u32 = 1 << 31;
/// How many rooms, and how many connections, a hub can hold at once (slot numbers stay below
/// the [`POOLED`] bit). About two thousand million: memory runs out first.
pub(crate) const MAX_SLOTS: usize = (POOLED - 1) as usize;

/// A set of `u32` below [`POOLED`] in 4 bytes: none ([`NONE`]), one (itself), or several (an
/// index into the [`Pool`] with the [`POOLED`] bit). Most rooms of a busy server have one
/// local member and most connections are in one room, so that case needs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Set(u32);

impl Default for Set {
    fn default() -> Set {
        Set::EMPTY
    }
}

impl Set {
    const EMPTY: Set = Set(NONE);

    fn is_empty(self) -> bool {
        self.0 == NONE
    }
}

/// The vectors behind every [`Set`] of more than one value, with a free list.
#[derive(Debug, Default)]
struct Pool {
    lists: Vec<Vec<u32>>,
    free: Vec<u32>,
}

impl Pool {
    fn slice<'a>(&'a self, set: &'a Set) -> &'a [u32] {
        match set.0 {
            NONE => &[],
            v if v & POOLED != 0 => &self.lists[(v & !POOLED) as usize],
            _ => std::slice::from_ref(&set.0),
        }
    }

    /// Adds `x` (the caller knows it is not there yet).
    fn push(&mut self, set: &mut Set, x: u32) {
        match set.0 {
            NONE => set.0 = x,
            v if v & POOLED != 0 => self.lists[(v & !POOLED) as usize].push(x),
            first => {
                let list = vec![first, x];
                let i = match self.free.pop() {
                    Some(i) => {
                        self.lists[i as usize] = list;
                        i
                    }
                    None => {
                        self.lists.push(list);
                        // At most one list per set, and sets are fewer than MAX_SLOTS.
                        (self.lists.len() - 1) as u32
                    }
                };
                set.0 = i | POOLED;
            }
        }
    }

    /// Removes `x`; false if it was not there. The last of a set's values but one goes back
    /// inline (and its vector's memory is freed).
    fn remove(&mut self, set: &mut Set, x: u32) -> bool {
        match set.0 {
            NONE => false,
            v if v & POOLED != 0 => {
                let i = v & !POOLED;
                let list = &mut self.lists[i as usize];
                let Some(p) = list.iter().position(|&y| y == x) else {
                    return false;
                };
                list.swap_remove(p);
                if list.len() <= 1 {
                    set.0 = list.pop().unwrap_or(NONE);
                    *list = Vec::new();
                    self.free.push(i);
                }
                true
            }
            v if v == x => {
                set.0 = NONE;
                true
            }
            _ => false,
        }
    }

    /// Empties the set; returns its values.
    fn take(&mut self, set: &mut Set) -> Vec<u32> {
        let v = std::mem::replace(set, Set::EMPTY).0;
        match v {
            NONE => Vec::new(),
            v if v & POOLED != 0 => {
                let i = v & !POOLED;
                self.free.push(i);
                std::mem::take(&mut self.lists[i as usize])
            }
            v => vec![v],
        }
    }
}

/// A local connection's place in the hub: a dense index (for a vector of the application's
/// own per-connection state) and the generation that tells its occupants apart.
///
/// The slot is the connection's from its first join until it leaves its last room
/// ([`crate::Hub::leave`] of the last one, or [`crate::Hub::disconnect`]). Then the slot is
/// free and its generation moves on: a `ConnSlot` from before (in a [`crate::Delivery`] still
/// queued, say) compares unequal to the one the next occupant of the index gets, so check the
/// generation before using state kept at the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnSlot {
    index: u32,
    generation: u32,
}

impl ConnSlot {
    /// The slot's index: dense, from 0, below the most connections held at once.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The slot's generation: each occupant of an index gets a new one.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// One recipient of a delivery: the connection's id and its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The connection.
    pub conn: ConnId,
    /// Its slot when the message arrived.
    pub slot: ConnSlot,
}

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

/// What only rooms that receive messages need: kept out of line so that a quiet room costs
/// one pointer for it.
#[derive(Debug, Default)]
struct Traffic {
    snapshot: Option<Arc<[Recipient]>>,
    /// The origin seen last, here rather than in `older`: a room that hears from one origin
    /// at a time (the usual case) checks its numbers without reaching another allocation.
    recent: Option<OriginSeq>,
    /// The other origins, least recently seen first.
    older: Vec<OriginSeq>,
}

/// A room's slab entry.
#[derive(Debug)]
pub(crate) struct Room {
    id: RoomId,
    members: Set,
    pub(crate) state: RoomState,
    queued: bool,
    /// The subscriber link the room's SUBSCRIBE went to while it is `Subscribing`, `Live` or
    /// `Unsubscribing` ([`NO_LINK`] while `Pending`): in a cluster each master has its own.
    link: u16,
    traffic: Option<Box<Traffic>>,
}

/// Rooms to subscribe or leave, each with its subscriber link ([`Rooms::take_routed`]).
pub(crate) type Routed = Vec<(RoomId, u16)>;

/// [`Room::link`] of a room subscribed nowhere.
pub(crate) const NO_LINK: u16 = u16::MAX;

const _: () = assert!(std::mem::size_of::<Option<Room>>() == 32);

impl Room {
    fn new(id: RoomId) -> Room {
        Room {
            id,
            members: Set::EMPTY,
            state: RoomState::Pending,
            queued: false,
            link: NO_LINK,
            traffic: None,
        }
    }

    fn wanted(&self) -> bool {
        !self.members.is_empty()
    }

    fn members_changed(&mut self) {
        if let Some(t) = &mut self.traffic {
            t.snapshot = None;
        }
    }
}

/// Checks a trailer against what this origin sent to the room before and records it. At
/// most `max_origins` origins are remembered per room; a new one beyond that evicts the least
/// recently seen (if that one sends again, its next number is a new baseline). A duplicate
/// changes nothing, not even how recently its origin counts as seen.
fn check_seq(traffic: &mut Option<Box<Traffic>>, t: &Trailer, max_origins: usize) -> SeqCheck {
    let tr = traffic.get_or_insert_with(Box::default);
    if let Some(o) = tr.recent.as_mut().filter(|o| o.origin == t.origin) {
        return advance(o, t);
    }
    let (seen, check) = match tr.older.iter().position(|o| o.origin == t.origin) {
        Some(i) => {
            let o = &mut tr.older[i];
            let check = advance(o, t);
            if check == SeqCheck::Duplicate {
                return check;
            }
            (tr.older.remove(i), check)
        }
        None => {
            if tr.older.len() + usize::from(tr.recent.is_some()) >= max_origins {
                // The least recently seen goes: the front of `older`, or `recent` if it is
                // the only one remembered.
                if tr.older.is_empty() {
                    tr.recent = None;
                } else {
                    tr.older.remove(0);
                }
            }
            let new = OriginSeq {
                origin: t.origin,
                epoch: t.epoch,
                last: t.seq,
            };
            (new, SeqCheck::InOrder)
        }
    };
    if let Some(previous) = tr.recent.replace(seen) {
        tr.older.push(previous);
    }
    check
}

/// Checks and records the next trailer of an origin already remembered.
fn advance(o: &mut OriginSeq, t: &Trailer) -> SeqCheck {
    if o.epoch != t.epoch {
        o.epoch = t.epoch;
        o.last = t.seq;
        SeqCheck::NewEpoch
    } else if t.seq <= o.last {
        SeqCheck::Duplicate
    } else if t.seq == o.last + 1 {
        o.last = t.seq;
        SeqCheck::InOrder
    } else {
        let gap = o.last + 1..=t.seq - 1;
        o.last = t.seq;
        SeqCheck::Gap(gap)
    }
}

/// A connection's slab entry.
#[derive(Debug, Default)]
struct ConnEntry {
    /// The occupant, `None` while the slot is free.
    id: Option<ConnId>,
    generation: u32,
    rooms: Set,
}

/// The local members of a room, in membership order.
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    slots: &'a [u32],
    conns: &'a [ConnEntry],
}

impl<'a> Members<'a> {
    /// The members' ids and slots.
    fn entries(&self) -> impl Iterator<Item = (&'a ConnId, ConnSlot)> + 'a {
        let conns: &'a [ConnEntry] = self.conns;
        self.slots.iter().filter_map(move |&s| {
            let e = conns.get(s as usize)?;
            let slot = ConnSlot {
                index: s,
                generation: e.generation,
            };
            Some((e.id.as_ref()?, slot))
        })
    }

    /// The members' ids.
    pub fn iter(&self) -> impl Iterator<Item = &'a ConnId> + 'a {
        self.entries().map(|(id, _)| id)
    }

    /// The members' slots.
    pub fn slots(&self) -> impl Iterator<Item = ConnSlot> + 'a {
        self.entries().map(|(_, slot)| slot)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The members' ids, copied out.
    pub fn to_vec(&self) -> Vec<ConnId> {
        self.iter().cloned().collect()
    }

    /// The member with this id, if it is one.
    pub fn find(&self, conn: &str) -> Option<&'a ConnId> {
        self.iter().find(|c| c.as_bytes() == conn.as_bytes())
    }
}

impl<'a> IntoIterator for Members<'a> {
    type Item = &'a ConnId;
    type IntoIter = Box<dyn Iterator<Item = &'a ConnId> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// The rooms a local connection is in, in the order it joined them (a leave moves the last
/// one into the gap).
#[derive(Debug, Clone, Copy)]
pub struct RoomsOf<'a> {
    slots: &'a [u32],
    rooms: &'a [Option<Room>],
}

impl<'a> RoomsOf<'a> {
    /// The rooms' ids.
    pub fn iter(&self) -> impl Iterator<Item = &'a RoomId> + 'a {
        let rooms: &'a [Option<Room>] = self.rooms;
        self.slots
            .iter()
            .filter_map(move |&s| rooms[s as usize].as_ref().map(|r| &r.id))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The rooms' ids, copied out.
    pub fn to_vec(&self) -> Vec<RoomId> {
        self.iter().cloned().collect()
    }
}

/// A room as the hub reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomRef<'a> {
    pub(crate) state: RoomState,
    members: Members<'a>,
}

impl<'a> RoomRef<'a> {
    pub(crate) fn members(&self) -> Members<'a> {
        self.members
    }
}

/// A room as the hub's delivery paths change it. Its members are read only when needed (most
/// messages find the recipients' snapshot made already).
#[derive(Debug)]
pub(crate) struct RoomMut<'a> {
    members: Set,
    pool: &'a Pool,
    conns: &'a [ConnEntry],
    traffic: &'a mut Option<Box<Traffic>>,
}

impl<'a> RoomMut<'a> {
    pub(crate) fn members(&self) -> Members<'_> {
        Members {
            slots: self.pool.slice(&self.members),
            conns: self.conns,
        }
    }

    /// Whether the room has no members (it waits for its UNSUBSCRIBE).
    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn has_member(&self, conn: &str) -> Option<&ConnId> {
        self.members().find(conn)
    }

    pub(crate) fn check_seq(&mut self, t: &Trailer, max_origins: usize) -> SeqCheck {
        check_seq(self.traffic, t, max_origins)
    }

    /// The members, shared with every delivery until membership changes.
    pub(crate) fn recipients(&mut self) -> Arc<[Recipient]> {
        let traffic = self.traffic.get_or_insert_with(Box::default);
        match &traffic.snapshot {
            Some(s) => s.clone(),
            None => {
                let members = Members {
                    slots: self.pool.slice(&self.members),
                    conns: self.conns,
                };
                traffic.snapshot.insert(snapshot(members)).clone()
            }
        }
    }
}

/// A new recipients snapshot (after a membership change): out of the receive path's way.
#[cold]
#[inline(never)]
fn snapshot(members: Members<'_>) -> Arc<[Recipient]> {
    members
        .entries()
        .map(|(conn, slot)| Recipient {
            conn: conn.clone(),
            slot,
        })
        .collect()
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

/// What [`Rooms::join`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinOutcome {
    /// False if the connection already was a member.
    pub(crate) added: bool,
    /// The connection's slot.
    pub(crate) slot: ConnSlot,
    /// The room's id (shared with the room's entry when long).
    pub(crate) room: RoomId,
    /// The room's state now.
    pub(crate) state: RoomState,
}

/// All local rooms and connections.
#[derive(Debug)]
pub(crate) struct Rooms {
    hasher: FixedState,
    /// Room id → index in `slab`.
    index: HashTable<u32>,
    slab: Vec<Option<Room>>,
    /// Free room slots. A room removed while queued in `dirty` is freed when its entry comes
    /// off the queue (so a queue entry never names another room).
    free: Vec<u32>,
    conn_hasher: FixedState,
    /// Connection id → index in `conns`.
    conn_index: HashTable<u32>,
    conns: Vec<ConnEntry>,
    conn_free: Vec<u32>,
    pool: Pool,
    dirty: VecDeque<u32>,
    /// Rooms waiting for a subscriber link that cannot take them yet (cluster mode: their
    /// slot has no known owner, or its subscriber is not ready). Marked `queued` like those in
    /// `dirty`, and moved back there by [`Rooms::release_held`].
    held: Vec<u32>,
    in_flight: usize,
    memberships: usize,
    /// Bumped whenever a slot is given to a room: a slot remembered with the generation it
    /// was found under still holds the same room while the generation is unchanged.
    generation: u64,
    /// Rooms [`Rooms::disconnect`] visited in all (tests of its cost).
    #[cfg(test)]
    visited: usize,
}

impl Rooms {
    pub(crate) fn new(seed: u64) -> Self {
        Rooms {
            hasher: FixedState::with_seed(seed),
            index: HashTable::new(),
            slab: Vec::new(),
            free: Vec::new(),
            conn_hasher: FixedState::with_seed(seed.rotate_left(17)),
            conn_index: HashTable::new(),
            conns: Vec::new(),
            conn_free: Vec::new(),
            pool: Pool::default(),
            dirty: VecDeque::new(),
            held: Vec::new(),
            in_flight: 0,
            generation: 0,
            memberships: 0,
            #[cfg(test)]
            visited: 0,
        }
    }

    /// The slab index of a room.
    fn find(&self, room: &str) -> Option<u32> {
        self.slot_of_bytes(room.as_bytes())
    }

    /// [`Rooms::find`] by the id's bytes, for [`Rooms::get_at`]: the index hashes bytes, so a
    /// channel's id part can be looked up before (or without) checking that it is text. Only
    /// checked ids are ever stored, so a hit is one.
    pub(crate) fn slot_of_bytes(&self, room: &[u8]) -> Option<u32> {
        let slab = &self.slab;
        self.index
            .find(self.hasher.hash_one(room), |&i| {
                slab[i as usize]
                    .as_ref()
                    .is_some_and(|r| r.id.as_bytes() == room)
            })
            .copied()
    }

    /// The slab index of a connection.
    fn find_conn(&self, conn: &str) -> Option<u32> {
        let conns = &self.conns;
        self.conn_index
            .find(self.conn_hasher.hash_one(conn), |&i| {
                conns[i as usize]
                    .id
                    .as_ref()
                    .is_some_and(|c| c.as_bytes() == conn.as_bytes())
            })
            .copied()
    }

    fn room_ref(&self, i: u32) -> Option<RoomRef<'_>> {
        let room = self.slab[i as usize].as_ref()?;
        Some(RoomRef {
            state: room.state,
            members: Members {
                slots: self.pool.slice(&room.members),
                conns: &self.conns,
            },
        })
    }

    pub(crate) fn get(&self, room: &str) -> Option<RoomRef<'_>> {
        self.room_ref(self.find(room)?)
    }

    pub(crate) fn get_mut(&mut self, room: &str) -> Option<RoomMut<'_>> {
        Some(self.get_with_id(room)?.1)
    }

    /// The room and its (shared) id, in one lookup.
    pub(crate) fn get_with_id(&mut self, room: &str) -> Option<(&RoomId, RoomMut<'_>)> {
        let i = self.find(room)?;
        self.get_at(i)
    }

    /// The slots' generation: while it stays the same, every slot holds the room it held
    /// (or is empty, if its room was removed).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// [`Rooms::get_with_id`] by a slot from [`Rooms::slot_of_bytes`].
    pub(crate) fn get_at(&mut self, i: u32) -> Option<(&RoomId, RoomMut<'_>)> {
        let Room {
            id,
            members,
            traffic,
            ..
        } = self.slab[i as usize].as_mut()?;
        Some((
            &*id,
            RoomMut {
                members: *members,
                pool: &self.pool,
                conns: &self.conns,
                traffic,
            },
        ))
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn memberships(&self) -> usize {
        self.memberships
    }

    pub(crate) fn connections(&self) -> usize {
        self.conn_index.len()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Every room, in slab order (deterministic: it depends only on the order of the calls).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&RoomId, RoomRef<'_>)> + '_ {
        self.slab.iter().enumerate().filter_map(|(i, r)| {
            let r = r.as_ref()?;
            Some((&r.id, self.room_ref(i as u32)?))
        })
    }

    pub(crate) fn rooms_of(&self, conn: &str) -> RoomsOf<'_> {
        let slots = match self.find_conn(conn) {
            Some(c) => self.pool.slice(&self.conns[c as usize].rooms),
            None => &[],
        };
        RoomsOf {
            slots,
            rooms: &self.slab,
        }
    }

    pub(crate) fn members_of(&self, room: &str) -> Members<'_> {
        self.get(room).map_or(
            Members {
                slots: &[],
                conns: &self.conns,
            },
            |r| r.members,
        )
    }

    /// The connection's slot, if it is a member of some room.
    pub(crate) fn conn_slot(&self, conn: &str) -> Option<ConnSlot> {
        let index = self.find_conn(conn)?;
        Some(ConnSlot {
            index,
            generation: self.conns[index as usize].generation,
        })
    }

    /// The connection in a slot, if the slot is still that occupant's.
    pub(crate) fn conn_id(&self, slot: ConnSlot) -> Option<&ConnId> {
        let e = self.conns.get(slot.index())?;
        e.id.as_ref().filter(|_| e.generation == slot.generation)
    }

    pub(crate) fn count_in(&self, state: RoomState) -> usize {
        self.slab
            .iter()
            .flatten()
            .filter(|r| r.state == state)
            .count()
    }

    fn mark_dirty(dirty: &mut VecDeque<u32>, i: u32, room: &mut Room) {
        if !room.queued {
            room.queued = true;
            dirty.push_back(i);
        }
    }

    /// The slot of a room (an id that passed `RoomId::check`), made if it has none. `None`
    /// when the slab is full.
    fn room_slot(&mut self, id: &str) -> Option<u32> {
        if let Some(i) = self.find(id) {
            return Some(i);
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None if self.slab.len() < MAX_SLOTS => {
                self.slab.push(None);
                (self.slab.len() - 1) as u32
            }
            None => return None,
        };
        self.slab[i as usize] = Some(Room::new(RoomId::from_checked(id)));
        self.generation = self.generation.wrapping_add(1);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(id.as_bytes()), i, |&j| {
                slab[j as usize]
                    .as_ref()
                    .map_or(0, |r| hasher.hash_one(r.id.as_bytes()))
            });
        Some(i)
    }

    /// The slot of a connection, made if it has none. `None` when the slab is full.
    fn conn_slot_or_new(&mut self, conn: &ConnId) -> Option<u32> {
        if let Some(i) = self.find_conn(conn.as_str()) {
            return Some(i);
        }
        let i = match self.conn_free.pop() {
            Some(i) => i,
            None if self.conns.len() < MAX_SLOTS => {
                self.conns.push(ConnEntry::default());
                (self.conns.len() - 1) as u32
            }
            None => return None,
        };
        self.conns[i as usize].id = Some(conn.clone());
        let (conns, hasher) = (&self.conns, &self.conn_hasher);
        self.conn_index
            .insert_unique(hasher.hash_one(conn.as_str()), i, |&j| {
                conns[j as usize]
                    .id
                    .as_ref()
                    .map_or(0, |c| hasher.hash_one(c.as_str()))
            });
        Some(i)
    }

    /// Frees a connection's slot once it is in no room: a new generation for the next one.
    fn release_conn(&mut self, c: u32) {
        let e = &mut self.conns[c as usize];
        if !e.rooms.is_empty() {
            return;
        }
        let Some(id) = e.id.take() else {
            return;
        };
        e.generation = e.generation.wrapping_add(1);
        if let Ok(entry) = self
            .conn_index
            .find_entry(self.conn_hasher.hash_one(id.as_str()), |&j| j == c)
        {
            entry.remove();
        }
        self.conn_free.push(c);
    }

    /// Removes a room from the table and its slot from the slab.
    fn remove_room(&mut self, i: u32) {
        let Some(room) = self.slab[i as usize].take() else {
            return;
        };
        if let Ok(entry) = self
            .index
            .find_entry(self.hasher.hash_one(room.id.as_bytes()), |&j| j == i)
        {
            entry.remove();
        }
        if !room.queued {
            self.free.push(i);
        }
    }

    /// Adds a member to a room (an id that passed `RoomId::check`). `None` if there is no
    /// slot left for a new room or connection ([`MAX_SLOTS`]).
    pub(crate) fn join(&mut self, id: &str, conn: &ConnId) -> Option<JoinOutcome> {
        let c = self.conn_slot_or_new(conn)?;
        let Some(i) = self.room_slot(id) else {
            self.release_conn(c);
            return None;
        };
        let slot = ConnSlot {
            index: c,
            generation: self.conns[c as usize].generation,
        };
        let room = self.slab[i as usize].as_mut()?;
        let mut outcome = JoinOutcome {
            added: false,
            slot,
            room: room.id.clone(),
            state: room.state,
        };
        if self.pool.slice(&room.members).contains(&c) {
            return Some(outcome);
        }
        outcome.added = true;
        let was_wanted = room.wanted();
        self.pool.push(&mut room.members, c);
        room.members_changed();
        self.memberships += 1;
        self.pool.push(&mut self.conns[c as usize].rooms, i);
        if !was_wanted && room.state == RoomState::Pending {
            Self::mark_dirty(&mut self.dirty, i, room);
        }
        Some(outcome)
    }

    /// Removes a member. Returns false if it was not one.
    pub(crate) fn leave(&mut self, id: &RoomId, conn: &ConnId) -> bool {
        let (Some(i), Some(c)) = (self.find(id.as_str()), self.find_conn(conn.as_str())) else {
            return false;
        };
        let Some(room) = self.slab[i as usize].as_mut() else {
            return false;
        };
        if !self.pool.remove(&mut room.members, c) {
            return false;
        }
        room.members_changed();
        self.memberships -= 1;
        self.pool.remove(&mut self.conns[c as usize].rooms, i);
        self.release_conn(c);
        self.unwanted(i);
        true
    }

    /// Removes a connection from every room; returns the rooms it left. Linear in the
    /// connection's rooms (its room list is taken whole, not searched once per room).
    pub(crate) fn disconnect(&mut self, conn: &ConnId) -> Vec<RoomId> {
        let Some(c) = self.find_conn(conn.as_str()) else {
            return Vec::new();
        };
        let slots = self.pool.take(&mut self.conns[c as usize].rooms);
        self.release_conn(c);
        let mut left = Vec::with_capacity(slots.len());
        for i in slots {
            #[cfg(test)]
            {
                self.visited += 1;
            }
            let Some(room) = self.slab[i as usize].as_mut() else {
                continue;
            };
            if self.pool.remove(&mut room.members, c) {
                room.members_changed();
                left.push(room.id.clone());
                self.memberships -= 1;
                self.unwanted(i);
            }
        }
        left
    }

    /// What a room that just lost a member does if it has none left.
    fn unwanted(&mut self, i: u32) {
        let Some(room) = self.slab[i as usize].as_mut() else {
            return;
        };
        if room.wanted() {
            return;
        }
        match room.state {
            // Nothing sent yet: forget it.
            RoomState::Pending => self.remove_room(i),
            RoomState::Live => Self::mark_dirty(&mut self.dirty, i, room),
            // Waiting for a confirmation; the reconciler acts when it comes.
            RoomState::Subscribing | RoomState::Unsubscribing => {}
        }
    }

    /// Takes the next commands to send, at most `cap` channels in flight in all.
    /// Returns (rooms to subscribe, rooms to unsubscribe), in the order they became dirty.
    /// Whether any room waits for a SUBSCRIBE or UNSUBSCRIBE ([`Rooms::take_commands`]).
    #[inline]
    pub(crate) fn has_commands(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// [`Rooms::take_routed`] with one subscriber link, 0, for every room (as single-server
    /// mode has).
    #[cfg(test)]
    pub(crate) fn take_commands(&mut self, cap: usize) -> (Vec<RoomId>, Vec<RoomId>) {
        let (sub, unsub) = self.take_routed(cap, |_| Some(0));
        let ids = |v: Routed| v.into_iter().map(|(r, _)| r).collect();
        (ids(sub), ids(unsub))
    }

    /// Takes the next commands to send, at most `cap` channels in flight in all, in the order
    /// the rooms became dirty: (rooms to subscribe, rooms to unsubscribe), each with its
    /// subscriber link. `route` names the link a room to subscribe goes to, or `None` to hold
    /// it (its link cannot take it yet) until [`Rooms::release_held`]; a room is unsubscribed
    /// on the link it was subscribed on.
    pub(crate) fn take_routed(
        &mut self,
        cap: usize,
        mut route: impl FnMut(&RoomId) -> Option<u16>,
    ) -> (Routed, Routed) {
        let mut sub = Vec::new();
        let mut unsub = Vec::new();
        while self.in_flight < cap {
            let Some(i) = self.dirty.pop_front() else {
                crate::hub::shrink_idle(&mut self.dirty);
                break;
            };
            let Some(room) = self.slab[i as usize].as_mut() else {
                // Removed while queued: the slot is free now.
                self.free.push(i);
                continue;
            };
            room.queued = false;
            match (room.state, room.wanted()) {
                (RoomState::Pending, true) => match route(&room.id) {
                    Some(link) => {
                        room.state = RoomState::Subscribing;
                        room.link = link;
                        self.in_flight += 1;
                        sub.push((room.id.clone(), link));
                    }
                    None => {
                        room.queued = true;
                        self.held.push(i);
                    }
                },
                (RoomState::Pending, false) => self.remove_room(i),
                (RoomState::Live, false) => {
                    room.state = RoomState::Unsubscribing;
                    self.in_flight += 1;
                    unsub.push((room.id.clone(), room.link));
                }
                _ => {}
            }
        }
        (sub, unsub)
    }

    /// Rooms held by [`Rooms::take_routed`] are queued again (a link became ready, or the
    /// topology changed). Returns how many.
    pub(crate) fn release_held(&mut self) -> usize {
        let n = self.held.len();
        self.dirty.extend(self.held.drain(..));
        n
    }

    /// Rooms waiting for their subscriber link ([`Rooms::take_routed`]).
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// The subscriber link a room is subscribed on (or being subscribed or left on).
    pub(crate) fn link_of(&self, id: &str) -> Option<u16> {
        let room = self.slab[self.find(id)? as usize].as_ref()?;
        Some(room.link).filter(|&l| l != NO_LINK)
    }

    /// Redis confirmed, on subscriber link `link`, a SUBSCRIBE of this room's channel.
    pub(crate) fn on_subscribed(&mut self, id: RoomId, link: u16) -> Transition {
        let Some(i) = self.find(id.as_str()) else {
            return Transition::Stray;
        };
        let Some(room) = self.slab[i as usize].as_mut() else {
            return Transition::Stray;
        };
        if room.state != RoomState::Subscribing || room.link != link {
            return Transition::Stray;
        }
        self.in_flight -= 1;
        room.state = RoomState::Live;
        if room.wanted() {
            Transition::Live(id)
        } else {
            Self::mark_dirty(&mut self.dirty, i, room);
            Transition::Quiet
        }
    }

    /// Redis confirmed, on subscriber link `link`, an UNSUBSCRIBE, or unsubscribed the
    /// channel there on its own.
    pub(crate) fn on_unsubscribed(&mut self, id: RoomId, link: u16) -> Transition {
        let Some(i) = self.find(id.as_str()) else {
            return Transition::Stray;
        };
        let Some(room) = self.slab[i as usize].as_mut() else {
            return Transition::Stray;
        };
        if room.link != link {
            // Not subscribed there (a stale push from a link the room has left).
            return Transition::Stray;
        }
        match room.state {
            RoomState::Unsubscribing => {
                self.in_flight -= 1;
                room.link = NO_LINK;
                if room.wanted() {
                    room.state = RoomState::Pending;
                    Self::mark_dirty(&mut self.dirty, i, room);
                } else {
                    self.remove_room(i);
                }
                Transition::Quiet
            }
            RoomState::Live => {
                room.state = RoomState::Pending;
                room.link = NO_LINK;
                if room.wanted() {
                    Self::mark_dirty(&mut self.dirty, i, room);
                    Transition::ServerUnsubscribed(id)
                } else {
                    Transition::Quiet
                }
            }
            // Earlier than our SUBSCRIBE in the stream: a copy of an old confirmation.
            RoomState::Subscribing | RoomState::Pending => Transition::Stray,
        }
    }

    /// The fence after a SUNSUBSCRIBE of this room on `link` came back: if the room is still
    /// being left there, it is left (whatever the server answered, the channel is not
    /// subscribed there any more). Nothing otherwise.
    pub(crate) fn on_left(&mut self, id: RoomId, link: u16) {
        let still_leaving = self
            .find(id.as_str())
            .and_then(|i| self.slab[i as usize].as_ref())
            .is_some_and(|r| r.state == RoomState::Unsubscribing && r.link == link);
        if still_leaving {
            self.on_unsubscribed(id, link);
        }
    }

    /// A SUBSCRIBE of this room on `link` was refused as a whole (cluster mode: `-MOVED`,
    /// `-CLUSTERDOWN`): the room is not subscribed there, and waits, held, for the next
    /// topology ([`Rooms::release_held`]). False if the room was not being subscribed there.
    pub(crate) fn on_subscribe_refused(&mut self, id: &str, link: u16) -> bool {
        let Some(i) = self.find(id) else {
            return false;
        };
        let Some(room) = self.slab[i as usize].as_mut() else {
            return false;
        };
        if room.state != RoomState::Subscribing || room.link != link {
            return false;
        }
        self.in_flight -= 1;
        room.state = RoomState::Pending;
        room.link = NO_LINK;
        if room.wanted() {
            if !room.queued {
                room.queued = true;
                self.held.push(i);
            }
        } else {
            self.remove_room(i);
        }
        true
    }

    /// Subscriber link `link` is gone, and every subscription on it. Its rooms that were live
    /// are returned (they may miss messages); every room of it still wanted is pending again,
    /// queued in a stable order (by id), paced by `max_subscriptions_in_flight` as ever.
    /// Rooms of other links are untouched.
    pub(crate) fn on_link_lost(&mut self, link: u16) -> Vec<RoomId> {
        let mut live = Vec::new();
        let mut wanted = Vec::new();
        let mut gone = Vec::new();
        for (i, slot) in self.slab.iter_mut().enumerate() {
            let Some(room) = slot else {
                continue;
            };
            if room.link != link || room.state == RoomState::Pending {
                continue;
            }
            if matches!(
                room.state,
                RoomState::Subscribing | RoomState::Unsubscribing
            ) {
                self.in_flight -= 1;
            }
            if room.state == RoomState::Live && room.wanted() {
                live.push(room.id.clone());
            }
            room.state = RoomState::Pending;
            room.link = NO_LINK;
            if room.wanted() {
                wanted.push((room.id.clone(), i as u32));
            } else {
                gone.push(i as u32);
            }
        }
        for i in gone {
            self.remove_room(i);
        }
        wanted.sort_unstable();
        for (_, i) in &wanted {
            if let Some(room) = self.slab[*i as usize].as_mut() {
                Self::mark_dirty(&mut self.dirty, *i, room);
            }
        }
        live.sort_unstable();
        live
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

    /// Joins; true if the connection is a new member.
    fn join(rooms: &mut Rooms, room: &RoomId, conn: &ConnId) -> bool {
        rooms.join(room.as_str(), conn).unwrap().added
    }

    #[test]
    fn first_join_subscribes_last_leave_unsubscribes() {
        let mut rooms = Rooms::new(1);
        assert!(join(&mut rooms, &r("a"), &c("1")));
        assert!(!join(&mut rooms, &r("a"), &c("1")));
        assert!(join(&mut rooms, &r("a"), &c("2")));
        assert_eq!(rooms.take_commands(10), (vec![r("a")], vec![]));
        assert_eq!(rooms.on_subscribed(r("a"), 0), Transition::Live(r("a")));
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![]));
        rooms.leave(&r("a"), &c("2"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![r("a")]));
        assert_eq!(rooms.on_unsubscribed(r("a"), 0), Transition::Quiet);
        assert_eq!(rooms.len(), 0);
        assert_eq!(rooms.in_flight(), 0);
        assert_eq!(rooms.connections(), 0);
    }

    #[test]
    fn join_while_unsubscribe_in_flight_ends_subscribed() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"), 0);
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.take_commands(10).1, vec![r("a")]);
        join(&mut rooms, &r("a"), &c("2"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![]));
        assert_eq!(rooms.on_unsubscribed(r("a"), 0), Transition::Quiet);
        assert_eq!(rooms.take_commands(10), (vec![r("a")], vec![]));
        assert_eq!(rooms.on_subscribed(r("a"), 0), Transition::Live(r("a")));
    }

    #[test]
    fn leave_while_subscribe_in_flight_unsubscribes_after_confirmation() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.on_subscribed(r("a"), 0), Transition::Quiet);
        assert_eq!(rooms.take_commands(10), (vec![], vec![r("a")]));
        rooms.on_unsubscribed(r("a"), 0);
        assert_eq!(rooms.len(), 0);
    }

    #[test]
    fn join_and_leave_before_sending_sends_nothing() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.take_commands(10), (vec![], vec![]));
        assert_eq!(rooms.len(), 0);
    }

    #[test]
    fn duplicates_and_strays_change_nothing() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"), 0);
        assert_eq!(rooms.on_subscribed(r("a"), 0), Transition::Stray);
        assert_eq!(rooms.on_subscribed(r("zzz"), 0), Transition::Stray);
        assert_eq!(rooms.on_unsubscribed(r("zzz"), 0), Transition::Stray);
        assert_eq!(rooms.get("a").unwrap().state, RoomState::Live);
    }

    #[test]
    fn server_unsubscribe_resubscribes() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"), 0);
        assert_eq!(
            rooms.on_unsubscribed(r("a"), 0),
            Transition::ServerUnsubscribed(r("a"))
        );
        assert_eq!(rooms.take_commands(10), (vec![r("a")], vec![]));
    }

    #[test]
    fn link_loss_keeps_wanted_rooms_and_paces() {
        let mut rooms = Rooms::new(1);
        for i in 0..5 {
            join(&mut rooms, &r(&format!("r{i}")), &c("1"));
        }
        let (sub, _) = rooms.take_commands(3);
        assert_eq!(sub.len(), 3);
        rooms.on_subscribed(sub[0].clone(), 0);
        rooms.leave(&sub[1], &c("1"));
        let live = rooms.on_link_lost(0);
        assert_eq!(live, vec![sub[0].clone()]);
        assert_eq!(rooms.len(), 4);
        assert_eq!(rooms.take_commands(2).0.len(), 2);
        assert_eq!(rooms.take_commands(2).0.len(), 0);
        assert_eq!(rooms.take_commands(4).0.len(), 2);
    }

    #[test]
    fn disconnect_leaves_everything() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        join(&mut rooms, &r("b"), &c("1"));
        join(&mut rooms, &r("b"), &c("2"));
        let mut left = rooms.disconnect(&c("1"));
        left.sort();
        assert_eq!(left, vec![r("a"), r("b")]);
        assert_eq!(rooms.memberships(), 1);
        assert_eq!(rooms.len(), 1);
    }

    #[test]
    fn sequence_checks() {
        let mut traffic = None;
        let t = |origin, epoch, seq| Trailer {
            origin: InstanceId(origin),
            epoch,
            seq,
        };
        assert_eq!(check_seq(&mut traffic, &t(1, 1, 5), 2), SeqCheck::InOrder);
        assert_eq!(check_seq(&mut traffic, &t(1, 1, 6), 2), SeqCheck::InOrder);
        assert_eq!(check_seq(&mut traffic, &t(1, 1, 6), 2), SeqCheck::Duplicate);
        assert_eq!(
            check_seq(&mut traffic, &t(1, 1, 9), 2),
            SeqCheck::Gap(7..=8)
        );
        assert_eq!(check_seq(&mut traffic, &t(1, 2, 1), 2), SeqCheck::NewEpoch);
        assert_eq!(check_seq(&mut traffic, &t(2, 1, 1), 2), SeqCheck::InOrder);
        assert_eq!(check_seq(&mut traffic, &t(3, 1, 1), 2), SeqCheck::InOrder);
        // Origin 1 was least recently seen and got evicted: a new baseline.
        assert_eq!(check_seq(&mut traffic, &t(1, 2, 1), 2), SeqCheck::InOrder);
    }

    /// The rules of [`check_seq`] written plainly: one list, least recently seen first.
    fn model_check(list: &mut Vec<OriginSeq>, t: &Trailer, max: usize) -> SeqCheck {
        match list.iter().position(|o| o.origin == t.origin) {
            Some(i) => {
                let check = advance(&mut list[i], t);
                if check != SeqCheck::Duplicate {
                    let o = list.remove(i);
                    list.push(o);
                }
                check
            }
            None => {
                if list.len() >= max {
                    list.remove(0);
                }
                list.push(OriginSeq {
                    origin: t.origin,
                    epoch: t.epoch,
                    last: t.seq,
                });
                SeqCheck::InOrder
            }
        }
    }

    proptest::proptest! {
        /// The origin seen last, kept apart from the others, changes nothing about the
        /// answers or which origin is evicted: the same as one list in recency order, for
        /// any mix of origins, epochs, repeats, gaps and bounds.
        #[test]
        fn sequence_checks_match_the_plain_model(
            max in 1usize..5,
            steps in proptest::collection::vec((0u64..6, 0u64..3, 0u64..12), 0..200),
        ) {
            let mut traffic = None;
            let mut list = Vec::new();
            for (origin, epoch, seq) in steps {
                let t = Trailer { origin: InstanceId(origin), epoch, seq };
                let want = model_check(&mut list, &t, max);
                proptest::prop_assert_eq!(check_seq(&mut traffic, &t, max), want);
                let tr = traffic.as_ref().unwrap();
                let kept: Vec<u64> = tr.older.iter().chain(&tr.recent).map(|o| o.origin.0).collect();
                let wanted: Vec<u64> = list.iter().map(|o| o.origin.0).collect();
                proptest::prop_assert_eq!(kept, wanted);
            }
        }
    }

    /// The slab index a room has.
    fn index_of(rooms: &Rooms, room: &str) -> u32 {
        rooms.find(room).unwrap()
    }

    #[test]
    fn slots_are_reused_after_the_room_is_gone() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        join(&mut rooms, &r("b"), &c("1"));
        rooms.take_commands(10);
        rooms.on_subscribed(r("a"), 0);
        rooms.on_subscribed(r("b"), 0);
        let a = index_of(&rooms, "a");
        rooms.leave(&r("a"), &c("1"));
        // Unsubscribing: the room keeps its slot until Redis confirms.
        assert_eq!(rooms.take_commands(10).1, vec![r("a")]);
        join(&mut rooms, &r("c"), &c("1"));
        assert_ne!(index_of(&rooms, "c"), a);
        rooms.on_unsubscribed(r("a"), 0);
        assert!(rooms.find("a").is_none());
        join(&mut rooms, &r("d"), &c("1"));
        assert_eq!(index_of(&rooms, "d"), a, "the freed slot is taken again");
        assert_eq!(rooms.slab.len(), 3);
        let ids: Vec<&str> = rooms.rooms_of("1").iter().map(RoomId::as_str).collect();
        assert_eq!(ids, ["b", "c", "d"]);
    }

    #[test]
    fn a_room_removed_while_queued_keeps_its_slot_until_the_queue_passes_it() {
        let mut rooms = Rooms::new(1);
        join(&mut rooms, &r("a"), &c("1"));
        let a = index_of(&rooms, "a");
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.len(), 0);
        // "a"'s queue entry is still there: "b" must not get its slot (the entry would then
        // name "b" and subscribe it out of turn).
        join(&mut rooms, &r("b"), &c("1"));
        assert_ne!(index_of(&rooms, "b"), a);
        assert_eq!(rooms.take_commands(10), (vec![r("b")], vec![]));
        join(&mut rooms, &r("c"), &c("1"));
        assert_eq!(index_of(&rooms, "c"), a, "free once the queue passed it");
        assert_eq!(rooms.take_commands(10), (vec![r("c")], vec![]));
    }

    #[test]
    fn a_connection_slot_gets_a_new_generation_for_each_occupant() {
        let mut rooms = Rooms::new(1);
        let first = rooms.join("a", &c("1")).unwrap().slot;
        assert_eq!(
            rooms.join("b", &c("1")).unwrap().slot,
            first,
            "one slot per connection"
        );
        assert_eq!(
            rooms.join("a", &c("1")).unwrap().slot,
            first,
            "and when already in"
        );
        let other = rooms.join("a", &c("2")).unwrap().slot;
        assert_ne!(other.index(), first.index());
        assert_eq!(rooms.conn_id(first), Some(&c("1")));
        assert_eq!(rooms.conn_slot("1"), Some(first));
        let members: Vec<ConnSlot> = rooms.members_of("a").slots().collect();
        assert_eq!(members, [first, other]);

        // Leaving one room keeps the slot; leaving the last frees it.
        rooms.leave(&r("a"), &c("1"));
        assert_eq!(rooms.conn_id(first), Some(&c("1")));
        rooms.leave(&r("b"), &c("1"));
        assert_eq!(rooms.conn_id(first), None);
        assert_eq!(rooms.conn_slot("1"), None);

        // The next connection takes the index with a new generation: the old slot does not
        // name it.
        let third = rooms.join("a", &c("3")).unwrap().slot;
        assert_eq!(third.index(), first.index());
        assert_ne!(third.generation(), first.generation());
        assert_ne!(third, first);
        assert_eq!(rooms.conn_id(first), None);
        assert_eq!(rooms.conn_id(third), Some(&c("3")));

        // The same id back after a disconnect is a new occupant too.
        rooms.disconnect(&c("3"));
        let again = rooms.join("a", &c("3")).unwrap().slot;
        assert_eq!(again.index(), third.index());
        assert_ne!(again, third);
        assert_eq!(rooms.connections(), 2);
    }

    #[test]
    fn disconnect_visits_only_the_connections_rooms() {
        let mut rooms = Rooms::new(1);
        for i in 0..1000 {
            join(&mut rooms, &r(&format!("other{i}")), &c("other"));
        }
        for i in 0..10 {
            join(&mut rooms, &r(&format!("mine{i}")), &c("1"));
            join(&mut rooms, &r(&format!("mine{i}")), &c("other"));
        }
        let mut left = rooms.disconnect(&c("1"));
        left.sort();
        assert_eq!(left.len(), 10);
        assert_eq!(rooms.visited, 10, "one visit per room of the connection");
        assert_eq!(rooms.memberships(), 1010);
        assert_eq!(rooms.rooms_of("1").len(), 0);
        assert_eq!(rooms.members_of("mine3").to_vec(), vec![c("other")]);
        assert!(rooms.disconnect(&c("1")).is_empty());
        assert_eq!(rooms.visited, 10);
    }

    #[test]
    fn iteration_follows_the_slab_whatever_the_seed() {
        let order = |seed: u64| {
            let mut rooms = Rooms::new(seed);
            for i in 0..50 {
                join(&mut rooms, &r(&format!("r{i}")), &c(&format!("c{}", i % 7)));
            }
            for i in (0..50).step_by(3) {
                rooms.leave(&r(&format!("r{i}")), &c(&format!("c{}", i % 7)));
            }
            // The hub's next turn: the queue passes the rooms gone, their slots are free.
            rooms.take_commands(1000);
            for i in 50..60 {
                join(&mut rooms, &r(&format!("r{i}")), &c("c1"));
            }
            let ids: Vec<String> = rooms.iter().map(|(id, _)| id.to_string()).collect();
            let of: Vec<String> = rooms
                .rooms_of("c1")
                .iter()
                .map(|id| id.to_string())
                .collect();
            (ids, of)
        };
        let (ids, of) = order(1);
        assert_eq!((ids.clone(), of.clone()), order(0xdead_beef));
        assert_eq!(ids.len(), 50 - 17 + 10);
        // Freed slots are taken again, most recently freed first.
        assert_eq!(ids[0], "r1");
        assert!(ids.iter().position(|id| id == "r59") < ids.iter().position(|id| id == "r50"));
        assert_eq!(of.len(), 7 - 2 + 10);
    }

    #[test]
    fn a_set_goes_inline_again_and_returns_its_vector() {
        let mut pool = Pool::default();
        let mut set = Set::EMPTY;
        pool.push(&mut set, 7);
        assert_eq!(pool.slice(&set), [7]);
        assert!(pool.lists.is_empty(), "one value needs no vector");
        pool.push(&mut set, 8);
        pool.push(&mut set, 9);
        assert_eq!(pool.slice(&set), [7, 8, 9]);
        assert!(!pool.remove(&mut set, 1));
        assert!(pool.remove(&mut set, 7));
        assert_eq!(pool.slice(&set), [9, 8]);
        assert!(pool.remove(&mut set, 9));
        assert_eq!(pool.slice(&set), [8]);
        assert_eq!(pool.free, [0], "the vector is free again");
        assert_eq!(pool.lists[0].capacity(), 0, "and its memory returned");
        let mut other = Set::EMPTY;
        pool.push(&mut other, 1);
        pool.push(&mut other, 2);
        assert_eq!(other.0, POOLED, "the free vector is reused");
        assert_eq!(pool.take(&mut other), [1, 2]);
        assert!(other.is_empty());
        assert!(pool.remove(&mut set, 8));
        assert!(set.is_empty());
    }

    #[test]
    fn a_room_slab_entry_is_32_bytes_and_an_id_16() {
        assert_eq!(std::mem::size_of::<Option<Room>>(), 32);
        assert_eq!(std::mem::size_of::<RoomId>(), 16);
        assert!(r("a-fifteen-bytes").is_inline());
        assert!(!r("sixteen-bytes-id").is_inline());
        assert_eq!(r("sixteen-bytes-id").as_str(), "sixteen-bytes-id");
    }
}
