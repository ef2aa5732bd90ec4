//! The node ↔ gateway storage protocol: CMD / STAT / BUF / TRAN messages over
//! shared-memory rings with eventfd doorbells (see DESIGN.md, "The ring protocol").

pub mod alloc;
pub mod backoff;
pub mod handshake;
pub mod initiator;
pub mod link;
pub mod proto;
pub mod server;
pub mod shm;
pub mod spsc;
