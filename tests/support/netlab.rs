//! A lab for netvirt tests with real kernel stacks: network namespaces the test creates
//! (addresses from 198.18.0.0/15) and a gateway running in a namespace of its own, so
//! nothing touches the host's network. Every namespace goes when the lab is dropped, pass
//! or fail. `tests/net.rs` and `tests/cluster.rs` share it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use netvirt::network::NetShow;
use rustix::process::{kill_process, Pid, Signal};

use crate::support::on_path;

pub const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/net_tool.py");

pub fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (network namespaces, TAP devices)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun".into());
    }
    for tool in ["ip", "nsenter", "ping", "iperf3", "curl", "python3"] {
        if !on_path(tool) {
            return Some(format!("needs {tool} (scripts/test-all installs it)"));
        }
    }
    None
}

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Namespaces and a gateway for one test; all removed on drop.
pub struct Lab {
    tag: String,
    prefix: String,
    pub dir: tempfile::TempDir,
    gateway: Option<Child>,
    pub extra_ns: Vec<String>,
}

/// The tags of the labs alive in this test binary.
static TAGS: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

pub const NODES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

impl Lab {
    pub fn new(tag: &str) -> Lab {
        // Tests of one binary run side by side, and a lab deletes its namespaces by name:
        // two labs with one tag would delete each other's.
        let fresh = TAGS.lock().unwrap_or_else(|e| e.into_inner()).insert(tag.to_string());
        assert!(fresh, "lab tag {tag:?} is in use by another test of this binary; give each test its own");
        let prefix = format!("pgt{}{}", std::process::id() % 100_000, tag);
        let lab = Lab {
            tag: tag.to_string(),
            prefix,
            dir: tempfile::tempdir().unwrap(),
            gateway: None,
            extra_ns: Vec::new(),
        };
        lab.cleanup_namespaces();
        ok(&["ip", "netns", "add", &lab.ns("gw")]);
        ok(&["ip", "-n", &lab.ns("gw"), "link", "set", "lo", "up"]);
        lab
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn all_ns(&self) -> Vec<String> {
        let mut v: Vec<String> = NODES.iter().chain(["gw", "ext"].iter()).map(|n| self.ns(n)).collect();
        v.extend(self.extra_ns.iter().cloned());
        v
    }

    pub fn cleanup_namespaces(&self) {
        for ns in self.all_ns() {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }

    /// The standard PAN: LAN a with n1, n2, n3 (promiscuous allowed) and n5, all in
    /// 198.18.0.0/24; LAN b with n4 on the same subnet, so only isolation keeps them apart.
    pub fn config(&self, lan_a_extra: &str) -> String {
        let port = |node: &str, ip: u8, promisc: bool| {
            format!(
                "[[pan.lan.port]]\nnode = \"{node}\"\nnetns = \"{}\"\nifname = \"eth0\"\nips = [\"198.18.0.{ip}/24\"]\npromiscuous = {promisc}\n",
                self.ns(node)
            )
        };
        // Two data-path workers whatever the machine: every TAP of LAN a and b has two queues.
        let mut c = format!(
            "serial = \"pg-test\"\ndata_dir = \"{}\"\n[net]\nworkers = 2\n[[pan]]\nname = \"p\"\n",
            self.dir.path().display()
        );
        for n in NODES.iter().chain(["r1", "r2"].iter()) {
            c += &format!("[[pan.node]]\nname = \"{n}\"\ncredential = \"credential-of-{n}-0123\"\n");
        }
        c += &format!("[[pan.lan]]\nname = \"a\"\n{lan_a_extra}\n");
        c += &port("n1", 1, false);
        c += &port("n2", 2, false);
        c += &port("n3", 3, true);
        c += &port("n5", 5, false);
        c += "[[pan.lan]]\nname = \"b\"\n";
        c += &port("n4", 4, false);
        c += "[[pan.lan]]\nname = \"rings\"\n";
        c += "[[pan.lan.port]]\nnode = \"r1\"\nkind = \"ring\"\nips = [\"198.18.2.1/24\"]\n";
        c += "[[pan.lan.port]]\nnode = \"r2\"\nkind = \"ring\"\nips = [\"198.18.2.2/24\"]\n";
        c
    }

    pub fn start(&mut self, config: &str) {
        self.stop();
        let file = self.dir.path().join("pangate.toml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(self.dir.path().join("gateway.log")).unwrap();
        // nsenter --net switches only the network namespace: `ip netns exec` would also give
        // the gateway a private mount namespace, hiding the namespaces it creates.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns("gw")))
            .args([env!("CARGO_BIN_EXE_pangate"), "up", "--config"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gateway = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self.gateway.as_mut().unwrap().try_wait().unwrap() {
                panic!("the gateway exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "netvirt did not start within 30 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("net.sock")
    }

    /// Stops the gateway with SIGTERM (so it removes what it created), bounded.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            // nsenter execs pangate, so the child is pangate itself.
            let _ = kill_process(Pid::from_child(&child), Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// CPU time (user + system, in clock ticks) the gateway's netvirt data-path workers
    /// have used so far.
    pub fn dataplane_ticks(&self) -> u64 {
        let pid = self.gateway.as_ref().expect("started").id();
        let mut ticks = 0;
        let mut workers = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm != "netvirt" && !comm.starts_with("netvirt-w") {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Fields after the command name (which ends the first ")"): utime is the 12th, stime the 13th.
            let rest: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
            ticks += rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
            workers += 1;
        }
        assert!(workers > 0, "no netvirt data-path thread in the gateway");
        ticks
    }

    pub fn show(&self) -> NetShow {
        netvirt::network::query_show(&self.socket()).unwrap()
    }

    pub fn port_mac(&self, lan: &str, node: &str) -> String {
        let s = self.show();
        let l = s.lans.iter().find(|l| l.lan == lan).unwrap();
        l.ports.iter().find(|p| p.node == node).unwrap().mac.to_string()
    }

    pub fn drops(&self, lan: &str, node: &str, why: &str) -> u64 {
        let s = self.show();
        let l = s.lans.iter().find(|l| l.lan == lan).unwrap();
        l.ports.iter().find(|p| p.node == node).unwrap().counters.drops[why]
    }

    pub fn exec(&self, node: &str, args: &[&str]) -> Output {
        let ns = self.ns(node);
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip neigh show IP` in a node's namespace.
    pub fn neigh(&self, node: &str, ip: &str) -> String {
        String::from_utf8_lossy(&self.exec(node, &["ip", "neigh", "show", ip]).stdout).into_owned()
    }

    pub fn ping(&self, from: &str, to_ip: &str) -> bool {
        self.exec(from, &["ping", "-c", "2", "-i", "0.2", "-W", "1", to_ip]).status.success()
    }

    /// Starts a tool in a node's namespace and waits until it printed "ready".
    pub fn spawn_tool(&self, node: &str, args: &[&str]) -> Child {
        use std::io::BufRead;
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "python3", TOOL])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(c.stdout.as_mut().unwrap());
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{} did not start; the gateway's log:\n{}", args[0], self.log());
        c
    }

    pub fn tool_count(child: Child) -> u64 {
        let o = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").trim().parse().unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
        self.cleanup_namespaces();
        TAGS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.tag);
    }
}
