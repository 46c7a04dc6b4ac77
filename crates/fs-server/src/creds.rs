//! Acting as the caller: each operation runs with the caller's uid, gid and groups as the
//! thread's file system identity, so the kernel makes every permission decision exactly
//! as it would for that user on a local disk.
//!
//! The switch is per thread (see [`sys::set_fs_identity`]), so operations of different
//! users run concurrently on the blocking pool without seeing each other's identity. The
//! guard restores the server's own identity on drop, panics included. While a non-root
//! identity is assumed the kernel masks the file system capabilities, among them
//! `CAP_DAC_READ_SEARCH`: handles are therefore opened *before* assuming the caller.

use crate::sys;
use fs_proto::{Cred, Errno};
use std::marker::PhantomData;

/// Nobody, the identity squashed root requests get (as knfsd's default anonuid).
pub const NOBODY: u32 = 65534;

/// How the server maps callers to identities.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Whether the server can switch at all (it has `CAP_SETUID`/`CAP_SETGID`).
    pub switch: bool,
    pub root_squash: bool,
    /// The server's own identity, restored after each operation.
    pub own_uid: u32,
    pub own_gid: u32,
}

impl Identity {
    /// Probes whether this process may switch identities.
    pub fn probe(root_squash: bool) -> Identity {
        let (own_uid, own_gid) = (sys::geteuid(), sys::getegid());
        // On a thread of its own: a change of the file system identity clears the
        // calling thread's parent-death signal (prctl PR_SET_PDEATHSIG, which supervisors
        // such as `cluster up` and the tests set), and the main thread's is the one that
        // counts.
        let switch = std::thread::spawn(move || {
            let switch = sys::set_fs_identity(NOBODY, NOBODY, &[]).is_ok();
            let _ = sys::set_fs_identity(own_uid, own_gid, &[]);
            switch
        })
        .join()
        .unwrap_or(false);
        Identity { switch, root_squash, own_uid, own_gid }
    }

    /// Assumes `cred` for the current thread until the guard drops.
    pub fn assume(&self, cred: &Cred) -> Result<CredGuard, Errno> {
        let squash = |id: u32| if self.root_squash && id == 0 { NOBODY } else { id };
        let guard = CredGuard {
            id: *self,
            uid: squash(cred.uid),
            gid: squash(cred.gid),
            groups: cred.groups.iter().take(64).map(|&g| squash(g)).collect(),
            _thread_bound: PhantomData,
        };
        if self.switch {
            guard.enter()?;
        }
        Ok(guard)
    }
}

/// The caller's identity is in force on this thread while this lives.
pub struct CredGuard {
    id: Identity,
    /// The identity in force (after squashing).
    pub uid: u32,
    gid: u32,
    groups: Vec<u32>,
    // Not Send: the identity belongs to the thread that assumed it.
    _thread_bound: PhantomData<*const ()>,
}

impl CredGuard {
    /// Runs `f` with the server's own identity, then re-assumes the caller's. Used for
    /// the owner override (a file's owner may read and write it whatever its mode, as
    /// knfsd allows, since the client checked permission at open).
    pub fn as_server<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.id.switch {
            return f();
        }
        self.leave();
        let out = f();
        if self.enter().is_err() {
            std::process::abort();
        }
        out
    }

    fn enter(&self) -> Result<(), Errno> {
        sys::set_fs_identity(self.uid, self.gid, &self.groups).map_err(|e| {
            tracing::error!("cannot assume uid {}: {e}", self.uid);
            Errno::EPERM
        })
    }

    fn leave(&self) {
        if let Err(e) = sys::set_fs_identity(self.id.own_uid, self.id.own_gid, &[]) {
            // Continuing would run later operations with a stranger's identity.
            tracing::error!("cannot restore the server's identity: {e}; aborting");
            std::process::abort();
        }
    }
}

impl Drop for CredGuard {
    fn drop(&mut self) {
        if self.id.switch {
            self.leave();
        }
    }
}
