//! Server-rendered pages and the forms behind them. Forms build the same
//! [`Change`](crate::admin::Change)s as the API and go through the same [`WebState::apply`].

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::api::{find_pan, Params};
use crate::auth::{Auth, Viewer, SESSION_COOKIE};
use crate::charts::panel;
use crate::forms::ChangeForm;
use crate::history::Subject;
use crate::model::{Access, ClusterView, LanView, Overview, PanView};
use crate::problem::Problem;
use crate::status::{event_table, status_bar};
use crate::units::{bytes, bytes_per_sec, latency, nothing, per_sec};
use crate::WebState;

/// The client's address, for slowing down failed logins (loopback when unknown).
struct ClientIp(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientIp, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientIp(ip.unwrap_or(IpAddr::from([127, 0, 0, 1]))))
    }
}

/// A page that shows no live state (login, forms' results, errors).
pub(crate) fn layout(title: &str, viewer: &Viewer, body: Markup) -> Markup {
    layout_with(title, viewer, None, body)
}

/// A page; with `status`, the header shows the gateway's status and the page updates
/// itself once a second (`assets/pangate.js`).
pub(crate) fn layout_with(title: &str, viewer: &Viewer, status: Option<&Overview>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · pangate" }
                @for href in crate::assets::style_sheets() { link rel="stylesheet" href=(href); }
                @for src in crate::assets::scripts() { script src=(src) defer {} }
            }
            body data-live[status.is_some()] {
                header {
                    strong { a href="/" { "pangate" } }
                    a href="/metrics" { "metrics" }
                    a href="/api/v1/openapi.json" { "API" }
                    a href="/events" { "events" }
                    @if let Some(o) = status { (status_bar(o)) span #live role="status" {} }
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
                main {
                    h1 { (title) }
                    (body)
                }
                @if status.is_some() { footer { p.units { (crate::units::LEGEND) } } }
            }
        }
    }
}

/// A form that posts one change; `fields` are its inputs.
pub(crate) fn change_form(viewer: &Viewer, op: &str, back: &str, legend: &str, fields: Markup) -> Markup {
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

/// A PAN's LUNs with their newest rates; `id` makes the table live on its page.
fn lun_rows(s: &WebState, id: &str, pan: &PanView, viewer: &Viewer, back: &str) -> Markup {
    let history = s.history();
    // The action column only for an admin: a read-only table has no empty column.
    let admin = viewer.csrf().is_some();
    html! {
        table.luns id=(id) data-live {
            thead { tr { th scope="col" { "LUN" } th scope="col" { "capacity" } th scope="col" { "IOPS" }
                th scope="col" { "throughput" } th scope="col" { "p99 latency" } th scope="col" { "reads" }
                th scope="col" { "writes" } th scope="col" { "read" } th scope="col" { "written" } th scope="col" { "path" }
                @if admin { th scope="col" { "actions" } } } }
            tbody {
                @for l in &pan.luns {
                    @let subject = Subject::Lun(pan.name.clone(), l.name.clone());
                    @let iops: f64 = history.latest(&subject, "IOPS").iter().sum();
                    @let tput: f64 = history.latest(&subject, "Throughput").iter().sum();
                    @let p99 = history.latest(&subject, "Latency").get(1).copied().unwrap_or(f64::NAN);
                    tr data-lun=(l.name) {
                        td.name title=(l.name) { a href=(format!("/pans/{}/luns/{}", pan.name, l.name)) { (l.name) } }
                        td.num { (bytes(l.size_bytes)) }
                        td.num { (per_sec(iops)) }
                        td.num { (bytes_per_sec(tput)) }
                        td.num { (latency(p99)) }
                        td.num.reads { (l.counters.reads) }
                        td.num.writes { (l.counters.writes) }
                        td.num { (bytes(l.counters.bytes_read)) }
                        td.num { (bytes(l.counters.bytes_written)) }
                        td.long title=(l.path) { code { (l.path) } }
                        @if admin { td { (confirm_form(viewer, "delete-lun", back, "delete", &[("pan", pan.name.clone()), ("name", l.name.clone())])) } }
                    }
                }
            }
        }
    }
}

/// A PAN's LANs: each one's ports, traffic chart and clusters.
fn lan_tables(s: &WebState, pan: &PanView, viewer: &Viewer, back: &str) -> Markup {
    let history = s.history();
    html! {
        @for lan in &pan.lans {
            @let id = format!("lan-{}-{}", pan.name, lan.name);
            h3 { "LAN " (lan.name) " · MTU " (lan.mtu) " · "
                 span id=(format!("{id}-arp")) data-live { (lan.arp_entries) " ARP entries" } " "
                 (confirm_form(viewer, "delete-lan", back, "delete", &[("pan", pan.name.clone()), ("name", lan.name.clone())])) }
            (panel(&format!("{id}-charts"), &format!("/api/v1/pans/{}/lans/{}/series", pan.name, lan.name),
                &format!("LAN {} traffic", lan.name), &history, &Subject::Lan(pan.name.clone(), lan.name.clone())))
            (port_table(&format!("{id}-ports"), pan, lan))
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

/// A LAN's ports with their counters (live, as `id`).
pub(crate) fn port_table(id: &str, pan: &PanView, lan: &LanView) -> Markup {
    html! {
        table.ports id=(id) data-live {
            thead { tr { th scope="col" { "node" } th scope="col" { "kind" } th scope="col" { "netns" } th scope="col" { "MAC" }
                th scope="col" { "IPs" } th scope="col" { "frames in" } th scope="col" { "frames out" }
                th scope="col" { "bytes in" } th scope="col" { "bytes out" } th scope="col" { "drops" } } }
            tbody {
                @for p in &lan.ports {
                    tr {
                        td.name title=(p.node) { a href=(format!("/pans/{}/nodes/{}", pan.name, p.node)) { (p.node) } }
                        td { (p.kind) } td.name title=(p.netns.as_deref().unwrap_or("")) { (p.netns.as_deref().unwrap_or("-")) }
                        td { code { (p.mac.as_deref().unwrap_or("-")) } } td { (p.ips.join(", ")) }
                        td.num { (p.frames_in) } td.num { (p.frames_out) }
                        td.num { (bytes(p.bytes_in)) } td.num { (bytes(p.bytes_out)) }
                        td.num {
                            (p.drops)
                            @if p.oversize_drops > 0 {
                                span.error { " (" (p.oversize_drops) " over the MTU, up to " (p.largest_oversize)
                                    " bytes: the node's MTU is above the LAN's " (lan.mtu) ")" }
                            }
                        }
                    }
                }
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
            @let id = format!("cluster-{}-{}-{}", pan.name, lan.name, c.cluster.name);
            h4 { "cluster " (c.cluster.name) " · " code { (c.cluster.ip) } " · MAC " code { (c.mac.as_deref().unwrap_or("-")) }
                 " · " span id=(format!("{id}-flows")) data-live { (c.flows) " flows · " (c.new_flows) " new · " (c.drops) " dropped" } " "
                 (confirm_form(viewer, "delete-cluster", back, "delete", &ids(c))) }
            table.clusters id=(id) data-live {
                tr { th scope="col" { "service" } th scope="col" { "node" } th scope="col" { "health" } th scope="col" { "sticky" }
                     th scope="col" { "check" } @if viewer.csrf().is_some() { th scope="col" { "actions" } } }
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

/// Events the dashboard shows.
const DASHBOARD_EVENTS: usize = 15;

async fn dashboard(State(s): State<WebState>, viewer: Viewer) -> Markup {
    let (o, events) = (s.overview().await, s.events(0, DASHBOARD_EVENTS).await);
    let body = html! {
        p { "Control node " code { (o.serial) } ". netvirt " @if o.netvirt { "running" } @else { "off" } "." }
        (panel("gateway", "/api/v1/series", "the gateway's I/O", &s.history(), &Subject::Gateway))
        @for pan in &o.pans {
            section.pan data-pan=(pan.name) {
                h2 { "PAN " a href=(format!("/pans/{}", pan.name)) { (pan.name) } }
                h3 { "Nodes" }
                table.nodes id=(format!("nodes-{}", pan.name)) data-live {
                    thead { tr { th scope="col" { "node" } th scope="col" { "maps" } th scope="col" { "ring queue pairs" }
                        th scope="col" { "outstanding" } th scope="col" { "protocol errors" } } }
                    tbody {
                        @for n in &pan.nodes {
                            tr {
                                td.name title=(n.name) { a href=(format!("/pans/{}/nodes/{}", pan.name, n.name)) { (n.name) } }
                                td { @for m in &n.maps { (format!("t{} l{} → {} ({}) ", m.target, m.lun, m.image, access_name(m.access))) } }
                                td.num { (n.ring_connections) } td.num { (n.outstanding_commands) } td.num { (n.protocol_errors) }
                            }
                        }
                    }
                }
                h3 { "LUNs" }
                (lun_rows(&s, &format!("luns-{}", pan.name), pan, &viewer, "/"))
                (lan_tables(&s, pan, &viewer, "/"))
            }
        }
        (change_form(&viewer, "create-pan", "/", "Create PAN", html! { label { "name " input name="pan" required; } }))
        section.events {
            h2 { "Recent events" }
            div #events data-live { (event_table(&events)) }
            p { a href="/events" { "all events" } }
        }
    };
    layout_with("Dashboard", &viewer, Some(&o), body)
}

pub(crate) fn access_name(a: Access) -> &'static str {
    match a {
        Access::Ro => "ro",
        Access::Rw => "rw",
    }
}

async fn pan_page(State(s): State<WebState>, viewer: Viewer, Params(name): Params<String>) -> Result<Markup, Problem> {
    let o = s.overview().await;
    let pan = find_pan(&o, &name)?;
    let back = format!("/pans/{}", pan.name);
    let p = || ("pan", pan.name.clone());
    let body = html! {
        (panel("pan", &format!("/api/v1/pans/{}/series", pan.name), &format!("PAN {} I/O", pan.name), &s.history(),
            &Subject::Pan(pan.name.clone())))
        h2 { "Topology" }
        div #topology data-live { (crate::topology::topology(&pan)) }
        h2 { "Nodes" }
        table.nodes #nodes data-live {
            tr { th scope="col" { "node" } th scope="col" { "uid" } th scope="col" { "map" } th scope="col" { "ring queue pairs" }
                 th scope="col" { "failover" } @if viewer.csrf().is_some() { th scope="col" { "actions" } } }
            @for n in &pan.nodes {
                tr data-node=(n.name) {
                    td.name title=(n.name) { a href=(format!("/pans/{}/nodes/{}", pan.name, n.name)) { (n.name) } @if n.spare { " (spare)" } }
                    td { (n.uid.map_or("-".to_string(), |u| u.to_string())) }
                    td {
                        @for m in &n.maps {
                            div { (format!("target {} LUN {} → {} ({}) ", m.target, m.lun, m.image, access_name(m.access)))
                                (confirm_form(&viewer, "unmap", &back, "unmap", &[p(), ("node", n.name.clone()),
                                    ("target", m.target.to_string()), ("lun", m.lun.to_string())])) }
                        }
                    }
                    td.num { (n.ring_connections) }
                    td { @if !n.spare { (n.failover) " " (confirm_form(&viewer, "failover", &back, "fail over",
                        &[p(), ("node", n.name.clone())])) } }
                    @if viewer.csrf().is_some() { td { (confirm_form(&viewer, "delete-node", &back, "delete", &[p(), ("node", n.name.clone())])) } }
                }
            }
        }
        h2 { "LUNs" }
        (lun_rows(&s, "luns", &pan, &viewer, &back))
        h2 { "LANs" }
        (lan_tables(&s, &pan, &viewer, &back))
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
        div #events data-live { (event_table(&events)) }
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

/// The pages' routes.
pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/pans/{pan}", get(pan_page))
        .route("/pans/{pan}/luns/{lun}", get(crate::detail::lun_page))
        .route("/pans/{pan}/nodes/{node}", get(crate::detail::node_page))
        .route("/ui/change", post(post_change))
        .route("/ui/confirm", get(confirm_page))
        .route("/events", get(events_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .merge(crate::assets::routes())
}
