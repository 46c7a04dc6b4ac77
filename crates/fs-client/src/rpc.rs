//! The RPC client: pipelined calls over one connection, matched by xid, with reconnect
//! and retransmission.
//!
//! Every call is encoded once, kept with its reply slot until answered, and written to
//! the current connection by the caller itself. One thread reads replies and hands each
//! to its caller. When the connection breaks (the server died, restarted, or the
//! network hiccupped) that thread reconnects with exponential backoff and resends
//! every outstanding call *with its original xid*, so the server's duplicate request
//! cache recognises retransmitted non-idempotent calls (RFC 1813, section 4.4, and the
//! NFS client's behaviour on a TCP reconnect).
//!
//! - `hard` (default): a call waits for the server as long as it takes, as an NFS hard
//!   mount does; "server not responding, still trying" is logged once per outage.
//! - `soft`: a call that has no reply after `timeo * (retrans + 1)` fails with `EIO`.

use fs_proto::{encode_frame, encode_head, frame_len, Addr, Call, CallRef, Cred, Errno, Reply, Request, Response};
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// The server's addresses: a primary and its standbys, tried in turn (passive
    /// redundancy); usually one.
    pub addrs: Vec<Addr>,
    /// Fail calls with `EIO` after `timeo * (retrans + 1)` instead of waiting forever.
    pub soft: bool,
    pub timeo: Duration,
    pub retrans: u32,
    /// Run the key handshake with this key on every connection, and protect its frames.
    pub key: Option<Arc<fs_proto::secure::Key>>,
    pub protection: fs_proto::secure::Protection,
}

impl RpcConfig {
    /// A hard mount of `addrs` without a key (the timeouts only matter when soft).
    pub fn hard(addrs: Vec<Addr>) -> RpcConfig {
        RpcConfig {
            addrs,
            soft: false,
            timeo: Duration::from_secs(6),
            retrans: 2,
            key: None,
            protection: fs_proto::secure::Protection::Encrypt,
        }
    }
}

/// A call's frame as sent: its bytes, then a WRITE's data, which is never copied into
/// the frame (the caller keeps it until COMMIT).
#[derive(Clone)]
struct Frame {
    head: Arc<Vec<u8>>,
    tail: Option<Arc<Vec<u8>>>,
}

struct Pending {
    frame: Frame,
    tx: oneshot::Sender<Reply>,
}

/// The write side of the live connection. Callers write their frames themselves, under
/// this lock, instead of handing them to a writer thread: one thread wake-up less per
/// call, which on this machine is a large part of a round trip.
struct Conn {
    w: Mutex<Box<dyn Write + Send>>,
    /// To shut the connection down without waiting for a writer.
    raw: Stream,
}

impl Conn {
    fn send(&self, frame: &Frame) {
        let mut w = self.w.lock().unwrap();
        let tail = frame.tail.as_deref().map_or(&[][..], |t| &t[..]);
        if w.write_all(&frame.head).and_then(|_| w.write_all(tail)).is_err() {
            // The reader notices the broken connection and reconnects; the frame stays
            // pending and is resent then.
            self.raw.shutdown();
        }
    }
}

/// A connection ready for calls: its halves (protected after a key handshake, when the
/// mount has a key) and the socket.
struct Channel {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    raw: Stream,
}

impl Channel {
    /// Connects to the first of the server's addresses, from `start` on, that answers;
    /// returns which it was.
    fn open_any(cfg: &RpcConfig, timeout: Duration, start: usize) -> io::Result<(Channel, usize)> {
        let n = cfg.addrs.len();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for i in (0..n).map(|k| (start + k) % n) {
            match Channel::open(cfg, &cfg.addrs[i], timeout) {
                Ok(c) => return Ok((c, i)),
                // A key refused is the answer, not an address to skip.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn open(cfg: &RpcConfig, addr: &Addr, timeout: Duration) -> io::Result<Channel> {
        let mut s = Stream::connect(addr, timeout)?;
        let (w, raw) = (s.try_clone()?, s.try_clone()?);
        let Some(key) = &cfg.key else {
            return Ok(Channel { reader: Box::new(BufReader::with_capacity(IO_BUF, s)), writer: Box::new(w), raw });
        };
        s.set_read_timeout(Some(timeout))?;
        let session = fs_proto::secure::initiate(&mut s, key, cfg.protection).map_err(|e| {
            let hint = match e {
                fs_proto::secure::HandshakeError::Closed => " (a server without --key?)",
                _ => "",
            };
            io::Error::new(io::ErrorKind::PermissionDenied, format!("{e}{hint}"))
        })?;
        s.set_read_timeout(None)?;
        Ok(Channel {
            reader: Box::new(session.reader(BufReader::with_capacity(IO_BUF, s))),
            writer: Box::new(session.writer(w)),
            raw,
        })
    }
}

const IO_BUF: usize = 256 * 1024;

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    conn: Option<Arc<Conn>>,
}

/// What the connection thread tells the notice follower.
pub enum Push {
    /// A (new) connection is up: subscribe on it.
    Connected,
    /// A pushed reply (xid 0): notices.
    Reply(Box<Reply>),
}

struct Inner {
    /// Which of `cfg.addrs` the connection goes to (or last went to).
    current: std::sync::atomic::AtomicUsize,
    pushes: Mutex<Option<std::sync::mpsc::Sender<Push>>>,
    /// Pushed replies handed to the follower so far (see [`Rpc::pushes_received`]).
    pushes_received: AtomicU64,
    cfg: RpcConfig,
    client: u64,
    next_xid: AtomicU64,
    state: Mutex<State>,
    stats: Mutex<crate::stats::CallStats>,
}

/// A cheap handle to the shared client; clone it freely.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
}

/// A blocking stream: the reader is a plain thread, so replies are always drained even
/// when every runtime worker is busy (no full-duplex deadlock with the server).
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(addr: &Addr, timeout: Duration) -> io::Result<Stream> {
        match addr {
            Addr::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            // Without it, small calls wait for delayed ACKs (40 ms stalls).
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Addr::Unix(p) => Ok(Stream::Unix(UnixStream::connect(p)?)),
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Rpc {
    /// Connects once (an unreachable server is an immediate error, so `mount` can say
    /// so), then hands the connection to the connection thread, which keeps it alive.
    pub fn connect(cfg: RpcConfig, client: u64, timeout: Duration) -> io::Result<Rpc> {
        let (stream, current) = Channel::open_any(&cfg, timeout, 0)?;
        let inner = Arc::new(Inner {
            current: current.into(),
            pushes: Mutex::new(None),
            pushes_received: AtomicU64::new(0),
            cfg,
            client,
            next_xid: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            stats: Mutex::new(Default::default()),
        });
        let i = inner.clone();
        std::thread::Builder::new().name("fs-rpc".into()).spawn(move || manage(i, stream))?;
        Ok(Rpc { inner })
    }

    pub fn client_id(&self) -> u64 {
        self.inner.client
    }

    /// Where pushed replies (xid 0) and news of new connections go from now on.
    pub fn set_pushes(&self, tx: std::sync::mpsc::Sender<Push>) {
        *self.inner.pushes.lock().unwrap() = Some(tx);
    }

    /// How many pushed replies (notices) were handed to the follower: a reply read after
    /// them may reflect any change they tell of, so an answer built from it waits until
    /// the follower has applied that many ([`crate::client::Client::caught_up`]).
    pub fn pushes_received(&self) -> u64 {
        self.inner.pushes_received.load(Ordering::SeqCst)
    }

    /// Closes the current connection; the connection thread reconnects and resends.
    pub fn reset_connection(&self) {
        if let Some(c) = self.inner.state.lock().unwrap().conn.clone() {
            c.raw.shutdown();
        }
    }

    /// One call; waits for its reply (see the module doc for hard and soft).
    /// The server's address, and whether a connection to it is up (with the number of
    /// calls awaiting replies).
    pub fn describe(&self) -> String {
        let st = self.inner.state.lock().unwrap();
        let state = if st.conn.is_some() { "connected" } else { "NOT CONNECTED (reconnecting)" };
        let auth = match &self.inner.cfg.key {
            Some(_) => format!("key handshake, {}", self.inner.cfg.protection.name()),
            None => "no key".to_string(),
        };
        let others = if self.inner.cfg.addrs.len() > 1 {
            let all: Vec<String> = self.inner.cfg.addrs.iter().map(|a| a.to_string()).collect();
            format!(" (of {})", all.join(","))
        } else {
            String::new()
        };
        format!("{}{others} {state} ({auth}), {} calls outstanding", self.inner.addr(), st.pending.len())
    }

    /// Calls per operation, latencies and retransmissions so far.
    pub fn stats(&self) -> crate::stats::CallStats {
        self.inner.stats.lock().unwrap().clone()
    }

    pub async fn call(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        self.call_ref(cred, &req).await
    }

    /// [`Rpc::call`] with a borrowed request (which the caller keeps: a WRITE's data).
    pub async fn call_ref(&self, cred: &Cred, req: &Request) -> Result<Response, Errno> {
        self.send(cred, req).await
    }

    /// Sends the call now, before the first poll of what it returns (which waits for the
    /// reply): calls sent one after another leave in that order.
    pub fn send(
        &self,
        cred: &Cred,
        req: &Request,
    ) -> impl std::future::Future<Output = Result<Response, Errno>> + Send {
        self.send_with_tail(cred, req, None)
    }

    /// [`Rpc::send`] of a request whose last field, an empty byte vector (a WRITE's
    /// data), holds `tail` on the wire: those bytes are sent as they are, never copied
    /// into a frame, and shared with the caller (the pending call holds them for a resend
    /// until its reply, which drops them before the caller hears of it).
    pub fn send_with_tail(
        &self,
        cred: &Cred,
        req: &Request,
        tail: Option<Arc<Vec<u8>>>,
    ) -> impl std::future::Future<Output = Result<Response, Errno>> + Send {
        let (op, started) = (req.name(), std::time::Instant::now());
        let sent = self.start(cred, req, tail);
        let inner = self.inner.clone();
        async move {
            let result = match sent {
                Ok(s) => s.reply().await,
                Err(e) => Err(e),
            };
            // Any error counts (ENOENT from a LOOKUP too: that is how misses look).
            inner.stats.lock().unwrap().record(op, started.elapsed(), result.is_ok());
            result
        }
    }

    /// Sends a call that has no answer (NOTICEACK) on the connection now up; nothing is
    /// sent when none is (what it says concerns that connection alone).
    pub fn send_oneway(&self, cred: &Cred, req: Request) {
        let xid = self.inner.next_xid.fetch_add(1, Ordering::Relaxed);
        let call = Call { xid, client: self.inner.client, cred: cred.clone(), req };
        let Ok(head) = encode_frame(&call) else { return };
        let conn = self.inner.state.lock().unwrap().conn.clone();
        if let Some(conn) = conn {
            conn.send(&Frame { head: Arc::new(head), tail: None });
        }
    }

    fn start(&self, cred: &Cred, req: &Request, tail: Option<Arc<Vec<u8>>>) -> Result<Sent, Errno> {
        let xid = self.inner.next_xid.fetch_add(1, Ordering::Relaxed);
        let call = CallRef { xid, client: self.inner.client, cred, req };
        let tail_len = tail.as_ref().map_or(0, |t| t.len());
        let head = encode_head(&call, tail_len).map_err(|_| Errno::EINVAL)?;
        let frame = Frame { head: Arc::new(head), tail };
        let (tx, rx) = oneshot::channel();
        let conn = {
            let mut st = self.inner.state.lock().unwrap();
            st.pending.insert(xid, Pending { frame: frame.clone(), tx });
            st.conn.clone()
        };
        // Cancel safety: a call whose future is dropped before its reply (a timeout
        // around it, an aborted task) takes its entry with it; left behind, it would be
        // resent on every reconnect and never answered to anyone.
        let sent = Sent { inner: self.inner.clone(), xid, rx };
        // Not connected: the connection thread sends it on reconnect. If the connection
        // dies mid-send, it is resent too; a duplicate is harmless (idempotent, or caught
        // by the server's duplicate request cache).
        if let Some(conn) = conn {
            conn.send(&frame);
        }
        Ok(sent)
    }
}

/// A call on its way: waits for its reply (see the module doc for hard and soft), and
/// removes its entry from the pending table however it ends (answered: the reader
/// already removed it, and this does nothing).
struct Sent {
    inner: Arc<Inner>,
    xid: u64,
    rx: oneshot::Receiver<Reply>,
}

impl Sent {
    async fn reply(mut self) -> Result<Response, Errno> {
        let rx = &mut self.rx;
        let reply = if self.inner.cfg.soft {
            let limit = self.inner.cfg.timeo * (self.inner.cfg.retrans + 1);
            match tokio::time::timeout(limit, rx).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(xid = self.xid, "server {} not responding, timed out", self.inner.addr());
                    return Err(Errno::EIO);
                }
            }
        } else {
            rx.await
        };
        reply.map_err(|_| Errno::EIO)?.res
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.inner.state.lock().unwrap().pending.remove(&self.xid);
    }
}

/// The connection thread: installs a connection (resending everything outstanding),
/// reads replies until it breaks, then reconnects with backoff.
fn manage(inner: Arc<Inner>, first: Channel) {
    let mut stream = Some(first);
    let mut reconnected = false;
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => {
                reconnected = true;
                reconnect(&inner)
            }
        };
        let Channel { reader, writer, raw } = s;
        let conn = Arc::new(Conn { w: Mutex::new(writer), raw });
        {
            let mut st = inner.state.lock().unwrap();
            let mut outstanding: Vec<_> = st.pending.iter().map(|(xid, p)| (*xid, p.frame.clone())).collect();
            outstanding.sort_by_key(|(xid, _)| *xid);
            if !outstanding.is_empty() {
                tracing::info!("resending {} outstanding calls", outstanding.len());
                if reconnected {
                    // (On the first connection these are calls made before it was up.)
                    inner.stats.lock().unwrap().retransmitted += outstanding.len() as u64;
                }
            }
            for (_, f) in outstanding {
                conn.send(&f);
            }
            st.conn = Some(conn.clone());
        }
        push(&inner, Push::Connected);
        let (why, refused) = read_replies(&inner, reader);
        inner.state.lock().unwrap().conn = None;
        conn.raw.shutdown();
        if refused {
            // The server closes a connection it refused; the caller says why.
            tracing::debug!("connection to {} refused ({why})", inner.addr());
        } else {
            tracing::warn!("connection to {} lost ({why}); reconnecting", inner.addr());
        }
    }
}

impl Inner {
    fn addr(&self) -> &Addr {
        &self.cfg.addrs[self.current.load(Ordering::Relaxed) % self.cfg.addrs.len()]
    }
}

fn push(inner: &Inner, p: Push) {
    if let Some(tx) = inner.pushes.lock().unwrap().as_ref() {
        let counted = matches!(p, Push::Reply(_));
        if tx.send(p).is_ok() && counted {
            inner.pushes_received.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn reconnect(inner: &Inner) -> Channel {
    let mut delay = Duration::from_millis(20);
    let mut said = false;
    loop {
        let start = inner.current.load(Ordering::Relaxed);
        match Channel::open_any(&inner.cfg, Duration::from_secs(5), start) {
            Ok((s, i)) => {
                inner.current.store(i, Ordering::Relaxed);
                if said || i != start {
                    tracing::warn!("server {} OK", inner.addr());
                }
                return s;
            }
            Err(e) => {
                if !said {
                    tracing::warn!("server {} not responding ({e}), still trying", inner.addr());
                    said = true;
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Hands replies to their callers until the connection breaks: why, and whether the last
/// reply was the server's refusal (`AUTH`: we have no key and it wants one).
fn read_replies(inner: &Inner, mut r: Box<dyn Read + Send>) -> (String, bool) {
    let mut refused = false;
    let why = loop {
        let mut h = [0u8; 4];
        if let Err(e) = r.read_exact(&mut h) {
            break e.to_string();
        }
        let n = match frame_len(h) {
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        let reply: Reply = match fs_proto::read_reply(&mut r, n) {
            Ok(r) => r,
            Err(fs_proto::ReadError::Io(e)) => break e.to_string(),
            Err(fs_proto::ReadError::Malformed(e)) => break format!("malformed reply: {e}"),
        };
        if reply.xid == 0 {
            push(inner, Push::Reply(Box::new(reply)));
            continue;
        }
        refused = reply.res == Err(Errno::AUTH);
        let p = inner.state.lock().unwrap().pending.remove(&reply.xid);
        if let Some(Pending { frame, tx }) = p {
            // Dropped first: a WRITE's caller then gets its data back without a copy.
            drop(frame);
            let _ = tx.send(reply);
        }
    };
    (why, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call dropped before its reply leaves nothing to be resent (cancel safety).
    #[tokio::test]
    async fn a_dropped_call_leaves_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        // A server that accepts and never answers.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            // Reads (and answers nothing) until the client goes away.
            if let Ok((mut conn, _)) = listener.accept() {
                let _ = std::io::copy(&mut conn, &mut std::io::sink());
            }
        });
        let cfg = RpcConfig::hard(vec![Addr::Unix(path)]);
        let rpc = Rpc::connect(cfg, 7, Duration::from_secs(5)).unwrap();
        let cred = Cred { uid: 0, gid: 0, groups: vec![] };
        let call = rpc.call(&cred, Request::Null);
        assert!(tokio::time::timeout(Duration::from_millis(50), call).await.is_err(), "no answer comes");
        assert!(rpc.inner.state.lock().unwrap().pending.is_empty(), "the dropped call is forgotten");
    }
}
