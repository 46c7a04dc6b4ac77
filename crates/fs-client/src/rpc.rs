//! The RPC client: pipelined calls over one connection, matched by xid, with reconnect
//! and retransmission.
//!
//! Every call is encoded once, kept with its reply slot until answered, and written to
//! the current connection. When the connection breaks (the server died, restarted, or the
//! network hiccupped) a manager task reconnects with exponential backoff and resends
//! every outstanding call *with its original xid*, so the server's duplicate request
//! cache recognises retransmitted non-idempotent calls (RFC 1813, section 4.4, and the
//! NFS client's behaviour on a TCP reconnect).
//!
//! - `hard` (default): a call waits for the server as long as it takes, as an NFS hard
//!   mount does; "server not responding, still trying" is logged once per outage.
//! - `soft`: a call that has no reply after `timeo * (retrans + 1)` fails with `EIO`.

use fs_proto::{decode, encode_frame, frame_len, Addr, Call, Cred, Errno, Reply, Request, Response};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug)]
pub struct RpcConfig {
    pub addr: Addr,
    /// Fail calls with `EIO` after `timeo * (retrans + 1)` instead of waiting forever.
    pub soft: bool,
    pub timeo: Duration,
    pub retrans: u32,
}

type Frame = Arc<[u8]>;

struct Pending {
    frame: Frame,
    tx: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// The live connection's writer queue, if connected.
    conn: Option<mpsc::UnboundedSender<Frame>>,
}

struct Inner {
    cfg: RpcConfig,
    client: u64,
    next_xid: AtomicU64,
    state: Mutex<State>,
}

/// A cheap handle to the shared client; clone it freely.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn connect(addr: &Addr) -> io::Result<Stream> {
    match addr {
        Addr::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            // Without it, small calls wait for delayed ACKs (40 ms stalls).
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        Addr::Unix(p) => Ok(Stream::Unix(tokio::net::UnixStream::connect(p).await?)),
    }
}

impl Rpc {
    /// Connects once (an unreachable server is an immediate error, so `mount` can say
    /// so), then hands the connection to the manager task, which keeps it alive.
    pub async fn connect(cfg: RpcConfig, client: u64) -> io::Result<Rpc> {
        let stream = connect(&cfg.addr).await?;
        let inner = Arc::new(Inner { cfg, client, next_xid: AtomicU64::new(1), state: Mutex::new(State::default()) });
        tokio::spawn(manage(inner.clone(), stream));
        Ok(Rpc { inner })
    }

    pub fn client_id(&self) -> u64 {
        self.inner.client
    }

    /// One call; waits for its reply (see the module doc for hard and soft).
    pub async fn call(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        let xid = self.inner.next_xid.fetch_add(1, Ordering::Relaxed);
        let call = Call { xid, client: self.inner.client, cred: cred.clone(), req };
        let frame: Frame = encode_frame(&call).map_err(|_| Errno::EINVAL)?.into();
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.state.lock().unwrap();
            st.pending.insert(xid, Pending { frame: frame.clone(), tx });
            if let Some(conn) = &st.conn {
                // If the connection just died the frame is resent on reconnect; a
                // duplicate send is harmless (idempotent, or caught by the server's DRC).
                let _ = conn.send(frame);
            }
        }
        let reply = if self.inner.cfg.soft {
            let limit = self.inner.cfg.timeo * (self.inner.cfg.retrans + 1);
            match tokio::time::timeout(limit, rx).await {
                Ok(r) => r,
                Err(_) => {
                    self.inner.state.lock().unwrap().pending.remove(&xid);
                    tracing::warn!(xid, "server {} not responding, timed out", self.inner.cfg.addr);
                    return Err(Errno::EIO);
                }
            }
        } else {
            rx.await
        };
        reply.map_err(|_| Errno::EIO)?.res
    }
}

/// Keeps a connection up: runs it until it breaks, then reconnects with backoff and
/// resends everything outstanding.
async fn manage(inner: Arc<Inner>, first: Stream) {
    let mut stream = Some(first);
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => reconnect(&inner).await,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = inner.state.lock().unwrap();
            let mut outstanding: Vec<_> = st.pending.iter().map(|(xid, p)| (*xid, p.frame.clone())).collect();
            outstanding.sort_by_key(|(xid, _)| *xid);
            if !outstanding.is_empty() {
                tracing::info!("resending {} outstanding calls", outstanding.len());
            }
            for (_, f) in outstanding {
                let _ = tx.send(f);
            }
            st.conn = Some(tx);
        }
        let why = match s {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                run_connection(&inner, r, w, rx).await
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                run_connection(&inner, r, w, rx).await
            }
        };
        inner.state.lock().unwrap().conn = None;
        tracing::warn!("connection to {} lost ({why}); reconnecting", inner.cfg.addr);
    }
}

async fn reconnect(inner: &Inner) -> Stream {
    let mut delay = Duration::from_millis(20);
    let mut said = false;
    loop {
        match connect(&inner.cfg.addr).await {
            Ok(s) => {
                if said {
                    tracing::warn!("server {} OK", inner.cfg.addr);
                }
                return s;
            }
            Err(e) => {
                if !said {
                    tracing::warn!("server {} not responding ({e}), still trying", inner.cfg.addr);
                    said = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn run_connection<R, W>(inner: &Inner, r: R, w: W, rx: mpsc::UnboundedReceiver<Frame>) -> String
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::select! {
        e = read_replies(inner, r) => e,
        e = write_calls(w, rx) => e,
    }
}

async fn read_replies<R: AsyncRead + Unpin>(inner: &Inner, r: R) -> String {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    loop {
        let mut h = [0u8; 4];
        if let Err(e) = r.read_exact(&mut h).await {
            return e.to_string();
        }
        let n = match frame_len(h) {
            Ok(n) => n,
            Err(e) => return e.to_string(),
        };
        let mut buf = vec![0u8; n];
        if let Err(e) = r.read_exact(&mut buf).await {
            return e.to_string();
        }
        let reply: Reply = match decode(&buf) {
            Ok(r) => r,
            Err(e) => return format!("malformed reply: {e}"),
        };
        let p = inner.state.lock().unwrap().pending.remove(&reply.xid);
        if let Some(p) = p {
            let _ = p.tx.send(reply);
        }
    }
}

async fn write_calls<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::UnboundedReceiver<Frame>) -> String {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some(f) = rx.recv().await {
        if let Err(e) = w.write_all(&f).await {
            return e.to_string();
        }
        while let Ok(f) = rx.try_recv() {
            if let Err(e) = w.write_all(&f).await {
                return e.to_string();
            }
        }
        if let Err(e) = w.flush().await {
            return e.to_string();
        }
    }
    "writer closed".into()
}
