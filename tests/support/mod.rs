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
    pub fn start(dir: &Path, config: &Path) -> Gateway {
        let child = Command::new(env!("CARGO_BIN_EXE_pangate"))
            .args(["up", "--config"])
            .arg(config)
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = dir.join("pangate.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start listening within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
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

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
