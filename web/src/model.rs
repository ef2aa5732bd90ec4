//! What the API returns and takes. The same types feed the pages.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Everything the admin shows: PANs with nodes and LUNs, LANs, ring connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// The control node's serial.
    pub serial: String,
    /// PANs.
    pub pans: Vec<PanView>,
    /// pangate's version.
    #[serde(default)]
    pub version: String,
    /// Seconds since the gateway started.
    #[serde(default)]
    pub uptime_secs: u64,
    /// Whether netvirt runs (TAP ports need root and /dev/net/tun).
    pub netvirt: bool,
    /// Whether the iSCSI target listens.
    #[serde(default)]
    pub iscsi: bool,
    /// Whether the TCMU front-end serves LIO backstores.
    #[serde(default)]
    pub tcmu: bool,
    /// FUSE mounts (`pangate mount` processes) with a queue pair open.
    #[serde(default)]
    pub fuse_mounts: u64,
    /// iSCSI sessions in the full feature phase.
    #[serde(default)]
    pub iscsi_sessions: Vec<IscsiSessionView>,
}

/// Something that happened: a node connecting or going, a protocol error, a refused
/// handshake, a change to the configuration, a failover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Its number; events are numbered from 1 in order (ask for newer ones with `after`).
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// `info`, `warning` or `error`.
    pub level: String,
    /// `node_connected`, `node_reconnected`, `node_disconnected`, `protocol_error`,
    /// `handshake_refused`, `iscsi_login`, `iscsi_login_refused`, `change`, `change_refused`
    /// or `failover`.
    pub kind: String,
    /// What it happened to: `<pan>/<node>`, `<pan>`, `ring`, `config`.
    pub subject: String,
    /// What happened.
    pub message: String,
}

impl From<metrics::Event> for EventView {
    fn from(e: metrics::Event) -> EventView {
        EventView {
            seq: e.seq,
            unix_ms: e.unix_ms,
            level: e.level.name().to_string(),
            kind: e.kind.to_string(),
            subject: e.subject,
            message: e.message,
        }
    }
}

/// An iSCSI session (one connection: MaxConnections is 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IscsiSessionView {
    /// Handle to drop it by.
    pub id: u64,
    /// Initiator name.
    pub initiator: String,
    /// Target name (empty for a discovery session).
    pub target: String,
    /// The PAN of the node the initiator is.
    pub pan: String,
    /// The node.
    pub node: String,
    /// ISID, hex.
    pub isid: String,
    /// TSIH.
    pub tsih: u16,
    /// The portal it came in on.
    pub portal: String,
    /// The initiator's address.
    pub peer: String,
    /// `normal` or `discovery`.
    pub kind: String,
    /// HeaderDigest: CRC32C or None.
    pub header_digest: String,
    /// DataDigest: CRC32C or None.
    pub data_digest: String,
    /// The initiator's MaxRecvDataSegmentLength (the largest Data-In segment).
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// PDUs received.
    pub pdus: u64,
}

/// A PAN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PanView {
    /// Name.
    pub name: String,
    /// Nodes.
    pub nodes: Vec<NodeView>,
    /// LUNs (backing images).
    pub luns: Vec<LunView>,
    /// LANs.
    pub lans: Vec<LanView>,
}

/// A node and its map. Its credential is shown only when it is created.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// The only uid it may connect from, if set.
    pub uid: Option<u32>,
    /// (target, LUN) → LUN.
    pub maps: Vec<MapView>,
    /// Ring queue pairs open now.
    pub ring_connections: u64,
    /// Commands accepted and not yet answered.
    pub outstanding_commands: u64,
    /// Queue pairs closed for protocol errors.
    pub protocol_errors: u64,
    /// The node's own I/O, summed over its map entries: present when the gateway keeps
    /// LUN counters per node (`web.per_node_metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<LunCounters>,
    /// In the PAN's free pool of spares.
    #[serde(default)]
    pub spare: bool,
    /// `manual` or `auto`: whether the gateway fails it over by itself.
    #[serde(default)]
    pub failover: String,
}

/// One entry of a node's map.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MapView {
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// LUN (image) name.
    pub image: String,
    /// `ro` or `rw`.
    pub access: Access,
}

/// Access a map grants; the config, the API and the ring server all use this one type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-only.
    Ro,
    /// Read-write.
    #[default]
    Rw,
}

impl std::fmt::Display for Access {
    /// `ro` or `rw`, as the config and the API write it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Ro => "ro",
            Access::Rw => "rw",
        })
    }
}

impl Access {
    /// Whether writes are refused.
    pub fn is_read_only(self) -> bool {
        self == Access::Ro
    }
}

/// A LUN: a backing image of a PAN, with counters summed over the nodes that map it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LunView {
    /// Name.
    pub name: String,
    /// Backing file or device.
    pub path: String,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Counters.
    pub counters: LunCounters,
}

/// Per-LUN figures, as the source document's management interface keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LunCounters {
    /// Commands of every kind.
    pub commands: u64,
    /// Commands that read the medium.
    pub reads: u64,
    /// Commands that wrote the medium.
    pub writes: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Seconds with I/O in progress.
    pub busy_seconds: f64,
    /// Commands timed, by latency: the cumulative count at or under each bucket bound of
    /// `pangate_lun_command_duration_seconds` (5 µs to 10 s).
    #[serde(default)]
    pub latency_buckets: Vec<u64>,
    /// Commands timed, however long they took.
    #[serde(default)]
    pub latency_count: u64,
}

/// A LAN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LanView {
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// IP-to-port bindings of its ARP server (when netvirt runs).
    pub arp_entries: u64,
    /// Whether netvirt switches it now (false where netvirt is off on this host, or the
    /// LAN failed to start).
    pub active: bool,
    /// Ports.
    pub ports: Vec<PortView>,
    /// Service clusters.
    #[serde(default)]
    pub clusters: Vec<ClusterView>,
}

/// A service cluster on a LAN: its config, and what the running gateway reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// The cluster as configured.
    #[serde(flatten)]
    pub cluster: ClusterBody,
    /// The MAC that answers ARP for its address (when netvirt runs).
    pub mac: Option<String>,
    /// Flows in its connection table.
    pub flows: u64,
    /// New flows that picked a backend.
    pub new_flows: u64,
    /// Packets dropped (unserved ports, no backend, fragments).
    pub drops: u64,
    /// `node:proto/port` of every backend that is up, draining or down now.
    pub health: Vec<BackendHealth>,
}

/// One backend of one service, as the running gateway judges it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BackendHealth {
    /// Node.
    pub node: String,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Service port.
    pub port: u16,
    /// `up`, `draining` or `down`.
    pub health: String,
}

/// A service cluster to create or replace: one address of a LAN whose ports several
/// member nodes serve.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterBody {
    /// Name, unique within the LAN.
    pub name: String,
    /// IPv4 address, which no port of the LAN has.
    pub ip: String,
    /// Served ports.
    #[serde(default)]
    pub services: Vec<ServiceBody>,
}

/// One served port of a cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceBody {
    /// Port, 1-65535.
    pub port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub proto: Option<String>,
    /// Member nodes that serve it.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Nodes that take no new connections.
    #[serde(default)]
    pub draining: Vec<String>,
    /// Keep each client on one backend.
    #[serde(default)]
    pub sticky: bool,
    /// How long after its last new connection a client stays (default `10m`).
    #[serde(default)]
    pub sticky_timeout: Option<String>,
    /// `tcp` for a TCP connect check of each backend.
    #[serde(default)]
    pub check: Option<String>,
    /// Time between checks (default `2s`).
    #[serde(default)]
    pub check_interval: Option<String>,
    /// Failed checks in a row that take a backend down (default 3).
    #[serde(default)]
    pub check_failures: Option<u32>,
    /// Passed checks in a row that bring it back (default 2).
    #[serde(default)]
    pub check_passes: Option<u32>,
}

/// Fails a node over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// The spare that takes the node's personality (default: the PAN's first free spare).
    #[serde(default)]
    pub to: Option<String>,
}

/// Drains a backend (or takes it back): it keeps its connections and gets no new ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// The backend node.
    pub node: String,
    /// Only this service port (default: every service the node serves).
    #[serde(default)]
    pub port: Option<u16>,
    /// `tcp` or `udp`, with `port` (default `tcp`).
    #[serde(default)]
    pub proto: Option<String>,
    /// Drain (default) or take new connections again (`false`).
    #[serde(default = "yes")]
    pub drain: bool,
}

fn yes() -> bool {
    true
}

/// A node's port on a LAN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PortView {
    /// Node.
    pub node: String,
    /// `tap` or `ring`.
    pub kind: String,
    /// Network namespace (TAP).
    pub netns: Option<String>,
    /// MAC, once assigned.
    pub mac: Option<String>,
    /// Addresses (CIDR).
    pub ips: Vec<String>,
    /// Frames from the node.
    pub frames_in: u64,
    /// Frames to the node.
    pub frames_out: u64,
    /// Bytes of the frames from the node.
    #[serde(default)]
    pub bytes_in: u64,
    /// Bytes of the frames to the node.
    #[serde(default)]
    pub bytes_out: u64,
    /// Frames dropped (all reasons).
    pub drops: u64,
    /// Of those, frames larger than the LAN's MTU (the node's interface MTU is above it).
    #[serde(default)]
    pub oversize_drops: u64,
    /// The largest such packet, in bytes (0: none).
    #[serde(default)]
    pub largest_oversize: u64,
}

/// A new PAN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPan {
    /// Name: letters, digits, `-`, `_`, `.`; 1 to 63 characters.
    pub name: String,
}

/// A new node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    /// Name.
    pub name: String,
    /// Credential; generated when absent.
    #[serde(default)]
    pub credential: Option<String>,
    /// The only uid it may connect from.
    #[serde(default)]
    pub uid: Option<u32>,
    /// A spare: in the PAN's free pool, with no map, waiting to take a failed node's place.
    #[serde(default)]
    pub spare: bool,
}

/// A node as created, with its credential.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreatedNode {
    /// Name.
    pub name: String,
    /// The credential it connects with.
    pub credential: String,
}

/// A new LUN: a new sparse image of `size`, or an existing file or block device at `path`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLun {
    /// Name.
    pub name: String,
    /// Size of a new image: a byte count (a number or a string), or with a K/M/G/T suffix
    /// (binary), as in the config.
    #[serde(default, deserialize_with = "size_or_bytes_opt")]
    #[schema(value_type = Option<String>)]
    pub size: Option<String>,
    /// An existing file or block device (absolute), instead of a new image.
    #[serde(default)]
    pub path: Option<String>,
    /// Logical block size: 512 or 4096 (default 512).
    #[serde(default)]
    pub block_size: Option<u32>,
}

/// A new size for a LUN; it only grows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// Bytes (a number or a string), or with a K/M/G/T suffix.
    #[serde(deserialize_with = "size_or_bytes")]
    pub size: String,
}

/// A size as the config takes it: a string such as `"1GiB"`, or a plain byte count.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Text(String),
    Bytes(u64),
}

impl From<SizeText> for String {
    fn from(s: SizeText) -> String {
        match s {
            SizeText::Text(t) => t,
            SizeText::Bytes(n) => n.to_string(),
        }
    }
}

fn size_or_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    SizeText::deserialize(d).map(String::from)
}

fn size_or_bytes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<SizeText>::deserialize(d).map(|s| s.map(String::from))
}

/// An IPv4 address of a LAN to hand to another member (as in a failover): the switch
/// re-registers it and announces it with a gratuitous ARP.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveIp {
    /// The address, as configured on its current port (without the prefix length).
    pub ip: String,
    /// The member that takes it.
    pub node: String,
}

/// A map entry to add to a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMap {
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// LUN (image) name in the same PAN.
    pub image: String,
    /// `ro` or `rw` (default `rw`).
    #[serde(default)]
    pub access: Access,
}

/// A new LAN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLan {
    /// Name.
    pub name: String,
    /// MTU (576 to 9216, default 1500).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Member ports.
    #[serde(default)]
    pub ports: Vec<NewPort>,
}

/// A member port of a new LAN.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPort {
    /// Node of the same PAN.
    pub node: String,
    /// Addresses in CIDR form.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Network namespace for a TAP port; a shared-memory ring port when absent.
    #[serde(default)]
    pub netns: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_byte_counts_or_strings_as_in_the_config() {
        let n: NewLun = serde_json::from_str(r#"{"name": "x", "size": 1048576}"#).unwrap();
        assert_eq!(n.size.as_deref(), Some("1048576"));
        let n: NewLun = serde_json::from_str(r#"{"name": "x", "size": "1MiB"}"#).unwrap();
        assert_eq!(n.size.as_deref(), Some("1MiB"));
        let n: NewLun = serde_json::from_str(r#"{"name": "x", "path": "/p"}"#).unwrap();
        assert_eq!(n.size, None);
        let r: Resize = serde_json::from_str(r#"{"size": 2097152}"#).unwrap();
        assert_eq!(r.size, "2097152");
        assert!(serde_json::from_str::<Resize>(r#"{"size": -1}"#).is_err());
        assert_eq!(Access::Ro.to_string(), "ro");
    }
}
