//! The kernel fast path, sans-IO: which frames between a LAN's TAP-kind ports the kernel
//! may forward by itself, as `tc` u32 matches with mirred actions, and the guard program
//! in front of them ([`guard`]).
//!
//! A port's node sees a veth whose other end (the port's *wire*) sits in the gateway's
//! private namespace, beside the port's TAP (the userspace switch's side). On the wire's
//! ingress, in order: the guard; one rule per (source address, destination port), which
//! redirects the frame straight to the destination's wire; and a catch-all that sends the
//! rest to the TAP. Whatever the userspace switch writes to the TAP goes out of the wire.
//!
//! A rule matches only unicast IPv4 or IPv6 whose source MAC is the port's, whose source
//! address is one the port may send from (registered to it, a cluster's it serves, or, for
//! IPv6, the link-local address of its MAC),
//! and whose destination MAC is another live member's: exactly the frames the switch would
//! forward to that one member unchanged. Everything else (ARP, broadcast and multicast,
//! frames to a service cluster or the uplink, spoofed sources, anything the guard
//! diverts) still goes through the switch, which stays the only place that drops, answers
//! and counts by reason. Promiscuous members get their copies from mirror actions on the
//! same rules.

mod bpf;
pub mod guard;
pub mod offload;

pub use self::bpf::Insn;

use std::net::IpAddr;

use crate::mac::Mac;

/// A live TAP-kind member of a LAN, as the fast path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its wire's interface index in the private namespace.
    pub wire: u32,
    /// Its MAC.
    pub mac: Mac,
    /// Addresses it may send from: those registered to it, and those of the service
    /// clusters it serves as a backend (its answers come from there).
    pub ips: Vec<IpAddr>,
    /// Allowed to see all traffic.
    pub promiscuous: bool,
}

/// One forwarding rule on a member's wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The sender's MAC.
    pub src_mac: Mac,
    /// The sender's address.
    pub src_ip: IpAddr,
    /// The receiver's MAC.
    pub dst_mac: Mac,
    /// The receiver's wire.
    pub to: u32,
    /// Wires of promiscuous members that get a copy.
    pub copies: Vec<u32>,
}

/// One 32-bit u32 classifier key: `(packet[off..off + 4] & mask) == value`, with `off`
/// relative to the network header (the Ethernet header is at -14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Offset from the network header.
    pub off: i32,
    /// Bytes to compare, in packet order.
    pub value: [u8; 4],
    /// Which bits count, in packet order.
    pub mask: [u8; 4],
}

impl Rule {
    /// The EtherType the rule's filter is registered for.
    pub fn ethertype(&self) -> u16 {
        if self.src_ip.is_ipv4() {
            0x0800
        } else {
            0x86dd
        }
    }

    /// The u32 keys that match the rule's frames: destination and source MAC, the IP
    /// version, a whole IP header's worth of bytes (a key with no bits still needs its four
    /// bytes there), then the source address. The switch drops a frame of the EtherType
    /// whose version differs or whose header is cut short, so the rule must not take it.
    pub fn keys(&self) -> Vec<Key> {
        let (d, s) = (self.dst_mac.0, self.src_mac.0);
        let all = [0xff; 4];
        let (version, header) = if self.src_ip.is_ipv4() { (0x40, 20) } else { (0x60, 40) };
        let mut keys = vec![
            Key { off: -14, value: [d[0], d[1], d[2], d[3]], mask: all },
            Key { off: -10, value: [d[4], d[5], s[0], s[1]], mask: all },
            Key { off: -6, value: [s[2], s[3], s[4], s[5]], mask: all },
            Key { off: 0, value: [version, 0, 0, 0], mask: [0xf0, 0, 0, 0] },
            Key { off: header - 4, value: [0; 4], mask: [0; 4] },
        ];
        match self.src_ip {
            IpAddr::V4(ip) => keys.push(Key { off: 12, value: ip.octets(), mask: all }),
            IpAddr::V6(ip) => {
                let o = ip.octets();
                for (i, chunk) in o.chunks_exact(4).enumerate() {
                    let value = [chunk[0], chunk[1], chunk[2], chunk[3]];
                    keys.push(Key { off: 8 + 4 * i as i32, value, mask: all });
                }
            }
        }
        keys
    }
}

/// The rules for every member's wire, by wire. A LAN with a promiscuous member the fast
/// path cannot reach (`unreachable_promiscuous`: a ring port) gets none, so its traffic all
/// goes through the switch and the member misses nothing.
pub fn rules(members: &[Member], unreachable_promiscuous: bool) -> Vec<(u32, Vec<Rule>)> {
    members
        .iter()
        .map(|from| {
            let mut rules = Vec::new();
            if unreachable_promiscuous {
                return (from.wire, rules);
            }
            let mut sources: Vec<IpAddr> = from.ips.clone();
            sources.push(IpAddr::V6(from.mac.ipv6_link_local()));
            for to in members.iter().filter(|m| m.wire != from.wire && m.mac != from.mac) {
                let copies: Vec<u32> = members
                    .iter()
                    .filter(|p| p.promiscuous && p.wire != from.wire && p.wire != to.wire)
                    .map(|p| p.wire)
                    .collect();
                for &src_ip in &sources {
                    rules.push(Rule {
                        src_mac: from.mac,
                        src_ip,
                        dst_mac: to.mac,
                        to: to.wire,
                        copies: copies.clone(),
                    });
                }
            }
            (from.wire, rules)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn member(wire: u32, last: u8, ip: [u8; 4], promiscuous: bool) -> Member {
        Member { wire, mac: Mac([0x02, 0, 0, 0, 0, last]), ips: vec![IpAddr::V4(Ipv4Addr::from(ip))], promiscuous }
    }

    #[test]
    fn each_member_reaches_every_other_from_its_own_addresses_only() {
        let m = [member(10, 1, [198, 18, 0, 1], false), member(11, 2, [198, 18, 0, 2], false)];
        let r = rules(&m, false);
        assert_eq!(r.len(), 2);
        let (wire, on_first) = &r[0];
        assert_eq!(*wire, 10);
        // Its IPv4 address and its MAC's IPv6 link-local address, to the one other member.
        assert_eq!(on_first.len(), 2);
        assert!(on_first.iter().all(|r| r.to == 11 && r.src_mac == m[0].mac && r.dst_mac == m[1].mac));
        assert_eq!(on_first[0].src_ip, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(on_first[1].src_ip, IpAddr::V6(m[0].mac.ipv6_link_local()));
        assert!(on_first.iter().all(|r| r.copies.is_empty()));
    }

    #[test]
    fn promiscuous_members_get_copies_of_what_is_not_theirs() {
        let m = [
            member(10, 1, [198, 18, 0, 1], false),
            member(11, 2, [198, 18, 0, 2], false),
            member(12, 3, [198, 18, 0, 3], true),
        ];
        let r = rules(&m, false);
        let to_second = r[0].1.iter().find(|r| r.to == 11).unwrap();
        assert_eq!(to_second.copies, [12]);
        // Frames to or from the promiscuous member are not copied back to it.
        assert!(r[0].1.iter().filter(|r| r.to == 12).all(|r| r.copies.is_empty()));
        assert!(r[2].1.iter().all(|r| r.copies.is_empty()));
        // A promiscuous ring port the kernel cannot reach: no rules at all.
        assert!(rules(&m, true).iter().all(|(_, r)| r.is_empty()));
    }

    #[test]
    fn keys_match_both_macs_and_the_source_address_in_packet_order() {
        let m = [member(10, 1, [198, 18, 0, 1], false), member(11, 2, [198, 18, 0, 2], false)];
        let keys = rules(&m, false)[0].1[0].keys();
        let offs: Vec<i32> = keys.iter().map(|k| k.off).collect();
        assert_eq!(offs, [-14, -10, -6, 0, 16, 12]);
        let mut frame = [0u8; 34];
        frame[14] = 0x45;
        frame[..6].copy_from_slice(&m[1].mac.0);
        frame[6..12].copy_from_slice(&m[0].mac.0);
        frame[14 + 12..14 + 16].copy_from_slice(&[198, 18, 0, 1]);
        let matches = |f: &[u8]| {
            keys.iter().all(|k| {
                let at = (14 + k.off) as usize;
                at + 4 <= f.len() && (0..4).all(|i| f[at + i] & k.mask[i] == k.value[i])
            })
        };
        assert!(matches(&frame));
        let mut spoofed = frame;
        spoofed[14 + 15] = 9;
        assert!(!matches(&spoofed));
        let mut other_mac = frame;
        other_mac[11] = 7;
        assert!(!matches(&other_mac));
        let mut not_v4 = frame;
        not_v4[14] = 0x65;
        assert!(!matches(&not_v4));
        assert!(!matches(&frame[..33]), "a header cut short");
        let v6 = Rule { src_ip: IpAddr::V6(m[0].mac.ipv6_link_local()), ..rules(&m, false)[0].1[0].clone() };
        assert_eq!(v6.keys().len(), 9);
        assert_eq!(v6.ethertype(), 0x86dd);
    }
}
