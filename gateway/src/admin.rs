//! The gateway side of the web admin: every change is validated against the whole config,
//! carried out on the running ring server, and persisted with an atomic config write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use metrics::{LunKey, LunSnapshot, Metrics};
use netvirt::network::NetShow;
use web::model::{
    Access as WebAccess, LanView, LunCounters, LunView, MapView, MoveIp, NewLan, NewLun, NodeView, Overview, PanView,
    PortView,
};
use web::{AdminError, Change};

use crate::config::{parse_size, Access, Config, ImageConfig, LunMapEntry, NodeConfig, PanConfig, Size};
use crate::engine::EngineKind;
use crate::net::NetControl;
use crate::ring::server::{LunControl, NodeEntry};
use crate::storage;

/// Largest LUN the admin creates or grows to (ext4's file size limit).
pub const MAX_LUN_BYTES: u64 = 16 << 40;

struct State {
    cfg: Config,
    /// The ring server's image list: (PAN, image name), or None once deleted.
    images: Vec<Option<(String, String)>>,
}

/// The running gateway as the web admin sees it.
pub struct GatewayAdmin {
    state: Mutex<State>,
    control: LunControl,
    metrics: Arc<Metrics>,
    net: Arc<dyn NetControl>,
    file: PathBuf,
    data_dir: PathBuf,
    kind: EngineKind,
}

impl std::fmt::Debug for GatewayAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAdmin").field("file", &self.file).finish_non_exhaustive()
    }
}

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

fn access_of(a: Access) -> WebAccess {
    match a {
        Access::Ro => WebAccess::Ro,
        Access::Rw => WebAccess::Rw,
    }
}

/// The ring server's entry for a configured node.
pub fn node_entry(pan: &str, node: &NodeConfig, image_index: impl Fn(&str) -> Option<usize>) -> NodeEntry {
    NodeEntry {
        pan: pan.to_string(),
        node: node.name.clone(),
        credential: node.credential.clone(),
        uid: node.uid,
        luns: node.luns.iter().filter_map(|m| Some((m.target, m.lun, image_index(&m.image)?, m.access))).collect(),
    }
}

fn add(c: &mut LunCounters, s: &LunSnapshot) {
    c.commands += s.commands();
    c.reads += s.reads;
    c.writes += s.writes;
    c.bytes_read += s.bytes_read;
    c.bytes_written += s.bytes_written;
    c.busy_seconds += s.busy_seconds;
}

impl GatewayAdmin {
    /// Admin over a started gateway: `cfg` as loaded from `file`, with `images` the ring
    /// server's image list in order (as [`storage::open_all`] opened them). The LAN and
    /// port metrics are read from `net` from now on.
    pub fn new(
        cfg: Config,
        file: PathBuf,
        data_dir: PathBuf,
        images: Vec<(String, String)>,
        control: LunControl,
        metrics: Arc<Metrics>,
        net: Arc<dyn NetControl>,
    ) -> anyhow::Result<GatewayAdmin> {
        let kind = EngineKind::resolve(cfg.engine).map_err(anyhow::Error::msg)?;
        let lans = net.clone();
        metrics.set_lan_sampler(Box::new(move || lans.show().map(|s| lan_samples(&s)).unwrap_or_default()));
        Ok(GatewayAdmin {
            state: Mutex::new(State { cfg, images: images.into_iter().map(Some).collect() }),
            control,
            metrics,
            net,
            file,
            data_dir,
            kind,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn image_index(&self, pan: &str, image: &str) -> Option<usize> {
        self.images.iter().position(|i| matches!(i, Some((p, n)) if p == pan && n == image))
    }

    fn entry(&self, pan: &str, node: &str) -> Option<NodeEntry> {
        let n = self.cfg.pans.iter().find(|p| p.name == pan)?.nodes.iter().find(|n| n.name == node)?;
        Some(node_entry(pan, n, |img| self.image_index(pan, img)))
    }
}

fn pan_mut<'a>(cfg: &'a mut Config, pan: &str) -> Result<&'a mut PanConfig, AdminError> {
    cfg.pans.iter_mut().find(|p| p.name == pan).ok_or_else(|| AdminError::NotFound(format!("no PAN {pan:?}")))
}

fn node_mut<'a>(pan: &'a mut PanConfig, node: &str) -> Result<&'a mut NodeConfig, AdminError> {
    let name = pan.name.clone();
    pan.nodes
        .iter_mut()
        .find(|n| n.name == node)
        .ok_or_else(|| AdminError::NotFound(format!("no node {node:?} in PAN {name:?}")))
}

fn size_arg(size: &str, block_size: u32) -> Result<u64, AdminError> {
    let bytes = parse_size(size).map_err(|e| invalid(format!("size {size:?}: {e}")))?;
    if bytes < u64::from(block_size) || bytes % u64::from(block_size) != 0 {
        return Err(invalid(format!("size {bytes} is not a positive multiple of the {block_size}-byte block size")));
    }
    if bytes > MAX_LUN_BYTES {
        return Err(invalid(format!("size {bytes} is above the largest LUN pangate creates ({MAX_LUN_BYTES} bytes)")));
    }
    Ok(bytes)
}

impl GatewayAdmin {
    /// Validates `next` and writes it atomically.
    fn persist(&self, next: &Config) -> Result<(), AdminError> {
        next.validate().map_err(invalid)?;
        next.save(&self.file).map_err(|e| AdminError::Failed(format!("writing {}: {e}", self.file.display())))
    }

    fn create_lun(&self, st: &mut State, pan: &str, lun: NewLun) -> Result<(), AdminError> {
        let mut next = st.cfg.clone();
        let p = pan_mut(&mut next, pan)?;
        if p.images.iter().any(|i| i.name == lun.name) {
            return Err(AdminError::Conflict(format!("PAN {pan:?} already has a LUN {:?}", lun.name)));
        }
        let block_size = lun.block_size.unwrap_or(512);
        if block_size != 512 && block_size != 4096 {
            return Err(invalid(format!("block size {block_size} is not supported; use 512 or 4096")));
        }
        crate::config::check_name("name", &lun.name).map_err(invalid)?;
        let mut img = ImageConfig {
            name: lun.name.clone(),
            path: PathBuf::new(),
            size: Size(u64::from(block_size)),
            block_size,
            thin: true,
            write_cache: true,
        };
        match (&lun.size, &lun.path) {
            (Some(_), Some(_)) => {
                return Err(invalid("give either size (a new image) or path (an existing file), not both"))
            }
            (None, None) => return Err(invalid("give size for a new image, or path for an existing file")),
            (Some(size), None) => {
                img.size = Size(size_arg(size, block_size)?);
                img.path = Path::new("images").join(pan).join(format!("{}.img", lun.name));
                let at = storage::image_path(&img, &self.data_dir);
                if at.exists() {
                    return Err(AdminError::Conflict(format!(
                        "a file already exists at {}; give it as path to use it",
                        at.display()
                    )));
                }
            }
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(invalid(format!("path {path:?} must be absolute")));
                }
                let meta = std::fs::metadata(&path)
                    .map_err(|e| AdminError::NotFound(format!("no usable file at {}: {e}", path.display())))?;
                use std::os::unix::fs::FileTypeExt;
                if !(meta.is_file() || meta.file_type().is_block_device()) {
                    return Err(invalid(format!("{} is neither a regular file nor a block device", path.display())));
                }
                let canon = path.canonicalize().map_err(io_error)?;
                let used = st
                    .cfg
                    .pans
                    .iter()
                    .flat_map(|p| &p.images)
                    .any(|i| storage::image_path(i, &self.data_dir).canonicalize().is_ok_and(|c| c == canon));
                // The gateway's own files (config, token, sockets) are never LUNs.
                let data_dir = self.data_dir.canonicalize().unwrap_or_else(|_| self.data_dir.clone());
                let own = canon.starts_with(&data_dir) && !canon.starts_with(data_dir.join("images"));
                if used || own {
                    return Err(AdminError::Conflict(format!("{} is already in use by the gateway", path.display())));
                }
                img.path = path;
            }
        }
        let mut open =
            storage::open_image(&next, self.kind, pan, &img, &self.data_dir).map_err(|e| invalid(format!("{e:#}")))?;
        let capacity = open.driver.unit().config().capacity_bytes();
        if capacity < u64::from(block_size) {
            return Err(invalid(format!("{} is smaller than one {block_size}-byte block", img.path.display())));
        }
        img.size = Size(capacity);
        pan_mut(&mut next, pan)?.images.push(img);
        if let Err(e) = self.persist(&next) {
            // A new image file we just created is removed again; an existing one is untouched.
            if lun.size.is_some() {
                let _ = std::fs::remove_file(&open.path);
            }
            return Err(e);
        }
        // The gateway's own nexus consumes the power-on unit attention, as at start-up.
        let _ = open.driver.run(0, &[0], &[0, 0, 0, 0, 0, 0], &[]);
        self.control.add_image(open).map_err(io_error)?;
        st.images.push(Some((pan.to_string(), lun.name)));
        st.cfg = next;
        Ok(())
    }

    fn change(&self, st: &mut State, change: Change) -> Result<(), AdminError> {
        match change {
            Change::CreatePan { pan } => {
                if st.cfg.pans.iter().any(|p| p.name == pan) {
                    return Err(AdminError::Conflict(format!("PAN {pan:?} exists")));
                }
                let mut next = st.cfg.clone();
                next.pans.push(PanConfig { name: pan, images: vec![], nodes: vec![], lans: vec![] });
                self.persist(&next)?;
                st.cfg = next;
            }
            Change::DeletePan { pan } => {
                let mut next = st.cfg.clone();
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
                self.persist(&next)?;
                st.cfg = next;
            }
            Change::CreateNode { pan, node, credential, uid } => {
                let mut next = st.cfg.clone();
                let p = pan_mut(&mut next, &pan)?;
                if p.nodes.iter().any(|n| n.name == node) {
                    return Err(AdminError::Conflict(format!("PAN {pan:?} already has a node {node:?}")));
                }
                p.nodes.push(NodeConfig { name: node.clone(), credential, uid, luns: vec![] });
                self.persist(&next)?;
                st.cfg = next;
                let entry = st.entry(&pan, &node).ok_or_else(|| AdminError::Failed("node vanished".into()))?;
                self.control.set_node(entry).map_err(io_error)?;
            }
            Change::DeleteNode { pan, node } => {
                let mut next = st.cfg.clone();
                let p = pan_mut(&mut next, &pan)?;
                let maps = node_mut(p, &node)?.luns.clone();
                if let Some(lan) = p.lans.iter().find(|l| l.ports.iter().any(|port| port.node == node)) {
                    return Err(AdminError::Conflict(format!(
                        "node {node:?} has a port on LAN {:?}; delete that LAN first",
                        lan.name
                    )));
                }
                p.nodes.retain(|n| n.name != node);
                self.persist(&next)?;
                st.cfg = next;
                self.control.remove_node(&pan, &node).map_err(io_error)?;
                for m in maps {
                    self.metrics.remove_lun(&LunKey {
                        pan: pan.clone(),
                        node: node.clone(),
                        target: m.target,
                        lun: m.lun,
                    });
                }
            }
            Change::CreateLun { pan, lun } => self.create_lun(st, &pan, lun)?,
            Change::DeleteLun { pan, lun } => {
                let mut next = st.cfg.clone();
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
                self.persist(&next)?;
                st.cfg = next;
                if let Some(i) = st.image_index(&pan, &lun) {
                    st.images[i] = None;
                    self.control.retire_image(i).map_err(io_error)?;
                }
            }
            Change::ResizeLun { pan, lun, size } => {
                let mut next = st.cfg.clone();
                let p = pan_mut(&mut next, &pan)?;
                let img = p
                    .images
                    .iter_mut()
                    .find(|i| i.name == lun)
                    .ok_or_else(|| AdminError::NotFound(format!("no LUN {lun:?} in PAN {pan:?}")))?;
                let bytes = size_arg(&size, img.block_size)?;
                let i = st
                    .image_index(&pan, &lun)
                    .ok_or_else(|| AdminError::NotFound(format!("LUN {lun:?} is not open")))?;
                let now = self.control.capacity(i).map(|(bs, blocks)| u64::from(bs) * blocks).unwrap_or(0);
                if bytes < now {
                    return Err(invalid(format!("LUN {lun:?} has {now} bytes; LUNs only grow")));
                }
                img.size = Size(bytes);
                self.control.grow(i, bytes).map_err(io_error)?;
                self.persist(&next)?;
                st.cfg = next;
            }
            Change::Map { pan, node, target, lun, image, access } => {
                let mut next = st.cfg.clone();
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
                let access = match access {
                    WebAccess::Ro => Access::Ro,
                    WebAccess::Rw => Access::Rw,
                };
                n.luns.push(LunMapEntry { target, lun, image, access });
                self.persist(&next)?;
                st.cfg = next;
                let entry = st.entry(&pan, &node).ok_or_else(|| AdminError::Failed("node vanished".into()))?;
                self.control.set_node(entry).map_err(io_error)?;
            }
            Change::Unmap { pan, node, target, lun } => {
                let mut next = st.cfg.clone();
                let n = node_mut(pan_mut(&mut next, &pan)?, &node)?;
                let before = n.luns.len();
                n.luns.retain(|m| (m.target, m.lun) != (target, lun));
                if n.luns.len() == before {
                    return Err(AdminError::NotFound(format!(
                        "node {node:?} maps nothing at target {target} LUN {lun}"
                    )));
                }
                self.persist(&next)?;
                st.cfg = next;
                let entry = st.entry(&pan, &node).ok_or_else(|| AdminError::Failed("node vanished".into()))?;
                self.control.set_node(entry).map_err(io_error)?;
                self.metrics.remove_lun(&LunKey { pan, node, target, lun });
            }
            Change::CreateLan { pan, lan } => {
                let mut next = st.cfg.clone();
                let p = pan_mut(&mut next, &pan)?;
                if p.lans.iter().any(|l| l.name == lan.name) {
                    return Err(AdminError::Conflict(format!("PAN {pan:?} already has a LAN {:?}", lan.name)));
                }
                let name = lan.name.clone();
                p.lans.push(lan_config(lan));
                next.validate().map_err(invalid)?;
                let plan = self.lan_plan(&next, &pan, &name)?;
                let live = self.net.add_lan(plan).map_err(io_error)?;
                if let Err(e) = self.persist(&next) {
                    if live {
                        let _ = self.net.remove_lan(&pan, &name);
                    }
                    return Err(e);
                }
                if !live {
                    tracing::info!(pan, lan = name, "netvirt is off on this host; the LAN starts with it");
                }
                st.cfg = next;
            }
            Change::DeleteLan { pan, lan } => {
                let mut next = st.cfg.clone();
                let p = pan_mut(&mut next, &pan)?;
                if !p.lans.iter().any(|l| l.name == lan) {
                    return Err(AdminError::NotFound(format!("no LAN {lan:?} in PAN {pan:?}")));
                }
                p.lans.retain(|l| l.name != lan);
                next.validate().map_err(invalid)?;
                let was_live = match self.net.remove_lan(&pan, &lan) {
                    Ok(live) => live,
                    // Configured but not running (it failed to start): only the config changes.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => return Err(io_error(e)),
                };
                if let Err(e) = self.persist(&next) {
                    if was_live {
                        if let Ok(plan) = self.lan_plan(&st.cfg, &pan, &lan) {
                            let _ = self.net.add_lan(plan);
                        }
                    }
                    return Err(e);
                }
                st.cfg = next;
            }
            Change::MoveIp { pan, lan, to } => self.move_ip(st, &pan, &lan, to)?,
        }
        Ok(())
    }
}

/// A failure of the running gateway (ring server or netvirt) as the admin reports it:
/// name clashes are conflicts, bad names invalid, missing things not found, the rest the
/// host's failure.
fn io_error(e: std::io::Error) -> AdminError {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::ResourceBusy => AdminError::Conflict(e.to_string()),
        std::io::ErrorKind::InvalidInput => invalid(e),
        std::io::ErrorKind::NotFound => AdminError::NotFound(e.to_string()),
        _ => AdminError::Failed(e.to_string()),
    }
}

impl GatewayAdmin {
    fn move_ip(&self, st: &mut State, pan: &str, lan: &str, to: MoveIp) -> Result<(), AdminError> {
        let ip: std::net::Ipv4Addr = to.ip.trim().parse().map_err(|_| {
            invalid(format!("{:?} is not an IPv4 address (addresses move with ARP, so IPv4 only)", to.ip))
        })?;
        let mut next = st.cfg.clone();
        let p = pan_mut(&mut next, pan)?;
        let l = p
            .lans
            .iter_mut()
            .find(|l| l.name == lan)
            .ok_or_else(|| AdminError::NotFound(format!("no LAN {lan:?} in PAN {pan:?}")))?;
        if !l.ports.iter().any(|port| port.node == to.node) {
            return Err(AdminError::NotFound(format!("node {:?} has no port on LAN {lan:?}", to.node)));
        }
        let owns =
            |cidr: &String| cidr.split('/').next().and_then(|a| a.parse::<std::net::Ipv4Addr>().ok()) == Some(ip);
        let (from, cidr) = l
            .ports
            .iter()
            .find_map(|port| port.ips.iter().find(|c| owns(c)).map(|c| (port.node.clone(), c.clone())))
            .ok_or_else(|| AdminError::NotFound(format!("no port on LAN {lan:?} has {ip}")))?;
        if from == to.node {
            return Ok(());
        }
        for port in &mut l.ports {
            if port.node == from {
                port.ips.retain(|c| !owns(c));
            } else if port.node == to.node {
                port.ips.push(cidr.clone());
            }
        }
        next.validate().map_err(invalid)?;
        let live = self.net.move_ip(pan, lan, ip, &to.node).map_err(io_error)?;
        if let Err(e) = self.persist(&next) {
            if live {
                let _ = self.net.move_ip(pan, lan, ip, &from);
            }
            return Err(e);
        }
        st.cfg = next;
        Ok(())
    }

    /// netvirt's plan for one LAN of `cfg` (assigning its ports' MACs).
    fn lan_plan(&self, cfg: &Config, pan: &str, lan: &str) -> Result<netvirt::network::LanPlan, AdminError> {
        crate::net::plan(cfg, &self.data_dir)
            .map_err(|e| AdminError::Failed(format!("planning the LAN: {e}")))?
            .into_iter()
            .find(|p| p.pan == pan && p.name == lan)
            .ok_or_else(|| AdminError::Failed(format!("LAN {lan:?} is missing from the plan")))
    }
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
    }
}

impl web::Admin for GatewayAdmin {
    fn overview(&self) -> Overview {
        let st = self.lock();
        let luns: HashMap<LunKey, LunSnapshot> = self.metrics.luns().into_iter().collect();
        let rings: HashMap<(String, String), metrics::RingSnapshot> = self.metrics.rings().into_iter().collect();
        let net = self.net.show();
        let mut out = Overview { serial: st.cfg.serial.clone(), pans: Vec::new(), netvirt: net.is_some() };
        for pan in &st.cfg.pans {
            let mut view = PanView { name: pan.name.clone(), ..Default::default() };
            let mut counters: HashMap<&str, LunCounters> = HashMap::new();
            for n in &pan.nodes {
                let ring = rings.get(&(pan.name.clone(), n.name.clone())).cloned().unwrap_or_default();
                view.nodes.push(NodeView {
                    name: n.name.clone(),
                    uid: n.uid,
                    maps: n
                        .luns
                        .iter()
                        .map(|m| MapView {
                            target: m.target,
                            lun: m.lun,
                            image: m.image.clone(),
                            access: access_of(m.access),
                        })
                        .collect(),
                    ring_connections: ring.connections,
                    outstanding_commands: ring.outstanding,
                    protocol_errors: ring.protocol_errors.iter().map(|e| e.1).sum(),
                });
                for m in &n.luns {
                    let key = LunKey { pan: pan.name.clone(), node: n.name.clone(), target: m.target, lun: m.lun };
                    if let Some(s) = luns.get(&key) {
                        add(counters.entry(m.image.as_str()).or_default(), s);
                    }
                }
            }
            for img in &pan.images {
                let (block_size, blocks) = st
                    .image_index(&pan.name, &img.name)
                    .and_then(|i| self.control.capacity(i))
                    .unwrap_or((img.block_size, img.size.0 / u64::from(img.block_size)));
                view.luns.push(LunView {
                    name: img.name.clone(),
                    path: storage::image_path(img, &self.data_dir).display().to_string(),
                    size_bytes: u64::from(block_size) * blocks,
                    block_size,
                    counters: counters.get(img.name.as_str()).copied().unwrap_or_default(),
                });
            }
            for lan in &pan.lans {
                let live = net.as_ref().and_then(|n| n.lans.iter().find(|l| l.pan == pan.name && l.lan == lan.name));
                view.lans.push(LanView {
                    name: lan.name.clone(),
                    mtu: lan.mtu,
                    arp_entries: live.map_or(0, |l| l.arp_entries as u64),
                    active: live.is_some(),
                    ports: lan
                        .ports
                        .iter()
                        .map(|p| {
                            let lp = live.and_then(|l| l.ports.iter().find(|x| x.node == p.node));
                            PortView {
                                node: p.node.clone(),
                                kind: match p.kind {
                                    netvirt::config::PortKind::Tap => "tap".into(),
                                    netvirt::config::PortKind::Ring => "ring".into(),
                                },
                                netns: p.netns.clone(),
                                mac: lp.map(|x| x.mac.to_string()).or_else(|| p.mac.map(|m| m.to_string())),
                                ips: p.ips.clone(),
                                frames_in: lp.map_or(0, |x| x.counters.frames_in),
                                frames_out: lp.map_or(0, |x| x.counters.frames_out),
                                drops: lp.map_or(0, |x| x.counters.drops.values().sum()),
                            }
                        })
                        .collect(),
                });
            }
            out.pans.push(view);
        }
        out
    }

    fn apply(&self, change: Change) -> Result<(), AdminError> {
        let mut st = self.lock();
        let what = change.summary();
        let result = self.change(&mut st, change);
        match &result {
            Ok(()) => tracing::info!(change = %what, "admin change applied"),
            Err(e) => tracing::info!(change = %what, error = %e, "admin change refused"),
        }
        result
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

/// LAN samples for the metrics renderer, from netvirt's show.
pub fn lan_samples(show: &NetShow) -> Vec<metrics::LanSample> {
    use metrics::{LanSample, PortSample, TrafficSample};
    let t = |c: &netvirt::counters::TrafficSnapshot| TrafficSample {
        frames_in: c.frames_in,
        bytes_in: c.bytes_in,
        frames_out: c.frames_out,
        bytes_out: c.bytes_out,
        drops: c.drops.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    };
    show.lans
        .iter()
        .map(|l| LanSample {
            pan: l.pan.clone(),
            lan: l.lan.clone(),
            arp_entries: l.arp_entries as u64,
            traffic: t(&l.counters),
            ports: l
                .ports
                .iter()
                .map(|p| PortSample { port: p.node.clone(), traffic: t(&p.counters) })
                .chain(l.uplink.iter().map(|u| PortSample { port: "uplink".into(), traffic: t(&u.counters) }))
                .collect(),
        })
        .collect()
}
