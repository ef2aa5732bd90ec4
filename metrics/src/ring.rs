//! Per-node ring statistics, summed over the node's queue pairs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Counters of one node's ring connections. The worker records; any thread reads.
#[derive(Debug, Default)]
pub struct RingStats {
    connections: AtomicU64,
    outstanding: AtomicU64,
    doorbells_rung: AtomicU64,
    doorbells_avoided: AtomicU64,
    /// Rare (a connection closes at most once), so a lock is fine here.
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl RingStats {
    /// A queue pair connected.
    pub fn connected(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// A queue pair closed with `outstanding` commands still counted against it.
    pub fn disconnected(&self, outstanding: u64) {
        self.connections.fetch_sub(1, Relaxed);
        self.outstanding.fetch_sub(outstanding, Relaxed);
    }

    /// The queue pair's commands accepted and not yet answered went from `was` to `now`
    /// (reported once per batch rather than per command).
    #[inline]
    pub fn outstanding_moved(&self, was: u64, now: u64) {
        self.outstanding.fetch_add(now.wrapping_sub(was), Relaxed);
    }

    /// The gateway rang (true) or did not need to ring (false) the node's doorbell.
    #[inline]
    pub fn doorbell(&self, rung: bool) {
        if rung { &self.doorbells_rung } else { &self.doorbells_avoided }.fetch_add(1, Relaxed);
    }

    /// A queue pair was closed for breaking the protocol; `reason` is a short label.
    pub fn protocol_error(&self, reason: &'static str) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    /// A copy of every figure.
    pub fn snapshot(&self) -> RingSnapshot {
        RingSnapshot {
            connections: self.connections.load(Relaxed),
            outstanding: self.outstanding.load(Relaxed),
            doorbells_rung: self.doorbells_rung.load(Relaxed),
            doorbells_avoided: self.doorbells_avoided.load(Relaxed),
            protocol_errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }
}

/// A point-in-time copy of [`RingStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingSnapshot {
    /// Queue pairs open.
    pub connections: u64,
    /// Commands accepted and not yet answered.
    pub outstanding: u64,
    /// Doorbells rung.
    pub doorbells_rung: u64,
    /// Doorbells not rung because the node was polling.
    pub doorbells_avoided: u64,
    /// Queue pairs closed for protocol errors, by reason.
    pub protocol_errors: Vec<(String, u64)>,
}
