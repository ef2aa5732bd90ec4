//! The one accessor for memory shared with another process.
//!
//! The peer can write this memory at any moment, so no `&` or `&mut` reference to it is
//! ever formed. Reads copy out, writes copy in, cursors are atomics with acquire/release
//! ordering, and every offset is bounds-checked with checked arithmetic. The memfds are
//! sealed against shrinking and growing, so a peer cannot truncate the file under us and
//! turn an access into SIGBUS.

#![deny(unsafe_code)]

pub mod backoff;
pub mod msg;
#[allow(unsafe_code)]
mod sys;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use rustix::fs::{MemfdFlags, SealFlags};
use thiserror::Error;

pub use sys::{prefetch_line, PeerSlice};

/// Why a shared-memory access or mapping failed.
#[derive(Debug, Error)]
pub enum ShmError {
    /// The access falls outside the mapping.
    #[error("access at {offset:#x}+{len} is outside the {size}-byte shared area")]
    OutOfBounds {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Size of the area.
        size: usize,
    },
    /// A 32-bit atomic access at an unaligned offset.
    #[error("atomic access at unaligned offset {0:#x}")]
    Unaligned(usize),
    /// The peer's memfd is not sealed against resizing, or has the wrong size.
    #[error("shared memory fd is unusable: {0}")]
    BadFd(String),
    /// A system call failed.
    #[error(transparent)]
    Os(#[from] std::io::Error),
}

/// A `MAP_SHARED` mapping of a sealed memfd.
#[derive(Debug)]
pub struct SharedMemory {
    map: sys::Mapping,
    len: usize,
    fd: OwnedFd,
}

impl SharedMemory {
    /// Creates a zeroed memfd of `len` bytes, seals its size, and maps it.
    pub fn create(name: &str, len: usize) -> Result<SharedMemory, ShmError> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(std::io::Error::from)?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(std::io::Error::from)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(std::io::Error::from)?;
        Self::map(fd, len)
    }

    /// Maps a memfd received from a peer, after checking it is sealed against resizing and
    /// is exactly `len` bytes.
    pub fn open(fd: OwnedFd, len: usize) -> Result<SharedMemory, ShmError> {
        let seals =
            rustix::fs::fcntl_get_seals(&fd).map_err(|e| ShmError::BadFd(format!("not a sealable memfd: {e}")))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(ShmError::BadFd("not sealed against shrinking and growing".into()));
        }
        let size = rustix::fs::fstat(&fd).map_err(std::io::Error::from)?.st_size;
        if u64::try_from(size).ok() != Some(len as u64) {
            return Err(ShmError::BadFd(format!("size {size} is not the agreed {len}")));
        }
        Self::map(fd, len)
    }

    /// Maps `len` bytes of a device the kernel sizes itself (a TCMU uio device), where no
    /// peer can resize the memory under us.
    pub fn map_device(fd: OwnedFd, len: usize) -> Result<SharedMemory, ShmError> {
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<SharedMemory, ShmError> {
        if len == 0 {
            return Err(ShmError::BadFd("zero-length area".into()));
        }
        Ok(SharedMemory { map: sys::Mapping::new(&fd, len)?, len, fd })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the area is empty (never, for a mapped area).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The view of `[offset, offset+len)`, checked to lie inside the area. The area stays
    /// mapped while the view lives.
    #[inline]
    pub fn slice(&self, offset: u64, len: u64) -> Result<PeerSlice<'_>, ShmError> {
        self.map.view().subslice(offset, len)
    }

    /// The whole area as a view.
    #[inline]
    pub fn view(&self) -> PeerSlice<'_> {
        self.map.view()
    }

    /// Makes `[offset, offset+len)` of this mapping show `src`'s bytes at `src_offset`
    /// instead, at the same addresses: what either side writes there, the other sees. For
    /// memory whose address was handed to the kernel for good (a FUSE ring entry's buffer)
    /// and must follow a queue pair to its new data area. Page-aligned ranges only.
    pub fn alias(&self, offset: u64, len: u64, src: &SharedMemory, src_offset: u64) -> Result<(), ShmError> {
        src.slice(src_offset, len)?;
        self.map.replace(to_usize(offset)?, to_usize(len)?, Some((&src.fd, src_offset)))
    }

    /// Makes `[offset, offset+len)` private zeroed memory, at the same addresses: the peer's
    /// writes there no longer reach this process. Page-aligned ranges only.
    pub fn detach(&self, offset: u64, len: u64) -> Result<(), ShmError> {
        self.map.replace(to_usize(offset)?, to_usize(len)?, None)
    }

    /// Copies `dst.len()` bytes out of the area at `offset`.
    #[inline]
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), ShmError> {
        self.map.view().read_at(offset, dst)
    }

    /// Copies `src` into the area at `offset`.
    #[inline]
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<(), ShmError> {
        self.map.view().write_at(offset, src)
    }

    /// Starts loading the cache line at `offset` into this core's cache, so a read of it a
    /// little later does not stall on it. A hint: out-of-bounds offsets are ignored.
    #[inline]
    pub fn prefetch(&self, offset: u64) {
        self.map.view().prefetch(offset);
    }

    /// Loads a 32-bit word with acquire ordering.
    #[inline]
    pub fn load_acquire(&self, offset: usize) -> Result<u32, ShmError> {
        Ok(self.map.atomic(offset)?.load(Ordering::Acquire))
    }

    /// Stores a 32-bit word with release ordering.
    #[inline]
    pub fn store_release(&self, offset: usize, v: u32) -> Result<(), ShmError> {
        self.map.atomic(offset)?.store(v, Ordering::Release);
        Ok(())
    }
}

/// How long a poller of shared rings (a storage worker, netvirt's ring ports) keeps polling
/// after the last activity before it sleeps, unless configured otherwise.
pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// A `poll(2)` timeout; durations past what a timespec holds saturate.
pub fn poll_timeout(d: std::time::Duration) -> rustix::time::Timespec {
    rustix::time::Timespec::try_from(d).unwrap_or(rustix::time::Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
}

/// An eventfd used as a doorbell.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Doorbell {
    /// A new non-blocking doorbell.
    pub fn new() -> std::io::Result<Doorbell> {
        let fd =
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?;
        Ok(Doorbell { fd })
    }

    /// A doorbell from a received fd.
    pub fn from_fd(fd: OwnedFd) -> Doorbell {
        Doorbell { fd }
    }

    /// The fd, to pass to the peer or to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Rings once.
    pub fn ring(&self) -> std::io::Result<()> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Clears pending rings; returns how many there were (0 if none).
    pub fn drain(&self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        match rustix::io::read(&self.fd, &mut b) {
            Ok(_) => Ok(u64::from_ne_bytes(b)),
            Err(rustix::io::Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until rung or `timeout` passes (a blocking poll), without clearing.
    pub fn wait(&self, timeout: std::time::Duration) -> std::io::Result<bool> {
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::IN)];
        let ts = poll_timeout(timeout);
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

fn to_usize(v: u64) -> Result<usize, ShmError> {
    usize::try_from(v).map_err(|_| ShmError::Unaligned(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aliased_range_shows_the_other_area_and_a_detached_one_neither() {
        let page = rustix::param::page_size() as u64;
        let (home, away) = (
            SharedMemory::create("home", 4 * page as usize).unwrap(),
            SharedMemory::create("away", 4 * page as usize).unwrap(),
        );
        away.write(2 * page, b"away").unwrap();
        home.write(page, b"home").unwrap();
        home.alias(page, page, &away, 2 * page).unwrap();
        let mut b = [0u8; 4];
        home.read(page, &mut b).unwrap();
        assert_eq!(&b, b"away");
        home.write(page, b"both").unwrap();
        away.read(2 * page, &mut b).unwrap();
        assert_eq!(&b, b"both");
        home.detach(page, page).unwrap();
        home.read(page, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        away.write(2 * page, b"gone").unwrap();
        home.read(page, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        assert!(home.detach(1, page).is_err());
        assert!(home.detach(3 * page, 2 * page).is_err());
        assert!(home.alias(0, page, &away, 4 * page).is_err());
    }

    #[test]
    fn bounds_and_alignment_are_enforced() {
        let m = SharedMemory::create("t", 8192).unwrap();
        m.write(8188, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        m.read(8188, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(matches!(m.read(8189, &mut b), Err(ShmError::OutOfBounds { .. })));
        assert!(matches!(m.read(u64::MAX - 1, &mut b), Err(ShmError::OutOfBounds { .. })));
        // A prefetch is a hint: anywhere, in bounds or not, it changes nothing.
        for at in [0, 8188, 8192, u64::MAX] {
            m.prefetch(at);
        }
        m.read(8188, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(matches!(m.load_acquire(2), Err(ShmError::Unaligned(2))));
        m.store_release(64, 7).unwrap();
        assert_eq!(m.load_acquire(64).unwrap(), 7);
    }

    #[test]
    fn views_are_bounds_checked_and_stay_inside_their_parent() {
        let m = SharedMemory::create("v", 8192).unwrap();
        let v = m.slice(4096, 100).unwrap();
        assert_eq!(v.len(), 100);
        v.write_at(96, &[9, 8, 7, 6]).unwrap();
        assert!(matches!(v.write_at(97, &[0; 4]), Err(ShmError::OutOfBounds { size: 100, .. })));
        assert!(matches!(v.subslice(50, 51), Err(ShmError::OutOfBounds { .. })));
        assert!(matches!(v.subslice(u64::MAX, 2), Err(ShmError::OutOfBounds { .. })));
        assert!(m.slice(8000, 193).is_err());
        let mut b = [0u8; 4];
        m.read(4096 + 96, &mut b).unwrap();
        assert_eq!(b, [9, 8, 7, 6]);
        v.fill(0, 10, 0xEE).unwrap();
        m.view().copy_from_view(0, v.subslice(0, 10).unwrap()).unwrap();
        let mut head = [0u8; 11];
        m.read(0, &mut head).unwrap();
        assert_eq!(head, [0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0]);
        let mut own = [1u8; 8];
        let o = PeerSlice::from_mut(&mut own);
        o.write_at(4, &[5; 4]).unwrap();
        assert_eq!(own, [1, 1, 1, 1, 5, 5, 5, 5]);
    }

    #[test]
    fn peer_mapping_shares_memory_and_requires_seals() {
        let a = SharedMemory::create("a", 4096).unwrap();
        let fd = a.fd().try_clone_to_owned().unwrap();
        let b = SharedMemory::open(fd, 4096).unwrap();
        a.write(100, b"hello").unwrap();
        let mut got = [0u8; 5];
        b.read(100, &mut got).unwrap();
        assert_eq!(&got, b"hello");
        // The wrong size, or an unsealed fd, is refused.
        assert!(SharedMemory::open(a.fd().try_clone_to_owned().unwrap(), 8192).is_err());
        let unsealed = rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        assert!(matches!(SharedMemory::open(unsealed, 4096), Err(ShmError::BadFd(_))));
        // Nobody can shrink it under us.
        assert!(rustix::fs::ftruncate(a.fd(), 0).is_err());
    }

    #[test]
    fn doorbell_rings_and_drains() {
        let d = Doorbell::new().unwrap();
        assert_eq!(d.drain().unwrap(), 0);
        assert!(!d.wait(std::time::Duration::from_millis(1)).unwrap());
        d.ring().unwrap();
        d.ring().unwrap();
        assert!(d.wait(std::time::Duration::from_millis(100)).unwrap());
        assert_eq!(d.drain().unwrap(), 2);
    }
}
