//! The prime pipeline with real ZeroMQ sockets (`ipc://` in temporary folders), the
//! broker and workers as processes, and the spool watcher on real mounts.

use cluster::endpoint::BrokerAddr;
use cluster::prime::sieve;
use cluster::wire::Msg;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tests::{run_job, ClusterProc, Pipeline, Rig, Watchdog};

#[test]
fn primes_up_to_a_million_equal_a_sieve() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let p = Pipeline::new(2, &[], &[]);
    let values: Vec<i64> = (-10..=1_000_000).collect();
    let c = run_job(&p.addr, &values, 1000, Duration::from_secs(1), |_| {});
    assert_eq!(c.done_numbers, values.len() as u64, "every number reported done exactly once");
    assert_eq!(c.done_messages, values.len().div_ceil(1000) as u64);
    assert_eq!(c.primes, sieve(-10, 1_000_000));
    assert_eq!(c.workers.len(), 2, "both workers took part");
}

/// The notes' third transport: a broker with two workers as threads of its own process
/// (`--workers 2`, over `inproc://`) gives exactly the sieve's primes to a job sent over
/// ipc, both in-process workers taking part; an outside worker can still join; a broker
/// told to listen on `inproc://` alone says why not.
#[test]
fn a_broker_with_in_process_workers() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let p = Pipeline::new(0, &["--workers", "2"], &[]);
    let values: Vec<i64> = (1..=300_000).collect();
    let c = run_job(&p.addr, &values, 1000, Duration::from_secs(1), |_| {});
    assert_eq!(c.done_numbers, values.len() as u64);
    assert_eq!(c.primes, sieve(1, 300_000));
    assert_eq!(c.workers.len(), 2, "both in-process workers took part");
    let _outside = Pipeline::worker(&p.addr, &[]);
    let c = run_job(&p.addr, &values, 1000, Duration::from_secs(1), |_| {});
    assert_eq!(c.primes, sieve(1, 300_000));
    let (st, _, err) = tests::run_with_timeout(
        tests::command(&tests::bin_path("cluster")).args(["broker", "--listen", "inproc://x"]),
        Duration::from_secs(20),
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("reaches only this process") && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn chosen_large_primes_and_composites_one_message_per_number() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let p = Pipeline::new(2, &[], &[]);
    let primes = [2147483647i64, 2305843009213693951, 9223372036854775783, 1000000000000000003, 999999999999999989];
    // Carmichael numbers, strong pseudoprimes to many small bases, a semiprime of two
    // large primes, a prime square, and the extremes of i64.
    let composites = [
        561i64,
        41041,
        9746347772161,
        3215031751,
        3825123056546413051,
        3474749660383,
        341550071728321,
        4294967291 * 2147483647,
        3037000493 * 3037000493,
        i64::MAX,
        i64::MIN,
        -7,
        0,
        1,
    ];
    let mut values: Vec<i64> = primes.iter().chain(composites.iter()).copied().collect();
    values.sort_unstable();
    let want: Vec<i64> = values.iter().copied().filter(|&n| cluster::prime::is_prime(n)).collect();
    let mut expected = primes.to_vec();
    expected.sort_unstable();
    assert_eq!(want, expected, "the chosen composites are composite");
    let c = run_job(&p.addr, &values, 1, Duration::from_secs(1), |_| {});
    assert_eq!(c.primes, expected);
    assert_eq!(c.done_messages, values.len() as u64);
}

#[test]
fn a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut p = Pipeline::new(2, &["--heartbeat-ms", "200", "--liveness-ms", "1000"], &[]);
    let values: Vec<i64> = (1..=2_000_000).collect();
    let mut killed = false;
    let c = run_job(&p.addr, &values, 2000, Duration::from_secs(1), |done| {
        if !killed && done >= 200_000 {
            p.workers[0].kill();
            killed = true;
        }
    });
    assert!(killed);
    assert_eq!(c.done_numbers, values.len() as u64, "every number done exactly once");
    assert_eq!(c.primes, sieve(1, 2_000_000));
    assert!(p.broker.terminate(), "the broker stops on SIGTERM");
}

#[test]
fn malformed_frames_get_a_reason_and_the_broker_keeps_serving() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let p = Pipeline::new(1, &[], &[]);
    let ctx = zmq::Context::new();
    let addr = BrokerAddr::parse(&p.addr).unwrap();
    for (role, body) in [
        (cluster::endpoint::Role::Sources, &b"S\x00\x01"[..]),
        (cluster::endpoint::Role::Sources, &b""[..]),
        (cluster::endpoint::Role::Sources, &b"X12345678"[..]),
        (cluster::endpoint::Role::Results, &b"Xshort"[..]),
    ] {
        let s = ctx.socket(zmq::REQ).unwrap();
        s.connect(&addr.endpoint(role)).unwrap();
        s.send(body, 0).unwrap();
        assert!(s.poll(zmq::POLLIN, 5000).unwrap() > 0, "the broker answers a malformed request");
        match Msg::decode(&s.recv_bytes(0).unwrap()) {
            Ok(Msg::Error { reason }) => assert!(!reason.is_empty() && !reason.contains('\n'), "{reason}"),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
    // Garbage on the workers' socket is dropped, too.
    let d = ctx.socket(zmq::DEALER).unwrap();
    d.connect(&addr.endpoint(cluster::endpoint::Role::Work)).unwrap();
    d.send(&b"\xff\xff"[..], 0).unwrap();
    let c = run_job(&p.addr, &(1..=100).collect::<Vec<_>>(), 10, Duration::from_secs(1), |_| {});
    assert_eq!(c.primes, sieve(1, 100));
}

#[test]
fn bad_addresses_and_a_port_in_use_get_one_line() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let run = |args: &[&str]| {
        let (status, out, err) =
            tests::run_with_timeout(tests::command(&tests::bin_path("cluster")).args(args), Duration::from_secs(20));
        assert!(!status.success(), "{args:?} should fail: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line, got {err:?}");
        err
    };
    assert!(run(&["worker", "--broker", "no-such-host.invalid:5"]).contains("cannot resolve"));
    assert!(run(&["source", "--broker", "127.0.0.1:99999", "5"]).contains("port"));
    assert!(run(&["source", "--broker", "127.0.0.1:5555", "12x"]).contains("line 1"));
    assert!(run(&["source", "--broker", "127.0.0.1:5555", "9..1"]).contains("reversed"));
    let p = Pipeline::new(0, &[], &[]);
    assert!(run(&["broker", "--listen", &p.addr]).contains("another process is listening"));
    // A TCP port in use.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert!(run(&["broker", "--listen", &format!("127.0.0.1:{}", port.saturating_sub(3).max(1))]).contains("in use"));
    drop(p);
}

/// A job through the spool on one mount, read through another; a malformed job goes to
/// failed/ with the line named; two watchers on two mounts run each job exactly once.
#[test]
fn spool_on_a_real_mount_read_through_a_second_mount() {
    let _w = Watchdog::new(Duration::from_secs(180));
    let p = Pipeline::new(2, &[], &[]);
    let rig = Rig::new("");
    let other = rig.second_mount("mnt2", "");
    std::fs::create_dir(rig.mnt("spool")).unwrap();
    let spool_a = rig.mnt("spool").display().to_string();
    let spool_b = other.path("spool").display().to_string();
    let args = |dir: &str, id: &str| -> Vec<String> {
        ["spool", "--dir", dir, "--broker", &p.addr, "--id", id, "--batch", "5000", "--settle-ms", "300"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let start = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        ClusterProc::start(&refs, "spool ")
    };
    let wa = start(args(&spool_a, "a"));
    let wb = start(args(&spool_b, "b"));
    // Jobs dropped through the second mount: an editor-style write of one, plain writes
    // of the others.
    std::fs::write(other.path("spool/in/.big.job.tmp"), "# a million\n1..1000000\n").unwrap();
    std::fs::rename(other.path("spool/in/.big.job.tmp"), other.path("spool/in/big.job")).unwrap();
    std::fs::write(other.path("spool/in/bad.job"), "1..10\n20\n3x\n").unwrap();
    for i in 0..6 {
        std::fs::write(other.path(&format!("spool/in/small{i}.job")), format!("{}..{}\n7\n", i * 1000, i * 1000 + 999))
            .unwrap();
    }
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines.len() < 8 && Instant::now() < deadline {
        for w in [&wa, &wb] {
            if let Some(l) = w.next_line(Duration::from_millis(100)) {
                lines.push(l);
            }
        }
    }
    lines.sort();
    assert_eq!(lines.len(), 8, "eight jobs reported: {lines:?}");
    let names: HashSet<String> = lines.iter().map(|l| l.split(':').next().unwrap().to_string()).collect();
    assert_eq!(names.len(), 8, "each job ran exactly once: {lines:?}");
    assert!(lines.contains(&"failed bad: line 3: `3x` is not an integer or a range A..B".to_string()), "{lines:?}");
    // Read the results through the second mount.
    let read = |rel: &str| std::fs::read_to_string(other.path(rel)).unwrap();
    let want: String = sieve(1, 1_000_000).iter().map(|n| format!("{n}\n")).collect();
    assert!(read("spool/out/big.primes") == want, "big.primes differs from the sieve");
    let summary = read("spool/out/big.summary");
    assert!(summary.contains("numbers: 1000000\nprimes: 78498\n"), "{summary}");
    for i in 0..6 {
        let want: String = sieve(i * 1000, i * 1000 + 999)
            .iter()
            .chain(if i == 0 { &[][..] } else { &[7][..] })
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let mut got: Vec<i64> =
            read(&format!("spool/out/small{i}.primes")).lines().map(|l| l.parse().unwrap()).collect();
        let sorted = {
            let mut s = got.clone();
            s.sort();
            s
        };
        assert_eq!(got, sorted, "ascending");
        got.sort();
        let mut w: Vec<i64> = want.lines().map(|l| l.parse().unwrap()).collect();
        w.sort();
        assert_eq!(got, w, "small{i}");
    }
    assert_eq!(read("spool/failed/bad.reason"), "line 3: `3x` is not an integer or a range A..B\n");
    assert_eq!(read("spool/failed/bad.job"), "1..10\n20\n3x\n", "the malformed job is kept as it was");
    assert!(std::fs::read_dir(other.path("spool/in")).unwrap().next().is_none(), "in/ is empty");
    let leftovers: Vec<_> = std::fs::read_dir(other.path("spool/out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
    drop((wa, wb));
}

/// Waits until a watcher has written primes of the job to `tmp` since `since` (it is
/// mid-job). A restarted watcher starts the file afresh (truncating it, which sets its
/// mtime), so the killed one's leftover file, changed before `since`, does not count.
fn wait_for_progress(tmp: &std::path::Path, since: std::time::SystemTime) {
    tests::wait_until(Duration::from_secs(60), "progress on the job", || {
        std::fs::metadata(tmp).is_ok_and(|m| m.len() > 0 && m.modified().unwrap() > since)
    });
}

/// The watcher, then the broker, killed in the middle of a job: after restarts the job
/// finishes, whole, and nothing half-written is ever in out/.
#[test]
fn spool_job_survives_watcher_and_broker_crashes() {
    let _w = Watchdog::new(Duration::from_secs(240));
    // Slow workers (each test run 300 times) make the job last several seconds.
    let broker_args = ["--heartbeat-ms", "200", "--liveness-ms", "1000"];
    let mut p = Pipeline::new(2, &broker_args, &["--slow", "300"]);
    let rig = Rig::new("");
    std::fs::create_dir(rig.mnt("spool")).unwrap();
    let dir = rig.mnt("spool").display().to_string();
    let args = [
        "spool",
        "--dir",
        &dir,
        "--broker",
        &p.addr,
        "--id",
        "w",
        "--batch",
        "1000",
        "--stall-s",
        "2",
        "--settle-ms",
        "0",
    ];
    let mut w = ClusterProc::start(&args, "spool ");
    let (lo, hi) = (1_000_000_000_000i64, 1_000_000_399_999i64);
    std::fs::write(rig.mnt("spool/in/j.job"), format!("{lo}..{hi}\n")).unwrap();
    // (Seen through the mount: the watcher's writes wait in its write-back buffer, and
    // the mount's size counts them.)
    let tmp = rig.mnt("spool/out/.j.primes.tmp@w");
    let out = rig.mnt("spool/out/j.primes");
    let wait_for_progress = |since| wait_for_progress(&tmp, since);
    wait_for_progress(std::time::UNIX_EPOCH);
    w.kill();
    assert!(!out.exists(), "nothing in out/ while the job is unfinished");
    assert!(rig.mnt("spool/running/j.job@w").exists(), "the claim stays");
    let restarted = std::time::SystemTime::now();
    let w = ClusterProc::start(&args, "spool ");
    // The broker crashes in the middle of the resumed run and comes back on the same
    // address; the watcher's stalled batches are submitted again.
    wait_for_progress(restarted);
    p.broker.kill();
    assert!(!out.exists(), "nothing in out/ while the job is unfinished");
    // Down for a moment, as a crashed broker is.
    std::thread::sleep(Duration::from_millis(300));
    let mut args_b = vec!["broker", "--listen", &p.addr];
    args_b.extend_from_slice(&broker_args);
    p.broker = ClusterProc::start(&args_b, "broker listening on");
    let want = sieve(lo, hi);
    let line = w.next_line(Duration::from_secs(150));
    assert_eq!(line, Some(format!("done j: {} primes", want.len())));
    let want: String = want.iter().map(|n| format!("{n}\n")).collect();
    assert!(std::fs::read_to_string(&out).unwrap() == want, "primes differ from the sieve");
    assert!(rig.mnt("spool/done/j.job").exists());
    assert!(!rig.mnt("spool/running/j.job@w").exists());
    let summary = std::fs::read_to_string(rig.mnt("spool/out/j.summary")).unwrap();
    assert!(!summary.contains("resubmitted batches: 0\n"), "the broker's crash made the watcher resubmit: {summary}");
}

/// `cluster up ARGS` on `dir` with a broker on four free ports; returns once it has said
/// what to do next, with what it printed.
fn cluster_up(dir: &std::path::Path, extra: &[&str]) -> (ClusterProc, Vec<String>) {
    let broker = format!("127.0.0.1:{}", tests::free_ports(8)); // a backup broker takes the next four
    let dir_s = dir.display().to_string();
    let mut args = vec!["up", "--dir", &dir_s, "--broker", &broker, "--workers", "1"];
    args.extend_from_slice(extra);
    let up = ClusterProc::start(&args, "starting the cluster");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("Ctrl-C")) {
        seen.push(up.next_line(Duration::from_secs(30)).expect("cluster up prints what to do next"));
    }
    (up, seen)
}

/// `cluster up` brings everything up on temporary folders, runs a dropped job, and on
/// SIGTERM stops everything and unmounts.
#[test]
fn cluster_up_runs_a_job_and_tears_down() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _guard = tests::MountGuard::new(&mnt);
    let (mut up, seen) = cluster_up(dir.path(), &[]);
    assert!(tests::is_mounted(&mnt), "{seen:?}");
    // The server has a key made on first start, and the mount proves it holds it.
    let key = std::fs::metadata(dir.path().join("state/fs.key")).expect("the key");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);
    let status = tests::mount_status(&mnt);
    assert!(status.contains("key handshake, authenticated"), "{status}");
    // And a CURVE cluster key for the ZeroMQ sockets.
    let curve = std::fs::metadata(dir.path().join("state/curve/cluster.key")).expect("the cluster key");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&curve.permissions()) & 0o777, 0o600);
    std::fs::write(mnt.join("spool/in/first.job"), "1..1000\n").unwrap();
    let out = mnt.join("spool/out/first.primes");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.exists() {
        assert!(Instant::now() < deadline, "no result");
        std::thread::sleep(Duration::from_millis(50));
    }
    let want: String = sieve(1, 1000).iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
    // Locks on the mount go through the lease node `cluster up` started.
    std::fs::write(mnt.join("counter"), format!("{:020}\n", 0)).unwrap();
    let counter = mnt.join("counter").display().to_string();
    let (st, _, err) = tests::run_with_timeout(
        tests::command(&tests::bin_path("lock-counter")).args([&counter, "20", "flock"]),
        Duration::from_secs(60),
    );
    assert!(st.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim().parse::<u64>().unwrap(), 20);
    assert!(up.terminate(), "cluster up exits by itself on SIGTERM");
    assert!(!tests::is_mounted(&mnt), "unmounted");
    assert_eq!(std::fs::read_to_string(dir.path().join("export/spool/out/first.primes")).unwrap(), want);
}

/// `cluster up --standby`: the file server SIGKILLed, its standby takes over, the mount
/// and the spool carry on; then the broker SIGKILLed, its backup takes over; `cluster up`
/// keeps running.
#[test]
fn cluster_up_with_a_standby_survives_the_file_servers_death() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _guard = tests::MountGuard::new(&mnt);
    let (mut up, _) = cluster_up(dir.path(), &["--standby"]);
    std::fs::write(mnt.join("before"), b"1").unwrap();
    let record = std::fs::read_to_string(dir.path().join("state/primary")).unwrap();
    let pid: i32 = record.lines().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) of the file server cluster up started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    std::fs::write(mnt.join("after"), b"2").unwrap();
    assert_eq!(std::fs::read(dir.path().join("export/after")).unwrap(), b"2");
    assert!(tests::mount_status(&mnt).starts_with(&format!("server {}", dir.path().join("fs-standby.sock").display())));
    std::fs::write(mnt.join("spool/in/late.job"), "1..100\n").unwrap();
    let out = mnt.join("spool/out/late.primes");
    tests::wait_until(Duration::from_secs(60), "the job's result", || out.exists());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 25);
    // The primary broker SIGKILLed: the backup takes over for the workers and the spool.
    let broker = pid_of(up.pid(), &["broker", "--listen", "--backup"]).expect("the primary broker");
    // SAFETY: kill(2) of the broker cluster up started.
    assert_eq!(unsafe { libc::kill(broker, libc::SIGKILL) }, 0);
    std::fs::write(mnt.join("spool/in/later.job"), "1..1000\n").unwrap();
    let out = mnt.join("spool/out/later.primes");
    tests::wait_until(Duration::from_secs(90), "the job's result after the broker's death", || out.exists());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 168);
    assert!(up.terminate(), "cluster up exits by itself on SIGTERM");
    assert!(!tests::is_mounted(&mnt), "unmounted");
}

/// Lazy Pirate from the broker's side: a source whose acknowledgement was lost resends
/// the same request (same source and seq) on a new socket; the broker acknowledges it
/// again but queues and publishes it once, so downstream sees each number once.
#[test]
fn a_resent_request_is_acknowledged_again_but_done_once() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let p = Pipeline::new(1, &[], &[]);
    let ctx = zmq::Context::new();
    let addr = BrokerAddr::parse(&p.addr).unwrap();
    let job = cluster::util::random_u64();
    let sub = cluster::sink::subscribe(
        &ctx,
        &addr,
        &[
            &cluster::wire::job_prefix(b'n', job),
            &cluster::wire::job_prefix(b'd', job),
            &cluster::wire::job_prefix(b'h', job),
        ],
    )
    .unwrap();
    let mut src = cluster::source::Source::connect(&ctx, &addr).unwrap();
    src.wait_subscribed(&sub, job).unwrap();
    let request = Msg::Submit { source: 42, seq: 1, job, batch: 0, replicas: 1, values: vec![7, 8, 9].into() }.encode();
    for _ in 0..3 {
        // A fresh REQ socket each time, as Lazy Pirate does after a timeout.
        let s = ctx.socket(zmq::REQ).unwrap();
        s.connect(&addr.endpoint(cluster::endpoint::Role::Sources)).unwrap();
        s.send(&request[..], 0).unwrap();
        assert!(s.poll(zmq::POLLIN, 5000).unwrap() > 0);
        assert_eq!(Msg::decode(&s.recv_bytes(0).unwrap()), Ok(Msg::Ack { seq: 1 }));
    }
    let (mut numbers, mut done) = (0, 0);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if sub.poll(zmq::POLLIN, 50).unwrap() > 0 {
            match Msg::decode(&sub.recv_bytes(0).unwrap()).unwrap() {
                Msg::Numbers { .. } => numbers += 1,
                Msg::Done { count, .. } => done += count,
                _ => {}
            }
        }
    }
    assert_eq!((numbers, done), (1, 3), "published once, tested once");
}

/// Publications carry sequence numbers per stream: a broker told to leave out every
/// fourth publication (a test switch), a sink counting the numbers of one source run
/// (100 publications of 10 numbers: 25 left out): the sink names every gap (one
/// publication each) and the total, and writes exactly the numbers that did arrive. A gap
/// shows when the next publication of its stream arrives, so a last publication left out
/// is not seen.
#[test]
fn a_sink_reports_the_publications_it_missed() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let p = Pipeline::new(0, &["--test-drop-every", "4"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("numbers");
    let out_s = out.display().to_string();
    let mut sink = tests::command(&tests::bin_path("cluster"))
        .args(["sink", "--broker", &p.addr, "--tag", "n", "--out", &out_s])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(sink.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.starts_with("sink subscribed"), "{first}");
    let source = |numbers: &str| {
        let (st, _, err) = tests::run_with_timeout(
            tests::command(&tests::bin_path("cluster")).args(["source", "--broker", &p.addr, "--batch", "10", numbers]),
            Duration::from_secs(60),
        );
        assert!(st.success(), "{err}");
    };
    let lines = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    // The subscription takes effect a moment after connecting: probe (a one-number job
    // each time, its own stream) until the sink has written one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        source("0");
        if tests::within(Duration::from_millis(500), || lines() > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the sink never saw a probe");
    }
    let probes = lines();
    source("1..1000");
    tests::wait_until(Duration::from_secs(60), "750 numbers written", || lines() == probes + 750);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(sink.id() as i32, libc::SIGTERM) };
    let status = sink.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sink.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let gaps = err.lines().filter(|l| l.starts_with("sink: missed 1 publications of job")).count();
    assert!(gaps == 24 || gaps == 25, "{err}");
    assert!(err.contains(&format!("sink: {gaps} publications missed in all")), "{err}");
    let got: HashSet<i64> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| l.parse().unwrap()).filter(|&n| n > 0).collect();
    assert_eq!(got.len(), 750, "no duplicate, nothing of a missed publication");
    // What arrived is whole publications of ten.
    assert!((0..100).all(|b| {
        let n = (1..=10).filter(|k| got.contains(&(b * 10 + k))).count();
        n == 0 || n == 10
    }));
}

/// Plain ZeroMQ clients of the lecture's 9-byte format, knowing nothing of our crate:
/// a source (REQ, waits for each acknowledgement), workers (PULL numbers, REQ primes
/// back) and a sink (SUB by tag).
mod classic_clients {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    pub fn msg(tag: u8, v: i64) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&v.to_be_bytes());
        b
    }

    fn value(b: &[u8]) -> (u8, i64) {
        assert_eq!(b.len(), 9, "a classic message is 9 bytes");
        (b[0], i64::from_be_bytes(b[1..].try_into().unwrap()))
    }

    fn is_prime(n: i64) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
    }

    pub fn primes_to(n: i64) -> BTreeSet<i64> {
        (2..=n).filter(|&k| is_prime(k)).collect()
    }

    /// Sends one request and returns the reply.
    pub fn request(s: &zmq::Socket, body: &[u8]) -> Vec<u8> {
        s.send(body, 0).unwrap();
        assert!(s.poll(zmq::POLLIN, 10_000).unwrap() > 0, "no reply in 10 s");
        s.recv_bytes(0).unwrap()
    }

    pub fn source(ctx: &zmq::Context, ep: &str) -> zmq::Socket {
        let s = ctx.socket(zmq::REQ).unwrap();
        s.set_linger(0).unwrap();
        s.connect(ep).unwrap();
        s
    }

    /// A worker thread: tests each number it pulls, sends each prime back, until `stop`.
    pub fn worker(
        ctx: &zmq::Context,
        work: &str,
        results: &str,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let pull = ctx.socket(zmq::PULL).unwrap();
        pull.set_linger(0).unwrap();
        pull.connect(work).unwrap();
        let req = source(ctx, results);
        std::thread::spawn(move || loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if pull.poll(zmq::POLLIN, 100).unwrap_or(0) == 0 {
                continue;
            }
            let Ok(b) = pull.recv_bytes(0) else { return };
            let (tag, n) = value(&b);
            assert_eq!(tag, b'n');
            if is_prime(n) {
                assert_eq!(request(&req, &msg(b'p', n)), msg(b'p', n), "acknowledged");
            }
        })
    }

    /// A sink subscribed to `n` and `p`; `probe` makes the source send a number until
    /// the sink sees it published (the subscription is in place), then the caller sends.
    pub struct Sink {
        pub sub: zmq::Socket,
        pub numbers: BTreeSet<i64>,
        pub primes: BTreeSet<i64>,
    }

    impl Sink {
        pub fn new(ctx: &zmq::Context, ep: &str) -> Sink {
            let sub = ctx.socket(zmq::SUB).unwrap();
            sub.set_linger(0).unwrap();
            sub.set_subscribe(b"n").unwrap();
            sub.set_subscribe(b"p").unwrap();
            sub.connect(ep).unwrap();
            Sink { sub, numbers: BTreeSet::new(), primes: BTreeSet::new() }
        }

        fn drain(&mut self, wait_ms: i64) {
            if self.sub.poll(zmq::POLLIN, wait_ms).unwrap() == 0 {
                return;
            }
            while let Ok(b) = self.sub.recv_bytes(zmq::DONTWAIT) {
                match value(&b) {
                    (b'n', v) => self.numbers.insert(v),
                    (b'p', v) => self.primes.insert(v),
                    other => panic!("unexpected {other:?}"),
                };
            }
        }

        pub fn probe(&mut self, src: &zmq::Socket, n: i64) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.numbers.contains(&n) {
                assert!(Instant::now() < deadline, "the sink never saw the probe");
                assert_eq!(request(src, &msg(b'n', n)), msg(b'n', n));
                self.drain(100);
            }
        }

        /// Sends the prime `n` until the sink sees it come back as a prime: a classic
        /// worker is connected (a number sent while none is goes to the broker's own
        /// queue, for batched workers, by design).
        pub fn probe_prime(&mut self, src: &zmq::Socket, n: i64) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.primes.contains(&n) {
                assert!(Instant::now() < deadline, "no classic worker ever answered");
                assert_eq!(request(src, &msg(b'n', n)), msg(b'n', n));
                self.drain(100);
            }
        }

        pub fn wait_for(&mut self, primes: &BTreeSet<i64>) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !primes.is_subset(&self.primes) {
                assert!(
                    Instant::now() < deadline,
                    "missing primes: {:?}",
                    primes.difference(&self.primes).take(5).collect::<Vec<_>>()
                );
                self.drain(100);
            }
        }
    }
}

/// The lecture's pipeline against our broker: a classic source, two classic workers and
/// a classic sink exchanging 9-byte messages get exactly the primes of the numbers sent;
/// malformed messages get an error reply and the broker keeps serving.
#[test]
fn classic_clients_get_exactly_the_primes() {
    use classic_clients::*;
    let _w = Watchdog::new(Duration::from_secs(120));
    let cdir = tempfile::tempdir().unwrap();
    let caddr = cdir.path().join("classic").display().to_string();
    let p = Pipeline::new(0, &["--classic", &caddr], &[]);
    let ep = |s: &str| format!("ipc://{caddr}.{s}");
    let ctx = zmq::Context::new();
    let mut sink = Sink::new(&ctx, &ep("pub"));
    let src = source(&ctx, &ep("src"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2).map(|_| worker(&ctx, &ep("work"), &ep("res"), stop.clone())).collect();
    sink.probe(&src, 1);
    sink.probe_prime(&src, 2);
    for n in 3..=3000 {
        assert_eq!(request(&src, &msg(b'n', n)), msg(b'n', n), "acknowledged");
    }
    let want = primes_to(3000);
    sink.wait_for(&want);
    assert_eq!(sink.primes, want, "exactly the primes");
    assert!((1..=3000).all(|n| sink.numbers.contains(&n)), "every number published");
    // Malformed: a short message, an unknown tag, a prime sent to the sources' endpoint.
    for bad in [&b"n1234567"[..], &msg(b'x', 5), &msg(b'p', 7)] {
        let reply = request(&src, bad);
        assert_eq!(reply[0], b'E', "{:?}", String::from_utf8_lossy(&reply));
    }
    let results = source(&ctx, &ep("res"));
    assert_eq!(request(&results, &msg(b'n', 4))[0], b'E');
    assert_eq!(request(&src, &msg(b'n', 3001)), msg(b'n', 3001), "still serving");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(p);
    for w in workers {
        let _ = w.join();
    }
}

/// Classic and batched clients share one broker: a classic source's numbers are tested
/// by our batched workers, the classic sink and a batched subscriber both see the
/// primes, and a batched job's primes reach the classic sink too.
#[test]
fn classic_and_batched_clients_share_the_broker() {
    use classic_clients::*;
    use cluster::wire::{job_prefix, tag};
    let _w = Watchdog::new(Duration::from_secs(120));
    let cdir = tempfile::tempdir().unwrap();
    let caddr = cdir.path().join("classic").display().to_string();
    let p = Pipeline::new(2, &["--classic", &caddr], &[]);
    let ep = |s: &str| format!("ipc://{caddr}.{s}");
    let ctx = zmq::Context::new();
    let mut sink = Sink::new(&ctx, &ep("pub"));
    let src = source(&ctx, &ep("src"));
    let addr = BrokerAddr::parse(&p.addr).unwrap();
    let classic_job = cluster::classic::JOB;
    let ours = cluster::sink::subscribe(
        &ctx,
        &addr,
        &[&job_prefix(tag::PRIMES, classic_job), &job_prefix(tag::NUMBERS, classic_job)],
    )
    .unwrap();
    sink.probe(&src, 1);
    // The batched subscription in place too: probe until it sees a number published.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the batched subscriber never saw the probe");
        assert_eq!(request(&src, &msg(b'n', 1)), msg(b'n', 1));
        if ours.poll(zmq::POLLIN, 100).unwrap() > 0
            && matches!(Msg::decode(&ours.recv_bytes(0).unwrap()), Ok(Msg::Numbers { .. }))
        {
            break;
        }
    }
    for n in 2..=2000 {
        assert_eq!(request(&src, &msg(b'n', n)), msg(b'n', n));
    }
    let want = primes_to(2000);
    sink.wait_for(&want);
    assert_eq!(sink.primes, want);
    // The batched subscriber saw them too (tested by our workers, published both ways).
    let mut batched = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while batched != want {
        assert!(Instant::now() < deadline, "the batched subscriber saw {} of {}", batched.len(), want.len());
        if ours.poll(zmq::POLLIN, 100).unwrap() > 0 {
            if let Ok(Msg::Primes { primes, .. }) = Msg::decode(&ours.recv_bytes(0).unwrap()) {
                batched.extend(primes.iter());
            }
        }
    }
    // A batched job's primes reach the classic sink.
    let values: Vec<i64> = (100_000..100_500).collect();
    let c = run_job(&p.addr, &values, 50, Duration::ZERO, |_| {});
    let big: std::collections::BTreeSet<i64> = c.primes.iter().copied().collect();
    assert!(!big.is_empty());
    sink.wait_for(&big);
}

/// A spool job through a broker that leaves out every seventh publication (a test
/// switch): a batch whose primes never arrived is run again at once (its completion says
/// how many primes it had), one whose completion never arrived after the stall time; the
/// result is exact, and the summary counts the batches run again.
#[test]
fn a_spool_job_is_exact_when_publications_are_lost() {
    let _w = Watchdog::new(Duration::from_secs(180));
    let p = Pipeline::new(2, &["--test-drop-every", "7"], &[]);
    let dir = tempfile::tempdir().unwrap();
    for d in ["in", "out", "failed"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    std::fs::write(dir.path().join("in/a.job"), "1..200000\n").unwrap();
    let d = dir.path().display().to_string();
    let (st, out, err) = tests::run_with_timeout(
        tests::command(&tests::bin_path("cluster")).args([
            "spool",
            "--dir",
            &d,
            "--broker",
            &p.addr,
            "--once",
            "--batch",
            "1000",
            "--stall-s",
            "1",
            "--settle-ms",
            "0",
        ]),
        Duration::from_secs(150),
    );
    assert!(st.success(), "{out}{err}");
    let got: Vec<i64> =
        std::fs::read_to_string(dir.path().join("out/a.primes")).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, sieve(1, 200_000), "exact despite lost publications");
    let summary = std::fs::read_to_string(dir.path().join("out/a.summary")).unwrap();
    let again: u64 = summary
        .lines()
        .find_map(|l| l.strip_prefix("resubmitted batches: "))
        .and_then(|n| n.parse().ok())
        .expect("a resubmitted line");
    assert!(again > 0, "{summary}");
}

/// Active redundancy, the voter in the client: spool jobs with `# replicas N`.
mod replicas {
    use super::*;

    /// A job file asking for `replicas`, run by a spool watcher to the end; the summary.
    pub fn run(addr: &str, replicas: u8, top: i64, during: impl FnOnce(&std::path::Path)) -> (Vec<i64>, String) {
        let dir = tempfile::tempdir().unwrap();
        for d in ["in", "out", "failed"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("in/a.job"), format!("# replicas {replicas}\n1..{top}\n")).unwrap();
        let d = dir.path().display().to_string();
        let mut spool = tests::command(&tests::bin_path("cluster"))
            .args(["spool", "--dir", &d, "--broker", addr, "--once", "--settle-ms", "0", "--stall-s", "5"])
            .spawn()
            .unwrap();
        during(dir.path());
        assert!(tests::wait_exit(&mut spool, Duration::from_secs(240), "the job ends").success());
        let primes = std::fs::read_to_string(dir.path().join("out/a.primes"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        (primes, std::fs::read_to_string(dir.path().join("out/a.summary")).unwrap())
    }

    /// The worker id a worker process announced.
    pub fn id(w: &ClusterProc) -> String {
        w.ready.split_whitespace().nth(1).unwrap().to_string()
    }

    pub fn answers(summary: &str, worker: &str) -> u64 {
        summary
            .lines()
            .find_map(|l| l.strip_prefix(&format!("answers: worker {worker} ")))
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// Four workers, one answering wrongly 5% of the time, a job of 1..2,000,000 with
/// `# replicas 3`: the primes are exact, the faulty worker is named in the summary, and
/// the broker gives it no more work (it answers far fewer batches than the others).
#[test]
fn the_voter_outvotes_and_bans_a_faulty_worker() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let mut p = Pipeline::new(3, &[], &[]);
    p.workers.push(Pipeline::worker(&p.addr, &["--faulty", "0.05"]));
    let faulty = replicas::id(&p.workers[3]);
    let (primes, summary) = replicas::run(&p.addr, 3, 2_000_000, |_| {});
    assert_eq!(primes, sieve(1, 2_000_000), "{summary}");
    assert!(summary.contains(&format!("wrong answers: worker {faulty}")), "{summary}");
    // Banned at its first wrong answer (after about twenty answers at 5%): it answers far
    // fewer batches than any honest worker (the summary also says how many of its answers
    // were already on their way when it was found out).
    let honest = (0..3).map(|i| replicas::answers(&summary, &replicas::id(&p.workers[i]))).min().unwrap();
    assert!(replicas::answers(&summary, &faulty) * 2 < honest, "no more work after the ban: {summary}");
}

/// Two faulty workers of five with `# replicas 3`: both are found out (their random
/// faults rarely agree), and nothing wrong is accepted; three honest workers finish.
/// (Of four, the job would wait for a third worker once both are banned: the broker
/// never gives two copies of a batch to one worker.) Two wrong answers that agreed would
/// outvote the right one: 2k+1 replicas mask k faults, no more.
#[test]
fn two_faulty_workers_of_five_are_caught() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let mut p = Pipeline::new(3, &[], &[]);
    for _ in 0..2 {
        p.workers.push(Pipeline::worker(&p.addr, &["--faulty", "0.2"]));
    }
    let (primes, summary) = replicas::run(&p.addr, 3, 1_000_000, |_| {});
    assert_eq!(primes, sieve(1, 1_000_000), "{summary}");
    for i in 3..5 {
        assert!(summary.contains(&format!("wrong answers: worker {}", replicas::id(&p.workers[i]))), "{summary}");
    }
}

/// A replica's worker SIGKILLed mid-job with `# replicas 2`: its copies go to the
/// others, and the job completes exactly.
#[test]
fn a_replica_worker_killed_mid_job() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let mut p = Pipeline::new(3, &[], &[]);
    let addr = p.addr.clone();
    let (primes, summary) = replicas::run(&addr, 2, 2_000_000, |dir| {
        // The job is claimed (moved out of in/): kill a worker while it runs.
        tests::wait_until(Duration::from_secs(30), "the job claimed", || !dir.join("in/a.job").exists());
        p.workers[0].kill();
    });
    assert_eq!(primes, sieve(1, 2_000_000), "{summary}");
}

/// Load-aware dispatch (`--dispatch load`): two workers asking for 4 items each; after
/// its first item one of them reports a CPU share of 0.3 (a test switch: the load comes
/// at a known moment whatever else the machine runs; the measurement itself is
/// unit-tested, and `scripts/bench-cluster` loads a CPU for real with `taskset`). That
/// worker's capacity falls to one item and it hands back what it had not started
/// (sender-initiated); the broker confirms, the other worker takes them; the job's
/// primes are exact and every number is done once.
#[test]
fn an_overloaded_worker_hands_work_back_and_nothing_is_lost() {
    let _w = tests::Watchdog::new(Duration::from_secs(120));
    let mut p = Pipeline::new(0, &["--dispatch", "load", "--heartbeat-ms", "200", "--liveness-ms", "2000"], &[]);
    // Every test run 20 times: an item takes long enough for the rest to arrive.
    let args = ["--dispatch", "load", "--credit", "4", "--slow", "20"];
    let mut loaded = Pipeline::worker(&p.addr, &[&args[..], &["--test-cpu-share-after", "1:300"]].concat());
    let mut other = Pipeline::worker(&p.addr, &args);
    // Large numbers (most need the whole Miller-Rabin test).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let values: Vec<i64> = (0..600_000)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 2) as i64
        })
        .collect();
    let want: Vec<i64> = {
        let mut w: Vec<i64> = values.iter().copied().filter(|&n| cluster::prime::is_prime(n)).collect();
        w.sort_unstable();
        w
    };
    let c = run_job(&p.addr, &values, 4000, Duration::from_millis(500), |_| {});
    assert_eq!(c.done_numbers, values.len() as u64, "every number done exactly once");
    assert_eq!(c.primes, want);
    let handed_back = |w: &mut ClusterProc| -> u64 {
        assert!(w.terminate(), "the worker stops on SIGTERM");
        let line = std::iter::from_fn(|| w.next_line(Duration::from_secs(5)))
            .find(|l| l.contains("stopping:"))
            .expect("the worker's summary");
        line.split("handed back ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap()
    };
    let (l, o) = (handed_back(&mut loaded), handed_back(&mut other));
    eprintln!("handed back: loaded {l}, other {o}");
    assert!(l > 0, "the loaded worker handed items back");
    assert!(p.broker.terminate());
}

/// The spool watcher claims a job as soon as the change notice of its creation reaches
/// the watcher's mount, not on a scan interval: with scans an hour apart, a job dropped
/// through another mount is done within seconds. (With the wait on notices taken out,
/// the watcher sleeps its interval and this test fails: seen.)
#[test]
fn the_spool_watcher_wakes_on_the_notice_of_a_new_job() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let p = Pipeline::new(1, &[], &[]);
    let rig = Rig::new("");
    let watched = rig.second_mount("watched", "");
    std::fs::create_dir(rig.mnt("spool")).unwrap();
    let dir = watched.path("spool").display().to_string();
    let w = ClusterProc::start(
        &["spool", "--dir", &dir, "--broker", &p.addr, "--id", "w", "--settle-ms", "0", "--poll-ms", "3600000"],
        "spool ",
    );
    let drop_job = |name: &str| {
        std::fs::write(rig.mnt(&format!("spool/in/.{name}.tmp")), "1..1000\n").unwrap();
        std::fs::rename(rig.mnt(&format!("spool/in/.{name}.tmp")), rig.mnt(&format!("spool/in/{name}.job"))).unwrap();
    };
    // The first job shows the watcher has scanned; the second comes while it waits.
    tests::wait_until(Duration::from_secs(10), "spool folders made", || rig.mnt("spool/in").is_dir());
    drop_job("first");
    let line = w.next_line(Duration::from_secs(30)).expect("the first job done");
    assert!(line.starts_with("done first"), "{line}");
    drop_job("second");
    let line = w.next_line(Duration::from_secs(10)).expect("the second job done within seconds");
    assert!(line.starts_with("done second"), "{line}");
    let summary = std::fs::read_to_string(rig.mnt("spool/out/second.summary")).unwrap();
    assert!(summary.contains("numbers: 1000\nprimes: 168\n"), "{summary}");
}

/// `cluster broker --metrics`: after a job, the broker's counters in the Prometheus text
/// format say how many batches it took and finished and how many workers are alive.
#[test]
fn the_broker_serves_metrics() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let maddr = format!("127.0.0.1:{}", tests::free_port());
    let p = Pipeline::new(2, &["--metrics", &maddr, "--heartbeat-ms", "100", "--liveness-ms", "1000"], &[]);
    let values: Vec<i64> = (1..=100_000).collect();
    let c = run_job(&p.addr, &values, 1000, Duration::ZERO, |_| {});
    assert_eq!(c.done_numbers, 100_000);
    let get = || tests::http_get(&maddr, "/metrics");
    let value = tests::metric;
    tests::wait_until(Duration::from_secs(5), "the figures after the job", || {
        let t = get();
        value(&t, "cluster_broker_batches_done_total") == 100.0 && value(&t, "cluster_broker_workers ") == 2.0
    });
    let t = get();
    assert_eq!(value(&t, "cluster_broker_batches_accepted_total"), 100.0, "{t}");
    assert_eq!(value(&t, "cluster_broker_queued "), 0.0, "{t}");
    assert!(value(&t, "cluster_broker_publications_total") >= 200.0, "{t}");
}

/// The pid of a `cluster` child of `parent` whose arguments include all of `words`.
fn pid_of(parent: i32, words: &[&str]) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let ours = ppid == parent && args.first()?.ends_with("/cluster");
        (ours && words.iter().all(|w| args.iter().any(|a| a == w))).then_some(pid)
    })
}

/// How many lines of the log at `path` contain `text`.
fn log_count(path: &std::path::Path, text: &str) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.contains(text)).count()
}

/// Binary Star: a broker pair, workers and a spool watcher listing both. The active
/// broker is SIGKILLed in the middle of a job, twice, alternating (the first, restarted,
/// stands by and takes over in turn): the job ends with exactly the sieve's primes, each
/// once, and the watcher submitted what was pending again as soon as the other broker
/// answered (its stall timeout is far off).
#[test]
fn a_broker_pair_survives_alternating_kills() {
    let _w = Watchdog::new(Duration::from_secs(240));
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let (a, b) = (p("a").display().to_string(), p("b").display().to_string());
    let beat = ["--heartbeat-ms", "200", "--liveness-ms", "1000"];
    let start = |me: &str, flag: &str, peer: &str, log: &str| {
        let mut args = vec!["broker", "--listen", me, flag, peer];
        args.extend_from_slice(&beat);
        ClusterProc::start_logged(&args, "broker listening on", &p(log))
    };
    let mut ba = start(&a, "--backup", &b, "a.log");
    let mut bb = start(&b, "--backup-of", &a, "b.log");
    tests::wait_until(Duration::from_secs(10), "the backup stands by", || {
        log_count(&p("b.log"), "broker passive") == 1
    });
    assert_eq!(log_count(&p("a.log"), "broker active"), 1, "the primary is active");
    let list = format!("{a},{b}");
    let _workers: Vec<ClusterProc> = (0..2).map(|_| Pipeline::worker(&list, &["--slow", "300"])).collect();
    let spool = p("spool");
    std::fs::create_dir(&spool).unwrap();
    let spool_s = spool.display().to_string();
    let args = [
        "spool",
        "--dir",
        &spool_s,
        "--broker",
        &list,
        "--id",
        "w",
        "--batch",
        "1000",
        "--stall-s",
        "600",
        "--settle-ms",
        "0",
    ];
    let w = ClusterProc::start_logged(&args, "spool ", &p("spool.log"));
    let (lo, hi) = (1_000_000_000_000i64, 1_000_000_299_999i64);
    std::fs::write(spool.join("in/j.job"), format!("{lo}..{hi}\n")).unwrap();
    let tmp = spool.join("out/.j.primes.tmp@w");
    let out = spool.join("out/j.primes");
    let progress_since = |since| wait_for_progress(&tmp, since);
    progress_since(std::time::UNIX_EPOCH);
    ba.kill();
    let (t, killed) = (std::time::SystemTime::now(), Instant::now());
    tests::wait_until(Duration::from_secs(30), "the backup takes over", || {
        log_count(&p("b.log"), "broker active") == 1
    });
    let active_after = killed.elapsed();
    progress_since(t);
    eprintln!(
        "broker pair: the backup active {active_after:?} after the kill, the job's output growing again after {:?}",
        killed.elapsed()
    );
    // The first comes back as it was started: it hears the active backup and stands by.
    let mut ba = start(&a, "--backup", &b, "a2.log");
    tests::wait_until(Duration::from_secs(10), "the restarted primary stands by", || {
        log_count(&p("a2.log"), "broker passive") == 1
    });
    assert_eq!(log_count(&p("a2.log"), "broker active"), 0, "it never served beside the active backup");
    assert!(!out.exists(), "the job is still running");
    bb.kill();
    tests::wait_until(Duration::from_secs(30), "the first takes over again", || {
        log_count(&p("a2.log"), "broker active") == 1
    });
    let want = sieve(lo, hi);
    assert_eq!(w.next_line(Duration::from_secs(150)), Some(format!("done j: {} primes", want.len())));
    let want: String = want.iter().map(|n| format!("{n}\n")).collect();
    assert!(std::fs::read_to_string(&out).unwrap() == want, "primes differ from the sieve");
    let took_over = log_count(&p("spool.log"), "another broker took over; submitting again");
    assert!(took_over >= 2, "the watcher resubmitted at each takeover ({took_over} times)");
    ba.kill();
}

/// A broker pair set up wrong gets one line each: two primaries of each other, a peer
/// at the broker's own address, `--classic` in a pair, a bad address in a client's list.
#[test]
fn a_misconfigured_broker_pair_says_why() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a").display().to_string(), dir.path().join("b").display().to_string());
    let run = |args: &[&str]| {
        let (st, _, err) =
            tests::run_with_timeout(tests::command(&tests::bin_path("cluster")).args(args), Duration::from_secs(20));
        assert!(!st.success(), "{args:?} fails");
        assert_eq!(err.trim().lines().filter(|l| l.starts_with("cluster: ")).count(), 1, "{err}");
        err
    };
    let mut pa = ClusterProc::start(&["broker", "--listen", &a, "--backup", &b], "broker listening on");
    let err = run(&["broker", "--listen", &b, "--backup", &a]);
    assert!(err.contains("the peer was started as a primary too"), "{err}");
    pa.kill();
    let err = run(&["broker", "--listen", &a, "--backup-of", &a]);
    assert!(err.contains("needs its own address"), "{err}");
    let err = run(&["broker", "--listen", &a, "--backup-of", &b, "--classic", "127.0.0.1:1"]);
    assert!(err.contains("--classic cannot be one of a pair"), "{err}");
    let err = run(&["worker", "--broker", &format!("{a},127.0.0.1:x")]);
    assert!(err.contains("the port is not a number"), "{err}");
}
