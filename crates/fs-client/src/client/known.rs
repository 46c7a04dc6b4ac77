//! Every name of a directory this mount made, kept through its own changes: a LOOKUP of
//! a name it does not hold is answered "no such file" without a round trip while the
//! promise covers the directory (untar and `create` look each new name up before making
//! it: one round trip of five saved per file).
//!
//! Only our own changes update it, and only when the reply's pre-change attributes show
//! the directory as we left it (weak cache consistency): a change made elsewhere between
//! two of ours, a failed change, a notice touching the directory, or a lapse of the
//! promise ends what we know of it.

use super::notify::Mark;
use super::Client;
use fs_proto::{FileHandle, Request, Response, Timespec, Wcc, RENAME_EXCHANGE};
use std::collections::HashSet;

/// What this mount knows of one directory.
pub struct Known {
    /// The directory's ctime after our last change (pre-change attributes must match).
    ctime: Timespec,
    /// The promise it is known under.
    mark: Option<Mark>,
    names: HashSet<Vec<u8>>,
}

/// Names of one directory a call changes, each with whether it is there after it.
type DirChanges<'a> = (&'a FileHandle, Vec<(&'a [u8], bool)>);

/// The names a call changes, per directory.
fn changes(req: &Request) -> Vec<DirChanges<'_>> {
    match req {
        Request::Create { dir, name, .. }
        | Request::Mkdir { dir, name, .. }
        | Request::Symlink { dir, name, .. }
        | Request::Mknod { dir, name, .. }
        | Request::Link { dir, name, .. } => vec![(dir, vec![(name, true)])],
        Request::Remove { dir, name } | Request::Rmdir { dir, name } => vec![(dir, vec![(name, false)])],
        Request::Rename { from_dir, from, to_dir, to, flags } => {
            let exchange = flags & RENAME_EXCHANGE != 0;
            if from_dir == to_dir {
                vec![(from_dir, vec![(from, exchange), (to, true)])]
            } else {
                vec![(from_dir, vec![(from, exchange)]), (to_dir, vec![(to, true)])]
            }
        }
        _ => Vec::new(),
    }
}

/// The reply's weak cache consistency data for the `i`-th directory of [`changes`].
fn wcc(res: &Response, i: usize) -> Option<&Wcc> {
    match (res, i) {
        (Response::Created { dir, .. }, 0) | (Response::Link { dir, .. }, 0) | (Response::Wcc(dir), 0) => Some(dir),
        (Response::Rename { from, .. }, 0) => Some(from),
        (Response::Rename { to, .. }, 1) => Some(to),
        _ => None,
    }
}

impl Client {
    /// A directory we just made (with `mark` taken before the call): it is empty.
    pub(super) fn know_new_dir(&self, ino: u64, ctime: Timespec, mark: Option<Mark>) {
        if mark.is_some() {
            self.known.lock().unwrap().put(ino, Known { ctime, mark, names: HashSet::new() });
        }
    }

    /// Whether `name` is known not to be in directory `dir`.
    pub(super) fn known_absent(&self, dir: u64, name: &[u8]) -> bool {
        let mark = {
            let t = self.inodes.lock().unwrap();
            let mut known = self.known.lock().unwrap();
            match (known.get(&dir), t.get(dir)) {
                // As our last change left it, and the name not among its names.
                (Some(k), Some(n)) if n.attr.ctime == k.ctime && !k.names.contains(name) => k.mark,
                _ => return false,
            }
        };
        self.promised(mark, &[dir]) == Some(true)
    }

    /// After a call of ours: the names it changed, in the directories we know.
    pub(super) fn known_after(&self, req: &Request, res: &Result<Response, fs_proto::Errno>) {
        let changes = changes(req);
        if changes.is_empty() {
            return;
        }
        let inos: Vec<Option<u64>> = {
            let t = self.inodes.lock().unwrap();
            changes.iter().map(|(dir, _)| t.ino_of(dir)).collect()
        };
        let mut known = self.known.lock().unwrap();
        for (i, ((_, names), ino)) in changes.iter().zip(inos).enumerate() {
            let Some(ino) = ino else { continue };
            let Some(k) = known.get_mut(&ino) else { continue };
            match res.as_ref().ok().and_then(|r| wcc(r, i)) {
                Some(Wcc { before: Some(b), after: Some(a) }) if b.ctime == k.ctime => {
                    for (name, present) in names {
                        if *present {
                            k.names.insert(name.to_vec());
                        } else {
                            k.names.remove(*name);
                        }
                    }
                    k.ctime = a.ctime;
                }
                // Changed elsewhere meanwhile, failed, or no attributes: forgotten.
                _ => {
                    known.pop(&ino);
                }
            }
        }
    }

    /// Forgets every directory (the promise lapsed).
    pub(super) fn known_forget(&self) {
        self.known.lock().unwrap().clear();
    }
}
