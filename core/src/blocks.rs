//! Buffer blocks that go back into use instead of back to the allocator.
//!
//! Bytes read from Redis are handed to the application as slices of the block they were read
//! into (a reference count, no copy), and a publish's frame stays a slice of its output block
//! until Redis answers it. A block is therefore free only once every slice of it is dropped,
//! at a time neither the core nor the adapter controls. A [`BlockPool`] keeps an empty
//! handle (a *keeper*) on each block it handed out: when the keeper is the only reference
//! left, the block can be taken again, still mapped and warm in the cache, where a new
//! allocation would fault in fresh pages (and freeing the old one could return them to the
//! system, at the cost of a TLB shootdown on every other core).

use std::collections::VecDeque;

use bytes::BytesMut;

/// Blocks handed out, kept by an empty handle each so that a block nothing else refers to
/// any more becomes the next block instead of a new allocation.
///
/// Memory: a keeper of a block still in use costs nothing (the slices hold the block anyway);
/// a free block costs its capacity. The pool keeps at most one free block (a spare) beyond
/// the one it hands out, and handles on at most `max_retired` blocks: beyond that, the oldest
/// handle is let go and its block freed with its last slice, as without a pool.
#[derive(Debug)]
pub struct BlockPool {
    /// Blocks handed out before the current one, oldest first, as (keeper, capacity).
    retired: VecDeque<(BytesMut, usize)>,
    /// The keeper of the block handed out last.
    current: Option<(BytesMut, usize)>,
    max_retired: usize,
    allocated: u64,
}

impl BlockPool {
    /// A pool that keeps handles on up to `max_retired` blocks besides the current one.
    pub fn new(max_retired: usize) -> Self {
        BlockPool {
            retired: VecDeque::new(),
            current: None,
            max_retired,
            allocated: 0,
        }
    }

    /// An empty block with room for at least `need` bytes, which becomes the current one
    /// (the block handed out before it is retired). It is a free retired block where one is
    /// big enough, else a new allocation of `need` bytes. Free blocks beyond that one and one
    /// spare go back to the allocator.
    ///
    /// The caller writes into the block and splits its contents off; it must not grow the
    /// block beyond its capacity (that would move the bytes to a new allocation the pool
    /// does not know of, which is harmless but not reused).
    pub fn next_block(&mut self, need: usize) -> BytesMut {
        let mut block = None;
        let mut spare = None;
        // Blocks usually free up in the order they were handed out, but a slow reader of one
        // message may hold an old one: every retired block is looked at (a reference count
        // each), not only those up to the first still in use.
        let mut i = 0;
        while i < self.retired.len() {
            let (keeper, cap) = &mut self.retired[i];
            // A keeper has no capacity of its own: reclaiming its block's succeeds exactly
            // when nothing else refers to the block.
            if !keeper.try_reclaim(*cap) {
                i += 1;
                continue;
            }
            let Some((b, cap)) = self.retired.remove(i) else {
                break;
            };
            if block.is_none() && cap >= need {
                block = Some(b);
            } else if spare.is_none() {
                spare = Some((b, cap));
            }
        }
        if let Some(s) = spare {
            self.retired.push_front(s);
        }
        if let Some(k) = self.current.take() {
            self.retired.push_back(k);
            if self.retired.len() > self.max_retired {
                self.retired.pop_front();
            }
        }
        let mut block = block.unwrap_or_else(|| {
            self.allocated += 1;
            BytesMut::with_capacity(need)
        });
        let cap = block.capacity();
        self.current = Some((block.split_to(0), cap));
        block
    }

    /// Nothing is in use for a while: free blocks but one spare go back to the allocator.
    pub fn trim(&mut self) {
        let mut spare = false;
        self.retired.retain_mut(|(keeper, cap)| {
            if !keeper.try_reclaim(*cap) {
                return true;
            }
            !std::mem::replace(&mut spare, true)
        });
    }

    /// Blocks allocated (not reused) so far.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Handles kept on blocks handed out before the current one.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::BlockPool;
    use bytes::Bytes;

    /// Fills a block with `len` bytes of `fill` and splits them off as one slice.
    fn fill(pool: &mut BlockPool, len: usize, fill: u8) -> Bytes {
        let mut b = pool.next_block(len);
        b.extend_from_slice(&vec![fill; len]);
        b.split().freeze()
    }

    #[test]
    fn a_block_comes_back_once_its_last_slice_is_dropped() {
        let mut pool = BlockPool::new(8);
        let a = fill(&mut pool, 100, b'a');
        let b = fill(&mut pool, 100, b'b');
        let c = fill(&mut pool, 100, b'c');
        assert_eq!(pool.allocated(), 3);
        // `b` holds its block; `a` is dropped: the next block is `a`'s.
        drop(a);
        let d = fill(&mut pool, 100, b'd');
        assert_eq!(pool.allocated(), 3, "the free block was not reused");
        // A block freed out of order is found too.
        drop(c);
        let e = fill(&mut pool, 100, b'e');
        assert_eq!(
            pool.allocated(),
            3,
            "a block freed out of order was not reused"
        );
        // Nothing free: a new block.
        let f = fill(&mut pool, 100, b'f');
        assert_eq!(pool.allocated(), 4);
        // Every slice is intact, though blocks were reused under them.
        for (s, x) in [(&b, b'b'), (&d, b'd'), (&e, b'e'), (&f, b'f')] {
            assert_eq!(&s[..], &[x; 100][..]);
        }
    }

    #[test]
    fn a_free_block_too_small_is_not_used_and_handles_are_bounded() {
        let mut pool = BlockPool::new(2);
        drop(fill(&mut pool, 10, b'x'));
        // The free block of 10 bytes cannot take 100.
        let big = fill(&mut pool, 100, b'y');
        assert_eq!(pool.allocated(), 2);
        let mut held = vec![big];
        for _ in 0..10 {
            held.push(fill(&mut pool, 100, b'z'));
        }
        assert!(pool.retired() <= 2, "{} handles kept", pool.retired());
        // The blocks still kept come back once free.
        drop(held);
        let allocated = pool.allocated();
        drop(fill(&mut pool, 100, b'w'));
        assert_eq!(pool.allocated(), allocated);
    }

    #[test]
    fn trim_keeps_one_spare() {
        let mut pool = BlockPool::new(8);
        let slices: Vec<_> = (0..5).map(|_| fill(&mut pool, 64, b'q')).collect();
        drop(slices);
        assert_eq!(pool.retired(), 4);
        pool.trim();
        assert_eq!(pool.retired(), 1);
        // The spare is the next block.
        let before = pool.allocated();
        drop(fill(&mut pool, 64, b'r'));
        assert_eq!(pool.allocated(), before);
    }
}
