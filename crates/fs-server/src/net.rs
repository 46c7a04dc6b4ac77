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
//! than we answer. One order is kept among them: a SETATTR waits for the WRITEs of its
//! file that arrived before it on the connection, and runs on the thread of the last of
//! them ([`Writes`]), so a mount sends a file's times right behind its last data.
//!
//! A connection that subscribes to change notices (SUBSCRIBE) gets a pusher thread: it
//! writes the subscription's answer and then every notice from the connection's queue
//! ([`crate::notices::Hub`]), under the same lock as replies. When the hub drops a
//! subscriber that fell behind, the pusher closes the connection.

use crate::notices::{Queue, WeakQueue};
use crate::server::Server;
use fs_proto::{decode, encode_reply, frame_len, Addr, Call, Errno, FileHandle, Reply, Request};
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
        // The subscribers' beat (see `Hub::beat`), and the standbys' (`Standbys::beat`).
        let beats = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(crate::replica::BEAT);
                let per_second = (1000 / crate::replica::BEAT.as_millis()).max(1) as u64;
                for n in 0u64.. {
                    every.tick().await;
                    server.beat_standbys();
                    if n % per_second == 0 {
                        server.notices.beat();
                    }
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
                std::thread::Builder::new()
                    .name("fs-conn".into())
                    .spawn(move || open(s, server, rt, peer.to_string(), None))?;
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let cred = s.peer_cred()?;
                let peer = match cred.pid() {
                    Some(pid) => format!("unix:pid {pid} uid {}", cred.uid()),
                    None => format!("unix:uid {}", cred.uid()),
                };
                let cred = PeerCred::of(cred.pid(), cred.uid(), cred.gid());
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                std::thread::Builder::new()
                    .name("fs-conn".into())
                    .spawn(move || open(s, server, rt, peer, Some(cred)))?;
            }
        }
        Ok(())
    }
}

/// Who is at the other end of a Unix socket (`SO_PEERCRED`) and the groups it is in.
/// Root may call as anyone (its mounts serve every user); anyone else only as itself.
#[derive(Clone, Debug)]
pub struct PeerCred {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl PeerCred {
    fn of(pid: Option<i32>, uid: u32, gid: u32) -> PeerCred {
        // Supplementary groups are not in SO_PEERCRED; the process's status has them.
        let groups = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<u32>>())
            })
            .unwrap_or_default();
        PeerCred { uid, gid, groups }
    }

    pub fn allows(&self, c: &fs_proto::Cred) -> bool {
        let member = |g: &u32| *g == self.gid || self.groups.contains(g);
        self.uid == 0 || (c.uid == self.uid && member(&c.gid) && c.groups.iter().all(member))
    }
}

/// A connected stream of either kind, as the connection thread needs it.
trait Sock: Read + Write + Send + Sync + Sized + 'static {
    fn clone_sock(&self) -> io::Result<Self>;
    fn shut(&self);
    fn read_timeout(&self, t: Option<std::time::Duration>);
}

/// The two stream types have the same methods under the same names, not a trait.
macro_rules! sock {
    ($t:ty) => {
        impl Sock for $t {
            fn clone_sock(&self) -> io::Result<Self> {
                self.try_clone()
            }
            fn shut(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
            fn read_timeout(&self, t: Option<std::time::Duration>) {
                let _ = self.set_read_timeout(t);
            }
        }
    };
}
sock!(std::net::TcpStream);
sock!(std::os::unix::net::UnixStream);

/// How long a client has to finish the key handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Reader = Box<dyn Read + Send>;
type Writer = Box<dyn Write + Send>;

/// Sets a new connection up (the key handshake, when the server has a key) and serves it.
fn open<S: Sock>(mut s: S, server: Arc<Server>, rt: tokio::runtime::Handle, peer: String, cred: Option<PeerCred>) {
    let (w, c) = match (s.clone_sock(), s.clone_sock()) {
        (Ok(w), Ok(c)) => (w, c),
        (Err(e), _) | (_, Err(e)) => return tracing::error!(%peer, "cannot use the connection: {e}"),
    };
    let close: Close = Arc::new(move || c.shut());
    let (reader, writer): (Reader, Writer) = match &server.key {
        None => (Box::new(std::io::BufReader::with_capacity(IO_BUF, s)), Box::new(w)),
        Some(key) => {
            s.read_timeout(Some(HANDSHAKE_TIMEOUT));
            match fs_proto::secure::respond(&mut s, key) {
                Ok((session, protection)) => {
                    s.read_timeout(None);
                    tracing::debug!(%peer, "key handshake done, {}", protection.name());
                    (
                        Box::new(session.reader(std::io::BufReader::with_capacity(IO_BUF, s))),
                        Box::new(session.writer(w)),
                    )
                }
                Err(e) => {
                    server.metrics.refused.inc();
                    if let fs_proto::secure::HandshakeError::NoHandshake(head) = e {
                        tracing::warn!(%peer, "refused: no key handshake (a client without -o key=FILE?)");
                        refuse_plain(&mut s, head);
                    } else {
                        tracing::warn!(%peer, "refused: {e}");
                    }
                    return;
                }
            }
        }
    };
    connection(reader, writer, close, server, rt, peer, cred)
}

/// Answers the plain call of a client that did not run the key handshake with `AUTH`,
/// so its mount can say why, then the connection closes.
fn refuse_plain<S: Read + Write>(s: &mut S, head: [u8; 4]) {
    let Ok(len) = frame_len(head) else { return };
    let mut payload = vec![0u8; len];
    if s.read_exact(&mut payload).is_err() {
        return;
    }
    if let Ok(call) = decode::<Call>(&payload) {
        if let Ok(f) = encode_reply(Reply { xid: call.xid, res: Err(Errno::AUTH) }) {
            let _ = s.write_all(&f.head);
        }
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

/// WRITEs of each file still running for one connection, and the SETATTRs of the file
/// that arrived behind them. A SETATTR waits for the WRITEs of its file that came before
/// it on the same connection, and then runs on the thread of the last of them (no
/// thread to wake), so a mount may send a file's last data and the times `tar` or
/// `touch` sets right behind it without waiting for the WRITE's reply: the times land
/// last, as they were sent.
#[derive(Default)]
struct Writes {
    running: std::sync::Mutex<std::collections::HashMap<FileHandle, Running>>,
}

#[derive(Default)]
struct Running {
    writes: usize,
    then: Vec<Box<dyn FnOnce() + Send>>,
}

impl Writes {
    fn begin(&self, fh: &FileHandle) {
        crate::lock(&self.running).entry(fh.clone()).or_default().writes += 1;
    }

    /// A WRITE of `fh` is done: the last one runs what waited for it.
    fn end(&self, fh: &FileHandle) {
        let then = {
            let mut running = crate::lock(&self.running);
            let Some(r) = running.get_mut(fh) else { return };
            r.writes -= 1;
            if r.writes > 0 {
                return;
            }
            running.remove(fh).map(|r| r.then).unwrap_or_default()
        };
        for f in then {
            f();
        }
    }

    /// Runs `f` after the WRITEs of `fh` now running, or hands it back when none is.
    fn after(&self, fh: &FileHandle, f: Box<dyn FnOnce() + Send>) -> Option<Box<dyn FnOnce() + Send>> {
        match crate::lock(&self.running).get_mut(fh) {
            Some(r) => {
                r.then.push(f);
                None
            }
            None => Some(f),
        }
    }
}

/// The write side of a connection, shared by whoever finishes a call.
struct Replies<W> {
    w: std::sync::Mutex<W>,
    /// The connection's pushes, once it subscribed (not kept open by this: see [`Queue`]).
    pushes: std::sync::OnceLock<WeakQueue>,
}

impl<W: Write> Replies<W> {
    fn send(&self, reply: Reply) {
        self.send_after_pushes(reply, false)
    }

    /// With `ordered` (a reading of names), the reply goes behind the notices pushed
    /// before it (the server's barrier made sure those include every change it may
    /// show): a mount never learns of a change from a reply before its notice.
    fn send_after_pushes(&self, reply: Reply, ordered: bool) {
        let xid = reply.xid;
        match encode_reply(reply) {
            Ok(f) => match self.pushes.get().and_then(WeakQueue::upgrade).filter(|q| ordered && !q.drained()) {
                Some(q) => {
                    let mut frame = f.head;
                    frame.extend_from_slice(&f.tail);
                    q.send(Arc::new(frame));
                }
                None => {
                    let mut w = crate::lock(&self.w);
                    // A failed write means the client is gone; its reader sees that too.
                    let _ = w.write_all(&f.head).and_then(|_| w.write_all(&f.tail));
                }
            },
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
fn pusher<W: Write + Send + 'static>(replies: Arc<Replies<W>>, close: Close) -> io::Result<Queue> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<crate::notices::Frame>(crate::notices::QUEUE);
    let queue = Queue::from(tx);
    let written = queue.written();
    std::thread::Builder::new().name("fs-push".into()).spawn(move || {
        for frame in rx {
            if !replies.send_frame(&frame) {
                break;
            }
            written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        close();
    })?;
    Ok(queue)
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

/// Data calls may wait on the disk for long, and changes of attributes on other mounts
/// applying their notice ([`crate::notices::Hub::await_applied`], whose acknowledgements
/// the reader thread takes in); they never run on the reader thread, but for a lone
/// small READ ([`is_lone_read`]), which waits for no mount.
fn is_data(req: &Request) -> bool {
    matches!(
        req,
        Request::Read { .. }
            | Request::Write { .. }
            | Request::Commit { .. }
            | Request::ReadDir { .. }
            | Request::ReadDirPlus { .. }
            | Request::SetAttr { .. }
            | Request::Fallocate { .. }
            | Request::SetXattr { .. }
            | Request::RemoveXattr { .. }
    )
}

/// A small READ, answered on the reader thread when nothing else of the connection is
/// in flight (a random reader's 4 KiB): a thread hand-off less, and the reader has
/// nothing else to read meanwhile but what this call's caller sends next.
fn is_lone_read(req: &Request) -> bool {
    matches!(req, Request::Read { count, .. } if *count <= 16 * 1024)
}

/// Serves one connection on the calling (blocking) thread until it closes.
fn connection(
    mut r: Reader,
    write_half: Writer,
    close: Close,
    server: Arc<Server>,
    rt: tokio::runtime::Handle,
    peer: String,
    cred: Option<PeerCred>,
) {
    tracing::debug!(%peer, "connected");
    let conn = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut subscribed = false;
    let mut following = false;
    server.metrics.connections.inc();
    let replies = Arc::new(Replies { w: std::sync::Mutex::new(write_half), pushes: std::sync::OnceLock::new() });
    let inflight = Arc::new(InFlight { n: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() });
    let writes = Arc::new(Writes::default());
    let mut warned = false;
    let why = loop {
        let mut header = [0u8; 4];
        match r.read_exact(&mut header) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break None,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    // A record that failed authentication.
                    server.metrics.refused.inc();
                }
                break Some(e.to_string());
            }
        }
        if header == fs_proto::secure::MAGIC {
            server.metrics.refused.inc();
            break Some("refused: the client offers a key handshake, and this server has no --key".into());
        }
        let len = match frame_len(header) {
            Ok(n) => n,
            Err(e) => break Some(e.to_string()),
        };
        let call: Call = match fs_proto::read_call(&mut r, len) {
            Ok(c) => c,
            Err(e) => break Some(e.to_string()),
        };
        if cred.as_ref().is_some_and(|c| !c.allows(&call.cred)) {
            if !warned {
                tracing::warn!(%peer, "refused calls as uid {} (a peer that is not root calls only as itself)", call.cred.uid);
                warned = true;
            }
            replies.send(Reply { xid: call.xid, res: Err(Errno::EPERM) });
            continue;
        }
        match call.req {
            Request::Follow { root } => {
                if following || &root != server.root() {
                    // Another export, or another handle key: handles would not survive.
                    replies.send(Reply { xid: call.xid, res: Err(Errno::BADHANDLE) });
                    continue;
                }
                match pusher(replies.clone(), close.clone()) {
                    Ok(q) => {
                        server.follow_start(conn, peer.clone(), call.xid, q.sender());
                        following = true;
                    }
                    Err(e) => {
                        tracing::error!("no thread for a standby: {e}");
                        replies.send(Reply { xid: call.xid, res: Err(Errno::EAGAIN) });
                    }
                }
                continue;
            }
            Request::FollowAck { seq } => {
                server.follow_ack(conn, seq);
                continue;
            }
            Request::NoticeAck { upto } => {
                server.notices.ack(conn, upto);
                continue;
            }
            _ => {}
        }
        if let Request::Subscribe { after } = call.req {
            if subscribed {
                replies.send(Reply { xid: call.xid, res: Err(Errno::EINVAL) });
                continue;
            }
            match pusher(replies.clone(), close.clone()) {
                Ok(q) => {
                    let _ = replies.pushes.set(q.downgrade());
                    server.notices.subscribe(conn, call.client, call.xid, after, q);
                    subscribed = true;
                }
                Err(e) => {
                    tracing::error!("no thread for a subscriber: {e}");
                    replies.send(Reply { xid: call.xid, res: Err(Errno::EAGAIN) });
                }
            }
            continue;
        }
        let ordered = call.req.reads_names();
        let others = inflight.acquire();
        if others == 0 && (!is_data(&call.req) || is_lone_read(&call.req)) {
            if let Some(reply) = answer(&server, call) {
                replies.send_after_pushes(reply, ordered);
            }
            inflight.release();
            continue;
        }
        // A WRITE is counted from its arrival, so that a SETATTR read after it waits.
        let write = match &call.req {
            Request::Write { fh, .. } => Some(fh.clone()),
            _ => None,
        };
        if let Some(fh) = &write {
            writes.begin(fh);
        }
        let setattr = match &call.req {
            Request::SetAttr { fh, .. } => Some(fh.clone()),
            _ => None,
        };
        let (server, replies, inflight, w) = (server.clone(), replies.clone(), inflight.clone(), writes.clone());
        let run: Box<dyn FnOnce() + Send> = Box::new(move || {
            if let Some(reply) = answer(&server, call) {
                replies.send_after_pushes(reply, ordered);
            }
            if let Some(fh) = &write {
                w.end(fh);
            }
            inflight.release();
        });
        let run = match &setattr {
            Some(fh) => writes.after(fh, run),
            None => Some(run),
        };
        if let Some(run) = run {
            rt.spawn_blocking(run);
        }
    };
    if subscribed {
        server.notices.unsubscribe(conn);
    }
    if following {
        server.follow_end(conn);
        tracing::warn!(%peer, "a standby stopped following");
    }
    server.metrics.connections.dec();
    match why {
        None => tracing::debug!(%peer, "disconnected"),
        Some(why) => tracing::warn!(%peer, "closing connection: {why}"),
    }
}
