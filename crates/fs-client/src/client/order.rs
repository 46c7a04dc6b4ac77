//! Names in the server's order. Change notices drop what they make stale from our tables
//! at once, but from the kernel's caches a moment later (the notifier thread's
//! `inval_entry`, which takes the directory's lock and so cannot be waited for by an
//! answer the kernel is waiting for in that directory). Without more, a process could be
//! told of a later change (a fresh answer) while the kernel still holds the name an
//! earlier change removed, and see `b` after its rename to `c`. While the mount follows
//! the notices, every answer about a name (LOOKUP, and a listing's first page) therefore
//! goes to the kernel only when:
//!
//! 1. the notifier has applied every notice pushed before the reply it was built from
//!    (the server sends a reading of names only after the notices of the changes it may
//!    show: [`Client::caught_up`]);
//! 2. no notice applied since the call was sent changed the name (else it may predate
//!    that change, and the call is made again);
//! 3. the kernel holds no name that an applied notice changed: if some drop is still to
//!    come, the kernel's names are all made stale at once (`FUSE_NOTIFY_INC_EPOCH`, Linux
//!    6.16: it takes no lock; a name looked up again is answered from our tables);
//!
//! all while holding the gate, so that no notice is applied between the checks and the
//! kernel receiving the answer. Without the epoch notification (an older kernel) step 3
//! is skipped and the old names stay until the notifier drops them (measured: under 4 ms).

use super::{Caller, Client, Entry, Gate};
use fs_proto::Errno;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Names changed by recent notices kept for the check of step 2; a call sent before the
/// oldest of them is made again.
const RECENT: usize = 4096;

/// How often an answer is made again because a notice changed its name meanwhile, at
/// most, before it is given as it is (a name changed faster than a round trip, forever).
const AGAIN: usize = 32;

/// The longest an answer waits for the notifier (a notifier that is itself waiting, for
/// a reconnect, should not hold lookups up for longer).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct Order {
    /// Pushes the notifier has applied (compared with [`crate::rpc::Rpc::pushes_received`]).
    processed: AtomicU64,
    progressed: tokio::sync::Notify,
    /// Notices with names to drop from the kernel: applied to our tables, dropped from
    /// the kernel's by the notifier, covered by an epoch.
    names_due: AtomicU64,
    names_dropped: AtomicU64,
    names_covered: AtomicU64,
    /// (notice number, directory node, name) of recent changes of names by others.
    recent: Mutex<VecDeque<(u64, u64, Vec<u8>)>>,
    /// The oldest notice number `recent` is complete from.
    recent_from: AtomicU64,
    /// `/dev/fuse` of this mount, to write the epoch notification to.
    device: OnceLock<OwnedFd>,
    no_epochs: AtomicBool,
    /// Epochs begun (`status`), and answers made again.
    epochs: AtomicU64,
    again: AtomicU64,
}

impl Client {
    /// The mount's `/dev/fuse` (a duplicate of the session's descriptor).
    pub fn set_device(&self, fd: OwnedFd) {
        let _ = self.order.device.set(fd);
    }

    /// The notifier applied one more push.
    pub fn push_processed(&self) {
        self.order.processed.fetch_add(1, SeqCst);
        self.order.progressed.notify_waiters();
    }

    /// Waits until the notifier has applied every push received so far (or
    /// [`CATCH_UP_LIMIT`] passed).
    pub(super) async fn caught_up(&self) {
        let target = self.rpc.pushes_received();
        let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
        loop {
            let woken = self.order.progressed.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.order.processed.load(SeqCst) >= target {
                return;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                tracing::debug!("the notifier is behind; answering anyway");
                return;
            }
        }
    }

    /// Under the gate's write lock, with a notice of another mount applied: the names it
    /// changed (`(directory node, name)`), which the kernel is still to drop if there are
    /// any ([`Client::names_dropped`] follows then).
    pub(super) fn names_changed(&self, seq: u64, names: &[(u64, Vec<u8>)]) {
        let mut r = self.order.recent.lock().unwrap();
        for (dir, name) in names {
            if r.len() == RECENT {
                if let Some((s, _, _)) = r.pop_front() {
                    self.order.recent_from.store(s, SeqCst);
                }
            }
            r.push_back((seq, *dir, name.clone()));
        }
        if !names.is_empty() {
            self.order.names_due.fetch_add(1, SeqCst);
        }
    }

    /// Everything cached was dropped (a gap, a new server, whose numbers start again):
    /// every name the kernel holds is to go. (A call sent before is told by its mark,
    /// whose subscription lapsed.)
    pub(super) fn names_all_changed(&self) {
        self.order.recent.lock().unwrap().clear();
        self.order.recent_from.store(0, SeqCst);
        self.order.names_due.fetch_add(1, SeqCst);
    }

    /// The notifier dropped from the kernel the names of the oldest notice still due.
    pub fn names_dropped(&self) {
        self.order.names_dropped.fetch_add(1, SeqCst);
    }

    /// Whether a notice numbered after `after` changed `name` in `dir`, as far as the
    /// recent ones tell (all of them, for a call older than those).
    pub(super) fn name_changed_since(&self, dir: u64, name: &[u8], after: u64) -> bool {
        if self.order.recent_from.load(SeqCst) > after {
            return true;
        }
        let r = self.order.recent.lock().unwrap();
        r.iter().rev().take_while(|(s, _, _)| *s > after).any(|(_, d, n)| *d == dir && n == name)
    }

    /// With the gate held: makes every name the kernel holds stale if some change of a
    /// name applied to our tables has not been dropped from the kernel's yet.
    pub(super) fn kernel_names_current(&self) {
        let o = &self.order;
        let due = o.names_due.load(SeqCst);
        if o.names_dropped.load(SeqCst).max(o.names_covered.load(SeqCst)) >= due || o.no_epochs.load(SeqCst) {
            return;
        }
        let Some(dev) = o.device.get() else { return };
        // struct fuse_out_header { len: u32, error: i32 (the notification), unique: u64 }
        const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
        let mut msg = [0u8; 16];
        msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
        msg[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        // SAFETY: a write of a buffer we own to a descriptor we own.
        let n = unsafe { libc::write(dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n == msg.len() as isize {
            o.names_covered.fetch_max(due, SeqCst);
            o.epochs.fetch_add(1, SeqCst);
        } else {
            let e = std::io::Error::last_os_error();
            if !o.no_epochs.swap(true, SeqCst) {
                tracing::warn!(
                    "the kernel refuses FUSE_NOTIFY_INC_EPOCH ({e}; Linux 6.16 or later has it): \
                     a name another mount changed may be seen for a moment after a later change"
                );
            }
        }
    }

    /// A LOOKUP answered in the server's order (see the module doc), with the gate to
    /// hold until the kernel has the answer.
    pub async fn lookup_in_order(
        self: &Arc<Self>,
        c: Caller,
        parent: u64,
        name: &[u8],
    ) -> (Result<Entry, Errno>, Gate) {
        if !self.opts.lookup_cache {
            // Every lookup is the server's answer as it is then (and the kernel keeps no
            // name): in order already.
            return (self.lookup(c, parent, name).await, None);
        }
        let mut again = 0;
        loop {
            if self.mark().is_none() {
                // Not following notices (yet): no order to keep, and nothing to wait for
                // (a notifier subscribing again may be waiting on the server).
                return (self.lookup(c, parent, name).await, None);
            }
            self.caught_up().await;
            let Some(mark) = self.mark() else {
                return (self.lookup(c, parent, name).await, None);
            };
            let mut res = self.lookup(c, parent, name).await;
            if let Ok(e) = &mut res {
                // Ours replaces it (a second hold of the gate would wait behind the
                // notifier, which waits for the first).
                e.gate = None;
            }
            self.caught_up().await;
            let gate = self.gate.clone().read_owned().await;
            let changed = !self.notice_unbroken(mark) || self.name_changed_since(parent, name, mark.applied());
            if let Ok(e) = &mut res {
                if self.promised(Some(mark), &[e.ino, parent]) == Some(false) {
                    // A notice about it came while the gate was not held: the answer
                    // may predate it, as the kernel must not keep it.
                    e.attr_ttl = Duration::ZERO;
                    e.entry_ttl = Duration::ZERO;
                }
            }
            if changed && again < AGAIN {
                drop(gate);
                if let Ok(e) = &res {
                    // The kernel never gets this one.
                    self.forget(e.ino, 1);
                }
                again += 1;
                self.order.again.fetch_add(1, SeqCst);
                continue;
            }
            self.kernel_names_current();
            return (res, Some(Arc::new(gate)));
        }
    }

    /// A listing's first page for the open `fh` of `dir` in the server's order (the
    /// listing is read again if a notice touched the folder since it was read), with the
    /// gate to hold until the kernel has the page. Later pages come from the same
    /// listing, as the folder was at the first.
    pub async fn readdir_in_order(
        &self,
        dir: u64,
        fh: super::OpenNo,
        offset: u64,
    ) -> Result<(Arc<super::open::Listing>, Gate), Errno> {
        if offset != 0 || !self.opts.lookup_cache || self.mark().is_none() {
            return Ok((self.readdir(dir, fh, offset).await?, None));
        }
        let mut again = 0;
        loop {
            self.caught_up().await;
            let listing = self.readdir(dir, fh, offset).await?;
            self.caught_up().await;
            let gate = self.gate.clone().read_owned().await;
            if self.promised(listing.mark, &[dir]) == Some(false) && again < AGAIN {
                drop(gate);
                again += 1;
                self.order.again.fetch_add(1, SeqCst);
                continue;
            }
            self.kernel_names_current();
            return Ok((listing, Some(Arc::new(gate))));
        }
    }

    /// `fs-client status`'s line on the order of names.
    pub(super) fn order_status(&self) -> String {
        format!(
            "kernel name epochs {}\nanswers about names made again {}\n",
            self.order.epochs.load(SeqCst),
            self.order.again.load(SeqCst)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inodes::ROOT;
    use fs_proto::{Change, FileHandle, Notice};
    use std::io::Read;

    fn names(seq: u64, client: u64, names: &[&str]) -> Notice {
        let changes =
            names.iter().map(|n| Change::Entry { dir: FileHandle(vec![1]), name: n.as_bytes().to_vec() }).collect();
        Notice { seq, client, changes }
    }

    /// Step 2: a name another mount changed after a call was sent is told (that name
    /// only; not to a call sent after it; every name, to a call older than the names
    /// kept). Step 3: an answer begins an epoch (the 16-byte notification) exactly when
    /// a change of a name was applied here and not yet dropped from the kernel, and not
    /// again for the same drops; our own changes need none.
    #[test]
    fn a_changed_name_is_told_and_the_kernel_names_go_stale_only_while_a_drop_is_due() {
        let (_dir, _rt, c) = crate::testutil::client(7);
        let (mut rd, wr) = std::io::pipe().unwrap();
        c.set_device(wr.into());
        c.notices_live(9, 0);
        let before = c.mark().unwrap();
        c.kernel_names_current();
        assert_eq!(c.order.epochs.load(SeqCst), 0, "nothing due");

        assert!(c.apply_notice(&names(1, 8, &["b", "c"])).contains(&crate::client::Inval::Entry(ROOT, b"b".to_vec())));
        assert!(c.name_changed_since(ROOT, b"b", before.applied()));
        assert!(c.name_changed_since(ROOT, b"c", before.applied()));
        assert!(!c.name_changed_since(ROOT, b"d", before.applied()), "another name");
        assert!(!c.name_changed_since(ROOT, b"b", c.mark().unwrap().applied()), "a call sent after it");
        assert!(!c.name_changed_since(ROOT + 1, b"b", before.applied()), "another folder");

        c.kernel_names_current();
        let mut msg = [0u8; 16];
        rd.read_exact(&mut msg).unwrap();
        assert_eq!(msg[..8], [16, 0, 0, 0, 8, 0, 0, 0], "len 16, FUSE_NOTIFY_INC_EPOCH");
        assert_eq!(c.order.epochs.load(SeqCst), 1);
        c.kernel_names_current();
        assert_eq!(c.order.epochs.load(SeqCst), 1, "those drops are covered");
        c.names_dropped();
        c.kernel_names_current();
        assert_eq!(c.order.epochs.load(SeqCst), 1);

        c.apply_notice(&names(2, 8, &["d"]));
        c.names_dropped();
        c.kernel_names_current();
        assert_eq!(c.order.epochs.load(SeqCst), 1, "dropped by the notifier before any answer");
        c.apply_notice(&names(3, 7, &["e"]));
        c.kernel_names_current();
        assert_eq!(c.order.epochs.load(SeqCst), 1, "our own change: nothing to drop");
        assert!(!c.name_changed_since(ROOT, b"e", 2), "nor to tell");

        let old = c.mark().unwrap();
        for i in 0..=RECENT as u64 {
            c.apply_notice(&names(4 + i, 8, &["x"]));
            c.names_dropped();
        }
        assert!(c.name_changed_since(ROOT, b"y", old.applied()), "older than the names kept: every name");
        assert!(!c.name_changed_since(ROOT, b"y", old.applied() + 2));
    }
}
