//! The echo algorithm (lecture 3.9.1) as a pure state machine: a wave from one initiator
//! explores every edge of a connected graph, builds a spanning tree on the way, and comes
//! back to the initiator with what every node said, combined up the tree.
//!
//! A node joins a wave on the first explorer it gets (the sender becomes its parent in
//! the wave's tree) and sends explorers to every other neighbour. Each edge then carries
//! exactly two messages: an explorer and an echo (a tree edge), or two explorers that
//! cross (no tree edge). When a node has heard from every neighbour, it answers its parent
//! with an echo carrying its subtree's combined report (leaves answer at once, inner
//! nodes combine). The initiator is done when it has heard from all its neighbours.
//!
//! Additions for a cluster that lives with failures (not in the notes):
//! - **Many initiators.** A wave is named by (number, initiator); a node that sees a
//!   higher wave abandons the one it is in and joins the higher (extinction), so exactly
//!   one of concurrent waves completes, and that one still sends two messages per edge.
//! - **Deaths.** A neighbour declared dead ([`Echo::peer_down`]) counts as heard from;
//!   the report names it. A node whose parent in the wave dies is cut off: it stops
//!   (the initiator finishes without its branch; the caller starts a new wave).
//! - **Late neighbours.** An explorer from a neighbour we have not sent to in this wave
//!   (it came up after we joined) is answered with an explorer, so its edge also gets
//!   two messages and nobody waits forever.
//! - **A decision down the tree.** What the initiator decides from the report
//!   ([`Echo::decide`]) travels down the wave's tree (one message per tree edge) and is
//!   handed to every node; a node applies a decision only if it is newer than the last.
//!
//! The local part of a report is asked for when it is due ([`Out::Ready`], answered with
//! [`Echo::finish`]), so it describes the node as it is when the node echoes.

use crate::clock::NodeId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A wave's name. Ordered: a higher wave extinguishes a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, bincode::Encode, bincode::Decode)]
pub struct WaveId {
    pub number: u64,
    pub initiator: NodeId,
}

/// What travels on an edge.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Msg<T, D> {
    Explore { wave: WaveId },
    Echo { wave: WaveId, report: Report<T> },
    Decide { wave: WaveId, decision: D },
}

/// A subtree's combined answer.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Report<T> {
    /// Every node of the subtree: its parent in the wave's tree (`None` at the initiator)
    /// and what it said.
    pub nodes: BTreeMap<NodeId, (Option<NodeId>, T)>,
    /// Neighbours declared dead while a node of the subtree waited for them.
    pub dead: BTreeSet<NodeId>,
    /// Wave messages (explorers and echoes) the subtree's nodes sent.
    pub messages: u64,
}

impl<T> Default for Report<T> {
    fn default() -> Self {
        Report { nodes: BTreeMap::new(), dead: BTreeSet::new(), messages: 0 }
    }
}

impl<T> Report<T> {
    fn merge(&mut self, other: Report<T>) {
        self.nodes.extend(other.nodes);
        self.dead.extend(other.dead);
        self.messages += other.messages;
    }

    /// The children of `n` in the wave's tree.
    pub fn children(&self, n: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.iter().filter(move |(_, (p, _))| *p == Some(n)).map(|(id, _)| *id)
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out<T, D> {
    Send {
        to: NodeId,
        msg: Msg<T, D>,
    },
    /// This node joined `wave` (or started it).
    Joined {
        wave: WaveId,
    },
    /// This node has heard from every neighbour: call [`Echo::finish`] with its part.
    Ready {
        wave: WaveId,
    },
    /// At the initiator: the wave is back, with every reachable node's answer.
    Complete {
        wave: WaveId,
        report: Report<T>,
    },
    /// A decision reached this node (the initiator's own included): apply it.
    Decided {
        wave: WaveId,
        decision: D,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for neighbours.
    Running,
    /// Asked for the local report.
    Ready,
    /// Echoed (or, at the initiator, complete).
    Done,
    /// The parent died before we could echo.
    CutOff,
}

#[derive(Debug, Clone)]
struct Wave<T> {
    id: WaveId,
    parent: Option<NodeId>,
    pending: BTreeSet<NodeId>,
    contacted: BTreeSet<NodeId>,
    children: BTreeSet<NodeId>,
    report: Report<T>,
    sent: u64,
    phase: Phase,
}

/// Waves whose children are remembered, to pass their decisions on.
const HISTORY: usize = 8;

/// One node's part in the echo algorithm.
#[derive(Debug, Clone)]
pub struct Echo<T, D> {
    me: NodeId,
    neighbours: BTreeSet<NodeId>,
    highest: u64,
    wave: Option<Wave<T>>,
    /// Children in the tree of recent waves (for decisions).
    history: VecDeque<(WaveId, BTreeSet<NodeId>)>,
    decided: Option<WaveId>,
    _d: std::marker::PhantomData<D>,
}

impl<T: Clone, D: Clone> Echo<T, D> {
    /// `neighbours`: the node's live neighbours in the graph.
    pub fn new(me: NodeId, neighbours: impl IntoIterator<Item = NodeId>) -> Echo<T, D> {
        Echo {
            me,
            neighbours: neighbours.into_iter().filter(|&n| n != me).collect(),
            highest: 0,
            wave: None,
            history: VecDeque::new(),
            decided: None,
            _d: std::marker::PhantomData,
        }
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The wave this node is in (or last was in).
    pub fn current(&self) -> Option<WaveId> {
        self.wave.as_ref().map(|w| w.id)
    }

    /// Whether the current wave has not yet ended here (not echoed, not complete).
    pub fn in_wave(&self) -> bool {
        self.wave.as_ref().is_some_and(|w| matches!(w.phase, Phase::Running | Phase::Ready))
    }

    /// The last decision applied here.
    pub fn decided(&self) -> Option<WaveId> {
        self.decided
    }

    /// The highest wave number seen (a new wave is numbered above it).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Raises the number new waves start above (a number learnt elsewhere).
    pub fn observe(&mut self, number: u64) {
        self.highest = self.highest.max(number);
    }

    /// Starts a new wave here, numbered above every wave seen.
    pub fn start(&mut self) -> Vec<Out<T, D>> {
        self.highest += 1;
        let id = WaveId { number: self.highest, initiator: self.me };
        self.join(id, None)
    }

    fn join(&mut self, id: WaveId, parent: Option<NodeId>) -> Vec<Out<T, D>> {
        if let Some(old) = self.wave.take() {
            self.remember(old.id, old.children);
        }
        self.highest = self.highest.max(id.number);
        let pending: BTreeSet<NodeId> = self.neighbours.iter().copied().filter(|&n| Some(n) != parent).collect();
        let mut out = vec![Out::Joined { wave: id }];
        for &n in &pending {
            out.push(Out::Send { to: n, msg: Msg::Explore { wave: id } });
        }
        self.wave = Some(Wave {
            id,
            parent,
            sent: pending.len() as u64,
            contacted: pending.clone(),
            pending,
            children: BTreeSet::new(),
            report: Report::default(),
            phase: Phase::Running,
        });
        self.check_ready(&mut out);
        out
    }

    fn remember(&mut self, id: WaveId, children: BTreeSet<NodeId>) {
        self.history.retain(|(w, _)| *w != id);
        self.history.push_back((id, children));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn check_ready(&mut self, out: &mut Vec<Out<T, D>>) {
        if let Some(w) = &mut self.wave {
            if w.phase == Phase::Running && w.pending.is_empty() {
                w.phase = Phase::Ready;
                out.push(Out::Ready { wave: w.id });
            }
        }
    }

    /// This node's part of the report for `wave` (after [`Out::Ready`]): echoes it to the
    /// parent with the subtree's, or completes the wave at the initiator.
    pub fn finish(&mut self, wave: WaveId, local: T) -> Vec<Out<T, D>> {
        let me = self.me;
        let Some(w) = self.wave.as_mut().filter(|w| w.id == wave && w.phase == Phase::Ready) else {
            return Vec::new();
        };
        w.phase = Phase::Done;
        w.report.nodes.insert(me, (w.parent, local));
        let mut report = std::mem::take(&mut w.report);
        match w.parent {
            Some(p) => {
                w.sent += 1;
                report.messages += w.sent;
                vec![Out::Send { to: p, msg: Msg::Echo { wave, report } }]
            }
            None => {
                report.messages += w.sent;
                vec![Out::Complete { wave, report }]
            }
        }
    }

    /// A wave message from neighbour `from`.
    pub fn receive(&mut self, from: NodeId, msg: Msg<T, D>) -> Vec<Out<T, D>> {
        let mut out = Vec::new();
        match msg {
            Msg::Explore { wave } => {
                let current = self.current();
                if current.is_none_or(|c| wave > c) {
                    return self.join(wave, Some(from));
                }
                if current != Some(wave) {
                    return out; // a lower wave dies here
                }
                let w = self.wave.as_mut().expect("current is some");
                if !w.contacted.contains(&from) && w.parent != Some(from) {
                    // It came up after we joined: answer, so its edge is done too.
                    w.contacted.insert(from);
                    w.sent += 1;
                    out.push(Out::Send { to: from, msg: Msg::Explore { wave } });
                }
                w.pending.remove(&from);
            }
            Msg::Echo { wave, report } => {
                let Some(w) = self.wave.as_mut().filter(|w| w.id == wave) else { return out };
                if w.pending.remove(&from) {
                    w.children.insert(from);
                    w.report.merge(report);
                }
            }
            Msg::Decide { wave, decision } => return self.decided_here(wave, decision),
        }
        self.check_ready(&mut out);
        out
    }

    /// At the initiator, after [`Out::Complete`]: sends `decision` down the wave's tree.
    pub fn decide(&mut self, wave: WaveId, decision: D) -> Vec<Out<T, D>> {
        self.decided_here(wave, decision)
    }

    fn decided_here(&mut self, wave: WaveId, decision: D) -> Vec<Out<T, D>> {
        if self.decided.is_some_and(|d| d >= wave) {
            return Vec::new();
        }
        self.decided = Some(wave);
        let children = match &self.wave {
            Some(w) if w.id == wave => w.children.clone(),
            _ => self.history.iter().find(|(id, _)| *id == wave).map(|(_, c)| c.clone()).unwrap_or_default(),
        };
        let mut out: Vec<Out<T, D>> = children
            .into_iter()
            .map(|c| Out::Send { to: c, msg: Msg::Decide { wave, decision: decision.clone() } })
            .collect();
        out.push(Out::Decided { wave, decision });
        out
    }

    /// Neighbour `n` was declared dead: it counts as heard from (named in the report);
    /// if it was our parent in the wave, we are cut off and stop.
    pub fn peer_down(&mut self, n: NodeId) -> Vec<Out<T, D>> {
        self.neighbours.remove(&n);
        let mut out = Vec::new();
        if let Some(w) = &mut self.wave {
            if matches!(w.phase, Phase::Running | Phase::Ready) {
                if w.parent == Some(n) {
                    w.phase = Phase::CutOff;
                    return out;
                }
                if w.pending.remove(&n) {
                    w.report.dead.insert(n);
                }
            }
        }
        self.check_ready(&mut out);
        out
    }

    /// Neighbour `n` is (back) up: later waves explore it.
    pub fn peer_up(&mut self, n: NodeId) {
        if n != self.me {
            self.neighbours.insert(n);
        }
    }

    pub fn neighbours(&self) -> &BTreeSet<NodeId> {
        &self.neighbours
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{random_connected_graph as graph, Rng};

    fn pick(rng: &mut Rng, n: usize) -> NodeId {
        rng.pick(n)
    }

    type E = Echo<u32, u64>;

    /// A simulated network for waves: FIFO links, the next message taken from a random
    /// link (every interleaving the links allow is possible), nodes killed at chosen
    /// steps (their neighbours told at once, their messages in flight lost).
    struct Net {
        nodes: Vec<E>,
        edges: BTreeSet<(NodeId, NodeId)>,
        links: BTreeMap<(NodeId, NodeId), VecDeque<Msg<u32, u64>>>,
        dead: BTreeSet<NodeId>,
        /// Wave messages sent per wave.
        sent: BTreeMap<WaveId, u64>,
        complete: Vec<(WaveId, Report<u32>)>,
        decided: BTreeMap<NodeId, Vec<WaveId>>,
        rng: Rng,
    }

    impl Net {
        fn new(n: usize, edges: BTreeSet<(NodeId, NodeId)>, seed: u64) -> Net {
            let nodes = (0..n as NodeId)
                .map(|i| {
                    let nb = edges.iter().filter_map(|&(a, b)| (a == i).then_some(b).or((b == i).then_some(a)));
                    Echo::new(i, nb)
                })
                .collect();
            Net {
                nodes,
                edges,
                links: BTreeMap::new(),
                dead: BTreeSet::new(),
                sent: BTreeMap::new(),
                complete: Vec::new(),
                decided: BTreeMap::new(),
                rng: Rng::new(seed),
            }
        }

        fn apply(&mut self, at: NodeId, outs: Vec<Out<u32, u64>>) {
            for o in outs {
                match o {
                    Out::Send { to, msg } => {
                        if let Msg::Explore { wave } | Msg::Echo { wave, .. } = &msg {
                            *self.sent.entry(*wave).or_default() += 1;
                        }
                        self.links.entry((at, to)).or_default().push_back(msg);
                    }
                    Out::Joined { .. } => {}
                    // Each node's part: its id times ten.
                    Out::Ready { wave } => {
                        let outs = self.nodes[at as usize].finish(wave, at * 10);
                        self.apply(at, outs);
                    }
                    Out::Complete { wave, report } => {
                        self.complete.push((wave, report));
                        let outs = self.nodes[at as usize].decide(wave, wave.number);
                        self.apply(at, outs);
                    }
                    Out::Decided { wave, decision } => {
                        assert_eq!(decision, wave.number);
                        self.decided.entry(at).or_default().push(wave);
                    }
                }
            }
        }

        fn start(&mut self, at: NodeId) {
            let outs = self.nodes[at as usize].start();
            self.apply(at, outs);
        }

        /// Delivers one message from a random non-empty link; false when all are empty.
        fn step(&mut self) -> bool {
            let busy: Vec<(NodeId, NodeId)> =
                self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
            if busy.is_empty() {
                return false;
            }
            let (from, to) = busy[pick(&mut self.rng, busy.len()) as usize];
            let msg = self.links.get_mut(&(from, to)).unwrap().pop_front().unwrap();
            if !self.dead.contains(&to) {
                let outs = self.nodes[to as usize].receive(from, msg);
                self.apply(to, outs);
            }
            true
        }

        fn kill(&mut self, n: NodeId) {
            self.dead.insert(n);
            self.links.retain(|&(a, b), _| a != n && b != n);
            let nb: Vec<NodeId> = self.nodes[n as usize].neighbours().iter().copied().collect();
            for m in nb {
                if !self.dead.contains(&m) {
                    let outs = self.nodes[m as usize].peer_down(n);
                    self.apply(m, outs);
                }
            }
        }

        fn run(&mut self) {
            let mut steps = 0;
            while self.step() {
                steps += 1;
                assert!(steps < 1_000_000, "the waves do not end");
            }
        }

        /// The nodes reachable from `from` over live nodes.
        fn component(&self, from: NodeId) -> BTreeSet<NodeId> {
            let mut seen = BTreeSet::from([from]);
            let mut todo = vec![from];
            while let Some(a) = todo.pop() {
                for &(x, y) in &self.edges {
                    for (p, q) in [(x, y), (y, x)] {
                        if p == a && !self.dead.contains(&q) && seen.insert(q) {
                            todo.push(q);
                        }
                    }
                }
            }
            seen
        }

        fn live_edges(&self, among: &BTreeSet<NodeId>) -> u64 {
            self.edges.iter().filter(|(a, b)| among.contains(a) && among.contains(b)).count() as u64
        }
    }

    /// The report's tree: every node but the root has a parent that is a graph
    /// neighbour and in the report, and following parents always reaches the root.
    fn assert_spanning_tree(r: &Report<u32>, root: NodeId, edges: &BTreeSet<(NodeId, NodeId)>) {
        for (&n, &(p, item)) in &r.nodes {
            assert_eq!(item, n * 10, "node {n}'s own part");
            match p {
                None => assert_eq!(n, root),
                Some(p) => {
                    assert!(edges.contains(&(n.min(p), n.max(p))), "tree edge {n}-{p} is a graph edge");
                    assert!(r.nodes.contains_key(&p));
                }
            }
            let (mut at, mut hops) = (n, 0);
            while let Some(p) = r.nodes[&at].0 {
                at = p;
                hops += 1;
                assert!(hops <= r.nodes.len(), "a cycle through {n}");
            }
            assert_eq!(at, root);
        }
    }

    /// One wave on random connected graphs up to 50 nodes, every schedule the seed
    /// picks: a spanning tree of the whole graph, exactly 2E messages (counted on the
    /// network and by the wave itself), everyone's part in the answer, the decision at
    /// every node.
    #[test]
    fn one_wave_builds_a_spanning_tree_with_two_messages_per_edge() {
        let mut rng = Rng::new(11);
        for round in 0..300u64 {
            let n = rng.range(1, 50) as usize;
            let edges = graph(&mut rng, n);
            let mut net = Net::new(n, edges.clone(), round);
            let root = pick(&mut rng, n);
            net.start(root);
            net.run();
            assert_eq!(net.complete.len(), 1);
            let (wave, r) = &net.complete[0];
            assert_eq!(r.nodes.len(), n, "round {round}: every node answered");
            assert_spanning_tree(r, root, &edges);
            assert_eq!(r.messages, 2 * edges.len() as u64, "the wave counts 2E");
            assert_eq!(net.sent.get(wave).copied().unwrap_or(0), 2 * edges.len() as u64, "the network carried 2E");
            assert!(r.dead.is_empty());
            for i in 0..n as NodeId {
                assert_eq!(net.decided.get(&i), Some(&vec![*wave]), "node {i} got the decision once");
            }
        }
    }

    /// Many initiators at once (and some that start while others' waves run): exactly
    /// one wave completes, the highest; it spans the graph with 2E messages.
    #[test]
    fn of_concurrent_waves_the_highest_completes_alone() {
        let mut rng = Rng::new(12);
        let mut extinguished = 0;
        for round in 0..300u64 {
            let n = rng.range(2, 50) as usize;
            let edges = graph(&mut rng, n);
            let mut net = Net::new(n, edges.clone(), round);
            let initiators: BTreeSet<NodeId> = (0..rng.range(2, 6)).map(|_| pick(&mut rng, n)).collect();
            for (k, &i) in initiators.iter().enumerate() {
                // Some start at once, some a few deliveries later.
                for _ in 0..k * rng.range(0, 4) as usize {
                    net.step();
                }
                if !net.nodes[i as usize].in_wave() {
                    net.start(i);
                }
            }
            net.run();
            let top = net.sent.keys().max().copied().unwrap();
            // A lower wave completes only if it ended before a higher one reached any
            // node; whatever completes spans the whole graph with two messages per edge.
            let (wave, _) = net.complete.last().expect("a wave completes");
            assert_eq!(*wave, top, "round {round}: the highest wave completes");
            for (wave, r) in &net.complete {
                assert_eq!(r.nodes.len(), n);
                assert_spanning_tree(r, wave.initiator, &edges);
                assert_eq!(net.sent[wave], 2 * edges.len() as u64);
                assert_eq!(r.messages, 2 * edges.len() as u64);
            }
            let overlapped = net.sent.len() - net.complete.len();
            extinguished += overlapped;
            for i in 0..n as NodeId {
                assert_eq!(net.decided[&i].last(), Some(&top), "node {i} has the winner's decision");
            }
        }
        assert!(extinguished > 100, "waves overlapped and lower ones died ({extinguished})");
    }

    /// A node killed in mid-wave: the wave still ends at its initiator (when that
    /// lives), the dead node is named, every node answering is alive and in the
    /// initiator's part of the graph. A new wave from a survivor then spans exactly the
    /// survivors it can reach, with two messages per live edge. Nothing hangs.
    #[test]
    fn waves_with_a_node_killed_mid_wave_end_and_a_new_wave_spans_the_survivors() {
        let mut rng = Rng::new(13);
        let mut cut_off = 0;
        for round in 0..400u64 {
            let n = rng.range(3, 50) as usize;
            let edges = graph(&mut rng, n);
            let mut net = Net::new(n, edges.clone(), round);
            let root = pick(&mut rng, n);
            net.start(root);
            for _ in 0..rng.range(0, 4 * edges.len() as u64) {
                net.step();
            }
            let victim = loop {
                let v = pick(&mut rng, n);
                if v != root || round % 10 == 0 {
                    break v;
                }
            };
            net.kill(victim);
            net.run();
            if victim != root {
                let done: Vec<_> = net.complete.iter().filter(|(w, _)| w.initiator == root).collect();
                assert_eq!(done.len(), 1, "round {round}: the wave ended at its initiator");
                let r = &done[0].1;
                let reach = net.component(root);
                assert_spanning_tree(r, root, &edges);
                if !r.nodes.contains_key(&victim) && r.nodes.len() < reach.len() {
                    assert!(!r.dead.is_empty(), "round {round}: a missing branch is reported dead");
                    cut_off += 1;
                }
            }
            // A survivor starts over (as a node does when a neighbour dies).
            let survivor = (0..n as NodeId).find(|&i| i != victim).unwrap();
            net.complete.clear();
            let before = net.sent.clone();
            net.start(survivor);
            net.run();
            let (wave, r) = net.complete.last().expect("the new wave completes").clone();
            let reach = net.component(survivor);
            assert_eq!(r.nodes.keys().copied().collect::<BTreeSet<_>>(), reach, "round {round}");
            assert_spanning_tree(&r, survivor, &edges);
            let carried = net.sent.get(&wave).unwrap_or(&0) - before.get(&wave).unwrap_or(&0);
            assert_eq!(carried, 2 * net.live_edges(&reach));
        }
        assert!(cut_off > 10, "kills in mid-wave cut branches off ({cut_off})");
    }

    /// A neighbour that comes up after we joined a wave and explores us gets an
    /// explorer back, so it does not wait for us forever.
    #[test]
    fn a_late_neighbour_is_answered() {
        let mut a: E = Echo::new(0, [1]);
        let out = a.start();
        let wave = a.current().unwrap();
        assert!(out.contains(&Out::Send { to: 1, msg: Msg::Explore { wave } }));
        a.peer_up(2);
        let out = a.receive(2, Msg::Explore { wave });
        assert_eq!(out, vec![Out::Send { to: 2, msg: Msg::Explore { wave } }]);
        let echo = Report { nodes: BTreeMap::from([(1, (Some(0), 10))]), dead: BTreeSet::new(), messages: 1 };
        assert_eq!(a.receive(1, Msg::Echo { wave, report: echo }), vec![Out::Ready { wave }]);
        match a.finish(wave, 0).as_slice() {
            [Out::Complete { report, .. }] => assert_eq!(report.messages, 3, "two explorers and an echo"),
            other => panic!("{other:?}"),
        }
        // A lower wave dies here; a decision is applied once.
        assert!(a.receive(1, Msg::Explore { wave: WaveId { number: 0, initiator: 9 } }).is_empty());
        assert_eq!(a.decide(wave, 7).last(), Some(&Out::Decided { wave, decision: 7 }));
        assert!(a.receive(1, Msg::Decide { wave, decision: 7 }).is_empty());
    }
}
