//! Graph mode (`cluster node --peers` with Raymond): the node runs
//! [`crate::treelock::TreeLock`] (Raymond on the trees echo waves find) and carries its
//! messages; this is the glue: sockets, the lease table, logs and `cluster status`.

use super::{hex, Node, PeerBody, Wire};
use crate::clock::NodeId;
use crate::echo::{Report, WaveId};
use crate::tree::{self, Decision, NodeState};
use crate::treelock::{Event, Local, Msg, Out, TreeLock};
use std::time::Instant;

pub(super) struct Graph {
    pub(super) lock: TreeLock,
    /// Clients waiting for a status wave's answer.
    status_waiters: Vec<Vec<u8>>,
    started: Instant,
}

impl Graph {
    pub(super) fn new(
        me: NodeId,
        neighbours: impl IntoIterator<Item = NodeId>,
        patience: std::time::Duration,
    ) -> Graph {
        Graph {
            lock: TreeLock::new(me, neighbours, patience.as_millis() as u64),
            status_waiters: Vec::new(),
            started: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn status(&self) -> String {
        let l = &self.lock;
        let mut s = match l.parent() {
            _ if l.epoch() == 0 => "tree: none yet (waiting for a wave)\n".to_string(),
            Some(p) => format!("tree {}: parent {p}, children {:?}\n", l.epoch(), l.children()),
            None => format!("tree {}: root, children {:?}\n", l.epoch(), l.children()),
        };
        s += &format!("neighbours {:?}", l.neighbours());
        s += &match (l.current_wave(), l.frozen()) {
            (Some(w), true) => format!("; in wave {} of node {}\n", w.number, w.initiator),
            _ => "\n".to_string(),
        };
        if let Some((w, messages, nodes)) = l.last_complete {
            s += &format!("last wave from here: {} ({nodes} nodes, {messages} messages)\n", w.number);
        }
        for (key, r) in l.tokens() {
            let state = super::token_state(r);
            s += &format!("lease {}: {state}; fence {:#x}; queue {:?}\n", hex(key), r.fence(), r.waiting());
        }
        s
    }
}

impl Node {
    fn g(&mut self) -> &mut Graph {
        self.graph.as_mut().expect("graph mode")
    }

    pub(super) fn graph_tick(&mut self) -> anyhow::Result<()> {
        let Some(g) = &mut self.graph else { return Ok(()) };
        let now = g.now();
        let outs = g.lock.tick(now);
        self.graph_outs(outs)
    }

    pub(super) fn graph_request(&mut self, key: &[u8], ts: u64) -> anyhow::Result<()> {
        let outs = self.g().lock.request(key, ts);
        self.graph_outs(outs)
    }

    pub(super) fn graph_release(&mut self, key: &[u8]) -> anyhow::Result<()> {
        let outs = self.g().lock.release(key);
        self.graph_outs(outs)
    }

    pub(super) fn graph_peer_down(&mut self, n: NodeId) -> anyhow::Result<()> {
        let g = self.g();
        let now = g.now();
        let outs = g.lock.peer_down(now, n);
        self.graph_outs(outs)
    }

    /// A neighbour came back (`back`) or was heard from for the first time.
    pub(super) fn graph_contact(&mut self, n: NodeId, back: bool) -> anyhow::Result<()> {
        let g = self.g();
        let now = g.now();
        let outs = g.lock.peer_contact(now, n, back);
        self.graph_outs(outs)
    }

    pub(super) fn graph_receive(&mut self, from: NodeId, msg: Msg) -> anyhow::Result<()> {
        let g = self.g();
        let now = g.now();
        let outs = g.lock.receive(now, from, msg);
        self.graph_outs(outs)
    }

    /// A client asks for the cluster's state.
    pub(super) fn status_wave(&mut self, route: &[u8]) -> anyhow::Result<()> {
        if self.graph.is_none() {
            let text = format!("(one node: waves run with --peers)\n{}", self.status());
            self.to_route(route, &Wire::StatusText { text });
            return Ok(());
        }
        let g = self.g();
        g.status_waiters.push(route.to_vec());
        if !g.lock.in_wave() {
            let now = g.now();
            let outs = g.lock.start_wave(now, "status asked");
            self.graph_outs(outs)?;
        }
        Ok(())
    }

    fn graph_outs(&mut self, outs: Vec<Out>) -> anyhow::Result<()> {
        for o in outs {
            match o {
                Out::Send { to, msg } => {
                    let body = match msg {
                        Msg::Token { tree, key, msg } => {
                            self.counters.token_messages += 1;
                            PeerBody::TreeToken { tree, key, msg }
                        }
                        Msg::Wave(m) => PeerBody::Wave(m),
                    };
                    let w = self.stamp(body);
                    self.to_node(to, &w);
                }
                Out::Granted { key, fence } => self.entered(&key, fence)?,
                Out::Ready { wave } => {
                    let local: Local = self
                        .leases
                        .iter()
                        .filter(|(_, l)| l.holder.is_some() || !l.waiters.is_empty())
                        .map(|(k, l)| {
                            let holder = l.holder.as_ref().map(|(r, _)| String::from_utf8_lossy(r).into_owned());
                            (k.clone(), (holder, l.waiters.len() as u32))
                        })
                        .collect();
                    let lamport = self.lamport.now();
                    let g = self.g();
                    let now = g.now();
                    let outs = g.lock.finish(now, wave, &local, lamport);
                    self.graph_outs(outs)?;
                }
                Out::Complete { wave, report, decision } => {
                    let waiters = std::mem::take(&mut self.g().status_waiters);
                    if !waiters.is_empty() {
                        let text = status_text(wave, &report, &decision);
                        for route in waiters {
                            self.to_route(&route, &Wire::StatusText { text: text.clone() });
                        }
                    }
                }
                Out::Event(e) => self.graph_event(e),
            }
        }
        // A status asked during someone else's wave: ours once that one is decided.
        let g = self.g();
        if !g.status_waiters.is_empty() && !g.lock.in_wave() && !g.lock.frozen() {
            let now = g.now();
            let outs = g.lock.start_wave(now, "status asked during another wave");
            self.graph_outs(outs)?;
        }
        Ok(())
    }

    fn graph_event(&mut self, e: Event) {
        match e {
            Event::WaveStarted { number, why } => {
                self.counters.waves += 1;
                tracing::info!(wave = number, "{why}: starting a wave");
            }
            Event::Rebuilt { tree, parent } => {
                self.counters.rebuilds += 1;
                tracing::info!(tree, ?parent, "tree rebuilt");
            }
            Event::MadeAnew { key, fence } => {
                self.counters.regenerated += 1;
                tracing::warn!(key = %hex(&key), fence = format!("{fence:#x}"), "the token was lost: made anew here");
            }
            Event::Superseded { key } => {
                tracing::error!(key = %hex(&key), "two tokens were found; the one in use here lost, its holder keeps a lower fence");
            }
            Event::NoQuorum { answered, members } => tracing::error!(
                answered,
                members,
                "the wave reached no majority of the tree's members: no token is made and nothing is granted until more come back"
            ),
            Event::Stale { from, tree, key } => {
                self.counters.stale += 1;
                tracing::warn!(from, tree, key = %hex(&key), "token message of another tree dropped");
            }
        }
    }
}

/// What `cluster status` prints: the wave, one line per node (`node ID ...`), one per
/// lease, and what was decided.
fn status_text(wave: WaveId, r: &Report<NodeState>, d: &Decision) -> String {
    let edges = r
        .nodes
        .iter()
        .flat_map(|(&a, (_, s))| s.neighbours.iter().filter(move |&&b| a < b).map(move |&b| (a, b)))
        .filter(|(_, b)| r.nodes.contains_key(b))
        .count();
    let mut s = format!(
        "wave {} from node {}: {} nodes answered, {} wave messages on {edges} edges\n",
        wave.number,
        wave.initiator,
        r.nodes.len(),
        r.messages
    );
    if !r.dead.is_empty() {
        s += &format!("reported dead: {:?}\n", r.dead);
    }
    for (&id, (_, st)) in &r.nodes {
        let children: Vec<NodeId> =
            r.nodes.iter().filter(|(_, (_, c))| c.parent == Some(id) && c.tree == st.tree).map(|(k, _)| *k).collect();
        let parent = st.parent.map_or("-".to_string(), |p| p.to_string());
        s += &format!(
            "node {id} tree {} parent {parent} children {children:?} neighbours {:?} lamport {}\n",
            st.tree, st.neighbours, st.lamport
        );
    }
    for (key, t) in tree::tokens(r) {
        let mut line = format!("lease {}: ", hex(&key));
        match t.count() {
            1 => line += "1 token",
            0 => line += "NO TOKEN (lost: must be 1)",
            n => line += &format!("{n} TOKENS (must be 1)"),
        }
        for &(at, using, fence) in &t.at {
            line += &format!("; at node {at} {} fence {fence:#x}", if using { "in use" } else { "idle" });
        }
        if let Some(root) = t.at_root {
            line += &format!("; at the root, node {root}, not yet made");
        }
        for (&id, (_, st)) in &r.nodes {
            for k in st.keys.iter().filter(|k| k.key == key) {
                if let Some(h) = &k.holder {
                    line += &format!("; held by client {h} at node {id}");
                }
                if k.waiters > 0 {
                    line += &format!("; {} waiting at node {id}", k.waiters);
                }
            }
        }
        s += &line;
        s += "\n";
    }
    s += &match &d.rebuild {
        None if d.no_quorum.is_some() => {
            let (a, m) = d.no_quorum.unwrap_or_default();
            format!("decision: NO QUORUM: {a} of the tree's {m} members answered; nothing is granted until a majority is back\n")
        }
        None => format!(
            "decision: the tree is whole; it stays (epoch {})\n",
            r.nodes.values().next().map_or(0, |(_, s)| s.tree)
        ),
        Some(b) => {
            let anew: Vec<String> = b.tokens.iter().filter(|p| p.anew).map(|p| hex(&p.key)).collect();
            format!(
                "decision: rebuilt as tree {} rooted at node {}{}\n",
                b.epoch,
                wave.initiator,
                if anew.is_empty() { String::new() } else { format!("; tokens made anew: {}", anew.join(", ")) }
            )
        }
    };
    s
}
