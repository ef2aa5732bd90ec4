//! A shared, writable mapping of a memory-backed image (tmpfs, ramfs), which writes copy
//! into directly: no system call, no page-cache lookup per 4 KiB page, and no inode lock.
//!
//! On such a filesystem the mapping *is* the file's page cache, so what is copied in is
//! what a `pread` returns, survives the gateway being killed, and has nothing to flush.
//! Only writes use it. A read through the mapping of a hole would allocate the page (a
//! shared mapping of tmpfs has no zero page), so reads stay `pread`s and a sparse image
//! stays sparse.
//!
//! The file must not shrink under the mapping: an access past its end raises SIGBUS. The
//! gateway never shrinks an image, and remaps after growing one; an image file truncated
//! by hand while the gateway serves it is outside what it can defend against (as with
//! any program that maps a file).

use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{self, MapFlags, ProtFlags};

/// `len` bytes of a file, mapped shared and writable.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone; it is only written through raw
// pointers by whichever single thread owns the engine at the time.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` shared and writable (`None` for an empty file).
    pub fn new(file: impl AsFd, len: u64) -> io::Result<Option<Mapping>> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks aliases no memory
        // of this process; it is unmapped only in `drop`.
        let ptr = unsafe {
            mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, file, 0)
        }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Some(Mapping { base, len }))
    }

    /// Copies `len` bytes from `src` to `offset` in the file; `false` (nothing copied) when
    /// the range is not inside the mapping.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes. It may be memory another process
    /// writes concurrently (a node's data area): the file then gets some mix of its bytes,
    /// as a disk would.
    pub unsafe fn write(&self, offset: u64, src: *const u8, len: usize) -> bool {
        let fits = usize::try_from(offset).ok().and_then(|o| o.checked_add(len)).is_some_and(|end| end <= self.len);
        if fits {
            // `[offset, offset+len)` is inside the mapping (checked above), `src` is valid
            // for `len` bytes (the caller's promise), and a caller's buffer never lies
            // inside this mapping, which only its engine knows.
            let dst = self.base.as_ptr().wrapping_add(offset as usize);
            // SAFETY: both ranges are valid and disjoint, as said above.
            unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
        }
        fits
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing points into it any more.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
