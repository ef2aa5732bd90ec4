//! The gateway side of the ring protocol: a listener that authenticates nodes and sets up
//! queue pairs, and a worker that serves them.
//!
//! The worker polls while anything is happening (ring traffic within the spin window, or
//! backend I/O in flight) and sleeps in `poll(2)` on the doorbells and sockets otherwise,
//! telling nodes through the rings' polling flags when it needs a doorbell. A node that
//! breaks the protocol loses its own connection, with a logged reason; its in-flight
//! backend I/O completes and is discarded.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::Metrics;

use super::handshake::{self, Answer, Hello, LunInfo, Refusal, Welcome};
use super::shm::{Doorbell, SharedMemory};
use super::{proto, spsc};
use crate::config::Access;
use crate::engine::AlignedBuf;
use crate::storage::OpenImage;

mod worker;

use self::worker::Worker;

/// Control results in STAT replies to protocol-control messages.
pub mod control_result {
    /// Done.
    pub const DONE: u16 = 0;
    /// The task is with the backend and will complete normally.
    pub const IN_PROGRESS: u16 = 1;
    /// No such task or LUN.
    pub const NOT_FOUND: u16 = 2;
}

/// Bytes in one REPORT CONFIG entry: target u16, lun u16, read-only u8, 3 reserved,
/// block size u32, blocks u64.
pub const REPORT_ENTRY: usize = 20;

/// Tunables of the ring server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// How long the worker keeps polling after the last activity before it sleeps.
    pub spin: Duration,
    /// Largest data area a node may ask for.
    pub max_data_bytes: u64,
    /// Time a node has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Where the worker counts commands, bytes, latencies and ring events.
    pub metrics: Arc<Metrics>,
}

impl ServerOptions {
    /// Defaults for a socket path.
    pub fn new(socket: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            socket: socket.into(),
            spin: Duration::from_micros(50),
            max_data_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(5),
            metrics: Arc::new(Metrics::new(scsi::opcodes::name, env!("CARGO_PKG_VERSION"))),
        }
    }
}

/// A node allowed to connect, and its map.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// PAN name.
    pub pan: String,
    /// Node name.
    pub node: String,
    /// Credential it must present.
    pub credential: String,
    /// The only peer uid it may connect from, when set.
    pub uid: Option<u32>,
    /// (target, LUN) → (image index, access).
    pub luns: Vec<(u16, u16, usize, Access)>,
}

/// The nodes allowed to connect, shared by the listener (which reads it at each handshake)
/// and the control plane (which changes it).
pub type NodeTable = Arc<RwLock<Vec<NodeEntry>>>;

/// A running server.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    wake: Arc<Doorbell>,
    listener: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<Vec<OpenImage>>>,
    socket: PathBuf,
    control: LunControl,
}

/// Image sizes as (block size, blocks), shared by the worker (which changes them) and the
/// listener (which reports them in handshakes).
type Capacities = Arc<std::sync::Mutex<Vec<(u32, u64)>>>;

/// The buffer a command brings to the backend.
enum Data {
    /// None, or the engine provides its own (data-in of most commands).
    None,
    /// Data-out, copied in or borrowed from the node.
    Out(AlignedBuf),
    /// A READ's destination in the node's data area.
    In(AlignedBuf),
}

/// A request to the worker from the control plane, answered on `reply`.
enum Control {
    Grow {
        image: usize,
        bytes: u64,
        reply: mpsc::SyncSender<io::Result<()>>,
    },
    AddImage {
        image: Box<OpenImage>,
        reply: mpsc::SyncSender<io::Result<()>>,
    },
    Retire {
        image: usize,
        reply: mpsc::SyncSender<io::Result<()>>,
    },
    /// The node's entry changed or went away: update or close its queue pairs.
    Node {
        pan: String,
        node: String,
        entry: Option<NodeEntry>,
        reply: mpsc::SyncSender<io::Result<()>>,
    },
}

/// Changes the LUNs and nodes of a running server from outside the I/O path (TCMU
/// reconfiguration, the admin API): the request goes to the worker, which owns the images
/// and the queue pairs.
#[derive(Debug, Clone)]
pub struct LunControl {
    tx: Sender<Control>,
    wake: Arc<Doorbell>,
    nodes: NodeTable,
    caps: Capacities,
}

impl LunControl {
    fn ask(&self, make: impl FnOnce(mpsc::SyncSender<io::Result<()>>) -> Control) -> io::Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx.send(make(reply)).map_err(|_| io::Error::other("the gateway is stopping"))?;
        self.wake.ring()?;
        answer
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the worker did not answer"))?
    }

    /// (block size, blocks) of image `image`, as nodes see it now.
    pub fn capacity(&self, image: usize) -> Option<(u32, u64)> {
        self.caps.lock().unwrap_or_else(|p| p.into_inner()).get(image).copied()
    }

    /// The nodes allowed to connect (credentials included), as the handshake sees them.
    pub fn nodes(&self) -> Vec<NodeEntry> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Grows image `image` (an index into the server's image list) to `bytes`; every
    /// initiator of its LUNs gets CAPACITY DATA HAS CHANGED.
    pub fn grow(&self, image: usize, bytes: u64) -> io::Result<()> {
        self.ask(|reply| Control::Grow { image, bytes, reply })
    }

    /// Adds an image; it gets the next index (the server's image count before the call).
    pub fn add_image(&self, image: OpenImage) -> io::Result<()> {
        self.ask(|reply| Control::AddImage { image: Box::new(image), reply })
    }

    /// Flushes an image that no map names any more. Its index stays taken, so others keep
    /// theirs; the file is left as it is.
    pub fn retire_image(&self, image: usize) -> io::Result<()> {
        self.ask(|reply| Control::Retire { image, reply })
    }

    /// Adds a node or replaces its credential and map. Its open queue pairs see the new
    /// map from their next command; a LUN taken away answers LOGICAL UNIT NOT SUPPORTED.
    pub fn set_node(&self, entry: NodeEntry) -> io::Result<()> {
        {
            let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
            match nodes.iter_mut().find(|n| n.pan == entry.pan && n.node == entry.node) {
                Some(n) => *n = entry.clone(),
                None => nodes.push(entry.clone()),
            }
        }
        let (pan, node) = (entry.pan.clone(), entry.node.clone());
        self.ask(|reply| Control::Node { pan, node, entry: Some(entry), reply })
    }

    /// Removes a node: it can no longer connect, and its queue pairs are closed (their
    /// in-flight I/O completes and is discarded).
    pub fn remove_node(&self, pan: &str, node: &str) -> io::Result<()> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).retain(|n| !(n.pan == pan && n.node == node));
        let (pan, node) = (pan.to_string(), node.to_string());
        self.ask(|reply| Control::Node { pan, node, entry: None, reply })
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
}

impl Server {
    /// Binds the socket and starts the listener and the worker over `images`.
    pub fn start(images: Vec<OpenImage>, nodes: Vec<NodeEntry>, opts: ServerOptions) -> io::Result<Server> {
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
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Doorbell::new()?);
        let (tx, rx) = mpsc::channel();
        let (control_tx, control_rx) = mpsc::channel();
        let caps: Capacities = Arc::new(std::sync::Mutex::new(
            images.iter().map(|i| (i.driver.unit().config().block_size, i.driver.unit().config().blocks)).collect(),
        ));
        let nodes: NodeTable = Arc::new(RwLock::new(nodes));
        let listener_thread = {
            let (stop, wake, opts, caps, nodes) =
                (stop.clone(), wake.clone(), opts.clone(), caps.clone(), nodes.clone());
            std::thread::Builder::new()
                .name("pangate-listen".into())
                .spawn(move || listen(listener, nodes, caps, opts, stop, wake, tx))?
        };
        let worker_thread = {
            let (stop, wake, opts, caps) = (stop.clone(), wake.clone(), opts.clone(), caps.clone());
            std::thread::Builder::new()
                .name("pangate-worker".into())
                .spawn(move || Worker::new(images, rx, control_rx, caps, wake, stop, &opts).run())?
        };
        let control = LunControl { tx: control_tx, wake: wake.clone(), nodes, caps };
        Ok(Server {
            stop,
            wake,
            listener: Some(listener_thread),
            worker: Some(worker_thread),
            socket: opts.socket,
            control,
        })
    }

    /// A handle for changing LUNs while the server runs.
    pub fn control(&self) -> LunControl {
        self.control.clone()
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops accepting, completes in-flight I/O, flushes every image, closes every queue
    /// pair and hands the images back.
    pub fn shutdown(mut self) -> io::Result<Vec<OpenImage>> {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.ring()?;
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        let images =
            self.worker.take().map(|w| w.join().map_err(|_| io::Error::other("worker panicked"))).transpose()?;
        let _ = std::fs::remove_file(&self.socket);
        Ok(images.unwrap_or_default())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.ring();
        if let Some(l) = self.listener.take() {
            let _ = l.join();
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn listen(
    listener: UnixListener,
    nodes: NodeTable,
    caps: Capacities,
    opts: ServerOptions,
    stop: Arc<AtomicBool>,
    wake: Arc<Doorbell>,
    tx: Sender<Accepted>,
) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
        let ts = super::shm::poll_timeout(Duration::from_millis(100));
        if !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
            continue;
        }
        let Ok((sock, _)) = listener.accept() else { continue };
        let now = caps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let known = nodes.read().unwrap_or_else(|p| p.into_inner()).clone();
        match handshake_with(&sock, &known, &now, &opts) {
            Ok(acc) => {
                tracing::info!(pan = %acc.entry.pan, node = %acc.entry.node, slots = acc.slots, "queue pair connected");
                if tx.send(acc).is_err() {
                    return;
                }
                let _ = wake.ring();
            }
            Err(why) => {
                tracing::warn!(reason = %why, "refused a node");
                let _ = handshake::send(&sock, &Answer::Refused(Refusal { error: why }), &[]);
            }
        }
    }
}

fn handshake_with(
    sock: &UnixStream,
    nodes: &[NodeEntry],
    caps: &[(u32, u64)],
    opts: &ServerOptions,
) -> Result<Accepted, String> {
    sock.set_nonblocking(false).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(opts.handshake_timeout)).map_err(|e| e.to_string())?;
    let (hello, _): (Hello, _) = handshake::recv(sock).map_err(|e| format!("handshake failed: {e}"))?;
    if hello.version != proto::VERSION {
        return Err(format!(
            "protocol version {} is not supported (this gateway speaks {})",
            hello.version,
            proto::VERSION
        ));
    }
    let entry = nodes
        .iter()
        .find(|n| n.pan == hello.pan && n.node == hello.node)
        .ok_or_else(|| format!("no node {:?} in PAN {:?}", hello.node, hello.pan))?;
    if !constant_time_eq(entry.credential.as_bytes(), hello.credential.as_bytes()) {
        return Err(format!("wrong credential for node {:?} of PAN {:?}", hello.node, hello.pan));
    }
    if let Some(uid) = entry.uid {
        let peer = handshake::peer_uid(sock).map_err(|e| e.to_string())?;
        if peer != uid {
            return Err(format!("node {:?} must connect as uid {uid}, not {peer}", hello.node));
        }
    }
    let slots = hello.slots.clamp(spsc::MIN_SLOTS, spsc::MAX_SLOTS).next_power_of_two();
    let data_bytes = hello.data_bytes.clamp(1 << 20, opts.max_data_bytes).next_multiple_of(super::alloc::PAGE);
    let mk = |name: &str, len: usize| SharedMemory::create(name, len).map(Arc::new).map_err(|e| e.to_string());
    let ring = mk("pangate-ring", spsc::region_size(slots))?;
    let data = mk("pangate-data", data_bytes as usize)?;
    let staging = mk("pangate-staging", data_bytes as usize)?;
    let to_gateway = Doorbell::new().map_err(|e| e.to_string())?;
    let to_node = Doorbell::new().map_err(|e| e.to_string())?;
    let luns = entry
        .luns
        .iter()
        .filter_map(|&(target, lun, image, access)| {
            let &(block_size, blocks) = caps.get(image)?;
            Some(LunInfo { target, lun, block_size, blocks, read_only: access == Access::Ro })
        })
        .collect();
    let welcome = Welcome { version: proto::VERSION, slots, data_bytes, staging_bytes: data_bytes, luns };
    handshake::send(
        sock,
        &Answer::Welcome(welcome),
        &[ring.fd(), data.fd(), staging.fd(), to_gateway.fd(), to_node.fd()],
    )
    .map_err(|e| format!("sending the welcome failed: {e}"))?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Accepted {
        entry: entry.clone(),
        sock: sock.try_clone().map_err(|e| e.to_string())?,
        ring,
        data,
        staging,
        to_gateway,
        to_node,
        slots,
    })
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").field("pan", &self.entry.pan).field("node", &self.entry.node).finish()
    }
}
