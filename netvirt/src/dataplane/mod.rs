//! One netvirt data-path worker: one thread, one io_uring, and its LANs: every LAN of TAPs
//! alone (its own queue of each TAP, its own copy of the switch) and, on the first worker,
//! every LAN with ring ports or an uplink. TAP fds and uplink packet sockets are read with
//! several reads in flight per port; each completed read is run through its LAN's
//! [`VirtualLan`], and the copies it sends become writes queued on the same ring and
//! submitted together with the next reads, in one `io_uring_enter` per batch. A frame forwarded unchanged is written from the buffer it
//! was read into (counted references), so a 64 KiB TCP super-frame is never copied.
//!
//! The ring and the buffer pool are `sys::ring`'s: every SQE that names memory is
//! built there from a pool buffer the kernel then holds until its completion is reaped.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ringport::RingPort;
use crate::switch::{PortId, VirtualLan};
use crate::sys::ring::{Completion, DataRing, Pool};
use crate::vnet::{self, VnetHdr, VNET_HDR_LEN};

mod commands;
mod egress;

pub use self::commands::{Command, Control, Controls};
use self::egress::Egress;

/// Room for a virtio-net header, an 802.1Q tag and the largest super-frame a TAP hands
/// over (64 KiB of IP plus the Ethernet header).
const BUF_LEN: usize = VNET_HDR_LEN + 4 + 14 + 65_535 + 64;
/// Reads kept in flight per TAP or uplink, where reads are not multishot.
const READS_PER_PORT: usize = 4;
/// Pool buffers kept in the provided-buffer ring for multishot TAP reads to fill.
const PROVIDED: usize = 64;
/// Buffers the pool may hold at most (read and write buffers together).
const MAX_BUFS: usize = 512;

/// How a member port is reached.
#[derive(Debug)]
pub enum PortIo {
    /// A TAP device (non-blocking fd with virtio-net headers).
    Tap(OwnedFd),
    /// Shared-memory rings, while a client is attached.
    Ring(RingPort),
    /// Nothing attached yet (a ring port without a client).
    Absent,
}

/// A LAN's uplink: a packet socket on a host interface, and the LAN's VLAN ID there.
#[derive(Debug)]
pub struct UplinkIo {
    /// Bound `AF_PACKET` socket with virtio-net headers and auxdata.
    pub fd: OwnedFd,
    /// 802.1Q VLAN ID, or untagged.
    pub vlan: Option<u16>,
}

/// One LAN as the data path holds it.
#[derive(Debug)]
pub struct LanIo {
    /// The switch state.
    pub lan: VirtualLan,
    /// Port I/O, indexed like the LAN's ports.
    pub ports: Vec<PortIo>,
    /// The uplink, if any.
    pub uplink: Option<UplinkIo>,
    /// Per port: whether a client is attached, as `net show` reports it.
    pub attached: Vec<Arc<std::sync::atomic::AtomicBool>>,
    /// Per port: how many times its I/O was replaced ([`Command::SetPort`]). Reads carry
    /// the value they were started under; one that completes under another is from a
    /// device the port no longer has, and its frame is dropped.
    pub epochs: Vec<u32>,
    /// Per port: its wire's interface index in the yard (0: none), for offering service
    /// cluster flows to the kernel.
    pub wires: Vec<Arc<std::sync::atomic::AtomicU32>>,
    /// The kernel's service cluster flow table, if the fast path has one.
    pub flows: Option<Arc<crate::host::Flows>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Port(PortId),
    Uplink,
}

enum Op {
    Read {
        lan: usize,
        src: Src,
        buf: usize,
        epoch: u32,
    },
    /// A multishot read of a TAP: one SQE, a CQE per frame, each in a provided buffer.
    ReadMulti {
        lan: usize,
        src: Src,
        epoch: u32,
    },
    Recv {
        lan: usize,
        buf: usize,
    },
    Write {
        buf: usize,
    },
    Poll {
        lan: usize,
        src: Src,
        epoch: u32,
    },
    Cancel {
        lan: usize,
    },
    /// The cancellation of the requests on a TAP fd a port let go of.
    CancelPort,
    Wake,
}

/// The data path.
pub struct Dataplane {
    /// LANs by slot; a removed LAN leaves its slot empty.
    lans: Vec<Option<LanIo>>,
    /// Removed LANs whose fds wait for their cancellations: slot → (LAN, cancellations
    /// outstanding, who to tell).
    retiring: HashMap<usize, (LanIo, usize, std::sync::mpsc::Sender<()>)>,
    /// TAP fds ports let go of, waiting for their cancellation: op token → (fd, who to
    /// tell once it is closed).
    retiring_taps: HashMap<usize, (OwnedFd, std::sync::mpsc::Sender<()>)>,
    ring: DataRing,
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    out: Egress,
    starved: Vec<(usize, Src)>,
    queue: Arc<Mutex<Vec<Command>>>,
    wake: Arc<OwnedFd>,
    rx_frame: Vec<u8>,
    /// Ring ports with a client attached; the loop polls rings only while there are any.
    ring_ports: usize,
    /// Which data-path worker this is (the first also serves ring ports and uplinks, and
    /// announces moved addresses).
    index: usize,
    /// How long the loop polls its completion queue after traffic before it sleeps.
    spin: Duration,
    /// Whether those polls have been paying.
    backoff: shmem::backoff::PollBackoff,
    stop: bool,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").field("lans", &self.lans.iter().flatten().count()).finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Sets up worker `index`'s ring for its LANs (by slot; `None`: a LAN another worker
    /// serves alone); after traffic the loop polls for `spin` before it sleeps (zero: it
    /// sleeps at once).
    pub fn new(index: usize, lans: Vec<Option<LanIo>>, spin: Duration) -> std::io::Result<(Dataplane, Control)> {
        let ring = DataRing::new(1024)?;
        let wake = Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?);
        let queue = Arc::new(Mutex::new(Vec::new()));
        let control = Control { queue: queue.clone(), wake: wake.clone() };
        let dp = Dataplane {
            lans,
            retiring: HashMap::new(),
            retiring_taps: HashMap::new(),
            ring,
            ops: Vec::new(),
            free_ops: Vec::new(),
            out: Egress {
                pool: Pool::new(BUF_LEN, MAX_BUFS),
                writes: Vec::new(),
                redirect: None,
                relayed: None,
                patched: Vec::new(),
                scratch: Vec::with_capacity(2048),
                generation: 0,
            },
            starved: Vec::new(),
            queue,
            wake,
            rx_frame: Vec::with_capacity(2048),
            ring_ports: 0,
            index,
            spin,
            backoff: shmem::backoff::PollBackoff::default(),
            stop: false,
        };
        Ok((dp, control))
    }

    /// Runs until [`Command::Stop`].
    pub fn run(mut self) -> std::io::Result<()> {
        self.ring.start()?;
        self.push_wake();
        for l in 0..self.lans.len() {
            self.start_reads(l);
        }
        let mut cqes = Vec::with_capacity(256);
        while !self.stop {
            self.provide();
            // Reads that found no buffer are put in flight again now that there may be.
            for (l, src) in std::mem::take(&mut self.starved) {
                self.push_read(l, src);
            }
            self.flush_writes();
            self.tell_time();
            if self.ring_ports > 0 {
                // Ring clients do not make syscalls per frame: poll their rings, and sleep
                // in the kernel only when they have been idle for a while.
                self.ring.submit()?;
                if !self.poll_rings() {
                    self.idle_rings()?;
                }
            } else {
                self.wait()?;
            }
            self.tell_time();
            self.ring.reap(&mut self.out.pool, &mut cqes);
            for c in cqes.drain(..) {
                self.complete(c);
            }
        }
        self.cancel_all();
        Ok(())
    }

    /// Gives LANs with service clusters the time before their next frames; one clock
    /// reading, and none when no LAN has a cluster.
    fn tell_time(&mut self) {
        let mut now = None;
        for io in self.lans.iter_mut().flatten() {
            if io.lan.has_clusters() {
                io.lan.set_clock(*now.get_or_insert_with(Instant::now));
            }
        }
    }

    fn lan(&self, l: usize) -> Option<&LanIo> {
        self.lans.get(l).and_then(Option::as_ref)
    }

    fn lan_mut(&mut self, l: usize) -> Option<&mut LanIo> {
        self.lans.get_mut(l).and_then(Option::as_mut)
    }

    /// Tops the provided-buffer ring up to [`PROVIDED`] pool buffers (as far as the pool
    /// has them), so multishot reads have somewhere to put the next frames.
    fn provide(&mut self) {
        while self.ring.multishot() && self.ring.provided() < PROVIDED {
            let Some(b) = self.out.pool.alloc() else { return };
            if !self.ring.provide(&mut self.out.pool, b) {
                self.out.pool.release(b);
                return;
            }
        }
    }

    /// How many reads `push_read` keeps in flight on `src`: one multishot read on a TAP
    /// where the kernel has them, else [`READS_PER_PORT`].
    fn reads_per(&self, src: Src) -> usize {
        if self.ring.multishot() && matches!(src, Src::Port(_)) {
            1
        } else {
            READS_PER_PORT
        }
    }

    /// Puts reads in flight on every TAP and the uplink of LAN `l`.
    fn start_reads(&mut self, l: usize) {
        let Some(lan) = self.lan(l) else { return };
        let mut srcs: Vec<Src> =
            (0..lan.ports.len()).filter(|&p| matches!(lan.ports[p], PortIo::Tap(_))).map(Src::Port).collect();
        if lan.uplink.is_some() {
            srcs.push(Src::Uplink);
        }
        for src in srcs {
            for _ in 0..self.reads_per(src) {
                self.push_read(l, src);
            }
        }
    }

    fn add_lan(&mut self, l: usize, io: LanIo) {
        if self.lan(l).is_some() || self.retiring.contains_key(&l) {
            tracing::warn!(slot = l, "a LAN slot was given twice; the new LAN is ignored");
            return;
        }
        if self.lans.len() <= l {
            self.lans.resize_with(l + 1, || None);
        }
        self.ring_ports += io.ports.iter().filter(|p| matches!(p, PortIo::Ring(_))).count();
        self.lans[l] = Some(io);
        self.start_reads(l);
    }

    /// Takes LAN `l` out of the switching loop and cancels the requests on its fds; the
    /// fds close when the last cancellation completes (closing them earlier could let a
    /// new fd take the number while the kernel still works on the old one).
    fn remove_lan(&mut self, l: usize, done: std::sync::mpsc::Sender<()>) {
        let Some(io) = self.lans.get_mut(l).and_then(Option::take) else {
            let _ = done.send(());
            return;
        };
        self.ring_ports -= io.ports.iter().filter(|p| matches!(p, PortIo::Ring(_))).count();
        let mut fds: Vec<RawFd> = io
            .ports
            .iter()
            .filter_map(|p| match p {
                PortIo::Tap(fd) => Some(fd.as_raw_fd()),
                PortIo::Ring(r) => Some(r.doorbell_fd()),
                PortIo::Absent => None,
            })
            .collect();
        fds.extend(io.uplink.as_ref().map(|u| u.fd.as_raw_fd()));
        for &fd in &fds {
            let token = self.push_op(Op::Cancel { lan: l });
            self.ring.cancel_fd(fd, token);
        }
        if fds.is_empty() {
            let _ = done.send(());
        } else {
            self.retiring.insert(l, (io, fds.len(), done));
        }
    }

    fn push_op(&mut self, op: Op) -> usize {
        match self.free_ops.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i
            }
            None => {
                self.ops.push(Some(op));
                self.ops.len() - 1
            }
        }
    }

    fn push_wake(&mut self) {
        let token = self.push_op(Op::Wake);
        self.ring.read_wake(self.wake.as_raw_fd(), token);
    }

    fn fd_of(&self, l: usize, src: Src) -> Option<RawFd> {
        let lan = self.lan(l)?;
        match src {
            Src::Port(p) => match lan.ports.get(p)? {
                PortIo::Tap(fd) => Some(fd.as_raw_fd()),
                _ => None,
            },
            Src::Uplink => lan.uplink.as_ref().map(|u| u.fd.as_raw_fd()),
        }
    }

    /// The epoch reads from `src` are started under (the uplink's never changes).
    fn epoch(&self, l: usize, src: Src) -> u32 {
        match (self.lan(l), src) {
            (Some(lan), Src::Port(p)) => lan.epochs.get(p).copied().unwrap_or(0),
            _ => 0,
        }
    }

    fn push_read(&mut self, l: usize, src: Src) {
        let Some(fd) = self.fd_of(l, src) else { return };
        if let (true, Src::Port(_)) = (self.ring.multishot(), src) {
            if self.ring.provided() == 0 {
                // Armed now it would end at once: wait until buffers come back.
                self.starved.push((l, src));
                return;
            }
            let epoch = self.epoch(l, src);
            let token = self.push_op(Op::ReadMulti { lan: l, src, epoch });
            self.ring.read_multi(fd, token);
            return;
        }
        let Some(buf) = self.out.pool.alloc() else {
            self.starved.push((l, src));
            return;
        };
        match src {
            Src::Port(_) => {
                let epoch = self.epoch(l, src);
                let token = self.push_op(Op::Read { lan: l, src, buf, epoch });
                self.ring.read(&mut self.out.pool, fd, buf, token);
            }
            Src::Uplink => {
                // Leave room to insert nothing: uplink frames arrive untagged or are
                // untagged in place, so read at the buffer's start.
                let token = self.push_op(Op::Recv { lan: l, buf });
                self.ring.recv(&mut self.out.pool, fd, buf, token);
            }
        }
    }

    fn push_poll(&mut self, l: usize, src: Src) {
        let Some(fd) = self.fd_of(l, src) else { return };
        let epoch = self.epoch(l, src);
        let token = self.push_op(Op::Poll { lan: l, src, epoch });
        self.ring.poll(fd, token);
    }

    fn flush_writes(&mut self) {
        let writes = std::mem::take(&mut self.out.writes);
        for &(fd, buf, len) in &writes {
            let token = self.push_op(Op::Write { buf });
            self.ring.write(&mut self.out.pool, fd, buf, len, token);
        }
        self.out.writes = writes;
        self.out.writes.clear();
    }

    fn complete(&mut self, c: Completion) {
        let Completion { token, res, control, buf: provided, more } = c;
        if more {
            // A multishot read that stays armed: its op stays with it.
            match self.ops.get(token) {
                Some(&Some(Op::ReadMulti { lan, src, epoch })) => self.multi_frame(lan, src, epoch, res, provided),
                _ => provided.into_iter().for_each(|b| self.out.pool.release(b)),
            }
            return;
        }
        let Some(op) = self.ops.get_mut(token).and_then(Option::take) else {
            provided.into_iter().for_each(|b| self.out.pool.release(b));
            return;
        };
        self.free_ops.push(token);
        match op {
            Op::ReadMulti { lan, src, epoch } => {
                self.multi_frame(lan, src, epoch, res, provided);
                if epoch != self.epoch(lan, src) || res == -libc::ECANCELED {
                    return;
                }
                match res {
                    // The provided buffers ran out (or the kernel ended it for its own
                    // reasons): armed again once there are buffers.
                    r if r >= 0 || r == -libc::ENOBUFS => self.starved.push((lan, src)),
                    r if r == -libc::EAGAIN => self.push_poll(lan, src),
                    r => self.tap_failed(lan, src, r),
                }
            }
            Op::Wake => {
                if res >= 0 || res == -libc::EINTR || res == -libc::EAGAIN {
                    self.commands();
                }
                if !self.stop {
                    self.push_wake();
                }
            }
            Op::Write { buf } => {
                if res < 0 {
                    tracing::debug!(error = %std::io::Error::from_raw_os_error(-res), "netvirt write failed");
                }
                self.out.pool.release(buf);
            }
            Op::Cancel { lan } => {
                if let Some(entry) = self.retiring.get_mut(&lan) {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        if let Some((io, _, done)) = self.retiring.remove(&lan) {
                            drop(io);
                            let _ = done.send(());
                        }
                    }
                }
            }
            Op::CancelPort => {
                if let Some((fd, done)) = self.retiring_taps.remove(&token) {
                    drop(fd);
                    let _ = done.send(());
                }
            }
            Op::Poll { lan, src, epoch } => {
                if let (Src::Port(p), Some(l)) = (src, self.lan_mut(lan)) {
                    if let Some(PortIo::Ring(r)) = l.ports.get_mut(p) {
                        r.poll_armed = false;
                        return;
                    }
                }
                if res >= 0 && epoch == self.epoch(lan, src) {
                    self.push_read(lan, src);
                }
            }
            Op::Read { lan, src, buf, epoch } => {
                if epoch != self.epoch(lan, src) {
                    // Read from a TAP the port has let go of (fenced): dropped unswitched.
                    self.out.pool.release(buf);
                    return;
                }
                if res == -libc::EAGAIN {
                    self.out.pool.release(buf);
                    return self.push_poll(lan, src);
                }
                if res < 0 {
                    self.out.pool.release(buf);
                    if res != -libc::ECANCELED {
                        self.tap_failed(lan, src, res);
                    }
                    return;
                }
                self.frame_in(lan, src, buf, res as usize, None);
                self.out.pool.release(buf);
                self.push_read(lan, src);
            }
            Op::Recv { lan, buf } => {
                if res == -libc::EAGAIN {
                    self.out.pool.release(buf);
                    return self.push_poll(lan, Src::Uplink);
                }
                if res < 0 {
                    self.out.pool.release(buf);
                    if let (true, Some(l)) = (res != -libc::ECANCELED, self.lan(lan)) {
                        tracing::warn!(lan = l.lan.name(), error = %std::io::Error::from_raw_os_error(-res), "uplink read failed; uplink stops");
                    }
                    return;
                }
                let vlan = crate::sys::aux_vlan(control.as_ref().map_or(&[][..], |c| c.bytes()));
                self.frame_in(lan, Src::Uplink, buf, res as usize, Some(vlan));
                self.out.pool.release(buf);
                self.push_read(lan, Src::Uplink);
            }
        }
    }

    /// One CQE of a multishot read: the frame in provided buffer `buf` goes through the
    /// LAN unless its port has moved on to another device since the read was armed.
    fn multi_frame(&mut self, l: usize, src: Src, epoch: u32, res: i32, buf: Option<usize>) {
        let Some(b) = buf else { return };
        if res > 0 && epoch == self.epoch(l, src) {
            self.frame_in(l, src, b, res as usize, None);
        }
        self.out.pool.release(b);
    }

    /// A TAP read failed (the device was deleted, or its namespace went): the port stops
    /// and counts as detached, so its cluster backends go down and a failover monitor
    /// sees it unreachable. Its fd stays until the port is replaced or the LAN removed.
    fn tap_failed(&mut self, l: usize, src: Src, res: i32) {
        let Some(io) = self.lan_mut(l) else { return };
        let error = std::io::Error::from_raw_os_error(-res);
        let Src::Port(p) = src else { return };
        if io.attached.get(p).is_some_and(|a| a.swap(false, std::sync::atomic::Ordering::Relaxed)) {
            tracing::warn!(lan = io.lan.name(), port = p, %error, "TAP read failed; the port stops");
            let _ = io.lan.set_attached(p, false);
        }
    }

    /// Gives port `p` of LAN `l` new I/O (a TAP, or nothing): reads on the old TAP are
    /// cancelled and their frames dropped, its fd closes once the kernel has let go of it
    /// (then `done` is told, and the TAP device is gone), and reads start on the new one.
    pub(super) fn set_port(&mut self, l: usize, p: PortId, new: PortIo, done: std::sync::mpsc::Sender<()>) {
        let Some(io) = self.lan_mut(l).filter(|io| p < io.ports.len()) else {
            let _ = done.send(());
            return;
        };
        io.epochs[p] = io.epochs[p].wrapping_add(1);
        let tap = matches!(new, PortIo::Tap(_));
        let old = std::mem::replace(&mut io.ports[p], new);
        io.attached[p].store(tap, std::sync::atomic::Ordering::Relaxed);
        let _ = io.lan.set_attached(p, tap);
        match old {
            PortIo::Tap(fd) => {
                let token = self.push_op(Op::CancelPort);
                self.ring.cancel_fd(fd.as_raw_fd(), token);
                self.retiring_taps.insert(token, (fd, done));
            }
            PortIo::Ring(r) => {
                self.ring_ports -= 1;
                drop(r);
                let _ = done.send(());
            }
            PortIo::Absent => {
                let _ = done.send(());
            }
        }
        if tap {
            for _ in 0..self.reads_per(Src::Port(p)) {
                self.push_read(l, Src::Port(p));
            }
        }
    }

    /// Runs one received frame (`len` bytes, virtio-net header first) through its LAN.
    fn frame_in(&mut self, l: usize, src: Src, buf: usize, len: usize, aux_vlan: Option<Option<u16>>) {
        if len < VNET_HDR_LEN || self.lan(l).is_none() {
            return;
        }
        let mut hdr_bytes = [0u8; VNET_HDR_LEN];
        hdr_bytes.copy_from_slice(&self.out.pool.get(buf)[..VNET_HDR_LEN]);
        let mut hdr = VnetHdr::parse(&hdr_bytes);
        let mut len = len;
        if let Some(tag) = aux_vlan {
            // Uplink: keep only this LAN's VLAN, untagging in place if the kernel did not.
            let want = self.lan(l).and_then(|x| x.uplink.as_ref()).and_then(|u| u.vlan);
            let b = self.out.pool.get_mut(buf);
            let f = VNET_HDR_LEN;
            let inline = if len >= f + 18 && b[f + 12..f + 14] == [0x81, 0x00] {
                Some(u16::from_be_bytes([b[f + 14], b[f + 15]]) & 0x0fff)
            } else {
                None
            };
            let vid = tag.or(inline);
            if vid != want {
                return;
            }
            if inline.is_some() && tag.is_none() {
                b.copy_within(f + 16..len, f + 12);
                len -= 4;
                if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
                    hdr.csum_start = hdr.csum_start.saturating_sub(4);
                }
                b[..VNET_HDR_LEN].copy_from_slice(&hdr.emit());
            }
        }
        let Some(LanIo { lan, ports, uplink, wires, flows, .. }) = self.lans.get_mut(l).and_then(Option::as_mut) else {
            return;
        };
        // The frame is read from the pool buffer while the sink may allocate others; take
        // the buffer out for the duration so both can be borrowed.
        let data = self.out.pool.take(buf);
        let frame = &data[VNET_HDR_LEN..len];
        let wire_len = hdr.wire_len(frame);
        let mut sink = self.out.sink(ports, uplink.as_ref(), (buf, hdr));
        match src {
            Src::Port(p) => lan.from_port(p, frame, wire_len, &mut sink),
            Src::Uplink => lan.from_uplink(frame, wire_len, &mut sink),
        }
        // A frame the switch relayed to a service cluster's backend: the kernel may take
        // the rest of its flow, unless promiscuous members need copies of it.
        if let (Some((q, mac)), Src::Port(p), Some(flows)) = (self.out.relayed.take(), src, flows.as_ref()) {
            let wire = |i: usize| wires.get(i).map_or(0, |w| w.load(std::sync::atomic::Ordering::Relaxed));
            if wire(p) != 0 && wire(q) != 0 && !lan.has_promiscuous() {
                flows.relayed(wire(p), wire(q), mac, frame);
            }
        }
        self.out.pool.put(buf, data);
        if let Some((b, mac)) = self.out.redirect.take() {
            // The writes sharing the buffer are queued, not yet submitted.
            self.out.pool.get_mut(b)[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&mac.0);
        }
    }

    /// Takes frames from every attached ring port. Returns whether any moved.
    fn poll_rings(&mut self) -> bool {
        let mut moved = false;
        let Self { lans, out, rx_frame, ring_ports, .. } = self;
        for l in lans.iter_mut().flatten() {
            for p in 0..l.ports.len() {
                loop {
                    let LanIo { lan, ports, uplink, .. } = &mut *l;
                    let PortIo::Ring(r) = &mut ports[p] else { break };
                    let mut frame = std::mem::take(rx_frame);
                    if r.next_tx(&mut frame).is_none() {
                        *rx_frame = frame;
                        break;
                    }
                    moved = true;
                    let mut sink = out.sink(ports, uplink.as_ref(), (usize::MAX, VnetHdr::default()));
                    lan.from_port(p, &frame, frame.len(), &mut sink);
                    *rx_frame = frame;
                }
                if matches!(&l.ports[p], PortIo::Ring(r) if r.failed()) {
                    tracing::warn!(lan = l.lan.name(), port = p, "ring client broke the protocol; detached");
                    l.ports[p] = PortIo::Absent;
                    *ring_ports -= 1;
                    let _ = l.lan.set_attached(p, false);
                    if let Some(a) = l.attached.get(p) {
                        a.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        for l in lans.iter_mut().flatten() {
            for p in &mut l.ports {
                if let PortIo::Ring(r) = p {
                    r.flush();
                }
            }
        }
        moved
    }

    /// Submits, then waits for a completion: first by polling the completion queue for
    /// `spin` (completions of TAP reads arrive while the thread runs, the kernel kicking it
    /// to post them), so traffic that comes back within it costs no sleep and wake-up;
    /// then, or at once when polls have stopped paying, asleep in `io_uring_enter`.
    fn wait(&mut self) -> std::io::Result<()> {
        self.ring.submit()?;
        let spin = self.backoff.spin_for(self.spin, false);
        if !spin.is_zero() {
            let until = Instant::now() + spin;
            let mut rounds = 0u32;
            loop {
                if self.ring.has_completions() {
                    self.backoff.paid();
                    return Ok(());
                }
                rounds = rounds.wrapping_add(1);
                if rounds.is_multiple_of(64) {
                    if Instant::now() >= until {
                        break;
                    }
                    // Whatever else wants this core (the nodes' stacks, another worker)
                    // runs first: the traffic this poll waits for needs them.
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
            }
            self.backoff.missed();
        }
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Spins briefly, then sleeps until a ring doorbell or any completion.
    fn idle_rings(&mut self) -> std::io::Result<()> {
        let spin_until = Instant::now() + shmem::DEFAULT_SPIN;
        while Instant::now() < spin_until {
            if self
                .lans
                .iter()
                .flatten()
                .any(|l| l.ports.iter().any(|p| matches!(p, PortIo::Ring(r) if r.tx_pending())))
            {
                return Ok(());
            }
            if self.ring.has_completions() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let mut bells = Vec::new();
        for (l, lan) in self.lans.iter_mut().enumerate() {
            let Some(lan) = lan else { continue };
            for (p, port) in lan.ports.iter_mut().enumerate() {
                if let PortIo::Ring(r) = port {
                    if !r.arm_doorbell() {
                        return Ok(());
                    }
                    if !r.poll_armed {
                        r.poll_armed = true;
                        bells.push((l, p, r.doorbell_fd()));
                    }
                }
            }
        }
        for (l, p, fd) in bells {
            let token = self.push_op(Op::Poll { lan: l, src: Src::Port(p), epoch: 0 });
            self.ring.poll(fd, token);
        }
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cancels every request in flight and waits (boundedly) for them to finish. Buffers
    /// the kernel still holds after that are leaked by the pool and the ring, not freed.
    fn cancel_all(&mut self) {
        self.ring.cancel_all();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut done = Vec::new();
        while self.ops.iter().any(Option::is_some) && Instant::now() < deadline {
            let _ = self.ring.submit_and_wait(1);
            self.ring.reap(&mut self.out.pool, &mut done);
            for c in done.drain(..) {
                if let Some(slot) = self.ops.get_mut(c.token) {
                    *slot = None;
                }
            }
        }
    }
}
