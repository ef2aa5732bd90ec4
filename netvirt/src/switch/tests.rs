use super::*;
use etherparse::PacketBuilder;

/// Records every delivery.
#[derive(Default)]
struct Wire {
    sent: Vec<(Dest, Vec<u8>, Emit)>,
    refuse: Option<Dest>,
}

impl Sink for Wire {
    fn deliver(&mut self, to: Dest, frame: &[u8], emit: Emit) -> bool {
        if self.refuse == Some(to) {
            return false;
        }
        self.sent.push((to, frame.to_vec(), emit));
        true
    }
}

impl Wire {
    fn dests(&mut self) -> Vec<Dest> {
        let mut d: Vec<Dest> = self.sent.drain(..).map(|(d, _, _)| d).collect();
        d.sort_by_key(|d| match d {
            Dest::Port(p) => *p,
            Dest::Uplink => usize::MAX,
        });
        d
    }
}

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

/// Ports 0..4 with MAC 02::0n and IP 198.18.0.(n+1); port 3 may be promiscuous.
fn lan(uplink: Option<UplinkMode>) -> VirtualLan {
    let ports = (0..4)
        .map(|n| PortSpec { node: format!("n{n}"), mac: mac(n), ips: vec![IpAddr::V4(ip(n + 1))], promiscuous: n == 3 })
        .collect();
    let mut l = VirtualLan::new(LanSpec { name: "a".into(), mtu: 1500, ports, uplink, clusters: Vec::new() }).unwrap();
    for p in 0..4 {
        l.set_attached(p, true).unwrap();
    }
    l
}

fn udp(src: Mac, dst: Mac, sip: Ipv4Addr, dip: Ipv4Addr, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.0, dst.0).ipv4(sip.octets(), dip.octets(), 64).udp(1000, 2000);
    let payload = vec![0xabu8; len];
    let mut f = Vec::new();
    b.write(&mut f, &payload).unwrap();
    f
}

fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    arp_frame(Mac::BROADCAST, sha, ArpOperation::REQUEST, sha, spa, Mac::default(), tpa)
}

fn up(l: &mut VirtualLan, f: &[u8], w: &mut Wire) {
    l.from_uplink(f, f.len(), w);
}

fn send(l: &mut VirtualLan, from: PortId, f: &[u8], w: &mut Wire) {
    l.from_port(from, f, f.len(), w);
}

#[test]
fn unicast_reaches_only_its_owner_and_promiscuous_ports() {
    let mut l = lan(None);
    let mut w = Wire::default();
    send(&mut l, 0, &udp(mac(0), mac(1), ip(1), ip(2), 100), &mut w);
    // Port 3 is promiscuous: it gets a copy; port 2 does not.
    assert_eq!(w.dests(), vec![Dest::Port(1), Dest::Port(3)]);
    send(&mut l, 0, &udp(mac(0), mac(3), ip(1), ip(4), 100), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(3)]);
    // A MAC nobody on this LAN owns (another LAN's port, say) goes nowhere.
    send(&mut l, 0, &udp(mac(0), mac(9), ip(1), ip(2), 100), &mut w);
    assert!(w.dests().is_empty());
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::UnknownDestination), 1);
    let t = l.port_traffic(1).unwrap();
    assert_eq!((t.frames_out.get(), t.bytes_out.get()), (1, 142));
    assert_eq!(l.port_traffic(0).unwrap().frames_in.get(), 3);
}

#[test]
fn broadcast_and_multicast_go_to_every_other_member_and_the_uplink() {
    let mut l = lan(Some(UplinkMode::Unfiltered));
    let mut w = Wire::default();
    send(&mut l, 1, &udp(mac(1), Mac::BROADCAST, ip(2), Ipv4Addr::BROADCAST, 10), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(0), Dest::Port(2), Dest::Port(3), Dest::Uplink]);
    let mcast = Mac([0x01, 0x00, 0x5e, 0, 0, 1]);
    send(&mut l, 2, &udp(mac(2), mcast, ip(3), Ipv4Addr::new(224, 0, 0, 1), 10), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(0), Dest::Port(1), Dest::Port(3), Dest::Uplink]);
    // Unknown unicast leaves by the uplink.
    send(&mut l, 0, &udp(mac(0), mac(42), ip(1), Ipv4Addr::new(198, 19, 0, 1), 10), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(3), Dest::Uplink]);
}

#[test]
fn spoofed_frames_are_dropped_and_counted() {
    let mut l = lan(None);
    let mut w = Wire::default();
    // Port 0 sends with port 1's MAC.
    send(&mut l, 0, &udp(mac(1), mac(2), ip(2), ip(3), 10), &mut w);
    // Its own MAC but port 1's IP.
    send(&mut l, 0, &udp(mac(0), mac(2), ip(2), ip(3), 10), &mut w);
    // ARP claiming port 1's IP, and ARP with a foreign sender MAC.
    send(&mut l, 0, &arp_request(mac(0), ip(2), ip(3)), &mut w);
    let mut forged = arp_request(mac(0), ip(1), ip(3));
    forged[ETH_HLEN + arp_field::SHA + 5] = 1;
    send(&mut l, 0, &forged, &mut w);
    // A gratuitous ARP for someone else's IP (cache poisoning).
    send(&mut l, 0, &arp_request(mac(0), ip(2), ip(2)), &mut w);
    assert!(w.sent.is_empty(), "{:?}", w.sent);
    let t = l.port_traffic(0).unwrap();
    assert_eq!(t.drops(DropReason::MacSpoof), 1);
    assert_eq!(t.drops(DropReason::IpSpoof), 1);
    assert_eq!(t.drops(DropReason::ArpSpoof), 3);
    assert_eq!(l.traffic().drops(DropReason::ArpSpoof), 3);
    // DHCP-style 0.0.0.0 and ARP probes are not spoofing.
    send(&mut l, 0, &udp(mac(0), Mac::BROADCAST, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 10), &mut w);
    send(&mut l, 0, &arp_request(mac(0), Ipv4Addr::UNSPECIFIED, ip(1)), &mut w);
    assert_eq!(w.sent.len(), 6);
}

#[test]
fn ipv6_from_the_eui64_link_local_or_a_registered_address_passes() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let v6 = |src: Ipv6Addr| {
        let b = PacketBuilder::ethernet2(mac(0).0, mac(1).0)
            .ipv6(src.octets(), [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 64)
            .udp(1, 2);
        let mut f = Vec::new();
        b.write(&mut f, &[1, 2, 3]).unwrap();
        f
    };
    send(&mut l, 0, &v6(mac(0).ipv6_link_local()), &mut w);
    send(&mut l, 0, &v6(Ipv6Addr::UNSPECIFIED), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(1), Dest::Port(1), Dest::Port(3), Dest::Port(3)]);
    send(&mut l, 0, &v6(mac(1).ipv6_link_local()), &mut w);
    assert!(w.sent.is_empty());
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::IpSpoof), 1);
}

#[test]
fn frames_above_the_mtu_are_dropped_and_gso_frames_are_judged_by_segment() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let ok = udp(mac(0), mac(1), ip(1), ip(2), 1500 - 28);
    send(&mut l, 0, &ok, &mut w);
    assert_eq!(w.sent.len(), 2);
    let big = udp(mac(0), mac(1), ip(1), ip(2), 1500 - 27);
    send(&mut l, 0, &big, &mut w);
    assert_eq!(w.sent.len(), 3, "only an ICMP answer, back to the sender");
    assert_eq!(w.sent[2].0, Dest::Port(0));
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::Mtu), 1);
    // A 9000-byte super-frame whose segments are 1514 bytes passes.
    let gso = udp(mac(0), mac(1), ip(1), ip(2), 9000);
    l.from_port(0, &gso, 1514, &mut w);
    assert_eq!(w.sent.len(), 5);
    // Runts are malformed.
    send(&mut l, 0, &[0u8; 10], &mut w);
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::Malformed), 1);
}

#[test]
fn arp_requests_go_to_the_owner_and_announcements_to_everyone() {
    let mut l = lan(None);
    let mut w = Wire::default();
    send(&mut l, 0, &arp_request(mac(0), ip(1), ip(3)), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(2), Dest::Port(3)]);
    // For an IP nobody owns, the request is flooded.
    send(&mut l, 0, &arp_request(mac(0), ip(1), ip(77)), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(1), Dest::Port(2), Dest::Port(3)]);
    // Gratuitous ARP for one's own IP is flooded.
    send(&mut l, 0, &arp_request(mac(0), ip(1), ip(1)), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(1), Dest::Port(2), Dest::Port(3)]);
    assert_eq!(l.arp_entries(), 4);
}

#[test]
fn a_moved_ip_is_announced_and_then_belongs_to_its_new_port() {
    let mut l = lan(Some(UplinkMode::Unfiltered));
    let mut w = Wire::default();
    l.move_ip(ip(2), 2, &mut w).unwrap();
    let garps: Vec<_> = w.sent.drain(..).collect();
    assert_eq!(garps.len(), 4, "every member but the new owner, and the uplink");
    for (d, f, e) in &garps {
        assert_ne!(*d, Dest::Port(2));
        assert_eq!(*e, Emit::Generated);
        let a = parse_arp(&f[ETH_HLEN..]).unwrap();
        assert_eq!((Mac(a.sender_mac), a.sender_ipv4_addr(), a.target_ipv4_addr()), (mac(2), ip(2), ip(2)));
    }
    // The old owner may no longer send from it; the new one may.
    send(&mut l, 1, &udp(mac(1), mac(0), ip(2), ip(1), 10), &mut w);
    assert_eq!(l.port_traffic(1).unwrap().drops(DropReason::IpSpoof), 1);
    send(&mut l, 2, &udp(mac(2), mac(0), ip(2), ip(1), 10), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(0), Dest::Port(3)]);
    assert!(l.move_ip(ip(9), 17, &mut w).is_err());
}

#[test]
fn detached_ports_and_refused_deliveries_are_counted() {
    let mut l = lan(None);
    l.set_attached(1, false).unwrap();
    let mut w = Wire { refuse: Some(Dest::Port(3)), ..Wire::default() };
    send(&mut l, 0, &udp(mac(0), mac(1), ip(1), ip(2), 10), &mut w);
    assert!(w.sent.is_empty());
    assert_eq!(l.port_traffic(1).unwrap().drops(DropReason::PortDown), 1);
    assert_eq!(l.port_traffic(3).unwrap().drops(DropReason::TxFailed), 1);
}

#[test]
fn tagged_frames_from_ports_are_refused() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let mut f = udp(mac(0), mac(1), ip(1), ip(2), 10);
    f[12..14].copy_from_slice(&[0x81, 0x00]);
    send(&mut l, 0, &f, &mut w);
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::Tagged), 1);
}

#[test]
fn a_filtered_uplink_shows_one_mac_and_delivers_by_ip() {
    let ext = Mac([0x02, 0xee, 0, 0, 0, 1]);
    let peer = Mac([0x02, 0xdd, 0, 0, 0, 9]);
    let outside = Ipv4Addr::new(198, 18, 0, 200);
    let mut l = lan(Some(UplinkMode::Filtered { external_mac: ext }));
    let mut w = Wire::default();
    // Outbound: source MAC and ARP sender MAC become the external MAC.
    send(&mut l, 0, &arp_request(mac(0), ip(1), outside), &mut w);
    let out: Vec<_> = w.sent.drain(..).filter(|(d, _, _)| *d == Dest::Uplink).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(mac_at(&out[0].1, 6), ext);
    assert_eq!(Mac(parse_arp(&out[0].1[ETH_HLEN..]).unwrap().sender_mac), ext);
    assert_eq!(out[0].2, Emit::Rewritten);
    // Inbound ARP for a member IP is answered with the external MAC, not forwarded.
    up(&mut l, &arp_request(peer, outside, ip(2)), &mut w);
    let (d, f, e) = w.sent.pop().unwrap();
    assert!(w.sent.is_empty());
    assert_eq!((d, e), (Dest::Uplink, Emit::Generated));
    let a = parse_arp(&f[ETH_HLEN..]).unwrap();
    assert_eq!((a.operation, Mac(a.sender_mac), a.sender_ipv4_addr()), (ArpOperation::REPLY, ext, ip(2)));
    assert_eq!(mac_at(&f, 0), peer);
    // Inbound IP to the external MAC reaches the owner of the destination IP, readdressed.
    up(&mut l, &udp(peer, ext, outside, ip(2), 10), &mut w);
    let got: Vec<_> = w.sent.drain(..).collect();
    assert_eq!(got[0].0, Dest::Port(1));
    assert_eq!(mac_at(&got[0].1, 0), mac(1));
    // An ARP reply for a member is readdressed too.
    let reply = arp_frame(ext, peer, ArpOperation::REPLY, peer, outside, ext, ip(1));
    up(&mut l, &reply, &mut w);
    let (d, f, _) = w.sent.remove(0);
    assert_eq!(d, Dest::Port(0));
    assert_eq!(Mac(parse_arp(&f[ETH_HLEN..]).unwrap().target_mac), mac(0));
    // To an IP nobody owns: dropped.
    w.sent.clear();
    up(&mut l, &udp(peer, ext, outside, Ipv4Addr::new(198, 18, 0, 99), 10), &mut w);
    assert!(w.sent.is_empty());
    assert_eq!(l.uplink_traffic().drops(DropReason::UnknownDestination), 1);
}

#[test]
fn an_unfiltered_uplink_bridges_by_mac() {
    let peer = Mac([0x02, 0xdd, 0, 0, 0, 9]);
    let outside = Ipv4Addr::new(198, 18, 0, 200);
    let mut l = lan(Some(UplinkMode::Unfiltered));
    let mut w = Wire::default();
    up(&mut l, &udp(peer, mac(2), outside, ip(3), 10), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(2), Dest::Port(3)]);
    up(&mut l, &arp_request(peer, outside, ip(1)), &mut w);
    assert_eq!(w.dests(), vec![Dest::Port(0), Dest::Port(3)]);
    send(&mut l, 1, &udp(mac(1), peer, ip(2), outside, 10), &mut w);
    let (_, f, e) = w.sent.iter().find(|(d, _, _)| *d == Dest::Uplink).unwrap();
    assert_eq!((mac_at(f, 6), *e), (mac(1), Emit::Input));
}

#[test]
fn bad_configurations_are_refused() {
    let port = |n: u8, m: Mac, i: Ipv4Addr| PortSpec {
        node: format!("n{n}"),
        mac: m,
        ips: vec![IpAddr::V4(i)],
        promiscuous: false,
    };
    let spec = |ports, mtu| LanSpec { name: "x".into(), mtu, ports, uplink: None, clusters: Vec::new() };
    assert!(matches!(VirtualLan::new(spec(vec![], 100)), Err(LanError::Mtu { .. })));
    assert!(matches!(
        VirtualLan::new(spec(vec![port(0, mac(1), ip(1)), port(1, mac(1), ip(2))], 1500)),
        Err(LanError::DuplicateMac { .. })
    ));
    assert!(matches!(
        VirtualLan::new(spec(vec![port(0, mac(1), ip(1)), port(1, mac(2), ip(1))], 1500)),
        Err(LanError::DuplicateIp { .. })
    ));
    assert!(matches!(
        VirtualLan::new(spec(vec![port(0, Mac::BROADCAST, ip(1))], 1500)),
        Err(LanError::GroupMac { .. })
    ));
    assert!(matches!(
        VirtualLan::new(spec(vec![port(0, mac(1), Ipv4Addr::UNSPECIFIED)], 1500)),
        Err(LanError::BadIp { .. })
    ));
    assert!(VirtualLan::new(spec(vec![port(0, mac(1), ip(1))], 9000)).is_ok());
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_never_leave_spoofed(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), from in 0usize..5) {
        let mut l = lan(Some(UplinkMode::Filtered { external_mac: mac(99) }));
        let mut w = Wire::default();
        l.from_port(from, &bytes, bytes.len(), &mut w);
        for (d, f, e) in &w.sent {
            if let (Dest::Port(_), Emit::Input) = (d, e) {
                // Anything a port forwards unchanged carries the sender's own MAC.
                proptest::prop_assert_eq!(mac_at(f, 6), mac(from as u8));
            }
        }
        up(&mut l, &bytes, &mut w);
    }
}

#[test]
fn an_oversize_packet_with_df_gets_fragmentation_needed_from_its_destination() {
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
    let mut l = lan(None);
    let mut w = Wire::default();
    let big = udp(mac(0), mac(1), ip(1), ip(2), 8972);
    l.from_port(0, &big, big.len(), &mut w);
    assert_eq!(l.port_traffic(0).unwrap().snapshot().largest_oversize, 9000);
    let sent = std::mem::take(&mut w.sent);
    let [(to, icmp, emit)] = &sent[..] else { panic!("one answer: {:?}", sent.len()) };
    assert_eq!((*to, *emit), (Dest::Port(0), Emit::Generated));
    assert!(icmp.len() <= 14 + 576, "{} bytes", icmp.len());
    let p = SlicedPacket::from_ethernet(icmp).unwrap();
    assert_eq!((mac_at(icmp, 0), mac_at(icmp, 6)), (mac(0), mac(1)));
    let Some(NetSlice::Ipv4(ipv4)) = &p.net else { panic!("IPv4") };
    assert_eq!((ipv4.header().source_addr(), ipv4.header().destination_addr()), (ip(2), ip(1)));
    let Some(TransportSlice::Icmpv4(m)) = &p.transport else { panic!("ICMP") };
    assert_eq!(
        m.icmp_type(),
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1500 })
    );
    // It quotes the packet's own IP header, so the sender's kernel finds the connection.
    assert_eq!(&m.payload()[..20], &big[14..34]);
    // DF clear: dropped and counted, no answer.
    let mut no_df = big.clone();
    no_df[14 + 6] &= !0x40;
    l.from_port(0, &no_df, no_df.len(), &mut w);
    assert!(w.sent.is_empty());
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::Mtu), 2);
    // Never an ICMP error about an ICMP error.
    assert!(frag_needed(icmp, 576).is_none());
}
