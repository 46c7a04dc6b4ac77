//! Load generator for `fs-server`: drives a running server directly over its protocol and
//! compares with raw `pread`/`pwrite` on the export, in one run.
//!
//! `fs-load --addr ADDR --export DIR [--seconds N]`; `scripts/bench-server` starts the
//! server and calls this.

use clap::Parser;
use fs_proto::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tests::rpc::Conn;

#[derive(Parser)]
struct Args {
    /// The server's address.
    #[arg(long)]
    addr: String,
    /// The server's export folder, for the raw comparison.
    #[arg(long)]
    export: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Size of the test file in MiB.
    #[arg(long, default_value_t = 256)]
    file_mib: u64,
}

const MIB: u64 = 1 << 20;

/// Keeps `depth` calls in flight for `secs`; returns completed calls per second.
fn pipelined(c: &mut Conn, depth: usize, secs: f64, mut make: impl FnMut(u64) -> Request) -> f64 {
    let (mut sent, mut done) = (0u64, 0u64);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    while sent < depth as u64 {
        let xid = c.next_xid();
        c.send(xid, make(sent)).unwrap();
        sent += 1;
    }
    c.flush().unwrap();
    loop {
        let r = c.recv().unwrap();
        if let Err(e) = r.res {
            panic!("call failed: {e}");
        }
        done += 1;
        if start.elapsed() < limit {
            let xid = c.next_xid();
            c.send(xid, make(sent)).unwrap();
            c.flush().unwrap();
            sent += 1;
        } else if done == sent {
            break;
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn raw_rate(secs: f64, mut op: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        op(n);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The most any socket protocol can move here: 1 MiB messages over a loopback TCP
/// connection with nothing else (one copy into the kernel, one out).
fn loopback_ceiling(secs: f64) -> f64 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut rx, _) = l.accept().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        let buf = vec![1u8; MIB as usize];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if tx.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; MIB as usize];
    let rate = raw_rate(secs, |_| rx.read_exact(&mut buf).unwrap());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(rx);
    let _ = writer.join();
    rate
}

fn main() {
    let a = Args::parse();
    // Keep 1 MiB buffers on the heap rather than a fresh mmap each (page faults).
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    let mut c = Conn::connect(&a.addr).unwrap_or_else(|e| {
        eprintln!("fs-load: cannot connect to {}: {e}", a.addr);
        std::process::exit(1);
    });
    let root = c.mount();
    let blocks = a.file_mib;
    let name = b"fs-load.data".to_vec();
    let _ = c.call(Request::Remove { dir: root.clone(), name: name.clone() });
    let fh = match c.call(Request::Create { dir: root.clone(), name, mode: 0o644, how: CreateHow::Guarded }) {
        Ok(Response::Created { fh, .. }) => fh,
        r => panic!("create: {r:?}"),
    };
    let data = vec![0x5au8; MIB as usize];
    // Fill the file once so reads come from the server's page cache.
    for i in 0..blocks {
        c.call(Request::Write {
            fh: fh.clone(),
            offset: i * MIB,
            stable: Stable::Unstable,
            fence: 0,
            data: data.clone(),
        })
        .unwrap();
    }
    let s = a.seconds;
    let mut rows: Vec<(String, f64, String, Option<f64>)> = Vec::new();

    for depth in [1, 32] {
        let rate = pipelined(&mut c, depth, s, |_| Request::GetAttr { fh: root.clone() });
        rows.push((format!("GETATTR, {depth} in flight"), rate, "calls/s".into(), None));
    }
    let raw_file = a.export.join("fs-load.data");
    let f = File::options().read(true).write(true).open(&raw_file).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let raw_read = raw_rate(s, |n| {
        f.read_exact_at(&mut buf, (n % blocks) * MIB).unwrap();
    });
    let raw_write = raw_rate(s, |n| {
        f.write_all_at(&data, (n % blocks) * MIB).unwrap();
    });
    for depth in [1, 4] {
        let rate = pipelined(&mut c, depth, s, |n| Request::Read {
            fh: fh.clone(),
            offset: (n % blocks) * MIB,
            count: MIB as u32,
        });
        rows.push((format!("READ 1 MiB, {depth} in flight"), rate, "MiB/s".into(), Some(raw_read)));
    }
    for depth in [1, 4] {
        let rate = pipelined(&mut c, depth, s, |n| Request::Write {
            fh: fh.clone(),
            offset: (n % blocks) * MIB,
            stable: Stable::Unstable,
            fence: 0,
            data: data.clone(),
        });
        rows.push((format!("WRITE 1 MiB, {depth} in flight"), rate, "MiB/s".into(), Some(raw_write)));
    }
    rows.push(("raw pread 1 MiB (page cache)".into(), raw_read, "MiB/s".into(), None));
    let ceiling = loopback_ceiling(s);
    rows.push(("bare TCP loopback, 1 MiB messages".into(), ceiling, "MiB/s".into(), Some(raw_read)));
    rows.push(("raw pwrite 1 MiB (page cache)".into(), raw_write, "MiB/s".into(), None));
    let _ = c.call(Request::Remove { dir: root, name: b"fs-load.data".to_vec() });

    println!("| measurement | rate | unit | vs raw |");
    println!("| --- | ---: | --- | ---: |");
    for (what, rate, unit, raw) in rows {
        let ratio = raw.map(|r| format!("{:.2}x", rate / r)).unwrap_or_default();
        println!("| {what} | {rate:.0} | {unit} | {ratio} |");
    }
}
