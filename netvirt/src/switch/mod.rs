//! The virtual LAN server: one switched Ethernet broadcast domain, sans-IO. Frames come in
//! from a member port or the uplink as bytes; the server checks them against what it
//! knows of the sender (its MAC, its registered IPs), then hands each copy it decides to
//! send to a [`Sink`]. It never sees an fd or a thread, and the time its service clusters
//! age flows by is the caller's ([`VirtualLan::set_clock`]; the clock is read once, at
//! construction, as the starting point), so tests and fuzzers drive it with hand-built
//! frames.
//!
//! What it enforces, after the source documents' virtual LAN server and ARP server:
//! - a port sends only from its assigned MAC, and ARP and IP only from its registered IPs;
//! - unicast reaches only the port owning the destination MAC; broadcast and multicast are
//!   cloned to every other member and to the uplink;
//! - ARP requests for a member's IP go only to that member (the server knows who owns
//!   every IP, so it need not flood them), and an IP that moves is announced with a
//!   gratuitous ARP;
//! - ports the administrator allowed to be promiscuous get a copy of all traffic;
//! - nothing crosses to another LAN: a `VirtualLan` only knows its own ports.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use etherparse::{ArpOperation, ArpPacketSlice, EtherType};

use crate::counters::{DropReason, Traffic};
use crate::mac::Mac;

mod clusters;
mod uplink;

pub use self::clusters::{ClusterLanSpec, ClusterStatus};

/// A port's index within its LAN.
pub type PortId = usize;

/// Ethernet header length (no 802.1Q tag).
pub const ETH_HLEN: usize = 14;
/// Smallest and largest MTU a LAN accepts.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9216;

/// A member port as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The node the port belongs to.
    pub node: String,
    /// The MAC the server assigned.
    pub mac: Mac,
    /// IPs registered to the port.
    pub ips: Vec<IpAddr>,
    /// Whether the administrator allows this port to see all traffic on the LAN.
    pub promiscuous: bool,
}

/// How the LAN meets the outside network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkMode {
    /// Virtual MACs are visible outside; the uplink is one more bridge port.
    Unfiltered,
    /// The outside sees one MAC: outbound source MACs are rewritten to it, inbound frames
    /// are delivered by destination IP, and ARP for member IPs is answered with it.
    Filtered {
        /// The single external MAC.
        external_mac: Mac,
    },
}

/// A LAN as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanSpec {
    /// Name, unique within the PAN.
    pub name: String,
    /// Largest L3 packet (Ethernet payload) a frame may carry.
    pub mtu: u32,
    /// Member ports.
    pub ports: Vec<PortSpec>,
    /// The uplink, if the LAN has one.
    pub uplink: Option<UplinkMode>,
    /// Service clusters on the LAN.
    pub clusters: Vec<ClusterLanSpec>,
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A member port.
    Port(PortId),
    /// The uplink (untagged; the uplink adds its 802.1Q tag).
    Uplink,
}

/// What a delivered frame is, relative to the frame the server was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// The input frame unchanged: any offload metadata (GSO, checksum) still applies.
    Input,
    /// The input with addresses rewritten in place: same length and offsets, so offload
    /// metadata still applies.
    Rewritten,
    /// The input with its destination MAC replaced by this one (a service cluster's
    /// backend), and nothing else changed, so offload metadata still applies. A sink that
    /// shares the input's buffer among destinations may apply it to every copy of this
    /// input frame, so only the LAN server's last delivery of a frame may be a redirect
    /// besides copies for promiscuous ports, which then see what the backend got.
    Redirect(Mac),
    /// A frame the server made (an ARP reply or announcement): no offload metadata.
    Generated,
}

/// Receives the frames the server sends.
pub trait Sink {
    /// Queues `frame` for `to`. Returns false if the destination cannot take it now.
    fn deliver(&mut self, to: Dest, frame: &[u8], emit: Emit) -> bool;
}

/// ICMP "fragmentation needed and DF set" (type 3, code 4, RFC 792 and 1191) for an
/// oversize IPv4 `frame`, with next-hop MTU `mtu`: from the packet's destination to its
/// source, carrying as much of the packet as keeps the message within 576 bytes. `None`
/// when no such message is due (RFC 1122 3.2.2): not IPv4, DF clear, not a first fragment,
/// an ICMP error itself, or from an address that is not one host's.
pub fn frag_needed(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, PacketBuilder};
    if frame.len() < ETH_HLEN + 20 || EtherType(u16::from_be_bytes([frame[12], frame[13]])) != EtherType::IPV4 {
        return None;
    }
    let ip = &frame[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    let (flags_offset, protocol) = (u16::from_be_bytes([ip[6], ip[7]]), ip[9]);
    let (src, dst) = (Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let dont_fragment = flags_offset & 0x4000 != 0;
    let first_fragment = flags_offset & 0x1FFF == 0;
    let icmp_error = protocol == 1 && ip.get(ihl).is_some_and(|&t| matches!(t, 3 | 4 | 5 | 11 | 12));
    let src_is_host = !(src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback());
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl || !dont_fragment || !first_fragment || icmp_error || !src_is_host
    {
        return None;
    }
    // 576 bytes in all: 20 of IPv4 header and 8 of ICMP header before the quoted packet.
    let quoted = &ip[..ip.len().min(576 - 20 - 8)];
    let (to_mac, from_mac) = (mac_at(frame, 6), mac_at(frame, 0));
    let builder = PacketBuilder::ethernet2(from_mac.0, to_mac.0)
        .ipv4(dst.octets(), src.octets(), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }));
    let mut out = Vec::with_capacity(builder.size(quoted.len()));
    builder.write(&mut out, quoted).ok()?;
    Some(out)
}

/// A configuration the server refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LanError {
    /// MTU outside [`MTU_RANGE`].
    #[error("LAN {lan:?}: MTU {mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end())]
    Mtu {
        /// LAN name.
        lan: String,
        /// The MTU given.
        mtu: u32,
    },
    /// A port MAC that is a group address.
    #[error("LAN {lan:?}: port of node {node:?} has group address {mac} as its MAC")]
    GroupMac {
        /// LAN name.
        lan: String,
        /// Node name.
        node: String,
        /// The MAC.
        mac: Mac,
    },
    /// Two ports with one MAC.
    #[error("LAN {lan:?}: MAC {mac} is assigned to two ports")]
    DuplicateMac {
        /// LAN name.
        lan: String,
        /// The MAC.
        mac: Mac,
    },
    /// Two ports with one IP.
    #[error("LAN {lan:?}: IP {ip} is registered to two ports")]
    DuplicateIp {
        /// LAN name.
        lan: String,
        /// The IP.
        ip: IpAddr,
    },
    /// An IP that cannot be a host's source address.
    #[error("LAN {lan:?}: {ip} cannot be a port's address")]
    BadIp {
        /// LAN name.
        lan: String,
        /// The IP.
        ip: IpAddr,
    },
    /// A cluster backend without a port on the LAN.
    #[error("LAN {lan:?}: cluster backend {node:?} has no port here")]
    NoMember {
        /// LAN name.
        lan: String,
        /// Node name.
        node: String,
    },
    /// A port index that does not exist.
    #[error("LAN {lan:?} has no port {port}")]
    NoPort {
        /// LAN name.
        lan: String,
        /// The index.
        port: PortId,
    },
}

#[derive(Debug)]
struct Port {
    spec: PortSpec,
    attached: bool,
    traffic: Arc<Traffic>,
}

/// One virtual LAN's switch state.
#[derive(Debug)]
pub struct VirtualLan {
    name: String,
    mtu: usize,
    ports: Vec<Port>,
    by_mac: HashMap<Mac, PortId>,
    by_ip: HashMap<IpAddr, PortId>,
    promiscuous: Vec<PortId>,
    uplink: Option<UplinkMode>,
    uplink_traffic: Arc<Traffic>,
    traffic: Arc<Traffic>,
    scratch: Vec<u8>,
    clusters: Vec<clusters::LanCluster>,
    /// The time the caller gave last ([`VirtualLan::set_clock`]); clusters age flows by it.
    now: Instant,
}

/// Offsets inside an Ethernet/IPv4 ARP packet.
mod arp_field {
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const THA: usize = 18;
}

impl VirtualLan {
    /// Builds the server for one LAN. Ports start detached.
    pub fn new(spec: LanSpec) -> Result<VirtualLan, LanError> {
        if !MTU_RANGE.contains(&spec.mtu) {
            return Err(LanError::Mtu { lan: spec.name, mtu: spec.mtu });
        }
        let lan = spec.name.clone();
        let mut by_mac = HashMap::new();
        let mut by_ip = HashMap::new();
        let mut promiscuous = Vec::new();
        for (id, p) in spec.ports.iter().enumerate() {
            if p.mac.is_group() {
                return Err(LanError::GroupMac { lan, node: p.node.clone(), mac: p.mac });
            }
            if by_mac.insert(p.mac, id).is_some() {
                return Err(LanError::DuplicateMac { lan, mac: p.mac });
            }
            for &ip in &p.ips {
                if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
                    return Err(LanError::BadIp { lan, ip });
                }
                if by_ip.insert(ip, id).is_some() {
                    return Err(LanError::DuplicateIp { lan, ip });
                }
            }
            if p.promiscuous {
                promiscuous.push(id);
            }
        }
        let mut lan = VirtualLan {
            name: spec.name,
            mtu: spec.mtu as usize,
            ports: spec.ports.into_iter().map(|spec| Port { spec, attached: false, traffic: Arc::default() }).collect(),
            by_mac,
            by_ip,
            promiscuous,
            uplink: spec.uplink,
            uplink_traffic: Arc::default(),
            traffic: Arc::default(),
            scratch: Vec::with_capacity(2048),
            clusters: Vec::new(),
            // The one clock reading of the server: where time starts until the caller
            // sets it before its first frames.
            now: Instant::now(),
        };
        lan.build_clusters(spec.clusters)?;
        Ok(lan)
    }

    /// The LAN's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The LAN's MTU.
    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Number of member ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// A port's configuration and current IPs.
    pub fn port(&self, id: PortId) -> Option<&PortSpec> {
        self.ports.get(id).map(|p| &p.spec)
    }

    /// The port of `node`, if it is a member.
    pub fn port_of(&self, node: &str) -> Option<PortId> {
        self.ports.iter().position(|p| p.spec.node == node)
    }

    /// Whether something is attached to the port.
    pub fn is_attached(&self, id: PortId) -> bool {
        self.ports.get(id).is_some_and(|p| p.attached)
    }

    /// Marks a port as attached (frames are delivered to it) or detached (they are dropped
    /// and counted as `port_down`).
    pub fn set_attached(&mut self, id: PortId, attached: bool) -> Result<(), LanError> {
        let lan = &self.name;
        let p = self.ports.get_mut(id).ok_or_else(|| LanError::NoPort { lan: lan.clone(), port: id })?;
        p.attached = attached;
        self.clusters_port_changed(id);
        Ok(())
    }

    /// A port's counters.
    pub fn port_traffic(&self, id: PortId) -> Option<Arc<Traffic>> {
        self.ports.get(id).map(|p| p.traffic.clone())
    }

    /// The LAN's counters (everything any port or the uplink sent or received).
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// The uplink's counters ("in" is from outside).
    pub fn uplink_traffic(&self) -> Arc<Traffic> {
        self.uplink_traffic.clone()
    }

    /// The uplink mode, if the LAN has an uplink.
    pub fn uplink(&self) -> Option<UplinkMode> {
        self.uplink
    }

    /// Whether some member may see all traffic (and so needs copies of every frame).
    pub fn has_promiscuous(&self) -> bool {
        !self.promiscuous.is_empty()
    }

    /// Entries in the server's ARP table (IP to port bindings).
    pub fn arp_entries(&self) -> usize {
        self.by_ip.len()
    }

    /// A frame sent by member port `from`. `wire_len` is the length of the largest frame
    /// this stands for on the wire: `frame.len()` normally, the first segment's length when
    /// `frame` is a GSO super-frame that will be cut into MTU-sized segments.
    pub fn from_port(&mut self, from: PortId, frame: &[u8], wire_len: usize, out: &mut impl Sink) {
        let Some(port) = self.ports.get(from) else { return };
        port.traffic.frames_in.bump(1);
        port.traffic.bytes_in.bump(frame.len() as u64);
        self.traffic.frames_in.bump(1);
        self.traffic.bytes_in.bump(frame.len() as u64);
        match self.check_from_port(from, frame, wire_len) {
            Err(DropReason::Mtu) => self.oversize_from_port(from, frame, wire_len, out),
            Err(why) => {
                self.ports[from].traffic.count_drop(why);
                self.traffic.count_drop(why);
            }
            Ok(Route::Only(to)) => {
                self.send(Dest::Port(to), frame, Emit::Input, out);
                self.mirror(Some(from), Some(to), frame, out);
            }
            Ok(Route::ByMac(dst)) => self.forward(Some(from), dst, frame, out),
            Ok(Route::Cluster(c)) => self.relay_to_cluster(c, Some(from), frame, out),
            Ok(Route::ClusterArp) => {
                self.cluster_arp_from_port(from, frame, out);
            }
        }
    }

    /// Moves `ip` to port `to` (failover of a personality, or an address change) and
    /// announces it with a gratuitous ARP to every other member and, when the virtual
    /// MACs are visible outside, to the uplink.
    pub fn move_ip(&mut self, ip: Ipv4Addr, to: PortId, out: &mut impl Sink) -> Result<(), LanError> {
        self.rebind_ip(ip, to)?;
        self.garp(ip, to, out);
        Ok(())
    }

    /// Moves `ip` to port `to` in the tables only, announcing nothing: what a data-path
    /// worker's copy of the LAN does while another copy announces the move.
    pub fn rebind_ip(&mut self, ip: Ipv4Addr, to: PortId) -> Result<(), LanError> {
        if to >= self.ports.len() {
            return Err(LanError::NoPort { lan: self.name.clone(), port: to });
        }
        let addr = IpAddr::V4(ip);
        if addr.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(LanError::BadIp { lan: self.name.clone(), ip: addr });
        }
        if let Some(old) = self.by_ip.insert(addr, to) {
            self.ports[old].spec.ips.retain(|&i| i != addr);
        }
        self.ports[to].spec.ips.push(addr);
        Ok(())
    }

    /// Announces every IPv4 address of port `id` with a gratuitous ARP from its MAC, as
    /// [`VirtualLan::move_ip`] does for one: after a node's port has been plugged in
    /// somewhere else (a failover), so caches that lost the entry learn it again at once.
    pub fn announce(&mut self, id: PortId, out: &mut impl Sink) -> Result<(), LanError> {
        let port = self.ports.get(id).ok_or_else(|| LanError::NoPort { lan: self.name.clone(), port: id })?;
        let ips: Vec<Ipv4Addr> = port
            .spec
            .ips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        for ip in ips {
            self.garp(ip, id, out);
        }
        Ok(())
    }

    /// A gratuitous ARP for `ip` from port `from`'s MAC to every other member and, when
    /// the virtual MACs are visible outside, to the uplink.
    fn garp(&mut self, ip: Ipv4Addr, from: PortId, out: &mut impl Sink) {
        let mac = self.ports[from].spec.mac;
        let garp = arp_frame(Mac::BROADCAST, mac, ArpOperation::REQUEST, mac, ip, Mac::default(), ip);
        for q in 0..self.ports.len() {
            if q != from {
                self.send(Dest::Port(q), &garp, Emit::Generated, out);
            }
        }
        if self.uplink == Some(UplinkMode::Unfiltered) {
            self.send(Dest::Uplink, &garp, Emit::Generated, out);
        }
    }

    /// A frame larger than the LAN's MTU from port `from`: dropped and counted (with the
    /// largest such packet), logged the first time and then at every power of two of the
    /// count, and for an IPv4 packet with DF set answered with ICMP "fragmentation needed"
    /// carrying the LAN's MTU, as a router would, so the node's path MTU discovery recovers
    /// instead of its connection black-holing (a node whose interface MTU is above the
    /// LAN's, say).
    fn oversize_from_port(&mut self, from: PortId, frame: &[u8], wire_len: usize, out: &mut impl Sink) {
        let size = wire_len.saturating_sub(ETH_HLEN) as u64;
        let port = &self.ports[from];
        port.traffic.count_drop(DropReason::Mtu);
        port.traffic.largest_oversize.raise_to(size);
        self.traffic.count_drop(DropReason::Mtu);
        self.traffic.largest_oversize.raise_to(size);
        let drops = port.traffic.drops(DropReason::Mtu);
        if drops.is_power_of_two() {
            tracing::warn!(
                lan = %self.name,
                node = %port.spec.node,
                size,
                mtu = self.mtu,
                drops,
                "dropped a packet larger than the LAN's MTU: the node's interface MTU is probably above it"
            );
        }
        if let Some(icmp) = frag_needed(frame, self.mtu.min(usize::from(u16::MAX)) as u16) {
            self.send(Dest::Port(from), &icmp, Emit::Generated, out);
        }
    }

    fn check_from_port(&self, from: PortId, frame: &[u8], wire_len: usize) -> Result<Route, DropReason> {
        let me = &self.ports[from].spec;
        if frame.len() < ETH_HLEN || wire_len < ETH_HLEN {
            return Err(DropReason::Malformed);
        }
        if wire_len - ETH_HLEN > self.mtu {
            return Err(DropReason::Mtu);
        }
        let (dst, src) = (mac_at(frame, 0), mac_at(frame, 6));
        if src != me.mac {
            return Err(DropReason::MacSpoof);
        }
        let payload = &frame[ETH_HLEN..];
        match EtherType(u16::from_be_bytes([frame[12], frame[13]])) {
            EtherType::ARP => {
                let arp = parse_arp(payload).ok_or(DropReason::Malformed)?;
                if Mac(arp.sender_mac) != me.mac {
                    return Err(DropReason::ArpSpoof);
                }
                // Requests for a cluster's address, replies to it, and anything from it.
                if !self.clusters.is_empty()
                    && (self.cluster_by_ip(arp.sender_ipv4_addr()).is_some()
                        || (arp.sender_ipv4 != arp.target_ipv4 && self.cluster_by_ip(arp.target_ipv4_addr()).is_some()))
                {
                    return Ok(Route::ClusterArp);
                }
                let spa = IpAddr::V4(arp.sender_ipv4_addr());
                if !spa.is_unspecified() && self.by_ip.get(&spa) != Some(&from) {
                    return Err(DropReason::ArpSpoof);
                }
                if let Some(to) = self.arp_request_owner(frame) {
                    if to != from {
                        return Ok(Route::Only(to));
                    }
                }
            }
            EtherType::IPV4 => {
                if payload.len() < 20 || payload[0] >> 4 != 4 {
                    return Err(DropReason::Malformed);
                }
                let src4 = Ipv4Addr::new(payload[12], payload[13], payload[14], payload[15]);
                let src = IpAddr::V4(src4);
                if !src.is_unspecified() && self.by_ip.get(&src) != Some(&from) && !self.may_send_as_cluster(from, src4)
                {
                    return Err(DropReason::IpSpoof);
                }
                if let Some(c) = self.cluster_for_frame(frame) {
                    return Ok(Route::Cluster(c));
                }
            }
            EtherType::IPV6 => {
                if payload.len() < 40 || payload[0] >> 4 != 6 {
                    return Err(DropReason::Malformed);
                }
                let mut a = [0u8; 16];
                a.copy_from_slice(&payload[8..24]);
                let src = Ipv6Addr::from(a);
                let ok = src.is_unspecified()
                    || src == me.mac.ipv6_link_local()
                    || self.by_ip.get(&IpAddr::V6(src)) == Some(&from);
                if !ok {
                    return Err(DropReason::IpSpoof);
                }
            }
            EtherType::VLAN_TAGGED_FRAME | EtherType::PROVIDER_BRIDGING | EtherType::VLAN_DOUBLE_TAGGED_FRAME => {
                return Err(DropReason::Tagged);
            }
            _ => {}
        }
        Ok(Route::ByMac(dst))
    }

    /// For a broadcast ARP request (not an announcement) whose target IP a member owns:
    /// that member.
    fn arp_request_owner(&self, frame: &[u8]) -> Option<PortId> {
        if frame.len() < ETH_HLEN || mac_at(frame, 0) != Mac::BROADCAST || frame[12..14] != [0x08, 0x06] {
            return None;
        }
        let arp = parse_arp(&frame[ETH_HLEN..])?;
        if arp.operation != ArpOperation::REQUEST || arp.sender_ipv4 == arp.target_ipv4 {
            return None;
        }
        self.by_ip.get(&IpAddr::V4(arp.target_ipv4_addr())).copied()
    }

    /// Layer-2 forwarding from a port (`Some`) or the unfiltered uplink (`None`).
    fn forward(&mut self, from: Option<PortId>, dst: Mac, frame: &[u8], out: &mut impl Sink) {
        if dst.is_group() {
            for q in 0..self.ports.len() {
                if Some(q) != from {
                    self.send(Dest::Port(q), frame, Emit::Input, out);
                }
            }
            if from.is_some() && self.uplink.is_some() {
                self.send_uplink(frame, out);
            }
            return;
        }
        match self.by_mac.get(&dst).copied() {
            Some(to) if Some(to) == from => {}
            Some(to) => {
                self.send(Dest::Port(to), frame, Emit::Input, out);
                self.mirror(from, Some(to), frame, out);
            }
            None if from.is_some() && self.uplink.is_some() => {
                self.send_uplink(frame, out);
                self.mirror(from, None, frame, out);
            }
            None => match from {
                Some(p) => {
                    self.ports[p].traffic.count_drop(DropReason::UnknownDestination);
                    self.traffic.count_drop(DropReason::UnknownDestination);
                }
                None => self.uplink_drop(DropReason::UnknownDestination),
            },
        }
    }

    /// Copies of a unicast frame for promiscuous ports other than its sender and receiver.
    fn mirror(&mut self, from: Option<PortId>, to: Option<PortId>, frame: &[u8], out: &mut impl Sink) {
        for i in 0..self.promiscuous.len() {
            let q = self.promiscuous[i];
            if Some(q) != from && Some(q) != to {
                self.send(Dest::Port(q), frame, Emit::Input, out);
            }
        }
    }

    /// Delivers one copy and counts it.
    fn send(&self, to: Dest, frame: &[u8], emit: Emit, out: &mut impl Sink) {
        match to {
            Dest::Port(q) => {
                if !self.ports[q].attached {
                    self.ports[q].traffic.count_drop(DropReason::PortDown);
                    self.traffic.count_drop(DropReason::PortDown);
                    return;
                }
                let sent = out.deliver(to, frame, emit);
                self.count_send(q, frame.len(), sent);
            }
            Dest::Uplink => {
                let t = &self.uplink_traffic;
                if out.deliver(to, frame, emit) {
                    t.frames_out.bump(1);
                    t.bytes_out.bump(frame.len() as u64);
                    self.traffic.frames_out.bump(1);
                    self.traffic.bytes_out.bump(frame.len() as u64);
                } else {
                    t.count_drop(DropReason::TxFailed);
                    self.traffic.count_drop(DropReason::TxFailed);
                }
            }
        }
    }

    fn count_send(&self, q: PortId, len: usize, sent: bool) {
        let t = &self.ports[q].traffic;
        if sent {
            t.frames_out.bump(1);
            t.bytes_out.bump(len as u64);
            self.traffic.frames_out.bump(1);
            self.traffic.bytes_out.bump(len as u64);
        } else {
            t.count_drop(DropReason::TxFailed);
            self.traffic.count_drop(DropReason::TxFailed);
        }
    }
}

enum Route {
    /// Deliver only to this port (an ARP request for its IP).
    Only(PortId),
    /// Ordinary layer-2 forwarding by destination MAC.
    ByMac(Mac),
    /// To a service cluster's MAC.
    Cluster(usize),
    /// ARP about a cluster's IP.
    ClusterArp,
}

fn mac_at(frame: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[at..at + 6]);
    Mac(m)
}

fn parse_arp(payload: &[u8]) -> Option<etherparse::ArpEthIpv4Packet> {
    let slice = ArpPacketSlice::from_slice(payload).ok()?;
    slice.to_packet().try_eth_ipv4().ok()
}

/// An Ethernet frame carrying an Ethernet/IPv4 ARP packet.
pub fn arp_frame(dst: Mac, src: Mac, op: ArpOperation, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let arp = etherparse::ArpEthIpv4Packet {
        operation: op,
        sender_mac: sha.0,
        sender_ipv4: spa.octets(),
        target_mac: tha.0,
        target_ipv4: tpa.octets(),
    };
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&EtherType::ARP.0.to_be_bytes());
    f.extend_from_slice(&arp.to_bytes());
    debug_assert_eq!(u16::from_be_bytes([f[ETH_HLEN + arp_field::OPER], f[ETH_HLEN + arp_field::OPER + 1]]), op.0);
    // Pad to the 60-byte Ethernet minimum, as a NIC would.
    f.resize(60, 0);
    f
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
