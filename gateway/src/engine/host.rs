//! One io_uring shared by a gateway worker and the io_uring engines of the images it owns.
//!
//! DESIGN.md's worker owns one ring and waits on doorbells and backend completions in the
//! same `submit_and_wait`. The host is that ring. Engines that join it push their SQEs into
//! it and register their image and arena in its fixed file and buffer tables; the worker
//! adds its own polls (doorbells, sockets) and sleeps in it. Every CQE carries its owner's
//! key in the top half of its user data, and whoever drains the completion queue sorts the
//! CQEs into per-key mailboxes, so an engine waiting for its own completions never loses
//! the worker's, nor the worker an engine's.
//!
//! The ring is created single-issuer with deferred task work, so it belongs to the thread
//! that built it. The host is shared through an `Arc` (engines must stay `Send` to reach the
//! worker), and every use checks that it happens on that thread.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{squeue, types, IoUring};

/// The worker's own key: polls and other SQEs that are not an engine's.
pub const WORKER_KEY: u32 = 0;

/// Entries in the fixed file and fixed buffer tables: one per engine that joins.
const TABLE: u32 = 1024;

/// Builds a CQE user data from an owner's key and its own 32-bit token.
pub fn user_data(key: u32, token: u32) -> u64 {
    (u64::from(key) << 32) | u64::from(token)
}

thread_local! {
    static HERE: u8 = const { 0 };
}

/// An address unique to the calling thread among live threads.
fn thread_mark() -> usize {
    HERE.with(|h| h as *const u8 as usize)
}

struct Inner {
    ring: IoUring,
    /// Completions sorted by owner key, as (token, result).
    mail: Vec<Vec<(u32, i32)>>,
    /// Whether each key is taken.
    keys: Vec<bool>,
    /// Free fixed-file and fixed-buffer indices; empty when the table could not be made.
    files: Vec<u32>,
    bufs: Vec<u16>,
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
    /// CQEs. Kernels without single-issuer and deferred task work (before 6.1) get a plain
    /// ring; kernels without sparse tables (before 5.19) get no fixed files, and engines
    /// then keep rings of their own.
    pub fn new(entries: u32) -> io::Result<UringHost> {
        let cq = entries * 8;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(cq)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))?;
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
        let inner = Inner { ring, mail: vec![Vec::new()], keys: vec![true], files, bufs };
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
    pub fn join(&self, fd: RawFd) -> Option<(u32, u32)> {
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
            Some((key as u32, file))
        })
    }

    /// Registers the memory `iov_for(index)` describes as fixed buffer `index`; returns the
    /// index, or `None` (plain I/O then).
    ///
    /// # Safety
    /// The memory must stay valid until [`UringHost::leave`] gives the index back.
    pub unsafe fn register_buffer(&self, iov_for: impl FnOnce(u16) -> libc::iovec) -> Option<u16> {
        self.with(|h| {
            let index = h.bufs.pop()?;
            let iov = iov_for(index);
            // SAFETY: the caller keeps the memory valid until it unregisters the index.
            match unsafe { h.ring.submitter().register_buffers_update(u32::from(index), &[iov], None) } {
                Ok(_) => Some(index),
                Err(e) => {
                    tracing::debug!(error = %e, "could not register an arena in the worker's ring");
                    h.bufs.push(index);
                    None
                }
            }
        })
    }

    /// Gives back a fixed buffer from [`UringHost::register_buffer`] that no engine owns
    /// (a node's data area). Requests still using it keep it until they complete: the
    /// kernel holds its pages for them.
    pub fn unregister_buffer(&self, index: u16) {
        self.with(|h| {
            let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
            // SAFETY: a null, empty iovec clears the slot; it names no memory.
            let _ = unsafe { h.ring.submitter().register_buffers_update(u32::from(index), &[empty], None) };
            h.bufs.push(index);
        })
    }

    /// Gives back what [`UringHost::join`] and [`UringHost::register_buffer`] took. The
    /// owner must have nothing in flight.
    pub fn leave(&self, key: u32, file: u32, buf: Option<u16>) {
        self.with(|h| {
            let _ = h.ring.submitter().register_files_update(file, &[-1]);
            h.files.push(file);
            if let Some(b) = buf {
                let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
                // SAFETY: a null, empty iovec clears the slot; it names no memory.
                let _ = unsafe { h.ring.submitter().register_buffers_update(u32::from(b), &[empty], None) };
                h.bufs.push(b);
            }
            h.keys[key as usize] = false;
            h.mail[key as usize].clear();
        })
    }

    /// Queues an SQE, handing the queue to the kernel first when it is full.
    ///
    /// # Safety
    /// Whatever the SQE points to must stay valid until its CQE is taken.
    pub unsafe fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        self.with(|h| {
            // A full SQ empties into the kernel; a kernel that refuses more while the CQ is
            // full (EBUSY) gets room once the CQ is drained into the mailboxes.
            for _ in 0..1000 {
                // SAFETY: the caller keeps the SQE's memory valid until its completion.
                if unsafe { h.ring.submission().push(entry) }.is_ok() {
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
    pub fn reap(&self, key: u32, out: &mut Vec<(u32, i32)>, wait: bool, timeout: Option<Duration>) -> io::Result<()> {
        self.with(|h| {
            let deferred = h.ring.submission().taskrun();
            if !h.ring.submission().is_empty() || deferred {
                enter(&h.ring, 0, None)?;
            }
            drain(h);
            // Other owners' CQEs may come first: wait on until one of `key`'s arrives (the
            // caller waits only with requests in flight), or once with a timeout.
            while wait && h.mail[key as usize].is_empty() {
                enter(&h.ring, 1, timeout)?;
                drain(h);
                if timeout.is_some() {
                    break;
                }
            }
            out.append(&mut h.mail[key as usize]);
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
            out.append(&mut h.mail[WORKER_KEY as usize]);
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
fn enter(ring: &IoUring, want: usize, timeout: Option<Duration>) -> io::Result<()> {
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
        let (key, token) = ((cqe.user_data() >> 32) as usize, cqe.user_data() as u32);
        if h.keys.get(key).copied().unwrap_or(false) {
            h.mail[key].push((token, cqe.result()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;
    use std::os::fd::AsRawFd;

    #[test]
    fn completions_reach_their_owner_whoever_drains() {
        let host = UringHost::new(8).unwrap();
        let a = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
        let b = rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap();
        let (ka, _) = host.join(a.as_raw_fd()).expect("a fixed-file slot");
        let (kb, _) = host.join(b.as_raw_fd()).expect("a fixed-file slot");
        assert_ne!(ka, kb);
        let poll = |fd: RawFd, key: u32, token: u32| {
            opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(user_data(key, token))
        };
        for sqe in [poll(a.as_raw_fd(), ka, 7), poll(b.as_raw_fd(), kb, 9), poll(a.as_raw_fd(), WORKER_KEY, 1)] {
            // SAFETY: poll SQEs point at no memory.
            unsafe { host.push(&sqe).unwrap() };
        }
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
