//! Hybrid polling: a poller that keeps running out of time before its work arrives stops
//! polling (but for an occasional probe) until a poll pays again. Polling only pays where
//! the next event comes within the spin; elsewhere (large transfers, a disk image slower
//! than the spin) it burns a core that the work itself needs, which on a small machine
//! is the difference between keeping up and not.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
    #[inline]
    pub fn worth_trying(&self) -> bool {
        self.misses.load(Ordering::Relaxed) < Self::GIVE_UP_AFTER
            || self.skipped.fetch_add(1, Ordering::Relaxed) % Self::PROBE_EVERY == Self::PROBE_EVERY - 1
    }

    /// How long to poll in an idle spell that starts now: `spin`, unless polls have
    /// stopped paying (and this is not a probe), or the poller waits on I/O that will
    /// wake it when it finishes (`io_wakes`). There the next work mostly follows that
    /// completion, and a polling core is one the kernel no longer has for finishing the
    /// I/O. Such a spell does not count as a skipped poll.
    #[inline]
    pub fn spin_for(&self, spin: Duration, io_wakes: bool) -> Duration {
        if !io_wakes && self.worth_trying() {
            spin
        } else {
            Duration::ZERO
        }
    }

    /// A poll found its work in time.
    #[inline]
    pub fn paid(&self) {
        if self.misses.load(Ordering::Relaxed) != 0 {
            self.misses.store(0, Ordering::Relaxed);
        }
    }

    /// A poll ran out.
    #[inline]
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

    #[test]
    fn no_spin_while_waiting_on_io_that_wakes_the_poller_and_no_probe_is_used_up() {
        let spin = Duration::from_micros(50);
        let p = PollBackoff::default();
        assert_eq!(p.spin_for(spin, false), spin);
        assert_eq!(p.spin_for(spin, true), Duration::ZERO);
        for _ in 0..PollBackoff::GIVE_UP_AFTER {
            p.missed();
        }
        // Backed off: spells waiting on I/O neither spin nor count towards the next probe,
        // so the probe is the PROBE_EVERY-th idle spell that could have spun.
        for _ in 0..PollBackoff::PROBE_EVERY * 3 / 2 {
            assert_eq!(p.spin_for(spin, true), Duration::ZERO);
        }
        let spun: Vec<bool> = (0..PollBackoff::PROBE_EVERY).map(|_| p.spin_for(spin, false) == spin).collect();
        assert_eq!(spun.iter().position(|&s| s), Some(PollBackoff::PROBE_EVERY as usize - 1), "{spun:?}");
    }
}
