//! The `pangate` daemon as a real process: many nodes at once, SIGTERM under load, and
//! acknowledged data surviving SIGKILL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::ring::initiator::{ConnectOptions, Data, Initiator};
use scsi::build::rw16;

mod support;
use rustix::process::Signal;
use support::Gateway;

const PANGATE: &str = env!("CARGO_BIN_EXE_pangate");

fn cred(n: usize) -> String {
    format!("credential-of-node-{n:04}-xxxxxxxx")
}

/// A config with `nodes` nodes in PAN "load", each with its own 64 MiB image at (0, 0).
fn write_config(dir: &Path, nodes: usize) -> PathBuf {
    write_config_on(dir, nodes, "auto")
}

/// The same, on engine `engine`.
fn write_config_on(dir: &Path, nodes: usize, engine: &str) -> PathBuf {
    let mut text = format!(
        "serial = \"pg-daemon\"\ndata_dir = \"{}\"\nengine = \"{engine}\"\n\n[[pan]]\nname = \"load\"\n",
        dir.display()
    );
    for n in 0..nodes {
        text += &format!("[[pan.image]]\nname = \"img{n}\"\npath = \"images/img{n}.raw\"\nsize = \"64MiB\"\n");
    }
    for n in 0..nodes {
        text += &format!(
            "[[pan.node]]\nname = \"n{n}\"\ncredential = \"{}\"\nluns = [{{ target = 0, lun = 0, image = \"img{n}\", access = \"rw\" }}]\n",
            cred(n)
        );
    }
    let file = dir.join("pangate.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn bench(socket: &Path, n: usize, args: &[&str]) -> Command {
    let mut c = Command::new(PANGATE);
    c.args(["bench", "--pan", "load", "--node", &format!("n{n}"), "--credential", &cred(n), "--socket"])
        .arg(socket)
        .args(args);
    c
}

/// On files, then on the RAM engine, where the queue pairs placed beside their images take
/// the direct path and the others cross to their image's worker. One after the other: 32
/// initiators at once on a small machine would starve some of them.
#[test]
fn sixteen_nodes_at_qd32_verify_without_errors() {
    sixteen_nodes_verify("auto");
    sixteen_nodes_verify("ram");
}

fn sixteen_nodes_verify(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_on(dir.path(), 16, engine);
    let gw = Gateway::start(dir.path(), &config);
    let children: Vec<Child> = (0..16)
        .map(|n| {
            let path = if n % 2 == 0 { "direct" } else { "staged" };
            bench(&gw.socket, n, &["--rw", "randwrite", "--qd", "32", "--seconds", "3", "--verify", "--path", path])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "node {n}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["errors"], 0, "node {n} on {engine}");
        assert_eq!(report["mismatches"], 0, "node {n} on {engine}");
        assert!(report["ios"].as_u64().unwrap() > 1000, "node {n} on {engine} did too little I/O: {report}");
    }
}

#[test]
fn sigterm_under_load_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 2);
    let mut gw = Gateway::start(dir.path(), &config);
    let mut load = bench(&gw.socket, 0, &["--rw", "randwrite", "--qd", "64", "--seconds", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    gw.signal(Signal::TERM);
    let status = gw.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(!gw.socket.exists(), "the socket is removed on a clean stop");
    // The load generator notices the gateway is gone rather than hanging.
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the initiator hung after the gateway stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn block(lba: u64, nonce: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, c) in b.chunks_mut(16).enumerate() {
        c[..8].copy_from_slice(&lba.to_le_bytes());
        c[8..].copy_from_slice(&(nonce ^ i as u64).to_le_bytes());
    }
    b
}

/// What each LBA may hold after a crash: the last value acknowledged as durable, or any
/// value written to it after that (an unacknowledged or unflushed write may or may not
/// have reached the medium).
#[derive(Debug, Default)]
struct Ledger {
    allowed: HashMap<u64, (Option<u64>, Vec<u64>)>,
}

impl Ledger {
    fn attempt(&mut self, lba: u64, nonce: u64) {
        self.allowed.entry(lba).or_default().1.push(nonce);
    }

    fn durable(&mut self, lba: u64, nonce: u64) {
        let e = self.allowed.entry(lba).or_default();
        let at = e.1.iter().position(|&n| n == nonce).expect("durable writes were attempted");
        e.1.drain(..=at);
        e.0 = Some(nonce);
    }

    fn durable_count(&self) -> usize {
        self.allowed.values().filter(|e| e.0.is_some()).count()
    }
}

/// Node n0 of PAN load, as the durability tests connect it.
fn load_node() -> ConnectOptions {
    ConnectOptions {
        pan: "load".into(),
        node: "n0".into(),
        credential: cred(0),
        slots: 256,
        data_bytes: 8 << 20,
        client: None,
    }
}

/// Writes with FUA (or plain writes followed by SYNCHRONIZE CACHE) until the gateway dies,
/// recording every attempt and every write acknowledged as durable.
fn write_until_killed(socket: &Path, rng: &mut u64, fua: bool, ledger: &mut Ledger) {
    let opts = load_node();
    let Ok(mut i) = Initiator::connect_with_retry(socket, &opts, Duration::from_secs(10)) else { return };
    if i.execute(0, 0, &[0; 6], Data::None).is_err() {
        return;
    }
    let region = i.alloc(4096).unwrap();
    let mut unflushed: Vec<(u64, u64)> = Vec::new();
    for _ in 0..1_000_000 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let lba = (*rng % 2048) * 8;
        let nonce = *rng;
        if i.write_data(region, &block(lba, nonce)).is_err() {
            return;
        }
        ledger.attempt(lba, nonce);
        match i.execute(0, 0, &rw16(0x8A, lba, 8, fua), Data::Out { region, staged: false }) {
            Ok(r) if r.good() => {}
            _ => return,
        }
        if fua {
            ledger.durable(lba, nonce);
        } else {
            unflushed.push((lba, nonce));
            if unflushed.len() == 8 {
                match i.flush(0, 0) {
                    Ok(r) if r.good() => {
                        for (l, n) in unflushed.drain(..) {
                            ledger.durable(l, n);
                        }
                    }
                    _ => return,
                }
            }
        }
    }
}

#[test]
fn acknowledged_flushed_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 1);
    let mut ledger = Ledger::default();
    let mut rng = 0x1234_5678_9ABC_DEF1u64;
    for round in 0..4u32 {
        let gw = Gateway::start(dir.path(), &config);
        let socket = gw.socket.clone();
        let killer = std::thread::spawn(move || {
            // Kill at a different point each round.
            std::thread::sleep(Duration::from_millis(150 + 170 * u64::from(round)));
            gw.signal(Signal::KILL);
            gw
        });
        write_until_killed(&socket, &mut rng, round % 2 == 0, &mut ledger);
        drop(killer.join().unwrap());
    }
    assert!(ledger.durable_count() > 50, "too few durable writes to mean anything: {}", ledger.durable_count());
    // Restart and read everything back.
    let gw = Gateway::start(dir.path(), &config);
    let opts = load_node();
    let mut i = Initiator::connect(&gw.socket, &opts).unwrap();
    i.execute(0, 0, &[0; 6], Data::None).unwrap();
    for (&lba, (durable, later)) in &ledger.allowed {
        let Some(durable) = *durable else { continue };
        let (r, data) = i.read(0, 0, lba, 4096).unwrap();
        assert!(r.good());
        let ok = data == block(lba, durable) || later.iter().any(|&n| data == block(lba, n));
        assert!(ok, "the durable write at LBA {lba} was lost or torn");
    }
}
