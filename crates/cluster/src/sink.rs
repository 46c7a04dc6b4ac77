//! A sink: subscribes to one tag of the broker's publications and writes each value, one
//! per line.

use crate::endpoint::{Brokers, Role};
use crate::util::{self, sock_err};
use crate::wire::{tag, Msg, Seen, Stream};
use std::io::Write;

/// A SUB socket for the given prefixes, never dropping (high-water mark 0), connected to
/// every broker of the list (only the active one of a pair publishes).
pub fn subscribe(ctx: &zmq::Context, brokers: impl Into<Brokers>, prefixes: &[&[u8]]) -> anyhow::Result<zmq::Socket> {
    let s = util::socket(ctx, zmq::SUB)?;
    s.set_rcvhwm(0)?;
    for p in prefixes {
        s.set_subscribe(p)?;
    }
    for addr in brokers.into().iter() {
        let ep = addr.endpoint(Role::Publish);
        crate::curve::connect(&s, &ep).map_err(|e| sock_err("connect to", &ep, e))?;
    }
    Ok(s)
}

/// Writes the values of every `tag` message to `out` until stopped or, with `limit`,
/// until that many values were written. Publications missed (by their sequence numbers)
/// are reported on `report` as they are noticed, and so is a stream joined late.
/// Returns how many values were written, and how many publications were missed.
pub fn run(
    sub: &zmq::Socket,
    which: u8,
    out: &mut dyn Write,
    limit: Option<u64>,
    report: &mut dyn Write,
) -> anyhow::Result<(u64, u64)> {
    let mut written = 0u64;
    let mut streams = Stream::default();
    while !util::stopping() && limit.is_none_or(|l| written < l) {
        if sub.poll(zmq::POLLIN, 200).unwrap_or(0) == 0 {
            continue;
        }
        let body = sub.recv_bytes(0)?;
        let msg = match Msg::decode(&body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("malformed publication dropped: {e}");
                continue;
            }
        };
        let what = if which == tag::PRIMES { "primes" } else { "numbers" };
        let job = msg.stream().map_or(0, |((_, job), _)| job);
        match streams.see(&msg) {
            Seen::Gap { from, missed } => writeln!(
                report,
                "sink: missed {missed} publications of job {job:016x}'s {what} (numbers {from} to {})",
                from + missed - 1
            )?,
            Seen::First { at } if at > 0 => {
                writeln!(report, "sink: joined job {job:016x}'s {what} at publication {at} (started late)")?
            }
            _ => {}
        }
        let values = match msg {
            Msg::Primes { primes, .. } if which == tag::PRIMES => primes,
            Msg::Numbers { values, .. } if which == tag::NUMBERS => values,
            _ => continue,
        };
        let mut text = String::with_capacity(values.len() * 12);
        for v in values.iter() {
            text.push_str(&v.to_string());
            text.push('\n');
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        written += values.len() as u64;
    }
    Ok((written, streams.missed))
}
