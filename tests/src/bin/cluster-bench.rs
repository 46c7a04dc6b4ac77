//! Numbers per second through source -> broker -> workers -> sink, one message per
//! number and batched, next to the same primality test in one process on the same cores
//! (the limit); and credit (pull) dispatch against plain round-robin PUSH with one worker
//! made 3x slower; credit against load-aware dispatch with one worker sharing its CPU
//! with a busy process; and a mount's `stat` round trip while a job runs beside
//! `fs-server`. Run by `scripts/bench-cluster` (release build).

use clap::Parser;
use std::time::{Duration, Instant};
use tests::{run_job, ClusterProc};

#[derive(Parser)]
struct Args {
    /// Random numbers for the batched runs and the in-process limit.
    #[arg(long, default_value_t = 4_000_000)]
    count: usize,
    /// Numbers for the one-message-per-number run.
    #[arg(long, default_value_t = 40_000)]
    single: usize,
    #[arg(long, default_value_t = 16384)]
    batch: usize,
    /// Each rate is the best of this many runs (the machine is shared; the best run is
    /// the one least disturbed).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Largest random number (the original example drew from a range; 2^62 here, so
    /// most numbers need the full Miller-Rabin test).
    #[arg(long, default_value_t = 1 << 62)]
    max: i64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Dispatch comparison: the fast worker runs every test this many times, the slow one
    /// three times as many (so the test, not the pipeline, dominates).
    #[arg(long, default_value_t = 10)]
    slow_base: u32,
    /// Load comparison: runs of each mode (alternating; the median is shown).
    #[arg(long, default_value_t = 5)]
    load_runs: usize,
    /// Only the two load comparisons.
    #[arg(long)]
    only_load: bool,
}

/// xorshift64*: the same numbers every run.
fn numbers(n: usize, max: i64) -> Vec<i64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            2 + (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (max as u64 - 1)) as i64
        })
        .collect()
}

fn in_process(values: &[i64], threads: usize) -> (f64, usize) {
    std::hint::black_box(values);
    let t = Instant::now();
    let primes: usize = std::thread::scope(|s| {
        let hs: Vec<_> = values
            .chunks(values.len().div_ceil(threads))
            .map(|c| s.spawn(move || c.iter().filter(|&&n| cluster::prime::is_prime(n)).count()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (values.len() as f64 / t.elapsed().as_secs_f64(), primes)
}

struct Run {
    _workers: Vec<ClusterProc>,
    _broker: ClusterProc,
    addr: String,
    _dir: tempfile::TempDir,
}

fn start(dispatch: &str, slow: &[u32]) -> Run {
    start_with(dispatch, slow, &[])
}

fn start_with(dispatch: &str, slow: &[u32], extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let addr = dir.path().join("b").display().to_string();
    let broker = ClusterProc::start(&["broker", "--listen", &addr, "--dispatch", dispatch], "broker listening");
    let workers = slow
        .iter()
        .map(|s| {
            let slow = s.to_string();
            let mut args = vec!["worker", "--broker", &addr, "--dispatch", dispatch, "--slow", &slow];
            args.extend_from_slice(extra);
            ClusterProc::start(&args, "worker ")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    Run { _workers: workers, _broker: broker, addr, _dir: dir }
}

/// The broker with its workers as threads of its own process (`--workers N`, inproc).
fn start_inproc(workers: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let addr = dir.path().join("b").display().to_string();
    let n = workers.to_string();
    let broker = ClusterProc::start(&["broker", "--listen", &addr, "--workers", &n], "broker listening");
    std::thread::sleep(Duration::from_millis(300));
    Run { _workers: Vec::new(), _broker: broker, addr, _dir: dir }
}

fn through_pipeline(values: &[i64], batch: usize, workers: usize, repeat: usize) -> (f64, usize) {
    through(start("credit", &vec![1; workers]), values, batch, repeat)
}

fn through(r: Run, values: &[i64], batch: usize, repeat: usize) -> (f64, usize) {
    best_of(repeat, || {
        let c = run_job(&r.addr, values, batch, Duration::ZERO, |_| {});
        assert_eq!(c.done_numbers, values.len() as u64);
        (values.len() as f64 / c.elapsed.as_secs_f64(), c.primes.len())
    })
}

/// Numbers per second when every batch is tested by `replicas` different workers: the
/// job ends when every batch has all its answers (what a voter waits for at most).
fn replicated(addr: &str, values: &[i64], batch: usize, replicas: u8) -> f64 {
    use cluster::wire::{job_prefix, tag, Msg};
    let ctx = zmq::Context::new();
    let addr = cluster::endpoint::BrokerAddr::parse(addr).unwrap();
    let job = cluster::util::random_u64();
    let sub =
        cluster::sink::subscribe(&ctx, &addr, &[&job_prefix(tag::DONE, job), &job_prefix(tag::HELLO, job)]).unwrap();
    let mut src = cluster::source::Source::connect(&ctx, &addr).unwrap();
    src.replicas = replicas;
    src.wait_subscribed(&sub, job).unwrap();
    let batches = values.len().div_ceil(batch);
    let mut answers = vec![0u8; batches];
    let mut complete = 0;
    let t = Instant::now();
    for (i, chunk) in values.chunks(batch).enumerate() {
        src.submit(job, i as u32, chunk).unwrap();
    }
    while complete < batches {
        if sub.poll(zmq::POLLIN, 100).unwrap() > 0 {
            if let Ok(Msg::Done { batch, .. }) = Msg::decode(&sub.recv_bytes(0).unwrap()) {
                let a = &mut answers[batch as usize];
                *a += 1;
                if *a == replicas {
                    complete += 1;
                }
            }
        }
    }
    values.len() as f64 / t.elapsed().as_secs_f64()
}

fn best_of(n: usize, mut f: impl FnMut() -> (f64, usize)) -> (f64, usize) {
    (0..n.max(1)).map(|_| f()).max_by(|a, b| a.0.total_cmp(&b.0)).expect("at least one run")
}

fn main() {
    let a = Args::parse();
    let values = numbers(a.count, a.max);
    if a.only_load {
        for batch in [4096, 65536] {
            load_dispatch(&values[..(a.count / 2).max(1)], batch, a.load_runs);
        }
        stat_beside_a_job(&values);
        return;
    }
    let (limit, p0) = best_of(a.repeat, || in_process(&values, a.workers));
    let (batched, p1) = through_pipeline(&values, a.batch, a.workers, a.repeat);
    assert_eq!(p0, p1, "the pipeline found the same primes");
    let (inproc, p2) = through(start_inproc(a.workers), &values, a.batch, a.repeat);
    assert_eq!(p0, p2, "the in-process workers found the same primes");
    let single_values = &values[..a.single.min(values.len())];
    let (single, _) = through_pipeline(single_values, 1, a.workers, 1);
    println!("workers: {}, numbers: random in 2..={}, best of {} runs", a.workers, a.max, a.repeat);
    println!("| run | numbers | numbers/s | vs in-process |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| in one process, {} threads (the limit) | {} | {:.0} | 1.00x |", a.workers, a.count, limit);
    println!("| pipeline, batches of {} | {} | {:.0} | {:.2}x |", a.batch, a.count, batched, batched / limit);
    println!(
        "| pipeline, batches of {}, workers in the broker's process (inproc) | {} | {:.0} | {:.2}x |",
        a.batch,
        a.count,
        inproc,
        inproc / limit
    );
    println!("| pipeline, one message per number | {} | {:.0} | {:.3}x |", single_values.len(), single, single / limit);

    // Active redundancy: the cost of N replicas, three workers, in one run.
    let job = &values[..(a.count / 4).max(1)];
    let r = start("credit", &[1, 1, 1]);
    println!();
    println!("| replicas (3 workers) | numbers | numbers/s | vs 1 replica |");
    println!("| --- | ---: | ---: | ---: |");
    let one = replicated(&r.addr, job, 4096, 1);
    for n in 1..=3u8 {
        let rate = if n == 1 { one } else { replicated(&r.addr, job, 4096, n) };
        println!("| {n} | {} | {rate:.0} | {:.2}x |", job.len(), rate / one);
    }
    drop(r);

    // Dispatch with one worker 3x slower: the same job, credit against round-robin PUSH.
    let job = &values[..(a.count / 2).max(1)];
    println!();
    println!(
        "| dispatch, 2 workers, one 3x slower (tests run {}x and {}x) | numbers | seconds | numbers/s |",
        a.slow_base,
        3 * a.slow_base
    );
    println!("| --- | ---: | ---: | ---: |");
    for mode in ["push", "credit"] {
        let r = start(mode, &[a.slow_base, 3 * a.slow_base]);
        let c = run_job(&r.addr, job, 1024, Duration::ZERO, |_| {});
        let secs = c.elapsed.as_secs_f64();
        assert_eq!(c.done_numbers, job.len() as u64);
        println!("| {mode} | {} | {secs:.2} | {:.0} |", job.len(), job.len() as f64 / secs);
    }

    for batch in [4096, 65536] {
        load_dispatch(&values[..(a.count / 2).max(1)], batch, a.load_runs);
    }
    stat_beside_a_job(&values);
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Workers in the load comparisons run each test this many times, so that they, not the
/// pipeline, are the bottleneck (as for real work heavier than one Miller-Rabin test).
const LOAD_SLOW: u32 = 4;

/// Two workers pinned to CPUs 0 and 1, a busy process on CPU 0 too: the same job under
/// credit and load-aware dispatch, alternating, median of `runs` each.
fn load_dispatch(job: &[i64], batch: usize, runs: usize) {
    println!();
    println!("| dispatch, 2 workers (tests run {LOAD_SLOW}x), one sharing its CPU with a busy process, batches of {batch} | numbers | seconds (median of {runs}) | numbers/s | batches on the busy CPU | vs credit |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let _busy = tests::Busy::on_cpu(0);
    let mut rows = Vec::new();
    let mut secs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut share: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs.max(1) {
        for (i, mode) in ["credit", "load"].into_iter().enumerate() {
            let r = start(mode, &[LOAD_SLOW, LOAD_SLOW]);
            tests::pin(r._workers[0].pid(), 0);
            tests::pin(r._workers[1].pid(), 1);
            let busy_id = u64::from_str_radix(r._workers[0].ready.split_whitespace().nth(1).unwrap(), 16).unwrap();
            let c = run_job(&r.addr, job, batch, Duration::ZERO, |_| {});
            assert_eq!(c.done_numbers, job.len() as u64);
            let total: u64 = c.batches.values().sum();
            secs[i].push(c.elapsed.as_secs_f64());
            share[i].push(*c.batches.get(&busy_id).unwrap_or(&0) as f64 / total as f64);
        }
    }
    let base = median(secs[0].clone());
    for (i, mode) in ["credit", "load"].into_iter().enumerate() {
        let t = median(secs[i].clone());
        rows.push(format!(
            "| {mode} | {} | {t:.2} | {:.0} | {:.0}% | {:.2}x |",
            job.len(),
            job.len() as f64 / t,
            100.0 * median(share[i].clone()),
            base / t
        ));
    }
    for r in rows {
        println!("{r}");
    }
}

/// A mount's uncached `stat` round trip (noac) while a prime job runs beside `fs-server`
/// on the same machine: alone, beside credit dispatch, beside load-aware dispatch.
fn stat_beside_a_job(values: &[i64]) {
    let rig = tests::Rig::new("noac");
    std::fs::write(rig.mnt("f"), b"x").unwrap();
    let path = rig.mnt("f");
    let sample = |stop: &dyn Fn() -> bool| -> Vec<Duration> {
        let mut lat = Vec::new();
        while !stop() || lat.len() < 200 {
            let t = Instant::now();
            std::fs::metadata(&path).unwrap();
            lat.push(t.elapsed());
            if lat.len() >= 200_000 {
                break;
            }
        }
        lat.sort_unstable();
        lat
    };
    let pct = |lat: &[Duration], p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!();
    println!("| mount's noac `stat`, 2 workers (tests run {LOAD_SLOW}x) beside fs-server | stats | p50 us | p99 us | job numbers/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let started = Instant::now();
    let alone = sample(&|| started.elapsed() > Duration::from_secs(2));
    println!("| no job | {} | {:.0} | {:.0} | - |", alone.len(), pct(&alone, 0.5), pct(&alone, 0.99));
    for mode in ["credit", "load"] {
        let r = start(mode, &[LOAD_SLOW, LOAD_SLOW]);
        let done = std::sync::atomic::AtomicBool::new(false);
        let (lat, rate) = std::thread::scope(|s| {
            let job = s.spawn(|| {
                let c = run_job(&r.addr, values, 16384, Duration::ZERO, |_| {});
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                values.len() as f64 / c.elapsed.as_secs_f64()
            });
            let lat = sample(&|| done.load(std::sync::atomic::Ordering::Relaxed));
            (lat, job.join().unwrap())
        });
        println!(
            "| beside a job, {mode} dispatch | {} | {:.0} | {:.0} | {rate:.0} |",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
}
