//! Backing-image engines: a small trait over one request value, with io_uring, synchronous,
//! RAM and null implementations.
//!
//! An engine never sees a CDB. It takes [`IoRequest`]s, performs them on one image, and
//! hands every request back in an [`IoCompletion`], whether it succeeded, failed, or could
//! not even be submitted, so the caller can always answer the command it came from.

pub mod image;
pub mod nvme;
pub mod ram;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;
pub mod uring;

pub use sys::{buf, host};

use std::fmt;
use std::io;
use std::ops::Range;
use std::str::FromStr;

pub use buf::{AlignedBuf, Arena};
pub use image::{Image, ImageOptions};
pub use nvme::NvmeEngine;
pub use ram::{NullEngine, RamEngine};
pub use sync::SyncEngine;
pub use uring::UringEngine;

use scsi::{AllocExtent, BlockLimits, IoDone, IoFailure};
use shmem::PeerSlice;

/// One operation on an image. Offsets and lengths are bytes.
#[derive(Debug)]
pub enum IoOp {
    /// Read `range.len()` bytes at `offset` into `buf[range]`.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Destination buffer.
        buf: AlignedBuf,
        /// Part of `buf` to fill.
        range: Range<usize>,
    },
    /// Write `buf[range]` at `offset`; with `fua` it is durable before completion.
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// Source buffer.
        buf: AlignedBuf,
        /// Part of `buf` to write.
        range: Range<usize>,
        /// Force unit access (`RWF_DSYNC`).
        fua: bool,
    },
    /// Make completed writes durable (`fdatasync`).
    Flush,
    /// Deallocate; the range then reads as zeros.
    Unmap {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Zero the range, keeping it allocated.
    WriteZeroes {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Report allocation of the range (`SEEK_DATA`/`SEEK_HOLE`).
    BlockStatus {
        /// Byte offset in the image.
        offset: u64,
        /// Byte count.
        len: u64,
    },
}

impl IoOp {
    /// Whether the operation changes the image.
    pub fn writes(&self) -> bool {
        matches!(self, IoOp::Write { .. } | IoOp::Unmap { .. } | IoOp::WriteZeroes { .. })
    }

    /// The buffer the operation carries, if any.
    pub fn into_buf(self) -> Option<AlignedBuf> {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// A request: an operation and a caller-chosen tag that comes back with its completion.
#[derive(Debug)]
pub struct IoRequest {
    /// Caller's token.
    pub tag: u64,
    /// What to do.
    pub op: IoOp,
}

/// Why an engine request failed: the OS error, or a transfer that came up short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The system call failed with this errno.
    Os(i32),
    /// A read or write moved fewer bytes than asked and could not make progress.
    Short {
        /// Bytes moved.
        done: usize,
        /// Bytes asked for.
        wanted: usize,
    },
    /// The engine has no room for more requests now; submit again after reaping.
    Full,
    /// The request lies outside the image.
    OutOfRange,
    /// An NVMe command completed with this status ([`nvme::translate::Status`]).
    Nvme(u16),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Os(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            EngineError::Short { done, wanted } => write!(f, "short transfer: {done} of {wanted} bytes"),
            EngineError::Full => f.write_str("engine queue full"),
            EngineError::OutOfRange => f.write_str("request outside the image"),
            EngineError::Nvme(s) => write!(f, "{}", nvme::translate::Status(*s)),
        }
    }
}

impl std::error::Error for EngineError {}

impl EngineError {
    /// The SCSI-level meaning of the failure (mapped to sense by the target in one place).
    pub fn failure(&self) -> IoFailure {
        match *self {
            EngineError::Os(libc::ENOSPC) | EngineError::Os(libc::EDQUOT) => IoFailure::NoSpace,
            EngineError::Os(libc::EROFS) | EngineError::Os(libc::EPERM) | EngineError::Os(libc::EACCES) => {
                IoFailure::ReadOnly
            }
            EngineError::Os(libc::ENOMEM) | EngineError::Os(libc::EAGAIN) | EngineError::Full => IoFailure::Internal,
            EngineError::Os(_) | EngineError::Short { .. } | EngineError::OutOfRange => IoFailure::Medium,
            EngineError::Nvme(s) => nvme::translate::failure(nvme::translate::Status(s)),
        }
    }
}

impl From<io::Error> for EngineError {
    fn from(e: io::Error) -> EngineError {
        EngineError::Os(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// A finished request, handed back with its result.
#[derive(Debug)]
pub struct IoCompletion {
    /// The request, with its buffer.
    pub req: IoRequest,
    /// What happened.
    pub result: Result<IoDone, EngineError>,
}

/// A backing-image engine. Single-threaded: each worker owns its engines.
pub trait Backend: fmt::Debug + Send {
    /// Queues a request. Nothing reaches the kernel until [`Backend::reap`], so callers can
    /// batch. A request that cannot be queued is handed back with the reason.
    fn submit(&mut self, req: IoRequest) -> Result<(), (IoRequest, EngineError)>;

    /// Sends queued requests, waits until at least `min` completions are available (0: do
    /// not wait), and appends every available completion to `out`.
    fn reap(&mut self, out: &mut Vec<IoCompletion>, min: usize) -> io::Result<()>;

    /// Requests submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// An eventfd that becomes readable when requests in flight have finished, so a worker
    /// can sleep on it together with its doorbells. `None` for engines that finish every
    /// request at submission (nothing to wait for) or cannot signal.
    fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// Moves the engine's I/O into a worker's ring, so the worker waits for it there
    /// together with its doorbells. Returns whether the engine now uses `host`: engines
    /// without a ring, or that cannot register there, go on as before. Called on the
    /// host's thread, which alone may drive the engine from then on.
    fn attach(&mut self, host: &std::sync::Arc<host::UringHost>) -> io::Result<bool> {
        let _ = host;
        Ok(false)
    }

    /// Leaves the worker's ring for one of the engine's own, after finishing what is in
    /// flight, so the engine can move to another thread. Called on the host's thread.
    fn detach(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether the engine's completions arrive in a worker's ring ([`Backend::attach`]).
    fn hosted(&self) -> bool {
        false
    }

    /// Image size in bytes.
    fn size(&self) -> u64;

    /// The block size the medium is formatted with, for engines over media that have one
    /// (an NVMe namespace); a LUN over it must use the same.
    fn block_size(&self) -> Option<u32> {
        None
    }

    /// Narrows the Block Limits a LUN over this engine advertises to what suits the medium.
    fn limits(&self, limits: &mut BlockLimits) {
        let _ = limits;
    }

    /// Grows the image to `bytes`; engines over fixed-size media refuse.
    fn grow(&mut self, bytes: u64) -> io::Result<()> {
        let _ = bytes;
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("the {} engine cannot grow its image", self.name())))
    }

    /// A buffer suited to this engine (from its registered arena when it has one).
    fn buffer(&mut self, len: usize) -> AlignedBuf {
        AlignedBuf::zeroed(len)
    }

    /// Whether the engine accepts borrowed buffers ([`AlignedBuf::over_shared`]): it must never
    /// form a reference to them, only hand their pointers to the kernel or copy through
    /// the pointers.
    fn takes_borrowed(&self) -> bool {
        false
    }

    /// A buffer the caller overwrites completely before it is read (data-out): it may hold
    /// an earlier command's bytes, which spares clearing it.
    fn buffer_for_overwrite(&mut self, len: usize) -> AlignedBuf {
        self.buffer(len)
    }

    /// The engine's name, for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// The image as memory the caller copies to and from itself, for engines whose I/O is
    /// a memory copy: a plain READ or WRITE then needs no request, no completion and no
    /// buffer of the engine's ([`crate::lun::LunDriver::start_direct`]). `None` for
    /// engines that go through the kernel.
    fn memory(&mut self) -> Option<&mut dyn MemoryImage> {
        None
    }
}

/// An image held in memory, copied to and from directly ([`Backend::memory`]). Reads and
/// writes through it take effect at once and keep their order against the engine's queued
/// requests: a copy goes after every request submitted before it.
pub trait MemoryImage {
    /// Starts loading the first bytes of `[offset, offset+len)` into the cache, so that a
    /// copy of it a little later finds them on their way. A hint: a range outside the image
    /// is ignored.
    fn prefetch_head(&self, offset: u64, len: usize);

    /// Starts loading more of `[offset, offset+len)`, while another copy runs (a hint, as
    /// [`MemoryImage::prefetch_head`]).
    fn prefetch_rest(&self, offset: u64, len: usize);

    /// Copies `dst.len()` bytes of the image at `offset` into `dst`, which may be memory
    /// another process shares.
    fn copy_out(&mut self, offset: u64, dst: PeerSlice<'_>) -> Result<(), EngineError>;

    /// Copies `src` into the image at `offset`. `src` may be memory another process shares
    /// and changes meanwhile; the image then holds some mix of the bytes.
    fn copy_in(&mut self, offset: u64, src: PeerSlice<'_>) -> Result<(), EngineError>;
}

/// Which engine to run an image on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// io_uring when the kernel supports every opcode needed, else synchronous.
    #[default]
    Auto,
    /// io_uring, failing if unavailable.
    Uring,
    /// Synchronous pread/pwrite.
    Sync,
    /// NVMe passthrough on a namespace's generic character device (`/dev/ngXnY`), which
    /// `Auto` also picks for such a device.
    Nvme,
    /// In memory, for tests and benchmarks: the image file is not used and contents are
    /// lost on exit.
    Ram,
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<EngineKind, String> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "uring" | "io_uring" => Ok(EngineKind::Uring),
            "sync" => Ok(EngineKind::Sync),
            "nvme" => Ok(EngineKind::Nvme),
            "ram" => Ok(EngineKind::Ram),
            other => Err(format!("unknown engine {other:?}: expected auto, uring, sync, nvme or ram")),
        }
    }
}

/// Environment variable that overrides the configured engine for every image.
pub const ENGINE_ENV: &str = "PANGATE_ENGINE";

impl EngineKind {
    /// The configured kind, overridden by `PANGATE_ENGINE` when set.
    pub fn resolve(configured: EngineKind) -> Result<EngineKind, String> {
        match std::env::var(ENGINE_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(configured),
        }
    }
}

/// Opens the image at `path` (creating a missing file as `opts` say) on an engine of
/// `kind`: the NVMe engine for an NVMe namespace's generic device, else as [`open_engine`].
pub fn open_path(
    path: &std::path::Path,
    opts: &ImageOptions,
    kind: EngineKind,
    depth: u32,
) -> io::Result<Box<dyn Backend>> {
    if nvme::chosen(kind, path)? {
        return Ok(Box::new(NvmeEngine::open(path, opts.read_only, depth)?));
    }
    open_engine(Image::open(path, opts)?, kind, depth)
}

/// Opens an engine of `kind` on an image. `Auto` probes io_uring and falls back to the
/// synchronous engine with one log line saying why.
pub fn open_engine(image: Image, kind: EngineKind, depth: u32) -> io::Result<Box<dyn Backend>> {
    match kind {
        EngineKind::Nvme => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: the nvme engine drives an NVMe namespace's device, not a file", image.path.display()),
        )),
        EngineKind::Ram => Ok(Box::new(RamEngine::new(image.size))),
        EngineKind::Sync => Ok(Box::new(SyncEngine::new(image))),
        EngineKind::Uring => Ok(Box::new(UringEngine::new(image, depth)?)),
        EngineKind::Auto => match uring::probe() {
            Ok(()) => Ok(Box::new(UringEngine::new(image, depth)?)),
            Err(why) => {
                tracing::warn!(reason = %why, "io_uring unavailable; using the synchronous engine");
                Ok(Box::new(SyncEngine::new(image)))
            }
        },
    }
}

/// Checks that `[offset, offset+len)` lies inside an image of `size` bytes.
pub(crate) fn in_bounds(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// The byte range of an op on the image, for bounds checks.
pub(crate) fn op_extent(op: &IoOp) -> Option<(u64, u64)> {
    match op {
        IoOp::Read { offset, range, .. } | IoOp::Write { offset, range, .. } => {
            Some((*offset, (range.end - range.start) as u64))
        }
        IoOp::Unmap { offset, len } | IoOp::WriteZeroes { offset, len } | IoOp::BlockStatus { offset, len } => {
            Some((*offset, *len))
        }
        IoOp::Flush => None,
    }
}

/// Validates a request against the image and its buffer; engines call this before anything.
pub(crate) fn validate(op: &IoOp, size: u64) -> Result<(), EngineError> {
    if let IoOp::Read { buf, range, .. } | IoOp::Write { buf, range, .. } = op {
        if range.start > range.end || range.end > buf.len() {
            return Err(EngineError::OutOfRange);
        }
    }
    match op_extent(op) {
        Some((offset, len)) if !in_bounds(offset, len, size) => Err(EngineError::OutOfRange),
        _ => Ok(()),
    }
}

/// Merges adjacent extents of the same kind.
pub(crate) fn push_extent(out: &mut Vec<AllocExtent>, len: u64, mapped: bool) {
    if len == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.mapped == mapped => last.len += len,
        _ => out.push(AllocExtent { len, mapped }),
    }
}
