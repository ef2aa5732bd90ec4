//! Service clusters in the running service: their plans, changing a running LAN's
//! clusters (and the cluster addresses on backends' TAPs), and what the health checks
//! probe.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use super::{lock, LanPlan, LanState, Network, Shared};
use crate::cluster::{ClusterSpec, Limits};
use crate::config::PortKind;
use crate::dataplane::Command;
use crate::host;
use crate::mac::Mac;
use crate::switch::ClusterLanSpec;

/// A service cluster with everything resolved.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// Address, services and backends.
    pub spec: ClusterSpec,
    /// The cluster's MAC, which answers ARP for its address.
    pub mac: Mac,
    /// Per service of `spec`, in order: the nodes draining, and the health check.
    pub services: Vec<ServicePlan>,
}

/// How one service of a cluster runs beyond its spec.
#[derive(Debug, Clone, Default)]
pub struct ServicePlan {
    /// Backends that take no new connections.
    pub draining: Vec<String>,
    /// A TCP connect check of each backend, if the service asks for one.
    pub check: Option<CheckPlan>,
}

/// A TCP connect health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPlan {
    /// Time between checks of a backend.
    pub interval: Duration,
    /// Failed checks in a row that take it down.
    pub failures: u32,
    /// Passed checks in a row that bring it back.
    pub passes: u32,
}

impl Network {
    /// Adds a service cluster to a LAN, or changes the one of that name, without losing
    /// the flows of backends that stay. Backends' TAPs gain the cluster's address, and
    /// those no longer backends lose it.
    pub fn set_cluster(&self, pan: &str, lan: &str, plan: ClusterPlan) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (l, state) = self.lan_of(pan, lan)?;
        // While backends change, their frames from cluster addresses go through the switch.
        super::fast::refresh_sources(&self.shared, &state, false);
        let old = lock(&state.clusters).iter().find(|c| c.spec.name == plan.spec.name).cloned();
        let now = holders(&state, &plan);
        let before = old.as_ref().map(|o| holders(&state, o)).unwrap_or_default();
        let gain: Vec<_> = now.iter().filter(|x| !before.contains(x)).copied().collect();
        let lose: Vec<_> = before.iter().filter(|x| !now.contains(x)).copied().collect();
        self.cluster_ips(&state, &gain, true)?;
        let spec = ClusterLanSpec { spec: plan.spec.clone(), mac: plan.mac, limits: Limits::default() };
        let mut draining = Vec::new();
        for (s, sp) in plan.spec.services.iter().zip(&plan.services) {
            for node in &s.backends {
                draining.push((s.proto, s.port, node.clone(), sp.draining.contains(node)));
            }
        }
        // Every worker's copy of the LAN takes it (they decide alike).
        let answers = self.shared.control.ask(Duration::from_secs(5), |_, done| Command::SetCluster {
            lan: l,
            spec: Box::new(spec.clone()),
            draining: draining.clone(),
            done,
        });
        let taken = match answers {
            Some(all) => all.into_iter().collect::<Result<(), String>>().map_err(io::Error::other),
            None => Err(io::Error::other("the data path did not answer")),
        };
        if let Err(e) = taken {
            let _ = self.cluster_ips(&state, &gain, false);
            super::fast::refresh(&self.shared, &state, None);
            return Err(e);
        }
        super::fast::cluster_changed(&self.shared, &state, plan.mac, Some(&plan));
        {
            let mut clusters = lock(&state.clusters);
            clusters.retain(|c| c.spec.name != plan.spec.name);
            clusters.push(plan);
        }
        super::fast::refresh(&self.shared, &state, None);
        self.cluster_ips(&state, &lose, false)
    }

    /// Removes a LAN's service cluster; its backends' TAPs lose its address.
    pub fn remove_cluster(&self, pan: &str, lan: &str, name: &str) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (l, state) = self.lan_of(pan, lan)?;
        let Some(old) = lock(&state.clusters).iter().find(|c| c.spec.name == name).cloned() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no cluster {name:?} on LAN {lan:?}")));
        };
        lock(&state.clusters).retain(|c| c.spec.name != name);
        super::fast::refresh(&self.shared, &state, None);
        self.shared.control.each(|_| Command::RemoveCluster { lan: l, name: name.to_string() });
        super::fast::cluster_changed(&self.shared, &state, old.mac, None);
        self.cluster_ips(&state, &holders(&state, &old), false)
    }

    fn lan_of(&self, pan: &str, lan: &str) -> io::Result<(usize, Arc<LanState>)> {
        self.shared
            .find(pan, lan)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no LAN {lan:?} in PAN {pan:?}")))
    }

    /// Adds or removes cluster addresses on TAP ports, as (port, address).
    fn cluster_ips(&self, state: &LanState, which: &[(usize, Ipv4Addr)], add: bool) -> io::Result<()> {
        for &(i, ip) in which {
            let port = &state.ports[i];
            if port.plan.kind != PortKind::Tap || port.retired.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let (netns, ifname) = port.place();
            let namespaces = lock(&self.shared.namespaces);
            let ns = netns.as_ref().and_then(|name| namespaces.iter().find(|n| n.name() == name));
            host::tap_cluster_ip(ns, &ifname, ip, add).map_err(|e| {
                let what = if add { "adding" } else { "removing" };
                io::Error::new(
                    e.kind(),
                    format!("{what} cluster address {ip} on {ifname} of node {}: {e}", port.plan.node),
                )
            })?;
        }
        Ok(())
    }
}

/// Every backend of every service with a health check, on every LAN: its own first IPv4
/// address and its namespace. Ring ports have no namespace the gateway can probe from and
/// are not checked.
pub(super) fn check_targets(shared: &Shared) -> Vec<crate::health::Target> {
    let lans = shared.lans.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (slot, l) in lans.iter().enumerate() {
        let Some(l) = l else { continue };
        for c in lock(&l.clusters).iter() {
            for (s, sp) in c.spec.services.iter().zip(&c.services) {
                let Some(check) = sp.check.filter(|_| s.proto == crate::cluster::Proto::Tcp) else { continue };
                for node in &s.backends {
                    let Some(p) = l.ports.iter().find(|p| p.is(node) && p.plan.kind == PortKind::Tap) else {
                        continue;
                    };
                    let addr = lock(&p.addrs).iter().find_map(|(ip, _)| match ip {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    });
                    let Some(addr) = addr else { continue };
                    out.push(crate::health::Target {
                        lan: slot,
                        cluster: c.spec.name.clone(),
                        port: s.port,
                        node: node.clone(),
                        netns: p.place().0,
                        addr,
                        check,
                    });
                }
            }
        }
    }
    out
}

/// The addresses of the clusters `node` is a backend of, on LAN `plan`.
pub(super) fn cluster_ips(plan: &LanPlan, node: &str) -> Vec<Ipv4Addr> {
    plan.clusters.iter().filter(|c| c.serves(node)).map(|c| c.spec.ip).collect()
}

/// The ports of `state` that hold cluster `c`'s address, as (port, address).
fn holders(state: &LanState, c: &ClusterPlan) -> Vec<(usize, Ipv4Addr)> {
    state.ports.iter().enumerate().filter(|(_, p)| c.serves(&p.plan.node)).map(|(i, _)| (i, c.spec.ip)).collect()
}

impl ClusterPlan {
    /// Whether `node` is a backend of any of its services.
    pub fn serves(&self, node: &str) -> bool {
        self.spec.services.iter().any(|s| s.backends.iter().any(|b| b == node))
    }
}
