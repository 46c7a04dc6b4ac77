//! The lecture's own message format (1.4.1) and its four endpoints, beside the batched
//! ones: a message is exactly 9 bytes, a tag character (`n` a number, `p` a prime) and
//! the value as a big-endian 64-bit integer. Sources send REQ and wait for the
//! acknowledgement (any reply), workers PULL numbers and send primes back by REQ, sinks
//! SUBscribe by tag. Any language's ZeroMQ can talk to it; see PROTOCOL.md.
//!
//! `cluster broker --classic ADDR` binds, at ADDR's four endpoints (as for the batched
//! address): sources (REP), work (PUSH), results (REP) and publications (PUB). Classic
//! and batched clients share the broker: a classic source's numbers go to our batched
//! workers when any is connected (their completion is tracked and they are resent if a
//! worker dies), else to classic workers, whose primes come back one by one and whose
//! composites never answer (as in the notes: no completion, no resend). Every number
//! received and every prime found, from either kind of client, is published in both
//! formats.

use crate::endpoint::{BrokerAddr, Role};
use crate::util::{self, sock_err};

pub const LEN: usize = 9;
pub const NUMBER: u8 = b'n';
pub const PRIME: u8 = b'p';

/// The job id under which classic sources' numbers travel in the batched format
/// ("classic\0").
pub const JOB: u64 = u64::from_be_bytes(*b"classic\0");

pub fn encode(tag: u8, value: i64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = tag;
    b[1..].copy_from_slice(&value.to_be_bytes());
    b
}

/// A classic message: its tag (`n` or `p`) and value, or why not.
pub fn decode(b: &[u8]) -> Result<(u8, i64), String> {
    if b.len() != LEN {
        return Err(format!("a classic message is {LEN} bytes, not {}", b.len()));
    }
    match b[0] {
        t @ (NUMBER | PRIME) => Ok((t, i64::from_be_bytes(b[1..].try_into().expect("8 bytes")))),
        t => Err(format!("unknown tag {t:#04x} (want 'n' or 'p')")),
    }
}

/// The four classic sockets.
pub struct Classic {
    pub src: zmq::Socket,
    pub work: zmq::Socket,
    pub res: zmq::Socket,
    pub publ: zmq::Socket,
}

impl Classic {
    pub fn bind(ctx: &zmq::Context, addr: &BrokerAddr) -> anyhow::Result<Classic> {
        let bind = |kind, role| -> anyhow::Result<zmq::Socket> {
            let s = util::socket(ctx, kind)?;
            let ep = addr.endpoint(role);
            if let Some(path) = ep.strip_prefix("ipc://") {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    anyhow::bail!("cannot listen on {ep}: another process is listening there");
                }
            }
            if kind == zmq::PUSH {
                // Only to connected workers: with none, a send fails at once and the
                // number goes to the batched queue instead.
                s.set_immediate(true)?;
            }
            if kind == zmq::PUB {
                s.set_sndhwm(0)?;
            }
            crate::curve::bind(&s, &ep).map_err(|e| sock_err("listen on", &ep, e))?;
            Ok(s)
        };
        Ok(Classic {
            src: bind(zmq::REP, Role::Sources)?,
            work: bind(zmq::PUSH, Role::Work)?,
            res: bind(zmq::REP, Role::Results)?,
            publ: bind(zmq::PUB, Role::Publish)?,
        })
    }

    /// Publishes one classic message (never blocks).
    pub fn publish(&self, tag: u8, value: i64) {
        let _ = self.publ.send(&encode(tag, value)[..], zmq::DONTWAIT);
    }

    /// Offers a number to classic workers; false if none is connected (or all are full).
    pub fn push(&self, value: i64) -> bool {
        self.work.send(&encode(NUMBER, value)[..], zmq::DONTWAIT).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_bytes_a_tag_and_a_big_endian_long() {
        assert_eq!(encode(b'n', 258), [b'n', 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(decode(&encode(b'p', -1)), Ok((b'p', -1)));
        assert!(decode(b"n1234567").unwrap_err().contains("9 bytes, not 8"));
        assert!(decode(b"n12345678x").unwrap_err().contains("not 10"));
        assert!(decode(b"x12345678").unwrap_err().contains("unknown tag"));
        assert_eq!(&JOB.to_be_bytes(), b"classic\0");
    }
}
