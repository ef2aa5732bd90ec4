//! The few raw kernel interfaces netvirt needs that no maintained crate wraps: the TUN/TAP
//! ioctls and packet-socket options. Every `unsafe` block here says why it is sound.

pub mod bpf;
pub mod ring;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a TAP device named `name` in the calling thread's network namespace with
/// `queues` queues (more than one: `IFF_MULTI_QUEUE`, the kernel spreading flows over
/// them), a virtio-net header on every frame and checksum and TCP segmentation offload
/// toward userspace, so the stack hands over 64 KiB segments with partial checksums.
/// Returns one non-blocking fd per queue; closing them all deletes the device.
pub fn create_tap(name: &str, queues: usize) -> io::Result<Vec<OwnedFd>> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a valid interface name")));
    }
    let multi = if queues > 1 { IFF_MULTI_QUEUE } else { 0 };
    (0..queues.max(1)).map(|_| tap_queue(name, multi)).collect()
}

/// Opens one queue of TAP `name` (creating the device with the first).
fn tap_queue(name: &str, multi: libc::c_short) -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string; open has no other preconditions.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | multi;
    let mut req = IfReqFlags { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReqFlags` lays out
    // (name, then the flags member of the union, padded to the union's size).
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The index of interface `name` in the calling thread's namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}")))
    } else {
        Ok(i)
    }
}

/// `PACKET_VNET_HDR`.
const PACKET_VNET_HDR: libc::c_int = 15;
/// `PACKET_IGNORE_OUTGOING`.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// A packet socket bound to interface `ifindex` that sees every frame on it (promiscuous
/// when asked), reports stripped 802.1Q tags in `PACKET_AUXDATA`, carries a virtio-net
/// header on each frame, and ignores its own transmissions. Non-blocking.
pub fn packet_socket(ifindex: u32, promiscuous: bool) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let raw = unsafe {
        libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, i32::from(proto))
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let on: libc::c_int = 1;
    for opt in [PACKET_VNET_HDR, libc::PACKET_AUXDATA, PACKET_IGNORE_OUTGOING] {
        setsockopt(fd.as_fd(), libc::SOL_PACKET, opt, &on)?;
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length says so.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if promiscuous {
        // SAFETY: all-zero is a valid packet_mreq.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = ifindex as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)?;
    }
    Ok(fd)
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The 802.1Q tag the kernel stripped from a received frame, from its `PACKET_AUXDATA`
/// control message: `Some(vlan id)` if the tag was valid.
pub fn aux_vlan(control: &[u8]) -> Option<u16> {
    const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
    let hdr_len = std::mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + hdr_len <= control.len() {
        // SAFETY: the bytes at `at` hold a cmsghdr (checked in bounds); read unaligned.
        let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
        let len = h.cmsg_len;
        if len < hdr_len || at + len > control.len() {
            return None;
        }
        if h.cmsg_level == libc::SOL_PACKET && h.cmsg_type == libc::PACKET_AUXDATA {
            let data = &control[at + hdr_len..at + len];
            if data.len() >= std::mem::size_of::<libc::tpacket_auxdata>() {
                // SAFETY: `data` holds a tpacket_auxdata (length checked); read unaligned.
                let aux: libc::tpacket_auxdata = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    return Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            return None;
        }
        at += (len + 7) & !7;
    }
    None
}

/// The MAC of interface `name` in the calling thread's namespace (`SIOCGIFHWADDR`; /sys
/// may show another namespace's devices).
pub fn if_mac(name: &str) -> io::Result<[u8; 6]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes ifr_hwaddr of a `struct ifreq`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// Moves the calling thread into a new network namespace of its own.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unsharing only the network namespace of the calling thread; callers use a
    // short-lived thread that shares no namespace-dependent state with the rest of the
    // process.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
    Ok(())
}
