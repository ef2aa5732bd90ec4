//! Service clusters with real kernel stacks: backends in network namespaces the test
//! creates, each answering TCP connections with its node name; a client in another
//! namespace connecting to the cluster IP. Addresses are from 198.18.0.0/15, and every
//! namespace goes when the test ends, pass or fail.

#[path = "support/netlab.rs"]
mod netlab;
mod support;

use std::collections::BTreeMap;
use std::process::Child;

use netlab::{missing, Lab, TOOL};
use support::skip_because;

const VIP: &str = "198.18.0.100";
const TOKEN: &str = "cluster-test-admin-token-0123456789";

/// LAN a of nodes n1..n5 (198.18.0.1-5/24), and cluster "web" at 198.18.0.100: port 8080
/// served by n1, n2 and n3, port 8081 the same but sticky.
fn config(lab: &Lab) -> String {
    let mut c = format!(
        "serial = \"pg-test\"\ndata_dir = \"{}\"\n[web]\nlisten = \"127.0.0.1:8088\"\ntoken = \"{TOKEN}\"\n[[pan]]\nname = \"p\"\n",
        lab.dir.path().display()
    );
    for n in netlab::NODES {
        c += &format!("[[pan.node]]\nname = \"{n}\"\ncredential = \"credential-of-{n}-0123\"\n");
    }
    c += "[[pan.lan]]\nname = \"a\"\n";
    for (i, n) in netlab::NODES.iter().enumerate() {
        c += &format!(
            "[[pan.lan.port]]\nnode = \"{n}\"\nnetns = \"{}\"\nifname = \"eth0\"\nips = [\"198.18.0.{}/24\"]\n",
            lab.ns(n),
            i + 1
        );
    }
    c += &format!("[[pan.lan.cluster]]\nname = \"web\"\nip = \"{VIP}\"\n");
    c += "[[pan.lan.cluster.service]]\nport = 8080\nnodes = [\"n1\", \"n2\", \"n3\"]\n";
    c += "[[pan.lan.cluster.service]]\nport = 8081\nnodes = [\"n1\", \"n2\", \"n3\"]\nsticky = true\n";
    let checked = "check = \"tcp\"\ncheck_interval = \"200ms\"\ncheck_failures = 2\ncheck_passes = 1\n";
    c += &format!("[[pan.lan.cluster.service]]\nport = 8082\nnodes = [\"n1\", \"n2\", \"n3\"]\n{checked}");
    c += &format!("[[pan.lan.cluster.service]]\nport = 8083\nnodes = [\"n1\", \"n2\", \"n3\"]\n{checked}");
    c += "[[pan.lan.cluster.service]]\nport = 5201\nnodes = [\"n1\"]\n";
    c
}

/// An admin API call from inside the gateway's namespace; the HTTP status.
fn api(lab: &Lab, method: &str, path: &str, body: &str) -> u16 {
    let url = format!("http://127.0.0.1:8088{path}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let out = lab.exec(
        "gw",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &url,
        ],
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn health(lab: &Lab, port: u16, node: &str) -> String {
    let show = lab.show();
    let web = &show.lans.iter().find(|l| l.lan == "a").unwrap().clusters[0];
    web.backends.iter().find(|b| b.port == port && b.node == node).unwrap().health.clone()
}

/// Starts a server on each backend that answers with its name, on both ports.
fn serve(lab: &Lab) -> Vec<Child> {
    let mut servers = Vec::new();
    for n in ["n1", "n2", "n3"] {
        for port in ["8080", "8081"] {
            servers.push(lab.spawn_tool(n, &["serve-name", port, n, "120"]));
        }
    }
    servers
}

/// `count` connections from `client` to the cluster's `port`: answers by backend, and
/// how many failed.
fn connect(lab: &Lab, client: &str, port: u16, count: u32) -> (BTreeMap<String, u64>, u64) {
    let out = lab.exec(client, &["python3", TOOL, "connect-many", VIP, &port.to_string(), &count.to_string(), "60"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let answers = v["answers"].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect();
    (answers, v["failed"].as_u64().unwrap())
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn connections_to_a_cluster_ip_spread_stick_and_stay_on_configured_ports() {
    if skip_because(missing()) {
        return;
    }
    let mut lab = Lab::new("cl");
    lab.start(&config(&lab));
    let _servers = Servers(serve(&lab));

    // Distribution: 300 connections from n5; each backend gets 20-46% of them.
    let (answers, failed) = connect(&lab, "n5", 8080, 300);
    eprintln!("300 connections to the cluster: {answers:?}");
    assert_eq!(failed, 0, "{answers:?}");
    assert_eq!(answers.len(), 3, "{answers:?}");
    for (node, n) in &answers {
        assert!((60..=138).contains(n), "{node} got {n} of 300: {answers:?}");
    }
    // The client's ARP entry for the cluster IP is the cluster's MAC, from the server.
    let show = lab.show();
    let lan = show.lans.iter().find(|l| l.lan == "a").unwrap();
    let web = lan.clusters.iter().find(|c| c.name == "web").unwrap();
    assert!(lab.neigh("n5", VIP).contains(&web.mac.to_string()), "{}", lab.neigh("n5", VIP));
    assert!(web.new_flows >= 300, "{web:?}");

    // Sticky: each client's connections all reach one backend.
    for client in ["n4", "n5"] {
        let (answers, failed) = connect(&lab, client, 8081, 30);
        assert_eq!((answers.len(), failed), (1, 0), "{client}: {answers:?}");
    }

    // A port that is not configured is not answered, and the drop is counted.
    let before = web.drops["port"];
    let (answers, failed) = connect(&lab, "n5", 9090, 1);
    assert_eq!((answers.len(), failed), (0, 1));
    let show = lab.show();
    let web = &show.lans.iter().find(|l| l.lan == "a").unwrap().clusters[0];
    assert!(web.drops["port"] > before, "{web:?}");

    // The cluster answers pings itself.
    assert!(lab.ping("n5", VIP));
}

#[test]
fn losing_a_backend_moves_new_connections_and_breaks_none_on_the_others() {
    if skip_because(missing()) {
        return;
    }
    let mut lab = Lab::new("cm");
    lab.start(&config(&lab));
    let mut servers = Vec::new();
    for n in ["n1", "n2", "n3"] {
        servers.push(lab.spawn_tool(n, &["serve-name", "8082", n, "120"]));
        servers.push(lab.spawn_tool(n, &["serve-stream", "8083", n, "120"]));
    }
    let mut servers = Servers(servers);
    // Long-running streams through the cluster, over every backend.
    let streams = lab.spawn_tool("n5", &["stream-many", VIP, "8083", "12", "8"]);

    // Drain n1: new connections avoid it, none fail.
    let drain = r#"{"node": "n1"}"#;
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/lans/a/clusters/web/drain", drain), 200);
    assert_eq!(health(&lab, 8082, "n1"), "draining");
    let (answers, failed) = connect(&lab, "n5", 8082, 30);
    assert_eq!(failed, 0, "{answers:?}");
    assert!(!answers.contains_key("n1"), "a drained backend got new connections: {answers:?}");

    // Kill n1's servers and take the drain back: the health check keeps it out.
    for c in servers.0.drain(0..2) {
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
    let t = std::time::Instant::now();
    while health(&lab, 8082, "n1") != "down" {
        assert!(t.elapsed() < std::time::Duration::from_secs(3), "the check did not take n1 down");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("n1 down {} ms after its servers died", t.elapsed().as_millis());
    let undrain = r#"{"node": "n1", "drain": false}"#;
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/lans/a/clusters/web/drain", undrain), 200);
    let (answers, failed) = connect(&lab, "n5", 8082, 30);
    assert_eq!(failed, 0, "{answers:?}");
    assert!(!answers.contains_key("n1"), "a dead backend got new connections: {answers:?}");

    // Not one stream on n2 or n3 broke, and each kept flowing.
    let out = streams.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let list: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {text}"));
    let mut survivors = 0;
    for s in list.as_array().unwrap() {
        if s["name"] != "n1" {
            survivors += 1;
            assert_eq!(s["broken"], false, "a stream on a live backend broke: {s}");
            assert!(s["bytes"].as_u64().unwrap() > 200 * 1024, "a stream stalled: {s}");
        }
    }
    assert!(survivors > 0, "no stream on n2 or n3: {list}");
    // Bad requests get their 4xx.
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/lans/a/clusters/web/drain", r#"{"node": "n9"}"#), 404);
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/lans/a/clusters/nope/drain", drain), 404);
    let on_node = r#"{"name": "x", "ip": "198.18.0.1", "services": []}"#;
    assert_eq!(api(&lab, "POST", "/api/v1/pans/p/lans/a/clusters", on_node), 400);
}

/// Once the switch has picked a backend for a flow, the kernel carries the flow's later
/// packets (the client's port sends almost nothing through the switch), and the cluster's
/// count of relayed packets still includes them.
#[test]
fn a_cluster_flow_moves_to_the_kernel_and_is_still_counted() {
    if skip_because(missing()) {
        return;
    }
    let mut lab = Lab::new("ck");
    lab.start(&config(&lab));
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1"), "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let client = |s: &netvirt::network::NetShow| {
        let lan = s.lans.iter().find(|l| l.lan == "a").unwrap();
        let p = lan.ports.iter().find(|p| p.node == "n5").unwrap();
        (p.counters.frames_in, p.switched_in, lan.clusters[0].forwarded)
    };
    let before = client(&lab.show());
    let out = lab.exec("n5", &["timeout", "30", "iperf3", "-c", VIP, "-p", "5201", "-t", "2", "-J"]);
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(bytes > 1e8, "only {bytes} bytes crossed: {}", String::from_utf8_lossy(&out.stdout));
    let after = client(&lab.show());
    let (sent, switched, relayed) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    eprintln!("n5 sent {sent} frames, {switched} through the switch; the cluster relayed {relayed}");
    assert!(sent > 1000, "n5 sent {sent} frames");
    assert!(switched * 10 < sent, "{switched} of {sent} frames went through the switch");
    assert!(relayed + 20 >= sent, "the cluster counted {relayed} of {sent} frames");
}
