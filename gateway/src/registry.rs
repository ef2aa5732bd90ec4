//! What the control plane and the serving side share, and all they share: the node
//! registry (every node allowed to connect, its credential and its LUN map) and the
//! [`Images`] interface to whoever serves the images. The ring server's handshake, TCMU,
//! netvirt's ring-port authorizer and the admin read the registry; the admin's changes go
//! through it, and the ring server watches it to bring open connections up to date. The
//! ring server implements [`Images`]; the admin and TCMU grow and add images through it.
//! Neither side imports the other.

use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use thiserror::Error;

pub use crate::config::Access;
use crate::config::{Config, LunMapEntry, NodeConfig};
use crate::lun::OpenImage;
use crate::storage::Mapping;

/// A node allowed to connect, and its map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// PAN name.
    pub pan: String,
    /// Node name.
    pub node: String,
    /// Credential it must present.
    pub credential: String,
    /// The only peer uid it may connect from, when set.
    pub uid: Option<u32>,
    /// (target, LUN) → (image index, access).
    pub luns: Vec<(u16, u16, usize, Access)>,
    /// How it logs in over iSCSI, if it may.
    pub iscsi: Option<IscsiIdentity>,
}

/// A node's iSCSI initiator name and CHAP secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiIdentity {
    /// Initiator name.
    pub iqn: String,
    /// The secret its CHAP proves (`chap_secret`, else the credential).
    pub secret: String,
    /// The secret the target proves for mutual CHAP.
    pub mutual_secret: Option<String>,
}

/// Why the control plane's request was not carried out.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The gateway is shutting down.
    #[error("the gateway is stopping")]
    Stopping,
    /// The worker did not answer in time.
    #[error("the worker did not answer within {0:?}")]
    TimedOut(Duration),
    /// No image with that index is open.
    #[error("no image {0}")]
    NoImage(usize),
    /// The request cannot be done to this image (shrinking it, growing a block device).
    #[error("{0}")]
    Refused(String),
    /// The image's engine or file failed.
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> ControlError {
        match e.kind() {
            io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported => ControlError::Refused(e.to_string()),
            _ => ControlError::Io(e),
        }
    }
}

/// What the control plane asks of whoever serves the images, by the index
/// [`crate::storage::open_all`] gave them (new images take the next one).
pub trait Images: Send + Sync {
    /// (block size, blocks) of an image, as nodes see it now.
    fn capacity(&self, image: usize) -> Option<(u32, u64)>;
    /// Grows an image to `bytes`; every initiator of its LUNs gets CAPACITY DATA HAS
    /// CHANGED.
    fn grow(&self, image: usize, bytes: u64) -> Result<(), ControlError>;
    /// Adds an image under the next index.
    fn add(&self, image: OpenImage) -> Result<(), ControlError>;
    /// Flushes an image no map names any more; its index stays taken and its file stays.
    fn retire(&self, image: usize) -> Result<(), ControlError>;
    /// Closes every queue pair of the node and returns once every command they started
    /// has finished (written or failed), so another node may write after it.
    fn fence(&self, pan: &str, node: &str) -> Result<(), ControlError>;
    /// What the server knows of whether the node is alive.
    fn liveness(&self, pan: &str, node: &str) -> Liveness;
    /// Sets the ALUA access state of target port groups of an image's LUN; with
    /// `takeover`, first replaces its reservation state with the saved copy, as the
    /// gateway taking it over from another must.
    fn set_access(
        &self,
        image: usize,
        states: &[(u16, scsi::alua::AccessState)],
        takeover: bool,
    ) -> Result<(), ControlError>;
    /// Returns once every command started before the call has finished and the image is
    /// flushed: after this (and a state that refuses new I/O) the image is at rest.
    fn quiesce(&self, image: usize) -> Result<(), ControlError>;
}

/// Signs of life of a node on the storage side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Queue pairs open now (iSCSI sessions' among them).
    pub queue_pairs: u32,
    /// When it last sent a heartbeat, if it ever did since the gateway started.
    pub last_heartbeat: Option<std::time::Instant>,
}

impl NodeEntry {
    /// The entry of `node` of PAN `pan` as the config has it, each map entry's image
    /// resolved by `image_index` (map entries whose image has no index are left out).
    pub fn from_config(pan: &str, node: &NodeConfig, image_index: impl Fn(&LunMapEntry) -> Option<usize>) -> NodeEntry {
        NodeEntry {
            pan: pan.to_string(),
            node: node.name.clone(),
            credential: node.credential.clone(),
            uid: node.uid,
            luns: node.luns.iter().filter_map(|m| Some((m.target, m.lun, image_index(m)?, m.access))).collect(),
            iscsi: node.iqn.as_ref().map(|iqn| IscsiIdentity {
                iqn: iqn.clone(),
                secret: node.chap_secret.clone().unwrap_or_else(|| node.credential.clone()),
                mutual_secret: node.mutual_chap_secret.clone(),
            }),
        }
    }
}

/// Why a node was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No such node in that PAN.
    UnknownNode,
    /// The credential is not the node's.
    WrongCredential,
    /// The node is fenced: it is being failed over, and nobody may connect as it until
    /// the spare's credential is its own.
    Fenced,
}

/// A change a watcher could not carry out on the running gateway.
#[derive(Debug, Error)]
#[error("the running gateway did not take the change: {0}")]
pub struct NotApplied(pub String);

/// Told of every change: the node's new entry, or `None` when it was removed.
type Watcher = Box<dyn Fn(&str, &str, Option<&NodeEntry>) -> Result<(), NotApplied> + Send + Sync>;

#[derive(Default)]
struct Inner {
    nodes: RwLock<Vec<NodeEntry>>,
    watchers: Mutex<Vec<Watcher>>,
    /// (PAN, node) of the nodes being failed over.
    fenced: RwLock<Vec<(String, String)>>,
}

/// The registry, shared by cloning.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("nodes", &self.read().len()).finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry of `nodes`.
    pub fn new(nodes: Vec<NodeEntry>) -> Registry {
        Registry { inner: Arc::new(Inner { nodes: RwLock::new(nodes), ..Inner::default() }) }
    }

    /// The configured nodes, with their maps resolved to the image indices `maps` gives
    /// ([`crate::storage::open_all`]).
    pub fn from_config(cfg: &Config, maps: &[Mapping]) -> Registry {
        let nodes = cfg.pans.iter().flat_map(|pan| {
            pan.nodes.iter().map(move |node| {
                NodeEntry::from_config(&pan.name, node, |e| {
                    let at = |m: &&Mapping| {
                        m.pan == pan.name && m.node == node.name && (m.target, m.lun) == (e.target, e.lun)
                    };
                    maps.iter().find(at).map(|m| m.image)
                })
            })
        });
        Registry::new(nodes.collect())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<NodeEntry>> {
        self.inner.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every node, credentials included.
    pub fn nodes(&self) -> Vec<NodeEntry> {
        self.read().clone()
    }

    /// One node's entry.
    pub fn find(&self, pan: &str, node: &str) -> Option<NodeEntry> {
        self.read().iter().find(|n| n.pan == pan && n.node == node).cloned()
    }

    /// The node's entry when `credential` is its credential (compared in constant time)
    /// and the node is not fenced.
    pub fn authenticate(&self, pan: &str, node: &str, credential: &str) -> Result<NodeEntry, AuthError> {
        let entry = self.find(pan, node).ok_or(AuthError::UnknownNode)?;
        if !constant_time_eq(entry.credential.as_bytes(), credential.as_bytes()) {
            return Err(AuthError::WrongCredential);
        }
        if self.is_fenced(pan, node) {
            return Err(AuthError::Fenced);
        }
        Ok(entry)
    }

    /// Fences a node: from now until [`Registry::unfence`], nobody authenticates as it.
    /// What it has open already is the caller's to close.
    pub fn fence(&self, pan: &str, node: &str) {
        let mut fenced = self.inner.fenced.write().unwrap_or_else(|p| p.into_inner());
        if !fenced.iter().any(|(p, n)| p == pan && n == node) {
            fenced.push((pan.to_string(), node.to_string()));
        }
    }

    /// Lets the node authenticate again (with whatever credential its entry has now).
    pub fn unfence(&self, pan: &str, node: &str) {
        self.inner.fenced.write().unwrap_or_else(|p| p.into_inner()).retain(|(p, n)| !(p == pan && n == node));
    }

    /// Whether the node is fenced.
    pub fn is_fenced(&self, pan: &str, node: &str) -> bool {
        self.inner.fenced.read().unwrap_or_else(|p| p.into_inner()).iter().any(|(p, n)| p == pan && n == node)
    }

    /// Calls `watcher` after every change from now on.
    pub fn watch(
        &self,
        watcher: impl Fn(&str, &str, Option<&NodeEntry>) -> Result<(), NotApplied> + Send + Sync + 'static,
    ) {
        self.inner.watchers.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(watcher));
    }

    /// Adds a node, or replaces its credential and map; then tells the watchers.
    pub fn set(&self, entry: NodeEntry) -> Result<(), NotApplied> {
        {
            let mut nodes = self.inner.nodes.write().unwrap_or_else(|p| p.into_inner());
            match nodes.iter_mut().find(|n| n.pan == entry.pan && n.node == entry.node) {
                Some(n) => *n = entry.clone(),
                None => nodes.push(entry.clone()),
            }
        }
        self.tell(&entry.pan, &entry.node, Some(&entry))
    }

    /// Removes a node; then tells the watchers.
    pub fn remove(&self, pan: &str, node: &str) -> Result<(), NotApplied> {
        self.inner.nodes.write().unwrap_or_else(|p| p.into_inner()).retain(|n| !(n.pan == pan && n.node == node));
        self.tell(pan, node, None)
    }

    fn tell(&self, pan: &str, node: &str, entry: Option<&NodeEntry>) -> Result<(), NotApplied> {
        let watchers = self.inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.iter().try_for_each(|w| w(pan, node, entry))
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, credential: &str) -> NodeEntry {
        NodeEntry {
            pan: "p".into(),
            node: node.into(),
            credential: credential.into(),
            uid: None,
            luns: vec![],
            iscsi: None,
        }
    }

    #[test]
    fn watchers_see_every_change_after_the_table_has_it() {
        let r = Registry::new(vec![entry("a", "secret-a-0123456789")]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, view) = (seen.clone(), r.clone());
        r.watch(move |pan, node, e| {
            assert_eq!(view.find(pan, node).as_ref(), e, "the table is current when watchers hear of it");
            log.lock().unwrap().push((node.to_string(), e.is_some()));
            Ok(())
        });
        r.set(entry("b", "secret-b-0123456789")).unwrap();
        r.set(entry("a", "secret-a-changed-000")).unwrap();
        r.remove("p", "a").unwrap();
        assert_eq!(*seen.lock().unwrap(), [("b".into(), true), ("a".into(), true), ("a".into(), false)]);
        assert_eq!(r.nodes().len(), 1);
    }

    #[test]
    fn authentication_needs_the_node_and_its_exact_credential() {
        let r = Registry::new(vec![entry("a", "secret-a-0123456789")]);
        assert!(r.authenticate("p", "a", "secret-a-0123456789").is_ok());
        assert_eq!(r.authenticate("p", "a", "secret-a-012345678").unwrap_err(), AuthError::WrongCredential);
        assert_eq!(r.authenticate("p", "b", "secret-a-0123456789").unwrap_err(), AuthError::UnknownNode);
        assert_eq!(r.authenticate("q", "a", "secret-a-0123456789").unwrap_err(), AuthError::UnknownNode);
    }

    #[test]
    fn a_fenced_node_authenticates_with_no_credential_until_unfenced() {
        let r = Registry::new(vec![entry("a", "secret-a-0123456789")]);
        r.fence("p", "a");
        assert_eq!(r.authenticate("p", "a", "secret-a-0123456789").unwrap_err(), AuthError::Fenced);
        assert_eq!(r.authenticate("p", "a", "wrong").unwrap_err(), AuthError::WrongCredential);
        r.set(entry("a", "secret-spare-0123456")).unwrap();
        assert_eq!(r.authenticate("p", "a", "secret-spare-0123456").unwrap_err(), AuthError::Fenced);
        r.unfence("p", "a");
        assert!(r.authenticate("p", "a", "secret-spare-0123456").is_ok());
        assert_eq!(r.authenticate("p", "a", "secret-a-0123456789").unwrap_err(), AuthError::WrongCredential);
    }

    #[test]
    fn a_watcher_that_fails_is_reported() {
        let r = Registry::default();
        r.watch(|_, _, _| Err(NotApplied("stopping".into())));
        assert_eq!(
            r.set(entry("a", "x")).unwrap_err().to_string(),
            "the running gateway did not take the change: stopping"
        );
        assert!(r.find("p", "a").is_some(), "the registry keeps the change");
    }
}
