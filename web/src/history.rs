//! The last hour of the gateway's figures, sampled from its counters once a second, for
//! the pages' charts: per LUN, node, LAN and PAN and for the whole gateway, rates of I/O
//! and traffic and the latency percentiles of each second's commands.
//!
//! Sans-IO: [`History::record`] takes an [`Overview`] and the time it was read at;
//! [`History::series`] answers what the charts ask for.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{LunCounters, Overview, PortView};

/// Points kept per subject: an hour at one a second.
pub const KEEP: usize = 3600;

/// What a series is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Every LUN of the gateway.
    Gateway,
    /// Every LUN of a PAN.
    Pan(String),
    /// A LUN of a PAN.
    Lun(String, String),
    /// A node of a PAN: its I/O (with per-node metrics) and its LAN ports' traffic.
    Node(String, String),
    /// A LAN of a PAN: its ports' traffic.
    Lan(String, String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Gateway => f.write_str("the gateway"),
            Subject::Pan(p) => write!(f, "PAN {p:?}"),
            Subject::Lun(p, l) => write!(f, "LUN {l:?} of PAN {p:?}"),
            Subject::Node(p, n) => write!(f, "node {n:?} of PAN {p:?}"),
            Subject::Lan(p, l) => write!(f, "LAN {l:?} of PAN {p:?}"),
        }
    }
}

/// A group of counters a subject is charted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Reads and writes, their bytes, and a latency histogram.
    Storage,
    /// Frames and bytes in and out of LAN ports, and drops.
    Network,
}

/// One chart: its title, the unit of its y-axis and its series' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChartSpec {
    title: &'static str,
    unit: &'static str,
    series: &'static [&'static str],
}

const STORAGE: &[ChartSpec] = &[
    ChartSpec { title: "IOPS", unit: "/s", series: &["read", "write"] },
    ChartSpec { title: "Throughput", unit: "B/s", series: &["read", "write"] },
    ChartSpec { title: "Latency", unit: "s", series: &["p50", "p99"] },
];

const NETWORK: &[ChartSpec] = &[
    ChartSpec { title: "Frames", unit: "/s", series: &["in", "out", "dropped"] },
    ChartSpec { title: "Traffic", unit: "B/s", series: &["in", "out"] },
];

impl ChartSpec {
    fn chart(&self) -> Chart {
        Chart {
            title: self.title.into(),
            unit: self.unit.into(),
            series: self.series.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Part {
    fn charts(self) -> &'static [ChartSpec] {
        match self {
            Part::Storage => STORAGE,
            Part::Network => NETWORK,
        }
    }

    fn columns(self) -> usize {
        self.charts().iter().map(|c| c.series.len()).sum()
    }
}

/// Counter readings of one part at one time.
#[derive(Debug, Clone, Default, PartialEq)]
struct Raw {
    /// Storage: reads, writes, bytes read, bytes written. Network: frames in, frames out,
    /// drops, bytes in, bytes out.
    counters: Vec<u64>,
    /// Storage: cumulative commands at or under each latency bound.
    latency: Vec<u64>,
    /// Storage: commands timed.
    timed: u64,
}

impl Raw {
    fn storage(c: &LunCounters) -> Raw {
        Raw {
            counters: vec![c.reads, c.writes, c.bytes_read, c.bytes_written],
            latency: c.latency_buckets.clone(),
            timed: c.latency_count,
        }
    }

    fn network<'a>(ports: impl IntoIterator<Item = &'a PortView>) -> Raw {
        let mut counters = vec![0; 5];
        for p in ports {
            for (sum, v) in counters.iter_mut().zip([p.frames_in, p.frames_out, p.drops, p.bytes_in, p.bytes_out]) {
                *sum += v;
            }
        }
        Raw { counters, ..Raw::default() }
    }

    fn add(&mut self, other: &Raw) {
        for (v, o) in [(&mut self.counters, &other.counters), (&mut self.latency, &other.latency)] {
            if v.len() < o.len() {
                v.resize(o.len(), 0);
            }
            for (a, b) in v.iter_mut().zip(o) {
                *a += b;
            }
        }
        self.timed += other.timed;
    }
}

/// The values of a part over the interval from `before` to `now`, `dt` seconds long, in
/// the order of its charts' series. Counters that went backwards (a map entry removed, a
/// port re-created) count as zero; a second without timed commands has no percentiles.
fn values(part: Part, before: &Raw, now: &Raw, dt: f64) -> Vec<f32> {
    let rate = |i: usize| {
        let (a, b) = (before.counters.get(i).copied().unwrap_or(0), now.counters.get(i).copied().unwrap_or(0));
        (b.saturating_sub(a) as f64 / dt) as f32
    };
    match part {
        Part::Storage => {
            let delta: Vec<u64> = now
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(before.latency.get(i).copied().unwrap_or(0)))
                .collect();
            let timed = now.timed.saturating_sub(before.timed);
            vec![rate(0), rate(1), rate(2), rate(3), quantile(0.5, &delta, timed), quantile(0.99, &delta, timed)]
        }
        Part::Network => (0..5).map(rate).collect(),
    }
}

/// The `q` quantile of `timed` commands whose cumulative counts per bound of
/// [`metrics::LATENCY_BUCKETS`] are `cumulative`, interpolated linearly within its bucket
/// as Prometheus' `histogram_quantile` does; past the last bound, the last bound. NaN when
/// nothing was timed.
fn quantile(q: f64, cumulative: &[u64], timed: u64) -> f32 {
    if timed == 0 {
        return f32::NAN;
    }
    let rank = q * timed as f64;
    let bounds = metrics::LATENCY_BUCKETS;
    let mut below = (0.0, 0u64);
    for (&bound, &count) in bounds.iter().zip(cumulative) {
        if count as f64 >= rank && count > below.1 {
            let share = (rank - below.1 as f64) / (count - below.1) as f64;
            return (below.0 + (bound - below.0) * share) as f32;
        }
        below = (bound, count);
    }
    bounds[bounds.len() - 1] as f32
}

/// One subject's points: sample times and a column per series.
#[derive(Debug)]
struct Track {
    parts: Vec<Part>,
    last: Option<(f64, Vec<Raw>)>,
    times: VecDeque<f64>,
    columns: Vec<VecDeque<f32>>,
}

impl Track {
    fn new(parts: Vec<Part>) -> Track {
        let columns = (0..parts.iter().map(|p| p.columns()).sum()).map(|_| VecDeque::new()).collect();
        Track { parts, last: None, times: VecDeque::new(), columns }
    }

    fn push(&mut self, at: f64, raws: Vec<Raw>) {
        if let Some((before, old)) = &self.last {
            if at <= *before {
                return;
            }
            let dt = at - before;
            let row = self.parts.iter().zip(old.iter().zip(&raws)).flat_map(|(&p, (a, b))| values(p, a, b, dt));
            for (column, v) in self.columns.iter_mut().zip(row) {
                column.push_back(v);
                if column.len() > KEEP {
                    column.pop_front();
                }
            }
            self.times.push_back(at);
            if self.times.len() > KEEP {
                self.times.pop_front();
            }
        }
        self.last = Some((at, raws));
    }
}

/// A chart of a [`Series`].
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Chart {
    /// What it shows: `IOPS`, `Throughput`, `Latency`, `Frames` or `Traffic`.
    pub title: String,
    /// The y-axis' unit: `/s` (operations or frames a second), `B/s` (bytes a second) or
    /// `s` (seconds).
    pub unit: String,
    /// Its series' names (`read`, `write`; `p50`, `p99`; `in`, `out`, `dropped`).
    pub series: Vec<String>,
}

/// A subject's recent figures, one point a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Series {
    /// The charts; their series' columns follow one another in `values`.
    pub charts: Vec<Chart>,
    /// When each point was sampled, in seconds since the Unix epoch (at the end of the
    /// second it covers).
    pub t: Vec<f64>,
    /// A column per series, in the order of `charts`; null where nothing was measured (a
    /// latency percentile of a second without commands).
    pub values: Vec<Vec<Option<f32>>>,
}

/// Every subject's track.
#[derive(Debug, Default)]
pub struct History {
    tracks: HashMap<Subject, Track>,
}

impl History {
    /// Records every subject's counters as read at `at` (seconds since the Unix epoch).
    /// Subjects no longer in `overview` are forgotten.
    pub fn record(&mut self, overview: &Overview, at: f64) {
        let now = readings(overview);
        self.tracks.retain(|s, _| now.contains_key(s));
        for (subject, parts) in now {
            let (kinds, raws): (Vec<Part>, Vec<Raw>) = parts.into_iter().unzip();
            let track = self.tracks.entry(subject).or_insert_with(|| Track::new(kinds.clone()));
            if track.parts != kinds {
                *track = Track::new(kinds);
            }
            track.push(at, raws);
        }
    }

    /// A subject's points sampled after `after` (seconds since the Unix epoch), or None if
    /// there is no such subject.
    pub fn series(&self, subject: &Subject, after: f64) -> Option<Series> {
        let track = self.tracks.get(subject)?;
        let skip = track.times.partition_point(|&t| t <= after);
        let charts = track.parts.iter().flat_map(|p| p.charts()).map(ChartSpec::chart).collect();
        Some(Series {
            charts,
            t: track.times.iter().skip(skip).copied().collect(),
            values: track
                .columns
                .iter()
                .map(|c| c.iter().skip(skip).map(|&v| (!v.is_nan()).then_some(v)).collect())
                .collect(),
        })
    }

    /// A subject's charts, each with its series' newest values (NaN where nothing was
    /// measured, zeros before the first point); none for a subject not sampled yet.
    pub fn now(&self, subject: &Subject) -> Vec<(Chart, Vec<f64>)> {
        self.newest(subject).into_iter().map(|(spec, values)| (spec.chart(), values)).collect()
    }

    /// The latest point of a subject's `chart` (by title) as that chart's series' values;
    /// NaN where nothing was measured, zeros before the first point.
    pub fn latest(&self, subject: &Subject, chart: &str) -> Vec<f64> {
        self.newest(subject).into_iter().find(|(spec, _)| spec.title == chart).map(|(_, v)| v).unwrap_or_default()
    }

    /// Each chart of a subject with its series' newest values (none for an unknown one).
    fn newest(&self, subject: &Subject) -> Vec<(&'static ChartSpec, Vec<f64>)> {
        let Some(track) = self.tracks.get(subject) else { return Vec::new() };
        let mut column = 0;
        let specs = track.parts.iter().flat_map(|p| p.charts());
        specs
            .map(|spec| {
                let values = track.columns[column..column + spec.series.len()]
                    .iter()
                    .map(|c| c.back().map_or(0.0, |&v| f64::from(v)))
                    .collect();
                column += spec.series.len();
                (spec, values)
            })
            .collect()
    }
}

/// Each subject's parts and their readings in `o`.
fn readings(o: &Overview) -> HashMap<Subject, Vec<(Part, Raw)>> {
    let mut out = HashMap::new();
    let mut gateway = Raw::default();
    for pan in &o.pans {
        let mut total = Raw::default();
        for lun in &pan.luns {
            let raw = Raw::storage(&lun.counters);
            total.add(&raw);
            out.insert(Subject::Lun(pan.name.clone(), lun.name.clone()), vec![(Part::Storage, raw)]);
        }
        for node in &pan.nodes {
            let mut parts = Vec::new();
            if let Some(c) = &node.counters {
                parts.push((Part::Storage, Raw::storage(c)));
            }
            let ports: Vec<&PortView> =
                pan.lans.iter().flat_map(|l| &l.ports).filter(|p| p.node == node.name).collect();
            if !ports.is_empty() {
                parts.push((Part::Network, Raw::network(ports)));
            }
            out.insert(Subject::Node(pan.name.clone(), node.name.clone()), parts);
        }
        for lan in &pan.lans {
            out.insert(
                Subject::Lan(pan.name.clone(), lan.name.clone()),
                vec![(Part::Network, Raw::network(&lan.ports))],
            );
        }
        gateway.add(&total);
        out.insert(Subject::Pan(pan.name.clone()), vec![(Part::Storage, total)]);
    }
    out.insert(Subject::Gateway, vec![(Part::Storage, gateway)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LanView, LunView, NodeView, PanView};

    /// A PAN with one LUN (`reads` reads of 4 KiB, `timed` of them in 20–25 µs and the
    /// rest in 1–2.5 ms) and one node with a port of `frames` frames.
    fn at(reads: u64, timed_fast: u64, timed_slow: u64, frames: u64) -> Overview {
        let mut latency_buckets = vec![0; metrics::LATENCY_BUCKETS.len()];
        for (i, b) in latency_buckets.iter_mut().enumerate() {
            // Bounds: 5, 10, 25 µs (index 2), …, 1 ms (7), 2.5 ms (8), …
            *b = if i >= 8 {
                timed_fast + timed_slow
            } else if i >= 2 {
                timed_fast
            } else {
                0
            };
        }
        let counters = LunCounters {
            reads,
            bytes_read: reads * 4096,
            latency_buckets,
            latency_count: timed_fast + timed_slow,
            ..Default::default()
        };
        let port = PortView { node: "n".into(), frames_in: frames, bytes_in: frames * 100, ..Default::default() };
        Overview {
            pans: vec![PanView {
                name: "p".into(),
                luns: vec![LunView { name: "l".into(), counters, ..Default::default() }],
                nodes: vec![NodeView { name: "n".into(), ..Default::default() }],
                lans: vec![LanView { name: "lan".into(), ports: vec![port], ..Default::default() }],
            }],
            ..Default::default()
        }
    }

    fn lun() -> Subject {
        Subject::Lun("p".into(), "l".into())
    }

    #[test]
    fn rates_and_percentiles_come_from_consecutive_samples() {
        let mut h = History::default();
        h.record(&at(0, 0, 0, 0), 100.0);
        assert_eq!(h.series(&lun(), 0.0).unwrap().t, Vec::<f64>::new(), "one sample is no rate yet");
        h.record(&at(100, 99, 1, 10), 101.0);
        h.record(&at(300, 99, 101, 30), 103.0);
        let s = h.series(&lun(), 0.0).unwrap();
        assert_eq!(s.t, [101.0, 103.0]);
        assert_eq!(s.charts.iter().map(|c| c.title.as_str()).collect::<Vec<_>>(), ["IOPS", "Throughput", "Latency"]);
        // read and write IOPS, read and write B/s, p50, p99.
        assert_eq!(s.values[0], [Some(100.0), Some(100.0)]);
        assert_eq!(s.values[1], [Some(0.0), Some(0.0)]);
        assert_eq!(s.values[2], [Some(409600.0), Some(409600.0)]);
        // First second: 99 of 100 commands under 25 µs, so the median is in that bucket
        // (10–25 µs, half-way up: rank 50 of 99) and the 99th percentile is its top.
        let p50 = s.values[4][0].unwrap();
        assert!((p50 - (10e-6 + 15e-6 * 50.0 / 99.0) as f32).abs() < 1e-9, "{p50}");
        assert!((s.values[5][0].unwrap() - 25e-6).abs() < 1e-9);
        // Second interval: all 100 slow, so both in 1–2.5 ms.
        assert!((s.values[4][1].unwrap() - 1.75e-3).abs() < 1e-7);
        assert!((s.values[5][1].unwrap() - 2.485e-3).abs() < 1e-7);
        // Only the newer points after a time.
        assert_eq!(h.series(&lun(), 101.0).unwrap().t, [103.0]);
        assert_eq!(h.latest(&lun(), "IOPS"), [100.0, 0.0]);
        // The PAN and the gateway add up their LUNs; the LAN and the node see the port.
        assert_eq!(h.series(&Subject::Pan("p".into()), 0.0).unwrap().values[0], [Some(100.0), Some(100.0)]);
        assert_eq!(h.latest(&Subject::Gateway, "Throughput"), [409600.0, 0.0]);
        let lan = h.series(&Subject::Lan("p".into(), "lan".into()), 0.0).unwrap();
        assert_eq!(lan.values[0], [Some(10.0), Some(10.0)]);
        assert_eq!(lan.values[3], [Some(1000.0), Some(1000.0)]);
        let node = h.series(&Subject::Node("p".into(), "n".into()), 0.0).unwrap();
        assert_eq!(node.charts.len(), 2, "no per-node I/O: only the network charts");
        // A LUN that goes away is forgotten.
        h.record(&Overview::default(), 104.0);
        assert!(h.series(&lun(), 0.0).is_none());
    }

    #[test]
    fn a_second_without_commands_has_no_percentiles_and_counters_going_back_read_zero() {
        let mut h = History::default();
        h.record(&at(10, 10, 0, 0), 1.0);
        h.record(&at(10, 10, 0, 0), 2.0);
        h.record(&at(0, 0, 0, 0), 3.0);
        let s = h.series(&lun(), 0.0).unwrap();
        assert_eq!(s.values[4], [None, None]);
        assert_eq!(s.values[0], [Some(0.0), Some(0.0)]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("[null,null]"), "{json}");
    }

    #[test]
    fn an_hour_is_kept_and_past_the_last_bound_is_the_last_bound() {
        let mut h = History::default();
        for i in 0..(KEEP as u64 + 10) {
            h.record(&at(i, 0, 0, 0), i as f64);
        }
        let s = h.series(&lun(), 0.0).unwrap();
        assert_eq!(s.t.len(), KEEP);
        assert_eq!(s.t[0], 10.0);
        // Everything slower than 10 s.
        assert_eq!(quantile(0.5, &[0; 20], 4), 10.0);
        assert!(quantile(0.5, &[0; 20], 0).is_nan());
    }
}
