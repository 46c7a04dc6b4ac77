//! Listening and connections: frames in, replies out, operations off the reactor.
//!
//! The tokio reactor only accepts. Each connection then gets a reader thread of its own
//! (blocking I/O): it checks each frame's length before reading it, decodes it on the
//! spot (a malformed frame closes that connection, logged, and nothing else), and runs
//! the call. While other calls of the connection are running, or for data calls (READ,
//! WRITE, COMMIT, READDIR), the call goes to the blocking pool, so many calls per
//! connection run at once and replies go out in whatever order they finish, matched by
//! xid; a lone metadata call runs right on the reader thread. Whoever finishes a call
//! writes its reply to the socket itself, under a lock. Both choices save thread
//! wake-ups, which are most of a round trip's cost on small machines (measured: a
//! writer task and a hand-off per call doubled the latency of a LOOKUP). A bound on the
//! calls in flight per connection is the back-pressure on a client that sends faster
//! than we answer.
//!
//! A connection that subscribes to change notices (SUBSCRIBE) gets a pusher thread: it
//! writes the subscription's answer and then every notice from the connection's queue
//! ([`crate::notices::Hub`]), under the same lock as replies. When the hub drops a
//! subscriber that fell behind, the pusher closes the connection.

use crate::server::Server;
use fs_proto::{decode, encode_reply, frame_len, Addr, Call, Errno, Reply, Request};
use std::io::{self, Read, Write};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

/// Calls one connection may have running at once.
const MAX_IN_FLIGHT: usize = 128;
const IO_BUF: usize = 256 * 1024;

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {0}: address already in use")]
    InUse(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, io::Error),
    #[error("cannot listen on {0}: {1}")]
    Other(String, io::Error),
}

impl Listener {
    /// Binds `addr`. A Unix socket path left behind by a dead server is replaced; one
    /// that a live server answers on is "in use".
    pub async fn bind(addr: &Addr) -> Result<Listener, BindError> {
        let shown = addr.to_string();
        let classify = |e: io::Error| match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse(shown.clone()),
            _ => BindError::Other(shown.clone(), e),
        };
        match addr {
            Addr::Tcp { host, port } => {
                let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| BindError::Resolve(shown.clone(), e))?
                    .collect();
                let first = addrs.first().ok_or_else(|| {
                    BindError::Resolve(shown.clone(), io::Error::new(io::ErrorKind::NotFound, "no address"))
                })?;
                Ok(Listener::Tcp(TcpListener::bind(first).await.map_err(classify)?))
            }
            Addr::Unix(path) => {
                if path.exists() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(BindError::InUse(shown));
                    }
                    use std::os::unix::fs::FileTypeExt;
                    match std::fs::symlink_metadata(path) {
                        Ok(m) if m.file_type().is_socket() => {
                            let _ = std::fs::remove_file(path);
                        }
                        _ => return Err(BindError::Other(shown, io::Error::from_raw_os_error(libc::EEXIST))),
                    }
                }
                Ok(Listener::Unix(UnixListener::bind(path).map_err(classify)?, path.clone()))
            }
        }
    }

    /// The bound address as users type it (with the real port for `:0`).
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => p.display().to_string(),
        }
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn serve(self, server: Arc<Server>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // The subscribers' beat (see `Hub::beat`).
        let beats = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    every.tick().await;
                    server.notices.beat();
                }
            })
        };
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.accept(server.clone()) => if let Err(e) = r {
                    tracing::warn!("accept failed: {e}");
                    // Out of descriptors, say: don't spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                },
            }
        }
        beats.abort();
        if let Listener::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn accept(&self, server: Arc<Server>) -> io::Result<()> {
        let rt = tokio::runtime::Handle::current();
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Without it, request/reply traffic stalls on delayed ACKs.
                s.set_nodelay(true)?;
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                let w = s.try_clone()?;
                let c = s.try_clone()?;
                let close: Close = Arc::new(move || {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
                std::thread::Builder::new()
                    .name("fs-conn".into())
                    .spawn(move || connection(s, w, close, server, rt, peer.to_string()))?;
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                let w = s.try_clone()?;
                let c = s.try_clone()?;
                let close: Close = Arc::new(move || {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
                std::thread::Builder::new()
                    .name("fs-conn".into())
                    .spawn(move || connection(s, w, close, server, rt, "unix".to_string()))?;
            }
        }
        Ok(())
    }
}

/// Shuts a connection down (both ways), from any thread.
type Close = Arc<dyn Fn() + Send + Sync>;

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Calls in flight on one connection, with a wake-up for the reader when one ends.
struct InFlight {
    n: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl InFlight {
    fn acquire(&self) -> usize {
        let mut n = crate::lock(&self.n);
        while *n >= MAX_IN_FLIGHT {
            n = self.freed.wait(n).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *n += 1;
        *n - 1
    }

    fn release(&self) {
        *crate::lock(&self.n) -= 1;
        self.freed.notify_one();
    }
}

/// The write side of a connection, shared by whoever finishes a call.
struct Replies<W> {
    w: std::sync::Mutex<W>,
}

impl<W: Write> Replies<W> {
    fn send(&self, reply: Reply) {
        let xid = reply.xid;
        match encode_reply(reply) {
            Ok(f) => {
                let mut w = crate::lock(&self.w);
                // A failed write means the client is gone; its reader sees that too.
                let _ = w.write_all(&f.head).and_then(|_| w.write_all(&f.tail));
            }
            Err(e) => tracing::error!(xid, "reply not sent: {e}"),
        }
    }

    /// Writes a frame made elsewhere (a pushed notice); false when the client is gone.
    fn send_frame(&self, frame: &[u8]) -> bool {
        crate::lock(&self.w).write_all(frame).is_ok()
    }
}

/// Writes a subscriber's queue to its connection until the queue closes (the connection
/// ended, or the hub dropped the subscriber: then the connection is closed too).
fn pusher<W: Write + Send + 'static>(
    replies: Arc<Replies<W>>,
    close: Close,
) -> io::Result<std::sync::mpsc::SyncSender<crate::notices::Frame>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<crate::notices::Frame>(crate::notices::QUEUE);
    std::thread::Builder::new().name("fs-push".into()).spawn(move || {
        for frame in rx {
            if !replies.send_frame(&frame) {
                break;
            }
        }
        close();
    })?;
    Ok(tx)
}

fn answer(server: &Server, call: Call) -> Option<Reply> {
    let (xid, op, started) = (call.xid, call.req.name(), std::time::Instant::now());
    let reply = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.handle_call(call))) {
        Ok(r) => r,
        Err(_) => Some(Reply { xid, res: Err(Errno::SERVERFAULT) }),
    };
    if let Some(r) = &reply {
        server.metrics.observe(op, started.elapsed(), r.res.is_ok());
    }
    reply
}

/// Data calls may wait on the disk for long; they never run on the reader thread.
fn is_data(req: &Request) -> bool {
    matches!(
        req,
        Request::Read { .. }
            | Request::Write { .. }
            | Request::Commit { .. }
            | Request::ReadDir { .. }
            | Request::ReadDirPlus { .. }
    )
}

/// Serves one connection on the calling (blocking) thread until it closes.
fn connection<S>(stream: S, write_half: S, close: Close, server: Arc<Server>, rt: tokio::runtime::Handle, peer: String)
where
    S: Read + Write + Send + 'static,
{
    tracing::debug!(%peer, "connected");
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut subscribed = false;
    server.metrics.connections.inc();
    let replies = Arc::new(Replies { w: std::sync::Mutex::new(write_half) });
    let inflight = Arc::new(InFlight { n: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() });
    let mut r = std::io::BufReader::with_capacity(IO_BUF, stream);
    let why = loop {
        let mut header = [0u8; 4];
        match r.read_exact(&mut header) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break None,
            Err(e) => break Some(e.to_string()),
        }
        let len = match frame_len(header) {
            Ok(n) => n,
            Err(e) => break Some(e.to_string()),
        };
        let mut payload = vec![0u8; len];
        if let Err(e) = r.read_exact(&mut payload) {
            break Some(format!("truncated frame: {e}"));
        }
        let call: Call = match decode(&payload) {
            Ok(c) => c,
            Err(e) => break Some(format!("malformed frame: {e}")),
        };
        drop(payload);
        if let Request::Subscribe { after } = call.req {
            if subscribed {
                replies.send(Reply { xid: call.xid, res: Err(Errno::EINVAL) });
                continue;
            }
            match pusher(replies.clone(), close.clone()) {
                Ok(tx) => {
                    server.notices.subscribe(conn, call.xid, after, tx);
                    subscribed = true;
                }
                Err(e) => {
                    tracing::error!("no thread for a subscriber: {e}");
                    replies.send(Reply { xid: call.xid, res: Err(Errno::EAGAIN) });
                }
            }
            continue;
        }
        let others = inflight.acquire();
        if others == 0 && !is_data(&call.req) {
            if let Some(reply) = answer(&server, call) {
                replies.send(reply);
            }
            inflight.release();
            continue;
        }
        let (server, replies, inflight) = (server.clone(), replies.clone(), inflight.clone());
        rt.spawn_blocking(move || {
            if let Some(reply) = answer(&server, call) {
                replies.send(reply);
            }
            inflight.release();
        });
    };
    if subscribed {
        server.notices.unsubscribe(conn);
    }
    server.metrics.connections.dec();
    match why {
        None => tracing::debug!(%peer, "disconnected"),
        Some(why) => tracing::warn!(%peer, "closing connection: {why}"),
    }
}
