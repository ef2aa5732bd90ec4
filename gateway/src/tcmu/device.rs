//! One TCMU device: a thread that reads commands off the kernel's ring, sends them to the
//! gateway as a node over the rings (so they meet the same SCSI target, access checks and
//! engines as every other front-end), and writes the answers back.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use scsi::{Asc, Sense, SenseKey};

use super::abi::{self, tmr};
use super::ring::{CmdRequest, CommandRing, Entry, Iov, Response, RingFault};
use crate::ring::link::{Command, Link, LinkError, Outcome};
use crate::ring::shm::{Doorbell, SharedMemory};

/// LOGICAL UNIT COMMUNICATION FAILURE: the gateway could not be reached.
const COMMUNICATION_FAILURE: Asc = Asc(0x08, 0x00);
/// How long the device thread sleeps at most before checking whether it should stop.
const TICK: Duration = Duration::from_millis(100);

/// How the handler and the kernel poke each other: `/dev/uioN` takes and gives 4-byte
/// counts; the test model's eventfd 8-byte ones.
#[derive(Debug)]
pub struct KernelBell {
    fd: OwnedFd,
    width: usize,
}

impl KernelBell {
    /// A uio device fd.
    pub fn uio(fd: OwnedFd) -> KernelBell {
        KernelBell { fd, width: 4 }
    }

    /// An eventfd standing in for the uio device (the kernel model in tests).
    pub fn eventfd(fd: OwnedFd) -> KernelBell {
        KernelBell { fd, width: 8 }
    }

    fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        let buf = if self.width == 4 { &one[..4] } else { &one[..] };
        if let Err(e) = rustix::io::write(&self.fd, buf) {
            tracing::warn!(error = %e, "cannot notify the kernel of completions");
        }
    }

    fn clear(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut b[..self.width]);
    }
}

/// What the device has done, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Commands answered.
    pub completed: AtomicU64,
    /// Commands answered with UNKNOWN_OP.
    pub unknown_op: AtomicU64,
    /// Malformed command entries answered with CHECK CONDITION.
    pub malformed: AtomicU64,
    /// Task-management entries seen.
    pub tmr: AtomicU64,
    /// Commands named by ABORT TASK while still with the gateway.
    pub aborted: AtomicU64,
}

/// A command back from the gateway.
struct Finished {
    cmd_id: u16,
    iovs: Vec<Iov>,
    data_in: bool,
    outcome: Outcome,
}

/// A running device; stopped (and its thread joined) on drop.
#[derive(Debug)]
pub struct DeviceHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), RingFault>>>,
    /// Counters.
    pub stats: Arc<DeviceStats>,
}

impl DeviceHandle {
    /// Stops the thread; returns how it ended.
    pub fn stop(mut self) -> Result<(), RingFault> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().map_or(Ok(()), |t| t.join().unwrap_or(Ok(())))
    }

    /// Whether the thread has ended by itself (the ring broke).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving the device mapped at `map` as (target, lun) over `link`.
pub fn start(
    name: String,
    map: Arc<SharedMemory>,
    kernel: KernelBell,
    link: Arc<Link>,
    target: u16,
    lun: u16,
) -> Result<DeviceHandle, RingFault> {
    let ring = CommandRing::attach(map)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(DeviceStats::default());
    let wake = Arc::new(Doorbell::new().map_err(crate::ring::shm::ShmError::Os)?);
    let (tx, rx) = mpsc::channel();
    let mut device = Device { name, ring, kernel, link, target, lun, stats: stats.clone(), tx, rx, wake };
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("pangate-tcmu-{target}-{lun}"))
        .spawn(move || device.run(&flag))
        .map_err(crate::ring::shm::ShmError::Os)?;
    Ok(DeviceHandle { stop, thread: Some(thread), stats })
}

struct Device {
    name: String,
    ring: CommandRing,
    kernel: KernelBell,
    link: Arc<Link>,
    target: u16,
    lun: u16,
    stats: Arc<DeviceStats>,
    tx: Sender<Finished>,
    rx: Receiver<Finished>,
    wake: Arc<Doorbell>,
}

impl Device {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), RingFault> {
        let caps = self.ring.caps();
        tracing::info!(
            device = %self.name,
            ooo = caps & abi::cap::OOOC != 0,
            read_len = caps & abi::cap::READ_LEN != 0,
            tmr = caps & abi::cap::TMR != 0,
            "serving TCMU device"
        );
        let mut entries = Vec::new();
        while !stop.load(Ordering::Acquire) {
            self.wait();
            if let Err(e) = self.ring.fetch(&mut entries) {
                tracing::error!(device = %self.name, error = %e, "the command ring is unusable; stopping this device");
                return Err(e);
            }
            for e in entries.drain(..) {
                self.handle(e)?;
            }
            while let Ok(f) = self.rx.try_recv() {
                self.finish(f)?;
            }
            if self.ring.publish()? {
                self.kernel.notify();
            }
        }
        Ok(())
    }

    /// Sleeps until the kernel queues something, the gateway answers, or a tick passes.
    fn wait(&self) {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.kernel.fd, PollFlags::IN), PollFd::new(&*self.wake, PollFlags::IN)];
        let ts = crate::ring::shm::poll_timeout(TICK);
        if let Ok(n) = poll(&mut fds, Some(&ts)) {
            if n > 0 {
                if !fds[0].revents().is_empty() {
                    self.kernel.clear();
                }
                let _ = self.wake.drain();
            }
        }
    }

    fn handle(&mut self, e: Entry) -> Result<(), RingFault> {
        match e {
            Entry::Cmd(c) => self.submit(c),
            Entry::Malformed { cmd_id, why } => {
                tracing::warn!(device = %self.name, cmd_id, %why, "malformed command entry");
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                let sense = Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE).fixed().to_vec();
                self.answer(Response { cmd_id, status: CHECK_CONDITION, sense, read_len: None })
            }
            Entry::Tmr { kind, cmd_ids } => {
                self.stats.tmr.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %self.name, tmr = abi::tmr_name(kind), commands = ?cmd_ids, "task management");
                if kind == tmr::ABORT_TASK {
                    // The named commands are already with the gateway and complete normally;
                    // the kernel discards their answers.
                    self.stats.aborted.fetch_add(cmd_ids.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    fn submit(&mut self, c: CmdRequest) -> Result<(), RingFault> {
        let opcode = c.cdb[0];
        let known = scsi::opcodes::lookup(opcode, None).is_some() || scsi::opcodes::has_service_action(opcode);
        if !known {
            self.stats.unknown_op.fetch_add(1, Ordering::Relaxed);
            let sense = Sense::new(SenseKey::IllegalRequest, Asc::INVALID_OPCODE).fixed().to_vec();
            return self.answer(Response { cmd_id: c.cmd_id, status: CHECK_CONDITION, sense, read_len: None });
        }
        let data_out = c.total > 0 && scsi::opcodes::carries_data_out(opcode);
        let out = if data_out { self.ring.gather(&c.iovs, c.total)? } else { Vec::new() };
        let in_len = if data_out { 0 } else { c.total as u32 };
        let (tx, wake) = (self.tx.clone(), self.wake.clone());
        let (cmd_id, iovs) = (c.cmd_id, c.iovs);
        self.link.queue().submit(
            Command { target: self.target, lun: self.lun, cdb: &c.cdb, out: &out, in_len },
            Box::new(move |outcome| {
                // The device may be gone (removed while this was in flight): then nobody
                // listens, and the kernel has already failed the command itself.
                if tx.send(Finished { cmd_id, iovs, data_in: !data_out && in_len > 0, outcome }).is_ok() {
                    let _ = wake.ring();
                }
            }),
        );
        Ok(())
    }

    fn finish(&mut self, f: Finished) -> Result<(), RingFault> {
        let r = match f.outcome.result {
            Ok(resp) => {
                let mut read_len = None;
                if f.data_in {
                    self.ring.scatter(&f.iovs, &f.outcome.data)?;
                    read_len = Some(f.outcome.data.len() as u32);
                }
                Response { cmd_id: f.cmd_id, status: resp.status, sense: resp.sense, read_len }
            }
            Err(e) => {
                tracing::warn!(device = %self.name, cmd_id = f.cmd_id, error = %e, "command failed in transport");
                let key = if e == LinkError::TooLarge { SenseKey::IllegalRequest } else { SenseKey::AbortedCommand };
                let asc = if e == LinkError::TooLarge { Asc::INVALID_FIELD_IN_CDB } else { COMMUNICATION_FAILURE };
                let sense = Sense::new(key, asc).fixed().to_vec();
                Response { cmd_id: f.cmd_id, status: CHECK_CONDITION, sense, read_len: None }
            }
        };
        self.answer(r)
    }

    fn answer(&mut self, r: Response) -> Result<(), RingFault> {
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        self.ring.complete(r)
    }
}

const CHECK_CONDITION: u8 = 0x02;

impl AsFd for KernelBell {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
