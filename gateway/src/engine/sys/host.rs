//! One io_uring shared by a gateway worker and the io_uring engines of the images it owns.
//!
//! DESIGN.md's worker owns one ring and waits on doorbells and backend completions in the
//! same `submit_and_wait`. The host is that ring. Engines that join it push their SQEs into
//! it and register their image and arena in its fixed file and buffer tables; the worker
//! adds its own polls (doorbells, sockets) and sleeps in it. Every SQE is pushed with its
//! owner's [`Key`] and a token of the owner's; the host alone packs the two into the user
//! data, and whoever drains the completion queue sorts the CQEs into per-key mailboxes of
//! (token, result), so an engine waiting for its own completions never loses the
//! worker's, nor the worker an engine's.
//!
//! Memory registered as a fixed buffer is kept alive by the host until it is unregistered
//! ([`FixedMemory`]), so registering is safe. Pushing an SQE that names memory is not: only
//! the io_uring engine's in-flight table ([`super::inflight`]) does it, for buffers it owns
//! until their completions. Polls and cancellations name no memory and are safe to push.
//!
//! The ring is created single-issuer with deferred task work, so it belongs to the thread
//! that built it. The host is shared through an `Arc` (engines must stay `Send` to reach the
//! worker), and every use checks that it happens on that thread.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf::Arena;

/// Who an SQE belongs to: the worker, or an engine that joined the host. Its completions
/// go to that owner's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u32);

impl Key {
    /// The worker's own key: its polls and cancellations.
    pub const WORKER: Key = Key(0);
}

/// Entries in the fixed file and fixed buffer tables: one per engine that joins.
const TABLE: u32 = 1024;

/// Bytes of the arena a worker's engines share (see [`UringHost::arena`]).
pub const HOST_ARENA_BYTES: usize = 32 << 20;

/// An SQE's user data: its owner and the owner's token, packed here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserData {
    key: Key,
    token: u32,
}

impl UserData {
    fn pack(self) -> u64 {
        (u64::from(self.key.0) << 32) | u64::from(self.token)
    }

    fn unpack(v: u64) -> UserData {
        UserData { key: Key((v >> 32) as u32), token: v as u32 }
    }
}

/// Memory that may be registered as a fixed buffer: the host holds it (an `Arc`) for as
/// long as it is registered, so the kernel never keeps a registration of freed memory.
///
/// # Safety
/// [`FixedMemory::iovec`] must describe memory that stays valid, at the same address, for
/// as long as the value lives.
pub unsafe trait FixedMemory: Send + Sync + 'static {
    /// The memory to register.
    fn iovec(&self) -> libc::iovec;
}

// SAFETY: a node's data area is mapped at one address for as long as the `SharedMemory`
// lives.
unsafe impl FixedMemory for shmem::SharedMemory {
    fn iovec(&self) -> libc::iovec {
        libc::iovec { iov_base: self.view().as_ptr().cast(), iov_len: self.len() }
    }
}

thread_local! {
    static HERE: u8 = const { 0 };
}

/// An address unique to the calling thread among live threads.
fn thread_mark() -> usize {
    HERE.with(|h| h as *const u8 as usize)
}

/// The worker's ring: 128-byte SQEs and 32-byte CQEs, so that NVMe passthrough commands
/// (`IORING_OP_URING_CMD`) join it beside the file engine's reads and writes.
type WideRing = IoUring<squeue::Entry128, cqueue::Entry32>;

struct Inner {
    ring: WideRing,
    /// Completions sorted by owner key, as (token, result).
    mail: Vec<Vec<(u32, i32)>>,
    /// Whether each key is taken.
    keys: Vec<bool>,
    /// Free fixed-file and fixed-buffer indices; empty when the table could not be made.
    files: Vec<u32>,
    bufs: Vec<u16>,
    /// What each registered fixed buffer holds, kept alive while registered.
    pinned: Vec<Option<Arc<dyn FixedMemory>>>,
    /// The worker's arena, shared by its engines (it knows its fixed-buffer index); made on
    /// first use (`arena_tried`), so a worker that never needs one pins nothing.
    arena: Option<Arc<Arena>>,
    arena_tried: bool,
}

/// A worker's io_uring, shared with the engines of the images it owns.
pub struct UringHost {
    inner: UnsafeCell<Inner>,
    owner: usize,
    entered: Cell<bool>,
}

// SAFETY: every access to the interior goes through `with`, which refuses any thread but
// the one that built the host (and re-entry on that thread), so the `UnsafeCell` and the
// `Cell` are never touched from two threads, nor aliased mutably. Dropping from another
// thread only closes the ring, which any thread may do.
unsafe impl Sync for UringHost {}
// SAFETY: as above; the ring itself (`IoUring`) is `Send`.
unsafe impl Send for UringHost {}

impl std::fmt::Debug for UringHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringHost").finish_non_exhaustive()
    }
}

impl UringHost {
    /// A ring for the calling thread with room for `entries` SQEs and eight times as many
    /// CQEs, of the sizes NVMe passthrough needs (Linux 5.19). Kernels without single-issuer
    /// and deferred task work (before 6.1) get a plain ring; kernels without sparse tables
    /// get no fixed files, and engines then keep rings of their own, as they do where no
    /// host can be made.
    pub fn new(entries: u32) -> io::Result<UringHost> {
        let cq = entries * 8;
        let ring = WideRing::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(cq)
            .build(entries)
            .or_else(|_| WideRing::builder().setup_cqsize(cq).build(entries))?;
        let files = match ring.submitter().register_files_sparse(TABLE) {
            Ok(()) => (0..TABLE).rev().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no sparse fixed-file table; engines keep their own rings");
                Vec::new()
            }
        };
        let bufs = match ring.submitter().register_buffers_sparse(TABLE) {
            Ok(()) => (0..TABLE as u16).rev().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no sparse fixed-buffer table; engines use plain reads and writes");
                Vec::new()
            }
        };
        let pinned = (0..bufs.len()).map(|_| None).collect();
        let inner = Inner {
            ring,
            mail: vec![Vec::new()],
            keys: vec![true],
            files,
            bufs,
            pinned,
            arena: None,
            arena_tried: false,
        };
        Ok(UringHost { inner: UnsafeCell::new(inner), owner: thread_mark(), entered: Cell::new(false) })
    }

    /// Whether the calling thread may use the host.
    pub fn is_home(&self) -> bool {
        thread_mark() == self.owner
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        assert!(self.is_home(), "a worker's io_uring used from another thread");
        assert!(!self.entered.replace(true), "a worker's io_uring re-entered");
        // SAFETY: on the owning thread and not re-entered (checked just above), so this is
        // the only reference to the interior until `f` returns.
        let r = f(unsafe { &mut *self.inner.get() });
        self.entered.set(false);
        r
    }

    /// Takes a key for a new owner of SQEs, with a fixed-file slot for `fd`. `None` when
    /// the host has no fixed-file table or no free slot: the caller keeps its own ring.
    pub fn join(&self, fd: RawFd) -> Option<(Key, u32)> {
        self.with(|h| {
            let file = h.files.pop()?;
            if let Err(e) = h.ring.submitter().register_files_update(file, &[fd]) {
                tracing::debug!(error = %e, "could not register an image in the worker's ring");
                h.files.push(file);
                return None;
            }
            let key = match h.keys.iter().position(|&taken| !taken) {
                Some(k) => k,
                None => {
                    h.keys.push(false);
                    h.mail.push(Vec::new());
                    h.keys.len() - 1
                }
            };
            h.keys[key] = true;
            Some((Key(key as u32), file))
        })
    }

    /// Registers the memory `make(index)` returns as fixed buffer `index`, holding it until
    /// [`UringHost::unregister_buffer`] or [`UringHost::leave`] gives the index back;
    /// returns the index, or `None` (plain I/O then).
    pub fn register_buffer(&self, make: impl FnOnce(u16) -> Arc<dyn FixedMemory>) -> Option<u16> {
        self.with(|h| {
            let index = h.bufs.pop()?;
            let memory = make(index);
            let iov = memory.iovec();
            // SAFETY: `FixedMemory` promises the memory stays valid while the value lives,
            // and the host holds it until the slot is cleared.
            match unsafe { h.ring.submitter().register_buffers_update(u32::from(index), &[iov], None) } {
                Ok(_) => {
                    h.pinned[usize::from(index)] = Some(memory);
                    Some(index)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not register a fixed buffer in the worker's ring");
                    h.bufs.push(index);
                    None
                }
            }
        })
    }

    /// The worker's arena: one block of [`HOST_ARENA_BYTES`] registered as a fixed buffer,
    /// which every engine of the worker takes its buffers from, so registered memory is per
    /// worker, not per image (1,000 images once pinned 16 GiB). Made on first call; `None`
    /// where it cannot be registered (buffers are then plain memory).
    pub fn arena(&self) -> Option<Arc<Arena>> {
        if let Some(a) = self.with(|h| h.arena.clone()) {
            return Some(a);
        }
        if self.with(|h| std::mem::replace(&mut h.arena_tried, true)) {
            return None;
        }
        let mut made = None;
        self.register_buffer(|index| {
            let a = Arena::new(HOST_ARENA_BYTES, index);
            made = Some(a.clone());
            a
        })?;
        let arena = made?;
        self.with(|h| h.arena = Some(arena.clone()));
        Some(arena)
    }

    /// Gives back a fixed buffer from [`UringHost::register_buffer`] that no engine owns
    /// (a node's data area). Requests still using it keep it until they complete: the
    /// kernel holds its pages for them.
    pub fn unregister_buffer(&self, index: u16) {
        self.with(|h| clear_buffer(h, index))
    }

    /// Gives back what [`UringHost::join`] and [`UringHost::register_buffer`] took. The
    /// owner must have nothing in flight.
    pub fn leave(&self, key: Key, file: u32, buf: Option<u16>) {
        self.with(|h| {
            let _ = h.ring.submitter().register_files_update(file, &[-1]);
            h.files.push(file);
            if let Some(b) = buf {
                clear_buffer(h, b);
            }
            h.keys[key.0 as usize] = false;
            h.mail[key.0 as usize].clear();
        })
    }

    /// Queues a one-shot poll of `fd` for `mask` for the worker, answered with `token`.
    /// A poll names no memory, so it is safe to queue; a closed `fd` only fails it.
    pub fn poll_add(&self, fd: RawFd, mask: u32, token: u32) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(fd), mask).build();
        // SAFETY: a poll SQE points at no memory.
        unsafe { self.push(Key::WORKER, token, sqe) }
    }

    /// Queues the removal of the worker's poll with `token`, itself answered with `reply`.
    /// Names no memory.
    pub fn poll_remove(&self, token: u32, reply: u32) -> io::Result<()> {
        let target = UserData { key: Key::WORKER, token }.pack();
        let sqe = opcode::PollRemove::new(target).build();
        // SAFETY: a poll removal names no memory, only another SQE's user data.
        unsafe { self.push(Key::WORKER, reply, sqe) }
    }

    /// Queues `entry` for `key`, answered with `token`, handing the queue to the kernel
    /// first when it is full.
    ///
    /// # Safety
    /// Whatever the SQE points to must stay valid until its CQE is taken.
    pub unsafe fn push(&self, key: Key, token: u32, entry: impl Into<squeue::Entry128>) -> io::Result<()> {
        let entry = entry.into().user_data(UserData { key, token }.pack());
        self.with(|h| {
            // A full SQ empties into the kernel; a kernel that refuses more while the CQ is
            // full (EBUSY) gets room once the CQ is drained into the mailboxes.
            for _ in 0..1000 {
                // SAFETY: the caller keeps the SQE's memory valid until its completion.
                if unsafe { h.ring.submission().push(&entry) }.is_ok() {
                    return Ok(());
                }
                enter(&h.ring, 0, None)?;
                drain(h);
            }
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        })
    }

    /// Hands queued SQEs to the kernel and runs deferred completions, without waiting.
    pub fn submit(&self) -> io::Result<()> {
        self.with(|h| enter(&h.ring, 0, None))
    }

    /// Moves `key`'s completions into `out`, after handing queued SQEs to the kernel and
    /// taking what has finished. With `wait`, and none for `key` yet, blocks until one of
    /// its own arrives, or `timeout` passes. Wait only with requests of `key` in flight.
    pub fn reap(&self, key: Key, out: &mut Vec<(u32, i32)>, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        self.with(|h| {
            let deferred = h.ring.submission().taskrun();
            if !h.ring.submission().is_empty() || deferred {
                enter(&h.ring, 0, None)?;
            }
            drain(h);
            // Other owners' CQEs may come first: wait on until one of `key`'s arrives (the
            // caller waits only with requests in flight), or once with a timeout.
            while wait && h.mail[key.0 as usize].is_empty() {
                enter(&h.ring, 1, timeout)?;
                drain(h);
                if timeout.is_some() {
                    break;
                }
            }
            out.append(&mut h.mail[key.0 as usize]);
            Ok(())
        })
    }

    /// The worker's sleep: hands queued SQEs to the kernel and, unless some owner already
    /// has completions waiting, blocks until a CQE arrives or `timeout` passes. Moves the
    /// worker's own completions into `out`; engines take theirs when they reap.
    pub fn wait(&self, out: &mut Vec<(u32, i32)>, timeout: Duration) -> io::Result<()> {
        self.with(|h| {
            // Finished requests whose completions the kernel deferred are posted first.
            if h.ring.submission().taskrun() {
                enter(&h.ring, 0, None)?;
            }
            drain(h);
            if h.mail.iter().all(Vec::is_empty) {
                // Submits what is queued, then sleeps.
                enter(&h.ring, 1, Some(timeout))?;
                drain(h);
            } else if !h.ring.submission().is_empty() {
                enter(&h.ring, 0, None)?;
            }
            out.append(&mut h.mail[Key::WORKER.0 as usize]);
            Ok(())
        })
    }

    /// Whether some owner has completions waiting to be taken.
    pub fn has_mail(&self) -> bool {
        self.with(|h| h.mail.iter().any(|m| !m.is_empty()))
    }
}

/// One `io_uring_enter`: submits what is queued and, with `want`, waits for that many
/// completions or the timeout. EINTR, a timeout and a full CQ (EBUSY) are not errors: the
/// caller drains and looks again.
fn enter(ring: &WideRing, want: usize, timeout: Option<Duration>) -> io::Result<()> {
    let submitter = ring.submitter();
    let r = match timeout {
        Some(t) if want > 0 => {
            let ts = types::Timespec::from(t);
            let args = types::SubmitArgs::new().timespec(&ts);
            submitter.submit_with_args(want, &args)
        }
        _ => submitter.submit_and_wait(want),
    };
    match r {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME | libc::EBUSY)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sorts every CQE in the completion queue into its owner's mailbox. CQEs of owners that
/// have left (a cancelled poll, say) are dropped.
fn drain(h: &mut Inner) {
    for cqe in h.ring.completion() {
        let UserData { key, token } = UserData::unpack(cqe.user_data());
        let key = key.0 as usize;
        if h.keys.get(key).copied().unwrap_or(false) {
            h.mail[key].push((token, cqe.result()));
        }
    }
}

/// Clears fixed buffer `index` and lets go of its memory.
fn clear_buffer(h: &mut Inner, index: u16) {
    let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    // SAFETY: a null, empty iovec clears the slot; it names no memory.
    let _ = unsafe { h.ring.submitter().register_buffers_update(u32::from(index), &[empty], None) };
    // Requests still using the old memory keep its pages: the kernel holds them.
    h.pinned[usize::from(index)] = None;
    h.bufs.push(index);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn completions_reach_their_owner_whoever_drains() {
        let host = UringHost::new(8).unwrap();
        let a = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
        let b = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
        let (ka, _) = host.join(a.as_raw_fd()).expect("a fixed-file slot");
        let (kb, _) = host.join(b.as_raw_fd()).expect("a fixed-file slot");
        assert_ne!(ka, kb);
        let poll = |fd: RawFd| opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
        for (key, token, fd) in [(ka, 7, a.as_raw_fd()), (kb, 9, b.as_raw_fd())] {
            // SAFETY: poll SQEs point at no memory.
            unsafe { host.push(key, token, poll(fd)).unwrap() };
        }
        host.poll_add(a.as_raw_fd(), libc::POLLIN as u32, 1).unwrap();
        host.submit().unwrap();
        rustix::io::write(&a, &1u64.to_ne_bytes()).unwrap();
        rustix::io::write(&b, &1u64.to_ne_bytes()).unwrap();
        // The worker waits and drains everything; each owner still gets exactly its own.
        let mut mine = Vec::new();
        for _ in 0..10 {
            host.wait(&mut mine, Duration::from_millis(200)).unwrap();
            if !mine.is_empty() {
                break;
            }
        }
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].0, 1);
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let (wait_a, wait_b) = (got_a.is_empty(), got_b.is_empty());
            host.reap(ka, &mut got_a, wait_a, Some(Duration::from_millis(200))).unwrap();
            host.reap(kb, &mut got_b, wait_b, Some(Duration::from_millis(200))).unwrap();
            if !got_a.is_empty() && !got_b.is_empty() {
                break;
            }
        }
        assert_eq!(got_a.iter().map(|m| m.0).collect::<Vec<_>>(), [7]);
        assert_eq!(got_b.iter().map(|m| m.0).collect::<Vec<_>>(), [9]);
        assert!(!host.has_mail());
    }

    #[test]
    fn a_wait_with_nothing_coming_ends_at_its_timeout() {
        let host = UringHost::new(4).unwrap();
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        host.wait(&mut out, Duration::from_millis(30)).unwrap();
        assert!(out.is_empty());
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(25) && waited < Duration::from_secs(2), "waited {waited:?}");
    }

    #[test]
    fn another_thread_may_not_drive_the_ring() {
        let host = std::sync::Arc::new(UringHost::new(4).unwrap());
        let h = host.clone();
        let r = std::thread::spawn(move || h.submit()).join();
        assert!(r.is_err(), "the other thread's call must panic");
        host.submit().unwrap();
    }
}
