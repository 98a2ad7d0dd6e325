//! Member queues and dispatch: memberships, connections, room liveness, standalone delivery,
//! and the fan-out of the core's events to the queues that wait for them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use roomcast_core::{Config, ConnId, Event, Message, PublishError, RoomId, RoomState};
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::handle::{Connection, Membership, PubSubMessage, RoomList};
use crate::queue::Queue;

use super::{not_reserved, Attached, Member, State};

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
        let (room_id, conn_id, live) = match &mut self.hub {
            Some(hub) => {
                let joined = if observer {
                    hub.observe(room, conn, now)?
                } else {
                    hub.join(room, conn, now)?
                };
                let room_id = hub.check_room(room)?;
                let conn_id = ConnId::new(conn, hub.config().max_conn_id_bytes)
                    .map_err(roomcast_core::MemberError::InvalidConnection)?;
                (room_id, conn_id, joined.state == RoomState::Live)
            }
            None => {
                let room_id = RoomId::new(room, roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidRoom)?;
                let conn_id = ConnId::new(conn, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidConnection)?;
                (room_id, conn_id, true)
            }
        };
        self.next_token += 1;
        let token = self.next_token;
        let queue = Arc::new(Queue::new(self.options.member_queue, self.options.overflow));
        let entry = self.rooms.entry(room_id.clone()).or_default();
        if live {
            entry.live.set(true);
        }
        if let Some(old) = entry.members.insert(
            conn_id.clone(),
            Member {
                queue: queue.clone(),
                token,
                shared: false,
            },
        ) {
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
        let max = self
            .hub
            .as_ref()
            .map_or(roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES, |h| {
                h.config().max_conn_id_bytes
            });
        let conn_id =
            ConnId::new(conn, max).map_err(roomcast_core::MemberError::InvalidConnection)?;
        if self.reap_attached(conn) {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "another Connection",
            });
        }
        let joined = match &self.hub {
            Some(hub) => !hub.rooms_of(conn).is_empty(),
            None => self.rooms.values().any(|r| r.members.contains_key(conn)),
        };
        if joined {
            return Err(Error::ConnectionInUse {
                conn: conn.to_string(),
                held_by: "memberships from Roomcast::join",
            });
        }
        self.next_token += 1;
        let token = self.next_token;
        let queue = Arc::new(Queue::new(self.options.member_queue, self.options.overflow));
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
        // (room, live now) for each room, after the same all-or-nothing checks in both modes.
        let ids: Vec<(RoomId, bool)> = match &mut self.hub {
            Some(hub) => {
                // The hub checks every id first.
                hub.join_many(&names, conn.as_str(), now)
                    .map_err(batch_error)?;
                names
                    .iter()
                    .filter_map(|room| hub.check_room(room).ok())
                    .map(|id| {
                        let live = hub.room_state(id.as_str()) == Some(RoomState::Live);
                        (id, live)
                    })
                    .collect()
            }
            None => {
                let max = roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES;
                names
                    .iter()
                    .enumerate()
                    .map(|(i, room)| {
                        RoomId::new(room, max)
                            .map(|id| (id, true))
                            .map_err(|e| (i, roomcast_core::MemberError::InvalidRoom(e)))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(batch_error)?
            }
        };
        let Some(a) = self.conns.get(conn) else {
            return Err(Error::Closed);
        };
        // Members sharing the connection's queue.
        let mut added = 0;
        for (room, live) in ids {
            let entry = self.rooms.entry(room).or_default();
            if live {
                entry.live.set(true);
            }
            if !entry.members.contains_key(conn.as_str()) {
                entry.members.insert(
                    conn.clone(),
                    Member {
                        queue: a.queue.clone(),
                        token: a.token,
                        shared: true,
                    },
                );
                added += 1;
            }
        }
        Ok(added)
    }

    pub(super) fn standalone_rooms_of(&self, conn: &str) -> Vec<RoomId> {
        let mut v: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.members.contains_key(conn))
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
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
        let now = self.now();
        let rooms = match &mut self.hub {
            Some(hub) => hub.disconnect(conn.as_str(), now).unwrap_or_else(|e| {
                warn!(%e, "detaching a connection failed");
                Vec::new()
            }),
            None => self.standalone_rooms_of(conn.as_str()),
        };
        for room in rooms {
            self.forget_member(room.as_str(), conn.as_str(), Some(token));
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
        let Some(hub) = &self.hub else {
            for w in self.live_waiters.drain(..) {
                let _ = w.reply.send(Ok(()));
            }
            return;
        };
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
        let left = match &mut self.hub {
            Some(hub) => hub.leave(room, conn, now)?,
            None => {
                // Refuse what the hub would refuse, so both modes answer alike.
                RoomId::new(room, roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidRoom)?;
                ConnId::new(conn, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                    .map_err(roomcast_core::MemberError::InvalidConnection)?;
                self.rooms
                    .get(room)
                    .is_some_and(|r| r.members.contains_key(conn))
            }
        };
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
                }
            }
            if entry.members.is_empty() {
                entry.live.set(false);
                self.rooms.remove(room);
            }
        }
    }

    /// No Redis: deliver within this process.
    pub(super) fn deliver_standalone(&mut self, msg: &PubSubMessage) -> Result<u64, Error> {
        if self.shutdown.is_some() {
            return Err(Error::Publish(PublishError::Shutdown));
        }
        let room = RoomId::new(
            &msg.room_id,
            roomcast_core::naming::DEFAULT_MAX_ROOM_ID_BYTES,
        )
        .map_err(PublishError::InvalidRoom)?;
        // Standalone, no configuration: the default limits.
        Config::default().check_publish(
            &msg.room_id,
            msg.data.len(),
            msg.exclude_connection.as_deref(),
        )?;
        let Some(entry) = self.rooms.get(&room) else {
            return Ok(0);
        };
        let message = Arc::new(Message {
            room,
            message_type: msg.message_type,
            data: Bytes::copy_from_slice(&msg.data),
            exclude_connection: msg.exclude_connection.as_deref().map(Into::into),
            timestamp: msg.timestamp,
            origin: None,
        });
        for (conn, m) in &entry.members {
            if msg.exclude_connection.as_deref() != Some(conn.as_str()) {
                m.queue.push(message.clone());
            }
        }
        Ok(1)
    }

    pub(super) fn dispatch(&mut self, ev: Event) {
        match ev {
            Event::Delivery(d) => {
                let (message, recipients) = d.into_shared();
                let Some(entry) = self.rooms.get(&message.room) else {
                    return;
                };
                let mut closed = Vec::new();
                let mut detached = Vec::new();
                for conn in recipients.iter() {
                    if let Some(m) = entry.members.get(conn) {
                        if !m.queue.push(message.clone()) {
                            let gone = if m.shared { &mut detached } else { &mut closed };
                            gone.push((conn.clone(), m.token));
                        }
                    }
                }
                // A membership whose stream ended (overflow under `Overflow::Close`, or a
                // consumer that is gone) leaves the room; such a connection leaves all.
                for (conn, token) in closed {
                    let room = message.room.as_str();
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
