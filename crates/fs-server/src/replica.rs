//! Passive redundancy, the primary's side: standby servers that follow this one.
//!
//! A standby connects like a client and sends FOLLOW with its root handle (so a standby
//! of another export or another handle key is refused). From then on, every
//! non-idempotent call's reply reaches every standby's duplicate request cache *before*
//! the client sees it ([`Standbys::replicate`] waits for each standby's FOLLOWACK), so a
//! call retransmitted to the standby after a takeover gets its first answer, not
//! `EEXIST` or `ENOENT`. A beat every 200 ms tells the standbys the primary is alive.
//!
//! Change notices travel the same way (the notes' k+1 sequencers): every notice reaches
//! the standbys before it is pushed to any mount ([`crate::notices::Hub`] holds it until
//! [`Standbys::watermark`] passes it), and the reply to a call whose notice matters
//! for durability (COMMIT, a stable WRITE, every non-idempotent call) waits for it; so a
//! standby that takes over has every notice a mount has seen and every notice of a
//! change a client was told is done, and numbers on from there under the same
//! instance: mounts keep their caches across the takeover.
//!
//! A standby that does not acknowledge within [`ACK_WAIT`] is dropped (its connection
//! closed) rather than stalling every client: it then sees its connection end, finds
//! the primary still answering, and follows again.

use crate::notices::Frame;
use fs_proto::{encode_frame, Notice, ReplicaCall, Reply, Response};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a reply waits for a standby's acknowledgement before that standby is dropped.
pub const ACK_WAIT: Duration = Duration::from_secs(2);
/// The primary's beat to its standbys.
pub const BEAT: Duration = Duration::from_millis(200);

/// The highest replica a standby has acknowledged, with a wake-up.
#[derive(Default)]
pub struct Acked {
    seq: Mutex<u64>,
    moved: Condvar,
}

impl Acked {
    pub fn set(&self, seq: u64) {
        let mut s = crate::lock(&self.seq);
        *s = (*s).max(seq);
        self.moved.notify_all();
    }

    fn get(&self) -> u64 {
        *crate::lock(&self.seq)
    }

    /// Waits until `seq` is acknowledged; false after `limit`.
    fn wait(&self, seq: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut s = crate::lock(&self.seq);
        while *s < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.moved.wait_timeout(s, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        true
    }
}

struct Standby {
    conn: u64,
    peer: String,
    frames: SyncSender<Frame>,
    acked: Arc<Acked>,
}

/// The standbys following this server.
#[derive(Default)]
pub struct Standbys {
    list: Mutex<List>,
    /// Replicas are numbered in the order they are sent (under the list's lock).
    next: AtomicU64,
}

#[derive(Default)]
struct List {
    standbys: Vec<Standby>,
    /// Replicas carrying a notice and not yet acknowledged by every standby: (replica,
    /// notice, when sent), oldest first.
    notices: VecDeque<(u64, u64, Instant)>,
    /// The highest notice every standby has (or that needs no standby).
    released: u64,
}

impl List {
    /// Moves the notice watermark past what every standby acknowledged; returns it.
    fn settle(&mut self) -> u64 {
        let acked = self.standbys.iter().map(|s| s.acked.get()).min();
        while let Some(&(replica, notice, _)) = self.notices.front() {
            if acked.is_some_and(|a| a < replica) {
                break;
            }
            self.released = self.released.max(notice);
            self.notices.pop_front();
        }
        if self.standbys.is_empty() {
            u64::MAX
        } else {
            self.released
        }
    }
}

/// What [`Standbys::send`] sent: its replica number and whom to wait for.
pub struct Sent {
    seq: u64,
    waits: Vec<(u64, Arc<Acked>, String)>,
}

impl Standbys {
    /// A standby on connection `conn`: its frames go to `frames` (a pusher thread writes
    /// them); the answer to its FOLLOW (`xid`) goes first, with the sequencer's
    /// `instance` and next notice number `notice_next` (call it under the sequencer's
    /// lock, so that exactly the notices numbered from `notice_next` on reach it).
    pub fn add(&self, conn: u64, peer: String, xid: u64, frames: SyncSender<Frame>, instance: u64, notice_next: u64) {
        let acked = Arc::new(Acked::default());
        let mut list = crate::lock(&self.list);
        let next = self.next.load(Ordering::SeqCst) + 1;
        // Everything numbered before it counts as acknowledged: it never had those.
        acked.set(next - 1);
        let answer = Reply { xid, res: Ok(Response::Following { next, instance, notice_next }) };
        let _ = frames.try_send(Arc::new(encode_frame(&answer).expect("a small frame")));
        tracing::info!(%peer, "a standby follows");
        list.standbys.push(Standby { conn, peer, frames, acked });
    }

    /// A standby's connection ended. Returns the notice watermark.
    pub fn remove(&self, conn: u64) -> u64 {
        let mut list = crate::lock(&self.list);
        list.standbys.retain(|s| s.conn != conn);
        list.settle()
    }

    /// A standby has every replica up to `seq`. Returns the notice watermark: every
    /// notice up to it may be pushed to mounts.
    pub fn ack(&self, conn: u64, seq: u64) -> u64 {
        let mut list = crate::lock(&self.list);
        if let Some(s) = list.standbys.iter().find(|s| s.conn == conn) {
            s.acked.set(seq);
        }
        list.settle()
    }

    /// The highest notice every standby has (`u64::MAX` without standbys).
    pub fn watermark(&self) -> u64 {
        crate::lock(&self.list).settle()
    }

    pub fn is_empty(&self) -> bool {
        crate::lock(&self.list).standbys.is_empty()
    }

    /// Sends a non-idempotent call with its reply, and the notice of what a call changed,
    /// to every standby. `None` without standbys. Notices must be sent in number order
    /// (the caller holds the sequencer's lock).
    pub fn send(&self, call: Option<ReplicaCall>, notice: Option<Notice>) -> Option<Sent> {
        let mut list = crate::lock(&self.list);
        if list.standbys.is_empty() {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let notice_seq = notice.as_ref().map(|n| n.seq);
        let push = Reply { xid: 0, res: Ok(Response::Replica { seq, call, notice }) };
        let frame: Frame = Arc::new(encode_frame(&push).expect("a replica is small"));
        // A standby whose queue is full is too far behind: dropped (its pusher ends
        // when the sender goes, and closes the connection).
        list.standbys.retain(|s| s.frames.try_send(frame.clone()).is_ok());
        if let Some(n) = notice_seq {
            list.notices.push_back((seq, n, Instant::now()));
        }
        let waits = list.standbys.iter().map(|s| (s.conn, s.acked.clone(), s.peer.clone())).collect();
        Some(Sent { seq, waits })
    }

    /// Waits until every standby has what [`Standbys::send`] sent (or is dropped).
    /// Returns the notice watermark.
    pub fn wait(&self, sent: Sent) -> u64 {
        for (conn, acked, peer) in sent.waits {
            if !acked.wait(sent.seq, ACK_WAIT) {
                tracing::warn!(%peer, "a standby did not acknowledge in {ACK_WAIT:?}; dropped");
                self.remove(conn);
            }
        }
        self.watermark()
    }

    /// The beat: the number the next replica will get and the sequencer's state, to
    /// every standby. A standby that left a notice unacknowledged for [`ACK_WAIT`] is
    /// dropped (notices wait for it). Returns the notice watermark.
    pub fn beat(&self, instance: u64, notice_next: u64) -> u64 {
        let mut list = crate::lock(&self.list);
        if list.standbys.is_empty() {
            return list.settle();
        }
        if let Some(&(replica, _, sent)) = list.notices.front() {
            if sent.elapsed() > ACK_WAIT {
                list.standbys.retain(|s| {
                    let keep = s.acked.get() >= replica;
                    if !keep {
                        tracing::warn!(peer = %s.peer, "a standby did not acknowledge a notice in {ACK_WAIT:?}; dropped");
                    }
                    keep
                });
            }
        }
        let next = self.next.load(Ordering::SeqCst) + 1;
        let frame: Frame = Arc::new(
            encode_frame(&Reply { xid: 0, res: Ok(Response::Following { next, instance, notice_next }) })
                .expect("small"),
        );
        list.standbys.retain(|s| s.frames.try_send(frame.clone()).is_ok());
        list.settle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(seq: u64) -> Notice {
        Notice { seq, client: 1, changes: Vec::new() }
    }

    /// The notice watermark: what every standby has acknowledged; without standbys,
    /// everything; a standby that leaves no longer holds it back.
    #[test]
    fn notices_wait_for_every_standby() {
        let s = Standbys::default();
        assert_eq!(s.watermark(), u64::MAX);
        let (a, _ra) = std::sync::mpsc::sync_channel(16);
        let (b, _rb) = std::sync::mpsc::sync_channel(16);
        s.add(1, "a".into(), 1, a, 7, 10);
        s.add(2, "b".into(), 1, b, 7, 10);
        let first = s.send(None, Some(notice(10))).unwrap();
        let second = s.send(None, Some(notice(11))).unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(s.watermark(), 0);
        assert_eq!(s.ack(1, 2), 0, "b has neither");
        assert_eq!(s.ack(2, 1), 10);
        assert_eq!(s.remove(2), 11, "b left: a has both");
        assert_eq!(s.remove(1), u64::MAX);
    }
}
