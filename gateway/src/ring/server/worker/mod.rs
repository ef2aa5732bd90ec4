//! A worker: serves a share of the queue pairs (takes CMDs from the rings, checks them
//! against the node's map, answers with STATs and BUFs) and owns a share of the images
//! (runs their commands on their engines, whoever sent them). Plain READs and WRITEs of a
//! RAM image it owns for a queue pair it serves take the direct path: decoded and executed
//! as usual, then copied by the worker itself and answered with the rest of their batch.
//! It polls while there is work and sleeps on the doorbells when there is none.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Metrics, Transfer};
use scsi::{Completion, DataIn, Nexus, Status};

use super::admission::{self, Closed, Decision, QueueState, TranDecision};
use super::conn::{control_stat, flush, lun_map, stat_from, Conn, MappedLun, Pending, Ticket};
use super::mesh::{Done, Job, Mesh, Message, Source};
use super::owned::{scatter, Owned};
use super::{control_result, Accepted, Capacities, Control, ServerOptions};
use crate::config::Access;
use crate::engine::host::UringHost;
use crate::lun::{Direct, DirectRead};
use crate::ring::backoff::PollBackoff;
use crate::ring::proto::{self, Buf, Cmd, ControlOp, Message as RingMessage, Region, ReportEntry, Segments};
use crate::ring::shm::{Doorbell, PeerSlice};
use crate::ring::spsc::RingId;
use crate::storage::OpenImage;

mod sleep;

/// A command of the queue pair being served that took the direct path
/// ([`Owned::start_direct`]): answered once the batch of CMDs it came in is taken.
#[derive(Debug)]
struct Local {
    image: usize,
    ticket: Ticket,
    state: LocalState,
    /// The staging buffers of a staged WRITE, given back once it is answered.
    staged: Vec<Region>,
}

#[derive(Debug)]
enum LocalState {
    /// A READ whose copy, into its region of the node's data area, waits for the end of
    /// the batch, so the reads of a batch find their data on its way into the cache.
    Read(DirectRead, Region),
    /// Finished, with the data-in bytes that arrived.
    Done(Completion, usize),
}

impl LocalState {
    /// The READ still to copy, if this is one, leaving it done with nothing moved until the
    /// copy says otherwise.
    fn take_read(&mut self) -> Option<(DirectRead, Region)> {
        match std::mem::replace(self, LocalState::Done(Completion::good(), 0)) {
            LocalState::Read(read, region) => Some((read, region)),
            done => {
                *self = done;
                None
            }
        }
    }
}

/// What a worker starts with.
pub(super) struct Setup {
    /// Its place among the workers.
    pub index: usize,
    /// The images it owns, as (global index, image).
    pub images: Vec<(usize, OpenImage)>,
    /// Queue pairs the listener placed on it.
    pub incoming: Receiver<Accepted>,
    /// Requests from the control plane.
    pub control: Receiver<Control>,
    /// Messages from the other workers.
    pub inbox: Receiver<Message>,
    pub mesh: Arc<Mesh>,
    pub caps: Capacities,
    pub stop: Arc<AtomicBool>,
}

pub(super) struct Worker {
    index: usize,
    owned: Owned,
    conns: Vec<Conn>,
    incoming: Receiver<Accepted>,
    control: Receiver<Control>,
    inbox: Receiver<Message>,
    /// Messages taken from the inbox while deciding whether to sleep.
    early: VecDeque<Message>,
    mesh: Arc<Mesh>,
    caps: Capacities,
    wake: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
    spin: Duration,
    /// Whether spinning after activity has been finding more work before `spin` ran out.
    backoff: PollBackoff,
    /// Queue pairs this worker has opened; ids are `index + n * k` for k ≥ 1, so the id
    /// says which worker serves it and none is 0 (the gateway's own nexus).
    opened: u64,
    /// Jobs sent to other workers and not yet done.
    sent: usize,
    /// Whether the rings have had their last look after the stop.
    last_pass: bool,
    done: Vec<Done>,
    /// When the CMDs of the batch being taken were seen (read once per batch).
    batch_ns: Option<u64>,
    metrics: Arc<Metrics>,
    /// The worker's io_uring: its engines' I/O, and its sleep on doorbells and sockets.
    /// `None` where io_uring is unavailable; the worker then sleeps in `poll(2)`.
    host: Option<Arc<UringHost>>,
    /// Whether the poll on `wake` is armed in `host`.
    wake_armed: bool,
    /// The last queue-pair token handed out.
    tokens: u32,
    /// The worker's own completions, kept to reuse the allocation.
    events: Vec<(u32, i32)>,
    /// Direct-path commands of the queue pair being served, in the order they came.
    local: Vec<Local>,
}

/// Idle rounds between readings of the clock while spinning.
const SPIN_UNTIMED: u32 = 32;
/// Token of the poll on the worker's wake doorbell; queue pairs' tokens start at 1.
const WAKE_TOKEN: u32 = 0;
/// Token of SQEs whose completions mean nothing (poll cancellations).
const IGNORED_TOKEN: u32 = u32::MAX;
/// SQ entries of a worker's ring.
const HOST_ENTRIES: u32 = 256;

impl Worker {
    /// Runs on the worker's own thread: its io_uring belongs to the thread that makes it.
    pub(super) fn new(s: Setup, opts: &ServerOptions) -> Worker {
        let host = match UringHost::new(HOST_ENTRIES) {
            Ok(_) if !opts.worker_ring => None,
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                tracing::info!(worker = s.index, error = %e, "no io_uring for the worker; it sleeps in poll(2)");
                None
            }
        };
        Worker {
            index: s.index,
            owned: Owned::new(s.images, host.clone()),
            host,
            wake_armed: false,
            tokens: 0,
            events: Vec::new(),
            local: Vec::new(),
            conns: Vec::new(),
            incoming: s.incoming,
            control: s.control,
            inbox: s.inbox,
            early: VecDeque::new(),
            wake: s.mesh.wake(s.index).clone(),
            mesh: s.mesh,
            caps: s.caps,
            stop: s.stop,
            spin: opts.spin,
            backoff: PollBackoff::default(),
            opened: 0,
            sent: 0,
            last_pass: false,
            done: Vec::new(),
            batch_ns: None,
            metrics: opts.metrics.clone(),
        }
    }

    /// Serves until the server stops and every worker is idle; returns the images it owns
    /// as (global index, image), flushed.
    pub(super) fn run(mut self) -> Vec<(usize, OpenImage)> {
        // A worker that has seen nothing yet sleeps at once rather than spinning: with a
        // long spin window, idle workers would take cores from busy ones.
        let mut last_activity = Instant::now().checked_sub(self.spin).unwrap_or_else(Instant::now);
        // Rounds without progress; the clock is read only every few of them, as reading it
        // costs more than a look at the rings.
        let mut idle_rounds = 1u32;
        let mut loops = 0u64;
        // This idle spell's spin, and whether the worker has slept in it yet.
        let mut spell_spin = self.spin;
        let mut slept = true;
        loop {
            loops += 1;
            let stopping = self.stop.load(Ordering::SeqCst);
            // New queue pairs and control-plane requests can wait a few rounds while the
            // rings are busy; an idle worker looks every round.
            if idle_rounds > 0 || loops.is_multiple_of(64) {
                while let Ok(a) = self.incoming.try_recv() {
                    self.opened += 1;
                    let id = self.opened * self.mesh.workers() as u64 + self.index as u64;
                    // Tokens wrap only after 2^31 queue pairs, long after their polls ended.
                    self.tokens = self.tokens % (u32::MAX / 2 - 1) + 1;
                    self.conns.push(Conn::new(id, self.tokens, a, &self.metrics, self.host.as_ref()));
                }
                while let Ok(c) = self.control.try_recv() {
                    self.apply(c);
                }
            }
            let mut progress = self.take_messages();
            if !stopping {
                for i in 0..self.conns.len() {
                    progress |= self.service(i);
                }
            } else if !self.last_pass {
                // Commands already in the rings when the stop came are taken and answered;
                // none after.
                self.last_pass = true;
                for i in 0..self.conns.len() {
                    for _ in 0..self.conns[i].slots / 64 + 1 {
                        if !self.service(i) {
                            break;
                        }
                    }
                }
                progress = true;
            }
            progress |= self.owned.reap(&mut self.done);
            self.deliver();
            for c in &mut self.conns {
                progress |= flush(c);
            }
            if loops.is_multiple_of(1024) {
                self.check_sockets(Duration::ZERO);
            }
            if self.conns.iter().any(|c| c.dead.is_some()) {
                self.close_dead();
            }
            let busy = self.owned.busy() + self.sent;
            if stopping && self.mesh.all_idle(self.index, busy == 0) {
                return self.finish();
            }
            if progress {
                // Work found by the timed spin (past the first few untimed rounds, which
                // cost next to nothing) is what the spin is for.
                if idle_rounds >= SPIN_UNTIMED && !slept {
                    self.backoff.paid();
                }
                idle_rounds = 0;
                slept = false;
                continue;
            }
            if idle_rounds == 0 {
                last_activity = Instant::now();
                // Spinning pays where the next command or completion comes within the
                // spin (small I/O, a polling node); where it does not (large transfers),
                // the spin only takes a core the transfers need, so it is skipped.
                // Nor is there a spin while this worker's own backend I/O is in flight and
                // its completion will wake the worker (on a virtio disk at QD32, spinning
                // cost 10–25% of the IOPS).
                let waiting_on_backend = self.owned.busy() > 0 && self.owned.signalled();
                spell_spin = self.backoff.spin_for(self.spin, waiting_on_backend);
            }
            idle_rounds = idle_rounds.wrapping_add(1);
            if !idle_rounds.is_multiple_of(SPIN_UNTIMED) {
                std::hint::spin_loop();
                continue;
            }
            if last_activity.elapsed() < spell_spin {
                if idle_rounds.is_multiple_of(1024) {
                    // Still polling, but a node or another worker on this core may run
                    // first: without it, a worker waiting on another that shares its core
                    // would spin out its whole time slice.
                    std::thread::yield_now();
                }
                continue;
            }
            if !slept && !spell_spin.is_zero() {
                self.backoff.missed();
            }
            slept = true;
            if busy > 0 {
                // I/O is in flight: sleep until a backend finishes some (its completion
                // eventfd), a doorbell rings or another worker answers; engines that
                // cannot signal are napped on instead.
                let signalled = self.owned.signalled();
                self.sleep(if signalled { Duration::from_millis(100) } else { Duration::from_micros(20) });
            } else if stopping {
                // Other workers are finishing: look again soon.
                self.sleep(Duration::from_millis(1));
            } else {
                self.sleep(Duration::from_millis(500));
            }
        }
    }

    /// Drops the queue pairs that died, and tells the owners of their images to forget
    /// their nexuses.
    fn close_dead(&mut self) {
        // Count them off first: dropping a queue pair (unmapping its areas, unpinning its
        // fixed buffer) can take milliseconds, and a node that reconnects meanwhile must
        // not find this worker looking busier than it is and be placed away from its image.
        self.mesh.closed(self.index, self.conns.iter().filter(|c| c.dead.is_some()).count());
        let mut gone = Vec::new();
        let host = self.host.clone();
        self.conns.retain(|c| {
            if c.dead.is_some() {
                // Armed polls hold the fds open in the kernel: cancel them. Their CQEs
                // (ECANCELED) then name a token no queue pair has, and are dropped.
                if let Some(h) = &host {
                    for (armed, token) in [(c.bell_armed, 2 * c.token), (c.sock_armed, 2 * c.token + 1)] {
                        if armed {
                            if let Err(e) = h.poll_remove(token, IGNORED_TOKEN) {
                                tracing::warn!(error = %e, "could not cancel a closed queue pair's poll");
                            }
                        }
                    }
                }
                let mut images: Vec<usize> = c.map.values().map(|l| l.image).collect();
                images.sort_unstable();
                images.dedup();
                gone.extend(images.into_iter().map(|image| (image, c.id)));
            }
            c.dead.is_none()
        });
        for (image, nexus) in gone {
            self.send_to_owner(image, Message::Forget { image, nexus });
        }
    }

    /// Handles what other workers sent; returns whether there was anything.
    fn take_messages(&mut self) -> bool {
        let mut any = false;
        while let Some(m) = self.early.pop_front().or_else(|| self.inbox.try_recv().ok()) {
            any = true;
            self.handle(m);
        }
        any
    }

    /// Acts on a message from another worker, or on one this worker sent itself.
    fn handle(&mut self, m: Message) {
        match m {
            Message::Job(job) => self.owned.start(*job, &mut self.done),
            Message::Done(done) => {
                self.sent -= 1;
                self.complete(done, metrics::now_ns());
            }
            Message::Reset { image } => self.owned.reset(image),
            Message::Forget { image, nexus } => self.owned.forget(image, nexus),
        }
    }

    /// Hands a message about `image` to the worker that owns it: this one, or another.
    fn send_to_owner(&mut self, image: usize, m: Message) {
        let owner = self.mesh.owner(image);
        if owner == self.index {
            self.handle(m);
        } else {
            self.mesh.send(owner, m);
        }
    }

    /// Starts a job on its image: here and now when this worker owns it, otherwise on the
    /// owner, counted until its answer comes back.
    fn start_job(&mut self, mut job: Job) {
        let owner = self.mesh.owner(job.image);
        if owner == self.index {
            self.owned.start(job, &mut self.done);
        } else {
            // The data area's fixed buffer is registered in this worker's ring only.
            job.fixed = None;
            self.sent += 1;
            self.mesh.send(owner, Message::Job(Box::new(job)));
        }
    }

    /// Sends each finished job to the worker that serves its queue pair.
    fn deliver(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        // One clock reading for the batch: these jobs finished together.
        let now_ns = if done.is_empty() { 0 } else { metrics::now_ns() };
        for d in done.drain(..) {
            let to = self.mesh.origin(d.tag);
            if to == self.index {
                self.complete(d, now_ns);
            } else {
                self.mesh.send(to, Message::Done(d));
            }
        }
        self.done = done;
    }

    fn apply(&mut self, c: Control) {
        match c {
            Control::Grow { image, bytes, reply } => {
                let result = match self.owned.get_mut(image) {
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
            Control::AddImage { index, image, reply } => {
                tracing::info!(pan = %image.pan, image = %image.name, path = %image.path.display(), "LUN added");
                self.owned.insert(index, *image);
                let _ = reply.send(Ok(()));
            }
            Control::Retire { image, reply } => {
                let _ = reply.send(self.owned.retire(image));
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
                            c.dead = Some(Closed::NodeDeleted);
                        }
                    }
                }
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Takes up to 64 CMDs, then up to 64 TRANs, from a queue pair, and answers those that
    /// took the direct path.
    fn service(&mut self, i: usize) -> bool {
        let progress = self.take(i);
        self.settle_local(i);
        progress
    }

    fn take(&mut self, i: usize) -> bool {
        let mut progress = false;
        self.batch_ns = None;
        for ring in [RingId::Cmd, RingId::Tran] {
            for _ in 0..64 {
                let c = &mut self.conns[i];
                let popped = match ring {
                    RingId::Cmd => c.cmd.pop(c.data.len() as u64),
                    _ => c.tran.pop(0),
                };
                match popped {
                    Ok(Some(RingMessage::Cmd(cmd))) => self.on_cmd(i, cmd),
                    Ok(Some(RingMessage::Tran(t))) => self.on_tran(i, t.seq, t.index),
                    Ok(Some(_)) => unreachable!("the consumer checks kinds"),
                    Ok(None) => break,
                    Err(e) => {
                        self.conns[i].kill(e.into());
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

    /// Admits a CMD ([`admission::admit`]) and carries out the decision.
    fn on_cmd(&mut self, i: usize, cmd: Cmd) {
        let c = &mut self.conns[i];
        // Outstanding: accepted and unanswered, answered but queued, and answered in the
        // STAT ring but not yet consumed by the node. The node's STAT cursor is read only
        // when the last value seen says the limit may be reached: it sits on a line the
        // node writes for every STAT it takes.
        let queued = c.pending.len() + self.local.len() + c.out_stat.len();
        let in_ring = if queued + c.stat.unconsumed_upper() as usize >= c.slots as usize {
            match c.stat.room() {
                Ok(room) => c.slots - room,
                Err(e) => return c.kill(e.into()),
            }
        } else {
            0
        };
        let q = QueueState {
            slots: c.slots,
            outstanding: queued + in_ring as usize,
            seq_in_use: c.pending.contains_key(&cmd.seq) || self.local.iter().any(|l| l.ticket.seq == cmd.seq),
            bytes_in_flight: c.bytes_in_flight,
            data_area: c.data.len() as u64,
        };
        let expected = cmd.segments.total();
        let (lun, data_out, data_in) = match admission::admit(&cmd, q, &c.map, c.luns_of_target(cmd.target)) {
            Decision::Kill(why) => return c.kill(why),
            Decision::Control(op) => {
                c.unanswered += 1;
                return self.on_control(i, cmd, op);
            }
            Decision::Answer { completion, counted } => {
                c.unanswered += 1;
                if let Some(lun) = counted {
                    lun.stats.answered(cmd.cdb()[0], completion.status as u8, Transfer::None);
                }
                let n = match (&completion.data_in, cmd.flags & proto::FLAG_DATA_IN != 0) {
                    (DataIn::Bytes(data), true) => scatter(&c.data, &cmd.segments, data),
                    _ => Ok(0),
                };
                return match n {
                    Ok(n) => c.answer(stat_from(cmd.seq, &completion, n as u32, expected)),
                    Err(e) => c.kill(e.into()),
                };
            }
            Decision::Stage(lun) => {
                c.unanswered += 1;
                let lun = lun.clone();
                let Some(staged) = admission::stage(cmd.segments.as_slice(), &mut c.staging_alloc) else {
                    let busy = admission::busy();
                    lun.stats.answered(cmd.cdb()[0], busy.status as u8, Transfer::None);
                    return c.answer(stat_from(cmd.seq, &busy, 0, expected));
                };
                c.bytes_in_flight += expected;
                for (index, s) in staged.iter().enumerate() {
                    let segments = Segments::new(&[*s]).expect("one segment fits");
                    c.out_buf.push_back(RingMessage::Buf(Buf { seq: cmd.seq, index: index as u16, segments }));
                }
                let received = vec![false; staged.len()];
                let (seq, no_data) = (cmd.seq, cmd.segments.as_slice().is_empty());
                c.pending.insert(seq, Pending::Staged { lun, cmd: Box::new(cmd), staged, received });
                if no_data {
                    self.submit_staged(i, seq);
                }
                return;
            }
            Decision::Execute { lun, data_out, data_in } => (lun.clone(), data_out, data_in),
        };
        c.unanswered += 1;
        c.bytes_in_flight += expected;
        let lun = if data_out || data_in {
            match self.start_local(i, lun, &cmd, data_out, Vec::new()) {
                Ok(()) => return,
                Err((lun, _)) => lun,
            }
        } else {
            lun
        };
        let c = &mut self.conns[i];
        let source = if data_out {
            Source::Out(c.data.clone())
        } else if data_in {
            Source::In(c.data.clone())
        } else {
            Source::None
        };
        self.submit(i, lun, cmd, source, Vec::new());
    }

    fn submit(&mut self, i: usize, lun: MappedLun, cmd: Cmd, source: Source, staged: Vec<Region>) {
        // One clock reading per batch of CMDs: they sat in the ring together.
        let started_ns = *self.batch_ns.get_or_insert_with(metrics::now_ns);
        let c = &mut self.conns[i];
        let data_out = matches!(source, Source::Out(_) | Source::Staged { .. });
        c.pending
            .insert(cmd.seq, Pending::Backend { ticket: Ticket::new(&cmd, data_out, started_ns, lun.stats), staged });
        let job = Job {
            fixed: c.data_fixed.as_ref().map(|&(_, index)| index),
            tag: (c.id << 32) | u64::from(cmd.seq),
            image: lun.image,
            luns: c.luns_of_target(cmd.target).clone(),
            cmd,
            source,
        };
        self.start_job(job);
    }

    fn on_tran(&mut self, i: usize, seq: u32, index: u16) {
        let c = &mut self.conns[i];
        let received = match c.pending.get_mut(&seq) {
            Some(Pending::Staged { received, .. }) => Some(&mut received[..]),
            _ => None,
        };
        match admission::admit_tran(seq, index, received) {
            Ok(TranDecision::Wait) => {}
            Ok(TranDecision::Run) => self.submit_staged(i, seq),
            Err(why) => c.kill(why),
        }
    }

    fn submit_staged(&mut self, i: usize, seq: u32) {
        let c = &mut self.conns[i];
        let Some(Pending::Staged { lun, cmd, staged, .. }) = c.pending.remove(&seq) else { return };
        let (lun, staged) = match self.start_local(i, lun, &cmd, true, staged) {
            Ok(()) => return,
            Err(back) => back,
        };
        let c = &mut self.conns[i];
        let source = Source::Staged { mem: c.staging.clone(), regions: staged.clone() };
        self.submit(i, lun, *cmd, source, staged);
    }

    /// Runs a command on the direct path when it can take it ([`Owned::start_direct`]):
    /// a plain READ or WRITE on an in-memory image this worker owns, its data in one region
    /// of the node's data area or, for a staged WRITE, in one staging buffer (`staged`).
    /// Otherwise hands back the LUN and the staging buffers untouched.
    fn start_local(
        &mut self,
        i: usize,
        lun: MappedLun,
        cmd: &Cmd,
        data_out: bool,
        staged: Vec<Region>,
    ) -> Result<(), (MappedLun, Vec<Region>)> {
        if self.mesh.owner(lun.image) != self.index {
            return Err((lun, staged));
        }
        let c = &self.conns[i];
        let nexus = Nexus { id: c.id, luns: c.luns_of_target(cmd.target) };
        let direct = if staged.is_empty() {
            self.owned.start_direct(lun.image, &nexus, cmd.cdb(), &c.data, &cmd.segments, data_out)
        } else {
            match Segments::new(&staged) {
                Some(regions) => self.owned.start_direct(lun.image, &nexus, cmd.cdb(), &c.staging, &regions, data_out),
                None => Direct::Declined,
            }
        };
        let state = match direct {
            Direct::Declined => return Err((lun, staged)),
            Direct::Done(completion) => LocalState::Done(completion, 0),
            // Only unstaged commands read, from their one region.
            Direct::Read(read) => match cmd.segments.as_slice() {
                [region] => LocalState::Read(read, *region),
                _ => unreachable!("the direct path takes commands of one region"),
            },
        };
        let started_ns = *self.batch_ns.get_or_insert_with(metrics::now_ns);
        let ticket = Ticket::new(cmd, data_out, started_ns, lun.stats);
        self.local.push(Local { image: lun.image, ticket, state, staged });
        Ok(())
    }

    /// Copies the data of the direct-path READs taken from queue pair `i`, and answers every
    /// direct-path command it sent, in order.
    fn settle_local(&mut self, i: usize) {
        if self.local.is_empty() {
            return;
        }
        let mut local = std::mem::take(&mut self.local);
        for k in 0..local.len() {
            // While one read copies, the next one's data is fetched.
            if let Some(Local { image, state: LocalState::Read(next, _), .. }) = local.get(k + 1) {
                self.owned.prefetch_read(*image, next);
            }
            let l = &mut local[k];
            if let Some((read, region)) = l.state.take_read() {
                let mut none = [];
                let dst = self.conns[i].data.slice(region.offset, u64::from(region.len));
                let dst = dst.unwrap_or_else(|_| PeerSlice::from_mut(&mut none));
                let (completion, moved) = self.owned.finish_read(l.image, read, dst);
                l.state = LocalState::Done(completion, moved);
            }
        }
        // One clock reading for the batch: these commands finished together.
        let now_ns = metrics::now_ns();
        let c = &mut self.conns[i];
        for l in local.drain(..) {
            let LocalState::Done(completion, moved) = l.state else { unreachable!("every read was copied above") };
            c.bytes_in_flight -= l.ticket.expected;
            for s in l.staged {
                c.staging_alloc.free(s);
            }
            c.answer(l.ticket.answer(&completion, moved, now_ns));
        }
        self.local = local;
    }

    fn on_control(&mut self, i: usize, cmd: Cmd, op: ControlOp) {
        // Commands ahead of it are answered first: an ABORT TASK then finds them done.
        self.settle_local(i);
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
                    c.answer(stat_from(cmd.arg, &aborted, 0, 0));
                    control_stat(cmd.seq, control_result::DONE, 0)
                }
                Some(Pending::Backend { .. }) => control_stat(cmd.seq, control_result::IN_PROGRESS, 0),
                None => control_stat(cmd.seq, control_result::NOT_FOUND, 0),
            },
            ControlOp::LunReset => match c.map.get(&(cmd.target, cmd.lun)) {
                Some(lun) => {
                    // The owner takes it before any later command of this queue pair.
                    let image = lun.image;
                    self.send_to_owner(image, Message::Reset { image });
                    control_stat(cmd.seq, control_result::DONE, 0)
                }
                None => control_stat(cmd.seq, control_result::NOT_FOUND, 0),
            },
            ControlOp::ReportConfig => {
                let mut entries: Vec<_> = c.map.iter().collect();
                entries.sort_by_key(|(k, _)| **k);
                let caps = self.caps.lock().unwrap_or_else(|p| p.into_inner());
                let report: Vec<ReportEntry> = entries
                    .into_iter()
                    .map(|(&(target, lun_id), lun)| {
                        let (block_size, blocks) = caps.get(lun.image).copied().unwrap_or_default();
                        ReportEntry { target, lun: lun_id, read_only: lun.access == Access::Ro, block_size, blocks }
                    })
                    .collect();
                drop(caps);
                let bytes = ReportEntry::emit_list(&report);
                match scatter(&c.data, &cmd.segments, &bytes) {
                    Ok(n) => {
                        let mut s = control_stat(cmd.seq, control_result::DONE, n as u32);
                        s.residual = (bytes.len() - n) as u32;
                        s
                    }
                    Err(e) => return c.kill(e.into()),
                }
            }
        };
        let c = &mut self.conns[i];
        c.answer(reply);
    }

    /// Turns a finished job into its STAT. Jobs of queue pairs that are gone are dropped.
    fn complete(&mut self, d: Done, now_ns: u64) {
        let (conn_id, seq) = (d.tag >> 32, d.tag as u32);
        let Some(c) = self.conns.iter_mut().find(|c| c.id == conn_id) else { return };
        let Some(Pending::Backend { ticket, staged }) = c.pending.remove(&seq) else { return };
        c.bytes_in_flight -= ticket.expected;
        for s in staged {
            c.staging_alloc.free(s);
        }
        if let Some(fault) = d.fault {
            return c.kill(fault.into());
        }
        c.answer(ticket.answer(&d.completion, d.transferred, now_ns));
    }

    /// Finishes shutdown: flush the images this worker owns, close its queue pairs.
    fn finish(mut self) -> Vec<(usize, OpenImage)> {
        for c in &mut self.conns {
            flush(c);
        }
        self.conns.clear();
        self.owned.finish()
    }
}
