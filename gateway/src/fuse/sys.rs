//! The FUSE front-end's system calls that need `unsafe`: cloning a `/dev/fuse` session fd
//! reading a request into shared memory, and replying from it.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

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

#[cfg(test)]
mod tests {
    #[test]
    fn clone_ioctl_number_matches_the_kernel_header() {
        // _IOR('\xe5', 0, uint32_t) as <linux/fuse.h> spells it: dir=read(2), size=4.
        assert_eq!(super::FUSE_DEV_IOC_CLONE, 0x8004_e500);
    }
}
