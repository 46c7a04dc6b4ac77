//! The read path: the page cache, concurrent readers of one block sharing one fetch,
//! read-ahead for sequential readers, exact-size READs for random ones.

use super::{unexpected, Client, OpenNo};
use crate::pagecache::Data;
use fs_proto::*;
use std::sync::Arc;
use tokio::sync::watch;

/// A block being fetched: `None` until the READ answers.
pub(super) type Fetch = watch::Receiver<Option<Result<Data, Errno>>>;
type Filler = watch::Sender<Option<Result<Data, Errno>>>;

impl Client {
    /// Reads `size` bytes at `offset` through the page cache, starting read-ahead.
    pub async fn read(self: &Arc<Self>, ino: u64, fh: OpenNo, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        // The epoch is taken before the write-back, so that a write arriving while this
        // read is under way (the kernel's read-ahead runs beside the program) makes what
        // we fetch uncacheable: it may have reached the server before that write did.
        let epoch = self.cache.lock().unwrap().epoch(ino);
        self.writeback(ino).await?;
        let bs = self.opts.block_size as u64;
        // (One look at the node: the fields, and whether this read is the one that must
        // reach the server for the access time, see `Client::open`.)
        let (file, change, file_size, atime, due) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(Errno::ESTALE)?;
            (n.fh.clone(), n.data_change, n.attr.size, n.attr.atime, size > 0 && std::mem::take(&mut n.atime_due))
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
        if due || (random && !self.cached(ino, change, first..last + 1)) {
            // A random reader gets what it asked for, not whole blocks: a 4 KiB read
            // that fetched 128 KiB cost the server 32 times the disk reads (measured:
            // a fifth of the local file system's random-read rate). The first read after
            // an open that found the access time due goes to the server, whose file
            // system updates the access time (relatime), even if we have it cached.
            return match self.call(&cred, Request::Read { fh: file.clone(), offset, count: size }).await? {
                Response::Read { data, attr, .. } => {
                    if due {
                        // The access time it moved (a `stat` after it is answered here).
                        self.note_attr(&file, &attr);
                    }
                    if due && attr.atime <= atime {
                        // The export does not keep access times (mounted `noatime`, or
                        // read-only): dropping caches for them would buy nothing.
                        if self.atime_kept_by_server.swap(false, std::sync::atomic::Ordering::Relaxed) {
                            tracing::info!("the server does not update access times; reads stay cached");
                        }
                    }
                    Ok(data)
                }
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

    /// Whether the last read of open file `fh` looked random (see [`crate::readahead::ReadAhead::is_random`]).
    pub fn reads_randomly(&self, fh: OpenNo) -> bool {
        self.opens.lock().unwrap().get(&fh).is_some_and(|of| of.ra.is_random())
    }

    /// Whether every block of `blocks` is in the page cache under `change`.
    pub(super) fn cached(&self, ino: u64, change: u64, blocks: std::ops::Range<u64>) -> bool {
        let mut cache = self.cache.lock().unwrap();
        blocks.into_iter().all(|b| cache.get(ino, b, change).is_some())
    }

    /// Returns a receiver per block of `blocks`, starting READs for those neither cached
    /// nor already being fetched (consecutive ones in one READ of up to `max_io`).
    pub(super) fn start_fetches(
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

    pub(super) async fn fetch_run(
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
}
