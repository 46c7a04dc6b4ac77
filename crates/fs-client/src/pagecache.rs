//! The client's page cache: an LRU of fixed-size blocks keyed by (node, block index),
//! bounded in bytes, each tagged with the change attribute it was read under.
//!
//! A block is only served while its tag equals the node's current data change attribute,
//! so revalidation at `open` (close-to-open) that finds a new change attribute makes
//! every old block of that file unreachable at once; they age out of the LRU. A block
//! shorter than the block size is the file's last (it ends at end of file). Pure.
//!
//! Every invalidation of a file bumps its epoch. A fetch notes the epoch when it starts
//! and its result is only cached if the epoch is still the same: a READ that was on its
//! way while a write or truncate changed the file must not put old data back (fsx found
//! exactly that race). Epochs are stamps from one counter, kept only for files fetched
//! since the kernel last forgot them: a long-lived mount that walks millions of files
//! keeps no record of each.

use lru::LruCache;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

pub type Data = Arc<Vec<u8>>;

struct Block {
    change: u64,
    data: Data,
}

pub struct PageCache {
    lru: LruCache<(u64, u64), Block>,
    /// The cached block indices of each node (so dropping a file's blocks, at every
    /// FORGET, costs its own blocks rather than a walk of the whole cache).
    blocks: HashMap<u64, BTreeSet<u64>>,
    /// Per node fetched since it was last forgotten: the stamp of its last invalidation
    /// (or of the first fetch after).
    epochs: HashMap<u64, u64>,
    /// The last stamp handed out.
    stamp: u64,
    bytes: usize,
    capacity: usize,
    block_size: usize,
    hits: u64,
    misses: u64,
}

impl PageCache {
    pub fn new(capacity_bytes: usize, block_size: usize) -> PageCache {
        PageCache {
            lru: LruCache::unbounded(),
            blocks: Default::default(),
            epochs: Default::default(),
            stamp: 0,
            bytes: 0,
            capacity: capacity_bytes,
            block_size,
            hits: 0,
            misses: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The block if cached under this change attribute.
    pub fn get(&mut self, ino: u64, block: u64, change: u64) -> Option<Data> {
        let got = match self.lru.get(&(ino, block)) {
            Some(b) if b.change == change => Some(b.data.clone()),
            _ => None,
        };
        if got.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        got
    }

    /// Lookups that found the block, and that did not, so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// The file's invalidation epoch, noted as a fetch starts, to pass back to
    /// [`PageCache::insert`].
    pub fn epoch(&mut self, ino: u64) -> u64 {
        *self.epochs.entry(ino).or_insert(self.stamp)
    }

    /// Caches a block fetched when the file's epoch was `epoch`; a stale one (the file
    /// invalidated or forgotten since) is dropped.
    pub fn insert(&mut self, ino: u64, block: u64, change: u64, epoch: u64, data: Data) {
        if self.capacity == 0 || self.epochs.get(&ino) != Some(&epoch) {
            return;
        }
        self.bytes += data.len();
        match self.lru.put((ino, block), Block { change, data }) {
            Some(old) => self.bytes -= old.data.len(),
            None => {
                self.blocks.entry(ino).or_default().insert(block);
            }
        }
        while self.bytes > self.capacity {
            match self.lru.pop_lru() {
                Some((key, b)) => {
                    self.bytes -= b.data.len();
                    self.unindex(key);
                }
                None => break,
            }
        }
    }

    fn unindex(&mut self, (ino, block): (u64, u64)) {
        if let Some(set) = self.blocks.get_mut(&ino) {
            set.remove(&block);
            if set.is_empty() {
                self.blocks.remove(&ino);
            }
        }
    }

    /// Drops the blocks of `ino` that overlap the byte range `[start, end)`.
    pub fn invalidate_range(&mut self, ino: u64, start: u64, end: u64) {
        if end <= start {
            return;
        }
        // (A node without an epoch has no fetch on its way.)
        if let Some(e) = self.epochs.get_mut(&ino) {
            self.stamp += 1;
            *e = self.stamp;
        }
        let bs = self.block_size as u64;
        let (first, last) = (start / bs, (end - 1) / bs);
        let Some(set) = self.blocks.get(&ino) else { return };
        let doomed: Vec<u64> = set.range(first..=last).copied().collect();
        for b in doomed {
            if let Some(old) = self.lru.pop(&(ino, b)) {
                self.bytes -= old.data.len();
            }
            self.unindex((ino, b));
        }
    }

    /// Drops every block of `ino`.
    pub fn invalidate(&mut self, ino: u64) {
        self.invalidate_range(ino, 0, u64::MAX);
    }

    /// The kernel forgot `ino`: its blocks and its epoch go (a fetch still on its way
    /// is not cached, and a later one notes a newer stamp than it had: the invalidation
    /// took one).
    pub fn forget(&mut self, ino: u64) {
        self.invalidate(ino);
        self.epochs.remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize) -> Data {
        Arc::new(vec![1; n])
    }

    #[test]
    fn tags_and_lru_bound() {
        let mut c = PageCache::new(300, 100);
        for ino in [1, 2] {
            assert_eq!(c.epoch(ino), 0);
        }
        c.insert(1, 0, 7, 0, data(100));
        assert!(c.get(1, 0, 7).is_some());
        assert!(c.get(1, 0, 8).is_none(), "another change attribute: stale");
        c.insert(1, 1, 7, 0, data(100));
        c.insert(1, 2, 7, 0, data(100));
        c.get(1, 0, 7); // 0 is now the most recent
        c.insert(2, 0, 7, 0, data(100));
        assert_eq!(c.bytes(), 300);
        assert!(c.get(1, 1, 7).is_none(), "least recently used went first");
        assert!(c.get(1, 0, 7).is_some());
        c.invalidate_range(1, 150, 250);
        assert!(c.get(1, 2, 7).is_none());
        assert!(c.get(1, 0, 7).is_some());
        c.invalidate(1);
        assert!(c.get(1, 0, 7).is_none());
        assert_eq!(c.bytes(), 100);
    }

    /// A fetch that started before an invalidation does not put old data back.
    #[test]
    fn regression_fetch_racing_a_write_is_not_cached() {
        let mut c = PageCache::new(1000, 100);
        let started = c.epoch(1);
        c.invalidate_range(1, 0, 10); // a write lands while the READ is on its way
        c.insert(1, 0, 7, started, data(100));
        assert!(c.get(1, 0, 7).is_none());
        let now = c.epoch(1);
        c.insert(1, 0, 7, now, data(100));
        assert!(c.get(1, 0, 7).is_some());
    }

    /// What a fetch of a node's block does when the node was invalidated or forgotten
    /// while it was on its way.
    #[derive(Clone, Debug)]
    enum Op {
        Start(u64),
        Finish(usize),
        Invalidate(u64),
        Forget(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u64).prop_map(Op::Start),
            (0..8usize).prop_map(Op::Finish),
            (0..4u64).prop_map(Op::Invalidate),
            (0..4u64).prop_map(Op::Forget),
        ]
    }

    proptest! {
        /// A fetch is cached exactly when its node was neither invalidated nor forgotten
        /// since it started, and once every node is forgotten no epoch is kept.
        #[test]
        fn a_fetch_is_cached_only_if_nothing_dropped_its_node_meanwhile(ops in proptest::collection::vec(op(), 0..200)) {
            let mut c = PageCache::new(1 << 20, 100);
            // Fetches on their way: node, noted epoch, whether still valid (the model).
            let mut pending: Vec<(u64, u64, bool)> = Vec::new();
            let mut block = 0u64;
            for o in ops {
                match o {
                    Op::Start(ino) => pending.push((ino, c.epoch(ino), true)),
                    Op::Finish(i) if i < pending.len() => {
                        let (ino, e, valid) = pending.remove(i);
                        block += 1;
                        c.insert(ino, block, 0, e, data(10));
                        prop_assert_eq!(c.get(ino, block, 0).is_some(), valid);
                    }
                    Op::Finish(_) => {}
                    Op::Invalidate(ino) | Op::Forget(ino) => {
                        if matches!(o, Op::Forget(_)) {
                            c.forget(ino);
                        } else {
                            c.invalidate(ino);
                        }
                        for p in pending.iter_mut().filter(|p| p.0 == ino) {
                            p.2 = false;
                        }
                    }
                }
            }
            for ino in 0..4 {
                c.forget(ino);
            }
            prop_assert!(c.epochs.is_empty());
        }

        #[test]
        fn never_over_capacity_and_bytes_exact(ops in proptest::collection::vec((0..3u64, 0..200u64, 1..120usize, any::<bool>()), 0..300)) {
            let mut c = PageCache::new(1000, 100);
            for (ino, block, len, inval) in ops {
                if inval {
                    let (start, end) = (block * 100, block * 100 + len as u64 * 100);
                    c.invalidate_range(ino, start, end);
                    let left = c.lru.iter().any(|(&(i, b), _)| i == ino && b * 100 < end && (b + 1) * 100 > start);
                    prop_assert!(!left, "a block of the range outlived its invalidation");
                } else {
                    let e = c.epoch(ino);
                    c.insert(ino, block, 0, e, data(len));
                }
                for ino in 0..3 {
                    // (Another thread's fetch may be on its way at any time.)
                    let _ = c.epoch(ino);
                }
                prop_assert!(c.bytes() <= 1000);
                let sum: usize = c.lru.iter().map(|(_, b)| b.data.len()).sum();
                prop_assert_eq!(sum, c.bytes());
                // The index of each node's blocks is exactly what the LRU holds.
                let mut held: Vec<(u64, u64)> = c.lru.iter().map(|(k, _)| *k).collect();
                held.sort();
                let indexed: Vec<(u64, u64)> =
                    c.blocks.iter().flat_map(|(&i, set)| set.iter().map(move |&b| (i, b))).collect::<BTreeSet<_>>().into_iter().collect();
                prop_assert_eq!(held, indexed);
                prop_assert!(c.blocks.values().all(|set| !set.is_empty()));
            }
        }
    }
}
