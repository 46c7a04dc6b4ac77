//! File leases end to end: three mounts of one export, each with its own `cluster node`
//! (node 1 the root, nodes 2 and 3 its children), processes locking one file through
//! `flock` and `fcntl`.

use std::process::Stdio;
use std::time::{Duration, Instant};
use tests::{bin_path, command, ClusterProc, MountProc, ServerProc, Watchdog};

type Held = (std::process::Child, std::io::BufReader<std::process::ChildStdout>);

/// Zeroes the counter at `file`, then starts `lock-counter --hold` on `path` (the same
/// file, maybe through another mount) and waits until it holds the lock.
fn hold(file: &std::path::Path, path: &str) -> Held {
    std::fs::write(file, format!("{:020}\n", 0)).unwrap();
    let mut holder = command(&bin_path("lock-counter"))
        .args([path, "1", "flock", "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    (holder, out)
}

struct LeaseRig {
    // Field order is drop order: mounts, then nodes, then the server, then the folders.
    mounts: Vec<MountProc>,
    nodes: Vec<ClusterProc>,
    _server: ServerProc,
    dir: tempfile::TempDir,
}

impl LeaseRig {
    fn new() -> LeaseRig {
        LeaseRig::with("raymond")
    }

    /// With Raymond, node 1 is the root of nodes 2 and 3; with the other algorithms the
    /// nodes are peers (Maekawa's grid takes 4: node 4 has no mount).
    fn with(mutex: &str) -> LeaseRig {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s);
        for d in ["export", "state", "m1", "m2", "m3"] {
            std::fs::create_dir(p(d)).unwrap();
        }
        let server = ServerProc::start(&p("export"), &p("state"), "127.0.0.1:0", &["--no-root-squash"]);
        let nodes = match mutex {
            "raymond" => (1..=3).map(|i| Self::node(dir.path(), i)).collect(),
            // Raymond on the tree echo waves find among the peers.
            "raymond-by-peers" => (1..=3).map(|i| Self::peer(dir.path(), i, 3, "raymond")).collect(),
            _ => {
                let n = if mutex == "maekawa" { 4 } else { 3 };
                (1..=n).map(|i| Self::peer(dir.path(), i, n, mutex)).collect()
            }
        };
        let mounts = (1..=3)
            .map(|i| {
                let opts = format!("leases={}", p(&format!("n{i}")).display());
                MountProc::start(&server.addr, &p(&format!("m{i}")), &opts)
            })
            .collect();
        LeaseRig { mounts, nodes, _server: server, dir }
    }

    /// Node `i` (1 is the root, the parent of 2 and 3), listening on `DIR/n<i>`.
    fn node(dir: &std::path::Path, i: usize) -> ClusterProc {
        let listen = dir.join(format!("n{i}")).display().to_string();
        let parent = dir.join("n1").display().to_string();
        let id = i.to_string();
        let mut args = vec!["node", "--id", &id, "--listen", &listen];
        if i > 1 {
            args.extend(["--parent", &parent]);
        }
        ClusterProc::start(&args, "node ")
    }

    /// Node `i` of `n` peers running `mutex`, listening on `DIR/n<i>`.
    fn peer(dir: &std::path::Path, i: usize, n: usize, mutex: &str) -> ClusterProc {
        let addr = |j: usize| dir.join(format!("n{j}")).display().to_string();
        let peers: Vec<String> = (1..=n).filter(|&j| j != i).map(|j| format!("{j}@{}", addr(j))).collect();
        let (id, listen, peers) = (i.to_string(), addr(i), peers.join(","));
        ClusterProc::start(&["node", "--id", &id, "--listen", &listen, "--mutex", mutex, "--peers", &peers], "node ")
    }

    /// Zeroes the counter, then starts `lock-counter --hold` on mount `m` and waits until
    /// it holds the lock; returns the process and its output (stdin is piped: a line
    /// makes it write under the lock).
    fn hold(&self, m: usize) -> Held {
        hold(&self.mounts[0].path("counter"), &self.counter(m))
    }

    /// `cluster lease status` of node `i`.
    fn status(&self, i: usize) -> String {
        let node = self.dir.path().join(format!("n{i}")).display().to_string();
        let (ok, text, err) = tests::run_with_timeout(
            command(&bin_path("cluster")).args(["lease", "status", "--node", &node]),
            Duration::from_secs(20),
        );
        assert!(ok.success(), "{err}");
        text
    }

    /// Waits until node `i` shows a local waiter queued for the lease (a process on its
    /// mount blocked in `flock`).
    fn wait_queued(&self, i: usize) {
        tests::wait_until(Duration::from_secs(30), &format!("a waiter queued at node {i}"), || {
            self.status(i).contains("local waiters 1")
        });
    }

    /// `cluster lease audit` over the three nodes: its output (it must succeed).
    fn audit(&self) -> String {
        let mut cmd = command(&bin_path("cluster"));
        cmd.args(["lease", "audit"]);
        for i in 1..=3 {
            cmd.arg("--node").arg(self.dir.path().join(format!("n{i}")));
        }
        let (ok, text, err) = tests::run_with_timeout(&mut cmd, Duration::from_secs(30));
        assert!(ok.success(), "{err}");
        text
    }

    fn counter(&self, m: usize) -> String {
        self.mounts[m].path("counter").display().to_string()
    }

    fn read_export(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("export/counter")).unwrap().trim().parse().unwrap()
    }

    /// Runs `lock-counter` on every mount at once, `n` increments each.
    fn count(&self, n: u32, mode: &str) {
        std::fs::write(self.mounts[0].path("counter"), format!("{:020}\n", 0)).unwrap();
        let mut kids: Vec<_> = (0..3)
            .map(|m| {
                command(&bin_path("lock-counter"))
                    .args([&self.counter(m), &n.to_string(), mode])
                    .spawn()
                    .expect("spawn lock-counter")
            })
            .collect();
        for k in &mut kids {
            assert!(k.wait().unwrap().success(), "lock-counter failed");
        }
    }
}

/// Reference: the demonstration: 3 x 200 increments under a lock give exactly
/// 600, whichever lock call the processes use.
#[test]
fn three_mounts_count_to_600_under_flock_and_fcntl() {
    let _w = Watchdog::new(Duration::from_secs(240));
    let rig = LeaseRig::new();
    for mode in ["flock", "fcntl"] {
        rig.count(200, mode);
        assert_eq!(rig.read_export(), 600, "{mode}: no update lost");
        for m in 0..3 {
            let seen: u64 = std::fs::read_to_string(rig.mounts[m].path("counter")).unwrap().trim().parse().unwrap();
            assert_eq!(seen, 600, "mount {m} sees the final value");
        }
    }
    let status = rig.status(1);
    assert!(status.contains("child 2: alive") && status.contains("lease "), "{status}");
    // Vector time says the same: every two of the 1,200 critical sections are ordered.
    let audit = rig.audit();
    assert!(audit.contains("1200 critical sections of 1 leases on 3 nodes, each pair ordered"), "{audit}");
}

/// Every algorithm serves file leases end to end: three mounts count to exactly 600
/// under `flock`, and the audit of the nodes' logs finds every two critical sections
/// ordered by happened-before.
#[test]
fn every_algorithm_counts_to_600() {
    let _w = Watchdog::new(Duration::from_secs(300));
    for mutex in ["central", "ring", "lamport", "maekawa", "raymond-by-peers"] {
        let rig = LeaseRig::with(mutex);
        rig.count(200, "flock");
        assert_eq!(rig.read_export(), 600, "{mutex}: no update lost");
        let audit = rig.audit();
        assert!(audit.contains("600 critical sections of 1 leases"), "{mutex}: {audit}");
    }
}

/// The node whose mount holds a lock dies; the root sees it stop answering, regenerates
/// the token (new fencing epoch), and a process on another mount gets the lock.
#[test]
fn killing_the_token_holder_lets_the_others_proceed() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut rig = LeaseRig::new();
    let (mut holder, mut holder_out) = rig.hold(1);
    let mut line = String::new();
    // Another mount waits for the lock...
    let mut waiter = command(&bin_path("lock-counter")).args([&rig.counter(2), "1", "flock"]).spawn().unwrap();
    rig.wait_queued(3);
    assert!(waiter.try_wait().unwrap().is_none(), "the lock is held elsewhere");
    // ...until the holder's node dies.
    rig.nodes[1].kill();
    let status =
        tests::wait_exit(&mut waiter, Duration::from_secs(30), "the others proceed after the holder's node died");
    assert!(status.success());
    assert_eq!(rig.read_export(), 1);
    let text = rig.status(1);
    assert!(text.contains("child 2: NOT ANSWERING") && text.contains("regenerated 1"), "{text}");
    // The old holder still believes it holds the lock; its write carries the old fencing
    // number, and the server refuses it: the new holder's data stands.
    std::io::Write::write_all(holder.stdin.as_mut().unwrap(), b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut holder_out, &mut line).unwrap();
    assert!(line.starts_with("write refused"), "{line}");
    assert_eq!(rig.read_export(), 1, "the stale holder's write did not land");
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A node restarted at once (before its parent could notice it die) has lost the token
/// it held: the parent sees the new incarnation, makes a new token, and the others
/// proceed; the restarted node serves its mount again.
#[test]
fn a_node_restarted_while_holding_the_token_does_not_lose_it() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut rig = LeaseRig::new();
    rig.count(5, "flock"); // the token now lies somewhere below the root
    let counter = rig.counter(1);
    let (st, _, err) = tests::run_with_timeout(
        command(&bin_path("lock-counter")).args([&counter, "1", "flock"]),
        Duration::from_secs(30),
    );
    assert!(st.success(), "{err}");
    // The token is at node 2 (its mount took the lock last). Restart node 2 at once.
    rig.nodes[1].kill();
    rig.nodes[1] = LeaseRig::node(rig.dir.path(), 2);
    for m in [2, 1, 0] {
        let (st, _, err) = tests::run_with_timeout(
            command(&bin_path("lock-counter")).args([&rig.counter(m), "3", "flock"]),
            Duration::from_secs(60),
        );
        assert!(st.success(), "mount {m}: {err}");
    }
    assert_eq!(rig.read_export(), 15 + 1 + 9);
    assert!(rig.status(1).contains("regenerated 1"));
}

/// A process killed while it waits for a lock dies at once (its wait is abandoned), and
/// the holder killed while it holds one gives the lease back at its close: neither leaves
/// the lock stuck, and a later process on the waiter's mount gets it.
#[test]
fn processes_killed_waiting_or_holding_do_not_keep_the_lock() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let rig = LeaseRig::new();
    let (mut holder, _out) = rig.hold(0);
    let mut waiter = command(&bin_path("lock-counter")).args([&rig.counter(1), "1", "flock"]).spawn().unwrap();
    rig.wait_queued(2);
    assert!(waiter.try_wait().unwrap().is_none(), "waiting");
    // Killed while it waits: it must die now, not when the lock comes.
    let _ = waiter.kill();
    let t = Instant::now();
    let _ = waiter.wait();
    assert!(t.elapsed() < Duration::from_secs(10), "a killed waiter died at once");
    let _ = holder.kill();
    let _ = holder.wait();
    let (st, _, err) = tests::run_with_timeout(
        command(&bin_path("lock-counter")).args([&rig.counter(1), "2", "flock"]),
        Duration::from_secs(60),
    );
    assert!(st.success(), "{err}");
    assert_eq!(rig.read_export(), 2);
}

#[test]
fn a_bad_lease_node_address_fails_the_mount_with_one_line() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    for d in ["export", "state", "m"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let server = ServerProc::start(&dir.path().join("export"), &dir.path().join("state"), "127.0.0.1:0", &[]);
    for (opt, want) in [
        ("leases=nonsense", "HOST:PORT"),
        (&format!("leases={}", dir.path().join("nobody").display()) as &str, "does not answer"),
    ] {
        let (status, _, err) = tests::run_with_timeout(
            command(&bin_path("fs-client")).args(["mount", &server.addr]).arg(dir.path().join("m")).args(["-o", opt]),
            Duration::from_secs(30),
        );
        assert!(!status.success());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!tests::is_mounted(&dir.path().join("m")));
    }
}

/// Bad node options get one line and exit 1: an unknown algorithm, peers that do not
/// form Maekawa's grid, a peer algorithm without peers, `--parent` with a peer
/// algorithm, `--peers` with Raymond, a malformed peer.
#[test]
fn bad_node_options_get_one_line() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let me = dir.path().join("me").display().to_string();
    let other = dir.path().join("other").display().to_string();
    let two = format!("2@{other}");
    let three = format!("2@{other},3@{other}x");
    let cases: [(&[&str], &str); 6] = [
        (&["--mutex", "bogus", "--peers", &two], "unknown --mutex 'bogus'"),
        (&["--mutex", "maekawa", "--peers", &three], "square number of nodes"),
        (&["--mutex", "lamport"], "needs --peers"),
        (&["--mutex", "central", "--peers", &two, "--parent", &other], "takes --peers"),
        (&["--peers", &two, "--parent", &other], "not both"),
        (&["--mutex", "ring", "--peers", "x@y"], "not a number"),
    ];
    for (extra, want) in cases {
        let (status, _, err) = tests::run_with_timeout(
            command(&bin_path("cluster")).args(["node", "--id", "1", "--listen", &me]).args(extra),
            Duration::from_secs(30),
        );
        assert_eq!(status.code(), Some(1), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err:?} lacks {want:?}");
    }
    // `cluster status` of a bad address, and of a node nobody runs.
    for (node, want) in [("nonsense", "HOST:PORT"), (me.as_str(), "did not answer")] {
        let (status, _, err) = tests::run_with_timeout(
            command(&bin_path("cluster")).args(["status", "--node", node, "--timeout-s", "2"]),
            Duration::from_secs(30),
        );
        assert_eq!(status.code(), Some(1), "{node}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{node}: {err}");
        assert!(err.contains(want), "{node}: {err:?} lacks {want:?}");
    }
}

/// Two nodes of one cluster started with different algorithms: the one that gets the
/// other's message drops it and says so (counted in its status, logged once), and keeps
/// serving its own clients.
#[test]
fn nodes_of_different_algorithms_refuse_each_other() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let addr = |i: u32| dir.path().join(format!("n{i}")).display().to_string();
    let (p1, p2) = (format!("2@{}", addr(2)), format!("1@{}", addr(1)));
    let (a1, a2) = (addr(1), addr(2));
    let _n1 =
        ClusterProc::start(&["node", "--id", "1", "--listen", &a1, "--mutex", "central", "--peers", &p1], "node ");
    let _n2 =
        ClusterProc::start(&["node", "--id", "2", "--listen", &a2, "--mutex", "lamport", "--peers", &p2], "node ");
    let c2 = cluster::lease::LeaseClient::connect(&a2).unwrap();
    // Node 2 asks node 1 (Lamport's request); node 1 runs central and drops it.
    assert_eq!(c2.acquire(b"k", false), None, "never granted across algorithms");
    let c1 = cluster::lease::LeaseClient::connect(&a1).unwrap();
    tests::wait_until(Duration::from_secs(20), "node 1 dropped a foreign message", || {
        c1.status(Duration::from_secs(5)).is_some_and(|s| s.contains("foreign messages dropped 1"))
    });
    // Node 1 (the coordinator) still serves its own client.
    assert!(c1.acquire(b"other", true).is_some());
}

/// Spool watchers on two mounts claim jobs under leases; the watcher running a long job
/// is killed, its node lets the job's lease go, and the other watcher takes the job over
/// at once (the claim timeout is set far out of reach) and finishes it, whole.
#[test]
fn spool_claims_under_leases_are_taken_over_when_a_watcher_dies() {
    let _w = Watchdog::new(Duration::from_secs(240));
    let rig = LeaseRig::new();
    let p = tests::Pipeline::new(2, &[], &["--slow", "300"]);
    std::fs::create_dir(rig.mounts[0].path("spool")).unwrap();
    let node = |i: usize| rig.dir.path().join(format!("n{i}")).display().to_string();
    let watcher = |m: usize, id: &str| {
        let dir = rig.mounts[m].path("spool").display().to_string();
        let n = node(m + 1);
        ClusterProc::start(
            &[
                "spool",
                "--dir",
                &dir,
                "--broker",
                &p.addr,
                "--id",
                id,
                "--leases",
                &n,
                "--claim-timeout-s",
                "600",
                "--batch",
                "1000",
                "--settle-ms",
                "0",
            ],
            "spool ",
        )
    };
    let mut watchers = vec![watcher(0, "a"), watcher(1, "b")];
    let inbox = |name: &str| rig.mounts[2].path(&format!("spool/in/{name}"));
    let (lo, hi) = (1_000_000_000_000i64, 1_000_000_299_999i64);
    std::fs::write(inbox("big.job"), format!("{lo}..{hi}\n")).unwrap();
    for i in 0..3 {
        std::fs::write(inbox(&format!("s{i}.job")), format!("{}..{}\n", i * 100, i * 100 + 99)).unwrap();
    }
    // Who runs the big job?
    let deadline = Instant::now() + Duration::from_secs(60);
    // (Polled on the server's side: a mount may cache "no such file" for a while.)
    let running = |id: &str| rig.dir.path().join(format!("export/spool/running/big.job@{id}")).exists();
    let victim = loop {
        if running("a") {
            break 0;
        }
        if running("b") {
            break 1;
        }
        assert!(Instant::now() < deadline, "the big job was never claimed");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    watchers[victim].kill();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines.iter().any(|l: &String| l.starts_with("done big")) {
        assert!(Instant::now() < deadline, "the big job was not taken over: {lines:?}");
        for w in &watchers {
            while let Some(l) = w.next_line(Duration::from_millis(50)) {
                lines.push(l);
            }
        }
    }
    let want = cluster::prime::sieve(lo, hi);
    assert!(lines.contains(&format!("done big: {} primes", want.len())), "{lines:?}");
    let text: String = want.iter().map(|n| format!("{n}\n")).collect();
    assert!(std::fs::read_to_string(rig.mounts[2].path("spool/out/big.primes")).unwrap() == text);
    // Every small job ran exactly once, on one watcher or the other.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..3).any(|i| !rig.dir.path().join(format!("export/spool/done/s{i}.job")).exists()) {
        assert!(Instant::now() < deadline, "small jobs unfinished");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each watcher says "done" after the job reached done/: wait for every line (a
    // loaded machine may print it well after), then for any second one.
    let said = |lines: &[String], i: usize| lines.iter().filter(|l| l.starts_with(&format!("done s{i}:"))).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..3).any(|i| said(&lines, i) == 0) && Instant::now() < deadline {
        for w in &watchers {
            while let Some(l) = w.next_line(Duration::from_millis(50)) {
                lines.push(l);
            }
        }
    }
    for w in &watchers {
        while let Some(l) = w.next_line(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    for i in 0..3 {
        assert_eq!(said(&lines, i), 1, "s{i} ran once: {lines:?}");
    }
}

/// The neighbours of node `i` in a ring of seven with the chords 1-4 and 2-6.
fn ring_with_chords(i: u32) -> Vec<u32> {
    let mut n = vec![(i + 5) % 7 + 1, i % 7 + 1];
    for (a, b) in [(1, 4), (2, 6)] {
        if i == a {
            n.push(b);
        } else if i == b {
            n.push(a);
        }
    }
    n
}

/// `cluster status` through node `addr`: its output (it must succeed: one token per lease).
fn cluster_status(addr: &str) -> String {
    let (ok, text, err) = tests::run_with_timeout(
        command(&bin_path("cluster")).args(["status", "--node", addr]),
        Duration::from_secs(30),
    );
    assert!(ok.success(), "{text}{err}");
    text
}

/// The demonstration of echo waves: seven nodes that know only their neighbours
/// (a ring with chords) find their tree; three mounts count under `flock`; an interior
/// node (one with children in the tree, and no mount) is SIGKILLed during the count: the
/// survivors rebuild the tree without it, the count ends at exactly 600, the vector-clock
/// audit of the survivors is clean, and `cluster status` answers for six nodes with one
/// token and exactly two wave messages per live edge.
#[test]
fn seven_nodes_find_their_tree_and_rebuild_it_when_an_interior_node_dies() {
    let _w = Watchdog::new(Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    for d in ["export", "state", "m2", "m4", "m6"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    let addr = |i: u32| p(&format!("n{i}")).display().to_string();
    let mut nodes: Vec<ClusterProc> = (1..=7)
        .map(|i| {
            let peers: Vec<String> = ring_with_chords(i).iter().map(|&j| format!("{j}@{}", addr(j))).collect();
            let (id, listen, peers) = (i.to_string(), addr(i), peers.join(","));
            ClusterProc::start(&["node", "--id", &id, "--listen", &listen, "--peers", &peers], "node ")
        })
        .collect();
    let server = ServerProc::start(&p("export"), &p("state"), "127.0.0.1:0", &["--no-root-squash"]);
    let mounts: Vec<MountProc> = [2, 4, 6]
        .iter()
        .map(|&i| MountProc::start(&server.addr, &p(&format!("m{i}")), &format!("leases={}", addr(i))))
        .collect();

    // The tree the waves found: every node, one root, 9 edges, 18 wave messages.
    let mut status = String::new();
    tests::wait_until(Duration::from_secs(30), "a tree of seven nodes", || {
        status = cluster_status(&addr(3));
        status.contains("7 nodes answered") && status.contains("the tree is whole")
    });
    assert!(status.contains("18 wave messages on 9 edges"), "{status}");
    let parent_of = |text: &str, i: u32| -> Option<u32> {
        let line = text.lines().find(|l| l.starts_with(&format!("node {i} ")))?;
        line.split(" parent ").nth(1)?.split(' ').next()?.parse().ok()
    };
    // An interior node without a mount: one that is some node's parent (not the root, if
    // there is a choice).
    let interior: Vec<u32> =
        [1, 3, 5, 7].into_iter().filter(|&c| (1..=7).any(|i| parent_of(&status, i) == Some(c))).collect();
    let victim =
        *interior.iter().find(|&&c| parent_of(&status, c).is_some()).or(interior.first()).expect("an interior node");

    std::fs::write(mounts[0].path("counter"), format!("{:020}\n", 0)).unwrap();
    let counter = |m: &MountProc| m.path("counter").display().to_string();
    let mut kids: Vec<_> = mounts
        .iter()
        .map(|m| command(&bin_path("lock-counter")).args([&counter(m), "200", "flock"]).spawn().unwrap())
        .collect();
    let read = || -> u64 { std::fs::read_to_string(p("export/counter")).unwrap().trim().parse().unwrap_or(0) };
    tests::wait_until(Duration::from_secs(120), "a third of the count", || read() >= 200);
    nodes[victim as usize - 1].kill();
    for k in &mut kids {
        assert!(k.wait().unwrap().success(), "lock-counter failed");
    }
    assert_eq!(read(), 600, "no update lost (node {victim} was killed during the count)");

    let status = cluster_status(&addr(if victim == 3 { 5 } else { 3 }));
    assert!(status.contains("6 nodes answered"), "{status}");
    assert!(!status.contains(&format!("node {victim} ")), "{status}");
    assert!(status.lines().any(|l| l.starts_with("lease ") && l.contains(": 1 token")), "{status}");
    let (messages, edges) = status
        .lines()
        .next()
        .and_then(|l| {
            let m = l.split(", ").nth(1)?;
            let mut w = m.split(' ');
            Some((w.next()?.parse::<u32>().ok()?, w.nth(3)?.parse::<u32>().ok()?))
        })
        .expect("wave line");
    assert_eq!(messages, 2 * edges, "{status}");
    // Vector time: the 600 critical sections of the survivors' logs are ordered.
    let mut cmd = command(&bin_path("cluster"));
    cmd.args(["lease", "audit"]);
    for i in (1..=7).filter(|&i| i != victim) {
        cmd.arg("--node").arg(addr(i));
    }
    let (ok, text, err) = tests::run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(ok.success() && text.contains("600 critical sections of 1 leases on 6 nodes"), "{text}{err}");
    drop(mounts);
}

/// `cluster node --metrics`: a lock held through a mount shows as a lease held and a
/// grant, the mount as a client; released, the lease is no longer held.
#[test]
fn a_node_serves_its_figures_as_metrics() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    for d in ["export", "state", "m"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    let server = ServerProc::start(&p("export"), &p("state"), "127.0.0.1:0", &["--no-root-squash"]);
    let maddr = format!("127.0.0.1:{}", tests::free_port());
    let listen = p("n1").display().to_string();
    let _node = ClusterProc::start(
        &["node", "--id", "1", "--listen", &listen, "--metrics", &maddr, "--heartbeat-ms", "50"],
        "node ",
    );
    let mut mount = MountProc::start(&server.addr, &p("m"), &format!("leases={listen}"));
    let get = || tests::http_get(&maddr, "/metrics");
    let (mut holder, _out) = hold(&mount.path("f"), mount.path("f").to_str().unwrap());
    tests::wait_until(Duration::from_secs(10), "the held lease in the metrics", || {
        let t = get();
        tests::metric(&t, "cluster_node_leases_held ") == 1.0 && tests::metric(&t, "cluster_node_grants_total") >= 1.0
    });
    assert!(tests::metric(&get(), "cluster_node_clients ") >= 1.0);
    // Killed, the holder's descriptor closes and the lock (the lease) is released.
    let _ = holder.kill();
    let _ = holder.wait();
    tests::wait_until(Duration::from_secs(10), "the lease released in the metrics", || {
        tests::metric(&get(), "cluster_node_leases_held ") == 0.0
    });
    mount.unmount();
}
