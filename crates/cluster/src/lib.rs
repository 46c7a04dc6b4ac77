//! The cluster layer on top of the shared folder: prime jobs over ZeroMQ.
//!
//! # Layout (in the order a job flows)
//! - [`spool`]: watches `spool/in/` on a mount, claims `NAME.job` by rename, runs it as a
//!   source and a subscriber, writes `spool/out/NAME.primes` and `.summary`.
//! - [`job`]: the job file format (numbers and ranges `A..B`, `#` comments).
//! - [`source`]: REQ client that submits batches and waits for each acknowledgement,
//!   resending on a timeout (Lazy Pirate).
//! - [`broker`]: the poll loop and its sockets; [`dispatch`] its socket-free bookkeeping
//!   (credit, heartbeats, re-dispatch, duplicate suppression), tested without sockets.
//! - [`metrics`]: `cluster broker --metrics`, the broker's counters for Prometheus.
//! - [`load`]: a worker's load (its CPU share, memory pressure) and the capacity it
//!   implies, for `--dispatch load`.
//! - [`worker`]: tests numbers ([`prime`]: deterministic Miller-Rabin, exact for `i64`)
//!   and returns primes over REQ.
//! - [`sink`]: SUB client that prints one tag of the publications.
//! - [`wire`]: the bytes of every message (tag first, for SUB prefix filters).
//! - [`endpoint`]: one broker address names its four sockets.
//! - [`up`]: the whole system on one machine (`cluster up`).
//!
//! Coordination (clocks, Raymond's algorithm, `cluster node`, the lease client) lives in
//! the `coord` crate, which the mount depends on alone; it is re-exported here under its
//! old names.

pub mod broker;
pub mod bstar;
pub mod classic;
pub mod dispatch;
pub mod endpoint;
pub mod job;
pub mod load;
pub mod metrics;
pub mod prime;
pub mod sink;
pub mod source;
pub mod spool;
pub mod up;
pub mod vote;
pub mod wire;
pub mod worker;

pub use coord::{clock, curve, lease, mutex, node, util};
