//! A node's entry (`[[pan.node]]`): its credential and map, its iSCSI identity, and whether
//! it is a spare or fails over by itself; and the checks of its failover keys.

use serde::{Deserialize, Serialize};

use super::{err, ConfigError, LunMapEntry, PanConfig};

/// A node: a client of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name, unique within the PAN.
    pub name: String,
    /// Shared secret the node presents when it connects.
    pub credential: String,
    /// When set, the node may only connect from a process with this uid (`SO_PEERCRED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The node's virtual storage space.
    #[serde(default)]
    pub luns: Vec<LunMapEntry>,
    /// The node's iSCSI initiator name; without it the node cannot log in over iSCSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iqn: Option<String>,
    /// The secret its CHAP proves; default: the credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_secret: Option<String>,
    /// The secret the target proves when the initiator asks for mutual CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap_secret: Option<String>,
    /// In the PAN's free pool: no LUN map and no addresses of its own, waiting to take a
    /// failed node's personality.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spare: bool,
    /// Whether the gateway fails the node over by itself when it becomes unreachable.
    #[serde(default, skip_serializing_if = "FailoverMode::is_manual")]
    pub failover: FailoverMode,
    /// How long the node must be unreachable before an automatic failover ("10s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_after: Option<String>,
}

/// Who fails a node over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Only the operator, through the API or the web admin.
    #[default]
    Manual,
    /// Also the gateway, once the node has been unreachable for `failover_after`.
    Auto,
}

impl FailoverMode {
    fn is_manual(&self) -> bool {
        *self == FailoverMode::Manual
    }
}

/// How long a node with `failover = "auto"` is unreachable before it fails over, unless
/// `failover_after` says otherwise.
pub const DEFAULT_FAILOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl NodeConfig {
    /// A node with a name and a credential, and nothing else.
    pub fn new(name: &str, credential: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            credential: credential.into(),
            uid: None,
            luns: Vec::new(),
            iqn: None,
            chap_secret: None,
            mutual_chap_secret: None,
            spare: false,
            failover: FailoverMode::Manual,
            failover_after: None,
        }
    }

    /// `failover_after`, parsed (the config was validated).
    pub fn failover_after(&self) -> std::time::Duration {
        self.failover_after.as_deref().and_then(|s| humantime::parse_duration(s).ok()).unwrap_or(DEFAULT_FAILOVER_AFTER)
    }
}

/// A spare has no map, no addresses and serves no cluster; `failover_after` is a duration
/// from 1 s to 1 h, and only nodes that are not spares fail over.
pub(super) fn validate_failover(nk: &str, pan: &PanConfig, node: &NodeConfig) -> Result<(), ConfigError> {
    if let Some(after) = &node.failover_after {
        let ok = humantime::parse_duration(after)
            .is_ok_and(|d| (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600)).contains(&d));
        if !ok {
            return Err(err(
                format!("{nk}.failover_after"),
                format!("{after:?} is not a duration from 1s to 1h"),
                "write it as \"10s\" or \"2m\"",
            ));
        }
    }
    if !node.spare {
        return Ok(());
    }
    let fix = "a spare takes all of this from the node it replaces; leave it out";
    if !node.luns.is_empty() {
        return Err(err(format!("{nk}.luns"), "a spare has no LUN map of its own", fix));
    }
    if node.failover != FailoverMode::Manual {
        return Err(err(format!("{nk}.failover"), "a spare has nothing to fail over", fix));
    }
    for lan in &pan.lans {
        if lan.ports.iter().any(|p| p.node == node.name && !p.ips.is_empty()) {
            return Err(err(
                format!("{nk}.spare"),
                format!("spare {:?} has addresses on LAN {:?}", node.name, lan.name),
                fix,
            ));
        }
        let serves = lan.clusters.iter().flat_map(|c| &c.services).any(|s| s.nodes.contains(&node.name));
        if serves {
            return Err(err(
                format!("{nk}.spare"),
                format!("spare {:?} is a cluster backend on LAN {:?}", node.name, lan.name),
                fix,
            ));
        }
    }
    Ok(())
}
