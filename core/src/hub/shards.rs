//! Cluster mode in the hub: the topology, where each room's traffic goes, and what happens
//! when a slot moves or a master fails over.
//!
//! A cluster hub starts with one link, the *topology link*, to a seed node. Once its
//! handshake proved the node is a cluster node of Redis 7 or later, it asks `CLUSTER SHARDS`;
//! the reply becomes a [`Placement`]: one place per master, each with a subscriber link and
//! `pool_size` publish links, opened at once. The topology is read again on `-MOVED`, on a
//! `sunsubscribe` the hub did not ask for, on any lost link, and every `topology_refresh`.
//! While a refresh is on its way, rooms to subscribe wait (they would likely go to the old
//! owner), and so do publishes to a slot that was just redirected.
//!
//! Invariants:
//! - A room is subscribed on one subscriber link at a time, the one recorded in the room
//!   table; every `SSUBSCRIBE`/`SUNSUBSCRIBE` names channels of one slot only.
//! - One instance's publishes to one room reach Redis in the order they were made, retries
//!   included: when a slot is redirected, every publish of that slot still held for the old
//!   owner's links (written and unanswered, or queued) moves, in order, to the reroute queue,
//!   and new publishes to the slot queue behind them until they are placed again.
//! - A publish is never dropped silently: it is confirmed, failed with a reason, or waits in
//!   a queue bounded by `max_queued_publishes` and `max_queued_bytes`.

use super::*;
use crate::cluster::{key_slot, ClusterError, Placement, PlacementChange, Slot, SLOT_COUNT};
use crate::config::ClusterServers;
use crate::link::{Frame, Queued};
use roles::{Place, Roles};

/// The cluster state of a hub.
#[derive(Debug)]
pub(super) struct Shards {
    servers: ClusterServers,
    /// The places, once a topology was read.
    placement: Option<Placement>,
    /// A `CLUSTER SHARDS` is on its way.
    asking: bool,
    /// A refresh was asked for while one was on its way: ask again when it is back.
    again: bool,
    /// Something said the topology changed (a redirect, a `sunsubscribe` nobody asked for, a
    /// lost link) and no topology was read since: subscriptions wait for one, or they would
    /// go to the old owner again and again.
    stale: bool,
    /// When the next refresh is due (periodic, or soon after an incomplete topology).
    due: Instant,
    /// Which address the topology link tries next: the seeds, then the nodes learnt.
    cursor: usize,
    /// Publishes to send again on their slot's owner, in publish order.
    reroute: VecDeque<(Slot, Outgoing)>,
    /// Slots with publishes in `reroute` (one bit each): new publishes to them queue behind.
    held: Vec<u64>,
    /// How often each publish was answered `-MOVED` (only those that were).
    redirects: hashbrown::HashMap<u64, u32, FixedState>,
    /// The control channel of each place's subscriber, with the slot it was made for.
    control_names: Vec<Option<(Slot, Bytes)>>,
}

impl Shards {
    pub(super) fn new(servers: ClusterServers, now: Instant) -> Shards {
        Shards {
            servers,
            placement: None,
            asking: false,
            again: false,
            stale: false,
            due: now,
            cursor: 0,
            reroute: VecDeque::new(),
            held: vec![0; SLOT_COUNT / 64],
            redirects: hashbrown::HashMap::with_hasher(FixedState::with_seed(7)),
            control_names: Vec::new(),
        }
    }

    fn is_held(&self, slot: Slot) -> bool {
        self.held[slot.index() / 64] & (1 << (slot.index() % 64)) != 0
    }

    fn hold(&mut self, slot: Slot) {
        self.held[slot.index() / 64] |= 1 << (slot.index() % 64);
    }

    /// The topology link broke with a `CLUSTER SHARDS` on its way: ask again once it is
    /// back.
    pub(super) fn topology_lost(&mut self) {
        if self.asking {
            self.asking = false;
            self.again = true;
        }
    }

    /// Takes every publish waiting to be placed again (the hub is closing).
    pub(super) fn take_reroute(&mut self) -> Vec<Outgoing> {
        self.held.iter_mut().for_each(|w| *w = 0);
        self.reroute.drain(..).map(|(_, o)| o).collect()
    }

    /// The topology last read.
    pub(super) fn topology(&self) -> Option<&crate::cluster::Topology> {
        self.placement.as_ref().map(Placement::topology)
    }

    /// Whether subscriptions should wait: no topology yet, a refresh on its way, or the
    /// topology known to be stale.
    pub(super) fn subscriptions_wait(&self) -> bool {
        self.placement.is_none() || self.asking || self.stale
    }
}

/// Where a room's traffic goes in cluster mode.
pub(super) enum Route {
    /// A link of the room's owner.
    Link(usize),
    /// Nowhere yet: the publish waits in the reroute queue (its slot has no known owner, or
    /// earlier publishes to the slot wait there).
    Wait(Slot),
}

/// The channel of a `PUBLISH`/`SPUBLISH` frame written by the hub (`*3`, the command, the
/// channel, the payload).
pub(super) fn frame_channel(frame: &[u8]) -> Option<&[u8]> {
    fn bulk(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let rest = b.strip_prefix(b"$")?;
        let end = rest.iter().position(|&c| c == b'\r')?;
        let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        let body = rest.get(end + 2..)?;
        Some((body.get(..len)?, body.get(len + 2..)?))
    }
    let rest = frame.strip_prefix(b"*3\r\n")?;
    let (_, rest) = bulk(rest)?;
    let (channel, _) = bulk(rest)?;
    Some(channel)
}

impl Hub {
    /// The slot of a room's channel.
    pub(super) fn slot_of_room(&mut self, room: &str) -> Slot {
        self.scratch.clear();
        self.namer.write_id_channel(room, &mut self.scratch);
        key_slot(&self.scratch)
    }

    /// Where a publish to `room` goes in cluster mode.
    pub(super) fn cluster_route(&mut self, room: &str) -> Route {
        let slot = self.slot_of_room(room);
        let Some(shards) = &self.shards else {
            return Route::Wait(slot);
        };
        if shards.is_held(slot) {
            return Route::Wait(slot);
        }
        let place = shards
            .placement
            .as_ref()
            .and_then(|p| p.place_of_slot(slot));
        match place.and_then(|p| self.roles.publisher_of(Roles::cluster_place(p), room)) {
            Some(idx) => Route::Link(idx),
            None => Route::Wait(slot),
        }
    }

    /// The subscriber link a room is to be subscribed on now, if it can be.
    fn subscriber_route(
        namer: &ChannelNamer,
        scratch: &mut Vec<u8>,
        shards: &Shards,
        roles: &Roles,
        links: &[Link],
        room: &str,
    ) -> Option<u16> {
        scratch.clear();
        namer.write_id_channel(room, scratch);
        let place = shards
            .placement
            .as_ref()?
            .place_of_slot(key_slot(scratch))?;
        let sub = roles.subscriber_of(Roles::cluster_place(place))?;
        links[sub].is_ready().then_some(sub as u16)
    }

    /// Queues a publish for its slot's owner, behind every publish to the slot already there.
    pub(super) fn queue_reroute(&mut self, slot: Slot, o: Outgoing) {
        if let Some(s) = &mut self.shards {
            s.hold(slot);
            s.reroute.push_back((slot, o));
        }
    }

    /// Asks for the topology again: now if the topology link is ready and nothing is on its
    /// way, after the reply on its way otherwise, or as soon as the link is ready.
    pub(super) fn request_refresh(&mut self, now: Instant) {
        let Some(s) = &mut self.shards else {
            return;
        };
        s.stale = true;
        if s.asking {
            s.again = true;
            return;
        }
        s.due = now;
        self.send_refresh(now);
    }

    /// Writes `CLUSTER SHARDS` on the topology link if it is ready and none is on its way.
    pub(super) fn send_refresh(&mut self, now: Instant) {
        let Some(t) = self.roles.topology() else {
            return;
        };
        let Some(s) = &mut self.shards else {
            return;
        };
        if s.asking || !self.links[t].is_ready() || self.closed {
            return;
        }
        s.asking = true;
        s.again = false;
        let l = &mut self.links[t];
        encode_command(&mut l.out, &[b"CLUSTER", b"SHARDS"]);
        l.fifo.push_back((now, Request::Topology));
    }

    /// When the topology is to be read next, if the topology link could ask now.
    pub(super) fn refresh_deadline(&self) -> Option<Instant> {
        let s = self.shards.as_ref()?;
        let t = self.roles.topology()?;
        (!s.asking && !self.closed && self.links[t].is_ready()).then_some(s.due)
    }

    /// The address the topology link opens next: seeds first, then every node learnt, in
    /// turn, so a dead seed does not stop the hub from finding the cluster.
    pub(super) fn next_topology_server(&mut self) -> Option<crate::config::ServerConfig> {
        let s = self.shards.as_mut()?;
        let mut candidates: Vec<(String, u16)> = s
            .servers
            .seeds
            .iter()
            .map(|seed| (seed.host.clone(), seed.port))
            .collect();
        if let Some(p) = &s.placement {
            for shard in p.topology().shards() {
                for node in shard.nodes() {
                    if let Some(port) = node.port_for(s.servers.tls) {
                        let c = (node.host().to_string(), port);
                        if node.is_online() && !candidates.contains(&c) {
                            candidates.push(c);
                        }
                    }
                }
            }
        }
        let (host, port) = candidates.get(s.cursor % candidates.len().max(1))?.clone();
        s.cursor = s.cursor.wrapping_add(1);
        Some(s.servers.node(&host, port))
    }

    /// The reply to `CLUSTER SHARDS`.
    pub(super) fn on_topology(&mut self, idx: usize, v: Value, now: Instant) {
        let parsed = match error_text(&v) {
            Some(e) => Err(format!(
                "CLUSTER SHARDS was refused: {}",
                String::from_utf8_lossy(e)
            )),
            None => crate::cluster::Topology::from_shards_reply(&v).map_err(|e| e.to_string()),
        };
        let Some(s) = &mut self.shards else {
            return;
        };
        s.asking = false;
        if !s.again {
            // Nothing said the topology changed after this one was asked for.
            s.stale = false;
        }
        let topology = match parsed {
            Ok(t) => t,
            Err(e) => {
                // Another node may answer: the topology link moves on to the next address.
                self.link_failed(idx, LinkError::Protocol(e), true, now);
                return;
            }
        };
        self.metrics.topology_refreshes += 1;
        let complete = topology.is_complete();
        let change = match &mut s.placement {
            Some(p) => p.refresh(topology),
            None => {
                let (p, change) = Placement::new(s.servers.clone(), topology);
                s.placement = Some(p);
                change
            }
        };
        self.apply_placement(change, now);
        let s = self.shards.as_mut().expect("cluster mode");
        let retry = !complete || !s.reroute.is_empty() || self.rooms.held() > 0;
        s.due = now
            + if retry {
                self.config.backoff_min.max(Duration::from_millis(100))
            } else {
                self.config.topology_refresh
            };
        if s.again {
            self.send_refresh(now);
        }
    }

    /// Makes the links of new places, closes those of places that own no slot any more, and
    /// places again what waited: held rooms, publishes to reroute, the presence link.
    fn apply_placement(&mut self, change: PlacementChange, now: Instant) {
        for id in &change.added {
            let server = self
                .shards
                .as_ref()
                .and_then(|s| s.placement.as_ref()?.server(*id).cloned())
                .expect("a place the placement just added");
            let new = self.roles.add_place(server, self.config.pool_size);
            debug_assert_eq!(self.roles.place_of_link(new[0]), Roles::cluster_place(*id));
            for idx in new {
                let link = Link::new(
                    roles::Roles::id(idx),
                    self.roles.role(idx),
                    &self.config,
                    now,
                );
                self.links.push(link);
                self.controls.push(control::Control::new(Bytes::new()));
                if !self.closed {
                    self.open(idx, now);
                }
            }
        }
        for id in &change.retired {
            self.retire_place(Roles::cluster_place(*id), now);
        }
        for id in &change.revived {
            let place = Roles::cluster_place(*id);
            let links: Vec<usize> = self.roles.links_of(place).collect();
            for idx in links {
                if self.links[idx].state == LinkState::Closed && !self.closed {
                    self.links[idx].attempts = 0;
                    self.open(idx, now);
                }
            }
        }
        self.rooms.release_held();
        self.dispatch_reroute(now);
        self.place_presence(now);
    }

    /// Cluster mode keeps every presence key under one hash tag: the presence link is the
    /// first publish link of the master that owns that slot, chosen again whenever the
    /// topology changes. A new presence link registers this instance afresh (its lease,
    /// rooms and connections), as after a lost presence link.
    fn place_presence(&mut self, now: Instant) {
        if !self.config.presence {
            return;
        }
        let slot = self.presence.keys.slot();
        let new = self
            .shards
            .as_ref()
            .and_then(|s| s.placement.as_ref()?.place_of_slot(slot))
            .and_then(|p| self.roles.publishers_of(Roles::cluster_place(p)).first())
            .copied();
        let old = self.roles.presence();
        if new == old {
            return;
        }
        self.roles.set_presence(new);
        if old.is_some() {
            self.presence_link_lost(Vec::new());
        }
        if new.is_some_and(|i| self.links[i].is_ready()) {
            self.presence_link_ready(now);
        }
    }

    /// A place owns no slot any more (its master failed over, or gave its slots away): its
    /// links close, its rooms are subscribed again where their slots are now, and its
    /// publishes not confirmed go to their slots' new owners, in order.
    fn retire_place(&mut self, place: Place, now: Instant) {
        let links: Vec<usize> = self.roles.links_of(place).collect();
        for idx in links {
            if self.links[idx].state == LinkState::Closed {
                continue;
            }
            let up = !matches!(self.links[idx].state, LinkState::Backoff { .. });
            self.link_failed(idx, LinkError::Retired, up, now);
            let l = &mut self.links[idx];
            l.state = LinkState::Closed;
            let queue = std::mem::take(&mut l.queue);
            for o in queue {
                let slot = self.outgoing_slot(&o);
                self.queue_reroute(slot, o);
            }
        }
    }

    /// The slot a queued publish goes to.
    fn outgoing_slot(&mut self, o: &Outgoing) -> Slot {
        match &o.bytes {
            Queued::Body { room, .. } => {
                let room = room.clone();
                self.slot_of_room(room.as_str())
            }
            Queued::Frame(frame) => key_slot(frame_channel(frame).unwrap_or_default()),
        }
    }

    /// The room a queued publish is for.
    fn outgoing_room(&self, o: &Outgoing) -> Option<RoomId> {
        match &o.bytes {
            Queued::Body { room, .. } => Some(room.clone()),
            Queued::Frame(frame) => self
                .namer
                .room_from_channel(frame_channel(frame)?, self.config.max_room_id_bytes),
        }
    }

    /// Moves what waits in the reroute queue to the links of its slots' owners, keeping the
    /// order of each slot's publishes; what still has no owner stays (and keeps its slot
    /// held).
    pub(super) fn dispatch_reroute(&mut self, now: Instant) {
        let Some(s) = &mut self.shards else {
            return;
        };
        if s.reroute.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut s.reroute);
        s.held.iter_mut().for_each(|w| *w = 0);
        let mut touched = Vec::new();
        for (slot, o) in waiting {
            let s = self.shards.as_ref().expect("cluster mode");
            let place = if s.is_held(slot) {
                // An earlier publish to this slot still waits: this one waits behind it.
                None
            } else {
                s.placement.as_ref().and_then(|p| p.place_of_slot(slot))
            };
            let link = match (place, self.outgoing_room(&o)) {
                (Some(p), Some(room)) => self
                    .roles
                    .publisher_of(Roles::cluster_place(p), room.as_str()),
                (Some(_), None) => {
                    // Not a frame this hub wrote: cannot happen; fail it rather than guess.
                    self.queued_total -= 1;
                    self.queued_bytes -= o.len();
                    self.fail_publish(
                        o.id,
                        PublishError::Server("a queued publish lost its room".into()),
                    );
                    continue;
                }
                (None, _) => None,
            };
            match link {
                Some(idx) => {
                    self.links[idx].queue.push_back(o);
                    if !touched.contains(&idx) {
                        touched.push(idx);
                    }
                }
                None => self.queue_reroute(slot, o),
            }
        }
        for idx in touched {
            self.pump(idx, now);
        }
    }

    /// A publish on link `idx` was answered with a cluster error (`-MOVED`, `-CLUSTERDOWN`,
    /// `-TRYAGAIN`): it, and every publish of its slot still held for the links of that place,
    /// go to the reroute queue in order, and the topology is read again.
    pub(super) fn on_publish_redirected(
        &mut self,
        idx: usize,
        o: crate::link::Written,
        error: ClusterError,
        now: Instant,
    ) {
        let frame = match o.frame {
            Frame::Sent(f) => f,
            Frame::Unsent { .. } => Bytes::new(),
        };
        let slot = match &error {
            ClusterError::Moved(r) | ClusterError::Ask(r) => r.slot,
            _ => key_slot(frame_channel(&frame).unwrap_or_default()),
        };
        let count = {
            let s = self.shards.as_mut().expect("cluster mode");
            let c = s.redirects.entry(o.id.0).or_insert(0);
            *c += 1;
            *c
        };
        let place = self.roles.place_of_link(idx);
        // Everything of the slot still held for this place, in publish order: it must not
        // be overtaken by this publish's retry.
        let mut captured: Vec<Outgoing> = Vec::new();
        let links: Vec<usize> = self.roles.publishers_of(place).to_vec();
        for &p in &links {
            let l = &mut self.links[p];
            for (_, req) in l.fifo.iter_mut() {
                let Request::Publish(w) = req else { continue };
                if w.moved {
                    continue;
                }
                let bytes = match &w.frame {
                    Frame::Sent(f) => f.clone(),
                    Frame::Unsent { start, end } => {
                        Bytes::copy_from_slice(l.out.get(*start..*end).unwrap_or_default())
                    }
                };
                if key_slot(frame_channel(&bytes).unwrap_or_default()) == slot {
                    // Its own answer will be ignored; the copy is what counts.
                    w.moved = true;
                    captured.push(Outgoing {
                        id: w.id,
                        bytes: Queued::Frame(bytes),
                    });
                }
            }
        }
        for &p in &links {
            let queue = std::mem::take(&mut self.links[p].queue);
            let mut kept = VecDeque::with_capacity(queue.len());
            for q in queue {
                if self.outgoing_slot(&q) == slot {
                    self.queued_total -= 1;
                    self.queued_bytes -= q.len();
                    captured.push(q);
                } else {
                    kept.push_back(q);
                }
            }
            self.links[p].queue = kept;
        }
        let mine = Outgoing {
            id: o.id,
            bytes: Queued::Frame(frame),
        };
        let mut all = Vec::with_capacity(captured.len() + 1);
        if count > self.config.max_redirects || mine.len() == 0 {
            self.shards
                .as_mut()
                .expect("cluster mode")
                .redirects
                .remove(&o.id.0);
            self.fail_publish(
                o.id,
                PublishError::Redirected {
                    slot: slot.get(),
                    last: error.to_string(),
                },
            );
        } else {
            all.push(mine);
        }
        all.extend(captured);
        // Publish ids grow in publish order: sorting restores it across the links.
        all.sort_by_key(|q| q.id);
        for q in all {
            self.queued_total += 1;
            self.queued_bytes += q.len();
            self.queue_reroute(slot, q);
        }
        self.request_refresh(now);
    }

    /// A publish was answered (a count or a failure): forget its redirects.
    #[inline]
    pub(super) fn forget_redirects(&mut self, id: PublishId) {
        if let Some(s) = &mut self.shards {
            if !s.redirects.is_empty() {
                s.redirects.remove(&id.0);
            }
        }
    }

    /// The control channel of subscriber link `idx` in cluster mode: one whose slot its
    /// place owns (made again when the place's first slot changed).
    pub(super) fn shard_control(&mut self, idx: usize) -> Option<Bytes> {
        let place = self.roles.place_of_link(idx);
        let s = self.shards.as_mut()?;
        let p = s.placement.as_ref()?;
        let pid = crate::cluster::PlaceId(place.0.checked_sub(1)?);
        let slot = p
            .topology()
            .shards()
            .iter()
            .filter_map(|sh| sh.first_slot())
            .find(|&sl| p.place_of_slot(sl) == Some(pid))?;
        if s.control_names.len() <= place.0 {
            s.control_names.resize(place.0 + 1, None);
        }
        if let Some((at, name)) = &s.control_names[place.0] {
            if *at == slot {
                return Some(name.clone());
            }
        }
        let name = crate::cluster::shard_control_channel(&self.namer, self.id.instance, slot)?;
        s.control_names[place.0] = Some((slot, name.clone()));
        Some(name)
    }

    /// Writes the subscription changes of this turn in cluster mode: per subscriber link, one
    /// `SSUBSCRIBE` per slot's batch, and one `SUNSUBSCRIBE` per slot's batch followed by its
    /// fencing `PING`.
    pub(super) fn flush_shard_subscriptions(&mut self, now: Instant) {
        if self.shards.as_ref().is_none_or(|s| s.subscriptions_wait()) {
            return;
        }
        let subs: Vec<usize> = self.roles.subscribers().collect();
        for &sub in &subs {
            if !self.links[sub].is_ready() || !self.controls[sub].wants_subscribe(self.closed) {
                continue;
            }
            let Some(name) = self.shard_control(sub) else {
                continue;
            };
            self.controls[sub].channel = name;
            self.controls[sub].subscribe_now(self.closed);
            let l = &mut self.links[sub];
            encode_command(&mut l.out, &[b"SSUBSCRIBE", &self.controls[sub].channel]);
            l.fifo.push_back((
                now,
                Request::SlotSubscribe {
                    remaining: 1,
                    rooms: Vec::new(),
                    control: true,
                },
            ));
        }
        if !self.rooms.has_commands() {
            return;
        }
        let Some(shards) = &self.shards else {
            return;
        };
        let (namer, scratch, roles, links) =
            (&self.namer, &mut self.scratch, &self.roles, &self.links);
        let (sub_rooms, unsub_rooms) = self
            .rooms
            .take_routed(self.config.max_subscriptions_in_flight, |room| {
                Hub::subscriber_route(namer, scratch, shards, roles, links, room.as_str())
            });
        for (subscribe, rooms) in [(true, sub_rooms), (false, unsub_rooms)] {
            if rooms.is_empty() {
                continue;
            }
            let mut keyed: Vec<(u16, Slot, RoomId)> = rooms
                .into_iter()
                .map(|(room, link)| {
                    let slot = self.slot_of_room(room.as_str());
                    (link, slot, room)
                })
                .collect();
            // Stable: rooms of one slot keep their order.
            keyed.sort_by_key(|(link, slot, _)| (*link, *slot));
            let mut i = 0;
            while i < keyed.len() {
                let (link, slot) = (keyed[i].0, keyed[i].1);
                let mut j = i;
                while j < keyed.len()
                    && keyed[j].0 == link
                    && keyed[j].1 == slot
                    && j - i < self.config.subscribe_batch
                {
                    j += 1;
                }
                let batch: Vec<RoomId> = keyed[i..j].iter().map(|(_, _, r)| r.clone()).collect();
                self.write_slot_batch(link as usize, subscribe, batch, now);
                i = j;
            }
        }
    }

    fn write_slot_batch(&mut self, idx: usize, subscribe: bool, rooms: Vec<RoomId>, now: Instant) {
        let verb: &[u8] = if subscribe {
            b"SSUBSCRIBE"
        } else {
            b"SUNSUBSCRIBE"
        };
        let l = &mut self.links[idx];
        encode_array_header(&mut l.out, rooms.len() + 1);
        encode_bulk(&mut l.out, verb);
        for room in &rooms {
            self.scratch.clear();
            self.namer.write_room_channel(room, &mut self.scratch);
            encode_bulk(&mut l.out, &self.scratch);
        }
        if subscribe {
            l.fifo.push_back((
                now,
                Request::SlotSubscribe {
                    remaining: rooms.len(),
                    rooms,
                    control: false,
                },
            ));
        } else {
            encode_command(&mut l.out, &[b"PING"]);
            l.fifo.push_back((
                now,
                Request::Fence {
                    rooms,
                    answered: false,
                },
            ));
        }
    }

    /// An `SSUBSCRIBE` was refused as a whole: its rooms wait for the next topology (or, for
    /// an error that is no cluster redirect, the link starts over).
    pub(super) fn on_slot_subscribe_refused(
        &mut self,
        idx: usize,
        rooms: Vec<RoomId>,
        control: bool,
        v: &Value,
        now: Instant,
    ) {
        let text = error_text(v).unwrap_or_default();
        if !matches!(ClusterError::parse(text), Ok(Some(_))) {
            let cause = match error_text(v) {
                Some(e) => crate::link::refused_error(crate::LinkStep::Subscribe, e),
                None => LinkError::Protocol(format!("unexpected reply to SSUBSCRIBE: {v:?}")),
            };
            self.link_failed(idx, cause, true, now);
            return;
        }
        self.metrics.redirects += 1;
        for room in rooms {
            self.rooms.on_subscribe_refused(room.as_str(), idx as u16);
        }
        if control {
            self.controls[idx].refused();
        }
        self.request_refresh(now);
    }

    /// The `pong` after a `SUNSUBSCRIBE` batch: every room of it still being left on this
    /// link is left (the server's own `sunsubscribe` or a `-MOVED` answered it).
    pub(super) fn on_fence(&mut self, idx: usize, rooms: Vec<RoomId>) {
        for room in rooms {
            self.rooms.on_left(room, idx as u16);
        }
    }
}
