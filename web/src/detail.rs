//! The pages of one LUN and of one node: their charts, counters and maps.

use axum::extract::State;
use maud::{html, Markup};

use crate::api::{find_lun, find_node, find_pan, Params};
use crate::auth::Viewer;
use crate::charts::panel;
use crate::history::Subject;
use crate::pages::{access_name, change_form, layout_with, port_table};
use crate::problem::Problem;
use crate::units::bytes;
use crate::WebState;

pub(crate) async fn lun_page(
    State(s): State<WebState>,
    viewer: Viewer,
    Params((pan, lun)): Params<(String, String)>,
) -> Result<Markup, Problem> {
    let o = s.overview().await;
    let p = find_pan(&o, &pan)?;
    let l = find_lun(&o, &pan, &lun)?;
    let back = format!("/pans/{pan}/luns/{lun}");
    let subject = Subject::Lun(pan.clone(), lun.clone());
    let c = &l.counters;
    let body = html! {
        p { a href=(format!("/pans/{pan}")) { "PAN " (pan) } " · " code.long title=(l.path) { (l.path) } " · " (bytes(l.size_bytes))
            " · " (l.block_size) "-byte blocks" }
        (panel("lun", &format!("/api/v1/pans/{pan}/luns/{lun}/series"), &format!("LUN {lun} I/O"), &s.history(), &subject))
        h2 { "Since the gateway started" }
        table.counters #counters data-live {
            tr { th scope="row" { "commands" } td.num.commands { (c.commands) } }
            tr { th scope="row" { "reads" } td.num.reads { (c.reads) } }
            tr { th scope="row" { "writes" } td.num.writes { (c.writes) } }
            tr { th scope="row" { "read" } td.num { (bytes(c.bytes_read)) } }
            tr { th scope="row" { "written" } td.num { (bytes(c.bytes_written)) } }
            tr { th scope="row" { "time with I/O in progress" } td.num { (format!("{:.3} s", c.busy_seconds)) } }
        }
        h2 { "Mapped by" }
        ul #mapped data-live { @for n in &p.nodes { @for m in n.maps.iter().filter(|m| m.image == lun) {
            li { a href=(format!("/pans/{pan}/nodes/{}", n.name)) { (n.name) } ": target " (m.target) " LUN " (m.lun)
                " (" (access_name(m.access)) ")" } } } }
        (change_form(&viewer, "resize-lun", &back, "Resize", html! {
            input type="hidden" name="pan" value=(pan);
            input type="hidden" name="name" value=(lun);
            label { "new size " input name="size" placeholder="2G" required; }
        }))
    };
    Ok(layout_with(&format!("LUN {lun}"), &viewer, Some(&o), body))
}

pub(crate) async fn node_page(
    State(s): State<WebState>,
    viewer: Viewer,
    Params((pan, node)): Params<(String, String)>,
) -> Result<Markup, Problem> {
    let o = s.overview().await;
    let p = find_pan(&o, &pan)?;
    let n = find_node(&o, &pan, &node)?;
    let subject = Subject::Node(pan.clone(), node.clone());
    let lans: Vec<_> = p.lans.iter().filter(|l| l.ports.iter().any(|x| x.node == node)).collect();
    let body = html! {
        p { a href=(format!("/pans/{pan}")) { "PAN " (pan) } " · " @if n.spare { "spare" } @else { "failover " (n.failover) }
            " · uid " (n.uid.map_or("-".to_string(), |u| u.to_string())) }
        (panel("node", &format!("/api/v1/pans/{pan}/nodes/{node}/series"), &format!("node {node}"), &s.history(), &subject))
        @if n.counters.is_none() {
            p { "The node's own I/O is charted when the gateway keeps LUN counters per node: "
                code { "per_node_metrics = true" } " in " code { "[web]" } ". Its LUNs' charts are on their pages." }
        }
        h2 { "Rings" }
        table #rings data-live {
            tr { th scope="row" { "queue pairs open" } td.num { (n.ring_connections) } }
            tr { th scope="row" { "commands outstanding" } td.num { (n.outstanding_commands) } }
            tr { th scope="row" { "queue pairs closed for protocol errors" } td.num { (n.protocol_errors) } }
        }
        h2 { "LUN map" }
        @if n.maps.is_empty() { p { "No LUNs are mapped." } } @else {
            table.maps {
                tr { th scope="col" { "target" } th scope="col" { "LUN" } th scope="col" { "image" } th scope="col" { "access" } }
                @for m in &n.maps {
                    tr { td.num { (m.target) } td.num { (m.lun) }
                         td.name title=(m.image) { a href=(format!("/pans/{pan}/luns/{}", m.image)) { (m.image) } }
                         td { (access_name(m.access)) } }
                }
            }
        }
        h2 { "LAN ports" }
        @if lans.is_empty() { p { "The node has no LAN ports." } }
        @for lan in lans {
            @let mine = crate::model::LanView { ports: lan.ports.iter().filter(|x| x.node == node).cloned().collect(), ..lan.clone() };
            h3 { "LAN " (lan.name) " · MTU " (lan.mtu) }
            (port_table(&format!("ports-{}", lan.name), &p, &mine))
        }
    };
    Ok(layout_with(&format!("Node {node}"), &viewer, Some(&o), body))
}
