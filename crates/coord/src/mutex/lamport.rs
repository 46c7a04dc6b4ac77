//! Lamport's algorithm (lecture 2.4.3): a request, stamped with the Lamport clock, goes
//! to every other node and waits in the same queue everywhere, ordered by (timestamp,
//! id). A node enters when its request heads its queue and every other node has
//! answered with a later timestamp; leaving, it tells every node to drop the request.
//! 3(n-1) messages per entry. Channels must be FIFO (the algorithm's assumption).
//!
//! Duplicates change nothing (the queue is a set; timestamps only grow). A node declared
//! dead is dropped from the membership and its requests from the queue. The fencing
//! number is the grant's (timestamp, id), which the queue order makes grow.

use crate::clock::NodeId;
use crate::protocol::{Millis, Out, Protocol};
use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Msg {
    Request { ts: u64 },
    Ack { ts: u64 },
    Release { req: u64, ts: u64 },
}

#[derive(Debug, Clone)]
pub struct Lamport {
    me: NodeId,
    peers: Vec<NodeId>,
    clock: u64,
    queue: BTreeSet<(u64, NodeId)>,
    /// The latest timestamp heard from each peer.
    latest: HashMap<NodeId, u64>,
    mine: Option<u64>,
    inside: bool,
}

impl Lamport {
    /// `members`: every node's id, this one's included.
    pub fn new(me: NodeId, members: &[NodeId]) -> Lamport {
        let peers = members.iter().copied().filter(|&n| n != me).collect();
        Lamport { me, peers, clock: 0, queue: BTreeSet::new(), latest: HashMap::new(), mine: None, inside: false }
    }

    fn heard(&mut self, from: NodeId, ts: u64) {
        self.clock = self.clock.max(ts) + 1;
        let l = self.latest.entry(from).or_insert(0);
        *l = (*l).max(ts);
    }

    fn try_enter(&mut self) -> Vec<Out<Msg>> {
        let Some(t) = self.mine else { return Vec::new() };
        if self.inside || self.queue.first() != Some(&(t, self.me)) {
            return Vec::new();
        }
        if !self.peers.iter().all(|p| self.latest.get(p).is_some_and(|&l| l > t)) {
            return Vec::new();
        }
        self.inside = true;
        vec![Out::Granted { fence: (t << 16) | u64::from(self.me & 0xffff) }]
    }

    fn to_all(&self, msg: Msg) -> Vec<Out<Msg>> {
        self.peers.iter().map(|&to| Out::Send { to, msg }).collect()
    }
}

impl Protocol for Lamport {
    type Msg = Msg;

    fn me(&self) -> NodeId {
        self.me
    }

    fn request(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        self.clock += 1;
        let ts = self.clock;
        self.mine = Some(ts);
        self.queue.insert((ts, self.me));
        let mut out = self.to_all(Msg::Request { ts });
        out.extend(self.try_enter());
        out
    }

    fn release(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        self.inside = false;
        let Some(req) = self.mine.take() else { return Vec::new() };
        self.queue.remove(&(req, self.me));
        self.clock += 1;
        self.to_all(Msg::Release { req, ts: self.clock })
    }

    fn receive(&mut self, _now: Millis, from: NodeId, msg: Msg) -> Vec<Out<Msg>> {
        if !self.peers.contains(&from) {
            return Vec::new();
        }
        match msg {
            Msg::Request { ts } => {
                self.heard(from, ts);
                self.queue.insert((ts, from));
                let mut out = vec![Out::Send { to: from, msg: Msg::Ack { ts: self.clock } }];
                out.extend(self.try_enter());
                out
            }
            Msg::Ack { ts } => {
                self.heard(from, ts);
                self.try_enter()
            }
            Msg::Release { req, ts } => {
                self.heard(from, ts);
                self.queue.remove(&(req, from));
                self.try_enter()
            }
        }
    }

    fn peer_down(&mut self, _now: Millis, peer: NodeId) -> Vec<Out<Msg>> {
        self.peers.retain(|&p| p != peer);
        self.queue.retain(|&(_, n)| n != peer);
        self.try_enter()
    }

    fn peer_up(&mut self, _now: Millis, peer: NodeId) -> Vec<Out<Msg>> {
        if peer != self.me && !self.peers.contains(&peer) {
            self.peers.push(peer);
            self.latest.remove(&peer);
        }
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

    fn cluster(n: u32, seed: u64, link: Link) -> Sim<Lamport> {
        let ids: Vec<NodeId> = (0..n).collect();
        Sim::new(ids.iter().map(|&i| Lamport::new(i, &ids)).collect(), seed, link)
    }

    /// Safety and liveness on many seeded schedules over FIFO links with random delays
    /// (so messages on different links overtake each other), with and without
    /// duplicates; exactly 3(n-1) messages per entry.
    #[test]
    fn safe_live_and_three_n_minus_one_messages_per_entry() {
        for seed in 0..2000 {
            let n = 2 + (seed % 6) as u32;
            let mut sim = cluster(n, seed, Link { delay: (1, 20), ..Link::default() });
            sim.run_checked(60, 1_000_000, &format!("seed {seed}"));
            // (A node may enter before its request reached everyone: any later message
            // from a peer will do. The answers still come.)
            sim.settle(100_000);
            let entries: u64 = sim.granted.iter().map(|&g| g as u64).sum();
            assert_eq!(sim.messages, 3 * (n as u64 - 1) * entries, "seed {seed}");
            let mut dup = cluster(n, seed, Link { delay: (1, 20), dup: 0.3, ..Link::default() });
            dup.run_checked(60, 1_000_000, &format!("seed {seed}, duplicates"));
        }
    }

    /// A node that dies is dropped from everyone's membership: the others go on.
    #[test]
    fn a_dead_node_does_not_block_the_others() {
        let mut sim = cluster(4, 3, Link::default());
        sim.kill(3);
        sim.run_workload(3, 4, 60, 1_000_000);
        assert_eq!(&sim.granted[..3], &sim.requested[..3]);
    }

    /// Mutant: entering without waiting for every answer (only the queue's head
    /// checked) lets two nodes in, and the simulator catches it.
    #[test]
    fn entering_without_every_answer_breaks_safety() {
        let caught = std::panic::catch_unwind(|| {
            for seed in 0..100 {
                let mut sim = cluster(3, seed, Link { delay: (1, 30), ..Link::default() });
                for n in &mut sim.nodes {
                    n.peers.clear(); // "every other node has answered" is now always true
                }
                sim.run_workload(3, 4, 10, 1_000_000);
            }
        });
        assert!(caught.is_err());
    }

    #[test]
    fn every_schedule_of_three_nodes() {
        let ids = [0, 1, 2];
        let states = crate::sim::explore::all_schedules(ids.iter().map(|&i| Lamport::new(i, &ids)).collect(), 60);
        assert!(states > 100, "{states}");
    }
}
