//! A sink: subscribes to one tag of the broker's publications and writes each value, one
//! per line.

use crate::endpoint::{BrokerAddr, Role};
use crate::util::{self, sock_err};
use crate::wire::{tag, Msg};
use std::io::Write;

/// A SUB socket for the given prefixes, never dropping (high-water mark 0).
pub fn subscribe(ctx: &zmq::Context, addr: &BrokerAddr, prefixes: &[&[u8]]) -> anyhow::Result<zmq::Socket> {
    let ep = addr.endpoint(Role::Publish);
    let s = util::socket(ctx, zmq::SUB)?;
    s.set_rcvhwm(0)?;
    for p in prefixes {
        s.set_subscribe(p)?;
    }
    s.connect(&ep).map_err(|e| sock_err("connect to", &ep, e))?;
    Ok(s)
}

/// Writes the values of every `tag` message to `out` until stopped or, with `limit`,
/// until that many values were written. Returns how many were written.
pub fn run(sub: &zmq::Socket, which: u8, out: &mut dyn Write, limit: Option<u64>) -> anyhow::Result<u64> {
    let mut written = 0u64;
    while !util::stopping() && limit.is_none_or(|l| written < l) {
        if sub.poll(zmq::POLLIN, 200).unwrap_or(0) == 0 {
            continue;
        }
        let body = sub.recv_bytes(0)?;
        let values = match Msg::decode(&body) {
            Ok(Msg::Primes { primes, .. }) if which == tag::PRIMES => primes,
            Ok(Msg::Numbers { values, .. }) if which == tag::NUMBERS => values,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("malformed publication dropped: {e}");
                continue;
            }
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
    Ok(written)
}
