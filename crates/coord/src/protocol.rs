//! The one trait every mutual-exclusion algorithm implements: a pure state machine.
//!
//! Events go in (the local user's request and release, a message from a peer, a timer
//! tick, a peer declared down), each with the current time passed as an argument;
//! messages to send and the grant come out. No sockets, no clock reads, no threads: the
//! node runtime moves the messages over ZeroMQ, the simulator ([`crate::sim`]) over a
//! simulated network with virtual time.
//!
//! One instance serves one lock (one lease key) on one node. The contract the
//! simulator checks for every algorithm: at most one node is in the critical section at
//! a time; every grant's fencing number is higher than the one before; every request is
//! granted once the network delivers what it sends.

use crate::clock::NodeId;
use crate::mutex::raymond::Fence;

/// Milliseconds since an arbitrary start (virtual in the simulator).
pub type Millis = u64;

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out<M> {
    /// Send `msg` to peer `to`.
    Send { to: NodeId, msg: M },
    /// The local request is granted: enter the critical section, with this fencing
    /// number (writes made under the lock carry it).
    Granted { fence: Fence },
}

/// A distributed mutual-exclusion algorithm, one lock, one node.
pub trait Protocol {
    type Msg: Clone + std::fmt::Debug;

    /// This node's id.
    fn me(&self) -> NodeId;

    /// The local user asks for the critical section (at most one request at a time).
    fn request(&mut self, now: Millis) -> Vec<Out<Self::Msg>>;

    /// The local user leaves the critical section.
    fn release(&mut self, now: Millis) -> Vec<Out<Self::Msg>>;

    /// A message from peer `from`.
    fn receive(&mut self, now: Millis, from: NodeId, msg: Self::Msg) -> Vec<Out<Self::Msg>>;

    /// Time passes (called every few milliseconds; retries and timeouts live here).
    fn tick(&mut self, _now: Millis) -> Vec<Out<Self::Msg>> {
        Vec::new()
    }

    /// Peer `peer` was declared down (heartbeats).
    fn peer_down(&mut self, _now: Millis, _peer: NodeId) -> Vec<Out<Self::Msg>> {
        Vec::new()
    }

    /// Peer `peer`, declared down before, is back (restarted: it remembers nothing).
    fn peer_up(&mut self, _now: Millis, _peer: NodeId) -> Vec<Out<Self::Msg>> {
        Vec::new()
    }

    /// Whether this node is in the critical section.
    fn in_critical_section(&self) -> bool;
}
