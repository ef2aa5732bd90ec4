//! What the root package's tests share: the `pangate` binary as a child process, and the
//! prerequisite checks (which the gateway's own tests use too).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

#[path = "../../gateway/tests/support/prereq.rs"]
mod prereq;
#[allow(unused_imports)] // not every test binary checks for prerequisites
pub use prereq::*;

/// A gateway child process, killed on drop so a failing test leaves nothing running.
pub struct Gateway {
    pub child: Child,
    pub socket: PathBuf,
}

impl Gateway {
    /// Starts `pangate up` with `config` (whose data directory is `dir`) and returns once it
    /// has told systemd's protocol it is ready: every front-end, netvirt and the web admin
    /// serve (so a test that counts its threads or ports sees them all).
    pub fn start(dir: &Path, config: &Path) -> Gateway {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify_path = dir.join(format!("notify-{n}.sock"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pangate"))
            .args(["up", "--config"])
            .arg(config)
            .arg("--log-level")
            .arg("warn")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                    break;
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the gateway exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "the gateway was not ready within 30 s");
        }
        let _ = std::fs::remove_file(&notify_path);
        let socket = dir.join("pangate.sock");
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok(), "ready, but its socket does not answer");
        Gateway { child, socket }
    }

    pub fn signal(&self, sig: Signal) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, sig).expect("a child we spawned and have not reaped");
    }

    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether tests of `what` that mount FUSE file systems can run: root, /dev/fuse and
/// `tools`. Outside CI, says why not and returns false; under CI=true a missing part fails.
#[track_caller]
pub fn fuse_prerequisites(what: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if rustix::process::geteuid().as_raw() != 0 {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".into());
    }
    missing.extend(tools.iter().filter(|t| !on_path(t)).map(|t| t.to_string()));
    !skip_because((!missing.is_empty()).then(|| format!("{what} need {}", missing.join(", "))))
}

/// FUSE over io_uring switched on (`/sys/module/fuse/parameters/enable_uring` = Y) while
/// held, and put back as it was on drop.
pub struct FuseUring(String);

impl FuseUring {
    pub const PARAM: &'static str = "/sys/module/fuse/parameters/enable_uring";

    /// Switches it on. Outside CI, says why not and returns `None` where the kernel has no
    /// FUSE over io_uring; with CI=true that is a failure.
    pub fn enable() -> Option<FuseUring> {
        let Ok(was) = std::fs::read_to_string(Self::PARAM) else {
            skip_because(Some(format!(
                "FUSE over io_uring needs Linux 6.14+ with CONFIG_FUSE_IO_URING ({} is missing)",
                Self::PARAM
            )));
            return None;
        };
        std::fs::write(Self::PARAM, "Y").unwrap_or_else(|e| panic!("turning on {}: {e}", Self::PARAM));
        Some(FuseUring(was.trim().to_string()))
    }
}

impl Drop for FuseUring {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PARAM, &self.0);
    }
}

/// The SCSI disk whose vendor is PANGATE, if the kernel has one.
pub fn pangate_disk() -> Option<PathBuf> {
    std::fs::read_dir("/sys/block").ok()?.flatten().find_map(|e| {
        let vendor = std::fs::read_to_string(e.path().join("device/vendor")).unwrap_or_default();
        (vendor.trim() == "PANGATE").then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// The PANGATE disk, once it appears and opens (within `within`, or the test fails): its
/// sysfs entry shows while the sd driver is still bringing it up, and opening its node
/// then fails with ENXIO.
pub fn await_pangate_disk(within: Duration) -> PathBuf {
    let deadline = Instant::now() + within;
    loop {
        let found = pangate_disk();
        match found.as_deref().map(|d| std::fs::OpenOptions::new().read(true).open(d)) {
            Some(Ok(_)) => return found.expect("found"),
            Some(Err(e)) if e.raw_os_error() != Some(libc::ENXIO) && e.kind() != std::io::ErrorKind::NotFound => {
                panic!("opening {}: {e}", found.expect("found").display())
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "no PANGATE disk appeared and opened within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
