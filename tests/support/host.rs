//! Host helpers for the tests that use the kernel's storage: commands, mount points, loop
//! devices and mounted filesystems, each cleaned up on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a command, panicking with its output unless it succeeds; returns its stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `point` is a mount point now.
pub fn mounted(point: &Path) -> bool {
    let point = point.canonicalize().unwrap_or_else(|_| point.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(point.to_str().unwrap()))
}

/// A loop device over a file, detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        Loop(sh("losetup", &["-f", "--show", file.to_str().unwrap()]).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A filesystem mounted on a directory, unmounted on drop.
pub struct FsMount(pub PathBuf);

impl FsMount {
    pub fn mount(dev: &str, at: &Path) -> FsMount {
        std::fs::create_dir_all(at).unwrap();
        sh("mount", &[dev, at.to_str().unwrap()]);
        FsMount(at.to_path_buf())
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
        if mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A page-aligned buffer for O_DIRECT.
pub struct AlignedBuf {
    v: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + 4096];
        let at = v.as_ptr().align_offset(4096);
        AlignedBuf { v, at, len }
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.at..self.at + self.len]
    }
}
