//! Graph mode (`cluster node --peers` with Raymond): the tree Raymond's algorithm runs on
//! is found by echo waves ([`crate::echo`]), and rebuilt by them ([`crate::tree`]).
//!
//! A wave starts at start-up; when a neighbour dies, comes back, or first appears after
//! the tree was built; when no decision came here within twice `liveness` of joining a
//! wave (a lost message, a dead initiator); and for `cluster status`. From joining a wave
//! until a decision for it (or a later one) arrives, this node sends no token messages
//! (they wait in `deferred`) and makes no new key's state: that makes every wave a
//! consistent cut of the tokens. A decision that keeps the tree lets the waiting
//! messages go; one that rebuilds drops them, sets every lease's Raymond state on the new
//! tree, and every lease with local waiters asks again.

use super::{hex, Node, PeerBody, Wire};
use crate::clock::NodeId;
use crate::echo::{self, Echo, Report, WaveId};
use crate::mutex::raymond::{Message, Raymond};
use crate::tree::{self, Decision, KeyState, NodeState, Rebuild};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

type Out = echo::Out<NodeState, Decision>;

pub(super) struct Graph {
    echo: Echo<NodeState, Decision>,
    /// The tree's epoch (0: no tree yet) and every member's parent in it.
    epoch: u64,
    parents: BTreeMap<NodeId, Option<NodeId>>,
    /// Since when this node waits for a decision (joined a wave, or has no tree yet).
    frozen: Option<Instant>,
    deferred: Vec<(Vec<u8>, NodeId, Message)>,
    /// Clients waiting for a status wave's answer.
    status_waiters: Vec<Vec<u8>>,
    last_start: Option<Instant>,
    /// The last wave completed here: (wave, messages, nodes).
    last_complete: Option<(WaveId, u64, usize)>,
}

impl Graph {
    pub(super) fn new(me: NodeId, neighbours: impl IntoIterator<Item = NodeId>) -> Graph {
        Graph {
            echo: Echo::new(me, neighbours),
            epoch: 0,
            parents: BTreeMap::new(),
            frozen: Some(Instant::now()),
            deferred: Vec::new(),
            status_waiters: Vec::new(),
            last_start: None,
            last_complete: None,
        }
    }

    pub(super) fn frozen(&self) -> bool {
        self.frozen.is_some()
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn defer(&mut self, key: &[u8], to: NodeId, msg: Message) {
        self.deferred.push((key.to_vec(), to, msg));
    }

    /// Whether a request for `key` may go to Raymond now: not without a tree, nor for a
    /// key with no state here during a wave (the root would make a token the wave did
    /// not count).
    pub(super) fn may_request(&self, key: &[u8], tokens: &HashMap<Vec<u8>, Raymond>) -> bool {
        self.epoch > 0 && (!self.frozen() || tokens.contains_key(key))
    }

    /// A key's first state here: toward the parent, or the token at the root, its fence
    /// in the tree's epoch (above every fence of earlier trees).
    pub(super) fn fresh(&self, me: NodeId) -> Raymond {
        match self.parents.get(&me).copied().flatten() {
            Some(p) => Raymond::placed(me, p, false, 0),
            None => Raymond::placed(me, me, false, self.epoch << 32),
        }
    }

    pub(super) fn status(&self) -> String {
        let me = self.echo.me();
        let children: Vec<NodeId> = self.parents.iter().filter(|(_, p)| **p == Some(me)).map(|(id, _)| *id).collect();
        let mut s = match self.parents.get(&me) {
            _ if self.epoch == 0 => "tree: none yet (waiting for a wave)\n".to_string(),
            Some(Some(p)) => format!("tree {}: parent {p}, children {children:?}\n", self.epoch),
            _ => format!("tree {}: root, children {children:?}\n", self.epoch),
        };
        s += &format!("neighbours {:?}", self.echo.neighbours());
        s += &match (self.echo.current(), self.frozen()) {
            (Some(w), true) => format!("; in wave {} of node {}\n", w.number, w.initiator),
            _ => "\n".to_string(),
        };
        if let Some((w, messages, nodes)) = self.last_complete {
            s += &format!("last wave from here: {} ({nodes} nodes, {messages} messages)\n", w.number);
        }
        s
    }
}

impl Node {
    fn g(&mut self) -> &mut Graph {
        self.graph.as_mut().expect("graph mode")
    }

    /// Time-driven waves: at start-up, and when a wave was not decided in time.
    pub(super) fn graph_tick(&mut self) -> anyhow::Result<()> {
        let limit = self.cfg.liveness * 2;
        let Some(g) = &self.graph else { return Ok(()) };
        match (g.last_start, g.frozen) {
            (None, _) => self.start_wave("start-up"),
            (Some(s), Some(f)) if f.elapsed() > limit && s.elapsed() > limit => {
                self.start_wave("no decision came in time")
            }
            _ => Ok(()),
        }
    }

    fn start_wave(&mut self, why: &str) -> anyhow::Result<()> {
        self.counters.waves += 1;
        let g = self.g();
        g.last_start = Some(Instant::now());
        let outs = g.echo.start();
        tracing::info!(wave = g.echo.highest(), "{why}: starting a wave");
        self.echo_outs(outs)
    }

    pub(super) fn graph_peer_down(&mut self, n: NodeId) -> anyhow::Result<()> {
        let outs = self.g().echo.peer_down(n);
        self.echo_outs(outs)?;
        self.start_wave(&format!("neighbour {n} died"))
    }

    /// A neighbour came back (`back`) or was heard from for the first time.
    pub(super) fn graph_contact(&mut self, n: NodeId, back: bool) -> anyhow::Result<()> {
        let g = self.g();
        g.echo.peer_up(n);
        if back || (g.epoch > 0 && !g.parents.contains_key(&n) && !g.echo.in_wave()) {
            self.start_wave(&format!("neighbour {n} is not in the tree"))?;
        }
        Ok(())
    }

    pub(super) fn wave_message(&mut self, from: NodeId, msg: echo::Msg<NodeState, Decision>) -> anyhow::Result<()> {
        let outs = self.g().echo.receive(from, msg);
        self.echo_outs(outs)
    }

    /// A token message of the tree of epoch `tree`: one of an older tree (from a node
    /// cut off or declared dead, arriving after the wave passed) is dropped.
    pub(super) fn tree_token(&mut self, from: NodeId, tree: u64, key: Vec<u8>, msg: Message) -> anyhow::Result<()> {
        if tree != self.g().epoch {
            self.counters.stale += 1;
            tracing::warn!(from, tree, ours = self.g().epoch, key = %hex(&key), ?msg, "token message of another tree dropped");
            return Ok(());
        }
        if !self.tokens.contains_key(&key) && self.g().frozen() {
            // A request for a key new here, during a wave: the requester asks again
            // after the decision.
            return Ok(());
        }
        let actions = self.token(&key).receive(from, msg);
        self.apply(&key, actions)
    }

    /// A client asks for the cluster's state.
    pub(super) fn status_wave(&mut self, route: &[u8]) -> anyhow::Result<()> {
        if self.graph.is_none() {
            let text = format!("(one node: waves run with --peers)\n{}", self.status());
            self.to_route(route, &Wire::StatusText { text });
            return Ok(());
        }
        self.g().status_waiters.push(route.to_vec());
        if !self.g().echo.in_wave() {
            self.start_wave("status asked")?;
        }
        Ok(())
    }

    fn echo_outs(&mut self, outs: Vec<Out>) -> anyhow::Result<()> {
        for o in outs {
            match o {
                echo::Out::Send { to, msg } => {
                    let w = self.stamp(PeerBody::Wave(msg));
                    self.to_node(to, &w);
                }
                echo::Out::Joined { .. } => self.g().frozen = Some(Instant::now()),
                echo::Out::Ready { wave } => {
                    let state = self.node_state();
                    let outs = self.g().echo.finish(wave, state);
                    self.echo_outs(outs)?;
                }
                echo::Out::Complete { wave, report } => {
                    let decision = tree::decide(wave, &report);
                    let g = self.g();
                    g.last_complete = Some((wave, report.messages, report.nodes.len()));
                    if !g.status_waiters.is_empty() {
                        let text = status_text(wave, &report, &decision);
                        for route in std::mem::take(&mut self.g().status_waiters) {
                            self.to_route(&route, &Wire::StatusText { text: text.clone() });
                        }
                    }
                    let outs = self.g().echo.decide(wave, decision);
                    self.echo_outs(outs)?;
                }
                echo::Out::Decided { wave, decision } => self.decided(wave, decision)?,
            }
        }
        Ok(())
    }

    fn decided(&mut self, wave: WaveId, decision: Decision) -> anyhow::Result<()> {
        if let Some(r) = decision.rebuild {
            self.rebuild(r);
        }
        let g = self.g();
        if g.echo.current().is_some_and(|c| c > wave) || g.epoch == 0 {
            return Ok(()); // a later wave runs: still frozen
        }
        g.frozen = None;
        for (key, to, msg) in std::mem::take(&mut g.deferred) {
            self.apply(&key, vec![crate::mutex::raymond::Action::Send { to, msg }])?;
        }
        let waiting: Vec<Vec<u8>> = self
            .leases
            .iter()
            .filter(|(_, l)| l.holder.is_none() && !l.waiters.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            tracing::debug!(key = %hex(&key), "asking again after the wave");
            self.request_lock(&key)?;
        }
        if !self.g().status_waiters.is_empty() {
            self.start_wave("status asked during another wave")?;
        }
        Ok(())
    }

    /// The tree of a decision: every lease's token where the decision puts it, every
    /// other node's `holder` toward it; queued requests are asked again by the caller.
    fn rebuild(&mut self, r: Rebuild) {
        let me = self.cfg.id;
        self.counters.rebuilds += 1;
        let g = self.g();
        g.epoch = r.epoch;
        g.echo.observe(r.epoch);
        g.parents = r.parents.into_iter().collect();
        g.deferred.clear();
        let parents = g.parents.clone();
        let old = std::mem::take(&mut self.tokens);
        for p in r.tokens {
            let here = p.at == me;
            let Some(holder) = (if here { Some(me) } else { tree::next_hop(&parents, me, p.at) }) else { continue };
            let using = here && old.get(&p.key).is_some_and(|o| o.using());
            if here && p.anew {
                self.counters.regenerated += 1;
                tracing::warn!(key = %hex(&p.key), fence = format!("{:#x}", p.fence), "the token was lost: made anew here");
            }
            if !here && old.get(&p.key).is_some_and(|o| o.using()) {
                tracing::error!(key = %hex(&p.key), "a second token, in use here, lost to one elsewhere; its holder keeps a lower fence");
            }
            self.tokens.insert(p.key, Raymond::placed(me, holder, using, if here { p.fence } else { 0 }));
        }
        let parent = parents.get(&me).copied().flatten();
        tracing::info!(tree = r.epoch, ?parent, "tree rebuilt");
    }

    fn node_state(&self) -> NodeState {
        let g = self.graph.as_ref().expect("graph mode");
        let mut keys: BTreeMap<&Vec<u8>, KeyState> = BTreeMap::new();
        for (key, lease) in &self.leases {
            let r = self.tokens.get(key);
            if r.is_none() && lease.waiters.is_empty() && lease.holder.is_none() {
                continue;
            }
            keys.insert(
                key,
                KeyState {
                    key: key.clone(),
                    token: r.is_some_and(|r| r.holds_token()),
                    using: r.is_some_and(|r| r.using()),
                    fence: r.map_or(0, |r| r.fence()),
                    holder: lease.holder.as_ref().map(|(route, _)| String::from_utf8_lossy(route).into_owned()),
                    waiters: lease.waiters.len() as u32,
                },
            );
        }
        for (key, r) in &self.tokens {
            keys.entry(key).or_insert_with(|| KeyState {
                key: key.clone(),
                token: r.holds_token(),
                using: r.using(),
                fence: r.fence(),
                holder: None,
                waiters: 0,
            });
        }
        NodeState {
            tree: g.epoch,
            parent: g.parents.get(&self.cfg.id).copied().flatten(),
            lamport: self.lamport.now(),
            neighbours: g.echo.neighbours().iter().copied().collect(),
            keys: keys.into_values().collect(),
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
