//! The iSCSI target (RFC 7143): portals that accept initiators, log them in as nodes
//! (CHAP against the node's secret) and serve each (PAN, target number) as a target whose
//! LUNs are the logged-in node's own map.
//!
//! - [`directory`]: initiator and target names against the node registry.
//! - [`conn`]: one connection's socket and its login.
//! - [`link`]: a logged-in connection in the full feature phase, moving PDUs between the
//!   socket and the sans-IO [`iscsi::session`] and commands between the session and a ring
//!   queue pair of the node.
//!
//! Each portal has a thread that accepts, and each login runs on a thread of its own,
//! bounded by the timeout. A logged-in connection moves to the ring server's worker that
//! serves its queue pair, which runs it beside the SCSI target
//! ([`crate::ring::server::attach`]). At most `max_connections` are open in all, logging
//! in or logged in (more are closed at once), and a silent initiator is pinged and
//! dropped when it does not answer.

mod conn;
pub mod directory;
mod link;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use iscsi::login::Status;
use iscsi::negotiate::{Limits, Params};

use crate::registry::{Images, Registry};
use crate::ring::server::attach::Attacher;
use directory::{Admitted, Directory};

/// How the target is set up.
#[derive(Debug, Clone)]
pub struct IscsiOptions {
    /// Portals to listen on.
    pub portals: Vec<SocketAddr>,
    /// Target names are `<prefix>:<pan>.t<target>`.
    pub target_prefix: String,
    /// Connections held at once.
    pub max_connections: usize,
    /// What the target offers in negotiation.
    pub limits: Limits,
    /// How long a login may take, and how long an initiator may stay silent before it is
    /// pinged (and then dropped if it does not answer within as long again).
    pub timeout: Duration,
    /// This target's portal group tag: the gateway's id (1 for a lone gateway).
    pub portal_group: u16,
    /// The other redundant gateways' portals, `host:port,tag`, which SendTargets lists too.
    pub peer_portals: Vec<String>,
    /// Where logins and refused logins are recorded for the admin.
    pub events: Arc<metrics::EventLog>,
}

/// A session in the full feature phase, as the admin lists it.
pub use web::model::IscsiSessionView as SessionView;

/// One portal's counters.
#[derive(Debug)]
pub struct PortalStats {
    logins: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    pdus: [AtomicU64; 64],
    refused_connections: AtomicU64,
}

impl Default for PortalStats {
    fn default() -> Self {
        PortalStats {
            logins: Mutex::default(),
            errors: Mutex::default(),
            pdus: std::array::from_fn(|_| AtomicU64::new(0)),
            refused_connections: AtomicU64::new(0),
        }
    }
}

impl PortalStats {
    fn login(&self, status: Status) {
        let result = match status.0 {
            0 => "success",
            _ if status == Status::AUTHENTICATION_FAILURE => "authentication_failure",
            _ if status == Status::AUTHORIZATION_FAILURE => "not_authorized",
            _ if status == Status::NOT_FOUND => "target_not_found",
            2 => "initiator_error",
            _ => "target_error",
        };
        *self.logins.lock().expect("stats").entry(result).or_default() += 1;
    }

    fn error(&self, label: &'static str) {
        *self.errors.lock().expect("stats").entry(label).or_default() += 1;
    }

    fn pdu(&self, opcode: u8) {
        self.pdus[usize::from(opcode & 0x3f)].fetch_add(1, Ordering::Relaxed);
    }

    /// Logins by result.
    pub fn logins(&self) -> Vec<(&'static str, u64)> {
        self.logins.lock().expect("stats").iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Connections ended for a protocol error, digest error or timeout, by reason.
    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        self.errors.lock().expect("stats").iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// PDUs received, by opcode name.
    pub fn pdus(&self) -> Vec<(&'static str, u64)> {
        (0u8..64)
            .filter_map(|op| {
                let n = self.pdus[usize::from(op)].load(Ordering::Relaxed);
                let name = iscsi::Opcode::from_byte(op).map_or("unknown", iscsi::Opcode::name);
                (n > 0).then_some((name, n))
            })
            .collect()
    }

    /// Connections closed at once because `max_connections` were open.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }
}

/// A login that reached the full feature phase.
struct Established {
    params: Params,
    isid: u64,
    tsih: u16,
    admitted: Admitted,
    stat_sn: u32,
    exp_cmd_sn: u32,
}

struct Registered {
    view: SessionView,
    kill: Arc<AtomicBool>,
    /// PDUs the session has received, counted by its thread.
    pdus: Arc<AtomicU64>,
    stream: TcpStream,
}

fn digest(on: bool) -> String {
    if on { "CRC32C" } else { "None" }.to_string()
}

impl Registered {
    /// Tells the session's thread to end, and wakes it by shutting its socket.
    fn drop_connection(&self) {
        self.kill.store(true, Ordering::Release);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// What a session keeps of its registration.
struct Registration {
    id: u64,
    kill: Arc<AtomicBool>,
    pdus: Arc<AtomicU64>,
}

/// What every connection thread reads.
struct Shared {
    registry: Registry,
    /// Block sizes of the images LUNs map, for a session's residual arithmetic.
    images: Arc<dyn Images>,
    prefix: String,
    addresses: Vec<String>,
    /// Gives logged-in connections their queue pairs and workers.
    attacher: Attacher,
    limits: Limits,
    /// Returned as TargetPortalGroupTag at login.
    pub(super) portal_group: u16,
    max_connections: usize,
    timeout: Duration,
    stopping: AtomicBool,
    connections: AtomicUsize,
    next_tsih: AtomicU16,
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Registered>>,
    /// Each portal's counters.
    portals: Vec<(SocketAddr, PortalStats)>,
    /// Logins, for the admin's event log.
    pub(super) events: Arc<metrics::EventLog>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Shared {
    fn stats(&self, portal: SocketAddr) -> &PortalStats {
        &self.portals.iter().find(|(a, _)| *a == portal).expect("a portal of this service").1
    }

    fn directory(&self) -> Directory {
        Directory::new(self.registry.clone(), &self.prefix, self.addresses.clone())
    }

    fn next_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }

    /// Records a session; a normal session with the same initiator, ISID and target
    /// replaces (drops) the old one: session reinstatement.
    fn register(&self, est: &Established, portal: SocketAddr, peer: SocketAddr, stream: &TcpStream) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let target = est.params.target_name.clone().unwrap_or_default();
        let initiator = est.params.initiator_name.clone().unwrap_or_default();
        let view = SessionView {
            id,
            initiator,
            target,
            pan: est.admitted.node.pan.clone(),
            node: est.admitted.node.node.clone(),
            isid: format!("{:012x}", est.isid),
            tsih: est.tsih,
            portal: portal.to_string(),
            peer: peer.to_string(),
            kind: if est.params.discovery { "discovery" } else { "normal" }.to_string(),
            header_digest: digest(est.params.header_digest),
            data_digest: digest(est.params.data_digest),
            max_recv_data_segment_length: est.params.initiator_max_recv_data,
            max_burst_length: est.params.max_burst,
            first_burst_length: est.params.first_burst,
            pdus: 0,
        };
        let kill = Arc::new(AtomicBool::new(false));
        let mut sessions = self.sessions.lock().expect("sessions");
        if !est.params.discovery {
            for old in sessions.values() {
                let v = &old.view;
                if v.kind == "normal" && v.initiator == view.initiator && v.isid == view.isid && v.target == view.target
                {
                    tracing::info!(initiator = %v.initiator, isid = %v.isid, "iSCSI session reinstated: the old one is dropped");
                    old.drop_connection();
                }
            }
        }
        let stream = stream.try_clone().expect("a socket fd can be duplicated");
        let pdus = Arc::new(AtomicU64::new(0));
        sessions.insert(id, Registered { view, kill: kill.clone(), pdus: pdus.clone(), stream });
        Registration { id, kill, pdus }
    }

    /// Drops every normal session of `target` but the one whose kill flag is `except`.
    fn drop_target(&self, target: &str, except: &AtomicBool) {
        for r in self.sessions.lock().expect("sessions").values() {
            if r.view.kind == "normal" && r.view.target == target && !std::ptr::eq(&*r.kill, except) {
                r.drop_connection();
            }
        }
    }

    fn unregister(&self, id: u64) {
        self.sessions.lock().expect("sessions").remove(&id);
    }
}

/// What the admin and the metrics see of the running target.
#[derive(Debug, Clone)]
pub struct IscsiHandle(Arc<Shared>);

impl IscsiHandle {
    /// Sessions in the full feature phase.
    pub fn sessions(&self) -> Vec<SessionView> {
        let sessions = self.0.sessions.lock().expect("sessions");
        let mut v: Vec<SessionView> =
            sessions.values().map(|r| SessionView { pdus: r.pdus.load(Ordering::Relaxed), ..r.view.clone() }).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Drops a session: its connection closes (commands it has in flight complete in the
    /// SCSI target first). Whether there was one.
    pub fn drop_session(&self, id: u64) -> bool {
        let sessions = self.0.sessions.lock().expect("sessions");
        let Some(r) = sessions.get(&id) else { return false };
        r.drop_connection();
        true
    }

    /// Every portal's counters, for the metrics.
    pub fn sample(&self) -> Vec<metrics::PortalSample> {
        let sessions = self.sessions();
        self.0
            .portals
            .iter()
            .map(|(addr, s)| {
                let portal = addr.to_string();
                let count =
                    |kind: &str| sessions.iter().filter(|v| v.portal == portal && v.kind == kind).count() as u64;
                let owned = |v: Vec<(&'static str, u64)>| v.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
                metrics::PortalSample {
                    sessions: vec![("normal".into(), count("normal")), ("discovery".into(), count("discovery"))],
                    logins: owned(s.logins()),
                    pdus: owned(s.pdus()),
                    errors: owned(s.errors()),
                    refused_connections: s.refused_connections(),
                    portal,
                }
            })
            .collect()
    }
}

/// The running target.
#[derive(Debug)]
pub struct IscsiService {
    shared: Arc<Shared>,
    portals: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl IscsiService {
    /// Binds every portal and starts accepting.
    pub fn start(
        opts: IscsiOptions,
        registry: Registry,
        images: Arc<dyn Images>,
        attacher: Attacher,
    ) -> std::io::Result<IscsiService> {
        let mut listeners = Vec::new();
        for p in &opts.portals {
            let l = TcpListener::bind(p)?;
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
        let bound: Vec<SocketAddr> = listeners.iter().map(TcpListener::local_addr).collect::<Result<_, _>>()?;
        let shared = Arc::new(Shared {
            registry,
            images,
            prefix: opts.target_prefix,
            addresses: bound.iter().map(|a| format!("{a},{}", opts.portal_group)).chain(opts.peer_portals).collect(),
            portal_group: opts.portal_group,
            attacher,
            limits: opts.limits,
            max_connections: opts.max_connections,
            timeout: opts.timeout,
            stopping: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            next_tsih: AtomicU16::new(1),
            next_id: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            portals: bound.iter().map(|&a| (a, PortalStats::default())).collect(),
            events: opts.events,
        });
        let mut portals = Vec::new();
        for (l, addr) in listeners.into_iter().zip(bound) {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("pangate-iscsi-{}", addr.port()))
                .spawn(move || accept(l, addr, s))?;
            portals.push((addr, t));
        }
        Ok(IscsiService { shared, portals })
    }

    /// The portals' bound addresses.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.portals.iter().map(|(a, _)| *a).collect()
    }

    /// Sessions in the full feature phase.
    pub fn sessions(&self) -> Vec<SessionView> {
        self.handle().sessions()
    }

    /// A handle for the admin and the metrics: sessions, dropping one, counters.
    pub fn handle(&self) -> IscsiHandle {
        IscsiHandle(self.shared.clone())
    }

    /// Asks every session to log out, waits for them a few seconds, and stops.
    pub fn stop(self) {
        self.shared.stopping.store(true, Ordering::Release);
        for (_, t) in self.portals {
            let _ = t.join();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.shared.connections.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A connection's place among `max_connections`, released when its socket closes.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept(listener: TcpListener, portal: SocketAddr, shared: Arc<Shared>) {
    use rustix::event::{poll, PollFd, PollFlags};
    while !shared.stopping.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(&listener, PollFlags::IN)];
                let ts = rustix::time::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
                let _ = poll(&mut fds, Some(&ts));
                continue;
            }
            Err(e) => {
                tracing::warn!(%portal, error = %e, "iSCSI accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::AcqRel) >= shared.max_connections {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            shared.stats(portal).refused_connections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%portal, %peer, max = shared.max_connections, "iSCSI connection refused: too many connections");
            continue;
        }
        let slot = Slot(shared.clone());
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name("pangate-iscsi-login".into()).spawn(move || {
            match conn::serve(stream, portal, s.clone(), slot) {
                Ok(()) => {}
                Err(e @ (conn::Ended::Logout | conn::Ended::PeerClosed | conn::Ended::LoginFailed(..))) => {
                    tracing::debug!(%portal, %peer, reason = %e, "iSCSI connection ended");
                }
                Err(e) => {
                    if matches!(e, conn::Ended::LoginTimeout) {
                        s.stats(portal).error(e.label());
                    }
                    tracing::warn!(%portal, %peer, reason = %e, "iSCSI connection ended");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(%portal, error = %e, "cannot start an iSCSI login thread");
        }
    }
}
