//! `fs-server`: exports a directory to `fs-client` mounts, stateless in the NFS sense.
//!
//! # Layout
//! Module names follow a request through the server:
//! - [`net`]: listener and connections; frames in, replies out, calls on the blocking pool.
//! - [`server`]: configuration, the duplicate request cache in front, dispatch.
//! - [`drc`]: the duplicate request cache (pure; keyed by client id and xid).
//! - [`metrics`]: `--metrics`, the counters in the Prometheus text format.
//! - [`notices`]: the sequencer: every change numbered, pushed to subscribed mounts.
//! - [`handles`]: opaque MAC'd handles to kernel handles and back, with a descriptor cache.
//! - [`creds`]: acting as the caller (per-thread fsuid/fsgid/groups, root squash).
//! - [`ops`]: one function per operation, all `*at()` calls on descriptors.
//! - [`sys`]: the system call wrappers (all of the crate's `unsafe`).
//!
//! # Statelessness
//! Nothing a client relies on lives only in this process: handles are kernel handles
//! plus a MAC whose key persists in the state folder, so a restarted server accepts them;
//! the descriptor cache and the duplicate request cache only save work and, respectively,
//! answer retransmissions that arrive while this instance runs. What a restart does
//! change, the write verifier, tells clients to resend writes they had not committed.

pub mod creds;
pub mod drc;
pub mod handles;
pub mod holders;
pub mod metrics;
pub mod net;
pub mod notices;
pub mod ops;
pub mod replica;
pub mod server;
pub mod standby;
pub mod sys;

pub use server::{Config, Server, StartError};

/// Locks a mutex whether or not a panic poisoned it. Each call runs under
/// `catch_unwind`, so a panicking operation costs that call a SERVERFAULT; a poisoned
/// lock would cost every later call the same. What these locks guard (caches, counters,
/// a writer) stays usable: no critical section leaves it half-changed when an operation
/// panics outside it, and none calls code that panics inside it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
