//! The kernel fast path's devices: a private network namespace of the gateway's (the
//! *yard*, held only by an fd, so it and everything in it go with the process however it
//! ends), and in it, for each TAP-kind port, the port's TAP and the host end of a veth
//! (the port's *wire*) whose other end is the node's interface. `tc` on the two ties them
//! together ([`crate::fastpath`]): the wire's ingress runs the guard, the forwarding rules
//! and a catch-all to the TAP; the TAP's ingress (what the userspace switch writes) goes
//! out of the wire.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcBpfFlags, TcFilterBpfOption, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{configure, Flows, NetNs, Rtnl, TapSpec};
use crate::fastpath::{guard, Rule};

/// The largest MTU a veth takes: a wire never drops a frame for its size; the guard sends
/// oversize frames to the switch, which drops, counts and answers them.
const WIRE_MTU: u32 = 65535;

// Filter priorities on a wire's ingress: lower runs first. u32 filters of one priority
// must share a protocol, so IPv4 and IPv6 rules have one each.
const PRIO_GUARD: u16 = 1;
const PRIO_V4: u16 = 2;
const PRIO_V6: u16 = 3;
const PRIO_FLOWS: u16 = 4;
const PRIO_REST: u16 = 5;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The devices behind one TAP-kind port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wires {
    /// The wire's (the veth host end's) interface index in the yard.
    pub wire: u32,
    /// The TAP's interface index in the yard.
    pub tap: u32,
}

/// Frames and bytes a wire carried, each way, as the kernel counts them: "in" is what the
/// node sent, "out" what it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Frames from the node.
    pub frames_in: u64,
    /// Bytes of those frames.
    pub bytes_in: u64,
    /// Frames to the node.
    pub frames_out: u64,
    /// Bytes of those frames.
    pub bytes_out: u64,
    /// Frames to the node that the veth could not pass on (its interface was down).
    pub dropped_out: u64,
}

impl std::ops::AddAssign for WireStats {
    fn add_assign(&mut self, o: WireStats) {
        self.frames_in += o.frames_in;
        self.bytes_in += o.bytes_in;
        self.frames_out += o.frames_out;
        self.bytes_out += o.bytes_out;
        self.dropped_out += o.dropped_out;
    }
}

/// The gateway's private namespace and a route netlink socket opened in it.
#[derive(Debug)]
pub struct Yard {
    ns: OwnedFd,
    nl: Mutex<Rtnl>,
    next: AtomicU32,
    flows: Option<Arc<Flows>>,
}

impl Yard {
    /// Makes the namespace, with IPv6 off (its stack must never speak on a wire or TAP),
    /// and checks that the kernel has what wires need ([`probe`]); the service cluster
    /// flow table is optional.
    pub fn new() -> io::Result<Yard> {
        let (ns, mut nl) = std::thread::spawn(|| -> io::Result<(OwnedFd, Rtnl)> {
            crate::sys::unshare_net()?;
            for conf in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                match std::fs::write(&path, "1") {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            let ns = std::fs::File::open("/proc/thread-self/ns/net")?;
            Ok((ns.into(), Rtnl::open()?))
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))??;
        probe(&mut nl, ns.as_raw_fd())?;
        let flows = Flows::new()
            .map_err(|e| tracing::warn!(error = %e, "service cluster flows stay in the switch: no kernel flow table"))
            .ok()
            .map(Arc::new);
        Ok(Yard { ns, nl: Mutex::new(nl), next: AtomicU32::new(1), flows })
    }

    /// The kernel's service cluster flow table, if it has one.
    pub fn flows(&self) -> Option<&Arc<Flows>> {
        self.flows.as_ref()
    }

    /// The namespace, for operators: `nsenter --net=/proc/PID/fd/FD tc filter show ...`.
    pub fn fd(&self) -> i32 {
        self.ns.as_raw_fd()
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let ns = self.ns.as_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                rustix::thread::move_into_link_name_space(ns, Some(rustix::thread::LinkNameSpaceType::Network))?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
        })
    }

    fn nl(&self) -> std::sync::MutexGuard<'_, Rtnl> {
        self.nl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a port's devices: its TAP with `queues` queues, and a veth whose node end is
    /// `spec` in `node_ns` (or the gateway's own namespace), configured as [`super::create_tap`]
    /// configures a TAP; then the guard (for a LAN of MTU `spec.mtu`) and the catch-alls.
    /// Returns the TAP's queue fds. On error nothing is left behind.
    pub fn add_port(
        &self,
        node_ns: Option<&NetNs>,
        spec: &TapSpec,
        queues: usize,
    ) -> io::Result<(Vec<OwnedFd>, Wires)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tap_name, wire_name) = (format!("t{id}"), format!("w{id}"));
        let target: OwnedFd = match node_ns {
            Some(ns) => std::fs::File::open(ns.path())?.into(),
            None => std::fs::File::open("/proc/thread-self/ns/net")?.into(),
        };
        let (fds, tap) = self.run(|| {
            let fds = crate::sys::create_tap(&tap_name, queues)?;
            Ok((fds, crate::sys::if_index(&tap_name)?))
        })?;
        let mut nl = self.nl();
        let made = (|| -> io::Result<u32> {
            nl.link_set(tap, None, None, true).map_err(|e| context(e, "bringing up the TAP"))?;
            nl.veth_add(&wire_name, &spec.ifname, target.as_raw_fd(), queues.max(1) as u32)
                .map_err(|e| context(e, "creating the veth"))?;
            nl.index_of(&wire_name)
        })();
        let wire = made?;
        let wires = Wires { wire, tap };
        let tied = (|| -> io::Result<()> {
            nl.link_set(wire, None, Some(WIRE_MTU), true).map_err(|e| context(e, "bringing up the veth"))?;
            for dev in [wire, tap] {
                nl.ingress_qdisc(dev).map_err(|e| context(e, "adding an ingress qdisc"))?;
            }
            nl.redirect_all(tap, PRIO_REST, wire).map_err(|e| context(e, "redirecting the TAP to the veth"))?;
            let program = crate::sys::bpf::load_sched_cls("pangate_guard", &guard::program(spec.mtu, tap))?;
            nl.bpf_filter(wire, PRIO_GUARD, &program, "pangate_guard")
                .map_err(|e| context(e, "attaching the guard"))?;
            if let Some(flows) = &self.flows {
                nl.bpf_filter(wire, PRIO_FLOWS, flows.program(), "pangate_flows")
                    .map_err(|e| context(e, "attaching the flow table"))?;
            }
            nl.redirect_all(wire, PRIO_REST, tap).map_err(|e| context(e, "redirecting the veth to the TAP"))
        })();
        drop(nl);
        let configured = tied.and_then(|()| match node_ns {
            Some(ns) => ns.run(|| configure(spec)),
            None => configure(spec),
        });
        if let Err(e) = configured {
            let _ = self.nl().link_del(wire);
            return Err(e);
        }
        Ok((fds, wires))
    }

    /// Deletes a port's wire, and with it the node's interface; returns what it carried.
    /// The TAP goes when the data path closes its fds.
    pub fn remove_port(&self, wires: Wires) -> io::Result<WireStats> {
        let mut nl = self.nl();
        // Down first, so nothing crosses between reading the counters and the deletion.
        nl.link_set(wires.wire, None, None, false)?;
        let stats = nl.link_stats()?.into_iter().find(|(i, _)| *i == wires.wire).map(|(_, s)| s);
        nl.link_del(wires.wire)?;
        Ok(stats.unwrap_or_default())
    }

    /// Replaces the forwarding rules on `wire` with `rules`. While they change, frames go
    /// through the switch, never by a stale rule.
    pub fn set_rules(&self, wire: u32, rules: &[Rule]) -> io::Result<()> {
        let mut nl = self.nl();
        for (prio, proto) in [(PRIO_V4, ETH_P_IP), (PRIO_V6, ETH_P_IPV6)] {
            nl.filter_del(wire, prio, proto)?;
        }
        for rule in rules {
            let prio = if rule.src_ip.is_ipv4() { PRIO_V4 } else { PRIO_V6 };
            nl.u32_filter(wire, prio, rule)?;
        }
        Ok(())
    }

    /// Every wire's counters, by interface index.
    pub fn stats(&self) -> io::Result<Vec<(u32, WireStats)>> {
        self.nl().link_stats()
    }
}

/// Checks, on a veth pair made for the purpose in the yard (`ns`), that the kernel has
/// everything a wire needs: an ingress qdisc, u32 with mirred, and the guard. A kernel
/// that lacks one gets no fast path at all, rather than ports that cannot be made.
fn probe(nl: &mut Rtnl, ns: i32) -> io::Result<()> {
    nl.veth_add("probe0", "probe1", ns, 1).map_err(|e| context(e, "veth"))?;
    let tried = (|| -> io::Result<()> {
        let (a, b) = (nl.index_of("probe0")?, nl.index_of("probe1")?);
        nl.ingress_qdisc(a).map_err(|e| context(e, "an ingress qdisc"))?;
        nl.redirect_all(a, PRIO_REST, b).map_err(|e| context(e, "tc u32 with mirred"))?;
        let program = crate::sys::bpf::load_sched_cls("pangate_guard", &guard::program(1500, b))?;
        nl.bpf_filter(a, PRIO_GUARD, &program, "pangate_guard").map_err(|e| context(e, "tc bpf"))
    })();
    if let Ok(a) = nl.index_of("probe0") {
        let _ = nl.link_del(a);
    }
    tried
}

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn tc_info(prio: u16, proto: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(proto.to_be())
}

fn ingress_parent() -> TcHandle {
    TcHandle { major: 0xffff, minor: 0 }
}

fn mirred(kind: TcMirrorActionType, action: TcActionType, ifindex: u32) -> TcAction {
    let mut generic = TcActionGeneric::default();
    generic.action = action;
    let mut parms = TcMirror::default();
    parms.generic = generic;
    parms.eaction = kind;
    parms.ifindex = ifindex;
    let mut a = TcAction::default();
    a.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(parms))]),
    ];
    a
}

/// Numbers actions from 1, as the kernel wants them.
fn numbered(actions: Vec<TcAction>) -> Vec<TcAction> {
    actions
        .into_iter()
        .enumerate()
        .map(|(i, mut a)| {
            a.tab = i as u16 + 1;
            a
        })
        .collect()
}

impl Rtnl {
    fn index_of(&mut self, name: &str) -> io::Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        let replies = self.dump(RouteNetlinkMessage::GetLink(m), false)?;
        replies
            .into_iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}")))
    }

    /// A veth `name` here whose peer is `peer` in namespace `peer_ns`, both ends with
    /// `queues` queues each way.
    fn veth_add(&mut self, name: &str, peer: &str, peer_ns: i32, queues: u32) -> io::Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.into()));
        p.attributes.push(LinkAttribute::NetNsFd(peer_ns));
        p.attributes.push(LinkAttribute::NumTxQueues(queues));
        p.attributes.push(LinkAttribute::NumRxQueues(queues));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::NumTxQueues(queues));
        m.attributes.push(LinkAttribute::NumRxQueues(queues));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    fn link_del(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), 0)
    }

    fn link_stats(&mut self) -> io::Result<Vec<(u32, WireStats)>> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Stats64(s) => Some((
                        l.header.index,
                        WireStats {
                            frames_in: s.rx_packets,
                            bytes_in: s.rx_bytes,
                            frames_out: s.tx_packets,
                            bytes_out: s.tx_bytes,
                            dropped_out: s.tx_dropped,
                        },
                    )),
                    _ => None,
                })
            })
            .collect())
    }

    fn ingress_qdisc(&mut self, index: u32) -> io::Result<()> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::INGRESS;
        m.header.handle = ingress_parent();
        m.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(RouteNetlinkMessage::NewQueueDiscipline(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    fn filter(&mut self, index: u32, prio: u16, proto: u16, kind: &str, options: Vec<TcOption>) -> io::Result<()> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = ingress_parent();
        m.header.info = tc_info(prio, proto);
        m.attributes.push(TcAttribute::Kind(kind.into()));
        m.attributes.push(TcAttribute::Options(options));
        self.request(RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes every filter of priority `prio` on `index`'s ingress (none there is fine).
    fn filter_del(&mut self, index: u32, prio: u16, proto: u16) -> io::Result<()> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = ingress_parent();
        m.header.info = tc_info(prio, proto);
        match self.request(RouteNetlinkMessage::DelTrafficFilter(m), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Every frame on `index`'s ingress goes out of `to`.
    fn redirect_all(&mut self, index: u32, prio: u16, to: u32) -> io::Result<()> {
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()];
        let act = mirred(TcMirrorActionType::EgressRedir, TcActionType::Stolen, to);
        let options = vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(numbered(vec![act]))),
        ];
        self.filter(index, prio, ETH_P_ALL, "u32", options)
    }

    fn u32_filter(&mut self, index: u32, prio: u16, rule: &Rule) -> io::Result<()> {
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.keys = rule
            .keys()
            .into_iter()
            .map(|k| {
                let mut key = TcU32Key::default();
                key.off = k.off;
                key.val = u32::from_be_bytes(k.value);
                key.mask = u32::from_be_bytes(k.mask);
                key
            })
            .collect();
        sel.nkeys = sel.keys.len() as u8;
        let mut actions: Vec<TcAction> =
            rule.copies.iter().map(|&c| mirred(TcMirrorActionType::EgressMirror, TcActionType::Pipe, c)).collect();
        actions.push(mirred(TcMirrorActionType::EgressRedir, TcActionType::Stolen, rule.to));
        let options = vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(numbered(actions))),
        ];
        self.filter(index, prio, rule.ethertype(), "u32", options)
    }

    fn bpf_filter(&mut self, index: u32, prio: u16, program: &OwnedFd, name: &str) -> io::Result<()> {
        let options = vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(program.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ];
        self.filter(index, prio, ETH_P_ALL, "bpf", options)
    }
}
