//! The set of everything pangate counts, keyed by what it belongs to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::events::{EventLog, Level};
use crate::{LunSnapshot, LunStats, RingSnapshot, RingStats};

/// What a set of LUN counters belongs to: a LUN (an image of a PAN), and with per-node
/// metrics on, one node's map entry of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LunKey {
    /// PAN.
    pub pan: String,
    /// The LUN's name (the image's).
    pub lun: String,
    /// The node and the address it maps the LUN at, for a per-node breakdown.
    pub node: Option<NodeLun>,
}

/// A node's map entry of a LUN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeLun {
    /// Node.
    pub node: String,
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN number.
    pub lun: u16,
}

impl LunKey {
    /// The counters of LUN `lun` of `pan`, summed over every node.
    pub fn of_lun(pan: &str, lun: &str) -> LunKey {
        LunKey { pan: pan.to_string(), lun: lun.to_string(), node: None }
    }

    /// The counters of one node's map entry (`target`, `number`) of LUN `lun`.
    pub fn of_node(pan: &str, lun: &str, node: &str, target: u16, number: u16) -> LunKey {
        LunKey { node: Some(NodeLun { node: node.to_string(), target, lun: number }), ..LunKey::of_lun(pan, lun) }
    }
}

/// Frames and bytes each way and drops by reason, as netvirt counts them ("in" is toward
/// the switch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficSample {
    /// Frames into the switch.
    pub frames_in: u64,
    /// Bytes into the switch.
    pub bytes_in: u64,
    /// Frames out of the switch.
    pub frames_out: u64,
    /// Bytes out of the switch.
    pub bytes_out: u64,
    /// Drops by reason.
    pub drops: Vec<(String, u64)>,
}

/// One port (or the uplink) of a LAN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSample {
    /// The node's name, or `uplink`.
    pub port: String,
    /// Its counters.
    pub traffic: TrafficSample,
}

/// One LAN, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanSample {
    /// PAN.
    pub pan: String,
    /// LAN.
    pub lan: String,
    /// IP-to-port bindings of its ARP server.
    pub arp_entries: u64,
    /// Everything on the LAN.
    pub traffic: TrafficSample,
    /// Ports and uplink.
    pub ports: Vec<PortSample>,
    /// Service clusters.
    pub clusters: Vec<ClusterSample>,
}

/// One service cluster of a LAN, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSample {
    /// Cluster name.
    pub cluster: String,
    /// Flows in its connection table.
    pub flows: u64,
    /// Flows evicted from a full table.
    pub evicted: u64,
    /// Packets relayed to backends.
    pub forwarded: u64,
    /// Flows that picked a backend.
    pub new_flows: u64,
    /// Echo requests answered.
    pub echo_replies: u64,
    /// Packets dropped, by reason.
    pub drops: Vec<(String, u64)>,
    /// (protocol, port, node, state) of every backend: state is up, draining or down.
    pub backends: Vec<(String, u16, String, String)>,
}

/// Reads the LANs' counters when a scrape asks for them.
pub type LanSampler = Box<dyn Fn() -> Vec<LanSample> + Send + Sync>;

/// One iSCSI portal, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalSample {
    /// `address:port`.
    pub portal: String,
    /// Sessions now, by kind (normal, discovery).
    pub sessions: Vec<(String, u64)>,
    /// Logins by result.
    pub logins: Vec<(String, u64)>,
    /// PDUs received, by opcode.
    pub pdus: Vec<(String, u64)>,
    /// Connections ended by an error (digest, protocol, timeout), by reason.
    pub errors: Vec<(String, u64)>,
    /// Connections closed at accept: the gateway held its maximum.
    pub refused_connections: u64,
}

/// Reads the iSCSI portals' counters when a scrape asks for them.
pub type IscsiSampler = Box<dyn Fn() -> Vec<PortalSample> + Send + Sync>;

/// Every metric of one gateway. Recorders get `Arc`s to their own counters once (at
/// connect time) and bump atomics from then on; the maps here are touched only then and
/// at scrape time.
pub struct Metrics {
    luns: Mutex<BTreeMap<LunKey, Arc<LunStats>>>,
    rings: Mutex<BTreeMap<(String, String), Arc<RingStats>>>,
    lans: OnceLock<LanSampler>,
    iscsi: OnceLock<IscsiSampler>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Failovers by (PAN, trigger, outcome).
    failovers: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    events: Arc<EventLog>,
    /// Queue pairs open per `pangate mount` process (by pid): the FUSE mounts seen.
    fuse_mounts: Arc<Mutex<BTreeMap<u32, u64>>>,
    per_node: bool,
    opcode_name: fn(u8) -> Option<&'static str>,
    version: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("version", &self.version).finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty set; `opcode_name` labels commands, `version` goes into the build info.
    pub fn new(opcode_name: fn(u8) -> Option<&'static str>, version: &'static str) -> Metrics {
        Metrics {
            luns: Mutex::default(),
            rings: Mutex::default(),
            lans: OnceLock::new(),
            iscsi: OnceLock::new(),
            refused: Mutex::default(),
            failovers: Mutex::default(),
            events: Arc::default(),
            fuse_mounts: Arc::default(),
            per_node: false,
            opcode_name,
            version,
        }
    }

    /// Breaks LUN counters down by node (one set per node and map entry) instead of one
    /// set per LUN. Off by default: series then grow with LUNs, not with node×LUN pairs.
    pub fn with_per_node(mut self, per_node: bool) -> Metrics {
        self.per_node = per_node;
        self
    }

    /// Whether LUN counters are kept per node.
    pub fn per_node(&self) -> bool {
        self.per_node
    }

    /// The counters a node's map entry (`target`, `number`) of LUN `lun` counts into: the
    /// LUN's own, or with per-node metrics the entry's. Created on first use.
    pub fn lun_for(&self, pan: &str, lun: &str, node: &str, target: u16, number: u16) -> Arc<LunStats> {
        if self.per_node {
            self.lun(LunKey::of_node(pan, lun, node, target, number))
        } else {
            self.lun(LunKey::of_lun(pan, lun))
        }
    }

    /// The counters of a LUN (or a node's entry of it), created on first use.
    pub fn lun(&self, key: LunKey) -> Arc<LunStats> {
        self.luns.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
    }

    /// Forgets a LUN's counters (its map entry was removed).
    pub fn remove_lun(&self, key: &LunKey) {
        self.luns.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// The ring counters of a node, created on first use.
    pub fn ring(&self, pan: &str, node: &str) -> Arc<RingStats> {
        let key = (pan.to_string(), node.to_string());
        let events = &self.events;
        self.rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(RingStats::new(format!("{pan}/{node}"), events.clone())))
            .clone()
    }

    /// The recent events (nodes connecting and going, protocol errors, refused handshakes,
    /// failovers, and what the gateway records itself).
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The event log, for a recorder that keeps it (the iSCSI target).
    pub fn event_log(&self) -> Arc<EventLog> {
        self.events.clone()
    }

    /// Counts a refused handshake, by a fixed `reason` label (never by the node it named,
    /// which could be anything).
    pub fn handshake_refused(&self, reason: &'static str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
        self.events.record(Level::Warning, "handshake_refused", "ring", format!("a handshake was refused: {reason}"));
    }

    /// Refused handshakes by reason.
    pub fn handshakes_refused(&self) -> Vec<(&'static str, u64)> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(&r, &n)| (r, n)).collect()
    }

    /// Counts a failover in `pan`: `trigger` is `manual` or `auto`, `outcome` `done` or
    /// `failed`.
    pub fn failover(&self, pan: &str, trigger: &'static str, outcome: &'static str) {
        *self
            .failovers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((pan.to_string(), trigger, outcome))
            .or_default() += 1;
        let (level, what) = if outcome == "done" { (Level::Info, "done") } else { (Level::Error, "failed") };
        self.events.record(level, "failover", pan, format!("failover ({trigger}) {what}"));
    }

    /// Failovers as ((PAN, trigger, outcome), count).
    pub fn failovers(&self) -> Vec<((String, &'static str, &'static str), u64)> {
        self.failovers.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, &n)| (k.clone(), n)).collect()
    }

    /// A queue pair of the FUSE mount in process `pid` opened; it counts until the guard
    /// is dropped.
    pub fn fuse_queue_pair(&self, pid: u32) -> FuseQueuePair {
        *self.fuse_mounts.lock().unwrap_or_else(|p| p.into_inner()).entry(pid).or_default() += 1;
        FuseQueuePair { mounts: self.fuse_mounts.clone(), pid }
    }

    /// FUSE mounts (`pangate mount` processes) with at least one queue pair open.
    pub fn fuse_mounts(&self) -> usize {
        self.fuse_mounts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sets where LAN counters come from (once; later calls are ignored).
    pub fn set_lan_sampler(&self, sampler: LanSampler) {
        let _ = self.lans.set(sampler);
    }

    /// Sets where iSCSI counters come from (once; later calls are ignored).
    pub fn set_iscsi_sampler(&self, sampler: IscsiSampler) {
        let _ = self.iscsi.set(sampler);
    }

    /// Every iSCSI portal's counters, if the target runs.
    pub fn iscsi(&self) -> Vec<PortalSample> {
        self.iscsi.get().map(|f| f()).unwrap_or_default()
    }

    /// Every LUN's counters as of now.
    pub fn luns(&self) -> Vec<(LunKey, LunSnapshot)> {
        let now = crate::now_ns();
        let luns = self.luns.lock().unwrap_or_else(|p| p.into_inner()).clone();
        luns.into_iter().map(|(k, s)| (k, s.snapshot(now))).collect()
    }

    /// Every node's ring counters.
    pub fn rings(&self) -> Vec<((String, String), RingSnapshot)> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rings.into_iter().map(|(k, s)| (k, s.snapshot())).collect()
    }

    /// Every LAN's counters, if netvirt runs.
    pub fn lans(&self) -> Vec<LanSample> {
        self.lans.get().map(|f| f()).unwrap_or_default()
    }

    /// The name `opcode` is labelled with.
    pub fn opcode_label(&self, opcode: u8) -> String {
        match (self.opcode_name)(opcode) {
            Some(n) => n.to_string(),
            None => format!("0x{opcode:02x}"),
        }
    }

    /// The version the build info reports.
    pub fn version(&self) -> &'static str {
        self.version
    }
}

/// One open queue pair of a FUSE mount, counted in [`Metrics::fuse_mounts`] while it lives.
#[derive(Debug)]
pub struct FuseQueuePair {
    mounts: Arc<Mutex<BTreeMap<u32, u64>>>,
    pid: u32,
}

impl Drop for FuseQueuePair {
    fn drop(&mut self) {
        let mut m = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.pid);
            }
        }
    }
}
