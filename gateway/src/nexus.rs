//! Who an initiator is to a logical unit's persistent reservations: its initiator port
//! (an iSCSI name and ISID, as a TransportID says it) and the relative target port it came
//! in on.
//!
//! - An iSCSI session is the initiator's own name and ISID, on target port
//!   [`iscsi_target_port`], as SPC-4 has it for iSCSI.
//! - Every queue pair of a ring node (its `pangate-ring` links, `pangate mount`, and the
//!   TCMU devices that serve it) is one initiator port: the node's `iqn` if it has one, else
//!   `iqn.2026-12.io.pangate:<pan>.<node>`, with ISID [`RING_ISID`], on target port
//!   [`local_target_port`]. A node's queue pairs are one group: reservations see the node,
//!   whichever queue pair a command took.
//! - The gateway's own commands (start-up checks) come from [`gateway_port`].

use scsi::InitiatorPort;

use crate::registry::NodeEntry;

/// Which gateway of a redundant platform this process is (1 when there is one gateway),
/// set once at start-up.
static GATEWAY: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Says which gateway this process is; the first call wins.
pub fn set_gateway(id: u16) {
    let _ = GATEWAY.set(id.max(1));
}

/// This gateway's id: 1 unless [`set_gateway`] said otherwise.
pub fn gateway_id() -> u16 {
    GATEWAY.get().copied().unwrap_or(1)
}

/// The relative target ports of gateway `id`: its ring server's (ring links, FUSE mounts,
/// TCMU), then its iSCSI target's. Gateway 1 has 1 and 2, gateway 2 has 3 and 4.
pub fn target_ports(id: u16) -> [u16; 2] {
    [2 * id - 1, 2 * id]
}

/// This gateway's ring server's target port.
pub fn local_target_port() -> u16 {
    target_ports(gateway_id())[0]
}

/// This gateway's iSCSI target's port.
pub fn iscsi_target_port() -> u16 {
    target_ports(gateway_id())[1]
}
/// The ISID of a ring node's initiator port: the random type (bits 47:46 = 10b), 1.
pub const RING_ISID: u64 = 0x8000_0000_0001;

/// The iSCSI name a node is known by when it has none configured.
pub fn default_name(pan: &str, node: &str) -> String {
    format!("iqn.2026-12.io.pangate:{pan}.{node}")
}

/// The initiator port of a ring node's queue pairs.
pub fn node_port(entry: &NodeEntry) -> InitiatorPort {
    let name = match &entry.iscsi {
        Some(id) => id.iqn.clone(),
        None => default_name(&entry.pan, &entry.node),
    };
    InitiatorPort::new(&name, RING_ISID)
}

/// The initiator port of the gateway's own commands.
pub fn gateway_port() -> InitiatorPort {
    InitiatorPort::new("iqn.2026-12.io.pangate:gateway", RING_ISID)
}
