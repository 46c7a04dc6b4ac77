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

use coord::lease::LeaseClient;
use fs_proto::Errno;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A lock here: its owner (the kernel's lock owner: a process's POSIX locks, or one open
/// file's flock) and the open file (`fh`) it was taken through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Asked the node and waits. `abandoned`: its process closed the file (or died)
    /// meanwhile, so the lease is given back the moment it comes.
    Asking {
        owner: u64,
        fh: u64,
        abandoned: bool,
    },
    Held {
        owner: u64,
        fh: u64,
        fence: u64,
    },
}

impl State {
    /// Whether a release by `owner` (through open file `fh`, when given) concerns this
    /// lock. The kernel sends a closed file's RELEASE late, and the next open file may
    /// have the same owner value (a reused address): matching the open file as well
    /// keeps a late RELEASE from dropping the next file's lock.
    fn concerns(&self, owner: u64, fh: Option<u64>) -> bool {
        let (o, f) = match *self {
            State::Asking { owner, fh, .. } | State::Held { owner, fh, .. } => (owner, fh),
        };
        o == owner && fh.is_none_or(|x| x == f)
    }
}

pub struct Locks {
    lease: LeaseClient,
    table: Mutex<HashMap<u64, State>>,
    changed: Condvar,
}

impl Locks {
    pub fn new(lease: LeaseClient) -> Locks {
        Locks { lease, table: Mutex::new(HashMap::new()), changed: Condvar::new() }
    }

    /// Takes the lock on `ino` (lease `key`) for `owner` through open file `fh`; waits if
    /// `wait`, else EAGAIN when someone else holds it. Returns the grant's fencing
    /// number. A wait ends with EINTR as soon as `interrupted()` says the caller got a
    /// signal (checked every 100 ms: fuser does not pass the kernel's INTERRUPT on, and
    /// without an answer the caller could not even be killed).
    pub fn lock(
        &self,
        ino: u64,
        key: &[u8],
        owner: u64,
        fh: u64,
        wait: bool,
        interrupted: impl Fn() -> bool,
    ) -> Result<u64, Errno> {
        let mut t = self.table.lock().unwrap();
        loop {
            match t.get(&ino) {
                Some(State::Held { owner: o, fence, .. }) if *o == owner => return Ok(*fence), // already ours
                Some(_) if !wait => return Err(Errno::EAGAIN),
                Some(_) if interrupted() => return Err(Errno::EINTR),
                Some(_) => t = self.changed.wait_timeout(t, Duration::from_millis(100)).unwrap().0,
                None => break,
            }
        }
        // Reserve the file here while we ask the node (other local owners wait).
        t.insert(ino, State::Asking { owner, fh, abandoned: false });
        drop(t);
        let abandoned = || matches!(self.table.lock().unwrap().get(&ino), Some(State::Asking { abandoned: true, .. }));
        let granted = self.lease.acquire_unless(key, wait, || interrupted() || abandoned());
        let gave_up = abandoned();
        let mut t = self.table.lock().unwrap();
        let result = match granted {
            Some(fence) if !gave_up => {
                t.insert(ino, State::Held { owner, fh, fence });
                return Ok(fence);
            }
            Some(_) => {
                self.lease.release(key);
                Err(Errno::EINTR)
            }
            // (A grant that comes after we gave up is handed straight back.)
            None if wait => Err(Errno::EINTR),
            None => Err(Errno::EAGAIN),
        };
        t.remove(&ino);
        self.changed.notify_all();
        result
    }

    /// Whether a release by `owner` (through `fh`, if given) concerns the lock on `ino`.
    /// Leases held here, (node id, fencing number), and how many are being asked for.
    pub fn held(&self) -> (Vec<(u64, u64)>, usize) {
        let t = self.table.lock().unwrap();
        let mut held: Vec<(u64, u64)> = t
            .iter()
            .filter_map(|(&ino, s)| match s {
                State::Held { fence, .. } => Some((ino, *fence)),
                State::Asking { .. } => None,
            })
            .collect();
        held.sort_unstable();
        let asking = t.len() - held.len();
        (held, asking)
    }

    pub fn involves(&self, ino: u64, owner: u64, fh: Option<u64>) -> bool {
        self.table.lock().unwrap().get(&ino).is_some_and(|st| st.concerns(owner, fh))
    }

    /// Another owner holding the lock on `ino`, if any.
    pub fn other_holder(&self, ino: u64, owner: u64) -> bool {
        matches!(self.table.lock().unwrap().get(&ino), Some(State::Held { owner: o, .. }) if *o != owner)
    }

    /// Gives the lock back if it is `owner`'s (through `fh`, if given): the lease passes
    /// on; the caller has flushed the file's data first. If it is still being asked for,
    /// the wait is abandoned: its process closed the file, so the lease goes back when it
    /// comes.
    pub fn unlock(&self, ino: u64, key: &[u8], owner: u64, fh: Option<u64>) -> bool {
        let mut t = self.table.lock().unwrap();
        let Some(st) = t.get_mut(&ino).filter(|st| st.concerns(owner, fh)) else { return false };
        match st {
            State::Held { .. } => {
                t.remove(&ino);
                self.lease.release(key);
                self.changed.notify_all();
                true
            }
            State::Asking { abandoned, .. } => {
                *abandoned = true;
                false
            }
        }
    }
}

/// Whether process `pid` has a signal pending that it does not block (read from
/// `/proc/PID/status`); a process that is gone counts as signalled.
pub fn signal_pending(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:") != 0
}
