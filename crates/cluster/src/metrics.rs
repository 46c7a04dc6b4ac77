//! `cluster broker --metrics ADDR`: the broker's counters in the Prometheus text format
//! over plain HTTP (`GET /metrics`): batches accepted and done, duplicates, batches
//! dispatched again, workers alive, dead, banned, items handed back, the queue.
//!
//! The broker's one thread updates the figures at every heartbeat (500 ms) from its
//! bookkeeping; a thread of its own answers scrapes.

use crate::dispatch::Stats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

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
        let counters = follow
            .into_iter()
            .map(|(name, help, f)| {
                let c = Counter::default();
                registry.register(name, help, c.clone());
                (c, f)
            })
            .collect();
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

/// Answers `GET /metrics` on `listener` with `render()` until the process ends. (The
/// file server has the same dozen lines in `fs_server::metrics`; the two crates share
/// no dependency to put them in.)
pub fn serve(listener: std::net::TcpListener, metrics: Arc<BrokerMetrics>) {
    let _ = std::thread::Builder::new().name("broker-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                ("200 OK", metrics.render())
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
