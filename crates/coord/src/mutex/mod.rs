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
