//! What the pages show of the gateway's state beside its PANs: the header's status line and
//! the event log's table.

use maud::{html, Markup};

use crate::model::{EventView, Overview};

/// How long the gateway has run, as a person reads it.
fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The header's status: version, uptime, and each front-end's state.
pub fn status_bar(o: &Overview) -> Markup {
    let queue_pairs: u64 = o.pans.iter().flat_map(|p| &p.nodes).map(|n| n.ring_connections).sum();
    let on_off = |on: bool| if on { "on" } else { "off" };
    html! {
        span.status #status data-live {
            span title="version" { "v" (o.version) } " · "
            span title="uptime" { "up " (uptime(o.uptime_secs)) } " · "
            span title="open ring queue pairs (rings, FUSE mounts, TCMU and iSCSI nodes)" { "rings: " (queue_pairs) } " · "
            span title="pangate mount processes with a queue pair open" { "FUSE mounts: " (o.fuse_mounts) } " · "
            span { "iSCSI: " @if o.iscsi { (o.iscsi_sessions.len()) " sessions" } @else { "off" } } " · "
            span { "TCMU: " (on_off(o.tcmu)) } " · "
            span { "netvirt: " (on_off(o.netvirt)) }
        }
    }
}

/// When an event happened, in UTC.
fn event_time(unix_ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    at.format(&f).map_or_else(|_| unix_ms.to_string(), |t| format!("{t} UTC"))
}

/// Events, newest first.
pub fn event_table(events: &[EventView]) -> Markup {
    html! {
        @if events.is_empty() {
            p { "Nothing has happened yet." }
        } @else {
            table.events {
                thead { tr { th scope="col" { "time" } th scope="col" { "level" } th scope="col" { "subject" } th scope="col" { "event" } } }
                tbody {
                    @for e in events.iter().rev() {
                        tr.(e.level) data-kind=(e.kind) {
                            td { (event_time(e.unix_ms)) } td { (e.level) } td { (e.subject) } td { (e.message) }
                        }
                    }
                }
            }
        }
    }
}
