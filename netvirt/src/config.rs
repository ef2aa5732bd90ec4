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
}
