//! Names: lookup, creation of every kind of object, links, removal and rename. Each
//! mutating reply carries the directory's attributes before and after (weak cache
//! consistency), which replace what we cached.

use super::{unexpected, Caller, Client, Entry};
use fs_proto::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

impl Client {
    pub async fn lookup(self: &Arc<Self>, c: Caller, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        self.lookups.fetch_add(1, Relaxed);
        let dir = self.fh(parent)?;
        if !self.opts.lookup_cache {
            return self.lookup_call(c, parent, &dir, name).await;
        }
        let here = || self.lookups_here.fetch_add(1, Relaxed);
        if name != b"." && name != b".." && self.known_absent(parent, name) {
            here();
            return Err(Errno::ENOENT);
        }
        // What a listing under the promise brought answers without a round trip (`ls -l`
        // after `ls`): a name it holds with its handle, or no such name. (The kernel
        // checked search permission on the directory before asking.)
        if let Some(l) = self.promised_listing(parent) {
            if name != b"." && name != b".." {
                return match l.get(name) {
                    Some(DirEntry { plus: Some((fh, attr)), .. }) => {
                        here();
                        Ok(self.remember(parent, name, fh, *attr, l.mark))
                    }
                    Some(_) => self.lookup_call(c, parent, &dir, name).await,
                    None => {
                        here();
                        Err(Errno::ENOENT)
                    }
                };
            }
        }
        let found = self.lookup_call(c, parent, &dir, name).await;
        if found.is_ok() && name != b"." && name != b".." {
            self.missed(parent, c);
        }
        found
    }

    async fn lookup_call(&self, c: Caller, parent: u64, dir: &FileHandle, name: &[u8]) -> Result<Entry, Errno> {
        let mark = self.mark();
        match self.call(&self.cred(c), Request::Lookup { dir: dir.clone(), name: name.to_vec() }).await? {
            Response::Lookup { fh, attr, dir: dattr } => {
                if let Some(d) = dattr {
                    self.note_attr(dir, &d);
                }
                Ok(self.remember(parent, name, &fh, attr, mark))
            }
            r => Err(unexpected(r)),
        }
    }

    pub(super) fn created(&self, parent: u64, name: &[u8], dir: &FileHandle, r: Response) -> Result<Entry, Errno> {
        match r {
            Response::Created { fh, attr, dir: wcc } => {
                self.note_wcc(dir, &wcc);
                Ok(self.remember(parent, name, &fh, attr, None))
            }
            r => Err(unexpected(r)),
        }
    }

    pub async fn mkdir(&self, c: Caller, parent: u64, name: &[u8], mode: u32) -> Result<Entry, Errno> {
        let dir = self.fh(parent)?;
        let mark = self.mark();
        let r = self.call(&self.cred(c), Request::Mkdir { dir: dir.clone(), name: name.to_vec(), mode }).await?;
        let e = self.created(parent, name, &dir, r)?;
        self.know_new_dir(e.ino, e.attr.ctime, mark);
        Ok(e)
    }

    pub async fn symlink(&self, c: Caller, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry, Errno> {
        let dir = self.fh(parent)?;
        let req = Request::Symlink { dir: dir.clone(), name: name.to_vec(), target: target.to_vec() };
        let r = self.call(&self.cred(c), req).await?;
        self.created(parent, name, &dir, r)
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
        self.created(parent, name, &dir, r)
    }

    pub async fn link(&self, c: Caller, ino: u64, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        let (fh, dir) = (self.fh(ino)?, self.fh(parent)?);
        let req = Request::Link { fh: fh.clone(), dir: dir.clone(), name: name.to_vec() };
        match self.call(&self.cred(c), req).await? {
            Response::Link { attr, dir: wcc } => {
                self.note_wcc(&dir, &wcc);
                Ok(self.remember(parent, name, &fh, attr, None))
            }
            r => Err(unexpected(r)),
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
}
