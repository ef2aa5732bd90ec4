//! Arbitrary bytes as frames from a member port and from the uplink, with arbitrary
//! virtio-net headers: the virtual LAN server must never panic, never forward a port's
//! frame with a source MAC other than the port's, and segmentation must never panic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use netvirt::cluster::{ClusterSpec, Limits, Proto, ServiceSpec};
use netvirt::mac::Mac;
use netvirt::switch::{ClusterLanSpec, Dest, Emit, LanSpec, PortSpec, Sink, UplinkMode, VirtualLan};
use netvirt::vnet::{self, VnetHdr, VNET_HDR_LEN};

struct Check {
    from: Mac,
}

impl Sink for Check {
    fn deliver(&mut self, to: Dest, frame: &[u8], emit: Emit) -> bool {
        if let (Dest::Port(_), Emit::Input) = (to, emit) {
            assert_eq!(&frame[6..12], &self.from.0, "a frame left with another port's MAC");
        }
        true
    }
}

struct Any;

impl Sink for Any {
    fn deliver(&mut self, _: Dest, _: &[u8], _: Emit) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 + VNET_HDR_LEN {
        return;
    }
    let mode = if data[0] & 1 == 0 {
        UplinkMode::Unfiltered
    } else {
        UplinkMode::Filtered { external_mac: Mac([2, 9, 9, 9, 9, 9]) }
    };
    let ports = (0..3u8)
        .map(|n| PortSpec {
            node: format!("n{n}"),
            mac: Mac([2, 0, 0, 0, 0, n]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, n + 1))],
            promiscuous: n == 2,
        })
        .collect();
    // Half the inputs meet a service cluster that n0 and n1 serve.
    let clusters = if data[0] & 2 == 0 {
        Vec::new()
    } else {
        let service = |proto, port| ServiceSpec { proto, port, backends: vec!["n0".into(), "n1".into()], sticky: None };
        let spec = ClusterSpec {
            name: "c".into(),
            ip: Ipv4Addr::new(198, 18, 0, 100),
            services: vec![service(Proto::Tcp, 80), service(Proto::Udp, 53)],
        };
        vec![ClusterLanSpec {
            spec,
            mac: Mac([2, 0, 0, 0, 0, 100]),
            limits: Limits { table_size: 251, ..Limits::default() },
        }]
    };
    let spec = LanSpec { name: "f".into(), mtu: 1500, ports, uplink: Some(mode), clusters };
    let mut lan = VirtualLan::new(spec).unwrap();
    for p in 0..3 {
        lan.set_attached(p, true).unwrap();
    }
    let from = usize::from(data[1] % 3);
    let mut h = [0u8; VNET_HDR_LEN];
    h.copy_from_slice(&data[2..2 + VNET_HDR_LEN]);
    let hdr = VnetHdr::parse(&h);
    let frame = &data[2 + VNET_HDR_LEN..];
    let wire = hdr.wire_len(frame);
    lan.from_port(from, frame, wire, &mut Check { from: Mac([2, 0, 0, 0, 0, from as u8]) });
    lan.from_uplink(frame, wire, &mut Any);
    let _ = vnet::segment(&hdr, frame, &mut Vec::new(), |s| assert!(s.len() <= frame.len().max(64) + 128));
});
