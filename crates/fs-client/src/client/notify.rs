//! Change notices on the client's side: what a notice drops from our caches (and which
//! kernel caches the notifier thread must then drop), and the promise: while subscribed
//! and caught up, what we cached is valid until a notice says otherwise, up to
//! `callback` (the AFS callback), so the kernel may keep it that long and `open` needs
//! no round trip.
//!
//! A reply can predate a notice that arrives before it (the server read the attributes,
//! then another client changed the object, and the notice overtook the reply on the
//! wire). So a call records the notice number it was sent under ([`Mark`]); its reply is
//! promised only if no notice touched its objects since.

use super::Client;
use fs_proto::{Attr, Change, FileKind, Notice};
use std::time::{Duration, Instant};

/// What the kernel must drop (done by the notifier thread, outside every lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    /// Attributes and pages of a node.
    Inode(u64),
    /// A name in a directory node (positive or negative).
    Entry(u64, Vec<u8>),
}

#[derive(Debug, Default)]
pub(super) struct NoticeView {
    live: bool,
    /// Bumped whenever the promise lapses (disconnect, everything dropped).
    epoch: u64,
    applied: u64,
    instance: Option<u64>,
    /// Bumped before and after each change of ours (every call that changes something,
    /// WRITEs and COMMITs included); see [`Client::promised_file_attr`].
    own_changes: u64,
}

/// The notice state a call was sent under.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    epoch: u64,
    applied: u64,
    own_changes: u64,
}

impl Mark {
    pub(super) fn own_changes(&self) -> u64 {
        self.own_changes
    }

    /// The last notice applied when it was taken.
    pub(super) fn applied(&self) -> u64 {
        self.applied
    }
}

/// Whether no notice touched `inos` since `m` was taken.
pub(super) fn untouched(t: &crate::inodes::Inodes, inos: &[u64], m: Mark) -> bool {
    inos.iter().all(|ino| t.get(*ino).is_none_or(|n| n.notice_seq <= m.applied))
}

impl Client {
    /// Taken before a call whose reply may be promised.
    pub(super) fn mark(&self) -> Option<Mark> {
        let v = self.notice.lock().unwrap();
        (self.opts.notify && v.live).then_some(Mark { epoch: v.epoch, applied: v.applied, own_changes: v.own_changes })
    }

    /// The gate for an answer sent under `mark` (see [`super::Gate`]); when the notifier
    /// holds it, the answer is treated as suspect.
    pub(super) fn gate(&self, mark: Option<Mark>) -> (Option<Mark>, super::Gate) {
        if mark.is_none() {
            return (None, None);
        }
        match self.gate.clone().try_read_owned() {
            Ok(g) => (mark, Some(std::sync::Arc::new(g))),
            Err(_) => (Some(Mark { epoch: u64::MAX, applied: 0, own_changes: 0 }), None),
        }
    }

    /// Whether the subscription has held without a lapse since `m` was taken.
    pub(super) fn notice_unbroken(&self, m: Mark) -> bool {
        let v = self.notice.lock().unwrap();
        v.live && v.epoch == m.epoch
    }

    /// Whether a reply to a call sent under `mark` about `inos` is covered by the
    /// promise (`Some(true)`: still subscribed without a lapse, and no notice touched them
    /// since), is suspect (`Some(false)`: a notice touched them after the call was sent,
    /// so the reply may predate it), or neither (`None`: not subscribed when sent).
    pub fn promised(&self, mark: Option<Mark>, inos: &[u64]) -> Option<bool> {
        let m = mark?;
        if !self.notice_unbroken(m) {
            return Some(false);
        }
        Some(untouched(&self.inodes.lock().unwrap(), inos, m))
    }

    /// How long the kernel may keep `attr` of `ino`: the callback bound when promised;
    /// nothing when suspect; else the adaptive timeout.
    pub(super) fn kernel_ttl(&self, mark: Option<Mark>, ino: u64, attr: &Attr) -> Duration {
        let (ttl, promise) = self.cache_ttl(mark, &[ino], attr);
        if promise == Some(true) {
            if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                n.promised_until = Some(Instant::now() + ttl);
                n.promised_own = mark.map_or(0, |m| m.own_changes);
            }
        }
        ttl
    }

    /// How long an answer about `inos` (sent under `mark`; `attr` the object's) may be
    /// kept: the callback bound when promised; nothing when suspect or under `noac`;
    /// else the adaptive timeout. With the promise found (`None` under `noac`).
    pub(super) fn cache_ttl(&self, mark: Option<Mark>, inos: &[u64], attr: &Attr) -> (Duration, Option<bool>) {
        self.ttl_under(self.attr_ttl(attr), || self.promised(mark, inos))
    }

    /// [`Client::cache_ttl`] from the adaptive timeout and the promise (asked only when
    /// something may be cached at all).
    pub(super) fn ttl_under(
        &self,
        adaptive: Duration,
        promise: impl FnOnce() -> Option<bool>,
    ) -> (Duration, Option<bool>) {
        if adaptive.is_zero() {
            return (adaptive, None); // noac: nothing is cached, promise or not
        }
        let promise = promise();
        let ttl = match promise {
            None => adaptive,
            Some(false) => Duration::ZERO,
            Some(true) => adaptive.max(self.opts.callback),
        };
        (ttl, promise)
    }

    /// Cached attributes of `ino` if the promise covers them (for `open`).
    pub(super) fn promised_attr(&self, ino: u64) -> Option<Attr> {
        if !self.notice.lock().unwrap().live {
            return None;
        }
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino)?;
        n.promised_until.filter(|&u| Instant::now() < u).map(|_| n.attr)
    }

    /// Cached attributes of a file that `getattr` may answer with, no round trip: under
    /// the promise, asked for after our last change of anything, with no access time the
    /// server may have moved since we hold them (`atime_due`), and none of our data
    /// buffered. Changes of ours are not told by notices, and their replies may come in
    /// any order (a background COMMIT's attributes from before a `chmod` answered first)
    /// or bring no attributes of what they changed (a REMOVE of one of a file's links
    /// changes its link count): after one, files ask again until the next promise. The
    /// kernel asks after every read (it drops the access time it holds): `tar c` and
    /// `cp -p` ask for each file they read. With how long the promise has left.
    pub(super) fn promised_file_attr(&self, ino: u64) -> Option<(Attr, Duration)> {
        if let Some(f) = self.files.lock().unwrap().get(&ino) {
            let wb = f.wb.lock().unwrap();
            if !wb.dirty.is_empty() {
                return None;
            }
        }
        let own_changes = {
            let v = self.notice.lock().unwrap();
            if !v.live {
                return None;
            }
            v.own_changes
        };
        let t = self.inodes.lock().unwrap();
        let n = t.get(ino)?;
        let left = n.promised_until?.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
        // (Folders keep their own rule in `getattr`.)
        let file = n.attr.kind != FileKind::Directory;
        (file && n.promised_own == own_changes && !n.atime_due).then_some((n.attr, left))
    }

    /// Before a change of ours is sent and after its reply (see
    /// [`Self::promised_file_attr`]).
    pub(super) fn own_change(&self) {
        self.notice.lock().unwrap().own_changes += 1;
    }

    /// The promise lapsed (the connection went away): nothing is promised until the
    /// next subscription is caught up.
    pub fn notices_lapsed(&self) {
        {
            let mut v = self.notice.lock().unwrap();
            v.live = false;
            v.epoch += 1;
        }
        self.known_forget();
    }

    /// Subscribed and caught up to `applied`.
    pub fn notices_live(&self, instance: u64, applied: u64) {
        let mut v = self.notice.lock().unwrap();
        v.live = true;
        v.instance = Some(instance);
        v.applied = applied;
    }

    /// Applies one notice to our caches; returns what the kernel must drop. Our own
    /// changes are skipped: their replies already brought the new attributes.
    pub fn apply_notice(&self, n: &Notice) -> Vec<Inval> {
        if n.client == self.rpc.client_id() {
            // Ours: nothing to drop, and no answer of ours to hold back.
            self.notice.lock().unwrap().applied = n.seq;
            self.notice_applied.notify_waiters();
            return Vec::new();
        }
        let _gate = self.gate.blocking_write();
        let mut out = Vec::new();
        let mut objects = false;
        let mut names = Vec::new();
        {
            let now = Instant::now();
            let mut t = self.inodes.lock().unwrap();
            for c in &n.changes {
                match c {
                    Change::Object { fh, change } => {
                        objects = true;
                        let Some(ino) = t.ino_of(fh) else { continue };
                        let node = t.get_mut(ino).expect("indexed");
                        if change.is_some_and(|c| c == node.attr.change && c == node.data_change) {
                            continue; // what we hold is already this (a COMMIT, say)
                        }
                        node.notice_seq = n.seq;
                        node.promised_until = None;
                        node.no_caps_until = None;
                        node.attr_valid_until = now;
                        out.push(Inval::Inode(ino));
                    }
                    Change::Entry { dir, name } => {
                        let Some(ino) = t.ino_of(dir) else { continue };
                        let node = t.get_mut(ino).expect("indexed");
                        node.notice_seq = n.seq;
                        node.promised_until = None;
                        out.push(Inval::Entry(ino, name.clone()));
                        names.push((ino, name.clone()));
                    }
                }
            }
        }
        // A folder whose names changed: the kernel's copy of its listing goes too, even
        // when the folder's attributes we hold were already current.
        let dirs: Vec<u64> =
            out.iter().filter_map(|i| if let Inval::Entry(d, _) = i { Some(*d) } else { None }).collect();
        for d in dirs {
            if !out.contains(&Inval::Inode(d)) {
                out.push(Inval::Inode(d));
            }
        }
        if objects {
            // A kept listing may hold the object's attributes, whether or not the kernel
            // knows the object.
            self.listings.lock().unwrap().clear();
        }
        for i in &out {
            if let Inval::Inode(ino) = i {
                self.invalidate(*ino, 0, u64::MAX);
            }
        }
        self.names_changed(n.seq, &names);
        self.notice.lock().unwrap().applied = n.seq;
        self.notice_applied.notify_waiters();
        out
    }

    /// Notices were missed: every cached attribute, name and page goes.
    pub fn drop_all(&self) -> Vec<Inval> {
        let _gate = self.gate.blocking_write();
        self.notices_lapsed();
        self.names_all_changed();
        let now = Instant::now();
        let mut out = Vec::new();
        {
            let mut t = self.inodes.lock().unwrap();
            for (ino, n) in t.nodes_mut() {
                n.promised_until = None;
                n.no_caps_until = None;
                n.attr_valid_until = now;
                out.push(Inval::Inode(ino));
                out.extend(n.names.iter().map(|(p, name)| Inval::Entry(*p, name.clone())));
            }
        }
        for i in &out {
            if let Inval::Inode(ino) = i {
                self.invalidate(*ino, 0, u64::MAX);
            }
        }
        out
    }

    /// `fs-client status`'s line on notices.
    pub(super) fn notice_status(&self) -> String {
        let v = self.notice.lock().unwrap();
        match (self.opts.notify, v.live, v.instance) {
            (false, _, _) => "notices off (nonotify): attribute timeouts only\n".into(),
            (true, true, Some(i)) => {
                format!("notices subscribed, server instance {i:016x}, last applied {}\n", v.applied)
            }
            (true, _, _) => "notices NOT SUBSCRIBED (reconnecting or catching up): attribute timeouts only\n".into(),
        }
    }

    /// Waits until a notice numbered after `after` is applied, or `limit` passes; returns
    /// the last applied and whether notices are followed at all (the spool watcher's
    /// wake-up: it scans as soon as anything changed, instead of on an interval).
    pub async fn wait_notice(&self, after: u64, limit: Duration) -> (u64, bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let woken = self.notice_applied.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (applied, live) = {
                let v = self.notice.lock().unwrap();
                (v.applied, v.live)
            };
            if applied > after || !live {
                return (applied, live);
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return (applied, live);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_proto::{FileHandle, FileKind};

    /// The promise decision: an answer to a call sent before a notice about its object
    /// was applied is suspect (the kernel must not cache it at all, not even for the
    /// adaptive timeout: it may predate the change); one sent after is promised for the
    /// callback bound; without a subscription the adaptive timeout applies; and while
    /// the notifier holds the gate, an answer is suspect too.
    #[test]
    fn an_answer_that_may_predate_a_notice_is_not_cached() {
        let (_dir, _rt, c) = crate::testutil::client(7);
        let attr = crate::testutil::attr(FileKind::Directory, 2, 0);
        let root = crate::inodes::ROOT;
        assert_eq!(c.kernel_ttl(c.mark(), root, &attr), Duration::from_secs(60), "not subscribed: adaptive");
        c.notices_live(9, 0);
        let before = c.mark();
        assert_eq!(c.kernel_ttl(before, root, &attr), Duration::from_secs(300), "promised: the callback bound");
        let other =
            Notice { seq: 1, client: 8, changes: vec![Change::Object { fh: FileHandle(vec![1]), change: None }] };
        assert_eq!(c.apply_notice(&other), vec![Inval::Inode(root)]);
        assert_eq!(c.kernel_ttl(before, root, &attr), Duration::ZERO, "sent before the notice: suspect");
        assert_eq!(c.kernel_ttl(c.mark(), root, &attr), Duration::from_secs(300), "sent after it: promised");
        let own = Notice { seq: 2, client: 7, changes: other.changes.clone() };
        assert!(c.apply_notice(&own).is_empty(), "our own change: its reply told us already");
        let held = c.gate.clone().try_write_owned().unwrap();
        let (mark, gate) = c.gate(c.mark());
        assert!(gate.is_none());
        assert_eq!(c.kernel_ttl(mark, root, &attr), Duration::ZERO, "the notifier is applying: suspect");
        drop(held);
        c.notices_lapsed();
        assert_eq!(c.kernel_ttl(c.mark(), root, &attr), Duration::from_secs(60), "lapsed: adaptive");
    }
}
