//! `--metrics ADDR`: the server's counters in the Prometheus text format, served over
//! plain HTTP (`GET /metrics`), so that existing dashboards and alerting work: calls,
//! errors and latency histograms per operation, duplicate request cache replays,
//! connections, change notices and their subscribers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

type Latency = Family<Op, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 us to about 20 s, doubling.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

pub struct Metrics {
    registry: Registry,
    calls: Family<Op, Counter>,
    errors: Family<Op, Counter>,
    latency: Latency,
    pub drc_replays: Counter,
    pub connections: Gauge,
    pub notices: Counter,
    pub subscribers: Gauge,
    pub refused: Counter,
    pub notice_drops: Counter,
    pub notice_waits: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("fs_server");
        let calls = Family::<Op, Counter>::default();
        let errors = Family::<Op, Counter>::default();
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        let (drc_replays, connections, notices, subscribers) =
            (Counter::default(), Gauge::default(), Counter::default(), Gauge::default());
        registry.register("calls", "Calls answered, per operation", calls.clone());
        registry.register("call_errors", "Calls answered with an error, per operation", errors.clone());
        registry.register("call_seconds", "Time from a call read to its answer, per operation", latency.clone());
        registry.register(
            "drc_replays",
            "Retransmissions answered from the duplicate request cache",
            drc_replays.clone(),
        );
        registry.register("connections", "Client connections open", connections.clone());
        registry.register("notices", "Change notices numbered by the sequencer", notices.clone());
        registry.register("notice_subscribers", "Connections subscribed to change notices", subscribers.clone());
        let refused = Counter::default();
        registry.register(
            "refused_connections",
            "Connections refused: no key handshake, a wrong key, or a record that failed authentication",
            refused.clone(),
        );
        let notice_drops = Counter::default();
        registry.register(
            "notice_drops",
            "Subscribed mounts dropped for not applying a change's notice within 2 s",
            notice_drops.clone(),
        );
        let notice_waits = Counter::default();
        registry.register(
            "notice_waits",
            "Mounts a change of a file waited for (they may hold the file) before its reply",
            notice_waits.clone(),
        );
        Metrics {
            registry,
            calls,
            errors,
            latency,
            drc_replays,
            connections,
            notices,
            subscribers,
            refused,
            notice_drops,
            notice_waits,
        }
    }
}

impl Metrics {
    pub fn observe(&self, op: &'static str, took: Duration, ok: bool) {
        let l = Op { op };
        self.calls.get_or_create(&l).inc();
        if !ok {
            self.errors.get_or_create(&l).inc();
        }
        self.latency.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("writing to a String");
        s
    }
}

/// Serves `GET /metrics` on `listener` until the process ends (one thread; a scrape is a
/// short request, answered and closed).
pub fn serve(listener: std::net::TcpListener, server: Arc<crate::Server>) {
    std::thread::Builder::new()
        .name("fs-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
                    server.metrics.subscribers.set(server.notices.subscribers() as i64);
                    let (numbered, counted) = (server.notices.numbered(), server.metrics.notices.get());
                    server.metrics.notices.inc_by(numbered.saturating_sub(counted));
                    ("200 OK", server.metrics.render())
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .expect("a thread for --metrics");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let m = Metrics::default();
        m.observe("GETATTR", Duration::from_micros(50), true);
        m.observe("LOOKUP", Duration::from_micros(70), false);
        m.drc_replays.inc();
        let t = m.render();
        assert!(t.contains("fs_server_calls_total{op=\"GETATTR\"} 1"), "{t}");
        assert!(t.contains("fs_server_call_errors_total{op=\"LOOKUP\"} 1"), "{t}");
        assert!(t.contains("fs_server_call_seconds_count{op=\"GETATTR\"} 1"), "{t}");
        assert!(t.contains("fs_server_drc_replays_total 1"), "{t}");
        assert!(t.contains("# TYPE fs_server_call_seconds histogram"), "{t}");
    }
}
