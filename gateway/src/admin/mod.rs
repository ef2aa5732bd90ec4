//! The gateway side of the web admin. A change is decided by [`plan::plan`] (pure: the next
//! config and the effects on the running gateway) and carried out by [`GatewayAdmin`]'s
//! `apply` in one order for every change: prepare (undoable steps: open an image, grow it,
//! start or stop a LAN, move an address), write the config atomically, commit (the ring
//! server's images, the node registry, metrics). A failed prepare step or config write
//! undoes what was prepared, in reverse.

mod clusters;
mod failover;
mod watcher;

pub use self::watcher::NodeWatcher;
pub mod plan;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use metrics::{LunKey, LunSnapshot, Metrics};
use netvirt::network::NetShow;
use web::model::{
    BackendHealth, ClusterView, LanView, LunCounters, LunView, MapView, NodeView, Overview, PanView, PortView,
};
use web::{AdminError, Change};

use self::plan::{invalid, Effect, Phase, Plan, PortRef};
use crate::config::{Config, ImageConfig, Size};
use crate::engine::EngineKind;
use crate::net::NetControl;
use crate::placement::{self, Placement};
use crate::registry::{ControlError, Images, NodeEntry, NotApplied, Registry};
use crate::storage::{self, OpenImage};

pub use self::plan::MAX_LUN_BYTES;

struct State {
    cfg: Config,
    /// The ring server's image list: (PAN, image name), or None once deleted.
    images: Vec<Option<(String, String)>>,
}

/// The running gateway as the web admin sees it.
pub struct GatewayAdmin {
    state: Mutex<State>,
    control: Arc<dyn Images>,
    registry: Registry,
    metrics: Arc<Metrics>,
    net: Arc<dyn NetControl>,
    iscsi: Option<crate::iscsi::IscsiHandle>,
    tcmu: bool,
    started: std::time::Instant,
    file: PathBuf,
    data_dir: PathBuf,
    kind: EngineKind,
}

impl std::fmt::Debug for GatewayAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAdmin").field("file", &self.file).finish_non_exhaustive()
    }
}

fn add(c: &mut LunCounters, s: &LunSnapshot) {
    c.commands += s.commands();
    c.reads += s.reads;
    c.writes += s.writes;
    c.bytes_read += s.bytes_read;
    c.bytes_written += s.bytes_written;
    c.busy_seconds += s.busy_seconds;
    if c.latency_buckets.len() < s.latency_buckets.len() {
        c.latency_buckets.resize(s.latency_buckets.len(), 0);
    }
    for (sum, n) in c.latency_buckets.iter_mut().zip(&s.latency_buckets) {
        *sum += n;
    }
    c.latency_count += s.latency_count;
}

/// The running gateway's parts the admin changes and reads.
pub struct Running {
    /// The images, as the ring server serves them.
    pub control: Arc<dyn Images>,
    /// The nodes.
    pub registry: Registry,
    /// Every counter.
    pub metrics: Arc<Metrics>,
    /// netvirt.
    pub net: Arc<dyn NetControl>,
    /// The iSCSI target, when it runs.
    pub iscsi: Option<crate::iscsi::IscsiHandle>,
    /// Whether the TCMU front-end serves LIO backstores.
    pub tcmu: bool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl GatewayAdmin {
    /// Admin over a started gateway: `cfg` as loaded from `file`, with `images` the ring
    /// server's image list in order (as [`storage::open_all`] opened them). The LAN and
    /// port metrics are read from netvirt from now on.
    pub fn new(
        cfg: Config,
        file: PathBuf,
        data_dir: PathBuf,
        images: Vec<(String, String)>,
        running: Running,
    ) -> anyhow::Result<GatewayAdmin> {
        let Running { control, registry, metrics, net, iscsi, tcmu } = running;
        let kind = EngineKind::resolve(cfg.engine).map_err(anyhow::Error::msg)?;
        let lans = net.clone();
        metrics.set_lan_sampler(Box::new(move || lans.show().map(|s| lan_samples(&s)).unwrap_or_default()));
        if let Some(i) = iscsi.clone() {
            metrics.set_iscsi_sampler(Box::new(move || i.sample()));
        }
        Ok(GatewayAdmin {
            state: Mutex::new(State { cfg, images: images.into_iter().map(Some).collect() }),
            control,
            registry,
            metrics,
            net,
            iscsi,
            tcmu,
            started: std::time::Instant::now(),
            file,
            data_dir,
            kind,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl GatewayAdmin {
    /// Decides a change and carries it out; `trigger` says who asked for a failover
    /// (`manual`: the API or a form, `auto`: the node watcher), for its counter.
    fn change(&self, change: Change, trigger: &'static str) -> Result<(), AdminError> {
        let mut st = self.lock();
        let what = change.summary();
        let failover = match &change {
            Change::Failover { pan, .. } => Some(pan.clone()),
            _ => None,
        };
        let result = {
            let st = &mut *st;
            let capacity = |pan: &str, image: &str| {
                let (bs, blocks) = self.control.capacity(st.image_index(pan, image)?)?;
                Some(u64::from(bs) * blocks)
            };
            plan::plan(&st.cfg, change, capacity).and_then(|p| {
                let done = self.apply_plan(st, p);
                if let Some(pan) = &failover {
                    self.metrics.failover(pan, trigger, if done.is_ok() { "done" } else { "failed" });
                }
                done
            })
        };
        let events = self.metrics.events();
        match &result {
            Ok(()) => {
                tracing::info!(change = %what, "admin change applied");
                events.record(metrics::Level::Info, "change", "config", what);
            }
            Err(e) => {
                tracing::info!(change = %what, error = %e, "admin change refused");
                events.record(metrics::Level::Warning, "change_refused", "config", format!("{what}: {e}"));
            }
        }
        result
    }
}

impl State {
    fn image_index(&self, pan: &str, image: &str) -> Option<usize> {
        self.images.iter().position(|i| matches!(i, Some((p, n)) if p == pan && n == image))
    }
}

/// What a prepare step did, so it can be undone.
enum Undo {
    /// A new image was opened: close it, and remove its file if it was created.
    Opened { open: Box<OpenImage>, created: bool },
    /// A LAN was started: stop it.
    Started { pan: String, lan: String },
    /// A LAN was stopped: start it again as the current config has it.
    Stopped { pan: String, lan: String },
    /// An address was moved: move it back.
    Moved { pan: String, lan: String, ip: std::net::Ipv4Addr, from: String },
    /// A cluster was set or removed: set it back as it was (`None`: it was not there).
    Cluster { pan: String, lan: String, name: String, was: Option<Box<netvirt::network::ClusterPlan>> },
    /// A node was fenced: plug its ports in again as the current config has them, and
    /// let it connect.
    Fenced { pan: String, node: String },
    /// A port was unplugged: plug it in again as the current config has it.
    Unplugged(PortRef),
    /// A port was plugged in: unplug it.
    Plugged(PortRef),
    /// Done for good (growing): nothing to undo.
    Kept,
}

impl GatewayAdmin {
    /// Validates `next` and writes it atomically.
    fn persist(&self, next: &Config) -> Result<(), AdminError> {
        next.validate().map_err(invalid)?;
        next.save(&self.file).map_err(|e| AdminError::Failed(format!("writing {}: {e}", self.file.display())))
    }

    /// Carries out a plan: prepare, write the config, commit ([`plan::Phase`]).
    fn apply_plan(&self, st: &mut State, plan: Plan) -> Result<(), AdminError> {
        let Plan { mut next, effects } = plan;
        let mut undo = Vec::new();
        for e in effects.iter().filter(|e| e.phase() == Phase::Prepare) {
            match self.prepare(st, &mut next, e) {
                Ok(u) => undo.push(u),
                Err(err) => {
                    self.undo(st, undo);
                    return Err(err);
                }
            }
        }
        if next != st.cfg {
            if let Err(err) = self.persist(&next) {
                self.undo(st, undo);
                return Err(err);
            }
        }
        st.cfg = next;
        let mut opened = undo.into_iter().filter_map(|u| match u {
            Undo::Opened { open, .. } => Some(open),
            _ => None,
        });
        for e in effects.iter().filter(|e| e.phase() == Phase::Commit) {
            self.commit(st, e, &mut opened)?;
        }
        Ok(())
    }

    fn prepare(&self, st: &State, next: &mut Config, effect: &Effect) -> Result<Undo, AdminError> {
        match effect {
            Effect::OpenImage { pan, image, create } => {
                let mut open = self.open_image(st, next, pan, image, *create)?;
                let capacity = open.driver.unit().config().capacity_bytes();
                if capacity < u64::from(image.block_size) {
                    return Err(invalid(format!(
                        "{} is smaller than one {}-byte block",
                        image.path.display(),
                        image.block_size
                    )));
                }
                // The config records the size the image has (an existing file keeps its own).
                if let Some(img) = next
                    .pans
                    .iter_mut()
                    .find(|p| &p.name == pan)
                    .and_then(|p| p.images.iter_mut().find(|i| i.name == image.name))
                {
                    img.size = Size(capacity);
                }
                // The gateway's own nexus consumes the power-on unit attention, as at start-up.
                let _ = open.driver.run(0, &[0], &[0, 0, 0, 0, 0, 0], &[]);
                Ok(Undo::Opened { open: Box::new(open), created: *create })
            }
            Effect::GrowImage { pan, image, bytes } => {
                let i = st
                    .image_index(pan, image)
                    .ok_or_else(|| AdminError::NotFound(format!("LUN {image:?} is not open")))?;
                self.control.grow(i, *bytes).map_err(control_error)?;
                Ok(Undo::Kept)
            }
            Effect::StartLan { pan, lan } => {
                let plan = self.lan_plan(next, pan, lan)?;
                let live = self.net.add_lan(plan).map_err(io_error)?;
                if !live {
                    tracing::info!(pan, lan, "netvirt is off on this host; the LAN starts with it");
                }
                Ok(if live { Undo::Started { pan: pan.clone(), lan: lan.clone() } } else { Undo::Kept })
            }
            Effect::StopLan { pan, lan } => match self.net.remove_lan(pan, lan) {
                Ok(true) => Ok(Undo::Stopped { pan: pan.clone(), lan: lan.clone() }),
                Ok(false) => Ok(Undo::Kept),
                // Configured but not running (it failed to start): only the config changes.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Undo::Kept),
                Err(e) => Err(io_error(e)),
            },
            Effect::MoveIp { pan, lan, ip, from, to } => {
                let live = self.net.move_ip(pan, lan, *ip, to).map_err(io_error)?;
                Ok(if live {
                    Undo::Moved { pan: pan.clone(), lan: lan.clone(), ip: *ip, from: from.clone() }
                } else {
                    Undo::Kept
                })
            }
            Effect::SetCluster { pan, lan, cluster } => {
                let was = self.cluster_plan(&st.cfg, pan, lan, cluster).ok().map(Box::new);
                let plan = self.cluster_plan(next, pan, lan, cluster)?;
                let live = self.net.set_cluster(pan, lan, plan).map_err(io_error)?;
                Ok(if live {
                    Undo::Cluster { pan: pan.clone(), lan: lan.clone(), name: cluster.clone(), was }
                } else {
                    Undo::Kept
                })
            }
            Effect::RemoveCluster { pan, lan, cluster } => {
                let was = self.cluster_plan(&st.cfg, pan, lan, cluster).ok().map(Box::new);
                match self.net.remove_cluster(pan, lan, cluster) {
                    Ok(true) => Ok(Undo::Cluster { pan: pan.clone(), lan: lan.clone(), name: cluster.clone(), was }),
                    Ok(false) => Ok(Undo::Kept),
                    // The LAN is configured but not running: only the config changes.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Undo::Kept),
                    Err(e) => Err(io_error(e)),
                }
            }
            Effect::Fence { pan, node } => {
                self.registry.fence(pan, node);
                let undo = Undo::Fenced { pan: pan.clone(), node: node.clone() };
                let fenced =
                    self.control.fence(pan, node).map_err(control_error).and_then(|()| {
                        lans_of(&st.cfg, pan, node).try_for_each(|lan| self.unplug(pan, lan, node, false))
                    });
                match fenced {
                    Ok(()) => Ok(undo),
                    Err(e) => {
                        self.undo(st, vec![undo]);
                        Err(e)
                    }
                }
            }
            Effect::Retire(port) => {
                self.unplug(&port.pan, &port.lan, &port.node, true)?;
                Ok(Undo::Unplugged(port.clone()))
            }
            Effect::Plug(port) => {
                self.plug(next, port)?;
                Ok(Undo::Plugged(port.clone()))
            }
            other => unreachable!("{other:?} is not a prepare effect"),
        }
    }

    /// Undoes prepared steps, last first; what cannot be undone is logged.
    fn undo(&self, st: &State, done: Vec<Undo>) {
        for u in done.into_iter().rev() {
            match u {
                Undo::Opened { open, created } => {
                    let path = open.path.clone();
                    drop(open);
                    if created {
                        if let Err(e) = std::fs::remove_file(&path) {
                            tracing::warn!(path = %path.display(), error = %e, "could not remove a new image again");
                        }
                    }
                }
                Undo::Started { pan, lan } => {
                    if let Err(e) = self.net.remove_lan(&pan, &lan) {
                        tracing::warn!(pan, lan, error = %e, "could not stop a LAN again");
                    }
                }
                Undo::Stopped { pan, lan } => {
                    let again = self.lan_plan(&st.cfg, &pan, &lan).and_then(|p| self.net.add_lan(p).map_err(io_error));
                    if let Err(e) = again {
                        tracing::warn!(pan, lan, error = %e, "could not start a LAN again");
                    }
                }
                Undo::Moved { pan, lan, ip, from } => {
                    if let Err(e) = self.net.move_ip(&pan, &lan, ip, &from) {
                        tracing::warn!(pan, lan, %ip, error = %e, "could not move an address back");
                    }
                }
                Undo::Cluster { pan, lan, name, was } => {
                    let back = match was {
                        Some(plan) => self.net.set_cluster(&pan, &lan, *plan),
                        None => self.net.remove_cluster(&pan, &lan, &name),
                    };
                    if let Err(e) = back {
                        tracing::warn!(pan, lan, cluster = name, error = %e, "could not set a cluster back");
                    }
                }
                Undo::Fenced { pan, node } => {
                    for lan in lans_of(&st.cfg, &pan, &node) {
                        let port = PortRef { pan: pan.clone(), lan: lan.to_string(), node: node.clone() };
                        if let Err(e) = self.plug(&st.cfg, &port) {
                            tracing::warn!(pan, lan, node, error = %e, "could not plug a fenced node's port in again");
                        }
                    }
                    self.registry.unfence(&pan, &node);
                }
                Undo::Unplugged(port) => {
                    if let Err(e) = self.plug(&st.cfg, &port) {
                        tracing::warn!(?port, error = %e, "could not plug a port in again");
                    }
                }
                Undo::Plugged(port) => {
                    if let Err(e) = self.unplug(&port.pan, &port.lan, &port.node, false) {
                        tracing::warn!(?port, error = %e, "could not unplug a port again");
                    }
                }
                Undo::Kept => {}
            }
        }
    }

    /// Unplugs a port ([`NetControl::unplug`]); a LAN that is not running has nothing to
    /// unplug.
    fn unplug(&self, pan: &str, lan: &str, node: &str, retire: bool) -> Result<(), AdminError> {
        match self.net.unplug(pan, lan, node, retire) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(e)),
            _ => Ok(()),
        }
    }

    /// Plugs a port in where `cfg` places it ([`NetControl::plug`]); a LAN that is not
    /// running starts with the port where the config has it.
    fn plug(&self, cfg: &Config, port: &PortRef) -> Result<(), AdminError> {
        let lan = cfg.pans.iter().filter(|p| p.name == port.pan).flat_map(|p| &p.lans).find(|l| l.name == port.lan);
        let Some((lan, p)) = lan.and_then(|l| Some((l, l.ports.iter().find(|p| p.node == port.node)?))) else {
            return Ok(());
        };
        let ifname = p.ifname.clone().unwrap_or_else(|| netvirt::config::default_ifname(&lan.name, &p.node));
        match self.net.plug(&port.pan, &port.lan, &port.node, p.netns.clone(), ifname) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(e)),
            _ => Ok(()),
        }
    }

    /// Brings the running gateway's tables in line with the config just written.
    fn commit(
        &self,
        st: &mut State,
        effect: &Effect,
        opened: &mut impl Iterator<Item = Box<OpenImage>>,
    ) -> Result<(), AdminError> {
        match effect {
            Effect::AddImage { pan, image } => {
                let open = opened.next().ok_or_else(|| AdminError::Failed("the new image was not opened".into()))?;
                self.control.add(*open).map_err(control_error)?;
                st.images.push(Some((pan.clone(), image.clone())));
            }
            Effect::RetireImage { pan, image } => {
                if let Some(i) = st.image_index(pan, image) {
                    st.images[i] = None;
                    self.control.retire(i).map_err(control_error)?;
                }
                self.metrics.remove_lun(&LunKey::of_lun(pan, image));
                // A LUN created later under the same name must not inherit its reservations.
                let saved = crate::reservations::file_for(&self.data_dir, pan, image);
                if let Err(e) = std::fs::remove_file(&saved) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %saved.display(), error = %e, "the deleted LUN's reservations file stays");
                    }
                }
            }
            Effect::SetNode { pan, node } => {
                let n = st.cfg.pans.iter().filter(|p| &p.name == pan).flat_map(|p| &p.nodes).find(|n| &n.name == node);
                let n = n.ok_or_else(|| AdminError::Failed("node vanished".into()))?;
                let entry = NodeEntry::from_config(pan, n, |m| st.image_index(pan, &m.image));
                self.registry.set(entry).map_err(not_applied)?;
            }
            Effect::RemoveNode { pan, node } => self.registry.remove(pan, node).map_err(not_applied)?,
            Effect::Unfence { pan, node } => self.registry.unfence(pan, node),
            Effect::ForgetLun { pan, image, node, target, lun } => {
                self.metrics.remove_lun(&LunKey::of_node(pan, image, node, *target, *lun))
            }
            other => unreachable!("{other:?} is not a commit effect"),
        }
        Ok(())
    }

    /// Opens a new LUN's image: a file to create under the data directory, or an existing
    /// file under an image root, or a listed block device ([`crate::placement`]), that no
    /// image already uses.
    fn open_image(
        &self,
        st: &State,
        next: &Config,
        pan: &str,
        image: &ImageConfig,
        create: bool,
    ) -> Result<OpenImage, AdminError> {
        let at = storage::image_path(image, &self.data_dir);
        if create && at.exists() {
            return Err(AdminError::Conflict(format!(
                "a file already exists at {}; give it as path to use it",
                at.display()
            )));
        }
        let rules = Placement::new(&st.cfg, &self.data_dir);
        // Placed before anything else is learnt of the path: the API says nothing about
        // host files outside the image roots, not even whether they exist.
        let placed = rules.check(image).map_err(|e| invalid(format!("{e}; {}", placement::fix_for(&e))))?;
        if !create && matches!(placed.id, placement::FileId::Missing(_)) {
            return Err(AdminError::NotFound(format!("no file at {}", at.display())));
        }
        for (p, other) in st.cfg.pans.iter().flat_map(|p| p.images.iter().map(move |i| (p, i))) {
            if rules.check(other).is_ok_and(|o| o.id == placed.id) {
                return Err(AdminError::Conflict(format!(
                    "{} is already image {:?} of PAN {:?}",
                    at.display(),
                    other.name,
                    p.name
                )));
            }
        }
        storage::open_image(next, self.kind, pan, image, &self.data_dir).map_err(|e| {
            if create {
                let _ = std::fs::remove_file(&at);
            }
            invalid(format!("{e:#}"))
        })
    }

    /// netvirt's plan for cluster `name` of a LAN of `cfg`.
    fn cluster_plan(
        &self,
        cfg: &Config,
        pan: &str,
        lan: &str,
        name: &str,
    ) -> Result<netvirt::network::ClusterPlan, AdminError> {
        self.lan_plan(cfg, pan, lan)?
            .clusters
            .into_iter()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("no cluster {name:?} on LAN {lan:?}")))
    }

    /// netvirt's plan for one LAN of `cfg` (assigning its ports' MACs).
    fn lan_plan(&self, cfg: &Config, pan: &str, lan: &str) -> Result<netvirt::network::LanPlan, AdminError> {
        crate::net::plan(cfg, &self.data_dir)
            .map_err(|e| AdminError::Failed(format!("planning the LAN: {e}")))?
            .into_iter()
            .find(|p| p.pan == pan && p.name == lan)
            .ok_or_else(|| AdminError::Failed(format!("LAN {lan:?} is missing from the plan")))
    }
}

/// The LANs where `node` of `pan` has a port.
fn lans_of<'a>(cfg: &'a Config, pan: &'a str, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let lans = cfg.pans.iter().filter(move |p| p.name == pan).flat_map(|p| &p.lans);
    lans.filter(move |l| l.ports.iter().any(|p| p.node == node)).map(|l| l.name.as_str())
}

/// A failure of netvirt or the host as the admin reports it: name clashes are conflicts,
/// bad names invalid, missing things not found, the rest the host's failure.
fn io_error(e: std::io::Error) -> AdminError {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::ResourceBusy => AdminError::Conflict(e.to_string()),
        std::io::ErrorKind::InvalidInput => invalid(e),
        std::io::ErrorKind::NotFound => AdminError::NotFound(e.to_string()),
        _ => AdminError::Failed(e.to_string()),
    }
}

/// A request the ring server did not carry out, as the admin reports it.
fn control_error(e: ControlError) -> AdminError {
    match e {
        ControlError::Refused(why) => AdminError::Invalid(why),
        ControlError::NoImage(_) => AdminError::NotFound(e.to_string()),
        ControlError::Stopping | ControlError::TimedOut(_) | ControlError::Io(_) => AdminError::Failed(e.to_string()),
    }
}

fn not_applied(e: NotApplied) -> AdminError {
    AdminError::Failed(e.to_string())
}

impl web::Admin for GatewayAdmin {
    fn overview(&self) -> Overview {
        let st = self.lock();
        // Per LUN, summed over its per-node sets when metrics are kept per node.
        let mut luns: HashMap<(String, String), LunCounters> = HashMap::new();
        // And per node, when they are kept per node.
        let mut nodes: HashMap<(String, String), LunCounters> = HashMap::new();
        for (k, s) in self.metrics.luns() {
            if let Some(n) = &k.node {
                add(nodes.entry((k.pan.clone(), n.node.clone())).or_default(), &s);
            }
            add(luns.entry((k.pan, k.lun)).or_default(), &s);
        }
        let per_node = self.metrics.per_node();
        let rings: HashMap<(String, String), metrics::RingSnapshot> = self.metrics.rings().into_iter().collect();
        let net = self.net.show();
        let mut out = Overview {
            serial: st.cfg.serial.clone(),
            version: self.metrics.version().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            netvirt: net.is_some(),
            iscsi: self.iscsi.is_some(),
            tcmu: self.tcmu,
            fuse_mounts: self.metrics.fuse_mounts() as u64,
            ..Overview::default()
        };
        for pan in &st.cfg.pans {
            let mut view = PanView { name: pan.name.clone(), ..Default::default() };
            for n in &pan.nodes {
                let ring = rings.get(&(pan.name.clone(), n.name.clone())).cloned().unwrap_or_default();
                view.nodes.push(NodeView {
                    name: n.name.clone(),
                    uid: n.uid,
                    maps: n
                        .luns
                        .iter()
                        .map(|m| MapView { target: m.target, lun: m.lun, image: m.image.clone(), access: m.access })
                        .collect(),
                    ring_connections: ring.connections,
                    outstanding_commands: ring.outstanding,
                    protocol_errors: ring.protocol_errors.iter().map(|e| e.1).sum(),
                    counters: per_node
                        .then(|| nodes.get(&(pan.name.clone(), n.name.clone())).cloned().unwrap_or_default()),
                    spare: n.spare,
                    failover: if n.failover == crate::config::FailoverMode::Auto { "auto" } else { "manual" }.into(),
                });
            }
            for img in &pan.images {
                let (block_size, blocks) = st
                    .image_index(&pan.name, &img.name)
                    .and_then(|i| self.control.capacity(i))
                    .unwrap_or((img.block_size, img.size.0 / u64::from(img.block_size)));
                view.luns.push(LunView {
                    name: img.name.clone(),
                    path: storage::image_path(img, &self.data_dir).display().to_string(),
                    size_bytes: u64::from(block_size) * blocks,
                    block_size,
                    counters: luns.get(&(pan.name.clone(), img.name.clone())).cloned().unwrap_or_default(),
                });
            }
            for lan in &pan.lans {
                let live = net.as_ref().and_then(|n| n.lans.iter().find(|l| l.pan == pan.name && l.lan == lan.name));
                view.lans.push(LanView {
                    name: lan.name.clone(),
                    mtu: lan.mtu,
                    arp_entries: live.map_or(0, |l| l.arp_entries as u64),
                    active: live.is_some(),
                    ports: lan
                        .ports
                        .iter()
                        .map(|p| {
                            let lp = live.and_then(|l| l.ports.iter().find(|x| x.node == p.node));
                            PortView {
                                node: p.node.clone(),
                                kind: match p.kind {
                                    netvirt::config::PortKind::Tap => "tap".into(),
                                    netvirt::config::PortKind::Ring => "ring".into(),
                                },
                                netns: p.netns.clone(),
                                mac: lp.map(|x| x.mac.to_string()).or_else(|| p.mac.map(|m| m.to_string())),
                                ips: p.ips.clone(),
                                frames_in: lp.map_or(0, |x| x.counters.frames_in),
                                frames_out: lp.map_or(0, |x| x.counters.frames_out),
                                bytes_in: lp.map_or(0, |x| x.counters.bytes_in),
                                bytes_out: lp.map_or(0, |x| x.counters.bytes_out),
                                drops: lp.map_or(0, |x| x.counters.drops.values().sum()),
                                oversize_drops: lp.map_or(0, |x| x.counters.drops.get("mtu").copied().unwrap_or(0)),
                                largest_oversize: lp.map_or(0, |x| x.counters.largest_oversize),
                            }
                        })
                        .collect(),
                    clusters: lan
                        .clusters
                        .iter()
                        .map(|c| {
                            let lc = live.and_then(|l| l.clusters.iter().find(|x| x.name == c.name));
                            ClusterView {
                                cluster: clusters::body_of(c),
                                mac: lc.map(|x| x.mac.to_string()),
                                flows: lc.map_or(0, |x| x.flows as u64),
                                new_flows: lc.map_or(0, |x| x.new_flows),
                                drops: lc.map_or(0, |x| x.drops.values().sum()),
                                health: lc
                                    .map(|x| {
                                        x.backends
                                            .iter()
                                            .map(|b| BackendHealth {
                                                node: b.node.clone(),
                                                proto: b.proto.clone(),
                                                port: b.port,
                                                health: b.health.clone(),
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default(),
                            }
                        })
                        .collect(),
                });
            }
            out.pans.push(view);
        }
        out.iscsi_sessions = self.iscsi.as_ref().map(crate::iscsi::IscsiHandle::sessions).unwrap_or_default();
        out
    }

    fn apply(&self, change: Change) -> Result<(), AdminError> {
        self.change(change, "manual")
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn events(&self, after: u64, limit: usize) -> Vec<web::model::EventView> {
        self.metrics.events().since(after, limit).into_iter().map(Into::into).collect()
    }

    fn drop_iscsi_session(&self, id: u64) -> Result<(), AdminError> {
        match &self.iscsi {
            Some(i) if i.drop_session(id) => Ok(()),
            _ => Err(AdminError::NotFound(format!("no iSCSI session {id}"))),
        }
    }
}

/// LAN samples for the metrics renderer, from netvirt's show.
pub fn lan_samples(show: &NetShow) -> Vec<metrics::LanSample> {
    use metrics::{ClusterSample, LanSample, PortSample, TrafficSample};
    let t = |c: &netvirt::counters::TrafficSnapshot| TrafficSample {
        frames_in: c.frames_in,
        bytes_in: c.bytes_in,
        frames_out: c.frames_out,
        bytes_out: c.bytes_out,
        drops: c.drops.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    };
    show.lans
        .iter()
        .map(|l| LanSample {
            pan: l.pan.clone(),
            lan: l.lan.clone(),
            arp_entries: l.arp_entries as u64,
            traffic: t(&l.counters),
            ports: l
                .ports
                .iter()
                .map(|p| PortSample { port: p.node.clone(), traffic: t(&p.counters) })
                .chain(l.uplink.iter().map(|u| PortSample { port: "uplink".into(), traffic: t(&u.counters) }))
                .collect(),
            clusters: l
                .clusters
                .iter()
                .map(|c| ClusterSample {
                    cluster: c.name.clone(),
                    flows: c.flows as u64,
                    evicted: c.evicted,
                    forwarded: c.forwarded,
                    new_flows: c.new_flows,
                    echo_replies: c.echo_replies,
                    drops: c.drops.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    backends: c
                        .backends
                        .iter()
                        .map(|b| (b.proto.clone(), b.port, b.node.clone(), b.health.clone()))
                        .collect(),
                })
                .collect(),
        })
        .collect()
}
