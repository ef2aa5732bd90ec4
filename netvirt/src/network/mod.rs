//! The running netvirt service: builds every LAN's switch and ports from the plan the
//! gateway resolved, runs the data path thread, and serves the netvirt socket where ring
//! clients attach and `pangate net show` asks what is there.

use std::io;
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cluster::Limits;
use crate::config::{PortKind, UplinkModeConfig};
use crate::counters::Traffic;
use crate::dataplane::{Command, Control, Dataplane, LanIo, PortIo, UplinkIo};
use crate::host::{self, NetNs, TapSpec};
use crate::mac::Mac;
use crate::ringport::BcastRing;
use crate::switch::{ClusterLanSpec, LanSpec, PortSpec, UplinkMode, VirtualLan};

mod clusters;
mod ports;
mod show;
mod socket;

pub use self::clusters::{CheckPlan, ClusterPlan, ServicePlan};
pub use self::show::{BackendShow, ClusterShow, LanShow, NetShow, PortShow, UplinkShow};
pub use self::socket::{query_show, Reply, Request};

/// How long the data path polls after traffic before it sleeps, unless told otherwise:
/// long enough that a request and its answer a few milliseconds apart (a ping, an RPC)
/// find it awake (on this machine class, ping RTT through a LAN falls from about 170 µs to
/// 10 µs), and no cost at all once traffic stops; polls that keep finding nothing back off.
pub const DEFAULT_SPIN: Duration = Duration::from_millis(3);

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

#[derive(Debug)]
struct PortState {
    plan: PortPlan,
    attached: Arc<AtomicBool>,
    traffic: Arc<Traffic>,
    /// The attached ring client's socket, shut down when the LAN is removed.
    client: Mutex<Option<UnixStream>>,
    /// Its addresses now (they start as the plan's and move with [`Network::move_ip`]).
    addrs: Mutex<Vec<(IpAddr, u8)>>,
    /// Where its TAP lives now, as (namespace, interface): the plan's, until a failover
    /// plugs the port in somewhere else ([`Network::plug`]).
    place: Mutex<(Option<String>, String)>,
    /// Taken out of the LAN for good (a spare whose place a failed node took): no client
    /// attaches to it and `net show` leaves it out.
    retired: AtomicBool,
}

impl PortState {
    /// (namespace, interface) of its TAP.
    fn place(&self) -> (Option<String>, String) {
        lock(&self.place).clone()
    }

    /// Whether it is the live port of `node`.
    fn is(&self, node: &str) -> bool {
        self.plan.node == node && !self.retired.load(Ordering::Relaxed)
    }
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
    /// Creates namespaces, TAPs and uplinks, starts the data path (polling for `spin`
    /// after traffic before it sleeps) and listens on `socket`. On error everything
    /// created so far is removed again.
    pub fn start(plans: Vec<LanPlan>, socket: &Path, authorize: Authorize, spin: Duration) -> io::Result<Network> {
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
        let (dp, control) = Dataplane::new(lans_io, spin)?;
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
            std::thread::Builder::new().name("netvirt-sock".into()).spawn(move || socket::serve(listener, sh, st))?;
        let (for_targets, for_report) = (shared.clone(), shared.clone());
        let health = crate::health::spawn(
            move || clusters::check_targets(&for_targets),
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
        show::show(&self.shared)
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
        drop(_serial);
        self.forget_unused_namespaces();
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
            .position(|p| p.is(node))
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
        self.tap_addr(&state.ports[from], addr, prefix, false)?;
        self.shared.control.send(Command::MoveIp { lan: l, ip, port: to });
        lock(&state.ports[from].addrs).retain(|a| a.0 != addr);
        lock(&state.ports[to].addrs).push((addr, prefix));
        self.tap_addr(&state.ports[to], addr, prefix, true)
    }

    /// Adds or removes an address on a TAP port's interface (ring ports have none).
    fn tap_addr(&self, port: &PortState, ip: IpAddr, prefix: u8, add: bool) -> io::Result<()> {
        if port.plan.kind != PortKind::Tap {
            return Ok(());
        }
        let (netns, ifname) = port.place();
        let namespaces = lock(&self.shared.namespaces);
        let ns = match &netns {
            Some(name) => Some(
                namespaces
                    .iter()
                    .find(|n| n.name() == name)
                    .ok_or_else(|| io::Error::other(format!("namespace {name:?} is not open")))?,
            ),
            None => None,
        };
        host::tap_addr(ns, &ifname, ip, prefix, add).map_err(|e| {
            let what = if add { "adding" } else { "removing" };
            io::Error::new(e.kind(), format!("{what} {ip}/{prefix} on {ifname} of node {}: {e}", port.plan.node))
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
                    let ns = open_netns(namespaces, p.netns.as_deref())?;
                    let spec = TapSpec {
                        ifname: p.ifname.clone(),
                        mac: p.mac,
                        mtu: plan.mtu,
                        addrs: p.addrs.clone(),
                        cluster_ips: clusters::cluster_ips(plan, &p.node),
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
                    place: Mutex::new((p.netns.clone(), p.ifname.clone())),
                    retired: AtomicBool::new(false),
                })
                .collect(),
            traffic: lan.traffic(),
            uplink_traffic: lan.uplink_traffic(),
            arp_entries: lan.arp_entries(),
            bcast,
            clusters: Mutex::new(plan.clusters.clone()),
        });
        let epochs = vec![0; ports_io.len()];
        lans_io.push(LanIo { lan, ports: ports_io, uplink: uplink_io, attached, epochs });
    }
    Ok((lans_io, states))
}

/// The namespace `name` among those open (opened, or created as `ip netns add` would,
/// if not yet); `None` for the gateway's own.
fn open_netns<'a>(namespaces: &'a mut Vec<NetNs>, name: Option<&str>) -> io::Result<Option<&'a NetNs>> {
    let Some(name) = name else { return Ok(None) };
    if !namespaces.iter().any(|n| n.name() == name) {
        namespaces.push(NetNs::ensure(name)?);
    }
    Ok(namespaces.iter().find(|n| n.name() == name))
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
