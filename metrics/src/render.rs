//! Turns the counters into Prometheus metric families at scrape time.

use prometheus::core::Collector;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::{Metrics, TrafficSample, LATENCY_BUCKETS};

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

/// A family under construction.
struct Family {
    inner: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_string());
        inner.set_help(help.to_string());
        inner.set_field_type(kind);
        Family { inner }
    }

    fn value(&mut self, pairs: &[(&str, &str)], v: f64) {
        let mut m = Metric::from_label(labels(pairs));
        match self.inner.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        self.inner.mut_metric().push(m);
    }

    fn histogram(&mut self, pairs: &[(&str, &str)], cumulative: &[u64], count: u64, sum: f64) {
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        h.set_bucket(
            LATENCY_BUCKETS
                .iter()
                .zip(cumulative)
                .map(|(&le, &n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        let mut m = Metric::from_label(labels(pairs));
        m.set_histogram(h);
        self.inner.mut_metric().push(m);
    }
}

/// Traffic families for one scope (`lan` or `port`).
struct TrafficFamilies {
    frames: Family,
    bytes: Family,
    drops: Family,
}

impl TrafficFamilies {
    fn new(scope: &str, what: &str) -> TrafficFamilies {
        let f = |n: &str, h: &str| {
            Family::new(&format!("pangate_{scope}_{n}"), &format!("{h} {what}"), MetricType::COUNTER)
        };
        TrafficFamilies {
            frames: f("frames_total", "Frames by direction (in: toward the switch) of each"),
            bytes: f("bytes_total", "Bytes by direction (in: toward the switch) of each"),
            drops: f("dropped_frames_total", "Frames the switch dropped, by reason, from each"),
        }
    }

    fn add(&mut self, pairs: &[(&str, &str)], t: &TrafficSample) {
        let with = |dir: &'static str| {
            let mut v = pairs.to_vec();
            v.push(("direction", dir));
            v
        };
        self.frames.value(&with("in"), t.frames_in as f64);
        self.frames.value(&with("out"), t.frames_out as f64);
        self.bytes.value(&with("in"), t.bytes_in as f64);
        self.bytes.value(&with("out"), t.bytes_out as f64);
        for (reason, n) in &t.drops {
            let mut v = pairs.to_vec();
            v.push(("reason", reason));
            self.drops.value(&v, *n as f64);
        }
    }

    fn into_families(self) -> [Family; 3] {
        [self.frames, self.bytes, self.drops]
    }
}

impl Metrics {
    /// Every family pangate exports, process metrics included.
    pub fn gather(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let mut build = Family::new("pangate_build_info", "pangate's version; always 1", GAUGE);
        build.value(&[("version", self.version())], 1.0);

        let mut commands = Family::new("pangate_lun_commands_total", "SCSI commands by opcode", COUNTER);
        let mut completions = Family::new("pangate_lun_completions_total", "SCSI commands by status", COUNTER);
        let mut reads = Family::new("pangate_lun_reads_total", "Commands that read the medium", COUNTER);
        let mut writes = Family::new("pangate_lun_writes_total", "Commands that wrote the medium", COUNTER);
        let mut read_bytes = Family::new("pangate_lun_read_bytes_total", "Bytes read from the medium", COUNTER);
        let mut written_bytes = Family::new("pangate_lun_written_bytes_total", "Bytes written to the medium", COUNTER);
        let mut busy =
            Family::new("pangate_lun_busy_seconds_total", "Seconds with at least one command in progress", COUNTER);
        let mut in_flight = Family::new("pangate_lun_commands_in_progress", "Commands with the backend now", GAUGE);
        let mut latency = Family::new(
            "pangate_lun_command_duration_seconds",
            "Time from submission to the backend until completion",
            HISTOGRAM,
        );
        for (k, s) in self.luns() {
            // {pan, lun}; with per-node metrics also {node, target, node_lun}.
            let (target, number) =
                k.node.as_ref().map_or((String::new(), String::new()), |n| (n.target.to_string(), n.lun.to_string()));
            let mut base = vec![("pan", k.pan.as_str()), ("lun", k.lun.as_str())];
            if let Some(n) = &k.node {
                base.extend([("node", n.node.as_str()), ("target", &*target), ("node_lun", &*number)]);
            }
            for &(op, n) in &s.opcodes {
                let name = self.opcode_label(op);
                let mut l = base.to_vec();
                l.push(("opcode", &name));
                commands.value(&l, n as f64);
            }
            for (status, n) in &s.statuses {
                let mut l = base.to_vec();
                l.push(("status", status));
                completions.value(&l, *n as f64);
            }
            reads.value(&base, s.reads as f64);
            writes.value(&base, s.writes as f64);
            read_bytes.value(&base, s.bytes_read as f64);
            written_bytes.value(&base, s.bytes_written as f64);
            busy.value(&base, s.busy_seconds);
            in_flight.value(&base, s.in_flight as f64);
            latency.histogram(&base, &s.latency_buckets, s.latency_count, s.latency_sum_seconds);
        }

        let mut conns = Family::new("pangate_ring_connections", "Open queue pairs", GAUGE);
        let mut outstanding =
            Family::new("pangate_ring_outstanding_commands", "Commands accepted and not yet answered", GAUGE);
        let mut rung = Family::new("pangate_ring_doorbells_rung_total", "Doorbells the gateway rang", COUNTER);
        let mut avoided = Family::new(
            "pangate_ring_doorbells_avoided_total",
            "Doorbells not rung because the node was polling",
            COUNTER,
        );
        let mut errors =
            Family::new("pangate_ring_protocol_errors_total", "Queue pairs closed for protocol errors", COUNTER);
        for ((pan, node), s) in self.rings() {
            let base = [("pan", pan.as_str()), ("node", node.as_str())];
            conns.value(&base, s.connections as f64);
            outstanding.value(&base, s.outstanding as f64);
            rung.value(&base, s.doorbells_rung as f64);
            avoided.value(&base, s.doorbells_avoided as f64);
            for (reason, n) in &s.protocol_errors {
                errors.value(&[base[0], base[1], ("reason", reason)], *n as f64);
            }
        }

        let mut refused = Family::new(
            "pangate_ring_handshakes_refused_total",
            "Handshakes refused, by reason (limits, credentials, timeouts)",
            COUNTER,
        );
        for (reason, n) in self.handshakes_refused() {
            refused.value(&[("reason", reason)], n as f64);
        }
        let mut failovers = Family::new(
            "pangate_failovers_total",
            "Failovers of a node's personality to a spare, by trigger (manual, auto) and outcome (done, failed)",
            COUNTER,
        );
        for ((pan, trigger, outcome), n) in self.failovers() {
            failovers.value(&[("pan", pan.as_str()), ("trigger", trigger), ("outcome", outcome)], n as f64);
        }
        let mut fuse = Family::new(
            "pangate_fuse_mounts",
            "FUSE mounts (pangate mount processes) with a queue pair open to the gateway",
            GAUGE,
        );
        fuse.value(&[], self.fuse_mounts() as f64);

        let mut lan = TrafficFamilies::new("lan", "LAN");
        let mut port = TrafficFamilies::new("port", "port (or uplink)");
        let mut arp = Family::new("pangate_lan_arp_entries", "IP-to-port bindings of the LAN's ARP server", GAUGE);
        let mut flows = Family::new("pangate_cluster_flows", "Flows in a service cluster's connection table", GAUGE);
        let mut evicted =
            Family::new("pangate_cluster_evicted_flows_total", "Flows evicted from a full connection table", COUNTER);
        let mut relayed =
            Family::new("pangate_cluster_forwarded_packets_total", "Packets relayed to backends", COUNTER);
        let mut picked = Family::new("pangate_cluster_new_flows_total", "Flows that picked a backend", COUNTER);
        let mut echoes = Family::new("pangate_cluster_echo_replies_total", "Pings the cluster answered", COUNTER);
        let mut dropped = Family::new(
            "pangate_cluster_dropped_packets_total",
            "Packets to the cluster IP dropped, by reason (port, no_backend, fragment, protocol, malformed)",
            COUNTER,
        );
        let mut state = Family::new(
            "pangate_cluster_backend_state",
            "1 for each backend's state (up, draining, down), by service and node",
            GAUGE,
        );
        for l in self.lans() {
            let base = [("pan", l.pan.as_str()), ("lan", l.lan.as_str())];
            arp.value(&base, l.arp_entries as f64);
            lan.add(&base, &l.traffic);
            for p in &l.ports {
                port.add(&[base[0], base[1], ("port", p.port.as_str())], &p.traffic);
            }
            for c in &l.clusters {
                let cb = [base[0], base[1], ("cluster", c.cluster.as_str())];
                flows.value(&cb, c.flows as f64);
                evicted.value(&cb, c.evicted as f64);
                relayed.value(&cb, c.forwarded as f64);
                picked.value(&cb, c.new_flows as f64);
                echoes.value(&cb, c.echo_replies as f64);
                for (reason, n) in &c.drops {
                    dropped.value(&[cb[0], cb[1], cb[2], ("reason", reason)], *n as f64);
                }
                for (proto, svc, node, st) in &c.backends {
                    let svc = svc.to_string();
                    let l = [
                        cb[0],
                        cb[1],
                        cb[2],
                        ("proto", proto.as_str()),
                        ("port", svc.as_str()),
                        ("node", node.as_str()),
                        ("state", st.as_str()),
                    ];
                    state.value(&l, 1.0);
                }
            }
        }

        let mut sessions = Family::new("pangate_iscsi_sessions", "iSCSI sessions now, by portal and kind", GAUGE);
        let mut logins = Family::new("pangate_iscsi_logins_total", "iSCSI logins, by portal and result", COUNTER);
        let mut pdus = Family::new("pangate_iscsi_pdus_total", "iSCSI PDUs received, by portal and opcode", COUNTER);
        let mut ended = Family::new(
            "pangate_iscsi_connection_errors_total",
            "iSCSI connections ended by an error (digest, protocol, timeout), by portal and reason",
            COUNTER,
        );
        let mut full = Family::new(
            "pangate_iscsi_connections_refused_total",
            "iSCSI connections closed at accept because the gateway held its maximum",
            COUNTER,
        );
        for p in self.iscsi() {
            let portal = ("portal", p.portal.as_str());
            for (kind, n) in &p.sessions {
                sessions.value(&[portal, ("kind", kind)], *n as f64);
            }
            for (result, n) in &p.logins {
                logins.value(&[portal, ("result", result)], *n as f64);
            }
            for (opcode, n) in &p.pdus {
                pdus.value(&[portal, ("opcode", opcode)], *n as f64);
            }
            for (reason, n) in &p.errors {
                ended.value(&[portal, ("reason", reason)], *n as f64);
            }
            full.value(&[portal], p.refused_connections as f64);
        }

        let mut out: Vec<MetricFamily> = [
            build,
            commands,
            completions,
            reads,
            writes,
            read_bytes,
            written_bytes,
            busy,
            in_flight,
            latency,
            conns,
            outstanding,
            rung,
            avoided,
            errors,
            refused,
            failovers,
            fuse,
            arp,
            flows,
            evicted,
            relayed,
            picked,
            echoes,
            dropped,
            state,
            sessions,
            logins,
            pdus,
            ended,
            full,
        ]
        .into_iter()
        .chain(lan.into_families())
        .chain(port.into_families())
        .filter(|f| !f.inner.get_metric().is_empty())
        .map(|f| f.inner)
        .collect();
        out.extend(prometheus::process_collector::ProcessCollector::for_self().collect());
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// The text exposition format (version 0.0.4) of [`gather`](Self::gather).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.gather(), &mut text) {
            // Only label values that are not UTF-8 can fail, and ours are Strings.
            text = format!("# pangate: encoding metrics failed: {e}\n");
        }
        text
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use crate::{ClusterSample, LanSample, LunKey, Metrics, PortSample, TrafficSample, Transfer};

    fn names(op: u8) -> Option<&'static str> {
        (op == 0x28).then_some("READ_10")
    }

    #[test]
    fn renders_every_family_with_its_labels() {
        let m = Metrics::new(names, "1.2.3");
        // Two nodes' entries of one LUN count into the LUN's one set of series.
        let lun = m.lun_for("p", "vol", "n", 0, 3);
        assert!(std::sync::Arc::ptr_eq(&lun, &m.lun_for("p", "vol", "other", 1, 7)));
        let idle = m.lun(LunKey::of_lun("p", "idle"));
        drop(idle);
        lun.started(0);
        lun.finished(0x28, 0, Transfer::Read(8192), 0, 30_000);
        lun.answered(0x2a, 2, Transfer::None);
        let ring = m.ring("p", "n");
        ring.connected();
        ring.doorbell(true);
        ring.protocol_error("bad_region");
        m.set_lan_sampler(Box::new(|| {
            vec![LanSample {
                pan: "p".into(),
                lan: "l".into(),
                arp_entries: 2,
                traffic: TrafficSample { frames_in: 5, drops: vec![("mac_spoof".into(), 1)], ..Default::default() },
                ports: vec![PortSample { port: "n".into(), traffic: TrafficSample::default() }],
                clusters: vec![ClusterSample {
                    cluster: "web".into(),
                    flows: 3,
                    new_flows: 4,
                    drops: vec![("port".into(), 2)],
                    backends: vec![("tcp".into(), 80, "n".into(), "draining".into())],
                    ..Default::default()
                }],
            }]
        }));
        let text = m.render();
        for want in [
            r#"pangate_build_info{version="1.2.3"} 1"#,
            r#"pangate_lun_commands_total{pan="p",lun="vol",opcode="READ_10"} 1"#,
            r#"pangate_lun_commands_total{pan="p",lun="vol",opcode="0x2a"} 1"#,
            r#"pangate_lun_completions_total{pan="p",lun="vol",status="check_condition"} 1"#,
            r#"pangate_lun_read_bytes_total{pan="p",lun="vol"} 8192"#,
            r#"pangate_lun_command_duration_seconds_bucket{pan="p",lun="vol",le="0.00005"} 1"#,
            r#"pangate_lun_command_duration_seconds_count{pan="p",lun="vol"} 1"#,
            r#"pangate_lun_read_bytes_total{pan="p",lun="idle"} 0"#,
            r#"pangate_ring_connections{pan="p",node="n"} 1"#,
            r#"pangate_ring_protocol_errors_total{pan="p",node="n",reason="bad_region"} 1"#,
            r#"pangate_lan_frames_total{pan="p",lan="l",direction="in"} 5"#,
            r#"pangate_lan_dropped_frames_total{pan="p",lan="l",reason="mac_spoof"} 1"#,
            r#"pangate_port_frames_total{pan="p",lan="l",port="n",direction="out"} 0"#,
            r#"pangate_lan_arp_entries{pan="p",lan="l"} 2"#,
            r#"pangate_cluster_flows{pan="p",lan="l",cluster="web"} 3"#,
            r#"pangate_cluster_new_flows_total{pan="p",lan="l",cluster="web"} 4"#,
            r#"pangate_cluster_dropped_packets_total{pan="p",lan="l",cluster="web",reason="port"} 2"#,
            r#"pangate_cluster_backend_state{pan="p",lan="l",cluster="web",proto="tcp",port="80",node="n",state="draining"} 1"#,
            "# TYPE pangate_lun_command_duration_seconds histogram",
            "process_cpu_seconds_total",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // The 25 µs bucket must not yet hold the 30 µs command.
        assert!(text.contains(r#"lun="vol",le="0.000025"} 0"#), "{text}");
        assert!(!text.contains("node_lun"), "no per-node series unless asked for");
    }

    #[test]
    fn per_node_metrics_break_a_lun_down_by_map_entry() {
        let m = Metrics::new(names, "1").with_per_node(true);
        m.lun_for("p", "vol", "n", 0, 3).answered(0x28, 0, Transfer::None);
        m.lun_for("p", "vol", "o", 1, 7).answered(0x28, 0, Transfer::None);
        let text = m.render();
        for want in [
            r#"pangate_lun_commands_total{pan="p",lun="vol",node="n",target="0",node_lun="3",opcode="READ_10"} 1"#,
            r#"pangate_lun_commands_total{pan="p",lun="vol",node="o",target="1",node_lun="7",opcode="READ_10"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
