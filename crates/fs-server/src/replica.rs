//! Passive redundancy, the primary's side: standby servers that follow this one.
//!
//! A standby connects like a client and sends FOLLOW with its root handle (so a standby
//! of another export or another handle key is refused). From then on, every
//! non-idempotent call's reply reaches every standby's duplicate request cache *before*
//! the client sees it ([`Standbys::replicate`] waits for each standby's FOLLOWACK), so a
//! call retransmitted to the standby after a takeover gets its first answer, not
//! `EEXIST` or `ENOENT`. A beat every 200 ms tells the standbys the primary is alive.
//!
//! A standby that does not acknowledge within [`ACK_WAIT`] is dropped (its connection
//! closed) rather than stalling every client: it then sees its connection end, finds
//! the primary still answering, and follows again.

use crate::notices::Frame;
use fs_proto::{encode_frame, encode_payload, Reply, Request, Response};
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
    list: Mutex<Vec<Standby>>,
    /// Replicas are numbered in the order they are sent (under the list's lock).
    next: AtomicU64,
}

impl Standbys {
    /// A standby on connection `conn`: its frames go to `frames` (a pusher thread writes
    /// them); the answer to its FOLLOW (`xid`) goes first.
    pub fn add(&self, conn: u64, peer: String, xid: u64, frames: SyncSender<Frame>) {
        let acked = Arc::new(Acked::default());
        let mut list = crate::lock(&self.list);
        let next = self.next.load(Ordering::SeqCst) + 1;
        // Everything numbered before it counts as acknowledged: it never had those.
        acked.set(next - 1);
        let answer = Reply { xid, res: Ok(Response::Following { next }) };
        let _ = frames.try_send(Arc::new(encode_frame(&answer).expect("a small frame")));
        tracing::info!(%peer, "a standby follows");
        list.push(Standby { conn, peer, frames, acked });
    }

    pub fn remove(&self, conn: u64) {
        crate::lock(&self.list).retain(|s| s.conn != conn);
    }

    pub fn ack(&self, conn: u64, seq: u64) {
        if let Some(s) = crate::lock(&self.list).iter().find(|s| s.conn == conn) {
            s.acked.set(seq);
        }
    }

    pub fn is_empty(&self) -> bool {
        crate::lock(&self.list).is_empty()
    }

    /// Sends one non-idempotent call and its reply to every standby and waits until each
    /// has it (or is dropped).
    pub fn replicate(&self, client: u64, xid: u64, req: &Request, reply: &Reply) {
        let (seq, waits): (u64, Vec<(u64, Arc<Acked>, String)>) = {
            let mut list = crate::lock(&self.list);
            if list.is_empty() {
                return;
            }
            let seq = self.next.fetch_add(1, Ordering::SeqCst) + 1;
            let push = Reply {
                xid: 0,
                res: Ok(Response::Replica { seq, client, xid, req: encode_payload(req), reply: encode_payload(reply) }),
            };
            let frame: Frame = Arc::new(encode_frame(&push).expect("a replica is small"));
            // A standby whose queue is full is too far behind: dropped (its pusher ends
            // when the sender goes, and closes the connection).
            list.retain(|s| s.frames.try_send(frame.clone()).is_ok());
            (seq, list.iter().map(|s| (s.conn, s.acked.clone(), s.peer.clone())).collect())
        };
        for (conn, acked, peer) in waits {
            if !acked.wait(seq, ACK_WAIT) {
                tracing::warn!(%peer, "a standby did not acknowledge in {ACK_WAIT:?}; dropped");
                self.remove(conn);
            }
        }
    }

    /// The beat: the number the next replica will get, to every standby.
    pub fn beat(&self) {
        let mut list = crate::lock(&self.list);
        if list.is_empty() {
            return;
        }
        let next = self.next.load(Ordering::SeqCst) + 1;
        let frame: Frame =
            Arc::new(encode_frame(&Reply { xid: 0, res: Ok(Response::Following { next }) }).expect("small"));
        list.retain(|s| s.frames.try_send(frame.clone()).is_ok());
    }
}
