use std::collections::HashMap;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use super::*;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, n)
}

fn service(proto: Proto, port: u16, nodes: &[&str], sticky: bool) -> ServiceSpec {
    ServiceSpec {
        proto,
        port,
        backends: nodes.iter().map(|n| n.to_string()).collect(),
        sticky: sticky.then_some(Duration::from_secs(600)),
    }
}

fn web(sticky: bool) -> Cluster {
    let spec = ClusterSpec {
        name: "web".into(),
        ip: VIP,
        services: vec![service(Proto::Tcp, 80, &["a", "b", "c"], sticky), service(Proto::Udp, 53, &["a", "b"], false)],
    };
    Cluster::new(spec, Limits::default())
}

/// A TCP segment from `from:sport` to the cluster's `port`; `flags` is "S", "A", "F" or "R".
fn tcp(from: Ipv4Addr, sport: u16, port: u16, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(from.octets(), VIP.octets(), 64).tcp(sport, port, 1, 65535);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => unreachable!(),
        };
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn udp(from: Ipv4Addr, sport: u16, port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(from.octets(), VIP.octets(), 64).udp(sport, port).write(&mut out, b"q").unwrap();
    out
}

fn forwarded(v: Verdict<'_>) -> String {
    match v {
        Verdict::Forward(n) => n.to_string(),
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn only_configured_ports_are_served_and_other_addresses_are_not_ours() {
    let mut c = web(false);
    let t = Instant::now();
    assert_eq!(c.route(&tcp(client(1), 4000, 22, "S"), t), Verdict::Drop(ClusterDrop::Port));
    assert_eq!(c.route(&udp(client(1), 4000, 80), t), Verdict::Drop(ClusterDrop::Port));
    assert_eq!(c.counters().dropped[0], 2);
    let mut other = Vec::new();
    PacketBuilder::ipv4(client(1).octets(), [198, 18, 0, 7], 64).tcp(1, 80, 1, 1).write(&mut other, &[]).unwrap();
    assert_eq!(c.route(&other, t), Verdict::NotOurs);
    assert_eq!(c.route(&[0x45, 0, 0], t), Verdict::Drop(ClusterDrop::Malformed));
    forwarded(c.route(&udp(client(1), 4000, 53), t));
}

#[test]
fn a_flow_stays_on_its_backend_and_new_flows_spread() {
    let mut c = web(false);
    let t = Instant::now();
    let mut per: HashMap<String, usize> = HashMap::new();
    for port in 0..300u16 {
        let first = forwarded(c.route(&tcp(client(1), 10_000 + port, 80, "S"), t));
        for flags in ["A", "A", "FA"] {
            assert_eq!(forwarded(c.route(&tcp(client(1), 10_000 + port, 80, flags), t)), first);
        }
        *per.entry(first).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    for (node, n) in &per {
        assert!((60..=138).contains(n), "{node} got {n} of 300 connections");
    }
    assert_eq!(c.counters().new_flows, 300);
    assert_eq!(c.counters().forwarded, 1200);
}

#[test]
fn a_sticky_service_keeps_each_client_on_one_backend() {
    let mut c = web(true);
    let t = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for n in 1..=20u8 {
        let first = forwarded(c.route(&tcp(client(n), 20_000, 80, "S"), t));
        for port in 1..30u16 {
            assert_eq!(forwarded(c.route(&tcp(client(n), 20_000 + port, 80, "S"), t)), first);
        }
        seen.insert(first);
    }
    assert!(seen.len() > 1, "twenty clients all on one backend");
}

#[test]
fn a_draining_backend_keeps_its_flows_and_a_dead_one_loses_them() {
    let mut c = web(false);
    let t = Instant::now();
    let mut on: HashMap<u16, String> = HashMap::new();
    for port in 0..60u16 {
        on.insert(port, forwarded(c.route(&tcp(client(2), port + 1, 80, "S"), t)));
    }
    let victim = on[&0].clone();
    assert!(c.set_health(Some((Proto::Tcp, 80)), &victim, Health::Draining));
    for (port, node) in &on {
        assert_eq!(&forwarded(c.route(&tcp(client(2), port + 1, 80, "A"), t)), node);
    }
    for port in 100..200u16 {
        assert_ne!(forwarded(c.route(&tcp(client(2), port, 80, "S"), t)), victim);
    }
    assert!(c.set_health(None, &victim, Health::Down));
    assert_eq!(c.health(Proto::Tcp, 80, &victim), Some(Health::Down));
    for (port, node) in &on {
        let now = forwarded(c.route(&tcp(client(2), port + 1, 80, "A"), t));
        assert_ne!(now, victim);
        if node != &victim {
            assert_eq!(&now, node, "a flow of a live backend moved");
        }
    }
    for b in ["a", "b", "c"] {
        c.set_health(None, b, Health::Down);
    }
    assert_eq!(c.route(&tcp(client(2), 9, 80, "S"), t), Verdict::Drop(ClusterDrop::NoBackend));
}

#[test]
fn flows_age_out_quickly_after_fin_or_rst_and_slowly_otherwise() {
    let limits = Limits::default();
    let mut c = web(false);
    let t = Instant::now();
    forwarded(c.route(&tcp(client(3), 1, 80, "S"), t));
    forwarded(c.route(&tcp(client(3), 2, 80, "S"), t));
    forwarded(c.route(&udp(client(3), 3, 53), t));
    forwarded(c.route(&tcp(client(3), 1, 80, "FA"), t));
    forwarded(c.route(&tcp(client(3), 2, 80, "R"), t));
    assert_eq!(c.flows(), 3);
    assert_eq!(c.expire(t + limits.tcp_reset, 100), 1);
    assert_eq!(c.expire(t + limits.tcp_closing, 100), 1);
    assert_eq!(c.expire(t + limits.udp_idle - Duration::from_secs(1), 100), 0);
    assert_eq!(c.expire(t + limits.udp_idle, 100), 1);
    assert_eq!(c.flows(), 0);
    // A SYN on a closing flow's ports is a new connection.
    forwarded(c.route(&tcp(client(3), 5, 80, "S"), t));
    forwarded(c.route(&tcp(client(3), 5, 80, "FA"), t));
    forwarded(c.route(&tcp(client(3), 5, 80, "S"), t));
    assert_eq!(c.counters().new_flows, 5);
}

#[test]
fn the_connection_table_is_bounded_and_counts_evictions() {
    let limits = Limits { connections: 4, ..Limits::default() };
    let spec = ClusterSpec { name: "w".into(), ip: VIP, services: vec![service(Proto::Tcp, 80, &["a"], false)] };
    let mut c = Cluster::new(spec, limits);
    let t = Instant::now();
    for port in 0..10u16 {
        forwarded(c.route(&tcp(client(4), port, 80, "S"), t));
    }
    assert_eq!(c.flows(), 4);
    assert_eq!(c.evicted(), 6);
}

#[test]
fn echo_is_answered_from_the_cluster_ip() {
    let mut c = web(false);
    let mut ping = Vec::new();
    PacketBuilder::ipv4(client(5).octets(), VIP.octets(), 64)
        .icmpv4_echo_request(7, 9)
        .write(&mut ping, b"hello")
        .unwrap();
    let Verdict::Reply(reply) = c.route(&ping, Instant::now()) else { panic!("no reply") };
    let p = SlicedPacket::from_ip(&reply).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    assert_eq!((ip.header().source_addr(), ip.header().destination_addr()), (VIP, client(5)));
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else { panic!("not ICMP") };
    assert_eq!(icmp.icmp_type(), Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 9 }));
    assert_eq!(icmp.payload(), b"hello");
    assert_eq!(c.counters().echo_replies, 1);
}

#[test]
fn an_icmp_error_about_a_flow_goes_to_its_backend() {
    let mut c = web(false);
    let t = Instant::now();
    let node = forwarded(c.route(&tcp(client(6), 4444, 80, "S"), t));
    // What the backend sent: from the cluster IP's port 80 to the client's 4444.
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(VIP.octets(), client(6).octets(), 64).tcp(80, 4444, 1, 1).write(&mut quoted, &[]).unwrap();
    let mut err = Vec::new();
    let frag_needed =
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        });
    PacketBuilder::ipv4([198, 18, 9, 1], VIP.octets(), 64)
        .icmpv4(frag_needed.clone())
        .write(&mut err, &quoted[..28])
        .unwrap();
    assert_eq!(forwarded(c.route(&err, t)), node);
    // About a flow nobody has: dropped.
    let mut stray = Vec::new();
    PacketBuilder::ipv4(VIP.octets(), client(6).octets(), 64).tcp(80, 5555, 1, 1).write(&mut stray, &[]).unwrap();
    let mut err2 = Vec::new();
    PacketBuilder::ipv4([198, 18, 9, 1], VIP.octets(), 64).icmpv4(frag_needed).write(&mut err2, &stray[..28]).unwrap();
    assert_eq!(c.route(&err2, t), Verdict::Drop(ClusterDrop::Protocol));
}

#[test]
fn fragments_are_dropped_and_counted() {
    let mut c = web(false);
    let mut p = tcp(client(7), 1, 80, "S");
    p[6] = 0x20; // more fragments
    p[10] = 0;
    p[11] = 0;
    assert_eq!(c.route(&p, Instant::now()), Verdict::Drop(ClusterDrop::Fragment));
}

#[test]
fn reconfiguring_keeps_the_flows_of_backends_that_stay() {
    let mut c = web(false);
    let t = Instant::now();
    let mut on = Vec::new();
    for port in 0..50u16 {
        on.push(forwarded(c.route(&tcp(client(8), port, 80, "S"), t)));
    }
    c.set_health(Some((Proto::Tcp, 80)), "b", Health::Draining);
    // "d" joins, "c" leaves, the UDP service goes.
    let spec =
        ClusterSpec { name: "web".into(), ip: VIP, services: vec![service(Proto::Tcp, 80, &["d", "b", "a"], false)] };
    c.reconfigure(spec.clone());
    assert_eq!(c.spec(), spec);
    assert_eq!(c.health(Proto::Tcp, 80, "b"), Some(Health::Draining));
    assert_eq!(c.health(Proto::Tcp, 80, "d"), Some(Health::Up));
    for (port, node) in on.iter().enumerate() {
        let now = forwarded(c.route(&tcp(client(8), port as u16, 80, "A"), t));
        if node != "c" {
            assert_eq!(&now, node, "flow {port} moved");
        }
    }
    assert_eq!(c.route(&udp(client(8), 1, 53), t), Verdict::Drop(ClusterDrop::Port));
}
