//! A worker: serves a share of the queue pairs (takes CMDs from the rings, checks them
//! against the node's map, answers with STATs and BUFs) and owns a share of the images
//! (runs their commands on their engines, whoever sent them). It polls while there is work
//! and sleeps on the doorbells when there is none.
//!
//! This file is the run loop. A CMD's way through the worker is in [`commands`], the
//! direct path for RAM images in [`direct`], control requests (the control plane's and the
//! nodes') in [`control`], and sleeping in [`sleep`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Metrics;

use super::conn::{flush, Conn};
use super::mesh::{Done, Job, Mesh, Message};
use super::owned::Owned;
use super::{Accepted, Capacities, Control, ServerOptions};
use crate::engine::host::UringHost;
use crate::lun::OpenImage;
use crate::ring::backoff::PollBackoff;
use crate::ring::shm::Doorbell;

mod commands;
mod control;
mod direct;
mod sleep;

use self::direct::Local;

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
    /// The last attachment-poll token handed out, below [`ATTACHED_TOKENS`].
    attached_tokens: u32,
    /// The worker's own completions, kept to reuse the allocation.
    events: Vec<(u32, i32)>,
    /// Direct-path commands of the queue pair being served, in the order they came.
    local: Vec<Local>,
    /// Barriers of fences ([`Control::Barrier`]): the commands in flight when each came,
    /// and who to answer once they have all finished.
    barriers: Vec<(Vec<(usize, u32)>, super::Reply)>,
}

/// Idle rounds between readings of the clock while spinning.
const SPIN_UNTIMED: u32 = 32;
/// Token of the poll on the worker's wake doorbell; queue pairs' tokens start at 1.
const WAKE_TOKEN: u32 = 0;
/// Token of SQEs whose completions mean nothing (poll cancellations).
const IGNORED_TOKEN: u32 = u32::MAX;
/// Tokens from here on name polls of attachments' sockets, each armed with a fresh one
/// (a poll cancelled to change its mask may still answer with its old token); queue pairs'
/// tokens stay below.
const ATTACHED_TOKENS: u32 = 1 << 31;
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
            attached_tokens: 0,
            events: Vec::new(),
            local: Vec::new(),
            barriers: Vec::new(),
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
                    // Tokens wrap only after 2^30 queue pairs, long after their polls ended;
                    // twice a token stays below the attachments' tokens.
                    self.tokens = self.tokens % (ATTACHED_TOKENS / 2 - 1) + 1;
                    self.conns.push(Conn::new(id, self.tokens, a, &self.metrics, &self.caps, self.host.as_ref()));
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
            if !self.barriers.is_empty() {
                self.pass_barriers();
            }
            self.deliver();
            for c in &mut self.conns {
                progress |= flush(c);
            }
            if !stopping {
                // Front-ends inside the gateway answer their peers from the STATs just
                // written, and queue their peers' next commands for the next pass.
                progress |= self.pump_attached();
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

    /// Answers the barriers whose commands have all finished.
    pub(super) fn pass_barriers(&mut self) {
        let owned = &self.owned;
        self.barriers.retain(|(seen, reply)| {
            let passed = owned.passed(seen);
            if passed {
                let _ = reply.send(Ok(()));
            }
            !passed
        });
    }

    /// Drops the queue pairs that died, and tells the owners of their images to forget
    /// their nexuses.
    pub(super) fn close_dead(&mut self) {
        // Count them off first: dropping a queue pair (unmapping its areas, unpinning its
        // fixed buffer) can take milliseconds, and a node that reconnects meanwhile must
        // not find this worker looking busier than it is and be placed away from its image.
        self.mesh.closed(self.index, self.conns.iter().filter(|c| c.dead.is_some()).count());
        let mut gone = Vec::new();
        let host = self.host.clone();
        self.conns.retain_mut(|c| {
            if c.dead.is_some() {
                // Armed polls hold the fds open in the kernel: cancel them. Their CQEs
                // (ECANCELED) then name a token no queue pair has, and are dropped.
                if let Some(h) = &host {
                    let attached = c.attached_poll.map(|(token, _)| (true, token));
                    let polls = [(c.bell_armed, 2 * c.token), (c.sock_armed, 2 * c.token + 1)];
                    for (armed, token) in polls.into_iter().chain(attached) {
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
                c.detach();
            }
            c.dead.is_none()
        });
        for (image, nexus) in gone {
            self.send_to_owner(image, Message::Forget { image, nexus });
        }
    }

    /// Handles what other workers sent; returns whether there was anything.
    pub(super) fn take_messages(&mut self) -> bool {
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

    /// Takes up to 64 CMDs, then up to 64 TRANs, from a queue pair, and answers those that
    /// took the direct path.
    fn service(&mut self, i: usize) -> bool {
        let progress = self.take(i);
        self.settle_local(i);
        progress
    }

    /// Finishes shutdown: flush the images this worker owns, close its queue pairs.
    fn finish(mut self) -> Vec<(usize, OpenImage)> {
        for c in &mut self.conns {
            flush(c);
            // Attachments pass the last answers on to their peers before they close.
            c.pump(false);
            c.detach();
        }
        self.conns.clear();
        self.owned.finish()
    }
}
