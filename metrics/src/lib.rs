//! Metric families for pangate; the registry and rendering arrive with the metrics issue.
#![forbid(unsafe_code)]
