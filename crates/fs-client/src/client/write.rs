//! The write path: writes buffered and coalesced ([`Dirty`]), sent as `wsize` UNSTABLE
//! WRITEs, several in flight (an overlapping one waits for the older: [`InFlight`]);
//! acknowledged data kept ([`Unstable`]) until a COMMIT under the same write verifier,
//! resent otherwise; the change attribute a COMMIT reports adopted only when the file is
//! as our last WRITE left it ([`commit_change_is_ours`]). The decisions are in the pure
//! [`crate::writeback`] module; this is the shell that sends.

use super::{unexpected, Caller, Client};
use crate::writeback::{commit_change_is_ours, subtract, Committed, Dirty, InFlight, Unstable};
use fs_proto::*;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct Wb {
    pub(super) dirty: Dirty,
    pub(super) in_flight: InFlight,
    pub(super) unstable: Unstable,
    pub(super) error: Option<Errno>,
    /// Highest byte written while the file is open (lowered only by our own truncate).
    /// Sizes we report never go below it: a GETATTR that raced with the write-back of
    /// acknowledged writes would otherwise shrink the kernel's file size, and a program
    /// reading through `mmap` there gets SIGBUS (found by fsx).
    pub(super) written_end: u64,
    /// A background COMMIT is running.
    pub(super) committing: bool,
    /// The change attribute after our latest WRITE (0: none yet), for
    /// [`commit_change_is_ours`].
    pub(super) last_write_change: u64,
}

/// A WRITE on its way: where its data goes, and the data (shared with the connection
/// until the reply).
struct Sending {
    offset: u64,
    data: Arc<Vec<u8>>,
}

/// Write-back state of one file, while it is open (and until its last COMMIT).
///
/// Lock order: taken after `Client::files`, before `Client::cache`; `wb` is never held
/// together with `cred` or `opens`.
pub(super) struct FileState {
    pub(super) fh: FileHandle,
    /// The fencing number of the lease held on the file while locked (0: none); WRITEs
    /// carry it, so a holder that lost its lease cannot overwrite a newer holder's data.
    pub(super) fence: std::sync::atomic::AtomicU64,
    /// Whose credentials WRITEs and COMMITs go with: the latest opener's.
    pub(super) cred: Mutex<Cred>,
    /// Open file descriptions of the file.
    pub(super) opens: Mutex<u32>,
    pub(super) wb: Mutex<Wb>,
    /// Woken whenever a WRITE ends (waiters: overlapping WRITEs, `drain`).
    pub(super) idle: Notify,
}
impl Client {
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
            wb.in_flight.queue(full)
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

    pub(super) fn commit_threshold(&self) -> usize {
        (self.opts.cache_size / 2).max(32 << 20)
    }

    /// Sends one WRITE, queued by [`Wb::queue`], once no older overlapping WRITE is still
    /// on its way; the WRITE goes on as a task.
    pub(super) async fn send_write(self: &Arc<Self>, f: &Arc<FileState>, seq: u64, offset: u64, data: Vec<u8>) {
        let permit = self.write_turn(f, seq, offset, data.len()).await;
        let (this, f) = (self.clone(), f.clone());
        tokio::spawn(async move {
            let _permit = permit;
            this.write_call(&f, seq, offset, data).await;
        });
    }

    /// Waits until no older WRITE overlapping `[offset, offset + len)` is on its way, and
    /// for a slot among the WRITEs in flight.
    async fn write_turn(&self, f: &FileState, seq: u64, offset: u64, len: usize) -> tokio::sync::OwnedSemaphorePermit {
        let end = offset + len as u64;
        loop {
            let idle = f.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let blocked = f.wb.lock().unwrap().in_flight.blocked(seq, offset, end);
            if !blocked {
                break;
            }
            idle.await;
        }
        self.write_slots.clone().acquire_owned().await.expect("never closed")
    }

    /// One WRITE, and what its reply tells.
    async fn write_call(&self, f: &FileState, seq: u64, offset: u64, data: Vec<u8>) {
        let (sent, reply) = self.write_send(f, offset, data);
        let res = reply.await;
        self.write_done(f, seq, sent, res);
    }

    /// Sends a WRITE now; the reply is the future's. The data goes out as it is (not
    /// copied into the call's frame) and comes back with the reply, for [`Self::write_done`].
    fn write_send(
        &self,
        f: &FileState,
        offset: u64,
        data: Vec<u8>,
    ) -> (Sending, impl std::future::Future<Output = Result<Response, Errno>> + Send) {
        let cred = f.cred.lock().unwrap().clone();
        let fence = f.fence.load(std::sync::atomic::Ordering::SeqCst);
        let req = Request::Write { fh: f.fh.clone(), offset, stable: Stable::Unstable, fence, data: Vec::new() };
        let data = Arc::new(data);
        self.own_change();
        let reply = self.rpc.send_with_tail(&cred, &req, Some(data.clone()));
        (Sending { offset, data }, reply)
    }

    /// What a WRITE's reply tells.
    fn write_done(&self, f: &FileState, seq: u64, sent: Sending, res: Result<Response, Errno>) {
        self.own_change();
        let Sending { offset, data } = sent;
        // The connection let go of its share before the reply came (a resend in progress
        // may still hold one: then a copy).
        let data = Arc::try_unwrap(data).unwrap_or_else(|d| d.to_vec());
        let mut wb = f.wb.lock().unwrap();
        wb.in_flight.done(seq);
        match res {
            Ok(Response::Write { committed, verifier, wcc, .. }) => {
                if committed == Stable::Unstable {
                    wb.unstable.push(offset, data, verifier);
                }
                if let Some(a) = &wcc.after {
                    wb.last_write_change = wb.last_write_change.max(a.change);
                }
                drop(wb);
                self.note_wcc(&f.fh, &wcc);
            }
            Ok(r) => wb.error = Some(unexpected(r)),
            Err(e) => wb.error = Some(e),
        }
        f.idle.notify_waiters();
    }

    /// Sends every buffered byte of `ino` and waits until no WRITE is in flight.
    pub(super) async fn writeback(self: &Arc<Self>, ino: u64) -> Result<(), Errno> {
        let Some(f) = self.files.lock().unwrap().get(&ino).cloned() else { return Ok(()) };
        self.drain(&f).await;
        Ok(())
    }

    /// When the buffered data of `ino` goes in one WRITE that may leave at once (no
    /// older overlapping WRITE on its way, a slot free): sends it, and returns the wait
    /// for its reply, and the file's attributes right after the WRITE (from the reply).
    pub(super) fn writeback_now(
        self: &Arc<Self>,
        ino: u64,
    ) -> Option<impl std::future::Future<Output = Option<Attr>> + Send + 'static> {
        let f = self.files.lock().unwrap().get(&ino).cloned()?;
        let permit = self.write_slots.clone().try_acquire_owned().ok()?;
        let (seq, offset, chunk) = {
            let mut wb = f.wb.lock().unwrap();
            let max = self.opts.wsize.min(self.max_io);
            if !wb.in_flight.is_empty() || wb.dirty.runs() != 1 || wb.dirty.bytes() > max {
                return None;
            }
            let taken = wb.dirty.take_all(max);
            wb.in_flight.queue(taken).pop().expect("one run, one WRITE")
        };
        let (sent, reply) = self.write_send(&f, offset, chunk);
        let this = self.clone();
        Some(async move {
            let _permit = permit;
            let res = reply.await;
            let after = match &res {
                Ok(Response::Write { wcc, .. }) => wcc.after,
                _ => None,
            };
            this.write_done(&f, seq, sent, res);
            after
        })
    }

    pub(super) async fn drain(self: &Arc<Self>, f: &Arc<FileState>) {
        let chunks = {
            let mut wb = f.wb.lock().unwrap();
            let chunks = wb.dirty.take_all(self.opts.wsize.min(self.max_io));
            wb.in_flight.queue(chunks)
        };
        if chunks.len() == 1 {
            // One WRITE (a small file's close, `tar`'s SETATTR after the data): sent and
            // awaited here, so its reply wakes this caller, not a task that wakes it.
            let (seq, off, chunk) = chunks.into_iter().next().expect("one");
            let _permit = self.write_turn(f, seq, off, chunk.len()).await;
            self.write_call(f, seq, off, chunk).await;
        } else {
            for (seq, off, chunk) in chunks {
                self.send_write(f, seq, off, chunk).await;
            }
        }
        loop {
            let idle = f.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                if f.wb.lock().unwrap().in_flight.is_empty() {
                    return;
                }
            }
            idle.await;
        }
    }

    /// COMMITs what was written so far; data a restarted server may have lost (its write
    /// verifier changed) goes back into the dirty buffer to be sent again.
    pub(super) async fn commit(self: &Arc<Self>, f: &Arc<FileState>) -> Result<bool, Errno> {
        let batch = f.wb.lock().unwrap().unstable.take();
        if batch.is_empty() {
            return Ok(true);
        }
        let cred = f.cred.lock().unwrap().clone();
        let freed = batch.bytes();
        self.own_change();
        let res = self.rpc.call(&cred, Request::Commit { fh: f.fh.clone(), offset: 0, count: 0 }).await;
        self.own_change();
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
                        // Nor over what was written (acknowledged or on its way) or
                        // truncated, punched or zeroed while the COMMIT was out: fsx
                        // across failovers found old bytes landing over newer ones.
                        let mut newer = wb.unstable.newer_than_batch();
                        newer.extend(wb.in_flight.ranges());
                        for (offset, data) in subtract(again.take_all(usize::MAX), &newer) {
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
                    // what we cached stays valid under it (see commit_change_is_ours).
                    if commit_change_is_ours(ours, wcc.before.map(|b| b.ctime)) {
                        let mut t = self.inodes.lock().unwrap();
                        if let Some(n) = t.ino_of(&f.fh).and_then(|i| t.get_mut(i)) {
                            n.data_change = after.change;
                        }
                    }
                }
                if clean {
                    self.untrimmed.fetch_add(freed, std::sync::atomic::Ordering::Relaxed);
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
    pub(super) async fn sync(self: &Arc<Self>, f: &Arc<FileState>) -> Result<(), Errno> {
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

/// Committed data freed since memory was last handed back, past which a last close
/// hands it back.
const TRIM_AFTER: usize = 16 << 20;

impl Client {
    /// After a file's last close and COMMIT: written data waits for its COMMIT in 1 MiB
    /// chunks allocated on the thread that wrote it (a FUSE thread, with its own malloc
    /// arena), while page-cache blocks are filled on the runtime's threads, so freed
    /// chunks stayed in the writers' arenas while the cache grew in others (a peak of
    /// 439 MiB through a 256 MiB cache). `malloc_trim` returns them between files; not
    /// during a long write, whose chunks are reused warm (a fixed mmap threshold, or
    /// trimming after every COMMIT, cost a fifth to a quarter of the sequential write
    /// speed).
    pub(super) fn give_back_memory(&self) {
        if self.untrimmed.load(std::sync::atomic::Ordering::Relaxed) >= TRIM_AFTER {
            self.untrimmed.store(0, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: malloc_trim only releases free memory; it is safe at any time.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
