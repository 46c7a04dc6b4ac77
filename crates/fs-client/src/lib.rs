//! `fs-client`: mounts an `fs-server` export through FUSE.
//!
//! # Layout
//! Module names follow a request from the kernel to the wire:
//! - [`fuse`]: the `fuser::Filesystem` impl; translation only.
//! - [`client`]: every operation as an async function on plain types: caching,
//!   close-to-open, read-ahead, write-back, silly rename.
//! - [`inodes`]: node ids to handles, lookup counts, FORGET (pure).
//! - [`attrcache`]: NFS-style adaptive attribute timeouts (pure).
//! - [`pagecache`]: LRU of blocks bounded in bytes, tagged with the change attribute (pure).
//! - [`readahead`]: sequential detection and the read-ahead window (pure).
//! - [`writeback`]: dirty extents coalesced into large WRITEs (pure).
//! - [`rpc`]: pipelined calls, xids, reconnect and retransmission, hard and soft.
//! - [`notices`]: following the server's numbered change notices (pure);
//!   [`notifier`]: the thread that subscribes and drops what they make stale.
//! - [`options`]: `-o` mount options, validated.
//! - [`mount`]: mounting, unmounting and signals; [`helper`]: `mount.fuse.fs`, the
//!   helper mount(8) and `/etc/fstab` run.

pub mod attrcache;
pub mod client;
pub mod fuse;
pub mod helper;
pub mod inodes;
pub mod locks;
pub mod mount;
pub mod notices;
pub mod notifier;
pub mod options;
pub mod pagecache;
pub mod readahead;
pub mod rpc;
pub mod srvclock;
pub mod stats;
pub mod writeback;

#[cfg(test)]
mod testutil;
