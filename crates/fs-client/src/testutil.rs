//! Helpers for the unit tests.

use fs_proto::{Attr, FileKind, Timespec};

/// Attributes of a plain object: `kind`, file id, modified at `mtime_sec`.
pub fn attr(kind: FileKind, fileid: u64, mtime_sec: i64) -> Attr {
    Attr {
        kind,
        mode: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: 0,
        used: 0,
        rdev: 0,
        fsid: 0,
        fileid,
        blksize: 4096,
        atime: Timespec::default(),
        mtime: Timespec { sec: mtime_sec, nsec: 0 },
        ctime: Timespec::default(),
        change: 0,
    }
}
