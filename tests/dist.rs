//! What ships beside the binary under `dist/`: the Prometheus rules (promtool's check and
//! unit tests), the systemd unit (systemd-analyze, and the READY and STOPPING a `Type=notify`
//! unit waits for), and the shell completions.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{on_path, skip_because};

fn dist(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist").join(path)
}

/// Runs a command that must succeed; its stdout and stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    if skip_because((!on_path("promtool")).then(|| "promtool (Debian's prometheus package)".into())) {
        return;
    }
    let dir = dist("prometheus");
    let checked = run(Command::new("promtool").args(["check", "rules", "pangate-rules.yml"]).current_dir(&dir));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(Command::new("promtool").args(["test", "rules", "pangate-rules.test.yml"]).current_dir(&dir));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_systemd_unit_verifies_with_the_built_binary() {
    if skip_because((!on_path("systemd-analyze")).then(|| "systemd-analyze (systemd)".into())) {
        return;
    }
    let unit = std::fs::read_to_string(dist("systemd/pangate.service")).unwrap();
    for wanted in [
        "Type=notify",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
    ] {
        assert!(unit.contains(wanted), "the unit has {wanted}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pangate.service");
    std::fs::write(&path, unit.replace("/usr/bin/pangate", env!("CARGO_BIN_EXE_pangate"))).unwrap();
    // Unknown keys and bad values are warnings, not failures, to systemd-analyze.
    let text = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path));
    assert!(!text.contains("pangate.service"), "systemd-analyze has something to say about the unit:\n{text}");
}

/// Reads notifications from `sock` until one has `state`, within `within`.
fn await_state(sock: &UnixDatagram, state: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {state} from pangate within {within:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == state) {
                return msg;
            }
        }
    }
}

#[test]
fn pangate_up_tells_systemd_when_it_serves_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("pangate.toml");
    std::fs::write(
        &config,
        format!(
            "serial = \"pg-notify\"\ndata_dir = \"{}\"\n[web]\nlisten = \"127.0.0.1:{port}\"\n[[pan]]\nname = \"p\"\n[[pan.image]]\nname = \"d\"\npath = \"images/d.img\"\nsize = \"4MiB\"\n[[pan.node]]\nname = \"n\"\ncredential = \"notify-credential-000001\"\nluns = [{{ target = 0, lun = 0, image = \"d\", access = \"rw\" }}]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let notify = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pangate"))
        .args(["up", "--log-level", "warn", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = await_state(&sock, "READY=1", Duration::from_secs(30));
    assert!(ready.contains("STATUS=serving"), "{ready}");
    // Ready means serving: the ring socket and the web listener answer at once.
    assert!(std::os::unix::net::UnixStream::connect(dir.path().join("pangate.sock")).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    await_state(&sock, "STOPPING=1", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "pangate did not stop within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn completions_are_generated_for_bash_and_zsh() {
    let bash = run(Command::new(env!("CARGO_BIN_EXE_pangate")).args(["completions", "bash"]));
    assert!(bash.contains("complete -F _pangate") && bash.contains("mount") && bash.contains("--data-dir"), "{bash}");
    if on_path("bash") {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("pangate.bash");
        std::fs::write(&script, &bash).unwrap();
        run(Command::new("bash").arg("-n").arg(&script));
    }
    let zsh = run(Command::new(env!("CARGO_BIN_EXE_pangate")).args(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef pangate") && zsh.contains("check-config"), "{zsh}");
    let out = Command::new(env!("CARGO_BIN_EXE_pangate")).args(["completions", "fish-or-not"]).output().unwrap();
    assert!(!out.status.success());
}

/// `scripts/deb` packages the debug binary this test was built with, and dpkg installs it
/// into an empty root: the binary runs and says its version, the man page and completions
/// are there, the files under `dist/` are, and the packaged unit verifies (with its
/// `ExecStart` pointing into that root).
#[test]
fn the_debian_package_installs_and_its_unit_verifies() {
    let missing: Vec<&str> =
        ["cargo-deb", "dpkg", "dpkg-deb", "systemd-analyze"].into_iter().filter(|t| !on_path(t)).collect();
    if skip_because((!missing.is_empty()).then(|| format!("the package test needs {}", missing.join(", ")))) {
        return;
    }
    let root_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = run(Command::new(root_dir.join("scripts/deb")).args(["--profile", "dev", "--no-build"]));
    let deb = built.lines().rev().find(|l| l.ends_with(".deb")).unwrap_or_else(|| panic!("no .deb named:\n{built}"));
    let fields = run(Command::new("dpkg-deb").args(["--field", deb, "Package", "Version", "Depends"]));
    assert!(fields.contains("Package: pangate") && fields.contains(env!("CARGO_PKG_VERSION")), "{fields}");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // An empty root has no libc6 package to satisfy Depends; the host's libc runs it.
    let root_arg = format!("--root={}", root.display());
    run(Command::new("dpkg").args([&root_arg, "--force-not-root", "--force-depends", "-i", deb]));
    let listed = run(Command::new("dpkg").args([&root_arg, "-l", "pangate"]));
    assert!(listed.lines().any(|l| l.starts_with("ii  pangate")), "{listed}");

    let version = run(Command::new(root.join("usr/bin/pangate")).arg("--version"));
    assert_eq!(version.trim(), format!("pangate {}", env!("CARGO_PKG_VERSION")));
    for file in [
        "usr/share/man/man1/pangate.1.gz",
        "usr/share/bash-completion/completions/pangate",
        "usr/share/zsh/vendor-completions/_pangate",
        "usr/share/dbus-1/system.d/org.kernel.TCMUService1.conf",
        "usr/share/pangate/grafana/pangate.json",
        "usr/share/pangate/prometheus/pangate-rules.yml",
        "lib/systemd/system/pangate.service",
    ] {
        assert!(root.join(file).is_file(), "the package installs {file}");
    }
    let man = run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {}", root.join("usr/share/man/man1/pangate.1.gz").display())));
    assert!(man.contains(".TH pangate") && man.contains("mount"), "{man}");

    let unit = std::fs::read_to_string(root.join("lib/systemd/system/pangate.service")).unwrap();
    let unit_path = dir.path().join("pangate.service");
    std::fs::write(&unit_path, unit.replace("/usr/bin/pangate", &root.join("usr/bin/pangate").display().to_string()))
        .unwrap();
    // The man page named in Documentation= is in the package's root, not the host's.
    let text = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit_path));
    assert!(!text.contains("pangate.service"), "systemd-analyze has something to say about the unit:\n{text}");
}
