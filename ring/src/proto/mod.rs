//! The CMD / STAT / BUF / TRAN message codec (sans-IO): fixed-size slots in, validated
//! values out, and back.
//!
//! Every message lies in one [`SLOT_SIZE`]-byte slot, little-endian, starting with a
//! 16-byte header (below). Only its first `len` bytes are written and read: a completion
//! without sense is half a cache line, not a whole slot, to carry from core to core.
//!
//! ```text
//! 0      kind          1 CMD, 2 STAT, 3 BUF, 4 TRAN
//! 1      flags         DATA_IN, DATA_OUT, CONTROL, STAGED
//! 2..4   reserved      zero
//! 4..8   seq           the command's sequence number, chosen by the node
//! 8..12  len           bytes of the message, header included
//! 12..16 reserved      zero
//! ```
//!
//! CMD (node → gateway): target u16 @16, lun u16 @18, cdb_len u8 @20, control op u8 @21,
//! segment count u16 @22, control argument u32 @24, reserved u32 @28, CDB [u8; 32] @32, then
//! segments of 16 bytes (offset u64, len u32, reserved u32) @64: regions of the node's data
//! area. STAT (gateway → node): status u8 @16, sense_len u8 @17, control result u16 @18,
//! residual u32 @20, transferred u32 @24, reserved u32 @28, sense [u8; sense_len] @32
//! (at most 96), so `len` is 32 + sense_len. BUF (gateway
//! → node): index u16 @16, segment count u16 @18, reserved u32 @20, segments @24: regions
//! of the gateway's staging area. TRAN (node → gateway): index u16 @16, reserved @18..24.
//!
//! Parsing takes the bounds of the areas regions may name and rejects anything that does
//! not fit, with checked arithmetic; reserved bytes must be zero.

use smallvec::SmallVec;
use thiserror::Error;

mod control;
mod field;

pub use self::control::{control_result, ReportEntry};
use self::field::{at, get_u16, get_u32, get_u64, put, Field};

/// Protocol version spoken by this build.
pub const VERSION: u32 = 2;
/// Bytes per ring slot; every message fits in one.
pub const SLOT_SIZE: usize = 512;
/// Longest CDB a CMD carries.
pub const MAX_CDB: usize = 32;
/// Most segments in a CMD.
pub const MAX_CMD_SEGMENTS: usize = (SLOT_SIZE - field::cmd::SEGMENTS) / field::segment::SIZE;
/// Most segments in a BUF.
pub const MAX_BUF_SEGMENTS: usize = (SLOT_SIZE - field::buf::SEGMENTS) / field::segment::SIZE;
/// Most sense bytes in a STAT.
pub const MAX_SENSE: usize = 96;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A SCSI command or protocol-control request, node → gateway.
    Cmd = 1,
    /// Completion of a command, gateway → node.
    Stat = 2,
    /// Gateway buffers the node should fill (staged writes), gateway → node.
    Buf = 3,
    /// A BUF's segment has been written, node → gateway.
    Tran = 4,
}

/// Header flag: the command moves data gateway → node (a read).
pub const FLAG_DATA_IN: u8 = 0x01;
/// Header flag: the command moves data node → gateway (a write).
pub const FLAG_DATA_OUT: u8 = 0x02;
/// Header flag: a protocol-control message, not a SCSI command.
pub const FLAG_CONTROL: u8 = 0x04;
/// Header flag on CMD: deliver write data through BUF/TRAN rather than reading the regions.
pub const FLAG_STAGED: u8 = 0x08;
const KNOWN_FLAGS: u8 = FLAG_DATA_IN | FLAG_DATA_OUT | FLAG_CONTROL | FLAG_STAGED;

/// Protocol-control operations (CMD with [`FLAG_CONTROL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ControlOp {
    /// Liveness check; answered at once.
    Heartbeat = 1,
    /// Abort the command whose sequence number is the argument.
    AbortTask = 2,
    /// Reset the (target, LUN) of the message.
    LunReset = 3,
    /// Write the node's LUN list into the message's segments.
    ReportConfig = 4,
}

/// A message that breaks the protocol, and what about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The kind byte names no message.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A message arrived on a ring that does not carry its kind.
    #[error("a {0:?} message is not allowed in this direction")]
    WrongDirection(Kind),
    /// Undefined flag bits, or a combination that makes no sense.
    #[error("invalid flags {0:#04x}")]
    BadFlags(u8),
    /// Bytes that must be zero are not.
    #[error("reserved byte {0} is not zero")]
    Reserved(usize),
    /// The length field disagrees with the content or the slot.
    #[error("message length {len} is wrong (expected {expected})")]
    BadLength {
        /// Length claimed.
        len: u32,
        /// Length the content implies.
        expected: u32,
    },
    /// CDB length zero or over [`MAX_CDB`].
    #[error("CDB length {0} is outside 1..=32")]
    CdbLength(u8),
    /// More segments than fit.
    #[error("{0} segments exceed the limit")]
    TooManySegments(u16),
    /// A segment lies outside the area it must be in.
    #[error("segment {index} ({offset:#x}+{len}) lies outside the {area}-byte area")]
    OutOfBounds {
        /// Segment index.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u32,
        /// Size of the area.
        area: u64,
    },
    /// Segment lengths sum past what a transfer can be.
    #[error("segment lengths overflow")]
    LengthOverflow,
    /// Sense length over [`MAX_SENSE`].
    #[error("sense length {0} exceeds 96")]
    SenseLength(u8),
    /// Unknown protocol-control operation.
    #[error("unknown control operation {0}")]
    UnknownControl(u8),
}

/// A region of a shared area: `len` bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// Offset in the area.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A bounded scatter-gather list. The usual one or two regions live inline, so a message
/// stays small enough to move cheaply; longer lists spill to the heap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segments(SmallVec<[Region; 2]>);

impl Segments {
    /// A list from regions; `None` when there are more than any message carries
    /// ([`MAX_BUF_SEGMENTS`]; a CMD carries at most [`MAX_CMD_SEGMENTS`]).
    #[inline]
    pub fn new(regions: &[Region]) -> Option<Segments> {
        (regions.len() <= MAX_BUF_SEGMENTS).then(|| Segments(SmallVec::from_slice(regions)))
    }

    /// The regions.
    #[inline]
    pub fn as_slice(&self) -> &[Region] {
        &self.0
    }

    /// Sum of the lengths (validated not to overflow at parse time).
    #[inline]
    pub fn total(&self) -> u64 {
        self.0.iter().map(|r| u64::from(r.len)).sum()
    }
}

/// A SCSI command or protocol-control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// Sequence number, echoed in STAT and BUF.
    pub seq: u32,
    /// Header flags.
    pub flags: u8,
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// CDB bytes (`cdb_len` of them are meaningful).
    pub cdb: [u8; MAX_CDB],
    /// CDB length.
    pub cdb_len: u8,
    /// Control operation, for control messages.
    pub control: Option<ControlOp>,
    /// Control argument (ABORT TASK: the sequence number to abort).
    pub arg: u32,
    /// Data regions in the node's data area.
    pub segments: Segments,
}

impl Cmd {
    /// A SCSI command.
    #[inline]
    pub fn scsi(seq: u32, target: u16, lun: u16, cdb: &[u8], flags: u8, segments: &[Region]) -> Option<Cmd> {
        if cdb.is_empty() || cdb.len() > MAX_CDB || segments.len() > MAX_CMD_SEGMENTS {
            return None;
        }
        let mut c = [0u8; MAX_CDB];
        c[..cdb.len()].copy_from_slice(cdb);
        Some(Cmd {
            seq,
            flags: flags & !FLAG_CONTROL,
            target,
            lun,
            cdb: c,
            cdb_len: cdb.len() as u8,
            control: None,
            arg: 0,
            segments: Segments::new(segments)?,
        })
    }

    /// A protocol-control request.
    #[inline]
    pub fn control(seq: u32, op: ControlOp, target: u16, lun: u16, arg: u32, segments: &[Region]) -> Option<Cmd> {
        if segments.len() > MAX_CMD_SEGMENTS {
            return None;
        }
        let flags = FLAG_CONTROL | if segments.is_empty() { 0 } else { FLAG_DATA_IN };
        Some(Cmd {
            seq,
            flags,
            target,
            lun,
            cdb: [0; MAX_CDB],
            cdb_len: 0,
            control: Some(op),
            arg,
            segments: Segments::new(segments)?,
        })
    }

    /// The CDB.
    #[inline]
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..usize::from(self.cdb_len)]
    }
}

/// Completion of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Sequence number of the command.
    pub seq: u32,
    /// Header flags (CONTROL for control replies).
    pub flags: u8,
    /// SCSI status byte.
    pub status: u8,
    /// Result of a control request (0: done).
    pub control_result: u16,
    /// Bytes of the expected transfer not moved.
    pub residual: u32,
    /// Bytes moved.
    pub transferred: u32,
    /// Sense bytes (`sense_len` are meaningful).
    pub sense: [u8; MAX_SENSE],
    /// Sense length.
    pub sense_len: u8,
}

impl Stat {
    /// A STAT with `sense` truncated to [`MAX_SENSE`].
    #[inline]
    pub fn new(seq: u32, status: u8, sense: &[u8], transferred: u32, residual: u32) -> Stat {
        let n = sense.len().min(MAX_SENSE);
        let mut s = [0u8; MAX_SENSE];
        s[..n].copy_from_slice(&sense[..n]);
        Stat { seq, flags: 0, status, control_result: 0, residual, transferred, sense: s, sense_len: n as u8 }
    }

    /// The sense bytes.
    #[inline]
    pub fn sense(&self) -> &[u8] {
        &self.sense[..usize::from(self.sense_len)]
    }
}

/// Gateway buffers for one segment of a staged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buf {
    /// Sequence number of the command.
    pub seq: u32,
    /// Which of the command's segments this is.
    pub index: u16,
    /// Regions of the staging area to fill, in order.
    pub segments: Segments,
}

/// A staged segment has been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tran {
    /// Sequence number of the command.
    pub seq: u32,
    /// Which BUF this confirms.
    pub index: u16,
}

/// Any message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// CMD.
    Cmd(Cmd),
    /// STAT.
    Stat(Stat),
    /// BUF.
    Buf(Buf),
    /// TRAN.
    Tran(Tran),
}

#[inline]
fn zero(b: &[u8], range: Field) -> Result<(), ProtoError> {
    match b[range.clone()].iter().position(|&x| x != 0) {
        Some(i) => Err(ProtoError::Reserved(range.start + i)),
        None => Ok(()),
    }
}

#[inline]
fn parse_segments(b: &[u8], start: usize, n: usize, area: u64) -> Result<Segments, ProtoError> {
    use field::segment;
    let mut s = SmallVec::with_capacity(n);
    let mut total = 0u64;
    for i in 0..n {
        let base = start + segment::SIZE * i;
        let r = Region { offset: get_u64(b, at(segment::OFFSET, base)), len: get_u32(b, at(segment::LEN, base)) };
        zero(b, at(segment::RESERVED, base))?;
        let fits = r.offset.checked_add(u64::from(r.len)).is_some_and(|end| end <= area);
        if !fits {
            return Err(ProtoError::OutOfBounds { index: i, offset: r.offset, len: r.len, area });
        }
        total = total
            .checked_add(u64::from(r.len))
            .filter(|&t| t <= u64::from(u32::MAX))
            .ok_or(ProtoError::LengthOverflow)?;
        s.push(r);
    }
    Ok(Segments(s))
}

#[inline]
fn check_len(len: u32, expected: usize) -> Result<(), ProtoError> {
    if len as usize != expected {
        return Err(ProtoError::BadLength { len, expected: expected as u32 });
    }
    Ok(())
}

/// Parses one slot. `area` is the size of the area the message's regions refer to: the
/// node's data area for CMD, the staging area for BUF.
#[inline]
pub fn parse(slot: &[u8; SLOT_SIZE], area: u64) -> Result<Message, ProtoError> {
    use field::{buf, cmd, segment, stat, tran};
    let b = &slot[..];
    let flags = b[field::FLAGS];
    let seq = get_u32(b, field::SEQ);
    let len = get_u32(b, field::LEN);
    zero(b, field::RESERVED_A)?;
    zero(b, field::RESERVED_B)?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtoError::BadFlags(flags));
    }
    match b[field::KIND] {
        1 => {
            if flags & FLAG_DATA_IN != 0 && flags & FLAG_DATA_OUT != 0 {
                return Err(ProtoError::BadFlags(flags));
            }
            if flags & FLAG_STAGED != 0 && flags & FLAG_DATA_OUT == 0 {
                return Err(ProtoError::BadFlags(flags));
            }
            let n = get_u16(b, cmd::SEGMENT_COUNT);
            if usize::from(n) > MAX_CMD_SEGMENTS {
                return Err(ProtoError::TooManySegments(n));
            }
            check_len(len, cmd::SEGMENTS + segment::SIZE * usize::from(n))?;
            zero(b, cmd::RESERVED)?;
            let cdb_len = b[cmd::CDB_LEN];
            let control = if flags & FLAG_CONTROL != 0 {
                if cdb_len != 0 {
                    return Err(ProtoError::CdbLength(cdb_len));
                }
                zero(b, cmd::CDB)?;
                Some(match b[cmd::CONTROL_OP] {
                    1 => ControlOp::Heartbeat,
                    2 => ControlOp::AbortTask,
                    3 => ControlOp::LunReset,
                    4 => ControlOp::ReportConfig,
                    other => return Err(ProtoError::UnknownControl(other)),
                })
            } else {
                if cdb_len == 0 || usize::from(cdb_len) > MAX_CDB {
                    return Err(ProtoError::CdbLength(cdb_len));
                }
                if b[cmd::CONTROL_OP] != 0 {
                    return Err(ProtoError::Reserved(cmd::CONTROL_OP));
                }
                zero(b, cmd::ARG)?;
                zero(b, cmd::CDB.start + usize::from(cdb_len)..cmd::CDB.end)?;
                None
            };
            let mut cdb = [0u8; MAX_CDB];
            cdb.copy_from_slice(&b[cmd::CDB]);
            Ok(Message::Cmd(Cmd {
                seq,
                flags,
                target: get_u16(b, cmd::TARGET),
                lun: get_u16(b, cmd::LUN),
                cdb,
                cdb_len,
                control,
                arg: get_u32(b, cmd::ARG),
                segments: parse_segments(b, cmd::SEGMENTS, usize::from(n), area)?,
            }))
        }
        2 => {
            if flags & !FLAG_CONTROL != 0 {
                return Err(ProtoError::BadFlags(flags));
            }
            let sense_len = b[stat::SENSE_LEN];
            let n = usize::from(sense_len);
            if n > MAX_SENSE {
                return Err(ProtoError::SenseLength(sense_len));
            }
            check_len(len, stat::SENSE + n)?;
            zero(b, stat::RESERVED)?;
            let mut sense = [0u8; MAX_SENSE];
            sense[..n].copy_from_slice(&b[stat::SENSE..stat::SENSE + n]);
            Ok(Message::Stat(Stat {
                seq,
                flags,
                status: b[stat::STATUS],
                sense_len,
                control_result: get_u16(b, stat::CONTROL_RESULT),
                residual: get_u32(b, stat::RESIDUAL),
                transferred: get_u32(b, stat::TRANSFERRED),
                sense,
            }))
        }
        3 => {
            if flags != 0 {
                return Err(ProtoError::BadFlags(flags));
            }
            let n = get_u16(b, buf::SEGMENT_COUNT);
            if usize::from(n) > MAX_BUF_SEGMENTS || n == 0 {
                return Err(ProtoError::TooManySegments(n));
            }
            check_len(len, buf::SEGMENTS + segment::SIZE * usize::from(n))?;
            zero(b, buf::RESERVED)?;
            let regions = parse_segments(b, buf::SEGMENTS, usize::from(n), area)?;
            Ok(Message::Buf(Buf { seq, index: get_u16(b, buf::INDEX), segments: regions }))
        }
        4 => {
            if flags != 0 {
                return Err(ProtoError::BadFlags(flags));
            }
            check_len(len, tran::END)?;
            zero(b, tran::RESERVED)?;
            Ok(Message::Tran(Tran { seq, index: get_u16(b, tran::INDEX) }))
        }
        other => Err(ProtoError::UnknownKind(other)),
    }
}

#[inline]
fn header(b: &mut [u8; SLOT_SIZE], kind: Kind, flags: u8, seq: u32, len: usize) {
    b[..len].fill(0);
    b[field::KIND] = kind as u8;
    b[field::FLAGS] = flags;
    put(b, field::SEQ, &seq.to_le_bytes());
    put(b, field::LEN, &(len as u32).to_le_bytes());
}

#[inline]
fn emit_segments(b: &mut [u8; SLOT_SIZE], start: usize, regions: &[Region]) {
    use field::segment;
    for (i, r) in regions.iter().enumerate() {
        let base = start + segment::SIZE * i;
        put(b, at(segment::OFFSET, base), &r.offset.to_le_bytes());
        put(b, at(segment::LEN, base), &r.len.to_le_bytes());
    }
}

impl Message {
    /// Writes the message into the first [`Message::wire_len`] bytes of a slot (reserved bytes
    /// zeroed); the bytes after it are left as they were and mean nothing.
    #[inline]
    pub fn emit(&self, b: &mut [u8; SLOT_SIZE]) {
        use field::{buf, cmd, stat, tran};
        match self {
            Message::Cmd(c) => {
                let segs = c.segments.as_slice();
                header(b, Kind::Cmd, c.flags, c.seq, self.wire_len());
                put(b, cmd::TARGET, &c.target.to_le_bytes());
                put(b, cmd::LUN, &c.lun.to_le_bytes());
                b[cmd::CDB_LEN] = c.cdb_len;
                b[cmd::CONTROL_OP] = c.control.map_or(0, |op| op as u8);
                put(b, cmd::SEGMENT_COUNT, &(segs.len() as u16).to_le_bytes());
                put(b, cmd::ARG, &c.arg.to_le_bytes());
                put(b, cmd::CDB, &c.cdb);
                emit_segments(b, cmd::SEGMENTS, segs);
            }
            Message::Stat(s) => {
                let n = usize::from(s.sense_len).min(MAX_SENSE);
                header(b, Kind::Stat, s.flags, s.seq, self.wire_len());
                b[stat::STATUS] = s.status;
                b[stat::SENSE_LEN] = s.sense_len;
                put(b, stat::CONTROL_RESULT, &s.control_result.to_le_bytes());
                put(b, stat::RESIDUAL, &s.residual.to_le_bytes());
                put(b, stat::TRANSFERRED, &s.transferred.to_le_bytes());
                b[stat::SENSE..stat::SENSE + n].copy_from_slice(&s.sense[..n]);
            }
            Message::Buf(m) => {
                let segs = m.segments.as_slice();
                header(b, Kind::Buf, 0, m.seq, self.wire_len());
                put(b, buf::INDEX, &m.index.to_le_bytes());
                put(b, buf::SEGMENT_COUNT, &(segs.len() as u16).to_le_bytes());
                emit_segments(b, buf::SEGMENTS, segs);
            }
            Message::Tran(t) => {
                header(b, Kind::Tran, 0, t.seq, self.wire_len());
                put(b, tran::INDEX, &t.index.to_le_bytes());
            }
        }
    }

    /// Bytes of the slot the message occupies, header included: its `len` field.
    #[inline]
    pub fn wire_len(&self) -> usize {
        match self {
            Message::Cmd(c) => field::cmd::SEGMENTS + field::segment::SIZE * c.segments.as_slice().len(),
            Message::Stat(s) => field::stat::SENSE + usize::from(s.sense_len).min(MAX_SENSE),
            Message::Buf(m) => field::buf::SEGMENTS + field::segment::SIZE * m.segments.as_slice().len(),
            Message::Tran(_) => field::tran::END,
        }
    }

    /// The message's kind.
    #[inline]
    pub fn kind(&self) -> Kind {
        match self {
            Message::Cmd(_) => Kind::Cmd,
            Message::Stat(_) => Kind::Stat,
            Message::Buf(_) => Kind::Buf,
            Message::Tran(_) => Kind::Tran,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message, area: u64) -> Result<Message, ProtoError> {
        let mut slot = [0xAAu8; SLOT_SIZE];
        m.emit(&mut slot);
        parse(&slot, area)
    }

    #[test]
    fn every_kind_round_trips() {
        let regions = [Region { offset: 0, len: 4096 }, Region { offset: 8192, len: 512 }];
        let cmd = Cmd::scsi(7, 1, 2, &[0x28, 0, 0, 0, 0, 1, 0, 0, 9, 0], FLAG_DATA_IN, &regions).unwrap();
        assert_eq!(round_trip(Message::Cmd(cmd.clone()), 1 << 20), Ok(Message::Cmd(cmd)));
        let ctl = Cmd::control(8, ControlOp::AbortTask, 0, 0, 7, &[]).unwrap();
        assert_eq!(round_trip(Message::Cmd(ctl.clone()), 1 << 20), Ok(Message::Cmd(ctl)));
        let stat = Stat::new(7, 2, &[0x70, 0, 5], 0, 4608);
        assert_eq!(round_trip(Message::Stat(stat), 0), Ok(Message::Stat(stat)));
        let buf = Buf { seq: 9, index: 1, segments: Segments::new(&regions).unwrap() };
        assert_eq!(round_trip(Message::Buf(buf.clone()), 1 << 20), Ok(Message::Buf(buf)));
        let tran = Tran { seq: 9, index: 1 };
        assert_eq!(round_trip(Message::Tran(tran), 0), Ok(Message::Tran(tran)));
    }

    #[test]
    fn segments_must_fit_the_area() {
        let r = [Region { offset: u64::MAX - 10, len: 100 }];
        let cmd = Cmd::scsi(1, 0, 0, &[0; 6], FLAG_DATA_IN, &r).unwrap();
        assert!(matches!(round_trip(Message::Cmd(cmd), 1 << 20), Err(ProtoError::OutOfBounds { index: 0, .. })));
        let r = [Region { offset: 4096, len: 4097 }];
        let cmd = Cmd::scsi(1, 0, 0, &[0; 6], FLAG_DATA_IN, &r).unwrap();
        assert!(matches!(round_trip(Message::Cmd(cmd), 8192), Err(ProtoError::OutOfBounds { .. })));
    }

    #[test]
    fn lying_lengths_and_reserved_bytes_are_refused() {
        let cmd = Cmd::scsi(1, 0, 0, &[0; 6], 0, &[]).unwrap();
        let mut slot = [0u8; SLOT_SIZE];
        Message::Cmd(cmd).emit(&mut slot);
        let mut bad = slot;
        bad[8] = 200;
        assert_eq!(parse(&bad, 0), Err(ProtoError::BadLength { len: 200, expected: 64 }));
        let mut bad = slot;
        bad[22] = 60;
        assert_eq!(parse(&bad, 0), Err(ProtoError::TooManySegments(60)));
        let mut bad = slot;
        bad[40] = 1; // past the 6-byte CDB
        assert_eq!(parse(&bad, 0), Err(ProtoError::Reserved(40)));
        let mut bad = slot;
        bad[1] = FLAG_DATA_IN | FLAG_DATA_OUT;
        assert_eq!(parse(&bad, 0), Err(ProtoError::BadFlags(3)));
        let mut bad = slot;
        bad[0] = 9;
        assert_eq!(parse(&bad, 0), Err(ProtoError::UnknownKind(9)));
        let mut bad = slot;
        bad[20] = 33;
        assert_eq!(parse(&bad, 0), Err(ProtoError::CdbLength(33)));
    }

    #[test]
    fn segment_sum_cannot_overflow_a_transfer() {
        let r = [Region { offset: 0, len: u32::MAX }, Region { offset: 0, len: 2 }];
        let cmd = Cmd::scsi(1, 0, 0, &[0; 6], FLAG_DATA_IN, &r).unwrap();
        assert_eq!(round_trip(Message::Cmd(cmd), u64::MAX), Err(ProtoError::LengthOverflow));
    }

    #[test]
    fn a_buf_may_fill_its_slot_with_segments() {
        // A BUF has room for more segments than a CMD (its header is shorter).
        let regions: Vec<Region> =
            (0..MAX_BUF_SEGMENTS as u64).map(|i| Region { offset: i * 4096, len: 4096 }).collect();
        let mut slot = [0u8; SLOT_SIZE];
        slot[0] = Kind::Buf as u8;
        slot[4..8].copy_from_slice(&9u32.to_le_bytes());
        slot[8..12].copy_from_slice(&((24 + 16 * regions.len()) as u32).to_le_bytes());
        slot[18..20].copy_from_slice(&(regions.len() as u16).to_le_bytes());
        emit_segments(&mut slot, 24, &regions);
        let Ok(Message::Buf(b)) = parse(&slot, 1 << 20) else { panic!("a full BUF must parse") };
        assert_eq!(b.segments.as_slice(), &regions[..]);
        let mut again = [0u8; SLOT_SIZE];
        Message::Buf(b.clone()).emit(&mut again);
        assert_eq!(again[..24 + 16 * regions.len()], slot[..24 + 16 * regions.len()]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 20_000, failure_persistence: None, ..Default::default() })]

        /// A bounded fuzz run: arbitrary slots never panic, and whatever parses round-trips.
        #[test]
        fn arbitrary_slots_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), SLOT_SIZE), kind in 1u8..5) {
            let mut slot = [0u8; SLOT_SIZE];
            slot.copy_from_slice(&bytes);
            slot[0] = kind;
            // Bias towards plausible headers so parsing gets past the first checks.
            slot[2..4].fill(0);
            slot[12..16].fill(0);
            if let Ok(msg) = parse(&slot, 1 << 20) {
                let mut again = [0u8; SLOT_SIZE];
                msg.emit(&mut again);
                proptest::prop_assert_eq!(parse(&again, 1 << 20), Ok(msg));
            }
        }
    }
}
