//! Hybrid polling: a poller that keeps running out of time before its work arrives stops
//! polling (but for an occasional probe) until a poll pays again. Polling only pays where
//! the next event comes within the spin; elsewhere (large transfers, a disk image slower
//! than the spin) it burns a core that the work itself needs, which on a small machine
//! is the difference between keeping up and not.

use std::sync::atomic::{AtomicU32, Ordering};

/// Whether polls have been paying. Shared by the threads that poll for one resource.
#[derive(Debug, Default)]
pub struct PollBackoff {
    /// Polls in a row that ran out.
    misses: AtomicU32,
    /// Polls skipped since polling stopped paying.
    skipped: AtomicU32,
}

impl PollBackoff {
    /// Polls in a row that run out before polling is mostly skipped.
    pub const GIVE_UP_AFTER: u32 = 8;
    /// While it is, one poll in this many is still tried, to notice when it pays again.
    pub const PROBE_EVERY: u32 = 64;

    /// Whether to poll now: recent polls paid, or it is time to probe.
    pub fn worth_trying(&self) -> bool {
        self.misses.load(Ordering::Relaxed) < Self::GIVE_UP_AFTER
            || self.skipped.fetch_add(1, Ordering::Relaxed) % Self::PROBE_EVERY == Self::PROBE_EVERY - 1
    }

    /// A poll found its work in time.
    pub fn paid(&self) {
        if self.misses.load(Ordering::Relaxed) != 0 {
            self.misses.store(0, Ordering::Relaxed);
        }
    }

    /// A poll ran out.
    pub fn missed(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_backs_off_after_polls_run_out_and_resumes_once_one_pays() {
        let p = PollBackoff::default();
        for _ in 0..PollBackoff::GIVE_UP_AFTER {
            assert!(p.worth_trying());
            p.missed();
        }
        // Now one poll in PROBE_EVERY is tried.
        let probes = (0..PollBackoff::PROBE_EVERY * 4).filter(|_| p.worth_trying()).count();
        assert_eq!(probes, 4);
        // A probe that pays turns polling back on.
        p.paid();
        assert!((0..PollBackoff::PROBE_EVERY).all(|_| p.worth_trying()));
    }
}
