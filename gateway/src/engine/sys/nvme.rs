//! The NVMe engine's kernel interface: the namespace ID and admin commands through ioctls,
//! and I/O commands through `IORING_OP_URING_CMD` on a ring of 128-byte SQEs and 32-byte
//! CQEs, whose commands point into memory this module holds until the kernel answers.
//!
//! [`Queue`] owns every request whose commands it has queued, builds each SQE itself from a
//! command it holds (so its data pointer is into that request's buffer, the command's own
//! range list, or the queue's zero buffer), and gives a request back only once the kernel
//! has answered every one of its commands. Dropped with commands still in the kernel, it
//! leaks their requests rather than free memory the kernel may still write.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::host::{Key, UringHost};
use crate::engine::nvme::translate::{cns, opcode as nvme_op, Command, Data, IDENTIFY_BYTES};
use crate::engine::{AlignedBuf, IoOp, IoRequest};

/// `NVME_IOCTL_ID`: `_IO('N', 0x40)`, the namespace ID of the device.
const NVME_IOCTL_ID: libc::c_ulong = 0x4E40;
/// `NVME_IOCTL_ADMIN_CMD`: `_IOWR('N', 0x41, struct nvme_passthru_cmd)` (72 bytes).
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong = 0xC048_4E41;
/// `NVME_URING_CMD_IO`: `_IOWR('N', 0x80, struct nvme_uring_cmd)` (72 bytes).
const NVME_URING_CMD_IO: u32 = 0xC048_4E80;

/// How many times a command the kernel answered with EAGAIN or EINTR is sent again.
const MAX_RETRIES: u8 = 16;

/// `struct nvme_passthru_cmd` of `<linux/nvme_ioctl.h>`.
#[repr(C)]
#[derive(Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

/// The namespace ID of an NVMe namespace's device (block or generic character device).
pub fn namespace_id(file: &File) -> io::Result<u32> {
    // SAFETY: NVME_IOCTL_ID takes no argument and returns the ID; `file` keeps the fd open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_ID as _) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u32)
    }
}

/// Runs Identify with `cns` (and `csi` in CDW11) for `nsid` through the admin passthrough
/// ioctl, which the kernel allows on a namespace's device too. An NVMe error status comes
/// back as an error that names it.
pub fn identify(file: &File, cns_value: u32, csi: u8, nsid: u32) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; IDENTIFY_BYTES];
    let mut cmd = PassthruCmd {
        opcode: nvme_op::IDENTIFY,
        nsid: if cns_value == cns::NAMESPACE { nsid } else { 0 },
        addr: data.as_mut_ptr() as u64,
        data_len: IDENTIFY_BYTES as u32,
        cdw10: cns_value,
        cdw11: u32::from(csi) << 24,
        ..PassthruCmd::default()
    };
    // SAFETY: the command is a `struct nvme_passthru_cmd` the call reads and writes back
    // (`result`); its `addr` points at `data`, IDENTIFY_BYTES long, which outlives the call
    // and is the only memory the kernel writes the identify data to.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_ADMIN_CMD as _, &mut cmd as *mut PassthruCmd) };
    match r {
        0 => Ok(data),
        r if r < 0 => Err(io::Error::last_os_error()),
        status => Err(io::Error::other(format!("identify (CNS {cns_value:#x}) failed with NVMe status {status:#x}"))),
    }
}

/// How a command ended, when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdError {
    /// The kernel refused or failed it with this errno.
    Os(i32),
    /// The controller completed it with this status (see `translate::Status`).
    Status(u16),
}

/// A request whose commands are queued or in the kernel.
struct Job {
    req: IoRequest,
    /// Commands not yet answered (waiting or in the kernel).
    left: usize,
    /// The first failure among its commands.
    error: Option<CmdError>,
}

/// A command in the kernel: its job, the command (which holds its range list), and how
/// often it was sent again.
struct Sent {
    job: u32,
    cmd: Command,
    retries: u8,
}

/// Where a queue's commands go.
enum Rings {
    /// A ring of its own, with the namespace as fixed file 0, created disabled so that the
    /// first thread to drive it becomes its single issuer; `done_fd` is registered with it
    /// and signalled as commands finish.
    Own { ring: Box<IoUring<squeue::Entry128, cqueue::Entry32>>, enabled: bool, done_fd: Option<OwnedFd> },
    /// Its worker's ring, under `key`, with the namespace as fixed file `file`.
    Hosted { host: Arc<UringHost>, key: Key, file: u32 },
}

impl Rings {
    fn own(file: &File, depth: u32) -> io::Result<Rings> {
        let (ring, enabled, done_fd) = super::inflight::engine_ring::<squeue::Entry128, cqueue::Entry32>(file, depth)?;
        Ok(Rings::Own { ring: Box::new(ring), enabled, done_fd })
    }
}

/// An NVMe namespace's I/O queue, on a ring of its own or its worker's.
pub struct Queue {
    rings: Rings,
    jobs: Vec<Option<Job>>,
    free_jobs: Vec<u32>,
    /// Commands waiting for room in the ring, with their job.
    waiting: VecDeque<(u32, Command, u8)>,
    /// Ring slots, by the token in each CQE: `Some` while the kernel has the command.
    sent: Vec<Option<Sent>>,
    free_slots: Vec<u32>,
    /// Zeros for writes standing in for Write Zeroes, as long as the longest such write
    /// (taken only to be leaked, in `Drop`).
    zeroes: Option<AlignedBuf>,
    /// SQEs queued since the last enter.
    queued: usize,
    finished: Vec<(IoRequest, Result<(), CmdError>)>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("outstanding", &self.outstanding())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue for `file` (an NVMe generic character device) with room for `depth` requests
    /// and `depth` commands in the kernel, created disabled so that the first thread to
    /// drive it becomes its single issuer. `zeroes` is the longest write of zeros it may do.
    pub fn new(file: &File, depth: u32, zeroes: usize) -> io::Result<Queue> {
        let depth = depth.clamp(1, 1024);
        Ok(Queue {
            rings: Rings::own(file, depth)?,
            jobs: (0..depth).map(|_| None).collect(),
            free_jobs: (0..depth).rev().collect(),
            waiting: VecDeque::new(),
            sent: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth).rev().collect(),
            zeroes: Some(AlignedBuf::zeroed(zeroes.max(4096))),
            queued: 0,
            finished: Vec::new(),
        })
    }

    /// The eventfd the kernel signals as commands finish, if the queue has a ring of its
    /// own and the eventfd could be registered with it.
    pub fn done_fd(&self) -> Option<&OwnedFd> {
        match &self.rings {
            Rings::Own { done_fd, .. } => done_fd.as_ref(),
            Rings::Hosted { .. } => None,
        }
    }

    /// Whether the queue's commands go to a worker's ring.
    pub fn hosted(&self) -> bool {
        matches!(self.rings, Rings::Hosted { .. })
    }

    /// Moves the queue into `host`'s ring once what it has in flight has finished (the
    /// finished requests wait for the next [`Queue::reap`]). `false` when the host has no
    /// room for the namespace (the queue keeps its own ring). On the host's thread.
    pub fn attach(&mut self, host: &Arc<UringHost>, file: &File) -> io::Result<bool> {
        if self.hosted() {
            return Ok(true);
        }
        self.settle()?;
        let Some((key, index)) = host.join(file.as_raw_fd()) else { return Ok(false) };
        self.rings = Rings::Hosted { host: host.clone(), key, file: index };
        Ok(true)
    }

    /// Leaves the worker's ring for one of the queue's own, once what it has in flight has
    /// finished. On the host's thread.
    pub fn detach(&mut self, file: &File) -> io::Result<()> {
        if !self.hosted() {
            return Ok(());
        }
        self.settle()?;
        let own = Rings::own(file, self.sent.len() as u32)?;
        if let Rings::Hosted { host, key, file } = std::mem::replace(&mut self.rings, own) {
            host.leave(key, file, None);
        }
        Ok(())
    }

    /// Waits until the kernel has answered every command, keeping the finished requests
    /// for the next [`Queue::reap`].
    fn settle(&mut self) -> io::Result<()> {
        let done = self.reap(usize::MAX)?;
        self.finished = done;
        Ok(())
    }

    /// Requests queued and not yet handed back.
    pub fn outstanding(&self) -> usize {
        self.jobs.len() - self.free_jobs.len()
    }

    fn enable(&mut self) -> io::Result<()> {
        if let Rings::Own { ring, enabled: enabled @ false, .. } = &mut self.rings {
            ring.submitter().register_enable_rings()?;
            *enabled = true;
        }
        Ok(())
    }

    /// Takes `req` and the commands that perform it (at least one), and sends as many
    /// commands as the ring has room for. Gives the request back when every request slot
    /// is taken.
    pub fn submit(&mut self, req: IoRequest, cmds: Vec<Command>) -> Result<(), IoRequest> {
        debug_assert!(!cmds.is_empty());
        let Some(job) = self.free_jobs.pop() else { return Err(req) };
        self.jobs[job as usize] = Some(Job { req, left: cmds.len(), error: None });
        self.waiting.extend(cmds.into_iter().map(|c| (job, c, 0)));
        if let Err(e) = self.enable() {
            // None of this job's commands can be sent: answer them all with the error.
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let (mine, others): (VecDeque<_>, VecDeque<_>) =
                std::mem::take(&mut self.waiting).into_iter().partition(|(j, _, _)| *j == job);
            self.waiting = others;
            for (j, _, _) in mine {
                self.answer(j, Err(CmdError::Os(errno)));
            }
            return Ok(());
        }
        self.send_waiting();
        Ok(())
    }

    /// Moves waiting commands into the ring while it has free slots.
    fn send_waiting(&mut self) {
        while let Some(&slot) = self.free_slots.last() {
            let Some((job, cmd, retries)) = self.waiting.pop_front() else { break };
            let addr = match &cmd.data {
                Data::None => 0,
                Data::Ranges(list) => list.as_ptr() as u64,
                Data::Zeroes { len } => {
                    let zeroes = self.zeroes.as_mut().expect("the zero buffer, until drop");
                    assert!(*len <= zeroes.len(), "a write of zeros longer than the zero buffer");
                    zeroes.as_mut_ptr() as u64
                }
                Data::Buffer { at, len } => {
                    let job = self.jobs[job as usize].as_mut().expect("a queued command's job");
                    let (IoOp::Read { buf, range, .. } | IoOp::Write { buf, range, .. }) = &mut job.req.op else {
                        unreachable!("only reads and writes carry the request's buffer")
                    };
                    let view = buf
                        .view()
                        .subslice((range.start + at) as u64, *len as u64)
                        .expect("a command inside its request's validated range");
                    view.as_ptr() as u64
                }
            };
            let file = match &self.rings {
                Rings::Own { .. } => 0,
                Rings::Hosted { file, .. } => *file,
            };
            let sqe = opcode::UringCmd80::new(types::Fixed(file), NVME_URING_CMD_IO).cmd(cmd.encode(addr)).build();
            // The SQE's data pointer is into memory that stays put until its CQE: the
            // request's buffer, held in `jobs` until every command of it is answered (its
            // heap memory never moves); the command's range list, held in `sent`; or the
            // zero buffer the queue owns. Slots in `sent` are freed only by their CQE (the
            // token is the slot), and `Drop` leaks whatever the kernel still has.
            let pushed = match &mut self.rings {
                Rings::Own { ring, .. } => {
                    // SAFETY: see above.
                    if unsafe { ring.submission().push(&sqe.user_data(u64::from(slot))) }.is_err() {
                        self.waiting.push_front((job, cmd, retries));
                        if ring.submit().is_err() {
                            break;
                        }
                        continue;
                    }
                    true
                }
                // SAFETY: see above; the host answers with `slot` as the token.
                Rings::Hosted { host, key, .. } => unsafe { host.push(*key, slot, sqe) }.is_ok(),
            };
            if !pushed {
                // The worker's ring is full and its kernel refuses more for now: later.
                self.waiting.push_front((job, cmd, retries));
                break;
            }
            self.free_slots.pop();
            self.sent[slot as usize] = Some(Sent { job, cmd, retries });
            self.queued += 1;
        }
    }

    /// Records a command's answer; completes its request when it was the last.
    fn answer(&mut self, job: u32, result: Result<(), CmdError>) {
        let j = self.jobs[job as usize].as_mut().expect("an answered command's job");
        if let Err(e) = result {
            j.error.get_or_insert(e);
        }
        j.left -= 1;
        if j.left == 0 {
            let j = self.jobs[job as usize].take().expect("a job");
            self.free_jobs.push(job);
            self.finished.push((j.req, j.error.map_or(Ok(()), Err)));
        }
    }

    /// Sends what is queued, waits until at least `min` requests have finished (if that
    /// many are outstanding), and hands back every finished request.
    pub fn reap(&mut self, min: usize) -> io::Result<Vec<(IoRequest, Result<(), CmdError>)>> {
        self.enable()?;
        // Bounded: every pass answers at least one command or stops.
        for _ in 0..=self.sent.len() * usize::from(MAX_RETRIES + 1) * 4 {
            let want_more = self.finished.len() < min.min(self.outstanding() + self.finished.len());
            let in_kernel = self.sent.len() - self.free_slots.len();
            let wait = want_more && in_kernel > 0;
            let mut cqes: Vec<(u32, i32)> = Vec::new();
            match &mut self.rings {
                Rings::Own { ring, .. } => {
                    let deferred = ring.submission().taskrun();
                    if self.queued > 0 || deferred || wait {
                        match ring.submit_and_wait(usize::from(wait)) {
                            Ok(_) => self.queued = 0,
                            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    cqes.extend(ring.completion().map(|c| (c.user_data() as u32, c.result())));
                }
                Rings::Hosted { host, key, .. } => {
                    host.reap(*key, &mut cqes, wait, None)?;
                    self.queued = 0;
                }
            }
            for (token, res) in &cqes {
                let Some(sent) = self.sent.get_mut(*token as usize).and_then(Option::take) else {
                    tracing::warn!(token, "a CQE for no command the kernel has; ignored");
                    continue;
                };
                self.free_slots.push(*token);
                let errno = -res;
                if (errno == libc::EAGAIN || errno == libc::EINTR) && sent.retries < MAX_RETRIES {
                    self.waiting.push_back((sent.job, sent.cmd, sent.retries + 1));
                    continue;
                }
                let result = match *res {
                    0 => Ok(()),
                    r if r < 0 => Err(CmdError::Os(-r)),
                    status => Err(CmdError::Status(status as u16)),
                };
                self.answer(sent.job, result);
            }
            self.send_waiting();
            let want_more = self.finished.len() < min.min(self.outstanding() + self.finished.len());
            if !want_more && self.queued == 0 {
                break;
            }
        }
        Ok(std::mem::take(&mut self.finished))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Wait (bounded) for what the kernel has; leak the requests of whatever it still has.
        let in_kernel = |q: &Queue| q.sent.iter().any(Option::is_some);
        let drivable = match &self.rings {
            Rings::Own { enabled, .. } => *enabled,
            Rings::Hosted { host, .. } => host.is_home(),
        };
        if in_kernel(self) && drivable {
            let _ = self.reap(usize::MAX);
        }
        if let (false, Rings::Hosted { host, key, file }) = (in_kernel(self), &self.rings) {
            if host.is_home() {
                host.leave(*key, *file, None);
            }
        }
        if in_kernel(self) {
            for job in self.sent.iter().flatten().map(|s| s.job).collect::<Vec<_>>() {
                if let Some(j) = self.jobs[job as usize].take() {
                    std::mem::forget(j);
                }
            }
            for sent in self.sent.iter_mut() {
                if let Some(s) = sent.take() {
                    std::mem::forget(s);
                }
            }
            if let Some(z) = self.zeroes.take() {
                std::mem::forget(z);
            }
        }
    }
}
