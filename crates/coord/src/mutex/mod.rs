//! Mutual exclusion over a tree of nodes.

pub mod raymond;
