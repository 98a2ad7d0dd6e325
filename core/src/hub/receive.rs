//! Frames from Redis: replies matched to requests, confirmations, messages and probes.

use super::*;

impl Hub {
    pub(super) fn on_frame(&mut self, idx: usize, frame: Incoming, now: Instant) {
        match frame {
            Incoming::Message(message) => {
                if self.links[idx].role == LinkRole::Subscriber {
                    self.on_message(idx, message, now);
                }
            }
            Incoming::Subscribed { channel } => {
                self.count_confirmation(idx);
                if channel == self.controls[idx].channel {
                    self.controls[idx].confirmed();
                    return;
                }
                let t = match self
                    .namer
                    .room_from_channel(&channel, self.config.max_room_id_bytes)
                {
                    Some(room) => self.rooms.on_subscribed(room, idx as u16),
                    None => Transition::Stray,
                };
                self.on_transition(t);
            }
            Incoming::Unsubscribed { channel } => {
                // In a cluster the server also unsubscribes on its own (a slot moved away):
                // `sunsubscribe` pushes answer no request there (the fence does, see
                // `Request::Fence`).
                let cluster = self.shards.is_some();
                if !cluster {
                    self.count_confirmation(idx);
                }
                let Some(channel) = channel else { return };
                if channel == self.controls[idx].channel {
                    let was_live = self.controls[idx].is_live();
                    self.controls[idx].dropped(self.shutting_down);
                    if cluster && was_live {
                        self.request_refresh(now);
                        // The control channel's slot moved. The probe vouched for the
                        // link's room subscriptions through it; a new control channel,
                        // subscribed after them, could not tell whether they went deaf
                        // meanwhile (redis/redis#12558 deafens every subscription a node
                        // holds at the time). The link starts over, so that its rooms are
                        // subscribed again after a control channel that the probe checks.
                        if !self.shutting_down && self.links[idx].is_ready() {
                            self.link_failed(idx, LinkError::ControlMoved, true, now);
                        }
                    }
                    return;
                }
                let t = match self
                    .namer
                    .room_from_channel(&channel, self.config.max_room_id_bytes)
                {
                    Some(room) => self.rooms.on_unsubscribed(room, idx as u16),
                    None => Transition::Stray,
                };
                let dropped = matches!(t, Transition::ServerUnsubscribed(_));
                self.on_transition(t);
                if cluster && dropped {
                    // The slot moved, or the shard failed over: find the new owner.
                    self.request_refresh(now);
                }
            }
            Incoming::Pong => self.on_reply(idx, Value::Simple(Bytes::from_static(b"PONG")), now),
            Incoming::Oversize { channel, len } => {
                if self.links[idx].role == LinkRole::Subscriber {
                    self.on_oversize(idx, &channel, len);
                }
            }
            Incoming::OtherPush => {}
            Incoming::Reply(v) => self.on_reply(idx, v, now),
        }
    }

    /// Checks a `HELLO` reply against the mode the URL chose: a single-server URL must not
    /// reach a cluster node. (A reply that says nothing readable about the mode, from a
    /// server that is not Redis itself, is accepted in single-server mode, as before.)
    fn check_mode(&self, idx: usize, reply: &Value) -> Result<(), LinkError> {
        let server = self.roles.server_of(idx);
        let addr = format!("{}:{}", server.host, server.port);
        let cluster = self.shards.is_some();
        match crate::cluster::check_server_mode(reply, cluster, &addr) {
            Err(e @ crate::cluster::ModeError::IsACluster { .. }) => {
                Err(LinkError::WrongMode(e.to_string()))
            }
            // Cluster mode needs a cluster node of Redis 7 or later (sharded pub/sub).
            Err(e) if cluster => Err(LinkError::WrongMode(e.to_string())),
            _ => Ok(()),
        }
    }

    pub(super) fn count_confirmation(&mut self, idx: usize) {
        let l = &mut self.links[idx];
        if let Some((
            _,
            Request::Subscription { remaining } | Request::SlotSubscribe { remaining, .. },
        )) = l.fifo.front_mut()
        {
            *remaining -= 1;
            if *remaining == 0 {
                l.fifo.pop_front();
            }
        }
    }

    pub(super) fn on_transition(&mut self, t: Transition) {
        match t {
            Transition::Live(room) => self.events.push_back(Event::RoomLive { room }),
            Transition::ServerUnsubscribed(room) => {
                self.metrics.server_unsubscribes += 1;
                self.events.push_back(Event::RoomNotLive {
                    room,
                    reason: NotLiveReason::ServerUnsubscribed,
                });
            }
            Transition::Stray => self.metrics.stray_confirmations += 1,
            Transition::Quiet => {}
        }
    }

    pub(super) fn on_reply(&mut self, idx: usize, v: Value, now: Instant) {
        // Cluster mode: an error before a SUNSUBSCRIBE batch's fencing `pong` answers the
        // SUNSUBSCRIBE (`-MOVED` when the server had dropped the slot already); the batch
        // ends at the `pong`.
        if let Some((_, Request::Fence { answered, .. })) = self.links[idx].fifo.front_mut() {
            if !*answered && error_text(&v).is_some() {
                *answered = true;
                self.metrics.redirects += 1;
                self.request_refresh(now);
                return;
            }
        }
        let Some((sent, req)) = self.links[idx].fifo.pop_front() else {
            self.link_failed(
                idx,
                LinkError::Protocol("a reply arrived with no request outstanding".into()),
                true,
                now,
            );
            return;
        };
        match req {
            Request::Handshake(step) => {
                let cluster = self.shards.is_some();
                let cause = match (step, error_text(&v)) {
                    // A server that cannot answer `HELLO 2` (before 6.0, or an ACL that
                    // forbids it) cannot say its mode: a single server is accepted as before
                    // (cluster mode needs Redis 7: `check_mode` refuses it).
                    (crate::link::Step::Mode, Some(_)) if !cluster => None,
                    (crate::link::Step::Mode, Some(_)) => self.check_mode(idx, &v).err(),
                    (_, Some(e)) => Some(handshake_error(step, e)),
                    (crate::link::Step::Mode | crate::link::Step::Hello, None) => {
                        self.check_mode(idx, &v).err()
                    }
                    (_, None) => None,
                };
                if let Some(cause) = cause {
                    self.link_failed(idx, cause, true, now);
                } else if !self.links[idx].handshake_pending() {
                    self.link_ready(idx, now);
                }
            }
            Request::Ping { user } => {
                if let Some(e) = error_text(&v) {
                    let cause = crate::link::refused_error(crate::LinkStep::Ping, e);
                    self.link_failed(idx, cause, true, now);
                    return;
                }
                let l = &mut self.links[idx];
                l.last_pong = Some(now);
                if user {
                    self.events.push_back(Event::Pong {
                        link: l.id,
                        rtt: now.saturating_duration_since(sent),
                    });
                }
            }
            Request::Publish(o) => {
                self.links[idx].publish_answered(&o);
                if o.moved {
                    // A copy went to the slot's new owner: that one's answer counts.
                    self.pump(idx, now);
                    return;
                }
                if self.shards.is_some() {
                    if let Value::Error(e) = &v {
                        if let Ok(Some(err)) = crate::cluster::ClusterError::parse(e) {
                            if !matches!(err, crate::cluster::ClusterError::CrossSlot { .. }) {
                                self.metrics.redirects += 1;
                                self.on_publish_redirected(idx, o, err, now);
                                self.pump(idx, now);
                                return;
                            }
                        }
                    }
                    self.forget_redirects(o.id);
                }
                match v {
                    Value::Int(n) => {
                        self.metrics.publish_confirmed += 1;
                        // Most publishes are quiet: the set is usually empty.
                        let wanted =
                            !self.confirm_wanted.is_empty() && self.confirm_wanted.remove(&o.id.0);
                        if wanted {
                            self.events.push_back(Event::PublishConfirmed {
                                id: o.id,
                                receivers: n.max(0) as u64,
                            });
                        }
                    }
                    Value::Error(e) => self.fail_publish(
                        o.id,
                        PublishError::Server(String::from_utf8_lossy(&e).into_owned()),
                    ),
                    other => self.fail_publish(
                        o.id,
                        PublishError::Server(format!("unexpected reply {other:?}")),
                    ),
                }
                self.pump(idx, now);
            }
            Request::Probe { token } => {
                if !self.prober.is(token) {
                    return;
                }
                match v {
                    Value::Int(n) if n > 0 => self.prober.confirmed(now),
                    // Redis knows no subscriber for our control channel: we are deaf.
                    Value::Int(_) => self.probed_deaf(now),
                    _ => self.prober.abandon(),
                }
            }
            Request::Presence(req) => {
                if self.shards.is_some() {
                    let redirected = error_text(&v).is_some_and(|e| {
                        matches!(
                            crate::cluster::ClusterError::parse(e),
                            Ok(Some(
                                crate::cluster::ClusterError::Moved(_)
                                    | crate::cluster::ClusterError::Ask(_)
                                    | crate::cluster::ClusterError::ClusterDown { .. }
                            ))
                        )
                    });
                    if redirected {
                        // The presence slot moved: the next topology moves the presence
                        // link, which registers again there.
                        self.metrics.redirects += 1;
                        self.request_refresh(now);
                    }
                }
                self.on_presence_reply(req, v, now)
            }
            Request::Topology => self.on_topology(idx, v, now),
            Request::SlotSubscribe { rooms, control, .. } => {
                self.on_slot_subscribe_refused(idx, rooms, control, &v, now)
            }
            Request::Fence { rooms, .. } => self.on_fence(idx, rooms),
            Request::Subscription { .. } => {
                // An error instead of confirmations (e.g. an ACL refusing the channel): the
                // subscriptions are in an unknown state, so start the link over.
                let text = error_text(&v)
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .unwrap_or_else(|| format!("unexpected reply to SUBSCRIBE: {v:?}"));
                let cause = match error_text(&v) {
                    Some(e) => crate::link::refused_error(crate::LinkStep::Subscribe, e),
                    None => LinkError::Protocol(text),
                };
                self.link_failed(idx, cause, true, now);
            }
        }
    }

    pub(super) fn on_message(&mut self, idx: usize, message: MessageFrame, now: Instant) {
        let channel = message.channel();
        if channel == self.controls[idx].channel {
            self.on_control(message.payload(), now);
            return;
        }
        let max_room = self.config.max_room_id_bytes;
        let generation = self.rooms.generation();
        // The same channel as the last message's, with no slot given to another room since:
        // the same room.
        let remembered = self.last_channel.get(channel, generation);
        // A channel whose id part needs no unescaping names a joined room byte for byte, and
        // a joined room's id was checked when it was joined: found that way, nothing is
        // checked again. Anything else takes the full path, which says what was wrong.
        let fast = remembered.or_else(|| {
            let slot = self
                .namer
                .plain_room_id(channel)
                .and_then(|id| self.rooms.slot_of_bytes(id))?;
            self.last_channel.found(channel, slot, generation);
            Some(slot)
        });
        let slot = match fast {
            Some(i) => i,
            None => {
                let Some(name) = self
                    .namer
                    .room_str_in(channel, max_room, &mut self.room_scratch)
                else {
                    self.metrics.dropped_unknown_channel += 1;
                    self.events.push_back(Event::Dropped {
                        cause: DropCause::UnknownChannel,
                        room: None,
                    });
                    return;
                };
                let Some(i) = self.rooms.slot_of_bytes(name.as_bytes()) else {
                    self.metrics.dropped_unknown_channel += 1;
                    return;
                };
                i
            }
        };
        let Some((room_id, mut room)) = self.rooms.get_at(slot) else {
            self.metrics.dropped_unknown_channel += 1;
            return;
        };
        let decoded = envelope::decode_in(
            message.payload(),
            self.config.max_envelope_bytes,
            room_id.as_bytes(),
        );
        let (room_field, decoded) = match decoded {
            Ok(d) => d,
            Err(e) => {
                self.metrics.dropped_malformed += 1;
                self.events.push_back(Event::Dropped {
                    cause: DropCause::Malformed(e.to_string()),
                    room: Some(room_id.clone()),
                });
                return;
            }
        };
        if room_field != envelope::RoomField::Known {
            self.metrics.dropped_room_mismatch += 1;
            self.events.push_back(Event::Dropped {
                cause: DropCause::RoomMismatch,
                room: Some(room_id.clone()),
            });
            return;
        }
        if room.is_empty() {
            // Leaving: the UNSUBSCRIBE is on its way.
            return;
        }
        let mine = decoded
            .trailer
            .is_some_and(|t| t.origin == self.id.instance);
        if mine && self.config.delivery == DeliveryMode::LocalFirst {
            self.metrics.dropped_echo += 1;
            return;
        }
        let mut gap = None;
        if let Some(t) = &decoded.trailer {
            match room.check_seq(t, self.config.max_origins_per_room) {
                SeqCheck::Duplicate => {
                    self.metrics.dropped_duplicate += 1;
                    return;
                }
                SeqCheck::Gap(missing) => gap = Some((t.origin, t.epoch, missing)),
                SeqCheck::InOrder | SeqCheck::NewEpoch => {}
            }
        }
        // The excluded connection lives on the origin instance; without a trailer we cannot
        // tell where it lives, so it is excluded everywhere, as the GraphWiz design did.
        let excluded = match (decoded.exclude_connection, decoded.trailer) {
            (Some(e), None) => room.has_member(e).cloned(),
            (Some(e), Some(_)) if mine => room.has_member(e).cloned(),
            _ => None,
        };
        let recipients = room.recipients();
        let room_id = room_id.clone();
        if let Some((origin, epoch, missing)) = gap {
            self.metrics.gaps += 1;
            self.events.push_back(Event::Gap {
                room: room_id.clone(),
                origin,
                epoch,
                missing,
            });
        }
        let exclude_connection = decoded.exclude_connection.map(Into::into);
        let (message_type, timestamp, origin) =
            (decoded.message_type, decoded.timestamp, decoded.trailer);
        let part = decoded.data;
        // The data is the frame narrowed to it (it lies within the payload: `View`).
        let data = message.into_part(part);
        let message = Message {
            room: room_id,
            message_type,
            data,
            exclude_connection,
            timestamp,
            origin,
        };
        let d = Delivery::shared(self.messages.lend(message), recipients, excluded);
        self.metrics.delivered += 1;
        self.metrics.member_deliveries += d.recipient_count() as u64;
        self.events.push_back(Event::Delivery(d));
    }

    /// A message over `max_frame_bytes`, skipped by the reader: counted, and reported for
    /// the room its channel names (`None` for another channel, the control channel included).
    fn on_oversize(&mut self, idx: usize, channel: &[u8], len: u64) {
        self.metrics.dropped_too_large += 1;
        let room = if channel == self.controls[idx].channel {
            None
        } else {
            self.namer
                .room_from_channel(channel, self.config.max_room_id_bytes)
        };
        self.events.push_back(Event::Dropped {
            cause: DropCause::TooLarge {
                len,
                max: self.config.max_frame_bytes,
            },
            room,
        });
    }

    pub(super) fn on_control(&mut self, payload: &[u8], now: Instant) {
        let Some(token) = payload
            .strip_prefix(PROBE_MAGIC)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_le_bytes)
        else {
            return;
        };
        if let Some(rtt) = self.prober.arrived(token, now, self.config.probe_interval) {
            self.events.push_back(Event::SubscriberVerified { rtt });
        }
    }
}
