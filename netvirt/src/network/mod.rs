//! The running netvirt service: builds every LAN's switch and ports from the plan the
//! gateway resolved, runs the data-path workers, and serves the netvirt socket where ring
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
use crate::dataplane::{Command, Controls, Dataplane, LanIo, PortIo, UplinkIo};
use crate::host::{self, NetNs, TapSpec, WireStats, Wires, Yard};
use crate::mac::Mac;
use crate::ringport::BcastRing;
use crate::switch::{ClusterLanSpec, LanSpec, PortSpec, UplinkMode, VirtualLan};

mod clusters;
mod fast;
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

/// How the data path runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a worker polls after traffic before it sleeps.
    pub spin: Duration,
    /// Data-path workers (threads). A LAN of TAPs alone gets a queue per worker on every
    /// TAP (`IFF_MULTI_QUEUE`), so its flows spread over them; a LAN with ring ports or an
    /// uplink is served by the first worker alone.
    pub workers: usize,
    /// Let the kernel forward what it can between TAP-kind ports ([`crate::fastpath`]),
    /// where it has what that takes (veth, `tc` u32 and mirred, eBPF); otherwise, or when
    /// off, every frame goes through the switch.
    pub fastpath: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { spin: DEFAULT_SPIN, workers: 1, fastpath: true }
    }
}

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
    /// Its counters, one set per worker serving the LAN (summed when read).
    traffic: Vec<Arc<Traffic>>,
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
    /// Its wire and TAP in the yard, while it has them (kernel fast path).
    wires: Mutex<Option<Wires>>,
    /// What its earlier wires carried (a wire's counters go with it).
    gone: Mutex<WireStats>,
    /// Its wire's interface index (0: none), as the data path reads it.
    wire: Arc<std::sync::atomic::AtomicU32>,
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
    /// Counters, one set per worker serving the LAN.
    traffic: Vec<Arc<Traffic>>,
    uplink_traffic: Vec<Arc<Traffic>>,
    /// Workers serving it: all of them (a LAN of TAPs alone, a queue each), or the first.
    queues: usize,
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
    control: Controls,
    /// The kernel fast path's namespace, if it runs.
    yard: Option<Yard>,
    /// Data-path workers.
    workers: usize,
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
    dataplane: Vec<JoinHandle<io::Result<()>>>,
    listener: Option<JoinHandle<()>>,
    /// Checks cluster backends whose services ask for it.
    health: Option<JoinHandle<()>>,
    /// Expires idle service cluster flows from the kernel's table.
    sweeper: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    socket: PathBuf,
}

impl Network {
    /// Creates namespaces, TAPs and uplinks, starts the data-path workers and listens on
    /// `socket`. On error everything created so far is removed again.
    pub fn start(plans: Vec<LanPlan>, socket: &Path, authorize: Authorize, opts: Options) -> io::Result<Network> {
        let workers = opts.workers.max(1);
        let yard = if opts.fastpath {
            Yard::new()
                .map_err(|e| {
                    tracing::warn!(error = %e, "no kernel fast path here: every frame goes through the switch");
                })
                .ok()
        } else {
            None
        };
        if let Some(y) = &yard {
            let ns = format!("/proc/{}/fd/{}", std::process::id(), y.fd());
            tracing::info!(netns = %ns, cluster_flows = y.flows().is_some(),
                "kernel fast path on; to look inside: nsenter --net={ns} tc -s filter show dev w1 ingress");
        }
        let mut namespaces: Vec<NetNs> = Vec::new();
        let result = build(&plans, &mut namespaces, workers, yard.as_ref());
        let (lans_io, states) = match result {
            Ok(v) => v,
            Err(e) => {
                for ns in namespaces {
                    let _ = ns.remove();
                }
                return Err(e);
            }
        };
        let mut controls = Vec::new();
        let mut dataplane = Vec::new();
        for (w, lans) in lans_io.into_iter().enumerate() {
            let (dp, control) = Dataplane::new(w, lans, opts.spin)?;
            controls.push(control);
            let name = if w == 0 { "netvirt".to_string() } else { format!("netvirt-w{w}") };
            dataplane.push(std::thread::Builder::new().name(name).spawn(move || {
                let r = dp.run();
                if let Err(e) = &r {
                    tracing::error!(error = %e, worker = w, "a netvirt data-path worker stopped");
                }
                r
            })?);
        }
        let shared = Arc::new(Shared {
            lans: RwLock::new(states.into_iter().map(|s| Some(Arc::new(s))).collect()),
            namespaces: Mutex::new(namespaces),
            changes: Mutex::new(()),
            control: Controls(controls),
            yard,
            workers,
            authorize: AuthorizeBox(authorize),
            gateway_uid: rustix::process::geteuid().as_raw(),
        });
        for state in shared.lans.read().unwrap_or_else(|p| p.into_inner()).iter().flatten() {
            fast::refresh(&shared, state, None);
        }
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
                if !ok {
                    fast::backend_down(&for_report, t.lan, &t.cluster, &t.node);
                }
                let (cluster, node) = (t.cluster.clone(), t.node.clone());
                let proto = crate::cluster::Proto::Tcp;
                for_report.control.each(|_| Command::Check {
                    lan: t.lan,
                    cluster: cluster.clone(),
                    proto,
                    port: t.port,
                    node: node.clone(),
                    ok,
                });
            },
            stopping.clone(),
        )?;
        let sweeper = fast::spawn_sweeper(&shared, stopping.clone())?;
        Ok(Network {
            shared,
            dataplane,
            listener: Some(listener),
            health: Some(health),
            sweeper,
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
        let yard = self.shared.yard.as_ref();
        let (io, mut states) = match build(std::slice::from_ref(&plan), &mut namespaces, self.shared.workers, yard) {
            Ok(v) => v,
            Err(e) => {
                for ns in namespaces.drain(before..) {
                    let _ = ns.remove();
                }
                return Err(e);
            }
        };
        drop(namespaces);
        let Some(state) = states.pop() else {
            return Err(io::Error::other("building the LAN gave nothing"));
        };
        let state = Arc::new(state);
        let mut lans = self.shared.lans.write().unwrap_or_else(|p| p.into_inner());
        lans.push(Some(state.clone()));
        let slot = lans.len() - 1;
        for (w, mut per_worker) in io.into_iter().enumerate() {
            if let Some(io) = per_worker.pop().flatten() {
                self.shared.control.0[w].send(Command::AddLan { lan: slot, io: Box::new(io) });
            }
        }
        drop(lans);
        fast::refresh(&self.shared, &state, None);
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
        let closed = self.shared.control.ask(Duration::from_secs(5), |_, done| Command::RemoveLan { lan: slot, done });
        if closed.is_none() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("LAN {lan:?}: the data path did not let go")));
        }
        // The TAPs are gone; the wires go, and namespaces no other LAN uses can go too.
        fast::unwire_all(&self.shared, &state);
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
        // The kernel stops taking the address from its old port before the switch moves
        // it, and takes it from the new one only after: meanwhile frames from it go
        // through the switch, which knows the owner at every moment.
        lock(&state.ports[from].addrs).retain(|a| a.0 != addr);
        fast::refresh(&self.shared, &state, Some(from));
        fast::forget_flows_of(&self.shared, &state.ports[from]);
        self.shared.control.each(|_| Command::MoveIp { lan: l, ip, port: to });
        lock(&state.ports[to].addrs).push((addr, prefix));
        fast::refresh(&self.shared, &state, Some(to));
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
        self.shared.control.each(|_| Command::Stop);
        if let Some(t) = self.listener.take() {
            let _ = t.join();
        }
        if let Some(t) = self.health.take() {
            let _ = t.join();
        }
        if let Some(t) = self.sweeper.take() {
            let _ = t.join();
        }
        let mut r = Ok(());
        for t in self.dataplane.drain(..) {
            let joined = t.join().unwrap_or_else(|_| Err(io::Error::other("a netvirt worker panicked")));
            r = r.and(joined);
        }
        let _ = std::fs::remove_file(&self.socket);
        // The TAP fds closed with the data path; the wires go, then the namespaces.
        for state in self.shared.lans.read().unwrap_or_else(|p| p.into_inner()).iter().flatten() {
            fast::unwire_all(&self.shared, state);
        }
        let namespaces = std::mem::take(&mut *lock(&self.shared.namespaces));
        for ns in namespaces {
            if let Err(e) = ns.remove() {
                tracing::warn!(error = %e, "removing a network namespace");
            }
        }
        r
    }
}

/// Per worker, its LANs by slot (`None`: served by another worker alone); and every LAN's state.
type Built = (Vec<Vec<Option<LanIo>>>, Vec<LanState>);

fn build(plans: &[LanPlan], namespaces: &mut Vec<NetNs>, workers: usize, yard: Option<&Yard>) -> io::Result<Built> {
    let mut per_worker: Vec<Vec<Option<LanIo>>> = (0..workers).map(|_| Vec::new()).collect();
    let mut states: Vec<LanState> = Vec::new();
    for plan in plans {
        let (ios, state) = match build_lan(plan, namespaces, workers, yard) {
            Ok(v) => v,
            Err(e) => {
                // The LANs built so far lose their wires (their TAPs close as they drop).
                for state in &states {
                    fast::unwire_ports(yard, &state.ports);
                }
                return Err(e);
            }
        };
        for (w, io) in ios.into_iter().enumerate() {
            per_worker[w].push(io);
        }
        states.push(state);
    }
    Ok((per_worker, states))
}

/// One LAN: its devices, a copy of its switch for each worker that serves it (with
/// counters of its own), and its state. A LAN of TAPs alone is served by every worker,
/// each on its own queue of every TAP; one with ring ports or an uplink by the first.
fn build_lan(
    plan: &LanPlan,
    namespaces: &mut Vec<NetNs>,
    workers: usize,
    yard: Option<&Yard>,
) -> io::Result<(Vec<Option<LanIo>>, LanState)> {
    let mut wires: Vec<Option<Wires>> = vec![None; plan.ports.len()];
    let built = build_lan_with(plan, namespaces, workers, yard, &mut wires);
    if built.is_err() {
        if let Some(yard) = yard {
            for w in wires.into_iter().flatten() {
                let _ = yard.remove_port(w);
            }
        }
    }
    built
}

fn build_lan_with(
    plan: &LanPlan,
    namespaces: &mut Vec<NetNs>,
    workers: usize,
    yard: Option<&Yard>,
    wires: &mut [Option<Wires>],
) -> io::Result<(Vec<Option<LanIo>>, LanState)> {
    let queues = if plan.uplink.is_none() && plan.ports.iter().all(|p| p.kind == PortKind::Tap) { workers } else { 1 };
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
    let mut copies = Vec::new();
    for _ in 0..queues {
        let mut lan = VirtualLan::new(spec.clone()).map_err(io::Error::other)?;
        for c in &plan.clusters {
            for (s, sp) in c.spec.services.iter().zip(&c.services) {
                for node in &sp.draining {
                    lan.set_draining(&c.spec.name, s.proto, s.port, node, true);
                }
            }
        }
        copies.push(lan);
    }
    let mut ports_io: Vec<Vec<PortIo>> = (0..queues).map(|_| Vec::new()).collect();
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
                let made = match yard {
                    Some(yard) => yard.add_port(ns, &spec, queues).map(|(fds, w)| {
                        wires[i] = Some(w);
                        fds
                    }),
                    None => host::create_tap(ns, &spec, queues),
                };
                let fds = made.map_err(|e| {
                    io::Error::new(e.kind(), format!("LAN {}: TAP {} for node {}: {e}", plan.name, p.ifname, p.node))
                })?;
                for (w, fd) in fds.into_iter().enumerate() {
                    ports_io[w].push(PortIo::Tap(fd));
                    copies[w].set_attached(i, true).map_err(io::Error::other)?;
                }
            }
            PortKind::Ring => ports_io[0].push(PortIo::Absent),
        }
    }
    let attached: Vec<Arc<AtomicBool>> =
        plan.ports.iter().map(|p| Arc::new(AtomicBool::new(p.kind == PortKind::Tap))).collect();
    let wire_cells: Vec<Arc<std::sync::atomic::AtomicU32>> =
        wires.iter().map(|w| Arc::new(std::sync::atomic::AtomicU32::new(w.map_or(0, |w| w.wire)))).collect();
    let bcast = if plan.ports.iter().any(|p| p.kind == PortKind::Ring) {
        Some(Arc::new(BcastRing::create(&plan.name, RING_SLOTS, plan.mtu as usize).map_err(io::Error::other)?))
    } else {
        None
    };
    let state = LanState {
        plan: plan.clone(),
        external_mac,
        ports: plan
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortState {
                plan: p.clone(),
                attached: attached[i].clone(),
                traffic: copies.iter().map(|l| l.port_traffic(i).unwrap_or_default()).collect(),
                client: Mutex::new(None),
                addrs: Mutex::new(p.addrs.clone()),
                place: Mutex::new((p.netns.clone(), p.ifname.clone())),
                retired: AtomicBool::new(false),
                wires: Mutex::new(wires[i]),
                gone: Mutex::new(WireStats::default()),
                wire: wire_cells[i].clone(),
            })
            .collect(),
        traffic: copies.iter().map(VirtualLan::traffic).collect(),
        uplink_traffic: copies.iter().map(VirtualLan::uplink_traffic).collect(),
        queues,
        arp_entries: copies[0].arp_entries(),
        bcast,
        clusters: Mutex::new(plan.clusters.clone()),
    };
    let mut ios: Vec<Option<LanIo>> = Vec::new();
    for (w, (lan, ports)) in copies.into_iter().zip(ports_io).enumerate() {
        let epochs = vec![0; ports.len()];
        let uplink = if w == 0 { uplink_io.take() } else { None };
        let flows = yard.and_then(|y| y.flows().cloned());
        ios.push(Some(LanIo {
            lan,
            ports,
            uplink,
            attached: attached.clone(),
            epochs,
            wires: wire_cells.clone(),
            flows,
        }));
    }
    ios.resize_with(workers, || None);
    Ok((ios, state))
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
