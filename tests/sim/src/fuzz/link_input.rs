//! Raw bytes "from Redis" into one link of a hub, during its handshake or after it.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use roomcast_core::envelope::MessageType;
use roomcast_core::{
    Config, Event, Hub, Identity, InstanceId, LinkError, LinkId, LinkRequest, LinkState, Protocol,
    Publish, SUBSCRIBER,
};

/// The instance id of the hub under test: its control channel is
/// `graphwiz:ctl:0000000000001234`.
pub const INSTANCE: InstanceId = InstanceId(0x1234);

/// Rooms (and their members) joined before any input, in join order: the subscriber's
/// second SUBSCRIBE names their channels in this order.
pub const MEMBERS: [(&str, &str); 3] = [("hub/abc", "c1"), ("lobby", "c2"), ("a:b", "c1")];

/// The flag byte that opens a `link_input` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    /// Bit 0: the links speak RESP3 (else RESP2).
    pub const RESP3: u8 = 1;
    /// Bit 1: the input answers the handshake (else the handshake is done first).
    pub const DURING_HANDSHAKE: u8 = 2;
    /// Bit 2: the input goes to publish link 1 (else to the subscriber, link 0).
    pub const PUBLISHER: u8 = 4;
    /// Bits 3..=5: input pieces of 2^(k-1) bytes (k = 0: all at once).
    pub const CHUNK_SHIFT: u8 = 3;
    /// Bit 6: tight frame limits (128-byte envelopes, frames of 1152 bytes, depth 4, 16
    /// elements).
    pub const TIGHT: u8 = 0x40;
    /// Bit 7: presence on (link 1 also carries the presence commands).
    pub const PRESENCE: u8 = 0x80;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn link(self) -> LinkId {
        if self.has(Self::PUBLISHER) {
            LinkId(1)
        } else {
            SUBSCRIBER
        }
    }

    fn chunk(self) -> usize {
        match (self.0 >> Self::CHUNK_SHIFT) & 7 {
            0 => usize::MAX,
            k => 1 << (k - 1),
        }
    }

    fn config(self) -> Config {
        let mut c = Config {
            pool_size: 1,
            presence: self.has(Self::PRESENCE),
            ..Config::default()
        };
        c.server.protocol = if self.has(Self::RESP3) {
            Protocol::Resp3
        } else {
            Protocol::Resp2
        };
        if self.has(Self::TIGHT) {
            c.max_envelope_bytes = 128;
            c.max_frame_bytes = 128 + 1024;
            c.max_frame_depth = 4;
            c.max_frame_elements = 16;
            c.max_output_bytes = c.max_frame_bytes;
        }
        c
    }
}

/// A hub with every link connected, rooms joined, one publish made and the handshakes
/// answered except (with [`Flags::DURING_HANDSHAKE`]) the one of the link under test.
struct Bench {
    hub: Hub,
    flags: Flags,
    now: Instant,
    /// Everything the hub wrote to the link under test, before and after its handshake
    /// reply.
    written: (Vec<u8>, Vec<u8>),
    handshake_done: bool,
    link_failed: bool,
}

impl Bench {
    fn new(flags: Flags) -> Bench {
        let now = Instant::now();
        let id = Identity {
            instance: INSTANCE,
            epoch: 7,
        };
        let hub = Hub::new(flags.config(), id, now).expect("the bench configuration is valid");
        let mut b = Bench {
            hub,
            flags,
            now,
            written: (Vec::new(), Vec::new()),
            handshake_done: false,
            link_failed: false,
        };
        while let Some(req) = b.hub.poll_link_request() {
            if let LinkRequest::Open { link, .. } = req {
                b.hub.handle_connected(link, now);
            }
        }
        for (room, conn) in MEMBERS {
            b.hub.join(room, conn, now).expect("valid ids");
        }
        b.drain();
        let reply: &[u8] = match flags.config().server.protocol {
            Protocol::Resp2 => b"+OK\r\n",
            Protocol::Resp3 => b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n",
        };
        for link in [SUBSCRIBER, LinkId(1)] {
            if link != flags.link() || !flags.has(Flags::DURING_HANDSHAKE) {
                b.hub.handle_input(link, &mut BytesMut::from(reply), now);
                if link == flags.link() {
                    b.handshake_done = true;
                }
                b.drain();
            }
        }
        let accepted = b.hub.publish(
            &Publish {
                room: MEMBERS[0].0,
                message_type: MessageType::Broadcast,
                data: b"hello",
                exclude_connection: Some(MEMBERS[0].1),
                timestamp: 1_700_000_000,
            },
            now,
        );
        assert!(accepted.is_ok(), "{accepted:?}");
        b.drain();
        b
    }

    /// Takes every output, as a correct adapter does after each call.
    fn drain(&mut self) {
        while let Some(tx) = self.hub.poll_transmit() {
            if tx.link == self.flags.link() {
                let to = if self.handshake_done {
                    &mut self.written.1
                } else {
                    &mut self.written.0
                };
                to.extend_from_slice(&tx.bytes);
            }
        }
        while let Some(req) = self.hub.poll_link_request() {
            assert!(
                matches!(req, LinkRequest::Close { link } if link == self.flags.link()),
                "only the link under test may be closed: {req:?}"
            );
        }
        while let Some(ev) = self.hub.poll_event() {
            if let Event::LinkDown { link, cause, .. } = &ev {
                assert_eq!(*link, self.flags.link(), "another link went down: {ev:?}");
                // What Redis said is passed on as it is: an empty error reply (`-\r\n`) is
                // an empty text, but still a typed cause with a message around it.
                let typed = matches!(
                    cause,
                    LinkError::Protocol(_)
                        | LinkError::Auth(_)
                        | LinkError::NoResp3(_)
                        | LinkError::Handshake(_)
                        // A probe answer of 0 receivers on the publish link fails the subscriber.
                        | LinkError::Deaf
                );
                assert!(typed, "unexpected cause for bytes from Redis: {cause:?}");
                assert!(cause.to_string().len() > 20);
                self.link_failed = true;
            }
            if let Event::LinkUp { link, .. } = ev {
                if link == self.flags.link() {
                    self.handshake_done = true;
                }
            }
        }
    }

    fn feed(&mut self, data: &[u8]) {
        let link = self.flags.link();
        let config = self.hub.config().clone();
        let mut buf = BytesMut::new();
        for piece in data.chunks(self.flags.chunk()) {
            buf.extend_from_slice(piece);
            self.hub.handle_input(link, &mut buf, self.now);
            // What the hub leaves in the adapter's buffer is one partial frame, never more
            // than a frame may be; after a fatal error, nothing.
            assert!(
                buf.len() <= config.max_frame_bytes + 2,
                "{} bytes kept for a partial frame (max_frame_bytes = {})",
                buf.len(),
                config.max_frame_bytes
            );
            assert_eq!(self.hub.metrics().buffered_input, buf.len());
            let bound = (config.pool_size + 1) * (config.max_output_bytes + (64 << 10));
            assert!(self.hub.buffered_output() <= bound);
            self.drain();
            self.check_gauges(&config);
            let state = self.hub.health().links[usize::from(link.0)].state;
            match state {
                LinkState::Backoff { .. } => {
                    assert!(buf.is_empty());
                    assert!(self.link_failed);
                }
                LinkState::Ready | LinkState::Handshaking { .. } => {}
                other => panic!("link under test in state {other:?}"),
            }
        }
    }

    fn check_gauges(&self, config: &Config) {
        let m = self.hub.metrics();
        assert_eq!(m.members, MEMBERS.len(), "input changed the membership");
        assert_eq!(m.connections, 2);
        assert!(m.rooms >= 3 && m.rooms_live <= m.rooms);
        assert!(m.subscriptions_in_flight <= config.max_subscriptions_in_flight);
        assert!(m.inflight_publishes + m.queued_publishes <= 1);
    }

    /// A failed link is opened again once its backoff has passed.
    fn check_reopens(&mut self) {
        if !self.link_failed {
            return;
        }
        let link = self.flags.link();
        let later = self.now + Duration::from_secs(3600);
        self.hub.handle_timeout(later);
        let mut reopened = false;
        while let Some(req) = self.hub.poll_link_request() {
            if let LinkRequest::Open { link: l, .. } = req {
                reopened |= l == link;
                self.hub.handle_connected(l, later);
            }
        }
        assert!(reopened, "{link} was not opened again");
        let mut handshake = false;
        while let Some(tx) = self.hub.poll_transmit() {
            handshake |= tx.link == link && !tx.bytes.is_empty();
        }
        assert!(handshake, "{link} wrote no handshake after reopening");
    }
}

/// Fuzz target: `data[0]` is a [`Flags`] byte, the rest arrives from "Redis" on the chosen
/// link, cut into the chosen pieces. No byte sequence may panic, keep more than one frame's
/// worth of input, or break the link without a typed `LinkDown`; a broken link is opened
/// again after its backoff.
pub fn link_input(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut bench = Bench::new(Flags(flags));
    bench.feed(rest);
    bench.check_reopens();
}

/// What the hub writes on the link chosen by `flags`: the handshake, then (once the handshake
/// is answered) the subscriptions, publish or presence commands. The seed capture sends these
/// to a real redis-server and records its answers as corpus inputs.
pub fn link_input_requests(flags: u8) -> (Vec<u8>, Vec<u8>) {
    let flags = Flags(flags & !Flags::DURING_HANDSHAKE);
    Bench::new(flags).written
}
