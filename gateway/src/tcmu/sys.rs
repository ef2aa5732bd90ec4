//! What the TCMU handler takes from the system: uio devices (sysfs, `/dev/uioN`, their
//! mappings) and the TCM-USER generic netlink socket.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::{GenlCtrlAttrs, McastGrpAttrs};
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::device::KernelBell;
use super::netlink::{self, Incoming, TcmuMessage};
use crate::ring::shm::SharedMemory;

/// A uio device's name, mapping and fd.
#[derive(Debug)]
pub struct UioDevice {
    /// `tcm-user/<hba>/<device>/<config>`.
    pub name: String,
    /// The whole region: mailbox, command ring, data area.
    pub map: Arc<SharedMemory>,
    /// The device fd, for waiting and notifying.
    pub bell: KernelBell,
}

/// Where uio devices come from: the real `/dev/uioN`, or a model in tests.
pub trait UioSource: Send {
    /// Opens and maps uio device `minor`.
    fn open(&self, minor: u32) -> io::Result<UioDevice>;
    /// The TCMU devices that exist now, as (minor, name).
    fn existing(&self) -> Vec<(u32, String)>;
}

/// The kernel's uio devices.
#[derive(Debug, Default)]
pub struct KernelUio;

fn sysfs(minor: u32, leaf: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/sys/class/uio/uio{minor}/{leaf}"))?.trim().to_string())
}

impl UioSource for KernelUio {
    fn open(&self, minor: u32) -> io::Result<UioDevice> {
        let name = sysfs(minor, "name")?;
        let size = sysfs(minor, "maps/map0/size")?;
        let size = usize::from_str_radix(size.trim_start_matches("0x"), 16)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("map0 size {size:?}: {e}")))?;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(format!("/dev/uio{minor}"))?;
        let fd = OwnedFd::from(file);
        let map = SharedMemory::map_device(fd.try_clone()?, size).map_err(io::Error::other)?;
        Ok(UioDevice { name, map: Arc::new(map), bell: KernelBell::uio(fd) })
    }

    fn existing(&self) -> Vec<(u32, String)> {
        let Ok(dir) = std::fs::read_dir("/sys/class/uio") else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("uio")?.parse::<u32>().ok())
            .filter_map(|minor| Some((minor, sysfs(minor, "name").ok()?)))
            .filter(|(_, name)| name.starts_with("tcm-user/"))
            .collect()
    }
}

/// A generic netlink socket joined to TCM-USER's `config` group.
#[derive(Debug)]
pub struct TcmuSocket {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl TcmuSocket {
    /// Resolves the family and its group and joins it; `Ok(None)` when the kernel has no
    /// TCM-USER family (target_core_user is not loaded).
    pub fn open() -> io::Result<Option<TcmuSocket>> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let mut genl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(netlink::FAMILY.into())],
        });
        genl.finalize();
        let mut nl = NetlinkMessage::from(genl);
        nl.header.flags = NLM_F_REQUEST;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        sock.send(&buf, 0)?;
        let mut rx = Vec::with_capacity(16 << 10);
        sock.recv(&mut rx, 0)?;
        let msg = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&rx).map_err(io::Error::other)?;
        let attrs = match msg.payload {
            NetlinkPayload::InnerMessage(g) => g.payload.nlas,
            // ENOENT: no such family.
            NetlinkPayload::Error(_) => return Ok(None),
            other => return Err(io::Error::other(format!("unexpected answer {other:?}"))),
        };
        let family = attrs.iter().find_map(|a| if let GenlCtrlAttrs::FamilyId(id) = a { Some(*id) } else { None });
        let group = attrs.iter().find_map(|a| match a {
            GenlCtrlAttrs::McastGroups(groups) => groups.iter().find_map(|g| {
                let named = g.iter().any(|x| matches!(x, McastGrpAttrs::Name(n) if n == netlink::GROUP));
                named.then(|| g.iter().find_map(|x| if let McastGrpAttrs::Id(id) = x { Some(*id) } else { None }))?
            }),
            _ => None,
        });
        let (Some(family), Some(group)) = (family, group) else {
            return Err(io::Error::other("TCM-USER family without a config group"));
        };
        sock.add_membership(group)?;
        Ok(Some(TcmuSocket { sock, family, seq: 1 }))
    }

    /// Sends a message to the kernel.
    pub fn send(&mut self, m: TcmuMessage) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        self.sock.send(&netlink::encode(m, self.family, self.seq), 0)?;
        Ok(())
    }

    /// Waits up to `timeout` for a datagram and parses it.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Vec<Incoming>> {
        use rustix::event::{poll, PollFd, PollFlags};
        let fd = self.sock.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = crate::ring::shm::poll_timeout(timeout);
        if poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            return Ok(Vec::new());
        }
        let mut rx = Vec::with_capacity(16 << 10);
        self.sock.recv(&mut rx, 0)?;
        netlink::decode(&rx).map_err(io::Error::other)
    }
}
