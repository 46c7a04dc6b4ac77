//! Coordination between machines, apart from what is coordinated: the mount (`fs-client`)
//! depends on this crate alone for its leases, and the prime-job crate (`cluster`) uses
//! it for spool claims and the `cluster node` and `cluster lease` commands.
//!
//! # Layout
//! - [`clock`]: Lamport and vector clocks; [`audit`]: the check, by vector time, that no
//!   two critical sections of a lease overlapped.
//! - [`protocol`]: the trait every algorithm implements (events and the time in,
//!   messages and grants out).
//! - [`mutex`]: distributed mutual exclusion as pure state machines (no sockets, no clock
//!   reads, no threads): central, ring, Lamport, Maekawa and Raymond's tree-based token algorithm.
//! - [`sim`]: the simulated network they are all tested on (virtual time, seeded
//!   randomness, delay, loss, duplication, reordering, crashes and cut links).
//! - [`node`]: `cluster node`, the ZeroMQ runtime that runs the algorithm per lease key,
//!   with heartbeats and liveness.
//! - [`lease`]: the client side of leases (mounts, spool watchers).
//! - [`util`]: random ids, the stop flag, socket setup.

pub mod audit;
pub mod clock;
pub mod curve;
pub mod echo;
pub mod lease;
pub mod mutex;
pub mod node;
pub mod protocol;
pub mod sim;
pub mod tree;
pub mod treelock;
pub mod util;
