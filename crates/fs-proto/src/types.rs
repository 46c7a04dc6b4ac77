//! Attributes, times, handles and credentials.

use bincode::{Decode, Encode};

/// Longest handle the server ever issues; longer ones are refused unread.
pub const MAX_HANDLE: usize = 160;
/// Longest file name component, as on Linux.
pub const MAX_NAME: usize = 255;

/// An opaque file handle. The client stores and returns it; only the server knows its
/// layout (see `fs-server`'s `handles` module).
#[derive(Clone, PartialEq, Eq, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FileHandle(pub Vec<u8>);

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fh:")?;
        for b in self.0.iter().take(24) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 24 {
            write!(f, "..")?;
        }
        Ok(())
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    /// The change attribute of an object whose ctime this is ([`Attr::change`]): the
    /// ctime in nanoseconds, wrapping (defined here alone: the server makes it, clients
    /// compare a WRITE's or COMMIT's pre-op ctime with it).
    pub fn change(self) -> u64 {
        (self.sec as u64).wrapping_mul(1_000_000_000).wrapping_add(u64::from(self.nsec))
    }
}

/// How SETATTR changes a time stamp (RFC 1813, section 2.6, `set_atime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum SetTime {
    #[default]
    DontChange,
    ServerNow,
    Set(Timespec),
}

/// File type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

/// Attributes of a file system object (RFC 1813 `fattr3`, plus a change attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Attr {
    pub kind: FileKind,
    /// Permission bits including set-uid, set-gid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes of disk actually used.
    pub used: u64,
    pub rdev: u64,
    pub fsid: u64,
    pub fileid: u64,
    pub blksize: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Changes whenever the object's data or metadata change; clients tag cached data
    /// with it (close-to-open consistency). Derived from ctime in nanoseconds.
    pub change: u64,
}

/// The part of the attributes that weak cache consistency compares (RFC 1813 `wcc_attr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WccAttr {
    pub size: u64,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

impl From<&Attr> for WccAttr {
    fn from(a: &Attr) -> WccAttr {
        WccAttr { size: a.size, mtime: a.mtime, ctime: a.ctime }
    }
}

/// Attributes before and after a mutation (RFC 1813 `wcc_data`, section 2.6). A client
/// whose cached attributes equal `before` may apply `after` without another GETATTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Wcc {
    pub before: Option<WccAttr>,
    pub after: Option<Attr>,
}

/// Who is asking: the caller's uid, gid and supplementary groups (AUTH_UNIX).
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}
