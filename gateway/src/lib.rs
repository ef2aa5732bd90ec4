//! The pangate control node: backing-image engines, LUN execution, configuration, and the
//! pieces the `pangate` binary composes.
//!
//! `unsafe` is allowed only in the `sys` modules (`engine::sys`, `fuse::sys`, `tcmu::sys`),
//! each block with its reason; memory a node shares is reached through `shmem::PeerSlice`.

#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod engine;
pub mod failover;
pub mod fuse;
pub mod iscsi;
pub mod lun;
pub mod net;
pub mod nexus;
pub mod persist;
pub mod placement;
pub mod redundancy;
pub mod registry;
pub mod reservations;
pub mod ring;
pub mod storage;
pub mod tcmu;
pub mod workload;
