//! The worker: owns the images and every queue pair, takes CMDs from the rings, runs them
//! on the images' engines, and answers with STATs and BUFs, polling while there is work
//! and sleeping on the doorbells when there is none.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{LunKey, LunStats, Metrics, RingStats, Transfer};
use scsi::{absent_lun, Completion, DataIn, Nexus, Sense, Status};

use super::{control_result, Accepted, Capacities, Control, Data, NodeEntry, ServerOptions, REPORT_ENTRY};
use crate::config::Access;
use crate::engine::AlignedBuf;
use crate::lun::Finished;
use crate::ring::alloc::RegionAllocator;
use crate::ring::proto::{self, Buf, Cmd, ControlOp, Message, Region, Segments, Stat};
use crate::ring::shm::{self, Doorbell, SharedMemory};
use crate::ring::spsc::{Consumer, Producer, RingError, RingId};
use crate::storage::OpenImage;

/// A command the gateway has accepted and not yet answered.
#[derive(Debug)]
enum Pending {
    /// Waiting for the node to fill staging buffers (staged write).
    Staged { lun: MappedLun, cmd: Cmd, staged: Vec<Region>, received: Vec<bool> },
    /// With the backend; data-in goes to `segments`.
    Backend {
        segments: Segments,
        expected: u64,
        staged: Vec<Region>,
        data_out: bool,
        opcode: u8,
        started_ns: u64,
        stats: Arc<LunStats>,
    },
}

/// One entry of a queue pair's map.
#[derive(Debug, Clone)]
struct MappedLun {
    image: usize,
    access: Access,
    stats: Arc<LunStats>,
}

fn lun_map(entry: &NodeEntry, metrics: &Metrics) -> HashMap<(u16, u16), MappedLun> {
    entry
        .luns
        .iter()
        .map(|&(target, lun, image, access)| {
            let key = LunKey { pan: entry.pan.clone(), node: entry.node.clone(), target, lun };
            ((target, lun), MappedLun { image, access, stats: metrics.lun(key) })
        })
        .collect()
}

fn target_luns(map: &HashMap<(u16, u16), MappedLun>) -> HashMap<u16, Vec<u16>> {
    let mut out: HashMap<u16, Vec<u16>> = HashMap::new();
    for &(t, l) in map.keys() {
        out.entry(t).or_default().push(l);
    }
    for luns in out.values_mut() {
        luns.sort_unstable();
    }
    out
}

struct Conn {
    id: u64,
    entry: NodeEntry,
    sock: UnixStream,
    data: Arc<SharedMemory>,
    staging: Arc<SharedMemory>,
    cmd: Consumer,
    stat: Producer,
    buf: Producer,
    tran: Consumer,
    to_gateway: Doorbell,
    to_node: Doorbell,
    slots: u32,
    map: HashMap<(u16, u16), MappedLun>,
    /// Each target's LUNs in order (REPORT LUNS answers from it), kept with `map`.
    target_luns: HashMap<u16, Vec<u16>>,
    pending: HashMap<u32, Pending>,
    ring_stats: Arc<RingStats>,
    /// Commands accepted whose STAT has not gone into the ring.
    unanswered: u64,
    out_stat: VecDeque<Stat>,
    out_buf: VecDeque<Buf>,
    staging_alloc: RegionAllocator,
    /// Bytes named by the segments of commands not yet answered, capped at the size of the
    /// node's data area so a node cannot make the gateway hold more data than it could send.
    bytes_in_flight: u64,
    dead: Option<String>,
}

impl Conn {
    fn new(id: u64, a: Accepted, metrics: &Metrics) -> Conn {
        let map = lun_map(&a.entry, metrics);
        let ring_stats = metrics.ring(&a.entry.pan, &a.entry.node);
        ring_stats.connected();
        let staging_alloc = RegionAllocator::new(a.staging.len() as u64);
        let cmd = Consumer::new(a.ring.clone(), RingId::Cmd, a.slots);
        let tran = Consumer::new(a.ring.clone(), RingId::Tran, a.slots);
        // The worker is awake right now: nodes need not ring until it says otherwise.
        cmd.set_polling(true);
        tran.set_polling(true);
        Conn {
            id,
            sock: a.sock,
            data: a.data,
            staging: a.staging,
            stat: Producer::new(a.ring.clone(), RingId::Stat, a.slots),
            buf: Producer::new(a.ring.clone(), RingId::Buf, a.slots),
            cmd,
            tran,
            to_gateway: a.to_gateway,
            to_node: a.to_node,
            slots: a.slots,
            target_luns: target_luns(&map),
            map,
            pending: HashMap::new(),
            ring_stats,
            unanswered: 0,
            out_stat: VecDeque::new(),
            out_buf: VecDeque::new(),
            staging_alloc,
            bytes_in_flight: 0,
            dead: None,
            entry: a.entry,
        }
    }

    fn luns_of_target(&self, target: u16) -> &[u16] {
        self.target_luns.get(&target).map_or(&[], Vec::as_slice)
    }

    fn set_map(&mut self, map: HashMap<(u16, u16), MappedLun>) {
        self.target_luns = target_luns(&map);
        self.map = map;
    }

    /// Copies `bytes` into the node's regions; returns how many fit.
    fn scatter(&self, segments: &Segments, bytes: &[u8]) -> Result<usize, String> {
        let mut at = 0usize;
        for r in segments.as_slice() {
            if at >= bytes.len() {
                break;
            }
            let n = (r.len as usize).min(bytes.len() - at);
            self.data.write(r.offset, &bytes[at..at + n]).map_err(|e| e.to_string())?;
            at += n;
        }
        Ok(at)
    }

    /// The node went away normally.
    fn hang_up(&mut self) {
        if self.dead.is_none() {
            tracing::info!(pan = %self.entry.pan, node = %self.entry.node, outstanding = self.pending.len(), "queue pair disconnected");
            self.dead = Some("disconnected".into());
        }
    }

    /// The node broke the protocol: close its queue pair and say why. `label` names the
    /// kind of fault for metrics.
    fn kill(&mut self, label: &'static str, why: String) {
        if self.dead.is_none() {
            tracing::warn!(pan = %self.entry.pan, node = %self.entry.node, reason = %why, "closing queue pair");
            self.ring_stats.protocol_error(label);
            self.dead = Some(why);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.ring_stats.disconnected(self.unanswered);
    }
}

fn stat_from(seq: u32, c: &Completion, transferred: u32, expected: u64) -> Stat {
    let residual = expected.saturating_sub(u64::from(transferred)).min(u64::from(u32::MAX)) as u32;
    Stat::new(seq, c.status as u8, &c.sense, transferred, residual)
}

fn control_stat(seq: u32, result: u16, transferred: u32) -> Stat {
    let mut s = Stat::new(seq, Status::Good as u8, &[], transferred, 0);
    s.flags = proto::FLAG_CONTROL;
    s.control_result = result;
    s
}

pub(super) struct Worker {
    images: Vec<OpenImage>,
    conns: Vec<Conn>,
    incoming: Receiver<Accepted>,
    control: Receiver<Control>,
    caps: Capacities,
    wake: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    spin: Duration,
    next_id: u64,
    in_backend: Vec<usize>,
    finished: Vec<Finished>,
    metrics: Arc<Metrics>,
    /// Images no map names any more (flushed, kept so indices stay stable).
    retired: Vec<bool>,
}

impl Worker {
    pub(super) fn new(
        images: Vec<OpenImage>,
        incoming: Receiver<Accepted>,
        control: Receiver<Control>,
        caps: Capacities,
        wake: Arc<Doorbell>,
        stop: Arc<AtomicBool>,
        opts: &ServerOptions,
    ) -> Worker {
        let n = images.len();
        Worker {
            images,
            conns: Vec::new(),
            incoming,
            control,
            caps,
            wake,
            stop,
            spin: opts.spin,
            next_id: 1,
            in_backend: vec![0; n],
            finished: Vec::new(),
            metrics: opts.metrics.clone(),
            retired: vec![false; n],
        }
    }

    pub(super) fn run(mut self) -> Vec<OpenImage> {
        let mut last_activity = Instant::now();
        // Rounds without progress; the clock is read only every few of them, as reading it
        // costs more than a look at the rings.
        let mut idle_rounds = 0u32;
        let mut loops = 0u64;
        loop {
            loops += 1;
            let stopping = self.stop.load(Ordering::SeqCst);
            while let Ok(a) = self.incoming.try_recv() {
                let id = self.next_id;
                self.next_id += 1;
                self.conns.push(Conn::new(id, a, &self.metrics));
            }
            while let Ok(c) = self.control.try_recv() {
                self.apply(c);
            }
            let mut progress = false;
            if !stopping {
                for i in 0..self.conns.len() {
                    progress |= self.service(i);
                }
            }
            progress |= self.reap();
            for c in &mut self.conns {
                progress |= flush(c);
            }
            if loops.is_multiple_of(1024) {
                self.check_sockets(Duration::ZERO);
            }
            self.conns.retain(|c| c.dead.is_none());
            let busy: usize = self.in_backend.iter().sum();
            if stopping && busy == 0 {
                return self.finish();
            }
            if progress {
                idle_rounds = 0;
                continue;
            }
            if idle_rounds == 0 {
                last_activity = Instant::now();
            }
            idle_rounds = idle_rounds.wrapping_add(1);
            if !idle_rounds.is_multiple_of(32) || last_activity.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            if busy > 0 {
                // Backend I/O is in flight: nap briefly, still watching the doorbells.
                self.sleep(Duration::from_micros(20));
            } else {
                self.sleep(Duration::from_millis(500));
            }
        }
    }

    fn apply(&mut self, c: Control) {
        match c {
            Control::Grow { image, bytes, reply } => {
                let result = match self.images.get_mut(image) {
                    Some(img) => img.driver.grow(bytes).inspect(|()| {
                        let cfg = img.driver.unit().config();
                        tracing::info!(pan = %img.pan, image = %img.name, bytes, "LUN grown");
                        if let Some(c) = self.caps.lock().unwrap_or_else(|p| p.into_inner()).get_mut(image) {
                            *c = (cfg.block_size, cfg.blocks);
                        }
                    }),
                    None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no image {image}"))),
                };
                let _ = reply.send(result);
            }
            Control::AddImage { image, reply } => {
                let cfg = image.driver.unit().config();
                self.caps.lock().unwrap_or_else(|p| p.into_inner()).push((cfg.block_size, cfg.blocks));
                tracing::info!(pan = %image.pan, image = %image.name, path = %image.path.display(), "LUN added");
                self.images.push(*image);
                self.in_backend.push(0);
                self.retired.push(false);
                let _ = reply.send(Ok(()));
            }
            Control::Retire { image, reply } => {
                let result = match self.images.get_mut(image) {
                    Some(img) => {
                        self.retired[image] = true;
                        tracing::info!(pan = %img.pan, image = %img.name, "LUN deleted");
                        crate::storage::flush(img)
                    }
                    None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no image {image}"))),
                };
                let _ = reply.send(result);
            }
            Control::Node { pan, node, entry, reply } => {
                for c in self.conns.iter_mut().filter(|c| c.entry.pan == pan && c.entry.node == node) {
                    match &entry {
                        Some(e) => {
                            c.set_map(lun_map(e, &self.metrics));
                            c.entry = e.clone();
                        }
                        None => {
                            tracing::info!(pan = %pan, node = %node, "node deleted: closing its queue pair");
                            c.dead = Some("the node was deleted".into());
                        }
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Sleeps until a doorbell, a socket event or the timeout, with the rings' polling
    /// flags cleared so nodes ring.
    fn sleep(&mut self, timeout: Duration) {
        for c in &self.conns {
            c.cmd.set_polling(false);
            c.tran.set_polling(false);
        }
        let pending =
            self.conns.iter_mut().any(|c| c.cmd.pending().unwrap_or(1) > 0 || c.tran.pending().unwrap_or(1) > 0);
        if !pending {
            self.check_sockets(timeout);
        }
        for c in &self.conns {
            c.cmd.set_polling(true);
            c.tran.set_polling(true);
        }
    }

    /// Polls doorbells and sockets; marks hung-up or chattering nodes dead.
    fn check_sockets(&mut self, timeout: Duration) {
        use rustix::event::{PollFd, PollFlags};
        let mut fds = vec![PollFd::new(&*self.wake, PollFlags::IN)];
        for c in &self.conns {
            fds.push(PollFd::new(&c.to_gateway, PollFlags::IN));
            fds.push(PollFd::new(&c.sock, PollFlags::IN | PollFlags::RDHUP));
        }
        let ts = shm::poll_timeout(timeout);
        if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0) == 0 {
            return;
        }
        let events: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        let _ = self.wake.drain();
        for (i, c) in self.conns.iter_mut().enumerate() {
            let _ = c.to_gateway.drain();
            let ev = events[2 + 2 * i];
            if ev.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                c.hang_up();
            } else if ev.contains(PollFlags::IN) {
                c.kill("socket_chatter", "the node sent data on its socket after the handshake".into());
            }
        }
    }

    /// Takes up to 64 CMDs, then up to 64 TRANs, from a queue pair.
    fn service(&mut self, i: usize) -> bool {
        let mut progress = false;
        for ring in [RingId::Cmd, RingId::Tran] {
            for _ in 0..64 {
                let c = &mut self.conns[i];
                let popped = match ring {
                    RingId::Cmd => c.cmd.pop(c.data.len() as u64),
                    _ => c.tran.pop(0),
                };
                match popped {
                    Ok(Some(Message::Cmd(cmd))) => self.on_cmd(i, cmd),
                    Ok(Some(Message::Tran(t))) => self.on_tran(i, t.seq, t.index),
                    Ok(Some(_)) => unreachable!("the consumer checks kinds"),
                    Ok(None) => break,
                    Err(e) => {
                        self.conns[i].kill(e.label(), e.to_string());
                        return true;
                    }
                }
                progress = true;
                if self.conns[i].dead.is_some() {
                    return true;
                }
            }
        }
        progress
    }

    fn on_cmd(&mut self, i: usize, cmd: Cmd) {
        {
            let c = &mut self.conns[i];
            // Outstanding: accepted and unanswered, answered but queued, and answered in the
            // STAT ring but not yet consumed by the node.
            let in_ring = match c.stat.room() {
                Ok(room) => c.slots - room,
                Err(e) => return c.kill(e.label(), e.to_string()),
            };
            if c.pending.len() + c.out_stat.len() + in_ring as usize >= c.slots as usize {
                return c.kill("queue_overflow", format!("more than {} commands outstanding", c.slots));
            }
            if c.pending.contains_key(&cmd.seq) {
                return c.kill("sequence_reused", format!("sequence number {} reused while outstanding", cmd.seq));
            }
            c.unanswered += 1;
            c.ring_stats.command_accepted();
        }
        if let Some(op) = cmd.control {
            return self.on_control(i, cmd, op);
        }
        let c = &mut self.conns[i];
        let expected = cmd.segments.total();
        let Some(lun) = c.map.get(&(cmd.target, cmd.lun)).cloned() else {
            let luns = c.luns_of_target(cmd.target);
            let completion = absent_lun(cmd.cdb(), luns);
            let data = match &completion.data_in {
                DataIn::Bytes(b) => b.clone(),
                _ => Vec::new(),
            };
            let n = if cmd.flags & proto::FLAG_DATA_IN != 0 { c.scatter(&cmd.segments, &data) } else { Ok(0) };
            match n {
                Ok(n) => c.out_stat.push_back(stat_from(cmd.seq, &completion, n as u32, expected)),
                Err(e) => c.kill("bad_region", e),
            }
            return;
        };
        let opcode = cmd.cdb()[0];
        if lun.access == Access::Ro && scsi::opcodes::writes_medium(opcode) {
            let completion = Completion::check(&Sense::write_protected(), false);
            lun.stats.answered(opcode, completion.status as u8, Transfer::None);
            c.out_stat.push_back(stat_from(cmd.seq, &completion, 0, expected));
            return;
        }
        if c.bytes_in_flight + expected > c.data.len() as u64 {
            // More data in flight than the node's whole data area: ask it to retry later.
            let busy = Completion { status: Status::Busy, sense: Vec::new(), data_in: DataIn::None };
            lun.stats.answered(opcode, busy.status as u8, Transfer::None);
            c.out_stat.push_back(stat_from(cmd.seq, &busy, 0, expected));
            return;
        }
        let image = lun.image;
        c.bytes_in_flight += expected;
        if cmd.flags & proto::FLAG_STAGED != 0 {
            // One BUF per segment of the CMD, each naming staging space of the same size.
            let mut staged = Vec::new();
            for r in cmd.segments.as_slice() {
                match c.staging_alloc.alloc(r.len) {
                    Some(s) => staged.push(s),
                    None => {
                        for s in staged {
                            c.staging_alloc.free(s);
                        }
                        c.bytes_in_flight -= expected;
                        let busy = Completion { status: Status::Busy, sense: Vec::new(), data_in: DataIn::None };
                        lun.stats.answered(opcode, busy.status as u8, Transfer::None);
                        c.out_stat.push_back(stat_from(cmd.seq, &busy, 0, expected));
                        return;
                    }
                }
            }
            for (index, s) in staged.iter().enumerate() {
                let segments = Segments::new(&[*s]).expect("one segment fits");
                c.out_buf.push_back(Buf { seq: cmd.seq, index: index as u16, segments });
            }
            let received = vec![false; staged.len()];
            c.pending.insert(cmd.seq, Pending::Staged { lun, cmd, staged, received });
            if cmd.segments.as_slice().is_empty() {
                self.submit_staged(i, cmd.seq);
            }
            return;
        }
        let data_out = if cmd.flags & proto::FLAG_DATA_OUT != 0 {
            if let Some(view) = self.borrowable(i, image, &cmd) {
                return self.submit(i, lun, cmd, Data::Out(view), Vec::new());
            }
            let c = &mut self.conns[i];
            // The engine's arena: already mapped (and registered with io_uring), where a
            // fresh heap buffer of a large write would be page-faulted in on every command.
            // Not cleared: the segments below fill every byte, or the node is cut off and
            // the buffer never used.
            let mut buf = self.images[image].driver.buffer_for_overwrite(expected as usize);
            let mut at = 0usize;
            for r in cmd.segments.as_slice() {
                let n = r.len as usize;
                if let Err(e) = c.data.read(r.offset, &mut buf.as_mut_slice()[at..at + n]) {
                    return c.kill("bad_region", e.to_string());
                }
                at += n;
            }
            Some(buf)
        } else if let Some(view) = self.borrowable(i, image, &cmd) {
            // A READ lands in the node's region directly.
            return self.submit(i, lun, cmd, Data::In(view), Vec::new());
        } else {
            None
        };
        self.submit(i, lun, cmd, data_out.map_or(Data::None, Data::Out), Vec::new());
    }

    /// The node's region of a plain READ or WRITE as a buffer of its own, with no copy,
    /// when the engine only hands buffers to the kernel: the data goes straight between the
    /// image and the node's data area. The node may touch the bytes while the command is in
    /// flight, which is its own affair (the data is its own, and the gateway never reads
    /// it). Parameter lists, compared data and everything else are still copied.
    fn borrowable(&self, i: usize, image: usize, cmd: &Cmd) -> Option<AlignedBuf> {
        use scsi::opcodes::op;
        let c = &self.conns[i];
        let opcode = *cmd.cdb().first()?;
        let plain = if cmd.flags & proto::FLAG_DATA_OUT != 0 {
            matches!(opcode, op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16)
        } else {
            cmd.flags & proto::FLAG_DATA_IN != 0
                && matches!(opcode, op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16)
        };
        let [r] = cmd.segments.as_slice() else { return None };
        if !plain || !self.images[image].driver.takes_borrowed() || r.offset % crate::engine::buf::ALIGN as u64 != 0 {
            return None;
        }
        let ptr = std::ptr::NonNull::new(c.data.raw(r.offset, u64::from(r.len)).ok()?)?;
        let owner: Arc<dyn std::any::Any + Send + Sync> = c.data.clone();
        // SAFETY: `raw` checked that [offset, offset+len) lies inside the mapping, which
        // `owner` keeps mapped for the buffer's life; the buffer goes only to an engine that
        // passes its pointer to the kernel and never forms a reference to it.
        Some(unsafe { AlignedBuf::borrowed(ptr, r.len as usize, owner) })
    }

    fn submit(&mut self, i: usize, lun: MappedLun, cmd: Cmd, data: Data, staged: Vec<Region>) {
        let image = lun.image;
        let c = &mut self.conns[i];
        let tag = (c.id << 32) | u64::from(cmd.seq);
        let expected = cmd.segments.total();
        let is_out = matches!(data, Data::Out(_));
        let started_ns = metrics::now_ns();
        lun.stats.started(started_ns);
        c.pending.insert(
            cmd.seq,
            Pending::Backend {
                segments: cmd.segments,
                expected,
                staged,
                data_out: is_out,
                opcode: cmd.cdb()[0],
                started_ns,
                stats: lun.stats,
            },
        );
        self.in_backend[image] += 1;
        let c = &self.conns[i];
        let nexus = Nexus { id: c.id, luns: c.luns_of_target(cmd.target) };
        let driver = &mut self.images[image].driver;
        match data {
            Data::None => driver.submit_buf(tag, &nexus, cmd.cdb(), None),
            Data::Out(buf) => driver.submit_buf(tag, &nexus, cmd.cdb(), Some(buf)),
            Data::In(view) => driver.submit_into(tag, &nexus, cmd.cdb(), view),
        }
    }

    fn on_tran(&mut self, i: usize, seq: u32, index: u16) {
        let c = &mut self.conns[i];
        let Some(Pending::Staged { received, .. }) = c.pending.get_mut(&seq) else {
            return c.kill("unexpected_tran", format!("TRAN for sequence number {seq}, which awaits no data"));
        };
        match received.get_mut(usize::from(index)) {
            Some(r) if !*r => *r = true,
            _ => {
                return c.kill(
                    "unexpected_tran",
                    format!("TRAN index {index} for sequence number {seq} is unknown or repeated"),
                )
            }
        }
        if received.iter().all(|&r| r) {
            self.submit_staged(i, seq);
        }
    }

    fn submit_staged(&mut self, i: usize, seq: u32) {
        let c = &mut self.conns[i];
        let Some(Pending::Staged { lun, cmd, staged, .. }) = c.pending.remove(&seq) else { return };
        let total: usize = staged.iter().map(|r| r.len as usize).sum();
        let mut buf = self.images[lun.image].driver.buffer_for_overwrite(total);
        let mut at = 0usize;
        for r in &staged {
            let n = r.len as usize;
            if let Err(e) = c.staging.read(r.offset, &mut buf.as_mut_slice()[at..at + n]) {
                return c.kill("bad_region", e.to_string());
            }
            at += n;
        }
        self.submit(i, lun, cmd, Data::Out(buf), staged);
    }

    fn on_control(&mut self, i: usize, cmd: Cmd, op: ControlOp) {
        let c = &mut self.conns[i];
        let reply = match op {
            ControlOp::Heartbeat => control_stat(cmd.seq, control_result::DONE, 0),
            ControlOp::AbortTask => match c.pending.get(&cmd.arg) {
                Some(Pending::Staged { .. }) => {
                    if let Some(Pending::Staged { staged, cmd: aborted, .. }) = c.pending.remove(&cmd.arg) {
                        for s in staged {
                            c.staging_alloc.free(s);
                        }
                        c.bytes_in_flight -= aborted.segments.total();
                    }
                    let aborted = Completion { status: Status::TaskAborted, sense: Vec::new(), data_in: DataIn::None };
                    c.out_stat.push_back(stat_from(cmd.arg, &aborted, 0, 0));
                    control_stat(cmd.seq, control_result::DONE, 0)
                }
                Some(Pending::Backend { .. }) => control_stat(cmd.seq, control_result::IN_PROGRESS, 0),
                None => control_stat(cmd.seq, control_result::NOT_FOUND, 0),
            },
            ControlOp::LunReset => match c.map.get(&(cmd.target, cmd.lun)) {
                Some(lun) => {
                    self.images[lun.image].driver.unit_mut().reset();
                    control_stat(cmd.seq, control_result::DONE, 0)
                }
                None => control_stat(cmd.seq, control_result::NOT_FOUND, 0),
            },
            ControlOp::ReportConfig => {
                let mut entries: Vec<_> = c.map.iter().collect();
                entries.sort_by_key(|(k, _)| **k);
                let mut bytes = Vec::with_capacity(entries.len() * REPORT_ENTRY);
                for (&(t, l), lun) in entries {
                    let cfg = self.images[lun.image].driver.unit().config();
                    bytes.extend_from_slice(&t.to_le_bytes());
                    bytes.extend_from_slice(&l.to_le_bytes());
                    bytes.extend_from_slice(&[u8::from(lun.access == Access::Ro), 0, 0, 0]);
                    bytes.extend_from_slice(&cfg.block_size.to_le_bytes());
                    bytes.extend_from_slice(&cfg.blocks.to_le_bytes());
                }
                match c.scatter(&cmd.segments, &bytes) {
                    Ok(n) => {
                        let mut s = control_stat(cmd.seq, control_result::DONE, n as u32);
                        s.residual = (bytes.len() - n) as u32;
                        s
                    }
                    Err(e) => return c.kill("bad_region", e),
                }
            }
        };
        c.out_stat.push_back(reply);
    }

    /// Collects backend completions and turns them into STATs.
    fn reap(&mut self) -> bool {
        let mut any = false;
        for image in 0..self.images.len() {
            if self.in_backend[image] == 0 {
                continue;
            }
            if let Err(e) = self.images[image].driver.poll(&mut self.finished, false) {
                tracing::error!(image = %self.images[image].name, error = %e, "backend poll failed");
            }
            self.in_backend[image] -= self.finished.len().min(self.in_backend[image]);
            for f in self.finished.drain(..) {
                any = true;
                let (conn_id, seq) = (f.tag >> 32, f.tag as u32);
                // Completions for connections that are gone are discarded.
                let Some(c) = self.conns.iter_mut().find(|c| c.id == conn_id) else { continue };
                let Some(Pending::Backend { segments, expected, staged, data_out, opcode, started_ns, stats }) =
                    c.pending.remove(&seq)
                else {
                    continue;
                };
                c.bytes_in_flight -= expected;
                for s in staged {
                    c.staging_alloc.free(s);
                }
                let transferred = if data_out {
                    if f.completion.status == Status::Good {
                        expected as usize
                    } else {
                        0
                    }
                } else if let Some(n) = f.in_place() {
                    n
                } else {
                    match c.scatter(&segments, f.data()) {
                        Ok(n) => n,
                        Err(e) => {
                            c.kill("bad_region", e);
                            continue;
                        }
                    }
                };
                let status = f.completion.status;
                let transfer = match status {
                    Status::Good if data_out && writes_data(opcode) => Transfer::Written(expected),
                    Status::Good if scsi::opcodes::reads_medium(opcode) => Transfer::Read(transferred as u64),
                    _ => Transfer::None,
                };
                stats.finished(opcode, status as u8, transfer, started_ns, metrics::now_ns());
                c.out_stat.push_back(stat_from(seq, &f.completion, transferred as u32, expected));
            }
        }
        any
    }

    /// Finishes shutdown: flush every image, close every queue pair.
    fn finish(mut self) -> Vec<OpenImage> {
        for (img, _) in self.images.iter_mut().zip(&self.retired).filter(|(_, retired)| !**retired) {
            if let Err(e) = crate::storage::flush(img) {
                tracing::error!(image = %img.name, error = %e, "flush at shutdown failed");
            }
        }
        for c in &mut self.conns {
            flush(c);
        }
        self.conns.clear();
        self.images
    }
}

/// Whether a command's data-out is data for the medium (not UNMAP's parameter list).
fn writes_data(opcode: u8) -> bool {
    scsi::opcodes::writes_medium(opcode) && opcode != scsi::opcodes::op::UNMAP
}

/// Moves queued messages into a ring while it has room; returns whether any moved.
fn drain_into<T>(queue: &mut VecDeque<T>, ring: &mut Producer, msg: impl Fn(&T) -> Message) -> Result<u64, RingError> {
    let mut moved = 0;
    while let Some(m) = queue.front() {
        if !ring.push(&msg(m))? {
            break;
        }
        queue.pop_front();
        moved += 1;
    }
    Ok(moved)
}

/// Moves queued STATs and BUFs into the rings and rings the node's doorbell if it is not
/// polling. Returns whether anything moved.
fn flush(c: &mut Conn) -> bool {
    let stats = drain_into(&mut c.out_stat, &mut c.stat, |s| Message::Stat(*s));
    let bufs = drain_into(&mut c.out_buf, &mut c.buf, |b| Message::Buf(*b));
    let moved = match (stats, bufs) {
        (Ok(a), Ok(b)) => {
            c.unanswered -= a;
            c.ring_stats.commands_answered(a);
            a + b > 0
        }
        (Err(e), _) | (_, Err(e)) => {
            c.kill(e.label(), e.to_string());
            return true;
        }
    };
    if moved {
        let ring = !(c.stat.consumer_polling() && c.buf.consumer_polling());
        c.ring_stats.doorbell(ring);
        if ring {
            if let Err(e) = c.to_node.ring() {
                c.kill("doorbell_failed", format!("ringing the node's doorbell failed: {e}"));
            }
        }
    }
    moved
}
