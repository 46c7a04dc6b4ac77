//! Logical clocks (Lamport 1978): a Lamport clock for a total order of requests, and a
//! vector clock (Fidge/Mattern 1988) that tells happened-before from concurrent. Both are
//! plain values; the node transport carries them on every message.

use std::cmp::Ordering;
use std::collections::BTreeMap;

pub type NodeId = u32;

/// A Lamport clock: tick on local events and sends; on receive, `max(local, received) + 1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lamport(u64);

impl Lamport {
    pub fn new() -> Lamport {
        Lamport(0)
    }

    /// A local event or a send: the timestamp it carries.
    pub fn tick(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }

    /// A receive of a message stamped `t`.
    pub fn receive(&mut self, t: u64) -> u64 {
        self.0 = self.0.max(t) + 1;
        self.0
    }

    pub fn now(&self) -> u64 {
        self.0
    }
}

/// How two vector timestamps relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The first happened before the second.
    Before,
    After,
    Equal,
    Concurrent,
}

/// A vector timestamp: one counter per node (absent = 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VectorStamp(pub BTreeMap<NodeId, u64>);

impl VectorStamp {
    pub fn get(&self, n: NodeId) -> u64 {
        self.0.get(&n).copied().unwrap_or(0)
    }

    /// Happened-before (`Before`), its converse, equality, or concurrency.
    pub fn compare(&self, other: &VectorStamp) -> Causality {
        let (mut less, mut greater) = (false, false);
        for n in self.0.keys().chain(other.0.keys()) {
            match self.get(*n).cmp(&other.get(*n)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

/// A node's vector clock.
#[derive(Debug, Clone)]
pub struct VectorClock {
    id: NodeId,
    v: VectorStamp,
}

impl VectorClock {
    pub fn new(id: NodeId) -> VectorClock {
        VectorClock { id, v: VectorStamp::default() }
    }

    /// A local event.
    pub fn tick(&mut self) -> VectorStamp {
        *self.v.0.entry(self.id).or_insert(0) += 1;
        self.v.clone()
    }

    /// A send: a local event whose stamp the message carries.
    pub fn send(&mut self) -> VectorStamp {
        self.tick()
    }

    /// A receive: increment our own entry, then take the element-wise maximum.
    pub fn receive(&mut self, other: &VectorStamp) -> VectorStamp {
        *self.v.0.entry(self.id).or_insert(0) += 1;
        for (&n, &t) in &other.0 {
            let e = self.v.0.entry(n).or_insert(0);
            *e = (*e).max(t);
        }
        self.v.clone()
    }

    pub fn now(&self) -> &VectorStamp {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lamport_rules() {
        let mut c = Lamport::new();
        assert_eq!(c.tick(), 1);
        assert_eq!(c.receive(7), 8, "max(1, 7) + 1");
        assert_eq!(c.receive(3), 9, "max(8, 3) + 1");
        assert_eq!(c.tick(), 10);
    }

    /// A hand-made trace of three processes (the figure in Coulouris et al., "Distributed
    /// Systems", 14.4): p1: a, send m1 (b); p2: receive m1 (c), send m2 (d);
    /// p3: e, receive m2 (f). Reference: Lamport 1978, section 2 (happened-before).
    #[test]
    fn happened_before_on_a_hand_made_trace() {
        let (mut p1, mut p2, mut p3) = (VectorClock::new(1), VectorClock::new(2), VectorClock::new(3));
        let (mut l1, mut l2, mut l3) = (Lamport::new(), Lamport::new(), Lamport::new());
        let a = (p1.tick(), l1.tick());
        let b = (p1.send(), l1.tick());
        let c = (p2.receive(&b.0), l2.receive(b.1));
        let d = (p2.send(), l2.tick());
        let e = (p3.tick(), l3.tick());
        let f = (p3.receive(&d.0), l3.receive(d.1));
        let v = |pairs: &[(NodeId, u64)]| VectorStamp(pairs.iter().copied().collect());
        assert_eq!(a.0, v(&[(1, 1)]));
        assert_eq!(b.0, v(&[(1, 2)]));
        assert_eq!(c.0, v(&[(1, 2), (2, 1)]));
        assert_eq!(d.0, v(&[(1, 2), (2, 2)]));
        assert_eq!(e.0, v(&[(3, 1)]));
        assert_eq!(f.0, v(&[(1, 2), (2, 2), (3, 2)]));
        assert_eq!((a.1, b.1, c.1, d.1, e.1, f.1), (1, 2, 3, 4, 1, 5));
        // a -> b -> c -> d -> f; e -> f; e is concurrent with a, b, c, d.
        for (x, y) in [(&a, &b), (&b, &c), (&c, &d), (&d, &f), (&a, &f), (&e, &f)] {
            assert_eq!(x.0.compare(&y.0), Causality::Before);
            assert_eq!(y.0.compare(&x.0), Causality::After);
            assert!(x.1 < y.1, "clock condition: a -> b implies L(a) < L(b)");
        }
        for x in [&a, &b, &c, &d] {
            assert_eq!(x.0.compare(&e.0), Causality::Concurrent);
        }
        assert_eq!(a.0.compare(&a.0.clone()), Causality::Equal);
        // Lamport clocks order concurrent events too, so they cannot tell concurrency.
        assert!(e.1 < b.1);
    }

    proptest! {
        /// Random message exchanges among 4 processes: the vector order agrees with the
        /// causal history we track by hand, and Lamport time respects it.
        #[test]
        fn vector_order_is_causal_history(steps in prop::collection::vec((0u32..4, 0u32..4, any::<bool>()), 1..40)) {
            let mut vc: Vec<VectorClock> = (0..4).map(VectorClock::new).collect();
            let mut lc = [Lamport::new(); 4];
            // Every event: (process, stamp, lamport, set of events in its causal past).
            let mut events: Vec<(VectorStamp, u64, std::collections::BTreeSet<usize>)> = Vec::new();
            let mut last: Vec<Option<usize>> = vec![None; 4];
            for (from, to, message) in steps {
                let past = |p: usize, events: &Vec<(VectorStamp, u64, std::collections::BTreeSet<usize>)>, last: &Vec<Option<usize>>| {
                    let mut s = std::collections::BTreeSet::new();
                    if let Some(i) = last[p] { s.extend(events[i].2.iter().copied()); s.insert(i); }
                    s
                };
                let (f, t) = (from as usize, to as usize);
                if message && f != t {
                    let send = (vc[f].send(), lc[f].tick(), past(f, &events, &last));
                    events.push(send);
                    let si = events.len() - 1;
                    last[f] = Some(si);
                    let mut p = past(t, &events, &last);
                    p.extend(events[si].2.iter().copied());
                    p.insert(si);
                    let (s, l) = (events[si].0.clone(), events[si].1);
                    events.push((vc[t].receive(&s), lc[t].receive(l), p));
                    last[t] = Some(events.len() - 1);
                } else {
                    let p = past(f, &events, &last);
                    events.push((vc[f].tick(), lc[f].tick(), p));
                    last[f] = Some(events.len() - 1);
                }
            }
            for (j, (vj, lj, pj)) in events.iter().enumerate() {
                for (i, (vi, li, _)) in events.iter().enumerate() {
                    if i == j { continue; }
                    let before = pj.contains(&i);
                    prop_assert_eq!(vi.compare(vj) == Causality::Before, before, "event {} vs {}", i, j);
                    if before { prop_assert!(li < lj); }
                }
            }
        }
    }
}
