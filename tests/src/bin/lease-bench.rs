//! Lock acquisitions per second and messages per acquisition through Raymond's tree
//! (`cluster node` processes, 1, 3 and 7 nodes), next to a central lock server (request,
//! grant, release: 3 messages per entry) with as many clients, in one run. Run by
//! `scripts/bench-lease` (release build).

use cluster::lease::LeaseClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::ClusterProc;

const KEY: &[u8] = b"bench-key";

/// Nodes 1..=n in a binary tree (node i's parent is i/2), each with one lease client.
struct Tree {
    clients: Vec<LeaseClient>,
    _nodes: Vec<ClusterProc>,
    _dir: tempfile::TempDir,
}

impl Tree {
    /// Raymond's tree (`mutex` "raymond"), or `n` peers running another algorithm.
    fn new(n: u32, mutex: &str) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let addr = |i: u32| dir.path().join(format!("n{i}")).display().to_string();
        let mut nodes = Vec::new();
        for i in 1..=n {
            let (id, listen) = (i.to_string(), addr(i));
            let mut args = vec!["node", "--id", &id, "--listen", &listen];
            let parent = format!("{}@{}", i / 2, addr(i / 2));
            let peers: Vec<String> = (1..=n).filter(|&j| j != i).map(|j| format!("{j}@{}", addr(j))).collect();
            let peers = peers.join(",");
            if mutex != "raymond" {
                args.extend(["--mutex", mutex, "--peers", &peers]);
            } else if i > 1 {
                args.extend(["--parent", &parent]);
            }
            nodes.push(ClusterProc::start(&args, "node "));
        }
        let clients = (1..=n).map(|i| LeaseClient::connect(&addr(i)).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        Tree { clients, _nodes: nodes, _dir: dir }
    }

    /// Acquire and release through client i (for [`hammer`]).
    #[allow(clippy::type_complexity)]
    fn lockers(&self) -> (Arc<dyn Fn(usize) + Send + Sync>, Arc<dyn Fn(usize) + Send + Sync>) {
        let clients = Arc::new(self.clients.clone());
        let c = clients.clone();
        let acq: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(move |i| {
            c[i].acquire(KEY, true).expect("granted");
        });
        let rel: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(move |i| clients[i].release(KEY));
        (acq, rel)
    }

    /// The message counter once the last releases have travelled: read until two
    /// readings 50 ms apart agree (up to 5 s).
    fn settled_messages(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.messages();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.messages();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Token messages sent by all nodes so far.
    fn messages(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| {
                let s = c.status(Duration::from_secs(5)).expect("status");
                let line = s.lines().find(|l| l.starts_with("token messages sent")).expect("counter line");
                line.split_whitespace().nth(3).unwrap().trim_end_matches(',').parse::<u64>().unwrap()
            })
            .sum()
    }
}

/// Runs `lockers` (client index each) acquiring and releasing KEY for `secs`; returns
/// (acquisitions/s, acquisitions).
fn hammer(
    acquire: Arc<dyn Fn(usize) + Send + Sync>,
    release: Arc<dyn Fn(usize) + Send + Sync>,
    lockers: &[usize],
    secs: f64,
) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let hs: Vec<_> = lockers
        .iter()
        .map(|&i| {
            let (stop, count, acquire, release) = (stop.clone(), count.clone(), acquire.clone(), release.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    acquire(i);
                    count.fetch_add(1, Ordering::Relaxed);
                    release(i);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let n = count.load(Ordering::Relaxed);
    (n as f64 / t.elapsed().as_secs_f64(), n)
}

/// Round-robin without overlap: node 1, 2, ..., n, 1, ... each take the lock in turn, so
/// the token moves every time but nobody waits for anybody.
fn rotate(tree: &Tree, rounds: u32) -> (f64, u64) {
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        for c in &tree.clients {
            c.acquire(KEY, true).expect("granted");
            c.release(KEY);
            n += 1;
        }
    }
    (n as f64 / t.elapsed().as_secs_f64(), n)
}

/// A central lock server: one ROUTER; a client sends 'q' (request), the server answers
/// 'g' (grant) when the lock is free, the client sends 'r' (release): 3 messages.
fn central(dir: &std::path::Path) -> (String, Arc<AtomicBool>, Arc<AtomicU64>) {
    let ep = format!("ipc://{}", dir.join("central").display());
    let (stop, msgs) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (ep2, stop2, msgs2) = (ep.clone(), stop.clone(), msgs.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let s = ctx.socket(zmq::ROUTER).unwrap();
        s.bind(&ep2).unwrap();
        ready_tx.send(()).unwrap();
        let mut holder: Option<Vec<u8>> = None;
        let mut queue = std::collections::VecDeque::new();
        while !stop2.load(Ordering::Relaxed) {
            if s.poll(zmq::POLLIN, 50).unwrap() == 0 {
                continue;
            }
            let parts = s.recv_multipart(0).unwrap();
            msgs2.fetch_add(1, Ordering::Relaxed);
            let (who, what) = (parts[0].clone(), parts[1][0]);
            match what {
                b'q' if holder.is_none() => {
                    s.send_multipart([&who[..], b"g"], 0).unwrap();
                    msgs2.fetch_add(1, Ordering::Relaxed);
                    holder = Some(who);
                }
                b'q' => queue.push_back(who),
                b'r' => {
                    holder = queue.pop_front();
                    if let Some(h) = &holder {
                        s.send_multipart([&h[..], b"g"], 0).unwrap();
                        msgs2.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.recv().unwrap();
    (ep, stop, msgs)
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    println!("| setup | nodes | lockers | acquisitions/s | messages per acquisition |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for n in [1u32, 3, 4, 7, 9] {
        let tree = Tree::new(n, "raymond");
        let (acq, rel) = tree.lockers();
        // No contention: the deepest node alone, again and again (the token stays).
        let deepest = n as usize - 1;
        let m0 = tree.messages();
        let (rate, count) = hammer(acq.clone(), rel.clone(), &[deepest], secs);
        let m1 = tree.messages();
        println!(
            "| Raymond, no contention (one node, repeatedly) | {n} | 1 | {rate:.0} | {:.2} |",
            (m1 - m0) as f64 / count as f64
        );
        if n > 1 {
            let (rate, count) = rotate(&tree, 200 / n);
            let m2 = tree.messages();
            println!(
                "| Raymond, no contention (nodes in turn) | {n} | 1 | {rate:.0} | {:.2} |",
                (m2 - m1) as f64 / count as f64
            );
        }
        if n == 1 {
            continue; // one node cannot contend with itself
        }
        let m2 = tree.messages();
        let all: Vec<usize> = (0..n as usize).collect();
        let (rate, count) = hammer(acq, rel, &all, secs);
        let m3 = tree.settled_messages();
        println!("| Raymond, full contention | {n} | {n} | {rate:.0} | {:.2} |", (m3 - m2) as f64 / count as f64);
    }
    // The other algorithms as processes (`cluster node --mutex`), every node's client
    // looping at once; messages are all the algorithm's (a ring's idle circling too).
    for mutex in ["central", "ring", "lamport", "maekawa"] {
        for n in [4u32, 9] {
            let tree = Tree::new(n, mutex);
            let (acq, rel) = tree.lockers();
            let m0 = tree.messages();
            let all: Vec<usize> = (0..n as usize).collect();
            let (rate, count) = hammer(acq, rel, &all, secs);
            let m1 = tree.settled_messages();
            println!("| {mutex}, full contention | {n} | {n} | {rate:.0} | {:.2} |", (m1 - m0) as f64 / count as f64);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (ep, stop, msgs) = central(dir.path());
    for n in [1usize, 3, 7] {
        let ctx = zmq::Context::new();
        let socks: Vec<std::sync::Mutex<zmq::Socket>> = (0..n)
            .map(|_| {
                let s = ctx.socket(zmq::DEALER).unwrap();
                s.connect(&ep).unwrap();
                std::sync::Mutex::new(s)
            })
            .collect();
        let socks = Arc::new(socks);
        let acq: Arc<dyn Fn(usize) + Send + Sync> = {
            let s = socks.clone();
            Arc::new(move |i| {
                let s = s[i].lock().unwrap();
                s.send(&b"q"[..], 0).unwrap();
                s.recv_bytes(0).unwrap();
            })
        };
        let rel: Arc<dyn Fn(usize) + Send + Sync> = {
            let s = socks.clone();
            Arc::new(move |i| s[i].lock().unwrap().send(&b"r"[..], 0).unwrap())
        };
        std::thread::sleep(Duration::from_millis(200));
        let m0 = msgs.load(Ordering::Relaxed);
        let lockers: Vec<usize> = (0..n).collect();
        let (rate, count) = hammer(acq, rel, &lockers, secs);
        std::thread::sleep(Duration::from_millis(200));
        let m1 = msgs.load(Ordering::Relaxed);
        let what = if n == 1 { "no contention" } else { "full contention" };
        println!(
            "| central lock server, {what} | 1 server | {n} | {rate:.0} | {:.2} |",
            (m1 - m0) as f64 / count as f64
        );
    }
    stop.store(true, Ordering::Relaxed);
}
