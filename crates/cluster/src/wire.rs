//! The bytes of every prime-pipeline message. All integers are big-endian; byte 0 is the
//! tag, so a SUB socket's prefix filter selects by tag (and, with the job id that follows
//! in `n`, `p` and `d`, by job). See PROTOCOL.md, "Prime pipeline".
//!
//! | tag | direction | layout after the tag |
//! | --- | --- | --- |
//! | `S` | source -> broker | source u64, seq u64, job u64, batch u32, replicas u8, value i64 * k |
//! | `B` | source -> broker | source u64, seq u64, worker u64 (a voter's verdict: give it no more work) |
//! | `Q` | source -> broker | source u64, seq u64, nonce u64 (ping: broker publishes `h`) |
//! | `A` | broker -> source | seq u64 (acknowledged) |
//! | `E` | broker -> any | UTF-8 reason (the request was malformed and dropped) |
//! | `R` | worker -> broker | worker u64, credit u32 (hello: forget what I held) |
//! | `H` | both | worker u64 (heartbeat; from the broker the id is 0) |
//! | `W` | broker -> worker | work u64, job u64, batch u32, value i64 * k |
//! | `X` | worker -> broker | worker u64, work u64, prime i64 * k (result) |
//! | `K` | broker -> worker | work u64 (result taken) |
//! | `n` | published | job u64, seq u64, batch u32, value i64 * k (numbers received) |
//! | `p` | published | job u64, seq u64, batch u32, prime i64 * k (primes of one work item) |
//! | `d` | published | job u64, seq u64, batch u32, count u32, primes u32, worker u64 (work item done; `primes`: how many its `p` held) |
//! | `Y` | broker <-> broker | state u8 (1 primary, 2 backup, 3 active, 4 passive), term u64 (Binary Star, see `bstar`) |
//! | `h` | published | nonce u64, seq u64 (answer to `Q`: the subscriber is connected) |
//!
//! A publication's `seq` counts the broker's publications of its stream (its tag and
//! job, or tag and nonce) from 0, so a subscriber knows what it missed ([`Stream`]).

pub use crate::load::Load;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// `i64` values as they travel: their big-endian bytes, shared. The broker passes them
/// from a source's message to a worker's and to subscribers without decoding them, and
/// cloning is a reference count: a number is copied once per hop, never converted.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Values(Arc<[u8]>);

impl Values {
    pub fn from_slice(v: &[i64]) -> Values {
        Values(v.iter().flat_map(|x| x.to_be_bytes()).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.chunks_exact(8).map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
    }

    pub fn to_vec(&self) -> Vec<i64> {
        self.iter().collect()
    }
}

impl From<Vec<i64>> for Values {
    fn from(v: Vec<i64>) -> Values {
        Values::from_slice(&v)
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `replicas`: how many different workers test the batch (1: one; the voter is the
    /// client).
    Submit {
        source: u64,
        seq: u64,
        job: u64,
        batch: u32,
        replicas: u8,
        values: Values,
    },
    Ban {
        source: u64,
        seq: u64,
        worker: u64,
    },
    Ping {
        source: u64,
        seq: u64,
        nonce: u64,
    },
    Ack {
        seq: u64,
    },
    Error {
        reason: String,
    },
    /// A worker's hello, with its load (`load::Load`); from the broker (credit 0, default
    /// load): "I do not know you, say hello again".
    Ready {
        worker: u64,
        credit: u32,
        load: Load,
    },
    /// Both ways; a worker's carries its load (the broker's, the default).
    Heartbeat {
        worker: u64,
        load: Load,
    },
    /// An overloaded worker gives back an item it has not started (sender-initiated
    /// distribution); the broker answers `Taken` once the item is queued again.
    Back {
        worker: u64,
        work: u64,
    },
    Work {
        work: u64,
        job: u64,
        batch: u32,
        values: Values,
    },
    Result {
        worker: u64,
        work: u64,
        primes: Values,
    },
    Taken {
        work: u64,
    },
    Numbers {
        job: u64,
        seq: u64,
        batch: u32,
        values: Values,
    },
    Primes {
        job: u64,
        seq: u64,
        batch: u32,
        primes: Values,
    },
    Done {
        job: u64,
        seq: u64,
        batch: u32,
        count: u32,
        primes: u32,
        worker: u64,
    },
    Hello {
        nonce: u64,
        seq: u64,
    },
    /// A broker's state and term, told to its Binary Star peer every heartbeat, and its
    /// answer ([`crate::bstar`]). `state` is [`crate::bstar::State::code`].
    Peer {
        state: u8,
        term: u64,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown tag {0:#04x}")]
    UnknownTag(u8),
    #[error("message with tag '{tag}' is {len} bytes; its layout needs {want}")]
    BadLength { tag: char, len: usize, want: String },
    #[error("error text is not UTF-8")]
    NotUtf8,
}

/// Largest number of values in one message (8 MiB of values).
pub const MAX_VALUES: usize = 1 << 20;

pub mod tag {
    pub const NUMBERS: u8 = b'n';
    pub const PRIMES: u8 = b'p';
    pub const DONE: u8 = b'd';
    pub const HELLO: u8 = b'h';
}

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + 8 * self.values_len());
        match self {
            Msg::Submit { source, seq, job, batch, replicas, values } => {
                b.push(b'S');
                put(&mut b, &[*source, *seq, *job]);
                b.extend_from_slice(&batch.to_be_bytes());
                b.push(*replicas);
                put_values(&mut b, values);
            }
            Msg::Ban { source, seq, worker } => {
                b.push(b'B');
                put(&mut b, &[*source, *seq, *worker]);
            }
            Msg::Ping { source, seq, nonce } => {
                b.push(b'Q');
                put(&mut b, &[*source, *seq, *nonce]);
            }
            Msg::Ack { seq } => {
                b.push(b'A');
                put(&mut b, &[*seq]);
            }
            Msg::Error { reason } => {
                b.push(b'E');
                b.extend_from_slice(reason.as_bytes());
            }
            Msg::Ready { worker, credit, load } => {
                b.push(b'R');
                put(&mut b, &[*worker]);
                b.extend_from_slice(&credit.to_be_bytes());
                put_load(&mut b, load);
            }
            Msg::Heartbeat { worker, load } => {
                b.push(b'H');
                put(&mut b, &[*worker]);
                put_load(&mut b, load);
            }
            Msg::Back { worker, work } => {
                b.push(b'G');
                put(&mut b, &[*worker, *work]);
            }
            Msg::Work { work, job, batch, values } => {
                b.push(b'W');
                put(&mut b, &[*work, *job]);
                b.extend_from_slice(&batch.to_be_bytes());
                put_values(&mut b, values);
            }
            Msg::Result { worker, work, primes } => {
                b.push(b'X');
                put(&mut b, &[*worker, *work]);
                put_values(&mut b, primes);
            }
            Msg::Taken { work } => {
                b.push(b'K');
                put(&mut b, &[*work]);
            }
            Msg::Numbers { job, seq, batch, values } => {
                b.push(tag::NUMBERS);
                put(&mut b, &[*job, *seq]);
                b.extend_from_slice(&batch.to_be_bytes());
                put_values(&mut b, values);
            }
            Msg::Primes { job, seq, batch, primes } => {
                b.push(tag::PRIMES);
                put(&mut b, &[*job, *seq]);
                b.extend_from_slice(&batch.to_be_bytes());
                put_values(&mut b, primes);
            }
            Msg::Done { job, seq, batch, count, primes, worker } => {
                b.push(tag::DONE);
                put(&mut b, &[*job, *seq]);
                b.extend_from_slice(&batch.to_be_bytes());
                b.extend_from_slice(&count.to_be_bytes());
                b.extend_from_slice(&primes.to_be_bytes());
                put(&mut b, &[*worker]);
            }
            Msg::Hello { nonce, seq } => {
                b.push(tag::HELLO);
                put(&mut b, &[*nonce, *seq]);
            }
            Msg::Peer { state, term } => {
                b.push(b'Y');
                b.push(*state);
                put(&mut b, &[*term]);
            }
        }
        b
    }

    fn values_len(&self) -> usize {
        match self {
            Msg::Submit { values, .. } | Msg::Work { values, .. } | Msg::Numbers { values, .. } => values.len(),
            Msg::Result { primes, .. } | Msg::Primes { primes, .. } => primes.len(),
            _ => 0,
        }
    }

    /// Decodes untrusted bytes; never panics, never allocates more than the input implies.
    pub fn decode(b: &[u8]) -> Result<Msg, WireError> {
        let (&t, rest) = b.split_first().ok_or(WireError::Empty)?;
        let mut r = Reader { b: rest, tag: t as char, len: b.len() };
        let m = match t {
            b'S' => {
                let (source, seq, job, batch, replicas) = (r.u64()?, r.u64()?, r.u64()?, r.u32()?, r.u8()?);
                Msg::Submit { source, seq, job, batch, replicas, values: r.values()? }
            }
            b'B' => Msg::Ban { source: r.u64()?, seq: r.u64()?, worker: r.end_u64()? },
            b'Q' => Msg::Ping { source: r.u64()?, seq: r.u64()?, nonce: r.end_u64()? },
            b'A' => Msg::Ack { seq: r.end_u64()? },
            b'E' => Msg::Error { reason: String::from_utf8(rest.to_vec()).map_err(|_| WireError::NotUtf8)? },
            b'R' => Msg::Ready { worker: r.u64()?, credit: r.u32()?, load: r.end_load()? },
            b'H' => Msg::Heartbeat { worker: r.u64()?, load: r.end_load()? },
            b'G' => Msg::Back { worker: r.u64()?, work: r.end_u64()? },
            b'W' => {
                let (work, job, batch) = (r.u64()?, r.u64()?, r.u32()?);
                Msg::Work { work, job, batch, values: r.values()? }
            }
            b'X' => {
                let (worker, work) = (r.u64()?, r.u64()?);
                Msg::Result { worker, work, primes: r.values()? }
            }
            b'K' => Msg::Taken { work: r.end_u64()? },
            b'Y' => Msg::Peer { state: r.u8()?, term: r.end_u64()? },
            tag::NUMBERS => {
                let (job, seq, batch) = (r.u64()?, r.u64()?, r.u32()?);
                Msg::Numbers { job, seq, batch, values: r.values()? }
            }
            tag::PRIMES => {
                let (job, seq, batch) = (r.u64()?, r.u64()?, r.u32()?);
                Msg::Primes { job, seq, batch, primes: r.values()? }
            }
            tag::DONE => {
                let (job, seq, batch, count, primes) = (r.u64()?, r.u64()?, r.u32()?, r.u32()?, r.u32()?);
                Msg::Done { job, seq, batch, count, primes, worker: r.end_u64()? }
            }
            tag::HELLO => Msg::Hello { nonce: r.u64()?, seq: r.end_u64()? },
            other => return Err(WireError::UnknownTag(other)),
        };
        Ok(m)
    }
}

impl Msg {
    /// A publication's stream (tag and job, or tag and nonce) and sequence number.
    pub fn stream(&self) -> Option<((u8, u64), u64)> {
        match self {
            Msg::Numbers { job, seq, .. } => Some(((tag::NUMBERS, *job), *seq)),
            Msg::Primes { job, seq, .. } => Some(((tag::PRIMES, *job), *seq)),
            Msg::Done { job, seq, .. } => Some(((tag::DONE, *job), *seq)),
            Msg::Hello { nonce, seq } => Some(((tag::HELLO, *nonce), *seq)),
            _ => None,
        }
    }

    /// Sets a publication's sequence number.
    pub fn set_seq(&mut self, n: u64) {
        match self {
            Msg::Numbers { seq, .. } | Msg::Primes { seq, .. } | Msg::Done { seq, .. } | Msg::Hello { seq, .. } => {
                *seq = n
            }
            _ => {}
        }
    }
}

/// What a subscriber learns from a publication's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next of its stream.
    InOrder,
    /// The first seen of its stream, which had `at` publications before it (a
    /// subscriber started late, when `at` > 0).
    First { at: u64 },
    /// `missed` publications of the stream never arrived, from number `from` on.
    Gap { from: u64, missed: u64 },
}

/// A subscriber's view of the broker's streams: which number it expects next of each.
#[derive(Debug, Default)]
pub struct Stream {
    next: std::collections::HashMap<(u8, u64), u64>,
    /// Publications known missed, in total.
    pub missed: u64,
}

impl Stream {
    pub fn see(&mut self, m: &Msg) -> Seen {
        let Some((key, seq)) = m.stream() else { return Seen::InOrder };
        let seen = match self.next.get(&key) {
            None => Seen::First { at: seq },
            Some(&n) if seq == n => Seen::InOrder,
            Some(&n) if seq > n => Seen::Gap { from: n, missed: seq - n },
            Some(_) => Seen::InOrder, // a repeat or a restarted broker: nothing missed
        };
        if let Seen::Gap { missed, .. } = seen {
            self.missed += missed;
        }
        self.next.insert(key, seq + 1);
        seen
    }
}

/// The SUB prefix that selects one tag of one job: the tag byte, then the job id.
pub fn job_prefix(tag: u8, job: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = tag;
    p[1..].copy_from_slice(&job.to_be_bytes());
    p
}

fn put(b: &mut Vec<u8>, xs: &[u64]) {
    for x in xs {
        b.extend_from_slice(&x.to_be_bytes());
    }
}

fn put_load(b: &mut Vec<u8>, l: &Load) {
    for x in [l.cpu_share, l.mem_pressure, l.loadavg, l.held] {
        b.extend_from_slice(&x.to_be_bytes());
    }
}

fn put_values(b: &mut Vec<u8>, xs: &Values) {
    b.extend_from_slice(&xs.0);
}

struct Reader<'a> {
    b: &'a [u8],
    tag: char,
    len: usize,
}

impl Reader<'_> {
    fn bad(&self) -> WireError {
        let want = match self.tag {
            'S' => "30 + 8k",
            'B' => "25",
            'Q' => "25",
            'A' | 'K' => "9",
            'h' | 'H' | 'G' => "17",
            'R' => "21",
            'W' => "21 + 8k",
            'X' => "17 + 8k",
            'n' | 'p' => "21 + 8k",
            'd' => "37",
            'Y' => "10",
            _ => "?",
        };
        WireError::BadLength { tag: self.tag, len: self.len, want: want.into() }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        if self.b.len() < N {
            return Err(self.bad());
        }
        let (head, rest) = self.b.split_at(N);
        self.b = rest;
        Ok(head.try_into().expect("length checked"))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.take::<8>().map(u64::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.take::<4>().map(u32::from_be_bytes)
    }

    /// The rest of the message as values; its length must be a multiple of 8.
    fn values(&mut self) -> Result<Values, WireError> {
        if !self.b.len().is_multiple_of(8) || self.b.len() / 8 > MAX_VALUES {
            return Err(self.bad());
        }
        let v = Values(self.b.into());
        self.b = &[];
        Ok(v)
    }

    /// The last field: nothing may follow it.
    fn end_u64(&mut self) -> Result<u64, WireError> {
        let v = self.u64()?;
        self.end(v)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.take::<1>().map(|b| b[0])
    }

    fn end_load(&mut self) -> Result<Load, WireError> {
        let mut f = [0u16; 4];
        for x in &mut f {
            *x = self.take::<2>().map(u16::from_be_bytes)?;
        }
        let [cpu_share, mem_pressure, loadavg, held] = f;
        self.end(Load { cpu_share, mem_pressure, loadavg, held })
    }

    fn end<T>(&self, v: T) -> Result<T, WireError> {
        if self.b.is_empty() {
            Ok(v)
        } else {
            Err(self.bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_bytes() {
        // tag 'p', job 1, publication 5 of its stream, batch 2, primes [3, -1]
        let m = Msg::Primes { job: 1, seq: 5, batch: 2, primes: vec![3, -1].into() };
        let want: Vec<u8> = [
            &b"p"[..],
            &[0, 0, 0, 0, 0, 0, 0, 1],                         // job
            &[0, 0, 0, 0, 0, 0, 0, 5],                         // seq
            &[0, 0, 0, 2],                                     // batch
            &[0, 0, 0, 0, 0, 0, 0, 3],                         // 3
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // -1
        ]
        .concat();
        assert_eq!(m.encode(), want);
        assert_eq!(Msg::decode(&want), Ok(m));
        assert!(Msg::Primes { job: 1, seq: 0, batch: 0, primes: Values::default() }
            .encode()
            .starts_with(&job_prefix(b'p', 1)));
        assert_eq!(Msg::Hello { nonce: 1, seq: 2 }.encode(), [b'h', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(Msg::Ack { seq: 258 }.encode(), [b'A', 0, 0, 0, 0, 0, 0, 1, 2]);
        // A worker's heartbeat: id 1, CPU share 500 permille, memory pressure 2, load
        // average 0.75 per core, 3 items held.
        let load = Load { cpu_share: 500, mem_pressure: 2, loadavg: 75, held: 3 };
        assert_eq!(
            Msg::Heartbeat { worker: 1, load }.encode(),
            [b'H', 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xf4, 0, 2, 0, 75, 0, 3]
        );
        // A broker tells its Binary Star peer: active (3), term 2.
        assert_eq!(Msg::Peer { state: 3, term: 2 }.encode(), [b'Y', 3, 0, 0, 0, 0, 0, 0, 0, 2]);
    }

    /// A subscriber's view of the streams: in order, a gap (how many, from which), a
    /// stream joined late, streams of other jobs apart, a repeat missing nothing.
    #[test]
    fn sequence_numbers_show_what_was_missed() {
        let p = |job, seq| Msg::Primes { job, seq, batch: 0, primes: Values::default() };
        let mut s = Stream::default();
        assert_eq!(s.see(&p(1, 0)), Seen::First { at: 0 });
        assert_eq!(s.see(&p(1, 1)), Seen::InOrder);
        assert_eq!(s.see(&p(1, 4)), Seen::Gap { from: 2, missed: 2 });
        assert_eq!(s.see(&p(2, 7)), Seen::First { at: 7 }, "joined job 2 late");
        assert_eq!(s.see(&p(1, 5)), Seen::InOrder);
        assert_eq!(s.see(&p(1, 5)), Seen::InOrder, "a repeat");
        let d = Msg::Done { job: 1, seq: 0, batch: 0, count: 0, primes: 0, worker: 0 };
        assert_eq!(s.see(&d), Seen::First { at: 0 }, "another tag is another stream");
        assert_eq!(s.missed, 2);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        assert_eq!(Msg::decode(&[]), Err(WireError::Empty));
        assert_eq!(Msg::decode(b"z"), Err(WireError::UnknownTag(b'z')));
        let e = Msg::decode(b"S123").unwrap_err();
        assert_eq!(e.to_string(), "message with tag 'S' is 4 bytes; its layout needs 30 + 8k");
        let mut ack = Msg::Ack { seq: 1 }.encode();
        ack.push(0);
        assert!(Msg::decode(&ack).is_err());
        let mut sub = Msg::Submit { source: 1, seq: 2, job: 3, batch: 4, replicas: 1, values: vec![5].into() }.encode();
        sub.pop();
        assert!(Msg::decode(&sub).is_err());
    }

    fn any_load() -> impl Strategy<Value = Load> {
        any::<[u16; 4]>().prop_map(|[cpu_share, mem_pressure, loadavg, held]| Load {
            cpu_share,
            mem_pressure,
            loadavg,
            held,
        })
    }

    fn any_msg() -> impl Strategy<Value = Msg> {
        let vals = prop::collection::vec(any::<i64>(), 0..20).prop_map(Values::from);
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u8>(), vals.clone()).prop_map(
                |(source, seq, job, batch, replicas, values)| Msg::Submit { source, seq, job, batch, replicas, values }
            ),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(source, seq, worker)| Msg::Ban {
                source,
                seq,
                worker
            }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(source, seq, nonce)| Msg::Ping {
                source,
                seq,
                nonce
            }),
            any::<u64>().prop_map(|seq| Msg::Ack { seq }),
            ".*".prop_map(|reason| Msg::Error { reason }),
            (any::<u64>(), any::<u32>(), any_load()).prop_map(|(worker, credit, load)| Msg::Ready {
                worker,
                credit,
                load
            }),
            (any::<u64>(), any_load()).prop_map(|(worker, load)| Msg::Heartbeat { worker, load }),
            (any::<u64>(), any::<u64>()).prop_map(|(worker, work)| Msg::Back { worker, work }),
            (any::<u64>(), any::<u64>(), any::<u32>(), vals.clone()).prop_map(|(work, job, batch, values)| Msg::Work {
                work,
                job,
                batch,
                values
            }),
            (any::<u64>(), any::<u64>(), vals.clone()).prop_map(|(worker, work, primes)| Msg::Result {
                worker,
                work,
                primes
            }),
            any::<u64>().prop_map(|work| Msg::Taken { work }),
            (any::<u64>(), any::<u64>(), any::<u32>(), vals.clone())
                .prop_map(|(job, seq, batch, values)| { Msg::Numbers { job, seq, batch, values } }),
            (any::<u64>(), any::<u64>(), any::<u32>(), vals).prop_map(|(job, seq, batch, primes)| Msg::Primes {
                job,
                seq,
                batch,
                primes
            }),
            (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
                |(job, seq, batch, count, primes, worker)| Msg::Done { job, seq, batch, count, primes, worker }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(nonce, seq)| Msg::Hello { nonce, seq }),
            (any::<u8>(), any::<u64>()).prop_map(|(state, term)| Msg::Peer { state, term }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(m in any_msg()) {
            prop_assert_eq!(Msg::decode(&m.encode()), Ok(m));
        }

        #[test]
        fn random_and_truncated_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..64), m in any_msg(), cut in 0usize..40) {
            let _ = Msg::decode(&b);
            let e = m.encode();
            let _ = Msg::decode(&e[..cut.min(e.len())]);
        }
    }
}
