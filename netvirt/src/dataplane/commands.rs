//! Requests to a data-path worker from the rest of the service, and how the worker
//! carries them out.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use super::{Dataplane, LanIo, PortIo};
use crate::ringport::RingPort;
use crate::switch::PortId;
use crate::vnet::VnetHdr;

/// Requests to the data path thread.
#[derive(Debug)]
pub enum Command {
    /// Attach a client's rings to a ring port.
    AttachRing {
        /// LAN index.
        lan: usize,
        /// Port index.
        port: PortId,
        /// The mapped rings.
        ring: RingPort,
        /// Told once the port switches through the rings (or the LAN is gone), so the
        /// client is answered only when frames sent to it are delivered.
        done: std::sync::mpsc::Sender<()>,
    },
    /// Drop a ring port's client (it hung up or misbehaved).
    DetachRing {
        /// LAN index.
        lan: usize,
        /// Port index.
        port: PortId,
    },
    /// Move an IPv4 address to another port and announce it.
    MoveIp {
        /// LAN index.
        lan: usize,
        /// The address.
        ip: std::net::Ipv4Addr,
        /// Its new port.
        port: PortId,
    },
    /// Start switching a LAN built after the thread started, in slot `lan`.
    AddLan {
        /// The slot (slots are never reused, so old in-flight requests cannot hit it).
        lan: usize,
        /// The LAN.
        io: Box<LanIo>,
    },
    /// Stop switching a LAN. Its TAP and uplink fds close once the kernel has let go of
    /// them; `done` is told then.
    RemoveLan {
        /// The slot.
        lan: usize,
        /// Told when the LAN's fds are closed.
        done: std::sync::mpsc::Sender<()>,
    },
    /// Report every LAN's service clusters, by slot.
    ShowClusters {
        /// Gets (slot, clusters) for each LAN that has any.
        reply: std::sync::mpsc::Sender<Vec<(usize, Vec<crate::switch::ClusterStatus>)>>,
    },
    /// Add or change a LAN's cluster, with the backends of each service that drain.
    SetCluster {
        /// LAN index.
        lan: usize,
        spec: Box<crate::switch::ClusterLanSpec>,
        /// (protocol, port, node) of every backend, and whether it drains.
        draining: Vec<(crate::cluster::Proto, u16, String, bool)>,
        /// Told whether the LAN took it.
        done: std::sync::mpsc::Sender<Result<(), String>>,
    },
    /// Remove a LAN's cluster.
    RemoveCluster {
        /// LAN index.
        lan: usize,
        name: String,
    },
    /// Drain or undrain a backend of a cluster's service.
    Drain {
        /// LAN index.
        lan: usize,
        /// Cluster, service (protocol, port) and node.
        cluster: String,
        proto: crate::cluster::Proto,
        port: u16,
        node: String,
        /// Draining or not.
        on: bool,
    },
    /// A backend's health check passed (`ok`) or failed enough times to change its state.
    Check {
        /// LAN index.
        lan: usize,
        /// Cluster, service (protocol, port) and node.
        cluster: String,
        proto: crate::cluster::Proto,
        port: u16,
        node: String,
        /// Whether it is healthy.
        ok: bool,
    },
    /// Give a port new I/O: a TAP plugged in somewhere else, or nothing (fenced).
    SetPort {
        /// LAN index.
        lan: usize,
        /// Port index.
        port: PortId,
        /// The new I/O.
        io: PortIo,
        /// Told once the old TAP's fd is closed (its device gone).
        done: std::sync::mpsc::Sender<()>,
    },
    /// Announce a port's IPv4 addresses with gratuitous ARP.
    Announce {
        /// LAN index.
        lan: usize,
        /// Port index.
        port: PortId,
    },
    /// Stop the thread.
    Stop,
}

/// A handle to post commands to the data path thread.
#[derive(Debug, Clone)]
pub struct Control {
    pub(super) queue: Arc<Mutex<Vec<Command>>>,
    pub(super) wake: Arc<OwnedFd>,
}

/// Every data-path worker's [`Control`], worker 0 first.
#[derive(Debug, Clone)]
pub struct Controls(pub Vec<Control>);

impl Controls {
    /// Worker 0: the one that serves ring ports and uplinks.
    pub fn first(&self) -> &Control {
        &self.0[0]
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sends each worker `w` the command `make(w)`.
    pub fn each(&self, mut make: impl FnMut(usize) -> Command) {
        for (w, c) in self.0.iter().enumerate() {
            c.send(make(w));
        }
    }

    /// Sends each worker `make(w, reply)` and waits up to `limit` for every reply; the
    /// replies, or `None` if one did not come.
    pub fn ask<T>(
        &self,
        limit: std::time::Duration,
        mut make: impl FnMut(usize, std::sync::mpsc::Sender<T>) -> Command,
    ) -> Option<Vec<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.each(|w| make(w, tx.clone()));
        drop(tx);
        let deadline = std::time::Instant::now() + limit;
        let mut out = Vec::with_capacity(self.len());
        while out.len() < self.len() {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            out.push(rx.recv_timeout(left).ok()?);
        }
        Some(out)
    }
}

impl Control {
    /// Queues a command and wakes the thread.
    pub fn send(&self, c: Command) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

impl Dataplane {
    pub(super) fn commands(&mut self) {
        let cmds = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        for c in cmds {
            match c {
                Command::Stop => self.stop = true,
                Command::AddLan { lan, io } => self.add_lan(lan, *io),
                Command::RemoveLan { lan, done } => self.remove_lan(lan, done),
                Command::AttachRing { lan, port, ring, done } => {
                    if let Some(l) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        if port < l.ports.len() {
                            if !matches!(l.ports[port], PortIo::Ring(_)) {
                                self.ring_ports += 1;
                            }
                            l.ports[port] = PortIo::Ring(ring);
                            let _ = l.lan.set_attached(port, true);
                        }
                    }
                    let _ = done.send(());
                }
                Command::DetachRing { lan, port } => {
                    if let Some(l) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        if port < l.ports.len() {
                            if matches!(l.ports[port], PortIo::Ring(_)) {
                                self.ring_ports -= 1;
                            }
                            l.ports[port] = PortIo::Absent;
                            let _ = l.lan.set_attached(port, false);
                        }
                    }
                }
                Command::ShowClusters { reply } => {
                    let all = self
                        .lans
                        .iter()
                        .enumerate()
                        .filter_map(|(l, io)| {
                            io.as_ref().filter(|io| io.lan.has_clusters()).map(|io| (l, io.lan.clusters()))
                        })
                        .collect();
                    let _ = reply.send(all);
                }
                Command::SetCluster { lan, spec, draining, done } => {
                    let r = match self.lans.get_mut(lan).and_then(Option::as_mut) {
                        Some(io) => {
                            let name = spec.spec.name.clone();
                            let r = io.lan.set_cluster(*spec).map_err(|e| e.to_string());
                            if r.is_ok() {
                                for (proto, port, node, on) in draining {
                                    io.lan.set_draining(&name, proto, port, &node, on);
                                }
                            }
                            r
                        }
                        // A LAN another worker serves alone.
                        None => Ok(()),
                    };
                    let _ = done.send(r);
                }
                Command::RemoveCluster { lan, name } => {
                    if let Some(io) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        io.lan.remove_cluster(&name);
                    }
                }
                Command::Drain { lan, cluster, proto, port, node, on } => {
                    if let Some(io) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        io.lan.set_draining(&cluster, proto, port, &node, on);
                    }
                }
                Command::Check { lan, cluster, proto, port, node, ok } => {
                    if let Some(io) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        io.lan.set_check(&cluster, proto, port, &node, ok);
                    }
                }
                Command::SetPort { lan, port, io, done } => self.set_port(lan, port, io, done),
                Command::Announce { lan, port } => {
                    if let Some(LanIo { lan, ports, uplink, .. }) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        let mut sink = self.out.sink(ports, uplink.as_ref(), (usize::MAX, VnetHdr::default()));
                        if let Err(e) = lan.announce(port, &mut sink) {
                            tracing::warn!(error = %e, "announcing a port's addresses failed");
                        }
                    }
                }
                Command::MoveIp { lan, ip, port } => {
                    // Every worker's copy of the LAN moves it; the first worker announces it.
                    let first = self.index == 0;
                    if let Some(LanIo { lan, ports, uplink, .. }) = self.lans.get_mut(lan).and_then(Option::as_mut) {
                        let mut sink = self.out.sink(ports, uplink.as_ref(), (usize::MAX, VnetHdr::default()));
                        let moved = if first { lan.move_ip(ip, port, &mut sink) } else { lan.rebind_ip(ip, port) };
                        if let Err(e) = moved {
                            tracing::warn!(error = %e, "moving an IP failed");
                        }
                    }
                }
            }
        }
    }
}
