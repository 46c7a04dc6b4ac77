//! Write-back buffering for one file: dirty byte ranges coalesced into extents, cut into
//! large WRITEs. Pure: the caller sends what [`Dirty::take_full`] and [`Dirty::take_all`]
//! return.
//!
//! Appending to the end of an extent (the common case: a program writing a file front
//! to back in small pieces) extends it in place, so coalescing costs one copy per byte.

use std::collections::BTreeMap;

#[derive(Default, Debug)]
pub struct Dirty {
    /// Start offset -> bytes. Extents never overlap or touch (touching ones are merged).
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
}

impl Dirty {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// How many separate runs of dirty bytes there are.
    pub fn runs(&self) -> usize {
        self.extents.len()
    }

    /// End of the highest dirty byte, for the file size the kernel should see.
    pub fn end(&self) -> Option<u64> {
        self.extents.iter().next_back().map(|(s, v)| s + v.len() as u64)
    }

    /// Records a write; newer bytes replace older ones where they overlap.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Fast path: extends (or overwrites within) the extent that starts at or before it.
        if let Some((&s, v)) = self.extents.range_mut(..=offset).next_back() {
            let v_end = s + v.len() as u64;
            if offset <= v_end {
                let next_start = self.extents.range(offset + 1..).next().map(|(&k, _)| k);
                if next_start.is_none_or(|n| end < n) {
                    let v = self.extents.get_mut(&s).expect("found");
                    let at = (offset - s) as usize;
                    let overlap = (v.len() - at).min(data.len());
                    v[at..at + overlap].copy_from_slice(&data[..overlap]);
                    v.extend_from_slice(&data[overlap..]);
                    self.bytes += data.len() - overlap;
                    return;
                }
            }
        }
        // General case: merge every extent that overlaps or touches [offset, end).
        let touching: Vec<u64> =
            self.extents.range(..=end).filter(|(&s, v)| s + v.len() as u64 >= offset).map(|(&s, _)| s).collect();
        if touching.is_empty() {
            self.bytes += data.len();
            self.extents.insert(offset, data.to_vec());
            return;
        }
        let start = touching.first().map_or(offset, |&s| s.min(offset));
        let mut merged_end = end;
        for s in &touching {
            merged_end = merged_end.max(s + self.extents[s].len() as u64);
        }
        let mut merged = vec![0u8; (merged_end - start) as usize];
        for s in touching {
            let v = self.extents.remove(&s).expect("listed");
            self.bytes -= v.len();
            let at = (s - start) as usize;
            merged[at..at + v.len()].copy_from_slice(&v);
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len();
        self.extents.insert(start, merged);
    }

    /// Removes and returns `chunk`-sized pieces of extents that have reached that size
    /// (what is ready to go as full-size WRITEs); shorter tails stay to grow.
    pub fn take_full(&mut self, chunk: usize) -> Vec<(u64, Vec<u8>)> {
        let big: Vec<u64> = self.extents.iter().filter(|(_, v)| v.len() >= chunk).map(|(&s, _)| s).collect();
        let mut out = Vec::new();
        for s in big {
            let mut v = self.extents.remove(&s).expect("listed");
            self.bytes -= v.len();
            let mut off = s;
            while v.len() >= chunk {
                let rest = v.split_off(chunk);
                out.push((off, v));
                off += chunk as u64;
                v = rest;
            }
            if !v.is_empty() {
                self.bytes += v.len();
                self.extents.insert(off, v);
            }
        }
        out
    }

    /// Removes and returns everything, in pieces of at most `chunk` bytes.
    pub fn take_all(&mut self, chunk: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for (s, v) in std::mem::take(&mut self.extents) {
            if v.len() <= chunk {
                out.push((s, v));
            } else {
                for (i, piece) in v.chunks(chunk).enumerate() {
                    out.push((s + (i * chunk) as u64, piece.to_vec()));
                }
            }
        }
        self.bytes = 0;
        out
    }

    /// Records a write older than every dirty byte (one being resent after a server
    /// restart): it fills only the gaps, so newer bytes buffered since keep winning.
    pub fn write_older(&mut self, offset: u64, data: &[u8]) {
        for (s, e) in self.gaps(offset, offset + data.len() as u64) {
            self.write(s, &data[(s - offset) as usize..(e - offset) as usize]);
        }
    }

    /// The parts of `[offset, end)` no buffered byte covers.
    pub fn gaps(&self, offset: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = offset;
        let first = self.extents.range(..=offset).next_back().map(|(&s, _)| s).unwrap_or(offset);
        for (&s, v) in self.extents.range(first..end) {
            let e = s + v.len() as u64;
            if e <= at {
                continue;
            }
            if s > at {
                gaps.push((at, s));
            }
            at = at.max(e);
        }
        if at < end {
            gaps.push((at, end));
        }
        gaps
    }

    /// Forgets dirty bytes at or beyond `size` (a truncate made them moot).
    pub fn truncate(&mut self, size: u64) {
        let keys: Vec<u64> = self.extents.keys().copied().collect();
        for s in keys {
            let v = self.extents.get_mut(&s).expect("listed");
            if s >= size {
                self.bytes -= v.len();
                self.extents.remove(&s);
            } else if s + v.len() as u64 > size {
                let keep = (size - s) as usize;
                self.bytes -= v.len() - keep;
                v.truncate(keep);
            }
        }
    }
}

/// Writes the server acknowledged as UNSTABLE and has not yet committed: kept until a
/// COMMIT answers with the verifier they were written under (RFC 1813 3.3.7 and 3.3.21),
/// and sent again if it answers with another (the server restarted and may have lost
/// them).
#[derive(Default, Debug)]
pub struct Unstable {
    /// (offset, bytes, write verifier), oldest first: resent in this order, a newer
    /// write over an older one wins as it did the first time.
    writes: Vec<(u64, Vec<u8>, u64)>,
    bytes: usize,
    /// Ranges forgotten since the last [`Unstable::take`]: a batch out for a COMMIT
    /// must not bring them back either.
    forgotten: Vec<(u64, u64)>,
}

/// What a COMMIT's answer means for the writes it covered.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Every write is on stable storage.
    Clean,
    /// The server restarted: these writes must be sent again (back into [`Dirty`]).
    Resend(Vec<(u64, Vec<u8>)>),
}

/// A batch taken out of [`Unstable`] for one COMMIT.
#[derive(Debug, Default)]
pub struct Batch(Vec<(u64, Vec<u8>, u64)>);

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|w| w.1.len()).sum()
    }

    /// The COMMIT answered with `verifier`: writes made under another one are resent,
    /// less what a newer write of the batch covers, whatever its verifier (a write made
    /// after a takeover, under the new one, must not be overwritten by an older one made
    /// before it: fsx across failovers found that).
    pub fn committed(self, verifier: u64) -> Committed {
        if self.0.iter().all(|w| w.2 == verifier) {
            return Committed::Clean;
        }
        let mut newer = Dirty::default();
        let mut resend = Vec::new();
        for (off, data, v) in self.0.into_iter().rev() {
            if v != verifier {
                for (s, e) in newer.gaps(off, off + data.len() as u64) {
                    resend.push((s, data[(s - off) as usize..(e - off) as usize].to_vec()));
                }
            }
            newer.write_older(off, &data);
        }
        resend.sort_by_key(|w| w.0);
        if resend.is_empty() {
            Committed::Clean
        } else {
            Committed::Resend(resend)
        }
    }
}

impl Unstable {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, offset: u64, data: Vec<u8>, verifier: u64) {
        self.bytes += data.len();
        self.writes.push((offset, data, verifier));
    }

    /// Everything so far, for a COMMIT.
    pub fn take(&mut self) -> Batch {
        self.bytes = 0;
        self.forgotten.clear();
        Batch(std::mem::take(&mut self.writes))
    }

    /// The COMMIT failed: the batch is still uncommitted (older than anything since),
    /// less what was forgotten while it was out.
    pub fn restore(&mut self, batch: Batch) {
        let newer = std::mem::replace(&mut self.writes, batch.0);
        for (s, e) in std::mem::take(&mut self.forgotten) {
            self.forget(s, e);
        }
        self.writes.extend(newer);
        self.bytes = self.writes.iter().map(|w| w.1.len()).sum();
    }

    /// What a batch being resent must not overwrite: the ranges written since it was
    /// taken (newer data) and those forgotten since (truncated, punched, zeroed).
    pub fn newer_than_batch(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.writes.iter().map(|(o, d, _)| (*o, o + d.len() as u64)).collect();
        v.extend_from_slice(&self.forgotten);
        v
    }

    /// Forgets the bytes in `[start, end)`: a truncate, a punched hole or a zeroed range
    /// replaced them on the server, and resending them after a restart would bring the
    /// old data back.
    pub fn forget(&mut self, start: u64, end: u64) {
        self.forgotten.push((start, end));
        let mut kept = Vec::with_capacity(self.writes.len());
        for (off, data, v) in std::mem::take(&mut self.writes) {
            let w_end = off + data.len() as u64;
            if w_end <= start || off >= end {
                kept.push((off, data, v));
                continue;
            }
            if off < start {
                kept.push((off, data[..(start - off) as usize].to_vec(), v));
            }
            if w_end > end {
                kept.push((end, data[(end - off) as usize..].to_vec(), v));
            }
        }
        self.bytes = kept.iter().map(|w| w.1.len()).sum();
        self.writes = kept;
    }
}

/// WRITEs taken out of [`Dirty`] and not yet answered, oldest first. A WRITE waits
/// while an older one overlapping it is still on its way, so the server applies
/// overlapping writes in the order they were made (fsx found two overlapping WRITEs in
/// flight at once, landing the older one last).
#[derive(Default, Debug)]
pub struct InFlight {
    /// (sequence, start, end).
    sending: Vec<(u64, u64, u64)>,
    next_seq: u64,
}

impl InFlight {
    /// Registers chunks just taken out of [`Dirty`] as on their way, numbering them in
    /// order. Call it in the same critical section as the take: registered any later, a
    /// reader could see neither dirty bytes nor a write in flight and read from the
    /// server before the data got there (fsx found that: a short read at a block edge).
    pub fn queue(&mut self, chunks: Vec<(u64, Vec<u8>)>) -> Vec<(u64, u64, Vec<u8>)> {
        chunks
            .into_iter()
            .map(|(off, data)| {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.sending.push((seq, off, off + data.len() as u64));
                (seq, off, data)
            })
            .collect()
    }

    /// Whether WRITE `seq` of `[start, end)` must still wait for an older overlapping one.
    pub fn blocked(&self, seq: u64, start: u64, end: u64) -> bool {
        self.sending.iter().any(|&(q, s, e)| q < seq && s < end && start < e)
    }

    /// WRITE `seq` was answered (or failed).
    pub fn done(&mut self, seq: u64) {
        self.sending.retain(|&(q, _, _)| q != seq);
    }

    pub fn is_empty(&self) -> bool {
        self.sending.is_empty()
    }

    /// The ranges on their way now.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.sending.iter().map(|&(_, s, e)| (s, e)).collect()
    }
}

/// `writes` less every byte inside one of `holes` (`[start, end)` ranges): what an old
/// write may still put back without overwriting anything newer.
pub fn subtract(writes: Vec<(u64, Vec<u8>)>, holes: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
    let mut out = writes;
    for &(hs, he) in holes {
        let mut next = Vec::with_capacity(out.len());
        for (off, data) in out {
            let end = off + data.len() as u64;
            if end <= hs || off >= he {
                next.push((off, data));
                continue;
            }
            if off < hs {
                next.push((off, data[..(hs - off) as usize].to_vec()));
            }
            if end > he {
                next.push((he, data[(he - off) as usize..].to_vec()));
            }
        }
        out = next;
    }
    out
}

/// Whether the change attribute a COMMIT reports after it is ours to adopt: only when
/// the file was, just before the COMMIT, as our last WRITE left it (`last_write_change`,
/// 0: no WRITE yet). Another client's write in between makes it theirs, and our cached
/// data must not be taken as current (RFC 1813 2.6's weak cache consistency: post-op
/// attributes are adopted only when the pre-op ones match what we knew). A background
/// COMMIT after close once took another client's write as ours (seen as 599 for 600).
pub fn commit_change_is_ours(last_write_change: u64, pre_op_ctime: Option<fs_proto::Timespec>) -> bool {
    last_write_change != 0 && pre_op_ctime.map(|t| t.change()) == Some(last_write_change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Applies the extents to a flat model of the file.
    fn flatten(d: &Dirty, size: usize) -> Vec<Option<u8>> {
        let mut f = vec![None; size];
        for (s, v) in &d.extents {
            for (i, b) in v.iter().enumerate() {
                f[*s as usize + i] = Some(*b);
            }
        }
        f
    }

    #[test]
    fn appends_coalesce() {
        let mut d = Dirty::default();
        for i in 0..100u64 {
            d.write(i * 10, &[i as u8; 10]);
        }
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.bytes(), 1000);
        let full = d.take_full(300);
        assert_eq!(full.iter().map(|(o, v)| (*o, v.len())).collect::<Vec<_>>(), vec![(0, 300), (300, 300), (600, 300)]);
        assert_eq!(d.bytes(), 100);
        assert_eq!(d.end(), Some(1000));
        let rest = d.take_all(64);
        assert_eq!(rest.iter().map(|(o, v)| (*o, v.len())).collect::<Vec<_>>(), vec![(900, 64), (964, 36)]);
        assert!(d.is_empty());
    }

    #[test]
    fn overlaps_and_gaps() {
        let mut d = Dirty::default();
        d.write(10, b"aaaa");
        d.write(20, b"bbbb");
        d.write(12, b"XXXXXXXXXX"); // 12..22 bridges both
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[&10], b"aaXXXXXXXXXXbb");
        d.truncate(15);
        assert_eq!(d.extents[&10], b"aaXXX");
        assert_eq!(d.bytes(), 5);
    }

    #[test]
    fn an_older_write_fills_only_gaps() {
        let mut d = Dirty::default();
        d.write(4, b"NN");
        d.write(10, b"MM");
        d.write_older(0, b"oooooooooooooo");
        assert_eq!(flatten(&d, 14).iter().map(|b| b.unwrap()).collect::<Vec<_>>(), b"ooooNNooooMMoo");
        let mut d = Dirty::default();
        d.write_older(3, b"ab");
        assert_eq!(d.extents[&3], b"ab");
    }

    proptest! {
        /// Against a flat model: the newest byte wins everywhere, the byte count is exact,
        /// and extents never overlap or touch.
        #[test]
        fn matches_a_flat_model(writes in proptest::collection::vec((0..400usize, 1..60usize, any::<u8>()), 0..60), cut in 0..500usize) {
            let mut d = Dirty::default();
            let mut model = vec![None; 500];
            for (off, len, byte) in writes {
                d.write(off as u64, &vec![byte; len]);
                for b in &mut model[off..off + len] {
                    *b = Some(byte);
                }
                prop_assert_eq!(flatten(&d, 500), model.clone());
                prop_assert_eq!(d.bytes(), model.iter().filter(|b| b.is_some()).count());
                let mut prev_end = None;
                for (s, v) in &d.extents {
                    if let Some(e) = prev_end { prop_assert!(*s > e); }
                    prev_end = Some(s + v.len() as u64);
                }
            }
            d.truncate(cut as u64);
            for b in &mut model[cut..] { *b = None; }
            prop_assert_eq!(flatten(&d, 500), model.clone());
            let all = d.take_all(37);
            let mut back = vec![None; 500];
            for (o, v) in all {
                prop_assert!(v.len() <= 37);
                for (i, b) in v.iter().enumerate() { back[o as usize + i] = Some(*b); }
            }
            prop_assert_eq!(back, model);
        }
    }
    /// A batch with writes under two verifiers (a takeover between them): the old ones
    /// are resent only where no newer write of the batch covers them.
    #[test]
    fn a_resent_write_skips_newer_writes_of_its_batch() {
        let mut u = Unstable::default();
        u.push(0, vec![1; 8], 7);
        u.push(2, vec![2; 2], 9);
        u.push(6, vec![3; 4], 7);
        assert_eq!(u.take().committed(9), Committed::Resend(vec![(0, vec![1, 1]), (4, vec![1, 1]), (6, vec![3; 4])]));
        let mut u = Unstable::default();
        u.push(0, vec![1; 4], 9);
        assert_eq!(u.take().committed(9), Committed::Clean);
    }

    /// A batch resent after a restart skips what was written, truncated or punched
    /// while it was out, and what is on its way (fsx across failovers found old bytes
    /// landing over newer ones).
    #[test]
    fn a_resent_batch_skips_what_is_newer() {
        let mut u = Unstable::default();
        u.push(0, vec![1; 10], 7);
        let batch = u.take();
        u.push(2, vec![2; 2], 7);
        u.forget(6, 8);
        let Committed::Resend(w) = batch.committed(9) else { panic!("a new verifier") };
        let mut holes = u.newer_than_batch();
        holes.push((9, 10));
        assert_eq!(subtract(w, &holes), vec![(0, vec![1, 1]), (4, vec![1, 1]), (8, vec![1])]);
        // A failed COMMIT puts the batch back less what was forgotten meanwhile.
        let mut u = Unstable::default();
        u.push(0, vec![1; 10], 7);
        let batch = u.take();
        u.forget(0, 5);
        u.push(0, vec![3; 2], 7);
        u.restore(batch);
        assert_eq!(u.take().0, vec![(5, vec![1; 5], 7), (0, vec![3; 2], 7)]);
    }

    #[test]
    fn unstable_writes_resent_only_under_another_verifier() {
        let mut u = Unstable::default();
        u.push(0, b"aaaa".to_vec(), 7);
        u.push(2, b"bb".to_vec(), 8);
        assert_eq!(u.bytes(), 6);
        let batch = u.take();
        assert_eq!(u.bytes(), 0);
        assert_eq!(
            batch.committed(8),
            Committed::Resend(vec![(0, b"aa".to_vec())]),
            "bytes 2..4 were rewritten under 8"
        );
        u.push(0, b"cc".to_vec(), 8);
        assert_eq!(u.take().committed(8), Committed::Clean);
    }

    #[test]
    fn unstable_restore_keeps_order() {
        let mut u = Unstable::default();
        u.push(0, b"old".to_vec(), 1);
        let batch = u.take();
        u.push(0, b"new".to_vec(), 1);
        u.restore(batch);
        assert_eq!(u.bytes(), 6);
        // The newer write covers the older: only it is resent.
        assert_eq!(u.take().committed(2), Committed::Resend(vec![(0, b"new".to_vec())]));
    }

    proptest! {
        /// Against a flat model of what a resend would write: forgetting a range removes
        /// exactly those bytes, and the byte count stays exact.
        #[test]
        fn unstable_forget_matches_a_flat_model(
            writes in proptest::collection::vec((0..300usize, 1..60usize, any::<u8>()), 0..30),
            cuts in proptest::collection::vec((0..400usize, 0..100usize), 0..4),
        ) {
            let mut u = Unstable::default();
            let mut model = vec![None; 400];
            for (off, len, byte) in writes {
                u.push(off as u64, vec![byte; len], 1);
                for b in &mut model[off..off + len] { *b = Some(byte); }
            }
            for (start, len) in cuts {
                let end = (start + len).min(400);
                u.forget(start as u64, end as u64);
                for b in &mut model[start..end] { *b = None; }
            }
            let bytes = u.bytes();
            let Committed::Resend(again) = u.take().committed(2) else {
                prop_assert!(model.iter().all(|b| b.is_none()));
                return Ok(());
            };
            // Overlaps are resent once (the newest byte), so no more than was kept.
            let resent = again.iter().map(|w| w.1.len()).sum::<usize>();
            prop_assert!(resent <= bytes);
            prop_assert_eq!(resent, model.iter().filter(|b| b.is_some()).count());
            let mut back = vec![None; 400];
            for (o, v) in again {
                for (i, b) in v.iter().enumerate() { back[o as usize + i] = Some(*b); }
            }
            prop_assert_eq!(back, model);
        }
    }
    #[test]
    fn a_commit_change_is_ours_only_after_our_own_write() {
        let t = |sec, nsec| fs_proto::Timespec { sec, nsec };
        let ours = t(5, 7).change();
        assert!(commit_change_is_ours(ours, Some(t(5, 7))));
        assert!(!commit_change_is_ours(ours, Some(t(5, 8))), "another write came between");
        assert!(!commit_change_is_ours(0, Some(t(0, 0))), "no write of ours yet");
        assert!(!commit_change_is_ours(ours, None), "no pre-op attributes: not known to be ours");
    }

    proptest! {
        /// Whatever the order of queueing and answers: a WRITE is blocked exactly while
        /// an older overlapping one is on its way, so overlapping WRITEs reach the server
        /// in the order they were made; the first of any overlap never waits.
        #[test]
        fn overlapping_writes_go_in_order(
            ops in proptest::collection::vec((any::<bool>(), 0..200u64, 1..50usize, any::<prop::sample::Index>()), 0..80),
        ) {
            let mut f = InFlight::default();
            let mut model: Vec<(u64, u64, u64)> = Vec::new();
            for (queue, off, len, pick) in ops {
                if queue || model.is_empty() {
                    for (seq, o, d) in f.queue(vec![(off, vec![0; len])]) {
                        model.push((seq, o, o + d.len() as u64));
                    }
                } else {
                    let (seq, _, _) = model.remove(pick.index(model.len()));
                    f.done(seq);
                }
                for &(seq, s, e) in &model {
                    let older = model.iter().any(|&(q, s2, e2)| q < seq && s2 < e && s < e2);
                    prop_assert_eq!(f.blocked(seq, s, e), older);
                }
                prop_assert_eq!(f.is_empty(), model.is_empty());
            }
        }
    }
}
