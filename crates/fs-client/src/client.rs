//! The client proper: every file system operation as an async function on plain types,
//! with no FUSE types in sight, so it can be driven and tested without a mount. The
//! FUSE layer ([`crate::fuse`]) only translates.
//!
//! # Caching and consistency (the NFS model)
//! - **Attributes**: the kernel caches them for the adaptive timeout we give it
//!   ([`crate::attrcache`]); when it asks about a file, we ask the server; a directory's
//!   attributes are served from here while fresh. Mutating replies carry post-operation
//!   attributes, which replace what we hold.
//! - **Close-to-open**: `open` always fetches attributes. If the change attribute is the
//!   one our cached data was read under, the kernel keeps its page cache
//!   (`FOPEN_KEEP_CACHE`) and ours stays valid; otherwise both are dropped.
//! - **Page cache**: blocks in an LRU bounded in bytes, tagged with the change attribute.
//! - **Read-ahead**: per open file, sequential readers get a growing window of block
//!   fetches in flight; concurrent readers of one block share one fetch; random readers
//!   fetch only the bytes they ask for.
//! - **Write-back**: writes are buffered and coalesced, sent as `wsize` UNSTABLE WRITEs,
//!   several in flight (overlapping ones in order); `flush` (close) sends the rest and
//!   waits, the last close COMMITs in the background, `fsync` waits for a COMMIT. The
//!   data stays in memory until a COMMIT with the same write verifier as its WRITE; a
//!   different verifier (the server restarted) makes us send it again. Errors of
//!   background writes are reported by the next `flush` or `fsync`, as NFS does.
//! - **Silly rename**: removing or replacing a file that is open here renames it to
//!   `.fs-silly-*` instead, and removes it on the last close (an NFS client's trick; the
//!   server is stateless and would otherwise answer the open file's calls with ESTALE).

use crate::attrcache::AttrTimeouts;
use crate::inodes::{atime_due, Inodes};
use crate::options::MountOptions;
use crate::pagecache::{Data, PageCache};
use crate::readahead::ReadAhead;
use crate::rpc::Rpc;
use crate::writeback::{Committed, Dirty, Unstable};
use fs_proto::*;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Notify, Semaphore};

/// Who made a kernel request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A name the kernel may cache: node id, attributes and how long to trust each.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

pub struct Opened {
    pub fh: u64,
    /// Keep the kernel's page cache: the file did not change since we cached it.
    pub keep_cache: bool,
    /// The file changed since we last saw it: the kernel's cached attributes (the size
    /// above all, which bounds its reads) must go too, or the first read after this open
    /// stops at the old size.
    pub attrs_changed: bool,
}

/// A block being fetched: `None` until the READ answers.
type Fetch = watch::Receiver<Option<Result<Data, Errno>>>;
type Filler = watch::Sender<Option<Result<Data, Errno>>>;

struct OpenFile {
    cred: Cred,
    ra: ReadAhead,
    /// A directory's listing, fetched whole at offset 0 and served from here.
    listing: Option<Arc<Vec<DirEntry>>>,
}

#[derive(Default)]
struct Wb {
    dirty: Dirty,
    /// WRITEs taken out of `dirty` and not yet answered, oldest first: (sequence, start,
    /// end). A WRITE waits until no older one overlapping it is still on its way, so
    /// the server applies overlapping writes in the order they were made (fsx found
    /// two overlapping WRITEs in flight at once, landing the older one last).
    sending: Vec<(u64, u64, u64)>,
    next_seq: u64,
    unstable: Unstable,
    error: Option<Errno>,
    /// Highest byte written while the file is open (lowered only by our own truncate).
    /// Sizes we report never go below it: a GETATTR that raced with the write-back of
    /// acknowledged writes would otherwise shrink the kernel's file size, and a program
    /// reading through `mmap` there gets SIGBUS (found by fsx).
    written_end: u64,
    /// A background COMMIT is running.
    committing: bool,
    /// The change attribute after our latest WRITE (0: none yet): if a COMMIT finds the
    /// file still at it, nobody else wrote since, and our cache may take the new value.
    last_write_change: u64,
}

impl Wb {
    /// Registers chunks just taken out of `dirty` as on their way, in the same critical
    /// section: registered any later, a concurrent `drain` could see neither dirty bytes
    /// nor a write in flight and read from the server before the data got there (fsx
    /// found that: a short read at a block edge).
    fn queue(&mut self, chunks: Vec<(u64, Vec<u8>)>) -> Vec<(u64, u64, Vec<u8>)> {
        chunks
            .into_iter()
            .map(|(off, data)| {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.sending.push((seq, off, off + data.len() as u64));
                (seq, off, data)
            })
            .collect()
    }
}

/// Write-back state of one file, while it is open.
struct FileState {
    fh: FileHandle,
    /// The fencing number of the lease held on the file while locked (0: none); WRITEs
    /// carry it, so a holder that lost its lease cannot overwrite a newer holder's data.
    fence: std::sync::atomic::AtomicU64,
    cred: Mutex<Cred>,
    opens: Mutex<u32>,
    wb: Mutex<Wb>,
    idle: Notify,
}

pub struct Client {
    rpc: Rpc,
    opts: MountOptions,
    inodes: Mutex<Inodes>,
    cache: Mutex<PageCache>,
    fetches: Mutex<HashMap<(u64, u64), Fetch>>,
    files: Mutex<HashMap<u64, Arc<FileState>>>,
    opens: Mutex<HashMap<u64, OpenFile>>,
    next_fh: AtomicU64,
    /// Silly-renamed open files: node id -> (directory, silly name, the credentials of
    /// the caller who removed or replaced it, who removes it at the last close).
    silly: Mutex<HashMap<u64, (FileHandle, Vec<u8>, Cred)>>,
    write_slots: Arc<Semaphore>,
    groups: Mutex<LruCache<u32, (Instant, Vec<u32>)>>,
    max_io: usize,
    /// Background commits running, and a wake-up when one ends.
    background: AtomicU64,
    quiet: Notify,
}

fn unexpected(r: Response) -> Errno {
    tracing::error!("unexpected reply {r:?}");
    Errno::EIO
}

impl Client {
    /// Asks the server for the export's root and sets up the tables.
    pub async fn new(rpc: Rpc, opts: MountOptions) -> Result<Client, Errno> {
        let cred = Cred { uid: 0, gid: 0, groups: vec![] };
        let (root, attr, max_io) = match rpc.call(&cred, Request::Mount { path: "/".into() }).await? {
            Response::Mount { root, attr, max_io } => (root, attr, max_io as usize),
            r => return Err(unexpected(r)),
        };
        Ok(Client {
            rpc,
            inodes: Mutex::new(Inodes::new(root, attr, Instant::now())),
            cache: Mutex::new(PageCache::new(opts.cache_size, opts.block_size)),
            fetches: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            opens: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            silly: Mutex::new(HashMap::new()),
            write_slots: Arc::new(Semaphore::new(opts.writes_in_flight.max(1))),
            groups: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            max_io: max_io.clamp(4096, MAX_IO),
            background: AtomicU64::new(0),
            quiet: Notify::new(),
            opts,
        })
    }

    pub fn max_io(&self) -> usize {
        self.max_io
    }

    // ---- helpers -------------------------------------------------------------------

    /// The caller's credentials, with its supplementary groups from /proc (cached a
    /// second per process: FUSE passes only uid, gid and pid).
    pub fn cred(&self, c: Caller) -> Cred {
        let now = Instant::now();
        if let Some((at, groups)) = self.groups.lock().unwrap().get(&c.pid) {
            if now.duration_since(*at) < Duration::from_secs(1) {
                return Cred { uid: c.uid, gid: c.gid, groups: groups.clone() };
            }
        }
        let groups = proc_groups(c.pid).unwrap_or_default();
        self.groups.lock().unwrap().put(c.pid, (now, groups.clone()));
        Cred { uid: c.uid, gid: c.gid, groups }
    }

    async fn call(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        if self.opts.read_only && req.is_mutation() {
            return Err(Errno::EROFS);
        }
        self.rpc.call(cred, req).await
    }

    fn fh(&self, ino: u64) -> Result<FileHandle, Errno> {
        self.inodes.lock().unwrap().get(ino).map(|n| n.fh.clone()).ok_or(Errno::ESTALE)
    }

    /// The key of a file's lease: its file handle, the same on every mount of the export.
    pub fn lease_key(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.fh(ino).map(|fh| fh.0)
    }

    /// A lock was granted on `ino`: whatever we cached may predate the last holder's
    /// writes, so it goes (the caller also drops the kernel's pages).
    pub fn lock_granted(&self, ino: u64, fence: u64) {
        // (File attributes are always fetched afresh; only directories' are cached.)
        self.invalidate(ino, 0, u64::MAX);
        self.set_fence(ino, fence);
    }

    /// The lock on `ino` was given back (its writes were flushed first).
    pub fn lock_released(&self, ino: u64) {
        self.set_fence(ino, 0);
    }

    fn set_fence(&self, ino: u64, fence: u64) {
        if let Some(f) = self.files.lock().unwrap().get(&ino) {
            f.fence.store(fence, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn timeouts(&self) -> AttrTimeouts {
        self.opts.attr
    }

    pub fn attr_ttl(&self, attr: &Attr) -> Duration {
        self.timeouts().timeout(attr, SystemTime::now())
    }

    /// Replaces the cached attributes of `fh`, if we know it.
    fn note_attr(&self, fh: &FileHandle, attr: &Attr) {
        let mut t = self.inodes.lock().unwrap();
        if let Some(ino) = t.ino_of(fh) {
            let ttl = self.attr_ttl(attr);
            if let Some(n) = t.get_mut(ino) {
                n.attr = *attr;
                n.attr_valid_until = Instant::now() + ttl;
            }
        }
    }

    fn note_wcc(&self, fh: &FileHandle, wcc: &Wcc) {
        if let Some(a) = &wcc.after {
            self.note_attr(fh, a);
        }
    }

    /// The kernel now holds a reference to `fh` (LOOKUP, CREATE, READDIRPLUS entry...).
    pub fn remember(&self, fh: &FileHandle, attr: Attr) -> Entry {
        let attr_ttl = self.attr_ttl(&attr);
        let ino = self.inodes.lock().unwrap().lookup(fh, attr, attr_ttl, Instant::now());
        let attr = self.local_view(ino, attr);
        // Names are revalidated on the directory timeouts, as NFS's dentry cache.
        let entry_ttl = self.timeouts().dir_min;
        Entry { ino, attr, attr_ttl, entry_ttl }
    }

    /// Drops cached blocks of `ino` in `[start, end)`, and forgets fetches of them still
    /// in flight, so that readers from now on fetch afresh.
    fn invalidate(&self, ino: u64, start: u64, end: u64) {
        let bs = self.opts.block_size as u64;
        self.cache.lock().unwrap().invalidate_range(ino, start, end);
        let (first, last) = (start / bs, end.saturating_sub(1) / bs);
        self.fetches.lock().unwrap().retain(|&(i, b), _| i != ino || b < first || b > last);
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if self.inodes.lock().unwrap().forget(ino, n) {
            self.cache.lock().unwrap().invalidate(ino);
        }
    }

    // ---- names -----------------------------------------------------------------------

    pub async fn lookup(&self, c: Caller, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        let dir = self.fh(parent)?;
        match self.call(&self.cred(c), Request::Lookup { dir: dir.clone(), name: name.to_vec() }).await? {
            Response::Lookup { fh, attr, dir: dattr } => {
                if let Some(d) = dattr {
                    self.note_attr(&dir, &d);
                }
                Ok(self.remember(&fh, attr))
            }
            r => Err(unexpected(r)),
        }
    }

    fn created(&self, dir: &FileHandle, r: Response) -> Result<Entry, Errno> {
        match r {
            Response::Created { fh, attr, dir: wcc } => {
                self.note_wcc(dir, &wcc);
                Ok(self.remember(&fh, attr))
            }
            r => Err(unexpected(r)),
        }
    }

    pub async fn mkdir(&self, c: Caller, parent: u64, name: &[u8], mode: u32) -> Result<Entry, Errno> {
        let dir = self.fh(parent)?;
        let r = self.call(&self.cred(c), Request::Mkdir { dir: dir.clone(), name: name.to_vec(), mode }).await?;
        self.created(&dir, r)
    }

    pub async fn symlink(&self, c: Caller, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry, Errno> {
        let dir = self.fh(parent)?;
        let req = Request::Symlink { dir: dir.clone(), name: name.to_vec(), target: target.to_vec() };
        let r = self.call(&self.cred(c), req).await?;
        self.created(&dir, r)
    }

    /// `mode` carries the file type bits, as mknod(2).
    pub async fn mknod(&self, c: Caller, parent: u64, name: &[u8], mode: u32, rdev: u64) -> Result<Entry, Errno> {
        let dir = self.fh(parent)?;
        let perm = mode & 0o7777;
        let req = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => {
                Request::Create { dir: dir.clone(), name: name.to_vec(), mode: perm, how: CreateHow::Guarded }
            }
            libc::S_IFIFO => Request::Mknod { dir: dir.clone(), name: name.to_vec(), mode: perm, kind: NodeKind::Fifo },
            libc::S_IFSOCK => {
                Request::Mknod { dir: dir.clone(), name: name.to_vec(), mode: perm, kind: NodeKind::Socket }
            }
            libc::S_IFCHR => {
                Request::Mknod { dir: dir.clone(), name: name.to_vec(), mode: perm, kind: NodeKind::CharDevice(rdev) }
            }
            libc::S_IFBLK => {
                Request::Mknod { dir: dir.clone(), name: name.to_vec(), mode: perm, kind: NodeKind::BlockDevice(rdev) }
            }
            _ => return Err(Errno::EINVAL),
        };
        let r = self.call(&self.cred(c), req).await?;
        self.created(&dir, r)
    }

    pub async fn link(&self, c: Caller, ino: u64, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        let (fh, dir) = (self.fh(ino)?, self.fh(parent)?);
        let req = Request::Link { fh: fh.clone(), dir: dir.clone(), name: name.to_vec() };
        match self.call(&self.cred(c), req).await? {
            Response::Link { attr, dir: wcc } => {
                self.note_wcc(&dir, &wcc);
                Ok(self.remember(&fh, attr))
            }
            r => Err(unexpected(r)),
        }
    }

    /// If `name` in `dir` is a file open here, renames it out of the way and returns its
    /// node id.
    async fn silly_rename(&self, cred: &Cred, dir: &FileHandle, name: &[u8]) -> Result<Option<u64>, Errno> {
        if !self.inodes.lock().unwrap().any_open() {
            return Ok(None);
        }
        let fh = match self.call(cred, Request::Lookup { dir: dir.clone(), name: name.to_vec() }).await {
            Ok(Response::Lookup { fh, attr, .. }) if attr.kind != FileKind::Directory => fh,
            _ => return Ok(None),
        };
        let open_ino = {
            let t = self.inodes.lock().unwrap();
            t.ino_of(&fh).filter(|&i| t.get(i).is_some_and(|n| n.opens > 0))
        };
        let Some(ino) = open_ino else { return Ok(None) };
        let silly = format!(".fs-silly-{:016x}", self.rpc.client_id() ^ self.next_fh.fetch_add(1, Ordering::Relaxed))
            .into_bytes();
        let req = Request::Rename {
            from_dir: dir.clone(),
            from: name.to_vec(),
            to_dir: dir.clone(),
            to: silly.clone(),
            flags: RENAME_NOREPLACE,
        };
        match self.call(cred, req).await? {
            Response::Rename { from, .. } => self.note_wcc(dir, &from),
            r => return Err(unexpected(r)),
        }
        tracing::debug!(ino, "silly-renamed an open file");
        self.silly.lock().unwrap().insert(ino, (dir.clone(), silly, cred.clone()));
        Ok(Some(ino))
    }

    /// Undoes [`Client::silly_rename`] after the operation it made way for failed, so a
    /// failed rename loses nothing.
    async fn silly_undo(&self, ino: u64, name: &[u8]) {
        let Some((dir, silly, cred)) = self.silly.lock().unwrap().remove(&ino) else { return };
        let req = Request::Rename {
            from_dir: dir.clone(),
            from: silly,
            to_dir: dir.clone(),
            to: name.to_vec(),
            flags: RENAME_NOREPLACE,
        };
        match self.call(&cred, req).await {
            Ok(Response::Rename { from, .. }) => self.note_wcc(&dir, &from),
            Ok(r) => drop(unexpected(r)),
            Err(e) => tracing::warn!("cannot give a silly-renamed file its name back: {e}"),
        }
    }

    pub async fn unlink(&self, c: Caller, parent: u64, name: &[u8]) -> Result<(), Errno> {
        let dir = self.fh(parent)?;
        let cred = self.cred(c);
        if self.silly_rename(&cred, &dir, name).await?.is_some() {
            return Ok(());
        }
        match self.call(&cred, Request::Remove { dir: dir.clone(), name: name.to_vec() }).await? {
            Response::Wcc(w) => self.note_wcc(&dir, &w),
            r => return Err(unexpected(r)),
        }
        Ok(())
    }

    pub async fn rmdir(&self, c: Caller, parent: u64, name: &[u8]) -> Result<(), Errno> {
        let dir = self.fh(parent)?;
        match self.call(&self.cred(c), Request::Rmdir { dir: dir.clone(), name: name.to_vec() }).await? {
            Response::Wcc(w) => self.note_wcc(&dir, &w),
            r => return Err(unexpected(r)),
        }
        Ok(())
    }

    pub async fn rename(
        &self,
        c: Caller,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        let (from_dir, to_dir) = (self.fh(parent)?, self.fh(newparent)?);
        let cred = self.cred(c);
        // A file open here that the rename replaces stays usable until its last close.
        let moved = if flags & (RENAME_EXCHANGE | RENAME_NOREPLACE) == 0 {
            self.silly_rename(&cred, &to_dir, newname).await?
        } else {
            None
        };
        let req = Request::Rename {
            from_dir: from_dir.clone(),
            from: name.to_vec(),
            to_dir: to_dir.clone(),
            to: newname.to_vec(),
            flags,
        };
        let res = self.call(&cred, req).await;
        if let (Err(_), Some(ino)) = (&res, moved) {
            self.silly_undo(ino, newname).await;
        }
        match res? {
            Response::Rename { from, to } => {
                // A moved directory's own attributes (ctime, "..") changed too, and the
                // reply does not carry them: no cached directory attributes are trusted.
                self.inodes.lock().unwrap().expire_directories(Instant::now());
                self.note_wcc(&from_dir, &from);
                self.note_wcc(&to_dir, &to);
            }
            r => return Err(unexpected(r)),
        }
        Ok(())
    }

    // ---- attributes ------------------------------------------------------------------

    /// What the kernel should see: the server's attributes, with the size grown by
    /// writes still buffered here.
    /// A silly-renamed file shows the link count it would have had, had it really been
    /// removed (pjdfstest's `unlink::open_file_not_freed`).
    fn local_view(&self, ino: u64, mut attr: Attr) -> Attr {
        if let Some(f) = self.files.lock().unwrap().get(&ino) {
            let end = f.wb.lock().unwrap().written_end;
            attr.size = attr.size.max(end);
        }
        if self.silly.lock().unwrap().contains_key(&ino) {
            attr.nlink = attr.nlink.saturating_sub(1);
        }
        attr
    }

    pub async fn getattr(&self, c: Caller, ino: u64) -> Result<(Attr, Duration), Errno> {
        // A directory's attributes come back with every change we make in it (weak cache
        // consistency), so while they are fresh they are served from here: the kernel
        // drops its copy after each create or unlink, and asking the server again cost a
        // second round trip per `rm` (RFC 1813, 2.6). Files always ask: an unlink or
        // link elsewhere changes their link count without telling us.
        let fresh = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(Errno::ESTALE)?;
            (n.attr.kind == FileKind::Directory && Instant::now() < n.attr_valid_until).then_some(n.attr)
        };
        if let Some(a) = fresh {
            return Ok((a, self.attr_ttl(&a)));
        }
        let fh = self.fh(ino)?;
        match self.call(&self.cred(c), Request::GetAttr { fh: fh.clone() }).await? {
            Response::Attr(a) => {
                self.note_attr(&fh, &a);
                Ok((self.local_view(ino, a), self.attr_ttl(&a)))
            }
            r => Err(unexpected(r)),
        }
    }

    pub async fn setattr(self: &Arc<Self>, c: Caller, ino: u64, attrs: SetAttrs) -> Result<(Attr, Duration), Errno> {
        let fh = self.fh(ino)?;
        // Buffered writes must land first: after a truncate they would extend the file
        // again, and after a new mtime they would overwrite it (`tar`, `touch` after write).
        self.writeback(ino).await?;
        if let Some(size) = attrs.size {
            if let Some(f) = self.files.lock().unwrap().get(&ino) {
                let mut wb = f.wb.lock().unwrap();
                wb.dirty.truncate(size);
                wb.unstable.forget(size, u64::MAX);
                wb.written_end = wb.written_end.min(size);
            }
            self.invalidate(ino, size, u64::MAX);
        }
        let req = Request::SetAttr { fh: fh.clone(), attrs, guard: None };
        let wcc = match self.call(&self.cred(c), req).await? {
            Response::Wcc(w) => w,
            r => return Err(unexpected(r)),
        };
        let attr = match wcc.after {
            Some(a) => a,
            None => return self.getattr(c, ino).await,
        };
        self.note_attr(&fh, &attr);
        if attrs.size.is_some() {
            // Our own truncate: the new change attribute is ours, so the next open need
            // not drop the kernel's cache; our blocks (tagged with the old one) go.
            if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                n.data_change = attr.change;
            }
            self.invalidate(ino, 0, u64::MAX);
        }
        Ok((self.local_view(ino, attr), self.attr_ttl(&attr)))
    }

    pub async fn readlink(&self, c: Caller, ino: u64) -> Result<Vec<u8>, Errno> {
        match self.call(&self.cred(c), Request::ReadLink { fh: self.fh(ino)? }).await? {
            Response::ReadLink { target } => Ok(target),
            r => Err(unexpected(r)),
        }
    }

    pub async fn access(&self, c: Caller, ino: u64, mask: u32) -> Result<(), Errno> {
        if mask == 0 {
            return self.getattr(c, ino).await.map(drop);
        }
        match self.call(&self.cred(c), Request::Access { fh: self.fh(ino)?, mask }).await? {
            Response::Access { granted, .. } if granted & mask == mask => Ok(()),
            Response::Access { .. } => Err(Errno::EACCES),
            r => Err(unexpected(r)),
        }
    }

    pub async fn statfs(&self, c: Caller, ino: u64) -> Result<FsStat, Errno> {
        match self.call(&self.cred(c), Request::FsStat { fh: self.fh(ino)? }).await? {
            Response::FsStat(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    // ---- extended attributes ---------------------------------------------------------

    pub async fn getxattr(&self, c: Caller, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        match self.call(&self.cred(c), Request::GetXattr { fh: self.fh(ino)?, name: name.to_vec() }).await? {
            Response::Xattr(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub async fn listxattr(&self, c: Caller, ino: u64) -> Result<Vec<u8>, Errno> {
        match self.call(&self.cred(c), Request::ListXattr { fh: self.fh(ino)? }).await? {
            Response::Xattr(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub async fn setxattr(&self, c: Caller, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        let fh = self.fh(ino)?;
        let req = Request::SetXattr { fh: fh.clone(), name: name.to_vec(), value: value.to_vec(), flags };
        match self.call(&self.cred(c), req).await? {
            Response::Attr(a) => self.note_attr(&fh, &a),
            r => return Err(unexpected(r)),
        }
        Ok(())
    }

    pub async fn removexattr(&self, c: Caller, ino: u64, name: &[u8]) -> Result<(), Errno> {
        let fh = self.fh(ino)?;
        match self.call(&self.cred(c), Request::RemoveXattr { fh: fh.clone(), name: name.to_vec() }).await? {
            Response::Attr(a) => self.note_attr(&fh, &a),
            r => return Err(unexpected(r)),
        }
        Ok(())
    }

    // ---- open files ------------------------------------------------------------------

    fn new_open(&self, ino: u64, cred: Cred) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.opens.lock().unwrap().insert(fh, OpenFile { cred, ra: ReadAhead::default(), listing: None });
        self.inodes.lock().unwrap().open(ino);
        fh
    }

    fn file_state(&self, ino: u64, fh: &FileHandle, cred: &Cred) {
        let mut files = self.files.lock().unwrap();
        // A state left by a file whose node id now names another object (deleted, its
        // number reused, while a background COMMIT still ran) is not this file's.
        if files.get(&ino).is_some_and(|f| f.fh != *fh) {
            files.remove(&ino);
        }
        let f = files.entry(ino).or_insert_with(|| {
            Arc::new(FileState {
                fh: fh.clone(),
                fence: Default::default(),
                cred: Mutex::new(cred.clone()),
                opens: Mutex::new(0),
                wb: Mutex::new(Wb::default()),
                idle: Notify::new(),
            })
        });
        *f.opens.lock().unwrap() += 1;
        *f.cred.lock().unwrap() = cred.clone();
    }

    /// Close-to-open: fetch attributes; keep cached data only if the file is unchanged.
    /// `reads`: the file is opened for reading (not `O_WRONLY`).
    pub async fn open(&self, c: Caller, ino: u64, reads: bool) -> Result<Opened, Errno> {
        let fh = self.fh(ino)?;
        let cred = self.cred(c);
        let attr = match self.call(&cred, Request::GetAttr { fh: fh.clone() }).await? {
            Response::Attr(a) => a,
            r => return Err(unexpected(r)),
        };
        self.note_attr(&fh, &attr);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let (unchanged, atime_due) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(Errno::ESTALE)?;
            let same = n.data_change == attr.change;
            // Blocks tagged with the old change attribute become unreachable.
            n.data_change = attr.change;
            // Reads the kernel serves from its page cache never reach us, so a read that
            // would update the access time must not find the kernel's pages.
            let due = reads && !self.opts.noatime && atime_due(&attr, now);
            n.atime_due |= due;
            (same, due)
        };
        self.file_state(ino, &fh, &cred);
        Ok(Opened { fh: self.new_open(ino, cred), keep_cache: unchanged && !atime_due, attrs_changed: !unchanged })
    }

    /// A read that must reach the server for the access time's sake (see [`Client::open`]):
    /// true once after an open found the access time due.
    fn take_atime_due(&self, ino: u64) -> bool {
        let mut t = self.inodes.lock().unwrap();
        t.get_mut(ino).is_some_and(|n| std::mem::take(&mut n.atime_due))
    }

    /// CREATE and open in one step (the kernel's `create`).
    pub async fn create(
        &self,
        c: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        exclusive: bool,
    ) -> Result<(Entry, u64), Errno> {
        let dir = self.fh(parent)?;
        let cred = self.cred(c);
        let how = if exclusive { CreateHow::Guarded } else { CreateHow::Unchecked };
        let r = self
            .call(&cred, Request::Create { dir: dir.clone(), name: name.to_vec(), mode: mode & 0o7777, how })
            .await?;
        let entry = self.created(&dir, r)?;
        let fh = self.fh(entry.ino)?;
        if let Some(n) = self.inodes.lock().unwrap().get_mut(entry.ino) {
            n.data_change = entry.attr.change;
        }
        self.file_state(entry.ino, &fh, &cred);
        Ok((entry.clone(), self.new_open(entry.ino, cred)))
    }

    /// `close(2)` of one descriptor: every buffered write reaches the server, so the next
    /// open anywhere sees it (close-to-open), and an error a background write met is
    /// reported here. The COMMIT follows in the background ([`Client::release`]);
    /// `fsync` waits for it.
    pub async fn flush(self: &Arc<Self>, ino: u64) -> Result<(), Errno> {
        let Some(f) = self.files.lock().unwrap().get(&ino).cloned() else { return Ok(()) };
        self.drain(&f).await;
        let error = f.wb.lock().unwrap().error.take();
        error.map_or(Ok(()), Err)
    }

    /// `fsync(2)`: written, committed, and resent until the server has it on stable
    /// storage under one write verifier.
    pub async fn fsync(self: &Arc<Self>, ino: u64) -> Result<(), Errno> {
        let Some(f) = self.files.lock().unwrap().get(&ino).cloned() else { return Ok(()) };
        self.sync(&f).await
    }

    /// The last close of an open file description. On the file's last close the COMMIT
    /// runs in the background: the data is already on the server (visible to every client),
    /// and we keep our copy until the server says it is on stable storage, resending it
    /// if the server restarted meanwhile. A silly-renamed file is removed after that.
    pub async fn release(self: &Arc<Self>, ino: u64, fh: u64) -> Result<(), Errno> {
        self.opens.lock().unwrap().remove(&fh);
        let f = self.files.lock().unwrap().get(&ino).cloned();
        let result = self.flush(ino).await;
        let last = f.as_ref().is_some_and(|f| {
            let mut o = f.opens.lock().unwrap();
            *o = o.saturating_sub(1);
            *o == 0
        });
        if self.inodes.lock().unwrap().release(ino) {
            self.cache.lock().unwrap().invalidate(ino);
        }
        if let (true, Some(f)) = (last, f) {
            let this = self.clone();
            self.background.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Err(e) = this.sync(&f).await {
                    tracing::warn!(ino, "background commit failed: {e}");
                }
                let reopened = {
                    let mut files = this.files.lock().unwrap();
                    let reopened =
                        files.get(&ino).is_some_and(|cur| !Arc::ptr_eq(cur, &f) || *cur.opens.lock().unwrap() > 0);
                    if !reopened {
                        files.remove(&ino);
                    }
                    reopened
                };
                // Opened again meanwhile: that open's last close removes a silly name.
                let silly = if reopened { None } else { this.silly.lock().unwrap().remove(&ino) };
                if let Some((dir, name, cred)) = silly {
                    // As the caller who removed it: under root squash uid 0 is nobody,
                    // who may not remove it from a user's directory.
                    if let Err(e) = this.call(&cred, Request::Remove { dir, name }).await {
                        tracing::warn!("cannot remove silly-renamed file: {e}");
                    }
                }
                this.background.fetch_sub(1, Ordering::SeqCst);
                this.quiet.notify_waiters();
            });
        }
        result
    }

    /// Waits (up to `limit`) for background commits to finish; called at unmount.
    pub async fn quiesce(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let n = self.quiet.notified();
                if self.background.load(Ordering::SeqCst) == 0 {
                    return;
                }
                n.await;
            }
        })
        .await;
    }

    pub fn opendir(&self, c: Caller) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.opens.lock().unwrap().insert(fh, OpenFile { cred: self.cred(c), ra: ReadAhead::default(), listing: None });
        fh
    }

    pub fn releasedir(&self, fh: u64) {
        self.opens.lock().unwrap().remove(&fh);
    }

    /// The directory listing of an open directory handle: fetched whole (READDIRPLUS,
    /// as many calls as it takes) when the kernel asks from offset 0, then served from
    /// memory for the kernel's following calls. Offsets are indices + 1.
    pub async fn readdir(&self, dir_ino: u64, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let (cred, cached) = {
            let o = self.opens.lock().unwrap();
            let of = o.get(&fh).ok_or(Errno::EBADF)?;
            (of.cred.clone(), of.listing.clone())
        };
        if let (Some(l), true) = (cached, offset != 0) {
            return Ok(l);
        }
        let dir = self.fh(dir_ino)?;
        let (mut cookie, mut verifier, mut all) = (0u64, 0u64, Vec::new());
        loop {
            let req = Request::ReadDirPlus { dir: dir.clone(), cookie, verifier, count: 256 * 1024 };
            match self.call(&cred, req).await? {
                Response::Dir { verifier: v, entries, eof, attr } => {
                    self.note_attr(&dir, &attr);
                    verifier = v;
                    if let Some(last) = entries.last() {
                        cookie = last.cookie;
                    }
                    let got = entries.len();
                    all.extend(entries);
                    if eof || got == 0 {
                        break;
                    }
                }
                r => return Err(unexpected(r)),
            }
        }
        let listing = Arc::new(all);
        if let Some(of) = self.opens.lock().unwrap().get_mut(&fh) {
            of.listing = Some(listing.clone());
        }
        Ok(listing)
    }

    // ---- data ------------------------------------------------------------------------

    /// Reads `size` bytes at `offset` through the page cache, starting read-ahead.
    pub async fn read(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        // The epoch is taken before the write-back, so that a write arriving while this
        // read is under way (the kernel's read-ahead runs beside the program) makes what
        // we fetch uncacheable: it may have reached the server before that write did.
        let epoch = self.cache.lock().unwrap().epoch(ino);
        self.writeback(ino).await?;
        let bs = self.opts.block_size as u64;
        let (file, change, file_size) = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(Errno::ESTALE)?;
            (n.fh.clone(), n.data_change, n.attr.size)
        };
        let (cred, ahead, random) = {
            let mut o = self.opens.lock().unwrap();
            let of = o.get_mut(&fh).ok_or(Errno::EBADF)?;
            let ahead = of.ra.on_read(offset, size as u64, bs, self.opts.readahead, file_size);
            (of.cred.clone(), ahead, of.ra.is_random())
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let first = offset / bs;
        let last = (offset + size as u64 - 1) / bs;
        let due = self.take_atime_due(ino);
        if due || (random && !self.cached(ino, change, first..last + 1)) {
            // A random reader gets what it asked for, not whole blocks: a 4 KiB read
            // that fetched 128 KiB cost the server 32 times the disk reads (measured:
            // a fifth of the local file system's random-read rate). The first read after
            // an open that found the access time due goes to the server, whose file
            // system updates the access time (relatime), even if we have it cached.
            return match self.call(&cred, Request::Read { fh: file, offset, count: size }).await? {
                Response::Read { data, .. } => Ok(data),
                r => Err(unexpected(r)),
            };
        }
        let needed: Vec<Fetch> = self.start_fetches(ino, &file, &cred, change, epoch, first..last + 1);
        if !ahead.is_empty() {
            drop(self.start_fetches(ino, &file, &cred, change, epoch, ahead));
        }
        let mut out = Vec::with_capacity(size as usize);
        for (i, mut rx) in needed.into_iter().enumerate() {
            let block = first + i as u64;
            let data = match rx.wait_for(|v| v.is_some()).await {
                Ok(v) => v.clone().expect("some")?,
                Err(_) => return Err(Errno::EIO),
            };
            let start = if block == first { (offset - block * bs) as usize } else { 0 };
            if start >= data.len() {
                break;
            }
            let want = size as usize - out.len();
            let end = (start + want).min(data.len());
            out.extend_from_slice(&data[start..end]);
            if data.len() < bs as usize || out.len() == size as usize {
                break;
            }
        }
        Ok(out)
    }

    /// Whether every block of `blocks` is in the page cache under `change`.
    fn cached(&self, ino: u64, change: u64, blocks: std::ops::Range<u64>) -> bool {
        let mut cache = self.cache.lock().unwrap();
        blocks.into_iter().all(|b| cache.get(ino, b, change).is_some())
    }

    /// Returns a receiver per block of `blocks`, starting READs for those neither cached
    /// nor already being fetched (consecutive ones in one READ of up to `max_io`).
    fn start_fetches(
        self: &Arc<Self>,
        ino: u64,
        file: &FileHandle,
        cred: &Cred,
        change: u64,
        epoch: u64,
        blocks: std::ops::Range<u64>,
    ) -> Vec<Fetch> {
        let bs = self.opts.block_size as u64;
        let per_read = (self.max_io as u64 / bs).max(1);
        let mut out = Vec::new();
        let mut run: Vec<(u64, Filler)> = Vec::new();
        let mut runs = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap();
            let mut fetches = self.fetches.lock().unwrap();
            for b in blocks {
                if let Some(d) = cache.get(ino, b, change) {
                    out.push(watch::channel(Some(Ok(d))).1);
                    if !run.is_empty() {
                        runs.push(std::mem::take(&mut run));
                    }
                    continue;
                }
                if let Some(rx) = fetches.get(&(ino, b)) {
                    out.push(rx.clone());
                    if !run.is_empty() {
                        runs.push(std::mem::take(&mut run));
                    }
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                fetches.insert((ino, b), rx.clone());
                out.push(rx);
                if run.len() as u64 == per_read {
                    runs.push(std::mem::take(&mut run));
                }
                run.push((b, tx));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        for run in runs {
            let this = self.clone();
            let (file, cred) = (file.clone(), cred.clone());
            tokio::spawn(async move { this.fetch_run(ino, file, cred, change, epoch, run).await });
        }
        out
    }

    async fn fetch_run(
        &self,
        ino: u64,
        file: FileHandle,
        cred: Cred,
        change: u64,
        epoch: u64,
        run: Vec<(u64, Filler)>,
    ) {
        let bs = self.opts.block_size;
        let first = run[0].0;
        let count = (run.len() * bs) as u32;
        let res = self.call(&cred, Request::Read { fh: file, offset: first * bs as u64, count }).await;
        let data = match res {
            Ok(Response::Read { data, .. }) => Ok(data),
            Ok(r) => Err(unexpected(r)),
            Err(e) => Err(e),
        };
        let mut cache = self.cache.lock().unwrap();
        let mut fetches = self.fetches.lock().unwrap();
        for (i, (b, tx)) in run.into_iter().enumerate() {
            // A write may have dropped our entry and a newer fetch taken its place.
            if fetches.get(&(ino, b)).is_some_and(|rx| rx.same_channel(&tx.subscribe())) {
                fetches.remove(&(ino, b));
            }
            let result = match &data {
                Ok(d) => {
                    let start = (i * bs).min(d.len());
                    let end = (start + bs).min(d.len());
                    let block: Data = Arc::new(d[start..end].to_vec());
                    cache.insert(ino, b, change, epoch, block.clone());
                    Ok(block)
                }
                Err(e) => Err(*e),
            };
            let _ = tx.send(Some(result));
        }
    }

    /// Buffers a write; full `wsize` pieces go to the server at once (in parallel, up to
    /// `writes_in_flight`; waiting for a slot is the back-pressure on the writer).
    pub async fn write(self: &Arc<Self>, ino: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        if self.opts.read_only {
            return Err(Errno::EROFS);
        }
        let f = self.files.lock().unwrap().get(&ino).cloned().ok_or(Errno::EBADF)?;
        let known_size = self.inodes.lock().unwrap().get(ino).map_or(0, |n| n.attr.size);
        let full = {
            let mut wb = f.wb.lock().unwrap();
            // Drop cached blocks this write makes stale: the ones it covers and, when it
            // extends the file, the old last block, which ends short (a short block means
            // end of file, and a short READ makes the kernel shrink the file).
            let old_end = known_size.max(wb.written_end);
            self.invalidate(ino, offset.min(old_end), offset + data.len() as u64);
            wb.dirty.write(offset, data);
            wb.written_end = wb.written_end.max(offset + data.len() as u64);
            let full = wb.dirty.take_full(self.opts.wsize.min(self.max_io));
            wb.queue(full)
        };
        for (seq, off, chunk) in full {
            self.send_write(&f, seq, off, chunk).await;
        }
        // Bound what waits for a COMMIT in memory: start one in the background at the
        // threshold, and make the writer wait for one at twice that.
        let (pending, start) = {
            let mut wb = f.wb.lock().unwrap();
            let start = wb.unstable.bytes() >= self.commit_threshold() && !wb.committing;
            if start {
                wb.committing = true;
            }
            (wb.unstable.bytes(), start)
        };
        if start {
            let (this, f) = (self.clone(), f.clone());
            tokio::spawn(async move {
                if let Err(e) = this.commit(&f).await {
                    f.wb.lock().unwrap().error.get_or_insert(e);
                }
                f.wb.lock().unwrap().committing = false;
            });
        } else if pending >= 2 * self.commit_threshold() {
            self.commit(&f).await?;
        }
        Ok(data.len() as u32)
    }

    fn commit_threshold(&self) -> usize {
        (self.opts.cache_size / 2).max(32 << 20)
    }

    /// Sends one WRITE, queued by [`Wb::queue`], once no older overlapping WRITE is still
    /// on its way.
    async fn send_write(self: &Arc<Self>, f: &Arc<FileState>, seq: u64, offset: u64, data: Vec<u8>) {
        let end = offset + data.len() as u64;
        loop {
            let idle = f.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let blocked = f.wb.lock().unwrap().sending.iter().any(|&(q, s, e)| q < seq && s < end && offset < e);
            if !blocked {
                break;
            }
            idle.await;
        }
        let permit = self.write_slots.clone().acquire_owned().await.expect("never closed");
        let (this, f) = (self.clone(), f.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let cred = f.cred.lock().unwrap().clone();
            let fence = f.fence.load(std::sync::atomic::Ordering::SeqCst);
            let req = Request::Write { fh: f.fh.clone(), offset, stable: Stable::Unstable, fence, data: data.clone() };
            let res = this.rpc.call(&cred, req).await;
            let mut wb = f.wb.lock().unwrap();
            wb.sending.retain(|&(q, _, _)| q != seq);
            match res {
                Ok(Response::Write { committed, verifier, wcc, .. }) => {
                    if committed == Stable::Unstable {
                        wb.unstable.push(offset, data, verifier);
                    }
                    if let Some(a) = &wcc.after {
                        wb.last_write_change = wb.last_write_change.max(a.change);
                    }
                    drop(wb);
                    this.note_wcc(&f.fh, &wcc);
                }
                Ok(r) => wb.error = Some(unexpected(r)),
                Err(e) => wb.error = Some(e),
            }
            f.idle.notify_waiters();
        });
    }

    /// Sends every buffered byte of `ino` and waits until no WRITE is in flight.
    async fn writeback(self: &Arc<Self>, ino: u64) -> Result<(), Errno> {
        let Some(f) = self.files.lock().unwrap().get(&ino).cloned() else { return Ok(()) };
        self.drain(&f).await;
        Ok(())
    }

    async fn drain(self: &Arc<Self>, f: &Arc<FileState>) {
        let chunks = {
            let mut wb = f.wb.lock().unwrap();
            let chunks = wb.dirty.take_all(self.opts.wsize.min(self.max_io));
            wb.queue(chunks)
        };
        for (seq, off, chunk) in chunks {
            self.send_write(f, seq, off, chunk).await;
        }
        loop {
            let idle = f.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                if f.wb.lock().unwrap().sending.is_empty() {
                    return;
                }
            }
            idle.await;
        }
    }

    /// COMMITs what was written so far; data a restarted server may have lost (its write
    /// verifier changed) goes back into the dirty buffer to be sent again.
    async fn commit(self: &Arc<Self>, f: &Arc<FileState>) -> Result<bool, Errno> {
        let batch = f.wb.lock().unwrap().unstable.take();
        if batch.is_empty() {
            return Ok(true);
        }
        let cred = f.cred.lock().unwrap().clone();
        let res = self.rpc.call(&cred, Request::Commit { fh: f.fh.clone(), offset: 0, count: 0 }).await;
        let mut wb = f.wb.lock().unwrap();
        match res {
            Ok(Response::Commit { verifier, wcc }) => {
                let clean = match batch.committed(verifier) {
                    Committed::Clean => true,
                    Committed::Resend(writes) => {
                        tracing::warn!("server restarted (new write verifier): resending uncommitted writes");
                        // Among themselves the newest wins; under what was written
                        // since, they are older and only fill gaps.
                        let mut again = Dirty::default();
                        for (offset, data) in writes {
                            again.write(offset, &data);
                        }
                        for (offset, data) in again.take_all(usize::MAX) {
                            wb.dirty.write_older(offset, &data);
                        }
                        false
                    }
                };
                let ours = wb.last_write_change;
                drop(wb);
                if let Some(after) = wcc.after {
                    self.note_attr(&f.fh, &after);
                    // If the file is as our last WRITE left it, the change is ours and
                    // what we cached stays valid under it. If another client wrote since
                    // (this COMMIT runs in the background after close), it is not: keep
                    // the old change, so the next open drops the cache (RFC 1813 2.6's
                    // weak cache consistency: adopt post-op attributes only when the
                    // pre-op ones match what we knew).
                    let before =
                        wcc.before.map(|b| (b.ctime.sec as u64).wrapping_mul(1_000_000_000) + b.ctime.nsec as u64);
                    if ours != 0 && before == Some(ours) {
                        let mut t = self.inodes.lock().unwrap();
                        if let Some(n) = t.ino_of(&f.fh).and_then(|i| t.get_mut(i)) {
                            n.data_change = after.change;
                        }
                    }
                }
                Ok(clean)
            }
            other => {
                wb.unstable.restore(batch);
                match other {
                    Ok(r) => Err(unexpected(r)),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Write back, wait, commit, and resend until the server has it all on stable
    /// storage under one verifier; then report any error a background write met.
    async fn sync(self: &Arc<Self>, f: &Arc<FileState>) -> Result<(), Errno> {
        loop {
            self.drain(f).await;
            if let Some(e) = f.wb.lock().unwrap().error.take() {
                return Err(e);
            }
            if self.commit(f).await? {
                return Ok(());
            }
        }
    }

    pub async fn fallocate(
        self: &Arc<Self>,
        c: Caller,
        ino: u64,
        offset: u64,
        len: u64,
        mode: u32,
    ) -> Result<(), Errno> {
        self.writeback(ino).await?;
        let fh = self.fh(ino)?;
        let old_size = self.inodes.lock().unwrap().get(ino).map_or(0, |n| n.attr.size);
        match self.call(&self.cred(c), Request::Fallocate { fh: fh.clone(), mode, offset, len }).await? {
            Response::Wcc(w) => self.note_wcc(&fh, &w),
            r => return Err(unexpected(r)),
        }
        // Punched and zeroed ranges read as zeros now, and a file extended by allocation
        // no longer ends at its old last block (a short block means end of file): drop
        // exactly those blocks. (The kernel drops its own pages of a punched or zeroed
        // range when we answer.)
        self.invalidate(ino, offset.min(old_size), offset.saturating_add(len));
        if let Some(f) = self.files.lock().unwrap().get(&ino) {
            f.wb.lock().unwrap().unstable.forget(offset, offset.saturating_add(len));
        }
        Ok(())
    }
}

/// Supplementary groups of a process, from `/proc/PID/status`.
fn proc_groups(pid: u32) -> Option<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Groups:"))?;
    Some(line["Groups:".len()..].split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What /proc says of this process is what getgroups(2) says.
    #[test]
    fn groups_of_this_process() {
        let mut want = vec![0 as libc::gid_t; 65536];
        // SAFETY: the buffer has room for as many groups as we say.
        let n = unsafe { libc::getgroups(want.len() as i32, want.as_mut_ptr()) };
        assert!(n >= 0, "getgroups: {}", std::io::Error::last_os_error());
        want.truncate(n as usize);
        let mut got = proc_groups(std::process::id()).unwrap();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(proc_groups(u32::MAX).is_none());
    }
}
