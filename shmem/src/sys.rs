//! Everything in `shmem` that needs `unsafe`: the mapping itself, the view of memory
//! another process can write ([`PeerSlice`]), atomics in that memory, and the prefetch
//! hint. Every other module of pangate reaches peer-writable memory through these.

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use rustix::mm::{MapFlags, ProtFlags};

use crate::ShmError;

/// A `MAP_SHARED` mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory reached only through `PeerSlice` copies and atomics,
// which are safe to use from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; concurrent callers race only as the peer process already does.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len > 0` bytes of `fd` shared, readable and writable.
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> Result<Mapping, ShmError> {
        // SAFETY: a fresh shared mapping of a file we hold open, at an address the kernel
        // chooses; it overlaps nothing of ours and is unmapped only in Drop.
        let raw = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd, 0)
        }
        .map_err(std::io::Error::from)?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| ShmError::BadFd("mmap returned null".into()))?;
        Ok(Mapping { ptr, len })
    }

    /// The whole mapping as a view.
    #[inline]
    pub(crate) fn view(&self) -> PeerSlice<'_> {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives, and pangate never
        // forms a reference into it: everything goes through the view's copies.
        unsafe { PeerSlice::from_raw(self.ptr, self.len) }
    }

    /// The 32-bit word at byte `offset`, which must be in bounds and 4-aligned.
    #[inline]
    pub(crate) fn atomic(&self, offset: usize) -> Result<&AtomicU32, ShmError> {
        if !offset.is_multiple_of(4) {
            return Err(ShmError::Unaligned(offset));
        }
        let at = self.view().subslice(offset as u64, 4)?;
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned); AtomicU32 has the
        // layout of u32, every bit pattern is valid, and atomics are the sanctioned way to
        // share a word with another process. The mapping outlives the reference (&self).
        Ok(unsafe { &*at.ptr.as_ptr().cast::<AtomicU32>() })
    }
}

impl Mapping {
    /// Replaces the pages at `[offset, offset+len)` of this mapping with `src`'s pages at
    /// `[src_offset, src_offset+len)` (`Some`), or with private zeroed memory (`None`), at
    /// the same addresses. Both ranges are page-aligned and in bounds.
    pub(crate) fn replace(&self, offset: usize, len: usize, src: Option<(&OwnedFd, u64)>) -> Result<(), ShmError> {
        let page = rustix::param::page_size();
        let aligned = offset.is_multiple_of(page) && len.is_multiple_of(page);
        let in_bounds = offset.checked_add(len).is_some_and(|end| end <= self.len);
        if !aligned || !in_bounds || len == 0 {
            return Err(ShmError::Unaligned(offset));
        }
        let at = self.ptr.as_ptr().wrapping_add(offset).cast();
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // Why both calls are sound: the range lies inside this mapping, which we own, and
        // pangate forms no reference into it (every access copies through a `PeerSlice`),
        // so swapping the pages under those addresses invalidates nothing; MAP_FIXED keeps
        // the addresses, so the mapping stays whole and Drop unmaps it as before.
        let r = match src {
            // SAFETY: see above.
            Some((fd, src_offset)) => unsafe {
                rustix::mm::mmap(at, len, prot, MapFlags::SHARED | MapFlags::FIXED, fd, src_offset)
            },
            // SAFETY: see above.
            None => unsafe { rustix::mm::mmap_anonymous(at, len, prot, MapFlags::PRIVATE | MapFlags::FIXED) },
        };
        r.map(drop).map_err(|e| ShmError::Os(e.into()))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no references into it exist and
        // every `PeerSlice` of it borrowed `self`, so none outlives it.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `len` bytes of memory that another process (or the kernel) may write at any moment,
/// valid for `'a`. No `&` or `&mut` reference to the bytes is ever formed: reads copy out,
/// writes copy in, and every access is bounds-checked. A node's data area, its staging
/// buffers and a FUSE request's pages are all reached this way.
#[derive(Debug, Clone, Copy)]
pub struct PeerSlice<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [std::cell::UnsafeCell<u8>]>,
}

// SAFETY: a view is a pointer and a length; its copies are sound from any thread (the
// memory is shared with another process anyway, and nobody holds references into it).
unsafe impl Send for PeerSlice<'_> {}
// SAFETY: as above.
unsafe impl Sync for PeerSlice<'_> {}

impl<'a> PeerSlice<'a> {
    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for all of `'a`, and no `&`
    /// or `&mut` reference to those bytes may exist during `'a`: they are reached only
    /// through views (and the kernel).
    #[inline]
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> PeerSlice<'a> {
        PeerSlice { ptr, len, _memory: PhantomData }
    }

    /// A view of memory the caller owns exclusively for `'a` (tests, fuzzing, buffers of
    /// the gateway's own).
    #[inline]
    pub fn from_mut(bytes: &'a mut [u8]) -> PeerSlice<'a> {
        let ptr = NonNull::new(bytes.as_mut_ptr()).expect("a slice's pointer is never null");
        // SAFETY: the exclusive borrow makes the bytes valid, and reachable only through
        // this view, for `'a`.
        unsafe { PeerSlice::from_raw(ptr, bytes.len()) }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(self, offset: u64, len: u64) -> Result<usize, ShmError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len as u64 => Ok(offset as usize),
            _ => Err(ShmError::OutOfBounds { offset, len, size: self.len }),
        }
    }

    /// The `len` bytes at `offset` of this view.
    #[inline]
    pub fn subslice(self, offset: u64, len: u64) -> Result<PeerSlice<'a>, ShmError> {
        let at = self.check(offset, len)?;
        let ptr = NonNull::new(self.ptr.as_ptr().wrapping_add(at)).expect("inside a view that is not null");
        // SAFETY: `[at, at+len)` lies inside this view, so the same promise covers it.
        Ok(unsafe { PeerSlice::from_raw(ptr, len as usize) })
    }

    /// Copies `dst.len()` bytes out of the view at `offset`.
    #[inline]
    pub fn read_at(self, offset: u64, dst: &mut [u8]) -> Result<(), ShmError> {
        let at = self.check(offset, dst.len() as u64)?;
        // SAFETY: the source lies inside the view (checked); `dst` is our own memory, which
        // no view covers, so they do not overlap. The peer may write the source meanwhile:
        // the copy is taken once and only the copy is trusted.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().wrapping_add(at), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the view at `offset`.
    #[inline]
    pub fn write_at(self, offset: u64, src: &[u8]) -> Result<(), ShmError> {
        let at = self.check(offset, src.len() as u64)?;
        // SAFETY: as in `read_at`, with the direction reversed.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().wrapping_add(at), src.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte`.
    #[inline]
    pub fn fill(self, offset: u64, len: usize, byte: u8) -> Result<(), ShmError> {
        let at = self.check(offset, len as u64)?;
        // SAFETY: the range lies inside the view (checked).
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().wrapping_add(at), byte, len) };
        Ok(())
    }

    /// Copies all of `src` into this view at `offset`; the two may be views of the same
    /// memory, even overlapping.
    #[inline]
    pub fn copy_from_view(self, offset: u64, src: PeerSlice<'_>) -> Result<(), ShmError> {
        let at = self.check(offset, src.len as u64)?;
        // SAFETY: both ranges lie inside their views; `copy` allows overlap.
        unsafe { std::ptr::copy(src.ptr.as_ptr(), self.ptr.as_ptr().wrapping_add(at), src.len) };
        Ok(())
    }

    /// Starts loading the cache line at `offset` (a hint: out of bounds is ignored).
    #[inline]
    pub fn prefetch(self, offset: u64) {
        if let Ok(at) = self.check(offset, 1) {
            prefetch_line(self.ptr.as_ptr().wrapping_add(at));
        }
    }

    /// The first byte's address, for the kernel to read or write (an iovec, an SQE). Only
    /// the kernel may use it, within `len` bytes and while the view is valid.
    #[inline]
    pub fn as_ptr(self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// Starts loading the cache line at `p` into this core's cache (a hint: it never faults,
/// whatever `p` is, and changes no memory).
#[inline]
pub fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is only a hint to the cache; it cannot fault or change memory.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
