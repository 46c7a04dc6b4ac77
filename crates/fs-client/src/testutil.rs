//! Helpers for the unit tests.

use crate::client::Client;
use crate::options::MountOptions;
use crate::rpc::{Rpc, RpcConfig};
use fs_proto::{decode, encode_frame, Addr, Attr, Call, FileHandle, FileKind, Reply, Request, Response, Timespec};
use std::io::{Read, Write};
use std::time::Duration;

/// Attributes of a plain object: `kind`, file id, modified at `mtime_sec`.
pub fn attr(kind: FileKind, fileid: u64, mtime_sec: i64) -> Attr {
    Attr {
        kind,
        mode: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: 0,
        used: 0,
        rdev: 0,
        fsid: 0,
        fileid,
        blksize: 4096,
        atime: Timespec::default(),
        mtime: Timespec { sec: mtime_sec, nsec: 0 },
        ctime: Timespec::default(),
        change: 0,
    }
}

/// A server on a Unix socket at `path` that answers MOUNT and GETATTR for one directory,
/// the root (handle `[1]`, file id 2).
pub fn fake_server(path: &std::path::Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let attr = attr(FileKind::Directory, 2, 0);
        loop {
            let mut h = [0u8; 4];
            if s.read_exact(&mut h).is_err() {
                return;
            }
            let mut b = vec![0u8; u32::from_be_bytes(h) as usize];
            s.read_exact(&mut b).unwrap();
            let call: Call = decode(&b).unwrap();
            let res = match call.req {
                Request::Mount { .. } => Response::Mount { root: FileHandle(vec![1]), attr, max_io: 1 << 20 },
                _ => Response::Attr(attr),
            };
            s.write_all(&encode_frame(&Reply { xid: call.xid, res: Ok(res) }).unwrap()).unwrap();
        }
    });
}

/// A client of [`fake_server`] as client `id`, attribute timeouts of a minute (the folder
/// holding the socket, and the runtime, live as long as it is used).
pub fn client(id: u64) -> (tempfile::TempDir, tokio::runtime::Runtime, Client) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    fake_server(&path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = RpcConfig::hard(vec![Addr::Unix(path)]);
    let rpc = Rpc::connect(cfg, id, Duration::from_secs(5)).unwrap();
    let opts =
        MountOptions { attr: crate::attrcache::AttrTimeouts::all(Duration::from_secs(60)), ..Default::default() };
    let c = rt.block_on(Client::new(rpc, opts)).unwrap();
    (dir, rt, c)
}
