//! Read-ahead for one open file: detect sequential reading and keep a growing window of
//! blocks in flight ahead of the reader; random access turns it off. Pure: it only says
//! which blocks to fetch, the caller fetches them.

use std::ops::Range;

#[derive(Clone, Debug, Default)]
pub struct ReadAhead {
    /// Where the next read starts if the reader is sequential.
    next: u64,
    /// Current window, in blocks; 0 when off.
    window: u64,
    /// Blocks below this have been requested already.
    issued_to: u64,
}

impl ReadAhead {
    /// Whether the last read looked random (no window): such reads fetch only what was
    /// asked for instead of whole blocks.
    pub fn is_random(&self) -> bool {
        self.window == 0
    }

    /// Records a read of `[offset, offset + len)` and returns the blocks to prefetch.
    /// `max_window` is in blocks (0 disables read-ahead); `file_size` bounds the window.
    pub fn on_read(&mut self, offset: u64, len: u64, block_size: u64, max_window: u64, file_size: u64) -> Range<u64> {
        let sequential = offset == self.next || (offset < self.next && offset + len > self.next);
        self.next = offset + len;
        if !sequential || max_window == 0 {
            // Random access: no window (a read at 0 starts a fresh sequential run).
            self.window = if offset == 0 && max_window > 0 { 1 } else { 0 };
            self.issued_to = 0;
            if self.window == 0 {
                return 0..0;
            }
        } else {
            self.window = (self.window * 2).clamp(1, max_window);
        }
        let after = (offset + len).div_ceil(block_size);
        let end_of_file = file_size.div_ceil(block_size);
        let start = self.issued_to.max(after);
        let end = (after + self.window).min(end_of_file);
        if start >= end {
            return 0..0;
        }
        self.issued_to = end;
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 100;

    #[test]
    fn sequential_reader_gets_a_growing_window() {
        let mut r = ReadAhead::default();
        assert_eq!(r.on_read(0, 100, BS, 8, 10_000), 1..2);
        assert_eq!(r.on_read(100, 100, BS, 8, 10_000), 2..4);
        assert_eq!(r.on_read(200, 100, BS, 8, 10_000), 4..7);
        assert_eq!(r.on_read(300, 100, BS, 8, 10_000), 7..12);
        assert_eq!(r.on_read(400, 100, BS, 8, 10_000), 12..13, "window capped at 8 blocks ahead of 5");
    }

    #[test]
    fn random_reader_gets_none() {
        let mut r = ReadAhead::default();
        assert_eq!(r.on_read(5000, 100, BS, 8, 10_000), 0..0);
        assert!(r.is_random());
        assert_eq!(r.on_read(300, 100, BS, 8, 10_000), 0..0);
        assert_eq!(r.on_read(9000, 10, BS, 8, 10_000), 0..0);
        // It becomes sequential again.
        assert_eq!(r.on_read(9010, 90, BS, 8, 10_000), 91..92);
    }

    #[test]
    fn stops_at_end_of_file_and_when_disabled() {
        let mut r = ReadAhead::default();
        assert_eq!(r.on_read(0, 100, BS, 8, 250), 1..2);
        assert_eq!(r.on_read(100, 100, BS, 8, 250), 2..3);
        assert_eq!(r.on_read(200, 50, BS, 8, 250), 0..0);
        let mut off = ReadAhead::default();
        assert_eq!(off.on_read(0, 100, BS, 0, 10_000), 0..0);
        assert_eq!(off.on_read(100, 100, BS, 0, 10_000), 0..0);
    }
}
