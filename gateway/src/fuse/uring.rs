//! FUSE over io_uring (kernel 6.14+, `FUSE_OVER_IO_URING`): instead of a `read` and a
//! `write` of `/dev/fuse` per request, the mount registers ring entries with the kernel
//! once, one queue per possible CPU, each served by its own thread and io_uring. A request
//! arrives as a completion of the entry it was put in; the reply goes back, and the entry
//! asks for the next request, in one `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
//!
//! Each entry's payload buffer is a megabyte of its queue pair's data area, kept by the
//! entry for the life of the mount. A WRITE's data lands where the gateway reads it, and
//! a READ's data is left by the gateway where the kernel takes it from, so this mode adds
//! no copy to the `/dev/fuse` path's. The kernel holds the buffer's address for good, so
//! when the queue pair reconnects (a new data area) the entry's pages are remapped, at the
//! same address, onto pages reserved in the new area ([`SharedMemory::alias`]); until
//! that is possible they become private memory, which a gateway that was dropped while
//! still writing can no longer reach.
//!
//! A queue's threads run on the queue's CPU while they serve one request at a time, and
//! are left to the scheduler under load ([`affinity`]).
//!
//! FORGET and INTERRUPT still come through `/dev/fuse`, as do all requests until every
//! queue has registered, so the `/dev/fuse` threads keep running beside these.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::affinity::{self, Placement};
use super::files::{LunFiles, Payload, MAX_IO};
use super::session::Reply;
use super::sys;
use super::wire::{self, Op, RING_HEADERS};
use crate::ring::link::{Lent, LentData, Link, QueuePair};
use crate::ring::proto::Region;
use crate::ring::shm::SharedMemory;
use shmem::PeerSlice;

/// `FUSE_OVER_IO_URING` in INIT's flags (bit 9 of `flags2`).
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;
/// `FUSE_IO_URING_CMD_REGISTER`.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Where each entry's headers sit in the queue's header area.
const HEADER_STRIDE: u64 = 512;
/// Request bytes copied out for parsing: every request but a WRITE fits.
const HEAD_BYTES: usize = 8192;
/// Entries per queue pair's data area, at [`MAX_IO`] each: half of the area the mount asks
/// for, the rest left to commands that carry their own pages.
pub const ENTRIES_PER_AREA: usize = 32;

/// How `pangate mount --uring` chooses between FUSE over io_uring and `/dev/fuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringMode {
    /// io_uring where the kernel allows it, `/dev/fuse` otherwise.
    Auto,
    /// io_uring, or the mount fails.
    On,
    /// `/dev/fuse` only.
    Off,
}

/// Why the kernel does not offer FUSE over io_uring, in words that say how to fix it.
pub fn unavailable_reason() -> String {
    const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
    match std::fs::read_to_string(PARAM) {
        Ok(v) if v.trim() == "Y" => {
            "the kernel did not offer it in INIT (FUSE protocol 7.42, Linux 6.14 or later, is needed)".into()
        }
        Ok(_) => format!("it is disabled; enable it with `echo Y > {PARAM}` (as root)"),
        Err(_) => {
            "this kernel has no FUSE over io_uring (Linux 6.14 or later with CONFIG_FUSE_IO_URING is needed)".into()
        }
    }
}

/// The kernel's FUSE ring queues: one per possible CPU (`/sys/devices/system/cpu/possible`).
pub fn kernel_queues() -> io::Result<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in list.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => return Err(io::Error::other(format!("cannot read the possible CPUs from {list:?}"))),
        };
        n = n.max(b + 1);
        let _ = a;
    }
    Ok(n.max(1))
}

/// Completions as (entry, result).
pub type Completions = Vec<(u64, i32)>;

/// One ring entry: its payload buffer's address, fixed for the mount, and the pages of the
/// live connection's data area that address shows now.
#[derive(Debug)]
struct Entry {
    /// The mapping the buffer's address lies in, kept for the life of the mount.
    home: Arc<SharedMemory>,
    home_offset: u64,
    /// The live pages behind the address: (region, connection generation), or `None`
    /// while it is private memory.
    now: Mutex<Option<(Region, u64)>>,
}

/// A ring entry's payload buffer as a command sees it (see [`Reply::lent`]).
#[derive(Debug, Clone)]
pub struct LentPages {
    /// The buffer's pages in the live data area, if it is in one, for
    /// [`QueuePair::submit_lent`].
    pub lent: Lent,
    /// The buffer as this process maps it, to copy from.
    pub home: Arc<SharedMemory>,
    /// Where the buffer starts in `home`.
    pub home_offset: u64,
}

impl LentPages {
    /// The same pages lent for data going the other way, or fewer of them.
    pub fn data(&self, data: impl FnOnce(Region) -> LentData) -> Lent {
        let region = match self.lent.data {
            LentData::In(r) | LentData::Out(r) => r,
        };
        Lent { data: data(region), generation: self.lent.generation }
    }

    /// The first `len` bytes of the buffer, copied out.
    pub fn copy_out(&self, len: u32) -> Option<Vec<u8>> {
        let mut bytes = vec![0u8; len.min(MAX_IO) as usize];
        self.home.read(self.home_offset, &mut bytes).ok()?;
        Some(bytes)
    }
}

/// One kernel ring queue: its io_uring, its entries, and the queue pair their buffers are in.
///
/// Only the queue's thread enters its io_uring. A reply made on another thread (a queue
/// pair's completion thread) fills the entry, leaves the commit in `posted`, and wakes the
/// queue's thread through `wake` if it sleeps; the thread sends every posted commit with
/// its next wait. The kernel then hands the next requests to that thread, which is waiting
/// for them, rather than interrupting the replying one; and under load one system call
/// carries many commits.
pub struct Queue {
    qid: u16,
    dev: OwnedFd,
    ring: sys::Ring,
    headers: SharedMemory,
    entries: Vec<Entry>,
    pair: Arc<QueuePair>,
    /// Commits left by repliers: (entry, request).
    posted: Mutex<Vec<(usize, u64)>>,
    /// The queue's thread is about to wait, or waits: a replier must wake it.
    sleeping: AtomicBool,
    /// An eventfd the queue's thread always has a read of in flight.
    wake: OwnedFd,
}

/// The user data of the wakeup's read.
const WAKE: u64 = u64::MAX;

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("qid", &self.qid).field("entries", &self.entries.len()).finish_non_exhaustive()
    }
}

/// A request's place in a ring queue: where its reply goes. Not `Clone`: an entry is
/// committed once per request.
#[derive(Debug)]
pub struct Slot {
    queue: Arc<Queue>,
    entry: usize,
}

/// What a reply puts in the entry's payload buffer.
pub enum Fill<'a> {
    /// These bytes.
    Bytes(&'a [&'a [u8]]),
    /// The bytes of `view` (data-in the gateway left elsewhere in its area).
    View(PeerSlice<'a>),
    /// Nothing: the buffer's first so many bytes are the reply (a lent READ's data-in).
    InPlace(u32),
}

impl Slot {
    /// The entry's buffer, for a READ to land in or a WRITE to be sent from.
    pub fn lent(&self) -> LentPages {
        let e = &self.queue.entries[self.entry];
        let now = *e.now.lock().unwrap_or_else(|p| p.into_inner());
        // Private memory has no live pages: a generation no connection has makes the
        // command go as a copy.
        let (region, generation) = now.unwrap_or((Region { offset: 0, len: MAX_IO }, u64::MAX));
        LentPages {
            lent: Lent { data: LentData::In(region), generation },
            home: e.home.clone(),
            home_offset: e.home_offset,
        }
    }

    /// Answers request `unique` and hands the entry back for the next request.
    pub fn commit(&self, unique: u64, error: i32, fill: Fill<'_>) -> io::Result<()> {
        let q = &self.queue;
        let e = &q.entries[self.entry];
        let len = {
            let mut now = e.now.lock().unwrap_or_else(|p| p.into_inner());
            if !now.is_some_and(|(_, generation)| q.pair.is_current(generation)) {
                // The next request must not land in pages a dropped connection still
                // reaches: move the address to the live area first, keeping what a
                // reply left there.
                let keep = match fill {
                    Fill::InPlace(n) => {
                        let mut bytes = vec![0u8; n.min(MAX_IO) as usize];
                        e.home.read(e.home_offset, &mut bytes).map_err(io::Error::other)?;
                        Some(bytes)
                    }
                    _ => None,
                };
                *now = rehome(e, &q.pair);
                if let Some(bytes) = keep {
                    e.home.write(e.home_offset, &bytes).map_err(io::Error::other)?;
                }
            }
            match fill {
                Fill::Bytes(parts) => {
                    let mut at = e.home_offset;
                    for p in parts {
                        e.home.write(at, p).map_err(io::Error::other)?;
                        at += p.len() as u64;
                    }
                    (at - e.home_offset) as u32
                }
                Fill::View(view) => {
                    e.home.view().copy_from_view(e.home_offset, view).map_err(io::Error::other)?;
                    view.len() as u32
                }
                Fill::InPlace(n) => n,
            }
        };
        let mut headers = [0u8; RING_HEADERS];
        wire::ring_reply(&mut headers, unique, error, if error == 0 { len } else { 0 });
        q.headers.write(self.entry as u64 * HEADER_STRIDE, &headers).map_err(io::Error::other)?;
        q.posted.lock().unwrap_or_else(|p| p.into_inner()).push((self.entry, unique));
        if q.sleeping.swap(false, Ordering::SeqCst) {
            rustix::io::write(&q.wake, &1u64.to_ne_bytes())?;
        }
        Ok(())
    }
}

/// Points an entry's buffer at pages reserved in the live connection's area, or, when
/// there are none to be had, at private memory.
fn rehome(e: &Entry, pair: &QueuePair) -> Option<(Region, u64)> {
    if let Some(r) = pair.reserve(MAX_IO) {
        match e.home.alias(e.home_offset, u64::from(MAX_IO), &r.area, r.region.offset) {
            Ok(()) => {
                tracing::debug!(
                    offset = r.region.offset,
                    "a FUSE ring buffer follows its queue pair to the new data area"
                );
                return Some((r.region, r.generation));
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot move a FUSE ring buffer to the new data area");
                pair.release(r.generation, &[r.region]);
            }
        }
    }
    if let Err(err) = e.home.detach(e.home_offset, u64::from(MAX_IO)) {
        tracing::error!(error = %err, "cannot detach a FUSE ring buffer from a dropped data area");
    }
    None
}

/// `struct fuse_uring_cmd_req`: flags, commit id, queue.
fn command(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_le_bytes());
    c[16..18].copy_from_slice(&qid.to_le_bytes());
    c
}

impl Queue {
    /// Sets up kernel queue `qid` with `depth` entries, their buffers reserved in this
    /// thread's queue pair's data area, and registers them. Runs on the thread that will
    /// serve the queue, which the kernel then hands requests to. Returns completions that
    /// arrived meanwhile (requests already put in entries).
    pub fn register(
        link: &Link,
        session: BorrowedFd<'_>,
        qid: u16,
        depth: usize,
    ) -> io::Result<(Arc<Queue>, Completions)> {
        let dev = sys::clone_device(session)?;
        let ring = sys::Ring::new(depth as u32 + 1)?;
        // The entries' headers, then the wakeup's read buffer.
        let headers = SharedMemory::create(
            "pangate-fuse-ring",
            ((depth as u64 + 1) * HEADER_STRIDE).next_multiple_of(4096) as usize,
        )
        .map_err(io::Error::other)?;
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let pair = link.queue_shared();
        let mut entries = Vec::with_capacity(depth);
        for _ in 0..depth {
            let r = pair.reserve(MAX_IO).ok_or_else(|| {
                io::Error::other(
                    "no room for the ring entries' buffers in the data area (or the gateway is not connected)",
                )
            })?;
            entries.push(Entry {
                home: r.area.clone(),
                home_offset: r.region.offset,
                now: Mutex::new(Some((r.region, r.generation))),
            });
        }
        let queue = Arc::new(Queue {
            qid,
            dev,
            ring,
            headers,
            entries,
            pair,
            posted: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            wake,
        });
        let mut iovecs = Vec::with_capacity(depth);
        for (i, e) in queue.entries.iter().enumerate() {
            let head = queue.headers.slice(i as u64 * HEADER_STRIDE, RING_HEADERS as u64).map_err(io::Error::other)?;
            let payload = e.home.slice(e.home_offset, u64::from(MAX_IO)).map_err(io::Error::other)?;
            iovecs.push(Box::new([
                libc::iovec { iov_base: head.as_ptr().cast(), iov_len: head.len() },
                libc::iovec { iov_base: payload.as_ptr().cast(), iov_len: payload.len() },
            ]));
        }
        for (i, iov) in iovecs.iter().enumerate() {
            // The kernel reads the iovecs while it handles the registration, inside the
            // enter below; they live until this returns.
            let sqe = sys::uring_cmd(queue.dev.as_fd(), CMD_REGISTER, command(0, qid), Some(iov));
            queue.ring.push(&sqe.user_data(i as u64))?;
        }
        queue.arm_wake()?;
        // A refused registration completes at once, with its error.
        let mut early = Vec::new();
        queue.ring.enter(false, None, &mut early)?;
        if let Some(&(_, res)) = early.iter().find(|&&(_, res)| res < 0) {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok((queue, early))
    }

    /// Serves requests until every entry has been given back by the kernel (the filesystem
    /// was unmounted or the connection aborted).
    pub fn serve(self: &Arc<Self>, fs: &LunFiles, early: Vec<(u64, i32)>) -> io::Result<()> {
        let mut done = early;
        let mut head = Vec::with_capacity(HEAD_BYTES);
        let mut payload = vec![0u8; HEAD_BYTES];
        let mut commits = Vec::new();
        let mut gone = 0;
        // Requests handed to this thread and not yet answered, for where it runs.
        let mut held = 0usize;
        let allowed = affinity::allowed();
        let mut placement = allowed
            .as_ref()
            .filter(|a| affinity::bind(usize::from(self.qid), a))
            .map(|_| Placement::new(true, Instant::now()));
        loop {
            for (entry, res) in done.drain(..) {
                if entry == WAKE {
                    if res < 0 && res != -libc::ECANCELED {
                        let error = io::Error::from_raw_os_error(-res);
                        tracing::warn!(qid = self.qid, %error, "the FUSE ring's wakeup failed");
                    }
                    self.arm_wake()?;
                    continue;
                }
                let Some(entry) = usize::try_from(entry).ok().filter(|&e| e < self.entries.len()) else {
                    tracing::error!(entry, "completion for no FUSE ring entry");
                    continue;
                };
                if res < 0 {
                    // Handed back: the connection is going away. Any other error leaves
                    // the entry with the kernel, out of use.
                    if res != -libc::ENOTCONN && res != -libc::ECANCELED {
                        tracing::error!(qid = self.qid, entry, error = %io::Error::from_raw_os_error(-res), "a FUSE ring entry failed");
                    }
                    gone += 1;
                    continue;
                }
                held += usize::from(self.handle(fs, entry, &mut head, &mut payload));
            }
            if gone >= self.entries.len() {
                tracing::debug!(qid = self.qid, "FUSE ring queue done");
                return Ok(());
            }
            // Sleep only once nothing is left to send: a reply posted after this look
            // finds `sleeping` set and wakes the thread.
            self.sleeping.store(true, Ordering::SeqCst);
            std::mem::swap(&mut commits, &mut *self.posted.lock().unwrap_or_else(|p| p.into_inner()));
            let wait = commits.is_empty();
            if !wait {
                self.sleeping.store(false, Ordering::SeqCst);
            }
            held = held.saturating_sub(commits.len());
            for (entry, unique) in commits.drain(..) {
                let sqe = sys::uring_cmd(self.dev.as_fd(), CMD_COMMIT_AND_FETCH, command(unique, self.qid), None);
                self.ring.push(&sqe.user_data(entry as u64))?;
            }
            if let (Some(p), Some(allowed)) = (placement.as_mut(), allowed.as_ref()) {
                match p.observe(held, Instant::now()) {
                    Some(true) => drop(affinity::bind(usize::from(self.qid), allowed)),
                    Some(false) => affinity::free(allowed),
                    None => {}
                }
            }
            // A thread left to the scheduler looks again after a window even when idle, so
            // one that no longer gets requests is bound again.
            let timeout = placement.as_ref().filter(|p| !p.bound()).map(|_| affinity::WINDOW);
            self.ring.enter(wait, timeout, &mut done)?;
            self.sleeping.store(false, Ordering::SeqCst);
        }
    }

    /// Starts a read of the wakeup eventfd, which a replier's write completes.
    fn arm_wake(&self) -> io::Result<()> {
        let buf = self.headers.slice(self.entries.len() as u64 * HEADER_STRIDE, 8).map_err(io::Error::other)?;
        self.ring.push(&sys::read_eventfd(self.wake.as_fd(), buf).user_data(WAKE))
    }

    /// Parses the request in `entry` and dispatches it; says whether it will be answered
    /// (the entry committed).
    fn handle(self: &Arc<Self>, fs: &LunFiles, entry: usize, head: &mut Vec<u8>, payload: &mut [u8]) -> bool {
        let slot = Slot { queue: self.clone(), entry };
        let mut headers = [0u8; RING_HEADERS];
        let e = &self.entries[entry];
        let read = self.headers.read(entry as u64 * HEADER_STRIDE, &mut headers);
        let req = match read
            .map_err(|e| e.to_string())
            .and_then(|()| wire::ring_request(&headers).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(err) => {
                // Nothing names the request to answer: the entry is lost to this mount.
                tracing::error!(qid = self.qid, entry, error = %err, "unreadable FUSE ring entry");
                return false;
            }
        };
        let n = if wire::is_write(req.opcode) { 0 } else { (req.payload as usize).min(HEAD_BYTES) };
        if e.home.read(e.home_offset, &mut payload[..n]).is_err() {
            Reply::ring(slot, req.commit_id).error(libc::EIO);
            return true;
        }
        let parsed = wire::ring_layout(&headers, &payload[..n], head).and_then(|got| wire::parse(head, got));
        let (h, op) = match parsed {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = %err, "malformed FUSE request");
                Reply::ring(slot, req.commit_id).error(libc::EIO);
                return true;
            }
        };
        let reply = Reply::ring(slot, h.unique);
        match op {
            // Never sent through the ring; answered so the entry comes back.
            Op::Forget | Op::Interrupt => reply.error(libc::ENOSYS),
            Op::Write { .. } => fs.dispatch(&h, op, Payload::Lent, reply),
            _ => fs.dispatch(&h, op, Payload::None, reply),
        }
        true
    }
}
