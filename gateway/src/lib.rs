//! The pangate control node: backing-image engines, LUN execution, configuration, and the
//! pieces the `pangate` binary composes.

pub mod admin;
pub mod config;
pub mod engine;
pub mod fuse;
pub mod lun;
pub mod net;
pub mod persist;
pub mod ring;
pub mod storage;
pub mod tcmu;
pub mod workload;
