//! Per-port and per-LAN counters. The switch bumps them on its own thread; anyone may read
//! them at any time (`pangate net show`, the metrics endpoint) without locking.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A counter with one writer. Bumping is a relaxed load and store, not a locked
/// read-modify-write, because only the switch thread that owns it ever writes it.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning switch thread calls this.
    #[inline]
    pub fn bump(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Raises the value to `v` if it is below. Only the owning switch thread calls this.
    #[inline]
    pub fn raise_to(&self, v: u64) {
        if v > self.0.load(Ordering::Relaxed) {
            self.0.store(v, Ordering::Relaxed);
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why the switch dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than an Ethernet header, or a header that does not parse.
    Malformed,
    /// Larger than the LAN's MTU.
    Mtu,
    /// Source MAC is not the sending port's.
    MacSpoof,
    /// ARP sender MAC or IP is not the sending port's.
    ArpSpoof,
    /// IP source address is not registered to the sending port.
    IpSpoof,
    /// A port sent an 802.1Q-tagged frame; ports are access ports.
    Tagged,
    /// Unicast to a MAC (or, on a filtered uplink, an IP) that no member owns.
    UnknownDestination,
    /// The destination port exists but nothing is attached to it.
    PortDown,
    /// The destination could not take the frame (its ring was full, or the write failed).
    TxFailed,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::Mtu,
        DropReason::MacSpoof,
        DropReason::ArpSpoof,
        DropReason::IpSpoof,
        DropReason::Tagged,
        DropReason::UnknownDestination,
        DropReason::PortDown,
        DropReason::TxFailed,
    ];

    /// The reason's label, as in metrics and `net show`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Mtu => "mtu",
            DropReason::MacSpoof => "mac_spoof",
            DropReason::ArpSpoof => "arp_spoof",
            DropReason::IpSpoof => "ip_spoof",
            DropReason::Tagged => "tagged",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::PortDown => "port_down",
            DropReason::TxFailed => "tx_failed",
        }
    }
}

/// Frames and bytes in each direction and drops by reason, for a port or a whole LAN.
/// "In" is toward the switch (sent by the port), "out" is from the switch to the port.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Frames received from the port (or, for a LAN, from any member or the uplink).
    pub frames_in: Counter,
    /// Bytes of those frames.
    pub bytes_in: Counter,
    /// Frames delivered to the port.
    pub frames_out: Counter,
    /// Bytes of those frames.
    pub bytes_out: Counter,
    /// The largest packet (Ethernet payload) dropped for exceeding the MTU.
    pub largest_oversize: Counter,
    drops: [Counter; DropReason::ALL.len()],
}

impl Traffic {
    /// Counts a dropped frame.
    #[inline]
    pub fn count_drop(&self, why: DropReason) {
        self.drops[why as usize].bump(1);
    }

    /// Frames dropped for `why`.
    pub fn drops(&self, why: DropReason) -> u64 {
        self.drops[why as usize].get()
    }

    /// A copy of every figure, for reports.
    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            frames_in: self.frames_in.get(),
            bytes_in: self.bytes_in.get(),
            frames_out: self.frames_out.get(),
            bytes_out: self.bytes_out.get(),
            drops: DropReason::ALL.iter().map(|&d| (d.label().to_string(), self.drops(d))).collect(),
            largest_oversize: self.largest_oversize.get(),
        }
    }
}

/// A point-in-time copy of [`Traffic`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TrafficSnapshot {
    /// Frames received from the port.
    pub frames_in: u64,
    /// Bytes received from the port.
    pub bytes_in: u64,
    /// Frames delivered to the port.
    pub frames_out: u64,
    /// Bytes delivered to the port.
    pub bytes_out: u64,
    /// Drops by reason label.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// The largest packet dropped for exceeding the MTU (0: none).
    #[serde(default)]
    pub largest_oversize: u64,
}

/// The sum of the counters of every data-path worker's copy of a port or LAN (each worker
/// writes its own; they are added up only here, when someone reads them).
pub fn sum(copies: &[std::sync::Arc<Traffic>]) -> TrafficSnapshot {
    let mut total = TrafficSnapshot::default();
    for s in copies.iter().map(|t| t.snapshot()) {
        total.frames_in += s.frames_in;
        total.bytes_in += s.bytes_in;
        total.frames_out += s.frames_out;
        total.bytes_out += s.bytes_out;
        for (reason, n) in s.drops {
            *total.drops.entry(reason).or_default() += n;
        }
        total.largest_oversize = total.largest_oversize.max(s.largest_oversize);
    }
    total
}
