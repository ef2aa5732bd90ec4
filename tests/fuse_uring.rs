//! The FUSE suite of `tests/fuse.rs` again, every mount with `--uring on`: requests and
//! replies through FUSE over io_uring ring entries instead of `/dev/fuse`. Each test turns
//! `/sys/module/fuse/parameters/enable_uring` on while it runs and puts it back.

#[path = "fuse.rs"]
mod over_uring;

use std::process::Command;
use std::time::{Duration, Instant};

use over_uring::{prerequisites, Rig, SERIAL};

/// The ring threads of process `pid`: (name, how many CPUs each may run on, the first).
fn ring_threads(pid: u32) -> Vec<(String, usize, usize)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        if !name.starts_with("pangate-ring") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let Some(list) = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")) else { continue };
        let cpus: Vec<usize> = list
            .trim()
            .split(',')
            .flat_map(|part| {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
            })
            .collect();
        threads.push((name, cpus.len(), cpus[0]));
    }
    threads
}

/// Polls (boundedly) until `test` holds for the mount's ring threads.
fn ring_threads_become(pid: u32, within: Duration, test: impl Fn(&[(String, usize, usize)]) -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if test(&ring_threads(pid)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each ring queue's threads run on the queue's CPU while they serve one request at a
/// time, and the scheduler may place them anywhere once they hold more (fio at QD32); back
/// at QD1 they are bound again.
#[test]
fn ring_threads_are_bound_to_their_queues_cpu_at_depth_one_and_freed_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_prepared) = prerequisites() else { return };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipping the binding test: one CPU, where bound and free are the same");
        return;
    }
    let rig = Rig::new();
    let pid = rig.mount.pid();
    // "pangate-ring<queue>.<thread>": bound to the queue's own CPU.
    let bound_to_queue = |t: &[(String, usize, usize)]| {
        !t.is_empty()
            && t.iter().all(|(name, n, first)| {
                let queue: usize = name["pangate-ring".len()..].split('.').next().unwrap().parse().unwrap();
                *n == 1 && *first == queue
            })
    };
    assert!(
        ring_threads_become(pid, Duration::from_secs(5), bound_to_queue),
        "bound once serving: {:?}",
        ring_threads(pid)
    );
    let fio = |depth: u32, seconds: u32| {
        Command::new("fio")
            .args(["--name=bind", "--ioengine=io_uring", "--direct=1", "--rw=randread", "--bs=4k"])
            .arg(format!("--iodepth={depth}"))
            .arg(format!("--runtime={seconds}"))
            .args(["--time_based", "--size=8M", "--output-format=terse"])
            .arg(format!("--filename={}", rig.mount.file("t0-l0").display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut load = fio(32, 3);
    let freed = ring_threads_become(pid, Duration::from_secs(3), |t| t.iter().any(|(_, n, _)| *n > 1));
    let during = ring_threads(pid);
    assert!(load.wait().unwrap().success());
    assert!(freed, "a thread serving QD32 is left to the scheduler: {during:?}");
    let mut light = fio(1, 2);
    let rebound = ring_threads_become(pid, Duration::from_secs(2), bound_to_queue);
    let after = ring_threads(pid);
    assert!(light.wait().unwrap().success());
    assert!(rebound, "bound again at QD1: {after:?}");
}
