//! Reusing the allocations of delivered messages.
//!
//! Every message that arrives is handed to its recipients behind one `Arc<Message>`. Messages
//! arrive in bursts (a read of dozens at once), and the allocator's per-thread cache holds
//! only a few blocks of each size: allocating one `Arc` per message and freeing it when the
//! last recipient drops it took the allocator's slow path for most of a burst, in both
//! directions. The pool keeps a reference to each message it lends out; once every other
//! holder has dropped it (the pool's is the only one left), the pool empties it (its payload
//! goes at once, releasing the read buffer it was cut from) and lends the same allocation
//! out again for a later message.
//!
//! What the pool holds is bounded: at most [`Config::message_reuse`] messages lent out and as
//! many empty ones, and lent messages whose payloads together reach
//! [`Config::message_reuse_bytes`] are let go, oldest first (their holders free them as
//! before). A message larger than that bound is never lent through the pool.
//!
//! [`Config::message_reuse`]: crate::Config::message_reuse
//! [`Config::message_reuse_bytes`]: crate::Config::message_reuse_bytes

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::Message;

/// How far past a still-held oldest message [`MessagePool::reclaim`] looks for released ones.
const LOOK_AHEAD: usize = 8;

/// Lends out `Arc<Message>`s and takes them back once nobody else holds them.
#[derive(Debug)]
pub(crate) struct MessagePool {
    /// Messages lent out, oldest first: the pool's own reference to each.
    lent: VecDeque<Arc<Message>>,
    /// Payload bytes of the messages in `lent`.
    lent_bytes: usize,
    /// Emptied messages, ready to be lent again.
    spare: Vec<Arc<Message>>,
    max: usize,
    max_bytes: usize,
}

impl MessagePool {
    /// A pool of at most `max` messages lent out (and as many spare) whose payloads total at
    /// most `max_bytes`; `max == 0` turns it off (every message is a new allocation).
    pub(crate) fn new(max: usize, max_bytes: usize) -> Self {
        MessagePool {
            lent: VecDeque::new(),
            lent_bytes: 0,
            spare: Vec::new(),
            max,
            max_bytes,
        }
    }

    /// `message` behind an `Arc`: a spare allocation where there is one.
    pub(crate) fn lend(&mut self, message: Message) -> Arc<Message> {
        let len = message.data.len();
        if self.max == 0 || len > self.max_bytes {
            return Arc::new(message);
        }
        let shared = match self.spare.pop() {
            Some(mut spare) => match Arc::get_mut(&mut spare) {
                Some(slot) => {
                    *slot = message;
                    spare
                }
                // Not reachable: a spare is held by the pool alone (see `reclaim`).
                None => Arc::new(message),
            },
            None => Arc::new(message),
        };
        while !self.lent.is_empty()
            && (self.lent.len() >= self.max || self.lent_bytes + len > self.max_bytes)
        {
            self.let_go_oldest();
        }
        self.lent.push_back(Arc::clone(&shared));
        self.lent_bytes += len;
        shared
    }

    /// Takes back the lent messages nobody else holds any more, oldest first. Recipients
    /// mostly drop messages in the order they came; an oldest message still held while one
    /// of the next [`LOOK_AHEAD`] is not is kept on purpose or by a slower reader: the pool
    /// lets it go (its holder frees it as usual) rather than wait behind it.
    pub(crate) fn reclaim(&mut self) {
        while let Some(front) = self.lent.front() {
            if Arc::strong_count(front) != 1 {
                let released_behind = self
                    .lent
                    .iter()
                    .skip(1)
                    .take(LOOK_AHEAD)
                    .any(|m| Arc::strong_count(m) == 1);
                if !released_behind {
                    return;
                }
                self.let_go_oldest();
                continue;
            }
            let Some(mut m) = self.lent.pop_front() else {
                return;
            };
            self.lent_bytes -= m.data.len();
            // `None` if someone keeps a `Weak` to it: then it is simply dropped.
            if let Some(slot) = Arc::get_mut(&mut m) {
                slot.data = Bytes::new();
                slot.exclude_connection = None;
                if self.spare.len() < self.max {
                    self.spare.push(m);
                }
            }
        }
    }

    /// Stops holding the oldest lent message (its other holders free it when they drop it).
    fn let_go_oldest(&mut self) {
        if let Some(m) = self.lent.pop_front() {
            self.lent_bytes -= m.data.len();
        }
    }

    /// Messages lent out and held by the pool, and spare ones.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.lent.len(), self.spare.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageType, RoomId};

    fn message(data: &Bytes) -> Message {
        Message {
            room: RoomId::try_from("room").expect("a valid id"),
            message_type: MessageType::Broadcast,
            data: data.clone(),
            exclude_connection: Some("conn".into()),
            timestamp: 7,
            origin: None,
        }
    }

    #[test]
    fn a_dropped_message_is_emptied_and_its_allocation_lent_again() {
        let mut pool = MessagePool::new(4, 1 << 20);
        let data = Bytes::from(vec![1u8; 100]);
        let first = pool.lend(message(&data));
        let at = Arc::as_ptr(&first);
        assert_eq!(first.data, data);
        drop(first);
        assert!(
            !data.is_unique(),
            "the pool still holds the payload until it reclaims"
        );
        pool.reclaim();
        assert!(data.is_unique(), "reclaiming released the payload");
        assert_eq!(pool.counts(), (0, 1));
        let other = Bytes::from_static(b"second");
        let second = pool.lend(message(&other));
        assert_eq!(Arc::as_ptr(&second), at, "the same allocation");
        assert_eq!(second.data, other);
        assert_eq!(second.exclude_connection.as_deref(), Some("conn"));
        assert_eq!(pool.counts(), (1, 0));
    }

    #[test]
    fn a_message_still_held_is_never_touched() {
        let mut pool = MessagePool::new(8, 1 << 20);
        let held = pool.lend(message(&Bytes::from_static(b"held")));
        let newer = pool.lend(message(&Bytes::from_static(b"newer")));
        pool.reclaim();
        // Both held: nothing taken back.
        assert_eq!(pool.counts(), (2, 0));
        drop(newer);
        pool.reclaim();
        // The oldest is held while a newer one is not: it is let go, the newer taken back.
        assert_eq!(pool.counts(), (0, 1));
        assert_eq!(Arc::strong_count(&held), 1, "the pool no longer holds it");
        let next = pool.lend(message(&Bytes::from_static(b"next")));
        assert_ne!(Arc::as_ptr(&next), Arc::as_ptr(&held));
        assert_eq!(held.data, Bytes::from_static(b"held"));
        assert_eq!(next.data, Bytes::from_static(b"next"));
    }

    #[test]
    fn what_the_pool_holds_is_bounded_in_messages_and_bytes() {
        let mut pool = MessagePool::new(3, 1000);
        let mut kept = Vec::new();
        for _ in 0..10 {
            kept.push(pool.lend(message(&Bytes::from(vec![0u8; 100]))));
        }
        assert_eq!(pool.counts(), (3, 0), "at most `max` lent");
        drop(kept);
        pool.reclaim();
        assert_eq!(pool.counts(), (0, 3), "at most `max` spare");
        // 400-byte payloads: only two fit under 1,000 bytes.
        let big: Vec<_> = (0..3)
            .map(|_| pool.lend(message(&Bytes::from(vec![0u8; 400]))))
            .collect();
        assert_eq!(pool.counts().0, 2);
        // Larger than the whole bound: never kept.
        let huge = Bytes::from(vec![0u8; 1001]);
        let h = pool.lend(message(&huge));
        assert_eq!(Arc::strong_count(&h), 1);
        assert_eq!(pool.counts().0, 2);
        drop(big);
    }

    #[test]
    fn a_message_with_a_weak_reference_is_let_go() {
        let mut pool = MessagePool::new(4, 1 << 20);
        let m = pool.lend(message(&Bytes::from_static(b"x")));
        let weak = Arc::downgrade(&m);
        drop(m);
        pool.reclaim();
        assert_eq!(pool.counts(), (0, 0));
        assert!(weak.upgrade().is_none(), "freed, not reused");
    }

    #[test]
    fn zero_turns_reuse_off() {
        let mut pool = MessagePool::new(0, 1 << 20);
        let m = pool.lend(message(&Bytes::from_static(b"x")));
        assert_eq!(Arc::strong_count(&m), 1);
        pool.reclaim();
        assert_eq!(pool.counts(), (0, 0));
    }
}
