//! Publishing: numbering, writing, queueing and pumping publishes per link.

use super::*;
use crate::link::Queued;

/// A PUBLISH command's array header and name: `*3`, `$7 PUBLISH`.
const PUBLISH_HEAD: &[u8] = b"*3\r\n$7\r\nPUBLISH\r\n";
/// The same for cluster mode's sharded `SPUBLISH`.
const SPUBLISH_HEAD: &[u8] = b"*3\r\n$8\r\nSPUBLISH\r\n";

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
        let len = self
            .config
            .check_publish(msg.room, msg.data.len(), msg.exclude_connection)?;
        let idx = if self.shards.is_some() {
            match self.cluster_route(msg.room) {
                shards::Route::Link(idx) => idx,
                shards::Route::Wait(slot) => return self.publish_to_reroute(msg, slot, len),
            }
        } else {
            match self.roles.publisher_of_room(msg.room) {
                Some(idx) => idx,
                None => return Ok(self.publish_standalone(msg)),
            }
        };
        let writable = self.can_write(idx);
        if !writable {
            self.check_queue_room(idx, len - TRAILER_LEN)?;
        }
        // Nothing below refuses the publish.
        let id = self.seq.next_id();
        self.metrics.published += 1;
        let (seq, room) = if writable {
            let body = Body::Message(msg);
            let (room, epoch, seq) = match self.emit_numbered(idx, id, msg.room, body, now) {
                Some(numbered) => numbered,
                None => {
                    // The room's first publish (or first since its stream was forgotten).
                    let room = self.known_room(msg.room);
                    self.emit_started(idx, id, &room, body, now)
                }
            };
            (Some((epoch, seq)), room)
        } else {
            // Queued while its link cannot take it (rare): encoded on its own, to be numbered
            // and framed when written.
            let (room, o) = self.queued_publish(msg, id, len);
            self.links[idx].queue.push_back(o);
            (None, room)
        };
        if self.config.delivery == DeliveryMode::LocalFirst {
            self.deliver_local(msg, room, seq);
        }
        Ok(id)
    }

    /// Cluster mode: a publish whose slot has no known owner yet, or whose slot's earlier
    /// publishes wait to be placed again, waits behind them (bounded as any queued publish).
    fn publish_to_reroute(
        &mut self,
        msg: &Publish<'_>,
        slot: crate::cluster::Slot,
        len: usize,
    ) -> Result<PublishId, PublishError> {
        self.check_queue_limits(len - TRAILER_LEN)?;
        let id = self.seq.next_id();
        self.metrics.published += 1;
        let (room, o) = self.queued_publish(msg, id, len);
        self.queue_reroute(slot, o);
        if self.config.delivery == DeliveryMode::LocalFirst {
            self.deliver_local(msg, room, None);
        }
        Ok(id)
    }

    /// A publish that waits for its link: its envelope body (no trailer: it is numbered and
    /// framed when written), counted against the queues' bounds.
    fn queued_publish(
        &mut self,
        msg: &Publish<'_>,
        id: PublishId,
        len: usize,
    ) -> (RoomId, Outgoing) {
        let room = self.known_room(msg.room);
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
        self.queued_bytes += body.len();
        self.queued_total += 1;
        let o = Outgoing {
            id,
            bytes: Queued::Body {
                room: room.clone(),
                body,
            },
        };
        (room, o)
    }

    /// Standalone mode (no link): the publish is numbered as it would be for Redis, counted
    /// as confirmed and delivered to the room's members here at once, so members see the same
    /// trailer, order and exclusion as through Redis.
    fn publish_standalone(&mut self, msg: &Publish<'_>) -> PublishId {
        let id = self.seq.next_id();
        self.metrics.published += 1;
        self.metrics.publish_confirmed += 1;
        let (room, epoch, seq) = self.take_seq(msg.room);
        self.deliver_local(msg, room, Some((epoch, seq)));
        id
    }

    /// LocalFirst (and standalone): delivers a publish to the room's members here at once.
    fn deliver_local(&mut self, msg: &Publish<'_>, room: RoomId, seq: Option<(u64, u64)>) {
        let origin = seq.map(|(epoch, seq)| Trailer {
            origin: self.id.instance,
            epoch,
            seq,
        });
        // A room whose last member left only waits for its UNSUBSCRIBE: nobody to deliver
        // to, as on the receiving side.
        let room_with_members = self.rooms.get_mut(msg.room).filter(|r| !r.is_empty());
        if let Some(mut r) = room_with_members {
            let excluded = msg
                .exclude_connection
                .and_then(|e| r.has_member(e).cloned());
            let message = Message {
                room,
                message_type: msg.message_type,
                // The frame is not handed out yet, so there is nothing to share: a copy.
                data: Bytes::copy_from_slice(msg.data),
                exclude_connection: msg.exclude_connection.map(Into::into),
                timestamp: msg.timestamp,
                origin,
            };
            let d = Delivery::shared(self.messages.lend(message), r.recipients(), excluded);
            self.metrics.delivered += 1;
            self.metrics.member_deliveries += d.recipient_count() as u64;
            self.events.push_back(Event::Delivery(d));
        }
    }

    /// The shared id of a room that passed `RoomId::check`: from the publish streams or the
    /// joined rooms when either knows it, built only otherwise.
    fn known_room(&mut self, room: &str) -> RoomId {
        if let Some(id) = self.seq.known(room) {
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
        if let Some((id, epoch, seq, _)) = self.seq.take(room) {
            return (id, epoch, seq);
        }
        let id = self.known_room(room);
        let (id, epoch, seq, _) = self.seq.start(&id, &self.namer);
        (id, epoch, seq)
    }

    pub(super) fn can_write(&self, idx: usize) -> bool {
        let l = &self.links[idx];
        l.is_ready()
            && l.queue.is_empty()
            && l.inflight_publishes < self.config.max_inflight_publishes
            && l.inflight_bytes < self.config.max_inflight_bytes
            && l.held_output() < self.config.max_output_bytes
    }

    /// Whether a publish of `body_len` bytes that its link cannot take now may wait for it:
    /// not when the link is up and its output full (backpressure: waiting would only move
    /// the bytes into the queue), nor beyond the queue's bounds in count and bytes.
    fn check_queue_room(&self, idx: usize, body_len: usize) -> Result<(), PublishError> {
        let l = &self.links[idx];
        let max = self.config.max_output_bytes;
        if l.is_ready() && l.held_output() >= max {
            return Err(PublishError::Backpressure {
                link: l.id,
                held: l.held_output(),
                max,
            });
        }
        self.check_queue_limits(body_len)
    }

    /// Whether one more publish of `body_len` bytes fits in the queues' bounds.
    fn check_queue_limits(&self, body_len: usize) -> Result<(), PublishError> {
        if self.queued_total >= self.config.max_queued_publishes {
            return Err(PublishError::QueueFull {
                max: self.config.max_queued_publishes,
            });
        }
        if self.queued_bytes + body_len > self.config.max_queued_bytes {
            return Err(PublishError::QueueBytesFull {
                queued: self.queued_bytes,
                max: self.config.max_queued_bytes,
            });
        }
        Ok(())
    }

    /// Writes a queued publish: a new one is numbered now, a resent one keeps its number and
    /// its frame.
    pub(super) fn write_publish(&mut self, idx: usize, o: Outgoing, now: Instant) {
        match o.bytes {
            Queued::Body { room, body } => {
                self.emit_started(idx, o.id, &room, Body::Encoded(&body), now);
            }
            Queued::Frame(frame) => {
                self.metrics.publish_resent += 1;
                let l = &mut self.links[idx];
                l.reserve_output(frame.len(), OUTPUT_BLOCK);
                let start = l.out.len();
                l.out.extend_from_slice(&frame);
                l.push_written(o.id, start, now);
            }
        }
    }

    /// Numbers a publish to `room` from the room's stream and writes it ([`emit_frame`]);
    /// `None` (nothing written) when the room has no stream.
    fn emit_numbered(
        &mut self,
        idx: usize,
        id: PublishId,
        room: &str,
        body: Body<'_>,
        now: Instant,
    ) -> Option<(RoomId, u64, u64)> {
        let (head, origin) = (self.publish_head(), self.id.instance);
        let numbered = self.seq.take(room)?;
        Some(emit_frame(
            &mut self.links[idx],
            head,
            origin,
            numbered,
            body,
            id,
            now,
        ))
    }

    /// [`Hub::emit_numbered`] for a room that may have no stream yet: starts one if so.
    fn emit_started(
        &mut self,
        idx: usize,
        id: PublishId,
        room: &RoomId,
        body: Body<'_>,
        now: Instant,
    ) -> (RoomId, u64, u64) {
        let (head, origin) = (self.publish_head(), self.id.instance);
        let numbered = self.seq.start(room, &self.namer);
        emit_frame(&mut self.links[idx], head, origin, numbered, body, id, now)
    }

    fn publish_head(&self) -> &'static [u8] {
        if self.shards.is_some() {
            SPUBLISH_HEAD
        } else {
            PUBLISH_HEAD
        }
    }

    pub(super) fn pump(&mut self, idx: usize, now: Instant) {
        // Usually nothing waits (every reply calls this): that is checked first.
        while !self.links[idx].queue.is_empty() {
            let l = &self.links[idx];
            if !(l.is_ready()
                && l.inflight_publishes < self.config.max_inflight_publishes
                && l.inflight_bytes < self.config.max_inflight_bytes
                && l.held_output() < self.config.max_output_bytes)
            {
                return;
            }
            let Some(o) = self.links[idx].queue.pop_front() else {
                return;
            };
            self.queued_total -= 1;
            self.queued_bytes -= o.len();
            self.write_publish(idx, o, now);
        }
    }

    pub(super) fn fail_publish(&mut self, id: PublishId, error: PublishError) {
        self.confirm_wanted.remove(&id.0);
        self.forget_redirects(id);
        self.metrics.publish_failed += 1;
        self.events.push_back(Event::PublishFailed { id, error });
    }
}

/// Appends `PUBLISH channel body+trailer` to the link's output in one pass (the payload is
/// copied once, from the caller's message straight into the output; the channel from the
/// room's stream, where it was spelled once) and files the publish as awaiting its reply. Its
/// frame is kept for a resend as a slice of the output once handed out
/// (`Link::take_output`), not as a copy of its own.
fn emit_frame(
    l: &mut Link,
    head: &[u8],
    origin: InstanceId,
    (room, epoch, seq, channel): sequence::Numbered<'_>,
    body: Body<'_>,
    id: PublishId,
    now: Instant,
) -> (RoomId, u64, u64) {
    let trailer = Trailer { origin, epoch, seq }.to_bytes();
    let total = body.len() + TRAILER_LEN;
    // The command's head, the channel, the body's bulk header (at most 24 bytes), the body,
    // its trailer and CRLF.
    l.reserve_output(head.len() + channel.len() + 24 + total + 2, OUTPUT_BLOCK);
    let start = l.out.len();
    l.out.extend_from_slice(head);
    l.out.extend_from_slice(channel);
    encode_bulk_header(&mut l.out, total);
    match body {
        Body::Message(msg) => put_body(&mut l.out, msg),
        Body::Encoded(body) => l.out.extend_from_slice(body),
    }
    l.out.extend_from_slice(&trailer);
    l.out.extend_from_slice(b"\r\n");
    l.push_written(id, start, now);
    (room, epoch, seq)
}

/// The envelope body a PUBLISH is written from.
#[derive(Clone, Copy)]
enum Body<'a> {
    /// A new message, encoded straight into the link's output.
    Message(&'a Publish<'a>),
    /// A body encoded when the publish was queued.
    Encoded(&'a [u8]),
}

impl Body<'_> {
    /// The body's length on the wire (without trailer).
    fn len(self) -> usize {
        match self {
            Body::Message(m) => {
                envelope::encoded_len(m.room, m.data.len(), m.exclude_connection, false)
            }
            Body::Encoded(b) => b.len(),
        }
    }
}

/// The least a link's output grows by. Frames handed out stay referenced until confirmed
/// (`Link::take_output`), so the output's allocation can rarely be reused in place while
/// publishes are in flight; growing it by one frame would allocate once per publish.
const OUTPUT_BLOCK: usize = 64 << 10;

/// Appends `msg`'s envelope body (no trailer) to `out`, straight into the link's output,
/// with the envelope's encoder ([`envelope::put_body`]).
fn put_body(out: &mut BytesMut, msg: &Publish<'_>) {
    envelope::put_body(
        out,
        msg.room,
        msg.message_type,
        msg.data,
        msg.exclude_connection,
        msg.timestamp,
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::{Bytes, BytesMut};

    use crate::envelope::{self, InstanceId};
    use crate::{Config, Event, Hub, Identity, LinkId, LinkRequest, MessageType, Publish};

    #[test]
    fn put_body_writes_what_envelope_encode_writes() {
        let types = [
            MessageType::Broadcast,
            MessageType::PresenceEvent,
            MessageType::SystemNotification,
        ];
        for message_type in types {
            for (room, data, exclude, timestamp) in [
                ("", &b""[..], None, 0),
                ("r", &b"x"[..], Some("c"), -1),
                ("a/b:%c", &[7u8; 300][..], Some(""), i64::MIN),
                ("room", &[0u8; 70_000][..], None, i64::MAX),
            ] {
                let msg = Publish {
                    room,
                    message_type,
                    data,
                    exclude_connection: exclude,
                    timestamp,
                };
                let mut ours = BytesMut::new();
                super::put_body(&mut ours, &msg);
                let mut theirs = Vec::new();
                envelope::encode(
                    &mut theirs,
                    room,
                    message_type,
                    data,
                    exclude,
                    timestamp,
                    None,
                );
                assert_eq!(&ours[..], &theirs[..], "{message_type:?} {room:?}");
                assert_eq!(ours.len(), super::Body::Message(&msg).len());
            }
        }
    }

    const ME: Identity = Identity {
        instance: InstanceId(0x0102_0304_0506_0708),
        epoch: 9,
    };

    /// A hub with one publish link (no presence), and what it wrote to that link.
    struct One {
        hub: Hub,
        now: Instant,
        wrote: Vec<u8>,
    }

    const LINK: LinkId = LinkId(1);

    impl One {
        fn new() -> One {
            let mut one = One::unconnected();
            one.connect();
            one
        }

        fn unconnected() -> One {
            let config = Config {
                pool_size: 1,
                presence: false,
                ..Config::default()
            };
            let now = Instant::now();
            let hub = Hub::new(config, ME, now).unwrap();
            One {
                hub,
                now,
                wrote: Vec::new(),
            }
        }

        /// Opens the publish link and answers its handshake (RESP2: `HELLO 2` for the
        /// server's mode, then CLIENT SETNAME) as a server of `mode`.
        fn handshake(&mut self, mode: &str) {
            while let Some(r) = self.hub.poll_link_request() {
                if let LinkRequest::Open { link: LINK, .. } = r {
                    self.hub.handle_connected(LINK, self.now);
                }
            }
            let handshake = self.take();
            assert!(
                handshake.starts_with(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n*3\r\n$6\r\nCLIENT"),
                "{handshake:?}"
            );
            self.wrote.clear();
            let hello = format!(
                "*4\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$4\r\nmode\r\n${}\r\n{mode}\r\n+OK\r\n",
                mode.len()
            );
            self.hub
                .handle_input(LINK, &mut BytesMut::from(hello.as_bytes()), self.now);
        }

        fn connect(&mut self) {
            self.handshake("standalone");
            assert!(self.hub.health().links[1].state == crate::LinkState::Ready);
        }

        /// Everything written to the publish link since the last call.
        fn take(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while let Some(tx) = self.hub.poll_transmit() {
                if tx.link == LINK {
                    out.extend_from_slice(&tx.bytes);
                }
            }
            self.wrote.extend_from_slice(&out);
            out
        }

        fn publish(&mut self, data: &[u8]) {
            let msg = Publish {
                room: "r/1",
                message_type: MessageType::Broadcast,
                data,
                exclude_connection: Some("c"),
                timestamp: 5,
            };
            self.hub.publish(&msg, self.now).unwrap();
        }
    }

    #[test]
    fn a_single_server_url_that_reaches_a_cluster_node_is_refused_at_connect() {
        let mut one = One::unconnected();
        one.handshake("cluster");
        let link = &one.hub.health().links[1];
        assert_ne!(link.state, crate::LinkState::Ready);
        let Some(crate::LinkError::WrongMode(text)) = &link.last_error else {
            panic!("expected WrongMode, got {:?}", link.last_error);
        };
        assert!(text.contains("redis+cluster://"), "{text}");
        let down = std::iter::from_fn(|| one.hub.poll_event()).find_map(|e| match e {
            Event::LinkDown {
                link: LINK, cause, ..
            } => Some(cause),
            _ => None,
        });
        assert!(
            matches!(down, Some(crate::LinkError::WrongMode(_))),
            "{down:?}"
        );
        // A standalone server (and one before 6.0, which refuses HELLO) is accepted.
        One::new();
        let mut old = One::unconnected();
        while let Some(r) = old.hub.poll_link_request() {
            if let LinkRequest::Open { link: LINK, .. } = r {
                old.hub.handle_connected(LINK, old.now);
            }
        }
        let _ = old.take();
        old.hub.handle_input(
            LINK,
            &mut BytesMut::from(&b"-ERR unknown command 'HELLO'\r\n+OK\r\n"[..]),
            old.now,
        );
        assert_eq!(old.hub.health().links[1].state, crate::LinkState::Ready);
    }

    #[test]
    fn a_broken_link_resends_the_same_frames_sent_or_not() {
        // The reference: four publishes on a link that never breaks.
        let mut clean = One::new();
        for d in [b"a", b"b", b"c", b"d"] {
            clean.publish(d);
        }
        let expected = clean.take();

        let mut s = One::new();
        s.publish(b"a");
        s.publish(b"b");
        let sent = s.take();
        // Written, never handed out, when the link breaks.
        s.publish(b"c");
        s.hub.handle_disconnected(LINK, "reset", s.now);
        // Queued while down: numbered when written, after the resent ones.
        s.publish(b"d");
        while s.hub.poll_event().is_some() {}
        assert_eq!(s.take(), b"");
        s.now += Duration::from_secs(10);
        s.hub.handle_timeout(s.now);
        s.connect();
        let resent = s.take();
        assert_eq!(&resent[..], &expected[..]);
        assert_eq!(&sent[..], &expected[..sent.len()]);
        assert_eq!(s.hub.metrics().publish_resent, 3);

        // The frames kept were the bytes handed out: resent a second time, still the same.
        s.hub.handle_disconnected(LINK, "reset", s.now);
        s.now += Duration::from_secs(10);
        s.hub.handle_timeout(s.now);
        s.connect();
        assert_eq!(&s.take()[..], &expected[..]);
        s.hub.handle_input(
            LINK,
            &mut BytesMut::from(&b":1\r\n:1\r\n:1\r\n:1\r\n"[..]),
            s.now,
        );
        let confirmed: Vec<u64> = std::iter::from_fn(|| s.hub.poll_event())
            .filter_map(|e| match e {
                Event::PublishConfirmed { id, .. } => Some(id.0),
                _ => None,
            })
            .collect();
        assert_eq!(confirmed, [1, 2, 3, 4]);
        assert_eq!(s.hub.metrics().inflight_publishes, 0);
    }

    #[test]
    fn frames_are_slices_of_the_bytes_handed_out() {
        let mut s = One::new();
        s.publish(&[1; 100]);
        s.publish(&[2; 100]);
        let chunk: Bytes = s.hub.poll_transmit().unwrap().bytes;
        let l = &s.hub.links[1];
        let mut at = 0;
        for (_, req) in &l.fifo {
            let crate::link::Request::Publish(w) = req else {
                panic!("{req:?}")
            };
            let crate::link::Frame::Sent(f) = &w.frame else {
                panic!("{:?}", w.frame)
            };
            assert_eq!(f.as_ptr(), chunk[at..].as_ptr());
            at += f.len();
        }
        assert_eq!(at, chunk.len());
        assert_eq!(l.unsent_frames, 0);
    }

    #[test]
    fn output_beyond_a_block_is_sealed_not_copied() {
        let mut s = One::new();
        // 300 KB in one turn: several 64 KiB blocks, sealed as chunks, not copied.
        for i in 0..300u32 {
            let mut data = vec![0u8; 1000];
            data[..4].copy_from_slice(&i.to_le_bytes());
            s.publish(&data);
        }
        let l = &s.hub.links[1];
        assert!(l.sealed.len() >= 4, "sealed {} chunks", l.sealed.len());
        assert_eq!(s.hub.buffered_output(), l.buffered());
        // Handed out as several chunks, in order: the frames of the 300 publishes.
        let mut chunks = 0;
        let mut out = Vec::new();
        while let Some(tx) = s.hub.poll_transmit() {
            chunks += 1;
            out.extend_from_slice(&tx.bytes);
        }
        assert!(chunks >= 4, "{chunks} chunks");
        let mut clean = One::new();
        for i in 0..300u32 {
            let mut data = vec![0u8; 1000];
            data[..4].copy_from_slice(&i.to_le_bytes());
            clean.publish(&data);
        }
        assert_eq!(out, clean.take());
        assert_eq!(s.hub.buffered_output(), 0);
    }
}
