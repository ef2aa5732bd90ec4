//! The admin's decision about a failover, as a value (see [`super::plan`]): node `a`
//! keeps its name, and with it its personality (its ports' MACs and addresses, its
//! cluster memberships, its LUN map, the (PAN, node) its queue pairs, TCMU devices and
//! metrics are known by); the spare gives it what belongs to the machine it runs on (its
//! credential, uid and iSCSI login, and, per LAN, the namespace and interface name of its
//! TAP) and leaves the free pool. After it, the spare connects as `a` with its own
//! credential, and `a`'s old credential is refused.

use netvirt::config::{default_ifname, PortKind};
use web::AdminError;

use super::plan::{pan_mut, Effect, Plan, PortRef};
use crate::config::{Config, PanConfig};

/// Fails `node` of `pan` over to spare `to`, or to the PAN's first free spare.
pub(super) fn plan_failover(mut next: Config, pan: &str, node: &str, to: Option<String>) -> Result<Plan, AdminError> {
    let spare = pick_spare(&next, pan, node, to)?;
    let p = pan_mut(&mut next, pan)?;
    let mut effects = vec![Effect::Fence { pan: pan.to_string(), node: node.to_string() }];
    for lan in &mut p.lans {
        let mine = lan.ports.iter().position(|x| x.node == node);
        let theirs = lan.ports.iter().position(|x| x.node == spare);
        let at = |what: &str| PortRef { pan: pan.to_string(), lan: lan.name.clone(), node: what.to_string() };
        match (mine, theirs) {
            (Some(m), Some(t)) => {
                if lan.ports[m].kind != lan.ports[t].kind {
                    return Err(AdminError::Conflict(format!(
                        "on LAN {:?}, node {node:?} has a {} port and spare {spare:?} a {} port; a port moves only to one of its kind",
                        lan.name,
                        kind(lan.ports[m].kind),
                        kind(lan.ports[t].kind)
                    )));
                }
                let theirs = lan.ports.remove(t);
                let m = if t < m { m - 1 } else { m };
                if theirs.kind == PortKind::Tap {
                    lan.ports[m].netns = theirs.netns.clone();
                    lan.ports[m].ifname =
                        Some(theirs.ifname.clone().unwrap_or_else(|| default_ifname(&lan.name, &spare)));
                }
                effects.push(Effect::Retire(at(&spare)));
                effects.push(Effect::Plug(at(node)));
            }
            (Some(m), None) if lan.ports[m].kind == PortKind::Tap => {
                return Err(AdminError::Conflict(format!(
                    "spare {spare:?} has no port on LAN {:?} to take node {node:?}'s TAP; give it one (a TAP in its namespace, without addresses)",
                    lan.name
                )));
            }
            // A ring port stays where it is; the spare attaches to it as the node.
            (Some(_), None) | (None, None) => {}
            (None, Some(t)) => {
                lan.ports.remove(t);
                effects.push(Effect::Retire(at(&spare)));
            }
        }
    }
    let from = p.nodes.iter().position(|n| n.name == spare).expect("picked from this PAN");
    let from = p.nodes.remove(from);
    let n = p.nodes.iter_mut().find(|n| n.name == node).expect("picked with the node");
    n.credential = from.credential;
    n.uid = from.uid;
    n.iqn = from.iqn;
    n.chap_secret = from.chap_secret;
    n.mutual_chap_secret = from.mutual_chap_secret;
    effects.extend([
        Effect::SetNode { pan: pan.to_string(), node: node.to_string() },
        Effect::Unfence { pan: pan.to_string(), node: node.to_string() },
        Effect::RemoveNode { pan: pan.to_string(), node: spare },
    ]);
    next.validate().map_err(super::plan::invalid)?;
    Ok(Plan { next, effects })
}

/// The spare that takes `node`'s place: `to`, which must be a free spare of the same PAN,
/// or the PAN's first.
fn pick_spare(cfg: &Config, pan: &str, node: &str, to: Option<String>) -> Result<String, AdminError> {
    let p: &PanConfig =
        cfg.pans.iter().find(|p| p.name == pan).ok_or_else(|| AdminError::NotFound(format!("no PAN {pan:?}")))?;
    let failed = p
        .nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| AdminError::NotFound(format!("no node {node:?} in PAN {pan:?}")))?;
    if failed.spare {
        return Err(AdminError::Conflict(format!("node {node:?} is a spare: it has no personality to fail over")));
    }
    let Some(to) = to else {
        return p.nodes.iter().find(|n| n.spare).map(|n| n.name.clone()).ok_or_else(|| {
            AdminError::Conflict(format!("PAN {pan:?} has no free spare; add a node with spare = true"))
        });
    };
    match p.nodes.iter().find(|n| n.name == to) {
        Some(n) if n.spare => Ok(to),
        Some(_) => Err(AdminError::Conflict(format!("node {to:?} is not a free spare (spare = true); it is in use"))),
        None => match cfg.pans.iter().find(|q| q.nodes.iter().any(|n| n.name == to)) {
            Some(other) => Err(AdminError::Conflict(format!(
                "{to:?} is a node of PAN {:?}; a failover stays within PAN {pan:?}",
                other.name
            ))),
            None => Err(AdminError::NotFound(format!("no spare {to:?} in PAN {pan:?}"))),
        },
    }
}

fn kind(k: PortKind) -> &'static str {
    match k {
        PortKind::Tap => "TAP",
        PortKind::Ring => "ring",
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::plan;
    use super::*;
    use crate::config::NodeConfig;
    use netvirt::config::PortConfig;
    use web::Change;

    /// The demo PAN with spare `s1` (a TAP in `ns-s1` on lan0) and spare `s2` (no port).
    fn with_spares() -> Config {
        let mut cfg = Config::embedded_default().unwrap();
        let pan = &mut cfg.pans[0];
        pan.nodes.push(NodeConfig { spare: true, uid: Some(1234), ..NodeConfig::new("s1", "spare-one-credential-0") });
        pan.nodes.push(NodeConfig { spare: true, ..NodeConfig::new("s2", "spare-two-credential-0") });
        pan.lans[0].ports.push(PortConfig {
            node: "s1".into(),
            kind: PortKind::Tap,
            netns: Some("ns-s1".into()),
            ifname: None,
            ips: vec![],
            promiscuous: false,
            mac: None,
        });
        cfg.validate().unwrap();
        cfg
    }

    fn failover(node: &str, to: Option<&str>) -> Change {
        Change::Failover { pan: "demo".into(), node: node.into(), to: to.map(str::to_string) }
    }

    fn no_capacity(_: &str, _: &str) -> Option<u64> {
        None
    }

    #[test]
    fn the_node_keeps_its_name_map_and_addresses_and_takes_the_spares_place_and_credential() {
        let cfg = with_spares();
        let before = cfg.pans[0].nodes[0].clone();
        let p = plan(&cfg, failover("node-a", None), no_capacity).unwrap();
        let pan = &p.next.pans[0];
        assert!(!pan.nodes.iter().any(|n| n.name == "s1"), "the spare leaves the pool");
        let a = pan.nodes.iter().find(|n| n.name == "node-a").unwrap();
        assert_eq!((a.credential.as_str(), a.uid, a.iqn.as_deref()), ("spare-one-credential-0", Some(1234), None));
        assert_eq!(a.luns, before.luns);
        let port = pan.lans[0].ports.iter().find(|x| x.node == "node-a").unwrap();
        assert_eq!(port.netns.as_deref(), Some("ns-s1"));
        assert_eq!(port.ifname.as_deref(), Some(default_ifname("lan0", "s1").as_str()));
        assert_eq!(port.ips, vec!["198.18.0.1/24".to_string()]);
        assert!(!pan.lans[0].ports.iter().any(|x| x.node == "s1"));
        let at = |node: &str| PortRef { pan: "demo".into(), lan: "lan0".into(), node: node.into() };
        assert_eq!(
            p.effects,
            vec![
                Effect::Fence { pan: "demo".into(), node: "node-a".into() },
                Effect::Retire(at("s1")),
                Effect::Plug(at("node-a")),
                Effect::SetNode { pan: "demo".into(), node: "node-a".into() },
                Effect::Unfence { pan: "demo".into(), node: "node-a".into() },
                Effect::RemoveNode { pan: "demo".into(), node: "s1".into() },
            ]
        );
    }

    #[test]
    fn bad_failovers_are_refused_with_the_right_status() {
        let mut cfg = with_spares();
        let other = crate::config::PanConfig {
            name: "other".into(),
            images: vec![],
            nodes: vec![NodeConfig { spare: true, ..NodeConfig::new("elsewhere", "spare-else-credential") }],
            lans: vec![],
        };
        cfg.pans.push(other);
        let status_in = |cfg: &Config, c: Change| match plan(cfg, c, no_capacity) {
            Err(AdminError::NotFound(_)) => 404,
            Err(AdminError::Conflict(_)) => 409,
            Err(AdminError::Invalid(_)) => 400,
            Err(AdminError::Failed(_)) => 500,
            Ok(_) => 200,
        };
        let status = |c: Change| status_in(&cfg, c);
        assert_eq!(status(failover("node-a", Some("nobody"))), 404, "an unknown spare");
        assert_eq!(status(failover("node-a", Some("elsewhere"))), 409, "a spare in another PAN");
        assert_eq!(status(failover("node-a", Some("node-b"))), 409, "a busy spare");
        assert_eq!(status(failover("s1", None)), 409, "a spare has nothing to fail over");
        assert_eq!(status(failover("ghost", None)), 404);
        assert_eq!(status(failover("node-a", Some("s2"))), 409, "a spare without a place for the TAP");
        assert_eq!(status(failover("node-a", Some("s1"))), 200);
        let mut bare = cfg.clone();
        bare.pans[0].nodes.retain(|n| !n.spare);
        bare.pans[0].lans[0].ports.retain(|x| x.node != "s1");
        assert_eq!(status_in(&bare, failover("node-a", None)), 409, "no free spare");
    }
}
