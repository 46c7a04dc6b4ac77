//! Calls and replies: one [`Request`] variant per operation, one [`Response`] per result.
//!
//! Every call carries a transaction id (`xid`) chosen by the client and a client id that
//! stays the same across reconnects; the pair keys the server's duplicate request cache.
//! Replies may come back in any order; the client matches them by `xid`.

use crate::errno::Errno;
use crate::types::*;
use bincode::{Decode, Encode};

/// Client to server.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Call {
    pub xid: u64,
    pub client: u64,
    pub cred: Cred,
    pub req: Request,
}

/// A [`Call`] made from borrowed parts, encoded byte for byte as the `Call` it stands
/// for: a caller that needs its request back (a WRITE's data, kept until COMMIT) sends
/// it without a copy.
#[derive(Debug, Encode)]
pub struct CallRef<'a> {
    pub xid: u64,
    pub client: u64,
    pub cred: &'a Cred,
    pub req: &'a Request,
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Reply {
    pub xid: u64,
    pub res: Result<Response, Errno>,
}

/// How CREATE treats an existing name (RFC 1813, section 3.3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum CreateHow {
    /// Succeed on an existing file (and keep it).
    Unchecked,
    /// Fail with `EEXIST` on an existing file.
    Guarded,
    /// Exclusive create: the verifier is stored with the file so that a retransmission
    /// succeeds and any other create of the name fails with `EEXIST`.
    Exclusive(u64),
}

/// What MKNOD makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum NodeKind {
    Fifo,
    Socket,
    CharDevice(u64),
    BlockDevice(u64),
}

/// How a WRITE or its data must reach stable storage (RFC 1813 `stable_how`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Stable {
    Unstable,
    DataSync,
    FileSync,
}

/// SETATTR's new values; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

/// RENAME flags, as `renameat2(2)`.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// SETXATTR flags, as `setxattr(2)`.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// ACCESS bits, as `access(2)`.
pub const ACCESS_R: u32 = 4;
pub const ACCESS_W: u32 = 2;
pub const ACCESS_X: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Request {
    /// Do nothing; measures a round trip.
    Null,
    /// The export's root handle. `path` must be empty or "/".
    Mount {
        path: String,
    },
    GetAttr {
        fh: FileHandle,
    },
    /// Applies `attrs`; with `guard`, only if the object's ctime still equals it.
    SetAttr {
        fh: FileHandle,
        attrs: SetAttrs,
        guard: Option<Timespec>,
    },
    Lookup {
        dir: FileHandle,
        name: Vec<u8>,
    },
    /// Which of the `mask` bits the caller would be granted.
    Access {
        fh: FileHandle,
        mask: u32,
    },
    ReadLink {
        fh: FileHandle,
    },
    Read {
        fh: FileHandle,
        offset: u64,
        count: u32,
    },
    Write {
        fh: FileHandle,
        offset: u64,
        stable: Stable,
        /// The fencing number of the lease the writer holds on the file (0: none). The
        /// server refuses the write (ENOLCK) if it has seen a newer one for the file.
        fence: u64,
        data: Vec<u8>,
    },
    Create {
        dir: FileHandle,
        name: Vec<u8>,
        mode: u32,
        how: CreateHow,
    },
    Mkdir {
        dir: FileHandle,
        name: Vec<u8>,
        mode: u32,
    },
    Symlink {
        dir: FileHandle,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Mknod {
        dir: FileHandle,
        name: Vec<u8>,
        mode: u32,
        kind: NodeKind,
    },
    Remove {
        dir: FileHandle,
        name: Vec<u8>,
    },
    Rmdir {
        dir: FileHandle,
        name: Vec<u8>,
    },
    Rename {
        from_dir: FileHandle,
        from: Vec<u8>,
        to_dir: FileHandle,
        to: Vec<u8>,
        flags: u32,
    },
    Link {
        fh: FileHandle,
        dir: FileHandle,
        name: Vec<u8>,
    },
    /// Entries after `cookie` (0: from the start), at most about `count` bytes of them.
    ReadDir {
        dir: FileHandle,
        cookie: u64,
        verifier: u64,
        count: u32,
    },
    /// As `ReadDir`, with each entry's handle and attributes.
    ReadDirPlus {
        dir: FileHandle,
        cookie: u64,
        verifier: u64,
        count: u32,
    },
    FsStat {
        fh: FileHandle,
    },
    Commit {
        fh: FileHandle,
        offset: u64,
        count: u32,
    },
    GetXattr {
        fh: FileHandle,
        name: Vec<u8>,
    },
    SetXattr {
        fh: FileHandle,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    },
    ListXattr {
        fh: FileHandle,
    },
    RemoveXattr {
        fh: FileHandle,
        name: Vec<u8>,
    },
    /// `fallocate(2)` with its `mode` flags.
    Fallocate {
        fh: FileHandle,
        mode: u32,
        offset: u64,
        len: u64,
    },
    /// The server's clock, for Cristian-style offset estimation.
    Time,
    /// Change notices: the notices numbered after `after` still in the server's history,
    /// and from now on every notice pushed over this connection (replies with xid 0).
    Subscribe {
        after: u64,
    },
    /// A standby server follows this (primary) server: `root` is the standby's root
    /// handle, which must be the primary's (the same export and handle key). Answered
    /// with `Following`; from then on the primary pushes every non-idempotent call's
    /// reply (`Replica`) before its client sees it, and a `Following` beat.
    Follow {
        root: FileHandle,
    },
    /// The standby has the replica numbered `seq` (and all before it) in its duplicate
    /// request cache. No answer.
    FollowAck {
        seq: u64,
    },
    /// A subscribed mount has applied every notice numbered up to `upto` (its caches and
    /// the kernel's dropped what they made stale). No answer. The replies to WRITE,
    /// COMMIT and a change of attributes wait for it from every other subscribed mount
    /// (the AFS store that returns once callbacks are broken).
    NoticeAck {
        upto: u64,
    },
}

impl Request {
    /// Operations whose retransmission could give a different answer than the first
    /// call; they go through the duplicate request cache (RFC 1813, section 4.4 and
    /// "Duplicate request cache" in the Linux knfsd sources).
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            Request::SetAttr { .. }
                | Request::Create { .. }
                | Request::Mkdir { .. }
                | Request::Symlink { .. }
                | Request::Mknod { .. }
                | Request::Remove { .. }
                | Request::Rmdir { .. }
                | Request::Rename { .. }
                | Request::Link { .. }
                | Request::SetXattr { .. }
                | Request::RemoveXattr { .. }
                | Request::Fallocate { .. }
        )
    }

    /// Readings of names (LOOKUP, READDIR, READDIRPLUS): a server that pushes change
    /// notices answers them only after the notice of every change they may show.
    pub fn reads_names(&self) -> bool {
        matches!(self, Request::Lookup { .. } | Request::ReadDir { .. } | Request::ReadDirPlus { .. })
    }

    /// Operations that change the export; a read-only server refuses them with `EROFS`.
    pub fn is_mutation(&self) -> bool {
        !self.is_idempotent() || matches!(self, Request::Write { .. } | Request::Commit { .. })
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Null => "NULL",
            Request::Mount { .. } => "MOUNT",
            Request::GetAttr { .. } => "GETATTR",
            Request::SetAttr { .. } => "SETATTR",
            Request::Lookup { .. } => "LOOKUP",
            Request::Access { .. } => "ACCESS",
            Request::ReadLink { .. } => "READLINK",
            Request::Read { .. } => "READ",
            Request::Write { .. } => "WRITE",
            Request::Create { .. } => "CREATE",
            Request::Mkdir { .. } => "MKDIR",
            Request::Symlink { .. } => "SYMLINK",
            Request::Mknod { .. } => "MKNOD",
            Request::Remove { .. } => "REMOVE",
            Request::Rmdir { .. } => "RMDIR",
            Request::Rename { .. } => "RENAME",
            Request::Link { .. } => "LINK",
            Request::ReadDir { .. } => "READDIR",
            Request::ReadDirPlus { .. } => "READDIRPLUS",
            Request::FsStat { .. } => "FSSTAT",
            Request::Commit { .. } => "COMMIT",
            Request::GetXattr { .. } => "GETXATTR",
            Request::SetXattr { .. } => "SETXATTR",
            Request::ListXattr { .. } => "LISTXATTR",
            Request::RemoveXattr { .. } => "REMOVEXATTR",
            Request::Fallocate { .. } => "FALLOCATE",
            Request::Time => "TIME",
            Request::Subscribe { .. } => "SUBSCRIBE",
            Request::Follow { .. } => "FOLLOW",
            Request::FollowAck { .. } => "FOLLOWACK",
            Request::NoticeAck { .. } => "NOTICEACK",
        }
    }
}

/// One directory entry. `cookie` resumes the listing after this entry.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DirEntry {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub kind: Option<FileKind>,
    /// READDIRPLUS only; absent for "." and "..".
    pub plus: Option<(FileHandle, Attr)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub avail_bytes: u64,
    pub total_files: u64,
    pub free_files: u64,
    pub avail_files: u64,
    pub bsize: u32,
    pub frsize: u32,
    pub namemax: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Response {
    Null,
    /// MOUNT: the root handle, its attributes, and the largest READ/WRITE accepted.
    Mount {
        root: FileHandle,
        attr: Attr,
        max_io: u32,
    },
    /// GETATTR, SETXATTR, REMOVEXATTR (post-operation attributes).
    Attr(Attr),
    /// SETATTR, FALLOCATE, REMOVE, RMDIR (the directory's), COMMIT's data.
    Wcc(Wcc),
    /// LOOKUP: the object and, for caches, the directory's attributes.
    Lookup {
        fh: FileHandle,
        attr: Attr,
        dir: Option<Attr>,
    },
    Access {
        granted: u32,
        attr: Attr,
    },
    ReadLink {
        target: Vec<u8>,
    },
    /// READ. `data` is the last field on purpose: a server can send it straight from
    /// its own buffer after the rest of the frame ([`crate::codec::encode_reply`]).
    Read {
        eof: bool,
        attr: Attr,
        data: Vec<u8>,
    },
    /// WRITE: bytes written, how stably, and the server instance's write verifier.
    Write {
        count: u32,
        committed: Stable,
        verifier: u64,
        wcc: Wcc,
    },
    /// CREATE, MKDIR, SYMLINK, MKNOD.
    Created {
        fh: FileHandle,
        attr: Attr,
        dir: Wcc,
    },
    Rename {
        from: Wcc,
        to: Wcc,
    },
    Link {
        attr: Attr,
        dir: Wcc,
    },
    /// READDIR, READDIRPLUS.
    Dir {
        verifier: u64,
        #[cfg_attr(
            test,
            proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<DirEntry>(), 0..4)")
        )]
        entries: Vec<DirEntry>,
        eof: bool,
        attr: Attr,
    },
    FsStat(FsStat),
    Commit {
        verifier: u64,
        wcc: Wcc,
    },
    /// GETXATTR's value, or LISTXATTR's NUL-terminated names.
    Xattr(Vec<u8>),
    Time {
        now: Timespec,
    },
    /// SUBSCRIBE's answer, and every pushed notice (xid 0). `instance` names the server
    /// process (a new one numbers from 1 again); `next` is the number the next notice
    /// will get; `complete` is false when notices the subscriber asked for have left the
    /// history (it must drop what it has not verified).
    Notices {
        instance: u64,
        next: u64,
        complete: bool,
        #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<Notice>(), 0..3)"))]
        notices: Vec<Notice>,
    },
    /// FOLLOW's answer and the primary's beat to its standbys (xid 0): `next` is the
    /// number the next replica will get; `instance` and `notice_next` are the primary's
    /// sequencer (its instance, and the number its next notice will get), which the
    /// standby continues after a takeover.
    Following {
        next: u64,
        instance: u64,
        notice_next: u64,
    },
    /// Pushed to standbys (xid 0): one non-idempotent call with the reply it got, for the
    /// standby's duplicate request cache, and the notice of what a call changed, for its
    /// copy of the sequencer (either may be absent).
    Replica {
        seq: u64,
        call: Option<ReplicaCall>,
        notice: Option<Notice>,
    },
}

/// One call of `client` under `xid` (`req`, an encoded `Request`) and the reply it got
/// (an encoded `Reply`).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReplicaCall {
    pub client: u64,
    pub xid: u64,
    pub req: Vec<u8>,
    pub reply: Vec<u8>,
}

/// One change the server made, numbered by its sequencer (one counter for the whole
/// export: a total order), with the client that made it.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Notice {
    pub seq: u64,
    pub client: u64,
    #[cfg_attr(test, proptest(strategy = "proptest::collection::vec(proptest::arbitrary::any::<Change>(), 0..3)"))]
    pub changes: Vec<Change>,
}

impl Notice {
    /// A change of objects alone (data or attributes, no name): the server's replies to
    /// such a WRITE, COMMIT or SETATTR wait until every other subscribed mount
    /// acknowledged the notice (`NoticeAck`), so mounts acknowledge exactly these.
    pub fn of_objects_alone(changes: &[Change]) -> bool {
        !changes.is_empty() && changes.iter().all(|c| matches!(c, Change::Object { .. }))
    }
}

/// What one operation changed.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Change {
    /// The name `name` in `dir` now means something else (made, removed, renamed).
    Entry { dir: FileHandle, name: Vec<u8> },
    /// The object's attributes or data changed; its change attribute now (`None`:
    /// unknown, so whatever is cached goes).
    Object { fh: FileHandle, change: Option<u64> },
}
