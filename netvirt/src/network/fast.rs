//! Keeping the kernel fast path in step with the switch: the forwarding rules follow
//! every change of a LAN's membership and addresses, wires go with their ports, and the
//! ports' counters come from the wires, which see every frame whichever way it goes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{lock, LanState, PortState, Shared};
use crate::config::PortKind;
use crate::counters::TrafficSnapshot;
use crate::fastpath::{self, Member};
use crate::host::{WireStats, Yard};

/// Installs the forwarding rules of `state`'s ports (`only`: of that port alone, when
/// only its addresses changed). A rule that cannot be installed is logged and left out:
/// its frames then go through the switch, which is slower but as correct.
pub(super) fn refresh(shared: &Shared, state: &LanState, only: Option<usize>) {
    install(shared, state, only, true);
}

/// Installs every port's rules with (`clusters`) or without the service cluster
/// addresses its node may send from as a backend: without them while clusters change, so
/// that only the switch decides such frames until the change is done.
pub(super) fn refresh_sources(shared: &Shared, state: &LanState, clusters: bool) {
    install(shared, state, None, clusters);
}

fn install(shared: &Shared, state: &LanState, only: Option<usize>, with_clusters: bool) {
    let Some(yard) = &shared.yard else { return };
    let clusters = lock(&state.clusters).clone();
    let mut members = Vec::new();
    let mut index = Vec::new();
    for (i, p) in state.ports.iter().enumerate() {
        let wire = *lock(&p.wires);
        let live = !p.retired.load(Ordering::Relaxed) && p.attached.load(Ordering::Relaxed);
        if let (Some(w), true) = (wire, live) {
            members.push(Member {
                wire: w.wire,
                mac: p.plan.mac,
                ips: lock(&p.addrs)
                    .iter()
                    .map(|a| a.0)
                    .chain(
                        clusters.iter().filter(|c| with_clusters && c.serves(&p.plan.node)).map(|c| c.spec.ip.into()),
                    )
                    .collect(),
                promiscuous: p.plan.promiscuous,
            });
            index.push(i);
        }
    }
    let unreachable = state
        .ports
        .iter()
        .any(|p| p.plan.promiscuous && !p.retired.load(Ordering::Relaxed) && p.plan.kind != PortKind::Tap);
    let all = fastpath::rules(&members, unreachable);
    // Ports that are not members any more (unplugged, retired) keep no rules either.
    let wired_out = state
        .ports
        .iter()
        .enumerate()
        .filter(|(i, _)| !index.contains(i))
        .filter_map(|(i, p)| lock(&p.wires).map(|w| (i, w.wire, Vec::new())));
    let listed = all.into_iter().zip(&index).map(|((wire, rules), &i)| (i, wire, rules));
    for (i, wire, rules) in listed.chain(wired_out.collect::<Vec<_>>()) {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        if let Err(e) = yard.set_rules(wire, &rules) {
            tracing::warn!(lan = %state.plan.name, node = %state.ports[i].plan.node, error = %e,
                "kernel fast path rules not installed; its frames go through the switch");
        }
    }
}

/// Deletes a port's wire (and so the node's interface), keeping what it carried, and
/// forgets the service cluster flows from or to it.
pub(super) fn unwire(yard: Option<&Yard>, port: &PortState) {
    let Some(yard) = yard else { return };
    // The wire stays recorded until what it carried is in `gone`, so the port's counters,
    // read meanwhile, never go back.
    let mut wires = lock(&port.wires);
    let Some(w) = *wires else { return };
    port.wire.store(0, Ordering::Relaxed);
    if let Some(flows) = yard.flows() {
        flows.forget_wire(w.wire);
    }
    match yard.remove_port(w) {
        Ok(stats) => *lock(&port.gone) += stats,
        Err(e) => tracing::warn!(node = %port.plan.node, error = %e, "deleting a port's wire"),
    }
    *wires = None;
}

/// Deletes the wires of `ports`.
pub(super) fn unwire_ports(yard: Option<&Yard>, ports: &[PortState]) {
    for p in ports {
        unwire(yard, p);
    }
}

/// Deletes every wire of a LAN.
pub(super) fn unwire_all(shared: &Shared, state: &LanState) {
    unwire_ports(shared.yard.as_ref(), &state.ports);
}

/// Every wire's counters now, by interface index (empty without a fast path).
pub(super) fn wire_stats(shared: &Shared) -> HashMap<u32, WireStats> {
    let Some(yard) = &shared.yard else { return HashMap::new() };
    match yard.stats() {
        Ok(s) => s.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the wires' counters");
            HashMap::new()
        }
    }
}

/// A port's counters: the switch's, with frames and bytes each way taken from its wires
/// (the one it has now and those it had) when it has had any, since the kernel forwards
/// most of them past the switch. A frame the wire could not hand to the node counts as a
/// `tx_failed` drop; the second figure is how many such drops the wires counted.
pub(super) fn port_counters(port: &PortState, wires: &HashMap<u32, WireStats>) -> (TrafficSnapshot, u64) {
    let mut c = crate::counters::sum(&port.traffic);
    let now = lock(&port.wires).and_then(|w| wires.get(&w.wire).copied());
    let gone = *lock(&port.gone);
    if now.is_none() && gone == WireStats::default() {
        return (c, 0);
    }
    let mut k = gone;
    if let Some(now) = now {
        k += now;
    }
    c.frames_in = k.frames_in;
    c.bytes_in = k.bytes_in;
    c.frames_out = k.frames_out;
    c.bytes_out = k.bytes_out;
    *c.drops.entry(crate::counters::DropReason::TxFailed.label().to_string()).or_default() += k.dropped_out;
    (c, k.dropped_out)
}

/// The kernel forgets the service cluster flows from or to `port` (it lost an address, so
/// a flow it opened from there is no longer its to send).
pub(super) fn forget_flows_of(shared: &Shared, port: &PortState) {
    let wire = port.wire.load(Ordering::Relaxed);
    if let (Some(flows), true) = (shared.yard.as_ref().and_then(|y| y.flows()), wire != 0) {
        flows.forget_wire(wire);
    }
}

/// A service cluster's backend failed its check: the kernel forgets the cluster's flows to
/// it, so the switch decides where their next packets go.
pub(super) fn backend_down(shared: &Shared, lan: usize, cluster: &str, node: &str) {
    let Some(flows) = shared.yard.as_ref().and_then(|y| y.flows()) else { return };
    let Some(Some(state)) = shared.lans.read().unwrap_or_else(|p| p.into_inner()).get(lan).cloned() else { return };
    let Some(mac) = lock(&state.clusters).iter().find(|c| c.spec.name == cluster).map(|c| c.mac) else { return };
    let wires: Vec<u32> = state.ports.iter().filter(|p| p.is(node)).map(|p| p.wire.load(Ordering::Relaxed)).collect();
    flows.forget_cluster(mac, Some(&wires));
}

/// A service cluster changed (`plan`) or went (`None`): the kernel forgets its flows to
/// nodes that no longer serve it, or all of them.
pub(super) fn cluster_changed(
    shared: &Shared,
    state: &LanState,
    mac: crate::mac::Mac,
    plan: Option<&super::ClusterPlan>,
) {
    let Some(flows) = shared.yard.as_ref().and_then(|y| y.flows()) else { return };
    let Some(plan) = plan else {
        flows.forget_cluster(mac, None);
        return;
    };
    let serving: Vec<u32> =
        state.ports.iter().filter(|p| plan.serves(&p.plan.node)).map(|p| p.wire.load(Ordering::Relaxed)).collect();
    flows.forget(|k, v| {
        fastpath::offload::key_cluster(k) == mac && !serving.contains(&fastpath::offload::value_wire(v))
    });
}

/// Every 30 s, drops the kernel's service cluster flows idle past the clusters' timeouts.
pub(super) fn spawn_sweeper(
    shared: &std::sync::Arc<Shared>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(flows) = shared.yard.as_ref().and_then(|y| y.flows()).cloned() else { return Ok(None) };
    let limits = crate::cluster::Limits::default();
    let t = std::thread::Builder::new().name("netvirt-flows".into()).spawn(move || {
        let mut ticks = 0u32;
        while !stopping.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(200));
            ticks += 1;
            if ticks.is_multiple_of(150) {
                flows.expire(limits.tcp_idle, limits.udp_idle);
            }
        }
    })?;
    Ok(Some(t))
}
