//! A TCP proxy that adds a fixed delay in each direction (the kernel here has no netem).
//!
//! `delay-proxy --listen 127.0.0.1:PORT --to 127.0.0.1:PORT --delay-ms 1` forwards every
//! connection; each chunk read is written out `delay` after it arrived, so the round
//! trip grows by twice the delay while throughput is not capped. Prints
//! `listening on ADDR` when ready; stops on SIGINT/SIGTERM (default action).
//!
//! With `--trace` it also prints a line per frame of the file protocol as it leaves the
//! proxy: `call XID OP` when a call goes on to the server, `reply XID OP` when its reply
//! goes on to the client, so a test can wait for a given call's answer to arrive.

use clap::Parser;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
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
    /// Print each call and reply as it leaves the proxy.
    #[arg(long)]
    trace: bool,
}

/// Which way a pipe carries frames, for `--trace`.
#[derive(Clone, Copy)]
enum Way {
    Calls,
    Replies,
}

/// Op names of calls in flight, by xid (shared by a connection's two pipes).
type InFlight = Arc<Mutex<HashMap<u64, String>>>;

/// Cuts the bytes written so far into whole frames and prints a line for each.
struct Tracer {
    way: Way,
    buf: Vec<u8>,
    ops: InFlight,
}

impl Tracer {
    fn wrote(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        loop {
            let Some(h) = self.buf.get(..4) else { return };
            let Ok(n) = fs_proto::frame_len(h.try_into().expect("4 bytes")) else { return };
            if self.buf.len() < 4 + n {
                return;
            }
            let frame: Vec<u8> = self.buf.drain(..4 + n).skip(4).collect();
            let line = match self.way {
                Way::Calls => fs_proto::decode::<fs_proto::Call>(&frame).ok().map(|c| {
                    let op = format!("{:?}", c.req);
                    let op = op.split([' ', '(', '{']).next().unwrap_or("?").to_string();
                    self.ops.lock().unwrap().insert(c.xid, op.clone());
                    format!("call {} {op}", c.xid)
                }),
                Way::Replies => fs_proto::decode::<fs_proto::Reply>(&frame).ok().map(|r| {
                    let op = self.ops.lock().unwrap().remove(&r.xid).unwrap_or_else(|| "?".into());
                    format!("reply {} {op}", r.xid)
                }),
            };
            if let Some(line) = line {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }
}

/// Copies `from` to `to`, holding each chunk back until `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, mut tracer: Option<Tracer>) {
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
            if let Some(t) = tracer.as_mut() {
                t.wrote(&chunk);
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
        let trace = a.trace;
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&to) else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let ops = InFlight::default();
            let tracer = |way| trace.then(|| Tracer { way, buf: Vec::new(), ops: ops.clone() });
            let (up_tracer, down_tracer) = (tracer(Way::Calls), tracer(Way::Replies));
            let up = std::thread::spawn(move || pipe(client, server, delay, up_tracer));
            pipe(s2, c2, delay, down_tracer);
            let _ = up.join();
        });
    }
}
