//! The broker: takes numbers from sources (ROUTER, answering REQ), hands them to workers
//! (credit-based ROUTER, or plain PUSH), takes results (ROUTER, answering REQ) and
//! publishes numbers (`n`), primes (`p`) and completions (`d`) on a PUB socket.
//! One thread, one poll loop; the bookkeeping is [`Dispatcher`].
//!
//! A broker may be one of a Binary Star pair (`--backup-of`, `--backup`; [`crate::bstar`]):
//! it tells its peer its state every heartbeat over the peer's sources socket, and serves
//! clients only while active. A broker that becomes passive forgets what it held (the
//! sources resubmit, the workers say hello to the other).

use crate::bstar::{Bstar, Change, State};
use crate::dispatch::{Dispatcher, Stats, Submitted};
use crate::endpoint::{BrokerAddr, Role};
use crate::util::{self, sock_err};
use crate::wire::{Load, Msg};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dispatch {
    /// Workers say how much they can take (pull); idle workers are served first.
    Credit,
    /// Plain round-robin PUSH, as in the original design (for comparison).
    Push,
    /// Credit that follows each worker's reported load (CPU share, memory pressure); an
    /// overloaded worker hands back what it has not started.
    Load,
}

impl Dispatch {
    /// Workers pull over a DEALER/ROUTER pair and heartbeat (credit and load).
    pub fn pulls(self) -> bool {
        self != Dispatch::Push
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub addr: BrokerAddr,
    pub dispatch: Dispatch,
    pub heartbeat: Duration,
    /// A worker silent this long is dead.
    pub liveness: Duration,
    /// Push mode: an item not done this long after it was pushed is pushed again.
    pub redispatch: Duration,
    /// For tests only: publish nothing of every K-th publication (its number is used).
    pub test_drop_every: Option<u64>,
    /// The lecture's 9-byte endpoints too (`--classic ADDR`, see `classic`).
    pub classic: Option<BrokerAddr>,
    /// Also listen at this `inproc://` name (workers in the broker's process).
    pub inproc: Option<String>,
    /// Kept up to date at every heartbeat (`--metrics`).
    pub metrics: Option<std::sync::Arc<crate::metrics::BrokerMetrics>>,
    /// One of a Binary Star pair: this broker's role and its peer's address.
    pub pair: Option<(crate::bstar::Role, BrokerAddr)>,
}

impl BrokerConfig {
    pub fn new(addr: BrokerAddr) -> BrokerConfig {
        BrokerConfig {
            addr,
            dispatch: Dispatch::Credit,
            heartbeat: Duration::from_millis(500),
            liveness: Duration::from_millis(2500),
            redispatch: Duration::from_secs(30),
            test_drop_every: None,
            classic: None,
            inproc: None,
            metrics: None,
            pair: None,
        }
    }
}

/// Publication streams whose numbers are kept (three per job: numbers, primes, done).
const STREAMS: usize = 100_000;

pub struct Broker {
    cfg: BrokerConfig,
    src: zmq::Socket,
    work: zmq::Socket,
    res: zmq::Socket,
    publ: zmq::Socket,
    d: Dispatcher,
    /// The next sequence number of each publication stream (tag and job), for the
    /// newest streams.
    seqs: lru::LruCache<(u8, u64), u64>,
    published: u64,
    classic: Option<crate::classic::Classic>,
    /// Classic numbers received so far (each is one item of the job `classic::JOB`).
    classic_numbers: u32,
    /// Binary Star: the pair's state machine, and a DEALER to the peer's sources socket
    /// (none for a broker started alone that a backup found: it only answers).
    bstar: Option<(Bstar, Option<zmq::Socket>)>,
}

/// A peer silent for this many heartbeats is presumed dead.
const PEER_EXPIRY_BEATS: u32 = 3;

fn peer_expiry(cfg: &BrokerConfig) -> Duration {
    cfg.heartbeat * PEER_EXPIRY_BEATS
}

fn new_dispatcher(cfg: &BrokerConfig) -> Dispatcher {
    // A random start, 2^56 numbers apart at most: see `numbering_from`.
    let mut d = Dispatcher::new(cfg.liveness, cfg.redispatch).numbering_from(util::random_u64() >> 8);
    d.load_aware = cfg.dispatch == Dispatch::Load;
    d
}

impl Broker {
    /// Binds the four sockets; a port in use or a bad address fails here, with the
    /// endpoint named.
    pub fn bind(ctx: &zmq::Context, cfg: BrokerConfig) -> anyhow::Result<Broker> {
        let bind = |kind, role| -> anyhow::Result<zmq::Socket> {
            let s = util::socket(ctx, kind)?;
            let ep = cfg.addr.endpoint(role);
            if kind == zmq::ROUTER {
                s.set_router_mandatory(true)?;
            }
            if kind == zmq::PUB {
                // Never drop published results for a slow subscriber: spool watchers
                // bound what they have in flight, so memory stays bounded.
                s.set_sndhwm(0)?;
            }
            if let Some(path) = ep.strip_prefix("ipc://") {
                // Binding ipc:// silently replaces a live socket file: refuse instead.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    anyhow::bail!("cannot listen on {ep}: another process is listening there");
                }
            }
            crate::curve::bind(&s, &ep).map_err(|e| sock_err("listen on", &ep, e))?;
            if let Some(name) = &cfg.inproc {
                let ep = BrokerAddr::Inproc { name: name.clone() }.endpoint(role);
                crate::curve::bind(&s, &ep).map_err(|e| sock_err("listen on", &ep, e))?;
            }
            Ok(s)
        };
        let work_kind = match cfg.dispatch {
            Dispatch::Credit | Dispatch::Load => zmq::ROUTER,
            Dispatch::Push => zmq::PUSH,
        };
        Ok(Broker {
            src: bind(zmq::ROUTER, Role::Sources)?,
            work: bind(work_kind, Role::Work)?,
            res: bind(zmq::ROUTER, Role::Results)?,
            publ: bind(zmq::PUB, Role::Publish)?,
            d: new_dispatcher(&cfg),
            seqs: lru::LruCache::new(std::num::NonZeroUsize::new(STREAMS).expect("not zero")),
            published: 0,
            classic: match &cfg.classic {
                Some(a) => Some(crate::classic::Classic::bind(ctx, a)?),
                None => None,
            },
            classic_numbers: 0,
            bstar: match &cfg.pair {
                Some((role, peer)) => {
                    let s = util::socket(ctx, zmq::DEALER)?;
                    // Nothing queues for a peer that is down: a state told late is wrong.
                    s.set_immediate(true)?;
                    s.set_sndhwm(4)?;
                    let ep = peer.endpoint(Role::Sources);
                    crate::curve::connect(&s, &ep).map_err(|e| sock_err("connect to", &ep, e))?;
                    Some((Bstar::new(*role, peer_expiry(&cfg), Instant::now()), Some(s)))
                }
                None => None,
            },
            cfg,
        })
    }

    /// Whether this broker serves clients now (always, outside a pair).
    fn active(&self) -> bool {
        self.bstar.as_ref().is_none_or(|(b, _)| b.state() == State::Active)
    }

    /// A client's request: whether to serve it (a passive broker whose peer is silent
    /// takes over here, as Binary Star prescribes).
    fn admit(&mut self, now: Instant) -> anyhow::Result<bool> {
        let Some((b, _)) = self.bstar.as_mut() else { return Ok(true) };
        let (serve, change) = b.on_client(now);
        self.changed(change)?;
        Ok(serve)
    }

    fn on_peer(&mut self, state: u8, term: u64, now: Instant) -> anyhow::Result<()> {
        let Some(state) = State::from_code(state) else {
            tracing::warn!(state, "a peer state that is no state; ignored");
            return Ok(());
        };
        if self.bstar.is_none() {
            // Started alone (without --backup), found by a backup: from now on the
            // primary of a pair, active already. It answers its backup but cannot wait
            // for it when it starts; `--backup ADDR` gives it that.
            tracing::warn!("a backup broker follows this one: it is the active primary of a pair");
            self.bstar = Some((Bstar::serving(crate::bstar::Role::Primary, peer_expiry(&self.cfg), now), None));
        }
        let Some((b, _)) = self.bstar.as_mut() else { return Ok(()) };
        let change = b.on_peer(state, term, now);
        self.changed(change)
    }

    fn changed(&mut self, change: Change) -> anyhow::Result<()> {
        let term = self.bstar.as_ref().map_or(0, |(b, _)| b.term());
        match change {
            Change::None => {}
            Change::Active(why) => {
                tracing::warn!(term, "broker active: {why}");
            }
            Change::Passive(why) => {
                tracing::warn!(term, "broker passive: {why}; what it held is dropped");
                self.d = new_dispatcher(&self.cfg);
            }
            Change::Fatal(why) => {
                // Our state has just been sent to the peer (an answer goes out before its
                // request is taken in): give ZeroMQ's I/O thread a moment to deliver it,
                // so the peer finds the mistake too and exits, instead of serving alone.
                std::thread::sleep(Duration::from_millis(300));
                anyhow::bail!("broker pair misconfigured: {why}")
            }
        }
        Ok(())
    }

    /// Our state as told to the peer (none outside a pair).
    fn peer_state(&self) -> Option<Msg> {
        self.bstar.as_ref().map(|(b, _)| Msg::Peer { state: b.state().code(), term: b.term() })
    }

    /// Tells the peer our state; reads its answers.
    fn tell_peer(&mut self, now: Instant) -> anyhow::Result<()> {
        let (Some(mine), Some((_, Some(s)))) = (self.peer_state(), &self.bstar) else { return Ok(()) };
        let _ = s.send_multipart([&[][..], &mine.encode()], zmq::DONTWAIT);
        self.read_peer(now)
    }

    fn read_peer(&mut self, now: Instant) -> anyhow::Result<()> {
        loop {
            let Some((_, Some(s))) = &self.bstar else { return Ok(()) };
            let Some(parts) = recv(s)? else { return Ok(()) };
            match parts.as_slice() {
                [empty, body] if empty.is_empty() => match Msg::decode(body) {
                    Ok(Msg::Peer { state, term }) => self.on_peer(state, term, now)?,
                    Ok(_) | Err(_) => tracing::warn!("the peer broker answered something else than its state; dropped"),
                },
                _ => tracing::warn!("a malformed answer from the peer broker; dropped"),
            }
        }
    }

    /// Serves until the stop flag is set; returns the counters.
    pub fn run(mut self) -> anyhow::Result<Stats> {
        let mut next_beat = Instant::now();
        while !util::stopping() {
            let now = Instant::now();
            if self.active() {
                self.dispatch(now)?;
            }
            let push_blocked = self.cfg.dispatch == Dispatch::Push && self.d.queued() > 0;
            let timeout = next_beat.saturating_duration_since(now).as_millis() as i64;
            let mut items = vec![
                self.src.as_poll_item(zmq::POLLIN),
                self.res.as_poll_item(zmq::POLLIN),
                self.work.as_poll_item(match (self.cfg.dispatch, push_blocked) {
                    (Dispatch::Credit | Dispatch::Load, _) => zmq::POLLIN,
                    (Dispatch::Push, true) => zmq::POLLOUT,
                    (Dispatch::Push, false) => zmq::PollEvents::empty(),
                }),
            ];
            let polls_peer = matches!(&self.bstar, Some((_, Some(_))));
            if let Some((_, Some(peer))) = &self.bstar {
                items.push(peer.as_poll_item(zmq::POLLIN));
            }
            if let Some(c) = &self.classic {
                items.push(c.src.as_poll_item(zmq::POLLIN));
                items.push(c.res.as_poll_item(zmq::POLLIN));
            }
            match zmq::poll(&mut items, timeout.max(1)) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let (src_in, res_in, work_in) = (items[0].is_readable(), items[1].is_readable(), items[2].is_readable());
            let at = 3 + usize::from(polls_peer);
            let peer_in = polls_peer && items[3].is_readable();
            let classic_in =
                (items.get(at).is_some_and(|i| i.is_readable()), items.get(at + 1).is_some_and(|i| i.is_readable()));
            drop(items);
            if peer_in {
                self.read_peer(Instant::now())?;
            }
            if classic_in.0 {
                self.serve_classic(true)?;
            }
            if classic_in.1 {
                self.serve_classic(false)?;
            }
            let now = Instant::now();
            if res_in {
                self.serve_requests(Req::Results, now, Self::on_result)?;
            }
            if src_in {
                self.serve_requests(Req::Sources, now, Self::on_source)?;
            }
            if work_in && self.cfg.dispatch.pulls() {
                self.drain_workers(now)?;
            }
            if now >= next_beat {
                next_beat = now + self.cfg.heartbeat;
                self.tell_peer(now)?;
                if self.active() {
                    self.beat(now)?;
                }
            }
        }
        tracing::info!(stats = ?self.d.stats, "broker stopping");
        Ok(self.d.stats.clone())
    }

    fn dispatch(&mut self, now: Instant) -> anyhow::Result<()> {
        match self.cfg.dispatch {
            Dispatch::Credit | Dispatch::Load => {
                while let Some((route, id, item)) = self.d.next_credit(now) {
                    let msg = Msg::Work { work: id, job: item.job, batch: item.batch, values: item.values.clone() };
                    if self.work.send_multipart([route.as_slice(), &msg.encode()], zmq::DONTWAIT).is_err() {
                        // The worker's connection is gone (ROUTER_MANDATORY) or full.
                        self.d.unsend(id);
                        break;
                    }
                }
            }
            Dispatch::Push => {
                while let Some((id, item)) = self.d.next_push(now) {
                    let msg = Msg::Work { work: id, job: item.job, batch: item.batch, values: item.values.clone() };
                    if self.work.send(msg.encode(), zmq::DONTWAIT).is_err() {
                        self.d.unsend(id);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Numbers the publication in its stream, and sends it (unless the test switch
    /// drops it: the number is used all the same, so subscribers see the gap).
    fn publish(&mut self, mut m: Msg) -> anyhow::Result<()> {
        if let Some((key, _)) = m.stream() {
            let n = self.seqs.get(&key).copied().unwrap_or(0);
            self.seqs.put(key, n + 1);
            m.set_seq(n);
        }
        self.published += 1;
        if self.cfg.test_drop_every.is_some_and(|k| self.published.is_multiple_of(k)) {
            return Ok(());
        }
        self.publ.send(m.encode(), 0)?;
        Ok(())
    }

    /// Requests from REQ sockets (sources, or workers' results): [identity, "", body].
    /// Every request gets exactly one reply, an error for a malformed one, so the sender's
    /// REQ socket is never left waiting.
    fn serve_requests(&mut self, which: Req, now: Instant, handle: Handler) -> anyhow::Result<()> {
        for _ in 0..256 {
            let Some(parts) = recv(self.req_socket(which))? else { break };
            let Some((route, body)) = envelope(&parts) else {
                tracing::warn!("dropping a {} message without a REQ envelope", which.name());
                continue;
            };
            let reply = match Msg::decode(body) {
                Ok(Msg::Peer { state, term }) => {
                    // Our state answers it, told before the peer's is taken in: a pair set
                    // up wrong is then found by both (each exits with the reason).
                    let mine = self.peer_state();
                    if let Some(m) = &mine {
                        send_reply(self.req_socket(which), route, m);
                    }
                    self.on_peer(state, term, now)?;
                    if mine.is_none() {
                        if let Some(m) = self.peer_state() {
                            send_reply(self.req_socket(which), route, &m);
                        }
                    }
                    continue;
                }
                // A passive broker drops what clients send: they turn to the other.
                Ok(_) if !self.admit(now)? => continue,
                Ok(m) => handle(self, m, now)?,
                Err(e) => bad(format!("malformed {} message: {e}", which.name())),
            };
            send_reply(self.req_socket(which), route, &reply);
        }
        Ok(())
    }

    fn req_socket(&self, which: Req) -> &zmq::Socket {
        match which {
            Req::Sources => &self.src,
            Req::Results => &self.res,
        }
    }

    fn on_source(&mut self, m: Msg, _now: Instant) -> anyhow::Result<Msg> {
        Ok(match m {
            Msg::Ban { seq, worker, .. } => {
                tracing::warn!(
                    worker = format!("{worker:016x}"),
                    "a voter found this worker wrong: it gets no more work"
                );
                self.d.ban(worker);
                Msg::Ack { seq }
            }
            Msg::Submit { source, seq, job, batch, replicas, values } => {
                let item = crate::dispatch::Item { job, batch, values, replicas };
                let numbers = Msg::Numbers { job, seq: 0, batch, values: item.values.clone() };
                if let Submitted::Queued(_) = self.d.submit(source, seq, item) {
                    if let (Some(c), Msg::Numbers { values, .. }) = (&self.classic, &numbers) {
                        values.iter().for_each(|v| c.publish(crate::classic::NUMBER, v));
                    }
                    self.publish(numbers)?;
                }
                Msg::Ack { seq }
            }
            Msg::Ping { seq, nonce, .. } => {
                self.publish(Msg::Hello { nonce, seq: 0 })?;
                Msg::Ack { seq }
            }
            other => bad(format!("a source cannot send {}", kind(&other))),
        })
    }

    fn on_result(&mut self, m: Msg, now: Instant) -> anyhow::Result<Msg> {
        Ok(match m {
            Msg::Result { worker, work, primes } => {
                if let Some(done) = self.d.result(worker, work, now) {
                    let (job, batch) = (done.item.job, done.item.batch);
                    let found = primes.len() as u32;
                    if !primes.is_empty() {
                        if let Some(c) = &self.classic {
                            primes.iter().for_each(|p| c.publish(crate::classic::PRIME, p));
                        }
                        self.publish(Msg::Primes { job, seq: 0, batch, primes })?;
                    }
                    let count = done.item.values.len() as u32;
                    self.publish(Msg::Done { job, seq: 0, batch, count, primes: found, worker })?;
                }
                Msg::Taken { work }
            }
            other => bad(format!("a worker cannot send {} as a result", kind(&other))),
        })
    }

    /// The classic REP sockets: numbers from sources (`sources`), or primes from
    /// workers. Every request gets one reply: its own 9 bytes back, or `E` and a reason
    /// (the message is dropped).
    fn serve_classic(&mut self, sources: bool) -> anyhow::Result<()> {
        use crate::classic::{self, JOB, NUMBER, PRIME};
        for _ in 0..256 {
            let Some(c) = &self.classic else { return Ok(()) };
            let sock = if sources { &c.src } else { &c.res };
            let Ok(body) = sock.recv_bytes(zmq::DONTWAIT) else { break };
            let want = if sources { NUMBER } else { PRIME };
            let parsed = classic::decode(&body).and_then(|(t, v)| {
                if t == want {
                    Ok(v)
                } else {
                    Err(format!("this endpoint takes '{}' messages, not '{}'", want as char, t as char))
                }
            });
            let v = match parsed {
                Ok(v) => {
                    let _ = sock.send(&body[..], 0);
                    v
                }
                Err(reason) => {
                    tracing::warn!("malformed classic message dropped: {reason}");
                    let _ = sock.send(format!("E{reason}").as_bytes(), 0);
                    continue;
                }
            };
            if sources {
                c.publish(NUMBER, v);
                let batch = self.classic_numbers;
                self.classic_numbers = self.classic_numbers.wrapping_add(1);
                let values = crate::wire::Values::from_slice(&[v]);
                self.publish(Msg::Numbers { job: JOB, seq: 0, batch, values: values.clone() })?;
                // Tracked by our workers when there are any; else to classic workers
                // (untracked, as the notes' pipeline); with neither, queued for ours.
                let c = self.classic.as_ref().expect("checked");
                if self.d.workers() > 0 || !c.push(v) {
                    self.d.submit(
                        JOB,
                        u64::from(batch) + 1,
                        crate::dispatch::Item { job: JOB, batch, values, replicas: 1 },
                    );
                }
            } else {
                c.publish(PRIME, v);
                let primes = crate::wire::Values::from_slice(&[v]);
                self.publish(Msg::Primes { job: JOB, seq: 0, batch: u32::MAX, primes })?;
            }
        }
        Ok(())
    }

    /// Worker control over the credit ROUTER: [identity, body] from a DEALER.
    fn drain_workers(&mut self, now: Instant) -> anyhow::Result<()> {
        for _ in 0..256 {
            let Some(parts) = recv(&self.work)? else { break };
            let [route, body] = parts.as_slice() else {
                tracing::warn!(parts = parts.len(), "dropping a worker message with the wrong number of parts");
                continue;
            };
            if !self.admit(now)? {
                continue;
            }
            match Msg::decode(body) {
                Ok(Msg::Ready { worker, credit, load }) => {
                    tracing::info!(worker = format!("{worker:016x}"), credit, ?load, "worker ready");
                    self.d.ready(worker, route.to_vec(), credit, load, now);
                }
                Ok(Msg::Heartbeat { worker, load }) => {
                    tracing::debug!(worker = format!("{worker:016x}"), ?load, "worker heartbeat");
                    if !self.d.seen(worker, Some(load), now) {
                        // We declared it dead (or restarted): it must start over.
                        let again = Msg::Ready { worker, credit: 0, load: Load::default() }.encode();
                        let _ = self.work.send_multipart([&route[..], &again], zmq::DONTWAIT);
                    }
                }
                Ok(Msg::Back { worker, work }) => {
                    // Confirmed only when taken: until then the worker keeps the item.
                    if self.d.seen(worker, None, now) && self.d.hand_back(worker, work) {
                        tracing::debug!(worker = format!("{worker:016x}"), work, "item handed back");
                        let taken = Msg::Taken { work }.encode();
                        let _ = self.work.send_multipart([&route[..], &taken], zmq::DONTWAIT);
                    }
                }
                Ok(other) => tracing::warn!("a worker cannot send {} here; dropped", kind(&other)),
                Err(e) => tracing::warn!("malformed worker message dropped: {e}"),
            }
        }
        Ok(())
    }

    fn beat(&mut self, now: Instant) -> anyhow::Result<()> {
        if let Some(m) = &self.cfg.metrics {
            m.update(&self.d.stats);
            m.workers.set(self.d.workers() as i64);
            m.queued.set(self.d.queued() as i64);
            m.outstanding.set(self.d.outstanding() as i64);
            m.banned.set(self.d.banned() as i64);
            m.published.inc_by(self.published.saturating_sub(m.published.get()));
        }
        let dead = self.d.expire(now, self.cfg.dispatch == Dispatch::Push);
        for w in dead {
            tracing::warn!(worker = format!("{w:016x}"), "worker stopped answering; its work goes to others");
        }
        if self.cfg.dispatch.pulls() {
            let beat = Msg::Heartbeat { worker: 0, load: Load::default() }.encode();
            let routes: Vec<Vec<u8>> = self.d.routes().map(|r| r.to_vec()).collect();
            for r in routes {
                let _ = self.work.send_multipart([r.as_slice(), &beat], zmq::DONTWAIT);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Req {
    Sources,
    Results,
}

impl Req {
    fn name(self) -> &'static str {
        match self {
            Req::Sources => "source",
            Req::Results => "result",
        }
    }
}

type Handler = fn(&mut Broker, Msg, Instant) -> anyhow::Result<Msg>;

fn bad(reason: String) -> Msg {
    tracing::warn!("{reason}");
    Msg::Error { reason }
}

fn kind(m: &Msg) -> String {
    let b = m.encode();
    format!("a '{}' message", b[0] as char)
}

/// One multipart message, if one is waiting; the parts stay zmq's buffers (no copy).
fn recv(s: &zmq::Socket) -> anyhow::Result<Option<Vec<zmq::Message>>> {
    let mut parts = Vec::with_capacity(3);
    loop {
        match s.recv_msg(zmq::DONTWAIT) {
            Ok(m) => parts.push(m),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) if parts.is_empty() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        if !s.get_rcvmore()? {
            return Ok(Some(parts));
        }
    }
}

/// Splits a REQ envelope as a ROUTER sees it: [identity, "", body].
fn envelope(parts: &[zmq::Message]) -> Option<(&[u8], &[u8])> {
    match parts {
        [route, empty, body] if empty.is_empty() => Some((&route[..], &body[..])),
        _ => None,
    }
}

fn send_reply(s: &zmq::Socket, route: &[u8], m: &Msg) {
    // A peer that went away cannot be answered; its REQ retry will be.
    let _ = s.send_multipart([route, &[][..], &m.encode()], zmq::DONTWAIT);
}
