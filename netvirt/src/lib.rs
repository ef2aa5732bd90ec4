//! Emulated switched Ethernet for PANs: the virtual LAN server, ports and uplinks.
//!
//! The switch core, ports and uplinks arrive with the netvirt issue; this crate is the
//! place they land so the workspace layout matches DESIGN.md from the start.
#![forbid(unsafe_code)]
