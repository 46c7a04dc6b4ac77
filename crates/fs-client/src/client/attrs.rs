//! Attributes and extended attributes: what the kernel should see (the server's
//! attributes with the size grown by writes still buffered here), `setattr` (after
//! write-back), access checks, `statfs`, xattrs.

use super::{unexpected, Caller, Client};
use fs_proto::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The extended attribute the kernel asks for before every write (see [`Client::getxattr`]).
const CAPS: &[u8] = b"security.capability";

impl Client {
    /// [`Self::local_view`] of many nodes' attributes, each lock held once.
    pub(super) fn local_views(&self, attrs: &mut [(u64, &mut Attr)]) {
        {
            let files = self.files.lock().unwrap();
            for (ino, attr) in attrs.iter_mut() {
                if let Some(f) = files.get(ino) {
                    attr.size = attr.size.max(f.wb.lock().unwrap().written_end);
                }
            }
        }
        let silly = self.silly.lock().unwrap();
        for (ino, attr) in attrs.iter_mut() {
            if silly.contains_key(ino) {
                attr.nlink = attr.nlink.saturating_sub(1);
            }
        }
    }

    /// What the kernel should see: the server's attributes, with the size grown by
    /// writes still buffered here. A silly-renamed file shows the link count it would
    /// have had, had it really been removed (pjdfstest's `unlink::open_file_not_freed`).
    pub(super) fn local_view(&self, ino: u64, mut attr: Attr) -> Attr {
        self.local_views(&mut [(ino, &mut attr)]);
        attr
    }

    pub async fn getattr(&self, c: Caller, ino: u64) -> Result<(Attr, Duration, super::Gate), Errno> {
        // A directory's attributes come back with every change we make in it (weak cache
        // consistency), so while they are fresh they are served from here: the kernel
        // drops its copy after each create or unlink, and asking the server again cost a
        // second round trip per `rm` (RFC 1813, 2.6). Files ask unless the promise covers
        // what we hold (`promised_file_attr`): an unlink or link elsewhere changes their
        // link count without telling us otherwise.
        let fresh = {
            let t = self.inodes.lock().unwrap();
            let n = t.get(ino).ok_or(Errno::ESTALE)?;
            (n.attr.kind == FileKind::Directory && Instant::now() < n.attr_valid_until).then_some(n.attr)
        };
        if let Some(a) = fresh {
            return Ok((a, self.attr_ttl(&a), None));
        }
        if let Some((a, left)) = self.promised_file_attr(ino) {
            return Ok((self.local_view(ino, a), left, None));
        }
        let fh = self.fh(ino)?;
        let mark = self.mark();
        match self.call(&self.cred(c), Request::GetAttr { fh: fh.clone() }).await? {
            Response::Attr(a) => {
                self.note_attr(&fh, &a);
                let (mark, gate) = self.gate(mark);
                Ok((self.local_view(ino, a), self.kernel_ttl(mark, ino, &a), gate))
            }
            r => Err(unexpected(r)),
        }
    }

    pub async fn setattr(
        self: &Arc<Self>,
        c: Caller,
        ino: u64,
        attrs: SetAttrs,
    ) -> Result<(Attr, Duration, super::Gate), Errno> {
        let fh = self.fh(ino)?;
        // Buffered writes must land first: after a truncate they would extend the file
        // again, and after a new mtime they would overwrite it (`tar`, `touch` after write).
        // Times alone (`tar`, `touch`, `cp -p` after the data) need not wait for the
        // WRITE's reply: it is sent first, and the server applies a SETATTR after the
        // WRITEs of the file that came before it on the connection.
        let times_only = attrs.mode.is_none() && attrs.uid.is_none() && attrs.gid.is_none() && attrs.size.is_none();
        // (The WRITE's reply is a task's: dropped with this call, it would leave the
        // WRITE counted as on its way for good.)
        let written = if times_only { self.writeback_now(ino).map(tokio::spawn) } else { None };
        if written.is_none() {
            self.writeback(ino).await?;
        }
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
        let mark = self.mark();
        // (Kept for the repeat below, which only a WRITE sent along may need.)
        let again = written.as_ref().map(|_| req.clone());
        let mut wcc = match self.call(&self.cred(c), req).await {
            Ok(Response::Wcc(w)) => w,
            Ok(r) => return Err(unexpected(r)),
            Err(e) => {
                if let Some(w) = written {
                    let _ = w.await;
                }
                return Err(e);
            }
        };
        if let Some(w) = written {
            // A server that does not order them (an older one) may have run the WRITE
            // last: then it found the times we set, and set its own. Set them again.
            let write = w.await.ok().flatten();
            if let Some(req) = again.filter(|_| write_came_after(write, wcc.after.as_ref(), &attrs)) {
                wcc = match self.call(&self.cred(c), req).await? {
                    Response::Wcc(w) => w,
                    r => return Err(unexpected(r)),
                };
            }
        }
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
        let (mark, gate) = self.gate(mark);
        Ok((self.local_view(ino, attr), self.kernel_ttl(mark, ino, &attr), gate))
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

    /// GETXATTR. The kernel asks for `security.capability` before every write and every
    /// change of owner or mode of a FUSE file (to drop a capability the change voids; a
    /// FUSE inode is never marked as having none): a round trip per 32-byte append, and
    /// three per file of an untar. The server's "none" is therefore kept like the file's
    /// attributes: under the promise until a notice of another's change to the file (or
    /// the callback bound), else for the attribute timeout; our own xattr changes drop
    /// it. (The server's own kernel drops the capability when it writes, whatever we
    /// answer here.)
    pub async fn getxattr(&self, c: Caller, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        let caps = name == CAPS;
        if caps && self.inodes.lock().unwrap().get(ino).is_some_and(|n| n.no_caps_until > Some(Instant::now())) {
            return Err(Errno::ENODATA);
        }
        let (fh, mark) = (self.fh(ino)?, self.mark());
        match self.call(&self.cred(c), Request::GetXattr { fh, name: name.to_vec() }).await {
            Ok(Response::Xattr(v)) => Ok(v),
            Ok(r) => Err(unexpected(r)),
            Err(Errno::ENODATA) if caps => {
                let attr = self.inodes.lock().unwrap().get(ino).map(|n| n.attr);
                if let Some(attr) = attr {
                    let (ttl, _) = self.cache_ttl(mark, &[ino], &attr);
                    if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
                        n.no_caps_until = (!ttl.is_zero()).then(|| Instant::now() + ttl);
                    }
                }
                Err(Errno::ENODATA)
            }
            Err(e) => Err(e),
        }
    }

    /// Our own change of an extended attribute of `ino`: what we kept of them goes.
    fn xattrs_changed(&self, ino: u64) {
        if let Some(n) = self.inodes.lock().unwrap().get_mut(ino) {
            n.no_caps_until = None;
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
        let res = self.call(&self.cred(c), req).await;
        self.xattrs_changed(ino);
        match res? {
            Response::Attr(a) => self.note_attr(&fh, &a),
            r => return Err(unexpected(r)),
        }
        Ok(())
    }

    pub async fn removexattr(&self, c: Caller, ino: u64, name: &[u8]) -> Result<(), Errno> {
        let fh = self.fh(ino)?;
        let res = self.call(&self.cred(c), Request::RemoveXattr { fh: fh.clone(), name: name.to_vec() }).await;
        self.xattrs_changed(ino);
        match res? {
            Response::Attr(a) => self.note_attr(&fh, &a),
            r => return Err(unexpected(r)),
        }
        Ok(())
    }
}

/// Whether a WRITE sent right before a SETATTR that sets the modification time may have
/// run after it, and so overwritten the time: its change time is not before the
/// SETATTR's (or either is unknown). A tie repeats the SETATTR, which costs a round trip
/// and nothing else.
fn write_came_after(write: Option<Attr>, setattr: Option<&Attr>, attrs: &SetAttrs) -> bool {
    if !matches!(attrs.mtime, SetTime::Set(_)) {
        return false; // the time the WRITE gave is as good ("now", or no change asked)
    }
    match (write, setattr) {
        (Some(w), Some(s)) => (w.ctime.sec, w.ctime.nsec) >= (s.ctime.sec, s.ctime.nsec),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_may_have_run_last_repeats_the_time() {
        let at = |sec: i64, nsec: u32| {
            let mut a = crate::testutil::attr(FileKind::Regular, 5, 0);
            a.ctime = Timespec { sec, nsec };
            a
        };
        let set = SetAttrs { mtime: SetTime::Set(Timespec { sec: 1, nsec: 0 }), ..Default::default() };
        assert!(!write_came_after(Some(at(5, 1)), Some(&at(5, 2)), &set), "the SETATTR changed the file last");
        assert!(write_came_after(Some(at(5, 3)), Some(&at(5, 2)), &set), "the WRITE did");
        assert!(write_came_after(Some(at(5, 2)), Some(&at(5, 2)), &set), "a tie: set it again");
        assert!(write_came_after(None, Some(&at(5, 2)), &set), "no attributes from the WRITE");
        assert!(write_came_after(Some(at(5, 1)), None, &set));
        let now = SetAttrs { mtime: SetTime::ServerNow, ..Default::default() };
        assert!(!write_came_after(Some(at(5, 3)), Some(&at(5, 2)), &now), "`touch`: the WRITE's time will do");
    }
}
