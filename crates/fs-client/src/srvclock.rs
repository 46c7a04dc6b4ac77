//! Cristian's algorithm (lecture 2.3.1): the mount's view of the server's clock.
//!
//! The mount asks the server's time (the TIME call) several times; the answer with the
//! shortest round trip wins, and the offset is `server time + rtt / 2 - local receive
//! time`, good to within `rtt / 2` (the server answered at some moment of the round trip).
//! The first offset is taken as it is (nobody has seen a view yet); every later change
//! is slewed, never stepped: the view moves at most 1/[`SLEW`] faster or slower than the
//! local clock until it has caught up, and never runs backwards. Pure: times are passed
//! in.

/// Nanoseconds: wall-clock times since the Unix epoch, or durations.
pub type Nanos = i128;

/// The view runs at most 1/SLEW faster or slower than the local clock while catching up
/// (1%: a second's correction takes 100 s; the notes' "anti-leap milliseconds").
pub const SLEW: i128 = 100;

/// One TIME call: its round trip (by the monotonic clock), the local wall-clock time
/// the answer arrived, and the server's time in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rtt: Nanos,
    pub received: Nanos,
    pub server: Nanos,
}

/// Server minus client, and the bound on its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub offset: Nanos,
    pub bound: Nanos,
}

/// The estimate from the sample with the shortest round trip.
pub fn estimate(samples: &[Sample]) -> Option<Estimate> {
    let best = samples.iter().filter(|s| s.rtt >= 0).min_by_key(|s| s.rtt)?;
    Some(Estimate { offset: best.server + best.rtt / 2 - best.received, bound: best.rtt / 2 })
}

/// Local time, read once by the caller: the wall clock and a monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: Nanos,
    pub mono: Nanos,
}

#[derive(Debug, Clone, Default)]
pub struct ServerClock {
    measured: Option<Estimate>,
    /// The offset the view applies, as of monotonic time `at`.
    applied: Nanos,
    at: Nanos,
    /// The last view given out (it never goes below).
    last: Nanos,
}

impl ServerClock {
    /// A new measurement. The first is applied at once; later ones are slewed toward.
    pub fn update(&mut self, e: Estimate, now: Now) {
        if self.measured.is_none() {
            self.applied = e.offset;
            self.at = now.mono;
        } else {
            self.advance(now);
        }
        self.measured = Some(e);
    }

    /// Moves the applied offset toward the measured one, as far as the time since the
    /// last move allows.
    fn advance(&mut self, now: Now) {
        let elapsed = (now.mono - self.at).max(0);
        self.at = self.at.max(now.mono);
        if let Some(m) = self.measured {
            let step = elapsed / SLEW;
            self.applied += (m.offset - self.applied).clamp(-step, step);
        }
    }

    /// The server's time now, as this mount sees it (the local time if never measured).
    pub fn view(&mut self, now: Now) -> Nanos {
        self.advance(now);
        let v = (now.wall + self.applied).max(self.last);
        self.last = v;
        v
    }

    /// The last measurement.
    pub fn measured(&self) -> Option<Estimate> {
        self.measured
    }

    /// The offset the view applies now (differs from the measured one while slewing).
    pub fn applied(&self) -> Nanos {
        self.applied
    }
}

/// Seconds with a sign and nine decimals.
pub fn seconds(n: Nanos) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let a = n.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Nanos = 1_000_000_000;
    const MS: Nanos = 1_000_000;

    #[test]
    fn the_shortest_round_trip_wins_and_bounds_the_error() {
        // Server an hour ahead; true offset 3600 s. Answers stamped mid-round-trip.
        let sample = |rtt: Nanos, at: Nanos| Sample { rtt, received: at, server: at - rtt / 2 + 3600 * S };
        let e = estimate(&[sample(9 * MS, 100 * S), sample(MS, 200 * S), sample(4 * MS, 300 * S)]).unwrap();
        assert_eq!(e, Estimate { offset: 3600 * S, bound: MS / 2 });
        // Answered at the very start of the round trip: off by the bound, no more.
        let skewed = Sample { rtt: 2 * MS, received: 10 * S, server: 10 * S - 2 * MS - 3600 * S };
        let e = estimate(&[skewed]).unwrap();
        assert!((e.offset - -3600 * S).abs() <= e.bound);
        assert_eq!(estimate(&[]), None);
    }

    #[test]
    fn a_correction_is_slewed_never_stepped() {
        let mut c = ServerClock::default();
        let at = |t: Nanos| Now { wall: 1_000 * S + t, mono: t };
        assert_eq!(c.view(at(0)), 1_000 * S, "unmeasured: the local time");
        c.update(Estimate { offset: 3600 * S, bound: MS }, at(0));
        assert_eq!(c.view(at(0)), 4_600 * S, "the first measurement is taken as it is");
        // Two seconds back: the view slows down by 1% until it has caught up.
        c.update(Estimate { offset: 3598 * S, bound: MS }, at(S));
        assert_eq!(c.view(at(2 * S)), 4_602 * S - 10 * MS);
        assert_eq!(c.view(at(100 * S)), 4_700 * S - 990 * MS);
        assert_eq!(c.view(at(300 * S)), 4_898 * S, "caught up after 200 s");
        assert_eq!(c.applied(), 3598 * S);
    }

    proptest! {
        /// Whatever the measurements and however the local wall clock jumps, the view
        /// never runs backwards, and between two reads it moves by the monotonic time
        /// passed plus the wall clock's own jump, give or take 1%.
        #[test]
        fn the_view_is_monotonic_and_slewed(
            steps in prop::collection::vec((0i64..2_000, -5_000i64..5_000, any::<bool>(), -10_000i64..10_000), 1..200)
        ) {
            let mut c = ServerClock::default();
            let (mut mono, mut wall) = (0i128, 1_000 * S);
            c.update(Estimate { offset: 0, bound: MS }, Now { wall, mono });
            let mut last = c.view(Now { wall, mono });
            for (dt_ms, jump_ms, measure, offset_ms) in steps {
                let dt = Nanos::from(dt_ms) * MS;
                mono += dt;
                wall += dt;
                if jump_ms.abs() > 4_000 {
                    wall += Nanos::from(jump_ms) * MS; // the local clock stepped
                }
                let before = c.applied();
                if measure {
                    c.update(Estimate { offset: Nanos::from(offset_ms) * MS, bound: MS }, Now { wall, mono });
                }
                let v = c.view(Now { wall, mono });
                prop_assert!(v >= last, "the view ran backwards");
                prop_assert!((c.applied() - before).abs() <= dt / SLEW + 1, "stepped, not slewed");
                last = v;
            }
        }
    }
}
