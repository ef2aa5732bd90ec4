//! `pangate net show`: what the running service reports of its LANs, ports, uplinks and
//! clusters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{cidrs, lock, Shared};
use crate::config::{PortKind, UplinkModeConfig};
use crate::counters::TrafficSnapshot;
use crate::dataplane::Command;
use crate::mac::Mac;

/// `pangate net show`: every LAN, port and counter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetShow {
    /// LANs.
    pub lans: Vec<LanShow>,
}

/// One LAN in [`NetShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LanShow {
    /// PAN.
    pub pan: String,
    /// LAN.
    pub lan: String,
    /// MTU.
    pub mtu: u32,
    /// IP-to-port bindings the ARP server holds.
    pub arp_entries: usize,
    /// Uplink, if any: interface, VLAN, mode, external MAC.
    pub uplink: Option<UplinkShow>,
    /// Ports.
    pub ports: Vec<PortShow>,
    /// Everything on the LAN.
    pub counters: TrafficSnapshot,
    /// The kernel forwards what it can between its TAP-kind ports (the fast path).
    #[serde(default)]
    pub fastpath: bool,
    /// Service clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterShow>,
}

/// A service cluster in [`NetShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterShow {
    /// Name.
    pub name: String,
    /// Its address.
    pub ip: String,
    /// The MAC that answers ARP for it.
    pub mac: Mac,
    /// Flows in its connection table.
    pub flows: usize,
    /// Flows evicted from a full table.
    pub evicted: u64,
    /// Packets relayed to backends (by the switch, and by the kernel for the flows it took
    /// over).
    pub forwarded: u64,
    /// Flows that picked a backend.
    pub new_flows: u64,
    /// Echo requests answered.
    pub echo_replies: u64,
    /// Packets dropped, by reason (port, no_backend, fragment, protocol, malformed).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Every backend of every service.
    pub backends: Vec<BackendShow>,
}

/// One backend of one service in [`ClusterShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendShow {
    /// "tcp" or "udp".
    pub proto: String,
    /// The service port.
    pub port: u16,
    /// The node.
    pub node: String,
    /// "up", "draining" or "down".
    pub health: String,
}

impl ClusterShow {
    fn of(s: &crate::switch::ClusterStatus) -> ClusterShow {
        use crate::cluster::{ClusterDrop, Health, Proto};
        ClusterShow {
            name: s.name.clone(),
            ip: s.ip.to_string(),
            mac: s.mac,
            flows: s.flows,
            evicted: s.evicted,
            forwarded: s.counters.forwarded,
            new_flows: s.counters.new_flows,
            echo_replies: s.counters.echo_replies,
            drops: ClusterDrop::ALL.iter().zip(s.counters.dropped).map(|(d, n)| (d.label().to_string(), n)).collect(),
            backends: s
                .backends
                .iter()
                .map(|(proto, port, node, health)| BackendShow {
                    proto: match proto {
                        Proto::Tcp => "tcp".into(),
                        Proto::Udp => "udp".into(),
                    },
                    port: *port,
                    node: node.clone(),
                    health: match health {
                        Health::Up => "up".into(),
                        Health::Draining => "draining".into(),
                        Health::Down => "down".into(),
                    },
                })
                .collect(),
        }
    }
}

/// An uplink in [`NetShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkShow {
    /// Host interface.
    pub interface: String,
    /// VLAN ID.
    pub vlan: Option<u16>,
    /// "filtered" or "unfiltered".
    pub mode: String,
    /// External MAC (filtered).
    pub mac: Option<Mac>,
    /// Counters ("in" is from outside).
    pub counters: TrafficSnapshot,
}

/// A port in [`NetShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortShow {
    /// Node.
    pub node: String,
    /// "tap" or "ring".
    pub kind: String,
    /// Namespace (TAP).
    pub netns: Option<String>,
    /// Interface (TAP).
    pub ifname: Option<String>,
    /// MAC.
    pub mac: Mac,
    /// Addresses.
    pub ips: Vec<String>,
    /// Promiscuous allowed.
    pub promiscuous: bool,
    /// Something is attached.
    pub attached: bool,
    /// Counters ("in" is from the node), whichever way the frames went.
    pub counters: TrafficSnapshot,
    /// Frames from the node that went through the switch rather than the kernel fast path.
    #[serde(default)]
    pub switched_in: u64,
}

pub(super) fn show(shared: &Shared) -> NetShow {
    // Clusters' state lives in the data-path workers: ask them, briefly, without holding
    // the LAN table meanwhile.
    let any =
        shared.lans.read().unwrap_or_else(|p| p.into_inner()).iter().flatten().any(|l| !lock(&l.clusters).is_empty());
    let mut clusters: std::collections::HashMap<usize, Vec<ClusterShow>> = std::collections::HashMap::new();
    if any {
        // Each worker's copy of a LAN holds the flows that came its way: add them up.
        let answers = shared.control.ask(Duration::from_secs(1), |_, reply| Command::ShowClusters { reply });
        let mut merged: std::collections::BTreeMap<usize, Vec<crate::switch::ClusterStatus>> = Default::default();
        for (slot, list) in answers.into_iter().flatten().flatten() {
            let into = merged.entry(slot).or_default();
            for c in list {
                match into.iter_mut().find(|m| m.name == c.name) {
                    Some(m) => m.add(&c),
                    None => into.push(c),
                }
            }
        }
        let flows = shared.yard.as_ref().and_then(|y| y.flows());
        for (slot, list) in merged {
            let mut shown: Vec<ClusterShow> = list.iter().map(ClusterShow::of).collect();
            // Packets of flows the kernel took over were relayed too, past the switch.
            for c in shown.iter_mut() {
                c.forwarded += flows.map_or(0, |f| f.counted(c.mac).0);
            }
            clusters.insert(slot, shown);
        }
    }
    let wires = super::fast::wire_stats(shared);
    let lans = shared.lans.read().unwrap_or_else(|p| p.into_inner());
    NetShow {
        lans: lans
            .iter()
            .enumerate()
            .filter_map(|(slot, l)| l.as_ref().map(|l| (slot, l)))
            .map(|(slot, l)| {
                let ports: Vec<(TrafficSnapshot, u64)> =
                    l.ports.iter().map(|p| super::fast::port_counters(p, &wires)).collect();
                (slot, l, ports)
            })
            .map(|(slot, l, port_counters)| LanShow {
                clusters: clusters.remove(&slot).unwrap_or_default(),
                fastpath: l.ports.iter().any(|p| lock(&p.wires).is_some()),
                pan: l.plan.pan.clone(),
                lan: l.plan.name.clone(),
                mtu: l.plan.mtu,
                arp_entries: l.arp_entries,
                uplink: l.plan.uplink.as_ref().map(|u| UplinkShow {
                    interface: u.interface.clone(),
                    vlan: u.vlan,
                    mode: match u.mode {
                        UplinkModeConfig::Filtered => "filtered".into(),
                        UplinkModeConfig::Unfiltered => "unfiltered".into(),
                    },
                    mac: l.external_mac,
                    counters: crate::counters::sum(&l.uplink_traffic),
                }),
                ports: l
                    .ports
                    .iter()
                    .zip(&port_counters)
                    .filter(|(p, _)| !p.retired.load(Ordering::Relaxed))
                    .map(|(p, c)| (p, c, p.place()))
                    .map(|(p, c, (netns, ifname))| PortShow {
                        node: p.plan.node.clone(),
                        kind: match p.plan.kind {
                            PortKind::Tap => "tap".into(),
                            PortKind::Ring => "ring".into(),
                        },
                        netns,
                        ifname: (p.plan.kind == PortKind::Tap).then_some(ifname),
                        mac: p.plan.mac,
                        ips: cidrs(&lock(&p.addrs)),
                        promiscuous: p.plan.promiscuous,
                        attached: p.attached.load(Ordering::Relaxed),
                        counters: c.0.clone(),
                        switched_in: p.traffic.iter().map(|t| t.frames_in.get()).sum(),
                    })
                    .collect(),
                counters: lan_counters(l, &port_counters),
            })
            .collect(),
    }
}

/// A LAN's counters: the switch's, with frames and bytes each way the sum of its ports'
/// and its uplink's when the kernel forwards some of them (the switch sees only the rest).
fn lan_counters(l: &super::LanState, ports: &[(TrafficSnapshot, u64)]) -> TrafficSnapshot {
    let mut c = crate::counters::sum(&l.traffic);
    if !l.ports.iter().any(|p| lock(&p.wires).is_some() || *lock(&p.gone) != Default::default()) {
        return c;
    }
    let uplink = crate::counters::sum(&l.uplink_traffic);
    c.frames_in = uplink.frames_in + ports.iter().map(|p| p.0.frames_in).sum::<u64>();
    c.bytes_in = uplink.bytes_in + ports.iter().map(|p| p.0.bytes_in).sum::<u64>();
    c.frames_out = uplink.frames_out + ports.iter().map(|p| p.0.frames_out).sum::<u64>();
    c.bytes_out = uplink.bytes_out + ports.iter().map(|p| p.0.bytes_out).sum::<u64>();
    let failed = crate::counters::DropReason::TxFailed.label();
    *c.drops.entry(failed.to_string()).or_default() += ports.iter().map(|p| p.1).sum::<u64>();
    c
}
