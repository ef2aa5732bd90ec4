//! Block-range locks that make COMPARE AND WRITE atomic against overlapping writes.
//!
//! Pure bookkeeping: the transport asks for a lock before a task's first step, parks the
//! task when it is refused, and retries parked tasks in arrival order when a lock is
//! released. A request that overlaps a parked one is refused too, so an exclusive waiter is
//! never starved by a stream of shared holders.

use crate::task::{LockMode, LockRequest};

/// Identifies a granted lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockId(u64);

/// The locks held on one logical unit.
#[derive(Debug, Default)]
pub struct RangeLocks {
    held: Vec<(LockId, LockRequest)>,
    next: u64,
}

fn overlaps(a: &LockRequest, b: &LockRequest) -> bool {
    a.start < b.end && b.start < a.end
}

fn conflicts(a: &LockRequest, b: &LockRequest) -> bool {
    overlaps(a, b) && (a.mode == LockMode::Exclusive || b.mode == LockMode::Exclusive)
}

impl RangeLocks {
    /// No locks held.
    pub fn new() -> RangeLocks {
        RangeLocks::default()
    }

    /// Grants `req` unless it conflicts with a held lock or overlaps one of `waiting`.
    pub fn try_lock<'a>(
        &mut self,
        req: LockRequest,
        waiting: impl IntoIterator<Item = &'a LockRequest>,
    ) -> Option<LockId> {
        if self.held.iter().any(|(_, h)| conflicts(h, &req)) {
            return None;
        }
        if waiting
            .into_iter()
            .any(|w| overlaps(w, &req) && (w.mode == LockMode::Exclusive || req.mode == LockMode::Exclusive))
        {
            return None;
        }
        let id = LockId(self.next);
        self.next += 1;
        self.held.push((id, req));
        Some(id)
    }

    /// Releases a granted lock.
    pub fn unlock(&mut self, id: LockId) {
        self.held.retain(|(h, _)| *h != id);
    }

    /// Number of locks held.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(start: u64, end: u64, mode: LockMode) -> LockRequest {
        LockRequest { start, end, mode }
    }

    #[test]
    fn shared_locks_overlap_exclusive_does_not() {
        let mut l = RangeLocks::new();
        let a = l.try_lock(req(0, 10, LockMode::Shared), []).unwrap();
        assert!(l.try_lock(req(5, 15, LockMode::Shared), []).is_some());
        assert!(l.try_lock(req(9, 12, LockMode::Exclusive), []).is_none());
        assert!(l.try_lock(req(20, 22, LockMode::Exclusive), []).is_some());
        l.unlock(a);
        assert_eq!(l.held(), 2);
    }

    #[test]
    fn waiting_exclusive_blocks_new_shared() {
        let mut l = RangeLocks::new();
        let waiting = [req(0, 4, LockMode::Exclusive)];
        assert!(l.try_lock(req(2, 3, LockMode::Shared), &waiting).is_none());
        assert!(l.try_lock(req(4, 8, LockMode::Shared), &waiting).is_some());
    }
}
