//! A panel of charts as the pages render it: a figure per chart, captioned with its newest
//! values, which `assets/pangate.js` draws into with uPlot from the panel's series URL over
//! the last 5 or 60 minutes, keeping the caption current.

use maud::{html, Markup};

use crate::history::{History, Subject};
use crate::units::{bytes_per_sec, latency, per_sec};

/// A figure's value in its chart's unit.
fn value(unit: &str, v: f64) -> String {
    match unit {
        "B/s" => bytes_per_sec(v),
        "s" => latency(v),
        _ => per_sec(v),
    }
}

/// The panel of `subject`'s charts; `id` is unique on the page, `url` its series.
pub fn panel(id: &str, url: &str, label: &str, history: &History, subject: &Subject) -> Markup {
    html! {
        section.charts id=(id) data-series=(url) aria-label=(label) {
            div.windows role="group" aria-label="time window" hidden {
                button type="button" data-window="300" aria-pressed="true" { "last 5 min" } " "
                button type="button" data-window="3600" aria-pressed="false" { "last 60 min" }
            }
            div.figures {
                @for (chart, now) in history.now(subject) {
                    figure.chart data-chart=(chart.title) {
                        figcaption {
                            strong { (chart.title) } " "
                            span.now {
                                @for (i, (name, v)) in chart.series.iter().zip(&now).enumerate() {
                                    @if i > 0 { " · " }
                                    (name) " " (value(&chart.unit, *v))
                                }
                            }
                        }
                        div.plot {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LunCounters, LunView, Overview, PanView};

    #[test]
    fn a_panel_captions_each_chart_with_its_newest_values_in_its_unit() {
        let at = |reads: u64| Overview {
            pans: vec![PanView {
                name: "p".into(),
                luns: vec![LunView {
                    name: "l".into(),
                    counters: LunCounters { reads, bytes_read: reads * 4096, ..Default::default() },
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut h = History::default();
        h.record(&at(0), 1.0);
        h.record(&at(2000), 2.0);
        let html = panel("lun", "/api/v1/pans/p/luns/l/series", "LUN l", &h, &Subject::Lun("p".into(), "l".into()))
            .into_string();
        assert!(html.contains(r#"data-series="/api/v1/pans/p/luns/l/series""#), "{html}");
        assert!(html.contains("read 2.0 k/s · write 0 /s"), "{html}");
        assert!(html.contains("read 8.2 MB/s"), "{html}");
        assert!(html.contains("p50 - · p99 -"), "{html}");
    }
}
