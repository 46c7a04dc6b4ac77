//! The five mutual-exclusion algorithms side by side on the shared simulator (lecture
//! 2.4.6), for n = 4, 9, 16 and 25 nodes: `cargo run --release -p coord --example
//! bench_mutex` (what `scripts/bench-mutex` runs).
//!
//! Per algorithm and n: messages per entry under light load (requests rarely meet) and
//! heavy load (every node always wants in); the synchronisation delay (messages sent
//! between one exit and the next entry, heavy load); the busiest node's load (messages
//! sent and received) over the mean, the notes' symmetry (1.0: perfectly symmetric); and
//! what one crash does to the others: node 0 (the coordinator, the ring's first token
//! holder, Raymond's root) or the last node (a leaf). Virtual time and seeded schedules:
//! the same figures on every machine.

use coord::clock::NodeId;
use coord::mutex::{central::Central, lamport::Lamport, maekawa::Maekawa, raymond::RaymondNode, ring::Ring};
use coord::protocol::Protocol;
use coord::sim::{Link, Sim};

const SEEDS: u64 = 10;
const LINK: Link = Link { delay: (1, 10), loss: 0.0, dup: 0.0, fifo: true };

struct Figures {
    light: f64,
    heavy: f64,
    sync: f64,
    busiest: f64,
}

fn per_entry<P: Protocol>(make: &dyn Fn() -> Vec<P>, spread: u64) -> f64 {
    let (mut m, mut e) = (0u64, 0u64);
    for seed in 0..SEEDS {
        let mut sim = Sim::new(make(), seed, LINK);
        sim.run_workload(4, 2, spread, u64::MAX / 4);
        sim.settle(10_000_000);
        m += sim.messages;
        e += sim.granted.iter().map(|&g| u64::from(g)).sum::<u64>();
    }
    m as f64 / e as f64
}

fn figures<P: Protocol>(make: &dyn Fn() -> Vec<P>, n: u32) -> Figures {
    let light = per_entry(make, 400 * u64::from(n));
    let heavy = per_entry(make, 0);
    let (mut sync, mut count, mut busiest) = (0u64, 0u64, 0f64);
    for seed in 0..SEEDS {
        let mut sim = Sim::new(make(), seed, LINK);
        sim.run_workload(4, 2, 0, u64::MAX / 4);
        sim.settle(10_000_000);
        sync += sim.sync_delays.iter().sum::<u64>();
        count += sim.sync_delays.len() as u64;
        let mean = sim.load.iter().sum::<u64>() as f64 / sim.load.len() as f64;
        busiest += *sim.load.iter().max().unwrap_or(&0) as f64 / mean.max(1.0);
    }
    Figures { light, heavy, sync: sync as f64 / count.max(1) as f64, busiest: busiest / SEEDS as f64 }
}

/// Crashes `victim` 30 ms into a heavy workload, on every seed: what do the others see?
/// "recover" (every other request granted), "stall" (some never are), "UNSAFE" (two
/// inside at once), with how many seeds of each.
fn crash<P: Protocol>(make: &dyn Fn() -> Vec<P>, victim: NodeId) -> String {
    let mut counts = [0u32; 3];
    for seed in 0..SEEDS {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut sim = Sim::new(make(), seed, LINK);
            sim.kill_at = Some((30, victim));
            sim.run_workload(4, 2, 0, 200_000);
        }));
        let i = match outcome {
            Ok(()) => 0,
            Err(e) => {
                let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
                if msg.contains("not every request granted") {
                    1
                } else {
                    2
                }
            }
        };
        counts[i] += 1;
    }
    let names = ["recover", "stall", "UNSAFE"];
    let parts: Vec<String> =
        (0..3).filter(|&i| counts[i] > 0).map(|i| format!("{} {}/{SEEDS}", names[i], counts[i])).collect();
    parts.join(", ")
}

fn row<P: Protocol>(name: &str, n: u32, make: &dyn Fn() -> Vec<P>) {
    let f = figures(make, n);
    let (first, last) = (crash(make, 0), crash(make, n - 1));
    println!(
        "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.2} | {first} | {last} |",
        f.light, f.heavy, f.sync, f.busiest
    );
}

fn main() {
    // Quiet: the crash runs end in panics the table reports.
    std::panic::set_hook(Box::new(|_| {}));
    println!("| algorithm | n | msgs/entry, light | msgs/entry, heavy | sync delay (msgs) | busiest/mean load | node 0 crashes | last node crashes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for n in [4u32, 9, 16, 25] {
        let ids: Vec<NodeId> = (0..n).collect();
        row("central", n, &|| ids.iter().map(|&i| Central::new(i, &ids)).collect::<Vec<_>>());
        row("ring", n, &|| ids.iter().map(|&i| Ring::new(i, &ids)).collect::<Vec<_>>());
        row("lamport", n, &|| ids.iter().map(|&i| Lamport::new(i, &ids)).collect::<Vec<_>>());
        row("maekawa", n, &|| ids.iter().map(|&i| Maekawa::new(i, &ids, true).expect("square")).collect::<Vec<_>>());
        row("raymond", n, &|| (0..n).map(|i| RaymondNode::new(i, (i > 0).then(|| (i - 1) / 2))).collect::<Vec<_>>());
    }
}
