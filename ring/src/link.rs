//! A multi-threaded initiator: several queue pairs, each with a completion thread, so a
//! front-end thread (a FUSE thread, a TCMU device) submits a command and goes back for the
//! next request while the command's callback runs when the STAT arrives.
//!
//! Every submitted command completes exactly once: with the gateway's response, or with a
//! [`LinkError`] when the gateway stays away longer than the reconnect timeout, does not
//! answer within the I/O timeout, or the mount is closing.
//!
//! A queue pair whose connection broke (the gateway restarted, or crashed) holds what it
//! had in flight and queues new commands, as a SCSI initiator does through a transport
//! outage (iSCSI's replacement timeout, multipath's queue_if_no_path), while it reconnects
//! in the background with backoff. Once back it sends the held commands again, in the order
//! they were first sent, their data-out copied from the old connection's data area, which
//! stays mapped until then. Only when the gateway has been gone for the whole reconnect
//! timeout, and no other queue pair of the link has got back meanwhile, does it fail them
//! with [`LinkError::Down`]. A gateway that is up but does not answer is another matter:
//! after the I/O timeout the queue pair fails what it had in flight.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use scsi::sense::parse_sense;
use scsi::Asc;

use super::handshake::LunInfo;
use super::initiator::{ConnectOptions, Data, Initiator, InitiatorError, Response};
use super::proto::Region;

mod area;
mod complete;
mod paths;
mod recover;
pub use area::{AreaData, Lent, LentData, Placed, Reservation};
use paths::{Moved, Router};
use recover::{take_held, Held};

/// Longest wait in `poll(2)` before the completion thread looks at timeouts and shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Data-out at least this large is copied into the data area without holding the lock.
const UNLOCKED_COPY: usize = 64 << 10;
/// How often each queue pair tells the gateway it is alive (a HEARTBEAT control message),
/// so a gateway watching for hung nodes (`failover = "auto"`) can tell an idle node from a
/// hung one.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Heartbeats left unanswered before no more are sent (the gateway is not answering).
const HEARTBEATS_UNANSWERED: usize = 4;
/// How often a command is sent again after BUSY or a unit attention before it fails.
const MAX_RETRIES: u8 = 8;

/// Why a command got no SCSI response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LinkError {
    /// The gateway is not connected.
    #[error("the gateway is not connected")]
    Down,
    /// The gateway did not answer within the I/O timeout.
    #[error("the gateway did not answer in time")]
    Timeout,
    /// The mount is being unmounted.
    #[error("the mount is closing")]
    Closing,
    /// The command cannot be expressed (larger than the data area, bad CDB).
    #[error("the command does not fit the queue pair")]
    TooLarge,
}

/// A finished command: the gateway's response and any data it returned.
#[derive(Debug)]
pub struct Outcome {
    /// The response, or why there is none.
    pub result: Result<Response, LinkError>,
    /// Data-in bytes (as many as were transferred).
    pub data: Vec<u8>,
    /// A unit attention said the capacity changed while this command was retried.
    pub capacity_changed: bool,
    /// For a command sent with [`QueuePair::submit_read_in_place`], the data-in where the
    /// gateway put it (and `data` is empty).
    pub in_area: Option<AreaData>,
    /// For a data-in command sent with [`QueuePair::submit_lent`], whether the data is in
    /// the lent pages (the response says how much was transferred) rather than in `data`
    /// (the command had to be sent again from elsewhere).
    pub lent: bool,
}

/// Runs once with the outcome, on a completion thread or the submitting one.
pub type Done = Box<dyn FnOnce(Outcome) + Send>;

/// One SCSI command.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// Virtual target.
    pub target: u16,
    /// Virtual LUN.
    pub lun: u16,
    /// CDB bytes.
    pub cdb: &'a [u8],
    /// Data-out bytes (a write), or empty.
    pub out: &'a [u8],
    /// Data-in bytes expected (a read), or 0.
    pub in_len: u32,
}

/// How to reach the gateway.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The gateway's socket.
    pub socket: PathBuf,
    /// The sockets of the other gateways of a redundant platform (`[[gateway]]`): each
    /// LUN's commands go to the gateway that serves it, and move when it goes.
    pub alternates: Vec<PathBuf>,
    /// PAN, node, credential, ring size and data area size.
    pub connect: ConnectOptions,
    /// Queue pairs to open.
    pub queues: usize,
    /// How long a command may stay unanswered before the queue pair is torn down.
    pub io_timeout: Duration,
    /// Send a command again after BUSY or a unit attention, as an operating system's SCSI
    /// layer does, instead of handing those to the caller.
    pub retry: bool,
    /// How long a queue pair holds I/O while the gateway is gone, reconnecting, before it
    /// fails it; zero fails it at once.
    pub reconnect_timeout: Duration,
}

/// The reconnect timeout `pangate mount` uses unless told otherwise.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the queue pairs of one link know of each other: how many are connected, and how
/// many reconnects there have been (a queue pair that sees a new one tries at once rather
/// than at the end of its backoff: the gateway is back).
#[derive(Debug, Default)]
struct Peers {
    connected: AtomicUsize,
    reconnects: AtomicU64,
}

/// The mount's queue pairs.
#[derive(Debug)]
pub struct Link {
    /// Every path's queue pairs, path after path.
    queues: Vec<Arc<QueuePair>>,
    /// Queue pairs per path: the first path's are the ones callers submit on.
    per_path: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next: AtomicUsize,
}

thread_local! {
    /// Which queue pair this thread submits on, chosen on its first command.
    static QUEUE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

impl Link {
    /// Connects every queue pair (failing if the gateway refuses or is not there) and
    /// starts their completion threads. With [`LinkOptions::alternates`], every gateway
    /// gets as many queue pairs; one that cannot be reached now is reconnected to in the
    /// background, and only when none can does this fail.
    pub fn connect(opts: LinkOptions) -> Result<Link, InitiatorError> {
        let sockets: Vec<PathBuf> =
            std::iter::once(opts.socket.clone()).chain(opts.alternates.iter().cloned()).collect();
        let peers: Vec<Arc<Peers>> = sockets.iter().map(|_| Arc::new(Peers::default())).collect();
        let router = (sockets.len() > 1).then(|| Arc::new(Router::new(peers.clone())));
        let mut paths = Vec::new();
        let mut threads = Vec::new();
        let mut first_error = None;
        for (path, socket) in sockets.iter().enumerate() {
            let opts = Arc::new(LinkOptions { socket: socket.clone(), ..opts.clone() });
            let mut queues = Vec::new();
            for index in 0..opts.queues.max(1) {
                let conn = match Initiator::connect(&opts.socket, &opts.connect) {
                    Ok(conn) => Some(conn),
                    // Another gateway may do meanwhile; this one is tried again in the background.
                    Err(e) if router.is_some() => {
                        tracing::warn!(socket = %socket.display(), error = %e, "gateway not reachable; retrying in the background");
                        first_error.get_or_insert(e);
                        None
                    }
                    Err(e) => return Err(e),
                };
                let qp = Arc::new_cyclic(|me| QueuePair {
                    index,
                    path,
                    opts: opts.clone(),
                    state: Mutex::new(State::new(conn.as_ref().map(|c| c.luns().to_vec()).unwrap_or_default())),
                    space: Condvar::new(),
                    closing: AtomicBool::new(false),
                    generation: AtomicU64::new(0),
                    me: me.clone(),
                    peers: peers[path].clone(),
                    router: router.clone(),
                });
                let fds = match conn {
                    Some(conn) => {
                        peers[path].connected.fetch_add(1, Ordering::AcqRel);
                        let fds = dup_wait_fds(&conn)?;
                        qp.lock().conn = Some(conn);
                        Some(fds)
                    }
                    None => {
                        qp.lock().down_since = Some(Instant::now());
                        None
                    }
                };
                let runner = qp.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("pangate-cq{path}.{index}"))
                        .spawn(move || runner.complete_loop(fds))?,
                );
                queues.push(qp);
            }
            paths.push(queues);
        }
        let per_path = paths[0].len();
        if let Some(router) = &router {
            router.set_queues(paths.iter().map(|qs| qs.iter().map(Arc::downgrade).collect()).collect());
        }
        let link = Link { queues: paths.concat(), threads: Mutex::new(threads), next: AtomicUsize::new(0), per_path };
        if peers.iter().all(|p| p.connected.load(Ordering::Acquire) == 0) {
            link.close();
            return Err(first_error.unwrap_or(InitiatorError::Refused("no gateway reachable".into())));
        }
        Ok(link)
    }

    /// The calling thread's queue pair: threads are spread over them round-robin on first
    /// use and keep theirs, so each FUSE thread drives its own queue pair.
    pub fn queue(&self) -> &QueuePair {
        let i = QUEUE.with(|q| match q.get() {
            Some(i) => i,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                q.set(Some(i));
                i
            }
        });
        &self.queues[i % self.per_path]
    }

    /// The queue pair [`Link::queue`] gives this thread, shared, for another thread that
    /// works on this one's behalf (replying to what it was asked).
    pub fn queue_shared(&self) -> Arc<QueuePair> {
        let q = self.queue();
        self.queues.iter().find(|c| std::ptr::eq(&***c, q)).cloned().expect("a queue of this link")
    }

    /// The node's LUNs as of the latest (re)connect to any gateway.
    pub fn luns(&self) -> Vec<LunInfo> {
        let known = self.queues.iter().map(|q| q.lock().luns.clone()).find(|l| !l.is_empty());
        known.unwrap_or_default()
    }

    /// Fails everything in flight with [`LinkError::Closing`], closes the connections and
    /// joins the completion threads.
    pub fn close(&self) {
        for q in &self.queues {
            q.closing.store(true, Ordering::Release);
            q.space.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

/// A command the gateway has not answered yet.
struct Pending {
    target: u16,
    lun: u16,
    cdb: Vec<u8>,
    data: Data,
    region: Option<Region>,
    done: Done,
    since: Instant,
    retries: u8,
    capacity_changed: bool,
    /// Leave the data-in in the area ([`QueuePair::submit_read_in_place`]).
    in_place: bool,
    /// Its data region is the caller's ([`QueuePair::submit_lent`]): never freed here.
    lent: bool,
    /// When a gateway first refused it for ALUA (it serves the LUN elsewhere).
    refused_since: Option<Instant>,
}

/// What a command carries besides its CDB: its data descriptor, the data-area pages it
/// holds (freed when it completes) and whether its data-in stays in the area.
struct Carried {
    data: Data,
    region: Option<Region>,
    in_place: bool,
    lent: bool,
}

struct State {
    conn: Option<Initiator>,
    pending: HashMap<u32, Pending>,
    luns: Vec<LunInfo>,
    /// Bumped whenever the connection is dropped, so a region allocated before is known
    /// to belong to a connection that is gone.
    generation: u64,
    /// Threads waiting on `space` for a slot or data-area pages.
    waiting: usize,
    backoff: Duration,
    next_attempt: Instant,
    /// Commands held since the connection broke, to send again once reconnected.
    held: Vec<Held>,
    /// When the connection broke, while it is down.
    down_since: Option<Instant>,
    /// The gateway answered the last reconnect attempt with a refusal: it is up, and does
    /// not want this node, so waiting longer for it helps nothing.
    refused: bool,
    /// [`Peers::reconnects`] as this queue pair last saw it.
    seen_reconnects: u64,
    /// Reconnect attempts that failed since the connection broke.
    failed_attempts: u64,
    /// Sequence numbers of heartbeats the gateway has not answered yet.
    heartbeats: Vec<u32>,
    /// When the next heartbeat is due.
    next_heartbeat: Instant,
    /// Commands leaving for another queue pair (or to wait here), handed over once the
    /// lock is let go: (path, when to send, command).
    moving: Vec<(usize, Instant, Moved)>,
    /// The data area of the connection that broke last, with its generation: pages placed
    /// in it just before are still readable.
    old_area: Option<(u64, Arc<crate::shm::SharedMemory>)>,
    /// Commands waiting here to be sent at their time: moved from another gateway's path,
    /// or paused after a transitioning answer.
    deferred: Vec<(Instant, Moved)>,
}

impl State {
    fn new(luns: Vec<LunInfo>) -> State {
        State {
            conn: None,
            pending: HashMap::new(),
            luns,
            generation: 0,
            waiting: 0,
            backoff: BACKOFF_MIN,
            next_attempt: Instant::now(),
            held: Vec::new(),
            down_since: None,
            refused: false,
            seen_reconnects: 0,
            failed_attempts: 0,
            heartbeats: Vec::new(),
            next_heartbeat: Instant::now() + HEARTBEAT_EVERY,
            moving: Vec::new(),
            deferred: Vec::new(),
            old_area: None,
        }
    }
}

/// One queue pair and its completion thread's shared state.
pub struct QueuePair {
    index: usize,
    opts: Arc<LinkOptions>,
    state: Mutex<State>,
    /// Signalled when ring slots or data-area space are freed, or the connection changes.
    space: Condvar,
    closing: AtomicBool,
    /// [`State::generation`], readable without the lock.
    generation: AtomicU64,
    /// This queue pair, for data-in handed out in place to give its pages back to.
    me: std::sync::Weak<QueuePair>,
    /// The link's other queue pairs of its path, as far as reconnecting goes.
    peers: Arc<Peers>,
    /// Which gateway socket (path) it is connected to.
    path: usize,
    /// With redundant gateways, where each LUN's commands go.
    router: Option<Arc<Router>>,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair").field("index", &self.index).finish_non_exhaustive()
    }
}

/// The fds a completion thread sleeps on, duplicated so it can wait without the lock:
/// the node's doorbell and the connection's socket.
type WaitFds = (OwnedFd, OwnedFd);

fn dup_wait_fds(conn: &Initiator) -> std::io::Result<WaitFds> {
    let (wake, sock) = conn.wait_fds();
    Ok((wake.try_clone_to_owned()?, sock.try_clone_to_owned()?))
}

impl QueuePair {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `space` until woken or `left` has passed, counted in `waiting` so that
    /// [`QueuePair::unlock_and_wake`] knows there is someone to wake.
    fn wait_for_space<'a>(&self, mut st: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        st.waiting += 1;
        let mut st = self.space.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        st.waiting -= 1;
        st
    }

    /// Unlocks, then wakes the threads waiting for a slot or data-area pages, which may be
    /// free now. Most calls (a completion, a release) find nobody waiting and skip the
    /// futex wake.
    fn unlock_and_wake(&self, st: MutexGuard<'_, State>) {
        let wake = st.waiting > 0;
        drop(st);
        if wake {
            self.space.notify_all();
        }
    }

    /// Sends a command; `done` runs exactly once with its outcome. Waits (up to the I/O
    /// timeout) only when the queue pair is full.
    pub fn submit(&self, cmd: Command<'_>, done: Done) {
        let _ = self.submit_polling(cmd, done, Duration::ZERO);
    }

    /// Sends a command like [`QueuePair::submit`]; then, when it is the only command in
    /// flight on this queue pair, polls for its STAT on the calling thread for up to `spin`
    /// and runs `done` here. A lone command otherwise completes by waking the completion
    /// thread, a thread wakeup that costs tens of microseconds on a virtual machine, more
    /// than the gateway takes for a 4 KiB I/O. For front-ends with nothing else waiting:
    /// the caller is busy for up to `spin`. Says whether it polled and how that went, so a
    /// front-end can stop polling where it does not pay.
    pub fn submit_polling(&self, cmd: Command<'_>, done: Done, spin: Duration) -> Polled {
        self.submit_from(cmd, false, done, spin)
    }

    /// Copies a command's data-out into the area (or makes room for its data-in) and sends it.
    fn submit_from(&self, cmd: Command<'_>, in_place: bool, done: Done, spin: Duration) -> Polled {
        if let Some(q) = self.routed_elsewhere(cmd.target, cmd.lun) {
            return q.submit_from(cmd, in_place, done, spin);
        }
        let need = cmd.out.len().max(cmd.in_len as usize);
        let Ok(need) = u32::try_from(need) else {
            return failed(done, LinkError::TooLarge);
        };
        if u64::from(need) > self.opts.connect.data_bytes {
            return failed(done, LinkError::TooLarge);
        }
        let mut deadline = Instant::now() + self.opts.io_timeout;
        let mut st = self.lock();
        let region = loop {
            if self.closing.load(Ordering::Acquire) {
                drop(st);
                return failed(done, LinkError::Closing);
            }
            if st.conn.is_none() {
                // The gateway is away: wait for the reconnect, within the hold.
                if !self.holding(&st) {
                    drop(st);
                    return failed(done, LinkError::Down);
                }
                st = self.wait_for_space(st, IDLE_WAIT);
                deadline = Instant::now() + self.opts.io_timeout;
                continue;
            }
            let conn = st.conn.as_mut().expect("checked above");
            if conn.outstanding() < conn.queue_depth() as usize {
                if need == 0 {
                    break None;
                }
                if let Some(r) = conn.alloc(need) {
                    break Some(r);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(st);
                return failed(done, LinkError::Timeout);
            }
            st = self.wait_for_space(st, left);
        };
        let data = match (region, cmd.out.is_empty()) {
            (None, _) => Data::None,
            (Some(r), true) => Data::In(r),
            (Some(r), false) => Data::Out { region: r, staged: false },
        };
        if let (Some(r), false) = (region, cmd.out.is_empty()) {
            // Large copies happen outside the lock, so the completion thread keeps reaping;
            // the region is ours alone until submitted.
            let unlocked = cmd.out.len() >= UNLOCKED_COPY;
            let area = st.conn.as_ref().expect("checked above").shared_data_area();
            let generation = st.generation;
            let copied = if unlocked {
                drop(st);
                let copied = area.write(r.offset, cmd.out);
                st = self.lock();
                copied
            } else {
                area.write(r.offset, cmd.out)
            };
            if st.generation != generation || st.conn.is_none() {
                // The connection broke during the copy: start over on the next one.
                drop(st);
                return self.submit_from(cmd, in_place, done, spin);
            }
            if let Err(e) = copied {
                st.conn.as_mut().expect("checked above").free(r);
                drop(st);
                tracing::warn!(queue = self.index, error = %e, "cannot fill the data area");
                return failed(done, LinkError::Down);
            }
        }
        self.send(st, cmd, Carried { data, region, in_place, lent: false }, done, spin)
    }

    /// Queues a command holding a ring slot (and its data-area pages in `region`), then
    /// polls for it when asked to.
    fn send(
        &self,
        mut st: MutexGuard<'_, State>,
        cmd: Command<'_>,
        carried: Carried,
        done: Done,
        spin: Duration,
    ) -> Polled {
        let Carried { data, region, in_place, lent } = carried;
        // A command that will be polled for: say so before the gateway can answer, or it
        // rings the completion thread, which may take the STAT first.
        let poll = !spin.is_zero() && st.pending.is_empty();
        let conn = st.conn.as_mut().expect("checked above");
        let pending = Pending {
            target: cmd.target,
            lun: cmd.lun,
            cdb: cmd.cdb.to_vec(),
            data,
            region,
            done,
            since: Instant::now(),
            retries: 0,
            capacity_changed: false,
            in_place,
            lent,
            refused_since: None,
        };
        if poll {
            conn.announce_polling();
        }
        match conn.submit(cmd.target, cmd.lun, cmd.cdb, data) {
            Ok(seq) => {
                st.pending.insert(seq, pending);
                if poll {
                    drop(st);
                    return match self.poll_for(seq, spin) {
                        true => Polled::Completed,
                        false => Polled::GaveUp,
                    };
                }
                Polled::NotTried
            }
            Err(e) => {
                if let Some(r) = region {
                    conn.free(r);
                }
                if poll {
                    // Nothing is in flight, so no STAT can have slipped in.
                    let _ = conn.arm_doorbell();
                }
                drop(st);
                let err = match e {
                    InitiatorError::Invalid(_) => LinkError::TooLarge,
                    _ => LinkError::Down,
                };
                tracing::warn!(queue = self.index, error = %e, "cannot submit");
                failed(pending.done, err)
            }
        }
    }

    /// Sends a command and waits for its outcome.
    pub fn execute(&self, cmd: Command<'_>) -> Outcome {
        self.execute_polling(cmd, Duration::ZERO).0
    }

    /// Sends a command and waits for its outcome, first polling for it for up to `spin`
    /// when it is alone in flight, as [`QueuePair::submit_polling`] does; also says what
    /// polling did.
    pub fn execute_polling(&self, cmd: Command<'_>, spin: Duration) -> (Outcome, Polled) {
        let (tx, rx) = mpsc::sync_channel(1);
        let polled = self.submit_polling(
            cmd,
            Box::new(move |o| {
                let _ = tx.send(o);
            }),
            spin,
        );
        // The completion thread answers within the I/O timeout; the margin covers its tick.
        let outcome = rx.recv_timeout(self.opts.io_timeout + Duration::from_secs(5)).unwrap_or(Outcome {
            result: Err(LinkError::Timeout),
            data: Vec::new(),
            capacity_changed: false,
            in_area: None,
            lent: false,
        });
        (outcome, polled)
    }
}

/// Whether a status asks for the command to be sent again: BUSY, TASK SET FULL, or a unit
/// attention (which the first command after a connect or a reset receives). The flag says
/// the attention was CAPACITY DATA HAS CHANGED.
pub fn retryable(status: u8, sense: &[u8]) -> Option<bool> {
    const CHECK_CONDITION: u8 = 0x02;
    const BUSY: u8 = 0x08;
    const TASK_SET_FULL: u8 = 0x28;
    match status {
        BUSY | TASK_SET_FULL => Some(false),
        CHECK_CONDITION => match parse_sense(sense) {
            Some((0x6, asc, _)) => Some(asc == Asc::CAPACITY_CHANGED),
            _ => None,
        },
        _ => None,
    }
}

fn take_all(st: &mut State, why: LinkError) -> Vec<(Done, Outcome)> {
    st.pending.drain().map(|(_, p)| (p.done, lost(why))).collect()
}

/// The outcome of a command that got no response.
fn lost(why: LinkError) -> Outcome {
    Outcome { result: Err(why), data: Vec::new(), capacity_changed: false, in_area: None, lent: false }
}

/// What [`QueuePair::submit_polling`] did after sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// It did not poll: polling was off, the command was not alone, or it failed at once.
    NotTried,
    /// The command was answered while it polled (its callback has run on the calling
    /// thread), or failed with its connection.
    Completed,
    /// The time ran out first; the completion thread finishes the command.
    GaveUp,
}

fn failed(done: Done, why: LinkError) -> Polled {
    fail(done, why);
    Polled::NotTried
}

fn fail(done: Done, why: LinkError) {
    done(lost(why));
}

fn run(finished: Vec<(Done, Outcome)>) {
    for (done, outcome) in finished {
        done(outcome);
    }
}

/// Sleeps until the doorbell rings, the socket has news (the gateway closed it), or
/// `timeout` passes; returns whether the socket had news.
fn wait_readable(wake: &OwnedFd, sock: &OwnedFd, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(wake, PollFlags::IN), PollFd::new(sock, PollFlags::IN)];
    let ts = crate::shm::poll_timeout(timeout);
    matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0) && !fds[1].revents().is_empty()
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}
