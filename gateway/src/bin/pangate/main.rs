//! `pangate`: the control-node gateway.

mod bench;
mod mount;
mod scsi_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gateway::config::Config;
use gateway::net::LiveNetwork;
use gateway::ring::initiator::{ConnectOptions, Initiator};
use gateway::ring::server::{Server, ServerOptions};
use gateway::storage::{self, OpenImage};
use tracing_subscriber::EnvFilter;

/// Name of the config file pangate keeps in its data directory.
const CONFIG_NAME: &str = "pangate.toml";

#[derive(Debug, Parser)]
#[command(name = "pangate", version, about = "Control-node gateway for processing area networks")]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway. Without --config, uses DATA_DIR/pangate.toml, creating the
    /// embedded default there on first start.
    Up {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (images, socket, state). Defaults to $PANGATE_DATA_DIR or ./pangate-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start, check every LUN, flush and exit instead of serving until signalled.
        #[arg(long)]
        oneshot: bool,
    },
    /// Validate a configuration file without starting anything.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Send one SCSI command to a LUN over the rings, in the spirit of sg3_utils.
    Scsi(scsi_cmd::ScsiArgs),
    /// Drive a LUN over the rings and report IOPS, bandwidth and latency as JSON.
    Bench(bench::BenchArgs),
    /// Mount a node's LUNs as files (t<target>-l<lun>) through FUSE.
    Mount(mount::MountArgs),
    /// Unmount a `pangate mount`.
    Umount(mount::UmountArgs),
    /// Inspect the virtual LANs of a running gateway.
    #[command(subcommand)]
    Net(NetCommand),
}

#[derive(Debug, Subcommand)]
enum NetCommand {
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

/// How to reach the gateway as a node.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// PAN name.
    #[arg(long)]
    pan: String,
    /// Node name.
    #[arg(long)]
    node: String,
    /// The node's credential; defaults to $PANGATE_CREDENTIAL, else the gateway's config.
    #[arg(long)]
    credential: Option<String>,
    /// Gateway socket; defaults to the one in the data directory's config.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Data directory whose pangate.toml names the socket and credentials.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl NodeArgs {
    /// Connects one queue pair.
    pub fn connect(&self, slots: u32, data_bytes: u64) -> anyhow::Result<Initiator> {
        let (socket, credential) = self.resolve()?;
        let opts = ConnectOptions { pan: self.pan.clone(), node: self.node.clone(), credential, slots, data_bytes };
        Ok(Initiator::connect_with_retry(&socket, &opts, Duration::from_secs(5))?)
    }

    pub fn resolve(&self) -> anyhow::Result<(PathBuf, String)> {
        let credential = self.credential.clone().or_else(|| std::env::var("PANGATE_CREDENTIAL").ok());
        if let (Some(socket), Some(credential)) = (&self.socket, &credential) {
            return Ok((socket.clone(), credential.clone()));
        }
        let dir = default_data_dir(self.data_dir.clone());
        let cfg = Config::load(&dir.join(CONFIG_NAME))
            .with_context(|| "give --socket and --credential, or --data-dir of a gateway whose config names them")?;
        let data_dir = cfg.data_dir_from(&dir);
        let socket = self.socket.clone().unwrap_or_else(|| data_dir.join(&cfg.storage.socket));
        let credential = match credential {
            Some(c) => c,
            None => cfg
                .pans
                .iter()
                .filter(|p| p.name == self.pan)
                .flat_map(|p| &p.nodes)
                .find(|n| n.name == self.node)
                .map(|n| n.credential.clone())
                .with_context(|| format!("no node {:?} in PAN {:?} in {}", self.node, self.pan, dir.display()))?,
        };
        Ok((socket, credential))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Up { config, data_dir, oneshot } => up(config, data_dir, oneshot),
        Command::CheckConfig { file } => check_config(&file),
        Command::Scsi(args) => scsi_cmd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => mount::umount(args),
        Command::Net(NetCommand::Show { json, data_dir, socket }) => net_show(json, data_dir, socket),
        Command::Net(NetCommand::RingBench { data_dir, pan, lan, from, to, size, seconds }) => {
            ring_bench(data_dir, &pan, &lan, &from, &to, size, seconds)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pangate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let nodes: usize = cfg.pans.iter().map(|p| p.nodes.len()).sum();
    let images: usize = cfg.pans.iter().map(|p| p.images.len()).sum();
    println!("{}: ok ({} PANs, {nodes} nodes, {images} images)", file.display(), cfg.pans.len());
    Ok(())
}

fn default_data_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("PANGATE_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("pangate-data"))
}

/// Loads the config, or creates the embedded default in the data directory. Returns the
/// config, its file, and the data directory.
fn load_or_create(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<(Config, PathBuf, PathBuf)> {
    if let Some(file) = config {
        let cfg = Config::load(&file)?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = data_dir.unwrap_or_else(|| cfg.data_dir_from(&base));
        return Ok((cfg, file, dir));
    }
    let dir = default_data_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    let file = dir.join(CONFIG_NAME);
    if file.exists() {
        let cfg = Config::load(&file)?;
        let data_dir = cfg.data_dir_from(&dir);
        return Ok((cfg, file, data_dir));
    }
    let cfg = Config::embedded_default()?;
    cfg.save(&file).with_context(|| format!("writing {}", file.display()))?;
    println!("created the embedded default configuration at {}", file.display());
    Ok((cfg, file, dir))
}

fn up(config: Option<PathBuf>, data_dir: Option<PathBuf>, oneshot: bool) -> anyhow::Result<()> {
    let (cfg, file, dir) = load_or_create(config, data_dir)?;
    let (mut images, maps) = storage::open_all(&cfg, &dir)?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let socket = dir.join(&cfg.storage.socket);
    println!("pangate {} control node {}", env!("CARGO_PKG_VERSION"), cfg.serial);
    println!("  config:    {}", file.display());
    println!("  data dir:  {}", dir.display());
    println!("  socket:    {}", socket.display());
    for img in &mut images {
        self_check(img)?;
    }
    for pan in &cfg.pans {
        println!("  PAN {}", pan.name);
        for node in &pan.nodes {
            println!("    node {} (credential {})", node.name, node.credential);
            for m in maps.iter().filter(|m| m.pan == pan.name && m.node == node.name) {
                let img = &images[m.image];
                let cap = img.driver.unit().config().capacity_bytes();
                println!(
                    "      target {} LUN {} -> {} ({} MiB, {:?}, {} engine)",
                    m.target,
                    m.lun,
                    img.path.display(),
                    cap >> 20,
                    m.access,
                    img.driver.engine_name()
                );
            }
        }
    }
    if oneshot {
        for img in &mut images {
            storage::flush(img)?;
        }
        println!("pangate: all images flushed; stopped");
        return Ok(());
    }
    let mut opts = ServerOptions::new(&socket);
    opts.spin = Duration::from_micros(cfg.storage.spin_us);
    if cfg.storage.workers > 0 {
        opts.workers = cfg.storage.workers;
    }
    let metrics = opts.metrics.clone();
    let image_names: Vec<(String, String)> = images.iter().map(|i| (i.pan.clone(), i.name.clone())).collect();
    let server = Server::start(images, storage::node_entries(&cfg, &maps), opts)
        .with_context(|| format!("starting the ring server on {}", socket.display()))?;
    println!("  workers:   {}", server.workers());
    println!("  try:       pangate scsi --data-dir {} --pan demo --node node-a --lun 0 inquiry", dir.display());
    println!("  mount:     pangate mount --data-dir {} --pan demo --node node-a /mnt/pangate", dir.display());
    // TCMU reads the ring server's node table, which the admin keeps current.
    let nodes = gateway::tcmu::live_nodes(server.control());
    let grow = gateway::tcmu::live_grow(server.control());
    // Logs one line and carries on where the kernel has no target_core_user.
    let tcmu = gateway::tcmu::TcmuService::start(socket.clone(), nodes, grow);
    println!(
        "  TCMU:      {}",
        if tcmu.is_some() {
            "serving LIO user: backstores (config pangate/<pan>/<node>/<target>/<lun>)"
        } else {
            "off (no target_core_user in this kernel)"
        }
    );
    let network = Arc::new(LiveNetwork::new(start_network(&cfg, &dir, server.control())?));
    let admin = gateway::admin::GatewayAdmin::new(
        cfg.clone(),
        file.clone(),
        dir.clone(),
        image_names,
        server.control(),
        metrics,
        network.clone(),
    )?;
    let web = start_web(&cfg, &dir, Arc::new(admin))?;
    wait_for_signal()?;
    if let Some(w) = web {
        w.stop();
    }
    network.stop().context("stopping netvirt")?;
    if let Some(t) = tcmu {
        t.stop();
    }
    server.shutdown().context("stopping the ring server")?;
    println!("pangate: in-flight I/O completed, all images flushed; stopped");
    Ok(())
}

/// Starts netvirt for the config's LANs (with none, it waits for the admin to add some).
/// Where this host cannot create TAPs (not root, no /dev/net/tun), says so and runs
/// without it.
fn start_network(
    cfg: &Config,
    dir: &Path,
    control: gateway::ring::server::LunControl,
) -> anyhow::Result<Option<netvirt::network::Network>> {
    let plans = gateway::net::plan(cfg, dir)?;
    let authorize = gateway::net::node_authorizer(control);
    let socket = dir.join(&cfg.net.socket);
    match netvirt::network::Network::start(plans.clone(), &socket, authorize) {
        Ok(n) => {
            for lan in &plans {
                println!("  LAN {}/{} (MTU {})", lan.pan, lan.name, lan.mtu);
                for p in &lan.ports {
                    let ips: Vec<String> = p.addrs.iter().map(|(ip, n)| format!("{ip}/{n}")).collect();
                    let at = match (&p.kind, &p.netns) {
                        (netvirt::config::PortKind::Ring, _) => "ring port".to_string(),
                        (_, Some(ns)) => format!("{} in netns {ns}", p.ifname),
                        (_, None) => p.ifname.clone(),
                    };
                    println!("    {} {} {} {}", p.node, p.mac, ips.join(","), at);
                }
            }
            println!("  netvirt:   {} (pangate net show --data-dir {})", socket.display(), dir.display());
            Ok(Some(n))
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound) => {
            println!("  netvirt:   off ({e}); TAP ports need root and /dev/net/tun");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("starting netvirt")),
    }
}

/// The web admin's runtime and listeners.
struct WebService {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl WebService {
    fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// The admin token: from the config, or DATA_DIR/admin-token (created 0600 on first
/// start and printed that once).
fn admin_token(cfg: &Config, dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = &cfg.web.token {
        println!("  admin token: from the config");
        return Ok(t.clone());
    }
    let path = dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => {
            println!("  admin token: in {}", path.display());
            Ok(t.trim().to_string())
        }
        Ok(_) => anyhow::bail!("{} is shorter than 16 characters; delete it to have a new one made", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = gateway::persist::random_hex(24)?;
            gateway::persist::write_atomic(&path, format!("{t}\n").as_bytes(), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("  admin token: {t} (saved in {}; printed only this once)", path.display());
            Ok(t)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

/// Starts the web admin (and the separate metrics listener, if configured) on a small
/// tokio runtime of its own.
fn start_web(cfg: &Config, dir: &Path, admin: Arc<dyn web::Admin>) -> anyhow::Result<Option<WebService>> {
    if !cfg.web.enabled {
        println!("  web admin: off ([web] enabled = false)");
        return Ok(None);
    }
    let token = admin_token(cfg, dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pangate-web")
        .enable_all()
        .build()
        .context("starting the web runtime")?;
    let bind = |addr: &str| {
        rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("binding the web admin to {addr}"))
    };
    // The data path matters more than the admin: a taken port is reported, not fatal.
    let listener = match bind(&cfg.web.listen) {
        Ok(l) => l,
        Err(e) => {
            println!("  web admin: OFF: {e:#}; set [web] listen to a free address");
            tracing::error!(error = %format!("{e:#}"), "the web admin is not running");
            return Ok(None);
        }
    };
    let addr = listener.local_addr()?;
    let metrics_listener = cfg.web.metrics_listen.as_deref().map(bind).transpose()?;
    println!("  web admin: http://{addr}/  (API /api/v1, metrics /metrics)");
    if let Some(m) = &metrics_listener {
        println!("  metrics:   http://{}/metrics", m.local_addr()?);
    }
    let state = web::WebState::new(admin, token);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new().name("pangate-web".into()).spawn(move || {
        rt.block_on(async move {
            let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Some(m) = metrics_listener {
                let (state, rx) = (state.clone(), stopped.clone());
                tokio::spawn(async move {
                    if let Err(e) = web::serve_metrics(m, state, until(rx)).await {
                        tracing::error!(error = %e, "the metrics listener failed");
                    }
                });
            }
            if let Err(e) = web::serve(listener, state, until(stopped)).await {
                tracing::error!(error = %e, "the web admin failed");
            }
        });
    })?;
    Ok(Some(WebService { stop, thread }))
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
    let mut frame = vec![0u8; size.max(60)];
    frame[0..6].copy_from_slice(&rx.mac().0);
    frame[6..12].copy_from_slice(&tx.mac().0);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (frame.len() - 14) as u16;
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
    frame[22] = 64;
    frame[23] = 17;
    frame[26..30].copy_from_slice(&ip(&tx)?);
    frame[30..34].copy_from_slice(&ip(&rx)?);
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

fn net_show(json: bool, data_dir: Option<PathBuf>, socket: Option<PathBuf>) -> anyhow::Result<()> {
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
            let drops: Vec<String> =
                p.counters.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
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

/// INQUIRY and READ CAPACITY (16) on an image, so a broken image fails at start-up.
fn self_check(img: &mut OpenImage) -> anyhow::Result<()> {
    let d = &mut img.driver;
    // The gateway's own nexus (id 0) consumes its power-on unit attention.
    d.run(0, &[0], &[0, 0, 0, 0, 0, 0], &[])?;
    let inq = d.run(0, &[0], &scsi::build::inquiry(None, 96), &[])?;
    let rc = d.run(0, &[0], &scsi::build::read_capacity_16(), &[])?;
    if inq.completion.status != scsi::Status::Good || rc.completion.status != scsi::Status::Good {
        anyhow::bail!("image {} failed its start-up check: sense {:02x?}", img.path.display(), rc.completion.sense);
    }
    Ok(())
}

fn wait_for_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    Ok(())
}
