//! The gateway side of the ring protocol. The node side (codec, rings, handshake,
//! initiator, link) is the `pangate-ring` crate, re-exported here so the server and the
//! gateway's own nodes (the FUSE mount, TCMU, `pangate bench`) name it one way.

pub use ring::{alloc, backoff, handshake, initiator, link, proto, shm, spsc};

pub mod server;
