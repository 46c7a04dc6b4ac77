//! Change notices: the server as the sequencer (Amoeba's, in the lecture notes' terms).
//!
//! Every change the server makes gets the next number of one counter, and a notice (the
//! number, what changed, which client made it) goes to every connection that subscribed,
//! in number order (FIFO per connection; the numbers give one total order). Notices are
//! soft state: the [`Sequencer`] keeps a bounded history of the most recent ones (the
//! sequencer's history buffer) so that a mount that reconnects can ask for what it
//! missed; one that has fallen out of the history, or meets a new server instance, drops
//! what it has not verified.
//!
//! Pushes never block a change: each subscriber has a bounded queue drained by a thread
//! of its own connection; a subscriber whose queue is full is dropped and its connection
//! closed, and the mount, reconnecting, catches up from the history.
//!
//! A standby server (passive redundancy) follows the counter: every notice reaches the
//! standbys before any mount ([`Hub::record`] holds it, [`Hub::release`] pushes it once
//! they have it; see [`crate::replica`]), and a standby that takes over numbers on under
//! the same instance, so mounts keep what they cached. A restarted server without a
//! standby is a new instance, numbering from 1, and every mount revalidates.

use fs_proto::{encode_frame, Change, Notice, Reply, Request, Response};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The counter and the history buffer. Pure: no I/O.
pub struct Sequencer {
    pub instance: u64,
    next: u64,
    history: VecDeque<Notice>,
    cap: usize,
}

impl Sequencer {
    pub fn new(instance: u64, cap: usize) -> Sequencer {
        Sequencer { instance, next: 1, history: VecDeque::new(), cap: cap.max(1) }
    }

    /// Numbers a change and keeps it in the history.
    pub fn record(&mut self, client: u64, changes: Vec<Change>) -> Notice {
        let n = Notice { seq: self.next, client, changes };
        self.keep(n.clone());
        n
    }

    /// Keeps `n` in the history; the next number follows it.
    fn keep(&mut self, n: Notice) {
        self.next = n.seq + 1;
        if self.history.len() == self.cap {
            self.history.pop_front();
        }
        self.history.push_back(n);
    }

    /// The number the next notice gets.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// A standby's copy: the primary numbered `n` (notices arrive in number order).
    pub fn adopt(&mut self, n: Notice) {
        if n.seq >= self.next {
            self.keep(n);
        }
    }

    /// The notices numbered after `after`, and whether that is all of them (false when
    /// some have left the history, or `after` is from the future: another instance).
    /// `u64::MAX` asks for nothing past: "from now on".
    pub fn since(&self, after: u64) -> (Vec<Notice>, bool) {
        if after == u64::MAX {
            return (Vec::new(), true);
        }
        if after >= self.next {
            return (Vec::new(), after + 1 == self.next);
        }
        let oldest = self.history.front().map_or(self.next, |n| n.seq);
        let complete = after + 1 >= oldest;
        (self.history.iter().filter(|n| n.seq > after).cloned().collect(), complete)
    }
}

/// One frame ready to write.
pub type Frame = Arc<Vec<u8>>;

/// A connection's queue of frames (pushes) that a thread of its own writes in order, and
/// how many were sent into it and written: a reply that must not overtake a notice
/// already pushed goes into the queue while some are unwritten (see `net`). The
/// subscriber's entry in the [`Hub`] holds the only strong reference: when the hub drops
/// a subscriber, its queue closes, and so does its connection.
#[derive(Clone)]
pub struct Queue {
    tx: Arc<SyncSender<Frame>>,
    sent: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

/// A [`Queue`] that does not keep it open.
pub struct WeakQueue {
    tx: std::sync::Weak<SyncSender<Frame>>,
    sent: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl From<SyncSender<Frame>> for Queue {
    fn from(tx: SyncSender<Frame>) -> Queue {
        Queue { tx: Arc::new(tx), sent: Arc::default(), written: Arc::default() }
    }
}

impl Queue {
    /// Queues `f` unless the queue is full or closed.
    pub fn try_send(&self, f: Frame) -> Result<(), TrySendError<Frame>> {
        // Counted before it is in: a reader of the counts never sees it written early.
        self.sent.fetch_add(1, Ordering::SeqCst);
        let r = self.tx.try_send(f);
        if r.is_err() {
            self.sent.fetch_sub(1, Ordering::SeqCst);
        }
        r
    }

    /// Queues `f`, waiting for room; false when the queue is closed.
    pub fn send(&self, f: Frame) -> bool {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.tx.send(f).is_ok()
    }

    /// Whether every frame sent so far was written.
    pub fn drained(&self) -> bool {
        self.written.load(Ordering::SeqCst) >= self.sent.load(Ordering::SeqCst)
    }

    /// The count the writer adds to after each frame.
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    pub fn downgrade(&self) -> WeakQueue {
        WeakQueue { tx: Arc::downgrade(&self.tx), sent: self.sent.clone(), written: self.written.clone() }
    }

    /// The bare sender (the standbys' frames, which no reply needs to follow).
    pub fn sender(&self) -> SyncSender<Frame> {
        (*self.tx).clone()
    }
}

impl WeakQueue {
    pub fn upgrade(&self) -> Option<Queue> {
        Some(Queue { tx: self.tx.upgrade()?, sent: self.sent.clone(), written: self.written.clone() })
    }
}

/// Queued pushes per subscriber before it is dropped as too slow.
pub const QUEUE: usize = 8192;

/// The most notices one catch-up sends (far below the frame limit).
pub const CATCH_UP: usize = 4096;

/// How long a change waits for the other mounts to apply its notice (see
/// [`Hub::await_applied`]) before it gives up on those that have not and drops them.
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// What [`Hub::await_applied`] did: the mounts it waited for, and those it dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    pub waited: usize,
    pub dropped: usize,
}

/// The sequencer and its subscribers, shared by every connection.
pub struct Hub {
    inner: Mutex<HubInner>,
    /// Held shared by every change of names from before it is made until its notice is
    /// pushed; a reading of names takes it alone for a moment after it read ([`Hub::
    /// barrier`]), so its reply, sent after the pushes ([`Queue`]), never reaches a mount
    /// before the notice of a change it shows.
    order: RwLock<()>,
    /// Signalled when a subscriber acknowledges notices or leaves.
    acked: Condvar,
    drop_every: Option<u64>,
}

/// One subscribed connection.
struct Sub {
    tx: Queue,
    /// The client (mount) on that connection: its own changes need no acknowledgement.
    client: u64,
    /// The last notice it says it applied (at first, the last one before its catch-up:
    /// it promises nothing until it applied that).
    acked: u64,
    /// Its own client's notices not yet pushed: they change nothing it cached (its
    /// replies told it), so they wait for the next frame it gets (another's notice, the
    /// beat, or [`DEFER`] of them), which keeps the numbers whole without a push and a
    /// wake-up of its notifier per change it makes.
    deferred: Vec<Notice>,
}

/// Own notices held back per subscriber at most.
pub const DEFER: usize = 256;

struct HubInner {
    seq: Sequencer,
    subs: HashMap<u64, Sub>,
    /// Numbered, not yet pushed: waiting until the standbys have them.
    held: VecDeque<Notice>,
}

/// Whether subscriber `s` still has to apply notice `n` of a change by `origin`.
fn is_behind(s: &Sub, n: u64, origin: u64, may_hold: &impl Fn(u64) -> bool) -> bool {
    s.client != origin && s.acked < n && may_hold(s.client)
}

impl Hub {
    pub fn new(instance: u64, history: usize) -> Hub {
        Hub {
            inner: Mutex::new(HubInner {
                seq: Sequencer::new(instance, history),
                subs: HashMap::new(),
                held: VecDeque::new(),
            }),
            acked: Condvar::new(),
            drop_every: None,
            order: RwLock::new(()),
        }
    }

    /// Held while a change of names is made and until its notice is pushed.
    pub fn changing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.order.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until every change of names under way (whose effect a reading just made may
    /// show) has pushed its notice.
    pub fn barrier(&self) {
        drop(self.order.write().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Tests only: notices numbered a multiple of `k` are numbered and kept, not pushed.
    pub fn dropping_every(mut self, k: Option<u64>) -> Hub {
        self.drop_every = k;
        self
    }

    /// Subscribes connection `conn` of `client`: the answer to its SUBSCRIBE (call `xid`)
    /// goes into its queue first, then every notice after it, with nothing lost in
    /// between.
    pub fn subscribe(&self, conn: u64, client: u64, xid: u64, after: u64, tx: impl Into<Queue>) {
        let tx = tx.into();
        let mut h = crate::lock(&self.inner);
        let next = h.released_next();
        let (mut notices, mut complete) = h.seq.since(after);
        // Held notices are not the mounts' yet (the standbys may not have them).
        notices.retain(|n| n.seq < next);
        if notices.len() > CATCH_UP {
            // More than one frame holds: as good as fallen out of the history.
            (notices, complete) = (Vec::new(), false);
        }
        let res = Response::Notices { instance: h.seq.instance, next, complete, notices };
        let sent = match encode_frame(&Reply { xid, res: Ok(res) }) {
            Ok(f) => tx.try_send(Arc::new(f)).is_ok(),
            Err(_) => false,
        };
        if sent {
            h.subs.insert(conn, Sub { tx, client, acked: next - 1, deferred: Vec::new() });
        } else {
            // The connection closes when `tx` is dropped; the mount reconnects.
            tracing::warn!(conn, "subscription's answer not sent");
        }
    }

    pub fn unsubscribe(&self, conn: u64) {
        crate::lock(&self.inner).subs.remove(&conn);
        self.acked.notify_all();
    }

    /// Connection `conn`'s mount has applied every notice numbered up to `upto`.
    pub fn ack(&self, conn: u64, upto: u64) {
        if let Some(s) = crate::lock(&self.inner).subs.get_mut(&conn) {
            s.acked = s.acked.max(upto);
        }
        self.acked.notify_all();
    }

    /// Waits until every subscribed mount but `origin` (the one that made the change)
    /// for which `may_hold` says it may have the changed file cached has applied notice
    /// `n`, or `limit` passes; a mount that has not by then is dropped (its connection
    /// closes, and with it its promise). This is the AFS store that returns once every
    /// callback on the file is broken: when a WRITE's reply reaches its client, no other
    /// mount still trusts what it cached of the file, so an `open` there after the
    /// `close` here sees the new data without a round trip of its own. `may_hold` is
    /// asked again at every wake-up (a mount whose LOOKUP was running may turn out not to
    /// hold the file). Returns how many mounts it waited for and how many were dropped.
    pub fn await_applied(&self, n: u64, origin: u64, limit: Duration, may_hold: impl Fn(u64) -> bool) -> Awaited {
        let deadline = Instant::now() + limit;
        let behind = |s: &Sub| is_behind(s, n, origin, &may_hold);
        let mut h = crate::lock(&self.inner);
        let waited = h.subs.values().filter(|s| behind(s)).count();
        loop {
            if !h.subs.values().any(behind) {
                return Awaited { waited, dropped: 0 };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let before = h.subs.len();
                h.subs.retain(|conn, s| {
                    let late = behind(s);
                    if late {
                        tracing::warn!(
                            conn,
                            "a mount did not apply notice {n} within {limit:?}; closing its connection"
                        );
                    }
                    !late
                });
                return Awaited { waited, dropped: before - h.subs.len() };
            }
            h = self.acked.wait_timeout(h, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// How many mounts [`Hub::await_applied`] would wait for now.
    #[cfg(test)]
    pub fn behind(&self, n: u64, origin: u64, may_hold: impl Fn(u64) -> bool) -> usize {
        crate::lock(&self.inner).subs.values().filter(|s| is_behind(s, n, origin, &may_hold)).count()
    }

    /// Numbers a change made by `client` and pushes it to every subscriber.
    pub fn publish(&self, client: u64, changes: Vec<Change>) {
        if let Some(n) = self.record(client, changes, |_| {}) {
            self.release(n);
        }
    }

    /// Numbers a change made by `client` and holds its notice until [`Hub::release`];
    /// `send` sees the notice under the sequencer's lock (so notices leave in number
    /// order). Returns the notice's number, or `None` when nothing changed (`send` then
    /// sees `None`).
    pub fn record(&self, client: u64, changes: Vec<Change>, send: impl FnOnce(Option<&Notice>)) -> Option<u64> {
        let mut h = crate::lock(&self.inner);
        if changes.is_empty() {
            send(None);
            return None;
        }
        let notice = h.seq.record(client, changes);
        send(Some(&notice));
        let n = notice.seq;
        h.held.push_back(notice);
        Some(n)
    }

    /// Pushes every held notice numbered up to `upto` to every subscriber, in order.
    pub fn release(&self, upto: u64) {
        let mut h = crate::lock(&self.inner);
        while h.held.front().is_some_and(|n| n.seq <= upto) {
            let notice = h.held.pop_front().expect("checked");
            h.push(notice, self.drop_every);
        }
    }

    /// Runs `f` with the sequencer's instance and next number, under its lock (a standby
    /// added in `f` gets exactly the notices numbered from then on).
    pub fn with_next<R>(&self, f: impl FnOnce(u64, u64) -> R) -> R {
        let h = crate::lock(&self.inner);
        f(h.seq.instance, h.seq.next())
    }

    /// A standby's copy of the primary's sequencer: its instance and next number (FOLLOW's
    /// answer); the history starts empty.
    pub fn follow(&self, instance: u64, next: u64) {
        let mut h = crate::lock(&self.inner);
        h.seq = Sequencer { next, ..Sequencer::new(instance, h.seq.cap) };
        h.held.clear();
    }

    /// A standby's copy: a notice the primary numbered.
    pub fn adopt(&self, n: Notice) {
        crate::lock(&self.inner).seq.adopt(n);
    }

    /// Tells every subscriber the next number, with no notice: a mount that missed the
    /// last notices before a quiet spell learns of it within a beat (every second).
    pub fn beat(&self) {
        let mut h = crate::lock(&self.inner);
        if h.subs.is_empty() {
            return;
        }
        let (instance, next) = (h.seq.instance, h.released_next());
        let Some(empty) = frame(instance, next, Vec::new()) else { return };
        h.subs.retain(|_, s| {
            let f = match s.deferred.is_empty() {
                true => empty.clone(),
                false => match frame(instance, next, std::mem::take(&mut s.deferred)) {
                    Some(f) => f,
                    None => return false,
                },
            };
            !matches!(s.tx.try_send(f), Err(TrySendError::Disconnected(_)))
        });
    }

    /// The sequencer's instance.
    pub fn instance(&self) -> u64 {
        crate::lock(&self.inner).seq.instance
    }

    /// Notices numbered so far.
    pub fn numbered(&self) -> u64 {
        crate::lock(&self.inner).seq.next() - 1
    }

    pub fn subscribers(&self) -> usize {
        crate::lock(&self.inner).subs.len()
    }
}

impl HubInner {
    /// The number of the next notice mounts will see: the first held one, else the
    /// sequencer's next.
    fn released_next(&self) -> u64 {
        self.held.front().map_or(self.seq.next(), |n| n.seq)
    }

    /// Pushes one notice to every subscriber (tests: unless `drop_every` divides its
    /// number).
    fn push(&mut self, notice: Notice, drop_every: Option<u64>) {
        if self.subs.is_empty() || drop_every.is_some_and(|k| notice.seq.is_multiple_of(k)) {
            return;
        }
        let (instance, next) = (self.seq.instance, self.released_next());
        // One encoding for every subscriber with nothing held back.
        let mut alone: Option<Frame> = None;
        self.subs.retain(|conn, s| {
            if notice.client == s.client && s.deferred.len() + 1 < DEFER {
                s.deferred.push(notice.clone());
                return true;
            }
            let f = if s.deferred.is_empty() {
                match &alone {
                    Some(f) => f.clone(),
                    None => match frame(instance, next, vec![notice.clone()]) {
                        Some(f) => alone.insert(f).clone(),
                        None => return false,
                    },
                }
            } else {
                let mut v = std::mem::take(&mut s.deferred);
                v.push(notice.clone());
                match frame(instance, next, v) {
                    Some(f) => f,
                    None => return false,
                }
            };
            match s.tx.try_send(f) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        conn,
                        "a subscriber fell {QUEUE} notices behind; closing its connection (it catches up on reconnect)"
                    );
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

/// A push: `notices` in number order, and the number the next will get.
fn frame(instance: u64, next: u64, notices: Vec<Notice>) -> Option<Frame> {
    let res = Response::Notices { instance, next, complete: true, notices };
    match encode_frame(&Reply { xid: 0, res: Ok(res) }) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::error!("notices not sent: {e}");
            None
        }
    }
}

/// What a successful call changed, from its request and its reply (the change
/// attributes after it), and the objects it unlinked or moved (`relinked`, found before
/// it ran: their attributes after it are not known). Calls that change nothing give
/// nothing.
pub fn changes(req: &Request, res: &Response, relinked: Vec<fs_proto::FileHandle>) -> Vec<Change> {
    let mut v = named_changes(req, res);
    v.extend(relinked.into_iter().map(|fh| Change::Object { fh, change: None }));
    v
}

fn named_changes(req: &Request, res: &Response) -> Vec<Change> {
    let obj = |fh: &fs_proto::FileHandle, change: Option<u64>| Change::Object { fh: fh.clone(), change };
    let entry = |dir: &fs_proto::FileHandle, name: &[u8]| Change::Entry { dir: dir.clone(), name: name.to_vec() };
    let after = |w: &fs_proto::Wcc| w.after.as_ref().map(|a| a.change);
    match (req, res) {
        (Request::Write { fh, .. }, Response::Write { wcc, .. }) => vec![obj(fh, after(wcc))],
        (Request::Commit { fh, .. }, Response::Commit { wcc, .. }) => vec![obj(fh, after(wcc))],
        (Request::SetAttr { fh, .. } | Request::Fallocate { fh, .. }, Response::Wcc(w)) => vec![obj(fh, after(w))],
        (Request::SetXattr { fh, .. } | Request::RemoveXattr { fh, .. }, Response::Attr(a)) => {
            vec![obj(fh, Some(a.change))]
        }
        (
            Request::Create { dir, name, .. }
            | Request::Mkdir { dir, name, .. }
            | Request::Symlink { dir, name, .. }
            | Request::Mknod { dir, name, .. },
            Response::Created { dir: w, .. },
        ) => vec![entry(dir, name), obj(dir, after(w))],
        (Request::Remove { dir, name } | Request::Rmdir { dir, name }, Response::Wcc(w)) => {
            vec![entry(dir, name), obj(dir, after(w))]
        }
        (Request::Rename { from_dir, from, to_dir, to, .. }, Response::Rename { from: fw, to: tw }) => {
            let mut v = vec![entry(from_dir, from), entry(to_dir, to), obj(from_dir, after(fw))];
            if to_dir != from_dir {
                v.push(obj(to_dir, after(tw)));
            }
            v
        }
        (Request::Link { fh, dir, name }, Response::Link { attr, dir: w }) => {
            vec![entry(dir, name), obj(dir, after(w)), obj(fh, Some(attr.change))]
        }
        _ => Vec::new(),
    }
}

/// What a call would change, from its request alone (no change attributes known): for a
/// call that failed but may have been done by a primary that died before its notice left.
pub fn targets(req: &Request) -> Vec<Change> {
    let obj = |fh: &fs_proto::FileHandle| Change::Object { fh: fh.clone(), change: None };
    let entry = |dir: &fs_proto::FileHandle, name: &[u8]| Change::Entry { dir: dir.clone(), name: name.to_vec() };
    match req {
        Request::SetAttr { fh, .. }
        | Request::Fallocate { fh, .. }
        | Request::SetXattr { fh, .. }
        | Request::RemoveXattr { fh, .. } => vec![obj(fh)],
        Request::Create { dir, name, .. }
        | Request::Mkdir { dir, name, .. }
        | Request::Symlink { dir, name, .. }
        | Request::Mknod { dir, name, .. }
        | Request::Remove { dir, name }
        | Request::Rmdir { dir, name } => vec![entry(dir, name), obj(dir)],
        Request::Rename { from_dir, from, to_dir, to, .. } => {
            vec![entry(from_dir, from), entry(to_dir, to), obj(from_dir), obj(to_dir)]
        }
        Request::Link { fh, dir, name } => vec![entry(dir, name), obj(dir), obj(fh)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_proto::FileHandle;

    fn ch(i: u8) -> Vec<Change> {
        vec![Change::Object { fh: FileHandle(vec![i]), change: Some(i as u64) }]
    }

    /// The frames queued for a subscriber: each push's `next` and notice numbers.
    fn frames(rx: &std::sync::mpsc::Receiver<Frame>) -> Vec<(u64, Vec<u64>)> {
        rx.try_iter()
            .map(|f| match fs_proto::decode::<Reply>(&f[4..]).unwrap().res {
                Ok(Response::Notices { next, notices, .. }) => (next, notices.iter().map(|n| n.seq).collect()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// A reading of names waits for every change under way ([`Hub::changing`], held from
    /// before the change until its notice is queued), and its reply goes behind the
    /// connection's pushes not yet written ([`Queue::drained`]).
    #[test]
    fn a_reading_of_names_waits_for_changes_under_way_and_goes_behind_unwritten_pushes() {
        let hub = Hub::new(1, 10);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let q = Queue::from(tx);
        hub.subscribe(1, 100, 7, u64::MAX, q.clone());
        assert!(!q.drained(), "the subscription's answer is queued, not written");
        rx.try_recv().unwrap();
        q.written().fetch_add(1, Ordering::SeqCst);
        assert!(q.drained());
        let changing = hub.changing();
        assert!(hub.order.try_write().is_err(), "a barrier waits while a change is under way");
        hub.publish(200, ch(1));
        drop(changing);
        assert!(hub.order.try_write().is_ok(), "and not after its notice is queued");
        hub.barrier();
        assert!(!q.drained(), "the notice is queued, not written: a reply goes behind it");
        rx.try_recv().unwrap();
        q.written().fetch_add(1, Ordering::SeqCst);
        assert!(q.drained());
        hub.publish(100, ch(2));
        assert!(q.drained(), "the subscriber's own notice waits for its next frame");
    }

    #[test]
    fn numbers_in_order_and_a_bounded_history() {
        let mut s = Sequencer::new(9, 3);
        for i in 1..=5u8 {
            assert_eq!(s.record(7, ch(i)).seq, i as u64);
        }
        assert_eq!(s.next(), 6);
        let (n, complete) = s.since(3);
        assert!(complete);
        assert_eq!(n.iter().map(|n| n.seq).collect::<Vec<_>>(), [4, 5]);
        let (n, complete) = s.since(2);
        assert!(complete, "3, 4 and 5 are all still there");
        assert_eq!(n.len(), 3);
        let (_, complete) = s.since(1);
        assert!(!complete, "2 has left the history");
        assert_eq!(s.since(5), (Vec::new(), true), "caught up");
        assert!(!s.since(40).1, "a number from the future is another instance's");
        assert_eq!(Sequencer::new(1, 3).since(0), (Vec::new(), true));
        assert_eq!(s.since(u64::MAX), (Vec::new(), true), "from now on");
    }

    #[test]
    fn subscribers_get_their_catch_up_then_every_notice_in_order() {
        let hub = Hub::new(5, 100);
        hub.publish(1, ch(1));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        hub.subscribe(42, 100, 77, 0, tx);
        hub.publish(2, ch(2));
        hub.publish(3, Vec::new()); // nothing changed: no number used
        hub.publish(3, ch(3));
        let got: Vec<Reply> = rx.try_iter().map(|f| fs_proto::decode(&f[4..]).unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].xid, 77);
        let seqs = |r: &Reply| match &r.res {
            Ok(Response::Notices { notices, instance: 5, .. }) => notices.iter().map(|n| n.seq).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(seqs(&got[0]), [1]);
        assert_eq!((got[1].xid, seqs(&got[1])), (0, vec![2]));
        assert_eq!((got[2].xid, seqs(&got[2])), (0, vec![3]));
    }

    /// Notices held for the standbys reach no mount before they are released: not
    /// pushed, not in a subscription's catch-up, not counted in a beat's `next`.
    #[test]
    fn held_notices_reach_no_mount_before_release() {
        let hub = Hub::new(5, 100);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        hub.subscribe(1, 100, 7, u64::MAX, tx);
        let mut sent = Vec::new();
        let a = hub.record(1, ch(1), |n| sent.push(n.map(|n| n.seq))).unwrap();
        let b = hub.record(1, ch(2), |n| sent.push(n.map(|n| n.seq))).unwrap();
        assert_eq!((a, b, sent), (1, 2, vec![Some(1), Some(2)]));
        hub.beat();
        let (tx2, rx2) = std::sync::mpsc::sync_channel(QUEUE);
        hub.subscribe(2, 100, 8, 0, tx2);
        assert_eq!(frames(&rx), [(1, vec![]), (1, vec![])], "the answer and a beat, both saying 1 comes next");
        assert_eq!(frames(&rx2), [(1, vec![])], "a catch-up without the held ones");
        hub.release(1);
        assert_eq!(frames(&rx), [(2, vec![1])]);
        hub.release(u64::MAX);
        assert_eq!(frames(&rx), [(3, vec![2])]);
        assert_eq!(frames(&rx2), [(2, vec![1]), (3, vec![2])]);
    }

    /// A standby's copy continues the primary's numbering under its instance.
    #[test]
    fn a_standby_continues_the_numbering() {
        let hub = Hub::new(1, 100);
        hub.follow(9, 41);
        hub.adopt(Notice { seq: 41, client: 3, changes: ch(1) });
        hub.adopt(Notice { seq: 42, client: 3, changes: ch(2) });
        hub.publish(4, ch(3));
        assert_eq!((hub.instance(), hub.numbered()), (9, 43));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        hub.subscribe(1, 100, 7, 40, tx);
        match fs_proto::decode::<Reply>(&rx.try_recv().unwrap()[4..]).unwrap().res {
            Ok(Response::Notices { instance: 9, next: 44, complete: true, notices }) => {
                assert_eq!(notices.iter().map(|n| n.seq).collect::<Vec<_>>(), [41, 42, 43])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_dropped() {
        let hub = Hub::new(5, 100);
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        hub.subscribe(1, 100, 1, 0, tx);
        hub.publish(1, ch(1));
        assert_eq!(hub.subscribers(), 1);
        hub.publish(1, ch(2));
        assert_eq!(hub.subscribers(), 0, "its queue was full");
        assert_eq!(rx.try_iter().count(), 2);
        assert!(rx.recv().is_err(), "and its queue is closed: the connection closes");
    }

    /// A change waits until every other subscribed mount applied its notice: not for
    /// the mount that made it, not for a notice before a mount's subscription, and not
    /// past the limit, when the mounts still behind are dropped (their queue closes).
    #[test]
    fn a_change_waits_for_the_other_mounts_to_apply_its_notice() {
        let hub = std::sync::Arc::new(Hub::new(5, 100));
        hub.publish(7, ch(1));
        let (tx_a, rx_a) = std::sync::mpsc::sync_channel(QUEUE);
        let (tx_b, rx_b) = std::sync::mpsc::sync_channel(QUEUE);
        hub.subscribe(1, 10, 1, 0, tx_a);
        hub.subscribe(2, 20, 2, 0, tx_b);
        let all = |_| true;
        assert_eq!(hub.await_applied(1, 7, Duration::ZERO, all).waited, 0, "before their subscriptions");
        hub.publish(10, ch(2));
        assert_eq!(hub.await_applied(2, 10, Duration::ZERO, |c| c != 20).waited, 0, "20 does not hold the file");
        let a = hub.await_applied(2, 10, Duration::ZERO, all);
        assert_eq!((a.waited, a.dropped), (1, 1), "mount 20 has not applied it: dropped");
        assert_eq!(hub.subscribers(), 1);
        assert!(rx_b.try_iter().count() > 0 && rx_b.recv().is_err(), "its queue closed");
        hub.publish(20, ch(3));
        // The waiter asks `may_hold` under the hub's lock each time it looks (first when
        // it counts the mounts behind, then at every wake-up).
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiter = {
            let (hub, asked) = (hub.clone(), asked.clone());
            let may_hold = move |_| {
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                true
            };
            std::thread::spawn(move || hub.await_applied(3, 20, Duration::from_secs(30), may_hold))
        };
        let looked = |more_than: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while asked.load(std::sync::atomic::Ordering::SeqCst) <= more_than {
                assert!(Instant::now() < deadline, "the waiter did not look again");
                std::thread::yield_now();
            }
        };
        looked(0);
        // (Taking the lock: the waiter is now waiting, or gone.)
        assert_eq!(hub.behind(3, 20, all), 1, "mount 10 has not applied 3 yet");
        let before = asked.load(std::sync::atomic::Ordering::SeqCst);
        hub.ack(1, 2);
        looked(before);
        assert_eq!(hub.behind(3, 20, all), 1, "woken, it looked again: 2 is not 3");
        hub.ack(1, 3);
        assert_eq!(hub.behind(3, 20, all), 0);
        // It waited for that mount (a 30 s limit: the acknowledgement ended it), and
        // dropped nobody.
        assert_eq!(waiter.join().unwrap(), Awaited { waited: 1, dropped: 0 });
        assert_eq!(
            hub.await_applied(3, 10, Duration::ZERO, |_| true).waited,
            0,
            "its own change needs no acknowledgement"
        );
        drop(rx_a);
    }

    /// A mount's own notices wait for the next frame it gets: another's notice, the
    /// beat, or a full batch; the numbers reach it whole and in order.
    #[test]
    fn own_notices_ride_with_the_next_frame() {
        let hub = Hub::new(5, 1000);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        hub.subscribe(1, 7, 1, u64::MAX, tx);
        assert_eq!(frames(&rx), [(1, vec![])], "the subscription's answer");
        hub.publish(7, ch(1));
        hub.publish(7, ch(2));
        assert!(frames(&rx).is_empty(), "its own: held back");
        hub.publish(8, ch(3));
        assert_eq!(frames(&rx), [(4, vec![1, 2, 3])], "with another's notice, in order");
        hub.publish(7, ch(4));
        hub.beat();
        assert_eq!(frames(&rx), [(5, vec![4])], "with the beat");
        hub.beat();
        assert_eq!(frames(&rx), [(5, vec![])]);
        for _ in 0..DEFER {
            hub.publish(7, ch(5));
        }
        let got = frames(&rx);
        assert_eq!(got.len(), 1, "a full batch goes at once");
        assert_eq!(got[0].1, (5..5 + DEFER as u64).collect::<Vec<_>>());
    }
}
