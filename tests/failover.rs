//! Failover of a node's personality to a spare, with real kernel stacks: node n1 serves
//! TCP on 198.18.0.1 from its namespace and has a LUN with known data; n2 is its client;
//! spare s1 waits with a TAP and no address in a namespace of its own. Addresses are from
//! 198.18.0.0/15, and every namespace goes when the test ends, pass or fail.

#[path = "support/netlab.rs"]
mod netlab;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netlab::{missing, ok, Lab, TOOL};
use rustix::process::{kill_process, Pid, Signal};
use support::skip_because;

const PANGATE: &str = env!("CARGO_BIN_EXE_pangate");
const TOKEN: &str = "failover-test-admin-token-0123456789";
const OLD: &str = "credential-of-n1-0123";
const SPARE: &str = "credential-of-s1-0123";
const A_IP: &str = "198.18.0.1";

/// n1 (failover as given) with LUN "disk", a TAP on LAN a, where it is the backend of
/// cluster "web" (198.18.0.100, port 8080), and a ring port on LAN r; n2 on LAN a; spare s1
/// with a TAP on LAN a in its own namespace.
fn config(lab: &Lab, n1_failover: &str) -> String {
    let d = lab.dir.path().display();
    let mut c = format!(
        "serial = \"pg-test\"\ndata_dir = \"{d}\"\n[web]\nlisten = \"127.0.0.1:8089\"\ntoken = \"{TOKEN}\"\n[[pan]]\nname = \"p\"\n"
    );
    c += "[[pan.image]]\nname = \"disk\"\npath = \"images/disk.img\"\nsize = \"16MiB\"\n";
    c += &format!("[[pan.node]]\nname = \"n1\"\ncredential = \"{OLD}\"\n{n1_failover}\n");
    c += "luns = [{ target = 0, lun = 0, image = \"disk\", access = \"rw\" }]\n";
    c += "[[pan.node]]\nname = \"n2\"\ncredential = \"credential-of-n2-0123\"\n";
    c += &format!("[[pan.node]]\nname = \"s1\"\ncredential = \"{SPARE}\"\nspare = true\n");
    c += "[[pan.lan]]\nname = \"a\"\n";
    for (node, ns, ip) in [("n1", "n1", Some(1)), ("n2", "n2", Some(2)), ("s1", "s1", None)] {
        let ips = ip.map_or(String::new(), |i| format!("\"198.18.0.{i}/24\""));
        c += &format!(
            "[[pan.lan.port]]\nnode = \"{node}\"\nnetns = \"{}\"\nifname = \"eth0\"\nips = [{ips}]\n",
            lab.ns(ns)
        );
    }
    c += "[[pan.lan.cluster]]\nname = \"web\"\nip = \"198.18.0.100\"\n";
    c += "[[pan.lan.cluster.service]]\nport = 8080\nnodes = [\"n1\"]\n";
    c += "[[pan.lan]]\nname = \"r\"\n[[pan.lan.port]]\nnode = \"n1\"\nkind = \"ring\"\nips = [\"198.18.2.1/24\"]\n";
    c
}

fn lab(tag: &str, n1_failover: &str) -> Option<Lab> {
    if skip_because(missing()) {
        return None;
    }
    let mut lab = Lab::new(tag);
    lab.extra_ns.push(lab.ns("s1"));
    let cfg = config(&lab, n1_failover);
    lab.start(&cfg);
    wait_for(Duration::from_secs(20), "the admin API", || api(&lab, "GET", "/api/v1/overview", "") == 200);
    Some(lab)
}

/// An admin API call from inside the gateway's namespace; the HTTP status.
fn api(lab: &Lab, method: &str, path: &str, body: &str) -> u16 {
    api_body(lab, method, path, body).0
}

/// An admin API call; the HTTP status and the response body.
fn api_body(lab: &Lab, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:8089{path}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let mut args = vec!["curl", "-s", "-w", "\n%{http_code}", "-X", method, "-H", &auth];
    if !body.is_empty() {
        args.extend(["-H", "Content-Type: application/json", "-d", body]);
    }
    args.push(&url);
    let out = String::from_utf8_lossy(&lab.exec("gw", &args).stdout).into_owned();
    let (text, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.trim().parse().unwrap_or(0), text.to_string())
}

fn metrics(lab: &Lab) -> String {
    String::from_utf8_lossy(&lab.exec("gw", &["curl", "-s", "http://127.0.0.1:8089/metrics"]).stdout).into_owned()
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn socket(lab: &Lab) -> PathBuf {
    lab.dir.path().join("pangate.sock")
}

/// `pangate scsi` as node n1 with `credential`.
fn scsi(lab: &Lab, credential: &str, args: &[&str]) -> std::process::Output {
    Command::new(PANGATE)
        .args(["scsi", "--pan", "p", "--node", "n1", "--lun", "0", "--credential", credential, "--socket"])
        .arg(socket(lab))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn pattern() -> Vec<u8> {
    (0..8192u32).map(|i| (i * 7 + i / 512) as u8).collect()
}

/// The lladdr of `ip` in `node`'s neighbour table.
fn lladdr(lab: &Lab, node: &str, ip: &str) -> Option<String> {
    let line = lab.neigh(node, ip);
    let mut words = line.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `pangate mount` as n1 with `credential` at `point`, killed (and unmounted) on drop.
struct Mount {
    child: Child,
    point: PathBuf,
}

impl Mount {
    fn start(lab: &Lab, credential: &str, point: &Path) -> Mount {
        std::fs::create_dir_all(point).unwrap();
        let child = Command::new(PANGATE)
            .args(["mount", "--pan", "p", "--node", "n1", "--credential", credential, "--io-timeout", "5", "--socket"])
            .arg(socket(lab))
            .arg(point)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let m = Mount { child, point: point.to_path_buf() };
        wait_for(Duration::from_secs(20), "the mount", || m.point.join("t0-l0").exists());
        m
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let pid = Pid::from_child(&self.child);
        let _ = kill_process(pid, Signal::CONT);
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut self.child);
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
    }
}

fn fuse_missing() -> Option<String> {
    (!Path::new("/dev/fuse").exists()).then(|| "needs /dev/fuse for pangate mount".to_string())
}

#[test]
fn a_failed_node_s_personality_moves_to_a_spare_in_one_call() {
    let Some(lab) = lab("fo", "") else { return };
    if skip_because(fuse_missing()) {
        return;
    }
    // n1's data, its TCP services, a client that knows it, and its ring port.
    let data = lab.dir.path().join("data.bin");
    std::fs::write(&data, pattern()).unwrap();
    let out = scsi(&lab, OLD, &["write", "0", "--in", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut servers = vec![
        lab.spawn_tool("n1", &["serve-name", "8080", "n1", "60"]),
        lab.spawn_tool("n1", &["serve-stream", "8081", "n1", "60"]),
    ];
    assert!(lab.ping("n2", A_IP));
    let a_mac = lab.port_mac("a", "n1");
    assert_eq!(lladdr(&lab, "n2", A_IP).as_deref(), Some(a_mac.as_str()));
    let mut held = lab.spawn_tool("n2", &["hold", A_IP, "8081", "60"]);
    let ring = netvirt::client::RingClient::connect(&lab.socket(), "p", "n1", "r", OLD).expect("n1's ring port");

    // n1 dies: its link first (so nothing it does later gets out), then its processes.
    ok(&["ip", "-n", &lab.ns("n1"), "link", "del", "eth0"]);
    for s in &mut servers {
        kill(s);
    }
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/nodes/n1/failover", r#"{"to": "s1"}"#), 200, "{}", lab.log());
    let failed_over = Instant::now();

    // S answers on A's address with A's MAC, and the client's pings resume within 2 s.
    let resumed = wait_for(Duration::from_secs(2), "pings to A", || {
        lab.exec("n2", &["ping", "-c", "1", "-W", "0.2", A_IP]).status.success()
    });
    eprintln!("pings resumed {:?} after the failover call returned", failed_over.elapsed().min(resumed));
    assert_eq!(lladdr(&lab, "n2", A_IP).as_deref(), Some(a_mac.as_str()), "the client's ARP entry is unchanged");
    let link = ok(&["ip", "-n", &lab.ns("s1"), "addr", "show", "eth0"]);
    assert!(link.contains(&a_mac) && link.contains("198.18.0.1/24"), "{link}");
    let mut servers = vec![lab.spawn_tool("s1", &["serve-name", "8080", "s1", "60"])];
    let answer = lab.exec("n2", &["python3", TOOL, "connect-many", A_IP, "8080", "3", "10"]);
    assert!(String::from_utf8_lossy(&answer.stdout).contains(r#""s1": 3"#), "{answer:?}");
    // n1's cluster membership came along: the cluster's address reaches the spare.
    let answer = lab.exec("n2", &["python3", TOOL, "connect-many", "198.18.0.100", "8080", "3", "10"]);
    assert!(String::from_utf8_lossy(&answer.stdout).contains(r#""s1": 3"#), "{answer:?}");
    // A's old connection gets S's reset instead of hanging.
    let mut line = String::new();
    BufReader::new(held.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "broken");
    kill(&mut held);

    // The storage side: S, as n1 with its own credential, reads n1's data through a mount.
    let m = Mount::start(&lab, SPARE, &lab.dir.path().join("mnt"));
    let read = std::fs::read(m.point.join("t0-l0")).unwrap();
    assert_eq!(&read[..8192], &pattern()[..], "the spare sees the failed node's data");
    drop(m);

    // The old credential opens nothing: no queue pair, no port; the spare's attaches.
    let out = scsi(&lab, OLD, &["inquiry"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential"), "{out:?}");
    assert!(netvirt::client::RingClient::connect(&lab.socket(), "p", "n1", "r", OLD).is_err());
    drop(ring);
    let port_r = |lab: &Lab| {
        let s = lab.show();
        s.lans.iter().find(|l| l.lan == "r").unwrap().ports[0].attached
    };
    wait_for(Duration::from_secs(5), "the old ring client to be gone", || !port_r(&lab));
    let _spare_ring = netvirt::client::RingClient::connect(&lab.socket(), "p", "n1", "r", SPARE).expect("spare's ring");
    assert!(port_r(&lab));

    // One config change, persisted: the spare left the pool, n1 has its credential.
    let cfg = gateway::config::Config::load(&lab.dir.path().join("pangate.toml")).unwrap();
    let pan = &cfg.pans[0];
    assert!(!pan.nodes.iter().any(|n| n.name == "s1"));
    assert_eq!(pan.nodes.iter().find(|n| n.name == "n1").unwrap().credential, SPARE);
    assert!(metrics(&lab).contains(r#"pangate_failovers_total{pan="p",trigger="manual",outcome="done"} 1"#));
    // Nothing is left to fail over to, and bad requests say why.
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/nodes/n2/failover", ""), 409);
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/nodes/n2/failover", r#"{"to": "nobody"}"#), 404);
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/nodes/n2/failover", r#"{"to": "n1"}"#), 409);
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/nodes/n2/failover", "{bad json"), 400);
    let taken = r#"{"name": "web2", "ip": "198.18.0.2", "services": [{"port": 80, "nodes": ["n2"]}]}"#;
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/lans/a/clusters", taken), 400, "a cluster IP that is a node's");
    for s in &mut servers {
        kill(s);
    }
}

#[test]
fn a_failover_that_cannot_complete_rolls_back_and_says_why() {
    let Some(lab) = lab("fr", "") else { return };
    assert!(lab.ping("n2", A_IP));
    // The spare's machine is gone: its namespace with it, so its place cannot take a TAP.
    ok(&["ip", "netns", "del", &lab.ns("s1")]);
    let (status, body) = api_body(&lab, "POST", "/api/v1/pans/p/nodes/n1/failover", r#"{"to": "s1"}"#);
    assert_eq!(status, 500, "{body}\n{}", lab.log());
    assert!(body.contains("TAP") && body.contains("n1"), "the reason is given: {body}");
    // Nothing changed: the config, n1's credential, and n1's TAP, back in its namespace.
    let cfg = gateway::config::Config::load(&lab.dir.path().join("pangate.toml")).unwrap();
    assert!(cfg.pans[0].nodes.iter().any(|n| n.name == "s1" && n.spare));
    assert_eq!(cfg.pans[0].nodes.iter().find(|n| n.name == "n1").unwrap().credential, OLD);
    wait_for(Duration::from_secs(3), "pings to n1 after the rollback", || lab.ping("n2", A_IP));
    let link = ok(&["ip", "-n", &lab.ns("n1"), "addr", "show", "eth0"]);
    assert!(link.contains("198.18.0.1/24") && link.contains(&lab.port_mac("a", "n1")), "{link}");
    let out = scsi(&lab, OLD, &["inquiry"]);
    assert!(out.status.success(), "n1 is unfenced: {}", String::from_utf8_lossy(&out.stderr));
    assert!(metrics(&lab).contains(r#"pangate_failovers_total{pan="p",trigger="manual",outcome="failed"} 1"#));
}

#[test]
fn a_node_that_stops_heartbeating_is_failed_over_by_itself() {
    let Some(lab) = lab("fa", "failover = \"auto\"\nfailover_after = \"2s\"") else { return };
    if skip_because(fuse_missing()) {
        return;
    }
    let m = Mount::start(&lab, OLD, &lab.dir.path().join("mnt"));
    // An idle mount heartbeats: well past failover_after, nothing happens.
    std::thread::sleep(Duration::from_secs(4));
    assert!(!metrics(&lab).contains("pangate_failovers_total"), "an idle, live node was failed over");
    // The node hangs, its queue pairs and TAP still open.
    kill_process(Pid::from_child(&m.child), Signal::STOP).unwrap();
    let stopped = Instant::now();
    let done = r#"pangate_failovers_total{pan="p",trigger="auto",outcome="done"} 1"#;
    wait_for(Duration::from_secs(10), "the automatic failover", || metrics(&lab).contains(done));
    let took = stopped.elapsed();
    eprintln!("failed over {took:?} after the node stopped");
    assert!(took >= Duration::from_millis(1500), "failed over before failover_after: {took:?}");
    let cfg = gateway::config::Config::load(&lab.dir.path().join("pangate.toml")).unwrap();
    assert_eq!(cfg.pans[0].nodes.iter().find(|n| n.name == "n1").unwrap().credential, SPARE);
    wait_for(Duration::from_secs(3), "pings to A at the spare", || lab.ping("n2", A_IP));
    let link = ok(&["ip", "-n", &lab.ns("s1"), "addr", "show", "eth0"]);
    assert!(link.contains("198.18.0.1/24"), "{link}");
    drop(m);
}

/// The metric names a Prometheus query or rule file uses: `pangate_*` and `process_*`
/// series names (recording rules' `pangate:*` names and `up` are Prometheus's own).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for prefix in ["pangate_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            if at > 0 && (word(bytes[at - 1]) || bytes[at - 1] == b':') {
                continue;
            }
            let end =
                text[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |e| at + e);
            names.insert(text[at..end].to_string());
        }
    }
    names
}

/// Every `expr` (and variable query) of the Grafana dashboard, rows' panels included.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// `dist/grafana/pangate.json` and `dist/prometheus/pangate-rules.yml` ask only for metric
/// families a live gateway exports. The gateway is made to export every one of them: I/O on
/// a LUN, LAN traffic, a spoofed frame, a queue pair closed for a protocol error, a refused
/// handshake and a failover; then each query's names must be series in `/metrics`.
#[test]
fn the_grafana_dashboard_and_the_alert_rules_ask_only_for_live_metrics() {
    let Some(lab) = lab("g", "") else { return };
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dist.join("grafana/pangate.json")).unwrap()).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() > 15, "{queries:?}");
    // Panels are well formed: unique ids, a grid position, a data source for their queries.
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: std::collections::BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24), "{p}");
        if p["type"] != "row" {
            assert!(
                p["datasource"]["uid"].is_string() && p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{p}"
            );
        }
    }
    let rules = std::fs::read_to_string(dist.join("prometheus/pangate-rules.yml")).unwrap();

    // I/O on the LUN, and traffic on LAN a.
    for rw in ["randwrite", "randread"] {
        let io = Command::new(PANGATE)
            .args([
                "bench",
                "--pan",
                "p",
                "--node",
                "n1",
                "--credential",
                OLD,
                "--rw",
                rw,
                "--seconds",
                "0.5",
                "--socket",
            ])
            .arg(socket(&lab))
            .output()
            .unwrap();
        assert!(io.status.success(), "{}", String::from_utf8_lossy(&io.stderr));
    }
    assert!(lab.ping("n2", A_IP));
    // n2 sends from an address that is not its own: dropped and counted.
    ok(&["ip", "-n", &lab.ns("n2"), "addr", "add", "198.18.0.77/24", "dev", "eth0"]);
    let _ = lab.exec("n2", &["ping", "-c", "1", "-W", "1", "-I", "198.18.0.77", A_IP]);
    // A wrong credential is refused; a queue pair that writes garbage is closed.
    assert!(!scsi(&lab, "not-the-credential-0123", &["inquiry"]).status.success());
    garbage_queue_pair(&lab);
    // A failover: n2's personality to the spare.
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/nodes/n2/failover", r#"{"to": "s1"}"#), 200, "{}", lab.log());

    let mut missing = std::collections::BTreeSet::new();
    wait_for(Duration::from_secs(10), "every family in /metrics", || {
        let live = metrics(&lab);
        let exported: std::collections::BTreeSet<&str> =
            live.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        missing = queries
            .iter()
            .map(String::as_str)
            .chain([rules.as_str()])
            .flat_map(metric_names)
            .filter(|n| !exported.contains(n.as_str()))
            .collect();
        missing.is_empty()
    });
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
}

/// Connects n1's queue pair and writes garbage into its CMD ring: the gateway closes it for
/// a protocol error.
fn garbage_queue_pair(lab: &Lab) {
    use gateway::ring::initiator::{ConnectOptions, Initiator, InitiatorError};
    use gateway::ring::proto::SLOT_SIZE;
    use gateway::ring::spsc::{cursor_offsets, slot_offset, RingId};
    let opts = ConnectOptions {
        pan: "p".into(),
        node: "n1".into(),
        credential: OLD.into(),
        slots: 8,
        data_bytes: 1 << 20,
        client: None,
    };
    let bad = Initiator::connect(&socket(lab), &opts).unwrap();
    let ring = bad.raw_ring();
    let slot = [0xA5u8; SLOT_SIZE];
    ring.write(slot_offset(RingId::Cmd, bad.queue_depth(), 0), &slot).unwrap();
    ring.store_release(cursor_offsets(RingId::Cmd).0, 1).unwrap();
    wait_for(Duration::from_secs(10), "the garbage queue pair closed", || {
        matches!(bad.check_connected(), Err(InitiatorError::Closed))
    });
}
