//! The `pangate` binary: the embedded default, restarts, SIGTERM, and config errors.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PANGATE: &str = env!("CARGO_BIN_EXE_pangate");

fn up(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(PANGATE);
    c.arg("up").arg("--data-dir").arg(dir).args(extra).env_remove("PANGATE_ENGINE");
    c
}

#[test]
fn embedded_default_is_created_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let out = up(dir.path(), &["--oneshot"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("created the embedded default"), "{stdout}");
    assert!(
        stdout.contains("PAN demo") && stdout.contains("node node-a") && stdout.contains("node node-b"),
        "{stdout}"
    );
    assert!(stdout.contains("all images flushed"), "{stdout}");

    let cfg = dir.path().join("pangate.toml");
    assert_eq!(std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777, 0o600, "config holds credentials");
    for name in ["disk-a", "disk-b", "shared"] {
        let meta = std::fs::metadata(dir.path().join(format!("images/demo-{name}.img"))).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(meta.blocks() * 512 < 1 << 20, "images are created sparse");
    }
    let text = std::fs::read_to_string(&cfg).unwrap();

    let again = up(dir.path(), &["--oneshot"]).output().unwrap();
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains("created the embedded default"));
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text, "a restart keeps serial and credentials");
}

#[test]
fn sigterm_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = up(dir.path(), &[]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // Wait (bounded) until it has started: the config exists and it printed its summary.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.path().join("pangate.toml").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("pangate did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(out.contains("all images flushed; stopped"), "{out}");
}

#[test]
fn bad_config_is_reported_with_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "serial = \"pg-1\"\ndata_dir = \".\"\n[[pan]]\nname = \"Bad Name\"\n").unwrap();
    for args in
        [vec!["check-config", file.to_str().unwrap()], vec!["up", "--config", file.to_str().unwrap(), "--oneshot"]]
    {
        let out = Command::new(PANGATE).args(&args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml: pan[0].name: \"Bad Name\" is not a valid name"), "{err}");
        assert!(err.contains("fix:"), "{err}");
    }
}

#[test]
fn check_config_accepts_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    assert!(up(dir.path(), &["--oneshot"]).output().unwrap().status.success());
    let out = Command::new(PANGATE).arg("check-config").arg(dir.path().join("pangate.toml")).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 PANs, 2 nodes, 3 images)"));
}
