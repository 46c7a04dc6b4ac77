//! Open and close, and directory listings. `open` is where close-to-open happens: fresh
//! attributes, the page caches kept only if the file is unchanged (and the access time
//! not due, see [`crate::inodes::atime_due`]); `flush` (every close) sends the buffered
//! writes, the last `release` commits in the background.

use super::write::{FileState, Wb};
use super::{unexpected, Caller, Client, DirCache, Entry, OpenNo, Opened};
use crate::inodes::atime_due;
use crate::readahead::ReadAhead;
use fs_proto::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// One open file description (the kernel's open-file number names it).
pub(super) struct OpenFile {
    pub(super) cred: Cred,
    pub(super) ra: ReadAhead,
    /// A directory's listing, fetched whole at offset 0 and served from here.
    pub(super) listing: Option<Arc<Listing>>,
    /// A directory opened with `FOPEN_CACHE_DIR`: the kernel keeps what it is listed.
    pub(super) cache_dir: bool,
}

/// A directory's entries, and the notice state they were fetched under (so that an
/// entry handed to the kernel later is promised only if no notice touched the directory
/// since). Our own removals in the directory mark entries gone ([`Client::listing_removed`]),
/// so that `rm` after `ls` answers each LOOKUP from here, as `ls -l` does.
pub struct Listing {
    /// Unique among the mount's listings (which the kernel's copy was made from).
    id: u64,
    entries: Vec<DirEntry>,
    /// Per entry: removed by a change of ours since the listing.
    gone: Vec<AtomicBool>,
    pub mark: Option<super::Mark>,
    /// The directory's change attribute when listed, moved on by our own removals.
    change: AtomicU64,
    /// Entries by name, made on the first LOOKUP answered from the listing.
    index: std::sync::OnceLock<std::collections::HashMap<Vec<u8>, usize>>,
}

impl Listing {
    fn new(entries: Vec<DirEntry>, mark: Option<super::Mark>, change: u64) -> Listing {
        let gone = entries.iter().map(|_| AtomicBool::new(false)).collect();
        static IDS: AtomicU64 = AtomicU64::new(1);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        Listing { id, entries, gone, mark, change: AtomicU64::new(change), index: Default::default() }
    }

    fn position(&self, name: &[u8]) -> Option<usize> {
        let index =
            self.index.get_or_init(|| self.entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect());
        index.get(name).copied().filter(|&i| !self.gone[i].load(Ordering::Acquire))
    }

    pub fn get(&self, name: &[u8]) -> Option<&DirEntry> {
        self.position(name).map(|i| &self.entries[i])
    }

    /// The entries from index `from` on, each with its index, without those gone.
    pub fn from(&self, from: usize) -> impl Iterator<Item = (usize, &DirEntry)> {
        self.entries.iter().enumerate().skip(from).filter(|(i, _)| !self.gone[*i].load(Ordering::Acquire))
    }

    pub fn change(&self) -> u64 {
        self.change.load(Ordering::Acquire)
    }

    /// Our removal of `name` took the directory from change `before` to `after`:
    /// whether the listing follows (it was the listing's state, and the entry's object
    /// had no other name whose attributes a listing could hold).
    fn removed(&self, name: &[u8], before: u64, after: u64) -> bool {
        let Some(i) = self.position(name) else { return false };
        let single = match &self.entries[i].plus {
            Some((_, a)) => a.kind == FileKind::Directory || a.nlink <= 1,
            None => false,
        };
        if !single {
            return false;
        }
        // Gone first (the removal was made), so that no one finds the name under the
        // new change attribute.
        self.gone[i].store(true, Ordering::Release);
        self.change.compare_exchange(before, after, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl Client {
    pub(super) fn new_open(&self, ino: u64, cred: Cred) -> OpenNo {
        let fh = OpenNo(self.next_fh.fetch_add(1, Ordering::Relaxed));
        self.opens
            .lock()
            .unwrap()
            .insert(fh, OpenFile { cred, ra: ReadAhead::default(), listing: None, cache_dir: false });
        self.inodes.lock().unwrap().open(ino);
        fh
    }

    pub(super) fn file_state(&self, ino: u64, fh: &FileHandle, cred: &Cred) {
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
        // Under the promise, the attributes we hold are the server's: no round trip
        // (close-to-open is kept by the notices).
        let attr = match self.promised_attr(ino) {
            Some(a) => a,
            None => {
                let mark = self.mark();
                let a = match self.call(&cred, Request::GetAttr { fh: fh.clone() }).await? {
                    Response::Attr(a) => a,
                    r => return Err(unexpected(r)),
                };
                self.note_attr(&fh, &a);
                self.kernel_ttl(mark, ino, &a);
                a
            }
        };
        let now = self.server_now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let (unchanged, atime_due) = {
            let mut t = self.inodes.lock().unwrap();
            let n = t.get_mut(ino).ok_or(Errno::ESTALE)?;
            let same = n.data_change == attr.change;
            // Blocks tagged with the old change attribute become unreachable.
            n.data_change = attr.change;
            // Reads the kernel serves from its page cache never reach us, so a read that
            // would update the access time must not find the kernel's pages.
            let due = reads
                && !self.opts.noatime
                && self.atime_kept_by_server.load(Ordering::Relaxed)
                && atime_due(&attr, now);
            n.atime_due |= due;
            (same, due)
        };
        self.file_state(ino, &fh, &cred);
        Ok(Opened { fh: self.new_open(ino, cred), keep_cache: unchanged && !atime_due, attrs_changed: !unchanged })
    }

    /// CREATE and open in one step (the kernel's `create`).
    pub async fn create(
        &self,
        c: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        exclusive: bool,
    ) -> Result<(Entry, OpenNo), Errno> {
        let dir = self.fh(parent)?;
        let cred = self.cred(c);
        let how = if exclusive { CreateHow::Guarded } else { CreateHow::Unchecked };
        let r = self
            .call(&cred, Request::Create { dir: dir.clone(), name: name.to_vec(), mode: mode & 0o7777, how })
            .await?;
        let entry = self.created(parent, name, &dir, r)?;
        let fh = self.fh(entry.ino)?;
        if let Some(n) = self.inodes.lock().unwrap().get_mut(entry.ino) {
            n.data_change = entry.attr.change;
            if exclusive && !entry.attr_ttl.is_zero() {
                // A new file has no capability: the kernel's question before the first
                // write needs no round trip (see `getxattr`). Kept as its attributes.
                n.no_caps_until = Some(std::time::Instant::now() + entry.attr_ttl);
            }
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
    pub async fn release(self: &Arc<Self>, ino: u64, fh: OpenNo) -> Result<(), Errno> {
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
            // Nothing to commit (a file only read, or empty): done here, no task.
            super::now_or_spawn(async move {
                if let Err(e) = this.sync(&f).await {
                    tracing::warn!(ino, "background commit failed: {e}");
                }
                this.give_back_memory();
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
                if !reopened {
                    this.silly_remove(ino).await;
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

    /// Opens a directory. While change notices are followed the kernel may keep what it
    /// is listed (`FOPEN_CACHE_DIR`: a listing again is answered by the kernel alone,
    /// without a request), and keep it across this open (`FOPEN_KEEP_CACHE`) if it was
    /// made from the listing the promise still covers, unchanged. What drops it: the kernel's
    /// own changes in the directory (its version), a notice of another mount's
    /// (the notifier drops the directory's pages), and an open that does not let it keep
    /// its copy (any change of ours it did not see moves our listing on).
    pub fn opendir(&self, c: Caller, ino: u64) -> (OpenNo, DirCache) {
        let fh = OpenNo(self.next_fh.fetch_add(1, Ordering::Relaxed));
        let cache = match self.promised_listing(ino) {
            Some(l)
                if self.inodes.lock().unwrap().get(ino).and_then(|n| n.kernel_listing) == Some((l.id, l.change())) =>
            {
                DirCache::Keep
            }
            // The listing this open fetches is kept under the promise, and the kernel's
            // copy with it.
            _ if self.opts.lookup_cache && self.mark().is_some() => DirCache::Fill,
            _ => DirCache::None,
        };
        let cache_dir = cache != DirCache::None;
        let of = OpenFile { cred: self.cred(c), ra: ReadAhead::default(), listing: None, cache_dir };
        self.opens.lock().unwrap().insert(fh, of);
        (fh, cache)
    }

    /// The directory's recent listing, if the promise still covers it: no notice touched
    /// the directory since, and no change of ours moved its change attribute.
    pub(super) fn promised_listing(&self, dir_ino: u64) -> Option<Arc<Listing>> {
        if !self.opts.lookup_cache {
            return None; // every listing and lookup asks the server
        }
        let l = self.listings.lock().unwrap().get(&dir_ino).cloned()?;
        let same = self.inodes.lock().unwrap().get(dir_ino).is_some_and(|n| n.attr.change == l.change());
        (same && self.promised(l.mark, &[dir_ino]) == Some(true)).then_some(l)
    }

    /// Before a change of ours: drops the kept listings it may make stale, all but a
    /// removal's own directory's, whose node id it returns.
    pub(super) fn listings_before(&self, req: &Request) -> Option<u64> {
        let dir = match req {
            Request::Remove { dir, .. } | Request::Rmdir { dir, .. } => self.inodes.lock().unwrap().ino_of(dir),
            _ => None,
        };
        let mut listings = self.listings.lock().unwrap();
        let kept = dir.and_then(|ino| Some((ino, listings.pop(&ino)?)));
        listings.clear();
        let (ino, l) = kept?;
        listings.put(ino, l);
        Some(ino)
    }

    /// After our removal in directory `dir_ino`, whose listing was kept: the entry is
    /// marked gone if the reply shows the directory went from the listing's state to
    /// the next; otherwise (a failure, or another change in between) the listing goes.
    pub(super) fn listing_removed(&self, dir_ino: u64, req: &Request, res: &Result<Response, Errno>) {
        let (Request::Remove { name, .. } | Request::Rmdir { name, .. }) = req else { return };
        let mut listings = self.listings.lock().unwrap();
        let Some(l) = listings.get(&dir_ino) else { return };
        let follows = match res {
            Ok(Response::Wcc(Wcc { before: Some(b), after: Some(a) })) => l.removed(name, b.ctime.change(), a.change),
            _ => false,
        };
        if !follows {
            listings.pop(&dir_ino);
        }
    }

    pub fn releasedir(&self, fh: OpenNo) {
        self.opens.lock().unwrap().remove(&fh);
    }

    /// `listing` answers the open `fh` from offset 0 on; the kernel keeps it if the open
    /// lets it.
    fn serving(&self, dir_ino: u64, fh: OpenNo, offset: u64, listing: &Arc<Listing>) {
        let cache_dir = match self.opens.lock().unwrap().get_mut(&fh) {
            Some(of) => {
                of.listing = Some(listing.clone());
                of.cache_dir
            }
            None => false,
        };
        if offset != 0 {
            return; // (a seek: the kernel fills its copy from the start only)
        }
        if let Some(n) = self.inodes.lock().unwrap().get_mut(dir_ino) {
            n.kernel_listing = cache_dir.then(|| (listing.id, listing.change()));
        }
    }

    /// The directory listing of an open directory handle: fetched whole (READDIRPLUS,
    /// as many calls as it takes) when the kernel asks from offset 0, then served from
    /// memory for the kernel's following calls. Offsets are indices + 1.
    pub async fn readdir(&self, dir_ino: u64, fh: OpenNo, offset: u64) -> Result<Arc<Listing>, Errno> {
        self.listing_pages.fetch_add(1, Ordering::Relaxed);
        let (cred, cached) = {
            let o = self.opens.lock().unwrap();
            let of = o.get(&fh).ok_or(Errno::EBADF)?;
            (of.cred.clone(), of.listing.clone())
        };
        if let (Some(l), true) = (cached, offset != 0) {
            return Ok(l);
        }
        if let Some(l) = self.promised_listing(dir_ino) {
            self.serving(dir_ino, fh, offset, &l);
            return Ok(l);
        }
        let listing = self.fetch_listing(dir_ino, &cred).await?;
        self.serving(dir_ino, fh, offset, &listing);
        Ok(listing)
    }

    /// Fetches a directory's listing whole (READDIRPLUS, as many calls as it takes) and
    /// keeps it while the promise covers it.
    pub(super) async fn fetch_listing(&self, dir_ino: u64, cred: &Cred) -> Result<Arc<Listing>, Errno> {
        let dir = self.fh(dir_ino)?;
        let mark = self.mark();
        let mut change: u64;
        let (mut cookie, mut verifier, mut all) = (0u64, 0u64, Vec::new());
        loop {
            let req = Request::ReadDirPlus { dir: dir.clone(), cookie, verifier, count: 256 * 1024 };
            match self.call(cred, req).await? {
                Response::Dir { verifier: v, entries, eof, attr } => {
                    self.note_attr(&dir, &attr);
                    change = attr.change;
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
        let listing = Arc::new(Listing::new(all, mark, change));
        if mark.is_some() {
            self.listings.lock().unwrap().put(dir_ino, listing.clone());
        }
        Ok(listing)
    }

    /// A LOOKUP in `dir_ino` went to the server and found the name: after the second
    /// such in a folder with no listing at hand (`git status`, `make` and `stat`s by name
    /// in a folder nobody listed), its listing is fetched in the background under the
    /// promise, and the folder's next LOOKUPs are answered from it. Names not found do
    /// not count (the LOOKUP before each create: our creates drop the listing, and
    /// fetching it again every other file would cost the square of the folder). After
    /// each fetch it takes twice the finds for the next. Not for a folder over
    /// [`PREFETCH_MAX_DIR_SIZE`] (its listing would cost more than the lookups it saves),
    /// nor once a fetch of it failed (no read permission), while remembered.
    pub(super) fn missed(self: &Arc<Self>, dir_ino: u64, c: Caller) {
        if !self.opts.lookup_cache || self.mark().is_none() {
            return;
        }
        let small = self.inodes.lock().unwrap().get(dir_ino).is_some_and(|n| n.attr.size <= PREFETCH_MAX_DIR_SIZE);
        if !small {
            return;
        }
        {
            let mut m = self.misses.lock().unwrap();
            let s = m.get_or_insert_mut(dir_ino, || Misses { found: 0, fetch_at: Some(2) });
            s.found = s.found.saturating_add(1);
            if Some(s.found) != s.fetch_at {
                return; // (too few yet, or a fetch on its way, or one failed)
            }
        }
        let (this, cred) = (self.clone(), self.cred(c));
        tokio::spawn(async move {
            let ok = this.fetch_listing(dir_ino, &cred).await.is_ok();
            if let Some(s) = this.misses.lock().unwrap().get_mut(&dir_ino) {
                s.found = 0;
                s.fetch_at = s.fetch_at.filter(|_| ok).and_then(|n| n.checked_mul(2));
            }
        });
    }
}

/// LOOKUPs of a folder that found their names at the server since its listing was last
/// fetched in the background, and how many fetch it next (see `Client::missed`).
pub(super) struct Misses {
    found: u32,
    /// None: never again (a fetch failed).
    fetch_at: Option<u32>,
}

/// The largest folder (by its size attribute) whose listing a streak of LOOKUPs fetches.
pub(super) const PREFETCH_MAX_DIR_SIZE: u64 = 1 << 20;
