//! Calls per operation with latency percentiles, for `fs-client status`. Pure: the
//! caller measures and passes the latency in.

use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies are counted in buckets of powers of two microseconds: bucket `i` holds
/// those below `2^i` us (the last one, everything longer).
const BUCKETS: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct OpStats {
    pub calls: u64,
    pub errors: u64,
    buckets: [u64; BUCKETS],
}

impl OpStats {
    /// The latency below which a fraction `q` of the calls ended (a bucket's upper
    /// bound, so at most twice the truth), in microseconds.
    pub fn percentile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return 1u64 << i;
            }
        }
        1u64 << (BUCKETS - 1)
    }
}

#[derive(Debug, Clone, Default)]
pub struct CallStats {
    pub ops: BTreeMap<&'static str, OpStats>,
    /// Calls sent again on a new connection.
    pub retransmitted: u64,
}

impl CallStats {
    pub fn record(&mut self, op: &'static str, latency: Duration, ok: bool) {
        let s = self.ops.entry(op).or_default();
        s.calls += 1;
        if !ok {
            s.errors += 1;
        }
        let us = latency.as_micros().max(1) as u64;
        let i = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        s.buckets[i] += 1;
    }

    /// One line per operation: `call OP N calls, E errors, p50 <= X us, p99 <= Y us`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (op, o) in &self.ops {
            s += &format!(
                "call {op} {} calls, {} errors, p50 <= {} us, p99 <= {} us\n",
                o.calls,
                o.errors,
                o.percentile(0.5),
                o.percentile(0.99)
            );
        }
        s += &format!("retransmitted calls {}\n", self.retransmitted);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_power_of_two_buckets() {
        let mut c = CallStats::default();
        for us in 1..=100u64 {
            c.record("GETATTR", Duration::from_micros(us), us != 7);
        }
        c.record("READ", Duration::from_millis(5), true);
        let g = &c.ops["GETATTR"];
        assert_eq!((g.calls, g.errors), (100, 1));
        // 50 us is in the bucket below 64; 99 us in the one below 128.
        assert_eq!(g.percentile(0.5), 64);
        assert_eq!(g.percentile(0.99), 128);
        assert_eq!(c.ops["READ"].percentile(0.5), 8192);
        let text = c.render();
        assert!(text.contains("call GETATTR 100 calls, 1 errors, p50 <= 64 us, p99 <= 128 us"), "{text}");
        assert!(text.contains("retransmitted calls 0"));
        assert_eq!(OpStats::default().percentile(0.5), 0);
    }
}
