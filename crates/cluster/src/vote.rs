//! Active redundancy (lecture 3.2, 3.5): each batch is tested by `replicas` different
//! workers, and the client votes. Primality testing is a state machine (the same numbers
//! give the same primes), so the answers are compared bit for bit (by their BLAKE3 hash)
//! and the majority wins. With 2k+1 replicas up to k wrong answers per batch are masked;
//! wrong answers that agree with each other and outnumber the right ones are not (no
//! voter can tell). A worker whose answer differs from the accepted one is named; a batch
//! with no majority among all its answers is run again. Pure: no sockets.

use std::collections::{BTreeMap, HashMap};

/// What one answer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// More answers are needed (or the batch was decided before).
    Pending,
    /// A majority agreed on these primes.
    Accepted(Vec<i64>),
    /// Every answer came and no majority: run the batch again.
    Rerun,
}

#[derive(Debug, Default)]
pub struct Votes {
    replicas: u8,
    ballots: HashMap<u32, Vec<(u64, blake3::Hash, Vec<i64>)>>,
    accepted: HashMap<u32, blake3::Hash>,
    /// Workers whose answer differed from the accepted one, and on which batches.
    pub wrong: BTreeMap<u64, Vec<u32>>,
    /// Batches that found no majority (each time).
    pub no_majority: Vec<u32>,
    /// Answers per worker.
    pub answers: BTreeMap<u64, u64>,
    /// Answers from workers already found wrong (work they held or had in flight when
    /// the broker was told).
    pub after_wrong: BTreeMap<u64, u64>,
}

fn hash(primes: &[i64]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for p in primes {
        h.update(&p.to_be_bytes());
    }
    h.finalize()
}

impl Votes {
    pub fn new(replicas: u8) -> Votes {
        Votes { replicas: replicas.max(1), ..Votes::default() }
    }

    /// Worker `worker` answered `primes` for `batch`. Returns the verdict, and the
    /// workers found wrong for the first time by it.
    pub fn vote(&mut self, batch: u32, worker: u64, primes: Vec<i64>) -> (Verdict, Vec<u64>) {
        let h = hash(&primes);
        let mut newly = Vec::new();
        *self.answers.entry(worker).or_default() += 1;
        if self.wrong.contains_key(&worker) {
            *self.after_wrong.entry(worker).or_default() += 1;
        }
        if let Some(&right) = self.accepted.get(&batch) {
            // A late answer to a decided batch: still checked.
            if h != right {
                self.mark_wrong(worker, batch, &mut newly);
            }
            return (Verdict::Pending, newly);
        }
        let ballots = self.ballots.entry(batch).or_default();
        if ballots.iter().any(|b| b.0 == worker) {
            return (Verdict::Pending, newly); // the same worker twice (a resend)
        }
        ballots.push((worker, h, primes));
        let majority = usize::from(self.replicas) / 2 + 1;
        let winner = ballots.iter().map(|b| b.1).find(|h| ballots.iter().filter(|b| b.1 == *h).count() >= majority);
        if let Some(w) = winner {
            let ballots = self.ballots.remove(&batch).expect("present");
            self.accepted.insert(batch, w);
            let mut chosen = Vec::new();
            for (worker, h, primes) in ballots {
                if h == w {
                    if chosen.is_empty() {
                        chosen = primes;
                    }
                } else {
                    self.mark_wrong(worker, batch, &mut newly);
                }
            }
            return (Verdict::Accepted(chosen), newly);
        }
        if ballots.len() >= usize::from(self.replicas) {
            self.ballots.remove(&batch);
            self.no_majority.push(batch);
            return (Verdict::Rerun, newly);
        }
        (Verdict::Pending, newly)
    }

    fn mark_wrong(&mut self, worker: u64, batch: u32, newly: &mut Vec<u64>) {
        let e = self.wrong.entry(worker).or_default();
        if e.is_empty() {
            newly.push(worker);
        }
        e.push(batch);
    }

    /// The summary's lines about the vote.
    pub fn summary(&self) -> String {
        let mut s = format!("replicas: {}\n", self.replicas);
        for (w, n) in &self.answers {
            s += &format!("answers: worker {w:016x} {n}\n");
        }
        for (w, batches) in &self.wrong {
            let late = self.after_wrong.get(w).copied().unwrap_or(0);
            s += &format!("wrong answers: worker {w:016x} on batches {batches:?}; answers after that {late}\n");
        }
        if !self.no_majority.is_empty() {
            s += &format!("no majority (run again): batches {:?}\n", self.no_majority);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_majority_wins_and_the_minority_is_named() {
        let mut v = Votes::new(3);
        assert_eq!(v.vote(0, 1, vec![2, 3]), (Verdict::Pending, vec![]));
        assert_eq!(v.vote(0, 2, vec![2]), (Verdict::Pending, vec![]));
        assert_eq!(v.vote(0, 2, vec![2]), (Verdict::Pending, vec![]), "a resend does not count twice");
        assert_eq!(v.vote(0, 3, vec![2, 3]), (Verdict::Accepted(vec![2, 3]), vec![2]));
        // A late wrong answer to a decided batch is named too; a right one is not.
        assert_eq!(v.vote(0, 4, vec![3]), (Verdict::Pending, vec![4]));
        assert_eq!(v.vote(0, 5, vec![2, 3]), (Verdict::Pending, vec![]));
        assert_eq!(v.wrong[&2], vec![0]);
        // Three different answers: no majority, run again.
        assert_eq!(v.vote(1, 1, vec![5]).0, Verdict::Pending);
        assert_eq!(v.vote(1, 2, vec![7]).0, Verdict::Pending);
        assert_eq!(v.vote(1, 3, vec![]).0, Verdict::Rerun);
        assert_eq!(v.no_majority, vec![1]);
        // Worker 2 wrong again: named once, both batches listed.
        assert_eq!(v.vote(2, 2, vec![]).0, Verdict::Pending);
        assert_eq!(v.vote(2, 1, vec![11]).0, Verdict::Pending);
        assert_eq!(v.vote(2, 3, vec![11]), (Verdict::Accepted(vec![11]), vec![]));
        assert_eq!(v.wrong[&2], vec![0, 2]);
        assert!(v.summary().contains("no majority (run again): batches [1]"));
    }

    #[test]
    fn one_replica_is_accepted_at_once_and_two_must_agree() {
        let mut one = Votes::new(1);
        assert_eq!(one.vote(0, 9, vec![2]).0, Verdict::Accepted(vec![2]));
        let mut two = Votes::new(2);
        assert_eq!(two.vote(0, 1, vec![2]).0, Verdict::Pending);
        assert_eq!(two.vote(0, 2, vec![3]).0, Verdict::Rerun);
        assert_eq!(two.vote(0, 3, vec![2]).0, Verdict::Pending);
        assert_eq!(two.vote(0, 4, vec![2]).0, Verdict::Accepted(vec![2]));
    }
}
