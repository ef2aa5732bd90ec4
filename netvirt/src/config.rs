//! How a PAN's LANs are written in pangate's TOML config (`[[pan.lan]]`), and their checks.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::switch::MTU_RANGE;

/// One virtual LAN of a PAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanConfig {
    /// Name, unique within the PAN.
    pub name: String,
    /// Largest Ethernet payload; 1500 unless jumbo frames are wanted (up to 9216).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Member ports, one per node.
    #[serde(default, rename = "port")]
    pub ports: Vec<PortConfig>,
    /// Connection to an outside network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkConfig>,
    /// Service clusters: addresses several member nodes serve.
    #[serde(default, rename = "cluster", skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterConfig>,
}

/// A service cluster: one address of the LAN whose configured ports several members serve
/// (see [`crate::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name, unique within the LAN.
    pub name: String,
    /// The cluster's IPv4 address, which no port of the LAN has.
    pub ip: String,
    /// Its served ports.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// A transport protocol as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtoConfig {
    #[default]
    Tcp,
    Udp,
}

/// How a service checks its backends, besides their ports being attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect from the gateway to the backend's own address and the service port.
    Tcp,
}

/// One served port of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The port, 1-65535.
    pub port: u16,
    /// "tcp" (the default) or "udp".
    #[serde(default)]
    pub proto: ProtoConfig,
    /// The member nodes that serve it, each with a port on this LAN.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Nodes of `nodes` that take no new connections and keep the ones they have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// Keep each client on one backend.
    #[serde(default)]
    pub sticky: bool,
    /// How long a client stays on its backend after its last new connection ("10m").
    #[serde(default = "default_sticky_timeout")]
    pub sticky_timeout: String,
    /// Health check beyond the backend's port being attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckKind>,
    /// Time between checks of a backend ("2s").
    #[serde(default = "default_check_interval")]
    pub check_interval: String,
    /// Failed checks in a row that take a backend down.
    #[serde(default = "default_check_failures")]
    pub check_failures: u32,
    /// Passed checks in a row that bring it back.
    #[serde(default = "default_check_passes")]
    pub check_passes: u32,
}

fn default_sticky_timeout() -> String {
    "10m".into()
}

fn default_check_interval() -> String {
    "2s".into()
}

fn default_check_failures() -> u32 {
    3
}

fn default_check_passes() -> u32 {
    2
}

/// Parses a duration as the config writes it: "500ms", "10m", "1h 30m".
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

/// How a node's port reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A TAP device in the node's network namespace, for an unmodified kernel stack.
    #[default]
    Tap,
    /// Shared-memory packet rings, for processes that link the netvirt client.
    Ring,
}

/// A node's port on a LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Node of the same PAN.
    pub node: String,
    /// TAP or ring.
    #[serde(default)]
    pub kind: PortKind,
    /// Network namespace for a TAP, created if missing; none means the gateway's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Interface name of a TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// Registered addresses, with prefix length (`198.18.0.1/24`).
    #[serde(default)]
    pub ips: Vec<String>,
    /// May see all traffic on the LAN.
    #[serde(default)]
    pub promiscuous: bool,
    /// A fixed MAC instead of an assigned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
}

/// Uplink modes as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkModeConfig {
    /// Virtual MACs visible outside.
    #[default]
    Unfiltered,
    /// One external MAC; inbound delivered by destination IP.
    Filtered,
}

/// A LAN's connection to a host interface (a NIC or a veth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Host interface in the gateway's namespace.
    pub interface: String,
    /// 802.1Q VLAN ID (1-4094) the LAN's frames carry outside; none sends them untagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// Filtered or unfiltered.
    #[serde(default)]
    pub mode: UplinkModeConfig,
    /// External MAC in filtered mode; defaults to the interface's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
}

fn default_mtu() -> u32 {
    1500
}

/// A LAN setting that is wrong: the key path, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanConfigError {
    /// Key path below the LAN (`port[1].ips[0]`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
    /// How to fix it.
    pub fix: String,
}

fn bad(key: String, reason: impl Into<String>, fix: impl Into<String>) -> LanConfigError {
    LanConfigError { key, reason: reason.into(), fix: fix.into() }
}

/// Parses `198.18.0.1/24` (the prefix defaults to a host route's).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => {
            p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("{s:?} has a bad prefix length"))?
        }
        None => max,
    };
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        return Err(format!("{s:?} cannot be a port's address"));
    }
    Ok((ip, prefix))
}

/// Whether `name` can be a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl LanConfig {
    /// Checks the LAN against the PAN's node names. Errors name keys relative to the LAN.
    pub fn validate(&self, nodes: &HashSet<&str>) -> Result<(), LanConfigError> {
        if !MTU_RANGE.contains(&self.mtu) {
            return Err(bad(
                "mtu".into(),
                format!("{} is outside {}..={}", self.mtu, MTU_RANGE.start(), MTU_RANGE.end()),
                "use 1500, or up to 9216 for jumbo frames",
            ));
        }
        let mut seen_nodes = HashSet::new();
        let mut ips = HashSet::new();
        let mut taps = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let k = format!("port[{i}]");
            if !nodes.contains(p.node.as_str()) {
                return Err(bad(
                    format!("{k}.node"),
                    format!("no node {:?} in this PAN", p.node),
                    "name a [[pan.node]]",
                ));
            }
            if !seen_nodes.insert(p.node.as_str()) {
                return Err(bad(
                    format!("{k}.node"),
                    format!("node {:?} has two ports on this LAN", p.node),
                    "give a node one port per LAN",
                ));
            }
            for (j, s) in p.ips.iter().enumerate() {
                let (ip, _) = parse_cidr(s)
                    .map_err(|r| bad(format!("{k}.ips[{j}]"), r, "write an address such as \"198.18.0.1/24\""))?;
                if !ips.insert(ip) {
                    return Err(bad(
                        format!("{k}.ips[{j}]"),
                        format!("{ip} is registered twice"),
                        "give each address to one port",
                    ));
                }
            }
            if let Some(m) = p.mac {
                if m.is_group() {
                    return Err(bad(format!("{k}.mac"), format!("{m} is a group address"), "use a unicast MAC"));
                }
            }
            match p.kind {
                PortKind::Tap => {
                    let ifname = p.ifname.clone().unwrap_or_else(|| default_ifname(&self.name, &p.node));
                    if !valid_ifname(&ifname) {
                        return Err(bad(
                            format!("{k}.ifname"),
                            format!("{ifname:?} is not an interface name"),
                            "use up to 15 of a-z, 0-9, '-', '_', '.'",
                        ));
                    }
                    if let Some(ns) = &p.netns {
                        if !valid_netns(ns) {
                            return Err(bad(
                                format!("{k}.netns"),
                                format!("{ns:?} is not a namespace name"),
                                "use 1-63 of a-z, A-Z, 0-9, '-', '_' and '.', starting with a letter or digit",
                            ));
                        }
                    }
                    if !taps.insert((p.netns.clone(), ifname.clone())) {
                        return Err(bad(
                            format!("{k}.ifname"),
                            format!("{ifname:?} is used twice in one namespace"),
                            "give each TAP its own name",
                        ));
                    }
                }
                PortKind::Ring => {
                    if p.netns.is_some() || p.ifname.is_some() {
                        return Err(bad(
                            k,
                            "a ring port has no namespace or interface",
                            "drop netns and ifname, or use kind = \"tap\"",
                        ));
                    }
                }
            }
        }
        self.validate_clusters(&ips, &seen_nodes)?;
        if let Some(u) = &self.uplink {
            if !valid_ifname(&u.interface) {
                return Err(bad(
                    "uplink.interface".into(),
                    format!("{:?} is not an interface name", u.interface),
                    "name a host interface",
                ));
            }
            if let Some(v) = u.vlan {
                if !(1..=4094).contains(&v) {
                    return Err(bad("uplink.vlan".into(), format!("{v} is not a VLAN ID"), "use 1-4094"));
                }
            }
            if u.mac.is_some() && u.mode != UplinkModeConfig::Filtered {
                return Err(bad(
                    "uplink.mac".into(),
                    "an external MAC only applies in filtered mode",
                    "set mode = \"filtered\" or drop mac",
                ));
            }
        }
        Ok(())
    }
}

impl LanConfig {
    /// Checks the clusters against the LAN's port addresses and member nodes.
    fn validate_clusters(&self, port_ips: &HashSet<IpAddr>, members: &HashSet<&str>) -> Result<(), LanConfigError> {
        let mut names = HashSet::new();
        let mut vips = HashSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let k = format!("cluster[{i}]");
            if !valid_name(&c.name) {
                return Err(bad(
                    format!("{k}.name"),
                    format!("{:?} is not a cluster name", c.name),
                    "use 1-32 of a-z, A-Z, 0-9, '-' and '_'",
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(bad(format!("{k}.name"), format!("two clusters are named {:?}", c.name), "rename one"));
            }
            let ip: std::net::Ipv4Addr = c.ip.parse().map_err(|_| {
                bad(
                    format!("{k}.ip"),
                    format!("{:?} is not an IPv4 address", c.ip),
                    "write one such as \"198.18.0.100\"",
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                return Err(bad(
                    format!("{k}.ip"),
                    format!("{ip} cannot be a cluster's address"),
                    "use a unicast address",
                ));
            }
            if port_ips.contains(&IpAddr::V4(ip)) {
                return Err(bad(
                    format!("{k}.ip"),
                    format!("{ip} is a port's address on this LAN"),
                    "give the cluster an address of its own",
                ));
            }
            if !vips.insert(ip) {
                return Err(bad(
                    format!("{k}.ip"),
                    format!("two clusters have {ip}"),
                    "give each cluster its own address",
                ));
            }
            let mut served = HashSet::new();
            for (j, s) in c.services.iter().enumerate() {
                let k = format!("{k}.service[{j}]");
                if s.port == 0 {
                    return Err(bad(format!("{k}.port"), "port 0 cannot be served", "use 1-65535"));
                }
                if !served.insert((s.proto, s.port)) {
                    return Err(bad(
                        format!("{k}.port"),
                        format!("port {} is served twice", s.port),
                        "merge the services",
                    ));
                }
                let mut backends = HashSet::new();
                for (n, node) in s.nodes.iter().enumerate() {
                    if !members.contains(node.as_str()) {
                        return Err(bad(
                            format!("{k}.nodes[{n}]"),
                            format!("node {node:?} has no port on this LAN"),
                            "name a node with a [[pan.lan.port]] here",
                        ));
                    }
                    if !backends.insert(node.as_str()) {
                        return Err(bad(
                            format!("{k}.nodes[{n}]"),
                            format!("{node:?} is listed twice"),
                            "list it once",
                        ));
                    }
                }
                if let Some((n, node)) = s.draining.iter().enumerate().find(|(_, d)| !backends.contains(d.as_str())) {
                    return Err(bad(
                        format!("{k}.draining[{n}]"),
                        format!("{node:?} is not a backend of this service"),
                        "drain only nodes listed in nodes",
                    ));
                }
                let sticky = parse_duration(&s.sticky_timeout)
                    .map_err(|r| bad(format!("{k}.sticky_timeout"), r, "write a duration such as \"10m\""))?;
                if sticky.is_zero() {
                    return Err(bad(format!("{k}.sticky_timeout"), "a sticky timeout of zero", "use at least \"1s\""));
                }
                let interval = parse_duration(&s.check_interval)
                    .map_err(|r| bad(format!("{k}.check_interval"), r, "write a duration such as \"2s\""))?;
                if interval < std::time::Duration::from_millis(100) {
                    return Err(bad(
                        format!("{k}.check_interval"),
                        "checks more often than every 100 ms",
                        "use \"100ms\" or more",
                    ));
                }
                for (key, n) in [("check_failures", s.check_failures), ("check_passes", s.check_passes)] {
                    if !(1..=100).contains(&n) {
                        return Err(bad(format!("{k}.{key}"), format!("{n} is outside 1-100"), "use 1-100"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` can name a cluster: 1-32 of letters, digits, '-' and '_'.
fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The TAP name a port gets when the config names none: `pg` plus the LAN and node.
pub fn default_ifname(lan: &str, node: &str) -> String {
    let mut s: String = format!("pg{lan}-{node}").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    s.truncate(15);
    s
}

/// Whether `ns` may name a network namespace (a file under `/run/netns`, and an argument
/// of `ip netns`): 1-63 of letters, digits, '-', '_' and '.', starting with a letter or
/// digit. No quotes, spaces, '<', '>' or '/', which would otherwise reach paths, commands
/// and the admin's pages.
pub fn valid_netns(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 63
        && ns.as_bytes()[0].is_ascii_alphanumeric()
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(extra: &str) -> Result<(), LanConfigError> {
        let text = format!("name = \"a\"\n{extra}");
        let l: LanConfig = toml::from_str(&text).unwrap();
        l.validate(&["n1", "n2"].into_iter().collect())
    }

    #[test]
    fn good_lans_pass_and_mistakes_name_their_key() {
        assert!(lan("[[port]]\nnode = \"n1\"\nnetns = \"x\"\nips = [\"198.18.0.1/24\"]\n").is_ok());
        for bad_ns in ["a b", "x\\\"y", "<b>", "a>b", "a/b", ".hidden", "", &"n".repeat(64)] {
            let text = format!("[[port]]\nnode = \"n1\"\nnetns = {bad_ns:?}\n");
            assert_eq!(lan(&text).unwrap_err().key, "port[0].netns", "{bad_ns:?}");
        }
        assert!(lan("[[port]]\nnode = \"n1\"\nnetns = \"pg-Node_1.a\"\n").is_ok());
        assert_eq!(lan("mtu = 100\n").unwrap_err().key, "mtu");
        assert_eq!(lan("[[port]]\nnode = \"n9\"\n").unwrap_err().key, "port[0].node");
        assert_eq!(lan("[[port]]\nnode = \"n1\"\nips = [\"198.18.0.1/33\"]\n").unwrap_err().key, "port[0].ips[0]");
        let dup =
            "[[port]]\nnode = \"n1\"\nips = [\"198.18.0.1\"]\n[[port]]\nnode = \"n2\"\nips = [\"198.18.0.1/24\"]\n";
        assert_eq!(lan(dup).unwrap_err().key, "port[1].ips[0]");
        assert_eq!(lan("[uplink]\ninterface = \"eth0\"\nvlan = 5000\n").unwrap_err().key, "uplink.vlan");
        assert_eq!(lan("[[port]]\nnode = \"n1\"\nkind = \"ring\"\nnetns = \"x\"\n").unwrap_err().key, "port[0]");
        assert_eq!(parse_cidr("fd00::1/64").unwrap().1, 64);
        assert!(parse_cidr("0.0.0.0/8").is_err());
        assert_eq!(default_ifname("lan0", "node-a"), "pglan0-node-a");
    }

    #[test]
    fn clusters_are_checked_against_the_lans_ports_and_addresses() {
        let ports = "[[port]]\nnode = \"n1\"\nips = [\"198.18.0.1/24\"]\n[[port]]\nnode = \"n2\"\n";
        let with = |cluster: &str| lan(&format!("{ports}{cluster}"));
        let good = "[[cluster]]\nname = \"web\"\nip = \"198.18.0.100\"\n[[cluster.service]]\nport = 80\nnodes = [\"n1\", \"n2\"]\nsticky = true\nsticky_timeout = \"10m\"\ncheck = \"tcp\"\n[[cluster.service]]\nport = 53\nproto = \"udp\"\nnodes = [\"n2\"]\ndraining = [\"n2\"]\n";
        with(good).unwrap();
        let l: LanConfig = toml::from_str(&format!("name = \"a\"\n{ports}{good}")).unwrap();
        assert_eq!(l.clusters[0].services[1].proto, ProtoConfig::Udp);
        assert_eq!(parse_duration(&l.clusters[0].services[0].sticky_timeout).unwrap().as_secs(), 600);
        let key = |c: &str| with(c).unwrap_err().key;
        let head = "[[cluster]]\nname = \"web\"\nip = \"198.18.0.100\"\n";
        assert_eq!(key("[[cluster]]\nname = \"w b\"\nip = \"198.18.0.100\"\n"), "cluster[0].name");
        assert_eq!(key("[[cluster]]\nname = \"w\"\nip = \"198.18.0.1\"\n"), "cluster[0].ip");
        assert_eq!(key("[[cluster]]\nname = \"w\"\nip = \"fd00::1\"\n"), "cluster[0].ip");
        assert_eq!(key(&format!("{head}[[cluster]]\nname = \"v\"\nip = \"198.18.0.100\"\n")), "cluster[1].ip");
        assert_eq!(
            key(&format!("{head}[[cluster.service]]\nport = 80\nnodes = [\"n9\"]\n")),
            "cluster[0].service[0].nodes[0]"
        );
        assert_eq!(
            key(&format!("{head}[[cluster.service]]\nport = 80\n[[cluster.service]]\nport = 80\n")),
            "cluster[0].service[1].port"
        );
        assert_eq!(
            key(&format!("{head}[[cluster.service]]\nport = 80\nnodes = [\"n1\"]\ndraining = [\"n2\"]\n")),
            "cluster[0].service[0].draining[0]"
        );
        assert_eq!(
            key(&format!("{head}[[cluster.service]]\nport = 80\nsticky_timeout = \"soon\"\n")),
            "cluster[0].service[0].sticky_timeout"
        );
        assert_eq!(
            key(&format!("{head}[[cluster.service]]\nport = 80\ncheck_interval = \"1ms\"\n")),
            "cluster[0].service[0].check_interval"
        );
        assert_eq!(key(&format!("{head}[[cluster.service]]\nport = 0\n")), "cluster[0].service[0].port");
    }
}
