//! A worker: takes work items from the broker (credit DEALER, or PULL for plain PUSH),
//! tests each number, and returns the primes over REQ, waiting for the broker's answer
//! (resending on a timeout; the broker counts a result once).
//!
//! Every hello and heartbeat carries the worker's load ([`crate::load`]). Under
//! `--dispatch load`, a worker holding more than its load allows hands the items it has
//! not started back to the broker (sender-initiated distribution), and forgets one only
//! when the broker confirms (`Taken`); an item not confirmed in time is tested here after
//! all (a copy tested twice is counted once).
//!
//! Given a broker pair (`--broker PRIMARY,BACKUP`), a worker whose broker falls silent
//! turns to the next address and says hello there (Binary Star).

use crate::broker::Dispatch;
use crate::endpoint::{Brokers, Role};
use crate::load::{self, Load, Meter};
use crate::prime::is_prime;
use crate::util::{self, sock_err};
use crate::wire::{Msg, Values};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub addr: Brokers,
    pub dispatch: Dispatch,
    pub id: u64,
    /// How many items the worker holds at once (one being tested, the rest waiting), so
    /// it never sits idle waiting for the next one.
    pub credit: u32,
    pub heartbeat: Duration,
    /// The broker silent this long: reconnect and say Ready again.
    pub liveness: Duration,
    /// How long to wait for the broker to take a result before resending it.
    pub result_timeout: Duration,
    /// Run every test this many times (1 = normal; 3 = a worker three times slower, for
    /// the dispatch benchmark).
    pub slow: u32,
    /// For tests and demonstrations: answer wrongly with this probability (a prime left
    /// out, or a number that is not prime put in).
    pub faulty: f64,
    /// For tests: after this many items, report this CPU share instead of the measured
    /// one (a load that comes at a known moment, whatever else the machine runs).
    pub test_share_after: Option<(u64, u16)>,
}

impl WorkerConfig {
    pub fn new(addr: impl Into<Brokers>) -> WorkerConfig {
        WorkerConfig {
            addr: addr.into(),
            dispatch: Dispatch::Credit,
            id: util::random_u64(),
            credit: 2,
            heartbeat: Duration::from_millis(500),
            liveness: Duration::from_millis(2500),
            result_timeout: Duration::from_secs(2),
            slow: 1,
            faulty: 0.0,
            test_share_after: None,
        }
    }
}

pub struct Worker<'a> {
    ctx: &'a zmq::Context,
    cfg: WorkerConfig,
    /// Which broker of the list it uses (counting round the list).
    at: usize,
    work: zmq::Socket,
    res: zmq::Socket,
    queue: VecDeque<(u64, Values)>,
    /// Items handed back and not yet confirmed, with when to test them here after all.
    offered: Vec<(u64, Values, Instant)>,
    meter: Meter,
    /// The load last told to the broker.
    told: Load,
    pub handed_back: u64,
    items: u64,
    /// The last result sent and not yet answered, with when to resend it.
    unanswered: Option<(Vec<u8>, Instant)>,
    last_heard: Instant,
    last_sent: Instant,
    pub tested: u64,
}

impl<'a> Worker<'a> {
    pub fn connect(ctx: &'a zmq::Context, cfg: WorkerConfig) -> anyhow::Result<Worker<'a>> {
        let work = work_socket(ctx, &cfg, 0)?;
        let res = result_socket(ctx, &cfg, 0)?;
        let now = Instant::now();
        let mut w = Worker {
            ctx,
            cfg,
            at: 0,
            work,
            res,
            queue: VecDeque::new(),
            offered: Vec::new(),
            meter: Meter::new(),
            told: Load::default(),
            handed_back: 0,
            items: 0,
            unanswered: None,
            last_heard: now,
            last_sent: now,
            tested: 0,
        };
        w.hello()?;
        Ok(w)
    }

    fn hello(&mut self) -> anyhow::Result<()> {
        if self.cfg.dispatch.pulls() {
            self.queue.clear();
            self.offered.clear();
            self.told = self.meter.sample(0);
            let ready = Msg::Ready { worker: self.cfg.id, credit: self.cfg.credit, load: self.told };
            self.work.send(ready.encode(), 0)?;
            self.last_sent = Instant::now();
            self.last_heard = Instant::now();
        }
        Ok(())
    }

    /// Works until the stop flag is set.
    pub fn run(&mut self) -> anyhow::Result<()> {
        while !util::stopping() {
            if self.queue.is_empty() {
                // Idle: nothing to overlap the answer with.
                self.await_answer()?;
            }
            let wait = if self.queue.is_empty() { self.cfg.heartbeat.as_millis() as i64 } else { 0 };
            match self.work.poll(zmq::POLLIN, wait) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            self.drain()?;
            self.reclaim(Instant::now());
            if let Some((work, values)) = self.queue.pop_front() {
                let primes = self.test(&values);
                self.send_result(work, primes)?;
                if self.cfg.dispatch == Dispatch::Load {
                    self.shed()?;
                }
            }
            self.keep_alive()?;
        }
        Ok(())
    }

    fn test(&mut self, values: &Values) -> Values {
        let mut primes = Vec::new();
        for n in values.iter() {
            let mut p = false;
            for _ in 0..self.cfg.slow.max(1) {
                p = std::hint::black_box(is_prime(std::hint::black_box(n)));
            }
            if p {
                primes.push(n);
            }
        }
        self.tested += values.len() as u64;
        if self.cfg.faulty > 0.0 && (util::random_u64() as f64 / u64::MAX as f64) < self.cfg.faulty {
            // A random fault, so two faulty workers rarely agree on a wrong answer.
            let r = util::random_u64() as usize;
            match primes.len() {
                0 => primes.push(values.iter().next().unwrap_or(4)),
                n => {
                    primes.remove(r % n);
                }
            }
        }
        Values::from_slice(&primes)
    }

    fn held(&self) -> usize {
        self.queue.len() + self.offered.len()
    }

    /// Under load dispatch, after each item: tell the broker at once when the load changes
    /// what this worker should hold, and hand back the items beyond that, newest first.
    fn shed(&mut self) -> anyhow::Result<()> {
        self.drain()?;
        self.items += 1;
        let mut load = self.meter.sample(self.held());
        if let Some((after, share)) = self.cfg.test_share_after {
            if self.items >= after {
                load.cpu_share = share;
            }
        }
        let cap = load::capacity(self.cfg.credit, &load) as usize;
        if cap != load::capacity(self.cfg.credit, &self.told) as usize {
            self.beat(load);
        }
        let now = Instant::now();
        while self.queue.len() > cap {
            let (work, values) = self.queue.pop_back().expect("longer than cap");
            self.work.send(Msg::Back { worker: self.cfg.id, work }.encode(), zmq::DONTWAIT).ok();
            self.offered.push((work, values, now + self.cfg.result_timeout));
            tracing::debug!(work, cpu_share = load.cpu_share, "overloaded: handing an item back");
        }
        Ok(())
    }

    /// Items handed back that the broker did not confirm in time are tested here.
    fn reclaim(&mut self, now: Instant) {
        if !self.queue.is_empty() {
            return;
        }
        while let Some(i) = self.offered.iter().position(|o| o.2 <= now) {
            let (work, values, _) = self.offered.swap_remove(i);
            tracing::debug!(work, "hand-back not confirmed; testing it here");
            self.queue.push_back((work, values));
        }
    }

    fn beat(&mut self, load: Load) {
        self.work.send(Msg::Heartbeat { worker: self.cfg.id, load }.encode(), zmq::DONTWAIT).ok();
        self.told = load;
        self.last_sent = Instant::now();
    }

    fn drain(&mut self) -> anyhow::Result<()> {
        loop {
            let body = match self.work.recv_msg(zmq::DONTWAIT) {
                Ok(b) => b,
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            self.last_heard = Instant::now();
            match Msg::decode(&body) {
                Ok(Msg::Work { work, values, .. }) => self.queue.push_back((work, values)),
                Ok(Msg::Heartbeat { .. }) => {}
                Ok(Msg::Taken { work }) => {
                    if let Some(i) = self.offered.iter().position(|o| o.0 == work) {
                        self.offered.swap_remove(i);
                        self.handed_back += 1;
                    }
                }
                Ok(Msg::Ready { .. }) => {
                    tracing::warn!("the broker does not know this worker (it restarted?); saying hello again");
                    self.hello()?;
                }
                Ok(_) => tracing::warn!("unexpected message on the work socket; dropped"),
                Err(e) => tracing::warn!("malformed work message dropped: {e}"),
            }
        }
    }

    /// Sends a result; the broker's answer is awaited only before the next result (a REQ
    /// socket allows one request at a time), so testing the next item overlaps the round
    /// trip.
    fn send_result(&mut self, work: u64, primes: Values) -> anyhow::Result<()> {
        self.await_answer()?;
        let msg = Msg::Result { worker: self.cfg.id, work, primes }.encode();
        self.res.send(&msg, 0)?;
        self.unanswered = Some((msg, Instant::now() + self.cfg.result_timeout));
        Ok(())
    }

    /// Lazy Pirate on the result socket: wait for the broker's answer to the last result;
    /// on a timeout, drop the socket (a REQ socket cannot send twice) and resend on a new
    /// one. The broker counts a result once, however often it arrives.
    fn await_answer(&mut self) -> anyhow::Result<()> {
        while let Some((msg, deadline)) = &self.unanswered {
            if util::stopping() {
                return Ok(());
            }
            if self.res.poll(zmq::POLLIN, 50).unwrap_or(0) > 0 {
                let reply = self.res.recv_bytes(0)?;
                if let Ok(Msg::Error { reason }) = Msg::decode(&reply) {
                    tracing::warn!("broker refused a result: {reason}");
                }
                self.unanswered = None;
            } else if Instant::now() > *deadline {
                tracing::warn!("broker did not take a result in {:?}; resending", self.cfg.result_timeout);
                let msg = msg.clone();
                self.res = result_socket(self.ctx, &self.cfg, self.at)?;
                self.res.send(&msg, 0)?;
                self.unanswered = Some((msg, Instant::now() + self.cfg.result_timeout));
            } else {
                // A worker waiting on the broker is alive; keep saying so.
                self.keep_alive()?;
            }
        }
        Ok(())
    }

    fn keep_alive(&mut self) -> anyhow::Result<()> {
        if !self.cfg.dispatch.pulls() {
            return Ok(());
        }
        let now = Instant::now();
        if now.duration_since(self.last_heard) > self.cfg.liveness {
            if self.cfg.addr.len() > 1 {
                self.at += 1;
                let next = self.cfg.addr.get(self.at);
                tracing::warn!("broker silent for {:?}; turning to {next}", self.cfg.liveness);
                self.res = result_socket(self.ctx, &self.cfg, self.at)?;
                if let Some((msg, _)) = &self.unanswered {
                    // The result goes to the broker now in use (which counts it once).
                    self.res.send(msg, 0)?;
                }
            } else {
                tracing::warn!("broker silent for {:?}; reconnecting", self.cfg.liveness);
            }
            self.work = work_socket(self.ctx, &self.cfg, self.at)?;
            self.hello()?;
        } else if now.duration_since(self.last_sent) >= self.cfg.heartbeat {
            let load = self.meter.sample(self.held());
            self.beat(load);
        }
        Ok(())
    }
}

fn work_socket(ctx: &zmq::Context, cfg: &WorkerConfig, at: usize) -> anyhow::Result<zmq::Socket> {
    let ep = cfg.addr.get(at).endpoint(Role::Work);
    let s = util::socket(
        ctx,
        match cfg.dispatch {
            Dispatch::Credit | Dispatch::Load => zmq::DEALER,
            Dispatch::Push => zmq::PULL,
        },
    )?;
    if cfg.dispatch == Dispatch::Push {
        // Hold little in the pipe, as in the original example; PUSH still deals items out
        // round-robin without looking at who is busy.
        s.set_rcvhwm(1)?;
    }
    crate::curve::connect(&s, &ep).map_err(|e| sock_err("connect to", &ep, e))?;
    Ok(s)
}

fn result_socket(ctx: &zmq::Context, cfg: &WorkerConfig, at: usize) -> anyhow::Result<zmq::Socket> {
    let ep = cfg.addr.get(at).endpoint(Role::Results);
    let s = util::socket(ctx, zmq::REQ)?;
    crate::curve::connect(&s, &ep).map_err(|e| sock_err("connect to", &ep, e))?;
    Ok(s)
}
