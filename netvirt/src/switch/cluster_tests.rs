//! The LAN server's handling of service clusters: ARP for the cluster IP, relaying to a
//! backend by MAC, anti-spoofing of the cluster IP, health from ports, uplinks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;

use super::*;
use crate::cluster::{ClusterSpec, Limits, Proto, ServiceSpec};

#[derive(Default)]
struct Wire {
    sent: Vec<(Dest, Vec<u8>, Emit)>,
}

impl Sink for Wire {
    fn deliver(&mut self, to: Dest, frame: &[u8], emit: Emit) -> bool {
        let mut f = frame.to_vec();
        if let Emit::Redirect(mac) = emit {
            f[0..6].copy_from_slice(&mac.0);
        }
        self.sent.push((to, f, emit));
        true
    }
}

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VMAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x64]);

/// Ports n0..n4 (MAC 02::0n, IP 198.18.0.(n+1)); n1, n2 and n3 serve TCP 80 of cluster
/// "web" at 198.18.0.100.
fn lan(uplink: Option<UplinkMode>) -> VirtualLan {
    let ports = (0..5)
        .map(|n| PortSpec { node: format!("n{n}"), mac: mac(n), ips: vec![IpAddr::V4(ip(n + 1))], promiscuous: false })
        .collect();
    let service = ServiceSpec {
        proto: Proto::Tcp,
        port: 80,
        backends: vec!["n1".into(), "n2".into(), "n3".into()],
        sticky: None,
    };
    let spec = ClusterSpec { name: "web".into(), ip: VIP, services: vec![service] };
    let limits = Limits { table_size: 251, ..Limits::default() };
    let clusters = vec![ClusterLanSpec { spec, mac: VMAC, limits }];
    let mut l = VirtualLan::new(LanSpec { name: "a".into(), mtu: 1500, ports, uplink, clusters }).unwrap();
    for p in 0..5 {
        l.set_attached(p, true).unwrap();
    }
    l.set_clock(Instant::now());
    l
}

fn syn(src: Mac, dst: Mac, sip: Ipv4Addr, sport: u16, dip: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(sip.octets(), dip.octets(), 64)
        .tcp(sport, dport, 1, 65535)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    arp_frame(Mac::BROADCAST, sha, ArpOperation::REQUEST, sha, spa, Mac::default(), tpa)
}

#[test]
fn arp_for_the_cluster_ip_is_answered_by_the_server_with_the_clusters_mac() {
    let mut l = lan(None);
    let mut w = Wire::default();
    l.from_port(0, &arp_request(mac(0), ip(1), VIP), 60, &mut w);
    assert_eq!(w.sent.len(), 1, "the request went on to members");
    let (to, frame, emit) = &w.sent[0];
    assert_eq!((*to, *emit), (Dest::Port(0), Emit::Generated));
    let arp = parse_arp(&frame[ETH_HLEN..]).unwrap();
    assert_eq!((arp.operation, Mac(arp.sender_mac), arp.sender_ipv4_addr()), (ArpOperation::REPLY, VMAC, VIP));
    // A member's own reply for the cluster IP is dropped.
    w.sent.clear();
    let reply = arp_frame(mac(0), mac(1), ArpOperation::REPLY, mac(1), VIP, mac(0), ip(1));
    l.from_port(1, &reply, reply.len(), &mut w);
    assert!(w.sent.is_empty());
}

#[test]
fn connections_to_the_cluster_mac_reach_backends_with_their_mac_and_the_packet_unchanged() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let mut per: HashMap<PortId, usize> = HashMap::new();
    for sport in 0..90u16 {
        let f = syn(mac(0), VMAC, ip(1), 10_000 + sport, VIP, 80);
        l.from_port(0, &f, f.len(), &mut w);
        let (to, out, emit) = w.sent.pop().expect("relayed");
        assert!(w.sent.is_empty());
        let Dest::Port(p) = to else { panic!("to the uplink") };
        assert!((1..=3).contains(&p), "to a non-backend {p}");
        assert_eq!(emit, Emit::Redirect(mac(p as u8)));
        assert_eq!(&out[0..6], &mac(p as u8).0);
        assert_eq!(&out[6..], &f[6..]);
        *per.entry(p).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    // A port that is not configured is not served.
    let f = syn(mac(0), VMAC, ip(1), 5, VIP, 22);
    l.from_port(0, &f, f.len(), &mut w);
    assert!(w.sent.is_empty());
    assert_eq!(l.clusters()[0].counters.dropped[0], 1);
}

#[test]
fn only_backends_may_send_from_the_cluster_ip() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let from_backend = syn(mac(1), mac(0), VIP, 80, ip(1), 10_000);
    l.from_port(1, &from_backend, from_backend.len(), &mut w);
    assert_eq!(w.sent.len(), 1);
    let from_other = syn(mac(4), mac(0), VIP, 80, ip(1), 10_000);
    l.from_port(4, &from_other, from_other.len(), &mut w);
    assert_eq!(w.sent.len(), 1);
    assert_eq!(l.port_traffic(4).unwrap().drops(DropReason::IpSpoof), 1);
}

#[test]
fn a_detached_or_drained_backend_gets_no_new_connections() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let mut first = HashMap::new();
    for sport in 0..30u16 {
        let f = syn(mac(0), VMAC, ip(1), sport, VIP, 80);
        l.from_port(0, &f, f.len(), &mut w);
        first.insert(sport, w.sent.pop().unwrap().0);
    }
    l.set_attached(2, false).unwrap();
    assert!(l.set_draining("web", Proto::Tcp, 80, "n3", true));
    for sport in 100..160u16 {
        let f = syn(mac(0), VMAC, ip(1), sport, VIP, 80);
        l.from_port(0, &f, f.len(), &mut w);
        assert_eq!(w.sent.pop().unwrap().0, Dest::Port(1));
    }
    // Flows on the draining backend stay there.
    for (sport, to) in &first {
        if *to == Dest::Port(3) {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(mac(0).0, VMAC.0)
                .ipv4(ip(1).octets(), VIP.octets(), 64)
                .tcp(*sport, 80, 2, 65535)
                .ack(1)
                .write(&mut f, &[])
                .unwrap();
            l.from_port(0, &f, f.len(), &mut w);
            assert_eq!(w.sent.pop().unwrap().0, Dest::Port(3));
        }
    }
    let status = &l.clusters()[0];
    let health: Vec<_> = status.backends.iter().map(|b| (b.2.as_str(), b.3)).collect();
    assert_eq!(
        health,
        vec![
            ("n1", crate::cluster::Health::Up),
            ("n2", crate::cluster::Health::Down),
            ("n3", crate::cluster::Health::Draining)
        ]
    );
    // A failed check takes a backend down too.
    assert!(l.set_check("web", Proto::Tcp, 80, "n1", false));
    let f = syn(mac(0), VMAC, ip(1), 999, VIP, 80);
    l.from_port(0, &f, f.len(), &mut w);
    assert!(w.sent.is_empty(), "no backend is up, yet a new connection went somewhere");
}

#[test]
fn from_an_unfiltered_uplink_arp_and_connections_reach_the_cluster_and_pings_are_answered() {
    let mut l = lan(Some(UplinkMode::Unfiltered));
    let mut w = Wire::default();
    let outside = Mac([0x02, 9, 9, 9, 9, 9]);
    let peer = Ipv4Addr::new(198, 18, 0, 200);
    let req = arp_request(outside, peer, VIP);
    l.from_uplink(&req, req.len(), &mut w);
    let (to, frame, _) = w.sent.pop().unwrap();
    assert!(w.sent.is_empty());
    assert_eq!(to, Dest::Uplink);
    assert_eq!(Mac(parse_arp(&frame[ETH_HLEN..]).unwrap().sender_mac), VMAC);
    let f = syn(outside, VMAC, peer, 4000, VIP, 80);
    l.from_uplink(&f, f.len(), &mut w);
    assert!(matches!(w.sent.pop().unwrap().0, Dest::Port(1..=3)));
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(outside.0, VMAC.0)
        .ipv4(peer.octets(), VIP.octets(), 64)
        .icmpv4_echo_request(1, 2)
        .write(&mut ping, b"x")
        .unwrap();
    l.from_uplink(&ping, ping.len(), &mut w);
    let (to, reply, emit) = w.sent.pop().unwrap();
    assert_eq!((to, emit), (Dest::Uplink, Emit::Generated));
    assert_eq!((&reply[0..6], &reply[6..12]), (&outside.0[..], &VMAC.0[..]));
    assert_eq!(&reply[ETH_HLEN + 12..ETH_HLEN + 16], &VIP.octets());
}

#[test]
fn a_filtered_uplink_answers_arp_for_the_cluster_with_the_external_mac() {
    let external = Mac([0x02, 7, 7, 7, 7, 7]);
    let mut l = lan(Some(UplinkMode::Filtered { external_mac: external }));
    let mut w = Wire::default();
    let outside = Mac([0x02, 9, 9, 9, 9, 9]);
    let peer = Ipv4Addr::new(198, 18, 0, 200);
    let req = arp_request(outside, peer, VIP);
    l.from_uplink(&req, req.len(), &mut w);
    assert_eq!(Mac(parse_arp(&w.sent.pop().unwrap().1[ETH_HLEN..]).unwrap().sender_mac), external);
    let f = syn(outside, external, peer, 4000, VIP, 80);
    l.from_uplink(&f, f.len(), &mut w);
    let (to, out, _) = w.sent.pop().unwrap();
    let Dest::Port(p) = to else { panic!("not to a port") };
    assert_eq!(&out[0..6], &mac(p as u8).0);
}

#[test]
fn flows_expire_by_the_clock_the_caller_gives() {
    let mut l = lan(None);
    let mut w = Wire::default();
    let t0 = Instant::now();
    l.set_clock(t0);
    let f = syn(mac(0), VMAC, ip(1), 1, VIP, 80);
    l.from_port(0, &f, f.len(), &mut w);
    assert_eq!(l.clusters()[0].flows, 1);
    l.set_clock(t0 + Duration::from_secs(3600));
    assert_eq!(l.clusters()[0].flows, 0);
}

#[test]
fn a_member_asking_from_the_cluster_ip_asks_as_the_cluster_and_every_member_hears_the_answer() {
    let mut l = lan(None);
    let mut w = Wire::default();
    // n1 (a backend) asks for n0's address from the cluster IP.
    let ask = arp_request(mac(1), VIP, ip(1));
    l.from_port(1, &ask, ask.len(), &mut w);
    let dests: Vec<Dest> = w.sent.iter().map(|s| s.0).collect();
    assert_eq!(dests, vec![Dest::Port(0), Dest::Port(4)], "other members got it");
    for (_, f, _) in &w.sent {
        let arp = parse_arp(&f[ETH_HLEN..]).unwrap();
        assert_eq!((Mac(arp.sender_mac), mac_at(f, 6)), (VMAC, VMAC), "a member's MAC went out for the cluster IP");
    }
    w.sent.clear();
    // n0 answers the cluster; every member hears it.
    let answer = arp_frame(VMAC, mac(0), ArpOperation::REPLY, mac(0), ip(1), VMAC, VIP);
    l.from_port(0, &answer, answer.len(), &mut w);
    let mut dests: Vec<Dest> = w.sent.iter().map(|s| s.0).collect();
    dests.sort_by_key(|d| match d {
        Dest::Port(p) => *p,
        Dest::Uplink => usize::MAX,
    });
    assert_eq!(dests, vec![Dest::Port(1), Dest::Port(2), Dest::Port(3)]);
    // An answer claiming another port's address is spoofing.
    w.sent.clear();
    let forged = arp_frame(VMAC, mac(0), ArpOperation::REPLY, mac(0), ip(3), VMAC, VIP);
    l.from_port(0, &forged, forged.len(), &mut w);
    assert!(w.sent.is_empty());
    assert_eq!(l.port_traffic(0).unwrap().drops(DropReason::ArpSpoof), 1);
    // A non-member may not ask from the cluster IP at all.
    let stranger = arp_request(mac(4), VIP, ip(1));
    l.from_port(4, &stranger, stranger.len(), &mut w);
    assert!(w.sent.is_empty());
}

#[test]
fn a_gratuitous_arp_from_outside_reaches_every_member() {
    let mut l = lan(Some(UplinkMode::Unfiltered));
    let mut w = Wire::default();
    let outside = Mac([0x02, 9, 9, 9, 9, 9]);
    let router = Ipv4Addr::new(198, 18, 0, 254);
    let garp = arp_request(outside, router, router);
    l.from_uplink(&garp, garp.len(), &mut w);
    let mut dests: Vec<Dest> = w.sent.iter().map(|s| s.0).collect();
    dests.sort_by_key(|d| match d {
        Dest::Port(p) => *p,
        Dest::Uplink => usize::MAX,
    });
    assert_eq!(dests, (0..5).map(Dest::Port).collect::<Vec<_>>(), "cluster members and the rest alike");
}
