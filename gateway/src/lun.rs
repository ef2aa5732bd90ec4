//! Runs SCSI commands for one LUN on a backend engine: decode, execute, drive each task's
//! backend steps with many commands in flight, and hold block-range locks so COMPARE AND
//! WRITE is atomic against overlapping writes.
//!
//! Every submitted command produces exactly one [`Finished`], on every path: immediate
//! answers, backend failures, and engines that refuse a request.

use std::collections::VecDeque;
use std::io;

use scsi::opcodes::op;
use scsi::{
    Action, Asc, BackendOp, Buf, Completion, DataIn, InitiatorId, IoDone, LockId, LockRequest, LogicalUnit, LunConfig,
    Nexus, RangeLocks, Sense, SenseKey, Step, Task,
};

use shmem::PeerSlice;

use crate::engine::{AlignedBuf, Backend, EngineError, IoCompletion, IoOp, IoRequest};

/// A command that has completed.
#[derive(Debug)]
pub struct Finished {
    /// The caller's tag from [`LunDriver::submit`].
    pub tag: u64,
    /// Status, sense and how data-in was produced.
    pub completion: Completion,
    /// The data-in buffer, when backend reads filled it.
    buffer: Option<AlignedBuf>,
}

impl Finished {
    /// For a READ started with [`LunDriver::submit_into`] whose data went straight into the
    /// caller's memory: how many bytes arrived there. `None` when the data (if any) must be
    /// fetched with [`Finished::data`].
    pub fn in_place(&self) -> Option<usize> {
        match (&self.completion.data_in, &self.buffer) {
            (DataIn::InBuffer(n), Some(b)) if b.is_borrowed() => Some(*n),
            (_, Some(b)) if b.is_borrowed() => Some(0),
            _ => None,
        }
    }

    /// The data-in bytes, already limited to what the command transferred.
    pub fn data(&self) -> &[u8] {
        match &self.completion.data_in {
            DataIn::None => &[],
            DataIn::Bytes(b) => b,
            DataIn::InBuffer(n) => self.buffer.as_ref().map_or(&[][..], |b| &b.as_slice()[..*n]),
        }
    }
}

/// What [`LunDriver::start_direct`] made of a command.
#[derive(Debug)]
pub enum Direct {
    /// Not one for the direct path; nothing has happened, so submit it as usual.
    Declined,
    /// Finished already: a WRITE whose data is in the image, or a command answered without
    /// touching it (unit attention, LBA out of range, ...).
    Done(Completion),
    /// A READ whose copy waits for [`LunDriver::finish_read`], its first bytes on their
    /// way into the cache meanwhile.
    Read(DirectRead),
}

/// A READ started on the direct path, to finish with [`LunDriver::finish_read`].
#[derive(Debug)]
pub struct DirectRead {
    task: Task,
    offset: u64,
    /// Bytes to copy: the READ's (the caller's memory holds them all).
    len: usize,
}

impl DirectRead {
    /// Where it reads in the image, and how many bytes.
    pub fn extent(&self) -> (u64, usize) {
        (self.offset, self.len)
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    DataIn,
    DataOut,
    Scratch,
}

#[derive(Debug)]
struct Running {
    tag: u64,
    /// The nexus it came from.
    initiator: InitiatorId,
    /// Aborted by a PREEMPT AND ABORT while its I/O was in flight: it ends with TASK
    /// ABORTED.
    aborted: bool,
    task: Task,
    data_in: Option<AlignedBuf>,
    data_out: Option<AlignedBuf>,
    scratch: Option<AlignedBuf>,
    lock: Option<LockId>,
    lock_request: Option<LockRequest>,
    /// The buffer lent to the backend for the outstanding step.
    lent: Option<Which>,
    /// Data-out offset of the outstanding compare, for the miscompare offset.
    compare_at: usize,
}

impl Running {
    fn slot(&mut self, which: Which) -> &mut Option<AlignedBuf> {
        match which {
            Which::DataIn => &mut self.data_in,
            Which::DataOut => &mut self.data_out,
            Which::Scratch => &mut self.scratch,
        }
    }
}

/// One LUN: its SCSI state and its engine.
#[derive(Debug)]
pub struct LunDriver {
    lu: LogicalUnit,
    backend: Box<dyn Backend>,
    locks: RangeLocks,
    running: Vec<Option<Running>>,
    free: Vec<usize>,
    parked: VecDeque<usize>,
    finished: Vec<Finished>,
    reaped: Vec<IoCompletion>,
    /// Where persistent reservations are saved while APTPL is set.
    reservations: Option<std::path::PathBuf>,
    /// Save them after every change, APTPL or not: another gateway may take the LUN over.
    shared_reservations: bool,
    /// PREEMPT AND ABORT commands waiting for the aborted tasks still at the backend:
    /// (tag, completion, running slots not yet ended).
    awaiting: Vec<(u64, Completion, Vec<usize>)>,
}

impl LunDriver {
    /// A driver for `cfg` over `backend`. The configured capacity must fit in the backend.
    pub fn new(cfg: LunConfig, backend: Box<dyn Backend>) -> io::Result<LunDriver> {
        if cfg.capacity_bytes() > backend.size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("LUN capacity {} exceeds its image's {} bytes", cfg.capacity_bytes(), backend.size()),
            ));
        }
        Ok(LunDriver {
            lu: LogicalUnit::new(cfg),
            backend,
            locks: RangeLocks::new(),
            running: Vec::new(),
            free: Vec::new(),
            parked: VecDeque::new(),
            finished: Vec::new(),
            reaped: Vec::new(),
            reservations: None,
            shared_reservations: false,
            awaiting: Vec::new(),
        })
    }

    /// Keeps persistent reservations at `path` while APTPL is set, restoring what an
    /// earlier run saved there.
    pub fn keep_reservations_at(&mut self, path: std::path::PathBuf) -> anyhow::Result<()> {
        if let Some((pr, _)) = crate::reservations::load(&path)?.filter(|(pr, _)| pr.aptpl) {
            self.lu.restore_persistent(pr);
        }
        self.reservations = Some(path);
        Ok(())
    }

    /// Saves the reservation state after every change, APTPL or not, for the gateway that
    /// takes this LUN over ([`LunDriver::reload_reservations`]); the attentions saved
    /// already count as told. Call after [`LunDriver::keep_reservations_at`].
    pub fn share_reservations(&mut self) -> anyhow::Result<()> {
        self.shared_reservations = true;
        self.lu.persist_every_change(true);
        // What was saved before this gateway started was told to the nexuses then.
        if let Some((_, events)) =
            self.reservations.as_ref().map(|p| crate::reservations::load(p)).transpose()?.flatten()
        {
            self.lu.know_events(events);
        }
        Ok(())
    }

    /// Replaces the reservation state with the saved copy (none saved: no registrations),
    /// and raises the attentions the last owner raised, as a gateway does when it takes the
    /// LUN over from another.
    pub fn reload_reservations(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.reservations else { return Ok(()) };
        let (pr, events) = crate::reservations::load(path)?.unwrap_or_default();
        self.lu.take_over_persistent(pr, events);
        Ok(())
    }

    /// Saves the reservation state if the last command changed it with APTPL set. The
    /// command must not report success when that fails: the initiator was promised the
    /// state survives power loss.
    fn save_reservations(&mut self, completion: Completion, descriptor: bool) -> Completion {
        let (Some(path), Some((pr, events))) = (self.reservations.as_ref(), self.lu.take_pr_to_persist()) else {
            return completion;
        };
        match crate::reservations::save(path, pr, events, self.shared_reservations) {
            Ok(()) => completion,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "persistent reservations could not be saved");
                Completion::check(&Sense::new(SenseKey::HardwareError, scsi::Asc::INTERNAL_TARGET_FAILURE), descriptor)
            }
        }
    }

    /// The SCSI logical unit.
    pub fn unit(&self) -> &LogicalUnit {
        &self.lu
    }

    /// The SCSI logical unit, for resets and capacity changes.
    pub fn unit_mut(&mut self) -> &mut LogicalUnit {
        &mut self.lu
    }

    /// Grows the LUN to `bytes` (a whole number of blocks, at least its capacity): the image
    /// grows first, then the capacity, and every initiator gets CAPACITY DATA HAS CHANGED.
    pub fn grow(&mut self, bytes: u64) -> io::Result<()> {
        let cfg = self.lu.config();
        let bs = u64::from(cfg.block_size);
        if !bytes.is_multiple_of(bs) || bytes < cfg.capacity_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{bytes} bytes is not a whole number of {bs}-byte blocks at least the LUN's {}",
                    cfg.capacity_bytes()
                ),
            ));
        }
        if bytes == cfg.capacity_bytes() {
            return Ok(());
        }
        if self.backend.size() < bytes {
            self.backend.grow(bytes)?;
        }
        self.lu.set_capacity(bytes / bs);
        Ok(())
    }

    /// The engine's name.
    pub fn engine_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Moves the engine's I/O into a worker's ring ([`Backend::attach`]); returns whether
    /// it moved.
    pub fn attach(&mut self, host: &std::sync::Arc<crate::engine::host::UringHost>) -> io::Result<bool> {
        self.backend.attach(host)
    }

    /// Gives the engine a ring of its own again ([`Backend::detach`]).
    pub fn detach(&mut self) -> io::Result<()> {
        self.backend.detach()
    }

    /// Whether the engine's completions arrive in a worker's ring.
    pub fn hosted(&self) -> bool {
        self.backend.hosted()
    }

    /// The engine's completion eventfd ([`Backend::completion_fd`]).
    pub fn completion_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.backend.completion_fd()
    }

    /// Commands submitted and not yet returned by [`LunDriver::poll`].
    pub fn outstanding(&self) -> usize {
        self.running.len() - self.free.len() + self.finished.len()
    }

    /// Whether data-out may be a borrowed view of a node's memory for plain writes (see
    /// [`AlignedBuf::over_shared`]).
    pub fn takes_borrowed(&self) -> bool {
        self.backend.takes_borrowed()
    }

    /// A data-out buffer from the engine (its registered arena where it has one), for
    /// callers that fill all of it before [`LunDriver::submit_buf`]; it is not cleared.
    pub fn buffer_for_overwrite(&mut self, len: usize) -> AlignedBuf {
        self.backend.buffer_for_overwrite(len)
    }

    /// Starts a command whose data-out (if any) the caller provides as a slice.
    pub fn submit(&mut self, tag: u64, nexus: &Nexus<'_>, cdb: &[u8], data_out: &[u8]) {
        let buf = if data_out.is_empty() {
            None
        } else {
            let mut b = self.buffer_for_overwrite(data_out.len());
            b.as_mut_slice().copy_from_slice(data_out);
            Some(b)
        };
        self.submit_buf(tag, nexus, cdb, buf);
    }

    /// Starts a command, taking ownership of its data-out buffer.
    pub fn submit_buf(&mut self, tag: u64, nexus: &Nexus<'_>, cdb: &[u8], data_out: Option<AlignedBuf>) {
        self.start(tag, nexus, cdb, data_out, None)
    }

    /// Starts a READ whose data the engine places straight into `data_in` (a borrowed view
    /// of the caller's memory, see [`AlignedBuf::over_shared`]) rather than into a buffer of its
    /// own; [`Finished::in_place`] then says how much arrived. Other commands, or a buffer
    /// too small for the READ, fall back to the engine's buffer.
    pub fn submit_into(&mut self, tag: u64, nexus: &Nexus<'_>, cdb: &[u8], data_in: AlignedBuf) {
        self.start(tag, nexus, cdb, None, Some(data_in))
    }

    fn start(
        &mut self,
        tag: u64,
        nexus: &Nexus<'_>,
        cdb: &[u8],
        data_out: Option<AlignedBuf>,
        into: Option<AlignedBuf>,
    ) {
        let descriptor = self.lu.mode().descriptor_sense;
        let cmd = match self.lu.decode(nexus, cdb) {
            Ok(cmd) => cmd,
            Err(completion) => return self.finished.push(Finished { tag, completion, buffer: None }),
        };
        let bs = self.lu.config().block_size;
        let have = data_out.as_ref().map_or(0, AlignedBuf::len);
        if let Err(sense) = cmd.check_data_out(bs, have) {
            let completion = Completion::check(&sense, descriptor);
            return self.finished.push(Finished { tag, completion, buffer: None });
        }
        let params = match (cmd.parameter_len(bs), data_out.as_ref()) {
            (0, _) | (_, None) => &[][..],
            (n, Some(b)) => &b.as_slice()[..n],
        };
        let task = match self.lu.execute(nexus, &cmd, params) {
            Action::Complete(completion) => {
                if !matches!(cmd, scsi::Command::PersistentReserveOut { .. }) {
                    return self.finished.push(Finished { tag, completion, buffer: None });
                }
                let completion = self.save_reservations(completion, descriptor);
                return self.abort_preempted(tag, completion);
            }
            Action::Backend(task) => task,
        };
        let data_in = match cmd.data_in_len(bs) {
            0 => None,
            n if matches!(cmd, scsi::Command::Read { .. }) => match into {
                Some(b) if b.len() >= n => Some(b),
                _ => Some(self.backend.buffer(n)),
            },
            _ => None,
        };
        let scratch = match task.scratch_len() {
            0 => None,
            n => {
                let mut s = self.backend.buffer(n);
                task.fill_scratch(s.as_mut_slice());
                Some(s)
            }
        };
        let lock_request = task.lock();
        let id = self.free.pop().unwrap_or_else(|| {
            self.running.push(None);
            self.running.len() - 1
        });
        self.running[id] = Some(Running {
            tag,
            initiator: nexus.id,
            aborted: false,
            task,
            data_in,
            data_out,
            scratch,
            lock: None,
            lock_request,
            lent: None,
            compare_at: 0,
        });
        if let Some(req) = lock_request {
            let waiting = self.parked.iter().filter_map(|&p| self.running[p].as_ref().and_then(|r| r.lock_request));
            let waiting: Vec<LockRequest> = waiting.collect();
            match self.locks.try_lock(req, &waiting) {
                Some(lock) => self.running[id].as_mut().expect("just inserted").lock = Some(lock),
                None => return self.parked.push_back(id),
            }
        }
        self.advance(id);
    }

    /// Starts a plain READ or WRITE whose data moves straight between an in-memory image
    /// ([`Backend::memory`]) and the caller's memory `mem` (a node's data area): no
    /// request, buffer or running slot, and a WRITE is done when this returns. A READ is
    /// copied by [`LunDriver::finish_read`] into the same memory, given again then. Anything
    /// else, or a WRITE while block-range locks are held or awaited (COMPARE AND WRITE), is
    /// declined untouched.
    pub fn start_direct(&mut self, nexus: &Nexus<'_>, cdb: &[u8], mem: PeerSlice<'_>, write: bool) -> Direct {
        let len = mem.len();
        let plain = match cdb.first() {
            Some(&(op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16)) => !write,
            Some(&(op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16)) => write,
            _ => false,
        };
        // A WRITE holds its shared lock only while it copies, which nothing can interleave
        // with; with no lock held or awaited it can never conflict, so it takes none.
        if !plain || self.backend.memory().is_none() || (write && (self.locks.held() > 0 || !self.parked.is_empty())) {
            return Direct::Declined;
        }
        let descriptor = self.lu.mode().descriptor_sense;
        let cmd = match self.lu.decode(nexus, cdb) {
            Ok(cmd) => cmd,
            Err(completion) => return Direct::Done(completion),
        };
        let bs = self.lu.config().block_size;
        let short_read = cmd.data_in_len(bs) > len && !write;
        if let Err(sense) = cmd.check_data_out(bs, if write { len } else { 0 }) {
            return Direct::Done(Completion::check(&sense, descriptor));
        }
        if short_read {
            return Direct::Done(Completion::check(&Sense::data_length_mismatch(), descriptor));
        }
        let mut task = match self.lu.execute(nexus, &cmd, &[]) {
            Action::Complete(completion) => return Direct::Done(completion),
            Action::Backend(task) => task,
        };
        let Some(image) = self.backend.memory() else { return Direct::Done(internal_failure(descriptor)) };
        match task.next_step() {
            Step::Io(BackendOp::Write { offset, len: n, from: Buf::DataOut(0), .. }) if write && n <= len => {
                let result = match mem.subslice(0, n as u64) {
                    Ok(src) => image.copy_in(offset, src),
                    Err(_) => Err(EngineError::OutOfRange),
                };
                task.io_done(result.map(|()| IoDone::Done).map_err(|e| e.failure()));
                Direct::Done(finish_direct(&mut task, descriptor))
            }
            Step::Io(BackendOp::Read { offset, len: n, into: Buf::DataIn(0) }) if !write => {
                image.prefetch_head(offset, n);
                Direct::Read(DirectRead { task, offset, len: n })
            }
            other => {
                // LogicalUnit makes a plain READ or WRITE one such step; anything else is a bug.
                tracing::error!(step = ?other, "a plain READ or WRITE asked for an unexpected step");
                Direct::Done(internal_failure(descriptor))
            }
        }
    }

    /// Starts loading more of a direct READ's data, to overlap with another's copy.
    pub fn prefetch_read(&mut self, read: &DirectRead) {
        if let Some(image) = self.backend.memory() {
            image.prefetch_rest(read.offset, read.len);
        }
    }

    /// Copies a direct READ's data into `dst`, the memory its [`LunDriver::start_direct`]
    /// was given; returns its completion and the bytes that arrived.
    pub fn finish_read(&mut self, read: DirectRead, dst: PeerSlice<'_>) -> (Completion, usize) {
        let DirectRead { mut task, offset, len } = read;
        let result = match (self.backend.memory(), dst.subslice(0, len as u64)) {
            (Some(image), Ok(dst)) => image.copy_out(offset, dst),
            (None, _) => Err(EngineError::Full),
            (_, Err(_)) => Err(EngineError::OutOfRange),
        };
        let moved = if result.is_ok() { len } else { 0 };
        task.io_done(result.map(|()| IoDone::Done).map_err(|e| e.failure()));
        (finish_direct(&mut task, self.lu.mode().descriptor_sense), moved)
    }

    /// Drives a task until it waits on the backend or completes.
    fn advance(&mut self, id: usize) {
        // Each pass either lends a buffer to the backend (and returns) or consumes a step;
        // tasks have a bounded number of steps.
        loop {
            let r = self.running[id].as_mut().expect("advance on an empty slot");
            match r.task.next_step() {
                Step::Io(op) => {
                    let (io, lent) = match lend(r, op) {
                        Ok(v) => v,
                        Err(failure) => {
                            r.task.io_done(Err(failure));
                            continue;
                        }
                    };
                    r.lent = lent;
                    if let Err((req, e)) = self.backend.submit(IoRequest { tag: id as u64, op: io }) {
                        let r = self.running[id].as_mut().expect("slot is live");
                        give_back(r, req.op);
                        tracing::warn!(error = %e, "backend refused a request");
                        r.task.io_done(Err(e.failure()));
                        continue;
                    }
                    return;
                }
                Step::Compare { scratch, data_out, len } => {
                    let a = r.scratch.as_ref().map(|b| &b.as_slice()[scratch..scratch + len]);
                    let b = r.data_out.as_ref().map(|b| &b.as_slice()[data_out..data_out + len]);
                    let mismatch = match (a, b) {
                        (Some(a), Some(b)) => scsi::task::first_mismatch(a, b),
                        _ => Some(0),
                    };
                    r.compare_at = data_out;
                    r.task.compared(r.compare_at, mismatch);
                }
                Step::Or { scratch, data_out, len } => {
                    match (r.scratch.as_mut(), r.data_out.as_ref()) {
                        (Some(dst), Some(src)) => {
                            let dst = &mut dst.as_mut_slice()[scratch..scratch + len];
                            let src = &src.as_slice()[data_out..data_out + len];
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d |= s);
                            r.task.ored();
                        }
                        // The driver gives every ORWRITE both buffers; without them it fails.
                        _ => r.task.io_done(Err(scsi::IoFailure::Internal)),
                    }
                }
                Step::Done(completion) => {
                    // Only what outlives the command is taken out; the slot (some 400
                    // bytes) is dropped where it is rather than moved out first.
                    let (tag, lock) = (r.tag, r.lock.take());
                    let (completion, buffer) = if r.aborted {
                        (aborted(), None)
                    } else {
                        let buffer = match completion.data_in {
                            DataIn::InBuffer(_) => r.data_in.take(),
                            _ => None,
                        };
                        (completion, buffer)
                    };
                    self.running[id] = None;
                    self.free.push(id);
                    let had_lock = lock.is_some();
                    if let Some(lock) = lock {
                        self.locks.unlock(lock);
                    }
                    self.finished.push(Finished { tag, completion, buffer });
                    self.ended(id);
                    if had_lock {
                        self.wake_parked();
                    }
                    return;
                }
            }
        }
    }

    /// After a PERSISTENT RESERVE OUT: the tasks of the nexuses a PREEMPT AND ABORT
    /// preempted end with TASK ABORTED. Those waiting for a lock end now; those with I/O at
    /// the backend end when it completes, and the PERSISTENT RESERVE OUT completes only
    /// after them, so nothing the preempted nexus sent lands after it has.
    fn abort_preempted(&mut self, tag: u64, completion: Completion) {
        let gone = self.lu.take_aborted();
        if gone.is_empty() {
            return self.finished.push(Finished { tag, completion, buffer: None });
        }
        let of_gone = |r: &Option<Running>| r.as_ref().is_some_and(|r| gone.contains(&r.initiator));
        let (parked, waiting): (Vec<usize>, Vec<usize>) =
            self.parked.iter().partition(|&&id| of_gone(&self.running[id]));
        self.parked = waiting.into();
        for id in parked {
            let r = self.running[id].take().expect("parked slot is live");
            self.free.push(id);
            self.finished.push(Finished { tag: r.tag, completion: aborted(), buffer: None });
        }
        let mut at_backend = Vec::new();
        for (id, slot) in self.running.iter_mut().enumerate() {
            if let Some(r) = slot.as_mut().filter(|r| gone.contains(&r.initiator)) {
                r.aborted = true;
                at_backend.push(id);
            }
        }
        if at_backend.is_empty() {
            self.finished.push(Finished { tag, completion, buffer: None });
        } else {
            self.awaiting.push((tag, completion, at_backend));
        }
        self.wake_parked();
    }

    /// Running slot `id` has ended: a PREEMPT AND ABORT waiting for it may complete.
    fn ended(&mut self, id: usize) {
        if self.awaiting.is_empty() {
            return;
        }
        for entry in &mut self.awaiting {
            entry.2.retain(|&s| s != id);
        }
        let (done, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.awaiting).into_iter().partition(|e| e.2.is_empty());
        self.awaiting = rest;
        for (tag, completion, _) in done {
            self.finished.push(Finished { tag, completion, buffer: None });
        }
    }

    /// Grants locks to parked tasks in arrival order, as far as they no longer conflict.
    fn wake_parked(&mut self) {
        let mut i = 0;
        while i < self.parked.len() {
            let id = self.parked[i];
            let req = self.running[id].as_ref().and_then(|r| r.lock_request).expect("parked task has a lock request");
            let ahead: Vec<LockRequest> = self
                .parked
                .iter()
                .take(i)
                .filter_map(|&p| self.running[p].as_ref().and_then(|r| r.lock_request))
                .collect();
            match self.locks.try_lock(req, &ahead) {
                Some(lock) => {
                    self.parked.remove(i);
                    self.running[id].as_mut().expect("parked slot is live").lock = Some(lock);
                    self.advance(id);
                }
                None => i += 1,
            }
        }
    }

    /// Collects finished commands. With `wait`, blocks until at least one finishes if any
    /// is outstanding.
    pub fn poll(&mut self, out: &mut Vec<Finished>, wait: bool) -> io::Result<()> {
        if self.finished.is_empty() {
            let min = usize::from(wait && self.backend.in_flight() > 0);
            let mut reaped = std::mem::take(&mut self.reaped);
            self.backend.reap(&mut reaped, min)?;
            for c in reaped.drain(..) {
                let id = c.req.tag as usize;
                let r = self.running[id].as_mut().expect("completion for an idle slot");
                give_back(r, c.req.op);
                r.task.io_done(c.result.map_err(|e| e.failure()));
                self.advance(id);
            }
            self.reaped = reaped;
        }
        out.append(&mut self.finished);
        Ok(())
    }

    /// Runs one command to completion. Other commands' completions stay queued for `poll`.
    pub fn run(&mut self, initiator: InitiatorId, luns: &[u16], cdb: &[u8], data_out: &[u8]) -> io::Result<Finished> {
        const TAG: u64 = u64::MAX;
        let port = crate::nexus::gateway_port();
        let nexus = Nexus { id: initiator, luns, read_only: false, port: &port, target_port: 0 };
        self.submit(TAG, &nexus, cdb, data_out);
        let mut out = Vec::new();
        loop {
            self.poll(&mut out, true)?;
            if let Some(i) = out.iter().position(|f| f.tag == TAG) {
                let mine = out.swap_remove(i);
                self.finished.append(&mut out);
                return Ok(mine);
            }
            // A lock is only ever held by a task with backend I/O in flight, so with nothing
            // in flight the command must have finished; anything else is a driver bug.
            if self.backend.in_flight() == 0 && self.finished.is_empty() {
                return Err(io::Error::other("command neither finished nor waiting on the backend"));
            }
        }
    }
}

/// The completion of a direct task whose one step is done.
/// TASK ABORTED status, for a task a PREEMPT AND ABORT ended.
fn aborted() -> Completion {
    Completion { status: scsi::Status::TaskAborted, sense: Vec::new(), data_in: DataIn::None }
}

fn finish_direct(task: &mut Task, descriptor: bool) -> Completion {
    match task.next_step() {
        Step::Done(completion) => completion,
        other => {
            tracing::error!(step = ?other, "a plain READ or WRITE asked for a second step");
            internal_failure(descriptor)
        }
    }
}

fn internal_failure(descriptor: bool) -> Completion {
    Completion::check(&Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE), descriptor)
}

/// Builds the engine op for a task step, lending it the buffer the step names.
fn lend(r: &mut Running, op: BackendOp) -> Result<(IoOp, Option<Which>), scsi::IoFailure> {
    let take = |r: &mut Running, b: Buf| -> Result<(AlignedBuf, usize, Which), scsi::IoFailure> {
        let (which, at) = match b {
            Buf::DataIn(at) => (Which::DataIn, at),
            Buf::DataOut(at) => (Which::DataOut, at),
            Buf::Scratch(at) => (Which::Scratch, at),
        };
        let buf = r.slot(which).take().ok_or(scsi::IoFailure::Internal)?;
        Ok((buf, at, which))
    };
    Ok(match op {
        BackendOp::Read { offset, len, into } => {
            let (buf, at, which) = take(r, into)?;
            (IoOp::Read { offset, buf, range: at..at + len }, Some(which))
        }
        BackendOp::Write { offset, len, from, fua } => {
            let (buf, at, which) = take(r, from)?;
            (IoOp::Write { offset, buf, range: at..at + len, fua }, Some(which))
        }
        BackendOp::Flush => (IoOp::Flush, None),
        BackendOp::Unmap { offset, len } => (IoOp::Unmap { offset, len }, None),
        BackendOp::WriteZeroes { offset, len } => (IoOp::WriteZeroes { offset, len }, None),
        BackendOp::BlockStatus { offset, len } => (IoOp::BlockStatus { offset, len }, None),
    })
}

/// Returns a lent buffer to the task's slot.
fn give_back(r: &mut Running, op: IoOp) {
    if let (Some(which), Some(buf)) = (r.lent.take(), op.into_buf()) {
        *r.slot(which) = Some(buf);
    }
}

/// An open image of a PAN: where it lives and the LUN driver over its engine.
#[derive(Debug)]
pub struct OpenImage {
    /// PAN name.
    pub pan: String,
    /// Image name.
    pub name: String,
    /// Where it lives.
    pub path: std::path::PathBuf,
    /// The LUN driver over its engine.
    pub driver: LunDriver,
}

/// SYNCHRONIZE CACHE on an image from the gateway's own nexus (0), as at shutdown, in
/// `--oneshot` and when a LUN is deleted.
pub fn flush(img: &mut OpenImage) -> std::io::Result<()> {
    // A TEST UNIT READY first takes any unit attention queued for the gateway's nexus (a
    // resize raises one for every nexus), which would otherwise answer the flush.
    img.driver.run(0, &[0], &[0; 6], &[])?;
    let f = img.driver.run(0, &[0], &scsi::build::synchronize_cache_10(), &[])?;
    if f.completion.status != scsi::Status::Good {
        return Err(std::io::Error::other(format!(
            "flushing {} failed: sense {:02x?}",
            img.path.display(),
            f.completion.sense
        )));
    }
    Ok(())
}
