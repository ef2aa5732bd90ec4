//! Prerequisite checks shared by the gateway's tests and the root package's, and the test
//! VM (`scripts/vm`) that supplies the kernel modules this host lacks.

use std::path::Path;
use std::process::Command;

/// Whether `tool` is on the PATH.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
}

/// For tests that need parts of the machine: `None` means go ahead. Otherwise, outside CI
/// the test prints why it skips and should return; with CI=true a missing part fails it.
#[track_caller]
pub fn skip_because(missing: Option<String>) -> bool {
    let Some(why) = missing else { return false };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why} (a failure under CI=true)");
    eprintln!("skipping: {why}");
    true
}

/// Why `scripts/vm` cannot run here, if it cannot: it needs root, QEMU, a static busybox,
/// kmod and Debian's package tools (for the kernel).
pub fn vm_missing() -> Option<String> {
    let mut missing = Vec::new();
    if rustix::process::geteuid().as_raw() != 0 {
        missing.push("root".to_string());
    }
    for tool in ["qemu-system-x86_64", "busybox", "modprobe", "depmod", "apt-get", "dpkg-deb"] {
        let in_sbin = ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(tool).exists());
        if !on_path(tool) && !in_sbin {
            missing.push(tool.to_string());
        }
    }
    (!missing.is_empty()).then(|| format!("the test VM (scripts/vm) needs {}", missing.join(", ")))
}

/// Whether this process runs inside `scripts/vm`'s guest.
pub fn in_vm() -> bool {
    std::env::var_os("PANGATE_IN_VM").is_some()
}

/// Whether test `name` runs here: `lacking` is what this kernel lacks for it, if anything.
/// If it lacks something, the test runs again inside `scripts/vm`'s guest (or skips, or
/// fails under CI, where no VM can run) and this returns false.
pub fn here_or_in_vm(name: &str, lacking: Option<String>) -> bool {
    let Some(why) = lacking else { return true };
    assert!(!in_vm(), "the test VM lacks {why}");
    if !skip_because(vm_missing().map(|vm| format!("this kernel lacks {why}, and {vm}"))) {
        run_in_vm(name);
    }
    false
}

/// Runs test `name` of this test binary again, alone, inside `scripts/vm`'s guest (Debian's
/// kernel, with the modules this host lacks); panics with the guest's output if it fails.
pub fn run_in_vm(name: &str) {
    run_in_vm_with(name, &[]);
}

/// [`run_in_vm`], with `env` for `scripts/vm` (`PANGATE_VM_NVME`, say).
pub fn run_in_vm_with(name: &str, env: &[(&str, &str)]) {
    // One VM at a time: each takes a whole core under emulation, and 3 GiB.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let exe = std::env::current_exe().unwrap();
    // The root package's tests and the gateway's share this file: the script is in the
    // workspace's root.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("scripts/vm"))
        .find(|p| p.exists())
        .expect("scripts/vm in the workspace");
    let mut vm = Command::new(script);
    vm.envs(env.iter().copied());
    if std::env::var_os("PANGATE_VM_TIMEOUT").is_none() {
        // The libiscsi run through LIO takes about 11 minutes under emulation.
        vm.env("PANGATE_VM_TIMEOUT", "900");
    }
    let out = vm
        .args(["run", "--"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .output()
        .expect("running scripts/vm");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "{name} failed in the VM ({}):\n{text}", out.status);
    assert!(text.contains("1 passed"), "{name} did not run in the VM:\n{text}");
}
