//! Recent IOPS and throughput per LUN, sampled from the counters once a second, and the
//! small SVG charts the pages draw from them.

use std::collections::{HashMap, VecDeque};

use maud::{html, Markup, PreEscaped};

use crate::model::Overview;

/// Samples kept per LUN (two minutes at one a second).
const KEEP: usize = 120;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    commands: u64,
    bytes: u64,
}

/// One point of a chart: seconds, commands per second, bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Seconds since the sampler started.
    pub at: f64,
    /// Commands per second.
    pub iops: f64,
    /// Bytes per second, read and written.
    pub bytes_per_sec: f64,
}

/// Counter samples per (PAN, LUN).
#[derive(Debug, Default)]
pub struct History {
    luns: HashMap<(String, String), VecDeque<Sample>>,
}

impl History {
    /// Records every LUN's counters at `at` seconds.
    pub fn record(&mut self, overview: &Overview, at: f64) {
        let mut seen = Vec::new();
        for pan in &overview.pans {
            for lun in &pan.luns {
                let key = (pan.name.clone(), lun.name.clone());
                let c = lun.counters;
                let q = self.luns.entry(key.clone()).or_default();
                q.push_back(Sample { at, commands: c.commands, bytes: c.bytes_read + c.bytes_written });
                while q.len() > KEEP {
                    q.pop_front();
                }
                seen.push(key);
            }
        }
        self.luns.retain(|k, _| seen.contains(k));
    }

    /// Rates between consecutive samples of a LUN. Counters that went backwards (a map
    /// entry removed) count as zero.
    pub fn rates(&self, pan: &str, lun: &str) -> Vec<Rate> {
        let Some(q) = self.luns.get(&(pan.to_string(), lun.to_string())) else { return Vec::new() };
        q.iter()
            .zip(q.iter().skip(1))
            .filter(|(a, b)| b.at > a.at)
            .map(|(a, b)| {
                let dt = b.at - a.at;
                Rate {
                    at: b.at,
                    iops: b.commands.saturating_sub(a.commands) as f64 / dt,
                    bytes_per_sec: b.bytes.saturating_sub(a.bytes) as f64 / dt,
                }
            })
            .collect()
    }

    /// The sum of the rates of a PAN's LUNs, by sample time.
    pub fn pan_rates(&self, pan: &str) -> Vec<Rate> {
        let mut sum: Vec<Rate> = Vec::new();
        for (p, lun) in self.luns.keys() {
            if p != pan {
                continue;
            }
            for r in self.rates(p, lun) {
                match sum.iter_mut().find(|s| (s.at - r.at).abs() < 1e-6) {
                    Some(s) => {
                        s.iops += r.iops;
                        s.bytes_per_sec += r.bytes_per_sec;
                    }
                    None => sum.push(r),
                }
            }
        }
        sum.sort_by(|a, b| a.at.total_cmp(&b.at));
        sum
    }

    /// The latest rate of a LUN, or zeros.
    pub fn latest(&self, pan: &str, lun: &str) -> Rate {
        self.rates(pan, lun).last().copied().unwrap_or(Rate { at: 0.0, iops: 0.0, bytes_per_sec: 0.0 })
    }
}

/// A sparkline of `values` with a caption and the latest value.
pub fn sparkline(caption: &str, values: &[f64], unit: fn(f64) -> String) -> Markup {
    const W: f64 = 240.0;
    const H: f64 = 48.0;
    let max = values.iter().copied().fold(0.0f64, f64::max);
    let n = values.len().max(2) - 1;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = W * i as f64 / n as f64;
            let y = if max > 0.0 { H - H * v / max } else { H };
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let last = values.last().copied().unwrap_or(0.0);
    html! {
        figure.chart {
            svg width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(caption) {
                rect width=(W) height=(H) fill="#f4f6f8" {}
                @if !points.is_empty() {
                    polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points=(points.join(" ")) {}
                }
            }
            figcaption { (caption) ": " strong { (unit(last)) } " (peak " (unit(max)) ")" }
        }
    }
}

/// "1.2k/s"-style figures.
pub fn per_sec(v: f64) -> String {
    format!("{}/s", human(v, ""))
}

/// "3.4 MB/s"-style figures.
pub fn bytes_per_sec(v: f64) -> String {
    format!("{}B/s", human(v, " "))
}

/// Bytes in binary units.
pub fn bytes(v: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = v as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < units.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

fn human(v: f64, sep: &str) -> String {
    let (x, suffix) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if suffix.is_empty() {
        format!("{x:.0}{sep}")
    } else {
        format!("{x:.1}{sep}{suffix}")
    }
}

/// Empty markup, for `@if` branches.
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LunCounters, LunView, PanView};

    fn at(commands: u64, bytes: u64) -> Overview {
        let counters = LunCounters { commands, bytes_read: bytes, ..Default::default() };
        Overview {
            pans: vec![PanView {
                name: "p".into(),
                luns: vec![LunView { name: "l".into(), counters, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_consecutive_samples() {
        let mut h = History::default();
        h.record(&at(0, 0), 0.0);
        h.record(&at(100, 4096 * 100), 1.0);
        h.record(&at(300, 4096 * 300), 3.0);
        let r = h.rates("p", "l");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].iops, 100.0);
        assert_eq!(r[1].iops, 100.0);
        assert_eq!(r[1].bytes_per_sec, 409600.0);
        assert_eq!(h.pan_rates("p"), r);
        // A LUN that goes away is forgotten.
        h.record(&Overview::default(), 4.0);
        assert!(h.rates("p", "l").is_empty());
    }

    #[test]
    fn sparkline_scales_to_the_peak() {
        let svg = sparkline("IOPS", &[0.0, 5.0, 10.0], per_sec).into_string();
        assert!(svg.contains("0.0,48.0 120.0,24.0 240.0,0.0"), "{svg}");
        assert!(svg.contains("10/s"), "{svg}");
    }
}
