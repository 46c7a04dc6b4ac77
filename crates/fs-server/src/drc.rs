//! The duplicate request cache (RFC 1813, section 4.4; Juszczak, "Improving the
//! Performance and Correctness of an NFS Server", 1989).
//!
//! Non-idempotent calls are remembered by (client id, xid) together with the request
//! itself. A retransmission of a call that finished gets the first reply again instead
//! of a spurious `EEXIST` or `ENOENT`; one that arrives while the first is still running
//! is dropped (the first's reply answers it). A different request under a reused xid is
//! treated as new. The cache is bounded: the least recently used entries go first.
//! Pure data structure: no clock, no I/O.

use fs_proto::Request;
use lru::LruCache;
use std::num::NonZeroUsize;

#[derive(Debug, PartialEq, Eq)]
pub enum Begin<R> {
    /// Not seen before: run it, then call [`Drc::finish`].
    New,
    /// The same call is running now: send nothing.
    InProgress,
    /// Already answered: send this reply again.
    Replay(R),
}

enum Entry<R> {
    InProgress(Request),
    Done(Request, R),
}

pub struct Drc<R> {
    entries: LruCache<(u64, u64), Entry<R>>,
}

impl<R: Clone> Drc<R> {
    pub fn new(capacity: usize) -> Drc<R> {
        Drc { entries: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap()) }
    }

    pub fn begin(&mut self, client: u64, xid: u64, req: &Request) -> Begin<R> {
        let key = (client, xid);
        match self.entries.get(&key) {
            Some(Entry::InProgress(r)) if r == req => Begin::InProgress,
            Some(Entry::Done(r, reply)) if r == req => Begin::Replay(reply.clone()),
            _ => {
                self.entries.put(key, Entry::InProgress(req.clone()));
                Begin::New
            }
        }
    }

    pub fn finish(&mut self, client: u64, xid: u64, req: Request, reply: R) {
        self.entries.put((client, xid), Entry::Done(req, reply));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_proto::FileHandle;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn req(n: u8) -> Request {
        Request::Remove { dir: FileHandle(vec![1]), name: vec![n] }
    }

    #[test]
    fn retransmission_gets_the_first_reply() {
        let mut d = Drc::new(8);
        assert_eq!(d.begin(1, 10, &req(0)), Begin::New);
        assert_eq!(d.begin(1, 10, &req(0)), Begin::InProgress);
        d.finish(1, 10, req(0), "ok");
        assert_eq!(d.begin(1, 10, &req(0)), Begin::Replay("ok"));
        // Same xid from another client, or another request under the same xid: new.
        assert_eq!(d.begin(2, 10, &req(0)), Begin::New);
        assert_eq!(d.begin(1, 10, &req(1)), Begin::New);
    }

    #[test]
    fn bounded_least_recently_used_first() {
        let mut d = Drc::new(2);
        for xid in 0..3 {
            assert_eq!(d.begin(1, xid, &req(0)), Begin::New);
            d.finish(1, xid, req(0), xid);
        }
        assert_eq!(d.len(), 2);
        assert_eq!(d.begin(1, 0, &req(0)), Begin::New, "oldest evicted");
        assert_eq!(d.begin(1, 2, &req(0)), Begin::Replay(2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Begin(u64, u64, u8),
        Finish(u64, u64, u8, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u64, 0..6u64, 0..2u8).prop_map(|(c, x, r)| Op::Begin(c, x, r)),
            (0..3u64, 0..6u64, 0..2u8, any::<u32>()).prop_map(|(c, x, r, v)| Op::Finish(c, x, r, v)),
        ]
    }

    proptest! {
        /// Against a model without eviction (capacity above the key space): every begin
        /// answers what the model says, and the cache never outgrows its bound.
        #[test]
        fn matches_unbounded_model(ops in proptest::collection::vec(op(), 0..200)) {
            let mut d = Drc::new(64);
            let mut model: HashMap<(u64, u64), (u8, Option<u32>)> = HashMap::new();
            for o in ops {
                match o {
                    Op::Begin(c, x, r) => {
                        let want = match model.get(&(c, x)) {
                            Some(&(mr, None)) if mr == r => Begin::InProgress,
                            Some(&(mr, Some(v))) if mr == r => Begin::Replay(v),
                            _ => { model.insert((c, x), (r, None)); Begin::New }
                        };
                        prop_assert_eq!(d.begin(c, x, &req(r)), want);
                    }
                    Op::Finish(c, x, r, v) => {
                        d.finish(c, x, req(r), v);
                        model.insert((c, x), (r, Some(v)));
                    }
                }
                prop_assert!(d.len() <= 64);
            }
        }

        #[test]
        fn never_exceeds_capacity(cap in 1..16usize, keys in proptest::collection::vec((0..50u64, 0..50u64), 0..300)) {
            let mut d = Drc::new(cap);
            for (c, x) in keys {
                if d.begin(c, x, &req(0)) == Begin::New {
                    d.finish(c, x, req(0), ());
                }
                prop_assert!(d.len() <= cap);
            }
        }
    }
}
