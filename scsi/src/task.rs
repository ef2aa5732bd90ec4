//! Commands that need the backing image, as state machines the transport drives by hand.
//!
//! A [`Task`] yields [`Step`]s: backend I/O on byte ranges of the image, comparisons the
//! transport performs between its buffers, and finally a [`Completion`]. The transport feeds
//! each result back with [`Task::io_done`] or [`Task::compared`]. Mapping backend failures to
//! status and sense happens here and only here.

use std::collections::VecDeque;

use crate::report;
use crate::sense::{Asc, Sense, SenseKey, Status};

/// Which transport buffer an I/O moves data to or from, at a byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buf {
    /// The command's data-in buffer (what the initiator receives).
    DataIn(usize),
    /// The command's data-out buffer (what the initiator sent).
    DataOut(usize),
    /// The task's scratch buffer, [`Task::scratch_len`] bytes, filled by [`Task::fill_scratch`].
    Scratch(usize),
}

/// One request to the backing image. Offsets and lengths are in bytes and within capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendOp {
    /// Read `len` bytes at `offset` into `into`.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: usize,
        /// Destination.
        into: Buf,
    },
    /// Write `len` bytes at `offset` from `from`; with `fua`, durable before completion.
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: usize,
        /// Source.
        from: Buf,
        /// Force unit access.
        fua: bool,
    },
    /// Make all completed writes durable.
    Flush,
    /// Deallocate a range; it reads back as zeros.
    Unmap {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Zero a range, keeping it allocated.
    WriteZeroes {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Report which parts of a range are allocated.
    BlockStatus {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: u64,
    },
}

/// An allocated or deallocated run reported by [`BackendOp::BlockStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocExtent {
    /// Length in bytes.
    pub len: u64,
    /// Whether the run is allocated (mapped).
    pub mapped: bool,
}

/// What a successful backend request returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IoDone {
    /// The request completed in full.
    #[default]
    Done,
    /// Allocation status, for [`BackendOp::BlockStatus`], in order from its offset.
    Extents(Vec<AllocExtent>),
}

/// Why a backend request failed, in terms the target can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFailure {
    /// The image returned an I/O error or a short transfer.
    Medium,
    /// The image's filesystem is out of space.
    NoSpace,
    /// The image is read-only underneath.
    ReadOnly,
    /// Anything else (the backend could not take the request).
    Internal,
    /// The device underneath reported a condition that has a nearer sense of its own (an
    /// NVMe status translated to SCSI, say).
    Sense(Sense),
}

/// What the transport must do next for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Submit this backend request, then call [`Task::io_done`].
    Io(BackendOp),
    /// Compare `len` bytes of scratch at `scratch` with data-out at `data_out`, then call
    /// [`Task::compared`] with the index of the first differing byte, if any.
    Compare {
        /// Offset in scratch.
        scratch: usize,
        /// Offset in data-out.
        data_out: usize,
        /// Byte count.
        len: usize,
    },
    /// OR `len` bytes of data-out at `data_out` into scratch at `scratch` (ORWRITE), then
    /// call [`Task::ored`].
    Or {
        /// Offset in scratch.
        scratch: usize,
        /// Offset in data-out.
        data_out: usize,
        /// Byte count.
        len: usize,
    },
    /// The command is complete.
    Done(Completion),
}

/// Data returned to the initiator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataIn {
    /// No data.
    #[default]
    None,
    /// Data produced by the target itself, already truncated to the allocation length.
    Bytes(Vec<u8>),
    /// This many bytes were placed in the transport's data-in buffer by backend reads.
    InBuffer(usize),
}

impl DataIn {
    /// Number of bytes transferred.
    pub fn len(&self) -> usize {
        match self {
            DataIn::None => 0,
            DataIn::Bytes(b) => b.len(),
            DataIn::InBuffer(n) => *n,
        }
    }

    /// Whether no bytes are transferred.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome of one command: status, encoded sense data and data-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status.
    pub status: Status,
    /// Encoded sense data (empty unless CHECK CONDITION).
    pub sense: Vec<u8>,
    /// Data-in.
    pub data_in: DataIn,
}

impl Completion {
    /// GOOD with no data.
    pub fn good() -> Completion {
        Completion { status: Status::Good, sense: Vec::new(), data_in: DataIn::None }
    }

    /// GOOD with data produced by the target, truncated to the allocation length.
    pub fn data(mut bytes: Vec<u8>, alloc: usize) -> Completion {
        bytes.truncate(alloc);
        Completion { status: Status::Good, sense: Vec::new(), data_in: DataIn::Bytes(bytes) }
    }

    /// CHECK CONDITION with sense in fixed or descriptor format.
    pub fn check(sense: &Sense, descriptor: bool) -> Completion {
        Completion { status: Status::CheckCondition, sense: sense.encode(descriptor), data_in: DataIn::None }
    }
}

/// Maps a backend failure to sense (SBC-3 4.16, 4.7.3.6).
pub fn failure_sense(failure: IoFailure, writing: bool) -> Sense {
    match failure {
        IoFailure::Medium if writing => Sense::new(SenseKey::MediumError, Asc::WRITE_ERROR),
        IoFailure::Medium => Sense::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
        IoFailure::NoSpace => Sense::new(SenseKey::DataProtect, Asc::SPACE_ALLOCATION_FAILED),
        IoFailure::ReadOnly => Sense::write_protected(),
        IoFailure::Internal => Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE),
        IoFailure::Sense(sense) => sense,
    }
}

/// The lock a task needs on its blocks while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Ordinary writes: may overlap each other, not an exclusive holder.
    Shared,
    /// COMPARE AND WRITE: nothing else may write the range meanwhile.
    Exclusive,
}

/// A lock request: blocks `[start, end)` in `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// First block.
    pub start: u64,
    /// One past the last block.
    pub end: u64,
    /// Mode.
    pub mode: LockMode,
}

/// How the final completion is formed once every step succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    Good,
    ReadData(usize),
    LbaStatus { lba: u64, alloc: u32, block_size: u32 },
}

/// A command in progress against the backing image.
#[derive(Debug)]
pub struct Task {
    /// The next step, kept inline: most commands (READ, WRITE, SYNCHRONIZE CACHE) have
    /// only this one, so they allocate nothing.
    next: Option<Step>,
    /// The steps after it.
    rest: VecDeque<Step>,
    finish: Finish,
    descriptor_sense: bool,
    writing: bool,
    scratch_len: usize,
    pattern: Option<Vec<u8>>,
    lock: Option<LockRequest>,
    extents: Vec<AllocExtent>,
    awaiting: bool,
}

impl Task {
    pub(crate) fn new(steps: Vec<Step>, finish: Finish, descriptor_sense: bool, writing: bool) -> Task {
        let mut rest = VecDeque::from(steps);
        Task { next: rest.pop_front(), rest, ..Task::single(None, finish, descriptor_sense, writing) }
    }

    /// A task of at most one step, which needs no allocation.
    pub(crate) fn single(step: Option<Step>, finish: Finish, descriptor_sense: bool, writing: bool) -> Task {
        Task {
            next: step,
            rest: VecDeque::new(),
            finish,
            descriptor_sense,
            writing,
            scratch_len: 0,
            pattern: None,
            lock: None,
            extents: Vec::new(),
            awaiting: false,
        }
    }

    pub(crate) fn with_scratch(mut self, len: usize, pattern: Option<Vec<u8>>) -> Task {
        self.scratch_len = len;
        self.pattern = pattern;
        self
    }

    pub(crate) fn with_lock(mut self, lock: LockRequest) -> Task {
        self.lock = Some(lock);
        self
    }

    /// Bytes of scratch buffer the transport must provide.
    pub fn scratch_len(&self) -> usize {
        self.scratch_len
    }

    /// Initialises scratch (the repeated WRITE SAME block); call once before the first step.
    pub fn fill_scratch(&self, scratch: &mut [u8]) {
        match &self.pattern {
            Some(p) if !p.is_empty() => {
                for chunk in scratch.chunks_mut(p.len()) {
                    chunk.copy_from_slice(&p[..chunk.len()]);
                }
            }
            _ => scratch.fill(0),
        }
    }

    /// The block-range lock the task needs, if any, held from its first step to completion.
    pub fn lock(&self) -> Option<LockRequest> {
        self.lock
    }

    /// The next thing to do. Call again after each [`Task::io_done`] or [`Task::compared`].
    pub fn next_step(&mut self) -> Step {
        assert!(!self.awaiting, "Task::next_step called while a step is outstanding");
        match self.next.take().or_else(|| self.rest.pop_front()) {
            Some(step @ (Step::Io(_) | Step::Compare { .. } | Step::Or { .. })) => {
                self.awaiting = true;
                step
            }
            Some(done @ Step::Done(_)) => done,
            None => Step::Done(self.finish()),
        }
    }

    /// Feeds back the result of the last [`Step::Io`].
    pub fn io_done(&mut self, result: Result<IoDone, IoFailure>) {
        self.awaiting = false;
        match result {
            Ok(IoDone::Done) => {}
            Ok(IoDone::Extents(e)) => self.extents = e,
            Err(failure) => self.fail(&failure_sense(failure, self.writing)),
        }
    }

    /// Feeds back the result of the last [`Step::Compare`] (`data_out` was its offset).
    pub fn compared(&mut self, data_out: usize, mismatch: Option<usize>) {
        self.awaiting = false;
        if let Some(at) = mismatch {
            self.fail(&Sense::miscompare((data_out + at) as u64));
        }
    }

    /// Feeds back that the last [`Step::Or`] was performed.
    pub fn ored(&mut self) {
        self.awaiting = false;
    }

    fn fail(&mut self, sense: &Sense) {
        self.rest.clear();
        self.next = Some(Step::Done(Completion::check(sense, self.descriptor_sense)));
    }

    fn finish(&mut self) -> Completion {
        match self.finish {
            Finish::Good => Completion::good(),
            Finish::ReadData(n) => Completion { status: Status::Good, sense: Vec::new(), data_in: DataIn::InBuffer(n) },
            Finish::LbaStatus { lba, alloc, block_size } => {
                Completion::data(report::lba_status(lba, block_size, &self.extents), alloc as usize)
            }
        }
    }
}

/// Index of the first byte where `a` and `b` differ.
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y).or(Some(a.len().min(b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_maps_to_medium_and_data_protect_sense() {
        assert_eq!(failure_sense(IoFailure::Medium, false).asc, Asc::UNRECOVERED_READ_ERROR);
        assert_eq!(failure_sense(IoFailure::Medium, true).asc, Asc::WRITE_ERROR);
        assert_eq!(failure_sense(IoFailure::NoSpace, true).key, SenseKey::DataProtect);
        assert_eq!(failure_sense(IoFailure::ReadOnly, true), Sense::write_protected());
    }

    #[test]
    fn failed_io_skips_remaining_steps() {
        let op = BackendOp::Flush;
        let mut t = Task::new(vec![Step::Io(op), Step::Io(op)], Finish::Good, false, true);
        assert_eq!(t.next_step(), Step::Io(op));
        t.io_done(Err(IoFailure::Medium));
        match t.next_step() {
            Step::Done(c) => assert_eq!(c.status, Status::CheckCondition),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mismatch_reports_data_out_offset() {
        let step = Step::Compare { scratch: 0, data_out: 0, len: 4 };
        let mut t = Task::new(vec![step], Finish::Good, false, false);
        t.next_step();
        t.compared(512, first_mismatch(&[1, 2, 3, 4], &[1, 2, 9, 4]));
        match t.next_step() {
            Step::Done(c) => assert_eq!(crate::sense::parse_sense(&c.sense).unwrap().2, Some(514)),
            other => panic!("{other:?}"),
        }
    }
}
