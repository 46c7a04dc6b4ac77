//! `cluster broker|worker|source|sink|spool|up`: see `cluster --help`.

use clap::{Parser, Subcommand};
use cluster::broker::{Broker, BrokerConfig, Dispatch};
use cluster::endpoint::{BrokerAddr, Brokers};
use cluster::job::Job;
use cluster::spool::{Outcome, Spool, SpoolConfig};
use cluster::worker::{Worker, WorkerConfig};
use cluster::{node, sink, source, up, util, wire};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Prime jobs over ZeroMQ on a shared folder.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Secure every ZeroMQ socket with CURVE, with the cluster key in DIR (made by
    /// `cluster keygen DIR`): no one without it is answered.
    #[arg(long, global = true, value_name = "DIR")]
    curve: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make a cluster key (CURVE) in DIR for `--curve DIR` and the mount option `curve=DIR`.
    Keygen {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Take numbers from sources, deal them to workers, publish numbers and primes.
    Broker {
        /// HOST[:PORT] (four TCP ports from PORT, default 5555) or a path for ipc:// sockets.
        #[arg(long, default_value = "127.0.0.1:5555", value_name = "ADDR")]
        listen: String,
        #[arg(long, value_enum, default_value = "credit")]
        dispatch: Dispatch,
        /// Heartbeat interval to workers, in milliseconds.
        #[arg(long, default_value_t = 500)]
        heartbeat_ms: u64,
        /// A worker silent this long (milliseconds) is dead; its work goes to others.
        #[arg(long, default_value_t = 2500)]
        liveness_ms: u64,
        /// For tests only: leave out every K-th publication (subscribers see the gap).
        #[arg(long, value_name = "K", hide = true)]
        test_drop_every: Option<u64>,
        /// Also the lecture's 9-byte endpoints, at HOST:PORT (PORT sources REP, PORT+1
        /// work PUSH, PORT+2 results REP, PORT+3 publications PUB) or a path.
        #[arg(long, value_name = "ADDR")]
        classic: Option<String>,
        /// Run this many workers as threads of the broker's process, over `inproc://`
        /// (outside workers, sources and sinks use ADDR as always).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Serve the broker's counters in the Prometheus text format at
        /// http://HOST:PORT/metrics.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<String>,
        /// Be the backup of the broker at ADDR (Binary Star): serve only once it is
        /// silent and a client turns here. Clients list both: `--broker PRIMARY,BACKUP`.
        #[arg(long, value_name = "ADDR", conflicts_with = "backup")]
        backup_of: Option<String>,
        /// Be the primary of a pair whose backup is at ADDR (optional: a backup finds its
        /// primary; with it, a restarted primary waits to hear an active backup first).
        #[arg(long, value_name = "ADDR")]
        backup: Option<String>,
    },
    /// Test numbers for primality.
    Worker {
        /// The broker's address, or a pair's `PRIMARY,BACKUP`.
        #[arg(long, value_name = "ADDR[,ADDR]")]
        broker: String,
        #[arg(long, value_enum, default_value = "credit")]
        dispatch: Dispatch,
        /// Work items held at once.
        #[arg(long, default_value_t = 2)]
        credit: u32,
        /// Run every test N times (a slower worker, for benchmarks).
        #[arg(long, default_value_t = 1)]
        slow: u32,
        /// FOR TESTS AND DEMONSTRATIONS: answer wrongly with probability P (0 to 1).
        #[arg(long, value_name = "P", default_value_t = 0.0)]
        faulty: f64,
        /// For tests only: after N items report CPU share S (permille) as its load.
        #[arg(long, value_name = "N:S", hide = true)]
        test_cpu_share_after: Option<String>,
    },
    /// Send numbers: arguments (numbers or ranges A..B), else --random, else stdin lines.
    Source {
        /// The broker's address, or a pair's `PRIMARY,BACKUP`.
        #[arg(long, value_name = "ADDR[,ADDR]")]
        broker: String,
        /// Numbers per message (1 = one message per number, as in the original design).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Send this many random numbers in 2..=--max instead.
        #[arg(long)]
        random: Option<u64>,
        #[arg(long, default_value_t = 1_000_000_000)]
        max: i64,
        /// Wait this long (milliseconds) for each acknowledgement before resending.
        #[arg(long, default_value_t = 2500)]
        timeout_ms: u64,
        /// Resends before giving up.
        #[arg(long, default_value_t = 3)]
        retries: u32,
        numbers: Vec<String>,
    },
    /// Print what the broker publishes under one tag, one value per line.
    Sink {
        /// The broker's address, or a pair's `PRIMARY,BACKUP`.
        #[arg(long, value_name = "ADDR[,ADDR]")]
        broker: String,
        /// `p` for primes, `n` for every number received.
        #[arg(long, value_parser = ["p", "n"])]
        tag: String,
        /// Append to this file instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Stop after this many values.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Watch DIR/in for *.job files and run them; results in DIR/out.
    Spool {
        #[arg(long)]
        dir: PathBuf,
        /// The broker's address, or a pair's `PRIMARY,BACKUP`.
        #[arg(long, value_name = "ADDR[,ADDR]")]
        broker: String,
        /// Names this watcher's claims (default: host name and a hash of DIR).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 4096)]
        batch: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// A claim not refreshed for this many seconds is taken over.
        #[arg(long, default_value_t = 30)]
        claim_timeout_s: u64,
        /// Submit a job's missing batches again after this many seconds without progress.
        #[arg(long, default_value_t = 15)]
        stall_s: u64,
        /// Show a progress bar for long jobs (on a terminal).
        #[arg(long)]
        progress: bool,
        /// Leave job files changed less than this many milliseconds ago for the next pass.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        /// A `cluster node` address: job claims also take the job's lease, and the claims
        /// of a watcher that died are taken over as soon as its node lets the lease go.
        #[arg(long, value_name = "NODE_ADDR")]
        leases: Option<String>,
        /// Run what is there once and exit.
        #[arg(long)]
        once: bool,
        /// Milliseconds between scans when the folder's mount does not follow change
        /// notices (on one that does, a scan follows each notice).
        #[arg(long, default_value_t = 500)]
        poll_ms: u64,
        /// Have every batch tested by N different workers and take the majority's
        /// answer (a job file's `# replicas N` line wins).
        #[arg(long, default_value_t = 1)]
        replicas: u8,
    },
    /// One lease node: Raymond's algorithm on a tree (the root has no parent), or another
    /// algorithm among named peers (`--mutex central|ring|lamport|maekawa --peers ...`).
    Node {
        #[arg(long)]
        id: u32,
        /// HOST:PORT or a path (ipc://).
        #[arg(long, value_name = "ADDR")]
        listen: String,
        /// The parent's address (its id is learnt from it), or ID@ADDR (raymond only: a
        /// tree given by hand; with --peers instead, echo waves find the tree).
        #[arg(long, value_name = "ADDR")]
        parent: Option<String>,
        /// raymond (default), central, ring, lamport or maekawa.
        #[arg(long, default_value = "raymond", value_name = "NAME")]
        mutex: String,
        /// The neighbours, ID@ADDR,ID@ADDR,...: for raymond any connected graph (echo
        /// waves build the tree on it, and rebuild it when a node dies); for the other
        /// algorithms every other member.
        #[arg(long, value_name = "ID@ADDR,...", value_delimiter = ',')]
        peers: Vec<String>,
        #[arg(long, default_value_t = 250)]
        heartbeat_ms: u64,
        /// A neighbour or client silent this long (milliseconds) is dead.
        #[arg(long, default_value_t = 3000)]
        liveness_ms: u64,
        /// Serve the node's figures (leases, grants, token messages, neighbours) in the
        /// Prometheus text format at http://HOST:PORT/metrics.
        #[arg(long, value_name = "HOST:PORT")]
        metrics: Option<String>,
    },
    /// The whole lease cluster in one answer: the node starts an echo wave that gathers
    /// every reachable node's state (one line per node, starting `node ID`).
    Status {
        #[arg(long, value_name = "ADDR")]
        node: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// Leases: `cluster lease status --node ADDR`.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
    },
    /// The whole system on this machine: server, mount, broker, workers, sink, spool.
    Up {
        /// Where the export, the mount and the state live.
        #[arg(long, default_value = "mountpoints")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:5555", value_name = "ADDR")]
        broker: String,
        /// Workers to start (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Also a standby file server (it takes over when the server dies; the mount
        /// lists both) and a backup broker (the next four ports; every client lists both).
        #[arg(long)]
        standby: bool,
    },
}

#[derive(Subcommand, Debug)]
enum LeaseCmd {
    /// Which leases the node holds and waits for, and the tree it sees.
    Status {
        #[arg(long, value_name = "ADDR")]
        node: String,
    },
    /// Merges the nodes' logs of grants and releases and checks, by vector time, that
    /// no two critical sections of a lease were concurrent (names the pair if so).
    Audit {
        /// A node to fetch the log of (repeat for every node of the cluster).
        #[arg(long = "node", value_name = "ADDR", required = true)]
        nodes: Vec<String>,
    },
}

fn broker_addr(s: &str) -> anyhow::Result<BrokerAddr> {
    Ok(BrokerAddr::parse(s)?)
}

/// `--broker ADDR[,ADDR]`: one broker, or a Binary Star pair (primary first).
fn brokers(s: &str) -> anyhow::Result<Brokers> {
    Ok(Brokers::parse(s)?)
}

fn run(args: Args) -> anyhow::Result<()> {
    util::install_stop_handler();
    let ctx = zmq::Context::new();
    if let Some(dir) = &args.curve {
        cluster::curve::enable(&ctx, dir)?;
    }
    match args.cmd {
        Cmd::Keygen { dir } => {
            let path = cluster::curve::keygen(&dir)?;
            eprintln!("cluster keygen: key written to {} (mode 0600)", path.display());
        }
        Cmd::Broker {
            listen,
            dispatch,
            heartbeat_ms,
            liveness_ms,
            test_drop_every,
            classic,
            workers,
            metrics,
            backup_of,
            backup,
        } => {
            let addr = broker_addr(&listen)?;
            anyhow::ensure!(
                heartbeat_ms > 0 && liveness_ms > heartbeat_ms,
                "--liveness-ms must exceed --heartbeat-ms > 0"
            );
            let mut cfg = BrokerConfig::new(addr.clone());
            cfg.dispatch = dispatch;
            cfg.heartbeat = Duration::from_millis(heartbeat_ms);
            cfg.liveness = Duration::from_millis(liveness_ms);
            if let Some(k) = test_drop_every {
                anyhow::ensure!(k > 0, "--test-drop-every must be at least 1");
                eprintln!("broker: TEST ONLY: every {k}th publication is left out");
                cfg.test_drop_every = Some(k);
            }
            if let Some(c) = &classic {
                let c = broker_addr(c)?;
                anyhow::ensure!(c != addr, "--classic needs its own address, not the broker's");
                cfg.classic = Some(c);
            }
            anyhow::ensure!(
                !matches!(addr, BrokerAddr::Inproc { .. }),
                "--listen inproc:// reaches only this process: give HOST:PORT or a path, and --workers N for workers in it"
            );
            let pair = match (&backup_of, &backup) {
                (Some(p), _) => Some((cluster::bstar::Role::Backup, broker_addr(p)?)),
                (None, Some(b)) => Some((cluster::bstar::Role::Primary, broker_addr(b)?)),
                (None, None) => None,
            };
            if let Some((_, peer)) = &pair {
                anyhow::ensure!(*peer != addr, "the peer broker needs its own address, not this one's ({addr})");
                anyhow::ensure!(
                    classic.is_none(),
                    "--classic cannot be one of a pair (the lecture's clients know one address)"
                );
            }
            cfg.pair = pair;
            if let Some(a) = &metrics {
                let l = std::net::TcpListener::bind(a.as_str())
                    .map_err(|e| anyhow::anyhow!("cannot serve metrics on {a}: {e}"))?;
                eprintln!("broker: metrics on http://{}/metrics", l.local_addr()?);
                let m = std::sync::Arc::new(cluster::metrics::BrokerMetrics::default());
                let shown = m.clone();
                cluster::metrics::serve(l, std::sync::Arc::new(move || shown.render()));
                cfg.metrics = Some(m);
            }
            let inproc = (workers > 0).then(|| format!("broker-{}", std::process::id()));
            cfg.inproc.clone_from(&inproc);
            let broker = Broker::bind(&ctx, cfg)?;
            if let Some(name) = inproc {
                for _ in 0..workers {
                    let mut wc = WorkerConfig::new(BrokerAddr::Inproc { name: name.clone() });
                    wc.dispatch = dispatch;
                    let ctx = ctx.clone();
                    std::thread::spawn(move || {
                        let run = Worker::connect(&ctx, wc).and_then(|mut w| w.run());
                        if let Err(e) = run {
                            tracing::error!("in-process worker: {e:#}");
                        }
                    });
                }
            }
            let pair = match (&backup_of, &backup) {
                (Some(p), _) => format!(", backup of {p}"),
                (None, Some(b)) => format!(", primary with backup {b}"),
                (None, None) => String::new(),
            };
            println!("broker listening on {addr} ({dispatch:?} dispatch{pair})");
            broker.run()?;
        }
        Cmd::Worker { broker, dispatch, credit, slow, faulty, test_cpu_share_after } => {
            let mut cfg = WorkerConfig::new(brokers(&broker)?);
            anyhow::ensure!(credit > 0, "--credit must be at least 1");
            anyhow::ensure!((0.0..=1.0).contains(&faulty), "--faulty must be a probability from 0 to 1");
            if faulty > 0.0 {
                eprintln!(
                    "worker: FAULTY ON PURPOSE: about {:.1}% of answers will be wrong (--faulty; tests only)",
                    faulty * 100.0
                );
                cfg.faulty = faulty;
            }
            if let Some(t) = &test_cpu_share_after {
                let parsed = t.split_once(':').and_then(|(n, s)| Some((n.parse().ok()?, s.parse().ok()?)));
                let (n, s): (u64, u16) = parsed.ok_or_else(|| anyhow::anyhow!("--test-cpu-share-after wants N:S"))?;
                eprintln!("worker: TEST ONLY: after {n} items the load reported is a CPU share of {s} permille");
                cfg.test_share_after = Some((n, s));
            }
            cfg.dispatch = dispatch;
            cfg.credit = credit;
            cfg.slow = slow;
            let id = cfg.id;
            let mut w = Worker::connect(&ctx, cfg)?;
            println!("worker {id:016x} connected to {broker}");
            w.run()?;
            println!("worker {id:016x} stopping: tested {} numbers, handed back {} items", w.tested, w.handed_back);
        }
        Cmd::Source { broker, batch, random, max, timeout_ms, retries, numbers } => {
            anyhow::ensure!(batch > 0, "--batch must be at least 1");
            let addr = brokers(&broker)?;
            let values: Vec<i64> = if let Some(n) = random {
                anyhow::ensure!(max >= 2, "--max must be at least 2");
                (0..n).map(|_| 2 + (util::random_u64() % (max as u64 - 1)) as i64).collect()
            } else if !numbers.is_empty() {
                Job::parse(&numbers.join("\n"))?.batches(1 << 16).flatten().collect()
            } else {
                let mut text = String::new();
                for line in std::io::stdin().lock().lines() {
                    text.push_str(&line?);
                    text.push('\n');
                }
                Job::parse(&text)?.batches(1 << 16).flatten().collect()
            };
            let mut src = source::Source::connect(&ctx, &addr)?;
            src.timeout = Duration::from_millis(timeout_ms);
            src.retries = Some(retries);
            let job = util::random_u64();
            for (i, chunk) in values.chunks(batch).enumerate() {
                src.submit(job, i as u32, chunk)?;
            }
            println!("sent {} numbers in {} messages (job {job:016x})", values.len(), values.len().div_ceil(batch));
        }
        Cmd::Sink { broker, tag, out, count } => {
            let addr = brokers(&broker)?;
            let which = if tag == "p" { wire::tag::PRIMES } else { wire::tag::NUMBERS };
            let sub = sink::subscribe(&ctx, &addr, &[&[which]])?;
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?,
                ),
                None => Box::new(std::io::stdout()),
            };
            if out.is_some() {
                println!("sink subscribed to {addr} tag {tag}");
            }
            let (_, missed) = sink::run(&sub, which, &mut w, count, &mut std::io::stderr())?;
            if missed > 0 {
                eprintln!("sink: {missed} publications missed in all");
            }
        }
        Cmd::Spool {
            dir,
            broker,
            id,
            batch,
            window,
            claim_timeout_s,
            stall_s,
            settle_ms,
            progress,
            leases,
            once,
            replicas,
            poll_ms,
        } => {
            anyhow::ensure!((1..=9).contains(&replicas), "--replicas must be from 1 to 9");
            anyhow::ensure!(dir.is_dir(), "spool folder {} does not exist", dir.display());
            let mut cfg = SpoolConfig::new(dir.clone(), brokers(&broker)?);
            if let Some(id) = id {
                cfg.id = id;
            }
            cfg.batch = batch;
            cfg.window = window;
            cfg.claim_timeout = Duration::from_secs(claim_timeout_s.max(1));
            cfg.stall = Duration::from_secs(stall_s.max(1));
            cfg.progress = progress;
            cfg.replicas = replicas;
            cfg.settle = Duration::from_millis(settle_ms);
            cfg.poll = Duration::from_millis(poll_ms.max(1));
            cfg.leases = leases;
            let id = cfg.id.clone();
            let spool = Spool::new(&ctx, cfg)?;
            println!("spool {id} watching {} (broker {broker})", dir.join("in").display());
            let report = |o: &Outcome| match o {
                Outcome::Done { name, primes } => println!("done {name}: {primes} primes"),
                Outcome::Failed { name, reason } => println!("failed {name}: {reason}"),
                Outcome::Interrupted { name } => println!("interrupted {name}"),
            };
            if once {
                spool.scan_once()?.iter().for_each(report);
            } else {
                spool.run(report)?;
            }
        }
        Cmd::Node { id, listen, parent, mutex, peers, heartbeat_ms, liveness_ms, metrics } => {
            let mutex: cluster::mutex::Algorithm = mutex.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let peers = peers
                .iter()
                .map(|p| {
                    let (pid, addr) =
                        p.split_once('@').ok_or_else(|| anyhow::anyhow!("--peers {p:?}: want ID@ADDR"))?;
                    let pid: u32 =
                        pid.parse().map_err(|_| anyhow::anyhow!("--peers {p:?}: the id before @ is not a number"))?;
                    node::endpoint(addr)?;
                    Ok((pid, addr.to_string()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let raymond = mutex == cluster::mutex::Algorithm::Raymond;
            anyhow::ensure!(
                raymond || !peers.is_empty(),
                "--mutex {} needs --peers ID@ADDR,... (the other members)",
                mutex.name()
            );
            anyhow::ensure!(
                raymond || parent.is_none(),
                "--parent is for raymond; --mutex {} takes --peers",
                mutex.name()
            );
            anyhow::ensure!(parent.is_none() || peers.is_empty(), "give --parent or --peers, not both");
            anyhow::ensure!(
                heartbeat_ms > 0 && liveness_ms > heartbeat_ms,
                "--liveness-ms must exceed --heartbeat-ms > 0"
            );
            let parent = match parent {
                Some(p) => match p.split_once('@') {
                    Some((pid, addr)) => {
                        let pid: u32 = pid
                            .parse()
                            .map_err(|_| anyhow::anyhow!("--parent {p:?}: the id before @ is not a number"))?;
                        anyhow::ensure!(pid != id, "--parent: a node cannot be its own parent");
                        node::endpoint(addr)?;
                        Some((Some(pid), addr.to_string()))
                    }
                    None => {
                        node::endpoint(&p)?;
                        Some((None, p))
                    }
                },
                None => None,
            };
            let cfg = node::NodeConfig {
                id,
                listen: listen.clone(),
                parent,
                heartbeat: Duration::from_millis(heartbeat_ms),
                liveness: Duration::from_millis(liveness_ms),
                mutex,
                peers,
            };
            let metrics = match &metrics {
                Some(a) => Some(
                    std::net::TcpListener::bind(a.as_str())
                        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {a}: {e}"))?,
                ),
                None => None,
            };
            let mut n = node::Node::bind(&ctx, cfg)?;
            if let Some(l) = metrics {
                eprintln!("node: metrics on http://{}/metrics", l.local_addr()?);
                let figures = std::sync::Arc::new(std::sync::Mutex::new(n.figures()));
                n.published = Some(figures.clone());
                let m = cluster::metrics::NodeMetrics::new(figures);
                cluster::metrics::serve(l, std::sync::Arc::new(move || m.render()));
            }
            println!("node {id} listening on {listen}");
            n.run()?;
        }
        Cmd::Status { node, timeout_s } => {
            let c = cluster::lease::LeaseClient::connect(&node)?;
            let text = c
                .cluster_status(Duration::from_secs(timeout_s))
                .ok_or_else(|| anyhow::anyhow!("node at {node} did not answer within {timeout_s} s"))?;
            print!("{text}");
            if text.contains("(must be 1)") {
                eprintln!("cluster: a lease does not have exactly one token (see above)");
                std::process::exit(2);
            }
        }
        Cmd::Lease { cmd: LeaseCmd::Audit { nodes } } => {
            let mut events = Vec::new();
            for node in &nodes {
                let c = cluster::lease::LeaseClient::connect(node)?;
                let log = c
                    .audit_log(Duration::from_secs(5))
                    .ok_or_else(|| anyhow::anyhow!("node at {node} did not answer"))?;
                events.extend(log);
            }
            match coord::audit::audit(&events) {
                Ok(r) => println!(
                    "audit: {} critical sections of {} leases on {} nodes, each pair ordered by happened-before",
                    r.sections,
                    r.keys,
                    nodes.len()
                ),
                Err(v) => anyhow::bail!("audit: {v}"),
            }
        }
        Cmd::Lease { cmd: LeaseCmd::Status { node } } => {
            let c = cluster::lease::LeaseClient::connect(&node)?;
            let text =
                c.status(Duration::from_secs(3)).ok_or_else(|| anyhow::anyhow!("node at {node} did not answer"))?;
            print!("{text}");
        }
        Cmd::Up { dir, broker, workers, standby } => {
            broker_addr(&broker)?;
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            up::run(up::UpConfig { dir, broker, workers, standby })?;
        }
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("cluster: {e:#}");
        std::process::exit(1);
    }
}
