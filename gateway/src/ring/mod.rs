//! The node ↔ gateway storage protocol: CMD / STAT / BUF / TRAN messages over
//! shared-memory rings with eventfd doorbells (see DESIGN.md, "The ring protocol").

pub mod handshake;
pub mod proto;
pub mod shm;
pub mod spsc;
