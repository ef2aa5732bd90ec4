//! The interface the gateway implements for the web admin, and the changes it accepts.

use crate::model::{Access, ClusterBody, Drain, MoveIp, NewLan, NewLun, Overview};

/// A change to the running configuration. The API and the forms both build these and
/// hand them to [`Admin::apply`]; nothing else changes state.
#[derive(Clone)]
pub enum Change {
    /// Creates an empty PAN.
    CreatePan { pan: String },
    /// Deletes a PAN that has no nodes, LUNs or LANs left.
    DeletePan { pan: String },
    /// Creates a node with an empty map.
    CreateNode { pan: String, node: String, credential: String, uid: Option<u32>, spare: bool },
    /// Deletes a node, closing its queue pairs.
    DeleteNode { pan: String, node: String },
    /// Creates a LUN.
    CreateLun { pan: String, lun: NewLun },
    /// Deletes a LUN that no node maps. Its file stays.
    DeleteLun { pan: String, lun: String },
    /// Grows a LUN; its initiators get CAPACITY DATA HAS CHANGED.
    ResizeLun { pan: String, lun: String, size: String },
    /// Maps a LUN on a node.
    Map { pan: String, node: String, target: u16, lun: u16, image: String, access: Access },
    /// Removes a (target, LUN) from a node's map.
    Unmap { pan: String, node: String, target: u16, lun: u16 },
    /// Creates a LAN.
    CreateLan { pan: String, lan: NewLan },
    /// Deletes a LAN.
    DeleteLan { pan: String, lan: String },
    /// Hands a LAN address to another member port.
    MoveIp { pan: String, lan: String, to: MoveIp },
    /// Creates a service cluster on a LAN.
    CreateCluster { pan: String, lan: String, cluster: ClusterBody },
    /// Replaces a LAN's service cluster; flows of backends that stay are kept.
    ReplaceCluster { pan: String, lan: String, name: String, cluster: ClusterBody },
    /// Deletes a LAN's service cluster.
    DeleteCluster { pan: String, lan: String, name: String },
    /// Drains a backend of a cluster, or takes it back.
    Drain { pan: String, lan: String, name: String, drain: Drain },
    /// Fences a node and moves its whole personality (MACs, addresses, cluster
    /// memberships, LUN map, ring and TCMU identity) to spare `to`, or to the PAN's first
    /// free spare.
    Failover { pan: String, node: String, to: Option<String> },
}

impl Change {
    /// What the change does, for logs (never the credential).
    pub fn summary(&self) -> String {
        match self {
            Change::CreatePan { pan } => format!("create PAN {pan}"),
            Change::DeletePan { pan } => format!("delete PAN {pan}"),
            Change::CreateNode { pan, node, .. } => format!("create node {pan}/{node}"),
            Change::DeleteNode { pan, node } => format!("delete node {pan}/{node}"),
            Change::CreateLun { pan, lun } => format!("create LUN {pan}/{}", lun.name),
            Change::DeleteLun { pan, lun } => format!("delete LUN {pan}/{lun}"),
            Change::ResizeLun { pan, lun, size } => format!("resize LUN {pan}/{lun} to {size}"),
            Change::Map { pan, node, target, lun, image, access } => {
                format!("map {pan}/{image} on {node} as target {target} LUN {lun} ({access:?})")
            }
            Change::Unmap { pan, node, target, lun } => format!("unmap target {target} LUN {lun} from {pan}/{node}"),
            Change::CreateLan { pan, lan } => format!("create LAN {pan}/{}", lan.name),
            Change::DeleteLan { pan, lan } => format!("delete LAN {pan}/{lan}"),
            Change::MoveIp { pan, lan, to } => format!("move {} on LAN {pan}/{lan} to {}", to.ip, to.node),
            Change::CreateCluster { pan, lan, cluster } => format!("create cluster {pan}/{lan}/{}", cluster.name),
            Change::ReplaceCluster { pan, lan, name, .. } => format!("replace cluster {pan}/{lan}/{name}"),
            Change::DeleteCluster { pan, lan, name } => format!("delete cluster {pan}/{lan}/{name}"),
            Change::Drain { pan, lan, name, drain } => {
                let what = if drain.drain { "drain" } else { "undrain" };
                format!("{what} {} in cluster {pan}/{lan}/{name}", drain.node)
            }
            Change::Failover { pan, node, to } => match to {
                Some(to) => format!("fail {pan}/{node} over to {to}"),
                None => format!("fail {pan}/{node} over to the first free spare"),
            },
        }
    }
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Why a change or lookup failed. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed or a value is out of range (400).
    #[error("{0}")]
    Invalid(String),
    /// Something it names does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// It clashes with what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The gateway could not carry it out (500): an I/O error, not bad input.
    #[error("{0}")]
    Failed(String),
}

/// What the web admin needs from the gateway. Calls may block (they go to the gateway's
/// worker and write the config), so the web layer runs them off its async threads.
pub trait Admin: Send + Sync + 'static {
    /// The current state with live counters.
    fn overview(&self) -> Overview;
    /// Validates, applies and persists a change.
    fn apply(&self, change: Change) -> Result<(), AdminError>;
    /// The Prometheus exposition of every metric.
    fn metrics(&self) -> String;
    /// The events numbered after `after`, oldest first, at most `limit` (the newest).
    fn events(&self, after: u64, limit: usize) -> Vec<crate::model::EventView> {
        let _ = (after, limit);
        Vec::new()
    }
    /// Drops iSCSI session `id` (its connection closes). A gateway without iSCSI has none.
    fn drop_iscsi_session(&self, id: u64) -> Result<(), AdminError> {
        Err(AdminError::NotFound(format!("no iSCSI session {id}")))
    }
}
