//! The data path's io_uring and the frame buffers its SQEs point into.
//!
//! An SQE that reads into a buffer or writes from one lets the kernel use that buffer until
//! its CQE arrives. Here that is a property of the types: [`Pool`] counts, per buffer, the
//! reads and writes the kernel has in hand, and refuses to change, take or reuse a buffer
//! while it does; [`DataRing`] builds every SQE that names memory from a pool buffer (or
//! memory of its own) and gives the hold back only when it reaps the CQE. Dropped with
//! holds outstanding, both leak what the kernel may still use rather than free it.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// Frame buffers with reference counts, and the kernel's hold on each.
#[derive(Debug)]
pub struct Pool {
    bufs: Vec<Box<[u8]>>,
    refs: Vec<u32>,
    free: Vec<usize>,
    /// Reads the kernel has in hand into each buffer.
    filling: Vec<u32>,
    /// Writes the kernel has in hand from each buffer.
    sending: Vec<u32>,
    buf_len: usize,
    max: usize,
}

impl Pool {
    /// An empty pool of buffers of `buf_len` bytes, at most `max` of them.
    pub fn new(buf_len: usize, max: usize) -> Pool {
        Pool { bufs: vec![], refs: vec![], free: vec![], filling: vec![], sending: vec![], buf_len, max }
    }

    /// A buffer with one reference, or `None` when all `max` are in use.
    pub fn alloc(&mut self) -> Option<usize> {
        if let Some(b) = self.free.pop() {
            self.refs[b] = 1;
            return Some(b);
        }
        if self.bufs.len() >= self.max {
            return None;
        }
        self.bufs.push(vec![0u8; self.buf_len].into_boxed_slice());
        self.refs.push(1);
        self.filling.push(0);
        self.sending.push(0);
        Some(self.bufs.len() - 1)
    }

    /// One more reference to buffer `b` (a queued write of a frame read into it).
    pub fn share(&mut self, b: usize) {
        self.refs[b] += 1;
    }

    /// Drops a reference; the last one frees the buffer for reuse.
    pub fn release(&mut self, b: usize) {
        self.refs[b] -= 1;
        if self.refs[b] == 0 {
            self.free.push(b);
        }
    }

    fn idle(&self, b: usize) -> bool {
        self.filling[b] == 0 && self.sending[b] == 0
    }

    /// Buffer `b`'s bytes, to read. Not while the kernel reads into it.
    pub fn get(&self, b: usize) -> &[u8] {
        assert!(self.filling[b] == 0, "a buffer the kernel is filling was read");
        &self.bufs[b]
    }

    /// Buffer `b`'s bytes, to change. Not while the kernel reads into it or writes from it.
    pub fn get_mut(&mut self, b: usize) -> &mut [u8] {
        assert!(self.idle(b), "a buffer the kernel is using was asked for");
        &mut self.bufs[b]
    }

    /// Takes buffer `b` out of the pool for a while (to read a frame from it while others
    /// are allocated); [`Pool::put`] returns it. Not while the kernel uses it.
    pub fn take(&mut self, b: usize) -> Box<[u8]> {
        assert!(self.idle(b), "a buffer the kernel is using was taken");
        std::mem::take(&mut self.bufs[b])
    }

    /// Returns a buffer taken with [`Pool::take`].
    pub fn put(&mut self, b: usize, buf: Box<[u8]>) {
        self.bufs[b] = buf;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if (0..self.bufs.len()).any(|b| !self.idle(b)) {
            // The kernel may still write into these: leak them rather than free them.
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}

/// What the kernel holds for one SQE until its CQE is reaped.
enum Held {
    /// A read into a pool buffer.
    Fill(usize),
    /// A write from a pool buffer.
    Send(usize),
    /// A `recvmsg` into a pool buffer, with its header and control space.
    Recv(usize, Box<RecvState>),
    /// A read into the ring's own wake buffer.
    Wake,
    /// A multishot read: each CQE names the provided buffer it filled.
    Multi,
}

/// A completion, with the control messages of a `recvmsg`.
#[derive(Debug)]
pub struct Completion {
    /// The token the SQE was pushed with.
    pub token: usize,
    /// The result.
    pub res: i32,
    /// For a `recvmsg`: the control messages the kernel wrote.
    pub control: Option<Control>,
    /// For a multishot read: the provided pool buffer the frame is in, now the receiver's
    /// (one reference, to release).
    pub buf: Option<usize>,
    /// For a multishot read: whether it stays armed (more CQEs will come for its token).
    pub more: bool,
}

/// The control messages of a completed `recvmsg`.
pub struct Control(Box<RecvState>);

impl Control {
    /// Their bytes.
    pub fn bytes(&self) -> &[u8] {
        self.0.control()
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Control").field(&self.bytes().len()).finish()
    }
}

/// The data path's io_uring.
pub struct DataRing {
    ring: IoUring,
    /// Created disabled, waiting for [`DataRing::start`] on its thread.
    disabled: bool,
    /// The provided-buffer ring multishot reads take pool buffers from, where the kernel
    /// has both (6.7 and later).
    provided: Option<Provided>,
    /// What each token's SQE holds, indexed by token.
    held: Vec<Option<Held>>,
    wake_buf: Box<[u8; 8]>,
    /// Whether a read into `wake_buf` is in the kernel.
    wake_held: bool,
}

impl std::fmt::Debug for DataRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataRing").field("held", &self.held.iter().flatten().count()).finish_non_exhaustive()
    }
}

/// The token of SQEs whose CQEs nobody needs (a cancel-everything at shutdown).
pub const NO_TOKEN: usize = usize::MAX;

impl DataRing {
    /// A ring with room for `entries` SQEs, for the thread that calls [`DataRing::start`].
    ///
    /// Where the kernel allows (6.1 and later), the ring runs its completion work only
    /// when that thread asks for completions (`DEFER_TASKRUN`, one issuer): a frame
    /// arriving on a TAP then costs its sender a list insertion, not an interrupt of the
    /// worker polling on another core, and the worker finishes the reads in batches. A
    /// flag in the shared ring says when such work waits ([`DataRing::has_completions`]).
    pub fn new(entries: u32) -> io::Result<DataRing> {
        let deferred = IoUring::builder()
            .setup_r_disabled()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(entries);
        let (ring, disabled) = match deferred {
            Ok(ring) => (ring, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (IoUring::new(entries)?, false),
            Err(e) => return Err(e),
        };
        Ok(DataRing { ring, disabled, provided: None, held: Vec::new(), wake_buf: Box::new([0; 8]), wake_held: false })
    }

    /// Makes the calling thread the ring's only issuer: called once, on the thread that
    /// then submits and reaps, before anything is queued.
    pub fn start(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.disabled) {
            self.ring.submitter().register_enable_rings()?;
        }
        let mut probe = io_uring::Probe::new();
        if self.ring.submitter().register_probe(&mut probe).is_ok() && probe.is_supported(opcode::ReadMulti::CODE) {
            self.provided = Provided::register(&self.ring).ok();
        }
        Ok(())
    }

    /// Whether reads can be multishot ([`DataRing::read_multi`]).
    pub fn multishot(&self) -> bool {
        self.provided.is_some()
    }

    /// How many pool buffers the provided-buffer ring holds for multishot reads to fill.
    pub fn provided(&self) -> usize {
        self.provided.as_ref().map_or(0, |p| p.count)
    }

    /// Gives pool buffer `b` (allocated, one reference) to the provided-buffer ring; a
    /// multishot read's CQE hands it back. Returns `false`, keeping `b`, when the ring is
    /// full or there is none.
    pub fn provide(&mut self, pool: &mut Pool, b: usize) -> bool {
        let Some(p) = self.provided.as_mut().filter(|p| p.count < usize::from(p.entries)) else { return false };
        assert!(pool.idle(b) && pool.refs[b] == 1, "a provided buffer belongs to nobody else");
        let Ok(bid) = u16::try_from(b) else { return false };
        let buf = &mut pool.bufs[b];
        let len = u32::try_from(buf.len()).expect("pool buffers are under 4 GiB");
        pool.filling[b] += 1;
        p.push(buf.as_mut_ptr() as u64, len, bid);
        true
    }

    /// A multishot read of `fd` into provided buffers, one CQE per frame, until it ends
    /// (a CQE without `more`: an error, cancellation, or the provided ring running dry).
    /// Names no memory of its own.
    pub fn read_multi(&mut self, fd: RawFd, token: usize) {
        assert!(self.provided.is_some(), "multishot reads need the provided-buffer ring");
        let e = opcode::ReadMulti::new(types::Fd(fd), 0, BGID).build();
        self.hold(token, Held::Multi);
        // SAFETY: the buffers the kernel fills are the provided ring's, each counted as
        // filled in the pool until its CQE is reaped (and leaked if the pool is dropped
        // before); the SQE itself points at no memory.
        unsafe { self.push(e, token) };
    }

    fn hold(&mut self, token: usize, held: Held) {
        if self.held.len() <= token {
            self.held.resize_with(token + 1, || None);
        }
        assert!(self.held[token].is_none(), "a token pushed twice");
        self.held[token] = Some(held);
    }

    /// Queues `entry`, handing the queue to the kernel first when it is full.
    ///
    /// # Safety
    /// Whatever the SQE points to must stay valid until its CQE is reaped.
    unsafe fn push(&mut self, entry: io_uring::squeue::Entry, token: usize) {
        let entry = entry.user_data(token as u64);
        // SAFETY: the caller's promise.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            if self.ring.submit().is_err() {
                break;
            }
        }
    }

    /// Reads into pool buffer `b` from `fd`.
    pub fn read(&mut self, pool: &mut Pool, fd: RawFd, b: usize, token: usize) {
        assert!(pool.idle(b), "a read into a buffer the kernel is using");
        let buf = &mut pool.bufs[b];
        let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build();
        pool.filling[b] += 1;
        self.hold(token, Held::Fill(b));
        // SAFETY: the buffer is the pool's, which neither frees, moves nor hands it out
        // while `filling` counts this read, and leaks it if dropped before the CQE.
        unsafe { self.push(e, token) };
    }

    /// Receives one packet into pool buffer `b` from packet socket `fd`, with its control
    /// messages.
    pub fn recv(&mut self, pool: &mut Pool, fd: RawFd, b: usize, token: usize) {
        assert!(pool.idle(b), "a receive into a buffer the kernel is using");
        let buf = &mut pool.bufs[b];
        let mut state = RecvState::new(buf.as_mut_ptr(), buf.len());
        let e = opcode::RecvMsg::new(types::Fd(fd), state.msghdr()).build();
        pool.filling[b] += 1;
        self.hold(token, Held::Recv(b, state));
        // SAFETY: the buffer as in `read`; the header and control space are boxed in
        // `held` until the CQE (leaked if the ring is dropped before).
        unsafe { self.push(e, token) };
    }

    /// Writes the first `len` bytes of pool buffer `b` to `fd`.
    pub fn write(&mut self, pool: &mut Pool, fd: RawFd, b: usize, len: usize, token: usize) {
        assert!(pool.filling[b] == 0, "a write from a buffer the kernel is filling");
        let buf = &pool.bufs[b];
        assert!(len <= buf.len(), "a write past its buffer");
        let e = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len as u32).build();
        pool.sending[b] += 1;
        self.hold(token, Held::Send(b));
        // SAFETY: as in `read`; `len` is within the buffer (checked).
        unsafe { self.push(e, token) };
    }

    /// Reads the 8-byte counter of eventfd `fd` into the ring's own buffer.
    pub fn read_wake(&mut self, fd: RawFd, token: usize) {
        assert!(!self.wake_held, "two wake reads at once");
        let e = opcode::Read::new(types::Fd(fd), self.wake_buf.as_mut_ptr(), 8).build();
        self.hold(token, Held::Wake);
        self.wake_held = true;
        // SAFETY: the buffer is the ring's own and boxed; it is leaked if the ring is
        // dropped before the CQE.
        unsafe { self.push(e, token) };
    }

    /// A one-shot poll of `fd` for input. Names no memory.
    pub fn poll(&mut self, fd: RawFd, token: usize) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
        // SAFETY: a poll SQE points at no memory.
        unsafe { self.push(e, token) };
    }

    /// Cancels every request on `fd`. Names no memory.
    pub fn cancel_fd(&mut self, fd: RawFd, token: usize) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
        // SAFETY: a cancellation points at no memory.
        unsafe { self.push(e, token) };
    }

    /// Cancels every request in flight; its own CQE carries [`NO_TOKEN`].
    pub fn cancel_all(&mut self) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build();
        // SAFETY: a cancellation points at no memory.
        unsafe { self.push(e, NO_TOKEN) };
    }

    /// Hands queued SQEs to the kernel.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Hands queued SQEs to the kernel and waits for `want` completions.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.ring.submit_and_wait(want)
    }

    /// Whether completions are waiting to be reaped. Completion work the kernel deferred
    /// to this thread is run first when the ring flags some (one `io_uring_enter`, only
    /// then), so a poll loop sees frames without sleeping and without being interrupted.
    pub fn has_completions(&mut self) -> bool {
        if !self.ring.completion().is_empty() {
            return true;
        }
        if self.ring.submission().taskrun() {
            // submit() asks for events when the flag is up, which runs the deferred work.
            let _ = self.ring.submit();
        }
        !self.ring.completion().is_empty()
    }

    /// Moves every completion into `out`, giving back what its SQE held in `pool`.
    pub fn reap(&mut self, pool: &mut Pool, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            let token = cqe.user_data() as usize;
            let mut control = None;
            let more = io_uring::cqueue::more(cqe.flags());
            let buf = io_uring::cqueue::buffer_select(cqe.flags()).map(|bid| {
                let b = usize::from(bid);
                pool.filling[b] = pool.filling[b].checked_sub(1).expect("this pool's provided buffer");
                if let Some(p) = self.provided.as_mut() {
                    p.count -= 1;
                }
                b
            });
            let slot = self.held.get_mut(token);
            let held = match slot {
                Some(h) if more && matches!(h, Some(Held::Multi)) => None,
                Some(h) => h.take(),
                None => None,
            };
            match held {
                Some(Held::Fill(b)) => pool.filling[b] = pool.filling[b].checked_sub(1).expect("this pool's read"),
                Some(Held::Send(b)) => pool.sending[b] = pool.sending[b].checked_sub(1).expect("this pool's write"),
                Some(Held::Recv(b, state)) => {
                    pool.filling[b] = pool.filling[b].checked_sub(1).expect("this pool's receive");
                    control = Some(Control(state));
                }
                Some(Held::Wake) => self.wake_held = false,
                Some(Held::Multi) | None => {}
            }
            out.push(Completion { token, res: cqe.result(), control, buf, more });
        }
    }
}

impl Drop for DataRing {
    fn drop(&mut self) {
        if self.held.iter().any(Option::is_some) {
            // The kernel may still write into the wake buffer or a receive's header: leak
            // them rather than free them.
            std::mem::forget(std::mem::take(&mut self.held));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}

/// The buffer group multishot reads select from.
const BGID: u16 = 0;
/// Entries of the provided-buffer ring (a power of two).
const PROVIDED_ENTRIES: u16 = 256;

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): entries naming pool buffers,
/// in memory of its own the kernel reads, and the tail this side advances.
struct Provided {
    base: *mut types::BufRingEntry,
    map_len: usize,
    entries: u16,
    tail: u16,
    /// Buffers in the ring now (given, not yet handed back by a CQE).
    count: usize,
}

// SAFETY: the mapping is owned by the Provided and moves between threads only with the
// data path that owns it.
unsafe impl Send for Provided {}

impl Provided {
    /// Maps and registers an empty ring as buffer group [`BGID`] of `ring`.
    fn register(ring: &IoUring) -> io::Result<Provided> {
        let entries = PROVIDED_ENTRIES;
        let map_len = usize::from(entries) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: a fresh private anonymous mapping, no address hint; zero-filled, which
        // is a valid empty ring (tail 0).
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }?;
        // SAFETY: page-aligned memory of `entries` entries that lives until `Drop`, after
        // the ring (declared before) has closed; the kernel pins its pages while it uses them.
        let registered = unsafe { ring.submitter().register_buf_ring_with_flags(base as u64, entries, BGID, 0) };
        let p = Provided { base: base.cast(), map_len, entries, tail: 0, count: 0 };
        registered?;
        Ok(p)
    }

    /// Appends one buffer and publishes the new tail.
    fn push(&mut self, addr: u64, len: u32, bid: u16) {
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index` is within the mapping.
        let slot = unsafe { self.base.add(index) };
        // SAFETY: the kernel reads entries only below the published tail, and this one is
        // at or past it, so nothing else reads or writes it now.
        let entry = unsafe { &mut *slot };
        entry.set_addr(addr);
        entry.set_len(len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: `base` is the ring's first entry, initialised (zeroed by the mapping).
        let tail = unsafe { types::BufRingEntry::tail(self.base) }.cast::<std::sync::atomic::AtomicU16>();
        // SAFETY: the tail overlays the first entry's reserved field, aligned for a u16,
        // which the kernel reads and this side alone writes; published with release order
        // after the entry.
        unsafe { &*tail }.store(self.tail, std::sync::atomic::Ordering::Release);
        self.count += 1;
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        // SAFETY: the mapping is this ring's own, made in `register`; the io_uring that
        // used it is closed by now (the ring field drops first).
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.map_len) };
    }
}

/// What a `recvmsg` SQE on a packet socket points at: its header, the one iovec (a pool
/// buffer) and room for control messages. Boxed, so the pointers into it stay put while the
/// kernel has the SQE.
struct RecvState {
    msg: libc::msghdr,
    iov: libc::iovec,
    control: [u64; 16],
}

// SAFETY: the raw pointers in a RecvState point into its own box and into a pool buffer,
// both owned by the data path; they move between threads only together with it.
unsafe impl Send for RecvState {}

impl RecvState {
    /// The state for receiving into `len` bytes at `buf`.
    fn new(buf: *mut u8, len: usize) -> Box<RecvState> {
        // SAFETY: all-zero is a valid msghdr and iovec (null pointers, zero lengths).
        let mut state: Box<RecvState> = Box::new(unsafe { std::mem::zeroed() });
        state.iov = libc::iovec { iov_base: buf.cast(), iov_len: len };
        state.msg.msg_iov = &mut state.iov;
        state.msg.msg_iovlen = 1;
        state.msg.msg_control = state.control.as_mut_ptr().cast();
        state.msg.msg_controllen = std::mem::size_of_val(&state.control);
        state
    }

    /// The header, for the SQE.
    fn msghdr(&mut self) -> *mut libc::msghdr {
        &mut self.msg
    }

    /// The control messages the kernel wrote.
    fn control(&self) -> &[u8] {
        let len = self.msg.msg_controllen.min(std::mem::size_of_val(&self.control));
        // SAFETY: `control` is plain bytes of our own, `len` at most its size.
        unsafe { std::slice::from_raw_parts(self.control.as_ptr().cast::<u8>(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_buffer_the_kernel_fills_is_neither_changed_nor_taken_until_reaped() {
        let Ok(mut ring) = DataRing::new(8) else {
            eprintln!("skipping: no io_uring here");
            return;
        };
        ring.start().unwrap();
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut pool = Pool::new(64, 2);
        let b = pool.alloc().unwrap();
        ring.read(&mut pool, rx.as_raw_fd(), b, 5);
        ring.submit().unwrap();
        for touch in [0, 1] {
            let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if touch == 0 {
                    drop(pool.take(b));
                } else {
                    pool.get_mut(b)[0] = 1;
                }
            }));
            assert!(refused.is_err(), "the kernel may be writing the buffer");
        }
        tx.write_all(b"frame").unwrap();
        let mut done = Vec::new();
        for _ in 0..100 {
            ring.submit_and_wait(1).unwrap();
            ring.reap(&mut pool, &mut done);
            if !done.is_empty() {
                break;
            }
        }
        assert_eq!((done[0].token, done[0].res), (5, 5));
        assert_eq!(&pool.get(b)[..5], b"frame");
        let taken = pool.take(b);
        pool.put(b, taken);
    }

    #[test]
    fn a_multishot_read_hands_each_frame_in_a_provided_buffer_and_ends_when_they_run_out() {
        let Ok(mut ring) = DataRing::new(8) else {
            eprintln!("skipping: no io_uring here");
            return;
        };
        ring.start().unwrap();
        if !ring.multishot() {
            eprintln!("skipping: this kernel has no multishot reads (6.7 and later)");
            return;
        }
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut pool = Pool::new(64, 4);
        let bufs: Vec<usize> = (0..2).map(|_| pool.alloc().unwrap()).collect();
        for &b in &bufs {
            assert!(ring.provide(&mut pool, b));
        }
        assert_eq!(ring.provided(), 2);
        ring.read_multi(rx.as_raw_fd(), 9);
        let mut done = Vec::new();
        let mut reap = |ring: &mut DataRing, pool: &mut Pool, want: usize| {
            for _ in 0..100 {
                if done.len() >= want {
                    break;
                }
                ring.submit_and_wait(1).unwrap();
                ring.reap(pool, &mut done);
            }
            std::mem::take(&mut done)
        };
        let mut seen = Vec::new();
        for frame in [&b"first"[..], b"second"] {
            tx.send(frame).unwrap();
            let c = reap(&mut ring, &mut pool, 1);
            let (b, more) = (c[0].buf.expect("a provided buffer"), c[0].more);
            assert!(more, "still armed while buffers remain");
            assert_eq!(&pool.get(b)[..c[0].res as usize], frame);
            seen.push(b);
        }
        seen.sort_unstable();
        assert_eq!(seen, bufs, "each provided buffer was used once");
        assert_eq!(ring.provided(), 0);
        tx.send(b"third").unwrap();
        let c = reap(&mut ring, &mut pool, 1);
        assert_eq!((c[0].token, c[0].res, c[0].more, c[0].buf), (9, -libc::ENOBUFS, false, None));
        for b in seen {
            pool.release(b);
        }
    }
}
