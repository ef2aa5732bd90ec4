//! A shared, writable mapping of a memory-backed image (tmpfs, ramfs), which writes copy
//! into directly: no system call, no page-cache lookup per 4 KiB page, and no inode lock.
//!
//! On such a filesystem the mapping *is* the file's page cache, so what is copied in is
//! what a `pread` returns, survives the gateway being killed, and has nothing to flush.
//!
//! Only writes use it, and only into pages the file already has:
//! - a write fault on a hole must allocate a page, and on a full tmpfs that fails with
//!   SIGBUS, which would kill the gateway where `pwrite` returns ENOSPC. So a write is
//!   copied in only when every [`GRANULE`] it touches is known to be allocated (learnt
//!   from `mincore` on first touch, forgotten when a range is deallocated); anything
//!   else is written the usual way, which allocates and reports a full filesystem;
//! - a read through the mapping of a hole would allocate it too (a shared mapping of tmpfs
//!   has no zero page), so reads stay `pread`s and a sparse image stays sparse.
//!
//! The file must not shrink, or lose pages, behind the gateway's back: an access past its
//! end raises SIGBUS. The gateway never shrinks an image and maps it again after growing
//! it; an image file truncated or hole-punched by hand while it is served is outside what
//! the gateway defends against, as for any program that maps a file.

use std::fs::File;
use std::io;
use std::ptr::NonNull;

use rustix::mm::{self, MapFlags, ProtFlags};
use shmem::PeerSlice;

/// Allocation is tracked per granule of this many bytes.
pub const GRANULE: u64 = 1 << 20;

/// `len` bytes of a file, mapped shared and writable, with the granules known to be
/// allocated.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: u64,
    /// A bit per granule: set when the file is known to hold every page of it.
    allocated: Vec<u64>,
}

// SAFETY: the mapping belongs to this value alone; it is only written through raw
// pointers by whichever single thread owns the engine at the time.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` shared and writable (`None` for an empty file).
    pub fn new(file: &File, len: u64) -> io::Result<Option<Mapping>> {
        let bytes = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        if bytes == 0 {
            return Ok(None);
        }
        // SAFETY: a fresh shared mapping at an address the kernel picks aliases no memory
        // of this process; it is unmapped only in `drop`.
        let ptr = unsafe {
            mm::mmap(std::ptr::null_mut(), bytes, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, file, 0)
        }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        let granules = len.div_ceil(GRANULE);
        Ok(Some(Mapping { base, len, allocated: vec![0; granules.div_ceil(64) as usize] }))
    }

    fn known(&self, g: u64) -> bool {
        self.allocated[(g / 64) as usize] & (1 << (g % 64)) != 0
    }

    /// Whether granule `g` is allocated, asking the kernel (one `mincore`) if not known yet.
    fn allocated(&mut self, g: u64) -> bool {
        if self.known(g) {
            return true;
        }
        let (start, end) = (g * GRANULE, ((g + 1) * GRANULE).min(self.len));
        let at = self.base.as_ptr().wrapping_add(start as usize);
        let len = (end - start) as usize;
        // A byte per page. For tmpfs, a page is "resident" when the file holds it in
        // memory; holes are not, and neither are pages swapped out, which are then simply
        // written the usual way. (`SEEK_HOLE` would answer too, but scans to the next hole,
        // which in a full image is its end: a whole-file walk per granule.)
        let mut pages = [0u8; (GRANULE / 4096) as usize];
        // SAFETY: `[at, at+len)` lies inside our mapping (page-aligned: the mapping and
        // GRANULE are), and `pages` has a byte for each of its at most GRANULE/4096 pages
        // (the page size is at least 4 KiB).
        let r = unsafe { libc::mincore(at.cast(), len, pages.as_mut_ptr()) };
        let full = r == 0 && pages[..len.div_ceil(rustix::param::page_size())].iter().all(|&p| p & 1 != 0);
        if full {
            self.allocated[(g / 64) as usize] |= 1 << (g % 64);
            // Fill in the granule's page-table entries in one call, rather than a page
            // fault for each page's first write (on a VM, a fault costs more than the
            // `pwrite` this replaces). Every page exists, so nothing is allocated. Advice
            // only: kernels before 5.14 lack it, and writes then fault their pages in.
            // SAFETY: `[at, at+len)` lies inside our mapping; populating changes no contents.
            let _ = unsafe { mm::madvise(at.cast(), len, mm::Advice::LinuxPopulateWrite) };
        }
        full
    }

    /// Forgets what is known of the granules `[offset, offset+len)` touches: the range is
    /// being deallocated.
    pub fn forget(&mut self, offset: u64, len: u64) {
        if len == 0 || offset >= self.len {
            return;
        }
        let last = (offset.saturating_add(len).min(self.len) - 1) / GRANULE;
        for g in offset / GRANULE..=last {
            self.allocated[(g / 64) as usize] &= !(1 << (g % 64));
        }
    }

    /// Copies `src` to `offset` in the file when the range is inside the mapping and every
    /// page of it is allocated; `false` (nothing copied) otherwise. `src` may be memory
    /// another process writes concurrently (a node's data area): the file then gets some
    /// mix of its bytes, as a disk would.
    pub fn write(&mut self, offset: u64, src: PeerSlice<'_>) -> bool {
        let len = src.len();
        let Some(end) = offset.checked_add(len as u64).filter(|&end| end <= self.len) else { return false };
        if len == 0 {
            return true;
        }
        if !(offset / GRANULE..=(end - 1) / GRANULE).all(|g| self.allocated(g)) {
            return false;
        }
        let dst = NonNull::new(self.base.as_ptr().wrapping_add(offset as usize)).expect("inside a mapping");
        // SAFETY: `[offset, end)` is inside the mapping (checked above), which lives as long
        // as `self`, and it is a file's shared pages, which other processes may write: it is
        // reached only through this view, never a reference.
        let file = unsafe { PeerSlice::from_raw(dst, len) };
        file.copy_from_view(0, src).is_ok()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing points into it any more.
        let _ = unsafe { mm::munmap(self.base.as_ptr().cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sys;
    use std::os::unix::fs::FileExt;

    fn tmpfs_file(len: u64) -> Option<(tempfile::TempDir, File)> {
        let dir = tempfile::tempdir_in("/dev/shm").ok()?;
        if rustix::fs::statfs(dir.path()).ok()?.f_type != libc::TMPFS_MAGIC {
            return None;
        }
        let mut opts = std::fs::OpenOptions::new();
        let f = opts.read(true).write(true).create(true).truncate(true).open(dir.path().join("m.img")).ok()?;
        f.set_len(len).ok()?;
        Some((dir, f))
    }

    #[test]
    fn writes_only_into_allocated_granules_and_forgets_punched_ones() {
        let Some((_dir, f)) = tmpfs_file(3 * GRANULE + 4096) else {
            eprintln!("skipping: no tmpfs at /dev/shm");
            return;
        };
        let mut m = Mapping::new(&f, 3 * GRANULE + 4096).unwrap().unwrap();
        let mut data = vec![7u8; 8192];
        let mut write = |offset: u64, len: usize| m.write(offset, PeerSlice::from_mut(&mut data[..len]));
        assert!(!write(4096, 4096), "a hole is never written through the mapping");
        f.write_all_at(&vec![1u8; GRANULE as usize], GRANULE).unwrap();
        assert!(write(GRANULE + 4096, 4096), "an allocated granule is");
        let mut back = [0u8; 4096];
        f.read_exact_at(&mut back, GRANULE + 4096).unwrap();
        assert!(back.iter().all(|&b| b == 7), "the copy is in the file");
        assert!(!write(2 * GRANULE - 4096, 8192), "straddling into a hole");
        assert!(!write(3 * GRANULE, 8192), "past the end");
        // The short last granule counts as allocated once its pages are.
        f.write_all_at(&[2u8; 4096], 3 * GRANULE).unwrap();
        assert!(write(3 * GRANULE, 4096));
        // Punched, a granule is asked about again, and is a hole.
        sys::fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, GRANULE, 4096).unwrap();
        m.forget(GRANULE, 4096);
        let mut write = |offset: u64, len: usize| m.write(offset, PeerSlice::from_mut(&mut data[..len]));
        assert!(!write(GRANULE + 4096, 4096), "the punched granule is not trusted");
    }
}
