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
//!
//! # Layout
//! One module per concern, each an `impl Client` block: [`names`] (lookup .. rename),
//! [`silly`] (silly rename), [`attrs`] (attributes and xattrs), [`open`] (open, close,
//! listings), [`read`] (the read path), [`write`] (the write path; its decisions are in
//! the pure [`crate::writeback`]), [`creds`] (who is calling). This file holds the
//! shared state and the helpers every part uses.
//!
//! Two kinds of handle: [`FileHandle`] is the server's (opaque, the same on every mount
//! of the export); [`OpenNo`] is the kernel's number for one open file description.

mod attrs;
mod creds;
mod known;
mod names;
mod notify;
mod open;
mod order;
mod read;
mod silly;
mod write;

use crate::attrcache::AttrTimeouts;
use crate::inodes::Inodes;
use crate::options::MountOptions;
use crate::pagecache::PageCache;
use crate::rpc::Rpc;
use fs_proto::*;
use lru::LruCache;
pub use notify::{Inval, Mark};
use open::OpenFile;
use read::Fetch;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, Semaphore};
use write::FileState;

/// Who made a kernel request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// The kernel's number for one open file description (what `open` answers and every
/// later call on that descriptor names); not the server's [`FileHandle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpenNo(pub u64);

/// A name the kernel may cache: node id, attributes and how long to trust each.
#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    /// Held until the kernel has the answer ([`Gate`]).
    pub gate: Gate,
}

/// Keeps the notifier from applying a notice between the check that an answer is still
/// covered by the promise and the kernel receiving that answer: a notice applied first
/// makes the answer suspect (not cached by the kernel); one applied after finds the
/// kernel holding the answer and drops it. (The notifier holds the other side only while
/// it updates our tables, never while it calls the kernel, so no FUSE request it might
/// wait for can be waiting here.)
pub type Gate = Option<Arc<tokio::sync::OwnedRwLockReadGuard<()>>>;

/// What the kernel may do with what a directory open lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirCache {
    /// Nothing kept (no promise): every listing asks us.
    None,
    /// Keep it from now on (`FOPEN_CACHE_DIR`), dropping what it holds now.
    Fill,
    /// Keep it, and what it holds now is current (`FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE`).
    Keep,
}

pub struct Opened {
    pub fh: OpenNo,
    /// Keep the kernel's page cache: the file did not change since we cached it.
    pub keep_cache: bool,
    /// The file changed since we last saw it: the kernel's cached attributes (the size
    /// above all, which bounds its reads) must go too, or the first read after this open
    /// stops at the old size.
    pub attrs_changed: bool,
}

/// The client's shared state.
///
/// # Lock order
/// `files` -> a [`FileState`]'s locks (`opens`, `cred`, `wb`; never two of them at
/// once) -> `cache` -> `fetches`. `inodes`, `opens`, `silly`, `groups`, `clock`,
/// `notice` and `listings` are leaves:
/// nothing else is taken while one is held. No lock is held across an `.await`.
pub struct Client {
    rpc: Rpc,
    opts: MountOptions,
    /// Node ids to server handles, lookup and open counts, cached attributes.
    inodes: Mutex<Inodes>,
    /// The page cache (blocks tagged with the change attribute).
    cache: Mutex<PageCache>,
    /// Block fetches in flight, shared by concurrent readers of a block.
    fetches: Mutex<HashMap<(u64, u64), Fetch>>,
    /// Write-back state of files open (or still committing), by node id.
    files: Mutex<HashMap<u64, Arc<FileState>>>,
    /// Open file descriptions, by the kernel's number.
    opens: Mutex<HashMap<OpenNo, OpenFile>>,
    next_fh: AtomicU64,
    /// Silly-renamed open files, by node id.
    silly: Mutex<HashMap<u64, silly::Silly>>,
    /// Bounds the WRITEs in flight (back-pressure on writers).
    write_slots: Arc<Semaphore>,
    /// Supplementary groups by process id, with when they were read.
    groups: Mutex<LruCache<u32, (Instant, Vec<u32>)>>,
    max_io: usize,
    /// Whether the export updates access times when read (until a read for the access
    /// time's sake shows it does not).
    atime_kept_by_server: std::sync::atomic::AtomicBool,
    /// Background commits running, and a wake-up when one ends.
    background: AtomicU64,
    /// Bytes of committed writes freed since memory was last handed back (see
    /// `Client::give_back_memory`).
    untrimmed: std::sync::atomic::AtomicUsize,
    quiet: Notify,
    /// The server's clock as this mount sees it (Cristian's algorithm), and the start of
    /// the monotonic time it is slewed by.
    clock: Mutex<crate::srvclock::ServerClock>,
    started: Instant,
    clock_warned: std::sync::atomic::AtomicBool,
    /// The kernel's LOOKUPs, and those answered here without a round trip (`status`).
    lookups: AtomicU64,
    lookups_here: AtomicU64,
    /// The kernel's requests for a page of a listing.
    listing_pages: AtomicU64,
    /// Change notices: subscribed or not, how far applied ([`notify`]). A leaf lock.
    notice: Mutex<notify::NoticeView>,
    notice_applied: Notify,
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Answers about names in the server's order ([`order`]).
    order: order::Order,
    /// Recent directory listings, kept while the promise covers them. A leaf lock.
    listings: Mutex<LruCache<u64, Arc<open::Listing>>>,
    /// Per folder: LOOKUPs that found their names at the server (see `Client::missed`).
    misses: Mutex<LruCache<u64, open::Misses>>,
    /// Every name of directories we made, kept through our own changes ([`known`]).
    /// Taken after `inodes` (never the other way).
    known: Mutex<LruCache<u64, known::Known>>,
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
            atime_kept_by_server: std::sync::atomic::AtomicBool::new(true),
            background: AtomicU64::new(0),
            untrimmed: Default::default(),
            quiet: Notify::new(),
            clock: Mutex::new(Default::default()),
            started: Instant::now(),
            clock_warned: std::sync::atomic::AtomicBool::new(false),
            lookups: AtomicU64::new(0),
            lookups_here: AtomicU64::new(0),
            listing_pages: AtomicU64::new(0),
            notice: Mutex::new(Default::default()),
            notice_applied: Notify::new(),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            order: Default::default(),
            listings: Mutex::new(LruCache::new(NonZeroUsize::new(64).unwrap())),
            misses: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            known: Mutex::new(LruCache::new(NonZeroUsize::new(256).unwrap())),
            opts,
        })
    }

    pub fn max_io(&self) -> usize {
        self.max_io
    }

    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    pub fn options(&self) -> &MountOptions {
        &self.opts
    }

    pub(super) async fn call(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        if req.is_mutation() {
            if self.opts.read_only {
                return Err(Errno::EROFS);
            }
            // A change of ours makes no notice here (its reply tells us), and the
            // attributes a kept listing holds for the object would be stale; a removal
            // keeps its directory's listing, which follows it.
            let dir_ino = self.listings_before(&req);
            self.own_change();
            let res = self.rpc.call_ref(cred, &req).await;
            // Again after: an answer to a call that overtook this one is not trusted.
            self.own_change();
            if let Some(ino) = dir_ino {
                self.listing_removed(ino, &req, &res);
            }
            self.known_after(&req, &res);
            return res;
        }
        self.rpc.call(cred, req).await
    }

    pub(super) fn fh(&self, ino: u64) -> Result<FileHandle, Errno> {
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

    pub(super) fn set_fence(&self, ino: u64, fence: u64) {
        if let Some(f) = self.files.lock().unwrap().get(&ino) {
            f.fence.store(fence, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub(super) fn timeouts(&self) -> AttrTimeouts {
        self.opts.attr
    }

    pub fn attr_ttl(&self, attr: &Attr) -> Duration {
        self.timeouts().timeout(attr, self.server_now())
    }

    fn local_now(&self) -> crate::srvclock::Now {
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        crate::srvclock::Now { wall, mono: self.started.elapsed().as_nanos() as i128 }
    }

    /// The server's time now, as this mount sees it: what every age of a server
    /// timestamp is measured against.
    pub fn server_now(&self) -> SystemTime {
        let v = self.clock.lock().unwrap().view(self.local_now());
        SystemTime::UNIX_EPOCH + Duration::from_nanos(v.max(0) as u64)
    }

    /// Cristian's algorithm: asks the server's time five times, keeps the answer with
    /// the shortest round trip. Warns once when the clocks differ by over a second.
    pub async fn measure_clock(&self) -> Result<crate::srvclock::Estimate, Errno> {
        let cred = Cred { uid: 0, gid: 0, groups: vec![] };
        let mut samples = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let server = match self.rpc.call(&cred, Request::Time).await? {
                Response::Time { now } => i128::from(now.sec) * 1_000_000_000 + i128::from(now.nsec),
                r => return Err(unexpected(r)),
            };
            let rtt = t0.elapsed().as_nanos() as i128;
            samples.push(crate::srvclock::Sample { rtt, received: self.local_now().wall, server });
        }
        let e = crate::srvclock::estimate(&samples).ok_or(Errno::EIO)?;
        self.clock.lock().unwrap().update(e, self.local_now());
        if e.offset.abs() > 1_000_000_000 && !self.clock_warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "the server's clock is {} s ahead of this machine's (± {} s); ages of files are measured by the server's clock, but programs that compare file times with the local clock (make) will see skew",
                crate::srvclock::seconds(e.offset),
                crate::srvclock::seconds(e.bound)
            );
        }
        Ok(e)
    }

    /// What `fs-client status` prints.
    pub fn status_text(&self) -> String {
        let mut s = format!("server {}\n", self.rpc.describe());
        let (measured, applied) = {
            let c = self.clock.lock().unwrap();
            (c.measured(), c.applied())
        };
        let view = self.server_now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
        use crate::srvclock::seconds;
        match measured {
            Some(e) => {
                s += &format!("clock offset {} ± {}\n", seconds(e.offset), seconds(e.bound));
                if applied != e.offset {
                    s += &format!("clock slewing: applied offset {}\n", seconds(applied));
                }
            }
            None => s += "clock offset unknown (the server has not answered TIME)\n",
        }
        s += &format!("server time {}\n", seconds(view));
        s += &self.notice_status();
        s += &self.order_status();
        s += &self.rpc.stats().render();
        let (cached, (hits, misses)) = {
            let c = self.cache.lock().unwrap();
            (c.bytes(), c.hits_and_misses())
        };
        let ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        s += &format!("page cache {cached} bytes, {hits} hits, {misses} misses, hit ratio {ratio:.3}\n");
        let (lookups, here) = (self.lookups.load(Relaxed), self.lookups_here.load(Relaxed));
        s += &format!("kernel lookups {lookups}\nkernel lookups answered here {here}\n");
        s += &format!("kernel listing pages {}\n", self.listing_pages.load(Relaxed));
        let (mut dirty, mut unstable) = (0usize, 0usize);
        for f in self.files.lock().unwrap().values() {
            let wb = f.wb.lock().unwrap();
            dirty += wb.dirty.bytes();
            unstable += wb.unstable.bytes();
        }
        s += &format!("dirty bytes {dirty} not yet written, {unstable} written awaiting COMMIT\n");
        s
    }

    /// Replaces the cached attributes of `fh`, if we know it.
    pub(super) fn note_attr(&self, fh: &FileHandle, attr: &Attr) {
        let mut t = self.inodes.lock().unwrap();
        if let Some(ino) = t.ino_of(fh) {
            let ttl = self.attr_ttl(attr);
            if let Some(n) = t.get_mut(ino) {
                n.attr = *attr;
                n.attr_valid_until = Instant::now() + ttl;
            }
        }
    }

    pub(super) fn note_wcc(&self, fh: &FileHandle, wcc: &Wcc) {
        if let Some(a) = &wcc.after {
            self.note_attr(fh, a);
        }
    }

    /// The kernel now holds a reference to `fh` (LOOKUP, CREATE, READDIRPLUS entry...),
    /// by `name` in `parent`; `mark`: the notice state the reply's call was sent under.
    pub fn remember(&self, parent: u64, name: &[u8], fh: &FileHandle, attr: Attr, mark: Option<Mark>) -> Entry {
        self.remember_many(parent, &[(name, fh, attr)], mark).pop().expect("one in, one out")
    }

    /// [`Self::remember`] for many names in `parent` at once (a page of READDIRPLUS): one
    /// gate, one reading of the clocks and one hold of each lock for all of them.
    pub fn remember_many(&self, parent: u64, names: &[(&[u8], &FileHandle, Attr)], mark: Option<Mark>) -> Vec<Entry> {
        let (mark, gate) = self.gate(mark);
        let (server_now, now) = (self.server_now(), Instant::now());
        let dir_min = self.timeouts().dir_min;
        // The promise needs the subscription unbroken since the call was sent (`promised`).
        let unbroken = mark.map(|m| self.notice_unbroken(m));
        let mut entries = Vec::with_capacity(names.len());
        {
            let mut t = self.inodes.lock().unwrap();
            for &(name, fh, attr) in names {
                let adaptive = self.timeouts().timeout(&attr, server_now);
                let ino = t.lookup(fh, attr, adaptive, now);
                let node = t.get_mut(ino).expect("just looked up");
                node.add_name(parent, name);
                let (attr_ttl, promise) = self.ttl_under(adaptive, || match (mark, unbroken) {
                    (Some(m), Some(true)) => Some(notify::untouched(&t, &[ino, parent], m)),
                    (Some(_), _) => Some(false),
                    (None, _) => None,
                });
                if promise == Some(true) {
                    let node = t.get_mut(ino).expect("just looked up");
                    node.promised_until = Some(now + attr_ttl);
                    node.promised_own = mark.map_or(0, |m| m.own_changes());
                }
                // Names are revalidated on the directory timeouts, as NFS's dentry cache;
                // under the promise, when a notice says so; a suspect answer, or any under
                // `lookupcache=none`, at every use.
                let entry_ttl = match promise {
                    _ if !self.opts.lookup_cache => Duration::ZERO,
                    Some(true) => attr_ttl,
                    Some(false) => Duration::ZERO,
                    None => dir_min,
                };
                entries.push(Entry { ino, attr, attr_ttl, entry_ttl, gate: gate.clone() });
            }
        }
        let mut views: Vec<(u64, &mut Attr)> = entries.iter_mut().map(|e| (e.ino, &mut e.attr)).collect();
        self.local_views(&mut views);
        entries
    }
    /// A mark for a call whose reply may be promised (readdirplus in the FUSE layer).
    pub fn notice_mark(&self) -> Option<Mark> {
        self.mark()
    }

    /// Drops cached blocks of `ino` in `[start, end)`, and forgets fetches of them still
    /// in flight, so that readers from now on fetch afresh.
    pub(super) fn invalidate(&self, ino: u64, start: u64, end: u64) {
        let bs = self.opts.block_size as u64;
        self.cache.lock().unwrap().invalidate_range(ino, start, end);
        let (first, last) = (start / bs, end.saturating_sub(1) / bs);
        self.fetches.lock().unwrap().retain(|&(i, b), _| i != ino || b < first || b > last);
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if self.inodes.lock().unwrap().forget(ino, n) {
            self.cache.lock().unwrap().forget(ino);
        }
    }
}

/// Polls `fut` once on this thread; if it is not done, it goes on as a task of the
/// runtime (which must be entered). For work that is usually done at once: no thread
/// hand-off then. (A future may be polled with different wakers: the task's first poll
/// registers the real one.)
pub fn now_or_spawn<F>(fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(fut);
    }
}
