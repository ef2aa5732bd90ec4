//! Who is who over iSCSI: an initiator name is a node (its `iqn`), a target name is a
//! (PAN, target number), and a node may log into a target of its own PAN whose number its
//! LUN map uses. The node registry is read at every login, so the admin's changes apply to
//! the next one.

use iscsi::login::{Authority, Secrets, Status};

use crate::registry::{NodeEntry, Registry};

/// The node registry seen as iSCSI names.
#[derive(Debug, Clone)]
pub struct Directory {
    registry: Registry,
    prefix: String,
    /// What SendTargets reports as each target's address (`host:port,1`).
    addresses: Vec<String>,
}

/// A target a node may log into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The node.
    pub node: NodeEntry,
    /// The target number.
    pub target: u16,
}

impl Directory {
    /// The directory for target names under `prefix`, served on `addresses`.
    pub fn new(registry: Registry, prefix: &str, addresses: Vec<String>) -> Directory {
        Directory { registry, prefix: prefix.to_string(), addresses }
    }

    /// The target name of (`pan`, `target`).
    pub fn target_name(&self, pan: &str, target: u16) -> String {
        format!("{}:{}.t{}", self.prefix, pan.to_ascii_lowercase(), target)
    }

    /// The node whose initiator name is `iqn`, unless it is fenced (being failed over).
    pub fn node(&self, iqn: &str) -> Option<NodeEntry> {
        let node = self.registry.nodes().into_iter().find(|n| n.iscsi.as_ref().is_some_and(|i| i.iqn == iqn))?;
        (!self.registry.is_fenced(&node.pan, &node.node)).then_some(node)
    }

    /// The (PAN, target number) a target name names, if it is one of ours.
    fn parse_target(&self, name: &str) -> Option<(String, u16)> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        let (pan, t) = rest.rsplit_once(".t")?;
        let target: u16 = t.parse().ok()?;
        (t == target.to_string()).then(|| (pan.to_string(), target))
    }

    /// What `initiator` may do with `target` (`None`: discovery).
    pub fn resolve(&self, initiator: &str, target: Option<&str>) -> Result<Admitted, Status> {
        let node = self.node(initiator).ok_or(Status::AUTHENTICATION_FAILURE)?;
        let Some(target) = target else {
            return Ok(Admitted { node, target: 0 });
        };
        let (pan, number) = self.parse_target(target).ok_or(Status::NOT_FOUND)?;
        let exists = self
            .registry
            .nodes()
            .iter()
            .any(|n| n.pan.to_ascii_lowercase() == pan && n.luns.iter().any(|&(t, ..)| t == number));
        if !exists {
            return Err(Status::NOT_FOUND);
        }
        if node.pan.to_ascii_lowercase() != pan || !node.luns.iter().any(|&(t, ..)| t == number) {
            return Err(Status::AUTHORIZATION_FAILURE);
        }
        Ok(Admitted { node, target: number })
    }

    /// The targets `node` may log into, with their addresses, for SendTargets.
    pub fn targets_for(&self, node: &NodeEntry) -> Vec<(String, Vec<String>)> {
        let mut numbers: Vec<u16> = node.luns.iter().map(|&(t, ..)| t).collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers.into_iter().map(|t| (self.target_name(&node.pan, t), self.addresses.clone())).collect()
    }
}

impl Authority for Directory {
    fn admit(&self, initiator: &str, target: Option<&str>) -> Result<Secrets, Status> {
        let admitted = self.resolve(initiator, target)?;
        let id = admitted.node.iscsi.expect("found by its iqn");
        Ok(Secrets {
            initiator: id.secret.into_bytes(),
            target: id.mutual_secret.map(String::into_bytes),
            target_chap_name: target.map_or_else(|| self.prefix.clone(), str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Access, IscsiIdentity};

    fn node(pan: &str, name: &str, iqn: &str, targets: &[u16]) -> NodeEntry {
        NodeEntry {
            pan: pan.into(),
            node: name.into(),
            credential: format!("{name}-credential-0123456789"),
            uid: None,
            luns: targets.iter().map(|&t| (t, 0, 0, Access::Rw)).collect(),
            iscsi: Some(IscsiIdentity { iqn: iqn.into(), secret: "secret-of-twelve".into(), mutual_secret: None }),
        }
    }

    #[test]
    fn logins_are_sorted_into_not_found_not_authorized_and_unknown() {
        let reg = Registry::new(vec![
            node("demo", "a", "iqn.x:a", &[0]),
            node("demo", "b", "iqn.x:b", &[1]),
            node("other", "c", "iqn.x:c", &[0]),
        ]);
        let d = Directory::new(reg, "iqn.2026-12.io.pangate", vec!["127.0.0.1:3260,1".into()]);
        let t = |pan: &str, n: u16| d.target_name(pan, n);
        assert_eq!(d.resolve("iqn.x:a", Some(&t("demo", 0))).unwrap().target, 0);
        assert_eq!(d.resolve("iqn.x:a", Some(&t("demo", 1))), Err(Status::AUTHORIZATION_FAILURE), "b's target");
        assert_eq!(d.resolve("iqn.x:a", Some(&t("other", 0))), Err(Status::AUTHORIZATION_FAILURE), "another PAN");
        assert_eq!(d.resolve("iqn.x:a", Some(&t("demo", 7))), Err(Status::NOT_FOUND));
        assert_eq!(d.resolve("iqn.x:a", Some("iqn.elsewhere:demo.t0")), Err(Status::NOT_FOUND));
        assert_eq!(d.resolve("iqn.x:a", Some(&format!("{}0", t("demo", 0)))), Err(Status::NOT_FOUND));
        assert_eq!(d.resolve("iqn.x:nobody", Some(&t("demo", 0))), Err(Status::AUTHENTICATION_FAILURE));
        let a = d.node("iqn.x:a").unwrap();
        assert_eq!(d.targets_for(&a), [(t("demo", 0), vec!["127.0.0.1:3260,1".to_string()])]);
    }
}
