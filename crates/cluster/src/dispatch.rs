//! The broker's bookkeeping, without sockets: which numbers wait, which worker holds what,
//! which workers are alive. Time is passed in. The broker shell (`broker.rs`) moves bytes.
//!
//! Reliability rules (the Paranoid Pirate pattern of the ZeroMQ guide, adapted):
//! - A source's request is identified by (source, seq). The source resends the same
//!   request after a timeout (Lazy Pirate); a request seen before is acknowledged again
//!   and not queued again, so a lost acknowledgement never duplicates work downstream.
//! - Each accepted batch becomes a work item with a fresh id. A result for an item that is
//!   no longer outstanding (a second copy after a re-dispatch) is dropped: counted once.
//! - Credit dispatch: a worker says how many items it can hold (`Ready`); it gets one more
//!   each time it returns a result. Idle workers (most credit) are served first.
//! - Load dispatch (`load_aware`): what a worker may hold follows the load it reports with
//!   each hello and heartbeat ([`crate::load::capacity`]: its credit scaled by its CPU
//!   share, one under memory pressure), and the next item goes to the worker expected to
//!   finish it first ([`crate::load::finish_cost`]). An overloaded worker hands back items
//!   it has not started ([`Dispatcher::hand_back`]); they are queued again at the front
//!   and the worker drops them only once the broker confirms, so nothing is lost, and a
//!   copy tested twice is counted once as always.
//! - A worker silent for `liveness` is dead: what it held goes back to the front of the
//!   queue. A worker that says `Ready` again (it restarted or lost the broker) is treated
//!   the same way for what it held before.
//! - Plain PUSH (round-robin, no credit) is kept for comparison; there the broker cannot
//!   know the holder, so an item not done within `redispatch` is queued again.

use crate::load::{self, Load};
use lru::LruCache;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

pub type WorkerId = u64;
pub type WorkId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub job: u64,
    pub batch: u32,
    pub values: crate::wire::Values,
    /// Copies to give to as many different workers (1: one).
    pub replicas: u8,
}

/// What a result becomes when it is the first for its item.
#[derive(Debug, PartialEq, Eq)]
pub struct Completed {
    pub item: Item,
    pub worker: WorkerId,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    /// New work: publish the numbers.
    Queued(WorkId),
    /// A resend of a request already taken: acknowledge again, nothing else.
    Duplicate,
}

struct Outstanding {
    item: Item,
    holder: Option<WorkerId>,
    sent_at: Option<Instant>,
    /// The first copy's id, for replicated items (their copies go to different workers).
    group: Option<WorkId>,
}

struct Worker {
    /// The credit it asked for.
    base: u32,
    load: Load,
    held: HashSet<WorkId>,
    last_seen: Instant,
    /// The socket routing id to send work to (credit mode).
    route: Vec<u8>,
}

pub struct Dispatcher {
    next_work: WorkId,
    queue: VecDeque<WorkId>,
    items: HashMap<WorkId, Outstanding>,
    workers: HashMap<WorkerId, Worker>,
    /// Last seq acknowledged per source; bounded so forgotten sources cost nothing.
    sources: LruCache<u64, u64>,
    /// Replicated items: the workers given a copy, and the copies not yet done.
    groups: HashMap<WorkId, (HashSet<WorkerId>, u8)>,
    /// Workers a voter found wrong: never given work again.
    banned: HashSet<WorkerId>,
    pub liveness: Duration,
    pub redispatch: Duration,
    /// `--dispatch load`: capacity and choice follow reported load; hand-backs accepted.
    pub load_aware: bool,
    pub stats: Stats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub duplicate_requests: u64,
    pub completed: u64,
    pub duplicate_results: u64,
    pub redispatched: u64,
    pub dead_workers: u64,
    pub handed_back: u64,
}

impl Dispatcher {
    pub fn new(liveness: Duration, redispatch: Duration) -> Dispatcher {
        Dispatcher {
            next_work: 1,
            queue: VecDeque::new(),
            items: HashMap::new(),
            workers: HashMap::new(),
            sources: LruCache::new(NonZeroUsize::new(65536).expect("non-zero")),
            groups: HashMap::new(),
            banned: HashSet::new(),
            liveness,
            redispatch,
            load_aware: false,
            stats: Stats::default(),
        }
    }

    /// Numbers work items from `first` on. A broker starts each life (and each broker of a
    /// pair) at a random point: a worker still holding an item of another broker (the one
    /// that died, or this one before it restarted) may return its result here, and under
    /// the same number it would be taken as another batch's answer.
    pub fn numbering_from(mut self, first: WorkId) -> Dispatcher {
        self.next_work = first.max(1);
        self
    }

    pub fn submit(&mut self, source: u64, seq: u64, item: Item) -> Submitted {
        if let Some(&last) = self.sources.get(&source) {
            if seq <= last {
                self.stats.duplicate_requests += 1;
                return Submitted::Duplicate;
            }
        }
        self.sources.put(source, seq);
        let first = self.next_work;
        let copies = item.replicas.max(1);
        let group = (copies > 1).then_some(first);
        if let Some(g) = group {
            self.groups.insert(g, (HashSet::new(), copies));
        }
        for _ in 0..copies {
            let id = self.next_work;
            self.next_work += 1;
            self.items.insert(id, Outstanding { item: item.clone(), holder: None, sent_at: None, group });
            self.queue.push_back(id);
        }
        self.stats.accepted += 1;
        Submitted::Queued(first)
    }

    /// A voter found `worker` wrong: its work goes to others, and it gets no more.
    pub fn ban(&mut self, worker: WorkerId) {
        self.banned.insert(worker);
        if let Some(w) = self.workers.remove(&worker) {
            self.requeue(w.held);
        }
    }

    pub fn banned(&self) -> usize {
        self.banned.len()
    }

    /// A worker's hello: it holds nothing (anything we thought it held is queued again)
    /// and can take `credit` items (under load dispatch, as many as its load allows).
    pub fn ready(&mut self, worker: WorkerId, route: Vec<u8>, credit: u32, load: Load, now: Instant) {
        if self.banned.contains(&worker) {
            return;
        }
        if let Some(old) = self.workers.remove(&worker) {
            self.requeue(old.held);
        }
        self.workers.insert(worker, Worker { base: credit, load, held: HashSet::new(), last_seen: now, route });
    }

    /// Any message from a worker shows it is alive; a heartbeat also brings its load.
    /// Returns false for a worker we do not know (declared dead, or the broker
    /// restarted): it must say `Ready` again.
    pub fn seen(&mut self, worker: WorkerId, load: Option<Load>, now: Instant) -> bool {
        if self.banned.contains(&worker) {
            return true; // nothing to start over: it gets no work
        }
        match self.workers.get_mut(&worker) {
            Some(w) => {
                w.last_seen = now;
                if let Some(l) = load {
                    w.load = l;
                }
                true
            }
            None => false,
        }
    }

    /// An overloaded worker gives back `work`, not started. Returns whether the broker
    /// took it back (the worker may forget it); without load dispatch it is refused and
    /// the worker keeps it. An item the worker no longer held (queued again or done
    /// meanwhile) is confirmed too: it is in other hands.
    pub fn hand_back(&mut self, worker: WorkerId, work: WorkId) -> bool {
        if !self.load_aware {
            return false;
        }
        if self.workers.get_mut(&worker).is_some_and(|w| w.held.remove(&work)) {
            self.requeue([work]);
            self.stats.handed_back += 1;
        }
        true
    }

    /// How many more items `w` may be given.
    fn available(&self, w: &Worker) -> u32 {
        let cap = if self.load_aware { load::capacity(w.base, &w.load) } else { w.base };
        cap.saturating_sub(w.held.len() as u32)
    }

    /// A result. `Some` the first time for this item; `None` for a copy or an unknown id.
    pub fn result(&mut self, worker: WorkerId, work: WorkId, now: Instant) -> Option<Completed> {
        if self.banned.contains(&worker) {
            return None; // its copy was given to another worker
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = now;
            w.held.remove(&work);
        }
        match self.items.remove(&work) {
            Some(o) => {
                // If another worker holds a re-dispatched copy, its result comes back as a
                // duplicate later, and its credit returns then. An item not sent (since
                // it was re-queued) is still in the queue: take it out. Only then is the
                // queue scanned, so a result costs O(1) on the common path.
                if o.sent_at.is_none() {
                    self.queue.retain(|&q| q != work);
                }
                if let Some(g) = o.group {
                    if let Some(e) = self.groups.get_mut(&g) {
                        e.1 -= 1;
                        if e.1 == 0 {
                            self.groups.remove(&g);
                        }
                    }
                }
                self.stats.completed += 1;
                Some(Completed { item: o.item, worker })
            }
            None => {
                self.stats.duplicate_results += 1;
                None
            }
        }
    }

    /// Credit mode: the next (worker route, work id, item) to send, if a worker has credit
    /// and work is queued. The worker with the most credit (the idlest) goes first.
    pub fn next_credit(&mut self, now: Instant) -> Option<(Vec<u8>, WorkId, &Item)> {
        if self.queue.is_empty() {
            return None;
        }
        // The idlest worker first (under load dispatch, the one expected to finish a new
        // item first); for it, the first queued item no copy of which it had (a
        // replicated item's copies go to different workers; with too few workers the rest
        // waits).
        use std::cmp::Reverse;
        let mut order: Vec<(u64, Reverse<u32>, Reverse<WorkerId>)> = self
            .workers
            .iter()
            .map(|(&id, w)| (w, id, self.available(w)))
            .filter(|&(_, _, free)| free > 0)
            .map(|(w, id, free)| {
                let cost = if self.load_aware { load::finish_cost(w.held.len(), &w.load) } else { 0 };
                (cost, Reverse(free), Reverse(id))
            })
            .collect();
        order.sort_unstable();
        let (wid, pos) = order.iter().find_map(|&(_, _, Reverse(wid))| {
            let pos = self.queue.iter().position(|id| {
                let group = self.items.get(id).and_then(|o| o.group);
                group.is_none_or(|g| self.groups.get(&g).is_none_or(|(given, _)| !given.contains(&wid)))
            })?;
            Some((wid, pos))
        })?;
        let id = self.queue.remove(pos).expect("found above");
        if let Some(g) = self.items.get(&id).and_then(|o| o.group) {
            if let Some(e) = self.groups.get_mut(&g) {
                e.0.insert(wid);
            }
        }
        let w = self.workers.get_mut(&wid).expect("chosen above");
        w.held.insert(id);
        let o = self.items.get_mut(&id).expect("queued items are outstanding");
        o.holder = Some(wid);
        o.sent_at = Some(now);
        Some((w.route.clone(), id, &o.item))
    }

    /// Push mode: the next item to push to whichever worker the socket picks.
    pub fn next_push(&mut self, now: Instant) -> Option<(WorkId, &Item)> {
        let id = self.queue.pop_front()?;
        let o = self.items.get_mut(&id).expect("queued items are outstanding");
        o.sent_at = Some(now);
        Some((id, &o.item))
    }

    /// Puts back an item that could not be sent after all.
    pub fn unsend(&mut self, id: WorkId) {
        if let Some(o) = self.items.get_mut(&id) {
            if let Some(h) = o.holder.take() {
                if let Some(w) = self.workers.get_mut(&h) {
                    w.held.remove(&id);
                }
                if let Some(g) = o.group.and_then(|g| self.groups.get_mut(&g)) {
                    g.0.remove(&h);
                }
            }
            o.sent_at = None;
            self.queue.push_front(id);
        }
    }

    /// Declares silent workers dead and re-queues their items; in push mode also re-queues
    /// items sent longer than `redispatch` ago. Returns the workers declared dead.
    pub fn expire(&mut self, now: Instant, push_mode: bool) -> Vec<WorkerId> {
        let dead: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > self.liveness)
            .map(|(&id, _)| id)
            .collect();
        for id in &dead {
            let w = self.workers.remove(id).expect("listed above");
            self.stats.dead_workers += 1;
            self.requeue(w.held);
        }
        if push_mode {
            let late: Vec<WorkId> = self
                .items
                .iter()
                .filter(|(_, o)| o.sent_at.is_some_and(|t| now.duration_since(t) > self.redispatch))
                .map(|(&id, _)| id)
                .collect();
            self.requeue(late);
        }
        dead
    }

    fn requeue(&mut self, ids: impl IntoIterator<Item = WorkId>) {
        let mut ids: Vec<WorkId> = ids.into_iter().filter(|id| self.items.contains_key(id)).collect();
        ids.sort_unstable();
        for &id in ids.iter().rev() {
            let o = self.items.get_mut(&id).expect("filtered");
            // Its holder no longer has the copy (dead, restarted or banned): it may take a
            // copy of that item again (a banned one never gets work anyway).
            if let (Some(h), Some(g)) = (o.holder, o.group.and_then(|g| self.groups.get_mut(&g))) {
                g.0.remove(&h);
            }
            o.holder = None;
            o.sent_at = None;
            self.queue.push_front(id);
            self.stats.redispatched += 1;
        }
    }

    pub fn routes(&self) -> impl Iterator<Item = &[u8]> {
        self.workers.values().map(|w| w.route.as_slice())
    }

    /// Workers known alive.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn outstanding(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(batch: u32) -> Item {
        Item { job: 7, batch, values: vec![batch as i64].into(), replicas: 1 }
    }

    /// A replicated item's copies go to different workers; with fewer workers than
    /// copies the rest waits; a banned worker's copy goes to another, and its results and
    /// hellos are ignored.
    #[test]
    fn replicas_go_to_different_workers_and_a_banned_worker_gets_nothing() {
        let now = Instant::now();
        let mut d = Dispatcher::new(Duration::from_secs(5), Duration::from_secs(30));
        d.submit(1, 1, Item { replicas: 3, ..item(0) });
        d.ready(10, b"a".to_vec(), 5, Load::default(), now);
        d.ready(20, b"b".to_vec(), 5, Load::default(), now);
        let mut given = Vec::new();
        while let Some((route, id, _)) = d.next_credit(now) {
            given.push((route, id));
        }
        assert_eq!(given.len(), 2, "two workers, two copies; the third waits");
        assert_ne!(given[0].0, given[1].0);
        d.ready(30, b"c".to_vec(), 5, Load::default(), now);
        let (route, third, _) = d.next_credit(now).expect("the third worker takes the third copy");
        assert_eq!(route, b"c".to_vec());
        assert!(d.next_credit(now).is_none());
        // Worker 30 is banned: its copy is queued again, but 10 and 20 had copies: it waits
        // for a fourth worker.
        d.ban(30);
        assert!(d.next_credit(now).is_none());
        assert!(d.result(30, third, now).is_none(), "a banned worker's result is ignored");
        d.ready(30, b"c".to_vec(), 5, Load::default(), now);
        assert!(d.next_credit(now).is_none(), "a banned worker's hello gives it nothing");
        d.ready(40, b"d".to_vec(), 5, Load::default(), now);
        assert_eq!(d.next_credit(now).map(|(r, id, _)| (r, id)), Some((b"d".to_vec(), third)));
        for (w, (_, id)) in [10, 20].into_iter().zip(given) {
            assert!(d.result(w, id, now).is_some());
        }
        assert!(d.result(40, third, now).is_some());
        assert_eq!(d.outstanding(), 0);
        assert!(d.groups.is_empty());
    }

    /// Under load dispatch a worker sharing its CPU holds fewer items, the next item goes
    /// to whoever is expected to finish it first, and a hand-back queues the item again at
    /// the front (refused under plain credit: the worker keeps it).
    #[test]
    fn load_dispatch_follows_the_cpu_share_and_takes_items_back() {
        let t = Instant::now();
        let half = Load { cpu_share: 500, ..Load::default() };
        let mut b = d();
        for i in 0..6 {
            b.submit(1, i + 1, item(i as u32));
        }
        b.ready(10, b"busy".to_vec(), 2, Load::default(), t);
        b.ready(20, b"idle".to_vec(), 2, Load::default(), t);
        assert!(!b.hand_back(10, 1), "plain credit refuses hand-backs");
        b.load_aware = true;
        b.seen(10, Some(half), t);
        let given: Vec<(Vec<u8>, WorkId)> = std::iter::from_fn(|| b.next_credit(t).map(|(r, id, _)| (r, id))).collect();
        // idle first (cost 1), then busy and idle tie (one item's time each, one free
        // place each; the higher id wins), then busy, full at one item.
        assert_eq!(given, [(b"idle".to_vec(), 1), (b"idle".to_vec(), 2), (b"busy".to_vec(), 3)]);
        // Under plain credit the busy worker takes a second item ...
        b.load_aware = false;
        assert_eq!(b.next_credit(t).map(|(r, id, _)| (r, id)), Some((b"busy".to_vec(), 4)));
        // ... which, loaded, it hands back: first in line again, for the idle worker.
        b.load_aware = true;
        assert!(b.hand_back(10, 4));
        assert!(b.hand_back(10, 4), "a repeat is confirmed, and changes nothing");
        assert_eq!((b.stats.handed_back, b.queued()), (1, 3));
        assert!(b.next_credit(t).is_none(), "both full");
        assert!(b.result(20, 1, t).is_some());
        assert_eq!(b.next_credit(t).map(|(r, id, _)| (r, id)), Some((b"idle".to_vec(), 4)));
        assert!(b.result(10, 3, t).is_some());
        assert_eq!(b.next_credit(t).map(|(r, id, _)| (r, id)), Some((b"busy".to_vec(), 5)));
    }

    fn d() -> Dispatcher {
        Dispatcher::new(Duration::from_secs(3), Duration::from_secs(10))
    }

    /// Two brokers of a pair number their work apart: a worker's result for an item of
    /// the broker that died, sent to the one that took over, is not taken as the answer
    /// to another batch (the spool once wrote a batch's primes under another's number).
    #[test]
    fn a_result_for_another_brokers_item_is_not_taken_for_ours() {
        let t = Instant::now();
        let (mut old, mut new) = (d().numbering_from(1 << 40), d().numbering_from(2 << 40));
        for (b, i) in [(&mut old, 0), (&mut new, 1)] {
            b.submit(1, 1, item(i));
            b.ready(10, b"w".to_vec(), 1, Load::default(), t);
        }
        let (_, held, _) = old.next_credit(t).expect("the old broker gives its item");
        let (_, ours, _) = new.next_credit(t).expect("the new broker gives its item");
        assert!(new.result(10, held, t).is_none(), "the old broker's item is not ours");
        assert_eq!(new.result(10, ours, t).map(|c| c.item.batch), Some(1));
    }

    #[test]
    fn a_resent_request_is_acknowledged_but_not_queued_twice() {
        let mut b = d();
        assert_eq!(b.submit(1, 1, item(0)), Submitted::Queued(1));
        assert_eq!(b.submit(1, 1, item(0)), Submitted::Duplicate);
        assert_eq!(b.submit(2, 1, item(0)), Submitted::Queued(2), "another source, same seq");
        assert_eq!(b.submit(1, 2, item(1)), Submitted::Queued(3));
        assert_eq!(b.queued(), 3);
    }

    #[test]
    fn credit_goes_to_the_idlest_worker_and_returns_with_results() {
        let t = Instant::now();
        let mut b = d();
        for i in 0..4 {
            b.submit(1, i + 1, item(i as u32));
        }
        b.ready(10, b"a".to_vec(), 1, Load::default(), t);
        b.ready(20, b"b".to_vec(), 2, Load::default(), t);
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| b.next_credit(t).map(|(r, _, _)| r)).collect();
        assert_eq!(order, vec![b"b".to_vec(), b"b".to_vec(), b"a".to_vec()], "no credit left");
        assert_eq!(b.queued(), 1);
        let done = b.result(10, 3, t).unwrap();
        assert_eq!((done.item.batch, done.worker), (2, 10));
        assert_eq!(b.next_credit(t).unwrap().0, b"a".to_vec());
    }

    #[test]
    fn a_silent_worker_is_dead_and_its_items_go_to_another() {
        let t = Instant::now();
        let mut b = d();
        b.submit(1, 1, item(0));
        b.ready(10, b"a".to_vec(), 1, Load::default(), t);
        assert_eq!(b.next_credit(t).unwrap().1, 1);
        b.ready(20, b"b".to_vec(), 1, Load::default(), t);
        assert!(b.next_credit(t).is_none());
        b.seen(20, None, t + Duration::from_secs(2));
        assert!(b.expire(t + Duration::from_secs(2), false).is_empty());
        assert_eq!(b.expire(t + Duration::from_secs(4), false), vec![10]);
        assert_eq!(b.next_credit(t).unwrap().0, b"b".to_vec());
        // The dead worker was only slow: its late result still counts, once.
        assert!(b.result(10, 1, t).is_some());
        assert!(b.result(20, 1, t).is_none());
        assert_eq!(b.stats.duplicate_results, 1);
        assert!(!b.seen(10, None, t), "a worker declared dead must say Ready again");
    }

    #[test]
    fn push_mode_resends_items_not_done_in_time() {
        let t = Instant::now();
        let mut b = d();
        b.submit(1, 1, item(0));
        assert_eq!(b.next_push(t).unwrap().0, 1);
        assert!(b.next_push(t).is_none());
        b.expire(t + Duration::from_secs(5), true);
        assert!(b.next_push(t).is_none());
        b.expire(t + Duration::from_secs(11), true);
        assert_eq!(b.next_push(t).unwrap().0, 1);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Submit(u8),
        Ready(u8, u8),
        Send,
        Result(u8, u8),
        Tick(u8),
        Load(u8, u8),
        Back(u8),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u8..3).prop_map(Ev::Submit),
            (0u8..3, 0u8..3).prop_map(|(w, c)| Ev::Ready(w, c)),
            Just(Ev::Send),
            Just(Ev::Send),
            (0u8..3, 0u8..20).prop_map(|(w, i)| Ev::Result(w, i)),
            (0u8..5).prop_map(Ev::Tick),
            (0u8..3, 0u8..=10).prop_map(|(w, s)| Ev::Load(w, s)),
            (0u8..20).prop_map(Ev::Back),
        ]
    }

    proptest! {
        /// Whatever happens (resends, deaths, late results, loads changing, items handed
        /// back), every accepted item completes exactly once when live workers keep
        /// draining, and nothing is lost; in both credit and load dispatch.
        #[test]
        fn every_item_completes_exactly_once(events in prop::collection::vec(ev(), 0..80), load_aware: bool) {
            let mut b = d();
            b.load_aware = load_aware;
            let mut now = Instant::now();
            let mut seq = [0u64; 3];
            let mut accepted = HashSet::new();
            let mut completed = HashSet::new();
            let mut sent: Vec<(WorkerId, WorkId)> = Vec::new();
            for e in events {
                match e {
                    Ev::Submit(s) => {
                        seq[s as usize] += 1;
                        if let Submitted::Queued(id) = b.submit(s as u64, seq[s as usize], item(0)) {
                            accepted.insert(id);
                        }
                        // A resend of the same request is never queued.
                        prop_assert_eq!(b.submit(s as u64, seq[s as usize], item(0)), Submitted::Duplicate);
                    }
                    Ev::Ready(w, c) => b.ready(w as u64, vec![w], c as u32, Load::default(), now),
                    Ev::Load(w, share) => {
                        b.seen(w as u64, Some(Load { cpu_share: share as u16 * 100, ..Load::default() }), now);
                    }
                    Ev::Back(i) => {
                        if let Some(&(w, id)) = sent.get(i as usize) {
                            let taken = b.hand_back(w, id);
                            prop_assert_eq!(taken, load_aware, "hand-backs are taken under load dispatch only");
                        }
                    }
                    Ev::Send => {
                        if let Some((route, id, _)) = b.next_credit(now) {
                            sent.push((route[0] as u64, id));
                        }
                    }
                    Ev::Result(w, i) => {
                        if let Some(&(_, id)) = sent.get(i as usize) {
                            if b.result(w as u64, id, now).is_some() {
                                prop_assert!(completed.insert(id), "completed twice");
                            }
                        }
                    }
                    Ev::Tick(s) => {
                        now += Duration::from_secs(s as u64);
                        b.expire(now, false);
                    }
                }
            }
            // Drain: every worker falls silent, one fresh worker does everything left.
            now += Duration::from_secs(10);
            b.expire(now, false);
            b.ready(99, vec![99], 1, Load::default(), now);
            while let Some((_, id, _)) = b.next_credit(now) {
                prop_assert!(b.result(99, id, now).is_some());
                prop_assert!(completed.insert(id));
            }
            prop_assert_eq!(b.outstanding(), 0);
            prop_assert_eq!(completed, accepted);
        }
    }
}
