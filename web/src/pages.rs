//! Server-rendered pages and the forms behind them. Forms build the same [`Change`]s as
//! the API and go through the same [`WebState::apply`].

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::admin::Change;
use crate::api::{find_lun, find_pan, Params};
use crate::auth::{Auth, Viewer, SESSION_COOKIE};
use crate::history::{bytes, bytes_per_sec, nothing, per_sec, sparkline};
use crate::model::{
    Access, ClusterBody, ClusterView, Drain, LanView, MoveIp, NewLan, NewLun, NewPort, Overview, PanView, ServiceBody,
};
use crate::problem::Problem;
use crate::status::{event_table, status_bar};
use crate::WebState;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 2em 2em;color:#1b1f24}\
header{display:flex;gap:1.5em;align-items:center;border-bottom:1px solid #ccd;padding:.6em 0;margin-bottom:1em}\
header .who{margin-left:auto}table{border-collapse:collapse;margin:.4em 0 1.2em}\
td,th{border:1px solid #d6dae0;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f4f6f8}\
form.inline{display:inline}fieldset{border:1px solid #d6dae0;margin:.6em 0;padding:.6em}\
figure.chart{display:inline-block;margin:.3em 1.5em .3em 0}figcaption{font-size:.85em}\
.error{color:#a00}code{background:#f4f6f8;padding:0 .2em}\
header .status{font-size:.85em;color:#4a5360}button.danger{background:#b3261e;color:#fff;border:0;padding:.3em .8em}\
tr.warning td{background:#fff7e0}tr.error td{background:#fde8e8}\
td.long{max-width:22em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}\
svg.topology{max-width:100%;height:auto}svg.topology rect{fill:#f4f6f8;stroke:#8a94a3}\
svg.topology .node rect{fill:#e8f0fe}svg.topology .lan rect{fill:#e6f4ea}svg.topology .cluster rect{fill:#fef7e0}\
svg.topology .spare rect{stroke-dasharray:4 3}svg.topology line{stroke:#5f6b7a;stroke-width:1.5}\
svg.topology g.port line{stroke-dasharray:5 3}svg.topology text{font-size:13px}svg.topology .heading{font-weight:600}\
@media (max-width:700px){body{margin:0 .6em 1em}header{flex-wrap:wrap;gap:.6em}table{display:block;overflow-x:auto}}";

/// The client's address, for slowing down failed logins (loopback when unknown).
struct ClientIp(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientIp, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientIp(ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))))
    }
}

fn layout(title: &str, viewer: &Viewer, body: Markup) -> Markup {
    layout_with(title, viewer, None, body)
}

fn layout_with(title: &str, viewer: &Viewer, status: Option<&Overview>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · pangate" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    strong { a href="/" { "pangate" } }
                    a href="/metrics" { "metrics" }
                    a href="/api/v1/openapi.json" { "API" }
                    a href="/events" { "events" }
                    @if let Some(o) = status { (status_bar(o)) }
                    span.who {
                        @match viewer {
                            Viewer::Anonymous => { "read-only · " a href="/login" { "log in" } }
                            Viewer::Bearer => { "admin (token)" }
                            Viewer::Session { csrf, .. } => {
                                "admin · "
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "log out" }
                                }
                            }
                        }
                    }
                }
                h1 { (title) }
                (body)
            }
        }
    }
}

/// A form that posts one change; `fields` are its inputs.
fn change_form(viewer: &Viewer, op: &str, back: &str, legend: &str, fields: Markup) -> Markup {
    let Some(csrf) = viewer.csrf() else { return nothing() };
    html! {
        form method="post" action="/ui/change" {
            fieldset {
                legend { (legend) }
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="op" value=(op);
                input type="hidden" name="back" value=(back);
                (fields)
                " " button type="submit" { (legend) }
            }
        }
    }
}

/// A button for a change that cannot be undone (delete, unmap, fail over): it leads to a
/// page that says what will happen and asks first ([`confirm_page`]).
fn confirm_form(viewer: &Viewer, op: &str, back: &str, label: &str, hidden: &[(&str, String)]) -> Markup {
    if viewer.csrf().is_none() {
        return nothing();
    }
    one_button("get", "/ui/confirm", &[("label", label.to_string())], op, back, label, hidden)
}

/// A one-button form (drain, undrain) carrying hidden fields.
fn button_form(viewer: &Viewer, op: &str, back: &str, label: &str, hidden: &[(&str, String)]) -> Markup {
    let Some(csrf) = viewer.csrf() else { return nothing() };
    one_button("post", "/ui/change", &[("csrf", csrf.to_string())], op, back, label, hidden)
}

/// An inline form of hidden fields (`extra`, the change's `op`, where to go `back` to, and
/// `hidden`) and one button.
fn one_button(
    method: &str,
    action: &str,
    extra: &[(&str, String)],
    op: &str,
    back: &str,
    label: &str,
    hidden: &[(&str, String)],
) -> Markup {
    html! {
        form.inline method=(method) action=(action) {
            @for (k, v) in extra { input type="hidden" name=(k) value=(v); }
            input type="hidden" name="op" value=(op);
            input type="hidden" name="back" value=(back);
            @for (k, v) in hidden { input type="hidden" name=(k) value=(v); }
            button type="submit" { (label) }
        }
    }
}

fn lun_rows(s: &WebState, pan: &PanView, viewer: &Viewer, back: &str) -> Markup {
    let history = s.history.lock().unwrap_or_else(|p| p.into_inner());
    // The action column only for an admin: a read-only table has no empty column.
    let admin = viewer.csrf().is_some();
    html! {
        table.luns {
            tr { th { "LUN" } th { "capacity" } th { "IOPS" } th { "throughput" } th { "reads" } th { "writes" }
                 th { "read" } th { "written" } th { "path" } @if admin { th { "actions" } } }
            @for l in &pan.luns {
                @let rate = history.latest(&pan.name, &l.name);
                tr data-lun=(l.name) {
                    td { a href=(format!("/pans/{}/luns/{}", pan.name, l.name)) { (l.name) } }
                    td { (bytes(l.size_bytes)) }
                    td { (per_sec(rate.iops)) }
                    td { (bytes_per_sec(rate.bytes_per_sec)) }
                    td.reads { (l.counters.reads) }
                    td.writes { (l.counters.writes) }
                    td { (bytes(l.counters.bytes_read)) }
                    td { (bytes(l.counters.bytes_written)) }
                    td.long title=(l.path) { code { (l.path) } }
                    @if admin { td { (confirm_form(viewer, "delete-lun", back, "delete", &[("pan", pan.name.clone()), ("name", l.name.clone())])) } }
                }
            }
        }
    }
}

fn lan_tables(pan: &PanView, viewer: &Viewer, back: &str) -> Markup {
    html! {
        @for lan in &pan.lans {
            h3 { "LAN " (lan.name) " · MTU " (lan.mtu) " · " (lan.arp_entries) " ARP entries "
                 (confirm_form(viewer, "delete-lan", back, "delete", &[("pan", pan.name.clone()), ("name", lan.name.clone())])) }
            table.ports {
                tr { th { "node" } th { "kind" } th { "netns" } th { "MAC" } th { "IPs" } th { "frames in" } th { "frames out" } th { "drops" } }
                @for p in &lan.ports {
                    tr {
                        td { (p.node) } td { (p.kind) } td { (p.netns.as_deref().unwrap_or("-")) }
                        td { code { (p.mac.as_deref().unwrap_or("-")) } } td { (p.ips.join(", ")) }
                        td { (p.frames_in) } td { (p.frames_out) }
                        td {
                            (p.drops)
                            @if p.oversize_drops > 0 {
                                span.error { " (" (p.oversize_drops) " over the MTU, up to " (p.largest_oversize)
                                    " bytes: the node's MTU is above the LAN's " (lan.mtu) ")" }
                            }
                        }
                    }
                }
            }
            (cluster_tables(pan, lan, viewer, back))
            @if lan.ports.len() > 1 {
                (change_form(viewer, "move-ip", back, "Move IP", html! {
                    input type="hidden" name="pan" value=(pan.name);
                    input type="hidden" name="name" value=(lan.name);
                    label { "address " select name="ip" {
                        @for p in &lan.ports { @for ip in &p.ips { option { (ip.split('/').next().unwrap_or(ip)) } } }
                    } } " "
                    label { "to node " select name="node" { @for p in &lan.ports { option { (p.node) } } } }
                }))
            }
        }
    }
}

/// A LAN's service clusters: each backend's health with a drain button, and a form for a
/// new cluster.
fn cluster_tables(pan: &PanView, lan: &LanView, viewer: &Viewer, back: &str) -> Markup {
    let ids = |c: &ClusterView| {
        vec![("pan", pan.name.clone()), ("name", lan.name.clone()), ("cluster", c.cluster.name.clone())]
    };
    html! {
        @for c in &lan.clusters {
            h4 { "cluster " (c.cluster.name) " · " code { (c.cluster.ip) } " · MAC " code { (c.mac.as_deref().unwrap_or("-")) }
                 " · " (c.flows) " flows · " (c.new_flows) " new · " (c.drops) " dropped "
                 (confirm_form(viewer, "delete-cluster", back, "delete", &ids(c))) }
            table.clusters {
                tr { th { "service" } th { "node" } th { "health" } th { "sticky" } th { "check" } @if viewer.csrf().is_some() { th { "actions" } } }
                @for s in &c.cluster.services {
                    @let proto = s.proto.clone().unwrap_or_else(|| "tcp".into());
                    @for node in &s.nodes {
                        @let health = c.health.iter().find(|h| &h.node == node && h.port == s.port && h.proto == proto)
                            .map_or("-", |h| h.health.as_str());
                        @let draining = s.draining.contains(node);
                        @let fields = backend_fields(ids(c), node, s.port, &proto);
                        tr data-backend=(format!("{}/{}/{node}", c.cluster.name, s.port)) {
                            td { (s.port) "/" (proto) } td { (node) } td.health { (health) }
                            td { @if s.sticky { "yes" } @else { "no" } } td { (s.check.as_deref().unwrap_or("port")) }
                            @if viewer.csrf().is_some() {
                                td { @if draining { (button_form(viewer, "undrain", back, "undrain", &fields)) }
                                     @else { (button_form(viewer, "drain", back, "drain", &fields)) } }
                            }
                        }
                    }
                }
            }
        }
        (change_form(viewer, "create-cluster", back, "Create cluster", html! {
            input type="hidden" name="pan" value=(pan.name);
            input type="hidden" name="name" value=(lan.name);
            label { "name " input name="cluster" required; } " "
            label { "IP " input name="ip" placeholder="198.18.0.100" required; } " "
            label { "services, one a line: " code { "port[/udp] node,node [sticky] [check]" } " "
                textarea name="services" rows="2" cols="40" placeholder="80 node-a,node-b sticky check" {} }
        }))
    }
}

/// A cluster's identifying fields plus one backend of one service.
fn backend_fields(
    mut fields: Vec<(&'static str, String)>,
    node: &str,
    port: u16,
    proto: &str,
) -> Vec<(&'static str, String)> {
    fields.extend([("node", node.to_string()), ("port", port.to_string()), ("proto", proto.to_string())]);
    fields
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

/// Events the dashboard shows.
const DASHBOARD_EVENTS: usize = 15;

async fn dashboard(State(s): State<WebState>, viewer: Viewer) -> Markup {
    let (o, events) = (s.overview().await, s.events(0, DASHBOARD_EVENTS).await);
    let body = html! {
        p { "Control node " code { (o.serial) } ". netvirt " @if o.netvirt { "running" } @else { "off" } "." }
        @for pan in &o.pans {
            section.pan data-pan=(pan.name) {
                h2 { "PAN " a href=(format!("/pans/{}", pan.name)) { (pan.name) } }
                h3 { "Nodes" }
                table.nodes {
                    tr { th { "node" } th { "maps" } th { "ring queue pairs" } th { "outstanding" } th { "protocol errors" } }
                    @for n in &pan.nodes {
                        tr {
                            td { (n.name) }
                            td { @for m in &n.maps { (format!("t{} l{} → {} ({}) ", m.target, m.lun, m.image, access_name(m.access))) } }
                            td { (n.ring_connections) } td { (n.outstanding_commands) } td { (n.protocol_errors) }
                        }
                    }
                }
                h3 { "LUNs" }
                (lun_rows(&s, pan, &viewer, "/"))
                (lan_tables(pan, &viewer, "/"))
            }
        }
        (change_form(&viewer, "create-pan", "/", "Create PAN", html! { label { "name " input name="pan" required; } }))
        section.events {
            h2 { "Recent events" }
            (event_table(&events))
            p { a href="/events" { "all events" } }
        }
    };
    layout_with("Dashboard", &viewer, Some(&o), body)
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Ro => "ro",
        Access::Rw => "rw",
    }
}

async fn pan_page(State(s): State<WebState>, viewer: Viewer, Params(name): Params<String>) -> Result<Markup, Problem> {
    let o = s.overview().await;
    let pan = find_pan(&o, &name)?;
    let back = format!("/pans/{}", pan.name);
    let rates = s.history.lock().unwrap_or_else(|p| p.into_inner()).pan_rates(&pan.name);
    let iops: Vec<f64> = rates.iter().map(|r| r.iops).collect();
    let tput: Vec<f64> = rates.iter().map(|r| r.bytes_per_sec).collect();
    let p = || ("pan", pan.name.clone());
    let body = html! {
        (sparkline("IOPS", &iops, per_sec))
        (sparkline("throughput", &tput, bytes_per_sec))
        h2 { "Topology" }
        (crate::topology::topology(&pan))
        h2 { "Nodes" }
        table.nodes {
            tr { th { "node" } th { "uid" } th { "map" } th { "ring queue pairs" } th { "failover" } @if viewer.csrf().is_some() { th { "actions" } } }
            @for n in &pan.nodes {
                tr data-node=(n.name) {
                    td { (n.name) @if n.spare { " (spare)" } }
                    td { (n.uid.map_or("-".to_string(), |u| u.to_string())) }
                    td {
                        @for m in &n.maps {
                            div { (format!("target {} LUN {} → {} ({}) ", m.target, m.lun, m.image, access_name(m.access)))
                                (confirm_form(&viewer, "unmap", &back, "unmap", &[p(), ("node", n.name.clone()),
                                    ("target", m.target.to_string()), ("lun", m.lun.to_string())])) }
                        }
                    }
                    td { (n.ring_connections) }
                    td { @if !n.spare { (n.failover) " " (confirm_form(&viewer, "failover", &back, "fail over",
                        &[p(), ("node", n.name.clone())])) } }
                    @if viewer.csrf().is_some() { td { (confirm_form(&viewer, "delete-node", &back, "delete", &[p(), ("node", n.name.clone())])) } }
                }
            }
        }
        h2 { "LUNs" }
        (lun_rows(&s, &pan, &viewer, &back))
        h2 { "LANs" }
        (lan_tables(&pan, &viewer, &back))
        @if viewer.csrf().is_some() {
            h2 { "Change" }
            (change_form(&viewer, "create-node", &back, "Create node", html! {
                input type="hidden" name="pan" value=(pan.name);
                label { "name " input name="node" required; } " "
                label { input type="checkbox" name="spare"; " spare" }
            }))
            @if pan.nodes.iter().any(|n| n.spare) {
                (change_form(&viewer, "failover", &back, "Fail over", html! {
                    input type="hidden" name="pan" value=(pan.name);
                    label { "node " select name="node" { @for n in pan.nodes.iter().filter(|n| !n.spare) { option { (n.name) } } } } " "
                    label { "to spare " select name="name" { @for n in pan.nodes.iter().filter(|n| n.spare) { option { (n.name) } } } }
                }))
            }
            (change_form(&viewer, "create-lun", &back, "Create LUN", html! {
                input type="hidden" name="pan" value=(pan.name);
                label { "name " input name="name" required; } " "
                label { "size " input name="size" placeholder="1G"; } " or "
                label { "existing file " input name="path" placeholder="/var/lib/images/disk.img"; } " "
                label { "block size " select name="block_size" { option { "512" } option { "4096" } } }
            }))
            (change_form(&viewer, "map", &back, "Map LUN", html! {
                input type="hidden" name="pan" value=(pan.name);
                label { "node " select name="node" { @for n in &pan.nodes { option { (n.name) } } } } " "
                label { "target " input name="target" value="0" size="4"; } " "
                label { "LUN " input name="lun" value="0" size="4"; } " "
                label { "image " select name="image" { @for l in &pan.luns { option { (l.name) } } } } " "
                label { "access " select name="access" { option { "rw" } option { "ro" } } }
            }))
            (change_form(&viewer, "create-lan", &back, "Create LAN", html! {
                input type="hidden" name="pan" value=(pan.name);
                label { "name " input name="name" required; } " "
                label { "MTU " input name="mtu" value="1500" size="5"; } br;
                label { "ports, one per line: node address/prefix [netns] (no netns: a ring port)" br;
                    textarea name="ports" rows="3" cols="50" {} }
            }))
            (confirm_form(&viewer, "delete-pan", "/", "Delete this PAN", &[p()]))
        }
    };
    Ok(layout_with(&format!("PAN {}", pan.name), &viewer, Some(&o), body))
}

async fn lun_page(
    State(s): State<WebState>,
    viewer: Viewer,
    Params((pan, lun)): Params<(String, String)>,
) -> Result<Markup, Problem> {
    let o = s.overview().await;
    let p = find_pan(&o, &pan)?;
    let l = find_lun(&o, &pan, &lun)?;
    let rates = s.history.lock().unwrap_or_else(|p| p.into_inner()).rates(&pan, &lun);
    let iops: Vec<f64> = rates.iter().map(|r| r.iops).collect();
    let tput: Vec<f64> = rates.iter().map(|r| r.bytes_per_sec).collect();
    let back = format!("/pans/{pan}/luns/{lun}");
    let c = l.counters;
    let body = html! {
        p { a href=(format!("/pans/{pan}")) { "PAN " (pan) } " · " code { (l.path) } " · " (bytes(l.size_bytes))
            " · " (l.block_size) "-byte blocks" }
        (sparkline("IOPS", &iops, per_sec))
        (sparkline("throughput", &tput, bytes_per_sec))
        table.counters {
            tr { th { "commands" } td.commands { (c.commands) } }
            tr { th { "reads" } td.reads { (c.reads) } }
            tr { th { "writes" } td.writes { (c.writes) } }
            tr { th { "bytes read" } td { (c.bytes_read) } }
            tr { th { "bytes written" } td { (c.bytes_written) } }
            tr { th { "seconds busy" } td { (format!("{:.3}", c.busy_seconds)) } }
        }
        h2 { "Mapped by" }
        ul { @for n in &p.nodes { @for m in n.maps.iter().filter(|m| m.image == lun) {
            li { (n.name) ": target " (m.target) " LUN " (m.lun) " (" (access_name(m.access)) ")" } } } }
        (change_form(&viewer, "resize-lun", &back, "Resize", html! {
            input type="hidden" name="pan" value=(pan);
            input type="hidden" name="name" value=(lun);
            label { "new size " input name="size" placeholder="2G" required; }
        }))
    };
    Ok(layout_with(&format!("LUN {lun}"), &viewer, Some(&o), body))
}

/// Every field any change form sends.
#[derive(Debug, Default, Deserialize)]
struct ChangeForm {
    /// Absent on the confirmation page's GET, which only shows what the change will do.
    #[serde(default)]
    csrf: String,
    op: String,
    /// The confirmation page's button label.
    label: Option<String>,
    back: Option<String>,
    pan: Option<String>,
    node: Option<String>,
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
    fn change(&self) -> Result<(Change, Option<String>), Problem> {
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

fn error_page(viewer: &Viewer, p: Problem) -> Response {
    let status = p.status_code();
    let body = html! { p.error { (p.detail) } p { a href="/" { "back to the overview" } } };
    (status, layout(&format!("{} {}", p.status, p.title), viewer, body)).into_response()
}

/// Only local paths: a form must not redirect elsewhere.
fn safe_back(back: Option<&str>) -> String {
    match back {
        Some(b) if b.starts_with('/') && !b.starts_with("//") && !b.contains('\\') => b.to_string(),
        _ => "/".to_string(),
    }
}

/// A form body, or the problem for the error page when it does not parse (rather than
/// axum's plain-text rejection).
fn parsed<T>(form: Result<Form<T>, FormRejection>) -> Result<T, Problem> {
    form.map(|Form(f)| f)
        .map_err(|r| Problem::new(r.status(), "invalid-form", format!("the form is not valid: {}", r.body_text())))
}

async fn post_change(
    State(s): State<WebState>,
    viewer: Viewer,
    form: Result<Form<ChangeForm>, FormRejection>,
) -> Response {
    let form = match parsed(form) {
        Ok(f) => f,
        Err(p) => return error_page(&viewer, p),
    };
    let Viewer::Session { csrf, .. } = &viewer else {
        return error_page(&viewer, Problem::unauthorized("log in to change anything"));
    };
    if !crate::auth::same_secret(&form.csrf, csrf) {
        return error_page(
            &viewer,
            Problem::forbidden("the form's CSRF token does not match this session; reload the page"),
        );
    }
    let (change, credential) = match form.change() {
        Ok(c) => c,
        Err(p) => return error_page(&viewer, p),
    };
    let node = form.node.clone().unwrap_or_default();
    if let Err(p) = s.apply(change).await {
        return error_page(&viewer, p);
    }
    let back = safe_back(form.back.as_deref());
    match credential {
        Some(cred) => {
            let body = html! {
                p { "Node " strong { (node) } " created. Its credential (shown once): " code id="credential" { (cred) } }
                p { a href=(back) { "continue" } }
            };
            layout("Node created", &viewer, body).into_response()
        }
        None => Redirect::to(&back).into_response(),
    }
}

/// Says what a change that cannot be undone will do and asks first: the real form posts
/// it, with this session's CSRF token; Cancel goes back.
async fn confirm_page(
    viewer: Viewer,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
    form: Result<Query<ChangeForm>, QueryRejection>,
) -> Response {
    let (Ok(Query(pairs)), Ok(Query(form))) = (pairs, form) else {
        return error_page(&viewer, Problem::bad_request("the confirmation link is malformed"));
    };
    let Some(csrf) = viewer.csrf() else {
        return error_page(&viewer, Problem::unauthorized("log in to change anything"));
    };
    let (change, _) = match form.change() {
        Ok(c) => c,
        Err(p) => return error_page(&viewer, p),
    };
    let back = safe_back(form.back.as_deref());
    let label = form.label.as_deref().map(str::trim).filter(|l| !l.is_empty()).unwrap_or("confirm");
    let body = html! {
        p.confirm { "This will " strong { (change.summary()) } ". It cannot be undone." }
        form method="post" action="/ui/change" {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in &pairs {
                @if k != "csrf" && k != "label" { input type="hidden" name=(k) value=(v); }
            }
            button.danger type="submit" autofocus { "Yes, " (label) }
            " " a href=(back) { "Cancel" }
        }
    };
    layout("Are you sure?", &viewer, body).into_response()
}

async fn events_page(State(s): State<WebState>, viewer: Viewer) -> Markup {
    let (o, events) = (s.overview().await, s.events(0, metrics::EVENTS_KEPT).await);
    let body = html! {
        p { "The last " (metrics::EVENTS_KEPT) " events the gateway kept, newest first; as JSON: "
            a href="/api/v1/events" { code { "/api/v1/events" } } "." }
        (event_table(&events))
    };
    layout_with("Events", &viewer, Some(&o), body)
}

async fn login_page(viewer: Viewer) -> Markup {
    login_form(&viewer, None)
}

fn login_form(viewer: &Viewer, error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { p.error { (e) } }
        form method="post" action="/login" {
            label { "admin token " input type="password" name="token" autocomplete="current-password" required; }
            " " button type="submit" { "log in" }
        }
        p { "The token is in the data directory's " code { "admin-token" } " file, printed when the gateway first started." }
    };
    layout("Log in", viewer, body)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(s): State<WebState>,
    ClientIp(ip): ClientIp,
    jar: CookieJar,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match parsed(form) {
        Ok(f) => f,
        Err(p) => return error_page(&Viewer::Anonymous, p),
    };
    let delay = s.auth.login_delay(ip);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match s.auth.login(ip, &form.token) {
        Some(id) => (jar.add(Auth::cookie(id)), Redirect::to("/")).into_response(),
        None => {
            tracing::warn!(client = %ip, "failed admin login");
            (StatusCode::UNAUTHORIZED, login_form(&Viewer::Anonymous, Some("wrong token"))).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(s): State<WebState>,
    viewer: Viewer,
    jar: CookieJar,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let form = match parsed(form) {
        Ok(f) => f,
        Err(p) => return error_page(&viewer, p),
    };
    if let Viewer::Session { id, csrf } = &viewer {
        if crate::auth::same_secret(&form.csrf, csrf) {
            s.auth.logout(id);
        }
    }
    (jar.remove(Cookie::build(SESSION_COOKIE).path("/")), Redirect::to("/")).into_response()
}

/// The pages' style sheet, served rather than inlined so the Content-Security-Policy
/// needs no 'unsafe-inline'.
async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], STYLE)
}

async fn favicon() -> impl IntoResponse {
    (StatusCode::NO_CONTENT, [(header::CACHE_CONTROL, "max-age=86400")])
}

/// The pages' routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/pans/{pan}", get(pan_page))
        .route("/pans/{pan}/luns/{lun}", get(lun_page))
        .route("/ui/change", post(post_change))
        .route("/ui/confirm", get(confirm_page))
        .route("/events", get(events_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/favicon.ico", get(favicon))
        .route("/style.css", get(style))
}
