//! Following the server's change notices (the sequencer's numbers): which to apply, in
//! which order, and when to drop everything. Pure: the notifier thread
//! ([`crate::notifier`]) feeds it and carries out its steps.
//!
//! - Notices are applied in number order; one already applied is skipped.
//! - A gap on one connection cannot happen (the server closes a connection rather than
//!   skip a notice), so one seen means something is wrong: reconnect and catch up.
//! - The answer to SUBSCRIBE brings what was missed from the server's history; if some
//!   has left it (`complete` false), or the server is another instance (it restarted and
//!   numbers from 1 again), everything cached that a notice could have invalidated is
//!   dropped.
//! - The very first subscription also drops everything: whatever was cached before it
//!   was never covered by a promise.

use fs_proto::Notice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Apply(Notice),
    /// Drop every cached attribute, name and page: a notice may have been missed.
    DropAll,
    /// Close the connection and subscribe again on a new one.
    Reconnect,
}

#[derive(Debug, Default)]
pub struct Follower {
    instance: Option<u64>,
    /// The number the next notice must have.
    next: u64,
    live: bool,
}

impl Follower {
    /// What to ask SUBSCRIBE for: the notices after this number.
    pub fn after(&self) -> u64 {
        match self.instance {
            Some(_) => self.next.saturating_sub(1),
            // Never subscribed: nothing to catch up on, just "from now on".
            None => u64::MAX,
        }
    }

    /// Subscribed and caught up: what is cached is valid until a notice says otherwise.
    pub fn live(&self) -> bool {
        self.live
    }

    pub fn instance(&self) -> Option<u64> {
        self.instance
    }

    /// The last notice applied.
    pub fn applied(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// The connection went away: no promise until subscribed again.
    pub fn disconnected(&mut self) {
        self.live = false;
    }

    /// SUBSCRIBE's answer.
    pub fn subscribed(&mut self, instance: u64, next: u64, complete: bool, mut notices: Vec<Notice>) -> Vec<Step> {
        let mut out = Vec::new();
        if self.instance != Some(instance) || !complete {
            out.push(Step::DropAll);
            if self.instance != Some(instance) {
                // Another instance's numbers mean nothing here: start from its next.
                notices.clear();
                self.next = next;
            }
        }
        self.instance = Some(instance);
        notices.sort_by_key(|n| n.seq);
        for n in notices {
            if n.seq >= self.next {
                self.next = n.seq + 1;
                out.push(Step::Apply(n));
            }
        }
        self.next = self.next.max(next);
        self.live = true;
        out
    }

    /// Pushed notices (one connection's, in order), and the number the next will get
    /// (a beat without notices tells of notices missed before a quiet spell).
    pub fn pushed(&mut self, instance: u64, next: u64, notices: Vec<Notice>) -> Vec<Step> {
        if !self.live || self.instance != Some(instance) {
            // From a connection before the current subscription: its catch-up covers it.
            return Vec::new();
        }
        if notices.is_empty() && next > self.next {
            self.live = false;
            return vec![Step::Reconnect];
        }
        let mut out = Vec::new();
        for n in notices {
            if n.seq < self.next {
                continue;
            }
            if n.seq > self.next {
                self.live = false;
                out.push(Step::Reconnect);
                return out;
            }
            self.next += 1;
            out.push(Step::Apply(n));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(seq: u64) -> Notice {
        Notice { seq, client: 1, changes: Vec::new() }
    }

    fn applied(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Apply(n) => Some(n.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_subscription_drops_everything_and_starts_from_now() {
        let mut f = Follower::default();
        assert_eq!(f.after(), u64::MAX);
        assert!(!f.live());
        assert_eq!(f.subscribed(7, 40, true, vec![]), vec![Step::DropAll]);
        assert!(f.live());
        assert_eq!(f.after(), 39);
        assert_eq!(applied(&f.pushed(7, 0, vec![n(40), n(41)])), [40, 41]);
        assert_eq!(f.applied(), 41);
    }

    #[test]
    fn repeats_are_skipped_and_a_gap_reconnects() {
        let mut f = Follower::default();
        f.subscribed(7, 1, true, vec![]);
        assert_eq!(applied(&f.pushed(7, 0, vec![n(1), n(2)])), [1, 2]);
        assert!(f.pushed(7, 0, vec![n(2)]).is_empty(), "a repeat");
        assert_eq!(f.pushed(7, 0, vec![n(4)]), vec![Step::Reconnect]);
        assert!(!f.live());
        assert!(f.pushed(7, 0, vec![n(5)]).is_empty(), "not live until subscribed again");
        assert_eq!(f.after(), 2);
        // The catch-up brings 3..5 (4 and 5 again, in any order): each applied once.
        assert_eq!(applied(&f.subscribed(7, 6, true, vec![n(4), n(3), n(5)])), [3, 4, 5]);
        assert!(f.live());
    }

    /// A beat (no notice, just the next number) tells of notices missed before a quiet
    /// spell; one that matches changes nothing.
    #[test]
    fn a_beat_reveals_notices_missed_at_the_end() {
        let mut f = Follower::default();
        f.subscribed(7, 1, true, vec![]);
        f.pushed(7, 2, vec![n(1)]);
        assert!(f.pushed(7, 2, vec![]).is_empty(), "nothing missed");
        assert_eq!(f.pushed(7, 4, vec![]), vec![Step::Reconnect], "2 and 3 never came");
        assert!(!f.live());
    }

    #[test]
    fn missed_notices_or_a_new_instance_drop_everything() {
        let mut f = Follower::default();
        f.subscribed(7, 1, true, vec![]);
        f.pushed(7, 0, vec![n(1)]);
        f.disconnected();
        let s = f.subscribed(7, 9000, false, vec![n(5000)]);
        assert_eq!(s[0], Step::DropAll, "fell out of the history");
        assert_eq!(f.after(), 8999);
        f.disconnected();
        let s = f.subscribed(8, 3, true, vec![n(1), n(2)]);
        assert_eq!(s, vec![Step::DropAll], "a restarted server: its numbers are new");
        assert_eq!(f.instance(), Some(8));
        assert_eq!(applied(&f.pushed(7, 0, vec![n(3)])), Vec::<u64>::new(), "the old instance's pushes are ignored");
        assert_eq!(applied(&f.pushed(8, 0, vec![n(3)])), [3]);
    }

    proptest! {
        /// Whatever the pushes and reconnects (repeats, losses, reorders between
        /// connections), the notices applied are strictly increasing, and after a final
        /// complete catch-up every notice of the instance was applied exactly once.
        #[test]
        fn applied_in_order_exactly_once(ops in prop::collection::vec((0u8..4, 1u64..30), 0..60)) {
            let mut f = Follower::default();
            let mut seen = Vec::new();
            let take = |steps: Vec<Step>, seen: &mut Vec<u64>| {
                for s in steps {
                    if let Step::Apply(n) = s {
                        seen.push(n.seq);
                    }
                }
            };
            take(f.subscribed(1, 1, true, vec![]), &mut seen);
            for (op, x) in ops {
                match op {
                    0 | 1 => take(f.pushed(1, 0, vec![n(x)]), &mut seen),
                    2 => f.disconnected(),
                    _ => {
                        let after = f.after();
                        let catch_up = (after + 1..=x.max(after)).map(n).collect();
                        take(f.subscribed(1, x.max(after) + 1, true, catch_up), &mut seen);
                    }
                }
            }
            let after = f.after();
            take(f.subscribed(1, 31, true, (after + 1..=30).map(n).collect()), &mut seen);
            prop_assert!(seen.windows(2).all(|w| w[0] < w[1]), "{:?}", seen);
            prop_assert_eq!(seen, (1..=30).collect::<Vec<u64>>());
        }
    }
}
