//! pangate's metric families: atomic counters that the data paths bump, and the rendering
//! of them (with process metrics and build info) in Prometheus's text format at scrape
//! time. No I/O: the caller serves the text.
#![forbid(unsafe_code)]

mod events;
mod lun;
mod registry;
mod render;
pub use render::CONTENT_TYPE;
mod ring;

pub use events::{Event, EventLog, Level, EVENTS_KEPT};
pub use lun::{LatencyHistogram, LunSnapshot, LunStats, Transfer, LATENCY_BUCKETS};
pub use registry::{
    ClusterSample, FuseQueuePair, IscsiSampler, LanSample, LanSampler, LunKey, Metrics, NodeLun, PortSample,
    PortalSample, TrafficSample,
};
pub use ring::{RingSnapshot, RingStats};

/// Nanoseconds on a monotonic clock shared by every recorder and renderer of this process.
pub fn now_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
