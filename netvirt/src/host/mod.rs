//! The host side of ports: named network namespaces (as `ip netns` keeps them), TAP
//! devices created inside them, and link and address configuration over rtnetlink.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::mac::Mac;
use crate::sys;

mod flows;
mod yard;

pub use self::flows::Flows;
pub use self::yard::{WireStats, Wires, Yard};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    created: bool,
}

impl NetNs {
    /// Opens the namespace `name`, creating it (as `ip netns add` would) if it does not
    /// exist. A namespace created here is removed by [`NetNs::remove`].
    pub fn ensure(name: &str) -> io::Result<NetNs> {
        if name.is_empty() || name.len() > 64 || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a namespace name")));
        }
        let path = Path::new(NETNS_DIR).join(name);
        if is_netns(&path) {
            return Ok(NetNs { name: name.into(), path, created: false });
        }
        std::fs::create_dir_all(NETNS_DIR)?;
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let bind = path.clone();
        let made = std::thread::spawn(move || -> io::Result<()> {
            // This short-lived thread shares no namespace-dependent state with the process.
            crate::sys::unshare_net()?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &bind)?;
            Ok(())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let ns = NetNs { name: name.into(), path, created: true };
        ns.run(|| {
            let mut nl = Rtnl::open()?;
            let lo = sys::if_index("lo")?;
            nl.link_set(lo, None, None, true)
        })?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether pangate created it (and so removes it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets and devices `f`
    /// creates belong to the namespace and stay usable from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        run_at(&self.path, f)
    }

    /// Removes the namespace if pangate created it. Its devices go with it.
    pub fn remove(self) -> io::Result<()> {
        if !self.created {
            return Ok(());
        }
        rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH)?;
        std::fs::remove_file(&self.path)
    }
}

/// Runs `f` on a thread in the named namespace `name` (as [`NetNs::run`]), for callers
/// that hold no [`NetNs`].
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a namespace name")));
    }
    run_at(&Path::new(NETNS_DIR).join(name), f)
}

fn run_at<T: Send>(path: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = std::fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

fn is_netns(path: &Path) -> bool {
    // A bind-mounted nsfs file; an empty regular file left by a crash is not one.
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as u64 == 0x6e73_6673)
}

/// What a TAP port looks like from inside its namespace.
#[derive(Debug, Clone)]
pub struct TapSpec {
    /// Interface name.
    pub ifname: String,
    /// Assigned MAC.
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
    /// Addresses with prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// Addresses of service clusters the node serves: added as /32, and the interface set
    /// (`arp_announce` = 2) never to send ARP from them, so the cluster's ARP stays the
    /// LAN server's.
    pub cluster_ips: Vec<std::net::Ipv4Addr>,
}

/// Creates the TAP with `queues` queues in `ns` (or the gateway's own namespace), sets its
/// MAC and MTU, adds its addresses and brings it up. Returns one fd per queue.
pub fn create_tap(ns: Option<&NetNs>, spec: &TapSpec, queues: usize) -> io::Result<Vec<OwnedFd>> {
    let make = || -> io::Result<Vec<OwnedFd>> {
        let fd = sys::create_tap(&spec.ifname, queues)?;
        configure(spec)?;
        Ok(fd)
    };
    match ns {
        Some(ns) => ns.run(make),
        None => make(),
    }
}

/// Gives interface `spec.ifname` in the calling thread's namespace its MAC, MTU and
/// addresses, and brings it up.
fn configure(spec: &TapSpec) -> io::Result<()> {
    let index = sys::if_index(&spec.ifname)?;
    let mut nl = Rtnl::open()?;
    nl.link_set(index, Some(spec.mac), Some(spec.mtu), true)?;
    for &(ip, prefix) in &spec.addrs {
        nl.addr_add(index, ip, prefix)?;
    }
    if !spec.cluster_ips.is_empty() {
        arp_announce_best(&spec.ifname)?;
    }
    for &ip in &spec.cluster_ips {
        nl.addr_add(index, IpAddr::V4(ip), 32)?;
    }
    Ok(())
}

/// Sets `arp_announce` = 2 on `ifname` in the calling thread's namespace (sysctls under
/// /proc/sys/net are per namespace): ARP requests then come from the interface's own
/// subnet address, never from a cluster address it also holds.
fn arp_announce_best(ifname: &str) -> io::Result<()> {
    let sysctl = format!("/proc/sys/net/ipv4/conf/{ifname}/arp_announce");
    std::fs::write(&sysctl, "2").map_err(|e| io::Error::new(e.kind(), format!("{sysctl}: {e}")))
}

/// A synchronous rtnetlink socket in the namespace of the thread that opened it.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a route netlink socket.
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` (besides `NLM_F_REQUEST`) under the next sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(())
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(msg, NLM_F_ACK | flags)?;
        loop {
            let mut rx = Vec::with_capacity(8192);
            self.sock.recv(&mut rx, 0)?;
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx).map_err(io::Error::other)?;
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::Error(e) => match e.code {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                },
                _ => Ok(()),
            };
        }
    }

    /// Sends one request and gathers its answers: every part of a dump (`dump`), or the
    /// one reply of a get.
    fn dump(&mut self, msg: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.send(msg, if dump { NLM_F_DUMP } else { 0 })?;
        let mut out = Vec::new();
        loop {
            let mut rx = Vec::with_capacity(64 * 1024);
            self.sock.recv(&mut rx, 0)?;
            let mut at = 0;
            while at < rx.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..]).map_err(io::Error::other)?;
                let len = reply.header.length as usize;
                at += len.max(16).next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }

    /// Sets a link's MAC and MTU (when given) and its up/down state.
    pub fn link_set(&mut self, index: u32, mac: Option<Mac>, mtu: Option<u32>, up: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Adds an address to a link.
    pub fn addr_add(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        self.request(RouteNetlinkMessage::NewAddress(address(index, ip, prefix)), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Removes an address from a link.
    pub fn addr_del(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        self.request(RouteNetlinkMessage::DelAddress(address(index, ip, prefix)), 0)
    }
}

/// The address message naming `ip/prefix` on link `index`.
fn address(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip));
    m.attributes.push(AddressAttribute::Address(ip));
    m
}

/// Adds (`add`) or removes an address on the TAP `ifname` in namespace `ns`.
pub fn tap_addr(ns: Option<&NetNs>, ifname: &str, ip: IpAddr, prefix: u8, add: bool) -> io::Result<()> {
    tap_change(ns, ifname, ip, prefix, add, false)
}

/// Adds or removes a service cluster's address on a backend's TAP, as [`create_tap`] adds
/// it: /32, with the interface told never to send ARP from it.
pub fn tap_cluster_ip(ns: Option<&NetNs>, ifname: &str, ip: std::net::Ipv4Addr, add: bool) -> io::Result<()> {
    tap_change(ns, ifname, IpAddr::V4(ip), 32, add, add)
}

fn tap_change(ns: Option<&NetNs>, ifname: &str, ip: IpAddr, prefix: u8, add: bool, quiet: bool) -> io::Result<()> {
    let change = || -> io::Result<()> {
        let index = sys::if_index(ifname)?;
        let mut nl = Rtnl::open()?;
        if quiet {
            arp_announce_best(ifname)?;
        }
        if add {
            nl.addr_add(index, ip, prefix)
        } else {
            nl.addr_del(index, ip, prefix)
        }
    };
    match ns {
        Some(ns) => ns.run(change),
        None => change(),
    }
}
