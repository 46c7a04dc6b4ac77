//! Job files: one integer or inclusive range `A..B` per line; `#` starts a comment; blank
//! lines are ignored; a comment line `# replicas N` (1 to 9) asks for active redundancy:
//! every batch tested by N different workers, the watcher voting. A job is kept as
//! sorted, disjoint, inclusive intervals, so the primes come out ascending and a number
//! named twice is tested once.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {what}")]
pub struct JobError {
    pub line: usize,
    pub what: String,
}

/// Sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    intervals: Vec<(i64, i64)>,
    /// `# replicas N`, if the file says so.
    pub replicas: Option<u8>,
}

impl Job {
    pub fn parse(text: &str) -> Result<Job, JobError> {
        let mut raw = Vec::new();
        let mut replicas = None;
        for (i, line) in text.lines().enumerate() {
            let err = |what: String| JobError { line: i + 1, what };
            if let Some(n) = line.trim().strip_prefix('#').map(str::trim).and_then(|c| c.strip_prefix("replicas")) {
                let n: u8 = n
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| err(format!("'# replicas' wants a number from 1 to 9, not {:?}", n.trim())))?;
                replicas = Some(n);
                continue;
            }
            let body = line.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let interval = match body.split_once("..") {
                Some((a, b)) => {
                    let a = int(a.trim()).map_err(&err)?;
                    let b = int(b.trim()).map_err(&err)?;
                    if b < a {
                        return Err(err(format!("range {a}..{b} is reversed (the end is below the start)")));
                    }
                    (a, b)
                }
                None => {
                    let n = int(body).map_err(&err)?;
                    (n, n)
                }
            };
            raw.push(interval);
        }
        Ok(Job { replicas, ..Job::from_intervals(raw) })
    }

    pub fn from_intervals(mut raw: Vec<(i64, i64)>) -> Job {
        raw.sort_unstable();
        let mut intervals: Vec<(i64, i64)> = Vec::with_capacity(raw.len());
        for (a, b) in raw {
            match intervals.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => intervals.push((a, b)),
            }
        }
        Job { intervals, replicas: None }
    }

    /// How many numbers the job tests.
    pub fn count(&self) -> u128 {
        self.intervals.iter().map(|&(a, b)| (b as i128 - a as i128 + 1) as u128).sum()
    }

    pub fn intervals(&self) -> &[(i64, i64)] {
        &self.intervals
    }

    /// The job's numbers in ascending order, `size` at a time.
    pub fn batches(&self, size: usize) -> Batches<'_> {
        assert!(size > 0);
        Batches { job: self, size, interval: 0, next: self.intervals.first().map(|i| i.0) }
    }
}

fn int(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{s}` is not an integer or a range A..B"));
    }
    s.parse::<i64>().map_err(|_| format!("`{s}` does not fit in a signed 64-bit integer"))
}

pub struct Batches<'a> {
    job: &'a Job,
    size: usize,
    interval: usize,
    /// The next number to hand out; None once past the end.
    next: Option<i64>,
}

impl Iterator for Batches<'_> {
    type Item = Vec<i64>;

    fn next(&mut self) -> Option<Vec<i64>> {
        let mut out = Vec::with_capacity(self.size.min(1 << 16));
        while out.len() < self.size {
            let Some(n) = self.next else { break };
            let (_, end) = self.job.intervals[self.interval];
            let room = (self.size - out.len()) as i128;
            let last = (n as i128 + room - 1).min(end as i128) as i64;
            out.extend(n..=last);
            if last == end {
                self.interval += 1;
                self.next = self.job.intervals.get(self.interval).map(|i| i.0);
            } else {
                self.next = Some(last + 1);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_replicas_directive() {
        assert_eq!(Job::parse("# replicas 3\n1..10\n").unwrap().replicas, Some(3));
        assert_eq!(Job::parse("#replicas 1\n5").unwrap().replicas, Some(1));
        assert_eq!(Job::parse("# replicated, twice\n5").unwrap().replicas, None);
        let e = Job::parse("1\n# replicas 0\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("from 1 to 9"), "{e}");
        assert!(Job::parse("# replicas x").is_err());
    }

    #[test]
    fn numbers_ranges_comments_and_blank_lines() {
        let j = Job::parse("# primes please\n7\n\n1..10  # small\n 100..100\n-3..2\n").unwrap();
        assert_eq!(j.intervals(), &[(-3, 10), (100, 100)]);
        assert_eq!(j.count(), 15);
    }

    #[test]
    fn bad_lines_name_the_line() {
        assert_eq!(Job::parse("1\nabc\n").unwrap_err().to_string(), "line 2: `abc` is not an integer or a range A..B");
        assert_eq!(
            Job::parse("10..1").unwrap_err().to_string(),
            "line 1: range 10..1 is reversed (the end is below the start)"
        );
        assert_eq!(
            Job::parse("1..9223372036854775808").unwrap_err().to_string(),
            "line 1: `9223372036854775808` does not fit in a signed 64-bit integer"
        );
        assert!(Job::parse("1..").is_err());
        assert!(Job::parse("..5").is_err());
        assert!(Job::parse("1...5").is_err());
        assert!(Job::parse("0x10").is_err());
        assert!(Job::parse("1 2").is_err());
    }

    #[test]
    fn batches_cover_the_extremes_of_i64() {
        let j = Job::parse(&format!("{}..{}\n{}..{}", i64::MIN, i64::MIN + 2, i64::MAX - 1, i64::MAX)).unwrap();
        let b = j.batches(2).collect::<Vec<_>>();
        assert_eq!(b, vec![vec![i64::MIN, i64::MIN + 1], vec![i64::MIN + 2, i64::MAX - 1], vec![i64::MAX]]);
        assert_eq!(Job::parse("").unwrap().batches(3).count(), 0);
    }

    proptest! {
        #[test]
        fn batches_are_the_sorted_set_of_named_numbers(
            lines in prop::collection::vec((-50i64..50, 0i64..20), 0..10),
            size in 1usize..9,
        ) {
            let text: String = lines.iter().map(|(a, l)| if *l == 0 { format!("{a}\n") } else { format!("{a}..{}\n", a + l) }).collect();
            let job = Job::parse(&text).unwrap();
            let mut want: Vec<i64> = lines.iter().flat_map(|&(a, l)| a..=a + l).collect();
            want.sort();
            want.dedup();
            let batches = job.batches(size).collect::<Vec<_>>();
            prop_assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= size));
            prop_assert!(batches.iter().rev().skip(1).all(|b| b.len() == size));
            let got: Vec<i64> = batches.concat();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(job.count(), want.len() as u128);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = Job::parse(&s);
        }
    }
}
