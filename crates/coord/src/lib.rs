//! Coordination between machines, apart from what is coordinated: the mount (`fs-client`)
//! depends on this crate alone for its leases, and the prime-job crate (`cluster`) uses
//! it for spool claims and the `cluster node` and `cluster lease` commands.
//!
//! # Layout
//! - [`clock`]: Lamport and vector clocks.
//! - [`mutex`]: distributed mutual exclusion as pure state machines (no sockets, no clock
//!   reads, no threads): [`mutex::raymond`], Raymond's tree-based token algorithm.
//! - [`node`]: `cluster node`, the ZeroMQ runtime that runs the algorithm per lease key,
//!   with heartbeats and liveness.
//! - [`lease`]: the client side of leases (mounts, spool watchers).
//! - [`util`]: random ids, the stop flag, socket setup.

pub mod clock;
pub mod lease;
pub mod mutex;
pub mod node;
pub mod util;
