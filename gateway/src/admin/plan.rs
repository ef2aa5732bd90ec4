//! The admin's decisions as values: [`plan`] turns the config and a [`Change`] into the next
//! config and the [`Effect`]s that bring the running gateway to it, or refuses the change.
//! It reads no file and touches nothing running, so every rule is a unit test away; the
//! admin's `apply` carries a plan out in one order for every change (see [`Phase`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use scsi::BlockSize;
use web::model::{MoveIp, NewLan, NewLun};
use web::{AdminError, Change};

use crate::config::{check_name, parse_size, Config, ImageConfig, LunMapEntry, NodeConfig, PanConfig, Size};

/// Largest LUN the admin creates or grows to (ext4's file size limit).
pub const MAX_LUN_BYTES: u64 = crate::config::MAX_IMAGE_BYTES;

/// A change, decided: the config it leads to and what the running gateway must do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The config once the change is made.
    pub next: Config,
    /// What the running gateway does, in this order within each phase.
    pub effects: Vec<Effect>,
}

/// When an effect runs. `apply` runs every [`Phase::Prepare`] effect, then writes the next
/// config atomically, then runs every [`Phase::Commit`] effect. A prepare effect that fails,
/// or a config that cannot be written, undoes the prepare effects already done, in reverse,
/// and the change is refused with nothing changed. Commit effects only bring the running
/// gateway's tables in line with the config now on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the config is written; can fail, and is undone if a later step fails.
    Prepare,
    /// After the config is written.
    Commit,
}

/// One thing the running gateway does for a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Opens a new LUN's image, creating the file (sparse) when `create`; the next config
    /// records the size the opened image has. Undone by closing it and removing a file it
    /// created.
    OpenImage {
        /// The PAN.
        pan: String,
        /// The image as the next config has it.
        image: ImageConfig,
        /// Whether the file is new.
        create: bool,
    },
    /// Grows an open image. Growing cannot be undone; should the config then fail to be
    /// written, the image is larger than its config says, and takes its own size at the
    /// next start.
    GrowImage {
        /// The PAN.
        pan: String,
        /// The image.
        image: String,
        /// Its new size.
        bytes: u64,
    },
    /// Starts switching a LAN of the next config. Undone by stopping it.
    StartLan {
        /// The PAN.
        pan: String,
        /// The LAN.
        lan: String,
    },
    /// Stops switching a LAN. Undone by starting it again as the current config has it.
    StopLan {
        /// The PAN.
        pan: String,
        /// The LAN.
        lan: String,
    },
    /// Hands an address to another member port. Undone by handing it back.
    MoveIp {
        /// The PAN.
        pan: String,
        /// The LAN.
        lan: String,
        /// The address.
        ip: Ipv4Addr,
        /// The member that has it.
        from: String,
        /// The member that gets it.
        to: String,
    },
    /// Adds a LAN's service cluster to the running LAN, or changes it, as the next config
    /// has it. Undone by setting it back as the current config has it (or removing it).
    SetCluster {
        /// The PAN.
        pan: String,
        /// The LAN.
        lan: String,
        /// The cluster.
        cluster: String,
    },
    /// Removes a service cluster from the running LAN. Undone by setting it again.
    RemoveCluster {
        /// The PAN.
        pan: String,
        /// The LAN.
        lan: String,
        /// The cluster.
        cluster: String,
    },
    /// Hands the image opened by [`Effect::OpenImage`] to the ring server.
    AddImage {
        /// The PAN.
        pan: String,
        /// The image.
        image: String,
    },
    /// Flushes and closes an image no map names any more (its file stays).
    RetireImage {
        /// The PAN.
        pan: String,
        /// The image.
        image: String,
    },
    /// The node's registry entry follows the next config (new credential or map).
    SetNode {
        /// The PAN.
        pan: String,
        /// The node.
        node: String,
    },
    /// The node leaves the registry; its queue pairs close.
    RemoveNode {
        /// The PAN.
        pan: String,
        /// The node.
        node: String,
    },
    /// Fences a node: nobody may connect as it, its queue pairs close and their commands
    /// finish, and its ports are unplugged (ring clients disconnected, TAPs deleted).
    /// Undone by plugging its ports in again where the current config has them and
    /// letting it connect.
    Fence {
        /// The PAN.
        pan: String,
        /// The node.
        node: String,
    },
    /// Takes a spare's port out of its LAN for good (its TAP deleted). Undone by plugging
    /// it in again where the current config has it.
    Retire(PortRef),
    /// Plugs a node's port in where the next config has it, announcing its addresses.
    /// Undone by unplugging it.
    Plug(PortRef),
    /// The fenced node may connect again, with the credential its entry now has.
    Unfence {
        /// The PAN.
        pan: String,
        /// The node.
        node: String,
    },
    /// The metrics of a (target, LUN) the node no longer maps go.
    ForgetLun {
        /// The PAN.
        pan: String,
        /// The LUN (image) it mapped.
        image: String,
        /// The node.
        node: String,
        /// The target.
        target: u16,
        /// The LUN.
        lun: u16,
    },
}

/// A node's port on a LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRef {
    /// The PAN.
    pub pan: String,
    /// The LAN.
    pub lan: String,
    /// The node.
    pub node: String,
}

impl Effect {
    /// When the effect runs.
    pub fn phase(&self) -> Phase {
        match self {
            Effect::OpenImage { .. }
            | Effect::GrowImage { .. }
            | Effect::StartLan { .. }
            | Effect::StopLan { .. }
            | Effect::MoveIp { .. }
            | Effect::SetCluster { .. }
            | Effect::RemoveCluster { .. }
            | Effect::Fence { .. }
            | Effect::Retire(_)
            | Effect::Plug(_) => Phase::Prepare,
            Effect::AddImage { .. }
            | Effect::RetireImage { .. }
            | Effect::SetNode { .. }
            | Effect::RemoveNode { .. }
            | Effect::Unfence { .. }
            | Effect::ForgetLun { .. } => Phase::Commit,
        }
    }
}

/// An invalid request, with why.
pub(super) fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

pub(super) fn pan_mut<'a>(cfg: &'a mut Config, pan: &str) -> Result<&'a mut PanConfig, AdminError> {
    cfg.pans.iter_mut().find(|p| p.name == pan).ok_or_else(|| AdminError::NotFound(format!("no PAN {pan:?}")))
}

fn node_mut<'a>(pan: &'a mut PanConfig, node: &str) -> Result<&'a mut NodeConfig, AdminError> {
    let name = pan.name.clone();
    pan.nodes
        .iter_mut()
        .find(|n| n.name == node)
        .ok_or_else(|| AdminError::NotFound(format!("no node {node:?} in PAN {name:?}")))
}

/// A LUN size from the API: a positive multiple of the block size, at most [`MAX_LUN_BYTES`].
pub fn size_arg(size: &str, block_size: u32) -> Result<u64, AdminError> {
    let bytes = parse_size(size).map_err(|e| invalid(format!("size {size:?}: {e}")))?;
    if bytes < u64::from(block_size) || bytes % u64::from(block_size) != 0 {
        return Err(invalid(format!("size {bytes} is not a positive multiple of the {block_size}-byte block size")));
    }
    if bytes > MAX_LUN_BYTES {
        return Err(invalid(format!("size {bytes} is above the largest LUN pangate creates ({MAX_LUN_BYTES} bytes)")));
    }
    Ok(bytes)
}

/// Decides `change` against `cfg`. `capacity(pan, image)` is an open image's size now
/// (`None`: not open), which only growing needs.
pub fn plan(cfg: &Config, change: Change, capacity: impl Fn(&str, &str) -> Option<u64>) -> Result<Plan, AdminError> {
    let mut next = cfg.clone();
    let mut effects = Vec::new();
    match change {
        Change::CreatePan { pan } => {
            if cfg.pans.iter().any(|p| p.name == pan) {
                return Err(AdminError::Conflict(format!("PAN {pan:?} exists")));
            }
            next.pans.push(PanConfig { name: pan, images: vec![], nodes: vec![], lans: vec![] });
        }
        Change::DeletePan { pan } => {
            let p = pan_mut(&mut next, &pan)?;
            if !(p.nodes.is_empty() && p.images.is_empty() && p.lans.is_empty()) {
                return Err(AdminError::Conflict(format!(
                    "PAN {pan:?} still has {} nodes, {} LUNs and {} LANs; delete them first",
                    p.nodes.len(),
                    p.images.len(),
                    p.lans.len()
                )));
            }
            next.pans.retain(|p| p.name != pan);
        }
        Change::CreateNode { pan, node, credential, uid, spare } => {
            let p = pan_mut(&mut next, &pan)?;
            if p.nodes.iter().any(|n| n.name == node) {
                return Err(AdminError::Conflict(format!("PAN {pan:?} already has a node {node:?}")));
            }
            p.nodes.push(NodeConfig { uid, spare, ..NodeConfig::new(&node, &credential) });
            effects.push(Effect::SetNode { pan, node });
        }
        Change::DeleteNode { pan, node } => {
            let p = pan_mut(&mut next, &pan)?;
            let maps = node_mut(p, &node)?.luns.clone();
            if let Some(lan) = p.lans.iter().find(|l| l.ports.iter().any(|port| port.node == node)) {
                return Err(AdminError::Conflict(format!(
                    "node {node:?} has a port on LAN {:?}; delete that LAN first",
                    lan.name
                )));
            }
            p.nodes.retain(|n| n.name != node);
            effects.push(Effect::RemoveNode { pan: pan.clone(), node: node.clone() });
            effects.extend(maps.into_iter().map(|m| Effect::ForgetLun {
                pan: pan.clone(),
                image: m.image,
                node: node.clone(),
                target: m.target,
                lun: m.lun,
            }));
        }
        Change::CreateLun { pan, lun } => return plan_lun(next, &pan, lun),
        Change::DeleteLun { pan, lun } => {
            let p = pan_mut(&mut next, &pan)?;
            if !p.images.iter().any(|i| i.name == lun) {
                return Err(AdminError::NotFound(format!("no LUN {lun:?} in PAN {pan:?}")));
            }
            let users: Vec<&str> =
                p.nodes.iter().filter(|n| n.luns.iter().any(|m| m.image == lun)).map(|n| n.name.as_str()).collect();
            if !users.is_empty() {
                return Err(AdminError::Conflict(format!(
                    "LUN {lun:?} is mapped by {}; unmap it first",
                    users.join(", ")
                )));
            }
            p.images.retain(|i| i.name != lun);
            effects.push(Effect::RetireImage { pan, image: lun });
        }
        Change::ResizeLun { pan, lun, size } => {
            let p = pan_mut(&mut next, &pan)?;
            let img = p
                .images
                .iter_mut()
                .find(|i| i.name == lun)
                .ok_or_else(|| AdminError::NotFound(format!("no LUN {lun:?} in PAN {pan:?}")))?;
            let bytes = size_arg(&size, img.block_size)?;
            let now = capacity(&pan, &lun).ok_or_else(|| AdminError::NotFound(format!("LUN {lun:?} is not open")))?;
            if bytes < now {
                return Err(invalid(format!("LUN {lun:?} has {now} bytes; LUNs only grow")));
            }
            img.size = Size(bytes);
            effects.push(Effect::GrowImage { pan, image: lun, bytes });
        }
        Change::Map { pan, node, target, lun, image, access } => {
            let p = pan_mut(&mut next, &pan)?;
            if !p.images.iter().any(|i| i.name == image) {
                return Err(AdminError::NotFound(format!("no LUN {image:?} in PAN {pan:?}")));
            }
            let n = node_mut(p, &node)?;
            if let Some(m) = n.luns.iter().find(|m| (m.target, m.lun) == (target, lun)) {
                return Err(AdminError::Conflict(format!(
                    "node {node:?} already maps target {target} LUN {lun} to {:?}",
                    m.image
                )));
            }
            n.luns.push(LunMapEntry { target, lun, image, access });
            effects.push(Effect::SetNode { pan, node });
        }
        Change::Unmap { pan, node, target, lun } => {
            let n = node_mut(pan_mut(&mut next, &pan)?, &node)?;
            let Some(at) = n.luns.iter().position(|m| (m.target, m.lun) == (target, lun)) else {
                return Err(AdminError::NotFound(format!("node {node:?} maps nothing at target {target} LUN {lun}")));
            };
            let image = n.luns.remove(at).image;
            effects.push(Effect::SetNode { pan: pan.clone(), node: node.clone() });
            effects.push(Effect::ForgetLun { pan, image, node, target, lun });
        }
        Change::CreateLan { pan, lan } => {
            let p = pan_mut(&mut next, &pan)?;
            if p.lans.iter().any(|l| l.name == lan.name) {
                return Err(AdminError::Conflict(format!("PAN {pan:?} already has a LAN {:?}", lan.name)));
            }
            let name = lan.name.clone();
            p.lans.push(lan_config(lan));
            effects.push(Effect::StartLan { pan, lan: name });
        }
        Change::DeleteLan { pan, lan } => {
            let p = pan_mut(&mut next, &pan)?;
            if !p.lans.iter().any(|l| l.name == lan) {
                return Err(AdminError::NotFound(format!("no LAN {lan:?} in PAN {pan:?}")));
            }
            p.lans.retain(|l| l.name != lan);
            effects.push(Effect::StopLan { pan, lan });
        }
        Change::MoveIp { pan, lan, to } => {
            if let Some(e) = plan_move_ip(&mut next, &pan, &lan, to)? {
                effects.push(e);
            }
        }
        c @ (Change::CreateCluster { .. }
        | Change::ReplaceCluster { .. }
        | Change::DeleteCluster { .. }
        | Change::Drain { .. }) => effects.push(super::clusters::plan_cluster(&mut next, c)?),
        Change::Failover { pan, node, to } => return super::failover::plan_failover(next, &pan, &node, to),
    }
    next.validate().map_err(invalid)?;
    Ok(Plan { next, effects })
}

/// A new LUN: a new sparse image under `images/<pan>/` (`size`), or an existing file or
/// block device (`path`). Whether the path is usable is learnt when it is opened.
fn plan_lun(mut next: Config, pan: &str, lun: NewLun) -> Result<Plan, AdminError> {
    let p = pan_mut(&mut next, pan)?;
    if p.images.iter().any(|i| i.name == lun.name) {
        return Err(AdminError::Conflict(format!("PAN {pan:?} already has a LUN {:?}", lun.name)));
    }
    let block_size = BlockSize::new(lun.block_size.unwrap_or(BlockSize::default().bytes())).map_err(invalid)?.bytes();
    check_name("name", &lun.name).map_err(invalid)?;
    let mut image = ImageConfig {
        name: lun.name.clone(),
        path: PathBuf::new(),
        size: Size(u64::from(block_size)),
        block_size,
        thin: true,
        write_cache: true,
    };
    let create = match (&lun.size, &lun.path) {
        (Some(_), Some(_)) => {
            return Err(invalid("give either size (a new image) or path (an existing file), not both"))
        }
        (None, None) => return Err(invalid("give size for a new image, or path for an existing file")),
        (Some(size), None) => {
            image.size = Size(size_arg(size, block_size)?);
            image.path = Path::new("images").join(pan).join(format!("{}.img", lun.name));
            true
        }
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(invalid(format!("path {path:?} must be absolute")));
            }
            image.path = path;
            false
        }
    };
    // The image's size in the next config is the opened image's; it is added then.
    let effects = vec![
        Effect::OpenImage { pan: pan.to_string(), image: image.clone(), create },
        Effect::AddImage { pan: pan.to_string(), image: image.name.clone() },
    ];
    pan_mut(&mut next, pan)?.images.push(image);
    next.validate().map_err(invalid)?;
    Ok(Plan { next, effects })
}

/// Moves `to.ip` to `to.node` in `next`; the effect, or `None` when it is there already.
fn plan_move_ip(next: &mut Config, pan: &str, lan: &str, to: MoveIp) -> Result<Option<Effect>, AdminError> {
    let ip: Ipv4Addr =
        to.ip.trim().parse().map_err(|_| {
            invalid(format!("{:?} is not an IPv4 address (addresses move with ARP, so IPv4 only)", to.ip))
        })?;
    let p = pan_mut(next, pan)?;
    let l = p
        .lans
        .iter_mut()
        .find(|l| l.name == lan)
        .ok_or_else(|| AdminError::NotFound(format!("no LAN {lan:?} in PAN {pan:?}")))?;
    if !l.ports.iter().any(|port| port.node == to.node) {
        return Err(AdminError::NotFound(format!("node {:?} has no port on LAN {lan:?}", to.node)));
    }
    let owns = |cidr: &String| cidr.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok()) == Some(ip);
    let (from, cidr) = l
        .ports
        .iter()
        .find_map(|port| port.ips.iter().find(|c| owns(c)).map(|c| (port.node.clone(), c.clone())))
        .ok_or_else(|| AdminError::NotFound(format!("no port on LAN {lan:?} has {ip}")))?;
    if from == to.node {
        return Ok(None);
    }
    for port in &mut l.ports {
        if port.node == from {
            port.ips.retain(|c| !owns(c));
        } else if port.node == to.node {
            port.ips.push(cidr.clone());
        }
    }
    Ok(Some(Effect::MoveIp { pan: pan.to_string(), lan: lan.to_string(), ip, from, to: to.node }))
}

fn lan_config(lan: NewLan) -> netvirt::config::LanConfig {
    use netvirt::config::{PortConfig, PortKind};
    netvirt::config::LanConfig {
        name: lan.name,
        mtu: lan.mtu.unwrap_or(1500),
        ports: lan
            .ports
            .into_iter()
            .map(|p| PortConfig {
                node: p.node,
                kind: if p.netns.is_some() { PortKind::Tap } else { PortKind::Ring },
                netns: p.netns,
                ifname: None,
                ips: p.ips,
                promiscuous: false,
                mac: None,
            })
            .collect(),
        uplink: None,
        clusters: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Access;
    use web::model::NewPort;

    fn cfg() -> Config {
        let mut c = Config::embedded_default().unwrap();
        c.pans.truncate(1);
        c
    }

    fn no_capacity(_: &str, _: &str) -> Option<u64> {
        None
    }

    #[test]
    fn node_changes_update_the_registry_after_the_config_is_written() {
        let c = cfg();
        let before = c.clone();
        let pan = c.pans[0].name.clone();
        let create = Change::CreateNode {
            pan: pan.clone(),
            node: "n9".into(),
            credential: "c".repeat(24),
            uid: None,
            spare: false,
        };
        let p = plan(&c, create, no_capacity).unwrap();
        assert_eq!(p.effects, [Effect::SetNode { pan: pan.clone(), node: "n9".into() }]);
        assert!(p.effects.iter().all(|e| e.phase() == Phase::Commit));
        assert!(p.next.pans[0].nodes.iter().any(|n| n.name == "n9"));
        assert_eq!(c, before, "planning changes nothing");
    }

    #[test]
    fn deleting_a_node_forgets_each_of_its_luns_and_a_lan_port_blocks_it() {
        let mut c = cfg();
        c.pans[0].lans.clear();
        let pan = c.pans[0].name.clone();
        let node = c.pans[0].nodes[0].clone();
        let p = plan(&c, Change::DeleteNode { pan: pan.clone(), node: node.name.clone() }, no_capacity).unwrap();
        assert_eq!(p.effects[0], Effect::RemoveNode { pan: pan.clone(), node: node.name.clone() });
        assert_eq!(p.effects.len(), 1 + node.luns.len());
        let with_lan = cfg();
        let e = plan(&with_lan, Change::DeleteNode { pan, node: node.name }, no_capacity).unwrap_err();
        assert!(matches!(e, AdminError::Conflict(m) if m.contains("has a port on LAN")), "embedded LAN holds the node");
    }

    #[test]
    fn luns_grow_only_and_must_be_open() {
        let c = cfg();
        let (pan, img) = (c.pans[0].name.clone(), c.pans[0].images[0].name.clone());
        let resize = |size: &str| Change::ResizeLun { pan: pan.clone(), lun: img.clone(), size: size.into() };
        let e = plan(&c, resize("2GiB"), no_capacity).unwrap_err();
        assert!(matches!(e, AdminError::NotFound(m) if m.contains("is not open")));
        let e = plan(&c, resize("1MiB"), |_, _| Some(1 << 30)).unwrap_err();
        assert!(matches!(e, AdminError::Invalid(m) if m.contains("only grow")));
        let p = plan(&c, resize("2GiB"), |_, _| Some(1 << 30)).unwrap();
        assert_eq!(p.effects, [Effect::GrowImage { pan: pan.clone(), image: img.clone(), bytes: 2 << 30 }]);
        assert_eq!(p.effects[0].phase(), Phase::Prepare, "grown before the config says so");
        assert_eq!(p.next.pans[0].images[0].size, Size(2 << 30));
    }

    #[test]
    fn new_luns_open_before_the_config_and_join_the_server_after() {
        let c = cfg();
        let pan = c.pans[0].name.clone();
        let lun = |size: Option<&str>, path: Option<&str>, bs: Option<u32>| Change::CreateLun {
            pan: pan.clone(),
            lun: NewLun { name: "vol".into(), size: size.map(Into::into), path: path.map(Into::into), block_size: bs },
        };
        let p = plan(&c, lun(Some("8MiB"), None, None), no_capacity).unwrap();
        let [Effect::OpenImage { image, create: true, .. }, Effect::AddImage { .. }] = &p.effects[..] else {
            panic!("{:?}", p.effects)
        };
        assert_eq!(image.path, Path::new("images").join(&pan).join("vol.img"));
        assert_eq!((p.effects[0].phase(), p.effects[1].phase()), (Phase::Prepare, Phase::Commit));
        for (bad, why) in [
            (lun(Some("8MiB"), None, Some(1024)), "block size 1024"),
            (lun(None, Some("relative.img"), None), "must be absolute"),
            (lun(Some("8MiB"), Some("/x"), None), "not both"),
            (lun(Some("1000"), None, None), "multiple"),
        ] {
            let e = plan(&c, bad, no_capacity).unwrap_err();
            assert!(matches!(&e, AdminError::Invalid(m) if m.contains(why)), "{why}: {e:?}");
        }
    }

    #[test]
    fn maps_and_unmaps_name_the_node_and_moving_an_ip_to_its_owner_does_nothing() {
        let c = cfg();
        let pan = c.pans[0].name.clone();
        let node = c.pans[0].nodes[0].name.clone();
        let image = c.pans[0].images[0].name.clone();
        let map = Change::Map { pan: pan.clone(), node: node.clone(), target: 7, lun: 7, image, access: Access::Ro };
        let p = plan(&c, map, no_capacity).unwrap();
        assert_eq!(p.effects, [Effect::SetNode { pan: pan.clone(), node: node.clone() }]);
        let unmap = Change::Unmap { pan: pan.clone(), node: node.clone(), target: 9, lun: 9 };
        assert!(matches!(plan(&c, unmap, no_capacity), Err(AdminError::NotFound(_))));
        let lan = c.pans[0].lans[0].clone();
        let owner = &lan.ports[0];
        let ip = owner.ips[0].split('/').next().unwrap().to_string();
        let same =
            Change::MoveIp { pan: pan.clone(), lan: lan.name.clone(), to: MoveIp { ip, node: owner.node.clone() } };
        let p = plan(&c, same, no_capacity).unwrap();
        assert!(p.effects.is_empty() && p.next == c);
        let lan_change = Change::CreateLan {
            pan,
            lan: NewLan {
                name: "lan9".into(),
                mtu: None,
                ports: vec![NewPort { node, netns: None, ips: vec!["198.18.9.1/24".into()] }],
            },
        };
        let p = plan(&c, lan_change, no_capacity).unwrap();
        assert!(matches!(&p.effects[..], [Effect::StartLan { lan, .. }] if lan == "lan9"));
    }
}
