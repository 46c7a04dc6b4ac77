//! A small blocking RPC client for tests and the load generator. The real, pipelined,
//! reconnecting client lives in `fs-client`.

use fs_proto::*;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

pub struct Conn {
    r: BufReader<Box<dyn Read + Send>>,
    w: BufWriter<Box<dyn Write + Send>>,
    pub client: u64,
    pub cred: Cred,
    next_xid: u64,
}

impl Conn {
    pub fn connect(addr: &str) -> io::Result<Conn> {
        let (r, w): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match addr.parse::<Addr>() {
            Ok(Addr::Unix(p)) => {
                let s = UnixStream::connect(p)?;
                (Box::new(s.try_clone()?), Box::new(s))
            }
            Ok(Addr::Tcp { host, port }) => {
                let s = TcpStream::connect((host.as_str(), port))?;
                s.set_nodelay(true)?;
                (Box::new(s.try_clone()?), Box::new(s))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e)),
        };
        Ok(Conn {
            r: BufReader::with_capacity(1 << 20, r),
            w: BufWriter::with_capacity(1 << 20, w),
            client: std::process::id() as u64,
            cred: Cred { uid: 0, gid: 0, groups: vec![] },
            next_xid: 1,
        })
    }

    /// Over halves made elsewhere (a key session's, a recording tap).
    pub fn from_halves(r: Box<dyn Read + Send>, w: Box<dyn Write + Send>) -> Conn {
        Conn {
            r: BufReader::with_capacity(1 << 20, r),
            w: BufWriter::with_capacity(1 << 20, w),
            client: std::process::id() as u64,
            cred: Cred { uid: 0, gid: 0, groups: vec![] },
            next_xid: 1,
        }
    }

    /// A TCP connection that runs the key handshake first, as `-o key=FILE` does.
    pub fn connect_with_key(addr: &str, key: &secure::Key, p: secure::Protection) -> io::Result<Conn> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let session = secure::initiate(&mut s, key, p).map_err(io::Error::other)?;
        let w = s.try_clone()?;
        Ok(Conn::from_halves(Box::new(session.reader(BufReader::new(s))), Box::new(session.writer(w))))
    }

    pub fn next_xid(&mut self) -> u64 {
        let x = self.next_xid;
        self.next_xid += 1;
        x
    }

    /// Queues a call; `flush` sends what is queued.
    pub fn send(&mut self, xid: u64, req: Request) -> io::Result<()> {
        let call = Call { xid, client: self.client, cred: self.cred.clone(), req };
        let frame = encode_frame(&call).map_err(io::Error::other)?;
        self.w.write_all(&frame)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        self.w.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    pub fn recv(&mut self) -> io::Result<Reply> {
        let mut h = [0u8; 4];
        self.r.read_exact(&mut h)?;
        let n = frame_len(h).map_err(io::Error::other)?;
        let mut buf = vec![0u8; n];
        self.r.read_exact(&mut buf)?;
        decode(&buf).map_err(io::Error::other)
    }

    /// One call, waiting for its reply.
    pub fn call(&mut self, req: Request) -> Result<Response, Errno> {
        let xid = self.next_xid();
        self.call_xid(xid, req)
    }

    pub fn call_xid(&mut self, xid: u64, req: Request) -> Result<Response, Errno> {
        self.send(xid, req).and_then(|_| self.flush()).expect("send");
        let reply = self.recv().expect("recv");
        assert_eq!(reply.xid, xid, "one call at a time");
        reply.res
    }

    pub fn mount(&mut self) -> FileHandle {
        match self.call(Request::Mount { path: "/".into() }) {
            Ok(Response::Mount { root, .. }) => root,
            r => panic!("MOUNT: {r:?}"),
        }
    }
}
