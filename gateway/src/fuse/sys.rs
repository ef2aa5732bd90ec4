//! The FUSE front-end's system calls that need `unsafe`: cloning a `/dev/fuse` session fd,
//! reading a request into shared memory and replying from it, and the io_uring of a FUSE
//! ring queue (its submission queue shared by the threads that reply, under a lock).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{cqueue, squeue, IoUring};

use shmem::PeerSlice;

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = (2 << 30) | (4 << 16) | (229 << 8);

/// A new `/dev/fuse` fd attached to `session`'s connection, with its own queue of requests
/// being processed: replies must go back on the fd their request was read from.
pub fn clone_device(session: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut source = session.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the session fd) through the pointer, which
    // points at a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FUSE_DEV_IOC_CLONE as _, &mut source as *mut u32) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads one request from `dev` into `into` (pages of a queue pair's data area).
pub fn read_into(dev: &OwnedFd, into: PeerSlice<'_>) -> std::io::Result<usize> {
    // SAFETY: a view is valid for writes of its length while it lives, and the kernel
    // writes at most that many bytes.
    let n = unsafe { libc::read(dev.as_raw_fd(), into.as_ptr().cast(), into.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes `head` then the bytes of `data` to `dev` in one `writev`.
pub fn write_with(dev: &OwnedFd, head: &[u8], data: PeerSlice<'_>) -> std::io::Result<usize> {
    let iov = [
        libc::iovec { iov_base: head.as_ptr() as *mut libc::c_void, iov_len: head.len() },
        libc::iovec { iov_base: data.as_ptr().cast(), iov_len: data.len() },
    ];
    // SAFETY: both iovecs describe memory valid for the call (a slice, and a view, which
    // is valid while it lives); the kernel only reads through them.
    let n = unsafe { libc::writev(dev.as_raw_fd(), iov.as_ptr(), 2) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `IORING_OP_URING_CMD` on `/dev/fuse`, with the 80 command bytes of a 128-byte SQE and,
/// for a registration, `addr`/`len` naming the entry's two iovecs.
pub fn uring_cmd(fd: BorrowedFd<'_>, op: u32, cmd: [u8; 80], iovecs: Option<&[libc::iovec; 2]>) -> squeue::Entry128 {
    let mut b = io_uring::opcode::UringCmd80::new(io_uring::types::Fd(fd.as_raw_fd()), op).cmd(cmd);
    if let Some(iov) = iovecs {
        b = b.addr(Some(iov.as_ptr() as u64));
    }
    let sqe = b.build();
    if iovecs.is_none() {
        return sqe;
    }
    // SAFETY: `Entry128` is `#[repr(C)]`, 128 bytes of `io_uring_sqe` then 64 command
    // bytes, all plain integers, so it is valid as bytes and back; `len` is the u32 at byte
    // 24 of `io_uring_sqe`, which the builder has no setter for.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_le_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// A FUSE ring queue's io_uring, owned by the queue's thread: it alone queues SQEs, enters
/// the kernel and reaps completions (`IORING_SETUP_SINGLE_ISSUER`), and the kernel runs
/// the ring's deferred work, handing it the next requests, only when it waits
/// (`IORING_SETUP_DEFER_TASKRUN`). Other threads leave their replies with it.
pub struct Ring {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

impl Ring {
    /// A ring with room for `entries` SQEs (one per FUSE ring entry, and one more), made
    /// on the thread that will own it.
    pub fn new(entries: u32) -> std::io::Result<Ring> {
        let ring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(entries.next_power_of_two())?;
        Ok(Ring { ring })
    }

    /// Queues `sqe`, to go with the next [`Ring::enter`]. Whatever it points at must stay
    /// valid until it completes. Called by the owning thread only.
    pub fn push(&self, sqe: &squeue::Entry128) -> std::io::Result<()> {
        // SAFETY: only the owning thread calls this, so this is the only submission queue
        // handle.
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: the caller keeps what the SQE points at alive until it completes; the
        // queue has a slot per FUSE ring entry (and the wakeup's), each with at most one
        // SQE queued, so the push fails only on a bug.
        let pushed = unsafe { sq.push(sqe) };
        drop(sq);
        pushed.map_err(|_| std::io::Error::other("the FUSE ring's submission queue is full"))
    }

    /// Submits what was queued and, with `wait`, waits for at least one completion (or a
    /// signal, or `timeout` to pass); then appends every completion that is ready to `into`
    /// as (user data, result). Called by the owning thread only.
    pub fn enter(&self, wait: bool, timeout: Option<Duration>, into: &mut Vec<(u64, i32)>) -> std::io::Result<()> {
        let entered = match (wait, timeout) {
            (true, Some(t)) => {
                let ts = Timespec::from(t);
                self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
            (true, None) => self.ring.submitter().submit_and_wait(1),
            (false, _) => self.ring.submitter().submit(),
        };
        match entered {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME)) => {}
            r => r.map(drop)?,
        }
        // SAFETY: only the owning thread calls this, so this is the only completion queue
        // handle.
        let cq = unsafe { self.ring.completion_shared() };
        into.extend(cq.map(|c| (c.user_data(), c.result())));
        Ok(())
    }
}

/// An `IORING_OP_READ` of eight bytes from `fd` (an eventfd) into `buf`.
pub fn read_eventfd(fd: BorrowedFd<'_>, buf: PeerSlice<'_>) -> squeue::Entry128 {
    let len = buf.len().min(8) as u32;
    io_uring::opcode::Read::new(io_uring::types::Fd(fd.as_raw_fd()), buf.as_ptr(), len).build().into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn clone_ioctl_number_matches_the_kernel_header() {
        // _IOR('\xe5', 0, uint32_t) as <linux/fuse.h> spells it: dir=read(2), size=4.
        assert_eq!(super::FUSE_DEV_IOC_CLONE, 0x8004_e500);
    }
}
