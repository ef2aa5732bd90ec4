//! In-memory engines for tests and benchmarks: a sparse RAM image and a null device.

use std::collections::VecDeque;
use std::io;

use scsi::IoDone;

use super::{push_extent, validate, Backend, EngineError, IoCompletion, IoOp, IoRequest};

/// Allocation granule of the RAM engine; unmapping whole chunks frees them.
const CHUNK: usize = 64 << 10;

/// A sparse image in memory: chunks are allocated on first write and freed by unmap.
#[derive(Debug)]
pub struct RamEngine {
    size: u64,
    chunks: Vec<Option<Box<[u8]>>>,
    ready: VecDeque<IoCompletion>,
}

impl RamEngine {
    /// An all-zero, fully deallocated image of `size` bytes.
    pub fn new(size: u64) -> RamEngine {
        let n = usize::try_from(size.div_ceil(CHUNK as u64)).expect("RAM image larger than the address space");
        RamEngine { size, chunks: (0..n).map(|_| None).collect(), ready: VecDeque::new() }
    }

    /// Visits each chunk piece of `[offset, offset+len)` as (chunk index, offset in chunk,
    /// offset in the request, length).
    fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at >= len {
                return None;
            }
            let pos = offset + at as u64;
            let idx = (pos / CHUNK as u64) as usize;
            let within = (pos % CHUNK as u64) as usize;
            let n = (CHUNK - within).min(len - at);
            let piece = (idx, within, at, n);
            at += n;
            Some(piece)
        })
    }

    /// Copies `len` bytes at `offset` to `dst`. The destination may be a node's shared
    /// memory (a borrowed buffer), so it is written through the pointer, never a reference.
    fn read(&self, offset: u64, dst: *mut u8, len: usize) {
        for (idx, within, at, n) in Self::pieces(offset, len) {
            let to = dst.wrapping_add(at);
            match &self.chunks[idx] {
                Some(c) => {
                    let from = c[within..within + n].as_ptr();
                    // SAFETY: the caller checked that `dst` is valid for `len` bytes
                    // (`validate` against the buffer's length) and `at + n <= len`; our
                    // chunks never overlap a caller's buffer.
                    unsafe { std::ptr::copy_nonoverlapping(from, to, n) }
                }
                // SAFETY: as above.
                None => unsafe { std::ptr::write_bytes(to, 0, n) },
            }
        }
    }

    /// Copies `len` bytes from `src` (possibly a node's shared memory) to `offset`.
    fn write(&mut self, offset: u64, src: *const u8, len: usize) {
        for (idx, within, at, n) in Self::pieces(offset, len) {
            let c = self.chunks[idx].get_or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
            let to = c[within..within + n].as_mut_ptr();
            // SAFETY: as in `read`, with the direction reversed. Another process may change
            // shared source bytes meanwhile; the image then holds some mix of them, which is
            // what a device gives a host that rewrites a buffer under its own WRITE.
            unsafe { std::ptr::copy_nonoverlapping(src.wrapping_add(at), to, n) };
        }
    }

    fn zero(&mut self, offset: u64, len: u64, deallocate: bool) {
        for (idx, within, _, n) in Self::pieces(offset, len as usize) {
            if deallocate && n == CHUNK {
                self.chunks[idx] = None;
            } else if let Some(c) = &mut self.chunks[idx] {
                c[within..within + n].fill(0);
            } else if !deallocate {
                self.chunks[idx] = Some(vec![0u8; CHUNK].into_boxed_slice());
            }
        }
    }

    fn perform(&mut self, op: &mut IoOp) -> Result<IoDone, EngineError> {
        validate(op, self.size)?;
        match op {
            IoOp::Read { offset, buf, range } => {
                // `validate` checked `range` against the buffer's length.
                let dst = buf.as_mut_ptr().wrapping_add(range.start);
                self.read(*offset, dst, range.len())
            }
            IoOp::Write { offset, buf, range, .. } => {
                let src = buf.as_mut_ptr().wrapping_add(range.start);
                self.write(*offset, src, range.len())
            }
            IoOp::Flush => {}
            IoOp::Unmap { offset, len } => self.zero(*offset, *len, true),
            IoOp::WriteZeroes { offset, len } => self.zero(*offset, *len, false),
            IoOp::BlockStatus { offset, len } => {
                let mut out = Vec::new();
                for (idx, _, _, n) in Self::pieces(*offset, *len as usize) {
                    push_extent(&mut out, n as u64, self.chunks[idx].is_some());
                }
                return Ok(IoDone::Extents(out));
            }
        }
        Ok(IoDone::Done)
    }
}

impl Backend for RamEngine {
    fn submit(&mut self, mut req: IoRequest) -> Result<(), (IoRequest, EngineError)> {
        let result = self.perform(&mut req.op);
        self.ready.push_back(IoCompletion { req, result });
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>, _min: usize) -> io::Result<()> {
        out.extend(self.ready.drain(..));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn grow(&mut self, bytes: u64) -> io::Result<()> {
        if bytes < self.size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "shrinking an image would drop its data"));
        }
        let n =
            usize::try_from(bytes.div_ceil(CHUNK as u64)).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        self.chunks.resize_with(n, || None);
        self.size = bytes;
        Ok(())
    }

    fn takes_borrowed(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "ram"
    }
}

/// A device that stores nothing: reads return zeros, writes succeed and vanish.
#[derive(Debug)]
pub struct NullEngine {
    size: u64,
    ready: VecDeque<IoCompletion>,
}

impl NullEngine {
    /// A null device of `size` bytes.
    pub fn new(size: u64) -> NullEngine {
        NullEngine { size, ready: VecDeque::new() }
    }
}

impl Backend for NullEngine {
    fn submit(&mut self, mut req: IoRequest) -> Result<(), (IoRequest, EngineError)> {
        let result = validate(&req.op, self.size).map(|()| match &mut req.op {
            IoOp::Read { buf, range, .. } => {
                buf.as_mut_slice()[range.clone()].fill(0);
                IoDone::Done
            }
            IoOp::BlockStatus { len, .. } => IoDone::Extents(vec![scsi::AllocExtent { len: *len, mapped: false }]),
            _ => IoDone::Done,
        });
        self.ready.push_back(IoCompletion { req, result });
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>, _min: usize) -> io::Result<()> {
        out.extend(self.ready.drain(..));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &'static str {
        "null"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AlignedBuf;

    fn run(e: &mut dyn Backend, op: IoOp) -> (IoOp, Result<IoDone, EngineError>) {
        e.submit(IoRequest { tag: 1, op }).unwrap();
        let mut out = Vec::new();
        e.reap(&mut out, 1).unwrap();
        let c = out.pop().unwrap();
        (c.req.op, c.result)
    }

    #[test]
    fn ram_write_read_unmap_across_chunks() {
        let mut e = RamEngine::new(1 << 20);
        let data = AlignedBuf::from_slice(&vec![7u8; 100_000]);
        let (_, r) = run(&mut e, IoOp::Write { offset: 60_000, buf: data, range: 0..100_000, fua: false });
        r.unwrap();
        let (op, r) = run(&mut e, IoOp::Read { offset: 60_000, buf: AlignedBuf::zeroed(100_000), range: 0..100_000 });
        r.unwrap();
        assert!(op.into_buf().unwrap().as_slice().iter().all(|&b| b == 7));
        run(&mut e, IoOp::Unmap { offset: 0, len: 1 << 20 }).1.unwrap();
        let (_, r) = run(&mut e, IoOp::BlockStatus { offset: 0, len: 1 << 20 });
        assert_eq!(r.unwrap(), IoDone::Extents(vec![scsi::AllocExtent { len: 1 << 20, mapped: false }]));
    }

    #[test]
    fn out_of_range_is_refused_not_panicking() {
        let mut e = RamEngine::new(4096);
        let (_, r) = run(&mut e, IoOp::Read { offset: 4000, buf: AlignedBuf::zeroed(512), range: 0..512 });
        assert_eq!(r, Err(EngineError::OutOfRange));
        let (_, r) = run(&mut e, IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(512), range: 0..513 });
        assert_eq!(r, Err(EngineError::OutOfRange));
    }

    #[test]
    fn grows_but_never_shrinks() {
        let mut e = RamEngine::new(100 << 10);
        e.grow(300 << 10).unwrap();
        assert_eq!(e.size(), 300 << 10);
        let buf = AlignedBuf::from_slice(&[9u8; 4096]);
        let (_, r) = run(&mut e, IoOp::Write { offset: 290 << 10, buf, range: 0..4096, fua: false });
        assert!(r.is_ok(), "the new space is writable: {r:?}");
        assert!(e.grow(200 << 10).is_err());
        assert_eq!(e.size(), 300 << 10);
    }
}
