//! Everything the engines do that needs `unsafe`, each block with its reason: the system
//! calls std does not wrap (here), page-aligned buffers and arenas ([`buf`]), the worker's
//! shared io_uring ([`host`]), the io_uring engine's in-flight requests and its own ring
//! ([`inflight`]), mapped tmpfs images ([`mapping`]), NVMe passthrough ([`nvme`]) and the
//! RAM engine's slabs ([`slab`]). What they offer the rest of the engine module is safe.

pub mod buf;
pub mod host;
pub mod inflight;
pub mod mapping;
pub mod nvme;
pub mod slab;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use shmem::PeerSlice;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `fallocate(2)` with `mode` on `[offset, offset+len)`.
pub fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fallocate takes plain integers and an fd that `file` keeps open for the call.
    cvt(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) }).map(drop)
}

/// `pwritev2(2)` of one buffer with `RWF_*` flags.
pub fn pwrite2(file: &File, buf: &[u8], offset: u64, flags: libc::c_int) -> io::Result<usize> {
    let iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the iovec points into `buf`, which outlives the call; the kernel only reads it.
    let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `pread(2)` into a view (a buffer that may be a node's shared memory); the bytes read.
pub fn pread_into(file: &File, dst: PeerSlice<'_>, offset: u64) -> io::Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a view is valid for writes of its length while it lives; the kernel writes at
    // most that many bytes, and no reference to them exists.
    let n = unsafe { libc::pread(file.as_raw_fd(), dst.as_ptr().cast(), dst.len(), offset) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `pwrite(2)` from a view; the bytes written.
pub fn pwrite_from(file: &File, src: PeerSlice<'_>, offset: u64) -> io::Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a view is valid for reads of its length while it lives; the kernel only reads.
    let n = unsafe { libc::pwrite(file.as_raw_fd(), src.as_ptr().cast(), src.len(), offset) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE`; `None` when there is no such offset (ENXIO).
pub fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek takes plain integers and an fd that `file` keeps open for the call.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// The size in bytes of a block device (`BLKGETSIZE64`).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    cvt(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) })?;
    Ok(size)
}
