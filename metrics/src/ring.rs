//! Per-node ring statistics, summed over the node's queue pairs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::events::{EventLog, Level};

/// A node that connects again within this long of its last queue pair closing has
/// reconnected (a gateway restart, a link's retry), and the event says so.
const RECONNECT_WINDOW_MS: u64 = 60_000;

/// Counters of one node's ring connections. The worker records; any thread reads.
#[derive(Debug, Default)]
pub struct RingStats {
    /// `<pan>/<node>`, the subject of its events.
    subject: String,
    events: Arc<EventLog>,
    /// When its last queue pair closed (ms since the Unix epoch; 0: never).
    last_closed_ms: AtomicU64,
    connections: AtomicU64,
    outstanding: AtomicU64,
    doorbells_rung: AtomicU64,
    doorbells_avoided: AtomicU64,
    /// Rare (a connection closes at most once), so a lock is fine here.
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl RingStats {
    /// The counters of node `subject` (`<pan>/<node>`), recording its events in `events`.
    pub fn new(subject: String, events: Arc<EventLog>) -> RingStats {
        RingStats { subject, events, ..RingStats::default() }
    }

    /// A queue pair connected.
    pub fn connected(&self) {
        let open = self.connections.fetch_add(1, Relaxed) + 1;
        let closed = self.last_closed_ms.load(Relaxed);
        let now = unix_ms();
        match closed {
            c if c != 0 && now.saturating_sub(c) <= RECONNECT_WINDOW_MS => self.events.record(
                Level::Info,
                "node_reconnected",
                self.subject.as_str(),
                format!("queue pair opened {:.1} s after one closed ({open} open)", now.saturating_sub(c) as f64 / 1e3),
            ),
            _ => self.events.record(
                Level::Info,
                "node_connected",
                self.subject.as_str(),
                format!("queue pair opened ({open} open)"),
            ),
        }
    }

    /// A queue pair closed with `outstanding` commands still counted against it.
    pub fn disconnected(&self, outstanding: u64) {
        let open = self.connections.fetch_sub(1, Relaxed).saturating_sub(1);
        self.outstanding.fetch_sub(outstanding, Relaxed);
        self.last_closed_ms.store(unix_ms(), Relaxed);
        self.events.record(
            Level::Info,
            "node_disconnected",
            self.subject.as_str(),
            format!("queue pair closed ({open} open)"),
        );
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
        self.events.record(
            Level::Warning,
            "protocol_error",
            self.subject.as_str(),
            format!("queue pair closed for a protocol error: {reason}"),
        );
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

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
