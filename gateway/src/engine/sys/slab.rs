//! The RAM engine's memory: 2 MiB anonymous mappings, aligned and advised for transparent
//! huge pages, as SPDK's malloc bdev lives in huge pages: a random 4 KiB read then costs no
//! TLB miss on the image side, which on a VM's nested page tables is most of the read.

use std::ptr::NonNull;

use rustix::mm::{self, Advice, MapFlags, ProtFlags};

/// Allocation granule of the RAM engine; unmapping a whole chunk frees its memory.
pub const CHUNK: usize = 64 << 10;

/// Bytes in one slab.
pub const SLAB: usize = 2 << 20;

/// Chunks in one slab; [`Slab`] has a bit per chunk.
pub const CHUNKS_PER_SLAB: usize = SLAB / CHUNK;

/// One 2 MiB private anonymous mapping with a bit per 64 KiB chunk that holds data. Memory
/// of an absent chunk is zero (fresh, or discarded with `MADV_DONTNEED`).
#[derive(Debug)]
pub struct Slab {
    base: NonNull<u8>,
    present: u32,
}

// SAFETY: a slab owns its mapping outright; nothing else holds the pointer.
unsafe impl Send for Slab {}

impl Slab {
    /// A zeroed slab with no chunk present.
    pub fn new() -> Result<Slab, rustix::io::Errno> {
        // Over-reserve, then trim to a 2 MiB-aligned 2 MiB so the kernel can back it with
        // one huge page. NORESERVE: a sparse image commits only what is written.
        let span = 2 * SLAB;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks aliases nothing.
        let raw = unsafe {
            mm::mmap_anonymous(
                std::ptr::null_mut(),
                span,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        } as usize;
        let start = raw.next_multiple_of(SLAB);
        let (head, tail) = (start - raw, raw + span - (start + SLAB));
        // Should a trim fail, the untrimmed span stays reserved and unused: harmless.
        if head > 0 {
            // SAFETY: `[raw, start)` lies inside the mapping made above, before the slab kept.
            let _ = unsafe { mm::munmap(raw as *mut _, head) };
        }
        if tail > 0 {
            // SAFETY: `[start + SLAB, raw + span)` lies inside the mapping, after the slab.
            let _ = unsafe { mm::munmap((start + SLAB) as *mut _, tail) };
        }
        // Advice only: without THP the slab still works, on small pages.
        // SAFETY: the range is exactly the slab, which is ours; advice changes no contents.
        let _ = unsafe { mm::madvise(start as *mut _, SLAB, Advice::LinuxHugepage) };
        let base = NonNull::new(start as *mut u8).expect("mmap returned a null mapping");
        Ok(Slab { base, present: 0 })
    }

    /// Whether any chunk holds data.
    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Whether chunk `c` holds data.
    #[inline]
    pub fn has(&self, c: usize) -> bool {
        self.present & (1 << c) != 0
    }

    /// Marks chunk `c` as holding data.
    #[inline]
    pub fn mark(&mut self, c: usize) {
        self.present |= 1 << c;
    }

    /// Chunk `c`'s bytes.
    #[inline]
    pub fn chunk(&self, c: usize) -> &[u8] {
        assert!(c < CHUNKS_PER_SLAB);
        // SAFETY: the chunk lies inside the slab's private mapping, which lives as long as
        // `self` and is reached only through `self` (shared borrow here).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().wrapping_add(c * CHUNK), CHUNK) }
    }

    /// Chunk `c`'s bytes, to write.
    #[inline]
    pub fn chunk_mut(&mut self, c: usize) -> &mut [u8] {
        assert!(c < CHUNKS_PER_SLAB);
        // SAFETY: as in `chunk`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().wrapping_add(c * CHUNK), CHUNK) }
    }

    /// Gives a chunk's memory back; it reads as zero afterwards.
    pub fn discard(&mut self, c: usize) {
        assert!(c < CHUNKS_PER_SLAB);
        self.present &= !(1 << c);
        let at = self.base.as_ptr().wrapping_add(c * CHUNK);
        // SAFETY: the range is one chunk inside our own private anonymous mapping, and no
        // reference into it outlives this call (`&mut self`); DONTNEED refills it with zeros.
        let _ = unsafe { mm::madvise(at.cast(), CHUNK, Advice::LinuxDontNeed) };
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: the slab's mapping is ours and nothing points into it any more.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), SLAB) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_data_and_read_zero_once_discarded() {
        let mut s = Slab::new().unwrap();
        assert!(s.is_empty() && s.chunk(3).iter().all(|&b| b == 0));
        s.chunk_mut(3)[..4].copy_from_slice(b"data");
        s.mark(3);
        assert!(s.has(3) && !s.has(2));
        assert_eq!(&s.chunk(3)[..4], b"data");
        s.discard(3);
        assert!(s.is_empty() && s.chunk(3).iter().all(|&b| b == 0));
    }
}
