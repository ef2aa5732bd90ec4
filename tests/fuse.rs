//! `pangate mount` against the real kernel: FUSE, loop devices, ext4, fio. This binary
//! mounts with `--uring off` (requests through `/dev/fuse`); `tests/fuse_uring.rs` runs the
//! same tests with `--uring on` (FUSE over io_uring).
//!
//! These need root, /dev/fuse, losetup, mkfs.ext4, fsck.ext4 and fio. Outside CI a missing
//! prerequisite skips the test with a reason; with CI=true it fails it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "support/host.rs"]
mod host;
mod support;
use host::{mounted, sh, AlignedBuf, FsMount, Loop};
use rustix::fs::{fallocate, FallocateFlags};
use rustix::process::{kill_process, Pid, Signal};
use support::{on_path, skip_because, Gateway};

const PANGATE: &str = env!("CARGO_BIN_EXE_pangate");
const CRED: &str = "fuse-test-credential-0001";
/// The kernel's FUSE mounts are few and the machine small: one test at a time.
pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

/// How this binary's mounts reach the kernel: `--uring off`, or `on` when the suite is
/// compiled as `tests/fuse_uring.rs`'s module.
fn uring() -> &'static str {
    if module_path!().contains("over_uring") {
        "on"
    } else {
        "off"
    }
}

/// What a test holds while it runs: FUSE over io_uring switched on, in that mode.
pub(crate) struct Prepared(#[allow(dead_code)] Option<support::FuseUring>);

/// Whether the kernel parts are here; outside CI, says why not and returns `None`.
#[track_caller]
pub(crate) fn prerequisites() -> Option<Prepared> {
    let tools = ["losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount", "fio"];
    if !support::fuse_prerequisites("FUSE tests", &tools) {
        return None;
    }
    match uring() {
        "on" => support::FuseUring::enable().map(|u| Prepared(Some(u))),
        _ => Some(Prepared(None)),
    }
}

/// A config with PAN "p" and node "n": t0-l0 read-write (64 MiB), t0-l1 read-only (4 MiB).
fn write_config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"serial = "pg-fuse-test"
data_dir = "{dir}"
[[pan]]
name = "p"
[[pan.image]]
name = "rw"
path = "images/rw.img"
size = "64MiB"
[[pan.image]]
name = "ro"
path = "images/ro.img"
size = "4MiB"
[[pan.node]]
name = "n"
credential = "{CRED}"
luns = [
  {{ target = 0, lun = 0, image = "rw", access = "rw" }},
  {{ target = 0, lun = 1, image = "ro", access = "ro" }},
]
"#,
        dir = dir.display()
    );
    let file = dir.join("pangate.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A `pangate mount` process; on drop it is stopped and the mount point released, whatever
/// state the test left it in.
pub(crate) struct Mount {
    child: Option<Child>,
    point: PathBuf,
}

impl Mount {
    fn start(socket: &Path, point: &Path) -> Mount {
        Mount::start_with(socket, point, &[])
    }

    fn start_with(socket: &Path, point: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(point).unwrap();
        let child = Command::new(PANGATE)
            .args(["mount", "--uring", uring(), "--pan", "p", "--node", "n", "--credential", CRED, "--io-timeout", "5"])
            .arg("--socket")
            .arg(socket)
            .arg(point)
            .args(extra)
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let m = Mount { child: Some(child), point: point.to_path_buf() };
        m.wait_ready();
        m
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.file("t0-l0").exists() {
            assert!(Instant::now() < deadline, "the mount did not show its files within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.point.join(name)
    }

    /// The mount process's pid.
    #[allow(dead_code)] // for tests/fuse_uring.rs
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_child(self.child.as_ref().expect("running"));
        kill_process(pid, sig).expect("a child we spawned and have not reaped");
    }

    /// Waits for the mount process to exit; returns its status.
    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(Instant::now() < deadline, "the mount process did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

/// A gateway with the test config and a mount of node "n".
/// Fields drop in this order: the mount and the gateway stop before the directory holding
/// their socket, images and mount point is removed (removing it first could walk into a
/// mount whose gateway it had just taken away).
pub(crate) struct Rig {
    pub(crate) mount: Mount,
    gateway: Option<Gateway>,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Rig {
    pub(crate) fn new() -> Rig {
        Rig::with_mount_args(&[])
    }

    fn with_mount_args(extra: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let gateway = Gateway::start(dir.path(), &config);
        let mount = Mount::start_with(&gateway.socket, &dir.path().join("mnt"), extra);
        Rig { mount, gateway: Some(gateway), dir, config }
    }

    /// Stops the gateway with `sig`, leaves it down for `outage`, and starts it again.
    fn restart_gateway(&mut self, sig: Signal, outage: Duration) {
        let mut gw = self.gateway.take().expect("running");
        gw.signal(sig);
        gw.wait(Duration::from_secs(20));
        drop(gw);
        std::thread::sleep(outage);
        self.gateway = Some(Gateway::start(self.dir.path(), &self.config));
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("pangate.sock")
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn ext4_on_a_loop_device_survives_unmount_fsck_and_remount() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let rig = Rig::new();
    let lun = rig.mount.file("t0-l0");
    let fs_dir = rig.dir.path().join("ext4");
    let mut sums = BTreeMap::new();
    {
        let dev = Loop::attach(&lun);
        sh("mkfs.ext4", &["-q", "-F", &dev.0]);
        let fs = FsMount::mount(&dev.0, &fs_dir);
        for d in 0..4 {
            std::fs::create_dir_all(fs_dir.join(format!("d{d}/sub"))).unwrap();
            for f in 0..8u64 {
                let len = 1000 + (f as usize * 37_123) % 700_000;
                let data = pattern(len, d * 100 + f + 1);
                let rel = format!("d{d}/{}f{f}", if f % 2 == 0 { "sub/" } else { "" });
                std::fs::write(fs_dir.join(&rel), &data).unwrap();
                sums.insert(rel, data);
            }
        }
        sh("sync", &[]);
        drop(fs);
        let report = sh("fsck.ext4", &["-fn", &dev.0]);
        assert!(report.contains("files"), "{report}");
    }
    // A fresh loop device and mount read everything back through the gateway.
    let dev = Loop::attach(&lun);
    let _fs = FsMount::mount(&dev.0, &fs_dir);
    for (rel, data) in &sums {
        let back = std::fs::read(fs_dir.join(rel)).unwrap();
        assert!(back == *data, "{rel} changed after remount");
    }
}

#[test]
fn fio_random_writes_verify_through_o_direct() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let rig = Rig::new();
    let lun = rig.mount.file("t0-l0");
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=io_uring",
            "--direct=1",
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=24M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", lun.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fio failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"].as_u64(), Some(24 << 20), "every block written");
    assert_eq!(job["read"]["io_bytes"].as_u64(), Some(24 << 20), "every block read back and verified");
}

#[test]
fn a_gateway_gone_past_the_reconnect_timeout_fails_io_then_the_same_mount_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let mut rig = Rig::with_mount_args(&["--reconnect-timeout", "2"]);
    let lun = rig.mount.file("t0-l0");
    let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&lun).unwrap();
    let before = pattern(64 << 10, 7);
    f.write_all_at(&before, 1 << 20).unwrap();
    f.sync_all().unwrap();

    // Kill the gateway under I/O: a writer keeps going until it sees an error.
    let writer = {
        let f = f.try_clone().unwrap();
        std::thread::spawn(move || {
            let block = pattern(4096, 9);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut n = 0u64;
            while Instant::now() < deadline {
                if let Err(e) = f.write_all_at(&block, (8 << 20) + (n % 256) * 4096) {
                    return (n, Some(e));
                }
                n += 1;
            }
            (n, None)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    rig.gateway.as_ref().unwrap().signal(Signal::KILL);
    let (done, err) = writer.join().unwrap();
    let err = err.expect("I/O kept succeeding with the gateway dead");
    assert!(done > 10, "the writer did I/O before the kill");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Held for the 2 s reconnect timeout, then failed.
    let took = killed.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "EIO after {took:?}");
    drop(rig.gateway.take());
    let mut buf = vec![0u8; 4096];
    let e = f.read_exact_at(&mut buf, 0).expect_err("reads fail while the gateway is down");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));

    // Restart: the mount reconnects by itself and the same open file works again.
    rig.gateway = Some(Gateway::start(rig.dir.path(), &rig.config));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut back = vec![0u8; before.len()];
    loop {
        match f.read_exact_at(&mut back, 1 << 20) {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "no recovery within 15 s: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(back == before, "data flushed before the crash reads back intact");
    f.write_all_at(&pattern(4096, 11), 0).unwrap();
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern(4096, 11));
    assert_eq!(rig.socket(), rig.gateway.as_ref().unwrap().socket);
}

#[test]
fn read_only_maps_edges_and_unaligned_io() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let rig = Rig::new();
    let ro = rig.mount.file("t0-l1");
    let rw = rig.mount.file("t0-l0");
    let mut names: Vec<_> =
        std::fs::read_dir(&rig.mount.point).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["t0-l0", "t0-l1"]);

    // Read-only: mode 0444, opening for writing fails with EROFS, reads work.
    let meta = std::fs::metadata(&ro).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(meta.len(), 4 << 20);
    let e = OpenOptions::new().write(true).open(&ro).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(std::fs::read(&ro).unwrap().len(), 4 << 20);

    // Sizes and edges, as for a regular file.
    let cap = std::fs::metadata(&rw).unwrap().len();
    assert_eq!(cap, 64 << 20);
    let f = OpenOptions::new().read(true).write(true).open(&rw).unwrap();
    let mut buf = [0u8; 100];
    assert_eq!(f.read_at(&mut buf, cap).unwrap(), 0, "a read at the end returns nothing");
    assert_eq!(f.read_at(&mut buf, cap + 12345).unwrap(), 0, "a read past the end returns nothing");
    assert_eq!(f.read_at(&mut buf, cap - 10).unwrap(), 10, "a read across the end is short");
    assert_eq!(f.read_at(&mut [], 0).unwrap(), 0);
    assert_eq!(f.write_at(&[], 0).unwrap(), 0);
    let e = f.write_at(b"x", cap).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "writing past the end of a disk: {e}");

    // Unaligned writes read-modify-write around their bytes.
    f.write_all_at(&[0xAA; 4096], 0).unwrap();
    f.write_all_at(b"hello", 1000).unwrap();
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, 0).unwrap();
    let mut want = vec![0xAA; 4096];
    want[1000..1005].copy_from_slice(b"hello");
    assert_eq!(back, want);

    // Concurrent unaligned writes sharing blocks never lose each other's bytes.
    let threads: Vec<_> = (0..6u8)
        .map(|t| {
            let f = f.try_clone().unwrap();
            std::thread::spawn(move || {
                for round in 0..40u8 {
                    // Thread t owns bytes [t*80, t*80+80) of each of blocks 16..20.
                    for block in 16..20u64 {
                        f.write_all_at(&[t * 40 + round + 1; 80], block * 512 + u64::from(t) * 80).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut blocks = vec![0u8; 4 * 512];
    f.read_exact_at(&mut blocks, 16 * 512).unwrap();
    for block in 0..4 {
        for t in 0..6u8 {
            let at = block * 512 + usize::from(t) * 80;
            let got = &blocks[at..at + 80];
            assert!(got.iter().all(|&b| b == t * 40 + 40), "block {block}, thread {t}: torn: {got:?}");
        }
    }

    // Hole punching and zeroing read back as zeros; fsync reaches the gateway.
    f.write_all_at(&[0x55; 3 << 20], 1 << 20).unwrap();
    fallocate(&f, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, (1 << 20) + 100, 1 << 20).unwrap();
    fallocate(&f, FallocateFlags::ZERO_RANGE, (3 << 20) + 7, 5000).unwrap();
    f.sync_all().unwrap();
    let mut region = vec![0u8; 3 << 20];
    f.read_exact_at(&mut region, 1 << 20).unwrap();
    for (i, &b) in region.iter().enumerate() {
        let off = i as u64 + (1 << 20);
        let zero =
            ((1 << 20) + 100..(2 << 20) + 100).contains(&off) || ((3 << 20) + 7..(3 << 20) + 5007).contains(&off);
        assert_eq!(b, if zero { 0 } else { 0x55 }, "byte at {off}");
    }

    // O_DIRECT with a 1 MiB request, through the normal file API.
    let mut d = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&rw).unwrap();
    let big = pattern(1 << 20, 3);
    let mut aligned = AlignedBuf::new(1 << 20);
    aligned.as_mut().copy_from_slice(&big);
    d.seek(SeekFrom::Start(8 << 20)).unwrap();
    d.write_all(aligned.as_mut()).unwrap();
    d.seek(SeekFrom::Start(8 << 20)).unwrap();
    aligned.as_mut().fill(0);
    d.read_exact(aligned.as_mut()).unwrap();
    assert!(aligned.as_mut() == &big[..]);
    d.flush().unwrap();

    // statfs reports the LUNs.
    let st = rustix::fs::statfs(&rig.mount.point).unwrap();
    assert_eq!(st.f_files, 2);
    assert_eq!(st.f_blocks as u64 * st.f_bsize as u64, (64 << 20) + (4 << 20));
}

#[test]
fn sigterm_umount_and_daemon_mode_unmount_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let mut rig = Rig::new();
    // SIGTERM unmounts and exits 0.
    rig.mount.signal(Signal::TERM);
    let status = rig.mount.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!mounted(&rig.mount.point));

    // --daemon returns once the files are there; `pangate umount` ends the mount process.
    let out = Command::new(PANGATE)
        .args(["mount", "--daemon", "--uring", uring(), "--pan", "p", "--node", "n", "--credential", CRED, "--socket"])
        .arg(rig.socket())
        .arg(&rig.mount.point)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rig.mount.file("t0-l0").exists(), "files are there when --daemon returns");
    let out = Command::new(PANGATE).arg("umount").arg(&rig.mount.point).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted(&rig.mount.point));

    // A wrong credential fails the mount with the gateway's reason, and mounts nothing.
    let out = Command::new(PANGATE)
        .args(["mount", "--daemon", "--pan", "p", "--node", "n", "--credential", "wrong-credential-000000", "--socket"])
        .arg(rig.socket())
        .arg(&rig.mount.point)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    assert!(!mounted(&rig.mount.point));
}

/// `pangate mount` with `--uring MODE --log-level info` in the foreground, its log in
/// `log`, once its files show.
fn mount_logging(socket: &Path, point: &Path, mode: &str, log: &Path) -> Mount {
    std::fs::create_dir_all(point).unwrap();
    let child = Command::new(PANGATE)
        .args(["mount", "--uring", mode, "--pan", "p", "--node", "n", "--credential", CRED, "--socket"])
        .arg(socket)
        .arg(point)
        .args(["--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let m = Mount { child: Some(child), point: point.to_path_buf() };
    m.wait_ready();
    m
}

/// Run by the io_uring binary (it switches the kernel's parameter itself): `--uring on`
/// fails where FUSE over io_uring is off and says how to turn it on; `auto` then serves
/// through /dev/fuse and says the same once; with it on, `auto` uses it.
#[test]
fn uring_on_fails_clearly_where_it_is_off_and_auto_falls_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if uring() != "on" {
        return;
    }
    let Some(_prepared) = prerequisites() else {
        return;
    };
    std::fs::write(support::FuseUring::PARAM, "N").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gw = Gateway::start(dir.path(), &config);
    let point = dir.path().join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let out = Command::new(PANGATE)
        .args(["mount", "--daemon", "--uring", "on", "--pan", "p", "--node", "n", "--credential", CRED, "--socket"])
        .arg(&gw.socket)
        .arg(&point)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--uring on mounted with FUSE over io_uring off");
    assert!(err.contains("enable_uring"), "the error says how to turn it on: {err}");
    assert!(!mounted(&point));

    let log = dir.path().join("auto.log");
    let mut m = mount_logging(&gw.socket, &point, "auto", &log);
    let lun = m.file("t0-l0");
    std::fs::OpenOptions::new().write(true).open(&lun).unwrap().write_all_at(&pattern(4096, 7), 0).unwrap();
    let mut back = vec![0u8; 4096];
    std::fs::File::open(&lun).unwrap().read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, pattern(4096, 7));
    m.signal(Signal::TERM);
    assert!(m.wait(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving through /dev/fuse") && text.contains("enable_uring"), "{text}");

    std::fs::write(support::FuseUring::PARAM, "Y").unwrap();
    let log = dir.path().join("auto-on.log");
    let mut m = mount_logging(&gw.socket, &point, "auto", &log);
    m.signal(Signal::TERM);
    assert!(m.wait(Duration::from_secs(10)).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving through FUSE over io_uring"), "{text}");
}

#[test]
fn a_hung_gateway_fails_io_within_the_timeout_instead_of_hanging() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let rig = Rig::new();
    let f = OpenOptions::new().read(true).write(true).open(rig.mount.file("t0-l0")).unwrap();
    f.write_all_at(&pattern(4096, 5), 0).unwrap();
    let gw = rig.gateway.as_ref().unwrap();
    gw.signal(Signal::STOP);
    // SIGSTOP takes effect per thread, asynchronously: a polling worker could still answer
    // one more request. Wait until every thread is stopped.
    let tasks = format!("/proc/{}/task", gw.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    let stopped = || {
        std::fs::read_dir(&tasks).unwrap().flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    };
    while !stopped() {
        assert!(Instant::now() < deadline, "the gateway's threads did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let e = f.read_exact_at(&mut buf, 0).expect_err("a stopped gateway cannot answer");
    gw.signal(Signal::CONT);
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // The mount was started with --io-timeout 5.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(10), "EIO after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.read_exact_at(&mut buf, 0).is_err() {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(buf, pattern(4096, 5));
}

#[test]
fn an_ordinary_user_mounts_through_fusermount3() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let tools = on_path("fusermount3") && on_path("setpriv");
    if skip_because((!tools).then(|| "needs fusermount3 (fuse3) and setpriv (util-linux)".into())) {
        return;
    }
    // Distributions make /dev/fuse 0666 so users can open it; some containers leave it 0600.
    // Open it up for the test, as on a normal host, and put it back afterwards.
    let _fuse_mode = DevFuseMode::open_up();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gw = Gateway::start(dir.path(), &config);
    // The user must reach the socket, and own the mount point.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&gw.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let point = dir.path().join("user-mnt");
    std::fs::create_dir(&point).unwrap();
    rustix::fs::chown(&point, Some(rustix::fs::Uid::from_raw(65534)), Some(rustix::fs::Gid::from_raw(65534))).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).args(args);
        c
    };
    let sock = gw.socket.to_str().unwrap();
    let mnt = point.to_str().unwrap();
    let child = as_nobody(&[
        PANGATE,
        "mount",
        "--uring",
        uring(),
        "--pan",
        "p",
        "--node",
        "n",
        "--credential",
        CRED,
        "--socket",
        sock,
        mnt,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let mut m = Mount { child: Some(child), point: point.clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted(&point) {
        assert!(Instant::now() < deadline, "the user's mount did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lun = format!("{mnt}/t0-l0");
    let wrote =
        as_nobody(&["dd", "if=/dev/zero", &format!("of={lun}"), "bs=4096", "count=4", "oflag=direct", "conv=notrunc"])
            .output()
            .unwrap();
    assert!(wrote.status.success(), "{}", String::from_utf8_lossy(&wrote.stderr));
    let read = as_nobody(&["dd", &format!("if={lun}"), "of=/dev/null", "bs=4096", "count=4", "iflag=direct"])
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    // Unmounting as the user goes through fusermount3 -u.
    let out = as_nobody(&[PANGATE, "umount", mnt]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(m.wait(Duration::from_secs(10)).success());
    assert!(!mounted(&point));
}

/// /dev/fuse's mode, restored on drop.
struct DevFuseMode(u32);

impl DevFuseMode {
    fn open_up() -> DevFuseMode {
        let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseMode(mode)
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

#[test]
fn a_lun_file_follows_a_resize_in_the_gateway() {
    use gateway::config::Config;
    use gateway::ring::server::{Server, ServerOptions};
    use gateway::storage;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(&write_config(dir.path())).unwrap();
    let (images, maps) = storage::open_all(&cfg, dir.path()).unwrap();
    let image = maps.iter().find(|m| (m.target, m.lun) == (0, 0)).unwrap().image;
    let socket = dir.path().join("pangate.sock");
    let server =
        Server::start(images, gateway::registry::Registry::from_config(&cfg, &maps), ServerOptions::new(&socket))
            .unwrap();
    let mount = Mount::start(&socket, &dir.path().join("mnt"));
    let lun = mount.file("t0-l0");
    assert_eq!(std::fs::metadata(&lun).unwrap().len(), 64 << 20);
    server.images().grow(image, 128 << 20).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&lun).unwrap().len() != 128 << 20 {
        assert!(Instant::now() < deadline, "the file kept its old size");
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = OpenOptions::new().read(true).write(true).open(&lun).unwrap();
    f.write_all_at(&pattern(8192, 21), 100 << 20).unwrap();
    let mut back = vec![0u8; 8192];
    f.read_exact_at(&mut back, 100 << 20).unwrap();
    assert_eq!(back, pattern(8192, 21), "the new blocks are usable");
    drop(f);
    drop(mount);
    server.shutdown().unwrap();
}

#[test]
fn ext4_stays_read_write_across_gateway_restarts_with_sigterm_and_sigkill() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else {
        return;
    };
    let mut rig = Rig::new();
    let dev = Loop::attach(&rig.mount.file("t0-l0"));
    sh("mkfs.ext4", &["-q", "-F", &dev.0]);
    let fs_dir = rig.dir.path().join("ext4");
    let fs = FsMount::mount(&dev.0, &fs_dir);
    // A writer that fsyncs every file, as a database would, and stops at its first error.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (fs_dir.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let path = dir.join(format!("f{}", n % 200));
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&path)?;
                    f.write_all(&pattern(48 << 10, n))?;
                    f.sync_all()
                };
                write().map_err(|e| format!("file {n}: {e}"))?;
                n += 1;
            }
            Ok(n)
        })
    };
    // A clean stop (SIGTERM) and a crash (SIGKILL), each with half a second of outage.
    for sig in [Signal::TERM, Signal::KILL] {
        std::thread::sleep(Duration::from_millis(700));
        rig.restart_gateway(sig, Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap().unwrap_or_else(|e| panic!("a write failed across a restart: {e}"));
    assert!(written > 20, "the writer wrote {written} files");
    // Still read-write: ext4 did not abort its journal.
    let opts = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == fs_dir.canonicalize().unwrap().to_str())
        .map(|l| l.split(' ').nth(3).unwrap_or("").to_string())
        .expect("the ext4 mount is still there");
    assert!(opts.split(',').any(|o| o == "rw"), "remounted read-only: {opts}");
    std::fs::write(fs_dir.join("after"), b"still writable").unwrap();
    for k in 0..written.min(200) {
        let last = (0..written).filter(|n| n % 200 == k).max().unwrap();
        assert!(std::fs::read(fs_dir.join(format!("f{k}"))).unwrap() == pattern(48 << 10, last), "file f{k}");
    }
    drop(fs);
    let out = Command::new("fsck.ext4").args(["-fn", &dev.0]).output().unwrap();
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
