//! `flock` and `fcntl` locks with `-o leases=NODE_ADDR`: a lock on a file is the file's
//! lease (keyed by its file handle, which every mount of the export shares), taken
//! through the local `cluster node`, so it excludes processes on every mount of the
//! cluster. Locks are whole-file and exclusive (a read lock is taken as a write lock; a
//! byte range as the whole file): simple, and safe for the read-modify-write patterns
//! locks serve.
//!
//! Within this mount, one lock owner (a process's POSIX locks, or one open file's
//! flock) holds a file's lock at a time; other owners here wait on a condition variable
//! (or get EAGAIN) before asking the node.
//!
//! Consistency, as NFS does for locks: data written under the lock reaches the server
//! before the lease passes on (the caller flushes before [`Locks::unlock`]), and cached
//! data is dropped when the lease is granted (the caller invalidates after
//! [`Locks::lock`]), so the next holder reads what the last one wrote.

use cluster::lease::LeaseClient;
use fs_proto::Errno;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    owner: u64,
    fence: u64,
}

pub struct Locks {
    lease: LeaseClient,
    /// ino -> the owner holding its lock here (None while the lease is being asked for).
    table: Mutex<HashMap<u64, Option<Held>>>,
    changed: Condvar,
}

impl Locks {
    pub fn new(lease: LeaseClient) -> Locks {
        Locks { lease, table: Mutex::new(HashMap::new()), changed: Condvar::new() }
    }

    /// Takes the lock on `ino` (lease `key`) for `owner`; waits if `wait`, else EAGAIN
    /// when someone else holds it. Returns the grant's fencing number.
    pub fn lock(&self, ino: u64, key: &[u8], owner: u64, wait: bool) -> Result<u64, Errno> {
        let mut t = self.table.lock().unwrap();
        loop {
            match t.get(&ino) {
                Some(Some(h)) if h.owner == owner => return Ok(h.fence), // already ours
                Some(_) if !wait => return Err(Errno::EAGAIN),
                Some(_) => t = self.changed.wait(t).unwrap(),
                None => break,
            }
        }
        // Reserve the file here while we ask the node (other local owners wait).
        t.insert(ino, None);
        drop(t);
        let granted = self.lease.acquire(key, wait);
        let mut t = self.table.lock().unwrap();
        match granted {
            Some(fence) => {
                t.insert(ino, Some(Held { owner, fence }));
                Ok(fence)
            }
            None => {
                t.remove(&ino);
                self.changed.notify_all();
                Err(if wait { Errno::EIO } else { Errno::EAGAIN })
            }
        }
    }

    /// Whether `owner` holds the lock on `ino`.
    pub fn holds(&self, ino: u64, owner: u64) -> bool {
        matches!(self.table.lock().unwrap().get(&ino), Some(Some(h)) if h.owner == owner)
    }

    /// Another owner holding the lock on `ino`, if any.
    pub fn other_holder(&self, ino: u64, owner: u64) -> bool {
        matches!(self.table.lock().unwrap().get(&ino), Some(Some(h)) if h.owner != owner)
    }

    /// The fencing number of the lock held on `ino`, if any.
    pub fn fence(&self, ino: u64) -> Option<u64> {
        self.table.lock().unwrap().get(&ino).copied().flatten().map(|h| h.fence)
    }

    /// Gives the lock back if `owner` holds it; the lease passes on. The caller has
    /// flushed the file's data first.
    pub fn unlock(&self, ino: u64, key: &[u8], owner: u64) -> bool {
        let mut t = self.table.lock().unwrap();
        if !matches!(t.get(&ino), Some(Some(h)) if h.owner == owner) {
            return false;
        }
        t.remove(&ino);
        self.lease.release(key);
        self.changed.notify_all();
        true
    }
}
