//! pangate's iSCSI target against Linux's own initiator: open-iscsi (`iscsid`, `iscsiadm`)
//! with the kernel's `iscsi_tcp`. SendTargets discovery and login with CHAP, the disk that
//! appears, ext4 on it, a file written and read back after a fresh mount, and logout.
//!
//! This machine's kernel has no iscsi_tcp, so the test runs itself again inside
//! `scripts/vm`'s guest; where no VM can run it skips with the reason outside CI and fails
//! under CI=true.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::Gateway;

const PREFIX: &str = "iqn.2026-12.io.pangate.test";
const INITIATOR: &str = "iqn.2026-12.io.pangate.test:linux-initiator";
const SECRET: &str = "chap-secret-of-linux-0001";
const PORTAL: &str = "127.0.0.1:3260";

/// What this kernel or machine lacks for the test, if anything.
fn missing() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("root".into());
    }
    let tcp = Path::new("/sys/module/iscsi_tcp").exists()
        || Command::new("modprobe").arg("iscsi_tcp").status().is_ok_and(|s| s.success());
    (!tcp).then(|| "the iscsi_tcp kernel module".into())
}

/// Runs iscsiadm, which must succeed; its output.
fn iscsiadm(args: &[&str]) -> String {
    let out = Command::new("iscsiadm").args(args).output().expect("iscsiadm runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "iscsiadm {args:?} failed: {text}");
    text
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {text}");
    text
}

/// iscsid, stopped when the test ends.
struct Iscsid(Child);

impl Drop for Iscsid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn linux_initiator_discovers_logs_in_and_puts_ext4_on_a_pangate_lun() {
    let tools = ["iscsiadm", "iscsid", "mkfs.ext4", "fsck.ext4"];
    let absent: Vec<&str> = tools
        .into_iter()
        .filter(|t| !support::on_path(t) && !["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(t).exists()))
        .collect();
    if support::skip_because((!absent.is_empty()).then(|| format!("{} (open-iscsi, e2fsprogs)", absent.join(", "))))
        || !support::here_or_in_vm("linux_initiator_discovers_logs_in_and_puts_ext4_on_a_pangate_lun", missing())
    {
        return;
    }
    // In the guest: loopback up, and the initiator's name where iscsid looks for it.
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    fs::create_dir_all("/etc/iscsi").unwrap();
    fs::create_dir_all("/run/lock/iscsi").unwrap();
    fs::write("/etc/iscsi/initiatorname.iscsi", format!("InitiatorName={INITIATOR}\n")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pangate.toml");
    fs::write(
        &cfg,
        format!(
            "serial = \"pg-linux-iscsi\"\ndata_dir = \"{}\"\n[web]\nenabled = false\n[iscsi]\nlisten = [\"{PORTAL}\"]\ntarget_prefix = \"{PREFIX}\"\n[[pan]]\nname = \"p\"\n[[pan.image]]\nname = \"d\"\npath = \"images/d.img\"\nsize = \"64MiB\"\n[[pan.node]]\nname = \"n\"\ncredential = \"credential-of-linux-0001\"\niqn = \"{INITIATOR}\"\nchap_secret = \"{SECRET}\"\nluns = [{{ target = 0, lun = 0, image = \"d\", access = \"rw\" }}]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _gw = Gateway::start(dir.path(), &cfg);
    let _iscsid = Iscsid(Command::new("iscsid").arg("-f").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));

    // Discovery with CHAP, as iscsid.conf would set it.
    let st = ["-m", "discoverydb", "-t", "sendtargets", "-p", PORTAL];
    iscsiadm(&[&st[..], &["-o", "new"]].concat());
    for (name, value) in [
        ("discovery.sendtargets.auth.authmethod", "CHAP"),
        ("discovery.sendtargets.auth.username", "n"),
        ("discovery.sendtargets.auth.password", SECRET),
    ] {
        iscsiadm(&[&st[..], &["-o", "update", "-n", name, "-v", value]].concat());
    }
    let found = iscsiadm(&[&st[..], &["--discover"]].concat());
    let target = format!("{PREFIX}:p.t0");
    assert!(found.contains(&target), "discovery: {found}");

    // Login with CHAP; the LUN appears as a SCSI disk.
    let node = ["-m", "node", "-T", &target, "-p", PORTAL];
    for (name, value) in [
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", "n"),
        ("node.session.auth.password", SECRET),
    ] {
        iscsiadm(&[&node[..], &["-o", "update", "-n", name, "-v", value]].concat());
    }
    iscsiadm(&[&node[..], &["--login"]].concat());
    let disk = support::await_pangate_disk(Duration::from_secs(30));
    let dev = disk.to_str().unwrap();
    let session = iscsiadm(&["-m", "session"]);
    assert!(session.contains(&target), "{session}");

    // ext4 on it, a file through a mount, read back through a fresh mount, and fsck.
    run(&["mkfs.ext4", "-q", "-F", dev]);
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    let data: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 253) as u8).collect();
    run(&["mount", "-t", "ext4", dev, m]);
    fs::write(mnt.join("f"), &data).unwrap();
    run(&["umount", m]);
    run(&["mount", "-t", "ext4", "-o", "ro", dev, m]);
    let back = fs::read(mnt.join("f")).unwrap();
    run(&["umount", m]);
    assert!(back == data, "the file read back differs");
    run(&["fsck.ext4", "-fn", dev]);

    iscsiadm(&[&node[..], &["--logout"]].concat());
    let deadline = Instant::now() + Duration::from_secs(10);
    while support::pangate_disk().is_some() {
        assert!(Instant::now() < deadline, "the disk stayed after logout");
        std::thread::sleep(Duration::from_millis(100));
    }
}
