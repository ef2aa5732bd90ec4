//! How the pages write figures: one unit system everywhere. Sizes are in binary units
//! (KiB = 1024 B), rates in SI units per second (kB/s = 1000 B/s), latencies in µs, ms
//! or s. The charts' script (`assets/charts.js`) formats its axes the same way.

use maud::{Markup, PreEscaped};

/// The legend the pages print under their tables.
pub const LEGEND: &str = "Sizes in binary units (1 KiB = 1024 bytes); rates in SI units per second \
(1 kB/s = 1000 bytes a second); latency as measured from a command's arrival to its status.";

/// Bytes in binary units: "864.0 KiB".
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

/// Operations a second in SI units: "1.2 k/s".
pub fn per_sec(v: f64) -> String {
    format!("{}/s", si(v))
}

/// Bytes a second in SI units: "3.4 MB/s".
pub fn bytes_per_sec(v: f64) -> String {
    format!("{}B/s", si(v))
}

/// A latency in seconds as µs, ms or s; "-" when nothing was timed (NaN).
pub fn latency(s: f64) -> String {
    match s {
        s if s.is_nan() => "-".into(),
        s if s < 1e-3 => format!("{:.0} µs", s * 1e6),
        s if s < 1.0 => format!("{:.2} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}

/// "12 ", "1.2 k", "3.4 M": a number with an SI prefix and the space before the unit.
fn si(v: f64) -> String {
    let (x, prefix) = match v {
        v if v >= 1e12 => (v / 1e12, "T"),
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if prefix.is_empty() {
        format!("{x:.0} ")
    } else {
        format!("{x:.1} {prefix}")
    }
}

/// Empty markup, for `@if` branches.
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary_and_rates_are_si_and_both_say_so() {
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1_048_576), "1.0 MiB");
        assert_eq!(bytes(885_000), "864.3 KiB");
        assert_eq!(per_sec(999.0), "999 /s");
        assert_eq!(per_sec(1_200.0), "1.2 k/s");
        assert_eq!(bytes_per_sec(65_600.0), "65.6 kB/s");
        assert_eq!(bytes_per_sec(3.4e9), "3.4 GB/s");
        assert_eq!(latency(42e-6), "42 µs");
        assert_eq!(latency(0.0125), "12.50 ms");
        assert_eq!(latency(2.5), "2.50 s");
        assert_eq!(latency(f64::NAN), "-");
    }
}
