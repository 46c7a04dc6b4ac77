//! Passive redundancy of the file server end to end: a standby (`--standby-of`) follows
//! the primary, fences it when it is gone, and serves; mounts of `PRIMARY,STANDBY` carry
//! on. Retransmissions across the takeover get their first replies; a frozen primary
//! never writes again; a standby that cannot fence never serves; of two standbys exactly
//! one takes over and the other follows it.

use fs_proto::{CreateHow, Errno, FileHandle, Request, Response};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tests::rpc::Conn;
use tests::*;

/// An export and state folder, a primary on a free port, standbys on others.
struct Pair {
    dirs: tempfile::TempDir,
    primary: ServerProc,
    standbys: Vec<ServerProc>,
}

impl Pair {
    fn new(standbys: usize, standby_extra: &[&str]) -> Pair {
        Pair::with_primary(&[], standbys, standby_extra)
    }

    /// With `primary_extra` on the primary's command line.
    fn with_primary(primary_extra: &[&str], standbys: usize, standby_extra: &[&str]) -> Pair {
        let dirs = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dirs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for d in ["export", "state", "mnt"] {
            std::fs::create_dir(dirs.path().join(d)).unwrap();
        }
        // Root is squashed (the default): the export is open to everyone.
        std::fs::set_permissions(dirs.path().join("export"), std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let primary =
            ServerProc::start(&dirs.path().join("export"), &dirs.path().join("state"), &listen, primary_extra);
        let mut p = Pair { dirs, primary, standbys: Vec::new() };
        for _ in 0..standbys {
            p.add_standby(standby_extra);
        }
        p
    }

    fn add_standby(&mut self, extra: &[&str]) {
        let i = self.standbys.len();
        let s = ServerProc::start_standby(
            &self.path("export"),
            &self.path("state"),
            &format!("127.0.0.1:{}", free_port()),
            &self.primary.addr,
            extra,
            &self.path(&format!("standby{i}.log")),
        );
        self.standbys.push(s);
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dirs.path().join(rel)
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.path(&format!("standby{i}.log"))).unwrap_or_default()
    }

    /// Every server's address, the primary's first: what a mount lists.
    fn addrs(&self) -> String {
        std::iter::once(&self.primary).chain(&self.standbys).map(|s| s.addr.as_str()).collect::<Vec<_>>().join(",")
    }
}

fn serving(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child of this test.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// A mount writes a 200 MiB file and reads another while the primary is SIGKILLed after
/// a known part was written (and synced) and before the rest: no error, identical bytes,
/// and the longest pause is printed.
#[test]
fn a_mount_carries_on_when_the_primary_is_killed_mid_write_and_read() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let mut pair = Pair::new(1, &[]);
    let mut mount = MountProc::start(&pair.addrs(), &pair.path("mnt"), "");
    // The file to read, made in the export beforehand; the one to write, made here.
    let mib = 1 << 20;
    let pattern = |seed: u64, n: usize| -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let to_read = pattern(1, 64 * mib);
    std::fs::write(pair.path("export/old"), &to_read).unwrap();
    let to_write = pattern(2, 200 * mib);
    // The reader reads half its file, then waits until the primary is dead, then the
    // rest: it reads across the failover, however fast either side runs.
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let path = mount.path("old");
        std::thread::spawn(move || {
            let mut f = std::fs::File::open(path).unwrap();
            let (mut got, mut buf, mut worst, mut last) =
                (Vec::new(), vec![0u8; 256 << 10], Duration::ZERO, Instant::now());
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    return (got, worst);
                }
                let half = got.len() < 32 * (1 << 20);
                got.extend_from_slice(&buf[..n]);
                if half && got.len() >= 32 * (1 << 20) {
                    killed_rx.recv().unwrap();
                    last = Instant::now();
                }
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
        })
    };
    let mut f = std::fs::File::create(mount.path("new")).unwrap();
    let (mut worst, mut last) = (Duration::ZERO, Instant::now());
    for (i, chunk) in to_write.chunks(mib).enumerate() {
        if i == 64 {
            // 64 MiB written and on the server's disk; the rest not yet.
            f.sync_all().unwrap();
            pair.primary.kill();
            killed_tx.send(()).unwrap();
        }
        f.write_all(chunk).unwrap();
        worst = worst.max(last.elapsed());
        last = Instant::now();
    }
    f.sync_all().unwrap();
    drop(f);
    let (got, read_worst) = reader.join().unwrap();
    assert!(got == to_read, "the file read across the failover differs");
    let on_disk = std::fs::read(pair.path("export/new")).unwrap();
    assert_eq!(blake3::hash(&on_disk), blake3::hash(&to_write), "the file written across the failover differs");
    assert!(pair.log(0).contains("took over"), "{}", pair.log(0));
    eprintln!("failover pause: writer {worst:?}, reader {read_worst:?}");
    mount.unmount();
}

fn create(dir: &FileHandle, name: &str) -> Request {
    Request::Create { dir: dir.clone(), name: name.into(), mode: 0o644, how: CreateHow::Exclusive(7) }
}

/// CREATE, REMOVE and RENAME answered by the primary, then resent (same client, same
/// xids) to the standby after it took over: the first replies come back, not EEXIST or
/// ENOENT.
#[test]
fn retransmissions_across_a_takeover_get_their_first_replies() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let mut pair = Pair::new(1, &[]);
    std::fs::write(pair.path("export/doomed"), b"x").unwrap();
    std::fs::write(pair.path("export/a"), b"y").unwrap();
    let mut c = Conn::connect(&pair.primary.addr).unwrap();
    c.client = 0xfa11;
    let root = c.mount();
    let calls = [
        (100, create(&root, "made")),
        (101, Request::Remove { dir: root.clone(), name: b"doomed".to_vec() }),
        (
            102,
            Request::Rename {
                from_dir: root.clone(),
                from: b"a".to_vec(),
                to_dir: root.clone(),
                to: b"b".to_vec(),
                flags: 0,
            },
        ),
    ];
    let first: Vec<_> = calls.iter().map(|(xid, req)| c.call_xid(*xid, req.clone())).collect();
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    pair.primary.kill();
    let standby = pair.standbys[0].addr.clone();
    wait_until(Duration::from_secs(10), "the standby serves", || serving(&standby));
    let mut s = Conn::connect(&standby).unwrap();
    s.client = 0xfa11;
    for ((xid, req), want) in calls.iter().zip(&first) {
        let again = s.call_xid(*xid, req.clone());
        assert_eq!(&again, want, "{} resent across the takeover", req.name());
    }
    // A new call of the same kind is not a replay.
    assert_eq!(s.call(create(&root, "made")).err(), None, "an exclusive create with the same verifier");
    assert_eq!(s.call(Request::Remove { dir: root.clone(), name: b"doomed".to_vec() }).err(), Some(Errno::ENOENT));
}

/// The primary frozen (SIGSTOP): the standby fences it (SIGKILL) and serves; a write
/// sent to the frozen primary never lands, and after SIGCONT it is gone.
#[test]
fn a_frozen_primary_is_fenced_and_never_writes_again() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let mut pair = Pair::new(1, &[]);
    std::fs::write(pair.path("export/marker"), b"before\n").unwrap();
    std::fs::set_permissions(pair.path("export/marker"), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mut c = Conn::connect(&pair.primary.addr).unwrap();
    let root = c.mount();
    let fh = match c.call(Request::Lookup { dir: root, name: b"marker".to_vec() }) {
        Ok(Response::Lookup { fh, .. }) => fh,
        r => panic!("{r:?}"),
    };
    signal(pair.primary.pid(), libc::SIGSTOP);
    // Queued in the frozen primary's socket: it must never reach the file.
    let write =
        Request::Write { fh, offset: 0, stable: fs_proto::Stable::FileSync, fence: 0, data: b"FROZEN\n".to_vec() };
    let xid = c.next_xid();
    c.send(xid, write).unwrap();
    c.flush().unwrap();
    let standby = pair.standbys[0].addr.clone();
    wait_until(Duration::from_secs(15), "the standby serves", || serving(&standby));
    signal(pair.primary.pid(), libc::SIGCONT);
    let mut st = None;
    wait_until(Duration::from_secs(10), "the old primary ends", || {
        st = pair.primary.ended();
        st.is_some()
    });
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st.unwrap()), Some(libc::SIGKILL), "{st:?}");
    assert_eq!(std::fs::read(pair.path("export/marker")).unwrap(), b"before\n", "the frozen primary wrote");
    assert!(c.recv().is_err(), "the frozen primary answered");
    assert!(pair.log(0).contains("pid"), "{}", pair.log(0));
}

/// A standby whose fence command fails never serves while the primary lives (frozen),
/// says why, and follows the primary again once it thaws.
#[test]
fn a_standby_that_cannot_fence_never_serves() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let pair = Pair::new(1, &["--fence", "exit 3"]);
    let standby = pair.standbys[0].addr.clone();
    signal(pair.primary.pid(), libc::SIGSTOP);
    // Three failed fences (it says so once per attempt, about once a second), and never
    // serving in between.
    wait_until(Duration::from_secs(20), "three failed fences", || {
        assert!(!serving(&standby), "a standby that could not fence serves");
        pair.log(0).matches("cannot fence").count() >= 3
    });
    let line = pair.log(0).lines().find(|l| l.contains("cannot fence")).unwrap().to_string();
    assert!(line.contains("exit 3") || line.contains("failed"), "{line}");
    signal(pair.primary.pid(), libc::SIGCONT);
    wait_until(Duration::from_secs(15), "the standby follows the thawed primary", || {
        pair.log(0).contains("answers again")
    });
    assert!(!serving(&standby));
    let mut c = Conn::connect(&pair.primary.addr).unwrap();
    c.mount();
}

/// A fence command that hangs is given up after 10 s, and the standby still does not
/// serve while the primary lives.
#[test]
fn a_fence_command_that_hangs_is_given_up_and_nothing_served() {
    let _w = Watchdog::new(Duration::from_secs(90));
    let pair = Pair::new(1, &["--fence", "sleep 100"]);
    let standby = pair.standbys[0].addr.clone();
    signal(pair.primary.pid(), libc::SIGSTOP);
    wait_until(Duration::from_secs(30), "the standby gives the fence command up", || {
        pair.log(0).contains("did not finish")
    });
    assert!(!serving(&standby), "a standby whose fence hung serves");
    signal(pair.primary.pid(), libc::SIGCONT);
}

/// Two standbys: when the primary dies exactly one takes over and the other follows it;
/// when that one dies too, the other takes over; the mount of all three carries on.
#[test]
fn of_two_standbys_exactly_one_takes_over_and_the_other_follows_it() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut pair = Pair::new(2, &[]);
    let mut mount = MountProc::start(&pair.addrs(), &pair.path("mnt"), "");
    std::fs::write(mount.path("one"), b"1").unwrap();
    pair.primary.kill();
    let (a, b) = (pair.standbys[0].addr.clone(), pair.standbys[1].addr.clone());
    wait_until(Duration::from_secs(15), "a standby serves", || serving(&a) || serving(&b));
    std::fs::write(mount.path("two"), b"2").unwrap();
    // The other saw the primary go too, and follows the winner instead of taking over.
    wait_until(Duration::from_secs(15), "the other standby follows the winner", || {
        (0..2).any(|i| pair.log(i).contains("another standby took over"))
    });
    assert!(serving(&a) != serving(&b), "exactly one serves: {} {}", serving(&a), serving(&b));
    let (winner, loser) = if serving(&a) { (0, 1) } else { (1, 0) };
    assert!(
        pair.log(loser).contains("another standby took over"),
        "loser:\n{}\nwinner:\n{}",
        pair.log(loser),
        pair.log(winner)
    );
    pair.standbys[winner].kill();
    let other = pair.standbys[loser].addr.clone();
    wait_until(Duration::from_secs(15), "the other standby serves", || serving(&other));
    std::fs::write(mount.path("three"), b"3").unwrap();
    for (f, want) in [("one", "1"), ("two", "2"), ("three", "3")] {
        assert_eq!(std::fs::read_to_string(pair.path(&format!("export/{f}"))).unwrap(), want);
    }
    // The new primary takes a new standby without a restart.
    let addr = pair.standbys[loser].addr.clone();
    let s = ServerProc::start_standby(
        &pair.path("export"),
        &pair.path("state"),
        &format!("127.0.0.1:{}", free_port()),
        &addr,
        &[],
        &pair.path("standby-new.log"),
    );
    pair.standbys[loser].kill();
    wait_until(Duration::from_secs(15), "the new standby serves", || serving(&s.addr));
    mount.unmount();
}

/// A second primary of one export, and a standby of a server with another export: one
/// line each, and nothing served.
#[test]
fn bad_redundancy_setups_get_one_line() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let pair = Pair::new(0, &[]);
    let run = |args: &[&str]| {
        let mut cmd = command(&bin_path("fs-server"));
        cmd.args(args);
        let (st, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(20));
        assert!(!st.success() && out.is_empty(), "{out}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("fs-server:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        lines[0].to_string()
    };
    let (export, state) = (pair.path("export"), pair.path("state"));
    let e =
        run(&["--export", export.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(e.contains("two primaries"), "{e}");
    let other = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let e = run(&[
        "--export",
        other.path().to_str().unwrap(),
        "--state-dir",
        other.path().to_str().unwrap(),
        "--listen",
        &listen,
        "--standby-of",
        &pair.primary.addr,
    ]);
    assert!(e.contains("another export"), "{e}");
    assert!(!serving(&listen));
    // A standby without the key of a primary that has one.
    let keyed = tempfile::tempdir().unwrap();
    let key = keyed.path().join("key");
    assert!(command(&bin_path("fs-server")).arg("keygen").arg(&key).output().unwrap().status.success());
    for d in ["export", "state"] {
        std::fs::create_dir(keyed.path().join(d)).unwrap();
    }
    let primary = ServerProc::start(
        &keyed.path().join("export"),
        &keyed.path().join("state"),
        "127.0.0.1:0",
        &["--key", key.to_str().unwrap()],
    );
    let e = run(&[
        "--export",
        keyed.path().join("export").to_str().unwrap(),
        "--state-dir",
        keyed.path().join("state").to_str().unwrap(),
        "--listen",
        &listen,
        "--standby-of",
        &primary.addr,
    ]);
    assert!(e.contains("--key"), "{e}");
    assert!(!serving(&listen));
}

/// The server instance and the last notice applied, from a mount's status.
fn notice_state(mnt: &std::path::Path) -> (String, u64) {
    let s = mount_status(mnt);
    let line = s.lines().find(|l| l.starts_with("notices subscribed")).unwrap_or_else(|| panic!("{s}"));
    let instance = line.split("server instance ").nth(1).unwrap().split(',').next().unwrap().to_string();
    let applied = line.rsplit(' ').next().unwrap().parse().unwrap();
    (instance, applied)
}

/// Change notices go on across a takeover (the standby follows the sequencer): a mount
/// with long caches (`actimeo=3600`) keeps what it cached (re-reading a file costs the
/// new primary no READ), under the same server instance and numbering, and sees a change
/// another mount makes after the takeover (only a notice can show it).
#[test]
fn notices_go_on_across_a_takeover() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut pair = Pair::new(1, &["--metrics", &metrics]);
    std::fs::create_dir(pair.path("mnt-b")).unwrap();
    let mut a = MountProc::start(&pair.addrs(), &pair.path("mnt"), "actimeo=3600");
    let mut b = MountProc::start(&pair.addrs(), &pair.path("mnt-b"), "");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    // Written and committed before mount a reads it, so no later notice touches it.
    let mut w = std::fs::File::create(b.path("cached")).unwrap();
    w.write_all(&data).unwrap();
    w.sync_all().unwrap();
    drop(w);
    std::fs::write(b.path("f"), b"1").unwrap();
    // Read twice: the first open after another mount's write also fetches the block
    // at the end of the file once more; the second is all from the caches.
    for _ in 0..2 {
        assert!(std::fs::read(a.path("cached")).unwrap() == data);
    }
    assert_eq!(std::fs::metadata(a.path("f")).unwrap().len(), 1);
    let (instance, applied) = notice_state(&pair.path("mnt"));
    pair.primary.kill();
    // The next change goes through the standby once it has taken over.
    std::fs::write(b.path("f"), b"22").unwrap();
    assert!(pair.log(0).contains("took over"), "{}", pair.log(0));
    wait_until(Duration::from_secs(30), "mount a sees the change made after the takeover", || {
        std::fs::metadata(a.path("f")).unwrap().len() == 2
    });
    let (instance_after, applied_after) = notice_state(&pair.path("mnt"));
    assert_eq!(instance_after, instance, "the same instance: mount a kept its caches");
    assert!(applied_after > applied, "numbering went on ({applied} -> {applied_after})");
    assert!(std::fs::read(a.path("cached")).unwrap() == data);
    let text = http_get(&metrics, "/metrics");
    assert!(metric(&text, "fs_server_calls_total{op=\"READ\"}") < 1.0, "cached pages were read again:\n{text}");
    b.unmount();
    a.unmount();
}

/// A REMOVE the primary did but died before its notice (and its reply) left: the
/// client's retransmission fails on the new primary (`ENOENT`: the call is not in its
/// cache), which announces the name all the same, so a mount whose kernel keeps the
/// name across the takeover (`actimeo=3600`, notices going on, no caches dropped) no
/// longer shows the file.
#[test]
fn a_change_whose_notice_died_with_the_primary_is_announced_when_resent() {
    let _w = Watchdog::new(Duration::from_secs(60));
    // The primary makes a change, then waits 3 s before its cache, notice and reply.
    let mut pair = Pair::with_primary(&["--test-delay-changes-ms", "3000"], 1, &[]);
    std::fs::write(pair.path("export/y"), b"y").unwrap();
    let mut a = MountProc::start(&pair.addrs(), &pair.path("mnt"), "actimeo=3600");
    assert!(a.path("y").exists(), "the kernel now holds the name for an hour");
    let mut c = Conn::connect(&pair.primary.addr).unwrap();
    c.client = 0xc0de;
    let root = c.mount();
    let gone = Request::Remove { dir: root.clone(), name: b"y".to_vec() };
    c.send(500, gone.clone()).unwrap();
    c.flush().unwrap();
    wait_until(Duration::from_secs(10), "the primary removed the file", || !pair.path("export/y").exists());
    pair.primary.kill();
    let standby = pair.standbys[0].addr.clone();
    wait_until(Duration::from_secs(10), "the standby serves", || serving(&standby));
    let mut s = Conn::connect(&standby).unwrap();
    s.client = 0xc0de;
    assert_eq!(s.call_xid(500, gone).err(), Some(Errno::ENOENT), "not in the new primary's cache");
    wait_until(Duration::from_secs(10), "mount a no longer shows the file", || !a.path("y").exists());
    a.unmount();
}
