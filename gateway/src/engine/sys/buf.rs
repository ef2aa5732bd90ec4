//! Page-aligned I/O buffers, usable with `O_DIRECT`, optionally carved from an arena that
//! an io_uring instance registered as a fixed buffer.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use shmem::{PeerSlice, SharedMemory};

use super::host::FixedMemory;

/// Alignment of every buffer: a page, which satisfies `O_DIRECT` on any logical block size.
pub const ALIGN: usize = 4096;

/// A zeroed, page-aligned, heap-allocated byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    origin: Origin,
}

enum Origin {
    Heap,
    Arena {
        arena: Arc<Arena>,
        first_page: usize,
    },
    /// Part of a node's shared data area, kept mapped by `_area`.
    Borrowed {
        _area: Arc<SharedMemory>,
        /// The fixed buffer of the io_uring it goes to that covers it, if registered.
        fixed: Option<u16>,
    },
}

// SAFETY: AlignedBuf owns its memory exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes on the heap.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let cap = len.max(1).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(cap, ALIGN).expect("buffer size overflows a Layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap, origin: Origin::Heap }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    /// A buffer over `len` bytes at `offset` of a node's shared data area, handed to an
    /// engine that only gives the kernel a pointer to it ([`crate::engine::Backend::takes_borrowed`]),
    /// so a write needs no copy. `None` when the range is not inside the area. Another
    /// process may change the memory at any time, so no reference to it is ever formed:
    /// [`AlignedBuf::as_slice`] and [`AlignedBuf::as_mut_slice`] refuse (panic on) such a
    /// buffer; [`AlignedBuf::view`] reaches it.
    pub fn over_shared(area: &Arc<SharedMemory>, offset: u64, len: u32) -> Option<AlignedBuf> {
        let ptr = NonNull::new(area.slice(offset, u64::from(len)).ok()?.as_ptr())?;
        // The `Arc` keeps the mapping, and so `[ptr, ptr+len)`, valid as long as the buffer.
        Some(AlignedBuf {
            ptr,
            len: len as usize,
            cap: len as usize,
            origin: Origin::Borrowed { _area: area.clone(), fixed: None },
        })
    }

    /// Marks a buffer over shared memory as lying inside fixed buffer `index` of the
    /// io_uring it will be submitted to, so reads and writes into it skip pinning its pages.
    /// The index must name a registration over memory that contains the buffer for the
    /// I/O to find it; a wrong one fails the I/O (EFAULT), it cannot reach other memory.
    pub fn set_fixed(&mut self, index: u16) {
        if let Origin::Borrowed { fixed, .. } = &mut self.origin {
            *fixed = Some(index);
        }
    }

    /// Whether the buffer is a view of memory owned elsewhere.
    pub fn is_borrowed(&self) -> bool {
        matches!(self.origin, Origin::Borrowed { .. })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        assert!(!self.is_borrowed(), "a reference into shared memory would let another process change it under us");
        // SAFETY: ptr is valid for cap >= len initialised bytes and uniquely owned.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(!self.is_borrowed(), "a reference into shared memory would let another process change it under us");
        // SAFETY: as in as_slice, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Raw pointer to the first byte, for the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes as a view, whatever memory they are in: the way engines copy into and out
    /// of a buffer that may be a node's shared memory.
    #[inline]
    pub fn view(&mut self) -> PeerSlice<'_> {
        // SAFETY: the buffer's `len` bytes stay valid while it lives (its own allocation,
        // its arena's pages, or a shared area its `Arc` keeps mapped), and `&mut self`
        // keeps `as_slice` references from existing while the view does.
        unsafe { PeerSlice::from_raw(self.ptr, self.len) }
    }

    /// Index of the registered fixed buffer this memory belongs to, if any.
    pub fn fixed_index(&self) -> Option<u16> {
        match self.origin {
            Origin::Arena { ref arena, .. } => Some(arena.index),
            Origin::Borrowed { fixed, .. } => fixed,
            Origin::Heap => None,
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        match &self.origin {
            Origin::Heap => {
                let layout = Layout::from_size_align(self.cap, ALIGN).expect("layout was valid at allocation");
                // SAFETY: allocated in `zeroed` with this exact layout and not freed since.
                unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
            }
            Origin::Arena { arena, first_page } => arena.release(*first_page, self.cap / ALIGN),
            // The owner keeps the memory; dropping the Arc is all there is to do.
            Origin::Borrowed { .. } => {}
        }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).field("fixed", &self.fixed_index()).finish()
    }
}

/// A block of page-aligned memory handed out as [`AlignedBuf`]s and registered with an
/// io_uring instance as one fixed buffer, so reads and writes into it skip page pinning.
///
/// The free map is behind a mutex that only the owning worker takes in practice; it is
/// uncontended, and far cheaper than the per-I/O page pinning it saves.
pub struct Arena {
    base: NonNull<u8>,
    pages: usize,
    index: u16,
    free: Mutex<Vec<u64>>,
}

// SAFETY: the arena's memory is only reached through AlignedBufs, each owning disjoint pages.
unsafe impl Send for Arena {}
// SAFETY: the free map is behind a mutex; the memory itself is not accessed through &Arena.
unsafe impl Sync for Arena {}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena").field("pages", &self.pages).field("index", &self.index).finish()
    }
}

impl Arena {
    /// Allocates `bytes` (rounded up to pages) of zeroed memory, to be registered as fixed
    /// buffer `index`.
    pub fn new(bytes: usize, index: u16) -> Arc<Arena> {
        let pages = bytes.div_ceil(ALIGN).max(1);
        let layout = Layout::from_size_align(pages * ALIGN, ALIGN).expect("arena size overflows a Layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Arc::new(Arena { base, pages, index, free: Mutex::new(vec![0; pages.div_ceil(64)]) })
    }

    /// A zeroed buffer of `len` bytes from the arena, or `None` when it has no run of free
    /// pages long enough.
    pub fn alloc(self: &Arc<Arena>, len: usize) -> Option<AlignedBuf> {
        self.take(len, true)
    }

    /// Like [`Arena::alloc`] but not zeroed: it may hold what an earlier command left, so the
    /// caller must overwrite all `len` bytes before anyone reads them (data-out copied in
    /// from a node). Saves clearing memory that is about to be written anyway.
    pub fn alloc_for_overwrite(self: &Arc<Arena>, len: usize) -> Option<AlignedBuf> {
        self.take(len, false)
    }

    fn take(self: &Arc<Arena>, len: usize, zero: bool) -> Option<AlignedBuf> {
        let need = len.max(1).div_ceil(ALIGN);
        let mut map = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let used = |p: usize| map[p / 64] & (1 << (p % 64)) != 0;
        let mut run = 0;
        let mut start = None;
        for p in 0..self.pages {
            if used(p) {
                run = 0;
                continue;
            }
            run += 1;
            if run == need {
                start = Some(p + 1 - need);
                break;
            }
        }
        let first = start?;
        for p in first..first + need {
            map[p / 64] |= 1 << (p % 64);
        }
        drop(map);
        // SAFETY: first + need <= pages, so the run lies inside the arena allocation.
        let ptr = unsafe { self.base.add(first * ALIGN) };
        if zero {
            // SAFETY: the pages were just marked used, so nobody else can reach them.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, need * ALIGN) };
        }
        Some(AlignedBuf {
            ptr,
            len,
            cap: need * ALIGN,
            origin: Origin::Arena { arena: Arc::clone(self), first_page: first },
        })
    }

    fn release(&self, first: usize, pages: usize) {
        let mut map = self.free.lock().unwrap_or_else(|e| e.into_inner());
        for p in first..first + pages {
            map[p / 64] &= !(1 << (p % 64));
        }
    }
}

impl Arena {
    /// The iovec describing the whole arena, to register it.
    pub(super) fn iovec(&self) -> libc::iovec {
        libc::iovec { iov_base: self.base.as_ptr().cast(), iov_len: self.pages * ALIGN }
    }
}

// SAFETY: the arena's pages are allocated at one address from `new` until it is dropped.
unsafe impl FixedMemory for Arena {
    fn iovec(&self) -> libc::iovec {
        Arena::iovec(self)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.pages * ALIGN, ALIGN).expect("layout was valid at allocation");
        // SAFETY: every AlignedBuf holds an Arc to the arena, so none is alive now; the memory
        // was allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.base.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_are_aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(5000);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(b.fixed_index(), None);
    }

    #[test]
    fn arena_reuses_released_pages() {
        let arena = Arena::new(4 * ALIGN, 0);
        let a = arena.alloc(2 * ALIGN).unwrap();
        let b = arena.alloc(ALIGN + 1).unwrap();
        assert!(arena.alloc(1).is_none());
        assert_eq!(a.fixed_index(), Some(0));
        drop(a);
        let mut c = arena.alloc(ALIGN).unwrap();
        c.as_mut_slice()[0] = 7;
        drop((b, c));
        assert!(arena.alloc(4 * ALIGN).is_some());
    }

    #[test]
    #[should_panic(expected = "shared memory")]
    fn buffers_over_shared_memory_never_hand_out_references() {
        let area = Arc::new(SharedMemory::create("t", 8192).unwrap());
        assert!(AlignedBuf::over_shared(&area, 4096, 4097).is_none(), "past the end of the area");
        let mut b = AlignedBuf::over_shared(&area, 4096, 4096).unwrap();
        assert!(b.is_borrowed() && b.fixed_index().is_none());
        b.view().write_at(0, b"node").unwrap();
        let mut back = [0u8; 4];
        area.read(4096, &mut back).unwrap();
        assert_eq!(&back, b"node");
        let _ = b.as_slice();
    }
}
