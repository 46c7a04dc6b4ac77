//! The central algorithm (lecture 2.4.1): one coordinator (the lowest id) grants the
//! critical section in request order. Three messages per entry (request, grant,
//! release) for every node but the coordinator, which asks itself.
//!
//! Requests carry a per-node sequence number, so a duplicated message changes nothing.
//! A dead node's request is dropped and a lock it held passes on (fencing protects the
//! data); a dead coordinator stalls everyone (the single point of failure the notes name).

use crate::clock::NodeId;
use crate::mutex::raymond::Fence;
use crate::protocol::{Millis, Out, Protocol};
use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Msg {
    Request { seq: u64 },
    Grant { seq: u64, fence: Fence },
    Release { seq: u64 },
}

#[derive(Debug, Clone)]
pub struct Central {
    me: NodeId,
    coordinator: NodeId,
    // The coordinator's state.
    queue: VecDeque<(NodeId, u64)>,
    holder: Option<(NodeId, u64)>,
    fence: Fence,
    /// Highest request sequence seen per node (duplicates are ignored).
    seen: HashMap<NodeId, u64>,
    /// Nodes declared down: what they sent before dying and arrives later is ignored
    /// (granting a dead node's late request would stall everyone behind it).
    down: std::collections::HashSet<NodeId>,
    // Every node's own state.
    seq: u64,
    waiting: bool,
    inside: bool,
}

impl Central {
    /// `members`: every node's id, this one's included.
    pub fn new(me: NodeId, members: &[NodeId]) -> Central {
        let coordinator = members.iter().copied().min().unwrap_or(me);
        Central {
            me,
            coordinator,
            queue: VecDeque::new(),
            holder: None,
            fence: 0,
            seen: HashMap::new(),
            down: Default::default(),
            seq: 0,
            waiting: false,
            inside: false,
        }
    }

    pub fn coordinator(&self) -> NodeId {
        self.coordinator
    }

    /// The coordinator: a request from `n` arrives.
    fn queue_request(&mut self, n: NodeId, seq: u64) -> Vec<Out<Msg>> {
        if self.seen.get(&n).is_some_and(|&s| s >= seq) {
            return Vec::new();
        }
        self.seen.insert(n, seq);
        self.queue.push_back((n, seq));
        self.grant_next()
    }

    /// The coordinator: `n` left (or died holding) the critical section.
    fn released(&mut self, n: NodeId, seq: u64) -> Vec<Out<Msg>> {
        if self.holder != Some((n, seq)) {
            return Vec::new();
        }
        self.holder = None;
        self.grant_next()
    }

    fn grant_next(&mut self) -> Vec<Out<Msg>> {
        if self.holder.is_some() {
            return Vec::new();
        }
        let Some((n, seq)) = self.queue.pop_front() else { return Vec::new() };
        self.holder = Some((n, seq));
        self.fence += 1;
        if n == self.me {
            self.enter(seq, self.fence)
        } else {
            vec![Out::Send { to: n, msg: Msg::Grant { seq, fence: self.fence } }]
        }
    }

    fn enter(&mut self, seq: u64, fence: Fence) -> Vec<Out<Msg>> {
        if !self.waiting || seq != self.seq {
            return Vec::new();
        }
        self.waiting = false;
        self.inside = true;
        vec![Out::Granted { fence }]
    }
}

impl Protocol for Central {
    type Msg = Msg;

    fn me(&self) -> NodeId {
        self.me
    }

    fn request(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        self.seq += 1;
        self.waiting = true;
        if self.me == self.coordinator {
            self.queue_request(self.me, self.seq)
        } else {
            vec![Out::Send { to: self.coordinator, msg: Msg::Request { seq: self.seq } }]
        }
    }

    fn release(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        self.inside = false;
        if self.me == self.coordinator {
            self.released(self.me, self.seq)
        } else {
            vec![Out::Send { to: self.coordinator, msg: Msg::Release { seq: self.seq } }]
        }
    }

    fn receive(&mut self, _now: Millis, from: NodeId, msg: Msg) -> Vec<Out<Msg>> {
        if self.down.contains(&from) {
            return Vec::new();
        }
        match msg {
            Msg::Request { seq } if self.me == self.coordinator => self.queue_request(from, seq),
            Msg::Release { seq } if self.me == self.coordinator => self.released(from, seq),
            Msg::Grant { seq, fence } if from == self.coordinator => self.enter(seq, fence),
            _ => Vec::new(),
        }
    }

    fn peer_down(&mut self, _now: Millis, peer: NodeId) -> Vec<Out<Msg>> {
        self.down.insert(peer);
        if self.me != self.coordinator {
            return Vec::new();
        }
        self.queue.retain(|&(n, _)| n != peer);
        match self.holder {
            Some((n, seq)) if n == peer => self.released(n, seq),
            _ => Vec::new(),
        }
    }

    fn peer_up(&mut self, _now: Millis, peer: NodeId) -> Vec<Out<Msg>> {
        self.down.remove(&peer);
        self.seen.remove(&peer); // it restarted: its sequence numbers start again
        Vec::new()
    }

    fn in_critical_section(&self) -> bool {
        self.inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Link, Sim};

    fn cluster(n: u32, seed: u64, link: Link) -> Sim<Central> {
        let ids: Vec<NodeId> = (0..n).collect();
        Sim::new(ids.iter().map(|&i| Central::new(i, &ids)).collect(), seed, link)
    }

    /// Safety and liveness on many seeded schedules, with random delays (reordering
    /// across links) and duplicated messages; every entry but the coordinator's costs
    /// exactly three messages.
    #[test]
    fn safe_live_and_three_messages_per_entry() {
        for seed in 0..2000 {
            let n = 2 + (seed % 6) as u32;
            let mut sim = cluster(n, seed, Link { delay: (1, 20), ..Link::default() });
            sim.run_checked(60, 1_000_000, &format!("seed {seed}"));
            sim.settle(100_000);
            let remote: u64 = sim.granted[1..].iter().map(|&g| g as u64).sum();
            assert_eq!(sim.messages, 3 * remote, "seed {seed}: the coordinator's own entries cost nothing");
            let mut dup = cluster(n, seed, Link { delay: (1, 20), dup: 0.3, fifo: false, ..Link::default() });
            dup.run_checked(60, 1_000_000, &format!("seed {seed}, duplicates"));
        }
    }

    /// A node that dies holding the lock lets the others proceed (its lease passes on).
    #[test]
    fn a_dead_holder_lets_the_others_proceed() {
        let mut sim = cluster(3, 1, Link::default());
        sim.request(2);
        while !sim.nodes[2].in_critical_section() {
            sim.step();
        }
        sim.request(1);
        for _ in 0..50 {
            sim.step();
        }
        assert!(!sim.nodes[1].in_critical_section(), "held elsewhere");
        sim.kill(2);
        while !sim.nodes[1].in_critical_section() {
            assert!(sim.step());
        }
    }

    #[test]
    fn every_schedule_of_three_nodes() {
        let ids = [0, 1, 2];
        let states = crate::sim::explore::all_schedules(ids.iter().map(|&i| Central::new(i, &ids)).collect(), 60);
        assert!(states > 10, "{states}");
    }
}
