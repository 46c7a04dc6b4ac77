//! Thin wrappers over the Linux system calls the server needs and `std` lacks.
//!
//! Every function takes a directory descriptor and a single name component, or a
//! descriptor alone: the server never joins paths. All unsafe code of the crate is here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    // SAFETY: a non-negative return value of an fd-creating call is a fresh descriptor we own.
    cvt(ret).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

const EMPTY: &CStr = c"";

/// Largest kernel file handle (`MAX_HANDLE_SZ`).
pub const MAX_KERNEL_HANDLE: usize = 128;

/// A kernel file handle from `name_to_handle_at(2)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHandle {
    pub htype: i32,
    pub bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_KERNEL_HANDLE],
}

/// The handle of `name` in `dirfd`, never following a symlink; an empty name means
/// `dirfd` itself.
pub fn name_to_handle(dirfd: RawFd, name: &CStr) -> io::Result<KernelHandle> {
    let mut raw =
        RawHandle { handle_bytes: MAX_KERNEL_HANDLE as u32, handle_type: 0, f_handle: [0; MAX_KERNEL_HANDLE] };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: raw is a valid file_handle with room for MAX_HANDLE_SZ bytes; pointers live.
    cvt(unsafe { libc::syscall(libc::SYS_name_to_handle_at, dirfd, name.as_ptr(), &mut raw, &mut mount_id, flags) })?;
    let n = (raw.handle_bytes as usize).min(MAX_KERNEL_HANDLE);
    Ok(KernelHandle { htype: raw.handle_type, bytes: raw.f_handle[..n].to_vec() })
}

/// Opens a kernel handle as an `O_PATH` descriptor (needs `CAP_DAC_READ_SEARCH`).
pub fn open_by_handle(mount_fd: RawFd, h: &KernelHandle) -> io::Result<OwnedFd> {
    if h.bytes.len() > MAX_KERNEL_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut raw =
        RawHandle { handle_bytes: h.bytes.len() as u32, handle_type: h.htype, f_handle: [0; MAX_KERNEL_HANDLE] };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: raw is a valid file_handle; the call only reads it.
    cvt_fd(unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, &mut raw, flags) })
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    fstatat(fd, EMPTY)
}

/// `fstatat` without following a symlink; an empty name means `fd` itself.
pub fn fstatat(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    let flags = libc::AT_SYMLINK_NOFOLLOW | if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: st has room for a stat; name is NUL-terminated.
    cvt(unsafe { libc::fstatat(dirfd, name.as_ptr(), st.as_mut_ptr(), flags) } as libc::c_long)?;
    // SAFETY: fstatat succeeded and filled it.
    Ok(unsafe { st.assume_init() })
}

/// `openat(2)`; `O_CLOEXEC` and `O_NOFOLLOW` are always added.
pub fn openat(dirfd: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: name is NUL-terminated.
    cvt_fd(unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode as libc::c_uint) } as libc::c_long)
}

/// `/proc/self/fd/N`: re-opening an `O_PATH` descriptor through it checks permissions
/// with the calling thread's file system identity, as a fresh `open` would.
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

pub fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
    let p = proc_path(fd);
    // SAFETY: p is NUL-terminated. No O_NOFOLLOW: the magic link must be followed.
    cvt_fd(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) } as libc::c_long)
}

macro_rules! at_call {
    ($($name:ident($($arg:ident: $ty:ty),*) => $body:expr;)*) => {$(
        pub fn $name($($arg: $ty),*) -> io::Result<()> {
            // SAFETY: every pointer argument is a NUL-terminated CStr borrowed for the call.
            cvt(unsafe { $body } as libc::c_long).map(drop)
        }
    )*};
}

at_call! {
    mkdirat(dirfd: RawFd, name: &CStr, mode: u32) => libc::mkdirat(dirfd, name.as_ptr(), mode);
    mknodat(dirfd: RawFd, name: &CStr, mode: u32, dev: u64) => libc::mknodat(dirfd, name.as_ptr(), mode, dev);
    symlinkat(target: &CStr, dirfd: RawFd, name: &CStr) => libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr());
    unlinkat(dirfd: RawFd, name: &CStr, flags: i32) => libc::unlinkat(dirfd, name.as_ptr(), flags);
    fchownat_fd(fd: RawFd, uid: u32, gid: u32) => libc::fchownat(fd, EMPTY.as_ptr(), uid, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW);
    chmod_fd(fd: RawFd, mode: u32) => libc::chmod(proc_path(fd).as_ptr(), mode);
    truncate_fd(fd: RawFd, size: i64) => libc::truncate(proc_path(fd).as_ptr(), size);
    fsync(fd: RawFd) => libc::fsync(fd);
    fdatasync(fd: RawFd) => libc::fdatasync(fd);
    fallocate(fd: RawFd, mode: i32, offset: i64, len: i64) => libc::fallocate(fd, mode, offset, len);
}

pub fn renameat2(olddir: RawFd, old: &CStr, newdir: RawFd, new: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: names are NUL-terminated.
    cvt(unsafe { libc::syscall(libc::SYS_renameat2, olddir, old.as_ptr(), newdir, new.as_ptr(), flags) }).map(drop)
}

/// Hard-links the object behind `fd` (any descriptor, `O_PATH` too) as `name` in `dirfd`.
/// Goes through `/proc/self/fd`, which needs no capability, unlike `AT_EMPTY_PATH`.
pub fn link_fd(fd: RawFd, dirfd: RawFd, name: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: both paths NUL-terminated.
    cvt(unsafe { libc::linkat(libc::AT_FDCWD, p.as_ptr(), dirfd, name.as_ptr(), libc::AT_SYMLINK_FOLLOW) }
        as libc::c_long)
    .map(drop)
}

/// Sets atime and mtime of the object behind `fd` (`UTIME_NOW`/`UTIME_OMIT` allowed).
pub fn utimens_fd(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: times points to two timespecs.
    cvt(unsafe { libc::utimensat(fd, EMPTY.as_ptr(), times.as_ptr(), flags) } as libc::c_long).map(drop)
}

pub fn readlinkat(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buf has buf.len() bytes of room.
    let n = cvt(unsafe { libc::readlinkat(fd, EMPTY.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) } as libc::c_long)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// `faccessat` with the thread's effective (file system) identity.
pub fn access_fd(fd: RawFd, mask: i32) -> bool {
    let p = proc_path(fd);
    // SAFETY: p is NUL-terminated.
    unsafe { libc::faccessat(libc::AT_FDCWD, p.as_ptr(), mask, libc::AT_EACCESS) == 0 }
}

pub fn fstatvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: st has room for a statvfs.
    cvt(unsafe { libc::fstatvfs(fd, st.as_mut_ptr()) } as libc::c_long)?;
    // SAFETY: filled by the successful call.
    Ok(unsafe { st.assume_init() })
}

pub fn lseek(fd: RawFd, offset: i64) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::lseek(fd, offset, libc::SEEK_SET) }).map(drop)
}

/// One raw entry from `getdents64(2)`.
pub struct RawDirent {
    pub ino: u64,
    /// Where the next entry starts: the cookie that resumes after this one.
    pub off: u64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// The next batch of entries, empty at the end of the directory.
pub fn getdents(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Vec<RawDirent>> {
    // SAFETY: buf has buf.len() bytes of room.
    let n = cvt(unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) })? as usize;
    let mut out = Vec::new();
    let mut pos = 0;
    // linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[].
    while pos + 19 <= n {
        let ino = u64::from_ne_bytes(buf[pos..pos + 8].try_into().unwrap());
        let off = u64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[pos + 16..pos + 18].try_into().unwrap()) as usize;
        if reclen < 19 || pos + reclen > n {
            break;
        }
        let dtype = buf[pos + 18];
        let name_bytes = &buf[pos + 19..pos + reclen];
        let len = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
        out.push(RawDirent { ino, off, dtype, name: name_bytes[..len].to_vec() });
        pos += reclen;
    }
    Ok(out)
}

fn xattr_buf(mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let want = cvt(call(std::ptr::null_mut(), 0) as libc::c_long)? as usize;
        let mut buf = vec![0u8; want];
        match cvt(call(buf.as_mut_ptr().cast(), buf.len()) as libc::c_long) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            // Grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn getxattr_fd(fd: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    // SAFETY: pointers are valid for the given sizes.
    xattr_buf(|b, n| unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), b, n) })
}

pub fn listxattr_fd(fd: RawFd) -> io::Result<Vec<u8>> {
    let p = proc_path(fd);
    // SAFETY: pointers are valid for the given sizes.
    xattr_buf(|b, n| unsafe { libc::listxattr(p.as_ptr(), b.cast(), n) })
}

pub fn setxattr_fd(fd: RawFd, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: value is valid for value.len() bytes.
    cvt(unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) } as libc::c_long)
        .map(drop)
}

pub fn removexattr_fd(fd: RawFd, name: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: both NUL-terminated.
    cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) } as libc::c_long).map(drop)
}

/// Reads up to `count` bytes at `offset` into a fresh buffer, stopping early only at end
/// of file. The buffer is not zeroed first: `pread` fills it and only what it filled is
/// kept (one pass over the memory instead of two on the 1 MiB read path).
pub fn pread_full(fd: RawFd, count: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(count);
    while buf.len() < count {
        let filled = buf.len();
        let spare = buf.spare_capacity_mut();
        let off = offset
            .checked_add(filled as u64)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: spare is writable for spare.len() bytes; pread writes at most that many.
        let n = unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), off) };
        match n {
            0 => break,
            n if n > 0 => {
                // SAFETY: pread initialised n more bytes right after the filled part.
                unsafe { buf.set_len(filled + n as usize) };
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

/// Per-thread file system identity. `setfsuid`/`setfsgid` are per thread on Linux, and
/// the raw `setgroups` system call is too (glibc's wrapper would broadcast it to every
/// thread of the process, which is why it is not used here).
pub fn set_fs_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: groups is valid for groups.len() gid_t values.
    cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain integer arguments; these calls return the previous id, never fail.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    if current_fsuid() != uid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// The calling thread's fsuid (setfsuid with an invalid id only reports it).
pub fn current_fsuid() -> u32 {
    // SAFETY: -1 is never a valid id, so this only returns the current value.
    unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 }
}

pub fn geteuid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: no arguments.
    unsafe { libc::getegid() }
}

pub fn set_umask(mask: u32) {
    // SAFETY: plain integer argument.
    unsafe { libc::umask(mask) };
}

/// Keeps 1 MiB I/O buffers on the heap instead of fresh `mmap`s: with glibc's default
/// thresholds every READ and WRITE buffer was a new mapping whose pages all faulted in
/// (measured: about a fifth of the CPU time of a 1 MiB read loop).
pub fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Raises the soft descriptor limit to the hard limit (the handle cache keeps many open).
pub fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
