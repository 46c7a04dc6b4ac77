//! Maekawa's algorithm (lecture 2.4.4): the n nodes form a k x k grid (n = k^2); a node's
//! quorum is its row and its column, and any two quorums share a node. To enter, a node
//! needs the vote of every member of its quorum; a member votes for one request at a
//! time. Requests carry Lamport timestamps, which order them by priority (earlier first,
//! then lower id).
//!
//! Votes alone deadlock: A holds the vote of X and waits for Y, B holds Y's and waits for
//! X. The notes' cure is revoking (inquire / relinquish): a member that has voted and then
//! sees an earlier request asks the voted-for node to give its vote back (`Inquire`); a
//! node that cannot win yet (it was refused somewhere: `Failed`) gives it back
//! (`Relinquish`), and the member votes for the earliest request. With `revoke` off, the
//! deadlock of the notes happens (a test shows it) and with it on it cannot.
//!
//! Every message carries the sender's Lamport clock. The fencing number is the entering
//! node's clock at entry (and its id): the vote that let it in came after the previous
//! holder's release, so the clock, and the fence, grow from one entry to the next.
//! Messages to itself (a node is in its own quorum) are handled at once, not sent.
//! Links are assumed FIFO and without duplicates (a duplicated `Release` could free a vote
//! given to the sender's next request).

use crate::clock::NodeId;
use crate::protocol::{Millis, Out, Protocol};
use std::collections::{BTreeSet, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Kind {
    Request {
        ts: u64,
    },
    /// A vote for the receiver's request.
    Locked,
    /// The request was queued behind an earlier one.
    Failed,
    /// An earlier request waits: give the vote back if you cannot enter yet.
    Inquire,
    /// The vote given back.
    Relinquish,
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Msg {
    pub clock: u64,
    pub kind: Kind,
}

/// The grid: `k` x `k` nodes with ids `0..k*k` in row order.
pub fn grid_side(n: usize) -> Option<usize> {
    let k = (n as f64).sqrt().round() as usize;
    (k * k == n && k > 0).then_some(k)
}

#[derive(Debug, Clone)]
pub struct Maekawa {
    me: NodeId,
    quorum: Vec<NodeId>,
    clock: u64,
    revoke: bool,
    // As a voter.
    voted_for: Option<(u64, NodeId)>,
    waiting: BTreeSet<(u64, NodeId)>,
    inquired: bool,
    // As a requester.
    mine: Option<u64>,
    votes: HashSet<NodeId>,
    failed: bool,
    /// Voters that asked for their vote back while we could still win.
    asked_back: HashSet<NodeId>,
    inside: bool,
}

impl Maekawa {
    /// `members`: every node's id (n = k^2 of them, in grid order by id); `revoke`: the
    /// inquire / relinquish exchange (on in real use; off only to show the deadlock).
    pub fn new(me: NodeId, members: &[NodeId], revoke: bool) -> Result<Maekawa, String> {
        let mut ids = members.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let k = grid_side(ids.len())
            .ok_or_else(|| format!("maekawa needs a square number of nodes (4, 9, 16...), not {}", ids.len()))?;
        let pos = ids.iter().position(|&i| i == me).ok_or("this node is not among the members")?;
        let (row, col) = (pos / k, pos % k);
        let quorum = ids.iter().enumerate().filter(|(i, _)| i / k == row || i % k == col).map(|(_, &id)| id).collect();
        Ok(Maekawa {
            me,
            quorum,
            clock: 0,
            revoke,
            voted_for: None,
            waiting: BTreeSet::new(),
            inquired: false,
            mine: None,
            votes: HashSet::new(),
            failed: false,
            asked_back: HashSet::new(),
            inside: false,
        })
    }

    pub fn quorum(&self) -> &[NodeId] {
        &self.quorum
    }

    /// Sends `kind` to `to` (handled here at once if `to` is this node).
    fn send(&mut self, to: NodeId, kind: Kind, out: &mut Vec<Out<Msg>>) {
        self.clock += 1;
        let msg = Msg { clock: self.clock, kind };
        if to == self.me {
            self.handle(self.me, msg, out);
        } else {
            out.push(Out::Send { to, msg });
        }
    }

    fn handle(&mut self, from: NodeId, msg: Msg, out: &mut Vec<Out<Msg>>) {
        self.clock = self.clock.max(msg.clock) + 1;
        match msg.kind {
            Kind::Request { ts } => self.on_request(from, ts, out),
            Kind::Release => self.on_release(from, out),
            Kind::Relinquish => self.on_relinquish(from, out),
            Kind::Locked => {
                if self.mine.is_some() {
                    self.votes.insert(from);
                    self.try_enter(out);
                }
            }
            Kind::Failed => {
                if self.mine.is_some() && !self.inside {
                    self.failed = true;
                    // We cannot win now: give back the votes asked for.
                    let asked: Vec<NodeId> = self.asked_back.drain().collect();
                    for v in asked {
                        self.give_back(v, out);
                    }
                }
            }
            Kind::Inquire => {
                if self.mine.is_none() || self.inside || !self.votes.contains(&from) {
                    return; // in (or done): the release will free the vote
                }
                if self.failed {
                    self.give_back(from, out);
                } else {
                    self.asked_back.insert(from);
                }
            }
        }
    }

    fn give_back(&mut self, voter: NodeId, out: &mut Vec<Out<Msg>>) {
        if self.votes.remove(&voter) {
            self.send(voter, Kind::Relinquish, out);
        }
    }

    fn try_enter(&mut self, out: &mut Vec<Out<Msg>>) {
        if self.inside || self.mine.is_none() || !self.quorum.iter().all(|q| self.votes.contains(q)) {
            return;
        }
        self.inside = true;
        self.asked_back.clear();
        out.push(Out::Granted { fence: (self.clock << 16) | u64::from(self.me & 0xffff) });
    }

    // ---- as a voter ----

    fn vote(&mut self, req: (u64, NodeId), out: &mut Vec<Out<Msg>>) {
        self.voted_for = Some(req);
        self.inquired = false;
        self.send(req.1, Kind::Locked, out);
    }

    fn on_request(&mut self, from: NodeId, ts: u64, out: &mut Vec<Out<Msg>>) {
        let req = (ts, from);
        match self.voted_for {
            None => self.vote(req, out),
            Some(v) if v == req => {} // a duplicate
            Some(v) => {
                let old_first = self.waiting.first().copied();
                if !self.waiting.insert(req) {
                    return; // a duplicate
                }
                let first = old_first.is_none_or(|f| req < f);
                if self.revoke && req < v && first {
                    // The earliest request of all: the vote should be its. The one that
                    // was earliest before is told it lost (every waiting request but the
                    // first has been told).
                    if let Some(f) = old_first.filter(|&f| f < v) {
                        self.send(f.1, Kind::Failed, out);
                    }
                    if !self.inquired {
                        self.inquired = true;
                        self.send(v.1, Kind::Inquire, out);
                    }
                } else {
                    self.send(from, Kind::Failed, out);
                }
            }
        }
    }

    fn next_vote(&mut self, out: &mut Vec<Out<Msg>>) {
        self.voted_for = None;
        self.inquired = false;
        if let Some(next) = self.waiting.pop_first() {
            self.vote(next, out);
        }
    }

    fn on_release(&mut self, from: NodeId, out: &mut Vec<Out<Msg>>) {
        self.waiting.retain(|&(_, n)| n != from);
        if self.voted_for.is_some_and(|v| v.1 == from) {
            self.next_vote(out);
        }
    }

    fn on_relinquish(&mut self, from: NodeId, out: &mut Vec<Out<Msg>>) {
        let Some(v) = self.voted_for else { return };
        if v.1 != from {
            return;
        }
        self.waiting.insert(v);
        self.next_vote(out);
    }
}

impl Protocol for Maekawa {
    type Msg = Msg;

    fn me(&self) -> NodeId {
        self.me
    }

    fn request(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        let mut out = Vec::new();
        self.clock += 1;
        let ts = self.clock;
        self.mine = Some(ts);
        self.votes.clear();
        self.failed = false;
        self.asked_back.clear();
        for q in self.quorum.clone() {
            self.send(q, Kind::Request { ts }, &mut out);
        }
        out
    }

    fn release(&mut self, _now: Millis) -> Vec<Out<Msg>> {
        let mut out = Vec::new();
        self.inside = false;
        self.mine = None;
        self.votes.clear();
        self.failed = false;
        for q in self.quorum.clone() {
            self.send(q, Kind::Release, &mut out);
        }
        out
    }

    fn receive(&mut self, _now: Millis, from: NodeId, msg: Msg) -> Vec<Out<Msg>> {
        let mut out = Vec::new();
        if self.quorum.contains(&from) {
            self.handle(from, msg, &mut out);
        }
        out
    }

    fn in_critical_section(&self) -> bool {
        self.inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Link, Sim};

    fn cluster(n: u32, seed: u64, revoke: bool) -> Sim<Maekawa> {
        let ids: Vec<NodeId> = (0..n).collect();
        let nodes = ids.iter().map(|&i| Maekawa::new(i, &ids, revoke).unwrap()).collect();
        Sim::new(nodes, seed, Link { delay: (1, 20), ..Link::default() })
    }

    #[test]
    fn quorums_are_rows_and_columns_and_intersect() {
        let ids: Vec<NodeId> = (0..9).collect();
        let q = |i| Maekawa::new(i, &ids, true).unwrap().quorum().to_vec();
        assert_eq!(q(4), vec![1, 3, 4, 5, 7]);
        for a in 0..9 {
            for b in 0..9 {
                assert!(q(a).iter().any(|x| q(b).contains(x)), "{a} and {b} share a voter");
            }
        }
        assert!(Maekawa::new(0, &[0, 1, 2], true).unwrap_err().contains("square"));
    }

    /// With revoke, safe and live on many seeded schedules, grids of 4, 9 and 16 nodes.
    #[test]
    fn with_revoke_safe_and_live() {
        for seed in 0..1000 {
            let n = [4, 9, 16][seed as usize % 3];
            let mut sim = cluster(n, seed, true);
            sim.run_checked(30, 2_000_000, &format!("seed {seed}"));
        }
    }

    /// The notes' deadlock: without revoke, some schedule leaves nodes each holding part
    /// of the votes they need forever (found among seeded schedules); the same schedules
    /// with revoke all finish.
    #[test]
    fn without_revoke_it_deadlocks() {
        let mut deadlocked = 0;
        for seed in 0..200 {
            let mut sim = cluster(4, seed, false);
            let stuck = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run_workload(3, 4, 5, 100_000)));
            if let Err(e) = stuck {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.contains("not every request granted"), "only liveness may fail: {msg}");
                deadlocked += 1;
            }
        }
        assert!(deadlocked > 0, "no schedule deadlocked without revoke");
    }

    #[test]
    fn every_schedule_of_four_nodes() {
        let ids = [0, 1, 2, 3];
        let nodes = ids.iter().map(|&i| Maekawa::new(i, &ids, true).unwrap()).collect();
        let states = crate::sim::explore::all_schedules(nodes, 80);
        assert!(states > 100, "{states}");
    }
}
