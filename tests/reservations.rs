//! Persistent reservations through `pangate scsi pr-in` / `pr-out` (the `sg_persist`
//! commands) between two ring nodes of one PAN sharing a LUN, and APTPL state surviving
//! a gateway restart. libiscsi's PR suites run in `tests/iscsi.rs`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::Gateway;

fn config(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"serial = "pg-pr"
data_dir = "{d}"
[web]
enabled = false
[[pan]]
name = "p"
[[pan.image]]
name = "shared"
path = "images/shared.img"
size = "4MiB"
[[pan.node]]
name = "a"
credential = "credential-of-node-a-0001"
luns = [{{ target = 0, lun = 0, image = "shared", access = "rw" }}]
[[pan.node]]
name = "b"
credential = "credential-of-node-b-0001"
luns = [{{ target = 0, lun = 0, image = "shared", access = "rw" }}]
"#,
        d = dir.display()
    );
    let path = dir.join("pangate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `pangate scsi` as node `node`; the JSON it printed, and whether it succeeded.
fn scsi(dir: &Path, node: &str, args: &[&str]) -> (serde_json::Value, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_pangate"))
        .args(["scsi", "--data-dir"])
        .arg(dir)
        .args(["--pan", "p", "--node", node, "--lun", "0", "--json"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
    (v, out.status.success())
}

const CONFLICT: u64 = 0x18;

#[test]
fn two_nodes_register_reserve_conflict_preempt_and_aptpl_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(d);
    let data = d.join("block.bin");
    std::fs::write(&data, vec![0x5a; 4096]).unwrap();
    let data = data.to_str().unwrap();
    let mut gw = Gateway::start(d, &cfg);

    // Both register; a reserves Write Exclusive.
    assert!(scsi(d, "a", &["pr-out", "register", "--sa-key", "aa"]).1);
    assert!(scsi(d, "b", &["pr-out", "register", "--sa-key", "bb", "--aptpl"]).1);
    let (keys, _) = scsi(d, "a", &["pr-in", "read-keys"]);
    assert_eq!(keys["keys"], serde_json::json!(["0xaa", "0xbb"]), "{keys}");
    assert!(scsi(d, "a", &["pr-out", "reserve", "--key", "aa", "--type", "we"]).1);
    // b may read but not write; a may write.
    assert!(scsi(d, "b", &["read", "0", "1"]).1);
    let (v, ok) = scsi(d, "b", &["write", "0", "--in", data, "--pad"]);
    assert!(!ok && v["status"] == CONFLICT, "b's write must conflict: {v}");
    assert!(scsi(d, "a", &["write", "0", "--in", data, "--pad"]).1);
    // A wrong key gets a conflict; b preempts a with the right one.
    let (v, ok) = scsi(d, "b", &["pr-out", "preempt", "--key", "cc", "--sa-key", "aa", "--type", "ea"]);
    assert!(!ok && v["status"] == CONFLICT, "{v}");
    assert!(scsi(d, "b", &["pr-out", "preempt", "--key", "bb", "--sa-key", "aa", "--type", "ea", "--aptpl"]).1);
    let (v, ok) = scsi(d, "a", &["read", "0", "1"]);
    assert!(!ok && v["status"] == CONFLICT, "a was preempted from an Exclusive Access reservation: {v}");
    let (status, _) = scsi(d, "b", &["pr-in", "read-full-status"]);
    let regs = status["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 1, "{status}");
    assert_eq!(regs[0]["initiator"], "iqn.2026-12.io.pangate:p.b");
    assert_eq!(regs[0]["type"], "exclusive-access");

    // APTPL was set: the reservation is back after a restart.
    gw.signal(rustix::process::Signal::TERM);
    assert!(gw.wait(Duration::from_secs(20)).success());
    drop(gw);
    let gw = Gateway::start(d, &cfg);
    let (r, _) = scsi(d, "a", &["pr-in", "read-reservation"]);
    assert_eq!(r["reservation"]["key"], "0xbb", "{r}");
    assert_eq!(r["reservation"]["type"], "exclusive-access", "{r}");
    let (v, ok) = scsi(d, "a", &["read", "0", "1"]);
    assert!(!ok && v["status"] == CONFLICT, "the restored reservation still excludes a: {v}");
    // Clearing APTPL (a register without it) forgets the file: the next restart starts clean.
    assert!(scsi(d, "b", &["pr-out", "register", "--key", "bb", "--sa-key", "bb"]).1);
    assert!(!d.join("reservations/p/shared.pr").exists());
    drop(gw);
}
