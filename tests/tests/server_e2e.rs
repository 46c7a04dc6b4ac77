//! `fs-server` as a process: start-up, bad input, restarts, malformed frames, pipelining.

use fs_proto::*;
use std::path::Path;
use std::time::Duration;
use tests::rpc::Conn;
use tests::{bin_path, command, run_with_timeout, ServerProc, Watchdog};

fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

fn start(export: &Path, state: &Path) -> ServerProc {
    ServerProc::start(export, state, "127.0.0.1:0", &["--no-root-squash"])
}

/// Runs fs-server with `args` and expects a one-line reason on stderr and exit code 1.
fn refuses(args: &[&str], want: &str) {
    let (status, out, err) = run_with_timeout(command(&bin_path("fs-server")).args(args), Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{args:?}: {out} {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err:?}");
    assert!(lines[0].contains(want), "{:?} does not mention {want:?}", lines[0]);
}

#[test]
fn bad_input_gets_a_one_line_reason() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    let e = export.path().to_str().unwrap();
    let s = state.path().to_str().unwrap();
    refuses(&["--export", "/no/such/dir", "--listen", "127.0.0.1:0", "--state-dir", s], "does not exist");
    let file = export.path().join("file");
    std::fs::write(&file, b"").unwrap();
    refuses(&["--export", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--state-dir", s], "not a directory");
    refuses(&["--export", e, "--listen", "nonsense", "--state-dir", s], "bad address");
    refuses(&["--export", e, "--listen", "127.0.0.1:99999", "--state-dir", s], "bad address");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    refuses(&["--export", e, "--listen", &taken, "--state-dir", s], "already in use");
    let (status, _, err) = run_with_timeout(command(&bin_path("fs-server")).arg("--bogus"), Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "clap's usage error: {err}");
}

#[test]
fn without_the_capability_it_says_so() {
    let _w = Watchdog::new(Duration::from_secs(60));
    // Never a silent skip: without setpriv the test fails, saying why.
    assert!(Path::new("/usr/bin/setpriv").exists(), "cannot run here: setpriv is missing (util-linux)");
    let (export, state) = dirs();
    for d in [export.path(), state.path()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    // A copy nobody can run (the build folder may lie under /root, mode 0700).
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = public.path().join("fs-server");
    std::fs::copy(bin_path("fs-server"), &bin).unwrap();
    let (status, _, err) = run_with_timeout(
        command(Path::new("/usr/bin/setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(&bin)
            .args(["--export", export.path().to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(["--state-dir", state.path().to_str().unwrap()]),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_DAC_READ_SEARCH"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn sigterm_stops_cleanly_and_unix_sockets_work() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    let sock = state.path().join("fs.sock");
    let mut srv = ServerProc::start(export.path(), state.path(), sock.to_str().unwrap(), &[]);
    assert_eq!(srv.addr, sock.to_str().unwrap());
    let mut c = Conn::connect(&srv.addr).unwrap();
    c.mount();
    assert_eq!(c.call(Request::Null), Ok(Response::Null));
    // A second server on the same live socket is refused.
    refuses(
        &[
            "--export",
            export.path().to_str().unwrap(),
            "--listen",
            sock.to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        "already in use",
    );
    assert!(srv.terminate().success());
    assert!(!sock.exists(), "socket file removed on shutdown");
}

#[test]
fn handles_survive_a_server_restart() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    std::fs::create_dir_all(export.path().join("a/b")).unwrap();
    std::fs::write(export.path().join("a/b/f"), b"still here").unwrap();
    let mut srv = start(export.path(), state.path());
    let mut c = Conn::connect(&srv.addr).unwrap();
    let root = c.mount();
    let mut fh = root.clone();
    for name in ["a", "b", "f"] {
        fh = match c.call(Request::Lookup { dir: fh, name: name.into() }) {
            Ok(Response::Lookup { fh, .. }) => fh,
            r => panic!("{r:?}"),
        };
    }
    let Ok(Response::Write { verifier: v1, .. }) =
        c.call(Request::Write { fh: fh.clone(), offset: 0, stable: Stable::Unstable, fence: 0, data: b"S".to_vec() })
    else {
        panic!()
    };
    srv.kill();
    let srv = ServerProc::start(export.path(), state.path(), "127.0.0.1:0", &[]);
    let mut c = Conn::connect(&srv.addr).unwrap();
    let Ok(Response::Read { data, .. }) = c.call(Request::Read { fh: fh.clone(), offset: 0, count: 100 }) else {
        panic!()
    };
    assert_eq!(data, b"Still here");
    assert_eq!(c.mount(), root, "the same root handle");
    let Ok(Response::Commit { verifier: v2, .. }) = c.call(Request::Commit { fh, offset: 0, count: 0 }) else {
        panic!()
    };
    assert_ne!(v1, v2, "a restarted server has a new write verifier");
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    let srv = start(export.path(), state.path());
    let mut good = Conn::connect(&srv.addr).unwrap();
    let root = good.mount();
    let bad_frames: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff],                      // length over the limit
        vec![0, 0, 0, 0],                                  // empty frame
        vec![0, 0, 0, 3, 0x01, 0x01, 0xff],                // truncated call
        vec![0, 0, 0, 8, 1, 1, 0, 0, 0, 0xee, 0xee, 0xee], // unknown request variant
    ];
    for frame in bad_frames {
        let mut c = Conn::connect(&srv.addr).unwrap();
        c.send_raw(&frame).unwrap();
        assert!(c.recv().is_err(), "{frame:?}: the server closes the connection");
        // The other connection, and new ones, keep working.
        assert!(matches!(good.call(Request::GetAttr { fh: root.clone() }), Ok(Response::Attr(_))));
    }
    let mut again = Conn::connect(&srv.addr).unwrap();
    assert_eq!(again.call(Request::Null), Ok(Response::Null));
}

#[test]
fn many_calls_in_flight_answered_by_xid() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    for i in 0..64 {
        std::fs::write(export.path().join(format!("f{i}")), vec![i as u8; 1000 + i]).unwrap();
    }
    let srv = start(export.path(), state.path());
    let mut c = Conn::connect(&srv.addr).unwrap();
    let root = c.mount();
    for i in 0..64u64 {
        c.send(1000 + i, Request::Lookup { dir: root.clone(), name: format!("f{i}").into_bytes() }).unwrap();
    }
    c.flush().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let r = c.recv().unwrap();
        let i = r.xid - 1000;
        let Ok(Response::Lookup { attr, .. }) = r.res else { panic!("{r:?}") };
        assert_eq!(attr.size, 1000 + i, "reply {} matches its call", r.xid);
        assert!(seen.insert(r.xid));
    }
}

/// RFC 1813 section 4.4, across a reconnect: the retransmission arrives on a new
/// connection, as it does after a network failure, and still gets the first reply.
#[test]
fn retransmission_on_a_new_connection_gets_the_first_reply() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    std::fs::write(export.path().join("victim"), b"").unwrap();
    let srv = start(export.path(), state.path());
    let mut c = Conn::connect(&srv.addr).unwrap();
    let root = c.mount();
    let ops = [
        Request::Create { dir: root.clone(), name: b"new".to_vec(), mode: 0o644, how: CreateHow::Guarded },
        Request::Rename {
            from_dir: root.clone(),
            from: b"new".to_vec(),
            to_dir: root.clone(),
            to: b"renamed".to_vec(),
            flags: 0,
        },
        Request::Remove { dir: root.clone(), name: b"victim".to_vec() },
    ];
    for (i, req) in ops.into_iter().enumerate() {
        let xid = 500 + i as u64;
        let first = c.call_xid(xid, req.clone());
        assert!(first.is_ok(), "{first:?}");
        let mut c2 = Conn::connect(&srv.addr).unwrap();
        c2.client = c.client;
        assert_eq!(c2.call_xid(xid, req), first);
    }
    let names: Vec<_> = std::fs::read_dir(export.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("renamed")]);
}

/// A retransmission that arrives on a new connection while the first call still runs
/// (the client reset its connection) waits for the first to finish and gets its reply;
/// the first's connection is gone, so a dropped duplicate would never be answered (a
/// hard mount hung on a CREATE that way).
#[test]
fn a_retransmission_while_the_first_still_runs_gets_its_reply() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    let srv = ServerProc::start(
        export.path(),
        state.path(),
        "127.0.0.1:0",
        &["--no-root-squash", "--test-delay-changes-ms", "500"],
    );
    let mut c = Conn::connect(&srv.addr).unwrap();
    let root = c.mount();
    let req = Request::Create { dir: root, name: b"once".to_vec(), mode: 0o644, how: CreateHow::Guarded };
    c.send(77, req.clone()).unwrap();
    c.flush().unwrap();
    // The first is done (the file is there) but still in progress for 500 ms more; its
    // connection goes away.
    tests::wait_until(Duration::from_secs(10), "the first create done", || export.path().join("once").exists());
    drop(c);
    let mut c2 = Conn::connect(&srv.addr).unwrap();
    c2.client = std::process::id() as u64;
    let started = std::time::Instant::now();
    let again = c2.call_xid(77, req);
    assert!(matches!(again, Ok(Response::Created { .. })), "the first reply, not EEXIST: {again:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// `--metrics`: the server's counters in the Prometheus text format over HTTP: calls and
/// latency per operation grow with a mount's work, connections and notice subscribers
/// are counted; another path is a 404; a port in use is a one-line error.
#[test]
fn metrics_in_the_prometheus_format() {
    let _w = tests::Watchdog::new(Duration::from_secs(60));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let maddr = format!("127.0.0.1:{port}");
    let dirs = tempfile::tempdir().unwrap();
    for d in ["export", "state", "mnt"] {
        std::fs::create_dir(dirs.path().join(d)).unwrap();
    }
    let server = tests::ServerProc::start(
        &dirs.path().join("export"),
        &dirs.path().join("state"),
        "127.0.0.1:0",
        &["--no-root-squash", "--metrics", &maddr],
    );
    let mount = tests::MountProc::start(&server.addr, &dirs.path().join("mnt"), "");
    let get = |path: &str| tests::http_get(&maddr, path);
    let count = |text: &str, key: &str| -> f64 {
        text.lines().find(|l| l.starts_with(key)).and_then(|l| l.rsplit(' ').next()).map_or(0.0, |v| v.parse().unwrap())
    };
    let before = get("/metrics");
    assert!(before.starts_with("HTTP/1.1 200 OK"), "{before}");
    for i in 0..20 {
        std::fs::write(mount.path(&format!("f{i}")), b"x").unwrap();
    }
    tests::wait_until(Duration::from_secs(5), "the mount subscribed", || {
        count(&get("/metrics"), "fs_server_notice_subscribers ") >= 1.0
    });
    let after = get("/metrics");
    assert!(count(&after, "fs_server_calls_total{op=\"CREATE\"}") >= 20.0, "{after}");
    assert!(count(&after, "fs_server_call_seconds_count{op=\"CREATE\"}") >= 20.0, "{after}");
    assert!(count(&after, "fs_server_connections ") >= 1.0, "{after}");
    assert!(count(&after, "fs_server_notices_total") >= 20.0, "{after}");
    assert!(after.contains("# TYPE fs_server_call_seconds histogram"));
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    drop(mount);
    // The same port again: in use.
    let (st, _, err) = tests::run_with_timeout(
        tests::command(&tests::bin_path("fs-server")).args(["--export"]).arg(dirs.path().join("export")).args([
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &maddr,
        ]),
        Duration::from_secs(20),
    );
    assert_ne!(st.code(), Some(0));
    assert!(err.contains("cannot serve metrics on") && err.trim().lines().count() == 1, "{err}");
}

/// A SETATTR of times sent right behind a WRITE of the same file on one connection,
/// without waiting for the WRITE's reply (as a mount sends `tar`'s and `touch`'s times
/// after the file's last data), lands after it: every file ends with all its data and
/// the time set. (Run beside it, a 1 MiB WRITE lands last, and the time is lost.)
#[test]
fn a_setattr_sent_behind_a_write_lands_after_it() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (export, state) = dirs();
    for i in 0..50 {
        std::fs::write(export.path().join(format!("f{i}")), b"").unwrap();
    }
    let srv = start(export.path(), state.path());
    let mut c = Conn::connect(&srv.addr).unwrap();
    let root = c.mount();
    let when = Timespec { sec: 1_000_000_000, nsec: 0 };
    for i in 0..50u64 {
        let fh = match c.call(Request::Lookup { dir: root.clone(), name: format!("f{i}").into_bytes() }) {
            Ok(Response::Lookup { fh, .. }) => fh,
            r => panic!("{r:?}"),
        };
        let data = vec![7; 1 << 20];
        c.send(1000 + 2 * i, Request::Write { fh: fh.clone(), offset: 0, stable: Stable::Unstable, fence: 0, data })
            .unwrap();
        let attrs = SetAttrs { mtime: SetTime::Set(when), ..Default::default() };
        c.send(1001 + 2 * i, Request::SetAttr { fh, attrs, guard: None }).unwrap();
        c.flush().unwrap();
        for _ in 0..2 {
            let r = c.recv().unwrap();
            assert!(r.res.is_ok(), "{r:?}");
        }
    }
    for i in 0..50 {
        let m = std::fs::metadata(export.path().join(format!("f{i}"))).unwrap();
        assert_eq!(m.len(), 1 << 20);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 1_000_000_000, "f{i}: the WRITE landed after the time");
    }
}
