//! The axum web admin and JSON API; arrives with the web admin issue.
#![forbid(unsafe_code)]
