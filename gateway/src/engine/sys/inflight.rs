//! The io_uring engine's requests while the kernel has them, and the ring of its own it
//! starts with.
//!
//! An SQE for a read or write points into the request's buffer, so the buffer must stay put
//! until the kernel posts its CQE. [`Slots`] makes that a property of the type rather than a
//! promise: it builds every SQE itself from a request it holds, marks the slot as the
//! kernel's, and refuses to hand the request (and its buffer) back until the CQE has been
//! seen. Dropped with requests still in the kernel, it leaks them rather than free memory
//! the kernel may still write.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use super::buf::Arena;
use super::host::{Key, UringHost};
use crate::engine::{IoOp, IoRequest};

/// `validate` checked every read and write range against its buffer when it was submitted.
const VALIDATED: &str = "a range validated against its buffer";

/// A request in a slot, with how far it got.
#[derive(Debug)]
pub struct InFlight {
    /// The request; its buffer is the kernel's while the slot is.
    pub req: IoRequest,
    /// Bytes already transferred, for resubmitting partial reads and writes.
    pub done: usize,
    /// Resubmissions so far.
    pub retries: u8,
}

/// How an SQE is built for this engine's image.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The image's index in the ring's fixed-file table.
    pub file: u32,
    /// Whether FALLOCATE with PUNCH_HOLE goes through the ring.
    pub punch: bool,
    /// Whether FALLOCATE with ZERO_RANGE goes through the ring.
    pub zero_range: bool,
}

/// What an SQE was pushed to.
#[derive(Debug)]
pub enum Pushed {
    /// Queued in the ring.
    Queued,
    /// The operation has no SQE here (block status, a refused fallocate): the caller
    /// performs it synchronously.
    Synchronous,
}

/// A fixed number of request slots, indexed by the token in each CQE.
#[derive(Debug)]
pub struct Slots {
    slots: Vec<Option<InFlight>>,
    /// Whether the kernel has the slot's SQE and has not yet answered it.
    in_kernel: Vec<bool>,
    free: Vec<u32>,
}

impl Slots {
    /// `depth` empty slots.
    pub fn new(depth: u32) -> Slots {
        Slots {
            slots: (0..depth).map(|_| None).collect(),
            in_kernel: vec![false; depth as usize],
            free: (0..depth).rev().collect(),
        }
    }

    /// How many slots there are.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding a request (in the kernel or not).
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Puts `req` in a free slot; gives it back when every slot is taken.
    pub fn insert(&mut self, req: IoRequest) -> Result<u32, IoRequest> {
        let Some(slot) = self.free.pop() else { return Err(req) };
        self.slots[slot as usize] = Some(InFlight { req, done: 0, retries: 0 });
        Ok(slot)
    }

    /// The request in `slot`, to read.
    pub fn get(&self, slot: u32) -> Option<&InFlight> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The request in `slot`, to change. Not while the kernel has it: its buffer could be
    /// swapped out from under the I/O.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut InFlight> {
        assert!(!self.kernels(slot), "a request the kernel has was asked for");
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Empties `slot` and hands its request back. Not while the kernel has it.
    pub fn take(&mut self, slot: u32) -> InFlight {
        assert!(!self.kernels(slot), "a request the kernel has was taken back");
        let inflight = self.slots[slot as usize].take().expect("take of an empty slot");
        self.free.push(slot);
        inflight
    }

    fn kernels(&self, slot: u32) -> bool {
        self.in_kernel.get(slot as usize).copied().unwrap_or(false)
    }

    /// The kernel has answered `slot`'s SQE (its CQE arrived): the request is the engine's
    /// again. `false` for a token that names no request in the kernel (a stray CQE).
    pub fn answered(&mut self, slot: u32) -> bool {
        match self.in_kernel.get_mut(slot as usize) {
            Some(k @ true) => {
                *k = false;
                true
            }
            _ => false,
        }
    }

    /// Builds the SQE for `slot`'s request (what is left of it) and queues it on `ring`,
    /// handing the queue to the kernel when `flush`.
    pub fn push(&mut self, slot: u32, target: Target, ring: Ring<'_>, flush: bool) -> io::Result<Pushed> {
        assert!(!self.kernels(slot), "a request pushed twice");
        let Some(entry) = self.entry(slot, target) else { return Ok(Pushed::Synchronous) };
        match ring {
            Ring::Own(ring) => {
                let entry = entry.user_data(u64::from(slot));
                loop {
                    // SAFETY: the SQE points into the slot's buffer (or at no memory), which
                    // the slot keeps, unmoved (its heap memory never moves), until `answered`
                    // sees the CQE; `take` and `get_mut` refuse until then, and `Drop` leaks it.
                    if unsafe { ring.submission().push(&entry) }.is_ok() {
                        break;
                    }
                    ring.submit()?;
                }
                // From here the kernel may have it, whatever becomes of the submit below.
                self.in_kernel[slot as usize] = true;
                if flush {
                    if let Err(e) = ring.submit() {
                        tracing::debug!(error = %e, "submitting failed; the SQE goes with the next enter");
                    }
                }
            }
            Ring::Hosted { host, key } => {
                // SAFETY: as above; the host answers with `slot` as the token.
                unsafe { host.push(key, slot, entry)? };
                self.in_kernel[slot as usize] = true;
                if flush {
                    if let Err(e) = host.submit() {
                        tracing::debug!(error = %e, "submitting failed; the SQE goes with the next enter");
                    }
                }
            }
        }
        Ok(Pushed::Queued)
    }

    fn entry(&mut self, slot: u32, target: Target) -> Option<squeue::Entry> {
        let fixed = types::Fixed(target.file);
        let inflight = self.slots[slot as usize].as_mut().expect("entry for an empty slot");
        let done = inflight.done;
        let entry = match &mut inflight.req.op {
            IoOp::Read { offset, buf, range } => {
                let index = buf.fixed_index();
                let view =
                    buf.view().subslice((range.start + done) as u64, (range.len() - done) as u64).expect(VALIDATED);
                let (ptr, len) = (view.as_ptr(), view.len() as u32);
                let off = *offset + done as u64;
                match index {
                    Some(i) => opcode::ReadFixed::new(fixed, ptr, len, i).offset(off).build(),
                    None => opcode::Read::new(fixed, ptr, len).offset(off).build(),
                }
            }
            IoOp::Write { offset, buf, range, fua } => {
                let index = buf.fixed_index();
                let view =
                    buf.view().subslice((range.start + done) as u64, (range.len() - done) as u64).expect(VALIDATED);
                let (ptr, len) = (view.as_ptr(), view.len() as u32);
                let off = *offset + done as u64;
                let flags = if *fua { libc::RWF_DSYNC } else { 0 };
                match index {
                    Some(i) => opcode::WriteFixed::new(fixed, ptr, len, i).offset(off).rw_flags(flags).build(),
                    None => opcode::Write::new(fixed, ptr, len).offset(off).rw_flags(flags).build(),
                }
            }
            IoOp::Flush => opcode::Fsync::new(fixed).flags(types::FsyncFlags::DATASYNC).build(),
            IoOp::Unmap { offset, len } if target.punch => opcode::Fallocate::new(fixed, *len)
                .offset(*offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            IoOp::WriteZeroes { offset, len } if target.zero_range => opcode::Fallocate::new(fixed, *len)
                .offset(*offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            _ => return None,
        };
        Some(entry)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // The kernel may still write into these requests' buffers: leak them.
        for (slot, kernel) in self.slots.iter_mut().zip(&self.in_kernel) {
            if *kernel {
                if let Some(inflight) = slot.take() {
                    std::mem::forget(inflight);
                }
            }
        }
    }
}

/// The ring an SQE goes to.
pub enum Ring<'a> {
    /// The engine's own ring.
    Own(&'a mut IoUring),
    /// A worker's ring, under the engine's key.
    Hosted {
        /// The worker's ring.
        host: &'a UringHost,
        /// The engine's key in it.
        key: Key,
    },
}

impl std::fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ring::Own(_) => f.write_str("Own"),
            Ring::Hosted { key, .. } => f.debug_struct("Hosted").field("key", key).finish_non_exhaustive(),
        }
    }
}

/// A ring of an engine's own with room for `depth` requests (SQEs and CQEs of either size),
/// `file` as fixed file 0, and an eventfd the kernel signals as requests finish, when one
/// can be registered. It is created disabled, so that the thread that first drives it
/// becomes its single issuer, unless the kernel is older than 6.1: the bool says whether it
/// is enabled already.
pub fn engine_ring<S: squeue::EntryMarker, C: io_uring::cqueue::EntryMarker>(
    file: &impl AsRawFd,
    depth: u32,
) -> io::Result<(IoUring<S, C>, bool, Option<OwnedFd>)> {
    // Completions are posted only when the engine's thread enters the kernel
    // (DEFER_TASKRUN), so they trickle in as it asks rather than waking it for each one.
    // Kernels before 6.1 lack these flags; they get a plain ring.
    let (ring, enabled) = IoUring::<S, C>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled()
        .setup_cqsize(depth * 2)
        .build(depth)
        .map(|r| (r, false))
        .or_else(|_| IoUring::<S, C>::builder().setup_cqsize(depth * 2).build(depth).map(|r| (r, true)))?;
    ring.submitter().register_files(&[file.as_raw_fd()])?;
    let done_fd =
        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
            .map_err(io::Error::from)
            .and_then(|fd| ring.submitter().register_eventfd(fd.as_raw_fd()).map(|()| fd))
            .inspect_err(
                |e| tracing::debug!(error = %e, "no completion eventfd; the worker naps while I/O is in flight"),
            )
            .ok();
    Ok((ring, enabled, done_fd))
}

/// A ring of an engine's own: the image as fixed file 0 and, when registration works, an
/// arena as fixed buffer 0, which the ring holds for as long as it is registered.
pub struct OwnRing {
    /// The ring.
    pub ring: IoUring,
    /// Whether the ring has been enabled; the first thread to use it enables it.
    pub enabled: bool,
    /// Registered with the ring: the kernel signals it as requests finish.
    pub done_fd: Option<OwnedFd>,
    /// The registered arena, made on first use; dropped after `ring`, which unregisters it.
    arena: Option<Arc<Arena>>,
    /// Bytes of arena to make on first use, and whether that was tried.
    arena_bytes: usize,
    arena_tried: bool,
}

impl std::fmt::Debug for OwnRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnRing").field("enabled", &self.enabled).finish_non_exhaustive()
    }
}

impl OwnRing {
    /// A ring with room for `depth` requests, created disabled so that the thread that
    /// first drives it becomes its single issuer, with `file` as fixed file 0. An arena of
    /// `arena_bytes` becomes fixed buffer 0 when first asked for ([`OwnRing::arena_or_make`]),
    /// not before: an engine that only ever joins a worker's ring pins nothing of its own.
    pub fn new(file: &impl AsRawFd, depth: u32, arena_bytes: usize) -> io::Result<OwnRing> {
        let (ring, enabled, done_fd) = engine_ring(file, depth)?;
        Ok(OwnRing { ring, enabled, done_fd, arena: None, arena_bytes, arena_tried: arena_bytes == 0 })
    }

    /// The registered arena, if made.
    pub fn arena(&self) -> Option<&Arc<Arena>> {
        self.arena.as_ref()
    }

    /// The registered arena, made and registered now if this is the first call (`None`
    /// when registration fails: plain reads and writes then). Call from the ring's issuer.
    pub fn arena_or_make(&mut self) -> Option<&Arc<Arena>> {
        if !std::mem::replace(&mut self.arena_tried, true) {
            let arena = Arena::new(self.arena_bytes, 0);
            // SAFETY: the arena's memory stays allocated while the ring lives: `OwnRing`
            // holds an Arc to it, and its fields drop in declaration order, the ring
            // (unregistering it) before the arena.
            match unsafe { self.ring.submitter().register_buffers(&[arena.iovec()]) } {
                Ok(()) => self.arena = Some(arena),
                Err(e) => tracing::debug!(error = %e, "could not register fixed buffers; using plain reads and writes"),
            }
        }
        self.arena.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::AlignedBuf;

    #[test]
    fn a_request_the_kernel_has_cannot_be_taken_back() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let Ok(mut own) = OwnRing::new(&file, 4, 1 << 16) else {
            eprintln!("skipping: no io_uring here");
            return;
        };
        if !own.enabled {
            own.ring.submitter().register_enable_rings().unwrap();
        }
        let mut slots = Slots::new(2);
        let op = IoOp::Read { offset: 0, buf: AlignedBuf::zeroed(4096), range: 0..4096 };
        let slot = slots.insert(IoRequest { tag: 1, op }).unwrap();
        let target = Target { file: 0, punch: true, zero_range: true };
        assert!(matches!(slots.push(slot, target, Ring::Own(&mut own.ring), true).unwrap(), Pushed::Queued));
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slots.take(slot)));
        assert!(taken.is_err(), "the buffer is the kernel's until its CQE");
        own.ring.submit_and_wait(1).unwrap();
        let cqe = own.ring.completion().next().unwrap();
        assert_eq!(cqe.user_data(), u64::from(slot));
        assert!(slots.answered(slot) && !slots.answered(slot), "answered once");
        assert_eq!(slots.take(slot).req.tag, 1);
        assert_eq!(slots.outstanding(), 0);
    }
}
