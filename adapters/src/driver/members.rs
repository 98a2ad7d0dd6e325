//! Member queues and dispatch: memberships, connections, room liveness, and the fan-out of the core's events to the queues that wait for them.

use std::collections::VecDeque;
use std::sync::Arc;

use roomcast_core::{ConnId, ConnSlot, Event, Message, RoomId, RoomState};
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::handle::{Connection, Membership, RoomList};
use crate::queue::Queue;

use super::{not_reserved, Attached, Member, SlotEntry, SlotTarget, State};

impl State {
    /// Joins `conn` to `room`, as an observer (in no presence) if `observer`.
    pub(super) fn join(
        &mut self,
        room: &str,
        conn: &str,
        observer: bool,
    ) -> Result<Membership, Error> {
        if self.shutdown.is_some() {
            return Err(Error::Member(roomcast_core::MemberError::Shutdown));
        }
        if self.reap_attached(conn) {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "a Connection (Roomcast::connection)",
            });
        }
        let now = self.now();
        let hub = &mut self.hub;
        let joined = if observer {
            hub.observe(room, conn, now)?
        } else {
            hub.join(room, conn, now)?
        };
        // The ids the hub and this driver already hold, checked and interned once.
        let conn_id = match hub.conn_id(joined.conn) {
            Some(id) => id.clone(),
            None => ConnId::new(conn, hub.config().max_conn_id_bytes)
                .map_err(roomcast_core::MemberError::InvalidConnection)?,
        };
        let room_id = match self.rooms.get_key_value(room) {
            Some((id, _)) => id.clone(),
            None => self.hub.check_room(room)?,
        };
        let live = joined.state == RoomState::Live;
        let slot = Some(joined.conn);
        self.next_token += 1;
        let token = self.next_token;
        let queue = self.member_queue();
        let member = Member {
            queue: queue.clone(),
            token,
            shared: false,
            slot,
        };
        if let Some(slot) = slot {
            self.slot_membership(slot, &room_id, member.clone());
        }
        let entry = self.rooms.entry(room_id.clone()).or_default();
        if live {
            entry.live.set(true);
        }
        if let Some(old) = entry.members.insert(conn_id.clone(), member) {
            old.queue.close();
        }
        Ok(Membership {
            room: room_id,
            conn: conn_id,
            queue,
            local: VecDeque::new(),
            live: entry.live.clone(),
            ctl: self.ctl_tx.clone(),
            token,
        })
    }

    /// True if `conn` is attached to a live `Connection`. An attached connection whose
    /// `Connection` was dropped (its `Detach` may still be on the way) is detached here, so
    /// that dropping and re-attaching an id never races.
    pub(super) fn reap_attached(&mut self, conn: &str) -> bool {
        let Some(a) = self.conns.get(conn) else {
            return false;
        };
        if !a.queue.is_closed() {
            return true;
        }
        let token = a.token;
        if let Ok(conn) = ConnId::new(conn, usize::MAX) {
            self.detach(&conn, token);
        }
        false
    }

    pub(super) fn attach(&mut self, conn: &str) -> Result<Connection, Error> {
        if self.shutdown.is_some() {
            return Err(Error::Member(roomcast_core::MemberError::Shutdown));
        }
        not_reserved(conn)?;
        let max = self.hub.config().max_conn_id_bytes;
        let conn_id =
            ConnId::new(conn, max).map_err(roomcast_core::MemberError::InvalidConnection)?;
        if self.reap_attached(conn) {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "another Connection",
            });
        }
        if !self.hub.rooms_of(conn).is_empty() {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "memberships from Roomcast::join",
            });
        }
        self.next_token += 1;
        let token = self.next_token;
        let queue = self.member_queue();
        self.conns.insert(
            conn_id.clone(),
            Attached {
                queue: queue.clone(),
                token,
            },
        );
        Ok(Connection {
            conn: conn_id,
            queue,
            local: VecDeque::new(),
            ctl: self.ctl_tx.clone(),
            token,
        })
    }

    /// Ok if `conn` is attached with this token (the `Connection` calling is the current one).
    pub(super) fn attached(&self, conn: &ConnId, token: u64) -> Result<(), Error> {
        if self.shutdown.is_some() {
            return Err(Error::Member(roomcast_core::MemberError::Shutdown));
        }
        match self.conns.get(conn) {
            Some(a) if a.token == token => Ok(()),
            _ => Err(Error::Closed),
        }
    }

    pub(super) fn conn_join(
        &mut self,
        conn: &ConnId,
        token: u64,
        rooms: &RoomList,
    ) -> Result<usize, Error> {
        self.attached(conn, token)?;
        let batch_error = |(index, error): (usize, roomcast_core::MemberError)| {
            if rooms.len() == 1 {
                Error::Member(error)
            } else {
                Error::Batch { index, error }
            }
        };
        let names: Vec<&str> = rooms.iter().collect();
        let now = self.now();
        // The hub checks every id first (all or nothing) and keeps the rooms; this side only
        // needs the connection's slot, where deliveries find its queue.
        let added = self
            .hub
            .join_many(&names, conn.as_str(), now)
            .map_err(batch_error)?;
        let slot: Option<ConnSlot> = self.hub.conn_slot(conn.as_str());
        let Some(a) = self.conns.get(conn) else {
            return Err(Error::Closed);
        };
        let member = Member {
            queue: a.queue.clone(),
            token: a.token,
            shared: true,
            slot,
        };
        if let Some(slot) = slot {
            self.set_slot(slot, SlotTarget::Connection(member));
        }
        Ok(added)
    }

    /// An attached connection leaves a room: once it is in no room, the hub frees its slot,
    /// and so does the dispatch index.
    pub(super) fn conn_leave(
        &mut self,
        conn: &ConnId,
        token: u64,
        room: &str,
    ) -> Result<bool, Error> {
        self.attached(conn, token)?;
        let slot = self.hub.conn_slot(conn.as_str());
        let now = self.now();
        let left = self.hub.leave(room, conn.as_str(), now)?;
        if let Some(slot) = slot.filter(|&s| self.hub.conn_slot(conn.as_str()) != Some(s)) {
            self.clear_connection_slot(slot, token);
        }
        Ok(left)
    }

    /// Clears a connection's entry in the dispatch index if it is still that connection's.
    fn clear_connection_slot(&mut self, slot: ConnSlot, token: u64) {
        if let Some(cell) = self.slots.get_mut(slot.index()) {
            let mine = matches!(cell, Some(SlotEntry {
                generation,
                target: SlotTarget::Connection(c),
            }) if *generation == slot.generation() && c.token == token);
            if mine {
                *cell = None;
            }
        }
    }

    /// A new member queue, bounded as the options say.
    fn member_queue(&self) -> Arc<Queue<Arc<Message>>> {
        Arc::new(Queue::with_bytes(
            self.options.member_queue,
            self.options.member_queue_bytes,
            |m| m.data.len().saturating_add(crate::MESSAGE_OVERHEAD),
            self.options.overflow,
        ))
    }

    /// Puts `target` at `slot`, replacing a previous occupant's entry.
    fn set_slot(&mut self, slot: ConnSlot, target: SlotTarget) {
        let i = slot.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(SlotEntry {
            generation: slot.generation(),
            target,
        });
    }

    /// Adds a `Membership` of `room` to its connection's slot (the connection's other rooms'
    /// memberships stay).
    fn slot_membership(&mut self, slot: ConnSlot, room: &RoomId, member: Member) {
        if let Some(Some(SlotEntry {
            generation,
            target: SlotTarget::Memberships(rooms),
        })) = self.slots.get_mut(slot.index())
        {
            if *generation == slot.generation() {
                match rooms.iter_mut().find(|(r, _)| r == room) {
                    Some((_, m)) => *m = member,
                    None => rooms.push((room.clone(), member)),
                }
                return;
            }
        }
        self.set_slot(slot, SlotTarget::Memberships(vec![(room.clone(), member)]));
    }

    /// `m`, a member of `room` that left it, leaves its slot's entry; the entry goes when its
    /// connection is in no room any more (the hub freed the slot) or has no membership left.
    fn unslot(&mut self, room: &str, conn: &str, m: &Member) {
        let Some(slot) = m.slot else {
            return;
        };
        let kept = self.hub.conn_slot(conn) == Some(slot);
        let Some(cell) = self.slots.get_mut(slot.index()) else {
            return;
        };
        let empty = match cell {
            Some(e) if e.generation == slot.generation() => match &mut e.target {
                SlotTarget::Connection(c) => !kept && c.token == m.token,
                SlotTarget::Memberships(rooms) => {
                    rooms.retain(|(r, x)| !(r.as_str() == room && x.token == m.token));
                    !kept || rooms.is_empty()
                }
            },
            _ => false,
        };
        if empty {
            *cell = None;
        }
    }

    /// A `Connection` was dropped (or overflowed under `Overflow::Close`): it leaves every
    /// room, if `token` is still the attached one.
    pub(super) fn detach(&mut self, conn: &ConnId, token: u64) {
        if self.conns.get(conn).is_none_or(|a| a.token != token) {
            return;
        }
        if let Some(a) = self.conns.remove(conn) {
            a.queue.close();
        }
        let slot = self.hub.conn_slot(conn.as_str());
        let now = self.now();
        if let Err(e) = self.hub.disconnect(conn.as_str(), now) {
            warn!(%e, "detaching a connection failed");
        }
        if let Some(slot) = slot {
            self.clear_connection_slot(slot, token);
        }
        let mut i = 0;
        while i < self.live_waiters.len() {
            if self.live_waiters[i].conn == *conn {
                let w = self.live_waiters.swap_remove(i);
                let _ = w.reply.send(Err(Error::Closed));
            } else {
                i += 1;
            }
        }
    }

    /// Answers the `wait_live` calls whose rooms are all live (or left).
    pub(super) fn check_live_waiters(&mut self) {
        if self.live_waiters.is_empty() {
            return;
        }
        let hub = &self.hub;
        let mut i = 0;
        while i < self.live_waiters.len() {
            let w = &mut self.live_waiters[i];
            while let Some(front) = w.pending.front() {
                match hub.room_state(front.as_str()) {
                    Some(RoomState::Live) | None => {
                        w.pending.pop_front();
                    }
                    Some(_) => break,
                }
            }
            if w.pending.is_empty() || w.reply.is_canceled() {
                let w = self.live_waiters.swap_remove(i);
                let _ = w.reply.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn leave(
        &mut self,
        room: &str,
        conn: &str,
        token: Option<u64>,
    ) -> Result<bool, Error> {
        if let Some(t) = token {
            // A dropped membership: only if it is still the current one.
            let current = self
                .rooms
                .get(room)
                .and_then(|r| r.members.get(conn))
                .map(|m| m.token);
            if current != Some(t) {
                return Ok(false);
            }
        }
        let now = self.now();
        let left = self.hub.leave(room, conn, now)?;
        self.forget_member(room, conn, token);
        Ok(left)
    }

    pub(super) fn forget_member(&mut self, room: &str, conn: &str, token: Option<u64>) {
        if let Some(entry) = self.rooms.get_mut(room) {
            let matches = entry
                .members
                .get(conn)
                .is_some_and(|m| token.is_none_or(|t| t == m.token));
            if matches {
                if let Some(m) = entry.members.remove(conn) {
                    // A connection's queue stays open for its other rooms.
                    if !m.shared {
                        m.queue.close();
                    }
                    if entry.members.is_empty() {
                        entry.live.set(false);
                        self.rooms.remove(room);
                    }
                    self.unslot(room, conn, &m);
                    return;
                }
            }
            if entry.members.is_empty() {
                entry.live.set(false);
                self.rooms.remove(room);
            }
        }
    }

    pub(super) fn dispatch(&mut self, ev: Event) {
        match ev {
            Event::Delivery(d) => {
                let (message, recipients) = d.into_shared();
                let mut closed = Vec::new();
                let mut detached = Vec::new();
                // The room of a message a queue refused, for leaving it below.
                let mut refused_room = None;
                // The last recipient gets the delivery's own reference (no count taken and
                // dropped again), the others a clone each.
                let mut held = Some(message);
                let mut entries = recipients.entries().peekable();
                // Each recipient's queue by its slot: no lookup by id. A slot whose generation
                // moved on is a connection that left after the message arrived.
                while let Some(r) = entries.next() {
                    let Some(message) = held.as_ref() else { break };
                    let Some(Some(e)) = self.slots.get(r.slot.index()) else {
                        continue;
                    };
                    if e.generation != r.slot.generation() {
                        continue;
                    }
                    let m = match &e.target {
                        SlotTarget::Connection(m) => m,
                        SlotTarget::Memberships(rooms) => {
                            match rooms.iter().find(|(room, _)| *room == message.room) {
                                Some((_, m)) => m,
                                None => continue,
                            }
                        }
                    };
                    let item = match entries.peek() {
                        Some(_) => Arc::clone(message),
                        None => match held.take() {
                            Some(last) => last,
                            None => break,
                        },
                    };
                    if let Err(refused) = m.queue.try_push(item) {
                        refused_room.get_or_insert_with(|| refused.room.clone());
                        let gone = if m.shared { &mut detached } else { &mut closed };
                        gone.push((r.conn.clone(), m.token));
                    }
                }
                // A membership whose stream ended (overflow under `Overflow::Close`, or a
                // consumer that is gone) leaves the room; such a connection leaves all.
                let Some(room) = refused_room else {
                    return;
                };
                // What the core does about it (unsubscribing) is drained next round.
                self.again = true;
                for (conn, token) in closed {
                    let room = room.as_str();
                    if let Err(e) = self.leave(room, conn.as_str(), Some(token)) {
                        warn!(%e, room, "leaving after overflow failed");
                    }
                }
                for (conn, token) in detached {
                    self.detach(&conn, token);
                }
                return;
            }
            Event::PublishConfirmed { id, receivers } => {
                // Fire-and-forget publishes (the Publisher) wait for no reply.
                if self.publishes.is_empty() {
                    return;
                }
                if let Some(r) = self.publishes.remove(&id) {
                    let _ = r.send(Ok(receivers));
                }
                return;
            }
            Event::PublishFailed { id, ref error } => {
                if let Some(r) = self.publishes.remove(&id) {
                    let _ = r.send(Err(Error::Publish(error.clone())));
                    return;
                }
                warn!(%error, "publish failed");
            }
            Event::RoomLive { ref room } => {
                debug!(%room, "room live");
                if let Some(e) = self.rooms.get(room) {
                    e.live.set(true);
                }
            }
            Event::RoomNotLive { ref room, reason } => {
                debug!(%room, ?reason, "room not live");
                if let Some(e) = self.rooms.get(room) {
                    e.live.set(false);
                }
            }
            Event::LinkUp {
                link,
                role,
                outage,
                ref missed_rooms,
            } => {
                info!(%link, ?role, ?outage, missed_rooms = missed_rooms.len(), "link up");
                if self.all_ready() {
                    for r in self.ready_waiters.drain(..) {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            Event::LinkDown {
                link,
                role,
                ref cause,
            } => {
                warn!(%link, ?role, %cause, "link down");
                for r in self.ready_waiters.drain(..) {
                    let _ = r.send(Err(Error::Connect(cause.clone())));
                }
                for w in &mut self.health {
                    if w.pending.contains(&link) {
                        w.deadline = w.started;
                    }
                }
            }
            Event::Presence { id, ref result, .. } => {
                if let Some(r) = self.queries.remove(&id) {
                    let _ = r.send(result.clone().map_err(Error::Presence));
                }
                return;
            }
            Event::PresenceReady => {
                info!("presence registered");
                if self.all_ready() {
                    for r in self.ready_waiters.drain(..) {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            // Health waiters are checked after every drain that had events; event streams
            // get the probe's round trip (`roomcast serve` keeps a histogram of it).
            Event::SubscriberVerified { .. } => {}
            Event::Pong { link, rtt } => {
                for w in &mut self.health {
                    if let Some(p) = w.pending.iter().position(|l| *l == link) {
                        w.pending.swap_remove(p);
                        w.rtts.push((link, rtt));
                    }
                }
                return;
            }
            Event::Gap {
                ref room,
                origin,
                ref missing,
                ..
            } => warn!(%room, %origin, ?missing, "gap: messages missed"),
            Event::Dropped {
                ref cause,
                ref room,
            } => {
                warn!(
                    ?cause,
                    room = room.as_ref().map(|r| r.as_str()),
                    "message dropped"
                )
            }
            _ => {}
        }
        self.event_subs.retain(|q| q.push(ev.clone()));
    }
}
