//! The TCMU front-end: serving LIO `user:` backstores through the kernel's target_core_user
//! ABI, so LIO can export a pangate LUN over iSCSI, FC, loopback or vhost.
//!
//! A backstore's config string selects the LUN: `pangate/<pan>/<node>/<target>/<lun>`. The
//! handler connects to the gateway's ring server as that node, so TCMU commands meet the
//! same SCSI target, access checks and engines as the rings and FUSE, and the same LUN can
//! be served over all of them at once.
//!
//! - [`abi`]: the mailbox and entry layouts of `linux/target_core_user.h`.
//! - [`ring`]: reading command entries and writing responses, treating the mapping as
//!   untrusted.
//! - [`device`]: a thread per device between the ring and the gateway.
//! - [`netlink`]: the TCM-USER family's messages; [`sys`]: uio devices and the socket.
//! - [`dbus`]: the handler registration targetcli looks for on the system bus.

pub mod abi;
pub mod dbus;
pub mod device;
pub mod netlink;
pub mod ring;
#[allow(unsafe_code)]
pub mod sys;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use self::device::DeviceHandle;
use self::netlink::{DeviceEvent, Incoming};
use self::sys::{KernelUio, TcmuSocket, UioSource};
use crate::registry::{Images, Registry};
use crate::ring::initiator::ConnectOptions;
use crate::ring::link::{Command, Link, LinkOptions};
use scsi::build;

/// The LUN a backstore's config string selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// PAN.
    pub pan: String,
    /// Node whose map is used.
    pub node: String,
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
}

/// Reads `tcm-user/<hba>/<device>/pangate/<pan>/<node>/<target>/<lun>` (a uio name) or the
/// config string alone (`pangate/<pan>/<node>/<target>/<lun>`).
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    let cfg = match s.strip_prefix("tcm-user/") {
        Some(rest) => rest.splitn(3, '/').nth(2).ok_or_else(|| format!("{s:?} is not a tcm-user uio name"))?,
        None => s,
    };
    let parts: Vec<&str> = cfg.split('/').collect();
    match parts.as_slice() {
        ["pangate", pan, node, target, lun] if !pan.is_empty() && !node.is_empty() => Ok(Selector {
            pan: pan.to_string(),
            node: node.to_string(),
            target: target.parse().map_err(|_| format!("target {target:?} is not a number"))?,
            lun: lun.parse().map_err(|_| format!("LUN {lun:?} is not a number"))?,
        }),
        _ => Err(format!("config {cfg:?} is not pangate/<pan>/<node>/<target>/<lun>")),
    }
}

/// A node the handler may act as.
#[derive(Debug, Clone)]
pub struct NodeCredential {
    /// PAN.
    pub pan: String,
    /// Node.
    pub node: String,
    /// Its credential.
    pub credential: String,
    /// Its (target, LUN) map.
    pub luns: Vec<(u16, u16)>,
}

/// The nodes the handler may act as, read at each use so that nodes and maps the admin
/// changes at run time are served at once.
pub type NodeDirectory = Arc<dyn Fn() -> Vec<NodeCredential> + Send + Sync>;

/// A directory that never changes.
pub fn fixed_nodes(nodes: Vec<NodeCredential>) -> NodeDirectory {
    Arc::new(move || nodes.clone())
}

/// The node registry as a directory.
pub fn live_nodes(registry: Registry) -> NodeDirectory {
    Arc::new(move || {
        registry
            .nodes()
            .into_iter()
            .map(|n| NodeCredential {
                luns: n.luns.iter().map(|&(t, l, _, _)| (t, l)).collect(),
                pan: n.pan,
                node: n.node,
                credential: n.credential,
            })
            .collect()
    })
}

/// Grows LUNs through the ring server, finding the image in the node registry.
pub fn live_grow(registry: Registry, images: Arc<dyn Images>) -> GrowLun {
    Arc::new(move |sel: &Selector, bytes: u64| {
        let image = registry
            .find(&sel.pan, &sel.node)
            .and_then(|n| n.luns.iter().find(|&&(t, l, _, _)| (t, l) == (sel.target, sel.lun)).map(|l| l.2))
            .ok_or_else(|| {
                format!("node {:?} of PAN {:?} maps no target {} LUN {}", sel.node, sel.pan, sel.target, sel.lun)
            })?;
        images.grow(image, bytes).map_err(|e| e.to_string())
    })
}

/// Whether a config string selects a LUN in one of these nodes' maps; the error says why
/// not (targetcli shows it before creating anything).
pub fn check_config(nodes: &[NodeCredential], config: &str) -> Result<Selector, String> {
    let sel = parse_selector(config)?;
    let node = nodes
        .iter()
        .find(|n| n.pan == sel.pan && n.node == sel.node)
        .ok_or_else(|| format!("no node {:?} in PAN {:?}", sel.node, sel.pan))?;
    if !node.luns.contains(&(sel.target, sel.lun)) {
        return Err(format!("node {:?} maps no target {} LUN {}", sel.node, sel.target, sel.lun));
    }
    Ok(sel)
}

/// Grows the LUN a selector names to a number of bytes (the gateway's [`Images`] behind a
/// lookup of the node's map); the error says why not.
pub type GrowLun = Arc<dyn Fn(&Selector, u64) -> Result<(), String> + Send + Sync>;

/// A device being served.
#[derive(Debug)]
struct Served {
    selector: Selector,
    handle: DeviceHandle,
    link: Arc<Link>,
}

/// Turns device events into served devices and statuses for the kernel.
pub struct Controller<S: UioSource> {
    source: S,
    socket: PathBuf,
    /// The other redundant gateways' sockets, for the LUNs they serve.
    alternates: Vec<PathBuf>,
    nodes: NodeDirectory,
    io_timeout: Duration,
    devices: HashMap<u32, Served>,
    grow: Option<GrowLun>,
}

impl<S: UioSource> std::fmt::Debug for Controller<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("socket", &self.socket)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl<S: UioSource> Controller<S> {
    /// A controller that connects to the ring server at `socket` as the given nodes.
    pub fn new(source: S, socket: PathBuf, nodes: NodeDirectory) -> Controller<S> {
        Controller {
            source,
            socket,
            alternates: Vec::new(),
            nodes,
            io_timeout: Duration::from_secs(30),
            devices: HashMap::new(),
            grow: None,
        }
    }

    /// Reaches the LUNs other redundant gateways serve through their `sockets` too.
    pub fn with_alternates(mut self, sockets: Vec<PathBuf>) -> Controller<S> {
        self.alternates = sockets;
        self
    }

    /// Lets RECONFIG_DEVICE grow LUNs through `grow` (without it, a size other than the
    /// LUN's is refused).
    pub fn with_grow(mut self, grow: GrowLun) -> Controller<S> {
        self.grow = Some(grow);
        self
    }

    /// Serves the TCMU devices that exist already.
    pub fn adopt_existing(&mut self) {
        for (minor, name) in self.source.existing() {
            if let Err(e) = self.add(&name, minor) {
                tracing::warn!(device = %name, errno = -e, "cannot serve existing TCMU device");
            }
        }
    }

    /// Devices being served, as (minor, selector).
    pub fn served(&self) -> Vec<(u32, Selector)> {
        let mut v: Vec<_> = self.devices.iter().map(|(m, s)| (*m, s.selector.clone())).collect();
        v.sort_by_key(|(m, _)| *m);
        v
    }

    /// Whether the device at `minor` is still being served (its ring has not broken).
    pub fn running(&self, minor: u32) -> bool {
        self.devices.get(&minor).is_some_and(|s| !s.handle.finished())
    }

    /// The counters of the device at `minor`.
    pub fn stats(&self, minor: u32) -> Option<Arc<device::DeviceStats>> {
        self.devices.get(&minor).map(|s| s.handle.stats.clone())
    }

    /// Handles one event; returns the status for the kernel (0 or a negative errno).
    pub fn on_event(&mut self, ev: &DeviceEvent) -> i32 {
        let result = match ev {
            DeviceEvent::Added { name, minor, .. } => self.add(name, *minor),
            DeviceEvent::Removed { name, minor, .. } => {
                match self.devices.remove(minor) {
                    Some(s) => {
                        let _ = s.handle.stop();
                        s.link.close();
                        tracing::info!(device = %name, "TCMU device removed");
                    }
                    None => tracing::info!(device = %name, "removal of a TCMU device we did not serve"),
                }
                Ok(())
            }
            DeviceEvent::Reconfig { name, minor, config, size, write_cache, .. } => {
                self.reconfig(name, *minor, config.as_deref(), *size, *write_cache)
            }
        };
        result.err().unwrap_or(0)
    }

    fn add(&mut self, name: &str, minor: u32) -> Result<(), i32> {
        if self.devices.contains_key(&minor) {
            return Ok(());
        }
        let sel = parse_selector(name).map_err(|e| {
            tracing::warn!(device = %name, error = %e, "not a pangate TCMU device");
            -libc::EINVAL
        })?;
        let Some(cred) = (self.nodes)().into_iter().find(|n| n.pan == sel.pan && n.node == sel.node) else {
            tracing::warn!(device = %name, pan = %sel.pan, node = %sel.node, "no such node in the configuration");
            return Err(-libc::ENOENT);
        };
        let link = Link::connect(LinkOptions {
            socket: self.socket.clone(),
            alternates: self.alternates.clone(),
            connect: ConnectOptions {
                pan: sel.pan.clone(),
                node: sel.node.clone(),
                credential: cred.credential,
                slots: 256,
                data_bytes: 64 << 20,
                client: None,
            },
            queues: 1,
            io_timeout: self.io_timeout,
            // LIO's initiators see unit attentions and BUSY themselves.
            retry: false,
            // The ring server is this process: it does not restart under the device, and
            // LIO's initiators run their own recovery.
            reconnect_timeout: Duration::ZERO,
        })
        .map_err(|e| {
            tracing::warn!(device = %name, error = %e, "cannot reach the gateway for a TCMU device");
            -libc::EIO
        })?;
        if !link.luns().iter().any(|l| (l.target, l.lun) == (sel.target, sel.lun)) {
            tracing::warn!(device = %name, target = sel.target, lun = sel.lun, "the node does not map this LUN");
            return Err(-libc::ENOENT);
        }
        let uio = self.source.open(minor).map_err(|e| {
            tracing::warn!(device = %name, error = %e, "cannot open the uio device");
            -e.raw_os_error().unwrap_or(libc::EIO)
        })?;
        let link = Arc::new(link);
        let handle = device::start(uio.name, uio.map, uio.bell, link.clone(), sel.target, sel.lun).map_err(|e| {
            tracing::warn!(device = %name, error = %e, "cannot serve the TCMU device");
            -libc::EINVAL
        })?;
        tracing::info!(device = %name, minor, "TCMU device added");
        self.devices.insert(minor, Served { selector: sel, handle, link });
        Ok(())
    }

    fn reconfig(
        &mut self,
        name: &str,
        minor: u32,
        config: Option<&str>,
        size: Option<u64>,
        write_cache: Option<bool>,
    ) -> Result<(), i32> {
        let served = self.devices.get(&minor).ok_or(-libc::ENODEV)?;
        let (t, l) = (served.selector.target, served.selector.lun);
        if let Some(c) = config {
            if parse_selector(c).as_ref() != Ok(&served.selector) {
                tracing::warn!(device = %name, config = c, "a TCMU device cannot be moved to another LUN");
                return Err(-libc::EINVAL);
            }
        }
        let q = served.link.queue();
        if let Some(bytes) = size {
            let o = q.execute(Command {
                target: t,
                lun: l,
                cdb: &build::read_capacity_16(),
                out: &[],
                in_len: build::READ_CAPACITY_16_LEN,
            });
            let capacity = match (&o.result, build::parse_capacity_16(&o.data)) {
                (Ok(r), Some((blocks, bs))) if r.good() => blocks * u64::from(bs),
                _ => return Err(-libc::EIO),
            };
            if capacity != bytes {
                let Some(grow) = &self.grow else {
                    tracing::warn!(device = %name, asked = bytes, capacity, "this gateway cannot resize LUNs");
                    return Err(-libc::EOPNOTSUPP);
                };
                grow(&served.selector, bytes).map_err(|e| {
                    tracing::warn!(device = %name, asked = bytes, capacity, error = %e, "cannot resize the LUN");
                    -libc::EINVAL
                })?;
                tracing::info!(device = %name, from = capacity, to = bytes, "LUN resized");
            }
        }
        if let Some(on) = write_cache {
            // Read the current caching page, flip WCE, and MODE SELECT it back.
            let sense = [0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0];
            let o = q.execute(Command { target: t, lun: l, cdb: &sense, out: &[], in_len: 255 });
            let page = match &o.result {
                Ok(r) if r.good() && o.data.len() >= 8 + 3 => {
                    let bd = u16::from_be_bytes([o.data[6], o.data[7]]) as usize;
                    let at = 8 + bd;
                    let len = o.data.get(at + 1).map_or(0, |n| usize::from(*n) + 2);
                    o.data.get(at..at + len).map(<[u8]>::to_vec)
                }
                _ => None,
            };
            let Some(mut page) = page else { return Err(-libc::EIO) };
            page[0] &= 0x3F; // PS is reserved in MODE SELECT
            page[2] = if on { page[2] | 0x04 } else { page[2] & !0x04 };
            let mut list = vec![0u8; 8];
            list.extend_from_slice(&page);
            let len = list.len() as u16;
            let select = [0x55, 0x10, 0, 0, 0, 0, 0, (len >> 8) as u8, len as u8, 0];
            let o = q.execute(Command { target: t, lun: l, cdb: &select, out: &list, in_len: 0 });
            match o.result {
                Ok(r) if r.good() => tracing::info!(device = %name, write_cache = on, "write cache changed"),
                _ => return Err(-libc::EIO),
            }
        }
        Ok(())
    }
}

/// The running TCMU front-end.
#[derive(Debug)]
pub struct TcmuService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dbus: Option<dbus::Registration>,
}

impl TcmuService {
    /// Starts serving TCMU devices, or logs one line and returns `None` when the kernel
    /// has no target_core_user.
    /// `alternates`: the other redundant gateways' sockets.
    pub fn start(
        socket: PathBuf,
        alternates: Vec<PathBuf>,
        nodes: NodeDirectory,
        grow: GrowLun,
    ) -> Option<TcmuService> {
        let nl = match TcmuSocket::open() {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::info!(
                    "TCMU: the kernel has no target_core_user (modprobe target_core_user); LIO user: backstores are not served"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCMU: cannot open the TCM-USER netlink family; LIO user: backstores are not served");
                return None;
            }
        };
        let known = nodes.clone();
        let check: dbus::ConfigCheck = Arc::new(move |c: &str| check_config(&known(), c).map(drop));
        let registration = match dbus::register(None, check) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "TCMU: cannot register {} on the system bus, so targetcli will not list user:pangate (configfs still works)",
                    dbus::SERVICE
                );
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pangate-tcmu".into())
            .spawn(move || {
                serve(nl, Controller::new(KernelUio, socket, nodes).with_grow(grow).with_alternates(alternates), &flag)
            })
            .ok()?;
        Some(TcmuService { stop, thread: Some(thread), _dbus: registration })
    }

    /// Stops serving every device.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut nl: TcmuSocket, mut ctl: Controller<KernelUio>, stop: &AtomicBool) {
    if let Err(e) = nl.send(netlink::set_features()) {
        tracing::warn!(error = %e, "TCMU: cannot ask the kernel to wait for device replies");
    }
    ctl.adopt_existing();
    while !stop.load(Ordering::Acquire) {
        let incoming = match nl.recv(Duration::from_millis(200)) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "TCMU: bad netlink message");
                continue;
            }
        };
        for m in incoming {
            let Incoming::Message(m) = m else { continue };
            let Some(ev) = DeviceEvent::from_message(&m) else { continue };
            let status = ctl.on_event(&ev);
            if let Err(e) = nl.send(ev.reply(status)) {
                tracing::warn!(error = %e, "TCMU: cannot answer the kernel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_from_uio_names_and_config_strings() {
        let want = Selector { pan: "p".into(), node: "n".into(), target: 0, lun: 3 };
        assert_eq!(parse_selector("tcm-user/1/disk0/pangate/p/n/0/3"), Ok(want.clone()));
        assert_eq!(parse_selector("pangate/p/n/0/3"), Ok(want));
        for bad in ["tcm-user/1/disk0/file//tmp/x", "pangate/p/n/0", "pangate/p/n/x/0", "pangate//n/0/0", "tcm-user/1"]
        {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
    }
}
