//! Distributed mutual exclusion (lecture section 2.4), each algorithm a pure state
//! machine behind [`crate::protocol::Protocol`], tested on [`crate::sim`].
//!
//! - [`central`]: a coordinator grants in request order.
//! - [`ring`]: a token circles a logical ring.
//! - [`lamport`]: timestamped requests to all, the same queue everywhere.
//! - [`maekawa`]: votes from a grid row and column, with inquire / relinquish.
//! - [`raymond`]: a token passed along a tree (what `cluster node` runs today).

pub mod central;
pub mod lamport;
pub mod maekawa;
pub mod raymond;
pub mod ring;

use crate::clock::NodeId;
use crate::protocol::{Millis, Out, Protocol};

/// Which algorithm a `cluster node` runs (`--mutex NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Raymond,
    Central,
    Ring,
    Lamport,
    Maekawa,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Algorithm, String> {
        Ok(match s {
            "raymond" => Algorithm::Raymond,
            "central" => Algorithm::Central,
            "ring" => Algorithm::Ring,
            "lamport" => Algorithm::Lamport,
            "maekawa" => Algorithm::Maekawa,
            _ => return Err(format!("unknown --mutex '{s}': want raymond, central, ring, lamport or maekawa")),
        })
    }
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Raymond => "raymond",
            Algorithm::Central => "central",
            Algorithm::Ring => "ring",
            Algorithm::Lamport => "lamport",
            Algorithm::Maekawa => "maekawa",
        }
    }
}

/// The messages of the algorithms that run among named peers (all but Raymond, whose
/// messages keep their own variant on the wire): the variant says which algorithm sent
/// it, so a node started with another one drops it and says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum PeerMsg {
    Central(central::Msg),
    Ring(ring::Msg),
    Lamport(lamport::Msg),
    Maekawa(maekawa::Msg),
}

/// A message of another algorithm than the node runs (a misconfigured cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Foreign;

/// One lock's state under one of the peer algorithms.
#[derive(Debug, Clone)]
pub enum Peered {
    Central(central::Central),
    Ring(ring::Ring),
    Lamport(lamport::Lamport),
    Maekawa(maekawa::Maekawa),
}

fn wrap<M>(outs: Vec<Out<M>>, f: fn(M) -> PeerMsg) -> Vec<Out<PeerMsg>> {
    outs.into_iter()
        .map(|o| match o {
            Out::Send { to, msg } => Out::Send { to, msg: f(msg) },
            Out::Granted { fence } => Out::Granted { fence },
        })
        .collect()
}

macro_rules! each {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Peered::Central($p) => wrap($e, PeerMsg::Central),
            Peered::Ring($p) => wrap($e, PeerMsg::Ring),
            Peered::Lamport($p) => wrap($e, PeerMsg::Lamport),
            Peered::Maekawa($p) => wrap($e, PeerMsg::Maekawa),
        }
    };
}

impl Peered {
    /// `members`: every node's id, this one's included. Raymond is not a peer algorithm.
    pub fn new(algo: Algorithm, me: NodeId, members: &[NodeId]) -> Result<Peered, String> {
        Ok(match algo {
            Algorithm::Central => Peered::Central(central::Central::new(me, members)),
            Algorithm::Ring => Peered::Ring(ring::Ring::lazy(me, members)),
            Algorithm::Lamport => Peered::Lamport(lamport::Lamport::new(me, members)),
            Algorithm::Maekawa => Peered::Maekawa(maekawa::Maekawa::new(me, members, true)?),
            Algorithm::Raymond => return Err("raymond runs on a tree (--parent), not among peers".into()),
        })
    }

    pub fn request(&mut self, now: Millis) -> Vec<Out<PeerMsg>> {
        each!(self, p => p.request(now))
    }

    pub fn release(&mut self, now: Millis) -> Vec<Out<PeerMsg>> {
        each!(self, p => p.release(now))
    }

    pub fn tick(&mut self, now: Millis) -> Vec<Out<PeerMsg>> {
        each!(self, p => p.tick(now))
    }

    pub fn peer_down(&mut self, now: Millis, peer: NodeId) -> Vec<Out<PeerMsg>> {
        each!(self, p => p.peer_down(now, peer))
    }

    pub fn peer_up(&mut self, now: Millis, peer: NodeId) -> Vec<Out<PeerMsg>> {
        each!(self, p => p.peer_up(now, peer))
    }

    /// A message from `from`; `Err` if it belongs to another algorithm than ours.
    pub fn receive(&mut self, now: Millis, from: NodeId, msg: PeerMsg) -> Result<Vec<Out<PeerMsg>>, Foreign> {
        Ok(match (self, msg) {
            (Peered::Central(p), PeerMsg::Central(m)) => wrap(p.receive(now, from, m), PeerMsg::Central),
            (Peered::Ring(p), PeerMsg::Ring(m)) => wrap(p.receive(now, from, m), PeerMsg::Ring),
            (Peered::Lamport(p), PeerMsg::Lamport(m)) => wrap(p.receive(now, from, m), PeerMsg::Lamport),
            (Peered::Maekawa(p), PeerMsg::Maekawa(m)) => wrap(p.receive(now, from, m), PeerMsg::Maekawa),
            _ => return Err(Foreign),
        })
    }

    pub fn in_critical_section(&self) -> bool {
        match self {
            Peered::Central(p) => p.in_critical_section(),
            Peered::Ring(p) => p.in_critical_section(),
            Peered::Lamport(p) => p.in_critical_section(),
            Peered::Maekawa(p) => p.in_critical_section(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of another algorithm is refused (the node drops it and says so), and
    /// the names parse; Raymond is not a peer algorithm.
    #[test]
    fn peer_algorithms_by_name_and_foreign_messages() {
        let ids = [0, 1, 2, 3];
        let mut c = Peered::new("central".parse().unwrap(), 1, &ids).unwrap();
        assert!(c.receive(0, 0, PeerMsg::Ring(ring::Msg::Wake)).is_err());
        assert!(c.receive(0, 0, PeerMsg::Central(central::Msg::Grant { seq: 9, fence: 1 })).is_ok());
        assert!("bogus".parse::<Algorithm>().unwrap_err().contains("want raymond, central"));
        assert!(Peered::new(Algorithm::Raymond, 0, &ids).is_err());
        assert!(Peered::new(Algorithm::Maekawa, 0, &ids[..3]).is_err());
        for name in ["raymond", "central", "ring", "lamport", "maekawa"] {
            assert_eq!(name.parse::<Algorithm>().unwrap().name(), name);
        }
    }
}
