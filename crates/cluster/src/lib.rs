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
//! - [`worker`]: tests numbers ([`prime`]: deterministic Miller-Rabin, exact for `i64`)
//!   and returns primes over REQ.
//! - [`sink`]: SUB client that prints one tag of the publications.
//! - [`wire`]: the bytes of every message (tag first, for SUB prefix filters).
//! - [`endpoint`]: one broker address names its four sockets.
//! - [`up`]: the whole system on one machine (`cluster up`).
//!
//! Coordination: [`clock`] (Lamport and vector clocks), [`mutex::raymond`] (Raymond's
//! token algorithm as a pure state machine), [`node`] (its ZeroMQ transport, one lease
//! per key) and [`lease`] (the client side that mounts use).

pub mod broker;
pub mod clock;
pub mod dispatch;
pub mod endpoint;
pub mod job;
pub mod lease;
pub mod mutex;
pub mod node;
pub mod prime;
pub mod sink;
pub mod source;
pub mod spool;
pub mod up;
pub mod util;
pub mod wire;
pub mod worker;
