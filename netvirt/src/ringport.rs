//! Shared-memory packet rings, after the source documents' shared-memory transport: fixed
//! MTU-sized slots, the writer owning the write cursor and the reader the read cursor, a
//! pair of rings per (node, gateway) pair and one broadcast ring per LAN that the gateway
//! writes once and every member reads with its own cursor.
//!
//! Port region (one memfd per attached port, read-write for both sides):
//!
//! | offset | field | written by |
//! |---|---|---|
//! | 0 | magic, version, slots, slot size | gateway, before attach |
//! | 64 | `TX_HEAD`: frames the node has put in the TX ring | node |
//! | 128 | `TX_TAIL`: frames the gateway has taken | gateway |
//! | 192 | `RX_HEAD`: frames the gateway has put in the RX ring | gateway |
//! | 256 | `RX_TAIL`: frames the node has taken | node |
//! | 320 | `GW_SLEEP`: the gateway is asleep; ring its doorbell | gateway |
//! | 384 | `NODE_SLEEP`: the node is asleep; ring its doorbell | node |
//! | 4096 | TX slots, then RX slots: `[len u32][0 u32][frame]` | |
//!
//! Broadcast region (one per LAN, mapped by every ring member): `BC_HEAD` at 64 (gateway),
//! slots at 4096 as `[seq u32][len u32][frame]`, where `seq` is the cursor value that
//! follows the slot's frame; a reader whose cursor the gateway has lapped sees the
//! mismatch and skips ahead. Cursors are free-running u32 counters; slot counts are powers
//! of two.
//!
//! Everything the gateway reads from a port region is untrusted: cursors are checked
//! against the ring size and lengths against the slot size, and a node that breaks the
//! rules loses its port (and only its port).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shmem::{Doorbell, SharedMemory};

use crate::mac::Mac;
use crate::vnet::{self, VnetHdr};

/// "PGNR".
pub const MAGIC: u32 = 0x5247_4e50;
/// Layout version.
pub const VERSION: u32 = 1;
/// Header size; slots start here.
pub const HDR: usize = 4096;
/// Field offsets.
pub mod field {
    /// Magic.
    pub const MAGIC: usize = 0;
    /// Version.
    pub const VERSION: usize = 4;
    /// Slots per ring.
    pub const SLOTS: usize = 8;
    /// Bytes per slot.
    pub const SLOT_SIZE: usize = 12;
    /// Node's TX cursor.
    pub const TX_HEAD: usize = 64;
    /// Gateway's TX cursor.
    pub const TX_TAIL: usize = 128;
    /// Gateway's RX cursor.
    pub const RX_HEAD: usize = 192;
    /// Node's RX cursor.
    pub const RX_TAIL: usize = 256;
    /// Gateway asleep.
    pub const GW_SLEEP: usize = 320;
    /// Node asleep.
    pub const NODE_SLEEP: usize = 384;
    /// Broadcast ring head.
    pub const BC_HEAD: usize = 64;
}
/// Bytes before a frame in a slot.
pub const SLOT_HDR: usize = 8;

/// Slot size for a LAN's MTU: header, Ethernet header, payload, rounded to 64 bytes.
pub fn slot_size(mtu: usize) -> usize {
    (SLOT_HDR + 14 + mtu).next_multiple_of(64)
}

/// Size of a port region.
pub fn port_region_len(slots: u32, slot_size: usize) -> usize {
    HDR + 2 * slots as usize * slot_size
}

/// Size of a broadcast region.
pub fn bcast_region_len(slots: u32, slot_size: usize) -> usize {
    HDR + slots as usize * slot_size
}

fn init_header(shm: &SharedMemory, slots: u32, slot_size: usize) -> Result<(), shmem::ShmError> {
    shm.store_release(field::VERSION, VERSION)?;
    shm.store_release(field::SLOTS, slots)?;
    shm.store_release(field::SLOT_SIZE, slot_size as u32)?;
    shm.store_release(field::MAGIC, MAGIC)
}

/// A LAN's broadcast ring, written only by the data path thread.
#[derive(Debug)]
pub struct BcastRing {
    shm: SharedMemory,
    slots: u32,
    slot_size: usize,
    head: AtomicU64,
    last_gen: AtomicU64,
}

impl BcastRing {
    /// Creates the ring for a LAN with this MTU.
    pub fn create(lan: &str, slots: u32, mtu: usize) -> Result<BcastRing, shmem::ShmError> {
        let slot_size = slot_size(mtu);
        let shm = SharedMemory::create(&format!("pangate-bcast-{lan}"), bcast_region_len(slots, slot_size))?;
        init_header(&shm, slots, slot_size)?;
        Ok(BcastRing { shm, slots, slot_size, head: AtomicU64::new(0), last_gen: AtomicU64::new(u64::MAX) })
    }

    /// The memfd, to give each ring member (read-only by convention: nothing a member
    /// writes there is ever read by the gateway).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shm.fd()
    }

    /// Publishes a group-addressed frame once per input frame `generation`, however many
    /// ring members it is delivered to.
    fn publish(&self, generation: u64, frame: &[u8]) -> bool {
        if self.last_gen.swap(generation, Ordering::Relaxed) == generation {
            return true;
        }
        if frame.len() > self.slot_size - SLOT_HDR {
            return false;
        }
        let head = self.head.load(Ordering::Relaxed) as u32;
        let at = (HDR + (head % self.slots) as usize * self.slot_size) as u64;
        let next = head.wrapping_add(1);
        // Invalidate the slot, fill it, then stamp it with the cursor that follows it.
        let ok = self.shm.store_release(at as usize, 0).is_ok()
            && self.shm.write(at + 4, &(frame.len() as u32).to_le_bytes()).is_ok()
            && self.shm.write(at + SLOT_HDR as u64, frame).is_ok()
            && self.shm.store_release(at as usize, next).is_ok()
            && self.shm.store_release(field::BC_HEAD, next).is_ok();
        self.head.store(u64::from(next), Ordering::Relaxed);
        ok
    }

    fn head(&self) -> u32 {
        self.head.load(Ordering::Relaxed) as u32
    }
}

/// The gateway's end of one ring port.
#[derive(Debug)]
pub struct RingPort {
    shm: SharedMemory,
    slots: u32,
    slot_size: usize,
    tx_tail: u32,
    rx_head: u32,
    rx_published: u32,
    rx_tail_seen: u32,
    bcast: Arc<BcastRing>,
    bcast_notified: u32,
    to_gateway: Doorbell,
    to_node: Doorbell,
    armed: bool,
    /// A doorbell poll is in flight on the data path's ring.
    pub poll_armed: bool,
    failed: bool,
    mac: Mac,
}

/// What the node receives to map its end.
#[derive(Debug)]
pub struct RingPortFds<'a> {
    /// Port region memfd.
    pub region: std::os::fd::BorrowedFd<'a>,
    /// Broadcast region memfd.
    pub bcast: std::os::fd::BorrowedFd<'a>,
    /// Doorbell the node rings.
    pub to_gateway: std::os::fd::BorrowedFd<'a>,
    /// Doorbell the gateway rings.
    pub to_node: std::os::fd::BorrowedFd<'a>,
}

impl RingPort {
    /// Creates a port region with `slots` slots per direction for a LAN with this MTU.
    pub fn create(mac: Mac, slots: u32, mtu: usize, bcast: Arc<BcastRing>) -> Result<RingPort, shmem::ShmError> {
        if !slots.is_power_of_two() || slots != bcast.slots {
            return Err(shmem::ShmError::BadFd(format!("{slots} slots: must be a power of two matching the LAN")));
        }
        let slot_size = slot_size(mtu);
        let shm = SharedMemory::create("pangate-netport", port_region_len(slots, slot_size))?;
        init_header(&shm, slots, slot_size)?;
        let bcast_notified = bcast.head();
        Ok(RingPort {
            shm,
            slots,
            slot_size,
            tx_tail: 0,
            rx_head: 0,
            rx_published: 0,
            rx_tail_seen: 0,
            bcast,
            bcast_notified,
            to_gateway: Doorbell::new()?,
            to_node: Doorbell::new()?,
            armed: false,
            poll_armed: false,
            failed: false,
            mac,
        })
    }

    /// The fds to send to the node.
    pub fn fds(&self) -> RingPortFds<'_> {
        RingPortFds {
            region: self.shm.fd(),
            bcast: self.bcast.fd(),
            to_gateway: self.to_gateway.fd(),
            to_node: self.to_node.fd(),
        }
    }

    /// The node broke the protocol; the port must be detached.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The doorbell fd the node rings.
    pub fn doorbell_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.to_gateway.fd())
    }

    fn tx_slot(&self, i: u32) -> u64 {
        (HDR + (i % self.slots) as usize * self.slot_size) as u64
    }

    fn rx_slot(&self, i: u32) -> u64 {
        (HDR + (self.slots + i % self.slots) as usize * self.slot_size) as u64
    }

    /// Whether the node has put frames in the TX ring that the gateway has not taken.
    pub fn tx_pending(&self) -> bool {
        self.shm.load_acquire(field::TX_HEAD).is_ok_and(|h| h != self.tx_tail)
    }

    /// Copies the next frame the node sent into `out`. `None` when the ring is empty or
    /// the node broke the protocol (see [`RingPort::failed`]).
    pub fn next_tx(&mut self, out: &mut Vec<u8>) -> Option<()> {
        if self.failed {
            return None;
        }
        if self.armed {
            self.armed = false;
            let _ = self.shm.store_release(field::GW_SLEEP, 0);
            let _ = self.to_gateway.drain();
        }
        let head = self.shm.load_acquire(field::TX_HEAD).ok()?;
        let queued = head.wrapping_sub(self.tx_tail);
        if queued == 0 {
            return None;
        }
        if queued > self.slots {
            self.failed = true;
            return None;
        }
        let at = self.tx_slot(self.tx_tail);
        let mut len = [0u8; 4];
        if self.shm.read(at, &mut len).is_err() {
            self.failed = true;
            return None;
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > self.slot_size - SLOT_HDR {
            self.failed = true;
            return None;
        }
        out.resize(len, 0);
        if self.shm.read(at + SLOT_HDR as u64, out).is_err() {
            self.failed = true;
            return None;
        }
        self.tx_tail = self.tx_tail.wrapping_add(1);
        Some(())
    }

    fn rx_free(&mut self) -> u32 {
        let Ok(tail) = self.shm.load_acquire(field::RX_TAIL) else { return 0 };
        let used = self.rx_head.wrapping_sub(tail);
        if used > self.slots || tail.wrapping_sub(self.rx_tail_seen) > self.slots {
            // The node claims to have read frames that were never written.
            self.failed = true;
            return 0;
        }
        self.rx_tail_seen = tail;
        self.slots - used
    }

    fn push_one(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.slot_size - SLOT_HDR || self.rx_free() == 0 {
            return false;
        }
        let at = self.rx_slot(self.rx_head);
        let ok = self.shm.write(at, &(frame.len() as u32).to_le_bytes()).is_ok()
            && self.shm.write(at + SLOT_HDR as u64, frame).is_ok();
        if ok {
            self.rx_head = self.rx_head.wrapping_add(1);
        }
        ok
    }

    /// Delivers a frame: group-addressed frames once into the LAN's broadcast ring (for
    /// input frame `generation`), others into this port's RX ring, segmented and with
    /// checksums completed, since the node has no offloads.
    pub fn push_frame(&mut self, generation: u64, hdr: &VnetHdr, frame: &[u8], scratch: &mut Vec<u8>) -> bool {
        if self.failed || frame.len() < 14 {
            return false;
        }
        if frame[0] & 1 == 1 {
            return self.bcast.publish(generation, frame);
        }
        if hdr.flags & vnet::F_NEEDS_CSUM == 0 && !hdr.is_gso() {
            return self.push_one(frame);
        }
        let mut all = true;
        let mut segs = std::mem::take(scratch);
        let r = vnet::segment(hdr, frame, &mut segs, |s| all &= self.push_one(s));
        *scratch = segs;
        r.is_ok() && all
    }

    /// Publishes what was pushed and the TX cursor, and wakes the node if it sleeps.
    pub fn flush(&mut self) {
        let _ = self.shm.store_release(field::TX_TAIL, self.tx_tail);
        let bc = self.bcast.head();
        if self.rx_head != self.rx_published || bc != self.bcast_notified {
            let _ = self.shm.store_release(field::RX_HEAD, self.rx_head);
            self.rx_published = self.rx_head;
            self.bcast_notified = bc;
            // Pairs with the node's fence between raising NODE_SLEEP and checking RX_HEAD:
            // one of the two sides sees the other's store, so no wakeup is lost.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.shm.load_acquire(field::NODE_SLEEP).is_ok_and(|s| s != 0) {
                let _ = self.to_node.ring();
            }
        }
    }

    /// Tells the node the gateway is about to sleep. Returns false if frames arrived
    /// meanwhile (so it must not sleep).
    pub fn arm_doorbell(&mut self) -> bool {
        if self.shm.store_release(field::GW_SLEEP, 1).is_err() {
            return true;
        }
        self.armed = true;
        std::sync::atomic::fence(Ordering::SeqCst);
        !self.tx_pending()
    }

    /// The port's MAC.
    pub fn mac(&self) -> Mac {
        self.mac
    }
}
