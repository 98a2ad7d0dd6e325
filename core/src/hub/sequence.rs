//! Publish sequencing: the publish ids, and each room's stream of (epoch, sequence number)
//! that receivers check for duplicates and gaps.
//!
//! Invariants: publish ids only grow; within a room's stream the sequence numbers go 1, 2,
//! 3, ... with no number given twice; an epoch is never given to two streams (a forgotten
//! room that publishes again starts a new epoch, which receivers take as a new baseline);
//! at most `max_streams` streams are kept.
//!
//! A stream also keeps its room's channel as the PUBLISH frame spells it (`$<len>`, the
//! channel, CRLF), built once when the stream starts: a publish copies it instead of
//! escaping and measuring the room's id again.

use crate::naming::{ChannelNamer, IdStr};
use foldhash::fast::FixedState;
use hashbrown::hash_map::Entry;
use hashbrown::HashMap;

use crate::event::PublishId;
use crate::naming::RoomId;

#[derive(Debug)]
struct Stream {
    epoch: u64,
    next: u64,
    /// The room's channel as a RESP bulk string: `$<len>\r\n<channel>\r\n`.
    channel: Box<[u8]>,
}

/// A publish's numbers: the room's shared id, the stream's epoch, the publish's sequence
/// number and the room's channel as a RESP bulk string (borrowed from the stream).
pub(super) type Numbered<'s> = (RoomId, u64, u64, &'s [u8]);

/// Publish ids and per-room sequence numbers.
#[derive(Debug)]
pub(super) struct Sequencer {
    streams: HashMap<RoomId, Stream, FixedState>,
    /// Streams started so far: the next stream's epoch is `base_epoch + generation`.
    generation: u64,
    base_epoch: u64,
    max_streams: usize,
    last_id: u64,
}

impl Sequencer {
    /// Streams' epochs start at `base_epoch` (the instance's epoch, new at every start).
    pub(super) fn new(seed: u64, base_epoch: u64, max_streams: usize) -> Self {
        Sequencer {
            streams: HashMap::with_hasher(FixedState::with_seed(seed)),
            generation: 0,
            base_epoch,
            max_streams,
            last_id: 0,
        }
    }

    /// A new publish id.
    #[inline]
    pub(super) fn next_id(&mut self) -> PublishId {
        self.last_id += 1;
        PublishId(self.last_id)
    }

    /// The shared id of a room with a stream.
    #[inline]
    pub(super) fn known(&self, room: &str) -> Option<&RoomId> {
        self.streams.get_key_value(&IdStr(room)).map(|(id, _)| id)
    }

    /// The next number of a room that has a stream, with its shared id: one map lookup.
    #[inline]
    pub(super) fn take(&mut self, room: &str) -> Option<Numbered<'_>> {
        let (id, s) = self.streams.get_key_value_mut(&IdStr(room))?;
        let seq = s.next;
        s.next += 1;
        Some((id.clone(), s.epoch, seq, &s.channel))
    }

    /// [`Sequencer::take`] for a room that may have no stream: starts one (its channel
    /// spelled by `namer`) if so.
    pub(super) fn start(&mut self, room: &RoomId, namer: &ChannelNamer) -> Numbered<'_> {
        let new = !self.streams.contains_key(room);
        if new && self.streams.len() >= self.max_streams {
            // Forget one stream; if that room publishes again it starts a new epoch.
            if let Some(k) = self.streams.keys().next().cloned() {
                self.streams.remove(&k);
            }
        }
        let (id, s) = match self.streams.entry(room.clone()) {
            Entry::Occupied(o) => {
                let id = o.key().clone();
                (id, o.into_mut())
            }
            Entry::Vacant(v) => {
                let epoch = self.base_epoch.wrapping_add(self.generation);
                self.generation += 1;
                let channel = namer.room_channel_bulk(room).into_boxed_slice();
                let o = v.insert_entry(Stream {
                    epoch,
                    next: 1,
                    channel,
                });
                let id = o.key().clone();
                (id, o.into_mut())
            }
        };
        let seq = s.next;
        s.next += 1;
        (id, s.epoch, seq, &s.channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_never_given_twice() {
        let mut s = Sequencer::new(1, 7, 2);
        let (a, b, c) = (
            RoomId::from_checked("a"),
            RoomId::from_checked("b"),
            RoomId::from_checked("c"),
        );
        let namer = ChannelNamer::new("app").expect("a valid prefix");
        let next = |s: &mut Sequencer, room: &RoomId| {
            let (id, epoch, seq, channel) = s.start(room, &namer);
            assert!(id.ptr_eq(room), "the room's shared id is kept");
            let name = namer.room_channel(room);
            let mut expected = format!("${}\r\n", name.len()).into_bytes();
            expected.extend_from_slice(&name);
            expected.extend_from_slice(b"\r\n");
            assert_eq!(channel, &expected[..], "the channel as a bulk string");
            (epoch, seq)
        };
        assert_eq!(s.take("a"), None, "no stream yet");
        assert_eq!(next(&mut s, &a), (7, 1));
        let (id, epoch, seq, channel) = s.take("a").expect("a stream");
        assert_eq!((id, epoch, seq), (a.clone(), 7, 2));
        assert_eq!(channel, b"$10\r\napp:room:a\r\n");
        assert_eq!(next(&mut s, &a), (7, 3));
        assert_eq!(next(&mut s, &b), (8, 1));
        assert!(s.known("a").is_some_and(|id| id.ptr_eq(&a)));
        // A third room forgets one of the two; the forgotten one restarts under a new epoch.
        assert_eq!(next(&mut s, &c), (9, 1));
        let forgotten = if s.known("a").is_none() { &a } else { &b };
        assert_eq!(next(&mut s, forgotten), (10, 1));
        assert!(s.next_id() < s.next_id());
    }
}
