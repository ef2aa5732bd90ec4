//! Byte ranges of a LUN file in block terms, and SCSI outcomes in errno terms: the
//! arithmetic of the FUSE front-end, kept apart from any I/O so it can be tested by hand.

use scsi::sense::parse_sense;
use scsi::Asc;

use crate::ring::link::retryable;

/// A byte range of a LUN file, clipped to the LUN, with the blocks that cover it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub offset: u64,
    /// Bytes, after clipping to the capacity.
    pub len: u64,
    /// Block size.
    pub block_size: u64,
}

impl Span {
    /// The part of `len` bytes at `offset` inside a LUN of `capacity` bytes, or `None` when
    /// nothing of it is (at or past the end, or zero length).
    pub fn clip(offset: u64, len: u64, capacity: u64, block_size: u32) -> Option<Span> {
        if len == 0 || offset >= capacity {
            return None;
        }
        let len = len.min(capacity - offset);
        Some(Span { offset, len, block_size: u64::from(block_size) })
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// First block touched.
    pub fn first_block(&self) -> u64 {
        self.offset / self.block_size
    }

    /// One past the last block touched.
    pub fn end_block(&self) -> u64 {
        self.end().div_ceil(self.block_size)
    }

    /// Blocks touched.
    pub fn blocks(&self) -> u64 {
        self.end_block() - self.first_block()
    }

    /// Where the span starts inside its first block.
    pub fn head_skip(&self) -> u64 {
        self.offset - self.first_block() * self.block_size
    }

    /// Whether both ends fall on block boundaries.
    pub fn aligned(&self) -> bool {
        self.offset.is_multiple_of(self.block_size) && self.end().is_multiple_of(self.block_size)
    }

    /// The whole blocks inside the span (first block, count), which may be none.
    pub fn inner_blocks(&self) -> (u64, u64) {
        let first = self.offset.div_ceil(self.block_size);
        let end = self.end() / self.block_size;
        (first, end.saturating_sub(first))
    }

    /// The partial blocks at either end that a write must read, modify and write back:
    /// the first block if the span starts inside it, and the last if the span ends inside
    /// it (once, when both are the same block).
    pub fn partial_blocks(&self) -> Vec<u64> {
        let mut v = Vec::with_capacity(2);
        if !self.offset.is_multiple_of(self.block_size) {
            v.push(self.first_block());
        }
        let last = self.end_block() - 1;
        if !self.end().is_multiple_of(self.block_size) && v.last() != Some(&last) {
            v.push(last);
        }
        v
    }
}

/// Splits `count` blocks from `first` into runs of at most `max` blocks.
pub fn chunks(first: u64, count: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let max = max.max(1);
    (0..count.div_ceil(max)).map(move |i| {
        let at = first + i * max;
        (at, max.min(first + count - at))
    })
}

/// What a file operation makes of a completed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It succeeded.
    Done,
    /// The unit stayed busy or kept reporting unit attentions through every retry.
    Retry,
    /// It failed with this errno.
    Fail(i32),
}

/// Judges a SCSI status and its sense data.
pub fn verdict(status: u8, sense: &[u8]) -> Verdict {
    if status == scsi::Status::Good as u8 {
        return Verdict::Done;
    }
    if retryable(status, sense).is_some() {
        return Verdict::Retry;
    }
    match parse_sense(sense) {
        Some((key, asc, _)) if status == scsi::Status::CheckCondition as u8 => Verdict::Fail(errno_for(key, asc)),
        _ => Verdict::Fail(libc::EIO),
    }
}

/// The errno a file user sees for a sense key and additional sense code.
pub fn errno_for(key: u8, asc: Asc) -> i32 {
    match (key, asc.0) {
        // SPACE ALLOCATION FAILED WRITE PROTECT: a thin image ran out of room.
        (_, 0x27) if asc.1 == 0x07 => libc::ENOSPC,
        // DATA PROTECT: the map or the image is read-only.
        (0x7, _) => libc::EROFS,
        // LOGICAL BLOCK ADDRESS OUT OF RANGE.
        (0x5, 0x21) => libc::ENOSPC,
        (0x5, _) => libc::EINVAL,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_stops_at_the_capacity() {
        assert_eq!(Span::clip(0, 0, 4096, 512), None);
        assert_eq!(Span::clip(4096, 10, 4096, 512), None);
        let s = Span::clip(4000, 500, 4096, 512).unwrap();
        assert_eq!((s.offset, s.len, s.end()), (4000, 96, 4096));
    }

    #[test]
    fn unaligned_span_has_head_and_tail_blocks() {
        let s = Span::clip(700, 1000, 1 << 20, 512).unwrap();
        assert_eq!((s.first_block(), s.end_block(), s.blocks()), (1, 4, 3));
        assert_eq!(s.head_skip(), 188);
        assert!(!s.aligned());
        assert_eq!(s.partial_blocks(), vec![1, 3]);
        assert_eq!(s.inner_blocks(), (2, 1));
    }

    #[test]
    fn span_inside_one_block_reads_it_once() {
        let s = Span::clip(10, 20, 1 << 20, 4096).unwrap();
        assert_eq!(s.partial_blocks(), vec![0]);
        assert_eq!(s.inner_blocks(), (1, 0));
        assert_eq!(s.blocks(), 1);
    }

    #[test]
    fn aligned_span_needs_no_read() {
        let s = Span::clip(4096, 8192, 1 << 20, 4096).unwrap();
        assert!(s.aligned());
        assert!(s.partial_blocks().is_empty());
        assert_eq!(s.inner_blocks(), (1, 2));
    }

    #[test]
    fn aligned_start_unaligned_end() {
        let s = Span::clip(512, 600, 1 << 20, 512).unwrap();
        assert_eq!(s.partial_blocks(), vec![2]);
        assert_eq!(s.inner_blocks(), (1, 1));
    }

    #[test]
    fn chunks_cover_the_range_exactly() {
        let v: Vec<_> = chunks(10, 25, 10).collect();
        assert_eq!(v, vec![(10, 10), (20, 10), (30, 5)]);
        assert_eq!(chunks(0, 0, 10).count(), 0);
    }

    fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s[13] = ascq;
        s
    }

    #[test]
    fn sense_maps_to_errno() {
        assert_eq!(verdict(0, &[]), Verdict::Done);
        assert_eq!(verdict(2, &fixed_sense(0x7, 0x27, 0x00)), Verdict::Fail(libc::EROFS));
        assert_eq!(verdict(2, &fixed_sense(0x7, 0x27, 0x07)), Verdict::Fail(libc::ENOSPC));
        assert_eq!(verdict(2, &fixed_sense(0x5, 0x24, 0x00)), Verdict::Fail(libc::EINVAL));
        assert_eq!(verdict(2, &fixed_sense(0x5, 0x21, 0x00)), Verdict::Fail(libc::ENOSPC));
        assert_eq!(verdict(2, &fixed_sense(0x3, 0x11, 0x00)), Verdict::Fail(libc::EIO));
        assert_eq!(verdict(2, &[]), Verdict::Fail(libc::EIO));
        assert_eq!(verdict(0x18, &[]), Verdict::Fail(libc::EIO));
    }

    #[test]
    fn unit_attention_and_busy_are_retried() {
        assert_eq!(retryable(8, &[]), Some(false));
        assert_eq!(retryable(0x28, &[]), Some(false));
        assert_eq!(retryable(2, &fixed_sense(0x6, 0x29, 0x00)), Some(false));
        assert_eq!(retryable(2, &fixed_sense(0x6, 0x2A, 0x09)), Some(true));
        assert_eq!(retryable(2, &fixed_sense(0x5, 0x24, 0x00)), None);
        assert_eq!(verdict(8, &[]), Verdict::Retry);
    }
}
