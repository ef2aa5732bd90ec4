//! The gateway side of the ring protocol: a listener that authenticates nodes and sets up
//! queue pairs, and workers (one per core by default) that serve them.
//!
//! Each worker serves the queue pairs the listener placed on it and owns a share of the
//! images: image `i` belongs to worker `i % n`, which alone runs its SCSI state and its
//! engine. A command for an image another worker owns crosses by message, with its data
//! left in the node's memory ([`mesh`]); nothing on the I/O path takes a lock.
//!
//! A worker polls while anything is happening (ring traffic within the spin window, or
//! I/O in flight) and sleeps in `poll(2)` on the doorbells and sockets otherwise, telling
//! nodes through the rings' polling flags when it needs a doorbell. A node that breaks the
//! protocol loses its own connection, with a logged reason; its in-flight backend I/O
//! completes and is discarded.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use metrics::Metrics;
use thiserror::Error;

use super::handshake::{self, Answer, Hello, LunInfo, Refusal, Welcome};
use super::shm::{Doorbell, SharedMemory, ShmError};
use super::{proto, spsc};
use crate::lun::OpenImage;
pub use crate::registry::ControlError;
use crate::registry::{AuthError, Images, NodeEntry, NotApplied, Registry};

pub mod admission;
pub mod attach;
mod conn;
mod images;
mod mesh;
mod owned;
pub mod quota;
mod worker;

use self::attach::{Attacher, Attachment};
use self::mesh::Mesh;
use self::worker::{Setup, Worker};

pub use super::proto::control_result;

/// Tunables of the ring server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// How long a worker keeps polling after the last activity before it sleeps.
    pub spin: Duration,
    /// Worker threads.
    pub workers: usize,
    /// Largest data area a node may ask for.
    pub max_data_bytes: u64,
    /// Time a node has to complete the handshake, from connecting to its last hello byte.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once from one peer uid; more are refused at once.
    pub max_handshakes_per_uid: usize,
    /// Handshakes in progress at once in all.
    pub max_handshakes: usize,
    /// What one node may hold: queue pairs and their shared memory.
    pub limits: quota::Limits,
    /// Where the worker counts commands, bytes, latencies and ring events.
    pub metrics: Arc<Metrics>,
    /// Whether each worker drives its images' I/O and its sleep through one io_uring of
    /// its own (the default). Off, engines keep rings of their own and workers sleep in
    /// `poll(2)`, as they do where io_uring is unavailable.
    pub worker_ring: bool,
}

impl ServerOptions {
    /// Defaults for a socket path.
    pub fn new(socket: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            socket: socket.into(),
            spin: super::shm::DEFAULT_SPIN,
            workers: default_workers(),
            max_data_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_handshakes_per_uid: 16,
            max_handshakes: 128,
            limits: quota::Limits::default(),
            metrics: Arc::new(Metrics::new(scsi::opcodes::name, env!("CARGO_PKG_VERSION"))),
            worker_ring: true,
        }
    }
}

/// One worker per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    mesh: Arc<Mesh>,
    listener: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<Vec<(usize, OpenImage)>>>,
    socket: PathBuf,
    control: LunControl,
    metrics: Arc<Metrics>,
    attacher: Attacher,
}

/// Every image's [`Shape`], shared by the workers (which change sizes), the listener (which
/// reports them in handshakes) and REPORT CONFIG; its length is the number of images.
type Capacities = Arc<std::sync::Mutex<Vec<Shape>>>;

/// What the ring server knows of an image besides its driver: its geometry, and the names
/// its metrics go by.
#[derive(Debug, Clone)]
struct Shape {
    block_size: u32,
    blocks: u64,
    pan: Arc<str>,
    name: Arc<str>,
}

impl Shape {
    /// The shape of `img`; with per-LUN metrics, its series are made now, at zero, so a LUN
    /// no node has used yet is scraped too.
    fn of(img: &OpenImage, metrics: &Metrics) -> Shape {
        let cfg = img.driver.unit().config();
        if !metrics.per_node() {
            metrics.lun(metrics::LunKey::of_lun(&img.pan, &img.name));
        }
        Shape {
            block_size: cfg.block_size,
            blocks: cfg.blocks,
            pan: img.pan.as_str().into(),
            name: img.name.as_str().into(),
        }
    }
}

/// How long the control plane waits for a worker.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type Reply = mpsc::SyncSender<Result<(), ControlError>>;

/// A request to a worker from the control plane, answered on `reply`.
enum Control {
    Grow {
        image: usize,
        bytes: u64,
        reply: Reply,
    },
    AddImage {
        index: usize,
        image: Box<OpenImage>,
        reply: Reply,
    },
    Retire {
        image: usize,
        reply: Reply,
    },
    /// Close the node's queue pairs now.
    Fence {
        pan: String,
        node: String,
        reply: Reply,
    },
    /// Set the ALUA states of an image's target port groups, after reloading its saved
    /// reservation state when the gateway is taking the LUN over.
    Access {
        image: usize,
        states: Vec<(u16, scsi::alua::AccessState)>,
        takeover: bool,
        reply: Reply,
    },
    /// Flush an image's written data to stable storage.
    Flush {
        image: usize,
        reply: Reply,
    },
    /// Answer once every command the worker's engines have in flight now has finished.
    Barrier {
        reply: Reply,
    },
    /// The node's entry changed or went away: update or close its queue pairs.
    Node {
        pan: String,
        node: String,
        entry: Option<Box<NodeEntry>>,
        reply: Reply,
    },
}

/// Changes the LUNs of a running server from outside the I/O path (TCMU reconfiguration,
/// the admin API), as [`Images`]: a request about an image goes to the worker that owns
/// it. Changes of nodes come from the [`Registry`], which the server watches.
#[derive(Debug, Clone)]
pub struct LunControl {
    tx: Vec<Sender<Control>>,
    mesh: Arc<Mesh>,
    caps: Capacities,
    metrics: Arc<Metrics>,
    quotas: quota::Quotas,
}

impl LunControl {
    fn ask(&self, worker: usize, make: impl FnOnce(Reply) -> Control) -> Result<(), ControlError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx[worker].send(make(reply)).map_err(|_| ControlError::Stopping)?;
        self.mesh.wake(worker).ring()?;
        answer.recv_timeout(CONTROL_TIMEOUT).map_err(|_| ControlError::TimedOut(CONTROL_TIMEOUT))?
    }

    fn ask_all(&self, make: impl Fn(Reply) -> Control) -> Result<(), ControlError> {
        (0..self.tx.len()).try_for_each(|w| self.ask(w, &make))
    }

    /// A node's entry changed (`Some`) or went away (`None`): its open queue pairs see the
    /// new map from their next command, a LUN taken away answering LOGICAL UNIT NOT
    /// SUPPORTED; a removed node's queue pairs close (their in-flight I/O completes and is
    /// discarded). Every worker serves some of its queue pairs.
    fn node_changed(&self, pan: &str, node: &str, entry: Option<&NodeEntry>) -> Result<(), ControlError> {
        self.ask_all(|reply| Control::Node {
            pan: pan.to_string(),
            node: node.to_string(),
            entry: entry.cloned().map(Box::new),
            reply,
        })
    }
}

struct Accepted {
    entry: NodeEntry,
    sock: UnixStream,
    ring: Arc<SharedMemory>,
    data: Arc<SharedMemory>,
    staging: Arc<SharedMemory>,
    to_gateway: Doorbell,
    to_node: Doorbell,
    slots: u32,
    /// The queue pair's share of its node's limits, held for as long as it is open.
    lease: quota::Lease,
    /// The front-end inside the gateway that is the node side, if it is one.
    attached: Option<Box<dyn Attachment>>,
    /// The initiator port its commands come from, and the target port they come in on.
    port: Arc<scsi::InitiatorPort>,
    target_port: u16,
    /// Counts the queue pair among its FUSE mount's while it is open (`pangate mount`'s).
    fuse: Option<metrics::FuseQueuePair>,
}

/// What admitting a node takes: the listener's and the [`Attacher`]'s.
struct Admit {
    registry: Registry,
    caps: Capacities,
    opts: ServerOptions,
    quotas: quota::Quotas,
    mesh: Arc<Mesh>,
    workers: Vec<Sender<Accepted>>,
    stop: Arc<AtomicBool>,
}

impl Admit {
    /// The node's entry, if `credential` is its own.
    fn authenticate(&self, pan: &str, node: &str, credential: &str) -> Result<NodeEntry, Refused> {
        match self.registry.authenticate(pan, node, credential) {
            Ok(entry) => Ok(entry),
            Err(AuthError::UnknownNode) => Err(Refused::UnknownNode { pan: pan.into(), node: node.into() }),
            Err(AuthError::WrongCredential) => Err(Refused::WrongCredential { pan: pan.into(), node: node.into() }),
            Err(AuthError::Fenced) => Err(Refused::Fenced { pan: pan.into(), node: node.into() }),
        }
    }
}

impl Server {
    /// Binds the socket and starts the listener and the workers over `images`, serving the
    /// nodes of `registry` (and following its changes).
    pub fn start(images: Vec<OpenImage>, registry: Registry, opts: ServerOptions) -> io::Result<Server> {
        if let Ok(meta) = std::fs::symlink_metadata(&opts.socket) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", opts.socket.display()),
                ));
            }
            if UnixStream::connect(&opts.socket).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another gateway is listening on {}", opts.socket.display()),
                ));
            }
            std::fs::remove_file(&opts.socket)?;
        }
        let listener = UnixListener::bind(&opts.socket)?;
        let n = opts.workers.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let wakes = (0..n).map(|_| Doorbell::new().map(Arc::new)).collect::<io::Result<Vec<_>>>()?;
        let (mesh, inboxes) = Mesh::new(wakes);
        let caps: Capacities =
            Arc::new(std::sync::Mutex::new(images.iter().map(|i| Shape::of(i, &opts.metrics)).collect()));
        let mut shares: Vec<Vec<(usize, OpenImage)>> = (0..n).map(|_| Vec::new()).collect();
        for (i, img) in images.into_iter().enumerate() {
            shares[mesh.owner(i)].push((i, img));
        }
        let (mut incoming_tx, mut control_tx, mut workers) = (Vec::new(), Vec::new(), Vec::new());
        for ((index, images), inbox) in shares.into_iter().enumerate().zip(inboxes) {
            let (tx, incoming) = mpsc::channel();
            let (ctx, control) = mpsc::channel();
            incoming_tx.push(tx);
            control_tx.push(ctx);
            let setup = Setup {
                index,
                images,
                incoming,
                control,
                inbox,
                mesh: mesh.clone(),
                caps: caps.clone(),
                stop: stop.clone(),
            };
            let opts = opts.clone();
            let spawned = std::thread::Builder::new().name(format!("pangate-worker-{index}")).spawn(move || {
                let _guard = AbortOnPanic;
                Worker::new(setup, &opts).run()
            });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // The images of workers that did start are dropped with them.
                    stop.store(true, Ordering::SeqCst);
                    (0..workers.len()).for_each(|w| drop(mesh.wake(w).ring()));
                    workers.into_iter().for_each(|w| drop(w.join()));
                    return Err(e);
                }
            }
        }
        let admit = Arc::new(Admit {
            registry: registry.clone(),
            caps: caps.clone(),
            quotas: quota::Quotas::new(opts.limits),
            opts: opts.clone(),
            mesh: mesh.clone(),
            workers: incoming_tx,
            stop: stop.clone(),
        });
        let attacher = Attacher(admit.clone());
        let quotas = admit.quotas.clone();
        let listener_thread =
            std::thread::Builder::new().name("pangate-listen".into()).spawn(move || listen(listener, admit))?;
        let control = LunControl { tx: control_tx, mesh: mesh.clone(), caps, metrics: opts.metrics.clone(), quotas };
        let watcher = control.clone();
        registry.watch(move |pan, node, entry| {
            watcher.node_changed(pan, node, entry).map_err(|e| NotApplied(e.to_string()))
        });
        let metrics = opts.metrics.clone();
        Ok(Server {
            stop,
            mesh,
            listener: Some(listener_thread),
            workers,
            socket: opts.socket,
            control,
            metrics,
            attacher,
        })
    }

    /// The server's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Worker threads serving the rings.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Wakes every worker (to see the stop flag) and waits for them; the images come back
    /// in index order.
    fn join_workers(&mut self) -> io::Result<Vec<OpenImage>> {
        for w in 0..self.workers.len() {
            let _ = self.mesh.wake(w).ring();
        }
        let mut images = Vec::new();
        let mut panicked = false;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(share) => images.extend(share),
                Err(_) => panicked = true,
            }
        }
        if panicked {
            return Err(io::Error::other("a worker panicked"));
        }
        images.sort_by_key(|(i, _)| *i);
        Ok(images.into_iter().map(|(_, img)| img).collect())
    }

    /// A handle for changing LUNs while the server runs.
    pub fn control(&self) -> LunControl {
        self.control.clone()
    }

    /// The same handle, as the control plane holds it.
    pub fn images(&self) -> Arc<dyn Images> {
        Arc::new(self.control.clone())
    }

    /// A handle for front-ends inside the gateway whose connections the workers serve
    /// inline (the iSCSI target).
    pub fn attacher(&self) -> Attacher {
        self.attacher.clone()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops accepting, completes in-flight I/O, flushes every image, closes every queue
    /// pair and hands the images back.
    pub fn shutdown(mut self) -> io::Result<Vec<OpenImage>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        let images = self.join_workers()?;
        let _ = std::fs::remove_file(&self.socket);
        Ok(images)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        let _ = self.join_workers();
    }
}

/// Accepts nodes. Each handshake runs on a thread of its own, so a slow or silent peer
/// delays nobody else; the listener bounds how many run (per peer uid and in all) and cuts
/// off any still reading its hello after `opts.handshake_timeout`, however it dribbles.
fn listen(listener: UnixListener, admit: Arc<Admit>) {
    let _ = listener.set_nonblocking(true);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let opts = &admit.opts;
    let mut next_id = 0u64;
    while !admit.stop.load(Ordering::SeqCst) {
        pending.lock().unwrap_or_else(|p| p.into_inner()).cut_off_late(Instant::now());
        let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
        let ts = super::shm::poll_timeout(Duration::from_millis(100));
        if !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
            continue;
        }
        let Ok((sock, _)) = listener.accept() else { continue };
        let started = Instant::now();
        let uid = handshake::peer_uid(&sock).unwrap_or(u32::MAX);
        let id = next_id;
        next_id += 1;
        let admitted = sock.try_clone().map_err(Refused::Socket).and_then(|watch| {
            let deadline = started + opts.handshake_timeout;
            pending.lock().unwrap_or_else(|p| p.into_inner()).admit(id, uid, deadline, watch, opts)
        });
        if let Err(why) = admitted {
            refuse(&sock, &why, &opts.metrics);
            continue;
        }
        let (admit, inflight) = (admit.clone(), pending.clone());
        let spawned = std::thread::Builder::new().name("pangate-handshake".into()).spawn(move || {
            let hello = read_hello(&sock, admit.opts.handshake_timeout, started);
            // The hello is in (or failed): from here on nothing waits on the peer.
            inflight.lock().unwrap_or_else(|p| p.into_inner()).done(id);
            match hello.and_then(|h| accept_hello(&sock, h, &admit)) {
                Ok(acc) => {
                    let w = admit.mesh.place(acc.entry.luns.first().map(|l| l.2));
                    tracing::info!(pan = %acc.entry.pan, node = %acc.entry.node, slots = acc.slots, worker = w, "queue pair connected");
                    if admit.workers[w].send(acc).is_ok() {
                        let _ = admit.mesh.wake(w).ring();
                    }
                }
                Err(why) => refuse(&sock, &why, &admit.opts.metrics),
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a handshake thread");
            pending.lock().unwrap_or_else(|p| p.into_inner()).done(id);
        }
    }
}

/// Tells a node why it was refused (best effort: it may be gone), logs and counts it.
fn refuse(sock: &UnixStream, why: &Refused, metrics: &Metrics) {
    tracing::warn!(reason = %why, "refused a node");
    metrics.handshake_refused(why.label());
    let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = handshake::send(sock, &Answer::Refused(Refusal { error: why.to_string() }), &[]);
}

/// Handshakes still reading their hello: how many per peer uid, and a handle on each
/// socket to cut it off at its deadline.
#[derive(Debug, Default)]
struct Pending {
    by_id: HashMap<u64, (u32, Instant, UnixStream)>,
    per_uid: HashMap<u32, usize>,
}

impl Pending {
    fn admit(
        &mut self,
        id: u64,
        uid: u32,
        deadline: Instant,
        watch: UnixStream,
        opts: &ServerOptions,
    ) -> Result<(), Refused> {
        let of_uid = self.per_uid.get(&uid).copied().unwrap_or(0);
        if of_uid >= opts.max_handshakes_per_uid || self.by_id.len() >= opts.max_handshakes {
            return Err(Refused::TooManyHandshakes { uid, pending: of_uid });
        }
        *self.per_uid.entry(uid).or_default() += 1;
        self.by_id.insert(id, (uid, deadline, watch));
        Ok(())
    }

    fn done(&mut self, id: u64) {
        if let Some((uid, _, _)) = self.by_id.remove(&id) {
            if let Some(n) = self.per_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    self.per_uid.remove(&uid);
                }
            }
        }
    }

    /// Shuts the reading side of handshakes past their deadline: their threads' reads end
    /// at once, however the peer trickles bytes, and they can still say why.
    fn cut_off_late(&mut self, now: Instant) {
        for (_, deadline, sock) in self.by_id.values() {
            if *deadline <= now {
                let _ = sock.shutdown(std::net::Shutdown::Read);
            }
        }
    }
}

/// Why a node's handshake was refused; the node is told this, in words.
#[derive(Debug, Error)]
pub enum Refused {
    /// The socket failed, or the hello could not be read within the timeout.
    #[error("handshake failed: {0}")]
    Socket(#[from] io::Error),
    /// The node speaks another protocol version.
    #[error("protocol version {got} is not supported (this gateway speaks {})", proto::VERSION)]
    Version {
        /// The node's version.
        got: u32,
    },
    /// No such node in that PAN.
    #[error("no node {node:?} in PAN {pan:?}")]
    UnknownNode {
        /// The PAN named.
        pan: String,
        /// The node named.
        node: String,
    },
    /// The credential does not match.
    #[error("wrong credential for node {node:?} of PAN {pan:?}")]
    WrongCredential {
        /// The PAN named.
        pan: String,
        /// The node named.
        node: String,
    },
    /// The node is being failed over.
    #[error("node {node:?} of PAN {pan:?} is fenced: it is being failed over")]
    Fenced {
        /// The PAN named.
        pan: String,
        /// The node named.
        node: String,
    },
    /// The config pins the node to a uid, and the peer is another.
    #[error("node {node:?} must connect as uid {want}, not {got}")]
    WrongUid {
        /// The node named.
        node: String,
        /// The uid the config requires.
        want: u32,
        /// The peer's uid.
        got: u32,
    },
    /// The queue pair's shared memory could not be made.
    #[error("creating the queue pair's memory failed: {0}")]
    Memory(#[from] ShmError),
    /// The hello did not arrive in time.
    #[error("no complete hello within {} ms", .limit.as_millis())]
    Timeout {
        /// The time allowed.
        limit: Duration,
    },
    /// Too many handshakes in progress from this uid (or in all).
    #[error("too many handshakes in progress ({pending} from uid {uid}); try again")]
    TooManyHandshakes {
        /// The peer's uid.
        uid: u32,
        /// Its handshakes in progress.
        pending: usize,
    },
    /// The node is at one of its limits.
    #[error(transparent)]
    OverLimit(#[from] quota::OverLimit),
}

impl Refused {
    /// The `reason` label of `pangate_ring_handshakes_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Timeout { .. } => "timeout",
            Refused::Socket(e) if e.kind() == io::ErrorKind::InvalidData => "bad_hello",
            Refused::Socket(_) => "socket",
            Refused::Version { .. } => "version",
            Refused::UnknownNode { .. } => "unknown_node",
            Refused::WrongCredential { .. } => "wrong_credential",
            Refused::Fenced { .. } => "fenced",
            Refused::WrongUid { .. } => "wrong_uid",
            Refused::Memory(_) => "memory",
            Refused::TooManyHandshakes { .. } => "too_many_handshakes",
            Refused::OverLimit(e) => e.label(),
        }
    }
}

/// Reads a node's hello (at most [`handshake::MAX_MESSAGE`] bytes; any fds sent with it
/// are closed). Each read waits at most `timeout`, and the listener cuts off the whole
/// `timeout` after `started`.
fn read_hello(sock: &UnixStream, timeout: Duration, started: Instant) -> Result<Hello, Refused> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    match handshake::recv::<Hello>(sock) {
        Ok((hello, _)) => Ok(hello),
        Err(_) if started.elapsed() >= timeout => Err(Refused::Timeout { limit: timeout }),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Err(Refused::Timeout { limit: timeout })
        }
        Err(e) => Err(e.into()),
    }
}

/// Authenticates a hello, takes the node's lease, makes the queue pair and welcomes the
/// node with it.
fn accept_hello(sock: &UnixStream, hello: Hello, admit: &Admit) -> Result<Accepted, Refused> {
    if hello.version != proto::VERSION {
        return Err(Refused::Version { got: hello.version });
    }
    let entry = admit.authenticate(&hello.pan, &hello.node, &hello.credential)?;
    if let Some(want) = entry.uid {
        let got = handshake::peer_uid(sock)?;
        if got != want {
            return Err(Refused::WrongUid { node: hello.node, want, got });
        }
    }
    let (mut acc, welcome) = open_queue_pair(sock, entry, hello.slots, hello.data_bytes, admit)?;
    if hello.client.as_deref() == Some("fuse") {
        acc.fuse = Some(admit.opts.metrics.fuse_queue_pair(handshake::peer_pid(sock).unwrap_or(0)));
    }
    handshake::send(
        sock,
        &Answer::Welcome(welcome),
        &[acc.ring.fd(), acc.data.fd(), acc.staging.fd(), acc.to_gateway.fd(), acc.to_node.fd()],
    )?;
    sock.set_nonblocking(true)?;
    Ok(acc)
}

/// Takes the node's lease and makes a queue pair of `slots` (rounded to what the rings
/// take) and a data area of `data_bytes` (bounded by the options), watched through `sock`.
fn open_queue_pair(
    sock: &UnixStream,
    entry: NodeEntry,
    slots: u32,
    data_bytes: u64,
    admit: &Admit,
) -> Result<(Accepted, Welcome), Refused> {
    let slots = slots.clamp(spsc::MIN_SLOTS, spsc::MAX_SLOTS).next_power_of_two();
    let data_bytes = data_bytes.clamp(1 << 20, admit.opts.max_data_bytes).next_multiple_of(super::alloc::PAGE);
    let bytes = spsc::region_size(slots) as u64 + 2 * data_bytes;
    let lease = admit.quotas.lease(&entry.pan, &entry.node, bytes)?;
    let mk = |name: &str, len: usize| SharedMemory::create(name, len).map(Arc::new);
    let ring = mk("pangate-ring", spsc::region_size(slots))?;
    let data = mk("pangate-data", data_bytes as usize)?;
    let staging = mk("pangate-staging", data_bytes as usize)?;
    let to_gateway = Doorbell::new()?;
    let to_node = Doorbell::new()?;
    let luns = {
        let caps = admit.caps.lock().unwrap_or_else(|p| p.into_inner());
        entry
            .luns
            .iter()
            .filter_map(|&(target, lun, image, access)| {
                let s = caps.get(image)?;
                Some(LunInfo {
                    target,
                    lun,
                    block_size: s.block_size,
                    blocks: s.blocks,
                    read_only: access.is_read_only(),
                })
            })
            .collect()
    };
    let welcome = Welcome { version: proto::VERSION, slots, data_bytes, staging_bytes: data_bytes, luns };
    let acc = Accepted {
        sock: sock.try_clone()?,
        ring,
        data,
        staging,
        to_gateway,
        to_node,
        slots,
        lease,
        attached: None,
        port: Arc::new(crate::nexus::node_port(&entry)),
        target_port: crate::nexus::local_target_port(),
        entry,
        fuse: None,
    };
    Ok((acc, welcome))
}

/// Ends the process when a worker panics. The other workers would otherwise wait for
/// answers to the jobs it held and never stop, and its queue pairs would hang; exiting
/// loses only what was not acknowledged, and nodes reconnect to a restarted gateway.
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("a ring worker panicked: stopping the gateway");
            std::process::abort();
        }
    }
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").field("pan", &self.entry.pan).field("node", &self.entry.node).finish()
    }
}
