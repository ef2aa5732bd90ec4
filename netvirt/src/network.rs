//! The running netvirt service: builds every LAN's switch and ports from the plan the
//! gateway resolved, runs the data path thread, and serves the netvirt socket where ring
//! clients attach and `pangate net show` asks what is there.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterSpec, Limits};
use crate::config::{PortKind, UplinkModeConfig};
use crate::counters::{Traffic, TrafficSnapshot};
use crate::dataplane::{Command, Control, Dataplane, LanIo, PortIo, UplinkIo};
use crate::host::{self, NetNs, TapSpec};
use crate::mac::Mac;
use crate::ringport::{BcastRing, RingPort};
use crate::switch::{ClusterLanSpec, LanSpec, PortSpec, UplinkMode, VirtualLan};

/// Slots per ring (each direction, and the broadcast ring).
pub const RING_SLOTS: u32 = 1024;

/// A port with everything resolved: its MAC assigned, its addresses parsed.
#[derive(Debug, Clone)]
pub struct PortPlan {
    /// Node name.
    pub node: String,
    /// TAP or ring.
    pub kind: PortKind,
    /// Namespace of a TAP.
    pub netns: Option<String>,
    /// Interface name of a TAP.
    pub ifname: String,
    /// Assigned MAC.
    pub mac: Mac,
    /// Addresses with prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// Allowed to see all traffic.
    pub promiscuous: bool,
}

/// An uplink with everything resolved.
#[derive(Debug, Clone)]
pub struct UplinkPlan {
    /// Host interface.
    pub interface: String,
    /// 802.1Q VLAN ID.
    pub vlan: Option<u16>,
    /// Mode.
    pub mode: UplinkModeConfig,
    /// External MAC for filtered mode, if the config fixes one.
    pub mac: Option<Mac>,
}

/// A service cluster with everything resolved.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// Address, services and backends.
    pub spec: ClusterSpec,
    /// The cluster's MAC, which answers ARP for its address.
    pub mac: Mac,
    /// Per service of `spec`, in order: the nodes draining, and the health check.
    pub services: Vec<ServicePlan>,
}

/// How one service of a cluster runs beyond its spec.
#[derive(Debug, Clone, Default)]
pub struct ServicePlan {
    /// Backends that take no new connections.
    pub draining: Vec<String>,
    /// A TCP connect check of each backend, if the service asks for one.
    pub check: Option<CheckPlan>,
}

/// A TCP connect health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPlan {
    /// Time between checks of a backend.
    pub interval: Duration,
    /// Failed checks in a row that take it down.
    pub failures: u32,
    /// Passed checks in a row that bring it back.
    pub passes: u32,
}

/// A LAN with everything resolved.
#[derive(Debug, Clone)]
pub struct LanPlan {
    /// PAN name.
    pub pan: String,
    /// LAN name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Ports.
    pub ports: Vec<PortPlan>,
    /// Uplink.
    pub uplink: Option<UplinkPlan>,
    /// Service clusters.
    pub clusters: Vec<ClusterPlan>,
}

/// Decides whether a node's credential is good: (pan, node, credential).
pub type Authorize = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// What a ring client asks on the netvirt socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach to my ring port on a LAN.
    Attach {
        /// PAN.
        pan: String,
        /// Node.
        node: String,
        /// LAN.
        lan: String,
        /// The node's credential.
        credential: String,
    },
    /// Describe every LAN (root or the gateway's own user only).
    Show,
}

/// The gateway's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Attached: the port region, broadcast region and two doorbells follow as fds.
    Attached {
        /// The port's MAC.
        mac: Mac,
        /// LAN MTU.
        mtu: u32,
        /// Slots per ring.
        slots: u32,
        /// Bytes per slot.
        slot_size: u32,
        /// Registered addresses.
        ips: Vec<String>,
    },
    /// The description asked for.
    Show(NetShow),
    /// Refused, and why.
    Refused {
        /// Why.
        reason: String,
    },
}

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
    /// Packets relayed to backends.
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
    /// Counters ("in" is from the node).
    pub counters: TrafficSnapshot,
}

#[derive(Debug)]
struct PortState {
    plan: PortPlan,
    attached: Arc<AtomicBool>,
    traffic: Arc<Traffic>,
    /// The attached ring client's socket, shut down when the LAN is removed.
    client: Mutex<Option<UnixStream>>,
    /// Its addresses now (they start as the plan's and move with [`Network::move_ip`]).
    addrs: Mutex<Vec<(IpAddr, u8)>>,
}

#[derive(Debug)]
struct LanState {
    plan: LanPlan,
    external_mac: Option<Mac>,
    ports: Vec<PortState>,
    traffic: Arc<Traffic>,
    uplink_traffic: Arc<Traffic>,
    arp_entries: usize,
    bcast: Option<Arc<BcastRing>>,
    /// Its clusters now (they start as the plan's and change with
    /// [`Network::set_cluster`] and [`Network::remove_cluster`]).
    clusters: Mutex<Vec<ClusterPlan>>,
}

/// What every thread of the service shares.
#[derive(Debug)]
struct Shared {
    /// LANs by data path slot; a removed LAN leaves its slot empty for good.
    lans: RwLock<Vec<Option<Arc<LanState>>>>,
    /// Namespaces the ports live in (those pangate created are removed with their last
    /// port).
    namespaces: Mutex<Vec<NetNs>>,
    /// Serialises adding and removing LANs.
    changes: Mutex<()>,
    control: Control,
    authorize: AuthorizeBox,
    gateway_uid: u32,
}

struct AuthorizeBox(Authorize);

impl std::fmt::Debug for AuthorizeBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorize")
    }
}

/// The running service.
#[derive(Debug)]
pub struct Network {
    shared: Arc<Shared>,
    dataplane: Option<JoinHandle<io::Result<()>>>,
    listener: Option<JoinHandle<()>>,
    /// Checks cluster backends whose services ask for it.
    health: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    socket: PathBuf,
}

impl Network {
    /// Creates namespaces, TAPs and uplinks, starts the data path and listens on `socket`.
    /// On error everything created so far is removed again.
    pub fn start(plans: Vec<LanPlan>, socket: &Path, authorize: Authorize) -> io::Result<Network> {
        let mut namespaces: Vec<NetNs> = Vec::new();
        let result = build(&plans, &mut namespaces);
        let (lans_io, states) = match result {
            Ok(v) => v,
            Err(e) => {
                for ns in namespaces {
                    let _ = ns.remove();
                }
                return Err(e);
            }
        };
        let (dp, control) = Dataplane::new(lans_io)?;
        let dataplane = std::thread::Builder::new().name("netvirt".into()).spawn(move || {
            let r = dp.run();
            if let Err(e) = &r {
                tracing::error!(error = %e, "the netvirt data path stopped");
            }
            r
        })?;
        let shared = Arc::new(Shared {
            lans: RwLock::new(states.into_iter().map(|s| Some(Arc::new(s))).collect()),
            namespaces: Mutex::new(namespaces),
            changes: Mutex::new(()),
            control,
            authorize: AuthorizeBox(authorize),
            gateway_uid: rustix::process::geteuid().as_raw(),
        });
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        listener.set_nonblocking(true)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stopping.clone());
        let listener =
            std::thread::Builder::new().name("netvirt-sock".into()).spawn(move || serve(listener, sh, st))?;
        let (for_targets, for_report) = (shared.clone(), shared.clone());
        let health = crate::health::spawn(
            move || check_targets(&for_targets),
            move |t, ok| {
                let (cluster, node) = (t.cluster.clone(), t.node.clone());
                let proto = crate::cluster::Proto::Tcp;
                for_report.control.send(Command::Check { lan: t.lan, cluster, proto, port: t.port, node, ok });
            },
            stopping.clone(),
        )?;
        Ok(Network {
            shared,
            dataplane: Some(dataplane),
            listener: Some(listener),
            health: Some(health),
            stopping,
            socket: socket.to_path_buf(),
        })
    }

    /// Every LAN, port and counter.
    pub fn show(&self) -> NetShow {
        show(&self.shared)
    }

    /// Builds a LAN (its namespaces, TAPs and uplink) and starts switching it, while the
    /// others run on. Fails, leaving nothing behind, if the PAN already has a LAN of that
    /// name or a device cannot be made.
    pub fn add_lan(&self, plan: LanPlan) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        if self.shared.find(&plan.pan, &plan.name).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("PAN {:?} already has a LAN {:?}", plan.pan, plan.name),
            ));
        }
        let mut namespaces = lock(&self.shared.namespaces);
        let before = namespaces.len();
        let (mut io, mut states) = match build(std::slice::from_ref(&plan), &mut namespaces) {
            Ok(v) => v,
            Err(e) => {
                for ns in namespaces.drain(before..) {
                    let _ = ns.remove();
                }
                return Err(e);
            }
        };
        drop(namespaces);
        let (Some(io), Some(state)) = (io.pop(), states.pop()) else {
            return Err(io::Error::other("building the LAN gave nothing"));
        };
        let mut lans = self.shared.lans.write().unwrap_or_else(|p| p.into_inner());
        lans.push(Some(Arc::new(state)));
        self.shared.control.send(Command::AddLan { lan: lans.len() - 1, io: Box::new(io) });
        tracing::info!(pan = %plan.pan, lan = %plan.name, ports = plan.ports.len(), "LAN added");
        Ok(())
    }

    /// Stops switching a LAN: its ring clients are disconnected, its TAPs deleted, and
    /// namespaces pangate created for it alone removed.
    pub fn remove_lan(&self, pan: &str, lan: &str) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (slot, state) = {
            let mut lans = self.shared.lans.write().unwrap_or_else(|p| p.into_inner());
            let slot = lans
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.plan.pan == pan && s.plan.name == lan))
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no LAN {lan:?} in PAN {pan:?}")))?;
            (slot, lans[slot].take().ok_or_else(|| io::Error::other("LAN slot emptied"))?)
        };
        for port in &state.ports {
            if let Some(client) = lock(&port.client).take() {
                let _ = client.shutdown(std::net::Shutdown::Both);
            }
        }
        let (done, closed) = std::sync::mpsc::channel();
        self.shared.control.send(Command::RemoveLan { lan: slot, done });
        if closed.recv_timeout(Duration::from_secs(5)).is_err() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("LAN {lan:?}: the data path did not let go")));
        }
        // The TAPs are gone; namespaces no other LAN uses can go too.
        let used: HashSet<String> = self
            .shared
            .lans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .flat_map(|l| l.ports.iter().filter_map(|p| p.plan.netns.clone()))
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
        tracing::info!(pan, lan, "LAN removed");
        Ok(())
    }

    /// Moves an IPv4 address of a LAN to another node's port (failover, or an address
    /// change): a TAP losing it has it removed in its namespace, the switch re-registers it
    /// and sends a gratuitous ARP from the new port's MAC, and a TAP gaining it has it added.
    pub fn move_ip(&self, pan: &str, lan: &str, ip: std::net::Ipv4Addr, node: &str) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let not_found = |what: String| io::Error::new(io::ErrorKind::NotFound, what);
        let (l, state) =
            self.shared.find(pan, lan).ok_or_else(|| not_found(format!("no LAN {lan:?} in PAN {pan:?}")))?;
        let addr = IpAddr::V4(ip);
        let to = state
            .ports
            .iter()
            .position(|p| p.plan.node == node)
            .ok_or_else(|| not_found(format!("node {node:?} has no port on LAN {lan:?}")))?;
        let (from, prefix) = state
            .ports
            .iter()
            .enumerate()
            .find_map(|(i, p)| lock(&p.addrs).iter().find(|a| a.0 == addr).map(|a| (i, a.1)))
            .ok_or_else(|| not_found(format!("no port on LAN {lan:?} has {ip}")))?;
        if from == to {
            return Ok(());
        }
        self.tap_addr(&state.ports[from].plan, addr, prefix, false)?;
        self.shared.control.send(Command::MoveIp { lan: l, ip, port: to });
        lock(&state.ports[from].addrs).retain(|a| a.0 != addr);
        lock(&state.ports[to].addrs).push((addr, prefix));
        self.tap_addr(&state.ports[to].plan, addr, prefix, true)
    }

    /// Adds a service cluster to a LAN, or changes the one of that name, without losing
    /// the flows of backends that stay. Backends' TAPs gain the cluster's address, and
    /// those no longer backends lose it.
    pub fn set_cluster(&self, pan: &str, lan: &str, plan: ClusterPlan) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (l, state) = self.lan_of(pan, lan)?;
        let old = lock(&state.clusters).iter().find(|c| c.spec.name == plan.spec.name).cloned();
        let held = |c: &ClusterPlan| -> Vec<(usize, std::net::Ipv4Addr)> {
            let serves = |node: &str| c.spec.services.iter().any(|s| s.backends.iter().any(|b| b == node));
            state.ports.iter().enumerate().filter(|(_, p)| serves(&p.plan.node)).map(|(i, _)| (i, c.spec.ip)).collect()
        };
        let now = held(&plan);
        let before = old.as_ref().map(held).unwrap_or_default();
        let gain: Vec<_> = now.iter().filter(|x| !before.contains(x)).copied().collect();
        let lose: Vec<_> = before.iter().filter(|x| !now.contains(x)).copied().collect();
        self.cluster_ips(&state, &gain, true)?;
        let spec = ClusterLanSpec { spec: plan.spec.clone(), mac: plan.mac, limits: Limits::default() };
        let mut draining = Vec::new();
        for (s, sp) in plan.spec.services.iter().zip(&plan.services) {
            for node in &s.backends {
                draining.push((s.proto, s.port, node.clone(), sp.draining.contains(node)));
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.control.send(Command::SetCluster { lan: l, spec: Box::new(spec), draining, done: tx });
        let taken = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.map_err(io::Error::other),
            Err(_) => Err(io::Error::other("the data path did not answer")),
        };
        if let Err(e) = taken {
            let _ = self.cluster_ips(&state, &gain, false);
            return Err(e);
        }
        self.cluster_ips(&state, &lose, false)?;
        let mut clusters = lock(&state.clusters);
        clusters.retain(|c| c.spec.name != plan.spec.name);
        clusters.push(plan);
        Ok(())
    }

    /// Removes a LAN's service cluster; its backends' TAPs lose its address.
    pub fn remove_cluster(&self, pan: &str, lan: &str, name: &str) -> io::Result<()> {
        let _serial = lock(&self.shared.changes);
        let (l, state) = self.lan_of(pan, lan)?;
        let Some(old) = lock(&state.clusters).iter().find(|c| c.spec.name == name).cloned() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no cluster {name:?} on LAN {lan:?}")));
        };
        self.shared.control.send(Command::RemoveCluster { lan: l, name: name.to_string() });
        let serves = |node: &str| old.spec.services.iter().any(|s| s.backends.iter().any(|b| b == node));
        let held: Vec<_> = state
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| serves(&p.plan.node))
            .map(|(i, _)| (i, old.spec.ip))
            .collect();
        lock(&state.clusters).retain(|c| c.spec.name != name);
        self.cluster_ips(&state, &held, false)
    }

    fn lan_of(&self, pan: &str, lan: &str) -> io::Result<(usize, Arc<LanState>)> {
        self.shared
            .find(pan, lan)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no LAN {lan:?} in PAN {pan:?}")))
    }

    /// Adds or removes cluster addresses on TAP ports, as (port, address).
    fn cluster_ips(&self, state: &LanState, which: &[(usize, std::net::Ipv4Addr)], add: bool) -> io::Result<()> {
        for &(i, ip) in which {
            let port = &state.ports[i].plan;
            if port.kind != PortKind::Tap {
                continue;
            }
            let namespaces = lock(&self.shared.namespaces);
            let ns = port.netns.as_ref().and_then(|name| namespaces.iter().find(|n| n.name() == name));
            host::tap_cluster_ip(ns, &port.ifname, ip, add).map_err(|e| {
                let what = if add { "adding" } else { "removing" };
                io::Error::new(
                    e.kind(),
                    format!("{what} cluster address {ip} on {} of node {}: {e}", port.ifname, port.node),
                )
            })?;
        }
        Ok(())
    }

    /// Adds or removes an address on a TAP port's interface (ring ports have none).
    fn tap_addr(&self, port: &PortPlan, ip: IpAddr, prefix: u8, add: bool) -> io::Result<()> {
        if port.kind != PortKind::Tap {
            return Ok(());
        }
        let namespaces = lock(&self.shared.namespaces);
        let ns = match &port.netns {
            Some(name) => Some(
                namespaces
                    .iter()
                    .find(|n| n.name() == name)
                    .ok_or_else(|| io::Error::other(format!("namespace {name:?} is not open")))?,
            ),
            None => None,
        };
        host::tap_addr(ns, &port.ifname, ip, prefix, add).map_err(|e| {
            let what = if add { "adding" } else { "removing" };
            io::Error::new(e.kind(), format!("{what} {ip}/{prefix} on {} of node {}: {e}", port.ifname, port.node))
        })
    }

    /// Stops the data path, deletes the TAPs and removes the namespaces pangate created.
    pub fn stop(mut self) -> io::Result<()> {
        self.stopping.store(true, Ordering::Relaxed);
        self.shared.control.send(Command::Stop);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
        if let Some(t) = self.health.take() {
            let _ = t.join();
        }
        let r = match self.dataplane.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("netvirt thread panicked")),
            None => Ok(()),
        };
        let _ = std::fs::remove_file(&self.socket);
        // The TAP fds closed with the data path; a namespace can go now.
        let namespaces = std::mem::take(&mut *lock(&self.shared.namespaces));
        for ns in namespaces {
            if let Err(e) = ns.remove() {
                tracing::warn!(error = %e, "removing a network namespace");
            }
        }
        r
    }
}

type Built = (Vec<LanIo>, Vec<LanState>);

fn build(plans: &[LanPlan], namespaces: &mut Vec<NetNs>) -> io::Result<Built> {
    let mut lans_io = Vec::new();
    let mut states = Vec::new();
    for plan in plans {
        let mut uplink_io = None;
        let mut external_mac = None;
        let uplink_mode = match &plan.uplink {
            None => None,
            Some(u) => {
                let index = crate::sys::if_index(&u.interface)
                    .map_err(|e| io::Error::new(e.kind(), format!("LAN {}: uplink {}: {e}", plan.name, u.interface)))?;
                let unfiltered = u.mode == UplinkModeConfig::Unfiltered;
                let fd = crate::sys::packet_socket(index, unfiltered)?;
                uplink_io = Some(UplinkIo { fd, vlan: u.vlan });
                if unfiltered {
                    Some(UplinkMode::Unfiltered)
                } else {
                    let mac = match u.mac {
                        Some(m) => m,
                        None => Mac(crate::sys::if_mac(&u.interface)?),
                    };
                    external_mac = Some(mac);
                    Some(UplinkMode::Filtered { external_mac: mac })
                }
            }
        };
        let spec = LanSpec {
            name: plan.name.clone(),
            mtu: plan.mtu,
            ports: plan
                .ports
                .iter()
                .map(|p| PortSpec {
                    node: p.node.clone(),
                    mac: p.mac,
                    ips: p.addrs.iter().map(|a| a.0).collect(),
                    promiscuous: p.promiscuous,
                })
                .collect(),
            uplink: uplink_mode,
            clusters: plan
                .clusters
                .iter()
                .map(|c| ClusterLanSpec { spec: c.spec.clone(), mac: c.mac, limits: Limits::default() })
                .collect(),
        };
        let mut lan = VirtualLan::new(spec).map_err(io::Error::other)?;
        for c in &plan.clusters {
            for (s, sp) in c.spec.services.iter().zip(&c.services) {
                for node in &sp.draining {
                    lan.set_draining(&c.spec.name, s.proto, s.port, node, true);
                }
            }
        }
        let mut ports_io = Vec::new();
        for (i, p) in plan.ports.iter().enumerate() {
            match p.kind {
                PortKind::Tap => {
                    let ns = match &p.netns {
                        None => None,
                        Some(name) => {
                            if !namespaces.iter().any(|n| n.name() == name) {
                                namespaces.push(NetNs::ensure(name)?);
                            }
                            namespaces.iter().find(|n| n.name() == name)
                        }
                    };
                    let spec = TapSpec {
                        ifname: p.ifname.clone(),
                        mac: p.mac,
                        mtu: plan.mtu,
                        addrs: p.addrs.clone(),
                        cluster_ips: cluster_ips(plan, &p.node),
                    };
                    let fd = host::create_tap(ns, &spec).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("LAN {}: TAP {} for node {}: {e}", plan.name, p.ifname, p.node),
                        )
                    })?;
                    ports_io.push(PortIo::Tap(fd));
                    lan.set_attached(i, true).map_err(io::Error::other)?;
                }
                PortKind::Ring => ports_io.push(PortIo::Absent),
            }
        }
        let attached: Vec<Arc<AtomicBool>> =
            plan.ports.iter().map(|p| Arc::new(AtomicBool::new(p.kind == PortKind::Tap))).collect();
        let bcast = if plan.ports.iter().any(|p| p.kind == PortKind::Ring) {
            Some(Arc::new(BcastRing::create(&plan.name, RING_SLOTS, plan.mtu as usize).map_err(io::Error::other)?))
        } else {
            None
        };
        states.push(LanState {
            plan: plan.clone(),
            external_mac,
            ports: plan
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| PortState {
                    plan: p.clone(),
                    attached: attached[i].clone(),
                    traffic: lan.port_traffic(i).unwrap_or_default(),
                    client: Mutex::new(None),
                    addrs: Mutex::new(p.addrs.clone()),
                })
                .collect(),
            traffic: lan.traffic(),
            uplink_traffic: lan.uplink_traffic(),
            arp_entries: lan.arp_entries(),
            bcast,
            clusters: Mutex::new(plan.clusters.clone()),
        });
        lans_io.push(LanIo { lan, ports: ports_io, uplink: uplink_io, attached });
    }
    Ok((lans_io, states))
}

/// Every backend of every service with a health check, on every LAN: its own first IPv4
/// address and its namespace. Ring ports have no namespace the gateway can probe from and
/// are not checked.
fn check_targets(shared: &Shared) -> Vec<crate::health::Target> {
    let lans = shared.lans.read().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for (slot, l) in lans.iter().enumerate() {
        let Some(l) = l else { continue };
        for c in lock(&l.clusters).iter() {
            for (s, sp) in c.spec.services.iter().zip(&c.services) {
                let Some(check) = sp.check.filter(|_| s.proto == crate::cluster::Proto::Tcp) else { continue };
                for node in &s.backends {
                    let Some(p) = l.ports.iter().find(|p| &p.plan.node == node && p.plan.kind == PortKind::Tap) else {
                        continue;
                    };
                    let addr = lock(&p.addrs).iter().find_map(|(ip, _)| match ip {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    });
                    let Some(addr) = addr else { continue };
                    out.push(crate::health::Target {
                        lan: slot,
                        cluster: c.spec.name.clone(),
                        port: s.port,
                        node: node.clone(),
                        netns: p.plan.netns.clone(),
                        addr,
                        check,
                    });
                }
            }
        }
    }
    out
}

/// The addresses of the clusters `node` is a backend of, on LAN `plan`.
fn cluster_ips(plan: &LanPlan, node: &str) -> Vec<std::net::Ipv4Addr> {
    let serves = |c: &&ClusterPlan| c.spec.services.iter().any(|s| s.backends.iter().any(|b| b == node));
    plan.clusters.iter().filter(serves).map(|c| c.spec.ip).collect()
}

fn cidrs(addrs: &[(IpAddr, u8)]) -> Vec<String> {
    addrs.iter().map(|(ip, n)| format!("{ip}/{n}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A LAN's slot and state.
    fn find(&self, pan: &str, lan: &str) -> Option<(usize, Arc<LanState>)> {
        let lans = self.lans.read().unwrap_or_else(|p| p.into_inner());
        lans.iter().enumerate().find_map(|(i, s)| match s {
            Some(s) if s.plan.pan == pan && s.plan.name == lan => Some((i, s.clone())),
            _ => None,
        })
    }

    /// Whether slot `l` still holds `state` (it was not removed meanwhile).
    fn holds(&self, l: usize, state: &Arc<LanState>) -> bool {
        let lans = self.lans.read().unwrap_or_else(|p| p.into_inner());
        matches!(lans.get(l), Some(Some(s)) if Arc::ptr_eq(s, state))
    }
}

fn show(shared: &Shared) -> NetShow {
    // Clusters' state lives in the data path thread: ask it, briefly, without holding
    // the LAN table meanwhile.
    let any =
        shared.lans.read().unwrap_or_else(|p| p.into_inner()).iter().flatten().any(|l| !lock(&l.clusters).is_empty());
    let mut clusters: std::collections::HashMap<usize, Vec<ClusterShow>> = std::collections::HashMap::new();
    if any {
        let (tx, rx) = std::sync::mpsc::channel();
        shared.control.send(Command::ShowClusters { reply: tx });
        if let Ok(all) = rx.recv_timeout(Duration::from_secs(1)) {
            for (slot, list) in all {
                clusters.insert(slot, list.iter().map(ClusterShow::of).collect());
            }
        }
    }
    let lans = shared.lans.read().unwrap_or_else(|p| p.into_inner());
    NetShow {
        lans: lans
            .iter()
            .enumerate()
            .filter_map(|(slot, l)| l.as_ref().map(|l| (slot, l)))
            .map(|(slot, l)| LanShow {
                clusters: clusters.remove(&slot).unwrap_or_default(),
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
                    counters: l.uplink_traffic.snapshot(),
                }),
                ports: l
                    .ports
                    .iter()
                    .map(|p| PortShow {
                        node: p.plan.node.clone(),
                        kind: match p.plan.kind {
                            PortKind::Tap => "tap".into(),
                            PortKind::Ring => "ring".into(),
                        },
                        netns: p.plan.netns.clone(),
                        ifname: (p.plan.kind == PortKind::Tap).then(|| p.plan.ifname.clone()),
                        mac: p.plan.mac,
                        ips: cidrs(&lock(&p.addrs)),
                        promiscuous: p.plan.promiscuous,
                        attached: p.attached.load(Ordering::Relaxed),
                        counters: p.traffic.snapshot(),
                    })
                    .collect(),
                counters: l.traffic.snapshot(),
            })
            .collect(),
    }
}

fn serve(listener: UnixListener, shared: Arc<Shared>, stopping: Arc<AtomicBool>) {
    let busy: Arc<Mutex<HashSet<(usize, usize)>>> = Arc::default();
    while !stopping.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, _)) => {
                let (sh, b) = (shared.clone(), busy.clone());
                let _ = std::thread::Builder::new().name("netvirt-conn".into()).spawn(move || {
                    if let Err(e) = connection(&sock, &sh, &b) {
                        tracing::debug!(error = %e, "netvirt connection ended");
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let fd = std::os::fd::AsFd::as_fd(&listener);
                let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
                let _ = rustix::event::poll(&mut fds, Some(&shmem::poll_timeout(Duration::from_millis(200))));
            }
            Err(e) => {
                tracing::warn!(error = %e, "netvirt socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn refuse(sock: &UnixStream, reason: impl Into<String>) -> io::Result<()> {
    shmem::msg::send(sock, &Reply::Refused { reason: reason.into() }, &[])
}

fn connection(sock: &UnixStream, shared: &Shared, busy: &Mutex<HashSet<(usize, usize)>>) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (req, _fds): (Request, _) = match shmem::msg::recv(sock) {
        Ok(r) => r,
        Err(e) => return refuse(sock, format!("bad request: {e}")),
    };
    let (pan, node, lan, credential) = match req {
        Request::Show => {
            let uid = shmem::msg::peer_uid(sock)?;
            if uid != 0 && uid != shared.gateway_uid {
                return refuse(sock, "only root or the gateway's user may list the network");
            }
            return shmem::msg::send(sock, &Reply::Show(show(shared)), &[]);
        }
        Request::Attach { pan, node, lan, credential } => (pan, node, lan, credential),
    };
    if !(shared.authorize.0)(&pan, &node, &credential) {
        return refuse(sock, format!("node {node:?} of PAN {pan:?} is unknown or its credential is wrong"));
    }
    let Some((l, state)) = shared.find(&pan, &lan) else {
        return refuse(sock, format!("PAN {pan:?} has no LAN {lan:?}"));
    };
    let Some(p) = state.ports.iter().position(|p| p.plan.node == node) else {
        return refuse(sock, format!("node {node:?} is not a member of LAN {lan:?}"));
    };
    let port = &state.ports[p];
    if port.plan.kind != PortKind::Ring {
        return refuse(sock, format!("node {node:?}'s port on {lan:?} is a TAP, not a ring port"));
    }
    if !busy.lock().unwrap_or_else(|e| e.into_inner()).insert((l, p)) {
        return refuse(sock, format!("node {node:?}'s port on {lan:?} already has a client"));
    }
    let result = (|| -> io::Result<()> {
        let bcast = state.bcast.clone().ok_or_else(|| io::Error::other("LAN has no broadcast ring"))?;
        let ring =
            RingPort::create(port.plan.mac, RING_SLOTS, state.plan.mtu as usize, bcast).map_err(io::Error::other)?;
        let fds = ring.fds();
        let fds = [fds.region, fds.bcast, fds.to_gateway, fds.to_node].map(|fd| fd.try_clone_to_owned());
        let [Ok(region), Ok(bcast_fd), Ok(to_gateway), Ok(to_node)] = fds else {
            return Err(io::Error::other("duplicating the ring port's fds failed"));
        };
        // The data path takes the port before the client hears back: once its connect
        // returns, frames sent to it are delivered, and frames it sends are switched.
        let (done, attached) = std::sync::mpsc::channel();
        shared.control.send(Command::AttachRing { lan: l, port: p, ring, done });
        attached
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("the data path did not take the port"))?;
        let reply = Reply::Attached {
            mac: port.plan.mac,
            mtu: state.plan.mtu,
            slots: RING_SLOTS,
            slot_size: crate::ringport::slot_size(state.plan.mtu as usize) as u32,
            ips: cidrs(&lock(&port.addrs)),
        };
        use std::os::fd::AsFd;
        let fds = [region.as_fd(), bcast_fd.as_fd(), to_gateway.as_fd(), to_node.as_fd()];
        shmem::msg::send(sock, &reply, &fds)?;
        *lock(&port.client) = Some(sock.try_clone()?);
        port.attached.store(true, Ordering::Relaxed);
        if !shared.holds(l, &state) {
            // Removed while we attached: the removal may have missed this client.
            return Ok(());
        }
        // The client holds the socket open while it runs; its closing detaches the port.
        sock.set_read_timeout(None)?;
        let mut b = [0u8; 64];
        loop {
            match io::Read::read(&mut &*sock, &mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        Ok(())
    })();
    shared.control.send(Command::DetachRing { lan: l, port: p });
    lock(&port.client).take();
    port.attached.store(false, Ordering::Relaxed);
    busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&(l, p));
    result
}

/// Asks a running gateway's netvirt socket for [`NetShow`].
pub fn query_show(socket: &Path) -> io::Result<NetShow> {
    let sock = UnixStream::connect(socket)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    shmem::msg::send(&sock, &Request::Show, &[])?;
    match shmem::msg::recv::<Reply>(&sock)?.0 {
        Reply::Show(s) => Ok(s),
        Reply::Refused { reason } => Err(io::Error::new(io::ErrorKind::PermissionDenied, reason)),
        Reply::Attached { .. } => Err(io::Error::other("unexpected answer")),
    }
}
