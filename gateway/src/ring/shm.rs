//! Shared memory and doorbells live in the `shmem` crate, which netvirt's packet rings
//! share; re-exported here where the storage rings have always found them.

pub use shmem::*;
