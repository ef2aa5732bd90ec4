//! The FUSE front-end: `pangate mount` is a node's host adapter. It connects to the gateway
//! over the rings and shows the node's LUNs as files (`t<target>-l<lun>`) that can be
//! `losetup`, `mkfs` and mounted.
//!
//! - Reads and writes become READ(16)/WRITE(16); unaligned writes read, modify and write
//!   the partial blocks, serialised per block range. `fsync` becomes SYNCHRONIZE CACHE,
//!   `fallocate` PUNCH_HOLE becomes UNMAP and ZERO_RANGE becomes WRITE SAME.
//! - Files are opened for direct I/O, so the kernel's page cache never hides the gateway,
//!   and requests of up to 1 MiB travel as one command.
//! - Several FUSE threads, each with its own cloned `/dev/fuse` fd and its own queue pair,
//!   read requests into that queue pair's data area, so a write's payload is sent to the
//!   gateway where the kernel put it; replies go out from the queue pairs' completion
//!   threads (or from a FUSE thread that polled for its command).
//! - With FUSE over io_uring ([`uring`]), requests come and replies go through ring
//!   entries registered with the kernel once, per CPU, instead of a read and a write each.
//! - When the gateway goes away, I/O fails with EIO; the mount reconnects by itself.

mod affinity;
mod files;
mod session;
pub mod span;
#[allow(unsafe_code)]
mod sys;
mod uring;
pub mod wire;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ring::link::{Link, LinkOptions};
use anyhow::Context;
pub use files::{file_name, Handshake, LunFiles, Polling, MAX_IO};
use fuser::{Config, MountOption, SessionACL};
pub use uring::{UringMode, ENTRIES_PER_AREA};

/// What `pangate mount` was asked for.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// How to reach the gateway.
    pub link: LinkOptions,
    /// Let other users reach the files (`allow_other`).
    pub allow_other: bool,
    /// How long a FUSE thread polls for a lone command's completion (see [`Polling`]).
    pub poll: Duration,
    /// FUSE over io_uring or `/dev/fuse`.
    pub uring: UringMode,
}

/// A mounted filesystem, serving until unmounted.
#[derive(Debug)]
pub struct Mounted {
    /// fuser's session: the mount (unmounted on drop) and the fd the FUSE threads clone.
    session: fuser::Session<Handshake>,
    fs: Arc<LunFiles>,
    link: Arc<Link>,
    threads: usize,
    /// The FUSE ring queues' threads, when FUSE over io_uring is in use.
    ring_threads: Vec<JoinHandle<std::io::Result<()>>>,
}

/// Connects to the gateway and mounts. Returns once the kernel has completed the FUSE
/// handshake, so the files are usable when this returns.
pub fn mount(req: &MountRequest) -> anyhow::Result<Mounted> {
    let meta =
        std::fs::metadata(&req.mountpoint).with_context(|| format!("mount point {}", req.mountpoint.display()))?;
    anyhow::ensure!(meta.is_dir(), "mount point {} is not a directory", req.mountpoint.display());
    let link = Arc::new(Link::connect(req.link.clone()).with_context(|| {
        format!(
            "connecting to the gateway at {} as {}/{}",
            req.link.socket.display(),
            req.link.connect.pan,
            req.link.connect.node
        )
    })?);
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let polling = Arc::new(Polling::new(req.poll));
    let fs = Arc::new(LunFiles::new(link.clone(), uid, gid, polling.clone()));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("pangate:{}/{}", req.link.connect.pan, req.link.connect.node)),
        MountOption::Subtype("pangate".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    if req.allow_other {
        config.acl = SessionACL::All;
    }
    let threads = req.link.queues.max(1);
    // Mounts and answers INIT; the requests after it are served by `session::serve`.
    let negotiated = Arc::new(AtomicBool::new(false));
    let handshake = Handshake { uring: req.uring != UringMode::Off, negotiated: negotiated.clone() };
    let session = fuser::Session::new(handshake, &req.mountpoint, &config)
        .with_context(|| format!("mounting on {}", req.mountpoint.display()))?;
    if !req.poll.is_zero() {
        let device = session.as_fd().try_clone_to_owned().context("duplicating the /dev/fuse fd")?;
        let _ = polling.device.set(device);
    }
    let mut ring_threads = Vec::new();
    match (negotiated.load(Ordering::Acquire), req.uring) {
        (true, _) => match start_rings(&session, &fs, &link, threads) {
            Ok(t) => ring_threads = t,
            Err((e, t)) if req.uring == UringMode::On => {
                drop(session);
                t.into_iter().for_each(|t| drop(t.join()));
                return Err(e.context("registering FUSE over io_uring (--uring on)"));
            }
            Err((e, t)) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "FUSE over io_uring could not start; serving through /dev/fuse"
                );
                ring_threads = t;
            }
        },
        (false, UringMode::On) => {
            anyhow::bail!("FUSE over io_uring (--uring on) is not available: {}", uring::unavailable_reason())
        }
        (false, UringMode::Auto) => {
            tracing::info!(
                "serving through /dev/fuse: FUSE over io_uring is not available ({})",
                uring::unavailable_reason()
            );
        }
        (false, UringMode::Off) => {}
    }
    Ok(Mounted { session, fs, link, threads, ring_threads })
}

type RingThreads = Vec<JoinHandle<std::io::Result<()>>>;

/// Threads (each with its own io_uring and half the entries) per kernel FUSE ring queue.
const THREADS_PER_QUEUE: usize = 2;

/// Starts a thread per kernel FUSE ring queue, each registering its entries, and waits
/// until all have. On failure, the threads that did register are returned too: the kernel
/// gives their entries back when the filesystem is unmounted.
fn start_rings(
    session: &fuser::Session<Handshake>,
    fs: &Arc<LunFiles>,
    link: &Arc<Link>,
    pairs: usize,
) -> Result<RingThreads, (anyhow::Error, RingThreads)> {
    let queues = match uring::kernel_queues() {
        Ok(n) => n,
        Err(e) => return Err((anyhow::Error::from(e).context("counting the kernel's FUSE ring queues"), Vec::new())),
    };
    // A process's I/O all goes to the queue of the CPU it runs on, and its requests' data
    // is copied by the thread the entry belongs to: two threads per queue copy two at once,
    // as two /dev/fuse threads do.
    let per_queue = THREADS_PER_QUEUE.min(pairs.max(1));
    let threads_n = queues * per_queue;
    // Each queue pair's data area holds the buffers of the threads that share it.
    let depth = (ENTRIES_PER_AREA / threads_n.div_ceil(pairs.max(1))).max(1);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for (qid, t) in (0..queues).flat_map(|q| (0..per_queue).map(move |t| (q, t))) {
        let (fs, link, tx) = (fs.clone(), link.clone(), tx.clone());
        let session = match session.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => return Err((anyhow::Error::from(e).context("duplicating the /dev/fuse fd"), threads)),
        };
        let spawned = std::thread::Builder::new().name(format!("pangate-ring{qid}.{t}")).spawn(move || {
            let registered = uring::Queue::register(&link, session.as_fd(), qid as u16, depth);
            drop(session);
            let (queue, early) = match registered {
                Ok(q) => {
                    let _ = tx.send(Ok(()));
                    q
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("queue {qid}: {e}")));
                    return Err(e);
                }
            };
            queue.serve(&fs, early)
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => return Err((anyhow::Error::from(e).context("starting a FUSE ring thread"), threads)),
        }
    }
    drop(tx);
    for _ in 0..threads_n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((anyhow::anyhow!(e), threads)),
            Err(_) => return Err((anyhow::anyhow!("a FUSE ring queue did not register"), threads)),
        }
    }
    tracing::info!(queues, threads = threads_n, entries = depth, "serving through FUSE over io_uring");
    Ok(threads)
}

impl Mounted {
    /// A handle that unmounts from another thread (a signal handler's), ending [`Mounted::run`].
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serves requests on the FUSE threads until the filesystem is unmounted, then closes
    /// the queue pairs.
    pub fn run(self) -> anyhow::Result<()> {
        tracing::info!(threads = self.threads, "serving");
        let result = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.threads)
                .map(|i| {
                    let (fs, link, session) = (&*self.fs, &*self.link, self.session.as_fd());
                    std::thread::Builder::new()
                        .name(format!("pangate-fuse{i}"))
                        .spawn_scoped(scope, move || session::serve(fs, link, session))
                })
                .collect::<Result<_, _>>()?;
            let mut result = Ok(());
            for w in workers {
                let r = w.join().unwrap_or_else(|_| Err(std::io::Error::other("a FUSE thread panicked")));
                if let Err(e) = &r {
                    tracing::error!(error = %e, "a FUSE thread stopped serving");
                }
                if let (Err(e), Ok(())) = (r, &result) {
                    result = Err(e);
                }
            }
            result
        });
        // The kernel gives the ring entries back when the filesystem goes.
        for t in self.ring_threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "a FUSE ring queue stopped serving"),
                Err(_) => tracing::error!("a FUSE ring thread panicked"),
            }
        }
        self.link.close();
        drop(self.session);
        result.context("serving FUSE requests")
    }
}

/// Unmounts a pangate mount point: directly as root, through `fusermount3 -u` otherwise.
pub fn unmount(mountpoint: &Path) -> anyhow::Result<()> {
    match rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .status()
                .context("running fusermount3 -u (needed to unmount as an ordinary user)")?;
            anyhow::ensure!(status.success(), "fusermount3 -u {} failed: {status}", mountpoint.display());
            Ok(())
        }
        Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}
