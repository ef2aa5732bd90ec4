//! Emulated switched Ethernet for PANs.
//!
//! - [`switch`]: the virtual LAN server, a sans-IO state machine per LAN.
//! - [`mac`]: MAC addresses and their assignment from the control node's serial.
//! - [`counters`]: per-port and per-LAN traffic counters.

pub mod counters;
pub mod mac;
pub mod switch;
