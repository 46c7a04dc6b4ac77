//! A TCP proxy that adds a fixed delay in each direction (the kernel here has no netem).
//!
//! `delay-proxy --listen 127.0.0.1:PORT --to 127.0.0.1:PORT --delay-ms 1` forwards every
//! connection; each chunk read is written out `delay` after it arrived, so the round
//! trip grows by twice the delay while throughput is not capped. Prints
//! `listening on ADDR` when ready; stops on SIGINT/SIGTERM (default action).

use clap::Parser;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    to: String,
    /// One-way delay in milliseconds (fractions allowed).
    #[arg(long)]
    delay_ms: f64,
}

/// Copies `from` to `to`, holding each chunk back until `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn main() {
    let a = Args::parse();
    let delay = Duration::from_secs_f64(a.delay_ms / 1000.0);
    let l = TcpListener::bind(&a.listen).unwrap_or_else(|e| {
        eprintln!("delay-proxy: cannot listen on {}: {e}", a.listen);
        std::process::exit(1);
    });
    println!("listening on {}", l.local_addr().unwrap());
    let _ = std::io::stdout().flush();
    for client in l.incoming().flatten() {
        let to = a.to.clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&to) else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = std::thread::spawn(move || pipe(client, server, delay));
            pipe(s2, c2, delay);
            let _ = up.join();
        });
    }
}
