//! Publishing: numbering, writing, queueing and pumping publishes per link.

use super::*;

/// A PUBLISH command's array header and name: `*3`, `$7 PUBLISH`.
const PUBLISH_HEAD: &[u8] = b"*3\r\n$7\r\nPUBLISH\r\n";

impl Hub {
    pub(super) fn try_publish(
        &mut self,
        msg: &Publish<'_>,
        now: Instant,
    ) -> Result<PublishId, PublishError> {
        if self.shutting_down {
            return Err(PublishError::Shutdown);
        }
        // Checked without building ids: the room's id is shared from the maps below when known.
        RoomId::check(msg.room, self.config.max_room_id_bytes)
            .map_err(PublishError::InvalidRoom)?;
        if let Some(c) = msg.exclude_connection {
            ConnId::check(c, self.config.max_conn_id_bytes)
                .map_err(PublishError::InvalidExclude)?;
        }
        let len = envelope::encoded_len(msg.room, msg.data.len(), msg.exclude_connection, true);
        if len > self.config.max_envelope_bytes {
            return Err(PublishError::TooLarge {
                len,
                max: self.config.max_envelope_bytes,
            });
        }
        let idx = self.publish_link(msg.room).0 as usize;
        let writable = self.can_write(idx);
        if !writable && self.queued_total >= self.config.max_queued_publishes {
            return Err(PublishError::QueueFull {
                max: self.config.max_queued_publishes,
            });
        }
        // Nothing below refuses the publish.
        self.next_publish += 1;
        let id = PublishId(self.next_publish);
        let mut body = Vec::with_capacity(len - TRAILER_LEN);
        envelope::encode(
            &mut body,
            msg.room,
            msg.message_type,
            msg.data,
            msg.exclude_connection,
            msg.timestamp,
            None,
        );
        let body = Bytes::from(body);
        let local_first = self.config.delivery == DeliveryMode::LocalFirst;
        // Slicing shares (and so promotes) the body: only done when it is delivered here.
        let data = local_first.then(|| {
            let at = envelope::data_offset(msg.room);
            body.slice(at..at + msg.data.len())
        });
        self.metrics.published += 1;
        // The id again for a local delivery (a reference count, no copy).
        let (seq, local_room) = if writable {
            let (room, epoch, seq) = self.take_seq(msg.room);
            let local_room = data.as_ref().map(|_| room.clone());
            let out = Outgoing {
                id,
                room,
                body,
                seq: Some((epoch, seq)),
            };
            self.emit_publish(idx, out, epoch, seq, now);
            (Some((epoch, seq)), local_room)
        } else {
            let room = self.known_room(msg.room);
            let local_room = data.as_ref().map(|_| room.clone());
            self.links[idx].queue.push_back(Outgoing {
                id,
                room,
                body,
                seq: None,
            });
            self.queued_total += 1;
            (None, local_room)
        };
        if let (Some(data), Some(room)) = (data, local_room) {
            let origin = seq.map(|(epoch, seq)| Trailer {
                origin: self.id.instance,
                epoch,
                seq,
            });
            // A room whose last member left only waits for its UNSUBSCRIBE: nobody to deliver
            // to, as on the receiving side.
            let room_with_members = self
                .rooms
                .get_mut(msg.room)
                .filter(|r| !r.members().is_empty());
            if let Some(r) = room_with_members {
                let excluded = msg
                    .exclude_connection
                    .and_then(|e| r.has_member(e).cloned());
                let message = Message {
                    room,
                    message_type: msg.message_type,
                    data,
                    exclude_connection: msg.exclude_connection.map(Into::into),
                    timestamp: msg.timestamp,
                    origin,
                };
                let d = Delivery::new(message, r.recipients(), excluded);
                self.metrics.delivered += 1;
                self.metrics.member_deliveries += d.recipient_count() as u64;
                self.events.push_back(Event::Delivery(d));
            }
        }
        Ok(id)
    }

    /// The shared id of a room that passed `RoomId::check`: from the publish streams or the
    /// joined rooms when either knows it, built only otherwise.
    fn known_room(&mut self, room: &str) -> RoomId {
        if let Some((id, _)) = self.streams.get_key_value(room) {
            return id.clone();
        }
        match self.rooms.get_with_id(room) {
            Some((id, _)) => id.clone(),
            None => RoomId::from_checked(room),
        }
    }

    /// Numbers a new publish to a checked room: its shared id, epoch and sequence number, with
    /// one map lookup when the room has published before.
    fn take_seq(&mut self, room: &str) -> (RoomId, u64, u64) {
        if let Some((id, s)) = self.streams.get_key_value_mut(room) {
            let seq = s.next;
            s.next += 1;
            return (id.clone(), s.epoch, seq);
        }
        let id = self.known_room(room);
        let (epoch, seq) = self.next_seq(&id);
        (id, epoch, seq)
    }

    pub(super) fn can_write(&self, idx: usize) -> bool {
        let l = &self.links[idx];
        l.is_ready()
            && l.queue.is_empty()
            && l.inflight_publishes < self.config.max_inflight_publishes
            && l.out.len() < self.config.max_output_bytes
    }

    /// Writes a PUBLISH, numbering it if it has no number yet. Returns (epoch, seq).
    pub(super) fn write_publish(
        &mut self,
        idx: usize,
        mut o: Outgoing,
        now: Instant,
    ) -> (u64, u64) {
        let (epoch, seq) = match o.seq {
            Some(s) => {
                self.metrics.publish_resent += 1;
                s
            }
            None => self.next_seq(&o.room),
        };
        o.seq = Some((epoch, seq));
        self.emit_publish(idx, o, epoch, seq, now);
        (epoch, seq)
    }

    /// Appends `PUBLISH channel body+trailer` to the link's output in one pass (no scratch
    /// copy of the channel) and files the publish as awaiting its reply.
    fn emit_publish(&mut self, idx: usize, o: Outgoing, epoch: u64, seq: u64, now: Instant) {
        let trailer = Trailer {
            origin: self.id.instance,
            epoch,
            seq,
        }
        .to_bytes();
        let channel_len = self.namer.room_channel_len(&o.room);
        let total = o.body.len() + TRAILER_LEN;
        let l = &mut self.links[idx];
        // Header, two bulk headers (at most 24 bytes each), both payloads and their CRLFs.
        l.out
            .reserve(PUBLISH_HEAD.len() + 2 * 24 + channel_len + total + 4);
        l.out.extend_from_slice(PUBLISH_HEAD);
        encode_bulk_header(&mut l.out, channel_len);
        self.namer.put_room_channel(&o.room, &mut l.out);
        l.out.extend_from_slice(b"\r\n");
        encode_bulk_header(&mut l.out, total);
        l.out.extend_from_slice(&o.body);
        l.out.extend_from_slice(&trailer);
        l.out.extend_from_slice(b"\r\n");
        l.inflight_publishes += 1;
        l.fifo.push_back((now, Request::Publish(o)));
    }

    pub(super) fn next_seq(&mut self, room: &RoomId) -> (u64, u64) {
        if let Some(s) = self.streams.get_mut(room) {
            let seq = s.next;
            s.next += 1;
            return (s.epoch, seq);
        }
        if self.streams.len() >= self.config.max_publish_streams {
            // Forget one stream; if that room publishes again it starts a new epoch, which
            // receivers take as a new baseline rather than a gap.
            if let Some(k) = self.streams.keys().next().cloned() {
                self.streams.remove(&k);
            }
        }
        self.stream_generation += 1;
        let epoch = self.id.epoch.wrapping_add(self.stream_generation - 1);
        self.streams.insert(room.clone(), Stream { epoch, next: 2 });
        (epoch, 1)
    }

    pub(super) fn pump(&mut self, idx: usize, now: Instant) {
        loop {
            let l = &self.links[idx];
            if !(l.is_ready()
                && l.inflight_publishes < self.config.max_inflight_publishes
                && l.out.len() < self.config.max_output_bytes)
            {
                return;
            }
            let Some(o) = self.links[idx].queue.pop_front() else {
                return;
            };
            self.queued_total -= 1;
            self.write_publish(idx, o, now);
        }
    }

    pub(super) fn fail_publish(&mut self, id: PublishId, error: PublishError) {
        self.metrics.publish_failed += 1;
        self.events.push_back(Event::PublishFailed { id, error });
    }
}

#[cfg(test)]
mod tests {
    use crate::sim::{ModelConfig, Sim};
    use crate::{Config, DeliveryMode, Event, MessageType, Publish};

    #[test]
    fn local_first_delivers_nothing_to_a_room_being_left() {
        let mut s = Sim::new(1, ModelConfig::default(), |_| Config {
            delivery: DeliveryMode::LocalFirst,
            pool_size: 1,
            ..Config::default()
        });
        s.settle();
        let hub = &mut s.nodes[0].hub;
        hub.join("r", "a").unwrap();
        s.settle();
        s.take_events();
        // The last member left; the room waits for its UNSUBSCRIBE to be confirmed.
        let hub = &mut s.nodes[0].hub;
        hub.leave("r", "a").unwrap();
        assert!(hub.room_state("r").is_some());
        let msg = Publish {
            room: "r",
            message_type: MessageType::Broadcast,
            data: b"x",
            exclude_connection: None,
            timestamp: 0,
        };
        let now = s.now;
        s.nodes[0].hub.publish(&msg, now).unwrap();
        s.settle();
        let events = s.nodes[0].take_events();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Delivery(_))),
            "a delivery for a room without members: {events:?}"
        );
        assert_eq!(s.nodes[0].hub.metrics().delivered, 0);
    }
}
