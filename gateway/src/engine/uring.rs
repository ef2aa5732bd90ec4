//! The io_uring engine: the image registered as a fixed file, an arena registered as a
//! fixed buffer, batched submission, and in-flight state in a slab indexed by the CQE's
//! user data.
//!
//! An engine starts with a ring of its own. A gateway worker then moves it into the
//! worker's ring ([`UringHost`]) with [`Backend::attach`], so one ring per worker carries
//! the I/O of all its images and its doorbells; [`Backend::detach`] gives the engine a ring
//! of its own again before the image leaves the worker.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, register::Probe, IoUring};
use scsi::IoDone;

use super::image::refused;
use super::sys::host::{Key, UringHost};
use super::sys::inflight::{OwnRing, Pushed, Ring as Via, Slots, Target};
use super::sys::mapping::Mapping;
use super::{sys, validate, AlignedBuf, Arena, Backend, EngineError, Image, IoCompletion, IoOp, IoRequest};

/// Bytes of registered buffer memory of an engine on a ring of its own, made when it first
/// needs a buffer. Engines on a worker's ring share the worker's arena instead
/// ([`UringHost::arena`]).
pub const ARENA_BYTES: usize = 16 << 20;

/// Default most SQEs handed to the kernel per `io_uring_enter`.
///
/// Measured on a virtio disk: submitting a whole queue's worth at once makes the device
/// complete it as one wave, so every wave waits for its slowest request and the queue runs
/// in lockstep (-15% IOPS at QD32 against fio). Small batches keep completions staggered
/// and still save most syscalls.
pub const SUBMIT_BATCH: usize = 4;

/// How many times a request that made partial progress, or hit EAGAIN, is resubmitted.
const MAX_RETRIES: u8 = 16;

/// Largest read or write an engine over a memory-backed image does in place.
const IN_PLACE_MAX: usize = 128 << 10;

/// Checks that io_uring can be set up here and supports every opcode the engine uses.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(4).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| format!("io_uring probe failed: {e}"))?;
    let needed = [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::ReadFixed::CODE, "READ_FIXED"),
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
    ];
    match needed.iter().find(|(code, _)| !p.is_supported(*code)) {
        Some((_, name)) => Err(format!("the kernel's io_uring lacks IORING_OP_{name}")),
        None => Ok(()),
    }
}

/// Where an engine's SQEs go.
// One per engine, never in a collection: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Ring {
    /// A ring of its own: the image is fixed file 0, its arena fixed buffer 0.
    Own(OwnRing),
    /// A worker's ring, under `key`, with the image at fixed file `file` and buffers from
    /// the worker's shared `arena` (if registered), which the host holds.
    Hosted { host: Arc<UringHost>, key: Key, file: u32, arena: Option<Arc<Arena>> },
}

/// io_uring engine over one image.
pub struct UringEngine {
    ring: Ring,
    image: Image,
    /// Requests submitted and not yet completed; declared after `ring`, so a ring of its
    /// own closes before requests the kernel still has are leaked.
    slots: Slots,
    ready: VecDeque<IoCompletion>,
    queued: usize,
    /// Most SQEs queued before they are handed to the kernel.
    submit_batch: usize,
    can_punch: bool,
    can_zero_range: bool,
    /// CQEs taken from a worker's ring, as (slot, result); kept to reuse its allocation.
    cqes: Vec<(u32, i32)>,
    /// The image is a buffered file in memory (tmpfs, ramfs). io_uring cannot read or write
    /// those without possibly blocking, so it hands every such request to an io-wq thread:
    /// a thread wakeup per I/O, tens of microseconds on a virtual machine. A lone request
    /// (nothing else in flight to overlap with) is done in place instead; see `push`.
    memory_backed: bool,
    /// Requests done in place so far.
    in_place: u64,
    /// A writable memory-backed image, mapped: writes of any size into allocated pages are
    /// copied straight into them, in place (see [`Mapping`]).
    mapping: Option<Mapping>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("image", &self.image.path)
            .field("depth", &self.slots.capacity())
            .field("in_flight", &self.slots.outstanding())
            .field("fixed_buffers", &self.arena().is_some())
            .field("hosted", &matches!(self.ring, Ring::Hosted { .. }))
            .finish()
    }
}

impl UringEngine {
    /// An engine with room for `depth` requests in flight, on a ring of its own.
    pub fn new(image: Image, depth: u32) -> io::Result<UringEngine> {
        let depth = depth.clamp(1, 4096);
        let ring = Ring::Own(OwnRing::new(&image.file, depth, ARENA_BYTES)?);
        let memory_backed = memory_backed(&image);
        Ok(UringEngine {
            ring,
            slots: Slots::new(depth),
            ready: VecDeque::new(),
            queued: 0,
            submit_batch: SUBMIT_BATCH,
            can_punch: true,
            can_zero_range: true,
            cqes: Vec::new(),
            memory_backed,
            in_place: 0,
            mapping: map_writable(&image, memory_backed),
            image,
        })
    }

    /// How many reads and writes this engine has done in place, without the ring.
    pub fn in_place(&self) -> u64 {
        self.in_place
    }

    /// Sets the most SQEs handed to the kernel per `io_uring_enter` (at least 1).
    pub fn set_submit_batch(&mut self, n: usize) {
        self.submit_batch = n.max(1);
    }

    /// Enables a ring of its own created disabled, making the calling thread its single
    /// issuer.
    fn enable(&mut self) -> io::Result<()> {
        if let Ring::Own(own @ OwnRing { enabled: false, .. }) = &mut self.ring {
            own.ring.submitter().register_enable_rings()?;
            own.enabled = true;
        }
        Ok(())
    }

    /// Requests submitted and not yet completed.
    fn outstanding(&self) -> usize {
        self.slots.outstanding()
    }

    /// The arena buffers come from: the own ring's, or the one registered in the host.
    fn arena(&self) -> Option<&Arc<Arena>> {
        match &self.ring {
            Ring::Own(own) => own.arena(),
            Ring::Hosted { arena, .. } => arena.as_ref(),
        }
    }

    /// The arena buffers come from, made now for a ring of its own that has none yet.
    fn arena_or_make(&mut self) -> Option<&Arc<Arena>> {
        match &mut self.ring {
            Ring::Own(own) => own.arena_or_make(),
            Ring::Hosted { arena, .. } => arena.as_ref(),
        }
    }

    /// Waits for every request in the kernel, completing them into `ready`. Bounded: each
    /// round takes at least one completion or gives up.
    fn settle(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        for _ in 0..self.slots.capacity() * usize::from(MAX_RETRIES + 1) + 1 {
            if self.outstanding() == 0 {
                break;
            }
            self.reap(&mut out, self.ready.len() + 1)?;
            self.ready.extend(out.drain(..));
        }
        Ok(())
    }

    /// The image this engine serves.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Queues a slot's SQE, handing the queue to the kernel every `submit_batch` SQEs; or,
    /// for a lone read or write on a memory-backed image, does it now.
    fn push(&mut self, slot: u32) -> io::Result<()> {
        if let Some(m) = &mut self.mapping {
            let op = &self.slots.get(slot).expect("push of an empty slot").req.op;
            if let IoOp::Unmap { offset, len } | IoOp::WriteZeroes { offset, len } = *op {
                // Deallocated (or perhaps so): writes there must allocate the usual way
                // again. Done now, on this thread, so no mapped write ever overlaps a
                // deallocation in flight (a fault that must allocate can be SIGBUS).
                m.forget(offset, len);
                self.complete_sync(slot);
                return Ok(());
            }
        }
        if let Some(result) = self.write_mapped(slot) {
            self.in_place += 1;
            self.finish(slot, result);
            return Ok(());
        }
        if self.memory_backed && self.outstanding() == 1 {
            if let Some(result) = self.do_in_place(slot) {
                self.in_place += 1;
                self.finish(slot, result);
                return Ok(());
            }
        }
        let target = match self.ring {
            Ring::Own(_) => Target { file: 0, punch: self.can_punch, zero_range: self.can_zero_range },
            Ring::Hosted { file, .. } => Target { file, punch: self.can_punch, zero_range: self.can_zero_range },
        };
        let flush = self.queued + 1 >= self.submit_batch;
        let via = match &mut self.ring {
            Ring::Own(own) => Via::Own(&mut own.ring),
            Ring::Hosted { host, key, .. } => Via::Hosted { host, key: *key },
        };
        match self.slots.push(slot, target, via, flush)? {
            Pushed::Queued => {
                self.queued = if flush { 0 } else { self.queued + 1 };
            }
            Pushed::Synchronous => self.complete_sync(slot),
        }
        Ok(())
    }

    /// Copies a slot's write (what is left of it) into the image's mapping; `None` when
    /// there is no mapping, or the request is not a plain write into allocated pages. FUA
    /// writes go through the ring, as on any image, though on tmpfs nothing needs flushing.
    fn write_mapped(&mut self, slot: u32) -> Option<Result<IoDone, EngineError>> {
        let mapping = self.mapping.as_mut()?;
        let inflight = self.slots.get_mut(slot)?;
        let IoOp::Write { offset, buf, range, fua: false } = &mut inflight.req.op else { return None };
        let done = inflight.done;
        // `range` was validated against the buffer's length; the buffer may be a node's
        // shared memory, so it is read through its view.
        let src = buf.view().subslice((range.start + done) as u64, (range.len() - done) as u64).ok()?;
        mapping.write(*offset + done as u64, src).then_some(Ok(IoDone::Done))
    }

    /// Reads or writes a slot's request (what is left of it) with pread/pwrite on the
    /// calling thread; `None` for anything else, FUA writes and large transfers, which go
    /// through the ring. A memory-backed image never waits for a device, so this costs
    /// the copy and a system call.
    fn do_in_place(&mut self, slot: u32) -> Option<Result<IoDone, EngineError>> {
        let file = &self.image.file;
        let inflight = self.slots.get_mut(slot)?;
        let (offset, buf, range, write) = match &mut inflight.req.op {
            IoOp::Read { offset, buf, range } => (*offset, buf, range.clone(), false),
            IoOp::Write { offset, buf, range, fua: false } => (*offset, buf, range.clone(), true),
            _ => return None,
        };
        let wanted = range.len();
        let mut done = inflight.done;
        if wanted - done > IN_PLACE_MAX {
            return None;
        }
        for _ in 0..=MAX_RETRIES {
            if done == wanted {
                return Some(Ok(IoDone::Done));
            }
            // `range` was validated against the buffer's length.
            let Ok(view) = buf.view().subslice((range.start + done) as u64, (wanted - done) as u64) else {
                return Some(Err(EngineError::OutOfRange));
            };
            let at = offset + done as u64;
            let n = if write { sys::pwrite_from(file, view, at) } else { sys::pread_into(file, view, at) };
            match n {
                Ok(0) => return Some(Err(EngineError::Short { done, wanted })),
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Some(Err(EngineError::Os(e.raw_os_error().unwrap_or(libc::EIO)))),
            }
        }
        Some(if done == wanted { Ok(IoDone::Done) } else { Err(EngineError::Short { done, wanted }) })
    }

    /// Performs an operation the ring does not carry (block status, fallocate fallbacks).
    fn complete_sync(&mut self, slot: u32) {
        let inflight = self.slots.take(slot);
        let result = match &inflight.req.op {
            IoOp::BlockStatus { offset, len } => if self.memory_backed {
                self.image.block_status_bounded(*offset, *len, BLOCK_STATUS_PROBES)
            } else {
                self.image.block_status(*offset, *len)
            }
            .map(IoDone::Extents),
            IoOp::Unmap { offset, len } => self.image.punch_hole(*offset, *len).map(|_| IoDone::Done),
            IoOp::WriteZeroes { offset, len } => self.image.zero_range(*offset, *len).map(|_| IoDone::Done),
            other => unreachable!("{other:?} always goes through the ring"),
        }
        .map_err(EngineError::from);
        self.ready.push_back(IoCompletion { req: inflight.req, result });
    }

    fn finish(&mut self, slot: u32, result: Result<IoDone, EngineError>) {
        let inflight = self.slots.take(slot);
        self.ready.push_back(IoCompletion { req: inflight.req, result });
    }

    /// Handles one CQE: completes the request, or resubmits what is left of it.
    fn on_cqe(&mut self, slot: u32, res: i32) -> io::Result<()> {
        if !self.slots.answered(slot) {
            tracing::warn!(slot, "a CQE for no request the kernel has; ignored");
            return Ok(());
        }
        let inflight = self.slots.get_mut(slot).expect("a request the kernel had");
        if res < 0 {
            let errno = -res;
            if errno == libc::EAGAIN && inflight.retries < MAX_RETRIES {
                inflight.retries += 1;
                return self.push(slot);
            }
            let err = io::Error::from_raw_os_error(errno);
            match inflight.req.op {
                IoOp::Unmap { .. } if refused(&err) => {
                    self.can_punch = false;
                    self.complete_sync(slot);
                }
                IoOp::WriteZeroes { .. } if refused(&err) => {
                    self.can_zero_range = false;
                    self.complete_sync(slot);
                }
                _ => self.finish(slot, Err(EngineError::Os(errno))),
            }
            return Ok(());
        }
        let wanted = match &inflight.req.op {
            IoOp::Read { range, .. } | IoOp::Write { range, .. } => range.len(),
            _ => {
                self.finish(slot, Ok(IoDone::Done));
                return Ok(());
            }
        };
        inflight.done += res as usize;
        let done = inflight.done;
        if done >= wanted {
            self.finish(slot, Ok(IoDone::Done));
        } else if res == 0 || inflight.retries >= MAX_RETRIES {
            self.finish(slot, Err(EngineError::Short { done, wanted }));
        } else {
            inflight.retries += 1;
            self.push(slot)?;
        }
        Ok(())
    }
}

impl Backend for UringEngine {
    fn submit(&mut self, req: IoRequest) -> Result<(), (IoRequest, EngineError)> {
        if let Err(e) = validate(&req.op, self.image.size) {
            self.ready.push_back(IoCompletion { req, result: Err(e) });
            return Ok(());
        }
        if let Err(e) = self.enable() {
            return Err((req, e.into()));
        }
        let slot = match self.slots.insert(req) {
            Ok(slot) => slot,
            Err(req) => return Err((req, EngineError::Full)),
        };
        if let Err(e) = self.push(slot) {
            return Err((self.slots.take(slot).req, e.into()));
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>, min: usize) -> io::Result<()> {
        self.enable()?;
        let want = min.saturating_sub(self.ready.len()).min(self.outstanding());
        let mut cqes = std::mem::take(&mut self.cqes);
        match &mut self.ring {
            Ring::Own(OwnRing { ring, .. }) => {
                // With DEFER_TASKRUN, finished requests are posted to the CQ only by an enter
                // with GETEVENTS; the kernel raises SQ_TASKRUN when some are waiting.
                let deferred = ring.submission().taskrun();
                if self.queued > 0 || want > 0 || deferred {
                    loop {
                        match ring.submit_and_wait(want) {
                            Ok(_) => break,
                            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                // Bounded: each pass drains what the CQ holds now; resubmissions show up
                // next time.
                cqes.extend(ring.completion().map(|c| (c.user_data() as u32, c.result())));
            }
            Ring::Hosted { host, key, .. } => host.reap(*key, &mut cqes, want > 0, None)?,
        }
        self.queued = 0;
        for (slot, res) in cqes.drain(..) {
            self.on_cqe(slot, res)?;
        }
        self.cqes = cqes;
        out.extend(self.ready.drain(..));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.outstanding() + self.ready.len()
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.ring {
            Ring::Own(own) => own.done_fd.as_ref().map(OwnedFd::as_fd),
            Ring::Hosted { .. } => None,
        }
    }

    fn attach(&mut self, to: &Arc<UringHost>) -> io::Result<bool> {
        if matches!(self.ring, Ring::Hosted { .. }) {
            return Ok(true);
        }
        // Requests on the old ring finish there first.
        self.settle()?;
        let Some((key, file)) = to.join(self.image.file.as_raw_fd()) else { return Ok(false) };
        // Buffers come from the worker's arena from now on; buffers of the old ring's arena
        // still out (none once settled) would keep it alive.
        let arena = to.arena();
        self.ring = Ring::Hosted { host: to.clone(), key, file, arena };
        Ok(true)
    }

    fn detach(&mut self) -> io::Result<()> {
        if !matches!(self.ring, Ring::Hosted { .. }) {
            return Ok(());
        }
        self.settle()?;
        let own = Ring::Own(OwnRing::new(&self.image.file, self.slots.capacity() as u32, ARENA_BYTES)?);
        if let Ring::Hosted { host, key, file, .. } = std::mem::replace(&mut self.ring, own) {
            // The arena is the worker's, and stays registered for its other engines.
            host.leave(key, file, None);
        }
        Ok(())
    }

    fn hosted(&self) -> bool {
        matches!(self.ring, Ring::Hosted { .. })
    }

    fn size(&self) -> u64 {
        self.image.size
    }

    fn grow(&mut self, bytes: u64) -> io::Result<()> {
        self.image.grow(bytes)?;
        if self.mapping.is_some() {
            // The old mapping ends where the image used to: map it all again (or go on
            // without a mapping, through the ring, should that fail).
            self.mapping = map_writable(&self.image, self.memory_backed);
        }
        Ok(())
    }

    fn buffer(&mut self, len: usize) -> AlignedBuf {
        self.arena_or_make().and_then(|a| a.alloc(len)).unwrap_or_else(|| AlignedBuf::zeroed(len))
    }

    fn takes_borrowed(&self) -> bool {
        // Reads and writes go to the kernel as pointers (see `entry`); nothing here touches
        // the bytes.
        true
    }

    fn buffer_for_overwrite(&mut self, len: usize) -> AlignedBuf {
        self.arena_or_make().and_then(|a| a.alloc_for_overwrite(len)).unwrap_or_else(|| AlignedBuf::zeroed(len))
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Buffers in flight belong to the kernel until their CQEs arrive: wait for them
        // (bounded by the number in flight). Where the kernel cannot be waited for (dropped
        // on a thread that is not the ring's issuer, say), `Slots` leaks what it still has
        // rather than free memory the kernel may write, and the host keeps the arena.
        let home = match &self.ring {
            Ring::Own(_) => true,
            Ring::Hosted { host, .. } => host.is_home(),
        };
        if home && self.settle().is_ok() {
            if let Ring::Hosted { host, key, file, .. } = &self.ring {
                host.leave(*key, *file, None);
            }
        }
    }
}

/// Pages whose allocation one block-status request of a memory-backed image looks up, at
/// most (a system call each): 4 MiB; past them a data run is reported to the range's end.
const BLOCK_STATUS_PROBES: u32 = 1024;

/// Whether `image` is a buffered file on a filesystem that lives in memory (tmpfs, or
/// ramfs, whose magic number statfs(2) gives as 0x858458f6).
fn memory_backed(image: &Image) -> bool {
    !image.direct
        && !image.block_device
        && rustix::fs::fstatfs(&image.file).is_ok_and(|s| matches!(s.f_type, libc::TMPFS_MAGIC | 0x8584_58f6))
}

/// A mapping of a writable memory-backed image (`memory_backed` says whether it is one)
/// for [`UringEngine::write_mapped`], or `None` (another kind of image, or the mapping
/// failed: the ring does the writes then).
fn map_writable(image: &Image, memory_backed: bool) -> Option<Mapping> {
    if image.read_only || !memory_backed {
        return None;
    }
    match Mapping::new(&image.file, image.size) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(image = %image.path.display(), error = %e, "mapping a memory-backed image failed; writes go through io_uring");
            None
        }
    }
}
