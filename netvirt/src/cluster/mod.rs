//! Service clusters: one IP address of a LAN served by several nodes, the seed's virtual
//! cluster proxy. Sans-IO, like the switch: IPv4 packets and the time go in, and a
//! [`Verdict`] comes out.
//!
//! - Only configured (protocol, port) services are served. Other packets to the cluster IP
//!   are dropped and counted, except ICMP echo, which the cluster answers itself.
//! - A packet of a flow the [connection table](aging) knows follows its entry. Any other
//!   packet, such as a TCP SYN or a new UDP flow, picks a backend: first the client's
//!   entry in the sticky table for sticky services, then the service's [`maglev`] table
//!   over its healthy backends. For a sticky service that table is keyed by the client's
//!   address. The choice is recorded in the connection table.
//! - Connection entries age out: after FIN or RST quickly, otherwise after the idle
//!   timeout of their protocol. The table is bounded, the least recently used entry goes
//!   first, and evictions are counted.
//! - A backend is up, draining or down. Draining and down backends get no new
//!   connections. The flows of a draining backend stay on it, and a down backend's flows are
//!   forgotten.
//! - ICMP errors about a flow (destination unreachable, time exceeded, which carry the
//!   backend's packet) go to the backend of that flow, so path MTU discovery works through
//!   the cluster IP.
//!
//! Delivery is the caller's: the frame goes unchanged to the chosen backend's MAC (direct
//! server return), and the backend answers from the cluster IP, which it holds as an extra
//! address.

pub mod aging;
pub mod maglev;

use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etherparse::{Icmpv4Slice, Icmpv4Type, IpNumber, Ipv4HeaderSlice, PacketBuilder, TcpHeaderSlice, UdpHeaderSlice};

use self::aging::AgingTable;
use self::maglev::Maglev;

/// A transport protocol a service can be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One served port of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub proto: Proto,
    pub port: u16,
    /// The nodes that serve it.
    pub backends: Vec<String>,
    /// Keep a client on one backend, for this long after its last packet.
    pub sticky: Option<Duration>,
}

/// A cluster: its address and services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub services: Vec<ServiceSpec>,
}

/// How long entries live, and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An established TCP flow without packets.
    pub tcp_idle: Duration,
    /// A TCP flow after a FIN from the client (its last ACKs still come).
    pub tcp_closing: Duration,
    /// A TCP flow after a RST.
    pub tcp_reset: Duration,
    /// A UDP flow without packets.
    pub udp_idle: Duration,
    /// Entries of the connection table.
    pub connections: usize,
    /// Entries of the sticky table.
    pub sticky_clients: usize,
    /// Slots of a service's lookup table at least (rounded up to a prime, and to 100 a
    /// backend): [`maglev::MIN_SIZE`], less only to make tests and fuzzing quick.
    pub table_size: u32,
}

impl Default for Limits {
    /// IPVS's timeouts (15 min established, 2 min closing, 5 min UDP), and a million flows.
    fn default() -> Limits {
        Limits {
            tcp_idle: Duration::from_secs(900),
            tcp_closing: Duration::from_secs(120),
            tcp_reset: Duration::from_secs(10),
            udp_idle: Duration::from_secs(300),
            connections: 1 << 20,
            sticky_clients: 1 << 18,
            table_size: maglev::MIN_SIZE,
        }
    }
}

/// A backend's state for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Takes new connections.
    Up,
    /// Keeps its connections and takes no new ones.
    Draining,
    /// Loses its connections.
    Down,
}

/// Why a packet to the cluster IP was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterDrop {
    /// No service on that protocol and port.
    Port,
    /// The service has no backend that takes new connections.
    NoBackend,
    /// A fragment: it carries no ports to follow.
    Fragment,
    /// Neither TCP, UDP, ICMP echo nor an ICMP error about a known flow.
    Protocol,
    /// The headers do not parse.
    Malformed,
}

impl ClusterDrop {
    /// Every reason, in a fixed order.
    pub const ALL: [ClusterDrop; 5] = [
        ClusterDrop::Port,
        ClusterDrop::NoBackend,
        ClusterDrop::Fragment,
        ClusterDrop::Protocol,
        ClusterDrop::Malformed,
    ];

    /// The reason's label, as in metrics.
    pub fn label(self) -> &'static str {
        match self {
            ClusterDrop::Port => "port",
            ClusterDrop::NoBackend => "no_backend",
            ClusterDrop::Fragment => "fragment",
            ClusterDrop::Protocol => "protocol",
            ClusterDrop::Malformed => "malformed",
        }
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Not addressed to this cluster.
    NotOurs,
    /// Deliver the frame unchanged to this backend node.
    Forward(&'a str),
    /// Send this IPv4 packet back to the sender (an echo reply from the cluster IP).
    Reply(Vec<u8>),
    Drop(ClusterDrop),
}

/// A cluster's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCounters {
    /// Packets relayed to a backend.
    pub forwarded: u64,
    /// Flows that picked a backend.
    pub new_flows: u64,
    /// Echo requests answered.
    pub echo_replies: u64,
    /// Drops, by [`ClusterDrop::ALL`] order.
    pub dropped: [u64; 5],
}

/// A flow as the cluster tells flows apart: the client's address and port, the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: Proto,
    client: Ipv4Addr,
    client_port: u16,
    port: u16,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    service: u16,
    backend: u16,
}

/// The connection table's classes: each has one lifetime ([`Limits`]).
mod class {
    pub const TCP_OPEN: u8 = 0;
    /// A FIN was seen.
    pub const TCP_CLOSING: u8 = 1;
    /// A RST was seen.
    pub const TCP_RESET: u8 = 2;
    pub const UDP: u8 = 3;
    pub const COUNT: u8 = 4;
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    health: Vec<Health>,
    /// Indices into `spec.backends` of the backends that are up, in the table's order.
    up: Vec<usize>,
    table: Maglev,
    /// The table's size, fixed for the service's life.
    size: u32,
}

impl Service {
    fn new(spec: ServiceSpec, health: Vec<Health>, table_size: u32) -> Service {
        let size = maglev::size_for(spec.backends.len(), table_size);
        let mut s = Service { spec, health, up: Vec::new(), table: Maglev::with_size::<&str>(&[], size), size };
        s.rebuild();
        s
    }

    fn rebuild(&mut self) {
        self.up = (0..self.spec.backends.len()).filter(|&i| self.health[i] == Health::Up).collect();
        let names: Vec<&str> = self.up.iter().map(|&i| self.spec.backends[i].as_str()).collect();
        self.table = Maglev::with_size(&names, self.size);
    }
}

/// One service cluster's state.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    ip: Ipv4Addr,
    services: Vec<Service>,
    flows: AgingTable<FlowKey, Flow>,
    /// Sticky services' clients: (service, client) to backend.
    sticky: AgingTable<(u16, Ipv4Addr), u16>,
    limits: Limits,
    counters: ClusterCounters,
}

fn flow_hash(seed: u64, value: impl std::hash::Hash) -> u64 {
    foldhash::quality::FixedState::with_seed(seed).hash_one(value)
}

impl Cluster {
    /// A cluster whose backends all start up.
    pub fn new(spec: ClusterSpec, limits: Limits) -> Cluster {
        let services = spec
            .services
            .into_iter()
            .map(|s| {
                let health = vec![Health::Up; s.backends.len()];
                Service::new(s, health, limits.table_size)
            })
            .collect();
        Cluster {
            name: spec.name,
            ip: spec.ip,
            services,
            flows: AgingTable::new(limits.connections, class::COUNT),
            sticky: AgingTable::new(limits.sticky_clients, 1),
            limits,
            counters: ClusterCounters::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The spec as it stands.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            name: self.name.clone(),
            ip: self.ip,
            services: self.services.iter().map(|s| s.spec.clone()).collect(),
        }
    }

    /// Takes a changed spec (the same address) without losing flows: backends that stay
    /// keep their health and their flows; flows of services or backends that went are
    /// forgotten. New backends start up.
    pub fn reconfigure(&mut self, spec: ClusterSpec) {
        let old = std::mem::take(&mut self.services);
        // Old (service, backend) index to new, for the flows and sticky clients that stay.
        let mut remap: Vec<Vec<Option<(u16, u16)>>> = old.iter().map(|s| vec![None; s.spec.backends.len()]).collect();
        for (ni, ns) in spec.services.into_iter().enumerate() {
            let prior = old.iter().position(|o| o.spec.proto == ns.proto && o.spec.port == ns.port);
            let health = ns
                .backends
                .iter()
                .enumerate()
                .map(|(nb, name)| {
                    let Some(oi) = prior else { return Health::Up };
                    match old[oi].spec.backends.iter().position(|n| n == name) {
                        Some(ob) => {
                            remap[oi][ob] = Some((ni as u16, nb as u16));
                            old[oi].health[ob]
                        }
                        None => Health::Up,
                    }
                })
                .collect();
            self.services.push(Service::new(ns, health, self.limits.table_size));
        }
        let map = |service: u16, backend: u16| remap[usize::from(service)][usize::from(backend)];
        // Entries that map move to their new indices, in their order of use.
        for (k, f, c, expires) in self.flows.drain() {
            if let Some((service, backend)) = map(f.service, f.backend) {
                self.flows.insert(k, Flow { service, backend }, c, expires);
            }
        }
        for ((s, client), b, c, expires) in self.sticky.drain() {
            if let Some((service, backend)) = map(s, b) {
                self.sticky.insert((service, client), backend, c, expires);
            }
        }
        self.ip = spec.ip;
        self.name = spec.name;
    }

    /// Sets `node`'s health for the service on (`proto`, `port`), or for every service
    /// when `service` is `None`. A backend that goes down loses its flows and sticky
    /// clients. Returns whether anything changed.
    pub fn set_health(&mut self, service: Option<(Proto, u16)>, node: &str, health: Health) -> bool {
        let mut changed = false;
        for (si, s) in self.services.iter_mut().enumerate() {
            if service.is_some_and(|(p, port)| (p, port) != (s.spec.proto, s.spec.port)) {
                continue;
            }
            let Some(b) = s.spec.backends.iter().position(|n| n == node) else { continue };
            if s.health[b] == health {
                continue;
            }
            s.health[b] = health;
            s.rebuild();
            changed = true;
            if health == Health::Down {
                let (si, b) = (si as u16, b as u16);
                self.flows.retain(|_, f| (f.service, f.backend) != (si, b));
                self.sticky.retain(|&(s, _), &v| (s, v) != (si, b));
            }
        }
        changed
    }

    /// `node`'s health for the service on (`proto`, `port`), if it is a backend of it.
    pub fn health(&self, proto: Proto, port: u16, node: &str) -> Option<Health> {
        let s = self.services.iter().find(|s| (s.spec.proto, s.spec.port) == (proto, port))?;
        Some(s.health[s.spec.backends.iter().position(|n| n == node)?])
    }

    /// Decides what happens to `packet`, an IPv4 packet (no Ethernet header) that arrived
    /// at `now`.
    pub fn route(&mut self, packet: &[u8], now: Instant) -> Verdict<'_> {
        match self.route_indexed(packet, now) {
            Decision::NotOurs => Verdict::NotOurs,
            Decision::Forward(s, b) => {
                Verdict::Forward(self.services[usize::from(s)].spec.backends[usize::from(b)].as_str())
            }
            Decision::Reply(p) => Verdict::Reply(p),
            Decision::Drop(why) => Verdict::Drop(why),
        }
    }

    /// As [`Cluster::route`], naming the backend by its (service, backend) indices in the
    /// spec, for a caller that keeps its own table of where each backend is.
    pub fn route_indexed(&mut self, packet: &[u8], now: Instant) -> Decision {
        let v = self.decide(packet, now);
        match &v {
            Decision::Forward(..) => self.counters.forwarded += 1,
            Decision::Reply(_) => self.counters.echo_replies += 1,
            Decision::Drop(why) => {
                let i = ClusterDrop::ALL.iter().position(|d| d == why).expect("in ALL");
                self.counters.dropped[i] += 1;
            }
            Decision::NotOurs => {}
        }
        v
    }

    fn decide(&mut self, packet: &[u8], now: Instant) -> Decision {
        let Ok(ip) = Ipv4HeaderSlice::from_slice(packet) else { return Decision::Drop(ClusterDrop::Malformed) };
        if ip.destination_addr() != self.ip {
            return Decision::NotOurs;
        }
        let header_len = usize::from(ip.ihl()) * 4;
        let total = usize::from(ip.total_len());
        if total < header_len || total > packet.len() {
            return Decision::Drop(ClusterDrop::Malformed);
        }
        if ip.is_fragmenting_payload() {
            return Decision::Drop(ClusterDrop::Fragment);
        }
        let payload = &packet[header_len..total];
        let client = ip.source_addr();
        let (proto, client_port, port, flags) = match ip.protocol() {
            IpNumber::TCP => match TcpHeaderSlice::from_slice(payload) {
                Ok(t) => {
                    (Proto::Tcp, t.source_port(), t.destination_port(), Some((t.syn() && !t.ack(), t.fin(), t.rst())))
                }
                Err(_) => return Decision::Drop(ClusterDrop::Malformed),
            },
            IpNumber::UDP => match UdpHeaderSlice::from_slice(payload) {
                Ok(u) => (Proto::Udp, u.source_port(), u.destination_port(), None),
                Err(_) => return Decision::Drop(ClusterDrop::Malformed),
            },
            IpNumber::ICMP => return self.icmp(client, payload, now),
            _ => return Decision::Drop(ClusterDrop::Protocol),
        };
        let Some(si) = self.services.iter().position(|s| (s.spec.proto, s.spec.port) == (proto, port)) else {
            return Decision::Drop(ClusterDrop::Port);
        };
        let key = FlowKey { proto, client, client_port, port };
        let (syn, fin, rst) = flags.unwrap_or_default();
        // The class this packet puts its flow in, at least: a flow closes, it never reopens.
        let seen = match proto {
            Proto::Udp => class::UDP,
            Proto::Tcp if rst => class::TCP_RESET,
            Proto::Tcp if fin => class::TCP_CLOSING,
            Proto::Tcp => class::TCP_OPEN,
        };
        if let Some(h) = self.flows.get(&key, now) {
            let was = self.flows.class(h);
            // A SYN on a flow that was closing is a new connection reusing the port.
            if !(syn && matches!(was, class::TCP_CLOSING | class::TCP_RESET)) {
                let c = if proto == Proto::Tcp { was.max(seen) } else { seen };
                self.flows.refresh(h, c, now + self.lifetime(c));
                let f = *self.flows.value(h);
                return Decision::Forward(f.service, f.backend);
            }
        }
        let Some(backend) = self.pick(si, key, now) else { return Decision::Drop(ClusterDrop::NoBackend) };
        self.counters.new_flows += 1;
        let flow = Flow { service: si as u16, backend };
        self.flows.insert(key, flow, seen, now + self.lifetime(seen));
        Decision::Forward(si as u16, backend)
    }

    fn lifetime(&self, c: u8) -> Duration {
        match c {
            class::TCP_OPEN => self.limits.tcp_idle,
            class::TCP_CLOSING => self.limits.tcp_closing,
            class::TCP_RESET => self.limits.tcp_reset,
            _ => self.limits.udp_idle,
        }
    }

    /// A backend for a new flow of service `si`: the client's sticky backend if it is up,
    /// else the service's table.
    fn pick(&mut self, si: usize, key: FlowKey, now: Instant) -> Option<u16> {
        let s = &self.services[si];
        let sticky = s.spec.sticky;
        let skey = (si as u16, key.client);
        if let (Some(ttl), Some(h)) = (sticky, self.sticky.get(&skey, now)) {
            let b = *self.sticky.value(h);
            if s.health[usize::from(b)] == Health::Up {
                self.sticky.refresh(h, 0, now + ttl);
                return Some(b);
            }
        }
        let hash = match sticky {
            Some(_) => flow_hash(0x7374_6963_6b79, key.client),
            None => flow_hash(0x666c_6f77, key),
        };
        let backend = s.up[s.table.lookup(hash)?] as u16;
        if let Some(ttl) = sticky {
            self.sticky.insert(skey, backend, 0, now + ttl);
        }
        Some(backend)
    }

    /// ICMP to the cluster IP: echo is answered, errors about a flow go to its backend.
    fn icmp(&mut self, client: Ipv4Addr, payload: &[u8], now: Instant) -> Decision {
        let Ok(icmp) = Icmpv4Slice::from_slice(payload) else { return Decision::Drop(ClusterDrop::Malformed) };
        match icmp.icmp_type() {
            Icmpv4Type::EchoRequest(echo) => {
                let mut out = Vec::with_capacity(28 + icmp.payload().len());
                let reply =
                    PacketBuilder::ipv4(self.ip.octets(), client.octets(), 64).icmpv4_echo_reply(echo.id, echo.seq);
                match reply.write(&mut out, icmp.payload()) {
                    Ok(()) => Decision::Reply(out),
                    Err(_) => Decision::Drop(ClusterDrop::Malformed),
                }
            }
            Icmpv4Type::DestinationUnreachable(_) | Icmpv4Type::TimeExceeded(_) => {
                // The quoted packet is one a backend sent from the cluster IP to a client.
                let inner = icmp.payload();
                let Ok(q) = Ipv4HeaderSlice::from_slice(inner) else { return Decision::Drop(ClusterDrop::Malformed) };
                let ports = &inner[(usize::from(q.ihl()) * 4).min(inner.len())..];
                let proto = match q.protocol() {
                    IpNumber::TCP => Proto::Tcp,
                    IpNumber::UDP => Proto::Udp,
                    _ => return Decision::Drop(ClusterDrop::Protocol),
                };
                if q.source_addr() != self.ip || ports.len() < 4 {
                    return Decision::Drop(ClusterDrop::Protocol);
                }
                let key = FlowKey {
                    proto,
                    client: q.destination_addr(),
                    client_port: u16::from_be_bytes([ports[2], ports[3]]),
                    port: u16::from_be_bytes([ports[0], ports[1]]),
                };
                match self.flows.get(&key, now) {
                    Some(h) => {
                        let f = *self.flows.value(h);
                        Decision::Forward(f.service, f.backend)
                    }
                    None => Decision::Drop(ClusterDrop::Protocol),
                }
            }
            _ => Decision::Drop(ClusterDrop::Protocol),
        }
    }

    /// Frees expired entries, at most `budget` of each table; returns how many went.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        self.flows.expire(now, budget) + self.sticky.expire(now, budget)
    }

    /// Flows held.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Flows evicted to make room.
    pub fn evicted(&self) -> u64 {
        self.flows.evicted()
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }
}

/// What to do with a packet, with the backend named by its indices in the spec: the
/// service, and the backend within the service's `backends`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    NotOurs,
    Forward(u16, u16),
    Reply(Vec<u8>),
    Drop(ClusterDrop),
}

#[cfg(test)]
mod tests;
