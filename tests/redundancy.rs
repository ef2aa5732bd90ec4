//! Two redundant gateways (`[[gateway]]`) on one host sharing a config and the images,
//! and a FUSE mount (`pangate mount`) that uses both: fio keeps writing with verification
//! while the gateway serving a LUN is killed, stopped or restarted.
//!
//! These need root, /dev/fuse and fio. Outside CI a missing prerequisite skips the test
//! with a reason; with CI=true it fails it.

#[allow(dead_code)] // the iSCSI test uses a few of its calls
#[path = "support/iscsi_client.rs"]
mod iscsi_client;
mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

const PANGATE: &str = env!("CARGO_BIN_EXE_pangate");
const NODE_IQN: &str = "iqn.2026-12.test:redundant-n";
const SECRET: &str = "redundant-chap-secret";
/// FUSE mounts and fio load: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[track_caller]
fn prerequisites() -> bool {
    support::fuse_prerequisites("redundant gateway tests", &["fio"])
}

/// Two gateways over one data directory, each logging to `gw<id>.log` in it, killed on drop.
struct Pair {
    dir: tempfile::TempDir,
    gateways: [Option<Child>; 2],
    /// Each gateway's iSCSI portal.
    portals: [std::net::SocketAddr; 2],
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Pair {
    /// Images `a` (served by gateway 1) and `b` (gateway 2), both mapped to nodes `n` and `m`.
    fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let portals = [free_port(), free_port()].map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
        let text = format!(
            r#"serial = "pg-redundant"
data_dir = "{d}"
[web]
enabled = false
[[gateway]]
id = 1
socket = "gw1.sock"
iscsi_listen = ["{p1}"]
[[gateway]]
id = 2
socket = "gw2.sock"
iscsi_listen = ["{p2}"]
[[pan]]
name = "p"
[[pan.image]]
name = "a"
path = "images/a.img"
size = "64MiB"
[[pan.image]]
name = "b"
path = "images/b.img"
size = "64MiB"
[[pan.node]]
name = "n"
credential = "credential-of-node-n-0001"
iqn = "{NODE_IQN}"
chap_secret = "{SECRET}"
luns = [{{ target = 0, lun = 0, image = "a", access = "rw" }}, {{ target = 0, lun = 1, image = "b", access = "rw" }}]
[[pan.node]]
name = "m"
credential = "credential-of-node-m-0001"
luns = [{{ target = 0, lun = 0, image = "a", access = "rw" }}]
"#,
            d = dir.path().display(),
            p1 = portals[0],
            p2 = portals[1],
        );
        std::fs::write(dir.path().join("pangate.toml"), text).unwrap();
        let mut pair = Pair { dir, gateways: [None, None], portals };
        pair.start(1);
        pair.start(2);
        pair.wait_log(1, "LUN active/optimized here pan=p image=a");
        pair.wait_log(2, "LUN active/optimized here pan=p image=b");
        // Each also knows the other serves the other LUN (not still waiting for its lease).
        pair.wait_log(1, "LUN on standby here pan=p image=b");
        pair.wait_log(2, "LUN on standby here pan=p image=a");
        pair
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self, id: u16) -> String {
        std::fs::read_to_string(self.path().join(format!("gw{id}.log"))).unwrap_or_default()
    }

    fn start(&mut self, id: u16) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("gw{id}.log")))
            .unwrap();
        let child = Command::new(PANGATE)
            .args(["up", "--config"])
            .arg(self.path().join("pangate.toml"))
            .args(["--gateway", &id.to_string(), "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gateways[usize::from(id - 1)] = Some(child);
    }

    fn signal(&self, id: u16, sig: Signal) {
        let child = self.gateways[usize::from(id - 1)].as_ref().expect("running");
        kill_process(Pid::from_child(child), sig).unwrap();
    }

    /// Waits for gateway `id` to exit; its status.
    fn wait_exit(&mut self, id: u16, within: Duration) -> std::process::ExitStatus {
        let child = self.gateways[usize::from(id - 1)].as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.gateways[usize::from(id - 1)] = None;
                return s;
            }
            assert!(Instant::now() < deadline, "gateway {id} did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 20 s) until gateway `id` has logged `line`, `times` times in all.
    fn wait_log_n(&self, id: u16, line: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log(id).matches(line).count() < times {
            assert!(Instant::now() < deadline, "gateway {id} did not log {line:?} ({times}x):\n{}", self.log(id));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_log(&self, id: u16, line: &str) {
        self.wait_log_n(id, line, 1);
    }

    /// `pangate scsi` as node `node` on LUN `lun`, through the gateways the data
    /// directory's config names (or `socket`): the JSON it printed and whether it succeeded.
    fn scsi(&self, node: &str, lun: u16, socket: Option<&str>, args: &[&str]) -> (serde_json::Value, bool) {
        let mut cmd = Command::new(PANGATE);
        cmd.args(["scsi", "--data-dir"]).arg(self.path());
        if let Some(s) = socket {
            cmd.arg("--socket").arg(self.path().join(s));
        }
        let out =
            cmd.args(["--pan", "p", "--node", node, "--lun", &lun.to_string(), "--json"]).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
        (v, out.status.success())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in self.gateways.iter_mut().flatten() {
            let _ = kill_process(Pid::from_child(child), Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pangate mount` of node `n` through both gateways (from the config); unmounted and
/// stopped on drop.
struct Mount {
    child: Child,
    point: PathBuf,
}

impl Mount {
    fn new(pair: &Pair) -> Mount {
        let point = pair.path().join("mnt");
        std::fs::create_dir_all(&point).unwrap();
        let child = Command::new(PANGATE)
            .args(["mount", "--data-dir"])
            .arg(pair.path())
            .args(["--pan", "p", "--node", "n", "--io-timeout", "10", "--log-level", "warn"])
            .arg(&point)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !point.join("t0-l1").exists() {
            assert!(Instant::now() < deadline, "the mount did not show its files within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount { child, point }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = rustix::mount::unmount(&self.point, rustix::mount::UnmountFlags::DETACH);
    }
}

/// What a fio run said.
struct FioRun {
    /// Per job: its error code, bytes written and bytes verified.
    jobs: Vec<(i64, u64, u64)>,
    /// The longest completion latency of any I/O, from the latency logs.
    longest: Duration,
    output: String,
}

/// Starts fio on both LUNs of `mount` for `seconds`: 4 KiB random writes at QD16 with
/// CRC32C verification (each block read back and checked while running, and every block
/// at the end), latency logs under the mount's parent.
fn start_fio(mount: &Mount, seconds: u32) -> Child {
    let logs = mount.point.parent().unwrap().join("lat");
    let mut cmd = Command::new("fio");
    cmd.args([
        "--ioengine=libaio",
        "--direct=1",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--size=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_backlog=512",
        "--verify_state_save=0",
        "--time_based=1",
        "--output-format=json",
        "--log_avg_msec=0",
    ])
    .arg(format!("--runtime={seconds}"))
    .arg(format!("--write_lat_log={}", logs.display()));
    for (name, file) in [("a", "t0-l0"), ("b", "t0-l1")] {
        cmd.arg(format!("--name={name}")).arg(format!("--filename={}", mount.point.join(file).display()));
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish_fio(child: Child, mount: &Mount) -> FioRun {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let output = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        stdout.find('{').and_then(|at| serde_json::from_str(&stdout[at..]).ok()).unwrap_or(serde_json::Value::Null);
    let jobs = report["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .map(|j| {
                    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
                    (j["error"].as_i64().unwrap_or(-1), n(&j["write"]["io_bytes"]), n(&j["read"]["io_bytes"]))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut longest = 0u64;
    let dir = mount.point.parent().unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("lat_clat") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            // time (ms), latency (ns), direction, block size, offset
            let worst = text.lines().filter_map(|l| l.split(',').nth(1)?.trim().parse::<u64>().ok()).max();
            longest = longest.max(worst.unwrap_or(0));
            let _ = std::fs::remove_file(entry.path());
        }
    }
    FioRun { jobs, longest: Duration::from_nanos(longest), output }
}

/// fio's verdict: both jobs without error, every job wrote and verified data, and no
/// I/O took 2 s or more.
fn assert_clean(run: &FioRun, what: &str) {
    assert_eq!(run.jobs.len(), 2, "{what}: fio did not report two jobs:\n{}", run.output);
    for (error, written, verified) in &run.jobs {
        assert_eq!(*error, 0, "{what}: an I/O error or verify failure reached fio:\n{}", run.output);
        assert!(*written > 0 && *verified > 0, "{what}: nothing written or verified:\n{}", run.output);
    }
    assert!(run.longest < Duration::from_secs(2), "{what}: an I/O stalled for {:?}", run.longest);
    eprintln!("{what}: longest I/O {:?}", run.longest);
}

#[test]
fn killing_the_serving_gateway_loses_no_write_and_its_luns_fail_back_when_it_returns_twice_over() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    let mut pair = Pair::new();
    let mount = Mount::new(&pair);
    let fio = start_fio(&mount, 20);
    std::thread::sleep(Duration::from_secs(6));
    pair.signal(1, Signal::KILL);
    assert_eq!(pair.wait_exit(1, Duration::from_secs(10)).signal(), Some(9));
    pair.wait_log(2, "LUN active/optimized here pan=p image=a");
    std::thread::sleep(Duration::from_secs(5));
    // Back: LUN a returns to gateway 1 while fio keeps writing.
    pair.start(1);
    pair.wait_log(2, "LUN handed over pan=p image=a");
    pair.wait_log(1, "LUN active/optimized here pan=p image=a");
    // And once more: the node's routes after a failback must carry a second takeover.
    std::thread::sleep(Duration::from_secs(2));
    pair.signal(1, Signal::KILL);
    assert_eq!(pair.wait_exit(1, Duration::from_secs(10)).signal(), Some(9));
    pair.wait_log_n(2, "LUN active/optimized here pan=p image=a", 2);
    let run = finish_fio(fio, &mount);
    assert_clean(&run, "SIGKILL, failback, SIGKILL");
    assert!(
        !pair.log(1).contains("LUN active/optimized here pan=p image=b"),
        "LUN b stayed on gateway 2:\n{}",
        pair.log(1)
    );
}

#[test]
fn a_stopped_gateway_is_fenced_and_writes_nothing_after_it_continues() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    let mut pair = Pair::new();
    let mount = Mount::new(&pair);
    let fio = start_fio(&mount, 8);
    std::thread::sleep(Duration::from_secs(3));
    pair.signal(1, Signal::STOP);
    pair.wait_log(2, "fenced a gateway whose lease lapsed");
    pair.wait_log(2, "LUN active/optimized here pan=p image=a");
    let run = finish_fio(fio, &mount);
    assert_clean(&run, "SIGSTOP");
    // The fence was a SIGKILL: continuing it changes nothing, and it exits killed.
    pair.signal(1, Signal::CONT);
    assert_eq!(pair.wait_exit(1, Duration::from_secs(10)).signal(), Some(9), "gateway 1 was not fenced");
    // What the node writes now through gateway 2 is what the image holds, and stays so.
    let block: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(mount.point.join("t0-l0")).unwrap();
        f.write_all_at(&block, 1 << 20).unwrap();
        f.sync_all().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    let image = std::fs::read(pair.path().join("images/a.img")).unwrap();
    assert!(image[1 << 20..(1 << 20) + block.len()] == block[..], "the image does not hold the node's last write");
}

#[test]
fn a_reservation_taken_before_a_failover_holds_after_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !prerequisites() {
        return;
    }
    let mut pair = Pair::new();
    let data = pair.path().join("block.bin");
    std::fs::write(&data, vec![0x5a; 512]).unwrap();
    let data = data.to_str().unwrap();
    // Registered for every target port (both gateways'), as a multipathed initiator does.
    for (node, key) in [("n", "aa"), ("m", "bb")] {
        let (v, ok) = pair.scsi(node, 0, Some("gw1.sock"), &["pr-out", "register", "--sa-key", key, "--all-tg-pt"]);
        assert!(ok, "{v}");
    }
    assert!(pair.scsi("n", 0, Some("gw1.sock"), &["pr-out", "reserve", "--key", "aa", "--type", "we"]).1);
    let (v, ok) = pair.scsi("m", 0, Some("gw1.sock"), &["write", "0", "--in", data, "--pad"]);
    assert!(!ok && v["status"] == 0x18, "m's write conflicts before the failover: {v}");

    pair.signal(1, Signal::KILL);
    pair.wait_exit(1, Duration::from_secs(10));
    pair.wait_log(2, "LUN active/optimized here pan=p image=a");
    let (groups, ok) = pair.scsi("n", 0, Some("gw2.sock"), &["rtpg"]);
    assert!(ok, "{groups}");
    assert_eq!(groups["groups"][0]["state"], "standby", "gateway 1's group after the takeover: {groups}");
    assert_eq!(groups["groups"][1]["state"], "active/optimized", "gateway 2's: {groups}");
    assert_eq!(groups["groups"][1]["ports"], serde_json::json!([3, 4]), "{groups}");
    let (r, _) = pair.scsi("n", 0, Some("gw2.sock"), &["pr-in", "read-reservation"]);
    assert_eq!(r["reservation"]["key"], "0xaa", "{r}");
    assert_eq!(r["reservation"]["type"], "write-exclusive", "{r}");
    let (keys, _) = pair.scsi("m", 0, Some("gw2.sock"), &["pr-in", "read-keys"]);
    assert_eq!(keys["keys"], serde_json::json!(["0xaa", "0xbb"]), "{keys}");
    let (v, ok) = pair.scsi("m", 0, Some("gw2.sock"), &["write", "0", "--in", data, "--pad"]);
    assert!(!ok && v["status"] == 0x18, "m's write still conflicts after the failover: {v}");
    let (v, ok) = pair.scsi("n", 0, Some("gw2.sock"), &["write", "0", "--in", data, "--pad"]);
    assert!(ok, "the holder writes through the gateway that took over: {v}");
}

/// The designator of `kind` (association `assoc`) in a Device Identification VPD page.
fn designator(page: &[u8], assoc: u8, kind: u8) -> Option<Vec<u8>> {
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = usize::from(page[at + 3]);
        let (a, k) = ((page[at + 1] >> 4) & 3, page[at + 1] & 0xF);
        if (a, k) == (assoc, kind) {
            return page.get(at + 4..at + 4 + len).map(<[u8]>::to_vec);
        }
        at += 4 + len;
    }
    None
}

#[test]
fn over_iscsi_both_gateways_show_one_unit_through_two_port_groups() {
    let pair = Pair::new();
    let target = "iqn.2026-12.io.pangate:p.t0";
    // SendTargets on either gateway lists both portals, each under its gateway's tag.
    let mut discovery = iscsi_client::Client::login(pair.portals[0], NODE_IQN, None, SECRET).unwrap();
    let listed = discovery.send_targets();
    let addresses: Vec<&str> = listed.iter().filter(|(k, _)| k == "TargetAddress").map(|(_, v)| v.as_str()).collect();
    assert_eq!(addresses, [format!("{},1", pair.portals[0]), format!("{},2", pair.portals[1])], "{listed:?}");
    let mut one = iscsi_client::Client::login(pair.portals[0], NODE_IQN, Some(target), SECRET).unwrap();
    let mut two = iscsi_client::Client::login(pair.portals[1], NODE_IQN, Some(target), SECRET).unwrap();
    let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    for c in [&mut one, &mut two] {
        // Each session's first command reports its power-on attention.
        c.command(0, &[0; 6], &[], 0);
    }
    for c in [&mut one, &mut two] {
        let r = c.command(0, &rtpg, &[], 256).unwrap();
        assert_eq!(r.status, 0, "REPORT TARGET PORT GROUPS: {:02x?}", r.sense);
        // Group 1 (gateway 1, preferred): active/optimized, ports 1 and 2; group 2: standby.
        assert_eq!(&r.data[4..8], &[0x80, 0x8F, 0, 1], "{:02x?}", r.data);
        assert_eq!(&r.data[12..20], &[0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(&r.data[20..24], &[0x02, 0x8F, 0, 2], "{:02x?}", r.data);
        assert_eq!(&r.data[28..36], &[0, 0, 0, 3, 0, 0, 0, 4]);
    }
    // The same unit (NAA designator), through each gateway's own iSCSI target port.
    let vpd83 = |c: &mut iscsi_client::Client| c.command(0, &[0x12, 1, 0x83, 0, 255, 0], &[], 255).unwrap().data;
    let (a, b) = (vpd83(&mut one), vpd83(&mut two));
    assert_eq!(designator(&a, 0, 3), designator(&b, 0, 3), "one logical unit");
    assert!(designator(&a, 0, 3).is_some());
    assert_eq!(designator(&a, 1, 4), Some(vec![0, 0, 0, 2]), "gateway 1's iSCSI port");
    assert_eq!(designator(&b, 1, 4), Some(vec![0, 0, 0, 4]), "gateway 2's iSCSI port");
    assert_eq!(designator(&b, 1, 5), Some(vec![0, 0, 0, 2]), "gateway 2's port group");
    // I/O is served by gateway 1 alone; gateway 2 answers NOT READY, standby.
    let read = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    assert_eq!(one.command(0, &read, &[], 512).unwrap().status, 0);
    let r = two.command(0, &read, &[], 512).unwrap();
    assert_eq!((r.status, r.sense.get(2).map(|k| k & 0xF), r.sense.get(12..14)), (2, Some(2), Some(&[4u8, 0x0B][..])));
}
