//! `[[gateway]]`: the gateways of a redundant pair (or more) sharing one config and the
//! backing images. Each `pangate up --gateway ID` serves as the entry with that `id`.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{err, Config, ConfigError};
use crate::engine::EngineKind;

/// The most gateways one platform may have: ALUA target port group `id` and relative
/// target ports `2 id - 1` (rings) and `2 id` (iSCSI) stay small.
pub const MAX_GATEWAYS: u16 = 8;

/// One gateway of a redundant platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// 1 to 8: its ALUA target port group and the rank that decides which LUNs it prefers.
    pub id: u16,
    /// Its ring socket, relative to the data directory; nodes list every gateway's.
    pub socket: PathBuf,
    /// Its web admin and metrics address (instead of `[web] listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_listen: Option<String>,
    /// Its iSCSI portals (instead of `[iscsi] listen`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iscsi_listen: Vec<String>,
}

/// How long a gateway may go without renewing its lease before a peer fences it, unless
/// `[storage] lease_ms` says otherwise.
pub const DEFAULT_LEASE_MS: u64 = 1000;

pub(super) fn default_lease_ms() -> u64 {
    DEFAULT_LEASE_MS
}

impl Config {
    /// The gateway `id` names, when the config has `[[gateway]]` entries.
    pub fn gateway(&self, id: u16) -> Option<&GatewayConfig> {
        self.gateways.iter().find(|g| g.id == id)
    }

    pub(super) fn validate_gateways(&self) -> Result<(), ConfigError> {
        if !(100..=60_000).contains(&self.storage.lease_ms) {
            return Err(err(
                "storage.lease_ms",
                format!("{} ms is outside 100 to 60000", self.storage.lease_ms),
                "use about a second (the default is 1000)",
            ));
        }
        if self.gateways.is_empty() {
            return Ok(());
        }
        if self.gateways.len() < 2 {
            return Err(err(
                "gateway",
                "one [[gateway]] entry makes no redundant pair",
                "list every gateway (at least two), or remove the entry",
            ));
        }
        if self.engine == EngineKind::Ram {
            return Err(err(
                "engine",
                "RAM images are private to each gateway, so redundant gateways cannot share them",
                "use engine = \"auto\", \"uring\" or \"sync\" with [[gateway]]",
            ));
        }
        let (mut ids, mut sockets) = (HashSet::new(), HashSet::new());
        for (i, g) in self.gateways.iter().enumerate() {
            let key = format!("gateway[{i}]");
            if g.id == 0 || g.id > MAX_GATEWAYS {
                return Err(err(
                    format!("{key}.id"),
                    format!("{} is not 1 to {MAX_GATEWAYS}", g.id),
                    "number them 1, 2, ...",
                ));
            }
            if !ids.insert(g.id) {
                return Err(err(
                    format!("{key}.id"),
                    format!("gateway {} is listed twice", g.id),
                    "give each a unique id",
                ));
            }
            if !sockets.insert(&g.socket) {
                return Err(err(
                    format!("{key}.socket"),
                    format!("{} is another gateway's socket", g.socket.display()),
                    "give each gateway its own socket",
                ));
            }
            if let Some(a) = &g.web_listen {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(err(
                        format!("{key}.web_listen"),
                        format!("{a:?} is not an address and port"),
                        "write it as \"127.0.0.1:9181\"",
                    ));
                }
            }
            for a in &g.iscsi_listen {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(err(
                        format!("{key}.iscsi_listen"),
                        format!("{a:?} is not an address and port"),
                        "write it as \"127.0.0.1:3261\"",
                    ));
                }
            }
        }
        Ok(())
    }

    /// This config as gateway `id` runs it: its socket, web and iSCSI addresses in place of
    /// the shared ones. An id the config does not list is an error that says which it does.
    pub fn as_gateway(&self, id: u16) -> Result<Config, ConfigError> {
        let Some(g) = self.gateway(id) else {
            let listed: Vec<String> = self.gateways.iter().map(|g| g.id.to_string()).collect();
            let fix = if listed.is_empty() {
                "add [[gateway]] entries to the config, or leave out --gateway".to_string()
            } else {
                format!("use one of the listed ids: {}", listed.join(", "))
            };
            return Err(err("gateway", format!("no gateway {id} in the config"), fix));
        };
        let mut cfg = self.clone();
        cfg.storage.socket = g.socket.clone();
        if let Some(a) = &g.web_listen {
            cfg.web.listen = a.clone();
        }
        if !g.iscsi_listen.is_empty() {
            cfg.iscsi.listen = g.iscsi_listen.clone();
        }
        Ok(cfg)
    }

    /// The gateway that prefers (serves while it is up) image `image` of PAN `pan`: the
    /// images in config order dealt round the gateways in id order, so each serves its
    /// share. `None` without `[[gateway]]` or for an image the config does not have.
    pub fn preferred_gateway(&self, pan: &str, image: &str) -> Option<u16> {
        let ids = self.gateway_ids();
        if ids.is_empty() {
            return None;
        }
        let mut all = self.pans.iter().flat_map(|p| p.images.iter().map(move |i| (&p.name, &i.name)));
        let rank = all.position(|(p, i)| p == pan && i == image)?;
        Some(ids[rank % ids.len()])
    }

    /// The ids of every gateway, in ascending order; empty without `[[gateway]]`.
    pub fn gateway_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.gateways.iter().map(|g| g.id).collect();
        ids.sort_unstable();
        ids
    }
}
