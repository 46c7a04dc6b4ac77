//! Change notices, measured: one mount writes a file and closes it, another polls `stat`
//! with `actimeo=3600` (only a notice can make the new size visible) until it shows; the
//! time from the close to the new size, p50/p99/max over N changes. Beside it, what the
//! promise saves: `stat` of an unchanged file in a loop with notices (served from the
//! kernel's cache) and with `noac` (a round trip each), and opens of an unchanged file
//! with and without notices. Then a tree written on one mount and read back with `tar`
//! on another, a `stat` storm over a tree another mount changes a small part of, and the
//! changes per second the server makes with no mount and with eight subscribed (what the
//! notices cost it). Run by `scripts/bench-notices` (release build).

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

    println!();
    tree_rows(&rig);
    println!();
    order_rows(&rig);
    println!();
    writer_cost();
    println!();
    // A server of its own, whose first mount does not subscribe.
    server_cost(&Rig::new("nonotify"));
}

/// What close-to-open under the promise costs a writer (each WRITE and SETATTR answered
/// once every other mount that may hold the file applied its notice): rewrites of a
/// 4 KiB file (a truncating open, a WRITE, a close) per second, and a 64 MiB file written
/// and closed (median of three): with no other mount; with another subscribed mount that
/// never touched the files (it holds nothing, so nothing waits for it); and with that
/// mount after it read both files (it holds them: every write waits for it).
fn writer_cost() {
    let rig = Rig::new("");
    let (small, big) = (rig.mnt("w4k"), rig.mnt("w64m"));
    let (data4k, data64m) = (vec![b'w'; 4096], vec![b'b'; 64 << 20]);
    let measure = || {
        let rewrites = rate(Duration::from_secs(2), || std::fs::write(&small, &data4k).unwrap());
        let mut mibs: Vec<f64> = (0..3)
            .map(|_| {
                let t = Instant::now();
                std::fs::write(&big, &data64m).unwrap();
                64.0 / t.elapsed().as_secs_f64()
            })
            .collect();
        mibs.sort_by(f64::total_cmp);
        (rewrites, mibs[1])
    };
    std::fs::write(&small, &data4k).unwrap();
    std::fs::write(&big, &data64m).unwrap();
    let alone = measure();
    let other = rig.second_mount("reader", "");
    wait_until(Duration::from_secs(10), "subscribed", || {
        mount_status(&other.mountpoint).contains("notices subscribed")
    });
    let untouched = measure();
    std::fs::read(other.path("w4k")).unwrap();
    std::fs::read(other.path("w64m")).unwrap();
    let holding = measure();
    println!("| writer, per second | no other mount | another mount, not holding the files | ratio | another mount holding them | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |what: &str, a: f64, u: f64, h: f64| {
        println!("| {what} | {a:.0} | {u:.0} | {:.2}x | {h:.0} | {:.2}x |", u / a, h / a);
    };
    row("rewrite of a 4 KiB file and close", alone.0, untouched.0, holding.0);
    row("64 MiB written and closed, MiB/s", alone.1, untouched.1, holding.1);
}

fn make_tree(root: &std::path::Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f}")), vec![b'x'; 100 + (d * 31 + f * 7) % 4000]).unwrap();
        }
    }
}

/// `tar` of a tree read back through a second mount, and a stat storm over a tree that
/// another mount changes a small part of, with notices and without, side by side.
fn tree_rows(rig: &Rig) {
    let (dirs, files) = (40, 50);
    make_tree(&rig.mnt("tree"), dirs, files);
    let with = rig.second_mount("tw", "");
    let without = rig.second_mount("to", "nonotify");
    wait_until(Duration::from_secs(10), "subscribed", || mount_status(&with.mountpoint).contains("notices subscribed"));
    let tar = |m: &tests::MountProc| {
        let t = Instant::now();
        let out = std::process::Command::new("tar")
            .args(["cf", "/dev/null", "tree"])
            .current_dir(&m.mountpoint)
            .output()
            .unwrap();
        assert!(out.status.success());
        t.elapsed().as_secs_f64()
    };
    // Twice each: the first read is cold, the second is what a re-read costs.
    let (w1, o1, w2, o2) = (tar(&with), tar(&without), tar(&with), tar(&without));
    println!("| tree of {} files, other mount | with notices | without | ratio |", dirs * files);
    println!("| --- | ---: | ---: | ---: |");
    println!("| `tar` read back, first time, seconds | {w1:.3} | {o1:.3} | {:.2}x |", o1 / w1);
    println!("| `tar` read back, again, seconds | {w2:.3} | {o2:.3} | {:.2}x |", o2 / w2);
    // A stat storm over the tree while the first mount rewrites one file in a hundred.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let rates = std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let p = rig.mnt(&format!("tree/d{}/f{}", i % dirs, (i * 7) % files));
                std::fs::write(p, vec![b'y'; i % 5000]).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let storm = |m: &tests::MountProc| {
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < Duration::from_secs(3) {
                for d in 0..dirs {
                    for f in 0..files {
                        let _ = std::fs::metadata(m.mountpoint.join(format!("tree/d{d}/f{f}")));
                        n += 1;
                    }
                }
            }
            n as f64 / t.elapsed().as_secs_f64()
        };
        let r = (storm(&with), storm(&without));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    println!(
        "| `stat` storm while 1% changes, stats/s | {:.0} | {:.0} | {:.2}x |",
        rates.0,
        rates.1,
        rates.0 / rates.1
    );
}

/// Names in the server's order: `lstat`s of eight names through a mount that keeps names
/// (the default: in order, by epochs) and through one that keeps none (`lookupcache=none`,
/// the server's answer each time), with the folder quiet and while another mount renames
/// each name away and back as fast as it can; and that mount's renames per second.
fn order_rows(rig: &Rig) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    std::fs::create_dir(rig.mnt("order")).unwrap();
    for i in 0..8 {
        std::fs::write(rig.mnt(&format!("order/k{i}")), b"k").unwrap();
    }
    let kept = rig.second_mount("ord", "actimeo=3600");
    let none = rig.second_mount("ordn", "actimeo=3600,lookupcache=none");
    let secs = Duration::from_secs(2);
    let probe = |m: &tests::MountProc| {
        let names: Vec<std::path::PathBuf> = (0..8).map(|i| m.path(&format!("order/k{i}"))).collect();
        let mut i = 0;
        move || {
            let _ = std::fs::symlink_metadata(&names[i % 8]);
            i += 1;
        }
    };
    let quiet = (rate(secs, probe(&kept)), rate(secs, probe(&none)));
    let epochs_before = tests::metric(&mount_status(&kept.mountpoint), "kernel name epochs");
    let storm = |m: &tests::MountProc| {
        let (stop, renames) = (AtomicBool::new(false), AtomicU64::new(0));
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    for i in 0..8 {
                        let (k, t) = (rig.mnt(&format!("order/k{i}")), rig.mnt(&format!("order/t{i}")));
                        std::fs::rename(&k, &t).unwrap();
                        std::fs::rename(&t, &k).unwrap();
                        renames.fetch_add(2, Relaxed);
                    }
                }
            });
            let r = rate(secs, probe(m));
            stop.store(true, Relaxed);
            r
        });
        (seen, renames.load(Relaxed) as f64 / secs.as_secs_f64())
    };
    let (kept_storm, kept_renames) = storm(&kept);
    let epochs = tests::metric(&mount_status(&kept.mountpoint), "kernel name epochs") - epochs_before;
    let (none_storm, none_renames) = storm(&none);
    println!(
        "| names another mount renames, per second | names kept, in order (default) | `lookupcache=none` | ratio |"
    );
    println!("| --- | ---: | ---: | ---: |");
    println!("| `lstat`, folder quiet | {:.0} | {:.0} | {:.1}x |", quiet.0, quiet.1, quiet.0 / quiet.1);
    println!(
        "| `lstat`, during a rename storm | {kept_storm:.0} | {none_storm:.0} | {:.1}x |",
        kept_storm / none_storm
    );
    println!(
        "| renames meanwhile by the other mount | {kept_renames:.0} | {none_renames:.0} | {:.2}x |",
        kept_renames / none_renames
    );
    println!();
    println!("(kernel name epochs begun by the default mount during its storm: {epochs:.0})");
}

/// SETATTRs per second from four clients, with no mount subscribed and with eight: each
/// change then costs the server a notice encoded once and queued eight times.
fn server_cost(rig: &Rig) {
    std::fs::write(rig.mnt("cost"), b"c").unwrap();
    let run = || {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let total = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for i in 0..4u64 {
                let (stop, total) = (&stop, &total);
                s.spawn(move || {
                    let mut c = tests::rpc::Conn::connect(&rig.server.addr).unwrap();
                    // Four clients, not one: the duplicate request cache keys calls by
                    // client id and xid.
                    c.client = (u64::from(std::process::id()) << 8) | i;
                    let root = c.mount();
                    let fh = match c.call(fs_proto::Request::Lookup { dir: root, name: b"cost".to_vec() }).unwrap() {
                        fs_proto::Response::Lookup { fh, .. } => fh,
                        r => panic!("{r:?}"),
                    };
                    let mut n = 0u64;
                    let mut mode = 0o600;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        mode ^= 0o044;
                        let attrs = fs_proto::SetAttrs { mode: Some(mode), ..Default::default() };
                        c.call(fs_proto::Request::SetAttr { fh: fh.clone(), attrs, guard: None }).unwrap();
                        n += 1;
                    }
                    total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                });
            }
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        total.load(std::sync::atomic::Ordering::Relaxed) as f64 / 3.0
    };
    let alone = run();
    let mounts: Vec<tests::MountProc> = (0..8).map(|i| rig.second_mount(&format!("s{i}"), "")).collect();
    for m in &mounts {
        wait_until(Duration::from_secs(10), "subscribed", || {
            mount_status(&m.mountpoint).contains("notices subscribed")
        });
    }
    let eight = run();
    println!("| changes (SETATTR) per second, 4 clients | no mount subscribed | 8 more mounts subscribed | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| notices per second the server sustains | {alone:.0} | {eight:.0} | {:.2}x |", eight / alone);
}
