//! `pangate up`: the composition root. It loads (or creates) the config, opens every image,
//! and starts the ring server, TCMU, netvirt and the web admin, each reading the nodes and
//! LUN maps the ring server keeps, then waits for SIGINT or SIGTERM and stops them in the
//! reverse order, flushing every image.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway::admin::Running;
use gateway::config::Config;
use gateway::net::LiveNetwork;
use gateway::registry::Registry;
use gateway::ring::server::{Server, ServerOptions};
use gateway::storage::{self, OpenImage};

use crate::{default_data_dir, CONFIG_NAME};

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

pub fn run(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    oneshot: bool,
    gateway_id: Option<u16>,
) -> anyhow::Result<()> {
    // Taken before anything starts: a SIGINT or SIGTERM that comes while the gateway is
    // still starting (its socket is up before netvirt and the web admin are) waits and
    // stops it cleanly once it has, instead of killing it.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let (cfg, file, dir) = load_or_create(config, data_dir)?;
    let cfg = match (gateway_id, cfg.gateway_ids().as_slice()) {
        (None, []) => cfg,
        (Some(id), _) => {
            let mine = cfg.as_gateway(id).map_err(|mut e| {
                e.file = Some(file.clone());
                e
            })?;
            gateway::nexus::set_gateway(id);
            mine
        }
        (None, ids) => anyhow::bail!(
            "{} lists redundant gateways {ids:?}: say which this one is with --gateway ID",
            file.display()
        ),
    };
    // The singletons (netvirt's TAPs, TCMU's devices) run on the first gateway alone.
    let first_gateway = cfg.gateway_ids().first().is_none_or(|&id| Some(id) == gateway_id);
    // Resolved first, so that every path printed from here on is clean (no `./`).
    std::fs::create_dir_all(&dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let file = file.canonicalize().unwrap_or(file);
    let (mut images, maps) = storage::open_all(&cfg, &dir)?;
    let socket = dir.join(&cfg.storage.socket);
    println!("pangate {} control node {}", env!("CARGO_PKG_VERSION"), cfg.serial);
    if let Some(id) = gateway_id {
        println!("  gateway:   {id} of {:?} (redundant; lease {} ms)", cfg.gateway_ids(), cfg.storage.lease_ms);
    }
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
            if let Some(iqn) = &node.iqn {
                let secret = if node.chap_secret.is_some() { "its chap_secret" } else { "the credential" };
                println!("      iSCSI initiator {iqn}, CHAP secret: {secret}");
            }
            for m in maps.iter().filter(|m| m.pan == pan.name && m.node == node.name) {
                let img = &images[m.image];
                let cap = img.driver.unit().config().capacity_bytes();
                println!(
                    "      target {} LUN {} -> {} ({} MiB, {}, {} engine)",
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
    opts.metrics = Arc::new(
        metrics::Metrics::new(scsi::opcodes::name, env!("CARGO_PKG_VERSION")).with_per_node(cfg.web.per_node_metrics),
    );
    opts.spin = Duration::from_micros(cfg.storage.spin_us);
    if cfg.storage.workers > 0 {
        opts.workers = cfg.storage.workers;
    }
    opts.limits = gateway::ring::server::quota::Limits {
        queue_pairs: cfg.storage.max_queue_pairs_per_node,
        bytes: cfg.storage.max_memory_per_node.0,
    };
    let metrics = opts.metrics.clone();
    let image_names: Vec<(String, String)> = images.iter().map(|i| (i.pan.clone(), i.name.clone())).collect();
    let shared = redundancy_plan(&cfg, &dir, &image_names, gateway_id);
    // Who may connect and what each node maps: read by the ring server, TCMU, netvirt and
    // the admin, changed by the admin.
    let registry = Registry::from_config(&cfg, &maps);
    let server = Server::start(images, registry.clone(), opts)
        .with_context(|| format!("starting the ring server on {}", socket.display()))?;
    println!("  workers:   {}", server.workers());
    if let Some(node) = first_node(&cfg, &maps, &file, &dir, &socket) {
        println!("  try:       pangate scsi {node} inquiry");
        println!("  mount:     pangate mount {node} /mnt/pangate");
    }
    let redundancy = match shared {
        Some(plan) => Some(
            gateway::redundancy::Redundancy::start(plan, server.images())
                .context("starting the lease and LUN ownership")?,
        ),
        None => None,
    };
    // TCMU reads the node registry, which the admin keeps current.
    let nodes = gateway::tcmu::live_nodes(registry.clone());
    let grow = gateway::tcmu::live_grow(registry.clone(), server.images());
    // Logs one line and carries on where the kernel has no target_core_user.
    let tcmu = match first_gateway {
        true => gateway::tcmu::TcmuService::start(socket.clone(), other_sockets(&cfg, &dir, gateway_id), nodes, grow),
        false => None,
    };
    println!(
        "  TCMU:      {}",
        match (tcmu.is_some(), first_gateway) {
            (true, _) => "serving LIO user: backstores (config pangate/<pan>/<node>/<target>/<lun>)",
            (false, true) => "off (no target_core_user in this kernel)",
            (false, false) => "on the first gateway",
        }
    );
    let iscsi = start_iscsi(&cfg, registry.clone(), server.images(), server.attacher(), metrics.event_log())?;
    let network = match first_gateway {
        true => start_network(&cfg, &dir, registry.clone())?,
        false => {
            println!("  netvirt:   on the first gateway");
            None
        }
    };
    let network = Arc::new(LiveNetwork::new(network));
    let admin = Arc::new(gateway::admin::GatewayAdmin::new(
        cfg.clone(),
        file.clone(),
        dir.clone(),
        image_names,
        Running {
            control: server.images(),
            registry,
            metrics,
            net: network.clone(),
            iscsi: iscsi.as_ref().map(|i| i.handle()),
            tcmu: tcmu.is_some(),
        },
    )?);
    // Nodes with failover = "auto" are failed over by the watcher.
    let watcher = admin.watch_nodes().context("starting the node watcher")?;
    let web = start_web(&cfg, &dir, admin)?;
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
    wait_for_signal(&mut signals);
    notify(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("draining I/O and flushing images")]);
    // The LUNs this gateway serves go to its peers first, quiesced and flushed.
    if let Some(r) = redundancy {
        r.stop();
    }
    watcher.stop();
    if let Some(w) = web {
        w.stop();
    }
    if let Some(i) = iscsi {
        i.stop();
    }
    network.stop().context("stopping netvirt")?;
    if let Some(t) = tcmu {
        t.stop();
    }
    server.shutdown().context("stopping the ring server")?;
    println!("pangate: in-flight I/O completed, all images flushed; stopped");
    Ok(())
}

/// Tells systemd (a `Type=notify` unit: `$NOTIFY_SOCKET` set) how the gateway is doing; a
/// no-op otherwise.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// The ring sockets of the redundant gateways other than `me`.
fn other_sockets(cfg: &Config, dir: &Path, me: Option<u16>) -> Vec<PathBuf> {
    cfg.gateways.iter().filter(|g| Some(g.id) != me).map(|g| dir.join(&g.socket)).collect()
}

/// What the ownership loop of redundant gateway `me` needs: every image, each with the
/// gateway that prefers it. `None` for a lone gateway.
fn redundancy_plan(
    cfg: &Config,
    dir: &Path,
    images: &[(String, String)],
    me: Option<u16>,
) -> Option<gateway::redundancy::Plan> {
    let me = me?;
    let luns = images
        .iter()
        .enumerate()
        .filter_map(|(index, (pan, name))| {
            let preferred = cfg.preferred_gateway(pan, name)?;
            Some(gateway::redundancy::SharedLun { index, pan: pan.clone(), name: name.clone(), preferred })
        })
        .collect();
    Some(gateway::redundancy::Plan {
        me,
        ids: cfg.gateway_ids(),
        lease: Duration::from_millis(cfg.storage.lease_ms),
        dir: dir.join("gateways"),
        luns,
    })
}

/// The arguments that reach the first node with a LUN, for the banner's hints: through the
/// data directory when the config is its `pangate.toml` (which the tools read), else
/// through the socket and the node's credential, which work wherever the config is.
fn first_node(cfg: &Config, maps: &[storage::Mapping], file: &Path, dir: &Path, socket: &Path) -> Option<String> {
    let m = maps.first()?;
    let target = if m.target == 0 { String::new() } else { format!(" --target {}", m.target) };
    let who = format!("--pan {} --node {}{target} --lun {}", m.pan, m.node, m.lun);
    if file == dir.join(CONFIG_NAME) {
        return Some(format!("--data-dir {} {who}", dir.display()));
    }
    let node = cfg.pans.iter().filter(|p| p.name == m.pan).flat_map(|p| &p.nodes).find(|n| n.name == m.node)?;
    Some(format!("--socket {} --credential {} {who}", socket.display(), node.credential))
}

/// Starts netvirt for the config's LANs (with none, it waits for the admin to add some).
/// Where this host cannot create TAPs (not root, no /dev/net/tun), says so and runs
/// without it.
/// The iSCSI portals of `[iscsi] listen`, if any.
fn start_iscsi(
    cfg: &Config,
    registry: Registry,
    images: Arc<dyn gateway::registry::Images>,
    attacher: gateway::ring::server::attach::Attacher,
    events: Arc<metrics::EventLog>,
) -> anyhow::Result<Option<gateway::iscsi::IscsiService>> {
    if cfg.iscsi.listen.is_empty() {
        println!("  iSCSI:     off (no [iscsi] listen)");
        return Ok(None);
    }
    let portals =
        cfg.iscsi.listen.iter().map(|a| a.parse()).collect::<Result<Vec<_>, _>>().context("[iscsi] listen")?;
    let opts = gateway::iscsi::IscsiOptions {
        portals,
        target_prefix: cfg.iscsi.target_prefix.clone(),
        max_connections: cfg.iscsi.max_connections,
        limits: iscsi::negotiate::Limits::default(),
        timeout: std::time::Duration::from_secs(cfg.iscsi.timeout_secs),
        portal_group: gateway::nexus::gateway_id(),
        // SendTargets lists every gateway's portals, each under its gateway's tag.
        peer_portals: cfg
            .gateways
            .iter()
            .filter(|g| g.id != gateway::nexus::gateway_id())
            .flat_map(|g| g.iscsi_listen.iter().map(move |a| format!("{a},{}", g.id)))
            .collect(),
        events,
    };
    // As with the web admin, a taken port is reported, not fatal: the rings and the other
    // front-ends serve on.
    let service = match gateway::iscsi::IscsiService::start(opts, registry, images, attacher) {
        Ok(s) => s,
        Err(e) => {
            println!(
                "  iSCSI:     OFF: listening on {}: {e}; set [iscsi] listen to a free address",
                cfg.iscsi.listen.join(", ")
            );
            tracing::error!(error = %e, "the iSCSI target is not running");
            return Ok(None);
        }
    };
    let portals: Vec<String> = service.portals().iter().map(ToString::to_string).collect();
    println!("  iSCSI:     {} (targets {}:<pan>.t<target>)", portals.join(", "), cfg.iscsi.target_prefix);
    Ok(Some(service))
}

fn start_network(cfg: &Config, dir: &Path, registry: Registry) -> anyhow::Result<Option<netvirt::network::Network>> {
    let plans = gateway::net::plan(cfg, dir)?;
    let authorize = gateway::net::node_authorizer(registry);
    let socket = dir.join(&cfg.net.socket);
    let workers = match cfg.net.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let opts = netvirt::network::Options {
        spin: std::time::Duration::from_micros(cfg.net.spin_us),
        workers,
        fastpath: cfg.net.fastpath,
    };
    match netvirt::network::Network::start(plans.clone(), &socket, authorize, opts) {
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
            println!("  netvirt:   {} (pangate net show --socket {})", socket.display(), socket.display());
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

fn wait_for_signal(signals: &mut signal_hook::iterator::Signals) {
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
}
