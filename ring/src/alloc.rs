//! First-fit allocation of page runs in a shared area (the gateway's staging area, a
//! node's data area).

use super::proto::Region;

/// Allocation granule.
pub const PAGE: u64 = 4096;

/// Tracks which pages of an area are in use.
#[derive(Debug)]
pub struct RegionAllocator {
    used: Vec<bool>,
    free_pages: usize,
}

impl RegionAllocator {
    /// An allocator for an area of `bytes` (whole pages only).
    #[inline]
    pub fn new(bytes: u64) -> RegionAllocator {
        let pages = (bytes / PAGE) as usize;
        RegionAllocator { used: vec![false; pages], free_pages: pages }
    }

    /// A run of pages holding `len` bytes (at least one page), or `None` if none is free.
    #[inline]
    pub fn alloc(&mut self, len: u32) -> Option<Region> {
        let need = (u64::from(len).max(1).div_ceil(PAGE)) as usize;
        if need > self.free_pages {
            return None;
        }
        let mut run = 0;
        for i in 0..self.used.len() {
            if self.used[i] {
                run = 0;
                continue;
            }
            run += 1;
            if run == need {
                let first = i + 1 - need;
                self.used[first..=i].fill(true);
                self.free_pages -= need;
                return Some(Region { offset: first as u64 * PAGE, len });
            }
        }
        None
    }

    /// Returns a region from [`RegionAllocator::alloc`].
    #[inline]
    pub fn free(&mut self, r: Region) {
        let first = (r.offset / PAGE) as usize;
        let n = (u64::from(r.len).max(1).div_ceil(PAGE)) as usize;
        let end = (first + n).min(self.used.len());
        for used in &mut self.used[first.min(end)..end] {
            if *used {
                *used = false;
                self.free_pages += 1;
            }
        }
    }

    /// Free bytes.
    #[inline]
    pub fn free_bytes(&self) -> u64 {
        self.free_pages as u64 * PAGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_and_reuse() {
        let mut a = RegionAllocator::new(4 * PAGE);
        let x = a.alloc(100).unwrap();
        let y = a.alloc(2 * PAGE as u32).unwrap();
        assert_eq!((x.offset, y.offset), (0, PAGE));
        assert!(a.alloc(2 * PAGE as u32).is_none());
        a.free(x);
        assert_eq!(a.alloc(PAGE as u32).unwrap().offset, 0);
        assert_eq!(a.free_bytes(), PAGE);
    }
}
