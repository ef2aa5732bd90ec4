//! Taking a node's port off the wire and plugging it in somewhere else: what fencing a
//! failed node and handing its personality to a spare need from netvirt. The port keeps
//! its index, MAC and addresses in the switch throughout, so other members' ARP caches,
//! the switch's tables and cluster memberships stay valid; only the device behind it
//! changes.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{fast, lock, open_netns, LanState, Network, PortState};
use crate::config::PortKind;
use crate::dataplane::{Command, PortIo};
use crate::host::{self, NetNs, TapSpec};

/// How long the data path may take to let go of a TAP.
const LET_GO: Duration = Duration::from_secs(5);

impl Network {
    /// Takes `node`'s port on a LAN off the wire (fencing): a ring client is
    /// disconnected; a TAP's reads are cancelled, frames still in them dropped, and its fd
    /// closed, which deletes the device. Returns once the device is gone. The port stays
    /// in the switch, detached, until [`Network::plug`] gives it a TAP again. `retire`
    /// also takes it out of the LAN for good (a spare's port a failed node's takes over):
    /// no client may attach to it and `net show` leaves it out.
    pub fn unplug(&self, pan: &str, lan: &str, node: &str, retire: bool) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (l, state) = self.find_lan(pan, lan)?;
        let i = port_of(&state, node, false).ok_or_else(|| no_port(node, lan))?;
        let port = &state.ports[i];
        if let Some(client) = lock(&port.client).take() {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        let closed =
            self.shared.control.ask(LET_GO, |_, done| Command::SetPort { lan: l, port: i, io: PortIo::Absent, done });
        closed.ok_or_else(|| {
            io::Error::new(io::ErrorKind::TimedOut, format!("LAN {lan:?}: the data path did not let go of {node:?}"))
        })?;
        port.attached.store(false, Ordering::Relaxed);
        if retire {
            port.retired.store(true, Ordering::Relaxed);
        }
        // No rule leads to it any more (its frames meet the switch's "port down"), then
        // its wire and the node's interface go.
        fast::refresh(&self.shared, &state, None);
        fast::unwire(self.shared.yard.as_ref(), port);
        tracing::info!(pan, lan, node, retire, "port unplugged");
        Ok(())
    }

    /// Plugs `node`'s TAP port in at `netns` (or the gateway's namespace) as `ifname`: a
    /// TAP with the port's MAC, its addresses and the addresses of the clusters the node
    /// serves, switched from now on, and its IPv4 addresses announced with gratuitous ARP
    /// from its MAC. A ring port only takes the place (its client attaches by itself).
    /// The port comes back into the LAN if it was retired. Namespaces pangate created
    /// that no port uses any more are removed afterwards. `NotFound` means there is no
    /// such LAN or port; a device that cannot be made is another error.
    pub fn plug(&self, pan: &str, lan: &str, node: &str, netns: Option<String>, ifname: String) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (l, state) = self.find_lan(pan, lan)?;
        let i = port_of(&state, node, true).ok_or_else(|| no_port(node, lan))?;
        let port = &state.ports[i];
        if port.plan.kind == PortKind::Tap {
            // A port plugged in again without being unplugged first gives up its old wire.
            fast::unwire(self.shared.yard.as_ref(), port);
            let fds = {
                // Errors here are the device's, never "no such LAN or port" (NotFound), which
                // callers take to mean the LAN is not running: a namespace that is gone is one.
                let place_err =
                    |e: io::Error| io::Error::other(format!("LAN {lan}: TAP {ifname} for node {node}: {e}"));
                let mut namespaces = lock(&self.shared.namespaces);
                let ns = open_netns(&mut namespaces, netns.as_deref()).map_err(place_err)?;
                let spec = TapSpec {
                    ifname: ifname.clone(),
                    mac: port.plan.mac,
                    mtu: state.plan.mtu,
                    addrs: lock(&port.addrs).clone(),
                    cluster_ips: lock(&state.clusters).iter().filter(|c| c.serves(node)).map(|c| c.spec.ip).collect(),
                };
                match &self.shared.yard {
                    Some(yard) => {
                        let (fds, wires) = yard.add_port(ns, &spec, state.queues).map_err(place_err)?;
                        *lock(&port.wires) = Some(wires);
                        port.wire.store(wires.wire, Ordering::Relaxed);
                        fds
                    }
                    None => host::create_tap(ns, &spec, state.queues).map_err(place_err)?,
                }
            };
            // Each worker serving the LAN takes its queue of the TAP.
            let mut fds = fds.into_iter();
            let taken = self.shared.control.ask(LET_GO, |_, done| {
                let io = fds.next().map_or(PortIo::Absent, PortIo::Tap);
                Command::SetPort { lan: l, port: i, io, done }
            });
            taken.ok_or_else(|| {
                io::Error::new(io::ErrorKind::TimedOut, format!("LAN {lan:?}: the data path did not take {node:?}"))
            })?;
            self.shared.control.first().send(Command::Announce { lan: l, port: i });
        }
        *lock(&port.place) = (netns, ifname);
        port.retired.store(false, Ordering::Relaxed);
        fast::refresh(&self.shared, &state, None);
        drop(_serial);
        self.forget_unused_namespaces();
        tracing::info!(pan, lan, node, "port plugged");
        Ok(())
    }

    /// How many ports `node` of `pan` has over all LANs, and how many of them are attached
    /// (a TAP that is there, a ring port with a client).
    pub fn node_ports(&self, pan: &str, node: &str) -> (usize, usize) {
        let lans = self.shared.lans.read().unwrap_or_else(|p| p.into_inner());
        let ports = lans.iter().flatten().filter(|l| l.plan.pan == pan).flat_map(|l| &l.ports).filter(|p| p.is(node));
        ports.fold((0, 0), |(n, up), p| (n + 1, up + usize::from(p.attached.load(Ordering::Relaxed))))
    }

    fn find_lan(&self, pan: &str, lan: &str) -> io::Result<(usize, Arc<LanState>)> {
        self.shared
            .find(pan, lan)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no LAN {lan:?} in PAN {pan:?}")))
    }

    /// Removes the namespaces pangate created that no port of any LAN is placed in.
    pub(super) fn forget_unused_namespaces(&self) {
        let used: HashSet<String> = self
            .shared
            .lans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .flat_map(|l| l.ports.iter().filter(|p| !p.retired.load(Ordering::Relaxed)).filter_map(|p| p.place().0))
            .collect();
        let mut namespaces = lock(&self.shared.namespaces);
        let (keep, unused): (Vec<NetNs>, Vec<NetNs>) = namespaces.drain(..).partition(|n| used.contains(n.name()));
        *namespaces = keep;
        drop(namespaces);
        for ns in unused {
            if let Err(e) = ns.remove() {
                tracing::warn!(error = %e, "removing a network namespace");
            }
        }
    }
}

/// The port of `node`: its live one, or (`retired_too`) a retired one.
fn port_of(state: &LanState, node: &str, retired_too: bool) -> Option<usize> {
    let live = state.ports.iter().position(|p| p.is(node));
    live.or_else(|| retired_too.then(|| state.ports.iter().position(|p: &PortState| p.plan.node == node)).flatten())
}

fn no_port(node: &str, lan: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("node {node:?} has no port on LAN {lan:?}"))
}
