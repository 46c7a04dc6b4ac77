//! CURVE on the cluster's ZeroMQ sockets (`--curve DIR`, mount option `curve=DIR`): a job
//! and leases work for those holding the cluster key, and no one else is ever answered:
//! not a plain ZeroMQ peer, not a CURVE peer with a key of its own, not a subscriber.
//!
//! CURVE is process-wide, so this test process holds one cluster key for all its tests
//! (and other test binaries stay plain).

use cluster::endpoint::{BrokerAddr, Role};
use cluster::wire::{Msg, Values};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tests::*;

/// The cluster key of this test process, made once; this process's sockets use it.
fn key() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("curve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (st, _, err) =
            run_with_timeout(command(&bin_path("cluster")).arg("keygen").arg(&dir), Duration::from_secs(20));
        assert!(st.success(), "{err}");
        cluster::curve::enable_client(&dir).unwrap();
        dir
    })
}

fn sieve(lo: i64, hi: i64) -> Vec<i64> {
    (lo.max(2)..=hi).filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)).collect()
}

#[test]
fn a_job_runs_through_a_broker_and_workers_on_curve() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let k = key().to_str().unwrap();
    let p = Pipeline::new(2, &["--curve", k], &["--curve", k]);
    let values: Vec<i64> = (1..=20_000).collect();
    let c = run_job(&p.addr, &values, 1000, Duration::ZERO, |_| {});
    assert_eq!(c.done_numbers, 20_000);
    assert_eq!(c.primes, sieve(1, 20_000));
}

/// Sends a well-formed submission on `s` and says whether anything came back in 2 s.
fn answered(s: &zmq::Socket) -> bool {
    let msg = Msg::Submit { source: 7, seq: 1, job: 9, batch: 0, replicas: 1, values: Values::from_slice(&[3, 4]) };
    // A REQ whose peer never completes the handshake queues the message; nothing comes.
    s.send(msg.encode(), 0).unwrap();
    s.poll(zmq::POLLIN, 2000).unwrap() > 0
}

#[test]
fn peers_without_the_cluster_key_are_never_answered() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let k = key();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let addr = dir.path().join("broker").display().to_string();
    let _broker = ClusterProc::start_logged(
        &["broker", "--listen", &addr, "--curve", k.to_str().unwrap()],
        "broker listening on",
        &log,
    );
    let ks = k.to_str().unwrap();
    let _worker = Pipeline::worker(&addr, &["--curve", ks]);
    let baddr = BrokerAddr::parse(&addr).unwrap();
    let src = baddr.endpoint(Role::Sources);
    let ctx = zmq::Context::new();
    let sock = |kind| {
        let s = ctx.socket(kind).unwrap();
        s.set_linger(0).unwrap();
        s
    };

    // Plain ZeroMQ (the NULL mechanism).
    let plain = sock(zmq::REQ);
    plain.connect(&src).unwrap();
    assert!(!answered(&plain), "a plain peer was answered");

    // CURVE with a key pair of its own, knowing the cluster's public key: the ZAP handler
    // refuses it, and the broker says so.
    let stranger = sock(zmq::REQ);
    let own = zmq::CurveKeyPair::new().unwrap();
    stranger.set_curve_serverkey(&cluster::curve::public_key(k).unwrap()).unwrap();
    stranger.set_curve_publickey(&own.public_key).unwrap();
    stranger.set_curve_secretkey(&own.secret_key).unwrap();
    stranger.connect(&src).unwrap();
    assert!(!answered(&stranger), "a peer with another key was answered");
    wait_until(Duration::from_secs(10), "the broker logs the refusal", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("does not hold the cluster's CURVE key"))
    });

    // A plain subscriber hears nothing of a job run by a member.
    let sub = sock(zmq::SUB);
    sub.set_subscribe(b"").unwrap();
    sub.connect(&baddr.endpoint(Role::Publish)).unwrap();
    let c = run_job(&addr, &(1..=5000).collect::<Vec<i64>>(), 500, Duration::ZERO, |_| {});
    assert_eq!(c.primes, sieve(1, 5000), "members are served all along");
    assert!(sub.poll(zmq::POLLIN, 500).unwrap() == 0, "a plain subscriber received a publication");
}

/// Leases over CURVE: three processes count to 20 under `flock` through a mount whose
/// lease node is secured; a mount without `curve=` cannot use that node.
#[test]
fn leases_through_a_curve_node() {
    let _w = Watchdog::new(Duration::from_secs(90));
    let k = key().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    for d in ["export", "state", "m", "plain"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    let server = ServerProc::start(&p("export"), &p("state"), "127.0.0.1:0", &["--no-root-squash"]);
    let node = p("n1").display().to_string();
    let _node = ClusterProc::start(&["node", "--id", "1", "--listen", &node, "--curve", k], "node ");
    let mut mount = MountProc::start(&server.addr, &p("m"), &format!("leases={node},curve={k}"));
    let counter = mount.path("counter");
    std::fs::write(&counter, format!("{:020}\n", 0)).unwrap();
    let c = counter.display().to_string();
    let kids: Vec<_> =
        (0..2).map(|_| command(&bin_path("lock-counter")).args([c.as_str(), "10", "flock"]).spawn().unwrap()).collect();
    for mut kid in kids {
        assert!(wait_exit(&mut kid, Duration::from_secs(60), "lock-counter").success());
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim().parse::<u64>().unwrap(), 20);

    let _guard = MountGuard::new(&p("plain"));
    let mut cmd = command(&bin_path("fs-client"));
    cmd.args(["mount", &server.addr]).arg(p("plain")).args(["-o", &format!("leases={node}")]);
    let (st, _, err) = run_with_timeout(&mut cmd, Duration::from_secs(40));
    assert!(!st.success() && err.contains("does not answer"), "{err}");
    mount.unmount();
}
