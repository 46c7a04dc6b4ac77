//! Listening and connections: frames in, replies out, operations on the blocking pool.
//!
//! Each connection has a reader (this task) and a writer task joined by a channel. The
//! reader checks each frame's length before reading it, decodes it on the spot (a
//! malformed frame closes that connection, logged, and nothing else), and hands the call
//! to the blocking pool, so many calls per connection run at once and replies go out in
//! whatever order they finish, matched by xid. A semaphore bounds the calls in flight per
//! connection, which is the back-pressure on a client that sends faster than we answer.

use crate::server::Server;
use fs_proto::{decode, encode_reply, frame_len, Addr, Call, Errno, Reply, SplitFrame};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, Semaphore};

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
        if let Listener::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn accept(&self, server: Arc<Server>) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Without it, request/reply traffic stalls on delayed ACKs.
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                tokio::spawn(connection(r, w, server, peer.to_string()));
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                tokio::spawn(connection(r, w, server, "unix".to_string()));
            }
        }
        Ok(())
    }
}

async fn connection<R, W>(r: R, w: W, server: Arc<Server>, peer: String)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(%peer, "connected");
    let (tx, rx) = mpsc::channel::<SplitFrame>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_replies(w, rx));
    match read_calls(r, server, tx).await {
        Ok(()) => tracing::debug!(%peer, "disconnected"),
        Err(why) => tracing::warn!(%peer, "closing connection: {why}"),
    }
    // The writer ends once every running call has sent its reply (all senders gone).
    let _ = writer.await;
}

async fn read_calls<R: AsyncRead + Unpin>(
    r: R,
    server: Arc<Server>,
    tx: mpsc::Sender<SplitFrame>,
) -> Result<(), String> {
    let mut r = BufReader::with_capacity(IO_BUF, r);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let mut header = [0u8; 4];
        match r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let len = frame_len(header).map_err(|e| e.to_string())?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.map_err(|e| format!("truncated frame: {e}"))?;
        let call: Call = decode(&payload).map_err(|e| format!("malformed frame: {e}"))?;
        drop(payload);
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let (server, tx) = (server.clone(), tx.clone());
        let xid = call.xid;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let reply = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.handle_call(call))) {
                Ok(Some(reply)) => reply,
                Ok(None) => return,
                Err(_) => Reply { xid, res: Err(Errno::SERVERFAULT) },
            };
            match encode_reply(reply) {
                Ok(frame) => {
                    let _ = tx.blocking_send(frame);
                }
                Err(e) => tracing::error!(xid, "reply not sent: {e}"),
            }
        });
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<SplitFrame>) {
    let mut w = BufWriter::with_capacity(IO_BUF, w);
    while let Some(frame) = rx.recv().await {
        if write_frame(&mut w, &frame).await.is_err() {
            return;
        }
        // Gather whatever else is ready into the same write before flushing.
        while let Ok(frame) = rx.try_recv() {
            if write_frame(&mut w, &frame).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// Small frames gather in the buffer; a READ's data (larger than the buffer) goes to the
/// socket directly from where the operation put it.
async fn write_frame<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, f: &SplitFrame) -> io::Result<()> {
    w.write_all(&f.head).await?;
    w.write_all(&f.tail).await
}
