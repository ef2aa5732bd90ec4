//! Where a FUSE ring queue's thread runs. The kernel gives a request to the ring queue of
//! the CPU its process runs on, so a queue's thread bound to that CPU is woken, and wakes
//! the process back, without an interrupt to the other CPU: at queue depth 1 that took
//! 4 KiB latency from about 20 µs to 15 µs on a 2-vCPU VM. Under load the binding costs
//! more than it saves: the process and the threads serving it then share one core while
//! the other idles (QD32 0.85-0.95 of unbound). So a thread stays bound while it holds
//! at most one request at a time, and lets the scheduler place it once it holds more;
//! [`Placement`] decides, once per window, from the most it held. A free thread waits for
//! at most a window, so one that no longer gets requests is bound again too.

use std::time::{Duration, Instant};

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// How long a thread's load is watched before its binding may change.
pub const WINDOW: Duration = Duration::from_millis(50);

/// The binding decision for one ring queue's thread. Sans-IO: the thread reports what it
/// holds before each wait and applies what this returns.
#[derive(Debug)]
pub struct Placement {
    bound: bool,
    since: Instant,
    /// The most requests the thread held at once in this window.
    most: usize,
}

impl Placement {
    /// A thread that starts bound (`bound`) or free, at `now`.
    pub fn new(bound: bool, now: Instant) -> Placement {
        Placement { bound, since: now, most: 0 }
    }

    /// Whether the thread is bound to its queue's CPU now.
    pub fn bound(&self) -> bool {
        self.bound
    }

    /// The thread holds `held` requests (handed to it and not yet answered) as it goes to
    /// wait at `now`. Returns the binding it should switch to, once a window has passed
    /// with a load that calls for the other one: bound after a window in which it never
    /// held more than one, free after one in which it did.
    pub fn observe(&mut self, held: usize, now: Instant) -> Option<bool> {
        self.most = self.most.max(held);
        if now.saturating_duration_since(self.since) < WINDOW {
            return None;
        }
        let want = self.most <= 1;
        self.since = now;
        self.most = held;
        (want != self.bound).then(|| {
            self.bound = want;
            want
        })
    }
}

/// The CPUs the calling thread may run on now, to go back to when it is freed.
pub fn allowed() -> Option<CpuSet> {
    sched_getaffinity(None).ok()
}

/// Binds the calling thread to `cpu`, if it is among `allowed`; says whether it did.
pub fn bind(cpu: usize, allowed: &CpuSet) -> bool {
    if cpu >= CpuSet::MAX_CPU || !allowed.is_set(cpu) {
        return false;
    }
    let mut only = CpuSet::new();
    only.set(cpu);
    match sched_setaffinity(None, &only) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(cpu, error = %e, "cannot bind a FUSE ring thread to its queue's CPU");
            false
        }
    }
}

/// Lets the calling thread run on every CPU of `allowed` again.
pub fn free(allowed: &CpuSet) {
    if let Err(e) = sched_setaffinity(None, allowed) {
        tracing::debug!(error = %e, "cannot free a FUSE ring thread from its queue's CPU");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bound_at_depth_one_and_is_freed_only_after_a_window_of_more() {
        let t0 = Instant::now();
        let mut p = Placement::new(true, t0);
        for ms in (0..=200).step_by(10) {
            assert_eq!(p.observe(ms / 10 % 2, t0 + Duration::from_millis(ms as u64)), None, "depth 1 keeps it bound");
        }
        // Two held once: nothing changes until the window it fell in has passed.
        assert_eq!(p.observe(2, t0 + Duration::from_millis(201)), None);
        assert_eq!(p.observe(0, t0 + Duration::from_millis(230)), None);
        assert_eq!(p.observe(0, t0 + Duration::from_millis(251)), Some(false));
        assert!(!p.bound());
    }

    #[test]
    fn a_freed_thread_is_bound_again_after_a_whole_window_of_depth_one() {
        let t0 = Instant::now();
        let mut p = Placement::new(false, t0);
        assert_eq!(p.observe(8, t0), None);
        assert_eq!(p.observe(0, t0 + WINDOW), None, "the window held 8: stays free");
        assert_eq!(p.observe(1, t0 + WINDOW + Duration::from_millis(10)), None);
        assert_eq!(p.observe(1, t0 + WINDOW * 2), Some(true));
        assert!(p.bound());
        assert_eq!(p.observe(1, t0 + WINDOW * 3), None, "no change asked twice");
    }

    #[test]
    fn a_window_starts_with_what_is_held_when_it_opens() {
        let t0 = Instant::now();
        let mut p = Placement::new(true, t0);
        // Still holding 4 as a window ends: that counts for the next one too.
        assert_eq!(p.observe(4, t0 + WINDOW), Some(false));
        assert_eq!(p.observe(0, t0 + WINDOW * 2), None);
        assert_eq!(p.observe(0, t0 + WINDOW * 3), Some(true));
    }
}
