//! The kernel's table of service cluster flows ([`crate::fastpath::offload`]): the maps,
//! the classifier that reads them, and what the switch and the service do with them.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use crate::fastpath::offload::{self, COUNTER_LEN, KEY_LEN, VALUE_LEN};
use crate::mac::Mac;
use crate::sys::bpf;

/// Flows the table holds; past that the least recently used go back to the switch.
const MAX_FLOWS: u32 = 65_536;
/// Clusters whose kernel-forwarded packets are counted; later ones are not offloaded.
const MAX_SLOTS: u32 = 4096;

/// The flow table, the per-cluster counters and the classifier.
#[derive(Debug)]
pub struct Flows {
    table: OwnedFd,
    counters: OwnedFd,
    program: OwnedFd,
    /// Counter slots by cluster MAC; a slot is never given to another cluster.
    slots: Mutex<HashMap<Mac, u32>>,
    cpus: usize,
}

impl Flows {
    /// Creates the maps and loads the classifier.
    pub fn new() -> io::Result<Flows> {
        let table = bpf::map_create(bpf::MAP_LRU_HASH, KEY_LEN as u32, VALUE_LEN as u32, MAX_FLOWS)?;
        let counters = bpf::map_create(bpf::MAP_PERCPU_ARRAY, 4, COUNTER_LEN as u32, MAX_SLOTS)?;
        let code = offload::program(table.as_raw_fd(), counters.as_raw_fd());
        let program = bpf::load_sched_cls("pangate_flows", &code)?;
        let cpus = possible_cpus()?;
        Ok(Flows { table, counters, program, slots: Mutex::new(HashMap::new()), cpus })
    }

    /// The classifier, to attach to wires.
    pub(super) fn program(&self) -> &OwnedFd {
        &self.program
    }

    fn slot(&self, cluster: Mac) -> Option<u32> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let n = slots.len() as u32;
        match slots.get(&cluster) {
            Some(&s) => Some(s),
            None if n < MAX_SLOTS => {
                slots.insert(cluster, n);
                Some(n)
            }
            None => None,
        }
    }

    /// The switch relayed `frame`, which came in on wire `from`, to the backend on wire
    /// `to` with MAC `mac`: the kernel takes the rest of its flow. A TCP SYN opens a
    /// connection, which the switch has just picked a backend for, so its entry replaces
    /// any the tuple had; other frames only add one. Frames the kernel does not take are
    /// ignored.
    pub fn relayed(&self, from: u32, to: u32, mac: Mac, frame: &[u8]) {
        let Some((key, syn)) = offload::flow_key(from, frame) else { return };
        let Some(slot) = self.slot(offload::key_cluster(&key)) else { return };
        let value = offload::flow_value(to, mac, slot);
        let r = match bpf::map_update(&self.table, &key, &value, if syn { bpf::ANY } else { bpf::NOEXIST }) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "a cluster flow was not offloaded");
        }
    }

    /// Drops the entries `gone` picks, given (key, entry): their flows go back to the
    /// switch. Returns how many went.
    pub fn forget(&self, mut gone: impl FnMut(&[u8], &[u8]) -> bool) -> usize {
        let mut doomed = Vec::new();
        let mut key = [0u8; KEY_LEN];
        let mut value = [0u8; VALUE_LEN];
        let mut next = [0u8; KEY_LEN];
        let mut first = true;
        // Bounded: the table holds at most MAX_FLOWS keys.
        for _ in 0..=MAX_FLOWS {
            let more = bpf::map_next_key(&self.table, (!first).then_some(&key[..]), &mut next).unwrap_or(false);
            if !more {
                break;
            }
            first = false;
            key = next;
            if bpf::map_lookup(&self.table, &key, &mut value).unwrap_or(false) && gone(&key, &value) {
                doomed.push(key);
            }
        }
        for k in &doomed {
            let _ = bpf::map_delete(&self.table, k);
        }
        doomed.len()
    }

    /// Drops the flows of cluster `cluster` (all, or only those to the backends on `wires`).
    pub fn forget_cluster(&self, cluster: Mac, wires: Option<&[u32]>) -> usize {
        self.forget(|k, v| {
            offload::key_cluster(k) == cluster && wires.is_none_or(|w| w.contains(&offload::value_wire(v)))
        })
    }

    /// Drops every flow from or to wire `wire`.
    pub fn forget_wire(&self, wire: u32) -> usize {
        self.forget(|k, v| offload::key_wire(k) == wire || offload::value_wire(v) == wire)
    }

    /// Drops the flows idle longer than their protocol's timeout.
    pub fn expire(&self, tcp_idle: Duration, udp_idle: Duration) -> usize {
        let now = monotonic_ns();
        self.forget(|k, v| {
            let idle = if offload::key_is_tcp(k) { tcp_idle } else { udp_idle };
            let last = offload::value_last(v);
            last != 0 && now.saturating_sub(last) > idle.as_nanos() as u64
        })
    }

    /// Packets and bytes the kernel forwarded for cluster `cluster`.
    pub fn counted(&self, cluster: Mac) -> (u64, u64) {
        let Some(&slot) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&cluster) else { return (0, 0) };
        let mut values = vec![0u8; COUNTER_LEN * self.cpus];
        if !bpf::map_lookup(&self.counters, &slot.to_ne_bytes(), &mut values).unwrap_or(false) {
            return (0, 0);
        }
        values.chunks_exact(COUNTER_LEN).fold((0, 0), |(p, b), c| {
            let n = |i: usize| u64::from_ne_bytes(c[i..i + 8].try_into().unwrap_or([0; 8]));
            (p + n(0), b + n(8))
        })
    }
}

/// CPUs the kernel may run (per-CPU maps hold a value for each).
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for range in text.trim().split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (_, last): (usize, usize) = (a.parse().map_err(io::Error::other)?, b.parse().map_err(io::Error::other)?);
        n = n.max(last + 1);
    }
    Ok(n.max(1))
}

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
