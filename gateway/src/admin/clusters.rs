//! The admin's decisions about service clusters, as values (see [`super::plan`]):
//! creating, replacing, deleting a cluster and draining a backend change the LAN's
//! `[[pan.lan.cluster]]` entries, and the running LAN follows with one effect.

use netvirt::config::{CheckKind, ClusterConfig, LanConfig, ProtoConfig, ServiceConfig};
use web::model::{ClusterBody, Drain, ServiceBody};
use web::{AdminError, Change};

use super::plan::{invalid, pan_mut, Effect};
use crate::config::Config;

/// Applies a cluster change to `next`; returns the effect on the running LAN.
pub(super) fn plan_cluster(next: &mut Config, change: Change) -> Result<Effect, AdminError> {
    match change {
        Change::CreateCluster { pan, lan, cluster } => {
            let l = lan_mut(next, &pan, &lan)?;
            if l.clusters.iter().any(|c| c.name == cluster.name) {
                return Err(AdminError::Conflict(format!("LAN {lan:?} already has a cluster {:?}", cluster.name)));
            }
            let name = cluster.name.clone();
            l.clusters.push(config_of(cluster)?);
            Ok(Effect::SetCluster { pan, lan, cluster: name })
        }
        Change::ReplaceCluster { pan, lan, name, cluster } => {
            if cluster.name != name {
                return Err(invalid(format!("the body names cluster {:?}, the path {name:?}", cluster.name)));
            }
            let c = cluster_mut(lan_mut(next, &pan, &lan)?, &name)?;
            *c = config_of(cluster)?;
            Ok(Effect::SetCluster { pan, lan, cluster: name })
        }
        Change::DeleteCluster { pan, lan, name } => {
            let l = lan_mut(next, &pan, &lan)?;
            cluster_mut(l, &name)?;
            l.clusters.retain(|c| c.name != name);
            Ok(Effect::RemoveCluster { pan, lan, cluster: name })
        }
        Change::Drain { pan, lan, name, drain } => {
            let c = cluster_mut(lan_mut(next, &pan, &lan)?, &name)?;
            drain_in(c, &drain)?;
            Ok(Effect::SetCluster { pan, lan, cluster: name })
        }
        other => unreachable!("{other:?} is not a cluster change"),
    }
}

fn lan_mut<'a>(next: &'a mut Config, pan: &str, lan: &str) -> Result<&'a mut LanConfig, AdminError> {
    pan_mut(next, pan)?
        .lans
        .iter_mut()
        .find(|l| l.name == lan)
        .ok_or_else(|| AdminError::NotFound(format!("no LAN {lan:?} in PAN {pan:?}")))
}

fn cluster_mut<'a>(l: &'a mut LanConfig, name: &str) -> Result<&'a mut ClusterConfig, AdminError> {
    let lan = l.name.clone();
    l.clusters
        .iter_mut()
        .find(|c| c.name == name)
        .ok_or_else(|| AdminError::NotFound(format!("no cluster {name:?} on LAN {lan:?}")))
}

fn proto(p: Option<&str>) -> Result<ProtoConfig, AdminError> {
    match p.unwrap_or("tcp") {
        "tcp" => Ok(ProtoConfig::Tcp),
        "udp" => Ok(ProtoConfig::Udp),
        other => Err(invalid(format!("{other:?} is not a protocol (tcp or udp)"))),
    }
}

/// A cluster as the config writes it; what the config checks (addresses, nodes, ports)
/// is checked with the whole next config.
fn config_of(b: ClusterBody) -> Result<ClusterConfig, AdminError> {
    let services = b.services.into_iter().map(service_of).collect::<Result<_, _>>()?;
    Ok(ClusterConfig { name: b.name, ip: b.ip, services })
}

fn service_of(s: ServiceBody) -> Result<ServiceConfig, AdminError> {
    let defaults: ServiceConfig = toml::from_str("port = 1").expect("a service of defaults parses");
    let check = match s.check.as_deref() {
        None | Some("") | Some("none") => None,
        Some("tcp") => Some(CheckKind::Tcp),
        Some(other) => return Err(invalid(format!("{other:?} is not a health check (tcp)"))),
    };
    Ok(ServiceConfig {
        port: s.port,
        proto: proto(s.proto.as_deref())?,
        nodes: s.nodes,
        draining: s.draining,
        sticky: s.sticky,
        sticky_timeout: s.sticky_timeout.unwrap_or(defaults.sticky_timeout),
        check,
        check_interval: s.check_interval.unwrap_or(defaults.check_interval),
        check_failures: s.check_failures.unwrap_or(defaults.check_failures),
        check_passes: s.check_passes.unwrap_or(defaults.check_passes),
    })
}

/// Marks `d.node` draining (or not) in the services it serves, or in the one `d` names.
fn drain_in(c: &mut ClusterConfig, d: &Drain) -> Result<(), AdminError> {
    let want = match d.port {
        Some(port) => Some((proto(d.proto.as_deref())?, port)),
        None => None,
    };
    let mut found = false;
    for s in &mut c.services {
        if want.is_some_and(|w| w != (s.proto, s.port)) || !s.nodes.contains(&d.node) {
            continue;
        }
        found = true;
        s.draining.retain(|n| n != &d.node);
        if d.drain {
            s.draining.push(d.node.clone());
        }
    }
    if !found {
        return Err(AdminError::NotFound(format!("{:?} serves no such service of cluster {:?}", d.node, c.name)));
    }
    Ok(())
}

/// A cluster of the config as the API shows it.
pub(super) fn body_of(c: &ClusterConfig) -> ClusterBody {
    ClusterBody {
        name: c.name.clone(),
        ip: c.ip.clone(),
        services: c
            .services
            .iter()
            .map(|s| ServiceBody {
                port: s.port,
                proto: Some(match s.proto {
                    ProtoConfig::Tcp => "tcp".into(),
                    ProtoConfig::Udp => "udp".into(),
                }),
                nodes: s.nodes.clone(),
                draining: s.draining.clone(),
                sticky: s.sticky,
                sticky_timeout: Some(s.sticky_timeout.clone()),
                check: s.check.map(|_| "tcp".into()),
                check_interval: Some(s.check_interval.clone()),
                check_failures: Some(s.check_failures),
                check_passes: Some(s.check_passes),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::plan;
    use super::*;

    fn web_cluster(ip: &str) -> ClusterBody {
        ClusterBody {
            name: "web".into(),
            ip: ip.into(),
            services: vec![ServiceBody {
                port: 80,
                nodes: vec!["node-a".into(), "node-b".into()],
                check: Some("tcp".into()),
                ..ServiceBody::default()
            }],
        }
    }

    fn create(ip: &str) -> Change {
        Change::CreateCluster { pan: "demo".into(), lan: "lan0".into(), cluster: web_cluster(ip) }
    }

    fn no_capacity(_: &str, _: &str) -> Option<u64> {
        None
    }

    #[test]
    fn clusters_are_created_replaced_drained_and_deleted_with_one_effect_each() {
        let cfg = Config::embedded_default().unwrap();
        let p = plan(&cfg, create("198.18.0.100"), no_capacity).unwrap();
        let set = Effect::SetCluster { pan: "demo".into(), lan: "lan0".into(), cluster: "web".into() };
        assert_eq!(p.effects, vec![set.clone()]);
        let with = p.next;
        let c = &with.pans[0].lans[0].clusters[0];
        assert_eq!((c.ip.as_str(), c.services[0].check), ("198.18.0.100", Some(CheckKind::Tcp)));
        assert_eq!(c.services[0].sticky_timeout, "10m");

        let drain = |node: &str, on: bool| Change::Drain {
            pan: "demo".into(),
            lan: "lan0".into(),
            name: "web".into(),
            drain: Drain { node: node.into(), port: None, proto: None, drain: on },
        };
        let drained = plan(&with, drain("node-b", true), no_capacity).unwrap();
        assert_eq!(drained.effects, vec![set]);
        assert_eq!(drained.next.pans[0].lans[0].clusters[0].services[0].draining, vec!["node-b".to_string()]);
        let back = plan(&drained.next, drain("node-b", false), no_capacity).unwrap();
        assert!(back.next.pans[0].lans[0].clusters[0].services[0].draining.is_empty());
        assert!(matches!(plan(&with, drain("node-z", true), no_capacity), Err(AdminError::NotFound(_))));

        let mut other = web_cluster("198.18.0.101");
        other.name = "other".into();
        let replace = |name: &str, body: ClusterBody| Change::ReplaceCluster {
            pan: "demo".into(),
            lan: "lan0".into(),
            name: name.into(),
            cluster: body,
        };
        assert!(matches!(plan(&with, replace("web", other), no_capacity), Err(AdminError::Invalid(_))));
        let moved = plan(&with, replace("web", web_cluster("198.18.0.101")), no_capacity).unwrap();
        assert_eq!(moved.next.pans[0].lans[0].clusters[0].ip, "198.18.0.101");

        let delete = |name: &str| Change::DeleteCluster { pan: "demo".into(), lan: "lan0".into(), name: name.into() };
        let gone = plan(&with, delete("web"), no_capacity).unwrap();
        assert!(gone.next.pans[0].lans[0].clusters.is_empty());
        assert_eq!(
            gone.effects,
            vec![Effect::RemoveCluster { pan: "demo".into(), lan: "lan0".into(), cluster: "web".into() }]
        );
        assert!(matches!(plan(&with, delete("nope"), no_capacity), Err(AdminError::NotFound(_))));
    }

    #[test]
    fn bad_clusters_are_refused_with_the_status_that_fits() {
        let cfg = Config::embedded_default().unwrap();
        let with = plan(&cfg, create("198.18.0.100"), no_capacity).unwrap().next;
        // A second cluster of the same name, and one on a node's address.
        assert!(matches!(plan(&with, create("198.18.0.102"), no_capacity), Err(AdminError::Conflict(_))));
        let e = plan(&cfg, create("198.18.0.1"), no_capacity).unwrap_err();
        assert!(matches!(&e, AdminError::Invalid(m) if m.contains("a port's address")), "{e:?}");
        // A backend without a port on the LAN, a bad protocol, an unknown LAN.
        let mut stray = web_cluster("198.18.0.100");
        stray.services[0].nodes.push("node-z".into());
        let c = Change::CreateCluster { pan: "demo".into(), lan: "lan0".into(), cluster: stray };
        assert!(matches!(plan(&cfg, c, no_capacity), Err(AdminError::Invalid(_))));
        let mut udp = web_cluster("198.18.0.100");
        udp.services[0].proto = Some("sctp".into());
        let c = Change::CreateCluster { pan: "demo".into(), lan: "lan0".into(), cluster: udp };
        assert!(matches!(plan(&cfg, c, no_capacity), Err(AdminError::Invalid(_))));
        let c = Change::CreateCluster { pan: "demo".into(), lan: "nope".into(), cluster: web_cluster("198.18.0.100") };
        assert!(matches!(plan(&cfg, c, no_capacity), Err(AdminError::NotFound(_))));
    }
}
