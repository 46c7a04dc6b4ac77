//! `cluster node`: runs Raymond's algorithm ([`crate::mutex::raymond`]) between the nodes
//! of a configured tree over ZeroMQ, one token per lease key, and hands leases to local
//! clients (mounts, spool watchers) that connect to it.
//!
//! Sockets: each node binds a ROUTER at its address; a child connects a DEALER (identity
//! `n<ID>`) to its parent's ROUTER; clients connect DEALERs (identity `c<random>`) to
//! their node's ROUTER. Every node-to-node message carries the sender's Lamport time and
//! vector clock.
//!
//! Raymond with `--peers` (graph mode, [`graph`]): the nodes name their neighbours in
//! any connected graph, and echo waves find the tree, rebuild it when a node dies or
//! joins, and gather `cluster status`.
//!
//! Failures (with `--parent`): neighbours beat every `heartbeat`; one silent for `liveness` is dead. A dead
//! child toward which a token lay is replaced: the token is regenerated here with a new
//! fencing epoch (see `Raymond::neighbour_died`), and the event is logged and counted. A
//! dead parent cannot be replaced safely: requests wait for it to return. A client silent
//! for `liveness` (a mount that died) loses its leases, which pass on.

mod graph;

use crate::clock::{Lamport, NodeId, VectorClock, VectorStamp};
use crate::mutex::raymond::{Action, Fence, Message, Raymond};
use crate::mutex::{Algorithm, PeerMsg, Peered};
use crate::protocol::Out;
use crate::util::{self, sock_err};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Everything that crosses a node's sockets (bincode, through [`encode`]/[`decode`]).
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Wire {
    /// `boot` is random per process start: a child that restarted lost its state.
    Peer {
        from: NodeId,
        boot: u64,
        lamport: u64,
        vector: Vec<(NodeId, u64)>,
        body: PeerBody,
    },
    /// Client -> node.
    Acquire {
        key: Vec<u8>,
        wait: bool,
    },
    Release {
        key: Vec<u8>,
    },
    ClientBeat,
    Status,
    /// Node -> client.
    Granted {
        key: Vec<u8>,
        fence: Fence,
    },
    Busy {
        key: Vec<u8>,
    },
    StatusText {
        text: String,
    },
    NodeBeat,
    /// Client -> node: the log of grants and releases, for `cluster lease audit`.
    Audit,
    /// Node -> client: the newest events of the log (as many as one message carries).
    AuditLog {
        events: Vec<crate::audit::Event>,
    },
    /// Client -> node: start a wave that gathers every reachable node's state (answered
    /// with `StatusText`).
    StatusWave,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum PeerBody {
    Beat,
    /// Raymond's messages.
    Token {
        key: Vec<u8>,
        msg: Message,
    },
    /// The other algorithms' messages (`--mutex` and `--peers`).
    Peer {
        key: Vec<u8>,
        msg: PeerMsg,
    },
    /// Raymond's messages on a tree found by waves, with the tree's epoch (a message of
    /// an older tree is dropped).
    TreeToken {
        tree: u64,
        key: Vec<u8>,
        msg: Message,
    },
    /// The echo algorithm's messages.
    Wave(crate::echo::Msg<crate::tree::NodeState, crate::tree::Decision>),
}

const LIMIT: usize = 1 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

pub fn encode(w: &Wire) -> Vec<u8> {
    bincode::encode_to_vec(w, config()).expect("encoding to a Vec cannot fail")
}

pub fn decode(b: &[u8]) -> Result<Wire, String> {
    match bincode::decode_from_slice(b, config()) {
        Ok((w, n)) if n == b.len() => Ok(w),
        Ok(_) => Err("trailing bytes".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A node address: `HOST:PORT` (TCP) or a path (`ipc://`).
pub fn endpoint(addr: &str) -> anyhow::Result<String> {
    let a = addr.trim();
    if a.starts_with("tcp://") || a.starts_with("ipc://") {
        return Ok(a.to_string());
    }
    if a.contains('/') {
        return Ok(format!("ipc://{a}"));
    }
    let (host, port) =
        a.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("node address {a:?}: want HOST:PORT or a path"))?;
    let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("node address {a:?}: the port is not a number"))?;
    use std::net::ToSocketAddrs;
    let ip = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut i| i.next())
        .ok_or_else(|| anyhow::anyhow!("node address {a:?}: cannot resolve the host"))?;
    Ok(format!("tcp://{ip}"))
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: String,
    /// The parent's address, and its id if known (else it is learnt from the parent's
    /// first message).
    pub parent: Option<(Option<NodeId>, String)>,
    pub heartbeat: Duration,
    pub liveness: Duration,
    /// The algorithm; all but Raymond run among `peers` (every other member, by id and
    /// address), Raymond on the tree `parent` gives.
    pub mutex: Algorithm,
    pub peers: Vec<(NodeId, String)>,
}

struct Neighbour {
    route: Vec<u8>,
    boot: u64,
    last_seen: Instant,
    alive: bool,
}

#[derive(Default)]
struct Lease {
    holder: Option<(Vec<u8>, Fence)>,
    /// Local clients waiting, in arrival order.
    waiters: VecDeque<Vec<u8>>,
}

/// Counters shown by `cluster lease status` and used by the benchmark.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub token_messages: u64,
    pub grants: u64,
    pub regenerated: u64,
    pub dead_neighbours: u64,
    /// Messages from nodes of another algorithm (or not members), dropped.
    pub foreign: u64,
    /// Waves started here, trees rebuilt, token messages of an older tree dropped.
    pub waves: u64,
    pub rebuilds: u64,
    pub stale: u64,
}

/// What `cluster node --metrics` publishes, refreshed at every beat.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub counters: Counters,
    /// Leases a local client holds now, and local clients waiting for one.
    pub leases_held: u64,
    pub waiters: u64,
    /// Local clients (mounts, spool watchers) heard from within `liveness`.
    pub clients: u64,
    /// Tree neighbours (parent and children) alive.
    pub neighbours_alive: u64,
    pub lamport: u64,
}

pub struct Node {
    /// Where `figures()` goes at every beat, when someone reads it (`--metrics`).
    pub published: Option<std::sync::Arc<std::sync::Mutex<Figures>>>,
    cfg: NodeConfig,
    boot: u64,
    /// The parent's id and address, once known.
    parent: Option<(NodeId, String)>,
    router: zmq::Socket,
    up: Option<zmq::Socket>,
    parent_seen: Instant,
    parent_alive: bool,
    children: BTreeMap<NodeId, Neighbour>,
    clients: HashMap<Vec<u8>, Instant>,
    tokens: HashMap<Vec<u8>, Raymond>,
    /// The peer algorithms' state per key, and a DEALER to each peer.
    peered: HashMap<Vec<u8>, Peered>,
    dealers: BTreeMap<NodeId, zmq::Socket>,
    members: Vec<NodeId>,
    /// Peers never heard from within `liveness` of our start, declared down.
    absent: std::collections::BTreeSet<NodeId>,
    started: Instant,
    leases: HashMap<Vec<u8>, Lease>,
    lamport: Lamport,
    vector: VectorClock,
    /// Every grant and release to a client, stamped with vector time (newest kept).
    log: VecDeque<crate::audit::Event>,
    log_seq: u64,
    pub counters: Counters,
    /// Raymond with `--peers`: the tree from echo waves.
    graph: Option<graph::Graph>,
}

/// Events of the audit log kept, and sent in one answer (well under the 1 MiB limit).
const LOG_KEPT: usize = 100_000;
const LOG_SENT: usize = 8_000;
/// How often a ring's idle tokens move on (milliseconds).
const RING_TICK_MS: i64 = 2;

impl Node {
    pub fn bind(ctx: &zmq::Context, cfg: NodeConfig) -> anyhow::Result<Node> {
        let router = util::socket(ctx, zmq::ROUTER)?;
        let ep = endpoint(&cfg.listen)?;
        if let Some(path) = ep.strip_prefix("ipc://") {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("cannot listen on {ep}: another process is listening there");
            }
        }
        // A child that restarts reconnects under the same identity and takes its route over.
        router.set_router_handover(true)?;
        let boot = util::random_u64();
        crate::curve::bind(&router, &ep).map_err(|e| sock_err("listen on", &ep, e))?;
        let (up, parent) = match &cfg.parent {
            Some((pid, addr)) => {
                let ep = endpoint(addr)?;
                let s = util::socket(ctx, zmq::DEALER)?;
                s.set_identity(format!("n{}", cfg.id).as_bytes())?;
                crate::curve::connect(&s, &ep).map_err(|e| sock_err("connect to", &ep, e))?;
                let pid = match pid {
                    Some(p) => *p,
                    None => learn_parent_id(&s, &cfg, boot)?,
                };
                anyhow::ensure!(pid != cfg.id, "the parent at {addr} has our own id {pid}");
                (Some(s), Some((pid, addr.clone())))
            }
            None => (None, None),
        };
        let mut dealers = BTreeMap::new();
        let mut members: Vec<NodeId> = cfg.peers.iter().map(|p| p.0).collect();
        members.push(cfg.id);
        members.sort_unstable();
        let graph = cfg.mutex == Algorithm::Raymond && !cfg.peers.is_empty();
        if cfg.mutex != Algorithm::Raymond || graph {
            anyhow::ensure!(
                cfg.parent.is_none(),
                "--parent is for raymond; --mutex {} takes --peers",
                cfg.mutex.name()
            );
            anyhow::ensure!(
                members.windows(2).all(|w| w[0] != w[1]),
                "--peers names node {} twice (or this node's own id)",
                members.windows(2).find(|w| w[0] == w[1]).map_or(0, |w| w[0])
            );
            // The structure the algorithm needs (Maekawa's grid) is checked once here.
            if !graph {
                Peered::new(cfg.mutex, cfg.id, &members).map_err(|e| anyhow::anyhow!(e))?;
            }
            for (id, addr) in &cfg.peers {
                let ep = endpoint(addr)?;
                let s = util::socket(ctx, zmq::DEALER)?;
                s.set_identity(format!("n{}", cfg.id).as_bytes())?;
                crate::curve::connect(&s, &ep).map_err(|e| sock_err("connect to", &ep, e))?;
                dealers.insert(*id, s);
            }
        }
        let graph = graph.then(|| graph::Graph::new(cfg.id, cfg.peers.iter().map(|p| p.0), cfg.liveness * 2));
        Ok(Node {
            published: None,
            graph,
            boot,
            parent,
            peered: HashMap::new(),
            dealers,
            members,
            absent: Default::default(),
            started: Instant::now(),
            vector: VectorClock::new(cfg.id),
            cfg,
            router,
            up,
            parent_seen: Instant::now(),
            parent_alive: true,
            children: BTreeMap::new(),
            clients: HashMap::new(),
            tokens: HashMap::new(),
            leases: HashMap::new(),
            lamport: Lamport::new(),
            log: VecDeque::new(),
            log_seq: 0,
            counters: Counters::default(),
        })
    }

    fn parent_id(&self) -> Option<NodeId> {
        self.parent.as_ref().map(|p| p.0)
    }

    /// Serves until the stop flag is set.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let _span = tracing::info_span!("node", id = self.cfg.id).entered();
        let mut next_beat = Instant::now();
        while !util::stopping() {
            let now = Instant::now();
            if now >= next_beat {
                next_beat = now + self.cfg.heartbeat;
                self.beat(now)?;
            }
            self.tick_peered()?;
            self.graph_tick()?;
            let mut wait = next_beat.saturating_duration_since(Instant::now()).as_millis().max(1) as i64;
            if self.cfg.mutex == Algorithm::Ring {
                wait = wait.min(RING_TICK_MS); // idle tokens move on at each tick
            }
            let (r, u) = {
                let mut items = vec![self.router.as_poll_item(zmq::POLLIN)];
                if let Some(up) = &self.up {
                    items.push(up.as_poll_item(zmq::POLLIN));
                }
                match zmq::poll(&mut items, wait) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
                (items[0].is_readable(), items.get(1).is_some_and(|i| i.is_readable()))
            };
            if r {
                while let Ok(parts) = self.router.recv_multipart(zmq::DONTWAIT) {
                    if let [route, body] = parts.as_slice() {
                        self.on_router(route, body)?;
                    }
                }
            }
            if u {
                while let Some(Ok(body)) = self.up.as_ref().map(|s| s.recv_bytes(zmq::DONTWAIT)) {
                    self.parent_seen = Instant::now();
                    if !self.parent_alive {
                        tracing::info!("parent is back");
                        self.parent_alive = true;
                    }
                    match decode(&body) {
                        Ok(Wire::Peer { from, boot, lamport, vector, body }) => {
                            self.on_peer(from, boot, lamport, vector, body, None)?
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("malformed message from the parent dropped: {e}"),
                    }
                }
            }
        }
        Ok(())
    }

    fn on_router(&mut self, route: &[u8], body: &[u8]) -> anyhow::Result<()> {
        let msg = match decode(body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("malformed message dropped: {e}");
                return Ok(());
            }
        };
        let now = Instant::now();
        match msg {
            Wire::Peer { from, boot, lamport, vector, body } => {
                self.on_peer(from, boot, lamport, vector, body, Some(route))?
            }
            Wire::Acquire { key, wait } => {
                self.clients.insert(route.to_vec(), now);
                self.acquire(route, key, wait)?;
            }
            Wire::Release { key } => {
                self.clients.insert(route.to_vec(), now);
                self.release(route, &key)?;
            }
            Wire::ClientBeat => {
                self.clients.insert(route.to_vec(), now);
                self.to_route(route, &Wire::NodeBeat);
            }
            Wire::Status => {
                let text = self.status();
                self.to_route(route, &Wire::StatusText { text });
            }
            Wire::StatusWave => self.status_wave(route)?,
            Wire::Audit => {
                let skip = self.log.len().saturating_sub(LOG_SENT);
                let events = self.log.iter().skip(skip).cloned().collect();
                self.to_route(route, &Wire::AuditLog { events });
            }
            other => tracing::warn!("unexpected message {other:?} dropped"),
        }
        Ok(())
    }

    fn on_peer(
        &mut self,
        from: NodeId,
        boot: u64,
        lamport: u64,
        vector: Vec<(NodeId, u64)>,
        body: PeerBody,
        route: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        self.lamport.receive(lamport);
        self.vector.receive(&VectorStamp(vector.into_iter().collect()));
        if let Some(route) = route {
            if Some(from) == self.parent_id() {
                tracing::warn!(from, "our parent wrote to our listening socket; dropped");
                return Ok(());
            }
            let mut back = false;
            if self.children.get(&from).is_some_and(|n| n.boot != boot && n.alive) {
                // It restarted before we noticed it die: its tokens are gone with its state.
                tracing::warn!(child = from, "child restarted");
                self.counters.dead_neighbours += 1;
                self.neighbour_died(from, true)?;
                back = true;
            }
            back |= self.absent.remove(&from);
            let new = !self.children.contains_key(&from);
            let n = self.children.entry(from).or_insert_with(|| {
                tracing::info!(child = from, "child connected");
                Neighbour { route: route.to_vec(), boot, last_seen: Instant::now(), alive: true }
            });
            n.boot = boot;
            n.route = route.to_vec();
            n.last_seen = Instant::now();
            if !n.alive {
                tracing::info!(child = from, "child is back");
                n.alive = true;
                back = true;
            }
            if (back || new) && self.graph.is_some() {
                self.graph_contact(from, back)?;
            } else if back && self.cfg.mutex != Algorithm::Raymond {
                self.each_peered(|p, now| p.peer_up(now, from))?;
            }
        }
        match body {
            PeerBody::TreeToken { tree, key, msg } if self.graph.is_some() => {
                self.graph_receive(from, crate::treelock::Msg::Token { tree, key, msg })?
            }
            PeerBody::Wave(msg) if self.graph.is_some() => self.graph_receive(from, crate::treelock::Msg::Wave(msg))?,
            PeerBody::Token { key, msg } if self.cfg.mutex == Algorithm::Raymond && self.graph.is_none() => {
                let actions = self.token(&key).receive(from, msg);
                self.apply(&key, actions)?;
            }
            PeerBody::Peer { key, msg } if self.cfg.mutex != Algorithm::Raymond && self.members.contains(&from) => {
                let now = self.millis();
                match self.peered(&key).receive(now, from, msg) {
                    Ok(outs) => self.apply_peered(&key, outs)?,
                    Err(crate::mutex::Foreign) => self.wrong_algorithm(from),
                }
            }
            PeerBody::Beat => {}
            _ => self.wrong_algorithm(from),
        }
        Ok(())
    }

    fn wrong_algorithm(&mut self, from: NodeId) {
        if self.counters.foreign == 0 {
            tracing::error!(
                from,
                mutex = self.cfg.mutex.name(),
                "a node of another algorithm (or not a member) wrote to us; dropped"
            );
        }
        self.counters.foreign += 1;
    }

    fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn peered(&mut self, key: &[u8]) -> &mut Peered {
        let (algo, id, members) = (self.cfg.mutex, self.cfg.id, &self.members);
        self.peered.entry(key.to_vec()).or_insert_with(|| Peered::new(algo, id, members).expect("checked at bind"))
    }

    fn tick_peered(&mut self) -> anyhow::Result<()> {
        if self.cfg.mutex == Algorithm::Raymond {
            return Ok(());
        }
        self.each_peered(|p, now| p.tick(now))
    }

    /// Gives every key's peer-algorithm state the same event (a tick, a peer down or
    /// back) and carries out what comes of it.
    fn each_peered(&mut self, event: impl Fn(&mut Peered, u64) -> Vec<Out<PeerMsg>>) -> anyhow::Result<()> {
        let now = self.millis();
        let keys: Vec<Vec<u8>> = self.peered.keys().cloned().collect();
        for key in keys {
            let outs = event(self.peered(&key), now);
            self.apply_peered(&key, outs)?;
        }
        Ok(())
    }

    /// A peer algorithm's outputs, in the form [`Node::apply`] takes.
    fn apply_peered(&mut self, key: &[u8], outs: Vec<Out<PeerMsg>>) -> anyhow::Result<()> {
        for o in outs {
            match o {
                Out::Send { to, msg } => {
                    self.counters.token_messages += 1;
                    let w = self.stamp(PeerBody::Peer { key: key.to_vec(), msg });
                    self.to_node(to, &w);
                }
                Out::Granted { fence } => self.entered(key, fence)?,
            }
        }
        Ok(())
    }

    /// The local request for the lock of `key` (whichever algorithm).
    fn request_lock(&mut self, key: &[u8]) -> anyhow::Result<()> {
        let ts = self.lamport.tick();
        self.vector.tick();
        if self.graph.is_some() {
            return self.graph_request(key, ts);
        }
        if self.cfg.mutex == Algorithm::Raymond {
            let actions = self.token(key).request(ts);
            self.apply(key, actions)
        } else {
            let now = self.millis();
            let outs = self.peered(key).request(now);
            self.apply_peered(key, outs)
        }
    }

    /// The local release of the lock of `key`.
    fn release_lock(&mut self, key: &[u8]) -> anyhow::Result<()> {
        if self.graph.is_some() {
            self.graph_release(key)
        } else if self.cfg.mutex == Algorithm::Raymond {
            let actions = self.token(key).release();
            self.apply(key, actions)
        } else {
            let now = self.millis();
            let outs = self.peered(key).release(now);
            self.apply_peered(key, outs)
        }
    }

    fn token(&mut self, key: &[u8]) -> &mut Raymond {
        let (id, parent) = (self.cfg.id, self.parent_id());
        self.tokens.entry(key.to_vec()).or_insert_with(|| Raymond::new(id, parent))
    }

    fn acquire(&mut self, route: &[u8], key: Vec<u8>, wait: bool) -> anyhow::Result<()> {
        let lease = self.leases.entry(key.clone()).or_default();
        if lease.holder.as_ref().is_some_and(|h| h.0 == route) {
            let fence = lease.holder.as_ref().map(|h| h.1).unwrap_or(0);
            self.to_route(route, &Wire::Granted { key, fence });
            return Ok(());
        }
        lease.waiters.push_back(route.to_vec());
        let first_wait = lease.holder.is_none() && lease.waiters.len() == 1;
        tracing::debug!(key = %hex(&key), first_wait, waiters = lease.waiters.len(), "acquire");
        if first_wait {
            self.request_lock(&key)?;
        }
        if !wait {
            // A try: granted at once, or busy (a request already made is kept; if the
            // token comes with nobody waiting, it is passed on at once).
            let lease = self.leases.get_mut(&key).expect("made above");
            if lease.holder.as_ref().is_none_or(|h| h.0 != route) {
                lease.waiters.retain(|w| w != route);
                self.to_route(route, &Wire::Busy { key });
            }
        }
        Ok(())
    }

    fn release(&mut self, route: &[u8], key: &[u8]) -> anyhow::Result<()> {
        let Some(lease) = self.leases.get_mut(key) else { return Ok(()) };
        lease.waiters.retain(|w| w != route);
        if lease.holder.as_ref().is_some_and(|h| h.0 == route) {
            lease.holder = None;
            let more = !lease.waiters.is_empty();
            self.log_event(key, crate::audit::Kind::Release);
            self.release_lock(key)?;
            if more {
                // Others here want it too: ask again, so that earlier requests elsewhere
                // go first (timestamp order).
                self.request_lock(key)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, key: &[u8], actions: Vec<Action>) -> anyhow::Result<()> {
        for a in actions {
            match a {
                Action::Send { to, msg } => {
                    tracing::debug!(key = %hex(key), to, ?msg, "token message");
                    self.counters.token_messages += 1;
                    let w = self.stamp(PeerBody::Token { key: key.to_vec(), msg });
                    self.to_node(to, &w);
                }
                Action::Enter { fence } => self.entered(key, fence)?,
            }
        }
        Ok(())
    }

    /// The lock of `key` is ours: to the first local waiter, or given back if nobody
    /// waits any more (a try that gave up). Recursion is bounded: a release never
    /// grants here again unless a local request is queued, and none is.
    fn entered(&mut self, key: &[u8], fence: Fence) -> anyhow::Result<()> {
        let lease = self.leases.entry(key.to_vec()).or_default();
        tracing::debug!(key = %hex(key), fence, waiters = lease.waiters.len(), "entered");
        match lease.waiters.pop_front() {
            Some(route) => {
                self.counters.grants += 1;
                lease.holder = Some((route.clone(), fence));
                self.log_event(key, crate::audit::Kind::Grant);
                self.to_route(&route, &Wire::Granted { key: key.to_vec(), fence });
                Ok(())
            }
            None => self.release_lock(key),
        }
    }

    /// A grant or release, as a local event of vector time, into the audit log.
    fn log_event(&mut self, key: &[u8], kind: crate::audit::Kind) {
        let vector = self.vector.tick().0.into_iter().collect();
        self.log.push_back(crate::audit::Event {
            node: self.cfg.id,
            seq: self.log_seq,
            key: key.to_vec(),
            kind,
            vector,
        });
        self.log_seq += 1;
        if self.log.len() > LOG_KEPT {
            self.log.pop_front();
        }
    }

    fn stamp(&mut self, body: PeerBody) -> Wire {
        let lamport = self.lamport.tick();
        let vector = self.vector.send().0.into_iter().collect();
        Wire::Peer { from: self.cfg.id, boot: self.boot, lamport, vector, body }
    }

    fn to_node(&self, to: NodeId, w: &Wire) {
        let bytes = encode(w);
        if let Some(d) = self.dealers.get(&to) {
            let _ = d.send(bytes, zmq::DONTWAIT);
        } else if Some(to) == self.parent_id() {
            if let Some(up) = &self.up {
                let _ = up.send(bytes, zmq::DONTWAIT);
            }
        } else if let Some(n) = self.children.get(&to) {
            let _ = self.router.send_multipart([n.route.as_slice(), &bytes], zmq::DONTWAIT);
        } else {
            tracing::warn!(to, "no route to node; message dropped");
        }
    }

    fn to_route(&self, route: &[u8], w: &Wire) {
        let _ = self.router.send_multipart([route, &encode(w)], zmq::DONTWAIT);
    }

    /// The figures `--metrics` publishes.
    pub fn figures(&self) -> Figures {
        let parent = u64::from(self.parent.is_some() && self.parent_alive);
        Figures {
            counters: self.counters.clone(),
            leases_held: self.leases.values().filter(|l| l.holder.is_some()).count() as u64,
            waiters: self.leases.values().map(|l| l.waiters.len() as u64).sum(),
            clients: self.clients.len() as u64,
            neighbours_alive: parent + self.children.values().filter(|c| c.alive).count() as u64,
            lamport: self.lamport.now(),
        }
    }

    fn beat(&mut self, now: Instant) -> anyhow::Result<()> {
        if let Some(p) = &self.published {
            let f = self.figures();
            *p.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = f;
        }
        let beat = self.stamp(PeerBody::Beat);
        if self.up.is_some() {
            let parent = self.parent_id().expect("a parent socket means a parent");
            self.to_node(parent, &beat);
            if self.parent_alive && now.duration_since(self.parent_seen) > self.cfg.liveness {
                self.parent_alive = false;
                self.counters.dead_neighbours += 1;
                tracing::warn!(parent, "parent stopped answering; requests wait for it");
                self.neighbour_died(parent, false)?;
            }
        }
        for d in self.dealers.values() {
            let _ = d.send(encode(&beat), zmq::DONTWAIT);
        }
        if now.duration_since(self.started) > self.cfg.liveness {
            let silent: Vec<NodeId> = self
                .dealers
                .keys()
                .copied()
                .filter(|p| !self.children.contains_key(p) && !self.absent.contains(p))
                .collect();
            for p in silent {
                tracing::warn!(peer = p, "peer never answered; going on without it");
                self.absent.insert(p);
                self.counters.dead_neighbours += 1;
                self.neighbour_died(p, true)?;
            }
        }
        let mut died = Vec::new();
        for (&id, n) in &mut self.children {
            if n.alive && now.duration_since(n.last_seen) > self.cfg.liveness {
                n.alive = false;
                died.push(id);
            } else if n.alive && self.dealers.is_empty() {
                let _ = self.router.send_multipart([n.route.as_slice(), &encode(&beat)], zmq::DONTWAIT);
            }
        }
        for id in died {
            self.counters.dead_neighbours += 1;
            tracing::warn!(child = id, "child stopped answering");
            self.neighbour_died(id, true)?;
        }
        let gone: Vec<Vec<u8>> = self
            .clients
            .iter()
            .filter(|(_, &t)| now.duration_since(t) > self.cfg.liveness)
            .map(|(r, _)| r.clone())
            .collect();
        for route in gone {
            self.clients.remove(&route);
            tracing::warn!(client = %String::from_utf8_lossy(&route), "client stopped answering; its leases pass on");
            let keys: Vec<Vec<u8>> = self.leases.keys().cloned().collect();
            for key in keys {
                self.release(&route, &key)?;
            }
        }
        Ok(())
    }

    fn neighbour_died(&mut self, n: NodeId, is_child: bool) -> anyhow::Result<()> {
        if self.graph.is_some() {
            return self.graph_peer_down(n);
        }
        if self.cfg.mutex != Algorithm::Raymond {
            return self.each_peered(|p, now| p.peer_down(now, n));
        }
        let keys: Vec<Vec<u8>> = self.tokens.keys().cloned().collect();
        for key in keys {
            let (actions, regenerated) = self.token(&key).neighbour_died(n, is_child);
            if regenerated {
                self.counters.regenerated += 1;
                tracing::warn!(node = n, key = %hex(&key), "token lay toward a dead node: regenerated here with a new fencing epoch");
            }
            self.apply(&key, actions)?;
        }
        Ok(())
    }

    /// What `cluster lease status` prints.
    pub fn status(&self) -> String {
        let mut s =
            format!("node {} (Lamport {}, vector {:?})\n", self.cfg.id, self.lamport.now(), self.vector.now().0);
        match &self.parent {
            _ if !self.dealers.is_empty() => {}
            Some((p, addr)) => {
                s += &format!("parent {p} at {addr}: {}\n", if self.parent_alive { "alive" } else { "NOT ANSWERING" })
            }
            None => s += "root of the tree\n",
        }
        let kind = if self.dealers.is_empty() { "child" } else { "peer" };
        for (id, n) in &self.children {
            s += &format!("{kind} {id}: {}\n", if n.alive { "alive" } else { "NOT ANSWERING" });
        }
        if self.cfg.mutex != Algorithm::Raymond {
            s += &format!("mutex {} among {:?}\n", self.cfg.mutex.name(), self.members);
            let mut keys: Vec<&Vec<u8>> = self.peered.keys().collect();
            keys.sort();
            for key in keys {
                let state = if self.peered[key].in_critical_section() { "HELD here" } else { "not held here" };
                let waiting = self.leases.get(key).map(|l| l.waiters.len()).unwrap_or(0);
                s += &format!("lease {}: {state}; local waiters {waiting}\n", hex(key));
            }
        }
        s += &format!("clients: {}\n", self.clients.len());
        let mut keys: Vec<&Vec<u8>> = self.tokens.keys().collect();
        keys.sort();
        for key in keys {
            let r = &self.tokens[key];
            let lease = self.leases.get(key);
            let state = token_state(r);
            let waiting = lease.map(|l| l.waiters.len()).unwrap_or(0);
            s += &format!(
                "lease {}: {state}; fence {:#x}; local waiters {waiting}; queue {:?}\n",
                hex(key),
                r.fence(),
                r.waiting()
            );
        }
        if let Some(g) = &self.graph {
            s += &g.status();
        }
        let c = &self.counters;
        s += &format!(
            "token messages sent {}, grants {}, regenerated {}, dead neighbours {}, foreign messages dropped {}\n",
            c.token_messages, c.grants, c.regenerated, c.dead_neighbours, c.foreign
        );
        if self.graph.is_some() {
            s += &format!(
                "waves started here {}, trees rebuilt {}, token messages of older trees dropped {}\n",
                c.waves, c.rebuilds, c.stale
            );
        }
        s
    }
}

/// Beats to the parent until it answers; its answer names it. Waits as long as it takes
/// (the parent may start later), saying so every few seconds, until stopped.
fn learn_parent_id(up: &zmq::Socket, cfg: &NodeConfig, boot: u64) -> anyhow::Result<NodeId> {
    let beat = encode(&Wire::Peer { from: cfg.id, boot, lamport: 0, vector: Vec::new(), body: PeerBody::Beat });
    let started = Instant::now();
    let mut said = Instant::now();
    while !util::stopping() {
        let _ = up.send(&beat, zmq::DONTWAIT);
        if up.poll(zmq::POLLIN, cfg.heartbeat.as_millis() as i64).unwrap_or(0) > 0 {
            if let Ok(Wire::Peer { from, .. }) = decode(&up.recv_bytes(0)?) {
                return Ok(from);
            }
        }
        if said.elapsed() > Duration::from_secs(5) {
            said = Instant::now();
            tracing::warn!(waited = ?started.elapsed(), "waiting for the parent to answer");
        }
    }
    anyhow::bail!("stopped while waiting for the parent")
}

/// Where a lease's token is, as `cluster lease status` says it.
fn token_state(r: &Raymond) -> String {
    if r.using() {
        "HELD here".to_string()
    } else if r.holds_token() {
        "token here, idle".to_string()
    } else {
        format!("token toward node {}{}", r.holder(), if r.asked() { " (asked)" } else { "" })
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trips_and_refuses_garbage() {
        let w = Wire::Peer {
            from: 3,
            boot: 1,
            lamport: 9,
            vector: vec![(1, 2)],
            body: PeerBody::Token { key: b"k".to_vec(), msg: Message::Privilege { fence: 5 } },
        };
        assert_eq!(decode(&encode(&w)), Ok(w));
        assert!(decode(&[0xff; 3]).is_err());
        assert!(decode(&[]).is_err());
        let mut b = encode(&Wire::ClientBeat);
        b.push(0);
        assert!(decode(&b).is_err());
    }

    /// The bytes of node messages, pinned (bincode 2's standard configuration: variant
    /// indices and integers as varints, lengths before sequences), so a format change is
    /// a visible diff. Written down in PROTOCOL.md.
    #[test]
    fn golden_bytes() {
        let peer = Wire::Peer {
            from: 3,
            boot: 1,
            lamport: 9,
            vector: vec![(1, 2)],
            body: PeerBody::Token { key: b"k".to_vec(), msg: Message::Privilege { fence: 300 } },
        };
        #[rustfmt::skip]
        let want = [
            0,          // Wire::Peer
            3,          // from
            1,          // boot
            9,          // lamport
            1, 1, 2,    // vector: one entry, (node 1, 2)
            1,          // PeerBody::Token
            1, b'k',    // key: length 1, "k"
            1,          // Message::Privilege
            251, 44, 1, // fence 300: 251 = a u16 follows, little-endian
        ];
        assert_eq!(encode(&peer), want);
        assert_eq!(decode(&want), Ok(peer));
        let request = Message::Request { ts: 7, origin: 2 };
        let body = PeerBody::Token { key: vec![], msg: request };
        assert_eq!(
            encode(&Wire::Peer { from: 2, boot: 0, lamport: 0, vector: vec![], body }),
            [0, 2, 0, 0, 0, 1, 0, 0, 7, 2]
        );
        assert_eq!(encode(&Wire::Acquire { key: b"ab".to_vec(), wait: true }), [1, 2, b'a', b'b', 1]);
        assert_eq!(encode(&Wire::Granted { key: vec![9], fence: 4 }), [5, 1, 9, 4]);
        assert_eq!(encode(&Wire::ClientBeat), [3]);
        assert_eq!(encode(&Wire::Audit), [9]);
        assert_eq!(encode(&Wire::StatusWave), [11]);
        let wave = crate::echo::WaveId { number: 2, initiator: 5 };
        let explore = PeerBody::Wave(crate::echo::Msg::Explore { wave });
        // Peer from 1, then PeerBody::Wave (4), Msg::Explore (0), number 2, initiator 5.
        assert_eq!(
            encode(&Wire::Peer { from: 1, boot: 0, lamport: 0, vector: vec![], body: explore }),
            [0, 1, 0, 0, 0, 4, 0, 2, 5]
        );
        let token = PeerBody::TreeToken { tree: 3, key: vec![7], msg: Message::Privilege { fence: 1 } };
        // PeerBody::TreeToken (3), tree 3, key [7], Message::Privilege (1), fence 1.
        assert_eq!(
            encode(&Wire::Peer { from: 1, boot: 0, lamport: 0, vector: vec![], body: token }),
            [0, 1, 0, 0, 0, 3, 3, 1, 7, 1, 1]
        );
        let event = crate::audit::Event {
            node: 2,
            seq: 5,
            key: vec![7],
            kind: crate::audit::Kind::Release,
            vector: vec![(1, 4), (2, 6)],
        };
        // AuditLog: 1 event: node, seq, key (1 byte), Kind::Release, vector (2 entries).
        assert_eq!(encode(&Wire::AuditLog { events: vec![event] }), [10, 1, 2, 5, 1, 7, 1, 2, 1, 4, 2, 6]);
    }

    #[test]
    fn node_addresses() {
        assert_eq!(endpoint("127.0.0.1:7000").unwrap(), "tcp://127.0.0.1:7000");
        assert_eq!(endpoint("/tmp/n1").unwrap(), "ipc:///tmp/n1");
        assert!(endpoint("nonsense").is_err());
        assert!(endpoint("127.0.0.1:x").is_err());
    }
}
