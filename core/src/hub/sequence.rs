//! Publish sequencing: the publish ids, and each room's stream of (epoch, sequence number)
//! that receivers check for duplicates and gaps.
//!
//! Invariants: publish ids only grow; within a room's stream the sequence numbers go 1, 2,
//! 3, ... with no number given twice; an epoch is never given to two streams (a forgotten
//! room that publishes again starts a new epoch, which receivers take as a new baseline);
//! at most `max_streams` streams are kept.

use crate::naming::IdStr;
use foldhash::fast::FixedState;
use hashbrown::HashMap;

use crate::event::PublishId;
use crate::naming::RoomId;

#[derive(Debug)]
struct Stream {
    epoch: u64,
    next: u64,
}

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
    pub(super) fn take(&mut self, room: &str) -> Option<(RoomId, u64, u64)> {
        let (id, s) = self.streams.get_key_value_mut(&IdStr(room))?;
        let seq = s.next;
        s.next += 1;
        Some((id.clone(), s.epoch, seq))
    }

    /// The next (epoch, number) of `room`, starting a stream if it has none.
    pub(super) fn next(&mut self, room: &RoomId) -> (u64, u64) {
        if let Some(s) = self.streams.get_mut(room) {
            let seq = s.next;
            s.next += 1;
            return (s.epoch, seq);
        }
        if self.streams.len() >= self.max_streams {
            // Forget one stream; if that room publishes again it starts a new epoch.
            if let Some(k) = self.streams.keys().next().cloned() {
                self.streams.remove(&k);
            }
        }
        let epoch = self.base_epoch.wrapping_add(self.generation);
        self.generation += 1;
        self.streams.insert(room.clone(), Stream { epoch, next: 2 });
        (epoch, 1)
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
        assert_eq!(s.take("a"), None, "no stream yet");
        assert_eq!(s.next(&a), (7, 1));
        assert_eq!(s.take("a"), Some((a.clone(), 7, 2)));
        assert_eq!(s.next(&a), (7, 3));
        assert_eq!(s.next(&b), (8, 1));
        assert!(s.known("a").is_some_and(|id| id.ptr_eq(&a)));
        // A third room forgets one of the two; the forgotten one restarts under a new epoch.
        assert_eq!(s.next(&c), (9, 1));
        let forgotten = if s.known("a").is_none() { &a } else { &b };
        assert_eq!(s.next(forgotten), (10, 1));
        assert!(s.next_id() < s.next_id());
    }
}
