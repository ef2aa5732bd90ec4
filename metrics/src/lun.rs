//! Per-LUN statistics: the source document's per-device figures (operations, bytes, reads,
//! writes, time with I/O in progress) plus opcodes, statuses and a latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency histogram's buckets, in seconds: 5 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 20] = [
    5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds in nanoseconds, for recording without floating point.
const BUCKET_NS: [u64; 20] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// SCSI status bytes pangate answers with, in the order of [`LunStats`]' status counters.
const STATUSES: [(u8, &str); 6] = [
    (0x00, "good"),
    (0x02, "check_condition"),
    (0x08, "busy"),
    (0x18, "reservation_conflict"),
    (0x28, "task_set_full"),
    (0x40, "task_aborted"),
];

/// A latency histogram of atomic buckets (not cumulative; the renderer sums them).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 21],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    #[inline]
    pub fn observe_ns(&self, ns: u64) {
        // The first bound at or above `ns` (the +Inf bucket past them all). A scan from the
        // bottom: I/O latencies sit in the first few buckets, where it ends after a few
        // well-predicted compares, which a binary search's unpredictable ones cost more.
        let i = BUCKET_NS.iter().position(|&b| b >= ns).unwrap_or(BUCKET_NS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// (cumulative counts per bound of [`LATENCY_BUCKETS`], count, sum in seconds).
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut acc = 0;
        let mut cumulative = Vec::with_capacity(BUCKET_NS.len());
        for b in &self.buckets[..BUCKET_NS.len()] {
            acc += b.load(Relaxed);
            cumulative.push(acc);
        }
        let count = acc + self.buckets[BUCKET_NS.len()].load(Relaxed);
        (cumulative, count, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// Counters of one (pan, node, target, LUN). One thread records (the worker that owns the
/// node's queue pairs); any thread may read.
#[derive(Debug)]
pub struct LunStats {
    opcodes: Box<[AtomicU64; 256]>,
    statuses: [AtomicU64; STATUSES.len() + 1],
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    in_flight: AtomicU64,
    busy_since_ns: AtomicU64,
    busy_ns: AtomicU64,
    latency: LatencyHistogram,
}

impl Default for LunStats {
    fn default() -> LunStats {
        LunStats {
            opcodes: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            statuses: Default::default(),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            busy_since_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            latency: LatencyHistogram::default(),
        }
    }
}

/// What a command did, for [`LunStats::finished`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transfer {
    /// Neither read nor wrote the medium.
    #[default]
    None,
    /// Read this many bytes from the medium.
    Read(u64),
    /// Wrote this many bytes to the medium.
    Written(u64),
}

impl LunStats {
    /// A command went to the backend at `now_ns` ([`crate::now_ns`]).
    #[inline]
    pub fn started(&self, now_ns: u64) {
        if self.in_flight.fetch_add(1, Relaxed) == 0 {
            self.busy_since_ns.store(now_ns, Relaxed);
        }
    }

    /// A command that [`started`](Self::started) at `started_ns` completed at `now_ns`.
    #[inline]
    pub fn finished(&self, opcode: u8, status: u8, transfer: Transfer, started_ns: u64, now_ns: u64) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            let since = self.busy_since_ns.load(Relaxed);
            self.busy_ns.fetch_add(now_ns.saturating_sub(since), Relaxed);
        }
        self.latency.observe_ns(now_ns.saturating_sub(started_ns));
        self.answered(opcode, status, transfer);
    }

    /// A command answered without going to the backend (write-protected, busy, reported
    /// by the gateway itself), or the tail of [`finished`](Self::finished).
    #[inline]
    pub fn answered(&self, opcode: u8, status: u8, transfer: Transfer) {
        self.opcodes[usize::from(opcode)].fetch_add(1, Relaxed);
        let s = STATUSES.iter().position(|&(b, _)| b == status).unwrap_or(STATUSES.len());
        self.statuses[s].fetch_add(1, Relaxed);
        match transfer {
            Transfer::None => {}
            Transfer::Read(n) => {
                self.reads.fetch_add(1, Relaxed);
                self.bytes_read.fetch_add(n, Relaxed);
            }
            Transfer::Written(n) => {
                self.writes.fetch_add(1, Relaxed);
                self.bytes_written.fetch_add(n, Relaxed);
            }
        }
    }

    /// A copy of every figure as of `now_ns`.
    pub fn snapshot(&self, now_ns: u64) -> LunSnapshot {
        let in_flight = self.in_flight.load(Relaxed);
        let mut busy = self.busy_ns.load(Relaxed);
        if in_flight > 0 {
            busy += now_ns.saturating_sub(self.busy_since_ns.load(Relaxed));
        }
        let opcodes =
            (0..=255u8).filter_map(|op| Some((op, self.opcodes[usize::from(op)].load(Relaxed))).filter(|x| x.1 > 0));
        let mut statuses: Vec<(String, u64)> = Vec::new();
        for (i, c) in self.statuses.iter().enumerate() {
            let n = c.load(Relaxed);
            if n > 0 {
                statuses.push((STATUSES.get(i).map_or("other", |s| s.1).to_string(), n));
            }
        }
        let (buckets, count, sum) = self.latency.snapshot();
        LunSnapshot {
            opcodes: opcodes.collect(),
            statuses,
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            in_flight,
            busy_seconds: busy as f64 / 1e9,
            latency_buckets: buckets,
            latency_count: count,
            latency_sum_seconds: sum,
        }
    }
}

/// A point-in-time copy of [`LunStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LunSnapshot {
    /// Commands by opcode (only opcodes seen).
    pub opcodes: Vec<(u8, u64)>,
    /// Commands by status name (only statuses seen).
    pub statuses: Vec<(String, u64)>,
    /// Commands that read the medium.
    pub reads: u64,
    /// Commands that wrote the medium.
    pub writes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Commands with the backend now.
    pub in_flight: u64,
    /// Seconds with at least one command with the backend.
    pub busy_seconds: f64,
    /// Cumulative latency counts per bound of [`LATENCY_BUCKETS`].
    pub latency_buckets: Vec<u64>,
    /// Commands timed.
    pub latency_count: u64,
    /// Their total latency.
    pub latency_sum_seconds: f64,
}

impl LunSnapshot {
    /// Commands of every opcode.
    pub fn commands(&self) -> u64 {
        self.opcodes.iter().map(|o| o.1).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_counts_only_while_something_is_in_flight() {
        let s = LunStats::default();
        s.started(1_000);
        s.started(2_000);
        s.finished(0x28, 0, Transfer::Read(4096), 1_000, 5_000);
        assert_eq!(s.snapshot(6_000).busy_seconds, 5_000e-9, "still busy at 6 µs");
        s.finished(0x2a, 0, Transfer::Written(512), 2_000, 7_000);
        s.started(100_000);
        s.finished(0x35, 2, Transfer::None, 100_000, 101_000);
        let snap = s.snapshot(1_000_000);
        assert_eq!(snap.busy_seconds, 7_000e-9);
        assert_eq!((snap.reads, snap.writes, snap.bytes_read, snap.bytes_written), (1, 1, 4096, 512));
        assert_eq!(snap.opcodes, vec![(0x28, 1), (0x2a, 1), (0x35, 1)]);
        assert_eq!(snap.statuses, vec![("good".to_string(), 2), ("check_condition".to_string(), 1)]);
        assert_eq!(snap.in_flight, 0);
    }

    #[test]
    fn latencies_land_in_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe_ns(5_000); // exactly on the first bound: le=5e-6 holds it
        h.observe_ns(7_000);
        h.observe_ns(20_000_000_000); // past the last bound: only +Inf
        let (b, count, sum) = h.snapshot();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 2);
        assert_eq!(*b.last().unwrap(), 2);
        assert_eq!(count, 3);
        assert!((sum - 20.000012).abs() < 1e-9);
    }
}
