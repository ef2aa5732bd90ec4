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
}

/// Runs one `pangate net` subcommand.
pub fn run(command: NetCommand) -> anyhow::Result<()> {
    match command {
        NetCommand::Show { json, data_dir, socket } => show(json, data_dir, socket),
        NetCommand::RingBench { data_dir, pan, lan, from, to, size, seconds } => {
            ring_bench(data_dir, &pan, &lan, &from, &to, size, seconds)
        }
    }
}

/// One thread sends `size`-byte frames from `from` to `to` in batches and drains what
/// arrives in between, so the client side needs one core and the gateway the other.
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
