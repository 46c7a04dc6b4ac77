//! The simulated network every algorithm's tests share: virtual time, seeded randomness,
//! per-link delay, loss, duplication and reordering, and `kill`, `cut` and `recover` of
//! nodes and links. Nothing sleeps; [`Sim::step`] delivers the next event.
//!
//! Invariants are checked after every event, failure paths included: at most one live
//! node in the critical section, and every grant's fencing number above the previous
//! one. A violation panics with the schedule's seed and the last events, so a failing
//! schedule can be replayed.

use crate::audit::{Event, Kind};
use crate::clock::{NodeId, VectorClock, VectorStamp};
use crate::protocol::{Millis, Out, Protocol};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// A small, fast, seeded generator (SplitMix64): the simulator's only randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn pick(&mut self, n: usize) -> crate::clock::NodeId {
        self.range(0, n as u64 - 1) as crate::clock::NodeId
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        p > 0.0 && unit < p
    }
}

/// A random connected graph on nodes `0..n`, as edges `(a, b)` with `a < b`: a random
/// tree, then up to `2n` random chords.
pub fn random_connected_graph(rng: &mut Rng, n: usize) -> std::collections::BTreeSet<(NodeId, NodeId)> {
    let chords = rng.range(0, 2 * n as u64);
    let mut e = std::collections::BTreeSet::new();
    for i in 1..n as NodeId {
        let p = rng.pick(i as usize);
        e.insert((p, i));
    }
    for _ in 0..chords {
        let (a, b) = (rng.pick(n), rng.pick(n));
        if a != b {
            e.insert((a.min(b), a.max(b)));
        }
    }
    e
}

/// How a link treats messages.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// One-way delay, uniform in this range (milliseconds).
    pub delay: (Millis, Millis),
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub dup: f64,
    /// Messages on this link arrive in the order sent (TCP-like). Without it, different
    /// delays reorder them.
    pub fifo: bool,
}

impl Default for Link {
    fn default() -> Link {
        Link { delay: (1, 10), loss: 0.0, dup: 0.0, fifo: true }
    }
}

struct Flight<M> {
    from: NodeId,
    to: NodeId,
    msg: M,
    /// The sender's vector time, as a real node stamps its messages.
    stamp: VectorStamp,
}

/// One simulated cluster running protocol `P` on every node.
pub struct Sim<P: Protocol> {
    pub nodes: Vec<P>,
    pub now: Millis,
    rng: Rng,
    seed: u64,
    link: Link,
    links: HashMap<(NodeId, NodeId), Link>,
    /// Messages in flight, by (delivery time, sequence).
    flights: BTreeMap<(Millis, u64), Flight<P::Msg>>,
    seq: u64,
    /// Last delivery time scheduled per FIFO link.
    fifo_at: HashMap<(NodeId, NodeId), Millis>,
    dead: Vec<bool>,
    cut: HashSet<(NodeId, NodeId)>,
    /// Ticks go to every live node every `tick_every` ms of virtual time.
    pub tick_every: Millis,
    next_tick: Millis,
    /// Messages sent (not counting duplicates made by the network).
    pub messages: u64,
    /// Every grant: (node, fencing number, time).
    pub grants: Vec<(NodeId, u64, Millis)>,
    /// Requests made and granted per node.
    pub requested: Vec<u32>,
    pub granted: Vec<u32>,
    /// The last events, for the report when an invariant breaks.
    trace: VecDeque<String>,
    /// Each node's vector clock, and the grants and releases stamped with it, as the
    /// nodes log them for `cluster lease audit` (see [`crate::audit`]).
    vectors: Vec<VectorClock>,
    pub log: Vec<Event>,
    /// Check the invariants after every event (off only to let a mutant run on, for the
    /// audit to catch).
    pub check_safety: bool,
    /// Messages sent plus received, per node (the notes' load, for symmetry).
    pub load: Vec<u64>,
    /// Synchronisation delays: messages sent between one exit and the next entry.
    pub sync_delays: Vec<u64>,
    last_exit: Option<u64>,
    /// A crash scheduled for [`Sim::run_workload`]: (virtual time, node).
    pub kill_at: Option<(Millis, NodeId)>,
}

impl<P: Protocol> Sim<P> {
    /// `nodes[i]` must be node `i`.
    pub fn new(nodes: Vec<P>, seed: u64, link: Link) -> Sim<P> {
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n.me() as usize, i, "node i must have id i");
        }
        let n = nodes.len();
        Sim {
            nodes,
            now: 0,
            rng: Rng::new(seed),
            seed,
            link,
            links: HashMap::new(),
            flights: BTreeMap::new(),
            seq: 0,
            fifo_at: HashMap::new(),
            dead: vec![false; n],
            cut: HashSet::new(),
            tick_every: 5,
            next_tick: 5,
            messages: 0,
            grants: Vec::new(),
            requested: vec![0; n],
            granted: vec![0; n],
            trace: VecDeque::new(),
            vectors: (0..n as NodeId).map(VectorClock::new).collect(),
            log: Vec::new(),
            check_safety: true,
            load: vec![0; n],
            sync_delays: Vec::new(),
            last_exit: None,
            kill_at: None,
        }
    }

    /// Sets how the link from `a` to `b` behaves.
    pub fn set_link(&mut self, a: NodeId, b: NodeId, link: Link) {
        self.links.insert((a, b), link);
    }

    pub fn alive(&self, n: NodeId) -> bool {
        !self.dead[n as usize]
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == 40 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {what}", self.now));
    }

    fn fail(&self, what: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!("{what} (seed {}, t={})\nlast events:\n{}", self.seed, self.now, trace.join("\n"));
    }

    /// Carries out a node's outputs, then checks the invariants.
    fn apply(&mut self, from: NodeId, outs: Vec<Out<P::Msg>>) {
        for o in outs {
            match o {
                Out::Send { to, msg } => {
                    self.messages += 1;
                    self.note(format!("{from} -> {to}: {msg:?}"));
                    let stamp = self.vectors[from as usize].send();
                    self.load[from as usize] += 1;
                    self.send(from, to, msg, stamp);
                }
                Out::Granted { fence } => {
                    self.note(format!("{from} granted, fence {fence:#x}"));
                    self.log_event(from, Kind::Grant);
                    if let Some(exit) = self.last_exit.take() {
                        self.sync_delays.push(self.messages - exit);
                    }
                    if let Some(&(_, last, _)) = self.grants.last() {
                        if fence <= last && self.check_safety {
                            self.fail(&format!("fence {fence:#x} granted to {from} after {last:#x}"));
                        }
                    }
                    self.grants.push((from, fence, self.now));
                    self.granted[from as usize] += 1;
                }
            }
        }
        let inside: Vec<NodeId> = (0..self.nodes.len() as NodeId)
            .filter(|&i| self.alive(i) && self.nodes[i as usize].in_critical_section())
            .collect();
        if inside.len() > 1 && self.check_safety {
            self.fail(&format!("two nodes in the critical section: {inside:?}"));
        }
    }

    fn log_event(&mut self, node: NodeId, kind: Kind) {
        let vector = self.vectors[node as usize].tick().0.into_iter().collect();
        let seq = self.log.iter().filter(|e| e.node == node).count() as u64;
        self.log.push(Event { node, seq, key: b"sim".to_vec(), kind, vector });
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: P::Msg, stamp: VectorStamp) {
        let link = self.links.get(&(from, to)).copied().unwrap_or(self.link);
        if self.cut.contains(&(from, to)) || self.rng.chance(link.loss) {
            return;
        }
        let copies = if self.rng.chance(link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = self.now + self.rng.range(link.delay.0, link.delay.1);
            if link.fifo {
                let last = self.fifo_at.entry((from, to)).or_insert(0);
                at = at.max(*last);
                *last = at;
            }
            self.seq += 1;
            self.flights.insert((at, self.seq), Flight { from, to, msg: msg.clone(), stamp: stamp.clone() });
        }
    }

    /// Node `n`'s user asks for the critical section.
    pub fn request(&mut self, n: NodeId) {
        if !self.alive(n) {
            return;
        }
        self.requested[n as usize] += 1;
        self.note(format!("{n} requests"));
        let outs = self.nodes[n as usize].request(self.now);
        self.apply(n, outs);
    }

    /// Node `n`'s user leaves the critical section.
    pub fn release(&mut self, n: NodeId) {
        if !self.alive(n) {
            return;
        }
        self.note(format!("{n} releases"));
        if self.nodes[n as usize].in_critical_section() {
            self.log_event(n, Kind::Release);
            self.last_exit = Some(self.messages);
        }
        let outs = self.nodes[n as usize].release(self.now);
        self.apply(n, outs);
    }

    /// Delivers the next message or tick, advancing virtual time. False if nothing is in
    /// flight (ticks alone do not count as something to do).
    pub fn step(&mut self) -> bool {
        let next_msg = self.flights.keys().next().map(|k| k.0);
        if next_msg.is_none_or(|t| t >= self.next_tick) {
            self.now = self.now.max(self.next_tick);
            self.next_tick = self.now + self.tick_every;
            for i in 0..self.nodes.len() as NodeId {
                if self.alive(i) {
                    let outs = self.nodes[i as usize].tick(self.now);
                    self.apply(i, outs);
                }
            }
            return next_msg.is_some();
        }
        let (key, f) = self.flights.pop_first().expect("there is one");
        self.now = key.0;
        if !self.alive(f.to) || self.cut.contains(&(f.from, f.to)) {
            return true; // lost: a dead node receives nothing, a cut link carries nothing
        }
        self.note(format!("{} <- {}: {:?}", f.to, f.from, f.msg));
        self.vectors[f.to as usize].receive(&f.stamp);
        self.load[f.to as usize] += 1;
        let outs = self.nodes[f.to as usize].receive(self.now, f.from, f.msg);
        self.apply(f.to, outs);
        true
    }

    /// Node `n` crashes: it receives nothing more, and each live node is told (as
    /// heartbeats would tell it).
    pub fn kill(&mut self, n: NodeId) {
        self.dead[n as usize] = true;
        self.note(format!("{n} dies"));
        for i in 0..self.nodes.len() as NodeId {
            if self.alive(i) {
                let outs = self.nodes[i as usize].peer_down(self.now, n);
                self.apply(i, outs);
            }
        }
    }

    /// The link between `a` and `b` carries nothing, either way, until recovered.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    pub fn recover(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// The algorithms' common check: 3 requests per node, 4 ms inside, starts spread
    /// over `spread` ms; every request granted by `limit`, and the audit of the run clean.
    /// `what` names the schedule in a failure.
    #[cfg(test)]
    pub fn run_checked(&mut self, spread: Millis, limit: Millis, what: &str) {
        self.run_workload(3, 4, spread, limit);
        assert_eq!(self.granted, self.requested, "{what}");
        crate::audit::audit(&self.log).unwrap_or_else(|v| panic!("{what}: {v}"));
    }

    /// Delivers everything in flight (and what that sends), up to `limit` steps.
    pub fn settle(&mut self, limit: u32) {
        for _ in 0..limit {
            if self.flights.is_empty() {
                return;
            }
            self.step();
        }
        self.fail("the network never settled");
    }

    /// Runs a workload: each node requests `rounds` times, holding the critical section
    /// for `hold` ms each time, starting at random times within the first `spread` ms.
    /// Returns when every live node's requests were granted, or panics (liveness) when
    /// virtual time passes `limit`.
    pub fn run_workload(&mut self, rounds: u32, hold: Millis, spread: Millis, limit: Millis) {
        let n = self.nodes.len();
        let mut start: Vec<Millis> = (0..n).map(|_| self.rng.range(0, spread)).collect();
        let mut left = vec![rounds; n];
        let mut waiting = vec![false; n];
        let mut leave_at: Vec<Option<Millis>> = vec![None; n];
        loop {
            if let Some((at, victim)) = self.kill_at {
                if self.now >= at {
                    self.kill_at = None;
                    self.kill(victim);
                }
            }
            for i in 0..n {
                let id = i as NodeId;
                if !self.alive(id) {
                    continue;
                }
                if let Some(t) = leave_at[i] {
                    if self.now >= t {
                        leave_at[i] = None;
                        self.release(id);
                    }
                } else if waiting[i] {
                    if self.nodes[i].in_critical_section() {
                        waiting[i] = false;
                        leave_at[i] = Some(self.now + hold);
                    }
                } else if left[i] > 0 && self.now >= start[i] {
                    left[i] -= 1;
                    waiting[i] = true;
                    self.request(id);
                    start[i] = self.now + self.rng.range(0, spread);
                }
            }
            let done =
                (0..n).all(|i| !self.alive(i as NodeId) || (left[i] == 0 && !waiting[i] && leave_at[i].is_none()));
            if done {
                return;
            }
            if self.now > limit {
                self.fail(&format!("not every request granted by t={limit}: waiting {waiting:?}"));
            }
            self.step();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol that grants every request at once: the simulator must catch it.
    struct Greedy(NodeId, bool, u64);

    impl Protocol for Greedy {
        type Msg = ();
        fn me(&self) -> NodeId {
            self.0
        }
        fn request(&mut self, _: Millis) -> Vec<Out<()>> {
            self.1 = true;
            self.2 += 1;
            vec![Out::Granted { fence: self.2 + 100 * self.0 as u64 }]
        }
        fn release(&mut self, _: Millis) -> Vec<Out<()>> {
            self.1 = false;
            Vec::new()
        }
        fn receive(&mut self, _: Millis, _: NodeId, _: ()) -> Vec<Out<()>> {
            Vec::new()
        }
        fn in_critical_section(&self) -> bool {
            self.1
        }
    }

    #[test]
    #[should_panic(expected = "two nodes in the critical section")]
    fn a_protocol_that_grants_twice_is_caught() {
        let mut sim = Sim::new(vec![Greedy(0, false, 0), Greedy(1, false, 0)], 1, Link::default());
        sim.request(0);
        sim.request(1);
    }

    /// The same mutant, run on without the simulator's own check: the audit of the
    /// nodes' logs (vector time alone) finds the two concurrent critical sections.
    #[test]
    fn the_audit_catches_a_protocol_that_grants_twice() {
        let mut sim = Sim::new(vec![Greedy(0, false, 0), Greedy(1, false, 0)], 1, Link::default());
        sim.check_safety = false;
        sim.run_workload(3, 4, 30, 100_000);
        let v = crate::audit::audit(&sim.log).unwrap_err();
        assert_ne!(v.a.0, v.b.0, "{v}");
    }

    /// Counts what it receives.
    struct Counter(NodeId, u32);

    impl Protocol for Counter {
        type Msg = u32;
        fn me(&self) -> NodeId {
            self.0
        }
        fn request(&mut self, _: Millis) -> Vec<Out<u32>> {
            vec![Out::Send { to: 1 - self.0, msg: 7 }]
        }
        fn release(&mut self, _: Millis) -> Vec<Out<u32>> {
            Vec::new()
        }
        fn receive(&mut self, _: Millis, _: NodeId, _: u32) -> Vec<Out<u32>> {
            self.1 += 1;
            Vec::new()
        }
        fn in_critical_section(&self) -> bool {
            false
        }
    }

    fn pair(link: Link) -> Sim<Counter> {
        Sim::new(vec![Counter(0, 0), Counter(1, 0)], 3, link)
    }

    /// Cut links carry nothing until recovered; lost messages are lost; duplicated ones
    /// arrive twice; dead nodes receive nothing; virtual time moves only with events.
    #[test]
    fn faults_do_what_they_say() {
        let mut sim = pair(Link::default());
        sim.cut(0, 1);
        sim.request(0);
        sim.settle(100);
        assert_eq!(sim.nodes[1].1, 0, "cut");
        sim.recover(0, 1);
        sim.request(0);
        sim.settle(100);
        assert_eq!(sim.nodes[1].1, 1, "recovered");
        assert!(sim.now <= 10, "one delay of at most 10 ms passed: {}", sim.now);
        let mut lossy = pair(Link { loss: 1.0, ..Link::default() });
        lossy.request(0);
        lossy.settle(100);
        assert_eq!(lossy.nodes[1].1, 0, "lost");
        let mut dup = pair(Link { dup: 1.0, ..Link::default() });
        dup.request(0);
        dup.settle(100);
        assert_eq!(dup.nodes[1].1, 2, "duplicated");
        let mut dead = pair(Link::default());
        dead.request(0);
        dead.kill(1);
        dead.settle(100);
        assert_eq!(dead.nodes[1].1, 0, "dead");
    }

    /// Without FIFO, different delays reorder a link's messages; with it, never.
    #[test]
    fn fifo_links_keep_order() {
        struct Seq(NodeId, Vec<u32>, u32);
        impl Protocol for Seq {
            type Msg = u32;
            fn me(&self) -> NodeId {
                self.0
            }
            fn request(&mut self, _: Millis) -> Vec<Out<u32>> {
                self.2 += 1;
                vec![Out::Send { to: 1, msg: self.2 }]
            }
            fn release(&mut self, _: Millis) -> Vec<Out<u32>> {
                Vec::new()
            }
            fn receive(&mut self, _: Millis, _: NodeId, m: u32) -> Vec<Out<u32>> {
                self.1.push(m);
                Vec::new()
            }
            fn in_critical_section(&self) -> bool {
                false
            }
        }
        for fifo in [true, false] {
            let mut sim = Sim::new(
                vec![Seq(0, vec![], 0), Seq(1, vec![], 0)],
                9,
                Link { delay: (1, 50), fifo, ..Link::default() },
            );
            for _ in 0..50 {
                sim.request(0);
            }
            sim.settle(1000);
            let got = sim.nodes[1].1.clone();
            let sorted = got.windows(2).all(|w| w[0] < w[1]);
            assert_eq!(got.len(), 50);
            assert_eq!(sorted, fifo, "fifo {fifo}: {got:?}");
        }
    }

    #[test]
    fn rng_is_seeded_and_uniform_enough() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut hits = 0;
        for _ in 0..10_000 {
            hits += a.chance(0.25) as u32;
            let x = a.range(3, 5);
            assert!((3..=5).contains(&x));
        }
        assert!((2_200..2_800).contains(&hits), "{hits}");
    }
}

/// Exhaustive exploration of small cases: every order in which the network may deliver
/// what is in flight (FIFO per link), and every moment a node inside may leave.
#[cfg(test)]
pub mod explore {
    use crate::clock::NodeId;
    use crate::protocol::{Out, Protocol};
    use std::collections::{BTreeMap, HashSet, VecDeque};

    #[derive(Clone)]
    struct State<P: Protocol> {
        nodes: Vec<P>,
        links: BTreeMap<(NodeId, NodeId), VecDeque<P::Msg>>,
        granted: Vec<u32>,
        steps: u32,
    }

    fn apply<P: Protocol>(s: &mut State<P>, from: NodeId, outs: Vec<Out<P::Msg>>) {
        for o in outs {
            match o {
                Out::Send { to, msg } => s.links.entry((from, to)).or_default().push_back(msg),
                Out::Granted { .. } => s.granted[from as usize] += 1,
            }
        }
        let inside = s.nodes.iter().filter(|n| n.in_critical_section()).count();
        assert!(inside <= 1, "two nodes in the critical section");
    }

    /// Every node requests once at the start; explores every schedule up to `depth`
    /// steps. Returns the number of distinct states seen; panics on a safety violation,
    /// or if a schedule ends (nothing in flight, nobody inside) with a request ungranted.
    pub fn all_schedules<P>(nodes: Vec<P>, depth: u32) -> usize
    where
        P: Protocol + Clone + std::fmt::Debug,
    {
        let n = nodes.len();
        let mut s = State { nodes, links: BTreeMap::new(), granted: vec![0; n], steps: 0 };
        for i in 0..n {
            let outs = s.nodes[i].request(0);
            apply(&mut s, i as NodeId, outs);
        }
        let mut seen = HashSet::new();
        let mut stack = vec![s];
        while let Some(s) = stack.pop() {
            let key = format!("{:?}{:?}{:?}", s.nodes, s.links, s.granted);
            if !seen.insert(key) || s.steps >= depth {
                continue;
            }
            let mut moved = false;
            for (&(from, to), q) in &s.links {
                if q.is_empty() {
                    continue;
                }
                let mut next = s.clone();
                next.steps += 1;
                let msg = next.links.get_mut(&(from, to)).expect("there").pop_front().expect("not empty");
                let outs = next.nodes[to as usize].receive(0, from, msg);
                apply(&mut next, to, outs);
                stack.push(next);
                moved = true;
            }
            for i in 0..n {
                let mut next = s.clone();
                let outs =
                    if s.nodes[i].in_critical_section() { next.nodes[i].release(0) } else { next.nodes[i].tick(0) };
                if outs.is_empty() && !s.nodes[i].in_critical_section() {
                    continue; // a tick that does nothing is no move
                }
                next.steps += 1;
                apply(&mut next, i as NodeId, outs);
                stack.push(next);
                moved = true;
            }
            if !moved {
                assert!(
                    s.granted.iter().all(|&g| g == 1),
                    "a schedule ended with a request not granted: {:?}",
                    s.granted
                );
            }
        }
        seen.len()
    }
}
