//! The client side of leases: what a mount (or the spool watcher) uses to take and give
//! back a lease through its `cluster node`. One background thread owns the ZeroMQ socket
//! (sockets are not thread-safe); callers on any thread talk to it through a channel.
//! The thread beats every 500 ms, so the node can tell a live client from a dead one.

use crate::mutex::raymond::Fence;
use crate::node::{decode, encode, endpoint, Wire};
use crate::util;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

enum Cmd {
    Acquire { key: Vec<u8>, wait: bool, reply: mpsc::Sender<Option<Fence>> },
    Release { key: Vec<u8> },
    Status { reply: mpsc::Sender<String>, wave: bool },
    Audit { reply: mpsc::Sender<Vec<crate::audit::Event>> },
}

#[derive(Clone)]
pub struct LeaseClient {
    tx: mpsc::Sender<Cmd>,
    /// Wakes the socket thread (an eventfd it polls beside the socket).
    wake: std::sync::Arc<Wake>,
    pub addr: String,
}

struct Wake(libc::c_int);

impl Wake {
    fn new() -> std::io::Result<Wake> {
        // SAFETY: eventfd has no memory preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Wake(fd))
    }

    fn ring(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.0, (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from our eventfd.
        unsafe { libc::read(self.0, (&mut v as *mut u64).cast(), 8) };
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

impl LeaseClient {
    pub fn connect(addr: &str) -> anyhow::Result<LeaseClient> {
        let ep = endpoint(addr)?;
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let ep2 = ep.clone();
        let wake = std::sync::Arc::new(Wake::new()?);
        let wake2 = wake.clone();
        std::thread::Builder::new().name("lease-client".into()).spawn(move || {
            let ctx = zmq::Context::new();
            let setup = (|| -> anyhow::Result<zmq::Socket> {
                let s = util::socket(&ctx, zmq::DEALER)?;
                s.set_identity(format!("c{:016x}", util::random_u64()).as_bytes())?;
                crate::curve::connect(&s, &ep2).map_err(|e| util::sock_err("connect to", &ep2, e))?;
                Ok(s)
            })();
            match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(s, rx, &wake2);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        ready_rx.recv()??;
        Ok(LeaseClient { tx, wake, addr: addr.to_string() })
    }

    /// Takes the lease on `key`: waits for it (`wait`), or answers at once. Returns the
    /// grant's fencing number, or None if busy (a try) or the client thread is gone.
    pub fn acquire(&self, key: &[u8], wait: bool) -> Option<Fence> {
        self.acquire_unless(key, wait, || false)
    }

    /// As [`LeaseClient::acquire`], but gives up (None) as soon as `cancelled()` says so
    /// (checked every 100 ms); a grant that comes later is given straight back.
    pub fn acquire_unless(&self, key: &[u8], wait: bool, cancelled: impl Fn() -> bool) -> Option<Fence> {
        let (reply, rx) = mpsc::channel();
        self.tx.send(Cmd::Acquire { key: key.to_vec(), wait, reply }).ok()?;
        self.wake.ring();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(f) => return f,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) if cancelled() => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    pub fn release(&self, key: &[u8]) {
        let _ = self.tx.send(Cmd::Release { key: key.to_vec() });
        self.wake.ring();
    }

    /// The node's log of grants and releases (the newest, up to what one message
    /// carries), or None if it does not answer within `timeout`.
    pub fn audit_log(&self, timeout: Duration) -> Option<Vec<crate::audit::Event>> {
        let (reply, rx) = mpsc::channel();
        self.tx.send(Cmd::Audit { reply }).ok()?;
        self.wake.ring();
        rx.recv_timeout(timeout).ok()
    }

    /// The node's status text, or None if it does not answer within `timeout`.
    pub fn status(&self, timeout: Duration) -> Option<String> {
        let (reply, rx) = mpsc::channel();
        self.tx.send(Cmd::Status { reply, wave: false }).ok()?;
        self.wake.ring();
        rx.recv_timeout(timeout).ok()
    }

    /// The whole cluster's state, gathered by a wave the node starts (`cluster status`),
    /// or None if no answer comes within `timeout`.
    pub fn cluster_status(&self, timeout: Duration) -> Option<String> {
        let (reply, rx) = mpsc::channel();
        self.tx.send(Cmd::Status { reply, wave: true }).ok()?;
        self.wake.ring();
        rx.recv_timeout(timeout).ok()
    }
}

fn serve(s: zmq::Socket, rx: mpsc::Receiver<Cmd>, wake: &Wake) {
    let mut acquiring: HashMap<Vec<u8>, Vec<mpsc::Sender<Option<Fence>>>> = HashMap::new();
    let mut status: Vec<mpsc::Sender<String>> = Vec::new();
    let mut audits: Vec<mpsc::Sender<Vec<crate::audit::Event>>> = Vec::new();
    let mut last_beat = Instant::now() - Duration::from_secs(1);
    loop {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Acquire { key, wait, reply }) => {
                    acquiring.entry(key.clone()).or_default().push(reply);
                    let _ = s.send(encode(&Wire::Acquire { key, wait }), 0);
                }
                Ok(Cmd::Release { key }) => {
                    let _ = s.send(encode(&Wire::Release { key }), 0);
                }
                Ok(Cmd::Status { reply, wave }) => {
                    status.push(reply);
                    let _ = s.send(encode(if wave { &Wire::StatusWave } else { &Wire::Status }), 0);
                }
                Ok(Cmd::Audit { reply }) => {
                    audits.push(reply);
                    let _ = s.send(encode(&Wire::Audit), 0);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                // Every handle dropped: the mount is gone; so are we.
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if last_beat.elapsed() >= Duration::from_millis(500) {
            let _ = s.send(encode(&Wire::ClientBeat), zmq::DONTWAIT);
            last_beat = Instant::now();
        }
        let mut items = [s.as_poll_item(zmq::POLLIN), zmq::PollItem::from_fd(wake.0, zmq::POLLIN)];
        if zmq::poll(&mut items, 100).unwrap_or(0) == 0 {
            continue;
        }
        if items[1].is_readable() {
            wake.clear();
        }
        while let Ok(b) = s.recv_bytes(zmq::DONTWAIT) {
            match decode(&b) {
                Ok(Wire::Granted { key, fence }) => {
                    let waiter = acquiring.get_mut(&key).filter(|w| !w.is_empty()).map(|w| w.remove(0));
                    // Nobody waits for it any more (gone, or gave up): give it back.
                    if waiter.is_none_or(|w| w.send(Some(fence)).is_err()) {
                        let _ = s.send(encode(&Wire::Release { key }), 0);
                    }
                }
                Ok(Wire::Busy { key }) => {
                    if let Some(w) = acquiring.get_mut(&key).filter(|w| !w.is_empty()) {
                        let _ = w.remove(0).send(None);
                    }
                }
                Ok(Wire::StatusText { text }) => {
                    for r in status.drain(..) {
                        let _ = r.send(text.clone());
                    }
                }
                Ok(Wire::AuditLog { events }) => {
                    for r in audits.drain(..) {
                        let _ = r.send(events.clone());
                    }
                }
                _ => {}
            }
        }
    }
}
