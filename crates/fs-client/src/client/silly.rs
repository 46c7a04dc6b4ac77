//! Silly rename: removing or replacing a file that is open here renames it to
//! `.fs-silly-*` instead, and the last close removes it (an NFS client's trick: the
//! server is stateless and would otherwise answer the open file's calls with ESTALE).
//! The removal runs with the credentials of the caller who removed or replaced it; a
//! rename that fails after moving its open target aside gives the target its name back.

use super::{unexpected, Client};
use fs_proto::*;
use std::sync::atomic::Ordering;

/// A silly-renamed open file: where it is now, and who removes it at the last close
/// (the caller who removed or replaced it).
pub(super) struct Silly {
    dir: FileHandle,
    name: Vec<u8>,
    cred: Cred,
}

impl Client {
    /// If `name` in `dir` is a file open here, renames it out of the way and returns its
    /// node id.
    pub(super) async fn silly_rename(&self, cred: &Cred, dir: &FileHandle, name: &[u8]) -> Result<Option<u64>, Errno> {
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
        self.silly.lock().unwrap().insert(ino, Silly { dir: dir.clone(), name: silly, cred: cred.clone() });
        Ok(Some(ino))
    }

    /// Undoes [`Client::silly_rename`] after the operation it made way for failed, so a
    /// failed rename loses nothing.
    pub(super) async fn silly_undo(&self, ino: u64, name: &[u8]) {
        let Some(Silly { dir, name: silly, cred }) = self.silly.lock().unwrap().remove(&ino) else { return };
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

    /// The last close of a silly-renamed file: the file goes, removed with the
    /// credentials of the caller who removed or replaced it (under root squash uid 0 is
    /// nobody, who may not remove it from a user's directory).
    pub(super) async fn silly_remove(&self, ino: u64) {
        let Some(Silly { dir, name, cred }) = self.silly.lock().unwrap().remove(&ino) else { return };
        if let Err(e) = self.call(&cred, Request::Remove { dir, name }).await {
            tracing::warn!("cannot remove silly-renamed file: {e}");
        }
    }
}
