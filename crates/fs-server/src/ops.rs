//! One function per operation. Each resolves its handles first (with the server's own
//! identity, as `open_by_handle_at` needs), then assumes the caller's identity and makes
//! the system calls, all relative to descriptors: no path is ever joined, no symlink is
//! ever followed, and `..` at the export root stays at the root.

use crate::creds::CredGuard;
use crate::handles::Obj;
use crate::server::Server;
use crate::sys;
use fs_proto::*;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

pub type OpResult = Result<Response, Errno>;

/// Largest extended attribute value accepted (the Linux VFS limit).
const MAX_XATTR: usize = 64 * 1024;

/// Seconds every time this server reports is shifted by, and every time it is given is
/// shifted back (`--test-clock-skew`: a server with a wrong clock, for tests).
static CLOCK_SKEW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn set_clock_skew(secs: i64) {
    CLOCK_SKEW.store(secs, std::sync::atomic::Ordering::Relaxed);
}

fn skew() -> i64 {
    CLOCK_SKEW.load(std::sync::atomic::Ordering::Relaxed)
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec { sec: sec + skew(), nsec: nsec as u32 }
}

fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        _ => FileKind::Regular,
    }
}

fn kind_of_dtype(t: u8) -> Option<FileKind> {
    Some(match t {
        libc::DT_REG => FileKind::Regular,
        libc::DT_DIR => FileKind::Directory,
        libc::DT_LNK => FileKind::Symlink,
        libc::DT_BLK => FileKind::BlockDevice,
        libc::DT_CHR => FileKind::CharDevice,
        libc::DT_FIFO => FileKind::Fifo,
        libc::DT_SOCK => FileKind::Socket,
        _ => return None,
    })
}

pub fn attr_of(st: &libc::stat, fsid: u64) -> Attr {
    Attr {
        kind: kind_of(st.st_mode),
        mode: st.st_mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        used: st.st_blocks as u64 * 512,
        rdev: st.st_rdev,
        fsid,
        fileid: st.st_ino,
        blksize: st.st_blksize as u32,
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        change: ts(st.st_ctime, st.st_ctime_nsec).change(),
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn need_dir(o: &Obj) -> Result<(), Errno> {
    if is_dir(&o.st) {
        Ok(())
    } else {
        Err(Errno::ENOTDIR)
    }
}

/// Data operations (read, write, truncate, fallocate) apply to regular files only; in
/// particular never through a symlink.
fn need_regular(st: &libc::stat) -> Result<(), Errno> {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(()),
        libc::S_IFDIR => Err(Errno::EISDIR),
        _ => Err(Errno::EINVAL),
    }
}

/// One name component from the wire: not empty, no `/` or NUL, at most 255 bytes.
fn component(name: &[u8]) -> Result<CString, Errno> {
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name.len() > MAX_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// Where a file's newest fencing number lives (`trusted.*`: only the server, as root,
/// reaches it; clients are refused below).
const FENCE_XATTR: &std::ffi::CStr = c"trusted.fs.fence";

/// One lock per file (by device and inode number), made when first needed and gone
/// when nobody holds it: fenced writes to different files never wait for each other.
#[derive(Default)]
pub struct FileLocks {
    map: std::sync::Mutex<std::collections::HashMap<FileKey, std::sync::Weak<std::sync::Mutex<()>>>>,
}

/// A file by device and inode number.
type FileKey = (u64, u64);

impl FileLocks {
    pub fn get(&self, st: &libc::stat) -> std::sync::Arc<std::sync::Mutex<()>> {
        let key = (st.st_dev, st.st_ino);
        let mut map = crate::lock(&self.map);
        if let Some(l) = map.get(&key).and_then(std::sync::Weak::upgrade) {
            return l;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let l = std::sync::Arc::new(std::sync::Mutex::new(()));
        map.insert(key, std::sync::Arc::downgrade(&l));
        l
    }

    pub fn len(&self) -> usize {
        crate::lock(&self.map).values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn xattr_name(name: &[u8]) -> Result<CString, Errno> {
    if name.is_empty() || name.len() > 255 {
        return Err(Errno::ERANGE);
    }
    if name.starts_with(b"trusted.fs.") {
        return Err(Errno::EPERM);
    }
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// A file's owner may read and write it whatever its mode bits say, as with knfsd's
/// `NFSD_MAY_OWNER_OVERRIDE`: the client checked permission when the file was opened
/// (think `open(O_CREAT|O_WRONLY, 0444)`, then `write`).
fn owner_override<T>(g: &CredGuard, st: &libc::stat, f: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match f() {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) && st.st_uid == g.uid => g.as_server(f),
        r => r,
    }
}

fn pre(st: &libc::stat) -> Option<WccAttr> {
    Some(WccAttr {
        size: st.st_size as u64,
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
    })
}

fn set_time(t: SetTime) -> libc::timespec {
    match t {
        SetTime::DontChange => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        SetTime::ServerNow => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        SetTime::Set(t) => libc::timespec { tv_sec: t.sec - skew(), tv_nsec: i64::from(t.nsec.min(999_999_999)) },
    }
}

impl Server {
    fn attr(&self, st: &libc::stat) -> Attr {
        attr_of(st, self.handles.export_id())
    }

    fn post(&self, fd: RawFd) -> Option<Attr> {
        sys::fstat(fd).ok().map(|st| self.attr(&st))
    }

    fn wcc(&self, o: &Obj) -> Wcc {
        Wcc { before: pre(&o.st), after: self.post(o.raw()) }
    }

    /// Handle and attributes of a just-reached object, caching its descriptor.
    fn entry(&self, fd: OwnedFd) -> Result<(FileHandle, Attr), Errno> {
        let st = sys::fstat(fd.as_raw_fd())?;
        let fh = self.handles.adopt(fd)?;
        Ok((fh, self.attr(&st)))
    }

    fn created(&self, dir: &Obj, fd: OwnedFd) -> OpResult {
        let (fh, attr) = self.entry(fd)?;
        Ok(Response::Created { fh, attr, dir: self.wcc(dir) })
    }

    /// Drops the cached descriptor of whatever `name` in `dir` is now, before it is
    /// unlinked or replaced, so its space is freed when the last link goes.
    fn forget_name(&self, dirfd: RawFd, name: &CStr) {
        if let Ok(fh) = self.handles.make(dirfd, name) {
            self.handles.forget(&fh);
        }
    }

    pub(crate) fn op_mount(&self, path: &str) -> OpResult {
        if !path.is_empty() && path != "/" {
            return Err(Errno::ENOENT);
        }
        let root = self.handles.root().clone();
        let o = self.handles.resolve(&root)?;
        Ok(Response::Mount { attr: self.attr(&o.st), root, max_io: MAX_IO as u32 })
    }

    pub(crate) fn op_getattr(&self, fh: &FileHandle) -> OpResult {
        Ok(Response::Attr(self.attr(&self.handles.resolve(fh)?.st)))
    }

    pub(crate) fn op_setattr(&self, cred: &Cred, fh: &FileHandle, a: &SetAttrs, guard: Option<Timespec>) -> OpResult {
        let o = self.handles.resolve(fh)?;
        if let Some(t) = guard {
            if t != ts(o.st.st_ctime, o.st.st_ctime_nsec) {
                return Err(Errno::NOT_SYNC);
            }
        }
        let g = self.ident.assume(cred)?;
        let fd = o.raw();
        if let Some(size) = a.size {
            need_regular(&o.st)?;
            let size = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
            owner_override(&g, &o.st, || sys::truncate_fd(fd, size))?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchownat_fd(fd, a.uid.unwrap_or(u32::MAX), a.gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = a.mode {
            sys::chmod_fd(fd, mode & 0o7777)?;
        }
        if a.atime != SetTime::DontChange || a.mtime != SetTime::DontChange {
            sys::utimens_fd(fd, &[set_time(a.atime), set_time(a.mtime)])?;
        }
        Ok(Response::Wcc(self.wcc(&o)))
    }

    pub(crate) fn op_lookup(&self, cred: &Cred, dir: &FileHandle, name: &[u8]) -> OpResult {
        let d = self.handles.resolve(dir)?;
        need_dir(&d)?;
        let g = self.ident.assume(cred)?;
        let same_dir = name == b"." || (name == b".." && self.handles.is_root(&d.st));
        let (fh, attr) = if same_dir {
            // Search permission is still required, as for any lookup.
            if !sys::access_fd(d.raw(), libc::X_OK) {
                return Err(Errno::EACCES);
            }
            (dir.clone(), self.attr(&d.st))
        } else {
            let fd = sys::openat(d.raw(), &component(name)?, libc::O_PATH, 0)?;
            let st = sys::fstat(fd.as_raw_fd())?;
            if st.st_dev != d.st.st_dev {
                // Another file system is mounted here; it is not part of the export.
                return Err(Errno::EXDEV);
            }
            drop(g);
            self.entry(fd)?
        };
        Ok(Response::Lookup { fh, attr, dir: self.post(d.raw()) })
    }

    pub(crate) fn op_access(&self, cred: &Cred, fh: &FileHandle, mask: u32) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let _g = self.ident.assume(cred)?;
        let mut granted = 0;
        for bit in [ACCESS_R, ACCESS_W, ACCESS_X] {
            if mask & bit != 0 && sys::access_fd(o.raw(), bit as i32) {
                granted |= bit;
            }
        }
        if self.read_only {
            granted &= !ACCESS_W;
        }
        Ok(Response::Access { granted, attr: self.attr(&o.st) })
    }

    pub(crate) fn op_readlink(&self, fh: &FileHandle) -> OpResult {
        let o = self.handles.resolve(fh)?;
        if o.st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        Ok(Response::ReadLink { target: sys::readlinkat(o.raw())? })
    }

    fn open_data(&self, g: &CredGuard, o: &Obj, flags: i32) -> Result<File, Errno> {
        need_regular(&o.st)?;
        let open = || sys::reopen(o.raw(), flags);
        match owner_override(g, &o.st, open) {
            // Whoever may execute a file may read it through us, as with knfsd's
            // `NFSD_MAY_READ_IF_EXEC`: the kernel reads a program it executes with its
            // own rights (mode 0111, or 0010 for the file's group), and so must we.
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    && flags & libc::O_ACCMODE == libc::O_RDONLY
                    && sys::access_fd(o.raw(), libc::X_OK) =>
            {
                Ok(File::from(g.as_server(open)?))
            }
            r => Ok(File::from(r?)),
        }
    }

    pub(crate) fn op_read(&self, cred: &Cred, fh: &FileHandle, offset: u64, count: u32) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let g = self.ident.assume(cred)?;
        let f = self.open_data(&g, &o, libc::O_RDONLY)?;
        let count = (count as usize).min(MAX_IO);
        let data = sys::pread_full(f.as_raw_fd(), count, offset)?;
        let n = data.len();
        let st = sys::fstat(f.as_raw_fd())?;
        let eof = offset.saturating_add(n as u64) >= st.st_size as u64;
        Ok(Response::Read { eof, attr: self.attr(&st), data })
    }

    pub(crate) fn op_write(
        &self,
        cred: &Cred,
        fh: &FileHandle,
        offset: u64,
        stable: Stable,
        fence: u64,
        data: &[u8],
    ) -> OpResult {
        let o = self.handles.resolve(fh)?;
        if data.len() > MAX_IO {
            return Err(Errno::EFBIG);
        }
        let g = self.ident.assume(cred)?;
        let f = self.open_data(&g, &o, libc::O_WRONLY)?;
        // Fencing: the newest number seen is kept with the file (so this process stays
        // stateless); a write under an older lease (a holder that was declared dead and
        // replaced) is refused. The file's lock serialises the check-and-write.
        let file_lock = (fence != 0).then(|| self.fence_locks.get(&o.st));
        let _fenced = if let Some(l) = &file_lock {
            let held = crate::lock(l);
            let seen = match sys::getxattr_fd(o.raw(), FENCE_XATTR) {
                Ok(v) => match <[u8; 8]>::try_from(v.as_slice()) {
                    Ok(b) => u64::from_be_bytes(b),
                    Err(_) => {
                        // Read as 0 it would turn fencing off for this file.
                        tracing::error!(len = v.len(), "unreadable fence on a file; write refused");
                        return Err(Errno::EIO);
                    }
                },
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => 0,
                Err(e) => return Err(e.into()),
            };
            if seen > fence {
                tracing::warn!(
                    fence = format!("{fence:#x}"),
                    seen = format!("{seen:#x}"),
                    "write under a stale lease refused"
                );
                return Err(Errno::ENOLCK);
            }
            if fence > seen {
                sys::setxattr_fd(o.raw(), FENCE_XATTR, &fence.to_be_bytes(), 0)?;
            }
            Some(held)
        } else {
            None
        };
        f.write_all_at(data, offset)?;
        match stable {
            Stable::Unstable => {}
            Stable::DataSync => sys::fdatasync(f.as_raw_fd())?,
            Stable::FileSync => sys::fsync(f.as_raw_fd())?,
        }
        Ok(Response::Write {
            count: data.len() as u32,
            committed: stable,
            verifier: self.verifier,
            wcc: Wcc { before: pre(&o.st), after: self.post(f.as_raw_fd()) },
        })
    }

    pub(crate) fn op_create(&self, cred: &Cred, dir: &FileHandle, name: &[u8], mode: u32, how: CreateHow) -> OpResult {
        let d = self.handles.resolve(dir)?;
        need_dir(&d)?;
        let name = component(name)?;
        let g = self.ident.assume(cred)?;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY;
        let fd = match sys::openat(d.raw(), &name, flags, mode & 0o7777) {
            Ok(fd) => {
                if let CreateHow::Exclusive(v) = how {
                    // RFC 1813 section 3.3.8: keep the verifier with the file, in the
                    // time stamps as knfsd does; the client sets real times afterwards.
                    let t = |s: u64| libc::timespec { tv_sec: s as i64, tv_nsec: 0 };
                    sys::utimens_fd(fd.as_raw_fd(), &[t(v >> 32), t(v & 0xffff_ffff)])?;
                }
                fd
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let fd = sys::openat(d.raw(), &name, libc::O_PATH, 0)?;
                let st = sys::fstat(fd.as_raw_fd())?;
                let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
                let ok = match how {
                    CreateHow::Guarded => false,
                    CreateHow::Unchecked => regular,
                    CreateHow::Exclusive(v) => {
                        regular && st.st_atime as u64 == v >> 32 && st.st_mtime as u64 == v & 0xffff_ffff
                    }
                };
                if !ok {
                    return Err(Errno::EEXIST);
                }
                fd
            }
            Err(e) => return Err(e.into()),
        };
        drop(g);
        self.created(&d, fd)
    }

    /// MKDIR, SYMLINK and MKNOD: make the object with `make`, then hand out its handle.
    fn make_node(
        &self,
        cred: &Cred,
        dir: &FileHandle,
        name: &[u8],
        make: impl FnOnce(RawFd, &CStr) -> io::Result<()>,
    ) -> OpResult {
        let d = self.handles.resolve(dir)?;
        need_dir(&d)?;
        let name = component(name)?;
        let g = self.ident.assume(cred)?;
        make(d.raw(), &name)?;
        let fd = sys::openat(d.raw(), &name, libc::O_PATH, 0)?;
        drop(g);
        self.created(&d, fd)
    }

    pub(crate) fn op_mkdir(&self, cred: &Cred, dir: &FileHandle, name: &[u8], mode: u32) -> OpResult {
        self.make_node(cred, dir, name, |d, n| sys::mkdirat(d, n, mode & 0o7777))
    }

    pub(crate) fn op_symlink(&self, cred: &Cred, dir: &FileHandle, name: &[u8], target: &[u8]) -> OpResult {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let target = CString::new(target).map_err(|_| Errno::EINVAL)?;
        self.make_node(cred, dir, name, |d, n| sys::symlinkat(&target, d, n))
    }

    pub(crate) fn op_mknod(&self, cred: &Cred, dir: &FileHandle, name: &[u8], mode: u32, kind: NodeKind) -> OpResult {
        // Devices need CAP_MKNOD, which the kernel only leaves to an unsquashed root.
        let (ftype, dev) = match kind {
            NodeKind::Fifo => (libc::S_IFIFO, 0),
            NodeKind::Socket => (libc::S_IFSOCK, 0),
            NodeKind::CharDevice(d) => (libc::S_IFCHR, d),
            NodeKind::BlockDevice(d) => (libc::S_IFBLK, d),
        };
        self.make_node(cred, dir, name, |d, n| sys::mknodat(d, n, ftype | (mode & 0o7777), dev))
    }

    pub(crate) fn op_remove(&self, cred: &Cred, dir: &FileHandle, name: &[u8], flags: i32) -> OpResult {
        let d = self.handles.resolve(dir)?;
        need_dir(&d)?;
        let name = component(name)?;
        let _g = self.ident.assume(cred)?;
        self.forget_name(d.raw(), &name);
        sys::unlinkat(d.raw(), &name, flags)?;
        Ok(Response::Wcc(self.wcc(&d)))
    }

    pub(crate) fn op_rename(
        &self,
        cred: &Cred,
        from_dir: &FileHandle,
        from: &[u8],
        to_dir: &FileHandle,
        to: &[u8],
        flags: u32,
    ) -> OpResult {
        let fd = self.handles.resolve(from_dir)?;
        let td = self.handles.resolve(to_dir)?;
        need_dir(&fd)?;
        need_dir(&td)?;
        let (from, to) = (component(from)?, component(to)?);
        let _g = self.ident.assume(cred)?;
        if flags & RENAME_EXCHANGE == 0 {
            self.forget_name(td.raw(), &to);
        }
        sys::renameat2(fd.raw(), &from, td.raw(), &to, flags)?;
        Ok(Response::Rename { from: self.wcc(&fd), to: self.wcc(&td) })
    }

    pub(crate) fn op_link(&self, cred: &Cred, fh: &FileHandle, dir: &FileHandle, name: &[u8]) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let d = self.handles.resolve(dir)?;
        need_dir(&d)?;
        let name = component(name)?;
        let _g = self.ident.assume(cred)?;
        sys::link_fd(o.raw(), d.raw(), &name)?;
        Ok(Response::Link { attr: self.post(o.raw()).ok_or(Errno::ESTALE)?, dir: self.wcc(&d) })
    }

    /// The cookie verifier of a directory: cookies are `getdents64` offsets, stable for
    /// the life of the directory on the file systems we export (ext4 hashes, tmpfs and
    /// btrfs indices), so the verifier only has to tell one directory from another.
    fn cookie_verifier(&self, st: &libc::stat) -> u64 {
        (st.st_ino ^ self.handles.export_id()).max(1)
    }

    pub(crate) fn op_readdir(
        &self,
        cred: &Cred,
        dir: &FileHandle,
        cookie: u64,
        verifier: u64,
        count: u32,
        plus: bool,
    ) -> OpResult {
        let d = self.handles.resolve(dir)?;
        need_dir(&d)?;
        let cv = self.cookie_verifier(&d.st);
        if cookie != 0 && verifier != 0 && verifier != cv {
            return Err(Errno::BAD_COOKIE);
        }
        let g = self.ident.assume(cred)?;
        let stream = sys::reopen(d.raw(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        if cookie != 0 {
            sys::lseek(stream.as_raw_fd(), cookie as i64)?;
        }
        let budget = (count as usize).clamp(512, MAX_IO);
        let mut used = 64;
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        let mut eof = false;
        'outer: loop {
            let batch = sys::getdents(&stream, &mut buf)?;
            if batch.is_empty() {
                eof = true;
                break;
            }
            for e in batch {
                let size = 32 + e.name.len() + if plus { 200 } else { 0 };
                if used + size > budget {
                    break 'outer;
                }
                used += size;
                let dots = e.name == b"." || e.name == b"..";
                let plus = if plus && !dots { self.plus_entry(&g, d.raw(), &e.name) } else { None };
                entries.push(DirEntry {
                    fileid: e.ino,
                    name: e.name,
                    cookie: e.off,
                    kind: kind_of_dtype(e.dtype),
                    plus,
                });
            }
        }
        if entries.is_empty() && !eof {
            return Err(Errno::TOOSMALL);
        }
        Ok(Response::Dir { verifier: cv, entries, eof, attr: self.post(d.raw()).ok_or(Errno::ESTALE)? })
    }

    /// READDIRPLUS's handle and attributes for one entry; `None` if it vanished meanwhile
    /// or is a mount point (the client then falls back to LOOKUP, as with NFS).
    fn plus_entry(&self, g: &CredGuard, dirfd: RawFd, name: &[u8]) -> Option<(FileHandle, Attr)> {
        let name = CString::new(name).ok()?;
        let fd = sys::openat(dirfd, &name, libc::O_PATH, 0).ok()?;
        let st = sys::fstat(fd.as_raw_fd()).ok()?;
        let dir_dev = sys::fstat(dirfd).ok()?.st_dev;
        if st.st_dev != dir_dev {
            return None;
        }
        let _ = g;
        let fh = self.handles.adopt(fd).ok()?;
        Some((fh, self.attr(&st)))
    }

    pub(crate) fn op_fsstat(&self, fh: &FileHandle) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let s = sys::fstatvfs(o.raw())?;
        let fr = s.f_frsize;
        Ok(Response::FsStat(FsStat {
            total_bytes: s.f_blocks * fr,
            free_bytes: s.f_bfree * fr,
            avail_bytes: s.f_bavail * fr,
            total_files: s.f_files,
            free_files: s.f_ffree,
            avail_files: s.f_favail,
            bsize: s.f_bsize as u32,
            frsize: fr as u32,
            namemax: s.f_namemax as u32,
        }))
    }

    pub(crate) fn op_commit(&self, fh: &FileHandle) -> OpResult {
        let o = self.handles.resolve(fh)?;
        if !is_dir(&o.st) {
            // Flushing needs no permission beyond holding the handle.
            let f = sys::reopen(o.raw(), libc::O_RDONLY)?;
            sys::fsync(f.as_raw_fd())?;
        }
        Ok(Response::Commit { verifier: self.verifier, wcc: self.wcc(&o) })
    }

    pub(crate) fn op_getxattr(&self, cred: &Cred, fh: &FileHandle, name: &[u8]) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let name = xattr_name(name)?;
        let _g = self.ident.assume(cred)?;
        Ok(Response::Xattr(sys::getxattr_fd(o.raw(), &name)?))
    }

    pub(crate) fn op_listxattr(&self, cred: &Cred, fh: &FileHandle) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let _g = self.ident.assume(cred)?;
        Ok(Response::Xattr(sys::listxattr_fd(o.raw())?))
    }

    pub(crate) fn op_setxattr(&self, cred: &Cred, fh: &FileHandle, name: &[u8], value: &[u8], flags: u32) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let name = xattr_name(name)?;
        if value.len() > MAX_XATTR {
            return Err(Errno::E2BIG);
        }
        let mut f = 0;
        if flags & XATTR_CREATE != 0 {
            f |= libc::XATTR_CREATE;
        }
        if flags & XATTR_REPLACE != 0 {
            f |= libc::XATTR_REPLACE;
        }
        let _g = self.ident.assume(cred)?;
        sys::setxattr_fd(o.raw(), &name, value, f)?;
        Ok(Response::Attr(self.post(o.raw()).ok_or(Errno::ESTALE)?))
    }

    pub(crate) fn op_removexattr(&self, cred: &Cred, fh: &FileHandle, name: &[u8]) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let name = xattr_name(name)?;
        let _g = self.ident.assume(cred)?;
        sys::removexattr_fd(o.raw(), &name)?;
        Ok(Response::Attr(self.post(o.raw()).ok_or(Errno::ESTALE)?))
    }

    pub(crate) fn op_fallocate(&self, cred: &Cred, fh: &FileHandle, mode: u32, offset: u64, len: u64) -> OpResult {
        let o = self.handles.resolve(fh)?;
        let g = self.ident.assume(cred)?;
        let f = self.open_data(&g, &o, libc::O_WRONLY)?;
        let (off, len) =
            (i64::try_from(offset).map_err(|_| Errno::EFBIG)?, i64::try_from(len).map_err(|_| Errno::EFBIG)?);
        sys::fallocate(f.as_raw_fd(), mode as i32, off, len)?;
        Ok(Response::Wcc(Wcc { before: pre(&o.st), after: self.post(f.as_raw_fd()) }))
    }

    pub(crate) fn op_time(&self) -> OpResult {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|_| Errno::EIO)?;
        Ok(Response::Time { now: Timespec { sec: now.as_secs() as i64 + skew(), nsec: now.subsec_nanos() } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(dev: u64, ino: u64) -> libc::stat {
        // SAFETY: stat is plain data; all zeroes is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_dev = dev;
        st.st_ino = ino;
        st
    }

    /// One lock per file: the same file gets the same lock, another file another, and
    /// a lock nobody holds is forgotten.
    #[test]
    fn fence_locks_are_per_file() {
        let locks = FileLocks::default();
        let a = locks.get(&st(1, 10));
        assert!(std::sync::Arc::ptr_eq(&a, &locks.get(&st(1, 10))));
        let b = locks.get(&st(1, 11));
        assert!(!std::sync::Arc::ptr_eq(&a, &b));
        let _held = a.lock().unwrap();
        assert!(b.try_lock().is_ok(), "another file's writes do not wait");
        assert!(locks.get(&st(1, 10)).try_lock().is_err(), "the same file's do");
        drop(_held);
        drop((a, b));
        assert!(locks.is_empty());
    }
}
