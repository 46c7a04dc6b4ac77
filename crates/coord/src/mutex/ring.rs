//! The token ring (lecture 2.4.2): the nodes form a logical ring in id order; one token
//! circles it; a node that wants the critical section waits for the token, keeps it
//! while inside, then passes it on. A node that does not want it passes it on at its
//! next tick (so an idle ring circles at the tick rate, not at network speed).
//!
//! The token carries a hop count: a duplicated token (the network delivered it twice) is
//! recognised and dropped, so there is never a second token. A dead node is taken out of
//! the ring; a token lost with it is not regenerated (the notes: the ring must detect
//! and regenerate a lost token, which needs an election): the ring stalls.

use crate::clock::NodeId;
use crate::mutex::raymond::Fence;
use crate::protocol::{Millis, Out, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Msg {
    Token {
        hop: u64,
        fence: Fence,
    },
    /// "Start this lock's token": a node wanting a lock the ring has never passed tells
    /// the ring's first node, which makes the token (per-lock state is made on first
    /// use in `cluster node`).
    Wake,
}

#[derive(Debug, Clone)]
pub struct Ring {
    me: NodeId,
    /// Every live member, in ring (id) order.
    ring: Vec<NodeId>,
    /// The token, while here: (hop count, last fencing number granted).
    token: Option<(u64, Fence)>,
    last_hop: u64,
    want: bool,
    inside: bool,
    /// Made on first use (in `cluster node`): the ring's first node may not have made
    /// this lock's token yet, so a request asks it to (`Wake`).
    lazy: bool,
}

impl Ring {
    /// `members`: every node's id, this one's included. The lowest id starts with the
    /// token.
    pub fn new(me: NodeId, members: &[NodeId]) -> Ring {
        let mut ring = members.to_vec();
        ring.sort_unstable();
        ring.dedup();
        let token = (ring.first() == Some(&me)).then_some((0, 0));
        Ring { me, ring, token, last_hop: 0, want: false, inside: false, lazy: false }
    }

    /// As [`Ring::new`], for state made on first use (see `Msg::Wake`).
    pub fn lazy(me: NodeId, members: &[NodeId]) -> Ring {
        Ring { lazy: true, ..Ring::new(me, members) }
    }

    fn next(&self) -> NodeId {
        let i = self.ring.iter().position(|&n| n == self.me).unwrap_or(0);
        self.ring[(i + 1) % self.ring.len()]
    }

    fn pass(&mut self) -> Vec<Out<Msg>> {
        let Some((hop, fence)) = self.token else { return Vec::new() };
        let next = self.next();
        if next == self.me {
            return Vec::new(); // alone in the ring: keep it
        }
        self.token = None;
        vec![Out::Send { to: next, msg: Msg::Token { hop: hop + 1, fence } }]
    }

    fn enter(&mut self) -> Vec<Out<Msg>> {
        let Some((hop, fence)) = self.token else { return Vec::new() };
        if !self.want || self.inside {
            return Vec::new();
        }
        self.inside = true;
        self.token = Some((hop, fence + 1));
        vec![Out::Granted { fence: fence + 1 }]
    }
}

impl Protocol for Ring {
    type Msg = Msg;

    fn me(&self) -> NodeId {
        self.me
    }

    fn request(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        self.want = true;
        let first = self.ring[0];
        if self.lazy && self.token.is_none() && self.last_hop == 0 && first != self.me {
            return vec![Out::Send { to: first, msg: Msg::Wake }];
        }
        self.enter()
    }

    fn release(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        self.want = false;
        self.inside = false;
        self.pass()
    }

    fn receive(&mut self, _now: Millis, _from: NodeId, msg: Msg) -> Vec<Out<Msg>> {
        let Msg::Token { hop, fence } = msg else { return Vec::new() }; // Wake: made, idles on
        if hop <= self.last_hop {
            return Vec::new(); // a duplicate of a token already seen
        }
        self.last_hop = hop;
        self.token = Some((hop, fence));
        self.enter()
    }

    fn tick(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        if self.token.is_some() && !self.want {
            self.pass()
        } else {
            Vec::new()
        }
    }

    fn peer_down(&mut self, _now: Millis, peer: NodeId) -> Vec<Out<Msg>> {
        self.ring.retain(|&n| n != peer);
        Vec::new()
    }

    fn peer_up(&mut self, _now: Millis, peer: NodeId) -> Vec<Out<Msg>> {
        if let Err(i) = self.ring.binary_search(&peer) {
            self.ring.insert(i, peer);
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

    fn cluster(n: u32, seed: u64, link: Link) -> Sim<Ring> {
        let ids: Vec<NodeId> = (0..n).collect();
        Sim::new(ids.iter().map(|&i| Ring::new(i, &ids)).collect(), seed, link)
    }

    /// Safety and liveness on many seeded schedules, with duplicated tokens.
    #[test]
    fn safe_and_live_with_duplicates() {
        for seed in 0..2000 {
            let n = 2 + (seed % 6) as u32;
            let mut sim = cluster(n, seed, Link { delay: (1, 20), dup: 0.2, ..Link::default() });
            sim.run_checked(60, 1_000_000, &format!("seed {seed}"));
        }
    }

    /// Rings made on first use (as `cluster node` makes them) ask the first node for the
    /// token with `Wake`: still safe and live.
    #[test]
    fn lazy_rings_are_safe_and_live() {
        for seed in 0..200 {
            let ids: Vec<NodeId> = (0..4).collect();
            let nodes = ids.iter().map(|&i| Ring::lazy(i, &ids)).collect();
            let mut sim = Sim::new(nodes, seed, Link { delay: (1, 20), ..Link::default() });
            sim.run_checked(60, 1_000_000, &format!("seed {seed}"));
        }
    }

    /// A node that dies without the token leaves the ring: the others go on.
    #[test]
    fn a_dead_node_without_the_token_leaves_the_ring() {
        for seed in 0..50 {
            let mut sim = cluster(4, seed, Link::default());
            sim.kill(2);
            sim.run_workload(3, 4, 60, 1_000_000);
            assert_eq!(&sim.granted[..2], &sim.requested[..2], "seed {seed}");
            assert_eq!(sim.granted[3], sim.requested[3], "seed {seed}");
        }
    }

    /// Mutant: a ring that does not drop duplicated tokens has two tokens, and the
    /// simulator sees two nodes inside.
    #[test]
    fn without_hop_counts_a_duplicated_token_breaks_safety() {
        let caught = std::panic::catch_unwind(|| {
            for seed in 0..2000 {
                let mut sim = cluster(4, seed, Link { delay: (1, 20), dup: 0.5, ..Link::default() });
                for n in &mut sim.nodes {
                    n.last_hop = 0;
                }
                // Forget hops before every delivery: duplicates pass as new tokens.
                let mut steps = 0;
                while steps < 20_000 {
                    for n in &mut sim.nodes {
                        n.last_hop = 0;
                    }
                    for i in 0..4 {
                        if !sim.nodes[i].want {
                            sim.request(i as NodeId);
                        } else if sim.nodes[i].inside {
                            sim.release(i as NodeId);
                        }
                    }
                    sim.step();
                    steps += 1;
                }
            }
        });
        assert!(caught.is_err(), "two tokens were never noticed");
    }

    #[test]
    fn every_schedule_of_three_nodes() {
        let ids = [0, 1, 2];
        // The token circles for ever: schedules are cut at 40 steps (every request is
        // granted well within that when it is).
        let states = crate::sim::explore::all_schedules(ids.iter().map(|&i| Ring::new(i, &ids)).collect(), 40);
        assert!(states > 10, "{states}");
    }
}
