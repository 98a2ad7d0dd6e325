//! Presence: registering the lease and members, heartbeats, queries and their replies.
//! All presence traffic goes on one link (the presence link, found in the hub's roles) so
//! that writes apply in order.

use super::*;
use crate::link::PresenceReq;
use crate::presence::{
    parse_field, parse_instance, Keys, Member, PresenceAnswer, PresenceError, PresenceQuery,
    PresenceWhenDown, QueryId, Script, SCRIPTS,
};

/// Sweep dead instances every this many heartbeats.
const SWEEP_EVERY: u32 = 3;

#[derive(Debug)]
pub(crate) struct PresenceState {
    pub keys: Keys,
    pub registered: bool,
    pending: usize,
    gen: u64,
    next_heartbeat: Option<Instant>,
    shas: [Option<Bytes>; 3],
    next_query: u64,
    beats: u32,
}

impl PresenceState {
    pub(crate) fn new(keys: Keys) -> Self {
        PresenceState {
            keys,
            registered: false,
            pending: 0,
            gen: 0,
            next_heartbeat: None,
            shas: [None, None, None],
            next_query: 0,
            beats: 0,
        }
    }

    /// When the lease's next heartbeat is due (none while not registering or registered).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next_heartbeat
    }

    /// The next heartbeat is due a third of the lease from `now`: two may be lost before the
    /// lease runs out.
    fn heartbeat_from(&mut self, now: Instant, lease: std::time::Duration) {
        self.next_heartbeat = Some(now + lease / 3);
    }
}

impl Hub {
    fn presence_on(&self) -> bool {
        self.config.presence && !self.closed && self.presence_link_up()
    }

    /// Whether there is a presence link and it is ready (never in standalone mode).
    pub(super) fn presence_link_up(&self) -> bool {
        self.roles
            .presence()
            .is_some_and(|i| self.links[i].is_ready())
    }

    /// The presence link. Presence commands are written only while it is ready
    /// ([`Hub::presence_on`]) or in answer to what it read, so a standalone hub (no link)
    /// never asks; `None` there all the same.
    fn presence_link(&mut self) -> Option<&mut Link> {
        self.roles.presence().map(|i| &mut self.links[i])
    }

    fn presence_write(&mut self, args: &[&[u8]], register: bool, now: Instant) {
        let gen = self.presence.gen;
        let Some(l) = self.presence_link() else {
            return;
        };
        encode_command(&mut l.out, args);
        l.fifo
            .push_back((now, Request::Presence(PresenceReq::Write { gen, register })));
        if register {
            self.presence.pending += 1;
        }
    }

    /// The presence link is ready: load the scripts and register (or, shutting down, say
    /// goodbye again).
    pub(super) fn presence_link_ready(&mut self, now: Instant) {
        if !self.config.presence {
            return;
        }
        if self.shutting_down {
            // The goodbye, and the leaves before it, may have been lost with the link (or
            // never sent: it was down). A shutting-down instance must not register again:
            // it would be listed among the instances and keep its lease alive with
            // heartbeats for as long as the link stays up.
            self.presence_farewell(now);
            return;
        }
        for (i, src) in SCRIPTS.iter().enumerate() {
            let which = [Script::Room, Script::Conn, Script::Sweep][i];
            let Some(l) = self.presence_link() else {
                return;
            };
            encode_command(&mut l.out, &[b"SCRIPT", b"LOAD", src.as_bytes()]);
            l.fifo
                .push_back((now, Request::Presence(PresenceReq::Load(which))));
        }
        self.presence_register(now);
    }

    /// Writes the lease and every local membership (idempotent); registered once all of it is
    /// acknowledged.
    pub(super) fn presence_register(&mut self, now: Instant) {
        if self.shutting_down {
            // Nothing to register once the goodbye is said (a heartbeat that finds the lease
            // gone after it, for one): absent is what the instance wants to be.
            return;
        }
        self.presence.gen += 1;
        self.presence.registered = false;
        self.presence.pending = 0;
        let lease_ms = self.config.lease.as_millis().to_string();
        let k = self.presence.keys.clone();
        // One transaction: clear whatever this instance wrote before (a leave written while
        // the link was down never reached Redis), then write the truth. Other instances never
        // see a half-registered state.
        self.presence_write(&[b"MULTI"], true, now);
        self.presence_clear(true, now);
        self.presence_write(
            &[b"SET", &k.lease, b"1", b"PX", lease_ms.as_bytes()],
            true,
            now,
        );
        self.presence_write(&[b"SADD", &k.instances, &k.me], true, now);
        let rooms: Vec<(RoomId, Vec<ConnId>)> = self
            .rooms
            .iter()
            .map(|(id, r)| {
                let conns = r
                    .members()
                    .iter()
                    .filter(|c| !self.is_observer(c.as_str()))
                    .cloned();
                (id.clone(), conns.collect::<Vec<ConnId>>())
            })
            .filter(|(_, c)| !c.is_empty())
            .collect();
        let mut conn_keys: Vec<Vec<u8>> = Vec::new();
        for (room, conns) in &rooms {
            let room_key = k.room(room.as_str());
            let fields: Vec<Vec<u8>> = conns.iter().map(|c| k.field(c.as_str())).collect();
            let mut args: Vec<&[u8]> = vec![b"HSET", &room_key];
            for f in &fields {
                args.push(f);
                args.push(&k.me);
            }
            self.presence_write(&args, true, now);
            self.presence_write(&[b"SADD", &k.idx_rooms, &room_key], true, now);
            conn_keys.extend(conns.iter().map(|c| k.conn(c.as_str())));
        }
        conn_keys.sort_unstable();
        conn_keys.dedup();
        for ck in &conn_keys {
            self.presence_write(&[b"SADD", ck, &k.me], true, now);
            self.presence_write(&[b"SADD", &k.idx_conns, ck], true, now);
        }
        self.presence_write(&[b"EXEC"], true, now);
        self.presence.heartbeat_from(now, self.config.lease);
    }

    /// A local connection joined a room.
    pub(super) fn presence_join(&mut self, room: &str, conn: &str, now: Instant) {
        if !self.presence_on() || self.is_observer(conn) {
            return;
        }
        let k = self.presence.keys.clone();
        let (room_key, conn_key, field) = (k.room(room), k.conn(conn), k.field(conn));
        self.presence_write(&[b"HSET", &room_key, &field, &k.me], false, now);
        self.presence_write(&[b"SADD", &conn_key, &k.me], false, now);
        self.presence_write(&[b"SADD", &k.idx_rooms, &room_key], false, now);
        self.presence_write(&[b"SADD", &k.idx_conns, &conn_key], false, now);
    }

    /// A local connection left a room (`gone`: it is in no room any more).
    pub(super) fn presence_leave(&mut self, room: &str, conn: &str, gone: bool, now: Instant) {
        if !self.presence_on() || self.is_observer(conn) {
            return;
        }
        let k = self.presence.keys.clone();
        self.presence_write(&[b"HDEL", &k.room(room), &k.field(conn)], false, now);
        if gone {
            self.presence_write(&[b"SREM", &k.conn(conn), &k.me], false, now);
        }
    }

    /// Shutting down, after the presence link came back: removes everything this instance
    /// wrote (its entries in every room and connection, as a registration clears them
    /// first), then its lease, index and place among the instances, in one transaction.
    fn presence_farewell(&mut self, now: Instant) {
        self.presence_write(&[b"MULTI"], false, now);
        self.presence_clear(false, now);
        self.presence_goodbye(now);
        self.presence_write(&[b"EXEC"], false, now);
    }

    /// Removes every entry this instance wrote in rooms and connections (found through its
    /// rooms index), inside the caller's `MULTI`.
    fn presence_clear(&mut self, register: bool, now: Instant) {
        let k = self.presence.keys.clone();
        self.presence_write(
            &[
                b"EVAL",
                crate::presence::CLEAR_SCRIPT.as_bytes(),
                b"1",
                &k.idx_rooms,
                &k.index_prefix,
                &k.me,
            ],
            register,
            now,
        );
    }

    /// Graceful shutdown: the lease and the instance's index go at once.
    pub(super) fn presence_goodbye(&mut self, now: Instant) {
        if !self.presence_on() {
            return;
        }
        let k = self.presence.keys.clone();
        self.presence_write(&[b"DEL", &k.lease, &k.idx_rooms, &k.idx_conns], false, now);
        self.presence_write(&[b"SREM", &k.instances, &k.me], false, now);
        self.presence.registered = false;
        self.presence.next_heartbeat = None;
    }

    pub(super) fn presence_timers(&mut self, now: Instant) {
        let Some(t) = self.presence.next_heartbeat else {
            return;
        };
        if now < t || !self.presence_on() {
            return;
        }
        let ms = self.config.lease.as_millis().to_string();
        let lease = self.presence.keys.lease.clone();
        let Some(l) = self.presence_link() else {
            return;
        };
        encode_command(&mut l.out, &[b"PEXPIRE", &lease, ms.as_bytes()]);
        l.fifo
            .push_back((now, Request::Presence(PresenceReq::Heartbeat)));
        self.presence.beats += 1;
        if self.presence.beats % SWEEP_EVERY == 0 {
            let k = self.presence.keys.clone();
            self.send_script(
                Script::Sweep,
                &[&k.instances],
                &[&k.lease_prefix, &k.index_prefix],
            );
            if let Some(l) = self.presence_link() {
                l.fifo
                    .push_back((now, Request::Presence(PresenceReq::Sweep)));
            }
        }
        self.presence.heartbeat_from(now, self.config.lease);
    }

    /// Writes EVALSHA (or EVAL when the SHA is not known); the caller pushes the request.
    fn send_script(&mut self, script: Script, keys: &[&[u8]], args: &[&[u8]]) {
        let nkeys = keys.len().to_string();
        let Some(idx) = self.roles.presence() else {
            return;
        };
        let l = &mut self.links[idx];
        let mut cmd: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        match &self.presence.shas[script as usize] {
            Some(sha) => {
                cmd.push(b"EVALSHA");
                cmd.push(sha);
            }
            None => {
                cmd.push(b"EVAL");
                cmd.push(SCRIPTS[script as usize].as_bytes());
            }
        }
        cmd.push(nkeys.as_bytes());
        cmd.extend_from_slice(keys);
        cmd.extend_from_slice(args);
        encode_command(&mut l.out, &cmd);
    }

    fn send_query(&mut self, id: QueryId, query: PresenceQuery, retried: bool, now: Instant) {
        let k = self.presence.keys.clone();
        match &query {
            PresenceQuery::Room(room) => {
                let key = k.room(room.as_str());
                self.send_script(Script::Room, &[&key], &[&k.lease_prefix]);
            }
            PresenceQuery::Connection(conn) => {
                let key = k.conn(conn.as_str());
                self.send_script(Script::Conn, &[&key], &[&k.lease_prefix]);
            }
            PresenceQuery::Instances => {
                self.send_script(
                    Script::Sweep,
                    &[&k.instances],
                    &[&k.lease_prefix, &k.index_prefix],
                );
            }
        }
        if let Some(l) = self.presence_link() {
            l.fifo.push_back((
                now,
                Request::Presence(PresenceReq::Query { id, query, retried }),
            ));
        }
    }

    /// Asks who is in a room, where a connection is, or which instances are alive, across
    /// every instance; the answer comes as [`Event::Presence`] with the returned id, after one
    /// round trip (a standalone hub, the whole cluster by itself, answers at once from its own
    /// rooms, with `local_only` false). Refused at once for an invalid id, with presence off, or (unless
    /// `presence_when_down` is `Local`) while this instance is not registered: no answer
    /// that could silently miss members.
    pub fn query_presence(
        &mut self,
        query: PresenceQuery,
        now: Instant,
    ) -> Result<QueryId, PresenceError> {
        let now = self.tick(now);
        if !self.config.presence {
            return Err(PresenceError::Disabled);
        }
        self.presence.next_query += 1;
        let id = QueryId(self.presence.next_query);
        // A standalone hub is the whole cluster: its local answer is the whole answer.
        let standalone = self.roles.is_standalone();
        if standalone || !(self.presence.registered && self.presence_on()) {
            if !standalone && self.config.presence_when_down == PresenceWhenDown::Error {
                return Err(PresenceError::Unavailable);
            }
            let answer = self.local_presence(&query);
            self.events.push_back(Event::Presence {
                id,
                result: Ok(answer),
                local_only: !standalone,
            });
            return Ok(id);
        }
        self.send_query(id, query, false, now);
        Ok(id)
    }

    /// Validates a room id for a presence query.
    pub fn presence_room(&self, room: &str) -> Result<PresenceQuery, PresenceError> {
        RoomId::new(room, self.config.max_room_id_bytes)
            .map(PresenceQuery::Room)
            .map_err(PresenceError::Invalid)
    }

    /// Validates a connection id for a presence query.
    pub fn presence_connection(&self, conn: &str) -> Result<PresenceQuery, PresenceError> {
        ConnId::new(conn, self.config.max_conn_id_bytes)
            .map(PresenceQuery::Connection)
            .map_err(PresenceError::Invalid)
    }

    /// Whether this instance's lease and members are registered (presence answers whole).
    /// Always for a standalone hub: its local answers are whole.
    pub fn presence_ready(&self) -> bool {
        self.roles.is_standalone() || (self.presence.registered && self.presence_on())
    }

    fn local_presence(&self, query: &PresenceQuery) -> PresenceAnswer {
        let me = self.id.instance;
        match query {
            PresenceQuery::Room(room) => {
                let mut members: Vec<Member> = self
                    .members(room.as_str())
                    .iter()
                    .filter(|c| !self.is_observer(c.as_str()))
                    .map(|c| Member {
                        instance: me,
                        conn: c.clone(),
                    })
                    .collect();
                // Sorted, as the answers from Redis are.
                members.sort();
                PresenceAnswer::Room(members)
            }
            PresenceQuery::Connection(conn) => {
                PresenceAnswer::Connection(if self.rooms_of(conn.as_str()).is_empty() {
                    vec![]
                } else {
                    vec![me]
                })
            }
            PresenceQuery::Instances => PresenceAnswer::Instances(vec![me]),
        }
    }

    pub(super) fn on_presence_reply(&mut self, req: PresenceReq, v: Value, now: Instant) {
        let err = error_text(&v).map(|e| String::from_utf8_lossy(e).into_owned());
        match req {
            PresenceReq::Write { gen, register } => {
                // EXEC answers with one reply per queued command; any error among them counts.
                let err = err.or_else(|| match &v {
                    Value::Array(items) => items.iter().find_map(|x| {
                        error_text(x).map(|e| String::from_utf8_lossy(e).into_owned())
                    }),
                    _ => None,
                });
                if err.is_some() {
                    self.metrics.presence_errors += 1;
                }
                if register && gen == self.presence.gen {
                    self.presence.pending = self.presence.pending.saturating_sub(1);
                    if self.presence.pending == 0 && err.is_none() {
                        self.presence.registered = true;
                        self.events.push_back(Event::PresenceReady);
                    }
                }
            }
            PresenceReq::Heartbeat => match v {
                Value::Int(1) => {}
                Value::Int(_) => {
                    // The lease expired while the link stayed up (a long stall): register
                    // everything again before answering queries.
                    self.metrics.leases_lost += 1;
                    self.presence_register(now);
                }
                _ => self.metrics.presence_errors += 1,
            },
            PresenceReq::Load(script) => match v {
                Value::Bulk(sha) | Value::Simple(sha) => {
                    self.presence.shas[script as usize] = Some(sha)
                }
                _ => self.metrics.presence_errors += 1,
            },
            PresenceReq::Sweep => {
                if err.as_deref().is_some_and(|e| e.starts_with("NOSCRIPT")) {
                    self.presence.shas = [None, None, None];
                }
            }
            PresenceReq::Query { id, query, retried } => {
                if let Some(e) = err {
                    if e.starts_with("NOSCRIPT") && !retried {
                        // The server restarted and forgot the scripts: send the source.
                        self.presence.shas = [None, None, None];
                        self.send_query(id, query, true, now);
                        return;
                    }
                    self.metrics.presence_errors += 1;
                    self.events.push_back(Event::Presence {
                        id,
                        result: Err(PresenceError::Server(e)),
                        local_only: false,
                    });
                    return;
                }
                let items: Vec<Bytes> = match v {
                    Value::Array(a) => a
                        .into_iter()
                        .filter_map(|x| match x {
                            Value::Bulk(b) | Value::Simple(b) => Some(b),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let max_conn = self.config.max_conn_id_bytes;
                let answer = match query {
                    PresenceQuery::Room(_) => {
                        let mut m: Vec<Member> = items
                            .iter()
                            .filter_map(|f| parse_field(f, max_conn))
                            .collect();
                        m.sort();
                        PresenceAnswer::Room(m)
                    }
                    PresenceQuery::Connection(_) => {
                        let mut i: Vec<InstanceId> =
                            items.iter().filter_map(|b| parse_instance(b)).collect();
                        i.sort();
                        PresenceAnswer::Connection(i)
                    }
                    PresenceQuery::Instances => {
                        let mut i: Vec<InstanceId> =
                            items.iter().filter_map(|b| parse_instance(b)).collect();
                        i.sort();
                        PresenceAnswer::Instances(i)
                    }
                };
                self.events.push_back(Event::Presence {
                    id,
                    result: Ok(answer),
                    local_only: false,
                });
            }
        }
    }

    /// The presence link broke: unregistered until it is back; queries in flight fail.
    pub(super) fn presence_link_lost(&mut self, lost: Vec<PresenceReq>) {
        self.presence.registered = false;
        self.presence.pending = 0;
        self.presence.next_heartbeat = None;
        for req in lost {
            if let PresenceReq::Query { id, .. } = req {
                self.events.push_back(Event::Presence {
                    id,
                    result: Err(PresenceError::Unavailable),
                    local_only: false,
                });
            }
        }
    }
}
