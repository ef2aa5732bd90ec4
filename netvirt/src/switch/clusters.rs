//! The LAN server's part in service clusters (see [`crate::cluster`]), as the seed's
//! virtual LAN server plays it:
//!
//! - The server answers every ARP request for a cluster IP itself, with the cluster's own
//!   MAC (toward the uplink in filtered mode, with the external MAC). Members' ARP replies
//!   for a cluster IP are dropped. An ARP request a member sends from the cluster IP goes
//!   to no other member and goes out with the cluster's MAC as its sender, so no cache
//!   learns a member's MAC for the cluster IP; the answer, addressed to the cluster, reaches
//!   every member, as the seed's LAN server sends it.
//! - A frame for a cluster's MAC (or, from a filtered uplink, for its IP) goes to the
//!   cluster, which picks a backend. The frame then goes to that backend's MAC with its
//!   IP packet unchanged: direct server return at layer 2. An echo request is answered
//!   from the cluster's IP and MAC.
//! - Only a cluster's backends may send from its IP.
//! - A backend is down while its port is detached or its health check fails, draining
//!   while the operator drains it, and up otherwise.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use etherparse::{ArpOperation, EtherType};

use super::{arp_frame, mac_at, parse_arp, Dest, Emit, LanError, PortId, Sink, VirtualLan, ETH_HLEN};

/// Where the sender hardware address sits in an Ethernet/IPv4 ARP packet.
const ARP_SHA: usize = 8;
use crate::cluster::{Cluster, ClusterCounters, ClusterSpec, Decision, Health, Limits, Proto};
use crate::counters::DropReason;
use crate::mac::Mac;

/// A cluster as a LAN is given it: its spec, its MAC, and how big its tables may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLanSpec {
    pub spec: ClusterSpec,
    pub mac: Mac,
    pub limits: Limits,
}

/// What the operator and the health checks say of one backend of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags {
    draining: bool,
    check_ok: bool,
}

/// One cluster on the LAN.
#[derive(Debug)]
pub(super) struct LanCluster {
    pub(super) cluster: Cluster,
    pub(super) mac: Mac,
    /// Ports of its backends (of any service).
    members: Vec<PortId>,
    /// The port of each backend of each service, in the spec's order.
    ports: Vec<Vec<PortId>>,
    /// Draining and check state by (protocol, port, node).
    flags: HashMap<(Proto, u16, String), Flags>,
}

/// A cluster's state as `net show` and the metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub flows: usize,
    pub evicted: u64,
    pub counters: ClusterCounters,
    /// (protocol, port, node, health) of every backend of every service.
    pub backends: Vec<(Proto, u16, String, Health)>,
}

impl ClusterStatus {
    /// Adds another worker's copy of the same cluster: its flows and counters (backends'
    /// health is the same in every copy).
    pub fn add(&mut self, other: &ClusterStatus) {
        self.flows += other.flows;
        self.evicted += other.evicted;
        self.counters.forwarded += other.counters.forwarded;
        self.counters.new_flows += other.counters.new_flows;
        self.counters.echo_replies += other.counters.echo_replies;
        for (d, o) in self.counters.dropped.iter_mut().zip(other.counters.dropped) {
            *d += o;
        }
    }
}

impl LanCluster {
    fn status(&self) -> ClusterStatus {
        let spec = self.cluster.spec();
        let backends = spec
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|n| {
                    let h = self.cluster.health(s.proto, s.port, n).unwrap_or(Health::Down);
                    (s.proto, s.port, n.clone(), h)
                })
            })
            .collect();
        ClusterStatus {
            name: spec.name,
            ip: spec.ip,
            mac: self.mac,
            flows: self.cluster.flows(),
            evicted: self.cluster.evicted(),
            counters: self.cluster.counters().clone(),
            backends,
        }
    }
}

/// What a frame to a cluster comes to, decided before anything is sent.
enum Outcome {
    To(PortId),
    Reply(Vec<u8>),
    Dropped,
}

impl VirtualLan {
    /// Builds the LAN's clusters, checked against its ports.
    pub(super) fn build_clusters(&mut self, specs: Vec<ClusterLanSpec>) -> Result<(), LanError> {
        for c in specs {
            self.set_cluster(c)?;
        }
        Ok(())
    }

    /// Adds a cluster, or changes the one of that name. A change keeps the flows of
    /// backends that stay, and the draining and check state of services and backends
    /// that stay; a changed address or MAC starts the cluster afresh.
    pub fn set_cluster(&mut self, c: ClusterLanSpec) -> Result<(), LanError> {
        let lan = self.name.clone();
        let ip = c.spec.ip;
        let others = |o: &&LanCluster| o.cluster.name() != c.spec.name;
        let taken = self.by_ip.contains_key(&std::net::IpAddr::V4(ip))
            || self.clusters.iter().filter(others).any(|o| o.cluster.ip() == ip);
        if taken || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(LanError::BadIp { lan, ip: ip.into() });
        }
        let mac_taken = self.by_mac.contains_key(&c.mac) || self.clusters.iter().filter(others).any(|o| o.mac == c.mac);
        if c.mac.is_group() || mac_taken {
            return Err(LanError::DuplicateMac { lan, mac: c.mac });
        }
        let mut members = Vec::new();
        let mut ports = Vec::new();
        for s in &c.spec.services {
            let mut of_service = Vec::new();
            for node in &s.backends {
                let Some(p) = self.port_of(node) else {
                    return Err(LanError::NoMember { lan, node: node.clone() });
                };
                of_service.push(p);
                if !members.contains(&p) {
                    members.push(p);
                }
            }
            ports.push(of_service);
        }
        let at = self.clusters.iter().position(|o| o.cluster.name() == c.spec.name);
        let mut lc = match at.map(|i| self.clusters.remove(i)) {
            Some(mut old) if old.cluster.ip() == ip && old.mac == c.mac => {
                old.cluster.reconfigure(c.spec);
                let spec = old.cluster.spec();
                old.flags.retain(|(proto, port, node), _| {
                    spec.services.iter().any(|s| (s.proto, s.port) == (*proto, *port) && s.backends.contains(node))
                });
                old.members = members;
                old.ports = ports;
                old
            }
            _ => LanCluster {
                cluster: Cluster::new(c.spec, c.limits),
                mac: c.mac,
                members,
                ports,
                flags: HashMap::new(),
            },
        };
        for &p in &lc.members.clone() {
            let node = self.ports[p].spec.node.clone();
            refresh(&mut lc, &node, self.ports[p].attached);
        }
        match at {
            Some(i) => self.clusters.insert(i, lc),
            None => self.clusters.push(lc),
        }
        Ok(())
    }

    /// Removes a cluster; whether there was one. Its flows end here.
    pub fn remove_cluster(&mut self, name: &str) -> bool {
        let before = self.clusters.len();
        self.clusters.retain(|c| c.cluster.name() != name);
        self.clusters.len() != before
    }

    /// Whether the LAN has service clusters (and so wants [`VirtualLan::set_clock`]).
    pub fn has_clusters(&self) -> bool {
        !self.clusters.is_empty()
    }

    /// Tells the clusters the time, before the frames that arrived at `now`, and frees
    /// flows that expired.
    pub fn set_clock(&mut self, now: Instant) {
        self.now = now;
        for c in &mut self.clusters {
            c.cluster.expire(now, 256);
        }
    }

    /// Drains (or undrains) `node` for the service on (`proto`, `port`) of cluster
    /// `cluster`: it keeps its flows and takes no new ones.
    pub fn set_draining(&mut self, cluster: &str, proto: Proto, port: u16, node: &str, on: bool) -> bool {
        self.set_flag(cluster, proto, port, node, |f| f.draining = on)
    }

    /// Records the outcome of `node`'s health check for the service on (`proto`, `port`)
    /// of cluster `cluster`; a failed one takes the backend down.
    pub fn set_check(&mut self, cluster: &str, proto: Proto, port: u16, node: &str, ok: bool) -> bool {
        self.set_flag(cluster, proto, port, node, |f| f.check_ok = ok)
    }

    fn set_flag(&mut self, cluster: &str, proto: Proto, port: u16, node: &str, set: impl Fn(&mut Flags)) -> bool {
        let attached = self.port_of(node).is_some_and(|p| self.ports[p].attached);
        let Some(c) = self.clusters.iter_mut().find(|c| c.cluster.name() == cluster) else { return false };
        if c.cluster.health(proto, port, node).is_none() {
            return false;
        }
        set(c.flags.entry((proto, port, node.to_string())).or_insert(Flags { draining: false, check_ok: true }));
        refresh(c, node, attached);
        true
    }

    /// Each cluster's state.
    pub fn clusters(&self) -> Vec<ClusterStatus> {
        self.clusters.iter().map(LanCluster::status).collect()
    }

    /// A port was attached or detached: its node's health in every cluster follows.
    pub(super) fn clusters_port_changed(&mut self, id: PortId) {
        let (node, attached) = (self.ports[id].spec.node.clone(), self.ports[id].attached);
        for c in &mut self.clusters {
            if c.members.contains(&id) {
                refresh(c, &node, attached);
            }
        }
    }

    /// The cluster whose IP `ip` is.
    pub(super) fn cluster_by_ip(&self, ip: Ipv4Addr) -> Option<usize> {
        self.clusters.iter().position(|c| c.cluster.ip() == ip)
    }

    /// The cluster whose MAC `mac` is.
    pub(super) fn cluster_by_mac(&self, mac: Mac) -> Option<usize> {
        self.clusters.iter().position(|c| c.mac == mac)
    }

    /// Whether port `from` may send from `ip`, a cluster's address: only its backends.
    pub(super) fn may_send_as_cluster(&self, from: PortId, ip: Ipv4Addr) -> bool {
        self.cluster_by_ip(ip).is_some_and(|c| self.clusters[c].members.contains(&from))
    }

    /// ARP from a member port about a cluster IP: a request for it is answered here, a
    /// member's reply for it is dropped, and a request a member sends from it goes
    /// nowhere else. `None` when the frame is not such ARP.
    pub(super) fn cluster_arp_from_port(&mut self, from: PortId, frame: &[u8], out: &mut impl Sink) -> Option<()> {
        let arp = parse_arp(&frame[ETH_HLEN..])?;
        let (spa, tpa) = (arp.sender_ipv4_addr(), arp.target_ipv4_addr());
        if arp.operation == ArpOperation::REQUEST && spa != tpa {
            if let Some(c) = self.cluster_by_ip(tpa) {
                let mac = self.clusters[c].mac;
                let reply =
                    arp_frame(Mac(arp.sender_mac), mac, ArpOperation::REPLY, mac, tpa, Mac(arp.sender_mac), spa);
                self.send(Dest::Port(from), &reply, Emit::Generated, out);
                return Some(());
            }
        }
        if let (ArpOperation::REPLY, Some(c)) = (arp.operation, self.cluster_by_ip(tpa)) {
            // An answer to a member that asked from the cluster's address, from the
            // owner of the address asked for.
            if self.by_ip.get(&spa.into()) == Some(&from) {
                self.send_to_members(c, frame, out);
            } else {
                self.count_port_drop(from, DropReason::ArpSpoof);
            }
            return Some(());
        }
        let c = self.cluster_by_ip(spa)?;
        if arp.operation == ArpOperation::REPLY || !self.clusters[c].members.contains(&from) {
            self.count_port_drop(from, DropReason::ArpSpoof);
            return Some(());
        }
        // A request from the cluster's address goes out as the cluster's, so no cache
        // learns a member's MAC for the cluster IP, and reaches no other member (they hold
        // the address too). The answer comes back to the cluster's MAC, for every member.
        let mac = self.clusters[c].mac;
        let mut f = std::mem::take(&mut self.scratch);
        f.clear();
        f.extend_from_slice(frame);
        f[6..12].copy_from_slice(&mac.0);
        f[ETH_HLEN + ARP_SHA..ETH_HLEN + ARP_SHA + 6].copy_from_slice(&mac.0);
        let members = self.clusters[c].members.clone();
        for q in 0..self.ports.len() {
            if q != from && !members.contains(&q) {
                self.send(Dest::Port(q), &f, Emit::Rewritten, out);
            }
        }
        if self.uplink.is_some() {
            self.send_uplink(&f, out);
        }
        self.scratch = f;
        Some(())
    }

    /// Delivers `frame` to every member of cluster `c`.
    fn send_to_members(&mut self, c: usize, frame: &[u8], out: &mut impl Sink) {
        for q in self.clusters[c].members.clone() {
            self.send(Dest::Port(q), frame, Emit::Input, out);
        }
    }

    /// An ARP request from the uplink for a cluster IP: answered with the cluster's MAC,
    /// or the external MAC in filtered mode. Whether it was one.
    pub(super) fn cluster_arp_from_uplink(&mut self, frame: &[u8], external: Option<Mac>, out: &mut impl Sink) -> bool {
        let Some(arp) = parse_arp(&frame[ETH_HLEN..]) else { return false };
        let (spa, tpa) = (arp.sender_ipv4_addr(), arp.target_ipv4_addr());
        if arp.operation == ArpOperation::REPLY {
            // An answer to a member that asked from the cluster's address.
            let Some(c) = self.cluster_by_ip(tpa) else { return false };
            self.send_to_members(c, frame, out);
            return true;
        }
        if arp.operation != ArpOperation::REQUEST || spa == tpa {
            return false;
        }
        let Some(c) = self.cluster_by_ip(tpa) else { return false };
        let mac = external.unwrap_or(self.clusters[c].mac);
        let reply = arp_frame(Mac(arp.sender_mac), mac, ArpOperation::REPLY, mac, tpa, Mac(arp.sender_mac), spa);
        self.send(Dest::Uplink, &reply, Emit::Generated, out);
        true
    }

    /// A frame for cluster `c` from port `from` (or the uplink, `None`): relayed to the
    /// backend the cluster picks, answered, or dropped (the cluster counts why).
    pub(super) fn relay_to_cluster(&mut self, c: usize, from: Option<PortId>, frame: &[u8], out: &mut impl Sink) {
        if frame.len() < ETH_HLEN || frame[12..14] != EtherType::IPV4.0.to_be_bytes() {
            return self.count_drop(from, DropReason::UnknownDestination);
        }
        let now = self.now;
        let lc = &mut self.clusters[c];
        let outcome = match lc.cluster.route_indexed(&frame[ETH_HLEN..], now) {
            Decision::Forward(s, b) => Outcome::To(lc.ports[usize::from(s)][usize::from(b)]),
            Decision::Reply(packet) => Outcome::Reply(packet),
            Decision::NotOurs => return self.count_drop(from, DropReason::UnknownDestination),
            Decision::Drop(_) => Outcome::Dropped,
        };
        match outcome {
            Outcome::To(p) => {
                // No copy here: the sink puts the backend's MAC in (into the input's own
                // buffer, where it can).
                self.send(Dest::Port(p), frame, Emit::Redirect(self.ports[p].spec.mac), out);
                self.mirror(from, Some(p), frame, out);
            }
            Outcome::Reply(packet) => {
                let src = match (from, self.uplink) {
                    (None, Some(super::UplinkMode::Filtered { external_mac })) => external_mac,
                    _ => self.clusters[c].mac,
                };
                let mut f = Vec::with_capacity(ETH_HLEN + packet.len());
                f.extend_from_slice(&frame[6..12]);
                f.extend_from_slice(&src.0);
                f.extend_from_slice(&EtherType::IPV4.0.to_be_bytes());
                f.extend_from_slice(&packet);
                let to = from.map_or(Dest::Uplink, Dest::Port);
                self.send(to, &f, Emit::Generated, out);
            }
            Outcome::Dropped => {}
        }
    }

    /// Whether a unicast frame's destination MAC is a cluster's (from ports and an
    /// unfiltered uplink).
    pub(super) fn cluster_for_frame(&self, frame: &[u8]) -> Option<usize> {
        if self.clusters.is_empty() || frame.len() < ETH_HLEN {
            return None;
        }
        self.cluster_by_mac(mac_at(frame, 0))
    }

    fn count_drop(&self, from: Option<PortId>, why: DropReason) {
        match from {
            Some(p) => self.count_port_drop(p, why),
            None => self.uplink_drop(why),
        }
    }

    fn count_port_drop(&self, p: PortId, why: DropReason) {
        self.ports[p].traffic.count_drop(why);
        self.traffic.count_drop(why);
    }
}

/// Recomputes `node`'s health in every service of `c` from its port and its flags.
fn refresh(c: &mut LanCluster, node: &str, attached: bool) {
    for s in c.cluster.spec().services {
        if !s.backends.iter().any(|b| b == node) {
            continue;
        }
        let f = c
            .flags
            .get(&(s.proto, s.port, node.to_string()))
            .copied()
            .unwrap_or(Flags { draining: false, check_ok: true });
        let health = if !attached || !f.check_ok {
            Health::Down
        } else if f.draining {
            Health::Draining
        } else {
            Health::Up
        };
        c.cluster.set_health(Some((s.proto, s.port)), node, health);
    }
}
