//! Every operation against a temporary export, in-process (no sockets), including the
//! error cases. Runs as root, as CI does: credential switching needs it.

use fs_proto::*;
use fs_server::{Config, Server};
use std::cell::Cell;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const ROOT: Cred = Cred { uid: 0, gid: 0, groups: Vec::new() };

fn user(uid: u32) -> Cred {
    Cred { uid, gid: uid, groups: vec![] }
}

struct T {
    export: tempfile::TempDir,
    state: tempfile::TempDir,
    srv: Server,
    xid: Cell<u64>,
}

impl T {
    fn new() -> T {
        T::with(|_| {})
    }

    /// Root squashing off unless `f` says otherwise, so tests can set up as root.
    fn with(f: impl FnOnce(&mut Config)) -> T {
        let export = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(export.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut cfg = Config::new(export.path().into(), state.path().into());
        cfg.root_squash = false;
        f(&mut cfg);
        let srv = Server::new(&cfg).unwrap();
        T { export, state, srv, xid: Cell::new(1) }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.export.path().join(rel)
    }

    fn call_as(&self, cred: &Cred, req: Request) -> Result<Response, Errno> {
        let xid = self.xid.get();
        self.xid.set(xid + 1);
        self.call_xid(cred, xid, req)
    }

    fn call_xid(&self, cred: &Cred, xid: u64, req: Request) -> Result<Response, Errno> {
        let reply = self.srv.handle_call(Call { xid, client: 42, cred: cred.clone(), req }).expect("a reply");
        assert_eq!(reply.xid, xid);
        reply.res
    }

    fn call(&self, req: Request) -> Result<Response, Errno> {
        self.call_as(&ROOT, req)
    }

    fn root(&self) -> FileHandle {
        self.srv.root().clone()
    }

    fn lookup(&self, dir: &FileHandle, name: &str) -> Result<(FileHandle, Attr), Errno> {
        match self.call(Request::Lookup { dir: dir.clone(), name: name.into() })? {
            Response::Lookup { fh, attr, .. } => Ok((fh, attr)),
            r => panic!("{r:?}"),
        }
    }

    fn fh(&self, name: &str) -> FileHandle {
        self.lookup(&self.root(), name).unwrap().0
    }

    fn getattr(&self, fh: &FileHandle) -> Result<Attr, Errno> {
        match self.call(Request::GetAttr { fh: fh.clone() })? {
            Response::Attr(a) => Ok(a),
            r => panic!("{r:?}"),
        }
    }

    fn create_as(&self, cred: &Cred, dir: &FileHandle, name: &str, mode: u32) -> Result<FileHandle, Errno> {
        let how = CreateHow::Guarded;
        match self.call_as(cred, Request::Create { dir: dir.clone(), name: name.into(), mode, how })? {
            Response::Created { fh, .. } => Ok(fh),
            r => panic!("{r:?}"),
        }
    }

    fn create(&self, name: &str) -> FileHandle {
        self.create_as(&ROOT, &self.root(), name, 0o644).unwrap()
    }

    fn write(&self, fh: &FileHandle, offset: u64, data: &[u8]) -> Result<Response, Errno> {
        self.call(Request::Write { fh: fh.clone(), offset, stable: Stable::Unstable, fence: 0, data: data.to_vec() })
    }

    fn read_as(&self, cred: &Cred, fh: &FileHandle, offset: u64, count: u32) -> Result<(Vec<u8>, bool), Errno> {
        match self.call_as(cred, Request::Read { fh: fh.clone(), offset, count })? {
            Response::Read { data, eof, .. } => Ok((data, eof)),
            r => panic!("{r:?}"),
        }
    }

    fn read(&self, fh: &FileHandle, offset: u64, count: u32) -> Result<(Vec<u8>, bool), Errno> {
        self.read_as(&ROOT, fh, offset, count)
    }

    fn readdir(&self, dir: &FileHandle, plus: bool, count: u32) -> Vec<DirEntry> {
        let (mut cookie, mut verifier, mut all) = (0, 0, Vec::new());
        loop {
            let req = if plus {
                Request::ReadDirPlus { dir: dir.clone(), cookie, verifier, count }
            } else {
                Request::ReadDir { dir: dir.clone(), cookie, verifier, count }
            };
            match self.call(req).unwrap() {
                Response::Dir { verifier: v, entries, eof, .. } => {
                    verifier = v;
                    if let Some(last) = entries.last() {
                        cookie = last.cookie;
                    }
                    all.extend(entries);
                    if eof {
                        return all;
                    }
                }
                r => panic!("{r:?}"),
            }
        }
    }
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn mount_gives_the_root() {
    let t = T::new();
    match t.call(Request::Mount { path: "/".into() }).unwrap() {
        Response::Mount { root, attr, max_io } => {
            assert_eq!(&root, t.srv.root());
            assert_eq!(attr.kind, FileKind::Directory);
            assert_eq!(max_io as usize, MAX_IO);
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(t.call(Request::Mount { path: "/elsewhere".into() }), Err(Errno::ENOENT));
    assert_eq!(t.call(Request::Null), Ok(Response::Null));
}

#[test]
fn create_how() {
    let t = T::new();
    let r = t.root();
    let mk = |how| t.call(Request::Create { dir: r.clone(), name: b"f".to_vec(), mode: 0o640, how });
    let root_before = t.getattr(&r).unwrap();
    let first = mk(CreateHow::Guarded).unwrap();
    let Response::Created { fh, attr, dir } = first else { panic!() };
    assert_eq!(attr.mode, 0o640);
    assert_eq!(attr.kind, FileKind::Regular);
    assert_eq!(dir.before, Some(WccAttr::from(&root_before)), "pre-operation attributes of the directory");
    assert_eq!(dir.after, Some(t.getattr(&r).unwrap()), "post-operation attributes of the directory");
    assert_eq!(mk(CreateHow::Guarded), Err(Errno::EEXIST));
    let Ok(Response::Created { fh: again, .. }) = mk(CreateHow::Unchecked) else { panic!() };
    assert_eq!(again, fh);
    // Exclusive: the same verifier succeeds again (a retransmission), another fails.
    let ex = |name: &str, v| {
        t.call(Request::Create { dir: r.clone(), name: name.into(), mode: 0o600, how: CreateHow::Exclusive(v) })
    };
    let Ok(Response::Created { fh: e1, .. }) = ex("e", 0x1234_5678_9abc_def0) else { panic!() };
    let Ok(Response::Created { fh: e2, .. }) = ex("e", 0x1234_5678_9abc_def0) else { panic!() };
    assert_eq!(e1, e2);
    assert_eq!(ex("e", 1), Err(Errno::EEXIST));
    assert_eq!(ex("f", 0x1234_5678_9abc_def0), Err(Errno::EEXIST));
    std::fs::create_dir(t.path("d")).unwrap();
    assert_eq!(mk_named(&t, "d", CreateHow::Unchecked), Err(Errno::EEXIST));
}

fn mk_named(t: &T, name: &str, how: CreateHow) -> Result<Response, Errno> {
    t.call(Request::Create { dir: t.root(), name: name.into(), mode: 0o644, how })
}

#[test]
fn write_read_commit() {
    let t = T::new();
    let fh = t.create("f");
    let Response::Write { count, committed, verifier, wcc } = t.write(&fh, 0, b"hello world").unwrap() else {
        panic!()
    };
    assert_eq!((count, committed), (11, Stable::Unstable));
    assert_eq!(verifier, t.srv.write_verifier());
    assert_eq!(wcc.before.unwrap().size, 0);
    assert_eq!(wcc.after.unwrap().size, 11);
    assert_eq!(t.read(&fh, 0, 5).unwrap(), (b"hello".to_vec(), false));
    assert_eq!(t.read(&fh, 6, 100).unwrap(), (b"world".to_vec(), true));
    assert_eq!(t.read(&fh, 100, 10).unwrap(), (vec![], true));
    t.write(&fh, 20, b"x").unwrap();
    assert_eq!(t.read(&fh, 10, 100).unwrap().0, b"d\0\0\0\0\0\0\0\0\0x");
    let Response::Write { committed, .. } = t
        .call(Request::Write { fh: fh.clone(), offset: 0, stable: Stable::FileSync, fence: 0, data: b"H".to_vec() })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(committed, Stable::FileSync);
    let Response::Commit { verifier, .. } = t.call(Request::Commit { fh: fh.clone(), offset: 0, count: 0 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(verifier, t.srv.write_verifier());
    assert_eq!(std::fs::read(t.path("f")).unwrap()[..5], *b"Hello");
    // Directories and over-long writes.
    assert_eq!(t.read(&t.root(), 0, 1), Err(Errno::EISDIR));
    assert_eq!(t.write(&fh, 0, &vec![0; MAX_IO + 1]).err(), Some(Errno::EFBIG));
}

#[test]
fn setattr_each_field() {
    let t = T::new();
    let fh = t.create("f");
    t.write(&fh, 0, b"0123456789").unwrap();
    let set = |attrs: SetAttrs, guard| t.call(Request::SetAttr { fh: fh.clone(), attrs, guard });
    let Response::Wcc(w) = set(SetAttrs { size: Some(4), ..Default::default() }, None).unwrap() else { panic!() };
    assert_eq!((w.before.unwrap().size, w.after.unwrap().size), (10, 4));
    set(SetAttrs { mode: Some(0o4711), ..Default::default() }, None).unwrap();
    assert_eq!(t.getattr(&fh).unwrap().mode, 0o4711);
    set(SetAttrs { uid: Some(1234), gid: Some(99), ..Default::default() }, None).unwrap();
    let a = t.getattr(&fh).unwrap();
    assert_eq!((a.uid, a.gid), (1234, 99));
    let when = Timespec { sec: 1_000_000_000, nsec: 5 };
    set(SetAttrs { atime: SetTime::Set(when), mtime: SetTime::Set(when), ..Default::default() }, None).unwrap();
    let a = t.getattr(&fh).unwrap();
    assert_eq!((a.atime, a.mtime), (when, when));
    set(SetAttrs { mtime: SetTime::ServerNow, ..Default::default() }, None).unwrap();
    let a = t.getattr(&fh).unwrap();
    assert_eq!(a.atime, when);
    assert!(a.mtime.sec > when.sec);
    // The guard: only if ctime is still what the client saw (RFC 1813, 3.3.2).
    assert_eq!(set(SetAttrs { size: Some(0), ..Default::default() }, Some(when)), Err(Errno::NOT_SYNC));
    assert!(set(SetAttrs { size: Some(0), ..Default::default() }, Some(a.ctime)).is_ok());
    assert_eq!(
        t.call(Request::SetAttr { fh: t.root(), attrs: SetAttrs { size: Some(0), ..Default::default() }, guard: None }),
        Err(Errno::EISDIR)
    );
    let md = std::fs::metadata(t.path("f")).unwrap();
    assert_eq!((md.len(), md.uid()), (0, 1234));
}

#[test]
fn lookup_and_dots() {
    let t = T::new();
    std::fs::create_dir_all(t.path("a/b")).unwrap();
    std::fs::write(t.path("a/file"), b"").unwrap();
    let root = t.root();
    assert_eq!(t.lookup(&root, "missing").err(), Some(Errno::ENOENT));
    let (a, attr) = t.lookup(&root, "a").unwrap();
    assert_eq!(attr.kind, FileKind::Directory);
    let (b, _) = t.lookup(&a, "b").unwrap();
    assert_eq!(t.lookup(&b, "..").unwrap().0, a);
    assert_eq!(t.lookup(&a, "..").unwrap().0, root);
    assert_eq!(t.lookup(&a, ".").unwrap().0, a);
    // `..` at the export root stays at the root.
    assert_eq!(t.lookup(&root, "..").unwrap().0, root);
    let (f, _) = t.lookup(&a, "file").unwrap();
    assert_eq!(t.lookup(&f, "x").err(), Some(Errno::ENOTDIR));
    // Crafted names.
    assert_eq!(t.lookup(&root, "a/b").err(), Some(Errno::EINVAL));
    assert_eq!(t.call(Request::Lookup { dir: root.clone(), name: b"a\0b".to_vec() }).err(), Some(Errno::EINVAL));
    assert_eq!(t.lookup(&root, &"x".repeat(256)).err(), Some(Errno::ENAMETOOLONG));
    assert_eq!(t.lookup(&root, "").err(), Some(Errno::ENOENT));
}

#[test]
fn symlinks_are_never_followed() {
    let t = T::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::fs::set_permissions(outside.path().join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = t.root();
    let secret = outside.path().join("secret");
    let Response::Created { fh: link, attr, .. } = t
        .call(Request::Symlink {
            dir: root.clone(),
            name: b"l".to_vec(),
            target: secret.as_os_str().as_encoded_bytes().to_vec(),
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(attr.kind, FileKind::Symlink);
    std::os::unix::fs::symlink(outside.path(), t.path("dirlink")).unwrap();
    let (dl, a) = t.lookup(&root, "dirlink").unwrap();
    assert_eq!(a.kind, FileKind::Symlink);
    assert_eq!(t.lookup(&dl, "secret").err(), Some(Errno::ENOTDIR));
    let Response::ReadLink { target } = t.call(Request::ReadLink { fh: link.clone() }).unwrap() else { panic!() };
    assert_eq!(target, secret.as_os_str().as_encoded_bytes());
    // No data operation reaches through the link.
    assert_eq!(t.read(&link, 0, 10).err(), Some(Errno::EINVAL));
    assert_eq!(t.write(&link, 0, b"pwned").err(), Some(Errno::EINVAL));
    let trunc = SetAttrs { size: Some(0), ..Default::default() };
    assert_eq!(t.call(Request::SetAttr { fh: link.clone(), attrs: trunc, guard: None }).err(), Some(Errno::EINVAL));
    let _ = t.call(Request::SetAttr {
        fh: link.clone(),
        attrs: SetAttrs { mode: Some(0o777), ..Default::default() },
        guard: None,
    });
    let _ = t.call(Request::SetXattr { fh: link.clone(), name: b"user.x".to_vec(), value: b"v".to_vec(), flags: 0 });
    // An existing symlink is not opened by an unchecked create either.
    assert_eq!(mk_named(&t, "l", CreateHow::Unchecked).err(), Some(Errno::EEXIST));
    assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
    let md = std::fs::metadata(&secret).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert!(xattr_absent(&secret));
    assert_eq!(t.call(Request::ReadLink { fh: root }).err(), Some(Errno::EINVAL));
}

fn xattr_absent(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is NUL-terminated; a null buffer of size 0 only asks for the length.
    let n = unsafe { libc::getxattr(c.as_ptr(), c"user.x".as_ptr(), std::ptr::null_mut(), 0) };
    n < 0
}

#[test]
fn forged_handles_are_refused() {
    let t = T::new();
    let fh = t.create("f");
    let mut forged = fh.clone();
    let last = forged.0.len() - 1;
    forged.0[last] ^= 0x80;
    assert_eq!(t.getattr(&forged).err(), Some(Errno::BADHANDLE));
    assert_eq!(t.read(&forged, 0, 1).err(), Some(Errno::BADHANDLE));
    assert_eq!(t.getattr(&FileHandle(vec![1; 40])).err(), Some(Errno::BADHANDLE));
    assert_eq!(t.getattr(&FileHandle(vec![])).err(), Some(Errno::BADHANDLE));
    // A well-formed handle of an object outside the export, made with another key.
    let outside = tempfile::tempdir().unwrap();
    let other = Server::new(&Config::new(outside.path().into(), outside.path().join("state"))).unwrap();
    assert_eq!(t.getattr(other.root()).err(), Some(Errno::BADHANDLE));
}

#[test]
fn handles_survive_a_restart() {
    let t = T::new();
    std::fs::create_dir(t.path("d")).unwrap();
    let (d, _) = t.lookup(&t.root(), "d").unwrap();
    let f = t.create_as(&ROOT, &d, "f", 0o644).unwrap();
    t.write(&f, 0, b"persist").unwrap();
    let old_verifier = t.srv.write_verifier();
    let mut cfg = Config::new(t.export.path().into(), t.state.path().into());
    cfg.root_squash = false;
    let restarted = Server::new(&cfg).unwrap();
    assert_ne!(restarted.write_verifier(), old_verifier, "a new instance has a new write verifier");
    assert_eq!(restarted.root(), t.srv.root());
    let reply = restarted.handle_call(Call {
        xid: 1,
        client: 1,
        cred: ROOT,
        req: Request::Read { fh: f, offset: 0, count: 100 },
    });
    let Some(Reply { res: Ok(Response::Read { data, .. }), .. }) = reply else { panic!("{reply:?}") };
    assert_eq!(data, b"persist");
}

#[test]
fn deleted_objects_are_stale() {
    let t = T::new();
    let f = t.create("f");
    std::fs::create_dir(t.path("d")).unwrap();
    let (d, _) = t.lookup(&t.root(), "d").unwrap();
    t.call(Request::Remove { dir: t.root(), name: b"f".to_vec() }).unwrap();
    assert_eq!(t.getattr(&f).err(), Some(Errno::ESTALE));
    assert_eq!(t.read(&f, 0, 1).err(), Some(Errno::ESTALE));
    std::fs::remove_dir(t.path("d")).unwrap();
    assert_eq!(t.getattr(&d).err(), Some(Errno::ESTALE));
    assert_eq!(t.lookup(&d, "x").err(), Some(Errno::ESTALE));
}

#[test]
fn remove_rmdir_errors() {
    let t = T::new();
    let root = t.root();
    std::fs::create_dir_all(t.path("d/sub")).unwrap();
    t.create("f");
    let rm = |name: &str| t.call(Request::Remove { dir: root.clone(), name: name.into() });
    let rmdir = |name: &str| t.call(Request::Rmdir { dir: root.clone(), name: name.into() });
    assert_eq!(rm("missing").err(), Some(Errno::ENOENT));
    assert_eq!(rm("d").err(), Some(Errno::EISDIR));
    assert_eq!(rmdir("d").err(), Some(Errno::ENOTEMPTY));
    assert_eq!(rmdir("f").err(), Some(Errno::ENOTDIR));
    assert!(rmdir(".").is_err());
    assert!(rmdir("..").is_err());
    let Response::Wcc(w) = rm("f").unwrap() else { panic!() };
    assert!(w.before.is_some() && w.after.is_some());
    let (d, _) = t.lookup(&root, "d").unwrap();
    t.call(Request::Rmdir { dir: d, name: b"sub".to_vec() }).unwrap();
    rmdir("d").unwrap();
    assert!(!t.path("d").exists() && !t.path("f").exists());
}

#[test]
fn mkdir_mknod_symlink() {
    let t = T::new();
    let root = t.root();
    let Response::Created { attr, .. } =
        t.call(Request::Mkdir { dir: root.clone(), name: b"d".to_vec(), mode: 0o750 }).unwrap()
    else {
        panic!()
    };
    assert_eq!((attr.kind, attr.mode), (FileKind::Directory, 0o750));
    assert_eq!(
        t.call(Request::Mkdir { dir: root.clone(), name: b"d".to_vec(), mode: 0o750 }).err(),
        Some(Errno::EEXIST)
    );
    assert_eq!(
        t.call(Request::Mkdir { dir: root.clone(), name: b"..".to_vec(), mode: 0o750 }).err(),
        Some(Errno::EEXIST)
    );
    for (name, kind, want) in [("fifo", NodeKind::Fifo, FileKind::Fifo), ("sock", NodeKind::Socket, FileKind::Socket)] {
        let Response::Created { attr, .. } =
            t.call(Request::Mknod { dir: root.clone(), name: name.into(), mode: 0o600, kind }).unwrap()
        else {
            panic!()
        };
        assert_eq!(attr.kind, want);
    }
    // Devices: allowed to an unsquashed root, refused to anyone else.
    let null = libc::makedev(1, 3);
    let Response::Created { attr, .. } = t
        .call(Request::Mknod {
            dir: root.clone(),
            name: b"null".to_vec(),
            mode: 0o666,
            kind: NodeKind::CharDevice(null),
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((attr.kind, attr.rdev), (FileKind::CharDevice, null));
    let req =
        Request::Mknod { dir: root.clone(), name: b"null2".to_vec(), mode: 0o666, kind: NodeKind::CharDevice(null) };
    assert_eq!(t.call_as(&user(1000), req).err(), Some(Errno::EPERM));
    assert_eq!(t.call(Request::Symlink { dir: root, name: b"s".to_vec(), target: vec![] }).err(), Some(Errno::ENOENT));
}

#[test]
fn rename_flavours() {
    let t = T::new();
    let root = t.root();
    std::fs::write(t.path("a"), b"A").unwrap();
    std::fs::write(t.path("b"), b"B").unwrap();
    std::fs::create_dir_all(t.path("d/full")).unwrap();
    std::fs::write(t.path("d/full/x"), b"").unwrap();
    std::fs::create_dir(t.path("e")).unwrap();
    let (d, _) = t.lookup(&root, "d").unwrap();
    let mv = |from: &str, to_dir: &FileHandle, to: &str, flags| {
        t.call(Request::Rename {
            from_dir: root.clone(),
            from: from.into(),
            to_dir: to_dir.clone(),
            to: to.into(),
            flags,
        })
    };
    assert_eq!(mv("a", &root, "b", RENAME_NOREPLACE).err(), Some(Errno::EEXIST));
    mv("a", &root, "b", RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read(t.path("a")).unwrap(), b"B");
    let Response::Rename { from, to } = mv("a", &d, "moved", 0).unwrap() else { panic!() };
    assert!(from.after.is_some() && to.after.is_some());
    assert_eq!(std::fs::read(t.path("d/moved")).unwrap(), b"B");
    assert_eq!(mv("missing", &root, "x", 0).err(), Some(Errno::ENOENT));
    let (e, _) = t.lookup(&root, "e").unwrap();
    assert_eq!(
        t.call(Request::Rename {
            from_dir: root.clone(),
            from: b"e".to_vec(),
            to_dir: d.clone(),
            to: b"full".to_vec(),
            flags: 0
        })
        .err(),
        Some(Errno::ENOTEMPTY)
    );
    // A directory into its own subtree.
    assert_eq!(
        t.call(Request::Rename { from_dir: root.clone(), from: b"e".to_vec(), to_dir: e, to: b"x".to_vec(), flags: 0 })
            .err(),
        Some(Errno::EINVAL)
    );
}

#[test]
fn hard_links() {
    let t = T::new();
    let f = t.create("f");
    std::fs::create_dir(t.path("d")).unwrap();
    let (d, _) = t.lookup(&t.root(), "d").unwrap();
    let Response::Link { attr, dir } =
        t.call(Request::Link { fh: f.clone(), dir: d.clone(), name: b"g".to_vec() }).unwrap()
    else {
        panic!()
    };
    assert_eq!(attr.nlink, 2);
    assert!(dir.after.is_some());
    assert_eq!(t.call(Request::Link { fh: f, dir: d.clone(), name: b"g".to_vec() }).err(), Some(Errno::EEXIST));
    assert_eq!(t.call(Request::Link { fh: d.clone(), dir: t.root(), name: b"dl".to_vec() }).err(), Some(Errno::EPERM));
}

#[test]
fn readdir_pages_through_everything() {
    let t = T::new();
    for i in 0..500 {
        std::fs::write(t.path(&format!("file-{i:04}")), b"").unwrap();
    }
    std::fs::create_dir(t.path("sub")).unwrap();
    for plus in [false, true] {
        let entries = t.readdir(&t.root(), plus, 4096);
        let mut names: Vec<String> = entries.iter().map(|e| String::from_utf8(e.name.clone()).unwrap()).collect();
        names.sort();
        assert_eq!(names.len(), 503, "500 files, sub, . and ..");
        names.dedup();
        assert_eq!(names.len(), 503, "no entry twice");
        let sub = entries.iter().find(|e| e.name == b"sub").unwrap();
        assert_eq!(sub.kind, Some(FileKind::Directory));
        if plus {
            let (fh, attr) = sub.plus.clone().expect("handle and attributes");
            assert_eq!(t.getattr(&fh).unwrap(), attr);
            assert!(entries.iter().filter(|e| e.name == b"." || e.name == b"..").all(|e| e.plus.is_none()));
        }
    }
    // A cookie with another directory's verifier is refused.
    std::fs::write(t.path("sub/x"), b"").unwrap();
    let (sub, _) = t.lookup(&t.root(), "sub").unwrap();
    let Response::Dir { verifier, entries, .. } =
        t.call(Request::ReadDir { dir: t.root(), cookie: 0, verifier: 0, count: 1024 }).unwrap()
    else {
        panic!()
    };
    let cookie = entries[0].cookie;
    assert_eq!(
        t.call(Request::ReadDir { dir: sub.clone(), cookie, verifier, count: 1024 }).err(),
        Some(Errno::BAD_COOKIE)
    );
    assert_eq!(
        t.call(Request::ReadDir { dir: t.create("plain"), cookie: 0, verifier: 0, count: 1024 }).err(),
        Some(Errno::ENOTDIR)
    );
}

#[test]
fn fsstat_and_time() {
    let t = T::new();
    let Response::FsStat(s) = t.call(Request::FsStat { fh: t.root() }).unwrap() else { panic!() };
    assert!(s.total_bytes > 0 && s.avail_bytes <= s.total_bytes && s.namemax == 255);
    let Response::Time { now } = t.call(Request::Time).unwrap() else { panic!() };
    let local = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now.sec - local).abs() <= 2);
}

#[test]
fn xattrs() {
    let t = T::new();
    let f = t.create("f");
    let set = |name: &str, value: &[u8], flags| {
        t.call(Request::SetXattr { fh: f.clone(), name: name.into(), value: value.to_vec(), flags })
    };
    set("user.a", b"1", 0).unwrap();
    set("user.b", b"22", XATTR_CREATE).unwrap();
    assert_eq!(set("user.b", b"x", XATTR_CREATE).err(), Some(Errno::EEXIST));
    assert_eq!(set("user.c", b"x", XATTR_REPLACE).err(), Some(Errno::ENODATA));
    assert_eq!(
        t.call(Request::GetXattr { fh: f.clone(), name: b"user.b".to_vec() }),
        Ok(Response::Xattr(b"22".to_vec()))
    );
    assert_eq!(t.call(Request::GetXattr { fh: f.clone(), name: b"user.zz".to_vec() }).err(), Some(Errno::ENODATA));
    let Response::Xattr(list) = t.call(Request::ListXattr { fh: f.clone() }).unwrap() else { panic!() };
    assert_eq!(list, b"user.a\0user.b\0");
    t.call(Request::RemoveXattr { fh: f.clone(), name: b"user.a".to_vec() }).unwrap();
    assert_eq!(t.call(Request::RemoveXattr { fh: f.clone(), name: b"user.a".to_vec() }).err(), Some(Errno::ENODATA));
    assert_eq!(set("user.big", &vec![0; 70_000], 0).err(), Some(Errno::E2BIG));
}

#[test]
fn fallocate() {
    let t = T::new();
    let f = t.create("f");
    let Response::Wcc(w) = t.call(Request::Fallocate { fh: f.clone(), mode: 0, offset: 0, len: 1 << 20 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(w.after.unwrap().size, 1 << 20);
    t.call(Request::Fallocate { fh: f.clone(), mode: libc::FALLOC_FL_KEEP_SIZE as u32, offset: 1 << 20, len: 1 << 20 })
        .unwrap();
    let a = t.getattr(&f).unwrap();
    assert_eq!(a.size, 1 << 20);
    assert!(a.used >= 2 << 20);
}

#[test]
fn permissions_follow_the_caller() {
    let t = T::new();
    std::fs::write(t.path("private"), b"mine").unwrap();
    chown(&t.path("private"), 1000);
    std::fs::set_permissions(t.path("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(t.path("home")).unwrap();
    chown(&t.path("home"), 1000);
    std::fs::set_permissions(t.path("home"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = t.fh("private");
    let (home, _) = t.lookup(&t.root(), "home").unwrap();
    assert_eq!(t.read_as(&user(1000), &f, 0, 10).unwrap().0, b"mine");
    assert_eq!(t.read_as(&user(2000), &f, 0, 10).err(), Some(Errno::EACCES));
    assert_eq!(t.create_as(&user(2000), &home, "x", 0o644).err(), Some(Errno::EACCES));
    let mine = t.create_as(&user(1000), &home, "x", 0o644).unwrap();
    assert_eq!(t.getattr(&mine).unwrap().uid, 1000);
    // Supplementary groups count.
    std::fs::set_permissions(t.path("private"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let member = Cred { uid: 3000, gid: 3000, groups: vec![1000] };
    assert!(t.read_as(&member, &f, 0, 10).is_ok());
    let Response::Access { granted, .. } = t.call_as(&user(2000), Request::Access { fh: f.clone(), mask: 7 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(granted, 0);
    let Response::Access { granted, .. } = t.call_as(&user(1000), Request::Access { fh: f.clone(), mask: 7 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(granted, ACCESS_R | ACCESS_W);
    // chmod by a stranger.
    let chmod =
        Request::SetAttr { fh: f.clone(), attrs: SetAttrs { mode: Some(0o777), ..Default::default() }, guard: None };
    assert_eq!(t.call_as(&user(2000), chmod).err(), Some(Errno::EPERM));
    // The owner may write a file it made read-only (knfsd's owner override).
    let ro = t.create_as(&user(1000), &home, "ro", 0o444).unwrap();
    let w = Request::Write { fh: ro, offset: 0, stable: Stable::Unstable, fence: 0, data: b"ok".to_vec() };
    assert!(t.call_as(&user(1000), w).is_ok());
}

#[test]
fn root_is_squashed_by_default() {
    let t = T::with(|c| c.root_squash = true);
    std::fs::create_dir(t.path("rootonly")).unwrap();
    std::fs::set_permissions(t.path("rootonly"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (d, _) = t.lookup(&t.root(), "rootonly").unwrap();
    assert_eq!(t.create_as(&ROOT, &d, "x", 0o644).err(), Some(Errno::EACCES));
    let f = t.create_as(&ROOT, &t.root(), "y", 0o644).unwrap();
    assert_eq!(t.getattr(&f).unwrap().uid, 65534);
}

#[test]
fn read_only_refuses_every_change() {
    let t = T::with(|c| c.read_only = true);
    std::fs::write(t.path("f"), b"data").unwrap();
    let f = t.fh("f");
    let root = t.root();
    assert_eq!(t.read(&f, 0, 10).unwrap().0, b"data");
    let changes = [
        Request::Write { fh: f.clone(), offset: 0, stable: Stable::Unstable, fence: 0, data: b"x".to_vec() },
        Request::Create { dir: root.clone(), name: b"n".to_vec(), mode: 0o644, how: CreateHow::Guarded },
        Request::Mkdir { dir: root.clone(), name: b"n".to_vec(), mode: 0o755 },
        Request::Remove { dir: root.clone(), name: b"f".to_vec() },
        Request::Rename {
            from_dir: root.clone(),
            from: b"f".to_vec(),
            to_dir: root.clone(),
            to: b"g".to_vec(),
            flags: 0,
        },
        Request::SetAttr { fh: f.clone(), attrs: SetAttrs { size: Some(0), ..Default::default() }, guard: None },
        Request::SetXattr { fh: f.clone(), name: b"user.a".to_vec(), value: vec![], flags: 0 },
        Request::Link { fh: f.clone(), dir: root.clone(), name: b"l".to_vec() },
        Request::Fallocate { fh: f.clone(), mode: 0, offset: 0, len: 10 },
    ];
    for req in changes {
        let name = req.name();
        assert_eq!(t.call(req).err(), Some(Errno::EROFS), "{name}");
    }
    let Response::Access { granted, .. } = t.call(Request::Access { fh: f, mask: 7 }).unwrap() else { panic!() };
    assert_eq!(granted & ACCESS_W, 0);
    assert_eq!(std::fs::read(t.path("f")).unwrap(), b"data");
}

/// RFC 1813, section 4.4: a retransmitted non-idempotent call gets the first reply.
#[test]
fn retransmissions_get_the_first_reply() {
    let t = T::new();
    let root = t.root();
    let create = Request::Create { dir: root.clone(), name: b"f".to_vec(), mode: 0o644, how: CreateHow::Guarded };
    let first = t.call_xid(&ROOT, 100, create.clone());
    assert!(first.is_ok());
    assert_eq!(t.call_xid(&ROOT, 100, create.clone()), first);
    assert_eq!(t.call_xid(&ROOT, 101, create).err(), Some(Errno::EEXIST), "a new xid is a new call");

    let rename = Request::Rename {
        from_dir: root.clone(),
        from: b"f".to_vec(),
        to_dir: root.clone(),
        to: b"g".to_vec(),
        flags: 0,
    };
    let first = t.call_xid(&ROOT, 200, rename.clone());
    assert!(first.is_ok());
    assert_eq!(t.call_xid(&ROOT, 200, rename.clone()), first);
    assert_eq!(t.call_xid(&ROOT, 201, rename).err(), Some(Errno::ENOENT));

    let remove = Request::Remove { dir: root.clone(), name: b"g".to_vec() };
    let first = t.call_xid(&ROOT, 300, remove.clone());
    assert!(first.is_ok());
    assert_eq!(t.call_xid(&ROOT, 300, remove.clone()), first);
    assert_eq!(t.call_xid(&ROOT, 301, remove).err(), Some(Errno::ENOENT));
}

/// A file system mounted inside the export is not part of it (EXDEV-style cases).
#[test]
fn other_file_systems_are_not_crossed() {
    let t = T::new();
    std::fs::create_dir(t.path("mnt")).unwrap();
    std::fs::write(t.path("f"), b"").unwrap();
    let target = std::ffi::CString::new(t.path("mnt").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings; a tmpfs mount on our own temporary folder.
    let rc = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
    // Never a silent skip: a machine where this cannot run fails the test, saying why.
    assert_eq!(rc, 0, "cannot run here: mounting a tmpfs needs root ({})", std::io::Error::last_os_error());
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: valid NUL-terminated path; MNT_DETACH never blocks.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _guard = Unmount(target);
    assert_eq!(t.lookup(&t.root(), "mnt").err(), Some(Errno::EXDEV));
    let entries = t.readdir(&t.root(), true, 4096);
    let mnt = entries.iter().find(|e| e.name == b"mnt").unwrap();
    assert!(mnt.plus.is_none(), "no handle across the mount");
}

/// Fencing: the newest fencing number is kept with the file (in an extended attribute,
/// so a restarted server still knows it); a write under an older number is refused.
#[test]
fn writes_under_a_stale_fence_are_refused() {
    let t = T::new();
    let f = t.create("fenced");
    let w = |fence: u64, data: &[u8]| {
        t.call(Request::Write { fh: f.clone(), offset: 0, stable: Stable::Unstable, fence, data: data.to_vec() })
    };
    assert!(w(5, b"a").is_ok());
    assert!(w(5, b"b").is_ok(), "the same lease may write again");
    assert_eq!(w(3, b"c").err(), Some(Errno::ENOLCK), "an older lease is refused");
    assert!(w(0, b"d").is_ok(), "unfenced writes are not checked");
    assert!(w((1 << 32) + 1, b"e").is_ok(), "a regenerated token's new epoch");
    assert_eq!(w(6, b"f").err(), Some(Errno::ENOLCK));
    assert_eq!(std::fs::read(t.path("fenced")).unwrap(), b"e");
    // Clients can neither read nor forge the server's fence.
    let get = Request::GetXattr { fh: f.clone(), name: b"trusted.fs.fence".to_vec() };
    assert_eq!(t.call(get).err(), Some(Errno::EPERM));
    let set = Request::SetXattr { fh: f.clone(), name: b"trusted.fs.fence".to_vec(), value: vec![0; 8], flags: 0 };
    assert_eq!(t.call(set).err(), Some(Errno::EPERM));
}

/// A fence attribute that cannot be read (here: 3 bytes, not 8) refuses fenced writes:
/// read as 0 it would silently turn fencing off for the file.
#[test]
fn an_unreadable_fence_refuses_fenced_writes() {
    let t = T::new();
    let f = t.create("fenced");
    let path = std::ffi::CString::new(t.path("fenced").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a 3-byte value.
    let rc = unsafe { libc::setxattr(path.as_ptr(), c"trusted.fs.fence".as_ptr(), b"abc".as_ptr().cast(), 3, 0) };
    assert_eq!(rc, 0, "setting a trusted attribute needs root: {}", std::io::Error::last_os_error());
    let w = |fence: u64| {
        t.call(Request::Write { fh: f.clone(), offset: 0, stable: Stable::Unstable, fence, data: b"x".to_vec() })
    };
    assert_eq!(w(7).err(), Some(Errno::EIO));
    assert!(w(0).is_ok(), "unfenced writes are not checked");
}

/// A panicking operation costs its own call a SERVERFAULT, nothing more: a
/// retransmission of that call gets the same answer (not silence), and the calls after
/// it are served.
#[test]
fn a_panic_costs_one_call() {
    let t = T::new();
    let root = t.root();
    let mkdir = Request::Mkdir { dir: root.clone(), name: b"d".to_vec(), mode: 0o755 };
    t.srv.panic_on_next_call();
    assert_eq!(t.call_xid(&ROOT, 900, mkdir.clone()).err(), Some(Errno::SERVERFAULT));
    assert_eq!(t.call_xid(&ROOT, 900, mkdir.clone()).err(), Some(Errno::SERVERFAULT), "the retransmission is answered");
    assert!(t.call_xid(&ROOT, 901, mkdir).is_ok(), "the next call is served");
    t.srv.panic_on_next_call();
    assert_eq!(t.call(Request::GetAttr { fh: root.clone() }).err(), Some(Errno::SERVERFAULT));
    for _ in 0..3 {
        assert!(t.call(Request::GetAttr { fh: root.clone() }).is_ok());
        assert!(t
            .call(Request::Create { dir: root.clone(), name: b"f".to_vec(), mode: 0o644, how: CreateHow::Unchecked })
            .is_ok());
    }
}
