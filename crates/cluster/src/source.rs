//! A source: sends batches of numbers to the broker over REQ and waits for each
//! acknowledgement. On a timeout it drops the socket and resends the same request on a
//! new one (Lazy Pirate); the request's (source, seq) lets the broker recognise the
//! resend, so nothing is queued or published twice. Given a broker pair, it resends to
//! the next address of the list (Binary Star): the backup takes over when the primary is
//! silent and a client turns to it.

use crate::endpoint::{Brokers, Role};
use crate::util;
use crate::wire::{Msg, Values};
use std::time::{Duration, Instant};

pub struct Source<'a> {
    ctx: &'a zmq::Context,
    brokers: Brokers,
    /// Which of `brokers` is in use (counting round the list).
    at: usize,
    endpoint: String,
    sock: zmq::Socket,
    /// How many times it turned to another broker of the list.
    pub switches: u64,
    pub id: u64,
    seq: u64,
    pub timeout: Duration,
    /// Resends before giving up; None = forever (until the stop flag).
    pub retries: Option<u32>,
    /// How many different workers test each batch submitted (see `vote`).
    pub replicas: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("broker at {endpoint} did not answer after {tries} tries")]
    NoAnswer { endpoint: String, tries: u32 },
    #[error("broker refused the request: {0}")]
    Refused(String),
    #[error("stopped")]
    Stopped,
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: zmq::Error },
    #[error(transparent)]
    Zmq(#[from] zmq::Error),
}

impl<'a> Source<'a> {
    pub fn connect(ctx: &'a zmq::Context, brokers: impl Into<Brokers>) -> anyhow::Result<Source<'a>> {
        let brokers = brokers.into();
        let endpoint = brokers.get(0).endpoint(Role::Sources);
        let sock = Self::open(ctx, &endpoint)?;
        Ok(Source {
            ctx,
            brokers,
            at: 0,
            endpoint,
            sock,
            switches: 0,
            id: util::random_u64(),
            seq: 0,
            timeout: Duration::from_millis(2500),
            retries: Some(3),
            replicas: 1,
        })
    }

    fn open(ctx: &zmq::Context, endpoint: &str) -> Result<zmq::Socket, SourceError> {
        let s = ctx.socket(zmq::REQ)?;
        s.set_linger(0)?;
        crate::curve::connect(&s, endpoint)
            .map_err(|source| SourceError::Connect { endpoint: endpoint.to_string(), source })?;
        Ok(s)
    }

    pub fn submit(&mut self, job: u64, batch: u32, values: &[i64]) -> Result<(), SourceError> {
        self.seq += 1;
        let values = Values::from_slice(values);
        let msg = Msg::Submit { source: self.id, seq: self.seq, job, batch, replicas: self.replicas, values };
        self.request(&msg.encode())
    }

    /// Tells the broker to give `worker` no more work (the voter found it wrong).
    pub fn ban(&mut self, worker: u64) -> Result<(), SourceError> {
        self.seq += 1;
        self.request(&Msg::Ban { source: self.id, seq: self.seq, worker }.encode())
    }

    /// Asks the broker to publish `h` + nonce: once a subscriber sees it, its
    /// subscription is in place and nothing published later is missed.
    pub fn ping(&mut self, nonce: u64) -> Result<(), SourceError> {
        self.seq += 1;
        self.request(&Msg::Ping { source: self.id, seq: self.seq, nonce }.encode())
    }

    /// Pings until the broker's `h` answer comes back on `sub` (which subscribes to `h` +
    /// `nonce`): from then on `sub` misses nothing the broker publishes. (A SUB socket
    /// drops what is published before its subscription reaches the publisher.)
    pub fn wait_subscribed(&mut self, sub: &zmq::Socket, nonce: u64) -> Result<(), SourceError> {
        loop {
            self.ping(nonce)?;
            if sub.poll(zmq::POLLIN, 100)? > 0
                && matches!(Msg::decode(&sub.recv_bytes(0)?), Ok(Msg::Hello { nonce: n, .. }) if n == nonce)
            {
                return Ok(());
            }
        }
    }

    fn request(&mut self, body: &[u8]) -> Result<(), SourceError> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            self.sock.send(body, 0)?;
            let deadline = Instant::now() + self.timeout;
            while Instant::now() < deadline {
                if util::stopping() {
                    return Err(SourceError::Stopped);
                }
                let left = deadline.saturating_duration_since(Instant::now()).as_millis().clamp(1, 200) as i64;
                if self.sock.poll(zmq::POLLIN, left).unwrap_or(0) == 0 {
                    continue;
                }
                let reply = self.sock.recv_bytes(0)?;
                return match Msg::decode(&reply) {
                    Ok(Msg::Ack { seq }) if seq == self.seq => Ok(()),
                    Ok(Msg::Error { reason }) => Err(SourceError::Refused(reason)),
                    other => Err(SourceError::Refused(format!("unexpected answer {other:?}"))),
                };
            }
            if self.retries.is_some_and(|r| tries > r) {
                return Err(SourceError::NoAnswer { endpoint: self.endpoint.clone(), tries });
            }
            if self.brokers.len() > 1 {
                self.at += 1;
                self.switches += 1;
                let next = self.brokers.get(self.at);
                tracing::warn!(tries, "broker did not acknowledge in {:?}; turning to {next}", self.timeout);
                self.endpoint = next.endpoint(Role::Sources);
            } else {
                tracing::warn!(tries, "broker did not acknowledge in {:?}; resending", self.timeout);
            }
            self.sock = Self::open(self.ctx, &self.endpoint)?;
        }
    }
}
