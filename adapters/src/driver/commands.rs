//! Handle commands: joins and leaves routed to the member code, publishes (with the parked
//! fire-and-forget queue behind the publish gate), presence queries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use roomcast_core::{ConnId, Event, Publish, PublishError, RoomId, RoomState};
use tracing::warn;

use crate::error::Error;
use crate::handle::{
    publish_bytes, Command, EventStream, PubSubMessage, Query, QueryAnswer, Reply, RoomStream,
};
use crate::queue::Queue;

use super::{not_reserved, LinkIo, LiveWaiter, State, OBSERVER_PREFIX};

impl State {
    pub(super) fn command(&mut self, c: Command) {
        let now = self.now();
        match c {
            Command::Join { room, conn, reply } => {
                let _ =
                    reply.send(not_reserved(&conn).and_then(|()| self.join(&room, &conn, false)));
            }
            Command::Observe { room, reply } => {
                self.next_token += 1;
                let conn = format!("{OBSERVER_PREFIX}observer-{}", self.next_token);
                let _ = reply.send(
                    self.join(&room, &conn, true)
                        .map(|inner| RoomStream { inner }),
                );
            }
            Command::Leave {
                room,
                conn,
                reply,
                token,
            } => {
                let result = self.leave(&room, &conn, token);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Disconnect { conn, reply } => {
                let result = self.hub.disconnect(&conn, now).map_err(Error::from);
                if let Ok(rooms) = &result {
                    for room in rooms {
                        self.forget_member(room.as_str(), &conn, None);
                    }
                }
                let _ = reply.send(result);
            }
            Command::Attach { conn, reply } => {
                let _ = reply.send(self.attach(&conn));
            }
            Command::ConnJoin {
                conn,
                token,
                rooms,
                reply,
            } => {
                let _ = reply.send(self.conn_join(&conn, token, &rooms));
            }
            Command::ConnLeave {
                conn,
                token,
                room,
                reply,
            } => {
                let result = self.conn_leave(&conn, token, &room);
                let _ = reply.send(result);
            }
            Command::ConnRooms { conn, token, reply } => {
                let result = self
                    .attached(&conn, token)
                    .map(|()| self.hub.rooms_of(conn.as_str()).to_vec());
                let _ = reply.send(result);
            }
            Command::ConnWaitLive { conn, token, reply } => {
                if let Err(e) = self.attached(&conn, token) {
                    let _ = reply.send(Err(e));
                } else {
                    let hub = &self.hub;
                    let pending: VecDeque<RoomId> = hub
                        .rooms_of(conn.as_str())
                        .iter()
                        .filter(|r| hub.room_state(r.as_str()) != Some(RoomState::Live))
                        .cloned()
                        .collect();
                    self.live_waiters.push(LiveWaiter {
                        conn,
                        pending,
                        reply,
                    });
                    self.check_live_waiters();
                }
            }
            Command::Detach { conn, token } => self.detach(&conn, token),
            Command::Publish { msg, reply } => self.publish(msg, reply, now),
            Command::PublishBatch { msgs } => {
                // The gate is told once per batch what the core took (one lock, not one per
                // message).
                let taken: usize = msgs.into_iter().map(|m| self.publish_quiet(m, now)).sum();
                self.gate.release(taken);
            }
            Command::Query { query, reply } => {
                let _ = reply.send(Ok(self.query(query)));
            }
            Command::Health { timeout, reply } => self.start_health(timeout, reply, now),
            Command::Events { reply } => {
                let q = Arc::new(Queue::new(
                    self.options.event_queue,
                    crate::Overflow::DropOldest,
                ));
                self.event_subs.push(q.clone());
                let _ = reply.send(Ok(EventStream {
                    queue: q,
                    local: VecDeque::new(),
                }));
            }
            Command::Shutdown { timeout, reply } => self.begin_shutdown(timeout, Some(reply)),
            Command::Presence { ask, reply } => self.presence(ask, reply, now),
            Command::WaitReady { reply } => {
                if self.all_ready() {
                    let _ = reply.send(Ok(()));
                } else {
                    self.ready_waiters.push(reply);
                }
            }
        }
    }

    /// A publish whose caller waits for Redis's answer: a refusal (backpressure included)
    /// is answered at once.
    pub(super) fn publish(&mut self, msg: PubSubMessage, reply: Reply<u64>, now: Instant) {
        match self.hub.publish(&as_publish(&msg), now) {
            Ok(id) => {
                self.publishes.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Publish(e)));
            }
        }
    }

    /// A fire-and-forget publish from a `Publisher`: held, in order behind any held before,
    /// while its link pushes back; publishers wait at the gate meanwhile. Returns the bytes
    /// the core took (0 if held), for the caller to release at the gate.
    pub(super) fn publish_quiet(&mut self, msg: PubSubMessage, now: Instant) -> usize {
        if self.parked.is_empty() && self.try_publish_quiet(&msg, now) {
            return publish_bytes(&msg);
        }
        self.parked.push_back(msg);
        self.gate.set_blocked(true);
        0
    }

    /// Hands a fire-and-forget publish to the core (nobody waits for its answer: no event
    /// for its success). False if the core refused it for backpressure: the caller keeps it.
    /// True if it was taken (or refused for good, and reported): the caller releases its
    /// bytes at the gate.
    pub(super) fn try_publish_quiet(&mut self, msg: &PubSubMessage, now: Instant) -> bool {
        let hub = &mut self.hub;
        // A full link would refuse it (and count a refusal at every retry). A standalone hub
        // has no link: it delivers at once.
        if let Some(link) = hub.publish_link(&msg.room_id) {
            if hub.link_output(link) >= hub.config().max_output_bytes {
                return false;
            }
        }
        let result = hub.publish_quiet(&as_publish(msg), now).map(drop);
        match result {
            Err(PublishError::Backpressure { .. }) => return false,
            Err(cause) => {
                warn!(error = %cause, room = %msg.room_id, "publish refused");
                let ev = Event::PublishRefused {
                    room: msg.room_id.to_string(),
                    cause,
                };
                self.event_subs.retain(|q| q.push(ev.clone()));
            }
            Ok(()) => {}
        }
        true
    }

    /// Retries the held publishes as their links drain; opens the gate once none is left.
    pub(super) fn flush_parked(&mut self) -> bool {
        if self.parked.is_empty() {
            return false;
        }
        let now = self.now();
        let mut progress = false;
        let mut taken = 0;
        while let Some(msg) = self.parked.pop_front() {
            if !self.try_publish_quiet(&msg, now) {
                self.parked.push_front(msg);
                break;
            }
            taken += publish_bytes(&msg);
            progress = true;
        }
        self.gate.release(taken);
        if self.parked.is_empty() {
            self.gate.set_blocked(false);
        }
        progress
    }

    pub(super) fn presence(
        &mut self,
        ask: crate::handle::PresenceAsk,
        reply: Reply<roomcast_core::PresenceAnswer>,
        now: Instant,
    ) {
        use crate::handle::PresenceAsk;
        use roomcast_core::PresenceAnswer;
        let me = self.identity.instance;
        let hub = &mut self.hub;
        let query = match ask {
            PresenceAsk::Room(room) => hub.presence_room(&room),
            PresenceAsk::Connection(conn) => {
                if !hub.rooms_of(&conn).is_empty() && !conn.starts_with(OBSERVER_PREFIX) {
                    // Present here: no round trip needed to say it exists.
                    let _ = reply.send(Ok(PresenceAnswer::Connection(vec![me])));
                    return;
                }
                hub.presence_connection(&conn)
            }
            PresenceAsk::Instances => Ok(roomcast_core::PresenceQuery::Instances),
        };
        match query.and_then(|q| hub.query_presence(q, now)) {
            Ok(id) => {
                self.queries.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Presence(e)));
            }
        }
    }

    pub(super) fn query(&self, q: Query) -> QueryAnswer {
        let hidden = |c: &ConnId| c.as_str().starts_with(OBSERVER_PREFIX);
        match q {
            Query::LocalConnections(room) => QueryAnswer::Connections(
                self.hub
                    .members(&room)
                    .iter()
                    .filter(|c| !hidden(c))
                    .cloned()
                    .collect(),
            ),
            Query::RoomState(room) => QueryAnswer::State(self.hub.room_state(&room)),
            Query::Metrics => QueryAnswer::Metrics(Box::new({
                let mut m = self.hub.metrics();
                m.adapter_output = self
                    .links
                    .iter()
                    .map(|l| match l {
                        LinkIo::Open { wq_bytes, .. } => *wq_bytes,
                        _ => 0,
                    })
                    .sum::<usize>();
                m
            })),
        }
    }
}

/// The core's view of a message to publish.
fn as_publish(msg: &PubSubMessage) -> Publish<'_> {
    Publish {
        room: &msg.room_id,
        message_type: msg.message_type,
        data: &msg.data,
        exclude_connection: msg.exclude_connection.as_deref(),
        timestamp: msg.timestamp,
    }
}
