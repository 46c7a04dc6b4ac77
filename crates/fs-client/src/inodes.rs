//! The inode table: FUSE node ids to server handles, with lookup counts.
//!
//! The kernel holds a reference per successful LOOKUP (and per READDIRPLUS entry, and per
//! CREATE/MKDIR/...); FORGET gives them back. An entry lives while the kernel holds a
//! reference or a file is open on it. The root is node 1 and is never forgotten.
//!
//! Node ids are the server's file ids (inode numbers), so `stat` shows stable numbers and
//! hard links share one; when a file id is still held by an older object (a deleted file
//! whose number the server's file system reused while we still hold it), the new object
//! gets a synthetic id above 2^63 instead. Pure data structure: times are passed in.

use fs_proto::{Attr, FileHandle};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const ROOT: u64 = 1;
const SYNTHETIC: u64 = 1 << 63;

#[derive(Clone, Debug)]
pub struct Node {
    pub fh: FileHandle,
    pub lookups: u64,
    /// Files open on this node (keeps it alive after FORGET; see silly rename).
    pub opens: u32,
    pub attr: Attr,
    /// Until when `attr` may be served without asking the server.
    pub attr_valid_until: Instant,
    /// The change attribute our cached data was read under (close-to-open).
    pub data_change: u64,
    /// The next read must reach the server, whose file system then updates the access
    /// time as `relatime` would (see `atime_due`).
    pub atime_due: bool,
    /// The number of the last change notice that touched this object (or its names, for
    /// a directory): a reply to a call sent before it may predate the change.
    pub notice_seq: u64,
    /// Until when `attr` is covered by the server's promise to tell us of changes (the
    /// AFS callback): `open` then needs no round trip.
    pub promised_until: Option<Instant>,
    /// Our changes counted when the promised attributes were asked for (see
    /// `Client::promised_file_attr`).
    pub promised_own: u64,
    /// Names the kernel may hold this object under (parent node, name), for dropping
    /// every name when notices were missed. At most [`NAMES`], the latest.
    pub names: Vec<(u64, Vec<u8>)>,
    /// Until when the server's answer that the file has no `security.capability` holds
    /// (see [`crate::client::Client::getxattr`]).
    pub no_caps_until: Option<Instant>,
    /// A directory's listing the kernel was last given from offset 0 by an open that
    /// let it keep what it lists (`FOPEN_CACHE_DIR`): the listing's number and its
    /// change attribute then. See `Client::opendir`.
    pub kernel_listing: Option<(u64, u64)>,
}

/// Names remembered per object (hard links beyond this are rare; a name forgotten here
/// only means the kernel revalidates it on its own timeout).
pub const NAMES: usize = 4;

impl Node {
    pub fn add_name(&mut self, parent: u64, name: &[u8]) {
        if self.names.iter().any(|(p, n)| *p == parent && n == name) {
            return;
        }
        if self.names.len() == NAMES {
            self.names.remove(0);
        }
        self.names.push((parent, name.to_vec()));
    }
}

/// Whether a read now would update the access time under `relatime` (the Linux default):
/// the access time is not after the last modification or change, or is a day old.
pub fn atime_due(attr: &Attr, now_sec: i64) -> bool {
    let (a, m, c) = (attr.atime, attr.mtime, attr.ctime);
    (a.sec, a.nsec) <= (m.sec, m.nsec) || (a.sec, a.nsec) <= (c.sec, c.nsec) || now_sec - a.sec >= 24 * 3600
}

pub struct Inodes {
    nodes: HashMap<u64, Node>,
    /// Sum of `opens` over all nodes (so `any_open` is O(1) on every unlink).
    open_files: u64,
    by_handle: HashMap<FileHandle, u64>,
    next_synthetic: u64,
}

impl Inodes {
    pub fn new(root: FileHandle, attr: Attr, now: Instant) -> Inodes {
        let mut t =
            Inodes { nodes: HashMap::new(), open_files: 0, by_handle: HashMap::new(), next_synthetic: SYNTHETIC };
        t.by_handle.insert(root.clone(), ROOT);
        t.nodes.insert(
            ROOT,
            Node {
                fh: root,
                lookups: 1,
                opens: 0,
                data_change: attr.change,
                atime_due: false,
                attr,
                attr_valid_until: now,
                notice_seq: 0,
                promised_until: None,
                promised_own: 0,
                names: Vec::new(),
                no_caps_until: None,
                kernel_listing: None,
            },
        );
        t
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn ino_of(&self, fh: &FileHandle) -> Option<u64> {
        self.by_handle.get(fh).copied()
    }

    /// Records that the kernel now holds one more reference to `fh` (a LOOKUP, CREATE,
    /// READDIRPLUS entry...). Returns its node id. Fresh attributes replace cached ones.
    pub fn lookup(&mut self, fh: &FileHandle, attr: Attr, ttl: Duration, now: Instant) -> u64 {
        if let Some(&ino) = self.by_handle.get(fh) {
            let n = self.nodes.get_mut(&ino).expect("indexed");
            n.lookups += 1;
            n.attr = attr;
            n.attr_valid_until = now + ttl;
            return ino;
        }
        let ino = if attr.fileid != ROOT && attr.fileid < SYNTHETIC && !self.nodes.contains_key(&attr.fileid) {
            attr.fileid
        } else {
            self.next_synthetic += 1;
            self.next_synthetic
        };
        self.by_handle.insert(fh.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                fh: fh.clone(),
                lookups: 1,
                opens: 0,
                data_change: attr.change,
                atime_due: false,
                attr,
                attr_valid_until: now + ttl,
                notice_seq: 0,
                promised_until: None,
                promised_own: 0,
                names: Vec::new(),
                no_caps_until: None,
                kernel_listing: None,
            },
        );
        ino
    }

    /// FORGET: the kernel drops `n` references. Returns true if the node was removed.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let Some(node) = self.nodes.get_mut(&ino) else { return false };
        node.lookups = node.lookups.saturating_sub(n);
        self.maybe_remove(ino)
    }

    pub fn open(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.opens += 1;
            self.open_files += 1;
        }
    }

    /// Returns true if the node was removed (no references and nothing open).
    pub fn release(&mut self, ino: u64) -> bool {
        if let Some(n) = self.nodes.get_mut(&ino) {
            if n.opens > 0 {
                n.opens -= 1;
                self.open_files -= 1;
            }
        }
        self.maybe_remove(ino)
    }

    fn maybe_remove(&mut self, ino: u64) -> bool {
        match self.nodes.get(&ino) {
            Some(n) if ino != ROOT && n.lookups == 0 && n.opens == 0 => {
                let n = self.nodes.remove(&ino).expect("present");
                self.by_handle.remove(&n.fh);
                true
            }
            _ => false,
        }
    }

    /// Marks every directory's cached attributes as expired.
    pub fn expire_directories(&mut self, now: Instant) {
        for n in self.nodes.values_mut() {
            if n.attr.kind == fs_proto::FileKind::Directory {
                n.attr_valid_until = now;
            }
        }
    }

    /// Every node, for dropping what is cached when notices were missed.
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = (u64, &mut Node)> {
        self.nodes.iter_mut().map(|(&ino, n)| (ino, n))
    }

    /// Whether any file is open on this mount (so unlink must check for silly renames).
    pub fn any_open(&self) -> bool {
        self.open_files > 0
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_proto::FileKind;
    use proptest::prelude::*;

    fn attr(fileid: u64) -> Attr {
        crate::testutil::attr(FileKind::Regular, fileid, 0)
    }

    fn fh(n: u8) -> FileHandle {
        FileHandle(vec![n])
    }

    #[test]
    fn root_is_one_and_stays() {
        let now = Instant::now();
        let mut t = Inodes::new(fh(0), attr(2), now);
        assert_eq!(t.ino_of(&fh(0)), Some(ROOT));
        assert!(!t.forget(ROOT, 100));
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn file_ids_become_node_ids_and_collisions_get_synthetic_ids() {
        let now = Instant::now();
        let mut t = Inodes::new(fh(0), attr(2), now);
        let a = t.lookup(&fh(1), attr(77), Duration::ZERO, now);
        assert_eq!(a, 77);
        assert_eq!(t.lookup(&fh(1), attr(77), Duration::ZERO, now), 77, "same handle, same node");
        // A new object reusing file id 77 while the old one is still referenced.
        let b = t.lookup(&fh(2), attr(77), Duration::ZERO, now);
        assert!(b > SYNTHETIC);
        assert_eq!(t.get(a).unwrap().lookups, 2);
        assert!(!t.forget(a, 1));
        assert!(t.forget(a, 1));
        assert_eq!(t.ino_of(&fh(1)), None);
        // File id 1 never shadows the root.
        assert!(t.lookup(&fh(3), attr(1), Duration::ZERO, now) > SYNTHETIC);
    }

    #[test]
    fn open_files_outlive_forget() {
        let now = Instant::now();
        let mut t = Inodes::new(fh(0), attr(2), now);
        let a = t.lookup(&fh(1), attr(10), Duration::ZERO, now);
        t.open(a);
        assert!(!t.forget(a, 1));
        assert!(t.any_open());
        assert!(t.release(a));
        assert!(!t.any_open());
    }

    proptest! {
        /// Reference counting against a model: a node exists exactly while lookups minus
        /// forgets is positive or it is open, and the handle index agrees with the nodes.
        #[test]
        fn counts_match_a_model(ops in proptest::collection::vec((0..3u8, 1..4u8, 1..3u64), 0..200)) {
            let now = Instant::now();
            let mut t = Inodes::new(fh(0), attr(2), now);
            let mut model: HashMap<u8, (u64, u32)> = HashMap::new();
            for (op, h, n) in ops {
                match op {
                    0 => {
                        t.lookup(&fh(h), attr(100 + h as u64), Duration::ZERO, now);
                        model.entry(h).or_default().0 += 1;
                    }
                    1 => {
                        if let Some(ino) = t.ino_of(&fh(h)) {
                            t.forget(ino, n);
                            let m = model.get_mut(&h).unwrap();
                            m.0 = m.0.saturating_sub(n);
                        }
                    }
                    _ => {
                        if let Some(ino) = t.ino_of(&fh(h)) {
                            let m = model.get_mut(&h).unwrap();
                            if m.1 > 0 { t.release(ino); m.1 -= 1; } else { t.open(ino); m.1 += 1; }
                        }
                    }
                }
                model.retain(|_, (l, o)| *l > 0 || *o > 0);
                for h in 1..4u8 {
                    prop_assert_eq!(t.ino_of(&fh(h)).is_some(), model.contains_key(&h));
                }
                prop_assert_eq!(t.len(), model.len() + 1);
            }
        }
    }
}
