//! `pangate net`: what a running gateway's virtual LANs look like, and a frame-rate
//! benchmark between two of its ring ports.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use gateway::config::Config;

use crate::{default_data_dir, CONFIG_NAME};

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// List LANs, ports, namespaces, MACs, IPs and counters.
    Show {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Data directory of the gateway; defaults to $PANGATE_DATA_DIR or ./pangate-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The gateway's netvirt socket, instead of the one its config names.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Measure frames per second between two ring ports of a running gateway, printing JSON.
    RingBench {
        /// Data directory of the gateway (its config names the socket and credentials).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// PAN.
        #[arg(long)]
        pan: String,
        /// LAN.
        #[arg(long)]
        lan: String,
        /// Sending node (a ring port on the LAN).
        #[arg(long)]
        from: String,
        /// Receiving node (a ring port on the LAN).
        #[arg(long)]
        to: String,
        /// Frame size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Measure service clusters' tables in this process, printing JSON: Maglev table build
    /// time and lookups per second, packets per second for new and known flows, and the
    /// connection table's memory per flow.
    ClusterBench {
        /// Backends of the Maglev table whose build is timed.
        #[arg(long, default_value_t = 1000)]
        backends: usize,
        /// Distinct flows routed (and held) for the rates and the memory figure.
        #[arg(long, default_value_t = 1_000_000)]
        flows: usize,
    },
}

/// Runs one `pangate net` subcommand.
pub fn run(command: NetCommand) -> anyhow::Result<()> {
    match command {
        NetCommand::Show { json, data_dir, socket } => show(json, data_dir, socket),
        NetCommand::RingBench { data_dir, pan, lan, from, to, size, seconds } => {
            ring_bench(data_dir, &pan, &lan, &from, &to, size, seconds)
        }
        NetCommand::ClusterBench { backends, flows } => cluster_bench(backends, flows),
    }
}

/// One thread sends `size`-byte frames from `from` to `to` in batches and drains what
/// arrives in between, so the client side needs one core and the gateway the other.
fn cluster_bench(backends: usize, flows: usize) -> anyhow::Result<()> {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use netvirt::cluster::maglev::Maglev;
    use netvirt::cluster::{Cluster, ClusterSpec, Limits, Proto, ServiceSpec, Verdict};

    let names: Vec<String> = (0..backends).map(|i| format!("node-{i}")).collect();
    let mut builds = Vec::new();
    let mut table = Maglev::build::<&str>(&[]);
    for _ in 0..5 {
        let t = Instant::now();
        table = Maglev::build(&names);
        builds.push(t.elapsed().as_secs_f64() * 1e3);
    }
    builds.sort_by(f64::total_cmp);
    let n = 10_000_000u64;
    let t = Instant::now();
    let mut sum = 0usize;
    for i in 0..n {
        sum = sum.wrapping_add(table.lookup(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap_or(0));
    }
    let lookups = n as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box(sum);

    // A cluster of ten backends on one port, and SYNs from as many distinct clients.
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let service =
        ServiceSpec { proto: Proto::Tcp, port: 80, backends: names[..10.min(backends)].to_vec(), sticky: None };
    let spec = ClusterSpec { name: "bench".into(), ip: vip, services: vec![service] };
    let rss = || -> anyhow::Result<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm")?;
        let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
        Ok(pages * rustix::param::page_size() as u64)
    };
    let before = rss()?;
    let mut c = Cluster::new(spec, Limits { connections: flows, ..Limits::default() });
    let packet = |i: usize| -> Vec<u8> {
        let client = Ipv4Addr::from(0xc612_0000u32 | ((i as u32 >> 16) & 0xff) << 8 | (i as u32 & 0xff));
        let mut p = Vec::with_capacity(40);
        etherparse::PacketBuilder::ipv4(client.octets(), vip.octets(), 64)
            .tcp(1024 + (i >> 8) as u16, 80, 1, 65535)
            .syn()
            .write(&mut p, &[])
            .expect("a SYN builds");
        p
    };
    let packets: Vec<Vec<u8>> = (0..flows).map(packet).collect();
    let packets_bytes: u64 = packets.iter().map(|p| p.capacity() as u64 + 24).sum();
    let now = Instant::now();
    let t = Instant::now();
    for p in &packets {
        if !matches!(c.route(p, now), Verdict::Forward(_)) {
            anyhow::bail!("a SYN was not forwarded");
        }
    }
    let new_rate = flows as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for p in &packets {
        std::hint::black_box(c.route(p, now));
    }
    let known_rate = flows as f64 / t.elapsed().as_secs_f64();
    let held = c.flows();
    let after = rss()?;
    let per_flow = after.saturating_sub(before).saturating_sub(packets_bytes) as f64 / held.max(1) as f64;
    let out = serde_json::json!({
        "bench": "cluster-tables",
        "maglev_backends": backends,
        "maglev_table_slots": table.size(),
        "maglev_build_ms": (builds[2] * 100.0).round() / 100.0,
        "maglev_lookups_per_sec": lookups.round(),
        "new_flows_per_sec": new_rate.round(),
        "known_flow_packets_per_sec": known_rate.round(),
        "flows_held": held,
        "bytes_per_flow": per_flow.round(),
    });
    println!("{out}");
    Ok(())
}

fn ring_bench(
    data_dir: Option<PathBuf>,
    pan: &str,
    lan: &str,
    from: &str,
    to: &str,
    size: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    use netvirt::client::RingClient;
    let dir = default_data_dir(data_dir);
    let cfg = Config::load(&dir.join(CONFIG_NAME))?;
    let socket = cfg.data_dir_from(&dir).join(&cfg.net.socket);
    let cred = |node: &str| -> anyhow::Result<String> {
        cfg.pans
            .iter()
            .filter(|p| p.name == pan)
            .flat_map(|p| &p.nodes)
            .find(|n| n.name == node)
            .map(|n| n.credential.clone())
            .with_context(|| format!("no node {node:?} in PAN {pan:?}"))
    };
    let mut tx = RingClient::connect(&socket, pan, from, lan, &cred(from)?)?;
    let mut rx = RingClient::connect(&socket, pan, to, lan, &cred(to)?)?;
    let ip = |c: &RingClient| -> anyhow::Result<[u8; 4]> {
        let first = c.ips().first().context("the ring port has no IPv4 address")?;
        let addr: std::net::Ipv4Addr = first.split('/').next().unwrap_or("").parse()?;
        Ok(addr.octets())
    };
    // A UDP datagram padded to `size` bytes of frame (at least Ethernet's 60).
    let frame_len = size.max(60);
    let udp = etherparse::PacketBuilder::ethernet2(tx.mac().0, rx.mac().0).ipv4(ip(&tx)?, ip(&rx)?, 64).udp(9, 9);
    let payload = vec![0u8; frame_len.saturating_sub(udp.size(0))];
    let mut frame = Vec::with_capacity(frame_len);
    udp.write(&mut frame, &payload).context("building the benchmark frame")?;
    let mut buf = vec![0u8; 2048];
    let (mut sent, mut received) = (0u64, 0u64);
    let start = std::time::Instant::now();
    let run_for = Duration::from_secs_f64(seconds);
    while start.elapsed() < run_for {
        for _ in 0..256 {
            if !tx.send(&frame)? {
                break;
            }
            sent += 1;
        }
        tx.flush();
        while rx.recv(&mut buf)?.is_some() {
            received += 1;
        }
        rx.flush();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "frames_per_sec": received as f64 / elapsed,
        "sent": sent,
        "received": received,
        "frame_bytes": frame.len(),
        "seconds": elapsed,
    });
    println!("{out}");
    Ok(())
}

fn show(json: bool, data_dir: Option<PathBuf>, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let socket = match socket {
        Some(s) => s,
        None => {
            let dir = default_data_dir(data_dir);
            let cfg = Config::load(&dir.join(CONFIG_NAME))?;
            cfg.data_dir_from(&dir).join(&cfg.net.socket)
        }
    };
    let show = netvirt::network::query_show(&socket)
        .with_context(|| format!("asking the gateway at {} (is `pangate up` running?)", socket.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&show)?);
        return Ok(());
    }
    for lan in &show.lans {
        let c = &lan.counters;
        println!(
            "LAN {}/{}  mtu {}  arp entries {}  in {} frames {} bytes  out {} frames {} bytes",
            lan.pan, lan.lan, lan.mtu, lan.arp_entries, c.frames_in, c.bytes_in, c.frames_out, c.bytes_out
        );
        if let Some(u) = &lan.uplink {
            let vlan = u.vlan.map_or("untagged".to_string(), |v| format!("vlan {v}"));
            let mac = u.mac.map(|m| format!(" mac {m}")).unwrap_or_default();
            println!(
                "  uplink {} {vlan} {}{mac}  in {} out {}",
                u.interface, u.mode, u.counters.frames_in, u.counters.frames_out
            );
        }
        println!(
            "  {:<12} {:<5} {:<14} {:<10} {:<17} {:<20} {:>9} {:>9}  drops",
            "node", "kind", "netns", "ifname", "mac", "ips", "in", "out"
        );
        for p in &lan.ports {
            let mut drops: Vec<String> =
                p.counters.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
            if p.counters.largest_oversize > 0 {
                drops.push(format!(
                    "(packets up to {} bytes over the LAN's MTU {}: the node's MTU is above it)",
                    p.counters.largest_oversize, lan.mtu
                ));
            }
            println!(
                "  {:<12} {:<5} {:<14} {:<10} {:<17} {:<20} {:>9} {:>9}  {}{}",
                p.node,
                p.kind,
                p.netns.as_deref().unwrap_or("-"),
                p.ifname.as_deref().unwrap_or("-"),
                p.mac.to_string(),
                p.ips.join(","),
                p.counters.frames_in,
                p.counters.frames_out,
                if drops.is_empty() { "-".to_string() } else { drops.join(" ") },
                if p.attached { "" } else { "  (detached)" },
            );
        }
    }
    Ok(())
}
