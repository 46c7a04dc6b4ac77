//! `cluster broker --metrics ADDR` and `cluster node --metrics ADDR`: counters in the
//! Prometheus text format over plain HTTP (`GET /metrics`). The broker's: batches
//! accepted and done, duplicates, batches dispatched again, workers alive, dead, banned,
//! items handed back, the queue. A lease node's: leases held and waited for, grants,
//! token messages, tokens regenerated, neighbours and clients, its Lamport time.
//!
//! The broker's (and the node's) one thread updates the figures at every heartbeat from
//! its bookkeeping; a thread of its own answers scrapes.

use crate::dispatch::Stats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

/// Registers one metric of kind `M` per `(name, help, figure)`, each paired with the
/// figure it follows.
fn register<M, F>(
    registry: &mut Registry,
    list: impl IntoIterator<Item = (&'static str, &'static str, F)>,
) -> Vec<(M, F)>
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    list.into_iter()
        .map(|(name, help, f)| {
            let m = M::default();
            registry.register(name, help, m.clone());
            (m, f)
        })
        .collect()
}

/// A figure of the broker's bookkeeping that a counter follows.
type Figure = fn(&Stats) -> u64;

pub struct BrokerMetrics {
    registry: Registry,
    /// Each counter with the figure it follows.
    counters: Vec<(Counter, Figure)>,
    pub workers: Gauge,
    pub queued: Gauge,
    pub outstanding: Gauge,
    pub banned: Gauge,
    pub published: Counter,
}

impl Default for BrokerMetrics {
    fn default() -> BrokerMetrics {
        let mut registry = Registry::with_prefix("cluster_broker");
        let follow: [(&str, &str, Figure); 7] = [
            ("batches_accepted", "Batches accepted from sources", |s| s.accepted),
            ("duplicate_requests", "Resent submissions acknowledged again, not queued", |s| s.duplicate_requests),
            ("batches_done", "Work items done (first result)", |s| s.completed),
            ("duplicate_results", "Results for items already done (counted once)", |s| s.duplicate_results),
            ("redispatched", "Items queued again (a worker died, restarted or was banned)", |s| s.redispatched),
            ("dead_workers", "Workers declared dead (silent)", |s| s.dead_workers),
            ("handed_back", "Items overloaded workers handed back (load dispatch)", |s| s.handed_back),
        ];
        let counters = register(&mut registry, follow);
        let (workers, queued, outstanding, banned) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        let published = Counter::default();
        registry.register("workers", "Workers alive", workers.clone());
        registry.register("queued", "Work items waiting for a worker", queued.clone());
        registry.register("outstanding", "Work items not yet done", outstanding.clone());
        registry.register("banned_workers", "Workers a voter found wrong", banned.clone());
        registry.register("publications", "Messages published to subscribers", published.clone());
        BrokerMetrics { registry, counters, workers, queued, outstanding, banned, published }
    }
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerMetrics")
    }
}

impl BrokerMetrics {
    /// Brings the counters up to `stats` (they only grow).
    pub fn update(&self, stats: &Stats) {
        for (c, f) in &self.counters {
            c.inc_by(f(stats).saturating_sub(c.get()));
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("writing to a String");
        s
    }
}

/// A figure of a lease node that a counter or gauge follows.
type NodeFigure = fn(&coord::node::Figures) -> u64;

/// A lease node's figures ([`coord::node::Figures`]) as Prometheus metrics.
pub struct NodeMetrics {
    registry: Registry,
    counters: Vec<(Counter, NodeFigure)>,
    gauges: Vec<(Gauge, NodeFigure)>,
    figures: Arc<std::sync::Mutex<coord::node::Figures>>,
}

impl NodeMetrics {
    /// Metrics that follow `figures` (which the node refreshes at every beat).
    pub fn new(figures: Arc<std::sync::Mutex<coord::node::Figures>>) -> NodeMetrics {
        let mut registry = Registry::with_prefix("cluster_node");
        let counters: [(&str, &str, NodeFigure); 6] = [
            ("grants", "Leases granted to local clients", |f| f.counters.grants),
            ("token_messages", "Token and request messages sent to other nodes", |f| f.counters.token_messages),
            ("regenerated_tokens", "Tokens made again after the neighbour holding them died", |f| {
                f.counters.regenerated
            }),
            ("dead_neighbours", "Neighbours declared dead (silent)", |f| f.counters.dead_neighbours),
            ("foreign_messages", "Messages from nodes of another algorithm, dropped", |f| f.counters.foreign),
            ("waves", "Echo waves started here", |f| f.counters.waves),
        ];
        let gauges: [(&str, &str, NodeFigure); 5] = [
            ("leases_held", "Leases a local client holds", |f| f.leases_held),
            ("lease_waiters", "Local clients waiting for a lease", |f| f.waiters),
            ("clients", "Local clients (mounts, spool watchers) alive", |f| f.clients),
            ("neighbours_alive", "Tree neighbours (parent and children) alive", |f| f.neighbours_alive),
            ("lamport_time", "The node's Lamport clock", |f| f.lamport),
        ];
        let counters = register(&mut registry, counters);
        let gauges = register(&mut registry, gauges);
        NodeMetrics { registry, counters, gauges, figures }
    }

    pub fn render(&self) -> String {
        let f = self.figures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for (c, get) in &self.counters {
            c.inc_by(get(&f).saturating_sub(c.get()));
        }
        for (g, get) in &self.gauges {
            g.set(get(&f) as i64);
        }
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("writing to a String");
        s
    }
}

/// Answers `GET /metrics` on `listener` with `render()` until the process ends. (The
/// file server has the same dozen lines in `fs_server::metrics`; the two crates share
/// no dependency to put them in.)
pub fn serve(listener: std::net::TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    let _ = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                ("200 OK", render())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}
