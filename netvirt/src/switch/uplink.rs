//! The uplink's side of the LAN server: frames from the host interface, switched by MAC
//! (unfiltered) or, behind one external MAC, by destination IP (filtered); and frames to
//! it, their source MACs rewritten in filtered mode.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{ArpOperation, EtherType};

use super::{arp_field, arp_frame, mac_at, parse_arp, Dest, Emit, PortId, Sink, UplinkMode, VirtualLan, ETH_HLEN};
use crate::counters::DropReason;
use crate::mac::Mac;

impl VirtualLan {
    /// A frame that arrived on the uplink, with its 802.1Q tag removed; `wire_len` as for
    /// [`VirtualLan::from_port`].
    pub fn from_uplink(&mut self, frame: &[u8], wire_len: usize, out: &mut impl Sink) {
        self.uplink_traffic.frames_in.bump(1);
        self.uplink_traffic.bytes_in.bump(frame.len() as u64);
        self.traffic.frames_in.bump(1);
        self.traffic.bytes_in.bump(frame.len() as u64);
        let Some(mode) = self.uplink else {
            return self.uplink_drop(DropReason::UnknownDestination);
        };
        if frame.len() < ETH_HLEN || wire_len < ETH_HLEN {
            return self.uplink_drop(DropReason::Malformed);
        }
        if wire_len - ETH_HLEN > self.mtu {
            return self.uplink_drop(DropReason::Mtu);
        }
        let dst = mac_at(frame, 0);
        match mode {
            UplinkMode::Unfiltered => {
                if !self.clusters.is_empty() {
                    if frame[12..14] == [0x08, 0x06] && self.cluster_arp_from_uplink(frame, None, out) {
                        return;
                    }
                    if let Some(c) = self.cluster_for_frame(frame) {
                        return self.relay_to_cluster(c, None, frame, out);
                    }
                }
                if let Some(to) = self.arp_request_owner(frame) {
                    self.send(Dest::Port(to), frame, Emit::Input, out);
                    self.mirror(None, Some(to), frame, out);
                } else {
                    self.forward(None, dst, frame, out);
                }
            }
            UplinkMode::Filtered { external_mac } => self.filtered_inbound(external_mac, frame, out),
        }
    }

    pub(super) fn send_uplink(&mut self, frame: &[u8], out: &mut impl Sink) {
        match self.uplink {
            Some(UplinkMode::Unfiltered) => self.send(Dest::Uplink, frame, Emit::Input, out),
            Some(UplinkMode::Filtered { external_mac }) => {
                let mut buf = std::mem::take(&mut self.scratch);
                buf.clear();
                buf.extend_from_slice(frame);
                buf[6..12].copy_from_slice(&external_mac.0);
                if buf[12..14] == [0x08, 0x06] && buf.len() >= ETH_HLEN + arp_field::SHA + 6 {
                    let sha = ETH_HLEN + arp_field::SHA;
                    buf[sha..sha + 6].copy_from_slice(&external_mac.0);
                }
                self.send(Dest::Uplink, &buf, Emit::Rewritten, out);
                self.scratch = buf;
            }
            None => {}
        }
    }

    fn filtered_inbound(&mut self, external: Mac, frame: &[u8], out: &mut impl Sink) {
        let payload = &frame[ETH_HLEN..];
        let ethertype = EtherType(u16::from_be_bytes([frame[12], frame[13]]));
        let owner_mac_rewrite = |lan: &mut VirtualLan, to: PortId, tha: bool, out: &mut dyn FnMut(&[u8])| {
            let mac = lan.ports[to].spec.mac;
            let mut buf = std::mem::take(&mut lan.scratch);
            buf.clear();
            buf.extend_from_slice(frame);
            buf[0..6].copy_from_slice(&mac.0);
            if tha {
                let t = ETH_HLEN + arp_field::THA;
                buf[t..t + 6].copy_from_slice(&mac.0);
            }
            out(&buf);
            lan.scratch = buf;
        };
        if ethertype == EtherType::ARP {
            if !self.clusters.is_empty() && self.cluster_arp_from_uplink(frame, Some(external), out) {
                return;
            }
            let Some(arp) = parse_arp(payload) else { return self.uplink_drop(DropReason::Malformed) };
            let owner = self.by_ip.get(&IpAddr::V4(arp.target_ipv4_addr())).copied();
            match (arp.operation, owner) {
                (ArpOperation::REQUEST, Some(_)) if arp.sender_ipv4 != arp.target_ipv4 => {
                    // The outside sees one host: answer for every member IP with our MAC.
                    let reply = arp_frame(
                        Mac(arp.sender_mac),
                        external,
                        ArpOperation::REPLY,
                        external,
                        arp.target_ipv4_addr(),
                        Mac(arp.sender_mac),
                        arp.sender_ipv4_addr(),
                    );
                    self.send(Dest::Uplink, &reply, Emit::Generated, out);
                }
                (ArpOperation::REPLY, Some(to)) => {
                    let mut sent = false;
                    owner_mac_rewrite(self, to, true, &mut |f| sent = out.deliver(Dest::Port(to), f, Emit::Rewritten));
                    self.count_send(to, frame.len(), sent);
                    self.mirror(None, Some(to), frame, out);
                }
                _ if mac_at(frame, 0).is_group() => {
                    // Announcements and requests for outside IPs: members may want to learn.
                    self.forward(None, Mac::BROADCAST, frame, out);
                }
                _ => self.uplink_drop(DropReason::UnknownDestination),
            }
            return;
        }
        if mac_at(frame, 0).is_group() {
            return self.forward(None, mac_at(frame, 0), frame, out);
        }
        let owner = if ethertype == EtherType::IPV4 && payload.len() >= 20 {
            let dst = Ipv4Addr::new(payload[16], payload[17], payload[18], payload[19]);
            if let Some(c) = self.cluster_by_ip(dst) {
                return self.relay_to_cluster(c, None, frame, out);
            }
            self.by_ip.get(&IpAddr::V4(dst)).copied()
        } else if ethertype == EtherType::IPV6 && payload.len() >= 40 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&payload[24..40]);
            self.by_ip.get(&IpAddr::V6(Ipv6Addr::from(a))).copied()
        } else {
            None
        };
        match owner {
            Some(to) => {
                let mut sent = false;
                owner_mac_rewrite(self, to, false, &mut |f| sent = out.deliver(Dest::Port(to), f, Emit::Rewritten));
                self.count_send(to, frame.len(), sent);
                self.mirror(None, Some(to), frame, out);
            }
            None => self.uplink_drop(DropReason::UnknownDestination),
        }
    }

    pub(super) fn uplink_drop(&self, why: DropReason) {
        self.uplink_traffic.count_drop(why);
        self.traffic.count_drop(why);
    }
}
