//! A bounded single-consumer queue with an overflow policy, for connections, memberships and
//! event streams.
//!
//! The driver pushes without ever waiting, so one slow consumer can never delay the others:
//! when a queue is full the policy decides what gives, and every drop is counted. A queue is
//! bounded in items and, through a cost per item, in bytes (member queues: payload plus a
//! fixed overhead; event queues: no byte bound).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// What a full membership or event queue does with the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop the oldest queued message to make room (counted): the consumer sees the newest.
    #[default]
    DropOldest,
    /// End the stream (the membership leaves its room): for consumers that must see every
    /// message or none.
    Close,
}

#[derive(Debug)]
struct Inner<T> {
    items: VecDeque<T>,
    /// The cost of `items`.
    bytes: usize,
    closed: bool,
    waker: Option<Waker>,
}

/// The shared end of a queue.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    inner: Mutex<Inner<T>>,
    capacity: usize,
    max_bytes: usize,
    cost: fn(&T) -> usize,
    policy: Overflow,
    dropped: AtomicU64,
    overflowed: std::sync::atomic::AtomicBool,
}

impl<T> Queue<T> {
    /// A queue of at most `capacity` items.
    pub(crate) fn new(capacity: usize, policy: Overflow) -> Self {
        Self::with_bytes(capacity, usize::MAX, |_| 0, policy)
    }

    /// A queue of at most `capacity` items costing at most `max_bytes` in all, each item
    /// costing `cost(item)`. One item is queued whatever its cost: a message larger than the
    /// bound is never dropped for its own size, only for a newer one.
    pub(crate) fn with_bytes(
        capacity: usize,
        max_bytes: usize,
        cost: fn(&T) -> usize,
        policy: Overflow,
    ) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                waker: None,
            }),
            capacity: capacity.max(1),
            max_bytes,
            cost,
            policy,
            dropped: AtomicU64::new(0),
            overflowed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every method
        // finishes its change before anything can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an item; returns false if the queue is closed (the consumer is gone or overflowed
    /// under [`Overflow::Close`]).
    pub(crate) fn push(&self, item: T) -> bool {
        self.try_push(item).is_ok()
    }

    /// [`Queue::push`], handing the item back when it is not queued (the queue is closed, or
    /// this push closed it under [`Overflow::Close`]).
    pub(crate) fn try_push(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut q = self.lock();
            if q.closed {
                return Err(item);
            }
            let cost = (self.cost)(&item);
            let over = |len: usize, bytes: usize| {
                len > 1 && (len > self.capacity || bytes > self.max_bytes)
            };
            let (len, bytes) = (q.items.len() + 1, q.bytes.saturating_add(cost));
            if self.policy == Overflow::Close && over(len, bytes) {
                // The stream ends after what is queued; this item is not.
                self.dropped.fetch_add(1, Ordering::Relaxed);
                q.closed = true;
                self.overflowed.store(true, Ordering::Relaxed);
                return Err(item);
            }
            q.items.push_back(item);
            q.bytes = bytes;
            while over(q.items.len(), q.bytes) {
                // DropOldest: the oldest go until both bounds hold (or one item is left).
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(old) = q.items.pop_front() {
                    q.bytes -= (self.cost)(&old);
                }
            }
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Ends the stream after what is queued.
    pub(crate) fn close(&self) {
        let waker = {
            let mut q = self.lock();
            q.closed = true;
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the next item, moving everything queued into the consumer's `local` buffer
    /// under one lock (one lock per batch instead of per item; the queue's bound applies to
    /// what the consumer has not taken yet).
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        local: &mut VecDeque<T>,
    ) -> Poll<Option<T>> {
        if let Some(item) = local.pop_front() {
            return Poll::Ready(Some(item));
        }
        let mut q = self.lock();
        if !q.items.is_empty() {
            std::mem::swap(&mut q.items, local);
            // The bounds apply to what the consumer has not taken.
            q.bytes = 0;
            drop(q);
            return Poll::Ready(local.pop_front());
        }
        if q.closed {
            return Poll::Ready(None);
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether the consumer is gone or the stream was ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// The cost of what is queued and not yet taken by the consumer.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// One item at a time, with a fresh local buffer each time (pushes it back unused).
    fn take<T>(q: &Queue<T>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut local = VecDeque::new();
        let r = q.poll_take(cx, &mut local);
        let mut inner = q.lock();
        while let Some(x) = local.pop_back() {
            inner.items.push_front(x);
        }
        r
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let q = Queue::new(2, Overflow::DropOldest);
        for i in 0..5 {
            assert!(q.push(i));
        }
        assert_eq!(q.dropped(), 3);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(take(&q, &mut cx), Poll::Ready(Some(3)));
        assert_eq!(take(&q, &mut cx), Poll::Ready(Some(4)));
        assert_eq!(take(&q, &mut cx), Poll::Pending);
    }

    #[test]
    fn close_policy_ends_the_stream() {
        let q = Queue::new(1, Overflow::Close);
        assert!(q.push(1));
        assert!(!q.push(2));
        assert!(q.overflowed());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(take(&q, &mut cx), Poll::Ready(Some(1)));
        assert_eq!(take(&q, &mut cx), Poll::Ready(None));
        assert!(!q.push(3));
    }

    #[test]
    fn take_moves_a_batch_and_keeps_order_and_the_bound() {
        let q = Queue::new(3, Overflow::DropOldest);
        let mut local = VecDeque::new();
        let mut cx = Context::from_waker(Waker::noop());
        for i in 0..3 {
            assert!(q.push(i));
        }
        assert_eq!(q.poll_take(&mut cx, &mut local), Poll::Ready(Some(0)));
        assert_eq!((local.len(), q.len()), (2, 0));
        // The bound applies to what was not taken yet.
        for i in 3..7 {
            assert!(q.push(i));
        }
        assert_eq!(q.dropped(), 1);
        let mut got = Vec::new();
        while let Poll::Ready(Some(x)) = q.poll_take(&mut cx, &mut local) {
            got.push(x);
        }
        assert_eq!(got, [1, 2, 4, 5, 6]);
        q.close();
        assert_eq!(q.poll_take(&mut cx, &mut local), Poll::Ready(None));
    }

    /// Items of `n` bytes: the item is its cost.
    fn bytes_queue(max_bytes: usize, policy: Overflow) -> Queue<usize> {
        Queue::with_bytes(1 << 20, max_bytes, |n| *n, policy)
    }

    fn drain(q: &Queue<usize>) -> Vec<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut local = VecDeque::new();
        let mut got = Vec::new();
        while let Poll::Ready(Some(x)) = q.poll_take(&mut cx, &mut local) {
            got.push(x);
        }
        got
    }

    #[test]
    fn byte_bound_drops_the_oldest_and_keeps_the_newest_in_order() {
        // Items costing 64 bytes each: 15 fit in 1,000 bytes (960), 16 do not.
        let q = Queue::with_bytes(1 << 20, 1000, |_: &usize| 64, Overflow::DropOldest);
        for i in 0..15 {
            assert!(q.push(i));
        }
        assert_eq!((q.dropped(), q.queued_bytes()), (0, 960));
        for i in 15..40 {
            assert!(q.push(i));
        }
        assert_eq!((q.dropped(), q.queued_bytes()), (25, 960));
        assert_eq!(drain(&q), (25..40).collect::<Vec<_>>());
        // Taking the batch resets the cost: the bound applies to what was not taken.
        assert_eq!(q.queued_bytes(), 0);
        assert!(q.push(40));
        assert_eq!(q.queued_bytes(), 64);
    }

    #[test]
    fn an_oversized_item_is_queued_alone_and_goes_for_the_next() {
        let q = bytes_queue(1000, Overflow::DropOldest);
        assert!(q.push(10));
        assert!(q.push(10_000));
        // The small one went to make room; the big one stays, alone, over the bound.
        assert_eq!((q.dropped(), q.queued_bytes(), q.len()), (1, 10_000, 1));
        assert!(q.push(20));
        assert_eq!((q.dropped(), q.queued_bytes()), (2, 20));
        assert_eq!(drain(&q), [20]);
        // Alone in an empty queue it is queued too.
        assert!(q.push(10_000));
        assert_eq!(drain(&q), [10_000]);
    }

    #[test]
    fn byte_bound_under_close_ends_the_stream_after_what_fits() {
        let q = bytes_queue(100, Overflow::Close);
        assert!(q.push(60));
        assert!(q.push(40));
        assert!(!q.push(1));
        assert!(q.overflowed());
        assert_eq!(drain(&q), [60, 40]);
        // An oversized first item still queues.
        let q = bytes_queue(100, Overflow::Close);
        assert!(q.push(500));
        assert!(!q.push(1));
        assert_eq!(drain(&q), [500]);
    }
}
