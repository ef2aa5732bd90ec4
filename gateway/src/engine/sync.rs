//! The synchronous engine: pread/pwrite/fdatasync/fallocate in the submitting thread. The
//! fallback where io_uring is unavailable, and the reference the io_uring engine is checked
//! against.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;

use scsi::IoDone;

use super::{validate, AlignedBuf, Backend, EngineError, Image, IoCompletion, IoOp, IoRequest};

/// Performs each request at submission; completions wait in a queue until reaped.
#[derive(Debug)]
pub struct SyncEngine {
    image: Image,
    ready: VecDeque<IoCompletion>,
}

impl SyncEngine {
    /// An engine over an open image.
    pub fn new(image: Image) -> SyncEngine {
        SyncEngine { image, ready: VecDeque::new() }
    }

    fn perform(&self, op: &mut IoOp) -> Result<IoDone, EngineError> {
        validate(op, self.image.size)?;
        match op {
            IoOp::Read { offset, buf, range } => {
                read_full(&self.image, &mut buf.as_mut_slice()[range.clone()], *offset)?;
            }
            IoOp::Write { offset, buf, range, fua } => {
                self.image.write_at(&buf.as_slice()[range.clone()], *offset, *fua)?
            }
            IoOp::Flush => self.image.file.sync_data()?,
            IoOp::Unmap { offset, len } => {
                self.image.punch_hole(*offset, *len)?;
            }
            IoOp::WriteZeroes { offset, len } => {
                self.image.zero_range(*offset, *len)?;
            }
            IoOp::BlockStatus { offset, len } => return Ok(IoDone::Extents(self.image.block_status(*offset, *len)?)),
        }
        Ok(IoDone::Done)
    }
}

/// Reads all of `buf` at `offset`, retrying partial reads; end of file is a short transfer.
pub(crate) fn read_full(image: &Image, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
    let mut done = 0usize;
    while done < buf.len() {
        match image.file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(EngineError::Short { done, wanted: buf.len() }),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Backend for SyncEngine {
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
        self.image.size
    }

    fn grow(&mut self, bytes: u64) -> io::Result<()> {
        self.image.grow(bytes)
    }

    fn buffer(&mut self, len: usize) -> AlignedBuf {
        AlignedBuf::zeroed(len)
    }

    fn name(&self) -> &'static str {
        "sync"
    }
}
