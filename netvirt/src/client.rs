//! The netvirt client library: a process attaches to its node's ring port on a LAN and
//! sends and receives Ethernet frames through shared memory, with no system call per
//! frame while the gateway is busy.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use shmem::{Doorbell, SharedMemory};

use crate::mac::Mac;
use crate::network::{Reply, Request};
use crate::ringport::{self, field, HDR, SLOT_HDR};

/// An attached ring port.
#[derive(Debug)]
pub struct RingClient {
    region: SharedMemory,
    bcast: SharedMemory,
    to_gateway: Doorbell,
    to_node: Doorbell,
    sock: UnixStream,
    slots: u32,
    slot_size: usize,
    tx_head: u32,
    tx_published: u32,
    rx_tail: u32,
    rx_published: u32,
    bc_tail: u32,
    lost: u64,
    mac: Mac,
    mtu: u32,
    ips: Vec<String>,
}

impl RingClient {
    /// Attaches to `node`'s port on `lan` through the gateway's netvirt socket.
    pub fn connect(socket: &Path, pan: &str, node: &str, lan: &str, credential: &str) -> io::Result<RingClient> {
        let sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let req =
            Request::Attach { pan: pan.into(), node: node.into(), lan: lan.into(), credential: credential.into() };
        shmem::msg::send(&sock, &req, &[])?;
        let (reply, fds): (Reply, _) = shmem::msg::recv(&sock)?;
        let (mac, mtu, slots, slot_size, ips) = match reply {
            Reply::Attached { mac, mtu, slots, slot_size, ips } => (mac, mtu, slots, slot_size as usize, ips),
            Reply::Refused { reason } => return Err(io::Error::new(io::ErrorKind::PermissionDenied, reason)),
            Reply::Show(_) => return Err(io::Error::other("unexpected answer")),
        };
        let [region, bcast, to_gateway, to_node]: [_; 4] =
            fds.try_into().map_err(|_| io::Error::other("expected four fds with the answer"))?;
        if !slots.is_power_of_two() || slot_size != ringport::slot_size(mtu as usize) {
            return Err(io::Error::other("gateway sent an inconsistent ring geometry"));
        }
        let region =
            SharedMemory::open(region, ringport::port_region_len(slots, slot_size)).map_err(io::Error::other)?;
        let bcast =
            SharedMemory::open(bcast, ringport::bcast_region_len(slots, slot_size)).map_err(io::Error::other)?;
        let bc_tail = bcast.load_acquire(field::BC_HEAD).map_err(io::Error::other)?;
        // The socket carries nothing more; it stays open to hold the port, and the
        // gateway's closing it means the port is gone.
        sock.set_read_timeout(None)?;
        Ok(RingClient {
            region,
            bcast,
            to_gateway: Doorbell::from_fd(to_gateway),
            to_node: Doorbell::from_fd(to_node),
            sock,
            slots,
            slot_size,
            tx_head: 0,
            tx_published: 0,
            rx_tail: 0,
            rx_published: 0,
            bc_tail,
            lost: 0,
            mac,
            mtu,
            ips,
        })
    }

    /// The port's MAC.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// The LAN's MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The port's registered addresses (`ip/prefix`).
    pub fn ips(&self) -> &[String] {
        &self.ips
    }

    /// Broadcast frames missed because the gateway lapped this reader.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Queues a frame. Returns `Ok(false)` if the TX ring is full. Frames become visible to
    /// the gateway at the next [`RingClient::flush`].
    pub fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        if frame.len() > self.slot_size - SLOT_HDR || frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {}-byte frame does not fit the LAN", frame.len()),
            ));
        }
        let tail = self.region.load_acquire(field::TX_TAIL).map_err(io::Error::other)?;
        if self.tx_head.wrapping_sub(tail) >= self.slots {
            self.flush();
            return Ok(false);
        }
        let at = (HDR + (self.tx_head % self.slots) as usize * self.slot_size) as u64;
        self.region.write(at, &(frame.len() as u32).to_le_bytes()).map_err(io::Error::other)?;
        self.region.write(at + SLOT_HDR as u64, frame).map_err(io::Error::other)?;
        self.tx_head = self.tx_head.wrapping_add(1);
        Ok(true)
    }

    /// Publishes queued frames and the RX cursor, ringing the gateway if it sleeps.
    pub fn flush(&mut self) {
        if self.rx_tail != self.rx_published {
            let _ = self.region.store_release(field::RX_TAIL, self.rx_tail);
            self.rx_published = self.rx_tail;
        }
        if self.tx_head != self.tx_published {
            let _ = self.region.store_release(field::TX_HEAD, self.tx_head);
            self.tx_published = self.tx_head;
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if self.region.load_acquire(field::GW_SLEEP).is_ok_and(|s| s != 0) {
                let _ = self.to_gateway.ring();
            }
        }
    }

    /// Copies the next received frame into `out` (unicast first, then broadcast).
    /// Returns its length, or `None` if nothing is waiting.
    pub fn recv(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        let head = self.region.load_acquire(field::RX_HEAD).map_err(io::Error::other)?;
        if head != self.rx_tail {
            let at = (HDR + (self.slots + self.rx_tail % self.slots) as usize * self.slot_size) as u64;
            let mut len = [0u8; 4];
            self.region.read(at, &mut len).map_err(io::Error::other)?;
            let len = (u32::from_le_bytes(len) as usize).min(self.slot_size - SLOT_HDR).min(out.len());
            self.region.read(at + SLOT_HDR as u64, &mut out[..len]).map_err(io::Error::other)?;
            self.rx_tail = self.rx_tail.wrapping_add(1);
            if self.rx_tail.wrapping_sub(self.rx_published) >= self.slots / 4 {
                self.flush();
            }
            return Ok(Some(len));
        }
        loop {
            let bc_head = self.bcast.load_acquire(field::BC_HEAD).map_err(io::Error::other)?;
            if bc_head == self.bc_tail {
                return Ok(None);
            }
            if bc_head.wrapping_sub(self.bc_tail) > self.slots {
                let skip = bc_head.wrapping_sub(self.bc_tail) - self.slots;
                self.lost += u64::from(skip);
                self.bc_tail = bc_head.wrapping_sub(self.slots);
            }
            let at = HDR + (self.bc_tail % self.slots) as usize * self.slot_size;
            let want = self.bc_tail.wrapping_add(1);
            let s1 = self.bcast.load_acquire(at).map_err(io::Error::other)?;
            let mut len = [0u8; 4];
            self.bcast.read(at as u64 + 4, &mut len).map_err(io::Error::other)?;
            let len = (u32::from_le_bytes(len) as usize).min(self.slot_size - SLOT_HDR).min(out.len());
            self.bcast.read((at + SLOT_HDR) as u64, &mut out[..len]).map_err(io::Error::other)?;
            let s2 = self.bcast.load_acquire(at).map_err(io::Error::other)?;
            self.bc_tail = want;
            if s1 != want || s2 != want {
                self.lost += 1;
                continue;
            }
            // The broadcast ring carries our own broadcasts too.
            if len >= 12 && out[6..12] == self.mac.0 {
                continue;
            }
            return Ok(Some(len));
        }
    }

    /// Whether the gateway let go of the port (its LAN was removed, or the gateway
    /// stopped): nothing sent will be switched any more.
    pub fn detached(&self) -> bool {
        use rustix::net::RecvFlags;
        match rustix::net::recv(&self.sock, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(e) => !matches!(e, rustix::io::Errno::AGAIN | rustix::io::Errno::INTR),
        }
    }

    /// Sleeps until the gateway delivers something or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.flush();
        self.region.store_release(field::NODE_SLEEP, 1).map_err(io::Error::other)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let head = self.region.load_acquire(field::RX_HEAD).map_err(io::Error::other)?;
        let bc = self.bcast.load_acquire(field::BC_HEAD).map_err(io::Error::other)?;
        if head == self.rx_tail && bc == self.bc_tail {
            self.to_node.wait(timeout)?;
        }
        self.region.store_release(field::NODE_SLEEP, 0).map_err(io::Error::other)?;
        self.to_node.drain()?;
        Ok(())
    }
}
