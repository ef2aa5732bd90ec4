//! Where each field lies in a slot: one table of byte ranges that parsing and emitting both
//! use, and the little-endian accessors over it.

/// A multi-byte field: its byte range in the slot.
pub type Field = std::ops::Range<usize>;

/// Message kind (one byte).
pub const KIND: usize = 0;
/// Header flags (one byte).
pub const FLAGS: usize = 1;
/// Reserved, zero.
pub const RESERVED_A: Field = 2..4;
/// Sequence number.
pub const SEQ: Field = 4..8;
/// Bytes of the message, header included.
pub const LEN: Field = 8..12;
/// Reserved, zero.
pub const RESERVED_B: Field = 12..16;

/// CMD fields after the header.
pub mod cmd {
    use super::Field;
    pub const TARGET: Field = 16..18;
    pub const LUN: Field = 18..20;
    pub const CDB_LEN: usize = 20;
    pub const CONTROL_OP: usize = 21;
    pub const SEGMENT_COUNT: Field = 22..24;
    pub const ARG: Field = 24..28;
    pub const RESERVED: Field = 28..32;
    pub const CDB: Field = 32..64;
    pub const SEGMENTS: usize = 64;
}

/// STAT fields after the header.
pub mod stat {
    use super::Field;
    pub const STATUS: usize = 16;
    pub const SENSE_LEN: usize = 17;
    pub const CONTROL_RESULT: Field = 18..20;
    pub const RESIDUAL: Field = 20..24;
    pub const TRANSFERRED: Field = 24..28;
    pub const RESERVED: Field = 28..32;
    pub const SENSE: usize = 32;
}

/// BUF fields after the header.
pub mod buf {
    use super::Field;
    pub const INDEX: Field = 16..18;
    pub const SEGMENT_COUNT: Field = 18..20;
    pub const RESERVED: Field = 20..24;
    pub const SEGMENTS: usize = 24;
}

/// TRAN fields after the header.
pub mod tran {
    use super::Field;
    pub const INDEX: Field = 16..18;
    pub const RESERVED: Field = 18..24;
    pub const END: usize = 24;
}

/// One segment of a CMD or BUF, relative to the segment's start.
pub mod segment {
    use super::Field;
    pub const OFFSET: Field = 0..8;
    pub const LEN: Field = 8..12;
    pub const RESERVED: Field = 12..16;
    pub const SIZE: usize = 16;
}

/// One REPORT CONFIG entry, relative to the entry's start.
pub mod report {
    use super::Field;
    pub const TARGET: Field = 0..2;
    pub const LUN: Field = 2..4;
    pub const READ_ONLY: usize = 4;
    pub const RESERVED: Field = 5..8;
    pub const BLOCK_SIZE: Field = 8..12;
    pub const BLOCKS: Field = 12..20;
    pub const SIZE: usize = 20;
}

#[inline]
pub(super) fn get_u16(b: &[u8], f: Field) -> u16 {
    u16::from_le_bytes(b[f].try_into().expect("a 2-byte field"))
}

#[inline]
pub(super) fn get_u32(b: &[u8], f: Field) -> u32 {
    u32::from_le_bytes(b[f].try_into().expect("a 4-byte field"))
}

#[inline]
pub(super) fn get_u64(b: &[u8], f: Field) -> u64 {
    u64::from_le_bytes(b[f].try_into().expect("an 8-byte field"))
}

#[inline]
pub(super) fn put(b: &mut [u8], f: Field, bytes: &[u8]) {
    b[f].copy_from_slice(bytes);
}

/// `f` moved `by` bytes further into the slot (a segment's or entry's field).
#[inline]
pub(super) const fn at(f: Field, by: usize) -> Field {
    f.start + by..f.end + by
}
