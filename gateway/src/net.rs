//! From the config to netvirt: assigns each port its MAC (persisting the assignments so a
//! port keeps its MAC across restarts and a counter value is never reused) and resolves
//! names and addresses into the plan netvirt runs.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use netvirt::cluster::{ClusterSpec, Proto, ServiceSpec};
use netvirt::config::{default_ifname, parse_cidr, parse_duration, ClusterConfig, ProtoConfig};
use netvirt::mac::MacBook;
use netvirt::network::{
    Authorize, CheckPlan, ClusterPlan, LanPlan, NetShow, Network, PortPlan, ServicePlan, UplinkPlan,
};

use crate::registry::Registry;

use crate::config::Config;
use crate::persist;

/// File in the data directory holding the MAC assignments.
pub const MAC_BOOK: &str = "netvirt-macs.json";

/// Every LAN of every PAN, resolved. Writes the MAC book first if it changed.
pub fn plan(cfg: &Config, data_dir: &Path) -> io::Result<Vec<LanPlan>> {
    let book_path = data_dir.join(MAC_BOOK);
    let mut book: MacBook = match std::fs::read(&book_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e} (remove it to reassign MACs)", book_path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => MacBook::default(),
        Err(e) => return Err(e),
    };
    let mut changed = false;
    let mut plans = Vec::new();
    for pan in &cfg.pans {
        for lan in &pan.lans {
            let mut ports = Vec::new();
            for p in &lan.ports {
                let mac = match p.mac {
                    Some(m) => m,
                    None => {
                        let (m, new) = book.mac_for(&cfg.serial, &format!("{}/{}/{}", pan.name, lan.name, p.node));
                        changed |= new;
                        m
                    }
                };
                let addrs = p.ips.iter().map(|s| parse_cidr(s).map_err(io::Error::other)).collect::<io::Result<_>>()?;
                ports.push(PortPlan {
                    node: p.node.clone(),
                    kind: p.kind,
                    netns: p.netns.clone(),
                    ifname: p.ifname.clone().unwrap_or_else(|| default_ifname(&lan.name, &p.node)),
                    mac,
                    addrs,
                    promiscuous: p.promiscuous,
                });
            }
            let mut clusters = Vec::new();
            for c in &lan.clusters {
                let (mac, new) = book.mac_for(&cfg.serial, &format!("{}/{}/cluster:{}", pan.name, lan.name, c.name));
                changed |= new;
                clusters.push(cluster_plan(c, mac)?);
            }
            plans.push(LanPlan {
                clusters,
                pan: pan.name.clone(),
                name: lan.name.clone(),
                mtu: lan.mtu,
                ports,
                uplink: lan.uplink.as_ref().map(|u| UplinkPlan {
                    interface: u.interface.clone(),
                    vlan: u.vlan,
                    mode: u.mode,
                    mac: u.mac,
                }),
            });
        }
    }
    if changed {
        let text = serde_json::to_vec_pretty(&book).map_err(io::Error::other)?;
        persist::write_atomic(&book_path, &text, 0o644)?;
    }
    Ok(plans)
}

/// A cluster of the config (already validated) as netvirt runs it, with the MAC it answers
/// ARP with.
fn cluster_plan(c: &ClusterConfig, mac: netvirt::mac::Mac) -> io::Result<ClusterPlan> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidInput, format!("cluster {}: {e}", c.name));
    let mut services = Vec::new();
    let mut plans = Vec::new();
    for s in &c.services {
        let sticky = if s.sticky { Some(parse_duration(&s.sticky_timeout).map_err(bad)?) } else { None };
        let proto = match s.proto {
            ProtoConfig::Tcp => Proto::Tcp,
            ProtoConfig::Udp => Proto::Udp,
        };
        services.push(ServiceSpec { proto, port: s.port, backends: s.nodes.clone(), sticky });
        let check = match s.check {
            Some(_) => Some(CheckPlan {
                interval: parse_duration(&s.check_interval).map_err(bad)?,
                failures: s.check_failures,
                passes: s.check_passes,
            }),
            None => None,
        };
        plans.push(ServicePlan { draining: s.draining.clone(), check });
    }
    let ip = c.ip.parse().map_err(|_| bad(format!("{:?} is not an IPv4 address", c.ip)))?;
    Ok(ClusterPlan { spec: ClusterSpec { name: c.name.clone(), ip, services }, mac, services: plans })
}

/// Ring-port clients are checked against the node registry, which the admin keeps
/// current, with the same credentials as storage.
pub fn node_authorizer(registry: Registry) -> Authorize {
    Arc::new(move |pan: &str, node: &str, credential: &str| registry.authenticate(pan, node, credential).is_ok())
}

/// netvirt as the web admin drives it.
pub trait NetControl: Send + Sync {
    /// Every LAN, port and counter, or `None` when netvirt is off on this host.
    fn show(&self) -> Option<NetShow>;
    /// Starts switching a LAN. `Ok(false)`: netvirt is off, so it starts with netvirt.
    fn add_lan(&self, plan: LanPlan) -> io::Result<bool>;
    /// Stops switching a LAN. `Ok(false)`: netvirt is off.
    fn remove_lan(&self, pan: &str, lan: &str) -> io::Result<bool>;
    /// Hands a LAN address to another member port. `Ok(false)`: netvirt is off.
    fn move_ip(&self, pan: &str, lan: &str, ip: std::net::Ipv4Addr, node: &str) -> io::Result<bool>;
    /// Adds or changes a LAN's service cluster. `Ok(false)`: netvirt is off.
    fn set_cluster(&self, pan: &str, lan: &str, cluster: ClusterPlan) -> io::Result<bool>;
    /// Removes a LAN's service cluster. `Ok(false)`: netvirt is off.
    fn remove_cluster(&self, pan: &str, lan: &str, name: &str) -> io::Result<bool>;
    /// Takes a node's port off the wire ([`Network::unplug`]). `Ok(false)`: netvirt is off.
    fn unplug(&self, pan: &str, lan: &str, node: &str, retire: bool) -> io::Result<bool>;
    /// Plugs a node's port in at a namespace and interface name ([`Network::plug`]).
    /// `Ok(false)`: netvirt is off.
    fn plug(&self, pan: &str, lan: &str, node: &str, netns: Option<String>, ifname: String) -> io::Result<bool>;
    /// A node's (ports, attached ports) over its PAN's LANs; `None` when netvirt is off.
    fn node_ports(&self, pan: &str, node: &str) -> Option<(usize, usize)>;
}

/// The gateway's netvirt service, if this host could start it.
#[derive(Debug)]
pub struct LiveNetwork(Mutex<Option<Network>>);

impl LiveNetwork {
    /// Wraps a started service (or its absence).
    pub fn new(network: Option<Network>) -> LiveNetwork {
        LiveNetwork(Mutex::new(network))
    }

    /// Stops the service, removing the TAPs and the namespaces it created.
    pub fn stop(&self) -> io::Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(n) => n.stop(),
            None => Ok(()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Network) -> io::Result<T>) -> io::Result<Option<T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(f).transpose()
    }
}

impl NetControl for LiveNetwork {
    fn show(&self) -> Option<NetShow> {
        self.with(|n| Ok(n.show())).ok().flatten()
    }

    fn add_lan(&self, plan: LanPlan) -> io::Result<bool> {
        Ok(self.with(|n| n.add_lan(plan))?.is_some())
    }

    fn remove_lan(&self, pan: &str, lan: &str) -> io::Result<bool> {
        Ok(self.with(|n| n.remove_lan(pan, lan))?.is_some())
    }

    fn move_ip(&self, pan: &str, lan: &str, ip: std::net::Ipv4Addr, node: &str) -> io::Result<bool> {
        Ok(self.with(|n| n.move_ip(pan, lan, ip, node))?.is_some())
    }

    fn set_cluster(&self, pan: &str, lan: &str, cluster: ClusterPlan) -> io::Result<bool> {
        Ok(self.with(|n| n.set_cluster(pan, lan, cluster))?.is_some())
    }

    fn remove_cluster(&self, pan: &str, lan: &str, name: &str) -> io::Result<bool> {
        Ok(self.with(|n| n.remove_cluster(pan, lan, name))?.is_some())
    }

    fn unplug(&self, pan: &str, lan: &str, node: &str, retire: bool) -> io::Result<bool> {
        Ok(self.with(|n| n.unplug(pan, lan, node, retire))?.is_some())
    }

    fn plug(&self, pan: &str, lan: &str, node: &str, netns: Option<String>, ifname: String) -> io::Result<bool> {
        Ok(self.with(|n| n.plug(pan, lan, node, netns, ifname))?.is_some())
    }

    fn node_ports(&self, pan: &str, node: &str) -> Option<(usize, usize)> {
        self.with(|n| Ok(n.node_ports(pan, node))).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_assigned_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::embedded_default().unwrap();
        let first = plan(&cfg, dir.path()).unwrap();
        let again = plan(&cfg, dir.path()).unwrap();
        let macs = |p: &[LanPlan]| p[0].ports.iter().map(|x| x.mac).collect::<Vec<_>>();
        assert_eq!(macs(&first), macs(&again));
        assert_ne!(macs(&first)[0], macs(&first)[1]);
        assert!(dir.path().join(MAC_BOOK).exists());
        assert_eq!(first[0].ports[0].addrs[0].1, 24);
    }
}
