//! The `fuser::Filesystem` implementation: translation only. Each callback turns the
//! kernel's arguments into plain values, hands the work to [`Client`] on the tokio
//! runtime, and turns the result into a reply. No callback blocks the FUSE thread.

use crate::client::{Caller, Client, DirCache, Entry, OpenNo};
use crate::locks::Locks;
use crate::options::ReaddirPlus;
use fs_proto::{Attr, DirEntry, Errno, FileKind, SetAttrs, SetTime, Timespec};
use fuser::{
    AccessFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROOT_INO: u64 = crate::inodes::ROOT;
/// The extended attribute of the mount's root that `fs-client status` reads: the mount
/// answers it itself (it never reaches the server, and is not listed).
pub const STATUS_XATTR: &[u8] = b"user.fs-client.status";
/// `user.fs-client.wait.N` of any object: answered (by the mount itself) once a change
/// notice numbered after N is applied, or after a second, with the last number applied
/// (`off` when notices are not followed). The spool watcher waits on it between scans.
pub const WAIT_XATTR: &[u8] = b"user.fs-client.wait.";

pub struct Fs {
    client: Arc<Client>,
    rt: tokio::runtime::Handle,
    /// With `-o leases=`: flock/fcntl locks through the cluster node.
    locks: Option<Arc<Locks>>,
    /// Set once the session exists: drops the kernel's pages when a lock is granted.
    notifier: Arc<OnceLock<fuser::Notifier>>,
}

impl Fs {
    pub fn new(client: Arc<Client>, rt: tokio::runtime::Handle, locks: Option<Arc<Locks>>) -> Fs {
        Fs { client, rt, locks, notifier: Arc::new(OnceLock::new()) }
    }

    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// After the data of `ino` was flushed: gives back the lock `owner` holds on it.
    /// `fh`: the open file a RELEASE concerns (a late RELEASE must not drop the lock the
    /// next open file of the same owner took); None for an explicit unlock or a FLUSH.
    fn unlock_after_flush(
        &self,
        ino: u64,
        owner: u64,
        fh: Option<u64>,
    ) -> impl Future<Output = Result<(), Errno>> + Send + 'static {
        let (cl, locks) = (self.client.clone(), self.locks.clone());
        async move {
            // (An owner still waiting for the lock abandons the wait: see Locks::unlock.)
            let Some(locks) = locks.filter(|l| l.involves(ino, owner, fh)) else {
                return cl.flush(ino).await;
            };
            let flushed = cl.flush(ino).await;
            let key = cl.lease_key(ino)?;
            cl.lock_released(ino);
            locks.unlock(ino, &key, owner, fh);
            flushed
        }
    }

    /// Runs `work` to completion on this FUSE thread and answers with `ok` or the error.
    /// For metadata calls: one round trip each, and waiting right here saves the two
    /// thread hand-offs a spawned task costs (measured: ~40% of a LOOKUP's latency).
    /// Several FUSE threads keep several such calls in flight.
    fn run<R, T, F>(&self, reply: R, work: F, ok: impl FnOnce(R, T) + Send + 'static)
    where
        R: Fail + Send + 'static,
        T: Send + 'static,
        F: Future<Output = Result<T, Errno>> + Send + 'static,
    {
        match self.rt.block_on(work) {
            Ok(v) => ok(reply, v),
            Err(e) => reply.fail(e),
        }
    }

    /// Runs `work` here as far as it goes without waiting, and the rest as a task, so
    /// this thread returns at once: for data calls, which the kernel sends many at a time
    /// (read-ahead, parallel writes) and which may wait on write-back. Work that needs no
    /// wait (a read from the cache, the close of a file with nothing to write) is
    /// answered from this thread, without a hand-off to the runtime and back.
    fn spawn<R, T, F>(&self, reply: R, work: F, ok: impl FnOnce(R, T) + Send + 'static)
    where
        R: Fail + Send + 'static,
        T: Send + 'static,
        F: Future<Output = Result<T, Errno>> + Send + 'static,
    {
        let _rt = self.rt.enter();
        crate::client::now_or_spawn(async move {
            match work.await {
                Ok(v) => ok(reply, v),
                Err(e) => {
                    tracing::debug!("data call failed: {e}");
                    reply.fail(e)
                }
            }
        });
    }
}

/// The error half of every reply type.
pub trait Fail {
    fn fail(self, e: Errno);
}

macro_rules! fail {
    ($($t:ty),*) => {$(
        impl Fail for $t {
            fn fail(self, e: Errno) {
                self.error(fuser::Errno::from_i32(e.to_kernel()));
            }
        }
    )*};
}
fail!(
    ReplyEntry,
    ReplyAttr,
    ReplyData,
    ReplyEmpty,
    ReplyOpen,
    ReplyWrite,
    ReplyCreate,
    ReplyStatfs,
    ReplyXattr,
    ReplyDirectory,
    ReplyDirectoryPlus
);

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid(), pid: req.pid() }
}

fn time(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec.min(999_999_999))
    }
}

fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timespec { sec, nsec }
        }
    }
}

fn set_time(t: Option<TimeOrNow>) -> SetTime {
    match t {
        None => SetTime::DontChange,
        Some(TimeOrNow::Now) => SetTime::ServerNow,
        Some(TimeOrNow::SpecificTime(t)) => SetTime::Set(timespec(t)),
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

pub fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.used.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: if a.blksize == 0 { 4096 } else { a.blksize },
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, e: Entry) {
    reply.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &file_attr(e.ino, &e.attr), Generation(0));
}

fn bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let io = self.client.max_io() as u32;
        if let Err(max) = config.set_max_write(io) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(io) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Not FUSE_AUTO_INVAL_DATA: with it, fsx found stale pages in the kernel's cache
        // (an invalidation racing a READ). Close-to-open does the invalidating instead.
        for flag in [
            // Writes, truncates and chowns by others clear the set-id bits on the server
            // (its file system does, as the caller); without this the kernel sends a
            // SETATTR of the mode as the writer, which only the owner may make (EPERM).
            InitFlags::FUSE_HANDLE_KILLPRIV,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            // A kernel without one of these simply goes without.
            let _ = config.add_capabilities(flag);
        }
        let plus: &[InitFlags] = match self.client.options().rdirplus {
            ReaddirPlus::All => &[InitFlags::FUSE_DO_READDIRPLUS],
            ReaddirPlus::Auto => &[InitFlags::FUSE_DO_READDIRPLUS, InitFlags::FUSE_READDIRPLUS_AUTO],
            ReaddirPlus::None => &[],
        };
        for &flag in plus {
            let _ = config.add_capabilities(flag);
        }
        if self.locks.is_some() {
            // Without these the kernel keeps locks to itself (per machine).
            let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        // (The gate is held until the kernel has the answer, an error included.)
        let (res, gate) = self.rt.block_on(async move { cl.lookup_in_order(c, parent.0, &name).await });
        match res {
            Ok(e) => reply_entry(reply, e),
            Err(e) => reply.fail(e),
        }
        drop(gate);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.client.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (c, cl) = (caller(req), self.client.clone());
        self.run(reply, async move { cl.getattr(c, ino.0).await }, move |r, (a, ttl, _gate)| {
            r.attr(&ttl, &file_attr(ino.0, &a))
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let attrs =
            SetAttrs { mode: mode.map(|m| m & 0o7777), uid, gid, size, atime: set_time(atime), mtime: set_time(mtime) };
        let (c, cl) = (caller(req), self.client.clone());
        self.run(reply, async move { cl.setattr(c, ino.0, attrs).await }, move |r, (a, ttl, _gate)| {
            r.attr(&ttl, &file_attr(ino.0, &a))
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (c, cl) = (caller(req), self.client.clone());
        self.run(reply, async move { cl.readlink(c, ino.0).await }, |r, t| r.data(&t));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        self.run(reply, async move { cl.mknod(c, parent.0, &name, mode, rdev as u64).await }, reply_entry);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        self.run(reply, async move { cl.mkdir(c, parent.0, &name, mode & 0o7777).await }, reply_entry);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        self.run(reply, async move { cl.unlink(c, parent.0, &name).await }, |r, ()| r.ok());
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        self.run(reply, async move { cl.rmdir(c, parent.0, &name).await }, |r, ()| r.ok());
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (c, cl, name, target) = (caller(req), self.client.clone(), bytes(link_name), bytes(target.as_os_str()));
        self.run(reply, async move { cl.symlink(c, parent.0, &name, &target).await }, reply_entry);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (c, cl, name, newname) = (caller(req), self.client.clone(), bytes(name), bytes(newname));
        let flags = flags.bits();
        let work = async move {
            if flags & !(fs_proto::RENAME_NOREPLACE | fs_proto::RENAME_EXCHANGE) != 0 {
                return Err(Errno::EINVAL);
            }
            cl.rename(c, parent.0, &name, newparent.0, &newname, flags).await
        };
        self.run(reply, work, |r, ()| r.ok());
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(newname));
        self.run(reply, async move { cl.link(c, ino.0, newparent.0, &name).await }, reply_entry);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (c, cl, notifier) = (caller(req), self.client.clone(), self.notifier.clone());
        let reads = flags.0 & libc::O_ACCMODE != libc::O_WRONLY;
        self.run(reply, async move { cl.open(c, ino.0, reads).await }, move |r, o| {
            if o.attrs_changed {
                // Close-to-open for the size: the kernel bounds reads by the size it has
                // cached, so its attributes go before the open is answered (offset -1:
                // attributes only; this takes no lock the open holds).
                if let Some(n) = notifier.get() {
                    let _ = n.inval_inode(ino, -1, 0);
                }
            }
            let flags = if o.keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
            r.opened(FileHandle(o.fh.0), flags)
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let cl = self.client.clone();
        // A random reader waits for one READ at a time (the kernel reads nothing ahead
        // for it): waiting here, as a metadata call does, saves the hand-off to the
        // runtime and back. Sequential readers' READs go on as tasks, many in flight.
        let random = cl.reads_randomly(OpenNo(fh.0));
        let work = async move {
            let d = cl.read(ino.0, OpenNo(fh.0), offset, size).await?;
            if d.len() < size as usize {
                tracing::debug!(ino = ino.0, offset, size, got = d.len(), "short read");
            }
            Ok(d)
        };
        if random {
            self.run(reply, work, |r, d| r.data(&d));
        } else {
            self.spawn(reply, work, |r, d| r.data(&d));
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // On this FUSE thread, from the kernel's buffer: a write that write-back absorbs
        // costs no hand-off to another thread and no copy (measured: 32-byte appends went
        // from 8,000/s to the rate below in the README); one that must wait for WRITEs
        // or a COMMIT holds this thread, one of eight, as a synchronous write would.
        match self.rt.block_on(self.client.write(ino.0, offset, data)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.fail(e),
        }
    }

    /// Every close: the data goes to the server, then (POSIX semantics) the closing
    /// process's locks on the file are released.
    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let work = self.unlock_after_flush(ino.0, lock_owner.0, None);
        self.spawn(reply, work, |r, ()| r.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file: its flock, if any, goes (lock_owner is set).
        let unlock = lock_owner.map(|o| self.unlock_after_flush(ino.0, o.0, Some(fh.0)));
        let cl = self.client.clone();
        let work = async move {
            if let Some(u) = unlock {
                u.await?;
            }
            cl.release(ino.0, OpenNo(fh.0)).await
        };
        self.spawn(reply, work, |r, ()| r.ok());
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        match &self.locks {
            Some(l) if l.other_holder(ino.0, lock_owner.0) => reply.locked(0, u64::MAX, libc::F_WRLCK, 0),
            Some(_) => reply.locked(start, end, libc::F_UNLCK, pid),
            None => {
                let _ = typ;
                reply.error(fuser::Errno::ENOSYS)
            }
        }
    }

    /// A lock or unlock (fcntl, or flock). Taking a lock may wait for the lease from
    /// another mount, so it runs on the blocking pool, never on a FUSE thread.
    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(locks) = self.locks.clone() else { return reply.error(fuser::Errno::ENOSYS) };
        let (ino, owner, fh) = (ino.0, lock_owner.0, fh.0);
        if typ == libc::F_UNLCK {
            let work = self.unlock_after_flush(ino, owner, None);
            return self.spawn(reply, work, |r, ()| r.ok());
        }
        let (cl, notifier) = (self.client.clone(), self.notifier.clone());
        let work = async move {
            let key = cl.lease_key(ino)?;
            let interrupted = move || crate::locks::signal_pending(pid);
            let fence = tokio::task::spawn_blocking(move || locks.lock(ino, &key, owner, fh, sleep, interrupted))
                .await
                .map_err(|_| Errno::EIO)??;
            // The last holder's writes are on the server; drop what we and the kernel
            // cached before them. Our writes carry the grant's fencing number from now.
            cl.lock_granted(ino, fence);
            if let Some(n) = notifier.get() {
                let _ = n.inval_inode(INodeNo(ino), 0, 0);
            }
            Ok(())
        };
        self.spawn(reply, work, |r, ()| r.ok());
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let cl = self.client.clone();
        self.spawn(reply, async move { cl.fsync(ino.0).await }, |r, ()| r.ok());
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (fh, cache) = self.client.opendir(caller(req), ino.0);
        let flags = match cache {
            DirCache::None => FopenFlags::empty(),
            DirCache::Fill => FopenFlags::FOPEN_CACHE_DIR,
            DirCache::Keep => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        };
        reply.opened(FileHandle(fh.0), flags);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let cl = self.client.clone();
        // Answered from this thread when the listing is at hand (no hand-off).
        let _rt = self.rt.enter();
        crate::client::now_or_spawn(async move {
            let (listing, gate) = match cl.readdir_in_order(ino.0, OpenNo(fh.0), offset).await {
                Ok(l) => l,
                Err(e) => return reply.fail(e),
            };
            for (i, e) in listing.from(offset as usize) {
                let kind = file_type(e.kind.unwrap_or(FileKind::Regular));
                if reply.add(INodeNo(e.fileid), i as u64 + 1, kind, OsStr::from_bytes(&e.name)) {
                    break;
                }
            }
            reply.ok();
            drop(gate);
        });
    }

    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let (c, cl) = (caller(req), self.client.clone());
        let _rt = self.rt.enter();
        crate::client::now_or_spawn(async move {
            let (listing, gate) = match cl.readdir_in_order(ino.0, OpenNo(fh.0), offset).await {
                Ok(l) => l,
                Err(e) => return reply.fail(e),
            };
            let dir_attr = match cl.getattr(c, ino.0).await {
                Ok((a, _, _)) => a,
                Err(e) => return reply.fail(e),
            };
            // Held until the kernel has the whole answer (see `client::Gate`).
            let mut gates = vec![gate];
            let mut rest = listing.from(offset as usize);
            // Remembered a chunk at a time (the page's size is the kernel's to know; what
            // did not fit is forgotten again).
            'page: loop {
                let chunk: Vec<(usize, &DirEntry)> = rest.by_ref().take(64).collect();
                if chunk.is_empty() {
                    break;
                }
                let dot = |e: &DirEntry| e.name == b"." || e.name == b"..";
                let plus: Vec<(&[u8], &fs_proto::FileHandle, Attr)> = chunk
                    .iter()
                    .filter(|(_, e)| !dot(e))
                    .filter_map(|(_, e)| e.plus.as_ref().map(|(fh, a)| (e.name.as_slice(), fh, *a)))
                    .collect();
                let mut remembered = cl.remember_many(ino.0, &plus, listing.mark).into_iter();
                for &(i, e) in &chunk {
                    let name = OsStr::from_bytes(&e.name);
                    let next = i as u64 + 1;
                    if dot(e) {
                        // The kernel neither links nor counts these.
                        let a = file_attr(if e.name == b"." { ino.0 } else { e.fileid }, &dir_attr);
                        if reply.add(a.ino, next, name, &Duration::ZERO, &a, Generation(0)) {
                            remembered.for_each(|left| cl.forget(left.ino, 1));
                            break 'page;
                        }
                        continue;
                    }
                    let entry = match e.plus {
                        Some(_) => remembered.next().expect("one per entry with a handle"),
                        // No handle in the listing (it raced with a removal, or is another
                        // file system's mount point): ask, and leave it out if that fails.
                        None => match cl.lookup(c, ino.0, &e.name).await {
                            Ok(en) => en,
                            Err(_) => continue,
                        },
                    };
                    let a = file_attr(entry.ino, &entry.attr);
                    // (One lifetime for the name and the attributes here: the name's, where
                    // names are not kept.)
                    let ttl = if cl.options().lookup_cache { entry.attr_ttl } else { entry.entry_ttl };
                    if reply.add(a.ino, next, name, &ttl, &a, Generation(0)) {
                        // Did not fit: the kernel never saw it, nor the rest of the chunk,
                        // so it holds no reference to them.
                        cl.forget(entry.ino, 1);
                        remembered.for_each(|left| cl.forget(left.ino, 1));
                        break 'page;
                    }
                    gates.push(entry.gate);
                }
            }
            reply.ok();
            drop(gates);
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.client.releasedir(OpenNo(fh.0));
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory operations are synchronous on the server already.
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let (c, cl) = (caller(req), self.client.clone());
        self.run(reply, async move { cl.statfs(c, ino.0).await }, |r, s| {
            let fr = u64::from(s.frsize.max(1));
            r.statfs(
                s.total_bytes / fr,
                s.free_bytes / fr,
                s.avail_bytes / fr,
                s.total_files,
                s.free_files,
                s.bsize,
                s.namemax,
                s.frsize,
            )
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (c, cl, name, value) = (caller(req), self.client.clone(), bytes(name), value.to_vec());
        self.run(reply, async move { cl.setxattr(c, ino.0, &name, &value, flags as u32).await }, |r, ()| r.ok());
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (c, cl, name, locks) = (caller(req), self.client.clone(), bytes(name), self.locks.clone());
        let work = async move {
            // `fs-client status`: the mount's own vitals, answered here (not listed).
            let v = if ino.0 == ROOT_INO && name == STATUS_XATTR {
                let mut text = cl.status_text();
                text += &match &locks {
                    None => "leases off (locks are local to this machine)\n".to_string(),
                    Some(l) => {
                        let (held, asking) = l.held();
                        let list: Vec<String> =
                            held.iter().map(|(ino, f)| format!("inode {ino} fence {f:#x}")).collect();
                        format!("leases held {}: [{}]; being asked for {asking}\n", held.len(), list.join(", "))
                    }
                };
                text.into_bytes()
            } else if let Some(after) = name.strip_prefix(WAIT_XATTR) {
                let after = std::str::from_utf8(after).ok().and_then(|a| a.parse().ok()).ok_or(Errno::EINVAL)?;
                match cl.wait_notice(after, Duration::from_secs(1)).await {
                    (applied, true) => applied.to_string().into_bytes(),
                    (_, false) => b"off".to_vec(),
                }
            } else {
                cl.getxattr(c, ino.0, &name).await?
            };
            if size != 0 && v.len() > size as usize {
                return Err(Errno::ERANGE);
            }
            Ok(v)
        };
        self.run(reply, work, move |r, v| if size == 0 { r.size(v.len() as u32) } else { r.data(&v) });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (c, cl) = (caller(req), self.client.clone());
        let work = async move {
            let v = cl.listxattr(c, ino.0).await?;
            if size != 0 && v.len() > size as usize {
                return Err(Errno::ERANGE);
            }
            Ok(v)
        };
        self.run(reply, work, move |r, v| if size == 0 { r.size(v.len() as u32) } else { r.data(&v) });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        self.run(reply, async move { cl.removexattr(c, ino.0, &name).await }, |r, ()| r.ok());
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (c, cl) = (caller(req), self.client.clone());
        let mask = mask.bits() as u32 & 7;
        self.run(reply, async move { cl.access(c, ino.0, mask).await }, |r, ()| r.ok());
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, cl, name) = (caller(req), self.client.clone(), bytes(name));
        let exclusive = flags & libc::O_EXCL != 0;
        self.run(reply, async move { cl.create(c, parent.0, &name, mode, exclusive).await }, |r, (e, fh)| {
            r.created(&e.attr_ttl, &file_attr(e.ino, &e.attr), Generation(0), FileHandle(fh.0), FopenFlags::empty())
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (c, cl) = (caller(req), self.client.clone());
        self.spawn(reply, async move { cl.fallocate(c, ino.0, offset, length, mode as u32).await }, |r, ()| r.ok());
    }
}
