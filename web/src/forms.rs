//! The change forms' fields, and the [`Change`] each asks for: the pages build the same
//! changes as the API, from form fields instead of JSON.

use serde::Deserialize;

use crate::admin::Change;
use crate::model::{Access, ClusterBody, Drain, MoveIp, NewLan, NewLun, NewPort, ServiceBody};
use crate::problem::Problem;

/// Every field any change form sends.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChangeForm {
    /// Absent on the confirmation page's GET, which only shows what the change will do.
    #[serde(default)]
    pub(crate) csrf: String,
    op: String,
    /// The confirmation page's button label.
    pub(crate) label: Option<String>,
    pub(crate) back: Option<String>,
    pan: Option<String>,
    pub(crate) node: Option<String>,
    name: Option<String>,
    size: Option<String>,
    path: Option<String>,
    block_size: Option<String>,
    target: Option<String>,
    lun: Option<String>,
    image: Option<String>,
    access: Option<String>,
    mtu: Option<String>,
    ports: Option<String>,
    ip: Option<String>,
    cluster: Option<String>,
    spare: Option<String>,
    services: Option<String>,
    port: Option<String>,
    proto: Option<String>,
}

fn field(v: &Option<String>, name: &str) -> Result<String, Problem> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(Problem::bad_request(format!("the form needs a {name}"))),
    }
}

fn number<T: std::str::FromStr>(v: &Option<String>, name: &str) -> Result<T, Problem> {
    field(v, name)?.parse().map_err(|_| Problem::bad_request(format!("{name} must be a number in range")))
}

fn optional(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

impl ChangeForm {
    /// The change the form asks for; a node's generated credential comes back with it.
    pub(crate) fn change(&self) -> Result<(Change, Option<String>), Problem> {
        let pan = || field(&self.pan, "PAN");
        let c = match self.op.as_str() {
            "create-pan" => Change::CreatePan { pan: pan()? },
            "delete-pan" => Change::DeletePan { pan: pan()? },
            "create-node" => {
                let credential = crate::auth::random_token(16);
                let c = Change::CreateNode {
                    pan: pan()?,
                    node: field(&self.node, "node")?,
                    credential: credential.clone(),
                    uid: None,
                    spare: self.spare.is_some(),
                };
                return Ok((c, Some(credential)));
            }
            "delete-node" => Change::DeleteNode { pan: pan()?, node: field(&self.node, "node")? },
            "create-lun" => Change::CreateLun {
                pan: pan()?,
                lun: NewLun {
                    name: field(&self.name, "name")?,
                    size: optional(&self.size),
                    path: optional(&self.path),
                    block_size: optional(&self.block_size)
                        .map(|b| b.parse())
                        .transpose()
                        .map_err(|_| Problem::bad_request("block size must be 512 or 4096"))?,
                },
            },
            "delete-lun" => Change::DeleteLun { pan: pan()?, lun: field(&self.name, "name")? },
            "resize-lun" => {
                Change::ResizeLun { pan: pan()?, lun: field(&self.name, "name")?, size: field(&self.size, "size")? }
            }
            "map" => Change::Map {
                pan: pan()?,
                node: field(&self.node, "node")?,
                target: number(&self.target, "target")?,
                lun: number(&self.lun, "LUN")?,
                image: field(&self.image, "image")?,
                access: match self.access.as_deref() {
                    Some("ro") => Access::Ro,
                    None | Some("rw") => Access::Rw,
                    Some(other) => return Err(Problem::bad_request(format!("access must be ro or rw, not {other:?}"))),
                },
            },
            "unmap" => Change::Unmap {
                pan: pan()?,
                node: field(&self.node, "node")?,
                target: number(&self.target, "target")?,
                lun: number(&self.lun, "LUN")?,
            },
            "create-lan" => Change::CreateLan {
                pan: pan()?,
                lan: NewLan {
                    name: field(&self.name, "name")?,
                    mtu: optional(&self.mtu)
                        .map(|m| m.parse())
                        .transpose()
                        .map_err(|_| Problem::bad_request("MTU must be a number"))?,
                    ports: parse_ports(self.ports.as_deref().unwrap_or(""))?,
                },
            },
            "delete-lan" => Change::DeleteLan { pan: pan()?, lan: field(&self.name, "name")? },
            "move-ip" => Change::MoveIp {
                pan: pan()?,
                lan: field(&self.name, "LAN")?,
                to: MoveIp { ip: field(&self.ip, "address")?, node: field(&self.node, "node")? },
            },
            "create-cluster" => Change::CreateCluster {
                pan: pan()?,
                lan: field(&self.name, "LAN")?,
                cluster: ClusterBody {
                    name: field(&self.cluster, "cluster")?,
                    ip: field(&self.ip, "IP")?,
                    services: parse_services(self.services.as_deref().unwrap_or(""))?,
                },
            },
            "delete-cluster" => Change::DeleteCluster {
                pan: pan()?,
                lan: field(&self.name, "LAN")?,
                name: field(&self.cluster, "cluster")?,
            },
            op @ ("drain" | "undrain") => Change::Drain {
                pan: pan()?,
                lan: field(&self.name, "LAN")?,
                name: field(&self.cluster, "cluster")?,
                drain: Drain {
                    node: field(&self.node, "node")?,
                    port: optional(&self.port)
                        .map(|p| p.parse())
                        .transpose()
                        .map_err(|_| Problem::bad_request("port must be a number"))?,
                    proto: optional(&self.proto),
                    drain: op == "drain",
                },
            },
            "failover" => Change::Failover { pan: pan()?, node: field(&self.node, "node")?, to: optional(&self.name) },
            other => return Err(Problem::bad_request(format!("unknown operation {other:?}"))),
        };
        Ok((c, None))
    }
}

/// "node address/prefix [netns]" per line.
fn parse_ports(text: &str) -> Result<Vec<NewPort>, Problem> {
    let mut ports = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [node, ip] => ports.push(NewPort { node: node.to_string(), ips: vec![ip.to_string()], netns: None }),
            [node, ip, ns] => {
                ports.push(NewPort { node: node.to_string(), ips: vec![ip.to_string()], netns: Some(ns.to_string()) })
            }
            _ => return Err(Problem::bad_request(format!("port line {line:?} is not 'node address/prefix [netns]'"))),
        }
    }
    Ok(ports)
}

/// "port[/udp] node,node [sticky] [check]" per line.
fn parse_services(text: &str) -> Result<Vec<ServiceBody>, Problem> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let bad =
            || Problem::bad_request(format!("service line {line:?} is not 'port[/udp] node,node [sticky] [check]'"));
        let mut words = line.split_whitespace();
        let first = words.next().ok_or_else(bad)?;
        let (port, proto) = match first.split_once('/') {
            Some((p, proto)) => (p, Some(proto.to_string())),
            None => (first, None),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        let nodes = words.next().ok_or_else(bad)?.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect();
        let mut s = ServiceBody { port, proto, nodes, ..ServiceBody::default() };
        for w in words {
            match w {
                "sticky" => s.sticky = true,
                "check" => s.check = Some("tcp".into()),
                _ => return Err(bad()),
            }
        }
        out.push(s);
    }
    Ok(out)
}
