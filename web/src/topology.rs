//! A PAN's topology as one server-drawn SVG: its LUNs on the left, its nodes in the middle,
//! its LANs (with their service clusters) on the right, a line for every map entry and
//! every LAN port. Storage and network side by side, which the tables show apart.

use maud::{html, Markup};

use crate::model::PanView;

/// Height of one row of boxes, and the drawing's geometry.
const ROW: f64 = 44.0;
const BOX_H: f64 = 30.0;
const BOX_W: f64 = 170.0;
const TOP: f64 = 34.0;
const WIDTH: f64 = 760.0;
/// Left edges of the three columns: LUNs, nodes, LANs.
const COLUMNS: [f64; 3] = [10.0, 295.0, 580.0];

/// The longest label drawn in a box; longer names are cut, and the whole one is the box's
/// tooltip.
const LABEL_CHARS: usize = 22;

fn label(name: &str) -> String {
    match name.char_indices().nth(LABEL_CHARS) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_string(),
    }
}

/// The vertical middle of row `i`.
fn middle(i: usize) -> f64 {
    TOP + ROW * i as f64 + BOX_H / 2.0
}

/// One box with its label and tooltip.
fn node_box(x: f64, row: usize, class: &str, text: &str, title: &str) -> Markup {
    let y = TOP + ROW * row as f64;
    html! {
        g class=(class) {
            title { (title) }
            rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="4" {}
            text x=(x + 8.0) y=(y + 19.0) { (label(text)) }
        }
    }
}

/// The SVG of `pan`.
pub fn topology(pan: &PanView) -> Markup {
    // LANs take a row each, and a row under them for each of their clusters.
    let mut lan_rows = Vec::new();
    let mut row = 0;
    for lan in &pan.lans {
        lan_rows.push(row);
        row += 1 + lan.clusters.len();
    }
    let rows = pan.luns.len().max(pan.nodes.len()).max(row).max(1);
    let height = TOP + ROW * rows as f64 + 10.0;
    let node_row = |name: &str| pan.nodes.iter().position(|n| n.name == name);
    let lun_row = |name: &str| pan.luns.iter().position(|l| l.name == name);
    let [luns_x, nodes_x, lans_x] = COLUMNS;
    html! {
        svg.topology width=(WIDTH) height=(height) viewBox=(format!("0 0 {WIDTH} {height}")) role="img"
            aria-label=(format!("topology of PAN {}: {} LUNs, {} nodes, {} LANs", pan.name, pan.luns.len(), pan.nodes.len(), pan.lans.len())) {
            text.heading x=(luns_x) y="18" { "LUNs" }
            text.heading x=(nodes_x) y="18" { "nodes" }
            text.heading x=(lans_x) y="18" { "LANs" }
            // Lines first, so boxes sit on top of them.
            @for (n, node) in pan.nodes.iter().enumerate() {
                @for m in &node.maps {
                    @if let Some(l) = lun_row(&m.image) {
                        g.map {
                            title { (format!("{} maps {} as target {} LUN {}", node.name, m.image, m.target, m.lun)) }
                            line x1=(luns_x + BOX_W) y1=(middle(l)) x2=(nodes_x) y2=(middle(n)) {}
                        }
                    }
                }
            }
            @for (lan, &r) in pan.lans.iter().zip(&lan_rows) {
                @for p in &lan.ports {
                    @if let Some(n) = node_row(&p.node) {
                        g.port {
                            title { (format!("{} on LAN {} ({}): {}", p.node, lan.name, p.kind,
                                if p.ips.is_empty() { "no address".to_string() } else { p.ips.join(", ") })) }
                            line x1=(nodes_x + BOX_W) y1=(middle(n)) x2=(lans_x) y2=(middle(r)) {}
                        }
                    }
                }
            }
            @for (i, l) in pan.luns.iter().enumerate() {
                (node_box(luns_x, i, "lun", &l.name, &format!("LUN {} · {}", l.name, crate::units::bytes(l.size_bytes))))
            }
            @for (i, n) in pan.nodes.iter().enumerate() {
                @let what = if n.spare { " (spare)" } else { "" };
                (node_box(nodes_x, i, if n.spare { "node spare" } else { "node" }, &format!("{}{what}", n.name),
                    &format!("node {}{what}: {} ring queue pairs", n.name, n.ring_connections)))
            }
            @for (lan, &r) in pan.lans.iter().zip(&lan_rows) {
                (node_box(lans_x, r, "lan", &lan.name, &format!("LAN {} · MTU {} · {} ports", lan.name, lan.mtu, lan.ports.len())))
                @for (k, c) in lan.clusters.iter().enumerate() {
                    (node_box(lans_x + 16.0, r + 1 + k, "cluster", &format!("{} {}", c.cluster.name, c.cluster.ip),
                        &format!("cluster {} at {} · {} flows", c.cluster.name, c.cluster.ip, c.flows)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LanView, LunView, MapView, NodeView, PortView};

    #[test]
    fn every_map_and_port_is_a_line_between_its_boxes() {
        let pan = PanView {
            name: "p".into(),
            luns: vec![LunView { name: "disk".into(), ..Default::default() }],
            nodes: vec![
                NodeView {
                    name: "a".into(),
                    maps: vec![MapView { target: 0, lun: 1, image: "disk".into(), access: Default::default() }],
                    ..Default::default()
                },
                NodeView { name: "a-node-with-a-very-long-name-indeed".into(), ..Default::default() },
            ],
            lans: vec![LanView {
                name: "lan0".into(),
                ports: vec![PortView {
                    node: "a".into(),
                    kind: "tap".into(),
                    ips: vec!["198.18.0.1/24".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let svg = topology(&pan).into_string();
        assert_eq!(svg.matches("<g class=\"map\">").count(), 1, "{svg}");
        assert_eq!(svg.matches("<g class=\"port\">").count(), 1, "{svg}");
        assert!(svg.contains("a maps disk as target 0 LUN 1"), "{svg}");
        assert!(svg.contains("a on LAN lan0 (tap): 198.18.0.1/24"), "{svg}");
        // The map's line runs from the LUN's box (row 0) to node a's (row 0).
        assert!(svg.contains(r#"<line x1="180" y1="49" x2="295" y2="49">"#), "{svg}");
        // A long name is cut in its box and whole in its tooltip.
        assert!(svg.contains("a-node-with-a-very-lon…") && svg.contains("node a-node-with-a-very-long-name-indeed:"));
    }
}
