//! The TCMU front-end against the real kernel: a LIO `user:` backstore created through
//! configfs, exported on a loopback LUN, with real I/O on the SCSI disk that appears; and
//! the same backstore exported by LIO's own iSCSI target on 127.0.0.1, with libiscsi's
//! conformance suites against it; and a loopback LUN whose image is the VM's emulated NVMe
//! drive, on the NVMe passthrough engine.
//!
//! They need target_core_user, tcm_loop or iscsi_target_mod, and a mounted configfs. On a
//! kernel without them (this machine's and CI's) each test runs itself again inside
//! `scripts/vm`'s guest, a Debian kernel that has them; where no VM can run, it skips with
//! the reason outside CI and fails under CI=true.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "support/libiscsi.rs"]
mod libiscsi;
mod support;
use support::Gateway;

const CRED: &str = "tcmu-lio-credential-0001";
const TARGET: &str = "/sys/kernel/config/target";
const WWN: &str = "naa.5001405000000a11";
const INITIATOR: &str = "naa.5001405000000a12";

fn loaded(module: &str) -> bool {
    Path::new("/sys/module").join(module).exists()
        || Command::new("modprobe").arg(module).status().is_ok_and(|s| s.success())
}

/// The tools the test runs against the disk, if one is missing.
fn tools_missing() -> Option<String> {
    let missing: Vec<&str> = ["sg_inq", "sg_readcap", "sg_vpd", "sg_unmap", "sg_persist", "mkfs.ext4", "fsck.ext4"]
        .into_iter()
        .filter(|t| !support::on_path(t) && !["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(t).exists()))
        .collect();
    (!missing.is_empty()).then(|| format!("the TCMU test needs {} (sg3-utils, e2fsprogs)", missing.join(", ")))
}

/// Why this kernel cannot run a test needing the LIO fabric module `fabric_module`, whose
/// configfs directory is `fabric`, if it cannot.
fn missing(fabric_module: &str, fabric: &str) -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("root".into());
    }

    for m in ["target_core_user", fabric_module] {
        if !loaded(m) {
            return Some(format!("the {m} kernel module"));
        }
    }
    if !Path::new(TARGET).exists() {
        let _ = Command::new("mount").args(["-t", "configfs", "none", "/sys/kernel/config"]).status();
    }
    (!Path::new(TARGET).join(fabric).exists() && fs::create_dir_all(Path::new(TARGET).join(fabric)).is_err())
        .then(|| format!("LIO's configfs tree with the {fabric} fabric"))
}

/// Runs the test `name` here, or in the VM when this kernel lacks what it needs; false
/// when it ran elsewhere or was skipped.
fn here_or_in_vm(name: &str, fabric_module: &str, fabric: &str) -> bool {
    support::here_or_in_vm(name, missing(fabric_module, fabric))
}

/// Where the VM's emulated NVMe drive shows its namespace, and how large the drive is.
const NVME_NAMESPACE: &str = "/dev/ng0n1";
const NVME_DRIVE: &str = "64M";

/// LIO records reservations in files under its dbroot after every change, APTPL or not,
/// and fails PERSISTENT RESERVE OUT where it cannot (targetcli makes the directory).
fn reservations_directory() {
    let dbroot = fs::read_to_string(Path::new(TARGET).join("dbroot")).unwrap_or_else(|_| "/etc/target".into());
    fs::create_dir_all(Path::new(dbroot.trim()).join("pr")).unwrap();
}

/// A gateway config serving one 64 MiB LUN on `image` (a path) with `block_size` to node n.
fn config(dir: &Path, image: &str, block_size: u32) -> PathBuf {
    let cfg = dir.join("pangate.toml");
    fs::write(
        &cfg,
        format!(
            "serial = \"pg-lio\"\ndata_dir = \"{}\"\n[storage]\nblock_devices = [\"{NVME_NAMESPACE}\"]\n[[pan]]\nname = \"p\"\n[[pan.image]]\nname = \"d\"\npath = \"{image}\"\nsize = \"64MiB\"\nblock_size = {block_size}\n[[pan.node]]\nname = \"n\"\ncredential = \"{CRED}\"\nluns = [{{ target = 0, lun = 0, image = \"d\", access = \"rw\" }}]\n",
            dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// A gateway serving one 64 MiB LUN on `image` to node n, and a LIO `user:` backstore of it
/// (in the configfs objects returned, which the caller adds to). Bind them in this order,
/// so the configfs objects go first: a LUN whose handler has already gone waits out LIO's
/// command timeouts before it can be removed.
fn backstore(dir: &Path, image: &str) -> (Gateway, Configfs, PathBuf) {
    let mut c = Configfs::default();
    let gw = Gateway::start(dir, &config(dir, image, 512));
    let core = Path::new(TARGET).join("core/user_57/pangate-test");
    c.mkdir(core.clone());
    c.write(core.join("control"), "dev_config=pangate/p/n/0/0,dev_size=67108864");
    c.write(core.join("enable"), "1");
    (gw, c, core)
}

/// Configfs objects, removed in reverse order on drop.
#[derive(Default)]
struct Configfs {
    dirs: Vec<PathBuf>,
    links: Vec<PathBuf>,
}

impl Configfs {
    fn mkdir(&mut self, p: PathBuf) {
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self.dirs.push(p);
    }

    fn write(&self, p: PathBuf, v: &str) {
        fs::write(&p, v).unwrap_or_else(|e| panic!("writing {v:?} to {}: {e}", p.display()));
    }
}

impl Drop for Configfs {
    fn drop(&mut self) {
        for l in self.links.drain(..).rev() {
            let _ = fs::remove_file(l);
        }
        for d in self.dirs.drain(..).rev() {
            let _ = fs::write(d.join("nexus"), "");
            let _ = fs::remove_dir(&d);
        }
    }
}

#[test]
fn lio_loopback_lun_backed_by_pangate() {
    if support::skip_because(tools_missing())
        || !here_or_in_vm("lio_loopback_lun_backed_by_pangate", "tcm_loop", "loopback")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_gw, c, core) = backstore(dir.path(), "images/d.img");
    let (_c, disk) = loopback(c, &core);
    let f = fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    f.write_all_at(&data, 4 << 20).unwrap();
    f.sync_all().unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 4 << 20).unwrap();
    assert!(back == data, "data written through LIO reads back");
    drop(f);

    // Linux's sd driver, sg3_utils and e2fsprogs against the disk, as an administrator would.
    let dev = disk.to_str().unwrap();
    let inq = tool(&["sg_inq", dev]);
    assert!(inq.contains("PANGATE") && inq.contains("pangate disk"), "{inq}");
    let cap = tool(&["sg_readcap", "--16", dev]);
    assert!(cap.contains("Logical block length=512 bytes") && cap.contains("Number of logical blocks=131072"), "{cap}");
    let ids = tool(&["sg_vpd", "--page=0x83", dev]);
    assert!(ids.contains("NAA"), "a NAA designator of pangate's: {ids}");
    let limits = tool(&["sg_vpd", "--page=0xb0", dev]);
    assert!(limits.contains("Maximum unmap LBA count"), "{limits}");
    tool(&["sg_unmap", "--lba=0", "--num=2048", dev]);
    tool(&["mkfs.ext4", "-q", "-F", dev]);
    tool(&["fsck.ext4", "-fn", dev]);

    // Persistent reservations, which LIO keeps for a `user:` backstore: register, reserve,
    // read both back, release, unregister.
    reservations_directory();
    tool(&["sg_persist", "--out", "--register", "--param-sark=0xabc1", dev]);
    let keys = tool(&["sg_persist", "--in", "--read-keys", dev]);
    assert!(keys.contains("0xabc1"), "{keys}");
    tool(&["sg_persist", "--out", "--reserve", "--param-rk=0xabc1", "--prout-type=1", dev]);
    let held = tool(&["sg_persist", "--in", "--read-reservation", dev]);
    assert!(held.contains("0xabc1") && held.contains("Write Exclusive"), "{held}");
    tool(&["sg_persist", "--out", "--release", "--param-rk=0xabc1", "--prout-type=1", dev]);
    tool(&["sg_persist", "--out", "--register", "--param-rk=0xabc1", "--param-sark=0", dev]);
    let keys = tool(&["sg_persist", "--in", "--read-keys", dev]);
    assert!(!keys.contains("0xabc1"), "{keys}");
}

/// Exports the backstore at `core` on a tcm_loop LUN; the configfs objects and the SCSI disk
/// that appears.
fn loopback(mut c: Configfs, core: &Path) -> (Configfs, PathBuf) {
    let tpg = Path::new(TARGET).join("loopback").join(WWN).join("tpgt_1");
    c.mkdir(tpg.clone());
    c.write(tpg.join("nexus"), INITIATOR);
    let lun = tpg.join("lun/lun_0");
    c.mkdir(lun.clone());
    let link = lun.join("pangate-test");
    std::os::unix::fs::symlink(core, &link).unwrap();
    c.links.push(link);
    (c, support::await_pangate_disk(Duration::from_secs(20)))
}

/// A LUN whose image is an NVMe namespace runs on the NVMe passthrough engine (chosen by
/// `auto` for `/dev/ngXnY`): a block size other than the namespace's is refused at start;
/// through LIO and tcm_loop, Linux's sd driver, sg3_utils and ext4 work on it, its Block
/// Limits come from the drive, and the bytes land on the drive itself.
#[test]
fn lio_loopback_lun_on_an_nvme_drive() {
    let name = "lio_loopback_lun_on_an_nvme_drive";
    if support::skip_because(tools_missing()) {
        return;
    }
    if !support::in_vm() {
        // This host has no NVMe driver to lend a drive to the test in any case.
        if !support::skip_because(
            support::vm_missing().map(|vm| format!("the NVMe test runs in the test VM, and {vm}")),
        ) {
            support::run_in_vm_with(name, &[("PANGATE_VM_NVME", NVME_DRIVE)]);
        }
        return;
    }
    assert!(missing("tcm_loop", "loopback").is_none(), "the test VM has TCMU and tcm_loop");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !Path::new(NVME_NAMESPACE).exists() {
        assert!(std::time::Instant::now() < deadline, "no {NVME_NAMESPACE} in the test VM");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    // 4096-byte blocks on a namespace formatted with 512: refused, saying so.
    let out = Command::new(env!("CARGO_BIN_EXE_pangate"))
        .args(["up", "--config"])
        .arg(config(dir.path(), NVME_NAMESPACE, 4096))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("formatted with 512-byte blocks"), "{text}");

    let (mut gw, c, core) = backstore(dir.path(), NVME_NAMESPACE);
    let (c, disk) = loopback(c, &core);
    let dev = disk.to_str().unwrap();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 241) as u8).collect();
    let f = fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    f.write_all_at(&data, 8 << 20).unwrap();
    f.sync_all().unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 8 << 20).unwrap();
    assert!(back == data, "data written through LIO reads back from the drive");
    drop(f);
    let cap = tool(&["sg_readcap", "--16", dev]);
    assert!(cap.contains("Logical block length=512 bytes") && cap.contains("Number of logical blocks=131072"), "{cap}");
    let limits = tool(&["sg_vpd", "--page=0xb0", dev]);
    // The optimal transfer is one NVMe command's worth, not the default 128 KiB.
    assert!(limits.contains("Optimal transfer length") && !limits.contains("length: 256 blocks"), "{limits}");
    tool(&["sg_unmap", "--lba=0", "--num=2048", dev]);
    tool(&["mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev]);
    tool(&["fsck.ext4", "-fn", dev]);
    drop(c);
    gw.signal(rustix::process::Signal::TERM);
    assert!(gw.wait(Duration::from_secs(20)).success());
    // The namespace's own block device, once the gateway has gone: the file system is on
    // the drive.
    let raw = fs::read(Path::new("/dev/nvme0n1")).unwrap();
    assert_eq!(raw.len(), 64 << 20);
    assert_eq!(raw[1024 + 56..1024 + 58], [0x53, 0xEF], "ext4's superblock magic is on the drive");
}

/// Runs a tool that must succeed; its output.
fn tool(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {text}");
    text
}

const IQN: &str = "iqn.2026-12.io.pangate:lio";
const INITIATOR_A: &str = "iqn.2026-12.io.pangate:init-a";
const INITIATOR_B: &str = "iqn.2026-12.io.pangate:init-b";
/// Tests that fail through LIO whatever the backstore, with why: LIO's core answers RESERVE
/// and RELEASE itself and never passes them to a `user:` backstore.
const LIO_FAILS: &[(&str, &str)] = &[
    ("SCSI.Reserve6.Logout", "LIO (Linux 6.1) keeps an SPC-2 reservation after its holder logs out"),
    ("SCSI.Reserve6.ITNexusLoss", "LIO (Linux 6.1) keeps an SPC-2 reservation after its holder's I_T nexus is lost"),
];

/// LIO's iSCSI target exports pangate's TCMU backstore on 127.0.0.1, and every libiscsi
/// SCSI suite runs against it through both: the commands LIO passes to a `user:` backstore
/// reach pangate's SCSI target, the rest LIO answers itself (reservations among them). Every
/// test must pass or be skipped, but for LIO's own failures ([`LIO_FAILS`]); the table is
/// printed.
#[test]
fn lio_iscsi_target_over_tcmu_passes_libiscsi() {
    if support::skip_because((!support::on_path("iscsi-test-cu")).then(|| "iscsi-test-cu (libiscsi-bin)".into()))
        || !here_or_in_vm("lio_iscsi_target_over_tcmu_passes_libiscsi", "iscsi_target_mod", "iscsi")
    {
        return;
    }
    // The guest's loopback starts down.
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    reservations_directory();
    let dir = tempfile::tempdir().unwrap();
    let (_gw, mut c, core) = backstore(dir.path(), "images/d.img");
    let iqn = Path::new(TARGET).join("iscsi").join(IQN);
    c.mkdir(iqn.clone());
    let tpg = iqn.join("tpgt_1");
    c.mkdir(tpg.clone());
    let lun = tpg.join("lun/lun_0");
    c.mkdir(lun.clone());
    let link = lun.join("pangate-test");
    std::os::unix::fs::symlink(&core, &link).unwrap();
    c.links.push(link);
    c.mkdir(tpg.join("np/127.0.0.1:3260"));
    c.write(tpg.join("attrib/authentication"), "0");
    // An ACL for each initiator, as an administrator sets LIO up: LIO keeps persistent
    // reservations for initiators it knows, not for ones it lets in on the fly.
    for initiator in [INITIATOR_A, INITIATOR_B] {
        let acl = tpg.join("acls").join(initiator);
        c.mkdir(acl.clone());
        c.mkdir(acl.join("lun_0"));
        let mapped = acl.join("lun_0/lun_0");
        std::os::unix::fs::symlink(&lun, &mapped).unwrap();
        c.links.push(mapped);
    }
    c.write(tpg.join("enable"), "1");

    let url = format!("iscsi://127.0.0.1/{IQN}/0");
    let run = |tests: &str| {
        let out = Command::new("iscsi-test-cu")
            .args(["-d", "-S", "-g", "-v", "-i", INITIATOR_A, "-I", INITIATOR_B])
            .args(["-t", tests, &url, &url])
            .output()
            .expect("iscsi-test-cu runs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    // SCSI.Reserve6 runs last, on its own: when its holder logs out or loses its nexus,
    // LIO keeps the SPC-2 reservation (see LIO_FAILS), and a suite after it would meet a
    // reservation no session holds. iscsi-test-cu registers a comma-separated list from
    // its end, so the list is reversed to run in order.
    let listed = Command::new("iscsi-test-cu").arg("-l").output().expect("iscsi-test-cu -l runs");
    let mut suites: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.starts_with("SCSI.") && l.matches('.').count() == 1 && *l != "SCSI.Reserve6")
        .map(str::to_string)
        .collect();
    assert!(suites.len() > 20, "iscsi-test-cu -l listed {} SCSI suites", suites.len());
    suites.reverse();
    let text = run(&suites.join(",")) + &run("SCSI.Reserve6");
    let results = libiscsi::outcomes("SCSI", &text);
    assert!(!results.is_empty(), "no results from iscsi-test-cu:\n{text}");
    let mut report = String::from("| Suite | pass | fail | skip |\n|---|---|---|---|\n");
    for (name, (p, f, s)) in libiscsi::table(&results) {
        report.push_str(&format!("| {name} | {p} | {f} | {s} |\n"));
    }
    eprintln!("LIO iSCSI over pangate's TCMU backstore:\n{report}");
    let failed: Vec<&str> = results
        .iter()
        .filter(|o| !o.passed && !LIO_FAILS.iter().any(|(name, _)| o.name == *name))
        .map(|o| o.name.as_str())
        .collect();
    let passed = results.iter().filter(|o| o.passed && o.skipped.is_none()).count();
    let skipped = results.iter().filter(|o| o.skipped.is_some()).count();
    eprintln!(
        "{} tests: {passed} passed, {} failed, {skipped} skipped",
        results.len(),
        results.len() - passed - skipped
    );
    if !failed.is_empty() {
        eprintln!("{text}");
    }
    assert!(failed.is_empty(), "failed {failed:?}");
}
