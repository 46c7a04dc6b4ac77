//! Keys (`fs-server --key`, `-o key=FILE`) and Unix-socket peer credentials, end to end:
//! mounts with the key work (encrypted and authenticated-only), and every stranger is
//! refused while the server goes on serving the others: no key, a wrong key, a replayed
//! handshake, a flipped bit, a frame resent by a man in the middle, a non-root peer on a
//! Unix socket calling as someone else.

use fs_proto::secure::{self, Key, Protection};
use fs_proto::{encode_frame, Call, Cred, Errno, Request, Response};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::rpc::Conn;
use tests::*;

fn keys() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let (k, wrong) = (d.path().join("key"), d.path().join("wrong"));
    for p in [&k, &wrong] {
        let out = command(&bin_path("fs-server")).arg("keygen").arg(p).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    (d, k, wrong)
}

/// `fs-client mount` that is expected to fail: its one-line error.
fn mount_fails(addr: &str, mp: &Path, opts: &str) -> String {
    std::fs::create_dir_all(mp).unwrap();
    let _guard = MountGuard::new(mp);
    let mut cmd = command(&bin_path("fs-client"));
    cmd.args(["mount", addr]).arg(mp).args(["-o", opts]);
    let (status, stdout, stderr) = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(!status.success(), "mounted without the right key: {stdout}");
    assert!(!is_mounted(mp));
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("fs-client:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
    lines[0].to_string()
}

/// The lines of the server's log that mention a refusal of a peer.
fn refusals(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| (l.contains("refused") || l.contains("failed authentication")) && l.contains("127.0.0.1:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn mounts_with_the_key_work_and_mounts_without_it_are_refused() {
    let _w = Watchdog::new(Duration::from_secs(240));
    let (kd, key, wrong) = keys();
    let opts = format!("key={}", key.display());
    let rig = Rig::with_server(&opts, Squash::Root, &["--key", key.to_str().unwrap()]);
    // An ordinary user writes through the encrypted mount; another mount, authenticated
    // only, reads it back in pieces.
    sh_as_user(&rig.mnt(USER_DIR), "head -c 3000000 /dev/urandom > f; sync");
    let mut reader = rig.second_mount("mnt2", &format!("{opts},noencrypt"));
    let want = std::fs::read(rig.export("user/f")).unwrap();
    let got =
        sh_as_user(&reader.path(USER_DIR), "dd if=f bs=4096 skip=100 count=3 status=none | od -An -tx1 | tr -d ' \\n'");
    let expect: String = want[409_600..409_600 + 12_288].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, expect, "a partial read through the second mount");
    assert_eq!(std::fs::read(reader.path("user/f")).unwrap(), want);
    assert!(mount_status(&rig.mount.mountpoint).contains("key handshake, encrypted"));
    assert!(mount_status(&reader.mountpoint).contains("key handshake, authenticated, not encrypted"));

    let mp = rig.dirs.path().join("stranger");
    let e = mount_fails(&rig.server.addr, &mp, "");
    assert!(e.contains("authentication required"), "{e}");
    let e = mount_fails(&rig.server.addr, &mp, &format!("key={}", wrong.display()));
    assert!(e.contains("refused our key"), "{e}");
    // An exposed key file is refused before anything is sent.
    let exposed = kd.path().join("exposed");
    std::fs::copy(&key, &exposed).unwrap();
    std::fs::set_permissions(&exposed, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let e = mount_fails(&rig.server.addr, &mp, &format!("key={}", exposed.display()));
    assert!(e.contains("chmod 600"), "{e}");

    // The server went on serving the mounts that hold the key.
    sh_as_user(&rig.mnt(USER_DIR), "echo still > g");
    wait_until(Duration::from_secs(10), "the second mount sees g", || {
        std::fs::read_to_string(reader.path("user/g")).is_ok_and(|s| s == "still\n")
    });
    reader.unmount();
}

#[test]
fn a_key_offered_to_a_server_without_one_is_refused_with_a_reason() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let (_kd, key, _) = keys();
    let rig = Rig::new("");
    let e = mount_fails(&rig.server.addr, &rig.dirs.path().join("m"), &format!("key={}", key.display()));
    assert!(e.contains("without --key"), "{e}");
}

/// Writes a copy of everything sent to a recording (the man in the middle's view).
struct Tap(TcpStream, Arc<Mutex<Vec<u8>>>);

impl Write for Tap {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.1.lock().unwrap().extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

struct Duplex<R, W>(R, W);

impl<R: Read, W> Read for Duplex<R, W> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl<R, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

/// Everything the server sends until it closes the connection (or 10 s pass). A close
/// with bytes of ours unread is a reset, which may also drop some of what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

#[test]
fn replays_tampering_and_strangers_on_the_wire_are_refused() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let (_kd, key_path, _) = keys();
    let key = Key::load(&key_path).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    for d in ["export", "state"] {
        std::fs::create_dir(dirs.path().join(d)).unwrap();
    }
    let log = dirs.path().join("server.log");
    let server = ServerProc::start_logged(
        &dirs.path().join("export"),
        &dirs.path().join("state"),
        "127.0.0.1:0",
        &["--key", key_path.to_str().unwrap()],
        &log,
    );
    let addr = server.addr.clone();

    for p in [Protection::Encrypt, Protection::Authenticate] {
        // A client with the key, recorded by a man in the middle.
        let rec = Arc::new(Mutex::new(Vec::new()));
        let s = TcpStream::connect(&addr).unwrap();
        let mut duplex = Duplex(s.try_clone().unwrap(), Tap(s.try_clone().unwrap(), rec.clone()));
        let session = secure::initiate(&mut duplex, &key, p).unwrap();
        let mut conn = Conn::from_halves(
            Box::new(session.reader(s.try_clone().unwrap())),
            Box::new(session.writer(Tap(s.try_clone().unwrap(), rec.clone()))),
        );
        let handshake_len = rec.lock().unwrap().len();
        assert!(matches!(conn.call(Request::Mount { path: "/".into() }), Ok(Response::Mount { .. })));
        let recorded = rec.lock().unwrap().clone();
        let call_record = recorded[handshake_len..].to_vec();

        // The same record sent again on its connection: it does not open (its number
        // is past), and the connection closes without an answer.
        let before = refusals(&log).len();
        let mut raw = s.try_clone().unwrap();
        raw.write_all(&call_record).unwrap();
        assert!(read_to_close(&mut raw).is_empty(), "{p:?}: a resent frame was answered");
        wait_until(Duration::from_secs(10), "the server logs the resent frame", || refusals(&log).len() > before);

        // The whole conversation replayed on a new connection: the server answers the
        // handshake with a fresh ephemeral key, the old confirmation does not open under
        // it, and nothing is served.
        let before = refusals(&log).len();
        let mut replay = TcpStream::connect(&addr).unwrap();
        replay.write_all(&recorded).unwrap();
        let got = read_to_close(&mut replay);
        assert!(got.len() <= 2 + 48, "{p:?}: nothing but the server's handshake message comes back");
        wait_until(Duration::from_secs(10), "the server logs the replay", || {
            refusals(&log).len() > before
                && refusals(&log).last().is_some_and(|l| l.contains("did not complete the key handshake"))
        });

        // A bit flipped in a call: refused, the connection closed, no answer.
        let before = refusals(&log).len();
        let mut s = TcpStream::connect(&addr).unwrap();
        let session = secure::initiate(&mut s, &key, p).unwrap();
        let call = Call {
            xid: 1,
            client: 9,
            cred: Cred { uid: 0, gid: 0, groups: vec![] },
            req: Request::Mount { path: "/".into() },
        };
        let mut sealed = Vec::new();
        session.writer(&mut sealed).write_all(&encode_frame(&call).unwrap()).unwrap();
        let last = sealed.len() - 20;
        sealed[last] ^= 0x10;
        s.write_all(&sealed).unwrap();
        assert!(read_to_close(&mut s).is_empty(), "{p:?}: a tampered frame was answered");
        wait_until(Duration::from_secs(10), "the server logs the tampered frame", || refusals(&log).len() > before);
    }

    // A client without the key gets AUTH and a closed connection.
    let mut plain = Conn::connect(&addr).unwrap();
    assert_eq!(plain.call(Request::Mount { path: "/".into() }).err(), Some(Errno::AUTH));
    assert!(plain.recv().is_err(), "the connection is closed after the refusal");

    // And the server still serves those with the key.
    let mut good = Conn::connect_with_key(&addr, &key, Protection::Encrypt).unwrap();
    let root = good.mount();
    assert!(good.call(Request::GetAttr { fh: root }).is_ok());
    let lines = refusals(&log);
    assert!(lines.len() >= 7, "every refusal is logged with its peer:\n{}", lines.join("\n"));
}

/// Runs `f` on a thread whose effective ids are `uid`:`gid` (raw setresuid(2) and
/// setresgid(2) change only the calling thread), as an ordinary user's process would
/// connect: SO_PEERCRED records the connecting thread's credentials.
fn as_thread_user<T: Send + 'static>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: raw system calls on this thread's own credentials; -1 keeps an id.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32), 0);
        }
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn a_peer_on_a_unix_socket_that_is_not_root_calls_only_as_itself() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let dirs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dirs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for d in ["export", "state"] {
        std::fs::create_dir(dirs.path().join(d)).unwrap();
    }
    std::fs::write(dirs.path().join("export/secret"), "root's\n").unwrap();
    std::fs::set_permissions(dirs.path().join("export/secret"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap();
    let sock = dirs.path().join("sock");
    let server =
        ServerProc::start(&dirs.path().join("export"), &dirs.path().join("state"), sock.to_str().unwrap(), &[]);
    let addr = server.addr.clone();
    let cred = |uid, gid| Cred { uid, gid, groups: vec![] };
    let results = as_thread_user(USER, USER, move || {
        let mut c = Conn::connect(&addr).unwrap();
        c.cred = cred(USER, USER);
        let root = c.mount();
        let mut out = Vec::new();
        for (uid, gid) in [(USER, USER), (0, 0), (USER, 0), (USER + 1, USER)] {
            c.cred = cred(uid, gid);
            out.push(c.call(Request::Lookup { dir: root.clone(), name: "secret".into() }).err());
        }
        out
    });
    assert_eq!(results[0], None, "as itself: served (LOOKUP needs only the folder)");
    assert_eq!(&results[1..], &[Some(Errno::EPERM); 3], "as root, with another group, as another user");
    // Root's connections may call as anyone (a mount serves every user).
    let mut c = Conn::connect(&server.addr).unwrap();
    let root = c.mount();
    c.cred = cred(USER + 1, USER + 1);
    assert!(c.call(Request::Lookup { dir: root, name: "secret".into() }).is_ok());
}

/// Installs `/sbin/mount.fuse.fs` (a link to this build's `fs-client`) for the test and
/// removes it after, unless one was there already.
struct Helper(Option<PathBuf>);

impl Helper {
    fn install() -> Helper {
        let path = PathBuf::from("/sbin/mount.fuse.fs");
        let ours = bin_path("fs-client");
        match std::fs::read_link(&path) {
            Ok(to) if to == ours => Helper(None),
            Ok(to) => panic!("{} already links to {}: remove it to run this test", path.display(), to.display()),
            Err(_) if path.exists() => panic!("{} exists: remove it to run this test", path.display()),
            Err(_) => {
                std::os::unix::fs::symlink(&ours, &path).expect("install the mount helper");
                Helper(Some(path))
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The fstab line of the README with a key, through mount(8): `mount -a -T FILE` mounts
/// it (type `fuse.fs`, the server as the source), files cross, and `umount` ends it.
#[test]
fn an_fstab_line_with_a_key_mounts_through_mount_and_umount_ends_it() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let (_kd, key, _) = keys();
    let dirs = tempfile::tempdir().unwrap();
    for d in ["export", "state", "mnt"] {
        std::fs::create_dir(dirs.path().join(d)).unwrap();
    }
    let server = ServerProc::start(
        &dirs.path().join("export"),
        &dirs.path().join("state"),
        "127.0.0.1:0",
        &["--no-root-squash", "--key", key.to_str().unwrap()],
    );
    let mp = dirs.path().join("mnt");
    let _guard = MountGuard::new(&mp);
    let _helper = Helper::install();
    let fstab = dirs.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n{} {} fuse.fs _netdev,actimeo=5,key={} 0 0\n",
            server.addr,
            mp.display(),
            key.display()
        ),
    )
    .unwrap();
    let (st, _, err) = run_with_timeout(Command::new("mount").args(["-a", "-T"]).arg(&fstab), Duration::from_secs(30));
    assert!(st.success(), "mount -a -T: {err}");
    let line = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mp.to_str().unwrap()))
        .map(String::from)
        .expect("mounted");
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!((f[0], f[2]), (server.addr.as_str(), "fuse.fs"), "{line}");
    std::fs::write(mp.join("from-fstab"), b"keyed").unwrap();
    assert_eq!(std::fs::read(dirs.path().join("export/from-fstab")).unwrap(), b"keyed");
    assert!(mount_status(&mp).contains("key handshake, encrypted"));
    let (st, _, err) = run_with_timeout(Command::new("umount").arg(&mp), Duration::from_secs(30));
    assert!(st.success(), "umount: {err}");
    wait_until(Duration::from_secs(10), "unmounted", || !is_mounted(&mp));
}
