//! A worker's load, as the lecture notes weigh it (chapter 2): CPU, memory, items held.
//!
//! - **CPU share**: of the time the worker's testing thread wanted to run, the part it
//!   ran (`/proc/thread-self/schedstat`: time on the CPU and time waiting in the run
//!   queue). A worker alone on its core sees ~1.0; one sharing its core with a busy
//!   process ~0.5. Unlike the load average this is the worker's own view: on a machine
//!   with an idle core and a busy one, the load average is the same for both workers.
//! - **Memory pressure**: the part of the last 10 s some task stalled on memory
//!   (`/proc/pressure/memory`, `some avg10`), when the kernel has PSI.
//! - **Load average** per core (1 min), reported for operators; the broker does not use it.
//! - **Items held** (being tested or waiting).
//!
//! [`capacity`] turns a load into how many items a worker should hold; the broker (under
//! `--dispatch load`) and the worker (to hand back what it should not hold) use the same
//! function, so they agree without asking each other.

use std::time::Duration;

/// Fixed-point, for the wire: permille, and hundredths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// CPU share, 0..=1000 (1000: never waited for a CPU).
    pub cpu_share: u16,
    /// Memory pressure, 0..=1000 (permille of time stalled).
    pub mem_pressure: u16,
    /// 1-minute load average per core, in hundredths.
    pub loadavg: u16,
    /// Items held.
    pub held: u16,
}

impl Default for Load {
    /// An unloaded worker (what a worker says before it has measured anything).
    fn default() -> Load {
        Load { cpu_share: 1000, mem_pressure: 0, loadavg: 0, held: 0 }
    }
}

/// Memory pressure above this (10% of time stalled) limits a worker to one item.
pub const MEM_PRESSURE_LIMIT: u16 = 100;

/// How many items a worker asking for `base` should hold at `load`: `base` scaled by its
/// CPU share (rounded, at least one), one under memory pressure.
pub fn capacity(base: u32, load: &Load) -> u32 {
    if base == 0 {
        return 0;
    }
    if load.mem_pressure > MEM_PRESSURE_LIMIT {
        return 1;
    }
    let share = u32::from(load.cpu_share.min(1000));
    ((base * share + 500) / 1000).clamp(1, base)
}

/// How long a worker at `load` takes for one more item, relative to an unloaded one
/// (items ahead of it, plus the new one, over its CPU share). Lower is sooner.
pub fn finish_cost(held: usize, load: &Load) -> u64 {
    (held as u64 + 1) * 1_000_000 / u64::from(load.cpu_share.clamp(1, 1000))
}

/// Reads the current thread's CPU share between calls, and the system's memory pressure
/// and load average.
pub struct Meter {
    last: Option<(u64, u64)>,
    share: u16,
    cores: u32,
}

/// Below this much wanted CPU time between two samples the share is not re-estimated
/// (an idle worker keeps its last figure).
const MIN_SAMPLE: Duration = Duration::from_millis(50);

impl Meter {
    pub fn new() -> Meter {
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        Meter { last: read_schedstat(), share: 1000, cores }
    }

    /// Call from the thread that tests numbers.
    pub fn sample(&mut self, held: usize) -> Load {
        if let Some(now) = read_schedstat() {
            match self.last {
                Some(last) => {
                    if let Some(s) = share_between(last, now, MIN_SAMPLE) {
                        self.share = s;
                        self.last = Some(now);
                    }
                }
                None => self.last = Some(now),
            }
        }
        Load {
            cpu_share: self.share,
            mem_pressure: read_mem_pressure().unwrap_or(0),
            loadavg: read_loadavg().map(|l| (l * 100.0 / self.cores as f64).min(u16::MAX as f64) as u16).unwrap_or(0),
            held: held.min(u16::MAX as usize) as u16,
        }
    }
}

impl Default for Meter {
    fn default() -> Meter {
        Meter::new()
    }
}

/// The share of wanted CPU time that was run between two (run ns, wait ns) readings, if
/// at least `min` was wanted.
pub fn share_between(last: (u64, u64), now: (u64, u64), min: Duration) -> Option<u16> {
    let run = now.0.saturating_sub(last.0);
    let wait = now.1.saturating_sub(last.1);
    let wanted = run + wait;
    (wanted >= min.as_nanos() as u64).then(|| (run * 1000 / wanted) as u16)
}

/// (time on the CPU, time waiting to run), in ns, of the calling thread.
fn read_schedstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_ascii_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

fn read_mem_pressure() -> Option<u16> {
    let s = std::fs::read_to_string("/proc/pressure/memory").ok()?;
    parse_psi_some_avg10(&s)
}

/// `some avg10=12.34 ...` -> 123 (permille).
pub fn parse_psi_some_avg10(s: &str) -> Option<u16> {
    let line = s.lines().find(|l| l.starts_with("some "))?;
    let v = line.split_ascii_whitespace().find_map(|kv| kv.strip_prefix("avg10="))?;
    let pct: f64 = v.parse().ok()?;
    Some((pct * 10.0).clamp(0.0, 1000.0) as u16)
}

fn read_loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_ascii_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cpu_share: u16) -> Load {
        Load { cpu_share, ..Load::default() }
    }

    #[test]
    fn capacity_follows_the_cpu_share_and_memory_pressure() {
        assert_eq!(capacity(2, &at(1000)), 2);
        assert_eq!(capacity(2, &at(800)), 2);
        assert_eq!(capacity(2, &at(500)), 1, "half a core: half the items");
        assert_eq!(capacity(2, &at(0)), 1, "never less than one: a loaded worker still works");
        assert_eq!(capacity(4, &at(500)), 2);
        assert_eq!(capacity(4, &at(300)), 1);
        assert_eq!(capacity(0, &at(1000)), 0);
        assert_eq!(capacity(4, &Load { mem_pressure: 150, ..Load::default() }), 1);
        assert_eq!(capacity(4, &Load { mem_pressure: 50, ..Load::default() }), 4);
    }

    #[test]
    fn a_worker_with_half_the_cpu_takes_twice_as_long() {
        assert_eq!(finish_cost(0, &at(500)), 2 * finish_cost(0, &at(1000)));
        assert!(finish_cost(1, &at(1000)) < finish_cost(0, &at(400)));
        assert!(finish_cost(0, &at(0)) > 0);
    }

    #[test]
    fn share_needs_enough_wanted_time() {
        let min = Duration::from_millis(50);
        assert_eq!(share_between((0, 0), (60_000_000, 60_000_000), min), Some(500));
        assert_eq!(share_between((0, 0), (100_000_000, 0), min), Some(1000));
        assert_eq!(share_between((0, 0), (10_000_000, 1_000_000), min), None, "idle: keep the last figure");
    }

    #[test]
    fn psi_is_read_in_permille() {
        let s = "some avg10=12.34 avg60=0.00 avg300=0.00 total=1\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_psi_some_avg10(s), Some(123));
        assert_eq!(parse_psi_some_avg10("full avg10=1.00"), None);
    }

    /// The meter reads this machine: a thread that spins alone gets most of a CPU.
    #[test]
    fn the_meter_reads_this_thread() {
        let mut m = Meter::new();
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(120) {
            std::hint::black_box(0u64);
        }
        let l = m.sample(3);
        assert_eq!(l.held, 3);
        assert!(l.cpu_share > 0 && l.cpu_share <= 1000);
    }
}
