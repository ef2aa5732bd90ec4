//! Arbitrary bytes as a script for a service cluster: IPv4 packets to its address (with
//! arbitrary headers and payloads), backends changing health and the clock moving. The
//! cluster must never panic, never forward to a node that is not a backend of the
//! service, never to one that is down, and never hold more flows than its limit.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netvirt::cluster::{Cluster, ClusterSpec, Health, Limits, Proto, ServiceSpec, Verdict};

const NODES: [&str; 4] = ["a", "b", "c", "d"];

fuzz_target!(|data: &[u8]| {
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let spec = ClusterSpec {
        name: "fuzz".into(),
        ip: vip,
        services: vec![
            ServiceSpec {
                proto: Proto::Tcp,
                port: 80,
                backends: NODES.iter().map(|n| n.to_string()).collect(),
                sticky: None,
            },
            ServiceSpec {
                proto: Proto::Udp,
                port: 53,
                backends: vec!["a".into(), "b".into()],
                sticky: Some(Duration::from_secs(5)),
            },
        ],
    };
    let limits = Limits { connections: 16, sticky_clients: 4, table_size: 251, ..Limits::default() };
    let mut c = Cluster::new(spec, limits);
    let mut now = Instant::now();
    // Records: [kind, len, bytes...]; a packet's first 20 bytes get a plausible IPv4
    // header to reach the cluster's own code more often.
    let mut rest = data;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match kind % 4 {
            0 => now += Duration::from_secs(len as u64),
            1 => {
                let node = NODES[len % 4];
                let health = [Health::Up, Health::Draining, Health::Down][usize::from(kind / 4) % 3];
                c.set_health(None, node, health);
            }
            _ => {
                let mut packet = body.to_vec();
                if kind % 4 == 3 && packet.len() >= 20 {
                    packet[0] = 0x45;
                    let total = (packet.len() as u16).to_be_bytes();
                    packet[2..4].copy_from_slice(&total);
                    packet[16..20].copy_from_slice(&vip.octets());
                }
                let to = match c.route(&packet, now) {
                    Verdict::Forward(node) => Some(node.to_string()),
                    _ => None,
                };
                if let Some(node) = to.as_deref() {
                    let tcp = c.health(Proto::Tcp, 80, node);
                    let udp = c.health(Proto::Udp, 53, node);
                    assert!(tcp.is_some() || udp.is_some(), "forwarded to {node}, no backend");
                    assert!(
                        tcp != Some(Health::Down) || udp.is_some_and(|h| h != Health::Down),
                        "forwarded to a down node"
                    );
                }
            }
        }
        assert!(c.flows() <= 16);
        c.expire(now, 4);
    }
});
