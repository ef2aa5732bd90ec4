//! The `pangate` binary: the embedded default, restarts, SIGTERM, and config errors.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PANGATE: &str = env!("CARGO_BIN_EXE_pangate");

/// The embedded default's LAN puts its ports in fixed namespaces (`pg-demo-a`, `pg-demo-b`),
/// so only one gateway at a time may run it: a second finds the interfaces taken.
fn one_default_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static DEFAULT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DEFAULT.lock().unwrap_or_else(|p| p.into_inner())
}

fn up(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(PANGATE);
    c.arg("up").arg("--data-dir").arg(dir).args(extra).env_remove("PANGATE_ENGINE");
    c
}

#[test]
fn embedded_default_is_created_once_and_reused() {
    let _one = one_default_at_a_time();
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
    let _one = one_default_at_a_time();
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
    let _one = one_default_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    assert!(up(dir.path(), &["--oneshot"]).output().unwrap().status.success());
    let out = Command::new(PANGATE).arg("check-config").arg(dir.path().join("pangate.toml")).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 PAN, 2 nodes, 3 images)"));
}

/// A two-PAN config whose second PAN's image is at `other_path`, the first's at
/// `images/a.img`.
fn two_pans(dir: &std::path::Path, other_path: &str) -> std::path::PathBuf {
    let file = dir.join("pangate.toml");
    let pan = |name: &str, path: &str| {
        format!(
            "[[pan]]\nname = \"{name}\"\n[[pan.image]]\nname = \"disk\"\npath = \"{path}\"\nsize = \"1MiB\"\n\
             [[pan.node]]\nname = \"n\"\ncredential = \"0123456789abcdef\"\n\
             luns = [{{ target = 0, lun = 0, image = \"disk\", access = \"rw\" }}]\n"
        )
    };
    let text = format!("serial = \"pg-iso\"\ndata_dir = \".\"\n{}{}", pan("p1", "images/a.img"), pan("p2", other_path));
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn no_config_shares_a_file_across_pans_or_makes_a_host_file_a_lun() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images/sub")).unwrap();
    std::fs::write(dir.path().join("images/a.img"), vec![0; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("images/a.img"), dir.path().join("images/sym.img")).unwrap();
    // A second name, inside the root, of a file outside it.
    std::fs::write(dir.path().join("outside.raw"), vec![0; 1 << 20]).unwrap();
    std::fs::hard_link(dir.path().join("outside.raw"), dir.path().join("images/hard.img")).unwrap();
    for (path, says) in [
        ("images/a.img", "same file as image \"p1/disk\""),
        ("./images/sub/../a.img", "same file as image \"p1/disk\""),
        ("images/sym.img", "same file as image \"p1/disk\""),
        ("images/hard.img", "hard links"),
        ("../../../../../../etc/passwd", "outside the image roots"),
        ("/etc/shadow", "outside the image roots"),
        ("pangate.toml", "outside the image roots"),
    ] {
        let file = two_pans(dir.path(), path);
        for args in [vec!["check-config"], vec!["up", "--oneshot", "--config"]] {
            let out = Command::new(PANGATE).args(&args).arg(&file).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {path}");
            assert!(err.contains("pan[1].image[0].path") && err.contains(says), "{args:?} {path}: {err}");
        }
    }
    // A file of its own, the second PAN starts, created 0600.
    let file = two_pans(dir.path(), "images/b.img");
    let out = Command::new(PANGATE).args(["up", "--oneshot", "--config"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(dir.path().join("images/b.img")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "node data is its owner's only");
}

/// Starts `pangate up` with `args` and waits (bounded) for its banner's `try:` line; returns
/// the child and the banner so far.
fn up_until_ready(args: &[&std::ffi::OsStr]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(PANGATE)
        .arg("up")
        .args(args)
        .env_remove("PANGATE_ENGINE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for _ in 0..200 {
        let Some(Ok(line)) = lines.next() else { break };
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("try:") {
            break;
        }
    }
    (child, banner)
}

fn stop(mut child: std::process::Child) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_banner_hints_work_with_a_config_outside_the_data_dir_and_the_cli_says_what_it_does() {
    let _one = one_default_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (etc, data) = (dir.path().join("etc"), dir.path().join("data"));
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "serial = \"pg-cli\"\ndata_dir = \"{}\"\n[[pan]]\nname = \"p\"\n[[pan.image]]\nname = \"d\"\n\
             path = \"images/d.img\"\nsize = \"4MiB\"\n[[pan.node]]\nname = \"n\"\ncredential = \"0123456789abcdef\"\n\
             luns = [{{ target = 0, lun = 0, image = \"d\", access = \"ro\" }}]\n",
            data.display()
        ),
    )
    .unwrap();
    let (child, banner) = up_until_ready(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    let result = std::panic::catch_unwind(|| {
        assert!(banner.contains("MiB, ro, "), "access printed as in the config: {banner}");
        assert!(!banner.contains("/./"), "clean paths: {banner}");
        let hint = banner.lines().find_map(|l| l.trim().strip_prefix("try:")).expect("a try: line").trim();
        let args: Vec<&str> = hint.split_whitespace().collect();
        assert_eq!(args[0], "pangate", "{hint}");
        let out = Command::new(PANGATE).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{hint}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("PANGATE"));
        // REQUEST SENSE --json keeps its data apart from the sense of its own status.
        let mut sense = args[1..args.len() - 1].to_vec();
        sense.extend(["--json", "sense"]);
        let out = Command::new(PANGATE).args(&sense).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["sense_data"].as_str().unwrap().starts_with("70"), "{v}");
        assert_eq!(v["sense"], "", "{v}");
        // A partial block is refused, not silently dropped.
        let file = dir.path().join("600.bin");
        std::fs::write(&file, vec![7u8; 600]).unwrap();
        let mut write = args[1..args.len() - 1].to_vec();
        let file_arg = file.to_str().unwrap();
        write.extend(["write", "0", "--in", file_arg]);
        let out = Command::new(PANGATE).args(&write).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("600 bytes") && err.contains("--pad"), "{err}");
    });
    stop(child);
    result.unwrap();
}
