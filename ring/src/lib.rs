//! The node side of the ring protocol: CMD / STAT / BUF / TRAN messages over shared-memory
//! rings with eventfd doorbells (docs/ARCHITECTURE.md, "The ring protocol").
//!
//! A program that drives its LUNs links this crate alone: the codec ([`proto`]), the
//! single-producer single-consumer rings ([`spsc`]), the Unix-socket handshake
//! ([`handshake`]), a one-queue-pair [`initiator`] and the multi-threaded [`link`]. Nothing
//! here depends on the gateway's server, tokio, fuser or axum; the gateway's ring server
//! uses the same codec and rings from the other end.

#![deny(unsafe_code)]

pub mod alloc;
/// Hybrid polling, shared with netvirt (it lives in `shmem`, which both depend on).
pub use shmem::backoff;
pub mod handshake;
pub mod initiator;
pub mod link;
pub mod proto;
pub mod spsc;

/// Shared memory and doorbells, from the `shmem` crate that netvirt's packet rings share.
pub use shmem as shm;
