//! The control node's TOML configuration: PANs, their images, and each node's LUN map.
//!
//! Loading validates everything up front; an error names the file, the key and the reason,
//! and says what would fix it.

mod gateway;
mod iscsi;
mod node;
pub use gateway::{GatewayConfig, DEFAULT_LEASE_MS, MAX_GATEWAYS};
pub use iscsi::{valid_iscsi_name, IscsiConfig};
pub use node::{FailoverMode, NodeConfig, DEFAULT_FAILOVER_AFTER};

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::EngineKind;
use crate::persist;

/// A configuration that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the config came from one.
    pub file: Option<PathBuf>,
    /// Dotted path of the offending key, e.g. `pan[0].node[1].luns[2].image`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
    /// What would fix it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(f, "{}: {} (fix: {})", self.key, self.reason, self.fix)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError { file: None, key: key.into(), reason: reason.into(), fix: fix.into() }
}

/// A byte size: an integer, or a string like `"1GiB"`, `"512MiB"`, `"4096"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "SizeRepr")]
pub struct Size(pub u64);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Size, String> {
        match r {
            SizeRepr::Bytes(n) => Ok(Size(n)),
            SizeRepr::Text(s) => parse_size(&s).map(Size),
        }
    }
}

impl From<Size> for SizeRepr {
    fn from(s: Size) -> SizeRepr {
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if s.0 != 0 && s.0.is_multiple_of(1 << shift) {
                return SizeRepr::Text(format!("{}{unit}", s.0 >> shift));
            }
        }
        SizeRepr::Bytes(s.0)
    }
}

/// The largest image, for the config and the admin API alike: 16 TiB, ext4's largest file
/// with 4 KiB blocks (XFS and block devices allow more, but one limit everywhere is worth
/// more than the headroom).
pub const MAX_IMAGE_BYTES: u64 = 16 << 40;

/// Parses `"<n>[KiB|MiB|GiB|TiB|K|M|G|T]"` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like \"1GiB\" or 4096"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Access a node has to a mapped LUN: one type for the config, the API and the ring server.
pub use web::model::Access;

/// A backing image owned by a PAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Name, unique within the PAN.
    pub name: String,
    /// File or block device; relative paths are under the data directory.
    pub path: PathBuf,
    /// Size to create a missing file with.
    pub size: Size,
    /// Logical block size: 512 or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Thin provisioning (UNMAP, deallocated extents).
    #[serde(default = "yes")]
    pub thin: bool,
    /// Write cache enabled at power on.
    #[serde(default = "yes")]
    pub write_cache: bool,
}

/// One (target, LUN) → image entry of a node's map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunMapEntry {
    /// Virtual SCSI target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// Name of an image of the same PAN.
    pub image: String,
    /// Access granted.
    pub access: Access,
}

/// Where and how the ring server listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Unix socket nodes connect to; relative to the data directory.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Microseconds the worker keeps polling after activity before it sleeps. Where such
    /// polls keep running out (large transfers), it sleeps at once but for a probe now and
    /// then, so polling does not take the core the transfers need.
    #[serde(default = "default_spin_us")]
    pub spin_us: u64,
    /// Worker threads; 0 (the default) means one per core.
    #[serde(default)]
    pub workers: usize,
    /// Directories image files may lie under, besides the data directory's `images/`
    /// (always one); relative to the data directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_roots: Vec<PathBuf>,
    /// Block devices that may be images; no other device may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_devices: Vec<PathBuf>,
    /// Queue pairs one node may have open at once; more are refused at the handshake.
    #[serde(default = "default_queue_pairs")]
    pub max_queue_pairs_per_node: u32,
    /// Shared memory (rings, data and staging areas) one node's queue pairs may hold.
    #[serde(default = "default_node_memory")]
    pub max_memory_per_node: Size,
    /// With `[[gateway]]`: how long a gateway may go without renewing its lease before a
    /// peer fences it and takes its LUNs over.
    #[serde(default = "gateway::default_lease_ms")]
    pub lease_ms: u64,
}

fn default_queue_pairs() -> u32 {
    crate::ring::server::quota::Limits::default().queue_pairs
}

fn default_node_memory() -> Size {
    Size(crate::ring::server::quota::Limits::default().bytes)
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            socket: default_socket(),
            spin_us: default_spin_us(),
            workers: 0,
            image_roots: Vec::new(),
            block_devices: Vec::new(),
            max_queue_pairs_per_node: default_queue_pairs(),
            max_memory_per_node: default_node_memory(),
            lease_ms: DEFAULT_LEASE_MS,
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("pangate.sock")
}

fn default_spin_us() -> u64 {
    shmem::DEFAULT_SPIN.as_micros() as u64
}

/// A processing area network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanConfig {
    /// Name, unique on this control node.
    pub name: String,
    /// Images the PAN's nodes may map.
    #[serde(default, rename = "image")]
    pub images: Vec<ImageConfig>,
    /// Nodes of the PAN.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// The PAN's virtual LANs.
    #[serde(default, rename = "lan")]
    pub lans: Vec<netvirt::config::LanConfig>,
}

/// Where netvirt listens for ring clients and `pangate net show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unix socket; relative to the data directory.
    #[serde(default = "default_net_socket")]
    pub socket: PathBuf,
    /// Microseconds the data path polls for frames after traffic before it sleeps (0:
    /// it sleeps at once). Polls that keep finding nothing back off by themselves.
    #[serde(default = "default_net_spin_us")]
    pub spin_us: u64,
    /// Data-path threads; 0 = one per core. A LAN of TAPs alone gets a queue per thread
    /// on every TAP; a LAN with ring ports or an uplink runs on the first.
    #[serde(default)]
    pub workers: usize,
    /// Let the kernel forward unicast between TAP-kind ports by itself, past the data-path
    /// threads, where the kernel can (veth, `tc` u32 and mirred, eBPF); the switch still
    /// decides everything else. `false`: every frame goes through the threads.
    #[serde(default = "default_true")]
    pub fastpath: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { socket: default_net_socket(), spin_us: default_net_spin_us(), workers: 0, fastpath: true }
    }
}

fn default_true() -> bool {
    true
}

fn default_net_spin_us() -> u64 {
    netvirt::network::DEFAULT_SPIN.as_micros() as u64
}

fn default_net_socket() -> PathBuf {
    PathBuf::from("net.sock")
}

/// The web admin and the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the admin pages, the API and `/metrics`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address of the admin listener (loopback by default).
    #[serde(default = "default_web_listen")]
    pub listen: String,
    /// A second listener with only `/metrics`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// The admin token; when absent, one is generated into DATA_DIR/admin-token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Break each LUN's metrics down by node and map entry (labels node, target,
    /// node_lun). Off: one set of series per LUN, however many nodes map it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_node_metrics: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: default_web_listen(),
            metrics_listen: None,
            token: None,
            per_node_metrics: false,
        }
    }
}

fn default_web_listen() -> String {
    "127.0.0.1:9180".to_string()
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The control node's serial, the root of LUN identities and MAC addresses.
    pub serial: String,
    /// Where images and state live; relative to the config file's directory.
    pub data_dir: PathBuf,
    /// Engine for every image.
    #[serde(default)]
    pub engine: EngineKind,
    /// Open images with `O_DIRECT`.
    #[serde(default)]
    pub direct_io: bool,
    /// The ring server.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The netvirt socket.
    #[serde(default)]
    pub net: NetConfig,
    /// The web admin and metrics.
    #[serde(default)]
    pub web: WebConfig,
    /// The iSCSI target.
    #[serde(default)]
    pub iscsi: IscsiConfig,
    /// Redundant gateways sharing this config and the images (none: one gateway).
    #[serde(default, rename = "gateway", skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayConfig>,
    /// The PANs.
    #[serde(default, rename = "pan")]
    pub pans: Vec<PanConfig>,
}

fn default_block_size() -> u32 {
    512
}

fn yes() -> bool {
    true
}

/// Checks a PAN, node, image or LAN name; `key` names it in the error.
pub fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!("{name:?} is not a valid name"),
            "use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

impl Config {
    /// Parses and validates TOML text. `file` is only used in error messages.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let with_file = |mut e: ConfigError| {
            e.file = file.map(Path::to_path_buf);
            e
        };
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let key = e.span().map_or_else(|| "(document)".to_string(), |s| locate(text, s.start));
            with_file(err(key, e.message().to_string(), "see the config format in README.md"))
        })?;
        cfg.validate().map_err(with_file)?;
        Ok(cfg)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            key: "(file)".into(),
            reason: e.to_string(),
            fix: "check the path and its permissions".into(),
        })?;
        Config::parse(&text, Some(path))
    }

    /// Checks names, uniqueness, geometry and that every map entry names an image of its
    /// own PAN (so a LUN can be shared within a PAN but never across PANs).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.serial.is_empty() || self.serial.len() > 32 || !self.serial.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err("serial", "must be 1-32 printable ASCII characters", "set serial = \"pg-<hex>\""));
        }
        for (key, addr) in std::iter::once(("web.listen", Some(&self.web.listen)))
            .chain([("web.metrics_listen", self.web.metrics_listen.as_ref())])
        {
            if let Some(a) = addr {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(err(
                        key,
                        format!("{a:?} is not an address and port"),
                        "write it as \"127.0.0.1:9180\"",
                    ));
                }
            }
        }
        if self.web.token.as_ref().is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic())) {
            return Err(err(
                "web.token",
                "shorter than 16 characters or not printable ASCII",
                "use a long random secret, e.g. `openssl rand -hex 32`, or leave it out to have one generated",
            ));
        }
        if self.storage.workers > 256 {
            return Err(err(
                "storage.workers",
                format!("{} worker threads is more than 256", self.storage.workers),
                "set it to the number of cores to use, or 0 for one per core",
            ));
        }
        if self.net.workers > 64 {
            return Err(err(
                "net.workers",
                format!("{} data-path threads is more than 64", self.net.workers),
                "set it to the number of cores to use, or 0 for one per core",
            ));
        }
        if self.net.spin_us > 100_000 {
            return Err(err(
                "net.spin_us",
                format!("{} µs of polling after every burst would hold a core for nothing", self.net.spin_us),
                "use at most 100000 (the default is 3000; 0 sleeps at once)",
            ));
        }
        if self.storage.max_queue_pairs_per_node == 0 {
            return Err(err(
                "storage.max_queue_pairs_per_node",
                "0 would refuse every node",
                "allow at least 1 (the default is 16)",
            ));
        }
        if self.storage.max_memory_per_node.0 < 4 << 20 {
            return Err(err(
                "storage.max_memory_per_node",
                format!("{} bytes cannot hold one queue pair", self.storage.max_memory_per_node.0),
                "allow at least \"4MiB\" (the default is \"2GiB\")",
            ));
        }
        self.validate_iscsi()?;
        self.validate_gateways()?;
        let mut iqns = HashSet::new();
        let mut pans = HashSet::new();
        let mut taps = HashSet::new();
        for (p, pan) in self.pans.iter().enumerate() {
            let pk = format!("pan[{p}]");
            check_name(&format!("{pk}.name"), &pan.name)?;
            if !pans.insert(&pan.name) {
                return Err(err(
                    format!("{pk}.name"),
                    format!("PAN {:?} is defined twice", pan.name),
                    "give each PAN a unique name",
                ));
            }
            let mut images = HashSet::new();
            for (i, img) in pan.images.iter().enumerate() {
                let ik = format!("{pk}.image[{i}]");
                check_name(&format!("{ik}.name"), &img.name)?;
                if !images.insert(img.name.as_str()) {
                    return Err(err(
                        format!("{ik}.name"),
                        format!("image {:?} is defined twice in PAN {:?}", img.name, pan.name),
                        "give each image of a PAN a unique name",
                    ));
                }
                if scsi::BlockSize::new(img.block_size).is_err() {
                    return Err(err(
                        format!("{ik}.block_size"),
                        format!("{} is not supported", img.block_size),
                        "use 512 or 4096",
                    ));
                }
                if img.size.0 < u64::from(img.block_size) || img.size.0 % u64::from(img.block_size) != 0 {
                    return Err(err(
                        format!("{ik}.size"),
                        format!(
                            "{} bytes is not a positive multiple of the {}-byte block size",
                            img.size.0, img.block_size
                        ),
                        "use a size such as \"1GiB\"",
                    ));
                }
                if img.size.0 > MAX_IMAGE_BYTES {
                    return Err(err(
                        format!("{ik}.size"),
                        format!("{} bytes is more than the largest image, 16 TiB", img.size.0),
                        "use a size up to \"16TiB\"",
                    ));
                }
            }
            let mut nodes = HashSet::new();
            for (n, node) in pan.nodes.iter().enumerate() {
                let nk = format!("{pk}.node[{n}]");
                check_name(&format!("{nk}.name"), &node.name)?;
                if !nodes.insert(&node.name) {
                    return Err(err(
                        format!("{nk}.name"),
                        format!("node {:?} is defined twice in PAN {:?}", node.name, pan.name),
                        "give each node of a PAN a unique name",
                    ));
                }
                if node.credential.len() < 16 {
                    return Err(err(
                        format!("{nk}.credential"),
                        "shorter than 16 characters",
                        "use a long random secret, e.g. `openssl rand -hex 16`",
                    ));
                }
                self.validate_iscsi_identity(&nk, node, &mut iqns)?;
                node::validate_failover(&nk, pan, node)?;
                let mut addrs = HashSet::new();
                for (l, m) in node.luns.iter().enumerate() {
                    let lk = format!("{nk}.luns[{l}]");
                    if m.lun >= 16384 {
                        return Err(err(
                            format!("{lk}.lun"),
                            format!("{} is beyond flat LUN addressing", m.lun),
                            "use a LUN below 16384",
                        ));
                    }
                    if !addrs.insert((m.target, m.lun)) {
                        return Err(err(
                            lk,
                            format!("target {} LUN {} is mapped twice", m.target, m.lun),
                            "map each (target, LUN) once per node",
                        ));
                    }
                    if !images.contains(m.image.as_str()) {
                        return Err(err(
                            format!("{lk}.image"),
                            format!("no image {:?} in PAN {:?}", m.image, pan.name),
                            "name an image defined under this PAN's [[pan.image]]",
                        ));
                    }
                }
            }
            let node_names: HashSet<&str> = pan.nodes.iter().map(|n| n.name.as_str()).collect();
            let mut lans = HashSet::new();
            for (l, lan) in pan.lans.iter().enumerate() {
                let lk = format!("{pk}.lan[{l}]");
                check_name(&format!("{lk}.name"), &lan.name)?;
                if !lans.insert(lan.name.as_str()) {
                    return Err(err(
                        format!("{lk}.name"),
                        format!("LAN {:?} is defined twice in PAN {:?}", lan.name, pan.name),
                        "give each LAN of a PAN a unique name",
                    ));
                }
                lan.validate(&node_names).map_err(|e| err(format!("{lk}.{}", e.key), e.reason, e.fix))?;
                for (i, port) in lan.ports.iter().enumerate() {
                    if port.kind != netvirt::config::PortKind::Tap {
                        continue;
                    }
                    let ifname =
                        port.ifname.clone().unwrap_or_else(|| netvirt::config::default_ifname(&lan.name, &port.node));
                    if !taps.insert((port.netns.clone(), ifname.clone())) {
                        return Err(err(
                            format!("{lk}.port[{i}].ifname"),
                            format!("interface {ifname:?} is used by two ports in one namespace"),
                            "give each TAP in a namespace its own name",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The data directory, resolved against the directory holding the config file.
    pub fn data_dir_from(&self, config_dir: &Path) -> PathBuf {
        if self.data_dir.is_absolute() {
            self.data_dir.clone()
        } else {
            config_dir.join(&self.data_dir)
        }
    }

    /// The embedded default: a demo PAN with two nodes, each with its own 1 GiB image at
    /// target 0 LUN 0, and a shared read-only image at LUN 1, and one LAN joining the two
    /// nodes' network namespaces (`pg-demo-a`, `pg-demo-b`) at 198.18.0.1 and .2.
    pub fn embedded_default() -> std::io::Result<Config> {
        let image = |name: &str| ImageConfig {
            name: name.into(),
            path: PathBuf::from(format!("images/demo-{name}.img")),
            size: Size(1 << 30),
            block_size: 512,
            thin: true,
            write_cache: true,
        };
        let node = |name: &str, disk: &str| -> std::io::Result<NodeConfig> {
            Ok(NodeConfig {
                iqn: Some(format!("iqn.2026-12.io.pangate.demo:{name}")),
                luns: vec![
                    LunMapEntry { target: 0, lun: 0, image: disk.into(), access: Access::Rw },
                    LunMapEntry { target: 0, lun: 1, image: "shared".into(), access: Access::Ro },
                ],
                ..NodeConfig::new(name, &persist::random_hex(16)?)
            })
        };
        let port = |node: &str, ns: &str, ip: &str| netvirt::config::PortConfig {
            node: node.into(),
            kind: netvirt::config::PortKind::Tap,
            netns: Some(ns.into()),
            ifname: Some("eth0".into()),
            ips: vec![ip.into()],
            promiscuous: false,
            mac: None,
        };
        Ok(Config {
            serial: format!("pg-{}", persist::random_hex(6)?),
            data_dir: PathBuf::from("."),
            engine: EngineKind::Auto,
            direct_io: false,
            storage: StorageConfig::default(),
            net: NetConfig::default(),
            web: WebConfig::default(),
            iscsi: IscsiConfig { listen: vec!["127.0.0.1:3260".into()], ..IscsiConfig::default() },
            gateways: Vec::new(),
            pans: vec![PanConfig {
                name: "demo".into(),
                images: vec![image("disk-a"), image("disk-b"), image("shared")],
                nodes: vec![node("node-a", "disk-a")?, node("node-b", "disk-b")?],
                lans: vec![netvirt::config::LanConfig {
                    name: "lan0".into(),
                    mtu: 1500,
                    ports: vec![
                        port("node-a", "pg-demo-a", "198.18.0.1/24"),
                        port("node-b", "pg-demo-b", "198.18.0.2/24"),
                    ],
                    uplink: None,
                    clusters: Vec::new(),
                }],
            }],
        })
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Writes the config atomically with mode 0600 (it holds credentials).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        persist::write_atomic(path, self.to_toml().as_bytes(), 0o600)
    }
}

/// A rough key path for a byte offset in TOML text: the nearest table header and the key
/// on that line, for parse errors that carry only a position.
fn locate(text: &str, at: usize) -> String {
    let upto = &text[..at.min(text.len())];
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line_no = upto.matches('\n').count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let table = upto.lines().rev().find(|l| l.trim_start().starts_with('[')).map(str::trim).unwrap_or("");
    if key.is_empty() || key.starts_with('[') {
        format!("line {line_no}")
    } else if table.is_empty() {
        format!("{key} (line {line_no})")
    } else {
        format!("{table} {key} (line {line_no})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
serial = "pg-test"
data_dir = "/tmp/x"

[[pan]]
name = "p1"

[[pan.image]]
name = "d0"
path = "d0.img"
size = "64MiB"

[[pan.node]]
name = "n1"
credential = "0123456789abcdef0123"
luns = [{ target = 0, lun = 0, image = "d0", access = "rw" }]
"#;

    #[test]
    fn parses_sizes_and_defaults() {
        let c = Config::parse(GOOD, None).unwrap();
        assert_eq!(c.pans[0].images[0].size, Size(64 << 20));
        assert_eq!(c.pans[0].images[0].block_size, 512);
        assert_eq!(c.engine, EngineKind::Auto);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn default_round_trips_and_validates() {
        let c = Config::embedded_default().unwrap();
        let again = Config::parse(&c.to_toml(), None).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn errors_name_file_key_reason_and_fix() {
        let bad = GOOD.replace("image = \"d0\"", "image = \"d9\"");
        let e = Config::parse(&bad, Some(Path::new("/etc/pangate.toml"))).unwrap_err();
        assert_eq!(e.key, "pan[0].node[0].luns[0].image");
        let text = e.to_string();
        assert!(text.starts_with("/etc/pangate.toml: pan[0].node[0].luns[0].image: no image \"d9\""), "{text}");
        assert!(text.contains("fix:"), "{text}");

        let e = Config::parse(&GOOD.replace("\"64MiB\"", "\"64MB\""), None).unwrap_err();
        assert!(e.reason.contains("unknown size unit"), "{e}");
        assert!(e.key.contains("size"), "{e}");

        let e = Config::parse(&GOOD.replace("credential = \"0123456789abcdef0123\"", "credential = \"x\""), None)
            .unwrap_err();
        assert_eq!(e.key, "pan[0].node[0].credential");

        let e = Config::parse(&GOOD.replace("name = \"p1\"", "name = \"P 1\""), None).unwrap_err();
        assert_eq!(e.key, "pan[0].name");

        let e = Config::parse(&format!("{GOOD}\nbogus = 1\n"), None).unwrap_err();
        assert!(e.reason.contains("unknown field"), "{e}");
    }

    #[test]
    fn an_image_larger_than_a_file_can_be_is_refused_and_the_largest_saves() {
        // 2^64 - 512 bytes: a whole number of blocks, but no file can be that large and TOML
        // cannot hold it (saving it once panicked, as this input to the `config` fuzz target
        // showed).
        let e = Config::parse(&GOOD.replace("\"64MiB\"", "\"18446744073709551104\""), None).unwrap_err();
        assert_eq!(e.key, "pan[0].image[0].size", "{e}");
        assert!(e.reason.contains("more than the largest image"), "{e}");
        // The API's limit too: 17 TiB is refused (it once passed check-config and failed
        // with EFBIG at start-up), 16 TiB is the largest.
        let e = Config::parse(&GOOD.replace("\"64MiB\"", "\"17TiB\""), None).unwrap_err();
        assert_eq!(e.key, "pan[0].image[0].size", "{e}");
        assert_eq!(MAX_IMAGE_BYTES, crate::admin::MAX_LUN_BYTES);
        let largest = MAX_IMAGE_BYTES / 512 * 512;
        let c = Config::parse(&GOOD.replace("\"64MiB\"", &format!("\"{largest}\"")), None).unwrap();
        assert_eq!(c.pans[0].images[0].size, Size(largest));
        assert_eq!(Config::parse(&c.to_toml(), None).unwrap(), c);
    }

    #[test]
    fn a_node_cannot_map_another_pans_image() {
        let two = format!("{GOOD}\n[[pan]]\nname = \"p2\"\n[[pan.node]]\nname = \"n1\"\ncredential = \"0123456789abcdef0123\"\nluns = [{{ target = 0, lun = 0, image = \"d0\", access = \"ro\" }}]\n");
        let e = Config::parse(&two, None).unwrap_err();
        assert_eq!(e.key, "pan[1].node[0].luns[0].image");
    }
}
