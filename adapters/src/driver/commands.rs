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
                let result = match &mut self.hub {
                    Some(hub) => hub.disconnect(&conn, now).map_err(Error::from),
                    None => ConnId::new(&conn, roomcast_core::naming::DEFAULT_MAX_CONN_ID_BYTES)
                        .map_err(|e| {
                            Error::Member(roomcast_core::MemberError::InvalidConnection(e))
                        })
                        .map(|_| {
                            self.rooms
                                .iter()
                                .filter(|(_, r)| r.members.contains_key(conn.as_str()))
                                .map(|(id, _)| id.clone())
                                .collect()
                        }),
                };
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
                let result = self
                    .attached(&conn, token)
                    .and_then(|()| match &mut self.hub {
                        Some(hub) => hub.leave(&room, conn.as_str(), now).map_err(Error::from),
                        None => self.leave(&room, conn.as_str(), Some(token)),
                    });
                if result.is_ok() {
                    // Its member entry (standalone: gone already).
                    self.forget_member(&room, conn.as_str(), Some(token));
                }
                let _ = reply.send(result);
            }
            Command::ConnRooms { conn, token, reply } => {
                let result = self.attached(&conn, token).map(|()| match &self.hub {
                    Some(hub) => hub.rooms_of(conn.as_str()).to_vec(),
                    None => self.standalone_rooms_of(conn.as_str()),
                });
                let _ = reply.send(result);
            }
            Command::ConnWaitLive { conn, token, reply } => {
                if let Err(e) = self.attached(&conn, token) {
                    let _ = reply.send(Err(e));
                } else {
                    let pending: VecDeque<RoomId> = match &self.hub {
                        Some(hub) => hub
                            .rooms_of(conn.as_str())
                            .iter()
                            .filter(|r| hub.room_state(r.as_str()) != Some(RoomState::Live))
                            .cloned()
                            .collect(),
                        None => VecDeque::new(),
                    };
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
                for msg in msgs {
                    self.publish_quiet(msg, now);
                }
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
        let result = match &mut self.hub {
            Some(hub) => hub.publish(&as_publish(&msg), now),
            None => {
                let _ = reply.send(self.deliver_standalone(&msg));
                return;
            }
        };
        match result {
            Ok(id) => {
                self.publishes.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Publish(e)));
            }
        }
    }

    /// A fire-and-forget publish from a `Publisher`: held, in order behind any held before,
    /// while its link pushes back; publishers wait at the gate meanwhile.
    pub(super) fn publish_quiet(&mut self, msg: PubSubMessage, now: Instant) {
        if !self.parked.is_empty() || !self.try_publish_quiet(&msg, now) {
            self.parked.push_back(msg);
            self.gate.set_blocked(true);
        }
    }

    /// Hands a fire-and-forget publish to the core (nobody waits for its answer: no event
    /// for its success). False if the core refused it for backpressure: the caller keeps it.
    pub(super) fn try_publish_quiet(&mut self, msg: &PubSubMessage, now: Instant) -> bool {
        let result = match &mut self.hub {
            Some(hub) => {
                // A full link would refuse it (and count a refusal at every retry).
                let link = hub.publish_link(&msg.room_id);
                if hub.link_output(link) >= hub.config().max_output_bytes {
                    return false;
                }
                hub.publish_quiet(&as_publish(msg), now).map(drop)
            }
            None => self.deliver_standalone(msg).map(drop).map_err(|e| match e {
                Error::Publish(e) => e,
                _ => PublishError::Shutdown,
            }),
        };
        match result {
            Err(PublishError::Backpressure { .. }) => return false,
            Err(cause) => {
                warn!(error = %cause, room = %msg.room_id, "publish refused");
                let ev = Event::PublishRefused {
                    room: msg.room_id.clone(),
                    cause,
                };
                self.event_subs.retain(|q| q.push(ev.clone()));
            }
            Ok(()) => {}
        }
        self.gate.release(publish_bytes(msg));
        true
    }

    /// Retries the held publishes as their links drain; opens the gate once none is left.
    pub(super) fn flush_parked(&mut self) -> bool {
        if self.parked.is_empty() {
            return false;
        }
        let now = self.now();
        let mut progress = false;
        while let Some(msg) = self.parked.pop_front() {
            if !self.try_publish_quiet(&msg, now) {
                self.parked.push_front(msg);
                break;
            }
            progress = true;
        }
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
        use roomcast_core::{Member, PresenceAnswer};
        let me = self.identity.instance;
        let hidden = |c: &ConnId| c.as_str().starts_with(OBSERVER_PREFIX);
        let Some(hub) = &mut self.hub else {
            // Standalone: this process is the whole cluster.
            let answer = match ask {
                PresenceAsk::Room(room) => PresenceAnswer::Room({
                    let mut m: Vec<Member> = self
                        .rooms
                        .get(room.as_str())
                        .map(|r| {
                            r.members
                                .keys()
                                .filter(|c| !hidden(c))
                                .map(|c| Member {
                                    instance: me,
                                    conn: c.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    m.sort();
                    m
                }),
                PresenceAsk::Connection(conn) => PresenceAnswer::Connection(
                    if self
                        .rooms
                        .values()
                        .any(|r| r.members.contains_key(conn.as_str()))
                    {
                        vec![me]
                    } else {
                        vec![]
                    },
                ),
                PresenceAsk::Instances => PresenceAnswer::Instances(vec![me]),
            };
            let _ = reply.send(Ok(answer));
            return;
        };
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
            Query::LocalConnections(room) => QueryAnswer::Connections(match &self.hub {
                Some(hub) => hub
                    .members(&room)
                    .iter()
                    .filter(|c| !hidden(c))
                    .cloned()
                    .collect(),
                None => self
                    .rooms
                    .get(room.as_str())
                    .map(|r| r.members.keys().filter(|c| !hidden(c)).cloned().collect())
                    .unwrap_or_default(),
            }),
            Query::RoomState(room) => QueryAnswer::State(match &self.hub {
                Some(hub) => hub.room_state(&room),
                None => self.rooms.get(room.as_str()).map(|_| RoomState::Live),
            }),
            Query::Metrics => QueryAnswer::Metrics(Box::new(match &self.hub {
                Some(hub) => {
                    let mut m = hub.metrics();
                    m.adapter_output = self
                        .links
                        .iter()
                        .map(|l| match l {
                            LinkIo::Open { wq_bytes, .. } => *wq_bytes,
                            _ => 0,
                        })
                        .sum::<usize>();
                    m
                }
                None => {
                    let mut m = roomcast_core::Metrics::default();
                    m.rooms = self.rooms.len();
                    m.rooms_live = self.rooms.len();
                    m.members = self.rooms.values().map(|r| r.members.len()).sum();
                    m
                }
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
