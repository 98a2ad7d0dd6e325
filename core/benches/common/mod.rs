//! Shared by the benches: a hub driven through its handshake and subscriptions by a tiny
//! scripted Redis (just enough replies for RESP2 with the default config), and RESP builders
//! for the frames the benches feed.
#![allow(dead_code, missing_docs)]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use roomcast_core::envelope::{self, InstanceId, MessageType, Trailer};
use roomcast_core::{Config, Hub, Identity, LinkId, LinkRequest, RoomId, SUBSCRIBER};

/// The identity of the hub under test.
pub const ME: Identity = Identity {
    instance: InstanceId(0x00c0_ffee_0000_0001),
    epoch: 7,
};

/// A remote instance whose messages the hub receives.
pub const OTHER: InstanceId = InstanceId(0x00be_ef00_0000_0002);

/// A hub, its clock, and the replies owed per link.
pub struct Rig {
    pub hub: Hub,
    pub now: Instant,
    /// Running SUBSCRIBE count on the subscriber link, as Redis reports it.
    subscribed: i64,
}

impl Rig {
    /// A hub with `config`, every link connected and through its handshake, the control
    /// channel confirmed.
    pub fn ready(config: Config) -> Rig {
        let now = Instant::now();
        let hub = Hub::new(config, ME, now).expect("valid config");
        let mut rig = Rig {
            hub,
            now,
            subscribed: 0,
        };
        while let Some(req) = rig.hub.poll_link_request() {
            if let LinkRequest::Open { link, .. } = req {
                rig.hub.handle_connected(link, now);
            }
        }
        rig.serve();
        assert!(rig.hub.health().all_ready(), "links not ready");
        rig
    }

    /// Answers everything the hub wrote, until it writes nothing more; drains events.
    /// Returns the number of events drained.
    pub fn serve(&mut self) -> usize {
        let mut events = 0;
        loop {
            let mut wrote = false;
            while let Some(tx) = self.hub.poll_transmit() {
                wrote = true;
                let mut replies = BytesMut::new();
                for cmd in parse_commands(&tx.bytes) {
                    self.reply(tx.link, &cmd, &mut replies);
                }
                if !replies.is_empty() {
                    self.hub.handle_input(tx.link, &mut replies, self.now);
                    assert!(replies.is_empty(), "hub left input unconsumed");
                }
            }
            while self.hub.poll_event().is_some() {
                events += 1;
            }
            while self.hub.poll_link_request().is_some() {}
            if !wrote {
                return events;
            }
        }
    }

    fn reply(&mut self, link: LinkId, cmd: &[Vec<u8>], out: &mut BytesMut) {
        let name = cmd[0].to_ascii_uppercase();
        match name.as_slice() {
            b"SUBSCRIBE" => {
                for ch in &cmd[1..] {
                    self.subscribed += 1;
                    push_confirmation(out, b"subscribe", ch, self.subscribed);
                }
            }
            b"UNSUBSCRIBE" => {
                for ch in &cmd[1..] {
                    self.subscribed -= 1;
                    push_confirmation(out, b"unsubscribe", ch, self.subscribed);
                }
            }
            b"PUBLISH" => out.extend_from_slice(b":1\r\n"),
            b"PING" if link == SUBSCRIBER => {
                out.extend_from_slice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
            }
            b"PING" => out.extend_from_slice(b"+PONG\r\n"),
            // AUTH, SELECT, CLIENT SETNAME
            _ => out.extend_from_slice(b"+OK\r\n"),
        }
    }

    /// Joins `rooms` rooms `{prefix}{i}` with one member `c{i}` each and serves until all
    /// are live (subscriptions go out in paced batches).
    pub fn join_live(&mut self, prefix: &str, rooms: usize) {
        for i in 0..rooms {
            self.hub
                .join(&format!("{prefix}{i}"), &format!("c{i}"), self.now)
                .expect("join");
            // Serve as we go so that no more than the in-flight bound waits.
            if i % 4096 == 4095 {
                self.serve();
            }
        }
        self.serve();
    }

    pub fn room_id(&self, room: &str) -> RoomId {
        self.hub.check_room(room).expect("valid room id")
    }
}

/// Splits bytes the hub wrote into commands (arrays of bulk strings). Panics on anything
/// else: the hub only writes commands.
pub fn parse_commands(mut b: &[u8]) -> Vec<Vec<Vec<u8>>> {
    fn line(b: &mut &[u8]) -> usize {
        let end = b.windows(2).position(|w| w == b"\r\n").expect("CRLF");
        let n = std::str::from_utf8(&b[1..end])
            .expect("ascii")
            .parse()
            .expect("number");
        *b = &b[end + 2..];
        n
    }
    let mut cmds = Vec::new();
    while !b.is_empty() {
        assert_eq!(b[0], b'*', "command array expected");
        let n = line(&mut b);
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            assert_eq!(b[0], b'$', "bulk string expected");
            let len = line(&mut b);
            args.push(b[..len].to_vec());
            b = &b[len + 2..];
        }
        cmds.push(args);
    }
    cmds
}

pub fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `*3 subscribe|unsubscribe channel :count`
pub fn push_confirmation(out: &mut BytesMut, kind: &[u8], channel: &[u8], count: i64) {
    out.extend_from_slice(b"*3\r\n");
    bulk(out, kind);
    bulk(out, channel);
    out.extend_from_slice(format!(":{count}\r\n").as_bytes());
}

/// `*3 message channel payload`
pub fn push_message(out: &mut BytesMut, channel: &[u8], payload: &[u8]) {
    out.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n");
    bulk(out, channel);
    bulk(out, payload);
}

/// An envelope from `origin` with a trailer, as a remote roomcast instance publishes it.
pub fn envelope_from(origin: InstanceId, room: &str, data: &[u8], seq: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    envelope::encode(
        &mut payload,
        room,
        MessageType::Broadcast,
        data,
        None,
        1_700_000_000,
        Some(&Trailer {
            origin,
            epoch: 1,
            seq,
        }),
    );
    payload
}

/// `count` `message` pushes for `room` on `channel`, sequence numbers `first..first+count`.
pub fn messages(channel: &Bytes, room: &str, data: &[u8], first: u64, count: u64) -> BytesMut {
    let mut out = BytesMut::new();
    for seq in first..first + count {
        push_message(&mut out, channel, &envelope_from(OTHER, room, data, seq));
    }
    out
}
