//! File handles: how the server names objects to clients.
//!
//! # Layout (version 1)
//! ```text
//! offset  size  field
//! 0       1     version = 1
//! 1       8     export id (little-endian u64)
//! 9       4     kernel handle type (little-endian i32, from name_to_handle_at)
//! 13      1     kernel handle length n (at most 128)
//! 14      n     kernel handle bytes
//! 14+n    16    MAC: keyed BLAKE3 of bytes 0..14+n, first 16 bytes
//! ```
//! The key is 32 random bytes kept in the state folder (`handle.key`), so a restarted
//! server accepts every handle it issued before, the NFS property. The export id is a keyed
//! hash of the export root's kernel handle: a handle issued for another export, or by a
//! server with another key, fails. A handle that is the wrong length, has a bad MAC or an
//! unknown version is `BADHANDLE` and logged (a client never makes one by accident); one
//! whose object is gone is `ESTALE`.
//!
//! Only handles of objects reached from the export root by single-component `*at()`
//! lookups are ever issued, so a valid MAC implies the object was inside the export.
//!
//! Open `O_PATH` descriptors are cached by handle (an LRU). Losing the cache changes
//! speed, never results: each use re-checks the link count, so a deleted object is
//! `ESTALE` whether or not its descriptor was cached.

use crate::sys::{self, KernelHandle, MAX_KERNEL_HANDLE};
use fs_proto::{Errno, FileHandle};
use lru::LruCache;
use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const HEADER: usize = 14;
pub const KEY_FILE: &str = "handle.key";

/// An object a handle resolved to: its `O_PATH` descriptor and fresh attributes.
pub struct Obj {
    pub fd: Arc<OwnedFd>,
    pub st: libc::stat,
}

impl Obj {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

pub struct Handles {
    key: [u8; 32],
    export_id: u64,
    root_fd: OwnedFd,
    root_dev_ino: (u64, u64),
    root: FileHandle,
    cache: Mutex<LruCache<FileHandle, Arc<OwnedFd>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleSetupError {
    #[error("cannot open export {0}: {1}")]
    Export(String, io::Error),
    #[error("export {0} is not a directory")]
    NotDir(String),
    #[error("the file system of {0} does not support file handles (name_to_handle_at: {1})")]
    NoHandles(String, io::Error),
    #[error(
        "open_by_handle_at needs CAP_DAC_READ_SEARCH: run fs-server as root or `setcap cap_dac_read_search+ep` it"
    )]
    NoCapability,
    #[error("open_by_handle_at failed on the export root: {0}")]
    Open(io::Error),
}

impl Handles {
    pub fn new(export: &Path, key: [u8; 32], cache_size: usize) -> Result<Handles, HandleSetupError> {
        let shown = export.display().to_string();
        let c = std::ffi::CString::new(export.as_os_str().as_encoded_bytes())
            .map_err(|_| HandleSetupError::Export(shown.clone(), io::Error::from_raw_os_error(libc::EINVAL)))?;
        // The export path itself is resolved once, here, by the administrator's choice.
        // Not O_PATH: open_by_handle_at refuses an O_PATH descriptor as its mount fd.
        let root_fd = sys::openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOTDIR) => HandleSetupError::NotDir(shown.clone()),
                _ => HandleSetupError::Export(shown.clone(), e),
            }
        })?;
        let st = sys::fstat(root_fd.as_raw_fd()).map_err(|e| HandleSetupError::Export(shown.clone(), e))?;
        let kh = sys::name_to_handle(root_fd.as_raw_fd(), c"").map_err(|e| HandleSetupError::NoHandles(shown, e))?;
        match sys::open_by_handle(root_fd.as_raw_fd(), &kh) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Err(HandleSetupError::NoCapability),
            Err(e) => return Err(HandleSetupError::Open(e)),
        }
        let mut h = blake3::Hasher::new_keyed(&key);
        h.update(b"fs-server export id v1");
        h.update(&kh.htype.to_le_bytes());
        h.update(&kh.bytes);
        let export_id = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap());
        let mut handles = Handles {
            key,
            export_id,
            root_fd,
            root_dev_ino: (st.st_dev, st.st_ino),
            root: FileHandle(Vec::new()),
            cache: Mutex::new(LruCache::new(NonZeroUsize::new(cache_size.max(1)).unwrap())),
        };
        handles.root = handles.wrap(&kh);
        Ok(handles)
    }

    pub fn root(&self) -> &FileHandle {
        &self.root
    }

    pub fn export_id(&self) -> u64 {
        self.export_id
    }

    /// Whether `st` is the export root (where `..` stays).
    pub fn is_root(&self, st: &libc::stat) -> bool {
        (st.st_dev, st.st_ino) == self.root_dev_ino
    }

    fn mac(&self, bytes: &[u8]) -> [u8; MAC_LEN] {
        blake3::keyed_hash(&self.key, bytes).as_bytes()[..MAC_LEN].try_into().unwrap()
    }

    fn wrap(&self, kh: &KernelHandle) -> FileHandle {
        let mut b = Vec::with_capacity(HEADER + kh.bytes.len() + MAC_LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.export_id.to_le_bytes());
        b.extend_from_slice(&kh.htype.to_le_bytes());
        b.push(kh.bytes.len() as u8);
        b.extend_from_slice(&kh.bytes);
        let mac = self.mac(&b);
        b.extend_from_slice(&mac);
        FileHandle(b)
    }

    /// Checks version, export and MAC; returns the kernel handle inside.
    fn unwrap(&self, fh: &FileHandle) -> Result<KernelHandle, Errno> {
        let b = &fh.0;
        let bad = |why: &str| {
            tracing::warn!("refused handle {fh:?}: {why}");
            Err(Errno::BADHANDLE)
        };
        if b.len() < HEADER + MAC_LEN || b.len() > HEADER + MAX_KERNEL_HANDLE + MAC_LEN {
            return bad("wrong length");
        }
        let n = b[13] as usize;
        if b.len() != HEADER + n + MAC_LEN {
            return bad("wrong length");
        }
        let (body, mac) = b.split_at(HEADER + n);
        // Constant-time comparison, so the MAC cannot be found byte by byte.
        if !constant_time_eq(&self.mac(body), mac) {
            return bad("MAC does not match (forged, altered, or from another server key)");
        }
        if b[0] != VERSION {
            return bad("unknown version");
        }
        if u64::from_le_bytes(b[1..9].try_into().unwrap()) != self.export_id {
            return bad("issued for another export");
        }
        Ok(KernelHandle { htype: i32::from_le_bytes(b[9..13].try_into().unwrap()), bytes: body[HEADER..].to_vec() })
    }

    /// The handle of `name` in the directory `dirfd` (never following a symlink).
    pub fn make(&self, dirfd: RawFd, name: &CStr) -> Result<FileHandle, Errno> {
        Ok(self.wrap(&sys::name_to_handle(dirfd, name)?))
    }

    /// The handle of an object we hold a descriptor for; the descriptor goes to the cache.
    pub fn adopt(&self, fd: OwnedFd) -> Result<FileHandle, Errno> {
        let fh = self.wrap(&sys::name_to_handle(fd.as_raw_fd(), c"")?);
        crate::lock(&self.cache).put(fh.clone(), Arc::new(fd));
        Ok(fh)
    }

    /// Opens the object a handle names. Must run with the server's own identity
    /// (`open_by_handle_at` needs `CAP_DAC_READ_SEARCH`).
    pub fn resolve(&self, fh: &FileHandle) -> Result<Obj, Errno> {
        let cached = crate::lock(&self.cache).get(fh).cloned();
        let fd = match cached {
            Some(fd) => fd,
            None => {
                let kh = self.unwrap(fh)?;
                let fd = Arc::new(self.open_kernel_handle(&kh)?);
                crate::lock(&self.cache).put(fh.clone(), fd.clone());
                fd
            }
        };
        let st = sys::fstat(fd.as_raw_fd())?;
        if st.st_nlink == 0 {
            // Deleted while we held it open: the object is gone for clients.
            self.forget(fh);
            return Err(Errno::ESTALE);
        }
        Ok(Obj { fd, st })
    }

    /// `open_by_handle_at` for a handle that passed its MAC, so it named an object of
    /// this export once. Decoding failures mean the object is gone: ESTALE. ext4 on this
    /// kernel sometimes reports a just-deleted inode as ENOMEM (seen in a CI run of
    /// `deleted_objects_are_stale`); one retry tells that from real memory pressure.
    fn open_kernel_handle(&self, kh: &KernelHandle) -> Result<OwnedFd, Errno> {
        let mut retried = false;
        loop {
            match sys::open_by_handle(self.root_fd.as_raw_fd(), kh) {
                Ok(fd) => return Ok(fd),
                Err(e) => match e.raw_os_error() {
                    Some(libc::ESTALE) | Some(libc::ENOENT) => return Err(Errno::ESTALE),
                    Some(libc::ENOMEM) if !retried => {
                        retried = true;
                        std::thread::yield_now();
                    }
                    Some(libc::ENOMEM) => return Err(Errno::ESTALE),
                    _ => return Err(Errno::from_io(&e)),
                },
            }
        }
    }

    /// Drops the cached descriptor of a handle, so a deleted file's space is freed now.
    pub fn forget(&self, fh: &FileHandle) {
        crate::lock(&self.cache).pop(fh);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the handle key from `state_dir`, creating the folder (0700) and a fresh random
/// key (0600, written then renamed into place) on first use.
pub fn load_or_create_key(state_dir: &Path) -> io::Result<[u8; 32]> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)?;
    let path = state_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            return b.try_into().map_err(|b: Vec<u8>| {
                io::Error::other(format!("{} holds {} bytes, not a 32-byte key", path.display(), b.len()))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let tmp = state_dir.join(format!("{KEY_FILE}.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(&key)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(key)
}

/// 64 random bits, for write verifiers and client ids.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Handles) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let h = Handles::new(dir.path(), [7; 32], 16).unwrap();
        (dir, h)
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (_d, h) = setup();
        let fh = h.make(h.root_fd.as_raw_fd(), c"f").unwrap();
        assert!(h.resolve(&fh).is_ok());
        h.forget(&fh);
        for i in 0..fh.0.len() {
            let mut bad = fh.clone();
            bad.0[i] ^= 1;
            assert_eq!(h.resolve(&bad).err(), Some(Errno::BADHANDLE), "byte {i}");
        }
        for len in [0, 1, 14, 29, 30, fh.0.len() - 1, fh.0.len() + 1, 400] {
            let mut bad = fh.0.clone();
            bad.resize(len, 0);
            assert_eq!(h.resolve(&FileHandle(bad)).err(), Some(Errno::BADHANDLE), "len {len}");
        }
    }

    #[test]
    fn another_key_or_export_is_refused() {
        let (d, h) = setup();
        let fh = h.make(h.root_fd.as_raw_fd(), c"f").unwrap();
        let other_key = Handles::new(d.path(), [8; 32], 16).unwrap();
        assert_eq!(other_key.resolve(&fh).err(), Some(Errno::BADHANDLE));
        let d2 = tempfile::tempdir().unwrap();
        let other_export = Handles::new(d2.path(), [7; 32], 16).unwrap();
        assert_eq!(other_export.resolve(&fh).err(), Some(Errno::BADHANDLE));
        let same = Handles::new(d.path(), [7; 32], 16).unwrap();
        assert!(same.resolve(&fh).is_ok(), "same key and export: a restarted server");
    }

    #[test]
    fn deleted_object_is_stale_cached_or_not() {
        let (d, h) = setup();
        let fh = h.make(h.root_fd.as_raw_fd(), c"f").unwrap();
        assert!(h.resolve(&fh).is_ok());
        std::fs::remove_file(d.path().join("f")).unwrap();
        assert_eq!(h.resolve(&fh).err(), Some(Errno::ESTALE));
        assert_eq!(h.resolve(&fh).err(), Some(Errno::ESTALE));
    }

    #[test]
    fn key_persists() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("state");
        let k1 = load_or_create_key(&s).unwrap();
        let k2 = load_or_create_key(&s).unwrap();
        assert_eq!(k1, k2);
        std::fs::write(s.join(KEY_FILE), b"short").unwrap();
        assert!(load_or_create_key(&s).is_err());
    }
}
