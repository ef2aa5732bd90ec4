//! The TCMU front-end against the real kernel: a LIO `user:` backstore created through
//! configfs, exported on a loopback LUN, with real I/O on the SCSI disk that appears.
//!
//! It needs target_core_user and tcm_loop and a mounted configfs. On a kernel without them
//! (this machine's and CI's) the test runs itself again inside `scripts/vm`'s guest, a
//! Debian kernel that has them; where no VM can run, it skips with the reason outside CI
//! and fails under CI=true.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    let missing: Vec<&str> = ["sg_inq", "sg_readcap", "sg_vpd", "sg_unmap", "mkfs.ext4", "fsck.ext4"]
        .into_iter()
        .filter(|t| !support::on_path(t) && !["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(t).exists()))
        .collect();
    (!missing.is_empty()).then(|| format!("the TCMU test needs {} (sg3-utils, e2fsprogs)", missing.join(", ")))
}

/// Why this kernel cannot run the test, if it cannot.
fn missing() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("root".into());
    }

    for m in ["target_core_user", "tcm_loop"] {
        if !loaded(m) {
            return Some(format!("the {m} kernel module"));
        }
    }
    if !Path::new(TARGET).exists() {
        let _ = Command::new("mount").args(["-t", "configfs", "none", "/sys/kernel/config"]).status();
    }
    (!Path::new(TARGET).join("loopback").exists() && fs::create_dir_all(Path::new(TARGET).join("loopback")).is_err())
        .then(|| "LIO's configfs tree with the loopback fabric".into())
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

/// The SCSI disk whose vendor is PANGATE, once it appears.
fn find_disk() -> Option<PathBuf> {
    for e in fs::read_dir("/sys/block").ok()?.flatten() {
        let dev = e.path().join("device");
        let vendor = fs::read_to_string(dev.join("vendor")).unwrap_or_default();
        if vendor.trim() == "PANGATE" {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

#[test]
fn lio_loopback_lun_backed_by_pangate() {
    if support::skip_because(tools_missing()) {
        return;
    }
    if let Some(why) = missing() {
        assert!(!support::in_vm(), "the test VM lacks {why}");
        if support::skip_because(support::vm_missing().map(|vm| format!("this kernel lacks {why}, and {vm}"))) {
            return;
        }
        return support::run_in_vm("lio_loopback_lun_backed_by_pangate");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pangate.toml");
    fs::write(
        &cfg,
        format!(
            "serial = \"pg-lio\"\ndata_dir = \"{}\"\n[[pan]]\nname = \"p\"\n[[pan.image]]\nname = \"d\"\npath = \"images/d.img\"\nsize = \"64MiB\"\n[[pan.node]]\nname = \"n\"\ncredential = \"{CRED}\"\nluns = [{{ target = 0, lun = 0, image = \"d\", access = \"rw\" }}]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _gw = Gateway::start(dir.path(), &cfg);
    let mut c = Configfs::default();
    let core = Path::new(TARGET).join("core/user_57/pangate-test");
    c.mkdir(core.clone());
    c.write(core.join("control"), "dev_config=pangate/p/n/0/0,dev_size=67108864");
    c.write(core.join("enable"), "1");
    let tpg = Path::new(TARGET).join("loopback").join(WWN).join("tpgt_1");
    c.mkdir(tpg.clone());
    c.write(tpg.join("nexus"), INITIATOR);
    let lun = tpg.join("lun/lun_0");
    c.mkdir(lun.clone());
    let link = lun.join("pangate-test");
    std::os::unix::fs::symlink(&core, &link).unwrap();
    c.links.push(link);

    let deadline = Instant::now() + Duration::from_secs(20);
    let disk = loop {
        if let Some(d) = find_disk() {
            break d;
        }
        assert!(Instant::now() < deadline, "no PANGATE disk appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
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
}

/// Runs a tool that must succeed; its output.
fn tool(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {text}");
    text
}
