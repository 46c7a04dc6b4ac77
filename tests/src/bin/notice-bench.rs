//! Change notices, measured: one mount writes a file and closes it, another polls `stat`
//! with `actimeo=3600` (only a notice can make the new size visible) until it shows; the
//! time from the close to the new size, p50/p99/max over N changes. Beside it, what the
//! promise saves: `stat` of an unchanged file in a loop with notices (served from the
//! kernel's cache) and with `noac` (a round trip each), and opens of an unchanged file
//! with and without notices. Run by `scripts/bench-notices` (release build).

use std::time::{Duration, Instant};
use tests::{mount_status, wait_until, Rig};

fn rate(d: Duration, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < d {
        f();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rig = Rig::new("");
    let b = rig.second_mount("b", "actimeo=3600");
    let noac = rig.second_mount("noac", "noac");
    let plain = rig.second_mount("plain", "nonotify");
    wait_until(Duration::from_secs(10), "subscribed", || mount_status(&b.mountpoint).contains("notices subscribed"));
    let lat = tests::notice_latency(&rig.mnt("f"), &b.path("f"), n);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| changes | p50 us | p99 us | max us |");
    println!("| ---: | ---: | ---: | ---: |");
    println!(
        "| {n} | {:.0} | {:.0} | {:.0} |",
        us(lat[lat.len() / 2]),
        us(lat[(lat.len() * 99 / 100).min(lat.len() - 1)]),
        us(lat[lat.len() - 1])
    );
    println!();
    let secs = Duration::from_secs(2);
    let stat = |p: std::path::PathBuf| {
        move || {
            std::fs::metadata(&p).unwrap();
        }
    };
    let open = |p: std::path::PathBuf| move || drop(std::fs::File::open(&p).unwrap());
    let s_notify = rate(secs, stat(b.path("f")));
    let s_noac = rate(secs, stat(noac.path("f")));
    let o_notify = rate(secs, open(b.path("f")));
    let o_plain = rate(secs, open(plain.path("f")));
    println!("| unchanged file, per second | with notices | without | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| `stat` (without: `noac`, always current) | {s_notify:.0} | {s_noac:.0} | {:.1}x |", s_notify / s_noac);
    println!(
        "| `open`+`close` (without: `nonotify`, close-to-open GETATTR) | {o_notify:.0} | {o_plain:.0} | {:.1}x |",
        o_notify / o_plain
    );
}
