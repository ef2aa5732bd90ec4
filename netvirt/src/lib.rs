//! Emulated switched Ethernet for PANs.
//!
//! - [`switch`]: the virtual LAN server, a sans-IO state machine per LAN.
//! - [`cluster`]: service clusters (one IP served by several nodes), sans-IO.
//! - [`mac`]: MAC addresses and their assignment from the control node's serial.
//! - [`counters`]: per-port and per-LAN traffic counters.

#![deny(unsafe_code)]

pub mod client;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod dataplane;
pub mod fastpath;
pub mod health;
pub mod host;
pub mod mac;
pub mod network;
pub mod ringport;
pub mod switch;
#[allow(unsafe_code)]
mod sys;
pub mod vnet;
