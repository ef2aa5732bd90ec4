//! `pangate mount` and `pangate umount`: the FUSE host adapter on the command line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gateway::fuse::{self, MountRequest};
use gateway::ring::initiator::ConnectOptions;
use gateway::ring::link::{LinkOptions, DEFAULT_RECONNECT_TIMEOUT};

use crate::NodeArgs;

/// Set in the detached child of `pangate mount --daemon`: say "ready" on stdout once mounted.
const NOTIFY_ENV: &str = "PANGATE_MOUNT_NOTIFY";

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// Detach once the mount is ready.
    #[arg(long)]
    daemon: bool,
    /// FUSE threads, each with its own cloned /dev/fuse fd and ring queue pair
    /// (default: the number of CPUs, at most 4).
    #[arg(long)]
    queues: Option<usize>,
    /// Seconds a command may go unanswered by a gateway that is up before the connection is
    /// dropped and the I/O fails with EIO.
    #[arg(long, default_value_t = 30)]
    io_timeout: u64,
    /// Seconds I/O is held while the gateway is gone (restarting, say) before it fails with
    /// EIO; held commands are sent again once it is back (0: fail at once).
    #[arg(long, default_value_t = DEFAULT_RECONNECT_TIMEOUT.as_secs())]
    reconnect_timeout: u64,
    /// Let other users reach the files (needs user_allow_other in /etc/fuse.conf when not root).
    #[arg(long)]
    allow_other: bool,
    /// Microseconds a FUSE thread polls for a command that is alone in flight, with
    /// no other request waiting, instead of leaving the reply to the completion thread
    /// (0: never).
    #[arg(long, default_value_t = 30)]
    poll_us: u64,
    /// FUSE over io_uring (Linux 6.14+, with /sys/module/fuse/parameters/enable_uring set to
    /// Y): auto uses it where the kernel allows, on fails the mount when it cannot, off reads
    /// and writes /dev/fuse.
    #[arg(long, value_enum, default_value_t = Uring::Auto)]
    uring: Uring,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Uring {
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point.
    mountpoint: PathBuf,
}

pub fn run(a: MountArgs) -> anyhow::Result<()> {
    if a.daemon {
        return detach();
    }
    let (mut sockets, credential) = a.node.resolve()?;
    let socket = sockets.remove(0);
    let queues = a.queues.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(4)));
    anyhow::ensure!((1..=64).contains(&queues), "--queues must be between 1 and 64");
    let req = MountRequest {
        mountpoint: a.mountpoint.clone(),
        link: LinkOptions {
            socket,
            alternates: sockets,
            connect: ConnectOptions {
                pan: a.node.pan.clone(),
                node: a.node.node.clone(),
                credential,
                slots: 256,
                // Room for the deepest queue of the largest requests the kernel sends.
                data_bytes: 64 << 20,
                // The gateway's header counts FUSE mounts by this.
                client: Some("fuse".into()),
            },
            queues,
            io_timeout: Duration::from_secs(a.io_timeout.max(1)),
            retry: true,
            reconnect_timeout: Duration::from_secs(a.reconnect_timeout),
        },
        allow_other: a.allow_other,
        poll: Duration::from_micros(a.poll_us),
        uring: match a.uring {
            Uring::Auto => fuse::UringMode::Auto,
            Uring::On => fuse::UringMode::On,
            Uring::Off => fuse::UringMode::Off,
        },
    };
    // Taken before the files appear: a SIGTERM that comes as soon as they do must unmount,
    // not kill the process.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let mut mounted = fuse::mount(&req)?;
    let mut unmounter = mounted.unmounter();
    let mountpoint = a.mountpoint.clone();
    let handle = signals.handle();
    std::thread::Builder::new().name("pangate-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "unmounting");
            if let Err(e) = unmounter.unmount() {
                // Still in use (a loop device, an open file): detach it now, and the kernel
                // finishes the unmount when the last user lets go.
                tracing::warn!(error = %e, "unmount failed; detaching lazily");
                let _ = rustix::mount::unmount(&mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
    })?;
    if std::env::var_os(NOTIFY_ENV).is_some() {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        // The parent stops listening now; nothing more may go to the pipe.
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        rustix::stdio::dup2_stdout(&null)?;
        rustix::stdio::dup2_stderr(&null)?;
    } else {
        println!("mounted {} on {}", req.link.connect.node, a.mountpoint.display());
    }
    let result = mounted.run();
    handle.close();
    result
}

/// Starts this command again without `--daemon`, in its own process group with its output on
/// a pipe, and returns once it says the mount is ready (or fails with what it said).
fn detach() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the pangate executable")?;
    let args: Vec<_> = std::env::args_os().skip(1).filter(|a| a != "--daemon").collect();
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut child = std::process::Command::new(exe)
        .args(args)
        .env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .spawn()
        .context("starting the mount process")?;
    let mut said = String::new();
    for line in BufReader::new(std::fs::File::from(reader)).lines() {
        let line = line?;
        if line == "ready" {
            println!("mounted (pid {})", child.id());
            return Ok(());
        }
        said.push_str(&line);
        said.push('\n');
    }
    let status = child.wait()?;
    anyhow::bail!("the mount process exited ({status}) before the mount was ready:\n{}", said.trim_end())
}

pub fn umount(a: UmountArgs) -> anyhow::Result<()> {
    fuse::unmount(&a.mountpoint)
}
