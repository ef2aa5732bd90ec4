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
//! - When the gateway goes away, I/O fails with EIO; the mount reconnects by itself.

mod files;
mod session;
pub mod span;
#[allow(unsafe_code)]
mod sys;
pub mod wire;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ring::link::{Link, LinkOptions};
use anyhow::Context;
pub use files::{file_name, Handshake, LunFiles, Polling, MAX_IO};
use fuser::{Config, MountOption, SessionACL};

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
}

/// A mounted filesystem, serving until unmounted.
#[derive(Debug)]
pub struct Mounted {
    /// fuser's session: the mount (unmounted on drop) and the fd the FUSE threads clone.
    session: fuser::Session<Handshake>,
    fs: Arc<LunFiles>,
    link: Arc<Link>,
    threads: usize,
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
    let session = fuser::Session::new(Handshake, &req.mountpoint, &config)
        .with_context(|| format!("mounting on {}", req.mountpoint.display()))?;
    if !req.poll.is_zero() {
        let device = session.as_fd().try_clone_to_owned().context("duplicating the /dev/fuse fd")?;
        let _ = polling.device.set(device);
    }
    Ok(Mounted { session, fs, link, threads })
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
